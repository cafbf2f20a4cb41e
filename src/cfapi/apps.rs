//! Apps and their processes: CRUD, start/stop/restart, env and environment
//! variables, processes with their stats and scaling, sidecars (none), ssh
//! features, the current droplet and the app's routes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::error::{CfError, CfResult};
use super::json::{self, link, metadata, passes, post_link, time, to_one};
use super::server::reply;
use super::store::SpaceRecord;
use super::{CfApi, Ctx, orgs, packages};
use crate::apps::manifest::ManifestProcess;
use crate::apps::store::{AppRecord, ProcessRecord, WEB};
use celld_proto as pb;

type Api = State<Arc<CfApi>>;

pub fn routes() -> Router<Arc<CfApi>> {
    Router::new()
        .route("/v3/apps", get(list_apps).post(create_app))
        .route("/v3/apps/{guid}", get(get_app).patch(update_app).delete(delete_app))
        .route("/v3/apps/{guid}/actions/{action}", post(app_action))
        .route("/v3/apps/{guid}/env", get(app_env))
        .route("/v3/apps/{guid}/environment_variables", get(env_vars).patch(set_env_vars))
        .route("/v3/apps/{guid}/processes", get(app_processes))
        .route("/v3/apps/{guid}/processes/{kind}", get(app_process))
        .route("/v3/apps/{guid}/processes/{kind}/stats", get(app_process_stats))
        .route("/v3/apps/{guid}/processes/{kind}/actions/scale", post(app_process_scale))
        .route("/v3/apps/{guid}/processes/{kind}/instances/{index}", delete(restart_instance))
        .route("/v3/apps/{guid}/sidecars", get(no_sidecars))
        .route("/v3/apps/{guid}/ssh_enabled", get(ssh_enabled))
        .route("/v3/apps/{guid}/features", get(app_features))
        .route("/v3/apps/{guid}/features/{name}", get(app_feature).patch(set_app_feature))
        .route("/v3/processes", get(list_processes))
        .route("/v3/processes/{guid}", get(get_process).patch(update_process))
        .route("/v3/processes/{guid}/stats", get(process_stats))
        .route("/v3/processes/{guid}/sidecars", get(no_sidecars))
        .route("/v3/processes/{guid}/actions/scale", post(process_scale))
}

/// An app by guid, or CC's 404.
pub fn app(api: &CfApi, guid: &str) -> CfResult<AppRecord> {
    api.apps.app_by_guid(guid)?.ok_or(CfError::NotFound("App"))
}

pub fn app_ref(a: &AppRecord) -> pb::AppRef {
    pb::AppRef { space: a.space.clone(), name: a.guid.clone() }
}

fn lifecycle(api: &CfApi, a: &AppRecord) -> Value {
    if a.docker_image.is_empty() {
        json!({"type": "buildpack", "data": {"buildpacks": a.buildpacks, "stack": packages::stack(api, a)}})
    } else {
        json!({"type": "docker", "data": {}})
    }
}

pub fn app_json(api: &CfApi, base: &str, a: &AppRecord) -> CfResult<Value> {
    let space = orgs::space_of_app(api, &a.space)?;
    let g = &a.guid;
    Ok(json!({
        "guid": g, "name": a.name, "state": a.state,
        "created_at": time(a.created_at), "updated_at": time(a.updated_at),
        "lifecycle": lifecycle(api, a),
        "relationships": {"space": to_one(&space.guid)},
        "metadata": metadata(),
        "links": {
            "self": link(base, &format!("/v3/apps/{g}")),
            "environment_variables": link(base, &format!("/v3/apps/{g}/environment_variables")),
            "space": link(base, &format!("/v3/spaces/{}", space.guid)),
            "processes": link(base, &format!("/v3/apps/{g}/processes")),
            "packages": link(base, &format!("/v3/apps/{g}/packages")),
            "current_droplet": link(base, &format!("/v3/apps/{g}/droplets/current")),
            "droplets": link(base, &format!("/v3/apps/{g}/droplets")),
            "tasks": link(base, &format!("/v3/apps/{g}/tasks")),
            "start": post_link(base, &format!("/v3/apps/{g}/actions/start")),
            "stop": post_link(base, &format!("/v3/apps/{g}/actions/stop")),
            "revisions": link(base, &format!("/v3/apps/{g}/revisions")),
            "deployed_revisions": link(base, &format!("/v3/apps/{g}/revisions/deployed")),
            "features": link(base, &format!("/v3/apps/{g}/features")),
        },
    }))
}

