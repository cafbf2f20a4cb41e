//! Organizations, spaces, the shared domain, stacks, feature flags and roles.
//! A local cell has one organization, `local`, with the space `dev`; more can
//! be made. Spaces are cell-wide names in the app layer, so a space name is
//! unique across organizations here.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::error::{CfError, CfResult};
use super::json::{self, filter, link, metadata, passes, time, to_one};
use super::server::reply;
use super::store::{DEFAULT_SPACE, LOCAL_ORG, OrgRecord, SpaceRecord};
use super::{CfApi, Ctx};
use crate::apps::{space_guid, validate_space};
use crate::executor::logs::now_ns;

type Api = State<Arc<CfApi>>;

pub fn routes() -> Router<Arc<CfApi>> {
    Router::new()
        .route("/v3/organizations", get(list_orgs).post(create_org))
        .route("/v3/organizations/{guid}", get(get_org))
        .route("/v3/organizations/{guid}/domains", get(list_domains))
        .route("/v3/organizations/{guid}/domains/default", get(default_domain))
        .route("/v3/spaces", get(list_spaces).post(create_space))
        .route("/v3/spaces/{guid}", get(get_space).delete(delete_space))
        .route("/v3/spaces/{guid}/features/ssh", get(space_ssh).patch(set_space_ssh))
        .route("/v3/domains", get(list_domains))
        .route("/v3/domains/{guid}", get(get_domain))
        .route("/v3/stacks", get(list_stacks))
        .route("/v3/feature_flags/{name}", get(feature_flag))
        .route("/v3/roles", axum::routing::post(create_role).get(list_roles))
}

/// A stable guid for a name of a kind (the org `local`, the shared domain, a
/// stack), so it is the same after a restart without being stored.
pub fn named_guid(kind: &str, name: &str) -> String {
    use sha2::Digest;
    celld_base::guid::guid_shaped(&sha2::Sha256::digest(format!("{kind}:{name}").as_bytes()))
}

/// The org `local` and its space `dev` (and the app layer's spaces) exist.
pub fn ensure_local(api: &CfApi) -> CfResult<()> {
    let org_guid = space_guid(LOCAL_ORG);
    if api.store.get::<OrgRecord>("orgs", &org_guid)?.is_none() {
        let org = OrgRecord { guid: org_guid.clone(), name: LOCAL_ORG.into(), created_at: now_ns() };
        api.store.put("orgs", &org.guid, Some(&org.name), "", &org)?;
    }
    let spaces =
        std::iter::once(DEFAULT_SPACE.to_string()).chain(api.apps.list_apps("", true)?.into_iter().map(|a| a.space));
    for name in spaces {
        space_named(api, &name, &org_guid)?;
    }
    Ok(())
}

/// The space record of an app-layer space name, made in `org` if missing.
fn space_named(api: &CfApi, name: &str, org: &str) -> CfResult<SpaceRecord> {
    if let Some(s) = api.store.by_name::<SpaceRecord>("spaces", name)? {
        return Ok(s);
    }
    let s = SpaceRecord { guid: space_guid(name), name: name.into(), org_guid: org.into(), created_at: now_ns() };
    api.store.put("spaces", &s.guid, Some(&s.name), &s.org_guid, &s)?;
    Ok(s)
}

pub fn space(api: &CfApi, guid: &str) -> CfResult<SpaceRecord> {
    api.store.get("spaces", guid)?.ok_or(CfError::NotFound("Space"))
}

/// The space record of an app (by its app-layer space name).
pub fn space_of_app(api: &CfApi, space_name: &str) -> CfResult<SpaceRecord> {
    space_named(api, space_name, &space_guid(LOCAL_ORG))
}

fn org_json(base: &str, o: &OrgRecord) -> Value {
    json!({
        "guid": o.guid, "name": o.name, "suspended": false,
        "created_at": time(o.created_at), "updated_at": time(o.created_at),
        "relationships": {"quota": {"data": null}},
        "metadata": metadata(),
        "links": {
            "self": link(base, &format!("/v3/organizations/{}", o.guid)),
            "domains": link(base, &format!("/v3/organizations/{}/domains", o.guid)),
            "default_domain": link(base, &format!("/v3/organizations/{}/domains/default", o.guid)),
        },
    })
}

