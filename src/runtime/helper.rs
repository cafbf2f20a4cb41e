//! The runtime helper: a single-threaded process, started by the daemon by
//! re-executing itself before it needs one, that is the only caller of
//! `libcontainer` (which forks with raw `clone` and must not run on tokio
//! threads). Requests and replies are JSON lines over the socket on its stdin.
//!
//! Containers it creates are its children; it reaps them between requests. When
//! the daemon goes away the helper exits and the containers live on.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum HelperRequest {
    Create {
        id: String,
        bundle: PathBuf,
        state_root: PathBuf,
        socket: PathBuf,
        rootfs: RootfsMount,
        /// Install the unprivileged seccomp filter in the container's init.
        seccomp: bool,
    },
}

/// A container's overlay, mounted by the helper in its own mount namespace
/// only for as long as creating the container takes: the container keeps its
/// copy, and neither the host nor later containers ever see it. So no
/// container's namespace is born with a copy of every other container's
/// rootfs (which made each create slower the more containers ran), and a
/// container's rootfs goes away with the container.
#[derive(Debug, Serialize, Deserialize)]
pub struct RootfsMount {
    pub merged: PathBuf,
    /// Overlay mount options (layers prepared by the daemon).
    pub options: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum HelperReply {
    Created { pid: i32 },
    Failed { message: String },
}

/// libcontainer's workload hook: instead of exec'ing a program, the container's
/// first process becomes celld's init (see [`super::init`]).
#[derive(Clone)]
pub struct InitExecutor {
    listen_fd: RawFd,
    /// Installed last, after libcontainer set no_new_privs and dropped
    /// capabilities, as it would have done with a spec's `linux.seccomp`.
    seccomp: Option<&'static [libc::sock_filter]>,
}

impl Executor for InitExecutor {
    fn exec(&self, _spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(filter) = self.seccomp {
            super::seccomp::install(filter).map_err(|e| ExecutorError::Other(format!("seccomp: {e}")))?;
        }
        super::init::run(self.listen_fd)
    }

    fn validate(&self, _spec: &Spec) -> Result<(), ExecutorValidationError> {
        Ok(())
    }
}

/// The helper's main loop; returns when the daemon closes the socket.
pub fn run() -> std::io::Result<()> {
    // Die with the daemon rather than linger.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };

    // A mount namespace of our own, which sees the host's mounts but whose
    // own mounts (container overlays, briefly) stay here.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)?;

    let sock = unsafe { std::fs::File::from_raw_fd(0) };
    let mut writer = sock.try_clone()?;
    let mut reader = BufReader::new(sock);
    let mut line = String::new();
    loop {
        reap_children();
        // Wake up now and then to reap containers that were destroyed.
        let mut pfd = libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 };
        if unsafe { libc::poll(&mut pfd, 1, 1000) } == 0 && reader.buffer().is_empty() {
            continue;
        }
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        // The overlay of the container being created, let go after the reply.
        let mut mounted = None;
        let reply = match serde_json::from_str::<HelperRequest>(&line) {
            Ok(HelperRequest::Create { id, bundle, state_root, socket, rootfs, seccomp }) => {
                let filter = if seccomp { super::seccomp::compiled().map(Some) } else { Ok(None) };
                let mount =
                    super::rootfs::Overlay::mount_at(&rootfs.merged, &rootfs.options).map_err(|e| e.to_string());
                mounted = Some(rootfs.merged);
                match filter.and_then(|f| mount.map(|()| f)) {
                    Ok(filter) => create(&id, &bundle, &state_root, &socket, filter),
                    Err(message) => HelperReply::Failed { message },
                }
            }
            Err(e) => HelperReply::Failed { message: format!("bad helper request: {e}") },
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_default();
        out.push(b'\n');
        writer.write_all(&out)?;
        // After the reply, while the daemon wires the container's network
        // (unmounting waits for an RCU grace period).
        if let Some(m) = mounted {
            let _ = nix::mount::umount2(&m, MntFlags::MNT_DETACH);
        }
    }
}

fn reap_children() {
    let mut status = 0;
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

fn create(
    id: &str,
    bundle: &Path,
    state_root: &Path,
    socket: &Path,
    seccomp: Option<&'static [libc::sock_filter]>,
) -> HelperReply {
    let _ = std::fs::remove_file(socket);
    let listener = match UnixListener::bind(socket) {
        Ok(l) => l,
        Err(e) => return HelperReply::Failed { message: format!("bind {}: {e}", socket.display()) },
    };
    // Only host root may drive a container's init.
    let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600));
    let listen: OwnedFd = listener.into();
    let started = std::time::Instant::now();
    let result = build_and_start(id, bundle, state_root, InitExecutor { listen_fd: listen.as_raw_fd(), seccomp });
    tracing::debug!(container = id, ms = started.elapsed().as_secs_f64() * 1e3, "libcontainer build and start");
    drop(listen);
    match result {
        Ok(pid) => {
            if let Err(e) = bring_up_loopback(pid) {
                tracing::warn!(container = id, error = %e, "loopback stays down");
            }
            // The OOM killer should pick the process that overran the limit, not init.
            let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "-998");
            HelperReply::Created { pid }
        }
        Err(message) => {
            let _ = std::fs::remove_file(socket);
            // A half-built container leaves libcontainer state and cgroups behind.
            if let Ok(mut c) = libcontainer::container::Container::load(state_root.join(id)) {
                let _ = c.delete(true);
            }
            let _ = std::fs::remove_dir_all(state_root.join(id));
            HelperReply::Failed { message }
        }
    }
}

