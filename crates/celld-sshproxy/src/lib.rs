//! The ssh proxy (`--ssh-proxy-listen`): what Diego's ssh-proxy is. A user
//! logs in as `cf:APP_GUID/INDEX` with a one-time code, or as
//! `diego:PROCESS_GUID/INDEX` with the operator's credentials; an
//! [`Authority`] (the app layer) checks the login and names the instance. The
//! proxy then dials that instance's sshd over the container network, checks
//! its host key against the fingerprint recorded for the LRP, logs in with the
//! LRP's key, and relays every channel and request both ways (`relay`).

pub mod metrics;
mod quickack;
mod relay;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};
use russh::{Preferred, cipher, kex};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A login the proxy refuses; the reason goes to the logs, not to the
    /// client (it sees "Permission denied", as with Diego).
    #[error("{0}")]
    Refused(String),
    #[error("the ssh proxy's host key {}: {msg}", path.display())]
    HostKey { path: PathBuf, msg: String },
    #[error("generating an ssh key: {0}")]
    KeyGen(String),
    #[error("the instance's sshd at {addr}: {msg}")]
    Backend { addr: SocketAddr, msg: String },
    #[error(
        "--ssh-ciphers: '{0}' is not one of aes128-gcm@openssh.com, aes256-gcm@openssh.com, chacha20-poly1305@openssh.com"
    )]
    Cipher(String),
    #[error("the ssh proxy cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// Who a user logs in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// `cf:APP_GUID/INDEX` (the app's name is accepted in place of its guid).
    Cf { app: String, index: u32 },
    /// `diego:PROCESS_GUID/INDEX`.
    Diego { process_guid: String, index: u32 },
}

impl Login {
    pub fn parse(user: &str) -> Result<Self, ProxyError> {
        let refuse =
            || ProxyError::Refused(format!("user '{user}' is neither cf:APP_GUID/INDEX nor diego:PROCESS_GUID/INDEX"));
        let (realm, rest) = user.split_once(':').ok_or_else(refuse)?;
        let (id, index) = rest.rsplit_once('/').ok_or_else(refuse)?;
        if id.is_empty() || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse());
        }
        let index: u32 = index.parse().map_err(|_| refuse())?;
        match realm {
            "cf" => Ok(Self::Cf { app: id.to_string(), index }),
            "diego" => Ok(Self::Diego { process_guid: id.to_string(), index }),
            _ => Err(refuse()),
        }
    }
}

/// The instance a login reaches and how to prove it is the right one.
#[derive(Debug, Clone)]
pub struct Target {
    pub process_guid: String,
    pub index: u32,
    /// The app's log guid, for "Successful remote access by …" ("" for none).
    pub log_guid: String,
    /// The instance's sshd, on the container network.
    pub addr: SocketAddr,
    /// The sshd's host key fingerprint as the LRP records it (SHA256,
    /// unpadded base64, with or without the "SHA256:" prefix).
    pub host_fingerprint: String,
    /// The key the proxy logs in to the sshd with (OpenSSH PEM).
    pub private_key_pem: String,
}

/// Decides who may reach which instance, and hears when sessions start and end.
#[async_trait::async_trait]
pub trait Authority: Send + Sync + 'static {
    async fn authorize(&self, login: &Login, password: &str, remote: SocketAddr) -> Result<Target, ProxyError>;
    fn session_started(&self, target: &Target, remote: SocketAddr);
    fn session_ended(&self, target: &Target, remote: SocketAddr);
}

pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// Where the proxy's own host key lives; made on first start.
    pub host_key_path: PathBuf,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// What users' clients may encrypt with (`parse_ciphers`).
    pub ciphers: Vec<cipher::Name>,
    pub metrics: metrics::SshMetrics,
}

/// The ciphers offered to users unless `--ssh-ciphers` says otherwise. An SSH
/// client picks the first of its own list that the server offers, and
/// OpenSSH's begins with chacha20-poly1305; leaving it out makes clients take
/// AES-GCM, which AES-NI makes several times cheaper for both ends (CF's
/// proxy also lets operators choose its ciphers). Every client that can talk
/// to CF (OpenSSH since 6.2, Go's x/crypto behind `cf ssh`, PuTTY) has it.
pub const DEFAULT_CIPHERS: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com";

