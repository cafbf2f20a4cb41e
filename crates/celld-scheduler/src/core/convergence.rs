//! Diego's convergence: the periodic pass (and the test clock that triggers
//! it) that creates missing instances, restarts crashed ones, replaces those
//! of missing cells, re-auctions stale placements and expires tasks.

use std::collections::{HashMap, HashSet};

use super::cells::Effects;
use super::records::{Batch, Copies};
use super::{AuctionItem, PlacementKey, Scheduler, lock};
use crate::SchedulerError;
use crate::model::*;
use crate::store::{ActualLrpFilter, TaskFilter};
use celld_proto as pb;
use celld_proto::actual_lrp::{Presence, State};
use celld_proto::task::State as TaskState;

impl Scheduler {
    pub async fn advance_clock(&self, seconds: u64) -> Result<i64, SchedulerError> {
        let c = self.test_clock.as_ref().ok_or_else(|| {
            SchedulerError::FailedPrecondition("AdvanceClock needs a scheduler started with --test-clock".into())
        })?;
        let ns = i64::try_from(seconds).unwrap_or(i64::MAX).saturating_mul(NS_PER_SEC);
        let now = c.advance(ns);
        self.converge().await?;
        Ok(now)
    }

    /// Diego's convergence pass; returns how many instances and tasks it
    /// started, retired or replaced.
    pub async fn converge(&self) -> Result<u32, SchedulerError> {
        let started = std::time::Instant::now();
        let r = self.converge_once().await;
        self.metrics.convergence_duration.observe(started.elapsed().as_secs_f64());
        r
    }

    async fn converge_once(&self) -> Result<u32, SchedulerError> {
        let now = self.now();
        let _w = self.write.lock().await;
        let busy = self.busy_cells(now);
        let desired = self.store.desired_lrps(None).await?;
        let tasks = self.store.tasks(TaskFilter::default()).await?;
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        let mut changes = 0u32;
        let desired_by_guid: HashMap<&str, &pb::DesiredLrp> =
            desired.iter().map(|d| (d.process_guid.as_str(), d)).collect();
        // Which indexes of each desired LRP have a record.
        let mut present: HashMap<&str, Vec<bool>> = desired
            .iter()
            .map(|d| (d.process_guid.as_str(), vec![false; usize::try_from(d.instances).unwrap_or(0)]))
            .collect();
        let mut failure = None;
        // Visited in place: only what changes is copied.
        self.store
            .visit_instances(&mut |group| {
                let copies = Copies::from(group.iter().copied());
                let Some(first) = group.first() else { return };
                let (pg, index) = (first.process_guid.as_str(), first.index);
                if let Some(seen) =
                    present.get_mut(pg).and_then(|v| v.get_mut(usize::try_from(index).unwrap_or(usize::MAX)))
                {
                    *seen = true;
                }
                let d = desired_by_guid.get(pg).filter(|d| index < d.instances).copied();
                if let Err(e) =
                    self.converge_instance(d, pg, index, &copies, now, &busy, &mut batch, &mut fx, &mut changes)
                {
                    failure.get_or_insert(e);
                }
            })
            .await?;
        if let Some(e) = failure {
            return Err(e);
        }
        for d in &desired {
            let seen = present.get(d.process_guid.as_str()).map(Vec::as_slice).unwrap_or_default();
            for (index, _) in seen.iter().enumerate().filter(|(_, s)| !**s) {
                let index = i32::try_from(index).unwrap_or(i32::MAX);
                self.metrics.missing.inc();
                batch.put_actual(None, new_unclaimed(d, index, now))?;
                fx.auctions.push(AuctionItem::Lrp { process_guid: d.process_guid.clone(), index, exclude: None });
                changes += 1;
            }
        }

        for t in tasks {
            match t.state() {
                TaskState::Pending if now.saturating_sub(t.created_at) >= PENDING_TASK_EXPIRY_NS => {
                    lock(&self.placements).remove(&PlacementKey::Task(t.task_guid.clone()));
                    let mut after = t.clone();
                    after.state = TaskState::Completed as i32;
                    after.failed = true;
                    after.failure_reason = TASK_EXPIRED.to_string();
                    after.result.clear();
                    after.updated_at = now;
                    after.first_completed_at = now;
                    tracing::info!(task_guid = %t.task_guid, "task expired before being placed");
                    batch.put_task(false, after);
                    changes += 1;
                }
                TaskState::Pending => {
                    let key = PlacementKey::Task(t.task_guid.clone());
                    let mut p = lock(&self.placements);
                    let stale = p.get(&key).is_some_and(|pl| pl.stale(now, &busy));
                    if stale {
                        p.remove(&key);
                    }
                    if stale || !p.contains_key(&key) {
                        fx.auctions.push(AuctionItem::Task { task_guid: t.task_guid.clone() });
                        changes += 1;
                    }
                }
                TaskState::Running if self.cell_missing(&t.cell_id) => {
                    let mut after = t.clone();
                    after.state = TaskState::Completed as i32;
                    after.failed = true;
                    after.failure_reason = TASK_CELL_DISAPPEARED.to_string();
                    after.updated_at = now;
                    after.first_completed_at = now;
                    tracing::warn!(task_guid = %t.task_guid, cell_id = %t.cell_id, "task's cell disappeared");
                    batch.put_task(false, after);
                    changes += 1;
                }
                TaskState::Completed | TaskState::Resolving
                    if now.saturating_sub(t.first_completed_at) >= COMPLETED_TASK_EXPIRY_NS =>
                {
                    batch.delete_task(&t);
                    changes += 1;
                }
                _ => {}
            }
        }
        self.commit(batch).await?;
        drop(_w);
        if changes > 0 {
            tracing::info!(changes, "convergence");
        }
        self.dispatch(fx);
        Ok(changes)
    }

