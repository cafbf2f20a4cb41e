//! A process's streams: attaching clients, feeding stdin, signals and
//! terminal resizes, reading stdout/stderr into attached clients or the
//! backlog, and delivering the exit status once the output is drained.

use std::os::fd::AsRawFd;
use std::time::Instant;

use super::state::{BACKLOG_LIMIT, DRAIN_GRACE, Init, KEEP_EXITED};
use super::sys::{read_fd, write_fd};
use crate::initproto as proto;

impl Init {
    pub(super) fn attach(&mut self, i: usize, id: &str) {
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

    pub(super) fn stream_frame(&mut self, id: &str, tag: u8, payload: &[u8]) {
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

    pub(super) fn flush_stdin(&mut self, id: &str) {
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

    pub(super) fn read_output(&mut self, id: &str, is_err: bool) {
        let Some(p) = self.procs.get_mut(id) else { return };
        let slot = if is_err { &mut p.stderr } else { &mut p.stdout };
        let Some(fd) = slot else { return };
        self.touched = true;
        let buf = self.scratch.buf();
        let data = match read_fd(fd.as_raw_fd(), &mut buf[..32 * 1024]) {
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

    pub(super) fn housekeeping(&mut self, ids: &[String]) {
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
}
