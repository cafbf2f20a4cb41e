//! The `sshd` command: the in-container SSH server behind `cf ssh`, as Diego's
//! `diego-sshd` (`cmd/sshd`, `handlers/`).
//!
//! The executor runs `/tmp/lifecycle/sshd --address=0.0.0.0:2222` inside the
//! app's container, as vcap, with the app's environment plus `SSHD_HOSTKEY` (the
//! host private key) and `SSHD_AUTHKEY` (the one authorized key). The keys come
//! only from the environment, so they never show in `ps`, and are removed from
//! it before anything is spawned.
//!
//! - auth: publickey only, exactly the authorized key, any user name;
//! - channels: `session` (env, pty-req, window-change, shell, exec, subsystem
//!   sftp, signal; a built-in legacy `scp`, as the tiny rootfs has none) and
//!   `direct-tcpip` (dialled from inside the container, so its egress rules
//!   apply);
//! - global requests: `tcpip-forward` and `cancel-tcpip-forward`, listeners that
//!   live as long as the connection.
//!
//! Modules: `session` (one session channel: its requests, the process and
//! its streams, exit status, hang-up on disconnect), `pty` (pseudo-terminals),
//! `scp` (the legacy SCP protocol, `scp -O`), `sftp` (the SFTP v3 server over
//! the file system), `forward` (`direct-tcpip` and remote forwarding).

mod forward;
mod pty;
mod scp;
mod session;
mod sftp;

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{Algorithm, PrivateKey, PublicKey};
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Preferred, Pty, Sig, SshId, cipher, kex, mac};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Where the sshd listens unless told otherwise (Diego's container port).
pub const DEFAULT_ADDRESS: &str = "0.0.0.0:2222";
/// Diego's server identification string.
pub const SERVER_ID: &str = "SSH-2.0-diego-sshd";
/// The environment variables the keys come in.
pub const HOSTKEY_ENV: &str = "SSHD_HOSTKEY";
pub const AUTHKEY_ENV: &str = "SSHD_AUTHKEY";

/// The receive window per channel. Large, so a bulk transfer over a link with
/// some latency (client → proxy → here) is not throttled by window updates;
/// russh tops it up once half is used.
pub const WINDOW_SIZE: u32 = 16 * 1024 * 1024;
/// The largest data packet a peer may send us. OpenSSH sends at most 32 KiB;
/// the proxy joins what it has queued into packets of up to this, and fewer,
/// larger packets cost less per byte (russh reads packets up to 256 KiB).
pub const MAX_PACKET_SIZE: u32 = 256 * 1024;
/// Bytes read from a connection's socket at once.
const READ_BUFFER: usize = 256 * 1024;
/// Messages queued per channel before russh stops reading the connection.
/// russh refills the window on receipt, so this queue, not the window, bounds
/// what a stalled channel holds in the app's memory (64 × 64 KiB at most);
/// more does not move bulk transfers any faster.
const CHANNEL_BUFFER: usize = 64;
/// Outgoing messages queued per connection (all channels).
const EVENT_BUFFER: usize = 128;
/// Keepalive interval, as Diego's sshd.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Shells tried in order for `shell` and `exec`.
const SHELLS: [&str; 3] = ["/bin/bash", "/usr/local/bin/bash", "/bin/sh"];

#[derive(Debug, thiserror::Error)]
pub enum SshdError {
    #[error("sshd: {0}")]
    Usage(String),
    #[error("sshd: {HOSTKEY_ENV} is not set")]
    NoHostKey,
    #[error("sshd: {AUTHKEY_ENV} is not set")]
    NoAuthKey,
    #[error("sshd: {HOSTKEY_ENV}: {0}")]
    HostKey(String),
    #[error("sshd: {AUTHKEY_ENV}: {0}")]
    AuthKey(String),
    #[error("sshd: address {0:?}: expected HOST:PORT")]
    Address(String),
    #[error("sshd: cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("sshd: listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("sshd: cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("sshd: {0}")]
    Ssh(#[from] russh::Error),
    #[error("sshd: {0}")]
    Io(#[from] std::io::Error),
}

/// The command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub address: String,
}

/// `sshd [--address=HOST:PORT]`. Diego's own flags `-inheritDaemonEnv` and
/// `-logLevel` are accepted and ignored (the environment is always inherited;
/// logging is errors only); the keys are never taken from arguments.
pub fn parse_args(args: &[String]) -> Result<Option<Options>, SshdError> {
    let mut address = DEFAULT_ADDRESS.to_string();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let flag = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'));
        let Some(flag) = flag.filter(|f| !f.is_empty()) else {
            return Err(SshdError::Usage(format!("unexpected argument {arg:?}")));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        match name {
            "h" | "help" => return Ok(None),
            "address" | "logLevel" => {
                let value = match inline {
                    Some(v) => v,
                    None => it.next().cloned().ok_or_else(|| SshdError::Usage(format!("{arg} needs a value")))?,
                };
                if name == "address" {
                    address = value;
                }
            }
            "inheritDaemonEnv" => {}
            "hostKey" | "authorizedKey" => {
                return Err(SshdError::Usage(format!(
                    "-{name} is not accepted: pass the keys in {HOSTKEY_ENV} and {AUTHKEY_ENV}"
                )));
            }
            _ => return Err(SshdError::Usage(format!("unknown flag {arg}"))),
        }
    }
    Ok(Some(Options { address }))
}

const USAGE: &str = "usage: sshd [--address=HOST:PORT]  (default 0.0.0.0:2222; keys in SSHD_HOSTKEY and SSHD_AUTHKEY)";

/// The `sshd` role. Returns only when the server cannot start (1) or on `-h` (0).
pub fn main(args: &[String]) -> i32 {
    let opts = match parse_args(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{USAGE}");
            return 1;
        }
    };
    // Read the keys, then drop every SSHD_* variable while this process is
    // still single-threaded: nothing spawned later may see them.
    let host = std::env::var(HOSTKEY_ENV).ok();
    let auth = std::env::var(AUTHKEY_ENV).ok();
    scrub_env();
    let keys = host.ok_or(SshdError::NoHostKey).and_then(|h| parse_host_key(&h)).and_then(|host| {
        let auth = auth.ok_or(SshdError::NoAuthKey)?;
        Ok((host, parse_authorized_key(&auth)?))
    });
    let (host, authorized) = match keys {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    keep_freed_memory();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}", SshdError::Runtime(e));
            return 1;
        }
    };
    match rt.block_on(serve(&opts.address, host, authorized)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Removes `SSHD_*` from this process's environment.
fn scrub_env() {
    let names: Vec<OsString> = std::env::vars_os().map(|(k, _)| k).filter(|k| is_sshd_var(k)).collect();
    for k in names {
        // SAFETY: called from `main` before the runtime (or any other thread)
        // exists, so nothing reads the environment concurrently.
        unsafe { std::env::remove_var(k) };
    }
}

pub(crate) fn is_sshd_var(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b"SSHD_")
}