    /// One instance's part of a pass: `d` is its desired LRP if its index is
    /// still wanted.
    #[allow(clippy::too_many_arguments)]
    fn converge_instance(
        &self,
        d: Option<&pb::DesiredLrp>,
        pg: &str,
        index: i32,
        copies: &Copies<&pb::ActualLrp>,
        now: i64,
        busy: &HashSet<String>,
        batch: &mut Batch,
        fx: &mut Effects,
        changes: &mut u32,
    ) -> Result<(), SchedulerError> {
        let Some(d) = d else {
            // Extra indexes and orphans.
            for l in [copies.ordinary, copies.suspect].into_iter().flatten() {
                self.metrics.extra.inc();
                self.retire(l, batch, fx);
                *changes += 1;
            }
            if let Some(e) = copies.evacuating {
                if self.cell_missing(&e.cell_id) {
                    batch.delete_actual(e);
                    *changes += 1;
                }
            }
            return Ok(());
        };
        let auction = || AuctionItem::Lrp { process_guid: pg.to_string(), index, exclude: None };
        match copies.ordinary {
            None => {
                batch.put_actual(None, new_unclaimed(d, index, now))?;
                fx.auctions.push(auction());
                *changes += 1;
            }
            Some(o) => match o.state() {
                State::Crashed if should_restart_crashed(o.crash_count, o.since, now) => {
                    let mut after = o.clone();
                    after.state = State::Unclaimed as i32;
                    after.since = now;
                    bump(&mut after.modification_tag);
                    batch.put_actual(Some(o), after)?;
                    fx.auctions.push(auction());
                    *changes += 1;
                }
                State::Unclaimed => {
                    let key = PlacementKey::Lrp(pg.to_string(), index);
                    let mut p = lock(&self.placements);
                    let stale = p.get(&key).is_some_and(|pl| pl.stale(now, busy));
                    if stale {
                        p.remove(&key);
                    }
                    if stale || !p.contains_key(&key) {
                        fx.auctions.push(auction());
                        *changes += 1;
                    }
                }
                State::Claimed | State::Running if self.cell_missing(&o.cell_id) => {
                    let mut after = o.clone();
                    clear_instance(&mut after);
                    after.state = State::Unclaimed as i32;
                    after.since = now;
                    bump(&mut after.modification_tag);
                    if o.state() == State::Running {
                        tracing::warn!(process_guid = %pg, index, instance_guid = %o.instance_guid, cell_id = %o.cell_id, "cell missing: instance is suspect, auctioning a replacement");
                        let mut suspect = o.clone();
                        suspect.presence = Presence::Suspect as i32;
                        bump(&mut suspect.modification_tag);
                        if let Some(old) = copies.suspect {
                            batch.delete_actual(old);
                        }
                        batch.put_actual(None, suspect)?;
                    }
                    batch.put_actual(Some(o), after)?;
                    fx.auctions.push(auction());
                    *changes += 1;
                }
                _ => {}
            },
        }
        if let Some(s) = copies.suspect {
            if copies.ordinary.is_some_and(|o| o.state() == State::Running) {
                batch.delete_actual(s);
                *changes += 1;
            }
        }
        if let Some(e) = copies.evacuating {
            if self.cell_missing(&e.cell_id) {
                batch.delete_actual(e);
                *changes += 1;
            }
        }
        Ok(())
    }

    /// Queues every unplaced UNCLAIMED instance and PENDING task.
    pub(super) async fn kick_pending(&self) -> Result<(), SchedulerError> {
        let unclaimed = ActualLrpFilter { states: Some(vec![State::Unclaimed as i32]), ..Default::default() };
        let actual = self.store.actual_lrps(unclaimed).await?;
        let tasks = self.store.tasks(TaskFilter::default()).await?;
        let p = lock(&self.placements).keys().cloned().collect::<HashSet<_>>();
        let mut items = Vec::new();
        for l in actual.iter().filter(|l| l.state() == State::Unclaimed && l.presence() == Presence::Ordinary) {
            if !p.contains(&PlacementKey::Lrp(l.process_guid.clone(), l.index)) {
                items.push(AuctionItem::Lrp { process_guid: l.process_guid.clone(), index: l.index, exclude: None });
            }
        }
        for t in tasks.iter().filter(|t| t.state() == TaskState::Pending) {
            if !p.contains(&PlacementKey::Task(t.task_guid.clone())) {
                items.push(AuctionItem::Task { task_guid: t.task_guid.clone() });
            }
        }
        if !items.is_empty() {
            let _ = self.auctions.send(items);
        }
        Ok(())
    }
}
