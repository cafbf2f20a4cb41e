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

use super::types::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for Address {
    type Err = std::convert::Infallible;
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
    #[error("{0}")]
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

/// Percent-encodes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Head {
    status: u16,
    chunked: bool,
    length: Option<usize>,
}

async fn read_head<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Head, ClientError> {
    let mut raw = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut raw).await?;
        if n == 0 {
            return Err(protocol("connection closed before the response head"));
        }
        if raw.ends_with(b"\r\n\r\n") {
            break;
        }
        if raw.len() > 64 * 1024 {
            return Err(protocol("response head too large"));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&raw).map_err(|e| protocol(format!("bad response: {e}")))?;
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    Ok(Head {
        status: resp.code.unwrap_or(0),
        chunked: header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")),
        length: header("content-length").and_then(|v| v.parse().ok()),
    })
}

async fn read_body<R: AsyncRead + Unpin>(r: &mut BufReader<R>, head: &Head) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    if head.chunked {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| protocol(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                let mut trailer = String::new();
                while r.read_line(&mut trailer).await? > 2 {
                    trailer.clear();
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).await?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await?;
        }
    } else if let Some(n) = head.length {
        body.resize(n, 0);
        r.read_exact(&mut body).await?;
    } else {
        r.read_to_end(&mut body).await?;
    }
    Ok(body)
}

fn error_from(status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ClientError::Garden { status, body: b },
        Err(_) => ClientError::Garden {
            status,
            body: ErrorBody { message: String::from_utf8_lossy(body).trim().to_string(), ..Default::default() },
        },
    }
}

pub enum Signal {
    Terminate,
    Kill,
}

/// Where a process's stdio goes. `None` streams are not opened.
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Option<Box<dyn AsyncRead + Unpin + Send>>,
    pub stdout: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    pub stderr: Option<Box<dyn AsyncWrite + Unpin + Send>>,
}

/// A running (or attached) process.
pub struct Process {
    id: String,
    tx: mpsc::UnboundedSender<ProcessPayload>,
    exit: tokio::task::JoinHandle<Result<i32, ClientError>>,
    copies: Vec<tokio::task::JoinHandle<()>>,
}

impl Process {
    pub fn id(&self) -> &str {
        &self.id
    }

    fn send(&self, p: ProcessPayload) -> Result<(), ClientError> {
        self.tx.send(p).map_err(|_| protocol("process stream is closed"))
    }

    pub async fn signal(&self, sig: Signal) -> Result<(), ClientError> {
        let s = match sig {
            Signal::Terminate => SIGNAL_TERMINATE,
            Signal::Kill => SIGNAL_KILL,
        };
        self.send(ProcessPayload { process_id: self.id.clone(), signal: Some(s), ..Default::default() })
    }

    pub async fn resize(&self, columns: u16, rows: u16) -> Result<(), ClientError> {
        let tty = TtySpec { window_size: Some(WindowSize { columns, rows }) };
        self.send(ProcessPayload { process_id: self.id.clone(), tty: Some(tty), ..Default::default() })
    }

    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.send(ProcessPayload { process_id: self.id.clone(), source: Some(SOURCE_STDIN), ..Default::default() })
    }

    /// Waits for the exit status and for stdout/stderr to be fully copied.
    pub async fn wait(self) -> Result<i32, ClientError> {
        let code = self.exit.await.map_err(|e| protocol(e.to_string()))?;
        for c in self.copies {
            let _ = c.await;
        }
        code
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    addr: Address,
}

impl Client {
    pub fn new(addr: Address) -> Self {
        Self { addr }
    }

