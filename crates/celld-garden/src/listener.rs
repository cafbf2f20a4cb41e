//! Garden's listeners: the unix socket and `--garden-tcp` (optionally mutual
//! TLS), and what keeps a client from holding the API down.
//!
//! - A request head must arrive within `header_timeout` (slowloris); a
//!   keep-alive connection idle for `idle_timeout` between requests is closed.
//! - At most `max_connections` connections at once. At the cap, a new one
//!   evicts the connection that has waited longest for a request head (idle
//!   keep-alive or half-sent head), else one whose request has been stalled
//!   for `header_timeout`; hijacked process streams (`run`, attach, output) are
//!   never evicted, they are legitimately idle for hours. Only when nothing
//!   can go is the new connection refused (503 with a Garden error body).
//! - The fd limit is raised at start (`raise_nofile_limit`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};

pub use super::conns::{ConnTrack, Conns, Limits};
use super::conns::{REFUSAL, RateLog};
use super::server::Server;

/// A connection's I/O, recording activity for the eviction.
struct Tracked<S> {
    inner: S,
    track: ConnTrack,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.track.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.track.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one admitted connection until it ends or is evicted.
fn spawn_conn<S>(server: Arc<Server>, conn: S, track: ConnTrack, tls: Option<tokio_rustls::TlsAcceptor>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let Some(state) = track.state().cloned() else { return };
        let io = Tracked { inner: conn, track: track.clone() };
        let serve = async {
            match tls {
                None => server.serve_tracked(io, track).await,
                // The handshake counts as the head: the same deadline.
                Some(acceptor) => match tokio::time::timeout(track.header_timeout(), acceptor.accept(io)).await {
                    Ok(Ok(tls_conn)) => server.serve_tracked(tls_conn, track).await,
                    // Strangers are worth a line, not one each (rate-limited).
                    Ok(Err(e)) => {
                        if let Some(n) = track.reg.as_ref().and_then(|r| r.conns.handshakes.due()) {
                            tracing::warn!(error = %e, failed = n, "Garden TLS handshakes failed (no or a foreign client certificate?)");
                        }
                    }
                    Err(_) => tracing::debug!("Garden TLS handshake timed out"),
                },
            }
        };
        tokio::select! {
            () = serve => {}
            () = state.evict.notified() => tracing::debug!(conn = state.id, "evicted an idle Garden connection"),
        }
    });
}

/// Accept errors (EMFILE above all) must not spin the accept loop.
async fn accept_failed(listener: &'static str, e: &std::io::Error, log: &RateLog) {
    if let Some(n) = log.due() {
        tracing::error!(listener, error = %e, failures = n, "accepting a Garden connection failed");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Accepts on the unix socket forever.
pub async fn serve_unix(conns: Arc<Conns>, server: Arc<Server>, listener: UnixListener) {
    let errors = RateLog::default();
    loop {
        match listener.accept().await {
            Ok((conn, _)) => match conns.admit("unix") {
                Some(track) => spawn_conn(server.clone(), conn, track, None),
                None => {
                    let _ = conn.try_write(&REFUSAL);
                }
            },
            Err(e) => accept_failed("unix", &e, &errors).await,
        }
    }
}

/// Accepts on `--garden-tcp` forever, with mutual TLS if `tls` is set.
pub async fn serve_tcp(
    conns: Arc<Conns>,
    server: Arc<Server>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let errors = RateLog::default();
    loop {
        match listener.accept().await {
            Ok((conn, peer)) => match conns.admit("tcp") {
                Some(track) => {
                    let _ = conn.set_nodelay(true);
                    tracing::trace!(%peer, "Garden TCP connection");
                    spawn_conn(server.clone(), conn, track, acceptor.clone());
                }
                // No 503 in the clear to a TLS client: just close.
                None if acceptor.is_some() => {}
                None => {
                    let _ = conn.try_write(&REFUSAL);
                }
            },
            Err(e) => accept_failed("tcp", &e, &errors).await,
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (20 000 idle connections
/// exhausted the default 1024 once); returns the soft limit in force.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the open-file limit");
                hard
            }
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open-file limit");
            1024
        }
    }
}

/// `max` lowered, with a warning, to half the fd limit: the other half is for
/// containers' init sockets, pipes, the depot and gRPC.
pub fn fit_max_connections(max: usize, nofile: u64) -> usize {
    let room = usize::try_from(nofile / 2).unwrap_or(usize::MAX).max(1);
    if max > room {
        tracing::warn!(
            requested = max,
            allowed = room,
            nofile,
            "--garden-max-connections lowered to half the open-file limit"
        );
        room
    } else {
        max.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_fd_limit() {
        assert_eq!(fit_max_connections(4096, 1024), 512);
        assert_eq!(fit_max_connections(4096, 1 << 20), 4096);
    }
}
