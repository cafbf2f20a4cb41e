//! One request through the router: lookup, backend choice and retries, header
//! rewriting, streaming bodies, upgrades, the backend connection pool.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use super::{AccessLog, Backend, LiveBackends, Router, RouterError, rtr};

/// Idle backend connections older than this are not reused: apps close idle
/// keep-alive connections on their own schedule (Node after 5 s, gunicorn after 2 s),
/// and reusing one just as it closes would fail a request.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(1);
/// As many as a busy client mix keeps in flight to one backend: a cap below
/// that closes and dials connections all the time under load (16 did, at 64
/// client connections).
const MAX_IDLE_PER_BACKEND: usize = 64;
/// gorouter's default `backends.max_attempts`.
const MAX_ATTEMPTS: usize = 3;
/// A client connection with no request started and none in flight for a
/// whole period is closed: between one and two periods after it went idle
/// (hyper's header-read timeout, which this replaces, was 30 s).
const CLIENT_IDLE: Duration = Duration::from_secs(30);
/// gorouter's default `endpoint_dial_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_VCAP_REQUEST_ID: HeaderName = HeaderName::from_static("x-vcap-request-id");
const X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");
const X_CF_APPLICATION_ID: HeaderName = HeaderName::from_static("x-cf-applicationid");
const X_CF_INSTANCE_INDEX: HeaderName = HeaderName::from_static("x-cf-instanceindex");
const X_CF_INSTANCE_ID: HeaderName = HeaderName::from_static("x-cf-instanceid");
const X_CF_APP_INSTANCE: HeaderName = HeaderName::from_static("x-cf-app-instance");
const X_CF_ROUTER_ERROR: HeaderName = HeaderName::from_static("x-cf-routererror");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

type Sender = SendRequest<ReqBody>;

/// Per-request facts that outlive the lookup.
struct Ctx {
    peer: SocketAddr,
    raw_host: String,
    /// X-Vcap-Request-Id, made once: the request's header and the response's share its bytes.
    request_id: HeaderValue,
    /// The connection's X-Forwarded-For when the client sent none.
    forwarded_for: HeaderValue,
    stop: watch::Receiver<()>,
    received_at: SystemTime,
    started: Instant,
    /// The backend connections of the thread serving this client.
    pool: Arc<Pool>,
}

