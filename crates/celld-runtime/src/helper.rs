//! The runtime helper: a single-threaded process, started by the daemon by
//! re-executing itself before it needs one, that starts containers (with a raw
//! `clone3`, which must not run on tokio threads; see [`super::spawn`]).
//! Requests and replies are JSON lines over the socket on its stdin.
//!
//! Containers it creates are its children; it reaps them between requests. When
//! the daemon goes away the helper exits and the containers live on.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum HelperRequest {
    Create {
        id: String,
        bundle: PathBuf,
        socket: PathBuf,
        rootfs: RootfsMount,
        /// Install the unprivileged seccomp filter in the container's init.
        seccomp: bool,
    },
    /// Start a pea (see [`super::pea`]).
    StartPea(super::pea::PeaStart),
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
    Created {
        pid: i32,
    },
    Failed {
        message: String,
    },
    /// A pea runs as `pid` in its container.
    PeaStarted {
        pid: i32,
    },
    /// A pea could not start for a reason of the process (no such
    /// executable, no such user).
    ProcessFailed {
        kind: super::initproto::ErrorKind,
        message: String,
    },
}

/// Where in the depot the helper mounts the views all containers share
/// (only in its own mount namespace: an empty directory on the host).
const SHARED_VIEWS_DIR: &str = "views";

/// The helper's main loop; returns when the daemon closes the socket.
pub fn run(depot: &Path) -> std::io::Result<()> {
    // Die with the daemon rather than linger.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };

    // A mount namespace of our own, which sees the host's mounts but whose
    // own mounts (container overlays, briefly) stay here.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)?;
    // Here, so the host never sees it and it goes with the helper.
    if let Err(e) =
        super::spawn::mount_shared_views(&depot.join(SHARED_VIEWS_DIR), &super::cgroups::Cgroup::new("/").views())
    {
        tracing::warn!(error = %e, "every container gets tmpfs mounts of its own for its cgroups and masks");
    }

    // Every container's init is exec'd from one sealed copy of the static
    // init binary; without one, inits go on as copies of this process.
    let init_exe = match super::spawn::InitExe::beside_current_exe() {
        Some(path) => match super::spawn::InitExe::load(&path) {
            Ok(exe) => Some(exe),
            Err(e) => {
                tracing::warn!(error = %e, "container inits will run in copies of the helper");
                None
            }
        },
        None => {
            tracing::warn!(
                binary = super::spawn::INIT_BINARY,
                "no static init binary beside celld (make lifecycle builds it): container inits will run in copies of the helper, with more memory each"
            );
            None
        }
    };

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
            Ok(HelperRequest::Create { id, bundle, socket, rootfs, seccomp }) => {
                let filter = if seccomp { super::seccomp::compiled().map(Some) } else { Ok(None) };
                let mount =
                    super::rootfs::Overlay::mount_at(&rootfs.merged, &rootfs.options).map_err(|e| e.to_string());
                mounted = Some(rootfs.merged);
                match filter.and_then(|f| mount.map(|()| f)) {
                    Ok(filter) => create(&id, &bundle, &socket, filter, init_exe.as_ref()),
                    Err(message) => HelperReply::Failed { message },
                }
            }
            Ok(HelperRequest::StartPea(start)) => {
                let filter = if start.seccomp { super::seccomp::compiled().map(Some) } else { Ok(None) };
                let mount = super::rootfs::Overlay::mount_at(&start.rootfs.merged, &start.rootfs.options)
                    .map_err(|e| e.to_string());
                if mount.is_ok() {
                    mounted = Some(start.rootfs.merged.clone());
                }
                match filter.and_then(|f| mount.map(|()| f)) {
                    Ok(filter) => super::pea::start(&start, filter),
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
    socket: &Path,
    seccomp: Option<&'static [libc::sock_filter]>,
    init_exe: Option<&super::spawn::InitExe>,
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
    let result = super::spawn::start(bundle, listen.as_raw_fd(), seccomp, init_exe);
    tracing::debug!(container = id, ms = started.elapsed().as_secs_f64() * 1e3, "container started");
    drop(listen);
    match result {
        Ok(pid) => {
            protect_from_oom_killer(id, pid);
            HelperReply::Created { pid }
        }
        Err(message) => {
            let _ = std::fs::remove_file(socket);
            HelperReply::Failed { message }
        }
    }
}

/// The OOM killer must pick the process that overran the container's limit,
/// never init (with it the container would lose every process's streams).
/// Lowering oom_score_adj takes CAP_SYS_RESOURCE in the host's namespace,
/// which init lacks and this helper has: so it is done from here. init's
/// processes raise theirs back to 0, which needs no privilege.
fn protect_from_oom_killer(id: &str, pid: i32) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "-1000") {
        // Without CAP_SYS_RESOURCE (e.g. in a restricted sandbox) init stays an
        // ordinary candidate; say so once, not for every container.
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(container = id, error = %e, "cannot shield container inits from the OOM killer");
        }
    }
}

/// Daemon side: starts `celld helper` and returns the socket to it.
/// `depot` holds the mount point of the views its containers share, and
/// labels the helper in process listings, so one can tell which daemon it
/// belongs to (container inits name themselves `garden-init`).
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
