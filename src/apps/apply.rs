//! Applying a CF manifest to a space (CC's apply_manifest) and scaling one
//! process type (`cf scale --process`). Everything a manifest names is
//! checked before anything changes: a manifest refused leaves no app behind.

use std::collections::BTreeMap;

use super::AppsError;
use super::layer::AppLayer;
use super::manifest::{self, ManifestApp, ManifestProcess};
use super::process::new_process;
use super::store::{AppRecord, ProcessRecord, WEB};
use super::validate::host_label;
use crate::executor::logs::now_ns;
use celld_base::guid::new_guid;
use celld_proto as pb;

impl From<manifest::ManifestError> for AppsError {
    fn from(e: manifest::ManifestError) -> Self {
        AppsError::InvalidArgument(e.to_string())
    }
}

impl AppLayer {
    /// Creates or updates each application of a manifest, in its order: the
    /// app (with its web process and default route when new), the settings
    /// the manifest names, its process types, routes and service bindings.
    pub async fn apply_manifest(&self, space: &str, manifest_yaml: &str) -> Result<Vec<AppRecord>, AppsError> {
        self.apply_parsed_manifest(space, manifest::parse(manifest_yaml)?).await
    }

    /// [`Self::apply_manifest`] of a manifest already parsed (and perhaps
    /// narrowed by [`manifest::Manifest::only`]).
    pub async fn apply_parsed_manifest(&self, space: &str, m: manifest::Manifest) -> Result<Vec<AppRecord>, AppsError> {
        let space = self.space(space)?.to_string();
        // Check what the store can tell before changing anything.
        for a in &m.applications {
            for s in &a.services {
                if self.store.service_by_name(&space, s)?.is_none() {
                    return Err(AppsError::NotFound(format!(
                        "For application '{}': Service instance '{s}' not found",
                        a.name
                    )));
                }
            }
            for r in a.routes.iter().flatten() {
                self.route_host(&a.name, r)?;
            }
        }
        let mut out = Vec::new();
        for a in &m.applications {
            out.push(self.apply_app(&space, a).await?);
        }
        Ok(out)
    }

