//! Certificates for tests: one CA and leaf certificates it signs, written as
//! PEM files. Only with the `test-certs` feature (and this crate's tests).

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::tls::PemFiles;

/// A test CA: its certificate (PEM) and what signs the leaves.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pub cert_pem: String,
}

/// What a leaf certificate is made with; the default is what Diego's
/// components use: serverAuth and clientAuth, SANs 127.0.0.1 and localhost.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    /// IP addresses or DNS names.
    pub sans: Vec<String>,
    pub server_auth: bool,
    pub client_auth: bool,
    /// (year, month, day) overrides of the validity period.
    pub not_before: Option<(i32, u8, u8)>,
    pub not_after: Option<(i32, u8, u8)>,
}

impl Default for LeafSpec {
    fn default() -> Self {
        Self {
            common_name: "celld test".into(),
            sans: vec!["127.0.0.1".into(), "localhost".into()],
            server_auth: true,
            client_auth: true,
            not_before: None,
            not_after: None,
        }
    }
}

/// A leaf's certificate and key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(common_name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self { params, key, cert_pem })
    }

    pub fn leaf(&self, spec: &LeafSpec) -> Result<Leaf, rcgen::Error> {
        let mut params = CertificateParams::new(spec.sans.clone())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.common_name.as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if spec.server_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if !spec.server_auth && !spec.client_auth {
            // Some usage other than TLS, so the extension is present.
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::CodeSigning);
        }
        if let Some((y, m, d)) = spec.not_before {
            params.not_before = rcgen::date_time_ymd(y, m, d);
        }
        if let Some((y, m, d)) = spec.not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Writes the CA and a leaf as `NAME-ca.pem`, `NAME-cert.pem`,
    /// `NAME-key.pem` in `dir`.
    pub fn write(&self, dir: &Path, name: &str, leaf: &Leaf) -> std::io::Result<PemFiles> {
        let files = PemFiles::new(
            dir.join(format!("{name}-ca.pem")),
            dir.join(format!("{name}-cert.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&files.ca, &self.cert_pem)?;
        std::fs::write(&files.cert, &leaf.cert_pem)?;
        std::fs::write(&files.key, &leaf.key_pem)?;
        Ok(files)
    }
}
