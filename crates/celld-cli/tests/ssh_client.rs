//! `cellctl ssh`'s transport (`celld_cli::ssh`) against a real OpenSSH server:
//! exec with exit status and both streams, stdin, signals, a pty and its
//! window changes, the host key check, `-L` forwards and `-N`.
//!
//! Each test starts its own `/usr/sbin/sshd -D -e` (openssh-server, installed
//! by `make deps`) on a free loopback port, with a throwaway host key and one
//! authorized client key; it logs in as root with that key. Runs as root.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use celld_cli::ssh::{
    self, Connection, Exit, LocalForward, PtyRequest, SessionOpts, SshAuth, SshError, SshTarget, WindowSize,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "celld-ssh-client-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nobody listens on (just now).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "celld-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen (openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

/// What `ssh-keygen -l` says of a public key: "SHA256:…".
fn keygen_fingerprint(pub_path: &Path) -> String {
    let out = Command::new("ssh-keygen").arg("-lf").arg(pub_path).output().expect("ssh-keygen -l");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace().nth(1).expect("fingerprint field").to_string()
}

/// An OpenSSH server in the foreground; killed (and reaped) on drop, panics included.
struct Sshd {
    child: Child,
    port: u16,
    /// `ssh-keygen -l` of its host key.
    host_fp: String,
    client_key: PathBuf,
    dir: TempDir,
}

impl Sshd {
    fn start() -> Sshd {
        assert!(nix::unistd::geteuid().is_root(), "these tests run sshd as root: run them as root");
        assert!(Path::new("/usr/sbin/sshd").exists(), "no /usr/sbin/sshd: run `make deps` (openssh-server)");
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd (sshd's privilege separation dir)");
        let dir = TempDir::new();
        let d = &dir.0;
        keygen(&d.join("host"));
        keygen(&d.join("client"));
        std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).expect("authorized_keys");
        let config = format!(
            "ListenAddress 127.0.0.1\n\
             HostKey {d}/host\n\
             PidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             AllowTcpForwarding yes\n\
             PrintMotd no\n\
             LogLevel VERBOSE\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).expect("write sshd_config");
        let log = std::fs::File::create(d.join("sshd.log")).expect("sshd.log");
        let port = free_port();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let host_fp = keygen_fingerprint(&d.join("host.pub"));
        let mut sshd = Sshd { child, port, host_fp, client_key: d.join("client"), dir };
        sshd.wait_ready();
        sshd
    }

    /// Until it answers with its SSH banner.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sshd exited ({status}):\n{}", self.log());
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut banner = [0u8; 8];
                if s.read_exact(&mut banner).is_ok() && banner.starts_with(b"SSH-2.0") {
                    let _ = s.write_all(b"SSH-2.0-probe\r\n");
                    return;
                }
            }
            assert!(Instant::now() < deadline, "sshd did not answer on port {}:\n{}", self.port, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("sshd.log")).unwrap_or_default()
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn target(&self) -> SshTarget {
        SshTarget {
            addr: self.addr(),
            user: "root".into(),
            auth: SshAuth::KeyFile(self.client_key.clone()),
            host_fingerprint: Some(self.host_fp.clone()),
        }
    }

    async fn connect(&self) -> Connection {
        match ssh::connect(&self.target()).await {
            Ok(c) => c,
            Err(e) => panic!("connect: {e}\nsshd log:\n{}", self.log()),
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("timed out")
}

#[tokio::test]
async fn exec_gives_stdout_stderr_and_exit_status() {
    let sshd = Sshd::start();
    let conn = sshd.connect().await;
    assert_eq!(conn.host_fingerprint(), sshd.host_fp, "the fingerprint seen is ssh-keygen's");
    let out = within(20, ssh::exec(&conn, "echo hi; echo err >&2; exit 3", b"")).await.expect("exec");
    assert_eq!((text(&out.stdout), text(&out.stderr)), ("hi\n".into(), "err\n".into()));
    assert_eq!(out.exit, Exit { status: Some(3), ..Exit::default() });
    assert_eq!(out.exit.code(), 3);
    // Several sessions on one connection; exit 0.
    let out = within(20, ssh::exec(&conn, "true", b"")).await.expect("exec true");
    assert_eq!(out.exit.code(), 0);
    conn.close().await;
}

#[tokio::test]
async fn stdin_is_forwarded_then_closed() {
    let sshd = Sshd::start();
    let conn = sshd.connect().await;
    // `cat` ends only when it sees EOF: stdin's end reached the remote side.
    let out = within(20, ssh::exec(&conn, "cat", b"hello\nworld")).await.expect("exec cat");
    assert_eq!((text(&out.stdout).as_str(), out.exit.code()), ("hello\nworld", 0));
    // Megabytes both ways (windows and backpressure).
    let big: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = within(60, ssh::exec(&conn, "cat", &big)).await.expect("exec cat big");
    assert_eq!(out.stdout.len(), big.len());
    assert!(out.stdout == big, "the bytes came back changed");
    let out = within(60, ssh::exec(&conn, "wc -c", &big)).await.expect("exec wc");
    assert_eq!(text(&out.stdout).trim(), big.len().to_string());
}

#[tokio::test]
async fn a_signal_ends_the_command_as_cf_reports_it() {
    let sshd = Sshd::start();
    let conn = sshd.connect().await;
    let out = within(20, ssh::exec(&conn, "kill -TERM $$", b"")).await.expect("exec kill");
    assert_eq!(out.exit.signal.as_deref(), Some("TERM"), "{:?}", out.exit);
    assert_eq!(out.exit.code(), 143);
    assert_eq!(out.exit.signal_notice().as_deref(), Some("Process terminated by signal: TERM. Exited with 143"));
}

#[tokio::test]
async fn host_key_is_checked_before_logging_in() {
    let sshd = Sshd::start();
    // An unauthorized key: had the login been tried, this would be AuthFailed.
    let stranger = sshd.dir.0.join("stranger");
    keygen(&stranger);
    let wrong = format!("SHA256:{}", "A".repeat(43));
    let target =
        SshTarget { auth: SshAuth::KeyFile(stranger.clone()), host_fingerprint: Some(wrong.clone()), ..sshd.target() };
    match within(20, ssh::connect(&target)).await {
        Err(e @ SshError::HostKeyMismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&wrong) && msg.contains(&sshd.host_fp), "names both fingerprints: {msg}");
        }
        other => panic!("want HostKeyMismatch, got {other:?}"),
    }
    // No fingerprint to check against: refused too.
    let target = SshTarget { host_fingerprint: Some(String::new()), ..sshd.target() };
    assert!(matches!(ssh::connect(&target).await, Err(SshError::NoFingerprint { .. })));
    // cf's other spellings of the right fingerprint, and -k.
    let bare = sshd.host_fp.trim_start_matches("SHA256:").to_string();
    for fp in [Some(bare), None] {
        let conn = ssh::connect(&SshTarget { host_fingerprint: fp, ..sshd.target() }).await.expect("connect");
        assert_eq!(ssh::exec(&conn, "exit 0", b"").await.expect("exec").exit.code(), 0);
    }
    // The right host, the wrong key: the login is refused.
    let target = SshTarget { auth: SshAuth::KeyFile(stranger), ..sshd.target() };
    assert!(matches!(ssh::connect(&target).await, Err(SshError::AuthFailed { .. })));
}

#[tokio::test]
async fn connection_errors_are_clear() {
    let target = SshTarget {
        addr: format!("127.0.0.1:{}", free_port()),
        user: "root".into(),
        auth: SshAuth::Password("x".into()),
        host_fingerprint: None,
    };
    let e = ssh::connect(&target).await.expect_err("nobody listens");
    assert!(matches!(e, SshError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains(&target.addr), "{e}");
    let target = SshTarget { auth: SshAuth::KeyFile("/nonexistent/key".into()), ..target };
    assert!(matches!(ssh::connect(&target).await, Err(SshError::Key { .. })));
    let target = SshTarget { host_fingerprint: Some("ab:cd".into()), ..target };
    assert!(matches!(ssh::connect(&target).await, Err(SshError::BadFingerprint(_))));
}

/// A TCP server that reads a request to its end, then answers
/// "got N bytes: " and the request reversed, then closes.
async fn reverse_server() -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut req = Vec::new();
                if s.read_to_end(&mut req).await.is_err() {
                    return;
                }
                req.reverse();
                let _ = s.write_all(format!("got {} bytes: ", req.len()).as_bytes()).await;
                let _ = s.write_all(&req).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, task)
}

