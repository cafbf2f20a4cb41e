//! `/tmp/lifecycle/builder`: stages an app with buildpacks, inside the staging
//! container, the way Cloud Foundry's buildpack lifecycle does.
//!
//! Cloud Foundry downloads the package, cache and buildpacks into place before
//! its builder runs; here the daemon streams them in as files and the builder
//! unpacks them itself (`-appPackage`, `-buildArtifactsCacheArchive`,
//! `-buildpackArchivesDir`), so the untrusted archives are opened by the
//! unprivileged `vcap` user inside the container, never by the daemon.
//!
//! Then, as the reference runner: a temporary `contents/` with `deps/<IDX>`
//! and `profile.d/`; the build cache pruned to `final/` plus one directory per
//! supply buildpack; detect (or, with `-skipDetect`, supply for every buildpack
//! but the last); finalize or compile; `launch.yml` / release / Procfile into
//! process types; `staging_info.yml` and `result.json`; the droplet
//! (`./app ./deps ./profile.d ./staging_info.yml ./tmp ./logs`) and the new
//! build cache as gzipped tars.
//!
//! Buildpack scripts inherit the builder's environment, working directory,
//! stdout and stderr (their output is never buffered here, only `detect`'s and
//! `release`'s stdout, which the lifecycle reads, up to a cap); stdin is
//! `/dev/null`. Exit codes: 222 detect, 223 compile, 224 release, 225 supply,
//! 226 finalize, 1 for everything else.
//!
//! Each phase lives in its own file and adds its methods to the one
//! `Builder` (`staging.rs`) a run carries: `flags.rs` (the command line),
//! `inputs.rs` (unpacking, the `contents/` layout, the cache), `buildpacks.rs`
//! (detect, supply, finalize or compile), `process_types.rs` (`launch.yml`,
//! release, Procfile), `outputs.rs` (`staging_info.yml`, `result.json`,
//! droplet, cache); `script.rs` runs buildpack scripts, `errors.rs` holds the
//! exit codes' errors and `files.rs` the small file helpers.
//! This file only strings them together.

mod buildpacks;
mod errors;
mod files;
mod flags;
mod inputs;
mod outputs;
mod process_types;
mod script;
mod staging;
#[cfg(test)]
mod tests;

pub use errors::BuildError;
pub use flags::{Config, FlagError, usage};
pub use process_types::{Proc, parse_launch_yml, parse_procfile, parse_release};

use std::fs;
use std::path::Path;

use errors::os_error_text;
use outputs::lifecycle_metadata;
use staging::Builder;

use crate::StagingResult;

/// The `builder` command: parses `args` (without the program name), runs,
/// prints the reason on failure and returns the exit code.
pub fn main<S: AsRef<str>>(args: &[S]) -> i32 {
    let cfg = match Config::parse(args) {
        Ok(cfg) => cfg,
        Err(FlagError::Help) => {
            eprint!("{}", usage());
            return 0;
        }
        Err(FlagError::Usage(why)) => {
            eprintln!("{why}");
            eprint!("{}", usage());
            return 1;
        }
    };
    match run(&cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

/// Runs a whole staging: unpack, build, package. The temporary `contents`
/// directory is removed whatever happens.
pub fn run(cfg: &Config) -> Result<(), BuildError> {
    run_logged(cfg).0
}

/// [`run`], also returning the lines the builder itself printed.
fn run_logged(cfg: &Config) -> (Result<(), BuildError>, Vec<String>) {
    let mut b = Builder::new(cfg);
    let result = b.run();
    if !b.contents.as_os_str().is_empty() {
        let _ = fs::remove_dir_all(&b.contents);
    }
    (result, b.log)
}

impl Builder<'_> {
    fn run(&mut self) -> Result<(), BuildError> {
        self.unpack_inputs()?;
        self.setup().map_err(|e| {
            BuildError::Failed(format!("Failed to set up filesystem when generating droplet: {}", os_error_text(&e)))
        })?;
        self.clean_cache_dir().map_err(|e| {
            BuildError::Failed(format!("Failed to clean the build artifacts cache: {}", os_error_text(&e)))
        })?;

        let (final_key, final_path, detect_output, keys) = if self.cfg.skip_detect {
            let (key, path) = self.run_supply_buildpacks()?;
            (key, path, String::new(), self.cfg.buildpack_order.clone())
        } else {
            let (key, path, output) = self.detect().ok_or(BuildError::Detect)?;
            (key.clone(), path, output, vec![key])
        };

        if let Err(e) = self.build(&final_key, &final_path, &detect_output) {
            // As the reference lifecycle: result.json names the buildpacks even
            // when the build failed.
            let buildpacks = self.buildpacks_metadata(&keys, None);
            let result = StagingResult {
                lifecycle_metadata: lifecycle_metadata(buildpacks),
                lifecycle_type: "buildpack".into(),
                ..Default::default()
            };
            let _ = self.write_json(&self.cfg.output_metadata, &result);
            return Err(e);
        }
        self.package()
    }

    fn build(&mut self, final_key: &str, final_path: &Path, detect_output: &str) -> Result<(), BuildError> {
        self.run_finalize(final_path)?;
        let mut procs = Vec::new();
        for i in 0..self.cfg.supply_buildpacks().len() {
            procs = self.merge_launch_yml(i, procs)?;
        }
        let procs = self.process_final_buildpack(final_path, procs)?;
        self.write_start_commands(final_key, detect_output, procs)
    }
}
