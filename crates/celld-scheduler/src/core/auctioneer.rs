//! The auctioneer: batches what is waiting for a cell, scores the live cells
//! (`scheduler::auction`), hands each cell its work with Perform, retries
//! what a cell refused on the next best cell, and records what found none.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::records::Batch;
use super::{AuctionItem, Placement, PlacementKey, Scheduler, lock};
use crate::SchedulerError;
use crate::auction::{CellView, Demand, Placer};
use crate::model::bump;
use celld_proto as pb;
use celld_proto::actual_lrp::State;
use celld_proto::task::State as TaskState;

fn demand_of(d: &pb::DesiredLrp) -> Demand {
    Demand {
        process_guid: Some(d.process_guid.clone()),
        memory_mb: d.memory_mb.into(),
        disk_mb: d.disk_mb.into(),
        rootfs: d.rootfs.clone(),
        placement_tags: d.placement_tags.clone(),
    }
}

fn task_demand(t: &pb::Task) -> Demand {
    Demand {
        process_guid: None,
        memory_mb: t.memory_mb.into(),
        disk_mb: t.disk_mb.into(),
        rootfs: t.rootfs.clone(),
        placement_tags: t.placement_tags.clone(),
    }
}

/// One item of an auction batch.
struct Lot {
    item: AuctionItem,
    demand: Demand,
    work: Work,
    excluded: Vec<String>,
    /// Cells that refused it in this auction.
    refusals: u32,
}

// Lots live for one auction only: their size does not matter.
#[allow(clippy::large_enum_variant)]
enum Work {
    Lrp(pb::LrpStart),
    Task(pb::Task),
}

impl Lot {
    fn key(&self) -> PlacementKey {
        match &self.work {
            Work::Lrp(s) => {
                PlacementKey::Lrp(s.desired_lrp.as_ref().map(|d| d.process_guid.clone()).unwrap_or_default(), s.index)
            }
            Work::Task(t) => PlacementKey::Task(t.task_guid.clone()),
        }
    }

    fn instance_guid(&self) -> String {
        match &self.work {
            Work::Lrp(s) => s.instance_guid.clone(),
            Work::Task(_) => String::new(),
        }
    }

    /// Diego's priority: first instances, then tasks, then the other instances;
    /// bigger first within each group.
    fn priority(&self) -> (u8, std::cmp::Reverse<u64>) {
        let group = match &self.work {
            Work::Lrp(s) if s.index == 0 => 0,
            Work::Task(_) => 1,
            Work::Lrp(_) => 2,
        };
        (group, std::cmp::Reverse(self.demand.memory_mb))
    }
}

