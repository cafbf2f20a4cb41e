//! (Long because: one command per `cf` verb, each short; issue 18 splits them by area.)
//!
//! cellctl commands for people: the `Apps` service, named and worded like the
//! `cf` CLI's (push, apps, app, scale, logs, services, tasks, …).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::cli::package::{self, Source, TempFile};
use crate::cli::render::{self, Style};
use crate::grpc::pb;
use crate::grpc::pb::apps_client::AppsClient;

const CHUNK: usize = 64 * 1024;
/// How often `push`, `start`, `restart` and `scale` look at the instances.
const POLL: Duration = Duration::from_millis(500);
/// Beyond the health check timeout, what an instance gets to be placed and
/// have its droplet downloaded before cellctl gives up waiting.
const START_GRACE: Duration = Duration::from_secs(30);
const CREDENTIALS_EXAMPLE: &str = r#"'{"uri":"postgres://…"}'"#;

#[derive(Subcommand, Debug)]
pub enum AppsCmd {
    /// Pushes an app: creates (or updates) it, uploads its files, stages and starts it.
    Push(PushArgs),
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
    /// Lists the cells: capacity, what is left, and what runs there.
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
    Ssh(crate::cli::ssh::SshArgs),
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

#[derive(Args, Debug, Default)]
pub struct PushArgs {
    /// The app's directory, or a .zip of its files.
    #[arg(value_name = "DIR|ZIP")]
    pub path: PathBuf,
    /// The app's name (default: the directory's name, or the zip's, made a valid host name).
    #[arg(short = 'n', long)]
    pub name: Option<String>,
    /// Buildpack to use, skipping detection (repeat for multi-buildpack; `default` to detect again).
    #[arg(short = 'b', long = "buildpack", value_name = "BUILDPACK")]
    pub buildpacks: Vec<String>,
    /// Number of instances.
    #[arg(short = 'i', long)]
    pub instances: Option<u32>,
    /// Memory limit per instance, e.g. 256M or 1G.
    #[arg(short = 'm', long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Disk limit per instance, e.g. 512M or 1G.
    #[arg(short = 'k', long, value_name = "SIZE")]
    pub disk: Option<String>,
    /// Health check: port (TCP connect), http (GET of --endpoint) or process (it stays up).
    #[arg(short = 'u', long = "health-check-type", value_name = "TYPE")]
    pub health_check_type: Option<String>,
    /// Path the http health check GETs (default /).
    #[arg(long, value_name = "PATH")]
    pub endpoint: Option<String>,
    /// Seconds an instance has to become healthy when it starts (default 60).
    #[arg(short = 't', long = "timeout", value_name = "SECONDS")]
    pub timeout: Option<u32>,
    /// Start command (default: the Procfile's or the buildpack's).
    #[arg(short = 'c', long)]
    pub command: Option<String>,
    /// Stack to stage and run on (default: the cell's).
    #[arg(short = 's', long)]
    pub stack: Option<String>,
    /// Upload the files but neither stage nor start the app.
    #[arg(long)]
    pub no_start: bool,
    /// Create the app without a route (only when the app is created).
    #[arg(long, conflicts_with = "hostname")]
    pub no_route: bool,
    /// Host name of the app's route (default: the app's name; only when the app is created).
    #[arg(long, value_name = "HOST")]
    pub hostname: Option<String>,
}

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
}

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

/// Why a command failed. Both exit 1.
#[derive(Debug, PartialEq, Eq)]
pub enum Fail {
    /// Bad input, nothing done: printed as `error: …`.
    Usage(String),
    /// The server refused, could not be reached, or an operation failed:
    /// printed after `FAILED`, as `cf` does.
    Failed(String),
}

impl Fail {
    pub fn report(&self) {
        match self {
            Self::Usage(m) => eprintln!("error: {m}"),
            Self::Failed(m) => eprintln!("FAILED\n{m}"),
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Failed(m) => f.write_str(m),
        }
    }
}

fn unreachable(api: &str) -> String {
    format!("cannot reach celld at {api}: is `celld --local` running? (set --api or `cellctl target`)")
}

/// A gRPC status as one readable line. Transport failures (they carry a
/// source error) mean celld is not there; the server's own refusals carry a
/// message meant for people, printed as is.
pub fn status_message(api: &str, s: &tonic::Status) -> String {
    use tonic::Code;
    let msg = s.message();
    let transport = std::error::Error::source(s).is_some();
    match s.code() {
        Code::Unavailable if transport || msg.is_empty() => unreachable(api),
        // What tonic answers for a service the server does not have.
        Code::Unimplemented if msg.is_empty() => {
            format!("celld at {api} does not serve the Apps API: is it running with --local?")
        }
        Code::DeadlineExceeded => format!("celld at {api} did not answer in time: {msg}"),
        Code::Internal | Code::Unknown | Code::DataLoss => format!("celld failed: {msg}"),
        _ if msg.is_empty() => format!("celld refused: {}", s.code().description()),
        _ => msg.to_string(),
    }
}

/// Where and how the people commands run.
pub struct Ctx {
    pub api: String,
    pub space: String,
    pub style: Style,
}

type Client = AppsClient<Channel>;

