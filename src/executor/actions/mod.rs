//! Diego's action trees (a DesiredLRP's setup/action/monitor, a Task's
//! action) run in a container, with Diego's semantics and wording:
//! Serial stops at the first error, Parallel waits for all, Codependent ends
//! all when the first ends ("Codependent step exited" when it succeeded), Try
//! never fails, Timeout cancels its action ("exceeded 1s timeout"),
//! EmitProgress logs around its action. Errors join with "; ", leaving out
//! cancellations, and the joined text is the crash or failure reason.
//!
//! The tree is walked here over a [`StepRunner`], which does the leaves
//! (Run, Download, Upload); [`ContainerSteps`] is the real one, over the
//! gardener. Every node has a position ("action.0.1"), which names a Run's
//! recorded process so a restarted cell can re-attach to it.
//!
//! Files: `download.rs` the host-side download cache, `steps.rs` the leaves in
//! a container, `monitor.rs` Diego's monitor loop.

mod download;
mod monitor;
mod steps;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use celld_proto::diego::bbs;

pub use download::{DownloadCache, DownloadError};
pub use monitor::{HEALTHY_INTERVAL, UNHEALTHY_INTERVAL, until_healthy, until_unhealthy};
pub use steps::{ContainerSteps, RUN_PROPERTY_PREFIX};

/// Diego's error when a Codependent's action ends without an error.
pub const CODEPENDENT_EXITED: &str = "Codependent step exited";

/// How a step failed. The `Display` text is Diego's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// A failure with a message meant for the app's developer (EmitProgress
    /// appends it to its failure prefix).
    #[error("{0}")]
    Emittable(String),
    #[error("{0}")]
    Failed(String),
    /// Ended by its parent; never shown in a reason.
    #[error("cancelled")]
    Cancelled,
    /// A Run that needed its KILL; never shown in a reason.
    #[error("exceeded graceful shutdown interval")]
    ExceededGracefulShutdown,
    #[error("process did not exit")]
    DidNotExit,
}

impl StepError {
    fn displayable(&self) -> bool {
        !matches!(self, StepError::Cancelled | StepError::ExceededGracefulShutdown)
    }
}

/// Several steps' errors as one, as Diego's multi-error prints them.
fn aggregate(errs: Vec<StepError>) -> Result<(), StepError> {
    let shown: Vec<String> = errs.iter().filter(|e| e.displayable()).map(|e| e.to_string()).collect();
    match (shown.is_empty(), errs.into_iter().next()) {
        (_, None) => Ok(()),
        (true, Some(first)) => Err(first),
        (false, Some(_)) => Err(StepError::Failed(shown.join("; "))),
    }
}

