//! Garden's HTTP server. Ordinary routes are served by hyper. The process routes
//! are not HTTP as hyper knows it: Garden replies `201` with
//! `Transfer-Encoding: chunked` and then hijacks the connection, sending raw
//! newline-delimited JSON. So every connection's request head is read first; the
//! process routes are handled by hand here, everything else goes to hyper.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::UnixStream;

mod files;

use super::conns::ConnTrack;
use super::streams::{ReaderGuard, StreamBuffer};
use crate::gardener::GardenError;
use crate::gardener::Gardener;
use celld_runtime::initproto::{self as proto, client::read_frame};
use garden_api::types::*;

/// Largest JSON request body accepted (Garden has none; a bound keeps a bad
/// client from exhausting memory).
const MAX_JSON_BODY: usize = 4 << 20;
const MAX_HEAD: usize = 64 * 1024;
/// Stream ids stay usable this long after the process exits.
const STREAM_KEEP: Duration = Duration::from_secs(60);

type Body = BoxBody<Bytes, std::io::Error>;

/// The two output streams of one run or attach, named by an unguessable id.
struct OutputStreams {
    handle: String,
    process_id: String,
    stdout: Arc<StreamBuffer>,
    stderr: Arc<StreamBuffer>,
    /// When the process exited; unclaimed streams are dropped a while later.
    exited: Option<Instant>,
}

pub struct Server {
    gardener: Arc<Gardener>,
    streams: Mutex<HashMap<String, OutputStreams>>,
    /// Bytes buffered by every stream (bounded while unread).
    buffered: Arc<AtomicUsize>,
}

fn json_response<T: serde::Serialize>(status: u16, v: &T) -> Response<Body> {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed()))
}

fn error_response(e: &GardenError) -> Response<Body> {
    json_response(e.status(), &e.body())
}

fn empty_ok() -> Response<Body> {
    json_response(200, &serde_json::json!({}))
}

/// Percent-decoding; `+` means a space only in query strings (Go's
/// `QueryEscape`), never in path segments (`PathEscape`).
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

fn segments(path: &str) -> Vec<String> {
    path.trim_start_matches('/').split('/').map(|seg| percent_decode(seg, false)).collect()
}

/// What the hand-made process routes are.
enum Hijack {
    Run(String),
    Attach(String, String),
    /// Handle, process id, stream id, stderr?
    Output(String, String, String, bool),
}

fn hijack_route(method: &str, path: &str) -> Option<Hijack> {
    let s = segments(path);
    let s: Vec<&str> = s.iter().map(String::as_str).collect();
    match (method, s.as_slice()) {
        ("POST", ["containers", h, "processes"]) => Some(Hijack::Run(h.to_string())),
        ("GET", ["containers", h, "processes", pid]) => Some(Hijack::Attach(h.to_string(), pid.to_string())),
        ("GET", ["containers", h, "processes", pid, "attaches", sid, kind @ ("stdout" | "stderr")]) => {
            Some(Hijack::Output(h.to_string(), pid.to_string(), sid.to_string(), *kind == "stderr"))
        }
        _ => None,
    }
}

/// Bytes already read from a connection, replayed before the rest of it.
struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// RFC 7231 date, as Go's server sends it.
fn http_date() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86400) as i64;
    let (h, m, s) = ((secs % 86400) / 3600, (secs % 3600) / 60, secs % 60);
    let (y, mo, d) = celld_base::civil::civil_from_days(days);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days.rem_euclid(7)) as usize];
    let mon = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(mo - 1) as usize];
    format!("{wd}, {d:02} {mon} {y} {h:02}:{m:02}:{s:02} GMT")
}

fn hijack_head(status: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nDate: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        http_date()
    )
}