impl Scheduler {
    /// Runs auctions one batch at a time, each batch gathering everything
    /// queued meanwhile.
    pub async fn auction_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Vec<AuctionItem>>) {
        while let Some(mut items) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                items.extend(more);
            }
            let started = std::time::Instant::now();
            let r = self.auction(items).await;
            self.metrics.auctions.inc();
            self.metrics.auction_duration.observe(started.elapsed().as_secs_f64());
            if let Err(e) = r {
                tracing::warn!(error = %e, "auction failed; convergence retries");
            }
        }
    }

    /// One auction: checks what is still pending, scores cells, hands each
    /// cell its work concurrently, and retries what a cell refused on the next
    /// best cell.
    async fn auction(&self, items: Vec<AuctionItem>) -> Result<(), SchedulerError> {
        let now = self.now();
        let mut seen = HashSet::new();
        let mut lots = Vec::new();
        let mut cells: Vec<CellView>;
        {
            let _w = self.write.lock().await;
            // The desired LRPs of this batch alone, each read once.
            let mut desired: HashMap<String, Option<pb::DesiredLrp>> = HashMap::new();
            // Only this auction adds placements, and the others who remove
            // them hold the write lock: the map stays as it is while we do.
            for item in items {
                let dedup = match &item {
                    AuctionItem::Lrp { process_guid, index, .. } => PlacementKey::Lrp(process_guid.clone(), *index),
                    AuctionItem::Task { task_guid } => PlacementKey::Task(task_guid.clone()),
                };
                if lock(&self.placements).contains_key(&dedup) || !seen.insert(dedup) {
                    continue;
                }
                match &item {
                    AuctionItem::Lrp { process_guid, index, exclude } => {
                        if !desired.contains_key(process_guid) {
                            desired.insert(process_guid.clone(), self.store.desired_lrp(process_guid).await?);
                        }
                        let Some(d) =
                            desired.get(process_guid).and_then(Option::as_ref).filter(|d| *index < d.instances)
                        else {
                            continue;
                        };
                        let unclaimed = self
                            .copies(process_guid, *index)
                            .await?
                            .ordinary
                            .is_some_and(|o| o.state() == State::Unclaimed);
                        if !unclaimed {
                            continue;
                        }
                        lots.push(Lot {
                            demand: demand_of(d),
                            work: Work::Lrp(pb::LrpStart {
                                desired_lrp: Some(d.clone()),
                                index: *index,
                                instance_guid: celld_base::guid::new_guid(),
                                placement_error: String::new(),
                            }),
                            excluded: exclude.iter().cloned().collect(),
                            refusals: 0,
                            item: item.clone(),
                        });
                    }
                    AuctionItem::Task { task_guid } => {
                        let Some(t) = self.store.task(task_guid).await?.filter(|t| t.state() == TaskState::Pending)
                        else {
                            continue;
                        };
                        lots.push(Lot {
                            demand: task_demand(&t),
                            work: Work::Task(t),
                            excluded: vec![],
                            refusals: 0,
                            item: item.clone(),
                        });
                    }
                }
            }
            if lots.is_empty() {
                return Ok(());
            }
            cells = self
                .live_presences()
                .into_iter()
                .filter(|(c, _)| !c.evacuating)
                .map(|(c, heard)| CellView::new(c, heard))
                .collect();
            let index: HashMap<String, usize> =
                cells.iter().enumerate().map(|(i, c)| (c.cell_id().to_string(), i)).collect();
            // Spreading only looks up the processes placed now: count
            // instances per cell for those alone (every cell runs hundreds
            // of others).
            let placing: HashSet<String> = lots
                .iter()
                .filter_map(|l| match &l.item {
                    AuctionItem::Lrp { process_guid, .. } => Some(process_guid.clone()),
                    AuctionItem::Task { .. } => None,
                })
                .collect();
            // Totals the store keeps as records change: an auction no longer
            // reads every instance of every cell.
            let in_use = self.store.cells_in_use(&placing).await?;
            for c in cells.iter_mut() {
                if let Some(u) = in_use.cells.get(c.cell_id()) {
                    c.add_recorded_use(u);
                }
            }
            for (pg, by_cell) in &in_use.per_process {
                for (cell_id, n) in by_cell {
                    if let Some(&i) = index.get(cell_id) {
                        cells[i].count_recorded(pg, *n);
                    }
                }
            }
            for p in lock(&self.placements).values() {
                if let Some(&i) = index.get(&p.cell_id) {
                    let spread = p.demand.process_guid.as_ref().is_some_and(|pg| placing.contains(pg));
                    cells[i].reserve_counting(&p.demand, p.accepted, spread);
                }
            }
        }
        lots.sort_by_key(Lot::priority);
        let no_cells = cells.is_empty();
        let mut failed: Vec<(Lot, String)> = Vec::new();
        let mut pending = lots;
        let mut unreachable: Vec<String> = Vec::new();
        while !pending.is_empty() {
            let mut by_cell: BTreeMap<usize, Vec<Lot>> = BTreeMap::new();
            let mut placer = Placer::new(&cells);
            for mut lot in pending.drain(..) {
                lot.excluded.extend(unreachable.iter().cloned());
                match placer.place(&mut cells, &lot.demand, &lot.excluded) {
                    Ok(i) => {
                        lock(&self.placements).insert(
                            lot.key(),
                            Placement {
                                cell_id: cells[i].cell_id().to_string(),
                                instance_guid: lot.instance_guid(),
                                at: now,
                                accepted: None,
                                demand: lot.demand.clone(),
                            },
                        );
                        by_cell.entry(i).or_default().push(lot);
                    }
                    Err(e) => failed.push((lot, e)),
                }
            }
            let mut calls = tokio::task::JoinSet::new();
            for (i, lots) in by_cell {
                let cell = cells[i].presence.clone();
                let client = self.cell_client(&cell.grpc_address);
                calls.spawn(async move {
                    let refused = perform(&cell, client, &lots).await;
                    // Taken here, not when joined: a later instant would
                    // count the work again on top of heartbeats showing it.
                    (i, lots, refused, Instant::now())
                });
            }
            while let Some(joined) = calls.join_next().await {
                let Ok((i, lots, refused, answered)) = joined else { continue };
                let cell_id = cells[i].cell_id().to_string();
                let refused = match refused {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(cell_id = %cell_id, error = %e, "cell unreachable for Perform");
                        unreachable.push(cell_id.clone());
                        lots.iter().map(|l| (l.key(), format!("cell {cell_id} unreachable: {e}"))).collect()
                    }
                };
                for lot in lots {
                    let key = lot.key();
                    match refused.get(&key) {
                        None => {
                            self.accepted(&key, &cell_id, answered);
                            match &lot.work {
                                // One line per instance: debug (a cell's
                                // claim follows at once and is the event).
                                Work::Lrp(s) => {
                                    tracing::debug!(process_guid = %s.desired_lrp.as_ref().map(|d| d.process_guid.as_str()).unwrap_or(""), index = s.index, instance_guid = %s.instance_guid, cell_id = %cell_id, "placed")
                                }
                                Work::Task(t) => {
                                    tracing::info!(task_guid = %t.task_guid, cell_id = %cell_id, "task placed")
                                }
                            }
                        }
                        Some(err) => {
                            lock(&self.placements).remove(&key);
                            cells[i].release(&lot.demand);
                            let mut lot = lot;
                            lot.excluded.push(cell_id.clone());
                            lot.refusals += 1;
                            if let Work::Task(t) = &mut lot.work {
                                // A refusal is a failed placement; the third fails the task.
                                *t = self.rejected(t.clone(), err, now);
                                if t.state() != TaskState::Pending {
                                    failed.push((lot, String::new()));
                                    continue;
                                }
                            }
                            tracing::info!(cell_id = %cell_id, error = %err, "cell refused work; trying the next cell");
                            pending.push(lot);
                        }
                    }
                }
            }
        }
        if !failed.is_empty() {
            self.record_failures(failed, no_cells).await?;
        }
        Ok(())
    }

    /// Marks the placement of `key` on `cell_id` accepted at `at` (unless a
    /// claim already took it out).
    fn accepted(&self, key: &PlacementKey, cell_id: &str, at: Instant) {
        if let Some(p) = lock(&self.placements).get_mut(key).filter(|p| p.cell_id == cell_id) {
            p.accepted = Some(at);
        }
    }

    /// Leaves unplaceable instances UNCLAIMED with their placement error
    /// (convergence retries them) and fails unplaceable tasks, as Diego does.
    async fn record_failures(&self, failed: Vec<(Lot, String)>, no_cells: bool) -> Result<(), SchedulerError> {
        let now = self.now();
        let _w = self.write.lock().await;
        let mut batch = Batch::default();
        for (lot, err) in failed {
            match (&lot.item, lot.work) {
                (AuctionItem::Lrp { .. }, _) if no_cells && self.started.elapsed() < self.presence_ttl => {
                    // Right after a restart no cell has heartbeated yet: keep
                    // the record as it was.
                }
                (AuctionItem::Lrp { process_guid, index, .. }, _) => {
                    let Some(o) = self.copies(process_guid, *index).await?.ordinary else { continue };
                    if o.state() != State::Unclaimed || o.placement_error == err {
                        continue;
                    }
                    if lock(&self.placements).contains_key(&PlacementKey::Lrp(process_guid.clone(), *index)) {
                        continue;
                    }
                    tracing::info!(process_guid = %process_guid, index = *index, placement_error = %err, "could not place instance");
                    let mut after = o.clone();
                    after.placement_error = err;
                    bump(&mut after.modification_tag);
                    batch.put_actual(Some(&o), after)?;
                }
                (AuctionItem::Task { task_guid }, Work::Task(t)) => {
                    let Some(mut after) = self.store.task(task_guid).await?.filter(|c| c.state() == TaskState::Pending)
                    else {
                        continue;
                    };
                    if t.state() == TaskState::Completed {
                        // Refused for the third time.
                        after = t;
                    } else if lot.refusals > 0 {
                        // Refused by every cell that fits: stay PENDING,
                        // convergence tries again.
                        after.rejection_count = t.rejection_count;
                        after.rejection_reason = t.rejection_reason.clone();
                    } else if no_cells {
                        // Nothing to place on yet (start-up): stay PENDING.
                        continue;
                    } else {
                        after.state = TaskState::Completed as i32;
                        after.failed = true;
                        after.failure_reason = err.clone();
                        after.first_completed_at = now;
                    }
                    after.updated_at = now;
                    tracing::info!(task_guid = %task_guid, state = after.state().as_str_name(), reason = %err, "could not place task");
                    batch.put_task(false, after);
                }
                _ => {}
            }
        }
        self.commit(batch).await
    }
}

