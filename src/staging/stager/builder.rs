//! The builder's contract: where things are in the staging container, the
//! environment Cloud Controller gives a staging task, following the builder's
//! output (log lines, the disk limit) until it exits, and turning its exit
//! status or its result.json into the staging's outcome.

use std::collections::BTreeMap;

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::watch;

use super::log::{LineSplitter, Logger};
use super::record::{BuildpackUsed, StageRequest, StagingFailure, StagingSuccess};
use super::{Stager, lock};
use crate::staging::byte_size;
use celld_blobstore::BlobInfo;
use celld_runtime::initproto as proto;

/// Where things are inside the staging container (Cloud Foundry's paths).
pub(super) const LIFECYCLE_MOUNT: &str = "/tmp/lifecycle";
pub(super) const INPUTS: &str = "/tmp/staging-inputs";
pub(super) const DROPLET: &str = "/tmp/droplet";
pub(super) const OUTPUT_CACHE: &str = "/tmp/output-cache";
pub(super) const RESULT: &str = "/tmp/result.json";

impl Stager {
    /// Passes the builder's output on as log lines until it exits. (Its disk
    /// limit is the kernel's: a write past it fails in the container.)
    pub(super) async fn follow(
        &self,
        conn: UnixStream,
        log: &Logger,
        mut stop: watch::Receiver<bool>,
    ) -> Result<i32, StagingFailure> {
        let (mut r, mut w) = conn.into_split();
        // Nobody types into a build: a buildpack that reads stdin gets EOF.
        let _ = proto::client::write_frame(&mut w, proto::TAG_STDIN_EOF, &[]).await;
        let mut out = LineSplitter::default();
        let mut err = LineSplitter::default();
        // Frames are cut from a buffer filled by `read_buf`, which is safe to
        // interrupt in `select!`: a stop never loses half a frame.
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            loop {
                match proto::decode(&mut buf) {
                    Ok(Some((proto::TAG_STDOUT, data))) => out.push(&data, |l| log.line(l, false)),
                    Ok(Some((proto::TAG_STDERR, data))) => err.push(&data, |l| log.line(l, true)),
                    Ok(Some((proto::TAG_EXIT, data))) => {
                        out.flush(|l| log.line(l, false));
                        err.flush(|l| log.line(l, true));
                        return proto::parse_exit(&data)
                            .ok_or_else(|| StagingFailure::error("the builder's exit status was unreadable"));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        return Err(StagingFailure::error(format!(
                            "the staging container's init sent a malformed frame ({} bytes)",
                            e.0
                        )));
                    }
                }
            }
            tokio::select! {
                n = r.read_buf(&mut buf) => match n {
                    Ok(0) => return Err(StagingFailure::error("the staging container closed the builder's output before it exited")),
                    Ok(_) => {}
                    Err(e) => return Err(StagingFailure::error(format!("reading the builder's output: {e}"))),
                },
                // The builder goes with its container, destroyed by the caller.
                // (The guard `wait_for` returns is not Send: drop it inside.)
                () = async { drop(stop.wait_for(|s| *s).await) } => return Err(StagingFailure::error("stopped")),
            }
        }
    }

    /// Why the builder failed; a full disk first, whatever the buildpack made
    /// of its ENOSPC/EDQUOT.
    pub(super) async fn builder_failure(&self, guid: &str, code: i32, log: &Logger, disk_limit: u64) -> StagingFailure {
        let oom = self.gardener.info(guid).await.is_ok_and(|i| i.events.iter().any(|e| e.contains("ut of memory")));
        let disk_full = lock(&log.stderr_tail).iter().any(|l| is_disk_full(l)) || {
            // The usage is as of the store's last commit: a sync first.
            let (g, h) = (self.gardener.clone(), guid.to_string());
            let _ = tokio::task::spawn_blocking(nix::unistd::sync).await;
            tokio::task::spawn_blocking(move || g.metrics(&h))
                .await
                .is_ok_and(|m| m.is_ok_and(|m| m.disk_stat.exclusive_bytes_used + (1 << 20) >= disk_limit))
        };
        let mut f = match code {
            _ if disk_full => StagingFailure::new(
                "StagingError",
                format!("staging used more disk than its limit of {}", byte_size(disk_limit)),
            ),
            222..=226 => {
                let (reason, message) = celld_lifecycle::failure_reason(code);
                StagingFailure::new(reason, message)
            }
            _ if oom => {
                StagingFailure::new("StagingError", "staging ran out of memory: raise the staging memory limit")
            }
            _ => {
                let tail: Vec<String> = lock(&log.stderr_tail).iter().cloned().collect();
                let why = if tail.is_empty() { "the builder failed".to_string() } else { tail.join("; ") };
                StagingFailure::error(why)
            }
        };
        f.exit_code = code;
        f
    }
}

/// Whether a line of the builder's errors says a write failed for want of disk.
fn is_disk_full(line: &str) -> bool {
    line.contains("No space left on device") || line.contains("Disk quota exceeded")
}

