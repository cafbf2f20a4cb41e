//! Disk limits the kernel enforces, behind one interface ([`DiskQuota`]) with
//! a backend per mechanism: btrfs qgroups (a subvolume per container) or none.
//! An XFS project-quota backend would be one more variant: a project id per
//! container directory instead of a subvolume.
//!
//! Inodes: btrfs has no inode limit, so `inode_hard` is recorded (and
//! returned by `limits/disk`) but enforced by no backend here; a create
//! with one never fails for it (Diego's executor always sends one).

mod btrfs;
mod ioctl;
pub mod sizes;

use std::path::{Path, PathBuf};

pub use btrfs::BtrfsStore;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("disk store: {0} failed: {1}")]
    Command(String, String),
    #[error("disk store {0}: enabling btrfs quotas: {1}")]
    Quota(String, nix::Error),
    #[error("container {0}: cannot {1} its btrfs subvolume: {2}")]
    Subvolume(String, &'static str, nix::Error),
    #[error("container {0}: cannot set its disk limit (btrfs qgroup): {1}")]
    Limit(String, nix::Error),
    #[error("--disk-limits btrfs: {0}")]
    Unavailable(String),
}

impl DiskError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.display().to_string(), source }
    }
}

/// `--disk-limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskMode {
    /// btrfs if it works here, else none (with a warning).
    Auto,
    Btrfs,
    None,
}

#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub mode: DiskMode,
    /// The loop file's size when the depot is not btrfs (`None`: half the
    /// depot's filesystem).
    pub store_size: Option<u64>,
    /// Creates with a byte limit succeed, unenforced, when there is no mechanism.
    pub allow_unenforced: bool,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self { mode: DiskMode::Auto, store_size: None, allow_unenforced: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The rootfs and the writes (Garden's scope 0).
    Total,
    /// Only the writes (Garden's scope 1).
    Exclusive,
}

/// The bytes a container's own subvolume may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimit {
    pub bytes: u64,
    pub scope: Scope,
}

impl DiskLimit {
    /// The limit for Garden's `byte_hard` and `scope` given the rootfs's size:
    /// only the writes land in the subvolume, so a total limit leaves them
    /// what the rootfs does not take. `None` for no limit; an error (for the
    /// create to report) for a total limit the rootfs alone exceeds.
    pub fn for_garden(byte_hard: u64, scope: u64, rootfs_bytes: u64) -> Result<Option<Self>, String> {
        if byte_hard == 0 {
            return Ok(None);
        }
        if scope == 1 {
            return Ok(Some(Self { bytes: byte_hard, scope: Scope::Exclusive }));
        }
        match byte_hard.checked_sub(rootfs_bytes) {
            Some(left) if left > 0 => Ok(Some(Self { bytes: left, scope: Scope::Total })),
            _ => Err(format!(
                "disk limit {byte_hard} bytes (scope total) is smaller than the rootfs ({rootfs_bytes} bytes): \
                 raise the limit or use scope exclusive"
            )),
        }
    }
}

/// The mechanism in use.
pub enum DiskQuota {
    Btrfs(BtrfsStore),
    /// No limits are enforced, for this reason.
    None {
        reason: String,
        allow_unenforced: bool,
    },
}

impl DiskQuota {
    /// Chooses and sets up the backend for `depot` as `cfg` asks.
    pub fn open(depot: &Path, cfg: &DiskConfig) -> Result<Self, DiskError> {
        let none = |reason: String| Self::None { reason, allow_unenforced: cfg.allow_unenforced };
        match cfg.mode {
            DiskMode::None => Ok(none("--disk-limits none".into())),
            DiskMode::Btrfs => BtrfsStore::open(depot, cfg.store_size)
                .map(Self::Btrfs)
                .map_err(|e| DiskError::Unavailable(e.to_string())),
            DiskMode::Auto => match BtrfsStore::open(depot, cfg.store_size) {
                Ok(s) => Ok(Self::Btrfs(s)),
                Err(e) => {
                    tracing::warn!(error = %e, "btrfs quotas do not work here: disk limits are not enforced");
                    Ok(none(format!("btrfs unavailable: {e}")))
                }
            },
        }
    }

