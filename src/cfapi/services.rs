//! User-provided service instances (`cf cups`, `cf services`, `cf ds`) and
//! their app credential bindings (`cf bind-service`, `cf unbind-service`).
//! Managed services need brokers, which a local cell does not have.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::apps::{app, app_ref};
use super::error::{CfError, CfResult};
use super::json::{self, link, metadata, passes, time, to_one};
use super::server::reply;
use super::store::SpaceRecord;
use super::{CfApi, Ctx, orgs};
use celld_proto as pb;

type Api = State<Arc<CfApi>>;

pub fn routes() -> Router<Arc<CfApi>> {
    Router::new()
        .route("/v3/service_instances", get(list_instances).post(create_instance))
        .route("/v3/service_instances/{guid}", get(get_instance).delete(delete_instance))
        .route("/v3/service_instances/{guid}/credentials", get(instance_credentials))
        .route("/v3/service_credential_bindings", get(list_bindings).post(create_binding))
        .route("/v3/service_credential_bindings/{guid}", get(get_binding).delete(delete_binding))
        .route("/v3/service_offerings", get(empty))
        .route("/v3/service_plans", get(empty))
        .route("/v3/service_brokers", get(empty))
        .route("/v3/service_route_bindings", get(empty))
}

/// Every service instance with its space record.
fn all_instances(api: &CfApi) -> CfResult<Vec<(SpaceRecord, pb::ServiceInstance)>> {
    orgs::ensure_local(api)?;
    let mut out = Vec::new();
    for s in api.store.list::<SpaceRecord>("spaces", None)? {
        for i in api.apps.services(&s.name)? {
            out.push((s.clone(), i));
        }
    }
    Ok(out)
}

fn instance(api: &CfApi, guid: &str) -> CfResult<(SpaceRecord, pb::ServiceInstance)> {
    all_instances(api)?.into_iter().find(|(_, i)| i.guid == guid).ok_or(CfError::NotFound("Service instance"))
}

fn instance_json(base: &str, space: &SpaceRecord, i: &pb::ServiceInstance) -> Value {
    let g = &i.guid;
    json!({
        "guid": g, "name": i.name, "type": "user-provided", "tags": i.tags,
        "syslog_drain_url": if i.syslog_drain_url.is_empty() { Value::Null } else { json!(i.syslog_drain_url) },
        "route_service_url": null,
        "last_operation": {"type": "create", "state": "succeeded", "description": "Operation succeeded",
                           "created_at": time(i.created_at), "updated_at": time(i.created_at)},
        "created_at": time(i.created_at), "updated_at": time(i.created_at),
        "relationships": {"space": to_one(&space.guid)},
        "metadata": metadata(),
        "links": {
            "self": link(base, &format!("/v3/service_instances/{g}")),
            "space": link(base, &format!("/v3/spaces/{}", space.guid)),
            "credentials": link(base, &format!("/v3/service_instances/{g}/credentials")),
            "service_credential_bindings": link(base, &format!("/v3/service_credential_bindings?service_instance_guids={g}")),
        },
    })
}

async fn list_instances(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    if json::filter(&q, "type").is_some_and(|t| !t.iter().any(|t| t == "user-provided")) {
        return Ok(Json(json::paginate(&ctx.base, "/v3/service_instances", &q, vec![])?));
    }
    let items = all_instances(&api)?
        .iter()
        .filter(|(s, i)| {
            passes(&q, "names", &i.name) && passes(&q, "guids", &i.guid) && passes(&q, "space_guids", &s.guid)
        })
        .map(|(s, i)| instance_json(&ctx.base, s, i))
        .collect();
    Ok(Json(json::paginate(&ctx.base, "/v3/service_instances", &q, items)?))
}

async fn create_instance(State(api): Api, ctx: Ctx, body: axum::body::Bytes) -> CfResult<Response> {
    let b = json::body(&body)?;
    match json::opt_str(&b, "type")? {
        Some("user-provided") => {}
        Some("managed") => {
            return Err(CfError::unprocessable(
                "Managed services need a service broker; a local cell offers user-provided service instances only (cf cups)",
            ));
        }
        _ => return Err(CfError::unprocessable("Type must be one of 'managed', 'user-provided'")),
    }
    let name = json::opt_str(&b, "name")?.ok_or_else(|| CfError::unprocessable("Name can't be blank"))?;
    let space = orgs::space(&api, json::relationship(&b, "space")?).map_err(|_| {
        CfError::unprocessable("Invalid space. Ensure that the space exists and you have access to it.")
    })?;
    let credentials = match b.get("credentials") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(c @ Value::Object(_)) => c.to_string(),
        Some(_) => return Err(CfError::unprocessable("Credentials must be an object")),
    };
    let tags = b
        .get("tags")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    if api.apps.services(&space.name)?.iter().any(|s| s.name == name) {
        return Err(CfError::Uniqueness(format!("The service instance name is taken: {name}.")));
    }
    let rec = api.apps.create_service(pb::CreateUserProvidedServiceRequest {
        space: space.name.clone(),
        name: name.into(),
        credentials_json: credentials,
        tags,
        syslog_drain_url: json::opt_str(&b, "syslog_drain_url")?.unwrap_or_default().into(),
    })?;
    let i = crate::apps::proto_service(rec, vec![]);
    Ok(reply(StatusCode::CREATED, instance_json(&ctx.base, &space, &i)))
}

