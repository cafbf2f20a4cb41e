//! One SSH session over a [`Connection`]: a shell or a command, with or
//! without a pty and `window-change`s, stdin/stdout/stderr copied, `-L`
//! forwards and `-N`, keepalives, and how the remote side ended ([`Exit`],
//! with cf's exit codes).

use std::time::Duration;

use russh::{ChannelMsg, ChannelReadHalf, Pty};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::{COPY_BUF, KEEPALIVE_INTERVAL};
use super::connection::Connection;
use super::error::SshError;
use super::forward::LocalForward;

/// A terminal for the remote side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtyRequest {
    /// `$TERM`, or `xterm`.
    pub term: String,
    pub cols: u32,
    pub rows: u32,
}

/// A terminal size, for `window-change`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub cols: u32,
    pub rows: u32,
}

/// What [`run_session`] does.
#[derive(Debug)]
pub struct SessionOpts {
    /// The command (cf joins its `-c` words with spaces); `None` starts the shell.
    pub command: Option<String>,
    pub pty: Option<PtyRequest>,
    /// Local terminal sizes to pass on as `window-change` (pty sessions).
    pub resize: Option<mpsc::Receiver<WindowSize>>,
    /// `-L` forwards, open for the whole session.
    pub forwards: Vec<LocalForward>,
    /// `-N`: no session channel; keep the forwards until the connection ends.
    pub no_command: bool,
    /// `keepalive@cloudfoundry.org` interval; `None` sends none.
    pub keepalive: Option<Duration>,
}

impl Default for SessionOpts {
    fn default() -> Self {
        Self {
            command: None,
            pty: None,
            resize: None,
            forwards: Vec::new(),
            no_command: false,
            keepalive: Some(KEEPALIVE_INTERVAL),
        }
    }
}

impl SessionOpts {
    /// Runs `command` without a pty.
    pub fn exec(command: &str) -> Self {
        Self { command: Some(command.to_string()), ..Self::default() }
    }
}

/// How the remote side ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exit {
    /// `exit-status`, if sent.
    pub status: Option<u32>,
    /// `exit-signal`'s name (`TERM`, `KILL`, …), if sent.
    pub signal: Option<String>,
    pub core_dumped: bool,
    pub message: String,
}

/// Signal numbers of the names Go's x/crypto/ssh knows (what cf exits with).
fn signal_number(name: &str) -> Option<i32> {
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "ABRT" => 6,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => return None,
    })
}

impl Exit {
    /// The exit code cf gives: the exit status; without one, after a signal,
    /// 128 + the signal's number (128 for a name it does not know).
    pub fn code(&self) -> i32 {
        match (self.status, &self.signal) {
            (Some(s), _) => i32::try_from(s).unwrap_or(i32::MAX),
            (None, Some(sig)) => 128 + signal_number(sig).unwrap_or(0),
            (None, None) => 0,
        }
    }

    /// cf's line after a remote process died of a signal.
    pub fn signal_notice(&self) -> Option<String> {
        let sig = self.signal.as_deref()?;
        let code = self.code();
        (code != 0).then(|| format!("Process terminated by signal: {sig}. Exited with {code}"))
    }
}

/// The output of [`exec`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Exit,
}

/// Runs `command` (no pty) with `stdin` as its input and collects its output.
pub async fn exec(conn: &Connection, command: &str, stdin: &[u8]) -> Result<ExecOutput, SshError> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let opts = SessionOpts { keepalive: None, ..SessionOpts::exec(command) };
    let exit = run_session(conn, opts, stdin, &mut stdout, &mut stderr).await?;
    Ok(ExecOutput { stdout, stderr, exit })
}

