//! The in-container sshd (`celld-lifecycle sshd`) on the host, driven by the
//! real OpenSSH client (`ssh`, `scp`, `sftp`) and, for what that client cannot
//! send (a `signal` request), by a russh client. No container is involved: the
//! sshd runs as the test's user, with a temporary HOME.
//!
//! Needs the static binary (`make lifecycle`, or `CELLD_LIFECYCLE=path`) and
//! the OpenSSH client tools.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

fn lifecycle_bin() -> PathBuf {
    let p = std::env::var_os("CELLD_LIFECYCLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/celld-lifecycle"));
    if !p.exists() {
        panic!("{} is missing: run `make lifecycle` first (or set CELLD_LIFECYCLE)", p.display());
    }
    p
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "celld-sshd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-t", "ed25519", "-N", "", "-q", "-C", "test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client) is needed");
    assert!(st.success());
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts on `port`.
fn wait_port(port: u16, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Kills a child (ssh client, sshd) when dropped, even on panic.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An sshd on a port of its own, with its keys and HOME in a temp dir.
struct Sshd {
    port: u16,
    dir: TempDir,
    _child: Reaped,
}

impl Sshd {
    fn start() -> Self {
        let dir = TempDir::new("sshd");
        for k in ["host", "user", "other"] {
            keygen(&dir.path().join(k));
        }
        std::fs::create_dir(dir.path().join("home")).unwrap();
        let hostkey = std::fs::read_to_string(dir.path().join("host")).unwrap();
        let authkey = std::fs::read_to_string(dir.path().join("user.pub")).unwrap();
        let bin = lifecycle_bin();
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(&bin)
                .arg("sshd")
                .arg(format!("--address=127.0.0.1:{port}"))
                .env("SSHD_HOSTKEY", &hostkey)
                .env("SSHD_AUTHKEY", &authkey)
                .env("SSHD_EXTRA", "not for children")
                .env("HOME", dir.path().join("home"))
                .env("CELLD_SSHD_MARKER", "from-the-daemon")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("sshd.log")).unwrap())
                .spawn()
                .unwrap();
            let mut child = Reaped(child);
            if wait_port(port, Duration::from_secs(5)) {
                return Sshd { port, dir, _child: child };
            }
            // Lost the port to someone else: try another.
            let _ = child.0.kill();
        }
        panic!("sshd did not start: {}", std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default());
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// OpenSSH client options, after `first` (OpenSSH keeps the first value
    /// of an option, so overrides go first).
    fn opts(&self, port_flag: &str, key: &str, first: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = first.iter().map(|s| s.to_string()).collect();
        v.extend(
            [
                "-F",
                "/dev/null",
                port_flag,
                &self.port.to_string(),
                "-i",
                &self.dir.path().join(key).to_string_lossy(),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        v
    }

    fn ssh_cmd(&self, first: &[&str], command: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.opts("-p", "user", first)).arg("vcap@127.0.0.1").arg(command);
        c
    }

    fn ssh(&self, first: &[&str], command: &str) -> Output {
        self.ssh_cmd(first, command).stdin(Stdio::null()).output().unwrap()
    }

    fn scp(&self, first: &[&str], from: &str, to: &str) -> Output {
        Command::new("scp").args(self.opts("-P", "user", first)).arg(from).arg(to).output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sha256_file(p: &Path) -> String {
    Sha256::digest(std::fs::read(p).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough.
fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(n);
    v
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A process is gone once it is not there or is a zombie.
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_file(p: &Path, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(p)
            && s.ends_with('\n')
        {
            return s;
        }
        assert!(Instant::now() < end, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sshd_env_exit_status_and_streams() {
    let s = Sshd::start();
    let out = s.ssh(&[], "env");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let env = text(&out.stdout);
    assert!(env.contains("CELLD_SSHD_MARKER=from-the-daemon\n"), "{env}");
    assert!(!env.lines().any(|l| l.starts_with("SSHD_")), "sshd variables leaked: {env}");
    assert!(env.contains(&format!("HOME={}\n", s.home().display())), "{env}");

    let out = s.ssh(&[], "pwd; exit 3");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout).trim(), s.home().to_string_lossy());

    let out = s.ssh(&[], "echo to-stdout; echo to-stderr >&2");
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "to-stdout\n");
    assert_eq!(text(&out.stderr), "to-stderr\n");

    // Client env (SetEnv) reaches the command; stdin EOF ends `cat`.
    let mut child = s
        .ssh_cmd(&["-o", "SetEnv=GREETING=hello"], "cat; echo \"$GREETING\"")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"from stdin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "from stdin\nhello\n");
}

#[test]
fn sshd_refuses_a_key_it_does_not_know() {
    let s = Sshd::start();
    let out = Command::new("ssh")
        .args(s.opts("-p", "other", &[]))
        .arg("vcap@127.0.0.1")
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("Permission denied"), "{}", text(&out.stderr));
    // The right key with another user name is fine (any user name).
    let out = Command::new("ssh")
        .args(s.opts("-p", "user", &[]))
        .arg("anyone@127.0.0.1")
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn sshd_needs_its_keys() {
    let bin = lifecycle_bin();
    let out = Command::new(&bin).arg("sshd").env_remove("SSHD_HOSTKEY").env_remove("SSHD_AUTHKEY").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("SSHD_HOSTKEY"), "{}", text(&out.stderr));
    let dir = TempDir::new("keys");
    keygen(&dir.path().join("host"));
    let out = Command::new(&bin)
        .arg("sshd")
        .env("SSHD_HOSTKEY", std::fs::read_to_string(dir.path().join("host")).unwrap())
        .env("SSHD_AUTHKEY", "ssh-ed25519 garbage")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("SSHD_AUTHKEY"), "{}", text(&out.stderr));
}

#[test]
fn sshd_pty_size_and_window_change() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: needs `script` (util-linux)");
        return;
    }
    let s = Sshd::start();
    // `script` gives ssh a terminal of 100x30; a second later it becomes
    // 120x40 and ssh sends window-change.
    let ssh: Vec<String> = s.opts("-p", "user", &["-tt"]).into_iter().map(|a| format!("'{a}'")).collect();
    let inner = format!(
        "stty cols 100 rows 30; (sleep 1; stty cols 120 rows 40 < /dev/tty) & \
         ssh {} vcap@127.0.0.1 'echo TERM=$TERM; stty size; sleep 2; stty size; tty; exit 4'; echo rc=$?",
        ssh.join(" ")
    );
    let out = Command::new("script").args(["-qec", &inner, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    let o = text(&out.stdout).replace('\r', "");
    assert!(o.contains("TERM=xterm"), "{o}");
    let sizes: Vec<&str> =
        o.lines().filter(|l| l.trim_start_matches('\0').chars().all(|c| c.is_ascii_digit() || c == ' ')).collect();
    assert!(o.contains("30 100\n") && o.contains("40 120\n"), "sizes {sizes:?} in {o}");
    assert!(o.contains("/dev/pts/"), "{o}");
    assert!(o.contains("rc=4"), "{o}");
}

#[test]
fn sshd_scp_both_protocols_keep_bytes_and_mode() {
    let s = Sshd::start();
    let local = s.dir.path().join("local.bin");
    std::fs::write(&local, random_bytes(5 * 1024 * 1024, 0x9e3779b97f4a7c15)).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o751)).unwrap();
    let want = sha256_file(&local);
    for (proto, flags) in [("sftp", &[][..]), ("legacy", &["-O"][..])] {
        let remote = format!("up-{proto}.bin");
        let out = s.scp(flags, &local.to_string_lossy(), &format!("vcap@127.0.0.1:{remote}"));
        assert!(out.status.success(), "scp {proto} up: {}", text(&out.stderr));
        assert_eq!(sha256_file(&s.home().join(&remote)), want, "{proto} upload");
        assert_eq!(mode_of(&s.home().join(&remote)), 0o751, "{proto} upload mode");
        let back = s.dir.path().join(format!("back-{proto}.bin"));
        let out = s.scp(flags, &format!("vcap@127.0.0.1:{remote}"), &back.to_string_lossy());
        assert!(out.status.success(), "scp {proto} down: {}", text(&out.stderr));
        assert_eq!(sha256_file(&back), want, "{proto} download");
        assert_eq!(mode_of(&back), 0o751, "{proto} download mode");
    }
    // Legacy recursive with -p: directories, files and times.
    let tree = s.dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"alpha").unwrap();
    std::fs::write(tree.join("sub/b.txt"), b"beta").unwrap();
    let out = s.scp(&["-O", "-r", "-p"], &tree.to_string_lossy(), "vcap@127.0.0.1:");
    assert!(out.status.success(), "scp -O -r up: {}", text(&out.stderr));
    assert_eq!(std::fs::read(s.home().join("tree/sub/b.txt")).unwrap(), b"beta");
    // -p carries times in whole seconds.
    let t = |p: &Path| std::fs::metadata(p).unwrap().mtime();
    assert_eq!(t(&s.home().join("tree/a.txt")), t(&tree.join("a.txt")));
    let down = s.dir.path().join("down");
    std::fs::create_dir(&down).unwrap();
    let out = s.scp(&["-O", "-r"], "vcap@127.0.0.1:tree", &down.to_string_lossy());
    assert!(out.status.success(), "scp -O -r down: {}", text(&out.stderr));
    assert_eq!(std::fs::read(down.join("tree/a.txt")).unwrap(), b"alpha");
    // A missing remote file is an error, in both protocols.
    for flags in [&[][..], &["-O"][..]] {
        let out = s.scp(flags, "vcap@127.0.0.1:no-such-file", &down.to_string_lossy());
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains("No such file"), "{}", text(&out.stderr));
    }
}

