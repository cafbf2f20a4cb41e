//! The executor: app instances (LRPs) and tasks in containers, their
//! environment, health checks, logs and metrics. It owns the cell's table of
//! instances and tasks; what it learns it tells a [`Reporter`] (the rep, which
//! talks to the scheduler), so this module never speaks gRPC itself.
//!
//! An instance's record (its LRPStart) is kept in `DEPOT/executor/lrps`, a
//! task's in `DEPOT/executor/tasks`; with the container (handle = instance or
//! task guid) and its process id (a container property) that is all a
//! restarted cell needs to pick an instance up again.

pub mod actions;
pub mod container;
pub mod env;
pub mod health;
pub mod logs;
pub(crate) mod lrp;
pub mod metrics;
mod task;
mod tree;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::watch;

use celld_blobstore::{Blobstore, BlobstoreError};
use celld_garden::gardener::GardenError;
use celld_garden::gardener::Gardener;
use celld_proto as pb;
use logs::{LogHub, RateLimiter};

/// The container property that names what a container is for.
pub const ROLE_PROPERTY: &str = "celld.role";
/// The container property holding the id of the instance's or task's process.
pub const PROCESS_PROPERTY: &str = "executor:process-id";

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Garden(#[from] GardenError),
    #[error("{0}")]
    Blobstore(#[from] BlobstoreError),
    #[error("{0}")]
    Internal(String),
}

type Key = pb::ActualLrpKey;
type InstanceKey = pb::ActualLrpInstanceKey;

/// What the executor tells the scheduler, through the rep. The calls queue
/// (in order) and return at once, except `start_task`, which needs an answer.
#[async_trait::async_trait]
pub trait Reporter: Send + Sync {
    fn claim(&self, key: Key, instance: InstanceKey);
    fn start(&self, key: Key, instance: InstanceKey, net: pb::ActualLrpNetInfo, routable: bool);
    fn crash(&self, key: Key, instance: InstanceKey, reason: String);
    fn remove(&self, key: Key, instance: InstanceKey);
    /// Whether the task should run here (false: cancelled or placed elsewhere).
    async fn start_task(&self, task_guid: &str) -> bool;
    fn complete_task(&self, task_guid: &str, failed: bool, reason: String, result: String);
}

/// For a cell without a scheduler: everything is accepted, nothing reported.
pub struct NoReporter;

#[async_trait::async_trait]
impl Reporter for NoReporter {
    fn claim(&self, _: Key, _: InstanceKey) {}
    fn start(&self, _: Key, _: InstanceKey, _: pb::ActualLrpNetInfo, _: bool) {}
    fn crash(&self, _: Key, _: InstanceKey, _: String) {}
    fn remove(&self, _: Key, _: InstanceKey) {}
    async fn start_task(&self, _: &str) -> bool {
        true
    }
    fn complete_task(&self, _: &str, _: bool, _: String, _: String) {}
}

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub cell_id: String,
    pub zone: String,
    /// DEPOT/executor: records and the droplet cache.
    pub work_dir: PathBuf,
    /// What containers mount at /tmp/lifecycle (launcher, builder).
    pub lifecycle_dir: PathBuf,
    pub rootfs_dir: PathBuf,
    pub default_rootfs: String,
    pub placement_tags: Vec<String>,
    pub total: pb::Resources,
    /// Log lines per second per instance; 0 = unlimited.
    pub log_rate_limit: u32,
    /// Where crashes, health checks and capacity are counted.
    pub metrics: metrics::ExecutorMetrics,
}

/// Why an instance or task is being ended by the cell (not by itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Stopped on purpose (scale down, StopLRPInstance): reported removed.
    Stop,
    /// Nobody wants it any more (bulk reconcile, evacuation done): destroyed
    /// without a report.
    Discard,
    /// A task cancelled by the scheduler.
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrpPhase {
    /// Accepted by Perform; its container is being made.
    Reserved,
    /// Its process runs; not healthy yet.
    Created,
    Running,
    /// Its process ended or it is being stopped.
    Completed,
}

/// What the rep sees of one instance.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub key: Key,
    pub instance: InstanceKey,
    pub phase: LrpPhase,
    pub net: Option<pb::ActualLrpNetInfo>,
    pub routable: bool,
    /// When the cell took it (Perform or restore).
    pub since: Instant,
    pub evacuating: bool,
}

