//! The ssh commands (`ssh`, `ssh-code`, `allow-space-ssh`,
//! `disallow-space-ssh`, `space-ssh-allowed`): the `Apps` API gives the app's
//! guid, the proxy's address and fingerprint and a one-time code; the local
//! terminal is put in raw mode for a pty session and restored on every way out.

use std::io::IsTerminal;
use std::str::FromStr;

use clap::{ArgAction, Args};
use tokio::sync::mpsc;

use super::connection::{SshAuth, SshTarget, connect};
use super::error::SshError;
use super::forward::LocalForward;
use super::session::{AbortOnDrop, Exit, PtyRequest, SessionOpts, WindowSize, run_session};
use super::terminal::{RawMode, TtyRequest, terminal_size, terminating_signal, want_pty};
use crate::api::{Ctx, Fail, status_message};
use celld_proto as pb;

/// The size cf assumes when the terminal's cannot be read.
const DEFAULT_COLS: u32 = 80;
const DEFAULT_ROWS: u32 = 43;

/// `cellctl ssh`'s flags (cf's).
#[derive(Args, Debug, Clone)]
pub struct SshArgs {
    /// The app's name.
    #[arg(value_name = "APP_NAME")]
    pub app: String,
    /// The app instance's index.
    #[arg(short = 'i', long = "app-instance-index", default_value_t = 0, value_name = "INDEX")]
    pub index: u32,
    /// The app's process (cellctl apps have only `web`).
    #[arg(long, default_value = "web", value_name = "PROCESS")]
    pub process: String,
    /// Command to run instead of a shell (repeatable: the words are joined with spaces).
    #[arg(short = 'c', long = "command", value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Local port forward: listen on LOCAL_PORT (on BIND_ADDRESS, default localhost) and connect to
    /// REMOTE_HOST:REMOTE_PORT from the app's container (repeatable).
    #[arg(short = 'L', value_name = "[BIND_ADDRESS:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT", value_parser = LocalForward::from_str)]
    pub forwards: Vec<LocalForward>,
    /// Do not run a remote command or shell: only forward ports (until Ctrl-C).
    #[arg(short = 'N', long = "skip-remote-execution")]
    pub skip_remote_execution: bool,
    /// Request a pseudo-tty (when stdin is a terminal); twice (-tt) forces one.
    #[arg(short = 't', long = "request-pseudo-tty", action = ArgAction::Count)]
    pub request_tty: u8,
    /// Force pseudo-tty allocation.
    #[arg(long = "force-pseudo-tty", conflicts_with_all = ["request_tty", "disable_tty"])]
    pub force_tty: bool,
    /// Disable pseudo-tty allocation.
    #[arg(short = 'T', long = "disable-pseudo-tty", conflicts_with = "request_tty")]
    pub disable_tty: bool,
    /// Skip host key validation. Not recommended!
    #[arg(short = 'k', long = "skip-host-validation")]
    pub skip_host_validation: bool,
}

impl SshArgs {
    pub fn tty_request(&self) -> TtyRequest {
        match (self.force_tty, self.request_tty, self.disable_tty) {
            (true, _, _) | (_, 2.., _) => TtyRequest::Force,
            (_, 1, _) => TtyRequest::Yes,
            (_, _, true) => TtyRequest::No,
            _ => TtyRequest::Auto,
        }
    }

    /// cf joins the `-c` words with spaces.
    pub fn command_line(&self) -> Option<String> {
        (!self.command.is_empty()).then(|| self.command.join(" "))
    }
}

fn failed(api: &str, s: &tonic::Status) -> Fail {
    if s.code() == tonic::Code::Unimplemented && !s.message().is_empty() {
        return Fail::Failed(format!("celld at {api} does not support ssh yet ({})", s.message()));
    }
    Fail::Failed(status_message(api, s))
}

const NOT_AUTHORIZED: &str = "Error opening SSH connection: You are not authorized to perform the requested action.";

/// `cellctl ssh APP`, exiting the process with the remote exit code when it is
/// not 0 (the command dispatcher only knows success and failure).
pub async fn run_ssh(ctx: &Ctx, args: SshArgs) -> Result<(), Fail> {
    let code = ssh(ctx, args).await?;
    if code != 0 {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        std::process::exit(code);
    }
    Ok(())
}

