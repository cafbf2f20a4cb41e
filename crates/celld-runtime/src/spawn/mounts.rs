//! The container's file system, set up from inside its mount namespace:
//! the spec's mounts (a rootfs's symlinks resolved inside it), the device
//! nodes, the cgroups view, the pivot into the rootfs and the masks.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::{CgroupMountPlan, DevicePlan, MountPlan};

/// Device nodes every container gets, bound from the host's (a user namespace
/// may not create device nodes).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// `dest` inside `root`, following symlinks as if `root` were `/`: a rootfs's
/// symlinks cannot send a mount outside it. Missing components are kept as
/// they are (the caller creates them).
pub(super) fn resolve_in_root(root: &Path, dest: &Path) -> Result<PathBuf, String> {
    let mut out = root.to_path_buf();
    let mut pending: VecDeque<OsString> = VecDeque::new();
    let push_front = |pending: &mut VecDeque<OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => pending.push_front(n.to_os_string()),
                Component::ParentDir => pending.push_front("..".into()),
                _ => {}
            }
        }
    };
    push_front(&mut pending, dest);
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            if out != root {
                out.pop();
            }
            continue;
        }
        let next = out.join(&c);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(format!("{}: too many levels of symbolic links", dest.display()));
                }
                let target = std::fs::read_link(&next).map_err(|e| format!("{}: {e}", next.display()))?;
                if target.is_absolute() {
                    out = root.to_path_buf();
                }
                push_front(&mut pending, &target);
            }
            _ => out = next,
        }
    }
    Ok(out)
}

pub(super) fn mount_one(rootfs: &Path, m: &MountPlan) -> Result<(), String> {
    let target = resolve_in_root(rootfs, &m.destination)?;
    let what = |e: &dyn std::fmt::Display| format!("mount {}: {e}", m.destination.display());
    if m.dir_in_dev {
        // In the /dev tmpfs mounted just before: fresh, so the directory is new.
        let mode = m.data.split(',').find_map(|o| o.strip_prefix("mode=")).unwrap_or("1777");
        let mode = u32::from_str_radix(mode, 8).map_err(|e| what(&format!("mode {mode}: {e}")))?;
        std::fs::create_dir(&target).map_err(|e| what(&e))?;
        std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(|e| what(&e))?;
        mount(Some(&target), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| what(&e))?;
        return remount(&target, m.flags);
    }
    if m.source_is_dir {
        std::fs::create_dir_all(&target).map_err(|e| what(&e))?;
    } else if !target.exists() {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| what(&e))?;
        }
        std::fs::File::create(&target).map_err(|e| what(&e))?;
    }
    if m.bind {
        let rec = m.flags & MsFlags::MS_REC;
        mount(Some(&m.source), &target, None::<&str>, MsFlags::MS_BIND | rec, None::<&str>).map_err(|e| what(&e))?;
        let extra = m.flags & !MsFlags::MS_REC;
        if !extra.is_empty() {
            remount(&target, extra)?;
        }
    } else {
        let data = (!m.data.is_empty()).then_some(m.data.as_str());
        mount(Some(&m.source), &target, m.fstype.as_deref(), m.flags, data).map_err(|e| what(&e))?;
    }
    Ok(())
}

/// Remounts a bind mount with `flags` added, keeping the flags it has: in a
/// user namespace, flags inherited from a more privileged mount are locked and
/// a remount that drops them fails.
pub(super) fn remount(target: &Path, flags: MsFlags) -> Result<(), String> {
    let st = nix::sys::statvfs::statvfs(target).map_err(|e| format!("statvfs {}: {e}", target.display()))?;
    use nix::sys::statvfs::FsFlags;
    let mut keep = MsFlags::empty();
    for (f, m) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if st.flags().contains(f) {
            keep |= m;
        }
    }
    mount(None::<&str>, target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | keep | flags, None::<&str>)
        .map_err(|e| format!("remount {}: {e}", target.display()))
}

/// What every container is shown alike, in one read-only tmpfs the helper
/// mounts once in its own mount namespace (which each container's starts as a
/// copy of): `empty/`, bound over masked directories, and `cgroup/`, the v1
/// hierarchies' directories and symlinks, under which each container's own
/// cgroup directories are bound. Every file system instance costs the kernel
/// a shrinker slot in every memory cgroup for as long as it lives, so a tmpfs
/// of its own for each of these made every container cost more, the more
/// containers there were.
static SHARED_VIEWS: OnceLock<PathBuf> = OnceLock::new();

const EMPTY: &str = "empty";
const CGROUP_SKELETON: &str = "cgroup";

/// Mounts the shared views at `dir` (see [`SHARED_VIEWS`]), shaped for the
/// cgroup `views` every container of this host gets. Once per helper.
pub(crate) fn mount_shared_views(dir: &Path, views: &[super::super::cgroups::View]) -> Result<(), String> {
    let what = |e: &dyn std::fmt::Display| format!("shared container views at {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(|e| what(&e))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some("mode=755,size=64k")).map_err(|e| what(&e))?;
    let made = (|| -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, symlink};
        std::fs::DirBuilder::new().mode(0o555).create(dir.join(EMPTY))?;
        let skeleton = dir.join(CGROUP_SKELETON);
        std::fs::DirBuilder::new().mode(0o755).create(&skeleton)?;
        for view in views.iter().filter(|v| !v.name.is_empty()) {
            std::fs::DirBuilder::new().mode(0o555).create(skeleton.join(&view.name))?;
            for link in &view.links {
                symlink(&view.name, skeleton.join(link))?;
            }
        }
        Ok(())
    })();
    // Read-only for good: the superblock itself, not just this mount.
    let sealed = made.map_err(|e| what(&e)).and_then(|()| {
        mount(None::<&str>, dir, None::<&str>, flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>)
            .map_err(|e| what(&e))
    });
    if let Err(e) = sealed {
        let _ = umount2(dir, MntFlags::MNT_DETACH);
        return Err(e);
    }
    let _ = SHARED_VIEWS.set(dir.to_path_buf());
    Ok(())
}

