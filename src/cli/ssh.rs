//! (Long because: the ssh client, its pty handling and -L forwards together; issue 18 splits them.)
//!
//! `cellctl ssh` and friends: the client side of `cf ssh`.
//!
//! Two layers:
//!
//! - **Transport** (no gRPC, usable by tests and the benchmark): [`connect`] an
//!   SSH server described by an [`SshTarget`] (password or key, host key checked
//!   against a `SHA256:` fingerprint before authenticating), then
//!   [`run_session`] (a shell or a command, with or without a pty, `-L`
//!   forwards, `-N`) over caller-given stdin/stdout/stderr, or the [`exec`]
//!   shortcut that collects the output. [`Connection::forward_local`] opens one
//!   `-L` forward on its own.
//! - **Commands** (`ssh`, `ssh-code`, `allow-space-ssh`, `disallow-space-ssh`,
//!   `space-ssh-allowed`): the `Apps` API gives the app's guid, the proxy's
//!   address and fingerprint and a one-time code; the local terminal is put in
//!   raw mode for a pty session and restored on every way out.
//!
//! The behaviour follows the cf CLI: the pty decision, `-L`'s syntax and its
//! `localhost` default bind address, the `keepalive@cloudfoundry.org` global
//! request every 30 s, and the exit code (the remote exit status; after a
//! signal, 128 + its number and a `Process terminated by signal` line).

use std::borrow::Cow;
use std::fmt;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args};
use russh::client::{self, DisconnectReason, Handle};
use russh::keys::{
    Algorithm, EcdsaCurve, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate,
};
use russh::{ChannelMsg, ChannelReadHalf, Pty};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cli::apps::{Ctx, Fail, status_message};
use crate::grpc::pb;

/// How often a `keepalive@cloudfoundry.org` global request is sent (cf's value).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// TCP connect plus SSH handshake and authentication.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Our receive window per channel: large, so a `-L` forward is not held back by
/// window adjustments.
const WINDOW: u32 = 16 << 20;
/// Largest data packet the server may send us.
const MAX_PACKET: u32 = 65535;
/// Copy buffers of forwarded connections and stdin.
const COPY_BUF: usize = 64 * 1024;
/// The size cf assumes when the terminal's cannot be read.
const DEFAULT_COLS: u32 = 80;
const DEFAULT_ROWS: u32 = 43;

// ------------------------------------------------------------------ errors

/// Why an SSH connection or session failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("no answer from {addr} within {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { addr: String },
    /// The server's host key is not the announced one (checked before any
    /// credential is sent).
    #[error(
        "Host key verification failed.\n\nThe fingerprint of the received key was {got:?}, \
         but {expected:?} was expected: someone may be intercepting the connection, \
         or the proxy's host key changed."
    )]
    HostKeyMismatch { expected: String, got: String },
    /// There was no fingerprint to verify the host key against.
    #[error("Unable to verify identity of host.\n\nThe fingerprint of the received key was {got:?}.")]
    NoFingerprint { got: String },
    #[error(
        "Unsupported host key fingerprint format {0:?}: use SHA256:<base64> (as `ssh-keygen -l` prints it), \
         the bare base64 or 64 hex digits"
    )]
    BadFingerprint(String),
    #[error("the server presented a host certificate; only plain host keys can be verified")]
    HostCertificate,
    /// The server refused the credentials.
    #[error("the server refused the login of {user:?}")]
    AuthFailed { user: String },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("SSH session allocation failed: {0}")]
    Session(String),
    /// A pty-req, exec or shell request got a failure reply.
    #[error("the server refused the {0} request")]
    Refused(&'static str),
    #[error("cannot listen on {addr} for -L {spec}: {source}")]
    Listen { spec: String, addr: String, source: std::io::Error },
    /// The connection ended while a session or `-N` was waiting on it.
    #[error("the connection to {addr} was closed{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    ConnectionLost { addr: String, reason: Option<String> },
    #[error("the remote command exited without exit status or exit signal")]
    NoExitStatus,
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("ssh: {0}")]
    Protocol(#[from] russh::Error),
}

// ------------------------------------------------------------ fingerprints

/// A key's SHA-256 fingerprint as `ssh-keygen -l` prints it: `SHA256:` and the
/// unpadded base64 of the SHA-256 of the key blob.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// A fingerprint to check a host key against, parsed from what an API
/// announced: `SHA256:<base64>` (also `SHA512:`), the bare 43-character base64
/// cf accepts, or 64 hex digits (cf's other SHA-256 form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedFingerprint {
    alg: HashAlg,
    digest: Vec<u8>,
    text: String,
}

impl ExpectedFingerprint {
    pub fn matches(&self, key: &PublicKey) -> bool {
        key.fingerprint(self.alg).as_bytes() == self.digest.as_slice()
    }
}

impl fmt::Display for ExpectedFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for ExpectedFingerprint {
    type Err = SshError;