#[test]
fn sshd_sftp_batch() {
    let s = Sshd::start();
    let local = s.dir.path().join("put.bin");
    std::fs::write(&local, random_bytes(300_000, 7)).unwrap();
    let got = s.dir.path().join("got.bin");
    let batch = s.dir.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "pwd\nput {} remote.bin\nls\nmkdir d\nrename remote.bin d/moved.bin\nls -l d\nget d/moved.bin {}\n",
            local.display(),
            got.display()
        ),
    )
    .unwrap();
    let out = Command::new("sftp")
        .args(s.opts("-P", "user", &[]))
        .arg("-b")
        .arg(&batch)
        .arg("vcap@127.0.0.1")
        .output()
        .unwrap();
    let o = text(&out.stdout);
    assert!(out.status.success(), "{o}\n{}", text(&out.stderr));
    let home = std::fs::canonicalize(s.home()).unwrap();
    assert!(o.contains(&format!("Remote working directory: {}", home.display())), "{o}");
    assert!(o.contains("remote.bin"), "{o}");
    assert!(o.contains("moved.bin"), "{o}");
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&local).unwrap());
    assert!(s.home().join("d/moved.bin").exists());
    // A failing command fails the batch.
    std::fs::write(&batch, "get no-such-file\n").unwrap();
    let out = Command::new("sftp")
        .args(s.opts("-P", "user", &[]))
        .arg("-b")
        .arg(&batch)
        .arg("vcap@127.0.0.1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not found"), "{}", text(&out.stderr));
}

