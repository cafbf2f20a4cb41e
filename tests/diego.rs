//! A cell joined to Diego end to end: a real celld (`--bbs-address`) with a
//! fake BBS and a fake Locket (tests/common/diego) over mutual TLS, and the
//! test as the auctioneer (`GET /state`, then `POST /work`) and as BBS's
//! other clients. Real containers run the action trees BBS defines.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use celld::diego_wire::fakes::sh;
use celld_image::testing::{Entry, ImageBuilder, TestDir, TestRegistry, push};
use celld_proto::diego::bbs as pb;
use common::Daemon;
use common::diego::{DiegoCerts, FakeBbs, FakeBbsOptions, FakeLocket};
use serde_json::{Value, json};

/// A multi-threaded runtime: the fakes keep serving while a test blocks.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The control plane, the cell joined to it, and the auctioneer's client.
struct Foundation {
    /// Kept for its files (removed on drop).
    _certs: DiegoCerts,
    bbs: FakeBbs,
    locket: FakeLocket,
    cell: Daemon,
    cell_id: String,
    rep: String,
    admin: String,
    auctioneer: reqwest::Client,
}

fn cell_args(
    f_certs: &DiegoCerts,
    bbs: &FakeBbs,
    locket: &FakeLocket,
    cell_id: &str,
    rep: &str,
    admin: &str,
) -> Vec<String> {
    let p = |p: &std::path::Path| p.display().to_string();
    vec![
        "--bbs-address".into(),
        bbs.url(),
        "--rep-ca".into(),
        p(&f_certs.cell.ca),
        "--rep-cert".into(),
        p(&f_certs.cell.cert),
        "--rep-key".into(),
        p(&f_certs.cell.key),
        "--locket-address".into(),
        locket.address(),
        "--rep-listen".into(),
        rep.into(),
        "--rep-admin-listen".into(),
        admin.into(),
        "--rep-url".into(),
        format!("https://{rep}"),
        "--cell-id".into(),
        cell_id.into(),
        "--reconcile-interval".into(),
        "3".into(),
        "--evacuation-timeout".into(),
        "8".into(),
        "--max-containers".into(),
        "20".into(),
        "--memory-mb".into(),
        "4096".into(),
        "--disk-mb".into(),
        "8192".into(),
    ]
}

impl Foundation {
    fn start(rt: &tokio::runtime::Runtime, name: &str) -> Self {
        Self::start_with(rt, name, &[])
    }

    fn start_with(rt: &tokio::runtime::Runtime, name: &str, extra: &[&str]) -> Self {
        let certs = DiegoCerts::new(name);
        let (bbs, locket) =
            rt.block_on(async { (certs.fake_bbs(FakeBbsOptions::default()).await, certs.fake_locket().await) });
        let cell_id = format!("{name}_z1-0");
        let (rep, admin) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let mut args = cell_args(&certs, &bbs, &locket, &cell_id, &rep, &admin);
        args.extend(extra.iter().map(|a| a.to_string()));
        let cell = Daemon::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
        // The auctioneer presents the control plane's certificate.
        let tls = certs.server_identity().client_config().expect("client config");
        let auctioneer = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        Foundation { _certs: certs, bbs, locket, cell, cell_id, rep, admin, auctioneer }
    }

    async fn state(&self) -> Value {
        let r = self.auctioneer.get(format!("https://{}/state", self.rep)).send().await.expect("GET /state");
        assert_eq!(r.status(), 200);
        serde_json::from_slice(&r.bytes().await.expect("state body")).expect("state JSON")
    }

