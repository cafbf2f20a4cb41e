//! Disk limits on btrfs: a store (the depot itself when it is btrfs, else a
//! sparse file of `--store-size` loop-mounted at `<depot>/store`) with quotas
//! on, and one subvolume per container holding its overlay's upper and work
//! directories, so that the container's writes are its subvolume's qgroup and
//! the kernel's qgroup limit stops them.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{DiskError, DiskLimit, Scope, ioctl};

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// The top-level subvolume's qgroup, never removed.
const TOP_LEVEL: u64 = 5;

pub struct BtrfsStore {
    /// Where the containers' subvolumes are.
    containers: PathBuf,
    /// `containers`, opened once: every create and destroy makes or deletes a
    /// subvolume through it, and opening a btrfs directory takes its lock,
    /// for which destroys at once queued.
    containers_dir: File,
    /// `/sys/fs/btrfs/<fsid>/qgroups`: usage without walking any tree.
    qgroups: PathBuf,
    /// The loop-mounted file and its size, when the depot is not btrfs.
    loop_file: Option<(PathBuf, u64)>,
    /// Qgroups of deleted subvolumes, for the thread that commits until
    /// they are gone.
    reaper: std::sync::Mutex<std::sync::mpsc::Sender<PathBuf>>,
}

fn is_btrfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BTRFS_SUPER_MAGIC)
}

fn dev_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.dev())
}

fn open_dir(path: &Path) -> Result<File, DiskError> {
    File::open(path).map_err(|e| DiskError::io(path, e))
}

impl BtrfsStore {
    /// Finds or makes the store for `depot`. `size` is the loop file's size
    /// when one has to be made (`None`: half the depot's filesystem).
    pub fn open(depot: &Path, size: Option<u64>) -> Result<Self, DiskError> {
        let root = depot.join("store");
        let loop_file = if is_btrfs(depot) {
            std::fs::create_dir_all(&root).map_err(|e| DiskError::io(&root, e))?;
            None
        } else {
            let img = depot.join("store.img");
            std::fs::create_dir_all(&root).map_err(|e| DiskError::io(&root, e))?;
            // Mounted already: a restarted daemon's containers write into it.
            let mounted = is_btrfs(&root) && dev_of(&root) != dev_of(depot);
            if !mounted {
                if !img.exists() {
                    make_image(&img, size.unwrap_or_else(|| default_size(depot)))?;
                }
                loop_mount(&img, &root)?;
            }
            let len = std::fs::metadata(&img).map_err(|e| DiskError::io(&img, e))?.len();
            Some((img, len))
        };
        let fd = open_dir(&root)?;
        ioctl::enable_quota(&fd).map_err(|e| DiskError::Quota(root.display().to_string(), e))?;
        let fsid = ioctl::fsid(&fd).map_err(|e| DiskError::Quota(root.display().to_string(), e))?;
        let containers = root.join("containers");
        std::fs::create_dir_all(&containers).map_err(|e| DiskError::io(&containers, e))?;
        // As the depot's: host users may not list it; container root (an
        // unprivileged host uid) must traverse it, to bind its container's
        // /etc files into its peas.
        std::fs::set_permissions(&containers, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| DiskError::io(&containers, e))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("btrfs-reaper".into())
            .spawn(move || reap(&fd, &rx))
            .map_err(|e| DiskError::io(&root, e))?;
        Ok(Self {
            containers_dir: open_dir(&containers)?,
            containers,
            qgroups: PathBuf::from(format!("/sys/fs/btrfs/{fsid}/qgroups")),
            loop_file,
            reaper: std::sync::Mutex::new(tx),
        })
    }

    pub fn describe(&self) -> String {
        let root = self.containers.parent().unwrap_or(&self.containers).display();
        match &self.loop_file {
            Some((_, len)) => format!("btrfs qgroups on {root} (loop file {})", celld_base::size::byte_size(*len)),
            None => format!("btrfs qgroups on {root} (the depot's btrfs)"),
        }
    }

    /// The subvolume of container `handle`.
    pub fn layers_dir(&self, handle: &str) -> PathBuf {
        self.containers.join(handle)
    }

    /// Makes container `handle`'s subvolume and limits it; on failure nothing is left.
    pub fn prepare(&self, handle: &str, limit: Option<DiskLimit>) -> Result<(), DiskError> {
        let parent = &self.containers_dir;
        ioctl::create_subvolume(parent, OsStr::new(handle))
            .map_err(|e| DiskError::Subvolume(handle.into(), "create", e))?;
        let Some(limit) = limit else { return Ok(()) };
        let limited = self.id(handle).and_then(|id| {
            let flag = match limit.scope {
                Scope::Exclusive => ioctl::LIMIT_MAX_EXCL,
                Scope::Total => ioctl::LIMIT_MAX_RFER,
            };
            ioctl::limit_qgroup(parent, id, flag, limit.bytes).map_err(|e| DiskError::Limit(handle.into(), e))
        });
        if let Err(e) = limited {
            let _ = self.remove(handle);
            return Err(e);
        }
        Ok(())
    }

    fn id(&self, handle: &str) -> Result<u64, DiskError> {
        let dir = open_dir(&self.layers_dir(handle))?;
        ioctl::subvolume_id(&dir).map_err(|e| DiskError::Subvolume(handle.into(), "look up", e))
    }

