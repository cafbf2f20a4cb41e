//! App instances end to end: a real scheduler (`celld scheduler`, SQLite, a
//! test clock) and real cells (`celld --scheduler`), real containers running
//! droplets through the static launcher, health checks against the
//! containers' addresses, reports over gRPC on loopback.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use celld::blobstore::Blobstore;
use celld::grpc::pb;
use celld::grpc::pb::actual_lrp::State;
use celld::grpc::pb::cell_client::CellClient;
use common::sched::{Scheduler, actuals, all_running, append_files, cell, wait_for, wait_task, wait_until};
use common::{Daemon, rt};
use tonic::transport::Channel;

/// A droplet as the stager makes them: `./app/...`, `./staging_info.yml`.
fn droplet(files: &[(&str, u32, &str)], start_command: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let info = format!("{{\"detected_buildpack\":\"test\",\"start_command\":{}}}", serde_json::json!(start_command));
    let mut all: Vec<(String, u32, String)> = vec![("./staging_info.yml".into(), 0o644, info)];
    all.extend(files.iter().map(|(p, m, b)| (format!("./app/{p}"), *m, b.to_string())));
    for dir in ["./app/", "./tmp/", "./logs/", "./deps/", "./profile.d/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, dir, std::io::empty()).expect("dir");
    }
    let refs: Vec<(&str, u32, &str)> = all.iter().map(|(p, m, b)| (p.as_str(), *m, b.as_str())).collect();
    append_files(&mut b, &refs);
    b.into_inner().expect("tar").finish().expect("gzip")
}

/// A web app: busybox httpd serving app/, its environment at /env.txt, and
/// `cgi-bin/health` failing its first `fails` requests.
const WEB: &str = "busybox env > /home/vcap/app/env.txt; echo $$ > /home/vcap/tmp/app.pid; exec busybox httpd -f -p $PORT -h /home/vcap/app";

fn web_files(fails: u32) -> Vec<(&'static str, u32, String)> {
    let health = format!(
        "#!/bin/sh\nn=$(cat /home/vcap/tmp/hits 2>/dev/null || echo 0); n=$((n+1)); echo $n > /home/vcap/tmp/hits\n\
         if [ $n -le {fails} ]; then printf 'HTTP/1.0 500 Internal Server Error\\r\\n\\r\\nno\\n'; \
         else printf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nok\\n'; fi\n"
    );
    vec![("index.html", 0o644, "hello from celld\n".to_string()), ("cgi-bin/health", 0o755, health)]
}

async fn put_droplet(cell: &Daemon, key: &str, tgz: Vec<u8>) {
    let blobs = Blobstore::open(&format!("file://{}", cell.depot().join("blobs").display())).expect("blobstore");
    blobs.put_bytes(key, tgz.into()).await.expect("put droplet");
}

async fn put_web_droplet(cells: &[&Daemon], key: &str, fails: u32) {
    let files = web_files(fails);
    let refs: Vec<(&str, u32, &str)> = files.iter().map(|(p, m, b)| (*p, *m, b.as_str())).collect();
    for c in cells {
        put_droplet(c, key, droplet(&refs, WEB)).await;
    }
}

fn tcp_check(port: u32) -> pb::Check {
    pb::Check { check: Some(pb::check::Check::Tcp(pb::TcpCheck { port, connect_timeout_ms: 1000, interval_ms: 1000 })) }
}

fn desired(guid: &str, instances: i32, droplet_key: &str, command: &str, checks: Vec<pb::Check>) -> pb::DesiredLrp {
    pb::DesiredLrp {
        process_guid: guid.to_string(),
        domain: "cf-apps".into(),
        instances,
        rootfs: "preloaded:tiny".into(),
        droplet_key: droplet_key.to_string(),
        start_command: command.to_string(),
        env: vec![pb::EnvironmentVariable { name: "GREETING".into(), value: "hi there".into() }],
        memory_mb: 64,
        disk_mb: 256,
        ports: vec![8080],
        check_definition: Some(pb::CheckDefinition { checks, ..Default::default() }),
        start_timeout_ms: 20_000,
        log_guid: format!("{guid}-log"),
        ..Default::default()
    }
}

