//! The daemon's connections: reading and decoding their frames, answering
//! requests (spawn, attach, list, signal all) and handing stream-in/out
//! connections to a forked child.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::exec::{final_env, random_guid, resolve_executable, spawn_child};
use super::state::{Init, Proc};
use super::stream_in_out::{stream_in, stream_out};
use super::sys::{read_fd, reset_child_signals, set_blocking, write_fd};
use crate::initproto::{self as proto, ErrorKind, Reply, Request, SpawnRequest};
use crate::users;

impl Init {
    pub(super) fn conn_ready(&mut self, i: usize, revents: i16) {
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
            self.touched = true;
            match read_fd(self.conns[i].fd.as_raw_fd(), self.scratch.buf()) {
                Ok(0) => self.conns[i].dead = true,
                Ok(n) => {
                    self.conns[i].rbuf.extend_from_slice(&self.scratch.buf()[..n]);
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

    pub(super) fn reply(&mut self, i: usize, r: Reply, close: bool) {
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
            Request::PreparePea { id, tty } => self.prepare_pea(i, id, tty),
            Request::AdoptPea { pid } => self.adopt_pea(i, pid),
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

    fn spawn(&mut self, req: SpawnRequest) -> Result<String, (ErrorKind, String)> {
        let id = if req.id.is_empty() { random_guid() } else { req.id.clone() };
        if let Some(p) = self.procs.get(&id) {
            if !p.finished() {
                return Err((ErrorKind::AlreadyExists, format!("process ID '{id}' is already in use")));
            }
        }
        let user = users::lookup(Path::new("/"), &req.user).map_err(|e| match e {
            users::UserError::NotFound(_) | users::UserError::GroupNotFound(_) => {
                (ErrorKind::UserNotFound, e.to_string())
            }
            users::UserError::Invalid(_) => (ErrorKind::Invalid, e.to_string()),
        })?;
        let cwd = if req.dir.is_empty() { user.home.clone() } else { req.dir.clone() };
        let env = final_env(&req.env, &user.home);
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
