//! Root filesystems: naming (`preloaded:NAME` or an absolute directory), the
//! uid-shifted copy that unprivileged containers use as their read-only lower
//! layer, and the per-container overlay on top of it.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};

use super::RuntimeError;

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
        // The directory itself, not a link to it: the cache copies and keys
        // what it is given, and a link copied is the unshifted tree.
        Ok(m) if m.is_dir() => std::fs::canonicalize(&path).map_err(|e| RuntimeError::io(&path, e)),
        Ok(_) => Err(RuntimeError::BadRootfs(format!("rootfs {uri:?}: {} is not a directory", path.display()))),
        Err(e) => Err(RuntimeError::BadRootfs(format!("rootfs {uri:?}: {}: {e}", path.display()))),
    }
}

/// How long a rootfs's fingerprint is trusted before its tree is walked again:
/// a walk of a full (~20k entries) rootfs costs tens of milliseconds, too much
/// for every create (~7 ms), while a change to a rootfs on disk is rare and
/// is seen by the creates that start this long after it.
const RECHECK: Duration = Duration::from_secs(2);

/// The cache's state, behind one lock: choosing a copy, making one, the
/// `lower` link that says a container uses it, and removing unused copies are
/// never interleaved, so no copy is removed between a create choosing it and
/// the create's link.
struct Cache {
    /// Canonical source → (its copy's key, when the key was computed).
    keys: HashMap<PathBuf, (String, Instant)>,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn with_cache<T>(f: impl FnOnce(&mut Cache) -> T) -> T {
    let mut guard = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(|| Cache { keys: HashMap::new() }))
}

/// The link in a container's depot directory naming its read-only lower layer.
pub fn lower_link(container_dir: &Path) -> PathBuf {
    container_dir.join("lower")
}

/// What identifies a rootfs's content, cheaply: a hash of every entry's
/// relative path, type and mode, owner, size, inode, and modification and
/// change times (a write to any file changes its times; a replaced file or
/// directory its inode). Not the bytes: reading a whole rootfs per check would
/// cost seconds.
pub fn fingerprint(src: &Path) -> Result<String, RuntimeError> {
    let mut h = xxhash_rust::xxh64::Xxh64::new(0);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = src.join(&rel);
        let m = std::fs::symlink_metadata(&path).map_err(|e| RuntimeError::io(&path, e))?;
        h.update(rel.as_os_str().as_encoded_bytes());
        for n in [
            m.mode() as u64,
            m.uid() as u64,
            m.gid() as u64,
            m.size(),
            m.ino(),
            m.rdev(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.ctime() as u64,
            m.ctime_nsec() as u64,
        ] {
            h.update(&n.to_le_bytes());
        }
        if m.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&path)
                .map_err(|e| RuntimeError::io(&path, e))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| RuntimeError::io(&path, e))?;
            // Sorted: the same tree hashes the same whatever order the directory lists in.
            names.sort_unstable_by(|a, b| b.cmp(a));
            stack.extend(names.into_iter().map(|n| rel.join(n)));
        }
    }
    Ok(format!("{:016x}", h.digest()))
}

/// The cache key of `src`'s copy: its path (so copies of one source can be
/// told apart from others) and its content's fingerprint, walked again when
/// older than [`RECHECK`].
fn key(cache: &mut Cache, src: &Path) -> Result<String, RuntimeError> {
    if let Some((k, at)) = cache.keys.get(src) {
        if at.elapsed() < RECHECK {
            return Ok(k.clone());
        }
    }
    let k = format!("{:016x}-{}", super::fnv1a(src.as_os_str().as_encoded_bytes()), fingerprint(src)?);
    cache.keys.insert(src.to_path_buf(), (k.clone(), Instant::now()));
    Ok(k)
}

/// The read-only lower layer for an unprivileged container: a copy of `src` in
/// which files owned by root belong to container root (`ROOT_HOST_ID`), so they appear as root
/// inside the user namespace. Made once per rootfs content and shared; a
/// change to `src` makes a new copy, and the copies it supersedes go once no
/// container uses them. The container in `container_dir` is recorded as a
/// user of the copy (its [`lower_link`]), and of `src` itself when it is
/// privileged (`shift` false) and uses no copy.
pub fn lower_layer(
    src: &Path,
    cache_dir: &Path,
    containers_dir: &Path,
    container_dir: &Path,
    shift: bool,
) -> Result<PathBuf, RuntimeError> {
    with_cache(|cache| {
        let lower = if shift { shifted_copy(cache, src, cache_dir, containers_dir)? } else { src.to_path_buf() };
        let link = lower_link(container_dir);
        std::os::unix::fs::symlink(&lower, &link).map_err(|e| RuntimeError::io(&link, e))?;
        Ok(lower)
    })
}

