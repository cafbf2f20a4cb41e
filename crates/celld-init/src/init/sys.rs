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

/// init's one read buffer, for the daemon's frames and the processes'
/// output alike: mapped on its own, so that the pages a burst of reading
/// touched can be given back while the container idles (on the stack or the
/// heap they would stay, ~100 KiB of every idle container's memory).
pub(super) enum Scratch {
    Mapped(*mut u8),
    /// Had the kernel refused the mapping: init must go on all the same.
    Heap(Vec<u8>),
}

const SCRATCH_LEN: usize = 64 * 1024;

impl Scratch {
    pub(super) fn new() -> Scratch {
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SCRATCH_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED { Scratch::Heap(vec![0; SCRATCH_LEN]) } else { Scratch::Mapped(ptr.cast()) }
    }

    pub(super) fn buf(&mut self) -> &mut [u8] {
        match self {
            // Mapped read-write for init's whole life, and only ever lent out here.
            Scratch::Mapped(ptr) => unsafe { std::slice::from_raw_parts_mut(*ptr, SCRATCH_LEN) },
            Scratch::Heap(v) => v,
        }
    }

    /// Gives the buffer's pages back (they read as zeros when next touched).
    pub(super) fn release(&mut self) {
        if let Scratch::Mapped(ptr) = self {
            unsafe { libc::madvise(ptr.cast(), SCRATCH_LEN, libc::MADV_DONTNEED) };
        }
    }
}

/// Gives back the pages of this thread's stack below the caller's frame
/// (what deeper calls touched once), keeping a page for the red zone and
/// the calls about to be made. Called from init's loop, at its shallowest.
#[inline(never)]
pub(super) fn release_stack_below_here() {
    let marker = 0u8;
    let here = std::ptr::addr_of!(marker) as usize;
    let page = 4096;
    let keep_from = (here & !(page - 1)).saturating_sub(4 * page);
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
    let Some(low) = maps.lines().find(|l| l.ends_with("[stack]")).and_then(|l| {
        let (range, _) = l.split_once(' ')?;
        usize::from_str_radix(range.split_once('-')?.0, 16).ok()
    }) else {
        return;
    };
    if keep_from > low {
        unsafe { libc::madvise(low as *mut libc::c_void, keep_from - low, libc::MADV_DONTNEED) };
    }
}
