//! Staging against a real celld: buildpacks run by the static lifecycle builder
//! in real staging containers, droplets and caches in the real (file) blobstore,
//! over the real gRPC listener.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use celld::grpc::pb;
use celld::grpc::pb::stager_client::StagerClient;
use common::sched::tgz;
use common::{Daemon, rt};
use tonic::transport::Channel;

fn lifecycle_built() -> bool {
    let p = Path::new(env!("CARGO_BIN_EXE_celld")).with_file_name("celld-lifecycle");
    if !p.is_file() {
        eprintln!("skipped: {} is missing (run `make lifecycle` or `make test`)", p.display());
    }
    p.is_file()
}

macro_rules! require_staging {
    () => {
        require_host!();
        if !lifecycle_built() {
            panic!("the static lifecycle binary is missing: run `make lifecycle` (make test does)");
        }
    };
}

async fn client(d: &Daemon) -> StagerClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Channel::from_shared(format!("http://{}", d.grpc)).expect("uri").connect().await {
            Ok(ch) => return StagerClient::new(ch).max_decoding_message_size(64 << 20),
            Err(e) => {
                assert!(Instant::now() < deadline, "gRPC at {} never answered: {e}\n{}", d.grpc, d.log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A zip in memory (stored, no compression needed).
fn zip(files: &[(&str, u32, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, mode, body) in files {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .unix_permissions(*mode);
        w.start_file(*path, opts).expect("zip entry");
        w.write_all(body.as_bytes()).expect("zip write");
    }
    w.finish().expect("zip").into_inner()
}

/// A buildpack as a map of `bin/NAME` → shell script body.
fn buildpack(scripts: &[(&str, &str)]) -> Vec<u8> {
    let files: Vec<(String, u32, String)> =
        scripts.iter().map(|(n, body)| (format!("bin/{n}"), 0o755, format!("#!/bin/sh\n{body}\n"))).collect();
    let refs: Vec<(&str, u32, &str)> = files.iter().map(|(p, m, b)| (p.as_str(), *m, b.as_str())).collect();
    tgz(&refs)
}

async fn create_buildpack(c: &mut StagerClient<Channel>, name: &str, position: u32, archive: Vec<u8>) -> pb::Buildpack {
    use pb::create_buildpack_request::Part;
    let msgs = vec![
        pb::CreateBuildpackRequest {
            part: Some(Part::Metadata(pb::BuildpackMetadata {
                name: name.into(),
                position,
                stack: String::new(),
                filename: format!("{name}.tgz"),
            })),
        },
        pb::CreateBuildpackRequest { part: Some(Part::Data(archive)) },
    ];
    c.create_buildpack(tokio_stream::iter(msgs)).await.expect("create buildpack").into_inner()
}

async fn upload(c: &mut StagerClient<Channel>, package: Vec<u8>) -> Result<pb::Package, tonic::Status> {
    use pb::upload_package_request::Part;
    let mut msgs = vec![pb::UploadPackageRequest {
        part: Some(Part::Metadata(pb::PackageMetadata { app_guid: String::new(), size: package.len() as u64 })),
    }];
    for chunk in package.chunks(16 * 1024) {
        msgs.push(pb::UploadPackageRequest { part: Some(Part::Data(chunk.to_vec())) });
    }
    c.upload_package(tokio_stream::iter(msgs)).await.map(|r| r.into_inner())
}

struct Staged {
    guid: String,
    logs: Vec<String>,
    result: Result<pb::StagingResult, pb::StagingFailure>,
}

impl Staged {
    fn ok(&self) -> &pb::StagingResult {
        match &self.result {
            Ok(r) => r,
            Err(f) => panic!("staging failed: {f:?}\n{}", self.tail()),
        }
    }
    fn failure(&self) -> &pb::StagingFailure {
        match &self.result {
            Err(f) => f,
            Ok(r) => panic!("staging succeeded: {r:?}\n{}", self.tail()),
        }
    }
    /// The last log lines (a chatty buildpack's whole output would drown the message).
    fn tail(&self) -> String {
        self.logs[self.logs.len().saturating_sub(40)..].join("\n")
    }
    fn logged(&self, needle: &str) -> bool {
        self.logs.iter().any(|l| l.contains(needle))
    }
}

fn request(app: &str, package: &pb::Package, buildpacks: &[&str]) -> pb::StageRequest {
    pb::StageRequest {
        app_guid: app.into(),
        package_key: package.key.clone(),
        stack: "tiny".into(),
        buildpacks: buildpacks.iter().map(|s| s.to_string()).collect(),
        memory_mb: 256,
        disk_mb: 512,
        ..Default::default()
    }
}

async fn stage(c: &mut StagerClient<Channel>, req: pb::StageRequest) -> Staged {
    let mut s = c.stage(req).await.expect("stage").into_inner();
    let (mut guid, mut logs) = (String::new(), Vec::new());
    while let Some(ev) = s.message().await.expect("staging stream") {
        use pb::staging_event::Event;
        match ev.event {
            Some(Event::Started(st)) => guid = st.staging_guid,
            Some(Event::Log(l)) => {
                assert_eq!(l.source_type, "STG");
                logs.push(l.message)
            }
            Some(Event::Result(r)) => return Staged { guid, logs, result: Ok(r) },
            Some(Event::Failure(f)) => return Staged { guid, logs, result: Err(f) },
            Some(Event::Progress(_)) | None => {}
        }
    }
    panic!("staging stream ended without an outcome:\n{}", logs.join("\n"));
}

async fn stage_app(
    c: &mut StagerClient<Channel>,
    app: &str,
    files: &[(&str, u32, &str)],
    buildpacks: &[&str],
) -> Staged {
    let pkg = upload(c, zip(files)).await.expect("upload");
    stage(c, request(app, &pkg, buildpacks)).await
}

async fn droplet_entries(c: &mut StagerClient<Channel>, key: &str) -> BTreeMap<String, Vec<u8>> {
    let mut s = c
        .download_droplet(pb::DownloadDropletRequest { droplet_key: key.into() })
        .await
        .expect("download")
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = s.message().await.expect("droplet chunk") {
        data.extend_from_slice(&chunk.data);
    }
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&data[..]));
    let mut out = BTreeMap::new();
    for e in a.entries().expect("droplet tar") {
        let mut e = e.expect("entry");
        let p = e.path().expect("path").to_string_lossy().into_owned();
        let mut body = Vec::new();
        let _ = e.read_to_end(&mut body);
        out.insert(p, body);
    }
    out
}

/// No staging containers, scratch or droplets of failed stagings are left.
async fn assert_clean(d: &Daemon, failed: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = d.client.list(&BTreeMap::new()).await.expect("list");
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "containers left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scratch: Vec<_> = std::fs::read_dir(d.depot().join("staging/scratch"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(scratch.is_empty(), "scratch left behind: {scratch:?}");
    let blobs =
        celld::blobstore::Blobstore::open(&format!("file://{}", d.depot().join("blobs").display())).expect("blobstore");
    for g in failed {
        let key = format!("droplets/{g}");
        assert!(!blobs.exists(&key).await.expect("exists"), "droplet of failed staging {g} left behind");
    }
}

#[test]
fn builtin_buildpacks_stage_in_tiny() {
    require_staging!();
    let d = Daemon::start();
    rt().block_on(async {
        let mut c = client(&d).await;
        let names: Vec<String> = c
            .list_buildpacks(pb::ListBuildpacksRequest {})
            .await
            .expect("list")
            .into_inner()
            .buildpacks
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["staticfile_buildpack", "shell_buildpack", "binary_buildpack"]);

        let s = stage_app(&mut c, "static-app", &[("index.html", 0o644, "<h1>hi</h1>")], &[]).await;
        let r = s.ok();
        assert_eq!(r.buildpack_key, "staticfile_buildpack");
        for line in [
            "Downloading app package...",
            "Downloaded app package",
            "Uploading droplet...",
            "Uploaded droplet",
            "Exit status 0",
        ] {
            assert!(s.logged(line), "{line:?} in {:?}", s.logs);
        }
        // The same lines reach the cell's log stream, as STG under the app guid.
        let ch = Channel::from_shared(format!("http://{}", d.grpc)).expect("uri").connect_lazy();
        let mut logs = pb::cell_client::CellClient::new(ch)
            .stream_logs(pb::StreamLogsRequest { log_guid: "static-app".into(), recent: 1000, ..Default::default() })
            .await
            .expect("StreamLogs")
            .into_inner();
        let mut stg = Vec::new();
        while let Some(e) = logs.message().await.expect("log stream") {
            stg.push((e.source_type, e.message));
        }
        assert!(stg.contains(&("STG".to_string(), "Exit status 0".to_string())), "{stg:?}");
        // The droplet: Cloud Foundry's layout.
        let entries = droplet_entries(&mut c, &r.droplet_key).await;
        for top in ["./app/", "./deps/", "./profile.d/", "./staging_info.yml", "./tmp/", "./logs/"] {
            assert!(entries.keys().any(|k| k == top || k.starts_with(top)), "{top} in {:?}", entries.keys());
        }
        let info: serde_json::Value =
            serde_json::from_slice(&entries["./staging_info.yml"]).expect("staging_info.yml is JSON");
        assert_eq!(info["start_command"], r.start_command.as_str());

        let s = stage_app(
            &mut c,
            "shell-app",
            &[("Procfile", 0o644, "web: ./run.sh\n"), ("run.sh", 0o755, "echo hi\n")],
            &[],
        )
        .await;
        assert_eq!(s.ok().start_command, "./run.sh");
        assert_eq!(s.ok().buildpack_key, "shell_buildpack");

        // binary: never detected, used when named (also by its short name).
        let s = stage_app(
            &mut c,
            "bin-app",
            &[("Procfile", 0o644, "web: ./server\n"), ("server", 0o755, "x")],
            &["binary"],
        )
        .await;
        assert_eq!(s.ok().start_command, "./server");
        assert_eq!(s.ok().buildpacks[0].key, "binary_buildpack");
        assert_clean(&d, &[]).await;
    });
}

#[test]
fn detect_order_explicit_buildpacks_and_exit_codes() {
    require_staging!();
    let d = Daemon::start();
    rt().block_on(async {
        let mut c = client(&d).await;
        let release = "echo '---'; echo 'default_process_types:'; echo '  web: ./from-release'; echo '  worker: ./w'";
        create_buildpack(
            &mut c,
            "nope",
            1,
            buildpack(&[("detect", "exit 1"), ("compile", "echo nope compiled"), ("release", release)]),
        )
        .await;
        create_buildpack(
            &mut c,
            "second",
            2,
            buildpack(&[
                ("detect", "echo 'Second Name'"),
                ("compile", "echo second compiled; echo built > $1/built"),
                ("release", release),
            ]),
        )
        .await;
        create_buildpack(
            &mut c,
            "third",
            3,
            buildpack(&[("detect", "echo third"), ("compile", "exit 9"), ("release", release)]),
        )
        .await;
        let app: &[(&str, u32, &str)] = &[("README", 0o644, "no markers here")];

        // First detect that exits 0 wins; its trimmed stdout names it.
        let s = stage_app(&mut c, "order", app, &[]).await;
        let r = s.ok();
        assert_eq!(r.detected_buildpack, "Second Name");
        assert_eq!(r.buildpack_key, "second");
        assert!(s.logged("second compiled"));
        assert_eq!(r.process_types.get("worker").map(String::as_str), Some("./w"));
        assert_eq!(r.start_command, "./from-release");
        let entries = droplet_entries(&mut c, &r.droplet_key).await;
        assert_eq!(
            entries.get("./app/built").map(|b| String::from_utf8_lossy(b).trim().to_string()).as_deref(),
            Some("built")
        );

        // Named buildpacks skip detect, even one whose detect fails.
        let s = stage_app(&mut c, "order", app, &["nope"]).await;
        assert_eq!(s.ok().buildpack_key, "nope");
        assert!(s.logged("nope compiled"));

        // Procfile overrides the release's web command, by type.
        let s = stage_app(&mut c, "order", &[("Procfile", 0o644, "web: ./mine\n")], &["second"]).await;
        assert_eq!(s.ok().start_command, "./mine");
        assert_eq!(s.ok().process_types.get("worker").map(String::as_str), Some("./w"));

        // 223: compile fails.
        let s = stage_app(&mut c, "order", app, &["third"]).await;
        assert_eq!((s.failure().reason.as_str(), s.failure().exit_code), ("BuildpackCompileFailed", 223));
        let f223 = s.guid.clone();

        // 224: release fails, or prints something that is not YAML.
        create_buildpack(
            &mut c,
            "badrelease",
            0,
            buildpack(&[
                ("detect", "exit 1"),
                ("compile", "true"),
                ("release", "echo 'default_process_types: [unclosed'"),
            ]),
        )
        .await;
        let s = stage_app(&mut c, "order", app, &["badrelease"]).await;
        assert_eq!((s.failure().reason.as_str(), s.failure().exit_code), ("BuildpackReleaseFailed", 224));
        create_buildpack(
            &mut c,
            "failrelease",
            0,
            buildpack(&[("detect", "exit 1"), ("compile", "true"), ("release", "exit 3")]),
        )
        .await;
        let s = stage_app(&mut c, "order", app, &["failrelease"]).await;
        assert_eq!(s.failure().exit_code, 224);

        // 225: a supply buildpack fails; also: a non-final buildpack without bin/supply.
        create_buildpack(&mut c, "badsupply", 0, buildpack(&[("supply", "exit 4"), ("finalize", "true")])).await;
        create_buildpack(
            &mut c,
            "fin",
            0,
            buildpack(&[("supply", "true"), ("finalize", "echo finalized"), ("release", "echo '--- {}'")]),
        )
        .await;
        let s = stage_app(&mut c, "order", app, &["badsupply", "fin"]).await;
        assert_eq!(s.failure().exit_code, 225);
        let s = stage_app(&mut c, "order", app, &["second", "fin"]).await;
        assert_eq!(s.failure().exit_code, 225, "second has no bin/supply");

        // 226: finalize fails.
        create_buildpack(&mut c, "badfinalize", 0, buildpack(&[("supply", "true"), ("finalize", "exit 5")])).await;
        let s = stage_app(&mut c, "order", app, &["badfinalize"]).await;
        assert_eq!(s.failure().exit_code, 226);
        assert_eq!(s.failure().reason, "StagingError");

        // 222: nothing detects (only buildpacks that do not match are left).
        for name in ["nope", "second", "third", "badrelease", "failrelease", "badsupply", "fin", "badfinalize"] {
            c.delete_buildpack(pb::DeleteBuildpackRequest { name: name.into() }).await.expect("delete");
        }
        // A buildpack without bin/detect is passed over, not a crash.
        create_buildpack(&mut c, "nodetect", 1, buildpack(&[("compile", "true")])).await;
        let s = stage_app(&mut c, "order", app, &[]).await;
        let f = s.failure();
        assert_eq!((f.reason.as_str(), f.exit_code), ("NoAppDetectedError", 222));
        assert!(s.logged("None of the buildpacks detected a compatible application"), "{:?}", s.logs);
        assert_clean(&d, &[&f223, &s.guid]).await;
    });
}

#[test]
fn multi_buildpack_supply_finalize_and_build_cache() {
    require_staging!();
    let d = Daemon::start();
    rt().block_on(async {
        let mut c = client(&d).await;
        // supply: writes its config.yml (name, version) into deps/IDX; finalize sees the deps.
        create_buildpack(&mut c, "sup", 0, buildpack(&[
            ("supply", "mkdir -p $3/$4/bin; echo 'name: supplied-thing' > $3/$4/config.yml; echo 'version: 9.9' >> $3/$4/config.yml; echo tool > $3/$4/bin/tool"),
        ])).await;
        create_buildpack(&mut c, "fin", 0, buildpack(&[
            ("supply", "echo 'name: final-thing' > $3/$4/config.yml"),
            ("finalize", "ls $3 > $1/deps-seen; n=$(cat $2/count 2>/dev/null || echo 0); echo \"cache count $n\"; echo $((n+1)) > $2/count"),
            ("release", "echo '---'; echo 'default_process_types:'; echo '  web: ./go'"),
        ])).await;
        let app: &[(&str, u32, &str)] = &[("main", 0o644, "x")];
        let s = stage_app(&mut c, "cached-app", app, &["sup", "fin"]).await;
        let r = s.ok();
        let names: Vec<&str> = r.buildpacks.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["supplied-thing", "final-thing"]);
        assert_eq!(r.buildpacks[0].version, "9.9");
        assert!(s.logged("cache count 0"), "{:?}", s.logs);
        let entries = droplet_entries(&mut c, &r.droplet_key).await;
        assert!(entries.keys().any(|k| k.starts_with("./deps/0/bin/tool")), "{:?}", entries.keys());
        // The second staging of the same app gets the first one's cache back...
        let s = stage_app(&mut c, "cached-app", app, &["sup", "fin"]).await;
        assert!(s.logged("Downloaded build artifacts cache"), "{:?}", s.logs);
        assert!(s.logged("cache count 1"), "{:?}", s.logs);
        // ... another app does not.
        let s = stage_app(&mut c, "other-app", app, &["sup", "fin"]).await;
        assert!(s.logged("cache count 0"), "{:?}", s.logs);
        assert_clean(&d, &[]).await;
    });
}

