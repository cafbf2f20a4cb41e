//! The task state machine: desiring, starting, completing, rejecting,
//! cancelling and resolving tasks. A cell may only act on a task placed on
//! it or running on it.

use super::cells::Effects;
use super::records::Batch;
use super::{AuctionItem, PlacementKey, Scheduler, lock};
use crate::SchedulerError;
use crate::model::{MAX_TASK_PLACEMENTS, TASK_CANCELLED, validate_guid};
use crate::store::TaskFilter;
use celld_proto as pb;
use celld_proto::task::State as TaskState;

impl Scheduler {
    pub async fn desire_task(&self, mut t: pb::Task) -> Result<pb::Task, SchedulerError> {
        validate_guid("task_guid", &t.task_guid)?;
        if t.domain.is_empty() {
            return Err(SchedulerError::InvalidArgument(format!(
                "task {} needs a domain (\"cf-tasks\" for tasks)",
                t.task_guid
            )));
        }
        let now = self.now();
        let _w = self.write.lock().await;
        if self.store.task(&t.task_guid).await?.is_some() {
            return Err(SchedulerError::AlreadyExists(format!("task {} already exists", t.task_guid)));
        }
        t.state = TaskState::Pending as i32;
        t.cell_id.clear();
        t.failed = false;
        t.failure_reason.clear();
        t.result.clear();
        t.created_at = now;
        t.updated_at = now;
        t.first_completed_at = 0;
        t.rejection_count = 0;
        t.rejection_reason.clear();
        let mut batch = Batch::default();
        batch.put_task(true, t.clone());
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(task_guid = %t.task_guid, "task desired");
        self.dispatch(Effects {
            auctions: vec![AuctionItem::Task { task_guid: t.task_guid.clone() }],
            ..Default::default()
        });
        Ok(t)
    }

    fn task_placed_elsewhere(&self, guid: &str, cell_id: &str) -> Option<String> {
        let p = lock(&self.placements);
        p.get(&PlacementKey::Task(guid.to_string())).filter(|p| p.cell_id != cell_id).map(|p| p.cell_id.clone())
    }

    pub async fn start_task(&self, guid: &str, cell_id: &str) -> Result<bool, SchedulerError> {
        validate_guid("task_guid", guid)?;
        if cell_id.is_empty() {
            return Err(SchedulerError::InvalidArgument("cell_id is required".into()));
        }
        let now = self.now();
        let _w = self.write.lock().await;
        let t = self.get_task(guid).await?;
        match t.state() {
            TaskState::Pending => {
                if let Some(other) = self.task_placed_elsewhere(guid, cell_id) {
                    tracing::info!(task_guid = %guid, cell_id = %cell_id, placed_on = %other, "task start refused: placed elsewhere");
                    return Ok(false);
                }
                let mut after = t.clone();
                after.state = TaskState::Running as i32;
                after.cell_id = cell_id.to_string();
                after.updated_at = now;
                let mut batch = Batch::default();
                batch.put_task(false, after);
                self.commit(batch).await?;
                lock(&self.placements).remove(&PlacementKey::Task(guid.to_string()));
                self.note_progress(cell_id, self.now());
                tracing::info!(task_guid = %guid, cell_id = %cell_id, "task running");
                Ok(true)
            }
            TaskState::Running => Ok(t.cell_id == cell_id),
            _ => Ok(false),
        }
    }

    pub async fn complete_task(&self, req: pb::CompleteTaskRequest) -> Result<pb::Task, SchedulerError> {
        validate_guid("task_guid", &req.task_guid)?;
        if req.cell_id.is_empty() {
            return Err(SchedulerError::InvalidArgument("cell_id is required".into()));
        }
        let now = self.now();
        let _w = self.write.lock().await;
        let t = self.get_task(&req.task_guid).await?;
        match t.state() {
            TaskState::Running if t.cell_id == req.cell_id => {}
            TaskState::Pending if self.task_placed_elsewhere(&req.task_guid, &req.cell_id).is_none() => {}
            // A retried report (or the cell confirming a cancel): nothing to do.
            TaskState::Completed | TaskState::Resolving if t.cell_id == req.cell_id || t.cell_id.is_empty() => {
                return Ok(t);
            }
            _ => {
                return Err(SchedulerError::FailedPrecondition(format!(
                    "cannot complete task {} from cell {}: it is {} on cell {:?}",
                    req.task_guid,
                    req.cell_id,
                    t.state().as_str_name(),
                    t.cell_id
                )));
            }
        }
        let mut after = t.clone();
        after.state = TaskState::Completed as i32;
        after.cell_id = req.cell_id.clone();
        after.failed = req.failed;
        after.failure_reason = req.failure_reason.clone();
        after.result = req.result.clone();
        after.updated_at = now;
        after.first_completed_at = now;
        let mut batch = Batch::default();
        batch.put_task(false, after.clone());
        self.commit(batch).await?;
        lock(&self.placements).remove(&PlacementKey::Task(req.task_guid.clone()));
        tracing::info!(task_guid = %req.task_guid, cell_id = %req.cell_id, failed = req.failed, failure_reason = %req.failure_reason, "task completed");
        Ok(after)
    }

