//! Containers from images (`docker://` from a real registry, `oci:///` from
//! a layout on disk) through the Garden client against a real daemon: the
//! image's layers as the container's rootfs (whiteouts and opaque
//! directories as Garden shows them), its config applied, the store shared
//! and collected. Run as root (`make test`), serially.

mod common;

use celld::garden::types::*;
use celld_image::testing::{Entry, ImageBuilder, TestDir, TestRegistry, push};
use common::{Daemon, rt, run, sh, spec};
use serde_json::json;

/// The tiny rootfs as the base layer, an app layer over it, and a layer
/// that deletes and hides some of what the app layer made.
fn app_image() -> ImageBuilder {
    ImageBuilder::new()
        .layer(vec![Entry::HostDir(common::rootfs_dir().join("tiny"))])
        .layer(vec![
            Entry::Dir { path: "app".into(), mode: 0o755, uid: 2000, gid: 2000 },
            Entry::File { path: "app/run.sh".into(), data: b"echo app\n".to_vec(), mode: 0o755, uid: 2000, gid: 2000 },
            Entry::dir("gone"),
            Entry::file("gone/f", b"x"),
            Entry::dir("opq"),
            Entry::file("opq/old", b"old"),
        ])
        .layer(vec![
            Entry::Whiteout("gone".into()),
            Entry::dir("opq"),
            Entry::Opaque("opq".into()),
            Entry::file("opq/new", b"new"),
        ])
        .config("Env", json!(["PATH=/app:/bin:/usr/bin", "FROM_IMAGE=yes", "OVERRIDDEN=image"]))
        .config("User", json!("vcap"))
        .config("WorkingDir", json!("/app"))
        .config("Cmd", json!(["/app/run.sh"]))
}

/// A plain registry (reached as an insecure one) holding `app_image()`.
struct Registry {
    reg: TestRegistry,
    _tmp: TestDir,
}

impl Registry {
    fn with_app() -> Self {
        let tmp = TestDir::new("garden-images");
        let reg = TestRegistry::start(None).unwrap();
        let layout = tmp.path().join("layout");
        app_image().write(&layout, "v1").unwrap();
        push(&layout, "v1", &reg, "team/app").unwrap();
        Self { reg, _tmp: tmp }
    }

    fn uri(&self) -> String {
        format!("docker://{}/team/app:v1", self.reg.host())
    }

    fn daemon(&self) -> Daemon {
        Daemon::start_with(&["--insecure-docker-registry", &self.reg.host()])
    }
}

fn image_spec(handle: &str, uri: &str) -> ContainerSpec {
    ContainerSpec {
        image: ImageRef { uri: uri.into(), ..Default::default() },
        env: vec!["OVERRIDDEN=spec".into()],
        ..spec(handle)
    }
}

#[test]
fn containers_run_on_registry_images_with_their_config() {
    require_host!();
    let registry = Registry::with_app();
    let d = registry.daemon();
    rt().block_on(async {
        for (name, privileged) in [("unpriv", false), ("priv", true)] {
            let h = d.handle(name);
            d.client.create(&ContainerSpec { privileged, ..image_spec(&h, &registry.uri()) }).await.unwrap();
            // The image's user, working directory, PATH and env; the spec's env wins.
            let (code, out, err) = run(&d, &h, sh("id -u; pwd; echo $FROM_IMAGE $OVERRIDDEN; run.sh")).await;
            assert_eq!(code, 0, "{name}: {err}");
            assert_eq!(out, "2000\n/app\nyes spec\napp\n", "{name}");
            // Root when asked; root's files are root's inside, user namespace or not.
            let root = ProcessSpec { user: "root".into(), ..sh("id -u; stat -c %u /etc/passwd; stat -c %u /app") };
            let (code, out, _) = run(&d, &h, root).await;
            assert_eq!((code, out.as_str()), (0, "0\n0\n2000\n"), "{name}");
            // A whiteout hides, an opaque directory shows only the top layer's.
            let (code, out, _) = run(&d, &h, sh("test -e /gone || echo hidden; ls /opq")).await;
            assert_eq!((code, out.as_str()), (0, "hidden\nnew\n"), "{name}");
            // Writes go to the container's own layer, never the store.
            let (code, _, err) = run(&d, &h, sh("echo mine > /app/written")).await;
            assert_eq!(code, 0, "{name}: {err}");
        }
        let other = d.handle("other");
        d.client.create(&image_spec(&other, &registry.uri())).await.unwrap();
        let (_, out, _) = run(&d, &other, sh("cat /app/written 2>/dev/null || echo absent")).await;
        assert_eq!(out, "absent\n");
        // One image in the store for three containers, kept while they use it.
        let held = d.client.capacity().await.unwrap().image_store_in_bytes;
        assert!(held > 0);
        assert_eq!(d.client.gc_images().await.unwrap().images_removed, 0);
        for name in ["unpriv", "priv", "other"] {
            d.client.destroy(&d.handle(name)).await.unwrap();
        }
        let gc = d.client.gc_images().await.unwrap();
        assert_eq!((gc.images_removed, gc.store_bytes), (1, 0), "{gc:?}");
        assert!(gc.bytes_freed >= held, "{gc:?} after {held}");
    });
    d.assert_no_leaks();
}

