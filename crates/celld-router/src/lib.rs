//! The HTTP router of local mode: what Cloud Foundry's gorouter does in front of
//! a foundation. Requests are routed by Host to app instances (round-robin),
//! bodies and upgraded connections are streamed, and an `RTR` access-log line
//! is written per request for the app's log stream.
//!
//! The app layer owns the route set and swaps it wholesale with
//! [`RouteTable::replace`]; the router only reads it. System routes
//! ([`RouteTable::set_system_route`]) send a host to one local address of the
//! platform itself (gorouter's routes registered by system components): they
//! outlive every replace, come before app routes, and write no `RTR` lines.

pub mod metrics;
mod proxy;
mod request_id;
mod rtr;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One routable app instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    pub app_guid: String,
    pub instance_guid: String,
    pub index: u32,
}

struct Route {
    /// Shared with the requests that reach them (their access-log lines) without a copy.
    backends: Vec<Arc<Backend>>,
    /// Each backend's X-Cf-* request headers, made once per table rather than per request.
    instance_headers: Vec<proxy::InstanceHeaders>,
    /// Round-robin position; shared with the previous table's entry for the same
    /// host so frequent replaces don't reset every host to its first instance.
    next: Arc<AtomicUsize>,
}

impl Route {
    fn new(backends: Vec<Arc<Backend>>, next: Arc<AtomicUsize>) -> Self {
        let instance_headers = backends.iter().map(|b| proxy::InstanceHeaders::of(b)).collect();
        Self { backends, instance_headers, next }
    }
}

/// Host → instances. Readers clone an `Arc` of the current map under a read lock
/// held for a pointer copy; writers build a new map and swap it in.
#[derive(Default)]
pub struct RouteTable {
    routes: RwLock<Arc<HashMap<String, Arc<Route>>>>,
    /// Host → a component of the platform; kept apart so the app layer's
    /// wholesale replace never drops them.
    system: RwLock<HashMap<String, SocketAddr>>,
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Atomically replaces the whole table. Keys are lowercase hosts without port
    /// ("hello.apps.localhost"); they are normalised again here, so a stray port,
    /// capital or trailing dot can't make a route unreachable.
    /// A host present with an empty Vec is a known route with no routable instance.
    pub fn replace(&self, routes: HashMap<String, Vec<Backend>>) {
        let mut guard = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let old = Arc::clone(&guard);
        let new = routes
            .into_iter()
            .map(|(host, backends)| {
                let host = normalize_host(&host);
                let next = old.get(&host).map(|r| Arc::clone(&r.next)).unwrap_or_default();
                (host, Arc::new(Route::new(backends.into_iter().map(Arc::new).collect(), next)))
            })
            .collect();
        *guard = Arc::new(new);
    }

    /// Removes every instance of `app_guid` from every host at once (the
    /// hosts stay known, with what else they route to): before the app's
    /// instances are stopped, so no request is sent to one going away.
    pub fn withdraw_app(&self, app_guid: &str) {
        let mut guard = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let new = guard
            .iter()
            .map(|(host, r)| {
                let route = if r.backends.iter().any(|b| b.app_guid == app_guid) {
                    let backends = r.backends.iter().filter(|b| b.app_guid != app_guid).cloned().collect();
                    Arc::new(Route::new(backends, Arc::clone(&r.next)))
                } else {
                    Arc::clone(r)
                };
                (host.clone(), route)
            })
            .collect();
        *guard = Arc::new(new);
    }

