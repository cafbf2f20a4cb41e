//! A process in a container: starting or attaching to it over Garden's hijacked
//! connection (raw newline-delimited JSON after the `201`/`200` head), copying
//! its stdout/stderr from their attach streams and stdin into JSON messages, and
//! the [`Process`]/[`ProcessControl`] handles that signal, resize and wait.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::connection::Client;
use super::error::{ClientError, protocol};
use super::http::{container, encode, error_from, read_body, read_head};
use crate::types::{
    ProcessPayload, ProcessSpec, ProcessStarted, SIGNAL_KILL, SIGNAL_TERMINATE, SOURCE_STDIN, TtySpec, WindowSize,
};

/// Length of `buf` without a trailing, incomplete UTF-8 sequence.
pub(super) fn utf8_complete_len(buf: &[u8]) -> usize {
    for back in 1..=buf.len().min(3) {
        let b = buf[buf.len() - back];
        if b & 0xC0 != 0x80 {
            let need = match b {
                0xF0.. => 4,
                0xE0.. => 3,
                0xC0.. => 2,
                _ => 1,
            };
            return if need > back { buf.len() - back } else { buf.len() };
        }
    }
    buf.len()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Kill,
}

/// Where a process's stdio goes. Streams that are `None` are not opened.
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Option<Box<dyn AsyncRead + Unpin + Send>>,
    pub stdout: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    pub stderr: Option<Box<dyn AsyncWrite + Unpin + Send>>,
}

/// A cloneable remote control for a process: signals, resizes, stdin EOF.
#[derive(Debug, Clone)]
pub struct ProcessControl {
    id: String,
    tx: mpsc::UnboundedSender<ProcessPayload>,
}

impl ProcessControl {
    fn send(&self, p: ProcessPayload) -> Result<(), ClientError> {
        self.tx.send(p).map_err(|_| protocol("process stream is closed"))
    }

    fn payload(&self) -> ProcessPayload {
        ProcessPayload { process_id: self.id.clone(), ..Default::default() }
    }

    pub async fn signal(&self, sig: Signal) -> Result<(), ClientError> {
        let s = match sig {
            Signal::Terminate => SIGNAL_TERMINATE,
            Signal::Kill => SIGNAL_KILL,
        };
        self.send(ProcessPayload { signal: Some(s), ..self.payload() })
    }

    pub async fn resize(&self, columns: u16, rows: u16) -> Result<(), ClientError> {
        let tty = TtySpec { window_size: Some(WindowSize { columns, rows }) };
        self.send(ProcessPayload { tty: Some(tty), ..self.payload() })
    }

    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.send(ProcessPayload { source: Some(SOURCE_STDIN), ..self.payload() })
    }
}

/// A running (or attached) process.
pub struct Process {
    ctl: ProcessControl,
    exit: JoinHandle<Result<i32, ClientError>>,
    copies: Vec<JoinHandle<()>>,
}

impl Process {
    pub fn id(&self) -> &str {
        &self.ctl.id
    }

    /// A handle that can signal or resize while another task `wait`s.
    pub fn control(&self) -> ProcessControl {
        self.ctl.clone()
    }

    pub async fn signal(&self, sig: Signal) -> Result<(), ClientError> {
        self.ctl.signal(sig).await
    }

    pub async fn resize(&self, columns: u16, rows: u16) -> Result<(), ClientError> {
        self.ctl.resize(columns, rows).await
    }

    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.ctl.close_stdin().await
    }

    /// Waits for the exit status and for stdout/stderr to be fully copied.
    /// Dropping a `Process` instead detaches from it; its output keeps flowing.
    pub async fn wait(self) -> Result<i32, ClientError> {
        let code = match self.exit.await {
            Ok(code) => code,
            Err(e) => Err(protocol(format!("process reader failed: {e}"))),
        };
        for c in self.copies {
            if code.is_err() {
                c.abort();
            }
            let _ = c.await;
        }
        code
    }
}