#[test]
fn hostile_packages_and_buildpacks_are_contained() {
    require_staging!();
    let d = Daemon::start();
    rt().block_on(async {
        let mut c = client(&d).await;
        let secret = format!("/tmp/celld-secret-{}", std::process::id());
        std::fs::write(&secret, "host secret").expect("secret");
        // Another app's package, on the host, in the blobstore.
        let other = upload(&mut c, zip(&[("private.txt", 0o644, "other app's secret")])).await.expect("upload");
        // Where the other package's bytes really are on the host.
        let other_dir = d.depot().join(format!("blobs/data/{}", other.key));
        let other_data = std::fs::read_dir(&other_dir)
            .expect("the package's data directory")
            .flatten()
            .map(|e| e.path())
            .next()
            .expect("the package's data file");
        assert!(other_data.is_file());
        // The buildpack looks for everything it must not see or have written.
        let probe = format!(
            "for p in {secret} {other} /tmp/evil /evil /tmp/app/../evil; do \
               if [ -e $p ]; then echo \"LEAK $p\"; fi; done; \
             ls /proc/1/root/ 2>/dev/null | grep -q celld-secret && echo LEAK proc; \
             echo PROBE-DONE",
            other = other_data.display()
        );
        create_buildpack(
            &mut c,
            "probe",
            0,
            buildpack(&[("detect", "exit 1"), ("compile", &probe), ("release", "echo '--- {}'")]),
        )
        .await;

        // A tar with ../, an absolute path, and a symlink out followed by a write through it.
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, link: Option<&str>, body: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                h.set_link_name(l).expect("link");
            }
            // set_path refuses `..`; write the raw name like a hostile tool would.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, body).expect("append");
        };
        add("../evil", tar::EntryType::Regular, None, b"x");
        add("/evil", tar::EntryType::Regular, None, b"x");
        add("out", tar::EntryType::Symlink, Some("/tmp"), b"");
        add("out/evil", tar::EntryType::Regular, None, b"x");
        add("up", tar::EntryType::Symlink, Some(".."), b"");
        add("up/evil", tar::EntryType::Regular, None, b"x");
        add("ok.txt", tar::EntryType::Regular, None, b"fine");
        let evil_tar = b.into_inner().expect("tar");
        let pkg = upload(&mut c, evil_tar).await.expect("upload tar");
        let s = stage(&mut c, request("evil-app", &pkg, &["probe"])).await;
        // Refused or contained; either way nothing escaped and nothing leaked.
        assert!(!s.logs.iter().any(|l| l.contains("LEAK")), "{:?}", s.logs);
        if s.result.is_ok() {
            assert!(s.logged("PROBE-DONE"), "{:?}", s.logs);
        }
        assert!(!Path::new("/evil").exists() && !Path::new("/tmp/evil").exists());

        // The same in a zip.
        let evil_zip = {
            let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            for name in ["../evil", "/evil", "a/../../evil", "ok.txt"] {
                w.start_file(name, o).expect("zip entry");
                w.write_all(b"x").expect("zip");
            }
            w.add_symlink("out", "/tmp", o).expect("symlink");
            w.start_file("out/evil", o).expect("zip entry");
            w.write_all(b"x").expect("zip");
            w.finish().expect("zip").into_inner()
        };
        let pkg = upload(&mut c, evil_zip).await.expect("upload zip");
        let s = stage(&mut c, request("evil-app", &pkg, &["probe"])).await;
        assert!(!s.logs.iter().any(|l| l.contains("LEAK")), "{:?}", s.logs);
        if s.result.is_ok() {
            assert!(s.logged("PROBE-DONE"), "{:?}", s.logs);
        }

        // A plain app: the probe runs and finds nothing.
        let s = stage_app(&mut c, "plain", &[("a", 0o644, "b")], &["probe"]).await;
        s.ok();
        assert!(s.logged("PROBE-DONE") && !s.logged("LEAK"), "{:?}", s.logs);
        let _ = std::fs::remove_file(&secret);
        assert_clean(&d, &[]).await;
    });
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing() {
    require_staging!();
    let d = Daemon::start();
    rt().block_on(async {
        let mut c = client(&d).await;
        // Refused at upload, with a reason.
        let e = upload(&mut c, Vec::new()).await.expect_err("empty package");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("empty"), "{}", e.message());
        let mut corrupt = zip(&[("a.txt", 0o644, "hello")]);
        let n = corrupt.len();
        corrupt.truncate(n - 10);
        let e = upload(&mut c, corrupt.clone()).await.expect_err("corrupt zip");
        assert!(e.message().contains("not a valid zip"), "{}", e.message());
        let e = upload(&mut c, b"just some text".to_vec()).await.expect_err("not an archive");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);

        // A corrupt zip that got into the blobstore some other way fails the staging.
        let blobs =
            celld::blobstore::Blobstore::open(&format!("file://{}", d.depot().join("blobs").display())).expect("blobstore");
        blobs.put_bytes("packages/corrupt", corrupt.into()).await.expect("put");
        let s = stage(
            &mut c,
            request("bad", &pb::Package { key: "packages/corrupt".into(), ..Default::default() }, &["binary"]),
        )
        .await;
        assert_eq!(s.failure().reason, "StagingError");
        assert!(
            s.failure().message.contains("app package") || s.logged("Failed to extract app package"),
            "{:?} {:?}",
            s.failure(),
            s.logs
        );
        let corrupt_guid = s.guid.clone();

        // Unknown package, buildpack, stack: refused before anything starts.
        let good = upload(&mut c, zip(&[("Procfile", 0o644, "web: ./x\n")])).await.expect("upload");
        let e = c
            .stage(request("bad", &pb::Package { key: "packages/nope".into(), ..Default::default() }, &[]))
            .await
            .expect_err("no package");
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = c.stage(request("bad", &good, &["no-such-buildpack"])).await.expect_err("no buildpack");
        assert_eq!(e.code(), tonic::Code::NotFound);
        let mut r = request("bad", &good, &[]);
        r.stack = "no-such-stack".into();
        assert_eq!(c.stage(r).await.expect_err("no stack").code(), tonic::Code::InvalidArgument);
        assert_eq!(c.stage(request("../x", &good, &[])).await.expect_err("bad guid").code(), tonic::Code::InvalidArgument);

        // 100 MB of logs: streamed through, the staging still ends.
        create_buildpack(&mut c, "chatty", 0, buildpack(&[
            ("compile", "i=0; while [ $i -lt 1600 ]; do yes 'the quick brown fox jumps over the lazy dog 0123456789' | head -c 65536; i=$((i+1)); done; echo CHATTY-DONE"),
            ("release", "echo '--- {}'"),
        ])).await;
        let s = stage(&mut c, request("chatty", &good, &["chatty"])).await;
        s.ok();
        assert!(s.logged("CHATTY-DONE"));
        let bytes: usize = s.logs.iter().map(|l| l.len() + 1).sum();
        let dropped = s.logs.iter().filter(|l| l.contains("log lines were dropped")).count();
        eprintln!("chatty: {} lines, {bytes} bytes, {dropped} drop notices", s.logs.len());

        // Never exits: the staging timeout ends it.
        create_buildpack(
            &mut c,
            "sleepy",
            0,
            buildpack(&[("compile", "echo sleeping; sleep 1000"), ("release", "echo '--- {}'")]),
        )
        .await;
        let mut r = request("sleepy", &good, &["sleepy"]);
        r.timeout_seconds = 3;
        let s = stage(&mut c, r).await;
        assert_eq!(s.failure().reason, "StagingTimeExpired");
        let timed_out = s.guid.clone();

        // Cancelled: the container is destroyed.
        let mut stream = c.stage(request("sleepy", &good, &["sleepy"])).await.expect("stage").into_inner();
        let guid = loop {
            if let Some(pb::StagingEvent { event: Some(pb::staging_event::Event::Started(s)) }) =
                stream.message().await.expect("event")
            {
                break s.staging_guid;
            }
        };
        loop {
            match stream.message().await.expect("event") {
                Some(pb::StagingEvent { event: Some(pb::staging_event::Event::Log(l)) })
                    if l.message.contains("sleeping") =>
                {
                    break;
                }
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
        let st =
            c.cancel_staging(pb::CancelStagingRequest { staging_guid: guid.clone() }).await.expect("cancel").into_inner();
        assert_eq!(st.state, pb::staging::State::Failed as i32);
        assert_eq!(st.failure.map(|f| f.reason).as_deref(), Some("StagingCancelled"));
        let e = c.cancel_staging(pb::CancelStagingRequest { staging_guid: guid.clone() }).await.expect_err("twice");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert_clean(&d, &[&corrupt_guid, &timed_out, &guid]).await;
    });
}

