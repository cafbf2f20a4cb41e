//! Packages (bits and docker), resource matching, builds and droplets.
//!
//! A bits upload is the cf CLI's multipart `resources` (files it believes we
//! have, by SHA-1) + `bits` (a zip of the rest). Every uploaded file is kept
//! by its SHA-1 under the API's `resources/`, so `resource_matches` really
//! answers with the files already here and the next push of an unchanged app
//! sends none of them. The package stored is the whole app: the zip's entries
//! plus the matched files.

use std::io::{Read, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use sha1::Digest;

use super::apps::{app, app_ref};
use super::error::{CfError, CfResult};
use super::json::{self, link, metadata, passes, post_link, time, to_one};
use super::server::reply;
use super::store::{BuildRecord, DropletRecord, PackageRecord};
use super::{CfApi, Ctx, orgs};
use crate::apps::store::{AppRecord, Droplet};
use crate::executor::logs::now_ns;
use crate::staging::service::{Scratch, scratch_file, store_package};
use celld_base::guid::new_guid;
use celld_proto as pb;

type Api = State<Arc<CfApi>>;

/// Files larger than this are not kept for matching (CC's resource pool has
/// a maximum too); they are uploaded every time.
const MAX_CACHED_FILE: u64 = 512 << 20;

/// The files kept for resource matching: at most this much, least recently
/// used (matched or uploaded) going first, but none used in the last 10 min.
const RESOURCE_CACHE_BYTES: u64 = 1 << 30;
const RESOURCE_CACHE_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// How long after a build failed its failure is first told (see `get_build`).
const FAILED_BUILD_HOLD_NS: i64 = 2_500_000_000;

pub fn routes() -> Router<Arc<CfApi>> {
    Router::new()
        .route("/v3/packages", get(list_packages).post(create_package))
        .route("/v3/packages/{guid}", get(get_package))
        // The upload counts its bits against --max-package-size-mb itself.
        .route("/v3/packages/{guid}/upload", post(upload).layer(axum::extract::DefaultBodyLimit::disable()))
        .route("/v3/apps/{guid}/packages", get(app_packages))
        .route("/v3/packages/{guid}/droplets", get(package_droplets))
        .route("/v3/resource_matches", post(resource_matches))
        .route("/v3/builds", get(list_builds).post(create_build))
        .route("/v3/builds/{guid}", get(get_build))
        .route("/v3/droplets", get(list_droplets))
        .route("/v3/droplets/{guid}", get(get_droplet))
        .route("/v3/apps/{guid}/droplets", get(app_droplets))
        .route("/v3/apps/{guid}/droplets/current", get(current_droplet))
        .route("/v3/apps/{guid}/relationships/current_droplet", get(current_droplet_rel).patch(set_current_droplet))
}

fn package_json(base: &str, p: &PackageRecord) -> Value {
    let g = &p.guid;
    let data = if p.kind == "docker" {
        json!({"image": p.image, "username": null, "password": null})
    } else {
        json!({"checksum": {"type": "sha256", "value": if p.sha256.is_empty() { Value::Null } else { json!(p.sha256) }},
               "error": if p.error.is_empty() { Value::Null } else { json!(p.error) }})
    };
    json!({
        "guid": g, "type": p.kind, "data": data, "state": p.state,
        "created_at": time(p.created_at), "updated_at": time(p.updated_at),
        "relationships": {"app": to_one(&p.app_guid)},
        "metadata": metadata(),
        "links": {
            "self": link(base, &format!("/v3/packages/{g}")),
            "upload": post_link(base, &format!("/v3/packages/{g}/upload")),
            "download": link(base, &format!("/v3/packages/{g}/download")),
            "app": link(base, &format!("/v3/apps/{}", p.app_guid)),
        },
    })
}

/// An app's packages; one it got outside the API (`cellctl push`) is
/// recorded on first sight, so `cf restage` and `cf packages` see it.
fn packages_of(api: &CfApi, a: &AppRecord) -> CfResult<Vec<PackageRecord>> {
    let mut list = api.store.list::<PackageRecord>("packages", Some(&a.guid))?;
    let (kind, known) = if a.docker_image.is_empty() {
        ("bits", a.package_key.is_empty() || list.iter().any(|p| p.key == a.package_key))
    } else {
        ("docker", list.iter().any(|p| p.image == a.docker_image))
    };
    if !known {
        let p = PackageRecord {
            guid: new_guid(),
            app_guid: a.guid.clone(),
            kind: kind.into(),
            state: "READY".into(),
            key: a.package_key.clone(),
            image: a.docker_image.clone(),
            created_at: a.package_uploaded_at.max(a.created_at),
            updated_at: a.package_uploaded_at.max(a.created_at),
            ..Default::default()
        };
        api.store.put("packages", &p.guid, None, &p.app_guid, &p)?;
        list.push(p);
    }
    Ok(list)
}

/// The app layer keeps only the current package's bits: the app's other bits
/// packages are EXPIRED, as CC's pruned packages are.
fn expire_older_packages(api: &CfApi, app_guid: &str, current_key: &str) -> CfResult<()> {
    for mut p in api.store.list::<PackageRecord>("packages", Some(app_guid))? {
        if p.kind == "bits" && p.state == "READY" && p.key != current_key {
            p.state = "EXPIRED".into();
            p.updated_at = now_ns();
            api.store.put("packages", &p.guid, None, &p.app_guid, &p)?;
        }
    }
    Ok(())
}

fn package(api: &CfApi, guid: &str) -> CfResult<PackageRecord> {
    api.store.get("packages", guid)?.ok_or(CfError::NotFound("Package"))
}

async fn list_packages(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let mut items = Vec::new();
    for a in api.apps.list_apps("", true)?.iter().filter(|a| passes(&q, "app_guids", &a.guid)) {
        for p in packages_of(&api, a)?.iter().filter(|p| passes(&q, "guids", &p.guid) && passes(&q, "states", &p.state))
        {
            items.push(package_json(&ctx.base, p));
        }
    }
    Ok(Json(json::paginate(&ctx.base, "/v3/packages", &q, items)?))
}

async fn app_packages(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    Query(q): Query<json::Query>,
) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    let items: Vec<Value> = packages_of(&api, &a)?
        .iter()
        .filter(|p| passes(&q, "states", &p.state))
        .map(|p| package_json(&ctx.base, p))
        .collect();
    Ok(Json(json::paginate(&ctx.base, &format!("/v3/apps/{guid}/packages"), &q, items)?))
}

