//! Pulls from a real registry (Debian's docker-registry) and OCI layouts into
//! a real store; overlays mounted on the result. Run as root.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celld_image::testing::{Entry, ImageBuilder, TestDir, TestRegistry, push};
use celld_image::{ImageError, ImageStore, StoreConfig};
use serde_json::json;

/// A limit no test image reaches: 0 would be "keep the filesystem 15 % free",
/// which collects everything unused on a fuller disk than that.
const NO_LIMIT: u64 = 1 << 50;

fn store(dir: &Path, max: u64) -> ImageStore {
    let mut cfg = StoreConfig::new(dir.join("store"));
    cfg.max_bytes = max;
    cfg.timeout = Duration::from_secs(5);
    ImageStore::open(cfg, Arc::new(HashSet::new)).unwrap()
}

fn app_image() -> ImageBuilder {
    ImageBuilder::new()
        .layer(vec![
            Entry::dir("etc"),
            Entry::file("etc/passwd", b"root:x:0:0::/root:/bin/sh\nvcap:x:2000:2000::/home/vcap:/bin/sh\n"),
            Entry::dir("gone"),
            Entry::file("gone/f", b"x"),
            Entry::dir("opq"),
            Entry::file("opq/old", b"old"),
            Entry::File { path: "bin-suid".into(), data: b"s".to_vec(), mode: 0o4755, uid: 0, gid: 0 },
            Entry::File { path: "vcapfile".into(), data: b"v".to_vec(), mode: 0o644, uid: 2000, gid: 2000 },
        ])
        .layer(vec![
            Entry::Whiteout("gone".into()),
            Entry::dir("opq"),
            Entry::Opaque("opq".into()),
            Entry::file("opq/new", b"new"),
            Entry::Symlink { path: "abs".into(), target: "/etc/passwd".into() },
        ])
        .config("Env", json!(["PATH=/usr/local/bin:/bin", "A=b"]))
        .config("User", json!("vcap"))
        .config("WorkingDir", json!("/home/vcap"))
        .config("Entrypoint", json!(["/bin/sh"]))
        .config("Cmd", json!(["-c", "true"]))
        .config("ExposedPorts", json!({"8080/tcp": {}}))
}

/// A plain registry holding `app_image()` as `NAME:v1`, and a store that
/// reaches it as an insecure registry.
struct WithApp {
    reg: TestRegistry,
    store: ImageStore,
    uri: String,
    tmp: TestDir,
}

fn with_app(name: &str, cfg: impl FnOnce(&mut StoreConfig)) -> WithApp {
    let tmp = TestDir::new("reg");
    let reg = TestRegistry::start(None).unwrap();
    app_image().write(&tmp.path().join("layout"), "v1").unwrap();
    push(&tmp.path().join("layout"), "v1", &reg, name).unwrap();
    let mut c = StoreConfig::new(tmp.path().join("store"));
    c.insecure_registries = vec![reg.host()];
    cfg(&mut c);
    let store = ImageStore::open(c, Arc::new(HashSet::new)).unwrap();
    let uri = format!("docker://{}/{name}:v1", reg.host());
    WithApp { reg, store, uri, tmp }
}

