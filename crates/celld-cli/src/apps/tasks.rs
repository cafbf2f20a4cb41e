//! One-off tasks run with an app's droplet: `run-task` and `tasks`.

use clap::Args;

use super::input::size;
use crate::api::{Ctx, Fail};
use crate::render;
use celld_proto as pb;

#[derive(Args, Debug)]
pub struct RunTaskArgs {
    /// The app's name.
    #[arg(value_name = "APP_NAME")]
    pub app: String,
    /// The command to run (one argument: quote it).
    pub command: String,
    /// The task's name (default: generated).
    #[arg(long = "name", value_name = "TASK_NAME")]
    pub task_name: Option<String>,
    /// Memory limit, e.g. 256M (default: the app's).
    #[arg(short = 'm', long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Disk limit, e.g. 1G (default: the app's).
    #[arg(short = 'k', long, value_name = "SIZE")]
    pub disk: Option<String>,
}

pub(super) async fn run_task(ctx: &Ctx, a: RunTaskArgs) -> Result<(), Fail> {
    let memory_mb = size("memory", &a.memory)?.unwrap_or(0);
    let disk_mb = size("disk", &a.disk)?.unwrap_or(0);
    if a.command.trim().is_empty() {
        return Err(Fail::Usage("the task's command is empty".into()));
    }
    let mut c = ctx.connect().await?;
    println!("Creating task for app {} in space {}...", a.app, ctx.space);
    let req = pb::RunTaskRequest {
        app: Some(ctx.app_ref(&a.app)),
        command: a.command,
        name: a.task_name.unwrap_or_default(),
        memory_mb,
        disk_mb,
    };
    let t = c.run_task(req).await.map_err(|s| ctx.fail(s))?.into_inner();
    println!("OK\n\nTask has been submitted successfully for execution.");
    println!("task name:   {}\ntask id:     {}", t.name, t.sequence_id);
    Ok(())
}

pub(super) async fn tasks(ctx: &Ctx, name: &str, json: bool) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let r = c.list_tasks(ctx.app_ref(name)).await.map_err(|s| ctx.fail(s))?.into_inner();
    if json {
        println!("{}", render::to_json_text(&render::tasks_json(&r)));
    } else {
        println!("Getting tasks for app {name} in space {}...\n", ctx.space);
        print!("{}", render::tasks_table(&r, ctx.style));
    }
    Ok(())
}
