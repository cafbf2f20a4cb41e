//! (Long because: CF's whole buildpack lifecycle (detect, supply/finalize, compile, release, droplet) in one static binary; issue 18 splits it by phase.)
//!
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

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_yaml_ng::Value;

use super::archive::{self, ArchiveError, Limits};
use super::{
    BuildpackConfig, BuildpackMetadata, COMPILE_FAIL_CODE, DETECT_FAIL_CODE, FINALIZE_FAIL_CODE, LifecycleMetadata,
    Process, RELEASE_FAIL_CODE, SUPPLY_FAIL_CODE, Sidecar, StagingInfo, StagingResult, buildpack_dir_name, deps_index,
};

const DETECT_FAIL_MSG: &str = "None of the buildpacks detected a compatible application";
const COMPILE_FAIL_MSG: &str = "Failed to compile droplet";
const RELEASE_FAIL_MSG: &str = "Failed to build droplet release";
const SUPPLY_FAIL_MSG: &str = "Failed to run all supply scripts";
const NO_SUPPLY_SCRIPT_MSG: &str =
    "Error: one of the buildpacks chosen to supply dependencies does not support multi-buildpack apps";
const MISSING_FINALIZE_WARNING: &str = "Warning: the last buildpack is not compatible with multi-buildpack apps and cannot make use of any dependencies supplied by the buildpacks specified before it";
const FINALIZE_FAIL_MSG: &str = "Failed to run finalize script";

/// `detect` prints a name; more than this is cut.
const DETECT_OUTPUT_CAP: usize = 64 * 1024;
/// `release` prints YAML; more than this is not a release.
const RELEASE_OUTPUT_CAP: usize = 10 << 20;
/// `config.yml`, `launch.yml`, `Procfile`, `VERSION`: small files.
const SMALL_FILE_CAP: u64 = 4 << 20;

/// Why the builder stopped. `Display` is the line printed on stderr, in the
/// reference lifecycle's words where it has some.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Usage(String),
    #[error("{DETECT_FAIL_MSG}")]
    Detect,
    #[error("{0}")]
    Supply(String),
    #[error("{0}")]
    Compile(String),
    #[error("{0}")]
    Finalize(String),
    #[error("{0}")]
    Release(String),
    /// Extraction, I/O, an invalid Procfile or launch.yml: exit 1.
    #[error("{0}")]
    Failed(String),
}

impl BuildError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BuildError::Detect => DETECT_FAIL_CODE,
            BuildError::Compile(_) => COMPILE_FAIL_CODE,
            BuildError::Release(_) => RELEASE_FAIL_CODE,
            BuildError::Supply(_) => SUPPLY_FAIL_CODE,
            BuildError::Finalize(_) => FINALIZE_FAIL_CODE,
            BuildError::Usage(_) | BuildError::Failed(_) => 1,
        }
    }
}

/// The builder's flags (Cloud Foundry's, single dash, plus the three input
/// archives), and a few knobs that are not flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub build_dir: PathBuf,
    pub output_droplet: PathBuf,
    pub output_metadata: PathBuf,
    pub output_build_artifacts_cache: PathBuf,
    pub buildpacks_dir: PathBuf,
    /// Accepted for compatibility; URL buildpacks are not supported here.
    pub buildpacks_download_dir: PathBuf,
    pub build_artifacts_cache_dir: PathBuf,
    pub buildpack_order: Vec<String>,
    pub skip_detect: bool,
    /// Accepted for compatibility; nothing is downloaded.
    pub skip_cert_verify: bool,
    /// The app package (zip, tar or tar.gz) to unpack into `build_dir`; `None`
    /// (`-appPackage=`) when `build_dir` is already filled.
    pub app_package: Option<PathBuf>,
    /// The previous build cache (tar.gz); a missing file means no cache.
    pub build_artifacts_cache_archive: Option<PathBuf>,
    /// Holds one archive per buildpack, named by its key; a key without a
    /// file is expected to be in `buildpacks_dir` already.
    pub buildpack_archives_dir: Option<PathBuf>,
    /// Where the temporary `contents` directory goes (not a flag: `$TMPDIR`).
    pub temp_dir: PathBuf,
    /// Extraction limits for every input archive (not a flag).
    pub limits: Limits,
    /// Send buildpack output to /dev/null (not a flag; for tests).
    pub quiet_scripts: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            build_dir: "/tmp/app".into(),
            output_droplet: "/tmp/droplet".into(),
            output_metadata: "/tmp/result.json".into(),
            output_build_artifacts_cache: "/tmp/output-cache".into(),
            buildpacks_dir: "/tmp/buildpacks".into(),
            buildpacks_download_dir: "/tmp/buildpackdownloads".into(),
            build_artifacts_cache_dir: "/tmp/cache".into(),
            buildpack_order: Vec::new(),
            skip_detect: false,
            skip_cert_verify: false,
            app_package: Some("/tmp/staging-inputs/package".into()),
            build_artifacts_cache_archive: Some("/tmp/staging-inputs/cache.tgz".into()),
            buildpack_archives_dir: Some("/tmp/staging-inputs/buildpacks".into()),
            temp_dir: std::env::temp_dir(),
            limits: Limits::default(),
            quiet_scripts: false,
        }
    }
}

