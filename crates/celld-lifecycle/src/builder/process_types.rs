//! Where the start commands come from: a buildpack's `launch.yml`, the final
//! buildpack's `bin/release` (when it wrote no `launch.yml`), and the app's
//! Procfile, each overriding the one before by process type. The parsers are
//! public for the fuzz targets and property tests.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::errors::{BuildError, RELEASE_FAIL_MSG, os_error_text};
use super::files::read_small;
use super::staging::Builder;

/// `release` prints YAML; more than this is not a release.
const RELEASE_OUTPUT_CAP: usize = 10 << 20;

/// A YAML scalar as Go's yaml.v2 puts it into a string (null → "").
pub(super) fn yaml_scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some(String::new()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Tagged(t) => yaml_scalar(&t.value),
        Value::Sequence(_) | Value::Mapping(_) => None,
    }
}

/// A YAML document that must be a map of strings (a Procfile, a release's
/// `default_process_types`); an empty document is an empty map.
fn string_map(v: &Value) -> Result<BTreeMap<String, String>, String> {
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| match (yaml_scalar(k), yaml_scalar(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err("expected a map of strings".to_string()),
            })
            .collect(),
        Value::Tagged(t) => string_map(&t.value),
        _ => Err("expected a map of strings".to_string()),
    }
}

/// A Procfile: a YAML map of process type to command.
pub fn parse_procfile(text: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let text = std::str::from_utf8(text).map_err(|e| e.to_string())?;
    let v: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    string_map(&v)
}

/// A release's `default_process_types` (everything else in it is ignored).
pub fn parse_release(text: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let text = std::str::from_utf8(text).map_err(|e| format!("not UTF-8: {e}"))?;
    let v: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Mapping(m) => match m.get("default_process_types") {
            None => Ok(BTreeMap::new()),
            Some(d) => string_map(d).map_err(|e| format!("default_process_types: {e}")),
        },
        _ => Err("the release is not a map".to_string()),
    }
}

/// One entry of `launch.yml` (or of a release or Procfile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub process_type: String,
    pub command: String,
    pub sidecar_for: Vec<String>,
    pub memory: u64,
}

impl Proc {
    fn plain(process_type: &str, command: &str) -> Self {
        Self { process_type: process_type.into(), command: command.into(), sidecar_for: Vec::new(), memory: 0 }
    }
}

/// A buildpack's `launch.yml`: its `processes` (type, command, sidecar_for,
/// limits.memory).
pub fn parse_launch_yml(text: &[u8]) -> Result<Vec<Proc>, String> {
    let text = std::str::from_utf8(text).map_err(|e| e.to_string())?;
    let v: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let procs = match &v {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(m) => m.get("processes"),
        _ => return Err("not a map".into()),
    };
    let list = match procs {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(s)) => s,
        Some(_) => return Err("processes: not a list".into()),
    };
    let mut out = Vec::new();
    for item in list {
        let Value::Mapping(m) = item else { return Err("processes: an entry is not a map".into()) };
        let field =
            |name: &str| m.get(name).map(|v| yaml_scalar(v).ok_or(format!("processes: {name} is not a string")));
        let process_type = field("type").transpose()?.unwrap_or_default();
        let command = field("command").transpose()?.unwrap_or_default();
        let sidecar_for =
            match m.get("platforms").and_then(|p| p.get("cloudfoundry")).and_then(|c| c.get("sidecar_for")) {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Sequence(s)) => s.iter().filter_map(yaml_scalar).collect(),
                Some(_) => return Err("processes: sidecar_for is not a list".into()),
            };
        let memory = match m.get("limits").and_then(|l| l.get("memory")) {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => n.as_u64().ok_or("processes: limits.memory is not a count")?,
            Some(_) => return Err("processes: limits.memory is not a number".into()),
        };
        out.push(Proc { process_type, command, sidecar_for, memory });
    }
    Ok(out)
}

/// Entries of `b` replace those of `a` with the same type; the rest are added.
fn merge_processes(mut a: Vec<Proc>, b: Vec<Proc>) -> Vec<Proc> {
    for p in b {
        let mut replaced = false;
        for q in a.iter_mut().filter(|q| q.process_type == p.process_type) {
            *q = p.clone();
            replaced = true;
        }
        if !replaced {
            a.push(p);
        }
    }
    a
}

fn map_to_processes(map: &BTreeMap<String, String>) -> Vec<Proc> {
    map.iter().map(|(t, c)| Proc::plain(t, c)).collect()
}

impl Builder<'_> {
    fn launch_yml(&self, i: usize) -> PathBuf {
        self.deps.join(self.deps_idx(i)).join("launch.yml")
    }

    pub(super) fn merge_launch_yml(&self, i: usize, procs: Vec<Proc>) -> Result<Vec<Proc>, BuildError> {
        let path = self.launch_yml(i);
        if !path.exists() {
            return Ok(procs);
        }
        let bad = |why: String| BuildError::Failed(format!("Failed to read {}: {why}", path.display()));
        let text = read_small(&path).map_err(|e| bad(os_error_text(&e)))?;
        let more = parse_launch_yml(&text).map_err(bad)?;
        Ok(merge_processes(procs, more))
    }

    /// The final buildpack's `launch.yml`, or else its release; then the Procfile.
    pub(super) fn process_final_buildpack(&mut self, path: &Path, procs: Vec<Proc>) -> Result<Vec<Proc>, BuildError> {
        let final_index = self.cfg.supply_buildpacks().len();
        let procs = if self.launch_yml(final_index).exists() {
            self.merge_launch_yml(final_index, procs)?
        } else {
            let script = path.join("bin").join("release");
            let (out, overflow) = self
                .run_script(&script, &[self.cfg.build_dir.as_os_str()], Some(RELEASE_OUTPUT_CAP))
                .map_err(|e| BuildError::Release(format!("{RELEASE_FAIL_MSG}: {e}")))?;
            let invalid = |why: String| {
                BuildError::Release(format!("{RELEASE_FAIL_MSG}: buildpack's release output invalid: {why}"))
            };
            if overflow {
                return Err(invalid(format!("more than {RELEASE_OUTPUT_CAP} bytes")));
            }
            let types = parse_release(&out).map_err(invalid)?;
            merge_processes(procs, map_to_processes(&types))
        };

        let procfile = self.cfg.build_dir.join("Procfile");
        let commands = match read_small(&procfile) {
            Ok(text) => parse_procfile(&text)
                .map_err(|_| BuildError::Failed("Failed to read command from Procfile: invalid YAML".into()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(BuildError::Failed(format!("Failed to read command from Procfile: {}", os_error_text(&e))));
            }
        };
        Ok(merge_processes(procs, map_to_processes(&commands)))
    }
}
