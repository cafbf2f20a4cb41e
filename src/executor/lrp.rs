//! One app instance from reservation to its end, as explicit phases:
//! reserved → (claim) → created (process running) → running (healthy,
//! reported with its addresses) → completed (crashed, stopped or discarded).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use super::actions::{self, StepError};
use super::container::{self, Addresses, LIFECYCLE_MOUNT, Recipe};
use super::health::{self, Probe};
use super::logs::LineWriter;
use super::tree::TreeSpec;
use super::{Executor, ExecutorError, LrpPhase, PROCESS_PROPERTY, ROLE_PROPERTY, StopReason, lock};
use celld_proto as pb;
use garden_api::types::{ProcessSpec, Properties};

/// Diego's default `start_timeout_ms`.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest line passed on whole; longer ones are split.
pub(super) const MAX_LOG_LINE: usize = 64 * 1024;

/// Log source of the instance's sshd (CC's for the ssh action).
const SSHD_SOURCE: &str = "CELL/SSHD";
/// The container property holding the id of the instance's sshd process.
const SSHD_PROCESS_PROPERTY: &str = "executor:sshd-process-id";
/// Where the instance's sshd listens (Diego's port).
const SSHD_ADDRESS: &str = "0.0.0.0:2222";

/// How the instance's work ended: the first of its processes to exit (the
/// app, or its sshd: they are codependent, as in Diego), with its log source
/// and exit code; or its action tree, with its result.
enum Ended {
    Process(String, Option<i32>),
    Tree(Result<(), StepError>),
}

type Exit = oneshot::Receiver<Ended>;

/// How an instance ended.
enum End {
    Crashed(String),
    Stopped(StopReason),
}

impl Executor {
    pub(super) async fn run_lrp(self: Arc<Self>, guid: String, restored: bool) {
        let Some((start, stop)) = ({
            let t = lock(&self.table);
            t.lrps.get(&guid).map(|l| (l.start.clone(), l.stop.subscribe()))
        }) else {
            return;
        };
        let d = start.desired_lrp.clone().unwrap_or_default();
        let span =
            tracing::info_span!("lrp", instance_guid = %guid, process_guid = %d.process_guid, index = start.index);
        async move {
            let key = self.key_of(&start);
            let ik = self.instance_key(&guid);
            if !restored {
                self.reporter.claim(key.clone(), ik.clone());
            }
            let end = self.lrp_lifecycle(&guid, &start, &d, restored, stop).await;
            self.set_phase(&guid, LrpPhase::Completed);
            let tree = lock(&self.table).lrps.get_mut(&guid).and_then(|l| l.tree.take());
            if let Some(mut tree) = tree {
                tree.stop().await;
            }
            match end {
                End::Crashed(reason) => {
                    tracing::info!(reason = %reason, "instance crashed");
                    self.cfg.metrics.crashed(&reason);
                    self.reporter.crash(key, ik, reason);
                    self.destroy_container(&guid, &d, start.index).await;
                }
                End::Stopped(StopReason::Discard) => {
                    self.destroy_container(&guid, &d, start.index).await;
                }
                End::Stopped(_) => {
                    self.cell_line(&d, start.index, &format!("Cell {} stopping instance {guid}", self.cfg.cell_id));
                    self.destroy_container(&guid, &d, start.index).await;
                    self.reporter.remove(key, ik);
                }
            }
            self.forget_record("lrps", &guid);
            let mut t = lock(&self.table);
            t.lrps.remove(&guid);
            t.cpu.remove(&guid);
        }
        .instrument(span)
        .await
    }

    fn set_phase(&self, guid: &str, phase: LrpPhase) {
        if let Some(l) = lock(&self.table).lrps.get_mut(guid) {
            l.phase = phase;
        }
    }

    fn cell_line(&self, d: &pb::DesiredLrp, index: i32, msg: &str) {
        super::logs::cell_line(&self.logs, &d.log_guid, "CELL", index, msg);
    }

