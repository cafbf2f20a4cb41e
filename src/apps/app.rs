//! The app record: create (with CF's defaults and the default route), update
//! (scale, env, settings, ssh), list, delete, the package upload, and the
//! `App` message clients see. Settings are checked here before the store
//! takes them.

use std::collections::BTreeMap;

use super::AppsError;
use super::layer::AppLayer;
use super::store::{AppRecord, ProcessRecord};
use super::validate::{host_label, validate_app_name, validate_env_name, validate_host_label};
use crate::executor::logs::now_ns;
use celld_base::guid::new_guid;
use celld_proto as pb;

/// CF's defaults for a pushed app.
pub const DEFAULT_MEMORY_MB: u32 = 256;
pub const DEFAULT_DISK_MB: u32 = 1024;
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: u32 = 60;
const MAX_INSTANCES: u32 = 1000;
const MAX_HEALTH_CHECK_TIMEOUT: u32 = 600;

impl AppLayer {
    pub async fn create_app(&self, r: pb::CreateAppRequest) -> Result<AppRecord, AppsError> {
        let space = self.space(&r.space)?.to_string();
        validate_app_name(&r.name)?;
        let host = if r.hostname.is_empty() { host_label(&r.name)? } else { r.hostname.to_lowercase() };
        validate_host_label(&host)?;
        let now = now_ns();
        let mut app = AppRecord {
            guid: new_guid(),
            name: r.name.clone(),
            space,
            state: "STOPPED".into(),
            instances: r.instances,
            memory_mb: if r.memory_mb == 0 { DEFAULT_MEMORY_MB } else { r.memory_mb },
            disk_mb: if r.disk_mb == 0 { DEFAULT_DISK_MB } else { r.disk_mb },
            health_check_type: if r.health_check_type.is_empty() { "port".into() } else { r.health_check_type },
            health_check_endpoint: r.health_check_endpoint,
            health_check_timeout: r.health_check_timeout,
            command: r.command,
            buildpacks: r.buildpacks,
            stack: r.stack,
            env: r.env.into_iter().collect(),
            routes: if r.no_route { vec![] } else { vec![format!("{host}.{}", self.cfg.domain)] },
            package_state: "PENDING".into(),
            // CC's default_app_ssh_access.
            enable_ssh: true,
            docker_image: r.docker_image.trim().to_string(),
            docker_username: r.docker_username,
            docker_password: r.docker_password,
            created_at: now,
            updated_at: now,
            ..Default::default()
        };
        self.validate_settings(&app)?;
        let _op = self.ops.lock().await;
        self.store.create_app(&app)?;
        let mut meta = BTreeMap::new();
        meta.insert("name".into(), app.name.clone());
        meta.insert("instances".into(), app.instances.to_string());
        meta.insert("memory".into(), app.memory_mb.to_string());
        self.event(&app, "audit.app.create", meta);
        for route in &app.routes {
            self.event(&app, "audit.app.map-route", BTreeMap::from([("route".to_string(), route.clone())]));
        }
        app.updated_at = now;
        tracing::info!(app_guid = %app.guid, name = %app.name, space = %app.space, "app created");
        self.routes_changed.notify_one();
        Ok(app)
    }

    fn validate_settings(&self, app: &AppRecord) -> Result<(), AppsError> {
        if app.instances > MAX_INSTANCES {
            return Err(AppsError::InvalidArgument(format!(
                "instances {} is too many: at most {MAX_INSTANCES}",
                app.instances
            )));
        }
        if !matches!(app.health_check_type.as_str(), "port" | "http" | "process") {
            return Err(AppsError::InvalidArgument(format!(
                "health check type {:?} is not valid: use port, http or process",
                app.health_check_type
            )));
        }
        if !app.health_check_endpoint.is_empty() && !app.health_check_endpoint.starts_with('/') {
            return Err(AppsError::InvalidArgument(format!(
                "health check endpoint {:?} must be a path starting with /",
                app.health_check_endpoint
            )));
        }
        if app.health_check_endpoint.chars().any(|c| c.is_control() || c == ' ') {
            return Err(AppsError::InvalidArgument("health check endpoint must not contain spaces".into()));
        }
        if app.health_check_timeout > MAX_HEALTH_CHECK_TIMEOUT {
            return Err(AppsError::InvalidArgument(format!(
                "health check timeout {}s is too long: at most {MAX_HEALTH_CHECK_TIMEOUT}s",
                app.health_check_timeout
            )));
        }
        if app.memory_mb > 1 << 20 || app.disk_mb > 1 << 22 {
            return Err(AppsError::InvalidArgument("memory or disk quota is larger than any cell".into()));
        }
        for name in app.env.keys() {
            validate_env_name(name)?;
        }
        for bp in &app.buildpacks {
            if self.stager.registry.get(bp).is_none() && self.stager.registry.get(&format!("{bp}_buildpack")).is_none()
            {
                return Err(AppsError::InvalidArgument(format!(
                    "buildpack {bp:?} not found: `cellctl buildpacks` lists the buildpacks this cell has"
                )));
            }
        }
        if !app.stack.is_empty() && !self.stager.stack_exists(&app.stack) {
            return Err(AppsError::InvalidArgument(format!(
                "stack {:?} not found: a stack is a preloaded rootfs of the cell (e.g. tiny) or an image (docker://…)",
                app.stack
            )));
        }
        if !app.docker_image.is_empty() {
            super::docker::docker_rootfs(&app.docker_image)?;
            if !app.buildpacks.is_empty() || !app.stack.is_empty() {
                return Err(AppsError::InvalidArgument(format!(
                    "app '{}' runs the docker image {}: buildpacks and stacks are for apps pushed from source",
                    app.name, app.docker_image
                )));
            }
        }
        if app.docker_username.is_empty() != app.docker_password.is_empty() {
            return Err(AppsError::InvalidArgument(
                "docker credentials need both a username and a password (CF_DOCKER_PASSWORD)".into(),
            ));
        }
        if app.command.contains('\0') {
            return Err(AppsError::InvalidArgument("the start command contains a NUL byte".into()));
        }
        Ok(())
    }

