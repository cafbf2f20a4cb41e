//! The executor: app instances (LRPs) and tasks in containers, their
//! environment, health checks, logs and metrics.

pub mod env;
pub mod health;
pub mod logs;
