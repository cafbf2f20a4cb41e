//! cellctl: a human CLI over celld's Garden API.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use anyhow::{Context, bail};
use celld::garden::client::{Address, Client, ProcessIo};
use celld::garden::types::{ContainerSpec, NetOutRule, ProcessSpec, TtySpec, WindowSize};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(name = "cellctl", version, about = "Talk to a celld (or any Garden server)")]
struct Cli {
    /// Garden server: a unix socket path or HOST:PORT.
    #[arg(long, env = "CELLD_GARDEN", default_value = "/run/celld/garden.sock")]
    garden: String,
    /// celld's gRPC API (staging, buildpacks): HOST:PORT.
    #[arg(long, env = "CELLD_API", default_value = "127.0.0.1:1801")]
    api: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checks that the server answers.
    Ping,
    /// Lists container handles, optionally filtered by properties.
    Containers {
        #[arg(long = "property", value_name = "K=V")]
        properties: Vec<String>,
    },
    /// Creates a container and prints its handle.
    Create {
        #[arg(long)]
        handle: Option<String>,
        /// `preloaded:NAME` or an absolute directory.
        #[arg(long)]
        rootfs: Option<String>,
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
        #[arg(long = "property", value_name = "K=V")]
        properties: Vec<String>,
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
    },
    /// Maps a host port (0: the next free one) to a container port; prints the mapping.
    NetIn {
        handle: String,
        #[arg(long, default_value_t = 0)]
        host_port: u32,
        #[arg(long)]
        container_port: u32,
    },
    /// Allows egress: a Garden NetOutRule (or a list of them) as JSON, e.g.
    /// '{"protocol":1,"networks":[{"start":"10.0.0.1","end":"10.0.0.1"}],"ports":[{"start":443,"end":443}]}'.
    NetOut {
        handle: String,
        rules: String,
    },
    /// Shows a container's info as JSON.
    Info {
        handle: String,
    },
    /// Shows a container's metrics as JSON.
    Metrics {
        handle: String,
    },
    /// Runs a command in a container; exits with its status.
    Run {
        /// Run on a pseudo-terminal.
        #[arg(short, long)]
        tty: bool,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        dir: Option<String>,
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        handle: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stops a container's processes (TERM, then KILL).
    Stop {
        #[arg(long)]
        kill: bool,
        handle: String,
    },
    /// Destroys containers.
    Destroy {
        #[arg(required = true)]
        handles: Vec<String>,
    },
    /// Copies a tar from stdin into the container.
    StreamIn {
        handle: String,
        destination: String,
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Writes a path of the container as a tar to stdout.
    StreamOut {
        handle: String,
        source: String,
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Lists the admin buildpacks in detection order.
    Buildpacks {
        #[arg(long)]
        json: bool,
    },
    /// Adds (or replaces) a buildpack from a zip, a tgz or a directory.
    CreateBuildpack {
        name: String,
        path: std::path::PathBuf,
        /// 1-based place in the detection order (0: last).
        position: u32,
        /// Only for this stack (default: any).
        #[arg(long, default_value = "")]
        stack: String,
    },
    DeleteBuildpack {
        name: String,
    },
    /// Stages an app directory (or a zip/tar/tgz of it) into a droplet.
    Stage {
        dir: std::path::PathBuf,
        /// Keys the build cache (default: derived from the directory's absolute path).
        #[arg(long = "app")]
        app_guid: Option<String>,
        /// Buildpack to use (repeat for multi-buildpack; skips detection).
        #[arg(short = 'b', long = "buildpack")]
        buildpacks: Vec<String>,
        #[arg(short = 's', long, default_value = "")]
        stack: String,
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
        key: String,
        output: std::path::PathBuf,
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

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cellctl: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cellctl: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    use celld::cli::staging;
    let api = cli.api.as_str();
    let staged = match cli.cmd {
        Cmd::Buildpacks { json } => Some(staging::buildpacks(api, json).await),
        Cmd::CreateBuildpack { ref name, ref path, position, ref stack } => {
            Some(staging::create_buildpack(api, name, path, position, stack).await)
        }
        Cmd::DeleteBuildpack { ref name } => Some(staging::delete_buildpack(api, name).await),
        Cmd::DownloadDroplet { ref key, ref output } => Some(staging::download_droplet(api, key, output).await),
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
            Some(staging::stage(api, args).await.map(|r| staging::print_result(&r)))
        }
        _ => None,
    };
    if let Some(res) = staged {
        return Ok(match res {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("FAILED\n{e}");
                e.exit_code()
            }
        });
    }
    let Ok(addr) = cli.garden.parse::<Address>();
    let c = Client::new(addr);
    match cli.cmd {
        Cmd::Ping => c.ping().await?,
        Cmd::Containers { properties } => {
            for h in c.list(&pairs(&properties)?).await? {
                println!("{h}");
            }
        }
        Cmd::Create { handle, rootfs, privileged, memory, pids, grace_time, properties, env } => {
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
        Cmd::NetIn { handle, host_port, container_port } => {
            let m = c.net_in(&handle, host_port, container_port).await?;
            println!("{} -> {}", m.host_port, m.container_port);
        }
        Cmd::NetOut { handle, rules } => {
            let rules: Vec<NetOutRule> = match serde_json::from_str::<NetOutRule>(&rules) {
                Ok(one) => vec![one],
                Err(_) => serde_json::from_str(&rules).context("rules: a NetOutRule object or a list of them")?,
            };
            c.bulk_net_out(&handle, &rules).await?;
        }
        Cmd::Info { handle } => println!("{}", serde_json::to_string_pretty(&c.info(&handle).await?)?),
        Cmd::Metrics { handle } => println!("{}", serde_json::to_string_pretty(&c.metrics(&handle).await?)?),
        Cmd::Run { tty, user, dir, env, handle, command } => {
            return run_process(&c, tty, user, dir, env, handle, command).await;
        }
        Cmd::Stop { kill, handle } => c.stop(&handle, kill).await?,
        Cmd::Destroy { handles } => {
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
        Cmd::StreamIn { handle, destination, user } => {
            c.stream_in(&handle, &user, &destination, tokio::io::stdin()).await?
        }
        Cmd::StreamOut { handle, source, user } => {
            use std::io::Write;
            let tar = c.stream_out(&handle, &user, &source).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&tar).context("writing the tar to stdout")?;
            out.flush()?;
        }
        // Answered above, over gRPC.
        Cmd::Buildpacks { .. }
        | Cmd::CreateBuildpack { .. }
        | Cmd::DeleteBuildpack { .. }
        | Cmd::DownloadDroplet { .. }
        | Cmd::Stage { .. } => {}
    }
    Ok(0)
}

/// Restores the terminal's settings when dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else { return Self(None) };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        Self(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, t);
        }
    }
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
    let _raw = interactive.then(RawMode::enter);
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