/// The flags: name, whether boolean, what it is.
const FLAGS: &[(&str, bool, &str)] = &[
    ("buildDir", false, "the app's files, built in place"),
    ("outputDroplet", false, "where the droplet (tar.gz) is written"),
    ("outputMetadata", false, "where result.json is written"),
    ("outputBuildArtifactsCache", false, "where the new build cache (tar.gz) is written"),
    ("buildpacksDir", false, "buildpacks, one directory per key (xxhash64 of the key, hex)"),
    ("buildpacksDownloadDir", false, "accepted for compatibility; unused"),
    ("buildArtifactsCacheDir", false, "the build cache the buildpacks read and write"),
    ("buildpackOrder", false, "buildpack keys, comma-separated, in the order to try (or to run, with -skipDetect)"),
    ("skipDetect", true, "run the buildpacks given instead of detecting one: supply for all but the last"),
    ("skipCertVerify", true, "accepted for compatibility; unused"),
    ("appPackage", false, "the app package (zip, tar or tar.gz) to unpack into -buildDir; empty: none"),
    ("buildArtifactsCacheArchive", false, "the previous build cache (tar.gz) to unpack; a missing file is no cache"),
    ("buildpackArchivesDir", false, "buildpack archives (zip or tar.gz), each named by its key"),
];

/// Why the command line was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum FlagError {
    Help,
    Usage(String),
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn opt_path(v: &str) -> Option<PathBuf> {
    (!v.is_empty()).then(|| PathBuf::from(v))
}

impl Config {
    /// Parses flags as Go's `flag` package does (`-name=value`, `-name value`,
    /// `--name`, bare booleans), then checks Cloud Foundry's flags are not
    /// empty. Unknown flags and stray arguments are usage errors.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Config, FlagError> {
        let mut cfg = Config::default();
        let mut i = 0;
        while let Some(arg) = args.get(i) {
            let arg = arg.as_ref();
            i += 1;
            if arg == "--" {
                break;
            }
            let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|b| !b.is_empty()) else {
                return Err(FlagError::Usage(format!("unexpected argument: {arg}")));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            if name == "h" || name == "help" {
                return Err(FlagError::Help);
            }
            let Some(&(_, is_bool, _)) = FLAGS.iter().find(|(n, _, _)| *n == name) else {
                return Err(FlagError::Usage(format!("flag provided but not defined: -{name}")));
            };
            let value = if is_bool {
                let v = value.unwrap_or_else(|| "true".to_string());
                match parse_bool(&v) {
                    Some(true) => "true".to_string(),
                    Some(false) => "false".to_string(),
                    None => return Err(FlagError::Usage(format!("invalid boolean value {v:?} for -{name}"))),
                }
            } else {
                match value {
                    Some(v) => v,
                    None => {
                        let v = args.get(i).map(|v| v.as_ref().to_string());
                        i += 1;
                        v.ok_or_else(|| FlagError::Usage(format!("flag needs an argument: -{name}")))?
                    }
                }
            };
            match name {
                "buildDir" => cfg.build_dir = value.into(),
                "outputDroplet" => cfg.output_droplet = value.into(),
                "outputMetadata" => cfg.output_metadata = value.into(),
                "outputBuildArtifactsCache" => cfg.output_build_artifacts_cache = value.into(),
                "buildpacksDir" => cfg.buildpacks_dir = value.into(),
                "buildpacksDownloadDir" => cfg.buildpacks_download_dir = value.into(),
                "buildArtifactsCacheDir" => cfg.build_artifacts_cache_dir = value.into(),
                "buildpackOrder" => {
                    cfg.buildpack_order =
                        if value.is_empty() { Vec::new() } else { value.split(',').map(str::to_string).collect() }
                }
                "skipDetect" => cfg.skip_detect = value == "true",
                "skipCertVerify" => cfg.skip_cert_verify = value == "true",
                "appPackage" => cfg.app_package = opt_path(&value),
                "buildArtifactsCacheArchive" => cfg.build_artifacts_cache_archive = opt_path(&value),
                "buildpackArchivesDir" => cfg.buildpack_archives_dir = opt_path(&value),
                _ => return Err(FlagError::Usage(format!("flag provided but not defined: -{name}"))),
            }
        }
        if let Some(extra) = args.get(i) {
            return Err(FlagError::Usage(format!("unexpected argument: {}", extra.as_ref())));
        }
        let required = [
            ("buildDir", cfg.build_dir.as_os_str().is_empty()),
            ("outputDroplet", cfg.output_droplet.as_os_str().is_empty()),
            ("outputMetadata", cfg.output_metadata.as_os_str().is_empty()),
            ("outputBuildArtifactsCache", cfg.output_build_artifacts_cache.as_os_str().is_empty()),
            ("buildpacksDir", cfg.buildpacks_dir.as_os_str().is_empty()),
            ("buildpacksDownloadDir", cfg.buildpacks_download_dir.as_os_str().is_empty()),
            ("buildArtifactsCacheDir", cfg.build_artifacts_cache_dir.as_os_str().is_empty()),
            ("buildpackOrder", cfg.buildpack_order.is_empty()),
        ];
        let missing: Vec<String> =
            required.iter().filter(|(_, m)| *m).map(|(n, _)| format!("missing flag: -{n}")).collect();
        if !missing.is_empty() {
            return Err(FlagError::Usage(missing.join(", ")));
        }
        Ok(cfg)
    }

    /// The command line that gives this configuration (all flags, `-name=value`).
    pub fn to_args(&self) -> Vec<String> {
        let p = |p: &Path| p.to_string_lossy().into_owned();
        let o = |p: &Option<PathBuf>| p.as_deref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        vec![
            format!("-buildDir={}", p(&self.build_dir)),
            format!("-outputDroplet={}", p(&self.output_droplet)),
            format!("-outputMetadata={}", p(&self.output_metadata)),
            format!("-outputBuildArtifactsCache={}", p(&self.output_build_artifacts_cache)),
            format!("-buildpacksDir={}", p(&self.buildpacks_dir)),
            format!("-buildpacksDownloadDir={}", p(&self.buildpacks_download_dir)),
            format!("-buildArtifactsCacheDir={}", p(&self.build_artifacts_cache_dir)),
            format!("-buildpackOrder={}", self.buildpack_order.join(",")),
            format!("-skipDetect={}", self.skip_detect),
            format!("-skipCertVerify={}", self.skip_cert_verify),
            format!("-appPackage={}", o(&self.app_package)),
            format!("-buildArtifactsCacheArchive={}", o(&self.build_artifacts_cache_archive)),
            format!("-buildpackArchivesDir={}", o(&self.buildpack_archives_dir)),
        ]
    }

    /// Buildpacks run for `supply` only: all but the last, with `-skipDetect`.
    fn supply_buildpacks(&self) -> &[String] {
        if !self.skip_detect {
            return &[];
        }
        self.buildpack_order.split_last().map(|(_, rest)| rest).unwrap_or(&[])
    }

    fn deps_count(&self) -> usize {
        self.supply_buildpacks().len() + 1
    }

    fn supply_cache_path(&self, key: &str) -> PathBuf {
        self.build_artifacts_cache_dir.join(buildpack_dir_name(key))
    }
}

