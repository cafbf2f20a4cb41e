//! The `launcher` command: starts an app process inside its container, as the
//! reference buildpack lifecycle's launcher does (`launcher/main.go`,
//! `launcher_unix.go`, `env/env.go`).
//!
//! Cloud Controller runs `/tmp/lifecycle/launcher app "<start command>"
//! "<execution metadata>"` as vcap in /home/vcap. The launcher
//! - takes the start command, or `start_command` from `staging_info.yml`;
//! - sets `HOME` (the app dir), `TMPDIR` and `DEPS_DIR` (its siblings `tmp`
//!   and `deps`), completes `VCAP_APPLICATION` with the instance's `host`,
//!   `instance_id`, `port` and `instance_index`, derives `DATABASE_URL` from
//!   `VCAP_SERVICES`, and unsets `VCAP_PLATFORM_OPTIONS` (no CredHub
//!   interpolation here);
//! - execs bash with a script that enters the app dir, sources the droplet's
//!   `profile.d/*`, the app's `.profile.d/*` and `.profile`, and execs the
//!   command with `bash -c` (or the buildpack's `entrypoint_prefix`).
//!
//! The environment and the script are computed by pure functions
//! ([`launch_env`], [`script`]) so they can be tested without exec'ing.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::StagingInfo;

/// Where the droplet's staging info is, relative to the working directory
/// (/home/vcap), as in the reference launcher.
pub const STAGING_INFO_FILE: &str = "staging_info.yml";

/// Printed by the script before sourcing the profile scripts…
pub const PRE_START_MESSAGE: &str = "Invoking pre-start scripts.";
/// …and before exec'ing the start command.
pub const START_MESSAGE: &str = "Invoking start command.";

/// Shells tried in order; the first that exists runs the script.
const SHELLS: [&str; 3] = ["/bin/bash", "/usr/bin/bash", "/bin/sh"];

#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    /// The reference launcher's wording.
    #[error("Invalid staging info - {0}")]
    StagingInfo(String),
    #[error("launcher: no start command specified or detected in droplet")]
    NoCommand,
    #[error("launcher: {0} contains a NUL byte")]
    Nul(&'static str),
    #[error("launcher: cannot determine the working directory: {0}")]
    Cwd(std::io::Error),
    #[error("launcher: exec {shell}: {source}")]
    Exec { shell: String, source: std::io::Error },
}

impl LauncherError {
    /// Exit codes of the reference launcher: 1 bad input, 3 environment, 4
    /// exec.
    pub fn exit_code(&self) -> i32 {
        match self {
            LauncherError::StagingInfo(_) | LauncherError::NoCommand => 1,
            LauncherError::Nul(_) | LauncherError::Cwd(_) => 3,
            LauncherError::Exec { .. } => 4,
        }
    }
}