/// GET `path` from `addr` (ip:port) with a plain HTTP/1.0 request.
fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut c =
        std::net::TcpStream::connect_timeout(&addr.parse().map_err(std::io::Error::other)?, Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut out = String::new();
    c.read_to_string(&mut out)?;
    Ok(out)
}

fn host_addr(a: &pb::ActualLrp) -> String {
    format!("{}:{}", a.address, a.ports.first().map_or(0, |p| p.host_port))
}

#[test]
fn two_instances_run_with_cloud_foundrys_environment() {
    require_cell!();
    let sched = Scheduler::start();
    let c = cell(&sched, "cell-env");
    rt().block_on(async {
        put_web_droplet(&[&c], "droplets/web-env", 0).await;
        let mut s = sched.client().await;
        let d = desired("web-env", 2, "droplets/web-env", "", vec![tcp_check(8080)]);
        s.desire_lrp(d).await.expect("DesireLRP");
        let a = wait_for(&mut s, "web-env", "2 RUNNING", Duration::from_secs(30), all_running(2), || {
            format!("{}\n{}", c.log(), sched.log())
        })
        .await;
        assert_eq!(a.iter().map(|a| a.index).collect::<Vec<_>>(), vec![0, 1]);
        assert_ne!(a[0].instance_address, a[1].instance_address);
        assert_ne!(a[0].ports[0].host_port, a[1].ports[0].host_port);
        assert_ne!(a[0].instance_guid, a[1].instance_guid);
        for x in &a {
            assert_eq!(x.cell_id, "cell-env");
            assert_eq!(x.ports[0].container_port, 8080);
            let page = http_get(&host_addr(x), "/").expect("GET /");
            assert!(page.contains("hello from celld"), "{page}");
        }
        let env = http_get(&host_addr(&a[1]), "/env.txt").expect("GET /env.txt");
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} missing from the app's environment:\n{env}"))
                .to_string()
        };
        assert_eq!(var("PORT"), "8080");
        assert_eq!(var("VCAP_APP_PORT"), "8080");
        assert_eq!(var("VCAP_APP_HOST"), "0.0.0.0");
        assert_eq!(var("HOME"), "/home/vcap/app");
        assert_eq!(var("TMPDIR"), "/home/vcap/tmp");
        assert_eq!(var("DEPS_DIR"), "/home/vcap/deps");
        assert_eq!(var("LANG"), "en_US.UTF-8");
        assert_eq!(var("MEMORY_LIMIT"), "64m");
        assert_eq!(var("GREETING"), "hi there");
        assert_eq!(var("INSTANCE_INDEX"), "1");
        assert_eq!(var("CF_INSTANCE_INDEX"), "1");
        assert_eq!(var("INSTANCE_GUID"), a[1].instance_guid);
        assert_eq!(var("CF_INSTANCE_GUID"), a[1].instance_guid);
        assert_eq!(var("CF_INSTANCE_INTERNAL_IP"), a[1].instance_address);
        assert_eq!(var("CF_INSTANCE_IP"), a[1].address);
        assert_eq!(var("CF_INSTANCE_PORT"), a[1].ports[0].host_port.to_string());
        assert_eq!(var("CF_INSTANCE_ADDR"), host_addr(&a[1]));
        let ports: serde_json::Value =
            serde_json::from_str(&var("CF_INSTANCE_PORTS")).expect("CF_INSTANCE_PORTS is JSON");
        assert_eq!(ports[0]["internal"], 8080);
        assert_eq!(ports[0]["external"], a[1].ports[0].host_port);
        let app: serde_json::Value = serde_json::from_str(&var("VCAP_APPLICATION")).expect("VCAP_APPLICATION is JSON");
        assert_eq!(app["instance_index"], 1);
        assert_eq!(app["instance_id"], a[1].instance_guid);
        assert_eq!(app["port"], 8080);
        assert_eq!(app["host"], "0.0.0.0");

        // The cell's own log lines and the app's, tagged as Cloud Foundry does.
        let mut cc = CellClient::new(Channel::from_shared(format!("http://{}", c.grpc)).expect("uri").connect_lazy());
        let mut logs = cc
            .stream_logs(pb::StreamLogsRequest {
                log_guid: "web-env-log".into(),
                instance_index: Some(0),
                recent: 100,
                follow: false,
            })
            .await
            .expect("StreamLogs")
            .into_inner();
        let mut lines = Vec::new();
        while let Some(Ok(e)) = tokio_stream::StreamExt::next(&mut logs).await {
            assert_eq!(e.source_instance, "0");
            lines.push(format!("{} {}", e.source_type, e.message));
        }
        let guid0 = &a[0].instance_guid;
        for want in [
            format!("CELL Cell cell-env creating container for instance {guid0}"),
            format!("CELL Cell cell-env successfully created container for instance {guid0}"),
            "HEALTH Starting health monitoring of container".to_string(),
            "HEALTH Container became healthy".to_string(),
        ] {
            assert!(lines.contains(&want), "missing {want:?} in {lines:#?}");
        }
        let m = cc
            .container_metrics(pb::ContainerMetricsRequest { log_guid: "web-env-log".into() })
            .await
            .expect("ContainerMetrics")
            .into_inner();
        assert_eq!(m.metrics.len(), 2);
        assert!(m.metrics.iter().all(|m| m.memory_bytes > 0 && m.memory_bytes_quota == 64 << 20), "{m:?}");

        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "web-env".into() }).await.expect("remove");
        wait_for(&mut s, "web-env", "all removed", Duration::from_secs(20), |a| a.is_empty(), || c.log()).await;
        wait_until(Duration::from_secs(10), || c.client_list_len() == 0).await;
        c.assert_no_leaks_after_destroy();
    });
}

