//! Garden wire types. Field names follow Garden's Go structs exactly: lower-case
//! json tags where Garden has them, Go field names (`Handle`, `State`, ...) where
//! it has none. Durations are integer nanoseconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Properties = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ContainerSpec {
    pub handle: String,
    /// Nanoseconds; 0 means the server's default.
    pub grace_time: u64,
    /// Deprecated in Garden in favour of `image.uri`, still honoured.
    pub rootfs: String,
    pub image: ImageRef,
    pub network: String,
    pub properties: Properties,
    pub env: Vec<String>,
    pub bind_mounts: Vec<BindMount>,
    pub limits: Limits,
    pub privileged: bool,
    pub netout_rules: Vec<NetOutRule>,
    pub netin: Vec<NetIn>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ImageRef {
    pub uri: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BindMount {
    pub src_path: String,
    pub dst_path: String,
    /// 0 = read-only, 1 = read-write.
    pub mode: u8,
    /// 0 = host, 1 = container.
    pub origin: u8,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NetIn {
    pub host_port: u32,
    pub container_port: u32,
}

/// An egress allowance (Garden's `NetOutRule`; an application security group
/// rule in Cloud Foundry). Protocol: 0 all, 1 tcp, 2 udp, 3 icmp.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NetOutRule {
    pub protocol: u8,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<IpRange>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmps: Option<IcmpControl>,
    pub log: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct IpRange {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct IcmpControl {
    #[serde(rename = "type")]
    pub icmp_type: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Limits {
    pub bandwidth_limits: BandwidthLimits,
    pub cpu_limits: CpuLimits,
    pub disk_limits: DiskLimits,
    pub memory_limits: MemoryLimits,
    pub pid_limits: PidLimits,
}

// Limits replies omit zero fields, as Go's `omitempty` does.
fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BandwidthLimits {
    #[serde(skip_serializing_if = "is_zero")]
    pub rate: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub burst: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CpuLimits {
    #[serde(skip_serializing_if = "is_zero")]
    pub weight: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub limit_in_shares: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiskLimits {
    #[serde(skip_serializing_if = "is_zero")]
    pub inode_soft: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub inode_hard: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub byte_soft: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub byte_hard: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub scope: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MemoryLimits {
    #[serde(skip_serializing_if = "is_zero")]
    pub limit_in_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PidLimits {
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProcessSpec {
    #[serde(rename = "id")]
    pub id: String,
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub dir: String,
    pub user: String,
    pub rlimits: ResourceLimits,
    pub limits: serde_json::Value,
    pub tty: Option<TtySpec>,
    pub image: ImageRef,
    pub bind_mounts: Vec<BindMount>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ResourceLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#as: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsize: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memlock: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgqueue: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nice: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nofile: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nproc: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtprio: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigpending: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TtySpec {
    pub window_size: Option<WindowSize>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WindowSize {
    pub columns: u16,
    pub rows: u16,
}

/// Client → server messages on a hijacked process connection, one per line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProcessPayload {
    pub process_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<u8>,
}

pub const SOURCE_STDIN: u8 = 0;
pub const SIGNAL_TERMINATE: u8 = 0;
pub const SIGNAL_KILL: u8 = 1;

/// The first line of a hijacked Run/Attach reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessStarted {
    pub process_id: String,
    pub stream_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Capacity {
    pub memory_in_bytes: u64,
    pub disk_in_bytes: u64,
    pub schedulable_disk_in_bytes: u64,
    pub max_containers: u64,
    /// celld's: what the image store holds (Garden's clients ignore it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub image_store_in_bytes: u64,
}

/// celld's `POST /images/gc`: what a collection of the image store removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageGcReply {
    pub images_removed: u64,
    pub layers_removed: u64,
    pub bytes_freed: u64,
    /// The store's size after it.
    pub store_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct PortMapping {
    pub host_port: u32,
    pub container_port: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerInfo {
    pub state: String,
    pub events: Vec<String>,
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    #[serde(rename = "ContainerIP")]
    pub container_ip: String,
    #[serde(rename = "ContainerIPv6")]
    pub container_ipv6: String,
    #[serde(rename = "ExternalIP")]
    pub external_ip: String,
    pub container_path: String,
    #[serde(rename = "ProcessIDs")]
    pub process_ids: Option<Vec<String>>,
    pub properties: Properties,
    pub mapped_ports: Vec<PortMapping>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Metrics {
    pub memory_stat: MemoryStat,
    #[serde(rename = "CPUStat")]
    pub cpu_stat: CpuStat,
    pub disk_stat: DiskStat,
    pub network_stat: Option<NetworkStat>,
    pub pid_stat: PidStat,
    /// Nanoseconds since the container was created.
    pub age: u64,
    #[serde(rename = "CPUEntitlement")]
    pub cpu_entitlement: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MemoryStat {
    pub active_anon: u64,
    pub active_file: u64,
    pub cache: u64,
    pub hierarchical_memory_limit: u64,
    pub inactive_anon: u64,
    pub inactive_file: u64,
    pub mapped_file: u64,
    pub pgfault: u64,
    pub pgmajfault: u64,
    pub pgpgin: u64,
    pub pgpgout: u64,
    pub rss: u64,
    pub rss_huge: u64,
    pub total_active_anon: u64,
    pub total_active_file: u64,
    pub total_cache: u64,
    pub total_inactive_anon: u64,
    pub total_inactive_file: u64,
    pub total_mapped_file: u64,
    pub total_pgfault: u64,
    pub total_pgmajfault: u64,
    pub total_pgpgin: u64,
    pub total_pgpgout: u64,
    pub total_rss: u64,
    pub total_rss_huge: u64,
    pub total_unevictable: u64,
    pub unevictable: u64,
    pub swap: u64,
    pub hierarchical_memsw_limit: u64,
    pub total_swap: u64,
    #[serde(rename = "TotalUsageTowardLimit")]
    pub total_usage_toward_limit: u64,
    pub anon: u64,
    pub file: u64,
    pub swapcached: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CpuStat {
    /// Nanoseconds of CPU time.
    pub usage: u64,
    pub user: u64,
    pub system: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DiskStat {
    pub total_bytes_used: u64,
    pub total_inodes_used: u64,
    pub exclusive_bytes_used: u64,
    pub exclusive_inodes_used: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkStat {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PidStat {
    pub current: u64,
    pub max: u64,
}

/// Garden's error body. `Type` selects the Go error type on the client side.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ErrorBody {
    #[serde(rename = "Type")]
    pub kind: String,
    pub message: String,
    pub handle: String,
    #[serde(rename = "ProcessID")]
    pub process_id: String,
    pub binary: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct BulkInfoEntry {
    pub info: Option<ContainerInfo>,
    pub err: Option<ErrorBody>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct BulkMetricsEntry {
    pub metrics: Option<Metrics>,
    pub err: Option<ErrorBody>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StopRequest {
    #[serde(default)]
    pub kill: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PropertyValue {
    pub value: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HandleReply {
    pub handle: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HandlesReply {
    pub handles: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_spec_accepts_garden_json() {
        let spec: ContainerSpec = serde_json::from_str(
            r#"{"handle":"app-1","grace_time":300000000000,"image":{"uri":"preloaded:tiny"},
               "properties":{"executor:owner":"executor"},"env":["A=1"],
               "limits":{"memory_limits":{"limit_in_bytes":268435456},"pid_limits":{"max":1024},
                         "cpu_limits":{"weight":1024}},"privileged":false}"#,
        )
        .unwrap();
        assert_eq!(spec.handle, "app-1");
        assert_eq!(spec.grace_time, 300_000_000_000);
        assert_eq!(spec.limits.memory_limits.limit_in_bytes, 268435456);
        assert_eq!(spec.limits.pid_limits.max, 1024);
    }

    #[test]
    fn zero_limits_are_omitted() {
        assert_eq!(serde_json::to_string(&MemoryLimits::default()).unwrap(), "{}");
        assert_eq!(serde_json::to_string(&CpuLimits { weight: 10, limit_in_shares: 0 }).unwrap(), r#"{"weight":10}"#);
    }

    #[test]
    fn info_uses_go_field_names() {
        let v = serde_json::to_value(ContainerInfo::default()).unwrap();
        for key in ["State", "Events", "HostIP", "ContainerIP", "ProcessIDs", "MappedPorts"] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        let e = serde_json::to_value(ErrorBody::default()).unwrap();
        for key in ["Type", "Message", "Handle", "ProcessID", "Binary"] {
            assert!(e.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn payload_round_trip() {
        let p: ProcessPayload = serde_json::from_str(r#"{"process_id":"p1","source":0,"data":"hi\n"}"#).unwrap();
        assert_eq!(p.source, Some(0));
        assert_eq!(p.data.as_deref(), Some("hi\n"));
        let exit = ProcessPayload { process_id: "p1".into(), exit_status: Some(42), ..Default::default() };
        assert_eq!(serde_json::to_string(&exit).unwrap(), r#"{"process_id":"p1","exit_status":42}"#);
    }
}