    fn health_line(&self, d: &pb::DesiredLrp, index: i32, msg: &str) {
        let source = d.check_definition.as_ref().map(|c| c.log_source.as_str()).filter(|s| !s.is_empty());
        super::logs::cell_line(&self.logs, &d.log_guid, source.unwrap_or("HEALTH"), index, msg);
    }

    pub(super) fn app_source(d: &pb::DesiredLrp) -> String {
        if d.log_source.is_empty() { "APP/PROC/WEB".to_string() } else { d.log_source.clone() }
    }

    pub(super) fn writers(&self, log_guid: &str, source: &str, index: i32, guid: &str) -> (LineWriter, LineWriter) {
        let limiter = lock(&self.table).lrps.get(guid).and_then(|l| l.limiter.clone());
        let w = |err| {
            LineWriter::new(
                self.logs.clone(),
                log_guid.to_string(),
                source.to_string(),
                index.to_string(),
                err,
                MAX_LOG_LINE,
                limiter.clone(),
            )
        };
        (w(false), w(true))
    }

    async fn lrp_lifecycle(
        self: &Arc<Self>,
        guid: &str,
        start: &pb::LrpStart,
        d: &pb::DesiredLrp,
        restored: bool,
        mut stop: watch::Receiver<Option<StopReason>>,
    ) -> End {
        let index = start.index;
        let (addrs, exit) = if restored {
            match self.reattach(guid, d, index).await {
                Ok(v) => v,
                Err(e) => return End::Crashed(format!("{}: {e}", Self::app_source(d))),
            }
        } else {
            // The create runs to its end even if a stop comes meanwhile:
            // dropped half way, it left its depot entry behind, unknown to
            // the destroy (as with tasks).
            if let Err(e) = self.create_container(guid, d, index).await {
                return End::Crashed(e);
            }
            let created = tokio::select! {
                r = self.run_in_container(guid, d, index) => r,
                r = super::stopped(&mut stop) => return End::Stopped(r),
            };
            match created {
                Ok(v) => v,
                Err(e) => return End::Crashed(e),
            }
        };
        if let Some(r) = *stop.borrow() {
            return End::Stopped(r);
        }
        self.set_phase(guid, LrpPhase::Created);
        let ip = addrs.container_ip.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        // Checks and the interface watch look for the container's veth: an
        // address without it is not this container any more.
        let target = health::Target::container(ip);
        let checks = d.check_definition.clone().unwrap_or_default();
        let probes: Vec<Probe> = checks.checks.iter().filter_map(|c| Probe::from_check(c).ok()).collect();
        let readiness: Vec<Probe> = checks.readiness_checks.iter().filter_map(|c| Probe::from_check(c).ok()).collect();
        let mut exit = exit;
        let exited = |ended: Option<Ended>| async move {
            match ended {
                Some(Ended::Process(source, Some(code))) => {
                    let oom = container::out_of_memory(&self.gardener, guid).await;
                    if oom {
                        self.cfg.metrics.oom_kills.inc();
                    }
                    self.cell_line(d, index, &format!("Exit status {code}"));
                    End::Crashed(container::exit_reason(&source, code, oom))
                }
                // Diego's reason is the tree's error; empty when it succeeded.
                Some(Ended::Tree(res)) => End::Crashed(res.err().map(|e| e.to_string()).unwrap_or_default()),
                _ => End::Crashed(format!("{}: the container's init went away", Self::app_source(d))),
            }
        };
        // Diego runs the monitor action when there is no check definition.
        let monitor = d.monitor.as_ref().filter(|_| probes.is_empty() && d.action.is_some()).map(|m| {
            let spec = self.lrp_tree_spec(guid, d, index, &addrs, m, restored);
            (m, self.container_steps(&spec, true))
        });
        let timeout = match d.start_timeout_ms {
            0 => DEFAULT_START_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };

        // Startup: healthy, or never healthy within start_timeout_ms.
        if !probes.is_empty() {
            self.health_line(d, index, "Starting health monitoring of container");
            tokio::select! {
                r = health::until_healthy(&probes, target.clone(), timeout) => {
                    self.cfg.metrics.health_check(check_kind(&probes), "startup", r.is_ok());
                    if let Err(reason) = r {
                        self.health_line(d, index, &format!("Failed after {}: startup health check never passed.", health::go_duration(timeout)));
                        return End::Crashed(reason);
                    }
                },
                ended = &mut exit => return exited(ended.ok()).await,
                r = super::stopped(&mut stop) => return End::Stopped(r),
            }
            self.health_line(d, index, "Container became healthy");
        } else if let Some((m, steps)) = &monitor {
            self.health_line(d, index, "Starting health monitoring of container");
            tokio::select! {
                r = actions::until_healthy(steps, m, timeout, actions::UNHEALTHY_INTERVAL) => {
                    self.cfg.metrics.health_check("monitor", "startup", r.is_ok());
                    if let Err(reason) = r {
                        return End::Crashed(reason);
                    }
                },
                ended = &mut exit => return exited(ended.ok()).await,
                r = super::stopped(&mut stop) => return End::Stopped(r),
            }
            self.health_line(d, index, "Container became healthy");
        } else if let Err(reason) = target.interface_present() {
            return End::Crashed(reason);
        }
        let net = pb::ActualLrpNetInfo {
            address: addrs.host_ip.clone(),
            instance_address: addrs.container_ip.clone(),
            ports: addrs.ports.clone(),
        };
        let routable = readiness.is_empty();
        if let Some(l) = lock(&self.table).lrps.get_mut(guid) {
            l.phase = LrpPhase::Running;
            l.net = Some(net.clone());
            l.routable = routable;
        }
        self.reporter.start(self.key_of(start), self.instance_key(guid), net.clone(), routable);
        let readiness_task = (!readiness.is_empty()).then(|| {
            let me = self.clone();
            let (guid, start, d) = (guid.to_string(), start.clone(), d.clone());
            let target = target.clone();
            tokio::spawn(async move { me.readiness_loop(&guid, &start, &d, readiness, target, net).await })
        });

        // Liveness: until the process exits, a check fails, or it is stopped.
        let end = tokio::select! {
            reason = health::until_unhealthy(&probes, target.clone()), if !probes.is_empty() => {
                self.cfg.metrics.health_check(check_kind(&probes), "liveness", false);
                self.health_line(d, index, "Container became unhealthy");
                End::Crashed(reason)
            },
            reason = async {
                match &monitor {
                    Some((m, steps)) => actions::until_unhealthy(steps, m, actions::HEALTHY_INTERVAL).await,
                    None => std::future::pending().await,
                }
            } => {
                self.cfg.metrics.health_check("monitor", "liveness", false);
                self.health_line(d, index, "Container became unhealthy");
                End::Crashed(reason)
            },
            reason = health::until_interface_lost(&target) => {
                tracing::warn!(handle = %guid, reason = %reason, "instance lost its network interface");
                self.cell_line(d, index, &format!("Cell {} crashing instance {guid}: {reason}", self.cfg.cell_id));
                End::Crashed(reason)
            },
            ended = &mut exit => exited(ended.ok()).await,
            r = super::stopped(&mut stop) => End::Stopped(r),
        };
        if let Some(t) = readiness_task {
            t.abort();
        }
        end
    }