    async fn connect(&self) -> Result<Box<dyn Conn>, ClientError> {
        let dial = async {
            Ok::<Box<dyn Conn>, std::io::Error>(match &self.addr {
                Address::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
                Address::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await?),
            })
        };
        tokio::time::timeout(Duration::from_secs(2), dial)
            .await
            .map_err(|_| protocol("timed out connecting to the Garden server"))?
            .map_err(ClientError::Io)
    }

    async fn send_head(conn: &mut Box<dyn Conn>, method: &str, path: &str, body: &[u8]) -> Result<(), ClientError> {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        conn.write_all(&bytes).await?;
        Ok(())
    }

    async fn request_raw(&self, method: &str, path: &str, body: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut conn = self.connect().await?;
        Self::send_head(&mut conn, method, path, body).await?;
        let mut r = BufReader::new(conn);
        let head = read_head(&mut r).await?;
        let body = read_body(&mut r, &head).await?;
        if !(200..300).contains(&head.status) {
            return Err(error_from(head.status, &body));
        }
        Ok(body)
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

    pub async fn ping(&self) -> Result<(), ClientError> {
        self.get::<serde_json::Value>("/ping").await.map(|_| ())
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
        self.get(&format!("/containers/{}/info", encode(handle))).await
    }

    pub async fn bulk_info(&self, handles: &[&str]) -> Result<BTreeMap<String, BulkInfoEntry>, ClientError> {
        let hs: Vec<String> = handles.iter().map(|h| encode(h)).collect();
        self.get(&format!("/containers/bulk_info?handles={}", hs.join(","))).await
    }

    pub async fn bulk_metrics(&self, handles: &[&str]) -> Result<BTreeMap<String, BulkMetricsEntry>, ClientError> {
        let hs: Vec<String> = handles.iter().map(|h| encode(h)).collect();
        self.get(&format!("/containers/bulk_metrics?handles={}", hs.join(","))).await
    }

    pub async fn destroy(&self, handle: &str) -> Result<(), ClientError> {
        self.request_raw("DELETE", &format!("/containers/{}", encode(handle)), &[]).await.map(|_| ())
    }

    pub async fn stop(&self, handle: &str, kill: bool) -> Result<(), ClientError> {
        let path = format!("/containers/{}/stop", encode(handle));
        self.request::<serde_json::Value>("PUT", &path, Some(&StopRequest { kill })).await.map(|_| ())
    }

    pub async fn metrics(&self, handle: &str) -> Result<Metrics, ClientError> {
        self.get(&format!("/containers/{}/metrics", encode(handle))).await
    }

    pub async fn properties(&self, handle: &str) -> Result<BTreeMap<String, String>, ClientError> {
        self.get(&format!("/containers/{}/properties", encode(handle))).await
    }

    pub async fn property(&self, handle: &str, key: &str) -> Result<String, ClientError> {
        let v: PropertyValue = self.get(&format!("/containers/{}/properties/{}", encode(handle), encode(key))).await?;
        Ok(v.value)
    }

    pub async fn set_property(&self, handle: &str, key: &str, value: &str) -> Result<(), ClientError> {
        let path = format!("/containers/{}/properties/{}", encode(handle), encode(key));
        let body = PropertyValue { value: value.into() };
        self.request::<serde_json::Value>("PUT", &path, Some(&body)).await.map(|_| ())
    }

    pub async fn remove_property(&self, handle: &str, key: &str) -> Result<(), ClientError> {
        let path = format!("/containers/{}/properties/{}", encode(handle), encode(key));
        self.request_raw("DELETE", &path, &[]).await.map(|_| ())
    }

    pub async fn set_grace_time(&self, handle: &str, grace: Duration) -> Result<(), ClientError> {
        let path = format!("/containers/{}/grace_time", encode(handle));
        self.request::<serde_json::Value>("PUT", &path, Some(&(grace.as_nanos() as u64))).await.map(|_| ())
    }

    pub async fn current_memory_limits(&self, handle: &str) -> Result<MemoryLimits, ClientError> {
        self.get(&format!("/containers/{}/limits/memory", encode(handle))).await
    }

    pub async fn current_cpu_limits(&self, handle: &str) -> Result<CpuLimits, ClientError> {
        self.get(&format!("/containers/{}/limits/cpu", encode(handle))).await
    }

    pub async fn current_disk_limits(&self, handle: &str) -> Result<DiskLimits, ClientError> {
        self.get(&format!("/containers/{}/limits/disk", encode(handle))).await
    }

    pub async fn current_bandwidth_limits(&self, handle: &str) -> Result<BandwidthLimits, ClientError> {
        self.get(&format!("/containers/{}/limits/bandwidth", encode(handle))).await
    }

    /// Streams a tar into `destination`, extracted as `user`. The body is sent
    /// chunked, as Go's client does for a reader of unknown length.
    pub async fn stream_in(
        &self,
        handle: &str,
        user: &str,
        destination: &str,
        mut tar: impl AsyncRead + Unpin + Send,
    ) -> Result<(), ClientError> {
        let mut conn = self.connect().await?;
        let head = format!(
            "PUT /containers/{}/files?user={}&destination={} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\
             Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n",
            encode(handle),
            encode(user),
            encode(destination)
        );
        conn.write_all(head.as_bytes()).await?;
        let mut buf = vec![0u8; 64 * 1024];
        // A server that answers early (an error) may close while we still send.
        let mut send_failed = false;
        loop {
            let n = tar.read(&mut buf).await?;
            let mut chunk = format!("{n:x}\r\n").into_bytes();
            chunk.extend_from_slice(&buf[..n]);
            chunk.extend_from_slice(b"\r\n");
            if conn.write_all(&chunk).await.is_err() {
                send_failed = true;
                break;
            }
            if n == 0 {
                break;
            }
        }
        let mut r = BufReader::new(conn);
        let head = match read_head(&mut r).await {
            Ok(h) => h,
            Err(e) if send_failed => return Err(protocol(format!("stream in: server closed the connection: {e}"))),
            Err(e) => return Err(e),
        };
        let body = read_body(&mut r, &head).await?;
        if !(200..300).contains(&head.status) {
            return Err(error_from(head.status, &body));
        }
        Ok(())
    }

    /// Returns `source` as an uncompressed tar.
    pub async fn stream_out(&self, handle: &str, user: &str, source: &str) -> Result<Vec<u8>, ClientError> {
        let path = format!("/containers/{}/files?user={}&source={}", encode(handle), encode(user), encode(source));
        self.request_raw("GET", &path, &[]).await
    }

    pub async fn run(&self, handle: &str, spec: &ProcessSpec, io: ProcessIo) -> Result<Process, ClientError> {
        let body = serde_json::to_vec(spec).map_err(|e| protocol(e.to_string()))?;
        self.hijack("POST", &format!("/containers/{}/processes", encode(handle)), &body, handle, io).await
    }

    pub async fn attach(&self, handle: &str, process_id: &str, io: ProcessIo) -> Result<Process, ClientError> {
        let path = format!("/containers/{}/processes/{}", encode(handle), encode(process_id));
        self.hijack("GET", &path, &[], handle, io).await
    }

    async fn hijack(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        handle: &str,
        io: ProcessIo,
    ) -> Result<Process, ClientError> {
        let mut conn = self.connect().await?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: api\r\n");
        if !body.is_empty() {
            req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        conn.write_all(&bytes).await?;
        let (r, mut w) = tokio::io::split(conn);
        let mut r = BufReader::new(r);
        let head = read_head(&mut r).await?;
        if head.status != 200 && head.status != 201 {
            // Errors come before the hijack as ordinary responses.
            let body = read_body(&mut r, &head).await?;
            return Err(error_from(head.status, &body));
        }
        // From here on the stream is raw, whatever the header said.
        let mut line = String::new();
        r.read_line(&mut line).await?;
        let started: ProcessStarted =
            serde_json::from_str(&line).map_err(|e| protocol(format!("bad process start line {line:?}: {e}")))?;
        let id = started.process_id.clone();

        let mut copies = Vec::new();
        for (kind, out) in [("stdout", io.stdout), ("stderr", io.stderr)] {
            let Some(mut out) = out else { continue };
            let mut c = self.connect().await?;
            let p = format!(
                "/containers/{}/processes/{}/attaches/{}/{kind}",
                encode(handle),
                encode(&id),
                encode(&started.stream_id)
            );
            Self::send_head(&mut c, "GET", &p, &[]).await?;
            copies.push(tokio::spawn(async move {
                let mut r = BufReader::new(c);
                if matches!(read_head(&mut r).await, Ok(h) if h.status == 200) {
                    let _ = tokio::io::copy_buf(&mut r, &mut out).await;
                    let _ = out.flush().await;
                }
            }));
        }

        let (tx, mut rx) = mpsc::unbounded_channel::<ProcessPayload>();
        if let Some(mut stdin) = io.stdin {
            let tx = tx.clone();
            let pid = id.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match stdin.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let data = String::from_utf8_lossy(&buf[..n]).into_owned();
                            let msg = ProcessPayload {
                                process_id: pid.clone(),
                                source: Some(SOURCE_STDIN),
                                data: Some(data),
                                ..Default::default()
                            };
                            if tx.send(msg).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = tx.send(ProcessPayload { process_id: pid, source: Some(SOURCE_STDIN), ..Default::default() });
            });
        }
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let mut line = serde_json::to_vec(&msg).unwrap_or_default();
                line.push(b'\n');
                if w.write_all(&line).await.is_err() {
                    break;
                }
            }
        });
        let exit = tokio::spawn(async move {
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    return Err(protocol("process stream ended without an exit status"));
                }
                let Ok(msg) = serde_json::from_str::<ProcessPayload>(&line) else { continue };
                if let Some(code) = msg.exit_status {
                    return Ok(code);
                }
                if let Some(e) = msg.error {
                    return Err(protocol(e));
                }
            }
        });
        Ok(Process { id, tx, exit, copies })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!("/run/x.sock".parse::<Address>().unwrap(), Address::Unix("/run/x.sock".into()));
        assert_eq!("127.0.0.1:7777".parse::<Address>().unwrap(), Address::Tcp("127.0.0.1:7777".into()));
        assert_eq!("unix:///a".parse::<Address>().unwrap(), Address::Unix("/a".into()));
        assert_eq!("tcp://h:1".parse::<Address>().unwrap(), Address::Tcp("h:1".into()));
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        assert_eq!(encode("safe-_.~"), "safe-_.~");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn decodes_chunked_bodies_and_garden_errors() {
        let dir = std::env::temp_dir().join(format!("celld-client-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("g.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let err = r#"{"Type":"ContainerNotFoundError","Message":"unknown handle: x","Handle":"x","ProcessID":"","Binary":""}"#;
            let replies = [
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"Han\r\n9\r\ndle\":\"h\"}\r\n0\r\n\r\n"
                    .to_string(),
                format!("HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{err}", err.len()),
            ];
            for reply in replies {
                let (mut c, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = c.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(req.contains("Host: api\r\n"), "{req}");
                c.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let client = Client::new(Address::Unix(sock));
        assert_eq!(client.create(&ContainerSpec::default()).await.unwrap(), "h");
        let e = client.info("x").await.unwrap_err();
        assert_eq!(e.garden_type(), Some("ContainerNotFoundError"));
        assert_eq!(e.to_string(), "unknown handle: x");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