/// The environment Cloud Controller gives a staging task.
pub(super) fn staging_env(
    req: &StageRequest,
    guid: &str,
    memory_mb: u32,
    disk_mb: u32,
    host_ip: &str,
    container_ip: &str,
) -> Vec<String> {
    let vcap_application = serde_json::json!({
        "cf_api": "",
        "limits": {"fds": 16384, "mem": memory_mb, "disk": disk_mb},
        "application_name": req.app_name,
        "application_uris": [],
        "name": req.app_name,
        "space_name": req.space_name,
        "space_id": req.space_guid,
        "organization_id": "",
        "organization_name": "",
        "uris": [],
        "process_id": req.app_guid,
        "process_type": "web",
        "application_id": req.app_guid,
        "version": guid,
        "application_version": guid,
    });
    let mut env = vec![
        "LANG=en_US.UTF-8".to_string(),
        format!("CF_STACK={}", req.stack),
        format!("VCAP_APPLICATION={vcap_application}"),
        format!("MEMORY_LIMIT={memory_mb}m"),
        format!("CF_INSTANCE_GUID={guid}"),
        format!("CF_INSTANCE_IP={host_ip}"),
        format!("CF_INSTANCE_INTERNAL_IP={container_ip}"),
        "CF_INSTANCE_ADDR=".to_string(),
        "CF_INSTANCE_PORT=".to_string(),
        "CF_INSTANCE_PORTS=[]".to_string(),
    ];
    if !req.env.iter().any(|(k, _)| k == "VCAP_SERVICES") {
        env.push("VCAP_SERVICES={}".to_string());
    }
    env.extend(req.env.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

/// The builder's result.json (Cloud Foundry's shape) → what the API reports.
pub(super) fn parse_result(json: &str, stack: &str) -> Result<StagingSuccess, StagingFailure> {
    let bad = || StagingFailure::error("the builder's result.json is malformed");
    let v: serde_json::Value = serde_json::from_str(json).map_err(|_| bad())?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let process_types: BTreeMap<String, String> =
        v["process_types"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), s(v))).collect()).unwrap_or_default();
    let meta = &v["lifecycle_metadata"];
    let buildpacks = meta["buildpacks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| BuildpackUsed { key: s(&b["key"]), name: s(&b["name"]), version: s(&b["version"]) })
                .collect()
        })
        .unwrap_or_default();
    Ok(StagingSuccess {
        droplet: BlobInfo { key: String::new(), sha256: String::new(), size: 0 },
        detected_buildpack: s(&meta["detected_buildpack"]),
        buildpack_key: s(&meta["buildpack_key"]),
        buildpacks,
        start_command: process_types.get("web").cloned().unwrap_or_default(),
        process_types,
        result_json: json.to_string(),
        stack: stack.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::log::human_duration;
    use super::*;
    use std::time::Duration;

    #[test]
    fn result_json_in_cf_shape() {
        let json = r#"{"process_types":{"web":"./run.sh","worker":"w"},"lifecycle_type":"buildpack",
            "lifecycle_metadata":{"buildpack_key":"shell_buildpack","detected_buildpack":"shell",
            "buildpacks":[{"key":"a","name":"A","version":"1"},{"key":"shell_buildpack","name":"shell"}]},
            "processes":[{"type":"web","command":"./run.sh"}],"execution_metadata":""}"#;
        let r = parse_result(json, "tiny").unwrap_or_else(|f| panic!("{f:?}"));
        assert_eq!(r.start_command, "./run.sh");
        assert_eq!(r.detected_buildpack, "shell");
        assert_eq!(r.buildpacks.len(), 2);
        assert_eq!(r.buildpacks[1].version, "");
        assert_eq!(r.process_types.len(), 2);
        assert!(parse_result("not json", "tiny").is_err());
    }

    #[test]
    fn env_has_what_cf_gives_staging() {
        let req = StageRequest {
            app_guid: "app".into(),
            app_name: "hello".into(),
            stack: "tiny".into(),
            env: vec![("FOO".into(), "bar".into())],
            ..Default::default()
        };
        let env = staging_env(&req, "g", 1024, 4096, "10.0.0.1", "10.0.0.2");
        for want in [
            "LANG=en_US.UTF-8",
            "CF_STACK=tiny",
            "CF_INSTANCE_ADDR=",
            "CF_INSTANCE_PORT=",
            "VCAP_SERVICES={}",
            "FOO=bar",
            "MEMORY_LIMIT=1024m",
        ] {
            assert!(env.iter().any(|e| e == want), "{want} in {env:?}");
        }
        let va = env.iter().find_map(|e| e.strip_prefix("VCAP_APPLICATION=")).unwrap_or_default();
        let va: serde_json::Value = serde_json::from_str(va).unwrap_or_default();
        assert_eq!(va["application_name"], "hello");
        assert_eq!(va["limits"]["disk"], 4096);
        assert_eq!(human_duration(Duration::from_secs(900)), "15m");
    }
}
