//! Root filesystems: naming (`preloaded:NAME` or an absolute directory), the
//! uid-shifted copy that unprivileged containers use as their read-only lower
//! layer, and the per-container overlay on top of it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};

use super::RuntimeError;
use super::spec::ROOT_HOST_ID;

/// Resolves what a container spec names as its rootfs to a directory.
pub fn resolve(uri: &str, rootfs_dir: &Path, default: &str) -> Result<PathBuf, RuntimeError> {
    let uri = if uri.is_empty() { default } else { uri };
    let path = if let Some(name) = uri.strip_prefix("preloaded:") {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(RuntimeError::BadRootfs(format!("invalid preloaded rootfs name {name:?}")));
        }
        rootfs_dir.join(name)
    } else if let Some(rest) = uri.strip_prefix("raw://") {
        PathBuf::from(rest)
    } else if uri.starts_with("docker:") || uri.starts_with("oci:") {
        return Err(RuntimeError::BadRootfs(format!(
            "rootfs {uri:?}: image URIs are not supported; use preloaded:NAME or an absolute directory"
        )));
    } else if uri.starts_with('/') {
        PathBuf::from(uri)
    } else {
        return Err(RuntimeError::BadRootfs(format!(
            "rootfs {uri:?}: expected preloaded:NAME or an absolute directory"
        )));
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(RuntimeError::BadRootfs(format!("rootfs {uri:?}: {} is not a directory", path.display()))),
        Err(e) => Err(RuntimeError::BadRootfs(format!("rootfs {uri:?}: {}: {e}", path.display()))),
    }
}

static SHIFT_LOCK: Mutex<()> = Mutex::new(());

/// The read-only lower layer for an unprivileged container: a copy of `src` in
/// which files owned by root belong to [`ROOT_HOST_ID`], so they appear as root
/// inside the user namespace. Made once per rootfs version and shared.
pub fn shifted_copy(src: &Path, cache_dir: &Path) -> Result<PathBuf, RuntimeError> {
    let meta = std::fs::metadata(src).map_err(|e| RuntimeError::io(src, e))?;
    let key =
        format!("{:016x}-{}-{}", super::fnv1a(src.as_os_str().as_encoded_bytes()), meta.mtime(), meta.mtime_nsec());
    let dst = cache_dir.join(key);
    if dst.exists() {
        return Ok(dst);
    }
    let _guard = SHIFT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if dst.exists() {
        return Ok(dst);
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| RuntimeError::io(cache_dir, e))?;
    let tmp = cache_dir.join(format!(".tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut cp = std::process::Command::new("cp");
    cp.arg("-a").arg("--reflink=auto").arg(src).arg(&tmp);
    // A daemon killed mid-copy takes the copy with it; the next one removes
    // the partial directory (`remove_partial_copies`).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cp, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    };
    let status = cp.status().map_err(|e| RuntimeError::io(Path::new("cp"), e))?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(RuntimeError::BadRootfs(format!("copying rootfs {} failed", src.display())));
    }
    if let Err(e) = shift_root_owner(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &dst).map_err(|e| RuntimeError::io(&dst, e))?;
    Ok(dst)
}

/// Removes the half-made copies a killed daemon left in the rootfs cache.
pub fn remove_partial_copies(cache_dir: &Path) {
    for e in std::fs::read_dir(cache_dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn shift_root_owner(dir: &Path) -> Result<(), RuntimeError> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).map_err(|e| RuntimeError::io(&p, e))?;
        let uid = (m.uid() == 0).then_some(ROOT_HOST_ID);
        let gid = (m.gid() == 0).then_some(ROOT_HOST_ID);
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&p, uid, gid).map_err(|e| RuntimeError::io(&p, e))?;
            // chown clears setuid/setgid bits; put them back.
            if !m.file_type().is_symlink() && m.mode() & 0o6000 != 0 {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m.mode() & 0o7777));
            }
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| RuntimeError::io(&p, e))? {
                stack.push(e.map_err(|e| RuntimeError::io(&p, e))?.path());
            }
        }
    }
    Ok(())
}

/// Paths of a container's copy-on-write layer inside its depot directory.
pub struct Overlay {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
}

impl Overlay {
    pub fn in_dir(dir: &Path) -> Self {
        Self { upper: dir.join("upper"), work: dir.join("work"), merged: dir.join("rootfs") }
    }

    /// Makes the upper and work layers (upper owned by container root) and
    /// returns the overlay's mount options; `lower` is never written.
    pub fn prepare(&self, lower: &Path, root_owner: Option<u32>) -> Result<String, RuntimeError> {
        for d in [&self.upper, &self.work, &self.merged] {
            std::fs::create_dir_all(d).map_err(|e| RuntimeError::io(d, e))?;
        }
        let lower_meta = std::fs::metadata(lower).map_err(|e| RuntimeError::io(lower, e))?;
        let _ = std::fs::set_permissions(&self.upper, std::fs::Permissions::from_mode(lower_meta.mode() & 0o7777));
        if let Some(owner) = root_owner {
            std::os::unix::fs::chown(&self.upper, Some(owner), Some(owner))
                .map_err(|e| RuntimeError::io(&self.upper, e))?;
        }
        Ok(format!("lowerdir={},upperdir={},workdir={}", lower.display(), self.upper.display(), self.work.display()))
    }