async fn create_package(State(api): Api, ctx: Ctx, body: axum::body::Bytes) -> CfResult<Response> {
    let b = json::body(&body)?;
    let a = app(&api, json::relationship(&b, "app")?)?;
    let kind = json::opt_str(&b, "type")?.unwrap_or("bits");
    let now = now_ns();
    let mut p = PackageRecord {
        guid: new_guid(),
        app_guid: a.guid.clone(),
        kind: kind.into(),
        state: "AWAITING_UPLOAD".into(),
        created_at: now,
        updated_at: now,
        ..Default::default()
    };
    match kind {
        "bits" => {
            if !a.docker_image.is_empty() {
                return Err(CfError::unprocessable("Cannot create bits package for a Docker app."));
            }
        }
        "docker" => {
            let data = b.get("data").cloned().unwrap_or(Value::Null);
            let image = json::opt_str(&data, "image")?.ok_or_else(|| CfError::unprocessable("Image required"))?;
            let req = pb::UpdateAppRequest {
                app: Some(app_ref(&a)),
                docker_image: Some(image.into()),
                docker_username: json::opt_str(&data, "username")?.map(str::to_string),
                docker_password: json::opt_str(&data, "password")?.map(str::to_string),
                ..Default::default()
            };
            api.apps.update_app(req).await?;
            p.image = image.into();
            p.state = "READY".into();
        }
        other => return Err(CfError::unprocessable(format!("Type must be one of 'bits', 'docker' (got '{other}')"))),
    }
    api.store.put("packages", &p.guid, None, &p.app_guid, &p)?;
    Ok(reply(StatusCode::CREATED, package_json(&ctx.base, &p)))
}

async fn get_package(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    Ok(Json(package_json(&ctx.base, &package(&api, &guid)?)))
}

/// One entry of the CLI's `resources` list.
#[derive(serde::Deserialize)]
struct Resource {
    path: String,
    #[serde(default)]
    mode: String,
    checksum: Checksum,
    #[serde(default)]
    size_in_bytes: u64,
}

#[derive(serde::Deserialize)]
struct Checksum {
    value: String,
}