trait DaemonExt {
    fn client_list_len(&self) -> usize;
    fn assert_no_leaks_after_destroy(&self);
}

impl DaemonExt for Daemon {
    fn client_list_len(&self) -> usize {
        std::fs::read_dir(self.depot().join("executor/lrps")).map(|d| d.count()).unwrap_or(0)
            + std::fs::read_dir(self.depot().join("executor/tasks")).map(|d| d.count()).unwrap_or(0)
    }

    fn assert_no_leaks_after_destroy(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.interfaces().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.assert_no_leaks();
    }
}

#[test]
fn a_crashing_app_restarts_twice_then_backs_off() {
    require_cell!();
    let sched = Scheduler::start();
    let c = cell(&sched, "cell-crash");
    rt().block_on(async {
        put_droplet(&c, "droplets/crash", droplet(&[], "echo about to fail; exit 3")).await;
        let mut s = sched.client().await;
        s.desire_lrp(desired("crash", 1, "droplets/crash", "", vec![])).await.expect("DesireLRP");
        let logs = || format!("{}\n{}", c.log(), sched.log());
        let a = wait_for(
            &mut s,
            "crash",
            "3 crashes",
            Duration::from_secs(30),
            |a| a.len() == 1 && a[0].crash_count >= 3,
            logs,
        )
        .await;
        assert_eq!(a[0].state, State::Crashed as i32, "{a:?}");
        assert_eq!(a[0].crash_count, 3);
        assert_eq!(a[0].crash_reason, "APP/PROC/WEB: Exited with status 3");
        // Crash 3 waits 30 s: not restarted at 29 s, restarted at 30 s.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(actuals(&mut s, "crash").await[0].crash_count, 3);
        s.advance_clock(pb::AdvanceClockRequest { seconds: 29 }).await.expect("AdvanceClock");
        let a = actuals(&mut s, "crash").await;
        assert_eq!((a[0].state, a[0].crash_count), (State::Crashed as i32, 3), "{a:?}");
        s.advance_clock(pb::AdvanceClockRequest { seconds: 1 }).await.expect("AdvanceClock");
        wait_for(&mut s, "crash", "4th crash", Duration::from_secs(20), |a| a[0].crash_count == 4, logs).await;
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "crash".into() }).await.expect("remove");
    });
}

