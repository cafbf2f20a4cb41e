//! The Cloud Foundry API of `celld --local` (`--cf-api-listen`): what the
//! real `cf` CLI speaks — the root document, Cloud Controller v3 over the app
//! layer, a UAA for one `admin` user, and log-cache's read API. One listener
//! serves all of them; the root document announces each (and the ssh proxy,
//! with its host key's fingerprint).
//!
//! One file per kind of resource: `orgs` (organizations, spaces, domains,
//! stacks, feature flags), `apps` (apps, their actions, env, processes and
//! stats), `packages` (packages, resource matches, builds, droplets),
//! `manifest` (apply_manifest, manifest_diff, jobs), `services`, `routes`,
//! `tasks` (tasks and audit events), `buildpacks`, `logcache`; `uaa` the
//! tokens, `store` what the API keeps beyond the app layer, `json` CC's JSON
//! conventions, `error` the one mapping of errors to CC's bodies.

mod apps;
mod buildpacks;
pub mod error;
mod json;
mod logcache;
mod manifest;
mod orgs;
mod packages;
mod routes;
mod server;
mod services;
pub mod store;
mod tasks;
pub mod uaa;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde_json::{Value, json};

use crate::apps::AppLayer;
use error::CfError;
use store::CfStore;
use uaa::{Claims, Uaa};

pub use server::{CfApiConfig, serve};

/// CC's API version this API answers as (the cf CLI v8 wants ≥ 3.99).
pub const CC_API_VERSION: &str = "3.99.0";

/// How long a read of something in progress (a job, a build, instances that
/// are starting) may wait for it to finish before answering. The cf CLI polls
/// every 3 s; answering when the state changes lets its first poll see the
/// end instead of costing it 3 s per step.
const LONG_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Re-reads `read` until `done` says so or [`LONG_POLL`] has passed; the last read.
async fn long_poll<T, F, Fut>(mut read: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    loop {
        let v = read().await;
        if done(&v) || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

pub struct CfApi {
    apps: Arc<AppLayer>,
    uaa: Uaa,
    store: CfStore,
    /// Files of uploaded packages by SHA-1, for `resource_matches`.
    resources: PathBuf,
    /// Asynchronous jobs (apply_manifest, deletes) by guid.
    jobs: Mutex<HashMap<String, Value>>,
    tls: bool,
}

/// What every authenticated handler gets: the verified user and the URL this
/// API is reached at (from the request's Host, so links work however the
/// client named us).
pub struct Ctx {
    pub user: Claims,
    pub base: String,
}

/// The URL this API is reached at, for unauthenticated handlers.
pub struct Base(pub String);

fn base_of(parts: &Parts, tls: bool) -> String {
    let host = parts.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    format!("{}://{host}", if tls { "https" } else { "http" })
}

impl FromRequestParts<Arc<CfApi>> for Ctx {
    type Rejection = CfError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<CfApi>) -> Result<Self, Self::Rejection> {
        let auth = parts.headers.get("authorization").and_then(|h| h.to_str().ok());
        let user = api.uaa.authenticate(auth)?;
        Ok(Ctx { user, base: base_of(parts, api.tls) })
    }
}

impl FromRequestParts<Arc<CfApi>> for Base {
    type Rejection = CfError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<CfApi>) -> Result<Self, Self::Rejection> {
        Ok(Base(base_of(parts, api.tls)))
    }
}

impl CfApi {
    /// The root document (`GET /`): where CC v3, the UAA, log-cache and the
    /// ssh proxy are.
    fn root(&self, base: &str) -> Value {
        let ssh = self.apps.ssh_info();
        // The CLI tells a fingerprint's kind by its length: SHA-256 is the bare
        // 43-character base64, without ssh-keygen's "SHA256:" prefix.
        let fp = ssh.host_key_fingerprint.strip_prefix("SHA256:").unwrap_or(&ssh.host_key_fingerprint);
        let app_ssh = if ssh.endpoint.is_empty() {
            Value::Null
        } else {
            json!({"href": ssh.endpoint, "meta": {"host_key_fingerprint": fp, "oauth_client": "ssh-proxy"}})
        };
        json!({
            "links": {
                "self": {"href": base},
                "bits_service": null,
                "cloud_controller_v2": null,
                "cloud_controller_v3": {"href": format!("{base}/v3"), "meta": {"version": CC_API_VERSION}},
                "network_policy_v0": null,
                "network_policy_v1": null,
                "login": {"href": base},
                "uaa": {"href": base},
                "credhub": null,
                "routing": null,
                "logging": null,
                "log_cache": {"href": base},
                "log_stream": null,
                "app_ssh": app_ssh,
            }
        })
    }

    /// `GET /v3`: the v3 resources' links.
    fn v3_root(&self, base: &str) -> Value {
        let names = [
            "app_usage_events",
            "apps",
            "audit_events",
            "buildpacks",
            "builds",
            "deployments",
            "domains",
            "droplets",
            "environment_variable_groups",
            "feature_flags",
            "info",
            "isolation_segments",
            "organizations",
            "packages",
            "processes",
            "resource_matches",
            "roles",
            "routes",
            "service_credential_bindings",
            "service_instances",
            "spaces",
            "stacks",
            "tasks",
            "users",
        ];
        let mut links = serde_json::Map::new();
        links.insert("self".into(), json!({"href": format!("{base}/v3")}));
        for n in names {
            links.insert(n.into(), json!({"href": format!("{base}/v3/{n}")}));
        }
        json!({ "links": links })
    }

    /// `GET /v3/info`.
    fn info(&self, base: &str) -> Value {
        json!({
            "build": "celld",
            "cli_version": {"minimum": "", "recommended": ""},
            "custom": {},
            "description": "celld --local: a Cloud Foundry Diego cell on one machine",
            "name": "celld",
            "version": 0,
            "osbapi_version": "",
            "links": {"self": {"href": format!("{base}/v3/info")}, "support": {"href": ""}},
        })
    }
}