fn is_sha1(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A path inside the app, as given by a client: relative, no `..`.
fn safe_path(p: &str) -> CfResult<&str> {
    let ok = !p.is_empty() && !p.starts_with('/') && !p.contains('\0') && p.split(['/', '\\']).all(|c| c != "..");
    if ok {
        Ok(p)
    } else {
        Err(CfError::unprocessable(format!("The resource path '{p}' is not a relative path inside the app")))
    }
}

/// `POST /v3/resource_matches`: the files of the list that are kept here.
async fn resource_matches(State(api): Api, _ctx: Ctx, body: axum::body::Bytes) -> CfResult<Response> {
    let b = json::body(&body)?;
    let list: Vec<Value> = b.get("resources").and_then(Value::as_array).cloned().unwrap_or_default();
    let matched: Vec<Value> = list
        .into_iter()
        .filter(|r| {
            r.pointer("/checksum/value")
                .and_then(Value::as_str)
                .is_some_and(|sha| is_sha1(sha) && touch(&api.resources.join(sha.to_ascii_lowercase())))
        })
        .collect();
    Ok(reply(StatusCode::CREATED, json!({ "resources": matched })))
}

/// Marks a kept file used now (the cache drops the least recently used);
/// whether it is there.
fn touch(path: &FsPath) -> bool {
    match std::fs::File::options().append(true).open(path) {
        Ok(f) => {
            let _ = f.set_modified(std::time::SystemTime::now());
            true
        }
        Err(_) => false,
    }
}

/// Keeps the resource cache under `max` bytes, least recently used first;
/// a file used in the last `grace` stays (a push may be between its
/// resource_matches and its upload).
fn prune_cache(cache: &FsPath, max: u64, grace: std::time::Duration) -> std::io::Result<u64> {
    let mut files = Vec::new();
    let mut total = 0u64;
    for e in std::fs::read_dir(cache)?.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_file() {
            total += m.len();
            files.push((m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len(), e.path()));
        }
    }
    if total <= max {
        return Ok(0);
    }
    files.sort();
    let recent = std::time::SystemTime::now() - grace;
    let mut freed = 0u64;
    for (used, len, path) in files {
        if total - freed <= max || used > recent {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            freed += len;
        }
    }
    Ok(freed)
}

/// `POST /v3/packages/:guid/upload`.
async fn upload(State(api): Api, ctx: Ctx, Path(guid): Path<String>, mut form: Multipart) -> CfResult<Json<Value>> {
    let mut p = package(&api, &guid)?;
    if p.kind != "bits" {
        return Err(CfError::unprocessable("Only bits packages can be uploaded"));
    }
    let a = app(&api, &p.app_guid)?;
    let stager = api.apps.stager.clone();
    let limit = stager.config().max_package_bytes;
    let bits = Scratch(scratch_file(&stager, "cf-bits"));
    let mut resources: Vec<Resource> = Vec::new();
    let mut got_bits = false;
    while let Some(mut field) = form.next_field().await.map_err(|e| CfError::MessageParse(e.to_string()))? {
        match field.name().unwrap_or_default() {
            "resources" => {
                let text = field.bytes().await.map_err(|e| CfError::MessageParse(e.to_string()))?;
                resources = serde_json::from_slice(&text)
                    .map_err(|e| CfError::unprocessable(format!("resources must be a JSON list of files: {e}")))?;
            }
            "bits" => {
                receive_field(&mut field, &bits.0, limit).await?;
                got_bits = true;
            }
            _ => {}
        }
    }
    if !got_bits && resources.is_empty() {
        return Err(CfError::unprocessable("Upload must include either resources or bits"));
    }
    for r in &resources {
        safe_path(&r.path)?;
        if !is_sha1(&r.checksum.value) || !api.resources.join(r.checksum.value.to_ascii_lowercase()).is_file() {
            return Err(CfError::unprocessable(format!(
                "The resource '{}' ({}) is not on this cell: upload it in the bits",
                r.path, r.checksum.value
            )));
        }
    }
    let whole = Scratch(scratch_file(&stager, "cf-package"));
    let (cache, bits_path, whole_path) = (api.resources.clone(), got_bits.then(|| bits.0.clone()), whole.0.clone());
    let size = tokio::task::spawn_blocking(move || {
        let size = assemble(&cache, bits_path.as_deref(), &resources, &whole_path)?;
        if let Err(e) = prune_cache(&cache, RESOURCE_CACHE_BYTES, RESOURCE_CACHE_GRACE) {
            tracing::warn!(error = %e, "could not prune the CF API's resource cache");
        }
        Ok::<_, CfError>(size)
    })
    .await
    .map_err(|e| CfError::Server(e.to_string()))??;
    let stored = match store_package(&stager, &whole.0, size).await {
        Ok(stored) => stored,
        Err(s) => {
            // CC marks the package FAILED with the reason; the CLI shows it.
            p.state = "FAILED".into();
            p.error = s.message().to_string();
            p.updated_at = now_ns();
            api.store.put("packages", &p.guid, None, &p.app_guid, &p)?;
            return Err(s.into());
        }
    };
    api.apps.set_package(&app_ref(&a), &stored).await?;
    expire_older_packages(&api, &a.guid, &stored.key)?;
    p.key = stored.key;
    p.sha256 = stored.sha256;
    p.state = "READY".into();
    p.updated_at = now_ns();
    api.store.put("packages", &p.guid, None, &p.app_guid, &p)?;
    tracing::info!(app_guid = %a.guid, package = %p.guid, size, "package uploaded through the CF API");
    Ok(Json(package_json(&ctx.base, &p)))
}

