//! The local-mode HTTP router against real backends on loopback.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use celld::router::{AccessLog, Backend, RouteTable, Router, RouterConfig};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- helpers

type BackendBody = Either<Full<Bytes>, Incoming>;

/// A backend app: `/echo` streams the request body back, `/ws` upgrades (says
/// "hello\n", then echoes upper-cased), anything else answers its name and the
/// request headers it got, one `name: value` a line.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let svc = hyper::service::service_fn(move |req| async move { Ok::<_, Infallible>(app(name, req)) });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades(),
            );
        }
    });
    addr
}

fn app(name: &str, mut req: Request<Incoming>) -> Response<BackendBody> {
    match req.uri().path() {
        "/echo" => Response::new(Either::Right(req.into_body())),
        "/ws" => {
            let up = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(up.await.unwrap());
                io.write_all(b"hello\n").await.unwrap();
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = io.read(&mut buf).await {
                    io.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .body(Either::Left(Full::default()))
                .unwrap()
        }
        _ => {
            let mut text = format!("{name}\n");
            for (k, v) in req.headers() {
                text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            Response::new(Either::Left(Full::new(Bytes::from(text))))
        }
    }
}

/// An address nothing listens on.
async fn dead() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

fn be(addr: SocketAddr, index: u32) -> Backend {
    Backend { addr, app_guid: "app-guid".into(), instance_guid: format!("inst-{index}"), index }
}

#[derive(Default)]
struct Lines(Mutex<Vec<(String, u32, String)>>);

impl AccessLog for Lines {
    fn record(&self, app_guid: &str, index: u32, line: String) {
        self.0.lock().unwrap().push((app_guid.to_string(), index, line));
    }
}

struct Harness {
    addr: SocketAddr,
    table: Arc<RouteTable>,
    log: Arc<Lines>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn router(routes: &[(&str, Vec<Backend>)]) -> Harness {
    let table = Arc::new(RouteTable::new());
    table.replace(routes.iter().map(|(h, b)| (h.to_string(), b.clone())).collect());
    let log = Arc::new(Lines::default());
    let r = Router::new(Arc::clone(&table), RouterConfig { access_log: Some(log.clone()), ..Default::default() });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(r.serve(listener, async move {
        let _ = rx.await;
    }));
    Harness { addr, table, log, _stop: tx }
}

/// A keep-alive client connection to the router.
struct Client(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Client {
    async fn new(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Client(sender)
    }

    async fn get(&mut self, host: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::builder().uri("/path?q=1").header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.0.ready().await.unwrap();
        let resp = self.0.send_request(req.body(Full::default()).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
    }
}

async fn get(addr: SocketAddr, host: &str) -> (StatusCode, HeaderMap, String) {
    Client::new(addr).await.get(host, &[]).await
}

/// The header a backend reported in its answer.
fn seen<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn round_robin_across_two_backends() {
    let (a, b) = (backend("a").await, backend("b").await);
    let h = router(&[("hello.apps.localhost", vec![be(a, 0), be(b, 1)])]).await;
    let mut c = Client::new(h.addr).await;
    let mut names = Vec::new();
    for _ in 0..6 {
        let (status, _, body) = c.get("hello.apps.localhost", &[]).await;
        assert_eq!(status, StatusCode::OK);
        names.push(body.lines().next().unwrap_or("").to_string());
    }
    for pair in names.windows(2) {
        assert_ne!(pair[0], pair[1], "not alternating: {names:?}");
    }
}

#[tokio::test]
async fn unknown_host_and_empty_route_are_404() {
    let h = router(&[("stopped.apps.localhost", vec![])]).await;
    let (status, headers, body) = get(h.addr, "nope.apps.localhost").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["x-cf-routererror"], "unknown_route");
    assert_eq!(body, "404 Not Found: Requested route ('nope.apps.localhost') does not exist.\n");

    let (status, headers, body) = get(h.addr, "stopped.apps.localhost").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["x-cf-routererror"], "unknown_route");
    assert!(
        body.starts_with("404 Not Found: Requested route ('stopped.apps.localhost') has no routable instances"),
        "{body}"
    );
}

#[tokio::test]
async fn dead_backend_is_skipped_and_all_dead_is_502() {
    let live = backend("live").await;
    let h = router(&[
        ("half.apps.localhost", vec![be(dead().await, 0), be(live, 1)]),
        ("gone.apps.localhost", vec![be(dead().await, 0), be(dead().await, 1)]),
    ])
    .await;
    let mut c = Client::new(h.addr).await;
    for _ in 0..4 {
        let (status, _, body) = c.get("half.apps.localhost", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("live\n"));
    }
    let (status, headers, body) = c.get("gone.apps.localhost", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(headers["x-cf-routererror"].to_str().unwrap().starts_with("endpoint_failure"));
    assert_eq!(body, "502 Bad Gateway: Registered endpoint failed to handle the request.\n");
}

#[tokio::test]
async fn request_headers_reach_the_app() {
    let a = backend("a").await;
    let h = router(&[("hello.apps.localhost", vec![be(a, 3)])]).await;
    let mut c = Client::new(h.addr).await;
    let (status, headers, body) = c
        .get(
            "hello.apps.localhost",
            &[
                ("x-forwarded-for", "10.1.2.3"),
                ("x-request-id", "client-id"),
                ("x-vcap-request-id", "client-chosen"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen(&body, "x-forwarded-for"), Some("10.1.2.3, 127.0.0.1"));
    assert_eq!(seen(&body, "x-forwarded-proto"), Some("http"));
    assert_eq!(seen(&body, "x-request-id"), Some("client-id"));
    let rid = seen(&body, "x-vcap-request-id").unwrap();
    assert_eq!(rid.len(), 36);
    assert_ne!(rid, "client-chosen");
    assert_eq!(headers["x-vcap-request-id"], rid);
    assert_eq!(seen(&body, "x-cf-applicationid"), Some("app-guid"));
    assert_eq!(seen(&body, "x-cf-instanceindex"), Some("3"));
    assert_eq!(seen(&body, "x-cf-instanceid"), Some("inst-3"));
    assert!(seen(&body, "x-request-start").is_some());
    assert_eq!(seen(&body, "x-hop"), None);
    assert_eq!(seen(&body, "host"), Some("hello.apps.localhost"));
}

#[tokio::test]
async fn host_with_port_case_and_absolute_form() {
    let a = backend("a").await;
    let h = router(&[("hello.apps.localhost", vec![be(a, 0)])]).await;
    let (status, _, _) = get(h.addr, "HELLO.Apps.LocalHost.:8080").await;
    assert_eq!(status, StatusCode::OK);

    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET http://hello.apps.localhost:80/x HTTP/1.1\r\nHost: elsewhere\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("host: hello.apps.localhost:80\n"), "{out}");
}

/// A generated body of `left` bytes (byte i is i % 251), in 64 KiB chunks, no length.
struct Gen {
    left: usize,
    pos: usize,
}

impl Body for Gen {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(64 * 1024);
        let chunk: Vec<u8> = (self.pos..self.pos + n).map(|i| (i % 251) as u8).collect();
        self.left -= n;
        self.pos += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}

#[tokio::test]
async fn streams_20_mb_both_ways() {
    const SIZE: usize = 20 * 1024 * 1024;
    let a = backend("a").await;
    let h = router(&[("big.apps.localhost", vec![be(a, 0)])]).await;
    let stream = TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("/echo").header("host", "big.apps.localhost").body(Gen { left: SIZE, pos: 0 }).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut pos = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            assert!(data.iter().enumerate().all(|(i, b)| *b == ((pos + i) % 251) as u8), "corrupt at {pos}");
            pos += data.len();
        }
    }
    assert_eq!(pos, SIZE);
    let line = wait_for_line(&h.log, "/echo").await;
    assert!(line.contains(&format!("\"POST /echo HTTP/1.1\" 200 {SIZE} {SIZE} ")), "{line}");
}

#[tokio::test]
async fn websocket_upgrade_round_trip() {
    let a = backend("a").await;
    let h = router(&[("ws.apps.localhost", vec![be(a, 0)])]).await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws.apps.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the 101");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    let mut rest = buf[head_end..].to_vec();
    while rest.len() < 6 {
        let mut chunk = [0u8; 64];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        rest.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(rest, b"hello\n");
    s.write_all(b"ping\n").await.unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"PING\n");
}

#[tokio::test]
async fn table_replace_takes_effect() {
    let (a, b) = (backend("a").await, backend("b").await);
    let h = router(&[("hello.apps.localhost", vec![be(a, 0)])]).await;
    assert!(get(h.addr, "hello.apps.localhost").await.2.starts_with("a\n"));
    h.table.replace(HashMap::from([("hello.apps.localhost".to_string(), vec![be(b, 0)])]));
    assert!(get(h.addr, "hello.apps.localhost").await.2.starts_with("b\n"));
    h.table.replace(HashMap::new());
    assert!(h.table.hosts().is_empty());
    assert_eq!(get(h.addr, "hello.apps.localhost").await.0, StatusCode::NOT_FOUND);
}

async fn wait_for_line(log: &Lines, needle: &str) -> String {
    for _ in 0..200 {
        if let Some((_, _, l)) = log.0.lock().unwrap().iter().find(|(_, _, l)| l.contains(needle)) {
            return l.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no access log line containing {needle}");
}

#[tokio::test]
async fn access_log_lines() {
    let a = backend("a").await;
    let h =
        router(&[("hello.apps.localhost", vec![be(a, 2)]), ("gone.apps.localhost", vec![be(dead().await, 5)])]).await;
    let mut c = Client::new(h.addr).await;
    let (_, headers, _) = c.get("hello.apps.localhost", &[("user-agent", "test-agent")]).await;
    let rid = headers["x-vcap-request-id"].to_str().unwrap().to_string();
    let line = wait_for_line(&h.log, "hello.apps.localhost").await;
    assert!(line.starts_with("hello.apps.localhost - ["), "{line}");
    assert!(line.contains("\"GET /path?q=1 HTTP/1.1\" 200 0 "), "{line}");
    assert!(line.contains("\"test-agent\" \"127.0.0.1:"), "{line}");
    assert!(line.contains(&format!("\"{a}\" x_forwarded_for:\"127.0.0.1\" x_forwarded_proto:\"http\"")), "{line}");
    assert!(line.contains(&format!("vcap_request_id:\"{rid}\" response_time:")), "{line}");
    assert!(
        line.contains("app_id:\"app-guid\" app_index:\"2\" instance_id:\"inst-2\" x_cf_routererror:\"-\""),
        "{line}"
    );
    let (app, index) = {
        let lines = h.log.0.lock().unwrap();
        let (app, index, _) = lines.iter().find(|(_, _, l)| l.contains("hello.apps")).unwrap();
        (app.clone(), *index)
    };
    assert_eq!((app.as_str(), index), ("app-guid", 2));

    c.get("gone.apps.localhost", &[]).await;
    let line = wait_for_line(&h.log, "gone.apps.localhost").await;
    assert!(line.contains("\" 502 0 "), "{line}");
    assert!(line.contains("app_index:\"5\"") && line.contains("x_cf_routererror:\"endpoint_failure ("), "{line}");

    // Unknown routes belong to no app: nothing is recorded.
    c.get("nope.apps.localhost", &[]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!h.log.0.lock().unwrap().iter().any(|(_, _, l)| l.contains("nope.apps")));
}

/// A raw backend: each connection gets its request head read, then `answer`
/// (given the connection's number, from 0) decides what happens to it.
async fn raw_backend(answer: fn(usize) -> RawAnswer) -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0usize));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let n = {
                let mut c = count.lock().unwrap();
                *c += 1;
                *c - 1
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                match answer(n) {
                    RawAnswer::Reply(text) => {
                        let _ = s.write_all(text.as_bytes()).await;
                        let _ = s.shutdown().await;
                    }
                    // SO_LINGER 0: closing sends RST, not FIN.
                    RawAnswer::Reset => {
                        let _ = s.set_zero_linger();
                    }
                }
            });
        }
    });
    (addr, accepted)
}

