//! BBS's DesiredLRPs and Tasks as celld's executor runs them. What celld
//! cannot run is refused here with a reason that names it, which then fails
//! the instance or task (a crash reason, a task failure) where Diego shows it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use celld_proto as pb;
use celld_proto::diego::bbs;

/// What celld does not support in a definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("celld cannot run this {what}: {why}")]
pub struct Unsupported {
    pub what: &'static str,
    pub why: String,
}

/// Stacks this cell offers by name, from `--preloaded-rootfs NAME:PATH`.
#[derive(Debug, Clone, Default)]
pub struct Stacks(pub BTreeMap<String, PathBuf>);

impl Stacks {
    /// Parses `NAME:PATH` values (the rep's `preloaded_root_fs`).
    pub fn parse(values: &[String]) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        for v in values {
            let Some((name, path)) = v.split_once(':') else {
                return Err(format!("--preloaded-rootfs {v:?}: expected NAME:PATH"));
            };
            if name.is_empty() || name.contains('/') {
                return Err(format!("--preloaded-rootfs {v:?}: the stack name is empty or has a '/'"));
            }
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("--preloaded-rootfs {v:?}: {} is not an absolute path", path.display()));
            }
            if !path.is_dir() {
                return Err(format!(
                    "--preloaded-rootfs {v:?}: {} is not a directory (celld runs root filesystems unpacked; extract a rootfs tar into a directory)",
                    path.display()
                ));
            }
            out.insert(name.to_string(), path);
        }
        Ok(Self(out))
    }

    /// A rootfs URL of BBS as the executor's rootfs, and what to download
    /// into it first: `preloaded:NAME` of a `--preloaded-rootfs` becomes its
    /// directory (other preloaded names are the cell's rootfs directory's);
    /// `preloaded+layer:NAME?layer=URL&layer_path=DIR&layer_digest=SHA256`
    /// is NAME with the layer unpacked at DIR, checked against its digest.
    fn rootfs(&self, what: &'static str, url: &str) -> Result<(String, Option<bbs::Action>), Unsupported> {
        let unsupported = |why: String| Unsupported { what, why };
        let stack = |name: &str| match self.0.get(name) {
            Some(p) => p.display().to_string(),
            None => format!("preloaded:{name}"),
        };
        if let Some(name) = url.strip_prefix("preloaded:") {
            return Ok((stack(name), None));
        }
        if url.starts_with("preloaded+layer:") {
            let parsed = url::Url::parse(url).map_err(|e| unsupported(format!("rootfs {url:?}: {e}")))?;
            let query: BTreeMap<String, String> = parsed.query_pairs().into_owned().collect();
            let get = |k: &str| {
                query
                    .get(k)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .ok_or_else(|| unsupported(format!("rootfs {url:?} has no {k}")))
            };
            let download = bbs::DownloadAction {
                artifact: String::new(),
                from: get("layer")?,
                to: get("layer_path")?,
                cache_key: String::new(),
                log_source: String::new(),
                user: "root".into(),
                checksum_algorithm: "sha256".into(),
                checksum_value: get("layer_digest")?,
            };
            return Ok((
                stack(parsed.path()),
                Some(bbs::Action { download_action: Some(download), ..Default::default() }),
            ));
        }
        if url.is_empty() {
            return Err(unsupported("it names no rootfs".into()));
        }
        // Docker images (Diego's `docker:///NAME#TAG`): the cell pulls them.
        if url.starts_with("docker:") {
            return match celld_image::ImageRef::parse(url) {
                Ok(Some(_)) => Ok((url.to_string(), None)),
                Ok(None) => Err(unsupported(format!("rootfs {url:?} is not an image"))),
                Err(e) => Err(unsupported(format!("rootfs {url:?}: {e}"))),
            };
        }
        let scheme = url.split(':').next().unwrap_or(url);
        Err(unsupported(format!(
            "rootfs {url:?}: celld runs preloaded stacks (preloaded:NAME, preloaded+layer:NAME?…) and docker images (docker://…); {scheme}: root filesystems are not supported yet"
        )))
    }
}

fn env(vars: &[bbs::EnvironmentVariable]) -> Vec<pb::EnvironmentVariable> {
    vars.iter().map(|v| pb::EnvironmentVariable { name: v.name.clone(), value: v.value.clone() }).collect()
}

