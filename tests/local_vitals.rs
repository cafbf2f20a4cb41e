//! What `celld --local` shows of its cell and of work that takes time:
//! `cellctl cells` with the host's vitals (as `bosh vms --vitals`), the
//! droplet download lines in an instance's log, and `download-droplet`'s size
//! line. (A Docker image's pull progress: tests/docker_apps.rs.)

mod common;

use std::time::Duration;

use common::local::*;
use serde_json::Value;

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello");
const T: Duration = Duration::from_secs(90);

/// MemTotal of this host, in bytes.
fn mem_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let line = text.lines().find(|l| l.starts_with("MemTotal:")).expect("MemTotal");
    line.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).expect("MemTotal kB") * 1024
}

/// A `(12.3M)`-style size at the end of `line`, as CF's logs print sizes.
fn has_size(line: &str) -> bool {
    let Some(inner) = line.trim_end().strip_suffix(')').and_then(|l| l.rsplit_once('(')).map(|(_, s)| s) else {
        return false;
    };
    let digits = inner.trim_end_matches(['B', 'K', 'M', 'G', 'T']);
    digits.len() < inner.len() && !digits.is_empty() && digits.parse::<f64>().is_ok_and(|n| n > 0.0)
}

#[test]
fn cells_show_vitals_and_droplet_downloads_show_sizes() {
    require_local!();
    let l = Local::start(&[]);

    let v: Value = serde_json::from_str(&l.ok(&["cells", "--json"])).expect("cells --json");
    let cell = &v["cells"][0];
    let vit = &cell["vitals"];
    assert!(vit.is_object(), "vitals in {v}");
    let load: Vec<f64> = vit["load"].as_array().expect("load").iter().filter_map(Value::as_f64).collect();
    assert!(load.len() == 3 && load.iter().all(|x| *x >= 0.0), "{vit}");
    assert_eq!(vit["memory"]["total_bytes"].as_u64(), Some(mem_total()), "{vit}");
    let used = vit["memory"]["used_bytes"].as_u64().expect("memory used");
    assert!(used > 0 && used <= mem_total(), "{vit}");
    assert!(vit["uptime_seconds"].as_u64().is_some_and(|u| u > 0), "{vit}");
    for k in ["system_disk_percent", "ephemeral_disk_percent"] {
        assert!(vit[k].as_f64().is_some_and(|p| (0.0..=100.0).contains(&p)), "{k} in {vit}");
    }
    for k in ["user_percent", "sys_percent", "wait_percent"] {
        assert!(vit["cpu"][k].as_f64().is_some_and(|p| (0.0..=100.0).contains(&p)), "cpu {k} in {vit}");
    }

    // The table: capacity, then bosh's vitals columns with bosh's formats.
    let table = l.ok(&["cells"]);
    for want in ["memory avail/total", "load (1m, 5m, 15m)", "cpu user", "memory usage", "ephemeral disk", "uptime"] {
        assert!(table.contains(want), "{want} in:\n{table}");
    }
    let id = cell["cell_id"].as_str().expect("cell id");
    let row = table.lines().filter(|r| r.starts_with(id)).nth(1).unwrap_or_default();
    assert!(row.contains("d ") && row.contains("h ") && row.contains("s"), "uptime in {row:?}");
    assert!(row.matches('%').count() >= 7, "percentages in {row:?}");
    assert!(row.contains(" B)") || row.contains("B)"), "memory size in {row:?}");

    // The droplet's download, in the instance's log with the cell's source.
    l.ok(&["push", HELLO, "-m", "64M"]);
    l.wait_instances("hello", "dev", "1 instance running", T, all_running(1));
    let logs = l.ok(&["logs", "hello", "--recent"]);
    let cell_lines: Vec<&str> = logs.lines().filter(|x| x.contains("[CELL/0] OUT")).collect();
    assert!(cell_lines.iter().any(|x| x.ends_with("Downloading droplet...")), "{logs}");
    let done = cell_lines.iter().find(|x| x.contains("Downloaded droplet (")).unwrap_or_else(|| panic!("{logs}"));
    assert!(has_size(done), "a size in {done:?}");

    // download-droplet: the file, and its size on stderr (no terminal here).
    let key = l.app_json("hello", "dev")["app"]["droplet_key"].as_str().unwrap_or_default().to_string();
    assert!(key.starts_with("droplets/"), "droplet key {key:?}");
    let out = l.d.dir.join("hello-droplet.tgz");
    let (code, stdout, stderr) = l.cellctl(&["download-droplet", &key, out.to_str().expect("path")]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "the droplet file");
    let line = stderr.lines().find(|x| x.starts_with("Downloaded droplet (")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(has_size(line), "{line:?}");
    assert!(!stderr.contains('\r') && !stderr.contains("\u{1b}["), "no bar drawn on a pipe: {stderr:?}");
    assert!(!l.d.dir.join("hello-droplet.part").exists(), "no partial file left");
    // On a terminal (script(1) gives it a pty): the bar, then the same line.
    let tty_out = l.d.dir.join("hello-droplet-tty.tgz");
    let (ok, shown) = l.cellctl_tty(&["download-droplet", &key, tty_out.to_str().expect("path")]);
    assert!(ok, "{shown}");
    assert!(shown.contains("Downloading droplet [") && shown.contains("\u{1b}["), "a bar: {shown:?}");
    assert!(shown.contains("Downloaded droplet ("), "{shown:?}");
    assert_eq!(std::fs::metadata(&tty_out).map(|m| m.len()).unwrap_or(0), size);
    // A key that is not there: a clear failure and no partial file.
    let missing = l.d.dir.join("missing.tgz");
    let (code, _, err) = l.cellctl(&["download-droplet", "droplets/no-such", missing.to_str().expect("path")]);
    assert_ne!(code, 0);
    assert!(!err.trim().is_empty());
    assert!(!missing.exists() && !missing.with_extension("part").exists(), "nothing left of a failed download");
    l.finish();
}

#[test]
fn the_size_check_can_fail() {
    assert!(has_size("x Downloaded droplet (12.3M)"));
    assert!(has_size("Downloaded droplet (215B)"));
    assert!(!has_size("Downloaded droplet"));
    assert!(!has_size("Downloaded droplet ()"));
    assert!(!has_size("Downloaded droplet (M)"));
}
