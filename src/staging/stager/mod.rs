//! (Long because: a staging's whole life (inputs, container, builder, outputs, records, cancel) as one task; issue 18 splits it.)
//!
//! The stager: a staging is a task that creates a staging container from the
//! app's stack, streams in the package, the previous build cache and the
//! buildpacks, runs `/tmp/lifecycle/builder` as `vcap`, and uploads the droplet
//! and the new build cache it made. Its log lines (`STG`) go to every watcher as
//! they happen; its record (running, succeeded, failed) is kept in the depot so
//! a restarted cell still knows how each staging ended.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};

use super::registry::{Buildpack, Registry};
use super::{StagingError, byte_size, new_guid, validate_guid};
use crate::blobstore::{BlobInfo, Blobstore};
use crate::garden::types::{BindMount, ContainerSpec, Limits, ProcessSpec};
use crate::gardener::Gardener;
use crate::runtime::initproto::{self as proto, Request};

/// Where things are inside the staging container (Cloud Foundry's paths).
const LIFECYCLE_MOUNT: &str = "/tmp/lifecycle";
/// Names the lifecycle binary answers to besides `builder` (links to it).
const LIFECYCLE_ROLES: &[&str] = &["launcher", "sshd"];
const INPUTS: &str = "/tmp/staging-inputs";
const DROPLET: &str = "/tmp/droplet";
const OUTPUT_CACHE: &str = "/tmp/output-cache";
const RESULT: &str = "/tmp/result.json";
/// Longest log line passed on whole; longer output is split.
const MAX_LINE: usize = 64 * 1024;
/// Stderr lines kept to explain a builder failure that has no exit-code reason.
const STDERR_TAIL: usize = 5;

#[derive(Debug, Clone)]
pub struct StagerConfig {
    pub cell_id: String,
    /// The static lifecycle binary (`celld-lifecycle`).
    pub lifecycle_binary: PathBuf,
    /// The stager's own directory (records, scratch, the lifecycle mount).
    pub work_dir: PathBuf,
    /// Where preloaded rootfses live: a stack NAME is `preloaded:NAME`.
    pub rootfs_dir: PathBuf,
    pub default_stack: String,
    pub timeout: Duration,
    pub memory_mb: u32,
    pub disk_mb: u32,
    /// Largest package accepted by UploadPackage.
    pub max_package_bytes: u64,
    /// The cell's log hub: staging lines also go there as `STG` envelopes
    /// under the app guid, beside the app's own logs.
    pub logs: Option<Arc<crate::executor::logs::LogHub>>,
}