/// `launcher <app-directory> <start-command> <metadata>`; returns only on
/// failure (on success the process becomes the app).
pub fn main(args: &[String]) -> i32 {
    let (Some(dir), Some(command), Some(_metadata)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("launcher: received only {} arguments", args.len());
        eprintln!("Usage: launcher <app-directory> <start-command> <metadata>");
        return 1;
    };
    match run(dir, command) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

/// Computes everything, then execs; only returns on failure.
fn run(dir: &str, command: &str) -> Result<std::convert::Infallible, LauncherError> {
    let staging_info = read_staging_info(Path::new(STAGING_INFO_FILE))?;
    let command = if command.is_empty() { staging_info.start_command.as_str() } else { command };
    if command.is_empty() {
        return Err(LauncherError::NoCommand);
    }
    let app_dir = absolute(Path::new(dir)).map_err(LauncherError::Cwd)?;
    let env = launch_env(std::env::vars_os(), &app_dir);
    let prefix = staging_info.config.as_ref().map(|c| c.entrypoint_prefix.as_str()).filter(|p| !p.is_empty());
    exec_shell(&app_dir, command, prefix, &env)
}

/// `staging_info.yml` (JSON, read as YAML like the reference); a missing file
/// is an empty one.
pub fn read_staging_info(path: &Path) -> Result<StagingInfo, LauncherError> {
    match std::fs::read(path) {
        Ok(data) => serde_yaml_ng::from_slice(&data)
            .map_err(|e| LauncherError::StagingInfo(format!("failed to unmarshal {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StagingInfo::default()),
        Err(e) => Err(LauncherError::StagingInfo(e.to_string())),
    }
}

/// The app process's environment: `vars` (the container's, order kept) with
/// the launcher's additions and changes.
pub fn launch_env(vars: impl IntoIterator<Item = (OsString, OsString)>, app_dir: &Path) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vars.into_iter().collect();
    let get = |env: &[(OsString, OsString)], name: &str| -> Option<String> {
        env.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| v.to_str().map(str::to_string))
    };

    let base = app_dir.parent().unwrap_or(app_dir);
    set(&mut env, "HOME", app_dir.as_os_str().to_owned());
    set(&mut env, "TMPDIR", base.join("tmp").into_os_string());
    set(&mut env, "DEPS_DIR", base.join("deps").into_os_string());

    let vcap_application = get(&env, "VCAP_APPLICATION");
    let merged = vcap_application_for_instance(
        vcap_application.as_deref(),
        &get(&env, "INSTANCE_GUID").unwrap_or_default(),
        get(&env, "PORT").as_deref(),
        get(&env, "INSTANCE_INDEX").as_deref(),
    );
    if let Some(value) = merged {
        set(&mut env, "VCAP_APPLICATION", value.into());
    }

    env.retain(|(k, _)| k != "VCAP_PLATFORM_OPTIONS");

    if let Some(url) = get(&env, "VCAP_SERVICES").filter(|s| !s.is_empty()).and_then(|s| super::database_url(&s)) {
        set(&mut env, "DATABASE_URL", url.into());
    }
    env
}

/// `VCAP_APPLICATION` with the instance's `host` ("0.0.0.0"), `instance_id`,
/// and, when they are integers, `port` and `instance_index`; keys sorted and
/// HTML-escaped like Go's `json.Marshal` of a map. Unset or empty starts from
/// `{}`; a value that is not a JSON object is left alone (`None`), as the
/// reference launcher does.
pub fn vcap_application_for_instance(
    current: Option<&str>,
    instance_guid: &str,
    port: Option<&str>,
    index: Option<&str>,
) -> Option<String> {
    let current = current.filter(|s| !s.is_empty()).unwrap_or("{}");
    let serde_json::Value::Object(mut app) = serde_json::from_str(current).ok()? else {
        return None;
    };
    app.insert("host".into(), "0.0.0.0".into());
    app.insert("instance_id".into(), instance_guid.into());
    if let Some(port) = port.and_then(go_atoi) {
        app.insert("port".into(), port.into());
    }
    if let Some(index) = index.and_then(go_atoi) {
        app.insert("instance_index".into(), index.into());
    }
    let json = super::to_go_json(&sorted(serde_json::Value::Object(app))).ok()?;
    // json.Marshal, unlike the encoder to_go_json mimics, adds no newline.
    Some(json.trim_end_matches('\n').to_string())
}

/// Go's `strconv.Atoi`: optional sign, decimal digits, nothing else.
fn go_atoi(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Objects with their keys in order at every level (Go marshals maps sorted),
/// whatever serde_json's map keeps.
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut entries: Vec<_> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(sorted).collect()),
        v => v,
    }
}

fn set(env: &mut Vec<(OsString, OsString)>, name: &str, value: OsString) {
    env.retain(|(k, _)| k != name);
    env.push((name.into(), value));
}

