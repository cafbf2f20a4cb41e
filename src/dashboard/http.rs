//! The dashboard's routes: the page and its assets, the JSON it reads, the
//! log stream, and the actions (behind `guard`).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Dashboard, DashboardError, assets, guard, logs};

type Api = Result<Json<Value>, DashboardError>;

pub fn router(d: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/style.css", get(assets::style))
        .route("/api/info", get(info))
        .route("/api/cells", get(cells))
        .route("/api/apps", get(apps))
        .route("/api/instances", get(cell_instances))
        .route("/api/apps/{guid}", get(app))
        .route("/api/apps/{guid}/events", get(events))
        .route("/api/apps/{guid}/env", get(env))
        .route("/api/apps/{guid}/logs", get(logs::stream))
        .route("/api/apps/{guid}/{action}", post(action))
        .fallback(|| async { DashboardError::NotFound("no such page or API".into()) })
        .layer(axum::middleware::from_fn_with_state(d.clone(), host_guard))
        .with_state(d)
}

/// Every request, page or API, must name a host the dashboard answers to.
async fn host_guard(
    State(d): State<Arc<Dashboard>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match guard::check_host(req.headers(), d.system_host.as_deref()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn info(State(d): State<Arc<Dashboard>>) -> Json<Value> {
    Json(json!({ "mode": d.source.mode(), "actions": d.actions }))
}

async fn cells(State(d): State<Arc<Dashboard>>) -> Api {
    Ok(Json(json!({ "cells": d.source.cells().await? })))
}

async fn apps(State(d): State<Arc<Dashboard>>) -> Api {
    Ok(Json(json!({ "apps": d.source.apps(&d.samples).await? })))
}

async fn cell_instances(State(d): State<Arc<Dashboard>>) -> Api {
    Ok(Json(json!({ "instances": d.source.cell_instances(&d.samples).await? })))
}

async fn app(State(d): State<Arc<Dashboard>>, Path(guid): Path<String>) -> Api {
    Ok(Json(d.source.app(&guid, &d.samples).await?))
}

async fn events(State(d): State<Arc<Dashboard>>, Path(guid): Path<String>) -> Api {
    Ok(Json(json!({ "events": d.source.events(&guid)? })))
}

async fn env(State(d): State<Arc<Dashboard>>, Path(guid): Path<String>) -> Api {
    Ok(Json(d.source.env(&guid)?))
}

#[derive(serde::Deserialize)]
struct Scale {
    instances: u32,
}

async fn action(
    State(d): State<Arc<Dashboard>>,
    Path((guid, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Api {
    guard::check(&headers, d.actions, &d.token)?;
    let apps = d.source.app_layer()?;
    let r = celld_proto::AppRef { name: guid, space: String::new() };
    let app = match action.as_str() {
        "start" => apps.start_app(&r).await?,
        "stop" => apps.stop_app(&r).await?,
        "restart" => apps.restart_app(&r).await?,
        "scale" => {
            let s: Scale = serde_json::from_slice(&body).map_err(|e| {
                DashboardError::BadRequest(format!("scale needs a JSON body like {{\"instances\": 2}}: {e}"))
            })?;
            apps.scale_process(&r, "web", Some(s.instances), None, None).await?
        }
        other => {
            return Err(DashboardError::NotFound(format!(
                "no action '{other}': the actions are start, stop, restart and scale"
            )));
        }
    };
    tracing::info!(app_guid = %app.guid, action = %action, "dashboard action");
    Ok(Json(json!({ "guid": app.guid, "name": app.name, "state": app.state, "instances": app.instances })))
}
