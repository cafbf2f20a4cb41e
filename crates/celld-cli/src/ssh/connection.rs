//! An authenticated SSH connection: where and as whom to log in, the host key
//! checked against the announced fingerprint before any credential is sent,
//! then password or key authentication, keepalives and the connection's end.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use russh::client::{self, DisconnectReason, Handle};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::config::{CONNECT_TIMEOUT, client_config};
use super::error::SshError;
use super::fingerprint::{ExpectedFingerprint, fingerprint};

/// How to log in.
#[derive(Clone)]
pub enum SshAuth {
    /// cf's way: the one-time code from `ssh-code`.
    Password(String),
    /// An OpenSSH private key file (unencrypted).
    KeyFile(PathBuf),
    Key(Arc<PrivateKey>),
}

impl fmt::Debug for SshAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password(_) => f.write_str("Password(…)"),
            Self::KeyFile(p) => f.debug_tuple("KeyFile").field(p).finish(),
            Self::Key(k) => f.debug_tuple("Key").field(&k.algorithm()).finish(),
        }
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// HOST:PORT.
    pub addr: String,
    /// For the ssh proxy: `cf:APP_GUID/INDEX`.
    pub user: String,
    pub auth: SshAuth,
    /// The host key's expected fingerprint (see [`ExpectedFingerprint`]);
    /// `None` skips the check (`-k`), `Some("")` refuses any key.
    pub host_fingerprint: Option<String>,
}

/// The russh client callbacks: the host key check and the end of the connection.
pub(super) struct ClientHandler {
    expected: Option<Result<ExpectedFingerprint, String>>,
    seen: watch::Sender<Option<String>>,
    /// The reason the connection ended, if it says; dropped (so receivers see
    /// it closed) when the connection's task ends.
    closed: watch::Sender<Option<String>>,
}

impl client::Handler for ClientHandler {
    type Error = SshError;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, SshError> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else { return Err(SshError::HostCertificate) };
        let got = fingerprint(key);
        self.seen.send_replace(Some(got.clone()));
        match &self.expected {
            None => Ok(true),
            Some(Err(_)) => Err(SshError::NoFingerprint { got }),
            Some(Ok(want)) if want.matches(key) => Ok(true),
            Some(Ok(want)) => Err(SshError::HostKeyMismatch { expected: want.to_string(), got }),
        }
    }

    async fn disconnected(&mut self, reason: DisconnectReason<SshError>) -> Result<(), SshError> {
        match reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                let msg = if info.message.is_empty() { format!("{:?}", info.reason_code) } else { info.message };
                self.closed.send_replace(Some(msg));
                Ok(())
            }
            DisconnectReason::Error(e) => {
                self.closed.send_replace(Some(e.to_string()));
                Err(e)
            }
        }
    }
}

/// An authenticated SSH connection. Channels are opened through it; it ends
/// when dropped (or with [`Connection::close`]).
pub struct Connection {
    pub(super) handle: Arc<Handle<ClientHandler>>,
    addr: String,
    host_fingerprint: String,
    closed: watch::Receiver<Option<String>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").field("addr", &self.addr).field("host", &self.host_fingerprint).finish()
    }
}

fn load_key(auth: &SshAuth) -> Result<Option<Arc<PrivateKey>>, SshError> {
    match auth {
        SshAuth::Password(_) => Ok(None),
        SshAuth::Key(k) => Ok(Some(k.clone())),
        SshAuth::KeyFile(path) => russh::keys::load_secret_key(path, None)
            .map(|k| Some(Arc::new(k)))
            .map_err(|e| SshError::Key { path: path.clone(), reason: e.to_string() }),
    }
}

/// Connects to `target.addr`, checks the host key against
/// `target.host_fingerprint` (before any credential is sent), and logs in.
pub async fn connect(target: &SshTarget) -> Result<Connection, SshError> {
    let expected = match target.host_fingerprint.as_deref().map(str::trim) {
        None => None,
        Some("") => Some(Err(String::new())),
        Some(fp) => Some(Ok(fp.parse::<ExpectedFingerprint>()?)),
    };
    let key = load_key(&target.auth)?;
    let addr = target.addr.clone();
    let (seen_tx, seen) = watch::channel(None);
    let (closed_tx, closed) = watch::channel(None);
    let handler = ClientHandler { expected, seen: seen_tx, closed: closed_tx };
    let login = async {
        let tcp = TcpStream::connect(&addr).await.map_err(|source| SshError::Connect { addr: addr.clone(), source })?;
        let _ = tcp.set_nodelay(true);
        let mut handle = client::connect_stream(client_config(), tcp, handler).await?;
        let result = match (&target.auth, key) {
            (SshAuth::Password(pw), _) => handle.authenticate_password(&target.user, pw).await?,
            (_, Some(key)) => {
                let hash = if key.algorithm().is_rsa() {
                    match handle.best_supported_rsa_hash().await {
                        Ok(Some(h)) => h,
                        _ => Some(HashAlg::Sha256),
                    }
                } else {
                    None
                };
                handle.authenticate_publickey(&target.user, PrivateKeyWithHashAlg::new(key, hash)).await?
            }
            (_, None) => return Err(SshError::Session("no credentials".into())),
        };
        if !result.success() {
            return Err(SshError::AuthFailed { user: target.user.clone() });
        }
        Ok(handle)
    };
    let handle = tokio::time::timeout(CONNECT_TIMEOUT, login)
        .await
        .map_err(|_| SshError::ConnectTimeout { addr: target.addr.clone() })??;
    let host_fingerprint = seen.borrow().clone().unwrap_or_default();
    Ok(Connection { handle: Arc::new(handle), addr: target.addr.clone(), host_fingerprint, closed })
}

impl Connection {
    /// The server's host key fingerprint (`SHA256:…`), as seen during the handshake.
    pub fn host_fingerprint(&self) -> &str {
        &self.host_fingerprint
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Resolves when the connection ends, with the reason if one was given.
    pub async fn closed(&self) -> Option<String> {
        let mut rx = self.closed.clone();
        while rx.changed().await.is_ok() {}
        rx.borrow().clone()
    }

    pub(super) fn lost(&self) -> SshError {
        SshError::ConnectionLost { addr: self.addr.clone(), reason: self.closed.borrow().clone() }
    }

    /// Says goodbye to the server and ends the connection.
    pub async fn close(self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }

    /// Sends one `keepalive@cloudfoundry.org` global request and waits for the
    /// reply (a refusal counts as an answer).
    pub async fn keepalive(&self) -> Result<(), SshError> {
        match self.handle.send_global_request("keepalive@cloudfoundry.org", &[], true).await {
            Ok(_) | Err(russh::Error::RequestDenied) => Ok(()),
            Err(_) => Err(self.lost()),
        }
    }
}
