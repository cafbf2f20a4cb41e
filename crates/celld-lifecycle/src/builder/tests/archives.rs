//! What goes in and comes out end to end: app packages in every format (and
//! hostile ones), the build cache round trip, the droplet layout, and the
//! built-in buildpacks handed over as archives.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;

use super::{Env, RELEASE_WEB};
use crate::archive;
use crate::buildpack_dir_name;
use crate::testutil::{RawTar, RawZip, tgz_names};

#[test]
fn lifecycle_builder_droplet_layout() {
    let env = Env::new(&["bp"]);
    env.app("sub/file.txt", "x");
    env.bp("bp", &[("detect", "echo BP"), ("supply", "exit 0"), ("finalize", "exit 0"), ("release", RELEASE_WEB)]);
    env.ok();
    let names = env.droplet();
    let top: Vec<&str> =
        names.iter().map(String::as_str).filter(|n| n.trim_end_matches('/').matches('/').count() == 1).collect();
    assert_eq!(top, ["./app/", "./deps/", "./profile.d/", "./staging_info.yml", "./tmp/", "./logs/"]);
    assert_eq!(names.first().map(String::as_str), Some("./"));
    assert!(names.contains(&"./app/sub/file.txt".to_string()) && names.contains(&"./deps/0/".to_string()));
}

#[test]
fn lifecycle_builder_build_cache_round_trip() {
    let scripts: [(&str, &str); 4] = [
        ("detect", "echo BP"),
        ("supply", "exit 0"),
        (
            "finalize",
            "if [ -f \"$2/remember\" ]; then cp \"$2/remember\" \"$1/from-cache\"; fi; echo kept > \"$2/remember\"",
        ),
        ("release", RELEASE_WEB),
    ];
    let first = Env::new(&["bp"]);
    first.bp("bp", &scripts);
    first.ok();
    assert!(!first.cfg.build_dir.join("from-cache").exists());
    assert!(tgz_names(&first.cfg.output_build_artifacts_cache).contains(&"./final/remember".to_string()));

    let mut second = Env::new(&["bp"]);
    second.bp("bp", &scripts);
    let archive = second.root().join("cache.tgz");
    fs::copy(&first.cfg.output_build_artifacts_cache, &archive).unwrap();
    second.cfg.build_artifacts_cache_archive = Some(archive);
    // Leftovers of other buildpacks are pruned.
    fs::create_dir_all(second.cfg.build_artifacts_cache_dir.join(buildpack_dir_name("gone"))).unwrap();
    fs::write(second.cfg.build_artifacts_cache_dir.join("pre-multi-file"), "x").unwrap();
    second.ok();
    assert_eq!(fs::read_to_string(second.cfg.build_dir.join("from-cache")).unwrap(), "kept\n");
    let names = tgz_names(&second.cfg.output_build_artifacts_cache);
    assert_eq!(names, ["./", "./final/", "./final/remember"]);

    // A corrupt cache is only a warning.
    let mut third = Env::new(&["bp"]);
    third.bp("bp", &scripts);
    let archive = third.root().join("cache.tgz");
    fs::write(&archive, "garbage").unwrap();
    third.cfg.build_artifacts_cache_archive = Some(archive);
    let log = third.ok();
    assert!(log.iter().any(|l| l.starts_with("Failed to extract build artifacts cache")), "{log:?}");
    // And a missing one is nothing at all.
    third.cfg.build_artifacts_cache_archive = Some(third.root().join("absent.tgz"));
    assert!(third.ok().is_empty());
}

fn package_env(bytes: &[u8]) -> Env {
    let mut env = Env::new(&["bp"]);
    env.bp("bp", &[("detect", "echo BP"), ("compile", "exit 0"), ("release", RELEASE_WEB)]);
    let package = env.root().join("package");
    fs::write(&package, bytes).unwrap();
    env.cfg.app_package = Some(package);
    env
}