/// An error reply on a hand-served route. Without `close` the connection stays
/// open for the client's next request: Go's client treats a `Connection: close`
/// on the reply as a broken connection and loses the typed error. `close` is
/// only for requests whose body was not read, where the stream is out of step.
async fn write_plain_error<S: AsyncWrite + Unpin>(conn: &mut S, e: &GardenError, close: bool) {
    let mut body = serde_json::to_vec(&e.body()).unwrap_or_default();
    body.push(b'\n');
    let reason = if e.status() == 404 { "Not Found" } else { "Internal Server Error" };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nDate: {}\r\nContent-Length: {}\r\n{}\r\n",
        e.status(),
        http_date(),
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    let _ = conn.write_all(head.as_bytes()).await;
    let _ = conn.write_all(&body).await;
    if close {
        let _ = conn.shutdown().await;
    } else {
        let _ = conn.flush().await;
    }
}

/// Reads a request head into `buf` (which may hold some already); its
/// length, or `None` when the connection ended or was answered.
async fn read_head<S>(conn: &mut S, buf: &mut Vec<u8>, wait: Duration) -> Option<usize>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head_end = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let read_head = async {
        loop {
            if let Some(n) = head_end(buf) {
                return Some(n);
            }
            if buf.len() > MAX_HEAD {
                write_plain_error(conn, &GardenError::BadRequest("request head too large".into()), true).await;
                return None;
            }
            let mut chunk = [0u8; 4096];
            let n = match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(wait, read_head).await {
        Ok(n) => n,
        Err(_) => {
            tracing::debug!("no request head in time: closing");
            None
        }
    }
}

/// What is left of a hand-served connection after an error reply: the
/// connection and the bytes already read past the request, served on.
type Reuse<S> = Option<(S, Vec<u8>)>;

impl Server {
    pub fn new(gardener: Arc<Gardener>) -> Arc<Self> {
        Arc::new(Self { gardener, streams: Mutex::new(HashMap::new()), buffered: Arc::new(AtomicUsize::new(0)) })
    }

    /// Serves one accepted connection.
    pub async fn serve<S>(self: Arc<Self>, conn: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_tracked(conn, ConnTrack::untracked()).await
    }

    /// Serves one connection of a listener, which `track` tells about it.
    pub async fn serve_tracked<S>(self: Arc<Self>, mut conn: S, track: ConnTrack)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut buf = Vec::with_capacity(1024);
        // The first head must come within the header timeout (a half-sent
        // head must not hold the slot); after an error reply on a process
        // route the connection waits for its next request as keep-alive does.
        let mut wait = track.header_timeout();
        loop {
            let Some(head_len) = read_head(&mut conn, &mut buf, wait).await else { return };
            wait = track.idle_timeout();
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let parsed = req.parse(&buf[..head_len]);
            let route = match (parsed, req.method, req.path) {
                (Ok(_), Some(m), Some(p)) => hijack_route(m, p.split('?').next().unwrap_or(p)),
                _ => None,
            };
            let content_length = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
            if route.is_some() {
                track.hijacked();
            }
            let reuse = match route {
                Some(Hijack::Run(handle)) => {
                    let rest = buf.split_off(head_len);
                    self.run_process(conn, handle, rest, content_length).await
                }
                Some(Hijack::Attach(handle, pid)) => {
                    let rest = buf.split_off(head_len);
                    match self.gardener.attach(&handle, &pid).await {
                        Ok(init) => {
                            self.pump(conn, rest, handle, pid, init, "200 OK", true).await;
                            None
                        }
                        Err(e) => {
                            write_plain_error(&mut conn, &e, false).await;
                            Some((conn, rest))
                        }
                    }
                }
                Some(Hijack::Output(handle, pid, sid, is_err)) => {
                    let rest = buf.split_off(head_len);
                    self.serve_output(conn, &handle, &pid, &sid, is_err).await.map(|c| (c, rest))
                }
                None => {
                    let io = hyper_util::rt::TokioIo::new(Rewind { prefix: Bytes::from(buf), inner: conn });
                    let me = self.clone();
                    let busy_track = track.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let me = me.clone();
                        let busy = busy_track.busy();
                        async move { Ok::<_, Infallible>(ConnTrack::guard_response(me.route(req).await, busy)) }
                    });
                    // hyper's header timer runs from the moment a keep-alive
                    // connection waits for its next request: the idle timeout.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(track.idle_timeout())
                        .serve_connection(io, svc)
                        .await;
                    return;
                }
            };
            let Some((c, rest)) = reuse else { return };
            track.released();
            (conn, buf) = (c, rest);
        }
    }

    async fn run_process<S>(&self, mut conn: S, handle: String, mut rest: Vec<u8>, len: Option<usize>) -> Reuse<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The process spec is the request body; stdin messages may follow it.
        let spec_bytes: Vec<u8> = match len {
            Some(n) if n > MAX_JSON_BODY => {
                write_plain_error(&mut conn, &GardenError::BadRequest("process spec too large".into()), true).await;
                return None;
            }
            Some(n) => {
                while rest.len() < n {
                    let mut chunk = vec![0u8; n - rest.len()];
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return None,
                        Ok(k) => rest.extend_from_slice(&chunk[..k]),
                    }
                }
                let tail = rest.split_off(n);
                std::mem::replace(&mut rest, tail)
            }
            // Without a length the spec is the first line (Go's encoder ends it with \n).
            None => loop {
                if let Some(p) = rest.iter().position(|&b| b == b'\n') {
                    let tail = rest.split_off(p + 1);
                    break std::mem::replace(&mut rest, tail);
                }
                let mut chunk = [0u8; 4096];
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => break std::mem::take(&mut rest),
                    Ok(k) => rest.extend_from_slice(&chunk[..k]),
                }
                if rest.len() > MAX_JSON_BODY {
                    write_plain_error(&mut conn, &GardenError::BadRequest("process spec too large".into()), true).await;
                    return None;
                }
            },
        };
        let spec: ProcessSpec = match serde_json::from_slice(&spec_bytes) {
            Ok(s) => s,
            Err(e) => {
                write_plain_error(&mut conn, &GardenError::BadRequest(format!("invalid process spec: {e}")), false)
                    .await;
                return Some((conn, rest));
            }
        };
        match self.gardener.run(&handle, &spec).await {
            Ok((pid, init)) => {
                self.pump(conn, rest, handle, pid, init, "201 Created", false).await;
                None
            }
            Err(e) => {
                write_plain_error(&mut conn, &e, false).await;
                Some((conn, rest))
            }
        }
    }

    /// The hijacked connection: forwards client messages to init and init's
    /// output to the stdout/stderr streams, ending with the exit status. An
    /// attach (`seeded`) starts its streams with what earlier runs or attaches
    /// of the process buffered unread, so a late reader gets the newest output.
    #[allow(clippy::too_many_arguments)]
    async fn pump<S>(
        &self,
        conn: S,
        rest: Vec<u8>,
        handle: String,
        pid: String,
        init: UnixStream,
        status: &str,
        seeded: bool,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(guard) = self.gardener.hold(&handle) else { return };
        // Unguessable: a stream id is all it takes to read a process's output.
        let sid = celld_runtime::init::random_guid();
        let out = StreamBuffer::new(self.buffered.clone());
        let err = StreamBuffer::new(self.buffered.clone());
        {
            let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            streams.retain(|_, s| {
                (s.stdout.awaited() || s.stderr.awaited()) && s.exited.is_none_or(|t| t.elapsed() < STREAM_KEEP)
            });
            if seeded {
                let earlier = streams.values().filter(|s| s.handle == handle && s.process_id == pid);
                if let Some(e) = earlier.last() {
                    for (from, to) in [(&e.stdout, &out), (&e.stderr, &err)] {
                        if from.awaited() {
                            to.seed(from.snapshot());
                        }
                    }
                }
            }
            streams.insert(
                sid.clone(),
                OutputStreams {
                    handle: handle.clone(),
                    process_id: pid.clone(),
                    stdout: out.clone(),
                    stderr: err.clone(),
                    exited: None,
                },
            );
        }
        let (client_r, mut client_w) = tokio::io::split(conn);
        let (mut init_r, mut init_w) = init.into_split();
        let started = serde_json::to_string(&ProcessStarted { process_id: pid.clone(), stream_id: sid.clone() })
            .unwrap_or_default();
        let head = format!("{}{started}\n", hijack_head(status));
        if client_w.write_all(head.as_bytes()).await.is_err() {
            self.streams.lock().unwrap_or_else(|p| p.into_inner()).remove(&sid);
            return;
        }
        // Client → init. The client's EOF (a half-close: it has no stdin to
        // send) ends the process's stdin only; init's connection stays open
        // for the output and the exit status.
        let to_init = tokio::spawn(async move {
            let mut lines = BufReader::new(Rewind { prefix: Bytes::from(rest), inner: client_r }).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(msg) = serde_json::from_str::<ProcessPayload>(&line) else {
                    let _ = proto::client::write_frame(&mut init_w, proto::TAG_STDIN_EOF, &[]).await;
                    continue;
                };
                let frame = if let Some(sig) = msg.signal {
                    // Garden sends KILL for anything but TERM.
                    let s = if sig == SIGNAL_TERMINATE { libc::SIGTERM } else { libc::SIGKILL };
                    (proto::TAG_SIGNAL, vec![s as u8])
                } else if let Some(tty) = msg.tty {
                    match tty.window_size {
                        Some(w) => (proto::TAG_RESIZE, proto::resize_payload(w.columns, w.rows).to_vec()),
                        None => continue,
                    }
                } else if msg.source == Some(SOURCE_STDIN) {
                    match msg.data {
                        Some(d) => (proto::TAG_STDIN, d.into_bytes()),
                        None => (proto::TAG_STDIN_EOF, Vec::new()),
                    }
                } else {
                    (proto::TAG_STDIN_EOF, Vec::new())
                };
                if proto::client::write_frame(&mut init_w, frame.0, &frame.1).await.is_err() {
                    return;
                }
            }
            let _ = proto::client::write_frame(&mut init_w, proto::TAG_STDIN_EOF, &[]).await;
            // Dropping the write half would shut the socket down, which init takes
            // as the daemon hanging up; it is aborted with the pump instead.
            std::future::pending::<()>().await;
            drop(init_w);
        });
        // init → streams and the exit status.
        let last = loop {
            match read_frame(&mut init_r).await {
                Ok(Some((proto::TAG_STDOUT, d))) => out.push(Bytes::from(d)).await,
                Ok(Some((proto::TAG_STDERR, d))) => err.push(Bytes::from(d)).await,
                Ok(Some((proto::TAG_EXIT, p))) => {
                    break ProcessPayload {
                        process_id: pid.clone(),
                        exit_status: proto::parse_exit(&p),
                        ..Default::default()
                    };
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    break ProcessPayload {
                        process_id: pid.clone(),
                        error: Some("connection to the container's init was lost".into()),
                        ..Default::default()
                    };
                }
            }
        };
        out.close();
        err.close();
        to_init.abort();
        let dropped = out.dropped() + err.dropped();
        if dropped > 0 {
            tracing::warn!(handle = %handle, process = %pid, dropped_bytes = dropped, "process output dropped: nobody read it in time");
        }
        if let Some(s) = self.streams.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&sid) {
            s.exited = Some(Instant::now());
        }
        let mut line = serde_json::to_vec(&last).unwrap_or_default();
        line.push(b'\n');
        let _ = client_w.write_all(&line).await;
        let _ = client_w.shutdown().await;
        drop(guard);
    }

    /// Serves one output stream; gives the connection back after an error reply.
    async fn serve_output<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut conn: S,
        handle: &str,
        pid: &str,
        sid: &str,
        is_err: bool,
    ) -> Option<S> {
        // A stream is served only under the container and process it belongs to.
        let buf = {
            let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            streams
                .get(sid)
                .filter(|s| s.handle == handle && s.process_id == pid)
                .map(|s| if is_err { s.stderr.clone() } else { s.stdout.clone() })
        };
        let Some(dropped) = buf.as_ref().and_then(|b| b.claim()) else {
            let e = GardenError::ProcessNotFound(handle.to_string(), pid.to_string());
            write_plain_error(&mut conn, &e, false).await;
            return Some(conn);
        };
        let buf = buf?;
        let _reader = ReaderGuard(buf.clone());
        if dropped > 0 {
            tracing::info!(handle = %handle, process = %pid, dropped_bytes = dropped, "output was dropped before the stream was read");
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nDate: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
            http_date()
        );
        if conn.write_all(head.as_bytes()).await.is_err() {
            return None;
        }
        while let Some(chunk) = buf.pop().await {
            if conn.write_all(&chunk).await.is_err() {
                return None;
            }
        }
        let _ = conn.shutdown().await;
        None
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        match self.route_inner(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "request failed");
                error_response(&e)
            }
        }
    }

    async fn route_inner(&self, req: Request<Incoming>) -> Result<Response<Body>, GardenError> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = parse_query(req.uri().query());
        let segs = segments(&path);
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        let g = &self.gardener;
        match (&method, s.as_slice()) {
            (&Method::GET, ["ping"]) => Ok(empty_ok()),
            (&Method::GET, ["capacity"]) => Ok(json_response(200, &g.capacity())),
            (&Method::POST, ["images", "gc"]) => Ok(json_response(200, &g.collect_images().await)),
            (&Method::GET, ["containers"]) => Ok(json_response(200, &HandlesReply { handles: g.list(&query) })),
            (&Method::POST, ["containers"]) => {
                let spec: ContainerSpec = read_json(req).await?;
                let handle = detached(g, move |g| async move { g.create(spec).await }).await?;
                Ok(json_response(200, &HandleReply { handle }))
            }
            (&Method::GET, ["containers", "bulk_info"]) => {
                let mut out = BTreeMap::new();
                for h in handles_param(&query) {
                    let entry = match g.info(&h).await {
                        Ok(info) => BulkInfoEntry { info: Some(info), err: None },
                        Err(e) => BulkInfoEntry { info: None, err: Some(e.body()) },
                    };
                    out.insert(h, entry);
                }
                Ok(json_response(200, &out))
            }
            (&Method::GET, ["containers", "bulk_metrics"]) => {
                let mut out = BTreeMap::new();
                for h in handles_param(&query) {
                    let entry = match g.metrics(&h) {
                        Ok(m) => BulkMetricsEntry { metrics: Some(m), err: None },
                        Err(e) => BulkMetricsEntry { metrics: None, err: Some(e.body()) },
                    };
                    out.insert(h, entry);
                }
                Ok(json_response(200, &out))
            }
            (&Method::DELETE, ["containers", h]) => {
                let h = h.to_string();
                detached(g, move |g| async move { g.destroy(&h).await }).await?;
                Ok(empty_ok())
            }
            (&Method::GET, ["containers", h, "info"]) => Ok(json_response(200, &g.info(h).await?)),
            (&Method::GET, ["containers", h, "metrics"]) => Ok(json_response(200, &g.metrics(h)?)),
            (&Method::PUT, ["containers", h, "stop"]) => {
                let h = h.to_string();
                let stop: StopRequest = read_json(req).await?;
                detached(g, move |g| async move { g.stop(&h, stop.kill).await }).await?;
                Ok(empty_ok())
            }
            (&Method::PUT, ["containers", h, "grace_time"]) => {
                let h = h.to_string();
                let ns: u64 = read_json(req).await?;
                g.set_grace_time(&h, ns)?;
                Ok(empty_ok())
            }
            (&Method::GET, ["containers", h, "properties"]) => Ok(json_response(200, &g.properties(h)?)),
            (&Method::GET, ["containers", h, "properties", k]) => {
                Ok(json_response(200, &PropertyValue { value: g.property(h, k)? }))
            }
            (&Method::PUT, ["containers", h, "properties", k]) => {
                let (h, k) = (h.to_string(), k.to_string());
                let v: PropertyValue = read_json(req).await?;
                g.set_property(&h, &k, &v.value)?;
                Ok(empty_ok())
            }
            (&Method::DELETE, ["containers", h, "properties", k]) => {
                g.remove_property(h, k)?;
                Ok(empty_ok())
            }
            (&Method::GET, ["containers", h, "limits", kind]) => {
                let l = g.limits(h)?;
                Ok(match *kind {
                    "memory" => json_response(200, &l.memory_limits),
                    // Garden reads the shares back from the cgroup's settings:
                    // the weight, if one was given, became the shares.
                    "cpu" => {
                        let c = &l.cpu_limits;
                        let shares = if c.weight > 0 { c.weight } else { c.limit_in_shares };
                        json_response(200, &CpuLimits { weight: 0, limit_in_shares: shares })
                    }
                    // Bandwidth limits are accepted and not applied, in Garden too.
                    "bandwidth" => json_response(200, &BandwidthLimits::default()),
                    // As set at create (enforcing them is not this layer's).
                    "disk" => json_response(200, &l.disk_limits),
                    other => return Err(GardenError::BadRequest(format!("unknown limit kind: {other}"))),
                })
            }
            (&Method::PUT, ["containers", h, "files"]) => {
                let h = h.to_string();
                self.stream_in(&h, &query, req).await?;
                Ok(empty_ok())
            }
            (&Method::GET, ["containers", h, "files"]) => self.stream_out(h, &query).await,
            (&Method::POST, ["containers", h, "net", "in"]) => {
                let h = h.to_string();
                let n: NetIn = read_json(req).await?;
                let m = detached(g, move |g| async move { g.net_in(&h, n.host_port, n.container_port).await }).await?;
                Ok(json_response(200, &NetIn { host_port: m.host_port, container_port: m.container_port }))
            }
            (&Method::POST, ["containers", h, "net", "out"]) => {
                let h = h.to_string();
                let rule: NetOutRule = read_json(req).await?;
                detached(g, move |g| async move { g.net_out(&h, &[rule]).await }).await?;
                Ok(empty_ok())
            }
            (&Method::POST, ["containers", h, "net", "out", "bulk"]) => {
                let h = h.to_string();
                let rules: Vec<NetOutRule> = read_json(req).await?;
                detached(g, move |g| async move { g.net_out(&h, &rules).await }).await?;
                Ok(empty_ok())
            }
            _ => Err(GardenError::BadRequest(format!("no route for {method} {path}"))),
        }
    }
}