    /// Readiness flips `routable`; each flip is reported as a start.
    async fn readiness_loop(
        &self,
        guid: &str,
        start: &pb::LrpStart,
        d: &pb::DesiredLrp,
        probes: Vec<Probe>,
        target: health::Target,
        net: pb::ActualLrpNetInfo,
    ) {
        loop {
            health::until_ready(&probes, target.clone()).await;
            self.health_line(
                d,
                start.index,
                "Container passed the readiness health check. Container marked ready and added to route pool.",
            );
            self.set_routable(guid, true);
            self.reporter.start(self.key_of(start), self.instance_key(guid), net.clone(), true);
            health::until_not_ready(&probes, target.clone()).await;
            self.health_line(
                d,
                start.index,
                "Container failed the readiness health check. Container marked not ready and removed from route pool.",
            );
            self.set_routable(guid, false);
            self.reporter.start(self.key_of(start), self.instance_key(guid), net.clone(), false);
        }
    }

    fn set_routable(&self, guid: &str, routable: bool) {
        if let Some(l) = lock(&self.table).lrps.get_mut(guid) {
            l.routable = routable;
        }
    }

    /// Creates the instance's container. Errors are crash reasons.
    async fn create_container(&self, guid: &str, d: &pb::DesiredLrp, index: i32) -> Result<(), String> {
        let cell = &self.cfg.cell_id;
        self.cell_line(d, index, &format!("Cell {cell} creating container for instance {guid}"));
        let properties = Properties::from([
            (ROLE_PROPERTY.to_string(), "lrp".to_string()),
            ("process-guid".to_string(), d.process_guid.clone()),
            ("instance-guid".to_string(), guid.to_string()),
            ("process-index".to_string(), index.to_string()),
            ("domain".to_string(), d.domain.clone()),
            ("log-guid".to_string(), d.log_guid.clone()),
        ]);
        let rootfs = self.rootfs(&d.rootfs);
        let recipe = Recipe {
            handle: guid,
            rootfs: &rootfs,
            memory_mb: d.memory_mb,
            disk_mb: d.disk_mb,
            max_pids: d.max_pids,
            cpu_weight: d.cpu_weight,
            ports: &d.ports,
            egress: &d.egress_rules,
            properties,
            lifecycle_dir: d.action.is_none().then_some(self.cfg.lifecycle_dir.as_path()),
            privileged: d.privileged,
            image_username: &d.image_username,
            image_password: &d.image_password,
        };
        let fail = |e: ExecutorError| {
            self.cell_line(d, index, &format!("Cell {cell} failed to create container for instance {guid}: {e}"));
            format!("failed to create container: {e}")
        };
        let spec = recipe.spec().map_err(fail)?;
        self.gardener.create(spec).await.map_err(|e| fail(e.into()))?;
        self.cell_line(d, index, &format!("Cell {cell} successfully created container for instance {guid}"));
        Ok(())
    }