/// The usage text printed with a usage error.
pub fn usage() -> String {
    let d = Config::default();
    let defaults: BTreeMap<&str, String> = [
        ("buildDir", d.build_dir),
        ("outputDroplet", d.output_droplet),
        ("outputMetadata", d.output_metadata),
        ("outputBuildArtifactsCache", d.output_build_artifacts_cache),
        ("buildpacksDir", d.buildpacks_dir),
        ("buildpacksDownloadDir", d.buildpacks_download_dir),
        ("buildArtifactsCacheDir", d.build_artifacts_cache_dir),
        ("appPackage", d.app_package.unwrap_or_default()),
        ("buildArtifactsCacheArchive", d.build_artifacts_cache_archive.unwrap_or_default()),
        ("buildpackArchivesDir", d.buildpack_archives_dir.unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
    .collect();
    let mut s = String::from("Usage: builder [flags]\n");
    for (name, is_bool, what) in FLAGS {
        let kind = if *is_bool { "" } else { " string" };
        s.push_str(&format!("  -{name}{kind}\n    \t{what}"));
        if let Some(v) = defaults.get(name) {
            s.push_str(&format!(" (default {v:?})"));
        }
        s.push('\n');
    }
    s
}

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

/// How a buildpack script ended, worded as Go's `exec` errors are (the
/// reference lifecycle prints those).
#[derive(Debug)]
enum ScriptError {
    Exit(i32),
    Signal(i32),
    Spawn(PathBuf, io::Error),
    Wait(io::Error),
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScriptError::Exit(code) => write!(f, "exit status {code}"),
            ScriptError::Signal(sig) => write!(f, "signal: {}", signal_name(*sig)),
            ScriptError::Spawn(path, e) => write!(f, "fork/exec {}: {}", path.display(), os_error_text(e)),
            ScriptError::Wait(e) => write!(f, "wait: {}", os_error_text(e)),
        }
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGHUP => "hangup".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGQUIT => "quit".into(),
        libc::SIGILL => "illegal instruction".into(),
        libc::SIGABRT => "aborted".into(),
        libc::SIGBUS => "bus error".into(),
        libc::SIGFPE => "floating point exception".into(),
        libc::SIGKILL => "killed".into(),
        libc::SIGSEGV => "segmentation fault".into(),
        libc::SIGPIPE => "broken pipe".into(),
        libc::SIGTERM => "terminated".into(),
        n => format!("signal {n}"),
    }
}

/// "No such file or directory (os error 2)" → "no such file or directory".
fn os_error_text(e: &io::Error) -> String {
    let s = e.to_string();
    let s = match s.rfind(" (os error ") {
        Some(i) => s.get(..i).unwrap_or(&s).to_string(),
        None => s,
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => s,
    }
}