/// A TCP server that answers every connection with `greeting` and then
/// reports what it read. A thread per connection: a probe that lingers must
/// not hold up the exchange behind it.
fn greeter(greeting: &'static [u8]) -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = c.write_all(greeting);
                let _ = c.shutdown(std::net::Shutdown::Write);
                let mut got = Vec::new();
                let _ = c.read_to_end(&mut got);
                // Probes that only connect (waiting for a forwarded port) say nothing.
                if !got.is_empty() {
                    let _ = tx.send(got);
                }
            });
        }
    });
    (port, rx)
}

/// Connects to a forwarded port, sends `msg`, half-closes, reads to the end.
fn exchange(port: u16, msg: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(msg).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    if let Err(e) = c.read_to_end(&mut got) {
        panic!("port {port}: no end of stream after sending {msg:?} (read {got:?}): {e}");
    }
    got
}

#[test]
fn sshd_local_forward() {
    let s = Sshd::start();
    let (target, seen) = greeter(b"hello through -L\n");
    let local = free_port();
    let child = s
        .ssh_cmd(&["-N", "-o", "ExitOnForwardFailure=yes", "-L", &format!("{local}:127.0.0.1:{target}")], "")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _client = Reaped(child);
    assert!(wait_port(local, Duration::from_secs(5)));
    assert_eq!(exchange(local, b"ping"), b"hello through -L\n");
    assert_eq!(seen.recv_timeout(Duration::from_secs(5)).unwrap(), b"ping");
    // A target that refuses: the channel is refused, the client closes.
    // Port 1: below the ephemeral range, so no other test's listener can take
    // it the way a just-freed ephemeral port can be taken.
    let dead = 1;
    assert!(TcpStream::connect(("127.0.0.1", dead)).is_err(), "something listens on 127.0.0.1:{dead}");
    let local2 = free_port();
    let child = s
        .ssh_cmd(&["-o", "LogLevel=INFO", "-N", "-L", &format!("{local2}:127.0.0.1:{dead}")], "")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client = Reaped(child);
    assert!(wait_port(local2, Duration::from_secs(5)));
    assert_eq!(exchange(local2, b""), b"");
    let _ = client.0.kill();
    let mut err = String::new();
    let _ = client.0.stderr.take().unwrap().read_to_string(&mut err);
    assert!(err.contains("connect failed"), "{err}");
}