    pub async fn reject_task(&self, req: pb::RejectTaskRequest) -> Result<pb::Task, SchedulerError> {
        validate_guid("task_guid", &req.task_guid)?;
        if req.cell_id.is_empty() {
            return Err(SchedulerError::InvalidArgument("cell_id is required".into()));
        }
        let now = self.now();
        let _w = self.write.lock().await;
        let t = self.get_task(&req.task_guid).await?;
        let ok = match t.state() {
            TaskState::Running => t.cell_id == req.cell_id,
            TaskState::Pending => self.task_placed_elsewhere(&req.task_guid, &req.cell_id).is_none(),
            _ => false,
        };
        if !ok {
            return Err(SchedulerError::FailedPrecondition(format!(
                "cannot reject task {} from cell {}: it is {} on cell {:?}",
                req.task_guid,
                req.cell_id,
                t.state().as_str_name(),
                t.cell_id
            )));
        }
        lock(&self.placements).remove(&PlacementKey::Task(req.task_guid.clone()));
        let after = self.rejected(t, &req.rejection_reason, now);
        let retry = after.state() == TaskState::Pending;
        let mut batch = Batch::default();
        batch.put_task(false, after.clone());
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(task_guid = %req.task_guid, cell_id = %req.cell_id, rejection_count = after.rejection_count, reason = %req.rejection_reason, "task rejected");
        if retry {
            self.dispatch(Effects {
                auctions: vec![AuctionItem::Task { task_guid: req.task_guid.clone() }],
                ..Default::default()
            });
        }
        Ok(after)
    }

    /// One failed placement: back to PENDING, or failed after the third.
    pub(super) fn rejected(&self, mut t: pb::Task, reason: &str, now: i64) -> pb::Task {
        t.rejection_count = t.rejection_count.saturating_add(1);
        t.rejection_reason = reason.to_string();
        t.cell_id.clear();
        t.updated_at = now;
        if t.rejection_count >= MAX_TASK_PLACEMENTS {
            t.state = TaskState::Completed as i32;
            t.failed = true;
            t.failure_reason = reason.to_string();
            t.first_completed_at = now;
        } else {
            t.state = TaskState::Pending as i32;
        }
        t
    }

    pub async fn cancel_task(&self, guid: &str) -> Result<pb::Task, SchedulerError> {
        validate_guid("task_guid", guid)?;
        let now = self.now();
        let _w = self.write.lock().await;
        let t = self.get_task(guid).await?;
        if !matches!(t.state(), TaskState::Pending | TaskState::Running) {
            return Err(SchedulerError::FailedPrecondition(format!(
                "cannot cancel task {guid}: it is already {}",
                t.state().as_str_name()
            )));
        }
        let placed = lock(&self.placements).remove(&PlacementKey::Task(guid.to_string()));
        let cell = if t.cell_id.is_empty() { placed.map(|p| p.cell_id) } else { Some(t.cell_id.clone()) };
        let mut after = t.clone();
        after.state = TaskState::Completed as i32;
        after.failed = true;
        after.failure_reason = TASK_CANCELLED.to_string();
        after.result.clear();
        after.updated_at = now;
        after.first_completed_at = now;
        let mut batch = Batch::default();
        batch.put_task(false, after.clone());
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(task_guid = %guid, cell_id = ?cell, "task cancelled");
        let mut fx = Effects::default();
        if let Some(c) = cell {
            fx.cancels.push((c, guid.to_string()));
        }
        self.dispatch(fx);
        Ok(after)
    }

    pub async fn resolve_task(&self, guid: &str) -> Result<(), SchedulerError> {
        validate_guid("task_guid", guid)?;
        let _w = self.write.lock().await;
        let t = self.get_task(guid).await?;
        if !matches!(t.state(), TaskState::Completed | TaskState::Resolving) {
            return Err(SchedulerError::FailedPrecondition(format!(
                "cannot resolve task {guid}: it is {}, not COMPLETED",
                t.state().as_str_name()
            )));
        }
        let mut resolving = t.clone();
        resolving.state = TaskState::Resolving as i32;
        resolving.updated_at = self.now();
        let mut batch = Batch::default();
        batch.put_task(false, resolving.clone());
        batch.delete_task(&resolving);
        self.commit(batch).await
    }

    pub async fn task(&self, guid: &str) -> Result<pb::Task, SchedulerError> {
        validate_guid("task_guid", guid)?;
        self.get_task(guid).await
    }

    pub async fn tasks(&self, domain: &str, cell_id: &str) -> Result<Vec<pb::Task>, SchedulerError> {
        self.store
            .tasks(TaskFilter {
                domain: (!domain.is_empty()).then(|| domain.to_string()),
                cell_id: (!cell_id.is_empty()).then(|| cell_id.to_string()),
            })
            .await
    }
}
