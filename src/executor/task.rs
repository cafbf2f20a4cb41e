//! One task: asked to start (the scheduler may say no), run once in its own
//! container, its result file read, reported completed, container destroyed.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::Instrument;

use super::container::{self, Recipe};
use super::logs::LineWriter;
use super::lrp::{AppUser, MAX_LOG_LINE, app_process};
use super::tree::TreeSpec;
use super::{Executor, PROCESS_PROPERTY, ROLE_PROPERTY, StopReason, lock};
use celld_proto as pb;
use garden_api::types::Properties;

/// Diego keeps the first 10 KB of a task's result file.
pub const MAX_RESULT: u64 = 10 * 1024;
pub const CANCELLED: &str = "task was cancelled";

enum End {
    Exited { failed: bool, reason: String, result: String },
    Stopped(StopReason),
}

impl Executor {
    pub(super) async fn run_task(self: Arc<Self>, guid: String, restored: bool) {
        let Some((task, stop)) = ({
            let t = lock(&self.table);
            t.tasks.get(&guid).map(|e| (e.task.clone(), e.stop.subscribe()))
        }) else {
            return;
        };
        let span = tracing::info_span!("task", task_guid = %guid);
        async move {
            if !restored && !self.reporter.start_task(&guid).await {
                tracing::info!("the scheduler no longer wants this task here");
                self.forget_task(&guid);
                return;
            }
            if let Some(e) = lock(&self.table).tasks.get_mut(&guid) {
                e.running = true;
            }
            let end = if let Some(action) = &task.action {
                self.task_tree_lifecycle(&guid, &task, action, restored, stop).await
            } else {
                self.task_lifecycle(&guid, &task, restored, stop).await
            };
            let tree = lock(&self.table).tasks.get_mut(&guid).and_then(|e| e.tree.take());
            if let Some(mut tree) = tree {
                tree.stop().await;
            }
            let source = task_source(&task);
            match end {
                End::Exited { failed, reason, result } => {
                    if let Some(e) = lock(&self.table).tasks.get_mut(&guid) {
                        e.completed = Some((failed, reason.clone()));
                    }
                    tracing::info!(failed, reason = %reason, "task completed");
                    self.reporter.complete_task(&guid, failed, reason, result);
                }
                End::Stopped(StopReason::Cancel) => {
                    self.reporter.complete_task(&guid, true, CANCELLED.into(), String::new());
                }
                End::Stopped(_) => {}
            }
            let cell = &self.cfg.cell_id;
            let line = |m: &str| super::logs::cell_line(&self.logs, &task.log_guid, "CELL", 0, m);
            line(&format!("Cell {cell} destroying container for instance {guid}"));
            match self.gardener.destroy(&guid).await {
                Ok(()) => line(&format!("Cell {cell} successfully destroyed container for instance {guid}")),
                Err(celld_garden::gardener::GardenError::ContainerNotFound(_)) => {}
                Err(e) => tracing::warn!(error = %e, source = %source, "destroying the task container failed"),
            }
            self.forget_task(&guid);
        }
        .instrument(span)
        .await
    }

    fn forget_task(&self, guid: &str) {
        self.forget_record("tasks", guid);
        let mut t = lock(&self.table);
        t.tasks.remove(guid);
        t.cpu.remove(guid);
    }

    async fn task_lifecycle(
        self: &Arc<Self>,
        guid: &str,
        task: &pb::Task,
        restored: bool,
        mut stop: watch::Receiver<Option<StopReason>>,
    ) -> End {
        // The create runs to its end even if a stop comes meanwhile: dropped
        // half way, it left its depot entry behind, unknown to the destroy.
        if !restored {
            if let Err(reason) = self.create_task_container(guid, task).await {
                return End::Exited { failed: true, reason, result: String::new() };
            }
        }
        let run = async {
            if restored {
                let pid = self.gardener.property(guid, PROCESS_PROPERTY).map_err(|e| e.to_string())?;
                self.gardener.attach(guid, &pid).await.map_err(|e| e.to_string())
            } else {
                self.start_task_process(guid, task).await
            }
        };
        let follow = tokio::select! {
            r = run => r,
            r = super::stopped(&mut stop) => return End::Stopped(r),
        };
        let follow = match follow {
            Ok(conn) => container::follow(conn, self.task_writer(task, false), self.task_writer(task, true)),
            Err(reason) => return End::Exited { failed: true, reason, result: String::new() },
        };
        let code = tokio::select! {
            c = follow => c,
            r = super::stopped(&mut stop) => return End::Stopped(r),
        };
        let source = task_source(task);
        let Some(code) = code else {
            return End::Exited {
                failed: true,
                reason: format!("{source}: the container's init went away"),
                result: String::new(),
            };
        };
        if code != 0 {
            let oom = container::out_of_memory(&self.gardener, guid).await;
            if oom {
                self.cfg.metrics.oom_kills.inc();
            }
            return End::Exited {
                failed: true,
                reason: container::exit_reason(&source, code, oom),
                result: String::new(),
            };
        }
        self.task_result(guid, task).await
    }