/// Writes one multipart field to `dest`, refusing more than `limit` bytes.
pub async fn receive_field(
    field: &mut axum::extract::multipart::Field<'_>,
    dest: &FsPath,
    limit: u64,
) -> CfResult<u64> {
    let mut f = tokio::fs::File::create(dest).await.map_err(|e| CfError::Server(e.to_string()))?;
    let mut n = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(|e| CfError::MessageParse(e.to_string()))? {
        n += chunk.len() as u64;
        if n > limit {
            return Err(CfError::unprocessable(format!(
                "the upload is larger than this cell takes ({}, celld --max-package-size-mb)",
                crate::staging::byte_size(limit)
            )));
        }
        tokio::io::AsyncWriteExt::write_all(&mut f, &chunk).await.map_err(|e| CfError::Server(e.to_string()))?;
    }
    Ok(n)
}

/// Writes the whole app to `out` (a zip): the uploaded zip's entries, each
/// file also kept in `cache` by SHA-1, then the matched files from `cache`.
fn assemble(cache: &FsPath, bits: Option<&FsPath>, resources: &[Resource], out: &FsPath) -> CfResult<u64> {
    use zip::write::SimpleFileOptions;
    let server = |e: &dyn std::fmt::Display| CfError::Server(e.to_string());
    let bad_zip =
        |e: zip::result::ZipError| CfError::unprocessable(format!("the uploaded bits are not a readable zip: {e}"));
    let file = std::fs::File::create(out).map_err(|e| server(&e))?;
    let mut w = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let mut seen = std::collections::HashSet::new();
    if let Some(bits) = bits {
        let mut z = zip::ZipArchive::new(std::fs::File::open(bits).map_err(|e| server(&e))?).map_err(bad_zip)?;
        for i in 0..z.len() {
            let mut entry = z.by_index(i).map_err(bad_zip)?;
            let name = entry.name().map_err(bad_zip)?.to_string();
            seen.insert(name.trim_end_matches('/').to_string());
            if entry.is_file() && entry.size() <= MAX_CACHED_FILE {
                keep(cache, &mut entry).map_err(|e| server(&e))?;
            }
            drop(entry);
            let entry = z.by_index_raw(i).map_err(bad_zip)?;
            w.raw_copy_file(entry).map_err(bad_zip)?;
        }
    }
    for r in resources {
        if !seen.insert(r.path.clone()) {
            continue;
        }
        let mode = u32::from_str_radix(r.mode.trim_start_matches("0o"), 8).unwrap_or(0o644) & 0o777;
        w.start_file(
            r.path.as_str(),
            SimpleFileOptions::default().unix_permissions(mode).large_file(r.size_in_bytes > u32::MAX as u64),
        )
        .map_err(|e| server(&e))?;
        let mut f = std::fs::File::open(cache.join(r.checksum.value.to_ascii_lowercase())).map_err(|e| server(&e))?;
        std::io::copy(&mut f, &mut w).map_err(|e| server(&e))?;
    }
    let inner = w.finish().map_err(|e| server(&e))?;
    let file = inner.into_inner().map_err(|e| server(&e.error()))?;
    file.sync_all().map_err(|e| server(&e))?;
    Ok(file.metadata().map_err(|e| server(&e))?.len())
}

