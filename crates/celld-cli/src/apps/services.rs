//! Service instances: `create-user-provided-service` (its credentials checked
//! locally), `delete-service`, `bind-service`, `unbind-service`, `services`.

use clap::Args;

use super::input::confirm;
use super::settings::env_tip;
use crate::api::{Ctx, Fail};
use crate::render;
use celld_proto as pb;

const CREDENTIALS_EXAMPLE: &str = r#"'{"uri":"postgres://…"}'"#;

#[derive(Args, Debug)]
pub struct CupsArgs {
    /// The service instance's name.
    pub name: String,
    /// Credentials: a JSON object, or a file holding one (default {}).
    #[arg(short = 'p', value_name = "JSON|FILE")]
    pub credentials: Option<String>,
    /// Tags, comma-separated.
    #[arg(short = 't', value_name = "TAGS")]
    pub tags: Option<String>,
    /// Syslog drain URL for the apps bound to it.
    #[arg(short = 'l', value_name = "URL")]
    pub syslog_drain_url: Option<String>,
}

/// `-p`'s credentials, checked locally: inline JSON, or a file holding it,
/// that parses and is an object.
pub fn credentials(arg: Option<&str>) -> Result<String, Fail> {
    let Some(arg) = arg else { return Ok("{}".to_string()) };
    let looks_inline = arg.trim_start().starts_with(['{', '[', '"']);
    let from_file = if looks_inline { None } else { std::fs::read_to_string(arg).ok() };
    let text = from_file.unwrap_or_else(|| arg.to_string());
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(_)) => Ok(text),
        Ok(_) => {
            Err(Fail::Usage(format!("credentials must be a JSON object; pass an object like {CREDENTIALS_EXAMPLE}")))
        }
        Err(e) => {
            Err(Fail::Usage(format!("credentials are not valid JSON: {e}; pass an object like {CREDENTIALS_EXAMPLE}")))
        }
    }
}

pub(super) async fn cups(ctx: &Ctx, a: CupsArgs) -> Result<(), Fail> {
    let credentials_json = credentials(a.credentials.as_deref())?;
    let tags: Vec<String> =
        a.tags.as_deref().unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect();
    let mut c = ctx.connect().await?;
    println!("Creating user provided service {} in space {}...", a.name, ctx.space);
    let req = pb::CreateUserProvidedServiceRequest {
        space: ctx.space.clone(),
        name: a.name,
        credentials_json,
        tags,
        syslog_drain_url: a.syslog_drain_url.unwrap_or_default(),
    };
    c.create_user_provided_service(req).await.map_err(|s| ctx.fail(s))?;
    println!("OK");
    Ok(())
}

pub(super) async fn delete_service(ctx: &Ctx, name: &str, force: bool) -> Result<(), Fail> {
    if !confirm(&format!("service instance {name}"), force)? {
        return Ok(());
    }
    let mut c = ctx.connect().await?;
    println!("Deleting service instance {name} in space {}...", ctx.space);
    match c.delete_service(pb::ServiceRef { space: ctx.space.clone(), name: name.to_string() }).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => println!("Service instance {name} did not exist."),
        Err(s) => return Err(ctx.fail(s)),
    }
    println!("OK");
    Ok(())
}

pub(super) async fn bind(ctx: &Ctx, app: &str, service: &str, bind: bool) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let req = pb::BindServiceRequest { app: Some(ctx.app_ref(app)), service: service.to_string() };
    if bind {
        println!("Binding service instance {service} to app {app} in space {}...", ctx.space);
        match c.bind_service(req).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                println!("App {app} is already bound to service instance {service}.\nOK");
                return Ok(());
            }
            Err(s) => return Err(ctx.fail(s)),
        }
    } else {
        println!("Unbinding app {app} from service {service} in space {}...", ctx.space);
        c.unbind_service(req).await.map_err(|s| ctx.fail(s))?;
    }
    println!("OK\n{}", env_tip(app));
    Ok(())
}

pub(super) async fn services(ctx: &Ctx, json: bool) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let r = c.list_services(pb::ListServicesRequest { space: ctx.space.clone() }).await.map_err(|s| ctx.fail(s))?;
    let r = r.into_inner();
    if json {
        println!("{}", render::to_json_text(&render::services_json(&r)));
    } else {
        println!("Getting service instances in space {}...\n", ctx.space);
        print!("{}", render::services_table(&r, ctx.style));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_checked_locally() {
        assert_eq!(credentials(None), Ok("{}".into()));
        assert_eq!(credentials(Some(r#"{"uri":"postgres://x"}"#)), Ok(r#"{"uri":"postgres://x"}"#.into()));
        let Err(Fail::Usage(e)) = credentials(Some("{uri: x}")) else { panic!("accepted bad JSON") };
        assert!(e.starts_with("credentials are not valid JSON: key must be a string at line 1 column 2; pass an object like '{\"uri\":\"postgres://…\"}'"), "{e}");
        let Err(Fail::Usage(e)) = credentials(Some("[1]")) else { panic!("accepted an array") };
        assert!(e.starts_with("credentials must be a JSON object"), "{e}");
        let f = std::env::temp_dir().join(format!("cellctl-creds-{}.json", std::process::id()));
        std::fs::write(&f, r#"{"user":"u"}"#).unwrap();
        assert_eq!(credentials(f.to_str()), Ok(r#"{"user":"u"}"#.into()));
        let _ = std::fs::remove_file(&f);
    }
}
