//! One `session` channel.
//!
//! The connection's handler answers every request as it arrives (russh keeps
//! one "wants reply" flag per channel, so the answer must be given before the
//! next request is read) and does the quick work there: allocating the pty,
//! spawning the process. A task per channel owns the [`Channel`]: it reads the
//! channel's messages in order, and when it meets a start request
//! (`shell`/`exec`/`subsystem`) it takes the handler's outcome for it from an
//! mpsc — the handler sends exactly one per start request, in the same order —
//! and from then on moves the bytes: client data to stdin, stdout and stderr to
//! the channel, then the exit status, EOF and close.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::pty::{self, Master, Size};
use super::{Shared, is_sshd_var, scp, sftp};

/// How long a pty's output is still read after its process exited, while
/// something else keeps the terminal open (a background job).
const PTY_DRAIN_IDLE: Duration = Duration::from_millis(100);
/// Bytes per read from a process's output.
const OUTPUT_CHUNK: usize = 64 * 1024;
/// Client data chunks queued for a process's stdin.
const STDIN_QUEUE: usize = 64;

/// What the handler decided for one start request.
pub(super) enum Start {
    /// Refused (already started, unknown subsystem, spawn failure).
    Rejected,
    Process(Box<Process>),
    Scp(scp::Request),
    Sftp,
    /// A start that fails in-band: the message goes to stderr, then the code.
    Fail(String, u32),
}

pub(super) struct Process {
    child: tokio::process::Child,
    io: ProcessIo,
}

enum ProcessIo {
    Pty(Arc<Master>),
    Pipes {
        stdin: Option<tokio::process::ChildStdin>,
        stdout: Option<tokio::process::ChildStdout>,
        stderr: Option<tokio::process::ChildStderr>,
    },
}

/// The handler's side of a session channel.
pub(super) struct ChanState {
    starts: mpsc::UnboundedSender<Start>,
    shared: Arc<Shared>,
    env: Vec<(String, String)>,
    term: Option<String>,
    pty: Option<pty::Pair>,
    master: Option<Arc<Master>>,
    started: bool,
    /// The process group to signal and to hang up; 0 before the process
    /// exists and once its exit has been reported.
    pgid: Arc<AtomicI32>,
}

impl ChanState {
    /// The state for a new channel, and its task.
    pub(super) fn start(channel: Channel<Msg>, handle: Handle, shared: Arc<Shared>) -> Self {
        let (starts, rx) = mpsc::unbounded_channel();
        let pgid = Arc::new(AtomicI32::new(0));
        tokio::spawn(run(channel, rx, handle, shared.clone(), pgid.clone()));
        ChanState { starts, shared, env: Vec::new(), term: None, pty: None, master: None, started: false, pgid }
    }

