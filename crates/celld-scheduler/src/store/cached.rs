//! The store the scheduler reads from: every record in memory, indexed by
//! cell and tallied by cell (`in_use`), in front of a durable store that
//! every change goes to.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use super::compact::{Interner, StoredActual};
use super::*;
use crate::in_use::{self, CellsInUse, Tally};

/// (process guid, index, presence). The guid is interned (`Records::guids`):
/// the keys of a process's instances, in the map and in the by-cell index,
/// share one allocation instead of holding a copy each (a process has up to
/// thousands of instances).
type ActualKey = (Arc<str>, i32, i32);

/// The bounds of the keys of interned guid `pg` with indexes `lo..=hi`
/// (any presence): two reference counts, no allocation.
fn key_range(pg: &Arc<str>, lo: i32, hi: i32) -> std::ops::RangeInclusive<ActualKey> {
    (pg.clone(), lo, i32::MIN)..=(pg.clone(), hi, i32::MAX)
}

/// Every record, decoded, with indexes by cell.
#[derive(Default)]
pub(super) struct Records {
    pub(super) desired: BTreeMap<String, pb::DesiredLrp>,
    /// In the SQL listing's order: process guid, index, presence. Compact
    /// records (`compact`), made protobufs again only when answering.
    /// Boxed: a B-tree node holds up to 11 entries and, filled in key order
    /// as instances are desired, stays about half full, so a record kept in
    /// the node wasted about as much again per instance.
    actual: BTreeMap<ActualKey, Box<StoredActual>>,
    actual_by_cell: HashMap<Arc<str>, BTreeSet<ActualKey>>,
    pub(super) tasks: BTreeMap<String, pb::Task>,
    tasks_by_cell: HashMap<String, BTreeSet<String>>,
    /// The process guids of the keys in `actual`; one goes when the last
    /// key holding it does.
    guids: Interner,
    /// The cell ids, domains and cells' addresses the records share.
    strings: Interner,
    /// Every record's share of its cell (`in_use`), kept as they change.
    tally: Tally,
}

fn unindex<Q: std::hash::Hash + Eq + ?Sized, C: std::borrow::Borrow<Q> + std::hash::Hash + Eq, K: Ord>(
    index: &mut HashMap<C, BTreeSet<K>>,
    cell: &Q,
    key: &K,
) {
    if let Some(set) = index.get_mut(cell) {
        set.remove(key);
        if set.is_empty() {
            index.remove(cell);
        }
    }
}

/// Whether an ActualLRP filter's fields other than the key's match.
fn matches_record(f: &ActualLrpFilter, key: &ActualKey, a: &StoredActual) -> bool {
    f.process_guid.as_ref().is_none_or(|v| **v == *key.0)
        && f.cell_id.as_ref().is_none_or(|v| **v == **a.cell_id())
        && f.index.is_none_or(|v| v == key.1)
        && f.domain.as_ref().is_none_or(|v| v == a.domain())
        && f.states.as_ref().is_none_or(|v| v.contains(&a.state()))
}

impl Records {
    /// Takes `a`'s share out of the tally (`count: false`) or puts it in.
    fn count_actual(&mut self, pg: &str, presence: i32, a: &StoredActual, count: bool) {
        if let Some(share) = in_use::share_of(a.state(), presence, self.desired.get(pg)) {
            if count {
                self.tally.add(a.cell_id(), share);
            } else {
                self.tally.remove(a.cell_id(), share);
            }
        }
    }

    fn count_task(&mut self, t: &pb::Task, count: bool) {
        if let Some(share) = in_use::task_share(t) {
            if count {
                self.tally.add(&t.cell_id, share);
            } else {
                self.tally.remove(&t.cell_id, share);
            }
        }
    }