enum RawAnswer {
    Reply(&'static str),
    Reset,
}

#[tokio::test]
async fn backends_that_close_every_connection_always_answer() {
    // An HTTP/1.0 server, and an `nc`-style one that claims HTTP/1.1 (so the
    // connection looks reusable) but closes after each answer.
    let (http10, _) = raw_backend(|_| RawAnswer::Reply("HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhttp10")).await;
    let (nc, _) = raw_backend(|_| RawAnswer::Reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nnc")).await;
    let (eof, _) = raw_backend(|_| RawAnswer::Reply("HTTP/1.0 200 OK\r\n\r\nto-eof")).await;
    let h = router(&[
        ("http10.apps.localhost", vec![be(http10, 0)]),
        ("nc.apps.localhost", vec![be(nc, 0)]),
        ("eof.apps.localhost", vec![be(eof, 0)]),
    ])
    .await;
    let mut c = Client::new(h.addr).await;
    for i in 0..60 {
        for (host, want) in
            [("http10.apps.localhost", "http10"), ("nc.apps.localhost", "nc"), ("eof.apps.localhost", "to-eof")]
        {
            let (status, headers, body) = c.get(host, &[]).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, want), "request {i} to {host}: {headers:?}");
        }
        // Now and then give the backend's close time to arrive while the connection is idle.
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_reset_before_any_answer_is_retried_on_a_single_instance() {
    let (flaky, accepted) = raw_backend(|n| {
        if n == 0 { RawAnswer::Reset } else { RawAnswer::Reply("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsaved") }
    })
    .await;
    let h = router(&[("flaky.apps.localhost", vec![be(flaky, 0)])]).await;
    let (status, _, body) = get(h.addr, "flaky.apps.localhost").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "saved"));
    assert_eq!(*accepted.lock().unwrap(), 2, "one reset, one answer");