/// The host key: OpenSSH format (ed25519 or RSA), or PKCS#1/PKCS#8 RSA PEM as
/// Cloud Controller generates it.
pub fn parse_host_key(pem: &str) -> Result<PrivateKey, SshdError> {
    let key = russh::keys::decode_secret_key(pem, None).map_err(|e| SshdError::HostKey(e.to_string()))?;
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Rsa { .. } => Ok(key),
        other => Err(SshdError::HostKey(format!("unsupported key type {other} (ed25519 or RSA only)"))),
    }
}

/// One authorized_keys line: `ssh-ed25519 AAAA… [comment]` or `ssh-rsa …`.
pub fn parse_authorized_key(line: &str) -> Result<PublicKey, SshdError> {
    let line = line.trim();
    if line.is_empty() {
        return Err(SshdError::AuthKey("empty".into()));
    }
    let key = PublicKey::from_openssh(line).map_err(|e| SshdError::AuthKey(e.to_string()))?;
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Rsa { .. } => Ok(key),
        other => Err(SshdError::AuthKey(format!("unsupported key type {other} (ed25519 or RSA only)"))),
    }
}

/// Modern algorithms only: curve25519 (and the ML-KEM hybrid) key exchange,
/// AEAD ciphers, ed25519 and SHA-2 RSA host keys. The MAC list is never used
/// with AEAD ciphers but must not be empty for negotiation.
pub fn preferred() -> Preferred {
    Preferred {
        kex: vec![
            kex::MLKEM768X25519_SHA256,
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]
        .into(),
        key: vec![
            Algorithm::Ed25519,
            Algorithm::Rsa { hash: Some(russh::keys::HashAlg::Sha512) },
            Algorithm::Rsa { hash: Some(russh::keys::HashAlg::Sha256) },
        ]
        .into(),
        host_key_certificates: Vec::new().into(),
        cipher: vec![cipher::CHACHA20_POLY1305, cipher::AES_256_GCM, cipher::AES_128_GCM].into(),
        mac: vec![mac::HMAC_SHA256_ETM, mac::HMAC_SHA512_ETM].into(),
        compression: vec![russh::compression::NONE].into(),
    }
}

