//! The containerizer: OCI spec, rootfs, cgroups, the runtime helper that
//! starts containers, the in-container init, and the depot (state on disk).

pub mod cgroups;
pub mod containerizer;
pub mod depot;
pub mod helper;
pub mod init;
pub mod initproto;
pub mod rootfs;
pub mod seccomp;
pub mod spawn;
pub mod spec;
pub mod users;

use std::path::Path;

pub use containerizer::{Containerizer, RuntimeConfig};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    BadRootfs(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("mount: {0}")]
    Mount(String),
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("depot: {0}")]
    Depot(String),
    #[error("oci spec: {0}")]
    Spec(String),
    #[error("runtime helper: {0}")]
    Helper(String),
    #[error("container init is not running")]
    InitGone,
    #[error("talking to container init: {0}")]
    Init(std::io::Error),
    /// An error init reported for a request (e.g. executable not found).
    #[error("{1}")]
    Process(initproto::ErrorKind, String),
}

impl RuntimeError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.display().to_string(), source }
    }
}