struct LrpEntry {
    start: pb::LrpStart,
    phase: LrpPhase,
    routable: bool,
    net: Option<pb::ActualLrpNetInfo>,
    evacuating: bool,
    stop: watch::Sender<Option<StopReason>>,
    since: Instant,
    limiter: Option<Arc<RateLimiter>>,
    /// Its action tree, when it runs one.
    tree: Option<tree::TreeStop>,
}

struct TaskEntry {
    task: pb::Task,
    running: bool,
    completed: Option<(bool, String)>,
    stop: watch::Sender<Option<StopReason>>,
    /// Its action tree, when it runs one.
    tree: Option<tree::TreeStop>,
}

#[derive(Default)]
struct Table {
    lrps: HashMap<String, LrpEntry>,
    tasks: HashMap<String, TaskEntry>,
    /// CPU samples per container, for CPU percentages.
    cpu: HashMap<String, CpuSamples>,
}

/// A container's CPU usage samples. Several readers (the metrics refresh, the
/// dashboard's sampler, `cf app`, Diego's ContainerMetrics) read at their own
/// pace; a percentage is always taken over at least [`CPU_WINDOW`], so one
/// reader's read just before another's does not make the other's a 0.1 s
/// sample.
struct CpuSamples {
    /// The sample before `last`, at least CPU_WINDOW older than it.
    prev: Option<(Instant, u64)>,
    last: (Instant, u64),
}

const CPU_WINDOW: Duration = Duration::from_secs(2);

impl CpuSamples {
    /// The CPU % since a sample at least CPU_WINDOW old (or the oldest there
    /// is), recording `now` as a new sample when the window allows.
    fn percent(&mut self, now: Instant, usage_ns: u64) -> Option<f64> {
        let base = if now.duration_since(self.last.0) >= CPU_WINDOW {
            let base = self.last;
            self.prev = Some(self.last);
            self.last = (now, usage_ns);
            base
        } else {
            self.prev.unwrap_or(self.last)
        };
        let wall = now.duration_since(base.0).as_nanos() as f64;
        (wall > 0.0).then(|| usage_ns.saturating_sub(base.1) as f64 * 100.0 / wall)
    }
}

pub struct Executor {
    pub(crate) gardener: Arc<Gardener>,
    pub(crate) blobs: Arc<Blobstore>,
    pub logs: Arc<LogHub>,
    pub(crate) reporter: Arc<dyn Reporter>,
    pub(crate) cfg: ExecutorConfig,
    table: Mutex<Table>,
    /// One download per droplet at a time.
    downloads: celld_image::keyed::Keyed,
    evacuating: std::sync::atomic::AtomicBool,
    /// What Download actions and cached dependencies fetch.
    pub(crate) artifacts: Arc<actions::DownloadCache>,
}

/// Bytes the download cache (DEPOT/executor/downloads) keeps.
pub const DOWNLOAD_CACHE_BYTES: u64 = 2 << 30;

