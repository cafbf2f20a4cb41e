//! What the records place on each cell, as an auction counts it: CLAIMED and
//! RUNNING instances (not suspect, of a desired LRP, sized by it) and
//! RUNNING tasks. `CachedStore` keeps these totals up to date as records
//! change, so an auction reads one total per cell instead of every instance.

use std::collections::{HashMap, HashSet};

use celld_proto as pb;
use celld_proto::actual_lrp::{Presence, State};
use celld_proto::task::State as TaskState;

/// The recorded use of one cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CellUse {
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub containers: u64,
    /// CLAIMED instances (a cell counts them as starting).
    pub starting: u64,
}

/// Recorded use by cell id, and for the processes asked about, their
/// counted instances by cell id (an auction spreads a process's instances).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CellsInUse {
    pub cells: HashMap<String, CellUse>,
    pub per_process: HashMap<String, HashMap<String, u64>>,
}

/// What one record adds to its cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    memory_mb: u64,
    disk_mb: u64,
    starting: bool,
}

/// An instance's share: only CLAIMED or RUNNING, not suspect (its cell is
/// gone), and only while its process is desired (its size comes from there).
pub fn instance_share(a: &pb::ActualLrp, desired: Option<&pb::DesiredLrp>) -> Option<Share> {
    share_of(a.state, a.presence, desired)
}

/// `instance_share` of a record in `state` with `presence` (both as the
/// protos' i32), for records not kept as protobufs.
pub fn share_of(state: i32, presence: i32, desired: Option<&pb::DesiredLrp>) -> Option<Share> {
    let state = State::try_from(state).unwrap_or_default();
    let presence = Presence::try_from(presence).unwrap_or_default();
    if !(matches!(state, State::Claimed | State::Running) && presence != Presence::Suspect) {
        return None;
    }
    let d = desired?;
    Some(Share { memory_mb: d.memory_mb.into(), disk_mb: d.disk_mb.into(), starting: state == State::Claimed })
}

/// A task's share: only while RUNNING.
pub fn task_share(t: &pb::Task) -> Option<Share> {
    (t.state() == TaskState::Running).then(|| Share {
        memory_mb: t.memory_mb.into(),
        disk_mb: t.disk_mb.into(),
        starting: false,
    })
}

/// Per-cell totals of the shares of every record, kept as records change.
#[derive(Debug, Default)]
pub struct Tally {
    cells: HashMap<String, CellUse>,
}

impl Tally {
    pub fn add(&mut self, cell_id: &str, s: Share) {
        let u = match self.cells.get_mut(cell_id) {
            Some(u) => u,
            None => self.cells.entry(cell_id.to_string()).or_default(),
        };
        u.memory_mb += s.memory_mb;
        u.disk_mb += s.disk_mb;
        u.containers += 1;
        u.starting += u64::from(s.starting);
    }

    /// Takes back a share `add` counted (so the totals never go below zero;
    /// a cell with nothing left is dropped).
    pub fn remove(&mut self, cell_id: &str, s: Share) {
        let Some(u) = self.cells.get_mut(cell_id) else {
            debug_assert!(false, "removing a share of {cell_id} never added");
            return;
        };
        debug_assert!(u.containers > 0 && u.memory_mb >= s.memory_mb && u.disk_mb >= s.disk_mb);
        u.memory_mb = u.memory_mb.saturating_sub(s.memory_mb);
        u.disk_mb = u.disk_mb.saturating_sub(s.disk_mb);
        u.containers = u.containers.saturating_sub(1);
        u.starting = u.starting.saturating_sub(u64::from(s.starting));
        if u.containers == 0 {
            self.cells.remove(cell_id);
        }
    }

    pub fn cells(&self) -> &HashMap<String, CellUse> {
        &self.cells
    }
}

/// Counts from scratch, by reading every record: what stores without a
/// tally answer, and what the tally must always equal.
pub fn from_scratch<'a>(
    desired: impl Fn(&str) -> Option<&'a pb::DesiredLrp>,
    actual: impl Iterator<Item = &'a pb::ActualLrp>,
    tasks: impl Iterator<Item = &'a pb::Task>,
    processes: &HashSet<String>,
) -> CellsInUse {
    let mut tally = Tally::default();
    let mut per_process: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for a in actual {
        if let Some(s) = instance_share(a, desired(&a.process_guid)) {
            tally.add(&a.cell_id, s);
            if processes.contains(&a.process_guid) {
                *per_process.entry(a.process_guid.clone()).or_default().entry(a.cell_id.clone()).or_default() += 1;
            }
        }
    }
    for t in tasks {
        if let Some(s) = task_share(t) {
            tally.add(&t.cell_id, s);
        }
    }
    CellsInUse { cells: tally.cells, per_process }
}
