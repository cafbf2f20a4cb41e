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

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Notify;

use super::server::Server;

/// What one listener allows; the flags `--garden-header-timeout`,
/// `--garden-idle-timeout` and `--garden-max-connections`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(120), max_connections: 4096 }
    }
}

/// One connection's state, as the eviction sees it.
#[derive(Debug)]
struct ConnState {
    id: u64,
    /// Milliseconds since `Conns::epoch` of the last byte read or written.
    last_activity: AtomicU64,
    /// Requests being served (hyper routes); 0 while waiting for a head.
    busy: AtomicUsize,
    /// A process stream: never evicted.
    hijacked: AtomicBool,
    evict: Notify,
}

/// The connections of all Garden listeners of one daemon.
#[derive(Debug)]
pub struct Conns {
    limits: Limits,
    epoch: Instant,
    table: Mutex<HashMap<u64, Arc<ConnState>>>,
    next: AtomicU64,
    refused: RateLog,
    evicted: RateLog,
    handshakes: RateLog,
}

/// What a connection's server needs to know and tell: timeouts, and whether
/// it is busy or hijacked. `untracked()` for connections outside any listener.
#[derive(Debug, Clone)]
pub struct ConnTrack {
    reg: Option<Arc<Registration>>,
    limits: Limits,
}

/// A connection's place in the table, left when the last `ConnTrack` goes.
#[derive(Debug)]
struct Registration {
    state: Arc<ConnState>,
    conns: Arc<Conns>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut t) = self.conns.table.lock() {
            t.remove(&self.state.id);
        }
    }
}

impl ConnTrack {
    pub fn untracked() -> Self {
        Self { reg: None, limits: Limits::default() }
    }

    pub fn header_timeout(&self) -> Duration {
        self.limits.header_timeout
    }

    pub fn idle_timeout(&self) -> Duration {
        self.limits.idle_timeout
    }

    fn state(&self) -> Option<&Arc<ConnState>> {
        self.reg.as_ref().map(|r| &r.state)
    }

    /// The connection became a process stream.
    pub fn hijacked(&self) {
        if let Some(s) = self.state() {
            s.hijacked.store(true, Ordering::Relaxed);
        }
    }

    /// Marks a request in progress until the guard (kept with its response
    /// body) is dropped.
    pub fn busy(&self) -> BusyGuard {
        if let Some(s) = self.state() {
            s.busy.fetch_add(1, Ordering::Relaxed);
        }
        BusyGuard(self.state().cloned())
    }

    /// `resp` with its body holding `guard` until the body is done.
    pub fn guard_response<B>(resp: hyper::Response<B>, guard: BusyGuard) -> hyper::Response<GuardedBody<B>> {
        resp.map(|inner| GuardedBody { inner, _guard: guard })
    }

    fn touch(&self) {
        if let Some(r) = &self.reg {
            r.state.last_activity.store(r.conns.now_ms(), Ordering::Relaxed);
        }
    }
}