/// A process that owns a fresh user namespace whose id maps are already
/// written. libcontainer joins it by path instead of creating one, which would
/// cost two `newuidmap`/`newgidmap` execs per create. Dropping it kills it;
/// the namespace lives on in the container. (It is killed rather than told to
/// exit through a pipe: libcontainer's children inherit the pipe, and a
/// container that never started would hold it open, and the helper with it.)
struct UserNsHolder {
    pid: i32,
}

impl UserNsHolder {
    fn new(uid_map: &str, gid_map: &str) -> Result<Self, String> {
        let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
        let helper = unsafe { libc::getpid() };
        // The helper is single-threaded, so the child may run ordinary code.
        match unsafe { libc::fork() } {
            0 => unsafe {
                // Not inherited from the helper: a helper killed mid-create
                // (its daemon SIGKILLed) takes this child with it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != helper {
                    libc::_exit(1);
                }
                drop(ready_r);
                if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                    libc::_exit(1);
                }
                libc::write(ready_w.as_raw_fd(), b"x".as_ptr().cast(), 1);
                drop(ready_w);
                loop {
                    libc::pause();
                }
            },
            pid if pid < 0 => Err(format!("fork: {}", std::io::Error::last_os_error())),
            pid => {
                drop(ready_w);
                let holder = Self { pid };
                let mut b = [0u8; 1];
                if unsafe { libc::read(ready_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) } != 1 {
                    return Err("creating the user namespace failed".into());
                }
                // Root in the parent namespace may write multi-range maps directly.
                std::fs::write(format!("/proc/{pid}/uid_map"), uid_map).map_err(|e| format!("write uid_map: {e}"))?;
                std::fs::write(format!("/proc/{pid}/gid_map"), gid_map).map_err(|e| format!("write gid_map: {e}"))?;
                Ok(holder)
            }
        }
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/user", self.pid)
    }
}

impl Drop for UserNsHolder {
    fn drop(&mut self) {
        let mut status = 0;
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}

fn id_map(mappings: &serde_json::Value) -> String {
    mappings
        .as_array()
        .map(|ms| {
            ms.iter().map(|m| format!("{} {} {}\n", m["containerID"], m["hostID"], m["size"])).collect::<String>()
        })
        .unwrap_or_default()
}

/// If the bundle asks for a new user namespace, makes it now and points the
/// bundle at it. Returns the holder to keep until the container has started.
fn prepare_user_namespace(bundle: &Path) -> Result<Option<UserNsHolder>, String> {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = std::fs::read(&path)
        .map_err(|e| format!("read {}: {e}", path.display()))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("parse {}: {e}", path.display())))?;
    let linux = &mut spec["linux"];
    let (uid_map, gid_map) = (id_map(&linux["uidMappings"]), id_map(&linux["gidMappings"]));
    let Some(ns) = linux["namespaces"]
        .as_array_mut()
        .and_then(|nss| nss.iter_mut().find(|n| n["type"] == "user" && n.get("path").is_none()))
    else {
        return Ok(None);
    };
    if uid_map.is_empty() || gid_map.is_empty() {
        return Ok(None);
    }
    let holder = UserNsHolder::new(&uid_map, &gid_map)?;
    ns["path"] = serde_json::Value::String(holder.path());
    let data = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
    std::fs::write(&path, data).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(Some(holder))
}

