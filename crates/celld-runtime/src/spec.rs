//! The OCI runtime spec of a container, built from what Garden was asked for.

use std::path::Path;

use oci_spec::runtime::Spec;
use serde_json::{Value, json};

use super::RuntimeError;

/// Container root as the host sees it in an unprivileged container, as Garden
/// maps it: the highest usable uid. Every other id maps to itself.
pub use celld_image::shift::ROOT_HOST_ID;

pub use crate::caps::{ALL_CAPS, PRIVILEGED_CAPS, UNPRIVILEGED_CAPS};

/// Paths hidden from unprivileged containers, as Garden hides them.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/kcore",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/keys",
    "/sys/firmware",
];

const READONLY_PATHS: &[&str] =
    &["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// What the containerizer decided about a container, ready to become a spec.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    pub handle: &'a str,
    pub rootfs: &'a Path,
    pub cgroup_path: &'a str,
    pub privileged: bool,
    pub memory_limit: u64,
    pub cpu_shares: u64,
    pub pids_max: u64,
    pub env: &'a [String],
    pub bind_mounts: &'a [(String, String, bool)],
}

/// Garden's hostname rule: the handle, or its last 49 bytes.
pub fn hostname(handle: &str) -> String {
    // Garden keeps the last 49 bytes; a cut inside a multibyte character moves
    // to the next boundary, so the name always fits sethostname's 64 bytes.
    let mut start = handle.len().saturating_sub(49);
    while !handle.is_char_boundary(start) {
        start += 1;
    }
    handle[start..].to_string()
}

/// The daemon's capability bounding set: a container cannot get more, and
/// asking for more makes `capset` fail.
fn bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapBnd:").and_then(|v| u64::from_str_radix(v.trim(), 16).ok()))
        })
        .unwrap_or(u64::MAX)
}

fn device(major: i64, minor: i64) -> Value {
    json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"})
}

pub fn build(input: &SpecInput<'_>) -> Result<Spec, RuntimeError> {
    let bounding = bounding_set();
    let wanted: &[&str] = if input.privileged { PRIVILEGED_CAPS } else { UNPRIVILEGED_CAPS };
    let caps: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| ALL_CAPS.iter().position(|a| a == c).is_some_and(|bit| bounding & (1 << bit) != 0))
        .collect();
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "network"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "gid=5", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        // The container's own cgroups, read-only (see `spawn`).
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["ro", "nosuid", "noexec", "nodev"]}),
    ];
    for (src, dst, rw) in input.bind_mounts {
        mounts.push(json!({"destination": dst, "type": "bind", "source": src,
                           "options": ["rbind", if *rw { "rw" } else { "ro" }]}));
    }
    let mut linux = json!({
        "namespaces": [],
        "cgroupsPath": input.cgroup_path,
        "resources": {
            "devices": [
                {"allow": false, "access": "rwm"},
                device(1, 3), device(1, 5), device(1, 7), device(1, 8), device(1, 9),
                device(5, 0), device(5, 2), device(136, -1),
                // /dev/net/tun and /dev/fuse, as Garden allows them.
                device(10, 200), device(10, 229),
            ],
        },
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
    });
    // A negative minor in the json above stands for "all minors".
    if let Some(devs) = linux["resources"]["devices"].as_array_mut() {
        for d in devs.iter_mut() {
            if d["minor"] == json!(-1) {
                if let Some(o) = d.as_object_mut() {
                    o.remove("minor");
                }
            }
        }
    }
    if input.memory_limit > 0 {
        // memsw = memory: a container never swaps, as in Garden.
        linux["resources"]["memory"] = json!({"limit": input.memory_limit, "swap": input.memory_limit});
    }
    if input.cpu_shares > 0 {
        linux["resources"]["cpu"] = json!({"shares": input.cpu_shares.max(2)});
    }
    if input.pids_max > 0 {
        linux["resources"]["pids"] = json!({"limit": input.pids_max});
    }
    if !input.privileged {
        namespaces.push(json!({"type": "user"}));
        linux["uidMappings"] = json!([
            {"containerID": 0, "hostID": ROOT_HOST_ID, "size": 1},
            {"containerID": 1, "hostID": 1, "size": ROOT_HOST_ID - 1},
        ]);
        linux["gidMappings"] = linux["uidMappings"].clone();
        // Seccomp is not in the spec: the helper installs a precompiled
        // filter (see `seccomp::compiled`).
    } else {
        // Privileged containers get FUSE, as in Garden.
        linux["devices"] = json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666}]);
    }
    linux["namespaces"] = Value::Array(namespaces);
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            // Never exec'd: the executor turns the first process into celld's init.
            "args": ["celld-init"],
            "env": input.env,
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps},
            "noNewPrivileges": !input.privileged,
        },
        "root": {"path": input.rootfs, "readonly": false},
        "hostname": hostname(input.handle),
        "mounts": mounts,
        "linux": linux,
    });
    serde_json::from_value(spec).map_err(|e| RuntimeError::Spec(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(privileged: bool) -> SpecInput<'static> {
        SpecInput {
            handle: "h",
            rootfs: Path::new("/tmp/rootfs"),
            cgroup_path: "/celld/h",
            privileged,
            memory_limit: 64 << 20,
            cpu_shares: 512,
            pids_max: 10,
            env: &[],
            bind_mounts: &[],
        }
    }

    #[test]
    fn hostname_is_last_49_chars() {
        let long: String = "x".repeat(10) + &"y".repeat(49);
        assert_eq!(hostname(&long), "y".repeat(49));
        assert_eq!(hostname("short"), "short");
        // 60 three-byte characters: 49 bytes would cut one; 48 bytes remain.
        let wide = "\u{20ac}".repeat(60);
        assert_eq!(hostname(&wide), "\u{20ac}".repeat(16));
    }

    #[test]
    fn unprivileged_spec_has_userns_and_limits() {
        let spec = build(&input(false)).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let ns: Vec<&str> =
            v["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert!(ns.contains(&"user"));
        assert_eq!(v["linux"]["uidMappings"][0]["hostID"], json!(ROOT_HOST_ID));
        assert_eq!(v["linux"]["resources"]["memory"]["swap"], json!(64 << 20));
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], json!(10));
        assert_eq!(v["process"]["noNewPrivileges"], json!(true));
        assert!(!v["process"]["capabilities"]["bounding"].as_array().unwrap().contains(&json!("CAP_SYS_ADMIN")));
    }

    #[test]
    fn privileged_spec_has_no_userns() {
        let v = serde_json::to_value(build(&input(true)).unwrap()).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "user"));
    }
}
