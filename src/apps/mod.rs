//! (Long because: every Apps call's rules in one place (apps, packages, droplets, starts, services, tasks, events); issue 18 splits it by responsibility.)
//!
//! The local-mode app layer (service `Apps`, proto/celld/v1/apps.proto): what
//! Cloud Controller is to Diego, kept thin. It keeps apps, routes, services,
//! bindings, events and tasks in SQLite (`store`), stages through the
//! in-process stager, and turns a started app into a DesiredLRP on the
//! scheduler (over gRPC, like any other client). It follows the scheduler's
//! event stream to record `app.crash` events and to keep the router's table of
//! routable instances current.

pub mod service;
pub mod ssh;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tonic::transport::Channel;

use self::store::{AppRecord, BindingRecord, Droplet, EventRecord, ServiceRecord, Store, TaskRecord};
use crate::blobstore::{Blobstore, BlobstoreError};
use crate::executor::logs::{LogHub, now_ns};
use crate::grpc::pb;
use crate::grpc::pb::cell_client::CellClient;
use crate::grpc::pb::scheduler_client::SchedulerClient;
use crate::router::{AccessLog, Backend, RouteTable};
use crate::staging::stager::{Event, Outcome, StageRequest, Stager};
use crate::staging::{StagingError, new_guid};