    /// Waits for the rep API to answer (it starts after the containers are restored).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.auctioneer.get(format!("https://{}/state", self.rep)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the rep API never answered:\n{}", self.cell.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn work(&self, work: Value) -> Value {
        let r = self
            .auctioneer
            .post(format!("https://{}/work", self.rep))
            .body(work.to_string())
            .send()
            .await
            .expect("POST /work");
        assert_eq!(r.status(), 200, "{}", self.cell.log());
        serde_json::from_slice(&r.bytes().await.expect("work body")).expect("failed work JSON")
    }

    fn actual(&self, pg: &str, index: i32) -> Option<pb::ActualLrp> {
        self.bbs.state().actual.get(&(pg.to_string(), index)).cloned()
    }

    async fn wait_actual(
        &self,
        pg: &str,
        index: i32,
        what: &str,
        ok: impl Fn(&pb::ActualLrp) -> bool,
    ) -> pb::ActualLrp {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(a) = self.actual(pg, index).filter(|a| ok(a)) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "{pg}/{index} never {what}: {:?}\ncalls: {:?}\n{}",
                self.actual(pg, index),
                self.bbs.calls(),
                self.cell.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_task(&self, guid: &str, ok: impl Fn(&pb::Task) -> bool) -> pb::Task {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(t) = self.bbs.state().tasks.get(guid).filter(|t| ok(t)).cloned() {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {guid}: {:?}\ncalls: {:?}\n{}",
                self.bbs.state().tasks.get(guid),
                self.bbs.calls(),
                self.cell.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A web app as Cloud Controller shapes one: a setup, a Codependent action
/// (the server and a process that exits 3 once told to), a port check.
fn web_app(guid: &str, instances: i32) -> pb::DesiredLrp {
    pb::DesiredLrp {
        process_guid: guid.into(),
        domain: "cf-apps".into(),
        root_fs: "preloaded:tiny".into(),
        instances,
        memory_mb: 64,
        disk_mb: 128,
        ports: vec![8080],
        log_guid: guid.into(),
        setup: Some(sh("mkdir -p /home/vcap/app && echo hello from diego > /home/vcap/app/index.html", "CELL")),
        action: Some(pb::Action {
            codependent_action: Some(pb::CodependentAction {
                actions: vec![
                    sh("exec busybox httpd -f -p 8080 -h /home/vcap/app", "APP/PROC/WEB"),
                    sh("while [ ! -e /home/vcap/die ]; do sleep 0.2; done; rm /home/vcap/die; exit 3", "APP/PROC/WEB"),
                ],
                ..Default::default()
            }),
            ..Default::default()
        }),
        check_definition: Some(pb::CheckDefinition {
            checks: vec![pb::Check {
                tcp_check: Some(pb::TcpCheck { port: 8080, connect_timeout_ms: 1000, interval_ms: 0 }),
                http_check: None,
            }],
            log_source: "HEALTH".into(),
            ..Default::default()
        }),
        start_timeout_ms: 30_000,
        ..Default::default()
    }
}

fn lrp_work(cell_id: &str, pg: &str, indices: &[i32]) -> Value {
    let lrps: Vec<Value> = indices
        .iter()
        .map(|i| {
            json!({"instance_guid": "", "process_guid": pg, "index": i, "domain": "cf-apps",
                   "PlacementTags": null, "VolumeDrivers": [], "RootFs": "preloaded:tiny",
                   "MemoryMB": 64, "DiskMB": 128, "MaxPids": 0, "state": ""})
        })
        .collect();
    json!({"LRPs": lrps, "Tasks": null, "cell_id": cell_id})
}

fn task_work(cell_id: &str, guid: &str) -> Value {
    json!({"LRPs": null, "Tasks": [{"TaskGuid": guid, "Domain": "cf-tasks", "PlacementTags": null,
           "VolumeDrivers": [], "RootFs": "preloaded:tiny", "MemoryMB": 32, "DiskMB": 64, "MaxPids": 0,
           "state": "Invalid", "failed": false}], "cell_id": cell_id})
}

fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut c) = std::net::TcpStream::connect(addr) else { return String::new() };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(c, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

fn host_addr(a: &pb::ActualLrp) -> String {
    let net = a.actual_lrp_net_info.clone().unwrap_or_default();
    format!("{}:{}", net.address, net.ports.first().map_or(0, |p| p.host_port))
}

fn instance_guid(a: &pb::ActualLrp) -> String {
    a.actual_lrp_instance_key.clone().unwrap_or_default().instance_guid
}

async fn touch(f: &Foundation, handle: &str, path: &str) {
    let p =
        f.cell.client.run(handle, &common::sh(&format!("touch {path}")), Default::default()).await.expect("run touch");
    assert_eq!(p.wait().await.expect("touch"), 0);
}

#[test]
fn an_lrp_is_claimed_started_crashed_and_removed_through_bbs() {
    require_host!();
    let rt = runtime();
    // A registry of the cell's own (no traffic leaves the machine) with an
    // image of the tiny rootfs, for an LRP whose rootfs is a docker image.
    let tmp = TestDir::new("diego-image");
    let registry = TestRegistry::start(None).expect("registry");
    ImageBuilder::new()
        .layer(vec![Entry::HostDir(common::rootfs_dir().join("tiny"))])
        .write(&tmp.path().join("layout"), "v1")
        .expect("image");
    push(&tmp.path().join("layout"), "v1", &registry, "cf/tiny").expect("push");
    let f = Foundation::start_with(&rt, "lrp", &["--insecure-docker-registry", &registry.host()]);
    rt.block_on(async {
        f.wait_ready().await;
        // The presence: in Locket under the cell id, with the rep URL and capacity.
        let deadline = Instant::now() + Duration::from_secs(15);
        let presence = loop {
            if let Some(r) = f.locket.resource(&f.cell_id) {
                break r;
            }
            assert!(Instant::now() < deadline, "no presence in Locket:\n{}", f.cell.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(presence.type_code, 2, "a presence");
        let p: Value = serde_json::from_str(&presence.value).expect("presence JSON");
        assert_eq!(p["cell_id"], f.cell_id.as_str());
        assert_eq!(p["rep_url"], format!("https://{}", f.rep));
        assert_eq!(p["capacity"], json!({"memory_mb": 4096, "disk_mb": 8192, "containers": 19}));
        let providers = p["rootfs_provider_list"].as_array().expect("providers");
        assert!(
            providers.iter().any(|x| x["name"] == "preloaded"
                && x["properties"].as_array().is_some_and(|s| s.iter().any(|s| s == "tiny"))),
            "{p}"
        );

        let before = f.state().await;
        assert_eq!(before["cell_id"], f.cell_id.as_str());
        assert_eq!(before["RootFSProviders"]["preloaded"]["set"]["tiny"], json!({}));
        assert_eq!(before["TotalResources"], json!({"MemoryMB": 4096, "DiskMB": 8192, "Containers": 19}));

        // Work for another cell is refused whole.
        let wrong = f
            .auctioneer
            .post(format!("https://{}/work", f.rep))
            .body(lrp_work("elsewhere", "x", &[0]).to_string())
            .send()
            .await
            .expect("POST");
        assert_eq!(wrong.status(), 500);

        f.bbs.state().desire_lrp(Some(&web_app("web", 2))).expect("desire");
        let failed = f.work(lrp_work(&f.cell_id, "web", &[0, 1])).await;
        assert_eq!(failed, json!({"LRPs": [], "Tasks": []}), "all work taken");
        let a0 = f.wait_actual("web", 0, "RUNNING", |a| a.state == "RUNNING").await;
        let a1 = f.wait_actual("web", 1, "RUNNING", |a| a.state == "RUNNING").await;
        let ik = a0.actual_lrp_instance_key.clone().unwrap_or_default();
        assert_eq!(ik.cell_id, f.cell_id);
        assert!(!ik.instance_guid.is_empty());
        assert_ne!(instance_guid(&a0), instance_guid(&a1));
        assert!(http_get(&host_addr(&a0), "/").contains("hello from diego"), "{:?}", a0);
        let calls = f.bbs.calls();
        assert!(calls.iter().any(|c| c == "/v1/actual_lrps/claim"), "{calls:?}");
        assert!(calls.iter().any(|c| c == "/v1/actual_lrps/start.r1"), "{calls:?}");
        assert!(calls.iter().any(|c| c == "/v1/desired_lrps/get_by_process_guid.r3"), "{calls:?}");

        let state = f.state().await;
        let lrps = state["LRPs"].as_array().expect("LRPs");
        assert_eq!(lrps.len(), 2, "{state}");
        assert!(lrps.iter().all(|l| l["state"] == "RUNNING" && l["RootFs"] == "preloaded:tiny"), "{state}");
        assert_eq!(state["AvailableResources"]["MemoryMB"], 4096 - 128);

        // A crash: BBS is told why, and (count < 3) unclaims it for a restart.
        touch(&f, &instance_guid(&a0), "/home/vcap/die").await;
        let crashed = f.wait_actual("web", 0, "crashed", |a| a.crash_count == 1).await;
        assert_eq!(crashed.crash_reason, "APP/PROC/WEB: Exited with status 3");
        assert_eq!(crashed.state, "UNCLAIMED");
        // The auctioneer places it again; it runs with a new instance guid.
        f.work(lrp_work(&f.cell_id, "web", &[0])).await;
        let again = f.wait_actual("web", 0, "RUNNING again", |a| a.state == "RUNNING").await;
        assert_ne!(instance_guid(&again), instance_guid(&a0));

        // BBS stops an instance (scale down): the cell removes it.
        let stop = f
            .auctioneer
            .post(format!("https://{}/v1/lrps/web/instances/{}/stop", f.rep, instance_guid(&a1)))
            .send()
            .await
            .expect("stop");
        assert_eq!(stop.status(), 202);
        let deadline = Instant::now() + Duration::from_secs(20);
        while f.actual("web", 1).is_some() {
            assert!(Instant::now() < deadline, "not removed: {:?}", f.bbs.calls());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while f.cell.client.list(&Default::default()).await.expect("list").contains(&instance_guid(&a1)) {
            assert!(Instant::now() < deadline, "container kept");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A docker image as the rootfs (Diego's `docker:///NAME#TAG` form).
        let mut docker = web_app("docker-app", 1);
        docker.root_fs = format!("docker://{}/cf/tiny#v1", registry.host());
        f.bbs.state().desire_lrp(Some(&docker)).expect("desire");
        f.work(lrp_work(&f.cell_id, "docker-app", &[0])).await;
        f.wait_actual("docker-app", 0, "RUNNING", |a| a.state == "RUNNING").await;

        // What celld cannot run fails with a reason that says so.
        let mut other = web_app("ftp-app", 1);
        other.root_fs = "ftp://host/rootfs.tgz".into();
        f.bbs.state().desire_lrp(Some(&other)).expect("desire");
        f.work(lrp_work(&f.cell_id, "ftp-app", &[0])).await;
        let refused = f.wait_actual("ftp-app", 0, "crashed", |a| a.crash_count == 1).await;
        assert!(refused.crash_reason.contains("ftp: root filesystems are not supported"), "{}", refused.crash_reason);
    });
}

#[test]
fn tasks_complete_with_their_result_and_can_be_cancelled() {
    require_host!();
    let rt = runtime();
    let f = Foundation::start(&rt, "task");
    rt.block_on(async {
        f.wait_ready().await;
        let def = |script: &str| pb::TaskDefinition {
            root_fs: "preloaded:tiny".into(),
            memory_mb: 32,
            disk_mb: 64,
            log_guid: "task-log".into(),
            result_file: "/home/vcap/result.json".into(),
            action: Some(sh(script, "TASK")),
            ..Default::default()
        };
        let desire = |guid: &str, script: &str| {
            f.bbs
                .state()
                .desire_task(&pb::DesireTaskRequest {
                    task_definition: Some(def(script)),
                    task_guid: guid.into(),
                    domain: "cf-tasks".into(),
                })
                .expect("desire task")
        };
        desire("migrate", "echo '{\"answer\":42}' > /home/vcap/result.json");
        assert_eq!(f.work(task_work(&f.cell_id, "migrate")).await, json!({"LRPs": [], "Tasks": []}));
        let done = f.wait_task("migrate", |t| t.state == pb::task::State::Completed as i32).await;
        assert!(!done.failed, "{done:?}");
        assert_eq!(done.result.trim(), "{\"answer\":42}");

        desire("fails", "exit 7");
        f.work(task_work(&f.cell_id, "fails")).await;
        let failed = f.wait_task("fails", |t| t.state == pb::task::State::Completed as i32).await;
        assert!(failed.failed);
        assert_eq!(failed.failure_reason, "TASK: Exited with status 7");

        desire("sleeper", "sleep 600");
        f.work(task_work(&f.cell_id, "sleeper")).await;
        f.wait_task("sleeper", |t| t.state == pb::task::State::Running as i32).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f.cell.client.list(&Default::default()).await.expect("list").contains(&"sleeper".to_string()) {
            assert!(Instant::now() < deadline, "no task container:\n{}", f.cell.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = f.auctioneer.post(format!("https://{}/v1/tasks/sleeper/cancel", f.rep)).send().await.expect("cancel");
        assert_eq!(r.status(), 202);
        let deadline = Instant::now() + Duration::from_secs(30);
        while f.cell.client.list(&Default::default()).await.expect("list").contains(&"sleeper".to_string()) {
            assert!(Instant::now() < deadline, "cancelled task's container kept:\n{}", f.cell.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn bbs_away_keeps_apps_running_and_gets_the_reports_after() {
    require_host!();
    let rt = runtime();
    let f = Foundation::start(&rt, "away");
    rt.block_on(async {
        f.wait_ready().await;
        f.bbs.state().desire_lrp(Some(&web_app("steady", 2))).expect("desire");
        f.work(lrp_work(&f.cell_id, "steady", &[0, 1])).await;
        let a0 = f.wait_actual("steady", 0, "RUNNING", |a| a.state == "RUNNING").await;
        let a1 = f.wait_actual("steady", 1, "RUNNING", |a| a.state == "RUNNING").await;
        f.bbs.set_down(true);
        // One instance crashes while BBS is away; the other keeps serving.
        touch(&f, &instance_guid(&a0), "/home/vcap/die").await;
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            assert!(http_get(&host_addr(&a1), "/").contains("hello from diego"), "instance 1 stopped serving");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(f.actual("steady", 0).expect("a0").crash_count, 0, "BBS was down");
        f.bbs.set_down(false);
        let crashed = f.wait_actual("steady", 0, "told of the crash", |a| a.crash_count == 1).await;
        assert_eq!(crashed.crash_reason, "APP/PROC/WEB: Exited with status 3");
        assert_eq!(f.actual("steady", 1).expect("a1").state, "RUNNING");
    });
}

#[test]
fn a_restart_collides_with_its_own_lock_and_evacuation_hands_instances_over() {
    require_host!();
    let rt = runtime();
    let mut f = Foundation::start(&rt, "evac");
    rt.block_on(async {
        f.wait_ready().await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if f.locket.resource(&f.cell_id).is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "no presence:\n{}", f.cell.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        f.bbs.state().desire_lrp(Some(&web_app("moving", 1))).expect("desire");
        f.work(lrp_work(&f.cell_id, "moving", &[0])).await;
        f.wait_actual("moving", 0, "RUNNING", |a| a.state == "RUNNING").await;
    });
    // A crash: the presence is not released, so the restarted cell's new
    // owner collides with the old lock until its TTL (15 s) runs out; its
    // instance keeps running meanwhile.
    f.cell.kill();
    f.cell.restart();
    rt.block_on(async {
        f.wait_ready().await;
        let old = f.locket.resource(&f.cell_id).expect("presence").owner;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = f.locket.resource(&f.cell_id).map(|r| r.owner);
            if now.as_deref().is_some_and(|o| o != old) {
                break;
            }
            assert!(Instant::now() < deadline, "the new owner never got the presence:\n{}", f.cell.log());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(f.cell.log().contains("another owner holds this cell's presence"), "{}", f.cell.log());
        let a = f.actual("moving", 0).expect("instance");
        assert_eq!(a.state, "RUNNING");
        assert!(http_get(&host_addr(&a), "/").contains("hello from diego"));

        // The drain script: /evacuate on the admin API, then /ping until the
        // cell is gone. The instance is handed over (an EVACUATING copy, the
        // ordinary one unclaimed for a replacement) and, with no replacement
        // within --evacuation-timeout, its copy removed and the container destroyed.
        let r = f.auctioneer.post(format!("https://{}/evacuate", f.admin)).send().await.expect("evacuate");
        assert_eq!(r.status(), 202);
        assert_eq!(
            serde_json::from_slice::<Value>(&r.bytes().await.expect("body")).expect("json"),
            json!({"ping_path": "/ping"})
        );
        let state = f.state().await;
        assert_eq!(state["Evacuating"], true);
        let deadline = Instant::now() + Duration::from_secs(10);
        while f.bbs.state().evacuating.is_empty() {
            assert!(Instant::now() < deadline, "no evacuating copy: {:?}\n{}", f.bbs.calls(), f.cell.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(f.actual("moving", 0).expect("ordinary").state, "UNCLAIMED");
        // Work offered while evacuating comes back.
        let back = f.work(lrp_work(&f.cell_id, "moving", &[0])).await;
        assert_eq!(back["LRPs"].as_array().map(Vec::len), Some(1), "{back}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while f.auctioneer.get(format!("https://{}/ping", f.admin)).send().await.is_ok() {
            assert!(Instant::now() < deadline, "the cell never finished evacuating:\n{}", f.cell.log());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(f.bbs.calls().iter().any(|c| c == "/v1/actual_lrps/evacuate_running.r1"), "{:?}", f.bbs.calls());
        assert!(f.bbs.calls().iter().any(|c| c == "/v1/actual_lrps/remove_evacuating"), "{:?}", f.bbs.calls());
        assert!(f.bbs.state().evacuating.is_empty());
        // Released on the way out: a replacement cell need not wait.
        let deadline = Instant::now() + Duration::from_secs(10);
        while f.locket.resource(&f.cell_id).is_some() {
            assert!(Instant::now() < deadline, "presence kept after evacuation:\n{}", f.cell.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn a_bad_certificate_stops_start_up_naming_the_file_and_the_problem() {
    require_host!();
    use celld::diego_wire::test_certs::{LeafSpec, TestCa};
    let certs = DiegoCerts::new("badcert");
    let ca = TestCa::new("bad cert CA").expect("CA");
    let expired = ca
        .leaf(&LeafSpec { not_before: Some((2020, 1, 1)), not_after: Some((2021, 1, 1)), ..Default::default() })
        .expect("leaf");
    let expired = ca.write(&certs.dir, "expired", &expired).expect("write");
    let client_only = ca.leaf(&LeafSpec { server_auth: false, ..Default::default() }).expect("leaf");
    let client_only = ca.write(&certs.dir, "client-only", &client_only).expect("write");
    let p = |p: &std::path::Path| p.display().to_string();
    for (files, problem) in [(&expired, "expired"), (&client_only, "serverAuth")] {
        let args = [
            "--bbs-address",
            "https://127.0.0.1:1",
            "--locket-address",
            "127.0.0.1:1",
            "--bbs-ca-cert",
            &p(&certs.cell.ca),
            "--bbs-client-cert",
            &p(&certs.cell.cert),
            "--bbs-client-key",
            &p(&certs.cell.key),
            "--rep-ca",
            &p(&files.ca),
            "--rep-cert",
            &p(&files.cert),
            "--rep-key",
            &p(&files.key),
            "--rootfs-dir",
            &common::rootfs_dir().display().to_string(),
            "--no-network",
        ];
        let (status, log) =
            common::celld_exit(&certs.dir.join(problem), &args, Duration::from_secs(20)).expect("celld kept running");
        assert!(!status.success());
        assert!(log.contains(&p(&files.cert)) && log.contains(problem), "{problem}: {log}");
    }
}
