//! Prometheus `/metrics` for every role of celld (cell, scheduler, local mode).
//!
//! Each crate that records metrics keeps a `metrics.rs` with one struct of
//! handles and a `register(&mut Registry)`; the daemon builds one
//! [`SharedRegistry`], hands the handles in at construction and serves the
//! registry with [`serve`]. The text is OpenMetrics, which Prometheus scrapes
//! natively.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

pub use prometheus_client;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What a scrape returns (prometheus-client's OpenMetrics text encoder).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Seconds, from a fast container create to a long staging (the default
/// staging timeout is 900 s), so one bucket set serves every duration.
pub const DURATION_BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0];

/// A histogram of durations in seconds over [`DURATION_BUCKETS`].
pub fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// HELP text that names the metric Diego or Garden emits for the same thing
/// ("component Name"), so operators can map dashboards:
/// `help("Containers on this cell", Some("rep ContainerCount"))`.
pub fn help(meaning: &str, original: Option<&str>) -> String {
    match original {
        Some(o) => format!("{meaning} (Diego/Garden: {o})"),
        None => meaning.to_string(),
    }
}

/// Registers the handles of a metrics struct, one row per metric: its field,
/// its name, what it means and, if there is one, Diego's or Garden's
/// original ("component Name", see [`help`]).
///
/// ```ignore
/// celld_metrics::register_all!(r, m, {
///     containers: "celld_containers", "Containers on this cell", "rep ContainerCount";
///     created: "celld_containers_created", "Containers created";
/// });
/// ```
#[macro_export]
macro_rules! register_all {
    ($r:expr, $m:expr, { $( $field:ident: $name:literal, $meaning:literal $(, $original:literal)?; )* }) => {
        $( $r.register($name, $crate::help($meaning, [$($original)?].first().copied()), $m.$field.clone()); )*
    };
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--metrics-listen {addr}: cannot listen there: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("--metrics-listen {0:?}: not an address (use HOST:PORT, e.g. 127.0.0.1:9101, or off)")]
    BadListen(String),
}

/// `--metrics-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    Off,
    On(SocketAddr),
}

impl FromStr for MetricsListen {
    type Err = MetricsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        s.parse().map(Self::On).map_err(|_| MetricsError::BadListen(s.to_string()))
    }
}

/// For clap's `value_parser` (clap names the flag and the value itself).
pub fn parse_listen(s: &str) -> Result<MetricsListen, String> {
    s.parse().map_err(|_| "not an address: use HOST:PORT (e.g. 127.0.0.1:9101) or off".to_string())
}

/// The process's one registry. Registration takes the write lock (start-up, and
/// the embedded scheduler registering late in local mode); scrapes the read lock.
#[derive(Clone, Default)]
pub struct SharedRegistry(Arc<RwLock<Registry>>);

impl SharedRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers metrics: `reg.register(|r| CellMetrics::register(r))`.
    pub fn register<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.0.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// The registry in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self.0.read().unwrap_or_else(PoisonError::into_inner);
        // Writing into a String fails only if a collector's encode fails.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::warn!(error = %e, "encoding /metrics failed");
        }
        out
    }
}

/// The running endpoint; dropping it stops serving.
pub struct Server {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `listen` and serves `GET /metrics` from `registry` until the returned
/// [`Server`] is dropped. A bind failure is an error naming the flag.
pub async fn serve(listen: SocketAddr, registry: SharedRegistry) -> Result<Server, MetricsError> {
    let listener = TcpListener::bind(listen).await.map_err(|source| MetricsError::Bind { addr: listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| MetricsError::Bind { addr: listen, source })?;
    tracing::info!(addr = %local_addr, "serving Prometheus metrics on /metrics");
    let task = tokio::spawn(serve_simple(listener, move |m: &Method, p: &str| respond(m, p, &registry)));
    Ok(Server { local_addr, task })
}

/// Serves small GET endpoints over HTTP/1 on `listener` until aborted:
/// `respond(method, path)` answers each request (the metrics endpoint here,
/// Garden's `/debug/vars`).
pub async fn serve_simple<F>(listener: TcpListener, respond: F)
where
    F: Fn(&Method, &str) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let r = respond(req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let io = hyper_util::rt::TokioIo::new(conn);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}

/// The response to one request; separate from the connection so it is unit-tested.
fn respond(method: &Method, path: &str, registry: &SharedRegistry) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, msg: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(msg.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
        r
    };
    if path != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "404 not found: metrics are at /metrics\n");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed: use GET /metrics\n");
        r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let body = if method == Method::HEAD { String::new() } else { registry.encode() };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT_TYPE));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn registry_with_counter() -> (SharedRegistry, Counter) {
        let reg = SharedRegistry::new();
        let c = Counter::default();
        reg.register(|r| r.register("celld_test_things", help("Things seen", Some("rep Things")), c.clone()));
        (reg, c)
    }

    async fn body(r: Response<Full<Bytes>>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn get_metrics_is_openmetrics_text() {
        let (reg, c) = registry_with_counter();
        c.inc_by(3);
        let r = respond(&Method::GET, "/metrics", &reg);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[hyper::header::CONTENT_TYPE], CONTENT_TYPE);
        let text = body(r).await;
        assert!(text.contains("# HELP celld_test_things Things seen (Diego/Garden: rep Things).\n"), "{text}");
        assert!(text.contains("celld_test_things_total 3\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused_in_plain_text() {
        let (reg, _) = registry_with_counter();
        let r = respond(&Method::GET, "/", &reg);
        assert_eq!(r.status(), 404);
        assert!(body(r).await.contains("/metrics"));
        let r = respond(&Method::POST, "/metrics", &reg);
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[hyper::header::ALLOW], "GET, HEAD");
        assert!(body(r).await.contains("use GET"));
        let r = respond(&Method::HEAD, "/metrics", &reg);
        assert_eq!(r.status(), 200);
        assert_eq!(body(r).await, "");
    }

    #[test]
    fn listen_flag_reads_addresses_and_off() {
        assert_eq!("off".parse::<MetricsListen>().unwrap(), MetricsListen::Off);
        assert_eq!(
            "127.0.0.1:9101".parse::<MetricsListen>().unwrap(),
            MetricsListen::On(([127, 0, 0, 1], 9101).into())
        );
        assert!(parse_listen("localhost").unwrap_err().starts_with("not an address: use HOST:PORT"));
        let e = "localhost".parse::<MetricsListen>().unwrap_err().to_string();
        assert!(e.starts_with("--metrics-listen \"localhost\": not an address"), "{e}");
    }

    #[tokio::test]
    async fn serves_over_tcp_and_names_the_flag_when_the_port_is_taken() {
        let (reg, c) = registry_with_counter();
        c.inc();
        let server = serve(([127, 0, 0, 1], 0).into(), reg.clone()).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(server.local_addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("celld_test_things_total 1"), "{resp}");

        let e = serve(server.local_addr, reg).await.err().unwrap().to_string();
        assert!(e.starts_with(&format!("--metrics-listen {}: cannot listen there", server.local_addr)), "{e}");
        let addr = server.local_addr;
        drop(server);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "dropped server still listens");
    }
}
