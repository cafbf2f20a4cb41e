//! Where the client connects and how one request travels: the Garden
//! [`Address`] (Unix socket or TCP, with mutual TLS), the [`Client`] itself, and
//! sending a request on a fresh connection and reading its whole reply, as
//! Garden's Go client opens a new connection for every request.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::error::{ClientError, protocol};
use super::http::{error_from, read_body, read_head};

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

pub(super) trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// The name a TLS server's certificate must carry for `host:port` (an IP
/// address or a DNS name).
fn server_name(addr: &str) -> std::io::Result<rustls::pki_types::ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}")))
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

    pub(super) async fn connect(&self) -> Result<Box<dyn Conn>, ClientError> {
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
    pub(super) async fn send(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<BufReader<Box<dyn Conn>>, ClientError> {
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
    pub(super) async fn finish(r: &mut BufReader<Box<dyn Conn>>) -> Result<Vec<u8>, ClientError> {
        let head = read_head(r).await?;
        let body = read_body(r, &head).await?;
        if !(200..300).contains(&head.status) {
            return Err(error_from(head.status, &body));
        }
        Ok(body)
    }

    pub(super) async fn request_raw(&self, method: &str, path: &str, body: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut r = self.send(method, path, body).await?;
        Self::finish(&mut r).await
    }

    pub(super) async fn request<T: DeserializeOwned>(
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

    pub(super) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request("GET", path, None::<&()>).await
    }

    /// A request whose reply (`{}`) is ignored.
    pub(super) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(), ClientError> {
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| protocol(e.to_string()))?,
            None => Vec::new(),
        };
        self.request_raw(method, path, &payload).await.map(drop)
    }
}
