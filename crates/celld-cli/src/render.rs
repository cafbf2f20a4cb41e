//! What cellctl's people commands print: sizes and times the way `cf` shows
//! them, aligned tables (coloured only on a terminal), log lines, and the
//! `--json` renderings of the `Apps` messages (prost types derive no Serialize).

use std::collections::HashMap;
use std::io::IsTerminal;

use serde_json::{Value, json};

use celld_proto as pb;

mod cells;
pub use cells::{cells_json, cells_table};

/// Parses a memory or disk size like `cf` does: `256M`, `256MB`, `1G`, `1GB`,
/// `512m`, or a plain number of megabytes. `what` names the flag in the error.
pub fn parse_size_mb(what: &str, s: &str) -> Result<u32, String> {
    let bad = || format!("{what} {s} is not valid: use a number with M or G, e.g. 256M or 1G");
    let upper = s.to_ascii_uppercase();
    let (digits, factor) = if let Some(n) = upper.strip_suffix("MB").or_else(|| upper.strip_suffix('M')) {
        (n, 1u64)
    } else if let Some(n) = upper.strip_suffix("GB").or_else(|| upper.strip_suffix('G')) {
        (n, 1024)
    } else {
        (upper.as_str(), 1)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let mb = digits.parse::<u64>().ok().and_then(|n| n.checked_mul(factor)).ok_or_else(bad)?;
    if mb == 0 {
        return Err(format!("{what} {s} is not valid: it must be at least 1M"));
    }
    u32::try_from(mb).map_err(|_| bad())
}

/// Bytes as `cf` shows them: `12.1M`, `256M`, `1G`, `512K`, `80B`.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (unit, size) in UNITS {
        if b >= size {
            let v = format!("{:.1}", b as f64 / size as f64);
            return format!("{}{unit}", v.strip_suffix(".0").unwrap_or(&v));
        }
    }
    format!("{b}B")
}

pub fn fmt_mb(mb: u32) -> String {
    fmt_bytes(u64::from(mb) << 20)
}

/// (year, month, day, hour, minute, second, nanosecond) in UTC of Unix
/// nanoseconds (Howard Hinnant's days-to-civil; no date crate here).
fn civil(ns: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let (y, mo, d, h, mi, s) = celld_base::civil::civil(ns.div_euclid(1_000_000_000));
    (y, mo, d, h, mi, s, ns.rem_euclid(1_000_000_000) as u32)
}

/// `2026-11-27T12:00:00Z`; "" for an unset (0) time.
pub fn rfc3339(ns: i64) -> String {
    if ns <= 0 {
        return String::new();
    }
    let (y, mo, d, h, mi, s, _) = civil(ns);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// cf's log timestamp (`2006-01-02T15:04:05.00-0700`), in UTC.
pub fn log_time(ns: i64) -> String {
    let (y, mo, d, h, mi, s, n) = civil(ns.max(0));
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:02}+0000", n / 10_000_000)
}

/// Colour on or off: on only when stdout is a terminal and NO_COLOR is unset.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    pub color: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paint {
    Plain,
    Bold,
    Green,
    Red,
    Yellow,
}

impl Style {
    pub fn detect() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        Self { color: std::io::stdout().is_terminal() && !no_color && !dumb }
    }

    pub fn paint(&self, p: Paint, s: &str) -> String {
        let code = match p {
            Paint::Plain => return s.to_string(),
            Paint::Bold => "1",
            Paint::Green => "32",
            Paint::Red => "31",
            Paint::Yellow => "33",
        };
        if self.color && !s.is_empty() { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }

    pub fn bold(&self, s: &str) -> String {
        self.paint(Paint::Bold, s)
    }
}

/// An instance's or task's state word, coloured by health.
fn state_paint(state: &str) -> Paint {
    match state.to_ascii_lowercase().as_str() {
        "running" | "succeeded" => Paint::Green,
        "crashed" | "failed" => Paint::Red,
        _ => Paint::Plain,
    }
}