/// The server configuration for a host key.
pub fn config(host: PrivateKey) -> russh::server::Config {
    russh::server::Config {
        server_id: SshId::Standard(SERVER_ID.into()),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // No secret can leak through the timing of a public key check, and
        // OpenSSH probes with "none" first: do not make every login wait.
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host],
        window_size: WINDOW_SIZE,
        maximum_packet_size: MAX_PACKET_SIZE,
        channel_buffer_size: CHANNEL_BUFFER,
        event_buffer_size: EVENT_BUFFER,
        preferred: preferred(),
        max_auth_attempts: 6,
        // Idle shells stay up; a dead peer is found by the keepalives.
        inactivity_timeout: None,
        keepalive_interval: Some(KEEPALIVE),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    }
}

/// What every connection shares.
pub(crate) struct Shared {
    authorized: PublicKey,
    /// The daemon's environment, without `SSHD_*`.
    env: Vec<(OsString, OsString)>,
    /// Sessions start here and relative scp/sftp paths resolve from here:
    /// `$HOME` if it is a directory, else `/`.
    cwd: PathBuf,
    shell: Option<PathBuf>,
}

impl Shared {
    fn from_env(authorized: PublicKey) -> Self {
        let env: Vec<(OsString, OsString)> = std::env::vars_os().filter(|(k, _)| !is_sshd_var(k)).collect();
        let cwd = std::env::var_os("HOME").map(PathBuf::from).filter(|h| h.is_dir()).unwrap_or_else(|| "/".into());
        let shell = SHELLS.iter().map(PathBuf::from).find(|s| s.exists());
        Shared { authorized, env, cwd, shell }
    }
}

/// `host:port` → socket addresses, without NSS for the common cases (the static
/// binary has no NSS modules): an IP literal, `localhost`, empty or `*` (any).
pub(crate) async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, SshdError> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match bare {
        "" | "*" => return Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)]),
        "localhost" => return Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)]),
        _ => {}
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| SshdError::Resolve { host: host.to_string(), reason: e.to_string() })?
        .collect();
    if addrs.is_empty() {
        return Err(SshdError::Resolve { host: host.to_string(), reason: "no addresses".into() });
    }
    Ok(addrs)
}

/// Splits `HOST:PORT` (`[v6]:PORT` too).
pub fn split_address(addr: &str) -> Result<(String, u16), SshdError> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| SshdError::Address(addr.to_string()))?;
    let port = port.parse::<u16>().map_err(|_| SshdError::Address(addr.to_string()))?;
    Ok((host.to_string(), port))
}

/// A bulk transfer allocates and frees each packet's payload while dozens
/// are in flight; with glibc's defaults the freed top of the heap goes back to
/// the kernel (past 128 KiB) and is faulted in and zeroed again a moment
/// later, a tenth of the sshd's CPU. Keeping a few MiB bounds what an idle
/// sshd holds after a transfer. Best effort: without it, only slower.
fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: called before any other thread exists; mallopt only tunes malloc.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Listens and serves until the process is killed.
async fn serve(address: &str, host: PrivateKey, authorized: PublicKey) -> Result<(), SshdError> {
    let (h, port) = split_address(address)?;
    let addrs = resolve(&h, port).await?;
    let listener = TcpListener::bind(addrs.as_slice())
        .await
        .map_err(|source| SshdError::Listen { addr: address.to_string(), source })?;
    let config = Arc::new(config(host));
    let shared = Arc::new(Shared::from_env(authorized));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: keep serving the others.
                eprintln!("sshd: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let config = config.clone();
        let handler = Conn::new(shared.clone());
        tokio::spawn(async move {
            // Many packets per read, not two reads (length, then the rest) each.
            let socket = tokio::io::BufReader::with_capacity(READ_BUFFER, socket);
            let result = match russh::server::run_stream(config, socket, handler).await {
                Ok(session) => session.await,
                Err(e) => Err(e),
            };
            if let Err(e) = result
                && !is_benign(&e)
            {
                eprintln!("sshd: connection from {peer}: {e}");
            }
        });
    }
}

