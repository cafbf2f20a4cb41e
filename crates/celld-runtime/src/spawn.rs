//! Starts a container from its OCI bundle: celld's own implementation of the
//! part of the OCI runtime spec that `spec::build` writes (namespaces, id maps,
//! cgroups, mounts, devices, masked and read-only paths, hostname,
//! capabilities, no_new_privs), used in place of libcontainer.
//!
//! Why not libcontainer: its create forked twice and set up cgroups through
//! libcgroups, which re-reads mountinfo and /proc/self/cgroup once per v1
//! controller; that cost ~15 ms of a ~20 ms create. Here the helper makes one
//! `clone3` with every namespace, writes the id maps, lets the child set up
//! its mounts while it writes the cgroup files, and the child becomes init
//! once told that it is in its cgroups.
//!
//! Runs in the single-threaded runtime helper only: the child of the raw
//! `clone3` goes on with a copy of the helper's memory, which is sound only
//! because no other thread can hold a lock in it.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, LinuxResources, Spec};

use super::cgroups::Cgroup;
use mounts::{make_devices, mask, mount_cgroups, mount_one, pivot_root, remount};

mod init_exe;
mod mounts;

pub use init_exe::{INIT_BINARY, InitExe};
pub(crate) use mounts::mount_shared_views;

/// One of the spec's mounts, decided before the clone so that the child only
/// makes system calls.
#[derive(Debug, PartialEq)]
struct MountPlan {
    /// Inside the rootfs, as the container will see it.
    destination: PathBuf,
    source: PathBuf,
    fstype: Option<String>,
    flags: MsFlags,
    /// Filesystem options such as `mode=755`.
    data: String,
    bind: bool,
    /// Whether the source is a directory (a bind's destination is made to match).
    source_is_dir: bool,
    /// A tmpfs at /dev/shm made as a directory of the /dev tmpfs (mode from
    /// `data`) bound onto itself with its own flags (see `share_dev_tmpfs`).
    dir_in_dev: bool,
}

/// The spec's `cgroup` mount: the container's own cgroups, shown read-only
/// at `destination` once they exist.
#[derive(Debug)]
struct CgroupMountPlan {
    destination: PathBuf,
    /// Flags for every mount it makes (read-only among them).
    flags: MsFlags,
    views: Vec<super::cgroups::View>,
}

/// A device node of the spec's `linux.devices`.
#[derive(Debug)]
struct DevicePlan {
    path: PathBuf,
    rdev: libc::dev_t,
    mode: u32,
}

/// Everything the child needs, from the spec.
#[derive(Debug)]
struct Plan {
    clone_flags: u64,
    user_namespace: bool,
    uid_map: String,
    gid_map: String,
    rootfs: PathBuf,
    hostname: Option<String>,
    mounts: Vec<MountPlan>,
    cgroup_mount: Option<CgroupMountPlan>,
    devices: Vec<DevicePlan>,
    masked: Vec<PathBuf>,
    readonly: Vec<PathBuf>,
    /// Capability bits for the bounding, permitted, effective and inheritable sets.
    capabilities: u64,
    last_capability: u32,
    no_new_privileges: bool,
    env: Vec<(OsString, OsString)>,
    cgroup: Cgroup,
    resources: LinuxResources,
}

fn id_map(mappings: &Option<Vec<LinuxIdMapping>>) -> String {
    mappings.iter().flatten().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect()
}

/// Mount options split into flags and filesystem data, as mount(8) does.
fn mount_options(options: &[String]) -> (MsFlags, String, bool) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    let mut bind = false;
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                flags |= MsFlags::MS_REC;
            }
            // Propagation stays what the container's namespace gives (slave).
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","), bind)
}

/// Makes a tmpfs at /dev/shm a directory of the tmpfs at /dev when both have
/// the same size: every file system instance costs the kernel a shrinker slot
/// in every memory cgroup for as long as it lives (see `mount_shared_views`),
/// and the two hold the same 64 MiB under runc's defaults.
fn share_dev_tmpfs(mounts: &mut [MountPlan]) {
    let tmpfs_at = |m: &MountPlan, at: &str| m.fstype.as_deref() == Some("tmpfs") && m.destination == Path::new(at);
    let size = |m: &MountPlan| m.data.split(',').find(|o| o.starts_with("size=")).map(str::to_string);
    let Some(dev) = mounts.iter().position(|m| tmpfs_at(m, "/dev") && !m.flags.contains(MsFlags::MS_RDONLY)) else {
        return;
    };
    let dev_size = size(&mounts[dev]);
    for m in mounts.iter_mut().skip(dev + 1) {
        if tmpfs_at(m, "/dev/shm") && dev_size.is_some() && size(m) == dev_size {
            m.dir_in_dev = true;
            m.bind = true;
            m.fstype = None;
        }
    }
}

