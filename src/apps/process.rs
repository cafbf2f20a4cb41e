//! An app's processes on the scheduler: start, stop and restart desire or
//! remove one DesiredLRP per process type (a new process guid for every
//! start), built from the droplet with CF's health checks, ports, ssh
//! settings and default security groups; only web is routed.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::AppsError;
use super::app::DEFAULT_HEALTH_CHECK_TIMEOUT;
use super::environment::ProcessIdent;
use super::layer::AppLayer;
use super::ssh;
use super::store::{AppRecord, Droplet, ProcessRecord, WEB};
use crate::executor::logs::now_ns;
use celld_base::guid::new_guid;
use celld_proto as pb;

/// The port every CF app listens on ($PORT).
pub const APP_PORT: u32 = 8080;
const DOMAIN: &str = "cf-apps";

impl AppLayer {
    pub(super) async fn remove_lrp(&self, process_guid: &str) -> Result<(), AppsError> {
        match self.sched().remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: process_guid.into() }).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(s.into()),
        }
    }

    pub async fn start_app(&self, r: &pb::AppRef) -> Result<AppRecord, AppsError> {
        let _op = self.ops.lock().await;
        let mut app = self.find(r)?;
        if app.state == "STARTED" && !app.process_guid.is_empty() {
            return Ok(app);
        }
        self.desire(&mut app).await?;
        self.event(&app, "audit.app.start", BTreeMap::new());
        Ok(app)
    }

    pub async fn stop_app(&self, r: &pb::AppRef) -> Result<AppRecord, AppsError> {
        let _op = self.ops.lock().await;
        let mut app = self.find(r)?;
        self.undesire(&mut app).await?;
        self.event(&app, "audit.app.stop", BTreeMap::new());
        Ok(app)
    }

    pub async fn restart_app(&self, r: &pb::AppRef) -> Result<AppRecord, AppsError> {
        let _op = self.ops.lock().await;
        let mut app = self.find(r)?;
        if app.droplet.is_none() {
            return Err(not_staged(&app));
        }
        self.undesire(&mut app).await?;
        self.desire(&mut app).await?;
        self.event(&app, "audit.app.restart", BTreeMap::new());
        Ok(app)
    }

    /// Desires a new Diego process for each of the app's process types with
    /// its current droplet and settings (CC gives every start a new process
    /// guid). A failure removes the ones already desired.
    async fn desire(&self, app: &mut AppRecord) -> Result<(), AppsError> {
        let Some(droplet) = app.droplet.clone() else { return Err(not_staged(app)) };
        add_droplet_types(app, &droplet);
        let mut desired: Vec<(String, String)> = Vec::new();
        for (ptype, p) in app.all_processes() {
            // A type nobody gave a command runs nowhere: CF leaves it at 0.
            if ptype != WEB && p.instances == 0 && self.command_of(app, &ptype, &p).is_err() {
                continue;
            }
            let process_guid = format!("{}-{}", app.guid, new_guid());
            let lrp = match self.desired_lrp(app, &ptype, &p, &process_guid) {
                Ok(l) => l,
                Err(e) => {
                    self.remove_all(&desired).await;
                    return Err(e);
                }
            };
            if let Err(e) = self.sched().desire_lrp(lrp).await {
                self.remove_all(&desired).await;
                return Err(e.into());
            }
            desired.push((ptype, process_guid));
        }
        for (ptype, guid) in &desired {
            if let Some(mut p) = app.process(ptype) {
                p.process_guid = guid.clone();
                app.set_process(ptype, p);
            }
        }
        app.state = "STARTED".into();
        app.updated_at = now_ns();
        if let Err(e) = self.store.put_app(app) {
            // Don't leave processes nobody records.
            self.remove_all(&desired).await;
            return Err(e);
        }
        tracing::info!(app_guid = %app.guid, process_guid = %app.process_guid, types = desired.len(), "app started");
        // The process that may have used them is gone.
        if !app.old_droplets.is_empty() {
            for key in std::mem::take(&mut app.old_droplets) {
                let _ = self.blobs.delete(&key).await;
            }
            let _ = self.store.put_app(app);
        }
        self.routes_changed.notify_one();
        Ok(())
    }

    async fn remove_all(&self, desired: &[(String, String)]) {
        for (_, guid) in desired {
            let _ = self.remove_lrp(guid).await;
        }
    }

    async fn undesire(&self, app: &mut AppRecord) -> Result<(), AppsError> {
        if !app.process_guid.is_empty() {
            // Routes first, then the instances: a request must never be sent
            // to an instance that is being destroyed.
            self.withdraw(app).await;
            if let Err(e) = self.remove_lrp(&app.process_guid).await {
                self.unwithdraw(&app.process_guid);
                return Err(e);
            }
        }
        app.process_guid.clear();
        for p in app.processes.values_mut() {
            if !p.process_guid.is_empty() {
                self.remove_lrp(&p.process_guid).await?;
                p.process_guid.clear();
            }
        }
        app.state = "STOPPED".into();
        app.updated_at = now_ns();
        self.store.put_app(app)?;
        self.routes_changed.notify_one();
        Ok(())
    }

    /// A process type's start command: its own, else the droplet's for the type.
    fn command_of(&self, app: &AppRecord, ptype: &str, p: &ProcessRecord) -> Result<String, AppsError> {
        if !p.command.is_empty() {
            return Ok(p.command.clone());
        }
        let droplet = app.droplet.as_ref().ok_or_else(|| not_staged(app))?;
        let from_droplet = if ptype == WEB {
            droplet.start_command.clone()
        } else {
            droplet.process_types.get(ptype).cloned().unwrap_or_default()
        };
        if from_droplet.is_empty() {
            return Err(AppsError::FailedPrecondition(if ptype == WEB {
                format!(
                    "app '{}' has no start command: the buildpack gave none; set one with -c or a Procfile",
                    app.name
                )
            } else {
                format!(
                    "process type '{ptype}' of app '{}' has no start command: give it one in the manifest's processes or the Procfile",
                    app.name
                )
            }));
        }
        Ok(from_droplet)
    }

    pub(super) fn desired_lrp(
        &self,
        app: &AppRecord,
        ptype: &str,
        p: &ProcessRecord,
        process_guid: &str,
    ) -> Result<pb::DesiredLrp, AppsError> {
        let droplet = app.droplet.as_ref().ok_or_else(|| not_staged(app))?;
        let command = self.command_of(app, ptype, p)?;
        let env =
            self.app_env(app, Some(ProcessIdent { process_type: ptype, process: p, diego_guid: process_guid }))?;
        let app_port = droplet.app_port();
        let checks = match p.health_check_type.as_str() {
            "http" => vec![pb::Check {
                check: Some(pb::check::Check::Http(pb::HttpCheck {
                    port: app_port,
                    path: if p.health_check_endpoint.is_empty() { "/".into() } else { p.health_check_endpoint.clone() },
                    ..Default::default()
                })),
            }],
            "process" => vec![],
            _ => vec![pb::Check {
                check: Some(pb::check::Check::Tcp(pb::TcpCheck { port: app_port, ..Default::default() })),
            }],
        };
        let timeout = if p.health_check_timeout == 0 { DEFAULT_HEALTH_CHECK_TIMEOUT } else { p.health_check_timeout };
        // Only web is routed (CF maps routes to the web process).
        let hosts: &[String] = if ptype == WEB { &app.routes } else { &[] };
        let routes = json!([{ "hostnames": hosts, "port": app_port }]).to_string();
        let ssh = self.ssh_settings(app)?;
        let mut ports = vec![app_port];
        if ssh.is_some() {
            ports.push(ssh::SSHD_PORT);
        }
        Ok(pb::DesiredLrp {
            process_guid: process_guid.to_string(),
            domain: DOMAIN.into(),
            instances: i32::try_from(p.instances).unwrap_or(i32::MAX),
            rootfs: if droplet.docker_rootfs.is_empty() {
                crate::staging::stager::stack_rootfs(&droplet.stack)
            } else {
                droplet.docker_rootfs.clone()
            },
            image_username: app.docker_username.clone(),
            image_password: app.docker_password.clone(),
            droplet_key: droplet.key.clone(),
            start_command: command,
            env: env.into_iter().map(|(name, value)| pb::EnvironmentVariable { name, value }).collect(),
            memory_mb: p.memory_mb,
            disk_mb: p.disk_mb,
            // CC's default process limit.
            max_pids: 1024,
            ports,
            ssh,
            check_definition: Some(pb::CheckDefinition { checks, ..Default::default() }),
            start_timeout_ms: timeout.saturating_mul(1000),
            log_guid: app.guid.clone(),
            log_source: format!("APP/PROC/{}", ptype.to_uppercase()),
            egress_rules: default_security_groups(),
            routes: HashMap::from([("cf-router".to_string(), routes)]),
            annotation: app.name.clone(),
            ..Default::default()
        })
    }
}