/// Copies one zip entry into the cache under its SHA-1 (once).
fn keep(cache: &FsPath, entry: &mut impl Read) -> std::io::Result<()> {
    let tmp: PathBuf = cache.join(format!(".tmp-{}", new_guid()));
    let mut f = std::fs::File::create(&tmp)?;
    let mut h = sha1::Sha1::new();
    let mut buf = vec![0u8; 64 << 10];
    let r = (|| -> std::io::Result<()> {
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            h.update(&buf[..n]);
            f.write_all(&buf[..n])?;
        }
    })();
    drop(f);
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let sha = celld_base::guid::hex(&h.finalize());
    let dest = cache.join(&sha);
    if touch(&dest) { std::fs::remove_file(&tmp) } else { std::fs::rename(&tmp, dest) }
}

/// Forgets an app's packages, builds and droplets once the app is deleted.
pub fn forget_app(api: &CfApi, app_guid: &str) -> CfResult<()> {
    for t in ["packages", "builds", "droplets"] {
        api.store.delete_owned(t, app_guid)?;
    }
    Ok(())
}

fn build_json(api: &CfApi, base: &str, b: &BuildRecord) -> Value {
    let a = api.apps.app_by_guid(&b.app_guid).ok().flatten();
    let lifecycle = match &a {
        Some(a) if !a.docker_image.is_empty() => json!({"type": "docker", "data": {}}),
        Some(a) => json!({"type": "buildpack", "data": {"buildpacks": a.buildpacks, "stack": stack(api, a)}}),
        None => Value::Null,
    };
    json!({
        "guid": b.guid, "state": b.state,
        "error": if b.error.is_empty() { Value::Null } else { json!(b.error) },
        "staging_memory_in_mb": b.staging_memory_mb, "staging_disk_in_mb": b.staging_disk_mb,
        "staging_log_rate_limit_bytes_per_second": -1,
        "lifecycle": lifecycle,
        "package": {"guid": b.package_guid},
        "droplet": if b.droplet_guid.is_empty() { Value::Null } else { json!({"guid": b.droplet_guid}) },
        "relationships": {"app": to_one(&b.app_guid)},
        "created_by": {"guid": super::uaa::ADMIN_GUID, "name": super::uaa::ADMIN, "email": super::uaa::ADMIN},
        "created_at": time(b.created_at), "updated_at": time(b.updated_at),
        "metadata": metadata(),
        "links": {
            "self": link(base, &format!("/v3/builds/{}", b.guid)),
            "app": link(base, &format!("/v3/apps/{}", b.app_guid)),
            "droplet": if b.droplet_guid.is_empty() { Value::Null } else { link(base, &format!("/v3/droplets/{}", b.droplet_guid)) },
        },
    })
}

pub fn stack(api: &CfApi, a: &AppRecord) -> String {
    match a.droplet.as_ref().map(|d| d.stack.clone()).filter(|s| !s.is_empty()) {
        Some(s) => s,
        None if !a.stack.is_empty() => a.stack.clone(),
        None => api.apps.stager.config().default_stack.clone(),
    }
}

async fn list_builds(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let items = api
        .store
        .list::<BuildRecord>("builds", None)?
        .iter()
        .filter(|b| {
            passes(&q, "app_guids", &b.app_guid)
                && passes(&q, "package_guids", &b.package_guid)
                && passes(&q, "states", &b.state)
        })
        .map(|b| build_json(&api, &ctx.base, b))
        .collect();
    Ok(Json(json::paginate(&ctx.base, "/v3/builds", &q, items)?))
}

async fn get_build(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let read = || async { api.store.get::<BuildRecord>("builds", &guid) };
    let b = super::long_poll(read, |b| !matches!(b, Ok(Some(b)) if b.state == "STAGING")).await;
    let b = b?.ok_or(CfError::NotFound("Build"))?;
    // The CLI shows staging output through log-cache, leaving out lines newer
    // than 2 s, and stops once the build ends: a failure is told no sooner
    // than that after it, so the output that explains it is shown.
    if b.state == "FAILED" {
        let shown = b.updated_at.saturating_add(FAILED_BUILD_HOLD_NS) - now_ns();
        if shown > 0 {
            tokio::time::sleep(std::time::Duration::from_nanos(shown.unsigned_abs())).await;
        }
    }
    Ok(Json(build_json(&api, &ctx.base, &b)))
}

