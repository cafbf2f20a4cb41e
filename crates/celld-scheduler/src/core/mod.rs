//! The scheduler's rules: Diego's BBS (records, state machine, convergence),
//! auctioneer (placement) and Locket (presence) in one object. Every record
//! change runs under one async write lock and commits in one store
//! transaction; calls to cells happen after the lock is released (a cell
//! answering Perform calls back ClaimActualLRP, which needs the lock).
//!
//! This file holds the `Scheduler` object and its in-memory state beside the
//! store; each child adds the methods of one responsibility. Listed from
//! the bottom up: a file calls only the ones above it in this list.
//!
//! - `records`: reading the copies of an instance, and the batch of writes
//!   and events one operation commits.
//! - `presence`: which cells are live, missing or busy (Locket's TTL).
//! - `cells`: the calls to cells (stop, cancel) once the lock is released,
//!   and the gRPC clients that dial them.
//! - `desired_lrps`, `actual_lrps`, `tasks`: the rules applied to what the
//!   API desires and to what cells report (the LRP and task state machines).
//! - `convergence`: the periodic pass that repairs what drifted.
//! - `auctioneer`: placing work on cells (Perform) and recording what found
//!   no cell.
//! - `heartbeats`: what a cell heartbeating again or going quiet sets off.

mod actual_lrps;
mod auctioneer;
mod cells;
mod convergence;
mod desired_lrps;
mod heartbeats;
mod presence;
mod records;
mod tasks;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tonic::transport::Channel;

pub use self::cells::MAX_MESSAGE_BYTES;
use super::auction::Demand;
use super::clock::{Clock, TestClock};
use super::model::STALE_UNCLAIMED_NS;
use super::store::SchedulerStore;
use celld_proto as pb;

/// Events kept for subscribers that lag. Each slot holds a pointer, not
/// the event: an Event holds its records inline (~4.6 KB), so 4 096 slots
/// of events took 19 MB whether or not anyone subscribed.
const EVENT_BUFFER: usize = 4096;

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

pub struct SchedulerOptions {
    pub presence_ttl: Duration,
    pub test_clock: bool,
    pub metrics: crate::metrics::SchedulerMetrics,
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
    events: broadcast::Sender<Arc<pb::Event>>,
    auctions: mpsc::UnboundedSender<Vec<AuctionItem>>,
    presence_ttl: Duration,
    started: Instant,
    /// For tasks spawned by `dispatch` that must take the write lock later.
    me: std::sync::Weak<Scheduler>,
    metrics: crate::metrics::SchedulerMetrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short locks leaves plain maps behind: keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
            metrics: opts.metrics,
        });
        (s, rx)
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub fn presence_ttl(&self) -> Duration {
        self.presence_ttl
    }

    pub fn metrics(&self) -> &crate::metrics::SchedulerMetrics {
        &self.metrics
    }

    /// The store's records by kind and state.
    pub async fn store_counts(&self) -> Result<super::store::StoreCounts, crate::SchedulerError> {
        self.store.counts().await
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<pb::Event>> {
        self.events.subscribe()
    }
}
