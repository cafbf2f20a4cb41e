//! (Long because: every record change runs under the one write lock here (state machine, convergence, presence, tasks); issue 18 splits them.)
//!
//! The scheduler's rules: Diego's BBS (records, state machine, convergence),
//! auctioneer (placement) and Locket (presence) in one object. Every record
//! change runs under one async write lock and commits in one store
//! transaction; calls to cells happen after the lock is released (a cell
//! answering Perform calls back ClaimActualLRP, which needs the lock).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tonic::transport::Channel;

use super::SchedulerError;
use super::auction::{CellView, Demand, choose};
use super::clock::{Clock, TestClock};
use super::model::*;
use super::store::{ActualLrpFilter, Change, SchedulerStore, TaskFilter};
use crate::grpc::pb;
use crate::grpc::pb::actual_lrp::{Presence, State};
use crate::grpc::pb::task::State as TaskState;

const EVENT_BUFFER: usize = 4096;
const CELL_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CELL_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Perform batches carry whole DesiredLRPs: allow more than tonic's 4 MB.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Something the auction should place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuctionItem {
    Lrp { process_guid: String, index: i32, exclude: Option<String> },
    Task { task_guid: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PlacementKey {
    Lrp(String, i32),
    Task(String),
}

/// Work handed to a cell and not claimed (started) yet: counted in the next
/// auctions' usage, and checked when the cell claims it.
#[derive(Debug, Clone)]
struct Placement {
    cell_id: String,
    instance_guid: String,
    /// Clock time of the placement: unclaimed 30 s after it (and after its
    /// cell's last progress) it is auctioned again.
    at: i64,
    /// When Perform came back without refusing it (None while in flight):
    /// heartbeats heard later already count it in the cell's usage.
    accepted: Option<Instant>,
    demand: Demand,
}

impl Placement {
    /// Worth auctioning again at `now`: accepted by its cell (a Perform in
    /// flight ends in an answer or an error, never in time alone), 30 s old,
    /// and its cell either gone or not among the `busy` cells (live, with a
    /// claim or start in the last 30 s; a busy cell's claims queue behind
    /// the write lock, and re-auctioning would discard its container).
    fn stale(&self, now: i64, busy: &HashSet<String>) -> bool {
        self.accepted.is_some() && now.saturating_sub(self.at) >= STALE_UNCLAIMED_NS && !busy.contains(&self.cell_id)
    }
}

struct PresenceEntry {
    presence: pb::CellPresence,
    seen: Instant,
    /// Convergence already ran for this cell's expiry.
    expiry_handled: bool,
}

struct StopRequest {
    cell_id: String,
    process_guid: String,
    index: i32,
    presence: i32,
    instance_guid: String,
    /// Remove the record when the cell cannot be asked (its reconcile
    /// destroys the container later).
    remove_if_unreachable: bool,
}

/// What a change asks for once the lock is released.
#[derive(Default)]
struct Effects {
    auctions: Vec<AuctionItem>,
    stops: Vec<StopRequest>,
    cancels: Vec<(String, String)>,
}

/// The writes of one operation and the events they produce, committed together.
#[derive(Default)]
struct Batch {
    changes: Vec<Change>,
    events: Vec<pb::Event>,
}

fn event(kind: &str) -> pb::Event {
    pb::Event { r#type: kind.to_string(), ..Default::default() }
}

impl Batch {
    fn put_actual(&mut self, before: Option<&pb::ActualLrp>, after: pb::ActualLrp) -> Result<(), SchedulerError> {
        validate(&after)?;
        let mut e = event(if before.is_some() { "actual_lrp_changed" } else { "actual_lrp_created" });
        e.actual_lrp_before = before.cloned();
        e.actual_lrp = Some(after.clone());
        self.events.push(e);
        self.changes.push(Change::PutActual(after));
        Ok(())
    }

    fn delete_actual(&mut self, lrp: &pb::ActualLrp) {
        self.changes.push(Change::DeleteActual {
            process_guid: lrp.process_guid.clone(),
            index: lrp.index,
            presence: lrp.presence,
        });
        let mut e = event("actual_lrp_removed");
        e.actual_lrp = Some(lrp.clone());
        self.events.push(e);
    }

    fn put_desired(&mut self, created: bool, d: pb::DesiredLrp) {
        let mut e = event(if created { "desired_lrp_created" } else { "desired_lrp_changed" });
        e.desired_lrp = Some(d.clone());
        self.events.push(e);
        self.changes.push(Change::PutDesired(d));
    }

    fn put_task(&mut self, created: bool, t: pb::Task) {
        let mut e = event(if created { "task_created" } else { "task_changed" });
        e.task = Some(t.clone());
        self.events.push(e);
        self.changes.push(Change::PutTask(t));
    }

    fn delete_task(&mut self, t: &pb::Task) {
        let mut e = event("task_removed");
        e.task = Some(t.clone());
        self.events.push(e);
        self.changes.push(Change::DeleteTask(t.task_guid.clone()));
    }
}

pub struct SchedulerOptions {
    pub presence_ttl: Duration,
    pub test_clock: bool,
}

pub struct Scheduler {
    store: Arc<dyn SchedulerStore>,
    clock: Arc<dyn Clock>,
    test_clock: Option<Arc<TestClock>>,
    write: tokio::sync::Mutex<()>,
    presences: Mutex<HashMap<String, PresenceEntry>>,
    placements: Mutex<HashMap<PlacementKey, Placement>>,
    /// Cell id → clock time of the last claim, start or task start the
    /// scheduler accepted from it: a cell still working through its queue
    /// keeps its unclaimed placements.
    progress: Mutex<HashMap<String, i64>>,
    channels: Mutex<HashMap<String, Channel>>,
    events: broadcast::Sender<pb::Event>,
    auctions: mpsc::UnboundedSender<Vec<AuctionItem>>,
    presence_ttl: Duration,
    started: Instant,
    /// For tasks spawned by `dispatch` that must take the write lock later.
    me: std::sync::Weak<Scheduler>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short locks leaves plain maps behind: keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lrp_name(pg: &str, index: i32) -> String {
    format!("actual LRP {pg}/{index}")
}

fn owner(lrp: &pb::ActualLrp) -> String {
    if lrp.instance_guid.is_empty() {
        format!("{} with no instance", state_name(lrp.state()))
    } else {
        format!("{} as instance {} on cell {}", state_name(lrp.state()), lrp.instance_guid, lrp.cell_id)
    }
}

/// Why there is no ORDINARY record for `key`: an index out of range is the
/// caller's mistake, anything else a record that is gone.
fn missing(desired: Option<&pb::DesiredLrp>, key: &pb::ActualLrpKey) -> SchedulerError {
    match desired {
        Some(d) if key.index >= d.instances => SchedulerError::InvalidArgument(format!(
            "index {} is out of range: {} has {} instances (indexes 0 to {})",
            key.index,
            key.process_guid,
            d.instances,
            d.instances - 1
        )),
        _ => SchedulerError::NotFound(format!("{} does not exist", lrp_name(&key.process_guid, key.index))),
    }
}

fn validate_key(key: Option<&pb::ActualLrpKey>) -> Result<pb::ActualLrpKey, SchedulerError> {
    let key = key.ok_or_else(|| SchedulerError::InvalidArgument("key (process_guid, index) is required".into()))?;
    validate_guid("process_guid", &key.process_guid)?;
    if key.index < 0 {
        return Err(SchedulerError::InvalidArgument(format!(
            "index {} of {} is negative: indexes start at 0",
            key.index, key.process_guid
        )));
    }
    Ok(key.clone())
}

fn validate_instance_key(k: Option<&pb::ActualLrpInstanceKey>) -> Result<pb::ActualLrpInstanceKey, SchedulerError> {
    let k =
        k.ok_or_else(|| SchedulerError::InvalidArgument("instance_key (instance_guid, cell_id) is required".into()))?;
    if k.instance_guid.is_empty() || k.cell_id.is_empty() {
        return Err(SchedulerError::InvalidArgument("instance_key needs both instance_guid and cell_id".into()));
    }
    Ok(k.clone())
}

/// The copies of one instance index, by presence.
#[derive(Default)]
struct Copies {
    ordinary: Option<pb::ActualLrp>,
    evacuating: Option<pb::ActualLrp>,
    suspect: Option<pb::ActualLrp>,
}

impl Copies {
    fn from(lrps: Vec<pb::ActualLrp>) -> Self {
        let mut c = Copies::default();
        for l in lrps {
            match l.presence() {
                Presence::Ordinary => c.ordinary = Some(l),
                Presence::Evacuating => c.evacuating = Some(l),
                Presence::Suspect => c.suspect = Some(l),
            }
        }
        c
    }
}

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
    pub fn new(
        store: Arc<dyn SchedulerStore>,
        opts: SchedulerOptions,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Vec<AuctionItem>>) {
        let (test_clock, clock): (Option<Arc<TestClock>>, Arc<dyn Clock>) = if opts.test_clock {
            let c = Arc::new(TestClock::new());
            (Some(c.clone()), c)
        } else {
            (None, Arc::new(super::clock::SystemClock))
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let s = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            store,
            clock,
            test_clock,
            write: tokio::sync::Mutex::new(()),
            presences: Mutex::new(HashMap::new()),
            placements: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            events,
            auctions: tx,
            presence_ttl: opts.presence_ttl,
            started: Instant::now(),
        });
        (s, rx)
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub fn presence_ttl(&self) -> Duration {
        self.presence_ttl
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::Event> {
        self.events.subscribe()
    }

    async fn commit(&self, batch: Batch) -> Result<(), SchedulerError> {
        self.store.apply(batch.changes).await?;
        for e in batch.events {
            // No subscribers is fine; a lagging one loses the oldest events.
            let _ = self.events.send(e);
        }
        Ok(())
    }

    async fn copies(&self, pg: &str, index: i32) -> Result<Copies, SchedulerError> {
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

    async fn desired(&self, pg: &str) -> Result<pb::DesiredLrp, SchedulerError> {
        self.store
            .desired_lrp(pg)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("no desired LRP with process guid {pg}")))
    }

    async fn get_task(&self, guid: &str) -> Result<pb::Task, SchedulerError> {
        self.store.task(guid).await?.ok_or_else(|| SchedulerError::NotFound(format!("no task with guid {guid}")))
    }

    // ---- presence ----

    fn alive(&self, e: &PresenceEntry) -> bool {
        e.seen.elapsed() < self.presence_ttl
    }

    /// Live cells, by id.
    pub fn live_cells(&self) -> Vec<pb::CellPresence> {
        self.live_presences().into_iter().map(|(p, _)| p).collect()
    }

    /// Live cells by id, each with when its presence was heard.
    fn live_presences(&self) -> Vec<(pb::CellPresence, Instant)> {
        let p = lock(&self.presences);
        let mut v: Vec<_> = p.values().filter(|e| self.alive(e)).map(|e| (e.presence.clone(), e.seen)).collect();
        v.sort_by(|a, b| a.0.cell_id.cmp(&b.0.cell_id));
        v
    }

    /// A cell made progress on its work (claimed, started) at `now`.
    fn note_progress(&self, cell_id: &str, now: i64) {
        let mut p = lock(&self.progress);
        match p.get_mut(cell_id) {
            Some(t) => *t = (*t).max(now),
            None => {
                p.insert(cell_id.to_string(), now);
            }
        }
    }

    /// Live cells that made progress within the last 30 s at `now`: their
    /// unclaimed placements are queued behind other work, not lost.
    fn busy_cells(&self, now: i64) -> HashSet<String> {
        let live: HashSet<String> = {
            let p = lock(&self.presences);
            p.iter().filter(|(_, e)| self.alive(e)).map(|(id, _)| id.clone()).collect()
        };
        let progress = lock(&self.progress);
        live.into_iter()
            .filter(|id| progress.get(id).is_some_and(|t| now.saturating_sub(*t) < STALE_UNCLAIMED_NS))
            .collect()
    }

    fn cell_address(&self, cell_id: &str) -> Option<String> {
        let p = lock(&self.presences);
        p.get(cell_id).filter(|e| self.alive(e)).map(|e| e.presence.grpc_address.clone())
    }

    /// Missing = not heard from for a TTL; right after start-up nobody is
    /// missing until cells had one TTL to heartbeat.
    fn cell_missing(&self, cell_id: &str) -> bool {
        if self.started.elapsed() < self.presence_ttl {
            return false;
        }
        let p = lock(&self.presences);
        p.get(cell_id).is_none_or(|e| !self.alive(e))
    }

    pub async fn heartbeat(&self, presence: pb::CellPresence) -> Result<u32, SchedulerError> {
        if presence.cell_id.is_empty() || presence.grpc_address.is_empty() {
            return Err(SchedulerError::InvalidArgument("a presence needs cell_id and grpc_address".into()));
        }
        let cell_id = presence.cell_id.clone();
        let returning = {
            let mut p = lock(&self.presences);
            let returning = p.get(&cell_id).is_none_or(|e| !self.alive(e));
            p.insert(cell_id.clone(), PresenceEntry { presence, seen: Instant::now(), expiry_handled: false });
            returning
        };
        if returning {
            tracing::info!(cell_id = %cell_id, "cell present");
            self.cell_returned(&cell_id).await?;
            // Work that found no cell may fit this one: try now, not at the next pass.
            self.kick_pending().await?;
        }
        Ok(u32::try_from(self.presence_ttl.as_secs()).unwrap_or(u32::MAX))
    }

    /// A cell heard from again: its SUSPECT instances are promoted back unless
    /// their replacement already runs.
    async fn cell_returned(&self, cell_id: &str) -> Result<(), SchedulerError> {
        let _w = self.write.lock().await;
        let lrps = self
            .store
            .actual_lrps(ActualLrpFilter { cell_id: Some(cell_id.to_string()), ..Default::default() })
            .await?;
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        for suspect in lrps.into_iter().filter(|l| l.presence() == Presence::Suspect) {
            let copies = self.copies(&suspect.process_guid, suspect.index).await?;
            batch.delete_actual(&suspect);
            match copies.ordinary {
                Some(ord) if ord.state() == State::Running => {
                    tracing::info!(process_guid = %suspect.process_guid, index = suspect.index, instance_guid = %suspect.instance_guid, "replacement runs; retiring the suspect instance");
                    fx.stops.push(StopRequest {
                        cell_id: suspect.cell_id.clone(),
                        process_guid: suspect.process_guid.clone(),
                        index: suspect.index,
                        presence: Presence::Suspect as i32,
                        instance_guid: suspect.instance_guid.clone(),
                        remove_if_unreachable: false,
                    });
                }
                ord => {
                    tracing::info!(process_guid = %suspect.process_guid, index = suspect.index, instance_guid = %suspect.instance_guid, "cell returned; promoting the suspect instance");
                    if let Some(ord) = &ord {
                        self.retire_replacement(ord, &mut fx);
                    }
                    let mut promoted = suspect.clone();
                    promoted.presence = Presence::Ordinary as i32;
                    bump(&mut promoted.modification_tag);
                    batch.put_actual(ord.as_ref(), promoted)?;
                }
            }
        }
        self.commit(batch).await?;
        drop(_w);
        self.dispatch(fx);
        Ok(())
    }

    /// Stops whatever a replacement got as far as (placed or claimed).
    fn retire_replacement(&self, ord: &pb::ActualLrp, fx: &mut Effects) {
        let placed = lock(&self.placements).remove(&PlacementKey::Lrp(ord.process_guid.clone(), ord.index));
        let (cell_id, instance_guid) = match (ord.state(), placed) {
            (State::Claimed, _) => (ord.cell_id.clone(), ord.instance_guid.clone()),
            (State::Unclaimed, Some(p)) => (p.cell_id, p.instance_guid),
            _ => return,
        };
        fx.stops.push(StopRequest {
            cell_id,
            process_guid: ord.process_guid.clone(),
            index: ord.index,
            presence: Presence::Ordinary as i32,
            instance_guid,
            remove_if_unreachable: false,
        });
    }

    /// Newly expired cells (and the end of the start-up grace) trigger a pass.
    pub async fn check_presences(&self) -> Result<(), SchedulerError> {
        let expired: Vec<String> = {
            let mut p = lock(&self.presences);
            let ttl = self.presence_ttl;
            p.iter_mut()
                .filter(|(_, e)| e.seen.elapsed() >= ttl && !e.expiry_handled)
                .map(|(id, e)| {
                    e.expiry_handled = true;
                    id.clone()
                })
                .collect()
        };
        if !expired.is_empty() {
            for c in &expired {
                tracing::warn!(cell_id = %c, "cell presence expired");
            }
            self.converge().await?;
        }
        Ok(())
    }

    // ---- desired LRPs ----

    pub async fn desire_lrp(&self, mut d: pb::DesiredLrp) -> Result<pb::DesiredLrp, SchedulerError> {
        validate_guid("process_guid", &d.process_guid)?;
        if d.domain.is_empty() {
            return Err(SchedulerError::InvalidArgument(format!(
                "desired LRP {} needs a domain (\"cf-apps\" for apps)",
                d.process_guid
            )));
        }
        if d.instances < 0 {
            return Err(SchedulerError::InvalidArgument(format!(
                "desired LRP {}: instances {} is negative",
                d.process_guid, d.instances
            )));
        }
        let now = self.now();
        let _w = self.write.lock().await;
        if self.store.desired_lrp(&d.process_guid).await?.is_some() {
            return Err(SchedulerError::AlreadyExists(format!(
                "desired LRP {} already exists: update or remove it",
                d.process_guid
            )));
        }
        d.created_at = now;
        d.modification_tag = Some(new_tag());
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        batch.put_desired(true, d.clone());
        // Leftovers of an earlier desire of the same guid stay until their
        // cells remove them; only missing indexes are created.
        for index in 0..d.instances {
            let copies = self.copies(&d.process_guid, index).await?;
            if copies.ordinary.is_none() {
                batch.put_actual(None, new_unclaimed(&d, index, now))?;
                fx.auctions.push(AuctionItem::Lrp { process_guid: d.process_guid.clone(), index, exclude: None });
            }
        }
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(process_guid = %d.process_guid, instances = d.instances, "desired LRP created");
        self.dispatch(fx);
        Ok(d)
    }

    pub async fn update_desired_lrp(&self, req: pb::UpdateDesiredLrpRequest) -> Result<pb::DesiredLrp, SchedulerError> {
        validate_guid("process_guid", &req.process_guid)?;
        if let Some(n) = req.instances {
            if n < 0 {
                return Err(SchedulerError::InvalidArgument(format!(
                    "desired LRP {}: instances {n} is negative",
                    req.process_guid
                )));
            }
        }
        let now = self.now();
        let _w = self.write.lock().await;
        let mut d = self.desired(&req.process_guid).await?;
        let old = d.instances;
        if let Some(n) = req.instances {
            d.instances = n;
        }
        if req.update_routes {
            d.routes = req.routes.clone();
        }
        if let Some(a) = &req.annotation {
            d.annotation = a.clone();
        }
        bump(&mut d.modification_tag);
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        batch.put_desired(false, d.clone());
        if d.instances > old {
            for index in old..d.instances {
                if self.copies(&d.process_guid, index).await?.ordinary.is_none() {
                    batch.put_actual(None, new_unclaimed(&d, index, now))?;
                    fx.auctions.push(AuctionItem::Lrp { process_guid: d.process_guid.clone(), index, exclude: None });
                }
            }
        } else if d.instances < old {
            let lrps = self
                .store
                .actual_lrps(ActualLrpFilter { process_guid: Some(d.process_guid.clone()), ..Default::default() })
                .await?;
            for l in lrps.iter().filter(|l| l.index >= d.instances) {
                self.retire(l, &mut batch, &mut fx);
            }
        }
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(process_guid = %d.process_guid, instances = d.instances, "desired LRP updated");
        self.dispatch(fx);
        Ok(d)
    }

    pub async fn remove_desired_lrp(&self, pg: &str) -> Result<(), SchedulerError> {
        validate_guid("process_guid", pg)?;
        let _w = self.write.lock().await;
        let d = self.desired(pg).await?;
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        batch.changes.push(Change::DeleteDesired(pg.to_string()));
        let mut e = event("desired_lrp_removed");
        e.desired_lrp = Some(d);
        batch.events.push(e);
        let lrps = self
            .store
            .actual_lrps(ActualLrpFilter { process_guid: Some(pg.to_string()), ..Default::default() })
            .await?;
        for l in &lrps {
            self.retire(l, &mut batch, &mut fx);
        }
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(process_guid = %pg, "desired LRP removed");
        self.dispatch(fx);
        Ok(())
    }

    /// Retires one copy of an instance nobody wants any more: records without
    /// a container go now; a container is stopped by its cell, which then
    /// removes the record.
    fn retire(&self, l: &pb::ActualLrp, batch: &mut Batch, fx: &mut Effects) {
        match (l.presence(), l.state()) {
            // The evacuating cell asks again and hears keep_container=false.
            (Presence::Evacuating, _) => {}
            (Presence::Suspect, _) | (_, State::Unclaimed | State::Crashed) => {
                batch.delete_actual(l);
                if l.presence() == Presence::Ordinary {
                    self.retire_replacement(l, fx);
                }
            }
            (_, State::Claimed | State::Running) => {
                if self.cell_missing(&l.cell_id) {
                    batch.delete_actual(l);
                } else {
                    fx.stops.push(StopRequest {
                        cell_id: l.cell_id.clone(),
                        process_guid: l.process_guid.clone(),
                        index: l.index,
                        presence: l.presence,
                        instance_guid: l.instance_guid.clone(),
                        remove_if_unreachable: true,
                    });
                }
            }
        }
    }

    pub async fn get_desired_lrp(&self, pg: &str) -> Result<pb::DesiredLrp, SchedulerError> {
        validate_guid("process_guid", pg)?;
        self.desired(pg).await
    }

    pub async fn desired_lrps(&self, domain: &str) -> Result<Vec<pb::DesiredLrp>, SchedulerError> {
        self.store.desired_lrps((!domain.is_empty()).then(|| domain.to_string())).await
    }

    pub async fn actual_lrps(&self, req: pb::ActualLrPsRequest) -> Result<Vec<pb::ActualLrp>, SchedulerError> {
        if let Some(i) = req.index {
            if i < 0 {
                return Err(SchedulerError::InvalidArgument(format!("index {i} is negative: indexes start at 0")));
            }
        }
        self.store
            .actual_lrps(ActualLrpFilter {
                process_guid: (!req.process_guid.is_empty()).then_some(req.process_guid),
                cell_id: (!req.cell_id.is_empty()).then_some(req.cell_id),
                index: req.index,
                domain: None,
                states: None,
            })
            .await
    }

    pub async fn actual_lrps_by_cell(&self, cell_id: &str) -> Result<Vec<pb::ActualLrp>, SchedulerError> {
        if cell_id.is_empty() {
            return Err(SchedulerError::InvalidArgument("cell_id is required".into()));
        }
        self.store.actual_lrps(ActualLrpFilter { cell_id: Some(cell_id.to_string()), ..Default::default() }).await
    }

    // ---- actual LRPs (what cells report) ----

    /// The ORDINARY record a cell reports on, with its desired LRP.
    async fn reported(&self, key: &pb::ActualLrpKey) -> Result<(Option<pb::DesiredLrp>, Copies), SchedulerError> {
        let desired = self.store.desired_lrp(&key.process_guid).await?;
        let copies = self.copies(&key.process_guid, key.index).await?;
        if desired.is_none() && copies.ordinary.is_none() && copies.evacuating.is_none() && copies.suspect.is_none() {
            return Err(SchedulerError::NotFound(format!("no desired LRP with process guid {}", key.process_guid)));
        }
        Ok((desired, copies))
    }

    fn check_retiring(
        desired: Option<&pb::DesiredLrp>,
        key: &pb::ActualLrpKey,
        to: State,
    ) -> Result<(), SchedulerError> {
        match desired {
            None => Err(SchedulerError::FailedPrecondition(format!(
                "cannot make {} {}: its LRP is no longer desired",
                lrp_name(&key.process_guid, key.index),
                state_name(to)
            ))),
            Some(d) if key.index >= d.instances => Err(SchedulerError::FailedPrecondition(format!(
                "cannot make {} {}: index {} is being retired ({} has {} instances)",
                lrp_name(&key.process_guid, key.index),
                state_name(to),
                key.index,
                key.process_guid,
                d.instances
            ))),
            Some(_) => Ok(()),
        }
    }

    /// A claim or start must come from where the scheduler placed the instance.
    fn check_placement(&self, key: &pb::ActualLrpKey, ik: &pb::ActualLrpInstanceKey) -> Result<(), SchedulerError> {
        let p = lock(&self.placements);
        if let Some(pl) = p.get(&PlacementKey::Lrp(key.process_guid.clone(), key.index)) {
            if pl.instance_guid != ik.instance_guid {
                return Err(SchedulerError::FailedPrecondition(format!(
                    "{} is placed as instance {} on cell {}, not {} on cell {}",
                    lrp_name(&key.process_guid, key.index),
                    pl.instance_guid,
                    pl.cell_id,
                    ik.instance_guid,
                    ik.cell_id
                )));
            }
        }
        Ok(())
    }

    fn illegal(
        key: &pb::ActualLrpKey,
        current: &pb::ActualLrp,
        to: State,
        ik: &pb::ActualLrpInstanceKey,
    ) -> SchedulerError {
        SchedulerError::FailedPrecondition(format!(
            "cannot transition {} from {} to {} for instance {} on cell {}",
            lrp_name(&key.process_guid, key.index),
            owner(current),
            state_name(to),
            ik.instance_guid,
            ik.cell_id
        ))
    }

    pub async fn claim_actual_lrp(&self, req: pb::ClaimActualLrpRequest) -> Result<pb::ActualLrp, SchedulerError> {
        let key = validate_key(req.key.as_ref())?;
        let ik = validate_instance_key(req.instance_key.as_ref())?;
        let now = self.now();
        let _w = self.write.lock().await;
        let (desired, copies) = self.reported(&key).await?;
        let ord = copies.ordinary.ok_or_else(|| missing(desired.as_ref(), &key))?;
        if ord.state() == State::Claimed && instance_key_of(&ord) == ik {
            return Ok(ord);
        }
        Self::check_retiring(desired.as_ref(), &key, State::Claimed)?;
        if ord.state() == State::Unclaimed {
            self.check_placement(&key, &ik)?;
        }
        if !allows_transition_to(&ord, &ik, State::Claimed) {
            return Err(Self::illegal(&key, &ord, State::Claimed, &ik));
        }
        let mut after = ord.clone();
        clear_instance(&mut after);
        after.state = State::Claimed as i32;
        after.instance_guid = ik.instance_guid.clone();
        after.cell_id = ik.cell_id.clone();
        after.placement_error.clear();
        after.since = now;
        bump(&mut after.modification_tag);
        let mut batch = Batch::default();
        batch.put_actual(Some(&ord), after.clone())?;
        self.commit(batch).await?;
        lock(&self.placements).remove(&PlacementKey::Lrp(key.process_guid.clone(), key.index));
        // Now, not `now`: the claim may have waited long for the lock.
        self.note_progress(&ik.cell_id, self.now());
        tracing::debug!(process_guid = %key.process_guid, index = key.index, instance_guid = %ik.instance_guid, cell_id = %ik.cell_id, "claimed");
        Ok(after)
    }

    pub async fn start_actual_lrp(&self, req: pb::StartActualLrpRequest) -> Result<pb::ActualLrp, SchedulerError> {
        let key = validate_key(req.key.as_ref())?;
        let ik = validate_instance_key(req.instance_key.as_ref())?;
        let net = req.net_info.clone().unwrap_or_default();
        if net.address.is_empty() {
            return Err(SchedulerError::InvalidArgument(format!(
                "starting {} needs net_info with the host address",
                lrp_name(&key.process_guid, key.index)
            )));
        }
        let now = self.now();
        let _w = self.write.lock().await;
        let (desired, copies) = self.reported(&key).await?;
        let ord = copies.ordinary.ok_or_else(|| missing(desired.as_ref(), &key))?;
        let mine = instance_key_of(&ord) == ik;
        if ord.state() == State::Running
            && mine
            && ord.address == net.address
            && ord.instance_address == net.instance_address
            && ord.ports == net.ports
            && ord.routable == req.routable
        {
            return Ok(ord);
        }
        Self::check_retiring(desired.as_ref(), &key, State::Running)?;
        match ord.state() {
            State::Unclaimed => self.check_placement(&key, &ik)?,
            // Stricter than Diego (which lets any instance start a CLAIMED
            // one): a late report from a replaced instance must not win.
            State::Claimed if !mine => return Err(Self::illegal(&key, &ord, State::Running, &ik)),
            _ => {}
        }
        if !allows_transition_to(&ord, &ik, State::Running) {
            return Err(Self::illegal(&key, &ord, State::Running, &ik));
        }
        let mut after = ord.clone();
        clear_instance(&mut after);
        after.instance_guid = ik.instance_guid.clone();
        after.cell_id = ik.cell_id.clone();
        set_net_info(&mut after, &net);
        after.routable = req.routable;
        after.placement_error.clear();
        if ord.state() != State::Running {
            after.since = now;
        }
        after.state = State::Running as i32;
        bump(&mut after.modification_tag);
        let mut batch = Batch::default();
        batch.put_actual(Some(&ord), after.clone())?;
        // The replacement of a suspect instance runs: the suspect goes.
        if let Some(s) = &copies.suspect {
            batch.delete_actual(s);
        }
        self.commit(batch).await?;
        lock(&self.placements).remove(&PlacementKey::Lrp(key.process_guid.clone(), key.index));
        self.note_progress(&ik.cell_id, self.now());
        tracing::info!(process_guid = %key.process_guid, index = key.index, instance_guid = %ik.instance_guid, cell_id = %ik.cell_id, routable = req.routable, "running");
        Ok(after)
    }

    pub async fn crash_actual_lrp(&self, req: pb::CrashActualLrpRequest) -> Result<pb::ActualLrp, SchedulerError> {
        let key = validate_key(req.key.as_ref())?;
        let ik = validate_instance_key(req.instance_key.as_ref())?;
        let now = self.now();
        let _w = self.write.lock().await;
        let (desired, copies) = self.reported(&key).await?;
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        // An evacuating or suspect copy crashing does not count: its
        // replacement is already on its way.
        for copy in [&copies.evacuating, &copies.suspect].into_iter().flatten() {
            if instance_key_of(copy) == ik {
                batch.delete_actual(copy);
                self.commit(batch).await?;
                return Ok(copy.clone());
            }
        }
        let ord = copies.ordinary.ok_or_else(|| missing(desired.as_ref(), &key))?;
        if !matches!(ord.state(), State::Claimed | State::Running) || !allows_transition_to(&ord, &ik, State::Crashed) {
            return Err(Self::illegal(&key, &ord, State::Crashed, &ik));
        }
        let mut after = ord.clone();
        after.crash_count = next_crash_count(&ord, now);
        clear_instance(&mut after);
        after.state = State::Crashed as i32;
        after.crash_reason = truncate_reason(&req.error_message);
        after.since = now;
        bump(&mut after.modification_tag);
        let mut crashed = event("actual_lrp_crashed");
        crashed.actual_lrp_before = Some(ord.clone());
        crashed.actual_lrp = Some(after.clone());
        let wanted = desired.as_ref().is_some_and(|d| key.index < d.instances);
        if !wanted {
            batch.delete_actual(&ord);
        } else {
            if restart_policy(after.crash_count) == Restart::Immediately {
                after.state = State::Unclaimed as i32;
                fx.auctions.push(AuctionItem::Lrp {
                    process_guid: key.process_guid.clone(),
                    index: key.index,
                    exclude: None,
                });
            }
            batch.put_actual(Some(&ord), after.clone())?;
        }
        batch.events.insert(0, crashed);
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(process_guid = %key.process_guid, index = key.index, instance_guid = %ik.instance_guid, cell_id = %ik.cell_id, crash_count = after.crash_count, state = state_name(after.state()), reason = %after.crash_reason, "crashed");
        self.dispatch(fx);
        Ok(after)
    }

    pub async fn remove_actual_lrp(&self, req: pb::RemoveActualLrpRequest) -> Result<(), SchedulerError> {
        let key = validate_key(req.key.as_ref())?;
        let ik = validate_instance_key(req.instance_key.as_ref())?;
        let now = self.now();
        let _w = self.write.lock().await;
        let desired = self.store.desired_lrp(&key.process_guid).await?;
        let copies = self.copies(&key.process_guid, key.index).await?;
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        let wanted = desired.as_ref().filter(|d| key.index < d.instances);
        if let Some(ord) = &copies.ordinary {
            let placed_here = ord.state() == State::Unclaimed && {
                let p = lock(&self.placements);
                p.get(&PlacementKey::Lrp(key.process_guid.clone(), key.index))
                    .is_some_and(|p| p.instance_guid == ik.instance_guid)
            };
            if instance_key_of(ord) == ik {
                batch.delete_actual(ord);
                // Stopped on purpose (e.g. `cf restart-app-instance`): a new
                // instance takes its place now.
                if let Some(d) = wanted {
                    batch.put_actual(None, new_unclaimed(d, key.index, now))?;
                    fx.auctions.push(AuctionItem::Lrp {
                        process_guid: key.process_guid.clone(),
                        index: key.index,
                        exclude: None,
                    });
                }
            } else if placed_here {
                // The cell took the work but could not run it: place it again.
                lock(&self.placements).remove(&PlacementKey::Lrp(key.process_guid.clone(), key.index));
                fx.auctions.push(AuctionItem::Lrp {
                    process_guid: key.process_guid.clone(),
                    index: key.index,
                    exclude: Some(ik.cell_id.clone()),
                });
            }
        }
        if batch.changes.is_empty() && fx.auctions.is_empty() {
            match [&copies.suspect, &copies.evacuating].into_iter().flatten().find(|c| instance_key_of(c) == ik) {
                Some(c) => batch.delete_actual(c),
                None if copies.ordinary.is_none() && copies.suspect.is_none() && copies.evacuating.is_none() => {
                    if desired.is_none() {
                        return Err(SchedulerError::NotFound(format!(
                            "no desired LRP with process guid {}",
                            key.process_guid
                        )));
                    }
                    // Already gone: a retried remove is fine.
                    return Ok(());
                }
                None => {
                    let ord = copies.ordinary.as_ref().or(copies.suspect.as_ref()).or(copies.evacuating.as_ref());
                    return Err(SchedulerError::FailedPrecondition(format!(
                        "cannot remove {}: it is {}, not instance {} on cell {}",
                        lrp_name(&key.process_guid, key.index),
                        ord.map(owner).unwrap_or_default(),
                        ik.instance_guid,
                        ik.cell_id
                    )));
                }
            }
        }
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(process_guid = %key.process_guid, index = key.index, instance_guid = %ik.instance_guid, cell_id = %ik.cell_id, "removed");
        self.dispatch(fx);
        Ok(())
    }

    pub async fn evacuate_running_actual_lrp(
        &self,
        req: pb::EvacuateRunningActualLrpRequest,
    ) -> Result<bool, SchedulerError> {
        let key = validate_key(req.key.as_ref())?;
        let ik = validate_instance_key(req.instance_key.as_ref())?;
        let net = req.net_info.clone().unwrap_or_default();
        let now = self.now();
        let _w = self.write.lock().await;
        let desired = self.store.desired_lrp(&key.process_guid).await?;
        let copies = self.copies(&key.process_guid, key.index).await?;
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        let ord_mine = copies.ordinary.as_ref().filter(|o| instance_key_of(o) == ik);
        let evac_mine = copies.evacuating.as_ref().filter(|e| instance_key_of(e) == ik);
        let wanted = desired.as_ref().filter(|d| key.index < d.instances);
        let keep = match wanted {
            None => {
                for c in [ord_mine, evac_mine].into_iter().flatten() {
                    batch.delete_actual(c);
                }
                false
            }
            Some(d) => {
                if let Some(ord) = ord_mine {
                    let mut unclaimed = ord.clone();
                    clear_instance(&mut unclaimed);
                    unclaimed.state = State::Unclaimed as i32;
                    unclaimed.since = now;
                    bump(&mut unclaimed.modification_tag);
                    let running = ord.state() == State::Running;
                    if running {
                        let mut evac = ord.clone();
                        evac.presence = Presence::Evacuating as i32;
                        set_net_info(&mut evac, &net);
                        evac.since = now;
                        bump(&mut evac.modification_tag);
                        if let Some(old) = &copies.evacuating {
                            batch.delete_actual(old);
                        }
                        batch.put_actual(None, evac)?;
                    }
                    batch.put_actual(Some(ord), unclaimed)?;
                    fx.auctions.push(AuctionItem::Lrp {
                        process_guid: key.process_guid.clone(),
                        index: key.index,
                        exclude: Some(ik.cell_id.clone()),
                    });
                    // A CLAIMED instance has nothing to hand over (Diego's
                    // EvacuateClaimedActualLRP): the cell may drop it.
                    running
                } else if let Some(evac) = evac_mine {
                    match &copies.ordinary {
                        Some(o) if o.state() == State::Running => {
                            batch.delete_actual(evac);
                            false
                        }
                        Some(_) => true,
                        None => {
                            batch.put_actual(None, new_unclaimed(d, key.index, now))?;
                            fx.auctions.push(AuctionItem::Lrp {
                                process_guid: key.process_guid.clone(),
                                index: key.index,
                                exclude: Some(ik.cell_id.clone()),
                            });
                            true
                        }
                    }
                } else {
                    false
                }
            }
        };
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(process_guid = %key.process_guid, index = key.index, instance_guid = %ik.instance_guid, cell_id = %ik.cell_id, keep_container = keep, "evacuating");
        self.dispatch(fx);
        Ok(keep)
    }

    pub async fn remove_evacuating_actual_lrp(
        &self,
        req: pb::RemoveEvacuatingActualLrpRequest,
    ) -> Result<(), SchedulerError> {
        let key = validate_key(req.key.as_ref())?;
        let ik = validate_instance_key(req.instance_key.as_ref())?;
        let _w = self.write.lock().await;
        let copies = self.copies(&key.process_guid, key.index).await?;
        match copies.evacuating {
            None => Ok(()),
            Some(e) if instance_key_of(&e) == ik => {
                let mut batch = Batch::default();
                batch.delete_actual(&e);
                self.commit(batch).await
            }
            Some(e) => Err(SchedulerError::FailedPrecondition(format!(
                "cannot remove evacuating {}: it is instance {} on cell {}, not {} on cell {}",
                lrp_name(&key.process_guid, key.index),
                e.instance_guid,
                e.cell_id,
                ik.instance_guid,
                ik.cell_id
            ))),
        }
    }

    // ---- tasks ----

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
    fn rejected(&self, mut t: pb::Task, reason: &str, now: i64) -> pb::Task {
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

    // ---- clock and convergence ----

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
        let now = self.now();
        let _w = self.write.lock().await;
        let busy = self.busy_cells(now);
        let desired = self.store.desired_lrps(None).await?;
        let actual = self.store.actual_lrps(ActualLrpFilter::default()).await?;
        let tasks = self.store.tasks(TaskFilter::default()).await?;
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        let mut changes = 0u32;

        let mut by_key: BTreeMap<(String, i32), Copies> = BTreeMap::new();
        for l in actual {
            let c = by_key.entry((l.process_guid.clone(), l.index)).or_default();
            match l.presence() {
                Presence::Ordinary => c.ordinary = Some(l),
                Presence::Evacuating => c.evacuating = Some(l),
                Presence::Suspect => c.suspect = Some(l),
            }
        }
        let desired_by_guid: HashMap<&str, &pb::DesiredLrp> =
            desired.iter().map(|d| (d.process_guid.as_str(), d)).collect();

        for d in &desired {
            for index in 0..d.instances {
                if !by_key.contains_key(&(d.process_guid.clone(), index)) {
                    batch.put_actual(None, new_unclaimed(d, index, now))?;
                    fx.auctions.push(AuctionItem::Lrp { process_guid: d.process_guid.clone(), index, exclude: None });
                    changes += 1;
                }
            }
        }
        for ((pg, index), copies) in &by_key {
            let Some(d) = desired_by_guid.get(pg.as_str()).filter(|d| *index < d.instances) else {
                // Extra indexes and orphans.
                for l in [&copies.ordinary, &copies.suspect].into_iter().flatten() {
                    self.retire(l, &mut batch, &mut fx);
                    changes += 1;
                }
                if let Some(e) = &copies.evacuating {
                    if self.cell_missing(&e.cell_id) {
                        batch.delete_actual(e);
                        changes += 1;
                    }
                }
                continue;
            };
            let auction = AuctionItem::Lrp { process_guid: pg.clone(), index: *index, exclude: None };
            match &copies.ordinary {
                None => {
                    batch.put_actual(None, new_unclaimed(d, *index, now))?;
                    fx.auctions.push(auction);
                    changes += 1;
                }
                Some(o) => match o.state() {
                    State::Crashed if should_restart_crashed(o.crash_count, o.since, now) => {
                        let mut after = o.clone();
                        after.state = State::Unclaimed as i32;
                        after.since = now;
                        bump(&mut after.modification_tag);
                        batch.put_actual(Some(o), after)?;
                        fx.auctions.push(auction);
                        changes += 1;
                    }
                    State::Unclaimed => {
                        let key = PlacementKey::Lrp(pg.clone(), *index);
                        let mut p = lock(&self.placements);
                        let stale = p.get(&key).is_some_and(|pl| pl.stale(now, &busy));
                        if stale {
                            p.remove(&key);
                        }
                        if stale || !p.contains_key(&key) {
                            fx.auctions.push(auction);
                            changes += 1;
                        }
                    }
                    State::Claimed | State::Running if self.cell_missing(&o.cell_id) => {
                        let mut after = o.clone();
                        clear_instance(&mut after);
                        after.state = State::Unclaimed as i32;
                        after.since = now;
                        bump(&mut after.modification_tag);
                        if o.state() == State::Running {
                            tracing::warn!(process_guid = %pg, index = *index, instance_guid = %o.instance_guid, cell_id = %o.cell_id, "cell missing: instance is suspect, auctioning a replacement");
                            let mut suspect = o.clone();
                            suspect.presence = Presence::Suspect as i32;
                            bump(&mut suspect.modification_tag);
                            if let Some(old) = &copies.suspect {
                                batch.delete_actual(old);
                            }
                            batch.put_actual(None, suspect)?;
                        }
                        batch.put_actual(Some(o), after)?;
                        fx.auctions.push(auction);
                        changes += 1;
                    }
                    _ => {}
                },
            }
            if let Some(s) = &copies.suspect {
                if copies.ordinary.as_ref().is_some_and(|o| o.state() == State::Running) {
                    batch.delete_actual(s);
                    changes += 1;
                }
            }
            if let Some(e) = &copies.evacuating {
                if self.cell_missing(&e.cell_id) {
                    batch.delete_actual(e);
                    changes += 1;
                }
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

    /// Queues every unplaced UNCLAIMED instance and PENDING task.
    async fn kick_pending(&self) -> Result<(), SchedulerError> {
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

    // ---- talking to cells ----

    fn dispatch(&self, fx: Effects) {
        if !fx.auctions.is_empty() {
            let _ = self.auctions.send(fx.auctions);
        }
        for stop in fx.stops {
            let addr = self.cell_address(&stop.cell_id);
            let client = addr.as_deref().map(|a| self.cell_client(a));
            let me = self.me.clone();
            tokio::spawn(async move {
                let res = match client {
                    Some(Ok(mut c)) => c
                        .stop_lrp_instance(pb::StopLrpInstanceRequest {
                            process_guid: stop.process_guid.clone(),
                            instance_guid: stop.instance_guid.clone(),
                        })
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("cell is not present".to_string()),
                };
                match res {
                    Ok(()) => {
                        tracing::info!(process_guid = %stop.process_guid, index = stop.index, instance_guid = %stop.instance_guid, cell_id = %stop.cell_id, "asked the cell to stop the instance")
                    }
                    Err(e) => {
                        tracing::warn!(process_guid = %stop.process_guid, index = stop.index, instance_guid = %stop.instance_guid, cell_id = %stop.cell_id, error = %e, "could not ask the cell to stop the instance");
                        if let (true, Some(me)) = (stop.remove_if_unreachable, me.upgrade()) {
                            me.remove_unreachable(stop).await;
                        }
                    }
                }
            });
        }
        for (cell_id, task_guid) in fx.cancels {
            let client = self.cell_address(&cell_id).map(|a| self.cell_client(&a));
            tokio::spawn(async move {
                if let Some(Ok(mut c)) = client {
                    if let Err(e) = c.cancel_task(pb::CancelTaskRequest { task_guid: task_guid.clone() }).await {
                        tracing::warn!(task_guid = %task_guid, cell_id = %cell_id, error = %e, "could not ask the cell to cancel the task");
                    }
                }
            });
        }
    }

    /// The cell of a retired instance cannot be asked to stop it: drop the
    /// record (the cell's bulk reconcile destroys unwanted containers).
    async fn remove_unreachable(&self, stop: StopRequest) {
        let res = async {
            let _w = self.write.lock().await;
            let copies = self.copies(&stop.process_guid, stop.index).await?;
            let copy = match Presence::try_from(stop.presence) {
                Ok(Presence::Ordinary) => copies.ordinary,
                Ok(Presence::Evacuating) => copies.evacuating,
                Ok(Presence::Suspect) | Err(_) => copies.suspect,
            };
            if let Some(l) = copy.filter(|l| l.instance_guid == stop.instance_guid) {
                let mut batch = Batch::default();
                batch.delete_actual(&l);
                self.commit(batch).await?;
            }
            Ok::<(), SchedulerError>(())
        }
        .await;
        if let Err(e) = res {
            tracing::warn!(process_guid = %stop.process_guid, index = stop.index, error = %e, "removing an unreachable instance");
        }
    }

    fn cell_client(&self, addr: &str) -> Result<pb::cell_client::CellClient<Channel>, SchedulerError> {
        let mut ch = lock(&self.channels);
        let channel = match ch.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = crate::grpc::endpoint(addr)
                    .map_err(|e| SchedulerError::InvalidArgument(format!("cell address {addr}: {e}")))?
                    .connect_timeout(CELL_CONNECT_TIMEOUT)
                    .timeout(CELL_REQUEST_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                ch.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(pb::cell_client::CellClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Runs auctions one batch at a time, each batch gathering everything
    /// queued meanwhile.
    pub async fn auction_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Vec<AuctionItem>>) {
        while let Some(mut items) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                items.extend(more);
            }
            if let Err(e) = self.auction(items).await {
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
            let desired: HashMap<String, pb::DesiredLrp> =
                self.store.desired_lrps(None).await?.into_iter().map(|d| (d.process_guid.clone(), d)).collect();
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
                        let Some(d) = desired.get(process_guid).filter(|d| *index < d.instances) else { continue };
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
                                instance_guid: crate::staging::new_guid(),
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
            // instances per process for those alone (every cell runs
            // hundreds of others).
            let placing: HashSet<&str> = lots
                .iter()
                .filter_map(|l| match &l.item {
                    AuctionItem::Lrp { process_guid, .. } => Some(process_guid.as_str()),
                    AuctionItem::Task { .. } => None,
                })
                .collect();
            let demands: HashMap<&str, (Demand, bool)> =
                desired.iter().map(|(pg, d)| (pg.as_str(), (demand_of(d), placing.contains(pg.as_str())))).collect();
            let using = ActualLrpFilter {
                states: Some(vec![State::Claimed as i32, State::Running as i32]),
                ..Default::default()
            };
            for l in self.store.actual_lrps(using).await? {
                if !matches!(l.state(), State::Claimed | State::Running) || l.presence() == Presence::Suspect {
                    continue;
                }
                if let (Some(&i), Some((d, spread))) = (index.get(&l.cell_id), demands.get(l.process_guid.as_str())) {
                    cells[i].add_recorded_counting(d, l.state() == State::Claimed, *spread);
                }
            }
            for t in self.store.tasks(TaskFilter::default()).await? {
                if let (TaskState::Running, Some(&i)) = (t.state(), index.get(&t.cell_id)) {
                    cells[i].add_recorded(&task_demand(&t), false);
                }
            }
            for p in lock(&self.placements).values() {
                if let Some(&i) = index.get(&p.cell_id) {
                    let spread = p.demand.process_guid.as_deref().is_some_and(|pg| placing.contains(pg));
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
            for mut lot in pending.drain(..) {
                lot.excluded.extend(unreachable.iter().cloned());
                match choose(&cells, &lot.demand, &lot.excluded) {
                    Ok(i) => {
                        cells[i].reserve(&lot.demand);
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
                                Work::Lrp(s) => {
                                    tracing::info!(process_guid = %s.desired_lrp.as_ref().map(|d| d.process_guid.as_str()).unwrap_or(""), index = s.index, instance_guid = %s.instance_guid, cell_id = %cell_id, "placed")
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
