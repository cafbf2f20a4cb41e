//! The rep's own JSON configuration (`--rep-config`), as its BOSH job
//! template writes it: so a deployment can swap the rep's binary for celld
//! without new templates. Its values fill the matching flags that were not
//! given on the command line; keys celld does not use are listed once at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum RepConfigError {
    #[error("--rep-config {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("--rep-config {}: not a JSON object: {why}", path.display())]
    Json { path: PathBuf, why: String },
    #[error("--rep-config {}: {key}: {why}", path.display())]
    Key { path: PathBuf, key: String, why: String },
}

/// Parses a Go duration ("600s", "1m30s", "500ms"); a bare number is
/// nanoseconds, as Go's durationjson reads it.
pub fn go_duration(s: &str) -> Option<Duration> {
    if let Ok(ns) = s.parse::<u64>() {
        return Some(Duration::from_nanos(ns));
    }
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += Duration::from_secs_f64(n * scale);
        rest = &rest[unit..];
    }
    Some(total)
}

/// Keys celld reads; every other key is reported as ignored.
const USED: &[&str] = &[
    "bbs_address",
    "bbs_ca_cert_file",
    "bbs_client_cert_file",
    "bbs_client_key_file",
    "locket_address",
    "locket_ca_cert_file",
    "locket_client_cert_file",
    "locket_client_key_file",
    "ca_cert_file",
    "cert_file",
    "key_file",
    "listen_addr",
    "listen_addr_securable",
    "advertise_domain",
    "cell_id",
    "cell_index",
    "zone",
    "placement_tags",
    "optional_placement_tags",
    "preloaded_root_fs",
    "evacuation_timeout",
    "memory_mb",
    "disk_mb",
    "max_log_lines_per_second",
    "log_level",
];

