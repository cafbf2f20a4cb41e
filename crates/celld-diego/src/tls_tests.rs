use super::*;
use crate::test_certs::{LeafSpec, TestCa};
use std::path::PathBuf;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("celld-diego-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn files_for(dir: &Dir, spec: &LeafSpec) -> PemFiles {
    let ca = TestCa::new("test CA").unwrap();
    let leaf = ca.leaf(spec).unwrap();
    ca.write(&dir.0, "x", &leaf).unwrap()
}

fn problem(err: TlsError) -> (PathBuf, String) {
    match err {
        TlsError::Invalid { path, problem, .. } => (path, problem),
        other => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn a_good_identity_loads_for_both_roles_and_builds_configs() {
    let d = tmp("good");
    let files = files_for(&d, &LeafSpec::default());
    let id = TlsIdentity::load(&files, Usage::Both).unwrap();
    id.server_config().unwrap();
    id.client_config().unwrap();
}

#[test]
fn a_missing_file_names_the_file() {
    let d = tmp("missing");
    let mut files = files_for(&d, &LeafSpec::default());
    files.key = d.0.join("nope.pem");
    let err = TlsIdentity::load(&files, Usage::Client).unwrap_err();
    assert!(matches!(&err, TlsError::Read { path, .. } if path.ends_with("nope.pem")), "{err}");
    assert!(err.to_string().contains("nope.pem"), "{err}");
}

#[test]
fn a_file_that_is_not_pem_is_named() {
    let d = tmp("notpem");
    let files = files_for(&d, &LeafSpec::default());
    std::fs::write(&files.cert, "hello").unwrap();
    let (path, p) = problem(TlsIdentity::load(&files, Usage::Client).unwrap_err());
    assert_eq!(path, files.cert);
    assert!(p.contains("no PEM certificate"), "{p}");

    let files = files_for(&d, &LeafSpec::default());
    std::fs::write(&files.key, "hello").unwrap();
    let (path, p) = problem(TlsIdentity::load(&files, Usage::Client).unwrap_err());
    assert_eq!(path, files.key);
    assert!(p.contains("no PEM private key"), "{p}");
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let d = tmp("mismatch");
    let ca = TestCa::new("ca").unwrap();
    let a = ca.leaf(&LeafSpec::default()).unwrap();
    let b = ca.leaf(&LeafSpec::default()).unwrap();
    let files = ca.write(&d.0, "a", &a).unwrap();
    std::fs::write(&files.key, &b.key_pem).unwrap();
    let (path, p) = problem(TlsIdentity::load(&files, Usage::Server).unwrap_err());
    assert_eq!(path, files.key);
    assert!(p.contains("does not belong to the certificate"), "{p}");
}

#[test]
fn an_expired_certificate_is_refused() {
    let d = tmp("expired");
    let spec = LeafSpec { not_before: Some((2020, 1, 1)), not_after: Some((2021, 1, 1)), ..Default::default() };
    let files = files_for(&d, &spec);
    let (path, p) = problem(TlsIdentity::load(&files, Usage::Server).unwrap_err());
    assert_eq!(path, files.cert);
    assert!(p.contains("has expired"), "{p}");
}

#[test]
fn a_certificate_not_yet_valid_is_refused() {
    let d = tmp("future");
    let spec = LeafSpec { not_before: Some((2999, 1, 1)), not_after: Some((3000, 1, 1)), ..Default::default() };
    let files = files_for(&d, &spec);
    let (path, p) = problem(TlsIdentity::load(&files, Usage::Client).unwrap_err());
    assert_eq!(path, files.cert);
    assert!(p.contains("not valid yet"), "{p}");
}

#[test]
fn a_server_certificate_without_san_is_refused_but_a_client_may_have_none() {
    let d = tmp("nosan");
    let spec = LeafSpec { sans: vec![], ..Default::default() };
    let files = files_for(&d, &spec);
    let (path, p) = problem(TlsIdentity::load(&files, Usage::Server).unwrap_err());
    assert_eq!(path, files.cert);
    assert!(p.contains("subjectAltName"), "{p}");
    TlsIdentity::load(&files, Usage::Client).unwrap();
}

#[test]
fn extended_key_usage_must_allow_the_role() {
    let d = tmp("eku");
    let client_only = files_for(&d, &LeafSpec { server_auth: false, ..Default::default() });
    let (path, p) = problem(TlsIdentity::load(&client_only, Usage::Server).unwrap_err());
    assert_eq!(path, client_only.cert);
    assert!(p.contains("lacks serverAuth"), "{p}");
    TlsIdentity::load(&client_only, Usage::Client).unwrap();

    let server_only = files_for(&d, &LeafSpec { client_auth: false, ..Default::default() });
    let (_, p) = problem(TlsIdentity::load(&server_only, Usage::Client).unwrap_err());
    assert!(p.contains("lacks clientAuth"), "{p}");
    TlsIdentity::load(&server_only, Usage::Server).unwrap();
    let (_, p) = problem(TlsIdentity::load(&server_only, Usage::Both).unwrap_err());
    assert!(p.contains("lacks clientAuth"), "{p}");
}

#[test]
fn an_expired_ca_is_named() {
    let d = tmp("expiredca");
    let files = files_for(&d, &LeafSpec::default());
    // A leaf in the CA file stands in for an expired CA: same check.
    let ca = TestCa::new("other").unwrap();
    let old = ca
        .leaf(&LeafSpec { not_before: Some((2020, 1, 1)), not_after: Some((2021, 1, 1)), ..Default::default() })
        .unwrap();
    std::fs::write(&files.ca, &old.cert_pem).unwrap();
    let (path, p) = problem(TlsIdentity::load(&files, Usage::Both).unwrap_err());
    assert_eq!(path, files.ca);
    assert!(p.contains("CA certificate has expired"), "{p}");
}