#[test]
fn restart_mid_staging_fails_it_and_cleans_up() {
    require_staging!();
    let mut d = Daemon::start();
    rt().block_on(async {
        let mut c = client(&d).await;
        create_buildpack(
            &mut c,
            "sleepy",
            0,
            buildpack(&[("compile", "echo sleeping; sleep 1000"), ("release", "echo '--- {}'")]),
        )
        .await;
        let pkg = upload(&mut c, zip(&[("a", 0o644, "b")])).await.expect("upload");
        let mut stream = c.stage(request("restarted", &pkg, &["sleepy"])).await.expect("stage").into_inner();
        let mut guid = String::new();
        while let Some(ev) = stream.message().await.expect("event") {
            match ev.event {
                Some(pb::staging_event::Event::Started(s)) => guid = s.staging_guid,
                Some(pb::staging_event::Event::Log(l)) if l.message.contains("sleeping") => break,
                _ => {}
            }
        }
        d.restart();
        let mut c = client(&d).await;
        let st = c.get_staging(pb::GetStagingRequest { staging_guid: guid.clone() }).await.expect("get").into_inner();
        assert_eq!(st.state, pb::staging::State::Failed as i32);
        assert!(st.failure.is_some_and(|f| f.message.contains("restarted")));
        // Buildpacks and packages survived the restart.
        let names: Vec<String> = c
            .list_buildpacks(pb::ListBuildpacksRequest {})
            .await
            .expect("list")
            .into_inner()
            .buildpacks
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert!(names.contains(&"sleepy".to_string()));
        let e = c.get_staging(pb::GetStagingRequest { staging_guid: "nope".into() }).await.expect_err("unknown");
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_clean(&d, &[&guid]).await;
    });
}