/// The overlay of `lower` mounted on a temp dir, unmounted on drop.
struct Mounted(TestDir);
impl Mounted {
    fn new(lower: &[std::path::PathBuf]) -> Self {
        let d = TestDir::new("ovl");
        let m = d.path().join("m");
        std::fs::create_dir(&m).unwrap();
        let opts = format!("lowerdir={}", lower.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"));
        let st = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&m)
            .status()
            .unwrap();
        assert!(st.success());
        Mounted(d)
    }
    fn root(&self) -> std::path::PathBuf {
        self.0.path().join("m")
    }
}
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.root()).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_from_a_registry_and_overlay_sees_whiteouts_and_opaque_dirs() {
    let WithApp { reg, store: s, uri, tmp: _tmp } = with_app("app", |_| {});
    let img = s.pull(&uri, None).await.unwrap();
    assert!(img.id.starts_with("sha256:"));
    assert_eq!(img.config.user, "vcap");
    assert_eq!(img.config.exposed_ports, vec![8080]);
    assert_eq!(img.config.env[0], "PATH=/usr/local/bin:/bin");
    assert!(s.size_bytes() >= img.size_bytes && img.size_bytes > 0);
    let img = Arc::new(img);
    let i2 = img.clone();
    let lower = tokio::task::spawn_blocking(move || i2.lower_dirs(false)).await.unwrap().unwrap();
    assert_eq!(lower.len(), 2);
    let m = Mounted::new(&lower);
    let r = m.root();
    assert!(!r.join("gone").exists(), "whiteout hides the lower dir");
    assert!(!r.join("opq/old").exists(), "opaque dir hides lower content");
    assert_eq!(std::fs::read(r.join("opq/new")).unwrap(), b"new");
    assert_eq!(std::fs::read_link(r.join("abs")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(std::fs::metadata(r.join("bin-suid")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(std::fs::metadata(r.join("vcapfile")).unwrap().uid(), 2000);
    drop(m);
    // The shifted variant: root-owned entries belong to container root's host id.
    let i2 = img.clone();
    let shifted = tokio::task::spawn_blocking(move || i2.lower_dirs(true)).await.unwrap().unwrap();
    assert_ne!(shifted, lower);
    let m = Mounted::new(&shifted);
    let md = std::fs::metadata(m.root().join("bin-suid")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (celld_image::shift::ROOT_HOST_ID, 0o4755));
    assert_eq!(std::fs::metadata(m.root().join("vcapfile")).unwrap().uid(), 2000);
    assert!(!m.root().join("opq/old").exists() && !m.root().join("gone").exists());
    drop(m);
    // A second pull finds it stored: no more blob downloads.
    let before = reg.blob_gets();
    let again = s.pull(&uri, None).await.unwrap();
    assert_eq!(again.id, img.id);
    assert_eq!(reg.blob_gets(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_pulls_download_each_blob_once() {
    let WithApp { reg, store: s, uri, tmp: _tmp } = with_app("app", |_| {});
    let before = reg.blob_gets();
    let (a, b) = tokio::join!(s.pull(&uri, None), s.pull(&uri, None));
    assert_eq!(a.unwrap().id, b.unwrap().id);
    assert_eq!(reg.blob_gets() - before, 3, "two layers and a config, once each:\n{}", reg.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_an_oci_layout_and_flattens_many_layers() {
    let tmp = TestDir::new("t3");
    let layout = tmp.path().join("layout");
    let mut b = ImageBuilder::new();
    for i in 0..130 {
        b = b.layer(vec![Entry::file(&format!("f{i}"), b"x")]);
    }
    b = b.layer(vec![Entry::Whiteout("f3".into())]);
    b.write(&layout, "many").unwrap();
    let s = store(tmp.path(), NO_LIMIT);
    let img = s.pull(&format!("oci://{}:many", layout.display()), None).await.unwrap();
    let img = Arc::new(img);
    let i2 = img.clone();
    let lower = tokio::task::spawn_blocking(move || i2.lower_dirs(false)).await.unwrap().unwrap();
    assert_eq!(lower.len(), 1, "flattened");
    assert!(lower[0].join("f129").exists() && lower[0].join("f0").exists());
    assert!(!lower[0].join("f3").exists(), "whiteout applied as a deletion");
    // Without a tag: the only manifest.
    let again = s.pull(&format!("oci://{}", layout.display()), None).await.unwrap();
    assert_eq!(again.id, img.id);
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_removes_unused_images_oldest_first_and_keeps_leased() {
    let tmp = TestDir::new("t4");
    let mut uris = Vec::new();
    for i in 0..3 {
        let l = tmp.path().join(format!("l{i}"));
        ImageBuilder::new()
            .layer(vec![Entry::file("shared", b"same in all")])
            .layer(vec![Entry::file("own", &vec![i as u8; 200_000])])
            .write(&l, "t")
            .unwrap();
        uris.push(format!("oci://{}:t", l.display()));
    }
    let s = store(tmp.path(), NO_LIMIT);
    let a = s.pull(&uris[0], None).await.unwrap();
    let a_id = a.id.clone();
    drop(a);
    let b = s.pull(&uris[1], None).await.unwrap();
    let b_id = b.id.clone();
    drop(b);
    let c = s.pull(&uris[2], None).await.unwrap(); // leased
    let total = s.size_bytes();
    // A limit that needs one image gone: the oldest (a) goes, c is leased.
    let mut cfg = StoreConfig::new(tmp.path().join("store"));
    cfg.max_bytes = total - 1;
    let in_use = Arc::new(HashSet::new);
    drop(s);
    let s = ImageStore::open(cfg, in_use).unwrap();
    assert_eq!(s.size_bytes(), total, "open adds up the same");
    let _c2 = s.pull(&uris[2], None).await.unwrap();
    let r = s.gc();
    assert_eq!((r.images_removed, r.layers_removed), (1, 1), "the oldest only; the shared layer stays");
    assert_eq!(s.size_bytes(), total - r.bytes_freed);
    // a went, b stays (finding it adds nothing); pulling a again adds its layer.
    let after = s.size_bytes();
    let b2 = s.pull(&uris[1], None).await.unwrap();
    assert_eq!((b2.id.clone(), s.size_bytes()), (b_id.clone(), after));
    drop(b2);
    drop(c);
    let mut cfg = StoreConfig::new(tmp.path().join("store2"));
    cfg.max_bytes = 1;
    let keep = b_id.clone();
    let s = ImageStore::open(cfg, Arc::new(move || HashSet::from([keep.clone()]))).unwrap();
    let x = s.pull(&uris[1], None).await;
    assert!(matches!(x, Err(ImageError::TooLarge { .. })), "bigger than the store");
    assert_eq!(s.size_bytes(), 0, "nothing half-stored");
    let _ = a_id;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_clearly_and_leaves_nothing() {
    let tmp = TestDir::new("t5");
    let reg = TestRegistry::start(None).unwrap();
    let mut cfg = StoreConfig::new(tmp.path().join("store"));
    cfg.insecure_registries = vec![reg.host()];
    cfg.timeout = Duration::from_secs(5);
    let s = ImageStore::open(cfg, Arc::new(HashSet::new)).unwrap();
    let empty = |s: &ImageStore| {
        assert_eq!(s.size_bytes(), 0);
        for d in ["l", "s", "f", "images", "tmp"] {
            assert_eq!(std::fs::read_dir(tmp.path().join("store").join(d)).unwrap().count(), 0, "{d}");
        }
    };
    // Unknown repository and tag.
    let uri = format!("docker://{}/nope:v1", reg.host());
    let e = s.pull(&uri, None).await.err().unwrap();
    assert!(matches!(e, ImageError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains(&uri) && e.to_string().contains("manifest unknown"), "{e}");
    // A layer that is not a tar.
    ImageBuilder::new()
        .layer(vec![Entry::file("a", b"a")])
        .raw_layer(b"this is not a tar at all, not even close to 512 bytes")
        .write(&tmp.path().join("bad"), "v1")
        .unwrap();
    push(&tmp.path().join("bad"), "v1", &reg, "bad").unwrap();
    let uri = format!("docker://{}/bad:v1", reg.host());
    let e = s.pull(&uri, None).await.err().unwrap();
    assert!(matches!(e, ImageError::Layer { .. }) && e.to_string().contains(&uri), "{e}");
    empty(&s);
    // Only linux/arm64.
    ImageBuilder::new()
        .layer(vec![Entry::file("a", b"a")])
        .only_platform("arm64")
        .write(&tmp.path().join("arm"), "v1")
        .unwrap();
    push(&tmp.path().join("arm"), "v1", &reg, "arm").unwrap();
    let e = s.pull(&format!("docker://{}/arm:v1", reg.host()), None).await.err().unwrap();
    assert!(e.to_string().contains("linux/arm64") && e.to_string().contains("arm:v1"), "{e}");
    // A corrupt blob in the registry's storage.
    ImageBuilder::new().layer(vec![Entry::file("a", b"corrupt me")]).write(&tmp.path().join("c"), "v1").unwrap();
    push(&tmp.path().join("c"), "v1", &reg, "corrupt").unwrap();
    let mut corrupted = 0;
    for e in walk(&reg.storage()) {
        if e.ends_with("data") && std::fs::read(&e).unwrap().starts_with(&[0x1f, 0x8b]) {
            let mut b = std::fs::read(&e).unwrap();
            let n = b.len();
            b[n - 9] ^= 0xff;
            std::fs::write(&e, b).unwrap();
            corrupted += 1;
        }
    }
    assert!(corrupted > 0);
    let uri = format!("docker://{}/corrupt:v1", reg.host());
    let e = s.pull(&uri, None).await.err().unwrap();
    assert!(matches!(e, ImageError::Digest { what: "layer", .. }) && e.to_string().contains(&uri), "{e}");
    empty(&s);
    // A registry that is down, and one that accepts and never answers.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = down.local_addr().unwrap().port();
    drop(down);
    let e = s.pull(&format!("docker://127.0.0.1:{port}/x:y"), None).await.err().unwrap();
    assert!(matches!(e, ImageError::Unreachable { .. }), "{e}");
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hport = hang.local_addr().unwrap().port();
    let mut cfg = StoreConfig::new(tmp.path().join("store-h"));
    cfg.insecure_registries = vec![format!("127.0.0.1:{hport}")];
    let s2 = ImageStore::open(cfg, Arc::new(HashSet::new)).unwrap();
    let t = Instant::now();
    let e = s2.pull(&format!("docker://127.0.0.1:{hport}/x:y"), None).await.err().unwrap();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(matches!(e, ImageError::Timeout { secs: 20, .. }), "{e}");
    assert!(e.to_string().contains("127.0.0.1") && e.to_string().contains("x:y"), "{e}");
    drop(hang);
    empty(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_registry_with_basic_auth_via_insecure_registries() {
    let tmp = TestDir::new("t6");
    let reg = TestRegistry::start(Some(("user", "secret"))).unwrap();
    app_image().write(&tmp.path().join("layout"), "v1").unwrap();
    push(&tmp.path().join("layout"), "v1", &reg, "private/app").unwrap();
    let mut cfg = StoreConfig::new(tmp.path().join("store"));
    cfg.insecure_registries = vec![reg.host()];
    let s = ImageStore::open(cfg, Arc::new(HashSet::new)).unwrap();
    let uri = format!("docker://{}/private/app:v1", reg.host());
    let good = celld_image::Credentials { username: "user".into(), password: "secret".into() };
    let bad = celld_image::Credentials { username: "user".into(), password: "wrong".into() };
    let e = s.pull(&uri, Some(&bad)).await.err().unwrap();
    assert!(matches!(e, ImageError::Unauthorized { .. }) && e.to_string().contains(&uri), "{e}");
    let img = s.pull(&uri, Some(&good)).await.unwrap();
    assert_eq!(img.config.user, "vcap");
    assert_eq!(s.config(&uri, Some(&good)).await.unwrap(), img.config);
}

#[tokio::test(flavor = "multi_thread")]
async fn digest_pins_and_the_docker_hub_mirror() {
    let w = with_app("library/busybox", |_| {});
    let img = w.store.pull(&w.uri, None).await.unwrap();
    let pinned = format!("docker://{}/library/busybox@{}", w.reg.host(), img.id);
    assert_eq!(w.store.pull(&pinned, None).await.unwrap().id, img.id);
    let wrong = format!("docker://{}/library/busybox@sha256:{}", w.reg.host(), "0".repeat(64));
    let e = w.store.pull(&wrong, None).await.err().unwrap();
    assert!(e.to_string().contains(&wrong), "{e}");
    // Docker Hub names go to the mirror (here: the local registry).
    let mut cfg = StoreConfig::new(w.tmp.path().join("store-m"));
    cfg.registry_mirror = Some(format!("http://{}", w.reg.host()));
    let s = ImageStore::open(cfg, Arc::new(HashSet::new)).unwrap();
    assert_eq!(s.pull("docker:///busybox#v1", None).await.unwrap().id, img.id);
    assert_eq!(s.config("docker://busybox:v1", None).await.unwrap().user, "vcap");
}

/// `n` one-layer OCI layouts; the first two pulled into a store, which is
/// opened again with `max` bytes and the first image in use.
async fn one_image_in_use(tmp: &TestDir, n: u8, max: u64) -> (Vec<String>, ImageStore) {
    let mut uris = Vec::new();
    for i in 0..n {
        let l = tmp.path().join(format!("l{i}"));
        ImageBuilder::new().layer(vec![Entry::file("own", &[i; 10_000])]).write(&l, "t").unwrap();
        uris.push(format!("oci://{}:t", l.display()));
    }
    let s = store(tmp.path(), NO_LIMIT);
    let in_use_id = s.pull(&uris[0], None).await.unwrap().id.clone();
    drop(s.pull(&uris[1], None).await.unwrap());
    drop(s);
    let mut cfg = StoreConfig::new(tmp.path().join("store"));
    cfg.max_bytes = max;
    let s = ImageStore::open(cfg, Arc::new(move || HashSet::from([in_use_id.clone()]))).unwrap();
    (uris, s)
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_keeps_leased_and_in_use_images() {
    let tmp = TestDir::new("t7");
    // Over a 1-byte limit: only what is in use or leased stays.
    let (uris, s) = one_image_in_use(&tmp, 2, 1).await;
    let leased = s.pull(&uris[1], None).await.unwrap();
    let before = s.size_bytes();
    assert_eq!(s.gc(), celld_image::GcReport::default(), "one in use, one leased");
    assert_eq!(s.size_bytes(), before);
    drop(leased);
    let r = s.gc();
    assert_eq!((r.images_removed, r.layers_removed), (1, 1));
    assert!(r.bytes_freed > 0 && s.size_bytes() == before - r.bytes_freed);
    assert_eq!(std::fs::read_dir(tmp.path().join("store/l")).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_unused_ignores_the_limit_but_keeps_leased_and_in_use_images() {
    let tmp = TestDir::new("t7u");
    let (uris, s) = one_image_in_use(&tmp, 3, NO_LIMIT).await;
    let leased = s.pull(&uris[2], None).await.unwrap();
    // Far under its limit: the limit's collection takes nothing.
    assert_eq!(s.gc(), celld_image::GcReport::default());
    // An operator's: the one unused image, not the used or the leased one.
    let before = s.size_bytes();
    let r = s.gc_unused();
    assert_eq!((r.images_removed, r.layers_removed), (1, 1), "{r:?}");
    assert_eq!(s.size_bytes(), before - r.bytes_freed);
    drop(leased);
    assert_eq!(s.gc_unused().images_removed, 1, "the lease gone, that image goes too");
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out
}

/// A registry that serves the manifest and config, then stalls half-way
/// through the layer blob.
struct Stalling {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Stalling {
    fn start(layout: &Path) -> Self {
        use std::io::{BufRead, BufReader, Write};
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let mdigest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
        let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
        let manifest = blob(&mdigest);
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let config_digest = m["config"]["digest"].as_str().unwrap().to_string();
        let config = blob(&config_digest);
        let layer = blob(m["layers"][0]["digest"].as_str().unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                let mut line = String::new();
                if BufReader::new(&s).read_line(&mut line).is_err() || !line.starts_with("GET ") {
                    continue; // a TLS hello: hang up
                }
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                let (body, stall): (&[u8], bool) = if path.contains("/manifests/") {
                    (&manifest, false)
                } else if path.ends_with(&config_digest) {
                    (&config, false)
                } else if path.contains("/blobs/") {
                    (&layer, true)
                } else {
                    (b"{}", false)
                };
                let ctype = if path.contains("/manifests/") {
                    "application/vnd.oci.image.manifest.v1+json"
                } else {
                    "application/octet-stream"
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                if stall {
                    let _ = s.write_all(&body[..body.len() / 2]);
                    let _ = s.flush();
                    while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                } else {
                    let _ = s.write_all(body);
                }
            }
        });
        Stalling { port, stop }
    }
}

impl Drop for Stalling {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_stalls_mid_blob_fails_the_pull_in_time() {
    let tmp = TestDir::new("t8");
    let layout = tmp.path().join("layout");
    ImageBuilder::new().layer(vec![Entry::file("big", &vec![7u8; 300_000])]).write(&layout, "v1").unwrap();
    let server = Stalling::start(&layout);
    let mut cfg = StoreConfig::new(tmp.path().join("store"));
    cfg.insecure_registries = vec![format!("127.0.0.1:{}", server.port)];
    cfg.timeout = Duration::from_secs(3);
    let s = ImageStore::open(cfg, Arc::new(HashSet::new)).unwrap();
    let uri = format!("docker://127.0.0.1:{}/stall:v1", server.port);
    let t = Instant::now();
    let e = s.pull(&uri, None).await.err().unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(matches!(e, ImageError::Timeout { secs: 3, .. }) && e.to_string().contains(&uri), "{e}");
    assert_eq!(s.size_bytes(), 0);
    for d in ["l", "tmp", "images"] {
        assert_eq!(std::fs::read_dir(tmp.path().join("store").join(d)).unwrap().count(), 0, "{d}");
    }
}

/// A progress callback that keeps everything it is told.
fn recorder() -> (celld_image::Progress, Arc<std::sync::Mutex<Vec<celld_image::LayerProgress>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    (Arc::new(move |p: &celld_image::LayerProgress| s.lock().unwrap().push(p.clone())), seen)
}

/// Per layer digest, its reports in order.
fn by_layer(
    seen: &[celld_image::LayerProgress],
) -> std::collections::BTreeMap<String, Vec<celld_image::LayerProgress>> {
    let mut m = std::collections::BTreeMap::<String, Vec<_>>::new();
    for p in seen {
        m.entry(p.digest.clone()).or_default().push(p.clone());
    }
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_report_each_layers_bytes_and_stored_layers_as_cached() {
    let WithApp { reg: _reg, store: s, uri, tmp } = with_app("progress", |_| {});
    let (cb, seen) = recorder();
    s.pull_with_progress(&uri, None, Some(cb)).await.unwrap();
    let layers = by_layer(&seen.lock().unwrap());
    assert_eq!(layers.len(), 2, "{layers:?}");
    for reports in layers.values() {
        let last = reports.last().unwrap();
        assert!(last.total > 0 && last.done == last.total && !last.cached, "{last:?}");
        assert!(reports.windows(2).all(|w| w[0].done <= w[1].done), "done only grows: {reports:?}");
    }
    // From a layout: the two layers it shares come back cached, the new one
    // is counted as it is copied.
    let layout = tmp.path().join("layout2");
    app_image().layer(vec![Entry::file("extra", b"e")]).write(&layout, "v2").unwrap();
    let (cb, seen) = recorder();
    s.pull_with_progress(&format!("oci://{}:v2", layout.display()), None, Some(cb)).await.unwrap();
    let layers2 = by_layer(&seen.lock().unwrap());
    assert_eq!(layers2.len(), 3, "{layers2:?}");
    for (digest, reports) in &layers2 {
        let last = reports.last().unwrap();
        assert_eq!(last.done, last.total, "{last:?}");
        assert_eq!(last.cached, layers.contains_key(digest), "{reports:?}");
        if last.cached {
            assert_eq!(reports.len(), 1, "a stored layer is reported once");
        }
    }
}
