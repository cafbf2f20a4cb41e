//! Pseudo-terminals for `pty-req` sessions: the master stays here (read and
//! written through tokio), the slave becomes the child's stdin, stdout, stderr
//! and controlling terminal.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use russh::Pty as Mode;
use tokio::io::unix::AsyncFd;

/// A terminal size as the client sends it (characters and pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub cols: u32,
    pub rows: u32,
    pub px: u32,
    pub py: u32,
}

impl Size {
    fn winsize(self) -> libc::winsize {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        libc::winsize {
            ws_row: clamp(self.rows),
            ws_col: clamp(self.cols),
            ws_xpixel: clamp(self.px),
            ws_ypixel: clamp(self.py),
        }
    }
}

/// The master side, non-blocking, registered with the runtime.
pub struct Master(AsyncFd<OwnedFd>);

/// A freshly opened pair.
pub struct Pair {
    pub master: Master,
    pub slave: OwnedFd,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Opens a pty of the given size and applies the client's terminal modes.
pub fn open(size: Size, modes: &[(Mode, u32)]) -> io::Result<Pair> {
    // SAFETY: plain libc calls on descriptors this function owns.
    let master =
        unsafe { OwnedFd::from_raw_fd(cvt(libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC))?) };
    let m = master.as_raw_fd();
    // SAFETY: `m` is an open pty master.
    unsafe {
        cvt(libc::grantpt(m))?;
        cvt(libc::unlockpt(m))?;
    }
    let slave = open_slave(m)?;
    set_winsize(m, size)?;
    apply_modes(slave.as_raw_fd(), modes);
    // SAFETY: F_GETFL/F_SETFL on an owned descriptor.
    unsafe {
        let flags = cvt(libc::fcntl(m, libc::F_GETFL))?;
        cvt(libc::fcntl(m, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    // SAFETY: an OwnedFd stays open, and is the same descriptor, for as long
    // as the AsyncFd that owns it.
    let master = unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)?;
    Ok(Pair { master: Master(master), slave })
}

/// The slave for a master: TIOCGPTPEER needs no path (devpts may be mounted
/// anywhere in a container); older kernels fall back to ptsname.
fn open_slave(m: RawFd) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: ioctl with an int argument on an owned master.
    let fd = unsafe { libc::ioctl(m, libc::TIOCGPTPEER, flags) };
    if fd >= 0 {
        // SAFETY: the ioctl returned a new descriptor that we now own.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the buffer and its length are valid for writing.
    let r = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: ptsname_r NUL-terminated the name within the buffer.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    // SAFETY: open with a valid C string; the result is owned below.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), flags) })?;
    // SAFETY: `fd` was just opened.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_winsize(fd: RawFd, size: Size) -> io::Result<()> {
    let ws = size.winsize();
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// The RFC 4254 §8 terminal modes the client asked for, best effort (a mode
/// the line discipline refuses is not worth failing the session).
fn apply_modes(fd: RawFd, modes: &[(Mode, u32)]) {
    if modes.is_empty() {
        return;
    }
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and pointer.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return;
    }
    for &(mode, value) in modes {
        apply_mode(&mut t, mode, value);
    }
    // SAFETY: valid descriptor and pointer.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
}

fn apply_mode(t: &mut libc::termios, mode: Mode, value: u32) {
    use libc::tcflag_t;
    let cc = |t: &mut libc::termios, i: usize| {
        if let Some(c) = t.c_cc.get_mut(i) {
            *c = u8::try_from(value).unwrap_or(0);
        }
    };
    let flag = |field: &mut tcflag_t, bit: tcflag_t| {
        if value != 0 { *field |= bit } else { *field &= !bit }
    };
    match mode {
        Mode::VINTR => cc(t, libc::VINTR),
        Mode::VQUIT => cc(t, libc::VQUIT),
        Mode::VERASE => cc(t, libc::VERASE),
        Mode::VKILL => cc(t, libc::VKILL),
        Mode::VEOF => cc(t, libc::VEOF),
        Mode::VEOL => cc(t, libc::VEOL),
        Mode::VEOL2 => cc(t, libc::VEOL2),
        Mode::VSTART => cc(t, libc::VSTART),
        Mode::VSTOP => cc(t, libc::VSTOP),
        Mode::VSUSP => cc(t, libc::VSUSP),
        Mode::VREPRINT => cc(t, libc::VREPRINT),
        Mode::VWERASE => cc(t, libc::VWERASE),
        Mode::VLNEXT => cc(t, libc::VLNEXT),
        Mode::VDISCARD => cc(t, libc::VDISCARD),
        Mode::IGNPAR => flag(&mut t.c_iflag, libc::IGNPAR),
        Mode::PARMRK => flag(&mut t.c_iflag, libc::PARMRK),
        Mode::INPCK => flag(&mut t.c_iflag, libc::INPCK),
        Mode::ISTRIP => flag(&mut t.c_iflag, libc::ISTRIP),
        Mode::INLCR => flag(&mut t.c_iflag, libc::INLCR),
        Mode::IGNCR => flag(&mut t.c_iflag, libc::IGNCR),
        Mode::ICRNL => flag(&mut t.c_iflag, libc::ICRNL),
        Mode::IUCLC => flag(&mut t.c_iflag, libc::IUCLC),
        Mode::IXON => flag(&mut t.c_iflag, libc::IXON),
        Mode::IXANY => flag(&mut t.c_iflag, libc::IXANY),
        Mode::IXOFF => flag(&mut t.c_iflag, libc::IXOFF),
        Mode::IMAXBEL => flag(&mut t.c_iflag, libc::IMAXBEL),
        Mode::IUTF8 => flag(&mut t.c_iflag, libc::IUTF8),
        Mode::ISIG => flag(&mut t.c_lflag, libc::ISIG),
        Mode::ICANON => flag(&mut t.c_lflag, libc::ICANON),
        Mode::ECHO => flag(&mut t.c_lflag, libc::ECHO),
        Mode::ECHOE => flag(&mut t.c_lflag, libc::ECHOE),
        Mode::ECHOK => flag(&mut t.c_lflag, libc::ECHOK),
        Mode::ECHONL => flag(&mut t.c_lflag, libc::ECHONL),
        Mode::NOFLSH => flag(&mut t.c_lflag, libc::NOFLSH),
        Mode::TOSTOP => flag(&mut t.c_lflag, libc::TOSTOP),
        Mode::IEXTEN => flag(&mut t.c_lflag, libc::IEXTEN),
        Mode::ECHOCTL => flag(&mut t.c_lflag, libc::ECHOCTL),
        Mode::ECHOKE => flag(&mut t.c_lflag, libc::ECHOKE),
        Mode::PENDIN => flag(&mut t.c_lflag, libc::PENDIN),
        Mode::OPOST => flag(&mut t.c_oflag, libc::OPOST),
        Mode::OLCUC => flag(&mut t.c_oflag, libc::OLCUC),
        Mode::ONLCR => flag(&mut t.c_oflag, libc::ONLCR),
        Mode::OCRNL => flag(&mut t.c_oflag, libc::OCRNL),
        Mode::ONOCR => flag(&mut t.c_oflag, libc::ONOCR),
        Mode::ONLRET => flag(&mut t.c_oflag, libc::ONLRET),
        Mode::CS7 if value != 0 => t.c_cflag = (t.c_cflag & !libc::CSIZE) | libc::CS7,
        Mode::CS8 if value != 0 => t.c_cflag = (t.c_cflag & !libc::CSIZE) | libc::CS8,
        Mode::PARENB => flag(&mut t.c_cflag, libc::PARENB),
        Mode::PARODD => flag(&mut t.c_cflag, libc::PARODD),
        _ => {}
    }
}

impl Master {
    pub fn resize(&self, size: Size) -> io::Result<()> {
        set_winsize(self.0.as_raw_fd(), size)
    }

    /// Reads output; `Ok(0)` once every slave descriptor is closed (the
    /// kernel reports that as EIO).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: reading into a valid buffer of the given length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n.unsigned_abs()) }
            });
            match r {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// Writes all of `buf` (the session's input).
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.0.writable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: writing from a valid buffer of the given length.
                let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n.unsigned_abs()) }
            });
            match r {
                Ok(Ok(n)) => buf = buf.get(n..).unwrap_or_default(),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sshd_pty_round_trip_and_size() {
        let size = Size { cols: 101, rows: 33, px: 0, py: 0 };
        let pair = open(size, &[(Mode::ECHO, 0)]).unwrap();
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::ioctl(pair.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) }, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (101, 33));
        pair.master.resize(Size { cols: 120, rows: 40, px: 0, py: 0 }).unwrap();
        assert_eq!(unsafe { libc::ioctl(pair.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) }, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (120, 40));
        // What the slave writes, the master reads (ONLCR turns \n into \r\n).
        let msg = b"hi\n";
        assert_eq!(unsafe { libc::write(pair.slave.as_raw_fd(), msg.as_ptr().cast(), msg.len()) }, 3);
        let mut buf = [0u8; 16];
        let n = pair.master.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hi\r\n");
        // Closing the slave reads as end of file.
        drop(pair.slave);
        assert_eq!(pair.master.read(&mut buf).await.unwrap(), 0);
    }
}