/// `cellctl ssh APP`: returns the exit code (the remote command's).
pub async fn ssh(ctx: &Ctx, args: SshArgs) -> Result<i32, Fail> {
    let api = ctx.api.as_str();
    let mut c = ctx.connect().await?;
    let app_ref = pb::AppRef { space: ctx.space.clone(), name: args.app.clone() };
    let detail = c.get_app(app_ref).await.map_err(|s| failed(api, &s))?.into_inner();
    let app = detail.app.clone().unwrap_or_default();
    let name = &args.app;
    if !app.enable_ssh {
        return Err(Fail::Failed(format!(
            "{NOT_AUTHORIZED}\nssh support is disabled for app '{name}'. \
             TIP: `cellctl enable-ssh {name}`, then `cellctl restart {name}`."
        )));
    }
    if args.process != "web" {
        return Err(Fail::Failed(format!("Process {} not found", args.process)));
    }
    if app.state != "STARTED" {
        return Err(Fail::Failed(format!("Application '{name}' is not in the STARTED state")));
    }
    let index = args.index;
    match detail.instances.iter().find(|i| i.index == index) {
        None => return Err(Fail::Failed(format!("Instance {index} of process {} not found", args.process))),
        Some(i) if i.state != "running" => {
            return Err(Fail::Failed(format!("Instance {index} of process {} not running", args.process)));
        }
        Some(_) => {}
    }
    let info = c.get_ssh_info(pb::GetSshInfoRequest {}).await.map_err(|s| failed(api, &s))?.into_inner();
    if info.endpoint.is_empty() {
        return Err(Fail::Failed(format!("SSH endpoint not set: celld at {api} runs no ssh proxy")));
    }
    if info.host_key_fingerprint.is_empty() && !args.skip_host_validation {
        return Err(Fail::Failed(format!("SSH hostkey fingerprint not set: celld at {api} announced none")));
    }
    let code = c.get_ssh_code(pb::GetSshCodeRequest {}).await.map_err(|s| failed(api, &s))?.into_inner().code;

    let target = SshTarget {
        addr: info.endpoint.clone(),
        user: format!("cf:{}/{index}", app.guid),
        auth: SshAuth::Password(code),
        host_fingerprint: (!args.skip_host_validation).then(|| info.host_key_fingerprint.clone()),
    };
    let conn = match connect(&target).await {
        Ok(conn) => conn,
        Err(SshError::AuthFailed { .. }) => {
            // Say why if celld can tell: the space may disallow ssh.
            let space = pb::SpaceRef { space: ctx.space.clone() };
            let why = match c.get_space_ssh(space).await {
                Ok(r) if !r.get_ref().allow_ssh => format!(
                    "\nssh support is disabled in space '{}'. TIP: `cellctl allow-space-ssh {}`.",
                    ctx.space, ctx.space
                ),
                _ => String::new(),
            };
            return Err(Fail::Failed(format!("{NOT_AUTHORIZED}{why}")));
        }
        Err(e @ (SshError::HostKeyMismatch { .. } | SshError::NoFingerprint { .. })) => {
            return Err(Fail::Failed(e.to_string()));
        }
        Err(e) => return Err(Fail::Failed(format!("Error opening SSH connection: {e}"))),
    };
    drop(c);

    let stdin_tty = std::io::stdin().is_terminal();
    let command = args.command_line();
    let pty = !args.skip_remote_execution && want_pty(args.tty_request(), command.is_some(), stdin_tty);
    let size = terminal_size();
    let mut opts = SessionOpts {
        command,
        pty: pty.then(|| PtyRequest {
            term: std::env::var("TERM").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| "xterm".into()),
            cols: size.map_or(DEFAULT_COLS, |s| s.cols),
            rows: size.map_or(DEFAULT_ROWS, |s| s.rows),
        }),
        forwards: args.forwards.clone(),
        no_command: args.skip_remote_execution,
        ..SessionOpts::default()
    };
    let mut _winch = None;
    if pty && size.is_some() {
        let (tx, rx) = mpsc::channel(4);
        opts.resize = Some(rx);
        _winch = Some(AbortOnDrop(tokio::spawn(follow_window_size(tx, size))));
    }

    let raw = pty.then(RawMode::enter);
    let session = run_session(&conn, opts, tokio::io::stdin(), tokio::io::stdout(), tokio::io::stderr());
    let result = if pty {
        tokio::select! {
            r = session => r,
            // Killed while the terminal is raw: restore it, exit as the signal would.
            n = terminating_signal() => Ok(Exit { status: Some(128 + n.unsigned_abs()), ..Exit::default() }),
        }
    } else {
        session.await
    };
    // The terminal first, then any message.
    drop(raw);
    let exit = match result {
        Ok(exit) => exit,
        Err(e @ SshError::Listen { .. }) => return Err(Fail::Failed(format!("Error forwarding port: {e}"))),
        Err(e) => return Err(Fail::Failed(e.to_string())),
    };
    if let Some(notice) = exit.signal_notice() {
        println!("{notice}");
    }
    Ok(exit.code())
}

