//! pid 1 of every container.
//!
//! The container's first process becomes this code (see [`super::spawn`]) after
//! it has set up namespaces, mounts, cgroups, capabilities and seccomp, so
//! init runs with exactly the confinement of the container and needs no binary in
//! the rootfs. It reaps zombies, never exits on its own, and is the holder of
//! every process's pipes: processes started through it keep running, and their
//! output keeps being buffered, when the daemon dies. The daemon talks to it over
//! the unix socket whose listening fd it inherited (see [`super::initproto`]).
//!
//! Single-threaded, `poll(2)`-driven; forking from here is safe.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::initproto::{self as proto, ErrorKind, Reply, Request, SpawnRequest};
use super::users::{self, User};

/// Output kept for a process nobody is attached to; older output is dropped,
/// as Garden drops output when its stream buffers are full.
const BACKLOG_LIMIT: usize = 256 * 1024;
/// A client this far behind stops init reading the process's output (backpressure).
const CLIENT_HIGH_WATER: usize = 1024 * 1024;
/// How long an exited process's output may still arrive (a grandchild can hold
/// the pipe open) before the exit status is delivered anyway.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long an exited process is remembered for late attaches.
const KEEP_EXITED: Duration = Duration::from_secs(60);

struct Conn {
    fd: OwnedFd,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    attached: Option<String>,
    /// Close once `wbuf` is flushed.
    closing: bool,
    dead: bool,
}

struct Proc {
    pid: i32,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_eof: bool,
    tty: bool,
    exit: Option<i32>,
    exited_at: Option<Instant>,
    /// Encoded frames waiting for someone to attach.
    backlog: VecDeque<Vec<u8>>,
    backlog_len: usize,
    delivered: bool,
    finished_at: Option<Instant>,
}

impl Proc {
    fn output_done(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }
    fn finished(&self) -> bool {
        self.exit.is_some() && self.output_done()
    }
}

struct Init {
    listener: OwnedFd,
    sigfd: nix::sys::signalfd::SignalFd,
    conns: Vec<Conn>,
    procs: HashMap<String, Proc>,
}

