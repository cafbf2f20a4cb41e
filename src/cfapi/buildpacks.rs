//! Admin buildpacks (`cf buildpacks`, `create-buildpack`, `update-buildpack`,
//! `delete-buildpack`) over the staging registry. CC makes a buildpack in two
//! steps — the record (AWAITING_UPLOAD), then its bits — so a created
//! buildpack waits in the API's store until its upload registers it.

use std::sync::Arc;

use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::error::{CfError, CfResult};
use super::json::{self, link, metadata, passes, post_link, time};
use super::server::reply;
use super::store::BuildpackRecord;
use super::{CfApi, Ctx, orgs};
use crate::executor::logs::now_ns;
use crate::staging::registry::Buildpack;
use crate::staging::service::{Scratch, scratch_file};

type Api = State<Arc<CfApi>>;

pub fn routes() -> Router<Arc<CfApi>> {
    Router::new()
        .route("/v3/buildpacks", get(list).post(create))
        .route("/v3/buildpacks/{guid}", get(get_one).patch(update).delete(delete))
        // The upload counts its bits against --max-package-size-mb itself.
        .route("/v3/buildpacks/{guid}/upload", post(upload).layer(axum::extract::DefaultBodyLimit::disable()))
}

/// A buildpack's guid: the one it was created with, or one from its name
/// (celld's built-in buildpacks were never created through the API).
fn guid_of(api: &CfApi, name: &str) -> String {
    match api.store.by_name::<BuildpackRecord>("buildpacks", name) {
        Ok(Some(r)) => r.guid,
        _ => orgs::named_guid("buildpack", name),
    }
}

/// Registered buildpacks in position order, then those awaiting their bits.
fn all(api: &CfApi) -> CfResult<Vec<(BuildpackRecord, Option<Buildpack>)>> {
    let registered = api.apps.stager.registry.list();
    let mut out: Vec<(BuildpackRecord, Option<Buildpack>)> = registered
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let rec = BuildpackRecord {
                guid: guid_of(api, &b.name),
                name: b.name.clone(),
                stack: b.stack.clone(),
                position: u32::try_from(i + 1).unwrap_or(u32::MAX),
                enabled: b.enabled,
                locked: b.locked,
                created_at: 0,
            };
            (rec, Some(b))
        })
        .collect();
    for r in api.store.list::<BuildpackRecord>("buildpacks", None)? {
        if !out.iter().any(|(o, _)| o.name == r.name) {
            out.push((r, None));
        }
    }
    Ok(out)
}

fn find(api: &CfApi, guid: &str) -> CfResult<(BuildpackRecord, Option<Buildpack>)> {
    all(api)?.into_iter().find(|(r, _)| r.guid == guid).ok_or(CfError::NotFound("Buildpack"))
}

fn buildpack_json(base: &str, r: &BuildpackRecord, b: Option<&Buildpack>) -> Value {
    let g = &r.guid;
    json!({
        "guid": g, "name": r.name,
        "stack": if r.stack.is_empty() { Value::Null } else { json!(r.stack) },
        "state": if b.is_some() { "READY" } else { "AWAITING_UPLOAD" },
        "filename": b.map(|b| b.filename.clone()),
        "position": r.position, "enabled": r.enabled, "locked": r.locked,
        "created_at": time(r.created_at), "updated_at": time(r.created_at),
        "metadata": metadata(),
        "links": {"self": link(base, &format!("/v3/buildpacks/{g}")), "upload": post_link(base, &format!("/v3/buildpacks/{g}/upload"))},
    })
}

async fn list(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let items = all(&api)?
        .iter()
        .filter(|(r, _)| passes(&q, "names", &r.name) && passes(&q, "stacks", &r.stack))
        .map(|(r, b)| buildpack_json(&ctx.base, r, b.as_ref()))
        .collect();
    Ok(Json(json::paginate(&ctx.base, "/v3/buildpacks", &q, items)?))
}

async fn get_one(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let (r, b) = find(&api, &guid)?;
    Ok(Json(buildpack_json(&ctx.base, &r, b.as_ref())))
}