async fn list_apps(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let spaces: BTreeMap<String, SpaceRecord> =
        api.store.list::<SpaceRecord>("spaces", None)?.into_iter().map(|s| (s.name.clone(), s)).collect();
    let mut items = Vec::new();
    for a in api.apps.list_apps("", true)? {
        let space_guid = match spaces.get(&a.space) {
            Some(s) => s.guid.clone(),
            None => orgs::space_of_app(&api, &a.space)?.guid,
        };
        if passes(&q, "names", &a.name) && passes(&q, "guids", &a.guid) && passes(&q, "space_guids", &space_guid) {
            items.push(app_json(&api, &ctx.base, &a)?);
        }
    }
    Ok(Json(json::paginate(&ctx.base, "/v3/apps", &q, items)?))
}

/// The space an app is to be made in, by the request's relationship.
fn target_space(api: &CfApi, b: &Value) -> CfResult<SpaceRecord> {
    let guid = json::relationship(b, "space")?;
    orgs::space(api, guid)
        .map_err(|_| CfError::unprocessable("Invalid space. Ensure that the space exists and you have access to it."))
}

async fn create_app(State(api): Api, ctx: Ctx, body: axum::body::Bytes) -> CfResult<Response> {
    let b = json::body(&body)?;
    let name = json::opt_str(&b, "name")?.ok_or_else(|| CfError::unprocessable("Name can't be blank"))?;
    let space = target_space(&api, &b)?;
    let lifecycle = b.get("lifecycle").cloned().unwrap_or(Value::Null);
    let buildpacks = lifecycle
        .pointer("/data/buildpacks")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let stack = lifecycle.pointer("/data/stack").and_then(Value::as_str).unwrap_or_default().to_string();
    let env = string_map(b.get("environment_variables"))?;
    if api.apps.find(&pb::AppRef { space: space.name.clone(), name: name.into() }).is_ok() {
        return Err(CfError::Uniqueness(format!("App with the name '{name}' already exists.")));
    }
    // Routes come from apply_manifest or `cf map-route`, as in CC: a new app
    // has none.
    let a = api
        .apps
        .create_app(pb::CreateAppRequest {
            space: space.name.clone(),
            name: name.into(),
            buildpacks,
            stack,
            env: env.into_iter().collect(),
            no_route: true,
            ..Default::default()
        })
        .await?;
    Ok(reply(StatusCode::CREATED, app_json(&api, &ctx.base, &a)?))
}

/// A JSON object of strings (environment variables); null values are unsets
/// and are returned as such by `None`.
fn env_patch(v: Option<&Value>) -> CfResult<BTreeMap<String, Option<String>>> {
    let Some(v) = v else { return Ok(BTreeMap::new()) };
    let obj = v.as_object().ok_or_else(|| CfError::unprocessable("Var must be an object"))?;
    obj.iter()
        .map(|(k, v)| match v {
            Value::Null => Ok((k.clone(), None)),
            Value::String(s) => Ok((k.clone(), Some(s.clone()))),
            Value::Number(n) => Ok((k.clone(), Some(n.to_string()))),
            Value::Bool(b) => Ok((k.clone(), Some(b.to_string()))),
            _ => Err(CfError::unprocessable(format!("Environment variable {k} must be a string, number or boolean"))),
        })
        .collect()
}

