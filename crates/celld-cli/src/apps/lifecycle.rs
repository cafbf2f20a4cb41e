//! The app's lifecycle: `create-app`, `start`, `stop`, `restart`,
//! `restart-app-instance`, `scale` and `delete`.

use clap::Args;

use super::input::{confirm, size};
use super::starting::{stage, wait_started};
use crate::api::{Ctx, Fail, get_app};
use crate::render;
use celld_proto as pb;

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// The app's name.
    pub name: String,
    /// Number of instances.
    #[arg(short = 'i', long)]
    pub instances: Option<u32>,
    /// Memory limit per instance, e.g. 256M or 1G (restarts a started app).
    #[arg(short = 'm', long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Disk limit per instance, e.g. 512M or 1G (restarts a started app).
    #[arg(short = 'k', long, value_name = "SIZE")]
    pub disk: Option<String>,
    /// The process type to scale (web, worker, …).
    #[arg(long, value_name = "TYPE", default_value = "web")]
    pub process: String,
}

pub(super) async fn scale(ctx: &Ctx, a: ScaleArgs) -> Result<(), Fail> {
    let memory_mb = size("memory", &a.memory)?;
    let disk_mb = size("disk", &a.disk)?;
    let mut c = ctx.connect().await?;
    if a.instances.is_none() && memory_mb.is_none() && disk_mb.is_none() {
        println!("Showing current scale of app {} in space {}...\n", a.name, ctx.space);
        print!("{}", render::app_detail(&get_app(ctx, &mut c, &a.name).await?, ctx.style));
        return Ok(());
    }
    if a.process != "web" {
        // Another type's new limits reach it at once (the server replaces its instances).
        println!("Scaling process {} of app {} in space {}...", a.process, a.name, ctx.space);
        let req = pb::ScaleProcessRequest {
            app: Some(ctx.app_ref(&a.name)),
            process_type: a.process.clone(),
            instances: a.instances,
            memory_mb,
            disk_mb,
        };
        c.scale_process(req).await.map_err(|s| ctx.fail(s))?;
        println!("OK\n");
        print!("{}", render::app_detail(&get_app(ctx, &mut c, &a.name).await?, ctx.style));
        return Ok(());
    }
    let before = get_app(ctx, &mut c, &a.name).await?.app.unwrap_or_default();
    println!("Scaling app {} in space {}...", a.name, ctx.space);
    let req = pb::UpdateAppRequest {
        app: Some(ctx.app_ref(&a.name)),
        instances: a.instances,
        memory_mb,
        disk_mb,
        ..Default::default()
    };
    let after = c.update_app(req).await.map_err(|s| ctx.fail(s))?.into_inner();
    // Instances follow a scale at once; memory and disk are container limits,
    // fixed when an instance is created.
    let limits_changed =
        memory_mb.is_some_and(|m| m != before.memory_mb) || disk_mb.is_some_and(|d| d != before.disk_mb);
    if after.state == "STARTED" && limits_changed {
        println!("Restarting app {} for the new memory and disk limits...", a.name);
        c.restart_app(ctx.app_ref(&a.name)).await.map_err(|s| ctx.fail(s))?;
        return wait_started(ctx, &mut c, &a.name, after.health_check_timeout).await;
    }
    println!("OK\n");
    print!("{}", render::app_detail(&get_app(ctx, &mut c, &a.name).await?, ctx.style));
    Ok(())
}

pub(super) async fn start(ctx: &Ctx, name: &str) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let a = get_app(ctx, &mut c, name).await?.app.unwrap_or_default();
    if a.state == "STARTED" {
        println!("App '{name}' is already started.\nOK");
        return Ok(());
    }
    println!("Starting app {name} in space {}...", ctx.space);
    // Like cf: a package uploaded but not (successfully) staged is staged first.
    if a.package_state != "STAGED" && !a.package_key.is_empty() {
        stage(ctx, &mut c, name).await?;
    }
    c.start_app(ctx.app_ref(name)).await.map_err(|s| ctx.fail(s))?;
    wait_started(ctx, &mut c, name, a.health_check_timeout).await
}

pub(super) async fn create_app(ctx: &Ctx, name: &str, no_route: bool, hostname: Option<String>) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    println!("Creating app {name} in space {}...", ctx.space);
    let req = pb::CreateAppRequest {
        space: ctx.space.clone(),
        name: name.to_string(),
        instances: 1,
        hostname: hostname.unwrap_or_default(),
        no_route,
        ..Default::default()
    };
    c.create_app(req).await.map_err(|s| ctx.fail(s))?;
    println!("OK");
    Ok(())
}

pub(super) async fn stop(ctx: &Ctx, name: &str) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    println!("Stopping app {name} in space {}...", ctx.space);
    c.stop_app(ctx.app_ref(name)).await.map_err(|s| ctx.fail(s))?;
    println!("OK");
    Ok(())
}

pub(super) async fn restart(ctx: &Ctx, name: &str) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    println!("Restarting app {name} in space {}...", ctx.space);
    let a = c.restart_app(ctx.app_ref(name)).await.map_err(|s| ctx.fail(s))?.into_inner();
    wait_started(ctx, &mut c, name, a.health_check_timeout).await
}

pub(super) async fn restart_instance(ctx: &Ctx, name: &str, index: u32) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    println!("Restarting instance {index} of app {name} in space {}...", ctx.space);
    let req = pb::RestartAppInstanceRequest { app: Some(ctx.app_ref(name)), index };
    c.restart_app_instance(req).await.map_err(|s| ctx.fail(s))?;
    println!("OK");
    Ok(())
}

pub(super) async fn delete(ctx: &Ctx, name: &str, force: bool) -> Result<(), Fail> {
    if !confirm(&format!("app {name}"), force)? {
        return Ok(());
    }
    let mut c = ctx.connect().await?;
    println!("Deleting app {name} in space {}...", ctx.space);
    match c.delete_app(ctx.app_ref(name)).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => println!("App '{name}' does not exist."),
        Err(s) => return Err(ctx.fail(s)),
    }
    println!("OK");
    Ok(())
}
