//! What the gardener reports about a container beyond its record: Garden's
//! network properties.

use celld_network::NetState;
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

#[cfg(test)]
mod tests {
    use super::*;

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