/// Copies stdin into data messages, then sends EOF. Splits never cut a UTF-8
/// character; bytes that are not UTF-8 are replaced (Garden's `data` is a string).
async fn copy_stdin(mut stdin: Box<dyn AsyncRead + Unpin + Send>, ctl: ProcessControl) {
    let mut buf = Vec::with_capacity(32 * 1024);
    loop {
        let start = buf.len();
        buf.resize(start + 32 * 1024, 0);
        let n = match stdin.read(&mut buf[start..]).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("reading stdin: {e}");
                0
            }
        };
        buf.truncate(start + n);
        let cut = if n == 0 { buf.len() } else { utf8_complete_len(&buf) };
        if cut > 0 {
            let data = String::from_utf8_lossy(&buf[..cut]).into_owned();
            if ctl.send(ProcessPayload { source: Some(SOURCE_STDIN), data: Some(data), ..ctl.payload() }).is_err() {
                return;
            }
            buf.drain(..cut);
        }
        if n == 0 {
            let _ = ctl.close_stdin().await;
            return;
        }
    }
}

impl Client {
    /// Starts a process; stdio flows between `io` and the process.
    pub async fn run(&self, handle: &str, spec: &ProcessSpec, io: ProcessIo) -> Result<Process, ClientError> {
        let body = serde_json::to_vec(spec).map_err(|e| protocol(e.to_string()))?;
        self.hijack("POST", &container(handle, "/processes"), &body, 201, handle, io).await
    }

    /// Re-attaches to a running (or recently exited) process.
    pub async fn attach(&self, handle: &str, process_id: &str, io: ProcessIo) -> Result<Process, ClientError> {
        let path = container(handle, &format!("/processes/{}", encode(process_id)));
        self.hijack("GET", &path, &[], 200, handle, io).await
    }

    async fn hijack(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        expect: u16,
        handle: &str,
        io: ProcessIo,
    ) -> Result<Process, ClientError> {
        let mut r = self.send(method, path, body).await?;
        let head = read_head(&mut r).await?;
        if head.status != expect {
            // Failures (e.g. ExecutableNotFoundError) come before the hijack
            // as ordinary responses.
            let body = read_body(&mut r, &head).await?;
            return Err(error_from(head.status, &body));
        }
        // From here on the stream is raw newline-delimited JSON, whatever
        // Transfer-Encoding said.
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).await?;
        let started: ProcessStarted = serde_json::from_slice(&line)
            .map_err(|e| protocol(format!("bad process start line {:?}: {e}", String::from_utf8_lossy(&line))))?;
        let id = started.process_id;

        let mut copies = Vec::new();
        for (kind, out) in [("stdout", io.stdout), ("stderr", io.stderr)] {
            let Some(mut out) = out else { continue };
            let p = format!("/processes/{}/attaches/{}/{kind}", encode(&id), encode(&started.stream_id));
            let mut s = self.send("GET", &container(handle, &p), &[]).await?;
            copies.push(tokio::spawn(async move {
                match read_head(&mut s).await {
                    Ok(h) if h.status == 200 => {
                        if let Err(e) = tokio::io::copy_buf(&mut s, &mut out).await {
                            tracing::debug!("copying {kind}: {e}");
                        }
                        let _ = out.flush().await;
                    }
                    Ok(h) => tracing::warn!("{kind} stream refused with status {}", h.status),
                    Err(e) => tracing::warn!("{kind} stream: {e}"),
                }
            }));
        }

        let (tx, mut rx) = mpsc::unbounded_channel::<ProcessPayload>();
        let ctl = ProcessControl { id, tx };
        let (reader, mut writer) = tokio::io::split(r);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let Ok(mut line) = serde_json::to_vec(&msg) else { continue };
                line.push(b'\n');
                if writer.write_all(&line).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
        });
        if let Some(stdin) = io.stdin {
            tokio::spawn(copy_stdin(stdin, ctl.clone()));
        }
        // The inner BufReader still holds bytes read past the first line.
        let exit = tokio::spawn(async move {
            let mut reader = BufReader::new(reader);
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line).await? == 0 {
                    return Err(protocol("process stream ended without an exit status"));
                }
                let Ok(msg) = serde_json::from_slice::<ProcessPayload>(&line) else { continue };
                if let Some(e) = msg.error {
                    return Err(protocol(e));
                }
                if let Some(code) = msg.exit_status {
                    return Ok(code);
                }
            }
        });
        Ok(Process { ctl, exit, copies })
    }
}
