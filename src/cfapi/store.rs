//! What the CF API keeps beyond the app layer, in its own SQLite: the
//! organizations and spaces with their guids (the app layer knows a space by
//! name), and the packages, builds and droplets with the guids the cf CLI
//! polls. Each record is one JSON row keyed by guid, as in the app layer's
//! store.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::error::CfError;

/// The one organization a local cell starts with, and its first space.
pub const LOCAL_ORG: &str = "local";
pub const DEFAULT_SPACE: &str = "dev";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OrgRecord {
    pub guid: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpaceRecord {
    pub guid: String,
    pub name: String,
    pub org_guid: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PackageRecord {
    pub guid: String,
    pub app_guid: String,
    /// bits or docker.
    pub kind: String,
    /// AWAITING_UPLOAD, PROCESSING_UPLOAD, READY, FAILED.
    pub state: String,
    pub error: String,
    pub key: String,
    pub sha256: String,
    pub image: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BuildRecord {
    pub guid: String,
    pub app_guid: String,
    pub package_guid: String,
    /// STAGING, STAGED, FAILED.
    pub state: String,
    pub error: String,
    pub droplet_guid: String,
    pub staging_memory_mb: u32,
    pub staging_disk_mb: u32,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DropletRecord {
    pub guid: String,
    pub app_guid: String,
    pub package_guid: String,
    /// The app layer's droplet, as it was staged.
    pub droplet: crate::apps::store::Droplet,
    pub created_at: i64,
}

/// A buildpack as CC knows it: its guid and, until its bits arrive, the
/// settings it was created with (the staging registry has it from then on).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BuildpackRecord {
    pub guid: String,
    pub name: String,
    pub stack: String,
    pub position: u32,
    pub enabled: bool,
    pub locked: bool,
    pub created_at: i64,
}

pub struct CfStore {
    db: Mutex<Connection>,
}

const TABLES: &[&str] = &["orgs", "spaces", "packages", "builds", "droplets", "buildpacks", "routes"];

fn db_err(e: rusqlite::Error) -> CfError {
    CfError::Server(format!("CF API store: {e}"))
}

impl CfStore {
    pub fn open(path: &Path) -> Result<Self, CfError> {
        let db = Connection::open(path).map_err(db_err)?;
        db.pragma_update(None, "journal_mode", "WAL").map_err(db_err)?;
        db.pragma_update(None, "synchronous", "NORMAL").map_err(db_err)?;
        for t in TABLES {
            // `name` and `owner` carry the uniqueness rules and the lookups:
            // org names, space names (cell-wide: the app layer keys spaces by
            // name), and the app a package, build or droplet belongs to.
            db.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {t} (guid TEXT PRIMARY KEY, name TEXT, owner TEXT, body TEXT NOT NULL);
                 CREATE INDEX IF NOT EXISTS {t}_owner ON {t}(owner);"
            ))
            .map_err(db_err)?;
        }
        db.execute_batch(
            "CREATE UNIQUE INDEX IF NOT EXISTS orgs_name ON orgs(name);
             CREATE UNIQUE INDEX IF NOT EXISTS spaces_name ON spaces(name);",
        )
        .map_err(db_err)?;
        Ok(Self { db: Mutex::new(db) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts or replaces; a clash on a unique name is `Uniqueness`.
    pub fn put<T: Serialize>(
        &self,
        table: &str,
        guid: &str,
        name: Option<&str>,
        owner: &str,
        v: &T,
    ) -> Result<(), CfError> {
        let body = serde_json::to_string(v).map_err(|e| CfError::Server(e.to_string()))?;
        let r = self.conn().execute(
            &format!("INSERT OR REPLACE INTO {table} (guid, name, owner, body) VALUES (?1, ?2, ?3, ?4)"),
            params![guid, name, owner, body],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(CfError::Uniqueness(format!("Name must be unique: {}", name.unwrap_or(guid))))
            }
            Err(e) => Err(db_err(e)),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, table: &str, guid: &str) -> Result<Option<T>, CfError> {
        let body: Option<String> = self
            .conn()
            .query_row(&format!("SELECT body FROM {table} WHERE guid = ?1"), params![guid], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| CfError::Server(e.to_string()))).transpose()
    }

    pub fn by_name<T: DeserializeOwned>(&self, table: &str, name: &str) -> Result<Option<T>, CfError> {
        let body: Option<String> = self
            .conn()
            .query_row(&format!("SELECT body FROM {table} WHERE name = ?1"), params![name], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| CfError::Server(e.to_string()))).transpose()
    }

    /// Every row of `table`, or those of one owner, oldest first.
    pub fn list<T: DeserializeOwned>(&self, table: &str, owner: Option<&str>) -> Result<Vec<T>, CfError> {
        let conn = self.conn();
        let sql = match owner {
            Some(_) => format!("SELECT body FROM {table} WHERE owner = ?1 ORDER BY rowid"),
            None => format!("SELECT body FROM {table} ORDER BY rowid"),
        };
        let mut stmt = conn.prepare(&sql).map_err(db_err)?;
        let rows: Vec<String> = match owner {
            Some(o) => stmt.query_map(params![o], |r| r.get(0)).map_err(db_err)?.collect::<Result<_, _>>(),
            None => stmt.query_map([], |r| r.get(0)).map_err(db_err)?.collect::<Result<_, _>>(),
        }
        .map_err(db_err)?;
        rows.iter().map(|b| serde_json::from_str(b).map_err(|e| CfError::Server(e.to_string()))).collect()
    }

    pub fn delete(&self, table: &str, guid: &str) -> Result<(), CfError> {
        self.conn().execute(&format!("DELETE FROM {table} WHERE guid = ?1"), params![guid]).map_err(db_err)?;
        Ok(())
    }

    pub fn delete_owned(&self, table: &str, owner: &str) -> Result<(), CfError> {
        self.conn().execute(&format!("DELETE FROM {table} WHERE owner = ?1"), params![owner]).map_err(db_err)?;
        Ok(())
    }
}