#[test]
fn sshd_remote_forward_lives_with_the_connection() {
    let s = Sshd::start();
    let (target, seen) = greeter(b"hello through -R\n");
    let child = s
        .ssh_cmd(&["-o", "LogLevel=INFO", "-N", "-R", &format!("0:127.0.0.1:{target}")], "")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client = Reaped(child);
    // "Allocated port N for remote forward to …": the sshd chose N.
    let mut lines = BufReader::new(client.0.stderr.take().unwrap()).lines();
    let port: u16 = loop {
        let line = lines.next().expect("ssh said no allocated port").unwrap();
        if let Some(rest) = line.strip_prefix("Allocated port ") {
            break rest.split(' ').next().unwrap().parse().unwrap();
        }
    };
    assert_eq!(exchange(port, b"pong"), b"hello through -R\n");
    assert_eq!(seen.recv_timeout(Duration::from_secs(5)).unwrap(), b"pong");
    // The connection ends: so does the listener.
    let _ = client.0.kill();
    let _ = client.0.wait();
    let end = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < end, "port {port} still open after the connection ended");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sshd_exit_signal() {
    let s = Sshd::start();
    // OpenSSH's client exits 255 without exit-status; -v shows the request.
    let out = s.ssh(&["-v"], "kill -KILL $$");
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(err.contains("rtype exit-signal"), "{err}");
}

