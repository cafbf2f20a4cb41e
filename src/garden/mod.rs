//! The Garden HTTP API: wire types, the server (routes and the hijacked process
//! stream), and a client used by `cellctl` and the tests.

mod conns;
pub mod listener;
pub mod server;
mod streams;

pub use garden_api::{client, types};