    /// A task that ended well: the first 10 KB of its result file.
    async fn task_result(&self, guid: &str, task: &pb::Task) -> End {
        if task.result_file.is_empty() {
            return End::Exited { failed: false, reason: String::new(), result: String::new() };
        }
        match container::read_file(&self.gardener, guid, &task.result_file, MAX_RESULT).await {
            Ok(bytes) => End::Exited {
                failed: false,
                reason: String::new(),
                result: String::from_utf8_lossy(&bytes).into_owned(),
            },
            Err(e) => End::Exited {
                failed: true,
                reason: format!("failed to read the result file {}: {e}", task.result_file),
                result: String::new(),
            },
        }
    }

    /// A task with an action tree: container, cached dependencies, action;
    /// the action's error is the failure reason.
    async fn task_tree_lifecycle(
        self: &Arc<Self>,
        guid: &str,
        task: &pb::Task,
        action: &celld_proto::diego::bbs::Action,
        restored: bool,
        mut stop: watch::Receiver<Option<StopReason>>,
    ) -> End {
        let fail = |reason: String| End::Exited { failed: true, reason, result: String::new() };
        // Not interrupted by a stop: see `task_lifecycle`.
        if !restored {
            if let Err(reason) = self.create_task_container(guid, task).await {
                return fail(reason);
            }
        }
        let started = async {
            let addrs = container::addresses(&self.gardener, guid).await.map_err(|e| e.to_string())?;
            let spec = TreeSpec {
                guid,
                log_guid: &task.log_guid,
                index: 0,
                env: super::env::task_env(task, &addrs.host_ip, &addrs.container_ip),
                legacy_download_user: &task.legacy_download_user,
                disk_mb: task.disk_mb,
                source: task_source(task),
                cached_dependencies: &task.cached_dependencies,
                setup: None,
                action,
                resuming: restored,
                wait_on_success: false,
            };
            self.start_tree(spec).await
        };
        let tree = tokio::select! {
            r = started => r,
            r = super::stopped(&mut stop) => return End::Stopped(r),
        };
        let tree = match tree {
            Ok(t) => t,
            Err(reason) => return fail(reason),
        };
        if let Some(e) = lock(&self.table).tasks.get_mut(guid) {
            e.tree = Some(tree.stop);
        }
        let res = tokio::select! {
            r = tree.ended => r,
            r = super::stopped(&mut stop) => return End::Stopped(r),
        };
        match res {
            Ok(Ok(())) => self.task_result(guid, task).await,
            Ok(Err(e)) => fail(e.to_string()),
            Err(_) => fail(format!("{}: the action tree went away", task_source(task))),
        }
    }

    fn task_writer(&self, task: &pb::Task, err: bool) -> LineWriter {
        LineWriter::new(
            self.logs.clone(),
            task.log_guid.clone(),
            task_source(task),
            "0".into(),
            err,
            MAX_LOG_LINE,
            None,
        )
    }

    async fn start_task_process(
        self: &Arc<Self>,
        guid: &str,
        task: &pb::Task,
    ) -> Result<tokio::net::UnixStream, String> {
        let droplet = self.put_droplet(guid, &task.droplet_key, task.disk_mb, &task.log_guid, "CELL", 0).await?;
        let addrs = container::addresses(&self.gardener, guid).await.map_err(|e| e.to_string())?;
        let env = super::env::task_env(task, &addrs.host_ip, &addrs.container_ip);
        let user = AppUser::of_app(droplet, &self.rootfs(&task.rootfs));
        let spec = app_process(droplet, &task.command, &task.execution_metadata, env, user);
        let (pid, conn) = self.gardener.run(guid, &spec).await.map_err(|e| format!("failed to start the task: {e}"))?;
        let _ = self.gardener.set_property(guid, PROCESS_PROPERTY, &pid);
        Ok(conn)
    }

    async fn create_task_container(&self, guid: &str, task: &pb::Task) -> Result<(), String> {
        let cell = &self.cfg.cell_id;
        let line = |m: &str| super::logs::cell_line(&self.logs, &task.log_guid, "CELL", 0, m);
        line(&format!("Cell {cell} creating container for instance {guid}"));
        let rootfs = self.rootfs(&task.rootfs);
        let recipe = Recipe {
            handle: guid,
            rootfs: &rootfs,
            memory_mb: task.memory_mb,
            disk_mb: task.disk_mb,
            max_pids: task.max_pids,
            cpu_weight: task.cpu_weight,
            ports: &[],
            egress: &task.egress_rules,
            properties: Properties::from([
                (ROLE_PROPERTY.to_string(), "task".to_string()),
                ("task-guid".to_string(), guid.to_string()),
                ("domain".to_string(), task.domain.clone()),
                ("log-guid".to_string(), task.log_guid.clone()),
            ]),
            lifecycle_dir: task.action.is_none().then_some(self.cfg.lifecycle_dir.as_path()),
            privileged: task.privileged,
            image_username: &task.image_username,
            image_password: &task.image_password,
        };
        let spec = recipe.spec().map_err(|e| format!("failed to create container: {e}"))?;
        self.gardener.create(spec).await.map_err(|e| format!("failed to create container: {e}"))?;
        line(&format!("Cell {cell} successfully created container for instance {guid}"));
        Ok(())
    }
}

fn task_source(task: &pb::Task) -> String {
    if task.log_source.is_empty() { "TASK".to_string() } else { task.log_source.clone() }
}
