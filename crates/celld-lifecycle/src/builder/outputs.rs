//! What a staging leaves: `staging_info.yml` and `result.json` (process
//! types, sidecars, each buildpack's name, version and config as its
//! `config.yml` says), the droplet and the new build cache.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_yaml_ng::Value;

use super::buildpacks::version_file;
use super::errors::{BuildError, os_error_text};
use super::files::read_small;
use super::process_types::{Proc, yaml_scalar};
use super::staging::Builder;
use crate::archive::{self, ArchiveError};
use crate::{BuildpackConfig, BuildpackMetadata, LifecycleMetadata, Process, Sidecar, StagingInfo, StagingResult};

impl Builder<'_> {
    pub(super) fn write_start_commands(
        &mut self,
        final_key: &str,
        detect_output: &str,
        procs: Vec<Proc>,
    ) -> Result<(), BuildError> {
        let mut process_types = BTreeMap::new();
        let mut processes = Vec::new();
        let mut sidecars = Vec::new();
        for p in procs {
            if p.sidecar_for.is_empty() {
                process_types.insert(p.process_type.clone(), p.command.clone());
                processes.push(Process { process_type: p.process_type, command: p.command });
            } else {
                sidecars.push(Sidecar {
                    name: p.process_type,
                    process_types: p.sidecar_for,
                    command: p.command,
                    memory: p.memory,
                });
            }
        }
        let web = process_types.get("web").cloned().unwrap_or_default();
        if web.is_empty() {
            self.warn("No start command specified by buildpack or via Procfile.");
            self.warn("App will not start unless a command is provided at runtime.");
        }

        let buildpacks = if self.cfg.skip_detect {
            self.buildpacks_metadata(&self.cfg.buildpack_order, None)
        } else {
            self.buildpacks_metadata(&[final_key.to_string()], Some(detect_output))
        };
        let last = buildpacks.last().cloned().unwrap_or_default();
        let info =
            StagingInfo { detected_buildpack: last.name.clone(), start_command: web, config: last.config.clone() };
        self.write_json(&self.contents.join("staging_info.yml"), &info)?;
        let result = StagingResult {
            lifecycle_metadata: lifecycle_metadata(buildpacks),
            process_types: Some(process_types),
            processes,
            sidecars,
            execution_metadata: String::new(),
            lifecycle_type: "buildpack".into(),
        };
        self.write_json(&self.cfg.output_metadata, &result)
    }

    /// Each buildpack's key, and what its `deps/<IDX>/config.yml` says: name,
    /// version, `config:`, `output_metadata:`. Without a version there, the
    /// buildpack's `VERSION` file gives it. In detect mode, a buildpack with no
    /// name is named by its detect output.
    pub(super) fn buildpacks_metadata(&self, keys: &[String], detect_output: Option<&str>) -> Vec<BuildpackMetadata> {
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let mut m = BuildpackMetadata { key: key.clone(), ..Default::default() };
            let config = self.deps.join(self.deps_idx(i)).join("config.yml");
            let doc = read_small(&config)
                .ok()
                .and_then(|t| String::from_utf8(t).ok())
                .and_then(|t| serde_yaml_ng::from_str::<Value>(&t).ok());
            if let Some(Value::Mapping(doc)) = doc {
                m.name = doc.get("name").and_then(yaml_scalar).unwrap_or_default();
                m.version = doc.get("version").and_then(yaml_scalar).unwrap_or_default();
                m.config = match doc.get("config") {
                    Some(Value::Mapping(c)) => Some(BuildpackConfig {
                        entrypoint_prefix: c.get("entrypoint_prefix").and_then(yaml_scalar).unwrap_or_default(),
                    }),
                    _ => None,
                };
                m.output_metadata = match doc.get("output_metadata") {
                    Some(v @ Value::Mapping(map)) if !map.is_empty() => {
                        serde_json::to_value(v).ok().and_then(|j| j.as_object().cloned())
                    }
                    _ => None,
                };
            }
            if m.version.is_empty() {
                m.version = self.buildpack_path(key).ok().and_then(|p| version_file(&p)).unwrap_or_default();
            }
            if m.name.is_empty() {
                if let Some(name) = detect_output {
                    m.name = name.to_string();
                }
            }
            out.push(m);
        }
        out
    }

    pub(super) fn write_json<T: serde::Serialize>(&self, path: &Path, value: &T) -> Result<(), BuildError> {
        let fail = |why: String| BuildError::Failed(format!("Failed to write {}: {why}", path.display()));
        let json = crate::to_go_json(value).map_err(|e| fail(e.to_string()))?;
        fs::write(path, json).map_err(|e| fail(os_error_text(&e)))
    }

    /// The droplet (`./app ./deps ./profile.d ./staging_info.yml ./tmp
    /// ./logs`) and the new build cache.
    pub(super) fn package(&mut self) -> Result<(), BuildError> {
        let cfg = self.cfg;
        for name in ["tmp", "logs"] {
            fs::create_dir_all(self.contents.join(name)).map_err(|e| {
                BuildError::Failed(format!("Failed to set up droplet filesystem: {}", os_error_text(&e)))
            })?;
        }
        let droplet_fail = |e: ArchiveError| BuildError::Failed(format!("Failed to compress droplet filesystem: {e}"));
        let mut w = archive::TgzWriter::create(&cfg.output_droplet, &self.contents).map_err(droplet_fail)?;
        w.append_tree("./app", &cfg.build_dir).map_err(droplet_fail)?;
        for name in ["deps", "profile.d", "staging_info.yml", "tmp", "logs"] {
            w.append_tree(format!("./{name}"), &self.contents.join(name)).map_err(droplet_fail)?;
        }
        w.finish().map_err(droplet_fail)?;

        if let Some(parent) = cfg.output_build_artifacts_cache.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| {
                BuildError::Failed(format!("Failed to create output build artifacts cache dir: {}", os_error_text(&e)))
            })?;
        }
        archive::pack_dir_tgz(&cfg.build_artifacts_cache_dir, &cfg.output_build_artifacts_cache)
            .map_err(|e| BuildError::Failed(format!("Failed to compress build artifacts: {e}")))
    }
}

pub(super) fn lifecycle_metadata(buildpacks: Vec<BuildpackMetadata>) -> LifecycleMetadata {
    let last = buildpacks.last().cloned().unwrap_or_default();
    LifecycleMetadata { buildpack_key: last.key, detected_buildpack: last.name, buildpacks }
}
