//! `/metrics` on a real `celld --local` (the cell's endpoint carries the
//! embedded scheduler's metrics too) and on `celld scheduler` alone, read
//! with prometheus_client's strict OpenMetrics parser (Python, /opt/celld-venv).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cfapi::request;
use common::local::*;

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello");
const T: Duration = Duration::from_secs(90);

/// One parsed sample.
#[derive(Debug, serde::Deserialize)]
struct Sample {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

/// Scrapes `addr` and parses the exposition; panics if it is not OpenMetrics.
fn scrape(addr: &str) -> Vec<Sample> {
    let r = request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    let python = std::path::Path::new("/opt/celld-venv/bin/python");
    assert!(python.is_file(), "/opt/celld-venv is missing: run `make deps`");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/metrics/openmetrics.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child.stdin.take().unwrap().write_all(&r.body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not OpenMetrics: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&r.body)
    );
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The value of the sample `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
}

/// Scrapes until `ok` holds; the last scrape.
fn scrape_until(addr: &str, what: &str, timeout: Duration, ok: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = scrape(addr);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: not seen within {timeout:?}; last scrape: {s:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Push, route, scrape: the instance's memory by app name, the containers,
/// the router's 200s, the staging, the scheduler's RUNNING instance, a
/// crash; after a delete the instance's series are gone.
#[test]
fn local_cell_metrics_follow_an_app_from_push_to_delete() {
    require_local!();
    let l = Local::start(&[]);
    l.ok(&["push", HELLO, "-m", "64M"]);
    l.wait_instances("hello", "dev", "1 instance running", T, all_running(1));
    l.wait_status("hello.apps.localhost", "/", 200, "Hello from celld!", T);
    for _ in 0..3 {
        assert_eq!(l.get("hello.apps.localhost", "/").0, 200);
    }
    let instance = [("app", "hello"), ("index", "0")];
    let s = scrape_until(&l.metrics, "the instance's memory and 1 RUNNING instance", Duration::from_secs(30), |s| {
        value(s, "celld_instance_memory_bytes", &instance).is_some_and(|v| v > 0.0)
            && value(s, "celld_scheduler_actual_lrps", &[("state", "RUNNING")]) == Some(1.0)
    });
    let guid = &s.iter().find(|x| x.name == "celld_instance_memory_bytes").unwrap().labels;
    assert!(!guid["instance_guid"].is_empty() && !guid["process_guid"].is_empty(), "{guid:?}");
    assert!(value(&s, "celld_instance_cpu_percent", &instance).is_some(), "cpu series");
    assert!(value(&s, "celld_containers", &[]).is_some_and(|v| v >= 1.0), "containers gauge");
    assert!(value(&s, "celld_containers_created_total", &[]).is_some_and(|v| v >= 2.0), "staging + instance");
    assert!(
        value(&s, "celld_router_requests_total", &[("status_code", "200"), ("status_class", "2xx")])
            .is_some_and(|v| v >= 3.0),
        "router 200s"
    );
    assert!(value(&s, "celld_router_request_duration_seconds_count", &[]).is_some_and(|v| v >= 3.0));
    assert!(
        value(&s, "celld_staging_duration_seconds_count", &[("outcome", "succeeded")]).is_some_and(|v| v >= 1.0),
        "staging histogram"
    );
    assert!(value(&s, "celld_scheduler_desired_instances", &[]) == Some(1.0));
    assert!(value(&s, "celld_capacity_remaining_memory_bytes", &[]).is_some_and(|v| v > 0.0));
    assert!(value(&s, "celld_log_lines_total", &[]).is_some_and(|v| v >= 1.0), "log lines");
    let started = [("check", "tcp"), ("phase", "startup"), ("result", "passed")];
    assert!(value(&s, "celld_health_checks_total", &started).is_some_and(|v| v >= 1.0), "the port check passed");
    assert!(value(&s, "celld_scheduler_auctions_total", &[]).is_some_and(|v| v >= 1.0), "auctions");

    // Only GET (and HEAD) /metrics.
    let r = request(&l.metrics, "POST", "/metrics", &[], b"x");
    assert_eq!(r.status, 405, "{}", String::from_utf8_lossy(&r.body));
    let r = request(&l.metrics, "GET", "/nope", &[], b"");
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("/metrics"));

    // A crash, counted by the kind of its reason.
    let crash =
        l.app("crasher", &[("Procfile", "web: ./crash.sh\n"), ("crash.sh", "#!/bin/sh\necho about to fail\nexit 3\n")]);
    let (code, _, _) = l.cellctl(&["push", crash.to_str().unwrap(), "-n", "crasher", "-m", "32M", "-u", "process"]);
    assert_ne!(code, 0, "a push whose app crashes fails");
    scrape_until(&l.metrics, "the crash", Duration::from_secs(30), |s| {
        value(s, "celld_instance_crashes_total", &[("reason", "exited")]).is_some_and(|v| v >= 1.0)
    });

    l.ok(&["delete", "hello", "-f"]);
    scrape_until(&l.metrics, "the deleted instance's series gone", Duration::from_secs(30), |s| {
        !s.iter()
            .any(|x| x.name.starts_with("celld_instance_") && x.labels.get("app").map(String::as_str) == Some("hello"))
    });
    l.finish();
}

/// The listening TCP ports of process `pid` (from /proc: its socket inodes
/// in the LISTEN state of /proc/net/tcp).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(String::from))
        .collect();
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    tcp.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (f.get(3) == Some(&"0A") && inodes.iter().any(|i| Some(&i.as_str()) == f.get(9))).then_some(port)
        })
        .collect()
}

/// `celld scheduler` serves its own metrics; `--metrics-listen off` leaves a
/// cell with no listener but its gRPC one; a taken port fails the start
/// naming the flag.
#[test]
fn scheduler_endpoint_off_and_a_taken_port() {
    require_host!();
    let sched = common::sched::Scheduler::start();
    let s = scrape_until(&sched.metrics, "the scheduler's gauges", Duration::from_secs(15), |s| {
        value(s, "celld_scheduler_actual_lrps", &[("state", "RUNNING")]).is_some()
    });
    assert_eq!(value(&s, "celld_scheduler_actual_lrps", &[("state", "UNCLAIMED")]), Some(0.0));
    assert_eq!(value(&s, "celld_scheduler_tasks", &[("state", "PENDING")]), Some(0.0));
    assert_eq!(value(&s, "celld_scheduler_cells", &[]), Some(0.0));
    assert!(value(&s, "celld_scheduler_convergence_duration_seconds_count", &[]).is_some_and(|v| v >= 1.0));
    assert_eq!(request(&sched.metrics, "PUT", "/metrics", &[], b"").status, 405);
    drop(sched);

    // Tests' daemons run with `--metrics-listen off` (common::metrics_off).
    let d = common::Daemon::start();
    let grpc: u16 = d.grpc.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(listening_ports(d.pid().unwrap()), vec![grpc], "only gRPC listens");

    // Under the daemon's directory, which goes with it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = ["--no-network", "--grpc-listen", "127.0.0.1:0", "--metrics-listen", &addr];
    let (status, log) = common::celld_exit(&d.dir.join("taken"), &args, Duration::from_secs(20)).expect("celld ran on");
    assert!(!status.success());
    assert!(log.contains(&format!("--metrics-listen {addr}: cannot listen there")), "{log}");
}