    fn from_str(s: &str) -> Result<Self, SshError> {
        let text = s.trim();
        let bad = || SshError::BadFingerprint(s.to_string());
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let digest = (0..32)
                .map(|i| text.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(bad)?;
            return Ok(Self { alg: HashAlg::Sha256, digest, text: text.to_string() });
        }
        let prefixed =
            if text.contains(':') { text.to_string() } else { format!("SHA256:{}", text.trim_end_matches('=')) };
        let prefixed = prefixed.trim_end_matches('=');
        let fp = russh::keys::ssh_key::Fingerprint::from_str(prefixed).map_err(|_| bad())?;
        Ok(Self { alg: fp.algorithm(), digest: fp.as_bytes().to_vec(), text: text.to_string() })
    }
}

// ------------------------------------------------------------------ -L

/// One `-L [BIND_ADDRESS:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT`: listen locally,
/// and open a `direct-tcpip` channel to REMOTE_HOST:REMOTE_PORT (dialled from
/// the far side, i.e. from inside the app's container) for each connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalForward {
    /// Host or address to listen on; `localhost` (cf's default) means 127.0.0.1.
    pub bind_host: String,
    /// 0 picks a free port (see [`Forwarding::local_addr`]).
    pub bind_port: u16,
    pub remote_host: String,
    pub remote_port: u16,
}

impl LocalForward {
    /// A forward from 127.0.0.1:`local_port` to `remote_host`:`remote_port`.
    pub fn new(local_port: u16, remote_host: &str, remote_port: u16) -> Self {
        Self { bind_host: "localhost".into(), bind_port: local_port, remote_host: remote_host.into(), remote_port }
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_string() }
}

impl fmt::Display for LocalForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}:{}", bracket(&self.bind_host), self.bind_port, bracket(&self.remote_host), self.remote_port)
    }
}

/// Splits on `:` outside `[...]`, and takes the brackets off.
fn split_spec(spec: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut in_brackets = false;
    let mut bracketed = false;
    for c in spec.chars() {
        match c {
            '[' if !in_brackets && cur.is_empty() && !bracketed => in_brackets = true,
            ']' if in_brackets => {
                in_brackets = false;
                bracketed = true;
            }
            ':' if !in_brackets => {
                parts.push(std::mem::take(&mut cur));
                bracketed = false;
            }
            '[' | ']' => return None,
            _ if bracketed => return None,
            c => cur.push(c),
        }
    }
    if in_brackets {
        return None;
    }
    parts.push(cur);
    Some(parts)
}

impl FromStr for LocalForward {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("Bad local forwarding specification '{spec}': {why}");
        let usage = "use [BIND_ADDRESS:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT, e.g. 8080:localhost:80";
        let parts = split_spec(spec).ok_or_else(|| bad(usage))?;
        if parts.iter().any(String::is_empty) {
            return Err(bad(usage));
        }
        let port = |s: &str, what: &str, zero_ok: bool| -> Result<u16, String> {
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(&format!("{what} {s:?} is not a port number; {usage}")));
            }
            match s.parse::<u16>() {
                Ok(0) if !zero_ok => Err(bad(&format!("{what} 0 is not a port"))),
                Ok(p) => Ok(p),
                Err(_) => Err(bad(&format!("{what} {s} is out of range (1-65535)"))),
            }
        };
        let (bind_host, local, host, remote) = match parts.as_slice() {
            [local, host, remote] => ("localhost", local, host, remote),
            [bind, local, host, remote] => (bind.as_str(), local, host, remote),
            _ => return Err(bad(usage)),
        };
        Ok(Self {
            bind_host: bind_host.to_string(),
            bind_port: port(local, "local port", true)?,
            remote_host: host.to_string(),
            remote_port: port(remote, "remote port", false)?,
        })
    }
}

/// An open `-L` forward: its listener and connections live until this is dropped.
#[derive(Debug)]
pub struct Forwarding {
    local: SocketAddr,
    spec: LocalForward,
    task: JoinHandle<()>,
}

impl Forwarding {
    /// Where it listens (the real port when the spec asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn spec(&self) -> &LocalForward {
        &self.spec
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------- connection

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
struct ClientHandler {
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

static KEX: &[russh::kex::Name] = &[
    russh::kex::CURVE25519,
    russh::kex::CURVE25519_PRE_RFC_8731,
    russh::kex::MLKEM768X25519_SHA256,
    russh::kex::EXTENSION_SUPPORT_AS_CLIENT,
    russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
];
static HOST_KEYS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 },
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 },
    Algorithm::Ecdsa { curve: EcdsaCurve::NistP521 },
    Algorithm::Rsa { hash: Some(HashAlg::Sha512) },
    Algorithm::Rsa { hash: Some(HashAlg::Sha256) },
];
// AES-GCM first: ring runs it on AES-NI, faster than ChaCha20-Poly1305 here.
static CIPHERS: &[russh::cipher::Name] =
    &[russh::cipher::AES_128_GCM, russh::cipher::AES_256_GCM, russh::cipher::CHACHA20_POLY1305];
static MACS: &[russh::mac::Name] = &[russh::mac::HMAC_SHA256_ETM, russh::mac::HMAC_SHA512_ETM];
static COMPRESSION: &[russh::compression::Name] = &[russh::compression::NONE];

