//! The SQLite store: one connection, and a writer thread that commits every
//! queued change in one transaction and answers each caller once it is durable.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use prost::Message;
use rusqlite::{Connection, params};

use super::*;

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
-- No secondary indexes on the hottest table: every claim and start rewrote
-- both (a delete and an insert each), and the scheduler never reads this
-- table by cell or domain (the cached store answers from memory; only the
-- load at start reads it, in primary key order). Databases from before lose them.
DROP INDEX IF EXISTS actual_lrps_cell;
DROP INDEX IF EXISTS actual_lrps_domain;
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
