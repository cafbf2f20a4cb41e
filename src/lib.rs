//! celld: a Cloud Foundry Diego cell. See docs/architecture.md for the data flow
//! and which module owns what.

/// The in-container lifecycle (the buildpack builder): built into both the
/// daemon and the static `celld-lifecycle` binary.
pub mod civil;
pub mod guid;
pub mod lifecycle;

#[cfg(feature = "daemon")]
pub mod apps;
#[cfg(feature = "daemon")]
pub mod blobstore;
#[cfg(feature = "daemon")]
pub mod cli;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod executor;
#[cfg(feature = "daemon")]
pub mod garden;
#[cfg(feature = "daemon")]
pub mod gardener;
#[cfg(feature = "daemon")]
pub mod grpc;
#[cfg(feature = "daemon")]
pub mod network;
#[cfg(feature = "daemon")]
pub mod rep;
#[cfg(feature = "daemon")]
pub mod router;
#[cfg(feature = "daemon")]
pub mod runtime;
#[cfg(feature = "daemon")]
pub mod scheduler;
#[cfg(feature = "daemon")]
pub mod sshproxy;
#[cfg(feature = "daemon")]
pub mod staging;
#[cfg(feature = "daemon")]
pub mod transport;
#[cfg(feature = "daemon")]
pub use transport::tls;
