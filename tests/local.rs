//! `celld --local` end to end through `cellctl`: a real daemon with the
//! embedded scheduler, the app layer and the router; apps pushed from
//! directories, staged by the built-in buildpacks in real containers, reached
//! through the router over real TCP.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::local::*;

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello");
const T: Duration = Duration::from_secs(90);

/// Push the example, route to it, logs, restart one instance, scale, stop.
#[test]
fn local_push_route_logs_restart_instance_scale_stop() {
    require_local!();
    let l = Local::start(&[]);
    let out = l.ok(&["push", HELLO, "-i", "2", "-m", "64M"]);
    assert!(out.contains("hello"), "push output names the app: {out}");
    l.wait_instances("hello", "dev", "2 instances running", T, all_running(2));
    l.wait_status("hello.apps.localhost", "/", 200, "Hello from celld!", T);
    // Round-robin: both instances answer.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let (s, b) = l.get("hello.apps.localhost", "/");
        assert_eq!(s, 200, "{b}");
        seen.insert(b.contains("instance 0"));
    }
    assert_eq!(seen.len(), 2, "both instances should answer through the router");
    // Unknown host: 404 with a clear body.
    let (s, b) = l.get("nope.apps.localhost", "/");
    assert_eq!(s, 404, "{b}");
    assert!(b.contains("nope.apps.localhost"), "{b}");

    let logs = l.ok(&["logs", "hello", "--recent"]);
    assert!(logs.contains("[STG/"), "staging lines in recent logs: {logs}");
    assert!(logs.contains("[APP/PROC/WEB/0] OUT hello: serving instance 0"), "app lines in recent logs: {logs}");
    assert!(logs.contains("[RTR/"), "router lines in recent logs: {logs}");

    // restart-app-instance changes exactly one instance guid.
    let before: Vec<String> = l.instances("hello", "dev").iter().map(guid_of).collect();
    l.ok(&["restart-app-instance", "hello", "1"]);
    let after = l.wait_instances("hello", "dev", "instance 1 replaced", T, |i| {
        all_running(2)(i) && guid_of(&i[1]) != before[1] && !guid_of(&i[1]).is_empty()
    });
    assert_eq!(guid_of(&after[0]), before[0], "instance 0 must keep its guid");
    let events = l.ok(&["events", "hello"]);
    assert!(events.contains("audit.app.process.terminate_instance"), "{events}");

    // Scale down to 1: the highest index goes.
    l.ok(&["scale", "hello", "-i", "1"]);
    l.wait_instances("hello", "dev", "scaled to 1", T, all_running(1));

    // Stop removes the route.
    l.ok(&["stop", "hello"]);
    l.wait_status("hello.apps.localhost", "/", 404, "no routable instances", Duration::from_secs(15));
    let apps = l.ok(&["apps"]);
    assert!(apps.contains("hello") && apps.to_lowercase().contains("stopped"), "{apps}");
    l.finish();
}