    /// The records of `pg` with indexes `lo..=hi`, in listing order.
    fn range_of<'a>(
        &'a self,
        pg: &str,
        lo: i32,
        hi: i32,
    ) -> impl Iterator<Item = (&'a ActualKey, &'a StoredActual)> + 'a {
        let range = self.guids.find(pg).map(|g| self.actual.range(key_range(g, lo, hi)));
        range.into_iter().flatten().map(|(k, a)| (k, &**a))
    }

    fn put_actual(&mut self, a: &pb::ActualLrp) {
        let key: ActualKey = (self.guids.get(&a.process_guid), a.index, a.presence);
        let stored = StoredActual::new(a, &mut self.strings);
        self.count_actual(&a.process_guid, a.presence, &stored, true);
        let cell = stored.cell_id().clone();
        self.actual_by_cell.entry(cell.clone()).or_default().insert(key.clone());
        if let Some(old) = self.actual.insert(key.clone(), Box::new(stored)) {
            self.count_actual(&a.process_guid, a.presence, &old, false);
            if **old.cell_id() != *cell {
                unindex(&mut self.actual_by_cell, &**old.cell_id(), &key);
            }
            old.release(&mut self.strings);
            // The new key holds the guid the old one did.
        }
    }

    fn delete_actual(&mut self, pg: &str, index: i32, presence: i32) {
        let Some(g) = self.guids.find(pg).cloned() else { return };
        let key = (g, index, presence);
        if let Some(old) = self.actual.remove(&key) {
            self.count_actual(pg, presence, &old, false);
            unindex(&mut self.actual_by_cell, &**old.cell_id(), &key);
            old.release(&mut self.strings);
            drop(key);
            self.guids.release_str(pg);
        }
    }

    /// Puts (`Some`) or deletes the desired LRP `pg`; its instances' shares
    /// follow its size.
    fn set_desired(&mut self, pg: &str, d: Option<pb::DesiredLrp>) {
        let size = |d: Option<&pb::DesiredLrp>| d.map(|d| (d.memory_mb, d.disk_mb));
        let resized = size(self.desired.get(pg)) != size(d.as_ref());
        let shares = |r: &Self| -> Vec<(Arc<str>, Option<in_use::Share>)> {
            // Few: one process's instances, and only when its size changes.
            r.range_of(pg, i32::MIN, i32::MAX)
                .map(|(k, a)| (a.cell_id().clone(), in_use::share_of(a.state(), k.2, r.desired.get(pg))))
                .filter(|(_, s)| s.is_some())
                .collect()
        };
        let before = if resized { shares(self) } else { Vec::new() };
        for (cell, s) in &before {
            if let Some(s) = s {
                self.tally.remove(cell, *s);
            }
        }
        match d {
            Some(d) => {
                self.desired.insert(pg.to_string(), d);
            }
            None => {
                self.desired.remove(pg);
            }
        }
        if resized {
            for (cell, s) in shares(self) {
                if let Some(s) = s {
                    self.tally.add(&cell, s);
                }
            }
        }
    }

    fn put_task(&mut self, t: pb::Task) {
        self.count_task(&t, true);
        self.tasks_by_cell.entry(t.cell_id.clone()).or_default().insert(t.task_guid.clone());
        let guid = t.task_guid.clone();
        if let Some(old) = self.tasks.insert(guid.clone(), t) {
            self.count_task(&old, false);
            if old.cell_id != self.tasks[&guid].cell_id {
                unindex(&mut self.tasks_by_cell, old.cell_id.as_str(), &guid);
            }
        }
    }

    fn delete_task(&mut self, guid: &str) {
        if let Some(old) = self.tasks.remove(guid) {
            self.count_task(&old, false);
            unindex(&mut self.tasks_by_cell, old.cell_id.as_str(), &guid.to_string());
        }
    }

    /// The tally, with the counted instances per cell of `processes`
    /// (read from their own records only).
    pub(super) fn cells_in_use(&self, processes: &HashSet<String>) -> CellsInUse {
        let mut per_process = HashMap::new();
        for pg in processes {
            let desired = self.desired.get(pg);
            let mut by_cell: HashMap<String, u64> = HashMap::new();
            for (k, a) in self.range_of(pg, i32::MIN, i32::MAX) {
                if in_use::share_of(a.state(), k.2, desired).is_none() {
                    continue;
                }
                match by_cell.get_mut(&**a.cell_id()) {
                    Some(n) => *n += 1,
                    None => {
                        by_cell.insert(a.cell_id().to_string(), 1);
                    }
                }
            }
            if !by_cell.is_empty() {
                per_process.insert(pg.clone(), by_cell);
            }
        }
        CellsInUse { cells: self.tally.cells().clone(), per_process }
    }

    /// Applies `changes` that stay the caller's (the durable store takes
    /// them too): ActualLRPs are read in place, the rest copied.
    pub(super) fn apply(&mut self, changes: &[Change]) {
        for ch in changes {
            match ch {
                Change::PutActual(a) => self.put_actual(a),
                Change::DeleteActual { process_guid, index, presence } => {
                    self.delete_actual(process_guid, *index, *presence)
                }
                other => self.apply_change(other.clone()),
            }
        }
    }

    pub(super) fn apply_change(&mut self, ch: Change) {
        match ch {
            Change::PutDesired(d) => {
                let pg = d.process_guid.clone();
                self.set_desired(&pg, Some(*d));
            }
            Change::DeleteDesired(g) => self.set_desired(&g, None),
            Change::PutActual(a) => self.put_actual(&a),
            Change::DeleteActual { process_guid, index, presence } => {
                self.delete_actual(&process_guid, index, presence)
            }
            Change::PutTask(t) => self.put_task(*t),
            Change::DeleteTask(g) => self.delete_task(&g),
        }
    }

    /// Calls `f` with the records of each instance (process guid and index),
    /// in listing order, made protobufs in scratch records reused from one
    /// instance to the next.
    pub(super) fn visit(&self, f: &mut InstanceVisitor<'_>) {
        let mut scratch: Vec<pb::ActualLrp> = Vec::new();
        let mut n = 0;
        let mut current: Option<(&Arc<str>, i32)> = None;
        // A group is one record per presence, three at most: no allocation
        // per instance for the slice of references.
        let flush = |scratch: &[pb::ActualLrp], f: &mut InstanceVisitor<'_>| match scratch {
            [a] => f(&[a]),
            [a, b] => f(&[a, b]),
            [a, b, c] => f(&[a, b, c]),
            more => f(&more.iter().collect::<Vec<_>>()),
        };
        for (k, a) in &self.actual {
            if current.is_some_and(|(pg, i)| i != k.1 || !Arc::ptr_eq(pg, &k.0)) {
                flush(&scratch[..n], f);
                n = 0;
            }
            current = Some((&k.0, k.1));
            if scratch.len() == n {
                scratch.push(pb::ActualLrp::default());
            }
            a.fill(&k.0, k.1, k.2, &mut scratch[n]);
            n += 1;
        }
        if n > 0 {
            flush(&scratch[..n], f);
        }
    }

    /// How many ActualLRPs there are by state, without making protobufs.
    fn count_states(&self, counts: &mut BTreeMap<i32, u64>) {
        for a in self.actual.values() {
            *counts.entry(a.state()).or_default() += 1;
        }
    }

    /// Every ActualLRP, in listing order (as protobufs: for tests).
    #[cfg(test)]
    pub(super) fn actual_records(&self) -> Vec<pb::ActualLrp> {
        self.actual.iter().map(|(k, a)| a.to_pb(&k.0, k.1, k.2)).collect()
    }

    /// The interned process guids (for tests: none may outlive its keys).
    #[cfg(test)]
    pub(super) fn interned_guids(&self) -> BTreeSet<String> {
        self.guids.strings()
    }

    /// The interned cell ids, domains and addresses (for tests: each is
    /// held by some record).
    #[cfg(test)]
    pub(super) fn interned_strings(&self) -> BTreeSet<String> {
        self.strings.strings()
    }

    pub(super) fn actual_lrps(&self, f: &ActualLrpFilter) -> Vec<pb::ActualLrp> {
        let out = |(k, a): (&ActualKey, &StoredActual)| a.to_pb(&k.0, k.1, k.2);
        if let Some(cell) = &f.cell_id {
            let Some(keys) = self.actual_by_cell.get(cell.as_str()) else { return Vec::new() };
            return keys
                .iter()
                .filter_map(|k| self.actual.get(k).map(|a| (k, &**a)))
                .filter(|(k, a)| matches_record(f, k, a))
                .map(out)
                .collect();
        }
        if let Some(pg) = &f.process_guid {
            let (lo, hi) = f.index.map_or((i32::MIN, i32::MAX), |i| (i, i));
            return self.range_of(pg, lo, hi).filter(|(k, a)| matches_record(f, k, a)).map(out).collect();
        }
        self.actual.iter().map(|(k, a)| (k, &**a)).filter(|(k, a)| matches_record(f, k, a)).map(out).collect()
    }

    fn tasks(&self, f: &TaskFilter) -> Vec<pb::Task> {
        let matches = |t: &pb::Task| {
            f.domain.as_ref().is_none_or(|v| *v == t.domain) && f.cell_id.as_ref().is_none_or(|v| *v == t.cell_id)
        };
        if let Some(cell) = &f.cell_id {
            let Some(guids) = self.tasks_by_cell.get(cell) else { return Vec::new() };
            return guids.iter().filter_map(|g| self.tasks.get(g)).filter(|t| matches(t)).cloned().collect();
        }
        self.tasks.values().filter(|t| matches(t)).cloned().collect()
    }
}