impl Router {
    pub(super) async fn serve_conn(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        mut stop: watch::Receiver<()>,
        pool: Arc<Pool>,
    ) {
        let _ = stream.set_nodelay(true);
        let router = Arc::clone(&self);
        let req_stop = stop.clone();
        let activity = Arc::new(Activity::default());
        let conn_activity = Arc::clone(&activity);
        // The same for every request of the connection: made once.
        let forwarded_for = forwarded_for(peer.ip());
        let svc = hyper::service::service_fn(move |req| {
            let router = Arc::clone(&router);
            let stop = req_stop.clone();
            let pool = Arc::clone(&pool);
            let active = Active::start(&conn_activity);
            let forwarded_for = forwarded_for.clone();
            async move { Ok::<_, Infallible>(router.handle(req, peer, forwarded_for, stop, pool, active).await) }
        });
        // No hyper timer: with one, hyper arms (allocates, registers, drops)
        // a header-read timeout for every request of a keep-alive connection.
        // The idle check below is one timer per connection instead.
        // writev(false): a small response goes out as one flat buffer (head
        // and body copied together) in one write(2), not a writev of slices.
        let conn = hyper::server::conn::http1::Builder::new()
            .writev(false)
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        let mut idle = tokio::time::interval_at(tokio::time::Instant::now() + CLIENT_IDLE, CLIENT_IDLE);
        let mut seen = 0;
        tokio::pin!(conn);
        loop {
            tokio::select! {
                biased;
                r = &mut conn => {
                    if let Err(e) = r { tracing::debug!(client = %peer, error = %e, "client connection ended") }
                    break;
                }
                _ = stop.changed() => break,
                _ = idle.tick() => {
                    // Nothing started since the last tick and nothing in
                    // flight: idle (or a head that never completed) for a
                    // whole period.
                    let started = activity.started.load(Ordering::Relaxed);
                    if started == seen && activity.in_flight.load(Ordering::Relaxed) == 0 {
                        tracing::debug!(client = %peer, "closing an idle client connection");
                        break;
                    }
                    seen = started;
                }
            }
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        forwarded_for: HeaderValue,
        stop: watch::Receiver<()>,
        pool: Arc<Pool>,
        active: Active,
    ) -> Response<RouterBody> {
        // An absolute-form target's authority overrides Host (RFC 9112 §3.2.2).
        let raw_host = match req.uri().authority() {
            Some(a) => a.as_str().to_owned(),
            None => req
                .headers()
                .get(header::HOST)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
        };
        let host = super::normalize_host(&raw_host);
        // The id's bytes become the header value as they are (no copy).
        let request_id = HeaderValue::from_maybe_shared(Bytes::from(super::request_id::new()))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        let started = Instant::now();
        let ctx =
            Ctx { peer, raw_host, request_id, forwarded_for, stop, received_at: SystemTime::now(), started, pool };
        // No span per request: an enabled info span costs its creation,
        // field formatting and an enter/exit per poll even when nothing is
        // logged. The few events that are logged make one (`route_span`).
        let mut resp = self.route(req, &host, ctx).await;
        self.config.metrics.record(resp.status().as_u16(), started.elapsed());
        resp.body_mut().active = Some(active);
        resp
    }

    async fn route(&self, mut req: Request<Incoming>, host: &str, mut ctx: Ctx) -> Response<RouterBody> {
        if host.is_empty() {
            return error_response(
                StatusCode::BAD_REQUEST,
                "empty_host",
                "Request had empty Host header",
                Some("public,max-age=2"),
            );
        }
        let system = self.table.lookup_system(host);
        let is_system = system.is_some();
        let route = match system.or_else(|| self.table.lookup(host)) {
            Some(r) if !r.backends.is_empty() => r,
            found => {
                let why = if found.is_some() {
                    "has no routable instances (the app is stopped, crashed or not ready)."
                } else {
                    "does not exist."
                };
                let msg = format!("Requested route ('{}') {why}", ctx.raw_host);
                return error_response(StatusCode::NOT_FOUND, "unknown_route", &msg, Some("no-cache, no-store"));
            }
        };

        let upgrade = upgrade_protocol(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let headers = backend_headers(parts.headers, &parts.uri, upgrade.as_ref(), &ctx);
        let uri = parts.uri.path_and_query().cloned().map_or_else(|| Uri::from_static("/"), Uri::from);
        // A system component is no app: no app's log gets its requests.
        let log = self.config.access_log.clone().filter(|_| !is_system).map(|sink| LogCtx {
            sink,
            entry: rtr::Entry {
                host: std::mem::take(&mut ctx.raw_host),
                received_at: ctx.received_at,
                method: parts.method.to_string(),
                uri: uri.to_string(),
                proto: proto(parts.version),
                referer: text(&headers, &header::REFERER),
                user_agent: text(&headers, &header::USER_AGENT),
                client: ctx.peer,
                x_forwarded_for: text(&headers, &X_FORWARDED_FOR),
                x_forwarded_proto: text(&headers, &X_FORWARDED_PROTO),
                vcap_request_id: String::from_utf8_lossy(ctx.request_id.as_bytes()).into_owned(),
            },
            started: ctx.started,
        });

        let received = Arc::new(AtomicU64::new(0));
        // A bodyless idempotent request can be sent again after a reused
        // connection closed under it; anything else might have reached the app.
        let replayable = body.is_end_stream() && is_idempotent(&parts.method);
        let inner = (!body.is_end_stream()).then_some(body);
        let mut body = Some(ReqBody { inner, received: Arc::clone(&received) });

        let n = route.backends.len();
        let start = route.next.fetch_add(1, Ordering::Relaxed);
        let app_started = Instant::now();
        let mut last = (&route.backends[start % n], String::new());
        // gorouter's attempts are per request, not per instance: a single
        // instance is tried again too.
        for i in 0..MAX_ATTEMPTS {
            let backend = &route.backends[start.wrapping_add(i) % n];
            // A system route's address is the platform's own listener, not
            // an instance whose address could be handed on.
            let live = self.config.live.as_deref().filter(|_| !is_system);
            let instance = &route.instance_headers[start.wrapping_add(i) % n];
            let out = Outgoing {
                method: &parts.method,
                uri: &uri,
                headers: &headers,
                backend,
                instance,
                received: &received,
                live,
            };
            let b = body.take().unwrap_or_else(|| ReqBody::empty(&received));
            let failure = match Self::exchange(&ctx.pool, &out, b, upgrade.is_some(), replayable).await {
                Ok((resp, sender)) => {
                    let done = Done { log, backend: Arc::clone(backend), app_time: app_started.elapsed(), received };
                    return self.respond(resp, sender, done, client_upgrade, host, ctx);
                }
                Err(failure) => failure,
            };
            let _span = route_span(host, &ctx.request_id).entered();
            match failure {
                Failure::NotLive(b) => {
                    tracing::warn!(backend = %backend.addr, instance_guid = %backend.instance_guid, "not dialling a backend that is not a live instance of this cell");
                    body = Some(*b);
                    last = (backend, "backend is not a live instance of this cell".into());
                }
                Failure::Retry(b, e) => {
                    tracing::warn!(backend = %backend.addr, error = %e, "backend failed before it answered; trying again");
                    body = Some(*b);
                    last = (backend, e.to_string());
                }
                Failure::Fatal(e) => {
                    tracing::warn!(backend = %backend.addr, error = %e, "backend failed");
                    last = (backend, e.to_string());
                    break;
                }
            }
        }

        let router_error = format!("endpoint_failure ({})", last.1);
        let resp = error_response(
            StatusCode::BAD_GATEWAY,
            &router_error,
            "Registered endpoint failed to handle the request.",
            None,
        );
        if let Some(log) = log {
            let done = Done { log: Some(log), backend: Arc::clone(last.0), app_time: Duration::ZERO, received };
            done.write(502, resp.body().size_hint().exact().unwrap_or(0), &router_error);
        }
        resp
    }

    /// One attempt against one backend: a pooled connection first, then a fresh one.
    async fn exchange(
        pool: &Pool,
        out: &Outgoing<'_>,
        mut body: ReqBody,
        upgrade: bool,
        replayable: bool,
    ) -> Result<(Response<Incoming>, Option<Sender>), Failure> {
        let addr = out.backend.addr;
        let http = |source| RouterError::Http { addr, source };
        // Upgrades get a connection of their own: it becomes the spliced stream.
        if !upgrade {
            if let Some(mut sender) = pool.take(addr) {
                match sender.try_send_request(out.request(body)).await {
                    Ok(resp) => return Ok((resp, Some(sender))),
                    // The app closed the idle connection as it was reused
                    // (a backend that closes each one): a fresh one, same attempt.
                    Err(mut e) => match e.take_message() {
                        Some(req) => body = req.into_body(),
                        None if replayable && died_unanswered(e.error()) => body = ReqBody::empty(out.received),
                        None => return Err(Failure::Fatal(http(e.into_error()))),
                    },
                }
            }
        }
        // Checked where a connection is dialled: a pooled one reaches the
        // process that was live when it was dialled (at most POOL_IDLE ago),
        // or fails and comes here. Per request, it cost a lock and a stat in /sys.
        if out.live.is_some_and(|l| !l.is_live(out.backend)) {
            return Err(Failure::NotLive(Box::new(body)));
        }
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(Failure::Retry(Box::new(body), RouterError::Connect { addr, source })),
            Err(_) => return Err(Failure::Retry(Box::new(body), RouterError::ConnectTimeout(addr))),
        };
        let _ = stream.set_nodelay(true);
        let handshake = hyper::client::conn::http1::Builder::new().writev(false).handshake(TokioIo::new(stream));
        let (mut sender, conn) = match handshake.await {
            Ok(pair) => pair,
            Err(e) => return Err(Failure::Retry(Box::new(body), http(e))),
        };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "backend connection ended");
            }
        });
        match sender.try_send_request(out.request(body)).await {
            Ok(resp) => Ok((resp, (!upgrade).then_some(sender))),
            Err(mut e) => match e.take_message() {
                // Refused before a byte of the request was written: the app never saw it.
                Some(req) => Err(Failure::Retry(Box::new(req.into_body()), http(e.into_error()))),
                // Closed or reset before any answer: safe to send again only
                // when nothing but a bodyless idempotent head reached the app.
                None if replayable && died_unanswered(e.error()) => {
                    Err(Failure::Retry(Box::new(ReqBody::empty(out.received)), http(e.into_error())))
                }
                None => Err(Failure::Fatal(http(e.into_error()))),
            },
        }
    }

    fn respond(
        &self,
        mut resp: Response<Incoming>,
        sender: Option<Sender>,
        done: Done,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        host: &str,
        ctx: Ctx,
    ) -> Response<RouterBody> {
        let status = resp.status();
        if tracing::enabled!(tracing::Level::DEBUG) {
            let _span = route_span(host, &ctx.request_id).entered();
            tracing::debug!(backend = %done.backend.addr, status = status.as_u16(), "proxied");
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let backend_upgrade = hyper::upgrade::on(&mut resp);
                let span = route_span(host, &ctx.request_id);
                tokio::spawn(splice(client_upgrade, backend_upgrade, done, ctx.stop).instrument(span));
                return resp.map(|_| RouterBody::full(Bytes::new()));
            }
        }
        strip_hop_by_hop(resp.headers_mut());
        // The client's connection is ours: an HTTP/1.0 app's answer must not
        // make hyper answer as 1.0 and close it (hyper still answers a 1.0 client as 1.0).
        *resp.version_mut() = Version::HTTP_11;
        // gorouter echoes the request id unless the app set its own.
        if !resp.headers().contains_key(&X_VCAP_REQUEST_ID) {
            resp.headers_mut().insert(X_VCAP_REQUEST_ID, ctx.request_id);
        }
        let finish = Finish { pool: ctx.pool, sender, done, status: status.as_u16() };
        resp.map(|inner| RouterBody { inner: Some(inner), full: None, sent: 0, finish: Some(finish), active: None })
    }
}

