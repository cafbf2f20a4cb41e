//! The raw system calls init makes on descriptors (non-blocking reads and
//! writes that report errno) and the signal reset every forked child needs:
//! thin, allocation-free wrappers, safe to call between fork and exec.

use std::os::fd::RawFd;

pub(super) fn set_nonblocking(fd: RawFd) {
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

pub(super) fn set_blocking(fd: RawFd) {
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Non-blocking read: Ok(0) is EOF, Err(EAGAIN) means nothing yet.
pub(super) fn read_fd(fd: RawFd, buf: &mut [u8]) -> Result<usize, i32> {
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

pub(super) fn write_fd(fd: RawFd, buf: &[u8]) -> Result<usize, i32> {
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

pub(super) fn reset_child_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