/// The client's configuration: modern algorithms only (curve25519 key
/// exchange, AEAD ciphers, ed25519/ecdsa/rsa-sha2 host keys) and large windows.
pub fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        client_id: russh::SshId::Standard(Cow::Borrowed(concat!("SSH-2.0-cellctl_", env!("CARGO_PKG_VERSION")))),
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        channel_buffer_size: 256,
        preferred: russh::Preferred {
            kex: Cow::Borrowed(KEX),
            key: Cow::Borrowed(HOST_KEYS),
            host_key_certificates: Cow::Borrowed(&[]),
            cipher: Cow::Borrowed(CIPHERS),
            mac: Cow::Borrowed(MACS),
            compression: Cow::Borrowed(COMPRESSION),
        },
        inactivity_timeout: None,
        keepalive_interval: None,
        nodelay: true,
        ..Default::default()
    })
}

/// An authenticated SSH connection. Channels are opened through it; it ends
/// when dropped (or with [`Connection::close`]).
pub struct Connection {
    handle: Arc<Handle<ClientHandler>>,
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

    fn lost(&self) -> SshError {
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

    /// Opens a `-L` forward: binds its listener now (an error if the address
    /// is taken), then relays each accepted connection over a `direct-tcpip`
    /// channel, with half-close both ways, until the [`Forwarding`] is dropped.
    pub async fn forward_local(&self, spec: &LocalForward) -> Result<Forwarding, SshError> {
        let host = if spec.bind_host.eq_ignore_ascii_case("localhost") { "127.0.0.1" } else { &spec.bind_host };
        let listen_err = |source| SshError::Listen {
            spec: spec.to_string(),
            addr: format!("{}:{}", bracket(host), spec.bind_port),
            source,
        };
        let listener = TcpListener::bind((host, spec.bind_port)).await.map_err(listen_err)?;
        let local = listener.local_addr().map_err(listen_err)?;
        let handle = self.handle.clone();
        let (rhost, rport) = (spec.remote_host.clone(), spec.remote_port);
        let task = tokio::spawn(async move {
            // Dropped (aborting every relay) when the accept loop is aborted.
            let mut relays = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, peer)) => {
                            relays.spawn(relay(handle.clone(), tcp, peer, rhost.clone(), rport));
                        }
                        // EMFILE and the like: wait, as cf does.
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    },
                    Some(_) = relays.join_next(), if !relays.is_empty() => {}
                }
            }
        });
        Ok(Forwarding { local, spec: spec.clone(), task })
    }
}

/// One forwarded connection: a `direct-tcpip` channel, bytes copied both ways.
async fn relay(handle: Arc<Handle<ClientHandler>>, mut tcp: TcpStream, peer: SocketAddr, host: String, port: u16) {
    let _ = tcp.set_nodelay(true);
    let channel =
        handle.channel_open_direct_tcpip(host.clone(), u32::from(port), peer.ip().to_string(), u32::from(peer.port()));
    match channel.await {
        Ok(channel) => {
            let mut stream = channel.into_stream();
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut tcp, &mut stream, COPY_BUF, COPY_BUF).await;
        }
        // What cf prints; the local connection is closed.
        Err(e) => eprintln!("connect to {}:{port} failed: {e}", bracket(&host)),
    }
}

// ---------------------------------------------------------------- session

/// A terminal for the remote side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtyRequest {
    /// `$TERM`, or `xterm`.
    pub term: String,
    pub cols: u32,
    pub rows: u32,
}

/// A terminal size, for `window-change`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub cols: u32,
    pub rows: u32,
}

/// What [`run_session`] does.
#[derive(Debug)]
pub struct SessionOpts {
    /// The command (cf joins its `-c` words with spaces); `None` starts the shell.
    pub command: Option<String>,
    pub pty: Option<PtyRequest>,
    /// Local terminal sizes to pass on as `window-change` (pty sessions).
    pub resize: Option<mpsc::Receiver<WindowSize>>,
    /// `-L` forwards, open for the whole session.
    pub forwards: Vec<LocalForward>,
    /// `-N`: no session channel; keep the forwards until the connection ends.
    pub no_command: bool,
    /// `keepalive@cloudfoundry.org` interval; `None` sends none.
    pub keepalive: Option<Duration>,
}

impl Default for SessionOpts {
    fn default() -> Self {
        Self {
            command: None,
            pty: None,
            resize: None,
            forwards: Vec::new(),
            no_command: false,
            keepalive: Some(KEEPALIVE_INTERVAL),
        }
    }
}

impl SessionOpts {
    /// Runs `command` without a pty.
    pub fn exec(command: &str) -> Self {
        Self { command: Some(command.to_string()), ..Self::default() }
    }
}

/// How the remote side ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exit {
    /// `exit-status`, if sent.
    pub status: Option<u32>,
    /// `exit-signal`'s name (`TERM`, `KILL`, …), if sent.
    pub signal: Option<String>,
    pub core_dumped: bool,
    pub message: String,
}

/// Signal numbers of the names Go's x/crypto/ssh knows (what cf exits with).
fn signal_number(name: &str) -> Option<i32> {
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "ABRT" => 6,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => return None,
    })
}

impl Exit {
    /// The exit code cf gives: the exit status; without one, after a signal,
    /// 128 + the signal's number (128 for a name it does not know).
    pub fn code(&self) -> i32 {
        match (self.status, &self.signal) {
            (Some(s), _) => i32::try_from(s).unwrap_or(i32::MAX),
            (None, Some(sig)) => 128 + signal_number(sig).unwrap_or(0),
            (None, None) => 0,
        }
    }

