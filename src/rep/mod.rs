//! The rep: the cell's side of the control plane. It delivers the
//! executor's reports in order (retrying while the control plane is away),
//! heartbeats the cell's presence, reconciles containers with the control
//! plane's records every 30 s, and evacuates on SIGTERM. What it talks to is a
//! [`ControlPlane`]: celld's own scheduler ([`scheduler::SchedulerPlane`],
//! gRPC) or Diego's BBS (`crate::diego`). The `Cell` gRPC service it serves is
//! in [`service`].

pub mod scheduler;
pub mod service;
pub mod vitals;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::executor::{Executor, LrpPhase, Reporter, StopReason};
use celld_proto as pb;

#[derive(Debug, thiserror::Error)]
pub enum RepError {
    #[error("scheduler address {addr:?}: {why}")]
    BadAddress { addr: String, why: String },
}

/// How a control plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// Away, slow or overloaded: the call is retried.
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    /// It answered no.
    #[error("{0}")]
    Refused(String),
}

/// What the rep needs of a control plane, in celld's own record types (a
/// Diego control plane converts to and from BBS's).
#[async_trait::async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Delivers one report of the executor.
    async fn send(&self, report: &Report) -> Result<(), PlaneError>;
    /// Tells the control plane the cell is here (a no-op where presence is
    /// kept some other way, as Diego's is in Locket).
    async fn heartbeat(&self, presence: pb::CellPresence) -> Result<(), PlaneError>;
    /// The control plane's records of this cell's instances…
    async fn actual_lrps(&self, cell_id: &str) -> Result<Vec<pb::ActualLrp>, PlaneError>;
    /// …and of its tasks.
    async fn tasks(&self, cell_id: &str) -> Result<Vec<pb::Task>, PlaneError>;
    /// Whether the task may run here (it is started in the records).
    async fn start_task(&self, task_guid: &str, cell_id: &str) -> Result<bool, PlaneError>;
    /// Hands a running instance over during evacuation: whether to keep the
    /// container until its replacement runs.
    async fn evacuate_running(
        &self,
        key: pb::ActualLrpKey,
        instance: pb::ActualLrpInstanceKey,
        net: pb::ActualLrpNetInfo,
    ) -> Result<bool, PlaneError>;
    /// Gives back an instance that is not running yet during evacuation.
    /// `false`: this control plane has no such call, the instance is stopped
    /// (and its removal reported) instead.
    async fn evacuate_claimed(
        &self,
        key: pb::ActualLrpKey,
        instance: pb::ActualLrpInstanceKey,
    ) -> Result<bool, PlaneError>;
    /// Drops the evacuating copy of an instance whose container is going.
    async fn remove_evacuating(
        &self,
        key: pb::ActualLrpKey,
        instance: pb::ActualLrpInstanceKey,
    ) -> Result<(), PlaneError>;
}

#[derive(Debug, Clone)]
pub struct RepConfig {
    pub cell_id: String,
    /// Where the scheduler reaches this cell's gRPC service.
    pub advertise_address: String,
    pub heartbeat_interval: Duration,
    pub reconcile_interval: Duration,
    pub evacuation_timeout: Duration,
}

/// One report of the executor, in the order it happened.
#[derive(Debug, Clone)]
pub enum Report {
    Claim(pb::ClaimActualLrpRequest),
    Start(pb::StartActualLrpRequest),
    Crash(pb::CrashActualLrpRequest),
    Remove(pb::RemoveActualLrpRequest),
    CompleteTask(pb::CompleteTaskRequest),
}

impl Report {
    /// The container the report is about.
    fn guid(&self) -> &str {
        fn ik(k: &Option<pb::ActualLrpInstanceKey>) -> &str {
            k.as_ref().map_or("", |k| k.instance_guid.as_str())
        }
        match self {
            Report::Claim(r) => ik(&r.instance_key),
            Report::Start(r) => ik(&r.instance_key),
            Report::Crash(r) => ik(&r.instance_key),
            Report::Remove(r) => ik(&r.instance_key),
            Report::CompleteTask(r) => &r.task_guid,
        }
    }
}

