//! Peas: processes with their own rootfs, as Garden's `ProcessSpec.Image`
//! asks. A pea shares every namespace of its container but the mount one.
//!
//! Container root may not make mount namespaces, so a pea is started from
//! the host: init makes its stdio (`PreparePea`), the daemon prepares its
//! overlay and bundle, and the runtime helper forks a starter that opens
//! the stdio through /proc, joins the container's cgroup (or the pea's own,
//! beside the container's) and namespaces, and forks the pea, which makes its
//! mount namespace, pivots into its rootfs, takes the container's
//! confinement and execs. The starter exits, so the pea becomes a child of
//! the container's init, which adopts it (`AdoptPea`) and from then on
//! serves it like any process. Its overlay is mounted only in its own
//! namespace; its directory (under the container's) and cgroup go when the
//! container is destroyed, and killing the container's init kills it with
//! every other process of the pid namespace.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

use super::RuntimeError;
use super::cgroups::Cgroup;
use super::containerizer::{Containerizer, Lower, now_ns};
use super::depot::ContainerRecord;
use super::helper::{HelperReply, HelperRequest, RootfsMount};
use super::initproto::{self as proto, ErrorKind, Reply, Request, SpawnRequest};
use super::rootfs::Overlay;
use super::spec::{self, ROOT_HOST_ID, SpecInput};
use garden_api::types::ImageRef;

/// Prefix of a pea's own cgroup. It sits beside its container's, not under
/// it, as Garden puts it (runc's cgroup path is the process id): so the
/// container's limits don't cap a pea that overrides them, and on cgroup v2 no
/// cgroup with processes (the container's) gets children with controllers.
const CGROUP_PREFIX: &str = "pea-";

/// Names of the own cgroups of one container's peas start with this; the
/// handle is hashed because a handle may be as long as a cgroup name may.
fn own_cgroup_prefix(handle: &str) -> String {
    format!("{CGROUP_PREFIX}{:016x}-", super::fnv1a(handle.as_bytes()))
}

/// Whether a cgroup beside the containers' is a pea's of one of `handles`.
pub fn is_own_cgroup_of(name: &str, handles: &std::collections::HashSet<String>) -> bool {
    name.starts_with(CGROUP_PREFIX) && handles.iter().any(|h| name.starts_with(&own_cgroup_prefix(h)))
}

/// What Garden asked for, beyond the process itself.
#[derive(Debug, Clone, Default)]
pub struct PeaRequest {
    pub process: SpawnRequest,
    /// The pea's rootfs (a preloaded rootfs, a directory or an image) and
    /// the image's registry credentials.
    pub image: ImageRef,
    /// `None`: the pea shares the container's limits. `Some`: its own cgroup
    /// with these (zero: none).
    pub limits: Option<PeaLimits>,
    /// (host path, pea path, read-write).
    pub bind_mounts: Vec<(String, String, bool)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PeaLimits {
    pub memory_bytes: u64,
    pub cpu_shares: u64,
    pub pids_max: u64,
}

/// The helper's request: start the pea whose bundle is `bundle`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PeaStart {
    /// Host pid of the container's init.
    pub init_pid: i32,
    /// init's fds of the pea's stdin, stdout and stderr (one: a terminal),
    /// then of the pipe it waits on before it execs.
    pub fds: Vec<i32>,
    pub bundle: PathBuf,
    pub rootfs: RootfsMount,
    pub seccomp: bool,
    pub user_namespace: bool,
    pub cgroup: String,
    /// Whether `cgroup` is the pea's own, made with the bundle's limits.
    pub own_cgroup: bool,
    pub process: SpawnRequest,
}