    /// Mounts the overlay prepared with `options` on `merged`.
    pub fn mount_at(merged: &Path, options: &str) -> Result<(), RuntimeError> {
        nix::mount::mount(Some("overlay"), merged, Some("overlay"), MsFlags::empty(), Some(options))
            .map_err(|e| RuntimeError::Mount(format!("overlay on {}: {e}", merged.display())))
    }

    /// Unmounts if mounted; a missing or already unmounted layer is fine.
    pub fn unmount(&self) -> Result<(), RuntimeError> {
        match nix::mount::umount2(&self.merged, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(RuntimeError::Mount(format!("unmount {}: {e}", self.merged.display()))),
        }
    }
}

impl Overlay {
    /// Puts files into the container's `/etc` by writing them to the (fresh)
    /// upper layer before the overlay is mounted: they shadow the image's
    /// files of the same name, with no copy-up or whiteout. Owned by container
    /// root, mode 0644 (root inside may change them, others may not). The
    /// image's `/etc` is only looked at, never followed, for the directory's
    /// mode and owner.
    pub fn write_etc(&self, lower: &Path, files: &[(String, String)], owner: u32) -> Result<(), RuntimeError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if files.is_empty() {
            return Ok(());
        }
        let etc = self.upper.join("etc");
        let (mode, uid, gid) = match std::fs::symlink_metadata(lower.join("etc")) {
            Ok(m) if m.is_dir() => (m.mode() & 0o7777, m.uid(), m.gid()),
            _ => (0o755, owner, owner),
        };
        std::fs::create_dir(&etc).map_err(|e| RuntimeError::io(&etc, e))?;
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(mode)).map_err(|e| RuntimeError::io(&etc, e))?;
        std::os::unix::fs::lchown(&etc, Some(uid), Some(gid)).map_err(|e| RuntimeError::io(&etc, e))?;
        for (name, content) in files {
            let path = etc.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| RuntimeError::io(&path, e))?;
            f.write_all(content.as_bytes()).map_err(|e| RuntimeError::io(&path, e))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(|e| RuntimeError::io(&path, e))?;
            std::os::unix::fs::fchown(&f, Some(owner), Some(owner)).map_err(|e| RuntimeError::io(&path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_files_go_to_the_upper_layer_and_never_follow_the_image() {
        let dir = std::env::temp_dir().join(format!("celld-etc-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let me = nix::unistd::getuid().as_raw();
        let files = vec![("hosts".to_string(), "127.0.0.1 localhost\n".to_string())];
        // An image whose /etc is a directory: its mode carries over.
        let lower = dir.join("lower");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::set_permissions(lower.join("etc"), std::fs::Permissions::from_mode(0o751)).unwrap();
        let o = Overlay::in_dir(&dir.join("c1"));
        std::fs::create_dir_all(&o.upper).unwrap();
        o.write_etc(&lower, &files, me).unwrap();
        assert_eq!(std::fs::read_to_string(o.upper.join("etc/hosts")).unwrap(), "127.0.0.1 localhost\n");
        assert_eq!(std::fs::metadata(o.upper.join("etc/hosts")).unwrap().mode() & 0o777, 0o644);
        assert_eq!(std::fs::metadata(o.upper.join("etc")).unwrap().mode() & 0o777, 0o751);
        // An image whose /etc is a symlink out of it: not followed.
        let evil = dir.join("evil");
        std::fs::create_dir_all(dir.join("outside")).unwrap();
        std::fs::create_dir_all(&evil).unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), evil.join("etc")).unwrap();
        let o2 = Overlay::in_dir(&dir.join("c2"));
        std::fs::create_dir_all(&o2.upper).unwrap();
        o2.write_etc(&evil, &files, me).unwrap();
        assert!(!dir.join("outside/hosts").exists());
        assert_eq!(std::fs::metadata(o2.upper.join("etc")).unwrap().mode() & 0o777, 0o755);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolves_names() {
        let dir = std::env::temp_dir().join(format!("celld-rootfs-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("tiny")).unwrap();
        assert_eq!(resolve("", &dir, "preloaded:tiny").unwrap(), dir.join("tiny"));
        assert_eq!(resolve("preloaded:tiny", &dir, "x").unwrap(), dir.join("tiny"));
        assert_eq!(resolve(dir.join("tiny").to_str().unwrap(), &dir, "x").unwrap(), dir.join("tiny"));
        for bad in ["preloaded:../etc", "preloaded:", "docker:///busybox", "relative/path", "preloaded:nope"] {
            assert!(matches!(resolve(bad, &dir, "x"), Err(RuntimeError::BadRootfs(_))), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