pub struct Rep {
    cfg: RepConfig,
    plane: Arc<dyn ControlPlane>,
    queue: Mutex<VecDeque<Report>>,
    /// Reports not yet delivered, by container: the reconcile leaves those alone.
    pending: Mutex<HashMap<String, usize>>,
    wake: tokio::sync::Notify,
    executor: OnceLock<Arc<Executor>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Rep {
    pub fn new(plane: Arc<dyn ControlPlane>, cfg: RepConfig) -> Result<Arc<Self>, RepError> {
        Ok(Arc::new(Self {
            cfg,
            plane,
            queue: Mutex::new(VecDeque::new()),
            pending: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            executor: OnceLock::new(),
        }))
    }

    /// Starts delivering reports, heartbeating and reconciling for `executor`.
    pub fn start(self: &Arc<Self>, executor: Arc<Executor>) {
        let _ = self.executor.set(executor);
        tokio::spawn(self.clone().deliver_forever());
        tokio::spawn(self.clone().heartbeat_forever());
        tokio::spawn(self.clone().reconcile_forever());
    }

    fn executor(&self) -> Option<&Arc<Executor>> {
        self.executor.get()
    }

    fn push(&self, r: Report) {
        *lock(&self.pending).entry(r.guid().to_string()).or_default() += 1;
        lock(&self.queue).push_back(r);
        self.wake.notify_one();
    }

    fn has_pending(&self, guid: &str) -> bool {
        lock(&self.pending).get(guid).is_some_and(|n| *n > 0)
    }

    /// One report in flight at a time, in the order they happened; a report
    /// the control plane could not take (it is away) is retried until it can.
    async fn deliver_forever(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let next = lock(&self.queue).front().cloned();
            let Some(report) = next else {
                self.wake.notified().await;
                continue;
            };
            match self.plane.send(&report).await {
                Err(PlaneError::Unreachable(e)) => {
                    tracing::debug!(error = %e, "control plane unreachable; will retry the report");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(PlaneError::Refused(e)) => {
                    tracing::warn!(guid = %report.guid(), error = %e, "the control plane refused a report");
                    // Diego's rep: an instance the control plane won't let
                    // be claimed or run here is destroyed.
                    if let (Report::Claim(_) | Report::Start(_), Some(ex)) = (&report, self.executor()) {
                        let _ = ex.stop_lrp(report.guid(), StopReason::Discard);
                    }
                }
                Ok(()) => {}
            }
            backoff = Duration::from_millis(100);
            lock(&self.queue).pop_front();
            let mut p = lock(&self.pending);
            if let Some(n) = p.get_mut(report.guid()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    p.remove(report.guid());
                }
            }
        }
    }

