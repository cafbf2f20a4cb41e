//! A Garden client over HTTP/1.1, written by hand because Garden's process
//! routes are not plain HTTP: a `201` that declares chunked encoding and then
//! carries raw newline-delimited JSON. Used by `cellctl` and the tests. Like
//! Garden's Go client it opens a new connection for every request.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::types::*;

/// Where the Garden server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for Address {
    type Err = std::convert::Infallible;
    /// `unix:///p`, `tcp://host:port`, `host:port`, or a socket path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if let Some(p) = s.strip_prefix("unix://") {
            Address::Unix(p.into())
        } else if let Some(a) = s.strip_prefix("tcp://") {
            Address::Tcp(a.into())
        } else if s.contains(':') && !s.starts_with('/') {
            Address::Tcp(s.into())
        } else {
            Address::Unix(s.into())
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("{}", body.message)]
    Garden { status: u16, body: ErrorBody },
}

impl ClientError {
    /// Garden's error type, e.g. `ContainerNotFoundError`.
    pub fn garden_type(&self) -> Option<&str> {
        match self {
            ClientError::Garden { body, .. } => Some(&body.kind),
            _ => None,
        }
    }
}

fn protocol(msg: impl Into<String>) -> ClientError {
    ClientError::Protocol(msg.into())
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// The name a TLS server's certificate must carry for `host:port` (an IP
/// address or a DNS name).
fn server_name(addr: &str) -> std::io::Result<rustls::pki_types::ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}")))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

const MAX_HEAD: usize = 64 * 1024;

struct Head {
    status: u16,
    chunked: bool,
    length: Option<u64>,
}

/// Reads a response head up to and including the blank line; whatever follows
/// stays in the reader's buffer.
async fn read_head<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Head, ClientError> {
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        if r.read_until(b'\n', &mut raw).await? == 0 {
            return Err(protocol("connection closed before the response head"));
        }
        if raw.len() > MAX_HEAD {
            return Err(protocol("response head too large"));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(protocol("incomplete response head")),
        Err(e) => return Err(protocol(format!("bad response head: {e}"))),
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    Ok(Head {
        status: resp.code.unwrap_or(0),
        chunked: header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")),
        length: header("content-length").and_then(|v| v.parse().ok()),
    })
}

/// Reads exactly `n` bytes without trusting `n` for the allocation.
async fn read_n<R: AsyncRead + Unpin>(r: &mut R, n: u64, out: &mut Vec<u8>) -> Result<(), ClientError> {
    let got = r.take(n).read_to_end(out).await? as u64;
    if got < n {
        return Err(protocol(format!("body truncated: got {got} of {n} bytes")));
    }
    Ok(())
}

/// Reads a body by chunked framing, Content-Length, or until EOF.
async fn read_body<R: AsyncRead + Unpin>(r: &mut BufReader<R>, head: &Head) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    if head.chunked {
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size, 16).map_err(|_| protocol(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the final blank line (or EOF).
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            read_n(r, size, &mut body).await?;
            line.clear();
            r.read_line(&mut line).await?; // the CRLF after the chunk
        }
    } else if let Some(n) = head.length {
        read_n(r, n, &mut body).await?;
    } else {
        r.read_to_end(&mut body).await?;
    }
    Ok(body)
}

fn error_from(status: u16, body: &[u8]) -> ClientError {
    let body = serde_json::from_slice::<ErrorBody>(body).unwrap_or_else(|_| ErrorBody {
        message: match String::from_utf8_lossy(body).trim() {
            "" => format!("HTTP status {status}"),
            text => text.to_string(),
        },
        ..Default::default()
    });
    ClientError::Garden { status, body }
}

/// Length of `buf` without a trailing, incomplete UTF-8 sequence.
fn utf8_complete_len(buf: &[u8]) -> usize {
    for back in 1..=buf.len().min(3) {
        let b = buf[buf.len() - back];
        if b & 0xC0 != 0x80 {
            let need = match b {
                0xF0.. => 4,
                0xE0.. => 3,
                0xC0.. => 2,
                _ => 1,
            };
            return if need > back { buf.len() - back } else { buf.len() };
        }
    }
    buf.len()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Kill,
}

/// Where a process's stdio goes. Streams that are `None` are not opened.
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Option<Box<dyn AsyncRead + Unpin + Send>>,
    pub stdout: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    pub stderr: Option<Box<dyn AsyncWrite + Unpin + Send>>,
}