/// Sends `req` to `addr`, half-closes, reads the whole answer.
async fn ask(addr: std::net::SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the forward");
    s.write_all(req).await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.expect("read");
    resp
}

fn expected_answer(req: &[u8]) -> Vec<u8> {
    let mut rev = req.to_vec();
    rev.reverse();
    let mut want = format!("got {} bytes: ", req.len()).into_bytes();
    want.extend(rev);
    want
}

#[tokio::test]
async fn local_forward_relays_with_half_close() {
    let sshd = Sshd::start();
    let (port, _server) = reverse_server().await;
    let conn = sshd.connect().await;
    let spec: LocalForward = format!("127.0.0.1:0:127.0.0.1:{port}").parse().expect("spec");
    let fwd = conn.forward_local(&spec).await.expect("forward");
    let addr = fwd.local_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let small = ask(addr, b"hello").await;
    assert_eq!(text(&small), "got 5 bytes: olleh");
    // Concurrent connections, one of them megabytes.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let (a, b, c) = within(60, async { tokio::join!(ask(addr, &big), ask(addr, b"abc"), ask(addr, b"")) }).await;
    assert!(a == expected_answer(&big), "big answer: {} bytes", a.len());
    assert_eq!((text(&b).as_str(), text(&c).as_str()), ("got 3 bytes: cba", "got 0 bytes: "));
    // A remote port nobody listens on: the local connection is just closed
    // (reset, as it holds unread bytes).
    let dead = conn.forward_local(&LocalForward::new(0, "127.0.0.1", free_port())).await.expect("forward");
    let mut s = tokio::net::TcpStream::connect(dead.local_addr()).await.expect("connect");
    s.write_all(b"x").await.expect("write");
    let mut resp = Vec::new();
    match within(20, s.read_to_end(&mut resp)).await {
        Ok(_) => assert!(resp.is_empty()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // The listener goes with the Forwarding.
    drop(fwd);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening after drop");
    // A taken local port is an error naming it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = LocalForward::new(taken.local_addr().expect("addr").port(), "127.0.0.1", port);
    assert!(matches!(conn.forward_local(&busy).await, Err(SshError::Listen { .. })));
}

#[tokio::test]
async fn session_forwards_live_while_the_command_runs() {
    let sshd = Sshd::start();
    let (port, _server) = reverse_server().await;
    let conn = sshd.connect().await;
    let local = free_port();
    let opts = SessionOpts {
        command: Some("sleep 2; echo done".into()),
        forwards: vec![LocalForward::new(local, "127.0.0.1", port)],
        keepalive: Some(Duration::from_millis(200)),
        ..SessionOpts::default()
    };
    let mut stdout = Vec::new();
    let session = ssh::run_session(&conn, opts, tokio::io::empty(), &mut stdout, tokio::io::sink());
    let client = async {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], local));
        let deadline = Instant::now() + Duration::from_secs(2);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "the forward never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ask(addr, b"ping").await
    };
    let (exit, answer) = within(30, async { tokio::join!(session, client) }).await;
    assert_eq!(exit.expect("session").code(), 0);
    assert_eq!((text(&answer).as_str(), text(&stdout).as_str()), ("got 4 bytes: gnip", "done\n"));
}

