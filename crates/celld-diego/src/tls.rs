//! Mutual TLS from the PEM files a Diego component is given (a CA, a
//! certificate, its key), as BBS, Locket and the rep use it: a server requires
//! a client certificate the CA signed; a client presents its own and trusts
//! only servers the CA signed.
//!
//! Every file is checked when it is loaded, so a deployment mistake fails
//! start-up with the file's name and what is wrong with it (unreadable, not
//! PEM, a key that is not the certificate's, expired or not yet valid, a
//! server certificate without a SAN, an extended key usage that forbids the
//! role) instead of as an opaque handshake failure later. Always on ring.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl TlsError {
    fn invalid(path: &Path, problem: impl Into<String>) -> Self {
        Self::Invalid { path: path.to_path_buf(), problem: problem.into() }
    }
}

/// The three PEM files of one party.
#[derive(Debug, Clone)]
pub struct PemFiles {
    /// The CA that signs the peers this party accepts.
    pub ca: PathBuf,
    /// This party's certificate (chain, leaf first).
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The role the certificate is checked for: its extended key usage must
/// allow it (serverAuth, clientAuth, or both for a certificate used both ways).
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

/// One party's checked identity and the CA it trusts.
pub struct TlsIdentity {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for TlsIdentity {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("certs", &self.certs.len()).finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::invalid(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::invalid(path, "holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// Refuses a certificate outside its validity period, saying which end.
fn check_validity(path: &Path, what: &str, cert: &X509Certificate<'_>, now: ASN1Time) -> Result<(), TlsError> {
    let validity = cert.validity();
    if now < validity.not_before {
        return Err(TlsError::invalid(path, format!("{what} is not valid yet: not before {}", validity.not_before)));
    }
    if now > validity.not_after {
        return Err(TlsError::invalid(path, format!("{what} has expired: not after {}", validity.not_after)));
    }
    Ok(())
}

fn parse_x509<'a>(path: &Path, der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, TlsError> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, c)| c)
        .map_err(|e| TlsError::invalid(path, format!("not an X.509 certificate: {e}")))
}

/// The leaf's own checks: validity, SAN (servers), extended key usage.
fn check_leaf(path: &Path, leaf: &X509Certificate<'_>, usage: Usage, now: ASN1Time) -> Result<(), TlsError> {
    check_validity(path, "the certificate", leaf, now)?;
    if usage.server() {
        // Clients verify the name they dialled against the SANs only; a
        // common name alone matches nothing.
        let sans = leaf
            .subject_alternative_name()
            .map_err(|e| TlsError::invalid(path, format!("unreadable subjectAltName: {e}")))?;
        if sans.is_none_or(|s| s.value.general_names.is_empty()) {
            return Err(TlsError::invalid(
                path,
                "a server certificate needs a subjectAltName (DNS name or IP) for clients to verify; it has none",
            ));
        }
    }
    // No extension means any usage (as Go's crypto/tls and webpki take it).
    let eku =
        leaf.extended_key_usage().map_err(|e| TlsError::invalid(path, format!("unreadable extendedKeyUsage: {e}")))?;
    if let Some(eku) = eku {
        let e = eku.value;
        if usage.server() && !(e.any || e.server_auth) {
            return Err(TlsError::invalid(
                path,
                "its extendedKeyUsage lacks serverAuth, so it cannot serve TLS; reissue it with serverAuth",
            ));
        }
        if usage.client() && !(e.any || e.client_auth) {
            return Err(TlsError::invalid(
                path,
                "its extendedKeyUsage lacks clientAuth, so it cannot be a client identity; reissue it with clientAuth",
            ));
        }
    }
    Ok(())
}

impl TlsIdentity {
    /// Reads and checks the three files for `usage`.
    pub fn load(files: &PemFiles, usage: Usage) -> Result<Self, TlsError> {
        let ca_pem = read(&files.ca)?;
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let now = ASN1Time::now();

        let mut roots = RootCertStore::empty();
        for der in parse_certs(&files.ca, &ca_pem)? {
            let ca = parse_x509(&files.ca, &der)?;
            check_validity(&files.ca, "the CA certificate", &ca, now)?;
            roots
                .add(der.clone())
                .map_err(|e| TlsError::invalid(&files.ca, format!("not a usable CA certificate: {e}")))?;
        }

        let certs = parse_certs(&files.cert, &cert_pem)?;
        let leaf = parse_x509(&files.cert, &certs[0])?;
        check_leaf(&files.cert, &leaf, usage, now)?;

        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::invalid(&files.key, format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")))?;
        let signing = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| TlsError::invalid(&files.key, format!("unusable private key: {e}")))?;
        match rustls::sign::CertifiedKey::new(certs.clone(), signing).keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::invalid(
                    &files.key,
                    format!("this key does not belong to the certificate in {}", files.cert.display()),
                ));
            }
            Err(e) => return Err(TlsError::invalid(&files.key, format!("cannot match it to the certificate: {e}"))),
        }
        Ok(Self { ca_pem, cert_pem, key_pem, certs, key, roots: Arc::new(roots) })
    }

    /// A server config that requires a client certificate the CA signed.
    /// Sets no ALPN: the caller adds "h2"/"http/1.1" for what it serves.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(format!("server certificate: {e}")))?;
        Ok(Arc::new(config))
    }

    /// A client config presenting this identity and trusting only the CA.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?;
        Ok(Arc::new(config))
    }

    /// The same identity for a tonic channel (Locket is gRPC).
    pub fn tonic_client(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// The same identity for a tonic server, requiring client certificates.
    pub fn tonic_server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