/// The spec fields this runtime carries out; a spec with any other field set
/// is refused rather than started without it. (`parent.*`: any child.)
const SUPPORTED_FIELDS: &[&str] = &[
    "ociVersion",
    "hostname",
    "mounts",
    "root",
    "root.path",
    "root.readonly",
    "process",
    "process.terminal",
    "process.user",
    "process.user.uid",
    "process.user.gid",
    "process.args",
    "process.env",
    "process.cwd",
    "process.capabilities",
    "process.capabilities.bounding",
    "process.capabilities.effective",
    "process.capabilities.permitted",
    "process.capabilities.inheritable",
    "process.noNewPrivileges",
    "linux",
    "linux.namespaces",
    "linux.uidMappings",
    "linux.gidMappings",
    "linux.cgroupsPath",
    "linux.devices",
    "linux.maskedPaths",
    "linux.readonlyPaths",
    "linux.resources",
    "linux.resources.devices",
    "linux.resources.memory",
    "linux.resources.memory.limit",
    "linux.resources.memory.swap",
    "linux.resources.cpu",
    "linux.resources.cpu.shares",
    "linux.resources.pids",
    "linux.resources.pids.limit",
];

/// The first field of `spec` (as JSON) that is set but not supported.
fn unsupported_field(value: &serde_json::Value, path: &str) -> Option<String> {
    let serde_json::Value::Object(fields) = value else { return None };
    for (k, v) in fields {
        let empty = match v {
            serde_json::Value::Null => true,
            serde_json::Value::Array(a) => a.is_empty(),
            serde_json::Value::Object(o) => o.is_empty(),
            serde_json::Value::Bool(b) => !b,
            _ => false,
        };
        let full = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
        if empty {
            continue;
        }
        if !SUPPORTED_FIELDS.contains(&full.as_str()) {
            return Some(full);
        }
        if let Some(f) = unsupported_field(v, &full) {
            return Some(f);
        }
    }
    None
}

/// Refuses what this runtime would otherwise get wrong silently.
fn check_supported(spec: &Spec) -> Result<(), String> {
    let value = serde_json::to_value(spec).map_err(|e| format!("spec: {e}"))?;
    if let Some(field) = unsupported_field(&value, "") {
        return Err(format!("the spec sets {field}, which celld's runtime does not support"));
    }
    let process = spec.process().as_ref();
    if process.is_some_and(|p| p.user().uid() != 0 || p.user().gid() != 0) {
        return Err("the container's first process must run as root (it becomes celld's init)".into());
    }
    if spec.root().as_ref().is_some_and(|r| r.readonly() == Some(true)) {
        return Err("a read-only root is not supported (the rootfs is a copy-on-write overlay)".into());
    }
    if let Some(c) = process.and_then(|p| p.capabilities().as_ref()) {
        if c.effective() != c.bounding() || c.permitted() != c.bounding() || c.inheritable() != c.bounding() {
            return Err("effective, permitted and inheritable capabilities must equal the bounding set".into());
        }
    }
    Ok(())
}

