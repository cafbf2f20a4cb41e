//! cellctl: the human CLI of celld: the cf-like app commands (over the `Apps`
//! gRPC service), staging and buildpacks (`Stager`), and `cellctl garden …`
//! (Garden's HTTP API).

use std::collections::BTreeMap;
use std::io::IsTerminal;

use crate::apps::{self, AppsCmd};
use crate::render::Style;
use crate::target;
use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use garden_api::client::{Address, Client, ProcessIo};
use garden_api::types::{ContainerSpec, NetOutRule, ProcessSpec, TtySpec, WindowSize};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "cellctl",
    version,
    about = "Push and run apps on a celld, the way the cf CLI does; also its staging and Garden APIs",
    after_help = "The app commands talk to `celld --local` at --api (see `cellctl target`); \
                  `cellctl garden --help` lists the container commands."
)]
struct Cli {
    /// Garden server for `cellctl garden`: a unix socket path or HOST:PORT.
    #[arg(long, env = "CELLD_GARDEN", default_value = "/run/celld/garden.sock")]
    garden: String,
    /// Mutual TLS to a --garden HOST:PORT: this client's certificate (PEM).
    #[arg(long, env = "CELLD_GARDEN_TLS_CERT", value_name = "PEM")]
    garden_tls_cert: Option<std::path::PathBuf>,
    /// Mutual TLS to --garden: the client certificate's key (PEM).
    #[arg(long, env = "CELLD_GARDEN_TLS_KEY", value_name = "PEM")]
    garden_tls_key: Option<std::path::PathBuf>,
    /// Mutual TLS to --garden: the CA that signed the server's certificate (PEM).
    #[arg(long, env = "CELLD_GARDEN_TLS_CA", value_name = "PEM")]
    garden_tls_ca: Option<std::path::PathBuf>,
    /// Mutual TLS to --api: this client's certificate (PEM).
    #[arg(long, global = true, env = "CELLD_TLS_CERT", value_name = "PEM", help_heading = "Global options")]
    tls_cert: Option<std::path::PathBuf>,
    /// Mutual TLS to --api: the client certificate's key (PEM).
    #[arg(long, global = true, env = "CELLD_TLS_KEY", value_name = "PEM", help_heading = "Global options")]
    tls_key: Option<std::path::PathBuf>,
    /// Mutual TLS to --api: the CA that signed the server's certificate (PEM).
    #[arg(long, global = true, env = "CELLD_TLS_CA", value_name = "PEM", help_heading = "Global options")]
    tls_ca: Option<std::path::PathBuf>,
    /// celld's gRPC API, HOST:PORT [default: the saved target, else 127.0.0.1:1801].
    #[arg(long, global = true, env = "CELLD_API", value_name = "HOST:PORT", help_heading = "Global options")]
    api: Option<String>,
    /// Space of the apps and services [default: the saved target, else dev].
    #[arg(long, global = true, env = "CELLCTL_SPACE", value_name = "NAME", help_heading = "Global options")]
    space: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Apps(AppsCmd),
    /// Lists the admin buildpacks in detection order.
    Buildpacks {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Adds a buildpack from a zip, a tgz or a directory (an existing name fails: see update-buildpack).
    CreateBuildpack {
        /// The buildpack's name.
        name: String,
        /// A zip, a tgz or a directory.
        path: std::path::PathBuf,
        /// 1-based place in the detection order (the others shift down; past the end: last).
        position: u32,
        /// Only for this stack (default: any).
        #[arg(long, default_value = "")]
        stack: String,
    },
    /// Moves a buildpack in the detection order, or enables or disables it.
    UpdateBuildpack {
        /// The buildpack's name.
        name: String,
        /// New 1-based place in the detection order (the others shift; past the end: last).
        #[arg(short = 'i', long = "position", value_name = "POSITION")]
        position: Option<u32>,
        /// Use it for staging again.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Leave it out of staging.
        #[arg(long)]
        disable: bool,
    },
    /// Deletes a buildpack.
    DeleteBuildpack {
        /// The buildpack's name.
        name: String,
    },
    /// Stages an app directory (or a zip/tar/tgz of it) into a droplet, without an app.
    Stage {
        /// The app's directory, or a zip/tar/tgz of it.
        dir: std::path::PathBuf,
        /// Keys the build cache (default: derived from the directory's absolute path).
        #[arg(long = "app")]
        app_guid: Option<String>,
        /// Buildpack to use (repeat for multi-buildpack; skips detection).
        #[arg(short = 'b', long = "buildpack")]
        buildpacks: Vec<String>,
        /// Stack to stage on (default: the cell's).
        #[arg(short = 's', long, default_value = "")]
        stack: String,
        /// Staging environment variable (repeatable).
        #[arg(short = 'e', long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Staging memory limit in MB (0: the cell's default).
        #[arg(short = 'm', long, default_value_t = 0)]
        memory_mb: u32,
        /// Staging disk limit in MB (0: the cell's default).
        #[arg(short = 'k', long, default_value_t = 0)]
        disk_mb: u32,
        /// Seconds before staging fails (0: the cell's default).
        #[arg(short = 't', long, default_value_t = 0)]
        timeout: u32,
    },
    /// Writes a droplet (droplets/GUID) to a file.
    DownloadDroplet {
        /// The droplet's key, e.g. droplets/GUID.
        key: String,
        /// The file to write.
        output: std::path::PathBuf,
    },
    /// Shows the target (API address and space), or saves it with --api and/or -s.
    Target {
        /// The space to save (same as --space).
        #[arg(short = 's', value_name = "SPACE")]
        target_space: Option<String>,
    },
    /// Prints a shell completion script, e.g. `source <(cellctl completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Containers on the cell through the Garden API (--garden).
    Garden {
        #[command(subcommand)]
        cmd: GardenCmd,
    },
}

#[derive(Subcommand)]
enum GardenCmd {
    /// Checks that the server answers.
    Ping,
    /// Removes the images and layers no container uses from the image store.
    Gc,
    /// Lists container handles, optionally filtered by properties.
    Containers {
        /// Only containers with this property (repeatable).
        #[arg(long = "property", value_name = "K=V")]
        properties: Vec<String>,
    },
    /// Creates a container and prints its handle.
    Create {
        /// The container's handle (default: generated).
        #[arg(long)]
        handle: Option<String>,
        /// `preloaded:NAME` or an absolute directory.
        #[arg(long)]
        rootfs: Option<String>,
        /// Without a user namespace (container root is host root).
        #[arg(long)]
        privileged: bool,
        /// Memory limit in bytes.
        #[arg(long)]
        memory: Option<u64>,
        /// Most processes (pids) in the container.
        #[arg(long)]
        pids: Option<u64>,
        /// Destroy the container after this many idle seconds.
        #[arg(long)]
        grace_time: Option<u64>,
        /// A property (repeatable).
        #[arg(long = "property", value_name = "K=V")]
        properties: Vec<String>,
        /// An environment variable of the container's processes (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
    },
    /// Maps a host port (0: the next free one) to a container port; prints the mapping.
    NetIn {
        /// The container's handle.
        handle: String,
        /// Host port (0: the next free one).
        #[arg(long, default_value_t = 0)]
        host_port: u32,
        /// Container port.
        #[arg(long)]
        container_port: u32,
    },
    /// Allows egress: a Garden NetOutRule (or a list of them) as JSON, e.g.
    /// '{"protocol":1,"networks":[{"start":"10.0.0.1","end":"10.0.0.1"}],"ports":[{"start":443,"end":443}]}'.
    NetOut {
        /// The container's handle.
        handle: String,
        /// The rule(s), as JSON.
        rules: String,
    },
    /// Shows a container's info as JSON.
    Info {
        /// The container's handle.
        handle: String,
    },
    /// Shows a container's metrics as JSON.
    Metrics {
        /// The container's handle.
        handle: String,
    },
    /// Runs a command in a container; exits with its status.
    Run {
        /// Run on a pseudo-terminal.
        #[arg(short, long)]
        tty: bool,
        /// User to run as.
        #[arg(long)]
        user: Option<String>,
        /// Working directory.
        #[arg(long)]
        dir: Option<String>,
        /// An environment variable (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// The container's handle.
        handle: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stops a container's processes (TERM, then KILL).
    Stop {
        /// KILL at once.
        #[arg(long)]
        kill: bool,
        /// The container's handle.
        handle: String,
    },
    /// Destroys containers.
    Destroy {
        /// The containers' handles.
        #[arg(required = true)]
        handles: Vec<String>,
    },
    /// Copies a tar from stdin into the container.
    StreamIn {
        /// The container's handle.
        handle: String,
        /// Directory in the container to unpack into.
        destination: String,
        /// User to unpack as.
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Writes a path of the container as a tar to stdout.
    StreamOut {
        /// The container's handle.
        handle: String,
        /// Path in the container.
        source: String,
        /// User to read as.
        #[arg(long, default_value = "")]
        user: String,
    },
}

fn pairs(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).context(format!("expected K=V, got {kv:?}"))
        })
        .collect()
}