async fn splice(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    done: Done,
    mut stop: watch::Receiver<()>,
) {
    let (mut up, mut down) = (0, 0);
    match tokio::join!(client, backend) {
        (Ok(c), Ok(b)) => {
            let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut c, &mut b) => match r {
                    Ok((u, d)) => (up, down) = (u, d),
                    Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
                },
                _ = stop.changed() => {}
            }
        }
        (c, b) => tracing::debug!(client = ?c.err(), backend = ?b.err(), "upgrade failed"),
    }
    done.received.fetch_add(up, Ordering::Relaxed);
    done.write(101, down, "");
}

/// The request head for one backend; built again for a retry.
struct Outgoing<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    backend: &'a Backend,
    instance: &'a InstanceHeaders,
    received: &'a Arc<AtomicU64>,
    /// `None`: dialled without asking (system routes, tests).
    live: Option<&'a dyn LiveBackends>,
}

/// gorouter tells the app which instance it reached: X-Cf-ApplicationID,
/// X-Cf-InstanceIndex, X-Cf-InstanceID (each only when known and valid).
pub(crate) struct InstanceHeaders([(HeaderName, Option<HeaderValue>); 3]);

impl InstanceHeaders {
    pub(crate) fn of(b: &Backend) -> Self {
        let value = |v: &str| (!v.is_empty()).then(|| HeaderValue::from_str(v).ok()).flatten();
        Self([
            (X_CF_APPLICATION_ID, value(&b.app_guid)),
            (X_CF_INSTANCE_INDEX, value(&b.index.to_string())),
            (X_CF_INSTANCE_ID, value(&b.instance_guid)),
        ])
    }
}