/// `POST /v3/builds`: stages the package through the app layer; the build is
/// STAGING until the stager's result or failure arrives. Staging's log lines
/// go to the app's logs (log-cache's `STG`) as they come.
async fn create_build(State(api): Api, ctx: Ctx, body: axum::body::Bytes) -> CfResult<Response> {
    let b = json::body(&body)?;
    let pkg_guid = b
        .pointer("/package/guid")
        .and_then(Value::as_str)
        .ok_or_else(|| CfError::unprocessable("Package guid can't be blank"))?;
    let p = package(&api, pkg_guid).map_err(|_| {
        CfError::unprocessable("Unable to use package. Ensure that the package exists and you have access to it.")
    })?;
    if p.state != "READY" {
        return Err(CfError::unprocessable("Unable to stage package: the package's bits have not been uploaded yet"));
    }
    let a = app(&api, &p.app_guid)?;
    let r = app_ref(&a);
    if p.kind == "bits" && a.package_key != p.key {
        let stored = pb::Package { key: p.key.clone(), sha256: p.sha256.clone(), size: 0 };
        api.apps.set_package(&r, &stored).await?;
    }
    let now = now_ns();
    let cfg = api.apps.stager.config();
    let build = BuildRecord {
        guid: new_guid(),
        app_guid: a.guid.clone(),
        package_guid: p.guid.clone(),
        state: "STAGING".into(),
        staging_memory_mb: json::opt_u32(&b, "staging_memory_in_mb")?.unwrap_or(cfg.memory_mb),
        staging_disk_mb: json::opt_u32(&b, "staging_disk_in_mb")?.unwrap_or(cfg.disk_mb),
        created_at: now,
        updated_at: now,
        ..Default::default()
    };
    api.store.put("builds", &build.guid, None, &build.app_guid, &build)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    if let Err(e) = api.apps.stage(&r, tx).await {
        finish_build(&api, build.clone(), Err(e.to_string()));
        return Err(e.into());
    }
    let (api2, b2) = (api.clone(), build.clone());
    tokio::spawn(async move {
        use pb::staging_event::Event as E;
        let mut outcome = Err("staging ended without a result".to_string());
        while let Some(ev) = rx.recv().await {
            match ev.event {
                Some(E::Result(_)) => outcome = Ok(()),
                Some(E::Failure(f)) => outcome = Err(format!("{} - {}", f.reason, f.message)),
                _ => {}
            }
        }
        finish_build(&api2, b2, outcome);
    });
    Ok(reply(StatusCode::CREATED, build_json(&api, &ctx.base, &build)))
}

/// Records a build's end: STAGED with the app's new droplet, or FAILED.
fn finish_build(api: &CfApi, mut b: BuildRecord, outcome: Result<(), String>) {
    b.updated_at = now_ns();
    let app = api.apps.app_by_guid(&b.app_guid).ok().flatten();
    match (outcome, app.and_then(|a| a.droplet)) {
        (Ok(()), Some(d)) => {
            let rec = DropletRecord {
                guid: droplet_guid(&d),
                app_guid: b.app_guid.clone(),
                package_guid: b.package_guid.clone(),
                created_at: d.created_at,
                droplet: d,
            };
            if let Err(e) = api.store.put("droplets", &rec.guid, None, &rec.app_guid, &rec) {
                tracing::warn!(app_guid = %b.app_guid, error = %e, "could not record a droplet");
            }
            b.droplet_guid = rec.guid;
            b.state = "STAGED".into();
        }
        (Ok(()), None) => {
            b.state = "FAILED".into();
            b.error = "StagingError - the app has no droplet after staging".into();
        }
        (Err(e), _) => {
            b.state = "FAILED".into();
            b.error = e;
        }
    }
    if let Err(e) = api.store.put("builds", &b.guid, None, &b.app_guid, &b) {
        tracing::warn!(app_guid = %b.app_guid, error = %e, "could not record a build's end");
    }
}

/// Builds a restart of celld cut short: FAILED, so the CLI stops polling.
pub fn fail_interrupted_builds(api: &CfApi) -> CfResult<()> {
    for b in api.store.list::<BuildRecord>("builds", None)?.into_iter().filter(|b| b.state == "STAGING") {
        finish_build(api, b, Err("StagingError - staging was interrupted by a restart of celld".into()));
    }
    Ok(())
}

/// A droplet's guid: stable for the same staging result.
pub fn droplet_guid(d: &Droplet) -> String {
    orgs::named_guid("droplet", &format!("{}|{}|{}", d.key, d.docker_rootfs, d.created_at))
}