/// cellctl's `main` (the binary, `src/bin/cellctl.rs` of the root package, only
/// calls this): parses the command line, runs the command and exits with its code.
pub fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `target` saves only what was typed, not what came from the environment.
    let typed = |id: &str| matches!(matches.value_source(id), Some(ValueSource::CommandLine));
    let typed = Typed { api: typed("api"), space: typed("space") };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cellctl: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(cli, typed)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cellctl: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Which global flags were given on the command line.
#[derive(Clone, Copy)]
struct Typed {
    api: bool,
    space: bool,
}

/// The API address and space: flags (or their environment variables), then
/// the saved target, then the defaults.
fn resolve(api: Option<&str>, space: Option<&str>) -> Result<(String, String), String> {
    let saved = match target::config_path() {
        Some(path) if api.is_none() || space.is_none() => target::load(&path)?,
        _ => target::Target::default(),
    };
    let (api, space) = target::resolve(api, space, &saved);
    // A bad address is a usage error, found before any work is done.
    apps::endpoint(&api)?;
    Ok((api, space))
}

/// `cellctl target`: saves what was typed (if anything), then shows the target.
fn set_target(
    api: Option<String>,
    space: Option<String>,
    local_space: Option<String>,
    typed: Typed,
) -> Result<(), String> {
    let new_api = api.clone().filter(|_| typed.api);
    let new_space = local_space.or_else(|| space.clone().filter(|_| typed.space));
    if new_api.is_some() || new_space.is_some() {
        if let Some(a) = &new_api {
            apps::endpoint(a)?;
        }
        if new_space.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err("the space name is empty".into());
        }
        let path = target::config_path().ok_or("set HOME or CELLCTL_HOME to save a target")?;
        let mut saved = target::load(&path)?;
        saved.api = new_api.or(saved.api);
        saved.space = new_space.clone().or(saved.space);
        target::save(&path, &saved)?;
    }
    let (api, space) = resolve(api.as_deref(), new_space.or(space).as_deref())?;
    print!("{}", target::show(&api, &space));
    Ok(())
}

