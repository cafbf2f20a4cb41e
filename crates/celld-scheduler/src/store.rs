//! The scheduler's records behind a trait: SQLite now, PostgreSQL later, so
//! the SQL stays plain (protobuf blobs plus the few columns queries filter on).
//! `sqlite` is the durable store, `cached` the in-memory one in front of it.

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::SchedulerError;
use crate::in_use::{self, CellsInUse};
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

fn decode<M: Message + Default>(blob: &[u8]) -> Result<M, SchedulerError> {
    M::decode(blob).map_err(|e| SchedulerError::Store(format!("corrupt record: {e}")))
}

mod cached;
mod compact;
mod sqlite;

pub use cached::CachedStore;
#[cfg(test)]
use cached::Records;
pub use sqlite::SqliteStore;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use celld_proto::actual_lrp::{Presence, State};

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("celld-sched-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("scheduler.db")
    }

    /// A database written before the actual LRPs' secondary indexes went
    /// opens with its records, loses those indexes, and still answers by cell.
    #[tokio::test]
    async fn a_database_with_the_old_indexes_opens_without_them() {
        let path = temp_db("old-indexes");
        let a = pb::ActualLrp {
            process_guid: "pg".into(),
            domain: "cf-apps".into(),
            state: State::Claimed as i32,
            instance_guid: "ig".into(),
            cell_id: "c1".into(),
            ..Default::default()
        };
        {
            let s = SqliteStore::open(&path).unwrap();
            s.apply(vec![Change::PutActual(a.clone())]).await.unwrap();
        }
        let indexes = || -> Vec<String> {
            let c = rusqlite::Connection::open(&path).unwrap();
            let mut st = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'actual_lrps' AND sql IS NOT NULL ORDER BY name")
                .unwrap();
            st.query_map([], |r| r.get::<_, String>(0)).unwrap().map(|r| r.unwrap()).collect()
        };
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE INDEX actual_lrps_cell ON actual_lrps (cell_id);
                 CREATE INDEX actual_lrps_domain ON actual_lrps (domain);",
            )
            .unwrap();
        }
        assert_eq!(indexes(), ["actual_lrps_cell", "actual_lrps_domain"]);
        let s = SqliteStore::open(&path).unwrap();
        assert!(indexes().is_empty(), "{:?}", indexes());
        let by_cell =
            s.actual_lrps(ActualLrpFilter { cell_id: Some("c1".into()), ..Default::default() }).await.unwrap();
        assert_eq!(by_cell, vec![a.clone()]);
        let cached = CachedStore::load(Arc::new(s)).await.unwrap();
        assert_eq!(cached.actual_lrps(ActualLrpFilter::default()).await.unwrap(), vec![a]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
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
                r.apply(&changes);
                let actual = r.actual_records();
                let expected =
                    in_use::from_scratch(|pg| r.desired.get(pg), actual.iter(), r.tasks.values(), &processes);
                assert_eq!(r.cells_in_use(&processes), expected, "{what}");
                counted_something |= !expected.cells.is_empty() && !expected.per_process.is_empty();
            }
        }
        assert!(counted_something, "the random changes never put anything on a cell");
    }

    /// The records kept with interned keys list as a plain map keyed by
    /// owned guids does (all, by cell, by process and index), and no
    /// interned guid outlives the last instance of its process.
    #[test]
    fn interned_keys_list_as_owned_keys_do() {
        type Plain = std::collections::BTreeMap<(String, i32, i32), pb::ActualLrp>;
        let mut deleted_a_process = false;
        for seed in 1..=10u64 {
            let mut rng = Rng(0x51_7cc1_b727_220a ^ seed);
            let mut r = Records::default();
            let mut plain = Plain::new();
            for step in 0..2000 {
                let ch = random_change(&mut rng);
                match &ch {
                    Change::PutActual(a) => {
                        plain.insert((a.process_guid.clone(), a.index, a.presence), a.clone());
                    }
                    Change::DeleteActual { process_guid, index, presence } => {
                        plain.remove(&(process_guid.clone(), *index, *presence));
                    }
                    _ => {}
                }
                let what = format!("seed {seed}, step {step}: {ch:?}");
                let before = r.interned_guids().len();
                r.apply(&[ch]);
                let all: Vec<pb::ActualLrp> = plain.values().cloned().collect();
                assert_eq!(r.actual_lrps(&ActualLrpFilter::default()), all, "{what}");
                for i in 0..4 {
                    let cell = format!("cell-{i}");
                    let f = ActualLrpFilter { cell_id: Some(cell.clone()), ..Default::default() };
                    let on_cell: Vec<_> = all.iter().filter(|a| a.cell_id == cell).cloned().collect();
                    assert_eq!(r.actual_lrps(&f), on_cell, "{what}");
                    let pg = format!("pg-{i}");
                    let f = ActualLrpFilter { process_guid: Some(pg.clone()), index: Some(1), ..Default::default() };
                    let of_pg: Vec<_> = all.iter().filter(|a| a.process_guid == pg && a.index == 1).cloned().collect();
                    assert_eq!(r.actual_lrps(&f), of_pg, "{what}");
                }
                let guids: BTreeSet<String> = plain.keys().map(|k| k.0.clone()).collect();
                assert_eq!(r.interned_guids(), guids, "{what}");
                deleted_a_process |= guids.len() < before;
            }
        }
        assert!(deleted_a_process, "no sequence removed the last instance of a process");
    }

    /// What a record holds of the strings the cached store interns.
    fn shared_strings(a: &pb::ActualLrp) -> Vec<String> {
        let has_net = !a.address.is_empty() || !a.instance_address.is_empty() || !a.ports.is_empty();
        let mut v = vec![a.cell_id.clone(), a.domain.clone()];
        if has_net {
            v.push(a.address.clone());
        }
        v
    }

    /// Records of every shape (guids canonical or not, with and without
    /// network info, tags, crash reasons, placement errors), put over one
    /// another and deleted at random, list and visit as the same records
    /// kept as protobufs do, and no shared string outlives its last record.
    #[test]
    fn compact_records_list_and_visit_as_protobufs_do() {
        use compact::testing::{Rng, random_record};
        type Plain = std::collections::BTreeMap<(String, i32, i32), pb::ActualLrp>;
        let mut replaced = 0;
        for seed in 1..=10u64 {
            let mut rng = Rng(0x6a09_e667_f3bc_c908 ^ seed);
            let mut r = Records::default();
            let mut plain = Plain::new();
            for step in 0..1500 {
                let mut a = random_record(&mut rng);
                // Few keys, so that records replace one another.
                a.process_guid = format!("pg-{}", rng.below(3));
                a.index = rng.below(3) as i32;
                a.presence = rng.below(3) as i32;
                let k = (a.process_guid.clone(), a.index, a.presence);
                let ch = if rng.below(4) == 0 {
                    plain.remove(&k);
                    Change::DeleteActual { process_guid: k.0, index: k.1, presence: k.2 }
                } else {
                    replaced += usize::from(plain.insert(k, a.clone()).is_some());
                    Change::PutActual(a)
                };
                let what = format!("seed {seed}, step {step}: {ch:?}");
                r.apply(&[ch]);
                let all: Vec<pb::ActualLrp> = plain.values().cloned().collect();
                assert_eq!(r.actual_lrps(&ActualLrpFilter::default()), all, "{what}");
                assert_eq!(r.actual_records(), all, "{what}");
                let cell = all.first().map(|a| a.cell_id.clone()).unwrap_or_default();
                let f = ActualLrpFilter { cell_id: Some(cell.clone()), ..Default::default() };
                let on_cell: Vec<_> = all.iter().filter(|a| a.cell_id == cell).cloned().collect();
                assert_eq!(r.actual_lrps(&f), on_cell, "{what}");
                let mut visited: Vec<Vec<pb::ActualLrp>> = Vec::new();
                r.visit(&mut |group| visited.push(group.iter().map(|a| (*a).clone()).collect()));
                let mut expected: Vec<Vec<pb::ActualLrp>> = Vec::new();
                visit_groups(all.iter(), &mut |group| expected.push(group.iter().map(|a| (*a).clone()).collect()));
                assert_eq!(visited, expected, "{what}");
                let strings: BTreeSet<String> = all.iter().flat_map(shared_strings).collect();
                assert_eq!(r.interned_strings(), strings, "{what}");
                let guids: BTreeSet<String> = plain.keys().map(|k| k.0.clone()).collect();
                assert_eq!(r.interned_guids(), guids, "{what}");
            }
        }
        assert!(replaced > 1000, "records seldom replaced one another: {replaced}");
    }

    /// Records of every shape written through the cached store (as claims
    /// and starts are, visible at once, and as other writes are, once
    /// durable) are in the database as they were in memory, and a store
    /// reloaded from it holds what the first one did.
    #[tokio::test]
    async fn compact_records_reload_from_the_database_as_they_were_in_memory() {
        use compact::testing::{Rng, random_record};
        let path = temp_db("compact");
        let sqlite: Arc<dyn SchedulerStore> = Arc::new(SqliteStore::open(&path).unwrap());
        let cached = CachedStore::load(sqlite.clone()).await.unwrap();
        let mut rng = Rng(7);
        for i in 0..2000 {
            let mut a = random_record(&mut rng);
            a.process_guid = format!("pg-{}", rng.below(20));
            a.index = rng.below(20) as i32;
            let changes = vec![Change::PutActual(a)];
            if i % 2 == 0 {
                let (tx, rx) = tokio::sync::oneshot::channel();
                cached.submit_visible(
                    changes,
                    Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                );
                rx.await.unwrap().unwrap();
            } else {
                cached.apply(changes).await.unwrap();
            }
        }
        let all = ActualLrpFilter::default();
        let in_memory = cached.actual_lrps(all.clone()).await.unwrap();
        assert!(in_memory.len() > 300, "{}", in_memory.len());
        assert_eq!(in_memory, sqlite.actual_lrps(all.clone()).await.unwrap());
        let reloaded = CachedStore::load(sqlite.clone()).await.unwrap();
        assert_eq!(reloaded.actual_lrps(all).await.unwrap(), in_memory);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
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