fn droplet_json(api: &CfApi, base: &str, app: &AppRecord, d: &Droplet) -> Value {
    let guid = droplet_guid(d);
    let (lifecycle, image) = if d.docker_rootfs.is_empty() {
        (json!({"type": "buildpack", "data": {}}), Value::Null)
    } else {
        (json!({"type": "docker", "data": {}}), json!(app.docker_image))
    };
    let buildpacks: Vec<Value> = d
        .buildpacks
        .iter()
        .map(|b| json!({"name": b, "buildpack_name": b, "detect_output": d.detected_buildpack, "version": null}))
        .collect();
    json!({
        "guid": guid, "state": "STAGED", "error": null,
        "lifecycle": lifecycle,
        "execution_metadata": "",
        "process_types": if d.process_types.is_empty() { json!({"web": d.start_command}) } else { json!(d.process_types) },
        "checksum": if d.sha256.is_empty() { Value::Null } else { json!({"type": "sha256", "value": d.sha256}) },
        "buildpacks": buildpacks,
        "stack": if d.stack.is_empty() { stack(api, app) } else { d.stack.clone() },
        "image": image,
        "created_at": time(d.created_at), "updated_at": time(d.created_at),
        "relationships": {"app": to_one(&app.guid)},
        "metadata": metadata(),
        "links": {
            "self": link(base, &format!("/v3/droplets/{guid}")),
            "app": link(base, &format!("/v3/apps/{}", app.guid)),
            "assign_current_droplet": {"href": format!("{base}/v3/apps/{}/relationships/current_droplet", app.guid), "method": "PATCH"},
        },
    })
}

/// The droplets of an app: those built through the API and the current one.
fn droplets_of(api: &CfApi, a: &AppRecord) -> CfResult<Vec<Droplet>> {
    let mut list: Vec<Droplet> =
        api.store.list::<DropletRecord>("droplets", Some(&a.guid))?.into_iter().map(|r| r.droplet).collect();
    if let Some(d) = &a.droplet {
        if !list.iter().any(|x| droplet_guid(x) == droplet_guid(d)) {
            list.push(d.clone());
        }
    }
    Ok(list)
}

async fn list_droplets(State(api): Api, ctx: Ctx, Query(q): Query<json::Query>) -> CfResult<Json<Value>> {
    let mut items = Vec::new();
    for a in api.apps.list_apps("", true)?.iter().filter(|a| passes(&q, "app_guids", &a.guid)) {
        for d in droplets_of(&api, a)?.iter().filter(|d| passes(&q, "guids", &droplet_guid(d))) {
            items.push(droplet_json(&api, &ctx.base, a, d));
        }
    }
    Ok(Json(json::paginate(&ctx.base, "/v3/droplets", &q, items)?))
}

async fn app_droplets(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    Query(q): Query<json::Query>,
) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    let items = droplets_of(&api, &a)?.iter().map(|d| droplet_json(&api, &ctx.base, &a, d)).collect();
    Ok(Json(json::paginate(&ctx.base, &format!("/v3/apps/{guid}/droplets"), &q, items)?))
}

/// The droplets staged from a package (`cf restart` asks whether the newest
/// package has one, to know whether to stage first).
async fn package_droplets(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    Query(q): Query<json::Query>,
) -> CfResult<Json<Value>> {
    let p = package(&api, &guid)?;
    let a = app(&api, &p.app_guid)?;
    let mut list: Vec<Droplet> = api
        .store
        .list::<DropletRecord>("droplets", Some(&a.guid))?
        .into_iter()
        .filter(|r| r.package_guid == p.guid)
        .map(|r| r.droplet)
        .collect();
    // A droplet staged outside the API (cellctl push) is its current package's.
    if let Some(d) = a.droplet.as_ref().filter(|_| p.kind == "bits" && p.key == a.package_key) {
        if !list.iter().any(|x| droplet_guid(x) == droplet_guid(d)) {
            list.push(d.clone());
        }
    }
    let items =
        list.iter().filter(|_| passes(&q, "states", "STAGED")).map(|d| droplet_json(&api, &ctx.base, &a, d)).collect();
    Ok(Json(json::paginate(&ctx.base, &format!("/v3/packages/{guid}/droplets"), &q, items)?))
}

async fn get_droplet(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    if let Some(r) = api.store.get::<DropletRecord>("droplets", &guid)? {
        let a = app(&api, &r.app_guid)?;
        return Ok(Json(droplet_json(&api, &ctx.base, &a, &r.droplet)));
    }
    for a in api.apps.list_apps("", true)? {
        if let Some(d) = a.droplet.as_ref().filter(|d| droplet_guid(d) == guid) {
            return Ok(Json(droplet_json(&api, &ctx.base, &a, d)));
        }
    }
    Err(CfError::NotFound("Droplet"))
}

