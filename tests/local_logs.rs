//! An app's log lines outlive celld (a crash, a torn last record, a clean
//! stop): `celld --local` keeps them on disk under the depot, reads them back
//! on start, and deletes them with the app.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::local::*;

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello");
const T: Duration = Duration::from_secs(90);

fn wait_for(what: &str, timeout: Duration, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not happen in {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn contains(path: &Path, needle: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|data| data.windows(needle.len()).any(|w| w == needle))
}

#[test]
fn local_logs_survive_a_crash_of_celld_and_go_with_the_app() {
    require_local!();
    let mut l = Local::start(&[]);
    l.ok(&["push", HELLO, "-m", "64M"]);
    l.wait_instances("hello", "dev", "1 instance running", T, all_running(1));
    l.wait_status("hello.apps.localhost", "/", 200, "Hello from celld!", T);
    let guid = l.app_json("hello", "dev")["app"]["guid"].as_str().unwrap_or_default().to_string();
    assert!(!guid.is_empty());
    let before = l.ok(&["logs", "hello", "--recent"]);
    for want in ["[STG/0]", "[APP/PROC/WEB/0] OUT hello: serving instance 0", "[RTR/"] {
        assert!(before.contains(want), "{want} in recent logs: {before}");
    }

    // The lines are on disk (written by the writer thread, not at exit).
    let file: PathBuf = l.d.depot().join("apps").join("logs").join(format!("{guid}.log"));
    wait_for("the app's lines written to disk", Duration::from_secs(10), || {
        contains(&file, b"serving instance 0") && contains(&file, b"RTR")
    });

    // A crash: SIGKILL, nothing flushed at exit, and a record torn half-way
    // at the end of the file. The history comes back.
    l.d.kill();
    let mut data = std::fs::read(&file).unwrap_or_default();
    data.extend_from_slice(&[64, 0, 0, 0, 1, 2, 3, 4, 5]);
    std::fs::write(&file, &data).expect("tearing the log file");
    l.d.restart();
    wait_for("the Apps service after the restart", Duration::from_secs(30), || l.cellctl(&["apps"]).0 == 0);
    let after = l.ok(&["logs", "hello", "--recent"]);
    for want in ["[STG/0]", "[APP/PROC/WEB/0] OUT hello: serving instance 0", "[RTR/"] {
        assert!(after.contains(want), "{want} in recent logs after a restart: {after}");
    }
    // The same lines, in the same order: what was shown before is a prefix
    // of what is shown after (new lines may follow).
    let first_line = before.lines().find(|l| l.contains("[STG/0]")).unwrap_or_default();
    assert!(after.contains(first_line), "{first_line:?} after a restart: {after}");

    // New lines after the restart are kept too.
    l.wait_status("hello.apps.localhost", "/", 200, "Hello from celld!", T);
    let routed = l.ok(&["logs", "hello", "--recent"]);
    assert!(routed.matches("[RTR/").count() > after.matches("[RTR/").count(), "a new router line: {routed}");

    // A clean stop, and the lines written after the torn record (cut off on
    // the start before) are read back too.
    assert!(l.d.terminate(Duration::from_secs(30)), "celld did not stop on SIGTERM");
    l.d.restart();
    wait_for("the Apps service after the second restart", Duration::from_secs(30), || l.cellctl(&["apps"]).0 == 0);
    let again = l.ok(&["logs", "hello", "--recent"]);
    let rtr = |s: &str| s.matches("[RTR/").count();
    assert!(rtr(&again) >= rtr(&routed), "the router lines after the first restart are kept: {again}");

    // Deleting the app deletes its logs.
    l.ok(&["delete", "hello", "-f"]);
    wait_for("the app's log files deleted", Duration::from_secs(10), || {
        !file.exists() && !file.with_extension("log.1").exists()
    });
    l.finish();
}
