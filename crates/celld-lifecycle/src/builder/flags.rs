//! The builder's command line: Cloud Foundry's flags parsed as Go's `flag`
//! package does (the daemon and Cloud Foundry's tooling pass them that way),
//! the usage text, and what the flags imply (which buildpacks only supply).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::archive::Limits;
use crate::buildpack_dir_name;

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
    pub(super) fn supply_buildpacks(&self) -> &[String] {
        if !self.skip_detect {
            return &[];
        }
        self.buildpack_order.split_last().map(|(_, rest)| rest).unwrap_or(&[])
    }

    pub(super) fn deps_count(&self) -> usize {
        self.supply_buildpacks().len() + 1
    }

    pub(super) fn supply_cache_path(&self, key: &str) -> PathBuf {
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