    /// Puts the droplet into the created container and starts the app (or
    /// runs the LRP's action). Errors are crash reasons.
    async fn run_in_container(
        self: &Arc<Self>,
        guid: &str,
        d: &pb::DesiredLrp,
        index: i32,
    ) -> Result<(Addresses, Exit), String> {
        let rootfs = self.rootfs(&d.rootfs);
        if let Some(action) = &d.action {
            let addrs = container::addresses(&self.gardener, guid).await.map_err(|e| e.to_string())?;
            let exit = self.run_tree(guid, d, index, &addrs, action, false).await?;
            return Ok((addrs, exit));
        }
        let path = self.put_droplet(guid, &d.droplet_key, d.disk_mb, &d.log_guid, "CELL", index).await?;
        let addrs = container::addresses(&self.gardener, guid).await.map_err(|e| e.to_string())?;
        let env = super::env::lrp_env(d, index, guid, &addrs.host_ip, &addrs.container_ip, &addrs.ports);
        let user = AppUser::of_app(path, &rootfs);
        let sshd = d.ssh.as_ref().filter(|s| s.enabled).map(|s| sshd_process(s, env.clone(), user));
        let spec = app_process(path, &d.start_command, &d.execution_metadata, env, user);
        let (pid, conn) = self.gardener.run(guid, &spec).await.map_err(|e| format!("failed to start the app: {e}"))?;
        let _ = self.gardener.set_property(guid, PROCESS_PROPERTY, &pid);
        let mut followed = vec![(Self::app_source(d), conn)];
        if let Some(spec) = sshd {
            let (pid, conn) =
                self.gardener.run(guid, &spec).await.map_err(|e| format!("failed to start the sshd: {e}"))?;
            let _ = self.gardener.set_property(guid, SSHD_PROCESS_PROPERTY, &pid);
            followed.push((SSHD_SOURCE.to_string(), conn));
        }
        Ok((addrs, self.follow_all(d, index, guid, followed)))
    }