/// A directory of the shared views, when they are mounted and have it.
fn shared_view(name: &str) -> Option<PathBuf> {
    SHARED_VIEWS.get().map(|d| d.join(name)).filter(|p| p.is_dir())
}

/// The container's cgroups as runc shows them: on v1 a read-only directory
/// with each hierarchy's directory of the container bound in (and the usual
/// symlinks for combined hierarchies such as `cpu,cpuacct`), on v2 the
/// container's directory itself; all read-only.
pub(super) fn mount_cgroups(rootfs: &Path, c: &CgroupMountPlan) -> Result<(), String> {
    let target = resolve_in_root(rootfs, &c.destination)?;
    let what = |e: &dyn std::fmt::Display| format!("mount the cgroups at {}: {e}", c.destination.display());
    std::fs::create_dir_all(&target).map_err(|e| what(&e))?;
    let bind_ro = |source: &Path, at: &Path| -> Result<(), String> {
        mount(Some(source), at, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| what(&e))?;
        remount(at, c.flags)
    };
    if let [view] = c.views.as_slice() {
        if view.name.is_empty() {
            return bind_ro(&view.source, &target);
        }
    }
    // The shared skeleton when it has every hierarchy (it was shaped from the
    // same list), else a tmpfs of the container's own.
    let skeleton = shared_view(CGROUP_SKELETON).filter(|s| c.views.iter().all(|v| s.join(&v.name).is_dir()));
    if let Some(skeleton) = skeleton {
        bind_ro(&skeleton, &target)?;
        for view in &c.views {
            bind_ro(&view.source, &target.join(&view.name))?;
        }
        return Ok(());
    }
    let tmpfs_flags = c.flags & !MsFlags::MS_RDONLY;
    mount(Some("tmpfs"), &target, Some("tmpfs"), tmpfs_flags, Some("mode=755")).map_err(|e| what(&e))?;
    for view in &c.views {
        let at = target.join(&view.name);
        std::fs::create_dir(&at).map_err(|e| what(&e))?;
        bind_ro(&view.source, &at)?;
        for link in &view.links {
            std::os::unix::fs::symlink(&view.name, target.join(link)).map_err(|e| what(&e))?;
        }
    }
    remount(&target, c.flags)
}

pub(super) fn make_devices(rootfs: &Path, extra: &[DevicePlan], user_namespace: bool) -> Result<(), String> {
    let dev = resolve_in_root(rootfs, Path::new("/dev"))?;
    for d in extra {
        let target = resolve_in_root(rootfs, &d.path)?;
        let what = |e: &dyn std::fmt::Display| format!("create {}: {e}", d.path.display());
        if user_namespace {
            // A user namespace may not make nodes: the host's, if it has one.
            std::fs::File::create(&target).map_err(|e| what(&e))?;
            mount(Some(&d.path), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| what(&e))?;
            continue;
        }
        let mode = nix::sys::stat::Mode::from_bits_truncate(d.mode);
        nix::sys::stat::mknod(&target, nix::sys::stat::SFlag::S_IFCHR, mode, d.rdev).map_err(|e| what(&e))?;
        // Not the umask's: the spec's mode.
        nix::sys::stat::fchmodat(None, &target, mode, nix::sys::stat::FchmodatFlags::FollowSymlink)
            .map_err(|e| what(&e))?;
    }
    for name in DEVICES {
        let target = dev.join(name);
        std::fs::File::create(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
        let source = Path::new("/dev").join(name);
        mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| format!("bind {}: {e}", source.display()))?;
    }
    for (name, to) in DEV_SYMLINKS {
        match std::os::unix::fs::symlink(to, dev.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("symlink /dev/{name}: {e}")),
        }
    }
    Ok(())
}

pub(super) fn pivot_root(rootfs: &Path) -> Result<(), String> {
    std::env::set_current_dir(rootfs).map_err(|e| format!("chdir {}: {e}", rootfs.display()))?;
    // The old root is stacked under the new one, then detached from it.
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| format!("make the old root a slave: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach the old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Hides a path of the container (before the pivot, while the shared views
/// are reachable): the shared empty directory (else an empty tmpfs of its own)
/// over a directory, /dev/null over a file; all read-only.
pub(super) fn mask(rootfs: &Path, path: &Path) -> Result<(), String> {
    let target = resolve_in_root(rootfs, path)?;
    let what = |e: &dyn std::fmt::Display| format!("mask {}: {e}", path.display());
    match std::fs::symlink_metadata(&target) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => match shared_view(EMPTY) {
            Some(empty) => {
                mount(Some(&empty), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| what(&e))?;
                remount(&target, MsFlags::MS_RDONLY)
            }
            None => {
                mount(Some("tmpfs"), &target, Some("tmpfs"), MsFlags::MS_RDONLY, None::<&str>).map_err(|e| what(&e))
            }
        },
        Ok(_) => mount(Some("/dev/null"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| what(&e)),
    }
}