/// Reads a small file whole; larger than the cap is an error.
fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let f = fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(SMALL_FILE_CAP + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > SMALL_FILE_CAP {
        return Err(io::Error::other(format!("{} is larger than {} bytes", path.display(), SMALL_FILE_CAP)));
    }
    Ok(buf)
}

/// Go's `os.Stat(path) == nil`, with errors other than "not found" kept.
fn file_exists(path: &Path) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A YAML scalar as Go's yaml.v2 puts it into a string (null → "").
fn yaml_scalar(v: &Value) -> Option<String> {
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

struct Builder<'a> {
    cfg: &'a Config,
    /// The temporary droplet contents (empty until made).
    contents: PathBuf,
    deps: PathBuf,
    profile: PathBuf,
    /// Added to the inherited environment of every script.
    extra_env: Vec<(String, String)>,
    /// Every line the builder printed itself.
    log: Vec<String>,
}

impl<'a> Builder<'a> {
    fn new(cfg: &'a Config) -> Self {
        let mut extra_env = Vec::new();
        if let Some(url) =
            std::env::var("VCAP_SERVICES").ok().filter(|s| !s.is_empty()).and_then(|s| super::database_url(&s))
        {
            extra_env.push(("DATABASE_URL".to_string(), url));
        }
        Self {
            cfg,
            contents: PathBuf::new(),
            deps: PathBuf::new(),
            profile: PathBuf::new(),
            extra_env,
            log: Vec::new(),
        }
    }

    /// A line on stderr (the reference lifecycle's `printError`).
    fn warn(&mut self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("{line}");
        self.log.push(line);
    }

