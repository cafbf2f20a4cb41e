//! Cloud Foundry's buildpack lifecycle, as run inside staging containers by the
//! static `celld-lifecycle` binary (mounted read-only at /tmp/lifecycle).
//!
//! The daemon and the in-container binary share this module so both sides agree
//! on one set of facts: the builder's exit codes and what Cloud Controller calls
//! them, the shape of `result.json` and `staging_info.yml`, and where a
//! buildpack with a given key lives. Everything here follows the reference
//! buildpack lifecycle (`buildpackapplifecycle`) so that real buildpacks, and
//! clients that read its outputs, work unchanged.
//!
//! - [`archive`]: extraction of untrusted zips and tarballs (app packages, build
//!   caches, buildpacks) and the deterministic droplet / cache tarballs.
//! - [`builder`]: the `builder` command: flags, then detect → supply/finalize or
//!   compile → release → droplet.
//!
//! This code also runs in the static binary, which carries only std and the
//! few non-optional crates: no async runtime, no logging framework.

// Input and environment decide much of what happens here, and a panic would
// lose the reason a staging failed: keep fallible paths explicit.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod archive;
pub mod builder;
pub mod launcher;
pub mod sshd;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// No buildpack's `bin/detect` accepted the app.
pub const DETECT_FAIL_CODE: i32 = 222;
/// The final buildpack's `bin/compile` failed.
pub const COMPILE_FAIL_CODE: i32 = 223;
/// `bin/release` failed or printed something that is not a release.
pub const RELEASE_FAIL_CODE: i32 = 224;
/// A `bin/supply` failed, or a non-final buildpack has none.
pub const SUPPLY_FAIL_CODE: i32 = 225;
/// The final buildpack's `bin/finalize` failed.
pub const FINALIZE_FAIL_CODE: i32 = 226;

/// Cloud Controller's error name and message for a builder exit code, as CC
/// shows them to `cf push` users (`NoAppDetectedError`, …). Codes without a
/// phase of their own are a plain `StagingError`.
pub fn failure_reason(code: i32) -> (&'static str, &'static str) {
    match code {
        DETECT_FAIL_CODE => ("NoAppDetectedError", "An app was not successfully detected by any available buildpack"),
        COMPILE_FAIL_CODE => ("BuildpackCompileFailed", "App staging failed in the buildpack compile phase"),
        RELEASE_FAIL_CODE => ("BuildpackReleaseFailed", "App staging failed in the buildpack release phase"),
        SUPPLY_FAIL_CODE => ("StagingError", "App staging failed in the buildpack supply phase"),
        FINALIZE_FAIL_CODE => ("StagingError", "App staging failed in the buildpack finalize phase"),
        _ => ("StagingError", "staging failed"),
    }
}

/// The directory name of a buildpack under `-buildpacksDir`, and of a supply
/// buildpack's cache under `-buildArtifactsCacheDir`: xxHash64 (seed 0) of the
/// key, as 16 lower-case hex digits.
pub fn buildpack_dir_name(key: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh64::xxh64(key.as_bytes(), 0))
}

/// The `deps/<IDX>` name of buildpack `index` among `count`: zero-padded to the
/// number of digits of `count` ("0".."9" for up to 9 buildpacks, "00".."11"
/// for 12).
pub fn deps_index(index: usize, count: usize) -> String {
    let width = count.max(1).to_string().len();
    format!("{index:0width$}")
}

/// `result.json`, the builder's report to Cloud Controller. Field order and
/// omissions follow the reference lifecycle: on a failed build
/// `process_types` is `null` and only the buildpacks are filled in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StagingResult {
    pub lifecycle_metadata: LifecycleMetadata,
    #[serde(default)]
    pub process_types: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<Process>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<Sidecar>,
    #[serde(default)]
    pub execution_metadata: String,
    #[serde(default)]
    pub lifecycle_type: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LifecycleMetadata {
    /// The key of the last (final) buildpack.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub buildpack_key: String,
    /// The name of the last buildpack.
    #[serde(default)]
    pub detected_buildpack: String,
    #[serde(default)]
    pub buildpacks: Vec<BuildpackMetadata>,
}

/// One buildpack that took part in the build.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildpackMetadata {
    pub key: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<BuildpackConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The `config:` a buildpack leaves in `deps/<IDX>/config.yml` that the
/// launcher acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildpackConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub entrypoint_prefix: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    #[serde(rename = "type")]
    pub process_type: String,
    pub command: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub name: String,
    pub process_types: Vec<String>,
    pub command: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `staging_info.yml` at the droplet's root (JSON, despite the name): what the
/// launcher falls back to when it is given no start command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingInfo {
    #[serde(default)]
    pub detected_buildpack: String,
    #[serde(default)]
    pub start_command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<BuildpackConfig>,
}