/// Connection endings that are the client's business, not errors worth a log
/// line.
fn is_benign(e: &SshdError) -> bool {
    use std::io::ErrorKind::*;
    match e {
        SshdError::Ssh(russh::Error::IO(io)) | SshdError::Io(io) => {
            matches!(io.kind(), UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted)
        }
        SshdError::Ssh(e) => matches!(
            e,
            russh::Error::HUP
                | russh::Error::Disconnect
                | russh::Error::KeepaliveTimeout
                | russh::Error::InactivityTimeout
                | russh::Error::ConnectionTimeout
                | russh::Error::SendError
        ),
        _ => false,
    }
}

/// One connection: its session channels and its forwarding tasks.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    chans: HashMap<ChannelId, session::ChanState>,
    /// `tcpip-forward` listeners by (address, port) as the client named them.
    forwards: HashMap<(String, u32), tokio::task::AbortHandle>,
    /// direct-tcpip relays and forward listeners: aborted with the connection.
    tasks: JoinSet<()>,
}

impl Conn {
    fn new(shared: Arc<Shared>) -> Self {
        Conn { shared, chans: HashMap::new(), forwards: HashMap::new(), tasks: JoinSet::new() }
    }

    fn accepts(&self, key: &PublicKey, algorithm: &Algorithm) -> bool {
        // SHA-1 RSA signatures are not modern.
        key.key_data() == self.shared.authorized.key_data() && !matches!(algorithm, Algorithm::Rsa { hash: None })
    }

    fn spawn_task(&mut self, f: impl Future<Output = ()> + Send + 'static) -> tokio::task::AbortHandle {
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(f)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The connection is gone: hang up what its sessions still run (the
        // listeners and relays go with `tasks`).
        for st in self.chans.values() {
            st.hangup();
        }
    }
}

fn reply(session: &mut Session, id: ChannelId, ok: bool) -> Result<(), SshdError> {
    if ok {
        session.channel_success(id)?
    } else {
        session.channel_failure(id)?
    }
    Ok(())
}

impl russh::server::Handler for Conn {
    type Error = SshdError;

