//! celld: a Cloud Foundry Diego cell. This crate is the daemon's own part
//! (gardener and Garden server, staging, executor, rep, apps, router, ssh
//! proxy, config); the lower parts are crates of their own (docs/architecture.md
//! draws the map) and are re-exported here under the module names the tests
//! and fuzz targets address the whole cell by (`celld::runtime::…`).

pub use celld_base::{civil, guid};
pub use celld_blobstore as blobstore;
pub use celld_lifecycle as lifecycle;
pub use celld_network as network;
pub use celld_runtime as runtime;
pub use celld_scheduler as scheduler;
pub use celld_transport::tls;

pub mod apps;
pub mod config;
pub mod executor;
pub mod garden;
pub mod gardener;
pub mod grpc;
pub mod rep;
pub mod router;
pub mod sshproxy;
pub mod staging;
