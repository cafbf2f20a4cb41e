//! The scheduler's records behind a trait: SQLite now, PostgreSQL later, so
//! the SQL stays plain (protobuf blobs plus the few columns queries filter on).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, mpsc};

use prost::Message;
use rusqlite::{Connection, params};

use super::SchedulerError;
use crate::in_use::{self, CellsInUse, Tally};
use celld_proto as pb;

/// Which ActualLRPs to list; empty/None fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ActualLrpFilter {
    pub process_guid: Option<String>,
    pub cell_id: Option<String>,
    pub index: Option<i32>,
    pub domain: Option<String>,
    /// Only records in one of these states (`State as i32`); None: any.
    pub states: Option<Vec<i32>>,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub domain: Option<String>,
    pub cell_id: Option<String>,
}

/// One write; `apply` runs a list of them in one transaction.
/// DesiredLRPs and tasks are boxed (with their action trees they are
/// kilobytes); an ActualLRP's few hundred bytes are not worth a box.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Change {
    PutDesired(Box<pb::DesiredLrp>),
    DeleteDesired(String),
    PutActual(pb::ActualLrp),
    DeleteActual { process_guid: String, index: i32, presence: i32 },
    PutTask(Box<pb::Task>),
    DeleteTask(String),
}

/// What `visit_instances` calls with the copies of one instance.
pub type InstanceVisitor<'v> = dyn for<'a, 'b> FnMut(&'a [&'b pb::ActualLrp]) + Send + 'v;

/// Runs once the changes of a `submit` are durable (`Ok`) or failed.
pub type Done = Box<dyn FnOnce(Result<(), SchedulerError>) + Send>;

#[async_trait::async_trait]
pub trait SchedulerStore: Send + Sync + 'static {
    async fn desired_lrp(&self, process_guid: &str) -> Result<Option<pb::DesiredLrp>, SchedulerError>;
    async fn desired_lrps(&self, domain: Option<String>) -> Result<Vec<pb::DesiredLrp>, SchedulerError>;
    async fn actual_lrps(&self, filter: ActualLrpFilter) -> Result<Vec<pb::ActualLrp>, SchedulerError>;
    async fn task(&self, task_guid: &str) -> Result<Option<pb::Task>, SchedulerError>;
    async fn tasks(&self, filter: TaskFilter) -> Result<Vec<pb::Task>, SchedulerError>;
    /// Queues `changes` after every earlier submit and returns at once;
    /// `done` runs once they are durable or failed, in submit order (so it
    /// may publish what they did, in order, and never for a lost write).
    /// A store that fails a write fails every later one: they may have been
    /// decided on what it failed to keep.
    fn submit(&self, changes: Vec<Change>, done: Done);
    /// `submit`, but a store that answers reads from memory shows `changes`
    /// at once, before they are durable: for a caller that lets others act
    /// on them before its own answer (the claim and start fast path).
    fn submit_visible(&self, changes: Vec<Change>, done: Done) {
        self.submit(changes, done);
    }
    /// `submit`, answered once durable.
    async fn apply(&self, changes: Vec<Change>) -> Result<(), SchedulerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            changes,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.map_err(|_| SchedulerError::Internal("the store dropped a write".into()))?
    }
    /// Calls `f` with the copies of each instance (the ActualLRPs of one
    /// process guid and index, by presence) in listing order, without
    /// copying them: passes over every instance clone only what they change.
    async fn visit_instances(&self, f: &mut InstanceVisitor<'_>) -> Result<(), SchedulerError> {
        let all = self.actual_lrps(ActualLrpFilter::default()).await?;
        visit_groups(all.iter(), f);
        Ok(())
    }
    /// The instance count of a desired LRP, without copying its record.
    async fn desired_instances(&self, process_guid: &str) -> Result<Option<i32>, SchedulerError> {
        Ok(self.desired_lrp(process_guid).await?.map(|d| d.instances))
    }
    /// What the records place on each cell, with the instances per cell of
    /// `processes` (an auction's). Stores that keep a tally answer without
    /// reading every record.
    async fn cells_in_use(&self, processes: &HashSet<String>) -> Result<CellsInUse, SchedulerError> {
        let desired: HashMap<String, pb::DesiredLrp> =
            self.desired_lrps(None).await?.into_iter().map(|d| (d.process_guid.clone(), d)).collect();
        let actual = self.actual_lrps(ActualLrpFilter::default()).await?;
        let tasks = self.tasks(TaskFilter::default()).await?;
        Ok(in_use::from_scratch(|pg| desired.get(pg), actual.iter(), tasks.iter(), processes))
    }
    /// How many records there are, by kind and state (the /metrics gauges).
    /// Stores that keep counts answer without listing.
    async fn counts(&self) -> Result<StoreCounts, SchedulerError> {
        let mut c = StoreCounts::default();
        for d in self.desired_lrps(None).await? {
            c.add_desired(&d);
        }
        for a in self.actual_lrps(ActualLrpFilter::default()).await? {
            *c.actual.entry(a.state).or_default() += 1;
        }
        for t in self.tasks(TaskFilter::default()).await? {
            *c.tasks.entry(t.state).or_default() += 1;
        }
        Ok(c)
    }
}

