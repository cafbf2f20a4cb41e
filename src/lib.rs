//! celld: a Cloud Foundry Diego cell. This crate is the daemon's own part
//! (staging, executor, rep, apps, the cell's gRPC listener, config); the other
//! parts are crates of their own (docs/architecture.md draws the map) and are
//! re-exported here under the module names the tests and fuzz targets address
//! the whole cell by (`celld::runtime::…`, `celld::garden::server`…).

pub use celld_base::{civil, guid};
pub use celld_blobstore as blobstore;
pub use celld_diego as diego_wire;
pub use celld_garden::gardener;
pub use celld_lifecycle as lifecycle;
pub use celld_metrics as metrics;
pub use celld_network as network;
pub use celld_router as router;
pub use celld_runtime as runtime;
pub use celld_scheduler as scheduler;
pub use celld_sshproxy as sshproxy;
pub use celld_transport::tls;

pub mod apps;
pub mod cfapi;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod diego;
pub mod executor;
pub mod grpc;
pub mod rep;
pub mod staging;

/// The Garden API: its wire types and client (garden-api), its server and
/// listeners (celld-garden).
pub mod garden {
    pub use celld_garden::{debug, listener, metrics, server};
    pub use garden_api::{client, types};
}
