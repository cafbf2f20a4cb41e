//! A cell joined to a real Diego (`--bbs-address`): a drop-in for the rep,
//! the executor and Garden. The auctioneer calls the rep API ([`api`]) for
//! the cell's state and to hand it work; the work's definitions come from
//! BBS and run on the executor ([`convert`]); the executor's reports go to
//! BBS through the rep's queue ([`plane`]); the cell's presence is a lock in
//! Locket. celld's own scheduler is not used.

pub mod api;
pub mod convert;
pub mod json;
pub mod plane;
pub mod repconfig;
pub mod start;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use celld_diego::BbsClient;
use celld_proto as pb;

use crate::executor::{Executor, Reporter, StopReason};
use api::{ApiError, RepApi};
use convert::Stacks;
use json::{CellState, Lrp, LrpUpdate, Resources, RootFsProvider, Task, Work};

/// Everything the Diego half of the cell is told at start.
#[derive(Debug, Clone)]
pub struct DiegoSettings {
    pub cell_id: String,
    pub cell_index: i32,
    pub zone: String,
    pub rep_url: String,
    /// `http://IP:ADMIN-PORT`, as the rep advertises it (used only by
    /// control planes that do not require TLS).
    pub rep_address: String,
    pub placement_tags: Vec<String>,
    pub optional_placement_tags: Vec<String>,
    pub stacks: Stacks,
}

impl DiegoSettings {
    /// Diego's rep URL: https://CELL-ID.DOMAIN:PORT, `_` in the id made `-`.
    pub fn rep_url(cell_id: &str, advertise_domain: &str, listen: &str) -> String {
        let port = listen.rsplit(':').next().unwrap_or("1801");
        format!("https://{}.{advertise_domain}:{port}", cell_id.replace('_', "-"))
    }

    /// The rep's `rep_address`: this host's outward address (the source of
    /// the default route) and the admin port.
    pub fn rep_address(admin_listen: &str) -> String {
        let port = admin_listen.rsplit(':').next().unwrap_or("1800");
        // Connecting a UDP socket sends nothing; it only picks the source address.
        let ip = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("192.0.2.1:1").and_then(|_| s.local_addr()))
            .map_or_else(|_| "127.0.0.1".to_string(), |a| a.ip().to_string());
        format!("http://{ip}:{port}")
    }

    /// Every stack name this cell offers: `--preloaded-rootfs` and the
    /// rootfs directory's.
    fn stack_names(&self, in_rootfs_dir: Vec<String>) -> Vec<String> {
        let mut names: BTreeSet<String> = self.stacks.0.keys().cloned().collect();
        names.extend(in_rootfs_dir);
        names.into_iter().collect()
    }

    /// The presence the cell keeps in Locket.
    pub fn presence(&self, executor: &Executor) -> celld_diego::CellPresence {
        let total = executor.total();
        let capacity = celld_diego::CellCapacity {
            memory_mb: i32::try_from(total.memory_mb).unwrap_or(i32::MAX),
            disk_mb: i32::try_from(total.disk_mb).unwrap_or(i32::MAX),
            containers: i32::try_from(total.containers).unwrap_or(i32::MAX),
        };
        let mut p = celld_diego::CellPresence::new(
            &self.cell_id,
            &self.rep_address,
            &self.rep_url,
            &self.zone,
            capacity,
            &self.stack_names(executor.stacks()),
            &[celld_diego::cell_presence::DOCKER.to_string()],
        );
        p.placement_tags = self.placement_tags.clone();
        p.optional_placement_tags = self.optional_placement_tags.clone();
        p
    }
}

/// The cell's side of Diego: what the rep API calls.
pub struct DiegoCell {
    settings: DiegoSettings,
    bbs: BbsClient,
    executor: OnceLock<Arc<Executor>>,
    reporter: Arc<dyn Reporter>,
    /// Set by the admin API's `/evacuate`; the daemon then evacuates and exits.
    pub evacuate_requested: tokio::sync::Notify,
    healthy: std::sync::atomic::AtomicBool,
}