pub fn space_json(base: &str, s: &SpaceRecord) -> Value {
    json!({
        "guid": s.guid, "name": s.name,
        "created_at": time(s.created_at), "updated_at": time(s.created_at),
        "relationships": {"organization": to_one(&s.org_guid), "quota": {"data": null}},
        "metadata": metadata(),
        "links": {
            "self": link(base, &format!("/v3/spaces/{}", s.guid)),
            "organization": link(base, &format!("/v3/organizations/{}", s.org_guid)),
            "features": link(base, &format!("/v3/spaces/{}/features", s.guid)),
            "apply_manifest": json::post_link(base, &format!("/v3/spaces/{}/actions/apply_manifest", s.guid)),
        },
    })
}

async fn list_orgs(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let items = api
        .store
        .list::<OrgRecord>("orgs", None)?
        .iter()
        .filter(|o| passes(&q, "names", &o.name) && passes(&q, "guids", &o.guid))
        .map(|o| org_json(&ctx.base, o))
        .collect();
    Ok(Json(json::paginate(&ctx.base, "/v3/organizations", &q, items)?))
}

async fn create_org(State(api): Api, ctx: Ctx, body: axum::body::Bytes) -> CfResult<Response> {
    let b = json::body(&body)?;
    let name = json::opt_str(&b, "name")?.ok_or_else(|| CfError::unprocessable("Name can't be blank"))?;
    if name.is_empty() || name.len() > 255 {
        return Err(CfError::unprocessable("Name must be between 1 and 255 characters"));
    }
    if api.store.by_name::<OrgRecord>("orgs", name)?.is_some() {
        return Err(CfError::Uniqueness(format!("Organization '{name}' already exists.")));
    }
    let o = OrgRecord { guid: celld_base::guid::new_guid(), name: name.into(), created_at: now_ns() };
    api.store.put("orgs", &o.guid, Some(&o.name), "", &o)?;
    Ok(reply(StatusCode::CREATED, org_json(&ctx.base, &o)))
}

async fn get_org(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let o: OrgRecord = api.store.get("orgs", &guid)?.ok_or(CfError::NotFound("Organization"))?;
    Ok(Json(org_json(&ctx.base, &o)))
}

async fn list_spaces(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    ensure_local(&api)?;
    let items = api
        .store
        .list::<SpaceRecord>("spaces", None)?
        .iter()
        .filter(|s| passes(&q, "names", &s.name) && passes(&q, "guids", &s.guid))
        .filter(|s| passes(&q, "organization_guids", &s.org_guid))
        .map(|s| space_json(&ctx.base, s))
        .collect();
    let mut page = json::paginate(&ctx.base, "/v3/spaces", &q, items)?;
    if filter(&q, "include").is_some_and(|i| i.iter().any(|x| x == "organization")) {
        let orgs: Vec<Value> =
            api.store.list::<OrgRecord>("orgs", None)?.iter().map(|o| org_json(&ctx.base, o)).collect();
        page["included"] = json!({ "organizations": orgs });
    }
    Ok(Json(page))
}

async fn create_space(State(api): Api, ctx: Ctx, body: axum::body::Bytes) -> CfResult<Response> {
    let b = json::body(&body)?;
    let name = json::opt_str(&b, "name")?.ok_or_else(|| CfError::unprocessable("Name can't be blank"))?;
    let org = json::relationship(&b, "organization")?;
    api.store.get::<OrgRecord>("orgs", org)?.ok_or_else(|| {
        CfError::unprocessable("Invalid organization. Ensure the organization exists and you have access to it.")
    })?;
    validate_space(name)?;
    if api.store.by_name::<SpaceRecord>("spaces", name)?.is_some() {
        return Err(CfError::Uniqueness(format!(
            "Name must be unique per organization (space '{name}' exists on this cell)"
        )));
    }
    // The guid VCAP_APPLICATION's space_id gives the app layer's apps.
    let s = SpaceRecord { guid: space_guid(name), name: name.into(), org_guid: org.into(), created_at: now_ns() };
    api.store.put("spaces", &s.guid, Some(&s.name), &s.org_guid, &s)?;
    Ok(reply(StatusCode::CREATED, space_json(&ctx.base, &s)))
}

async fn get_space(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    Ok(Json(space_json(&ctx.base, &space(&api, &guid)?)))
}