    /// For the log line at start.
    pub fn describe(&self) -> String {
        match self {
            Self::Btrfs(s) => s.describe(),
            Self::None { reason, allow_unenforced: true } => format!("none ({reason}); limits are accepted unenforced"),
            Self::None { reason, .. } => format!("none ({reason}); creates with a disk limit fail"),
        }
    }

    /// Why a create with a byte limit must fail here, if it must.
    pub fn refuses_limits(&self) -> Option<String> {
        match self {
            Self::None { reason, allow_unenforced: false } => Some(format!(
                "a disk limit was asked for but this cell cannot enforce disk limits ({reason}); \
                 the operator may start celld with --allow-unenforced-disk-limits to accept them unenforced"
            )),
            _ => None,
        }
    }

    /// Where container `handle`'s overlay upper and work directories go
    /// (`container_dir` when the backend has no place of its own).
    /// A container made without the backend (by a celld before it, or with
    /// `--disk-limits none`) keeps its layers in its own directory.
    pub fn layers_dir(&self, handle: &str, container_dir: &Path) -> PathBuf {
        match self {
            Self::Btrfs(s) if !container_dir.join("upper").exists() => s.layers_dir(handle),
            _ => container_dir.to_path_buf(),
        }
    }

    /// Makes container `handle`'s place for its writes, limited to `limit`.
    pub fn prepare(&self, handle: &str, limit: Option<DiskLimit>) -> Result<(), DiskError> {
        match self {
            Self::Btrfs(s) => s.prepare(handle, limit),
            Self::None { .. } => Ok(()),
        }
    }

    pub fn remove(&self, handle: &str) -> Result<(), DiskError> {
        match self {
            Self::Btrfs(s) => s.remove(handle),
            Self::None { .. } => Ok(()),
        }
    }

    /// The bytes container `handle` wrote, if the backend counts them.
    pub fn exclusive_bytes(&self, handle: &str) -> Option<u64> {
        match self {
            Self::Btrfs(s) => s.exclusive_bytes(handle),
            Self::None { .. } => None,
        }
    }

    /// The store's size, if the backend has a store of its own.
    pub fn capacity(&self) -> Option<u64> {
        match self {
            Self::Btrfs(s) => s.capacity(),
            Self::None { .. } => None,
        }
    }

    /// Removes what belongs to no container `keep` knows.
    pub fn sweep(&self, keep: &dyn Fn(&str) -> bool) {
        if let Self::Btrfs(s) = self {
            s.sweep(keep)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garden_limits_become_subvolume_limits() {
        assert_eq!(DiskLimit::for_garden(0, 0, 5), Ok(None));
        assert_eq!(DiskLimit::for_garden(100, 1, 40), Ok(Some(DiskLimit { bytes: 100, scope: Scope::Exclusive })));
        assert_eq!(DiskLimit::for_garden(100, 0, 40), Ok(Some(DiskLimit { bytes: 60, scope: Scope::Total })));
        let e = DiskLimit::for_garden(30, 0, 40).unwrap_err();
        assert!(e.contains("smaller than the rootfs (40 bytes)"), "{e}");
        assert!(DiskLimit::for_garden(40, 0, 40).is_err());
    }

    #[test]
    fn no_mechanism_refuses_limits_unless_allowed() {
        let strict = DiskQuota::None { reason: "x".into(), allow_unenforced: false };
        assert!(strict.refuses_limits().unwrap().contains("--allow-unenforced-disk-limits"));
        let lax = DiskQuota::None { reason: "x".into(), allow_unenforced: true };
        assert_eq!(lax.refuses_limits(), None);
    }
}
