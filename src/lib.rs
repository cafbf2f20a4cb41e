//! celld: a Cloud Foundry Diego cell. See docs/architecture.md for the data flow
//! and which module owns what.

pub mod config;
pub mod garden;
pub mod gardener;
pub mod network;
pub mod runtime;