/// Parses a comma-separated cipher list; only the AEAD ciphers are allowed.
pub fn parse_ciphers(list: &str) -> Result<Vec<cipher::Name>, ProxyError> {
    const ALLOWED: [cipher::Name; 3] = [cipher::AES_128_GCM, cipher::AES_256_GCM, cipher::CHACHA20_POLY1305];
    let names: Vec<cipher::Name> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| ALLOWED.iter().copied().find(|a| a.as_ref() == n).ok_or_else(|| ProxyError::Cipher(n.to_string())))
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Err(ProxyError::Cipher(list.to_string()));
    }
    Ok(names)
}

pub struct SshProxy {
    cfg: ProxyConfig,
    key: PrivateKey,
    authority: Arc<dyn Authority>,
}

/// Modern algorithms only: curve25519 (and its ML-KEM hybrid) key exchange,
/// ed25519/rsa-sha2 keys, AEAD ciphers (so no separate MAC).
pub fn preferred(ciphers: &[cipher::Name]) -> Preferred {
    Preferred {
        kex: std::borrow::Cow::Borrowed(&[
            kex::MLKEM768X25519_SHA256,
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_SUPPORT_AS_CLIENT,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
        ]),
        key: std::borrow::Cow::Owned(vec![
            Algorithm::Ed25519,
            Algorithm::Rsa { hash: Some(HashAlg::Sha512) },
            Algorithm::Rsa { hash: Some(HashAlg::Sha256) },
        ]),
        cipher: std::borrow::Cow::Owned(ciphers.to_vec()),
        ..Preferred::default()
    }
}

/// A new ed25519 key from the kernel's random pool.
pub fn generate_key() -> Result<PrivateKey, ProxyError> {
    let mut seed = [0u8; 32];
    let mut got = 0;
    while got < seed.len() {
        let rest = &mut seed[got..];
        // SAFETY: the pointer and length describe `rest`, which outlives the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ProxyError::KeyGen(format!("getrandom: {e}")));
        }
        got += usize::try_from(n).unwrap_or(0);
    }
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

/// A key as OpenSSH writes it.
pub fn key_pem(key: &PrivateKey) -> Result<String, ProxyError> {
    key.to_openssh(LineEnding::LF).map(|s| s.to_string()).map_err(|e| ProxyError::KeyGen(e.to_string()))
}

/// `ssh-ed25519 AAAA…` for authorized_keys.
pub fn authorized_key(key: &PrivateKey) -> Result<String, ProxyError> {
    key.public_key().to_openssh().map_err(|e| ProxyError::KeyGen(e.to_string()))
}

/// "SHA256:<base64>", as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Whether `key` is the one `expected` names. Only SHA256 fingerprints are
/// made here (MD5/SHA1 ones, 47/59 characters, are refused as unknown).
pub fn fingerprint_matches(expected: &str, key: &PublicKey) -> bool {
    let want = expected.strip_prefix("SHA256:").unwrap_or(expected).trim_end_matches('=');
    let got = fingerprint(key);
    let got = got.strip_prefix("SHA256:").unwrap_or(&got);
    !want.is_empty() && want == got
}

fn load_or_create_key(path: &Path) -> Result<PrivateKey, ProxyError> {
    let err = |msg: String| ProxyError::HostKey { path: path.to_path_buf(), msg };
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            PrivateKey::from_openssh(pem.as_bytes()).map_err(|e| err(format!("not an OpenSSH private key: {e}")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_key()?;
            let pem = key_pem(&key)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
            }
            // Written whole under a temporary name, readable by root only.
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| err(e.to_string()))?;
                f.write_all(pem.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| err(e.to_string()))?;
            }
            std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

impl SshProxy {
    pub fn new(cfg: ProxyConfig, authority: Arc<dyn Authority>) -> Result<Arc<Self>, ProxyError> {
        let key = load_or_create_key(&cfg.host_key_path)?;
        Ok(Arc::new(Self { cfg, key, authority }))
    }