    pub(super) fn env(&mut self, name: &str, value: &str) -> bool {
        if self.started || name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return false;
        }
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_string(), value.to_string()));
        true
    }

    pub(super) fn pty(&mut self, term: &str, size: Size, modes: &[(russh::Pty, u32)]) -> bool {
        if self.started || self.pty.is_some() {
            return false;
        }
        match pty::open(size, modes) {
            Ok(pair) => {
                self.term = Some(term.to_string()).filter(|t| !t.is_empty() && !t.contains('\0'));
                self.pty = Some(pair);
                true
            }
            Err(e) => {
                eprintln!("sshd: pty: {e}");
                false
            }
        }
    }

    pub(super) fn resize(&self, size: Size) -> bool {
        match (&self.master, &self.pty) {
            (Some(m), _) => m.resize(size).is_ok(),
            (None, Some(p)) => p.master.resize(size).is_ok(),
            _ => false,
        }
    }

    /// `shell` (None) or `exec`: the built-in scp, or the shell.
    pub(super) fn exec(&mut self, command: Option<&str>) -> bool {
        if self.started {
            return self.reject();
        }
        if let Some(parsed) = command.and_then(scp::parse_command) {
            self.started = true;
            let start = match parsed {
                Ok(req) => Start::Scp(req),
                Err(msg) => Start::Fail(msg, 1),
            };
            return self.send(start);
        }
        match self.spawn(command) {
            Ok(p) => {
                self.started = true;
                self.send(Start::Process(Box::new(p)))
            }
            Err(e) => {
                eprintln!("sshd: cannot start the shell: {e}");
                self.reject()
            }
        }
    }

    pub(super) fn subsystem(&mut self, name: &str) -> bool {
        if self.started || name != "sftp" {
            return self.reject();
        }
        self.started = true;
        self.send(Start::Sftp)
    }

    /// Delivers a client's `signal` to the process group.
    pub(super) fn kill(&self, signo: i32) {
        signal_group(&self.pgid, signo);
    }

    /// SIGHUP to what still runs: the client closed the channel or went away.
    pub(super) fn hangup(&self) {
        signal_group(&self.pgid, libc::SIGHUP);
    }

    fn reject(&self) -> bool {
        let _ = self.starts.send(Start::Rejected);
        false
    }

    fn send(&self, start: Start) -> bool {
        // The task may be gone (channel closed): nothing to start then.
        self.starts.send(start).is_ok()
    }

    fn spawn(&mut self, command: Option<&str>) -> io::Result<Process> {
        let shell = self.shared.shell.as_deref().ok_or_else(|| io::Error::other("no shell"))?;
        let mut cmd = tokio::process::Command::new(shell);
        if let Some(c) = command {
            cmd.arg("-c").arg(c);
        }
        cmd.env_clear()
            .envs(child_env(&self.shared.env, &self.env, self.term.as_deref()))
            .current_dir(&self.shared.cwd);
        let io = match self.pty.take() {
            Some(pair) => {
                let slave = pair.slave;
                cmd.stdin(Stdio::from(slave.try_clone()?))
                    .stdout(Stdio::from(slave.try_clone()?))
                    .stderr(Stdio::from(slave));
                // SAFETY: only async-signal-safe calls between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        // A session of its own, with the pty (now fd 0) as its
                        // controlling terminal.
                        if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let master = Arc::new(pair.master);
                self.master = Some(master.clone());
                ProcessIo::Pty(master)
            }
            None => {
                cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
                // SAFETY: setsid is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        // Its own process group, so a hang-up reaches what it
                        // started too.
                        if libc::setsid() < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                ProcessIo::Pipes { stdin: None, stdout: None, stderr: None }
            }
        };
        let mut child = cmd.spawn()?;
        // The slave copies went with `cmd`'s Stdio at spawn; drop `cmd` now so
        // the master sees EOF once the process's side closes.
        drop(cmd);
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        self.pgid.store(pid, Ordering::SeqCst);
        let io = match io {
            ProcessIo::Pipes { .. } => {
                ProcessIo::Pipes { stdin: child.stdin.take(), stdout: child.stdout.take(), stderr: child.stderr.take() }
            }
            pty => pty,
        };
        Ok(Process { child, io })
    }
}

fn signal_group(pgid: &AtomicI32, signo: i32) {
    let pg = pgid.load(Ordering::SeqCst);
    if pg > 0 {
        // SAFETY: kill(2) on a process group this session created.
        unsafe { libc::kill(-pg, signo) };
    }
}

/// The child's environment: the daemon's (without `SSHD_*`), then what the
/// client sent with `env`, then `TERM` from `pty-req`; `PATH=/bin:/usr/bin`
/// when nothing set a PATH.
pub(crate) fn child_env(
    daemon: &[(OsString, OsString)],
    client: &[(String, String)],
    term: Option<&str>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = daemon.iter().filter(|(k, _)| !is_sshd_var(k)).cloned().collect();
    let mut set = |k: &str, v: &str| {
        let (k, v) = (OsString::from(k), OsString::from(v));
        match env.iter_mut().find(|(ek, _)| *ek == k) {
            Some(e) => e.1 = v,
            None => env.push((k, v)),
        }
    };
    for (k, v) in client.iter().filter(|(k, _)| !k.starts_with("SSHD_")) {
        set(k, v);
    }
    if let Some(t) = term {
        set("TERM", t);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/bin:/usr/bin".into()));
    }
    env
}

