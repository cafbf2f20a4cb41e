//! `cellctl target`: the saved API address and space, in
//! `$CELLCTL_HOME/config.json` (default `$HOME/.cellctl/config.json`, mode 0600).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_API: &str = "127.0.0.1:1801";
pub const DEFAULT_SPACE: &str = "dev";

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
}

/// Where the target is saved; None when neither CELLCTL_HOME nor HOME is set.
pub fn config_path() -> Option<PathBuf> {
    let home = |var| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    home("CELLCTL_HOME").or_else(|| home("HOME").map(|h| h.join(".cellctl"))).map(|d| d.join("config.json"))
}

/// The saved target; an absent file is an empty one.
pub fn load(path: &Path) -> Result<Target, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a cellctl config ({e}); fix it or delete it", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Target::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes the target atomically, readable by its owner only.
pub fn save(path: &Path, t: &Target) -> Result<(), String> {
    let err = |p: &Path, e: std::io::Error| format!("cannot write {}: {e}", p.display());
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| err(dir, e))?;
    }
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(|e| err(&tmp, e))?;
    let body = serde_json::to_vec_pretty(t).map_err(|e| format!("encoding the config: {e}"))?;
    f.write_all(&body).and_then(|()| f.write_all(b"\n")).and_then(|()| f.sync_all()).map_err(|e| err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, e))
}

/// The address and space to use: a flag (or its environment variable)
/// first, then the saved target, then the defaults.
pub fn resolve(api: Option<&str>, space: Option<&str>, saved: &Target) -> (String, String) {
    let api = api.map(str::to_string).or_else(|| saved.api.clone()).unwrap_or_else(|| DEFAULT_API.to_string());
    let space = space.map(str::to_string).or_else(|| saved.space.clone()).unwrap_or_else(|| DEFAULT_SPACE.to_string());
    (api, space)
}

/// What `cellctl target` prints.
pub fn show(api: &str, space: &str) -> String {
    format!("API endpoint:   {api}\nspace:          {space}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saves_and_loads_privately() {
        let dir = std::env::temp_dir().join(format!("cellctl-target-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("nested/config.json");
        assert_eq!(load(&path), Ok(Target::default()));
        let t = Target { api: Some("10.0.0.5:1801".into()), space: Some("prod".into()) };
        save(&path, &t).unwrap();
        assert_eq!(load(&path), Ok(t.clone()));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // Saving again replaces it (and keeps it private).
        let t2 = Target { api: None, space: Some("qa".into()) };
        save(&path, &t2).unwrap();
        assert_eq!(load(&path), Ok(t2));
        std::fs::write(&path, "not json").unwrap();
        assert!(load(&path).unwrap_err().contains("is not a cellctl config"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flags_beat_the_saved_target_which_beats_defaults() {
        let saved = Target { api: Some("saved:1".into()), space: Some("saved-space".into()) };
        assert_eq!(resolve(Some("flag:2"), Some("s"), &saved), ("flag:2".into(), "s".into()));
        assert_eq!(resolve(None, None, &saved), ("saved:1".into(), "saved-space".into()));
        assert_eq!(resolve(None, None, &Target::default()), (DEFAULT_API.into(), DEFAULT_SPACE.into()));
    }
}