    pub async fn update_app(&self, r: pb::UpdateAppRequest) -> Result<AppRecord, AppsError> {
        let app_ref = r.app.clone().unwrap_or_default();
        let _op = self.ops.lock().await;
        let mut app = self.find(&app_ref)?;
        let before = app.clone();
        if let Some(n) = r.instances {
            app.instances = n;
        }
        if let Some(m) = r.memory_mb.filter(|m| *m > 0) {
            app.memory_mb = m;
        }
        if let Some(d) = r.disk_mb.filter(|d| *d > 0) {
            app.disk_mb = d;
        }
        if let Some(t) = r.health_check_type {
            app.health_check_type = t;
        }
        if let Some(e) = r.health_check_endpoint {
            app.health_check_endpoint = e;
        }
        if let Some(t) = r.health_check_timeout {
            app.health_check_timeout = t;
        }
        if let Some(c) = r.command {
            app.command = c;
        }
        if r.set_buildpacks {
            app.buildpacks = r.buildpacks;
        }
        if let Some(s) = r.stack {
            app.stack = s;
        }
        for (k, v) in r.set_env {
            app.env.insert(k, v);
        }
        for k in &r.unset_env {
            app.env.remove(k);
        }
        if let Some(ssh) = r.enable_ssh {
            app.enable_ssh = ssh;
        }
        if let Some(image) = r.docker_image {
            app.docker_image = image.trim().to_string();
        }
        if let Some(u) = r.docker_username {
            app.docker_username = u;
        }
        if let Some(p) = r.docker_password {
            app.docker_password = p;
        }
        self.validate_settings(&app)?;
        app.updated_at = now_ns();
        // Scaling a started app reaches its instances at once.
        if app.state == "STARTED" && app.instances != before.instances && !app.process_guid.is_empty() {
            self.sched()
                .update_desired_lrp(pb::UpdateDesiredLrpRequest {
                    process_guid: app.process_guid.clone(),
                    instances: Some(i32::try_from(app.instances).unwrap_or(i32::MAX)),
                    ..Default::default()
                })
                .await?;
        }
        self.store.put_app(&app)?;
        let scaled =
            app.instances != before.instances || app.memory_mb != before.memory_mb || app.disk_mb != before.disk_mb;
        if scaled {
            let meta = BTreeMap::from([
                ("instances".to_string(), app.instances.to_string()),
                ("memory_in_mb".to_string(), app.memory_mb.to_string()),
                ("disk_in_mb".to_string(), app.disk_mb.to_string()),
            ]);
            self.event(&app, "audit.app.process.scale", meta);
        }
        if !scaled || app.env != before.env || app.command != before.command || app.enable_ssh != before.enable_ssh {
            let mut meta = BTreeMap::new();
            if app.env != before.env {
                meta.insert("environment_variables".to_string(), "[PRIVATE DATA HIDDEN]".to_string());
            }
            if app.enable_ssh != before.enable_ssh {
                meta.insert("enable_ssh".to_string(), app.enable_ssh.to_string());
            }
            self.event(&app, "audit.app.update", meta);
        }
        Ok(app)
    }

    pub fn list_apps(&self, space: &str, all: bool) -> Result<Vec<AppRecord>, AppsError> {
        if all { self.store.apps(None) } else { self.store.apps(Some(self.space(space)?)) }
    }