/// The channel's task.
async fn run(
    mut chan: Channel<Msg>,
    mut starts: mpsc::UnboundedReceiver<Start>,
    handle: Handle,
    shared: Arc<Shared>,
    pgid: Arc<AtomicI32>,
) {
    let mut stdin_eof = false;
    let start = loop {
        match chan.wait().await {
            Some(ChannelMsg::Exec { .. } | ChannelMsg::RequestShell { .. } | ChannelMsg::RequestSubsystem { .. }) => {
                match starts.recv().await {
                    Some(Start::Rejected) => continue,
                    Some(s) => break s,
                    None => return,
                }
            }
            Some(ChannelMsg::Eof) => stdin_eof = true,
            Some(ChannelMsg::Close) | None => return,
            // Data before a start has nowhere to go (OpenSSH drops it too).
            Some(_) => {}
        }
    };
    match start {
        Start::Process(p) => run_process(chan, handle, *p, stdin_eof, pgid).await,
        Start::Scp(req) => {
            let code = {
                let mut out = chan.make_writer();
                if stdin_eof {
                    scp::run(&req, &shared.cwd, &mut BufReader::new(tokio::io::empty()), &mut out).await
                } else {
                    let mut input = BufReader::with_capacity(OUTPUT_CHUNK, chan.make_reader());
                    scp::run(&req, &shared.cwd, &mut input, &mut out).await
                }
            };
            finish(&chan, &handle, Ok(ExitStatus::from_raw(code << 8))).await;
        }
        Start::Sftp => run_sftp(chan, &shared.cwd, stdin_eof).await,
        Start::Fail(msg, code) => {
            let mut err = chan.make_writer_ext(Some(1));
            let _ = err.write_all(format!("{msg}\n").as_bytes()).await;
            let _ = chan.exit_status(code).await;
            let _ = chan.eof().await;
            let _ = chan.close().await;
        }
        Start::Rejected => {}
    }
}

/// The exit report: `exit-signal` for a killed process, else `exit-status`;
/// then EOF and close.
async fn finish(chan: &Channel<Msg>, handle: &Handle, status: io::Result<ExitStatus>) {
    match status {
        Ok(st) => match st.signal() {
            Some(signo) => {
                let sig = russh_sig(signo);
                let _ =
                    handle.exit_signal_request(chan.id(), sig, st.core_dumped(), String::new(), String::new()).await;
            }
            None => {
                let code = st.code().and_then(|c| u32::try_from(c).ok()).unwrap_or(255);
                let _ = chan.exit_status(code).await;
            }
        },
        Err(_) => {
            let _ = chan.exit_status(255).await;
        }
    }
    let _ = chan.eof().await;
    let _ = chan.close().await;
}

async fn run_process(mut chan: Channel<Msg>, handle: Handle, p: Process, stdin_eof: bool, pgid: Arc<AtomicI32>) {
    let Process { mut child, io } = p;
    let (exited_tx, exited_rx) = watch::channel(false);
    let (in_tx, in_rx) = mpsc::channel(STDIN_QUEUE);
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    match io {
        ProcessIo::Pty(master) => {
            pumps.push(tokio::spawn(pump_pty(master.clone(), chan.make_writer(), exited_rx)));
            tokio::spawn(feed_pty(in_rx, master));
        }
        ProcessIo::Pipes { stdin, stdout, stderr } => {
            if let Some(out) = stdout {
                pumps.push(tokio::spawn(pump(out, chan.make_writer())));
            }
            if let Some(err) = stderr {
                pumps.push(tokio::spawn(pump(err, chan.make_writer_ext(Some(1)))));
            }
            if let Some(stdin) = stdin {
                tokio::spawn(feed(in_rx, stdin));
            }
        }
    }
    // Dropping the sender closes the process's stdin.
    let mut input = if stdin_eof { None } else { Some(in_tx) };
    let mut pending = None;
    let aborts: Vec<_> = pumps.iter().map(|h| h.abort_handle()).collect();
    let mut drained = std::pin::pin!(async move {
        for h in pumps {
            let _ = h.await;
        }
    });
    let mut status: Option<io::Result<ExitStatus>> = None;
    let mut outputs_done = false;
    while status.is_none() || !outputs_done {
        tokio::select! {
            msg = chan.wait(), if pending.is_none() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(tx) = &input {
                        match tx.try_send(data) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(d)) => pending = Some(d),
                            Err(mpsc::error::TrySendError::Closed(_)) => input = None,
                        }
                    }
                }
                Some(ChannelMsg::Eof) => input = None,
                Some(ChannelMsg::Close) | None => {
                    // The client is gone: hang up, stop moving bytes.
                    signal_group(&pgid, libc::SIGHUP);
                    for a in &aborts {
                        a.abort();
                    }
                    return;
                }
                Some(_) => {}
            },
            permit = reserve(input.clone()), if pending.is_some() => {
                match (permit, pending.take()) {
                    (Some(p), Some(d)) => {
                        p.send(d);
                    }
                    _ => input = None,
                }
            }
            st = child.wait(), if status.is_none() => {
                status = Some(st);
                let _ = exited_tx.send(true);
            }
            () = &mut drained, if !outputs_done => outputs_done = true,
        }
    }
    // Reported: a later close must not hang up an unrelated process group.
    pgid.store(0, Ordering::SeqCst);
    finish(&chan, &handle, status.unwrap_or_else(|| Err(io::Error::other("no status")))).await;
}