/// Reads `path` into `cfg`, leaving alone the flags `given` names (by field
/// name: the command line wins). Returns the keys it ignored, sorted.
pub fn apply(path: &Path, cfg: &mut Config, given: &dyn Fn(&str) -> bool) -> Result<Vec<String>, RepConfigError> {
    // Sets a flag's field from the file unless the command line gave it.
    macro_rules! set {
        ($field:ident, $value:expr) => {
            if !given(stringify!($field)) {
                cfg.$field = $value;
            }
        };
    }
    let text = std::fs::read_to_string(path).map_err(|source| RepConfigError::Read { path: path.into(), source })?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| RepConfigError::Json { path: path.into(), why: e.to_string() })?;
    let Value::Object(map) = v else {
        return Err(RepConfigError::Json { path: path.into(), why: "the top level is not an object".into() });
    };
    let bad = |key: &str, why: &str| RepConfigError::Key { path: path.into(), key: key.into(), why: why.into() };
    let string = |key: &str| -> Result<Option<String>, RepConfigError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(key, "expected a string")),
        }
    };
    let strings = |key: &str| -> Result<Option<Vec<String>>, RepConfigError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string).ok_or_else(|| bad(key, "expected a list of strings")))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(bad(key, "expected a list of strings")),
        }
    };
    let file = |key: &str| string(key).map(|s| s.map(PathBuf::from));
    // Sizes: a number of MB or "auto" (the machine's).
    let size = |key: &str| -> Result<Option<u32>, RepConfigError> {
        match string(key)? {
            None => Ok(None),
            Some(s) if s == "auto" => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| bad(key, "expected a number of MB or \"auto\"")),
        }
    };

    if let Some(x) = string("bbs_address")? {
        set!(bbs_address, Some(x));
    }
    macro_rules! set_file {
        ($field:ident, $key:literal) => {
            if let Some(x) = file($key)? {
                set!($field, Some(x));
            }
        };
    }
    set_file!(bbs_ca_cert, "bbs_ca_cert_file");
    set_file!(bbs_client_cert, "bbs_client_cert_file");
    set_file!(bbs_client_key, "bbs_client_key_file");
    set_file!(locket_ca_cert, "locket_ca_cert_file");
    set_file!(locket_client_cert, "locket_client_cert_file");
    set_file!(locket_client_key, "locket_client_key_file");
    // The rep's one identity: its listeners' server certificate and its
    // client certificate for BBS (the bbs_*_file keys are deprecated ones
    // the rep itself no longer reads; they win when given all the same).
    set_file!(rep_ca, "ca_cert_file");
    set_file!(rep_cert, "cert_file");
    set_file!(rep_key, "key_file");
    if cfg.bbs_ca_cert.is_none() {
        set!(bbs_ca_cert, cfg.rep_ca.clone());
    }
    if cfg.bbs_client_cert.is_none() {
        set!(bbs_client_cert, cfg.rep_cert.clone());
    }
    if cfg.bbs_client_key.is_none() {
        set!(bbs_client_key, cfg.rep_key.clone());
    }
    if let Some(x) = string("locket_address")? {
        set!(locket_address, Some(x));
    }
    if let Some(x) = string("listen_addr_securable")? {
        set!(rep_listen, x);
    }
    if let Some(x) = string("listen_addr")? {
        set!(rep_admin_listen, x);
    }
    if let Some(x) = string("advertise_domain")? {
        set!(advertise_domain, x);
    }
    if let Some(x) = string("cell_id")? {
        set!(cell_id, Some(x));
    }
    match map.get("cell_index") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let n = v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| bad("cell_index", "expected an integer"))?;
            set!(cell_index, n);
        }
    }
    if let Some(x) = string("zone")? {
        set!(zone, x);
    }
    if let Some(x) = strings("placement_tags")? {
        set!(placement_tags, x);
    }
    if let Some(x) = strings("optional_placement_tags")? {
        set!(optional_placement_tags, x);
    }
    if let Some(x) = strings("preloaded_root_fs")? {
        set!(preloaded_rootfs, x);
    }
    if let Some(x) = string("evacuation_timeout")? {
        let d = go_duration(&x).ok_or_else(|| bad("evacuation_timeout", "expected a duration such as \"600s\""))?;
        set!(evacuation_timeout, d.as_secs());
    }
    if let Some(x) = size("memory_mb")? {
        set!(memory_mb, Some(x));
    }
    if let Some(x) = size("disk_mb")? {
        set!(disk_mb, Some(x));
    }
    match map.get("max_log_lines_per_second") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let n = v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("max_log_lines_per_second", "expected a number"))?;
            set!(log_rate_limit, n);
        }
    }
    if let Some(x) = string("log_level")? {
        // lager's levels; "fatal" has no tracing equivalent closer than error.
        let level = match x.as_str() {
            "debug" => "debug",
            "info" => "info,libcgroups=error",
            "error" | "fatal" => "error",
            _ => return Err(bad("log_level", "expected debug, info, error or fatal")),
        };
        set!(log_level, level.to_string());
    }
    let mut ignored: Vec<String> = map.keys().filter(|k| !USED.contains(&k.as_str())).cloned().collect();
    ignored.sort();
    Ok(ignored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("600s"), Some(Duration::from_secs(600)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("1000000000"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration("10 minutes"), None);
        assert_eq!(go_duration(""), None);
    }

    #[test]
    fn a_reps_config_fills_the_flags() {
        let dir = std::env::temp_dir().join(format!("celld-repconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("rep.json");
        std::fs::write(
            &p,
            r#"{"bbs_address":"https://127.0.0.1:8889","bbs_ca_cert_file":"/c/ca.crt","cell_id":"cell_z1-0",
               "zone":"z9","listen_addr_securable":"0.0.0.0:1801","preloaded_root_fs":["cflinuxfs4:/var/rootfs"],
               "placement_tags":["a"],"evacuation_timeout":"10m","memory_mb":"auto","disk_mb":"20000",
               "cache_path":"/var/cache","garden_network":"tcp","cell_index":3}"#,
        )
        .unwrap();
        let mut cfg = Config::parse_from(["celld"]);
        let ignored = apply(&p, &mut cfg, &|f| f == "zone").unwrap();
        assert_eq!(ignored, vec!["cache_path".to_string(), "garden_network".to_string()]);
        assert_eq!(cfg.bbs_address.as_deref(), Some("https://127.0.0.1:8889"));
        assert_eq!(cfg.cell_id.as_deref(), Some("cell_z1-0"));
        assert_eq!(cfg.preloaded_rootfs, vec!["cflinuxfs4:/var/rootfs".to_string()]);
        assert_eq!(cfg.evacuation_timeout, 600);
        assert_eq!(cfg.memory_mb, None);
        assert_eq!(cfg.disk_mb, Some(20000));
        assert_eq!(cfg.cell_index, 3);
        // The command line's --zone (still its default here) was left alone.
        assert_eq!(cfg.zone, "z1");
        std::fs::write(&p, r#"{"evacuation_timeout":"soon"}"#).unwrap();
        let e = apply(&p, &mut cfg, &|_| false).unwrap_err().to_string();
        assert!(e.contains("evacuation_timeout") && e.contains("600s"), "{e}");
        std::fs::write(&p, "[1]").unwrap();
        assert!(apply(&p, &mut cfg, &|_| false).unwrap_err().to_string().contains("not an object"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