/// Procfile app with 3 instances scaled to 1; a crashing app; an http health
/// check that never passes; a user-provided service bound and seen by the app.
#[test]
fn local_procfile_crash_health_and_services() {
    require_local!();
    let l = Local::start(&[]);
    let env_app = l.app(
        "envapp",
        &[
            ("Procfile", "web: ./web.sh\n"),
            (
                "web.sh",
                "#!/bin/sh\nmkdir -p $HOME/www\nenv > $HOME/www/env.txt\necho up\nexec busybox httpd -f -p $PORT -h $HOME/www\n",
            ),
        ],
    );
    let dir = env_app.to_str().unwrap();
    l.ok(&["push", dir, "-n", "envapp", "-i", "3", "-m", "32M"]);
    l.wait_instances("envapp", "dev", "3 running", T, all_running(3));
    l.ok(&["scale", "envapp", "-i", "1"]);
    l.wait_instances("envapp", "dev", "scaled to 1", T, all_running(1));

    // A user-provided service, bound, reaches the app after a restart.
    l.ok(&["cups", "mydb", "-p", r#"{"uri":"postgresql://u:p@db.example:5432/app","user":"u"}"#]);
    l.ok(&["bind-service", "envapp", "mydb"]);
    let env = l.ok(&["env", "envapp"]);
    assert!(env.contains("VCAP_SERVICES") && env.contains("user-provided") && env.contains("mydb"), "{env}");
    l.ok(&["restart", "envapp"]);
    l.wait_instances("envapp", "dev", "restarted", T, all_running(1));
    let page = l.wait_status("envapp.apps.localhost", "/env.txt", 200, "VCAP_SERVICES=", T);
    let services = page.lines().find(|x| x.starts_with("VCAP_SERVICES=")).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(&services["VCAP_SERVICES=".len()..]).expect("VCAP_SERVICES JSON");
    assert_eq!(v["user-provided"][0]["name"], "mydb", "{v}");
    assert_eq!(v["user-provided"][0]["label"], "user-provided", "{v}");
    assert_eq!(v["user-provided"][0]["credentials"]["user"], "u", "{v}");
    assert!(page.contains("DATABASE_URL=postgres://u:p@db.example:5432/app"), "{page}");
    assert!(page.contains("VCAP_APPLICATION="), "{page}");
    let services = l.ok(&["services"]);
    assert!(services.contains("mydb") && services.contains("envapp"), "{services}");

    // A crashing app: crashed, with an app.crash event saying why.
    let crash =
        l.app("crasher", &[("Procfile", "web: ./crash.sh\n"), ("crash.sh", "#!/bin/sh\necho about to fail\nexit 3\n")]);
    let (code, out, err) = l.cellctl(&["push", crash.to_str().unwrap(), "-n", "crasher", "-m", "32M", "-u", "process"]);
    assert_ne!(code, 0, "a push whose app crashes fails: {out}{err}");
    l.wait_instances("crasher", "dev", "crashed", T, |i| i.len() == 1 && state_of(&i[0]) == "crashed");
    let app = l.ok(&["app", "crasher"]);
    assert!(app.contains("crashed"), "{app}");
    let deadline = Instant::now() + T;
    loop {
        let events = l.ok(&["events", "crasher"]);
        if events.contains("app.crash") && events.contains("Exited with status 3") {
            break;
        }
        assert!(Instant::now() < deadline, "no app.crash event: {events}");
        std::thread::sleep(Duration::from_millis(250));
    }

    // An http health check on a failing endpoint never routes.
    let sick = l.app(
        "sick",
        &[("Procfile", "web: ./web.sh\n"), ("web.sh", "#!/bin/sh\nmkdir -p $HOME/www\necho ok > $HOME/www/index.html\nexec busybox httpd -f -p $PORT -h $HOME/www\n")],
    );
    let (code, _, _) = l.cellctl(&[
        "push",
        sick.to_str().unwrap(),
        "-n",
        "sick",
        "-m",
        "32M",
        "-u",
        "http",
        "--endpoint",
        "/healthz",
        "-t",
        "3",
    ]);
    assert_ne!(code, 0, "an app that never becomes healthy fails to start");
    for _ in 0..10 {
        let (s, b) = l.get("sick.apps.localhost", "/");
        assert_eq!(s, 404, "an unhealthy app must not be routed: {b}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let i = l.instances("sick", "dev");
    assert!(i.iter().all(|x| state_of(x) != "running"), "{i:?}");
    l.finish();
}

/// Names per space, hosts per cell, and bad input refused with one clear line
/// leaving nothing behind.
#[test]
fn local_names_routes_and_bad_input() {
    require_local!();
    let l = Local::start(&["--max-package-size-mb", "1"]);
    // Same name twice in one space: refused; in another space: allowed.
    l.ok(&["create-app", "site"]);
    let err = l.fails(&["create-app", "site"]);
    assert!(err.contains("already exists"), "{err}");
    // The host "site" is taken by dev/site: refused in prod, whatever the name.
    let err = l.fails(&["--space", "prod", "create-app", "site"]);
    assert!(err.contains("site.apps.localhost") && err.contains("already in use"), "{err}");
    let err = l.fails(&["--space", "prod", "create-app", "other", "--hostname", "site"]);
    assert!(err.contains("already in use"), "{err}");
    l.ok(&["--space", "prod", "create-app", "site", "--hostname", "site-prod"]);
    let prod = l.ok(&["--space", "prod", "apps"]);
    assert!(prod.contains("site") && !prod.contains("other"), "{prod}");

    // A static site pushed for real still works next to them.
    let app = l.app("static", &[("index.html", "<h1>static</h1>\n")]);
    l.ok(&["push", app.to_str().unwrap(), "-n", "site", "-m", "32M"]);
    l.wait_status("site.apps.localhost", "/", 200, "<h1>static</h1>", T);

    let count = |space: &str| -> usize {
        let out = l.ok(&["--space", space, "apps", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v["apps"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let before = (count("dev"), count("prod"));
    let err = l.fails(&["push", "/nonexistent/app-dir"]);
    assert!(err.contains("/nonexistent/app-dir"), "{err}");
    let not_zip = l.app("notzip", &[("notes.txt", "plain text\n")]).join("notes.txt");
    let err = l.fails(&["push", not_zip.to_str().unwrap(), "-n", "notzip"]);
    assert!(err.lines().filter(|x| !x.trim().is_empty()).count() <= 2, "one clear line: {err}");
    // An unreadable package, as an unprivileged user (root reads everything).
    let secret = l.app("secret", &[("app.zip", "PK\x03\x04")]).join("app.zip");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_cellctl"), "--api", &l.d.grpc])
        .args(["push", secret.to_str().unwrap(), "-n", "secret"])
        .env("CELLCTL_HOME", l.d.dir.join("nobody-home"))
        .output();
    if let Ok(out) = as_nobody {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "an unreadable package must be refused: {err}");
        assert!(err.contains("cannot read") || err.contains("ermission denied"), "{err}");
    }
    let err = l.fails(&["push", app.to_str().unwrap(), "-n", "badmem", "-m", "256X"]);
    assert!(err.contains("256X"), "{err}");
    let err = l.fails(&["push", app.to_str().unwrap(), "-n", "badbp", "-b", "no_such_buildpack"]);
    assert!(err.contains("no_such_buildpack"), "{err}");
    // A 2 GB package (sparse) over --max-package-size: refused before upload.
    let big = l.apps_dir.join("big.zip");
    std::fs::File::create(&big)
        .and_then(|mut f| {
            f.write_all(b"PK\x03\x04")?;
            f.set_len(2 << 30)
        })
        .expect("sparse file");
    let started = Instant::now();
    let err = l.fails(&["push", big.to_str().unwrap(), "-n", "big"]);
    assert!(err.contains("larger") || err.contains("at most"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "the size is checked before streaming 2 GB");
    let _ = std::fs::remove_file(&big);
    let err = l.fails(&["cups", "broken", "-p", "{not json"]);
    assert!(err.contains("JSON"), "{err}");
    assert_eq!((count("dev"), count("prod")), before, "a refused push or service left an app behind");
    let services = l.ok(&["services", "--json"]);
    assert!(!services.contains("broken"), "{services}");
    let err = l.fails(&["app", "no-such-app"]);
    assert!(err.contains("no-such-app") && err.contains("not found"), "{err}");
    l.finish();
}

/// cf's `create-buildpack` (output, positions, an existing name refused),
/// `update-buildpack -i`, and `push NAME -p PATH` with a zip.
#[test]
fn local_buildpack_positions_and_push_name_dash_p() {
    require_local!();
    let l = Local::start(&[]);
    let bp = l.apps_dir.join("never-bp");
    std::fs::create_dir_all(bp.join("bin")).expect("buildpack dir");
    for (script, body) in [("detect", "#!/bin/sh\nexit 1\n"), ("compile", "#!/bin/sh\n")] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(bp.join("bin").join(script), body).expect("script");
        std::fs::set_permissions(bp.join("bin").join(script), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let bp = bp.to_str().unwrap();
    let order = || -> Vec<String> {
        let out = l.ok(&["buildpacks", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("buildpacks json");
        v.as_array().expect("list").iter().map(|b| b["name"].as_str().unwrap_or("").to_string()).collect()
    };
    let builtin = order();
    assert_eq!(builtin.len(), 3, "{builtin:?}");

    let out = l.ok(&["create-buildpack", "first", bp, "1"]);
    assert_eq!(
        out,
        "Creating buildpack first as admin...\nOK\n\nUploading buildpack first as admin...\nDone uploading\nOK\n\n\
         Processing uploaded buildpack first...\nOK\n"
    );
    assert_eq!(order()[..2], ["first".to_string(), builtin[0].clone()]);
    // Past the end: last.
    l.ok(&["create-buildpack", "tail", bp, "99"]);
    assert_eq!(order().last().map(String::as_str), Some("tail"));

    // An existing name is refused (position and all), as Cloud Controller does.
    let (code, out, err) = l.cellctl(&["create-buildpack", "first", bp, "3"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("Creating buildpack first as admin...\n"), "{out}");
    assert!(err.contains("Buildpack with name 'first' and an unassigned stack already exists"), "{err}");
    assert_eq!(order()[0], "first");
    let err = l.fails(&["create-buildpack", "zero", bp, "0"]);
    assert!(err.contains("Position must be greater than or equal to 1"), "{err}");
    assert!(!order().contains(&"zero".to_string()));

    // update-buildpack -i moves it; the others shift.
    l.ok(&["update-buildpack", "first", "-i", "3"]);
    let now = order();
    assert_eq!(now[..3], [builtin[0].clone(), builtin[1].clone(), "first".to_string()], "{now:?}");
    let err = l.fails(&["update-buildpack", "nope", "-i", "1"]);
    assert!(err.contains("nope"), "{err}");

    // cf's `push NAME -p PATH`: PATH a zip; NAME the app.
    let zip_path = l.apps_dir.join("site.zip");
    {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&zip_path).expect("zip"));
        w.start_file("index.html", zip::write::SimpleFileOptions::default()).expect("entry");
        w.write_all(b"<h1>dash p</h1>\n").expect("write");
        w.finish().expect("finish zip");
    }
    let out = l.ok(&["push", "dashp", "-p", zip_path.to_str().unwrap(), "-m", "32M"]);
    assert!(out.contains("Pushing app dashp"), "{out}");
    l.wait_status("dashp.apps.localhost", "/", 200, "<h1>dash p</h1>", T);
    l.finish();
}
