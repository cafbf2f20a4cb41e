//! How the rules read and write records: the copies of one instance index,
//! and the batch of writes and events one operation commits together (so
//! subscribers never see an event for a write that failed).

use super::Scheduler;
use crate::SchedulerError;
use crate::model::validate;
use crate::store::{ActualLrpFilter, Change};
use celld_proto as pb;
use celld_proto::actual_lrp::Presence;

/// The writes of one operation and the events they produce, committed together.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) changes: Vec<Change>,
    pub(super) events: Vec<pb::Event>,
}

pub(super) fn event(kind: &str) -> pb::Event {
    pb::Event { r#type: kind.to_string(), ..Default::default() }
}

impl Batch {
    pub(super) fn put_actual(
        &mut self,
        before: Option<&pb::ActualLrp>,
        after: pb::ActualLrp,
    ) -> Result<(), SchedulerError> {
        validate(&after)?;
        let mut e = event(if before.is_some() { "actual_lrp_changed" } else { "actual_lrp_created" });
        e.actual_lrp_before = before.cloned();
        e.actual_lrp = Some(after.clone());
        self.events.push(e);
        self.changes.push(Change::PutActual(after));
        Ok(())
    }

    pub(super) fn delete_actual(&mut self, lrp: &pb::ActualLrp) {
        self.changes.push(Change::DeleteActual {
            process_guid: lrp.process_guid.clone(),
            index: lrp.index,
            presence: lrp.presence,
        });
        let mut e = event("actual_lrp_removed");
        e.actual_lrp = Some(lrp.clone());
        self.events.push(e);
    }

    pub(super) fn put_desired(&mut self, created: bool, d: pb::DesiredLrp) {
        let mut e = event(if created { "desired_lrp_created" } else { "desired_lrp_changed" });
        e.desired_lrp = Some(d.clone());
        self.events.push(e);
        self.changes.push(Change::PutDesired(Box::new(d)));
    }

    pub(super) fn put_task(&mut self, created: bool, t: pb::Task) {
        let mut e = event(if created { "task_created" } else { "task_changed" });
        e.task = Some(t.clone());
        self.events.push(e);
        self.changes.push(Change::PutTask(Box::new(t)));
    }

    pub(super) fn delete_task(&mut self, t: &pb::Task) {
        let mut e = event("task_removed");
        e.task = Some(t.clone());
        self.events.push(e);
        self.changes.push(Change::DeleteTask(t.task_guid.clone()));
    }
}

/// The copies of one instance index, by presence: owned records, or
/// (`Copies<&ActualLrp>`) records borrowed from the store in place.
pub(super) struct Copies<L = pb::ActualLrp> {
    pub(super) ordinary: Option<L>,
    pub(super) evacuating: Option<L>,
    pub(super) suspect: Option<L>,
}

impl<L: std::borrow::Borrow<pb::ActualLrp>> Copies<L> {
    pub(super) fn from(lrps: impl IntoIterator<Item = L>) -> Self {
        let mut c = Copies { ordinary: None, evacuating: None, suspect: None };
        for l in lrps {
            match l.borrow().presence() {
                Presence::Ordinary => c.ordinary = Some(l),
                Presence::Evacuating => c.evacuating = Some(l),
                Presence::Suspect => c.suspect = Some(l),
            }
        }
        c
    }
}

/// A batch queued in the store: memory already shows it; `durable` says
/// when the database has it too.
pub(super) struct Staged(tokio::sync::oneshot::Receiver<Result<(), SchedulerError>>);

impl Staged {
    pub(super) async fn durable(self) -> Result<(), SchedulerError> {
        self.0.await.map_err(|_| SchedulerError::Internal("the store dropped a write".into()))?
    }
}

impl Scheduler {
    /// Queues `batch` (the caller holds the write lock, so batches queue in
    /// the order they were decided). Its events go out once it is durable,
    /// in that order too, whether or not anyone still waits for it.
    /// Readers see `batch` at once: the caller may release the write lock
    /// before it is durable (it answers only after `durable`).
    pub(super) fn stage(&self, batch: Batch) -> Staged {
        self.queue(batch, true)
    }

    fn queue(&self, batch: Batch, visible: bool) -> Staged {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let events = self.events.clone();
        let published = batch.events;
        let done: crate::store::Done = Box::new(move |r| {
            if r.is_ok() {
                for e in published {
                    // No subscribers is fine; a lagging one loses the oldest events.
                    let _ = events.send(std::sync::Arc::new(e));
                }
            }
            let _ = tx.send(r);
        });
        if visible {
            self.store.submit_visible(batch.changes, done);
        } else {
            self.store.submit(batch.changes, done);
        }
        Staged(rx)
    }

    /// Queues `batch` and waits until it is durable; readers see it from
    /// then on (the caller holds the write lock meanwhile).
    pub(super) async fn commit(&self, batch: Batch) -> Result<(), SchedulerError> {
        self.queue(batch, false).durable().await
    }

    /// Resolves once everything queued so far is durable: an answer read
    /// from memory must not promise what a crash could still lose.
    pub(super) fn barrier(&self) -> Staged {
        self.queue(Batch::default(), false)
    }

    pub(super) async fn copies(&self, pg: &str, index: i32) -> Result<Copies, SchedulerError> {
        let lrps = self
            .store
            .actual_lrps(ActualLrpFilter {
                process_guid: Some(pg.to_string()),
                index: Some(index),
                ..Default::default()
            })
            .await?;
        Ok(Copies::from(lrps))
    }

    pub(super) async fn desired(&self, pg: &str) -> Result<pb::DesiredLrp, SchedulerError> {
        self.store
            .desired_lrp(pg)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("no desired LRP with process guid {pg}")))
    }

    pub(super) async fn get_task(&self, guid: &str) -> Result<pb::Task, SchedulerError> {
        self.store.task(guid).await?.ok_or_else(|| SchedulerError::NotFound(format!("no task with guid {guid}")))
    }
}
