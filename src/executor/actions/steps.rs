//! The leaves of an action tree in one container, over the gardener: Run
//! (its process id recorded as a container property, so a restarted cell
//! re-attaches to it), Download (through the host's cache, streamed in),
//! Upload (streamed out, POSTed as Diego's uploader does).

use std::sync::Arc;

use base64::Engine;
use md5::Digest;

use super::{At, DownloadCache, Leaf, StepError, StepRunner};
use crate::executor::container;
use crate::executor::logs::{LineWriter, LogHub, RateLimiter};
use celld_garden::gardener::Gardener;
use celld_proto::diego::bbs;
use garden_api::types::{ProcessSpec, ResourceLimits};

/// A Run's process id is kept in the container property this + its position.
pub const RUN_PROPERTY_PREFIX: &str = "executor:action-process:";
/// The most of a monitor's output kept as its error.
const MAX_CAPTURE: usize = 4096;
/// The largest file an Upload sends (it is held in memory).
const MAX_UPLOAD: u64 = 1 << 30;

pub struct ContainerSteps {
    pub gardener: Arc<Gardener>,
    pub logs: Arc<LogHub>,
    pub cache: Arc<DownloadCache>,
    pub handle: String,
    pub log_guid: String,
    /// The instance index ("0" for tasks), for log lines.
    pub index: i32,
    /// The container's environment (Diego's: the definition's env and the
    /// CF_INSTANCE_* the executor adds); a Run's own env comes after it.
    pub env: Vec<String>,
    /// The user of Downloads that name none (`legacy_download_user`).
    pub download_user: String,
    /// Bytes a Download may unpack to (the disk limit).
    pub disk_limit: u64,
    pub limiter: Option<Arc<RateLimiter>>,
    /// Whether Runs record their process ids (not the monitor's).
    pub record: bool,
    /// Whether Runs' output goes nowhere (the monitor's, as in Diego).
    pub quiet: bool,
    /// After a cell restart: Runs re-attach to the processes they recorded.
    pub resuming: bool,
}

impl ContainerSteps {
    fn writer(&self, source: &str, err: bool) -> LineWriter {
        LineWriter::new(
            self.logs.clone(),
            self.log_guid.clone(),
            source.to_string(),
            self.index.to_string(),
            err,
            crate::executor::lrp::MAX_LOG_LINE,
            self.limiter.clone(),
        )
    }

    async fn start(&self, at: &str, run: &bbs::RunAction) -> Result<tokio::net::UnixStream, StepError> {
        let property = format!("{RUN_PROPERTY_PREFIX}{at}");
        if self.resuming {
            if let Ok(pid) = self.gardener.property(&self.handle, &property) {
                tracing::info!(handle = %self.handle, at, process = %pid, "re-attaching to the action's process");
                return self
                    .gardener
                    .attach(&self.handle, &pid)
                    .await
                    .map_err(|e| StepError::Failed(format!("re-attaching to the process of {at}: {e}")));
            }
        }
        let mut env = self.env.clone();
        env.extend(run.env.iter().map(|e| format!("{}={}", e.name, e.value)));
        let limits = run.resource_limits.as_ref();
        let spec = ProcessSpec {
            path: run.path.clone(),
            args: run.args.clone(),
            dir: run.dir.clone(),
            user: if run.user.is_empty() { "root".into() } else { run.user.clone() },
            env,
            rlimits: ResourceLimits {
                nofile: limits.and_then(|l| l.nofile),
                nproc: limits.and_then(|l| l.nproc),
                ..Default::default()
            },
            ..Default::default()
        };
        let (pid, conn) = self
            .gardener
            .run(&self.handle, &spec)
            .await
            .map_err(|e| StepError::Emittable(format!("failed to start {}: {e}", run.path)))?;
        if self.record {
            if let Err(e) = self.gardener.set_property(&self.handle, &property, &pid) {
                tracing::warn!(handle = %self.handle, error = %e, "recording the action's process id failed");
            }
        }
        Ok(conn)
    }
}

#[async_trait::async_trait]
impl StepRunner for ContainerSteps {
    async fn step(&self, at: At<'_>, leaf: Leaf<'_>) -> Result<(), StepError> {
        match leaf {
            Leaf::Run(x) => self.run(at, x).await,
            Leaf::Download(x) => self.download(at, x).await,
            Leaf::Upload(x) => self.upload(at, x).await,
        }
    }

    fn emit(&self, source: &str, msg: &str, stderr: bool) {
        let mut w = self.writer(source, stderr);
        w.push(msg.as_bytes());
        w.push(b"\n");
        w.flush();
    }
}

