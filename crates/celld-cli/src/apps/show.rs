//! The commands that only look: `apps`, `app`, `logs`, `events` and `cells`.

use std::io::Write;

use crate::api::{Ctx, Fail, get_app};
use crate::render;
use celld_proto as pb;

pub(super) async fn apps(ctx: &Ctx, json: bool, all_spaces: bool) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let req = pb::ListAppsRequest { space: ctx.space.clone(), all_spaces };
    let list = c.list_apps(req).await.map_err(|s| ctx.fail(s))?.into_inner();
    if json {
        println!("{}", render::to_json_text(&render::list_apps_json(&list)));
        return Ok(());
    }
    if all_spaces {
        println!("Getting apps in every space...\n");
    } else {
        println!("Getting apps in space {}...\n", ctx.space);
    }
    print!("{}", render::apps_table(&list, all_spaces, ctx.style));
    Ok(())
}

pub(super) async fn app(ctx: &Ctx, name: &str, json: bool, guid: bool) -> Result<(), Fail> {
    let d = get_app(ctx, &mut ctx.connect().await?, name).await?;
    if guid {
        println!("{}", d.app.map(|a| a.guid).unwrap_or_default());
    } else if json {
        println!("{}", render::to_json_text(&render::app_detail_json(&d)));
    } else {
        println!("Showing health and status for app {name} in space {}...\n", ctx.space);
        print!("{}", render::app_detail(&d, ctx.style));
    }
    Ok(())
}

pub(super) async fn logs(ctx: &Ctx, name: &str, recent: bool) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    println!("Retrieving logs for app {name} in space {}...\n", ctx.space);
    let req = pb::LogsRequest { app: Some(ctx.app_ref(name)), recent, follow: !recent };
    let mut stream = c.logs(req).await.map_err(|s| ctx.fail(s))?.into_inner();
    let mut out = std::io::stdout();
    while let Some(e) = stream.message().await.map_err(|s| ctx.fail(s))? {
        // A closed pipe (`| head`) ends the command quietly.
        if out.write_all(render::log_lines(&e, ctx.style).as_bytes()).and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(())
}

pub(super) async fn events(ctx: &Ctx, name: &str, json: bool) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let r = c.events(ctx.app_ref(name)).await.map_err(|s| ctx.fail(s))?.into_inner();
    if json {
        println!("{}", render::to_json_text(&render::events_json(&r)));
    } else {
        println!("Getting events for app {name} in space {}...\n", ctx.space);
        print!("{}", render::events_table(&r, ctx.style));
    }
    Ok(())
}

pub(super) async fn cells(ctx: &Ctx, json: bool) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let r = c.list_cells(pb::ListCellsRequest {}).await.map_err(|s| ctx.fail(s))?.into_inner();
    if json {
        println!("{}", render::to_json_text(&render::cells_json(&r)));
    } else {
        print!("{}", render::cells_table(&r, ctx.style));
    }
    Ok(())
}
