//! CF app manifests (`manifest.yml`): the YAML parsed into typed settings with
//! Cloud Controller's rules and its words for bad input. Keys are taken with
//! dashes or underscores (`health-check-type`, `health_check_type`), as CC
//! does; keys it does not know are ignored, as CC does.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use celld_base::size::parse_cf_size_mb;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("Manifest is not valid YAML: {0}")]
    Yaml(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub applications: Vec<ManifestApp>,
}

/// One application; `None` (or empty) means the manifest does not name it,
/// so an existing app keeps its setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestApp {
    pub name: String,
    /// As written, relative to the manifest's directory.
    pub path: Option<String>,
    /// The web process: the top-level settings, then a `processes` entry of
    /// type web (which wins, as in CC).
    pub web: ManifestProcess,
    /// `Some(vec![])` means detect (`buildpack: default` or `null`).
    pub buildpacks: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Route hosts (`host.domain`), in order.
    pub routes: Option<Vec<String>>,
    pub no_route: bool,
    pub random_route: bool,
    /// Service instance names to bind.
    pub services: Vec<String>,
    pub stack: Option<String>,
    pub docker_image: Option<String>,
    pub docker_username: Option<String>,
    /// Process types other than web, in the manifest's order.
    pub processes: Vec<(String, ManifestProcess)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestProcess {
    pub instances: Option<u32>,
    pub memory_mb: Option<u32>,
    pub disk_mb: Option<u32>,
    pub command: Option<String>,
    pub health_check_type: Option<String>,
    pub health_check_endpoint: Option<String>,
    pub timeout: Option<u32>,
}

impl Manifest {
    /// cf push NAME with a manifest: a single app takes the name; of several,
    /// only the one named is kept.
    pub fn only(mut self, name: &str) -> Result<Self, ManifestError> {
        if let [one] = self.applications.as_mut_slice() {
            one.name = name.to_string();
            return Ok(self);
        }
        self.applications.retain(|a| a.name == name);
        if self.applications.is_empty() {
            return Err(ManifestError::Invalid(format!("Could not find app named '{name}' in manifest")));
        }
        Ok(self)
    }
}

