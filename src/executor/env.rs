//! The environment of an app instance's or a task's processes, as Diego
//! assembles it from three parties, later entries winning:
//!
//! 1. Cloud Controller's defaults (`PORT`, `VCAP_APP_PORT`, `VCAP_APP_HOST`,
//!    `LANG`, `MEMORY_LIMIT`, `VCAP_APPLICATION`, `VCAP_SERVICES`), which CC
//!    would put into the DesiredLRP; we add them here because our scheduler's
//!    DesiredLRP carries only the user's env.
//! 2. The DesiredLRP's (or Task's) own env.
//! 3. The rep's instance identity (`INSTANCE_GUID`, `INSTANCE_INDEX`,
//!    `CF_INSTANCE_GUID`, `CF_INSTANCE_INDEX`; LRPs only, as in rep
//!    `conversion_helpers.go`), then the executor's networking variables
//!    (`CF_INSTANCE_IP`, `CF_INSTANCE_INTERNAL_IP`, `CF_INSTANCE_PORT`,
//!    `CF_INSTANCE_ADDR`, `CF_INSTANCE_PORTS`; every run, as in executor
//!    `run_step.go`).
//!
//! `DATABASE_URL` and the per-instance fields of `VCAP_APPLICATION` (`host`,
//! `instance_id`, `port`, `instance_index`) are the launcher's job, inside the
//! container, as in the buildpack lifecycle.

use serde::Serialize;

use celld_proto as pb;

/// `limits.fds` in `VCAP_APPLICATION`: CC's default file descriptor limit.
const DEFAULT_FDS: u32 = 16384;

/// The environment ("NAME=value", in order, one entry per name) of an app
/// instance's processes.
pub fn lrp_env(
    d: &pb::DesiredLrp,
    index: i32,
    instance_guid: &str,
    host_ip: &str,
    container_ip: &str,
    ports: &[pb::PortMapping],
) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();

    // CC sets the port variables only for processes that have ports.
    let container_port = d.ports.first().copied().or_else(|| ports.first().map(|p| p.container_port));
    if let Some(port) = container_port {
        env.push(("PORT".into(), port.to_string()));
        env.push(("VCAP_APP_PORT".into(), port.to_string()));
        env.push(("VCAP_APP_HOST".into(), "0.0.0.0".into()));
    }
    env.push(("LANG".into(), "en_US.UTF-8".into()));
    env.push(("MEMORY_LIMIT".into(), format!("{}m", d.memory_mb)));
    if !has(&d.env, "VCAP_APPLICATION") {
        let (process_id, version) = split_process_guid(&d.process_guid);
        let app = VcapApplication {
            process_id: Some(process_id),
            process_type: Some(process_type(&d.log_source)),
            application_id: if d.log_guid.is_empty() { process_id } else { &d.log_guid },
            version,
            application_version: version,
            ..VcapApplication::blank(d.memory_mb, d.disk_mb)
        };
        env.push(("VCAP_APPLICATION".into(), app.to_json()));
    }
    if !has(&d.env, "VCAP_SERVICES") {
        env.push(("VCAP_SERVICES".into(), "{}".into()));
    }

    env.extend(d.env.iter().map(|e| (e.name.clone(), e.value.clone())));

    env.push(("INSTANCE_GUID".into(), instance_guid.into()));
    env.push(("INSTANCE_INDEX".into(), index.to_string()));
    env.push(("CF_INSTANCE_GUID".into(), instance_guid.into()));
    env.push(("CF_INSTANCE_INDEX".into(), index.to_string()));

    networking_env(&mut env, host_ip, container_ip, ports);
    finish(env)
}

/// The environment of a task's process: as for an instance, but a task has no
/// ports and (as in Diego, where the rep adds identity only to LRPs) no
/// `INSTANCE_*`/`CF_INSTANCE_GUID`/`CF_INSTANCE_INDEX`.
pub fn task_env(t: &pb::Task, host_ip: &str, container_ip: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    env.push(("LANG".into(), "en_US.UTF-8".into()));
    env.push(("MEMORY_LIMIT".into(), format!("{}m", t.memory_mb)));
    if !has(&t.env, "VCAP_APPLICATION") {
        // A task is not a process of the app: no process_id/process_type, and
        // no version we could know.
        let app = VcapApplication { application_id: &t.log_guid, ..VcapApplication::blank(t.memory_mb, t.disk_mb) };
        env.push(("VCAP_APPLICATION".into(), app.to_json()));
    }
    if !has(&t.env, "VCAP_SERVICES") {
        env.push(("VCAP_SERVICES".into(), "{}".into()));
    }
    env.extend(t.env.iter().map(|e| (e.name.clone(), e.value.clone())));
    networking_env(&mut env, host_ip, container_ip, &[]);
    finish(env)
}

