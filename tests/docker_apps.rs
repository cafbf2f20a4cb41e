//! Docker-image apps under `celld --local` through `cellctl push
//! --docker-image`, as CF's docker lifecycle runs them: no staging but the
//! image's config, its command as the start command, its exposed port for the
//! health check and the route. The image comes from a real registry
//! (Debian's docker-registry) on 127.0.0.1.

mod common;

use std::time::Duration;

use celld_image::testing::{Entry, ImageBuilder, TestDir, TestRegistry, push};
use common::local::*;
use serde_json::json;

const T: Duration = Duration::from_secs(90);
const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello");

/// The tiny rootfs and a web server script, listening on the image's exposed port.
fn web_image() -> ImageBuilder {
    let script = b"#!/bin/sh\nmkdir -p /tmp/www\necho \"docker app $GREETING on $PORT\" > /tmp/www/index.html\nexec httpd -f -p \"$PORT\" -h /tmp/www\n";
    ImageBuilder::new()
        .layer(vec![Entry::HostDir(common::rootfs_dir().join("tiny"))])
        .layer(vec![
            Entry::dir("app"),
            Entry::File { path: "app/web.sh".into(), data: script.to_vec(), mode: 0o755, uid: 0, gid: 0 },
        ])
        .config("Env", json!(["PATH=/bin:/usr/bin", "GREETING=hello"]))
        .config("User", json!("vcap"))
        .config("Entrypoint", json!(["/app/web.sh"]))
        .config("ExposedPorts", json!({"9000/tcp": {}}))
}

#[test]
fn docker_images_run_as_apps() {
    require_local!();
    let tmp = TestDir::new("docker-apps");
    let reg = TestRegistry::start(None).unwrap();
    let layout = tmp.path().join("layout");
    web_image().write(&layout, "v1").unwrap();
    push(&layout, "v1", &reg, "team/web").unwrap();
    let l = Local::start(&["--insecure-docker-registry", &reg.host()]);
    let image = format!("{}/team/web:v1", reg.host());

    let out = l.ok(&["push", "dapp", "--docker-image", &image]);
    assert!(out.contains("Staging complete"), "{out}");
    // The pull's progress as plain lines (no terminal): each layer with its
    // size, then the image's total; no bar drawn into the pipe.
    assert!(out.contains(&format!("Downloading docker image {image}...")), "{out}");
    assert_eq!(out.matches("Downloaded layer ").count(), 2, "a line per layer: {out}");
    let total = format!("Downloaded docker image {image} (");
    let line = out.lines().find(|x| x.contains(&total)).unwrap_or_else(|| panic!("{total} in {out}"));
    assert!(line.ends_with("M)") || line.ends_with("K)"), "a size in {line:?}");
    assert!(!out.contains('\r') && !out.contains("\u{1b}["), "{out:?}");
    l.wait_instances("dapp", "dev", "1 instance running", T, all_running(1));
    let page = l.wait_status("dapp.apps.localhost", "/", 200, "docker app hello on 9000", T);
    assert!(page.contains("docker app hello on 9000"), "{page}");
    let app = l.app_json("dapp", "dev");
    assert_eq!(app["app"]["docker_image"], json!(image), "{app}");
    assert_eq!(app["app"]["detected_start_command"], json!("/app/web.sh"), "{app}");

    // An image as a stack: a buildpack app staged and run on it.
    let stack = format!("docker://{image}");
    l.ok(&["push", HELLO, "-n", "onimage", "-s", &stack]);
    l.wait_instances("onimage", "dev", "1 instance running", T, all_running(1));
    l.wait_status("onimage.apps.localhost", "/", 200, "Hello from celld!", T);

    // On a terminal: a bar while the new layer comes; the stored ones are
    // said to be present.
    let layout2 = tmp.path().join("layout2");
    web_image().layer(vec![Entry::file("app/extra", b"x")]).write(&layout2, "v2").unwrap();
    push(&layout2, "v2", &reg, "team/web").unwrap();
    let image2 = format!("{}/team/web:v2", reg.host());
    let (ok, shown) = l.cellctl_tty(&["push", "dapp2", "--docker-image", &image2]);
    assert!(ok, "{shown}");
    assert!(shown.contains("Downloading docker image ["), "a bar: {shown:?}");
    assert_eq!(shown.matches("already present").count(), 2, "{shown:?}");
    assert_eq!(shown.matches("Downloaded layer ").count(), 1, "{shown:?}");

    // Buildpacks refused for a Docker app.
    let out = l.fails(&["push", "dapp", "--docker-image", &image, "-b", "shell_buildpack"]);
    assert!(out.contains("cannot be used with"), "{out}");
    // A password comes from CF_DOCKER_PASSWORD, or the push stops at once.
    let out = l.fails(&["push", "dapp", "--docker-image", &image, "--docker-username", "u"]);
    assert!(out.contains("CF_DOCKER_PASSWORD"), "{out}");
    // An image the registry does not have fails the staging with its name.
    let missing = format!("{}/team/none:v1", reg.host());
    let out = l.fails(&["push", "gone", "--docker-image", &missing]);
    assert!(out.contains("team/none"), "{out}");
    l.finish();
}