#[test]
fn grpc_reflection_lists_the_stager() {
    require_host!();
    let d = Daemon::start();
    rt().block_on(async {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let ch = Channel::from_shared(format!("http://{}", d.grpc)).expect("uri").connect().await.expect("connect");
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .expect("reflection")
            .into_inner();
        let reply = replies.message().await.expect("reply").expect("a reply");
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected reflection reply: {reply:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"celld.v1.Stager".to_string()), "{names:?}");
    });
}

#[test]
fn a_build_that_fills_its_disk_fails_with_cfs_message() {
    require_staging!();
    let d = Daemon::start();
    rt().block_on(async {
        let mut c = client(&d).await;
        // The kernel stops the write at the limit (no watchdog): dd fails.
        let compile = "dd if=/dev/zero of=$1/fill bs=1M count=200 && echo filled";
        create_buildpack(&mut c, "filler", 1, buildpack(&[("detect", "echo filler"), ("compile", compile)])).await;
        let pkg = upload(&mut c, zip(&[("README", 0o644, "x")])).await.expect("upload");
        let mut req = request("filler", &pkg, &["filler"]);
        req.disk_mb = 64;
        let s = stage(&mut c, req).await;
        let f = s.failure();
        assert_eq!(f.reason, "StagingError", "{}", s.tail());
        assert!(f.message.contains("staging used more disk than its limit of 64M"), "{}\n{}", f.message, s.tail());
        assert!(!s.logged("filled"), "the write went past the limit: {}", s.tail());
        assert_clean(&d, &[&s.guid]).await;
    });
    d.assert_no_leaks();
}