async fn get_instance(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let (s, i) = instance(&api, &guid)?;
    Ok(Json(instance_json(&ctx.base, &s, &i)))
}

async fn instance_credentials(State(api): Api, _ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let (_, i) = instance(&api, &guid)?;
    Ok(Json(serde_json::from_str(&i.credentials_json).unwrap_or_else(|_| json!({}))))
}

async fn delete_instance(State(api): Api, _ctx: Ctx, Path(guid): Path<String>) -> CfResult<Response> {
    let (s, i) = instance(&api, &guid)?;
    if !i.bound_apps.is_empty() {
        return Err(CfError::unprocessable(format!(
            "Cannot delete service instance. Service keys, bindings, and shares must first be deleted. (bound to {})",
            i.bound_apps.join(", ")
        )));
    }
    api.apps.delete_service(&pb::ServiceRef { space: s.name, name: i.name })?;
    Ok(reply(StatusCode::NO_CONTENT, Value::Null))
}

/// Bindings have no guid of their own in the app layer's answer to a listing,
/// so the API names one by app and instance: stable and unique per pair.
fn binding_guid(app_guid: &str, instance_guid: &str) -> String {
    orgs::named_guid("binding", &format!("{app_guid}|{instance_guid}"))
}

fn binding_json(base: &str, app_guid: &str, instance_guid: &str) -> Value {
    let g = binding_guid(app_guid, instance_guid);
    json!({
        "guid": g, "type": "app", "name": null,
        "last_operation": {"type": "create", "state": "succeeded", "description": null},
        "created_at": time(0), "updated_at": time(0),
        "relationships": {"app": to_one(app_guid), "service_instance": to_one(instance_guid)},
        "metadata": metadata(),
        "links": {
            "self": link(base, &format!("/v3/service_credential_bindings/{g}")),
            "details": link(base, &format!("/v3/service_credential_bindings/{g}/details")),
            "app": link(base, &format!("/v3/apps/{app_guid}")),
            "service_instance": link(base, &format!("/v3/service_instances/{instance_guid}")),
        },
    })
}

/// Every (app guid, instance guid) binding.
fn all_bindings(api: &CfApi) -> CfResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (s, i) in all_instances(api)? {
        for name in &i.bound_apps {
            if let Ok(a) = api.apps.find(&pb::AppRef { space: s.name.clone(), name: name.clone() }) {
                out.push((a.guid, i.guid.clone()));
            }
        }
    }
    Ok(out)
}

async fn list_bindings(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let items = all_bindings(&api)?
        .iter()
        .filter(|(a, i)| {
            passes(&q, "app_guids", a)
                && passes(&q, "service_instance_guids", i)
                && passes(&q, "guids", &binding_guid(a, i))
        })
        .map(|(a, i)| binding_json(&ctx.base, a, i))
        .collect();
    Ok(Json(json::paginate(&ctx.base, "/v3/service_credential_bindings", &q, items)?))
}

async fn get_binding(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let (a, i) = all_bindings(&api)?
        .into_iter()
        .find(|(a, i)| binding_guid(a, i) == guid)
        .ok_or(CfError::NotFound("Service credential binding"))?;
    Ok(Json(binding_json(&ctx.base, &a, &i)))
}

async fn create_binding(State(api): Api, ctx: Ctx, body: axum::body::Bytes) -> CfResult<Response> {
    let b = json::body(&body)?;
    if json::opt_str(&b, "type")? != Some("app") {
        return Err(CfError::unprocessable("Type must be 'app' (service keys need a broker)"));
    }
    let a = app(&api, json::relationship(&b, "app")?)?;
    let (_, i) = instance(&api, json::relationship(&b, "service_instance")?)?;
    if i.bound_apps.contains(&a.name) {
        return Err(CfError::Unprocessable(format!("The app is already bound to the service instance {}.", i.name)));
    }
    api.apps.bind(&pb::BindServiceRequest { app: Some(app_ref(&a)), service: i.name.clone() }).await?;
    Ok(reply(StatusCode::CREATED, binding_json(&ctx.base, &a.guid, &i.guid)))
}

async fn delete_binding(State(api): Api, _ctx: Ctx, Path(guid): Path<String>) -> CfResult<Response> {
    let (a, i) = all_bindings(&api)?
        .into_iter()
        .find(|(a, i)| binding_guid(a, i) == guid)
        .ok_or(CfError::NotFound("Service credential binding"))?;
    let a = app(&api, &a)?;
    let (_, inst) = instance(&api, &i)?;
    api.apps.unbind(&pb::BindServiceRequest { app: Some(app_ref(&a)), service: inst.name }).await?;
    Ok(reply(StatusCode::NO_CONTENT, Value::Null))
}

async fn empty(ctx: Ctx, Query(q): Query<json::Query>, uri: axum::http::Uri) -> CfResult<Json<Value>> {
    Ok(Json(json::paginate(&ctx.base, uri.path(), &q, vec![])?))
}