/// Waits for room in the stdin queue; `None` when there is no stdin anymore.
async fn reserve<T>(tx: Option<mpsc::Sender<T>>) -> Option<mpsc::OwnedPermit<T>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => None,
    }
}

/// Process output → channel (stdout as data, stderr as extended data 1).
async fn pump<R: AsyncRead + Unpin>(mut from: R, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(buf.get(..n).unwrap_or_default()).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Pty output → channel, until the terminal closes, or until it goes quiet
/// after the process exited.
async fn pump_pty(master: Arc<Master>, mut to: impl AsyncWrite + Unpin, mut exited: watch::Receiver<bool>) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    let mut done = false;
    loop {
        let r = if done {
            match tokio::time::timeout(PTY_DRAIN_IDLE, master.read(&mut buf)).await {
                Ok(r) => r,
                Err(_idle) => break,
            }
        } else {
            tokio::select! {
                r = master.read(&mut buf) => r,
                c = exited.changed() => {
                    done = c.is_err() || *exited.borrow();
                    continue;
                }
            }
        };
        match r {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(buf.get(..n).unwrap_or_default()).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Client data → the process's stdin pipe; closing the queue closes stdin.
async fn feed<B: AsRef<[u8]>>(mut rx: mpsc::Receiver<B>, mut stdin: tokio::process::ChildStdin) {
    while let Some(d) = rx.recv().await {
        if stdin.write_all(d.as_ref()).await.is_err() {
            break;
        }
    }
}

/// Client data → the pty. EOF from the client leaves the terminal open, as in
/// OpenSSH: the input of a terminal is not a stream that ends.
async fn feed_pty<B: AsRef<[u8]>>(mut rx: mpsc::Receiver<B>, master: Arc<Master>) {
    while let Some(d) = rx.recv().await {
        if master.write_all(d.as_ref()).await.is_err() {
            break;
        }
    }
}

/// `subsystem sftp`: the SFTP server on one end of an in-memory pipe, the
/// channel on the other, so the end of the client's input can be seen and
/// answered with exit-status 0 (which `scp` over SFTP waits for).
async fn run_sftp(mut chan: Channel<Msg>, cwd: &Path, stdin_eof: bool) {
    let (ours, theirs) = tokio::io::duplex(4 * OUTPUT_CHUNK);
    russh_sftp::server::run(theirs, sftp::Fs::new(cwd.to_path_buf())).await;
    let (from_server, mut to_server) = tokio::io::split(ours);
    let out = tokio::spawn(pump(from_server, chan.make_writer()));
    if stdin_eof {
        let _ = to_server.shutdown().await;
    } else {
        loop {
            match chan.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    if to_server.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Some(ChannelMsg::Eof) => break,
                Some(ChannelMsg::Close) | None => {
                    out.abort();
                    return;
                }
                Some(_) => {}
            }
        }
        let _ = to_server.shutdown().await;
    }
    // The server ends on the end of its input; its last replies follow.
    drop(to_server);
    let _ = out.await;
    let _ = chan.exit_status(0).await;
    let _ = chan.eof().await;
    let _ = chan.close().await;
}

/// Signals by their RFC 4254 names (without "SIG").
const SIGNALS: [(&str, i32); 22] = [
    ("ABRT", libc::SIGABRT),
    ("ALRM", libc::SIGALRM),
    ("BUS", libc::SIGBUS),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("FPE", libc::SIGFPE),
    ("HUP", libc::SIGHUP),
    ("ILL", libc::SIGILL),
    ("INT", libc::SIGINT),
    ("KILL", libc::SIGKILL),
    ("PIPE", libc::SIGPIPE),
    ("QUIT", libc::SIGQUIT),
    ("SEGV", libc::SIGSEGV),
    ("STOP", libc::SIGSTOP),
    ("SYS", libc::SIGSYS),
    ("TERM", libc::SIGTERM),
    ("TRAP", libc::SIGTRAP),
    ("TSTP", libc::SIGTSTP),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("WINCH", libc::SIGWINCH),
    ("XCPU", libc::SIGXCPU),
];

/// "TERM" (or "SIGTERM") → SIGTERM.
pub(crate) fn signal_number(name: &str) -> Option<i32> {
    let name = name.strip_prefix("SIG").unwrap_or(name);
    SIGNALS.iter().find(|(n, _)| *n == name).map(|&(_, s)| s)
}

/// SIGKILL → "KILL"; unknown numbers as "SIG<n>".
pub(crate) fn signal_name(signo: i32) -> String {
    match SIGNALS.iter().find(|&&(_, s)| s == signo) {
        Some((n, _)) => n.to_string(),
        None => format!("SIG{signo}"),
    }
}

fn russh_sig(signo: i32) -> Sig {
    match signo {
        libc::SIGABRT => Sig::ABRT,
        libc::SIGALRM => Sig::ALRM,
        libc::SIGFPE => Sig::FPE,
        libc::SIGHUP => Sig::HUP,
        libc::SIGILL => Sig::ILL,
        libc::SIGINT => Sig::INT,
        libc::SIGKILL => Sig::KILL,
        libc::SIGPIPE => Sig::PIPE,
        libc::SIGQUIT => Sig::QUIT,
        libc::SIGSEGV => Sig::SEGV,
        libc::SIGTERM => Sig::TERM,
        libc::SIGUSR1 => Sig::USR1,
        other => Sig::Custom(signal_name(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sshd_signal_names() {
        assert_eq!(signal_number("TERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("SIGKILL"), Some(libc::SIGKILL));
        assert_eq!(signal_number("USR2"), Some(libc::SIGUSR2));
        assert_eq!(signal_number("HUP"), Some(libc::SIGHUP));
        assert_eq!(signal_number("INT"), Some(libc::SIGINT));
        assert_eq!(signal_number("QUIT"), Some(libc::SIGQUIT));
        assert_eq!(signal_number("NOPE"), None);
        assert_eq!(signal_name(libc::SIGKILL), "KILL");
        assert_eq!(signal_name(libc::SIGUSR2), "USR2");
        assert_eq!(signal_name(77), "SIG77");
        assert_eq!(super::super::sig_name(&russh_sig(libc::SIGKILL)), "KILL");
        assert_eq!(super::super::sig_name(&russh_sig(libc::SIGUSR2)), "USR2");
        for (name, signo) in SIGNALS {
            assert_eq!(signal_number(name), Some(signo));
            assert_eq!(signal_name(signo), name);
        }
    }

    #[test]
    fn sshd_child_env() {
        let daemon = vec![
            (OsString::from("HOME"), OsString::from("/home/vcap/app")),
            (OsString::from("SSHD_HOSTKEY"), OsString::from("secret")),
            (OsString::from("TERM"), OsString::from("dumb")),
        ];
        let client = vec![("LANG".to_string(), "C.UTF-8".to_string()), ("SSHD_X".to_string(), "y".to_string())];
        let env = child_env(&daemon, &client, Some("xterm-256color"));
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.to_string_lossy().into_owned());
        assert_eq!(get("HOME").as_deref(), Some("/home/vcap/app"));
        assert_eq!(get("LANG").as_deref(), Some("C.UTF-8"));
        assert_eq!(get("TERM").as_deref(), Some("xterm-256color"));
        assert_eq!(get("PATH").as_deref(), Some("/bin:/usr/bin"));
        assert_eq!(get("SSHD_HOSTKEY"), None);
        assert_eq!(get("SSHD_X"), None);
        assert_eq!(env.iter().filter(|(k, _)| k == "TERM").count(), 1);
        let with_path = vec![(OsString::from("PATH"), OsString::from("/x"))];
        let env = child_env(&with_path, &[], None);
        assert_eq!(env, with_path);
    }
}
