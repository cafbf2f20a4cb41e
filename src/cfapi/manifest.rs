//! Manifests (`apply_manifest`, `manifest_diff`) and CC's asynchronous jobs:
//! a 202 with `Location: /v3/jobs/GUID`, polled until COMPLETE or FAILED.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::error::{CfError, CfResult};
use super::json::{link, time};
use super::{CfApi, Ctx, orgs};
use crate::apps::AppsError;
use crate::apps::manifest::{self, ManifestApp, ManifestProcess};
use crate::apps::store::{AppRecord, ProcessRecord};
use crate::executor::logs::now_ns;
use celld_base::guid::new_guid;
use celld_proto as pb;

type Api = State<Arc<CfApi>>;

/// Jobs kept in memory: enough for the CLI's polling right after the
/// request; older finished ones are dropped.
const MAX_JOBS: usize = 1000;

pub fn routes() -> Router<Arc<CfApi>> {
    Router::new()
        .route("/v3/jobs/{guid}", get(get_job))
        .route("/v3/spaces/{guid}/actions/apply_manifest", post(apply_manifest))
        .route("/v3/spaces/{guid}/manifest_diff", post(manifest_diff))
}

fn job_json(base: &str, guid: &str, operation: &str, state: &str, errors: Vec<Value>) -> Value {
    let now = time(now_ns());
    json!({
        "guid": guid, "operation": operation, "state": state, "errors": errors, "warnings": [],
        "created_at": now, "updated_at": now,
        "links": {"self": link(base, &format!("/v3/jobs/{guid}"))},
    })
}

fn put_job(api: &CfApi, guid: &str, job: Value) {
    let mut jobs = api.jobs.lock().unwrap_or_else(|p| p.into_inner());
    if jobs.len() >= MAX_JOBS && !jobs.contains_key(guid) {
        let done: Vec<String> =
            jobs.iter().filter(|(_, j)| j["state"] != "PROCESSING").map(|(k, _)| k.clone()).collect();
        for k in done.into_iter().take(MAX_JOBS / 2) {
            jobs.remove(&k);
        }
    }
    jobs.insert(guid.to_string(), job);
}

fn accepted(base: &str, guid: &str) -> Response {
    (StatusCode::ACCEPTED, [("location", format!("{base}/v3/jobs/{guid}"))], "").into_response()
}

/// A job for work already done (or failed) by the time the request answers.
pub fn finished_job(api: &CfApi, base: &str, operation: &str, error: Option<CfError>) -> Response {
    let guid = new_guid();
    let (state, errors) = match error {
        None => ("COMPLETE", vec![]),
        Some(e) => ("FAILED", vec![e.body()]),
    };
    put_job(api, &guid, job_json(base, &guid, operation, state, errors));
    accepted(base, &guid)
}

async fn get_job(State(api): Api, _ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let read = || async { api.jobs.lock().unwrap_or_else(|p| p.into_inner()).get(&guid).cloned() };
    let job = super::long_poll(read, |j| j.as_ref().is_none_or(|j| j["state"] != "PROCESSING")).await;
    job.map(Json).ok_or(CfError::NotFound("Job"))
}

fn yaml_body(body: &[u8]) -> CfResult<String> {
    let text = std::str::from_utf8(body).map_err(|_| CfError::MessageParse("the manifest is not UTF-8 text".into()))?;
    if text.trim().is_empty() {
        return Err(CfError::MessageParse("the manifest is empty".into()));
    }
    Ok(text.to_string())
}