impl ContainerSteps {
    async fn run(&self, At { at, source, cancel }: At<'_>, run: &bbs::RunAction) -> Result<(), StepError> {
        let conn = tokio::select! {
            c = self.start(at, run) => c?,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let quiet = self.quiet || run.suppress_log_output;
        let (mut out, mut err) = (self.writer(source, false), self.writer(source, true));
        // The monitor's output is its error, as Diego's output wrapper makes it.
        let mut captured: Vec<u8> = Vec::new();
        let ended = container::follow_signalled(conn, cancel, |is_err, data| {
            if self.quiet {
                let room = MAX_CAPTURE.saturating_sub(captured.len());
                captured.extend_from_slice(&data[..data.len().min(room)]);
            } else if !quiet {
                if is_err { err.push(data) } else { out.push(data) }
            }
        })
        .await;
        let oom = match ended.code {
            Some(c) if c != 0 => container::out_of_memory(&self.gardener, &self.handle).await,
            _ => false,
        };
        if let (Some(code), false) = (ended.code, quiet) {
            let mut line = format!("Exit status {code}");
            if ended.killed {
                line.push_str(&format!(
                    " (exceeded {} graceful shutdown interval)",
                    crate::executor::health::go_duration(container::GRACEFUL_SHUTDOWN)
                ));
            }
            if oom {
                line.push_str(" (out of memory)");
            }
            out.push(line.as_bytes());
        }
        out.flush();
        err.flush();
        match ended {
            container::Followed { killed: true, code: None, .. } => Err(StepError::DidNotExit),
            container::Followed { killed: true, .. } => Err(StepError::ExceededGracefulShutdown),
            container::Followed { terminated: true, .. } => Err(StepError::Cancelled),
            container::Followed { code: Some(0), .. } => Ok(()),
            container::Followed { code: Some(code), .. } => {
                let said = String::from_utf8_lossy(&captured).trim().to_string();
                if said.is_empty() {
                    Err(StepError::Emittable(container::exit_reason(source, code, oom)))
                } else {
                    Err(StepError::Emittable(said))
                }
            }
            container::Followed { code: None, .. } => {
                Err(StepError::Emittable(format!("{source}: the container's init went away")))
            }
        }
    }

    async fn download(&self, At { at, source, cancel }: At<'_>, d: &bbs::DownloadAction) -> Result<(), StepError> {
        let emit = |m: &str, err: bool| {
            if !d.artifact.is_empty() {
                self.emit(source, m, err)
            }
        };
        emit(&format!("Downloading {}...", d.artifact), false);
        let fetched = tokio::select! {
            r = self.cache.fetch(&d.from, &d.cache_key, &d.checksum_algorithm, &d.checksum_value) => r,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let artifact = match fetched.and_then(|a| Ok((a.size, a.into_tar()?))) {
            Ok(a) => a,
            Err(e) => {
                let msg = if d.artifact.is_empty() {
                    "Downloading failed".to_string()
                } else {
                    format!("Downloading {} failed", d.artifact)
                };
                tracing::warn!(handle = %self.handle, at, error = %e, "download failed");
                self.emit(source, &msg, true);
                // Diego's reason is the line alone; the cause is what a
                // person needs to act on, so it follows.
                return Err(StepError::Emittable(format!("{msg}: {e}")));
            }
        };
        let user = [&d.user, &self.download_user].into_iter().find(|u| !u.is_empty()).map_or("root", |u| u.as_str());
        let what = if d.artifact.is_empty() { "the download".to_string() } else { d.artifact.clone() };
        let streamed = tokio::select! {
            r = container::stream_tar_in(&self.gardener, &self.handle, user, &d.to, artifact.1, self.disk_limit, &what) => r,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        if let Err(e) = streamed {
            let msg = if d.artifact.is_empty() {
                format!("Copying into the container failed: {e}")
            } else {
                format!("Copying {} into the container failed: {e}", d.artifact)
            };
            self.emit(source, &msg, true);
            return Err(StepError::Emittable(msg));
        }
        match artifact.0 {
            0 => emit(&format!("Downloaded {}", d.artifact), false),
            n => emit(&format!("Downloaded {} ({})", d.artifact, celld_base::size::byte_size(n)), false),
        }
        Ok(())
    }

    async fn upload(&self, At { at, source, cancel }: At<'_>, u: &bbs::UploadAction) -> Result<(), StepError> {
        let named = |m: &str| if u.artifact.is_empty() { m.to_string() } else { format!("{m} for {}", u.artifact) };
        if !(u.to.starts_with("http://") || u.to.starts_with("https://")) {
            let msg = named("Failed to parse URL");
            self.emit(source, &msg, true);
            return Err(StepError::Emittable(msg));
        }
        let user = if u.user.is_empty() { "root" } else { u.user.as_str() };
        let body = tokio::select! {
            r = container::read_file_as(&self.gardener, &self.handle, user, &u.from, MAX_UPLOAD) => r,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(handle = %self.handle, at, error = %e, "streaming the upload out failed");
                let msg = named("Failed to establish stream from container");
                self.emit(source, &msg, true);
                return Err(StepError::Emittable(format!("{msg}: {e}")));
            }
        };
        let size = body.len() as u64;
        let content_md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
        let sent = self
            .cache
            .client()
            .post(&u.to)
            .header("Content-Type", "application/octet-stream")
            .header("Content-MD5", content_md5)
            .body(body)
            .send();
        let res = tokio::select! {
            r = sent => r,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let failed = match res {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the server answered {}", r.status())),
            // Without the URL: it may carry credentials.
            Err(e) => Some(e.without_url().to_string()),
        };
        if let Some(why) = failed {
            tracing::warn!(handle = %self.handle, at, error = %why, "upload failed");
            self.emit(source, &named("Failed to upload payload"), true);
            return Err(StepError::Failed(format!("{}: {why}", named("Failed to upload payload"))));
        }
        if !u.artifact.is_empty() {
            self.emit(source, &format!("Uploaded {} ({})", u.artifact, celld_base::size::byte_size(size)), false);
        }
        Ok(())
    }
}
