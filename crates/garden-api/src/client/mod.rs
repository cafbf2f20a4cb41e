//! A Garden client over HTTP/1.1, written by hand because Garden's process
//! routes are not plain HTTP: a `201` that declares chunked encoding and then
//! carries raw newline-delimited JSON. Used by `cellctl` and the tests. Like
//! Garden's Go client it opens a new connection for every request.
//!
//! - `error`: `ClientError`, the one error every call returns.
//! - `http`: request paths and reading an HTTP/1.1 response.
//! - `connection`: `Address`, `Client`, and one request/reply on a fresh connection.
//! - `calls`: the plain request/reply Garden calls.
//! - `process`: running and attaching to processes over the hijacked connection.

mod calls;
mod connection;
mod error;
mod http;
mod process;
#[cfg(test)]
mod tests;

pub use connection::{Address, Client};
pub use error::ClientError;
pub use http::encode;
pub use process::{Process, ProcessControl, ProcessIo, Signal};