impl Plan {
    fn from_spec(spec: &Spec, bundle: &Path) -> Result<Self, String> {
        check_supported(spec)?;
        let linux = spec.linux().as_ref().ok_or("the spec has no linux section")?;
        let mut clone_flags = 0u64;
        for ns in linux.namespaces().iter().flatten() {
            if ns.path().is_some() {
                return Err(format!("joining an existing {:?} namespace is not supported", ns.typ()));
            }
            clone_flags |= match ns.typ() {
                LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
                LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
                LinuxNamespaceType::Network => libc::CLONE_NEWNET,
                LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
                LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
                LinuxNamespaceType::User => libc::CLONE_NEWUSER,
                LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
                LinuxNamespaceType::Time => return Err("time namespaces are not supported".into()),
            } as u64;
        }
        if clone_flags & libc::CLONE_NEWNS as u64 == 0 || clone_flags & libc::CLONE_NEWPID as u64 == 0 {
            return Err("a container needs its own mount and pid namespaces".into());
        }
        let user_namespace = clone_flags & libc::CLONE_NEWUSER as u64 != 0;
        let (uid_map, gid_map) = (id_map(linux.uid_mappings()), id_map(linux.gid_mappings()));
        if user_namespace && (uid_map.is_empty() || gid_map.is_empty()) {
            return Err("a user namespace needs uid and gid mappings".into());
        }
        // A relative root is relative to the bundle, as in the OCI spec.
        let rootfs = bundle.join(spec.root().as_ref().ok_or("the spec has no root")?.path());
        let cgroup = Cgroup::new(linux.cgroups_path().clone().ok_or("the spec has no cgroupsPath")?);
        let mut mounts = Vec::new();
        let mut cgroup_mount = None;
        for m in spec.mounts().iter().flatten() {
            let (flags, data, bind) = mount_options(m.options().as_deref().unwrap_or_default());
            if m.typ().as_deref() == Some("cgroup") {
                let flags = flags | MsFlags::MS_RDONLY;
                cgroup_mount =
                    Some(CgroupMountPlan { destination: m.destination().clone(), flags, views: cgroup.views() });
                continue;
            }
            let bind = bind || m.typ().as_deref() == Some("bind");
            let source = m.source().clone().unwrap_or_else(|| PathBuf::from("none"));
            let source_is_dir = !bind || source.is_dir();
            if bind && !source.exists() {
                return Err(format!("bind mount source {} does not exist", source.display()));
            }
            mounts.push(MountPlan {
                destination: m.destination().clone(),
                source,
                fstype: if bind { None } else { m.typ().clone() },
                flags,
                data,
                bind,
                source_is_dir,
                dir_in_dev: false,
            });
        }
        share_dev_tmpfs(&mut mounts);
        let process = spec.process().as_ref().ok_or("the spec has no process")?;
        let caps = process.capabilities().as_ref();
        let names = caps
            .and_then(|c| c.bounding().as_ref())
            .into_iter()
            .flatten()
            .map(|c| serde_json::to_value(c).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default());
        let capabilities = super::caps::bits(names)?;
        let last_capability = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        let env = process
            .env()
            .iter()
            .flatten()
            .filter_map(|e| e.split_once('='))
            // What set_var would panic on cannot be in an environment anyway.
            .filter(|(k, v)| !k.is_empty() && !k.contains('\0') && !v.contains('\0'))
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        let mut devices = Vec::new();
        for d in linux.devices().iter().flatten() {
            if d.typ() != oci_spec::runtime::LinuxDeviceType::C {
                return Err(format!("device {}: only character devices are supported", d.path().display()));
            }
            let rdev = libc::makedev(d.major() as u32, d.minor() as u32);
            devices.push(DevicePlan { path: d.path().clone(), rdev, mode: d.file_mode().unwrap_or(0o666) & 0o777 });
        }
        Ok(Plan {
            clone_flags,
            user_namespace,
            uid_map,
            gid_map,
            rootfs,
            hostname: spec.hostname().clone(),
            mounts,
            cgroup_mount,
            devices,
            masked: linux.masked_paths().iter().flatten().map(PathBuf::from).collect(),
            readonly: linux.readonly_paths().iter().flatten().map(PathBuf::from).collect(),
            capabilities,
            last_capability,
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
            env,
            cgroup,
            resources: linux.resources().clone().unwrap_or_default(),
        })
    }
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn read_all(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return out,
        }
    }
}

/// What the helper tells the container's first process through the `go`
/// pipe: its id maps are written (it may set itself up), then its cgroups are
/// made (it may drop privileges and become init).
const GO: u8 = b'g';
const CGROUPS_DONE: u8 = b'd';

