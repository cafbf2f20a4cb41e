//! The Garden layer of the cell: the gardener (Garden's semantics over the
//! runtime and the networker: the container table, handles, properties, grace
//! times, the rules a spec must follow) and the Garden HTTP server with its
//! listeners (the unix socket and `--garden-tcp`), and the debug listener.

mod conns;
pub mod debug;
pub mod gardener;
pub mod listener;
pub mod metrics;
pub mod server;
mod streams;
