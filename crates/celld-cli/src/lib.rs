//! cellctl: its `main` and command line (`cellctl`), the commands that speak
//! gRPC (apps, staging, ssh) and the Garden ones, over garden-api's client.

mod api;
pub mod apps;
pub mod cellctl;
pub mod package;
pub mod progress;
pub mod render;
pub mod ssh;
pub mod staging;
pub mod target;
