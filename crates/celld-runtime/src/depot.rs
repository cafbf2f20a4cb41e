//! The depot: one directory per container under `--depot`, holding its record
//! (written atomically), its bundle `config.json` and its overlay layers. It is
//! what lets a restarted daemon find and manage containers it did not create.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RuntimeError;
use garden_api::types::{ContainerSpec, Properties};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    pub handle: String,
    pub spec: ContainerSpec,
    pub properties: Properties,
    /// Nanoseconds; 0 = never reaped.
    pub grace_time: u64,
    /// Unix time in nanoseconds.
    pub created_at: u64,
    pub init_pid: i32,
    /// Field 22 of /proc/PID/stat, to tell our init from a reused pid.
    pub init_start_time: u64,
    pub cgroup_path: String,
    pub socket: PathBuf,
    pub rootfs: PathBuf,
    pub privileged: bool,
    /// Garden's `active` or `stopped`.
    pub state: String,
    /// Address, interfaces, port mappings and net-out rules.
    #[serde(default)]
    pub network: Option<celld_network::NetState>,
    /// A container made from an image: the image's `User` and `WorkingDir`,
    /// its processes' defaults when they name none (its `Env` is in the
    /// spec's env already).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_working_dir: String,
}

const RECORD: &str = "record.json";

#[derive(Debug, Clone)]
pub struct Depot {
    root: PathBuf,
}

/// Writes a bundle's `config.json` into `dir` (a container's or a pea's).
/// Not oci-spec's `save`, whose error drops the cause (ENOSPC).
pub fn write_bundle_config(dir: &Path, spec: &oci_spec::runtime::Spec) -> Result<(), RuntimeError> {
    let config = dir.join("config.json");
    let json = serde_json::to_vec(spec).map_err(|e| RuntimeError::Spec(e.to_string()))?;
    std::fs::write(&config, json).map_err(|e| RuntimeError::io(&config, e))
}

impl Depot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn container_dir(&self, handle: &str) -> PathBuf {
        self.containers_dir().join(handle)
    }

    /// Directories of destroyed containers, waiting to be deleted.
    pub fn trash_dir(&self) -> PathBuf {
        self.root.join("trash")
    }

    pub fn rootfs_cache(&self) -> PathBuf {
        self.root.join("rootfs-cache")
    }

    /// Writes the record with write-then-rename, so a crash leaves the old or the
    /// new record, never half of one.
    pub fn save(&self, rec: &ContainerRecord) -> Result<(), RuntimeError> {
        let dir = self.container_dir(&rec.handle);
        let tmp = dir.join(format!("{RECORD}.tmp"));
        let data = serde_json::to_vec_pretty(rec).map_err(|e| RuntimeError::Depot(e.to_string()))?;
        std::fs::write(&tmp, data).map_err(|e| RuntimeError::io(&tmp, e))?;
        std::fs::rename(&tmp, dir.join(RECORD)).map_err(|e| RuntimeError::io(&dir, e))
    }

    pub fn load(&self, handle: &str) -> Result<ContainerRecord, RuntimeError> {
        let p = self.container_dir(handle).join(RECORD);
        let data = std::fs::read(&p).map_err(|e| RuntimeError::io(&p, e))?;
        serde_json::from_slice(&data).map_err(|e| RuntimeError::Depot(format!("{}: {e}", p.display())))
    }

    /// Every container directory: its handle and its record, or why it has none
    /// (a create that died half-way leaves a directory without a record).
    pub fn list(&self) -> Vec<(String, Result<ContainerRecord, RuntimeError>)> {
        let Ok(rd) = std::fs::read_dir(self.containers_dir()) else { return Vec::new() };
        let mut out: Vec<_> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|h| {
                let r = self.load(&h);
                (h, r)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_list() {
        let root = std::env::temp_dir().join(format!("celld-depot-test-{}", std::process::id()));
        let depot = Depot::new(&root);
        let rec = ContainerRecord {
            handle: "h1".into(),
            spec: ContainerSpec::default(),
            properties: [("a".to_string(), "b".to_string())].into(),
            grace_time: 5,
            created_at: 1,
            init_pid: 42,
            init_start_time: 7,
            cgroup_path: "/celld/h1".into(),
            socket: "/run/x.sock".into(),
            rootfs: "/r".into(),
            privileged: false,
            state: "active".into(),
            network: Some(celld_network::NetState {
                subnet: "10.254.0.4/30".parse().unwrap(),
                address: None,
                mapped_ports: vec![garden_api::types::PortMapping { host_port: 61001, container_port: 8080 }],
                rules: vec![celld_network::rules::Allow {
                    daddr: Some(("10.0.0.0".parse().unwrap(), "10.0.0.255".parse().unwrap())),
                    proto: Some(6),
                    dport: Some((80, 80)),
                    icmp: None,
                    log_prefix: Some("h1 ".into()),
                }],
            }),
            image_user: "vcap".into(),
            image_working_dir: "/app".into(),
        };
        std::fs::create_dir_all(depot.container_dir("h1")).unwrap();
        std::fs::create_dir_all(depot.container_dir("broken")).unwrap();
        depot.save(&rec).unwrap();
        assert_eq!(depot.load("h1").unwrap(), rec);
        let all = depot.list();
        assert_eq!(all.len(), 2);
        assert!(all[0].1.is_err()); // "broken" sorts first and has no record
        assert_eq!(all[1].1.as_ref().unwrap(), &rec);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