fn string_map(v: Option<&Value>) -> CfResult<BTreeMap<String, String>> {
    Ok(env_patch(v)?.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect())
}

async fn get_app(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    Ok(Json(app_json(&api, &ctx.base, &app(&api, &guid)?)?))
}

async fn update_app(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    let b = json::body(&body)?;
    if json::opt_str(&b, "name")?.is_some_and(|n| n != a.name) {
        return Err(CfError::unprocessable("Renaming an app is not supported by celld yet"));
    }
    let mut req = pb::UpdateAppRequest { app: Some(app_ref(&a)), ..Default::default() };
    if let Some(l) = b.get("lifecycle") {
        if let Some(bps) = l.pointer("/data/buildpacks").and_then(Value::as_array) {
            req.set_buildpacks = true;
            req.buildpacks = bps.iter().filter_map(Value::as_str).map(str::to_string).collect();
        }
        req.stack = l.pointer("/data/stack").and_then(Value::as_str).map(str::to_string);
    }
    let a = api.apps.update_app(req).await?;
    Ok(Json(app_json(&api, &ctx.base, &a)?))
}

async fn delete_app(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Response> {
    let a = app(&api, &guid)?;
    api.apps.delete_app(&app_ref(&a)).await?;
    packages::forget_app(&api, &a.guid)?;
    Ok(super::manifest::finished_job(&api, &ctx.base, "app.delete", None))
}

async fn app_action(State(api): Api, ctx: Ctx, Path((guid, action)): Path<(String, String)>) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    let r = app_ref(&a);
    let a = match action.as_str() {
        "start" => {
            if a.droplet.is_none() {
                return Err(CfError::unprocessable("Assign a droplet before starting this app."));
            }
            api.apps.start_app(&r).await?
        }
        "stop" => api.apps.stop_app(&r).await?,
        "restart" => {
            if a.droplet.is_none() {
                return Err(CfError::unprocessable("Assign a droplet before starting this app."));
            }
            api.apps.restart_app(&r).await?
        }
        "clear_buildpack_cache" => a,
        _ => return Err(CfError::UnknownRequest),
    };
    Ok(Json(app_json(&api, &ctx.base, &a)?))
}

async fn app_env(State(api): Api, _ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    let env = api.apps.env(&app_ref(&a))?;
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or_else(|_| json!({}));
    Ok(Json(json!({
        "staging_env_json": {},
        "running_env_json": {},
        "environment_variables": env.user,
        "system_env_json": {"VCAP_SERVICES": parse(&env.vcap_services)},
        "application_env_json": {"VCAP_APPLICATION": parse(&env.vcap_application)},
    })))
}

fn env_vars_json(base: &str, a: &AppRecord) -> Value {
    json!({
        "var": a.env,
        "links": {"self": link(base, &format!("/v3/apps/{}/environment_variables", a.guid)), "app": link(base, &format!("/v3/apps/{}", a.guid))},
    })
}

async fn env_vars(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    Ok(Json(env_vars_json(&ctx.base, &app(&api, &guid)?)))
}

async fn set_env_vars(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    let b = json::body(&body)?;
    let patch = env_patch(b.get("var"))?;
    let mut req = pb::UpdateAppRequest { app: Some(app_ref(&a)), ..Default::default() };
    for (k, v) in patch {
        match v {
            Some(v) => {
                req.set_env.insert(k, v);
            }
            None => req.unset_env.push(k),
        }
    }
    let a = api.apps.update_app(req).await?;
    Ok(Json(env_vars_json(&ctx.base, &a)))
}

/// One process type of an app as CC shows it: its type, its settings, and
/// the command it runs (its own, else the droplet's for the type).
pub struct ProcessView {
    pub kind: String,
    pub p: ProcessRecord,
    pub command: String,
}