    // A request whose body reached the app is not sent twice.
    let (always, accepted) = raw_backend(|_| RawAnswer::Reset).await;
    h.table.replace(HashMap::from([("reset.apps.localhost".to_string(), vec![be(always, 0)])]));
    let stream = TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("/").header("host", "reset.apps.localhost").body(Full::new(Bytes::from("x"))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(*accepted.lock().unwrap(), 1);

    // Always reset: three attempts in all, then the 502.
    let (status, headers, _) = get(h.addr, "reset.apps.localhost").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(headers["x-cf-routererror"].to_str().unwrap().starts_with("endpoint_failure"));
    assert_eq!(*accepted.lock().unwrap(), 1 + 3);
}

/// A backend that keeps its connections alive for one answer, then resets
/// each when its second request arrives: the router's reused connection dies.
async fn resets_reused_connections() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                for served in 0.. {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => head.extend_from_slice(&buf[..k]),
                        }
                    }
                    if served > 0 {
                        let _ = s.set_zero_linger();
                        return;
                    }
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh").await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_reused_connection_reset_by_the_app_is_replaced() {
    let h = router(&[("reuse.apps.localhost", vec![be(resets_reused_connections().await, 0)])]).await;
    let mut c = Client::new(h.addr).await;
    for i in 0..20 {
        let (status, _, body) = c.get("reuse.apps.localhost", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "fresh"), "request {i}");
    }
}