fn build_and_start(id: &str, bundle: &Path, state_root: &Path, executor: InitExecutor) -> Result<i32, String> {
    let _userns = prepare_user_namespace(bundle)?;
    // libcontainer dup2()s and then closes the stdio fds it is given, and it
    // turns /dev/null stdio into a read-only fd; hand it private pipes instead.
    let [stdin, stdout] = [pipe_end(false)?, pipe_end(true)?];
    // The helper's own stderr (the daemon's log) carries libcontainer's errors
    // from inside the new container; init replaces it with /dev/null once running.
    let stderr = std::io::stderr().as_fd().try_clone_to_owned().map_err(|e| format!("dup stderr: {e}"))?;
    let mut container = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_executor(executor)
        .with_root_path(state_root)
        .map_err(|e| e.to_string())?
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("create container: {e}"))?;
    container.start().map_err(|e| format!("start container: {e}"))?;
    container.pid().map(|p| p.as_raw()).ok_or_else(|| "container has no init pid".to_string())
}

/// A new network namespace starts with `lo` down, and container root lacks
/// CAP_NET_ADMIN to raise it; the helper does it from outside.
fn bring_up_loopback(pid: i32) -> Result<(), String> {
    use nix::sched::{CloneFlags, setns};
    let own = std::fs::File::open("/proc/self/ns/net").map_err(|e| e.to_string())?;
    let theirs = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| e.to_string())?;
    setns(&theirs, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
    let result = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            Err(std::io::Error::last_os_error().to_string())
        } else {
            let mut req: libc::ifreq = std::mem::zeroed();
            for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
                *d = *s as libc::c_char;
            }
            let r = if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
                Err(std::io::Error::last_os_error().to_string())
            } else {
                req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
                    Err(std::io::Error::last_os_error().to_string())
                } else {
                    Ok(())
                }
            };
            libc::close(fd);
            r
        }
    };
    // Returning to our own namespace must not fail silently: later creates would
    // run in the container's network.
    if let Err(e) = setns(&own, CloneFlags::CLONE_NEWNET) {
        eprintln!("celld helper: cannot return to the host network namespace: {e}");
        std::process::exit(1);
    }
    result
}

/// One end of a pipe whose other end is dropped: init never uses its stdio.
fn pipe_end(write: bool) -> Result<OwnedFd, String> {
    let (r, w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    Ok(if write { w } else { r })
}

/// Daemon side: starts `celld helper` and returns the socket to it.
/// `depot` only labels the helper (and the inits forked from it) in process
/// listings, so one can tell which daemon they belong to.
pub fn spawn(
    exe: &Path,
    depot: &Path,
    log_level: &str,
) -> std::io::Result<(std::process::Child, std::os::unix::net::UnixStream)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs_fd: OwnedFd = theirs.into();
    let child = std::process::Command::new(exe)
        .arg("--log-level")
        .arg(log_level)
        .arg("helper")
        .arg("--depot")
        .arg(depot)
        .stdin(std::process::Stdio::from(theirs_fd))
        .spawn()?;
    Ok((child, ours))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_are_written_one_range_per_line() {
        let m = serde_json::json!([
            {"containerID": 0, "hostID": 4294967294u32, "size": 1},
            {"containerID": 1, "hostID": 1, "size": 4294967293u32},
        ]);
        assert_eq!(id_map(&m), "0 4294967294 1\n1 1 4294967293\n");
        assert_eq!(id_map(&serde_json::Value::Null), "");
    }
}