    /// Follows the instance's processes; the first exit ends the instance.
    fn follow_all(&self, d: &pb::DesiredLrp, index: i32, guid: &str, processes: Vec<(String, UnixStream)>) -> Exit {
        let (tx, rx) = oneshot::channel();
        let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
        for (source, conn) in processes {
            let (out, err) = self.writers(&d.log_guid, &source, index, guid);
            let tx = tx.clone();
            tokio::spawn(async move {
                let code = container::follow(conn, out, err).await;
                if let Some(tx) = tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = tx.send(Ended::Process(source, code));
                }
            });
        }
        rx
    }

    /// Streams the droplet in when there is one; returns whether the app runs
    /// through the launcher (droplet) or straight on the rootfs.
    pub(super) async fn put_droplet(
        &self,
        guid: &str,
        key: &str,
        disk_mb: u32,
        log_guid: &str,
        source: &str,
        index: i32,
    ) -> Result<bool, String> {
        if key.is_empty() {
            return Ok(false);
        }
        // Diego's download step: "Downloading droplet...", then the size
        // once it is in the container, or an error line saying which part
        // failed.
        let out = |m: &str| super::logs::cell_line(&self.logs, log_guid, source, index, m);
        let err = |m: &str| super::logs::cell_error_line(&self.logs, log_guid, source, index, m);
        out("Downloading droplet...");
        let (path, size) = match self.droplet(key).await {
            Ok(d) => d,
            Err(e) => {
                err("Downloading droplet failed");
                return Err(format!("failed to download the droplet: {e}"));
            }
        };
        let limit = if disk_mb == 0 { u64::MAX } else { u64::from(disk_mb) << 20 };
        if let Err(e) = container::stream_droplet(&self.gardener, guid, &path, limit).await {
            err(&format!("Copying droplet into the container failed: {e}"));
            return Err(format!("failed to put the droplet in the container: {e}"));
        }
        out(&format!("Downloaded droplet ({})", celld_base::size::byte_size(size)));
        Ok(true)
    }

    /// After a restart: the container's addresses and its process again.
    async fn reattach(
        self: &Arc<Self>,
        guid: &str,
        d: &pb::DesiredLrp,
        index: i32,
    ) -> Result<(Addresses, Exit), ExecutorError> {
        let addrs = container::addresses(&self.gardener, guid).await?;
        if let Some(action) = &d.action {
            let exit =
                self.run_tree(guid, d, index, &addrs, action, true).await.map_err(ExecutorError::Precondition)?;
            tracing::info!("picked the instance's action tree up again");
            return Ok((addrs, exit));
        }
        let pid = self
            .gardener
            .property(guid, PROCESS_PROPERTY)
            .map_err(|_| ExecutorError::NotFound("the instance's process was never started".into()))?;
        let mut followed = vec![(Self::app_source(d), self.gardener.attach(guid, &pid).await?)];
        if let Ok(pid) = self.gardener.property(guid, SSHD_PROCESS_PROPERTY) {
            followed.push((SSHD_SOURCE.to_string(), self.gardener.attach(guid, &pid).await?));
        }
        tracing::info!("re-attached to the instance's processes");
        Ok((addrs, self.follow_all(d, index, guid, followed)))
    }

    fn lrp_tree_spec<'a>(
        &self,
        guid: &'a str,
        d: &'a pb::DesiredLrp,
        index: i32,
        addrs: &Addresses,
        action: &'a celld_proto::diego::bbs::Action,
        resuming: bool,
    ) -> TreeSpec<'a> {
        let has_checks = d.check_definition.as_ref().is_some_and(|c| !c.checks.is_empty());
        TreeSpec {
            guid,
            log_guid: &d.log_guid,
            index,
            env: super::env::lrp_env(d, index, guid, &addrs.host_ip, &addrs.container_ip, &addrs.ports),
            legacy_download_user: &d.legacy_download_user,
            disk_mb: d.disk_mb,
            source: Self::app_source(d),
            cached_dependencies: &d.cached_dependencies,
            setup: d.setup.as_ref(),
            action,
            resuming,
            wait_on_success: has_checks || d.monitor.is_some(),
        }
    }

    /// Starts (or, after a restart, picks up) the instance's action tree;
    /// its end is the instance's exit.
    async fn run_tree(
        self: &Arc<Self>,
        guid: &str,
        d: &pb::DesiredLrp,
        index: i32,
        addrs: &Addresses,
        action: &celld_proto::diego::bbs::Action,
        resuming: bool,
    ) -> Result<Exit, String> {
        let tree = self.start_tree(self.lrp_tree_spec(guid, d, index, addrs, action, resuming)).await?;
        if let Some(l) = lock(&self.table).lrps.get_mut(guid) {
            l.tree = Some(tree.stop);
        }
        let (tx, rx) = oneshot::channel();
        let ended = tree.ended;
        tokio::spawn(async move {
            if let Ok(res) = ended.await {
                let _ = tx.send(Ended::Tree(res));
            }
        });
        Ok(rx)
    }

    async fn destroy_container(&self, guid: &str, d: &pb::DesiredLrp, index: i32) {
        let cell = &self.cfg.cell_id;
        self.cell_line(d, index, &format!("Cell {cell} destroying container for instance {guid}"));
        match self.gardener.destroy(guid).await {
            Ok(()) => {
                self.cell_line(d, index, &format!("Cell {cell} successfully destroyed container for instance {guid}"))
            }
            Err(celld_garden::gardener::GardenError::ContainerNotFound(_)) => {}
            Err(e) => tracing::warn!(error = %e, "destroying the container failed"),
        }
    }
}

