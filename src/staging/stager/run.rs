//! One staging's run, start to end: package, cache and buildpacks fetched, the
//! container created, inputs streamed in, the builder run, the droplet and
//! cache uploaded; a timeout or cancel stops it at a safe point, and whatever
//! happened the container and scratch go and the record is saved.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::builder::{DROPLET, INPUTS, LIFECYCLE_MOUNT, OUTPUT_CACHE, RESULT, parse_result, staging_env};
use super::log::{Logger, human_duration};
use super::record::{Event, Outcome, StageRequest, StagingFailure, StagingSuccess};
use super::{Stager, Task, cache_key, droplet_key, lock};
use crate::staging::registry::Buildpack;
use crate::staging::{StagingError, byte_size};
use garden_api::types::{BindMount, ContainerSpec, Limits, ProcessSpec};

impl Stager {
    pub(super) async fn run(
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
        let started = std::time::Instant::now();
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
        self.cfg.metrics.staged(matches!(outcome, Outcome::Succeeded(_)), started.elapsed().as_secs_f64());
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
            rootfs: super::stack_rootfs(&req.stack),
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
                memory_limits: garden_api::types::MemoryLimits { limit_in_bytes: u64::from(memory_mb) << 20 },
                pid_limits: garden_api::types::PidLimits { max: 1024 },
                // CPU shares in proportion to memory, as Diego weighs containers.
                cpu_limits: garden_api::types::CpuLimits { weight: u64::from(memory_mb).max(2), ..Default::default() },
                // Enforced by the kernel: a build that fills it gets ENOSPC/EDQUOT.
                disk_limits: crate::executor::container::disk_limits(disk_mb, &super::stack_rootfs(&req.stack)),
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

        // The cell's IP as an app instance gets it (CF gives the same in staging).
        let addrs = crate::executor::container::addresses(&self.gardener, guid)
            .await
            .map_err(|e| StagingFailure::error(e.to_string()))?;
        let env = staging_env(req, guid, memory_mb, disk_mb, &addrs.host_ip, &addrs.container_ip);
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
        let code = self.follow(conn, log, stop.clone()).await?;
        log.line(&format!("Exit status {code}"), false);
        if code != 0 {
            return Err(self.builder_failure(guid, code, log, u64::from(disk_mb) << 20).await);
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
        if crate::staging::validate_guid("sha256", &bp.sha256).is_ok() && cached.is_file() {
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
}