/// Resolves once the cell ends the instance or task, with why.
async fn stopped(stop: &mut watch::Receiver<Option<StopReason>>) -> StopReason {
    match stop.wait_for(|s| s.is_some()).await {
        Ok(r) => r.unwrap_or(StopReason::Stop),
        // The sender lives in the table entry; gone means the entry is gone.
        Err(_) => StopReason::Discard,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn guid_ok(what: &str, g: &str) -> Result<(), String> {
    if g.is_empty() {
        return Err(format!("{what} is empty"));
    }
    celld_garden::gardener::validate_handle(g).map_err(|e| format!("{what}: {e}"))
}

impl Executor {
    pub fn new(
        gardener: Arc<Gardener>,
        blobs: Arc<Blobstore>,
        logs: Arc<LogHub>,
        reporter: Arc<dyn Reporter>,
        cfg: ExecutorConfig,
    ) -> Result<Arc<Self>, ExecutorError> {
        for d in ["lrps", "tasks", "droplets"] {
            let p = cfg.work_dir.join(d);
            std::fs::create_dir_all(&p)
                .map_err(|e| ExecutorError::Internal(format!("creating {}: {e}", p.display())))?;
        }
        let artifacts = actions::DownloadCache::new(cfg.work_dir.join("downloads"), DOWNLOAD_CACHE_BYTES)
            .map_err(|e| ExecutorError::Internal(format!("download cache: {e}")))?;
        Ok(Arc::new(Self {
            artifacts: Arc::new(artifacts),
            gardener,
            blobs,
            logs,
            reporter,
            cfg,
            table: Mutex::new(Table::default()),
            downloads: celld_image::keyed::Keyed::default(),
            evacuating: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// A rootfs as given, or the cell's default for "".
    fn rootfs(&self, r: &str) -> String {
        if r.is_empty() { self.cfg.default_rootfs.clone() } else { r.to_string() }
    }

    /// DEPOT/executor: records and the droplet cache.
    pub fn work_dir(&self) -> &std::path::Path {
        &self.cfg.work_dir
    }

    pub fn cell_id(&self) -> &str {
        &self.cfg.cell_id
    }

    fn record_path(&self, kind: &str, guid: &str) -> PathBuf {
        self.cfg.work_dir.join(kind).join(format!("{guid}.pb"))
    }

    fn save_record(&self, kind: &str, guid: &str, bytes: &[u8]) -> Result<(), ExecutorError> {
        let path = self.record_path(kind, guid);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| ExecutorError::Internal(format!("saving {}: {e}", path.display())))
    }

    fn forget_record(&self, kind: &str, guid: &str) {
        let _ = std::fs::remove_file(self.record_path(kind, guid));
    }

    // ---- capacity ----

    /// Memory, disk and containers left for new work.
    pub fn available(&self) -> pb::Resources {
        let t = lock(&self.table);
        let (mut mem, mut disk) = (0u32, 0u32);
        for l in t.lrps.values() {
            if let Some(d) = &l.start.desired_lrp {
                mem = mem.saturating_add(d.memory_mb);
                disk = disk.saturating_add(d.disk_mb);
            }
        }
        for task in t.tasks.values() {
            mem = mem.saturating_add(task.task.memory_mb);
            disk = disk.saturating_add(task.task.disk_mb);
        }
        drop(t);
        // Every container counts, staging ones too.
        let containers = self.gardener.list(&BTreeMap::new()).len() as u32;
        pb::Resources {
            memory_mb: self.cfg.total.memory_mb.saturating_sub(mem),
            disk_mb: self.cfg.total.disk_mb.saturating_sub(disk),
            containers: self.cfg.total.containers.saturating_sub(containers),
        }
    }

    /// Memory, disk and containers this cell offers in all.
    pub fn total(&self) -> pb::Resources {
        self.cfg.total
    }

    /// Preloaded rootfs names this cell has.
    pub fn stacks(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.cfg.rootfs_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    pub fn starting_containers(&self) -> u32 {
        lock(&self.table).lrps.values().filter(|l| matches!(l.phase, LrpPhase::Reserved | LrpPhase::Created)).count()
            as u32
    }

    pub fn set_evacuating(&self) {
        self.evacuating.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_evacuating(&self) -> bool {
        self.evacuating.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn presence(&self, grpc_address: &str) -> pb::CellPresence {
        pb::CellPresence {
            cell_id: self.cfg.cell_id.clone(),
            grpc_address: grpc_address.to_string(),
            zone: self.cfg.zone.clone(),
            capacity: Some(self.cfg.total),
            available: Some(self.available()),
            stacks: self.stacks(),
            placement_tags: self.cfg.placement_tags.clone(),
            evacuating: self.is_evacuating(),
            starting_containers: self.starting_containers(),
        }
    }

    // ---- work ----

    /// Why this cell can't take work needing `mem`/`disk` MB and a container
    /// from `rootfs` with `tags`, given what is left; `None` if it can.
    fn misfit(&self, left: &pb::Resources, mem: u32, disk: u32, rootfs: &str, tags: &[String]) -> Option<String> {
        if let Some(stack) = rootfs.strip_prefix("preloaded:") {
            if !self.cfg.rootfs_dir.join(stack).is_dir() {
                return Some(format!("found no compatible cell: this cell has no stack {stack:?}"));
            }
        }
        if let Some(t) = tags.iter().find(|t| !self.cfg.placement_tags.contains(t)) {
            return Some(format!("found no compatible cell: this cell has no placement tag {t:?}"));
        }
        let mut short = Vec::new();
        if left.containers < 1 {
            short.push("containers");
        }
        if left.disk_mb < disk {
            short.push("disk");
        }
        if left.memory_mb < mem {
            short.push("memory");
        }
        (!short.is_empty()).then(|| format!("insufficient resources: {}", short.join(", ")))
    }

    /// Takes what fits of `work` and starts it; returns what it did not take,
    /// each with its reason. Never all-or-nothing.
    pub fn perform(self: &Arc<Self>, mut work: pb::Work) -> Result<pb::Work, ExecutorError> {
        if work.cell_id != self.cfg.cell_id {
            return Err(ExecutorError::Invalid(format!(
                "work for cell {:?} was sent to cell {:?}",
                work.cell_id, self.cfg.cell_id
            )));
        }
        let mut failed = pb::Work { cell_id: work.cell_id.clone(), ..Default::default() };
        if self.is_evacuating() {
            for mut l in work.lrps {
                l.placement_error = "cell is evacuating".into();
                failed.lrps.push(l);
            }
            for mut t in work.tasks {
                t.rejection_reason = "cell is evacuating".into();
                failed.tasks.push(t);
            }
            return Ok(failed);
        }
        // Largest first, as Diego's rep fits them.
        work.lrps.sort_by_key(|l| std::cmp::Reverse(l.desired_lrp.as_ref().map_or(0, |d| d.memory_mb)));
        let mut left = self.available();
        for mut l in work.lrps {
            match self.reserve_lrp(&l, &mut left) {
                Ok(true) => {
                    let me = self.clone();
                    let guid = l.instance_guid.clone();
                    tokio::spawn(async move { me.run_lrp(guid, false).await });
                }
                Ok(false) => {}
                Err(why) => {
                    l.placement_error = why;
                    failed.lrps.push(l);
                }
            }
        }
        for mut t in work.tasks {
            match self.reserve_task(&t, &mut left) {
                Ok(true) => {
                    let me = self.clone();
                    let guid = t.task_guid.clone();
                    tokio::spawn(async move { me.run_task(guid, false).await });
                }
                Ok(false) => {}
                Err(why) => {
                    t.rejection_reason = why;
                    failed.tasks.push(t);
                }
            }
        }
        Ok(failed)
    }

    /// Ok(true): reserved and to be started; Ok(false): already here.
    fn reserve_lrp(&self, l: &pb::LrpStart, left: &mut pb::Resources) -> Result<bool, String> {
        let d = l.desired_lrp.as_ref().ok_or("the LRP start has no desired_lrp")?;
        guid_ok("process_guid", &d.process_guid)?;
        guid_ok("instance_guid", &l.instance_guid)?;
        if l.index < 0 {
            return Err(format!("index {} is negative", l.index));
        }
        for c in d.check_definition.iter().flat_map(|c| c.checks.iter().chain(c.readiness_checks.iter())) {
            health::Probe::from_check(c).map_err(|e| e.to_string())?;
        }
        let mut t = lock(&self.table);
        if t.lrps.contains_key(&l.instance_guid) {
            return Ok(false);
        }
        if let Some(why) = self.misfit(left, d.memory_mb, d.disk_mb, &self.rootfs(&d.rootfs), &d.placement_tags) {
            return Err(why);
        }
        self.save_record("lrps", &l.instance_guid, &l.encode_to_vec()).map_err(|e| e.to_string())?;
        left.memory_mb -= d.memory_mb;
        left.disk_mb -= d.disk_mb;
        left.containers -= 1;
        t.lrps.insert(l.instance_guid.clone(), self.lrp_entry(l.clone()));
        Ok(true)
    }

    fn lrp_entry(&self, start: pb::LrpStart) -> LrpEntry {
        let rate = start
            .desired_lrp
            .as_ref()
            .map(|d| d.log_rate_limit_lines_per_second)
            .filter(|r| *r > 0)
            .unwrap_or(self.cfg.log_rate_limit);
        LrpEntry {
            start,
            phase: LrpPhase::Reserved,
            routable: false,
            net: None,
            evacuating: false,
            stop: watch::channel(None).0,
            since: Instant::now(),
            limiter: (rate > 0).then(|| Arc::new(RateLimiter::new(rate))),
            tree: None,
        }
    }

    fn reserve_task(&self, task: &pb::Task, left: &mut pb::Resources) -> Result<bool, String> {
        guid_ok("task_guid", &task.task_guid)?;
        if task.command.is_empty() && task.action.is_none() {
            return Err("the task has no command and no action".into());
        }
        let mut t = lock(&self.table);
        if t.tasks.contains_key(&task.task_guid) {
            return Ok(false);
        }
        if let Some(why) =
            self.misfit(left, task.memory_mb, task.disk_mb, &self.rootfs(&task.rootfs), &task.placement_tags)
        {
            return Err(why);
        }
        self.save_record("tasks", &task.task_guid, &task.encode_to_vec()).map_err(|e| e.to_string())?;
        left.memory_mb -= task.memory_mb;
        left.disk_mb -= task.disk_mb;
        left.containers -= 1;
        t.tasks.insert(
            task.task_guid.clone(),
            TaskEntry { task: task.clone(), running: false, completed: None, stop: watch::channel(None).0, tree: None },
        );
        Ok(true)
    }

    /// Stops an instance on purpose; it is reported removed.
    pub fn stop_lrp(&self, instance_guid: &str, reason: StopReason) -> Result<(), ExecutorError> {
        let t = lock(&self.table);
        let l = t
            .lrps
            .get(instance_guid)
            .ok_or_else(|| ExecutorError::NotFound(format!("no instance {instance_guid} on this cell")))?;
        l.stop.send_replace(Some(reason));
        Ok(())
    }

    pub fn cancel_task(&self, task_guid: &str) -> Result<(), ExecutorError> {
        let t = lock(&self.table);
        let task = t
            .tasks
            .get(task_guid)
            .ok_or_else(|| ExecutorError::NotFound(format!("no task {task_guid} on this cell")))?;
        task.stop.send_replace(Some(StopReason::Cancel));
        Ok(())
    }

    /// Drops a task container nobody wants (bulk reconcile).
    pub fn discard_task(&self, task_guid: &str) {
        if let Some(task) = lock(&self.table).tasks.get(task_guid) {
            task.stop.send_replace(Some(StopReason::Discard));
        }
    }

    // ---- state, for the Cell service and the rep ----

    pub fn state(&self) -> pb::CellState {
        let t = lock(&self.table);
        let mut lrps: Vec<pb::CellLrp> = t
            .lrps
            .iter()
            .map(|(guid, l)| {
                let d = l.start.desired_lrp.clone().unwrap_or_default();
                pb::CellLrp {
                    process_guid: d.process_guid,
                    index: l.start.index,
                    instance_guid: guid.clone(),
                    domain: d.domain,
                    memory_mb: d.memory_mb,
                    disk_mb: d.disk_mb,
                    rootfs: d.rootfs,
                    max_pids: d.max_pids,
                    state: match l.phase {
                        LrpPhase::Reserved => "RESERVED",
                        LrpPhase::Created => "CLAIMED",
                        LrpPhase::Running => "RUNNING",
                        LrpPhase::Completed if l.stop.borrow().is_some() => "SHUTDOWN",
                        LrpPhase::Completed => "CRASHED",
                    }
                    .to_string(),
                    evacuating: l.evacuating,
                }
            })
            .collect();
        lrps.sort_by(|a, b| (&a.process_guid, a.index).cmp(&(&b.process_guid, b.index)));
        let mut tasks: Vec<pb::CellTask> = t
            .tasks
            .values()
            .map(|e| pb::CellTask {
                task_guid: e.task.task_guid.clone(),
                domain: e.task.domain.clone(),
                memory_mb: e.task.memory_mb,
                disk_mb: e.task.disk_mb,
                rootfs: e.task.rootfs.clone(),
                max_pids: e.task.max_pids,
                state: if e.completed.is_some() { "COMPLETED" } else { "RUNNING" }.to_string(),
                failed: e.completed.as_ref().is_some_and(|c| c.0),
            })
            .collect();
        tasks.sort_by(|a, b| a.task_guid.cmp(&b.task_guid));
        drop(t);
        pb::CellState {
            cell_id: self.cfg.cell_id.clone(),
            zone: self.cfg.zone.clone(),
            total: Some(self.cfg.total),
            available: Some(self.available()),
            lrps,
            tasks,
            starting_containers: self.starting_containers(),
            evacuating: self.is_evacuating(),
            stacks: self.stacks(),
            placement_tags: self.cfg.placement_tags.clone(),
            vitals: None,
        }
    }

    /// The instances on this cell, for the rep's reconcile and evacuation.
    pub fn instances(&self) -> Vec<InstanceView> {
        lock(&self.table)
            .lrps
            .iter()
            .map(|(guid, l)| InstanceView {
                key: self.key_of(&l.start),
                instance: self.instance_key(guid),
                phase: l.phase,
                net: l.net.clone(),
                routable: l.routable,
                since: l.since,
                evacuating: l.evacuating,
            })
            .collect()
    }

    /// The tasks on this cell: (guid, running, when reserved).
    pub fn tasks(&self) -> Vec<(String, bool)> {
        lock(&self.table).tasks.iter().map(|(g, t)| (g.clone(), t.running)).collect()
    }

    pub fn mark_evacuating(&self, instance_guid: &str) {
        if let Some(l) = lock(&self.table).lrps.get_mut(instance_guid) {
            l.evacuating = true;
        }
    }

    fn key_of(&self, s: &pb::LrpStart) -> Key {
        let d = s.desired_lrp.as_ref();
        Key {
            process_guid: d.map(|d| d.process_guid.clone()).unwrap_or_default(),
            index: s.index,
            domain: d.map(|d| d.domain.clone()).unwrap_or_default(),
        }
    }

    fn instance_key(&self, guid: &str) -> InstanceKey {
        InstanceKey { instance_guid: guid.to_string(), cell_id: self.cfg.cell_id.clone() }
    }

    /// CPU, memory and disk of every instance and task (of `log_guid` if not empty).
    pub async fn metrics(self: &Arc<Self>, log_guid: &str) -> Vec<pb::ContainerMetrics> {
        let targets: Vec<(String, pb::ContainerMetrics)> = {
            let t = lock(&self.table);
            let lrps = t.lrps.iter().filter_map(|(g, l)| {
                let d = l.start.desired_lrp.as_ref()?;
                (log_guid.is_empty() || d.log_guid == log_guid).then(|| {
                    (
                        g.clone(),
                        pb::ContainerMetrics {
                            process_guid: d.process_guid.clone(),
                            instance_guid: g.clone(),
                            index: l.start.index,
                            log_guid: d.log_guid.clone(),
                            memory_bytes_quota: u64::from(d.memory_mb) << 20,
                            disk_bytes_quota: u64::from(d.disk_mb) << 20,
                            ..Default::default()
                        },
                    )
                })
            });
            let tasks =
                t.tasks.iter().filter(|(_, e)| log_guid.is_empty() || e.task.log_guid == log_guid).map(|(g, e)| {
                    (
                        g.clone(),
                        pb::ContainerMetrics {
                            task_guid: g.clone(),
                            log_guid: e.task.log_guid.clone(),
                            memory_bytes_quota: u64::from(e.task.memory_mb) << 20,
                            disk_bytes_quota: u64::from(e.task.disk_mb) << 20,
                            ..Default::default()
                        },
                    )
                });
            lrps.chain(tasks).collect()
        };
        let me = self.clone();
        // Disk usage walks the writable layer: off the async threads.
        tokio::task::spawn_blocking(move || {
            targets
                .into_iter()
                .filter_map(|(guid, mut m)| {
                    let g = me.gardener.metrics(&guid).ok()?;
                    let now = Instant::now();
                    let mut t = lock(&me.table);
                    let usage = g.cpu_stat.usage;
                    match t.cpu.get_mut(&guid) {
                        Some(samples) => m.cpu_percentage = samples.percent(now, usage).unwrap_or(0.0),
                        None => {
                            t.cpu.insert(guid, CpuSamples { prev: None, last: (now, usage) });
                        }
                    }
                    m.memory_bytes = g.memory_stat.total_usage_toward_limit;
                    m.disk_bytes = g.disk_stat.exclusive_bytes_used;
                    m.container_age_ns = g.age;
                    Some(m)
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    // ---- restart ----

    /// After a daemon restart: picks up every instance and task whose
    /// container survived, and destroys containers without a record (and
    /// records without a container, reporting those as removed/failed).
    pub async fn restore(self: &Arc<Self>) {
        let mut found: HashMap<String, &'static str> = HashMap::new();
        for role in ["lrp", "task"] {
            let filter = BTreeMap::from([(ROLE_PROPERTY.to_string(), role.to_string())]);
            for h in self.gardener.list(&filter) {
                found.insert(h, role);
            }
        }
        for (kind, role) in [("lrps", "lrp"), ("tasks", "task")] {
            let dir = self.cfg.work_dir.join(kind);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let path = e.path();
                let Some(guid) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".pb")) else {
                    continue;
                };
                let guid = guid.to_string();
                let has_container = found.remove(&guid) == Some(role);
                self.restore_one(kind, &guid, &path, has_container).await;
            }
        }
        // Containers of ours without a record: half-made by a crashed cell.
        for (h, _) in found {
            tracing::info!(handle = %h, "destroying a container without an executor record");
            let _ = self.gardener.destroy(&h).await;
        }
    }

    async fn restore_one(self: &Arc<Self>, kind: &str, guid: &str, path: &Path, has_container: bool) {
        let Ok(bytes) = std::fs::read(path) else { return };
        if kind == "lrps" {
            let Ok(start) = pb::LrpStart::decode(bytes.as_slice()) else {
                tracing::warn!(path = %path.display(), "unreadable instance record; removing it");
                self.forget_record(kind, guid);
                return;
            };
            let key = self.key_of(&start);
            if !has_container {
                // It was being created or destroyed when the cell died.
                tracing::info!(instance_guid = %guid, "instance without a container after restart; removing it");
                self.forget_record(kind, guid);
                self.reporter.remove(key, self.instance_key(guid));
                return;
            }
            lock(&self.table).lrps.insert(guid.to_string(), self.lrp_entry(start));
            let me = self.clone();
            let guid = guid.to_string();
            tokio::spawn(async move { me.run_lrp(guid, true).await });
        } else {
            let Ok(task) = pb::Task::decode(bytes.as_slice()) else {
                self.forget_record(kind, guid);
                return;
            };
            if !has_container {
                self.forget_record(kind, guid);
                self.reporter.complete_task(guid, true, "task container does not exist".into(), String::new());
                return;
            }
            lock(&self.table).tasks.insert(
                guid.to_string(),
                TaskEntry { task, running: true, completed: None, stop: watch::channel(None).0, tree: None },
            );
            let me = self.clone();
            let guid = guid.to_string();
            tokio::spawn(async move { me.run_task(guid, true).await });
        }
    }

    /// The droplet `key`, from the cell's cache (by SHA-256) or the blobstore.
    async fn droplet(&self, key: &str) -> Result<(PathBuf, u64), ExecutorError> {
        let info = self.blobs.head(key).await?;
        let path = self.cfg.work_dir.join("droplets").join(format!("{}.tgz", info.sha256));
        let _one = self.downloads.lock(&info.sha256).await;
        if !path.is_file() {
            self.blobs.get_to_file(key, &path).await?;
        }
        Ok((path, info.size))
    }
}

/// The router dials only what this says: an instance of this cell that is
/// running (not being stopped or destroyed) at that address, whose container
/// still has its interface.
impl celld_router::LiveBackends for Executor {
    fn is_live(&self, b: &celld_router::Backend) -> bool {
        let std::net::IpAddr::V4(ip) = b.addr.ip() else { return false };
        let running = lock(&self.table).lrps.get(&b.instance_guid).is_some_and(|l| {
            l.phase == LrpPhase::Running && l.net.as_ref().is_some_and(|n| n.instance_address == ip.to_string())
        });
        running && celld_network::has_interface(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_checked() {
        assert!(guid_ok("instance_guid", "").is_err());
        assert!(guid_ok("instance_guid", "../x").is_err());
        assert!(guid_ok("instance_guid", "a1b2-c3").is_ok());
    }

    #[test]
    fn cpu_percent_is_taken_over_at_least_the_window() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let mut c = CpuSamples { prev: None, last: (t0, 0) };
        // Too soon after the first sample: over what there is.
        assert_eq!(c.percent(s(0.5), 250_000_000), Some(50.0));
        // A window later: over the window, and a new sample.
        assert_eq!(c.percent(s(2.0), 1_000_000_000), Some(50.0));
        // A reader right after: over the sample before, not over 0.1 s.
        let p = c.percent(s(2.1), 1_100_000_000).unwrap_or(0.0);
        assert!((p - 1_100_000_000.0 * 100.0 / 2.1e9).abs() < 1e-6, "{p}");
        assert_eq!(c.percent(s(4.0), 2_000_000_000), Some(50.0));
        assert_eq!(c.percent(s(4.0), 2_000_000_000), Some(50.0));
    }
}