#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("app store: {0}")]
    Store(String),
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error(transparent)]
    Blobstore(#[from] BlobstoreError),
    /// A call to the scheduler or a cell failed; its status passes through.
    #[error("{}", .0.message())]
    Upstream(#[from] tonic::Status),
}

/// CF's defaults for a pushed app.
pub const DEFAULT_MEMORY_MB: u32 = 256;
pub const DEFAULT_DISK_MB: u32 = 1024;
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: u32 = 60;
/// The port every CF app listens on ($PORT).
pub const APP_PORT: u32 = 8080;
const MAX_INSTANCES: u32 = 1000;
const MAX_HEALTH_CHECK_TIMEOUT: u32 = 600;
const DOMAIN: &str = "cf-apps";
const TASK_DOMAIN: &str = "cf-tasks";
const ACTOR: &str = "admin";

pub struct AppsConfig {
    pub db: PathBuf,
    /// The shared domain routes live under, e.g. `apps.localhost`.
    pub domain: String,
    pub default_space: String,
    /// The scheduler's gRPC address.
    pub scheduler: String,
    /// The router's port, for the URLs shown to people ("" when 80).
    pub router_port: u16,
}

pub struct AppLayer {
    store: Store,
    cfg: AppsConfig,
    pub(crate) stager: Arc<Stager>,
    blobs: Arc<Blobstore>,
    logs: Arc<LogHub>,
    routes: Arc<RouteTable>,
    scheduler: SchedulerClient<Channel>,
    /// Changes of an app's desired state run one at a time, so a start and a
    /// stop never interleave their scheduler calls.
    ops: tokio::sync::Mutex<()>,
    routes_changed: Notify,
    /// Processes being stopped: out of the router's table before the
    /// scheduler is told, and kept out by every rebuild until they are gone.
    withdrawn: Mutex<HashSet<String>>,
    /// A rebuild and a withdrawal never interleave (a rebuild computed before
    /// a withdrawal must not put the instances back after it).
    route_sync: tokio::sync::Mutex<()>,
    ssh: ssh::SshState,
}

impl AppLayer {
    pub fn new(
        cfg: AppsConfig,
        stager: Arc<Stager>,
        blobs: Arc<Blobstore>,
        logs: Arc<LogHub>,
        routes: Arc<RouteTable>,
    ) -> Result<Arc<Self>, AppsError> {
        let store = Store::open(&cfg.db)?;
        let endpoint = crate::grpc::endpoint(&cfg.scheduler)
            .map_err(|e| AppsError::InvalidArgument(format!("scheduler address {}: {e}", cfg.scheduler)))?
            .connect_timeout(Duration::from_secs(2));
        let scheduler = SchedulerClient::new(endpoint.connect_lazy());
        Ok(Arc::new(Self {
            store,
            cfg,
            stager,
            blobs,
            logs,
            routes,
            scheduler,
            ops: tokio::sync::Mutex::new(()),
            routes_changed: Notify::new(),
            withdrawn: Mutex::default(),
            route_sync: tokio::sync::Mutex::new(()),
            ssh: ssh::SshState::default(),
        }))
    }

    /// Starts following the scheduler (crash events, routes).
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(self.clone().follow_events());
        tokio::spawn(self.clone().sync_routes_forever());
    }

    pub fn domain(&self) -> &str {
        &self.cfg.domain
    }

    /// An app's URL as a person types it.
    pub fn url(&self, host: &str) -> String {
        match self.cfg.router_port {
            80 => format!("http://{host}/"),
            p => format!("http://{host}:{p}/"),
        }
    }

    fn sched(&self) -> SchedulerClient<Channel> {
        self.scheduler.clone()
    }

    fn space<'a>(&'a self, space: &'a str) -> Result<&'a str, AppsError> {
        let s = if space.is_empty() { self.cfg.default_space.as_str() } else { space };
        validate_space(s)?;
        Ok(s)
    }

    /// An app by name (or guid) in a space.
    pub fn find(&self, r: &pb::AppRef) -> Result<AppRecord, AppsError> {
        let space = self.space(&r.space)?;
        if r.name.is_empty() {
            return Err(AppsError::InvalidArgument("an app name is required".into()));
        }
        if let Some(a) = self.store.app_by_name(space, &r.name)? {
            return Ok(a);
        }
        if let Some(a) = self.store.app(&r.name)? {
            return Ok(a);
        }
        Err(AppsError::NotFound(format!("App '{}' not found in space '{space}'.", r.name)))
    }

    fn event(&self, app: &AppRecord, kind: &str, metadata: BTreeMap<String, String>) {
        let e = EventRecord {
            guid: new_guid(),
            app_guid: app.guid.clone(),
            kind: kind.to_string(),
            actor: ACTOR.to_string(),
            timestamp: now_ns(),
            metadata,
        };
        if let Err(err) = self.store.add_event(&e) {
            tracing::warn!(app_guid = %app.guid, event = kind, error = %err, "could not record an event");
        }
    }

    // ---------------------------------------------------------------- apps

    pub async fn create_app(&self, r: pb::CreateAppRequest) -> Result<AppRecord, AppsError> {
        let space = self.space(&r.space)?.to_string();
        validate_app_name(&r.name)?;
        let host = if r.hostname.is_empty() { host_label(&r.name)? } else { r.hostname.to_lowercase() };
        validate_host_label(&host)?;
        let now = now_ns();
        let mut app = AppRecord {
            guid: new_guid(),
            name: r.name.clone(),
            space,
            state: "STOPPED".into(),
            instances: r.instances,
            memory_mb: if r.memory_mb == 0 { DEFAULT_MEMORY_MB } else { r.memory_mb },
            disk_mb: if r.disk_mb == 0 { DEFAULT_DISK_MB } else { r.disk_mb },
            health_check_type: if r.health_check_type.is_empty() { "port".into() } else { r.health_check_type },
            health_check_endpoint: r.health_check_endpoint,
            health_check_timeout: r.health_check_timeout,
            command: r.command,
            buildpacks: r.buildpacks,
            stack: r.stack,
            env: r.env.into_iter().collect(),
            routes: if r.no_route { vec![] } else { vec![format!("{host}.{}", self.cfg.domain)] },
            package_state: "PENDING".into(),
            // CC's default_app_ssh_access.
            enable_ssh: true,
            created_at: now,
            updated_at: now,
            ..Default::default()
        };
        self.validate_settings(&app)?;
        let _op = self.ops.lock().await;
        self.store.create_app(&app)?;
        let mut meta = BTreeMap::new();
        meta.insert("name".into(), app.name.clone());
        meta.insert("instances".into(), app.instances.to_string());
        meta.insert("memory".into(), app.memory_mb.to_string());
        self.event(&app, "audit.app.create", meta);
        for route in &app.routes {
            self.event(&app, "audit.app.map-route", BTreeMap::from([("route".to_string(), route.clone())]));
        }
        app.updated_at = now;
        tracing::info!(app_guid = %app.guid, name = %app.name, space = %app.space, "app created");
        self.routes_changed.notify_one();
        Ok(app)
    }

    fn validate_settings(&self, app: &AppRecord) -> Result<(), AppsError> {
        if app.instances > MAX_INSTANCES {
            return Err(AppsError::InvalidArgument(format!(
                "instances {} is too many: at most {MAX_INSTANCES}",
                app.instances
            )));
        }
        if !matches!(app.health_check_type.as_str(), "port" | "http" | "process") {
            return Err(AppsError::InvalidArgument(format!(
                "health check type {:?} is not valid: use port, http or process",
                app.health_check_type
            )));
        }
        if !app.health_check_endpoint.is_empty() && !app.health_check_endpoint.starts_with('/') {
            return Err(AppsError::InvalidArgument(format!(
                "health check endpoint {:?} must be a path starting with /",
                app.health_check_endpoint
            )));
        }
        if app.health_check_endpoint.chars().any(|c| c.is_control() || c == ' ') {
            return Err(AppsError::InvalidArgument("health check endpoint must not contain spaces".into()));
        }
        if app.health_check_timeout > MAX_HEALTH_CHECK_TIMEOUT {
            return Err(AppsError::InvalidArgument(format!(
                "health check timeout {}s is too long: at most {MAX_HEALTH_CHECK_TIMEOUT}s",
                app.health_check_timeout
            )));
        }
        if app.memory_mb > 1 << 20 || app.disk_mb > 1 << 22 {
            return Err(AppsError::InvalidArgument("memory or disk quota is larger than any cell".into()));
        }
        for name in app.env.keys() {
            validate_env_name(name)?;
        }
        for bp in &app.buildpacks {
            if self.stager.registry.get(bp).is_none() && self.stager.registry.get(&format!("{bp}_buildpack")).is_none()
            {
                return Err(AppsError::InvalidArgument(format!(
                    "buildpack {bp:?} not found: `cellctl buildpacks` lists the buildpacks this cell has"
                )));
            }
        }
        if !app.stack.is_empty() && !self.stager.stack_exists(&app.stack) {
            return Err(AppsError::InvalidArgument(format!(
                "stack {:?} not found: a stack is a preloaded rootfs of the cell (e.g. tiny)",
                app.stack
            )));
        }
        if app.command.contains('\0') {
            return Err(AppsError::InvalidArgument("the start command contains a NUL byte".into()));
        }
        Ok(())
    }

    pub async fn update_app(&self, r: pb::UpdateAppRequest) -> Result<AppRecord, AppsError> {
        let app_ref = r.app.clone().unwrap_or_default();
        let _op = self.ops.lock().await;
        let mut app = self.find(&app_ref)?;
        let before = app.clone();
        if let Some(n) = r.instances {
            app.instances = n;
        }
        if let Some(m) = r.memory_mb.filter(|m| *m > 0) {
            app.memory_mb = m;
        }
        if let Some(d) = r.disk_mb.filter(|d| *d > 0) {
            app.disk_mb = d;
        }
        if let Some(t) = r.health_check_type {
            app.health_check_type = t;
        }
        if let Some(e) = r.health_check_endpoint {
            app.health_check_endpoint = e;
        }
        if let Some(t) = r.health_check_timeout {
            app.health_check_timeout = t;
        }
        if let Some(c) = r.command {
            app.command = c;
        }
        if r.set_buildpacks {
            app.buildpacks = r.buildpacks;
        }
        if let Some(s) = r.stack {
            app.stack = s;
        }
        for (k, v) in r.set_env {
            app.env.insert(k, v);
        }
        for k in &r.unset_env {
            app.env.remove(k);
        }
        if let Some(ssh) = r.enable_ssh {
            app.enable_ssh = ssh;
        }
        self.validate_settings(&app)?;
        app.updated_at = now_ns();
        // Scaling a started app reaches its instances at once.
        if app.state == "STARTED" && app.instances != before.instances && !app.process_guid.is_empty() {
            self.sched()
                .update_desired_lrp(pb::UpdateDesiredLrpRequest {
                    process_guid: app.process_guid.clone(),
                    instances: Some(i32::try_from(app.instances).unwrap_or(i32::MAX)),
                    ..Default::default()
                })
                .await?;
        }
        self.store.put_app(&app)?;
        let scaled =
            app.instances != before.instances || app.memory_mb != before.memory_mb || app.disk_mb != before.disk_mb;
        if scaled {
            let meta = BTreeMap::from([
                ("instances".to_string(), app.instances.to_string()),
                ("memory_in_mb".to_string(), app.memory_mb.to_string()),
                ("disk_in_mb".to_string(), app.disk_mb.to_string()),
            ]);
            self.event(&app, "audit.app.process.scale", meta);
        }
        if !scaled || app.env != before.env || app.command != before.command || app.enable_ssh != before.enable_ssh {
            let mut meta = BTreeMap::new();
            if app.env != before.env {
                meta.insert("environment_variables".to_string(), "[PRIVATE DATA HIDDEN]".to_string());
            }
            if app.enable_ssh != before.enable_ssh {
                meta.insert("enable_ssh".to_string(), app.enable_ssh.to_string());
            }
            self.event(&app, "audit.app.update", meta);
        }
        Ok(app)
    }

    pub fn list_apps(&self, space: &str, all: bool) -> Result<Vec<AppRecord>, AppsError> {
        if all { self.store.apps(None) } else { self.store.apps(Some(self.space(space)?)) }
    }

    pub async fn delete_app(&self, r: &pb::AppRef) -> Result<(), AppsError> {
        let _op = self.ops.lock().await;
        let app = self.find(r)?;
        self.event(&app, "audit.app.delete-request", BTreeMap::new());
        if !app.process_guid.is_empty() {
            self.withdraw(&app).await;
            if let Err(e) = self.remove_lrp(&app.process_guid).await {
                self.unwithdraw(&app.process_guid);
                return Err(e);
            }
        }
        self.store.delete_app(&app.guid)?;
        // Droplets are the app's own; packages are shared by checksum.
        for key in app.droplet.iter().map(|d| &d.key).chain(&app.old_droplets) {
            let _ = self.blobs.delete(key).await;
        }
        let _ = self.blobs.delete(&crate::staging::stager::cache_key(&app.guid)).await;
        self.routes_changed.notify_one();
        tracing::info!(app_guid = %app.guid, name = %app.name, "app deleted");
        Ok(())
    }

    async fn remove_lrp(&self, process_guid: &str) -> Result<(), AppsError> {
        match self.sched().remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: process_guid.into() }).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(s.into()),
        }
    }

    /// Records an uploaded package as the app's latest.
    pub async fn set_package(&self, r: &pb::AppRef, package: &pb::Package) -> Result<AppRecord, AppsError> {
        let _op = self.ops.lock().await;
        let mut app = self.find(r)?;
        app.package_key = package.key.clone();
        app.package_uploaded_at = now_ns();
        app.updated_at = app.package_uploaded_at;
        self.store.put_app(&app)?;
        self.event(&app, "audit.app.package.upload", BTreeMap::from([("size".to_string(), package.size.to_string())]));
        Ok(app)
    }

    /// Stages the app's latest package. Events go to `tx` while the client
    /// listens; the outcome is recorded whether it does or not.
    pub async fn stage(self: &Arc<Self>, r: &pb::AppRef, tx: mpsc::Sender<pb::StagingEvent>) -> Result<(), AppsError> {
        let app = self.find(r)?;
        if app.package_key.is_empty() {
            return Err(AppsError::FailedPrecondition(format!(
                "app '{}' has no package: upload one first (cellctl push DIR)",
                app.name
            )));
        }
        let env = self.app_env(&app, None)?;
        let req = StageRequest {
            app_guid: app.guid.clone(),
            app_name: app.name.clone(),
            space_name: app.space.clone(),
            space_guid: String::new(),
            package_key: app.package_key.clone(),
            stack: app.stack.clone(),
            buildpacks: app.buildpacks.clone(),
            env: env.into_iter().filter(|(k, _)| k != "VCAP_APPLICATION").collect(),
            memory_mb: 0,
            disk_mb: 0,
            timeout: None,
        };
        let watch = self.stager.stage(req).await?;
        let this = self.clone();
        tokio::spawn(async move {
            use crate::grpc::stager::{event, log_event, proto_failure, proto_result};
            use pb::staging_event::Event as E;
            use tokio::sync::broadcast::error::RecvError;
            let guid = watch.staging_guid;
            let mut events = watch.events;
            let mut listening =
                tx.send(event(E::Started(pb::StagingStarted { staging_guid: guid.clone() }))).await.is_ok();
            loop {
                let out = match events.recv().await {
                    Ok(Event::Log(l)) => log_event(&guid, l.message, l.stderr, l.timestamp),
                    Err(RecvError::Lagged(n)) => log_event(
                        &guid,
                        format!("[celld: {n} staging log lines were dropped because this client read them too slowly]"),
                        true,
                        0,
                    ),
                    Ok(Event::Done(rec)) => {
                        let done = match &rec.outcome {
                            Outcome::Succeeded(s) => {
                                this.staged(&app.guid, Ok(s)).await;
                                E::Result(proto_result(&guid, s))
                            }
                            Outcome::Failed(f) => {
                                this.staged(&app.guid, Err(format!("{} - {}", f.reason, f.message))).await;
                                E::Failure(proto_failure(&guid, f))
                            }
                            Outcome::Running => continue,
                        };
                        if listening {
                            let _ = tx.send(event(done)).await;
                        }
                        return;
                    }
                    Err(RecvError::Closed) => return,
                };
                if listening {
                    listening = tx.send(out).await.is_ok();
                }
            }
        });
        Ok(())
    }

    async fn staged(&self, app_guid: &str, outcome: Result<&crate::staging::stager::StagingSuccess, String>) {
        let _op = self.ops.lock().await;
        let Ok(Some(mut app)) = self.store.app(app_guid) else { return };
        match outcome {
            Ok(s) => {
                let old = app.droplet.take();
                app.droplet = Some(Droplet {
                    key: s.droplet.key.clone(),
                    sha256: s.droplet.sha256.clone(),
                    stack: s.stack.clone(),
                    detected_buildpack: s.detected_buildpack.clone(),
                    buildpacks: s.buildpacks.iter().map(|b| b.name.clone()).collect(),
                    start_command: s.start_command.clone(),
                    process_types: s.process_types.clone(),
                    result_json: s.result_json.clone(),
                    created_at: now_ns(),
                });
                app.package_state = "STAGED".into();
                app.staging_failed_reason.clear();
                if let Some(old) = old.filter(|o| o.key != s.droplet.key) {
                    app.old_droplets.push(old.key);
                }
                self.event(
                    &app,
                    "audit.app.droplet.create",
                    BTreeMap::from([("droplet".to_string(), s.droplet.key.clone())]),
                );
            }
            Err(reason) => {
                app.package_state = "FAILED".into();
                app.staging_failed_reason = reason;
            }
        }
        app.updated_at = now_ns();
        if let Err(e) = self.store.put_app(&app) {
            tracing::warn!(app_guid = %app.guid, error = %e, "could not record the staging outcome");
        }
    }

    pub async fn start_app(&self, r: &pb::AppRef) -> Result<AppRecord, AppsError> {
        let _op = self.ops.lock().await;
        let mut app = self.find(r)?;
        if app.state == "STARTED" && !app.process_guid.is_empty() {
            return Ok(app);
        }
        self.desire(&mut app).await?;
        self.event(&app, "audit.app.start", BTreeMap::new());
        Ok(app)
    }

    pub async fn stop_app(&self, r: &pb::AppRef) -> Result<AppRecord, AppsError> {
        let _op = self.ops.lock().await;
        let mut app = self.find(r)?;
        self.undesire(&mut app).await?;
        self.event(&app, "audit.app.stop", BTreeMap::new());
        Ok(app)
    }

    pub async fn restart_app(&self, r: &pb::AppRef) -> Result<AppRecord, AppsError> {
        let _op = self.ops.lock().await;
        let mut app = self.find(r)?;
        if app.droplet.is_none() {
            return Err(not_staged(&app));
        }
        self.undesire(&mut app).await?;
        self.desire(&mut app).await?;
        self.event(&app, "audit.app.restart", BTreeMap::new());
        Ok(app)
    }

    /// Desires a new process for the app's current droplet and settings
    /// (CC gives every start a new process guid).
    async fn desire(&self, app: &mut AppRecord) -> Result<(), AppsError> {
        if app.droplet.is_none() {
            return Err(not_staged(app));
        }
        let process_guid = format!("{}-{}", app.guid, new_guid());
        let desired = self.desired_lrp(app, &process_guid)?;
        self.sched().desire_lrp(desired).await?;
        app.process_guid = process_guid;
        app.state = "STARTED".into();
        app.updated_at = now_ns();
        if let Err(e) = self.store.put_app(app) {
            // Don't leave a process nobody records.
            let _ = self.remove_lrp(&app.process_guid).await;
            return Err(e);
        }
        tracing::info!(app_guid = %app.guid, process_guid = %app.process_guid, "app started");
        // The process that may have used them is gone.
        if !app.old_droplets.is_empty() {
            for key in std::mem::take(&mut app.old_droplets) {
                let _ = self.blobs.delete(&key).await;
            }
            let _ = self.store.put_app(app);
        }
        self.routes_changed.notify_one();
        Ok(())
    }

    async fn undesire(&self, app: &mut AppRecord) -> Result<(), AppsError> {
        if !app.process_guid.is_empty() {
            // Routes first, then the instances: a request must never be sent
            // to an instance that is being destroyed.
            self.withdraw(app).await;
            if let Err(e) = self.remove_lrp(&app.process_guid).await {
                self.unwithdraw(&app.process_guid);
                return Err(e);
            }
        }
        app.process_guid.clear();
        app.state = "STOPPED".into();
        app.updated_at = now_ns();
        self.store.put_app(app)?;
        self.routes_changed.notify_one();
        Ok(())
    }

    fn desired_lrp(&self, app: &AppRecord, process_guid: &str) -> Result<pb::DesiredLrp, AppsError> {
        let droplet = app.droplet.as_ref().ok_or_else(|| not_staged(app))?;
        let command = if app.command.is_empty() { droplet.start_command.clone() } else { app.command.clone() };
        if command.is_empty() {
            return Err(AppsError::FailedPrecondition(format!(
                "app '{}' has no start command: the buildpack gave none; set one with -c or a Procfile",
                app.name
            )));
        }
        let env = self.app_env(app, Some(process_guid))?;
        let checks = match app.health_check_type.as_str() {
            "http" => vec![pb::Check {
                check: Some(pb::check::Check::Http(pb::HttpCheck {
                    port: APP_PORT,
                    path: if app.health_check_endpoint.is_empty() {
                        "/".into()
                    } else {
                        app.health_check_endpoint.clone()
                    },
                    ..Default::default()
                })),
            }],
            "process" => vec![],
            _ => vec![pb::Check {
                check: Some(pb::check::Check::Tcp(pb::TcpCheck { port: APP_PORT, ..Default::default() })),
            }],
        };
        let timeout =
            if app.health_check_timeout == 0 { DEFAULT_HEALTH_CHECK_TIMEOUT } else { app.health_check_timeout };
        let routes = json!([{ "hostnames": app.routes, "port": APP_PORT }]).to_string();
        let ssh = self.ssh_settings(app)?;
        let mut ports = vec![APP_PORT];
        if ssh.is_some() {
            ports.push(ssh::SSHD_PORT);
        }
        Ok(pb::DesiredLrp {
            process_guid: process_guid.to_string(),
            domain: DOMAIN.into(),
            instances: i32::try_from(app.instances).unwrap_or(i32::MAX),
            rootfs: format!("preloaded:{}", droplet.stack),
            droplet_key: droplet.key.clone(),
            start_command: command,
            env: env.into_iter().map(|(name, value)| pb::EnvironmentVariable { name, value }).collect(),
            memory_mb: app.memory_mb,
            disk_mb: app.disk_mb,
            // CC's default process limit.
            max_pids: 1024,
            ports,
            ssh,
            check_definition: Some(pb::CheckDefinition { checks, ..Default::default() }),
            start_timeout_ms: timeout.saturating_mul(1000),
            log_guid: app.guid.clone(),
            egress_rules: default_security_groups(),
            routes: HashMap::from([("cf-router".to_string(), routes)]),
            annotation: app.name.clone(),
            ..Default::default()
        })
    }

    /// The environment CC gives an app: its own variables, VCAP_APPLICATION
    /// and VCAP_SERVICES (the launcher derives DATABASE_URL from it).
    fn app_env(&self, app: &AppRecord, process_guid: Option<&str>) -> Result<Vec<(String, String)>, AppsError> {
        let mut env: Vec<(String, String)> = app.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.push(("VCAP_APPLICATION".into(), self.vcap_application(app, process_guid).to_string()));
        env.push(("VCAP_SERVICES".into(), self.vcap_services(app)?.to_string()));
        Ok(env)
    }

    fn vcap_application(&self, app: &AppRecord, process_guid: Option<&str>) -> serde_json::Value {
        let version = process_guid.and_then(|p| p.get(app.guid.len() + 1..)).unwrap_or("");
        let mut v = json!({
            "cf_api": "",
            "limits": { "fds": 16384, "mem": app.memory_mb, "disk": app.disk_mb },
            "application_name": app.name,
            "application_uris": app.routes,
            "name": app.name,
            "space_name": app.space,
            "space_id": space_guid(&app.space),
            "organization_id": space_guid("local"),
            "organization_name": "local",
            "uris": app.routes,
            "application_id": app.guid,
            "version": version,
            "application_version": version,
        });
        if let (Some(pg), Some(obj)) = (process_guid, v.as_object_mut()) {
            obj.insert("process_id".into(), json!(pg));
            obj.insert("process_type".into(), json!("web"));
        }
        v
    }

    /// VCAP_SERVICES with Cloud Foundry's shape for user-provided services.
    fn vcap_services(&self, app: &AppRecord) -> Result<serde_json::Value, AppsError> {
        let mut list = Vec::new();
        for (binding, svc) in self.store.bindings_of_app(&app.guid)? {
            let credentials: serde_json::Value = serde_json::from_str(&svc.credentials).unwrap_or_else(|_| json!({}));
            list.push(json!({
                "label": "user-provided",
                "name": svc.name,
                "tags": svc.tags,
                "instance_guid": svc.guid,
                "instance_name": svc.name,
                "binding_guid": binding.guid,
                "binding_name": null,
                "credentials": credentials,
                "syslog_drain_url": if svc.syslog_drain_url.is_empty() { serde_json::Value::Null } else { json!(svc.syslog_drain_url) },
                "volume_mounts": [],
            }));
        }
        Ok(if list.is_empty() { json!({}) } else { json!({ "user-provided": list }) })
    }

    pub fn env(&self, r: &pb::AppRef) -> Result<pb::AppEnv, AppsError> {
        let app = self.find(r)?;
        let services = self.vcap_services(&app)?.to_string();
        Ok(pb::AppEnv {
            user: app.env.clone().into_iter().collect(),
            database_url: crate::lifecycle::database_url(&services).unwrap_or_default(),
            vcap_services: services,
            vcap_application: self.vcap_application(&app, None).to_string(),
        })
    }

    pub async fn restart_instance(&self, r: &pb::AppRef, index: u32) -> Result<String, AppsError> {
        let app = self.find(r)?;
        if app.state != "STARTED" || app.process_guid.is_empty() {
            return Err(AppsError::FailedPrecondition(format!("app '{}' is not started", app.name)));
        }
        if index >= app.instances {
            return Err(AppsError::InvalidArgument(format!(
                "app '{}' has {} instance(s): the index must be 0 to {}",
                app.name,
                app.instances,
                app.instances.saturating_sub(1)
            )));
        }
        let actual = self
            .actuals(&app.process_guid)
            .await?
            .into_iter()
            .find(|a| {
                a.index == i32::try_from(index).unwrap_or(-1) && a.presence() == pb::actual_lrp::Presence::Ordinary
            })
            .filter(|a| !a.instance_guid.is_empty() && !a.cell_id.is_empty())
            .ok_or_else(|| {
                AppsError::FailedPrecondition(format!(
                    "instance {index} of app '{}' is not running on any cell",
                    app.name
                ))
            })?;
        let cell = self.cell_address(&actual.cell_id).await?;
        let mut client = CellClient::new(channel(&cell)?);
        client
            .stop_lrp_instance(pb::StopLrpInstanceRequest {
                process_guid: actual.process_guid.clone(),
                instance_guid: actual.instance_guid.clone(),
            })
            .await?;
        self.event(
            &app,
            "audit.app.process.terminate_instance",
            BTreeMap::from([("index".to_string(), index.to_string()), ("process_type".to_string(), "web".to_string())]),
        );
        Ok(actual.instance_guid)
    }

    async fn actuals(&self, process_guid: &str) -> Result<Vec<pb::ActualLrp>, AppsError> {
        Ok(self
            .sched()
            .actual_lr_ps(pb::ActualLrPsRequest { process_guid: process_guid.into(), ..Default::default() })
            .await?
            .into_inner()
            .actual_lrps)
    }

    async fn cells(&self) -> Result<Vec<pb::CellPresence>, AppsError> {
        Ok(self.sched().cells(pb::CellsRequest {}).await?.into_inner().cells)
    }

    async fn cell_address(&self, cell_id: &str) -> Result<String, AppsError> {
        self.cells()
            .await?
            .into_iter()
            .find(|c| c.cell_id == cell_id)
            .map(|c| c.grpc_address)
            .ok_or_else(|| AppsError::FailedPrecondition(format!("cell {cell_id} is not reachable")))
    }

    /// The app with each instance's state and usage (`cf app`).
    pub async fn detail(&self, r: &pb::AppRef) -> Result<pb::AppDetail, AppsError> {
        let app = self.find(r)?;
        let mut instances = Vec::new();
        if app.state == "STARTED" && !app.process_guid.is_empty() {
            let actuals = self.actuals(&app.process_guid).await?;
            let metrics = self.metrics(&app.guid, &actuals).await;
            for index in 0..app.instances {
                let i = i32::try_from(index).unwrap_or(i32::MAX);
                // The evacuating copy serves until its replacement runs.
                let a = actuals
                    .iter()
                    .filter(|a| a.index == i && a.presence() != pb::actual_lrp::Presence::Suspect)
                    .max_by_key(|a| {
                        (
                            a.state() == pb::actual_lrp::State::Running,
                            a.presence() == pb::actual_lrp::Presence::Ordinary,
                        )
                    });
                instances.push(instance_view(index, a, &metrics, app.memory_mb, app.disk_mb));
            }
        }
        Ok(pb::AppDetail { app: Some(self.proto_app(&app)), instances })
    }

    async fn metrics(&self, log_guid: &str, actuals: &[pb::ActualLrp]) -> HashMap<String, pb::ContainerMetrics> {
        let mut out = HashMap::new();
        let Ok(cells) = self.cells().await else { return out };
        for cell in cells.iter().filter(|c| actuals.iter().any(|a| a.cell_id == c.cell_id)) {
            let Ok(ch) = channel(&cell.grpc_address) else { continue };
            let mut client = CellClient::new(ch);
            let call = client.container_metrics(pb::ContainerMetricsRequest { log_guid: log_guid.into() });
            if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), call).await {
                for m in resp.into_inner().metrics {
                    out.insert(m.instance_guid.clone(), m);
                }
            }
        }
        out
    }

    pub fn proto_app(&self, a: &AppRecord) -> pb::App {
        let d = a.droplet.clone().unwrap_or_default();
        pb::App {
            guid: a.guid.clone(),
            name: a.name.clone(),
            space: a.space.clone(),
            state: a.state.clone(),
            instances: a.instances,
            memory_mb: a.memory_mb,
            disk_mb: a.disk_mb,
            health_check_type: a.health_check_type.clone(),
            health_check_endpoint: if a.health_check_endpoint.is_empty() && a.health_check_type == "http" {
                "/".into()
            } else {
                a.health_check_endpoint.clone()
            },
            health_check_timeout: a.health_check_timeout,
            command: a.command.clone(),
            buildpacks: a.buildpacks.clone(),
            stack: if d.stack.is_empty() { a.stack.clone() } else { d.stack.clone() },
            env: a.env.clone().into_iter().collect(),
            routes: a.routes.clone(),
            package_state: a.package_state.clone(),
            staging_failed_reason: a.staging_failed_reason.clone(),
            droplet_key: d.key.clone(),
            detected_buildpack: if d.buildpacks.is_empty() {
                d.detected_buildpack.clone()
            } else {
                d.buildpacks.join(", ")
            },
            detected_start_command: d.start_command.clone(),
            process_guid: a.process_guid.clone(),
            enable_ssh: a.enable_ssh,
            created_at: a.created_at,
            updated_at: a.updated_at,
            package_key: a.package_key.clone(),
        }
    }

    /// Running instances per app, for `cellctl apps`.
    pub async fn running_counts(&self, apps: &[AppRecord]) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        for a in apps.iter().filter(|a| !a.process_guid.is_empty()) {
            if let Ok(actuals) = self.actuals(&a.process_guid).await {
                let n = actuals
                    .iter()
                    .filter(|x| {
                        x.state() == pb::actual_lrp::State::Running
                            && x.presence() == pb::actual_lrp::Presence::Ordinary
                    })
                    .count();
                out.insert(a.guid.clone(), u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
        out
    }

    pub fn events(&self, r: &pb::AppRef) -> Result<Vec<EventRecord>, AppsError> {
        let app = self.find(r)?;
        self.store.events(&app.guid, 200)
    }

    /// History (if `recent`) and live lines (if `follow`) of an app.
    pub fn logs(
        &self,
        r: &pb::LogsRequest,
    ) -> Result<(Vec<pb::LogEnvelope>, Option<tokio::sync::broadcast::Receiver<pb::LogEnvelope>>), AppsError> {
        let app = self.find(&r.app.clone().unwrap_or_default())?;
        let (history, live) = self.logs.subscribe(&app.guid, None, if r.recent { usize::MAX } else { 0 });
        Ok((history, r.follow.then_some(live)))
    }

    // ------------------------------------------------------------ services

    pub fn create_service(&self, r: pb::CreateUserProvidedServiceRequest) -> Result<ServiceRecord, AppsError> {
        let space = self.space(&r.space)?.to_string();
        validate_app_name(&r.name).map_err(|_| {
            AppsError::InvalidArgument(format!(
                "service instance name {:?} is not valid: use 1-255 printable characters",
                r.name
            ))
        })?;
        let credentials = if r.credentials_json.trim().is_empty() { "{}" } else { r.credentials_json.as_str() };
        match serde_json::from_str::<serde_json::Value>(credentials) {
            Ok(v) if v.is_object() => {}
            Ok(_) => {
                return Err(AppsError::InvalidArgument(
                    "credentials must be a JSON object, like '{\"uri\":\"postgres://user:pass@host:5432/db\"}'".into(),
                ));
            }
            Err(e) => {
                return Err(AppsError::InvalidArgument(format!(
                    "credentials are not valid JSON: {e}; pass an object like '{{\"uri\":\"postgres://…\"}}'"
                )));
            }
        }
        let s = ServiceRecord {
            guid: new_guid(),
            name: r.name,
            space,
            credentials: credentials.to_string(),
            tags: r.tags,
            syslog_drain_url: r.syslog_drain_url,
            created_at: now_ns(),
        };
        self.store.create_service(&s)?;
        Ok(s)
    }

    fn find_service(&self, space: &str, name: &str) -> Result<ServiceRecord, AppsError> {
        let space = self.space(space)?;
        self.store
            .service_by_name(space, name)?
            .ok_or_else(|| AppsError::NotFound(format!("Service instance '{name}' not found in space '{space}'.")))
    }

    pub fn delete_service(&self, r: &pb::ServiceRef) -> Result<(), AppsError> {
        let s = self.find_service(&r.space, &r.name)?;
        self.store.delete_service(&s.guid)
    }

    pub fn services(&self, space: &str) -> Result<Vec<pb::ServiceInstance>, AppsError> {
        let space = self.space(space)?;
        let mut out = Vec::new();
        for s in self.store.services(space)? {
            let bound_apps = self.store.bound_apps(&s.guid)?;
            out.push(proto_service(s, bound_apps));
        }
        Ok(out)
    }

    pub async fn bind(&self, r: &pb::BindServiceRequest) -> Result<pb::ServiceBinding, AppsError> {
        let app_ref = r.app.clone().unwrap_or_default();
        let _op = self.ops.lock().await;
        let app = self.find(&app_ref)?;
        let svc = self.find_service(&app.space, &r.service)?;
        let b = BindingRecord { guid: new_guid(), app_guid: app.guid.clone(), service_guid: svc.guid.clone() };
        self.store.bind(&b)?;
        self.event(&app, "audit.service_binding.create", BTreeMap::from([("service_instance".to_string(), svc.name)]));
        Ok(pb::ServiceBinding { guid: b.guid, app_guid: b.app_guid, service_guid: b.service_guid })
    }

    pub async fn unbind(&self, r: &pb::BindServiceRequest) -> Result<(), AppsError> {
        let app_ref = r.app.clone().unwrap_or_default();
        let _op = self.ops.lock().await;
        let app = self.find(&app_ref)?;
        let svc = self.find_service(&app.space, &r.service)?;
        if !self.store.unbind(&app.guid, &svc.guid)? {
            return Err(AppsError::NotFound(format!(
                "app '{}' is not bound to service instance '{}'",
                app.name, svc.name
            )));
        }
        self.event(&app, "audit.service_binding.delete", BTreeMap::from([("service_instance".to_string(), svc.name)]));
        Ok(())
    }

    // --------------------------------------------------------------- tasks

    pub async fn run_task(&self, r: pb::RunTaskRequest) -> Result<pb::AppTask, AppsError> {
        let app = self.find(&r.app.clone().unwrap_or_default())?;
        let droplet = app.droplet.clone().ok_or_else(|| not_staged(&app))?;
        if r.command.trim().is_empty() {
            return Err(AppsError::InvalidArgument("a task needs a command".into()));
        }
        if !r.name.is_empty() && (r.name.len() > 255 || r.name.chars().any(|c| c.is_control() || c == '/')) {
            return Err(AppsError::InvalidArgument(format!("task name {:?} is not valid", r.name)));
        }
        let rec = self.store.add_task(TaskRecord {
            guid: new_guid(),
            app_guid: app.guid.clone(),
            sequence_id: 0,
            name: r.name,
            command: r.command.clone(),
            memory_mb: if r.memory_mb == 0 { app.memory_mb } else { r.memory_mb },
            disk_mb: if r.disk_mb == 0 { app.disk_mb } else { r.disk_mb },
            created_at: now_ns(),
            ..Default::default()
        })?;
        let env = self.app_env(&app, None)?;
        let task = pb::Task {
            task_guid: rec.guid.clone(),
            domain: TASK_DOMAIN.into(),
            droplet_key: droplet.key.clone(),
            rootfs: format!("preloaded:{}", droplet.stack),
            command: r.command,
            env: env.into_iter().map(|(name, value)| pb::EnvironmentVariable { name, value }).collect(),
            memory_mb: rec.memory_mb,
            disk_mb: rec.disk_mb,
            max_pids: 1024,
            log_guid: app.guid.clone(),
            log_source: format!("APP/TASK/{}", rec.name),
            egress_rules: default_security_groups(),
            ..Default::default()
        };
        if let Err(e) = self.sched().desire_task(task).await {
            let _ = self.store.finish_task(&rec.guid, "FAILED", e.message());
            return Err(e.into());
        }
        self.event(
            &app,
            "audit.app.task.create",
            BTreeMap::from([("task_guid".to_string(), rec.guid.clone()), ("name".to_string(), rec.name.clone())]),
        );
        Ok(proto_task(&rec, "PENDING", ""))
    }

    pub async fn tasks(&self, r: &pb::AppRef) -> Result<Vec<pb::AppTask>, AppsError> {
        let app = self.find(r)?;
        let mut out = Vec::new();
        for t in self.store.tasks(&app.guid)? {
            if !t.state.is_empty() {
                out.push(proto_task(&t, &t.state.clone(), &t.failure_reason.clone()));
                continue;
            }
            let (state, reason) = match self
                .sched()
                .get_task(pb::GetTaskRequest { task_guid: t.guid.clone() })
                .await
                .map(|r| r.into_inner())
            {
                Ok(task) => task_state(&task),
                Err(s) if s.code() == tonic::Code::NotFound => {
                    ("FAILED".to_string(), "task record is gone".to_string())
                }
                Err(s) => return Err(s.into()),
            };
            if state == "SUCCEEDED" || state == "FAILED" {
                let _ = self.store.finish_task(&t.guid, &state, &reason);
            }
            out.push(proto_task(&t, &state, &reason));
        }
        Ok(out)
    }

    // --------------------------------------------------------------- cells

    pub async fn list_cells(&self) -> Result<Vec<pb::CellStatus>, AppsError> {
        let mut out = Vec::new();
        for c in self.cells().await? {
            let mut status = pb::CellStatus {
                cell_id: c.cell_id.clone(),
                grpc_address: c.grpc_address.clone(),
                zone: c.zone.clone(),
                capacity: c.capacity,
                available: c.available,
                stacks: c.stacks.clone(),
                evacuating: c.evacuating,
                ..Default::default()
            };
            if let Ok(ch) = channel(&c.grpc_address) {
                let mut client = CellClient::new(ch);
                let call = client.state(pb::StateRequest {});
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), call).await {
                    let s = s.into_inner();
                    status.instances = u32::try_from(s.lrps.len()).unwrap_or(u32::MAX);
                    status.tasks =
                        u32::try_from(s.tasks.iter().filter(|t| t.state == "RUNNING").count()).unwrap_or(u32::MAX);
                    status.available = s.available.or(status.available);
                }
            }
            out.push(status);
        }
        Ok(out)
    }

    // ------------------------------------------------------ event follower

    /// Follows the scheduler's events: records `app.crash`, and re-reads
    /// routes when an instance changes. Reconnects when the scheduler goes away.
    async fn follow_events(self: Arc<Self>) {
        loop {
            match self.sched().subscribe_events(pb::SubscribeEventsRequest {}).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    // Changes while disconnected: read the routes afresh.
                    self.routes_changed.notify_one();
                    while let Ok(Some(e)) = stream.message().await {
                        self.on_event(&e);
                    }
                }
                Err(s) => tracing::debug!(error = %s, "scheduler events unavailable; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn on_event(&self, e: &pb::Event) {
        if !e.r#type.starts_with("actual_lrp_") {
            return;
        }
        self.routes_changed.notify_one();
        if e.r#type != "actual_lrp_crashed" {
            return;
        }
        let (Some(after), Some(before)) = (&e.actual_lrp, &e.actual_lrp_before) else { return };
        let Ok(apps) = self.store.apps(None) else { return };
        let Some(app) = apps.iter().find(|a| a.process_guid == after.process_guid) else { return };
        let meta = BTreeMap::from([
            ("index".to_string(), after.index.to_string()),
            ("instance".to_string(), before.instance_guid.clone()),
            ("cell_id".to_string(), before.cell_id.clone()),
            ("exit_description".to_string(), after.crash_reason.clone()),
            ("reason".to_string(), "CRASHED".to_string()),
            ("crash_count".to_string(), after.crash_count.to_string()),
            ("crash_timestamp".to_string(), after.since.to_string()),
        ]);
        self.event(app, "app.crash", meta);
    }

    /// Rebuilds the router's table when something changed, and every few
    /// seconds in case an event was missed.
    async fn sync_routes_forever(self: Arc<Self>) {
        loop {
            if let Err(e) = self.sync_routes().await {
                tracing::debug!(error = %e, "could not read routes; retrying");
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), self.routes_changed.notified()).await;
            // Coalesce a burst of events into one rebuild.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes the app's current process out of the router's table, now and in
    /// every rebuild until the process is no longer the app's.
    async fn withdraw(&self, app: &AppRecord) {
        let _sync = self.route_sync.lock().await;
        lock_set(&self.withdrawn).insert(app.process_guid.clone());
        self.routes.withdraw_app(&app.guid);
        tracing::info!(app_guid = %app.guid, process_guid = %app.process_guid, "routes withdrawn");
    }

    /// The stop did not happen: the instances may be routed again.
    fn unwithdraw(&self, process_guid: &str) {
        lock_set(&self.withdrawn).remove(process_guid);
        self.routes_changed.notify_one();
    }

    pub async fn sync_routes(&self) -> Result<(), AppsError> {
        let _sync = self.route_sync.lock().await;
        let apps: HashMap<String, AppRecord> =
            self.store.apps(None)?.into_iter().map(|a| (a.guid.clone(), a)).collect();
        let withdrawn = {
            let mut w = lock_set(&self.withdrawn);
            w.retain(|p| apps.values().any(|a| a.process_guid == *p));
            w.clone()
        };
        let mut table: HashMap<String, Vec<Backend>> = HashMap::new();
        let mut backends_of: HashMap<String, Vec<Backend>> = HashMap::new();
        for app in apps.values().filter(|a| {
            a.state == "STARTED"
                && !a.process_guid.is_empty()
                && !a.routes.is_empty()
                && !withdrawn.contains(&a.process_guid)
        }) {
            let mut backends = Vec::new();
            for a in self.actuals(&app.process_guid).await? {
                let routable = a.state() == pb::actual_lrp::State::Running
                    && a.routable
                    && a.presence() != pb::actual_lrp::Presence::Suspect;
                let Some(port) = a.ports.iter().find(|p| p.container_port == APP_PORT) else { continue };
                // The router runs on the host, as health checks do: it
                // reaches the container's own address.
                let Ok(ip) = a.instance_address.parse::<std::net::IpAddr>() else { continue };
                if routable {
                    backends.push(Backend {
                        addr: std::net::SocketAddr::new(ip, u16::try_from(port.container_port).unwrap_or(8080)),
                        app_guid: app.guid.clone(),
                        instance_guid: a.instance_guid.clone(),
                        index: u32::try_from(a.index).unwrap_or(0),
                    });
                }
            }
            backends.sort_by_key(|b| b.index);
            backends_of.insert(app.guid.clone(), backends);
        }
        for (host, app_guid) in self.store.routes()? {
            let backends = backends_of.get(&app_guid).cloned().unwrap_or_default();
            table.insert(host, backends);
        }
        self.routes.replace(table);
        Ok(())
    }
}

