//! cellctl's commands that speak gRPC (the Garden ones are in the binary).

mod api;
pub mod apps;
pub mod package;
pub mod render;
pub mod ssh;
pub mod staging;
pub mod target;
