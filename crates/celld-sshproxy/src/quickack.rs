//! A user's TCP connection that acknowledges what it reads at once during the
//! handshake.
//!
//! OpenSSH's client leaves Nagle's algorithm on until a session starts, so in
//! the key exchange its second small packet waits for the ACK of its first.
//! Linux delays that ACK up to 40 ms when the proxy has nothing to send back
//! (its KEXINIT went out before the client's arrived): every login would pay
//! it. TCP_QUICKACK is not sticky, so it is set again after each read; past the
//! handshake the client has TCP_NODELAY and the syscall is no longer worth it.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Reads (handshake, auth and channel open take about a dozen) after which
/// delayed ACKs are left to the kernel.
const HANDSHAKE_READS: u32 = 32;

pub struct QuickAck {
    inner: TcpStream,
    reads_left: u32,
}

impl QuickAck {
    pub fn new(inner: TcpStream) -> Self {
        let s = Self { inner, reads_left: HANDSHAKE_READS };
        s.ack_now();
        s
    }

    fn ack_now(&self) {
        let one: libc::c_int = 1;
        // Best effort: without it a login is slower, not wrong.
        unsafe {
            libc::setsockopt(
                self.inner.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.reads_left > 0 && matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.reads_left -= 1;
            self.ack_now();
        }
        r
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
