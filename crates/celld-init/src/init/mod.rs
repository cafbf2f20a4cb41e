//! pid 1 of every container.
//!
//! The container's first process becomes this code (see celld-runtime's `spawn`) after
//! it has set up namespaces, mounts, cgroups, capabilities and seccomp, so
//! init runs with exactly the confinement of the container and needs no binary in
//! the rootfs. It reaps zombies, never exits on its own, and is the holder of
//! every process's pipes: processes started through it keep running, and their
//! output keeps being buffered, when the daemon dies. The daemon talks to it over
//! the unix socket whose listening fd it inherited (see [`super::initproto`]).
//!
//! Single-threaded, `poll(2)`-driven; forking from here is safe.
//!
//! This file is the loop itself (startup, `poll`, accept, reap). The rest, from
//! low to high: `state` (connections and process table), `sys` (raw fd calls),
//! `exec` (starting a process), `stream_in_out` (tar children), `process_io`
//! (a process's streams and exit delivery), `requests` (the daemon's frames).

pub mod exec;
mod pea;
mod process_io;
mod requests;
mod state;
mod stream_in_out;
mod sys;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

pub use exec::random_guid;
pub use stream_in_out::unpack_tar_stream;

use state::{CLIENT_HIGH_WATER, Conn, Init};
use sys::set_nonblocking;

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
        // Garden's name for a container's pid 1, in `ps` and in /proc/1/comm.
        libc::prctl(libc::PR_SET_NAME, c"garden-init".as_ptr());
    }
    sys::set_command_line(b"garden-init");
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
    let mut init = Init {
        listener: unsafe { OwnedFd::from_raw_fd(listen_fd) },
        sigfd,
        conns: Vec::new(),
        procs: HashMap::new(),
        orphan_exits: Vec::new(),
        scratch: sys::Scratch::new(),
        touched: true,
    };
    loop {
        init.tick();
    }
}

/// How long init waits, idle after some work, before it gives back the
/// pages that work touched (see `sys::Scratch`).
const IDLE_RELEASE_MS: i32 = 1000;

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
        // Idle for a while after work: give back the pages it touched.
        let idle_check = timeout < 0 && self.touched;
        if idle_check {
            timeout = IDLE_RELEASE_MS;
        }
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            return; // EINTR
        }
        if n == 0 && idle_check {
            self.scratch.release();
            sys::release_stack_below_here();
            self.touched = false;
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
                pea: None,
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
            } else {
                self.orphan_exits.push((pid, code, Instant::now()));
            }
        }
    }
}