impl Containerizer {
    /// Starts a pea in the container and returns init's reply and the
    /// connection that streams it, as a `Spawn` request does. On failure
    /// nothing of the pea is left.
    pub async fn run_pea(&self, rec: &ContainerRecord, pea: PeaRequest) -> Result<(Reply, UnixStream), RuntimeError> {
        let lower = self.lower_source(&pea.image.uri, &pea.image).await?;
        let mut conn = self.connect(rec).await?;
        let prepare = Request::PreparePea { id: pea.process.id.clone(), tty: pea.process.tty };
        let reply = exchange(&mut conn, &prepare).await?;
        let id = reply.ids.first().cloned().unwrap_or_default();
        let name = format!("{:016x}-{}", super::fnv1a(id.as_bytes()), now_ns());
        let dir = self.depot().container_dir(&rec.handle).join("peas").join(&name);
        let cgroup = match pea.limits {
            Some(_) => format!("{}/{}{name}", cgroup_parent(&rec.cgroup_path), own_cgroup_prefix(&rec.handle)),
            None => rec.cgroup_path.clone(),
        };
        let result = self.start_pea(rec, &pea, lower, &dir, &cgroup, reply.fds).await;
        let started = match result {
            Ok(started) => started,
            Err(e) => {
                remove_leftovers(&dir, pea.limits.is_some().then_some(cgroup.as_str()));
                return Err(e);
            }
        };
        match exchange(&mut conn, &Request::AdoptPea { pid: started }).await {
            Ok(reply) => {
                tracing::debug!(handle = %rec.handle, process = %id, pid = started, "pea started");
                Ok((reply, conn))
            }
            Err(e) => {
                // init is gone (and the pea with its pid namespace) or
                // refused, which it does only for a connection without a
                // prepared pea: nothing runs unseen.
                remove_leftovers(&dir, pea.limits.is_some().then_some(cgroup.as_str()));
                Err(e)
            }
        }
    }

    /// Prepares the pea's overlay and bundle and has the helper start it;
    /// returns its pid in the container.
    async fn start_pea(
        &self,
        rec: &ContainerRecord,
        pea: &PeaRequest,
        lower: Lower,
        dir: &Path,
        cgroup: &str,
        fds: Vec<i32>,
    ) -> Result<i32, RuntimeError> {
        let privileged = rec.privileged;
        let container_upper = self.overlay(&rec.handle).upper;
        let mut binds = pea.bind_mounts.clone();
        // The container's names, shared rather than copied: a change inside
        // the container reaches its peas.
        for name in ["hosts", "resolv.conf"] {
            let file = container_upper.join("etc").join(name);
            if file.is_file() {
                binds.push((file.display().to_string(), format!("/etc/{name}"), true));
            }
        }
        let limits = pea.limits.unwrap_or_default();
        let (cache, containers) = (self.depot().rootfs_cache(), self.depot().containers_dir());
        let (dir2, handle, env) = (dir.to_path_buf(), rec.handle.clone(), pea.process.env.clone());
        let cgroup_path = cgroup.to_string();
        let (options, lease) = tokio::task::spawn_blocking(move || -> Result<_, RuntimeError> {
            std::fs::create_dir_all(&dir2).map_err(|e| RuntimeError::io(&dir2, e))?;
            let (lowers, lease) = lower.layers(&cache, &containers, &dir2, !privileged)?;
            let overlay = Overlay::in_dir(&dir2);
            let options = overlay.prepare(&lowers, (!privileged).then_some(ROOT_HOST_ID))?;
            let spec = spec::build(&SpecInput {
                handle: &handle,
                rootfs: &overlay.merged,
                cgroup_path: &cgroup_path,
                privileged,
                memory_limit: limits.memory_bytes,
                cpu_shares: limits.cpu_shares,
                pids_max: limits.pids_max,
                env: &env,
                bind_mounts: &binds,
            })?;
            super::depot::write_bundle_config(&dir2, &spec)?;
            Ok((options, lease))
        })
        .await
        .map_err(|e| RuntimeError::Helper(e.to_string()))??;
        let start = PeaStart {
            init_pid: rec.init_pid,
            fds,
            bundle: dir.to_path_buf(),
            rootfs: RootfsMount { merged: Overlay::in_dir(dir).merged, options },
            seccomp: !privileged,
            user_namespace: !privileged,
            cgroup: cgroup.to_string(),
            own_cgroup: pea.limits.is_some(),
            process: pea.process.clone(),
        };
        let started = self.helper_call(&HelperRequest::StartPea(start)).await;
        // Mounted (or not): the pea's `image` file keeps its image from here.
        drop(lease);
        match started? {
            HelperReply::PeaStarted { pid } => Ok(pid),
            HelperReply::ProcessFailed { kind, message } => Err(RuntimeError::Process(kind, message)),
            HelperReply::Failed { message } => Err(RuntimeError::Helper(message)),
            HelperReply::Created { .. } => Err(RuntimeError::Helper("unexpected reply to a pea's start".into())),
        }
    }
}