fn shifted_copy(
    cache: &mut Cache,
    src: &Path,
    cache_dir: &Path,
    containers_dir: &Path,
) -> Result<PathBuf, RuntimeError> {
    let key = key(cache, src)?;
    let dst = cache_dir.join(&key);
    if dst.exists() {
        return Ok(dst);
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| RuntimeError::io(cache_dir, e))?;
    let tmp = cache_dir.join(format!(".tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut cp = std::process::Command::new("cp");
    // `src/.`: the directory's content, even were `src` a link (cp -a copies a
    // link given as its source as the link itself).
    cp.arg("-a").arg("--reflink=auto").arg("-T").arg(src.join(".")).arg(&tmp);
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
    // The same shift as an image layer's (celld-image's).
    if let Err(e) = celld_image::shift::shift_root_owner(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(RuntimeError::BadRootfs(format!("rootfs {}: {e}", src.display())));
    }
    // Which source a copy is of, for the clean-up at start (the key only has a hash).
    let source_file = cache_dir.join(format!("{key}{SOURCE_SUFFIX}"));
    std::fs::write(&source_file, src.as_os_str().as_encoded_bytes()).map_err(|e| RuntimeError::io(&source_file, e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| RuntimeError::io(&dst, e))?;
    tracing::info!(rootfs = %src.display(), copy = %key, "made a uid-shifted rootfs copy");
    // The copies this one supersedes go now if nothing uses them, else with
    // their last container.
    let prefix = format!("{}-", &key[..16]);
    collect(cache, cache_dir, containers_dir, |name| name.starts_with(&prefix) && name != key);
    Ok(dst)
}

const SOURCE_SUFFIX: &str = ".source";

/// The copies containers use: the targets of their `lower` links. `None` if
/// some container has no link (made by a celld from before the links), when
/// nothing may be removed.
fn copies_in_use(containers_dir: &Path) -> Option<HashSet<PathBuf>> {
    let mut used = HashSet::new();
    for e in std::fs::read_dir(containers_dir).into_iter().flatten().flatten() {
        match std::fs::read_link(lower_link(&e.path())) {
            Ok(target) => {
                used.insert(target);
            }
            // A create that has not chosen its layer yet waits for the cache
            // lock and will choose a current copy, which is never removed here.
            Err(_) if e.path().join("config.json").exists() => return None,
            Err(_) => {}
        }
    }
    Some(used)
}

/// Removes the copies named `doomed` that no container uses (moved aside at
/// once, deleted off the lock).
fn collect(cache: &Cache, cache_dir: &Path, containers_dir: &Path, doomed: impl Fn(&str) -> bool) {
    let _ = cache;
    let Some(used) = copies_in_use(containers_dir) else {
        tracing::info!("a container without a lower-layer link: old rootfs copies are kept");
        return;
    };
    for e in std::fs::read_dir(cache_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with(SOURCE_SUFFIX) || !doomed(&name) || used.contains(&e.path()) {
            continue;
        }
        let aside = cache_dir.join(format!(".tmp-gone-{name}"));
        if std::fs::rename(e.path(), &aside).is_ok() {
            tracing::info!(copy = %name, "removing a rootfs copy no container uses");
            let _ = std::fs::remove_file(cache_dir.join(format!("{name}{SOURCE_SUFFIX}")));
            std::thread::spawn(move || std::fs::remove_dir_all(&aside));
        }
    }
}

/// After a container is gone: removes its rootfs copy if that copy is no
/// longer its source's current one and no other container uses it.
pub fn release(lower: &Path, cache_dir: &Path, containers_dir: &Path) {
    if lower.parent() != Some(cache_dir) {
        return;
    }
    let Some(name) = lower.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    with_cache(|cache| {
        let current = cache.keys.values().any(|(k, _)| *k == name);
        if !current {
            collect(cache, cache_dir, containers_dir, |n| n == name);
        }
    });
}

/// At start (before any create): removes every copy no container uses, but
/// the current copy of each source that still exists (the next create of it
/// would only make it again), and what a killed daemon left half-made.
pub fn clean_cache(cache_dir: &Path, containers_dir: &Path) {
    remove_partial_copies(cache_dir);
    with_cache(|cache| {
        let mut current = HashSet::new();
        for e in std::fs::read_dir(cache_dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(SOURCE_SUFFIX) else { continue };
            if !cache_dir.join(key).is_dir() {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let Ok(bytes) = std::fs::read(e.path()) else { continue };
            let src = PathBuf::from(std::ffi::OsString::from_vec(bytes));
            match self::key(cache, &src) {
                Ok(k) if k == key => {
                    current.insert(k);
                }
                _ => {}
            }
        }
        collect(cache, cache_dir, containers_dir, |n| !current.contains(n));
    });
}

/// Removes the half-made copies a killed daemon left in the rootfs cache.
pub fn remove_partial_copies(cache_dir: &Path) {
    for e in std::fs::read_dir(cache_dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Paths of a container's copy-on-write layer inside its depot directory.
pub struct Overlay {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
}

impl Overlay {
    pub fn in_dir(dir: &Path) -> Self {
        Self::with_layers(dir, dir)
    }

    /// Upper and work layers in `layers` (where the disk backend puts a
    /// container's writes), the mount point in `dir`.
    pub fn with_layers(layers: &Path, dir: &Path) -> Self {
        Self { upper: layers.join("upper"), work: layers.join("work"), merged: dir.join("rootfs") }
    }

    /// Makes the upper and work layers (upper owned by container root) and
    /// returns the overlay's mount options; `lowers` (topmost first) are
    /// never written.
    pub fn prepare(&self, lowers: &[PathBuf], root_owner: Option<u32>) -> Result<String, RuntimeError> {
        let Some(top) = lowers.first() else { return Err(RuntimeError::BadRootfs("no lower layer".into())) };
        for d in [&self.upper, &self.work, &self.merged] {
            std::fs::create_dir_all(d).map_err(|e| RuntimeError::io(d, e))?;
        }
        let lower_meta = std::fs::metadata(top).map_err(|e| RuntimeError::io(top, e))?;
        let _ = std::fs::set_permissions(&self.upper, std::fs::Permissions::from_mode(lower_meta.mode() & 0o7777));
        if let Some(owner) = root_owner {
            std::os::unix::fs::chown(&self.upper, Some(owner), Some(owner))
                .map_err(|e| RuntimeError::io(&self.upper, e))?;
        }
        let lowerdir = lowers.iter().map(|l| l.display().to_string()).collect::<Vec<_>>().join(":");
        Ok(format!("lowerdir={lowerdir},upperdir={},workdir={}", self.upper.display(), self.work.display()))
    }

    /// Mounts the overlay prepared with `options` on `merged`.
    ///
    /// `volatile`: a container's writes do not outlive it (nor a reboot of
    /// the host, after which Garden's containers are gone), so the overlay
    /// never syncs its upper file system; without it, the last unmount of
    /// every container's overlay (its init's exit) commits the whole depot
    /// file system (a btrfs transaction), one container after another.
    /// Kernels before 5.10 do not know the option.
    pub fn mount_at(merged: &Path, options: &str) -> Result<(), RuntimeError> {
        let mount = |o: &str| nix::mount::mount(Some("overlay"), merged, Some("overlay"), MsFlags::empty(), Some(o));
        mount(&format!("{options},volatile"))
            .or_else(|e| if e == nix::errno::Errno::EINVAL { mount(options) } else { Err(e) })
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
    /// image's `/etc` (in the topmost of `lowers` that has one) is only
    /// looked at, never followed, for the directory's mode and owner.
    pub fn write_etc(&self, lowers: &[PathBuf], files: &[(String, String)], owner: u32) -> Result<(), RuntimeError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if files.is_empty() {
            return Ok(());
        }
        let etc = self.upper.join("etc");
        let image_etc = lowers.iter().find_map(|l| std::fs::symlink_metadata(l.join("etc")).ok());
        let (mode, uid, gid) = match image_etc {
            Some(m) if m.is_dir() => (m.mode() & 0o7777, m.uid(), m.gid()),
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
        o.write_etc(std::slice::from_ref(&lower), &files, me).unwrap();
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
        o2.write_etc(std::slice::from_ref(&evil), &files, me).unwrap();
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
