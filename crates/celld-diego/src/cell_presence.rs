//! The CellPresence JSON a cell holds in Locket as its presence's value:
//! what the auctioneer and BBS learn of the cell (its rep's address, zone,
//! capacity, the rootfses it serves, its placement tags). Field names and
//! omissions are those of BBS's JSON encoding, which reads it back.

use serde::{Deserialize, Serialize};

/// The scheme of preloaded stacks (`preloaded:cflinuxfs4`).
pub const PRELOADED: &str = "preloaded";
/// Preloaded stacks with image layers on top (`preloaded+layer:cflinuxfs4?…`).
pub const PRELOADED_LAYER: &str = "preloaded+layer";
/// Docker images (`docker://…`).
pub const DOCKER: &str = "docker";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellCapacity {
    pub memory_mb: i32,
    pub disk_mb: i32,
    pub containers: i32,
}

/// A rootfs scheme and, for the preloaded ones, the stack names the cell has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsProvider {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellPresence {
    pub cell_id: String,
    /// The rep's URL as BBS's older clients reach it (`https://host:1801`).
    pub rep_address: String,
    pub zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CellCapacity>,
    #[serde(rename = "rootfs_provider_list", default, skip_serializing_if = "Vec::is_empty")]
    pub rootfs_providers: Vec<RootfsProvider>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optional_placement_tags: Vec<String>,
    pub rep_url: String,
}

/// Why BBS would skip this presence (it drops invalid ones silently, so the
/// cell checks before it publishes one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cell presence: {}", problems.join("; "))]
pub struct InvalidPresence {
    pub problems: Vec<String>,
}

impl CellPresence {
    /// A presence as the rep builds it: `preloaded` and `preloaded+layer`
    /// with the cell's stack names (e.g. `cflinuxfs4`), then each of
    /// `other_providers` (e.g. `docker`) without properties.
    pub fn new(
        cell_id: &str,
        rep_address: &str,
        rep_url: &str,
        zone: &str,
        capacity: CellCapacity,
        stacks: &[String],
        other_providers: &[String],
    ) -> Self {
        let mut rootfs_providers = vec![
            RootfsProvider { name: PRELOADED.into(), properties: stacks.to_vec() },
            RootfsProvider { name: PRELOADED_LAYER.into(), properties: stacks.to_vec() },
        ];
        rootfs_providers
            .extend(other_providers.iter().map(|p| RootfsProvider { name: p.clone(), properties: Vec::new() }));
        Self {
            cell_id: cell_id.into(),
            rep_address: rep_address.into(),
            zone: zone.into(),
            capacity: Some(capacity),
            rootfs_providers,
            placement_tags: Vec::new(),
            optional_placement_tags: Vec::new(),
            rep_url: rep_url.into(),
        }
    }

    /// BBS's rules: a cell id and rep address, an http(s) rep URL if any,
    /// memory and containers above zero, disk not negative.
    pub fn validate(&self) -> Result<(), InvalidPresence> {
        let mut problems = Vec::new();
        if self.cell_id.is_empty() {
            problems.push("cell_id is empty".to_string());
        }
        if self.rep_address.is_empty() {
            problems.push("rep_address is empty".to_string());
        }
        if !self.rep_url.is_empty() && !self.rep_url.starts_with("http://") && !self.rep_url.starts_with("https://") {
            problems.push(format!("rep_url {:?} is not an http(s) URL", self.rep_url));
        }
        match &self.capacity {
            None => problems.push("capacity is missing".to_string()),
            Some(c) => {
                if c.memory_mb <= 0 {
                    problems.push(format!("capacity.memory_mb must be > 0, is {}", c.memory_mb));
                }
                if c.disk_mb < 0 {
                    problems.push(format!("capacity.disk_mb must be >= 0, is {}", c.disk_mb));
                }
                if c.containers <= 0 {
                    problems.push(format!("capacity.containers must be > 0, is {}", c.containers));
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(InvalidPresence { problems }) }
    }

    pub fn to_json(&self) -> String {
        // Only strings, numbers and lists: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence() -> CellPresence {
        let mut p = CellPresence::new(
            "cell-z1-0",
            "https://cell-z1-0.cell.service.cf.internal:1801",
            "https://cell-z1-0.cell.service.cf.internal:1801",
            "z1",
            CellCapacity { memory_mb: 4096, disk_mb: 20000, containers: 250 },
            &["cflinuxfs4".to_string()],
            &["docker".to_string()],
        );
        p.placement_tags = vec!["isolated".into()];
        p
    }

    #[test]
    fn json_has_bbs_field_names_and_omissions() {
        let v: serde_json::Value = serde_json::from_str(&presence().to_json()).unwrap();
        assert_eq!(v["cell_id"], "cell-z1-0");
        assert_eq!(v["capacity"]["memory_mb"], 4096);
        assert_eq!(v["capacity"]["containers"], 250);
        assert_eq!(v["rootfs_provider_list"][0]["name"], "preloaded");
        assert_eq!(v["rootfs_provider_list"][0]["properties"][0], "cflinuxfs4");
        assert_eq!(v["rootfs_provider_list"][1]["name"], "preloaded+layer");
        assert_eq!(v["rootfs_provider_list"][2]["name"], "docker");
        assert!(v["rootfs_provider_list"][2].get("properties").is_none());
        assert_eq!(v["placement_tags"][0], "isolated");
        assert!(v.get("optional_placement_tags").is_none());
        assert_eq!(v["rep_url"], "https://cell-z1-0.cell.service.cf.internal:1801");
    }

    #[test]
    fn reads_back_what_bbs_writes() {
        let bbs = r#"{"cell_id":"c","rep_address":"http://10.0.0.1:1800","zone":"z","capacity":{"memory_mb":1,"disk_mb":0,"containers":1},"rootfs_provider_list":[{"name":"docker"}],"rep_url":"https://c:1801"}"#;
        let p: CellPresence = serde_json::from_str(bbs).unwrap();
        assert_eq!(p.rootfs_providers[0].name, "docker");
        assert!(p.placement_tags.is_empty());
        p.validate().unwrap();
    }

    #[test]
    fn validation_follows_bbs() {
        presence().validate().unwrap();
        let mut p = presence();
        p.capacity = Some(CellCapacity { memory_mb: 0, disk_mb: -1, containers: 0 });
        p.rep_url = "cell:1801".into();
        let err = p.validate().unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
        assert!(err.to_string().contains("rep_url"), "{err}");
    }
}
