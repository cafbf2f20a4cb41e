//! The reference scheduler over real gRPC on loopback and a real SQLite file,
//! with simulated cells (tonic `Cell` servers that claim and start what they
//! are given). No root needed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celld::grpc::pb;
use celld::grpc::pb::actual_lrp::{Presence, State};
use celld::grpc::pb::scheduler_client::SchedulerClient;
use celld::scheduler::{SchedulerConfig, SchedulerHandle};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn temp_dir(name: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("celld-sched-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An in-process scheduler on 127.0.0.1:PORT; its temp dir goes on drop.
struct Sched {
    dir: PathBuf,
    addr: String,
    _handle: Arc<SchedulerHandle>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Sched {
    async fn start(name: &str, presence_ttl: u64, test_clock: bool) -> Self {
        let dir = temp_dir(name);
        let handle = Arc::new(
            SchedulerHandle::start(SchedulerConfig {
                db: dir.join("scheduler.db"),
                convergence_interval: Duration::from_secs(3600),
                presence_ttl: Duration::from_secs(presence_ttl),
                test_clock,
                metrics: Default::default(),
            })
            .await
            .unwrap(),
        );
        let listener = celld::grpc::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let h = handle.clone();
        tokio::spawn(async move {
            let _ = h
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await;
        });
        Self { dir, addr, _handle: handle, stop: Some(tx) }
    }

    async fn client(&self) -> SchedulerClient<Channel> {
        client(&self.addr).await
    }
}

impl Drop for Sched {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn client(addr: &str) -> SchedulerClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match SchedulerClient::connect(format!("http://{addr}")).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("connecting to {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A simulated cell: accepts Perform, then claims and starts (when
/// `auto_start`), heartbeats while `beating`. Its heartbeat counts every
/// instance it accepted as a container in use, as a rep's reservations do.
struct SimCell {
    id: String,
    addr: String,
    memory_mb: u32,
    containers: u32,
    sched: SchedulerClient<Channel>,
    auto_start: AtomicBool,
    beating: AtomicBool,
    /// instance guid → (process guid, index), for StopLRPInstance.
    instances: Mutex<HashMap<String, (String, i32)>>,
    stopped: Mutex<Vec<String>>,
    cancelled: Mutex<Vec<String>>,
    performed_tasks: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct CellSvc(Arc<SimCell>);

impl SimCell {
    async fn start(id: &str, sched_addr: &str, memory_mb: u32) -> Arc<Self> {
        Self::start_with(id, sched_addr, memory_mb, 250).await
    }

    async fn start_with(id: &str, sched_addr: &str, memory_mb: u32, containers: u32) -> Arc<Self> {
        let listener = celld::grpc::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cell = Arc::new(SimCell {
            id: id.to_string(),
            addr,
            memory_mb,
            containers,
            sched: client(sched_addr).await,
            auto_start: AtomicBool::new(true),
            beating: AtomicBool::new(true),
            instances: Mutex::new(HashMap::new()),
            stopped: Mutex::new(Vec::new()),
            cancelled: Mutex::new(Vec::new()),
            performed_tasks: Mutex::new(Vec::new()),
        });
        let svc = pb::cell_server::CellServer::new(CellSvc(cell.clone()));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        let c = cell.clone();
        tokio::spawn(async move {
            loop {
                if c.beating.load(Ordering::SeqCst) {
                    let _ = c.sched.clone().heartbeat(c.presence()).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        cell.sched.clone().heartbeat(cell.presence()).await.unwrap();
        cell
    }

    fn presence(&self) -> pb::CellPresence {
        let r = pb::Resources { memory_mb: self.memory_mb, disk_mb: 100_000, containers: self.containers };
        let used = u32::try_from(self.instances.lock().unwrap().len()).unwrap();
        pb::CellPresence {
            cell_id: self.id.clone(),
            grpc_address: self.addr.clone(),
            zone: "z1".into(),
            capacity: Some(r),
            available: Some(pb::Resources { containers: r.containers.saturating_sub(used), ..r }),
            stacks: vec!["cflinuxfs4".into()],
            ..Default::default()
        }
    }

    fn ik(&self, guid: &str) -> pb::ActualLrpInstanceKey {
        pb::ActualLrpInstanceKey { instance_guid: guid.into(), cell_id: self.id.clone() }
    }

    async fn claim_and_start(&self, pg: &str, index: i32, guid: &str) -> Result<(), Status> {
        let key = pb::ActualLrpKey { process_guid: pg.into(), index, domain: "cf-apps".into() };
        let mut s = self.sched.clone();
        s.claim_actual_lrp(pb::ClaimActualLrpRequest { key: Some(key.clone()), instance_key: Some(self.ik(guid)) })
            .await?;
        s.start_actual_lrp(pb::StartActualLrpRequest {
            key: Some(key),
            instance_key: Some(self.ik(guid)),
            net_info: Some(pb::ActualLrpNetInfo {
                address: "127.0.0.1".into(),
                instance_address: "10.0.0.2".into(),
                ports: vec![pb::PortMapping { container_port: 8080, host_port: 61001 }],
            }),
            routable: true,
        })
        .await?;
        Ok(())
    }
}

type LogStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LogEnvelope, Status>> + Send>>;

#[tonic::async_trait]
impl pb::cell_server::Cell for CellSvc {
    async fn state(&self, _r: Request<pb::StateRequest>) -> Result<Response<pb::CellState>, Status> {
        Err(Status::unimplemented("sim"))
    }

    async fn perform(&self, r: Request<pb::Work>) -> Result<Response<pb::Work>, Status> {
        let work = r.into_inner();
        assert_eq!(work.cell_id, self.0.id);
        for s in work.lrps {
            let pg = s.desired_lrp.map(|d| d.process_guid).unwrap_or_default();
            self.0.instances.lock().unwrap().insert(s.instance_guid.clone(), (pg.clone(), s.index));
            if self.0.auto_start.load(Ordering::SeqCst) {
                let cell = self.0.clone();
                tokio::spawn(async move {
                    let _ = cell.claim_and_start(&pg, s.index, &s.instance_guid).await;
                });
            }
        }
        for t in work.tasks {
            self.0.performed_tasks.lock().unwrap().push(t.task_guid.clone());
            let cell = self.0.clone();
            tokio::spawn(async move {
                let _ = cell
                    .sched
                    .clone()
                    .start_task(pb::StartTaskRequest { task_guid: t.task_guid, cell_id: cell.id.clone() })
                    .await;
            });
        }
        Ok(Response::new(pb::Work { cell_id: self.0.id.clone(), ..Default::default() }))
    }

    async fn stop_lrp_instance(
        &self,
        r: Request<pb::StopLrpInstanceRequest>,
    ) -> Result<Response<pb::StopLrpInstanceResponse>, Status> {
        let r = r.into_inner();
        self.0.stopped.lock().unwrap().push(r.instance_guid.clone());
        let found = self.0.instances.lock().unwrap().get(&r.instance_guid).cloned();
        if let Some((pg, index)) = found {
            let cell = self.0.clone();
            tokio::spawn(async move {
                let _ = cell
                    .sched
                    .clone()
                    .remove_actual_lrp(pb::RemoveActualLrpRequest {
                        key: Some(pb::ActualLrpKey { process_guid: pg, index, domain: "cf-apps".into() }),
                        instance_key: Some(cell.ik(&r.instance_guid)),
                    })
                    .await;
            });
        }
        Ok(Response::new(pb::StopLrpInstanceResponse {}))
    }

    async fn cancel_task(&self, r: Request<pb::CancelTaskRequest>) -> Result<Response<pb::CancelTaskResponse>, Status> {
        self.0.cancelled.lock().unwrap().push(r.into_inner().task_guid);
        Ok(Response::new(pb::CancelTaskResponse {}))
    }

    type StreamLogsStream = LogStream;

    async fn stream_logs(&self, _r: Request<pb::StreamLogsRequest>) -> Result<Response<LogStream>, Status> {
        Err(Status::unimplemented("sim"))
    }

    async fn container_metrics(
        &self,
        _r: Request<pb::ContainerMetricsRequest>,
    ) -> Result<Response<pb::ContainerMetricsResponse>, Status> {
        Err(Status::unimplemented("sim"))
    }
}

fn desired(pg: &str, instances: i32, memory_mb: u32) -> pb::DesiredLrp {
    pb::DesiredLrp {
        process_guid: pg.into(),
        domain: "cf-apps".into(),
        instances,
        rootfs: "preloaded:cflinuxfs4".into(),
        memory_mb,
        disk_mb: 256,
        ..Default::default()
    }
}

async fn actuals(s: &mut SchedulerClient<Channel>, pg: &str) -> Vec<pb::ActualLrp> {
    s.actual_lr_ps(pb::ActualLrPsRequest { process_guid: pg.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .actual_lrps
}

/// Polls `f` until it returns Some, for at most 4 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_running(s: &SchedulerClient<Channel>, pg: &str, n: usize) -> Vec<pb::ActualLrp> {
    eventually(&format!("{n} running instances of {pg}"), || {
        let mut s = s.clone();
        let pg = pg.to_string();
        async move {
            let a: Vec<_> =
                actuals(&mut s, &pg).await.into_iter().filter(|l| l.presence() == Presence::Ordinary).collect();
            (a.len() == n && a.iter().all(|l| l.state() == State::Running)).then_some(a)
        }
    })
    .await
}

fn key(pg: &str, index: i32) -> Option<pb::ActualLrpKey> {
    Some(pb::ActualLrpKey { process_guid: pg.into(), index, domain: "cf-apps".into() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_instances_spread_five_and_five() {
    let sched = Sched::start("spread", 15, false).await;
    let a = SimCell::start("cell-a", &sched.addr, 8192).await;
    let _b = SimCell::start("cell-b", &sched.addr, 8192).await;
    let mut s = sched.client().await;
    s.desire_lrp(desired("app", 10, 256)).await.unwrap();
    let running = all_running(&s, "app", 10).await;
    let on_a = running.iter().filter(|l| l.cell_id == a.id).count();
    assert_eq!(on_a, 5, "{running:?}");
    let by_cell = s.actual_lr_ps_by_cell(pb::ActualLrPsByCellRequest { cell_id: a.id.clone() }).await.unwrap();
    assert_eq!(by_cell.into_inner().actual_lrps.len(), 5);
    let cells = s.cells(pb::CellsRequest {}).await.unwrap().into_inner().cells;
    assert_eq!(cells.len(), 2);
    assert_eq!(
        s.desired_lr_ps(pb::DesiredLrPsRequest { domain: "cf-apps".into() })
            .await
            .unwrap()
            .into_inner()
            .desired_lrps
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_restart_per_diegos_policy() {
    let sched = Sched::start("crash", 15, true).await;
    let cell = SimCell::start("cell-a", &sched.addr, 8192).await;
    let mut s = sched.client().await;
    let mut events = s.subscribe_events(pb::SubscribeEventsRequest {}).await.unwrap().into_inner();
    s.desire_lrp(desired("app", 1, 256)).await.unwrap();
    for n in 1..=2 {
        let lrp = all_running(&s, "app", 1).await.remove(0);
        let crashed = s
            .crash_actual_lrp(pb::CrashActualLrpRequest {
                key: key("app", 0),
                instance_key: Some(cell.ik(&lrp.instance_guid)),
                error_message: "APP/PROC/WEB: Exited with status 1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(crashed.crash_count, n);
        assert_eq!(crashed.state(), State::Unclaimed, "crash {n} restarts immediately");
        // A retried report from the same instance must not count twice.
        let again = s
            .crash_actual_lrp(pb::CrashActualLrpRequest {
                key: key("app", 0),
                instance_key: Some(cell.ik(&lrp.instance_guid)),
                error_message: "again".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
        let restarted = all_running(&s, "app", 1).await.remove(0);
        assert_ne!(restarted.instance_guid, lrp.instance_guid);
        assert_eq!(restarted.crash_count, n);
    }
    let lrp = all_running(&s, "app", 1).await.remove(0);
    let crashed = s
        .crash_actual_lrp(pb::CrashActualLrpRequest {
            key: key("app", 0),
            instance_key: Some(cell.ik(&lrp.instance_guid)),
            error_message: "x".repeat(5000),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((crashed.state(), crashed.crash_count), (State::Crashed, 3));
    assert_eq!(crashed.crash_reason.len(), 1024);
    s.advance_clock(pb::AdvanceClockRequest { seconds: 29 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(actuals(&mut s, "app").await[0].state(), State::Crashed, "the wait for count 3 is 30 s");
    s.advance_clock(pb::AdvanceClockRequest { seconds: 1 }).await.unwrap();
    let restarted = all_running(&s, "app", 1).await.remove(0);
    assert_eq!(restarted.crash_count, 3);
    // The crash was announced.
    let mut saw_crash = false;
    while let Ok(Some(Ok(e))) =
        tokio::time::timeout(Duration::from_millis(200), events.message()).await.map(|r| r.transpose())
    {
        saw_crash |= e.r#type == "actual_lrp_crashed";
    }
    assert!(saw_crash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_down_removes_the_highest_indexes() {
    let sched = Sched::start("scale", 15, false).await;
    let cell = SimCell::start("cell-a", &sched.addr, 8192).await;
    let mut s = sched.client().await;
    s.desire_lrp(desired("app", 5, 128)).await.unwrap();
    all_running(&s, "app", 5).await;
    s.update_desired_lrp(pb::UpdateDesiredLrpRequest {
        process_guid: "app".into(),
        instances: Some(2),
        annotation: Some("v2".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let left = all_running(&s, "app", 2).await;
    let mut idx: Vec<_> = left.iter().map(|l| l.index).collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1]);
    assert_eq!(cell.stopped.lock().unwrap().len(), 3);
    let d = s.get_desired_lrp(pb::DesiredLrpRequest { process_guid: "app".into() }).await.unwrap().into_inner();
    assert_eq!((d.instances, d.annotation.as_str()), (2, "v2"));
    // Scale up again: the missing indexes come back.
    s.update_desired_lrp(pb::UpdateDesiredLrpRequest {
        process_guid: "app".into(),
        instances: Some(3),
        ..Default::default()
    })
    .await
    .unwrap();
    all_running(&s, "app", 3).await;
    s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: "app".into() }).await.unwrap();
    eventually("every instance removed", || {
        let mut s = s.clone();
        async move { actuals(&mut s, "app").await.is_empty().then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_the_right_codes() {
    let sched = Sched::start("codes", 15, false).await;
    let mut s = sched.client().await;
    // No cell: the instance stays UNCLAIMED.
    s.desire_lrp(desired("app", 1, 128)).await.unwrap();
    let err = s
        .crash_actual_lrp(pb::CrashActualLrpRequest {
            key: key("app", 0),
            instance_key: Some(pb::ActualLrpInstanceKey { instance_guid: "i".into(), cell_id: "c".into() }),
            error_message: "boom".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("app/0") && err.message().contains("UNCLAIMED") && err.message().contains("CRASHED"),
        "{}",
        err.message()
    );
    let err = s.get_desired_lrp(pb::DesiredLrpRequest { process_guid: "nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = s
        .claim_actual_lrp(pb::ClaimActualLrpRequest {
            key: key("nope", 0),
            instance_key: Some(pb::ActualLrpInstanceKey { instance_guid: "i".into(), cell_id: "c".into() }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = s
        .claim_actual_lrp(pb::ClaimActualLrpRequest {
            key: key("app", -1),
            instance_key: Some(pb::ActualLrpInstanceKey { instance_guid: "i".into(), cell_id: "c".into() }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = s
        .claim_actual_lrp(pb::ClaimActualLrpRequest {
            key: key("app", 1),
            instance_key: Some(pb::ActualLrpInstanceKey { instance_guid: "i".into(), cell_id: "c".into() }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("out of range"), "{}", err.message());
    let err = s.desire_lrp(desired("", 1, 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = s.desire_lrp(desired("app", 1, 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = s.advance_clock(pb::AdvanceClockRequest { seconds: 1 }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = s.get_task(pb::GetTaskRequest { task_guid: "nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn insufficient_resources_leave_the_instance_unclaimed() {
    let sched = Sched::start("insufficient", 15, false).await;
    let _cell = SimCell::start("cell-a", &sched.addr, 1024).await;
    let mut s = sched.client().await;
    s.desire_lrp(desired("big", 1, 2048)).await.unwrap();
    let lrp = eventually("a placement error", || {
        let mut s = s.clone();
        async move { actuals(&mut s, "big").await.into_iter().find(|l| !l.placement_error.is_empty()) }
    })
    .await;
    assert_eq!(lrp.state(), State::Unclaimed);
    assert_eq!(lrp.placement_error, "insufficient resources: memory");
    let mut stacky = desired("windows", 1, 64);
    stacky.rootfs = "preloaded:windows2019".into();
    s.desire_lrp(stacky).await.unwrap();
    let lrp = eventually("a placement error", || {
        let mut s = s.clone();
        async move { actuals(&mut s, "windows").await.into_iter().find(|l| !l.placement_error.is_empty()) }
    })
    .await;
    assert_eq!(lrp.placement_error, "found no compatible cell");
    // Convergence retries them (and still cannot place them).
    assert!(s.converge(pb::ConvergeRequest {}).await.unwrap().into_inner().changes >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_cell_gets_its_instances_replaced() {
    let sched = Sched::start("presence", 1, false).await;
    let a = SimCell::start("cell-a", &sched.addr, 8192).await;
    let mut s = sched.client().await;
    s.desire_lrp(desired("app", 1, 128)).await.unwrap();
    let first = all_running(&s, "app", 1).await.remove(0);
    assert_eq!(first.cell_id, a.id);
    // A second cell that takes work but does not start it yet.
    let b = SimCell::start("cell-b", &sched.addr, 8192).await;
    b.auto_start.store(false, Ordering::SeqCst);
    a.beating.store(false, Ordering::SeqCst);
    let suspect = eventually("a suspect and its replacement", || {
        let mut s = s.clone();
        let b = b.clone();
        async move {
            let all = actuals(&mut s, "app").await;
            let suspect = all.iter().find(|l| l.presence() == Presence::Suspect).cloned();
            let ord = all.iter().find(|l| l.presence() == Presence::Ordinary).cloned();
            match (suspect, ord) {
                (Some(s), Some(o)) if o.state() == State::Unclaimed && !b.instances.lock().unwrap().is_empty() => {
                    Some(s)
                }
                _ => None,
            }
        }
    })
    .await;
    assert_eq!((suspect.instance_guid.as_str(), suspect.state()), (first.instance_guid.as_str(), State::Running));
    // The cell comes back before the replacement runs: the suspect is promoted
    // and the replacement stopped.
    a.beating.store(true, Ordering::SeqCst);
    eventually("the suspect promoted", || {
        let mut s = s.clone();
        let guid = first.instance_guid.clone();
        async move {
            let all = actuals(&mut s, "app").await;
            (all.len() == 1 && all[0].presence() == Presence::Ordinary && all[0].instance_guid == guid).then_some(())
        }
    })
    .await;
    eventually("the replacement stopped", || async { (!b.stopped.lock().unwrap().is_empty()).then_some(()) }).await;
    // Silent again, and this time the replacement runs: the suspect goes.
    b.auto_start.store(true, Ordering::SeqCst);
    a.beating.store(false, Ordering::SeqCst);
    eventually("the replacement running on cell-b", || {
        let mut s = s.clone();
        async move {
            let all = actuals(&mut s, "app").await;
            (all.len() == 1 && all[0].state() == State::Running && all[0].cell_id == "cell-b").then_some(())
        }
    })
    .await;
    let cells = s.cells(pb::CellsRequest {}).await.unwrap().into_inner().cells;
    assert_eq!(cells.iter().map(|c| c.cell_id.as_str()).collect::<Vec<_>>(), vec!["cell-b"]);
}

fn task(guid: &str) -> pb::Task {
    pb::Task {
        task_guid: guid.into(),
        domain: "cf-tasks".into(),
        rootfs: "preloaded:cflinuxfs4".into(),
        command: "true".into(),
        memory_mb: 128,
        disk_mb: 128,
        ..Default::default()
    }
}

async fn task_state(s: &SchedulerClient<Channel>, guid: &str, state: pb::task::State) -> pb::Task {
    eventually(&format!("task {guid} {}", state.as_str_name()), || {
        let mut s = s.clone();
        let guid = guid.to_string();
        async move {
            let t = s.get_task(pb::GetTaskRequest { task_guid: guid }).await.ok()?.into_inner();
            (t.state() == state).then_some(t)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_complete_cancel_and_fail_after_three_rejections() {
    use pb::task::State as T;
    let sched = Sched::start("tasks", 15, false).await;
    let cell = SimCell::start("cell-a", &sched.addr, 8192).await;
    let mut s = sched.client().await;

    s.desire_task(task("ok")).await.unwrap();
    let t = task_state(&s, "ok", T::Running).await;
    assert_eq!(t.cell_id, cell.id);
    // Idempotent for the same cell, refused for another.
    let again = s.start_task(pb::StartTaskRequest { task_guid: "ok".into(), cell_id: cell.id.clone() }).await.unwrap();
    assert!(again.into_inner().should_start);
    let other = s.start_task(pb::StartTaskRequest { task_guid: "ok".into(), cell_id: "other".into() }).await.unwrap();
    assert!(!other.into_inner().should_start);
    let done = s
        .complete_task(pb::CompleteTaskRequest {
            task_guid: "ok".into(),
            cell_id: cell.id.clone(),
            failed: false,
            failure_reason: String::new(),
            result: "42".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.state(), done.result.as_str()), (T::Completed, "42"));
    let listed = s.tasks(pb::TasksRequest { domain: "cf-tasks".into(), cell_id: String::new() }).await.unwrap();
    assert_eq!(listed.into_inner().tasks.len(), 1);
    s.resolve_task(pb::ResolveTaskRequest { task_guid: "ok".into() }).await.unwrap();
    assert_eq!(s.get_task(pb::GetTaskRequest { task_guid: "ok".into() }).await.unwrap_err().code(), Code::NotFound);

    s.desire_task(task("cancel-me")).await.unwrap();
    task_state(&s, "cancel-me", T::Running).await;
    let c = s.cancel_task(pb::CancelTaskRequest { task_guid: "cancel-me".into() }).await.unwrap().into_inner();
    assert_eq!((c.state(), c.failed, c.failure_reason.as_str()), (T::Completed, true, "task was cancelled"));
    eventually("the cell told to cancel", || async {
        cell.cancelled.lock().unwrap().contains(&"cancel-me".to_string()).then_some(())
    })
    .await;

    s.desire_task(task("picky")).await.unwrap();
    for n in 1..=3 {
        task_state(&s, "picky", T::Running).await;
        let t = s
            .reject_task(pb::RejectTaskRequest {
                task_guid: "picky".into(),
                cell_id: cell.id.clone(),
                rejection_reason: "not enough ports".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.rejection_count, n);
        if n < 3 {
            assert_eq!(t.state(), T::Pending);
        } else {
            assert_eq!((t.state(), t.failed, t.failure_reason.as_str()), (T::Completed, true, "not enough ports"));
        }
    }
    let by_cell = s.tasks_by_cell(pb::TasksByCellRequest { cell_id: cell.id.clone() }).await.unwrap();
    assert_eq!(by_cell.into_inner().tasks.len(), 1, "the cancelled task stays on its cell until resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evacuation_keeps_the_container_until_the_replacement_runs() {
    let sched = Sched::start("evacuate", 15, false).await;
    let a = SimCell::start("cell-a", &sched.addr, 8192).await;
    let mut s = sched.client().await;
    s.desire_lrp(desired("app", 1, 128)).await.unwrap();
    let lrp = all_running(&s, "app", 1).await.remove(0);
    let b = SimCell::start("cell-b", &sched.addr, 8192).await;
    b.auto_start.store(false, Ordering::SeqCst);
    let req = pb::EvacuateRunningActualLrpRequest {
        key: key("app", 0),
        instance_key: Some(a.ik(&lrp.instance_guid)),
        net_info: Some(pb::ActualLrpNetInfo { address: "127.0.0.1".into(), ..Default::default() }),
    };
    assert!(s.evacuate_running_actual_lrp(req.clone()).await.unwrap().into_inner().keep_container);
    let (pg, index, guid) = eventually("the replacement placed on cell-b", || async {
        let i = b.instances.lock().unwrap();
        i.iter().next().map(|(g, (pg, idx))| (pg.clone(), *idx, g.clone()))
    })
    .await;
    assert!(s.evacuate_running_actual_lrp(req.clone()).await.unwrap().into_inner().keep_container);
    b.claim_and_start(&pg, index, &guid).await.unwrap();
    assert!(!s.evacuate_running_actual_lrp(req).await.unwrap().into_inner().keep_container);
    let all = actuals(&mut s, "app").await;
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].cell_id.as_str(), all[0].presence()), ("cell-b", Presence::Ordinary));
}

/// 127.0.0.1 and a port nothing listens on.
fn free_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

/// The real `celld scheduler` on `addr`, its database in `dir`.
fn spawn_scheduler(dir: &std::path::Path, addr: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_celld"))
        .args(["--log-level", "warn", "--depot"])
        .arg(dir)
        .args(["scheduler", "--listen", addr, "--metrics-listen", "off", "--db"])
        .arg(dir.join("scheduler.db"))
        .spawn()
        .unwrap()
}

/// The real binary, killed and restarted: every record survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_scheduler_keeps_every_record() {
    let dir = temp_dir("restart");
    let addr = free_address();
    let spawn = || spawn_scheduler(&dir, &addr);
    let mut child = spawn();
    let mut s = client(&addr).await;
    let cell = SimCell::start("cell-a", &addr, 8192).await;
    s.desire_lrp(desired("app", 3, 128)).await.unwrap();
    s.desire_lrp(desired("nowhere", 1, 1 << 20)).await.unwrap();
    all_running(&s, "app", 3).await;
    s.desire_task(task("t1")).await.unwrap();
    task_state(&s, "t1", pb::task::State::Running).await;
    eventually("a placement error", || {
        let mut s = s.clone();
        async move { actuals(&mut s, "nowhere").await.into_iter().find(|l| !l.placement_error.is_empty()) }
    })
    .await;
    let snapshot = |mut s: SchedulerClient<Channel>| async move {
        let d = s.desired_lr_ps(pb::DesiredLrPsRequest::default()).await.unwrap().into_inner().desired_lrps;
        let a = s.actual_lr_ps(pb::ActualLrPsRequest::default()).await.unwrap().into_inner().actual_lrps;
        let t = s.tasks(pb::TasksRequest::default()).await.unwrap().into_inner().tasks;
        (d, a, t)
    };
    let before = snapshot(s.clone()).await;
    cell.beating.store(false, Ordering::SeqCst);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn();
    let s2 = client(&addr).await;
    let after = snapshot(s2).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(before.0, after.0);
    assert_eq!(before.1, after.1);
    assert_eq!(before.2, after.2);
    assert_eq!(after.1.len(), 4);
}

/// The instance guids `cell` was given for `pg`/`index`.
fn given(cell: &SimCell, pg: &str, index: i32) -> Vec<String> {
    let i = cell.instances.lock().unwrap();
    i.iter().filter(|(_, (p, x))| p == pg && *x == index).map(|(g, _)| g.clone()).collect()
}

async fn claim(cell: &SimCell, pg: &str, index: i32, guid: &str) -> Result<(), Status> {
    let mut s = cell.sched.clone();
    s.claim_actual_lrp(pb::ClaimActualLrpRequest { key: key(pg, index), instance_key: Some(cell.ik(guid)) }).await?;
    Ok(())
}

/// Work a cell accepted shows in its next heartbeat: the auction must not
/// count it a second time as a placement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_work_is_counted_once() {
    let sched = Sched::start("counted-once", 15, false).await;
    let cell = SimCell::start_with("cell-a", &sched.addr, 8192, 4).await;
    cell.auto_start.store(false, Ordering::SeqCst);
    let mut s = sched.client().await;
    s.desire_lrp(desired("first", 2, 128)).await.unwrap();
    eventually("2 instances accepted", || async { (cell.instances.lock().unwrap().len() == 2).then_some(()) }).await;
    // Heartbeats (every 200 ms) now say 2 of 4 containers are in use.
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.desire_lrp(desired("second", 2, 128)).await.unwrap();
    eventually("4 instances accepted", || async { (cell.instances.lock().unwrap().len() == 4).then_some(()) }).await;
    assert!(actuals(&mut s, "second").await.iter().all(|l| l.placement_error.is_empty()));
    // Now the cell is full, whatever its heartbeat says yet.
    s.desire_lrp(desired("third", 1, 128)).await.unwrap();
    let lrp = eventually("a placement error", || {
        let mut s = s.clone();
        async move { actuals(&mut s, "third").await.into_iter().find(|l| !l.placement_error.is_empty()) }
    })
    .await;
    assert_eq!(lrp.placement_error, "insufficient resources: containers");
}

/// A cell that claims nothing for 30 s (test clock) loses its placement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unclaimed_placement_is_auctioned_again_after_30_s() {
    let sched = Sched::start("stale-placement", 15, true).await;
    let cell = SimCell::start("cell-a", &sched.addr, 8192).await;
    cell.auto_start.store(false, Ordering::SeqCst);
    let mut s = sched.client().await;
    s.desire_lrp(desired("app", 1, 128)).await.unwrap();
    let first = eventually("the placement", || async { given(&cell, "app", 0).pop() }).await;
    s.advance_clock(pb::AdvanceClockRequest { seconds: 29 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(given(&cell, "app", 0), vec![first.clone()], "kept for 29 s");
    s.advance_clock(pb::AdvanceClockRequest { seconds: 1 }).await.unwrap();
    let second =
        eventually("a new placement", || async { given(&cell, "app", 0).into_iter().find(|g| *g != first) }).await;
    let refused = claim(&cell, "app", 0, &first).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    cell.claim_and_start("app", 0, &second).await.unwrap();
    all_running(&s, "app", 1).await;
}

/// A cell still claiming other work keeps its unclaimed placement past 30 s
/// (its claims may be queued); once it claims nothing for 30 s, it loses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cell_making_progress_keeps_its_placements() {
    let sched = Sched::start("busy-cell", 15, true).await;
    let cell = SimCell::start("cell-a", &sched.addr, 8192).await;
    cell.auto_start.store(false, Ordering::SeqCst);
    let mut s = sched.client().await;
    s.desire_lrp(desired("slow", 1, 128)).await.unwrap();
    s.desire_lrp(desired("other", 3, 128)).await.unwrap();
    eventually("4 placements", || async { (cell.instances.lock().unwrap().len() == 4).then_some(()) }).await;
    let slow = given(&cell, "slow", 0).remove(0);
    let other: Vec<String> = (0..3).map(|i| given(&cell, "other", i).remove(0)).collect();
    let mut clock = 0;
    for (advance, claimed) in [(20, Some(0)), (15, Some(1)), (25, None)] {
        s.advance_clock(pb::AdvanceClockRequest { seconds: advance }).await.unwrap();
        clock += advance;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(given(&cell, "slow", 0), vec![slow.clone()], "placement kept at {clock} s");
        if let Some(i) = claimed {
            claim(&cell, "other", i, &other[i as usize]).await.unwrap();
        }
    }
    // 90 s after the placement, 55 s after the cell's last claim.
    s.advance_clock(pb::AdvanceClockRequest { seconds: 30 }).await.unwrap();
    eventually("slow/0 placed again", || async { given(&cell, "slow", 0).into_iter().find(|g| *g != slow) }).await;
    eventually("other/2 placed again", || async { given(&cell, "other", 2).into_iter().find(|g| *g != other[2]) })
        .await;
    let refused = claim(&cell, "slow", 0, &slow).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
}

/// Group commit must not trade durability: the real binary, SIGKILLed while
/// cells claim and start hundreds of instances concurrently, restarts on the
/// same database with every claim and start it acknowledged (a scheduler
/// that answered before its transaction committed loses some here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduler_killed_mid_population_keeps_every_acknowledged_claim_and_start() {
    const INSTANCES: i32 = 1500;
    const CLIENTS: usize = 48;
    let dir = temp_dir("sigkill");
    let addr = free_address();
    let spawn = || spawn_scheduler(&dir, &addr);
    let mut child = spawn();
    let s = client(&addr).await;
    let cell = SimCell::start_with("cell-a", &addr, 1 << 20, 4000).await;
    cell.auto_start.store(false, Ordering::SeqCst);
    let d = pb::DesiredLrp { memory_mb: 16, disk_mb: 16, ..desired("app", INSTANCES, 16) };
    s.clone().desire_lrp(d).await.unwrap();
    let work: Vec<(String, i32)> = eventually("every instance placed on the cell", || {
        let cell = cell.clone();
        async move {
            let i = cell.instances.lock().unwrap();
            (i.len() == INSTANCES as usize).then(|| i.iter().map(|(g, (_, x))| (g.clone(), *x)).collect())
        }
    })
    .await;

    // What the scheduler answered OK to: index → (instance guid, started).
    let acked: Arc<Mutex<HashMap<i32, (String, bool)>>> = Arc::default();
    let queue = Arc::new(Mutex::new(work));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (cell, queue, acked) = (cell.clone(), queue.clone(), acked.clone());
        let mut sched = client(&addr).await;
        workers.spawn(async move {
            loop {
                let Some((guid, index)) = queue.lock().unwrap().pop() else { return };
                let r = sched
                    .claim_actual_lrp(pb::ClaimActualLrpRequest {
                        key: key("app", index),
                        instance_key: Some(cell.ik(&guid)),
                    })
                    .await;
                if r.is_err() {
                    return;
                }
                acked.lock().unwrap().insert(index, (guid.clone(), false));
                let r = sched
                    .start_actual_lrp(pb::StartActualLrpRequest {
                        key: key("app", index),
                        instance_key: Some(cell.ik(&guid)),
                        net_info: Some(pb::ActualLrpNetInfo { address: "127.0.0.1".into(), ..Default::default() }),
                        routable: true,
                    })
                    .await;
                if r.is_err() {
                    return;
                }
                acked.lock().unwrap().insert(index, (guid, true));
            }
        });
    }
    // Killed while claims and starts are in flight.
    eventually("a third of the instances started", || {
        let acked = acked.clone();
        async move { (acked.lock().unwrap().values().filter(|(_, s)| *s).count() >= INSTANCES as usize / 3).then_some(()) }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    while workers.join_next().await.is_some() {}
    cell.beating.store(false, Ordering::SeqCst);
    let acked = acked.lock().unwrap().clone();
    let started = acked.values().filter(|(_, s)| *s).count();
    assert!(started < INSTANCES as usize, "the kill came after population ended: nothing was in flight");

    let mut child = spawn();
    let mut s2 = client(&addr).await;
    let after = actuals(&mut s2, "app").await;
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let by_index: HashMap<i32, &pb::ActualLrp> =
        after.iter().filter(|l| l.presence() == Presence::Ordinary).map(|l| (l.index, l)).collect();
    let mut lost = Vec::new();
    for (index, (guid, was_started)) in &acked {
        let kept = by_index.get(index).is_some_and(|l| {
            l.instance_guid == *guid
                && if *was_started {
                    l.state() == State::Running
                } else {
                    matches!(l.state(), State::Claimed | State::Running)
                }
        });
        if !kept {
            lost.push((*index, *was_started, by_index.get(index).map(|l| l.state().as_str_name())));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost ({started} starts acknowledged): {lost:?}",
        lost.len(),
        acked.len()
    );
}