/// Calls `f` once per run of records with the same process guid and index.
fn visit_groups<'a>(records: impl Iterator<Item = &'a pb::ActualLrp>, f: &mut InstanceVisitor<'_>) {
    let mut group: Vec<&pb::ActualLrp> = Vec::with_capacity(3);
    for a in records {
        if group.first().is_some_and(|g| g.index != a.index || g.process_guid != a.process_guid) {
            f(&group);
            group.clear();
        }
        group.push(a);
    }
    if !group.is_empty() {
        f(&group);
    }
}

/// Records by kind and state; states are the protos' `State as i32`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub desired_lrps: u64,
    /// The sum of every DesiredLRP's instances.
    pub desired_instances: u64,
    pub actual: std::collections::BTreeMap<i32, u64>,
    pub tasks: std::collections::BTreeMap<i32, u64>,
}

impl StoreCounts {
    fn add_desired(&mut self, d: &pb::DesiredLrp) {
        self.desired_lrps += 1;
        self.desired_instances += u64::try_from(d.instances).unwrap_or(0);
    }
}

/// SQLite in WAL mode. rusqlite is blocking: reads run on the blocking pool
/// behind a mutex, never on a tokio worker; writes go to one writer thread
/// that commits everything queued meanwhile in one transaction (group
/// commit: a transaction's fixed cost is paid once for many writes, and
/// each is answered only once its transaction committed).
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    writes: mpsc::Sender<Write>,
}

struct Write {
    changes: Vec<Change>,
    done: Done,
}

/// At most this many changes in one transaction: a huge backlog still
/// answers its first writers early.
const MAX_GROUP_CHANGES: usize = 8192;

/// The writer thread: takes what is queued, commits it in one transaction,
/// answers every writer in queue order. Ends when the store is dropped.
fn writer(conn: Arc<Mutex<Connection>>, rx: mpsc::Receiver<Write>) {
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut n = first.changes.len();
        let mut group = vec![first];
        while n < MAX_GROUP_CHANGES {
            let Ok(w) = rx.try_recv() else { break };
            n += w.changes.len();
            group.push(w);
        }
        let r = match &failed {
            Some(e) => Err(e.clone()),
            None if n == 0 => Ok(()),
            None => write_group(&conn, &group),
        };
        if let (Err(e), None) = (&r, &failed) {
            tracing::error!(error = %e, "scheduler store: a write failed; every later write fails until the scheduler restarts and reloads its records");
            failed = Some(format!("an earlier write failed ({e}); restart the scheduler"));
        }
        for w in group {
            (w.done)(r.clone().map_err(SchedulerError::Store));
        }
    }
}