impl DiegoCell {
    pub fn new(settings: DiegoSettings, bbs: BbsClient, reporter: Arc<dyn Reporter>) -> Arc<Self> {
        Arc::new(Self {
            settings,
            bbs,
            executor: OnceLock::new(),
            reporter,
            evacuate_requested: tokio::sync::Notify::new(),
            healthy: std::sync::atomic::AtomicBool::new(true),
        })
    }

    pub fn set_executor(&self, executor: Arc<Executor>) {
        let _ = self.executor.set(executor);
    }

    fn executor(&self) -> Result<&Arc<Executor>, ApiError> {
        self.executor.get().ok_or_else(|| ApiError::Internal("the cell is starting".into()))
    }

    /// The executor's rootfs back as the URL BBS gave (`preloaded:NAME`).
    fn rootfs_url(&self, rootfs: &str) -> String {
        self.settings
            .stacks
            .0
            .iter()
            .find(|(_, p)| p.as_os_str() == rootfs)
            .map_or_else(|| rootfs.to_string(), |(name, _)| format!("preloaded:{name}"))
    }

    /// Diego's executor checks Garden by making a container now and then;
    /// so does this: a cell that cannot make containers answers `/state`
    /// with 503 and draws no work.
    pub async fn check_health_forever(self: Arc<Self>, gardener: Arc<crate::gardener::Gardener>) {
        let mut n: u64 = 0;
        loop {
            n += 1;
            let handle = format!("executor-healthcheck-{}-{n}", std::process::id());
            let spec = garden_api::types::ContainerSpec { handle: handle.clone(), ..Default::default() };
            let ok = match gardener.create(spec).await {
                Ok(_) => gardener.destroy(&handle).await.is_ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "cell health check: cannot create a container");
                    false
                }
            };
            if self.healthy.swap(ok, std::sync::atomic::Ordering::SeqCst) != ok {
                tracing::info!(healthy = ok, "cell health changed");
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }

    /// An instance celld cannot run: claimed, then crashed with the reason,
    /// so BBS shows it (and applies its crash policy).
    fn refuse_lrp(&self, lrp: &Lrp, why: &str) {
        tracing::warn!(instance_guid = %lrp.instance_guid, process_guid = %lrp.process_guid, reason = %why, "refusing an LRP");
        let k =
            pb::ActualLrpKey { process_guid: lrp.process_guid.clone(), index: lrp.index, domain: lrp.domain.clone() };
        let ik = pb::ActualLrpInstanceKey {
            instance_guid: lrp.instance_guid.clone(),
            cell_id: self.settings.cell_id.clone(),
        };
        self.reporter.claim(k.clone(), ik.clone());
        self.reporter.crash(k, ik, why.to_string());
    }

    /// A task celld cannot run: started, then failed with the reason.
    fn refuse_task(&self, task: &Task, why: &str) {
        tracing::warn!(task_guid = %task.task_guid, reason = %why, "refusing a task");
        let (reporter, guid, why) = (self.reporter.clone(), task.task_guid.clone(), why.to_string());
        tokio::spawn(async move {
            if reporter.start_task(&guid).await {
                reporter.complete_task(&guid, true, why, String::new());
            }
        });
    }
}

