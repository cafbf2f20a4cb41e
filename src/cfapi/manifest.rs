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
use crate::executor::logs::now_ns;
use celld_base::guid::new_guid;

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
    // MERGE: the app layer's apply_manifest
    let _ = (api, space, yaml);
    Err(CfError::unprocessable("manifests are not served yet"))
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
    // MERGE: diff
    let _ = (&space, &yaml);
    let diff: Vec<Value> = vec![];
    Ok((StatusCode::CREATED, Json(json!({ "diff": diff }))).into_response())
}
