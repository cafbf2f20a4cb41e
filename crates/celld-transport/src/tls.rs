//! Optional mutual TLS for celld's TCP listeners (`--garden-tcp`, the gRPC
//! listeners) and for their clients (cellctl, the tests, cell ⇄ scheduler).
//!
//! One deployment CA signs every party's certificate: a server accepts only
//! clients that present a certificate the CA signed, and a client accepts only
//! a server whose certificate the CA signed for the address it dialled. The
//! same certificate serves as a process's server and client identity (a cell
//! serves `Cell` and dials the scheduler), so it must allow both uses. The
//! files are read once, at start: a missing or unreadable one fails start-up
//! with its name. Always on ring (the project avoids aws-lc-rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {}: {source}", path.display())]
    Read { flag: String, path: PathBuf, source: std::io::Error },
    #[error("{flag} {}: {what}", path.display())]
    Pem { flag: String, path: PathBuf, what: String },
    #[error("{0}")]
    Incomplete(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The three files of one party, named by the flags they came from (for errors).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The flags' common prefix, e.g. `--garden-tls`.
    pub prefix: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// `PREFIX-cert`, `PREFIX-key` and `PREFIX-ca`: all three or none (half a
    /// configuration is refused rather than silently served in the clear).
    pub fn from_flags(
        prefix: &str,
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
        ca: Option<&PathBuf>,
    ) -> Result<Option<Self>, TlsError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(c), Some(k), Some(a)) => {
                Ok(Some(Self { prefix: prefix.to_string(), cert: c.clone(), key: k.clone(), ca: a.clone() }))
            }
            _ => Err(TlsError::Incomplete(format!(
                "{prefix}-cert, {prefix}-key and {prefix}-ca go together (mutual TLS needs all three)"
            ))),
        }
    }

    /// Reads and parses the three files.
    pub fn load(&self) -> Result<Arc<TlsMaterial>, TlsError> {
        let read = |suffix: &str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                flag: format!("{}-{suffix}", self.prefix),
                path: path.to_path_buf(),
                source,
            })
        };
        let pem_err = |suffix: &str, path: &Path, what: String| TlsError::Pem {
            flag: format!("{}-{suffix}", self.prefix),
            path: path.to_path_buf(),
            what,
        };
        let cert_pem = read("cert", &self.cert)?;
        let key_pem = read("key", &self.key)?;
        let ca_pem = read("ca", &self.ca)?;
        let certs = parse_certs(&cert_pem).map_err(|w| pem_err("cert", &self.cert, w))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| pem_err("key", &self.key, format!("no PEM private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for c in parse_certs(&ca_pem).map_err(|w| pem_err("ca", &self.ca, w))? {
            roots.add(c).map_err(|e| pem_err("ca", &self.ca, format!("not a CA certificate: {e}")))?;
        }
        Ok(Arc::new(TlsMaterial { cert_pem, key_pem, ca_pem, certs, key, roots: Arc::new(roots) }))
    }
}

fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// One party's certificate chain, key and the CA it trusts, parsed.
pub struct TlsMaterial {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for TlsMaterial {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").field("certs", &self.certs.len()).finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsMaterial {
    /// A server that requires a client certificate signed by the CA.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
        Ok(Arc::new(config))
    }

    /// A client that trusts only the CA and presents its own certificate.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
        Ok(Arc::new(config))
    }

    /// The same, for tonic's server (client certificates required).
    pub fn tonic_server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
    }

    /// The same, for tonic's channels.
    pub fn tonic_client(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_configuration_is_refused() {
        let p = PathBuf::from("/x");
        let e = TlsFiles::from_flags("--garden-tls", Some(&p), None, Some(&p)).unwrap_err();
        assert!(e.to_string().contains("--garden-tls-key"), "{e}");
        assert!(TlsFiles::from_flags("--garden-tls", None, None, None).unwrap().is_none());
    }

    #[test]
    fn a_missing_file_is_named() {
        let p = PathBuf::from("/nonexistent/celld-test/cert.pem");
        let f = TlsFiles::from_flags("--grpc-tls", Some(&p), Some(&p), Some(&p)).unwrap().unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("--grpc-tls-cert /nonexistent/celld-test/cert.pem"), "{e}");
    }

    #[test]
    fn garbage_is_named() {
        let dir = std::env::temp_dir().join(format!("celld-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("garbage.pem");
        std::fs::write(&p, b"not a certificate\n").unwrap();
        let f = TlsFiles::from_flags("--tls", Some(&p), Some(&p), Some(&p)).unwrap().unwrap();
        let e = f.load().unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.contains("--tls-cert") && e.contains("garbage.pem"), "{e}");
    }
}