    /// cf's line after a remote process died of a signal.
    pub fn signal_notice(&self) -> Option<String> {
        let sig = self.signal.as_deref()?;
        let code = self.code();
        (code != 0).then(|| format!("Process terminated by signal: {sig}. Exited with {code}"))
    }
}

/// The output of [`exec`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Exit,
}

/// Runs `command` (no pty) with `stdin` as its input and collects its output.
pub async fn exec(conn: &Connection, command: &str, stdin: &[u8]) -> Result<ExecOutput, SshError> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let opts = SessionOpts { keepalive: None, ..SessionOpts::exec(command) };
    let exit = run_session(conn, opts, stdin, &mut stdout, &mut stderr).await?;
    Ok(ExecOutput { stdout, stderr, exit })
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What `ssh` does after logging in: opens the `-L` forwards, then either
/// waits for the connection to end (`-N`: always an error, as the connection
/// was lost) or runs a session — pty if asked, `exec` of the command or
/// `shell` — copying `stdin` to it (EOF when `stdin` ends) and its output and
/// extended data to `stdout` and `stderr`, until the server closes the channel.
/// Sends `keepalive@cloudfoundry.org` meanwhile.
pub async fn run_session<I, O, E>(
    conn: &Connection,
    mut opts: SessionOpts,
    stdin: I,
    mut stdout: O,
    mut stderr: E,
) -> Result<Exit, SshError>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let mut forwards = Vec::with_capacity(opts.forwards.len());
    for spec in &opts.forwards {
        forwards.push(conn.forward_local(spec).await?);
    }
    let _keepalive = opts.keepalive.map(|every| {
        let handle = conn.handle.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if let Err(russh::Error::SendError | russh::Error::Disconnect) =
                    handle.send_global_request("keepalive@cloudfoundry.org", &[], true).await
                {
                    return;
                }
            }
        }))
    });
    if opts.no_command {
        conn.closed().await;
        return Err(conn.lost());
    }

    let channel = conn.handle.channel_open_session().await.map_err(|e| match e {
        russh::Error::SendError | russh::Error::Disconnect | russh::Error::RecvError => conn.lost(),
        e => SshError::Session(e.to_string()),
    })?;
    let (mut rd, wr) = channel.split();
    let mut early = Vec::new();
    if let Some(pty) = &opts.pty {
        let modes = [(Pty::ECHO, 1), (Pty::TTY_OP_ISPEED, 115_200), (Pty::TTY_OP_OSPEED, 115_200)];
        wr.request_pty(true, &pty.term, pty.cols, pty.rows, 0, 0, &modes).await?;
        await_reply(conn, &mut rd, &mut early, "pty-req").await?;
    }
    match &opts.command {
        Some(cmd) => {
            wr.exec(true, cmd.as_bytes()).await?;
            await_reply(conn, &mut rd, &mut early, "exec").await?;
        }
        None => {
            wr.request_shell(true).await?;
            await_reply(conn, &mut rd, &mut early, "shell").await?;
        }
    }

    let input = async {
        let mut w = wr.make_writer();
        let mut r = BufReader::with_capacity(COPY_BUF, stdin);
        let _ = tokio::io::copy_buf(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    };
    let output = async {
        let mut exit = Exit::default();
        let mut pending = early.into_iter();
        loop {
            let msg = match pending.next() {
                Some(m) => Some(m),
                None => rd.wait().await,
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    stdout.write_all(&data).await.map_err(|source| SshError::Io { what: "writing stdout", source })?;
                    stdout.flush().await.map_err(|source| SshError::Io { what: "writing stdout", source })?;
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    stderr.write_all(&data).await.map_err(|source| SshError::Io { what: "writing stderr", source })?;
                    stderr.flush().await.map_err(|source| SshError::Io { what: "writing stderr", source })?;
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => exit.status = Some(exit_status),
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, .. }) => {
                    exit.signal = Some(crate::lifecycle::sshd::sig_name(&signal_name));
                    exit.core_dumped = core_dumped;
                    exit.message = error_message;
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            }
        }
        if exit.status.is_some() || exit.signal.is_some() {
            Ok(exit)
        } else if conn.is_closed() {
            Err(conn.lost())
        } else {
            Err(SshError::NoExitStatus)
        }
    };
    tokio::pin!(input, output);
    let mut input_done = false;
    let resize = &mut opts.resize;
    loop {
        tokio::select! {
            r = &mut output => return r,
            () = &mut input, if !input_done => input_done = true,
            ws = next_size(resize) => {
                let _ = wr.window_change(ws.cols, ws.rows, 0, 0).await;
            }
        }
    }
}

/// Waits for the reply to a request sent with want_reply; other messages
/// (output that raced ahead) are kept for later.
async fn await_reply(
    conn: &Connection,
    rd: &mut ChannelReadHalf,
    early: &mut Vec<ChannelMsg>,
    what: &'static str,
) -> Result<(), SshError> {
    loop {
        match rd.wait().await {
            Some(ChannelMsg::Success) => return Ok(()),
            Some(ChannelMsg::Failure) => return Err(SshError::Refused(what)),
            Some(ChannelMsg::WindowAdjusted { .. }) => {}
            Some(m) => early.push(m),
            None if conn.is_closed() => return Err(conn.lost()),
            None => return Err(SshError::Session(format!("the channel closed before the {what} reply"))),
        }
    }
}

