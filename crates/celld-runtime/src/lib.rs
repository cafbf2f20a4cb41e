//! The containerizer: OCI spec, rootfs, cgroups, the runtime helper that
//! starts containers, the in-container init, and the depot (state on disk).

pub mod cgroups;
pub mod containerizer;
pub mod depot;
pub mod disk;
pub mod helper;
pub mod pea;
pub mod rootfs;
pub mod seccomp;
pub mod spawn;
pub mod spec;

use std::path::Path;

// Init and what the daemon shares with it live in their own small crate (a
// static binary); their paths here are unchanged.
pub use celld_init::{caps, init, initproto, users};
pub use containerizer::{Containerizer, ImageSettings, RuntimeConfig};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    BadRootfs(String),
    /// Pulling or unpacking an image (`docker://`, `oci://`) failed.
    #[error(transparent)]
    Image(#[from] celld_image::ImageError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}: no space left on device: free space on its filesystem (or point --depot elsewhere) and try again")]
    NoSpace(String),
    #[error("{0}")]
    BadDepot(String),
    #[error("mount: {0}")]
    Mount(String),
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// A disk limit this cell cannot apply (below the rootfs, or no mechanism).
    #[error("{0}")]
    DiskLimit(String),
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("depot: {0}")]
    Depot(String),
    #[error("oci spec: {0}")]
    Spec(String),
    #[error("runtime helper: {0}")]
    Helper(String),
    #[error("the container's init process has exited: the container is stopped and can only be destroyed")]
    InitGone,
    #[error("talking to container init: {0}")]
    Init(std::io::Error),
    /// An error init reported for a request (e.g. executable not found).
    #[error("{1}")]
    Process(initproto::ErrorKind, String),
}

/// FNV-1a: a short, stable name for a longer string (handles, paths), where
/// only collisions between a few names matter.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The cgroup (relative to each hierarchy's root) under which a daemon with
/// this depot puts its containers: unique per depot, so that daemons can run
/// side by side.
pub fn cgroup_parent(depot: &Path) -> String {
    let canonical = std::fs::canonicalize(depot).unwrap_or_else(|_| depot.to_path_buf());
    format!("celld-{:08x}", fnv1a(canonical.as_os_str().as_encoded_bytes()) as u32)
}

impl RuntimeError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Self::NoSpace(path.display().to_string()),
            _ => Self::Io { path: path.display().to_string(), source },
        }
    }
}