#[tokio::test]
async fn skip_remote_execution_keeps_forwards_until_the_connection_ends() {
    let sshd = Sshd::start();
    let (port, _server) = reverse_server().await;
    let conn = sshd.connect().await;
    let local = free_port();
    let opts = SessionOpts {
        no_command: true,
        forwards: vec![LocalForward::new(local, "127.0.0.1", port)],
        ..SessionOpts::default()
    };
    let waiting = ssh::run_session(&conn, opts, tokio::io::empty(), tokio::io::sink(), tokio::io::sink());
    let other = async {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], local));
        let deadline = Instant::now() + Duration::from_secs(2);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "the forward never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answer = ask(addr, b"-N").await;
        // Ends the connection from the far side: the shell's parent is this
        // connection's sshd session process.
        let _ = ssh::exec(&conn, "kill -9 $PPID", b"").await;
        answer
    };
    let (ended, answer) = within(30, async { tokio::join!(waiting, other) }).await;
    assert_eq!(text(&answer), "got 2 bytes: N-");
    assert!(matches!(ended, Err(SshError::ConnectionLost { .. })), "{ended:?}");
    assert!(conn.is_closed());
}

#[tokio::test]
async fn pty_gets_term_size_and_window_changes() {
    let sshd = Sshd::start();
    let conn = sshd.connect().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let opts = SessionOpts {
        command: Some("tty; stty size; echo $TERM; sleep 2; stty size".into()),
        pty: Some(PtyRequest { term: "xterm-256color".into(), cols: 100, rows: 30 }),
        resize: Some(rx),
        ..SessionOpts::default()
    };
    // The local terminal is resized while `sleep` runs.
    let _resize = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ = tx.send(WindowSize { cols: 120, rows: 40 }).await;
        tx
    });
    // A terminal's stdin does not end: OpenSSH closes the pty's master on EOF,
    // and a later window-change would not reach it.
    let (_typing, stdin) = tokio::io::duplex(64);
    let mut stdout = Vec::new();
    let exit = within(30, ssh::run_session(&conn, opts, stdin, &mut stdout, tokio::io::sink())).await.expect("session");
    let out = text(&stdout);
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    assert!(lines.first().is_some_and(|l| l.starts_with("/dev/pts/")), "{out:?}");
    assert_eq!(lines.get(1..4), Some(&["30 100", "xterm-256color", "40 120"][..]), "{out:?}");
    assert_eq!(exit.code(), 0);
}

#[tokio::test]
async fn shell_reads_commands_from_stdin() {
    let sshd = Sshd::start();
    let conn = sshd.connect().await;
    let mut stdout = Vec::new();
    let script: &[u8] = b"echo from-shell\nexit 7\n";
    let exit = within(20, ssh::run_session(&conn, SessionOpts::default(), script, &mut stdout, tokio::io::sink()))
        .await
        .expect("shell");
    assert_eq!((text(&stdout).as_str(), exit.code()), ("from-shell\n", 7));
}