async fn next_size(r: &mut Option<mpsc::Receiver<WindowSize>>) -> WindowSize {
    if let Some(rx) = r
        && let Some(ws) = rx.recv().await
    {
        return ws;
    }
    *r = None;
    std::future::pending().await
}

// ------------------------------------------------------------- pty choice

/// cf's pseudo-tty flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtyRequest {
    /// No flag: a pty for an interactive shell on a terminal.
    Auto,
    /// `-T`.
    No,
    /// `-t`: a pty if stdin is a terminal.
    Yes,
    /// `--force-pseudo-tty` (`-tt`).
    Force,
}

/// Whether to ask for a pty (cf's rule).
pub fn want_pty(req: TtyRequest, has_command: bool, stdin_is_terminal: bool) -> bool {
    match req {
        TtyRequest::Force => true,
        TtyRequest::No => false,
        TtyRequest::Yes => stdin_is_terminal,
        TtyRequest::Auto => !has_command && stdin_is_terminal,
    }
}

// --------------------------------------------------------------- terminal

/// The terminal's size (stdout's, else stdin's), if there is one.
pub fn terminal_size() -> Option<WindowSize> {
    [libc::STDOUT_FILENO, libc::STDIN_FILENO].into_iter().find_map(|fd| {
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusive `ws`.
        let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 && ws.ws_row > 0;
        ok.then_some(WindowSize { cols: u32::from(ws.ws_col), rows: u32::from(ws.ws_row) })
    })
}

/// The local terminal (stdin) in raw mode; restored when dropped, which also
/// happens when a panic unwinds. (Also `cellctl garden run -t`'s.)
pub struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    pub fn enter() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else { return Self(None) };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return Self(None);
        }
        Self(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSADRAIN, &t);
        }
    }
}

/// Resolves with the number of the first of SIGHUP, SIGINT, SIGQUIT or
/// SIGTERM (for a pty session, whose terminal must be restored first).
async fn terminating_signal() -> i32 {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn recv(s: &mut Option<Signal>) {
        if let Some(s) = s
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending().await
    }
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut quit = signal(SignalKind::quit()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        () = recv(&mut hup) => libc::SIGHUP,
        () = recv(&mut int) => libc::SIGINT,
        () = recv(&mut quit) => libc::SIGQUIT,
        () = recv(&mut term) => libc::SIGTERM,
    }
}

// ------------------------------------------------------------ the commands

/// `cellctl ssh`'s flags (cf's).
#[derive(Args, Debug, Clone)]
pub struct SshArgs {
    /// The app's name.
    #[arg(value_name = "APP_NAME")]
    pub app: String,
    /// The app instance's index.
    #[arg(short = 'i', long = "app-instance-index", default_value_t = 0, value_name = "INDEX")]
    pub index: u32,
    /// The app's process (cellctl apps have only `web`).
    #[arg(long, default_value = "web", value_name = "PROCESS")]
    pub process: String,
    /// Command to run instead of a shell (repeatable: the words are joined with spaces).
    #[arg(short = 'c', long = "command", value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Local port forward: listen on LOCAL_PORT (on BIND_ADDRESS, default localhost) and connect to
    /// REMOTE_HOST:REMOTE_PORT from the app's container (repeatable).
    #[arg(short = 'L', value_name = "[BIND_ADDRESS:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT", value_parser = LocalForward::from_str)]
    pub forwards: Vec<LocalForward>,
    /// Do not run a remote command or shell: only forward ports (until Ctrl-C).
    #[arg(short = 'N', long = "skip-remote-execution")]
    pub skip_remote_execution: bool,
    /// Request a pseudo-tty (when stdin is a terminal); twice (-tt) forces one.
    #[arg(short = 't', long = "request-pseudo-tty", action = ArgAction::Count)]
    pub request_tty: u8,
    /// Force pseudo-tty allocation.
    #[arg(long = "force-pseudo-tty", conflicts_with_all = ["request_tty", "disable_tty"])]
    pub force_tty: bool,
    /// Disable pseudo-tty allocation.
    #[arg(short = 'T', long = "disable-pseudo-tty", conflicts_with = "request_tty")]
    pub disable_tty: bool,
    /// Skip host key validation. Not recommended!
    #[arg(short = 'k', long = "skip-host-validation")]
    pub skip_host_validation: bool,
}

impl SshArgs {
    pub fn tty_request(&self) -> TtyRequest {
        match (self.force_tty, self.request_tty, self.disable_tty) {
            (true, _, _) | (_, 2.., _) => TtyRequest::Force,
            (_, 1, _) => TtyRequest::Yes,
            (_, _, true) => TtyRequest::No,
            _ => TtyRequest::Auto,
        }
    }

    /// cf joins the `-c` words with spaces.
    pub fn command_line(&self) -> Option<String> {
        (!self.command.is_empty()).then(|| self.command.join(" "))
    }
}