#[tokio::test]
async fn a_single_dead_instance_gives_502_after_the_retries() {
    let h = router(&[("dead.apps.localhost", vec![be(dead().await, 0)])]).await;
    let (status, headers, body) = get(h.addr, "dead.apps.localhost").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(headers["x-cf-routererror"].to_str().unwrap().starts_with("endpoint_failure (connect"), "{headers:?}");
    assert_eq!(body, "502 Bad Gateway: Registered endpoint failed to handle the request.\n");
    let lines = wait_for_line(&h.log, "dead.apps.localhost").await;
    assert!(lines.contains("\" 502 "), "{lines}");
}

#[tokio::test]
async fn a_system_route_reaches_its_component_ahead_of_apps_and_logs_nothing() {
    let (app, system) = (backend("app").await, backend("system").await);
    let h = router(&[("celld.apps.localhost", vec![be(app, 0)])]).await;
    h.table.set_system_route("celld.apps.localhost", system);
    let (status, _, body) = get(h.addr, "celld.apps.localhost:8080").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("system\n"), "{body}");
    // The app layer's wholesale replace keeps it; no app header, no RTR line.
    h.table.replace(HashMap::new());
    let (status, _, body) = get(h.addr, "celld.apps.localhost").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("system\n") && seen(&body, "x-cf-applicationid").is_none(), "{body}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.log.0.lock().unwrap().is_empty(), "a system route wrote an access log line");
    h.table.remove_system_route("celld.apps.localhost");
    assert_eq!(get(h.addr, "celld.apps.localhost").await.0, StatusCode::NOT_FOUND);
}
