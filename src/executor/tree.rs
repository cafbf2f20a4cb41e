//! Instances and tasks that run Diego's action tree instead of a droplet and
//! a start command: cached dependencies streamed in, `setup` run to its end,
//! then `action` in the background; its end ends the instance or task. After
//! a cell restart only `action` is picked up again (its Runs re-attach).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::actions::{self, ContainerSteps, StepError};
use super::{Executor, lock};
use celld_proto::diego::bbs;

/// Diego's reason when a cached dependency cannot be fetched.
pub const CACHED_DEPENDENCIES_FAILED: &str = "failed to download cached artifacts";

/// Set once the setup is done and the action started.
const ACTION_STARTED_PROPERTY: &str = "executor:action-started";

/// A running action tree.
pub(super) struct Tree {
    pub stop: TreeStop,
    /// Its result, once it ends (never, while an LRP's action that succeeded
    /// waits for its health checks to end it, as in Diego).
    pub ended: oneshot::Receiver<Result<(), StepError>>,
}

/// Ends a running tree.
pub(super) struct TreeStop {
    cancel: CancellationToken,
    done: watch::Receiver<bool>,
}

impl TreeStop {
    /// Cancels the tree (its processes get TERM, then KILL after 10 s) and
    /// waits for it to end.
    pub async fn stop(&mut self) {
        self.cancel.cancel();
        let grace = super::container::GRACEFUL_SHUTDOWN + Duration::from_secs(2);
        let _ = tokio::time::timeout(grace, self.done.wait_for(|d| *d)).await;
    }
}

/// What the cell needs to run one container's tree.
pub(super) struct TreeSpec<'a> {
    pub guid: &'a str,
    pub log_guid: &'a str,
    pub index: i32,
    pub env: Vec<String>,
    pub legacy_download_user: &'a str,
    pub disk_mb: u32,
    /// The container's log source (a leaf without its own uses it).
    pub source: String,
    pub cached_dependencies: &'a [bbs::CachedDependency],
    pub setup: Option<&'a bbs::Action>,
    pub action: &'a bbs::Action,
    /// After a cell restart: no dependencies, no setup; Runs re-attach.
    pub resuming: bool,
    /// An action that succeeds leaves the end to the health checks (LRPs
    /// with a check or monitor).
    pub wait_on_success: bool,
}

impl Executor {
    /// The runner of one container's leaves.
    pub(super) fn container_steps(&self, spec: &TreeSpec<'_>, monitor: bool) -> ContainerSteps {
        ContainerSteps {
            gardener: self.gardener.clone(),
            logs: self.logs.clone(),
            cache: self.artifacts.clone(),
            handle: spec.guid.to_string(),
            log_guid: spec.log_guid.to_string(),
            index: spec.index,
            env: spec.env.clone(),
            download_user: spec.legacy_download_user.to_string(),
            disk_limit: if spec.disk_mb == 0 { u64::MAX } else { u64::from(spec.disk_mb) << 20 },
            limiter: lock(&self.table).lrps.get(spec.guid).and_then(|l| l.limiter.clone()),
            record: !monitor,
            quiet: monitor,
            resuming: spec.resuming && !monitor,
        }
    }

    /// Fetches the cached dependencies, runs the setup, starts the action.
    /// Errors are the crash or failure reason.
    pub(super) async fn start_tree(self: &Arc<Self>, spec: TreeSpec<'_>) -> Result<Tree, String> {
        for (what, a) in [("setup", spec.setup), ("action", Some(spec.action))] {
            if let Some(a) = a {
                actions::validate(a, what).map_err(|e| e.to_string())?;
            }
        }
        if spec.resuming {
            if self.gardener.property(spec.guid, ACTION_STARTED_PROPERTY).is_err() {
                return Err("the cell restarted before the setup finished; it is not run twice".into());
            }
            actions::resumable(spec.action)?;
        }
        let steps = Arc::new(self.container_steps(&spec, false));
        let cancel = CancellationToken::new();
        if !spec.resuming {
            for (i, c) in spec.cached_dependencies.iter().enumerate() {
                let d = bbs::DownloadAction {
                    artifact: c.name.clone(),
                    from: c.from.clone(),
                    to: c.to.clone(),
                    cache_key: c.cache_key.clone(),
                    log_source: c.log_source.clone(),
                    // Diego mounts them read-only, owned by root.
                    user: "root".into(),
                    checksum_algorithm: c.checksum_algorithm.clone(),
                    checksum_value: c.checksum_value.clone(),
                };
                let a = bbs::Action { download_action: Some(d), ..Default::default() };
                actions::perform(&*steps, &a, format!("cached.{i}"), &spec.source, cancel.clone())
                    .await
                    .map_err(|e| format!("{CACHED_DEPENDENCIES_FAILED}: {e}"))?;
            }
            if let Some(setup) = spec.setup {
                actions::perform(&*steps, setup, "setup".into(), &spec.source, cancel.clone())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            // A restarted cell picks the tree up only past this point.
            self.gardener.set_property(spec.guid, ACTION_STARTED_PROPERTY, "true").map_err(|e| e.to_string())?;
        }
        let (tx, ended) = oneshot::channel();
        let (done_tx, done) = watch::channel(false);
        let action = spec.action.clone();
        let (source, wait) = (spec.source.clone(), spec.wait_on_success);
        let token = cancel.clone();
        tokio::spawn(async move {
            let res = actions::perform(&*steps, &action, "action".into(), &source, token.clone()).await;
            tracing::info!(handle = %steps.handle, result = ?res, "the action tree ended");
            if res.is_ok() && wait && !token.is_cancelled() {
                // Diego's codependent of the action and its monitor does not
                // end when the action succeeds: the checks will.
                token.cancelled().await;
            }
            let _ = tx.send(res);
            let _ = done_tx.send(true);
        });
        Ok(Tree { stop: TreeStop { cancel, done }, ended })
    }
}
