//! The stager: a staging is a task that creates a staging container from the
//! app's stack, streams in the package, the previous build cache and the
//! buildpacks, runs `/tmp/lifecycle/builder` as `vcap`, and uploads the droplet
//! and the new build cache it made. Its log lines (`STG`) go to every watcher as
//! they happen; its record (running, succeeded, failed) is kept in the depot so
//! a restarted cell still knows how each staging ended.
//!
//! This file is the stager itself: its directory, its records, and starting,
//! cancelling and waiting for stagings. A staging's run is in `run`, the
//! builder's contract in `builder`, files in and out of the container in
//! `streaming`, its log lines in `log`, and its request and outcome in `record`.

mod builder;
mod log;
mod record;
mod run;
mod streaming;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

pub use self::record::{
    BuildpackUsed, Event, LogLine, Outcome, StageRequest, StagingFailure, StagingRecord, StagingSuccess,
};
use super::registry::{Buildpack, Registry};
use super::{StagingError, new_guid, validate_guid};
use celld_blobstore::Blobstore;
use celld_garden::gardener::Gardener;

/// Names the lifecycle binary answers to besides `builder` (links to it).
const LIFECYCLE_ROLES: &[&str] = &["launcher", "sshd"];

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
    pub metrics: crate::staging::metrics::StagingMetrics,
}

pub(super) struct Task {
    pub(super) record: Mutex<StagingRecord>,
    pub(super) events: broadcast::Sender<Event>,
    pub(super) cancel: watch::Sender<bool>,
}

pub struct Stager {
    pub(super) gardener: Arc<Gardener>,
    pub(super) blobs: Arc<Blobstore>,
    pub registry: Registry,
    pub(super) cfg: StagerConfig,
    pub(super) tasks: Mutex<HashMap<String, Arc<Task>>>,
}

/// A watcher of one staging: its guid and its events from the start.
pub struct Watch {
    pub staging_guid: String,
    pub events: broadcast::Receiver<Event>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// The rootfs a stack names: `preloaded:NAME`, or the image itself.
pub fn stack_rootfs(stack: &str) -> String {
    if celld_image::ImageStore::is_image_uri(stack) { stack.to_string() } else { format!("preloaded:{stack}") }
}

impl Stager {
    /// A Docker image's config (no layers): a Docker app's staging.
    pub async fn image_config(
        &self,
        uri: &str,
        creds: Option<(String, String)>,
    ) -> Result<celld_image::ImageConfig, celld_garden::gardener::GardenError> {
        self.gardener.image_config(uri, creds).await
    }

    /// Pulls a Docker app's image ahead of its first start, with progress;
    /// the unpacked size.
    pub async fn pull_image(
        &self,
        uri: &str,
        creds: Option<(String, String)>,
        progress: celld_image::Progress,
    ) -> Result<u64, celld_garden::gardener::GardenError> {
        self.gardener.pull_image(uri, creds, progress).await
    }

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

    pub(super) fn save(&self, rec: &StagingRecord) {
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

    /// Stacks this cell can stage on: its preloaded rootfses, and images
    /// (`docker://…`, `oci:///…`: pulled when the staging container is made).
    pub fn stack_exists(&self, stack: &str) -> bool {
        if celld_image::ImageStore::is_image_uri(stack) {
            return matches!(celld_image::ImageRef::parse(stack), Ok(Some(_)));
        }
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
                "stack {:?} is not available on this cell (a stack NAME is the rootfs preloaded:NAME, or an image docker://… or oci:///…)",
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