fn failed(api: &str, s: &tonic::Status) -> Fail {
    if s.code() == tonic::Code::Unimplemented && !s.message().is_empty() {
        return Fail::Failed(format!("celld at {api} does not support ssh yet ({})", s.message()));
    }
    Fail::Failed(status_message(api, s))
}

const NOT_AUTHORIZED: &str = "Error opening SSH connection: You are not authorized to perform the requested action.";

/// `cellctl ssh APP`, exiting the process with the remote exit code when it is
/// not 0 (the command dispatcher only knows success and failure).
pub async fn run_ssh(ctx: &Ctx, args: SshArgs) -> Result<(), Fail> {
    let code = ssh(ctx, args).await?;
    if code != 0 {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        std::process::exit(code);
    }
    Ok(())
}

/// `cellctl ssh APP`: returns the exit code (the remote command's).
pub async fn ssh(ctx: &Ctx, args: SshArgs) -> Result<i32, Fail> {
    let api = ctx.api.as_str();
    let mut c = ctx.connect().await?;
    let app_ref = pb::AppRef { space: ctx.space.clone(), name: args.app.clone() };
    let detail = c.get_app(app_ref).await.map_err(|s| failed(api, &s))?.into_inner();
    let app = detail.app.clone().unwrap_or_default();
    let name = &args.app;
    if !app.enable_ssh {
        return Err(Fail::Failed(format!(
            "{NOT_AUTHORIZED}\nssh support is disabled for app '{name}'. \
             TIP: `cellctl enable-ssh {name}`, then `cellctl restart {name}`."
        )));
    }
    if args.process != "web" {
        return Err(Fail::Failed(format!("Process {} not found", args.process)));
    }
    if app.state != "STARTED" {
        return Err(Fail::Failed(format!("Application '{name}' is not in the STARTED state")));
    }
    let index = args.index;
    match detail.instances.iter().find(|i| i.index == index) {
        None => return Err(Fail::Failed(format!("Instance {index} of process {} not found", args.process))),
        Some(i) if i.state != "running" => {
            return Err(Fail::Failed(format!("Instance {index} of process {} not running", args.process)));
        }
        Some(_) => {}
    }
    let info = c.get_ssh_info(pb::GetSshInfoRequest {}).await.map_err(|s| failed(api, &s))?.into_inner();
    if info.endpoint.is_empty() {
        return Err(Fail::Failed(format!("SSH endpoint not set: celld at {api} runs no ssh proxy")));
    }
    if info.host_key_fingerprint.is_empty() && !args.skip_host_validation {
        return Err(Fail::Failed(format!("SSH hostkey fingerprint not set: celld at {api} announced none")));
    }
    let code = c.get_ssh_code(pb::GetSshCodeRequest {}).await.map_err(|s| failed(api, &s))?.into_inner().code;

    let target = SshTarget {
        addr: info.endpoint.clone(),
        user: format!("cf:{}/{index}", app.guid),
        auth: SshAuth::Password(code),
        host_fingerprint: (!args.skip_host_validation).then(|| info.host_key_fingerprint.clone()),
    };
    let conn = match connect(&target).await {
        Ok(conn) => conn,
        Err(SshError::AuthFailed { .. }) => {
            // Say why if celld can tell: the space may disallow ssh.
            let space = pb::SpaceRef { space: ctx.space.clone() };
            let why = match c.get_space_ssh(space).await {
                Ok(r) if !r.get_ref().allow_ssh => format!(
                    "\nssh support is disabled in space '{}'. TIP: `cellctl allow-space-ssh {}`.",
                    ctx.space, ctx.space
                ),
                _ => String::new(),
            };
            return Err(Fail::Failed(format!("{NOT_AUTHORIZED}{why}")));
        }
        Err(e @ (SshError::HostKeyMismatch { .. } | SshError::NoFingerprint { .. })) => {
            return Err(Fail::Failed(e.to_string()));
        }
        Err(e) => return Err(Fail::Failed(format!("Error opening SSH connection: {e}"))),
    };
    drop(c);

    let stdin_tty = std::io::stdin().is_terminal();
    let command = args.command_line();
    let pty = !args.skip_remote_execution && want_pty(args.tty_request(), command.is_some(), stdin_tty);
    let size = terminal_size();
    let mut opts = SessionOpts {
        command,
        pty: pty.then(|| PtyRequest {
            term: std::env::var("TERM").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| "xterm".into()),
            cols: size.map_or(DEFAULT_COLS, |s| s.cols),
            rows: size.map_or(DEFAULT_ROWS, |s| s.rows),
        }),
        forwards: args.forwards.clone(),
        no_command: args.skip_remote_execution,
        ..SessionOpts::default()
    };
    let mut _winch = None;
    if pty && size.is_some() {
        let (tx, rx) = mpsc::channel(4);
        opts.resize = Some(rx);
        _winch = Some(AbortOnDrop(tokio::spawn(follow_window_size(tx, size))));
    }

    let raw = pty.then(RawMode::enter);
    let session = run_session(&conn, opts, tokio::io::stdin(), tokio::io::stdout(), tokio::io::stderr());
    let result = if pty {
        tokio::select! {
            r = session => r,
            // Killed while the terminal is raw: restore it, exit as the signal would.
            n = terminating_signal() => Ok(Exit { status: Some(128 + n.unsigned_abs()), ..Exit::default() }),
        }
    } else {
        session.await
    };
    // The terminal first, then any message.
    drop(raw);
    let exit = match result {
        Ok(exit) => exit,
        Err(e @ SshError::Listen { .. }) => return Err(Fail::Failed(format!("Error forwarding port: {e}"))),
        Err(e) => return Err(Fail::Failed(e.to_string())),
    };
    if let Some(notice) = exit.signal_notice() {
        println!("{notice}");
    }
    Ok(exit.code())
}