/// Parses a manifest; every problem of an application is reported at once,
/// CC-style: `For application 'NAME': Process "web": Memory must use …`.
pub fn parse(yaml: &str) -> Result<Manifest, ManifestError> {
    let doc: Value = serde_yaml_ng::from_str(yaml).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let Some(apps) = get(&doc, "applications") else {
        return Err(ManifestError::Invalid("Manifest must have at least one application".into()));
    };
    let Some(apps) = apps.as_sequence() else {
        return Err(ManifestError::Invalid("Applications must be an array".into()));
    };
    if apps.is_empty() {
        return Err(ManifestError::Invalid("Manifest must have at least one application".into()));
    }
    let mut out = Manifest::default();
    let mut problems = Vec::new();
    for (index, app) in apps.iter().enumerate() {
        let mut errs = Vec::new();
        let parsed = parse_app(app, &mut errs);
        if errs.is_empty() {
            out.applications.push(parsed);
        } else if parsed.name.is_empty() {
            problems.push(format!("For application at index {index}: {}", errs.join(", ")));
        } else {
            problems.push(format!("For application '{}': {}", parsed.name, errs.join(", ")));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for a in &out.applications {
        if !seen.insert(a.name.as_str()) {
            problems.push(format!("Application '{}' may only be present once", a.name));
        }
    }
    if problems.is_empty() { Ok(out) } else { Err(ManifestError::Invalid(problems.join("\n"))) }
}

/// A mapping's value by CC's key rule: dashes and underscores are the same.
fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping()?
        .iter()
        .find(|(k, _)| k.as_str().is_some_and(|k| k.replace('-', "_") == key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

/// A scalar as text (YAML gives `command: 42` as a number).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn text(v: &Value, key: &str, what: &str, errs: &mut Vec<String>) -> Option<String> {
    let raw = get(v, key)?;
    let s = scalar(raw);
    if s.is_none() {
        errs.push(format!("{what} must be a string"));
    }
    s
}

fn flag(v: &Value, key: &str, what: &str, errs: &mut Vec<String>) -> bool {
    match get(v, key) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errs.push(format!("{what} must be a boolean"));
            false
        }
    }
}

fn parse_app(v: &Value, errs: &mut Vec<String>) -> ManifestApp {
    let mut app = ManifestApp::default();
    if v.as_mapping().is_none() {
        errs.push("Application must be an object".into());
        return app;
    }
    match get(v, "name").map(scalar) {
        Some(Some(n)) if !n.trim().is_empty() => app.name = n,
        _ => errs.push("Name must not be empty".into()),
    }
    app.path = text(v, "path", "Path", errs);
    let mut web_errs = Vec::new();
    app.web = parse_process(v, &mut web_errs);
    app.stack = text(v, "stack", "Stack", errs);
    let buildpacks = get(v, "buildpacks").map(|b| strings(b, "Buildpacks", errs));
    let buildpack = text(v, "buildpack", "Buildpack", errs);
    app.buildpacks = match (buildpacks, buildpack) {
        (Some(_), Some(_)) => {
            errs.push("Buildpack and Buildpacks fields cannot be used together.".into());
            None
        }
        (Some(list), None) => Some(list),
        (None, Some(one)) if one == "default" || one == "null" => Some(Vec::new()),
        (None, Some(one)) => Some(vec![one]),
        (None, None) => None,
    };
    if let Some(env) = get(v, "env") {
        match env.as_mapping() {
            Some(m) => {
                for (k, val) in m {
                    match (scalar(k), scalar(val).or_else(|| val.is_null().then(String::new))) {
                        (Some(k), Some(val)) => {
                            app.env.insert(k, val);
                        }
                        _ => errs.push("Env must be an object of keys and values".into()),
                    }
                }
            }
            None => errs.push("Env must be an object of keys and values".into()),
        }
    }
    app.no_route = flag(v, "no_route", "No-route", errs);
    app.random_route = flag(v, "random_route", "Random-route", errs);
    if let Some(routes) = get(v, "routes") {
        let mut hosts = Vec::new();
        match routes.as_sequence() {
            Some(list) => {
                for r in list {
                    match get(r, "route").and_then(scalar) {
                        Some(route) if !route.trim().is_empty() => hosts.push(route.trim().to_lowercase()),
                        _ => errs.push("Routes must be a list of route objects".into()),
                    }
                }
            }
            None => errs.push("Routes must be a list of route objects".into()),
        }
        app.routes = Some(hosts);
    }
    if app.no_route && app.routes.as_ref().is_some_and(|r| !r.is_empty()) {
        errs.push("Cannot use the combination of properties: no-route, routes".into());
    }
    if let Some(services) = get(v, "services") {
        match services.as_sequence() {
            Some(list) => {
                for s in list {
                    let name = scalar(s).or_else(|| get(s, "name").and_then(scalar));
                    match name {
                        Some(n) if !n.is_empty() => app.services.push(n),
                        _ => errs.push("Services must be a list of service instance names".into()),
                    }
                }
            }
            None => errs.push("Services must be a list of service instance names".into()),
        }
    }
    if let Some(docker) = get(v, "docker") {
        app.docker_image = get(docker, "image").and_then(scalar);
        app.docker_username = get(docker, "username").and_then(scalar);
        if app.docker_image.is_none() {
            errs.push("Docker must have an image".into());
        }
        if app.buildpacks.is_some() {
            errs.push("Cannot use the combination of properties: docker, buildpacks".into());
        }
    }
    if let Some(processes) = get(v, "processes") {
        parse_processes(processes, &mut app, &mut web_errs, errs);
    }
    errs.extend(web_errs.into_iter().map(|e| format!("Process \"web\": {e}")));
    app
}

fn parse_processes(processes: &Value, app: &mut ManifestApp, web_errs: &mut Vec<String>, errs: &mut Vec<String>) {
    let Some(list) = processes.as_sequence() else {
        errs.push("Processes must be an array of process configurations".into());
        return;
    };
    for p in list {
        let Some(ptype) = get(p, "type").and_then(scalar).filter(|t| !t.trim().is_empty()) else {
            errs.push("All Processes must specify a type".into());
            continue;
        };
        if !ptype.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            errs.push(format!("Process \"{ptype}\": Type must contain only letters, digits, - and _"));
            continue;
        }
        if ptype == "web" {
            // CC: the processes entry of type web replaces the top-level settings it names.
            let entry = parse_process(p, web_errs);
            merge(&mut app.web, entry);
            continue;
        }
        if app.processes.iter().any(|(t, _)| *t == ptype) {
            errs.push(format!("Process \"{ptype}\" may only be present once"));
            continue;
        }
        let mut perrs = Vec::new();
        let parsed = parse_process(p, &mut perrs);
        errs.extend(perrs.into_iter().map(|e| format!("Process \"{ptype}\": {e}")));
        app.processes.push((ptype, parsed));
    }
}

