//! The phases end to end: detect order, supply and finalize, legacy compile,
//! release / launch.yml / Procfile, and each phase's exit code.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::{Value as Json, json};

use super::{Env, RELEASE_WEB, detects};
use crate::builder::buildpacks::{DETECT_NOT_EXECUTABLE_WARNING, MISSING_FINALIZE_WARNING};
use crate::builder::errors::NO_SUPPLY_SCRIPT_MSG;
use crate::buildpack_dir_name;
use crate::testutil::tgz_names;

#[test]
fn lifecycle_builder_detects_in_order_first_match_wins() {
    let env = Env::new(&["never", "second", "third"]);
    env.app("app.sh", "echo hi");
    env.bp("never", &[("detect", "exit 1"), ("compile", "touch \"$1/by-never\""), ("release", RELEASE_WEB)]);
    env.bp(
        "second",
        &[("detect", &detects("Second Pack")), ("compile", "touch \"$1/by-second\""), ("release", RELEASE_WEB)],
    );
    env.bp("third", &[("detect", &detects("Third")), ("compile", "touch \"$1/by-third\""), ("release", RELEASE_WEB)]);
    env.ok();
    assert_eq!(
        env.result(),
        json!({
            "lifecycle_metadata": {"buildpack_key": "second", "detected_buildpack": "Second Pack",
                "buildpacks": [{"key": "second", "name": "Second Pack"}]},
            "process_types": {"web": "the start command"},
            "processes": [{"type": "web", "command": "the start command"}],
            "execution_metadata": "",
            "lifecycle_type": "buildpack"
        })
    );
    assert!(env.cfg.build_dir.join("by-second").exists());
    assert!(!env.cfg.build_dir.join("by-never").exists() && !env.cfg.build_dir.join("by-third").exists());
    let info: Json = serde_json::from_str(&env.droplet_file("./staging_info.yml")).unwrap();
    assert_eq!(info, json!({"detected_buildpack": "Second Pack", "start_command": "the start command"}));
}

#[test]
fn lifecycle_builder_skips_buildpacks_without_detect() {
    let env = Env::new(&["no-detect", "no-bin", "good"]);
    env.bp("no-detect", &[("compile", "exit 0"), ("release", RELEASE_WEB)]);
    fs::create_dir_all(env.cfg.buildpacks_dir.join(buildpack_dir_name("no-bin")).join("lib")).unwrap();
    fs::create_dir_all(env.cfg.buildpacks_dir.join(buildpack_dir_name("no-bin")).join("share")).unwrap();
    env.bp("good", &[("detect", &detects("Good")), ("compile", "exit 0"), ("release", RELEASE_WEB)]);
    let log = env.ok();
    assert!(
        log.iter().any(|l| l.starts_with("Skipping buildpack no-detect: stat ") && l.contains("bin/detect")),
        "{log:?}"
    );
    assert!(log.contains(&"malformed buildpack does not contain a /bin dir: no-bin".to_string()), "{log:?}");
    assert_eq!(env.result()["lifecycle_metadata"]["buildpack_key"], "good");
}

#[test]
fn lifecycle_builder_no_detect_is_222() {
    let env = Env::new(&["a", "missing"]);
    env.bp("a", &[("detect", "echo nope; exit 1")]);
    let (e, _) = env.fail();
    assert_eq!(e.exit_code(), 222);
    assert_eq!(e.to_string(), "None of the buildpacks detected a compatible application");
    assert!(!env.cfg.output_metadata.exists(), "no result.json before a buildpack was chosen");
}

#[test]
fn lifecycle_builder_explicit_buildpack_skips_detect() {
    let mut env = Env::new(&["chosen"]);
    env.cfg.skip_detect = true;
    env.bp("chosen", &[("detect", "exit 1"), ("compile", "touch \"$1/compiled\""), ("release", RELEASE_WEB)]);
    let log = env.ok();
    assert!(env.cfg.build_dir.join("compiled").exists());
    assert!(!log.contains(&MISSING_FINALIZE_WARNING.to_string()), "a single buildpack is not multi-buildpack");
    // Without detect output or config.yml there is no name (as in Cloud Foundry).
    assert_eq!(env.result()["lifecycle_metadata"]["buildpacks"], json!([{"key": "chosen", "name": ""}]));
}

