//! log-cache's read API (`/api/v1/info`, `/api/v1/read/:source_id`) over the
//! app layer's kept logs: what `cf logs --recent` and `cf push`'s staging
//! output read. The root document's `log_cache` link points here.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::error::{CfError, CfResult};
use super::{CfApi, Ctx};
use crate::apps::{log_cache_info, parse_query};

type Api = State<Arc<CfApi>>;

pub fn routes() -> Router<Arc<CfApi>> {
    Router::new()
        .route("/api/v1/info", get(|| async { Json(log_cache_info()) }))
        .route("/api/v1/read/{source_id}", get(read))
}

async fn read(
    State(api): Api,
    _ctx: Ctx,
    Path(source_id): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let q = parse_query(q.as_deref().unwrap_or_default()).map_err(CfError::LogCache)?;
    Ok(Json(api.apps.read_log_cache(&source_id, &q)?))
}