/// The app's process types, web first; web's guid is the app's, as in CC.
pub fn processes(a: &AppRecord) -> Vec<ProcessView> {
    a.all_processes()
        .into_iter()
        .map(|(kind, p)| {
            let detected = a.droplet.as_ref().map(|d| match d.process_types.get(&kind) {
                Some(c) => c.clone(),
                None if kind == WEB => d.start_command.clone(),
                None => String::new(),
            });
            let command = if p.command.is_empty() { detected.unwrap_or_default() } else { p.command.clone() };
            ProcessView { kind, p, command }
        })
        .collect()
}

fn process_json(base: &str, a: &AppRecord, v: &ProcessView) -> Value {
    let p = &v.p;
    let g = &p.guid;
    let timeout = if p.health_check_timeout == 0 { Value::Null } else { json!(p.health_check_timeout) };
    let data = match p.health_check_type.as_str() {
        "http" => json!({"timeout": timeout, "invocation_timeout": null,
                         "endpoint": if p.health_check_endpoint.is_empty() { "/" } else { &p.health_check_endpoint }}),
        _ => json!({"timeout": timeout, "invocation_timeout": null}),
    };
    json!({
        "guid": g, "type": v.kind,
        "command": if v.command.is_empty() { Value::Null } else { json!(v.command) },
        "instances": p.instances, "memory_in_mb": p.memory_mb, "disk_in_mb": p.disk_mb,
        "log_rate_limit_in_bytes_per_second": -1,
        "health_check": {"type": p.health_check_type, "data": data},
        "readiness_health_check": {"type": "process", "data": {"invocation_timeout": null, "interval": null}},
        "relationships": {"app": to_one(&a.guid), "revision": {"data": null}},
        "metadata": metadata(),
        "created_at": time(a.created_at), "updated_at": time(a.updated_at),
        "version": p.process_guid,
        "links": {
            "self": link(base, &format!("/v3/processes/{g}")),
            "scale": post_link(base, &format!("/v3/processes/{g}/actions/scale")),
            "app": link(base, &format!("/v3/apps/{}", a.guid)),
            "space": link(base, &format!("/v3/spaces/{}", crate::apps::space_guid(&a.space))),
            "stats": link(base, &format!("/v3/processes/{g}/stats")),
        },
    })
}

/// The process of `kind` of an app, or 404.
fn process_of(a: &AppRecord, kind: &str) -> CfResult<ProcessView> {
    processes(a).into_iter().find(|v| v.kind == kind).ok_or(CfError::NotFound("Process"))
}

/// A process by its guid: the app and the process.
fn find_process(api: &CfApi, guid: &str) -> CfResult<(AppRecord, ProcessView)> {
    for a in api.apps.list_apps("", true)? {
        if let Some(p) = processes(&a).into_iter().find(|v| v.p.guid == guid) {
            return Ok((a, p));
        }
    }
    Err(CfError::NotFound("Process"))
}

async fn app_processes(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    Query(q): Query<json::Query>,
) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    let items =
        processes(&a).iter().filter(|p| passes(&q, "types", &p.kind)).map(|p| process_json(&ctx.base, &a, p)).collect();
    Ok(Json(json::paginate(&ctx.base, &format!("/v3/apps/{guid}/processes"), &q, items)?))
}

async fn list_processes(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let mut items = Vec::new();
    for a in api.apps.list_apps("", true)? {
        if !passes(&q, "app_guids", &a.guid) {
            continue;
        }
        for p in processes(&a).iter().filter(|v| passes(&q, "types", &v.kind) && passes(&q, "guids", &v.p.guid)) {
            items.push(process_json(&ctx.base, &a, p));
        }
    }
    Ok(Json(json::paginate(&ctx.base, "/v3/processes", &q, items)?))
}

async fn app_process(State(api): Api, ctx: Ctx, Path((guid, kind)): Path<(String, String)>) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    Ok(Json(process_json(&ctx.base, &a, &process_of(&a, &kind)?)))
}