async fn run(cli: Cli, typed: Typed) -> anyhow::Result<i32> {
    use crate::staging;
    let Cli {
        garden: garden_addr,
        garden_tls_cert,
        garden_tls_key,
        garden_tls_ca,
        api,
        space,
        tls_cert,
        tls_key,
        tls_ca,
        cmd,
    } = cli;
    if let Some(files) =
        celld_transport::tls::TlsFiles::from_flags("--tls", tls_cert.as_ref(), tls_key.as_ref(), tls_ca.as_ref())?
    {
        celld_transport::grpc::set_client_tls(files.load()?);
    }
    let garden_tls = celld_transport::tls::TlsFiles::from_flags(
        "--garden-tls",
        garden_tls_cert.as_ref(),
        garden_tls_key.as_ref(),
        garden_tls_ca.as_ref(),
    )?;
    let usage = |e: String| {
        eprintln!("error: {e}");
        Ok(1)
    };
    let cmd = match cmd {
        Cmd::Garden { cmd } => return garden(&garden_addr, garden_tls, cmd).await,
        Cmd::Completion { shell } => {
            // Into a buffer first: generate() panics when stdout goes away (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "cellctl", &mut script);
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            return Ok(0);
        }
        Cmd::Target { target_space } => {
            return set_target(api, space, target_space, typed).map_or_else(usage, |()| Ok(0));
        }
        cmd => cmd,
    };
    let (api, space) = match resolve(api.as_deref(), space.as_deref()) {
        Ok(target) => target,
        Err(e) => return usage(e),
    };
    let api = api.as_str();
    let staged = match cmd {
        Cmd::Apps(cmd) => {
            let ctx = apps::Ctx { api: api.to_string(), space, style: Style::detect() };
            return Ok(match apps::run(cmd, &ctx).await {
                Ok(()) => 0,
                Err(f) => {
                    f.report();
                    1
                }
            });
        }
        Cmd::Buildpacks { json } => staging::buildpacks(api, json).await,
        Cmd::CreateBuildpack { ref name, ref path, position, ref stack } => {
            staging::create_buildpack(api, name, path, position, stack).await
        }
        Cmd::UpdateBuildpack { ref name, position, enable, disable } => {
            let enabled = match (enable, disable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            staging::update_buildpack(api, name, position, enabled).await
        }
        Cmd::DeleteBuildpack { ref name } => staging::delete_buildpack(api, name).await,
        Cmd::DownloadDroplet { ref key, ref output } => staging::download_droplet(api, key, output).await,
        Cmd::Stage { ref dir, ref app_guid, ref buildpacks, ref stack, ref env, memory_mb, disk_mb, timeout } => {
            let args = staging::StageArgs {
                dir: dir.clone(),
                app_guid: app_guid.clone(),
                buildpacks: buildpacks.clone(),
                stack: stack.clone(),
                env: pairs(env)?.into_iter().collect(),
                memory_mb,
                disk_mb,
                timeout_seconds: timeout,
            };
            staging::stage(api, args).await.map(|r| staging::print_result(&r))
        }
        // Answered above.
        Cmd::Garden { .. } | Cmd::Completion { .. } | Cmd::Target { .. } => Ok(()),
    };
    Ok(match staged {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("FAILED\n{e}");
            e.exit_code()
        }
    })
}

