//! The rep's JSON, as the auctioneer and cfdot read and write it (rep's
//! `resources.go`): field names are Go's, several without JSON tags.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Memory, disk and container slots, of the cell as a whole or left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(rename = "MemoryMB")]
    pub memory_mb: i32,
    #[serde(rename = "DiskMB")]
    pub disk_mb: i32,
    #[serde(rename = "Containers")]
    pub containers: i64,
}

/// What one instance or task takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    #[serde(rename = "MemoryMB", default)]
    pub memory_mb: i32,
    #[serde(rename = "DiskMB", default)]
    pub disk_mb: i32,
    #[serde(rename = "MaxPids", default)]
    pub max_pids: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementConstraint {
    #[serde(rename = "PlacementTags", default, deserialize_with = "null_as_empty")]
    pub placement_tags: Vec<String>,
    #[serde(rename = "VolumeDrivers", default, deserialize_with = "null_as_empty")]
    pub volume_drivers: Vec<String>,
    #[serde(rename = "RootFs", default)]
    pub rootfs: String,
}

/// One instance of a `/work` batch or of `/state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lrp {
    #[serde(default)]
    pub instance_guid: String,
    #[serde(default)]
    pub process_guid: String,
    #[serde(default)]
    pub index: i32,
    #[serde(default)]
    pub domain: String,
    #[serde(flatten)]
    pub placement: PlacementConstraint,
    #[serde(flatten)]
    pub resource: Resource,
    /// In `/state`: RUNNING, CLAIMED, CRASHED or SHUTDOWN.
    #[serde(default)]
    pub state: String,
}

/// One task of a `/work` batch or of `/state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    #[serde(rename = "TaskGuid", default)]
    pub task_guid: String,
    #[serde(rename = "Domain", default)]
    pub domain: String,
    #[serde(flatten)]
    pub placement: PlacementConstraint,
    #[serde(flatten)]
    pub resource: Resource,
    /// BBS's task state by name ("Invalid", "Running", "Completed"…).
    #[serde(default = "invalid_state")]
    pub state: String,
    #[serde(default)]
    pub failed: bool,
}

fn invalid_state() -> String {
    "Invalid".into()
}

/// `POST /work`'s body, and its answer: the work the cell could not take.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Work {
    #[serde(rename = "LRPs", default, deserialize_with = "null_as_empty")]
    pub lrps: Vec<Lrp>,
    #[serde(rename = "Tasks", default, deserialize_with = "null_as_empty")]
    pub tasks: Vec<Task>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cell_id: String,
}

/// A rootfs scheme the cell takes: any URL of it, or only a fixed set of names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RootFsProvider {
    Arbitrary,
    FixedSet { set: BTreeMap<String, Empty> },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Empty {}

/// `GET /state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CellState {
    pub rep_url: String,
    pub cell_id: String,
    pub cell_index: i32,
    #[serde(rename = "RootFSProviders")]
    pub rootfs_providers: BTreeMap<String, RootFsProvider>,
    #[serde(rename = "AvailableResources")]
    pub available: Resources,
    #[serde(rename = "TotalResources")]
    pub total: Resources,
    #[serde(rename = "LRPs")]
    pub lrps: Vec<Lrp>,
    #[serde(rename = "Tasks")]
    pub tasks: Vec<Task>,
    #[serde(rename = "StartingContainerCount")]
    pub starting_container_count: i64,
    #[serde(rename = "Zone")]
    pub zone: String,
    #[serde(rename = "Evacuating")]
    pub evacuating: bool,
    #[serde(rename = "VolumeDrivers")]
    pub volume_drivers: Vec<String>,
    #[serde(rename = "PlacementTags")]
    pub placement_tags: Vec<String>,
    #[serde(rename = "OptionalPlacementTags")]
    pub optional_placement_tags: Vec<String>,
    #[serde(rename = "ProxyMemoryAllocationMB")]
    pub proxy_memory_allocation_mb: i32,
}

/// `PUT /v2/lrps/:process_guid/instances/:instance_guid`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LrpUpdate {
    #[serde(default)]
    pub instance_guid: String,
    #[serde(default)]
    pub process_guid: String,
    #[serde(default)]
    pub index: i32,
    #[serde(default)]
    pub domain: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub internal_routes: Vec<InternalRoute>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub metric_tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InternalRoute {
    #[serde(default)]
    pub hostname: String,
}

/// Go writes a nil slice or map as `null`.
fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_reads_what_the_auctioneer_sends() {
        let body = r#"{"LRPs":[{"instance_guid":"ig","process_guid":"pg","index":2,"domain":"cf-apps",
            "PlacementTags":null,"VolumeDrivers":null,"RootFs":"preloaded:cflinuxfs4",
            "MemoryMB":256,"DiskMB":1024,"MaxPids":0,"state":""}],
            "Tasks":[{"TaskGuid":"tg","Domain":"cf-tasks","PlacementTags":[],"VolumeDrivers":[],
            "RootFs":"preloaded:cflinuxfs4","MemoryMB":128,"DiskMB":64,"MaxPids":10,"state":"Invalid","failed":false}],
            "cell_id":"cell-1"}"#;
        let w: Work = serde_json::from_str(body).unwrap();
        assert_eq!(w.cell_id, "cell-1");
        assert_eq!(w.lrps[0].process_guid, "pg");
        assert_eq!(w.lrps[0].index, 2);
        assert_eq!(w.lrps[0].resource.memory_mb, 256);
        assert_eq!(w.lrps[0].placement.rootfs, "preloaded:cflinuxfs4");
        assert_eq!(w.tasks[0].task_guid, "tg");
        assert_eq!(w.tasks[0].resource.max_pids, 10);
        // An empty answer is what Go's encoder writes for no failed work.
        let none = serde_json::to_string(&Work::default()).unwrap();
        assert_eq!(none, r#"{"LRPs":[],"Tasks":[]}"#);
        let again: Work = serde_json::from_str(r#"{"LRPs":null,"Tasks":null}"#).unwrap();
        assert!(again.lrps.is_empty());
    }

    #[test]
    fn state_has_the_reps_field_names() {
        let mut s = CellState { cell_id: "c".into(), ..Default::default() };
        s.rootfs_providers.insert("docker".into(), RootFsProvider::Arbitrary);
        s.rootfs_providers.insert(
            "preloaded".into(),
            RootFsProvider::FixedSet { set: BTreeMap::from([("cflinuxfs4".to_string(), Empty {})]) },
        );
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["RootFSProviders"]["docker"], serde_json::json!({"type": "arbitrary"}));
        assert_eq!(
            v["RootFSProviders"]["preloaded"],
            serde_json::json!({"type": "fixed_set", "set": {"cflinuxfs4": {}}})
        );
        for k in ["rep_url", "cell_id", "cell_index", "AvailableResources", "TotalResources", "LRPs", "Tasks"] {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
        assert_eq!(v["AvailableResources"], serde_json::json!({"MemoryMB": 0, "DiskMB": 0, "Containers": 0}));
    }
}