#[async_trait::async_trait]
impl RepApi for DiegoCell {
    async fn state(&self) -> CellState {
        let Some(ex) = self.executor.get() else { return CellState::default() };
        let mut s = ex.state();
        let res = |r: Option<pb::Resources>| {
            let r = r.unwrap_or_default();
            Resources {
                memory_mb: i32::try_from(r.memory_mb).unwrap_or(i32::MAX),
                disk_mb: i32::try_from(r.disk_mb).unwrap_or(i32::MAX),
                containers: i64::from(r.containers),
            }
        };
        let stacks: BTreeMap<String, json::Empty> =
            self.settings.stack_names(std::mem::take(&mut s.stacks)).into_iter().map(|s| (s, json::Empty {})).collect();
        let i32_of = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        CellState {
            rep_url: self.settings.rep_url.clone(),
            cell_id: self.settings.cell_id.clone(),
            cell_index: self.settings.cell_index,
            rootfs_providers: BTreeMap::from([
                ("preloaded".to_string(), RootFsProvider::FixedSet { set: stacks.clone() }),
                ("preloaded+layer".to_string(), RootFsProvider::FixedSet { set: stacks }),
                ("docker".to_string(), RootFsProvider::Arbitrary),
            ]),
            available: res(s.available),
            total: res(s.total),
            lrps: s
                .lrps
                .into_iter()
                .map(|l| Lrp {
                    instance_guid: l.instance_guid,
                    process_guid: l.process_guid,
                    index: l.index,
                    domain: l.domain,
                    placement: json::PlacementConstraint { rootfs: self.rootfs_url(&l.rootfs), ..Default::default() },
                    resource: json::Resource {
                        memory_mb: i32_of(l.memory_mb),
                        disk_mb: i32_of(l.disk_mb),
                        max_pids: i32_of(l.max_pids),
                    },
                    // The executor's reserved and created are CLAIMED to Diego.
                    state: if l.state == "RESERVED" { "CLAIMED".to_string() } else { l.state },
                })
                .collect(),
            tasks: s
                .tasks
                .into_iter()
                .map(|t| Task {
                    task_guid: t.task_guid,
                    domain: t.domain,
                    placement: json::PlacementConstraint { rootfs: self.rootfs_url(&t.rootfs), ..Default::default() },
                    resource: json::Resource {
                        memory_mb: i32_of(t.memory_mb),
                        disk_mb: i32_of(t.disk_mb),
                        max_pids: i32_of(t.max_pids),
                    },
                    state: if t.state == "COMPLETED" { "Completed" } else { "Running" }.to_string(),
                    failed: t.failed,
                })
                .collect(),
            starting_container_count: i64::from(s.starting_containers),
            zone: self.settings.zone.clone(),
            evacuating: s.evacuating,
            volume_drivers: Vec::new(),
            placement_tags: self.settings.placement_tags.clone(),
            optional_placement_tags: self.settings.optional_placement_tags.clone(),
            proxy_memory_allocation_mb: 0,
        }
    }