#[test]
fn an_app_that_never_listens_is_never_healthy() {
    require_cell!();
    let sched = Scheduler::start();
    let c = cell(&sched, "cell-deaf");
    rt().block_on(async {
        put_droplet(&c, "droplets/deaf", droplet(&[], "exec sleep 1000")).await;
        let mut s = sched.client().await;
        let mut d = desired("deaf", 1, "droplets/deaf", "", vec![tcp_check(8080)]);
        d.start_timeout_ms = 1000;
        s.desire_lrp(d).await.expect("DesireLRP");
        let a = wait_for(
            &mut s,
            "deaf",
            "a crash",
            Duration::from_secs(20),
            |a| a.len() == 1 && a[0].crash_count >= 1,
            || c.log(),
        )
        .await;
        assert!(
            a[0].crash_reason.starts_with("Instance never healthy after 1s: "),
            "crash reason: {:?}",
            a[0].crash_reason
        );
        assert!(a[0].crash_reason.contains("8080"), "{:?}", a[0].crash_reason);
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "deaf".into() }).await.expect("remove");
    });
}

#[test]
fn an_http_check_that_fails_three_times_then_passes_comes_up() {
    require_cell!();
    let sched = Scheduler::start();
    let c = cell(&sched, "cell-http");
    rt().block_on(async {
        put_web_droplet(&[&c], "droplets/web-http", 3).await;
        let mut s = sched.client().await;
        let check = pb::Check {
            check: Some(pb::check::Check::Http(pb::HttpCheck {
                port: 8080,
                request_timeout_ms: 1000,
                path: "/cgi-bin/health".into(),
                interval_ms: 1000,
            })),
        };
        s.desire_lrp(desired("web-http", 1, "droplets/web-http", "", vec![check])).await.expect("DesireLRP");
        let a = wait_for(&mut s, "web-http", "RUNNING", Duration::from_secs(30), all_running(1), || c.log()).await;
        assert_eq!(a[0].crash_count, 0, "{a:?}");
        let hits = http_get(&host_addr(&a[0]), "/cgi-bin/health").expect("GET");
        assert!(hits.contains("200 OK"), "{hits}");
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "web-http".into() }).await.expect("remove");
    });
}

#[test]
fn an_out_of_memory_crash_says_so() {
    require_cell!();
    let sched = Scheduler::start();
    let c = cell(&sched, "cell-oom");
    rt().block_on(async {
        // A 256 MB buffer in a 32 MB container.
        put_droplet(&c, "droplets/oom", droplet(&[], "dd if=/dev/zero of=/dev/null bs=256M count=1")).await;
        let mut s = sched.client().await;
        let mut d = desired("oom", 1, "droplets/oom", "", vec![]);
        d.memory_mb = 32;
        s.desire_lrp(d).await.expect("DesireLRP");
        let a = wait_for(
            &mut s,
            "oom",
            "a crash",
            Duration::from_secs(20),
            |a| a.len() == 1 && a[0].crash_count >= 1,
            || c.log(),
        )
        .await;
        assert_eq!(a[0].crash_reason, "APP/PROC/WEB: Exited with status 137 (out of memory)");
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "oom".into() }).await.expect("remove");
    });
}