async fn delete_space(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Response> {
    let s = space(&api, &guid)?;
    if !api.apps.list_apps(&s.name, false)?.is_empty() {
        return Err(CfError::unprocessable(format!("Space '{}' has apps; delete them first (cf delete APP)", s.name)));
    }
    api.store.delete("spaces", &guid)?;
    Ok(super::manifest::finished_job(&api, &ctx.base, "space.delete", None))
}

async fn space_ssh(State(api): Api, _ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let s = space(&api, &guid)?;
    let enabled = api.apps.space_ssh(&s.name)?.allow_ssh;
    Ok(Json(ssh_feature(enabled)))
}

async fn set_space_ssh(
    State(api): Api,
    _ctx: Ctx,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<Json<Value>> {
    let s = space(&api, &guid)?;
    let b = json::body(&body)?;
    let enabled =
        b.get("enabled").and_then(Value::as_bool).ok_or_else(|| CfError::unprocessable("Enabled must be a boolean"))?;
    api.apps.set_space_ssh(&s.name, enabled)?;
    Ok(Json(ssh_feature(enabled)))
}

pub fn ssh_feature(enabled: bool) -> Value {
    json!({"name": "ssh", "description": "Enable SSHing into the app.", "enabled": enabled})
}

pub fn domain_guid(api: &CfApi) -> String {
    named_guid("domain", api.apps.domain())
}

fn domain_json(api: &CfApi, base: &str) -> Value {
    let guid = domain_guid(api);
    json!({
        "guid": guid, "name": api.apps.domain(), "internal": false, "router_group": null,
        "supported_protocols": ["http"],
        "created_at": time(0), "updated_at": time(0),
        "relationships": {"organization": {"data": null}, "shared_organizations": {"data": []}},
        "metadata": metadata(),
        "links": {"self": link(base, &format!("/v3/domains/{guid}")), "route_reservations": link(base, &format!("/v3/domains/{guid}/route_reservations"))},
    })
}

async fn list_domains(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let d = domain_json(&api, &ctx.base);
    let items = if passes(&q, "names", api.apps.domain()) && passes(&q, "guids", &domain_guid(&api)) {
        vec![d]
    } else {
        vec![]
    };
    Ok(Json(json::paginate(&ctx.base, "/v3/domains", &q, items)?))
}

async fn default_domain(State(api): Api, ctx: Ctx, Path(_org): Path<String>) -> CfResult<Json<Value>> {
    Ok(Json(domain_json(&api, &ctx.base)))
}

async fn get_domain(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    if guid != domain_guid(&api) {
        return Err(CfError::NotFound("Domain"));
    }
    Ok(Json(domain_json(&api, &ctx.base)))
}

/// The stacks this cell can stage on: its preloaded rootfses.
pub fn stack_names(api: &CfApi) -> Vec<String> {
    let dir = &api.apps.stager.config().rootfs_dir;
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

async fn list_stacks(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let default = api.apps.stager.config().default_stack.clone();
    let items = stack_names(&api)
        .into_iter()
        .filter(|n| passes(&q, "names", n))
        .map(|n| {
            let guid = named_guid("stack", &n);
            json!({
                "guid": guid, "name": n, "description": format!("celld preloaded rootfs {n}"),
                "build_rootfs_image": n, "run_rootfs_image": n, "default": n == default,
                "created_at": time(0), "updated_at": time(0), "metadata": metadata(),
                "links": {"self": link(&ctx.base, &format!("/v3/stacks/{guid}"))},
            })
        })
        .collect();
    Ok(Json(json::paginate(&ctx.base, "/v3/stacks", &q, items)?))
}

async fn feature_flag(_ctx: Ctx, Path(name): Path<String>) -> Json<Value> {
    Json(json!({"name": name, "enabled": true, "updated_at": null, "custom_error_message": null}))
}

/// Roles: the one admin user has every role, so `cf create-space`'s role
/// assignments are accepted and answered as CC does.
async fn create_role(ctx: Ctx, body: axum::body::Bytes) -> CfResult<Response> {
    let b = json::body(&body)?;
    let kind = json::opt_str(&b, "type")?.unwrap_or("space_developer").to_string();
    let mut relationships = b.get("relationships").cloned().unwrap_or_else(|| json!({}));
    relationships["user"] = to_one(&ctx.user.user_id);
    Ok(reply(
        StatusCode::CREATED,
        json!({"guid": celld_base::guid::new_guid(), "type": kind, "relationships": relationships,
               "created_at": time(now_ns()), "updated_at": time(now_ns()), "links": {}}),
    ))
}

async fn list_roles(ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    Ok(Json(json::paginate(&ctx.base, "/v3/roles", &q, vec![])?))
}
