//! An app's process on the scheduler: start, stop and restart desire or remove
//! its DesiredLRP (a new process guid for every start), built from the droplet
//! with CF's health checks, ports, ssh settings and default security groups.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::AppsError;
use super::app::DEFAULT_HEALTH_CHECK_TIMEOUT;
use super::layer::AppLayer;
use super::ssh;
use super::store::AppRecord;
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

    /// Desires a new process for the app's current droplet and settings
    /// (CC gives every start a new process guid).
    async fn desire(&self, app: &mut AppRecord) -> Result<(), AppsError> {
        if app.droplet.is_none() {
            return Err(not_staged(app));
        }
        let process_guid = format!("{}-{}", app.guid, new_guid());
        let desired = self.desired_lrp(app, &process_guid)?;
        self.sched().desire_lrp(desired).await?;
        app.process_guid = process_guid;
        app.state = "STARTED".into();
        app.updated_at = now_ns();
        if let Err(e) = self.store.put_app(app) {
            // Don't leave a process nobody records.
            let _ = self.remove_lrp(&app.process_guid).await;
            return Err(e);
        }
        tracing::info!(app_guid = %app.guid, process_guid = %app.process_guid, "app started");
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
        app.state = "STOPPED".into();
        app.updated_at = now_ns();
        self.store.put_app(app)?;
        self.routes_changed.notify_one();
        Ok(())
    }

    fn desired_lrp(&self, app: &AppRecord, process_guid: &str) -> Result<pb::DesiredLrp, AppsError> {
        let droplet = app.droplet.as_ref().ok_or_else(|| not_staged(app))?;
        let command = if app.command.is_empty() { droplet.start_command.clone() } else { app.command.clone() };
        if command.is_empty() {
            return Err(AppsError::FailedPrecondition(format!(
                "app '{}' has no start command: the buildpack gave none; set one with -c or a Procfile",
                app.name
            )));
        }
        let env = self.app_env(app, Some(process_guid))?;
        let app_port = droplet.app_port();
        let checks = match app.health_check_type.as_str() {
            "http" => vec![pb::Check {
                check: Some(pb::check::Check::Http(pb::HttpCheck {
                    port: app_port,
                    path: if app.health_check_endpoint.is_empty() {
                        "/".into()
                    } else {
                        app.health_check_endpoint.clone()
                    },
                    ..Default::default()
                })),
            }],
            "process" => vec![],
            _ => vec![pb::Check {
                check: Some(pb::check::Check::Tcp(pb::TcpCheck { port: app_port, ..Default::default() })),
            }],
        };
        let timeout =
            if app.health_check_timeout == 0 { DEFAULT_HEALTH_CHECK_TIMEOUT } else { app.health_check_timeout };
        let routes = json!([{ "hostnames": app.routes, "port": app_port }]).to_string();
        let ssh = self.ssh_settings(app)?;
        let mut ports = vec![app_port];
        if ssh.is_some() {
            ports.push(ssh::SSHD_PORT);
        }
        Ok(pb::DesiredLrp {
            process_guid: process_guid.to_string(),
            domain: DOMAIN.into(),
            instances: i32::try_from(app.instances).unwrap_or(i32::MAX),
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
            memory_mb: app.memory_mb,
            disk_mb: app.disk_mb,
            // CC's default process limit.
            max_pids: 1024,
            ports,
            ssh,
            check_definition: Some(pb::CheckDefinition { checks, ..Default::default() }),
            start_timeout_ms: timeout.saturating_mul(1000),
            log_guid: app.guid.clone(),
            egress_rules: default_security_groups(),
            routes: HashMap::from([("cf-router".to_string(), routes)]),
            annotation: app.name.clone(),
            ..Default::default()
        })
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