#[test]
fn scale_down_removes_the_highest_indexes_and_stop_replaces_an_instance() {
    require_cell!();
    let sched = Scheduler::start();
    let c = cell(&sched, "cell-scale");
    rt().block_on(async {
        put_web_droplet(&[&c], "droplets/web-scale", 0).await;
        let mut s = sched.client().await;
        s.desire_lrp(desired("web-scale", 3, "droplets/web-scale", "", vec![tcp_check(8080)]))
            .await
            .expect("DesireLRP");
        let a = wait_for(&mut s, "web-scale", "3 RUNNING", Duration::from_secs(30), all_running(3), || c.log()).await;
        s.update_desired_lrp(pb::UpdateDesiredLrpRequest {
            process_guid: "web-scale".into(),
            instances: Some(1),
            ..Default::default()
        })
        .await
        .expect("UpdateDesiredLRP");
        let b = wait_for(&mut s, "web-scale", "1 RUNNING", Duration::from_secs(20), all_running(1), || c.log()).await;
        assert_eq!(b[0].index, 0);
        assert_eq!(b[0].instance_guid, a[0].instance_guid, "index 0 must be kept");
        wait_until(Duration::from_secs(10), || c.client_list_len() == 1).await;

        // Stopping an instance on purpose: it is removed and replaced.
        let mut cc = CellClient::new(Channel::from_shared(format!("http://{}", c.grpc)).expect("uri").connect_lazy());
        cc.stop_lrp_instance(pb::StopLrpInstanceRequest {
            process_guid: "web-scale".into(),
            instance_guid: b[0].instance_guid.clone(),
        })
        .await
        .expect("StopLRPInstance");
        let r = wait_for(
            &mut s,
            "web-scale",
            "a replacement",
            Duration::from_secs(20),
            |x| all_running(1)(x) && x[0].instance_guid != b[0].instance_guid,
            || c.log(),
        )
        .await;
        assert_eq!(r[0].crash_count, 0, "a stop is not a crash: {r:?}");
        let unknown = cc
            .stop_lrp_instance(pb::StopLrpInstanceRequest { process_guid: "x".into(), instance_guid: "nope".into() })
            .await
            .expect_err("unknown instance");
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "web-scale".into() }).await.expect("remove");
        wait_until(Duration::from_secs(20), || c.client_list_len() == 0).await;

        // Removed as soon as its first container appears in the depot, most
        // likely while that container is still being made: each create runs
        // to its end and is destroyed, and nothing is left behind.
        s.desire_lrp(desired("web-brief", 2, "droplets/web-scale", "", vec![tcp_check(8080)]))
            .await
            .expect("DesireLRP");
        let containers = c.depot().join("containers");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_dir(&containers).map_or(0, |d| d.count()) == 0 {
            assert!(Instant::now() < deadline, "no container was made for web-brief:\n{}", c.log());
            std::thread::sleep(Duration::from_millis(1));
        }
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "web-brief".into() }).await.expect("remove");
        wait_until(Duration::from_secs(20), || c.client_list_len() == 0).await;
        c.assert_no_leaks_after_destroy();
    });
}

#[test]
fn tasks_complete_with_their_result_and_can_be_cancelled() {
    require_cell!();
    let sched = Scheduler::start();
    let c = cell(&sched, "cell-task");
    rt().block_on(async {
        put_droplet(&c, "droplets/task", droplet(&[("run.sh", 0o755, "#!/bin/sh\necho migrated > $1\n")], "")).await;
        let mut s = sched.client().await;
        let task = |guid: &str, command: &str| pb::Task {
            task_guid: guid.into(),
            domain: "cf-tasks".into(),
            droplet_key: "droplets/task".into(),
            rootfs: "preloaded:tiny".into(),
            command: command.into(),
            memory_mb: 64,
            disk_mb: 128,
            result_file: "/home/vcap/tmp/result".into(),
            log_guid: "task-log".into(),
            ..Default::default()
        };
        s.desire_task(task("task-ok", "./run.sh /home/vcap/tmp/result")).await.expect("DesireTask");
        s.desire_task(task("task-fail", "exit 7")).await.expect("DesireTask");
        let ok = wait_task(&mut s, "task-ok", |t| t.state == pb::task::State::Completed as i32, || c.log()).await;
        assert!(!ok.failed, "{ok:?}");
        assert_eq!(ok.result, "migrated\n");
        let bad = wait_task(&mut s, "task-fail", |t| t.state == pb::task::State::Completed as i32, || c.log()).await;
        assert!(bad.failed);
        assert_eq!(bad.failure_reason, "TASK: Exited with status 7");

        s.desire_task(task("task-long", "sleep 1000")).await.expect("DesireTask");
        wait_task(&mut s, "task-long", |t| t.state == pb::task::State::Running as i32, || c.log()).await;
        wait_until(Duration::from_secs(10), || c.client_list_len() == 1).await;
        s.cancel_task(pb::CancelTaskRequest { task_guid: "task-long".into() }).await.expect("CancelTask");
        let t = wait_task(&mut s, "task-long", |t| t.state == pb::task::State::Completed as i32, || c.log()).await;
        assert!(t.failed);
        assert_eq!(t.failure_reason, "task was cancelled");
        wait_until(Duration::from_secs(10), || c.client_list_len() == 0).await;
        c.assert_no_leaks_after_destroy();
    });
}

