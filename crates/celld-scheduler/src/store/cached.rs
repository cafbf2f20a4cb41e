//! The store the scheduler reads from: every record in memory, indexed by
//! cell and tallied by cell (`in_use`), in front of a durable store that
//! every change goes to.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use super::*;
use crate::in_use::{self, CellsInUse, Tally};

/// (process guid, index, presence). The guid is interned (`Records::guids`):
/// the keys of a process's instances, in the map and in the by-cell index,
/// share one allocation instead of holding a copy each (a process has up to
/// thousands of instances).
type ActualKey = (Arc<str>, i32, i32);

/// The bounds of `pg`'s keys with indexes `lo..=hi` (any presence).
fn key_range(pg: &str, lo: i32, hi: i32) -> std::ops::RangeInclusive<ActualKey> {
    let pg: Arc<str> = Arc::from(pg);
    (pg.clone(), lo, i32::MIN)..=(pg, hi, i32::MAX)
}

/// Every record, decoded, with indexes by cell.
#[derive(Default)]
pub(super) struct Records {
    pub(super) desired: BTreeMap<String, pb::DesiredLrp>,
    /// In the SQL listing's order: process guid, index, presence.
    /// Boxed: a B-tree node holds up to 11 entries and, filled in key order
    /// as instances are desired, stays about half full, so a ~280-byte
    /// record kept in the node wasted about as much again per instance.
    actual: BTreeMap<ActualKey, Box<pb::ActualLrp>>,
    actual_by_cell: HashMap<String, BTreeSet<ActualKey>>,
    pub(super) tasks: BTreeMap<String, pb::Task>,
    tasks_by_cell: HashMap<String, BTreeSet<String>>,
    /// The process guids of the keys in `actual`; one goes when the last
    /// key holding it does.
    guids: HashSet<Arc<str>>,
    /// Every record's share of its cell (`in_use`), kept as they change.
    tally: Tally,
}

fn unindex<K: Ord>(index: &mut HashMap<String, BTreeSet<K>>, cell: &str, key: &K) {
    if let Some(set) = index.get_mut(cell) {
        set.remove(key);
        if set.is_empty() {
            index.remove(cell);
        }
    }
}

impl Records {
    fn actual_key(&mut self, a: &pb::ActualLrp) -> ActualKey {
        let pg = match self.guids.get(a.process_guid.as_str()) {
            Some(g) => g.clone(),
            None => {
                let g: Arc<str> = Arc::from(a.process_guid.as_str());
                self.guids.insert(g.clone());
                g
            }
        };
        (pg, a.index, a.presence)
    }

    /// Drops `pg` from the interned guids once no key holds it.
    fn release_guid(&mut self, pg: &str) {
        if self.guids.get(pg).is_some_and(|g| Arc::strong_count(g) == 1) {
            self.guids.remove(pg);
        }
    }