/// The CF process type of an app's log source: `APP/PROC/WORKER` → "worker"
/// (also `APP/PROC/WEB/SIDECAR/X` → "web"); anything else, including "", is
/// "web" (the proto's default log source is `APP/PROC/WEB`).
pub fn process_type(log_source: &str) -> String {
    log_source
        .strip_prefix("APP/PROC/")
        .and_then(|rest| rest.split('/').next())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .unwrap_or_else(|| "web".into())
}

/// `VCAP_APPLICATION` with CC's field order (`lib/vcap/vars_builder.rb`).
#[derive(Serialize)]
struct VcapApplication<'a> {
    cf_api: &'a str,
    limits: Limits,
    application_name: &'a str,
    application_uris: Vec<String>,
    name: &'a str,
    space_name: &'a str,
    space_id: &'a str,
    organization_id: &'a str,
    organization_name: &'a str,
    uris: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_type: Option<String>,
    application_id: &'a str,
    version: &'a str,
    application_version: &'a str,
}

impl VcapApplication<'_> {
    /// What the cell knows without Cloud Controller: limits, empty names.
    fn blank(mem: u32, disk: u32) -> Self {
        VcapApplication {
            cf_api: "",
            limits: Limits { fds: DEFAULT_FDS, mem, disk },
            application_name: "",
            application_uris: Vec::new(),
            name: "",
            space_name: "",
            space_id: "",
            organization_id: "",
            organization_name: "",
            uris: Vec::new(),
            process_id: None,
            process_type: None,
            application_id: "",
            version: "",
            application_version: "",
        }
    }
}

#[derive(Serialize)]
struct Limits {
    fds: u32,
    mem: u32,
    disk: u32,
}

