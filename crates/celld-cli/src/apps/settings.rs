//! An app's settings that take effect on its next restart: environment
//! variables (`env`, `set-env`, `unset-env`) and whether `ssh` into its
//! instances is allowed (`enable-ssh`, `disable-ssh`, `ssh-enabled`).

use crate::api::{Ctx, Fail, get_app};
use crate::render;
use celld_proto as pb;

pub(super) async fn env(ctx: &Ctx, name: &str) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let e = c.get_env(ctx.app_ref(name)).await.map_err(|s| ctx.fail(s))?.into_inner();
    println!("Getting env variables for app {name} in space {}...", ctx.space);
    print!("{}", render::env_text(&e, ctx.style));
    Ok(())
}

pub(super) fn env_tip(name: &str) -> String {
    format!("TIP: Use 'cellctl restart {name}' to ensure your env variable changes take effect.")
}

pub(super) async fn set_env(ctx: &Ctx, name: &str, var: &str, value: &str) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    println!("Setting env variable {var} for app {name} in space {}...", ctx.space);
    let req = pb::UpdateAppRequest {
        app: Some(ctx.app_ref(name)),
        set_env: [(var.to_string(), value.to_string())].into(),
        ..Default::default()
    };
    c.update_app(req).await.map_err(|s| ctx.fail(s))?;
    println!("OK\n{}", env_tip(name));
    Ok(())
}

pub(super) async fn unset_env(ctx: &Ctx, name: &str, var: &str) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    println!("Removing env variable {var} from app {name} in space {}...", ctx.space);
    let a = get_app(ctx, &mut c, name).await?.app.unwrap_or_default();
    if !a.env.contains_key(var) {
        println!("Env variable {var} was not set.\nOK");
        return Ok(());
    }
    let req =
        pb::UpdateAppRequest { app: Some(ctx.app_ref(name)), unset_env: vec![var.to_string()], ..Default::default() };
    c.update_app(req).await.map_err(|s| ctx.fail(s))?;
    println!("OK\n{}", env_tip(name));
    Ok(())
}

pub(super) async fn set_ssh(ctx: &Ctx, name: &str, enable: bool) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let (verb, word) = if enable { ("Enabling", "enabled") } else { ("Disabling", "disabled") };
    println!("{verb} ssh support for app {name}...");
    let a = get_app(ctx, &mut c, name).await?.app.unwrap_or_default();
    if a.enable_ssh == enable {
        println!("ssh support for app '{name}' is already {word}.\nOK");
        return Ok(());
    }
    let req = pb::UpdateAppRequest { app: Some(ctx.app_ref(name)), enable_ssh: Some(enable), ..Default::default() };
    c.update_app(req).await.map_err(|s| ctx.fail(s))?;
    println!("OK\nTIP: Use 'cellctl restart {name}' for the change to take effect.");
    Ok(())
}

pub(super) async fn ssh_enabled(ctx: &Ctx, name: &str) -> Result<(), Fail> {
    let a = get_app(ctx, &mut ctx.connect().await?, name).await?.app.unwrap_or_default();
    let word = if a.enable_ssh { "enabled" } else { "disabled" };
    println!("ssh support is {word} for app '{name}'.");
    Ok(())
}
