//! What the gardener reports about a container beyond its record: Garden's
//! network properties, and the size of its rootfs for disk metrics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use celld_network::NetState;
use celld_runtime::containerizer::tree_usage;
use garden_api::types::Properties;

/// Every property Garden sets itself starts with this.
pub const GARDEN_PREFIX: &str = "garden.";
pub const CONTAINER_IP_KEY: &str = "garden.network.container-ip";
pub const HOST_IP_KEY: &str = "garden.network.host-ip";
pub const EXTERNAL_IP_KEY: &str = "garden.network.external-ip";
pub const MAPPED_PORTS_KEY: &str = "garden.network.mapped-ports";
/// Garden marks a container `created` once its create is done; List shows
/// only those unless asked for `garden.state=all`.
pub const STATE_KEY: &str = "garden.state";
pub const STATE_CREATED: &str = "created";
pub const STATE_ALL: &str = "all";
pub const GRACE_TIME_KEY: &str = "garden.grace-time";

/// The container's properties as Garden shows them: the record's, with
/// Garden's own (`garden.state`, `garden.grace-time`, `garden.network.*`)
/// over them. Made from the record and network state each time, so they
/// follow net-in and grace-time changes and survive restarts with the record.
pub(super) fn properties(
    own: &Properties,
    grace_time_ns: u64,
    net: Option<&NetState>,
    external_ip: Option<String>,
) -> Properties {
    let mut out = own.clone();
    // Only containers whose create finished are in the gardener's table.
    out.insert(STATE_KEY.into(), STATE_CREATED.into());
    if grace_time_ns > 0 {
        out.insert(GRACE_TIME_KEY.into(), grace_time_ns.to_string());
    }
    if let Some(n) = net {
        out.insert(CONTAINER_IP_KEY.into(), n.container_ip().to_string());
        out.insert(HOST_IP_KEY.into(), n.host_ip().to_string());
        // Garden's networker records the port list at the first net-in.
        if !n.mapped_ports.is_empty() {
            out.insert(MAPPED_PORTS_KEY.into(), serde_json::to_string(&n.mapped_ports).unwrap_or_default());
        }
    }
    if let (Some(_), Some(ip)) = (net, external_ip) {
        out.insert(EXTERNAL_IP_KEY.into(), ip);
    }
    out
}

/// Sizes of the read-only rootfs layers, measured once per layer: a layer
/// never changes under its path, and walking it on every metrics call would
/// cost a whole tree walk each time. A layer used in place (privileged
/// containers) is measured again if its top directory changes.
#[derive(Default)]
pub(super) struct RootfsSizes {
    known: Mutex<HashMap<PathBuf, Measured>>,
}

/// A layer's top directory's modification time, and its bytes and inodes then.
type Measured = (Option<SystemTime>, (u64, u64));

impl RootfsSizes {
    /// Bytes and inodes of `layer`.
    pub(super) fn usage(&self, layer: &PathBuf) -> (u64, u64) {
        let stamp = std::fs::metadata(layer).and_then(|m| m.modified()).ok();
        if let Some((s, usage)) = super::lock(&self.known).get(layer) {
            if *s == stamp {
                return *usage;
            }
        }
        // Measured without the lock: concurrent first callers may both walk.
        let usage = tree_usage(layer);
        let mut known = super::lock(&self.known);
        known.insert(layer.clone(), (stamp, usage));
        usage
    }

    /// Forgets layers no container uses any more.
    pub(super) fn retain(&self, in_use: &[PathBuf]) {
        super::lock(&self.known).retain(|p, _| in_use.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_sizes_are_measured_once_per_layer() {
        let dir = std::env::temp_dir().join(format!("celld-rootfs-sizes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), vec![1u8; 10_000]).unwrap();
        let sizes = RootfsSizes::default();
        let (bytes, inodes) = sizes.usage(&dir);
        assert!(bytes >= 10_000 && inodes == 3, "{bytes} {inodes}");
        // A change below the top directory is not seen: the layer is taken as read-only.
        std::fs::write(dir.join("sub/g"), vec![1u8; 10_000]).unwrap();
        assert_eq!(sizes.usage(&dir), (bytes, inodes));
        sizes.retain(&[]);
        let again = sizes.usage(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(again.0 > bytes && again.1 == 4, "{again:?}");
    }

    #[test]
    fn gardens_properties_over_the_records() {
        let own: Properties = [("app".to_string(), "web".to_string())].into_iter().collect();
        let mut want = own.clone();
        want.insert(STATE_KEY.into(), STATE_CREATED.into());
        let none = properties(&own, 0, None, Some("10.0.0.1".into()));
        assert_eq!(none, want, "no network, no network properties; no grace time, none shown");
        want.insert(GRACE_TIME_KEY.into(), "5000000000".into());
        assert_eq!(properties(&own, 5_000_000_000, None, None), want);
    }
}