/// The script the shell runs, with `$1` the app dir and `$2` the start
/// command (passed as arguments, never spliced into the script). The profile
/// scripts are sourced into the shell so their exports reach the app.
/// `entrypoint` replaces `bash -c` (a buildpack's `entrypoint_prefix`; it is
/// the droplet's own, not user input).
pub fn script(entrypoint: &str) -> String {
    format!(
        r#"cd "$1" || exit 1
echo '{PRE_START_MESSAGE}'
for profile_script in ../profile.d/* .profile.d/*; do
  if [ -f "$profile_script" ]; then
    . "$profile_script"
  fi
done
if [ -f .profile ]; then
  . ./.profile
fi
shift
echo '{START_MESSAGE}'
exec {entrypoint} "$@"
"#
    )
}

/// Execs the first shell of [`SHELLS`] that exists; returns only on failure.
fn exec_shell(
    app_dir: &Path,
    command: &str,
    entrypoint_prefix: Option<&str>,
    env: &[(OsString, OsString)],
) -> Result<std::convert::Infallible, LauncherError> {
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(|_| LauncherError::Nul("an environment variable"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut last = LauncherError::Exec { shell: String::new(), source: std::io::ErrorKind::NotFound.into() };
    for shell in SHELLS {
        if !Path::new(shell).exists() {
            continue;
        }
        let name = shell.rsplit('/').next().unwrap_or(shell);
        // Without bash the app's command runs in sh too.
        let default_entrypoint = format!("{name} -c");
        let script = script(entrypoint_prefix.unwrap_or(&default_entrypoint));
        let app_dir = app_dir.to_string_lossy();
        let argv = [name, "-c", script.as_str(), "launcher", app_dir.as_ref(), command]
            .into_iter()
            .map(|a| CString::new(a).map_err(|_| LauncherError::Nul("an argument")))
            .collect::<Result<Vec<_>, _>>()?;
        let source = execve(shell, &argv, &envp);
        last = LauncherError::Exec { shell: shell.into(), source };
    }
    Err(last)
}

/// execve(2); returns the error if it returns at all.
fn execve(path: &str, argv: &[CString], envp: &[CString]) -> std::io::Error {
    let Ok(path) = CString::new(path) else {
        return std::io::ErrorKind::InvalidInput.into();
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: every pointer is a NUL-terminated string owned by `argv`/`envp`,
    // which outlive the call, and both arrays end with a null pointer.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    std::io::Error::last_os_error()
}

/// `dir` made absolute against the working directory and cleaned of `.` and
/// `..` (like Go's `filepath.Abs`), without touching the filesystem.
fn absolute(dir: &Path) -> std::io::Result<PathBuf> {
    let joined = if dir.is_absolute() { dir.to_path_buf() } else { std::env::current_dir()?.join(dir) };
    Ok(clean(&joined))
}

fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Reads one variable of a [`launch_env`] result (tests and callers).
pub fn lookup<'a>(env: &'a [(OsString, OsString)], name: &str) -> Option<&'a OsStr> {
    env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_os_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    fn get<'a>(env: &'a [(OsString, OsString)], name: &str) -> Option<&'a str> {
        lookup(env, name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn launcher_env_paths_follow_the_app_dir() {
        let env = launch_env(vars(&[("PATH", "/usr/bin:/bin"), ("HOME", "/home/vcap")]), Path::new("/home/vcap/app"));
        assert_eq!(get(&env, "HOME"), Some("/home/vcap/app"));
        assert_eq!(get(&env, "TMPDIR"), Some("/home/vcap/tmp"));
        assert_eq!(get(&env, "DEPS_DIR"), Some("/home/vcap/deps"));
        assert_eq!(get(&env, "PATH"), Some("/usr/bin:/bin"));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
        assert_eq!(clean(Path::new("/home/vcap/./app/../app/")), Path::new("/home/vcap/app"));
    }

    #[test]
    fn launcher_vcap_application_gets_the_instance_fields() {
        let env = launch_env(
            vars(&[
                ("VCAP_APPLICATION", r#"{"name":"my-app","limits":{"mem":256,"disk":1024},"uris":["a.example.com"]}"#),
                ("INSTANCE_GUID", "ig-1"),
                ("PORT", "8080"),
                ("INSTANCE_INDEX", "3"),
            ]),
            Path::new("/home/vcap/app"),
        );
        assert_eq!(
            get(&env, "VCAP_APPLICATION"),
            Some(
                r#"{"host":"0.0.0.0","instance_id":"ig-1","instance_index":3,"limits":{"disk":1024,"mem":256},"name":"my-app","port":8080,"uris":["a.example.com"]}"#
            )
        );
    }

    #[test]
    fn launcher_vcap_application_edge_cases() {
        // Unset: built from scratch.
        assert_eq!(
            vcap_application_for_instance(None, "", None, None).as_deref(),
            Some(r#"{"host":"0.0.0.0","instance_id":""}"#)
        );
        // Port and index only when they are integers (Go's Atoi).
        assert_eq!(
            vcap_application_for_instance(Some(r#"{"port":1}"#), "i", Some("80a"), Some("+2")).as_deref(),
            Some(r#"{"host":"0.0.0.0","instance_id":"i","instance_index":2,"port":1}"#)
        );
        // Not an object: left as it is.
        assert_eq!(vcap_application_for_instance(Some("[1]"), "i", None, None), None);
        assert_eq!(vcap_application_for_instance(Some("{oops"), "i", None, None), None);
        let env = launch_env(vars(&[("VCAP_APPLICATION", "{oops")]), Path::new("/a/app"));
        assert_eq!(get(&env, "VCAP_APPLICATION"), Some("{oops"));
        // HTML characters escaped as Go does.
        assert_eq!(
            vcap_application_for_instance(Some(r#"{"name":"a<b>&c"}"#), "i", None, None).as_deref(),
            Some(r#"{"host":"0.0.0.0","instance_id":"i","name":"a\u003cb\u003e\u0026c"}"#)
        );
    }

    #[test]
    fn launcher_database_url_and_platform_options() {
        let services = r#"{"p-mysql":[{"name":"db","credentials":{"uri":"mysql://u:p@h:3306/d?reconnect=true"}}]}"#;
        let env = launch_env(
            vars(&[("VCAP_SERVICES", services), ("VCAP_PLATFORM_OPTIONS", r#"{"credhub-uri":"x"}"#)]),
            Path::new("/home/vcap/app"),
        );
        assert_eq!(get(&env, "DATABASE_URL"), Some("mysql2://u:p@h:3306/d?reconnect=true"));
        assert_eq!(get(&env, "VCAP_PLATFORM_OPTIONS"), None);

        let env = launch_env(vars(&[("VCAP_SERVICES", "{}"), ("DATABASE_URL", "keep")]), Path::new("/a/app"));
        assert_eq!(get(&env, "DATABASE_URL"), Some("keep"));
        let env = launch_env(vars(&[]), Path::new("/a/app"));
        assert_eq!(get(&env, "DATABASE_URL"), None);
    }

    #[test]
    fn launcher_script_passes_the_command_as_an_argument() {
        let s = script("bash -c");
        assert!(s.contains("echo 'Invoking pre-start scripts.'"));
        assert!(s.contains("echo 'Invoking start command.'"));
        assert!(s.ends_with("exec bash -c \"$@\"\n"));
        assert!(s.find("../profile.d/*").unwrap() < s.find(".profile.d/*\"").unwrap_or(usize::MAX));
        assert!(script("/home/vcap/deps/0/bin/entry").contains("exec /home/vcap/deps/0/bin/entry \"$@\""));
    }

    #[test]
    fn launcher_staging_info() {
        let dir = TempDir::new();
        let p = dir.path().join(STAGING_INFO_FILE);
        assert_eq!(read_staging_info(&p).unwrap(), StagingInfo::default());
        std::fs::write(&p, r#"{"detected_buildpack":"b","start_command":"./run","config":{"entrypoint_prefix":"e"}}"#)
            .unwrap();
        let info = read_staging_info(&p).unwrap();
        assert_eq!(info.start_command, "./run");
        assert_eq!(info.config.unwrap().entrypoint_prefix, "e");
        std::fs::write(&p, "{[").unwrap();
        let e = read_staging_info(&p).unwrap_err();
        assert!(e.to_string().starts_with("Invalid staging info - failed to unmarshal"), "{e}");
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn launcher_usage() {
        assert_eq!(main(&["app".into(), "cmd".into()]), 1);
    }

    /// Not a test on its own: the body of [`launcher_runs_the_app`]'s child
    /// process, which re-runs this test binary with `CELLD_LAUNCHER_CHILD`
    /// set so that the exec replaces the child, not the test runner.
    #[test]
    fn launcher_child() {
        if let Some(args) = std::env::var_os("CELLD_LAUNCHER_CHILD") {
            let args: Vec<String> = serde_json::from_str(args.to_str().unwrap()).unwrap();
            std::process::exit(main(&args));
        }
    }

    fn run_child(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "launcher::tests::launcher_child", "--nocapture", "--test-threads=1"])
            .current_dir(cwd)
            .env("CELLD_LAUNCHER_CHILD", serde_json::to_string(args).unwrap())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn launcher_runs_the_app() {
        if !Path::new("/bin/bash").exists() {
            eprintln!("skipping: no /bin/bash");
            return;
        }
        let home = TempDir::new();
        let app = home.path().join("app");
        std::fs::create_dir_all(app.join(".profile.d")).unwrap();
        std::fs::create_dir_all(home.path().join("profile.d")).unwrap();
        std::fs::write(home.path().join("profile.d/0.sh"), "export FROM_DROPLET=droplet\n").unwrap();
        std::fs::write(app.join(".profile.d/x.sh"), "export GREETING=\"hello $FROM_DROPLET\"\n").unwrap();
        std::fs::write(app.join(".profile"), "export FROM_PROFILE=profile\n").unwrap();
        let services = r#"{"pg":[{"credentials":{"uri":"postgresql://h/d"}}]}"#;

        // The command is passed as an argument: quotes and `$` reach bash -c
        // untouched.
        let cmd = r#"echo "greeting=$GREETING/$FROM_PROFILE home=$HOME tmp=$TMPDIR db=$DATABASE_URL opts=${VCAP_PLATFORM_OPTIONS-unset} app=$VCAP_APPLICATION" 'it''s'"#;
        let (code, stdout, stderr) = run_child(
            home.path(),
            &["app", cmd, ""],
            &[
                ("VCAP_SERVICES", services),
                ("VCAP_PLATFORM_OPTIONS", "{}"),
                ("INSTANCE_GUID", "ig"),
                ("PORT", "8080"),
                ("INSTANCE_INDEX", "0"),
            ],
        );
        assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
        let h = home.path().display();
        assert!(stdout.contains("Invoking pre-start scripts.\n"), "{stdout}");
        assert!(
            stdout.contains(&format!(
                "Invoking start command.\ngreeting=hello droplet/profile home={h}/app tmp={h}/tmp db=postgres://h/d opts=unset \
                 app={{\"host\":\"0.0.0.0\",\"instance_id\":\"ig\",\"instance_index\":0,\"port\":8080}} its\n"
            )),
            "{stdout}\nstderr: {stderr}"
        );

        // No command: staging_info.yml's, through its entrypoint prefix.
        std::fs::write(
            home.path().join(STAGING_INFO_FILE),
            r#"{"detected_buildpack":"b","start_command":"echo from-staging-info","config":{"entrypoint_prefix":"env PREFIXED=yes bash -c"}}"#,
        )
        .unwrap();
        let (code, stdout, stderr) = run_child(home.path(), &["app", "", ""], &[]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("Invoking start command.\nfrom-staging-info\n"), "{stdout}");

        let (code, stdout, _) = run_child(home.path(), &["app", "echo prefixed=$PREFIXED; exit 7", ""], &[]);
        assert_eq!(code, 7);
        assert!(stdout.contains("prefixed=yes\n"), "{stdout}");

        // Neither: the reference launcher's message, exit 1.
        std::fs::write(home.path().join(STAGING_INFO_FILE), "{}").unwrap();
        let (code, _, stderr) = run_child(home.path(), &["app", "", ""], &[]);
        assert_eq!(code, 1);
        assert!(stderr.contains("launcher: no start command specified or detected in droplet"), "{stderr}");
    }
}