/// `cellctl garden …`: the Garden HTTP API.
async fn garden(garden: &str, tls: Option<celld_transport::tls::TlsFiles>, cmd: GardenCmd) -> anyhow::Result<i32> {
    let Ok(addr) = garden.parse::<Address>();
    let mut c = Client::new(addr);
    if let Some(files) = tls {
        c = c.with_tls(files.load()?.client_config()?);
    }
    match cmd {
        GardenCmd::Ping => c.ping().await?,
        GardenCmd::Gc => {
            let r = c.gc_images().await?;
            println!(
                "removed {} images and {} layers, freed {}; the image store holds {}",
                r.images_removed,
                r.layers_removed,
                celld_base::size::byte_size(r.bytes_freed),
                celld_base::size::byte_size(r.store_bytes)
            );
        }
        GardenCmd::Containers { properties } => {
            for h in c.list(&pairs(&properties)?).await? {
                println!("{h}");
            }
        }
        GardenCmd::Create { handle, rootfs, privileged, memory, pids, grace_time, properties, env } => {
            let mut spec = ContainerSpec {
                handle: handle.unwrap_or_default(),
                privileged,
                properties: pairs(&properties)?,
                env,
                grace_time: grace_time.unwrap_or(0).saturating_mul(1_000_000_000),
                ..Default::default()
            };
            spec.image.uri = rootfs.unwrap_or_default();
            spec.limits.memory_limits.limit_in_bytes = memory.unwrap_or(0);
            spec.limits.pid_limits.max = pids.unwrap_or(0);
            println!("{}", c.create(&spec).await?);
        }
        GardenCmd::NetIn { handle, host_port, container_port } => {
            let m = c.net_in(&handle, host_port, container_port).await?;
            println!("{} -> {}", m.host_port, m.container_port);
        }
        GardenCmd::NetOut { handle, rules } => {
            let rules: Vec<NetOutRule> = match serde_json::from_str::<NetOutRule>(&rules) {
                Ok(one) => vec![one],
                Err(_) => serde_json::from_str(&rules).context("rules: a NetOutRule object or a list of them")?,
            };
            c.bulk_net_out(&handle, &rules).await?;
        }
        GardenCmd::Info { handle } => println!("{}", serde_json::to_string_pretty(&c.info(&handle).await?)?),
        GardenCmd::Metrics { handle } => println!("{}", serde_json::to_string_pretty(&c.metrics(&handle).await?)?),
        GardenCmd::Run { tty, user, dir, env, handle, command } => {
            return run_process(&c, tty, user, dir, env, handle, command).await;
        }
        GardenCmd::Stop { kill, handle } => c.stop(&handle, kill).await?,
        GardenCmd::Destroy { handles } => {
            let mut failed = 0;
            for h in &handles {
                if let Err(e) = c.destroy(h).await {
                    eprintln!("cellctl: destroying {h}: {e}");
                    failed += 1;
                }
            }
            if failed > 0 {
                return Ok(1);
            }
        }
        GardenCmd::StreamIn { handle, destination, user } => {
            c.stream_in(&handle, &user, &destination, tokio::io::stdin()).await?
        }
        GardenCmd::StreamOut { handle, source, user } => {
            use std::io::Write;
            let tar = c.stream_out(&handle, &user, &source).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&tar).context("writing the tar to stdout")?;
            out.flush()?;
        }
    }
    Ok(0)
}