pub struct BusyGuard(Option<Arc<ConnState>>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.busy.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its connection marked busy until it is done.
pub struct GuardedBody<B> {
    inner: B,
    _guard: BusyGuard,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A log line at most every 10 s, with how many events it stands for.
#[derive(Debug, Default)]
struct RateLog {
    last: Mutex<Option<Instant>>,
    count: AtomicU64,
}

impl RateLog {
    /// Counts one event; returns how many to report if a line is due.
    fn due(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().ok()?;
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return None;
        }
        *last = Some(Instant::now());
        Some(self.count.swap(0, Ordering::Relaxed))
    }
}

/// The answer to a refused connection: 503 with a Garden error body.
static REFUSAL: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body =
        "{\"Type\":\"ServiceUnavailableError\",\"Message\":\"too many connections to the Garden API, try again\"}\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

impl Conns {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            epoch: Instant::now(),
            table: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            refused: RateLog::default(),
            evicted: RateLog::default(),
            handshakes: RateLog::default(),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A slot for a new connection, evicting one if at the cap; `None`: refuse.
    fn admit(self: &Arc<Self>, listener: &'static str) -> Option<ConnTrack> {
        let now = self.now_ms();
        let mut table = self.table.lock().ok()?;
        if table.len() >= self.limits.max_connections {
            let stall = u64::try_from(self.limits.header_timeout.as_millis()).unwrap_or(u64::MAX);
            // Waiting for a head beats a stalled request; the least recently active first.
            let victim = table
                .values()
                .filter(|s| !s.hijacked.load(Ordering::Relaxed))
                .filter_map(|s| {
                    let last = s.last_activity.load(Ordering::Relaxed);
                    let waiting = s.busy.load(Ordering::Relaxed) == 0;
                    (waiting || now.saturating_sub(last) >= stall).then_some((!waiting, last, s.id))
                })
                .min();
            match victim {
                Some((_, _, id)) => {
                    if let Some(s) = table.remove(&id) {
                        s.evict.notify_one();
                    }
                    if let Some(n) = self.evicted.due() {
                        tracing::warn!(
                            listener,
                            evicted = n,
                            max = self.limits.max_connections,
                            "Garden connection cap reached: closing idle connections to admit new ones"
                        );
                    }
                }
                None => {
                    if let Some(n) = self.refused.due() {
                        tracing::warn!(
                            listener,
                            refused = n,
                            max = self.limits.max_connections,
                            "Garden connection cap reached and every connection busy: refusing new connections"
                        );
                    }
                    return None;
                }
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            id,
            last_activity: AtomicU64::new(now),
            busy: AtomicUsize::new(0),
            hijacked: AtomicBool::new(false),
            evict: Notify::new(),
        });
        table.insert(id, state.clone());
        Some(ConnTrack { reg: Some(Arc::new(Registration { state, conns: self.clone() })), limits: self.limits })
    }
}

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

    fn limits(max: usize) -> Limits {
        Limits { header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60), max_connections: max }
    }

    #[test]
    fn at_the_cap_the_longest_waiting_goes_and_streams_stay() {
        let conns = Conns::new(limits(3));
        let a = conns.admit("t").unwrap();
        let b = conns.admit("t").unwrap();
        let c = conns.admit("t").unwrap();
        a.hijacked();
        let _busy = b.busy();
        // c waits for a head: it goes, a (stream) and b (fresh request) stay.
        let d = conns.admit("t").unwrap();
        assert_eq!(conns.len(), 3);
        let ids: Vec<u64> = conns.table.lock().unwrap().keys().copied().collect();
        assert!(!ids.contains(&c.state().unwrap().id));
        // Now: a stream, a busy request, d waiting → d goes.
        let _e = conns.admit("t").unwrap();
        let ids: Vec<u64> = conns.table.lock().unwrap().keys().copied().collect();
        assert!(!ids.contains(&d.state().unwrap().id));
        drop(d);
        drop(c);
    }

    #[test]
    fn refused_when_everything_is_busy_or_a_stream() {
        let conns = Conns::new(limits(2));
        let a = conns.admit("t").unwrap();
        let b = conns.admit("t").unwrap();
        a.hijacked();
        let guard = b.busy();
        assert!(conns.admit("t").is_none());
        drop(guard);
        assert!(conns.admit("t").is_some());
    }

    #[test]
    fn a_closed_connection_leaves_the_table() {
        let conns = Conns::new(limits(2));
        let a = conns.admit("t").unwrap();
        let a2 = a.clone();
        drop(a);
        assert_eq!(conns.len(), 1);
        drop(a2);
        assert_eq!(conns.len(), 0);
    }

    #[test]
    fn the_refusal_is_a_garden_error() {
        let text = String::from_utf8(REFUSAL.clone()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 ") && head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["Type"], "ServiceUnavailableError");
    }

    #[test]
    fn the_cap_fits_the_fd_limit() {
        assert_eq!(fit_max_connections(4096, 1024), 512);
        assert_eq!(fit_max_connections(4096, 1 << 20), 4096);
    }
}