/// Sends the terminal's size on each SIGWINCH that changed it.
async fn follow_window_size(tx: mpsc::Sender<WindowSize>, mut last: Option<WindowSize>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut winch) = signal(SignalKind::window_change()) else { return };
    while winch.recv().await.is_some() {
        let now = terminal_size();
        if let Some(ws) = now.filter(|ws| Some(*ws) != last) {
            last = now;
            if tx.send(ws).await.is_err() {
                return;
            }
        }
    }
}

/// `cellctl ssh-code`: one one-time password, alone on its line.
pub async fn ssh_code(ctx: &Ctx) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let code = c.get_ssh_code(pb::GetSshCodeRequest {}).await.map_err(|s| failed(&ctx.api, &s))?.into_inner().code;
    println!("{code}");
    Ok(())
}

/// `cellctl allow-space-ssh` / `disallow-space-ssh`.
pub async fn set_space_ssh(ctx: &Ctx, space: &str, allow: bool) -> Result<(), Fail> {
    if space.trim().is_empty() {
        return Err(Fail::Usage("the space name is empty".into()));
    }
    let mut c = ctx.connect().await?;
    let (verb, word) = if allow { ("Enabling", "enabled") } else { ("Disabling", "disabled") };
    println!("{verb} ssh support for space {space}...");
    let now = c.get_space_ssh(pb::SpaceRef { space: space.to_string() }).await.map_err(|s| failed(&ctx.api, &s))?;
    if now.into_inner().allow_ssh == allow {
        println!("ssh support for space '{space}' is already {word}.\nOK");
        return Ok(());
    }
    let req = pb::SetSpaceSshRequest { space: space.to_string(), allow_ssh: allow };
    c.set_space_ssh(req).await.map_err(|s| failed(&ctx.api, &s))?;
    println!("OK");
    Ok(())
}

/// `cellctl space-ssh-allowed SPACE`.
pub async fn space_ssh_allowed(ctx: &Ctx, space: &str) -> Result<(), Fail> {
    let mut c = ctx.connect().await?;
    let r = c.get_space_ssh(pb::SpaceRef { space: space.to_string() }).await.map_err(|s| failed(&ctx.api, &s))?;
    let word = if r.into_inner().allow_ssh { "enabled" } else { "disabled" };
    println!("ssh support is {word} in space '{space}'.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tty_flags_map_to_requests() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: SshArgs,
        }
        let parse = |args: &[&str]| {
            T::try_parse_from(std::iter::once("ssh").chain(args.iter().copied())).map(|t| t.a.tty_request())
        };
        assert_eq!(parse(&["web"]).unwrap(), TtyRequest::Auto);
        assert_eq!(parse(&["web", "-t"]).unwrap(), TtyRequest::Yes);
        assert_eq!(parse(&["web", "-tt"]).unwrap(), TtyRequest::Force);
        assert_eq!(parse(&["web", "--force-pseudo-tty"]).unwrap(), TtyRequest::Force);
        assert_eq!(parse(&["web", "-T"]).unwrap(), TtyRequest::No);
        assert!(parse(&["web", "-t", "-T"]).is_err());
        assert!(parse(&["web", "--force-pseudo-tty", "-T"]).is_err());
        assert!(parse(&["web", "--force-pseudo-tty", "-t"]).is_err());
        assert!(parse(&["web", "-L", "nope"]).is_err());
        let a = T::try_parse_from([
            "ssh",
            "web",
            "-i",
            "2",
            "-c",
            "echo",
            "-c",
            "hi",
            "-L",
            "8080:localhost:80",
            "-N",
            "-k",
        ])
        .unwrap()
        .a;
        assert_eq!((a.index, a.command_line().as_deref(), a.forwards.len()), (2, Some("echo hi"), 1));
        assert!(a.skip_remote_execution && a.skip_host_validation);
    }
}