    fn healthy(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn perform(&self, work: Work) -> Result<Work, ApiError> {
        if !work.cell_id.is_empty() && work.cell_id != self.settings.cell_id {
            return Err(ApiError::CellIdMismatch(work.cell_id));
        }
        let ex = self.executor()?.clone();
        let mut failed = Work::default();
        if ex.is_evacuating() {
            return Ok(Work { cell_id: String::new(), ..work });
        }
        // One BBS read per process, however many instances it has here.
        let guids: BTreeSet<String> = work.lrps.iter().map(|l| l.process_guid.clone()).collect();
        let desired: HashMap<String, Result<pb::DesiredLrp, String>> =
            futures_util::future::join_all(guids.into_iter().map(|g| async move {
                let d = match self.bbs.desired_lrp_by_process_guid(&g).await {
                    Ok(d) => convert::desired_lrp(&d, &self.settings.stacks).map_err(|e| e.to_string()),
                    Err(e) => {
                        tracing::warn!(process_guid = %g, error = %e, "cannot read the desired LRP; giving the work back");
                        Err(String::new())
                    }
                };
                (g, d)
            }))
            .await
            .into_iter()
            .collect();
        let mut by_guid: HashMap<String, Lrp> = HashMap::new();
        let mut starts = Vec::new();
        for mut l in work.lrps {
            // The auctioneer names the instance's slot; its guid is the cell's to make.
            if l.instance_guid.is_empty() {
                l.instance_guid = celld_base::guid::new_guid();
            }
            match desired.get(&l.process_guid) {
                Some(Ok(d)) => {
                    starts.push(pb::LrpStart {
                        desired_lrp: Some(d.clone()),
                        index: l.index,
                        instance_guid: l.instance_guid.clone(),
                        placement_error: String::new(),
                    });
                    by_guid.insert(l.instance_guid.clone(), l);
                }
                Some(Err(why)) if !why.is_empty() => self.refuse_lrp(&l, why),
                _ => failed.lrps.push(l),
            }
        }
        let tasks = futures_util::future::join_all(work.tasks.into_iter().map(|t| async move {
            let def = match self.bbs.task_by_guid(&t.task_guid).await {
                Ok(bt) => convert::task(&bt, &self.settings.stacks).map_err(|e| e.to_string()),
                Err(e) => {
                    tracing::warn!(task_guid = %t.task_guid, error = %e, "cannot read the task; giving the work back");
                    Err(String::new())
                }
            };
            (t, def)
        }))
        .await;
        let mut task_by_guid: HashMap<String, Task> = HashMap::new();
        let mut runs = Vec::new();
        for (t, def) in tasks {
            match def {
                Ok(d) => {
                    runs.push(d);
                    task_by_guid.insert(t.task_guid.clone(), t);
                }
                Err(why) if !why.is_empty() => self.refuse_task(&t, &why),
                Err(_) => failed.tasks.push(t),
            }
        }
        let answer = ex
            .perform(pb::Work { cell_id: self.settings.cell_id.clone(), lrps: starts, tasks: runs })
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        for l in answer.lrps {
            tracing::info!(instance_guid = %l.instance_guid, reason = %l.placement_error, "work not taken");
            failed.lrps.extend(by_guid.remove(&l.instance_guid));
        }
        for t in answer.tasks {
            tracing::info!(task_guid = %t.task_guid, reason = %t.rejection_reason, "task not taken");
            failed.tasks.extend(task_by_guid.remove(&t.task_guid));
        }
        Ok(failed)
    }

    async fn container_metrics(&self) -> serde_json::Value {
        let Some(ex) = self.executor.get() else { return serde_json::json!({}) };
        let metrics = ex.metrics("").await;
        let cached = |m: &pb::ContainerMetrics| {
            serde_json::json!({
                "cpu_usage_fraction": m.cpu_percentage / 100.0,
                "memory_usage_in_bytes": m.memory_bytes,
                "memory_limit_in_bytes": m.memory_bytes_quota,
                "disk_usage_in_bytes": m.disk_bytes,
                "disk_limit_in_bytes": m.disk_bytes_quota,
                "container_age_in_nanoseconds": m.container_age_ns,
            })
        };
        let mut lrps = Vec::new();
        let mut tasks = Vec::new();
        for m in &metrics {
            let mut v = cached(m);
            if m.task_guid.is_empty() {
                v["instance_guid"] = m.instance_guid.clone().into();
                v["process_guid"] = m.process_guid.clone().into();
                v["index"] = m.index.into();
                lrps.push(v);
            } else {
                v["task_guid"] = m.task_guid.clone().into();
                tasks.push(v);
            }
        }
        serde_json::json!({ "cell_id": self.settings.cell_id, "lrps": lrps, "tasks": tasks })
    }

    fn stop_lrp(&self, _process_guid: &str, instance_guid: &str) -> Result<(), ApiError> {
        self.executor()?.stop_lrp(instance_guid, StopReason::Stop).map_err(|e| ApiError::NotFound(e.to_string()))
    }

    fn cancel_task(&self, task_guid: &str) {
        if let Some(ex) = self.executor.get() {
            // Unknown tasks are no error: BBS cancels wherever the task was.
            let _ = ex.cancel_task(task_guid);
        }
    }

    fn update_lrp(&self, update: LrpUpdate) -> Result<(), ApiError> {
        // Internal routes and metric tags are not used by celld's executor;
        // the instance must exist all the same, as Diego's answers.
        let ex = self.executor()?;
        if ex.instances().iter().any(|i| i.instance.instance_guid == update.instance_guid) {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("no instance {} on this cell", update.instance_guid)))
        }
    }

    fn evacuate(&self) {
        tracing::info!("evacuation requested on the admin API");
        self.evacuate_requested.notify_one();
    }
}