/// The Procfile's or buildpack's types the app does not have yet: CF creates
/// them with 0 instances and the app's memory and disk.
pub(super) fn add_droplet_types(app: &mut AppRecord, droplet: &Droplet) {
    for ptype in droplet.process_types.keys().filter(|t| *t != WEB) {
        if !app.processes.contains_key(ptype) {
            let p = new_process(app, 0);
            app.processes.insert(ptype.clone(), p);
        }
    }
}

/// A new non-web process type with the app's memory and disk and CF's
/// default health check for it (process).
pub(super) fn new_process(app: &AppRecord, instances: u32) -> ProcessRecord {
    ProcessRecord {
        guid: new_guid(),
        instances,
        memory_mb: app.memory_mb,
        disk_mb: app.disk_mb,
        health_check_type: "process".into(),
        ..Default::default()
    }
}

pub(super) fn not_staged(app: &AppRecord) -> AppsError {
    AppsError::FailedPrecondition(format!(
        "app '{}' has not been staged: push it first (cellctl push DIR -n {})",
        app.name, app.name
    ))
}

/// CF's default running security groups: the public internet and DNS, not
/// the private ranges (so not the host's services or other containers).
pub fn default_security_groups() -> Vec<pb::EgressRule> {
    let public = [
        "0.0.0.0-9.255.255.255",
        "11.0.0.0-169.253.255.255",
        "169.255.0.0-172.15.255.255",
        "172.32.0.0-192.167.255.255",
        "192.169.0.0-255.255.255.255",
    ];
    vec![
        pb::EgressRule {
            protocol: "all".into(),
            destinations: public.iter().map(|s| (*s).to_string()).collect(),
            ..Default::default()
        },
        pb::EgressRule {
            protocol: "tcp".into(),
            destinations: vec!["0.0.0.0/0".into()],
            ports: vec![53],
            ..Default::default()
        },
        pb::EgressRule {
            protocol: "udp".into(),
            destinations: vec!["0.0.0.0/0".into()],
            ports: vec![53],
            ..Default::default()
        },
    ]
}
