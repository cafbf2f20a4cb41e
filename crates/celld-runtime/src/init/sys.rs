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

/// Makes this process's command line read `title` (and nothing else) in
/// /proc/PID/cmdline, as `ps` shows it, without a host path in sight: the
/// argument area it inherited from the helper is overwritten in place, and
/// its last byte made non-NUL, which makes the kernel show the area up to
/// the first NUL only. (PR_SET_MM would say it exactly but needs
/// CAP_SYS_RESOURCE in the host's user namespace.)
pub(super) fn set_command_line(title: &[u8]) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // arg_start and arg_end are fields 48 and 49; the fields after the
    // parenthesised name start at the 3rd.
    let Some((_, rest)) = stat.rsplit_once(')') else { return };
    let mut fields = rest.split_whitespace().skip(45).map(|f| f.parse::<usize>().ok());
    let (Some(Some(start)), Some(Some(end))) = (fields.next(), fields.next()) else { return };
    if end <= start + title.len() + 1 {
        return;
    }
    // The area is this process's own initial stack, which nothing else
    // refers to once init runs (std copies the arguments it hands out).
    unsafe {
        let area = std::slice::from_raw_parts_mut(start as *mut u8, end - start);
        area.fill(b' ');
        area[..title.len()].copy_from_slice(title);
        area[title.len()] = 0;
    }
}