/// Sends the terminal's size on each SIGWINCH that changed it.
async fn follow_window_size(tx: mpsc::Sender<WindowSize>, mut last: Option<WindowSize>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut winch) = signal(SignalKind::window_change()) else { return };
    while winch.recv().await.is_some() {
        let now = terminal_size();
        if let Some(ws) = now.filter(|ws| Some(*ws) != last) {
            last = now;
            if tx.send(ws).await.is_err() {
                return;
            }
        }
    }
}

/// `cellctl ssh-code`: one one-time password, alone on its line.
pub async fn ssh_code(ctx: &Ctx) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let code = c.get_ssh_code(pb::GetSshCodeRequest {}).await.map_err(|s| failed(&ctx.api, &s))?.into_inner().code;
    println!("{code}");
    Ok(())
}

/// `cellctl allow-space-ssh` / `disallow-space-ssh`.
pub async fn set_space_ssh(ctx: &Ctx, space: &str, allow: bool) -> Result<(), Fail> {
    if space.trim().is_empty() {
        return Err(Fail::Usage("the space name is empty".into()));
    }
    let mut c = ctx.connect().await?;
    let (verb, word) = if allow { ("Enabling", "enabled") } else { ("Disabling", "disabled") };
    println!("{verb} ssh support for space {space}...");
    let now = c.get_space_ssh(pb::SpaceRef { space: space.to_string() }).await.map_err(|s| failed(&ctx.api, &s))?;
    if now.into_inner().allow_ssh == allow {
        println!("ssh support for space '{space}' is already {word}.\nOK");
        return Ok(());
    }
    let req = pb::SetSpaceSshRequest { space: space.to_string(), allow_ssh: allow };
    c.set_space_ssh(req).await.map_err(|s| failed(&ctx.api, &s))?;
    println!("OK");
    Ok(())
}