    /// Deletes container `handle`'s subvolume (if any) and its qgroup.
    pub fn remove(&self, handle: &str) -> Result<(), DiskError> {
        let id = match self.id(handle) {
            Ok(id) => id,
            Err(DiskError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let parent = &self.containers_dir;
        ioctl::delete_subvolume(parent, OsStr::new(handle))
            .map_err(|e| DiskError::Subvolume(handle.into(), "delete", e))?;
        // Refused while the kernel still frees the extents: it removes the
        // qgroup itself once done.
        let _ = ioctl::destroy_qgroup(parent, id);
        let reaper = self.reaper.lock().unwrap_or_else(|p| p.into_inner());
        let _ = reaper.send(self.qgroups.join(format!("0_{id}")));
        Ok(())
    }

    /// What container `handle` wrote: its qgroup's exclusive bytes, as of the
    /// filesystem's last commit.
    pub fn exclusive_bytes(&self, handle: &str) -> Option<u64> {
        let id = self.id(handle).ok()?;
        std::fs::read_to_string(self.qgroups.join(format!("0_{id}/exclusive"))).ok()?.trim().parse().ok()
    }

    /// The store's size.
    pub fn capacity(&self) -> Option<u64> {
        let s = nix::sys::statvfs::statvfs(&self.containers).ok()?;
        Some(s.blocks() * s.fragment_size())
    }

    /// Removes the subvolumes `keep` says no container has, and the qgroups
    /// of subvolumes that are gone.
    pub fn sweep(&self, keep: &dyn Fn(&str) -> bool) {
        let mut live = std::collections::HashSet::from([TOP_LEVEL]);
        for e in std::fs::read_dir(&self.containers).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if keep(&name) {
                live.extend(self.id(&name).ok());
                continue;
            }
            tracing::warn!(handle = %name, "removing a container subvolume without a container");
            if let Err(e) = self.remove(&name) {
                tracing::warn!(handle = %name, error = %e, "stray subvolume stays");
            }
        }
        for e in std::fs::read_dir(&self.qgroups).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_prefix("0_").and_then(|n| n.parse::<u64>().ok()) {
                if !live.contains(&id) {
                    let _ = ioctl::destroy_qgroup(&self.containers_dir, id);
                }
            }
        }
    }
}

/// Commits the store until the qgroups sent are gone, a few seconds at most
/// each: the cleaner frees a deleted subvolume, and then its qgroup, after a
/// commit once the subvolume's last user (the dead container's overlay,
/// unmounted lazily) has let go; without these commits that waits for the
/// periodic one, 30 s on. One thread, and destroys close together share a
/// commit: a commit writes back what the store holds dirty, and creates wait
/// behind it.
fn reap(store: &File, rx: &std::sync::mpsc::Receiver<PathBuf>) {
    use std::time::{Duration, Instant};
    let mut pending: Vec<(PathBuf, Instant)> = Vec::new();
    let mut pause = Duration::from_millis(100);
    loop {
        let next = if pending.is_empty() { rx.recv().ok() } else { rx.recv_timeout(pause).ok() };
        if let Some(q) = next {
            pending.push((q, Instant::now()));
            pause = Duration::from_millis(100);
            // Destroys close together: one commit for them all.
            std::thread::sleep(Duration::from_millis(50));
            pending.extend(rx.try_iter().map(|q| (q, Instant::now())));
        } else if pending.is_empty() {
            return; // the store is gone
        }
        let _ = ioctl::sync(store);
        pending.retain(|(q, since)| q.exists() && since.elapsed() < Duration::from_secs(15));
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Half the depot's filesystem, at most its free space (a loop file larger
/// than the disk would fail writes with EIO, not ENOSPC), at least 1 GiB.
fn default_size(depot: &Path) -> u64 {
    let Ok(s) = nix::sys::statvfs::statvfs(depot) else { return 10 << 30 };
    let frag = s.fragment_size();
    let half = s.blocks() * frag / 2;
    half.min(s.blocks_available() * frag).max(1 << 30)
}

/// Makes a sparse file of `size` with a btrfs on it, under a temporary name
/// renamed into place only when complete.
fn make_image(img: &Path, size: u64) -> Result<(), DiskError> {
    let tmp = img.with_extension("img.tmp");
    let made = (|| {
        let f = File::create(&tmp).map_err(|e| DiskError::io(&tmp, e))?;
        f.set_len(size).map_err(|e| DiskError::io(&tmp, e))?;
        drop(f);
        run(Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(&tmp), "mkfs.btrfs")?;
        std::fs::rename(&tmp, img).map_err(|e| DiskError::io(img, e))
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

/// `mount -o loop` sets the loop device's autoclear: unmounting frees it.
fn loop_mount(img: &Path, at: &Path) -> Result<(), DiskError> {
    run(Command::new("mount").arg("-t").arg("btrfs").arg("-o").arg("loop").arg(img).arg(at), "mount")
}

fn run(cmd: &mut Command, what: &str) -> Result<(), DiskError> {
    let out = cmd.output().map_err(|e| DiskError::Command(what.into(), e.to_string()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(DiskError::Command(what.into(), String::from_utf8_lossy(&out.stderr).trim().to_string()))
}
