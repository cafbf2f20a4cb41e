//! Routes under the shared domain and their destinations. A route is a host
//! of the shared domain; the app layer keeps which app it goes to (one app
//! per host), and the API keeps routes made before they are mapped.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::apps::{app, app_ref};
use super::error::{CfError, CfResult};
use super::json::{self, link, metadata, passes, time, to_one};
use super::server::reply;
use super::{CfApi, Ctx, orgs};
use crate::apps::store::AppRecord;
use crate::executor::logs::now_ns;

type Api = State<Arc<CfApi>>;

pub fn routes() -> Router<Arc<CfApi>> {
    Router::new()
        .route("/v3/routes", get(list_routes).post(create_route))
        .route("/v3/routes/{guid}", get(get_route).delete(delete_route))
        .route("/v3/routes/{guid}/destinations", get(destinations).post(add_destinations))
        .route("/v3/routes/{guid}/destinations/{dest}", delete(remove_destination))
        .route("/v3/apps/{guid}/routes", get(app_routes))
        .route("/v3/domains/{guid}/route_reservations", get(reservation))
}

/// A route made through the API and not (yet) mapped to an app.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RouteRecord {
    pub guid: String,
    /// The whole host, e.g. `hello.apps.localhost`.
    pub url: String,
    pub space_guid: String,
    pub created_at: i64,
}

pub fn route_guid(url: &str) -> String {
    orgs::named_guid("route", url)
}

fn destination_guid(route: &str, app_guid: &str) -> String {
    orgs::named_guid("destination", &format!("{route}|{app_guid}"))
}

/// Every route: those mapped to apps (with the app) and the unmapped ones.
fn all(api: &CfApi) -> CfResult<Vec<(RouteRecord, Option<AppRecord>)>> {
    let mut out = Vec::new();
    for a in api.apps.list_apps("", true)? {
        let space = orgs::space_of_app(api, &a.space)?;
        for url in &a.routes {
            let r = RouteRecord {
                guid: route_guid(url),
                url: url.clone(),
                space_guid: space.guid.clone(),
                created_at: a.created_at,
            };
            out.push((r, Some(a.clone())));
        }
    }
    for r in api.store.list::<RouteRecord>("routes", None)? {
        if !out.iter().any(|(o, _)| o.url == r.url) {
            out.push((r, None));
        }
    }
    Ok(out)
}

fn find(api: &CfApi, guid: &str) -> CfResult<(RouteRecord, Option<AppRecord>)> {
    all(api)?.into_iter().find(|(r, _)| r.guid == guid).ok_or(CfError::NotFound("Route"))
}

fn destination_json(r: &RouteRecord, a: &AppRecord) -> Value {
    json!({
        "guid": destination_guid(&r.url, &a.guid),
        "app": {"guid": a.guid, "process": {"type": "web"}},
        "weight": null,
        "port": a.droplet.as_ref().map(|d| d.app_port()).unwrap_or(crate::apps::APP_PORT),
        "protocol": "http1",
    })
}

fn route_json(api: &CfApi, base: &str, r: &RouteRecord, a: Option<&AppRecord>) -> Value {
    let domain = api.apps.domain();
    let host = r.url.strip_suffix(&format!(".{domain}")).unwrap_or(&r.url);
    let g = &r.guid;
    json!({
        "guid": g, "protocol": "http", "port": null, "host": host, "path": "", "url": r.url,
        "created_at": time(r.created_at), "updated_at": time(r.created_at),
        "destinations": a.map(|a| vec![destination_json(r, a)]).unwrap_or_default(),
        "options": {},
        "relationships": {"space": to_one(&r.space_guid), "domain": to_one(&orgs::domain_guid(api))},
        "metadata": metadata(),
        "links": {
            "self": link(base, &format!("/v3/routes/{g}")),
            "space": link(base, &format!("/v3/spaces/{}", r.space_guid)),
            "domain": link(base, &format!("/v3/domains/{}", orgs::domain_guid(api))),
            "destinations": link(base, &format!("/v3/routes/{g}/destinations")),
        },
    })
}

/// The whole host of `host` under the shared domain, checked.
fn url_of(api: &CfApi, host: &str) -> CfResult<String> {
    crate::apps::validate_host_label(host).map_err(|e| CfError::unprocessable(e.to_string()))?;
    Ok(format!("{host}.{}", api.apps.domain()))
}

async fn list_routes(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let domain = api.apps.domain().to_string();
    let items = all(&api)?
        .iter()
        .filter(|(r, a)| {
            let host = r.url.strip_suffix(&format!(".{domain}")).unwrap_or(&r.url);
            passes(&q, "hosts", host)
                && passes(&q, "space_guids", &r.space_guid)
                && passes(&q, "domain_guids", &orgs::domain_guid(&api))
                && passes(&q, "paths", "")
                && passes(&q, "app_guids", a.as_ref().map(|a| a.guid.as_str()).unwrap_or(""))
        })
        .map(|(r, a)| route_json(&api, &ctx.base, r, a.as_ref()))
        .collect();
    Ok(Json(json::paginate(&ctx.base, "/v3/routes", &q, items)?))
}

