//! Optional mutual TLS for celld's TCP listeners (`--garden-tcp`, the gRPC
//! listeners) and for their clients (cellctl, the tests, cell ⇄ scheduler).
//!
//! One deployment CA signs every party's certificate: a server accepts only
//! clients that present a certificate the CA signed, and a client accepts only
//! a server whose certificate the CA signed for the address it dialled. The
//! same certificate serves as a process's server and client identity (a cell
//! serves `Cell` and dials the scheduler), so it must allow both uses. The
//! files are read once, at start: a missing or unreadable one fails start-up
//! with its name. `TlsMaterial::load` also checks them for their use (what
//! a cell joined to Diego does: validity, SAN, extended key usage, the key
//! against the certificate). Always on ring (the project avoids aws-lc-rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}{}: {source}", flag_label(flag), path.display())]
    Read { flag: String, path: PathBuf, source: std::io::Error },
    #[error("{}{}: {problem}", flag_label(flag), path.display())]
    Invalid { flag: String, path: PathBuf, problem: String },
    #[error("{0}")]
    Incomplete(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// "FLAG " before a file's path in errors, when the file came from a flag.
fn flag_label(flag: &str) -> String {
    if flag.is_empty() { String::new() } else { format!("{flag} ") }
}

/// The three files of one party, named by the flags they came from (for errors).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The flags' common prefix, e.g. `--garden-tls`; empty when the files
    /// did not come from `PREFIX-cert`/`-key`/`-ca` flags (errors then name
    /// the paths only).
    pub prefix: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The use a certificate is checked for: its extended key usage must allow
/// it (serverAuth, clientAuth, or both for one identity used both ways).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    Both,
}

impl Usage {
    fn server(self) -> bool {
        matches!(self, Usage::Server | Usage::Both)
    }
    fn client(self) -> bool {
        matches!(self, Usage::Client | Usage::Both)
    }
}

impl TlsFiles {
    /// Three files that did not come from one flag prefix.
    pub fn new(ca: PathBuf, cert: PathBuf, key: PathBuf) -> Self {
        Self { prefix: String::new(), cert, key, ca }
    }

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
        TlsMaterial::read(self, None).map(Arc::new)
    }

    /// The flag a file came from (empty without a prefix).
    fn flag(&self, suffix: &str) -> String {
        if self.prefix.is_empty() { String::new() } else { format!("{}-{suffix}", self.prefix) }
    }

    fn invalid(&self, suffix: &str, path: &Path, problem: impl Into<String>) -> TlsError {
        TlsError::Invalid { flag: self.flag(suffix), path: path.to_path_buf(), problem: problem.into() }
    }
}