    /// Takes `a`'s share out of the tally (`count: false`) or puts it in.
    fn count_actual(&mut self, a: &pb::ActualLrp, count: bool) {
        if let Some(share) = in_use::instance_share(a, self.desired.get(&a.process_guid)) {
            if count {
                self.tally.add(&a.cell_id, share);
            } else {
                self.tally.remove(&a.cell_id, share);
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

    /// The instances of `pg`, in listing order.
    fn instances_of<'a>(&'a self, pg: &str) -> impl Iterator<Item = &'a pb::ActualLrp> + 'a {
        self.actual.range(key_range(pg, i32::MIN, i32::MAX)).map(|(_, a)| &**a)
    }

    fn put_actual(&mut self, a: pb::ActualLrp) {
        let key = self.actual_key(&a);
        self.count_actual(&a, true);
        self.actual_by_cell.entry(a.cell_id.clone()).or_default().insert(key.clone());
        if let Some(old) = self.actual.insert(key.clone(), Box::new(a)) {
            self.count_actual(&old, false);
            let new_cell = &self.actual[&key].cell_id;
            if old.cell_id != *new_cell {
                unindex(&mut self.actual_by_cell, &old.cell_id, &key);
            }
        }
    }

    fn delete_actual(&mut self, key: &ActualKey) {
        if let Some(old) = self.actual.remove(key) {
            self.count_actual(&old, false);
            unindex(&mut self.actual_by_cell, &old.cell_id, key);
            self.release_guid(&key.0);
        }
    }

    /// Puts (`Some`) or deletes the desired LRP `pg`; its instances' shares
    /// follow its size.
    fn set_desired(&mut self, pg: &str, d: Option<pb::DesiredLrp>) {
        let size = |d: Option<&pb::DesiredLrp>| d.map(|d| (d.memory_mb, d.disk_mb));
        let resized = size(self.desired.get(pg)) != size(d.as_ref());
        let counted: Vec<pb::ActualLrp> = if resized {
            // Few: one process's instances, and only when its size changes.
            self.instances_of(pg).filter(|a| in_use::occupies_cell(a)).cloned().collect()
        } else {
            Vec::new()
        };
        for a in &counted {
            self.count_actual(a, false);
        }
        match d {
            Some(d) => {
                self.desired.insert(pg.to_string(), d);
            }
            None => {
                self.desired.remove(pg);
            }
        }
        for a in &counted {
            self.count_actual(a, true);
        }
    }

    fn put_task(&mut self, t: pb::Task) {
        self.count_task(&t, true);
        self.tasks_by_cell.entry(t.cell_id.clone()).or_default().insert(t.task_guid.clone());
        let guid = t.task_guid.clone();
        if let Some(old) = self.tasks.insert(guid.clone(), t) {
            self.count_task(&old, false);
            if old.cell_id != self.tasks[&guid].cell_id {
                unindex(&mut self.tasks_by_cell, &old.cell_id, &guid);
            }
        }
    }

    fn delete_task(&mut self, guid: &str) {
        if let Some(old) = self.tasks.remove(guid) {
            self.count_task(&old, false);
            unindex(&mut self.tasks_by_cell, &old.cell_id, &guid.to_string());
        }
    }

    /// The tally, with the counted instances per cell of `processes`
    /// (read from their own records only).
    pub(super) fn cells_in_use(&self, processes: &HashSet<String>) -> CellsInUse {
        let mut per_process = HashMap::new();
        for pg in processes {
            let desired = self.desired.get(pg);
            let mut by_cell: HashMap<String, u64> = HashMap::new();
            for a in self.instances_of(pg).filter(|a| in_use::instance_share(a, desired).is_some()) {
                match by_cell.get_mut(&a.cell_id) {
                    Some(n) => *n += 1,
                    None => {
                        by_cell.insert(a.cell_id.clone(), 1);
                    }
                }
            }
            if !by_cell.is_empty() {
                per_process.insert(pg.clone(), by_cell);
            }
        }
        CellsInUse { cells: self.tally.cells().clone(), per_process }
    }

    pub(super) fn apply(&mut self, changes: Vec<Change>) {
        for ch in changes {
            match ch {
                Change::PutDesired(d) => {
                    let pg = d.process_guid.clone();
                    self.set_desired(&pg, Some(*d));
                }
                Change::DeleteDesired(g) => self.set_desired(&g, None),
                Change::PutActual(a) => self.put_actual(a),
                Change::DeleteActual { process_guid, index, presence } => {
                    self.delete_actual(&(Arc::from(process_guid), index, presence))
                }
                Change::PutTask(t) => self.put_task(*t),
                Change::DeleteTask(g) => self.delete_task(&g),
            }
        }
    }

    /// Every ActualLRP, in listing order.
    pub(super) fn actual_values(&self) -> impl Iterator<Item = &pb::ActualLrp> {
        self.actual.values().map(|a| &**a)
    }

    /// The interned process guids (for tests: none may outlive its keys).
    #[cfg(test)]
    pub(super) fn interned_guids(&self) -> BTreeSet<String> {
        self.guids.iter().map(|g| g.to_string()).collect()
    }

    pub(super) fn actual_lrps(&self, f: &ActualLrpFilter) -> Vec<pb::ActualLrp> {
        let matches = |a: &pb::ActualLrp| {
            f.process_guid.as_ref().is_none_or(|v| *v == a.process_guid)
                && f.cell_id.as_ref().is_none_or(|v| *v == a.cell_id)
                && f.index.is_none_or(|v| v == a.index)
                && f.domain.as_ref().is_none_or(|v| *v == a.domain)
                && f.states.as_ref().is_none_or(|v| v.contains(&a.state))
        };
        if let Some(cell) = &f.cell_id {
            let Some(keys) = self.actual_by_cell.get(cell) else { return Vec::new() };
            return keys
                .iter()
                .filter_map(|k| self.actual.get(k))
                .map(|a| &**a)
                .filter(|a| matches(a))
                .cloned()
                .collect();
        }
        if let Some(pg) = &f.process_guid {
            let (lo, hi) = f.index.map_or((i32::MIN, i32::MAX), |i| (i, i));
            return self
                .actual
                .range(key_range(pg, lo, hi))
                .map(|(_, a)| &**a)
                .filter(|a| matches(a))
                .cloned()
                .collect();
        }
        self.actual_values().filter(|a| matches(a)).cloned().collect()
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
            r.put_actual(a);
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
            r.actual_values().for_each(|a| *c.actual.entry(a.state).or_default() += 1);
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
        visit_groups(self.read().actual_values(), f);
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
                    records.write().unwrap_or_else(std::sync::PoisonError::into_inner).apply(kept);
                }
                done(r);
            }),
        );
    }

    fn submit_visible(&self, changes: Vec<Change>, done: Done) {
        let mut r = self.records.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Under the lock: the database's queue and memory change in one order.
        self.inner.submit(changes.clone(), done);
        r.apply(changes);
    }
}