#[test]
fn disk_limits_of_scope_total_count_the_image() {
    require_host!();
    let registry = Registry::with_app();
    let d = registry.daemon();
    rt().block_on(async {
        let limited = |name: &str, bytes: u64| ContainerSpec {
            limits: Limits {
                disk_limits: DiskLimits { byte_hard: bytes, scope: 0, ..Default::default() },
                ..Default::default()
            },
            ..image_spec(&d.handle(name), &registry.uri())
        };
        // Smaller than the image's layers: refused, naming the rootfs.
        let e = d.client.create(&limited("tiny-limit", 1 << 20)).await.unwrap_err().to_string();
        assert!(e.contains("smaller than the rootfs"), "{e}");
        // 40 MiB in all: the writes stop short of it by the image's size.
        let h = d.client.create(&limited("limited", 40 << 20)).await.unwrap();
        let (_, out, _) =
            run(&d, &h, sh("dd if=/dev/zero of=/app/big bs=1M count=100 2>/dev/null; wc -c < /app/big")).await;
        let written: u64 = out.trim().parse().unwrap();
        assert!(written > (10 << 20) && written < (40 << 20), "wrote {written} bytes");
        let stat = d.client.metrics(&h).await.unwrap().disk_stat;
        assert!(stat.total_bytes_used > stat.exclusive_bytes_used, "{stat:?}");
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn peas_run_on_registry_images() {
    require_host!();
    let registry = Registry::with_app();
    let d = registry.daemon();
    rt().block_on(async {
        let h = d.handle("with-pea");
        d.client.create(&spec(&h)).await.unwrap();
        let pea = ProcessSpec {
            image: ImageRef { uri: registry.uri(), ..Default::default() },
            ..sh("test -x /app/run.sh && /app/run.sh; id -u")
        };
        let (code, out, err) = run(&d, &h, pea).await;
        assert_eq!((code, out.as_str()), (0, "app\n0\n"), "{err}");
        // The container's own rootfs has no such file.
        let (_, out, _) = run(&d, &h, sh("test -e /app/run.sh || echo absent")).await;
        assert_eq!(out, "absent\n");
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn oci_layouts_on_disk_are_rootfses_too() {
    require_host!();
    let tmp = TestDir::new("garden-oci");
    let layout = tmp.path().join("layout");
    app_image().write(&layout, "v2").unwrap();
    let d = Daemon::start();
    rt().block_on(async {
        let h = d.handle("oci");
        d.client.create(&image_spec(&h, &format!("oci://{}:v2", layout.display()))).await.unwrap();
        let (code, out, err) = run(&d, &h, sh("id -u; run.sh")).await;
        assert_eq!((code, out.as_str()), (0, "2000\napp\n"), "{err}");
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn a_bad_image_fails_the_create_clearly_and_leaves_nothing() {
    require_host!();
    let registry = Registry::with_app();
    let d = registry.daemon();
    rt().block_on(async {
        let host = registry.reg.host();
        for (uri, cause) in [
            (format!("docker://{host}/team/app:nope"), "manifest unknown"),
            (format!("docker://{host}/team/none:v1"), "team/none"),
            ("docker://127.0.0.1:1/team/app:v1".to_string(), "127.0.0.1:1"),
            ("docker://Bad Name".to_string(), "Bad Name"),
        ] {
            let h = d.handle("bad");
            let e = d.client.create(&image_spec(&h, &uri)).await.unwrap_err().to_string();
            assert!(e.contains(cause), "{uri}: {e}");
            assert!(d.client.list(&Default::default()).await.unwrap().is_empty(), "{uri}");
        }
    });
    assert!(std::fs::read_dir(d.depot().join("containers")).unwrap().next().is_none());
    d.assert_no_leaks();
}