async fn app_routes(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    Query(q): Query<json::Query>,
) -> CfResult<Json<Value>> {
    app(&api, &guid)?;
    let items = all(&api)?
        .iter()
        .filter(|(_, a)| a.as_ref().is_some_and(|a| a.guid == guid))
        .map(|(r, a)| route_json(&api, &ctx.base, r, a.as_ref()))
        .collect();
    Ok(Json(json::paginate(&ctx.base, &format!("/v3/apps/{guid}/routes"), &q, items)?))
}

async fn get_route(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let (r, a) = find(&api, &guid)?;
    Ok(Json(route_json(&api, &ctx.base, &r, a.as_ref())))
}

async fn create_route(State(api): Api, ctx: Ctx, body: axum::body::Bytes) -> CfResult<Response> {
    let b = json::body(&body)?;
    let space = orgs::space(&api, json::relationship(&b, "space")?).map_err(|_| {
        CfError::unprocessable("Invalid space. Ensure that the space exists and you have access to it.")
    })?;
    if json::relationship(&b, "domain")? != orgs::domain_guid(&api) {
        return Err(CfError::unprocessable("Invalid domain. Ensure that the domain exists and you have access to it."));
    }
    if json::opt_str(&b, "path")?.is_some_and(|p| !p.is_empty()) {
        return Err(CfError::unprocessable("Routes with paths are not supported by celld's router yet"));
    }
    let host = json::opt_str(&b, "host")?
        .ok_or_else(|| CfError::unprocessable("Missing host. Routes in shared domains must have a host defined."))?;
    let url = url_of(&api, host)?;
    if all(&api)?.iter().any(|(r, _)| r.url == url) {
        return Err(CfError::Uniqueness(format!(
            "Route already exists with host '{host}' for domain '{}'.",
            api.apps.domain()
        )));
    }
    let r = RouteRecord { guid: route_guid(&url), url, space_guid: space.guid, created_at: now_ns() };
    api.store.put("routes", &r.guid, None, &r.space_guid, &r)?;
    Ok(reply(StatusCode::CREATED, route_json(&api, &ctx.base, &r, None)))
}

async fn delete_route(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Response> {
    let (r, a) = find(&api, &guid)?;
    if let Some(a) = a {
        api.apps.unmap_route(&app_ref(&a), &r.url).await?;
    }
    api.store.delete("routes", &r.guid)?;
    Ok(super::manifest::finished_job(&api, &ctx.base, "route.delete", None))
}

fn destinations_json(base: &str, r: &RouteRecord, a: Option<&AppRecord>) -> Value {
    json!({
        "destinations": a.map(|a| vec![destination_json(r, a)]).unwrap_or_default(),
        "links": {"self": link(base, &format!("/v3/routes/{}/destinations", r.guid)), "route": link(base, &format!("/v3/routes/{}", r.guid))},
    })
}

async fn destinations(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let (r, a) = find(&api, &guid)?;
    Ok(Json(destinations_json(&ctx.base, &r, a.as_ref())))
}

/// `cf map-route`: one app per route here (the router has no weights yet).
async fn add_destinations(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<Json<Value>> {
    let (r, current) = find(&api, &guid)?;
    let b = json::body(&body)?;
    let list = b
        .get("destinations")
        .and_then(Value::as_array)
        .ok_or_else(|| CfError::unprocessable("Destinations must be an array"))?;
    let [dest] = list.as_slice() else {
        return Err(CfError::unprocessable("celld routes a route to one app: give exactly one destination"));
    };
    let app_guid = dest
        .pointer("/app/guid")
        .and_then(Value::as_str)
        .ok_or_else(|| CfError::unprocessable("Destinations must have an app guid"))?;
    if dest.pointer("/app/process/type").and_then(Value::as_str).is_some_and(|t| t != "web") {
        return Err(CfError::unprocessable("Only the web process can have routes"));
    }
    let a = app(&api, app_guid)?;
    match current {
        Some(c) if c.guid == a.guid => {}
        Some(c) => {
            return Err(CfError::unprocessable(format!("The route {} is already mapped to app '{}'", r.url, c.name)));
        }
        None => {
            api.apps.map_route(&app_ref(&a), &r.url).await?;
            api.store.delete("routes", &r.guid)?;
        }
    }
    let (r, a) = find(&api, &guid)?;
    Ok(Json(destinations_json(&ctx.base, &r, a.as_ref())))
}

/// `cf unmap-route`: the route stays, without its destination.
async fn remove_destination(
    State(api): Api,
    _ctx: Ctx,
    Path((guid, dest)): Path<(String, String)>,
) -> CfResult<Response> {
    let (r, a) = find(&api, &guid)?;
    let a = a.filter(|a| destination_guid(&r.url, &a.guid) == dest).ok_or(CfError::NotFound("Destination"))?;
    api.apps.unmap_route(&app_ref(&a), &r.url).await?;
    api.store.put("routes", &r.guid, None, &r.space_guid, &r)?;
    Ok(reply(StatusCode::NO_CONTENT, Value::Null))
}

async fn reservation(
    State(api): Api,
    _ctx: Ctx,
    Path(_guid): Path<String>,
    Query(q): Query<json::Query>,
) -> CfResult<Json<Value>> {
    let host = q.get("host").map(String::as_str).unwrap_or_default();
    let url = format!("{host}.{}", api.apps.domain());
    Ok(Json(json!({ "matching_route": all(&api)?.iter().any(|(r, _)| r.url == url) })))
}