#[test]
fn lifecycle_builder_unpacks_zip_tar_and_tgz_packages() {
    for bytes in [
        RawZip::new().file("index.php", b"<?php", 0o644).file("bin/run", b"#!/bin/sh", 0o755).finish(),
        RawTar::default().file("index.php", b"<?php", 0o644).file("bin/run", b"#!/bin/sh", 0o755).finish(),
        RawTar::default().file("./index.php", b"<?php", 0o644).file("./bin/run", b"#!/bin/sh", 0o755).gzip(),
    ] {
        let env = package_env(&bytes);
        env.ok();
        let names = env.droplet();
        assert!(
            names.contains(&"./app/index.php".to_string()) && names.contains(&"./app/bin/run".to_string()),
            "{names:?}"
        );
    }
}

#[test]
fn lifecycle_builder_refuses_hostile_packages() {
    let probe = format!("celld-lifecycle-probe-{}", std::process::id());
    let abs = format!("/tmp/celld-lifecycle-abs-pkg-{}", std::process::id());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("tar ../x", RawTar::default().file("../canary", b"pwned", 0o644).finish()),
        ("zip ../x", RawZip::new().file("../canary", b"pwned", 0o644).finish()),
        (
            "tar symlink /etc",
            RawTar::default().link("etc", "/etc", false).file(&format!("etc/{probe}"), b"x", 0o644).finish(),
        ),
        ("zip symlink /etc", RawZip::new().symlink("etc", "/etc").file(&format!("etc/{probe}"), b"x", 0o644).finish()),
        ("tgz symlink ..", RawTar::default().link("up", "..", false).file("up/canary", b"pwned", 0o644).gzip()),
        ("zip symlink ..", RawZip::new().symlink("up", "..").file("up/canary", b"pwned", 0o644).finish()),
    ];
    for (what, bytes) in cases {
        let env = package_env(&bytes);
        let (e, _) = env.fail();
        assert_eq!(e.exit_code(), 1, "{what}");
        assert!(e.to_string().starts_with("Failed to extract app package: "), "{what}: {e}");
        assert!(!Path::new("/etc").join(&probe).exists(), "{what}");
        let outside: Vec<_> = fs::read_dir(env.root()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(
            outside.iter().all(|n| ["app", "canary", "package", "buildpacks", "tmp"].contains(&n.to_str().unwrap())),
            "{what}: {outside:?}"
        );
    }
    // Absolute names are kept inside the build dir.
    for bytes in [
        RawTar::default().file(&format!("{abs}/x"), b"in", 0o644).finish(),
        RawZip::new().file(&format!("{abs}/x"), b"in", 0o644).finish(),
    ] {
        let env = package_env(&bytes);
        env.ok();
        assert!(!Path::new(&abs).exists());
        assert!(env.cfg.build_dir.join(&abs[1..]).join("x").exists());
    }
}

#[test]
fn lifecycle_builder_reports_bad_packages() {
    let env = package_env(b"");
    let (e, _) = env.fail();
    assert_eq!((e.exit_code(), e.to_string()), (1, "Failed to extract app package: the package is empty".to_string()));
    let env = package_env(b"PK\x03\x04 truncated nonsense");
    let msg = env.fail().0.to_string();
    assert!(msg.starts_with("Failed to extract app package: corrupt zip archive: "), "{msg}");
    let env = package_env(b"#!/bin/sh\necho I am not an archive\n");
    let msg = env.fail().0.to_string();
    assert_eq!(msg, "Failed to extract app package: not a zip, tar or gzipped tar archive");
    let mut env = package_env(b"");
    env.cfg.app_package = Some(env.root().join("missing"));
    assert!(env.fail().0.to_string().starts_with("Failed to extract app package: cannot open "));
}

/// The built-in buildpacks, archived as the daemon hands them over.
fn with_builtins(env: &mut Env) {
    let archives = env.root().join("archives");
    fs::create_dir_all(&archives).unwrap();
    // The repository's top-level buildpacks/, two levels above this crate.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../buildpacks");
    for (key, dir) in [("staticfile_buildpack", "staticfile"), ("shell_buildpack", "shell")] {
        archive::pack_dir_tgz(&src.join(dir), &archives.join(key)).unwrap();
    }
    // binary as a zip whose files sit under one top directory.
    let mut zip = RawZip::new().dir("binary-buildpack-v1/").dir("binary-buildpack-v1/bin/");
    for entry in fs::read_dir(src.join("binary/bin")).unwrap() {
        let entry = entry.unwrap();
        let name = format!("binary-buildpack-v1/bin/{}", entry.file_name().to_str().unwrap());
        zip = zip.file(&name, &fs::read(entry.path()).unwrap(), 0o755);
    }
    zip = zip.file("binary-buildpack-v1/VERSION", &fs::read(src.join("binary/VERSION")).unwrap(), 0o644);
    fs::write(archives.join("binary_buildpack"), zip.finish()).unwrap();
    env.cfg.buildpack_archives_dir = Some(archives);
}

