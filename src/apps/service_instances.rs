//! User-provided service instances and their bindings to apps (`cf cups`,
//! `cf bind-service`); their credentials reach apps through VCAP_SERVICES.

use std::collections::BTreeMap;

use super::AppsError;
use super::layer::AppLayer;
use super::store::{BindingRecord, ServiceRecord};
use super::validate::validate_app_name;
use crate::executor::logs::now_ns;
use celld_base::guid::new_guid;
use celld_proto as pb;

impl AppLayer {
    pub fn create_service(&self, r: pb::CreateUserProvidedServiceRequest) -> Result<ServiceRecord, AppsError> {
        let space = self.space(&r.space)?.to_string();
        validate_app_name(&r.name).map_err(|_| {
            AppsError::InvalidArgument(format!(
                "service instance name {:?} is not valid: use 1-255 printable characters",
                r.name
            ))
        })?;
        let credentials = if r.credentials_json.trim().is_empty() { "{}" } else { r.credentials_json.as_str() };
        match serde_json::from_str::<serde_json::Value>(credentials) {
            Ok(v) if v.is_object() => {}
            Ok(_) => {
                return Err(AppsError::InvalidArgument(
                    "credentials must be a JSON object, like '{\"uri\":\"postgres://user:pass@host:5432/db\"}'".into(),
                ));
            }
            Err(e) => {
                return Err(AppsError::InvalidArgument(format!(
                    "credentials are not valid JSON: {e}; pass an object like '{{\"uri\":\"postgres://…\"}}'"
                )));
            }
        }
        let s = ServiceRecord {
            guid: new_guid(),
            name: r.name,
            space,
            credentials: credentials.to_string(),
            tags: r.tags,
            syslog_drain_url: r.syslog_drain_url,
            created_at: now_ns(),
        };
        self.store.create_service(&s)?;
        Ok(s)
    }

    fn find_service(&self, space: &str, name: &str) -> Result<ServiceRecord, AppsError> {
        let space = self.space(space)?;
        self.store
            .service_by_name(space, name)?
            .ok_or_else(|| AppsError::NotFound(format!("Service instance '{name}' not found in space '{space}'.")))
    }

    pub fn delete_service(&self, r: &pb::ServiceRef) -> Result<(), AppsError> {
        let s = self.find_service(&r.space, &r.name)?;
        self.store.delete_service(&s.guid)
    }

    pub fn services(&self, space: &str) -> Result<Vec<pb::ServiceInstance>, AppsError> {
        let space = self.space(space)?;
        let mut out = Vec::new();
        for s in self.store.services(space)? {
            let bound_apps = self.store.bound_apps(&s.guid)?;
            out.push(proto_service(s, bound_apps));
        }
        Ok(out)
    }

    pub async fn bind(&self, r: &pb::BindServiceRequest) -> Result<pb::ServiceBinding, AppsError> {
        let app_ref = r.app.clone().unwrap_or_default();
        let _op = self.ops.lock().await;
        let app = self.find(&app_ref)?;
        let svc = self.find_service(&app.space, &r.service)?;
        let b = BindingRecord { guid: new_guid(), app_guid: app.guid.clone(), service_guid: svc.guid.clone() };
        self.store.bind(&b)?;
        self.event(&app, "audit.service_binding.create", BTreeMap::from([("service_instance".to_string(), svc.name)]));
        Ok(pb::ServiceBinding { guid: b.guid, app_guid: b.app_guid, service_guid: b.service_guid })
    }

    pub async fn unbind(&self, r: &pb::BindServiceRequest) -> Result<(), AppsError> {
        let app_ref = r.app.clone().unwrap_or_default();
        let _op = self.ops.lock().await;
        let app = self.find(&app_ref)?;
        let svc = self.find_service(&app.space, &r.service)?;
        if !self.store.unbind(&app.guid, &svc.guid)? {
            return Err(AppsError::NotFound(format!(
                "app '{}' is not bound to service instance '{}'",
                app.name, svc.name
            )));
        }
        self.event(&app, "audit.service_binding.delete", BTreeMap::from([("service_instance".to_string(), svc.name)]));
        Ok(())
    }
}

pub fn proto_service(s: ServiceRecord, bound_apps: Vec<String>) -> pb::ServiceInstance {
    pb::ServiceInstance {
        guid: s.guid,
        name: s.name,
        space: s.space,
        credentials_json: s.credentials,
        tags: s.tags,
        syslog_drain_url: s.syslog_drain_url,
        bound_apps,
        created_at: s.created_at,
    }
}