async fn create(State(api): Api, ctx: Ctx, body: axum::body::Bytes) -> CfResult<Response> {
    let b = json::body(&body)?;
    let name = json::opt_str(&b, "name")?.ok_or_else(|| CfError::unprocessable("Name can't be blank"))?;
    crate::staging::registry::validate_name(name).map_err(|e| CfError::unprocessable(e.to_string()))?;
    let stack = json::opt_str(&b, "stack")?.unwrap_or_default();
    if all(&api)?.iter().any(|(r, _)| r.name == name && r.stack == stack) {
        return Err(CfError::Uniqueness(if stack.is_empty() {
            format!("Buildpack with name '{name}' and an unassigned stack already exists")
        } else {
            format!("The buildpack name {name} is already in use for the stack {stack}")
        }));
    }
    let r = BuildpackRecord {
        guid: celld_base::guid::new_guid(),
        name: name.into(),
        stack: stack.into(),
        // CC's default: first.
        position: json::opt_u32(&b, "position")?.unwrap_or(1),
        enabled: b.get("enabled").and_then(Value::as_bool).unwrap_or(true),
        locked: b.get("locked").and_then(Value::as_bool).unwrap_or(false),
        created_at: now_ns(),
    };
    api.store.put("buildpacks", &r.guid, Some(&r.name), "", &r)?;
    Ok(reply(StatusCode::CREATED, buildpack_json(&ctx.base, &r, None)))
}

/// `POST /v3/buildpacks/:guid/upload` (multipart `bits`): registers it.
async fn upload(State(api): Api, ctx: Ctx, Path(guid): Path<String>, mut form: Multipart) -> CfResult<Response> {
    let (r, existing) = find(&api, &guid)?;
    if existing.as_ref().is_some_and(|b| b.locked) {
        return Err(CfError::unprocessable(format!("Buildpack {} is locked", r.name)));
    }
    let stager = api.apps.stager.clone();
    let tmp = Scratch(scratch_file(&stager, "cf-buildpack"));
    let mut filename = String::new();
    let mut got = false;
    while let Some(mut field) = form.next_field().await.map_err(|e| CfError::MessageParse(e.to_string()))? {
        if field.name() != Some("bits") {
            continue;
        }
        filename = field.file_name().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
        super::packages::receive_field(&mut field, &tmp.0, stager.config().max_package_bytes).await?;
        got = true;
    }
    if !got {
        return Err(CfError::unprocessable("Upload must include the buildpack's bits"));
    }
    // A re-upload keeps the buildpack where it is; a first one takes the
    // position and switches it was created with.
    let registry = &stager.registry;
    let done = match existing {
        Some(_) => registry.upload(stager.blobs(), &r.name, &filename, &tmp.0).await,
        None => match registry.create(stager.blobs(), &r.name, r.position, &r.stack, &filename, &tmp.0).await {
            Ok(_) if !r.enabled || r.locked => registry.update(&r.name, None, Some(r.enabled), Some(r.locked)),
            other => other,
        },
    };
    done.map_err(|e| CfError::unprocessable(e.to_string()))?;
    let (r, b) = find(&api, &guid)?;
    Ok(reply(StatusCode::ACCEPTED, buildpack_json(&ctx.base, &r, b.as_ref())))
}

async fn update(State(api): Api, ctx: Ctx, Path(guid): Path<String>, body: axum::body::Bytes) -> CfResult<Json<Value>> {
    let (mut r, b) = find(&api, &guid)?;
    let body = json::body(&body)?;
    if let Some(p) = json::opt_u32(&body, "position")? {
        r.position = p;
    }
    if let Some(e) = body.get("enabled").and_then(Value::as_bool) {
        r.enabled = e;
    }
    if let Some(l) = body.get("locked").and_then(Value::as_bool) {
        r.locked = l;
    }
    if b.is_some() {
        let position = json::opt_u32(&body, "position")?;
        let enabled = body.get("enabled").and_then(Value::as_bool);
        let locked = body.get("locked").and_then(Value::as_bool);
        api.apps
            .stager
            .registry
            .update(&r.name, position, enabled, locked)
            .map_err(|e| CfError::unprocessable(e.to_string()))?;
    }
    api.store.put("buildpacks", &r.guid, Some(&r.name), "", &r)?;
    let (r, b) = find(&api, &guid)?;
    Ok(Json(buildpack_json(&ctx.base, &r, b.as_ref())))
}

async fn delete(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Response> {
    let (r, b) = find(&api, &guid)?;
    if b.is_some() {
        api.apps
            .stager
            .registry
            .delete(api.apps.stager.blobs(), &r.name)
            .await
            .map_err(|e| CfError::unprocessable(e.to_string()))?;
    }
    api.store.delete("buildpacks", &r.guid)?;
    Ok(super::manifest::finished_job(&api, &ctx.base, "buildpack.delete", None))
}
