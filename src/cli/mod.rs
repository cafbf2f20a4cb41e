//! cellctl's commands that speak gRPC (the Garden ones are in the binary).

pub mod staging;