async fn current_droplet(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    let d = a.droplet.as_ref().ok_or(CfError::NotFound("Droplet"))?;
    Ok(Json(droplet_json(&api, &ctx.base, &a, d)))
}

fn current_rel(base: &str, a: &AppRecord) -> Value {
    json!({
        "data": a.droplet.as_ref().map(|d| json!({"guid": droplet_guid(d)})),
        "links": {
            "self": link(base, &format!("/v3/apps/{}/relationships/current_droplet", a.guid)),
            "related": link(base, &format!("/v3/apps/{}/droplets/current", a.guid)),
        },
    })
}

async fn current_droplet_rel(State(api): Api, ctx: Ctx, Path(guid): Path<String>) -> CfResult<Json<Value>> {
    Ok(Json(current_rel(&ctx.base, &app(&api, &guid)?)))
}

/// Setting the current droplet: a build's droplet becomes current when it
/// stages (the app layer keeps one current droplet), so this accepts the
/// current one; rolling back to an older droplet is not supported yet.
async fn set_current_droplet(
    State(api): Api,
    ctx: Ctx,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<Json<Value>> {
    let a = app(&api, &guid)?;
    let b = json::body(&body)?;
    let want = b
        .pointer("/data/guid")
        .and_then(Value::as_str)
        .ok_or_else(|| CfError::unprocessable("Data guid can't be blank"))?;
    match a.droplet.as_ref().map(droplet_guid) {
        Some(cur) if cur == want => Ok(Json(current_rel(&ctx.base, &a))),
        _ => Err(CfError::unprocessable(format!(
            "Unable to assign current droplet: droplet {want} is not the app's latest staged droplet (celld keeps only that one current)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_drops_the_least_recently_used_past_its_size() {
        let dir = std::env::temp_dir().join(format!("cfapi-prune-{}", new_guid()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            std::fs::write(dir.join(name), [0u8; 100]).unwrap();
            let f = std::fs::File::options().append(true).open(dir.join(name)).unwrap();
            f.set_modified(old + std::time::Duration::from_secs(i as u64)).unwrap();
        }
        // "a" is matched again: it is the most recently used now.
        assert!(touch(&dir.join("a")));
        assert!(!touch(&dir.join("missing")));
        assert_eq!(prune_cache(&dir, 250, std::time::Duration::from_secs(60)).unwrap(), 100);
        assert!(dir.join("a").exists() && !dir.join("b").exists() && dir.join("c").exists());
        // Recently used files stay even past the size.
        assert_eq!(prune_cache(&dir, 0, std::time::Duration::from_secs(7200)).unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resource_paths_stay_inside_the_app() {
        assert!(safe_path("a/b.txt").is_ok());
        for p in ["", "/etc/passwd", "../x", "a/../../x", "a\\..\\x"] {
            assert!(safe_path(p).is_err(), "{p}");
        }
    }

    #[test]
    fn an_upload_is_the_bits_plus_the_matched_files() {
        let dir = std::env::temp_dir().join(format!("cfapi-assemble-{}", new_guid()));
        let cache = dir.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let bits = dir.join("bits.zip");
        {
            let mut w = zip::ZipWriter::new(std::fs::File::create(&bits).unwrap());
            w.start_file("new.txt", zip::write::SimpleFileOptions::default()).unwrap();
            w.write_all(b"new").unwrap();
            w.finish().unwrap();
        }
        // What a first push kept: "old" by its SHA-1.
        let old_sha = celld_base::guid::hex(&sha1::Sha1::digest(b"old"));
        std::fs::write(cache.join(&old_sha), b"old").unwrap();
        let res = vec![Resource {
            path: "dir/old.txt".into(),
            mode: "755".into(),
            checksum: Checksum { value: old_sha },
            size_in_bytes: 3,
        }];
        let out = dir.join("out.zip");
        assemble(&cache, Some(&bits), &res, &out).unwrap();
        let mut z = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
        let mut s = String::new();
        z.by_name("dir/old.txt").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "old");
        assert_eq!(z.by_name("dir/old.txt").unwrap().unix_mode().map(|m| m & 0o777), Some(0o755));
        assert!(z.by_name("new.txt").is_ok());
        // The new file is kept for the next push.
        assert!(cache.join(celld_base::guid::hex(&sha1::Sha1::digest(b"new"))).is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