/// A leaf of a tree: what a [`StepRunner`] does.
pub enum Leaf<'a> {
    Run(&'a bbs::RunAction),
    Download(&'a bbs::DownloadAction),
    Upload(&'a bbs::UploadAction),
}

/// Where a leaf runs: its position in the tree, its log source (its own,
/// else its parent's), what cancels it.
pub struct At<'a> {
    pub at: &'a str,
    pub source: &'a str,
    pub cancel: &'a CancellationToken,
}

/// Does the leaves of a tree.
#[async_trait::async_trait]
pub trait StepRunner: Send + Sync {
    async fn step(&self, at: At<'_>, leaf: Leaf<'_>) -> Result<(), StepError>;
    /// A line to the app's log (EmitProgress).
    fn emit(&self, source: &str, msg: &str, stderr: bool);
}

type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StepError>> + Send + 'a>>;

fn pick<'a>(own: &'a str, inherited: &'a str) -> &'a str {
    if own.is_empty() { inherited } else { own }
}

/// Why an action cannot run: not exactly one of its fields is set.
pub fn validate(a: &bbs::Action, at: &str) -> Result<(), StepError> {
    let set = [
        a.download_action.is_some(),
        a.upload_action.is_some(),
        a.run_action.is_some(),
        a.timeout_action.is_some(),
        a.emit_progress_action.is_some(),
        a.try_action.is_some(),
        a.parallel_action.is_some(),
        a.serial_action.is_some(),
        a.codependent_action.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        return Err(StepError::Failed(format!(
            "invalid action at {at}: it must be exactly one kind of action, not {set}"
        )));
    }
    let inner = |i: &Option<Box<bbs::Action>>, what: &str| match i {
        Some(i) => validate(i, &format!("{at}.0")),
        None => Err(StepError::Failed(format!("invalid action at {at}: the {what} has no action"))),
    };
    if let Some(t) = &a.timeout_action {
        inner(&t.action, "timeout action")?;
        if t.timeout_ms <= 0 && t.deprecated_timeout_ns <= 0 {
            return Err(StepError::Failed(format!("invalid action at {at}: the timeout action has no timeout_ms")));
        }
    }
    if let Some(t) = &a.try_action {
        inner(&t.action, "try action")?;
    }
    if let Some(t) = &a.emit_progress_action {
        inner(&t.action, "emit progress action")?;
    }
    for (i, c) in children(a).iter().enumerate() {
        validate(c, &format!("{at}.{i}"))?;
    }
    Ok(())
}

/// Runs `action` (at position `at`) until it ends or `cancel` fires.
/// Validate the tree first ([`validate`]): a node with no kind is an error.
pub fn perform<'a>(
    r: &'a dyn StepRunner,
    a: &'a bbs::Action,
    at: String,
    source: &'a str,
    cancel: CancellationToken,
) -> StepFuture<'a> {
    Box::pin(async move {
        if cancel.is_cancelled() {
            return Err(StepError::Cancelled);
        }
        let leaf = |own: &'a str| At { at: &at, source: pick(own, source), cancel: &cancel };
        if let Some(x) = &a.run_action {
            return r.step(leaf(&x.log_source), Leaf::Run(x)).await;
        }
        if let Some(x) = &a.download_action {
            return r.step(leaf(&x.log_source), Leaf::Download(x)).await;
        }
        if let Some(x) = &a.upload_action {
            return r.step(leaf(&x.log_source), Leaf::Upload(x)).await;
        }
        if let Some(x) = &a.serial_action {
            let source = pick(&x.log_source, source);
            for (i, c) in x.actions.iter().enumerate() {
                if cancel.is_cancelled() {
                    return Err(StepError::Cancelled);
                }
                perform(r, c, format!("{at}.{i}"), source, cancel.clone()).await?;
            }
            return Ok(());
        }
        if let Some(x) = &a.parallel_action {
            let source = pick(&x.log_source, source);
            let all: FuturesUnordered<_> = x
                .actions
                .iter()
                .enumerate()
                .map(|(i, c)| perform(r, c, format!("{at}.{i}"), source, cancel.clone()))
                .collect();
            let errs: Vec<StepError> = all.filter_map(|r| async move { r.err() }).collect().await;
            return aggregate(errs);
        }
        if let Some(x) = &a.codependent_action {
            let source = pick(&x.log_source, source);
            let siblings = cancel.child_token();
            let mut all: FuturesUnordered<_> = x
                .actions
                .iter()
                .enumerate()
                .map(|(i, c)| perform(r, c, format!("{at}.{i}"), source, siblings.clone()))
                .collect();
            let mut errs = Vec::new();
            while let Some(res) = all.next().await {
                errs.push(res.err().unwrap_or_else(|| StepError::Failed(CODEPENDENT_EXITED.into())));
                siblings.cancel();
            }
            return aggregate(errs);
        }
        let inner = |i: &'a Option<Box<bbs::Action>>| {
            i.as_deref().ok_or_else(|| StepError::Failed(format!("invalid action at {at}: it has no action")))
        };
        if let Some(x) = &a.try_action {
            if let Err(e) = perform(r, inner(&x.action)?, format!("{at}.0"), source, cancel.clone()).await {
                if e == StepError::Cancelled {
                    return Err(e);
                }
                tracing::info!(at = %at, error = %e, "try action failed; ignoring it");
            }
            return Ok(());
        }
        if let Some(x) = &a.timeout_action {
            let limit = if x.timeout_ms > 0 {
                Duration::from_millis(x.timeout_ms as u64)
            } else {
                Duration::from_nanos(x.deprecated_timeout_ns.max(0) as u64)
            };
            let child = cancel.child_token();
            let fut = perform(r, inner(&x.action)?, format!("{at}.0"), source, child.clone());
            tokio::pin!(fut);
            return tokio::select! {
                res = &mut fut => res,
                _ = tokio::time::sleep(limit) => {
                    child.cancel();
                    let res = fut.await;
                    let mut msg = format!("exceeded {} timeout", super::health::go_duration(limit));
                    if let Err(StepError::Emittable(e)) = res {
                        msg = format!("{msg}; {e}");
                    }
                    Err(StepError::Emittable(msg))
                }
            };
        }
        if let Some(x) = &a.emit_progress_action {
            let source = pick(&x.log_source, source);
            if !x.start_message.is_empty() {
                r.emit(source, &x.start_message, false);
            }
            let res = perform(r, inner(&x.action)?, format!("{at}.0"), source, cancel.clone()).await;
            match &res {
                Err(e) if !x.failure_message_prefix.is_empty() => match e {
                    StepError::Emittable(m) => r.emit(source, &format!("{}: {m}", x.failure_message_prefix), true),
                    _ => r.emit(source, &x.failure_message_prefix, true),
                },
                Ok(()) if !x.success_message.is_empty() => r.emit(source, &x.success_message, false),
                _ => {}
            }
            return res;
        }
        Err(StepError::Failed(format!("invalid action at {at}: none of its fields is set")))
    })
}

/// Whether a tree can be picked up again after a cell restart: its Runs
/// re-attach, but a Download or Upload in it cannot be resumed.
pub fn resumable(a: &bbs::Action) -> Result<(), String> {
    if a.download_action.is_some() {
        return Err("a Download action cannot be resumed after a cell restart".into());
    }
    if a.upload_action.is_some() {
        return Err("an Upload action cannot be resumed after a cell restart".into());
    }
    let inner = a
        .timeout_action
        .as_ref()
        .and_then(|t| t.action.as_deref())
        .or(a.try_action.as_ref().and_then(|t| t.action.as_deref()))
        .or(a.emit_progress_action.as_ref().and_then(|t| t.action.as_deref()));
    inner.into_iter().chain(children(a)).try_for_each(resumable)
}

/// The actions of a Serial, Parallel or Codependent; none for the others.
fn children(a: &bbs::Action) -> &[bbs::Action] {
    a.serial_action
        .as_ref()
        .map(|s| s.actions.as_slice())
        .or(a.parallel_action.as_ref().map(|p| p.actions.as_slice()))
        .or(a.codependent_action.as_ref().map(|c| c.actions.as_slice()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