impl VcapApplication<'_> {
    fn to_json(&self) -> String {
        // Only strings and numbers: serializing cannot fail, but stay total.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// One element of `CF_INSTANCE_PORTS`; `external` is omitted when 0 as in the
/// executor. No `*_tls_proxy` ports: this cell runs no envoy.
#[derive(Serialize)]
struct CfPortMapping {
    #[serde(skip_serializing_if = "is_zero")]
    external: u32,
    internal: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The executor's networking variables (`run_step.go` `networkingEnvVars`).
fn networking_env(env: &mut Vec<(String, String)>, host_ip: &str, container_ip: &str, ports: &[pb::PortMapping]) {
    env.push(("CF_INSTANCE_IP".into(), host_ip.into()));
    env.push(("CF_INSTANCE_INTERNAL_IP".into(), container_ip.into()));
    match ports.first() {
        Some(first) => {
            // Like the executor: a first mapping without a host port yields no
            // PORT/ADDR at all, rather than empty ones.
            if first.host_port > 0 {
                env.push(("CF_INSTANCE_PORT".into(), first.host_port.to_string()));
                env.push(("CF_INSTANCE_ADDR".into(), format!("{host_ip}:{}", first.host_port)));
            }
            let mappings: Vec<CfPortMapping> =
                ports.iter().map(|p| CfPortMapping { external: p.host_port, internal: p.container_port }).collect();
            let json = serde_json::to_string(&mappings).unwrap_or_else(|_| "[]".into());
            env.push(("CF_INSTANCE_PORTS".into(), json));
        }
        None => {
            env.push(("CF_INSTANCE_PORT".into(), String::new()));
            env.push(("CF_INSTANCE_ADDR".into(), String::new()));
            env.push(("CF_INSTANCE_PORTS".into(), "[]".into()));
        }
    }
}

fn has(env: &[pb::EnvironmentVariable], name: &str) -> bool {
    env.iter().any(|e| e.name == name)
}

/// CC's process guid is `<process guid>-<version guid>` (two 36-character
/// UUIDs): split it into `process_id` and `version`. Any other shape is used
/// whole for both.
fn split_process_guid(process_guid: &str) -> (&str, &str) {
    if process_guid.len() == 73 && process_guid.as_bytes().get(36) == Some(&b'-') {
        if let (Some(p), Some(v)) = (process_guid.get(..36), process_guid.get(37..)) {
            return (p, v);
        }
    }
    (process_guid, process_guid)
}

/// Keeps the last entry of each name, at the last one's position (so a
/// later party's value wins), and renders "NAME=value".
fn finish(env: Vec<(String, String)>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<String> = env
        .into_iter()
        .rev()
        .filter(|(name, _)| seen.insert(name.clone()))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, value: &str) -> pb::EnvironmentVariable {
        pb::EnvironmentVariable { name: name.into(), value: value.into() }
    }

    fn lookup<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
        let prefix = format!("{name}=");
        let mut found = env.iter().filter_map(|e| e.strip_prefix(&prefix));
        let first = found.next();
        assert!(found.next().is_none(), "{name} appears twice in {env:?}");
        first
    }

    fn desired() -> pb::DesiredLrp {
        pb::DesiredLrp {
            process_guid: "8d0e2f7c-6a3b-4a1e-9d5f-1c2b3a4d5e6f-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            log_guid: "app-guid".into(),
            memory_mb: 256,
            disk_mb: 1024,
            ports: vec![8080],
            log_source: "APP/PROC/WORKER".into(),
            ..Default::default()
        }
    }

    fn mapping(c: u32, h: u32) -> pb::PortMapping {
        pb::PortMapping { container_port: c, host_port: h }
    }

    #[test]
    fn lrp_env_has_cc_rep_and_executor_variables() {
        let env =
            lrp_env(&desired(), 2, "ig-1", "10.0.0.5", "10.255.0.9", &[mapping(8080, 61001), mapping(2222, 61002)]);
        assert_eq!(lookup(&env, "PORT"), Some("8080"));
        assert_eq!(lookup(&env, "VCAP_APP_PORT"), Some("8080"));
        assert_eq!(lookup(&env, "VCAP_APP_HOST"), Some("0.0.0.0"));
        assert_eq!(lookup(&env, "LANG"), Some("en_US.UTF-8"));
        assert_eq!(lookup(&env, "MEMORY_LIMIT"), Some("256m"));
        assert_eq!(lookup(&env, "VCAP_SERVICES"), Some("{}"));
        assert_eq!(lookup(&env, "INSTANCE_GUID"), Some("ig-1"));
        assert_eq!(lookup(&env, "CF_INSTANCE_GUID"), Some("ig-1"));
        assert_eq!(lookup(&env, "INSTANCE_INDEX"), Some("2"));
        assert_eq!(lookup(&env, "CF_INSTANCE_INDEX"), Some("2"));
        assert_eq!(lookup(&env, "CF_INSTANCE_IP"), Some("10.0.0.5"));
        assert_eq!(lookup(&env, "CF_INSTANCE_INTERNAL_IP"), Some("10.255.0.9"));
        assert_eq!(lookup(&env, "CF_INSTANCE_PORT"), Some("61001"));
        assert_eq!(lookup(&env, "CF_INSTANCE_ADDR"), Some("10.0.0.5:61001"));
        assert_eq!(lookup(&env, "DATABASE_URL"), None);

        let ports: serde_json::Value = serde_json::from_str(lookup(&env, "CF_INSTANCE_PORTS").unwrap()).unwrap();
        assert_eq!(
            ports,
            serde_json::json!([{"external": 61001, "internal": 8080}, {"external": 61002, "internal": 2222}])
        );

        let app: serde_json::Value = serde_json::from_str(lookup(&env, "VCAP_APPLICATION").unwrap()).unwrap();
        assert_eq!(app["application_id"], "app-guid");
        assert_eq!(app["process_id"], "8d0e2f7c-6a3b-4a1e-9d5f-1c2b3a4d5e6f");
        assert_eq!(app["version"], "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
        assert_eq!(app["application_version"], app["version"]);
        assert_eq!(app["process_type"], "worker");
        assert_eq!(app["limits"], serde_json::json!({"fds": 16384, "mem": 256, "disk": 1024}));
        assert_eq!(app["uris"], serde_json::json!([]));
        assert_eq!(app["application_uris"], serde_json::json!([]));
        assert_eq!(app["space_name"], "");
    }

    #[test]
    fn lrp_env_later_parties_win_and_names_are_unique() {
        let mut d = desired();
        d.env = vec![
            var("LANG", "C.UTF-8"),
            var("INSTANCE_INDEX", "99"),
            var("CF_INSTANCE_IP", "1.2.3.4"),
            var("VCAP_APPLICATION", r#"{"name":"mine"}"#),
            var("VCAP_SERVICES", r#"{"x":[]}"#),
            var("FOO", "bar"),
        ];
        let env = lrp_env(&d, 0, "ig", "10.0.0.5", "10.255.0.9", &[mapping(8080, 61001)]);
        // The app's own env overrides CC's defaults…
        assert_eq!(lookup(&env, "LANG"), Some("C.UTF-8"));
        assert_eq!(lookup(&env, "VCAP_APPLICATION"), Some(r#"{"name":"mine"}"#));
        assert_eq!(lookup(&env, "VCAP_SERVICES"), Some(r#"{"x":[]}"#));
        assert_eq!(lookup(&env, "FOO"), Some("bar"));
        // …but not the rep's and the executor's.
        assert_eq!(lookup(&env, "INSTANCE_INDEX"), Some("0"));
        assert_eq!(lookup(&env, "CF_INSTANCE_IP"), Some("10.0.0.5"));
        // Order: CC, app, rep, executor.
        let pos = |n: &str| env.iter().position(|e| e.starts_with(&format!("{n}="))).unwrap();
        assert!(pos("MEMORY_LIMIT") < pos("FOO"));
        assert!(pos("FOO") < pos("INSTANCE_GUID"));
        assert!(pos("INSTANCE_GUID") < pos("CF_INSTANCE_IP"));
        assert!(pos("CF_INSTANCE_IP") < pos("CF_INSTANCE_PORTS"));
    }

    #[test]
    fn lrp_env_without_ports() {
        let mut d = desired();
        d.ports.clear();
        let env = lrp_env(&d, 0, "ig", "10.0.0.5", "10.255.0.9", &[]);
        assert_eq!(lookup(&env, "PORT"), None);
        assert_eq!(lookup(&env, "CF_INSTANCE_PORT"), Some(""));
        assert_eq!(lookup(&env, "CF_INSTANCE_ADDR"), Some(""));
        assert_eq!(lookup(&env, "CF_INSTANCE_PORTS"), Some("[]"));
    }

    #[test]
    fn task_env_has_no_ports_or_instance_identity() {
        let t = pb::Task {
            task_guid: "tg".into(),
            log_guid: "app-guid".into(),
            memory_mb: 128,
            disk_mb: 512,
            env: vec![var("A", "1")],
            ..Default::default()
        };
        let env = task_env(&t, "10.0.0.5", "10.255.0.9");
        assert_eq!(lookup(&env, "PORT"), None);
        assert_eq!(lookup(&env, "INSTANCE_INDEX"), None);
        assert_eq!(lookup(&env, "CF_INSTANCE_GUID"), None);
        assert_eq!(lookup(&env, "MEMORY_LIMIT"), Some("128m"));
        assert_eq!(lookup(&env, "A"), Some("1"));
        assert_eq!(lookup(&env, "CF_INSTANCE_IP"), Some("10.0.0.5"));
        assert_eq!(lookup(&env, "CF_INSTANCE_PORT"), Some(""));
        assert_eq!(lookup(&env, "CF_INSTANCE_PORTS"), Some("[]"));
        let app: serde_json::Value = serde_json::from_str(lookup(&env, "VCAP_APPLICATION").unwrap()).unwrap();
        assert_eq!(app["application_id"], "app-guid");
        assert!(app.get("process_type").is_none());
    }

    #[test]
    fn process_type_from_log_source() {
        assert_eq!(process_type("APP/PROC/WEB"), "web");
        assert_eq!(process_type("APP/PROC/WORKER"), "worker");
        assert_eq!(process_type("APP/PROC/WEB/SIDECAR/X"), "web");
        assert_eq!(process_type(""), "web");
        assert_eq!(process_type("CELL"), "web");
        assert_eq!(process_type("APP/PROC/"), "web");
    }

    #[test]
    fn short_process_guid_is_its_own_version() {
        let mut d = desired();
        d.process_guid = "my-app".into();
        d.log_guid.clear();
        let env = lrp_env(&d, 0, "ig", "h", "c", &[]);
        let app: serde_json::Value = serde_json::from_str(lookup(&env, "VCAP_APPLICATION").unwrap()).unwrap();
        assert_eq!(app["process_id"], "my-app");
        assert_eq!(app["version"], "my-app");
        assert_eq!(app["application_id"], "my-app");
    }
}
