//! The Garden listeners' connection table: every open connection, whether it
//! is waiting for a request head, busy with a request, or a hijacked process
//! stream, and which one to evict at the cap (see `listener` for the rules).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

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
pub(super) struct ConnState {
    pub(super) id: u64,
    /// Milliseconds since `Conns::epoch` of the last byte read or written.
    last_activity: AtomicU64,
    /// Requests being served (hyper routes); 0 while waiting for a head.
    busy: AtomicUsize,
    /// A process stream: never evicted.
    hijacked: AtomicBool,
    pub(super) evict: Notify,
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
    pub(super) handshakes: RateLog,
}

/// What a connection's server needs to know and tell: timeouts, and whether
/// it is busy or hijacked. `untracked()` for connections outside any listener.
#[derive(Debug, Clone)]
pub struct ConnTrack {
    pub(super) reg: Option<Arc<Registration>>,
    limits: Limits,
}

/// A connection's place in the table, left when the last `ConnTrack` goes.
#[derive(Debug)]
pub(super) struct Registration {
    state: Arc<ConnState>,
    pub(super) conns: Arc<Conns>,
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

    pub(super) fn state(&self) -> Option<&Arc<ConnState>> {
        self.reg.as_ref().map(|r| &r.state)
    }

    /// The connection became a process stream.
    pub fn hijacked(&self) {
        if let Some(s) = self.state() {
            s.hijacked.store(true, Ordering::Relaxed);
        }
    }

    /// The connection is an ordinary one again (a process route answered
    /// with an error and the client may send its next request).
    pub fn released(&self) {
        if let Some(s) = self.state() {
            s.hijacked.store(false, Ordering::Relaxed);
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

    pub(super) fn touch(&self) {
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
pub(super) struct RateLog {
    last: Mutex<Option<Instant>>,
    count: AtomicU64,
}

impl RateLog {
    /// Counts one event; returns how many to report if a line is due.
    pub(super) fn due(&self) -> Option<u64> {
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
pub(super) static REFUSAL: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
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
    pub(super) fn admit(self: &Arc<Self>, listener: &'static str) -> Option<ConnTrack> {
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
}