/// Creates and starts the container `bundle/config.json` describes; its first
/// process becomes celld's init, serving `listen_fd`. Returns init's host pid.
/// On failure nothing of the container is left: no process, no cgroup.
pub fn start(
    bundle: &Path,
    listen_fd: RawFd,
    seccomp: Option<&[libc::sock_filter]>,
    init_exe: Option<&InitExe>,
) -> Result<i32, String> {
    let t0 = std::time::Instant::now();
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let plan = Plan::from_spec(&spec, bundle)?;
    let (go_r, go_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    // On v1 the child is born in its cgroups (see `Cgroup::enter_for_clone`).
    let entered = match plan.cgroup.enter_for_clone(&plan.resources) {
        Ok(entered) => entered,
        Err(e) => {
            return_home_or_exit(0);
            let _ = plan.cgroup.remove();
            return Err(e.to_string());
        }
    };
    let args = CloneArgs { flags: plan.clone_flags, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, size_of::<CloneArgs>()) } as i32;
    if pid == 0 {
        drop((go_w, status_r));
        child(&plan, go_r, status_w, listen_fd, seccomp, init_exe);
    }
    let clone_error = std::io::Error::last_os_error();
    let left = entered.then(|| {
        return_home_or_exit(pid);
        plan.cgroup.limit_pids(&plan.resources).map_err(|e| e.to_string())
    });
    if pid < 0 {
        let _ = plan.cgroup.remove();
        return Err(format!("clone3: {clone_error}"));
    }
    drop((go_r, status_w));
    let cloned = t0.elapsed();
    let mut joined = cloned;
    let result = (|| {
        if plan.user_namespace {
            // Root in the parent namespace may write multi-range maps directly.
            std::fs::write(format!("/proc/{pid}/uid_map"), &plan.uid_map).map_err(|e| format!("write uid_map: {e}"))?;
            std::fs::write(format!("/proc/{pid}/gid_map"), &plan.gid_map).map_err(|e| format!("write gid_map: {e}"))?;
        }
        // The child sets up its mounts while the cgroups are made, then waits
        // for them: it drops privileges and becomes init only once it is in
        // every cgroup, and not at all if this helper dies first (the pipe
        // ends without the second message).
        nix::unistd::write(&go_w, &[GO]).map_err(|e| format!("starting container init: {e}"))?;
        let made = match left {
            Some(left) => left,
            None => plan.cgroup.create(pid, &plan.resources).map_err(|e| e.to_string()),
        };
        joined = t0.elapsed();
        // A child that failed its set-up is gone and has said why (EPIPE here).
        let told = made.is_ok() && nix::unistd::write(&go_w, &[CGROUPS_DONE]).is_ok();
        drop(go_w);
        // The status pipe ends when init is exec'd (it is close-on-exec) or
        // the child exits; a 0 then a reason is an exec that failed.
        match (read_all(&status_r).as_slice(), made) {
            ([0], Ok(())) if told => Ok(()),
            ([0, reason @ ..], _) if !reason.is_empty() => Err(String::from_utf8_lossy(reason).into_owned()),
            ([] | [0], Err(e)) => Err(e),
            ([] | [0], Ok(())) => Err("container init exited while setting up".to_string()),
            // The child's own reason says more than the cgroup write it made fail.
            (message, _) => Err(String::from_utf8_lossy(message).into_owned()),
        }
    })();
    if let Err(e) = result {
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        let _ = plan.cgroup.remove();
        return Err(e);
    }
    tracing::debug!(
        clone_ms = cloned.as_secs_f64() * 1e3,
        cgroup_ms = (joined - cloned).as_secs_f64() * 1e3,
        then_waited_ms = (t0.elapsed() - joined).as_secs_f64() * 1e3,
        "container process set up"
    );
    Ok(pid)
}

/// Back to the helper's own cgroups after `Cgroup::enter_for_clone`. A
/// helper stuck in a container's cgroups would be killed with the container,
/// so one that cannot move back kills its clone (`pid` > 0) and exits: the
/// daemon starts a new helper for its next call.
fn return_home_or_exit(pid: i32) {
    if let Err(e) = Cgroup::return_home() {
        eprintln!("celld helper: cannot move back to its own cgroups ({e}); exiting");
        if pid > 0 {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::process::exit(1);
    }
}

/// Reads the helper's next message; anything but `want` (the pipe's end: the
/// helper died or gave up) ends the child here.
fn await_message(go: &OwnedFd, want: u8) {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(go.as_raw_fd(), &mut b) {
            Ok(1) if b[0] == want => return,
            Err(nix::errno::Errno::EINTR) => {}
            _ => unsafe { libc::_exit(1) },
        }
    }
}