/// `cellctl space-ssh-allowed SPACE`.
pub async fn space_ssh_allowed(ctx: &Ctx, space: &str) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let r = c.get_space_ssh(pb::SpaceRef { space: space.to_string() }).await.map_err(|s| failed(&ctx.api, &s))?;
    let word = if r.into_inner().allow_ssh { "enabled" } else { "disabled" };
    println!("ssh support is {word} in space '{space}'.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(s: &str) -> Result<LocalForward, String> {
        s.parse()
    }

    #[test]
    fn forward_specs_parse_like_cf() {
        assert_eq!(fwd("8080:localhost:80").unwrap(), LocalForward::new(8080, "localhost", 80));
        let f = fwd("127.0.0.1:8080:10.0.0.1:3306").unwrap();
        assert_eq!(
            (f.bind_host.as_str(), f.bind_port, f.remote_host.as_str(), f.remote_port),
            ("127.0.0.1", 8080, "10.0.0.1", 3306)
        );
        let f = fwd("[::1]:8080:[fd00::5]:443").unwrap();
        assert_eq!((f.bind_host.as_str(), f.remote_host.as_str()), ("::1", "fd00::5"));
        assert_eq!(f.to_string(), "[::1]:8080:[fd00::5]:443");
        let f = fwd("0:db.internal:5432").unwrap();
        assert_eq!((f.bind_port, f.remote_host.as_str()), (0, "db.internal"));
        assert_eq!(fwd("0.0.0.0:80:x:1").unwrap().bind_host, "0.0.0.0");
    }

    #[test]
    fn bad_forward_specs_say_why() {
        // cf's own error cases.
        for bad in [
            "IAMABANANA909009009",
            "IAMABANANA:909009009",
            "I:AM:A:BANANA:909009009",
            "I:AM:A:",
            "I:AM:8888",
            "8888:AM:potato",
            "localhost:foo:AM:8888",
            "localhost:8080:AM:bar",
            "",
            "8080::80",
            "[::1:8080:x:80",
            "[::1]x:8080:x:80",
        ] {
            let e = fwd(bad).unwrap_err();
            assert!(e.starts_with(&format!("Bad local forwarding specification '{bad}'")), "{bad}: {e}");
        }
        assert!(fwd("70000:x:80").unwrap_err().contains("out of range"));
        assert!(fwd("8080:x:0").unwrap_err().contains("remote port 0"));
        assert!(fwd("8080:x:-1").unwrap_err().contains("not a port number"));
    }

    #[test]
    fn pty_decision_follows_cf() {
        use TtyRequest::*;
        // (request, has -c, stdin is a terminal) -> pty
        let table = [
            (Auto, false, true, true),
            (Auto, false, false, false),
            (Auto, true, true, false),
            (Auto, true, false, false),
            (No, false, true, false),
            (No, true, true, false),
            (Yes, true, true, true),
            (Yes, false, false, false),
            (Yes, true, false, false),
            (Force, true, false, true),
            (Force, false, false, true),
        ];
        for (req, cmd, tty, want) in table {
            assert_eq!(want_pty(req, cmd, tty), want, "{req:?} command={cmd} tty={tty}");
        }
    }

    #[test]
    fn tty_flags_map_to_requests() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: SshArgs,
        }
        let parse = |args: &[&str]| {
            T::try_parse_from(std::iter::once("ssh").chain(args.iter().copied())).map(|t| t.a.tty_request())
        };
        assert_eq!(parse(&["web"]).unwrap(), TtyRequest::Auto);
        assert_eq!(parse(&["web", "-t"]).unwrap(), TtyRequest::Yes);
        assert_eq!(parse(&["web", "-tt"]).unwrap(), TtyRequest::Force);
        assert_eq!(parse(&["web", "--force-pseudo-tty"]).unwrap(), TtyRequest::Force);
        assert_eq!(parse(&["web", "-T"]).unwrap(), TtyRequest::No);
        assert!(parse(&["web", "-t", "-T"]).is_err());
        assert!(parse(&["web", "--force-pseudo-tty", "-T"]).is_err());
        assert!(parse(&["web", "--force-pseudo-tty", "-t"]).is_err());
        assert!(parse(&["web", "-L", "nope"]).is_err());
        let a = T::try_parse_from([
            "ssh",
            "web",
            "-i",
            "2",
            "-c",
            "echo",
            "-c",
            "hi",
            "-L",
            "8080:localhost:80",
            "-N",
            "-k",
        ])
        .unwrap()
        .a;
        assert_eq!((a.index, a.command_line().as_deref(), a.forwards.len()), (2, Some("echo hi"), 1));
        assert!(a.skip_remote_execution && a.skip_host_validation);
    }

    #[test]
    fn fingerprints_print_and_parse_like_ssh_keygen() {
        let key = russh::keys::parse_public_key_base64(
            "AAAAC3NzaC1lZDI1NTE5AAAAIIqwKiSVAlCNliYIO+WkSjCjZnftIlqWVOXxczWm7Ag3",
        )
        .unwrap();
        // What `ssh-keygen -lf` prints for that key.
        let printed = fingerprint(&key);
        assert_eq!(printed, "SHA256:dsjIleNgv23V4+NCi2VqdfDMgRVNHGzBNzE1IAtvGxU");
        let want: ExpectedFingerprint = printed.parse().unwrap();
        assert!(want.matches(&key));
        // cf's other spellings of the same digest.
        let bare = printed.trim_start_matches("SHA256:");
        assert!(bare.parse::<ExpectedFingerprint>().unwrap().matches(&key));
        assert!(format!("{bare}=").parse::<ExpectedFingerprint>().unwrap().matches(&key));
        let digest = key.fingerprint(HashAlg::Sha256);
        let hex: String = digest.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(hex.parse::<ExpectedFingerprint>().unwrap().matches(&key));
        assert!(hex.to_uppercase().parse::<ExpectedFingerprint>().unwrap().matches(&key));
        let other = format!("SHA256:{}", "A".repeat(43));
        assert!(!other.parse::<ExpectedFingerprint>().unwrap().matches(&key));
        // MD5/SHA-1 colon-hex and junk are refused with a clear error.
        for bad in ["ab:cd:ef", &"aa:".repeat(19)[..56], "SHA256:!!!", "nope"] {
            let e = bad.parse::<ExpectedFingerprint>().unwrap_err();
            assert!(matches!(e, SshError::BadFingerprint(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn exit_codes_follow_cf() {
        let status = |s| Exit { status: Some(s), ..Exit::default() };
        assert_eq!(status(0).code(), 0);
        assert_eq!(status(3).code(), 3);
        assert_eq!(status(3).signal_notice(), None);
        let sig = |name: &str| Exit { signal: Some(name.into()), ..Exit::default() };
        assert_eq!(sig("KILL").code(), 137);
        assert_eq!(sig("TERM").code(), 143);
        assert_eq!(sig("USR2").code(), 140);
        assert_eq!(sig("WINCH").code(), 128);
        assert_eq!(sig("KILL").signal_notice().unwrap(), "Process terminated by signal: KILL. Exited with 137");
        let both = Exit { status: Some(2), signal: Some("INT".into()), ..Exit::default() };
        assert_eq!((both.code(), both.signal_notice().unwrap().ends_with("Exited with 2")), (2, true));
        assert_eq!(Exit { status: Some(0), signal: Some("INT".into()), ..Exit::default() }.signal_notice(), None);
    }

    #[test]
    fn errors_name_both_fingerprints() {
        let e = SshError::HostKeyMismatch { expected: "SHA256:want".into(), got: "SHA256:got".into() };
        let s = e.to_string();
        assert!(
            s.starts_with("Host key verification failed.") && s.contains("SHA256:want") && s.contains("SHA256:got")
        );
        let lost = SshError::ConnectionLost { addr: "127.0.0.1:2222".into(), reason: None };
        assert_eq!(lost.to_string(), "the connection to 127.0.0.1:2222 was closed");
    }
}