/// What a client asks to stage.
#[derive(Debug, Clone, Default)]
pub struct StageRequest {
    pub app_guid: String,
    pub app_name: String,
    pub space_name: String,
    pub space_guid: String,
    pub package_key: String,
    pub stack: String,
    pub buildpacks: Vec<String>,
    pub env: Vec<(String, String)>,
    pub memory_mb: u32,
    pub disk_mb: u32,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildpackUsed {
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingSuccess {
    pub droplet: BlobInfo,
    pub detected_buildpack: String,
    pub buildpack_key: String,
    pub buildpacks: Vec<BuildpackUsed>,
    pub process_types: BTreeMap<String, String>,
    pub start_command: String,
    pub result_json: String,
    pub stack: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingFailure {
    /// Cloud Controller's error name (NoAppDetectedError, BuildpackCompileFailed, ...).
    pub reason: String,
    pub exit_code: i32,
    pub message: String,
}

impl StagingFailure {
    fn new(reason: &str, message: impl Into<String>) -> Self {
        Self { reason: reason.to_string(), exit_code: 0, message: message.into() }
    }
    fn error(message: impl Into<String>) -> Self {
        Self::new("StagingError", message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Running,
    Succeeded(StagingSuccess),
    Failed(StagingFailure),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingRecord {
    pub staging_guid: String,
    pub app_guid: String,
    /// Unix seconds.
    pub created_at: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub message: String,
    pub stderr: bool,
    /// Unix nanoseconds.
    pub timestamp: i64,
}

#[derive(Debug, Clone)]
pub enum Event {
    Log(LogLine),
    Done(Box<StagingRecord>),
}

struct Task {
    record: Mutex<StagingRecord>,
    events: broadcast::Sender<Event>,
    cancel: watch::Sender<bool>,
}

pub struct Stager {
    gardener: Arc<Gardener>,
    blobs: Arc<Blobstore>,
    pub registry: Registry,
    cfg: StagerConfig,
    tasks: Mutex<HashMap<String, Arc<Task>>>,
}

/// A watcher of one staging: its guid and its events from the start.
pub struct Watch {
    pub staging_guid: String,
    pub events: broadcast::Receiver<Event>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl Stager {
    /// Opens the stager's directory, puts the lifecycle binary where staging
    /// containers mount it, and settles stagings a previous run left unfinished.
    pub async fn new(
        gardener: Arc<Gardener>,
        blobs: Arc<Blobstore>,
        cfg: StagerConfig,
    ) -> Result<Arc<Self>, StagingError> {
        let internal =
            |what: &str, p: &Path, e: std::io::Error| StagingError::Internal(format!("{what} {}: {e}", p.display()));
        for d in [cfg.work_dir.join("records"), cfg.work_dir.join("scratch"), cfg.work_dir.join("buildpack-cache")] {
            std::fs::create_dir_all(&d).map_err(|e| internal("creating", &d, e))?;
        }
        // Scratch of stagings that were cut off.
        if let Ok(rd) = std::fs::read_dir(cfg.work_dir.join("scratch")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        install_lifecycle(&cfg)?;
        let registry = Registry::open(cfg.work_dir.join("buildpacks.json"))?;
        let stager = Arc::new(Self { gardener, blobs, registry, cfg, tasks: Mutex::new(HashMap::new()) });
        stager.settle_interrupted().await;
        Ok(stager)
    }

    pub fn blobs(&self) -> &Blobstore {
        &self.blobs
    }

    pub fn config(&self) -> &StagerConfig {
        &self.cfg
    }

    /// The directory containers mount read-only at /tmp/lifecycle.
    pub fn lifecycle_dir(&self) -> PathBuf {
        self.cfg.work_dir.join("lifecycle")
    }

    fn record_path(&self, guid: &str) -> PathBuf {
        self.cfg.work_dir.join("records").join(format!("{guid}.json"))
    }

    fn save(&self, rec: &StagingRecord) {
        let p = self.record_path(&rec.staging_guid);
        let tmp = p.with_extension("json.tmp");
        let res = serde_json::to_vec_pretty(rec)
            .map_err(std::io::Error::other)
            .and_then(|d| std::fs::write(&tmp, d))
            .and_then(|_| std::fs::rename(&tmp, &p));
        if let Err(e) = res {
            tracing::error!(staging_guid = %rec.staging_guid, error = %e, "could not save the staging record");
        }
    }

    /// A staging whose cell stopped mid-way cannot be resumed (its builder's
    /// output went to the old daemon): fail it and remove what it left.
    async fn settle_interrupted(&self) {
        let Ok(rd) = std::fs::read_dir(self.cfg.work_dir.join("records")) else { return };
        for e in rd.flatten() {
            let Ok(data) = std::fs::read(e.path()) else { continue };
            let Ok(mut rec) = serde_json::from_slice::<StagingRecord>(&data) else { continue };
            if rec.outcome != Outcome::Running {
                continue;
            }
            tracing::warn!(staging_guid = %rec.staging_guid, "staging was cut off by a cell restart; failing it");
            let _ = self.gardener.destroy(&rec.staging_guid).await;
            let _ = self.blobs.delete(&droplet_key(&rec.staging_guid)).await;
            rec.outcome =
                Outcome::Failed(StagingFailure::error("the cell restarted while this app was staging; stage it again"));
            self.save(&rec);
        }
        // Staging containers with no running staging behind them.
        let filter = BTreeMap::from([("celld.role".to_string(), "staging".to_string())]);
        for handle in self.gardener.list(&filter) {
            let _ = self.gardener.destroy(&handle).await;
        }
    }

    /// Stacks this cell can stage on: its preloaded rootfses.
    pub fn stack_exists(&self, stack: &str) -> bool {
        super::registry::validate_name(stack).is_ok() && self.cfg.rootfs_dir.join(stack).is_dir()
    }

    pub fn get(&self, guid: &str) -> Result<StagingRecord, StagingError> {
        if let Some(t) = lock(&self.tasks).get(guid) {
            return Ok(lock(&t.record).clone());
        }
        validate_guid("staging guid", guid)?;
        let data = std::fs::read(self.record_path(guid))
            .map_err(|_| StagingError::NotFound(format!("staging {guid} not found")))?;
        serde_json::from_slice(&data).map_err(|e| StagingError::Internal(format!("staging record {guid}: {e}")))
    }

    pub fn cancel(&self, guid: &str) -> Result<StagingRecord, StagingError> {
        let task = lock(&self.tasks).get(guid).cloned();
        match task {
            Some(t) => {
                let _ = t.cancel.send(true);
                Ok(lock(&t.record).clone())
            }
            None => {
                self.get(guid)?;
                Err(StagingError::Precondition(format!("staging {guid} has already ended; there is nothing to cancel")))
            }
        }
    }

    /// Checks the request, starts the staging and returns a watcher that sees
    /// every event from its first.
    pub async fn stage(self: &Arc<Self>, mut req: StageRequest) -> Result<Watch, StagingError> {
        validate_guid("app guid", &req.app_guid)?;
        if req.package_key.is_empty() {
            return Err(StagingError::Invalid("a staging needs a package key (from UploadPackage)".into()));
        }
        if !self.blobs.exists(&req.package_key).await? {
            return Err(StagingError::NotFound(format!("package {} not found in the blobstore", req.package_key)));
        }
        if req.stack.is_empty() {
            req.stack = self.cfg.default_stack.clone();
        }
        if !self.stack_exists(&req.stack) {
            return Err(StagingError::Invalid(format!(
                "stack {:?} is not available on this cell (a stack NAME is the rootfs preloaded:NAME)",
                req.stack
            )));
        }
        for (name, _) in &req.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(StagingError::Invalid(format!("environment variable name {name:?} is not valid")));
            }
            if name.starts_with("CF_INSTANCE_") || name == "VCAP_APPLICATION" {
                return Err(StagingError::Invalid(format!("environment variable {name} is set by the platform")));
            }
        }
        let buildpacks = self.buildpacks_for(&req)?;
        if !self.lifecycle_dir().join("builder").is_file() {
            return Err(StagingError::Precondition(format!(
                "the lifecycle binary {} is missing, so this cell cannot stage: build it with `make lifecycle`",
                self.cfg.lifecycle_binary.display()
            )));
        }
        let guid = new_guid();
        let rec = StagingRecord {
            staging_guid: guid.clone(),
            app_guid: req.app_guid.clone(),
            created_at: (now_ns() / 1_000_000_000) as u64,
            outcome: Outcome::Running,
        };
        self.save(&rec);
        let (events, rx) = broadcast::channel(4096);
        let (cancel, cancel_rx) = watch::channel(false);
        let task = Arc::new(Task { record: Mutex::new(rec), events, cancel });
        lock(&self.tasks).insert(guid.clone(), task.clone());
        tokio::spawn(self.clone().run(task, req, buildpacks, cancel_rx));
        Ok(Watch { staging_guid: guid, events: rx })
    }

    /// The buildpacks to offer the builder: the named ones (detect skipped) or
    /// every enabled one for the stack, in order.
    fn buildpacks_for(&self, req: &StageRequest) -> Result<Vec<Buildpack>, StagingError> {
        if req.buildpacks.is_empty() {
            let all = self.registry.for_stack(&req.stack);
            if all.is_empty() {
                return Err(StagingError::Precondition(format!(
                    "no buildpacks are registered for stack {}: add one with `cellctl create-buildpack`",
                    req.stack
                )));
            }
            return Ok(all);
        }
        req.buildpacks
            .iter()
            .map(|name| {
                // `-b binary` finds binary_buildpack, as a convenience.
                self.registry
                    .get(name)
                    .or_else(|| self.registry.get(&format!("{name}_buildpack")))
                    .ok_or_else(|| StagingError::NotFound(format!("buildpack {name:?} is not registered")))
            })
            .collect()
    }

    async fn run(
        self: Arc<Self>,
        task: Arc<Task>,
        req: StageRequest,
        buildpacks: Vec<Buildpack>,
        mut cancel: watch::Receiver<bool>,
    ) {
        let guid = lock(&task.record).staging_guid.clone();
        let hub = self.cfg.logs.clone().filter(|_| !req.app_guid.is_empty()).map(|h| (h, req.app_guid.clone()));
        let log = Logger { task: task.clone(), stderr_tail: Mutex::new(VecDeque::new()), hub };
        let scratch = self.cfg.work_dir.join("scratch").join(&guid);
        let timeout = req.timeout.unwrap_or(self.cfg.timeout);
        tracing::info!(staging_guid = %guid, app_guid = %req.app_guid, "staging");
        // A timeout or a cancel asks the staging to stop and waits for it to
        // get there, rather than dropping it mid-step: a dropped container
        // create could finish after the clean-up below and leave a container.
        let (stop, stopped) = watch::channel(false);
        let staged = async {
            std::fs::create_dir_all(&scratch)
                .map_err(|e| StagingError::Internal(format!("creating {}: {e}", scratch.display())))
                .map_err(|e| StagingFailure::error(e.to_string()))?;
            self.stage_in_container(&guid, &req, &buildpacks, &scratch, &log, stopped).await
        };
        tokio::pin!(staged);
        let ended = tokio::select! {
            r = &mut staged => Ok(r),
            _ = tokio::time::sleep(timeout) => {
                log.line(&format!("Staging timed out after {}", human_duration(timeout)), true);
                Err(StagingFailure::new("StagingTimeExpired", format!(
                    "staging did not finish within {}", human_duration(timeout))))
            }
            _ = cancel.wait_for(|c| *c) => {
                log.line("Staging cancelled", true);
                Err(StagingFailure::new("StagingCancelled", "the staging was cancelled"))
            }
        };
        let outcome = match ended {
            Ok(Ok(s)) => Outcome::Succeeded(s),
            Ok(Err(f)) => Outcome::Failed(f),
            Err(f) => {
                let _ = stop.send(true);
                let _ = (&mut staged).await;
                Outcome::Failed(f)
            }
        };
        // Whatever happened, the container and the scratch go; a droplet of a
        // staging that did not succeed is never left behind.
        let cell = &self.cfg.cell_id;
        log.line(&format!("Cell {cell} stopping instance {guid}"), false);
        log.line(&format!("Cell {cell} destroying container for instance {guid}"), false);
        match self.gardener.destroy(&guid).await {
            Ok(()) => log.line(&format!("Cell {cell} successfully destroyed container for instance {guid}"), false),
            Err(e) if e.to_string().contains("unknown handle") => {}
            Err(e) => tracing::warn!(staging_guid = %guid, error = %e, "destroying the staging container"),
        }
        if !matches!(outcome, Outcome::Succeeded(_)) {
            if let Err(e) = self.blobs.delete(&droplet_key(&guid)).await {
                tracing::warn!(staging_guid = %guid, error = %e, "removing the droplet of a failed staging");
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        match &outcome {
            Outcome::Succeeded(s) => {
                tracing::info!(staging_guid = %guid, droplet = %s.droplet.key, "staging succeeded")
            }
            Outcome::Failed(f) => {
                tracing::info!(staging_guid = %guid, reason = %f.reason, message = %f.message, "staging failed")
            }
            Outcome::Running => {}
        }
        let rec = {
            let mut r = lock(&task.record);
            r.outcome = outcome;
            r.clone()
        };
        self.save(&rec);
        lock(&self.tasks).remove(&guid);
        let _ = task.events.send(Event::Done(Box::new(rec)));
    }

    async fn stage_in_container(
        &self,
        guid: &str,
        req: &StageRequest,
        buildpacks: &[Buildpack],
        scratch: &Path,
        log: &Logger,
        stop: watch::Receiver<bool>,
    ) -> Result<StagingSuccess, StagingFailure> {
        let fail = |e: StagingError| StagingFailure::error(e.to_string());
        let stopped = || if *stop.borrow() { Err(StagingFailure::error("stopped")) } else { Ok(()) };
        let cell = &self.cfg.cell_id;
        let memory_mb = if req.memory_mb == 0 { self.cfg.memory_mb } else { req.memory_mb };
        let disk_mb = if req.disk_mb == 0 { self.cfg.disk_mb } else { req.disk_mb };

        // Inputs first: a package that cannot be fetched needs no container.
        log.line("Downloading app package...", false);
        let package = scratch.join("package");
        let info = self
            .blobs
            .get_to_file(&req.package_key, &package)
            .await
            .map_err(|e| StagingFailure::error(format!("Downloading app package failed: {e}")))?;
        log.line(&format!("Downloaded app package ({})", byte_size(info.size)), false);
        let cache = scratch.join("cache.tgz");
        let cache_key = cache_key(&req.app_guid);
        match self.blobs.exists(&cache_key).await {
            Ok(true) => {
                log.line("Downloading build artifacts cache...", false);
                match self.blobs.get_to_file(&cache_key, &cache).await {
                    Ok(i) => log.line(&format!("Downloaded build artifacts cache ({})", byte_size(i.size)), false),
                    // As in Cloud Foundry, a cache that cannot be fetched only makes the build slower.
                    Err(e) => log.line(&format!("Failed to download build artifacts cache: {e}"), true),
                }
            }
            Ok(false) => {}
            Err(e) => log.line(&format!("Failed to download build artifacts cache: {e}"), true),
        }
        let mut bp_files = Vec::new();
        for bp in buildpacks {
            bp_files.push((bp.name.clone(), self.fetch_buildpack(bp, log).await?));
        }

        stopped()?;
        log.line(&format!("Cell {cell} creating container for instance {guid}"), false);
        let spec = ContainerSpec {
            handle: guid.to_string(),
            rootfs: format!("preloaded:{}", req.stack),
            properties: BTreeMap::from([
                ("celld.role".to_string(), "staging".to_string()),
                ("celld.app_guid".to_string(), req.app_guid.clone()),
            ]),
            bind_mounts: vec![BindMount {
                src_path: self.lifecycle_dir().to_string_lossy().into_owned(),
                dst_path: LIFECYCLE_MOUNT.to_string(),
                mode: 0,
                origin: 0,
            }],
            limits: Limits {
                memory_limits: crate::garden::types::MemoryLimits { limit_in_bytes: u64::from(memory_mb) << 20 },
                pid_limits: crate::garden::types::PidLimits { max: 1024 },
                // CPU shares in proportion to memory, as Diego weighs containers.
                cpu_limits: crate::garden::types::CpuLimits {
                    weight: u64::from(memory_mb).max(2),
                    ..Default::default()
                },
                disk_limits: crate::garden::types::DiskLimits {
                    byte_hard: u64::from(disk_mb) << 20,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        };
        self.gardener.create(spec).await.map_err(|e| {
            let reason =
                if e.to_string().contains("max containers") { "InsufficientResources" } else { "StagingError" };
            StagingFailure::new(reason, format!("creating the staging container failed: {e}"))
        })?;
        log.line(&format!("Cell {cell} successfully created container for instance {guid}"), false);
        stopped()?;

        self.stream_inputs(guid, &package, cache.is_file().then_some(cache.as_path()), &bp_files)
            .await
            .map_err(fail)?;

        let info = self.gardener.info(guid).await.map_err(|e| StagingFailure::error(e.to_string()))?;
        let env = staging_env(req, guid, memory_mb, disk_mb, &info.host_ip, &info.container_ip);
        let order: Vec<&str> = buildpacks.iter().map(|b| b.name.as_str()).collect();
        let mut args = vec![
            "-buildDir=/tmp/app".to_string(),
            format!("-outputDroplet={DROPLET}"),
            format!("-outputMetadata={RESULT}"),
            format!("-outputBuildArtifactsCache={OUTPUT_CACHE}"),
            "-buildpacksDir=/tmp/buildpacks".to_string(),
            "-buildArtifactsCacheDir=/tmp/cache".to_string(),
            format!("-buildpackOrder={}", order.join(",")),
            format!("-appPackage={INPUTS}/package"),
            format!("-buildArtifactsCacheArchive={INPUTS}/cache.tgz"),
            format!("-buildpackArchivesDir={INPUTS}/buildpacks"),
        ];
        if !req.buildpacks.is_empty() {
            args.push("-skipDetect".to_string());
        }
        let spec = ProcessSpec {
            path: format!("{LIFECYCLE_MOUNT}/builder"),
            args,
            env,
            user: "vcap".to_string(),
            dir: "/home/vcap".to_string(),
            ..Default::default()
        };
        let (_, conn) = self.gardener.run(guid, &spec).await.map_err(|e| StagingFailure::error(e.to_string()))?;
        let code = self.follow(guid, conn, log, u64::from(disk_mb) << 20, stop.clone()).await?;
        log.line(&format!("Exit status {code}"), false);
        if code != 0 {
            return Err(self.builder_failure(guid, code, log).await);
        }

        let result_json = self.stream_out_bytes(guid, RESULT, 1 << 20).await.map_err(fail)?;
        let result_json = String::from_utf8(result_json)
            .map_err(|_| StagingFailure::error("the builder's result.json is not UTF-8"))?;
        let mut success = parse_result(&result_json, &req.stack)?;

        log.line("Uploading droplet, build artifacts cache...", false);
        let droplet_file = scratch.join("droplet.tgz");
        let cache_file = scratch.join("output-cache.tgz");
        let limit = u64::from(disk_mb) << 20;
        self.stream_out_file(guid, DROPLET, &droplet_file, limit).await.map_err(fail)?;
        let have_cache = self.stream_out_file(guid, OUTPUT_CACHE, &cache_file, limit).await.is_ok();
        log.line("Uploading droplet...", false);
        if have_cache {
            log.line("Uploading build artifacts cache...", false);
        }
        let droplet_key = droplet_key(guid);
        let (droplet, cache) = tokio::join!(self.blobs.put_file(&droplet_key, &droplet_file), async {
            if have_cache { Some(self.blobs.put_file(&cache_key, &cache_file).await) } else { None }
        });
        match cache {
            Some(Ok(i)) => log.line(&format!("Uploaded build artifacts cache ({})", byte_size(i.size)), false),
            Some(Err(e)) => log.line(&format!("Failed to upload build artifacts cache: {e}"), true),
            None => {}
        }
        let droplet = droplet.map_err(|e| StagingFailure::error(format!("Uploading droplet failed: {e}")))?;
        log.line(&format!("Uploaded droplet ({})", byte_size(droplet.size)), false);
        log.line("Uploading complete", false);
        success.droplet = droplet;
        Ok(success)
    }

    /// The buildpack archive, from the host's cache (by SHA-256) or the blobstore.
    async fn fetch_buildpack(&self, bp: &Buildpack, log: &Logger) -> Result<PathBuf, StagingFailure> {
        let cached = self.cfg.work_dir.join("buildpack-cache").join(&bp.sha256);
        if super::validate_guid("sha256", &bp.sha256).is_ok() && cached.is_file() {
            return Ok(cached);
        }
        log.line(&format!("Downloading {}...", bp.name), false);
        let info = self
            .blobs
            .get_to_file(&bp.key, &cached)
            .await
            .map_err(|e| StagingFailure::error(format!("Downloading buildpack {} failed: {e}", bp.name)))?;
        // A buildpack replaced under the same name is cached under its new checksum.
        let by_sum = self.cfg.work_dir.join("buildpack-cache").join(&info.sha256);
        if by_sum != cached {
            let _ = std::fs::rename(&cached, &by_sum);
        }
        log.line(&format!("Downloaded {} ({})", bp.name, byte_size(info.size)), false);
        Ok(by_sum)
    }

    /// One tar stream into `/tmp` as vcap: `staging-inputs/{package, cache.tgz,
    /// buildpacks/<name>}`. The builder unpacks them itself, inside the
    /// container, as vcap: untrusted archives are never opened on the host.
    async fn stream_inputs(
        &self,
        guid: &str,
        package: &Path,
        cache: Option<&Path>,
        buildpacks: &[(String, PathBuf)],
    ) -> Result<(), StagingError> {
        let conn = self
            .gardener
            .stream(guid, Request::StreamIn { user: "vcap".into(), destination: "/tmp".into() })
            .await
            .map_err(|e| StagingError::Internal(format!("streaming into the staging container: {e}")))?;
        let mut files: Vec<(String, PathBuf)> = vec![("staging-inputs/package".into(), package.to_path_buf())];
        if let Some(c) = cache {
            files.push(("staging-inputs/cache.tgz".into(), c.to_path_buf()));
        }
        for (name, p) in buildpacks {
            files.push((format!("staging-inputs/buildpacks/{name}"), p.clone()));
        }
        let std = conn.into_std().map_err(|e| StagingError::Internal(e.to_string()))?;
        let std = tokio::task::spawn_blocking(move || -> std::io::Result<std::os::unix::net::UnixStream> {
            std.set_nonblocking(false)?;
            let mut b = tar::Builder::new(&std);
            for dir in ["staging-inputs/", "staging-inputs/buildpacks/"] {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(0);
                b.append_data(&mut h, dir, std::io::empty())?;
            }
            for (name, path) in files {
                let mut f = std::fs::File::open(&path)?;
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&f.metadata()?, tar::HeaderMode::Deterministic);
                h.set_mode(0o644);
                b.append_data(&mut h, name, &mut f)?;
            }
            b.finish()?;
            drop(b);
            std.shutdown(std::net::Shutdown::Write)?;
            std.set_nonblocking(true)?;
            Ok(std)
        })
        .await
        .map_err(|e| StagingError::Internal(e.to_string()))?
        .map_err(|e| StagingError::Internal(format!("streaming into the staging container: {e}")))?;
        let mut conn = UnixStream::from_std(std).map_err(|e| StagingError::Internal(e.to_string()))?;
        let reply = proto::client::read_reply(&mut conn)
            .await
            .map_err(|e| StagingError::Internal(format!("streaming into the staging container: {e}")))?;
        match reply.error {
            Some((_, msg)) => Err(StagingError::Internal(format!("streaming into the staging container: {msg}"))),
            None => Ok(()),
        }
    }

    /// Passes the builder's output on as log lines until it exits; stops it if
    /// it writes more than the disk limit into the container.
    async fn follow(
        &self,
        guid: &str,
        conn: UnixStream,
        log: &Logger,
        disk_limit: u64,
        mut stop: watch::Receiver<bool>,
    ) -> Result<i32, StagingFailure> {
        let (mut r, mut w) = conn.into_split();
        // Nobody types into a build: a buildpack that reads stdin gets EOF.
        let _ = proto::client::write_frame(&mut w, proto::TAG_STDIN_EOF, &[]).await;
        let mut out = LineSplitter::default();
        let mut err = LineSplitter::default();
        let mut disk_check = tokio::time::interval(Duration::from_secs(1));
        disk_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Frames are cut from a buffer filled by `read_buf`, which is safe to
        // interrupt in `select!`: a timer tick never loses half a frame.
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            loop {
                match proto::decode(&mut buf) {
                    Ok(Some((proto::TAG_STDOUT, data))) => out.push(&data, |l| log.line(l, false)),
                    Ok(Some((proto::TAG_STDERR, data))) => err.push(&data, |l| log.line(l, true)),
                    Ok(Some((proto::TAG_EXIT, data))) => {
                        out.flush(|l| log.line(l, false));
                        err.flush(|l| log.line(l, true));
                        return proto::parse_exit(&data)
                            .ok_or_else(|| StagingFailure::error("the builder's exit status was unreadable"));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        return Err(StagingFailure::error(format!(
                            "the staging container's init sent a malformed frame ({} bytes)",
                            e.0
                        )));
                    }
                }
            }
            tokio::select! {
                n = r.read_buf(&mut buf) => match n {
                    Ok(0) => return Err(StagingFailure::error("the staging container closed the builder's output before it exited")),
                    Ok(_) => {}
                    Err(e) => return Err(StagingFailure::error(format!("reading the builder's output: {e}"))),
                },
                // The builder goes with its container, destroyed by the caller.
                // (The guard `wait_for` returns is not Send: drop it inside.)
                () = async { drop(stop.wait_for(|s| *s).await) } => return Err(StagingFailure::error("stopped")),
                _ = disk_check.tick() => {
                    // Walking the writable layer is file-system work: off the async threads.
                    let (g, h) = (self.gardener.clone(), guid.to_string());
                    if let Ok(Ok(m)) = tokio::task::spawn_blocking(move || g.metrics(&h)).await {
                        if m.disk_stat.exclusive_bytes_used > disk_limit {
                            return Err(StagingFailure::new("StagingError", format!(
                                "staging used more disk than its limit of {}", byte_size(disk_limit))));
                        }
                    }
                }
            }
        }
    }

    async fn builder_failure(&self, guid: &str, code: i32, log: &Logger) -> StagingFailure {
        let oom = self.gardener.info(guid).await.is_ok_and(|i| i.events.iter().any(|e| e.contains("ut of memory")));
        let mut f = match code {
            222..=226 => {
                let (reason, message) = crate::lifecycle::failure_reason(code);
                StagingFailure::new(reason, message)
            }
            _ if oom => {
                StagingFailure::new("StagingError", "staging ran out of memory: raise the staging memory limit")
            }
            _ => {
                let tail: Vec<String> = lock(&log.stderr_tail).iter().cloned().collect();
                let why = if tail.is_empty() { "the builder failed".to_string() } else { tail.join("; ") };
                StagingFailure::error(why)
            }
        };
        f.exit_code = code;
        f
    }

    async fn stream_out_conn(&self, guid: &str, source: &str) -> Result<UnixStream, StagingError> {
        let mut conn = self
            .gardener
            .stream(guid, Request::StreamOut { user: "vcap".into(), source: source.into() })
            .await
            .map_err(|e| StagingError::Internal(format!("streaming {source} out: {e}")))?;
        conn.flush().await.map_err(|e| StagingError::Internal(e.to_string()))?;
        Ok(conn)
    }

    /// The single regular file `source` from the container, into `dest` (at
    /// most `limit` bytes). The tar comes from the container, so it is read as
    /// untrusted: only the first entry, only if it is a regular file.
    async fn stream_out_file(&self, guid: &str, source: &str, dest: &Path, limit: u64) -> Result<u64, StagingError> {
        let conn = self.stream_out_conn(guid, source).await?;
        let std = conn.into_std().map_err(|e| StagingError::Internal(e.to_string()))?;
        let dest = dest.to_path_buf();
        let source = source.to_string();
        tokio::task::spawn_blocking(move || -> Result<u64, StagingError> {
            let bad = |why: String| StagingError::Internal(format!("{source} from the staging container: {why}"));
            std.set_nonblocking(false).map_err(|e| bad(e.to_string()))?;
            let mut a = tar::Archive::new(std);
            let mut entries = a.entries().map_err(|e| bad(e.to_string()))?;
            let mut e =
                entries.next().ok_or_else(|| bad("it does not exist".into()))?.map_err(|e| bad(e.to_string()))?;
            if e.header().entry_type() != tar::EntryType::Regular {
                return Err(bad("it is not a regular file".into()));
            }
            if e.size() > limit {
                return Err(bad(format!("it is larger than {}", byte_size(limit))));
            }
            let mut f = std::fs::File::create(&dest).map_err(|e| bad(e.to_string()))?;
            let n = std::io::copy(&mut std::io::Read::take(&mut e, limit), &mut f).map_err(|e| bad(e.to_string()))?;
            Ok(n)
        })
        .await
        .map_err(|e| StagingError::Internal(e.to_string()))?
    }

    async fn stream_out_bytes(&self, guid: &str, source: &str, limit: u64) -> Result<Vec<u8>, StagingError> {
        let tmp = self.cfg.work_dir.join("scratch").join(guid).join("out.tmp");
        self.stream_out_file(guid, source, &tmp, limit).await?;
        let data = std::fs::read(&tmp).map_err(|e| StagingError::Internal(e.to_string()))?;
        let _ = std::fs::remove_file(&tmp);
        Ok(data)
    }

    /// Waits for a staging to end (for callers that do not stream).
    pub async fn wait(&self, guid: &str) -> Result<StagingRecord, StagingError> {
        let task = lock(&self.tasks).get(guid).cloned();
        if let Some(t) = task {
            let mut rx = t.events.subscribe();
            loop {
                let rec = lock(&t.record).clone();
                if rec.outcome != Outcome::Running {
                    return Ok(rec);
                }
                match rx.recv().await {
                    Ok(Event::Done(r)) => return Ok(*r),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
        self.get(guid)
    }
}

pub fn droplet_key(staging_guid: &str) -> String {
    format!("droplets/{staging_guid}")
}

pub fn cache_key(app_guid: &str) -> String {
    format!("caches/{app_guid}")
}

/// Copies the lifecycle binary into the stager's directory as `builder` (what
/// staging containers mount read-only at /tmp/lifecycle). Missing binary: the
/// cell runs, and stagings fail with a message saying how to build it.
fn install_lifecycle(cfg: &StagerConfig) -> Result<(), StagingError> {
    let dir = cfg.work_dir.join("lifecycle");
    std::fs::create_dir_all(&dir).map_err(|e| StagingError::Internal(format!("creating {}: {e}", dir.display())))?;
    let builder = dir.join("builder");
    if !cfg.lifecycle_binary.is_file() {
        tracing::warn!(path = %cfg.lifecycle_binary.display(), "no lifecycle binary: staging is disabled (make lifecycle)");
        let _ = std::fs::remove_file(&builder);
        return Ok(());
    }
    let tmp = dir.join(".builder.tmp");
    std::fs::copy(&cfg.lifecycle_binary, &tmp)
        .and_then(|_| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        })
        .and_then(|_| std::fs::rename(&tmp, &builder))
        .map_err(|e| StagingError::Internal(format!("installing {}: {e}", builder.display())))?;
    // One binary, several roles chosen by the name it is started under.
    for role in LIFECYCLE_ROLES {
        let link = dir.join(role);
        if std::fs::read_link(&link).is_err() {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("builder", &link)
                .map_err(|e| StagingError::Internal(format!("installing {}: {e}", link.display())))?;
        }
    }
    Ok(())
}

/// The environment Cloud Controller gives a staging task.
fn staging_env(
    req: &StageRequest,
    guid: &str,
    memory_mb: u32,
    disk_mb: u32,
    host_ip: &str,
    container_ip: &str,
) -> Vec<String> {
    let vcap_application = serde_json::json!({
        "cf_api": "",
        "limits": {"fds": 16384, "mem": memory_mb, "disk": disk_mb},
        "application_name": req.app_name,
        "application_uris": [],
        "name": req.app_name,
        "space_name": req.space_name,
        "space_id": req.space_guid,
        "organization_id": "",
        "organization_name": "",
        "uris": [],
        "process_id": req.app_guid,
        "process_type": "web",
        "application_id": req.app_guid,
        "version": guid,
        "application_version": guid,
    });
    let mut env = vec![
        "LANG=en_US.UTF-8".to_string(),
        format!("CF_STACK={}", req.stack),
        format!("VCAP_APPLICATION={vcap_application}"),
        format!("MEMORY_LIMIT={memory_mb}m"),
        format!("CF_INSTANCE_GUID={guid}"),
        format!("CF_INSTANCE_IP={host_ip}"),
        format!("CF_INSTANCE_INTERNAL_IP={container_ip}"),
        "CF_INSTANCE_ADDR=".to_string(),
        "CF_INSTANCE_PORT=".to_string(),
        "CF_INSTANCE_PORTS=[]".to_string(),
    ];
    if !req.env.iter().any(|(k, _)| k == "VCAP_SERVICES") {
        env.push("VCAP_SERVICES={}".to_string());
    }
    env.extend(req.env.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

/// The builder's result.json (Cloud Foundry's shape) → what the API reports.
fn parse_result(json: &str, stack: &str) -> Result<StagingSuccess, StagingFailure> {
    let bad = || StagingFailure::error("the builder's result.json is malformed");
    let v: serde_json::Value = serde_json::from_str(json).map_err(|_| bad())?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let process_types: BTreeMap<String, String> =
        v["process_types"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), s(v))).collect()).unwrap_or_default();
    let meta = &v["lifecycle_metadata"];
    let buildpacks = meta["buildpacks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| BuildpackUsed { key: s(&b["key"]), name: s(&b["name"]), version: s(&b["version"]) })
                .collect()
        })
        .unwrap_or_default();
    Ok(StagingSuccess {
        droplet: BlobInfo { key: String::new(), sha256: String::new(), size: 0 },
        detected_buildpack: s(&meta["detected_buildpack"]),
        buildpack_key: s(&meta["buildpack_key"]),
        buildpacks,
        start_command: process_types.get("web").cloned().unwrap_or_default(),
        process_types,
        result_json: json.to_string(),
        stack: stack.to_string(),
    })
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// Sends log lines to the staging's watchers.
struct Logger {
    task: Arc<Task>,
    stderr_tail: Mutex<VecDeque<String>>,
    hub: Option<(Arc<crate::executor::logs::LogHub>, String)>,
}

impl Logger {
    fn line(&self, message: &str, stderr: bool) {
        if stderr {
            let mut t = lock(&self.stderr_tail);
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(message.to_string());
        }
        if let Some((hub, app_guid)) = &self.hub {
            hub.emit(crate::grpc::pb::LogEnvelope {
                source_type: "STG".into(),
                source_instance: "0".into(),
                message_type: i32::from(stderr),
                timestamp: now_ns(),
                message: message.to_string(),
                log_guid: app_guid.clone(),
            });
        }
        let _ =
            self.task.events.send(Event::Log(LogLine { message: message.to_string(), stderr, timestamp: now_ns() }));
    }
}

/// Cuts a byte stream into lines (lossy UTF-8; over-long lines split).
#[derive(Default)]
struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, data: &[u8], mut emit: impl FnMut(&str)) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            emit(&String::from_utf8_lossy(line));
            start += i + 1;
        }
        self.buf.drain(..start);
        while self.buf.len() >= MAX_LINE {
            let rest = self.buf.split_off(MAX_LINE);
            emit(&String::from_utf8_lossy(&self.buf));
            self.buf = rest;
        }
    }

    fn flush(&mut self, mut emit: impl FnMut(&str)) {
        if !self.buf.is_empty() {
            emit(&String::from_utf8_lossy(&self.buf));
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_bounded() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.push(b"a\r\nb", |l| got.push(l.to_string()));
        s.push(b"c\n\nd", |l| got.push(l.to_string()));
        s.flush(|l| got.push(l.to_string()));
        assert_eq!(got, ["a", "bc", "", "d"]);
        got.clear();
        s.push(&vec![b'x'; MAX_LINE * 2 + 3], |l| got.push(l.len().to_string()));
        s.flush(|l| got.push(l.len().to_string()));
        assert_eq!(got, [MAX_LINE.to_string(), MAX_LINE.to_string(), "3".to_string()]);
    }

    #[test]
    fn result_json_in_cf_shape() {
        let json = r#"{"process_types":{"web":"./run.sh","worker":"w"},"lifecycle_type":"buildpack",
            "lifecycle_metadata":{"buildpack_key":"shell_buildpack","detected_buildpack":"shell",
            "buildpacks":[{"key":"a","name":"A","version":"1"},{"key":"shell_buildpack","name":"shell"}]},
            "processes":[{"type":"web","command":"./run.sh"}],"execution_metadata":""}"#;
        let r = parse_result(json, "tiny").unwrap_or_else(|f| panic!("{f:?}"));
        assert_eq!(r.start_command, "./run.sh");
        assert_eq!(r.detected_buildpack, "shell");
        assert_eq!(r.buildpacks.len(), 2);
        assert_eq!(r.buildpacks[1].version, "");
        assert_eq!(r.process_types.len(), 2);
        assert!(parse_result("not json", "tiny").is_err());
    }

    #[test]
    fn env_has_what_cf_gives_staging() {
        let req = StageRequest {
            app_guid: "app".into(),
            app_name: "hello".into(),
            stack: "tiny".into(),
            env: vec![("FOO".into(), "bar".into())],
            ..Default::default()
        };
        let env = staging_env(&req, "g", 1024, 4096, "10.0.0.1", "10.0.0.2");
        for want in [
            "LANG=en_US.UTF-8",
            "CF_STACK=tiny",
            "CF_INSTANCE_ADDR=",
            "CF_INSTANCE_PORT=",
            "VCAP_SERVICES={}",
            "FOO=bar",
            "MEMORY_LIMIT=1024m",
        ] {
            assert!(env.iter().any(|e| e == want), "{want} in {env:?}");
        }
        let va = env.iter().find_map(|e| e.strip_prefix("VCAP_APPLICATION=")).unwrap_or_default();
        let va: serde_json::Value = serde_json::from_str(va).unwrap_or_default();
        assert_eq!(va["application_name"], "hello");
        assert_eq!(va["limits"]["disk"], 4096);
        assert_eq!(human_duration(Duration::from_secs(900)), "15m");
    }
}