/// The gRPC endpoint of an --api value (HOST:PORT, or a URL).
pub fn endpoint(api: &str) -> Result<tonic::transport::Endpoint, String> {
    crate::grpc::endpoint(api).map_err(|e| format!("--api {api:?}: {e} (use HOST:PORT)"))
}

impl Ctx {
    pub async fn connect(&self) -> Result<Client, Fail> {
        let endpoint = endpoint(&self.api).map_err(Fail::Usage)?.connect_timeout(Duration::from_secs(5));
        let ch = endpoint.connect().await.map_err(|_| Fail::Failed(unreachable(&self.api)))?;
        Ok(AppsClient::new(ch).max_decoding_message_size(16 << 20))
    }

    fn fail(&self, s: tonic::Status) -> Fail {
        Fail::Failed(status_message(&self.api, &s))
    }

    fn app_ref(&self, name: &str) -> pb::AppRef {
        pb::AppRef { space: self.space.clone(), name: name.to_string() }
    }
}

pub async fn run(cmd: AppsCmd, ctx: &Ctx) -> Result<(), Fail> {
    match cmd {
        AppsCmd::Push(a) => push(ctx, a).await,
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
        AppsCmd::Ssh(a) => crate::cli::ssh::run_ssh(ctx, a).await,
        AppsCmd::SshCode => crate::cli::ssh::ssh_code(ctx).await,
        AppsCmd::AllowSpaceSsh { space } => crate::cli::ssh::set_space_ssh(ctx, &space, true).await,
        AppsCmd::DisallowSpaceSsh { space } => crate::cli::ssh::set_space_ssh(ctx, &space, false).await,
        AppsCmd::SpaceSshAllowed { space } => crate::cli::ssh::space_ssh_allowed(ctx, &space).await,
    }
}

fn size(what: &str, s: &Option<String>) -> Result<Option<u32>, Fail> {
    s.as_deref().map(|s| render::parse_size_mb(what, s)).transpose().map_err(Fail::Usage)
}

/// `push`'s flags, checked: nothing reaches the server unless all are valid.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushPlan {
    pub memory_mb: Option<u32>,
    pub disk_mb: Option<u32>,
    pub health_check_type: Option<String>,
    pub endpoint: Option<String>,
    /// Some(list) replaces the buildpacks; an empty list means detect.
    pub buildpacks: Option<Vec<String>>,
}

impl PushPlan {
    pub fn check(a: &PushArgs) -> Result<Self, Fail> {
        let memory_mb = size("memory", &a.memory)?;
        let disk_mb = size("disk", &a.disk)?;
        if let Some(t) = &a.health_check_type {
            if !matches!(t.as_str(), "port" | "http" | "process") {
                return Err(Fail::Usage(format!("health check type {t} is not valid: use port, http or process")));
            }
            if t != "http" && a.endpoint.is_some() {
                return Err(Fail::Usage(format!("--endpoint is for http health checks, not {t}: add -u http")));
            }
        }
        if let Some(e) = &a.endpoint {
            if !e.starts_with('/') {
                return Err(Fail::Usage(format!("health check endpoint {e} is not valid: it must start with /")));
            }
        }
        if a.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(Fail::Usage("the app name is empty".into()));
        }
        // cf's way back to detection: `-b default` (or `null`).
        let buildpacks = match a.buildpacks.as_slice() {
            [] => None,
            [one] if one == "default" || one == "null" => Some(Vec::new()),
            list => Some(list.to_vec()),
        };
        Ok(Self {
            memory_mb,
            disk_mb,
            health_check_type: a.health_check_type.clone(),
            endpoint: a.endpoint.clone(),
            buildpacks,
        })
    }

    fn update(&self, a: &PushArgs, app: pb::AppRef) -> Option<pb::UpdateAppRequest> {
        let req = pb::UpdateAppRequest {
            app: Some(app),
            instances: a.instances,
            memory_mb: self.memory_mb,
            disk_mb: self.disk_mb,
            health_check_type: self.health_check_type.clone(),
            health_check_endpoint: self.endpoint.clone(),
            health_check_timeout: a.timeout,
            command: a.command.clone(),
            set_buildpacks: self.buildpacks.is_some(),
            buildpacks: self.buildpacks.clone().unwrap_or_default(),
            stack: a.stack.clone(),
            ..Default::default()
        };
        // Nothing given: no update (and no audit event).
        let empty = pb::UpdateAppRequest { app: req.app.clone(), ..Default::default() };
        (req != empty).then_some(req)
    }

    fn create(&self, a: &PushArgs, space: &str, name: &str) -> pb::CreateAppRequest {
        pb::CreateAppRequest {
            space: space.to_string(),
            name: name.to_string(),
            instances: a.instances.unwrap_or(1),
            memory_mb: self.memory_mb.unwrap_or(0),
            disk_mb: self.disk_mb.unwrap_or(0),
            health_check_type: self.health_check_type.clone().unwrap_or_default(),
            health_check_endpoint: self.endpoint.clone().unwrap_or_default(),
            health_check_timeout: a.timeout.unwrap_or(0),
            command: a.command.clone().unwrap_or_default(),
            buildpacks: self.buildpacks.clone().unwrap_or_default(),
            stack: a.stack.clone().unwrap_or_default(),
            hostname: a.hostname.clone().unwrap_or_default(),
            no_route: a.no_route,
            ..Default::default()
        }
    }
}

