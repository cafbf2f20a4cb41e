//! The app layer's records in SQLite: apps, routes, user-provided service
//! instances, bindings, events and tasks. Each record is one JSON row; the
//! uniqueness rules a user meets (app name per space, route host per cell,
//! service name per space) are table constraints, so no race can break them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::AppsError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Droplet {
    pub key: String,
    pub sha256: String,
    pub stack: String,
    pub detected_buildpack: String,
    pub buildpacks: Vec<String>,
    /// The web process's command from the buildpack or Procfile.
    pub start_command: String,
    pub process_types: BTreeMap<String, String>,
    pub result_json: String,
    pub created_at: i64,
    /// A Docker-image app's "droplet" (CF's docker lifecycle): the image's
    /// rootfs URI and the port it exposes; `key` is then empty.
    #[serde(default)]
    pub docker_rootfs: String,
    #[serde(default)]
    pub port: u32,
}

impl Droplet {
    /// The container port the app listens on: the image's exposed port for a
    /// Docker app, CF's 8080 otherwise.
    pub fn app_port(&self) -> u32 {
        if self.port == 0 { super::APP_PORT } else { self.port }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppRecord {
    pub guid: String,
    pub name: String,
    pub space: String,
    /// STARTED or STOPPED.
    pub state: String,
    pub instances: u32,
    pub memory_mb: u32,
    pub disk_mb: u32,
    pub health_check_type: String,
    pub health_check_endpoint: String,
    pub health_check_timeout: u32,
    pub command: String,
    pub buildpacks: Vec<String>,
    pub stack: String,
    pub env: BTreeMap<String, String>,
    pub routes: Vec<String>,
    /// PENDING, STAGED or FAILED.
    pub package_state: String,
    pub staging_failed_reason: String,
    pub package_key: String,
    pub package_uploaded_at: i64,
    pub droplet: Option<Droplet>,
    /// Droplets replaced by a newer staging, deleted once no desired process
    /// uses them (a crashed instance restarts from its process's droplet).
    #[serde(default)]
    pub old_droplets: Vec<String>,
    /// A Docker-image app: the image (as the user gave it) and its registry
    /// credentials; empty for a buildpack app.
    #[serde(default)]
    pub docker_image: String,
    #[serde(default)]
    pub docker_username: String,
    #[serde(default)]
    pub docker_password: String,
    /// The web process's Diego process (the top-level scale, command and
    /// health check fields above are the web process's, as every depot
    /// written before process types has them).
    pub process_guid: String,
    /// The process types other than web (`worker`, …), by type; an older
    /// record has none.
    #[serde(default)]
    pub processes: BTreeMap<String, ProcessRecord>,
    pub enable_ssh: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One process type of an app (CC's process): its own DesiredLRP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// CC's process guid (the app's guid for web, a new one for other types).
    pub guid: String,
    pub instances: u32,
    pub memory_mb: u32,
    pub disk_mb: u32,
    /// "" means the droplet's command for the type.
    pub command: String,
    pub health_check_type: String,
    pub health_check_endpoint: String,
    pub health_check_timeout: u32,
    /// The Diego process desired for the type; "" while stopped.
    pub process_guid: String,
}

pub const WEB: &str = "web";

impl AppRecord {
    /// The web process, from the record's top-level fields.
    pub fn web(&self) -> ProcessRecord {
        ProcessRecord {
            guid: self.guid.clone(),
            instances: self.instances,
            memory_mb: self.memory_mb,
            disk_mb: self.disk_mb,
            command: self.command.clone(),
            health_check_type: self.health_check_type.clone(),
            health_check_endpoint: self.health_check_endpoint.clone(),
            health_check_timeout: self.health_check_timeout,
            process_guid: self.process_guid.clone(),
        }
    }

    /// Every process type, web first.
    pub fn all_processes(&self) -> Vec<(String, ProcessRecord)> {
        let mut out = vec![(WEB.to_string(), self.web())];
        out.extend(self.processes.iter().filter(|(t, _)| *t != WEB).map(|(t, p)| (t.clone(), p.clone())));
        out
    }

    /// One process type, if the app has it.
    pub fn process(&self, process_type: &str) -> Option<ProcessRecord> {
        if process_type == WEB { Some(self.web()) } else { self.processes.get(process_type).cloned() }
    }

    /// Stores a process type's settings (web's in the top-level fields).
    pub fn set_process(&mut self, process_type: &str, p: ProcessRecord) {
        if process_type == WEB {
            self.instances = p.instances;
            self.memory_mb = p.memory_mb;
            self.disk_mb = p.disk_mb;
            self.command = p.command;
            self.health_check_type = p.health_check_type;
            self.health_check_endpoint = p.health_check_endpoint;
            self.health_check_timeout = p.health_check_timeout;
            self.process_guid = p.process_guid;
        } else {
            self.processes.insert(process_type.to_string(), p);
        }
    }

    /// The type whose Diego process this is, if it is one of the app's.
    pub fn type_of_diego_process(&self, diego_guid: &str) -> Option<String> {
        if diego_guid.is_empty() {
            return None;
        }
        self.all_processes().into_iter().find(|(_, p)| p.process_guid == diego_guid).map(|(t, _)| t)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub guid: String,
    pub name: String,
    pub space: String,
    /// The credentials object, as JSON text.
    pub credentials: String,
    pub tags: Vec<String>,
    pub syslog_drain_url: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BindingRecord {
    pub guid: String,
    pub app_guid: String,
    pub service_guid: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventRecord {
    pub guid: String,
    pub app_guid: String,
    pub kind: String,
    pub actor: String,
    pub timestamp: i64,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskRecord {
    pub guid: String,
    pub app_guid: String,
    pub sequence_id: u32,
    pub name: String,
    pub command: String,
    pub memory_mb: u32,
    pub disk_mb: u32,
    pub created_at: i64,
    /// Set once the task ended (SUCCEEDED or FAILED), so its state outlives
    /// the scheduler's record.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub failure_reason: String,
}

pub struct Store {
    db: Mutex<Connection>,
}

fn store_err(e: impl std::fmt::Display) -> AppsError {
    AppsError::Store(e.to_string())
}

fn decode<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, AppsError> {
    serde_json::from_str(text).map_err(|e| AppsError::Store(format!("a record does not decode: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<String, AppsError> {
    serde_json::to_string(v).map_err(store_err)
}

fn name_taken(app: &AppRecord) -> AppsError {
    AppsError::AlreadyExists(format!(
        "an app named '{}' already exists in space '{}': choose another name, or push to update it",
        app.name, app.space
    ))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
        || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS apps (guid TEXT PRIMARY KEY, space TEXT NOT NULL, name TEXT NOT NULL, record TEXT NOT NULL, UNIQUE (space, name));
CREATE TABLE IF NOT EXISTS routes (host TEXT PRIMARY KEY, app_guid TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (guid TEXT PRIMARY KEY, space TEXT NOT NULL, name TEXT NOT NULL, record TEXT NOT NULL, UNIQUE (space, name));
CREATE TABLE IF NOT EXISTS bindings (guid TEXT PRIMARY KEY, app_guid TEXT NOT NULL, service_guid TEXT NOT NULL, UNIQUE (app_guid, service_guid));
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, app_guid TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_app ON events (app_guid, seq);
CREATE TABLE IF NOT EXISTS tasks (guid TEXT PRIMARY KEY, app_guid TEXT NOT NULL, seq INTEGER NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spaces (name TEXT PRIMARY KEY, allow_ssh INTEGER NOT NULL);
";

impl Store {
    pub fn open(path: &Path) -> Result<Self, AppsError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AppsError::Store(format!("creating {}: {e}", dir.display())))?;
        }
        let db = Connection::open(path).map_err(|e| AppsError::Store(format!("opening {}: {e}", path.display())))?;
        db.execute_batch(SCHEMA).map_err(store_err)?;
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts an app and its routes in one transaction: a taken name or
    /// host leaves nothing behind.
    pub fn create_app(&self, app: &AppRecord) -> Result<(), AppsError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(store_err)?;
        let taken: Option<String> = tx
            .query_row("SELECT guid FROM apps WHERE space = ?1 AND name = ?2", [&app.space, &app.name], |r| r.get(0))
            .optional()
            .map_err(store_err)?;
        if taken.is_some() {
            return Err(name_taken(app));
        }
        for host in &app.routes {
            let owner: Option<String> = tx
                .query_row("SELECT app_guid FROM routes WHERE host = ?1", [host], |r| r.get(0))
                .optional()
                .map_err(store_err)?;
            if owner.is_some() {
                return Err(AppsError::AlreadyExists(format!(
                    "the route {host} is already in use by another app: choose another host with --hostname, or push with --no-route"
                )));
            }
            tx.execute("INSERT INTO routes (host, app_guid) VALUES (?1, ?2)", params![host, app.guid])
                .map_err(store_err)?;
        }
        match tx.execute(
            "INSERT INTO apps (guid, space, name, record) VALUES (?1, ?2, ?3, ?4)",
            params![app.guid, app.space, app.name, encode(app)?],
        ) {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(name_taken(app)),
            Err(e) => return Err(store_err(e)),
        }
        tx.commit().map_err(store_err)
    }

    /// Whether a space allows ssh (cf allow-space-ssh); spaces do unless told not to.
    pub fn space_allows_ssh(&self, space: &str) -> Result<bool, AppsError> {
        let v: Option<bool> = self
            .db()
            .query_row("SELECT allow_ssh FROM spaces WHERE name = ?1", [space], |r| r.get(0))
            .optional()
            .map_err(store_err)?;
        Ok(v.unwrap_or(true))
    }

    pub fn set_space_ssh(&self, space: &str, allow: bool) -> Result<(), AppsError> {
        self.db()
            .execute(
                "INSERT INTO spaces (name, allow_ssh) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET allow_ssh = ?2",
                params![space, allow],
            )
            .map_err(store_err)?;
        Ok(())
    }

    pub fn put_app(&self, app: &AppRecord) -> Result<(), AppsError> {
        let n = self
            .db()
            .execute("UPDATE apps SET record = ?2 WHERE guid = ?1", params![app.guid, encode(app)?])
            .map_err(store_err)?;
        if n == 0 {
            return Err(AppsError::NotFound(format!("app '{}' no longer exists", app.name)));
        }
        Ok(())
    }

    pub fn app(&self, guid: &str) -> Result<Option<AppRecord>, AppsError> {
        let text: Option<String> = self
            .db()
            .query_row("SELECT record FROM apps WHERE guid = ?1", [guid], |r| r.get(0))
            .optional()
            .map_err(store_err)?;
        text.map(|t| decode(&t)).transpose()
    }

    pub fn app_by_name(&self, space: &str, name: &str) -> Result<Option<AppRecord>, AppsError> {
        let text: Option<String> = self
            .db()
            .query_row("SELECT record FROM apps WHERE space = ?1 AND name = ?2", [space, name], |r| r.get(0))
            .optional()
            .map_err(store_err)?;
        text.map(|t| decode(&t)).transpose()
    }

    /// Apps of one space, or of all spaces, by name.
    pub fn apps(&self, space: Option<&str>) -> Result<Vec<AppRecord>, AppsError> {
        let db = self.db();
        let rows: Vec<String> = match space {
            Some(s) => collect(db.prepare("SELECT record FROM apps WHERE space = ?1 ORDER BY name"), [s]),
            None => collect(db.prepare("SELECT record FROM apps ORDER BY space, name"), []),
        }?;
        rows.iter().map(|t| decode(t)).collect()
    }

    /// Removes an app with its routes, bindings and tasks (events stay, as in CF).
    pub fn delete_app(&self, guid: &str) -> Result<(), AppsError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(store_err)?;
        for sql in [
            "DELETE FROM routes WHERE app_guid = ?1",
            "DELETE FROM bindings WHERE app_guid = ?1",
            "DELETE FROM tasks WHERE app_guid = ?1",
            "DELETE FROM apps WHERE guid = ?1",
        ] {
            tx.execute(sql, [guid]).map_err(store_err)?;
        }
        tx.commit().map_err(store_err)
    }

    /// Maps more hosts to an app in one transaction: a host another app holds
    /// refuses them all; one the app already has is skipped.
    pub fn add_routes(&self, app_guid: &str, hosts: &[String]) -> Result<(), AppsError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(store_err)?;
        for host in hosts {
            let owner: Option<String> = tx
                .query_row("SELECT app_guid FROM routes WHERE host = ?1", [host], |r| r.get(0))
                .optional()
                .map_err(store_err)?;
            match owner {
                Some(o) if o == app_guid => continue,
                Some(_) => {
                    return Err(AppsError::AlreadyExists(format!(
                        "The route {host} is already in use by another app: choose another host"
                    )));
                }
                None => {}
            }
            tx.execute("INSERT INTO routes (host, app_guid) VALUES (?1, ?2)", params![host, app_guid])
                .map_err(store_err)?;
        }
        let text: Option<String> = tx
            .query_row("SELECT record FROM apps WHERE guid = ?1", [app_guid], |r| r.get(0))
            .optional()
            .map_err(store_err)?;
        let Some(text) = text else {
            return Err(AppsError::NotFound(format!("app {app_guid} no longer exists")));
        };
        let mut app: AppRecord = decode(&text)?;
        for host in hosts {
            if !app.routes.contains(host) {
                app.routes.push(host.clone());
            }
        }
        tx.execute("UPDATE apps SET record = ?2 WHERE guid = ?1", params![app_guid, encode(&app)?])
            .map_err(store_err)?;
        tx.commit().map_err(store_err)
    }

    /// Whether any app's current package is this blob (packages are shared
    /// by checksum, so another app may hold the one an app let go).
    pub fn package_in_use(&self, key: &str) -> Result<bool, AppsError> {
        Ok(self.apps(None)?.iter().any(|a| a.package_key == key))
    }

    /// Every route host with its app's guid.
    pub fn routes(&self) -> Result<Vec<(String, String)>, AppsError> {
        let db = self.db();
        let mut st = db.prepare("SELECT host, app_guid FROM routes").map_err(store_err)?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(store_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(store_err)
    }

    /// Maps `host` to the app, or (`map` false) takes it from the app: the
    /// routes table and the app's record change in one transaction.
    pub fn set_route(&self, app: &AppRecord, host: &str, map: bool) -> Result<AppRecord, AppsError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(store_err)?;
        let mut app = app.clone();
        if map {
            match tx.execute("INSERT INTO routes (host, app_guid) VALUES (?1, ?2)", params![host, app.guid]) {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(AppsError::AlreadyExists(format!("the route {host} is already in use by another app")));
                }
                Err(e) => return Err(store_err(e)),
            }
            app.routes.push(host.to_string());
        } else {
            tx.execute("DELETE FROM routes WHERE host = ?1 AND app_guid = ?2", params![host, app.guid])
                .map_err(store_err)?;
            app.routes.retain(|h| h != host);
        }
        tx.execute("UPDATE apps SET record = ?2 WHERE guid = ?1", params![app.guid, encode(&app)?])
            .map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        Ok(app)
    }

    pub fn create_service(&self, s: &ServiceRecord) -> Result<(), AppsError> {
        match self.db().execute(
            "INSERT INTO services (guid, space, name, record) VALUES (?1, ?2, ?3, ?4)",
            params![s.guid, s.space, s.name, encode(s)?],
        ) {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(AppsError::AlreadyExists(format!(
                "a service instance named '{}' already exists in space '{}'",
                s.name, s.space
            ))),
            Err(e) => Err(store_err(e)),
        }
    }

    pub fn service_by_name(&self, space: &str, name: &str) -> Result<Option<ServiceRecord>, AppsError> {
        let text: Option<String> = self
            .db()
            .query_row("SELECT record FROM services WHERE space = ?1 AND name = ?2", [space, name], |r| r.get(0))
            .optional()
            .map_err(store_err)?;
        text.map(|t| decode(&t)).transpose()
    }

    pub fn services(&self, space: &str) -> Result<Vec<ServiceRecord>, AppsError> {
        let rows = collect(self.db().prepare("SELECT record FROM services WHERE space = ?1 ORDER BY name"), [space])?;
        rows.iter().map(|t| decode(t)).collect()
    }

    /// Refuses while apps are bound, as CF does.
    pub fn delete_service(&self, guid: &str) -> Result<(), AppsError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(store_err)?;
        let bound: i64 = tx
            .query_row("SELECT COUNT(*) FROM bindings WHERE service_guid = ?1", [guid], |r| r.get(0))
            .map_err(store_err)?;
        if bound > 0 {
            return Err(AppsError::FailedPrecondition(
                "the service instance is bound to apps: unbind it first (cellctl unbind-service APP SERVICE)".into(),
            ));
        }
        tx.execute("DELETE FROM services WHERE guid = ?1", [guid]).map_err(store_err)?;
        tx.commit().map_err(store_err)
    }

    pub fn bind(&self, b: &BindingRecord) -> Result<(), AppsError> {
        match self.db().execute(
            "INSERT INTO bindings (guid, app_guid, service_guid) VALUES (?1, ?2, ?3)",
            params![b.guid, b.app_guid, b.service_guid],
        ) {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(AppsError::AlreadyExists("the app is already bound to that service instance".into()))
            }
            Err(e) => Err(store_err(e)),
        }
    }

    /// Whether a binding was removed.
    pub fn unbind(&self, app_guid: &str, service_guid: &str) -> Result<bool, AppsError> {
        let n = self
            .db()
            .execute("DELETE FROM bindings WHERE app_guid = ?1 AND service_guid = ?2", [app_guid, service_guid])
            .map_err(store_err)?;
        Ok(n > 0)
    }

    /// An app's bindings with their service instances, in binding order.
    pub fn bindings_of_app(&self, app_guid: &str) -> Result<Vec<(BindingRecord, ServiceRecord)>, AppsError> {
        let db = self.db();
        let mut st = db
            .prepare(
                "SELECT b.guid, b.service_guid, s.record FROM bindings b JOIN services s ON s.guid = b.service_guid
                 WHERE b.app_guid = ?1 ORDER BY b.rowid",
            )
            .map_err(store_err)?;
        let rows = st
            .query_map([app_guid], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(store_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (guid, service_guid, record) = row.map_err(store_err)?;
            out.push((BindingRecord { guid, app_guid: app_guid.to_string(), service_guid }, decode(&record)?));
        }
        Ok(out)
    }

    /// Names of the apps bound to a service instance.
    pub fn bound_apps(&self, service_guid: &str) -> Result<Vec<String>, AppsError> {
        let db = self.db();
        let mut st = db
            .prepare("SELECT a.name FROM bindings b JOIN apps a ON a.guid = b.app_guid WHERE b.service_guid = ?1 ORDER BY a.name")
            .map_err(store_err)?;
        let rows = st.query_map([service_guid], |r| r.get(0)).map_err(store_err)?;
        rows.collect::<Result<Vec<String>, _>>().map_err(store_err)
    }

    pub fn add_event(&self, e: &EventRecord) -> Result<(), AppsError> {
        self.db()
            .execute("INSERT INTO events (app_guid, record) VALUES (?1, ?2)", params![e.app_guid, encode(e)?])
            .map_err(store_err)?;
        Ok(())
    }

    /// Newest first, at most `limit`.
    pub fn events(&self, app_guid: &str, limit: u32) -> Result<Vec<EventRecord>, AppsError> {
        let rows = collect(
            self.db().prepare("SELECT record FROM events WHERE app_guid = ?1 ORDER BY seq DESC LIMIT ?2"),
            params![app_guid, limit],
        )?;
        rows.iter().map(|t| decode(t)).collect()
    }

    /// Records a task with the app's next sequence id (CF numbers an app's tasks 1, 2, …).
    pub fn add_task(&self, mut t: TaskRecord) -> Result<TaskRecord, AppsError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(store_err)?;
        let seq: i64 = tx
            .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks WHERE app_guid = ?1", [&t.app_guid], |r| r.get(0))
            .map_err(store_err)?;
        t.sequence_id = u32::try_from(seq).unwrap_or(u32::MAX);
        if t.name.is_empty() {
            // CF's default task name is derived from the guid.
            t.name = t.guid.chars().take(8).collect();
        }
        tx.execute(
            "INSERT INTO tasks (guid, app_guid, seq, record) VALUES (?1, ?2, ?3, ?4)",
            params![t.guid, t.app_guid, seq, encode(&t)?],
        )
        .map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        Ok(t)
    }

    pub fn finish_task(&self, guid: &str, state: &str, reason: &str) -> Result<(), AppsError> {
        let text: Option<String> = self
            .db()
            .query_row("SELECT record FROM tasks WHERE guid = ?1", [guid], |r| r.get(0))
            .optional()
            .map_err(store_err)?;
        let Some(text) = text else { return Ok(()) };
        let mut t: TaskRecord = decode(&text)?;
        t.state = state.to_string();
        t.failure_reason = reason.to_string();
        self.db()
            .execute("UPDATE tasks SET record = ?2 WHERE guid = ?1", params![guid, encode(&t)?])
            .map_err(store_err)?;
        Ok(())
    }

    pub fn tasks(&self, app_guid: &str) -> Result<Vec<TaskRecord>, AppsError> {
        let rows =
            collect(self.db().prepare("SELECT record FROM tasks WHERE app_guid = ?1 ORDER BY seq DESC"), [app_guid])?;
        rows.iter().map(|t| decode(t)).collect()
    }
}

fn collect<P: rusqlite::Params>(
    st: rusqlite::Result<rusqlite::Statement<'_>>,
    params: P,
) -> Result<Vec<String>, AppsError> {
    let mut st = st.map_err(store_err)?;
    let rows = st.query_map(params, |r| r.get(0)).map_err(store_err)?;
    rows.collect::<Result<Vec<String>, _>>().map_err(store_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("celld-apps-store-{}", celld_base::guid::new_guid()));
        (Store::open(&dir.join("apps.db")).unwrap(), dir)
    }

    fn app(guid: &str, space: &str, name: &str, route: &str) -> AppRecord {
        AppRecord {
            guid: guid.into(),
            name: name.into(),
            space: space.into(),
            routes: vec![route.into()],
            ..Default::default()
        }
    }

    #[test]
    fn names_unique_per_space_hosts_unique_per_cell() {
        let (s, dir) = store();
        s.create_app(&app("a1", "dev", "hello", "hello.apps.localhost")).unwrap();
        let e = s.create_app(&app("a2", "dev", "hello", "other.apps.localhost")).unwrap_err();
        assert!(matches!(e, AppsError::AlreadyExists(ref m) if m.contains("already exists in space 'dev'")), "{e}");
        // The refused app left no route behind.
        assert_eq!(s.routes().unwrap().len(), 1);
        let e = s.create_app(&app("a3", "prod", "hello", "hello.apps.localhost")).unwrap_err();
        assert!(matches!(e, AppsError::AlreadyExists(ref m) if m.contains("route hello.apps.localhost")), "{e}");
        s.create_app(&app("a4", "prod", "hello", "hello-prod.apps.localhost")).unwrap();
        assert_eq!(s.apps(None).unwrap().len(), 2);
        assert_eq!(s.apps(Some("prod")).unwrap()[0].guid, "a4");
        s.delete_app("a1").unwrap();
        assert_eq!(s.routes().unwrap(), vec![("hello-prod.apps.localhost".to_string(), "a4".to_string())]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bindings_services_tasks_events() {
        let (s, dir) = store();
        s.create_app(&app("a1", "dev", "hello", "hello.apps.localhost")).unwrap();
        let svc = ServiceRecord { guid: "s1".into(), name: "db".into(), space: "dev".into(), ..Default::default() };
        s.create_service(&svc).unwrap();
        assert!(matches!(s.create_service(&svc), Err(AppsError::AlreadyExists(_))));
        s.bind(&BindingRecord { guid: "b1".into(), app_guid: "a1".into(), service_guid: "s1".into() }).unwrap();
        assert!(
            s.bind(&BindingRecord { guid: "b2".into(), app_guid: "a1".into(), service_guid: "s1".into() }).is_err()
        );
        assert_eq!(s.bindings_of_app("a1").unwrap()[0].1.name, "db");
        assert_eq!(s.bound_apps("s1").unwrap(), vec!["hello".to_string()]);
        assert!(matches!(s.delete_service("s1"), Err(AppsError::FailedPrecondition(_))));
        assert!(s.unbind("a1", "s1").unwrap());
        s.delete_service("s1").unwrap();
        let t1 = s.add_task(TaskRecord { guid: "t1".into(), app_guid: "a1".into(), ..Default::default() }).unwrap();
        let t2 = s.add_task(TaskRecord { guid: "t2".into(), app_guid: "a1".into(), ..Default::default() }).unwrap();
        assert_eq!((t1.sequence_id, t2.sequence_id), (1, 2));
        for kind in ["audit.app.create", "app.crash"] {
            s.add_event(&EventRecord { app_guid: "a1".into(), kind: kind.into(), ..Default::default() }).unwrap();
        }
        assert_eq!(s.events("a1", 10).unwrap()[0].kind, "app.crash");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_old_record_loads_with_its_web_process() {
        // A record written before process types: its fields are web's.
        let old = r#"{"guid":"a1","name":"n","space":"dev","state":"STARTED","instances":2,"memory_mb":64,
            "disk_mb":128,"health_check_type":"port","health_check_endpoint":"","health_check_timeout":0,
            "command":"","buildpacks":[],"stack":"","env":{},"routes":[],"package_state":"STAGED",
            "staging_failed_reason":"","package_key":"packages/x","package_uploaded_at":5,"droplet":null,
            "process_guid":"a1-p","enable_ssh":true,"created_at":1,"updated_at":2}"#;
        let mut app: AppRecord = decode(old).unwrap();
        assert!(app.processes.is_empty());
        let all = app.all_processes();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].0.as_str(), all[0].1.guid.as_str(), all[0].1.instances), ("web", "a1", 2));
        assert_eq!(app.type_of_diego_process("a1-p").as_deref(), Some("web"));
        app.set_process(
            "worker",
            ProcessRecord { guid: "w".into(), process_guid: "a1-w".into(), ..Default::default() },
        );
        app.set_process("web", ProcessRecord { instances: 3, ..app.web() });
        assert_eq!(app.instances, 3);
        assert_eq!(app.type_of_diego_process("a1-w").as_deref(), Some("worker"));
        assert_eq!(app.type_of_diego_process(""), None);
        let types: Vec<String> = app.all_processes().into_iter().map(|(t, _)| t).collect();
        assert_eq!(types, ["web", "worker"]);
    }

    #[test]
    fn routes_added_in_one_transaction_and_packages_in_use() {
        let (s, dir) = store();
        s.create_app(&AppRecord { package_key: "packages/p".into(), ..app("a1", "dev", "one", "one.apps.localhost") })
            .unwrap();
        s.create_app(&app("a2", "dev", "two", "two.apps.localhost")).unwrap();
        let e = s.add_routes("a2", &["new.apps.localhost".into(), "one.apps.localhost".into()]).unwrap_err();
        assert!(matches!(e, AppsError::AlreadyExists(ref m) if m.contains("one.apps.localhost")), "{e}");
        // The refused call mapped nothing.
        assert_eq!(s.routes().unwrap().len(), 2);
        s.add_routes("a2", &["new.apps.localhost".into(), "two.apps.localhost".into()]).unwrap();
        assert_eq!(s.app("a2").unwrap().unwrap().routes, ["two.apps.localhost", "new.apps.localhost"]);
        assert!(s.package_in_use("packages/p").unwrap());
        assert!(!s.package_in_use("packages/q").unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }
}