/// Another store (the record of truth) with every record also kept decoded
/// in memory: loaded once, written through, so reads never reach the
/// database. Convergence and auctions list everything and every cell
/// reconciles by cell id: from memory and an index these are copies, not
/// queries that decode every row. Memory changes once a write is durable,
/// or (`submit_visible`) when it is queued, so that the rules decide on it
/// at once; whoever answers for such a write waits for its `done` (and the
/// store writes in queue order, so anything decided on it is never kept
/// without it).
pub struct CachedStore {
    inner: Arc<dyn SchedulerStore>,
    records: Arc<RwLock<Records>>,
}

/// Listings of everything are copied off the async workers.
const BIG_LISTING: usize = 1024;

impl CachedStore {
    /// Loads every record of `inner`.
    pub async fn load(inner: Arc<dyn SchedulerStore>) -> Result<Self, SchedulerError> {
        let mut r = Records::default();
        // Desired first: instances' shares are sized by their desired LRP.
        for d in inner.desired_lrps(None).await? {
            r.desired.insert(d.process_guid.clone(), d);
        }
        for a in inner.actual_lrps(ActualLrpFilter::default()).await? {
            r.put_actual(&a);
        }
        for t in inner.tasks(TaskFilter::default()).await? {
            r.put_task(t);
        }
        Ok(Self { inner, records: Arc::new(RwLock::new(r)) })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Records> {
        // A panic while holding the lock cannot leave half a change: apply
        // only runs infallible map updates.
        self.records.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn listing<T: Send + 'static>(
        &self,
        big: bool,
        f: impl FnOnce(&Records) -> T + Send + 'static,
    ) -> Result<T, SchedulerError> {
        if !big {
            return Ok(f(&self.read()));
        }
        let records = self.records.clone();
        tokio::task::spawn_blocking(move || f(&records.read().unwrap_or_else(std::sync::PoisonError::into_inner)))
            .await
            .map_err(|e| SchedulerError::Internal(format!("store task: {e}")))
    }
}

#[async_trait::async_trait]
impl SchedulerStore for CachedStore {
    async fn desired_lrp(&self, process_guid: &str) -> Result<Option<pb::DesiredLrp>, SchedulerError> {
        Ok(self.read().desired.get(process_guid).cloned())
    }