fn parse_certs(
    files: &TlsFiles,
    suffix: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| files.invalid(suffix, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(files.invalid(suffix, path, "holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"));
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

/// What is checked of the files for a use (`TlsMaterial::load`), so that a
/// deployment mistake fails start-up with the file's name and its flaw
/// instead of as an opaque handshake failure later.
mod check {
    use super::*;

    pub fn x509<'a>(
        files: &TlsFiles,
        suffix: &str,
        path: &Path,
        der: &'a CertificateDer<'_>,
    ) -> Result<X509Certificate<'a>, TlsError> {
        X509Certificate::from_der(der.as_ref())
            .map(|(_, c)| c)
            .map_err(|e| files.invalid(suffix, path, format!("not an X.509 certificate: {e}")))
    }

    /// Refuses a certificate outside its validity period, saying which end.
    pub fn validity(
        files: &TlsFiles,
        suffix: &str,
        path: &Path,
        what: &str,
        cert: &X509Certificate<'_>,
        now: ASN1Time,
    ) -> Result<(), TlsError> {
        let v = cert.validity();
        if now < v.not_before {
            return Err(files.invalid(suffix, path, format!("{what} is not valid yet: not before {}", v.not_before)));
        }
        if now > v.not_after {
            return Err(files.invalid(suffix, path, format!("{what} has expired: not after {}", v.not_after)));
        }
        Ok(())
    }

    /// The leaf's own checks: validity, SAN (servers), extended key usage.
    pub fn leaf(files: &TlsFiles, leaf: &X509Certificate<'_>, usage: Usage, now: ASN1Time) -> Result<(), TlsError> {
        let bad = |problem: String| files.invalid("cert", &files.cert, problem);
        validity(files, "cert", &files.cert, "the certificate", leaf, now)?;
        if usage.server() {
            // Clients verify the name they dialled against the SANs only; a
            // common name alone matches nothing.
            let sans = leaf.subject_alternative_name().map_err(|e| bad(format!("unreadable subjectAltName: {e}")))?;
            if sans.is_none_or(|s| s.value.general_names.is_empty()) {
                return Err(bad(
                    "a server certificate needs a subjectAltName (DNS name or IP) for clients to verify; it has none"
                        .into(),
                ));
            }
        }
        // No extension means any usage (as Go's crypto/tls and webpki take it).
        let eku = leaf.extended_key_usage().map_err(|e| bad(format!("unreadable extendedKeyUsage: {e}")))?;
        if let Some(eku) = eku {
            let e = eku.value;
            if usage.server() && !(e.any || e.server_auth) {
                return Err(bad(
                    "its extendedKeyUsage lacks serverAuth, so it cannot serve TLS; reissue it with serverAuth".into(),
                ));
            }
            if usage.client() && !(e.any || e.client_auth) {
                return Err(bad(
                    "its extendedKeyUsage lacks clientAuth, so it cannot be a client identity; reissue it with clientAuth"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The key is the certificate's.
    pub fn key_matches(
        files: &TlsFiles,
        certs: &[CertificateDer<'static>],
        key: &PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        let signing = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| files.invalid("key", &files.key, format!("unusable private key: {e}")))?;
        match rustls::sign::CertifiedKey::new(certs.to_vec(), signing).keys_match() {
            Ok(()) => Ok(()),
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(files.invalid(
                "key",
                &files.key,
                format!("this key does not belong to the certificate in {}", files.cert.display()),
            )),
            Err(e) => Err(files.invalid("key", &files.key, format!("cannot match it to the certificate: {e}"))),
        }
    }
}

impl TlsMaterial {
    /// Reads the three files and checks them for `usage`: the CA's and the
    /// certificate's validity, a server's SAN, the extended key usage, the
    /// key against the certificate.
    pub fn load(files: &TlsFiles, usage: Usage) -> Result<Self, TlsError> {
        Self::read(files, Some(usage))
    }

    fn read(files: &TlsFiles, usage: Option<Usage>) -> Result<Self, TlsError> {
        let read = |suffix: &str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                flag: files.flag(suffix),
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_pem = read("cert", &files.cert)?;
        let key_pem = read("key", &files.key)?;
        let ca_pem = read("ca", &files.ca)?;
        let certs = parse_certs(files, "cert", &files.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            files.invalid("key", &files.key, format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"))
        })?;
        let cas = parse_certs(files, "ca", &files.ca, &ca_pem)?;
        if let Some(usage) = usage {
            let now = ASN1Time::now();
            for der in &cas {
                let ca = check::x509(files, "ca", &files.ca, der)?;
                check::validity(files, "ca", &files.ca, "the CA certificate", &ca, now)?;
            }
            check::leaf(files, &check::x509(files, "cert", &files.cert, &certs[0])?, usage, now)?;
            check::key_matches(files, &certs, &key)?;
        }
        let mut roots = RootCertStore::empty();
        for der in cas {
            roots.add(der).map_err(|e| files.invalid("ca", &files.ca, format!("not a usable CA certificate: {e}")))?;
        }
        Ok(Self { cert_pem, key_pem, ca_pem, certs, key, roots: Arc::new(roots) })
    }

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