/// Serializes like Go's `json.Encoder` (what the reference lifecycle writes):
/// `<`, `>`, `&`, U+2028 and U+2029 escaped, and a trailing newline. Those
/// characters can only occur inside JSON strings, so replacing them in the
/// output is exact. DEL, the C1 controls (NEL among them), U+FFFE and U+FFFF
/// are escaped too: the launcher reads `staging_info.yml` as YAML, which
/// refuses them raw (or folds NEL as a line break).
pub fn to_go_json<T: Serialize>(value: &T) -> serde_json::Result<String> {
    let plain = serde_json::to_string(value)?;
    let mut out = String::with_capacity(plain.len() + 1);
    for c in plain.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' | '\u{2029}' | '\u{7f}'..='\u{9f}' | '\u{fffe}' | '\u{ffff}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)))
            }
            c => out.push(c),
        }
    }
    out.push('\n');
    Ok(out)
}

/// `DATABASE_URL` derived from `VCAP_SERVICES`, as the reference builder and
/// launcher set it: the first service credential `uri` whose scheme is
/// `mysql`, `mysql2`, `postgres` or `postgresql`, with `mysql` renamed
/// `mysql2` and `postgresql` renamed `postgres` (the names Rails expects).
/// `None` when `VCAP_SERVICES` is not the expected JSON or has no such URI.
pub fn database_url(vcap_services: &str) -> Option<String> {
    let services: serde_json::Value = serde_json::from_str(vcap_services).ok()?;
    let mut uris = Vec::new();
    for instances in services.as_object()?.values() {
        for instance in instances.as_array()? {
            if let Some(uri) = instance.get("credentials").and_then(|c| c.get("uri")).and_then(|u| u.as_str()) {
                if !uri.is_empty() {
                    uris.push(uri);
                }
            }
        }
    }
    uris.into_iter().find_map(|uri| {
        let (scheme, rest) = uri.split_once(':')?;
        let valid = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid {
            return None;
        }
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "mysql" | "mysql2" => "mysql2",
            "postgres" | "postgresql" => "postgres",
            _ => return None,
        };
        Some(format!("{scheme}:{rest}"))
    })
}

