//! `celld --local` with CF manifests through the real `cellctl`: an app of
//! two process types (web through the router, a worker printing to its log)
//! pushed with `push -f`, scaled per type; manifests refused with CC's words;
//! a push that succeeds with one of two instances crashing; the package blob
//! a re-push replaced deleted.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::local::*;

const T: Duration = Duration::from_secs(90);

const WEB: &str = "#!/bin/sh\nmkdir -p $HOME/www\nenv > $HOME/www/env.txt\necho web up\nexec busybox httpd -f -p $PORT -h $HOME/www\n";
const WORKER: &str = "#!/bin/sh\nwhile true; do echo \"worker tick $CF_INSTANCE_INDEX\"; sleep 1; done\n";

/// Each process type's (desired instances, running instances), by type.
fn scale_of(l: &Local, name: &str) -> Vec<(String, u64, usize)> {
    let v = l.app_json(name, "dev");
    v["processes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let ty = p["process"]["type"].as_str().unwrap_or("").to_string();
            let want = p["process"]["instances"].as_u64().unwrap_or(0);
            let running =
                p["instances"].as_array().map_or(0, |i| i.iter().filter(|x| state_of(x) == "running").count());
            (ty, want, running)
        })
        .collect()
}

fn wait_scale(l: &Local, name: &str, want: &[(&str, u64, usize)]) {
    let deadline = Instant::now() + T;
    loop {
        let now = scale_of(l, name);
        let expected: Vec<(String, u64, usize)> = want.iter().map(|(t, w, r)| (t.to_string(), *w, *r)).collect();
        if now == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{name}: scale {now:?} never became {expected:?}\n{}", tail(&l.d.log()));
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Regular files the blobstore keeps for a key (none once it is deleted).
fn blob_files(depot: &Path, key: &str) -> usize {
    fn walk(p: &Path) -> usize {
        match std::fs::read_dir(p) {
            Ok(rd) => rd.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum(),
            Err(_) => 0,
        }
    }
    walk(&depot.join("blobs").join("data").join(key))
}

#[test]
fn local_manifest_two_process_types_scale_logs_and_package_cleanup() {
    require_local!();
    let l = Local::start(&[]);
    // The worker's command comes from the Procfile (the droplet's process
    // types); the manifest gives it an instance.
    let manifest = "---\napplications:\n- name: duo\n  memory: 32M\n  disk_quota: 64M\n  processes:\n  \
                    - type: web\n    instances: 1\n  - type: worker\n    instances: 1\n    memory: 32M\n";
    let dir = l.app(
        "duo",
        &[
            ("Procfile", "web: ./web.sh\nworker: ./worker.sh\n"),
            ("web.sh", WEB),
            ("worker.sh", WORKER),
            ("manifest.yml", manifest),
        ],
    );
    let file = dir.join("manifest.yml");
    let out = l.ok(&["push", "-f", file.to_str().unwrap()]);
    assert!(out.contains("type:") && out.contains("worker"), "push shows every process type: {out}");
    wait_scale(&l, "duo", &[("web", 1, 1), ("worker", 1, 1)]);
    let v = l.app_json("duo", "dev");
    let app_guid = v["app"]["guid"].as_str().unwrap_or("").to_string();
    let procs = v["app"]["processes"].as_array().cloned().unwrap_or_default();
    assert_eq!(procs[0]["guid"], app_guid.as_str(), "web's process guid is the app's: {v}");
    let worker_lrp = procs[1]["process_guid"].as_str().unwrap_or("").to_string();
    assert!(!worker_lrp.is_empty() && worker_lrp != procs[0]["process_guid"], "two LRPs: {v}");

    // Web is routed and told CC's process guid (the app's), not Diego's.
    let page = l.wait_status("duo.apps.localhost", "/env.txt", 200, "VCAP_APPLICATION=", T);
    let line = page.lines().find(|x| x.starts_with("VCAP_APPLICATION=")).unwrap_or("");
    let vcap: serde_json::Value = serde_json::from_str(&line["VCAP_APPLICATION=".len()..]).expect("JSON");
    assert_eq!(vcap["process_id"], app_guid.as_str(), "{vcap}");
    assert_eq!(vcap["process_type"], "web", "{vcap}");
    assert_eq!(vcap["application_id"], app_guid.as_str(), "{vcap}");

    // Scaling the worker leaves web alone.
    l.ok(&["scale", "duo", "--process", "worker", "-i", "2"]);
    wait_scale(&l, "duo", &[("web", 1, 1), ("worker", 2, 2)]);
    let deadline = Instant::now() + T;
    loop {
        let logs = l.ok(&["logs", "duo", "--recent"]);
        if logs.contains("[APP/PROC/WORKER/0] OUT worker tick 0")
            && logs.contains("[APP/PROC/WORKER/1] OUT worker tick 1")
        {
            assert!(logs.contains("[APP/PROC/WEB/0] OUT web up"), "{logs}");
            break;
        }
        assert!(Instant::now() < deadline, "no worker lines from both instances: {logs}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let text = l.ok(&["app", "duo"]);
    assert!(text.contains("worker") && text.contains("2/2") && text.contains("1/1"), "{text}");
    // Each type shows the command it runs (the worker's from the Procfile).
    assert!(text.contains("./worker.sh") && text.contains("./web.sh"), "{text}");
    let last_uploaded = text.lines().find(|x| x.starts_with("last uploaded:")).unwrap_or("").to_string();
    assert!(last_uploaded.len() > "last uploaded:".len() + 5, "{text}");

    // A re-push with changed files: the old package blob goes, the new stays;
    // the worker keeps its scale (the manifest names only web's … and 1 for
    // worker, so it is 1 again, as cf push with this manifest does).
    let old_key = v["app"]["package_key"].as_str().unwrap_or("").to_string();
    assert!(blob_files(&l.d.depot(), &old_key) > 0, "the package is in the blobstore under {old_key}");
    std::fs::write(dir.join("extra.txt"), "changed\n").expect("write");
    l.ok(&["push", "-f", file.to_str().unwrap()]);
    wait_scale(&l, "duo", &[("web", 1, 1), ("worker", 1, 1)]);
    let new_key = l.app_json("duo", "dev")["app"]["package_key"].as_str().unwrap_or("").to_string();
    assert_ne!(new_key, old_key);
    assert_eq!(blob_files(&l.d.depot(), &old_key), 0, "the replaced package {old_key} was not deleted");
    assert!(blob_files(&l.d.depot(), &new_key) > 0, "the current package {new_key} must stay");
    l.ok(&["delete", "duo", "-f"]);
    assert_eq!(blob_files(&l.d.depot(), &new_key), 0, "a deleted app's package {new_key} was not deleted");
    l.finish();
}

#[test]
fn local_manifest_bad_input_and_a_push_with_one_crashing_instance() {
    require_local!();
    let l = Local::start(&[]);
    let dir = l.app("bad", &[("Procfile", "web: ./web.sh\n"), ("web.sh", WEB)]);
    let cases = [
        ("applications:\n- memory: 32M\n", "Name must not be empty"),
        (
            "applications:\n- name: bad\n  memory: 32X\n",
            "Process \"web\": Memory must use a supported unit: B, K, KB, M, MB, G, GB, T, or TB",
        ),
        (
            "applications:\n- name: bad\n  services: [nosuch]\n",
            "For application 'bad': Service instance 'nosuch' not found",
        ),
        ("applications:\n- name: [bad\n", "Manifest is not valid YAML"),
    ];
    for (i, (yaml, words)) in cases.iter().enumerate() {
        let file = dir.join(format!("m{i}.yml"));
        std::fs::write(&file, yaml).expect("write");
        let err = l.fails(&["push", "-f", file.to_str().unwrap()]);
        assert!(err.contains(words), "{yaml:?}: {err}");
    }
    let apps = l.ok(&["apps", "--json"]);
    assert!(!apps.contains("\"bad\""), "a refused manifest left an app behind: {apps}");

    // Two instances, one of which always crashes: cf's push succeeds once
    // one runs.
    let half = l.app(
        "half",
        &[
            ("Procfile", "web: ./web.sh\n"),
            (
                "web.sh",
                &format!("#!/bin/sh\n[ \"$CF_INSTANCE_INDEX\" = 1 ] && exit 1\n{}", &WEB["#!/bin/sh\n".len()..]),
            ),
        ],
    );
    let (code, out, err) =
        l.cellctl(&["push", half.to_str().unwrap(), "-n", "half", "-i", "2", "-m", "32M", "-k", "64M"]);
    assert_eq!(code, 0, "a push with one running instance succeeds:\n{out}\n{err}");
    let i = l.instances("half", "dev");
    assert!(i.iter().any(|x| state_of(x) == "running"), "{i:?}");
    l.wait_status("half.apps.localhost", "/env.txt", 200, "CF_INSTANCE_INDEX=0", T);
    l.finish();
}
