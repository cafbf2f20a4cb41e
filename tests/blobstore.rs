//! The blobstore conformance suite, run on a `file://` store and on an `s3://`
//! store backed by a local `moto_server` (installed by `make deps`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use celld::blobstore::{BlobInfo, Blobstore, BlobstoreError};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

const BUCKET: &str = "celld-test";
const ACCESS_KEY: &str = "celld-test-key";
const SECRET_KEY: &str = "celld-test-secret";
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------- helpers

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "celld-blobstore-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sets the AWS credentials every test of this binary uses, once, before any
/// test has started a runtime (each test calls this first).
fn test_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: called first thing by every test, under `Once`: no other
        // thread of this process reads the environment meanwhile.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
            std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
            std::env::remove_var("AWS_SESSION_TOKEN");
        }
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic, incompressible-looking bytes.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(r: Result<T, BlobstoreError>, what: &str) {
    match r {
        Err(e @ BlobstoreError::NotFound(_)) => assert!(e.is_not_found()),
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid_key<T: std::fmt::Debug>(r: Result<T, BlobstoreError>, what: &str) {
    match r {
        Err(BlobstoreError::InvalidKey { .. }) => {}
        other => panic!("{what}: expected InvalidKey, got {other:?}"),
    }
}

#[track_caller]
fn assert_mismatch<T: std::fmt::Debug>(r: Result<T, BlobstoreError>, expected_sha: &str, actual_sha: &str) {
    match r {
        Err(BlobstoreError::ChecksumMismatch { expected, actual, .. }) => {
            assert_eq!(expected, expected_sha);
            assert_eq!(actual, actual_sha);
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
}

/// Access to the store behind the module's back, to corrupt or remove objects.
enum Backend {
    File(PathBuf),
    S3(AmazonS3),
}

impl Backend {
    fn data_object(key: &str, sha256: &str) -> String {
        format!("data/{key}/!{sha256}")
    }

    async fn overwrite_data(&self, key: &str, sha256: &str, content: Bytes) {
        let name = Self::data_object(key, sha256);
        match self {
            Backend::File(root) => {
                let p = root.join(&name);
                assert!(p.is_file(), "{} should exist", p.display());
                std::fs::write(&p, &content).expect("overwrite data file");
            }
            Backend::S3(s3) => {
                s3.put(&ObjPath::from(name), PutPayload::from(content)).await.expect("overwrite data object");
            }
        }
    }

    async fn remove_data(&self, key: &str, sha256: &str) {
        let name = Self::data_object(key, sha256);
        match self {
            Backend::File(root) => std::fs::remove_file(root.join(&name)).expect("remove data file"),
            Backend::S3(s3) => s3.delete(&ObjPath::from(name)).await.expect("delete data object"),
        }
    }

    /// Every object name under `data/KEY/` (including longer keys).
    async fn data_objects(&self, key: &str) -> Vec<String> {
        let prefix = format!("data/{key}");
        match self {
            Backend::File(root) => {
                let mut out = Vec::new();
                let mut stack = vec![root.join(&prefix)];
                while let Some(d) = stack.pop() {
                    for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                        let p = e.path();
                        if p.is_dir() {
                            stack.push(p);
                        } else if let Ok(rel) = p.strip_prefix(root) {
                            out.push(rel.to_string_lossy().into_owned());
                        }
                    }
                }
                out.sort();
                out
            }
            Backend::S3(s3) => {
                let mut out: Vec<String> = s3
                    .list(Some(&ObjPath::from(prefix)))
                    .map(|m| m.expect("list").location.to_string())
                    .collect()
                    .await;
                out.sort();
                out
            }
        }
    }
}

// ---------------------------------------------------------------- the suite

type Case<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// Runs every case against `blobs`; `backend` reaches the same store directly.
async fn conformance(blobs: &Blobstore, backend: &Backend, scratch: &Path) {
    let cases: [(&str, Case<'_>); 10] = [
        ("round trip of bytes", Box::pin(round_trip_bytes(blobs))),
        ("round trip of files", Box::pin(round_trip_files(blobs, scratch))),
        ("head, exists and missing keys", Box::pin(head_exists_missing(blobs, scratch))),
        ("list by prefix", Box::pin(list_by_prefix(blobs))),
        ("replace", Box::pin(replace(blobs))),
        ("delete", Box::pin(delete(blobs, backend))),
        ("invalid keys", Box::pin(invalid_keys(blobs, scratch))),
        ("checksum mismatch", Box::pin(checksum_mismatch(blobs, backend, scratch))),
        ("missing data", Box::pin(missing_data(blobs, backend))),
        ("reads during replacement", Box::pin(reads_during_replacement(blobs, scratch))),
    ];
    for (name, case) in cases {
        let t = Instant::now();
        case.await;
        eprintln!("  {}: {name}: ok ({:.2}s)", blobs.describe(), t.elapsed().as_secs_f64());
    }
}

async fn round_trip_bytes(blobs: &Blobstore) {
    for (i, size) in [0, 1, 1000, MIB, 12 * MIB].into_iter().enumerate() {
        let key = format!("roundtrip/size-{size}");
        let data = pattern(size, i as u64);
        let info = blobs.put_bytes(&key, data.clone()).await.expect("put_bytes");
        assert_eq!(info, BlobInfo { key: key.clone(), sha256: sha256_hex(&data), size: size as u64 });
        let (got_info, got) = blobs.get_bytes(&key).await.expect("get_bytes");
        assert_eq!(got_info, info);
        assert!(got == data, "{key}: content differs");
        assert_eq!(blobs.head(&key).await.expect("head"), info);
    }
}

async fn round_trip_files(blobs: &Blobstore, scratch: &Path) {
    let src = scratch.join("src");
    let dst = scratch.join("dst");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::create_dir_all(&dst).expect("mkdir");
    for (i, size) in [0, 3 * MIB + 7, 12 * MIB + 1].into_iter().enumerate() {
        let key = format!("files/app-{i}.tgz");
        let data = pattern(size, 100 + i as u64);
        let file = src.join(format!("in-{i}"));
        std::fs::write(&file, &data).expect("write source");
        let info = blobs.put_file(&key, &file).await.expect("put_file");
        assert_eq!(info, BlobInfo { key: key.clone(), sha256: sha256_hex(&data), size: size as u64 });

        let dest = dst.join(format!("out-{i}"));
        assert_eq!(blobs.get_to_file(&key, &dest).await.expect("get_to_file"), info);
        assert!(std::fs::read(&dest).expect("read dest") == data, "{key}: file content differs");
        // Also over an existing file.
        std::fs::write(&dest, b"old").expect("write");
        blobs.get_to_file(&key, &dest).await.expect("get_to_file over a file");
        assert!(std::fs::read(&dest).expect("read dest") == data);
    }
    assert_eq!(entries(&dst), ["out-0", "out-1", "out-2"], "no temporary files left behind");
    // A missing source file is an Io error naming it.
    match blobs.put_file("files/nope", &src.join("missing")).await {
        Err(e @ BlobstoreError::Io { .. }) => assert!(e.to_string().contains("missing"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(!blobs.exists("files/nope").await.expect("exists"));
}

async fn head_exists_missing(blobs: &Blobstore, scratch: &Path) {
    assert!(!blobs.exists("hx/k").await.expect("exists"));
    assert_not_found(blobs.head("hx/k").await, "head");
    assert_not_found(blobs.get_bytes("hx/k").await, "get_bytes");
    let dest = scratch.join("hx-dest");
    assert_not_found(blobs.get_to_file("hx/k", &dest).await, "get_to_file");
    assert!(!dest.exists());
    let info = blobs.put_bytes("hx/k", Bytes::from_static(b"hello")).await.expect("put");
    assert!(blobs.exists("hx/k").await.expect("exists"));
    assert_eq!(blobs.head("hx/k").await.expect("head"), info);
    assert_eq!(info.sha256, sha256_hex(b"hello"));
    assert_eq!(info.size, 5);
    // A key and a longer key below it are different blobs.
    assert!(!blobs.exists("hx").await.expect("exists"));
    assert!(!blobs.exists("hx/k/sub").await.expect("exists"));
}

async fn list_by_prefix(blobs: &Blobstore) {
    let keys = ["list/a", "list/b", "list/b/c", "list/b/d.zip", "list/bb", "lister/x"];
    for (i, k) in keys.iter().enumerate() {
        blobs.put_bytes(k, pattern(10 + i, i as u64)).await.expect("put");
    }
    let names = |v: Vec<BlobInfo>| v.into_iter().map(|b| b.key).collect::<Vec<_>>();
    assert_eq!(
        names(blobs.list("list/").await.expect("list")),
        ["list/a", "list/b", "list/b/c", "list/b/d.zip", "list/bb"]
    );
    assert_eq!(names(blobs.list("list/b").await.expect("list")), ["list/b", "list/b/c", "list/b/d.zip", "list/bb"]);
    assert_eq!(names(blobs.list("list/b/").await.expect("list")), ["list/b/c", "list/b/d.zip"]);
    assert_eq!(names(blobs.list("list").await.expect("list")).len(), 6);
    assert!(blobs.list("nothing/here/").await.expect("list").is_empty());
    let all = blobs.list("").await.expect("list all");
    for k in keys {
        assert!(all.iter().any(|b| b.key == k), "{k} missing from list(\"\")");
    }
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(all, sorted, "sorted by key");
    let d = blobs.list("list/b/d").await.expect("list");
    assert_eq!(d, vec![BlobInfo { key: "list/b/d.zip".into(), sha256: sha256_hex(&pattern(13, 3)), size: 13 }]);
    assert_invalid_key(blobs.list("/list").await, "list(/list)");
    assert_invalid_key(blobs.list("../").await, "list(../)");
}

async fn replace(blobs: &Blobstore) {
    let key = "replace/k";
    let v1 = pattern(12 * MIB, 7);
    let v2 = Bytes::from_static(b"version two");
    let v3 = pattern(MIB, 8);
    blobs.put_bytes(key, v1.clone()).await.expect("put v1");
    for v in [&v2, &v3, &v3, &v1] {
        let info = blobs.put_bytes(key, v.clone()).await.expect("replace");
        assert_eq!(info.sha256, sha256_hex(v));
        let (got_info, got) = blobs.get_bytes(key).await.expect("get");
        assert_eq!(got_info, info);
        assert!(got == *v, "content after replace");
        assert_eq!(blobs.head(key).await.expect("head"), info);
    }
}

async fn delete(blobs: &Blobstore, backend: &Backend) {
    blobs.put_bytes("del/k", pattern(100, 1)).await.expect("put");
    blobs.put_bytes("del/k", pattern(200, 2)).await.expect("replace");
    blobs.put_bytes("del/k/nested", pattern(300, 3)).await.expect("put nested");
    blobs.delete("del/k").await.expect("delete");
    assert!(!blobs.exists("del/k").await.expect("exists"));
    assert_not_found(blobs.get_bytes("del/k").await, "get after delete");
    assert_not_found(blobs.head("del/k").await, "head after delete");
    blobs.delete("del/k").await.expect("deleting a missing key is fine");
    blobs.delete("del/never-stored").await.expect("deleting a missing key is fine");
    // The longer key is untouched, and only its data remains.
    let (_, nested) = blobs.get_bytes("del/k/nested").await.expect("nested survives");
    assert!(nested == pattern(300, 3));
    let objs = backend.data_objects("del/k").await;
    assert_eq!(objs.len(), 1, "{objs:?}");
    assert!(objs[0].starts_with("data/del/k/nested/"), "{objs:?}");
    blobs.delete("del/k/nested").await.expect("delete nested");
    assert!(backend.data_objects("del/k").await.is_empty());
    assert!(blobs.list("del/").await.expect("list").is_empty());
}

async fn invalid_keys(blobs: &Blobstore, scratch: &Path) {
    let file = scratch.join("inv");
    std::fs::write(&file, b"x").expect("write");
    let long = "k".repeat(513);
    for key in ["", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", "a b", "a!ref", "a?b", "a%2Fb", long.as_str()] {
        assert_invalid_key(blobs.put_bytes(key, Bytes::from_static(b"x")).await, key);
        assert_invalid_key(blobs.put_file(key, &file).await, key);
        assert_invalid_key(blobs.get_bytes(key).await, key);
        assert_invalid_key(blobs.get_to_file(key, &scratch.join("inv-out")).await, key);
        assert_invalid_key(blobs.head(key).await, key);
        assert_invalid_key(blobs.exists(key).await, key);
        assert_invalid_key(blobs.delete(key).await, key);
    }
    assert!(!scratch.join("inv-out").exists());
    let e = blobs.put_bytes("../x", Bytes::new()).await.unwrap_err();
    assert!(e.to_string().contains("\"../x\""), "the message names the key: {e}");
}

async fn checksum_mismatch(blobs: &Blobstore, backend: &Backend, scratch: &Path) {
    let out = scratch.join("corrupt-out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let dest = out.join("droplet.tgz");
    for (key, size) in [("corrupt/same-size", MIB), ("corrupt/other-size", 4096), ("corrupt/big", 12 * MIB)] {
        let good = pattern(size, 42);
        let info = blobs.put_bytes(key, good.clone()).await.expect("put");
        // Same size with one byte flipped, or different length.
        let bad = if key.ends_with("other-size") {
            pattern(size + 1, 42)
        } else {
            let mut v = good.to_vec();
            v[size / 2] ^= 0x55;
            Bytes::from(v)
        };
        backend.overwrite_data(key, &info.sha256, bad.clone()).await;
        assert_mismatch(blobs.get_bytes(key).await, &info.sha256, &sha256_hex(&bad));
        assert_mismatch(blobs.get_to_file(key, &dest).await, &info.sha256, &sha256_hex(&bad));
        assert!(!dest.exists(), "no destination file after a mismatch");
        assert!(entries(&out).is_empty(), "no temporary file left: {:?}", entries(&out));
        // The record is still there; uploading again repairs the key.
        assert_eq!(blobs.head(key).await.expect("head"), info);
        blobs.put_bytes(key, good.clone()).await.expect("put again");
        assert!(blobs.get_bytes(key).await.expect("get repaired").1 == good);
    }
    // An existing destination is left as it was.
    std::fs::write(&dest, b"previous").expect("write");
    let info = blobs.head("corrupt/same-size").await.expect("head");
    backend.overwrite_data("corrupt/same-size", &info.sha256, pattern(MIB, 43)).await;
    assert!(matches!(
        blobs.get_to_file("corrupt/same-size", &dest).await,
        Err(BlobstoreError::ChecksumMismatch { .. })
    ));
    assert_eq!(std::fs::read(&dest).expect("read"), b"previous");
    assert_eq!(entries(&out), ["droplet.tgz"]);
}

async fn missing_data(blobs: &Blobstore, backend: &Backend) {
    let info = blobs.put_bytes("missing/k", pattern(500, 5)).await.expect("put");
    backend.remove_data("missing/k", &info.sha256).await;
    match blobs.get_bytes("missing/k").await {
        Err(e @ BlobstoreError::MissingData { .. }) => assert!(!e.is_not_found()),
        other => panic!("expected MissingData, got {other:?}"),
    }
    blobs.delete("missing/k").await.expect("delete");
    assert!(!blobs.exists("missing/k").await.expect("exists"));
}

/// Two writers replace one key 20 times each while a reader reads it: every
/// read is one whole version, and the key is intact afterwards.
async fn reads_during_replacement(blobs: &Blobstore, scratch: &Path) {
    let key = "race/k";
    let versions = [pattern(64 * 1024, 1), pattern(200 * 1024, 2), pattern(3, 3), pattern(9 * MIB, 4)];
    blobs.put_bytes(key, versions[0].clone()).await.expect("put");
    let running = Arc::new(AtomicU32::new(2));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (blobs, versions, running) = (blobs.clone(), versions.clone(), running.clone());
            tokio::spawn(async move {
                let mut r = Ok(());
                for i in 0..20 {
                    let v = &versions[(i + w) % versions.len()];
                    if let Err(e) = blobs.put_bytes(key, v.clone()).await {
                        r = Err(e);
                        break;
                    }
                }
                running.fetch_sub(1, Ordering::SeqCst);
                r
            })
        })
        .collect();
    let dest = scratch.join("race-out");
    let mut reads = 0;
    while running.load(Ordering::SeqCst) > 0 || reads < 10 {
        let got = if reads % 2 == 0 {
            blobs.get_bytes(key).await.map(|(_, b)| b)
        } else {
            blobs.get_to_file(key, &dest).await.map(|_| Bytes::from(std::fs::read(&dest).expect("read")))
        };
        match got {
            Ok(b) => assert!(versions.contains(&b), "read {} bytes that are no version", b.len()),
            Err(e) => panic!("read during replacement failed: {e:?}"),
        }
        reads += 1;
    }
    for w in writers {
        w.await.expect("writer task").expect("writer");
    }
    let (info, b) = blobs.get_bytes(key).await.expect("the key is intact after concurrent puts");
    assert!(versions.contains(&b));
    assert_eq!(info.sha256, sha256_hex(&b));
    assert_eq!(entries(scratch).iter().filter(|n| n.contains("race-out.")).count(), 0, "temporary files left");
    eprintln!("  {}: {reads} reads during 40 replacements by 2 writers", blobs.describe());
}

// ---------------------------------------------------------------- file://

#[test]
fn file_backend_conformance() {
    test_env();
    let tmp = TempDir::new("file");
    let root = tmp.0.join("store/blobs");
    let url = format!("file://{}", root.display());
    let blobs = Blobstore::open(&url).expect("open file store");
    assert!(root.is_dir(), "open creates the directory");
    assert_eq!(blobs.describe(), url);
    let scratch = tmp.0.join("scratch");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let t = Instant::now();
    runtime().block_on(conformance(&blobs, &Backend::File(root.clone()), &scratch));
    eprintln!("file:// conformance passed in {:.2}s", t.elapsed().as_secs_f64());
}

#[test]
fn bad_urls_are_refused() {
    test_env();
    for url in ["", "/var/lib/celld/blobs", "file://relative", "http://127.0.0.1/b", "s3://", "s3://b?bogus=1"] {
        match Blobstore::open(url) {
            Err(e @ BlobstoreError::BadUrl(_)) => {
                assert!(e.to_string().contains("file:///") && e.to_string().contains("s3://"), "{e}")
            }
            other => panic!("{url:?}: expected BadUrl, got {other:?}"),
        }
    }
}

/// An https endpoint gets TLS (rustls on ring, whose provider the blobstore
/// installs): a closed port is a connection error, not a missing-crypto panic.
#[test]
fn https_endpoints_use_tls() {
    test_env();
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let blobs = Blobstore::open(&format!("s3://bucket?endpoint=https://127.0.0.1:{port}&region=us-east-1"))
        .expect("open an https S3 store");
    let r = runtime().block_on(blobs.head("some/key"));
    assert!(matches!(r, Err(ref e) if !e.is_not_found()), "{r:?}");
}

// ---------------------------------------------------------------- s3:// on moto

/// A `moto_server` on a free 127.0.0.1 port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("CELLD_MOTO_SERVER") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "CELLD_MOTO_SERVER={} does not exist (unset it after `make deps`)", p.display());
        return p;
    }
    let venv = PathBuf::from("/opt/celld-venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("moto_server");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "moto_server (the local S3 server of these tests) was not found in $CELLD_MOTO_SERVER, \
         /opt/celld-venv/bin/moto_server or PATH: run `make deps` to install it"
    );
}

/// A minimal HTTP/1.1 request; returns the status code and the whole response.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let code = resp
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {resp:?}")))?;
    Ok((code, resp))
}

fn start_moto(dir: &Path) -> Moto {
    let bin = find_moto_server();
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let log = dir.join("moto.log");
    let out = std::fs::File::create(&log).expect("moto log");
    let err = out.try_clone().expect("moto log");
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let mut moto = Moto { child, port, log };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = moto.child.try_wait() {
            panic!("moto_server exited ({status}):\n{}", std::fs::read_to_string(&moto.log).unwrap_or_default());
        }
        if http(port, "GET", "/").is_ok() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "moto_server did not answer on port {port} within 60s:\n{}",
                std::fs::read_to_string(&moto.log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, resp) = http(moto.port, "PUT", &format!("/{BUCKET}")).expect("create bucket");
    assert_eq!(code, 200, "creating bucket {BUCKET}: {resp}");
    moto
}

#[test]
fn s3_backend_conformance() {
    test_env();
    let tmp = TempDir::new("s3");
    let t0 = Instant::now();
    let moto = start_moto(&tmp.0);
    eprintln!("moto_server up on port {} in {:.2}s", moto.port, t0.elapsed().as_secs_f64());
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let url = format!("s3://{BUCKET}?endpoint={endpoint}&region=us-east-1");
    let blobs = Blobstore::open(&url).expect("open s3 store");
    assert_eq!(blobs.describe(), url);
    assert!(!blobs.describe().contains(SECRET_KEY));
    let raw = AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(&endpoint)
        .with_region("us-east-1")
        .with_allow_http(true)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .build()
        .expect("raw S3 client");
    let scratch = tmp.0.join("scratch");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let t = Instant::now();
    runtime().block_on(conformance(&blobs, &Backend::S3(raw), &scratch));
    eprintln!("s3:// (moto) conformance passed in {:.2}s", t.elapsed().as_secs_f64());
    let log = std::fs::read_to_string(&moto.log).unwrap_or_default();
    assert!(log.contains("uploadId="), "large objects should have gone through multipart uploads");
    drop(moto);
}