/// The local terminal's size (fd 0), if stdin is a terminal.
fn window_size() -> Option<WindowSize> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusive `ws`.
    let ok = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 && ws.ws_row > 0;
    ok.then_some(WindowSize { columns: ws.ws_col, rows: ws.ws_row })
}

async fn run_process(
    c: &Client,
    tty: bool,
    user: Option<String>,
    dir: Option<String>,
    env: Vec<String>,
    handle: String,
    command: Vec<String>,
) -> anyhow::Result<i32> {
    let Some((path, args)) = command.split_first() else { bail!("no command given") };
    let interactive = tty && std::io::stdin().is_terminal();
    let spec = ProcessSpec {
        path: path.clone(),
        args: args.to_vec(),
        user: user.unwrap_or_default(),
        dir: dir.unwrap_or_default(),
        env,
        tty: tty.then(|| TtySpec { window_size: Some(window_size().unwrap_or(WindowSize { columns: 80, rows: 24 })) }),
        ..Default::default()
    };
    let io = ProcessIo {
        stdin: Some(Box::new(tokio::io::stdin())),
        stdout: Some(Box::new(tokio::io::stdout())),
        stderr: Some(Box::new(tokio::io::stderr())),
    };
    let _raw = interactive.then(crate::ssh::RawMode::enter);
    let process = c.run(&handle, &spec, io).await?;
    if interactive {
        // Follow the local terminal's size.
        if let Ok(mut winch) = signal(SignalKind::window_change()) {
            let ctl = process.control();
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some(ws) = window_size() {
                        if ctl.resize(ws.columns, ws.rows).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    }
    Ok(process.wait().await?)
}
