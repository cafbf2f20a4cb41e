//! The scheduler's records behind a trait: SQLite now, PostgreSQL later, so
//! the SQL stays plain (protobuf blobs plus the few columns queries filter on).

use std::path::Path;
use std::sync::{Arc, Mutex};

use prost::Message;
use rusqlite::{Connection, params};

use super::SchedulerError;
use crate::grpc::pb;

/// Which ActualLRPs to list; empty/None fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ActualLrpFilter {
    pub process_guid: Option<String>,
    pub cell_id: Option<String>,
    pub index: Option<i32>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub domain: Option<String>,
    pub cell_id: Option<String>,
}

/// One write; `apply` runs a list of them in one transaction.
#[derive(Debug, Clone)]
pub enum Change {
    PutDesired(pb::DesiredLrp),
    DeleteDesired(String),
    PutActual(pb::ActualLrp),
    DeleteActual { process_guid: String, index: i32, presence: i32 },
    PutTask(pb::Task),
    DeleteTask(String),
}

#[async_trait::async_trait]
pub trait SchedulerStore: Send + Sync + 'static {
    async fn desired_lrp(&self, process_guid: &str) -> Result<Option<pb::DesiredLrp>, SchedulerError>;
    async fn desired_lrps(&self, domain: Option<String>) -> Result<Vec<pb::DesiredLrp>, SchedulerError>;
    async fn actual_lrps(&self, filter: ActualLrpFilter) -> Result<Vec<pb::ActualLrp>, SchedulerError>;
    async fn task(&self, task_guid: &str) -> Result<Option<pb::Task>, SchedulerError>;
    async fn tasks(&self, filter: TaskFilter) -> Result<Vec<pb::Task>, SchedulerError>;
    async fn apply(&self, changes: Vec<Change>) -> Result<(), SchedulerError>;
}

/// SQLite in WAL mode. rusqlite is blocking: every call runs on the blocking
/// pool behind a mutex, never on a tokio worker.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
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
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
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
            let (w, vals) = where_clause(conds);
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

    async fn apply(&self, changes: Vec<Change>) -> Result<(), SchedulerError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.with(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            for ch in changes {
                match ch {
                    Change::PutDesired(d) => {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO desired_lrps (process_guid, domain, data) VALUES (?, ?, ?)",
                        )
                        .and_then(|mut s| s.execute(params![d.process_guid, d.domain, d.encode_to_vec()]))
                        .map_err(db_err)?;
                    }
                    Change::DeleteDesired(g) => {
                        tx.prepare_cached("DELETE FROM desired_lrps WHERE process_guid = ?")
                            .and_then(|mut s| s.execute(params![g]))
                            .map_err(db_err)?;
                    }
                    Change::PutActual(a) => {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO actual_lrps
                             (process_guid, instance_index, presence, domain, state, cell_id, data)
                             VALUES (?, ?, ?, ?, ?, ?, ?)",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                a.process_guid,
                                a.index,
                                a.presence,
                                a.domain,
                                a.state,
                                a.cell_id,
                                a.encode_to_vec()
                            ])
                        })
                        .map_err(db_err)?;
                    }
                    Change::DeleteActual { process_guid, index, presence } => {
                        tx.prepare_cached(
                            "DELETE FROM actual_lrps WHERE process_guid = ? AND instance_index = ? AND presence = ?",
                        )
                        .and_then(|mut s| s.execute(params![process_guid, index, presence]))
                        .map_err(db_err)?;
                    }
                    Change::PutTask(t) => {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO tasks (task_guid, domain, state, cell_id, data) VALUES (?, ?, ?, ?, ?)",
                        )
                        .and_then(|mut s| s.execute(params![t.task_guid, t.domain, t.state, t.cell_id, t.encode_to_vec()]))
                        .map_err(db_err)?;
                    }
                    Change::DeleteTask(g) => {
                        tx.prepare_cached("DELETE FROM tasks WHERE task_guid = ?")
                            .and_then(|mut s| s.execute(params![g]))
                            .map_err(db_err)?;
                    }
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::pb::actual_lrp::{Presence, State};

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
                Change::PutDesired(d),
                Change::PutActual(a(0, Presence::Ordinary, "c1")),
                Change::PutActual(a(0, Presence::Evacuating, "c2")),
                Change::PutActual(a(1, Presence::Ordinary, "c2")),
                Change::PutTask(t),
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
}