#[test]
fn restarts_of_the_scheduler_and_the_cell_lose_nothing() {
    require_cell!();
    let mut sched = Scheduler::start();
    let mut c = cell(&sched, "cell-restart");
    rt().block_on(async {
        put_web_droplet(&[&c], "droplets/web-restart", 0).await;
        let mut s = sched.client().await;
        s.desire_lrp(desired("web-restart", 2, "droplets/web-restart", "", vec![tcp_check(8080)]))
            .await
            .expect("DesireLRP");
        let before =
            wait_for(&mut s, "web-restart", "2 RUNNING", Duration::from_secs(30), all_running(2), || c.log()).await;

        // The scheduler restarts: every record is still there.
        sched.restart();
        let mut s = sched.client().await;
        let after = actuals(&mut s, "web-restart").await;
        assert_eq!(after, before);
        let d = s
            .get_desired_lrp(pb::DesiredLrpRequest { process_guid: "web-restart".into() })
            .await
            .expect("GetDesiredLRP")
            .into_inner();
        assert_eq!(d.instances, 2);

        // The cell is SIGKILLed and comes back: the same instances, still RUNNING.
        c.kill();
        std::thread::sleep(Duration::from_millis(500));
        c.restart();
        tokio::time::sleep(Duration::from_secs(4)).await; // past a bulk reconcile
        let again =
            wait_for(&mut s, "web-restart", "2 RUNNING", Duration::from_secs(20), all_running(2), || c.log()).await;
        let guids = |a: &[pb::ActualLrp]| a.iter().map(|a| a.instance_guid.clone()).collect::<Vec<_>>();
        assert_eq!(guids(&again), guids(&before), "no duplicates, no replacements");
        assert_eq!(c.client_list_len(), 2);
        for x in &again {
            assert_eq!(x.crash_count, 0);
            assert!(http_get(&host_addr(x), "/").expect("GET").contains("hello from celld"));
        }

        // The scheduler is away for 30 s while an instance crashes; the crash
        // is reported once it is back.
        sched.kill();
        let p = c
            .client
            .run(
                &before[1].instance_guid,
                &common::sh("kill $(cat /home/vcap/tmp/app.pid)"),
                celld::garden::client::ProcessIo::default(),
            )
            .await
            .expect("run pkill");
        // The app's exit makes the cell destroy the container, which can take
        // init (and the connection that would carry kill's own exit status)
        // first; the crash report below proves the kill either way.
        match p.wait().await {
            Ok(code) => assert_eq!(code, 0, "could not kill the app"),
            Err(e) => eprintln!("kill's exit status was lost with the container: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        sched.spawn();
        let mut s = sched.client().await;
        let crashed = wait_for(
            &mut s,
            "web-restart",
            "the crash reported",
            Duration::from_secs(30),
            |a| a.iter().any(|a| a.index == 1 && a.crash_count == 1),
            || format!("{}\n{}", c.log(), sched.log()),
        )
        .await;
        assert!(crashed.iter().any(|a| a.crash_reason.starts_with("APP/PROC/WEB: Exited with status")), "{crashed:?}");
        wait_for(&mut s, "web-restart", "2 RUNNING again", Duration::from_secs(30), all_running(2), || c.log()).await;
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "web-restart".into() }).await.expect("remove");
    });
}

