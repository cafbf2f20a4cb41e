//! `push` with a CF manifest: the server applies the manifest (creating or
//! updating each app, its process types, routes and bindings), then each
//! app's `path` (relative to the manifest's directory) is uploaded, staged
//! and started. Flags on the command line override the manifest for a
//! single app, as cf's do.

use std::path::{Path, PathBuf};

use super::push::{PushArgs, PushPlan, package, stop_if_started, upload_stage_start};
use crate::api::{Ctx, Fail};
use crate::package as pkg;
use celld_proto as pb;

/// The manifest `push` applies: `-f FILE`; else `manifest.yml` (or
/// `manifest.yaml`) in the app's directory, or in the current directory
/// when none is given; none with `--no-manifest`.
pub(super) fn manifest_file(a: &PushArgs) -> Result<Option<PathBuf>, Fail> {
    if a.no_manifest {
        return Ok(None);
    }
    if let Some(f) = &a.manifest {
        // cf takes a directory for -f too, and reads its manifest.yml.
        let f = if f.is_dir() { f.join("manifest.yml") } else { f.clone() };
        if !f.is_file() {
            return Err(Fail::Usage(format!("Incorrect Usage: The specified path '{}' does not exist.", f.display())));
        }
        return Ok(Some(f));
    }
    // A Docker app's positional argument is its name, not a directory.
    let dir = match (&a.path, &a.docker_image) {
        (Some(p), None) if p.is_dir() => p.clone(),
        (Some(_), _) => return Ok(None),
        (None, _) => PathBuf::from("."),
    };
    Ok(["manifest.yml", "manifest.yaml"].iter().map(|n| dir.join(n)).find(|f| f.is_file()))
}

pub(super) async fn push_manifest(ctx: &Ctx, a: &PushArgs, plan: &PushPlan, file: &Path) -> Result<(), Fail> {
    let yaml = std::fs::read_to_string(file)
        .map_err(|e| Fail::Usage(format!("push: cannot read the manifest {}: {e}", file.display())))?;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let mut c = ctx.connect().await?;
    println!("Applying manifest {}...", file.display());
    let resp = c
        .apply_manifest(pb::ApplyManifestRequest {
            space: ctx.space.clone(),
            manifest_yaml: yaml,
            name: a.name.as_deref().unwrap_or_default().trim().to_string(),
        })
        .await
        .map_err(|s| ctx.fail(s))?
        .into_inner();
    let apps = resp.apps.clone();
    if apps.is_empty() {
        return Err(Fail::Failed("the manifest applied no app".into()));
    }
    let flags = plan.update(a, ctx.app_ref(&apps[0].name)).is_some() || a.path.is_some();
    if apps.len() > 1 && flags {
        return Err(Fail::Usage(
            "Incorrect Usage: Command line flags (except -f and --no-start) cannot be applied when pushing multiple apps from a manifest file."
                .into(),
        ));
    }
    if a.hostname.is_some() || a.no_route {
        eprintln!("warning: --hostname and --no-route do not apply with a manifest: use its routes or no-route");
    }
    for app in apps {
        let name = app.name.clone();
        println!("Pushing app {name} to space {}...", ctx.space);
        let source = if app.docker_image.is_empty() {
            // The command line's path, else the manifest's (from its directory), else its directory.
            let path = match (&a.path, resp.paths.get(&name)) {
                (Some(p), _) => p.clone(),
                (None, Some(p)) => dir.join(p),
                (None, None) => dir.clone(),
            };
            Some(pkg::inspect(&path).map_err(Fail::Usage)?)
        } else {
            None
        };
        let packaged = match &source {
            Some(s) => Some(package(s).await?),
            None => None,
        };
        stop_if_started(ctx, &mut c, &app).await?;
        let app = match plan.update(a, ctx.app_ref(&name)) {
            Some(req) => {
                println!("Updating app {name} with the command line's flags...");
                c.update_app(req).await.map_err(|s| ctx.fail(s))?.into_inner()
            }
            None => app,
        };
        upload_stage_start(ctx, &mut c, &app, packaged, false, a.no_start).await?;
    }
    Ok(())
}