/// Test helpers shared by the lifecycle's unit tests.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A directory removed (with everything in it) when dropped.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "celld-lifecycle-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The entry names of a tar.gz, in order.
    pub fn tgz_names(path: &Path) -> Vec<String> {
        let f = std::fs::File::open(path).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
        a.entries().unwrap().map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned()).collect()
    }

    /// The content of one entry of a tar.gz.
    pub fn tgz_file(path: &Path, name: &str) -> Option<Vec<u8>> {
        use std::io::Read;
        let f = std::fs::File::open(path).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            if String::from_utf8_lossy(&e.path_bytes()) == name {
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                return Some(v);
            }
        }
        None
    }

    /// A tar built entry by entry with raw names (so tests can write names
    /// the tar crate itself refuses, like `../x`).
    #[derive(Default)]
    pub struct RawTar(pub Vec<u8>);

    impl RawTar {
        fn header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(mode);
            h.set_mtime(1_600_000_000);
            h
        }

        fn push(&mut self, mut h: tar::Header, data: &[u8]) {
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0u8, pad));
        }

        pub fn file(mut self, name: &str, data: &[u8], mode: u32) -> Self {
            let h = Self::header(name, tar::EntryType::Regular, data.len() as u64, mode);
            self.push(h, data);
            self
        }

        pub fn dir(mut self, name: &str) -> Self {
            let h = Self::header(name, tar::EntryType::Directory, 0, 0o755);
            self.push(h, &[]);
            self
        }

        pub fn link(mut self, name: &str, target: &str, hard: bool) -> Self {
            let kind = if hard { tar::EntryType::Link } else { tar::EntryType::Symlink };
            let mut h = Self::header(name, kind, 0, 0o777);
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            self.push(h, &[]);
            self
        }

        pub fn finish(mut self) -> Vec<u8> {
            self.0.extend(std::iter::repeat_n(0u8, 1024));
            self.0
        }

        pub fn gzip(self) -> Vec<u8> {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&self.finish()).unwrap();
            gz.finish().unwrap()
        }
    }

    /// A zip built entry by entry.
    pub struct RawZip(zip::ZipWriter<std::io::Cursor<Vec<u8>>>);

    impl RawZip {
        pub fn new() -> Self {
            Self(zip::ZipWriter::new(std::io::Cursor::new(Vec::new())))
        }

        fn opts(mode: u32) -> zip::write::SimpleFileOptions {
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(mode)
        }

        pub fn file(mut self, name: &str, data: &[u8], mode: u32) -> Self {
            use std::io::Write;
            self.0.start_file(name, Self::opts(mode)).unwrap();
            self.0.write_all(data).unwrap();
            self
        }

        pub fn dir(mut self, name: &str) -> Self {
            self.0.add_directory(name, Self::opts(0o755)).unwrap();
            self
        }

        pub fn symlink(mut self, name: &str, target: &str) -> Self {
            self.0.add_symlink(name, target, Self::opts(0o777)).unwrap();
            self
        }

        pub fn finish(self) -> Vec<u8> {
            self.0.finish().unwrap().into_inner()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_exit_codes_map_to_cc_reasons() {
        assert_eq!(failure_reason(222).0, "NoAppDetectedError");
        assert_eq!(
            failure_reason(223),
            ("BuildpackCompileFailed", "App staging failed in the buildpack compile phase")
        );
        assert_eq!(failure_reason(224).0, "BuildpackReleaseFailed");
        assert!(failure_reason(225).1.contains("supply"));
        assert!(failure_reason(226).1.contains("finalize"));
        assert_eq!(failure_reason(1).0, "StagingError");
        assert_eq!(failure_reason(-9).0, "StagingError");
    }

    #[test]
    fn lifecycle_buildpack_dir_name_is_xxhash64_hex() {
        // The reference lifecycle's fixture: "nested-buildpack" lives in ba8ed7547bcbcb08.
        assert_eq!(buildpack_dir_name("nested-buildpack"), "ba8ed7547bcbcb08");
        assert_eq!(buildpack_dir_name("").len(), 16);
    }

    #[test]
    fn lifecycle_deps_index_is_padded_to_the_buildpack_count() {
        assert_eq!(deps_index(0, 1), "0");
        assert_eq!(deps_index(2, 3), "2");
        assert_eq!(deps_index(3, 10), "03");
        assert_eq!(deps_index(11, 12), "11");
        assert_eq!(deps_index(7, 100), "007");
    }

    #[test]
    fn lifecycle_result_json_shape() {
        let r = StagingResult {
            lifecycle_metadata: LifecycleMetadata {
                buildpack_key: "k".into(),
                detected_buildpack: "n".into(),
                buildpacks: vec![BuildpackMetadata { key: "k".into(), name: "n".into(), ..Default::default() }],
            },
            process_types: Some(BTreeMap::from([("web".to_string(), "a && b <x>".to_string())])),
            processes: vec![Process { process_type: "web".into(), command: "a && b <x>".into() }],
            lifecycle_type: "buildpack".into(),
            ..Default::default()
        };
        let json = to_go_json(&r).unwrap();
        assert_eq!(
            json,
            "{\"lifecycle_metadata\":{\"buildpack_key\":\"k\",\"detected_buildpack\":\"n\",\"buildpacks\":[{\"key\":\"k\",\"name\":\"n\"}]},\
             \"process_types\":{\"web\":\"a \\u0026\\u0026 b \\u003cx\\u003e\"},\
             \"processes\":[{\"type\":\"web\",\"command\":\"a \\u0026\\u0026 b \\u003cx\\u003e\"}],\
             \"execution_metadata\":\"\",\"lifecycle_type\":\"buildpack\"}\n"
        );
        let back: StagingResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let failed = StagingResult { lifecycle_type: "buildpack".into(), ..Default::default() };
        assert!(to_go_json(&failed).unwrap().contains("\"process_types\":null"));
    }

    /// Found by fuzzing (fuzz/launch_metadata): the launcher reads
    /// `staging_info.yml` as YAML, which refuses DEL, C1 controls and U+FFFE/
    /// U+FFFF and folds NEL, so a start command holding one made the droplet
    /// unlaunchable or changed the command.
    #[test]
    fn lifecycle_staging_info_survives_yaml_reading() {
        for c in ['\u{7f}', '\u{80}', '\u{85}', '\u{9f}', '\u{fffe}', '\u{ffff}', '\u{2028}', '\t', '\u{0}'] {
            let info = StagingInfo {
                detected_buildpack: format!("b{c}"),
                start_command: format!("a{c}b"),
                config: Some(BuildpackConfig { entrypoint_prefix: format!("{c}") }),
            };
            let json = to_go_json(&info).unwrap();
            let back: StagingInfo = serde_yaml_ng::from_str(&json).unwrap_or_else(|e| panic!("{c:?}: {e}: {json}"));
            assert_eq!(back, info, "{c:?}");
            assert_eq!(serde_json::from_str::<StagingInfo>(&json).unwrap(), info);
        }
    }

    #[test]
    fn lifecycle_database_url_from_vcap_services() {
        let s = r#"{"db":[{"credentials":{"uri":"mysql://u:p@h:3306/d?reconnect=true"}}]}"#;
        assert_eq!(database_url(s).as_deref(), Some("mysql2://u:p@h:3306/d?reconnect=true"));
        let s = r#"{"a":[{"credentials":{"uri":"redis://h"}}],"b":[{"credentials":{"uri":"postgresql://h/d"}}]}"#;
        assert_eq!(database_url(s).as_deref(), Some("postgres://h/d"));
        assert_eq!(database_url(r#"{"a":[{"credentials":{"uri":"redis://h"}}]}"#), None);
        assert_eq!(database_url(r#"{"a":{"credentials":{}}}"#), None);
        assert_eq!(database_url("not json"), None);
    }
}
