//! Tasks (`cf run-task`, `cf tasks`, `cf terminate-task`) and audit events
//! (`cf events`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::apps::{app, app_ref};
use super::error::{CfError, CfResult};
use super::json::{self, link, metadata, passes, post_link, time, to_one};
use super::server::reply;
use super::{CfApi, Ctx, orgs, uaa};
use crate::apps::store::AppRecord;
use celld_proto as pb;

type Api = State<Arc<CfApi>>;

pub fn routes() -> Router<Arc<CfApi>> {
    Router::new()
        .route("/v3/apps/{guid}/tasks", get(app_tasks).post(create_task))
        .route("/v3/tasks", get(list_tasks))
        .route("/v3/tasks/{guid}", get(get_task))
        .route("/v3/tasks/{guid}/actions/cancel", post(cancel_task))
        .route("/v3/audit_events", get(audit_events))
}

fn task_json(base: &str, a: &AppRecord, t: &pb::AppTask) -> Value {
    let g = &t.guid;
    json!({
        "guid": g, "sequence_id": t.sequence_id, "name": t.name, "command": t.command, "state": t.state,
        "memory_in_mb": t.memory_mb, "disk_in_mb": t.disk_mb, "log_rate_limit_in_bytes_per_second": -1,
        "result": {"failure_reason": if t.failure_reason.is_empty() { Value::Null } else { json!(t.failure_reason) }},
        "droplet_guid": a.droplet.as_ref().map(super::packages::droplet_guid),
        "relationships": {"app": to_one(&a.guid)},
        "metadata": metadata(),
        "created_at": time(t.created_at), "updated_at": time(t.created_at),
        "links": {
            "self": link(base, &format!("/v3/tasks/{g}")),
            "app": link(base, &format!("/v3/apps/{}", a.guid)),
            "cancel": post_link(base, &format!("/v3/tasks/{g}/actions/cancel")),
        },
    })
}

async fn create_task(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<Response> {
    let a = app(&api, &guid)?;
    let b = json::body(&body)?;
    if a.droplet.is_none() {
        return Err(CfError::unprocessable("Task must have a droplet. Assign current droplet to app."));
    }
    let command = match json::opt_str(&b, "command")? {
        Some(c) => c.to_string(),
        None => return Err(CfError::unprocessable("Command can't be blank")),
    };
    let t = api
        .apps
        .run_task(pb::RunTaskRequest {
            app: Some(app_ref(&a)),
            command,
            name: json::opt_str(&b, "name")?.unwrap_or_default().into(),
            memory_mb: json::opt_u32(&b, "memory_in_mb")?.unwrap_or(0),
            disk_mb: json::opt_u32(&b, "disk_in_mb")?.unwrap_or(0),
        })
        .await?;
    Ok(reply(StatusCode::ACCEPTED, task_json(&ctx.base, &a, &t)))
}

/// Every task with its app, of the apps that pass `app_guids`.
async fn tasks_of(api: &CfApi, q: &json::Query) -> CfResult<Vec<(AppRecord, pb::AppTask)>> {
    let mut out = Vec::new();
    for a in api.apps.list_apps("", true)?.into_iter().filter(|a| passes(q, "app_guids", &a.guid)) {
        for t in api.apps.tasks(&app_ref(&a)).await? {
            out.push((a.clone(), t));
        }
    }
    Ok(out)
}

async fn app_tasks(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    Query(mut q): Query<json::Query>,
) -> CfResult<Json<Value>> {
    app(&api, &guid)?;
    let path = format!("/v3/apps/{guid}/tasks");
    let filters = q.clone();
    q.insert("app_guids".into(), guid);
    let items: Vec<Value> = tasks_of(&api, &q)
        .await?
        .iter()
        .filter(|(_, t)| passes(&filters, "states", &t.state) && passes(&filters, "names", &t.name))
        .map(|(a, t)| task_json(&ctx.base, a, t))
        .collect();
    Ok(Json(json::paginate(&ctx.base, &path, &filters, items)?))
}

async fn list_tasks(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let items = tasks_of(&api, &q)
        .await?
        .iter()
        .filter(|(_, t)| passes(&q, "guids", &t.guid) && passes(&q, "states", &t.state))
        .map(|(a, t)| task_json(&ctx.base, a, t))
        .collect();
    Ok(Json(json::paginate(&ctx.base, "/v3/tasks", &q, items)?))
}

async fn find_task(api: &CfApi, guid: &str) -> CfResult<(AppRecord, pb::AppTask)> {
    tasks_of(api, &json::Query::new()).await?.into_iter().find(|(_, t)| t.guid == guid).ok_or(CfError::NotFound("Task"))
}

async fn get_task(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let (a, t) = find_task(&api, &guid).await?;
    Ok(Json(task_json(&ctx.base, &a, &t)))
}

async fn cancel_task(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Response> {
    let (a, _) = find_task(&api, &guid).await?;
    let t = api.apps.cancel_task(&app_ref(&a), &guid).await?;
    Ok(reply(StatusCode::ACCEPTED, task_json(&ctx.base, &a, &t)))
}

/// `GET /v3/audit_events?target_guids=APP`: the app's events, oldest first
/// unless `order_by` says otherwise.
async fn audit_events(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let mut items = Vec::new();
    for a in api.apps.list_apps("", true)?.into_iter().filter(|a| passes(&q, "target_guids", &a.guid)) {
        let space = orgs::space_of_app(&api, &a.space)?;
        let mut events = api.apps.events(&app_ref(&a))?;
        events.sort_by_key(|e| e.timestamp);
        for e in events.iter().filter(|e| passes(&q, "types", &e.kind)) {
            let data: serde_json::Map<String, Value> = e.metadata.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            items.push((
                e.timestamp,
                json!({
                    "guid": e.guid, "type": e.kind,
                    "actor": {"guid": uaa::ADMIN_GUID, "type": "user", "name": e.actor},
                    "target": {"guid": a.guid, "type": "app", "name": a.name},
                    "data": data,
                    "space": {"guid": space.guid},
                    "organization": {"guid": space.org_guid},
                    "created_at": time(e.timestamp), "updated_at": time(e.timestamp),
                    "links": {"self": link(&ctx.base, &format!("/v3/audit_events/{}", e.guid))},
                }),
            ));
        }
    }
    items.sort_by_key(|(t, _)| *t);
    Ok(Json(json::paginate(&ctx.base, "/v3/audit_events", &q, items.into_iter().map(|(_, v)| v).collect())?))
}
