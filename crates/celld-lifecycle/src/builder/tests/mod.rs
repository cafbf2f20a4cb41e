//! End-to-end tests of the builder: a whole staging in a temp dir with
//! buildpacks written as sh scripts, checked by its exit code, its log lines,
//! `result.json` and the droplet. The harness and the flag tests are here;
//! `buildpacks.rs` covers the phases and their exit codes, `archives.rs` what
//! goes in and comes out.

mod archives;
mod buildpacks;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::{BuildError, Config, FlagError, main, run_logged};
use crate::archive::Limits;
use crate::buildpack_dir_name;
use crate::testutil::{TempDir, tgz_file, tgz_names};

/// A staging in a temp dir: every path of the config under it, buildpacks
/// written as sh scripts.
struct Env {
    tmp: TempDir,
    cfg: Config,
}

impl Env {
    fn new(order: &[&str]) -> Self {
        let tmp = TempDir::new();
        let r = tmp.path();
        fs::write(r.join("canary"), "untouched").unwrap();
        let cfg = Config {
            build_dir: r.join("app"),
            output_droplet: r.join("out/droplet.tgz"),
            output_metadata: r.join("out/result.json"),
            output_build_artifacts_cache: r.join("out/cache.tgz"),
            buildpacks_dir: r.join("buildpacks"),
            buildpacks_download_dir: r.join("downloads"),
            build_artifacts_cache_dir: r.join("cache"),
            buildpack_order: order.iter().map(|s| s.to_string()).collect(),
            skip_detect: false,
            skip_cert_verify: false,
            app_package: None,
            build_artifacts_cache_archive: None,
            buildpack_archives_dir: None,
            temp_dir: r.join("tmp"),
            limits: Limits::default(),
            quiet_scripts: true,
        };
        fs::create_dir_all(&cfg.build_dir).unwrap();
        Self { tmp, cfg }
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn app(&self, rel: &str, content: &str) {
        let p = self.cfg.build_dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// A buildpack whose scripts are `#!/bin/sh` + body.
    fn bp(&self, key: &str, scripts: &[(&str, &str)]) -> PathBuf {
        let dir = self.cfg.buildpacks_dir.join(buildpack_dir_name(key));
        fs::create_dir_all(dir.join("bin")).unwrap();
        for (name, body) in scripts {
            let p = dir.join("bin").join(name);
            fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    fn run(&self) -> (Result<(), BuildError>, Vec<String>) {
        let r = run_logged(&self.cfg);
        // The temporary contents never outlive a run.
        let left: Vec<_> = fs::read_dir(&self.cfg.temp_dir).map(|d| d.collect()).unwrap_or_default();
        assert!(left.is_empty(), "temp dir not cleaned: {left:?}");
        assert_eq!(fs::read_to_string(self.root().join("canary")).unwrap(), "untouched");
        r
    }

    fn ok(&self) -> Vec<String> {
        let (r, log) = self.run();
        if let Err(e) = r {
            panic!("staging failed: {e} (exit {}); log: {log:?}", e.exit_code());
        }
        log
    }

    fn fail(&self) -> (BuildError, Vec<String>) {
        let (r, log) = self.run();
        (r.expect_err("staging should fail"), log)
    }

    fn result(&self) -> Json {
        serde_json::from_slice(&fs::read(&self.cfg.output_metadata).unwrap()).unwrap()
    }

    fn droplet(&self) -> Vec<String> {
        tgz_names(&self.cfg.output_droplet)
    }

    fn droplet_file(&self, name: &str) -> String {
        String::from_utf8(tgz_file(&self.cfg.output_droplet, name).unwrap_or_else(|| panic!("no {name}"))).unwrap()
    }
}

const RELEASE_WEB: &str = "cat <<'Y'\n---\ndefault_process_types:\n  web: the start command\nY";

fn detects(name: &str) -> String {
    format!("echo '{name}'")
}

#[test]
fn lifecycle_builder_flags() {
    let cfg = Config::parse(&["-buildpackOrder=a,b", "-skipDetect", "--buildDir", "/x", "-appPackage="]).unwrap();
    assert_eq!(cfg.buildpack_order, ["a", "b"]);
    assert!(cfg.skip_detect && !cfg.skip_cert_verify);
    assert_eq!(cfg.build_dir, Path::new("/x"));
    assert_eq!(cfg.app_package, None);
    assert_eq!(cfg.output_droplet, Path::new("/tmp/droplet"));
    assert_eq!(cfg.build_artifacts_cache_archive.as_deref(), Some(Path::new("/tmp/staging-inputs/cache.tgz")));
    assert!(!Config::parse(&["-buildpackOrder=a", "-skipDetect=false"]).unwrap().skip_detect);
    assert_eq!(Config::parse(&cfg.to_args()).unwrap(), cfg);

    let usage = |args: &[&str]| match Config::parse(args) {
        Err(FlagError::Usage(why)) => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(usage(&["-buildpackOrder=a", "-nope=1"]), "flag provided but not defined: -nope");
    assert_eq!(usage(&["-buildDir=/x"]), "missing flag: -buildpackOrder");
    assert_eq!(usage(&["-buildpackOrder=a", "-buildDir="]), "missing flag: -buildDir");
    assert!(usage(&["-buildpackOrder=a", "stray"]).contains("unexpected argument"));
    assert!(usage(&["-buildpackOrder=a", "-skipDetect=maybe"]).contains("invalid boolean"));
    assert!(usage(&["-buildpackOrder"]).contains("needs an argument"));
    assert_eq!(Config::parse(&["-h"]), Err(FlagError::Help));
    assert_eq!(main(&["-bogus"]), 1);
    assert!(super::usage().contains("-buildpackArchivesDir string"));
}