    async fn desired_lrps(&self, domain: Option<String>) -> Result<Vec<pb::DesiredLrp>, SchedulerError> {
        let big = self.read().desired.len() > BIG_LISTING;
        self.listing(big, move |r| {
            r.desired.values().filter(|d| domain.as_ref().is_none_or(|v| *v == d.domain)).cloned().collect()
        })
        .await
    }

    async fn actual_lrps(&self, filter: ActualLrpFilter) -> Result<Vec<pb::ActualLrp>, SchedulerError> {
        let narrow = filter.cell_id.is_some() || filter.process_guid.is_some();
        let big = !narrow && self.read().actual.len() > BIG_LISTING;
        self.listing(big, move |r| r.actual_lrps(&filter)).await
    }

    async fn task(&self, task_guid: &str) -> Result<Option<pb::Task>, SchedulerError> {
        Ok(self.read().tasks.get(task_guid).cloned())
    }

    async fn tasks(&self, filter: TaskFilter) -> Result<Vec<pb::Task>, SchedulerError> {
        let big = filter.cell_id.is_none() && self.read().tasks.len() > BIG_LISTING;
        self.listing(big, move |r| r.tasks(&filter)).await
    }

    async fn counts(&self) -> Result<StoreCounts, SchedulerError> {
        // Counted in memory without copying a record; off the async workers
        // when there are many.
        let big = self.read().actual.len() > BIG_LISTING;
        self.listing(big, |r| {
            let mut c = StoreCounts::default();
            r.desired.values().for_each(|d| c.add_desired(d));
            r.count_states(&mut c.actual);
            r.tasks.values().for_each(|t| *c.tasks.entry(t.state).or_default() += 1);
            c
        })
        .await
    }

    async fn desired_instances(&self, process_guid: &str) -> Result<Option<i32>, SchedulerError> {
        Ok(self.read().desired.get(process_guid).map(|d| d.instances))
    }

    async fn cells_in_use(&self, processes: &HashSet<String>) -> Result<CellsInUse, SchedulerError> {
        Ok(self.read().cells_in_use(processes))
    }

    async fn visit_instances(&self, f: &mut InstanceVisitor<'_>) -> Result<(), SchedulerError> {
        // In place under the read lock: copying 250 000 records took most
        // of a convergence pass.
        self.read().visit(f);
        Ok(())
    }

    fn submit(&self, changes: Vec<Change>, done: Done) {
        // Memory changes once the database has it, as reads never showed
        // what a crash could lose (the caller holds its write lock until
        // then, so nothing is decided on it meanwhile).
        if changes.is_empty() {
            self.inner.submit(changes, done);
            return;
        }
        let records = self.records.clone();
        let kept = changes.clone();
        self.inner.submit(
            changes,
            Box::new(move |r| {
                if r.is_ok() {
                    let mut records = records.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                    kept.into_iter().for_each(|ch| records.apply_change(ch));
                }
                done(r);
            }),
        );
    }

    fn submit_visible(&self, changes: Vec<Change>, done: Done) {
        let mut r = self.records.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Under the lock: the database's queue and memory change in one
        // order. Memory reads the changes in place: no copy of each.
        r.apply(&changes);
        self.inner.submit(changes, done);
    }
}