    async fn heartbeat_forever(self: Arc<Self>) {
        let mut warned = false;
        loop {
            if let Some(ex) = self.executor() {
                let presence = ex.presence(&self.cfg.advertise_address);
                match self.plane.heartbeat(presence).await {
                    Ok(_) if warned => {
                        tracing::info!("the control plane is reachable again");
                        warned = false;
                    }
                    Ok(_) => {}
                    Err(e) if !warned => {
                        tracing::warn!(error = %e, "heartbeat failed; instances keep running");
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(self.cfg.heartbeat_interval).await;
        }
    }

    async fn reconcile_forever(self: Arc<Self>) {
        loop {
            let interval = match self.executor() {
                Some(ex) if ex.is_evacuating() => Duration::from_secs(10).min(self.cfg.reconcile_interval),
                _ => self.cfg.reconcile_interval,
            };
            tokio::time::sleep(interval).await;
            if let Err(e) = self.reconcile().await {
                tracing::debug!(error = %e, "bulk reconcile skipped");
            }
        }
    }

    /// Diego's bulker: compares this cell's containers with the scheduler's
    /// records. Containers nobody wants are destroyed; records without a
    /// container are removed (tasks: failed). Anything with a report still in
    /// flight, or taken after the scheduler answered, is left alone.
    pub async fn reconcile(&self) -> Result<(), PlaneError> {
        let Some(ex) = self.executor() else { return Ok(()) };
        let asked = Instant::now();
        let cell_id = self.cfg.cell_id.clone();
        let actuals = self.plane.actual_lrps(&cell_id).await?;
        let tasks = self.plane.tasks(&cell_id).await?;
        let wanted: HashMap<&str, &pb::ActualLrp> =
            actuals.iter().filter(|a| a.cell_id == cell_id).map(|a| (a.instance_guid.as_str(), a)).collect();
        let local = ex.instances();
        let here: HashSet<&str> = local.iter().map(|i| i.instance.instance_guid.as_str()).collect();
        for i in &local {
            let guid = i.instance.instance_guid.as_str();
            if i.since > asked || self.has_pending(guid) || i.phase == LrpPhase::Completed {
                continue;
            }
            match wanted.get(guid) {
                None => {
                    tracing::info!(instance_guid = %guid, "the scheduler has no record of this instance; destroying it");
                    let _ = ex.stop_lrp(guid, StopReason::Discard);
                }
                // A start the scheduler missed (e.g. lost with a restart).
                Some(a) if i.phase == LrpPhase::Running && a.state == pb::actual_lrp::State::Claimed as i32 => {
                    if let Some(net) = &i.net {
                        self.start(i.key.clone(), i.instance.clone(), net.clone(), i.routable);
                    }
                }
                Some(_) => {}
            }
        }
        for a in &actuals {
            let mine = a.cell_id == cell_id && a.presence == pb::actual_lrp::Presence::Ordinary as i32;
            let active =
                a.state == pb::actual_lrp::State::Claimed as i32 || a.state == pb::actual_lrp::State::Running as i32;
            if mine && active && !here.contains(a.instance_guid.as_str()) && !self.has_pending(&a.instance_guid) {
                tracing::info!(instance_guid = %a.instance_guid, "instance has no container here; removing it");
                self.remove(
                    pb::ActualLrpKey { process_guid: a.process_guid.clone(), index: a.index, domain: a.domain.clone() },
                    pb::ActualLrpInstanceKey { instance_guid: a.instance_guid.clone(), cell_id: cell_id.clone() },
                );
            }
        }
        let local_tasks: HashMap<String, bool> = ex.tasks().into_iter().collect();
        let wanted_tasks: HashSet<&str> = tasks.iter().map(|t| t.task_guid.as_str()).collect();
        for t in &tasks {
            if t.state == pb::task::State::Running as i32
                && t.cell_id == cell_id
                && !local_tasks.contains_key(&t.task_guid)
                && !self.has_pending(&t.task_guid)
            {
                self.complete_task(&t.task_guid, true, "task container does not exist".into(), String::new());
            }
        }
        for (guid, running) in local_tasks {
            if running && !wanted_tasks.contains(guid.as_str()) && !self.has_pending(&guid) {
                tracing::info!(task_guid = %guid, "the scheduler has no record of this task; destroying it");
                ex.discard_task(&guid);
            }
        }
        Ok(())
    }

    /// SIGTERM: Diego's evacuation. The cell takes no new work; each running
    /// instance is handed over (the scheduler starts a replacement elsewhere)
    /// and kept until the replacement runs or the timeout passes; instances
    /// not yet running are given back at once. Returns when nothing is left.
    pub async fn evacuate(&self) {
        let Some(ex) = self.executor() else { return };
        ex.set_evacuating();
        tracing::info!(timeout_s = self.cfg.evacuation_timeout.as_secs(), "evacuating");
        let _ = self.plane.heartbeat(ex.presence(&self.cfg.advertise_address)).await;
        let deadline = Instant::now() + self.cfg.evacuation_timeout;
        let mut given_back: HashSet<String> = HashSet::new();
        loop {
            let local = ex.instances();
            let running_tasks = ex.tasks().len();
            if local.is_empty() && running_tasks == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(instances = local.len(), tasks = running_tasks, "evacuation timed out");
                for i in &local {
                    let _ = self.plane.remove_evacuating(i.key.clone(), i.instance.clone()).await;
                    let _ = ex.stop_lrp(&i.instance.instance_guid, StopReason::Discard);
                }
                break;
            }
            for i in &local {
                let guid = &i.instance.instance_guid;
                match (i.phase, &i.net) {
                    (LrpPhase::Running, Some(net)) => {
                        match self.plane.evacuate_running(i.key.clone(), i.instance.clone(), net.clone()).await {
                            Ok(false) => {
                                tracing::info!(instance_guid = %guid, "replacement running elsewhere; destroying");
                                let _ = ex.stop_lrp(guid, StopReason::Discard);
                            }
                            Ok(true) => ex.mark_evacuating(guid),
                            Err(e) => tracing::debug!(error = %e, "evacuation report failed; retrying"),
                        }
                    }
                    (LrpPhase::Reserved | LrpPhase::Created, _) if given_back.insert(guid.clone()) => {
                        match self.plane.evacuate_claimed(i.key.clone(), i.instance.clone()).await {
                            Ok(true) => {
                                let _ = ex.stop_lrp(guid, StopReason::Discard);
                            }
                            Ok(false) | Err(_) => {
                                let _ = ex.stop_lrp(guid, StopReason::Stop);
                            }
                        }
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Let the last reports go out.
        let until = Instant::now() + Duration::from_secs(5);
        while !lock(&self.queue).is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!("evacuation finished");
    }
}

#[async_trait::async_trait]
impl Reporter for Rep {
    fn claim(&self, key: pb::ActualLrpKey, instance: pb::ActualLrpInstanceKey) {
        self.push(Report::Claim(pb::ClaimActualLrpRequest { key: Some(key), instance_key: Some(instance) }));
    }

    fn start(
        &self,
        key: pb::ActualLrpKey,
        instance: pb::ActualLrpInstanceKey,
        net: pb::ActualLrpNetInfo,
        routable: bool,
    ) {
        self.push(Report::Start(pb::StartActualLrpRequest {
            key: Some(key),
            instance_key: Some(instance),
            net_info: Some(net),
            routable,
        }));
    }

    fn crash(&self, key: pb::ActualLrpKey, instance: pb::ActualLrpInstanceKey, reason: String) {
        self.push(Report::Crash(pb::CrashActualLrpRequest {
            key: Some(key),
            instance_key: Some(instance),
            error_message: reason,
        }));
    }

    fn remove(&self, key: pb::ActualLrpKey, instance: pb::ActualLrpInstanceKey) {
        self.push(Report::Remove(pb::RemoveActualLrpRequest { key: Some(key), instance_key: Some(instance) }));
    }

    async fn start_task(&self, task_guid: &str) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.plane.start_task(task_guid, &self.cfg.cell_id).await {
                Ok(should_start) => return should_start,
                Err(PlaneError::Unreachable(_)) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(PlaneError::Refused(e)) => {
                    tracing::warn!(task_guid = %task_guid, error = %e, "the control plane refused to start the task");
                    return false;
                }
            }
        }
    }

    fn complete_task(&self, task_guid: &str, failed: bool, reason: String, result: String) {
        self.push(Report::CompleteTask(pb::CompleteTaskRequest {
            task_guid: task_guid.to_string(),
            cell_id: self.cfg.cell_id.clone(),
            failed,
            failure_reason: reason,
            result,
        }));
    }
}