/// A cloneable remote control for a process: signals, resizes, stdin EOF.
#[derive(Debug, Clone)]
pub struct ProcessControl {
    id: String,
    tx: mpsc::UnboundedSender<ProcessPayload>,
}

impl ProcessControl {
    fn send(&self, p: ProcessPayload) -> Result<(), ClientError> {
        self.tx.send(p).map_err(|_| protocol("process stream is closed"))
    }

    fn payload(&self) -> ProcessPayload {
        ProcessPayload { process_id: self.id.clone(), ..Default::default() }
    }

    pub async fn signal(&self, sig: Signal) -> Result<(), ClientError> {
        let s = match sig {
            Signal::Terminate => SIGNAL_TERMINATE,
            Signal::Kill => SIGNAL_KILL,
        };
        self.send(ProcessPayload { signal: Some(s), ..self.payload() })
    }

    pub async fn resize(&self, columns: u16, rows: u16) -> Result<(), ClientError> {
        let tty = TtySpec { window_size: Some(WindowSize { columns, rows }) };
        self.send(ProcessPayload { tty: Some(tty), ..self.payload() })
    }

    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.send(ProcessPayload { source: Some(SOURCE_STDIN), ..self.payload() })
    }
}

/// A running (or attached) process.
pub struct Process {
    ctl: ProcessControl,
    exit: JoinHandle<Result<i32, ClientError>>,
    copies: Vec<JoinHandle<()>>,
}

impl Process {
    pub fn id(&self) -> &str {
        &self.ctl.id
    }

    /// A handle that can signal or resize while another task `wait`s.
    pub fn control(&self) -> ProcessControl {
        self.ctl.clone()
    }

    pub async fn signal(&self, sig: Signal) -> Result<(), ClientError> {
        self.ctl.signal(sig).await
    }

    pub async fn resize(&self, columns: u16, rows: u16) -> Result<(), ClientError> {
        self.ctl.resize(columns, rows).await
    }

    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.ctl.close_stdin().await
    }

    /// Waits for the exit status and for stdout/stderr to be fully copied.
    /// Dropping a `Process` instead detaches from it; its output keeps flowing.
    pub async fn wait(self) -> Result<i32, ClientError> {
        let code = match self.exit.await {
            Ok(code) => code,
            Err(e) => Err(protocol(format!("process reader failed: {e}"))),
        };
        for c in self.copies {
            if code.is_err() {
                c.abort();
            }
            let _ = c.await;
        }
        code
    }
}