#[test]
fn staging_sees_the_cells_ip_and_skips_a_detect_nobody_may_execute() {
    require_staging!();
    let d = Daemon::start();
    rt().block_on(async {
        // What an app instance gets as CF_INSTANCE_IP: the cell's IP, not the container's gateway.
        let h = d.handle("ip-probe");
        d.client.create(&common::spec(&h)).await.expect("create");
        let info = d.client.info(&h).await.expect("info");
        d.client.destroy(&h).await.expect("destroy");
        let cell_ip = if info.external_ip.is_empty() { info.host_ip.clone() } else { info.external_ip.clone() };
        assert_ne!(cell_ip, info.host_ip, "the test needs a cell IP other than the gateway");

        let mut c = client(&d).await;
        // Its detect would match if run through its shebang; CF skips it after a warning.
        let noexec = tgz(&[
            ("bin/detect", 0o644, "#!/bin/sh\necho noexec\n"),
            ("bin/compile", 0o755, "#!/bin/sh\necho noexec compiled\n"),
            ("bin/release", 0o755, "#!/bin/sh\necho '--- {}'\n"),
        ]);
        create_buildpack(&mut c, "noexec", 1, noexec).await;
        let probe = "echo \"ip=$CF_INSTANCE_IP internal=$CF_INSTANCE_INTERNAL_IP\"";
        create_buildpack(
            &mut c,
            "ipprobe",
            2,
            buildpack(&[("detect", "echo ipprobe"), ("compile", probe), ("release", "echo '--- {}'")]),
        )
        .await;

        let s = stage_app(&mut c, "ip", &[("README", 0o644, "x")], &[]).await;
        assert_eq!(s.ok().buildpack_key, "ipprobe", "{}", s.tail());
        assert!(s.logged("WARNING: buildpack script '/bin/detect' is not executable"), "{}", s.tail());
        assert!(!s.logged("noexec compiled"), "{}", s.tail());
        let line = s.logs.iter().find(|l| l.contains("ip=")).unwrap_or_else(|| panic!("no ip line: {}", s.tail()));
        assert!(line.contains(&format!("ip={cell_ip} ")), "{line} (cell {cell_ip}, gateway {})", info.host_ip);
        assert!(!line.contains("internal= ") && !line.ends_with("internal="), "{line}");
        assert_clean(&d, &[]).await;
    });
}