/// Runs a state-changing operation to completion even if the client hangs up:
/// hyper drops a request's future when its connection closes, and a create or
/// destroy cut off half-way would leave a container behind.
async fn detached<T, F, Fut>(g: &Arc<Gardener>, f: F) -> Result<T, GardenError>
where
    T: Send + 'static,
    F: FnOnce(Arc<Gardener>) -> Fut,
    Fut: std::future::Future<Output = Result<T, GardenError>> + Send + 'static,
{
    tokio::spawn(f(g.clone())).await.unwrap_or_else(|e| Err(GardenError::BadRequest(format!("operation failed: {e}"))))
}

fn handles_param(q: &BTreeMap<String, String>) -> Vec<String> {
    q.get("handles").map(|h| h.split(',').filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default()
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, GardenError> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_JSON_BODY);
    let bytes =
        limited.collect().await.map_err(|e| GardenError::BadRequest(format!("reading request body: {e}")))?.to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| GardenError::BadRequest(format!("invalid request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_process_endpoints_to_hijack() {
        assert!(matches!(hijack_route("POST", "/containers/h/processes"), Some(Hijack::Run(h)) if h == "h"));
        assert!(
            matches!(hijack_route("GET", "/containers/h/processes/p1"), Some(Hijack::Attach(h, p)) if h == "h" && p == "p1")
        );
        assert!(matches!(
            hijack_route("GET", "/containers/h/processes/p1/attaches/7/stderr"),
            Some(Hijack::Output(h, p, s, true)) if h == "h" && p == "p1" && s == "7"
        ));
        assert!(hijack_route("GET", "/containers/h/info").is_none());
        assert!(hijack_route("POST", "/containers").is_none());
    }

    #[test]
    fn query_and_percent_decoding() {
        let q = parse_query(Some("a=b%20c&k%2F=v&empty="));
        assert_eq!(q.get("a").map(String::as_str), Some("b c"));
        assert_eq!(q.get("k/").map(String::as_str), Some("v"));
        assert_eq!(q.get("empty").map(String::as_str), Some(""));
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz", false), "%zz");
        assert_eq!(segments("/containers/a+b%20c/info"), vec!["containers", "a+b c", "info"]);
        assert_eq!(parse_query(Some("k=a+b")).get("k").map(String::as_str), Some("a b"));
    }

    #[test]
    fn date_is_rfc7231() {
        let d = http_date();
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
    }
}