fn merge(into: &mut ManifestProcess, from: ManifestProcess) {
    let ManifestProcess { instances, memory_mb, disk_mb, command, health_check_type, health_check_endpoint, timeout } =
        from;
    into.instances = instances.or(into.instances);
    into.memory_mb = memory_mb.or(into.memory_mb);
    into.disk_mb = disk_mb.or(into.disk_mb);
    into.command = command.or(into.command.take());
    into.health_check_type = health_check_type.or(into.health_check_type.take());
    into.health_check_endpoint = health_check_endpoint.or(into.health_check_endpoint.take());
    into.timeout = timeout.or(into.timeout);
}

fn parse_process(v: &Value, errs: &mut Vec<String>) -> ManifestProcess {
    let mut p = ManifestProcess::default();
    if let Some(i) = get(v, "instances") {
        match i.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => p.instances = Some(n),
            None if i.as_i64().is_some_and(|n| n < 0) => {
                errs.push("Instances must be greater than or equal to 0".into());
            }
            None => errs.push("Instances must be an integer".into()),
        }
    }
    p.memory_mb = size(v, "memory", "Memory", errs);
    p.disk_mb = size(v, "disk_quota", "Disk quota", errs);
    p.command = text(v, "command", "Command", errs);
    if let Some(t) = text(v, "health_check_type", "Health check type", errs) {
        // `none` is CC's old word for process.
        let t = if t == "none" { "process".to_string() } else { t };
        if matches!(t.as_str(), "port" | "process" | "http") {
            p.health_check_type = Some(t);
        } else {
            errs.push("Health check type must be \"port\", \"process\", or \"http\"".into());
        }
    }
    p.health_check_endpoint = text(v, "health_check_http_endpoint", "Health check http endpoint", errs);
    if let Some(e) = &p.health_check_endpoint {
        if !e.starts_with('/') {
            errs.push("Health check http endpoint must be a valid URI path".into());
        }
    }
    if let Some(t) = get(v, "timeout") {
        match t.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|n| *n >= 1) {
            Some(n) => p.timeout = Some(n),
            None => errs.push("Timeout must be greater than or equal to 1".into()),
        }
    }
    p
}

fn size(v: &Value, key: &str, what: &str, errs: &mut Vec<String>) -> Option<u32> {
    let raw = scalar(get(v, key)?).unwrap_or_default();
    match parse_cf_size_mb(&raw) {
        Ok(0) => {
            errs.push(format!("{what} must be greater than 0MB"));
            None
        }
        Ok(mb) => match u32::try_from(mb) {
            Ok(mb) => Some(mb),
            Err(_) => {
                errs.push(format!("{what} is too large"));
                None
            }
        },
        Err(e) => {
            errs.push(format!("{what} {e}"));
            None
        }
    }
}