fn lock_set(m: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The router's access log lines go to the app's log stream as `RTR`.
pub struct RouterLog(pub Arc<LogHub>);

impl AccessLog for RouterLog {
    fn record(&self, app_guid: &str, index: u32, line: String) {
        self.0.emit(pb::LogEnvelope {
            source_type: "RTR".into(),
            source_instance: index.to_string(),
            message_type: pb::log_envelope::MessageType::Out as i32,
            timestamp: now_ns(),
            message: line,
            log_guid: app_guid.to_string(),
        });
    }
}

fn channel(addr: &str) -> Result<Channel, AppsError> {
    Ok(crate::grpc::endpoint(addr)
        .map_err(|e| AppsError::FailedPrecondition(format!("cell address {addr}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy())
}

fn not_staged(app: &AppRecord) -> AppsError {
    AppsError::FailedPrecondition(format!(
        "app '{}' has not been staged: push it first (cellctl push DIR -n {})",
        app.name, app.name
    ))
}

fn instance_view(
    index: u32,
    a: Option<&pb::ActualLrp>,
    metrics: &HashMap<String, pb::ContainerMetrics>,
    memory_mb: u32,
    disk_mb: u32,
) -> pb::AppInstance {
    use pb::actual_lrp::State;
    let mut v = pb::AppInstance {
        index,
        state: "down".into(),
        memory_quota_bytes: u64::from(memory_mb) << 20,
        disk_quota_bytes: u64::from(disk_mb) << 20,
        ..Default::default()
    };
    let Some(a) = a else { return v };
    v.state = match a.state() {
        State::Unclaimed | State::Claimed => "starting",
        State::Running => "running",
        State::Crashed => "crashed",
    }
    .into();
    v.since = a.since;
    v.instance_guid = a.instance_guid.clone();
    v.cell_id = a.cell_id.clone();
    v.routable = a.routable;
    v.crash_count = u32::try_from(a.crash_count).unwrap_or(0);
    v.details = if a.state() == State::Crashed { a.crash_reason.clone() } else { a.placement_error.clone() };
    if let Some(p) = a.ports.first() {
        v.address = format!("{}:{}", a.address, p.host_port);
    }
    if let Some(m) = metrics.get(&a.instance_guid) {
        v.cpu_percentage = m.cpu_percentage;
        v.memory_bytes = m.memory_bytes;
        v.disk_bytes = m.disk_bytes;
        if m.memory_bytes_quota > 0 {
            v.memory_quota_bytes = m.memory_bytes_quota;
        }
        if m.disk_bytes_quota > 0 {
            v.disk_quota_bytes = m.disk_bytes_quota;
        }
    }
    v
}

pub fn proto_service(s: ServiceRecord, bound_apps: Vec<String>) -> pb::ServiceInstance {
    pb::ServiceInstance {
        guid: s.guid,
        name: s.name,
        space: s.space,
        credentials_json: s.credentials,
        tags: s.tags,
        syslog_drain_url: s.syslog_drain_url,
        bound_apps,
        created_at: s.created_at,
    }
}

fn proto_task(t: &TaskRecord, state: &str, reason: &str) -> pb::AppTask {
    pb::AppTask {
        guid: t.guid.clone(),
        sequence_id: t.sequence_id,
        name: t.name.clone(),
        command: t.command.clone(),
        state: state.to_string(),
        failure_reason: reason.to_string(),
        created_at: t.created_at,
        memory_mb: t.memory_mb,
        disk_mb: t.disk_mb,
    }
}

/// CF's task states from Diego's.
fn task_state(t: &pb::Task) -> (String, String) {
    use pb::task::State;
    match t.state() {
        State::Pending | State::Invalid => ("PENDING".into(), String::new()),
        State::Running => ("RUNNING".into(), String::new()),
        State::Completed | State::Resolving if t.failed => ("FAILED".into(), t.failure_reason.clone()),
        State::Completed | State::Resolving => ("SUCCEEDED".into(), String::new()),
    }
}

/// CF's default running security groups: the public internet and DNS, not
/// the private ranges (so not the host's services or other containers).
pub fn default_security_groups() -> Vec<pb::EgressRule> {
    let public = [
        "0.0.0.0-9.255.255.255",
        "11.0.0.0-169.253.255.255",
        "169.255.0.0-172.15.255.255",
        "172.32.0.0-192.167.255.255",
        "192.169.0.0-255.255.255.255",
    ];
    vec![
        pb::EgressRule {
            protocol: "all".into(),
            destinations: public.iter().map(|s| (*s).to_string()).collect(),
            ..Default::default()
        },
        pb::EgressRule {
            protocol: "tcp".into(),
            destinations: vec!["0.0.0.0/0".into()],
            ports: vec![53],
            ..Default::default()
        },
        pb::EgressRule {
            protocol: "udp".into(),
            destinations: vec!["0.0.0.0/0".into()],
            ports: vec![53],
            ..Default::default()
        },
    ]
}

/// A stable guid for a space name (spaces exist by name only here).
fn space_guid(name: &str) -> String {
    let h = xxhash_rust::xxh64::xxh64(name.as_bytes(), 0x5ace);
    let l = xxhash_rust::xxh64::xxh64(name.as_bytes(), 0xc0de);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xffff,
        l >> 48,
        l & 0xffff_ffff_ffff
    )
}

pub fn validate_space(s: &str) -> Result<(), AppsError> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(AppsError::InvalidArgument(format!(
            "space name {s:?} is not valid: use 1-64 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

pub fn validate_app_name(n: &str) -> Result<(), AppsError> {
    if n.is_empty() || n.len() > 255 || n.chars().any(|c| c.is_control() || c == '/') || n.trim() != n {
        return Err(AppsError::InvalidArgument(format!(
            "app name {n:?} is not valid: use 1-255 printable characters, no '/' and no leading or trailing spaces"
        )));
    }
    Ok(())
}

/// The default route's host: the app name, lowercased, with anything a DNS
/// label can't hold turned into '-' (as cf push does).
pub fn host_label(name: &str) -> Result<String, AppsError> {
    let mut s: String =
        name.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        return Err(AppsError::InvalidArgument(format!(
            "app name {name:?} makes no valid host name: pass --hostname or --no-route"
        )));
    }
    Ok(s.chars().take(63).collect::<String>().trim_end_matches('-').to_string())
}

pub fn validate_host_label(h: &str) -> Result<(), AppsError> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if !ok {
        return Err(AppsError::InvalidArgument(format!(
            "host {h:?} is not valid: use 1-63 letters, digits or '-', not starting or ending with '-'"
        )));
    }
    Ok(())
}

pub fn validate_env_name(name: &str) -> Result<(), AppsError> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(AppsError::InvalidArgument(format!("environment variable name {name:?} is not valid")));
    }
    if name.starts_with("VCAP_") || name.starts_with("CF_INSTANCE_") || name == "PORT" {
        return Err(AppsError::InvalidArgument(format!(
            "environment variable {name} is set by the platform: names starting with VCAP_ or CF_INSTANCE_, and PORT, cannot be set"
        )));
    }
    Ok(())
}

/// Used by the test helpers of the service: an unbounded future-free check.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_labels_follow_cf_push() {
        assert_eq!(host_label("hello").unwrap(), "hello");
        assert_eq!(host_label("My App_2").unwrap(), "my-app-2");
        assert_eq!(host_label("--x--").unwrap(), "x");
        assert!(host_label("___").is_err());
        assert_eq!(host_label(&"a".repeat(80)).unwrap().len(), 63);
        assert!(validate_host_label("ok-1").is_ok());
        assert!(validate_host_label("-bad").is_err());
        assert!(validate_host_label("Bad").is_err());
        assert!(validate_host_label("a.b").is_err());
    }

    #[test]
    fn names_and_env() {
        assert!(validate_app_name("hello world").is_ok());
        assert!(validate_app_name("").is_err());
        assert!(validate_app_name("a/b").is_err());
        assert!(validate_app_name(" x").is_err());
        assert!(validate_space("dev").is_ok());
        assert!(validate_space("my space").is_err());
        assert!(validate_env_name("GREETING").is_ok());
        assert!(validate_env_name("VCAP_SERVICES").is_err());
        assert!(validate_env_name("PORT").is_err());
        assert!(validate_env_name("A=B").is_err());
    }

    #[test]
    fn space_guids_are_stable_and_distinct() {
        assert_eq!(space_guid("dev"), space_guid("dev"));
        assert_ne!(space_guid("dev"), space_guid("prod"));
        assert_eq!(space_guid("dev").len(), 36);
    }

    #[test]
    fn task_states_are_cfs() {
        let mut t = pb::Task { state: pb::task::State::Completed as i32, ..Default::default() };
        assert_eq!(task_state(&t).0, "SUCCEEDED");
        t.failed = true;
        t.failure_reason = "boom".into();
        assert_eq!(task_state(&t), ("FAILED".into(), "boom".into()));
        t.state = pb::task::State::Running as i32;
        assert_eq!(task_state(&t).0, "RUNNING");
    }
}