#[test]
fn lifecycle_builder_supply_then_finalize() {
    let mut env = Env::new(&["supplier", "finalizer"]);
    env.cfg.skip_detect = true;
    env.app("app.sh", "echo hi");
    env.bp(
        "supplier",
        &[
            ("detect", "exit 1"),
            ("supply", "printf 'name: Supplier\\nversion: 2.0\\n' > \"$3/$4/config.yml\"; echo s > \"$3/$4/supplied\"; echo s > \"$2/supplier-cache\""),
        ],
    );
    let fin = env.bp(
        "finalizer",
        &[
            ("supply", "echo f > \"$3/$4/supplied\""),
            (
                "finalize",
                "printf 'name: Finalizer\\nconfig:\\n  entrypoint_prefix: tini --\\n' > \"$3/$4/config.yml\"\n\
                 echo done > \"$1/finalized\"; echo 'echo hi' > \"$5/f.sh\"; echo f > \"$2/finalized\"",
            ),
            ("release", RELEASE_WEB),
        ],
    );
    fs::write(fin.join("VERSION"), "3.1.4\n").unwrap();
    env.ok();
    let r = env.result();
    assert_eq!(
        r["lifecycle_metadata"],
        json!({"buildpack_key": "finalizer", "detected_buildpack": "Finalizer", "buildpacks": [
            {"key": "supplier", "name": "Supplier", "version": "2.0"},
            {"key": "finalizer", "name": "Finalizer", "version": "3.1.4", "config": {"entrypoint_prefix": "tini --"}},
        ]})
    );
    let names = env.droplet();
    for n in [
        "./deps/0/supplied",
        "./deps/0/config.yml",
        "./deps/1/supplied",
        "./profile.d/f.sh",
        "./app/finalized",
        "./app/app.sh",
    ] {
        assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    let info: Json = serde_json::from_str(&env.droplet_file("./staging_info.yml")).unwrap();
    assert_eq!(info["config"], json!({"entrypoint_prefix": "tini --"}));
    let cache = tgz_names(&env.cfg.output_build_artifacts_cache);
    assert!(cache.contains(&format!("./{}/supplier-cache", buildpack_dir_name("supplier"))), "{cache:?}");
    assert!(cache.contains(&"./final/finalized".to_string()), "{cache:?}");
}

#[test]
fn lifecycle_builder_legacy_compile() {
    let env = Env::new(&["legacy"]);
    env.bp(
        "legacy",
        &[
            ("detect", &detects("Legacy\r\n")),
            ("compile", "echo c > \"$1/compiled\"; echo c > \"$2/compiled\""),
            ("release", RELEASE_WEB),
        ],
    );
    env.ok();
    let names = env.droplet();
    assert!(names.contains(&"./deps/".to_string()) && !names.iter().any(|n| n.starts_with("./deps/0")), "{names:?}");
    assert!(names.contains(&"./app/compiled".to_string()));
    assert_eq!(env.result()["lifecycle_metadata"]["detected_buildpack"], "Legacy");
    assert!(tgz_names(&env.cfg.output_build_artifacts_cache).contains(&"./final/compiled".to_string()));

    // A compile-only buildpack after supply buildpacks: Cloud Foundry's warning.
    let mut env = Env::new(&["s", "legacy"]);
    env.cfg.skip_detect = true;
    env.bp("s", &[("supply", "exit 0")]);
    env.bp("legacy", &[("compile", "exit 0"), ("release", RELEASE_WEB)]);
    let log = env.ok();
    assert!(log.contains(&MISSING_FINALIZE_WARNING.to_string()), "{log:?}");
}

#[test]
fn lifecycle_builder_release_types_and_procfile_override() {
    let env = Env::new(&["bp"]);
    env.app("Procfile", "web: procfile-web\nclock: ./clock --every 5\n");
    env.bp(
        "bp",
        &[
            ("detect", "echo BP"),
            ("compile", "exit 0"),
            (
                "release",
                "cat <<'Y'\n---\nconfig_vars:\n  A: b\ndefault_process_types:\n  web: bp-web\n  worker: bp-worker\nY",
            ),
        ],
    );
    env.ok();
    let r = env.result();
    assert_eq!(r["process_types"], json!({"web": "procfile-web", "worker": "bp-worker", "clock": "./clock --every 5"}));
    assert_eq!(
        r["processes"],
        json!([{"type": "web", "command": "procfile-web"}, {"type": "worker", "command": "bp-worker"},
               {"type": "clock", "command": "./clock --every 5"}])
    );
    let info: Json = serde_json::from_str(&env.droplet_file("./staging_info.yml")).unwrap();
    assert_eq!(info["start_command"], "procfile-web");
}

#[test]
fn lifecycle_builder_launch_yml_replaces_release() {
    let mut env = Env::new(&["s", "f"]);
    env.cfg.skip_detect = true;
    env.bp(
        "s",
        &[("supply", "printf 'processes:\\n- type: worker\\n  command: from-supply\\n' > \"$3/$4/launch.yml\"")],
    );
    env.bp(
        "f",
        &[
            ("finalize", "cat > \"$3/$4/launch.yml\" <<'Y'\nprocesses:\n- type: web\n  command: from-launch\n- type: helper\n  command: side\n  platforms:\n    cloudfoundry:\n      sidecar_for: [web]\n  limits:\n    memory: 64\nY"),
            ("release", "exit 9"),
        ],
    );
    env.ok();
    let r = env.result();
    assert_eq!(r["process_types"], json!({"web": "from-launch", "worker": "from-supply"}));
    assert_eq!(r["sidecars"], json!([{"name": "helper", "process_types": ["web"], "command": "side", "memory": 64}]));
}

#[test]
fn lifecycle_builder_no_start_command_still_stages() {
    let env = Env::new(&["bp"]);
    env.bp(
        "bp",
        &[("detect", "echo BP"), ("compile", "exit 0"), ("release", "echo '---'; echo 'default_process_types: {}'")],
    );
    let log = env.ok();
    assert!(log.contains(&"No start command specified by buildpack or via Procfile.".to_string()));
    assert!(log.contains(&"App will not start unless a command is provided at runtime.".to_string()));
    assert_eq!(env.result()["process_types"], json!({}));
    assert!(env.result().get("processes").is_none());
}

#[test]
fn lifecycle_builder_compile_failure_is_223_and_writes_result() {
    let env = Env::new(&["bp"]);
    env.bp("bp", &[("detect", "echo BP"), ("compile", "exit 3"), ("release", RELEASE_WEB)]);
    let (e, _) = env.fail();
    assert_eq!((e.exit_code(), e.to_string()), (223, "Failed to compile droplet: exit status 3".to_string()));
    assert_eq!(
        env.result(),
        json!({"lifecycle_metadata": {"buildpack_key": "bp", "detected_buildpack": "", "buildpacks": [{"key": "bp", "name": ""}]},
               "process_types": null, "execution_metadata": "", "lifecycle_type": "buildpack"})
    );
    assert!(!env.cfg.output_droplet.exists());
    // Killed by a signal.
    let env = Env::new(&["bp"]);
    env.bp("bp", &[("detect", "echo BP"), ("compile", "kill -9 $$"), ("release", RELEASE_WEB)]);
    assert_eq!(env.fail().0.to_string(), "Failed to compile droplet: signal: killed");
}

#[test]
fn lifecycle_builder_release_failures_are_224() {
    for (release, why) in [
        ("exit 2", "Failed to build droplet release: exit status 2"),
        ("echo '['", "Failed to build droplet release: buildpack's release output invalid: "),
        (
            "echo 'default_process_types: [a, b]'",
            "Failed to build droplet release: buildpack's release output invalid: default_process_types",
        ),
        (
            "echo 'default_process_types: just text'",
            "Failed to build droplet release: buildpack's release output invalid: default_process_types",
        ),
        ("echo 'plain words'", "Failed to build droplet release: buildpack's release output invalid: "),
    ] {
        let env = Env::new(&["bp"]);
        env.bp("bp", &[("detect", "echo BP"), ("compile", "exit 0"), ("release", release)]);
        let (e, _) = env.fail();
        assert_eq!(e.exit_code(), 224, "{release}: {e}");
        assert!(e.to_string().starts_with(why), "{release}: {e}");
    }
}

#[test]
fn lifecycle_builder_supply_failures_are_225() {
    let mut env = Env::new(&["broken", "last"]);
    env.cfg.skip_detect = true;
    env.bp("broken", &[("supply", "exit 1")]);
    env.bp("last", &[("finalize", "exit 0"), ("release", RELEASE_WEB)]);
    let (e, _) = env.fail();
    assert_eq!((e.exit_code(), e.to_string()), (225, "Failed to run all supply scripts: exit status 1".to_string()));
    assert!(!env.cfg.output_metadata.exists());

    let mut env = Env::new(&["compile-only", "last"]);
    env.cfg.skip_detect = true;
    env.bp("compile-only", &[("compile", "exit 0")]);
    env.bp("last", &[("finalize", "exit 0"), ("release", RELEASE_WEB)]);
    let (e, _) = env.fail();
    assert_eq!((e.exit_code(), e.to_string()), (225, NO_SUPPLY_SCRIPT_MSG.to_string()));

    // The final buildpack's own supply.
    let mut env = Env::new(&["last"]);
    env.cfg.skip_detect = true;
    env.bp("last", &[("supply", "exit 4"), ("finalize", "exit 0"), ("release", RELEASE_WEB)]);
    let (e, _) = env.fail();
    assert_eq!(e.exit_code(), 225);
    assert_eq!(e.to_string(), "Failed to compile droplet: Failed to run all supply scripts: exit status 4");
}

#[test]
fn lifecycle_builder_finalize_failure_is_226() {
    let env = Env::new(&["bp"]);
    env.bp("bp", &[("detect", "echo BP"), ("supply", "exit 0"), ("finalize", "exit 5"), ("release", RELEASE_WEB)]);
    let (e, _) = env.fail();
    assert_eq!(e.exit_code(), 226);
    assert_eq!(e.to_string(), "Failed to compile droplet: Failed to run finalize script: exit status 5");
    assert_eq!(env.result()["lifecycle_metadata"]["buildpack_key"], "bp");
}

#[test]
fn lifecycle_builder_invalid_procfile_fails() {
    let env = Env::new(&["bp"]);
    env.app("Procfile", "[\n");
    env.bp("bp", &[("detect", "echo BP"), ("compile", "exit 0"), ("release", RELEASE_WEB)]);
    let (e, _) = env.fail();
    assert_eq!((e.exit_code(), e.to_string()), (1, "Failed to read command from Procfile: invalid YAML".to_string()));
    assert_eq!(env.result()["process_types"], Json::Null);
}

#[test]
fn lifecycle_builder_runs_scripts_that_are_not_executable() {
    let env = Env::new(&["bp"]);
    let dir = env.bp("bp", &[("detect", "echo BP"), ("compile", "touch \"$1/compiled\""), ("release", RELEASE_WEB)]);
    fs::set_permissions(dir.join("bin/compile"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(dir.join("bin/release"), "echo '---'; echo 'default_process_types: {web: no-shebang}'\n").unwrap();
    let log = env.ok();
    assert!(log.contains(&"WARNING: buildpack script '/bin/compile' is not executable".to_string()), "{log:?}");
    assert!(env.cfg.build_dir.join("compiled").exists());
    assert_eq!(env.result()["process_types"]["web"], "no-shebang");
}

#[test]
fn lifecycle_builder_warns_about_a_detect_without_every_execute_bit() {
    // Nobody may execute it: skipped (never run through its shebang). Only its
    // owner may: warned about, then run as is (root may), and it matches.
    for (mode, winner) in [(0o644, "good"), (0o744, "odd")] {
        let env = Env::new(&["odd", "good"]);
        let dir = env.bp("odd", &[("detect", &detects("Odd")), ("compile", "exit 0"), ("release", RELEASE_WEB)]);
        fs::set_permissions(dir.join("bin/detect"), fs::Permissions::from_mode(mode)).unwrap();
        env.bp("good", &[("detect", &detects("Good")), ("compile", "exit 0"), ("release", RELEASE_WEB)]);
        let log = env.ok();
        assert!(log.contains(&DETECT_NOT_EXECUTABLE_WARNING.to_string()), "{mode:o}: {log:?}");
        assert!(!log.iter().any(|l| l.contains("Skipping buildpack odd")), "CF prints only the warning: {log:?}");
        assert_eq!(env.result()["lifecycle_metadata"]["buildpack_key"], winner, "{mode:o}");
    }
}