/// Aborts a task when dropped.
pub(super) struct AbortOnDrop(pub(super) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What `ssh` does after logging in: opens the `-L` forwards, then either
/// waits for the connection to end (`-N`: always an error, as the connection
/// was lost) or runs a session — pty if asked, `exec` of the command or
/// `shell` — copying `stdin` to it (EOF when `stdin` ends) and its output and
/// extended data to `stdout` and `stderr`, until the server closes the channel.
/// Sends `keepalive@cloudfoundry.org` meanwhile.
pub async fn run_session<I, O, E>(
    conn: &Connection,
    mut opts: SessionOpts,
    stdin: I,
    mut stdout: O,
    mut stderr: E,
) -> Result<Exit, SshError>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let mut forwards = Vec::with_capacity(opts.forwards.len());
    for spec in &opts.forwards {
        forwards.push(conn.forward_local(spec).await?);
    }
    let _keepalive = opts.keepalive.map(|every| {
        let handle = conn.handle.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if let Err(russh::Error::SendError | russh::Error::Disconnect) =
                    handle.send_global_request("keepalive@cloudfoundry.org", &[], true).await
                {
                    return;
                }
            }
        }))
    });
    if opts.no_command {
        conn.closed().await;
        return Err(conn.lost());
    }

    let channel = conn.handle.channel_open_session().await.map_err(|e| match e {
        russh::Error::SendError | russh::Error::Disconnect | russh::Error::RecvError => conn.lost(),
        e => SshError::Session(e.to_string()),
    })?;
    let (mut rd, wr) = channel.split();
    let mut early = Vec::new();
    if let Some(pty) = &opts.pty {
        let modes = [(Pty::ECHO, 1), (Pty::TTY_OP_ISPEED, 115_200), (Pty::TTY_OP_OSPEED, 115_200)];
        wr.request_pty(true, &pty.term, pty.cols, pty.rows, 0, 0, &modes).await?;
        await_reply(conn, &mut rd, &mut early, "pty-req").await?;
    }
    match &opts.command {
        Some(cmd) => {
            wr.exec(true, cmd.as_bytes()).await?;
            await_reply(conn, &mut rd, &mut early, "exec").await?;
        }
        None => {
            wr.request_shell(true).await?;
            await_reply(conn, &mut rd, &mut early, "shell").await?;
        }
    }

    let input = async {
        let mut w = wr.make_writer();
        let mut r = BufReader::with_capacity(COPY_BUF, stdin);
        let _ = tokio::io::copy_buf(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    };
    let output = async {
        let mut exit = Exit::default();
        let mut pending = early.into_iter();
        loop {
            let msg = match pending.next() {
                Some(m) => Some(m),
                None => rd.wait().await,
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    stdout.write_all(&data).await.map_err(|source| SshError::Io { what: "writing stdout", source })?;
                    stdout.flush().await.map_err(|source| SshError::Io { what: "writing stdout", source })?;
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    stderr.write_all(&data).await.map_err(|source| SshError::Io { what: "writing stderr", source })?;
                    stderr.flush().await.map_err(|source| SshError::Io { what: "writing stderr", source })?;
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => exit.status = Some(exit_status),
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, .. }) => {
                    exit.signal = Some(celld_lifecycle::sshd::sig_name(&signal_name));
                    exit.core_dumped = core_dumped;
                    exit.message = error_message;
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            }
        }
        if exit.status.is_some() || exit.signal.is_some() {
            Ok(exit)
        } else if conn.is_closed() {
            Err(conn.lost())
        } else {
            Err(SshError::NoExitStatus)
        }
    };
    tokio::pin!(input, output);
    let mut input_done = false;
    let resize = &mut opts.resize;
    loop {
        tokio::select! {
            r = &mut output => return r,
            () = &mut input, if !input_done => input_done = true,
            ws = next_size(resize) => {
                let _ = wr.window_change(ws.cols, ws.rows, 0, 0).await;
            }
        }
    }
}

/// Waits for the reply to a request sent with want_reply; other messages
/// (output that raced ahead) are kept for later.
async fn await_reply(
    conn: &Connection,
    rd: &mut ChannelReadHalf,
    early: &mut Vec<ChannelMsg>,
    what: &'static str,
) -> Result<(), SshError> {
    loop {
        match rd.wait().await {
            Some(ChannelMsg::Success) => return Ok(()),
            Some(ChannelMsg::Failure) => return Err(SshError::Refused(what)),
            Some(ChannelMsg::WindowAdjusted { .. }) => {}
            Some(m) => early.push(m),
            None if conn.is_closed() => return Err(conn.lost()),
            None => return Err(SshError::Session(format!("the channel closed before the {what} reply"))),
        }
    }
}

async fn next_size(r: &mut Option<mpsc::Receiver<WindowSize>>) -> WindowSize {
    if let Some(rx) = r
        && let Some(ws) = rx.recv().await
    {
        return ws;
    }
    *r = None;
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_cf() {
        let status = |s| Exit { status: Some(s), ..Exit::default() };
        assert_eq!(status(0).code(), 0);
        assert_eq!(status(3).code(), 3);
        assert_eq!(status(3).signal_notice(), None);
        let sig = |name: &str| Exit { signal: Some(name.into()), ..Exit::default() };
        assert_eq!(sig("KILL").code(), 137);
        assert_eq!(sig("TERM").code(), 143);
        assert_eq!(sig("USR2").code(), 140);
        assert_eq!(sig("WINCH").code(), 128);
        assert_eq!(sig("KILL").signal_notice().unwrap(), "Process terminated by signal: KILL. Exited with 137");
        let both = Exit { status: Some(2), signal: Some("INT".into()), ..Exit::default() };
        assert_eq!((both.code(), both.signal_notice().unwrap().ends_with("Exited with 2")), (2, true));
        assert_eq!(Exit { status: Some(0), signal: Some("INT".into()), ..Exit::default() }.signal_notice(), None);
    }
}
