//! cellctl commands for people: the `Apps` service, named and worded like the
//! `cf` CLI's (push, apps, app, scale, logs, services, tasks, …).
//!
//! This file is the command line (`AppsCmd`) and sends each command to the
//! file of its area: `push`; `lifecycle` (create, start, stop, restart, scale,
//! delete) over `starting` (stage, then wait for the instances); `show` (apps,
//! app, logs, events, cells); `settings` (env, ssh allowed); `services`;
//! `tasks`. The connection and failures every command shares are in
//! `cli::api`, the ssh commands in `cli::ssh`, which use neither of these.

mod input;
mod lifecycle;
#[cfg(test)]
mod mock;
mod push;
mod push_manifest;
mod services;
mod settings;
mod show;
mod starting;
mod tasks;

use clap::Subcommand;

pub use crate::api::{Ctx, Fail, endpoint, status_message};
pub use lifecycle::ScaleArgs;
pub use push::{PushArgs, PushPlan, push};
pub use services::{CupsArgs, credentials};
pub use starting::{StartState, start_state};
pub use tasks::RunTaskArgs;

use lifecycle::{create_app, delete, restart, restart_instance, scale, start, stop};
use services::{bind, cups, delete_service, services};
use settings::{env, set_env, set_ssh, ssh_enabled, unset_env};
use show::{app, apps, cells, events, logs};
use tasks::{run_task, tasks};