    async fn apply_app(&self, space: &str, a: &ManifestApp) -> Result<AppRecord, AppsError> {
        let app_ref = pb::AppRef { space: space.to_string(), name: a.name.clone() };
        let created = match self.store.app_by_name(space, &a.name)? {
            Some(_) => false,
            None => {
                let hostname = if a.random_route { random_host(&a.name)? } else { String::new() };
                self.create_app(pb::CreateAppRequest {
                    space: space.to_string(),
                    name: a.name.clone(),
                    instances: a.web.instances.unwrap_or(1),
                    hostname,
                    // Explicit routes replace the default one.
                    no_route: a.no_route || a.routes.is_some(),
                    docker_image: a.docker_image.clone().unwrap_or_default(),
                    docker_username: a.docker_username.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .await?;
                true
            }
        };
        let applied = self.apply_settings(&app_ref, a).await;
        if let (Err(_), true) = (&applied, created) {
            // A new app the manifest could not be applied to is not left half made.
            if let Err(e) = self.delete_app(&app_ref).await {
                tracing::warn!(name = %a.name, error = %e, "could not remove an app whose manifest failed");
            }
        }
        applied
    }

    async fn apply_settings(&self, app_ref: &pb::AppRef, a: &ManifestApp) -> Result<AppRecord, AppsError> {
        let w = &a.web;
        let app = self
            .update_app(pb::UpdateAppRequest {
                app: Some(app_ref.clone()),
                instances: w.instances,
                memory_mb: w.memory_mb,
                disk_mb: w.disk_mb,
                health_check_type: w.health_check_type.clone(),
                health_check_endpoint: w.health_check_endpoint.clone(),
                health_check_timeout: w.timeout,
                command: w.command.clone(),
                set_buildpacks: a.buildpacks.is_some(),
                buildpacks: a.buildpacks.clone().unwrap_or_default(),
                stack: a.stack.clone(),
                set_env: a.env.clone().into_iter().collect(),
                docker_image: a.docker_image.clone(),
                docker_username: a.docker_username.clone(),
                ..Default::default()
            })
            .await?;
        if let Some(routes) = &a.routes {
            let hosts = routes.iter().map(|r| self.route_host(&a.name, r)).collect::<Result<Vec<_>, _>>()?;
            self.store.add_routes(&app.guid, &hosts)?;
            for h in hosts.iter().filter(|h| !app.routes.contains(h)) {
                self.event(&app, "audit.app.map-route", BTreeMap::from([("route".to_string(), h.clone())]));
            }
            self.routes_changed.notify_one();
        }
        for (ptype, p) in &a.processes {
            self.set_process_settings(app_ref, ptype, p).await?;
        }
        for s in &a.services {
            let bound = self.store.bindings_of_app(&app.guid)?.iter().any(|(_, svc)| svc.name == *s);
            if !bound {
                self.bind(&pb::BindServiceRequest { app: Some(app_ref.clone()), service: s.clone() }).await?;
            }
        }
        self.event(&app, "audit.app.apply_manifest", BTreeMap::new());
        self.find(app_ref)
    }

    /// A route's host as the store keeps it: under the cell's domain, no path.
    fn route_host(&self, app: &str, route: &str) -> Result<String, AppsError> {
        let domain = &self.cfg.domain;
        if route.contains('/') || route.contains(':') {
            return Err(AppsError::InvalidArgument(format!(
                "For application '{app}': route {route} has a path or port: routes here are HOST.{domain}"
            )));
        }
        match route.strip_suffix(domain.as_str()).and_then(|h| h.strip_suffix('.')) {
            Some(host) => {
                super::validate::validate_host_label(host)?;
                Ok(route.to_string())
            }
            None => Err(AppsError::NotFound(format!(
                "For application '{app}': The route '{route}' did not match any existing domains."
            ))),
        }
    }

    /// Creates a process type or updates the settings a manifest (or the CF
    /// API's `PATCH /v3/processes`) names.
    pub async fn set_process_settings(
        &self,
        app_ref: &pb::AppRef,
        ptype: &str,
        m: &ManifestProcess,
    ) -> Result<(), AppsError> {
        let _op = self.ops.lock().await;
        let mut app = self.find(app_ref)?;
        let before = app.process(ptype);
        let mut p = before.clone().unwrap_or_else(|| new_process(&app, 0));
        p.instances = m.instances.unwrap_or(p.instances);
        p.memory_mb = m.memory_mb.unwrap_or(p.memory_mb);
        p.disk_mb = m.disk_mb.unwrap_or(p.disk_mb);
        if let Some(c) = &m.command {
            p.command = c.clone();
        }
        if let Some(t) = &m.health_check_type {
            p.health_check_type = t.clone();
        }
        if let Some(e) = &m.health_check_endpoint {
            p.health_check_endpoint = e.clone();
        }
        p.health_check_timeout = m.timeout.unwrap_or(p.health_check_timeout);
        if before.as_ref() == Some(&p) {
            return Ok(());
        }
        app.set_process(ptype, p.clone());
        app.updated_at = now_ns();
        self.apply_to_running(&mut app, ptype, before.as_ref(), &p).await?;
        self.store.put_app(&app)?;
        tracing::info!(app_guid = %app.guid, process_type = ptype, instances = p.instances, "process type set");
        Ok(())
    }

    /// Scales one process type (`cf scale APP --process TYPE`); web's scale
    /// is the app's own (see `update_app`).
    pub async fn scale_process(
        &self,
        r: &pb::AppRef,
        process_type: &str,
        instances: Option<u32>,
        memory_mb: Option<u32>,
        disk_mb: Option<u32>,
    ) -> Result<AppRecord, AppsError> {
        let ptype = if process_type.is_empty() { WEB } else { process_type };
        if ptype == WEB {
            return self
                .update_app(pb::UpdateAppRequest {
                    app: Some(r.clone()),
                    instances,
                    memory_mb,
                    disk_mb,
                    ..Default::default()
                })
                .await;
        }
        let _op = self.ops.lock().await;
        let mut app = self.find(r)?;
        let Some(before) = app.process(ptype) else {
            return Err(AppsError::NotFound(format!("Process type '{ptype}' not found for app '{}'.", app.name)));
        };
        let mut p = before.clone();
        p.instances = instances.unwrap_or(p.instances);
        p.memory_mb = memory_mb.filter(|m| *m > 0).unwrap_or(p.memory_mb);
        p.disk_mb = disk_mb.filter(|d| *d > 0).unwrap_or(p.disk_mb);
        if p.instances > 1000 {
            return Err(AppsError::InvalidArgument(format!("instances {} is too many: at most 1000", p.instances)));
        }
        app.set_process(ptype, p.clone());
        app.updated_at = now_ns();
        self.apply_to_running(&mut app, ptype, Some(&before), &p).await?;
        self.store.put_app(&app)?;
        let meta = BTreeMap::from([
            ("process_type".to_string(), ptype.to_string()),
            ("instances".to_string(), p.instances.to_string()),
            ("memory_in_mb".to_string(), p.memory_mb.to_string()),
            ("disk_in_mb".to_string(), p.disk_mb.to_string()),
        ]);
        self.event(&app, "audit.app.process.scale", meta);
        Ok(app)
    }

    /// Makes a started app's non-web process match its new settings: a new
    /// instance count reaches the running process; anything else (or a type
    /// not running yet) desires it afresh. `app` gets the new Diego guid.
    async fn apply_to_running(
        &self,
        app: &mut AppRecord,
        ptype: &str,
        before: Option<&ProcessRecord>,
        p: &ProcessRecord,
    ) -> Result<(), AppsError> {
        if app.state != "STARTED" || ptype == WEB || app.droplet.is_none() {
            return Ok(());
        }
        let running = before.map(|b| b.process_guid.clone()).unwrap_or_default();
        let only_instances = before.is_some_and(|b| ProcessRecord { instances: p.instances, ..b.clone() } == *p);
        if !running.is_empty() && only_instances {
            self.sched()
                .update_desired_lrp(pb::UpdateDesiredLrpRequest {
                    process_guid: running,
                    instances: Some(i32::try_from(p.instances).unwrap_or(i32::MAX)),
                    ..Default::default()
                })
                .await?;
            return Ok(());
        }
        let process_guid = format!("{}-{}", app.guid, new_guid());
        let lrp = self.desired_lrp(app, ptype, p, &process_guid)?;
        self.sched().desire_lrp(lrp).await?;
        if !running.is_empty() {
            if let Err(e) = self.remove_lrp(&running).await {
                let _ = self.remove_lrp(&process_guid).await;
                return Err(e);
            }
        }
        let mut now = p.clone();
        now.process_guid = process_guid;
        app.set_process(ptype, now);
        Ok(())
    }
}

/// CF's random route: the app's host label and a random suffix.
fn random_host(name: &str) -> Result<String, AppsError> {
    let label = host_label(name)?;
    let suffix: String = new_guid().chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    let mut host = format!("{label}-{suffix}");
    host.truncate(63);
    Ok(host)
}