/// Perform on one cell; what it refused, by key.
async fn perform(
    cell: &pb::CellPresence,
    client: Result<pb::cell_client::CellClient<Channel>, SchedulerError>,
    lots: &[Lot],
) -> Result<HashMap<PlacementKey, String>, String> {
    let mut client = client.map_err(|e| e.to_string())?;
    let mut work = pb::Work { cell_id: cell.cell_id.clone(), ..Default::default() };
    for l in lots {
        match &l.work {
            Work::Lrp(s) => work.lrps.push(s.clone()),
            Work::Task(t) => work.tasks.push(t.clone()),
        }
    }
    let refused = client.perform(work).await.map_err(|s| format!("{}: {}", s.code(), s.message()))?.into_inner();
    let mut out = HashMap::new();
    for s in refused.lrps {
        let pg = s.desired_lrp.map(|d| d.process_guid).unwrap_or_default();
        let err = if s.placement_error.is_empty() { "refused by the cell".to_string() } else { s.placement_error };
        out.insert(PlacementKey::Lrp(pg, s.index), err);
    }
    for t in refused.tasks {
        let err = if t.rejection_reason.is_empty() { "refused by the cell".to_string() } else { t.rejection_reason };
        out.insert(PlacementKey::Task(t.task_guid), err);
    }
    Ok(out)
}