fn strings(v: &Value, what: &str, errs: &mut Vec<String>) -> Vec<String> {
    match v.as_sequence() {
        Some(list) => {
            let out: Vec<String> = list.iter().filter_map(scalar).collect();
            if out.len() != list.len() {
                errs.push(format!("{what} must be a list of strings"));
            }
            out
        }
        None => {
            errs.push(format!("{what} must be a list of strings"));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_field() {
        let m = parse(
            "---\napplications:\n- name: shop\n  path: ./shop\n  instances: 2\n  memory: 512M\n  disk_quota: 1G\n  \
             buildpacks: [binary_buildpack]\n  command: ./web\n  env: {A: 1, B: two}\n  routes:\n  - route: shop.apps.localhost\n  \
             health-check-type: none\n  timeout: 30\n  services: [db, {name: cache}]\n  stack: tiny\n  unknown-key: ignored\n  \
             processes:\n  - type: worker\n    instances: 3\n    command: ./work\n    memory: 128M\n  - type: web\n    instances: 4\n",
        )
        .unwrap();
        let a = &m.applications[0];
        assert_eq!(a.name, "shop");
        assert_eq!(a.path.as_deref(), Some("./shop"));
        // The processes entry of type web wins over the top level.
        assert_eq!(a.web.instances, Some(4));
        assert_eq!((a.web.memory_mb, a.web.disk_mb), (Some(512), Some(1024)));
        assert_eq!(a.web.health_check_type.as_deref(), Some("process"));
        assert_eq!(a.web.timeout, Some(30));
        assert_eq!(a.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(a.routes, Some(vec!["shop.apps.localhost".to_string()]));
        assert_eq!(a.services, vec!["db".to_string(), "cache".to_string()]);
        assert_eq!(a.buildpacks, Some(vec!["binary_buildpack".to_string()]));
        assert_eq!(a.processes.len(), 1);
        let (t, w) = &a.processes[0];
        assert_eq!((t.as_str(), w.instances, w.memory_mb), ("worker", Some(3), Some(128)));
        assert_eq!(w.command.as_deref(), Some("./work"));
    }

    #[test]
    fn a_name_renames_one_app_or_picks_one_of_several() {
        let one = parse("applications:\n- name: a\n").unwrap().only("b").unwrap();
        assert_eq!(one.applications[0].name, "b");
        let two = parse("applications:\n- name: a\n- name: b\n").unwrap();
        assert_eq!(two.clone().only("b").unwrap().applications.len(), 1);
        assert_eq!(two.only("c").unwrap_err().to_string(), "Could not find app named 'c' in manifest");
    }

    #[test]
    fn buildpack_default_means_detect_and_docker() {
        let m =
            parse("applications:\n- name: a\n  buildpack: default\n- name: b\n  docker: {image: nginx, username: u}\n")
                .unwrap();
        assert_eq!(m.applications[0].buildpacks, Some(vec![]));
        assert_eq!(m.applications[1].docker_image.as_deref(), Some("nginx"));
        assert_eq!(m.applications[1].docker_username.as_deref(), Some("u"));
    }

    #[test]
    fn bad_input_gets_cc_words() {
        let e = |y: &str| parse(y).unwrap_err().to_string();
        assert_eq!(e("applications:\n- memory: 1G\n"), "For application at index 0: Name must not be empty");
        assert_eq!(
            e("applications:\n- name: a\n  memory: 200INVALID\n"),
            "For application 'a': Process \"web\": Memory must use a supported unit: B, K, KB, M, MB, G, GB, T, or TB"
        );
        assert_eq!(
            e("applications:\n- name: a\n  processes:\n  - type: worker\n    disk_quota: 1.5G\n"),
            "For application 'a': Process \"worker\": Disk quota is not a number"
        );
        assert_eq!(
            e("applications:\n- name: a\n  health-check-type: tcp\n"),
            "For application 'a': Process \"web\": Health check type must be \"port\", \"process\", or \"http\""
        );
        assert_eq!(
            e("applications:\n- name: a\n  buildpack: x\n  buildpacks: [y]\n"),
            "For application 'a': Buildpack and Buildpacks fields cannot be used together."
        );
        assert_eq!(
            e("applications:\n- name: a\n  processes:\n  - type: w\n  - type: w\n"),
            "For application 'a': Process \"w\" may only be present once"
        );
        assert_eq!(e("applications: []\n"), "Manifest must have at least one application");
        assert_eq!(e("name: a\n"), "Manifest must have at least one application");
        assert!(e("applications:\n- name: [a\n").starts_with("Manifest is not valid YAML: "));
        assert_eq!(e("applications:\n- name: a\n- name: a\n"), "Application 'a' may only be present once");
    }
}