fn egress(rules: &[bbs::SecurityGroupRule]) -> Vec<pb::EgressRule> {
    rules
        .iter()
        .map(|r| pb::EgressRule {
            protocol: r.protocol.clone(),
            destinations: r.destinations.clone(),
            ports: r.ports.clone(),
            port_range: r.port_range.as_ref().map(|p| pb::PortRange { start: p.start, end: p.end }),
            icmp_info: r.icmp_info.as_ref().map(|i| pb::IcmpInfo { r#type: i.r#type, code: i.code }),
            log: r.log,
        })
        .collect()
}

fn check(k: &bbs::Check) -> Option<pb::Check> {
    let ms = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let check = if let Some(t) = &k.tcp_check {
        pb::check::Check::Tcp(pb::TcpCheck {
            port: t.port,
            connect_timeout_ms: ms(t.connect_timeout_ms),
            interval_ms: ms(t.interval_ms),
        })
    } else if let Some(h) = &k.http_check {
        pb::check::Check::Http(pb::HttpCheck {
            port: h.port,
            request_timeout_ms: ms(h.request_timeout_ms),
            path: h.path.clone(),
            interval_ms: ms(h.interval_ms),
        })
    } else {
        return None;
    };
    Some(pb::Check { check: Some(check) })
}

fn checks(c: &Option<bbs::CheckDefinition>) -> Option<pb::CheckDefinition> {
    let c = c.as_ref()?;
    Some(pb::CheckDefinition {
        checks: c.checks.iter().filter_map(check).collect(),
        readiness_checks: c.readiness_checks.iter().filter_map(check).collect(),
        log_source: c.log_source.clone(),
    })
}

/// Image layers as downloads into the container, before the setup (what
/// Diego's executor does with exclusive layers; shared ones too, since celld
/// has no layer store yet: the same files, without the sharing).
fn layer_downloads(layers: &[bbs::ImageLayer], user: &str) -> Result<Option<bbs::Action>, String> {
    let mut actions = Vec::new();
    for l in layers {
        let (algorithm, value) = match bbs::image_layer::DigestAlgorithm::try_from(l.digest_algorithm) {
            Ok(bbs::image_layer::DigestAlgorithm::Sha256) => ("sha256", l.digest_value.clone()),
            Ok(bbs::image_layer::DigestAlgorithm::Sha512) => ("sha512", l.digest_value.clone()),
            _ => ("", String::new()),
        };
        match bbs::image_layer::MediaType::try_from(l.media_type) {
            Ok(
                bbs::image_layer::MediaType::Tgz | bbs::image_layer::MediaType::Tar | bbs::image_layer::MediaType::Zip,
            ) => {}
            _ => return Err(format!("image layer {:?} has no media type (TGZ, TAR or ZIP)", l.name)),
        }
        actions.push(bbs::Action {
            download_action: Some(bbs::DownloadAction {
                artifact: l.name.clone(),
                from: l.url.clone(),
                to: l.destination_path.clone(),
                cache_key: if value.is_empty() { String::new() } else { format!("{algorithm}:{value}") },
                log_source: String::new(),
                user: user.to_string(),
                checksum_algorithm: algorithm.to_string(),
                checksum_value: value,
            }),
            ..Default::default()
        });
    }
    Ok((!actions.is_empty()).then(|| bbs::Action {
        serial_action: Some(bbs::SerialAction { actions, log_source: String::new() }),
        ..Default::default()
    }))
}

/// `first` then `then` (either may be absent).
fn serial(first: Option<bbs::Action>, then: Option<bbs::Action>) -> Option<bbs::Action> {
    match (first, then) {
        (Some(a), Some(b)) => Some(bbs::Action {
            serial_action: Some(bbs::SerialAction { actions: vec![a, b], log_source: String::new() }),
            ..Default::default()
        }),
        (a, b) => a.or(b),
    }
}

fn log_rate(what: &'static str, l: &Option<bbs::LogRateLimit>) -> Result<(), Unsupported> {
    match l {
        Some(l) if l.bytes_per_second > 0 => Err(Unsupported {
            what,
            why: format!(
                "log_rate_limit of {} bytes per second: celld limits log lines per second (--log-rate-limit, the rep's max_log_lines_per_second), not bytes",
                l.bytes_per_second
            ),
        }),
        _ => Ok(()),
    }
}

/// A DesiredLRP of BBS as celld's.
pub fn desired_lrp(d: &bbs::DesiredLrp, stacks: &Stacks) -> Result<pb::DesiredLrp, Unsupported> {
    const WHAT: &str = "LRP";
    let unsupported = |why: String| Unsupported { what: WHAT, why };
    if !d.volume_mounts.is_empty() {
        return Err(unsupported("volume mounts (volume services) are not supported".into()));
    }
    log_rate(WHAT, &d.log_rate_limit)?;
    let (rootfs, layer) = stacks.rootfs(WHAT, &d.root_fs)?;
    let Some(action) = d.action.clone() else {
        return Err(unsupported("it has no action".into()));
    };
    // Sidecars run next to the action and end with it, as Diego runs them.
    let action = if d.sidecars.is_empty() {
        action
    } else {
        let mut actions = vec![action];
        actions.extend(d.sidecars.iter().filter_map(|s| s.action.clone()));
        bbs::Action {
            codependent_action: Some(bbs::CodependentAction { actions, log_source: String::new() }),
            ..Default::default()
        }
    };
    let layers = layer_downloads(&d.image_layers, &d.legacy_download_user).map_err(unsupported)?;
    let start_timeout_ms = match (d.start_timeout_ms, d.deprecated_start_timeout_s) {
        (ms, _) if ms > 0 => u32::try_from(ms).unwrap_or(u32::MAX),
        (_, s) => s.saturating_mul(1000),
    };
    let sidecar_memory: i32 = d.sidecars.iter().map(|s| s.memory_mb).sum();
    Ok(pb::DesiredLrp {
        process_guid: d.process_guid.clone(),
        domain: d.domain.clone(),
        instances: d.instances,
        rootfs,
        image_username: d.image_username.clone(),
        image_password: d.image_password.clone(),
        env: env(&d.environment_variables),
        memory_mb: u32::try_from(d.memory_mb.saturating_add(sidecar_memory)).unwrap_or(0),
        disk_mb: u32::try_from(d.disk_mb).unwrap_or(0),
        max_pids: u32::try_from(d.max_pids).unwrap_or(0),
        cpu_weight: d.cpu_weight,
        ports: d.ports.clone(),
        check_definition: checks(&d.check_definition),
        start_timeout_ms,
        log_guid: d.log_guid.clone(),
        placement_tags: d.placement_tags.clone(),
        egress_rules: egress(&d.egress_rules),
        routes: d
            .routes
            .as_ref()
            .map(|r| r.routes.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect())
            .unwrap_or_default(),
        annotation: d.annotation.clone(),
        log_source: d.log_source.clone(),
        setup: serial(serial(layer, layers), d.setup.clone()),
        action: Some(action),
        monitor: d.monitor.clone(),
        cached_dependencies: d.cached_dependencies.clone(),
        privileged: d.privileged,
        legacy_download_user: d.legacy_download_user.clone(),
        trusted_system_certificates_path: d.trusted_system_certificates_path.clone(),
        ..Default::default()
    })
}

/// A Task of BBS as celld's.
pub fn task(t: &bbs::Task, stacks: &Stacks) -> Result<pb::Task, Unsupported> {
    const WHAT: &str = "task";
    let unsupported = |why: String| Unsupported { what: WHAT, why };
    let Some(def) = &t.task_definition else {
        return Err(unsupported("it has no definition".into()));
    };
    if !def.volume_mounts.is_empty() {
        return Err(unsupported("volume mounts (volume services) are not supported".into()));
    }
    log_rate(WHAT, &def.log_rate_limit)?;
    let (rootfs, layer) = stacks.rootfs(WHAT, &def.root_fs)?;
    let Some(action) = def.action.clone() else {
        return Err(unsupported("it has no action".into()));
    };
    let layers = layer_downloads(&def.image_layers, &def.legacy_download_user).map_err(unsupported)?;
    Ok(pb::Task {
        task_guid: t.task_guid.clone(),
        domain: t.domain.clone(),
        rootfs,
        image_username: def.image_username.clone(),
        image_password: def.image_password.clone(),
        env: env(&def.environment_variables),
        memory_mb: u32::try_from(def.memory_mb).unwrap_or(0),
        disk_mb: u32::try_from(def.disk_mb).unwrap_or(0),
        max_pids: u32::try_from(def.max_pids).unwrap_or(0),
        cpu_weight: def.cpu_weight,
        result_file: def.result_file.clone(),
        log_guid: def.log_guid.clone(),
        log_source: def.log_source.clone(),
        placement_tags: def.placement_tags.clone(),
        egress_rules: egress(&def.egress_rules),
        created_at: t.created_at,
        action: serial(serial(layer, layers), Some(action)),
        cached_dependencies: def.cached_dependencies.clone(),
        privileged: def.privileged,
        legacy_download_user: def.legacy_download_user.clone(),
        trusted_system_certificates_path: def.trusted_system_certificates_path.clone(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(path: &str) -> bbs::Action {
        bbs::Action {
            run_action: Some(bbs::RunAction { path: path.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn desired(rootfs: &str) -> bbs::DesiredLrp {
        bbs::DesiredLrp {
            process_guid: "pg".into(),
            domain: "cf-apps".into(),
            root_fs: rootfs.into(),
            instances: 2,
            memory_mb: 256,
            disk_mb: 1024,
            ports: vec![8080],
            action: Some(run("/bin/app")),
            check_definition: Some(bbs::CheckDefinition {
                checks: vec![bbs::Check {
                    tcp_check: Some(bbs::TcpCheck { port: 8080, connect_timeout_ms: 500, interval_ms: 0 }),
                    http_check: None,
                }],
                ..Default::default()
            }),
            deprecated_start_timeout_s: 60,
            ..Default::default()
        }
    }

    #[test]
    fn a_buildpack_lrp_keeps_its_resources_checks_and_actions() {
        let d = desired_lrp(&desired("preloaded:cflinuxfs4"), &Stacks::default()).unwrap();
        assert_eq!(d.rootfs, "preloaded:cflinuxfs4");
        assert_eq!((d.memory_mb, d.disk_mb, d.instances), (256, 1024, 2));
        assert_eq!(d.start_timeout_ms, 60_000);
        assert_eq!(d.ports, vec![8080]);
        let c = d.check_definition.unwrap();
        assert!(
            matches!(c.checks[0].check, Some(pb::check::Check::Tcp(ref t)) if t.port == 8080 && t.connect_timeout_ms == 500)
        );
        assert_eq!(d.action.unwrap().run_action.unwrap().path, "/bin/app");
    }

    #[test]
    fn a_named_stack_runs_on_its_directory() {
        let dir = std::env::temp_dir();
        let stacks = Stacks::parse(&[format!("cflinuxfs4:{}", dir.display())]).unwrap();
        let d = desired_lrp(&desired("preloaded:cflinuxfs4"), &stacks).unwrap();
        assert_eq!(d.rootfs, dir.display().to_string());
        assert!(Stacks::parse(&["nocolon".into()]).unwrap_err().contains("NAME:PATH"));
        assert!(Stacks::parse(&["x:relative".into()]).unwrap_err().contains("absolute"));
    }

    #[test]
    fn a_layered_rootfs_downloads_its_layer_first() {
        let url = "preloaded+layer:cflinuxfs4?layer=https%3A%2F%2Fblobs%2Flayer.tgz&layer_path=%2Ftmp%2Fasset&layer_digest=abc";
        let d = desired_lrp(&desired(url), &Stacks::default()).unwrap();
        assert_eq!(d.rootfs, "preloaded:cflinuxfs4");
        let dl = d.setup.unwrap().download_action.unwrap();
        assert_eq!((dl.from.as_str(), dl.to.as_str()), ("https://blobs/layer.tgz", "/tmp/asset"));
        assert_eq!((dl.checksum_algorithm.as_str(), dl.checksum_value.as_str()), ("sha256", "abc"));
        let e = desired_lrp(&desired("preloaded+layer:cflinuxfs4?layer_path=/x"), &Stacks::default()).unwrap_err();
        assert!(e.to_string().contains("no layer"), "{e}");
    }

    #[test]
    fn what_celld_cannot_run_says_so() {
        let e = desired_lrp(&desired("ftp://host/rootfs.tgz"), &Stacks::default()).unwrap_err();
        assert!(e.to_string().contains("ftp: root filesystems are not supported"), "{e}");
        let d = desired_lrp(&desired("docker:///cloudfoundry/grace#v1"), &Stacks::default()).unwrap();
        assert_eq!(d.rootfs, "docker:///cloudfoundry/grace#v1");
        let mut d = desired("preloaded:x");
        d.volume_mounts.push(Default::default());
        assert!(desired_lrp(&d, &Stacks::default()).unwrap_err().to_string().contains("volume"));
        let mut d = desired("preloaded:x");
        d.log_rate_limit = Some(bbs::LogRateLimit { bytes_per_second: 100 });
        assert!(desired_lrp(&d, &Stacks::default()).unwrap_err().to_string().contains("bytes per second"));
        // CC's "unlimited".
        d.log_rate_limit = Some(bbs::LogRateLimit { bytes_per_second: -1 });
        assert!(desired_lrp(&d, &Stacks::default()).is_ok());
    }

    #[test]
    fn sidecars_run_codependently_with_the_action() {
        let mut d = desired("preloaded:x");
        d.sidecars.push(bbs::Sidecar { action: Some(run("/bin/side")), disk_mb: 0, memory_mb: 32 });
        let c = desired_lrp(&d, &Stacks::default()).unwrap();
        assert_eq!(c.memory_mb, 256 + 32);
        let co = c.action.unwrap().codependent_action.unwrap();
        assert_eq!(co.actions.len(), 2);
    }
}
