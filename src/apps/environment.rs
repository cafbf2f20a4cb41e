//! The environment Cloud Controller gives an app: its own variables,
//! VCAP_APPLICATION and VCAP_SERVICES (user-provided services in CF's shape),
//! for staging, processes, tasks and `cf env`.

use serde_json::json;

use super::AppsError;
use super::layer::AppLayer;
use super::store::{AppRecord, ProcessRecord};
use celld_proto as pb;

/// Which process an environment is for: its type, CC's record of it and the
/// Diego process guid it runs as.
pub(super) struct ProcessIdent<'a> {
    pub process_type: &'a str,
    pub process: &'a ProcessRecord,
    pub diego_guid: &'a str,
}

impl AppLayer {
    /// The environment CC gives an app: its own variables, VCAP_APPLICATION
    /// and VCAP_SERVICES (the launcher derives DATABASE_URL from it).
    pub(super) fn app_env(
        &self,
        app: &AppRecord,
        process: Option<ProcessIdent<'_>>,
    ) -> Result<Vec<(String, String)>, AppsError> {
        let mut env: Vec<(String, String)> = app.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.push(("VCAP_APPLICATION".into(), self.vcap_application(app, process.as_ref()).to_string()));
        env.push(("VCAP_SERVICES".into(), self.vcap_services(app)?.to_string()));
        Ok(env)
    }

    fn vcap_application(&self, app: &AppRecord, process: Option<&ProcessIdent<'_>>) -> serde_json::Value {
        let version = process.and_then(|p| p.diego_guid.get(app.guid.len() + 1..)).unwrap_or("");
        let (mem, disk) = process.map_or((app.memory_mb, app.disk_mb), |p| (p.process.memory_mb, p.process.disk_mb));
        let mut v = json!({
            "cf_api": self.cf_api.get().map(String::as_str).unwrap_or_default(),
            "limits": { "fds": 16384, "mem": mem, "disk": disk },
            "application_name": app.name,
            "application_uris": app.routes,
            "name": app.name,
            "space_name": app.space,
            "space_id": space_guid(&app.space),
            "organization_id": space_guid("local"),
            "organization_name": "local",
            "uris": app.routes,
            "application_id": app.guid,
            "version": version,
            "application_version": version,
        });
        // CC's process guid (the app's own for web), not Diego's.
        if let (Some(p), Some(obj)) = (process, v.as_object_mut()) {
            obj.insert("process_id".into(), json!(p.process.guid));
            obj.insert("process_type".into(), json!(p.process_type));
        }
        v
    }

    /// VCAP_SERVICES with Cloud Foundry's shape for user-provided services.
    fn vcap_services(&self, app: &AppRecord) -> Result<serde_json::Value, AppsError> {
        let mut list = Vec::new();
        for (binding, svc) in self.store.bindings_of_app(&app.guid)? {
            let credentials: serde_json::Value = serde_json::from_str(&svc.credentials).unwrap_or_else(|_| json!({}));
            list.push(json!({
                "label": "user-provided",
                "name": svc.name,
                "tags": svc.tags,
                "instance_guid": svc.guid,
                "instance_name": svc.name,
                "binding_guid": binding.guid,
                "binding_name": null,
                "credentials": credentials,
                "syslog_drain_url": if svc.syslog_drain_url.is_empty() { serde_json::Value::Null } else { json!(svc.syslog_drain_url) },
                "volume_mounts": [],
            }));
        }
        Ok(if list.is_empty() { json!({}) } else { json!({ "user-provided": list }) })
    }

    pub fn env(&self, r: &pb::AppRef) -> Result<pb::AppEnv, AppsError> {
        let app = self.find(r)?;
        let services = self.vcap_services(&app)?.to_string();
        Ok(pb::AppEnv {
            user: app.env.clone().into_iter().collect(),
            database_url: celld_lifecycle::database_url(&services).unwrap_or_default(),
            vcap_services: services,
            vcap_application: self.vcap_application(&app, None).to_string(),
        })
    }
}

/// A stable guid for a space name (spaces exist by name only here).
pub fn space_guid(name: &str) -> String {
    let h = xxhash_rust::xxh64::xxh64(name.as_bytes(), 0x5ace);
    let l = xxhash_rust::xxh64::xxh64(name.as_bytes(), 0xc0de);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xffff,
        l >> 48,
        l & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_guids_are_stable_and_distinct() {
        assert_eq!(space_guid("dev"), space_guid("dev"));
        assert_ne!(space_guid("dev"), space_guid("prod"));
        assert_eq!(space_guid("dev").len(), 36);
    }
}