const BUILTIN_ORDER: [&str; 3] = ["staticfile_buildpack", "shell_buildpack", "binary_buildpack"];

#[test]
fn lifecycle_builder_builtin_staticfile() {
    let mut env = Env::new(&BUILTIN_ORDER);
    with_builtins(&mut env);
    env.app("index.html", "<h1>hello</h1>");
    env.app("css/site.css", "h1 {}");
    env.app(".hidden", "h");
    env.ok();
    let r = env.result();
    assert_eq!(
        r["lifecycle_metadata"]["buildpacks"],
        json!([{"key": "staticfile_buildpack", "name": "staticfile", "version": "1.0.0"}])
    );
    assert_eq!(r["process_types"], json!({"web": "./boot.sh"}));
    let app = &env.cfg.build_dir;
    assert_eq!(fs::read_to_string(app.join("public/index.html")).unwrap(), "<h1>hello</h1>");
    assert!(app.join("public/css/site.css").exists() && app.join("public/.hidden").exists());
    assert!(!app.join("index.html").exists());
    let boot = fs::read_to_string(app.join("boot.sh")).unwrap();
    assert!(boot.contains("httpd -f -v -p \"${PORT:-8080}\" -h 'public'"), "{boot}");
    assert_eq!(fs::metadata(app.join("boot.sh")).unwrap().permissions().mode() & 0o111, 0o111);
    assert!(env.droplet().contains(&"./app/public/index.html".to_string()));

    // root: in the Staticfile serves that directory instead.
    let mut env = Env::new(&BUILTIN_ORDER);
    with_builtins(&mut env);
    env.app("Staticfile", "root: dist\n");
    env.app("dist/index.html", "x");
    env.ok();
    assert!(fs::read_to_string(env.cfg.build_dir.join("boot.sh")).unwrap().contains("-h 'dist'"));
    assert!(env.cfg.build_dir.join("dist/index.html").exists());
}

#[test]
fn lifecycle_builder_builtin_shell() {
    let mut env = Env::new(&BUILTIN_ORDER);
    with_builtins(&mut env);
    env.app("Procfile", "web: ./run.sh\n");
    env.app("run.sh", "#!/bin/sh\necho serving\n");
    env.ok();
    let r = env.result();
    assert_eq!(
        r["lifecycle_metadata"]["buildpacks"],
        json!([{"key": "shell_buildpack", "name": "shell", "version": "1.0.0", "config": {}}])
    );
    assert_eq!(r["process_types"], json!({"web": "./run.sh"}));
    assert_eq!(fs::metadata(env.cfg.build_dir.join("run.sh")).unwrap().permissions().mode() & 0o111, 0o111);
}

#[test]
fn lifecycle_builder_builtin_binary_is_only_explicit() {
    // Detect never picks it.
    let mut env = Env::new(&["binary_buildpack"]);
    with_builtins(&mut env);
    env.app("app-bin", "x");
    assert_eq!(env.fail().0.exit_code(), 222);

    let mut env = Env::new(&["binary_buildpack"]);
    with_builtins(&mut env);
    env.cfg.skip_detect = true;
    env.app("Procfile", "web: ./app-bin --port $PORT\n");
    env.app("app-bin", "x");
    env.ok();
    let r = env.result();
    assert_eq!(
        r["lifecycle_metadata"]["buildpacks"],
        json!([{"key": "binary_buildpack", "name": "binary", "version": "1.0.0"}])
    );
    assert_eq!(r["process_types"], json!({"web": "./app-bin --port $PORT"}));

    // Without a Procfile the command must come at run time; staging succeeds.
    let mut env = Env::new(&["binary_buildpack"]);
    with_builtins(&mut env);
    env.cfg.skip_detect = true;
    env.app("app-bin", "x");
    let log = env.ok();
    assert!(log.contains(&"No start command specified by buildpack or via Procfile.".to_string()));
}