/// Columns padded to their widest cell, three spaces apart as in `cf`; the
/// header is bold. Colour is applied after padding so it never skews widths.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<(String, Paint)>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<(String, Paint)>) {
        self.rows.push(cells);
    }

    pub fn plain_row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(|c| (c, Paint::Plain)).collect());
    }

    pub fn render(&self, style: Style) -> String {
        let cols = self.rows.iter().map(Vec::len).chain([self.header.len()]).max().unwrap_or(0);
        let mut widths = vec![0; cols];
        let header: Vec<(String, Paint)> = self.header.iter().map(|h| (h.clone(), Paint::Bold)).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            for (i, (text, _)) in row.iter().enumerate() {
                widths[i] = widths[i].max(text.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (text, paint)) in row.iter().enumerate() {
                line.push_str(&style.paint(*paint, text));
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[i] - text.chars().count() + 3));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key:` lines with values aligned, keys bold (the top of `cf app`).
fn key_values(pairs: &[(&str, String)], style: Style) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let key = format!("{k}:");
        let pad = " ".repeat(width - key.len() + 3);
        out.push_str(format!("{}{pad}{v}", style.bold(&key)).trim_end());
        out.push('\n');
    }
    out
}

/// The app's buildpacks as `cf app` shows them: the detected one once staged,
/// else the requested list.
fn buildpacks_of(a: &pb::App) -> String {
    if a.detected_buildpack.is_empty() { a.buildpacks.join(", ") } else { a.detected_buildpack.clone() }
}

/// `cf app`: the app's header, then its web process and one line per instance.
pub fn app_detail(d: &pb::AppDetail, style: Style) -> String {
    let default = pb::App::default();
    let a = d.app.as_ref().unwrap_or(&default);
    let mut header = vec![
        ("name", a.name.clone()),
        ("requested state", a.state.to_lowercase()),
        ("routes", a.routes.join(", ")),
        // The package's upload, not the app's last change (cf's "last uploaded").
        ("last uploaded", if a.package_uploaded_at == 0 { String::new() } else { rfc3339(a.package_uploaded_at) }),
    ];
    // cf shows a Docker app's image where a buildpack app has its stack and buildpacks.
    if a.docker_image.is_empty() {
        header.extend([("stack", a.stack.clone()), ("buildpacks", buildpacks_of(a))]);
    } else {
        header.push(("docker image", a.docker_image.clone()));
    }
    let mut out = key_values(&header, style);
    if d.processes.is_empty() {
        // A server without process types: the app's own settings are web's.
        let web = pb::AppProcess {
            r#type: "web".into(),
            instances: a.instances,
            memory_mb: a.memory_mb,
            disk_mb: a.disk_mb,
            command: a.command.clone(),
            ..Default::default()
        };
        out.push('\n');
        out.push_str(&process_detail(a, &web, &d.instances, style));
    }
    for p in &d.processes {
        let Some(process) = &p.process else { continue };
        out.push('\n');
        out.push_str(&process_detail(a, process, &p.instances, style));
    }
    out
}

/// One process type of `cf app`: its scale and command, then its instances.
fn process_detail(a: &pb::App, p: &pb::AppProcess, instances: &[pb::AppInstance], style: Style) -> String {
    let mut instances: Vec<&pb::AppInstance> = instances.iter().collect();
    instances.sort_by_key(|i| i.index);
    let running = instances.iter().filter(|i| i.state == "running").count();
    let command = if !p.command.is_empty() {
        p.command.clone()
    } else if p.detected_command.is_empty() && p.r#type == "web" {
        a.detected_start_command.clone()
    } else {
        p.detected_command.clone()
    };
    let mut out = key_values(
        &[
            ("type", p.r#type.clone()),
            ("instances", format!("{running}/{}", p.instances)),
            ("memory usage", fmt_mb(p.memory_mb)),
            ("start command", command),
        ],
        style,
    );
    if instances.is_empty() {
        out.push_str("There are no running instances of this process.\n");
        return out;
    }
    let mut t = Table::new(&["", "state", "since", "cpu", "memory", "disk", "details"]);
    for i in instances {
        let quota = |q: u64, mb: u32| fmt_bytes(if q > 0 { q } else { u64::from(mb) << 20 });
        t.row(vec![
            (format!("#{}", i.index), Paint::Plain),
            (i.state.clone(), state_paint(&i.state)),
            (rfc3339(i.since), Paint::Plain),
            (format!("{:.1}%", i.cpu_percentage), Paint::Plain),
            (format!("{} of {}", fmt_bytes(i.memory_bytes), quota(i.memory_quota_bytes, p.memory_mb)), Paint::Plain),
            (format!("{} of {}", fmt_bytes(i.disk_bytes), quota(i.disk_quota_bytes, p.disk_mb)), Paint::Plain),
            (i.details.clone(), Paint::Plain),
        ]);
    }
    out.push_str(&t.render(style));
    out
}

/// `cf apps`: one line per app; a space column when listing every space.
pub fn apps_table(list: &pb::ListAppsResponse, all_spaces: bool, style: Style) -> String {
    if list.apps.is_empty() {
        return "No apps found\n".to_string();
    }
    let mut header = vec!["name", "requested state", "processes", "routes"];
    if all_spaces {
        header.insert(1, "space");
    }
    let mut t = Table::new(&header);
    for s in &list.apps {
        let Some(a) = &s.app else { continue };
        let state = a.state.to_lowercase();
        let paint = if state == "started" && s.running_instances < a.instances { Paint::Yellow } else { Paint::Plain };
        let mut row = vec![
            (a.name.clone(), Paint::Plain),
            (state, paint),
            (format!("web:{}/{}", s.running_instances, a.instances), Paint::Plain),
            (a.routes.join(", "), Paint::Plain),
        ];
        if all_spaces {
            row.insert(1, (a.space.clone(), Paint::Plain));
        }
        t.row(row);
    }
    t.render(style)
}

/// An event's metadata as `key: value, …`, keys sorted.
pub fn event_description(metadata: &HashMap<String, String>) -> String {
    let mut kv: Vec<_> = metadata.iter().collect();
    kv.sort();
    kv.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
}

pub fn events_table(r: &pb::EventsResponse, style: Style) -> String {
    if r.events.is_empty() {
        return "No events found\n".to_string();
    }
    let mut t = Table::new(&["time", "event", "actor", "description"]);
    for e in &r.events {
        let paint = if e.r#type == "app.crash" { Paint::Red } else { Paint::Plain };
        t.row(vec![
            (rfc3339(e.timestamp), Paint::Plain),
            (e.r#type.clone(), paint),
            (e.actor.clone(), Paint::Plain),
            (event_description(&e.metadata), Paint::Plain),
        ]);
    }
    t.render(style)
}

pub fn services_table(r: &pb::ListServicesResponse, style: Style) -> String {
    if r.services.is_empty() {
        return "No services found\n".to_string();
    }
    let mut t = Table::new(&["name", "offering", "bound apps", "tags"]);
    for s in &r.services {
        t.plain_row(vec![s.name.clone(), "user-provided".into(), s.bound_apps.join(", "), s.tags.join(", ")]);
    }
    t.render(style)
}

pub fn tasks_table(r: &pb::ListTasksResponse, style: Style) -> String {
    if r.tasks.is_empty() {
        return "No tasks found\n".to_string();
    }
    let mut t = Table::new(&["id", "name", "state", "start time", "command"]);
    for k in &r.tasks {
        t.row(vec![
            (k.sequence_id.to_string(), Paint::Plain),
            (k.name.clone(), Paint::Plain),
            (k.state.clone(), state_paint(&k.state)),
            (rfc3339(k.created_at), Paint::Plain),
            (k.command.clone(), Paint::Plain),
        ]);
    }
    t.render(style)
}

/// A JSON document pretty-printed when it parses, else as it came.
fn pretty_json(s: &str) -> String {
    serde_json::from_str::<Value>(s).ok().and_then(|v| serde_json::to_string_pretty(&v).ok()).unwrap_or(s.to_string())
}

/// `cf env`: the system-provided JSON documents, then the user's variables.
pub fn env_text(e: &pb::AppEnv, style: Style) -> String {
    let or_empty = |s: &str| if s.is_empty() { "{}".to_string() } else { pretty_json(s) };
    let mut out = format!("{}\n", style.bold("System-Provided:"));
    out.push_str(&format!("VCAP_SERVICES: {}\n\n", or_empty(&e.vcap_services)));
    out.push_str(&format!("VCAP_APPLICATION: {}\n\n", or_empty(&e.vcap_application)));
    if !e.database_url.is_empty() {
        out.push_str(&format!("DATABASE_URL: {}\n\n", e.database_url));
    }
    if e.user.is_empty() {
        out.push_str("No user-provided env variables have been set\n");
        return out;
    }
    out.push_str(&format!("{}\n", style.bold("User-Provided:")));
    let mut kv: Vec<_> = e.user.iter().collect();
    kv.sort();
    for (k, v) in kv {
        out.push_str(&format!("{k}: {v}\n"));
    }
    out
}

/// One log envelope the way `cf logs` prints it: the header repeated on each
/// line of a multi-line message, ERR lines red.
pub fn log_lines(e: &pb::LogEnvelope, style: Style) -> String {
    let source = if e.source_instance.is_empty() {
        e.source_type.clone()
    } else {
        format!("{}/{}", e.source_type, e.source_instance)
    };
    let err = e.message_type == pb::log_envelope::MessageType::Err as i32;
    let header = format!("{} [{source}] {} ", log_time(e.timestamp), if err { "ERR" } else { "OUT" });
    let mut out = String::new();
    for line in e.message.trim_end_matches(['\r', '\n']).split('\n') {
        let line = format!("{header}{}", line.trim_end_matches('\r'));
        out.push_str("   ");
        out.push_str(&if err { style.paint(Paint::Red, &line) } else { line });
        out.push('\n');
    }
    out
}

// --json: the proto messages as objects, with the proto's field names.

fn map_json(m: &HashMap<String, String>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

pub fn app_json(a: &pb::App) -> Value {
    json!({
        "guid": a.guid, "name": a.name, "space": a.space, "state": a.state, "instances": a.instances,
        "memory_mb": a.memory_mb, "disk_mb": a.disk_mb, "health_check_type": a.health_check_type,
        "health_check_endpoint": a.health_check_endpoint, "health_check_timeout": a.health_check_timeout,
        "command": a.command, "buildpacks": a.buildpacks, "stack": a.stack, "env": map_json(&a.env),
        "routes": a.routes, "package_state": a.package_state, "staging_failed_reason": a.staging_failed_reason,
        "droplet_key": a.droplet_key, "detected_buildpack": a.detected_buildpack,
        "detected_start_command": a.detected_start_command, "process_guid": a.process_guid,
        "enable_ssh": a.enable_ssh, "created_at": a.created_at, "updated_at": a.updated_at,
        "package_key": a.package_key, "docker_image": a.docker_image, "docker_username": a.docker_username,
        "package_uploaded_at": a.package_uploaded_at,
        "processes": a.processes.iter().map(process_json).collect::<Vec<_>>(),
    })
}

pub fn process_json(p: &pb::AppProcess) -> Value {
    json!({
        "type": p.r#type, "guid": p.guid, "instances": p.instances, "memory_mb": p.memory_mb,
        "disk_mb": p.disk_mb, "command": p.command, "health_check_type": p.health_check_type,
        "health_check_endpoint": p.health_check_endpoint, "health_check_timeout": p.health_check_timeout,
        "process_guid": p.process_guid, "detected_command": p.detected_command,
    })
}

pub(crate) fn opt_json<T>(v: &Option<T>, f: fn(&T) -> Value) -> Value {
    v.as_ref().map_or(Value::Null, f)
}

pub fn instance_json(i: &pb::AppInstance) -> Value {
    json!({
        "index": i.index, "state": i.state, "since": i.since, "instance_guid": i.instance_guid,
        "cell_id": i.cell_id, "address": i.address, "routable": i.routable, "details": i.details,
        "cpu_percentage": i.cpu_percentage, "memory_bytes": i.memory_bytes,
        "memory_quota_bytes": i.memory_quota_bytes, "disk_bytes": i.disk_bytes,
        "disk_quota_bytes": i.disk_quota_bytes, "crash_count": i.crash_count,
    })
}

pub fn app_detail_json(d: &pb::AppDetail) -> Value {
    json!({
        "app": opt_json(&d.app, app_json),
        "instances": d.instances.iter().map(instance_json).collect::<Vec<_>>(),
        "processes": d.processes.iter().map(|p| json!({
            "process": opt_json(&p.process, process_json),
            "instances": p.instances.iter().map(instance_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub fn list_apps_json(r: &pb::ListAppsResponse) -> Value {
    let apps: Vec<Value> = r
        .apps
        .iter()
        .map(|s| json!({"app": opt_json(&s.app, app_json), "running_instances": s.running_instances}))
        .collect();
    json!({ "apps": apps })
}

pub fn events_json(r: &pb::EventsResponse) -> Value {
    let events: Vec<Value> = r
        .events
        .iter()
        .map(|e| {
            json!({"guid": e.guid, "type": e.r#type, "actor": e.actor, "timestamp": e.timestamp,
                "metadata": map_json(&e.metadata)})
        })
        .collect();
    json!({ "events": events })
}

pub fn service_json(s: &pb::ServiceInstance) -> Value {
    json!({
        "guid": s.guid, "name": s.name, "space": s.space, "credentials_json": s.credentials_json,
        "tags": s.tags, "syslog_drain_url": s.syslog_drain_url, "bound_apps": s.bound_apps,
        "created_at": s.created_at,
    })
}

pub fn services_json(r: &pb::ListServicesResponse) -> Value {
    json!({ "services": r.services.iter().map(service_json).collect::<Vec<_>>() })
}

pub fn task_json(t: &pb::AppTask) -> Value {
    json!({
        "guid": t.guid, "sequence_id": t.sequence_id, "name": t.name, "command": t.command,
        "state": t.state, "failure_reason": t.failure_reason, "created_at": t.created_at,
        "memory_mb": t.memory_mb, "disk_mb": t.disk_mb,
    })
}

pub fn tasks_json(r: &pb::ListTasksResponse) -> Value {
    json!({ "tasks": r.tasks.iter().map(task_json).collect::<Vec<_>>() })
}

pub(crate) fn resources_json(r: &pb::Resources) -> Value {
    json!({"memory_mb": r.memory_mb, "disk_mb": r.disk_mb, "containers": r.containers})
}

/// The JSON text cellctl prints for `--json`.
pub fn to_json_text(v: &Value) -> String {
    // Serialising a Value built from strings and numbers cannot fail.
    serde_json::to_string_pretty(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_cf() {
        let ok = [
            ("256M", 256),
            ("256MB", 256),
            ("256m", 256),
            ("256mb", 256),
            ("1G", 1024),
            ("1GB", 1024),
            ("2g", 2048),
            ("512", 512),
            ("4096M", 4096),
        ];
        for (s, mb) in ok {
            assert_eq!(parse_size_mb("memory", s), Ok(mb), "{s}");
        }
        for s in ["256X", "", "M", "1.5G", "-1M", " 256M", "256 M", "1T", "256KB", "99999999999G", "G1"] {
            let e = parse_size_mb("memory", s).expect_err(s);
            assert_eq!(e, format!("memory {s} is not valid: use a number with M or G, e.g. 256M or 1G"));
        }
        assert_eq!(parse_size_mb("disk", "0M"), Err("disk 0M is not valid: it must be at least 1M".into()));
    }

    #[test]
    fn bytes_and_times_format_like_cf() {
        assert_eq!(fmt_bytes(0), "0B");
        assert_eq!(fmt_bytes(512 << 10), "512K");
        assert_eq!(fmt_bytes(12_687_769), "12.1M");
        assert_eq!(fmt_bytes(256 << 20), "256M");
        assert_eq!(fmt_bytes(1 << 30), "1G");
        assert_eq!(fmt_mb(1536), "1.5G");
        // 2026-11-27T12:00:00Z
        let t = 1_795_780_800 * 1_000_000_000i64;
        assert_eq!(rfc3339(t), "2026-11-27T12:00:00Z");
        assert_eq!(rfc3339(0), "");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(log_time(t + 123_456_789), "2026-11-27T12:00:00.12+0000");
    }

    fn sample() -> pb::AppDetail {
        let t = 1_795_780_800 * 1_000_000_000i64;
        pb::AppDetail {
            app: Some(pb::App {
                guid: "g-1".into(),
                name: "hello".into(),
                space: "dev".into(),
                state: "STARTED".into(),
                instances: 2,
                memory_mb: 256,
                disk_mb: 1024,
                routes: vec!["hello.apps.localhost".into()],
                stack: "tiny".into(),
                detected_buildpack: "staticfile_buildpack".into(),
                detected_start_command: "sh boot.sh".into(),
                updated_at: t + 1,
                package_uploaded_at: t,
                env: [("A".to_string(), "1".to_string())].into(),
                ..Default::default()
            }),
            instances: vec![
                pb::AppInstance {
                    index: 1,
                    state: "crashed".into(),
                    since: t,
                    details: "APP/PROC/WEB: Exited with status 1".into(),
                    ..Default::default()
                },
                pb::AppInstance {
                    index: 0,
                    state: "running".into(),
                    since: t,
                    cpu_percentage: 0.3,
                    memory_bytes: 12_687_769,
                    memory_quota_bytes: 256 << 20,
                    disk_bytes: 5_452_595,
                    disk_quota_bytes: 1 << 30,
                    ..Default::default()
                },
            ],
            processes: vec![],
        }
    }

    #[test]
    fn app_detail_renders_like_cf_app() {
        let text = app_detail(&sample(), Style { color: false });
        let expected = "\
name:              hello
requested state:   started
routes:            hello.apps.localhost
last uploaded:     2026-11-27T12:00:00Z
stack:             tiny
buildpacks:        staticfile_buildpack

type:            web
instances:       1/2
memory usage:    256M
start command:   sh boot.sh
     state     since                  cpu    memory          disk         details
#0   running   2026-11-27T12:00:00Z   0.3%   12.1M of 256M   5.2M of 1G
#1   crashed   2026-11-27T12:00:00Z   0.0%   0B of 256M      0B of 1G     APP/PROC/WEB: Exited with status 1
";
        assert_eq!(text, expected);
        let coloured = app_detail(&sample(), Style { color: true });
        assert!(coloured.contains("\x1b[32mrunning\x1b[0m   "), "{coloured}");
        assert!(coloured.contains("\x1b[31mcrashed\x1b[0m"), "{coloured}");
        assert!(coloured.contains("\x1b[1mname:\x1b[0m"), "{coloured}");
    }

    #[test]
    fn app_detail_shows_each_process_type() {
        let mut d = sample();
        let web = pb::AppProcess { r#type: "web".into(), instances: 2, memory_mb: 256, ..Default::default() };
        let worker = pb::AppProcess {
            r#type: "worker".into(),
            instances: 0,
            memory_mb: 128,
            detected_command: "./work".into(),
            ..Default::default()
        };
        d.processes = vec![
            pb::ProcessDetail { process: Some(web), instances: d.instances.clone() },
            pb::ProcessDetail { process: Some(worker), instances: vec![] },
        ];
        let text = app_detail(&d, Style { color: false });
        let web_at = text.find("type:            web").expect("web section");
        let worker_at = text.find("type:            worker").expect("worker section");
        assert!(web_at < worker_at, "{text}");
        let worker_part = &text[worker_at..];
        assert!(worker_part.contains("instances:       0/0"), "{text}");
        assert!(worker_part.contains("memory usage:    128M"), "{text}");
        assert!(worker_part.contains("start command:   ./work"), "{text}");
        assert!(worker_part.contains("There are no running instances of this process."), "{text}");
        // Web's falls back to the app's detected command.
        assert!(text[web_at..worker_at].contains("start command:   sh boot.sh"), "{text}");
        assert!(text[web_at..worker_at].contains("#1   crashed"), "{text}");
    }

    #[test]
    fn apps_table_shows_processes_and_routes() {
        let d = sample();
        let list = pb::ListAppsResponse { apps: vec![pb::AppSummary { app: d.app, running_instances: 1 }] };
        let text = apps_table(&list, false, Style::default());
        assert_eq!(
            text,
            "name    requested state   processes   routes\nhello   started           web:1/2     hello.apps.localhost\n"
        );
        assert!(apps_table(&list, true, Style::default()).starts_with("name    space   requested state"));
        assert_eq!(apps_table(&pb::ListAppsResponse::default(), false, Style::default()), "No apps found\n");
    }

    #[test]
    fn json_renders_the_messages() {
        let v = app_detail_json(&sample());
        assert_eq!(v["app"]["name"], "hello");
        assert_eq!(v["app"]["memory_mb"], 256);
        assert_eq!(v["app"]["env"]["A"], "1");
        assert_eq!(v["instances"][1]["state"], "running");
        assert_eq!(v["instances"][1]["memory_bytes"], 12_687_769);
        assert_eq!(app_detail_json(&pb::AppDetail::default())["app"], Value::Null);
        let cells = pb::ListCellsResponse {
            cells: vec![pb::CellStatus {
                cell_id: "c1".into(),
                capacity: Some(pb::Resources { memory_mb: 8192, disk_mb: 16384, containers: 250 }),
                ..Default::default()
            }],
        };
        let v = cells_json(&cells);
        assert_eq!(v["cells"][0]["capacity"]["containers"], 250);
        assert_eq!(v["cells"][0]["available"], Value::Null);
        let text = to_json_text(&list_apps_json(&pb::ListAppsResponse::default()));
        assert_eq!(serde_json::from_str::<Value>(&text).ok(), Some(json!({"apps": []})));
    }

    #[test]
    fn log_lines_look_like_cf_logs() {
        let e = pb::LogEnvelope {
            source_type: "APP/PROC/WEB".into(),
            source_instance: "0".into(),
            message_type: pb::log_envelope::MessageType::Err as i32,
            timestamp: 1_795_780_800 * 1_000_000_000,
            message: "boom\nsecond\n".into(),
            log_guid: String::new(),
        };
        assert_eq!(
            log_lines(&e, Style::default()),
            "   2026-11-27T12:00:00.00+0000 [APP/PROC/WEB/0] ERR boom\n   2026-11-27T12:00:00.00+0000 [APP/PROC/WEB/0] ERR second\n"
        );
        let stg = pb::LogEnvelope { source_type: "STG".into(), message: "hi".into(), ..Default::default() };
        assert_eq!(log_lines(&stg, Style::default()), "   1970-01-01T00:00:00.00+0000 [STG] OUT hi\n");
    }

    #[test]
    fn events_and_env_render() {
        let r = pb::EventsResponse {
            events: vec![pb::AppEvent {
                r#type: "app.crash".into(),
                actor: "hello".into(),
                timestamp: 1_795_780_800 * 1_000_000_000,
                metadata: [("reason".to_string(), "CRASHED".to_string()), ("index".to_string(), "0".to_string())]
                    .into(),
                ..Default::default()
            }],
        };
        assert_eq!(
            events_table(&r, Style::default()),
            "time                   event       actor   description\n2026-11-27T12:00:00Z   app.crash   hello   index: 0, reason: CRASHED\n"
        );
        let env = pb::AppEnv {
            user: [("B".to_string(), "2".to_string()), ("A".to_string(), "1".to_string())].into(),
            vcap_services: r#"{"user-provided":[]}"#.into(),
            ..Default::default()
        };
        let text = env_text(&env, Style::default());
        assert!(
            text.starts_with(
                "System-Provided:\nVCAP_SERVICES: {\n  \"user-provided\": []\n}\n\nVCAP_APPLICATION: {}\n"
            )
        );
        assert!(text.ends_with("User-Provided:\nA: 1\nB: 2\n"), "{text}");
    }
}