/// Copies stdin into data messages, then sends EOF. Splits never cut a UTF-8
/// character; bytes that are not UTF-8 are replaced (Garden's `data` is a string).
async fn copy_stdin(mut stdin: Box<dyn AsyncRead + Unpin + Send>, ctl: ProcessControl) {
    let mut buf = Vec::with_capacity(32 * 1024);
    loop {
        let start = buf.len();
        buf.resize(start + 32 * 1024, 0);
        let n = match stdin.read(&mut buf[start..]).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("reading stdin: {e}");
                0
            }
        };
        buf.truncate(start + n);
        let cut = if n == 0 { buf.len() } else { utf8_complete_len(&buf) };
        if cut > 0 {
            let data = String::from_utf8_lossy(&buf[..cut]).into_owned();
            if ctl.send(ProcessPayload { source: Some(SOURCE_STDIN), data: Some(data), ..ctl.payload() }).is_err() {
                return;
            }
            buf.drain(..cut);
        }
        if n == 0 {
            let _ = ctl.close_stdin().await;
            return;
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    addr: Address,
    /// Mutual TLS to a TCP address (`--garden-tls-*` on the server).
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Client {
    pub fn new(addr: Address) -> Self {
        Self { addr, tls: None }
    }

    /// Talks TLS (presenting the config's client certificate) to a TCP address.
    pub fn with_tls(mut self, tls: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn address(&self) -> &Address {
        &self.addr
    }

    async fn connect(&self) -> Result<Box<dyn Conn>, ClientError> {
        let dial = async {
            Ok::<Box<dyn Conn>, std::io::Error>(match &self.addr {
                Address::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
                Address::Tcp(a) => {
                    let tcp = tokio::net::TcpStream::connect(a.as_str()).await?;
                    match &self.tls {
                        None => Box::new(tcp),
                        Some(tls) => {
                            let name = server_name(a)?;
                            Box::new(tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await?)
                        }
                    }
                }
            })
        };
        let place = match &self.addr {
            Address::Unix(p) => p.display().to_string(),
            Address::Tcp(a) => a.clone(),
        };
        match tokio::time::timeout(Duration::from_secs(2), dial).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(protocol(format!("cannot reach the Garden server at {place}: {e} (is celld running?)"))),
            Err(_) => Err(protocol(format!("timed out connecting to the Garden server at {:?}", self.addr))),
        }
    }

    /// Opens a connection and sends a request with a JSON (or empty) body.
    async fn send(&self, method: &str, path: &str, body: &[u8]) -> Result<BufReader<Box<dyn Conn>>, ClientError> {
        let mut conn = self.connect().await?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        conn.write_all(&bytes).await?;
        conn.flush().await?;
        Ok(BufReader::new(conn))
    }

    /// Reads a whole response; non-2xx becomes `ClientError::Garden`.
    async fn finish(r: &mut BufReader<Box<dyn Conn>>) -> Result<Vec<u8>, ClientError> {
        let head = read_head(r).await?;
        let body = read_body(r, &head).await?;
        if !(200..300).contains(&head.status) {
            return Err(error_from(head.status, &body));
        }
        Ok(body)
    }

    async fn request_raw(&self, method: &str, path: &str, body: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut r = self.send(method, path, body).await?;
        Self::finish(&mut r).await
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| protocol(e.to_string()))?,
            None => Vec::new(),
        };
        let resp = self.request_raw(method, path, &payload).await?;
        serde_json::from_slice(&resp).map_err(|e| protocol(format!("bad response to {method} {path}: {e}")))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request("GET", path, None::<&()>).await
    }

    /// A request whose reply (`{}`) is ignored.
    async fn call(&self, method: &str, path: &str, body: Option<&impl Serialize>) -> Result<(), ClientError> {
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| protocol(e.to_string()))?,
            None => Vec::new(),
        };
        self.request_raw(method, path, &payload).await.map(drop)
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        self.call("GET", "/ping", None::<&()>).await
    }

    pub async fn capacity(&self) -> Result<Capacity, ClientError> {
        self.get("/capacity").await
    }

    pub async fn create(&self, spec: &ContainerSpec) -> Result<String, ClientError> {
        let r: HandleReply = self.request("POST", "/containers", Some(spec)).await?;
        Ok(r.handle)
    }

    pub async fn list(&self, properties: &BTreeMap<String, String>) -> Result<Vec<String>, ClientError> {
        let q: Vec<String> = properties.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
        let path = if q.is_empty() { "/containers".to_string() } else { format!("/containers?{}", q.join("&")) };
        Ok(self.get::<HandlesReply>(&path).await?.handles)
    }

    pub async fn info(&self, handle: &str) -> Result<ContainerInfo, ClientError> {
        self.get(&container(handle, "/info")).await
    }

    pub async fn bulk_info(&self, handles: &[&str]) -> Result<BTreeMap<String, BulkInfoEntry>, ClientError> {
        self.get(&format!("/containers/bulk_info?handles={}", encode_list(handles))).await
    }

    pub async fn bulk_metrics(&self, handles: &[&str]) -> Result<BTreeMap<String, BulkMetricsEntry>, ClientError> {
        self.get(&format!("/containers/bulk_metrics?handles={}", encode_list(handles))).await
    }

    pub async fn destroy(&self, handle: &str) -> Result<(), ClientError> {
        self.call("DELETE", &container(handle, ""), None::<&()>).await
    }

    pub async fn stop(&self, handle: &str, kill: bool) -> Result<(), ClientError> {
        self.call("PUT", &container(handle, "/stop"), Some(&StopRequest { kill })).await
    }

    pub async fn metrics(&self, handle: &str) -> Result<Metrics, ClientError> {
        self.get(&container(handle, "/metrics")).await
    }

    pub async fn properties(&self, handle: &str) -> Result<BTreeMap<String, String>, ClientError> {
        self.get(&container(handle, "/properties")).await
    }

    pub async fn property(&self, handle: &str, key: &str) -> Result<String, ClientError> {
        let v: PropertyValue = self.get(&container(handle, &format!("/properties/{}", encode(key)))).await?;
        Ok(v.value)
    }

    pub async fn set_property(&self, handle: &str, key: &str, value: &str) -> Result<(), ClientError> {
        let path = container(handle, &format!("/properties/{}", encode(key)));
        self.call("PUT", &path, Some(&PropertyValue { value: value.into() })).await
    }

    pub async fn remove_property(&self, handle: &str, key: &str) -> Result<(), ClientError> {
        self.call("DELETE", &container(handle, &format!("/properties/{}", encode(key))), None::<&()>).await
    }

    /// Maps a host port (0: the server picks) to a container port.
    pub async fn net_in(&self, handle: &str, host_port: u32, container_port: u32) -> Result<NetIn, ClientError> {
        self.request("POST", &container(handle, "/net/in"), Some(&NetIn { host_port, container_port })).await
    }

    pub async fn net_out(&self, handle: &str, rule: &NetOutRule) -> Result<(), ClientError> {
        self.call("POST", &container(handle, "/net/out"), Some(rule)).await
    }

    pub async fn bulk_net_out(&self, handle: &str, rules: &[NetOutRule]) -> Result<(), ClientError> {
        self.call("POST", &container(handle, "/net/out/bulk"), Some(&rules)).await
    }

    /// Sets the idle time after which the server destroys the container.
    pub async fn set_grace_time(&self, handle: &str, grace: Duration) -> Result<(), ClientError> {
        let nanos = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        self.call("PUT", &container(handle, "/grace_time"), Some(&nanos)).await
    }

    pub async fn current_memory_limits(&self, handle: &str) -> Result<MemoryLimits, ClientError> {
        self.get(&container(handle, "/limits/memory")).await
    }

    pub async fn current_cpu_limits(&self, handle: &str) -> Result<CpuLimits, ClientError> {
        self.get(&container(handle, "/limits/cpu")).await
    }

    pub async fn current_disk_limits(&self, handle: &str) -> Result<DiskLimits, ClientError> {
        self.get(&container(handle, "/limits/disk")).await
    }

    pub async fn current_bandwidth_limits(&self, handle: &str) -> Result<BandwidthLimits, ClientError> {
        self.get(&container(handle, "/limits/bandwidth")).await
    }

    /// Streams an uncompressed tar into `destination`, extracted as `user`
    /// (empty: the server's default). The body goes chunked, as Go's client
    /// sends a reader of unknown length.
    pub async fn stream_in(
        &self,
        handle: &str,
        user: &str,
        destination: &str,
        mut tar: impl AsyncRead + Unpin + Send,
    ) -> Result<(), ClientError> {
        let mut conn = self.connect().await?;
        let path = container(handle, &format!("/files?user={}&destination={}", encode(user), encode(destination)));
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\
             Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await?;
        let mut buf = vec![0u8; 64 * 1024];
        // A server that answers early (an error) may close while we still send;
        // its reply then explains more than the broken pipe would.
        let mut send_error = None;
        loop {
            let n = tar.read(&mut buf).await?;
            let mut chunk = format!("{n:x}\r\n").into_bytes();
            chunk.extend_from_slice(&buf[..n]);
            chunk.extend_from_slice(b"\r\n"); // after the last, empty chunk: the end of the body
            if let Err(e) = conn.write_all(&chunk).await {
                send_error = Some(e);
                break;
            }
            if n == 0 {
                break;
            }
        }
        let _ = conn.flush().await;
        let mut r = BufReader::new(conn);
        match (Self::finish(&mut r).await, send_error) {
            (Err(ClientError::Io(_) | ClientError::Protocol(_)), Some(e)) => Err(e.into()),
            (result, _) => result.map(drop),
        }
    }

    /// Returns `source` as an uncompressed tar, read as `user`.
    pub async fn stream_out(&self, handle: &str, user: &str, source: &str) -> Result<Vec<u8>, ClientError> {
        let path = container(handle, &format!("/files?user={}&source={}", encode(user), encode(source)));
        self.request_raw("GET", &path, &[]).await
    }

    /// Starts a process; stdio flows between `io` and the process.
    pub async fn run(&self, handle: &str, spec: &ProcessSpec, io: ProcessIo) -> Result<Process, ClientError> {
        let body = serde_json::to_vec(spec).map_err(|e| protocol(e.to_string()))?;
        self.hijack("POST", &container(handle, "/processes"), &body, 201, handle, io).await
    }

    /// Re-attaches to a running (or recently exited) process.
    pub async fn attach(&self, handle: &str, process_id: &str, io: ProcessIo) -> Result<Process, ClientError> {
        let path = container(handle, &format!("/processes/{}", encode(process_id)));
        self.hijack("GET", &path, &[], 200, handle, io).await
    }

    async fn hijack(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        expect: u16,
        handle: &str,
        io: ProcessIo,
    ) -> Result<Process, ClientError> {
        let mut r = self.send(method, path, body).await?;
        let head = read_head(&mut r).await?;
        if head.status != expect {
            // Failures (e.g. ExecutableNotFoundError) come before the hijack
            // as ordinary responses.
            let body = read_body(&mut r, &head).await?;
            return Err(error_from(head.status, &body));
        }
        // From here on the stream is raw newline-delimited JSON, whatever
        // Transfer-Encoding said.
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).await?;
        let started: ProcessStarted = serde_json::from_slice(&line)
            .map_err(|e| protocol(format!("bad process start line {:?}: {e}", String::from_utf8_lossy(&line))))?;
        let id = started.process_id;

        let mut copies = Vec::new();
        for (kind, out) in [("stdout", io.stdout), ("stderr", io.stderr)] {
            let Some(mut out) = out else { continue };
            let p = format!("/processes/{}/attaches/{}/{kind}", encode(&id), encode(&started.stream_id));
            let mut s = self.send("GET", &container(handle, &p), &[]).await?;
            copies.push(tokio::spawn(async move {
                match read_head(&mut s).await {
                    Ok(h) if h.status == 200 => {
                        if let Err(e) = tokio::io::copy_buf(&mut s, &mut out).await {
                            tracing::debug!("copying {kind}: {e}");
                        }
                        let _ = out.flush().await;
                    }
                    Ok(h) => tracing::warn!("{kind} stream refused with status {}", h.status),
                    Err(e) => tracing::warn!("{kind} stream: {e}"),
                }
            }));
        }

        let (tx, mut rx) = mpsc::unbounded_channel::<ProcessPayload>();
        let ctl = ProcessControl { id, tx };
        let (reader, mut writer) = tokio::io::split(r);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let Ok(mut line) = serde_json::to_vec(&msg) else { continue };
                line.push(b'\n');
                if writer.write_all(&line).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
        });
        if let Some(stdin) = io.stdin {
            tokio::spawn(copy_stdin(stdin, ctl.clone()));
        }
        // The inner BufReader still holds bytes read past the first line.
        let exit = tokio::spawn(async move {
            let mut reader = BufReader::new(reader);
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line).await? == 0 {
                    return Err(protocol("process stream ended without an exit status"));
                }
                let Ok(msg) = serde_json::from_slice::<ProcessPayload>(&line) else { continue };
                if let Some(e) = msg.error {
                    return Err(protocol(e));
                }
                if let Some(code) = msg.exit_status {
                    return Ok(code);
                }
            }
        });
        Ok(Process { ctl, exit, copies })
    }
}