/// Zips a directory to a temp file off the async thread; a zip is used as is.
async fn package(source: &Source) -> Result<(PathBuf, Option<TempFile>), Fail> {
    match source {
        Source::Zip(p) => Ok((p.clone(), None)),
        Source::Dir(dir) => {
            println!("Packaging files to upload...");
            let dir = dir.clone();
            let (tmp, packed) = tokio::task::spawn_blocking(move || {
                let (tmp, f) = TempFile::create("cellctl-push")?;
                package::zip_dir(&dir, f).map(|p| (tmp, p))
            })
            .await
            .map_err(|e| Fail::Failed(format!("packaging: {e}")))?
            .map_err(Fail::Usage)?;
            for s in &packed.skipped {
                eprintln!("warning: not uploading {s}");
            }
            if packed.files == 0 {
                return Err(Fail::Usage(format!(
                    "push: {} has no files to upload (after .cfignore)",
                    source_path(source).display()
                )));
            }
            Ok((tmp.path.clone(), Some(tmp)))
        }
    }
}

fn source_path(s: &Source) -> &std::path::Path {
    match s {
        Source::Dir(p) | Source::Zip(p) => p,
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = if std::io::stderr().is_terminal() { ProgressBar::new(len) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// The UploadPackage stream: the app first, then the file in 64 KiB chunks,
/// read on a blocking thread as the server takes them.
fn upload_stream(file: PathBuf, app: pb::AppRef) -> Result<ReceiverStream<pb::UploadAppPackageRequest>, Fail> {
    use pb::upload_app_package_request::Part;
    let mut f = std::fs::File::open(&file).map_err(|e| Fail::Usage(format!("cannot read {}: {e}", file.display())))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress(len, "Uploading files");
    let (tx, rx) = mpsc::channel(16);
    tokio::task::spawn_blocking(move || {
        // The size up front lets the server refuse an oversized package at once.
        if tx.blocking_send(pb::UploadAppPackageRequest { part: Some(Part::App(app)), size: len }).is_err() {
            return;
        }
        loop {
            let mut buf = vec![0u8; CHUNK];
            match f.read(&mut buf) {
                // A read error ends the stream short; the server refuses the truncated zip.
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    bar.inc(n as u64);
                    if tx.blocking_send(pb::UploadAppPackageRequest { part: Some(Part::Data(buf)), size: 0 }).is_err() {
                        break;
                    }
                }
            }
        }
        bar.finish_and_clear();
    });
    Ok(ReceiverStream::new(rx))
}

pub async fn push(ctx: &Ctx, a: PushArgs) -> Result<(), Fail> {
    let plan = PushPlan::check(&a)?;
    let source = package::inspect(&a.path).map_err(Fail::Usage)?;
    let name = match &a.name {
        Some(n) => n.trim().to_string(),
        None => package::default_name(&source).ok_or_else(|| {
            Fail::Usage(format!("push: cannot make an app name from {}; pass -n NAME", a.path.display()))
        })?,
    };
    println!("Pushing app {name} to space {}...", ctx.space);
    let (file, _tmp) = package(&source).await?;
    let mut c = ctx.connect().await?;
    let app_ref = ctx.app_ref(&name);
    let mut created = false;
    let app = match c.get_app(app_ref.clone()).await {
        Ok(d) => {
            let existing = d.into_inner().app.unwrap_or_default();
            if a.hostname.is_some() || a.no_route {
                eprintln!(
                    "warning: --hostname and --no-route only apply when an app is created; {name} keeps its routes"
                );
            }
            if existing.state == "STARTED" {
                println!("Stopping app {name}...");
                c.stop_app(app_ref.clone()).await.map_err(|s| ctx.fail(s))?;
            }
            match plan.update(&a, app_ref.clone()) {
                Some(req) => {
                    println!("Updating app {name}...");
                    c.update_app(req).await.map_err(|s| ctx.fail(s))?.into_inner()
                }
                None => existing,
            }
        }
        Err(s) if s.code() == tonic::Code::NotFound => {
            println!("Creating app {name}...");
            created = true;
            c.create_app(plan.create(&a, &ctx.space, &name)).await.map_err(|s| ctx.fail(s))?.into_inner()
        }
        Err(s) => return Err(ctx.fail(s)),
    };
    println!("Uploading files...");
    let uploaded = match upload_stream(file, app_ref.clone()) {
        Ok(stream) => c.upload_package(stream).await.map(|_| ()).map_err(|s| ctx.fail(s)),
        Err(e) => Err(e),
    };
    if let Err(e) = uploaded {
        // A push that created the app and could not give it files leaves nothing behind.
        if created {
            let _ = c.delete_app(app_ref.clone()).await;
        }
        return Err(e);
    }
    if a.no_start {
        println!("OK\n\nApp {name} was not started (--no-start): use 'cellctl start {name}'");
        return Ok(());
    }
    stage(ctx, &mut c, &name).await?;
    println!("\nStarting app {name}...");
    c.start_app(app_ref).await.map_err(|s| ctx.fail(s))?;
    wait_started(ctx, &mut c, &name, app.health_check_timeout).await
}

/// Stages the app's latest package, printing the staging log as it comes.
async fn stage(ctx: &Ctx, c: &mut Client, name: &str) -> Result<(), Fail> {
    use pb::staging_event::Event;
    println!("\nStaging app and tracing logs...");
    let req = pb::StageAppRequest { app: Some(ctx.app_ref(name)) };
    let mut events = c.stage_app(req).await.map_err(|s| ctx.fail(s))?.into_inner();
    while let Some(ev) = events.message().await.map_err(|s| ctx.fail(s))? {
        match ev.event {
            Some(Event::Log(l)) => println!("{}", l.message.trim_end_matches(['\r', '\n'])),
            Some(Event::Result(_)) => return Ok(()),
            Some(Event::Failure(f)) => {
                return Err(Fail::Failed(format!("staging failed: {} - {}", f.reason, f.message)));
            }
            Some(Event::Started(_)) | None => {}
        }
    }
    Err(Fail::Failed(format!(
        "the staging stream ended without a result: see 'cellctl app {name}' and 'cellctl logs {name} --recent'"
    )))
}

/// How a start is going, from the instances the server reports.
#[derive(Debug, PartialEq, Eq)]
pub enum StartState {
    Running,
    Crashed,
    Waiting,
}

pub fn start_state(d: &pb::AppDetail) -> StartState {
    let want = d.app.as_ref().map_or(0, |a| a.instances);
    // Instances beyond the desired count are on their way out.
    let current: Vec<_> = d.instances.iter().filter(|i| i.index < want).collect();
    if current.iter().any(|i| i.state == "crashed") {
        StartState::Crashed
    } else if current.iter().filter(|i| i.state == "running").count() >= want as usize {
        StartState::Running
    } else {
        StartState::Waiting
    }
}

/// Polls the app until all its instances run, one crashes, or the health
/// check timeout (plus time to be placed) passes; then shows it like `cf app`.
async fn wait_started(ctx: &Ctx, c: &mut Client, name: &str, health_timeout: u32) -> Result<(), Fail> {
    println!("Waiting for app {name} to start...\n");
    let timeout = Duration::from_secs(u64::from(if health_timeout == 0 { 60 } else { health_timeout }));
    let deadline = Instant::now() + timeout + START_GRACE;
    loop {
        let d = c.get_app(ctx.app_ref(name)).await.map_err(|s| ctx.fail(s))?.into_inner();
        let state = start_state(&d);
        if state != StartState::Waiting || Instant::now() >= deadline {
            print!("{}", render::app_detail(&d, ctx.style));
            let tip = format!("\nTIP: use 'cellctl logs {name} --recent' for more information");
            return match state {
                StartState::Running => Ok(()),
                StartState::Crashed => Err(Fail::Failed(format!("Start unsuccessful{tip}"))),
                StartState::Waiting => Err(Fail::Failed(format!(
                    "Start unsuccessful: not every instance was running after {}s{tip}",
                    (timeout + START_GRACE).as_secs()
                ))),
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn get_app(ctx: &Ctx, c: &mut Client, name: &str) -> Result<pb::AppDetail, Fail> {
    c.get_app(ctx.app_ref(name)).await.map(tonic::Response::into_inner).map_err(|s| ctx.fail(s))
}

async fn apps(ctx: &Ctx, json: bool, all_spaces: bool) -> Result<(), Fail> {
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

async fn app(ctx: &Ctx, name: &str, json: bool, guid: bool) -> Result<(), Fail> {
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

async fn scale(ctx: &Ctx, a: ScaleArgs) -> Result<(), Fail> {
    let memory_mb = size("memory", &a.memory)?;
    let disk_mb = size("disk", &a.disk)?;
    let mut c = ctx.connect().await?;
    if a.instances.is_none() && memory_mb.is_none() && disk_mb.is_none() {
        println!("Showing current scale of app {} in space {}...\n", a.name, ctx.space);
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

async fn start(ctx: &Ctx, name: &str) -> Result<(), Fail> {
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

async fn create_app(ctx: &Ctx, name: &str, no_route: bool, hostname: Option<String>) -> Result<(), Fail> {
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

async fn stop(ctx: &Ctx, name: &str) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    println!("Stopping app {name} in space {}...", ctx.space);
    c.stop_app(ctx.app_ref(name)).await.map_err(|s| ctx.fail(s))?;
    println!("OK");
    Ok(())
}

async fn restart(ctx: &Ctx, name: &str) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    println!("Restarting app {name} in space {}...", ctx.space);
    let a = c.restart_app(ctx.app_ref(name)).await.map_err(|s| ctx.fail(s))?.into_inner();
    wait_started(ctx, &mut c, name, a.health_check_timeout).await
}

async fn restart_instance(ctx: &Ctx, name: &str, index: u32) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    println!("Restarting instance {index} of app {name} in space {}...", ctx.space);
    let req = pb::RestartAppInstanceRequest { app: Some(ctx.app_ref(name)), index };
    c.restart_app_instance(req).await.map_err(|s| ctx.fail(s))?;
    println!("OK");
    Ok(())
}

/// Asks on the terminal; refuses (with a hint) when nobody can answer.
fn confirm(what: &str, force: bool) -> Result<bool, Fail> {
    if force {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Fail::Usage(format!(
            "not deleting {what} without confirmation (stdin is not a terminal): pass -f"
        )));
    }
    print!("Really delete the {what}? [yN]: ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| Fail::Usage(format!("reading the answer: {e}")))?;
    let yes = matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes");
    if !yes {
        println!("Delete cancelled");
    }
    Ok(yes)
}

async fn delete(ctx: &Ctx, name: &str, force: bool) -> Result<(), Fail> {
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

async fn logs(ctx: &Ctx, name: &str, recent: bool) -> Result<(), Fail> {
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

async fn events(ctx: &Ctx, name: &str, json: bool) -> Result<(), Fail> {
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

async fn env(ctx: &Ctx, name: &str) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let e = c.get_env(ctx.app_ref(name)).await.map_err(|s| ctx.fail(s))?.into_inner();
    println!("Getting env variables for app {name} in space {}...", ctx.space);
    print!("{}", render::env_text(&e, ctx.style));
    Ok(())
}

fn env_tip(name: &str) -> String {
    format!("TIP: Use 'cellctl restart {name}' to ensure your env variable changes take effect.")
}

async fn set_env(ctx: &Ctx, name: &str, var: &str, value: &str) -> Result<(), Fail> {
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

async fn unset_env(ctx: &Ctx, name: &str, var: &str) -> Result<(), Fail> {
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

async fn cups(ctx: &Ctx, a: CupsArgs) -> Result<(), Fail> {
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

async fn delete_service(ctx: &Ctx, name: &str, force: bool) -> Result<(), Fail> {
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

async fn bind(ctx: &Ctx, app: &str, service: &str, bind: bool) -> Result<(), Fail> {
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

async fn services(ctx: &Ctx, json: bool) -> Result<(), Fail> {
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

async fn run_task(ctx: &Ctx, a: RunTaskArgs) -> Result<(), Fail> {
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

async fn tasks(ctx: &Ctx, name: &str, json: bool) -> Result<(), Fail> {
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

async fn cells(ctx: &Ctx, json: bool) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let r = c.list_cells(pb::ListCellsRequest {}).await.map_err(|s| ctx.fail(s))?.into_inner();
    if json {
        println!("{}", render::to_json_text(&render::cells_json(&r)));
    } else {
        print!("{}", render::cells_table(&r, ctx.style));
    }
    Ok(())
}

async fn set_ssh(ctx: &Ctx, name: &str, enable: bool) -> Result<(), Fail> {
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

async fn ssh_enabled(ctx: &Ctx, name: &str) -> Result<(), Fail> {
    let a = get_app(ctx, &mut ctx.connect().await?, name).await?.app.unwrap_or_default();
    let word = if a.enable_ssh { "enabled" } else { "disabled" };
    println!("ssh support is {word} for app '{name}'.");
    Ok(())
}

#[cfg(test)]
mod tests {
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
    fn push_flags_parse() {
        let AppsCmd::Push(p) = parse(&[
            "push",
            "./app",
            "-n",
            "hello",
            "-b",
            "a_bp",
            "-b",
            "b_bp",
            "-i",
            "3",
            "-m",
            "512M",
            "-k",
            "2G",
            "-u",
            "http",
            "--endpoint",
            "/health",
            "-t",
            "120",
            "-c",
            "./run",
            "-s",
            "tiny",
            "--no-start",
            "--hostname",
            "hi",
        ])
        .unwrap() else {
            panic!("not a push")
        };
        assert_eq!(p.path, PathBuf::from("./app"));
        assert_eq!(p.name.as_deref(), Some("hello"));
        assert_eq!(p.buildpacks, ["a_bp", "b_bp"]);
        assert_eq!((p.instances, p.timeout), (Some(3), Some(120)));
        assert!(p.no_start && !p.no_route);
        let plan = PushPlan::check(&p).unwrap();
        assert_eq!((plan.memory_mb, plan.disk_mb), (Some(512), Some(2048)));
        let create = plan.create(&p, "dev", "hello");
        assert_eq!((create.instances, create.memory_mb, create.hostname.as_str()), (3, 512, "hi"));
        assert_eq!(create.health_check_endpoint, "/health");
        assert!(parse(&["push", "x", "--no-route", "--hostname", "h"]).is_err());
        assert!(parse(&["push"]).is_err());
    }

    #[test]
    fn push_refuses_bad_flags_with_one_line() {
        let check = |args: &[&str]| match parse(args).unwrap() {
            AppsCmd::Push(p) => PushPlan::check(&p),
            _ => panic!("not a push"),
        };
        assert_eq!(
            check(&["push", "x", "-m", "256X"]),
            Err(Fail::Usage("memory 256X is not valid: use a number with M or G, e.g. 256M or 1G".into()))
        );
        assert_eq!(
            check(&["push", "x", "-k", "1T"]),
            Err(Fail::Usage("disk 1T is not valid: use a number with M or G, e.g. 256M or 1G".into()))
        );
        assert_eq!(
            check(&["push", "x", "-u", "tcp"]),
            Err(Fail::Usage("health check type tcp is not valid: use port, http or process".into()))
        );
        assert!(check(&["push", "x", "-u", "port", "--endpoint", "/h"]).is_err());
        assert!(check(&["push", "x", "--endpoint", "health"]).is_err());
        assert!(check(&["push", "x", "-n", " "]).is_err());
        assert_eq!(check(&["push", "x", "-i", "0"]).map(|p| p.memory_mb), Ok(None));
        assert_eq!(check(&["push", "x", "-b", "default"]).map(|p| p.buildpacks), Ok(Some(vec![])));
    }

    #[test]
    fn push_updates_only_what_was_given() {
        let app = pb::AppRef { space: "dev".into(), name: "a".into() };
        let p = PushArgs { path: "x".into(), ..Default::default() };
        assert_eq!(PushPlan::check(&p).unwrap().update(&p, app.clone()), None);
        let p = PushArgs { path: "x".into(), instances: Some(0), memory: Some("1G".into()), ..Default::default() };
        let u = PushPlan::check(&p).unwrap().update(&p, app).unwrap();
        assert_eq!((u.instances, u.memory_mb, u.disk_mb, u.set_buildpacks), (Some(0), Some(1024), None, false));
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

    #[test]
    fn start_waits_for_every_desired_instance() {
        let inst = |index, state: &str| pb::AppInstance { index, state: state.into(), ..Default::default() };
        let detail = |want, list: Vec<pb::AppInstance>| pb::AppDetail {
            app: Some(pb::App { instances: want, ..Default::default() }),
            instances: list,
        };
        assert_eq!(start_state(&detail(2, vec![inst(0, "running"), inst(1, "starting")])), StartState::Waiting);
        assert_eq!(start_state(&detail(2, vec![inst(0, "running")])), StartState::Waiting);
        assert_eq!(start_state(&detail(2, vec![inst(0, "running"), inst(1, "running")])), StartState::Running);
        assert_eq!(start_state(&detail(2, vec![inst(0, "running"), inst(1, "crashed")])), StartState::Crashed);
        // An instance being scaled away does not count either way.
        assert_eq!(start_state(&detail(1, vec![inst(0, "running"), inst(1, "crashed")])), StartState::Running);
        assert_eq!(start_state(&detail(0, vec![])), StartState::Running);
    }

    #[test]
    fn statuses_read_as_one_line() {
        let api = "127.0.0.1:1801";
        assert_eq!(status_message(api, &tonic::Status::not_found("app 'x' not found")), "app 'x' not found");
        assert_eq!(
            status_message(api, &tonic::Status::unavailable("")),
            "cannot reach celld at 127.0.0.1:1801: is `celld --local` running? (set --api or `cellctl target`)"
        );
        let mut transport = tonic::Status::unavailable("tcp connect error");
        transport.set_source(std::sync::Arc::new(std::io::Error::other("connection refused")));
        assert!(status_message(api, &transport).starts_with("cannot reach celld"));
        assert_eq!(status_message(api, &tonic::Status::unavailable("no cell has room")), "no cell has room");
        assert!(status_message(api, &tonic::Status::unimplemented("")).contains("does not serve the Apps API"));
        assert_eq!(
            status_message(api, &tonic::Status::resource_exhausted("package is 2 GB; the cell takes at most 1024 MB")),
            "package is 2 GB; the cell takes at most 1024 MB"
        );
        assert_eq!(status_message(api, &tonic::Status::internal("disk full")), "celld failed: disk full");
    }

    /// An in-process `Apps` server that records what `push` asks of it.
    mod mock {
        use std::pin::Pin;
        use std::sync::{Arc, Mutex};

        use tokio_stream::{Stream, StreamExt};
        use tonic::{Request, Response, Status, Streaming};

        use crate::grpc::pb;

        type Events = Pin<Box<dyn Stream<Item = Result<pb::StagingEvent, Status>> + Send>>;
        type Logs = Pin<Box<dyn Stream<Item = Result<pb::LogEnvelope, Status>> + Send>>;

        #[derive(Default)]
        pub struct State {
            pub calls: Vec<String>,
            pub app: Option<pb::App>,
            pub declared_size: u64,
            pub uploaded: Vec<u8>,
            pub fail_staging: bool,
            pub crash: bool,
        }

        #[derive(Clone, Default)]
        pub struct Mock(pub Arc<Mutex<State>>);

        impl Mock {
            fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
                f(&mut self.0.lock().unwrap())
            }
            fn call(&self, c: String) {
                self.with(|s| s.calls.push(c));
            }
            fn set_state(&self, state: &str) -> Result<Response<pb::App>, Status> {
                self.with(|s| {
                    let app = s.app.as_mut().ok_or_else(|| Status::not_found("no app"))?;
                    app.state = state.to_string();
                    Ok(Response::new(app.clone()))
                })
            }
        }

        fn nope<T>() -> Result<T, Status> {
            Err(Status::unimplemented("not in the mock"))
        }

        #[tonic::async_trait]
        impl pb::apps_server::Apps for Mock {
            type StageAppStream = Events;
            type LogsStream = Logs;

            async fn create_app(&self, r: Request<pb::CreateAppRequest>) -> Result<Response<pb::App>, Status> {
                let r = r.into_inner();
                self.call(format!("create {} i={} m={} host={}", r.name, r.instances, r.memory_mb, r.hostname));
                let app = pb::App {
                    name: r.name,
                    space: r.space,
                    state: "STOPPED".into(),
                    instances: r.instances,
                    memory_mb: r.memory_mb,
                    health_check_timeout: 1,
                    ..Default::default()
                };
                self.with(|s| s.app = Some(app.clone()));
                Ok(Response::new(app))
            }
            async fn update_app(&self, r: Request<pb::UpdateAppRequest>) -> Result<Response<pb::App>, Status> {
                let r = r.into_inner();
                self.call(format!("update i={:?} m={:?} bp={}", r.instances, r.memory_mb, r.set_buildpacks));
                self.with(|s| {
                    let app = s.app.as_mut().ok_or_else(|| Status::not_found("no app"))?;
                    app.instances = r.instances.unwrap_or(app.instances);
                    Ok(Response::new(app.clone()))
                })
            }
            async fn get_app(&self, r: Request<pb::AppRef>) -> Result<Response<pb::AppDetail>, Status> {
                self.call("get".into());
                let name = r.into_inner().name;
                self.with(|s| {
                    let app = s.app.clone().ok_or_else(|| Status::not_found(format!("app '{name}' not found")))?;
                    let state = if s.crash { "crashed" } else { "running" };
                    let instances = if app.state == "STARTED" {
                        (0..app.instances)
                            .map(|index| pb::AppInstance { index, state: state.into(), ..Default::default() })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    Ok(Response::new(pb::AppDetail { app: Some(app), instances }))
                })
            }
            async fn upload_package(
                &self,
                r: Request<Streaming<pb::UploadAppPackageRequest>>,
            ) -> Result<Response<pb::AppPackage>, Status> {
                use pb::upload_app_package_request::Part;
                let mut stream = r.into_inner();
                let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty stream"))?;
                let Some(Part::App(app)) = first.part else { return Err(Status::invalid_argument("app first")) };
                self.call(format!("upload {}/{}", app.space, app.name));
                self.with(|s| s.declared_size = first.size);
                while let Some(m) = stream.message().await? {
                    let Some(Part::Data(d)) = m.part else { return Err(Status::invalid_argument("data after")) };
                    assert!(d.len() <= 64 * 1024);
                    self.with(|s| s.uploaded.extend_from_slice(&d));
                }
                Ok(Response::new(pb::AppPackage::default()))
            }
            async fn stage_app(&self, _: Request<pb::StageAppRequest>) -> Result<Response<Events>, Status> {
                use pb::staging_event::Event;
                self.call("stage".into());
                let log = pb::LogEnvelope { message: "Downloading app package...".into(), ..Default::default() };
                let end = if self.with(|s| s.fail_staging) {
                    Event::Failure(pb::StagingFailure {
                        reason: "NoAppDetectedError".into(),
                        message: "None of the buildpacks detected a compatible application".into(),
                        exit_code: 222,
                        ..Default::default()
                    })
                } else {
                    Event::Result(pb::StagingResult::default())
                };
                let events = [Event::Started(pb::StagingStarted::default()), Event::Log(log), end]
                    .map(|e| Ok(pb::StagingEvent { event: Some(e) }));
                Ok(Response::new(Box::pin(tokio_stream::iter(events)) as Events))
            }
            async fn start_app(&self, _: Request<pb::AppRef>) -> Result<Response<pb::App>, Status> {
                self.call("start".into());
                self.set_state("STARTED")
            }
            async fn stop_app(&self, _: Request<pb::AppRef>) -> Result<Response<pb::App>, Status> {
                self.call("stop".into());
                self.set_state("STOPPED")
            }
            async fn list_apps(
                &self,
                _: Request<pb::ListAppsRequest>,
            ) -> Result<Response<pb::ListAppsResponse>, Status> {
                nope()
            }
            async fn delete_app(&self, _: Request<pb::AppRef>) -> Result<Response<pb::DeleteAppResponse>, Status> {
                Err(Status::not_found("app 'x' not found"))
            }
            async fn restart_app(&self, _: Request<pb::AppRef>) -> Result<Response<pb::App>, Status> {
                nope()
            }
            async fn restart_app_instance(
                &self,
                _: Request<pb::RestartAppInstanceRequest>,
            ) -> Result<Response<pb::RestartAppInstanceResponse>, Status> {
                nope()
            }
            async fn get_env(&self, _: Request<pb::AppRef>) -> Result<Response<pb::AppEnv>, Status> {
                nope()
            }
            async fn events(&self, _: Request<pb::AppRef>) -> Result<Response<pb::EventsResponse>, Status> {
                nope()
            }
            async fn logs(&self, _: Request<pb::LogsRequest>) -> Result<Response<Logs>, Status> {
                let lines = (0..3).map(|i| Ok(pb::LogEnvelope { message: format!("line {i}"), ..Default::default() }));
                Ok(Response::new(Box::pin(tokio_stream::iter(lines).throttle(std::time::Duration::ZERO)) as Logs))
            }
            async fn create_user_provided_service(
                &self,
                _: Request<pb::CreateUserProvidedServiceRequest>,
            ) -> Result<Response<pb::ServiceInstance>, Status> {
                nope()
            }
            async fn delete_service(
                &self,
                _: Request<pb::ServiceRef>,
            ) -> Result<Response<pb::DeleteServiceResponse>, Status> {
                nope()
            }
            async fn list_services(
                &self,
                _: Request<pb::ListServicesRequest>,
            ) -> Result<Response<pb::ListServicesResponse>, Status> {
                nope()
            }
            async fn bind_service(
                &self,
                _: Request<pb::BindServiceRequest>,
            ) -> Result<Response<pb::ServiceBinding>, Status> {
                Err(Status::already_exists("bound"))
            }
            async fn unbind_service(
                &self,
                _: Request<pb::BindServiceRequest>,
            ) -> Result<Response<pb::UnbindServiceResponse>, Status> {
                nope()
            }
            async fn run_task(&self, _: Request<pb::RunTaskRequest>) -> Result<Response<pb::AppTask>, Status> {
                nope()
            }
            async fn list_tasks(&self, _: Request<pb::AppRef>) -> Result<Response<pb::ListTasksResponse>, Status> {
                nope()
            }
            async fn list_cells(
                &self,
                _: Request<pb::ListCellsRequest>,
            ) -> Result<Response<pb::ListCellsResponse>, Status> {
                nope()
            }
            async fn get_ssh_info(&self, _: Request<pb::GetSshInfoRequest>) -> Result<Response<pb::SshInfo>, Status> {
                nope()
            }
            async fn get_ssh_code(&self, _: Request<pb::GetSshCodeRequest>) -> Result<Response<pb::SshCode>, Status> {
                nope()
            }
            async fn set_space_ssh(
                &self,
                _: Request<pb::SetSpaceSshRequest>,
            ) -> Result<Response<pb::SpaceSsh>, Status> {
                nope()
            }
            async fn get_space_ssh(&self, _: Request<pb::SpaceRef>) -> Result<Response<pb::SpaceSsh>, Status> {
                nope()
            }
        }

        /// Serves the mock on a free local port; returns its address.
        pub async fn serve(m: Mock) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(pb::apps_server::AppsServer::new(m))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            addr
        }
    }

    fn app_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cellctl-push-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Incompressible, so the zip spans several 64 KiB chunks.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(dir.join("data.bin"), noise).unwrap();
        std::fs::write(dir.join("index.html"), "<h1>hi</h1>").unwrap();
        dir
    }

    async fn ctx_for(m: &mock::Mock) -> Ctx {
        Ctx { api: mock::serve(m.clone()).await, space: "dev".into(), style: Style::default() }
    }

    #[tokio::test]
    async fn push_creates_uploads_stages_starts_and_waits() {
        let m = mock::Mock::default();
        let ctx = ctx_for(&m).await;
        let dir = app_dir("new");
        let args = PushArgs { path: dir.clone(), memory: Some("128M".into()), ..Default::default() };
        push(&ctx, args).await.unwrap();
        let s = m.0.lock().unwrap();
        let name = package::sanitize_name(&dir.file_name().unwrap().to_string_lossy());
        assert_eq!(
            s.calls,
            [
                "get".to_string(),
                format!("create {name} i=1 m=128 host="),
                format!("upload dev/{name}"),
                "stage".into(),
                "start".into(),
                "get".into(),
            ]
        );
        // The whole zip arrived, in chunks, with its size declared up front.
        assert_eq!(s.declared_size, s.uploaded.len() as u64);
        assert!(s.uploaded.len() > 3 * CHUNK);
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(s.uploaded.clone())).unwrap();
        let mut body = String::new();
        z.by_name("index.html").unwrap().read_to_string(&mut body).unwrap();
        assert_eq!(body, "<h1>hi</h1>");
        assert_eq!(z.by_name("data.bin").unwrap().size(), 200_000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn push_to_a_started_app_stops_it_and_updates_only_the_given_flags() {
        let m = mock::Mock::default();
        m.0.lock().unwrap().app =
            Some(pb::App { name: "web".into(), state: "STARTED".into(), instances: 1, ..Default::default() });
        let ctx = ctx_for(&m).await;
        let dir = app_dir("update");
        push(&ctx, PushArgs { path: dir.clone(), name: Some("web".into()), instances: Some(2), ..Default::default() })
            .await
            .unwrap();
        let calls = m.0.lock().unwrap().calls.clone();
        assert_eq!(
            calls,
            ["get", "stop", "update i=Some(2) m=None bp=false", "upload dev/web", "stage", "start", "get"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn push_reports_staging_failures_and_crashes() {
        let m = mock::Mock::default();
        m.0.lock().unwrap().fail_staging = true;
        let ctx = ctx_for(&m).await;
        let dir = app_dir("fail");
        let r = push(&ctx, PushArgs { path: dir.clone(), name: Some("x".into()), ..Default::default() }).await;
        assert_eq!(
            r,
            Err(Fail::Failed(
                "staging failed: NoAppDetectedError - None of the buildpacks detected a compatible application".into()
            ))
        );
        assert!(!m.0.lock().unwrap().calls.contains(&"start".to_string()));

        let m = mock::Mock::default();
        m.0.lock().unwrap().crash = true;
        let ctx = ctx_for(&m).await;
        let r = push(&ctx, PushArgs { path: dir.clone(), name: Some("x".into()), ..Default::default() }).await;
        let Err(Fail::Failed(msg)) = r else { panic!("a crash passed: {r:?}") };
        assert!(msg.starts_with("Start unsuccessful\n"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn bad_input_fails_before_any_call() {
        let m = mock::Mock::default();
        let ctx = ctx_for(&m).await;
        let missing = PushArgs { path: "/nonexistent/app".into(), ..Default::default() };
        assert_eq!(
            push(&ctx, missing).await,
            Err(Fail::Usage("push: /nonexistent/app does not exist; pass the app's directory or a .zip".into()))
        );
        let dir = app_dir("bad");
        let bad = PushArgs { path: dir.clone(), memory: Some("256X".into()), ..Default::default() };
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