#[test]
fn two_cells_split_instances_by_the_auction() {
    require_cell!();
    let sched = Scheduler::start();
    let a = cell(&sched, "cell-a");
    let b = cell(&sched, "cell-b");
    rt().block_on(async {
        put_web_droplet(&[&a, &b], "droplets/web-split", 0).await;
        let mut s = sched.client().await;
        // Both cells must have heartbeated before the auction.
        let deadline = Instant::now() + Duration::from_secs(15);
        while s.cells(pb::CellsRequest {}).await.expect("Cells").into_inner().cells.len() < 2 {
            assert!(Instant::now() < deadline, "cells never registered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s.desire_lrp(desired("web-split", 4, "droplets/web-split", "", vec![tcp_check(8080)]))
            .await
            .expect("DesireLRP");
        let x = wait_for(&mut s, "web-split", "4 RUNNING", Duration::from_secs(40), all_running(4), || {
            format!("{}\n{}", a.log(), b.log())
        })
        .await;
        let on_a = x.iter().filter(|x| x.cell_id == "cell-a").count();
        assert_eq!(on_a, 2, "the auction spreads instances of one process: {x:?}");
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "web-split".into() }).await.expect("remove");
        wait_for(&mut s, "web-split", "all removed", Duration::from_secs(20), |x| x.is_empty(), || a.log()).await;
    });
}

#[test]
fn a_terminated_cell_evacuates_its_instances_then_exits() {
    require_cell!();
    let sched = Scheduler::start();
    let mut a = cell(&sched, "cell-evac-a");
    let b = cell(&sched, "cell-evac-b");
    rt().block_on(async {
        put_web_droplet(&[&a, &b], "droplets/web-evac", 0).await;
        let mut s = sched.client().await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while s.cells(pb::CellsRequest {}).await.expect("Cells").into_inner().cells.len() < 2 {
            assert!(Instant::now() < deadline, "cells never registered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s.desire_lrp(desired("web-evac", 2, "droplets/web-evac", "", vec![tcp_check(8080)])).await.expect("DesireLRP");
        let before =
            wait_for(&mut s, "web-evac", "2 RUNNING", Duration::from_secs(30), all_running(2), || a.log()).await;
        let on_a = before.iter().find(|x| x.cell_id == "cell-evac-a").expect("an instance on cell a").clone();

        // SIGTERM: cell a hands its instance over and exits once the
        // replacement runs on cell b; the app stays reachable meanwhile.
        assert!(a.terminate(Duration::from_secs(30)), "cell a did not exit after evacuating:\n{}", a.log());
        let after = wait_for(
            &mut s,
            "web-evac",
            "both on cell b",
            Duration::from_secs(20),
            |x| all_running(2)(x) && x.iter().all(|x| x.cell_id == "cell-evac-b"),
            || format!("{}\n{}", a.log(), sched.log()),
        )
        .await;
        assert!(after.iter().all(|x| x.presence == pb::actual_lrp::Presence::Ordinary as i32), "{after:?}");
        assert!(after.iter().all(|x| x.crash_count == 0), "evacuation is not a crash: {after:?}");
        assert!(after.iter().any(|x| x.index == on_a.index && x.instance_guid != on_a.instance_guid));
        assert!(a.log().contains("evacuation finished"), "{}", a.log());
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "web-evac".into() }).await.expect("remove");
        wait_for(&mut s, "web-evac", "all removed", Duration::from_secs(20), |x| x.is_empty(), || b.log()).await;
    });
}