fn write_group(conn: &Mutex<Connection>, group: &[Write]) -> Result<(), String> {
    let mut c = conn.lock().map_err(|_| "store lock poisoned".to_string())?;
    let tx = c.transaction().map_err(|e| e.to_string())?;
    for ch in group.iter().flat_map(|w| &w.changes) {
        write_change(&tx, ch).map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

fn write_change(tx: &rusqlite::Transaction<'_>, ch: &Change) -> rusqlite::Result<usize> {
    match ch {
        Change::PutDesired(d) => tx
            .prepare_cached("INSERT OR REPLACE INTO desired_lrps (process_guid, domain, data) VALUES (?, ?, ?)")?
            .execute(params![d.process_guid, d.domain, d.encode_to_vec()]),
        Change::DeleteDesired(g) => {
            tx.prepare_cached("DELETE FROM desired_lrps WHERE process_guid = ?")?.execute(params![g])
        }
        Change::PutActual(a) => tx
            .prepare_cached(
                "INSERT OR REPLACE INTO actual_lrps
                 (process_guid, instance_index, presence, domain, state, cell_id, data)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![a.process_guid, a.index, a.presence, a.domain, a.state, a.cell_id, a.encode_to_vec()]),
        Change::DeleteActual { process_guid, index, presence } => tx
            .prepare_cached("DELETE FROM actual_lrps WHERE process_guid = ? AND instance_index = ? AND presence = ?")?
            .execute(params![process_guid, index, presence]),
        Change::PutTask(t) => tx
            .prepare_cached(
                "INSERT OR REPLACE INTO tasks (task_guid, domain, state, cell_id, data) VALUES (?, ?, ?, ?, ?)",
            )?
            .execute(params![t.task_guid, t.domain, t.state, t.cell_id, t.encode_to_vec()]),
        Change::DeleteTask(g) => tx.prepare_cached("DELETE FROM tasks WHERE task_guid = ?")?.execute(params![g]),
    }
}

fn db_err(e: rusqlite::Error) -> SchedulerError {
    SchedulerError::Store(e.to_string())
}

fn decode<M: Message + Default>(blob: &[u8]) -> Result<M, SchedulerError> {
    M::decode(blob).map_err(|e| SchedulerError::Store(format!("corrupt record: {e}")))
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS desired_lrps (
    process_guid TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS desired_lrps_domain ON desired_lrps (domain);
CREATE TABLE IF NOT EXISTS actual_lrps (
    process_guid TEXT NOT NULL,
    instance_index INTEGER NOT NULL,
    presence INTEGER NOT NULL,
    domain TEXT NOT NULL,
    state INTEGER NOT NULL,
    cell_id TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (process_guid, instance_index, presence)
);
CREATE INDEX IF NOT EXISTS actual_lrps_cell ON actual_lrps (cell_id);
CREATE INDEX IF NOT EXISTS actual_lrps_domain ON actual_lrps (domain);
CREATE TABLE IF NOT EXISTS tasks (
    task_guid TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    state INTEGER NOT NULL,
    cell_id TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_domain ON tasks (domain);
CREATE INDEX IF NOT EXISTS tasks_cell ON tasks (cell_id);
";

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, SchedulerError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| SchedulerError::Store(format!("creating {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(|e| SchedulerError::Store(format!("{}: {e}", path.display())))?;
        // WAL + NORMAL: a commit survives a process crash; only a power loss
        // may lose the last transactions, as Diego's MySQL defaults allow.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db_err)?;
        // Writes to the big tables touch index pages all over: keep more of
        // them than SQLite's 2 MiB default. Only writes use the cache (reads
        // come from `CachedStore`'s memory), so 16 MiB, not 64: all of it
        // fills and counts in the scheduler's RSS.
        conn.pragma_update(None, "cache_size", -16384).map_err(db_err)?;
        // Reads through the page cache's own mapping, and checkpoints that
        // copy each page once for many commits (the WAL grows to ~64 MiB).
        conn.pragma_update(None, "mmap_size", 256i64 << 20).map_err(db_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", 16384).map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        let conn = Arc::new(Mutex::new(conn));
        let (writes, rx) = mpsc::channel();
        let c = conn.clone();
        std::thread::Builder::new()
            .name("scheduler-store".into())
            .spawn(move || writer(c, rx))
            .map_err(|e| SchedulerError::Store(format!("starting the store's writer: {e}")))?;
        Ok(Self { conn, writes })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, SchedulerError> + Send + 'static,
    ) -> Result<T, SchedulerError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().map_err(|_| SchedulerError::Store("store lock poisoned".into()))?;
            f(&mut c)
        })
        .await
        .map_err(|e| SchedulerError::Internal(format!("store task: {e}")))?
    }
}

fn query_blobs<M: Message + Default>(
    c: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<M>, SchedulerError> {
    let mut stmt = c.prepare_cached(sql).map_err(db_err)?;
    let rows = stmt.query_map(args, |r| r.get::<_, Vec<u8>>(0)).map_err(db_err)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(decode(&r.map_err(db_err)?)?);
    }
    Ok(out)
}

/// `WHERE` clauses for the set fields of a filter, in order, with their values.
fn where_clause(conds: Vec<(&str, Box<dyn rusqlite::ToSql + Send>)>) -> (String, Vec<Box<dyn rusqlite::ToSql + Send>>) {
    if conds.is_empty() {
        return (String::new(), Vec::new());
    }
    let sql = conds.iter().map(|(c, _)| format!("{c} = ?")).collect::<Vec<_>>().join(" AND ");
    (format!(" WHERE {sql}"), conds.into_iter().map(|(_, v)| v).collect())
}

#[async_trait::async_trait]
impl SchedulerStore for SqliteStore {
    async fn desired_lrp(&self, process_guid: &str) -> Result<Option<pb::DesiredLrp>, SchedulerError> {
        let guid = process_guid.to_string();
        self.with(move |c| {
            Ok(query_blobs(c, "SELECT data FROM desired_lrps WHERE process_guid = ?", &[&guid])?.into_iter().next())
        })
        .await
    }

    async fn desired_lrps(&self, domain: Option<String>) -> Result<Vec<pb::DesiredLrp>, SchedulerError> {
        self.with(move |c| match domain {
            Some(d) => query_blobs(c, "SELECT data FROM desired_lrps WHERE domain = ? ORDER BY process_guid", &[&d]),
            None => query_blobs(c, "SELECT data FROM desired_lrps ORDER BY process_guid", &[]),
        })
        .await
    }

    async fn actual_lrps(&self, f: ActualLrpFilter) -> Result<Vec<pb::ActualLrp>, SchedulerError> {
        self.with(move |c| {
            let mut conds: Vec<(&str, Box<dyn rusqlite::ToSql + Send>)> = Vec::new();
            if let Some(v) = f.process_guid {
                conds.push(("process_guid", Box::new(v)));
            }
            if let Some(v) = f.cell_id {
                conds.push(("cell_id", Box::new(v)));
            }
            if let Some(v) = f.index {
                conds.push(("instance_index", Box::new(v)));
            }
            if let Some(v) = f.domain {
                conds.push(("domain", Box::new(v)));
            }
            let (mut w, mut vals) = where_clause(conds);
            if let Some(states) = f.states {
                let marks = vec!["?"; states.len()].join(", ");
                w.push_str(&format!("{} state IN ({marks})", if w.is_empty() { " WHERE" } else { " AND" }));
                vals.extend(states.into_iter().map(|v| Box::new(v) as Box<dyn rusqlite::ToSql + Send>));
            }
            let sql = format!("SELECT data FROM actual_lrps{w} ORDER BY process_guid, instance_index, presence");
            let args: Vec<&dyn rusqlite::ToSql> = vals.iter().map(|v| v.as_ref() as &dyn rusqlite::ToSql).collect();
            query_blobs(c, &sql, &args)
        })
        .await
    }

    async fn task(&self, task_guid: &str) -> Result<Option<pb::Task>, SchedulerError> {
        let guid = task_guid.to_string();
        self.with(move |c| {
            Ok(query_blobs(c, "SELECT data FROM tasks WHERE task_guid = ?", &[&guid])?.into_iter().next())
        })
        .await
    }

    async fn tasks(&self, f: TaskFilter) -> Result<Vec<pb::Task>, SchedulerError> {
        self.with(move |c| {
            let mut conds: Vec<(&str, Box<dyn rusqlite::ToSql + Send>)> = Vec::new();
            if let Some(v) = f.domain {
                conds.push(("domain", Box::new(v)));
            }
            if let Some(v) = f.cell_id {
                conds.push(("cell_id", Box::new(v)));
            }
            let (w, vals) = where_clause(conds);
            let sql = format!("SELECT data FROM tasks{w} ORDER BY task_guid");
            let args: Vec<&dyn rusqlite::ToSql> = vals.iter().map(|v| v.as_ref() as &dyn rusqlite::ToSql).collect();
            query_blobs(c, &sql, &args)
        })
        .await
    }

    fn submit(&self, changes: Vec<Change>, done: Done) {
        if let Err(mpsc::SendError(w)) = self.writes.send(Write { changes, done }) {
            (w.done)(Err(SchedulerError::Store("the store's writer stopped".into())));
        }
    }
}

type ActualKey = (String, i32, i32);

fn actual_key(a: &pb::ActualLrp) -> ActualKey {
    (a.process_guid.clone(), a.index, a.presence)
}

/// Every record, decoded, with indexes by cell.
#[derive(Default)]
struct Records {
    desired: BTreeMap<String, pb::DesiredLrp>,
    /// In the SQL listing's order: process guid, index, presence.
    actual: BTreeMap<ActualKey, pb::ActualLrp>,
    actual_by_cell: HashMap<String, BTreeSet<ActualKey>>,
    tasks: BTreeMap<String, pb::Task>,
    tasks_by_cell: HashMap<String, BTreeSet<String>>,
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
        self.actual.range((pg.to_string(), i32::MIN, i32::MIN)..=(pg.to_string(), i32::MAX, i32::MAX)).map(|(_, a)| a)
    }

    fn put_actual(&mut self, a: pb::ActualLrp) {
        let key = actual_key(&a);
        self.count_actual(&a, true);
        self.actual_by_cell.entry(a.cell_id.clone()).or_default().insert(key.clone());
        if let Some(old) = self.actual.insert(key.clone(), a) {
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
    fn cells_in_use(&self, processes: &HashSet<String>) -> CellsInUse {
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

    fn apply(&mut self, changes: Vec<Change>) {
        for ch in changes {
            match ch {
                Change::PutDesired(d) => {
                    let pg = d.process_guid.clone();
                    self.set_desired(&pg, Some(*d));
                }
                Change::DeleteDesired(g) => self.set_desired(&g, None),
                Change::PutActual(a) => self.put_actual(a),
                Change::DeleteActual { process_guid, index, presence } => {
                    self.delete_actual(&(process_guid, index, presence))
                }
                Change::PutTask(t) => self.put_task(*t),
                Change::DeleteTask(g) => self.delete_task(&g),
            }
        }
    }

    fn actual_lrps(&self, f: &ActualLrpFilter) -> Vec<pb::ActualLrp> {
        let matches = |a: &pb::ActualLrp| {
            f.process_guid.as_ref().is_none_or(|v| *v == a.process_guid)
                && f.cell_id.as_ref().is_none_or(|v| *v == a.cell_id)
                && f.index.is_none_or(|v| v == a.index)
                && f.domain.as_ref().is_none_or(|v| *v == a.domain)
                && f.states.as_ref().is_none_or(|v| v.contains(&a.state))
        };
        if let Some(cell) = &f.cell_id {
            let Some(keys) = self.actual_by_cell.get(cell) else { return Vec::new() };
            return keys.iter().filter_map(|k| self.actual.get(k)).filter(|a| matches(a)).cloned().collect();
        }
        if let Some(pg) = &f.process_guid {
            let (lo, hi) = f.index.map_or((i32::MIN, i32::MAX), |i| (i, i));
            return self
                .actual
                .range((pg.clone(), lo, i32::MIN)..=(pg.clone(), hi, i32::MAX))
                .map(|(_, a)| a)
                .filter(|a| matches(a))
                .cloned()
                .collect();
        }
        self.actual.values().filter(|a| matches(a)).cloned().collect()
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
            r.actual.values().for_each(|a| *c.actual.entry(a.state).or_default() += 1);
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
        visit_groups(self.read().actual.values(), f);
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

#[cfg(test)]
mod tests {
    use super::*;
    use celld_proto::actual_lrp::{Presence, State};

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("celld-sched-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("scheduler.db")
    }

    #[tokio::test]
    async fn round_trips_survive_reopening() {
        let path = temp_db("rt");
        {
            let s = SqliteStore::open(&path).unwrap();
            let d = pb::DesiredLrp {
                process_guid: "pg".into(),
                domain: "cf-apps".into(),
                instances: 2,
                ..Default::default()
            };
            let a = |i, p: Presence, cell: &str| pb::ActualLrp {
                process_guid: "pg".into(),
                index: i,
                domain: "cf-apps".into(),
                presence: p as i32,
                state: State::Running as i32,
                cell_id: cell.into(),
                ..Default::default()
            };
            let t = pb::Task { task_guid: "t1".into(), domain: "cf-tasks".into(), state: 1, ..Default::default() };
            s.apply(vec![
                Change::PutDesired(Box::new(d)),
                Change::PutActual(a(0, Presence::Ordinary, "c1")),
                Change::PutActual(a(0, Presence::Evacuating, "c2")),
                Change::PutActual(a(1, Presence::Ordinary, "c2")),
                Change::PutTask(Box::new(t)),
            ])
            .await
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.desired_lrp("pg").await.unwrap().unwrap().instances, 2);
        assert!(s.desired_lrp("nope").await.unwrap().is_none());
        assert_eq!(s.desired_lrps(Some("cf-apps".into())).await.unwrap().len(), 1);
        assert_eq!(s.desired_lrps(Some("other".into())).await.unwrap().len(), 0);
        assert_eq!(s.actual_lrps(ActualLrpFilter::default()).await.unwrap().len(), 3);
        let on_c2 = s.actual_lrps(ActualLrpFilter { cell_id: Some("c2".into()), ..Default::default() }).await.unwrap();
        assert_eq!(on_c2.len(), 2);
        let idx0 = s
            .actual_lrps(ActualLrpFilter { process_guid: Some("pg".into()), index: Some(0), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(idx0.len(), 2);
        s.apply(vec![Change::DeleteActual {
            process_guid: "pg".into(),
            index: 0,
            presence: Presence::Evacuating as i32,
        }])
        .await
        .unwrap();
        assert_eq!(s.actual_lrps(ActualLrpFilter::default()).await.unwrap().len(), 2);
        assert_eq!(s.task("t1").await.unwrap().unwrap().domain, "cf-tasks");
        assert_eq!(s.tasks(TaskFilter { domain: Some("cf-tasks".into()), cell_id: None }).await.unwrap().len(), 1);
        s.apply(vec![Change::DeleteTask("t1".into()), Change::DeleteDesired("pg".into())]).await.unwrap();
        assert!(s.task("t1").await.unwrap().is_none());
        assert!(s.desired_lrp("pg").await.unwrap().is_none());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn the_cache_answers_as_the_database_does() {
        let path = temp_db("cache");
        let sqlite: Arc<dyn SchedulerStore> = Arc::new(SqliteStore::open(&path).unwrap());
        let a = |pg: &str, i, p: Presence, cell: &str| pb::ActualLrp {
            process_guid: pg.into(),
            index: i,
            domain: if pg == "pg-b" { "other".into() } else { "cf-apps".into() },
            presence: p as i32,
            state: State::Running as i32,
            cell_id: cell.into(),
            ..Default::default()
        };
        let d = |pg: &str, domain: &str| pb::DesiredLrp {
            process_guid: pg.into(),
            domain: domain.into(),
            ..Default::default()
        };
        let t = |g: &str, cell: &str| pb::Task {
            task_guid: g.into(),
            domain: "cf-tasks".into(),
            cell_id: cell.into(),
            ..Default::default()
        };
        // Some records before the cache loads, some after.
        sqlite
            .apply(vec![
                Change::PutDesired(Box::new(d("pg-b", "other"))),
                Change::PutActual(a("pg-b", 1, Presence::Ordinary, "c1")),
                Change::PutActual(a("pg-a", 0, Presence::Ordinary, "c2")),
                Change::PutTask(Box::new(t("t2", "c1"))),
            ])
            .await
            .unwrap();
        let cached = CachedStore::load(sqlite.clone()).await.unwrap();
        cached
            .apply(vec![
                Change::PutDesired(Box::new(d("pg-a", "cf-apps"))),
                Change::PutActual(a("pg-a", 0, Presence::Evacuating, "c1")),
                Change::PutActual(a("pg-a", 1, Presence::Ordinary, "c1")),
                Change::PutActual(pb::ActualLrp {
                    state: State::Claimed as i32,
                    ..a("pg-a", 2, Presence::Ordinary, "c1")
                }),
                Change::PutActual(a("pg-b", 0, Presence::Suspect, "c3")),
                Change::PutTask(Box::new(t("t1", "c2"))),
            ])
            .await
            .unwrap();
        // Moves between cells, deletions.
        cached
            .apply(vec![
                Change::PutActual(a("pg-a", 1, Presence::Ordinary, "c3")),
                Change::DeleteActual { process_guid: "pg-b".into(), index: 1, presence: Presence::Ordinary as i32 },
                Change::PutTask(Box::new(t("t2", "c3"))),
            ])
            .await
            .unwrap();
        let filters = [
            ActualLrpFilter::default(),
            ActualLrpFilter { cell_id: Some("c1".into()), ..Default::default() },
            ActualLrpFilter { cell_id: Some("c3".into()), ..Default::default() },
            ActualLrpFilter { cell_id: Some("none".into()), ..Default::default() },
            ActualLrpFilter { process_guid: Some("pg-a".into()), ..Default::default() },
            ActualLrpFilter { process_guid: Some("pg-a".into()), index: Some(0), ..Default::default() },
            ActualLrpFilter { process_guid: Some("pg-a".into()), cell_id: Some("c3".into()), ..Default::default() },
            ActualLrpFilter { index: Some(0), ..Default::default() },
            ActualLrpFilter { domain: Some("other".into()), ..Default::default() },
            ActualLrpFilter { states: Some(vec![State::Running as i32]), ..Default::default() },
            ActualLrpFilter {
                states: Some(vec![State::Claimed as i32, State::Unclaimed as i32]),
                ..Default::default()
            },
            ActualLrpFilter {
                cell_id: Some("c1".into()),
                states: Some(vec![State::Running as i32, State::Crashed as i32]),
                ..Default::default()
            },
        ];
        for f in filters {
            assert_eq!(
                cached.actual_lrps(f.clone()).await.unwrap(),
                sqlite.actual_lrps(f.clone()).await.unwrap(),
                "{f:?}"
            );
        }
        for f in [
            TaskFilter::default(),
            TaskFilter { cell_id: Some("c3".into()), domain: None },
            TaskFilter { cell_id: Some("c1".into()), domain: None },
            TaskFilter { cell_id: None, domain: Some("cf-tasks".into()) },
        ] {
            assert_eq!(cached.tasks(f.clone()).await.unwrap(), sqlite.tasks(f.clone()).await.unwrap(), "{f:?}");
        }
        for dom in [None, Some("cf-apps".to_string()), Some("x".to_string())] {
            assert_eq!(cached.desired_lrps(dom.clone()).await.unwrap(), sqlite.desired_lrps(dom).await.unwrap());
        }
        assert_eq!(cached.desired_lrp("pg-a").await.unwrap(), sqlite.desired_lrp("pg-a").await.unwrap());
        assert_eq!(cached.task("t2").await.unwrap().unwrap().cell_id, "c3");
        cached.apply(vec![Change::DeleteTask("t2".into()), Change::DeleteDesired("pg-b".into())]).await.unwrap();
        assert!(cached.task("t2").await.unwrap().is_none());
        assert!(cached.desired_lrp("pg-b").await.unwrap().is_none());
        assert!(cached.tasks(TaskFilter { cell_id: Some("c3".into()), domain: None }).await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A small deterministic generator (xorshift): the sequences are random
    /// but the same on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// One random change over a few processes, indexes, cells and tasks, so
    /// that records move between cells and states, desired LRPs change size
    /// or go away under their instances, tasks start and finish.
    fn random_change(rng: &mut Rng) -> Change {
        let pg = format!("pg-{}", rng.below(4));
        let cell = format!("cell-{}", rng.below(4));
        let presences = [Presence::Ordinary, Presence::Evacuating, Presence::Suspect];
        let states = [State::Unclaimed, State::Claimed, State::Running, State::Crashed];
        match rng.below(10) {
            0 => Change::PutDesired(Box::new(pb::DesiredLrp {
                process_guid: pg,
                domain: "cf-apps".into(),
                instances: 3,
                memory_mb: [64, 128, 256][rng.below(3) as usize],
                disk_mb: [100, 200][rng.below(2) as usize],
                ..Default::default()
            })),
            1 => Change::DeleteDesired(pg),
            2..=5 => Change::PutActual(pb::ActualLrp {
                process_guid: pg,
                index: rng.below(3) as i32,
                domain: "cf-apps".into(),
                presence: presences[rng.below(3) as usize] as i32,
                state: states[rng.below(4) as usize] as i32,
                cell_id: cell,
                ..Default::default()
            }),
            6 => Change::DeleteActual {
                process_guid: pg,
                index: rng.below(3) as i32,
                presence: presences[rng.below(3) as usize] as i32,
            },
            7 | 8 => Change::PutTask(Box::new(pb::Task {
                task_guid: format!("t-{}", rng.below(5)),
                domain: "cf-tasks".into(),
                state: rng.below(4) as i32,
                cell_id: cell,
                memory_mb: [32, 512][rng.below(2) as usize],
                disk_mb: 10,
                ..Default::default()
            })),
            _ => Change::DeleteTask(format!("t-{}", rng.below(5))),
        }
    }

    fn all_processes() -> HashSet<String> {
        (0..4).map(|i| format!("pg-{i}")).collect()
    }

    /// The totals kept change by change equal a count from scratch after
    /// every change of long random sequences.
    #[test]
    fn the_cells_in_use_tally_equals_a_count_from_scratch() {
        let processes = all_processes();
        let mut counted_something = false;
        for seed in 1..=20u64 {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
            let mut r = Records::default();
            for step in 0..2000 {
                let n = 1 + rng.below(3);
                let changes: Vec<Change> = (0..n).map(|_| random_change(&mut rng)).collect();
                let what = format!("seed {seed}, step {step}: {changes:?}");
                r.apply(changes);
                let expected =
                    in_use::from_scratch(|pg| r.desired.get(pg), r.actual.values(), r.tasks.values(), &processes);
                assert_eq!(r.cells_in_use(&processes), expected, "{what}");
                counted_something |= !expected.cells.is_empty() && !expected.per_process.is_empty();
            }
        }
        assert!(counted_something, "the random changes never put anything on a cell");
    }

    /// The cache's tally answers as the database's count from scratch,
    /// after a reload too.
    #[tokio::test]
    async fn the_cached_cells_in_use_answer_as_the_database_does() {
        let path = temp_db("in-use");
        let sqlite: Arc<dyn SchedulerStore> = Arc::new(SqliteStore::open(&path).unwrap());
        let cached = CachedStore::load(sqlite.clone()).await.unwrap();
        let processes = all_processes();
        let some: HashSet<String> = ["pg-1".to_string()].into();
        let mut rng = Rng(42);
        for _ in 0..300 {
            let changes: Vec<Change> = (0..1 + rng.below(3)).map(|_| random_change(&mut rng)).collect();
            cached.apply(changes).await.unwrap();
            for p in [&processes, &some] {
                assert_eq!(cached.cells_in_use(p).await.unwrap(), sqlite.cells_in_use(p).await.unwrap());
            }
        }
        let reloaded = CachedStore::load(sqlite.clone()).await.unwrap();
        assert_eq!(reloaded.cells_in_use(&processes).await.unwrap(), sqlite.cells_in_use(&processes).await.unwrap());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
