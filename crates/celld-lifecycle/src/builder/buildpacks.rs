//! The buildpacks' own phases: finding a buildpack by key, `bin/detect` in
//! `-buildpackOrder` (first match wins), `bin/supply` for every buildpack but
//! the last with `-skipDetect`, and the final buildpack's supply + finalize
//! (or legacy compile).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::errors::{
    BuildError, COMPILE_FAIL_MSG, FINALIZE_FAIL_MSG, NO_SUPPLY_SCRIPT_MSG, SUPPLY_FAIL_MSG, ScriptError, os_error_text,
};
use super::files::{file_exists, read_small};
use super::script::Shebang;
use super::staging::Builder;
use crate::buildpack_dir_name;

pub(super) const MISSING_FINALIZE_WARNING: &str = "Warning: the last buildpack is not compatible with multi-buildpack apps and cannot make use of any dependencies supplied by the buildpacks specified before it";

/// Printed (on stdout) before running a `bin/detect` that lacks an execute bit.
pub(super) const DETECT_NOT_EXECUTABLE_WARNING: &str = "WARNING: buildpack script '/bin/detect' is not executable";

/// `detect` prints a name; more than this is cut.
const DETECT_OUTPUT_CAP: usize = 64 * 1024;

impl Builder<'_> {
    /// Where the buildpack with `key` is: its directory, or the single
    /// directory inside it when only that one has a `bin/`.
    pub(super) fn buildpack_path(&self, key: &str) -> Result<PathBuf, String> {
        let path = self.cfg.buildpacks_dir.join(buildpack_dir_name(key));
        if path.join("bin").exists() {
            return Ok(path);
        }
        let entries: Vec<_> = match fs::read_dir(&path) {
            Ok(rd) => rd.filter_map(Result::ok).collect(),
            Err(_) => {
                return Err(format!("Failed to read buildpack directory '{}' for buildpack '{key}'", path.display()));
            }
        };
        if let [only] = entries.as_slice() {
            let nested = only.path();
            if nested.join("bin").exists() {
                return Ok(nested);
            }
        }
        Err(format!("malformed buildpack does not contain a /bin dir: {key}"))
    }

    /// The first buildpack whose `bin/detect` exits 0: key, path, output.
    pub(super) fn detect(&mut self) -> Option<(String, PathBuf, String)> {
        for key in &self.cfg.buildpack_order {
            let path = match self.buildpack_path(key) {
                Ok(p) => p,
                Err(why) => {
                    self.warn(why);
                    continue;
                }
            };
            let script = path.join("bin").join("detect");
            match fs::metadata(&script) {
                Err(e) => {
                    self.warn(format!("Skipping buildpack {key}: stat {}: {}", script.display(), os_error_text(&e)));
                    continue;
                }
                // CF warns unless every execute bit is set, then execs it as is:
                // one nobody may execute fails to start and is skipped.
                Ok(m) if m.permissions().mode() & 0o111 != 0o111 => self.say(DETECT_NOT_EXECUTABLE_WARNING),
                Ok(_) => {}
            }
            let args = [self.cfg.build_dir.as_os_str()];
            match self.run_script_as(&script, &args, Some(DETECT_OUTPUT_CAP), Shebang::ExecOnly) {
                Ok((out, _)) => {
                    let name = String::from_utf8_lossy(&out).trim_end_matches(['\r', '\n']).to_string();
                    return Some((key.clone(), path, name));
                }
                // Already warned about above; CF says nothing more.
                Err(ScriptError::Spawn(_, e)) if e.raw_os_error() == Some(libc::EACCES) => {}
                Err(e @ ScriptError::Spawn(..)) => self.warn(format!("Skipping buildpack {key}: {e}")),
                Err(_) => {}
            }
        }
        None
    }

    /// With `-skipDetect`: every buildpack but the last must have
    /// `bin/supply`, and runs it. Returns the final buildpack.
    pub(super) fn run_supply_buildpacks(&mut self) -> Result<(String, PathBuf), BuildError> {
        let cfg = self.cfg;
        let supply_fail = |why: &str| BuildError::Supply(format!("{SUPPLY_FAIL_MSG}: {why}"));
        let mut paths = Vec::new();
        for key in cfg.supply_buildpacks() {
            let path = match self.buildpack_path(key) {
                Ok(path) => path,
                Err(why) => {
                    self.warn(why.clone());
                    return Err(supply_fail(&why));
                }
            };
            match file_exists(&path.join("bin").join("supply")) {
                Ok(true) => paths.push(path),
                Ok(false) => return Err(BuildError::Supply(NO_SUPPLY_SCRIPT_MSG.to_string())),
                Err(e) => return Err(supply_fail(&os_error_text(&e))),
            }
        }
        let deps = self.deps.clone();
        for (i, (key, path)) in cfg.supply_buildpacks().iter().zip(paths).enumerate() {
            let cache = cfg.supply_cache_path(key);
            let idx = self.deps_idx(i);
            let args = [cfg.build_dir.as_os_str(), cache.as_os_str(), deps.as_os_str(), OsStr::new(&idx)];
            self.run_script(&path.join("bin").join("supply"), &args, None).map_err(|e| supply_fail(&e.to_string()))?;
        }
        let final_key = cfg.buildpack_order.last().cloned().ok_or_else(|| supply_fail("no buildpacks"))?;
        let final_path = self.buildpack_path(&final_key).map_err(|why| supply_fail(&why))?;
        Ok((final_key, final_path))
    }

    /// The final buildpack: supply (if any) + finalize, or compile.
    pub(super) fn run_finalize(&mut self, path: &Path) -> Result<(), BuildError> {
        let cfg = self.cfg;
        let idx = self.deps_idx(cfg.supply_buildpacks().len());
        let cache = cfg.build_artifacts_cache_dir.join("final");
        let bin = path.join("bin");
        let has_finalize = file_exists(&bin.join("finalize")).map_err(|e| {
            BuildError::Finalize(format!("{COMPILE_FAIL_MSG}: {FINALIZE_FAIL_MSG}: {}", os_error_text(&e)))
        })?;
        if has_finalize {
            let has_supply = file_exists(&bin.join("supply")).map_err(|e| {
                BuildError::Supply(format!("{COMPILE_FAIL_MSG}: {SUPPLY_FAIL_MSG}: {}", os_error_text(&e)))
            })?;
            let (deps, profile) = (self.deps.clone(), self.profile.clone());
            let (build, cache, deps, idx) =
                (cfg.build_dir.as_os_str(), cache.as_os_str(), deps.as_os_str(), OsStr::new(&idx));
            if has_supply {
                self.run_script(&bin.join("supply"), &[build, cache, deps, idx], None)
                    .map_err(|e| BuildError::Supply(format!("{COMPILE_FAIL_MSG}: {SUPPLY_FAIL_MSG}: {e}")))?;
            }
            let args = [build, cache, deps, idx, profile.as_os_str()];
            self.run_script(&bin.join("finalize"), &args, None)
                .map_err(|e| BuildError::Finalize(format!("{COMPILE_FAIL_MSG}: {FINALIZE_FAIL_MSG}: {e}")))?;
        } else {
            if !cfg.supply_buildpacks().is_empty() {
                self.warn(MISSING_FINALIZE_WARNING);
            }
            let dir = self.deps.join(&idx);
            if let Err(e) = fs::remove_dir_all(&dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(BuildError::Compile(format!("{COMPILE_FAIL_MSG}: {}", os_error_text(&e))));
                }
            }
            let args = [cfg.build_dir.as_os_str(), cache.as_os_str()];
            self.run_script(&bin.join("compile"), &args, None)
                .map_err(|e| BuildError::Compile(format!("{COMPILE_FAIL_MSG}: {e}")))?;
        }
        Ok(())
    }
}

/// The first line of a buildpack's `VERSION` file, if it looks like one.
pub(super) fn version_file(buildpack: &Path) -> Option<String> {
    let text = read_small(&buildpack.join("VERSION")).ok()?;
    let text = String::from_utf8(text).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty() && line.len() <= 128 && !line.chars().any(char::is_control)).then(|| line.to_string())
}