/// The container's first process: sets up the container from inside, then
/// becomes init. Errors go back to the helper through `status`.
fn child(
    plan: &Plan,
    go: OwnedFd,
    status: OwnedFd,
    listen_fd: RawFd,
    seccomp: Option<&[libc::sock_filter]>,
    init_exe: Option<&InitExe>,
) -> ! {
    // The helper writes our id maps first; if it dies instead, so do we.
    await_message(&go, GO);
    let result = set_up(plan).and_then(|()| {
        // Nothing of the container runs before it is in its cgroups; a child
        // whose helper died (no message, or PDEATHSIG) never becomes init.
        await_message(&go, CGROUPS_DONE);
        drop(go);
        // The host's cgroup directories are reachable until the pivot.
        if let Some(c) = &plan.cgroup_mount {
            mount_cgroups(&plan.rootfs, c)?;
        }
        enter_root(plan)?;
        finish(plan, seccomp)
    });
    match result {
        Ok(()) => {
            let _ = nix::unistd::write(&status, &[0]);
            match init_exe {
                Some(exe) => {
                    let reason = exe.exec(listen_fd);
                    let _ = nix::unistd::write(&status, reason.as_bytes());
                    unsafe { libc::_exit(1) }
                }
                // No static init binary: go on as init in this copy of the helper.
                None => {
                    drop(status);
                    super::init::run(listen_fd)
                }
            }
        }
        Err(message) => {
            let _ = nix::unistd::write(&status, message.as_bytes());
            unsafe { libc::_exit(1) }
        }
    }
}

/// What can be done before the container is in its cgroups: credentials,
/// mounts, devices, hostname.
fn set_up(plan: &Plan) -> Result<(), String> {
    let errno = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    if plan.user_namespace {
        // Become the namespace's root, which the maps now define.
        unsafe {
            if libc::setresgid(0, 0, 0) != 0 {
                return Err(errno("setresgid"));
            }
            if libc::setresuid(0, 0, 0) != 0 {
                return Err(errno("setresuid"));
            }
        }
    }
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(errno("setgroups"));
    }
    // Die with the helper until init is complete. Set after the credentials
    // change, which clears it; that the helper is still there is checked by
    // the cgroups message this process waits for before it becomes init (in a
    // new pid namespace getppid() says 0 whoever the parent is).
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(errno("parent-death signal"));
    }
    unsafe {
        libc::clearenv();
        for (k, v) in &plan.env {
            std::env::set_var(k, v);
        }
    }
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| format!("make / a slave mount: {e}"))?;
    // Mounts copied into a new user namespace are locked, and pivot_root
    // refuses a locked new root: bind the rootfs onto itself from in here.
    mount(Some(&plan.rootfs), &plan.rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| format!("bind the rootfs: {e}"))?;
    for m in &plan.mounts {
        mount_one(&plan.rootfs, m)?;
    }
    make_devices(&plan.rootfs, &plan.devices, plan.user_namespace)?;
    if let Some(h) = &plan.hostname {
        nix::unistd::sethostname(h).map_err(|e| format!("sethostname: {e}"))?;
    }
    Ok(())
}

/// The masks, then into the rootfs, then what is done from inside: read-only
/// paths, `lo`.
fn enter_root(plan: &Plan) -> Result<(), String> {
    for p in &plan.masked {
        mask(&plan.rootfs, p)?;
    }
    pivot_root(&plan.rootfs)?;
    for p in &plan.readonly {
        if p.exists() {
            mount(Some(p), p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(|e| format!("bind {}: {e}", p.display()))?;
            remount(p, MsFlags::MS_RDONLY)?;
        }
    }
    // Container root lacks CAP_NET_ADMIN later; the namespace's root has it now.
    loopback_up()?;
    unsafe { libc::umask(0o022) };
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// The last steps, once in the cgroups: init outlives the helper from here
/// on, with the spec's capabilities, no_new_privs and seccomp filter.
fn finish(plan: &Plan, seccomp: Option<&[libc::sock_filter]>) -> Result<(), String> {
    let errno = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) } != 0 {
        return Err(errno("clear the parent-death signal"));
    }
    super::caps::set_all(plan.capabilities, plan.last_capability)?;
    if plan.no_new_privileges && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(errno("no_new_privs"));
    }
    if let Some(filter) = seccomp {
        super::seccomp::install(filter).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}

