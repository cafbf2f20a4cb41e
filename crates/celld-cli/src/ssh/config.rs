//! How the ssh client talks: its algorithms (modern only), window and packet
//! sizes, copy buffers and timeouts, in one place for every other ssh file.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::keys::{Algorithm, EcdsaCurve, HashAlg};

/// How often a `keepalive@cloudfoundry.org` global request is sent (cf's value).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// TCP connect plus SSH handshake and authentication.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Our receive window per channel: large, so a `-L` forward is not held back by
/// window adjustments.
const WINDOW: u32 = 16 << 20;
/// Largest data packet the server may send us.
const MAX_PACKET: u32 = 65535;
/// Copy buffers of forwarded connections and stdin.
pub(super) const COPY_BUF: usize = 64 * 1024;

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