    /// The proxy's host key fingerprint, for `cellctl ssh` to check.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.key.public_key())
    }

    pub async fn bind(&self) -> Result<TcpListener, ProxyError> {
        TcpListener::bind(self.cfg.listen).await.map_err(|source| ProxyError::Listen { addr: self.cfg.listen, source })
    }

    /// Serves connections until `shutdown` resolves; sessions in progress
    /// are left to end on their own.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
        let config = Arc::new(russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-diego-ssh-proxy".into()),
            keys: vec![self.key.clone()],
            preferred: preferred(&self.cfg.ciphers),
            inactivity_timeout: Some(self.cfg.idle_timeout),
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            window_size: relay::USER_WINDOW,
            maximum_packet_size: relay::MAX_PACKET,
            channel_buffer_size: relay::CHANNEL_BUFFER,
            nodelay: true,
            ..Default::default()
        });
        tokio::pin!(shutdown);
        loop {
            let (stream, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "ssh proxy: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            // russh applies `nodelay` only to sockets it accepts itself: without
            // this, Nagle holds each small reply for the peer's delayed ACK (40 ms).
            let _ = stream.set_nodelay(true);
            let stream = tokio::io::BufReader::with_capacity(relay::READ_BUFFER, quickack::QuickAck::new(stream));
            let handler = relay::Connection::new(self.authority.clone(), remote, self.cfg.metrics.clone());
            let config = config.clone();
            tokio::spawn(async move {
                match russh::server::run_stream(config, stream, handler).await {
                    Ok(session) => {
                        if let Err(e) = session.await {
                            tracing::debug!(%remote, error = %e, "ssh proxy: connection ended with an error");
                        }
                    }
                    Err(e) => tracing::debug!(%remote, error = %e, "ssh proxy: handshake failed"),
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_lists_parse_and_refuse_what_is_not_aead() {
        assert_eq!(parse_ciphers(DEFAULT_CIPHERS).ok(), Some(vec![cipher::AES_128_GCM, cipher::AES_256_GCM]));
        assert_eq!(
            parse_ciphers(" chacha20-poly1305@openssh.com, aes256-gcm@openssh.com ,").ok(),
            Some(vec![cipher::CHACHA20_POLY1305, cipher::AES_256_GCM])
        );
        let e = parse_ciphers("aes128-gcm@openssh.com,aes128-cbc").unwrap_err().to_string();
        assert!(e.contains("'aes128-cbc' is not one of"), "{e}");
        assert!(parse_ciphers(" , ").is_err());
    }

    #[test]
    fn logins_parse() {
        assert_eq!(Login::parse("cf:abc-123/0").ok(), Some(Login::Cf { app: "abc-123".into(), index: 0 }));
        assert_eq!(Login::parse("cf:hello/12").ok(), Some(Login::Cf { app: "hello".into(), index: 12 }));
        assert_eq!(Login::parse("diego:pg-1/3").ok(), Some(Login::Diego { process_guid: "pg-1".into(), index: 3 }));
        for bad in
            ["root", "cf:", "cf:/0", "cf:app", "cf:app/", "cf:app/-1", "cf:app/x", "vcap:app/0", "cf:app/99999999999"]
        {
            assert!(Login::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip_and_fingerprints_match() {
        let key = generate_key().unwrap();
        let pem = key_pem(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let back = PrivateKey::from_openssh(pem.as_bytes()).unwrap();
        let fp = fingerprint(back.public_key());
        assert!(fp.starts_with("SHA256:") && fp.len() == 7 + 43, "{fp}");
        assert!(fingerprint_matches(&fp, key.public_key()));
        assert!(fingerprint_matches(&fp[7..], key.public_key()));
        assert!(!fingerprint_matches("", key.public_key()));
        let other = generate_key().unwrap();
        assert!(!fingerprint_matches(&fp, other.public_key()));
        assert!(authorized_key(&key).unwrap().starts_with("ssh-ed25519 AAAA"));
    }
}