impl Outgoing<'_> {
    fn request(&self, body: ReqBody) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        *h = self.headers.clone();
        for (name, value) in &self.instance.0 {
            if let Some(v) = value {
                h.insert(name, v.clone());
            }
        }
        req
    }
}

enum Failure {
    /// Not dialled: the table is behind and the address is no live instance.
    NotLive(Box<ReqBody>),
    /// The app did not act on the request (never got it, or got only a
    /// replayable head and no answer came); its body comes back for the next try.
    Retry(Box<ReqBody>, RouterError),
    Fatal(RouterError),
}

/// The request headers as the app gets them (minus the per-instance ones).
fn backend_headers(mut h: HeaderMap, uri: &Uri, upgrade: Option<&HeaderValue>, ctx: &Ctx) -> HeaderMap {
    strip_hop_by_hop(&mut h);
    // Our server side already answered any `Expect: 100-continue`.
    h.remove(header::EXPECT);
    for name in [X_CF_APPLICATION_ID, X_CF_INSTANCE_INDEX, X_CF_INSTANCE_ID, X_CF_APP_INSTANCE] {
        h.remove(name);
    }
    if let Some(proto) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, proto.clone());
    }
    if let Some(v) = uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        h.insert(header::HOST, v);
    }
    append_forwarded_for(&mut h, ctx.peer.ip(), &ctx.forwarded_for);
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    // gorouter always sets a fresh id (it never trusts the client's); X-Request-Id passes untouched.
    h.insert(X_VCAP_REQUEST_ID, ctx.request_id.clone());
    if !h.contains_key(&X_REQUEST_START) {
        let ms = ctx.received_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        h.insert(X_REQUEST_START, HeaderValue::from(ms as u64));
    }
    h
}

