//! Before any buildpack runs: the app package, the previous build cache and
//! the buildpacks unpacked (untrusted archives, opened here inside the
//! container), the output directories and `contents/{deps/<IDX>,profile.d}`
//! made, and the build cache pruned to what this build's buildpacks use.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io;

use super::errors::{BuildError, os_error_text};
use super::files::make_temp_dir;
use super::staging::Builder;
use crate::archive::{self, ArchiveError};
use crate::{buildpack_dir_name, deps_index};

impl Builder<'_> {
    /// Unpacks the app package, the previous cache and the buildpacks.
    pub(super) fn unpack_inputs(&mut self) -> Result<(), BuildError> {
        let cfg = self.cfg;
        if let Some(package) = &cfg.app_package {
            archive::extract(package, &cfg.build_dir, &cfg.limits).map_err(|e| {
                let why = match e {
                    ArchiveError::Empty => "the package is empty".to_string(),
                    e => e.to_string(),
                };
                BuildError::Failed(format!("Failed to extract app package: {why}"))
            })?;
        } else {
            fs::create_dir_all(&cfg.build_dir).map_err(|e| {
                BuildError::Failed(format!("Failed to create {}: {}", cfg.build_dir.display(), os_error_text(&e)))
            })?;
        }

        if let Some(cache) = &cfg.build_artifacts_cache_archive {
            if fs::metadata(cache).is_ok_and(|m| m.len() > 0) {
                if let Err(e) = archive::extract(cache, &cfg.build_artifacts_cache_dir, &cfg.limits) {
                    // A cache is only an optimisation: build without it.
                    self.warn(format!("Failed to extract build artifacts cache, building without it: {e}"));
                    let _ = fs::remove_dir_all(&cfg.build_artifacts_cache_dir);
                }
            }
        }

        if let Some(dir) = &cfg.buildpack_archives_dir {
            let mut seen = HashSet::new();
            for key in &cfg.buildpack_order {
                // The daemon names each archive by its key; a key that is not a
                // plain file name cannot have one.
                if !seen.insert(key) || key.is_empty() || key == "." || key == ".." || key.contains('/') {
                    continue;
                }
                let file = dir.join(key);
                if !fs::symlink_metadata(&file).is_ok_and(|m| m.is_file()) {
                    continue;
                }
                let dest = cfg.buildpacks_dir.join(buildpack_dir_name(key));
                archive::extract(&file, &dest, &cfg.limits)
                    .map_err(|e| BuildError::Failed(format!("Failed to extract buildpack {key}: {e}")))?;
            }
        }
        Ok(())
    }

    /// Output directories, the supply caches, and `contents/{deps/<IDX>,profile.d}`.
    pub(super) fn setup(&mut self) -> io::Result<()> {
        let cfg = self.cfg;
        for out in [&cfg.output_droplet, &cfg.output_metadata] {
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent)?;
            }
        }
        fs::create_dir_all(cfg.build_artifacts_cache_dir.join("final"))?;
        for key in cfg.supply_buildpacks() {
            fs::create_dir_all(cfg.supply_cache_path(key))?;
        }
        self.contents = make_temp_dir(&cfg.temp_dir, "contents")?;
        self.deps = self.contents.join("deps");
        for i in 0..cfg.deps_count() {
            fs::create_dir_all(self.deps.join(deps_index(i, cfg.deps_count())))?;
        }
        self.profile = self.contents.join("profile.d");
        fs::create_dir_all(&self.profile)?;
        Ok(())
    }

    /// Keeps `final/` and the caches of this build's supply buildpacks.
    pub(super) fn clean_cache_dir(&self) -> io::Result<()> {
        let cfg = self.cfg;
        let mut keep: HashSet<OsString> = HashSet::from([OsString::from("final")]);
        keep.extend(cfg.supply_buildpacks().iter().map(|k| OsString::from(buildpack_dir_name(k))));
        for entry in fs::read_dir(&cfg.build_artifacts_cache_dir)? {
            let entry = entry?;
            if keep.contains(&entry.file_name()) {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() { fs::remove_dir_all(&path)? } else { fs::remove_file(&path)? }
        }
        Ok(())
    }
}
