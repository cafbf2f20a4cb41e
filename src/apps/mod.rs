//! The local-mode app layer (service `Apps`, proto/celld/v1/apps.proto): what
//! Cloud Controller is to Diego, kept thin. It keeps apps, routes, services,
//! bindings, events and tasks in SQLite (`store`), stages through the
//! in-process stager, and turns a started app into a DesiredLRP on the
//! scheduler (over gRPC, like any other client). It follows the scheduler's
//! event stream to record `app.crash` events and to keep the router's table of
//! routable instances current.
//!
//! The calls are split by what they act on: the app record (`app`), its
//! staging into a droplet (`droplet`), its process on the scheduler
//! (`process`), the environment it gets (`environment`), its instances
//! (`instances`), services, tasks, events and routes; its log lines are kept
//! on disk (`log_disk`) and read as log-cache does (`logcache`); `manifest`
//! parses CF manifests and `apply` applies them and scales one process type.
//! `layer` holds the state they share; `validate` the rules for names a user
//! types.

mod app;
mod apply;
mod docker;
mod droplet;
mod environment;
mod events;
mod instances;
mod layer;
pub mod log_disk;
pub mod logcache;
pub mod manifest;
mod process;
mod routes;
pub mod service;
mod service_instances;
pub mod ssh;
pub mod store;
mod tasks;
mod validate;

use crate::staging::StagingError;
use celld_blobstore::BlobstoreError;

pub use self::app::{DEFAULT_DISK_MB, DEFAULT_HEALTH_CHECK_TIMEOUT, DEFAULT_MEMORY_MB};
pub use self::environment::space_guid;
pub use self::layer::{AppLayer, AppsConfig};
pub use self::logcache::{LogCacheError, LogCacheQuery, log_cache_info, parse_query};
pub use self::process::{APP_PORT, default_security_groups};
pub use self::routes::RouterLog;
pub use self::service_instances::proto_service;
pub use self::validate::{host_label, validate_app_name, validate_env_name, validate_host_label, validate_space};

#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("app store: {0}")]
    Store(String),
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error(transparent)]
    Blobstore(#[from] BlobstoreError),
    /// A call to the scheduler or a cell failed; its status passes through.
    #[error("{}", .0.message())]
    Upstream(#[from] tonic::Status),
}