/// X-Forwarded-For for a client that sent none: its address.
fn forwarded_for(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(ip.to_canonical().to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `alone` is `forwarded_for(ip)`, used as it is when the client sent none.
fn append_forwarded_for(h: &mut HeaderMap, ip: IpAddr, alone: &HeaderValue) {
    if !h.contains_key(&X_FORWARDED_FOR) {
        h.insert(X_FORWARDED_FOR, alone.clone());
        return;
    }
    let ip = ip.to_canonical().to_string();
    let mut v = h.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes).collect::<Vec<_>>().join(&b", "[..]);
    if !v.is_empty() {
        v.extend_from_slice(b", ");
    }
    v.extend_from_slice(ip.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&v).or_else(|_| HeaderValue::from_str(&ip)) {
        h.insert(X_FORWARDED_FOR, v);
    }
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| n != header::HOST)
        .collect();
    for name in named {
        h.remove(name);
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(name);
    }
}

/// The Upgrade value when the client asks for one (`Connection: upgrade`).
fn upgrade_protocol(h: &HeaderMap) -> Option<HeaderValue> {
    let wants = h
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))));
    if wants { h.get(header::UPGRADE).cloned() } else { None }
}

/// Whether a backend connection ended (closed, or reset) before the app's
/// response head arrived.
fn died_unanswered(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

fn proto(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

fn text(h: &HeaderMap, name: &HeaderName) -> String {
    h.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default()
}

/// gorouter's plain-text error: `<code> <reason>: <message>`.
fn error_response(
    status: StatusCode,
    router_error: &str,
    message: &str,
    cache: Option<&'static str>,
) -> Response<RouterBody> {
    let body = format!("{} {}: {message}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let mut resp = Response::new(RouterBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let err = HeaderValue::from_str(router_error).unwrap_or(HeaderValue::from_static("endpoint_failure"));
    h.insert(X_CF_ROUTER_ERROR, err);
    if let Some(c) = cache {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(c));
    }
    resp
}

struct LogCtx {
    sink: Arc<dyn AccessLog>,
    entry: rtr::Entry,
    started: Instant,
}

/// A request that reached (or was last tried on) a backend, to be logged when it ends.
struct Done {
    log: Option<LogCtx>,
    backend: Arc<Backend>,
    app_time: Duration,
    received: Arc<AtomicU64>,
}

impl Done {
    fn write(self, status: u16, bytes_sent: u64, router_error: &str) {
        let Some(log) = self.log else { return };
        let b = &self.backend;
        let line = log.entry.line(&rtr::Outcome {
            status,
            bytes_received: self.received.load(Ordering::Relaxed),
            bytes_sent,
            backend: Some(b.addr),
            response_time: log.started.elapsed(),
            app_time: self.app_time,
            app_id: &b.app_guid,
            app_index: b.index,
            instance_id: &b.instance_guid,
            router_error,
        });
        log.sink.record(&b.app_guid, b.index, line);
    }
}

struct Finish {
    pool: Arc<Pool>,
    sender: Option<Sender>,
    done: Done,
    status: u16,
}

/// The request body on its way to the app, counted for the access log.
pub(crate) struct ReqBody {
    inner: Option<Incoming>,
    received: Arc<AtomicU64>,
}

impl ReqBody {
    fn empty(received: &Arc<AtomicU64>) -> Self {
        Self { inner: None, received: Arc::clone(received) }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        if let Some(d) = frame.as_ref().and_then(|f| f.as_ref().ok()).and_then(Frame::data_ref) {
            this.received.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// What the client receives: the app's streamed body, or a router-made one.
/// When the app's body ends (or the client goes away) the request is logged and
/// a cleanly finished backend connection goes back to the pool.
pub(crate) struct RouterBody {
    inner: Option<Incoming>,
    full: Option<Bytes>,
    sent: u64,
    finish: Option<Finish>,
    /// Marks the client connection busy until the response is over.
    active: Option<Active>,
}

impl RouterBody {
    fn full(b: Bytes) -> Self {
        Self { inner: None, full: (!b.is_empty()).then_some(b), sent: 0, finish: None, active: None }
    }

    fn complete(&mut self) {
        let Some(mut f) = self.finish.take() else { return };
        let clean = self.inner.as_ref().is_some_and(Body::is_end_stream);
        if let (true, Some(sender)) = (clean, f.sender.take()) {
            f.pool.put_when_ready(f.done.backend.addr, sender);
        }
        f.done.write(f.status, self.sent, "");
    }
}

impl Body for RouterBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(this.full.take().map(|b| Ok(Frame::data(b))));
        };
        let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                this.sent += f.data_ref().map_or(0, |d| d.len() as u64);
                // hyper stops polling once a sized body is complete: finish here.
                if inner.is_end_stream() {
                    this.complete();
                }
            }
            _ => this.complete(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(b) => b.is_end_stream(),
            None => self.full.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(self.full.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Drop for RouterBody {
    fn drop(&mut self) {
        self.complete();
    }
}

/// A client connection's requests, for its idle check.
#[derive(Default)]
struct Activity {
    started: AtomicU64,
    in_flight: AtomicU64,
}

/// One request in flight on a client connection, until its response body is dropped.
pub(crate) struct Active(Arc<Activity>);

impl Active {
    fn start(a: &Arc<Activity>) -> Self {
        a.started.fetch_add(1, Ordering::Relaxed);
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(a))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The span the router's events about one request are logged in; made only
/// for those events.
fn route_span(host: &str, request_id: &HeaderValue) -> tracing::Span {
    let id = String::from_utf8_lossy(request_id.as_bytes());
    tracing::info_span!("route", host = %host, request_id = %id)
}

/// Idle keep-alive connections per backend address, most recent last.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<(Instant, Sender)>>>,
}

impl Pool {
    fn take(&self, addr: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&addr)?;
        while let Some((since, sender)) = list.pop() {
            if since.elapsed() < POOL_IDLE && sender.is_ready() && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Pools the connection once hyper has finished the exchange on it (the
    /// request body may still be going out after the response ended).
    fn put_when_ready(self: &Arc<Self>, addr: SocketAddr, mut sender: Sender) {
        // Usually the exchange is already over: no task needed.
        if sender.is_ready() {
            self.put(addr, sender);
            return;
        }
        // Called from Drop: never panic without a runtime.
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let pool = Arc::clone(self);
        rt.spawn(async move {
            if sender.ready().await.is_ok() {
                pool.put(addr, sender);
            }
        });
    }

    fn put(&self, addr: SocketAddr, sender: Sender) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push((Instant::now(), sender));
        }
    }

    /// Drops expired and closed connections, and backends that are gone.
    pub(crate) fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|_, list| {
            list.retain(|(since, s)| since.elapsed() < POOL_IDLE && !s.is_closed());
            !list.is_empty()
        });
    }
}