#[derive(Subcommand, Debug)]
pub enum AppsCmd {
    /// Pushes an app: creates (or updates) it, uploads its files, stages and starts it.
    Push(Box<PushArgs>),
    /// Lists the apps in the space.
    Apps {
        /// Print the ListApps response as JSON.
        #[arg(long)]
        json: bool,
        /// List the apps of every space.
        #[arg(long)]
        all_spaces: bool,
    },
    /// Shows an app: state, routes, stack, buildpacks and each instance's usage.
    App {
        /// The app's name.
        name: String,
        /// Print the GetApp response as JSON.
        #[arg(long, conflicts_with = "guid")]
        json: bool,
        /// Print only the app's guid.
        #[arg(long)]
        guid: bool,
    },
    /// Changes an app's instances, memory or disk (memory and disk restart a started app); without flags shows the current scale.
    Scale(ScaleArgs),
    /// Starts an app (staging its latest package first if it was never staged).
    Start {
        /// The app's name.
        name: String,
    },
    /// Creates an app without files (like `cf create-app`); `push` uploads them later.
    CreateApp {
        /// The app's name (unique in its space).
        name: String,
        /// Create the app without a route.
        #[arg(long)]
        no_route: bool,
        /// Host name of the app's route (default: the app's name).
        #[arg(long, value_name = "HOST")]
        hostname: Option<String>,
    },
    /// Stops all instances of an app.
    Stop {
        /// The app's name.
        name: String,
    },
    /// Stops and starts an app (new instances, current settings, env and bindings).
    Restart {
        /// The app's name.
        name: String,
    },
    /// Stops one instance; the scheduler starts a replacement.
    RestartAppInstance {
        /// The app's name.
        name: String,
        /// The instance index (`#0` in `cellctl app`).
        index: u32,
    },
    /// Deletes an app, its routes, bindings, package and droplets.
    Delete {
        /// The app's name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
    },
    /// Shows an app's logs: live lines (until Ctrl-C), or with --recent the history.
    Logs {
        /// The app's name.
        name: String,
        /// Print the recent history and exit instead of following.
        #[arg(long)]
        recent: bool,
    },
    /// Lists an app's recent events, newest first.
    Events {
        /// The app's name.
        name: String,
        /// Print the Events response as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows the environment an app's instances get: VCAP_SERVICES, VCAP_APPLICATION and the user's variables.
    Env {
        /// The app's name.
        name: String,
    },
    /// Sets an environment variable of an app (effective on the next restart).
    SetEnv {
        /// The app's name.
        name: String,
        /// The variable's name.
        var: String,
        /// Its value.
        value: String,
    },
    /// Removes an environment variable of an app (effective on the next restart).
    UnsetEnv {
        /// The app's name.
        name: String,
        /// The variable's name.
        var: String,
    },
    /// Makes a user-provided service instance: credentials apps get in VCAP_SERVICES.
    #[command(visible_alias = "cups")]
    CreateUserProvidedService(CupsArgs),
    /// Deletes a service instance.
    DeleteService {
        /// The service instance's name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
    },
    /// Binds a service instance to an app (effective on the app's next restart).
    BindService {
        /// The app's name.
        app: String,
        /// The service instance's name.
        service: String,
    },
    /// Unbinds a service instance from an app (effective on the app's next restart).
    UnbindService {
        /// The app's name.
        app: String,
        /// The service instance's name.
        service: String,
    },
    /// Lists the service instances in the space.
    Services {
        /// Print the ListServices response as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runs a one-off task with an app's droplet.
    RunTask(RunTaskArgs),
    /// Lists an app's tasks.
    Tasks {
        /// The app's name.
        name: String,
        /// Print the ListTasks response as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists the cells: capacity, what is left, what runs there, and the
    /// host's vitals as `bosh vms --vitals` shows them.
    Cells {
        /// Print the ListCells response as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Allows `ssh` into an app's instances (effective on the next restart).
    EnableSsh {
        /// The app's name.
        name: String,
    },
    /// Disallows `ssh` into an app's instances (effective on the next restart).
    DisableSsh {
        /// The app's name.
        name: String,
    },
    /// Tells whether `ssh` into an app's instances is allowed.
    SshEnabled {
        /// The app's name.
        name: String,
    },
    /// Opens a shell in an app instance (or runs a command, or forwards ports) through the ssh proxy.
    Ssh(crate::ssh::SshArgs),
    /// Prints a one-time password for a login at the ssh proxy (user `cf:APP_GUID/INDEX`).
    SshCode,
    /// Allows `ssh` into the apps of a space.
    AllowSpaceSsh {
        /// The space's name.
        space: String,
    },
    /// Disallows `ssh` into the apps of a space.
    DisallowSpaceSsh {
        /// The space's name.
        space: String,
    },
    /// Tells whether `ssh` into the apps of a space is allowed.
    SpaceSshAllowed {
        /// The space's name.
        space: String,
    },
}

pub async fn run(cmd: AppsCmd, ctx: &Ctx) -> Result<(), Fail> {
    match cmd {
        AppsCmd::Push(a) => push(ctx, *a).await,
        AppsCmd::Apps { json, all_spaces } => apps(ctx, json, all_spaces).await,
        AppsCmd::App { name, json, guid } => app(ctx, &name, json, guid).await,
        AppsCmd::Scale(a) => scale(ctx, a).await,
        AppsCmd::Start { name } => start(ctx, &name).await,
        AppsCmd::CreateApp { name, no_route, hostname } => create_app(ctx, &name, no_route, hostname).await,
        AppsCmd::Stop { name } => stop(ctx, &name).await,
        AppsCmd::Restart { name } => restart(ctx, &name).await,
        AppsCmd::RestartAppInstance { name, index } => restart_instance(ctx, &name, index).await,
        AppsCmd::Delete { name, force } => delete(ctx, &name, force).await,
        AppsCmd::Logs { name, recent } => logs(ctx, &name, recent).await,
        AppsCmd::Events { name, json } => events(ctx, &name, json).await,
        AppsCmd::Env { name } => env(ctx, &name).await,
        AppsCmd::SetEnv { name, var, value } => set_env(ctx, &name, &var, &value).await,
        AppsCmd::UnsetEnv { name, var } => unset_env(ctx, &name, &var).await,
        AppsCmd::CreateUserProvidedService(a) => cups(ctx, a).await,
        AppsCmd::DeleteService { name, force } => delete_service(ctx, &name, force).await,
        AppsCmd::BindService { app, service } => bind(ctx, &app, &service, true).await,
        AppsCmd::UnbindService { app, service } => bind(ctx, &app, &service, false).await,
        AppsCmd::Services { json } => services(ctx, json).await,
        AppsCmd::RunTask(a) => run_task(ctx, a).await,
        AppsCmd::Tasks { name, json } => tasks(ctx, &name, json).await,
        AppsCmd::Cells { json } => cells(ctx, json).await,
        AppsCmd::EnableSsh { name } => set_ssh(ctx, &name, true).await,
        AppsCmd::DisableSsh { name } => set_ssh(ctx, &name, false).await,
        AppsCmd::SshEnabled { name } => ssh_enabled(ctx, &name).await,
        AppsCmd::Ssh(a) => crate::ssh::run_ssh(ctx, a).await,
        AppsCmd::SshCode => crate::ssh::ssh_code(ctx).await,
        AppsCmd::AllowSpaceSsh { space } => crate::ssh::set_space_ssh(ctx, &space, true).await,
        AppsCmd::DisallowSpaceSsh { space } => crate::ssh::set_space_ssh(ctx, &space, false).await,
        AppsCmd::SpaceSshAllowed { space } => crate::ssh::space_ssh_allowed(ctx, &space).await,
    }
}

#[cfg(test)]
mod tests {
    use super::mock::{self, app_dir, ctx_for};
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[command(subcommand)]
        cmd: AppsCmd,
    }

    fn parse(args: &[&str]) -> Result<AppsCmd, clap::Error> {
        T::try_parse_from(std::iter::once("cellctl").chain(args.iter().copied())).map(|t| t.cmd)
    }

    #[test]
    fn other_commands_parse() {
        assert!(matches!(parse(&["cups", "db", "-p", "{}"]).unwrap(), AppsCmd::CreateUserProvidedService(_)));
        assert!(matches!(
            parse(&["create-user-provided-service", "db", "-t", "a, b", "-l", "syslog://x"]).unwrap(),
            AppsCmd::CreateUserProvidedService(CupsArgs { tags: Some(_), syslog_drain_url: Some(_), .. })
        ));
        assert!(matches!(
            parse(&["restart-app-instance", "web", "2"]).unwrap(),
            AppsCmd::RestartAppInstance { index: 2, .. }
        ));
        assert!(parse(&["restart-app-instance", "web", "x"]).is_err());
        assert!(matches!(parse(&["delete", "web", "-f"]).unwrap(), AppsCmd::Delete { force: true, .. }));
        assert!(matches!(parse(&["logs", "web", "--recent"]).unwrap(), AppsCmd::Logs { recent: true, .. }));
        assert!(parse(&["app", "web", "--json", "--guid"]).is_err());
        let AppsCmd::RunTask(t) =
            parse(&["run-task", "web", "rake db:migrate", "--name", "migrate", "-m", "1G"]).unwrap()
        else {
            panic!("not run-task")
        };
        assert_eq!(
            (t.app.as_str(), t.command.as_str(), t.task_name.as_deref()),
            ("web", "rake db:migrate", Some("migrate"))
        );
        let AppsCmd::Scale(s) = parse(&["scale", "web", "-i", "2", "-m", "1G"]).unwrap() else { panic!("not scale") };
        assert_eq!((s.instances, s.memory.as_deref(), s.disk), (Some(2), Some("1G"), None));
    }

    #[tokio::test]
    async fn bad_input_fails_before_any_call() {
        let m = mock::Mock::default();
        let ctx = ctx_for(&m).await;
        let missing = PushArgs { path: Some("/nonexistent/app".into()), ..Default::default() };
        assert_eq!(
            push(&ctx, missing).await,
            Err(Fail::Usage("push: /nonexistent/app does not exist; pass the app's directory or a .zip".into()))
        );
        let dir = app_dir("bad");
        let bad = PushArgs { path: Some(dir.clone()), memory: Some("256X".into()), ..Default::default() };
        assert!(matches!(push(&ctx, bad).await, Err(Fail::Usage(_))));
        assert!(m.0.lock().unwrap().calls.is_empty());
        // Server answers that cf treats as fine.
        assert_eq!(delete(&ctx, "x", true).await, Ok(()));
        assert_eq!(bind(&ctx, "a", "db", true).await, Ok(()));
        // A refusal is the server's message.
        assert_eq!(restart(&ctx, "x").await, Err(Fail::Failed("not in the mock".into())));
        assert_eq!(logs(&ctx, "x", true).await, Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