    /// The hosts currently routed, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.snapshot().keys().cloned().collect();
        hosts.sort();
        hosts
    }

    /// Routes `host` (normalised) to a component listening on `addr`, ahead
    /// of any app route of the same host.
    pub fn set_system_route(&self, host: &str, addr: SocketAddr) {
        self.system.write().unwrap_or_else(PoisonError::into_inner).insert(normalize_host(host), addr);
    }

    pub fn remove_system_route(&self, host: &str) {
        self.system.write().unwrap_or_else(PoisonError::into_inner).remove(&normalize_host(host));
    }

    fn lookup_system(&self, host: &str) -> Option<Arc<Route>> {
        let addr = *self.system.read().unwrap_or_else(PoisonError::into_inner).get(host)?;
        let backend = Backend { addr, app_guid: String::new(), instance_guid: String::new(), index: 0 };
        Some(Arc::new(Route::new(vec![Arc::new(backend)], Arc::default())))
    }

    fn snapshot(&self) -> Arc<HashMap<String, Arc<Route>>> {
        Arc::clone(&self.routes.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn lookup(&self, host: &str) -> Option<Arc<Route>> {
        self.snapshot().get(host).cloned()
    }
}

/// A connection the accepting thread hands to another.
type Handed = (std::net::TcpStream, SocketAddr);

/// Where the router writes Cloud Foundry `RTR` access-log lines for an app.
pub trait AccessLog: Send + Sync {
    fn record(&self, app_guid: &str, index: u32, line: String);
}

/// Which backend addresses are live instances of this cell right now. The
/// table comes from the scheduler and can be a moment behind; the router
/// never dials an address this says is not live (a destroyed instance's
/// address could lead anywhere).
pub trait LiveBackends: Send + Sync {
    fn is_live(&self, backend: &Backend) -> bool;
}

#[derive(Clone, Default)]
pub struct RouterConfig {
    pub access_log: Option<Arc<dyn AccessLog>>,
    /// `None`: every backend in the table is dialled (tests with local servers).
    pub live: Option<Arc<dyn LiveBackends>>,
    pub metrics: metrics::RouterMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("connect {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("connect {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("{addr}: {source}")]
    Http { addr: SocketAddr, source: hyper::Error },
    #[error("starting the router's threads: {0}")]
    Threads(#[source] std::io::Error),
}

pub struct Router {
    table: Arc<RouteTable>,
    config: RouterConfig,
    pool: Arc<proxy::Pool>,
}

impl Router {
    pub fn new(table: Arc<RouteTable>, config: RouterConfig) -> Arc<Self> {
        Arc::new(Self { table, config, pool: Arc::default() })
    }

    /// Serves until `shutdown` resolves; in-flight connections may be dropped after it.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl std::future::Future<Output = ()> + Send) {
        let pool = Arc::clone(&self.pool);
        self.accept(listener, pool, shutdown, Vec::new()).await;
    }

    /// Serves for the life of the process on `threads` threads of its own,
    /// each a single-threaded runtime with its own backend pool (nginx's
    /// worker processes, as threads). The first accepts and hands the
    /// connections to the threads in turn: one listener woken in several
    /// threads gave every connection to the same one. A request's client
    /// connection, backend connection and their tasks then stay on one
    /// thread: every hand-over between them (hyper's client dispatch, its
    /// response and body channels) is a local queue push, never a
    /// cross-thread wake-up and work stealing on a shared runtime.
    pub fn serve_on_threads(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        threads: usize,
    ) -> Result<(), RouterError> {
        listener.set_nonblocking(true).map_err(RouterError::Threads)?;
        let mut others = Vec::new();
        for i in 1..threads.max(1) {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            others.push(tx);
            let router = Arc::clone(&self);
            Self::thread(i, async move { router.serve_handed(rx).await })?;
        }
        let router = Arc::clone(&self);
        Self::thread(0, async move {
            match TcpListener::from_std(listener) {
                Ok(l) => router.accept(l, Arc::default(), std::future::pending(), others).await,
                Err(e) => tracing::error!(error = %e, "router thread could not take its listener"),
            }
        })
    }

    fn thread(i: usize, work: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), RouterError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(RouterError::Threads)?;
        std::thread::Builder::new()
            .name(format!("router-{i}"))
            .spawn(move || rt.block_on(work))
            .map(drop)
            .map_err(RouterError::Threads)
    }

    /// A thread's share of the connections the first one accepts.
    async fn serve_handed(self: Arc<Self>, mut handed: tokio::sync::mpsc::UnboundedReceiver<Handed>) {
        let pool = Arc::<proxy::Pool>::default();
        let (stop_tx, stop_rx) = watch::channel(());
        let mut sweep = tokio::time::interval(proxy::POOL_IDLE);
        loop {
            tokio::select! {
                _ = sweep.tick() => pool.sweep(),
                next = handed.recv() => match next {
                    Some((stream, peer)) => match TcpStream::from_std(stream) {
                        Ok(s) => {
                            tokio::spawn(Arc::clone(&self).serve_conn(s, peer, stop_rx.clone(), Arc::clone(&pool)));
                        }
                        Err(e) => tracing::warn!(error = %e, "router thread could not take a connection"),
                    },
                    None => break,
                },
            }
        }
        drop(stop_tx);
    }

    async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        pool: Arc<proxy::Pool>,
        shutdown: impl std::future::Future<Output = ()> + Send,
        others: Vec<tokio::sync::mpsc::UnboundedSender<Handed>>,
    ) {
        let mut next = 0usize;
        // Connections hold a receiver; dropping the sender on return ends them.
        let (stop_tx, stop_rx) = watch::channel(());
        let mut sweep = tokio::time::interval(proxy::POOL_IDLE);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = sweep.tick() => pool.sweep(),
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        next = next.wrapping_add(1);
                        match others.get(next % (others.len() + 1)) {
                            None => {
                                tokio::spawn(Arc::clone(&self).serve_conn(stream, peer, stop_rx.clone(), Arc::clone(&pool)));
                            }
                            // A thread gone (it never ends on its own) just drops the connection.
                            Some(other) => match stream.into_std() {
                                Ok(s) => drop(other.send((s, peer))),
                                Err(e) => tracing::warn!(error = %e, "router could not hand a connection on"),
                            },
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "router accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(stop_tx);
    }
}

/// The routing key of a Host header or URI authority: no `:port`, no trailing
/// dot, lowercase. IPv6 literals keep their brackets.
pub fn normalize_host(raw: &str) -> String {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.split(':').next().unwrap_or("")
    };
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_host_strips_port_dot_and_case() {
        assert_eq!(normalize_host("hello.apps.localhost"), "hello.apps.localhost");
        assert_eq!(normalize_host("Hello.Apps.LocalHost:8080"), "hello.apps.localhost");
        assert_eq!(normalize_host("hello.apps.localhost."), "hello.apps.localhost");
        assert_eq!(normalize_host("HELLO.apps.localhost.:80"), "hello.apps.localhost");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[::1"), "[::1");
        assert_eq!(normalize_host(""), "");
        assert_eq!(normalize_host(":80"), "");
    }

    #[test]
    fn replace_normalises_keys_and_keeps_round_robin_position() {
        let table = RouteTable::new();
        let b = |port| Backend {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            app_guid: "a".into(),
            instance_guid: "i".into(),
            index: 0,
        };
        table.replace(HashMap::from([("Hello.Apps.Localhost.".to_string(), vec![b(1), b(2)])]));
        assert_eq!(table.hosts(), vec!["hello.apps.localhost".to_string()]);
        let first = table.lookup("hello.apps.localhost").map(|r| Arc::clone(&r.next));
        table.replace(HashMap::from([("hello.apps.localhost".to_string(), vec![b(3)])]));
        let second = table.lookup("hello.apps.localhost").map(|r| Arc::clone(&r.next));
        assert!(matches!((first, second), (Some(a), Some(b)) if Arc::ptr_eq(&a, &b)));
    }

    #[test]
    fn withdraw_app_removes_only_that_apps_instances() {
        let table = RouteTable::new();
        let b = |port, app: &str| Backend {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            app_guid: app.into(),
            instance_guid: "i".into(),
            index: 0,
        };
        table.replace(HashMap::from([
            ("a.apps.localhost".to_string(), vec![b(1, "a"), b(2, "a")]),
            ("b.apps.localhost".to_string(), vec![b(3, "b")]),
            ("ab.apps.localhost".to_string(), vec![b(1, "a"), b(3, "b")]),
        ]));
        table.withdraw_app("a");
        let ports = |h: &str| table.lookup(h).map(|r| r.backends.iter().map(|b| b.addr.port()).collect::<Vec<_>>());
        assert_eq!(ports("a.apps.localhost"), Some(vec![]));
        assert_eq!(ports("b.apps.localhost"), Some(vec![3]));
        assert_eq!(ports("ab.apps.localhost"), Some(vec![3]));
    }

    #[test]
    fn system_routes_outlive_replace_and_are_normalised() {
        let table = RouteTable::new();
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        table.set_system_route("Celld.Apps.Localhost:8080", addr);
        table.replace(HashMap::new());
        let route = table.lookup_system("celld.apps.localhost");
        assert_eq!(route.map(|r| r.backends.iter().map(|b| b.addr).collect::<Vec<_>>()), Some(vec![addr]));
        assert!(table.lookup_system("other.apps.localhost").is_none());
        table.remove_system_route("celld.apps.localhost");
        assert!(table.lookup_system("celld.apps.localhost").is_none());
    }
}
