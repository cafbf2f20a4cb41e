//! init's side of a pea (a process with its own rootfs). The pea is started
//! from the host, which alone may make its mount namespace (see
//! celld-runtime's `pea`); init makes its stdio first, as for any process, and takes
//! the pea into its table once it runs. Its starter exits at once, so the pea
//! becomes init's child: init reaps it, signals it and streams it like the
//! processes it forked itself, across daemon restarts.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::exec::random_guid;
use super::state::{Init, Proc};
use super::sys::{set_nonblocking, write_fd};
use crate::initproto::{ErrorKind, Reply};

/// How long the exit of a child init does not know is kept for an
/// `AdoptPea` that names it: a pea may exit before it is adopted.
const KEEP_ORPHAN_EXITS: Duration = Duration::from_secs(60);

/// A pea's stdio between `PreparePea` and `AdoptPea`, held by the connection.
pub(super) struct PeaStdio {
    id: String,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    /// The ends the pea gets, its stdio then its `go`; the host opens them
    /// through /proc, so init holds them until the pea runs.
    theirs: Vec<OwnedFd>,
    tty: bool,
    /// A byte here lets the pea exec: only an adopted pea runs, and one whose
    /// connection went (a daemon killed half-way) exits when this closes.
    go: OwnedFd,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn make_stdio(id: String, tty: Option<(u16, u16)>) -> Result<PeaStdio, String> {
    let (go_r, go) = pipe()?;
    if let Some((cols, rows)) = tty {
        let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| format!("openpty: {e}"))?;
        let stdin = pty.master.try_clone().map_err(|e| format!("dup: {e}"))?;
        for fd in [&stdin, &pty.master] {
            set_nonblocking(fd.as_raw_fd());
        }
        let theirs = vec![pty.slave, go_r];
        return Ok(PeaStdio { id, stdin, stdout: pty.master, stderr: None, theirs, tty: true, go });
    }
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    for fd in [&in_w, &out_r, &err_r] {
        set_nonblocking(fd.as_raw_fd());
    }
    let theirs = vec![in_r, out_w, err_w, go_r];
    Ok(PeaStdio { id, stdin: in_w, stdout: out_r, stderr: Some(err_r), theirs, tty: false, go })
}

impl Init {
    pub(super) fn prepare_pea(&mut self, i: usize, id: String, tty: Option<(u16, u16)>) {
        let id = if id.is_empty() { random_guid() } else { id };
        if self.procs.get(&id).is_some_and(|p| !p.finished()) {
            let msg = format!("process ID '{id}' is already in use");
            return self.reply(i, Reply::err(ErrorKind::AlreadyExists, msg), true);
        }
        match make_stdio(id.clone(), tty) {
            Ok(stdio) => {
                let fds = stdio.theirs.iter().map(|f| f.as_raw_fd()).collect();
                self.conns[i].pea = Some(stdio);
                self.reply(i, Reply { ids: vec![id], fds, ..Reply::ok() }, false);
            }
            Err(e) => self.reply(i, Reply::err(ErrorKind::Failed, e), true),
        }
    }

    pub(super) fn adopt_pea(&mut self, i: usize, pid: i32) {
        let Some(stdio) = self.conns[i].pea.take() else {
            return self.reply(i, Reply::err(ErrorKind::Invalid, "no pea was prepared on this connection"), true);
        };
        let now = Instant::now();
        self.orphan_exits.retain(|&(_, _, at)| now.duration_since(at) < KEEP_ORPHAN_EXITS);
        let exit = self.orphan_exits.iter().position(|&(p, _, _)| p == pid).map(|n| self.orphan_exits.remove(n).1);
        drop(stdio.theirs);
        // An empty pipe takes the byte at once.
        let _ = write_fd(stdio.go.as_raw_fd(), b"g");
        let id = stdio.id;
        self.procs.insert(
            id.clone(),
            Proc {
                pid,
                stdout: Some(stdio.stdout),
                stderr: stdio.stderr,
                stdin: exit.is_none().then_some(stdio.stdin),
                stdin_buf: Vec::new(),
                stdin_eof: false,
                tty: stdio.tty,
                exit,
                exited_at: exit.map(|_| now),
                backlog: VecDeque::new(),
                backlog_len: 0,
                delivered: false,
                finished_at: None,
            },
        );
        self.reply(i, Reply { ids: vec![id.clone()], ..Reply::ok() }, false);
        self.attach(i, &id);
    }
}