async fn get_process(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let (a, p) = find_process(&api, &guid)?;
    Ok(Json(process_json(&ctx.base, &a, &p)))
}

/// `cf scale` and the manifest's sizes: instances, memory_in_mb, disk_in_mb.
async fn scale(api: &CfApi, base: &str, a: AppRecord, kind: &str, body: &[u8]) -> CfResult<Value> {
    process_of(&a, kind)?;
    let b = json::body(body)?;
    let (instances, memory, disk) =
        (json::opt_u32(&b, "instances")?, json::opt_u32(&b, "memory_in_mb")?, json::opt_u32(&b, "disk_in_mb")?);
    let a = api.apps.scale_process(&app_ref(&a), kind, instances, memory, disk).await?;
    Ok(process_json(base, &a, &process_of(&a, kind)?))
}

async fn app_process_scale(
    State(api): Api,
    ctx: Ctx,
    Path((guid, kind)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> CfResult<Response> {
    let a = app(&api, &guid)?;
    Ok(reply(StatusCode::ACCEPTED, scale(&api, &ctx.base, a, &kind, &body).await?))
}

async fn process_scale(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<Response> {
    let (a, p) = find_process(&api, &guid)?;
    Ok(reply(StatusCode::ACCEPTED, scale(&api, &ctx.base, a, &p.kind, &body).await?))
}

/// `PATCH /v3/processes/:guid`: the command and the health check.
async fn update_process(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<Json<Value>> {
    let (a, p) = find_process(&api, &guid)?;
    let b = json::body(&body)?;
    let mut m = ManifestProcess { command: json::opt_str(&b, "command")?.map(str::to_string), ..Default::default() };
    if let Some(h) = b.get("health_check") {
        m.health_check_type = json::opt_str(h, "type")?.map(str::to_string);
        if let Some(t) = m.health_check_type.as_deref().filter(|t| !["port", "process", "http"].contains(t)) {
            return Err(CfError::unprocessable(format!(
                "Health check type must be \"port\", \"process\", or \"http\" (got \"{t}\")"
            )));
        }
        if let Some(d) = h.get("data") {
            m.health_check_endpoint = json::opt_str(d, "endpoint")?.map(str::to_string);
            m.timeout = json::opt_u32(d, "timeout")?;
        }
    }
    api.apps.set_process_settings(&app_ref(&a), &p.kind, &m).await?;
    let a = app(&api, &a.guid)?;
    Ok(Json(process_json(&ctx.base, &a, &process_of(&a, &p.kind)?)))
}

async fn stats(api: &CfApi, a: &AppRecord, kind: &str) -> CfResult<Value> {
    process_of(a, kind)?;
    // While a started app has instances starting and none running yet, wait
    // for one to run or all to crash (what the CLI's polling waits for).
    let of_kind = |d: &pb::AppDetail| -> Vec<pb::AppInstance> {
        d.processes
            .iter()
            .find(|p| p.process.as_ref().is_some_and(|p| p.r#type == kind))
            .map(|p| p.instances.clone())
            .unwrap_or_default()
    };
    let settled = |d: &Result<pb::AppDetail, crate::apps::AppsError>| match d {
        Ok(d) if a.state == "STARTED" => {
            let is = of_kind(d);
            is.is_empty() || is.iter().any(|i| i.state == "running") || is.iter().all(|i| i.state == "crashed")
        }
        _ => true,
    };
    let r = app_ref(a);
    let detail = super::long_poll(|| api.apps.detail(&r), settled).await?;
    let now = crate::executor::logs::now_ns();
    let resources: Vec<Value> = of_kind(&detail)
        .iter()
        .map(|i| {
            let state = i.state.to_uppercase();
            let (host, port) = i.address.rsplit_once(':').unwrap_or(("", ""));
            let running = state == "RUNNING";
            json!({
                "type": kind, "index": i.index, "state": state,
                "host": host,
                "instance_ports": port.parse::<u32>().map(|p| vec![json!({"external": p, "internal": 8080, "external_tls_proxy_port": null, "internal_tls_proxy_port": null})]).unwrap_or_default(),
                "uptime": if running && i.since > 0 { (now - i.since) / 1_000_000_000 } else { 0 },
                "mem_quota": i.memory_quota_bytes, "disk_quota": i.disk_quota_bytes, "fds_quota": 16384,
                "log_rate_limit": -1,
                "isolation_segment": null,
                "details": if i.details.is_empty() { Value::Null } else { json!(i.details) },
                "usage": if running {
                    json!({"time": time(now), "cpu": i.cpu_percentage / 100.0, "mem": i.memory_bytes, "disk": i.disk_bytes, "log_rate": 0})
                } else { json!({}) },
            })
        })
        .collect();
    Ok(json!({ "resources": resources }))
}

async fn app_process_stats(
    State(api): Api,
    _ctx: Ctx,
    Path((guid, kind)): Path<(String, String)>,
) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    Ok(Json(stats(&api, &a, &kind).await?))
}

async fn process_stats(State(api): Api, _ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let (a, p) = find_process(&api, &guid)?;
    Ok(Json(stats(&api, &a, &p.kind).await?))
}

async fn restart_instance(
    State(api): Api,
    _ctx: Ctx,
    Path((guid, kind, index)): Path<(String, String, String)>,
) -> CfResult<Response> {
    let a = app(&api, &guid)?;
    process_of(&a, &kind)?;
    let index: u32 = index.parse().map_err(|_| CfError::unprocessable("The instance index must be a number"))?;
    api.apps.restart_instance(&app_ref(&a), index).await?;
    Ok(reply(StatusCode::NO_CONTENT, Value::Null))
}

async fn no_sidecars(ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    Ok(Json(json::paginate(&ctx.base, "/v3/sidecars", &q, vec![])?))
}

async fn ssh_enabled(State(api): Api, _ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    let space = api.apps.space_ssh(&a.space)?.allow_ssh;
    let reason = match (space, a.enable_ssh) {
        (false, _) => "Disabled for space",
        (true, false) => "Disabled for app",
        _ => "",
    };
    Ok(Json(json!({"enabled": space && a.enable_ssh, "reason": reason})))
}

fn feature(a: &AppRecord, name: &str) -> CfResult<Value> {
    match name {
        "ssh" => Ok(orgs::ssh_feature(a.enable_ssh)),
        "revisions" => {
            Ok(json!({"name": "revisions", "description": "Enable versioning of an application", "enabled": false}))
        }
        _ => Err(CfError::NotFound("Feature")),
    }
}

async fn app_features(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    Query(q): Query<json::Query>,
) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    Ok(Json(json::paginate(
        &ctx.base,
        &format!("/v3/apps/{guid}/features"),
        &q,
        vec![feature(&a, "ssh")?, feature(&a, "revisions")?],
    )?))
}

async fn app_feature(State(api): Api, _ctx: Ctx, Path((guid, name)): Path<(String, String)>) -> CfResult<Json<Value>> {
    Ok(Json(feature(&app(&api, &guid)?, &name)?))
}

async fn set_app_feature(
    State(api): Api,
    _ctx: Ctx,
    Path((guid, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    if name != "ssh" {
        return Err(CfError::NotFound("Feature"));
    }
    let b = json::body(&body)?;
    let enabled =
        b.get("enabled").and_then(Value::as_bool).ok_or_else(|| CfError::unprocessable("Enabled must be a boolean"))?;
    let a = api
        .apps
        .update_app(pb::UpdateAppRequest { app: Some(app_ref(&a)), enable_ssh: Some(enabled), ..Default::default() })
        .await?;
    Ok(Json(feature(&a, "ssh")?))
}
