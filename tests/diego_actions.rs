//! Diego's action trees end to end: a real scheduler and cell, LRPs and
//! tasks desired with setup/action trees instead of droplets, artifacts
//! downloaded by the cell from an HTTP server on 127.0.0.1, real containers.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use celld::grpc::pb;
use celld::grpc::pb::actual_lrp::State;
use celld::grpc::pb::cell_client::CellClient;
use celld::grpc::pb::scheduler_client::SchedulerClient;
use celld_proto::diego::bbs;
use common::rt;
use common::sched::{Scheduler, actuals, cell, tgz, wait_for, wait_task};
use sha2::Digest;
use tonic::transport::Channel;

/// What the artifact server saw.
#[derive(Default)]
struct Seen {
    gets: HashMap<String, u32>,
    /// Path → (Content-MD5, body) of each POST.
    posts: HashMap<String, (String, Vec<u8>)>,
}

/// A tiny HTTP/1.0 server of fixed files (GET) that keeps what is POSTed;
/// it lives as long as the test process (a thread on an ephemeral port).
struct Artifacts {
    addr: String,
    seen: Arc<Mutex<Seen>>,
}

impl Artifacts {
    fn serve(files: HashMap<String, Vec<u8>>) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let _ = handle(conn, &files, &s);
            }
        });
        Artifacts { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    fn gets(&self, path: &str) -> u32 {
        self.seen.lock().unwrap().gets.get(&format!("/{path}")).copied().unwrap_or(0)
    }
}

fn handle(mut conn: std::net::TcpStream, files: &HashMap<String, Vec<u8>>, seen: &Mutex<Seen>) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    if method == "POST" {
        let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let md5 = headers.get("content-md5").cloned().unwrap_or_default();
        seen.lock().unwrap().posts.insert(path, (md5, body));
        return conn.write_all(b"HTTP/1.0 201 Created\r\nContent-Length: 0\r\n\r\n");
    }
    *seen.lock().unwrap().gets.entry(path.clone()).or_default() += 1;
    match files.get(path.trim_start_matches('/')) {
        Some(body) => {
            write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())?;
            conn.write_all(body)
        }
        None => conn.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    }
}

fn zip(name: &str, body: &str) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.start_file(name, zip::write::SimpleFileOptions::default()).expect("zip entry");
    z.write_all(body.as_bytes()).expect("zip body");
    z.finish().expect("zip").into_inner()
}

fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn sh(script: &str, source: &str) -> bbs::Action {
    bbs::Action {
        run_action: Some(bbs::RunAction {
            path: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            user: "vcap".into(),
            dir: "/home/vcap".into(),
            log_source: source.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn download(from: String, to: &str, cache_key: &str, checksum: Option<String>) -> bbs::Action {
    bbs::Action {
        download_action: Some(bbs::DownloadAction {
            artifact: "app".into(),
            from,
            to: to.into(),
            cache_key: cache_key.into(),
            user: "vcap".into(),
            checksum_algorithm: if checksum.is_some() { "sha256".into() } else { String::new() },
            checksum_value: checksum.unwrap_or_default(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn serial(actions: Vec<bbs::Action>) -> bbs::Action {
    bbs::Action { serial_action: Some(bbs::SerialAction { actions, ..Default::default() }), ..Default::default() }
}

/// A DesiredLRP of one instance running `action` (no droplet).
fn desired(guid: &str, action: bbs::Action) -> pb::DesiredLrp {
    pb::DesiredLrp {
        process_guid: guid.into(),
        domain: "cf-apps".into(),
        instances: 1,
        rootfs: "preloaded:tiny".into(),
        memory_mb: 64,
        disk_mb: 256,
        start_timeout_ms: 20_000,
        log_guid: format!("{guid}-log"),
        action: Some(action),
        ..Default::default()
    }
}

/// Touches `path` in the process's one instance, then waits for its crash.
async fn touch_then_crash(
    c: &common::Daemon,
    s: &mut SchedulerClient<Channel>,
    guid: &str,
    path: &str,
    within: Duration,
) -> Vec<pb::ActualLrp> {
    let a = actuals(s, guid).await;
    let p = c
        .client
        .run(&a[0].instance_guid, &common::sh(&format!("touch {path}")), Default::default())
        .await
        .expect("run touch");
    assert_eq!(p.wait().await.expect("touch"), 0);
    wait_for(s, guid, "the crash", within, |a| a.iter().any(|a| a.crash_count == 1), || c.log()).await
}

/// Waits until `line` is among the recent log lines of `log_guid`.
async fn wait_log(c: &common::Daemon, log_guid: &str, line: &str) {
    let mut cc = CellClient::new(Channel::from_shared(format!("http://{}", c.grpc)).expect("uri").connect_lazy());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let req = pb::StreamLogsRequest { log_guid: log_guid.into(), recent: 1000, ..Default::default() };
        let mut logs = cc.stream_logs(req).await.expect("StreamLogs").into_inner();
        let mut lines = Vec::new();
        while let Some(Ok(e)) = tokio_stream::StreamExt::next(&mut logs).await {
            lines.push(e.message);
        }
        if lines.iter().any(|l| l == line) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no {line:?} in the logs: {lines:#?}\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(c, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

fn host_addr(a: &pb::ActualLrp) -> String {
    format!("{}:{}", a.address, a.ports.first().map_or(0, |p| p.host_port))
}

#[test]
fn an_lrp_runs_its_setup_then_its_codependent_action_and_survives_a_cell_restart() {
    require_cell!();
    let app = tgz(&[("index.html", 0o644, "hello from an action tree\n")]);
    let sum = sha256(&app);
    let files = Artifacts::serve(HashMap::from([("app.tgz".to_string(), app)]));
    let sched = Scheduler::start();
    let mut c = cell(&sched, "cell-actions");
    rt().block_on(async {
        let mut s = sched.client().await;
        let setup = serial(vec![
            download(files.url("app.tgz"), "/home/vcap/app", "app-v1", Some(sum)),
            sh("echo once >> /home/vcap/app/setups", "CELL"),
        ]);
        // The web server and a second process that exits 3 once told to.
        let action = bbs::Action {
            codependent_action: Some(bbs::CodependentAction {
                actions: vec![
                    sh("exec busybox httpd -f -p 8080 -h /home/vcap/app", "APP/PROC/WEB"),
                    sh("while [ ! -e /home/vcap/die ]; do sleep 0.2; done; exit 3", "APP/PROC/WEB"),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = pb::DesiredLrp {
            ports: vec![8080],
            check_definition: Some(pb::CheckDefinition {
                checks: vec![pb::Check {
                    check: Some(pb::check::Check::Tcp(pb::TcpCheck {
                        port: 8080,
                        connect_timeout_ms: 1000,
                        interval_ms: 1000,
                    })),
                }],
                ..Default::default()
            }),
            setup: Some(setup),
            ..desired("tree-web", action)
        };
        s.desire_lrp(d).await.expect("DesireLRP");
        let logs = || format!("{}\n{}", c.log(), sched.log());
        let running = |a: &[pb::ActualLrp]| a.len() == 1 && a[0].state == State::Running as i32;
        let before = wait_for(&mut s, "tree-web", "RUNNING", Duration::from_secs(30), running, logs).await;
        let page = http_get(&host_addr(&before[0]), "/");
        assert!(page.contains("hello from an action tree"), "{page}");
        assert_eq!(files.gets("app.tgz"), 1);

        // The cell dies and comes back: the same instance, its setup not run
        // again, its processes re-attached (the second one's exit is seen).
        c.kill();
        std::thread::sleep(Duration::from_millis(500));
        c.restart();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let logs = || format!("{}\n{}", c.log(), sched.log());
        let after = wait_for(&mut s, "tree-web", "RUNNING again", Duration::from_secs(20), running, logs).await;
        assert_eq!(after[0].instance_guid, before[0].instance_guid, "no replacement");
        assert_eq!(after[0].crash_count, 0);
        let setups = http_get(&host_addr(&after[0]), "/setups");
        assert_eq!(setups.matches("once").count(), 1, "the setup ran again: {setups}");
        assert!(c.log().contains("re-attaching to the action's process"), "{}", c.log());

        let crashed = touch_then_crash(&c, &mut s, "tree-web", "/home/vcap/die", Duration::from_secs(20)).await;
        assert_eq!(crashed[0].crash_reason, "APP/PROC/WEB: Exited with status 3");
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "tree-web".into() }).await.expect("remove");
        wait_for(&mut s, "tree-web", "removed", Duration::from_secs(30), |a| a.is_empty(), || c.log()).await;
        assert!(actuals(&mut s, "tree-web").await.is_empty());
    });
}

#[test]
fn tasks_run_their_action_trees() {
    require_cell!();
    let script = tgz(&[("run.sh", 0o755, "#!/bin/sh\necho \"migrated $GREETING\" > /home/vcap/result\n")]);
    let files = Artifacts::serve(HashMap::from([
        ("task.tgz".to_string(), script),
        ("data.zip".to_string(), zip("data/hello.txt", "zipped hello\n")),
    ]));
    let sched = Scheduler::start();
    let c = cell(&sched, "cell-action-tasks");
    rt().block_on(async {
        let mut s = sched.client().await;
        let task = |guid: &str, action: bbs::Action| pb::Task {
            task_guid: guid.into(),
            domain: "cf-tasks".into(),
            rootfs: "preloaded:tiny".into(),
            memory_mb: 64,
            disk_mb: 128,
            result_file: "/home/vcap/result".into(),
            log_guid: "tree-task-log".into(),
            env: vec![pb::EnvironmentVariable { name: "GREETING".into(), value: "by a tree".into() }],
            action: Some(action),
            ..Default::default()
        };
        let ok = serial(vec![download(files.url("task.tgz"), "/home/vcap", "", None), sh("/home/vcap/run.sh", "TASK")]);
        let zipped = serial(vec![
            download(files.url("data.zip"), "/home/vcap/z", "zip-v1", None),
            sh("cat /home/vcap/z/data/hello.txt > /home/vcap/result", "TASK"),
        ]);
        let timeout = bbs::Action {
            timeout_action: Some(Box::new(bbs::TimeoutAction {
                action: Some(Box::new(sh("sleep 100", "TASK"))),
                timeout_ms: 500,
                ..Default::default()
            })),
            ..Default::default()
        };
        let bad_sum = download(files.url("task.tgz"), "/home/vcap", "", Some("00".repeat(32)));
        let upload = serial(vec![
            sh("echo uploaded bytes > /home/vcap/out.txt; echo up > /home/vcap/result", "TASK"),
            bbs::Action {
                upload_action: Some(bbs::UploadAction {
                    artifact: "out".into(),
                    from: "/home/vcap/out.txt".into(),
                    to: files.url("upload/out"),
                    user: "vcap".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]);
        for (guid, a) in [
            ("tree-ok", ok),
            ("tree-zip", zipped),
            ("tree-timeout", timeout),
            ("tree-sum", bad_sum),
            ("tree-up", upload),
        ] {
            s.desire_task(task(guid, a)).await.expect("DesireTask");
        }
        let done = |t: &pb::Task| t.state == pb::task::State::Completed as i32;
        let t = wait_task(&mut s, "tree-ok", done, || c.log()).await;
        assert!(!t.failed, "{t:?}");
        assert_eq!(t.result, "migrated by a tree\n");
        let t = wait_task(&mut s, "tree-zip", done, || c.log()).await;
        assert!(!t.failed, "{t:?}");
        assert_eq!(t.result, "zipped hello\n");
        let t = wait_task(&mut s, "tree-timeout", done, || c.log()).await;
        assert!(t.failed);
        assert_eq!(t.failure_reason, "exceeded 500ms timeout");
        let t = wait_task(&mut s, "tree-sum", done, || c.log()).await;
        assert!(t.failed);
        assert!(t.failure_reason.starts_with("Downloading app failed: checksum mismatch"), "{}", t.failure_reason);
        let t = wait_task(&mut s, "tree-up", done, || c.log()).await;
        assert!(!t.failed, "{t:?}");
        let (md5, body) = files.seen.lock().unwrap().posts.get("/upload/out").cloned().expect("the upload arrived");
        assert_eq!(body, b"uploaded bytes\n");
        assert_eq!(md5, base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body)));

        // A cancelled task's Run gets TERM (and may end cleanly on it).
        let trap = sh("trap 'echo got TERM; exit 0' TERM; echo trapping; while true; do sleep 0.1; done", "TASK");
        s.desire_task(pb::Task { log_guid: "tree-trap-log".into(), ..task("tree-trap", trap) })
            .await
            .expect("DesireTask");
        wait_log(&c, "tree-trap-log", "trapping").await;
        s.cancel_task(pb::CancelTaskRequest { task_guid: "tree-trap".into() }).await.expect("CancelTask");
        let t = wait_task(&mut s, "tree-trap", done, || c.log()).await;
        assert_eq!((t.failed, t.failure_reason.as_str()), (true, "task was cancelled"));
        wait_log(&c, "tree-trap-log", "got TERM").await;
    });
}

#[test]
fn without_a_check_definition_the_monitor_action_decides_health() {
    require_cell!();
    let sched = Scheduler::start();
    let c = cell(&sched, "cell-monitor");
    rt().block_on(async {
        let mut s = sched.client().await;
        let d = pb::DesiredLrp {
            monitor: Some(sh(
                "[ -e /home/vcap/started ] || exit 1; if [ -e /home/vcap/sick ]; then echo sick of it; exit 1; fi",
                "HEALTH",
            )),
            ..desired("tree-monitor", sh("touch /home/vcap/started; exec sleep 100000", "APP/PROC/WEB"))
        };
        s.desire_lrp(d).await.expect("DesireLRP");
        let running = |a: &[pb::ActualLrp]| a.len() == 1 && a[0].state == State::Running as i32;
        wait_for(&mut s, "tree-monitor", "RUNNING", Duration::from_secs(20), running, || c.log()).await;
        // The monitor runs every 30 s once healthy.
        let crashed = touch_then_crash(&c, &mut s, "tree-monitor", "/home/vcap/sick", Duration::from_secs(45)).await;
        assert_eq!(crashed[0].crash_reason, "Instance became unhealthy: sick of it");
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "tree-monitor".into() })
            .await
            .expect("remove");
    });
}