/// `/containers/<handle><rest>`, the handle percent-encoded.
fn container(handle: &str, rest: &str) -> String {
    format!("/containers/{}{rest}", encode(handle))
}

fn encode_list(items: &[&str]) -> String {
    items.iter().map(|h| encode(h)).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::{UnixListener, UnixStream};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    fn listen() -> (UnixListener, Client) {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("celld-client-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("garden.sock");
        (UnixListener::bind(&sock).unwrap(), Client::new(Address::Unix(sock)))
    }

    fn cleanup(c: &Client) {
        if let Address::Unix(sock) = c.address() {
            let _ = std::fs::remove_dir_all(sock.parent().unwrap());
        }
    }

    /// Reads one request: the head, then a Content-Length body or the raw
    /// chunked bytes up to the terminating chunk.
    async fn read_request(c: &mut BufReader<UnixStream>) -> (String, Vec<u8>) {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            assert!(c.read_until(b'\n', &mut head).await.unwrap() > 0, "EOF in the request head");
        }
        let head = String::from_utf8(head).unwrap();
        let mut body = Vec::new();
        if head.contains("Transfer-Encoding: chunked\r\n") {
            while !body.ends_with(b"\r\n0\r\n\r\n") && body != b"0\r\n\r\n" {
                assert!(c.read_until(b'\n', &mut body).await.unwrap() > 0, "EOF in a chunked body");
            }
        } else if let Some(n) = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")) {
            body.resize(n.parse().unwrap(), 0);
            c.read_exact(&mut body).await.unwrap();
        }
        (head, body)
    }

    type Seen = Vec<(String, Vec<u8>)>;

    /// Serves one canned reply per connection; returns the requests it saw.
    fn serve(replies: Vec<String>) -> (Client, JoinHandle<Seen>) {
        let (listener, client) = listen();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for reply in replies {
                let mut c = BufReader::new(listener.accept().await.unwrap().0);
                seen.push(read_request(&mut c).await);
                c.get_mut().write_all(reply.as_bytes()).await.unwrap();
            }
            seen
        });
        (client, task)
    }

    fn reply(status: &str, body: &str) -> String {
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    }

    #[test]
    fn addresses_encoding_and_utf8_cuts() {
        assert_eq!("/run/x.sock".parse::<Address>().unwrap(), Address::Unix("/run/x.sock".into()));
        assert_eq!("127.0.0.1:7777".parse::<Address>().unwrap(), Address::Tcp("127.0.0.1:7777".into()));
        assert_eq!("unix:///a".parse::<Address>().unwrap(), Address::Unix("/a".into()));
        assert_eq!("tcp://h:1".parse::<Address>().unwrap(), Address::Tcp("h:1".into()));
        assert_eq!(encode("a b/c&d=é"), "a%20b%2Fc%26d%3D%C3%A9");
        assert_eq!(encode("safe-_.~"), "safe-_.~");
        assert_eq!(utf8_complete_len(b"ab"), 2);
        assert_eq!(utf8_complete_len(b"a\xc3"), 1);
        assert_eq!(utf8_complete_len(b"a\xc3\xa9"), 3);
        assert_eq!(utf8_complete_len(b"a\xf0\x9f\x98"), 1);
        assert_eq!(utf8_complete_len(b"a\xf0\x9f\x98\x80"), 5);
    }

    #[tokio::test]
    async fn sends_garden_requests() {
        let ok = reply("200 OK", "{}\n");
        let replies = vec![ok.clone(), ok.clone(), reply("200 OK", r#"{"Handles":["a","b"]}"#), ok];
        let (client, server) = serve(replies);
        client.set_property("h 1", "a/b", "v").await.unwrap();
        client.set_grace_time("h", Duration::from_secs(300)).await.unwrap();
        let filter = BTreeMap::from([("k&".to_string(), "v w".to_string()), ("x".to_string(), "y".to_string())]);
        assert_eq!(client.list(&filter).await.unwrap(), ["a", "b"]);
        client.stream_in("h", "vcap", "/tmp/x y", &b"TARDATA"[..]).await.unwrap();

        let seen = server.await.unwrap();
        assert_eq!(
            seen[0].0,
            "PUT /containers/h%201/properties/a%2Fb HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\
             Content-Length: 13\r\nContent-Type: application/json\r\n\r\n"
        );
        assert_eq!(seen[0].1, br#"{"value":"v"}"#);
        assert!(seen[1].0.starts_with("PUT /containers/h/grace_time HTTP/1.1\r\n"), "{}", seen[1].0);
        assert_eq!(seen[1].1, b"300000000000");
        assert!(seen[2].0.starts_with("GET /containers?k%26=v%20w&x=y HTTP/1.1\r\nHost: api\r\n"), "{}", seen[2].0);
        assert!(seen[2].1.is_empty());
        let (head, body) = &seen[3];
        assert!(
            head.starts_with("PUT /containers/h/files?user=vcap&destination=%2Ftmp%2Fx%20y HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("Content-Type: application/x-tar\r\n") && head.contains("Host: api\r\n"), "{head}");
        assert_eq!(body, b"7\r\nTARDATA\r\n0\r\n\r\n");
        cleanup(&client);
    }

    #[tokio::test]
    async fn decodes_chunked_bodies_eof_bodies_and_garden_errors() {
        let not_found = r#"{"Type":"ContainerNotFoundError","Message":"unknown handle: x","Handle":"x","ProcessID":"","Binary":""}"#;
        let no_exe = r#"{"Type":"ExecutableNotFoundError","Message":"exec: \"nope\": not found"}"#;
        let replies = vec![
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\n{\"Han\r\n9\r\ndle\":\"h\"}\r\n0\r\nTrailer: 1\r\n\r\n"
                .to_string(),
            reply("404 Not Found", not_found),
            "HTTP/1.1 200 OK\r\n\r\nraw tar bytes".to_string(),
            reply("500 Internal Server Error", no_exe),
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops".to_string(),
        ];
        let (client, server) = serve(replies);
        assert_eq!(client.create(&ContainerSpec::default()).await.unwrap(), "h");
        let e = client.info("x").await.unwrap_err();
        assert_eq!(e.garden_type(), Some("ContainerNotFoundError"));
        assert_eq!(e.to_string(), "unknown handle: x");
        assert!(matches!(e, ClientError::Garden { status: 404, .. }));
        assert_eq!(client.stream_out("h", "", "/etc/").await.unwrap(), b"raw tar bytes");
        let spec = ProcessSpec { path: "nope".into(), ..Default::default() };
        let e = client.run("h", &spec, ProcessIo::default()).await.err().unwrap();
        assert_eq!(e.garden_type(), Some("ExecutableNotFoundError"));
        let e = client.ping().await.unwrap_err();
        assert_eq!((e.to_string().as_str(), e.garden_type()), ("oops", Some("")));
        let seen = server.await.unwrap();
        assert!(seen[2].0.starts_with("GET /containers/h/files?user=&source=%2Fetc%2F HTTP/1.1\r\n"));
        cleanup(&client);
    }

    #[tokio::test]
    async fn run_reads_the_raw_hijacked_stream_and_sends_stdin_as_json_lines() {
        let (listener, client) = listen();
        let server = tokio::spawn(async move {
            let mut c = BufReader::new(listener.accept().await.unwrap().0);
            let (head, body) = read_request(&mut c).await;
            assert!(head.starts_with("POST /containers/h1/processes HTTP/1.1\r\nHost: api\r\n"), "{head}");
            let spec: ProcessSpec = serde_json::from_slice(&body).unwrap();
            assert_eq!((spec.path.as_str(), spec.args.as_slice()), ("cat", &["-n".to_string()][..]));
            c.get_mut()
                .write_all(
                    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
                      {\"process_id\":\"p1\",\"stream_id\":\"1\"}\n",
                )
                .await
                .unwrap();
            let mut out = BufReader::new(listener.accept().await.unwrap().0);
            let (head, _) = read_request(&mut out).await;
            assert!(head.starts_with("GET /containers/h1/processes/p1/attaches/1/stdout HTTP/1.1\r\n"), "{head}");
            out.get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nhello, raw\n")
                .await
                .unwrap();
            drop(out);
            let mut lines = Vec::new();
            while lines.len() < 4 {
                let mut l = String::new();
                assert!(c.read_line(&mut l).await.unwrap() > 0, "EOF after {lines:?}");
                lines.push(l);
            }
            c.get_mut().write_all(b"{\"process_id\":\"p1\",\"exit_status\":42}\n").await.unwrap();
            lines
        });

        let (mut out_r, out_w) = tokio::io::duplex(4096);
        let io = ProcessIo { stdin: Some(Box::new(&b"abc\n"[..])), stdout: Some(Box::new(out_w)), stderr: None };
        let spec = ProcessSpec { path: "cat".into(), args: vec!["-n".into()], ..Default::default() };
        let p = client.run("h1", &spec, io).await.unwrap();
        assert_eq!(p.id(), "p1");
        p.resize(80, 24).await.unwrap();
        p.signal(Signal::Kill).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), 42);
        let mut out = String::new();
        out_r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello, raw\n");

        let lines = server.await.unwrap();
        let data = r#"{"process_id":"p1","source":0,"data":"abc\n"}"#.to_string() + "\n";
        let eof = r#"{"process_id":"p1","source":0}"#.to_string() + "\n";
        let pos = |l: &str| lines.iter().position(|x| x == l);
        assert!(pos(&data).unwrap() < pos(&eof).unwrap(), "{lines:?}");
        assert!(pos("{\"process_id\":\"p1\",\"tty\":{\"window_size\":{\"columns\":80,\"rows\":24}}}\n").is_some());
        assert!(pos("{\"process_id\":\"p1\",\"signal\":1}\n").is_some(), "{lines:?}");
        cleanup(&client);
    }
}