    async fn auth_publickey_offered(&mut self, _user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, SshdError> {
        Ok(if self.accepts(offer.public_key, offer.algorithm) { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey(&mut self, _user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, SshdError> {
        Ok(if self.accepts(key.public_key, key.algorithm) { Auth::Accept } else { Auth::reject() })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), SshdError> {
        let id = channel.id();
        let state = session::ChanState::start(channel, session.handle(), self.shared.clone());
        self.chans.insert(id, state);
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), SshdError> {
        // Dial in a task: a slow connect must not stall the connection.
        self.spawn_task(forward::direct_tcpip(channel, host.to_string(), port, reply));
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), SshdError> {
        if let Some(st) = self.chans.remove(&channel) {
            st.hangup();
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), SshdError> {
        let ok = match self.chans.get_mut(&channel) {
            Some(st) => st.env(name, value),
            None => false,
        };
        reply(session, channel, ok)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        px: u32,
        py: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), SshdError> {
        let ok = match self.chans.get_mut(&channel) {
            Some(st) => st.pty(term, pty::Size { cols, rows, px, py }, modes),
            None => false,
        };
        reply(session, channel, ok)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), SshdError> {
        reply(session, channel, false)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        px: u32,
        py: u32,
        session: &mut Session,
    ) -> Result<(), SshdError> {
        let ok = match self.chans.get(&channel) {
            Some(st) => st.resize(pty::Size { cols, rows, px, py }),
            None => false,
        };
        reply(session, channel, ok)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), SshdError> {
        let ok = match self.chans.get_mut(&channel) {
            Some(st) => st.exec(None),
            None => false,
        };
        reply(session, channel, ok)
    }

    async fn exec_request(&mut self, channel: ChannelId, data: &[u8], session: &mut Session) -> Result<(), SshdError> {
        let ok = match self.chans.get_mut(&channel) {
            Some(st) => st.exec(Some(&String::from_utf8_lossy(data))),
            None => false,
        };
        reply(session, channel, ok)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), SshdError> {
        let ok = match self.chans.get_mut(&channel) {
            Some(st) => st.subsystem(name),
            None => false,
        };
        reply(session, channel, ok)
    }

    async fn signal(&mut self, channel: ChannelId, signal: Sig, _session: &mut Session) -> Result<(), SshdError> {
        if let (Some(st), Some(signo)) = (self.chans.get(&channel), session::signal_number(&sig_name(&signal))) {
            st.kill(signo);
        }
        Ok(())
    }

    async fn tcpip_forward(&mut self, address: &str, port: &mut u32, session: &mut Session) -> Result<bool, SshdError> {
        let Ok(requested) = u16::try_from(*port) else { return Ok(false) };
        let listener = match forward::bind(address, requested).await {
            Ok(l) => l,
            Err(_) => return Ok(false),
        };
        let bound = match listener.local_addr() {
            Ok(a) => u32::from(a.port()),
            Err(_) => return Ok(false),
        };
        *port = bound;
        let task = forward::serve_remote(listener, session.handle(), address.to_string(), bound);
        let abort = self.spawn_task(task);
        if let Some(old) = self.forwards.insert((address.to_string(), bound), abort) {
            old.abort();
        }
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, SshdError> {
        Ok(match self.forwards.remove(&(address.to_string(), port)) {
            Some(abort) => {
                abort.abort();
                true
            }
            None => false,
        })
    }
}

/// The RFC 4254 name of a russh signal ("TERM", …).
pub fn sig_name(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(c) => c.as_str(),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sshd_flags() {
        let p = |a: &[&str]| parse_args(&args(a));
        assert_eq!(p(&[]).unwrap().unwrap().address, DEFAULT_ADDRESS);
        assert_eq!(p(&["--address=127.0.0.1:2022"]).unwrap().unwrap().address, "127.0.0.1:2022");
        assert_eq!(p(&["--address", "[::1]:22"]).unwrap().unwrap().address, "[::1]:22");
        assert_eq!(
            p(&["-address=0.0.0.0:2222", "-inheritDaemonEnv", "-logLevel=fatal"]).unwrap().unwrap().address,
            "0.0.0.0:2222"
        );
        assert!(p(&["--help"]).unwrap().is_none());
        assert!(p(&["--address"]).is_err());
        assert!(p(&["--bogus"]).is_err());
        assert!(p(&["stray"]).is_err());
        assert!(p(&["-hostKey=x"]).is_err());
    }

    #[test]
    fn sshd_addresses() {
        assert_eq!(split_address("0.0.0.0:2222").unwrap(), ("0.0.0.0".to_string(), 2222));
        assert_eq!(split_address("[::]:22").unwrap(), ("[::]".to_string(), 22));
        assert!(split_address("nohost").is_err());
        assert!(split_address("h:99999").is_err());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let r = |h: &str| rt.block_on(resolve(h, 7)).unwrap();
        assert_eq!(r("localhost"), vec!["127.0.0.1:7".parse().unwrap()]);
        assert_eq!(r("[::1]"), vec!["[::1]:7".parse().unwrap()]);
        assert_eq!(r(""), vec!["0.0.0.0:7".parse().unwrap()]);
        assert_eq!(r("10.1.2.3"), vec!["10.1.2.3:7".parse().unwrap()]);
    }

    #[test]
    fn sshd_keys_are_checked() {
        assert!(matches!(parse_host_key("not a key"), Err(SshdError::HostKey(_))));
        assert!(matches!(parse_authorized_key("  "), Err(SshdError::AuthKey(_))));
        assert!(matches!(parse_authorized_key("ssh-ed25519 notbase64!"), Err(SshdError::AuthKey(_))));
        let k = parse_authorized_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKmPY7d/lwaR2LMxwqjoiVR5njmeh+oYU4TG0WlE3ohF some comment\n",
        )
        .unwrap();
        assert_eq!(k.algorithm(), Algorithm::Ed25519);
        assert!(is_sshd_var(std::ffi::OsStr::new("SSHD_HOSTKEY")));
        assert!(!is_sshd_var(std::ffi::OsStr::new("SSH_AUTH_SOCK")));
    }
}