/// The instance's sshd (`/tmp/lifecycle/sshd`, as CC's ssh action runs
/// diego-sshd): the app's environment for its sessions, and its keys in the
/// environment, so they never show in `ps`.
fn sshd_process(ssh: &pb::SshSettings, mut env: Vec<String>, user: AppUser) -> ProcessSpec {
    // A Docker image's user is the image's: its HOME and PATH are its own.
    if user.name == "vcap" {
        for (k, v) in [("HOME", "/home/vcap/app"), ("USER", "vcap"), ("PATH", "/usr/local/bin:/usr/bin:/bin")] {
            if !env.iter().any(|e| e.starts_with(&format!("{k}="))) {
                env.push(format!("{k}={v}"));
            }
        }
    }
    env.push(format!("SSHD_HOSTKEY={}", ssh.host_key_pem));
    env.push(format!("SSHD_AUTHKEY={}", ssh.authorized_key));
    ProcessSpec {
        path: format!("{LIFECYCLE_MOUNT}/sshd"),
        args: vec![format!("--address={SSHD_ADDRESS}")],
        env,
        user: user.name.into(),
        dir: user.dir.into(),
        ..Default::default()
    }
}

/// Who an app's processes run as: vcap in its home for a droplet or on a
/// stack, as CF does; a Docker app (an image, no droplet) as the image's user
/// in its working directory (Garden's defaults for a process that names
/// neither).
#[derive(Clone, Copy)]
pub(super) struct AppUser {
    name: &'static str,
    dir: &'static str,
}

impl AppUser {
    pub(super) fn of_app(droplet: bool, rootfs: &str) -> Self {
        if !droplet && celld_image::ImageStore::is_image_uri(rootfs) {
            Self { name: "", dir: "" }
        } else {
            Self { name: "vcap", dir: "/home/vcap" }
        }
    }
}

/// The app's process: through the launcher when there is a droplet (as CF
/// runs `/tmp/lifecycle/launcher app CMD METADATA`), else `sh -c CMD`.
pub(super) fn app_process(
    droplet: bool,
    command: &str,
    metadata: &str,
    env: Vec<String>,
    user: AppUser,
) -> ProcessSpec {
    let (path, args) = if droplet {
        (format!("{LIFECYCLE_MOUNT}/launcher"), vec!["app".to_string(), command.to_string(), metadata.to_string()])
    } else {
        ("/bin/sh".to_string(), vec!["-c".to_string(), command.to_string()])
    };
    ProcessSpec { path, args, env, user: user.name.into(), dir: user.dir.into(), ..Default::default() }
}

/// The metrics label of an instance's checks: its first check's type.
fn check_kind(probes: &[health::Probe]) -> &'static str {
    match probes.first() {
        Some(health::Probe::Http { .. }) => "http",
        _ => "tcp",
    }
}