    pub async fn delete_app(&self, r: &pb::AppRef) -> Result<(), AppsError> {
        let _op = self.ops.lock().await;
        let app = self.find(r)?;
        self.event(&app, "audit.app.delete-request", BTreeMap::new());
        if !app.process_guid.is_empty() {
            self.withdraw(&app).await;
            if let Err(e) = self.remove_lrp(&app.process_guid).await {
                self.unwithdraw(&app.process_guid);
                return Err(e);
            }
        }
        for p in app.processes.values().filter(|p| !p.process_guid.is_empty()) {
            self.remove_lrp(&p.process_guid).await?;
        }
        self.store.delete_app(&app.guid)?;
        self.logs.forget(&app.guid);
        self.release_package(&app, &app.package_key).await;
        // Droplets are the app's own; packages are shared by checksum.
        for key in app.droplet.iter().map(|d| &d.key).chain(&app.old_droplets).filter(|k| !k.is_empty()) {
            let _ = self.blobs.delete(key).await;
        }
        let _ = self.blobs.delete(&crate::staging::stager::cache_key(&app.guid)).await;
        self.routes_changed.notify_one();
        tracing::info!(app_guid = %app.guid, name = %app.name, "app deleted");
        Ok(())
    }

    /// Records an uploaded package as the app's latest.
    pub async fn set_package(&self, r: &pb::AppRef, package: &pb::Package) -> Result<AppRecord, AppsError> {
        let _op = self.ops.lock().await;
        let mut app = self.find(r)?;
        let replaced = std::mem::replace(&mut app.package_key, package.key.clone());
        app.package_uploaded_at = now_ns();
        app.updated_at = app.package_uploaded_at;
        self.store.put_app(&app)?;
        if replaced != app.package_key {
            self.release_package(&app, &replaced).await;
        }
        self.event(&app, "audit.app.package.upload", BTreeMap::from([("size".to_string(), package.size.to_string())]));
        Ok(app)
    }

    /// Deletes a package blob no app's current package is any more (the
    /// caller holds `ops`, so no app takes it up meanwhile through this layer).
    async fn release_package(&self, app: &AppRecord, key: &str) {
        if key.is_empty() {
            return;
        }
        match self.store.package_in_use(key) {
            Ok(false) => match self.blobs.delete(key).await {
                Ok(()) => tracing::info!(app_guid = %app.guid, package = key, "package deleted: no app uses it"),
                Err(e) => tracing::warn!(app_guid = %app.guid, package = key, error = %e, "could not delete a package"),
            },
            Ok(true) => {}
            Err(e) => tracing::warn!(app_guid = %app.guid, error = %e, "could not tell whether a package is in use"),
        }
    }

    pub fn proto_app(&self, a: &AppRecord) -> pb::App {
        let d = a.droplet.clone().unwrap_or_default();
        pb::App {
            guid: a.guid.clone(),
            name: a.name.clone(),
            space: a.space.clone(),
            state: a.state.clone(),
            instances: a.instances,
            memory_mb: a.memory_mb,
            disk_mb: a.disk_mb,
            health_check_type: a.health_check_type.clone(),
            health_check_endpoint: shown_endpoint(&a.web()),
            health_check_timeout: a.health_check_timeout,
            command: a.command.clone(),
            buildpacks: a.buildpacks.clone(),
            stack: if d.stack.is_empty() { a.stack.clone() } else { d.stack.clone() },
            env: a.env.clone().into_iter().collect(),
            routes: a.routes.clone(),
            package_state: a.package_state.clone(),
            staging_failed_reason: a.staging_failed_reason.clone(),
            droplet_key: d.key.clone(),
            detected_buildpack: if d.buildpacks.is_empty() {
                d.detected_buildpack.clone()
            } else {
                d.buildpacks.join(", ")
            },
            detected_start_command: d.start_command.clone(),
            process_guid: a.process_guid.clone(),
            enable_ssh: a.enable_ssh,
            created_at: a.created_at,
            updated_at: a.updated_at,
            package_key: a.package_key.clone(),
            docker_image: a.docker_image.clone(),
            docker_username: a.docker_username.clone(),
            package_uploaded_at: a.package_uploaded_at,
            processes: a.all_processes().into_iter().map(|(t, p)| proto_process(a, &t, &p)).collect(),
        }
    }
}

pub fn proto_process(app: &AppRecord, process_type: &str, p: &ProcessRecord) -> pb::AppProcess {
    let droplet = app.droplet.as_ref();
    let detected_command = if process_type == super::store::WEB {
        droplet.map(|d| d.start_command.clone())
    } else {
        droplet.and_then(|d| d.process_types.get(process_type).cloned())
    };
    pb::AppProcess {
        detected_command: detected_command.unwrap_or_default(),
        r#type: process_type.to_string(),
        guid: p.guid.clone(),
        instances: p.instances,
        memory_mb: p.memory_mb,
        disk_mb: p.disk_mb,
        command: p.command.clone(),
        health_check_type: p.health_check_type.clone(),
        health_check_endpoint: shown_endpoint(p),
        health_check_timeout: p.health_check_timeout,
        process_guid: p.process_guid.clone(),
    }
}

/// The http health check's path as clients see it: "/" when unset.
fn shown_endpoint(p: &ProcessRecord) -> String {
    if p.health_check_endpoint.is_empty() && p.health_check_type == "http" {
        "/".into()
    } else {
        p.health_check_endpoint.clone()
    }
}