#[test]
fn sshd_hangs_up_when_the_client_goes() {
    let s = Sshd::start();
    for (tag, flags) in [("pipes", &[][..]), ("pty", &["-tt"][..])] {
        let pidfile = s.home().join(format!("pid-{tag}"));
        let child = s
            .ssh_cmd(flags, &format!("echo $$ > {}; sleep 100; echo not reached", pidfile.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut client = Reaped(child);
        let pid: i32 = wait_file(&pidfile, Duration::from_secs(5)).trim().parse().unwrap();
        assert!(!process_gone(pid));
        // Not a polite exit: the client just dies.
        let _ = client.0.kill();
        let _ = client.0.wait();
        let end = Instant::now() + Duration::from_secs(5);
        while !process_gone(pid) {
            assert!(Instant::now() < end, "{tag}: shell {pid} survived its client");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A russh client that trusts any host key (the sshd was started just now
/// with a key of this test's making).
struct Client;

impl russh::client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, russh::Error> {
        Ok(true)
    }
}

async fn russh_session(s: &Sshd) -> russh::client::Handle<Client> {
    let key = russh::keys::load_secret_key(s.dir.path().join("user"), None).unwrap();
    let config = Arc::new(russh::client::Config::default());
    let mut h = russh::client::connect(config, ("127.0.0.1", s.port), Client).await.unwrap();
    let auth =
        h.authenticate_publickey("vcap", russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None)).await.unwrap();
    assert!(auth.success());
    h
}

/// Collects a channel's output until it closes: (stdout, stderr, exit status,
/// exit signal).
async fn drain(ch: &mut russh::Channel<russh::client::Msg>) -> (Vec<u8>, Vec<u8>, Option<u32>, Option<russh::Sig>) {
    let (mut out, mut err, mut code, mut sig) = (Vec::new(), Vec::new(), None, None);
    while let Some(m) = ch.wait().await {
        match m {
            russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
            russh::ChannelMsg::ExtendedData { data, ext: 1 } => err.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
            russh::ChannelMsg::ExitSignal { signal_name, .. } => sig = Some(signal_name),
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    (out, err, code, sig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_signal_request_and_replies() {
    let s = Sshd::start();
    let h = russh_session(&s).await;

    // A `signal` request reaches the process group: the shell's trap runs.
    let mut ch = h.channel_open_session().await.unwrap();
    ch.set_env(true, "WHO", "russh").await.unwrap();
    ch.exec(true, "trap 'echo got TERM from $WHO; exit 7' TERM; echo ready; while :; do sleep 0.05; done")
        .await
        .unwrap();
    let mut out = Vec::new();
    let (mut success, mut code) = (0, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, ch.wait()).await {
        match m {
            russh::ChannelMsg::Success => success += 1,
            russh::ChannelMsg::Data { data } => {
                out.extend_from_slice(&data);
                if out.ends_with(b"ready\n") {
                    ch.signal(russh::Sig::TERM).await.unwrap();
                }
            }
            russh::ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    // env and exec both asked for a reply, and got one each.
    assert_eq!(success, 2);
    assert_eq!(text(&out), "ready\ngot TERM from russh\n");
    assert_eq!(code, Some(7));

    // exit-signal with its name.
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(false, "kill -USR2 $$").await.unwrap();
    let (_, _, code, sig) = drain(&mut ch).await;
    assert_eq!(code, None);
    assert!(matches!(&sig, Some(russh::Sig::Custom(n)) if n == "USR2"), "{sig:?}");

    // Refusals: an unknown subsystem, a second command on one channel.
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "nope").await.unwrap();
    assert!(matches!(ch.wait().await, Some(russh::ChannelMsg::Failure)));
    ch.exec(true, "echo once").await.unwrap();
    ch.exec(true, "echo twice").await.unwrap();
    let mut replies = Vec::new();
    let mut out = Vec::new();
    while let Some(m) = ch.wait().await {
        match m {
            russh::ChannelMsg::Success => replies.push(true),
            russh::ChannelMsg::Failure => replies.push(false),
            russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    assert_eq!(replies, vec![true, false]);
    assert_eq!(text(&out), "once\n");

    // Closing a channel (the connection stays) hangs up what it runs.
    let pidfile = s.home().join("pid-close");
    let ch = h.channel_open_session().await.unwrap();
    ch.exec(false, format!("echo $$ > {}; sleep 100", pidfile.display())).await.unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let pid: i32 = loop {
        if let Ok(t) = std::fs::read_to_string(&pidfile)
            && t.ends_with('\n')
        {
            break t.trim().parse().unwrap();
        }
        assert!(Instant::now() < end, "no pid file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ch.close().await.unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while !process_gone(pid) {
        assert!(Instant::now() < end, "{pid} survived its channel");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // tcpip-forward with port 0 gets a port; cancelling closes it.
    let port = h.tcpip_forward("127.0.0.1", 0).await.unwrap();
    assert!(port > 0);
    h.cancel_tcpip_forward("127.0.0.1", port).await.unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port as u16)).is_ok() {
        assert!(Instant::now() < end, "cancelled forward still listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