async fn exchange(conn: &mut UnixStream, req: &Request) -> Result<Reply, RuntimeError> {
    proto::client::write_frame(conn, proto::TAG_REQUEST, &serde_json::to_vec(req).unwrap_or_default())
        .await
        .map_err(RuntimeError::Init)?;
    let reply = proto::client::read_reply(conn).await.map_err(RuntimeError::Init)?;
    match reply.error {
        Some((kind, msg)) => Err(RuntimeError::Process(kind, msg)),
        None => Ok(reply),
    }
}

fn remove_leftovers(dir: &Path, own_cgroup: Option<&str>) {
    if let Some(path) = own_cgroup {
        if let Err(e) = Cgroup::new(path).remove() {
            tracing::warn!(cgroup = path, error = %e, "a failed pea's cgroup stays");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes the own cgroups of a container's peas (beside the container's).
/// Every pea has its directory under the container's (made before its
/// cgroup), which names them: listing the parent cgroup instead, which holds
/// every container's, made each destroy cost as much as there are
/// containers. A cgroup a crash left without its directory is the daemon's
/// sweep of strays at start.
pub fn remove_cgroups(handle: &str, container_cgroup: &str, container_dir: &Path) -> Result<(), RuntimeError> {
    let mut first_err = None;
    let parent = cgroup_parent(container_cgroup);
    let prefix = own_cgroup_prefix(handle);
    let Ok(peas) = std::fs::read_dir(container_dir.join("peas")) else { return Ok(()) };
    for name in peas.flatten().map(|e| e.file_name().to_string_lossy().into_owned()) {
        if let Err(e) = Cgroup::new(format!("{parent}/{prefix}{name}")).remove() {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The daemon's cgroup that holds its containers' (and their peas' own).
fn cgroup_parent(container_cgroup: &str) -> &str {
    container_cgroup.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// In the helper: forks the starter, which starts the pea; returns the
/// starter's answer once it has exited (the pea is then init's child).
pub fn start(req: &PeaStart, seccomp: Option<&[libc::sock_filter]>) -> HelperReply {
    let forked = fork_reporting(|w| {
        let reply = starter(req, seccomp, w);
        let _ = nix::unistd::write(w, &serde_json::to_vec(&reply).unwrap_or_default());
        0
    });
    let (pid, out) = match forked {
        Ok(f) => f,
        Err(message) => return HelperReply::Failed { message },
    };
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    serde_json::from_slice(&out).unwrap_or_else(|_| HelperReply::Failed { message: "the pea's starter died".into() })
}

/// Forks a child that runs `child` with the write end of a close-on-exec
/// pipe and exits with what it returns; returns the child's pid and what was
/// written once every copy of that end is closed (exited or exec'd). The
/// helper is single-threaded: the child may allocate.
fn fork_reporting(child: impl FnOnce(&OwnedFd) -> i32) -> Result<(i32, Vec<u8>), String> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(r);
        let code = child(&w);
        unsafe { libc::_exit(code) }
    }
    drop(w);
    let mut out = Vec::new();
    let _ = std::fs::File::from(r).read_to_end(&mut out);
    Ok((pid, out))
}

fn open_flags(fds: usize, index: usize) -> libc::c_int {
    match (fds, index) {
        // Non-blocking, or opening a pipe's end waits for the other one.
        (n, i) if i + 1 == n => libc::O_RDONLY | libc::O_NONBLOCK,
        (2, _) => libc::O_RDWR | libc::O_NOCTTY,
        (_, 0) => libc::O_RDONLY | libc::O_NONBLOCK,
        _ => libc::O_WRONLY | libc::O_NONBLOCK,
    }
}

/// The starter: in a child of the helper, on the host. Its own failures are
/// returned; the launcher it forks writes the outcome to `reply` itself.
fn starter(req: &PeaStart, seccomp: Option<&[libc::sock_filter]>, reply: &OwnedFd) -> HelperReply {
    let failed = |message: String| HelperReply::Failed { message };
    let open = |path: String, flags: libc::c_int| -> Result<OwnedFd, String> {
        let c = std::ffi::CString::new(path.clone()).map_err(|e| e.to_string())?;
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!("open {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let mut stdio = Vec::new();
    for (n, fd) in req.fds.iter().enumerate() {
        match open(format!("/proc/{}/fd/{fd}", req.init_pid), open_flags(req.fds.len(), n)) {
            Ok(f) => {
                unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
                stdio.push(f);
            }
            Err(e) => return failed(format!("the pea's stdio: {e}")),
        }
    }
    let (Some(go), 1 | 3) = (stdio.pop(), stdio.len()) else {
        return failed(format!("init gave {} fds for a pea's stdio", req.fds.len()));
    };
    let kinds: &[(&str, libc::c_int)] = &[
        ("user", libc::CLONE_NEWUSER),
        ("net", libc::CLONE_NEWNET),
        ("uts", libc::CLONE_NEWUTS),
        ("ipc", libc::CLONE_NEWIPC),
        ("pid", libc::CLONE_NEWPID),
    ];
    let mut namespaces = Vec::new();
    for &(name, flag) in kinds {
        if name == "user" && !req.user_namespace {
            continue;
        }
        match open(format!("/proc/{}/ns/{name}", req.init_pid), libc::O_RDONLY) {
            Ok(f) => namespaces.push((name, flag, f)),
            Err(e) => return failed(format!("the container's namespaces: {e}")),
        }
    }
    let resources = if req.own_cgroup {
        match oci_spec::runtime::Spec::load(req.bundle.join("config.json")) {
            Ok(s) => s.linux().as_ref().and_then(|l| l.resources().clone()).unwrap_or_default(),
            Err(e) => return failed(format!("the pea's bundle: {e}")),
        }
    } else {
        Default::default()
    };
    // Joined here, on the host: the pea is born in it.
    if let Err(e) = Cgroup::new(&req.cgroup).create(std::process::id() as i32, &resources) {
        return failed(e.to_string());
    }
    for (name, flag, f) in &namespaces {
        if unsafe { libc::setns(f.as_raw_fd(), *flag) } != 0 {
            return failed(format!("join the container's {name} namespace: {}", std::io::Error::last_os_error()));
        }
    }
    drop(namespaces);
    // The parent of the pea must be in the container's pid namespace: an
    // orphan goes to the init of its parent's namespace, so the pea becomes
    // celld-init's child when this one exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return failed(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let outcome = launch(req, &stdio, &go, seccomp);
        let _ = nix::unistd::write(reply, &serde_json::to_vec(&outcome).unwrap_or_default());
        unsafe { libc::_exit(0) };
    }
    drop((stdio, go));
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    // The launcher has written the outcome; this process adds nothing.
    unsafe { libc::_exit(0) }
}

/// What a pea that is ready to exec (waiting for init's `go`) reports.
const READY: &[u8] = b"R";

/// In the container's pid namespace: forks the pea and waits until it is
/// ready to exec (or has failed).
fn launch(req: &PeaStart, stdio: &[OwnedFd], go: &OwnedFd, seccomp: Option<&[libc::sock_filter]>) -> HelperReply {
    let failed = |message: String| HelperReply::Failed { message };
    let forked = fork_reporting(|w| {
        if let Some(failure) = become_pea(req, stdio, go, w, seccomp) {
            let _ = nix::unistd::write(w, &serde_json::to_vec(&failure).unwrap_or_default());
        }
        127
    });
    let (pid, out) = match forked {
        Ok(f) => f,
        Err(message) => return failed(message),
    };
    if out == READY {
        // Not waited for: the pea becomes init's child when this process
        // exits (a zombie if it has exited, whose status init keeps).
        return HelperReply::PeaStarted { pid };
    }
    let mut st = 0;
    unsafe { libc::waitpid(pid, &mut st, 0) };
    match serde_json::from_slice::<(ErrorKind, String)>(&out) {
        Ok((kind, message)) => HelperReply::ProcessFailed { kind, message },
        Err(_) => failed("the pea failed to start".into()),
    }
}

/// In the pea: sets it up, reports [`READY`] on `status` and closes every
/// other descriptor, waits for init's byte on `go`, and execs. Returns the
/// failure to report, or `None` once `status` is closed.
fn become_pea(
    req: &PeaStart,
    stdio: &[OwnedFd],
    go: &OwnedFd,
    status: &OwnedFd,
    seccomp: Option<&[libc::sock_filter]>,
) -> Option<(ErrorKind, String)> {
    let failed = |m: String| Some((ErrorKind::Failed, m));
    let errno = |what: &str| failed(format!("{what}: {}", std::io::Error::last_os_error()));
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return errno("a mount namespace for the pea");
    }
    if let Err(e) = super::spawn::enter_pea_rootfs(&req.bundle, seccomp) {
        return failed(e);
    }
    let p = &req.process;
    let user = match super::users::lookup(Path::new("/"), &p.user) {
        Ok(u) => u,
        Err(e @ (super::users::UserError::NotFound(_) | super::users::UserError::GroupNotFound(_))) => {
            return Some((ErrorKind::UserNotFound, format!("{e} (in the pea's rootfs {})", req.bundle.display())));
        }
        Err(e) => return Some((ErrorKind::Invalid, e.to_string())),
    };
    // Garden's peas start in `/`, not in the user's home.
    let cwd = if p.dir.is_empty() { "/".to_string() } else { p.dir.clone() };
    let mut env = p.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let exe = match super::init::exec::resolve_executable(&p.path, &env, &cwd) {
        Ok(exe) => exe,
        Err(e) => return Some(e),
    };
    let cstr =
        |s: &str| std::ffi::CString::new(s).map_err(|_| (ErrorKind::Invalid, format!("{s:?} contains a NUL byte")));
    let prepared = (|| {
        let exe = cstr(&exe.to_string_lossy())?;
        let argv = std::iter::once(&p.path).chain(&p.args).map(|a| cstr(a)).collect::<Result<Vec<_>, _>>()?;
        let envp = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>, _>>()?;
        Ok((exe, argv, envp, cstr(&cwd)?))
    })();
    let (exe_c, argv, envp, cwd_c) = match prepared {
        Ok(v) => v,
        Err(e) => return Some(e),
    };
    let ptrs = |v: &[std::ffi::CString]| -> Vec<*const libc::c_char> {
        v.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
    };
    let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
    unsafe {
        libc::setsid();
        if stdio.len() == 1 && libc::ioctl(stdio[0].as_raw_fd(), libc::TIOCSCTTY, 0) < 0 {
            return errno("set controlling terminal");
        }
        let fd = |n: usize| stdio.get(n).or(stdio.first()).map_or(-1, |f| f.as_raw_fd());
        for target in 0..3 {
            if libc::dup2(fd(target as usize), target) < 0 {
                return errno("dup2");
            }
        }
    }
    let _ = std::fs::write("/proc/self/oom_score_adj", "0");
    for &(res, val) in &p.rlimits {
        let lim = libc::rlimit { rlim_cur: val, rlim_max: val };
        if unsafe { libc::setrlimit(res as _, &lim) } < 0 {
            return errno("setrlimit");
        }
    }
    if std::fs::metadata(&cwd).is_err() {
        if let Err(e) = super::init::exec::mkdir_all_owned(Path::new(&cwd), user.uid, user.gid) {
            return failed(format!("create working directory {cwd}: {e}"));
        }
    }
    super::init::exec::give_stdio_to(user.uid);
    let groups: Vec<nix::unistd::Gid> = user.groups.iter().map(|&g| nix::unistd::Gid::from_raw(g)).collect();
    let switched = nix::unistd::setgroups(&groups)
        .and_then(|()| nix::unistd::setresgid(user.gid.into(), user.gid.into(), user.gid.into()))
        .and_then(|()| nix::unistd::setresuid(user.uid.into(), user.uid.into(), user.uid.into()));
    if let Err(e) = switched {
        return failed(format!("set user {}: {e}", p.user));
    }
    unsafe {
        if libc::chdir(cwd_c.as_ptr()) < 0 {
            return errno(&format!("chdir to {cwd}"));
        }
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
        // Ready: the starter may answer, and init adopt this process. Only
        // `go` (as fd 3) stays open while it waits: the starter's pipes
        // reach EOF only once no process holds them.
        let _ = nix::unistd::write(status, READY);
        if libc::dup2(go.as_raw_fd(), 3) != 3 {
            libc::_exit(127);
        }
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        let mut byte = [0u8; 1];
        if libc::read(3, byte.as_mut_ptr().cast(), 1) != 1 {
            // Not adopted: whoever asked for this pea is gone.
            libc::_exit(127);
        }
        libc::close(3);
        libc::execve(exe_c.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
    }
    // Only stderr is left to tell.
    let msg = format!("exec {}: {}\n", exe.display(), std::io::Error::last_os_error());
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    None
}