    /// A line on stdout.
    fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("{line}");
        self.log.push(line);
    }

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

    /// Unpacks the app package, the previous cache and the buildpacks.
    fn unpack_inputs(&mut self) -> Result<(), BuildError> {
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
    fn setup(&mut self) -> io::Result<()> {
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
    fn clean_cache_dir(&self) -> io::Result<()> {
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

    fn deps_idx(&self, i: usize) -> String {
        deps_index(i, self.cfg.deps_count())
    }

    /// Where the buildpack with `key` is: its directory, or the single
    /// directory inside it when only that one has a `bin/`.
    fn buildpack_path(&self, key: &str) -> Result<PathBuf, String> {
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
    fn detect(&mut self) -> Option<(String, PathBuf, String)> {
        for key in &self.cfg.buildpack_order {
            let path = match self.buildpack_path(key) {
                Ok(p) => p,
                Err(why) => {
                    self.warn(why);
                    continue;
                }
            };
            let script = path.join("bin").join("detect");
            if let Err(e) = fs::metadata(&script) {
                self.warn(format!("Skipping buildpack {key}: stat {}: {}", script.display(), os_error_text(&e)));
                continue;
            }
            match self.run_script(&script, &[self.cfg.build_dir.as_os_str()], Some(DETECT_OUTPUT_CAP)) {
                Ok((out, _)) => {
                    let name = String::from_utf8_lossy(&out).trim_end_matches(['\r', '\n']).to_string();
                    return Some((key.clone(), path, name));
                }
                Err(e @ ScriptError::Spawn(..)) => self.warn(format!("Skipping buildpack {key}: {e}")),
                Err(_) => {}
            }
        }
        None
    }

    /// With `-skipDetect`: every buildpack but the last must have
    /// `bin/supply`, and runs it. Returns the final buildpack.
    fn run_supply_buildpacks(&mut self) -> Result<(String, PathBuf), BuildError> {
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

    fn build(&mut self, final_key: &str, final_path: &Path, detect_output: &str) -> Result<(), BuildError> {
        self.run_finalize(final_path)?;
        let mut procs = Vec::new();
        for i in 0..self.cfg.supply_buildpacks().len() {
            procs = self.merge_launch_yml(i, procs)?;
        }
        let procs = self.process_final_buildpack(final_path, procs)?;
        self.write_start_commands(final_key, detect_output, procs)
    }

    /// The final buildpack: supply (if any) + finalize, or compile.
    fn run_finalize(&mut self, path: &Path) -> Result<(), BuildError> {
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

    fn launch_yml(&self, i: usize) -> PathBuf {
        self.deps.join(self.deps_idx(i)).join("launch.yml")
    }

    fn merge_launch_yml(&self, i: usize, procs: Vec<Proc>) -> Result<Vec<Proc>, BuildError> {
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
    fn process_final_buildpack(&mut self, path: &Path, procs: Vec<Proc>) -> Result<Vec<Proc>, BuildError> {
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

    fn write_start_commands(
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
    fn buildpacks_metadata(&self, keys: &[String], detect_output: Option<&str>) -> Vec<BuildpackMetadata> {
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

    fn write_json<T: serde::Serialize>(&self, path: &Path, value: &T) -> Result<(), BuildError> {
        let fail = |why: String| BuildError::Failed(format!("Failed to write {}: {why}", path.display()));
        let json = super::to_go_json(value).map_err(|e| fail(e.to_string()))?;
        fs::write(path, json).map_err(|e| fail(os_error_text(&e)))
    }

    /// The droplet (`./app ./deps ./profile.d ./staging_info.yml ./tmp
    /// ./logs`) and the new build cache.
    fn package(&mut self) -> Result<(), BuildError> {
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

    /// Runs a buildpack script with the builder's environment, cwd and
    /// stderr; stdout too unless `capture` (then up to that many bytes are
    /// kept, the rest read and dropped; the flag says whether any was).
    fn run_script(
        &mut self,
        script: &Path,
        args: &[&OsStr],
        capture: Option<usize>,
    ) -> Result<(Vec<u8>, bool), ScriptError> {
        let _ = io::stdout().flush();
        let mut child = self.spawn(script, args, capture.is_some())?;
        let mut out = Vec::new();
        let mut overflow = false;
        if let (Some(limit), Some(mut pipe)) = (capture, child.stdout.take()) {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let chunk = buf.get(..n).unwrap_or_default();
                        if out.len() + n <= limit {
                            out.extend_from_slice(chunk);
                        } else {
                            overflow = true;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let status = child.wait().map_err(ScriptError::Wait)?;
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok((out, overflow)),
            (Some(code), _) => Err(ScriptError::Exit(code)),
            (None, Some(sig)) => Err(ScriptError::Signal(sig)),
            (None, None) => Err(ScriptError::Exit(-1)),
        }
    }

    fn command(&self, program: &Path, capture: bool) -> Command {
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null());
        if capture {
            cmd.stdout(Stdio::piped());
        } else if self.cfg.quiet_scripts {
            cmd.stdout(Stdio::null());
        }
        if self.cfg.quiet_scripts {
            cmd.stderr(Stdio::null());
        }
        cmd.envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Execs the script directly (it has a shebang). One that is not
    /// executable (or has no shebang) is run through its `#!` interpreter, or
    /// `/bin/sh`, with a warning; "text file busy" (a writer elsewhere has
    /// not closed it yet) is retried for a second.
    fn spawn(&mut self, script: &Path, args: &[&OsStr], capture: bool) -> Result<Child, ScriptError> {
        let mut busy = 0;
        loop {
            let err = match self.command(script, capture).args(args).spawn() {
                Ok(child) => return Ok(child),
                Err(e) => e,
            };
            match err.raw_os_error() {
                Some(libc::ETXTBSY) if busy < 100 => {
                    busy += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Some(code @ (libc::EACCES | libc::ENOEXEC)) if fs::metadata(script).is_ok_and(|m| m.is_file()) => {
                    let Some((interpreter, arg)) = interpreter(script) else {
                        return Err(ScriptError::Spawn(script.to_path_buf(), err));
                    };
                    if code == libc::EACCES {
                        let name = script.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        self.say(format!("WARNING: buildpack script '/bin/{name}' is not executable"));
                    }
                    let mut cmd = self.command(&interpreter, capture);
                    if let Some(arg) = arg {
                        cmd.arg(arg);
                    }
                    return cmd.arg(script).args(args).spawn().map_err(|e| ScriptError::Spawn(interpreter, e));
                }
                _ => return Err(ScriptError::Spawn(script.to_path_buf(), err)),
            }
        }
    }
}

fn lifecycle_metadata(buildpacks: Vec<BuildpackMetadata>) -> LifecycleMetadata {
    let last = buildpacks.last().cloned().unwrap_or_default();
    LifecycleMetadata { buildpack_key: last.key, detected_buildpack: last.name, buildpacks }
}

/// The interpreter a script's `#!` line names (and its one optional
/// argument, as the kernel passes it), or `/bin/sh` for a script without one.
/// `None` if the script cannot be read.
fn interpreter(script: &Path) -> Option<(PathBuf, Option<OsString>)> {
    let mut head = Vec::new();
    fs::File::open(script).ok()?.take(256).read_to_end(&mut head).ok()?;
    let Some(line) = head.strip_prefix(b"#!") else { return Some((PathBuf::from("/bin/sh"), None)) };
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    let (program, arg) = match line.split_once([' ', '\t']) {
        Some((p, a)) => (p, Some(a.trim()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    if program.is_empty() {
        return Some((PathBuf::from("/bin/sh"), None));
    }
    Some((PathBuf::from(program), arg.map(OsString::from)))
}

/// The first line of a buildpack's `VERSION` file, if it looks like one.
fn version_file(buildpack: &Path) -> Option<String> {
    let text = read_small(&buildpack.join("VERSION")).ok()?;
    let text = String::from_utf8(text).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty() && line.len() <= 128 && !line.chars().any(char::is_control)).then(|| line.to_string())
}

/// A new private directory `<parent>/<prefix><random>`, as Go's `os.MkdirTemp`.
fn make_temp_dir(parent: &Path, prefix: &str) -> io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(parent)?;
    let mut last = io::Error::other("no attempt");
    for _ in 0..100 {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let seed = format!("{}-{}-{}", std::process::id(), nanos, COUNTER.fetch_add(1, Ordering::Relaxed));
        let n = xxhash_rust::xxh64::xxh64(seed.as_bytes(), 0) % 1_000_000_000;
        let path = parent.join(format!("{prefix}{n}"));
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {
                // The mode is umask-filtered; make it exact.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::testutil::{RawTar, RawZip, TempDir, tgz_file, tgz_names};
    use serde_json::{Value as Json, json};

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

    #[test]
    fn lifecycle_builder_detects_in_order_first_match_wins() {
        let env = Env::new(&["never", "second", "third"]);
        env.app("app.sh", "echo hi");
        env.bp("never", &[("detect", "exit 1"), ("compile", "touch \"$1/by-never\""), ("release", RELEASE_WEB)]);
        env.bp(
            "second",
            &[("detect", &detects("Second Pack")), ("compile", "touch \"$1/by-second\""), ("release", RELEASE_WEB)],
        );
        env.bp(
            "third",
            &[("detect", &detects("Third")), ("compile", "touch \"$1/by-third\""), ("release", RELEASE_WEB)],
        );
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
        assert!(
            names.contains(&"./deps/".to_string()) && !names.iter().any(|n| n.starts_with("./deps/0")),
            "{names:?}"
        );
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
                ("release", "cat <<'Y'\n---\nconfig_vars:\n  A: b\ndefault_process_types:\n  web: bp-web\n  worker: bp-worker\nY"),
            ],
        );
        env.ok();
        let r = env.result();
        assert_eq!(
            r["process_types"],
            json!({"web": "procfile-web", "worker": "bp-worker", "clock": "./clock --every 5"})
        );
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
        assert_eq!(
            r["sidecars"],
            json!([{"name": "helper", "process_types": ["web"], "command": "side", "memory": 64}])
        );
    }

    #[test]
    fn lifecycle_builder_no_start_command_still_stages() {
        let env = Env::new(&["bp"]);
        env.bp(
            "bp",
            &[
                ("detect", "echo BP"),
                ("compile", "exit 0"),
                ("release", "echo '---'; echo 'default_process_types: {}'"),
            ],
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
        assert_eq!(
            (e.exit_code(), e.to_string()),
            (225, "Failed to run all supply scripts: exit status 1".to_string())
        );
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
        assert_eq!(
            (e.exit_code(), e.to_string()),
            (1, "Failed to read command from Procfile: invalid YAML".to_string())
        );
        assert_eq!(env.result()["process_types"], Json::Null);
    }

    #[test]
    fn lifecycle_builder_runs_scripts_that_are_not_executable() {
        let env = Env::new(&["bp"]);
        let dir =
            env.bp("bp", &[("detect", "echo BP"), ("compile", "touch \"$1/compiled\""), ("release", RELEASE_WEB)]);
        fs::set_permissions(dir.join("bin/compile"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(dir.join("bin/release"), "echo '---'; echo 'default_process_types: {web: no-shebang}'\n").unwrap();
        let log = env.ok();
        assert!(log.contains(&"WARNING: buildpack script '/bin/compile' is not executable".to_string()), "{log:?}");
        assert!(env.cfg.build_dir.join("compiled").exists());
        assert_eq!(env.result()["process_types"]["web"], "no-shebang");
    }

    #[test]
    fn lifecycle_builder_droplet_layout() {
        let env = Env::new(&["bp"]);
        env.app("sub/file.txt", "x");
        env.bp("bp", &[("detect", "echo BP"), ("supply", "exit 0"), ("finalize", "exit 0"), ("release", RELEASE_WEB)]);
        env.ok();
        let names = env.droplet();
        let top: Vec<&str> =
            names.iter().map(String::as_str).filter(|n| n.trim_end_matches('/').matches('/').count() == 1).collect();
        assert_eq!(top, ["./app/", "./deps/", "./profile.d/", "./staging_info.yml", "./tmp/", "./logs/"]);
        assert_eq!(names.first().map(String::as_str), Some("./"));
        assert!(names.contains(&"./app/sub/file.txt".to_string()) && names.contains(&"./deps/0/".to_string()));
    }

    #[test]
    fn lifecycle_builder_build_cache_round_trip() {
        let scripts: [(&str, &str); 4] = [
            ("detect", "echo BP"),
            ("supply", "exit 0"),
            (
                "finalize",
                "if [ -f \"$2/remember\" ]; then cp \"$2/remember\" \"$1/from-cache\"; fi; echo kept > \"$2/remember\"",
            ),
            ("release", RELEASE_WEB),
        ];
        let first = Env::new(&["bp"]);
        first.bp("bp", &scripts);
        first.ok();
        assert!(!first.cfg.build_dir.join("from-cache").exists());
        assert!(tgz_names(&first.cfg.output_build_artifacts_cache).contains(&"./final/remember".to_string()));

        let mut second = Env::new(&["bp"]);
        second.bp("bp", &scripts);
        let archive = second.root().join("cache.tgz");
        fs::copy(&first.cfg.output_build_artifacts_cache, &archive).unwrap();
        second.cfg.build_artifacts_cache_archive = Some(archive);
        // Leftovers of other buildpacks are pruned.
        fs::create_dir_all(second.cfg.build_artifacts_cache_dir.join(buildpack_dir_name("gone"))).unwrap();
        fs::write(second.cfg.build_artifacts_cache_dir.join("pre-multi-file"), "x").unwrap();
        second.ok();
        assert_eq!(fs::read_to_string(second.cfg.build_dir.join("from-cache")).unwrap(), "kept\n");
        let names = tgz_names(&second.cfg.output_build_artifacts_cache);
        assert_eq!(names, ["./", "./final/", "./final/remember"]);

        // A corrupt cache is only a warning.
        let mut third = Env::new(&["bp"]);
        third.bp("bp", &scripts);
        let archive = third.root().join("cache.tgz");
        fs::write(&archive, "garbage").unwrap();
        third.cfg.build_artifacts_cache_archive = Some(archive);
        let log = third.ok();
        assert!(log.iter().any(|l| l.starts_with("Failed to extract build artifacts cache")), "{log:?}");
        // And a missing one is nothing at all.
        third.cfg.build_artifacts_cache_archive = Some(third.root().join("absent.tgz"));
        assert!(third.ok().is_empty());
    }

    fn package_env(bytes: &[u8]) -> Env {
        let mut env = Env::new(&["bp"]);
        env.bp("bp", &[("detect", "echo BP"), ("compile", "exit 0"), ("release", RELEASE_WEB)]);
        let package = env.root().join("package");
        fs::write(&package, bytes).unwrap();
        env.cfg.app_package = Some(package);
        env
    }

    #[test]
    fn lifecycle_builder_unpacks_zip_tar_and_tgz_packages() {
        for bytes in [
            RawZip::new().file("index.php", b"<?php", 0o644).file("bin/run", b"#!/bin/sh", 0o755).finish(),
            RawTar::default().file("index.php", b"<?php", 0o644).file("bin/run", b"#!/bin/sh", 0o755).finish(),
            RawTar::default().file("./index.php", b"<?php", 0o644).file("./bin/run", b"#!/bin/sh", 0o755).gzip(),
        ] {
            let env = package_env(&bytes);
            env.ok();
            let names = env.droplet();
            assert!(
                names.contains(&"./app/index.php".to_string()) && names.contains(&"./app/bin/run".to_string()),
                "{names:?}"
            );
        }
    }

    #[test]
    fn lifecycle_builder_refuses_hostile_packages() {
        let probe = format!("celld-lifecycle-probe-{}", std::process::id());
        let abs = format!("/tmp/celld-lifecycle-abs-pkg-{}", std::process::id());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("tar ../x", RawTar::default().file("../canary", b"pwned", 0o644).finish()),
            ("zip ../x", RawZip::new().file("../canary", b"pwned", 0o644).finish()),
            (
                "tar symlink /etc",
                RawTar::default().link("etc", "/etc", false).file(&format!("etc/{probe}"), b"x", 0o644).finish(),
            ),
            (
                "zip symlink /etc",
                RawZip::new().symlink("etc", "/etc").file(&format!("etc/{probe}"), b"x", 0o644).finish(),
            ),
            ("tgz symlink ..", RawTar::default().link("up", "..", false).file("up/canary", b"pwned", 0o644).gzip()),
            ("zip symlink ..", RawZip::new().symlink("up", "..").file("up/canary", b"pwned", 0o644).finish()),
        ];
        for (what, bytes) in cases {
            let env = package_env(&bytes);
            let (e, _) = env.fail();
            assert_eq!(e.exit_code(), 1, "{what}");
            assert!(e.to_string().starts_with("Failed to extract app package: "), "{what}: {e}");
            assert!(!Path::new("/etc").join(&probe).exists(), "{what}");
            let outside: Vec<_> = fs::read_dir(env.root()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(
                outside
                    .iter()
                    .all(|n| ["app", "canary", "package", "buildpacks", "tmp"].contains(&n.to_str().unwrap())),
                "{what}: {outside:?}"
            );
        }
        // Absolute names are kept inside the build dir.
        for bytes in [
            RawTar::default().file(&format!("{abs}/x"), b"in", 0o644).finish(),
            RawZip::new().file(&format!("{abs}/x"), b"in", 0o644).finish(),
        ] {
            let env = package_env(&bytes);
            env.ok();
            assert!(!Path::new(&abs).exists());
            assert!(env.cfg.build_dir.join(&abs[1..]).join("x").exists());
        }
    }

    #[test]
    fn lifecycle_builder_reports_bad_packages() {
        let env = package_env(b"");
        let (e, _) = env.fail();
        assert_eq!(
            (e.exit_code(), e.to_string()),
            (1, "Failed to extract app package: the package is empty".to_string())
        );
        let env = package_env(b"PK\x03\x04 truncated nonsense");
        let msg = env.fail().0.to_string();
        assert!(msg.starts_with("Failed to extract app package: corrupt zip archive: "), "{msg}");
        let env = package_env(b"#!/bin/sh\necho I am not an archive\n");
        let msg = env.fail().0.to_string();
        assert_eq!(msg, "Failed to extract app package: not a zip, tar or gzipped tar archive");
        let mut env = package_env(b"");
        env.cfg.app_package = Some(env.root().join("missing"));
        assert!(env.fail().0.to_string().starts_with("Failed to extract app package: cannot open "));
    }

    /// The built-in buildpacks, archived as the daemon hands them over.
    fn with_builtins(env: &mut Env) {
        let archives = env.root().join("archives");
        fs::create_dir_all(&archives).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("buildpacks");
        for (key, dir) in [("staticfile_buildpack", "staticfile"), ("shell_buildpack", "shell")] {
            archive::pack_dir_tgz(&src.join(dir), &archives.join(key)).unwrap();
        }
        // binary as a zip whose files sit under one top directory.
        let mut zip = RawZip::new().dir("binary-buildpack-v1/").dir("binary-buildpack-v1/bin/");
        for entry in fs::read_dir(src.join("binary/bin")).unwrap() {
            let entry = entry.unwrap();
            let name = format!("binary-buildpack-v1/bin/{}", entry.file_name().to_str().unwrap());
            zip = zip.file(&name, &fs::read(entry.path()).unwrap(), 0o755);
        }
        zip = zip.file("binary-buildpack-v1/VERSION", &fs::read(src.join("binary/VERSION")).unwrap(), 0o644);
        fs::write(archives.join("binary_buildpack"), zip.finish()).unwrap();
        env.cfg.buildpack_archives_dir = Some(archives);
    }

    const BUILTIN_ORDER: [&str; 3] = ["staticfile_buildpack", "shell_buildpack", "binary_buildpack"];

    #[test]
    fn lifecycle_builder_builtin_staticfile() {
        let mut env = Env::new(&BUILTIN_ORDER);
        with_builtins(&mut env);
        env.app("index.html", "<h1>hello</h1>");
        env.app("css/site.css", "h1 {}");
        env.app(".hidden", "h");
        env.ok();
        let r = env.result();
        assert_eq!(
            r["lifecycle_metadata"]["buildpacks"],
            json!([{"key": "staticfile_buildpack", "name": "staticfile", "version": "1.0.0"}])
        );
        assert_eq!(r["process_types"], json!({"web": "./boot.sh"}));
        let app = &env.cfg.build_dir;
        assert_eq!(fs::read_to_string(app.join("public/index.html")).unwrap(), "<h1>hello</h1>");
        assert!(app.join("public/css/site.css").exists() && app.join("public/.hidden").exists());
        assert!(!app.join("index.html").exists());
        let boot = fs::read_to_string(app.join("boot.sh")).unwrap();
        assert!(boot.contains("httpd -f -v -p \"${PORT:-8080}\" -h 'public'"), "{boot}");
        assert_eq!(fs::metadata(app.join("boot.sh")).unwrap().permissions().mode() & 0o111, 0o111);
        assert!(env.droplet().contains(&"./app/public/index.html".to_string()));

        // root: in the Staticfile serves that directory instead.
        let mut env = Env::new(&BUILTIN_ORDER);
        with_builtins(&mut env);
        env.app("Staticfile", "root: dist\n");
        env.app("dist/index.html", "x");
        env.ok();
        assert!(fs::read_to_string(env.cfg.build_dir.join("boot.sh")).unwrap().contains("-h 'dist'"));
        assert!(env.cfg.build_dir.join("dist/index.html").exists());
    }

    #[test]
    fn lifecycle_builder_builtin_shell() {
        let mut env = Env::new(&BUILTIN_ORDER);
        with_builtins(&mut env);
        env.app("Procfile", "web: ./run.sh\n");
        env.app("run.sh", "#!/bin/sh\necho serving\n");
        env.ok();
        let r = env.result();
        assert_eq!(
            r["lifecycle_metadata"]["buildpacks"],
            json!([{"key": "shell_buildpack", "name": "shell", "version": "1.0.0", "config": {}}])
        );
        assert_eq!(r["process_types"], json!({"web": "./run.sh"}));
        assert_eq!(fs::metadata(env.cfg.build_dir.join("run.sh")).unwrap().permissions().mode() & 0o111, 0o111);
    }

    #[test]
    fn lifecycle_builder_builtin_binary_is_only_explicit() {
        // Detect never picks it.
        let mut env = Env::new(&["binary_buildpack"]);
        with_builtins(&mut env);
        env.app("app-bin", "x");
        assert_eq!(env.fail().0.exit_code(), 222);

        let mut env = Env::new(&["binary_buildpack"]);
        with_builtins(&mut env);
        env.cfg.skip_detect = true;
        env.app("Procfile", "web: ./app-bin --port $PORT\n");
        env.app("app-bin", "x");
        env.ok();
        let r = env.result();
        assert_eq!(
            r["lifecycle_metadata"]["buildpacks"],
            json!([{"key": "binary_buildpack", "name": "binary", "version": "1.0.0"}])
        );
        assert_eq!(r["process_types"], json!({"web": "./app-bin --port $PORT"}));

        // Without a Procfile the command must come at run time; staging succeeds.
        let mut env = Env::new(&["binary_buildpack"]);
        with_builtins(&mut env);
        env.cfg.skip_detect = true;
        env.app("app-bin", "x");
        let log = env.ok();
        assert!(log.contains(&"No start command specified by buildpack or via Procfile.".to_string()));
    }
}
