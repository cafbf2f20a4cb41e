//! init's state: the connections from the daemon and the table of the
//! container's processes (pipes, stdin queue, output backlog, exit status), with
//! the limits on their buffers. The lowest file of init: every other part works
//! on these.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Output kept for a process nobody is attached to; older output is dropped,
/// as Garden drops output when its stream buffers are full.
pub(super) const BACKLOG_LIMIT: usize = 256 * 1024;
/// A client this far behind stops init reading the process's output (backpressure).
pub(super) const CLIENT_HIGH_WATER: usize = 1024 * 1024;
/// How long an exited process's output may still arrive (a grandchild can hold
/// the pipe open) before the exit status is delivered anyway.
pub(super) const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long an exited process is remembered for late attaches.
pub(super) const KEEP_EXITED: Duration = Duration::from_secs(60);

pub(super) struct Conn {
    pub(super) fd: OwnedFd,
    pub(super) rbuf: Vec<u8>,
    pub(super) wbuf: Vec<u8>,
    pub(super) attached: Option<String>,
    /// A pea's stdio between its two requests (see `pea`).
    pub(super) pea: Option<super::pea::PeaStdio>,
    /// Close once `wbuf` is flushed.
    pub(super) closing: bool,
    pub(super) dead: bool,
}

pub(super) struct Proc {
    pub(super) pid: i32,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdin_buf: Vec<u8>,
    pub(super) stdin_eof: bool,
    pub(super) tty: bool,
    pub(super) exit: Option<i32>,
    pub(super) exited_at: Option<Instant>,
    /// Encoded frames waiting for someone to attach.
    pub(super) backlog: VecDeque<Vec<u8>>,
    pub(super) backlog_len: usize,
    pub(super) delivered: bool,
    pub(super) finished_at: Option<Instant>,
}

impl Proc {
    pub(super) fn output_done(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }
    pub(super) fn finished(&self) -> bool {
        self.exit.is_some() && self.output_done()
    }
}

pub(super) struct Init {
    pub(super) listener: OwnedFd,
    pub(super) sigfd: nix::sys::signalfd::SignalFd,
    pub(super) conns: Vec<Conn>,
    pub(super) procs: HashMap<String, Proc>,
    /// Exits of children not in `procs` (pid, status, when): a pea that
    /// exited before it was adopted.
    pub(super) orphan_exits: Vec<(i32, i32, Instant)>,
    /// The read buffer (see `sys::Scratch`), and whether it (or the stack)
    /// was touched since init last idled.
    pub(super) scratch: super::sys::Scratch,
    pub(super) touched: bool,
}