/// Entry point; never returns.
pub fn run(listen_fd: RawFd) -> ! {
    // Drop every descriptor inherited from the helper except the socket.
    unsafe {
        if listen_fd > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (listen_fd - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (listen_fd + 1) as u32, u32::MAX, 0u32);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::prctl(libc::PR_SET_NAME, c"celld-init".as_ptr());
    }
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGCHLD);
    let _ = mask.thread_block();
    let sigfd = loop {
        match nix::sys::signalfd::SignalFd::with_flags(
            &mask,
            nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
        ) {
            Ok(fd) => break fd,
            // Nothing sensible to do but retry: init must not exit.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    set_nonblocking(listen_fd);
    let mut init =
        Init { listener: unsafe { OwnedFd::from_raw_fd(listen_fd) }, sigfd, conns: Vec::new(), procs: HashMap::new() };
    loop {
        init.tick();
    }
}

fn set_nonblocking(fd: RawFd) {
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn set_blocking(fd: RawFd) {
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Non-blocking read: Ok(0) is EOF, Err(EAGAIN) means nothing yet.
fn read_fd(fd: RawFd, buf: &mut [u8]) -> Result<usize, i32> {
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> Result<usize, i32> {
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

#[derive(Clone, Copy)]
enum Slot {
    Listener,
    Signal,
    Conn(usize),
    Out(usize, bool),
    Stdin(usize),
}

impl Init {
    fn tick(&mut self) {
        let ids: Vec<String> = self.procs.keys().cloned().collect();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        let mut push = |fd: RawFd, events: i16, slot: Slot, fds: &mut Vec<libc::pollfd>| {
            fds.push(libc::pollfd { fd, events, revents: 0 });
            slots.push(slot);
        };
        push(self.listener.as_raw_fd(), libc::POLLIN, Slot::Listener, &mut fds);
        push(self.sigfd.as_raw_fd(), libc::POLLIN, Slot::Signal, &mut fds);
        for (i, c) in self.conns.iter().enumerate() {
            let mut ev = 0;
            let stdin_full =
                c.attached.as_ref().and_then(|id| self.procs.get(id)).is_some_and(|p| p.stdin_buf.len() > 64 * 1024);
            if !c.closing && !stdin_full {
                ev |= libc::POLLIN;
            }
            if !c.wbuf.is_empty() {
                ev |= libc::POLLOUT;
            }
            push(c.fd.as_raw_fd(), ev, Slot::Conn(i), &mut fds);
        }
        let mut timeout = -1;
        for (pi, id) in ids.iter().enumerate() {
            let Some(p) = self.procs.get(id) else { continue };
            let behind =
                self.conns.iter().any(|c| c.attached.as_deref() == Some(id) && c.wbuf.len() > CLIENT_HIGH_WATER);
            if !behind {
                if let Some(fd) = &p.stdout {
                    push(fd.as_raw_fd(), libc::POLLIN, Slot::Out(pi, false), &mut fds);
                }
                if let Some(fd) = &p.stderr {
                    push(fd.as_raw_fd(), libc::POLLIN, Slot::Out(pi, true), &mut fds);
                }
            }
            if let Some(fd) = &p.stdin {
                if !p.stdin_buf.is_empty() {
                    push(fd.as_raw_fd(), libc::POLLOUT, Slot::Stdin(pi), &mut fds);
                }
            }
            if p.exit.is_some() || p.finished_at.is_some() {
                timeout = 200;
            }
        }
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            return; // EINTR
        }
        for (pfd, slot) in fds.iter().zip(slots.iter()) {
            if pfd.revents == 0 {
                continue;
            }
            match *slot {
                Slot::Listener => self.accept(),
                Slot::Signal => self.reap(),
                Slot::Conn(i) => self.conn_ready(i, pfd.revents),
                Slot::Out(pi, is_err) => self.read_output(&ids[pi], is_err),
                Slot::Stdin(pi) => self.flush_stdin(&ids[pi]),
            }
        }
        self.housekeeping(&ids);
    }

    fn accept(&mut self) {
        loop {
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return;
            }
            self.conns.push(Conn {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                attached: None,
                closing: false,
                dead: false,
            });
        }
    }

    fn reap(&mut self) {
        while let Ok(Some(_)) = self.sigfd.read_signal() {}
        loop {
            let mut status = 0;
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                continue;
            };
            if let Some(p) = self.procs.values_mut().find(|p| p.pid == pid && p.exit.is_none()) {
                p.exit = Some(code);
                p.exited_at = Some(Instant::now());
                p.stdin = None;
            }
        }
    }

    fn conn_ready(&mut self, i: usize, revents: i16) {
        if revents & libc::POLLOUT != 0 {
            let c = &mut self.conns[i];
            match write_fd(c.fd.as_raw_fd(), &c.wbuf) {
                Ok(n) => {
                    c.wbuf.drain(..n);
                }
                Err(libc::EAGAIN) | Err(libc::EINTR) => {}
                Err(_) => c.dead = true,
            }
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            let mut buf = [0u8; 64 * 1024];
            match read_fd(self.conns[i].fd.as_raw_fd(), &mut buf) {
                Ok(0) => self.conns[i].dead = true,
                Ok(n) => {
                    self.conns[i].rbuf.extend_from_slice(&buf[..n]);
                    self.handle_frames(i);
                }
                Err(libc::EAGAIN) | Err(libc::EINTR) => {}
                Err(_) => self.conns[i].dead = true,
            }
        }
    }

    fn handle_frames(&mut self, i: usize) {
        loop {
            let frame = match proto::decode(&mut self.conns[i].rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(_) => {
                    self.conns[i].dead = true;
                    return;
                }
            };
            let (tag, payload) = frame;
            match (&self.conns[i].attached, tag) {
                (None, proto::TAG_REQUEST) => match serde_json::from_slice::<Request>(&payload) {
                    Ok(req) => {
                        if self.handle_request(i, req) {
                            return; // the connection was handed to a child
                        }
                    }
                    Err(e) => self.reply(i, Reply::err(ErrorKind::Invalid, format!("bad request: {e}")), true),
                },
                (Some(id), tag) => {
                    let id = id.clone();
                    self.stream_frame(&id, tag, &payload);
                }
                _ => self.conns[i].dead = true,
            }
            if self.conns[i].dead || self.conns[i].closing {
                return;
            }
        }
    }

    fn reply(&mut self, i: usize, r: Reply, close: bool) {
        let c = &mut self.conns[i];
        c.wbuf.extend(proto::json_frame(proto::TAG_REPLY, &r));
        c.closing |= close;
    }

    /// Returns true when the connection was handed over to a forked child.
    fn handle_request(&mut self, i: usize, req: Request) -> bool {
        match req {
            Request::Spawn(spec) => match self.spawn(spec) {
                Ok(id) => {
                    self.reply(i, Reply { ids: vec![id.clone()], ..Reply::ok() }, false);
                    self.attach(i, &id);
                }
                Err((kind, msg)) => self.reply(i, Reply::err(kind, msg), true),
            },
            Request::Attach { id } => {
                if self.procs.contains_key(&id) {
                    self.reply(i, Reply { ids: vec![id.clone()], ..Reply::ok() }, false);
                    self.attach(i, &id);
                } else {
                    self.reply(i, Reply::err(ErrorKind::ProcessNotFound, format!("unknown process: {id}")), true);
                }
            }
            Request::List => {
                let mut ids: Vec<String> = self.procs.keys().cloned().collect();
                ids.sort();
                self.reply(i, Reply { ids, ..Reply::ok() }, true);
            }
            Request::SignalAll { signal } => {
                // kill(-1) from pid 1 reaches every process of the pid namespace but init.
                unsafe { libc::kill(-1, signal) };
                self.reply(i, Reply::ok(), true);
            }
            Request::StreamIn { user, destination } => {
                self.hand_off(i, |conn, rest| stream_in(conn, rest, &user, &destination));
                return true;
            }
            Request::StreamOut { user, source } => {
                self.hand_off(i, |conn, _| stream_out(conn, &user, &source));
                return true;
            }
        }
        false
    }

    /// Forks a child that owns connection `i` from now on and runs `f` in it.
    /// init's own copy of the connection is closed at the end of this tick.
    fn hand_off(&mut self, i: usize, f: impl FnOnce(OwnedFd, Vec<u8>) -> i32) {
        let conn = &mut self.conns[i];
        conn.dead = true;
        let rest = std::mem::take(&mut conn.rbuf);
        let raw = conn.fd.as_raw_fd();
        match unsafe { libc::fork() } {
            0 => {
                reset_child_signals();
                // Keep only the connection, as fd 3: the child must not hold other
                // processes' pipes open.
                let fd = unsafe {
                    libc::dup2(raw, 3);
                    libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
                    OwnedFd::from_raw_fd(3)
                };
                set_blocking(fd.as_raw_fd());
                let code = f(fd, rest);
                unsafe { libc::_exit(code) };
            }
            n if n < 0 => {
                let frame = proto::json_frame(proto::TAG_REPLY, &Reply::err(ErrorKind::Failed, "fork failed"));
                let _ = write_fd(raw, &frame);
            }
            _ => {}
        }
    }

    fn attach(&mut self, i: usize, id: &str) {
        let Some(p) = self.procs.get_mut(id) else { return };
        let c = &mut self.conns[i];
        c.attached = Some(id.to_string());
        let exit_in_backlog = p.delivered && !p.backlog.is_empty();
        for f in p.backlog.drain(..) {
            c.wbuf.extend(f);
        }
        p.backlog_len = 0;
        // The exit status already went to an earlier client: a later attach gets it too.
        if let (Some(code), true, false) = (p.exit, p.delivered, exit_in_backlog) {
            c.wbuf.extend(proto::frame(proto::TAG_EXIT, &proto::exit_payload(code)));
        }
    }

    fn stream_frame(&mut self, id: &str, tag: u8, payload: &[u8]) {
        let Some(p) = self.procs.get_mut(id) else { return };
        match tag {
            proto::TAG_STDIN if !p.stdin_eof => p.stdin_buf.extend_from_slice(payload),
            proto::TAG_STDIN_EOF => {
                if p.tty {
                    // A terminal has no EOF of its own: send ^D as a keyboard would.
                    p.stdin_buf.push(4);
                } else {
                    p.stdin_eof = true;
                }
            }
            proto::TAG_SIGNAL => {
                if let (Some(&sig), None) = (payload.first(), p.exit) {
                    unsafe { libc::kill(p.pid, sig as i32) };
                }
            }
            proto::TAG_RESIZE => {
                if let (Some((cols, rows)), Some(fd)) = (proto::parse_resize(payload), &p.stdout) {
                    if p.tty {
                        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                        unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                    }
                }
            }
            _ => {}
        }
        if !p.stdin_buf.is_empty() {
            self.flush_stdin(id);
        } else if p.stdin_eof && !p.tty {
            p.stdin = None;
        }
    }

    fn flush_stdin(&mut self, id: &str) {
        let Some(p) = self.procs.get_mut(id) else { return };
        let Some(fd) = &p.stdin else {
            p.stdin_buf.clear();
            return;
        };
        match write_fd(fd.as_raw_fd(), &p.stdin_buf) {
            Ok(n) => {
                p.stdin_buf.drain(..n);
            }
            Err(libc::EAGAIN) | Err(libc::EINTR) => {}
            Err(_) => {
                p.stdin_buf.clear();
                if !p.tty {
                    p.stdin = None;
                }
            }
        }
        if p.stdin_buf.is_empty() && p.stdin_eof && !p.tty {
            p.stdin = None;
        }
    }

    fn read_output(&mut self, id: &str, is_err: bool) {
        let Some(p) = self.procs.get_mut(id) else { return };
        let slot = if is_err { &mut p.stderr } else { &mut p.stdout };
        let Some(fd) = slot else { return };
        let mut buf = [0u8; 32 * 1024];
        let data = match read_fd(fd.as_raw_fd(), &mut buf) {
            Ok(0) => {
                *slot = None;
                return;
            }
            Ok(n) => &buf[..n],
            Err(libc::EAGAIN) | Err(libc::EINTR) => return,
            // EIO is how a pty master reports that the terminal closed.
            Err(_) => {
                *slot = None;
                return;
            }
        };
        let tag = if is_err { proto::TAG_STDERR } else { proto::TAG_STDOUT };
        let frame = proto::frame(tag, data);
        self.deliver(id, frame);
    }

    fn deliver(&mut self, id: &str, frame: Vec<u8>) {
        let mut sent = false;
        for c in self.conns.iter_mut().filter(|c| c.attached.as_deref() == Some(id) && !c.dead) {
            c.wbuf.extend_from_slice(&frame);
            sent = true;
        }
        if !sent {
            let Some(p) = self.procs.get_mut(id) else { return };
            p.backlog_len += frame.len();
            p.backlog.push_back(frame);
            while p.backlog_len > BACKLOG_LIMIT {
                match p.backlog.pop_front() {
                    Some(f) => p.backlog_len -= f.len(),
                    None => break,
                }
            }
        }
    }

    fn housekeeping(&mut self, ids: &[String]) {
        let now = Instant::now();
        for id in ids {
            let Some(p) = self.procs.get_mut(id) else { continue };
            if let (Some(_), Some(at)) = (p.exit, p.exited_at) {
                if !p.output_done() && now.duration_since(at) > DRAIN_GRACE {
                    p.stdout = None;
                    p.stderr = None;
                }
            }
            if p.finished() && !p.delivered {
                let code = p.exit.unwrap_or(255);
                let attached = self.conns.iter().any(|c| c.attached.as_deref() == Some(id.as_str()) && !c.dead);
                let frame = proto::frame(proto::TAG_EXIT, &proto::exit_payload(code));
                if attached {
                    for c in self.conns.iter_mut().filter(|c| c.attached.as_deref() == Some(id.as_str())) {
                        c.wbuf.extend_from_slice(&frame);
                        c.closing = true;
                    }
                    if let Some(p) = self.procs.get_mut(id) {
                        p.delivered = true;
                    }
                } else if let Some(p) = self.procs.get_mut(id) {
                    // Kept for a late attach; the backlog now ends with the exit.
                    p.backlog.push_back(frame);
                    p.delivered = true;
                }
                if let Some(p) = self.procs.get_mut(id) {
                    p.finished_at = Some(now);
                }
            }
        }
        // An attach to a process that had already finished: its backlog carried the
        // exit status, so close after flushing.
        for c in self.conns.iter_mut() {
            if let Some(p) = c.attached.as_ref().and_then(|id| self.procs.get(id)) {
                if p.finished_at.is_some() && p.backlog.is_empty() {
                    c.closing = true;
                }
            }
        }
        self.procs.retain(|_, p| p.finished_at.is_none_or(|t| now.duration_since(t) < KEEP_EXITED));
        self.conns.retain(|c| !(c.dead || c.closing && c.wbuf.is_empty()));
    }

    fn spawn(&mut self, req: SpawnRequest) -> Result<String, (ErrorKind, String)> {
        let id = if req.id.is_empty() { random_guid() } else { req.id.clone() };
        if let Some(p) = self.procs.get(&id) {
            if !p.finished() {
                return Err((ErrorKind::AlreadyExists, format!("process ID '{id}' is already in use")));
            }
        }
        let user = users::lookup(Path::new("/"), &req.user).map_err(|e| match e {
            users::UserError::NotFound(_) => (ErrorKind::UserNotFound, e.to_string()),
            users::UserError::Invalid(_) => (ErrorKind::Invalid, e.to_string()),
        })?;
        let cwd = if req.dir.is_empty() { user.home.clone() } else { req.dir.clone() };
        let mut env = req.env.clone();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", user.home));
        }
        let exe = resolve_executable(&req.path, &env, &cwd)?;
        let child = spawn_child(&req, &user, &cwd, &exe, &env).map_err(|e| (ErrorKind::Failed, e))?;
        self.procs.insert(
            id.clone(),
            Proc {
                pid: child.pid,
                stdout: Some(child.stdout),
                stderr: child.stderr,
                stdin: Some(child.stdin),
                stdin_buf: Vec::new(),
                stdin_eof: false,
                tty: req.tty.is_some(),
                exit: None,
                exited_at: None,
                backlog: VecDeque::new(),
                backlog_len: 0,
                delivered: false,
                finished_at: None,
            },
        );
        Ok(id)
    }
}

/// A random version-4 GUID, as Garden gives processes that name no id.
pub fn random_guid() -> String {
    let mut b = [0u8; 16];
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 16 {
        // Entropy is unavailable only in broken environments; stay unique anyway.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        b = t.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the program as runc would: a path with a slash is taken as is, a bare
/// name is looked up in the process's PATH.
fn resolve_executable(path: &str, env: &[String], cwd: &str) -> Result<PathBuf, (ErrorKind, String)> {
    if path.is_empty() {
        return Err((ErrorKind::Invalid, "process spec has no path".into()));
    }
    if path.contains('/') {
        let p = Path::new(cwd).join(path);
        return match std::fs::metadata(&p) {
            Ok(_) => Ok(p),
            Err(_) => Err((
                ErrorKind::ExecutableNotFound,
                format!("exec: \"{path}\": stat {path}: no such file or directory"),
            )),
        };
    }
    let search = env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("");
    search
        .split(':')
        .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(path))
        .find(|p| is_executable(p))
        .ok_or_else(|| (ErrorKind::ExecutableNotFound, format!("exec: \"{path}\": executable file not found in $PATH")))
}

struct Child {
    pid: i32,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    stdin: OwnedFd,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn reset_child_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn spawn_child(req: &SpawnRequest, user: &User, cwd: &str, exe: &Path, env: &[String]) -> Result<Child, String> {
    // Everything that allocates is prepared before fork.
    let exe_c = cstr(&exe.to_string_lossy())?;
    let mut argv_c = vec![cstr(&req.path)?];
    for a in &req.args {
        argv_c.push(cstr(a)?);
    }
    let env_c = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>, _>>()?;
    let argv_p: Vec<*const libc::c_char> =
        argv_c.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let env_p: Vec<*const libc::c_char> =
        env_c.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();

    let (stdin_r, stdin_w, out_r, out_w, err_pair) = if let Some((cols, rows)) = req.tty {
        let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| format!("openpty: {e}"))?;
        let master_in = pty.master.try_clone().map_err(|e| format!("dup: {e}"))?;
        let slave2 = pty.slave.try_clone().map_err(|e| format!("dup: {e}"))?;
        (pty.slave, master_in, pty.master, slave2, None)
    } else {
        let (ir, iw) = pipe()?;
        let (or, ow) = pipe()?;
        let (er, ew) = pipe()?;
        (ir, iw, or, ow, Some((er, ew)))
    };
    let (status_r, status_w) = pipe()?;
    let tty = req.tty.is_some();
    let cwd_path = PathBuf::from(cwd);

    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // Child: report any failure before exec through the status pipe.
        let fail = |stage: &str| -> ! {
            let msg = format!("{stage}: {}", std::io::Error::last_os_error());
            unsafe {
                libc::write(status_w.as_raw_fd(), msg.as_ptr().cast(), msg.len());
                libc::_exit(127)
            }
        };
        reset_child_signals();
        unsafe {
            libc::setsid();
            let err_fd = err_pair.as_ref().map_or(out_w.as_raw_fd(), |(_, w)| w.as_raw_fd());
            if tty && libc::ioctl(stdin_r.as_raw_fd(), libc::TIOCSCTTY, 0) < 0 {
                fail("set controlling terminal");
            }
            if libc::dup2(stdin_r.as_raw_fd(), 0) < 0
                || libc::dup2(out_w.as_raw_fd(), 1) < 0
                || libc::dup2(err_fd, 2) < 0
            {
                fail("dup2");
            }
        }
        // init is shielded from the OOM killer; its processes are not.
        let _ = std::fs::write("/proc/self/oom_score_adj", "0");
        for &(res, val) in &req.rlimits {
            let lim = libc::rlimit { rlim_cur: val, rlim_max: val };
            if unsafe { libc::setrlimit(res as _, &lim) } < 0 {
                fail("setrlimit");
            }
        }
        if std::fs::metadata(&cwd_path).is_err() && mkdir_all_owned(&cwd_path, user.uid, user.gid).is_err() {
            fail("create working directory");
        }
        if let Err(e) = become_user(user) {
            let _ = e;
            fail("set user");
        }
        if unsafe { libc::chdir(cstr_lossy(cwd).as_ptr()) } < 0 {
            fail(&format!("chdir to {cwd}"));
        }
        unsafe {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            libc::execve(exe_c.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
        }
        fail(&format!("exec {}", exe.display()));
    }
    drop(status_w);
    drop(stdin_r);
    drop(out_w);
    let err_r = err_pair.map(|(r, w)| {
        drop(w);
        r
    });
    let mut msg = String::new();
    let _ = std::fs::File::from(status_r).read_to_string(&mut msg);
    if !msg.is_empty() {
        let mut st = 0;
        unsafe { libc::waitpid(pid, &mut st, 0) };
        return Err(msg);
    }
    for fd in [Some(&stdin_w), Some(&out_r), err_r.as_ref()].into_iter().flatten() {
        set_nonblocking(fd.as_raw_fd());
    }
    Ok(Child { pid, stdout: out_r, stderr: err_r, stdin: stdin_w })
}

fn cstr_lossy(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// `mkdir -p`, giving every directory it creates to the user.
fn mkdir_all_owned(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    while std::fs::symlink_metadata(p).is_err() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for dir in missing.iter().rev() {
        std::fs::DirBuilder::new().mode(0o755).create(dir)?;
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

fn become_user(user: &User) -> nix::Result<()> {
    let groups: Vec<nix::unistd::Gid> = user.groups.iter().map(|&g| nix::unistd::Gid::from_raw(g)).collect();
    nix::unistd::setgroups(&groups)?;
    nix::unistd::setresgid(user.gid.into(), user.gid.into(), user.gid.into())?;
    nix::unistd::setresuid(user.uid.into(), user.uid.into(), user.uid.into())?;
    Ok(())
}

fn send_reply(conn: &mut std::fs::File, r: &Reply) {
    let _ = conn.write_all(&proto::json_frame(proto::TAG_REPLY, r));
}

fn enter_user(conn: &mut std::fs::File, user_spec: &str) -> Option<User> {
    let user = match users::lookup(Path::new("/"), user_spec) {
        Ok(u) => u,
        Err(e) => {
            send_reply(conn, &Reply::err(ErrorKind::UserNotFound, e.to_string()));
            return None;
        }
    };
    if become_user(&user).is_err()
        || std::env::set_current_dir(&user.home).is_err() && std::env::set_current_dir("/").is_err()
    {
        send_reply(conn, &Reply::err(ErrorKind::Failed, format!("cannot become user {}", user.name)));
        return None;
    }
    Some(user)
}

/// Child of init: unpacks a tar stream into `destination`, as the user, inside the
/// container. The `tar` crate refuses entries that would land outside it.
fn stream_in(conn: OwnedFd, rest: Vec<u8>, user: &str, destination: &str) -> i32 {
    let mut conn = std::fs::File::from(conn);
    let Some(user) = enter_user(&mut conn, user) else { return 1 };
    let dest = PathBuf::from(if destination.is_empty() { "." } else { destination });
    if let Err(e) = mkdir_all_owned(&dest, user.uid, user.gid) {
        send_reply(&mut conn, &Reply::err(ErrorKind::Failed, format!("mkdir {}: {e}", dest.display())));
        return 1;
    }
    send_reply(&mut conn, &Reply::ok());
    let reader = std::io::Cursor::new(rest).chain(&conn);
    let result = unpack_tar_stream(reader, &dest);
    // Drain what the tar reader left so the daemon's writes never fail half-way.
    let mut sink = [0u8; 8192];
    while matches!((&conn).read(&mut sink), Ok(n) if n > 0) {}
    match result {
        Ok(()) => {
            send_reply(&mut conn, &Reply::ok());
            0
        }
        Err(e) => {
            send_reply(&mut conn, &Reply::err(ErrorKind::Failed, format!("stream in: {}", error_chain(&e))));
            1
        }
    }
}

/// An error with its causes ("failed to unpack `x` into `/d`: Permission
/// denied"): the tar crate's own message names the entry but not why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let msg = c.to_string();
        if !out.ends_with(&msg) {
            out = format!("{out}: {msg}");
        }
        cause = c.source();
    }
    out
}

/// Unpacks a stream-in tar into `dest` as the calling user: modes masked with
/// 022, no ownership or xattrs, existing files replaced. Public so the fuzz
/// targets and property tests exercise exactly what stream-in runs.
pub fn unpack_tar_stream<R: Read>(reader: R, dest: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    archive.set_mask(0o022);
    archive.unpack(dest)
}

/// Child of init: writes `source` as a tar stream, as the user. A trailing `/`
/// sends the directory's contents, otherwise the entry itself (as `tar -C dir base`).
fn stream_out(conn: OwnedFd, user: &str, source: &str) -> i32 {
    let mut conn = std::fs::File::from(conn);
    if enter_user(&mut conn, user).is_none() {
        return 1;
    }
    let src = PathBuf::from(source);
    let meta = match std::fs::symlink_metadata(&src) {
        Ok(m) => m,
        Err(e) => {
            send_reply(&mut conn, &Reply::err(ErrorKind::Failed, format!("stat {source}: {e}")));
            return 1;
        }
    };
    send_reply(&mut conn, &Reply::ok());
    let mut b = tar::Builder::new(std::io::BufWriter::new(&conn));
    b.follow_symlinks(false);
    let name = if source.ends_with('/') || src.file_name().is_none() {
        PathBuf::from(".")
    } else {
        PathBuf::from(src.file_name().unwrap_or_default())
    };
    let r = if meta.is_dir() { b.append_dir_all(&name, &src) } else { b.append_path_with_name(&src, &name) };
    let r = r.and_then(|_| b.into_inner()).and_then(|mut w| w.flush());
    i32::from(r.is_err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_in_errors_keep_their_cause() {
        let dir = std::env::temp_dir().join(format!("celld-init-chain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A file where the tar wants a directory: unpacking `f/x` fails, and why.
        std::fs::write(dir.join("f"), b"").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "f/x", &b"y"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let err = tar::Archive::new(&data[..]).unpack(&dir).unwrap_err();
        let msg = error_chain(&err);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(msg.contains("f/x") && msg.contains("ot a directory"), "{msg}");
    }

    #[test]
    fn executable_lookup_follows_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(resolve_executable("sh", &env, "/").is_ok());
        let (kind, msg) = resolve_executable("no-such-binary-xyz", &env, "/").unwrap_err();
        assert_eq!(kind, ErrorKind::ExecutableNotFound);
        assert_eq!(msg, "exec: \"no-such-binary-xyz\": executable file not found in $PATH");
        let (kind, _) = resolve_executable("/no/such", &env, "/").unwrap_err();
        assert_eq!(kind, ErrorKind::ExecutableNotFound);
    }
}