/// `POST /v3/spaces/:guid/actions/apply_manifest` (YAML body): the apps are
/// created or updated in a job, as CC does.
async fn apply_manifest(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<Response> {
    let space = orgs::space(&api, &guid)?;
    let yaml = yaml_body(&body)?;
    let job = new_guid();
    put_job(&api, &job, job_json(&ctx.base, &job, "space.apply_manifest", "PROCESSING", vec![]));
    let (api2, base) = (api.clone(), ctx.base.clone());
    let job2 = job.clone();
    tokio::spawn(async move {
        let (state, errors) = match apply(&api2, &space.name, &yaml).await {
            Ok(()) => ("COMPLETE", vec![]),
            Err(e) => ("FAILED", vec![e.body()]),
        };
        put_job(&api2, &job2, job_json(&base, &job2, "space.apply_manifest", state, errors));
    });
    Ok(accepted(&ctx.base, &job))
}

async fn apply(api: &CfApi, space: &str, yaml: &str) -> CfResult<()> {
    match api.apps.apply_manifest(space, yaml).await {
        Ok(_) => Ok(()),
        // A missing service or domain is a mistake in the manifest, not a 404.
        Err(AppsError::NotFound(m)) => Err(CfError::Unprocessable(m)),
        Err(e) => Err(e.into()),
    }
}

/// `POST /v3/spaces/:guid/manifest_diff`: what applying the manifest would
/// change, as JSON-patch-like operations on `/applications/N/...`.
async fn manifest_diff(
    State(api): Api,
    _ctx: Ctx,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<Response> {
    let space = orgs::space(&api, &guid)?;
    let yaml = yaml_body(&body)?;
    let m = manifest::parse(&yaml).map_err(|e| CfError::Unprocessable(e.to_string()))?;
    let mut diff = Vec::new();
    for (i, a) in m.applications.iter().enumerate() {
        let existing = api.apps.find(&pb::AppRef { space: space.name.clone(), name: a.name.clone() }).ok();
        diff.extend(app_diff(i, a, existing.as_ref()));
    }
    Ok((StatusCode::CREATED, Json(json!({ "diff": diff }))).into_response())
}

/// CC's manifest diff of one application: JSON-patch-like operations on
/// `/applications/I/...` for what the manifest names and the app has
/// otherwise (a new app is one `add` of the whole application).
fn app_diff(i: usize, m: &ManifestApp, app: Option<&AppRecord>) -> Vec<Value> {
    let path = |p: &str| format!("/applications/{i}/{p}");
    let Some(app) = app else {
        return vec![json!({"op": "add", "path": format!("/applications/{i}"), "value": {"name": m.name}})];
    };
    let mut ops = Vec::new();
    let mut field = |p: String, was: Value, now: Option<Value>| {
        if let Some(now) = now.filter(|n| *n != was) {
            ops.push(if was.is_null() {
                json!({"op": "add", "path": p, "value": now})
            } else {
                json!({"op": "replace", "path": p, "was": was, "value": now})
            });
        }
    };
    let process = |prefix: String,
                   p: &ProcessRecord,
                   mp: &ManifestProcess,
                   field: &mut dyn FnMut(String, Value, Option<Value>)| {
        field(format!("{prefix}instances"), json!(p.instances), mp.instances.map(|n| json!(n)));
        field(
            format!("{prefix}memory"),
            json!(format!("{}M", p.memory_mb)),
            mp.memory_mb.map(|n| json!(format!("{n}M"))),
        );
        field(
            format!("{prefix}disk_quota"),
            json!(format!("{}M", p.disk_mb)),
            mp.disk_mb.map(|n| json!(format!("{n}M"))),
        );
        let cmd = if p.command.is_empty() { Value::Null } else { json!(p.command) };
        field(format!("{prefix}command"), cmd, mp.command.clone().map(Value::from));
        field(
            format!("{prefix}health-check-type"),
            json!(p.health_check_type),
            mp.health_check_type.clone().map(Value::from),
        );
    };
    process(path(""), &app.web(), &m.web, &mut field);
    for (kind, mp) in &m.processes {
        match app.process(kind) {
            Some(p) => process(path(&format!("processes/{kind}/")), &p, mp, &mut field),
            None => field(path(&format!("processes/{kind}")), Value::Null, Some(json!({"type": kind}))),
        }
    }
    if let Some(bps) = &m.buildpacks {
        field(path("buildpacks"), json!(app.buildpacks), Some(json!(bps)));
    }
    if let Some(stack) = &m.stack {
        field(path("stack"), json!(app.stack), Some(json!(stack)));
    }
    for (k, v) in &m.env {
        field(path(&format!("env/{k}")), app.env.get(k).map(|w| json!(w)).unwrap_or(Value::Null), Some(json!(v)));
    }
    if let Some(routes) = &m.routes {
        let now: Vec<Value> = routes.iter().map(|r| json!({"route": r})).collect();
        let was: Vec<Value> = app.routes.iter().map(|r| json!({"route": r})).collect();
        field(path("routes"), json!(was), Some(json!(now)));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_names_what_changes() {
        let app = AppRecord {
            name: "a".into(),
            instances: 1,
            memory_mb: 256,
            disk_mb: 1024,
            health_check_type: "port".into(),
            ..Default::default()
        };
        let m = manifest::parse("applications:\n- name: a\n  instances: 2\n  memory: 256M\n  env: {X: y}\n").unwrap();
        let d = app_diff(0, &m.applications[0], Some(&app));
        assert_eq!(
            d,
            vec![
                json!({"op": "replace", "path": "/applications/0/instances", "was": 1, "value": 2}),
                json!({"op": "add", "path": "/applications/0/env/X", "value": "y"}),
            ]
        );
        assert_eq!(app_diff(3, &m.applications[0], None)[0]["path"], "/applications/3");
    }
}