/// A new network namespace starts with `lo` down.
fn loopback_up() -> Result<(), String> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(format!("loopback flags: {}", std::io::Error::last_os_error()));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(format!("loopback up: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Sets up a pea (see [`super::pea`]) from its bundle: called in a process
/// that has joined the container's namespaces and has a mount namespace of
/// its own. Mounts and pivots into the pea's rootfs and confines the process
/// as the container's first process is confined (capabilities,
/// no_new_privs, seccomp); the hostname is the container's already.
pub(crate) fn enter_pea_rootfs(bundle: &Path, seccomp: Option<&[libc::sock_filter]>) -> Result<(), String> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let mut plan = Plan::from_spec(&spec, bundle)?;
    plan.hostname = None;
    set_up(&plan)?;
    if let Some(c) = &plan.cgroup_mount {
        mount_cgroups(&plan.rootfs, c)?;
    }
    enter_root(&plan)?;
    finish(&plan, seccomp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["nosuid", "strictatime", "mode=755", "size=65536k"].map(String::from).to_vec();
        let (flags, data, bind) = mount_options(&opts);
        assert_eq!(flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(data, "mode=755,size=65536k");
        assert!(!bind);
        let (flags, data, bind) = mount_options(&["rbind".to_string(), "ro".to_string()]);
        assert_eq!(flags, MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert!(data.is_empty() && bind);
    }

    #[test]
    fn dev_shm_shares_the_dev_tmpfs_only_when_it_has_the_same_size() {
        let tmpfs = |at: &str, data: &str| MountPlan {
            destination: PathBuf::from(at),
            source: PathBuf::from("tmpfs"),
            fstype: Some("tmpfs".into()),
            flags: MsFlags::MS_NOSUID,
            data: data.into(),
            bind: false,
            source_is_dir: true,
            dir_in_dev: false,
        };
        let mut mounts = vec![tmpfs("/dev", "mode=755,size=65536k"), tmpfs("/dev/shm", "mode=1777,size=65536k")];
        share_dev_tmpfs(&mut mounts);
        assert!(mounts[1].dir_in_dev && mounts[1].bind && mounts[1].fstype.is_none());
        assert!(!mounts[0].dir_in_dev && !mounts[0].bind);
        let mut bigger = vec![tmpfs("/dev", "mode=755,size=65536k"), tmpfs("/dev/shm", "mode=1777,size=1g")];
        share_dev_tmpfs(&mut bigger);
        assert!(!bigger[1].dir_in_dev && !bigger[1].bind);
        let mut ro_dev = vec![tmpfs("/dev", "size=1m"), tmpfs("/dev/shm", "size=1m")];
        ro_dev[0].flags |= MsFlags::MS_RDONLY;
        share_dev_tmpfs(&mut ro_dev);
        assert!(!ro_dev[1].dir_in_dev);
    }

    #[test]
    fn specs_asking_for_more_than_is_supported_are_refused() {
        let input = super::super::spec::SpecInput {
            handle: "h",
            rootfs: Path::new("/tmp/rootfs"),
            cgroup_path: "/celld/h",
            privileged: false,
            memory_limit: 64 << 20,
            cpu_shares: 512,
            pids_max: 10,
            env: &[],
            bind_mounts: &[],
        };
        let spec = super::super::spec::build(&input).unwrap();
        assert_eq!(check_supported(&spec), Ok(()));
        let privileged =
            super::super::spec::build(&super::super::spec::SpecInput { privileged: true, ..input.clone() });
        assert_eq!(check_supported(&privileged.unwrap()), Ok(()));
        let mut v = serde_json::to_value(&spec).unwrap();
        v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
        let with_sysctl: Spec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            check_supported(&with_sysctl),
            Err("the spec sets linux.sysctl, which celld's runtime does not support".into())
        );
        v["linux"]["sysctl"] = serde_json::Value::Null;
        v["process"]["rlimits"] = serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 1}]);
        let with_rlimits: Spec = serde_json::from_value(v).unwrap();
        assert!(check_supported(&with_rlimits).unwrap_err().contains("process.rlimits"));
    }
}
