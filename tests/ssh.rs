//! `cf ssh` end to end: the real OpenSSH client binaries (`ssh`, `scp`,
//! `sftp`) through celld's ssh proxy into the sshd of a real app instance
//! pushed to `celld --local`, with one-time codes from `cellctl ssh-code`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::local::*;
use common::outside::OutsideNet;

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello");
const T: Duration = Duration::from_secs(90);

/// OpenSSH, logging in with a password it reads from $CELLD_TEST_CODE
/// through SSH_ASKPASS (no terminal needed).
struct Ssh<'a> {
    l: &'a Local,
    askpass: PathBuf,
}

impl<'a> Ssh<'a> {
    fn new(l: &'a Local) -> Self {
        let askpass = l.d.dir.join("askpass.sh");
        std::fs::write(&askpass, "#!/bin/sh\nprintf '%s\\n' \"$CELLD_TEST_CODE\"\n").expect("askpass");
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).expect("chmod askpass");
        Self { l, askpass }
    }

    fn port(&self) -> &str {
        self.l.ssh.rsplit(':').next().unwrap_or("2222")
    }

    fn code(&self) -> String {
        let code = self.l.ok(&["ssh-code"]).trim().to_string();
        assert!(code.len() >= 10 && !code.contains(char::is_whitespace), "ssh-code printed {code:?}");
        code
    }

    /// `program` (ssh, scp or sftp) with the proxy's port and a password login.
    fn command(&self, program: &str, code: &str) -> Command {
        let mut c = Command::new(program);
        let port_flag = if program == "ssh" { "-p" } else { "-P" };
        c.args([port_flag, self.port()])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"])
            .args(["-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=10"])
            .env("SSH_ASKPASS", &self.askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .env("CELLD_TEST_CODE", code)
            .stdin(Stdio::null());
        c
    }

    /// `ssh USER@127.0.0.1 ARGS…` with a fresh code.
    fn run(&self, user: &str, args: &[&str]) -> Output {
        self.run_code(user, &self.code(), args)
    }

    fn run_code(&self, user: &str, code: &str, args: &[&str]) -> Output {
        let mut c = self.command("ssh", code);
        c.arg(format!("{user}@127.0.0.1")).args(args);
        c.output().expect("run ssh")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn explain(o: &Output) -> String {
    format!("exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}", o.status.code(), text(&o.stdout), text(&o.stderr))
}

/// Pushes examples/hello with ssh enabled and `instances` instances; its guid.
fn push_hello(l: &Local, instances: &str) -> String {
    l.ok(&["push", HELLO, "-i", instances, "-m", "64M"]);
    l.wait_instances("hello", "dev", "instances running", T, all_running(instances.parse().unwrap_or(1)));
    let v = l.app_json("hello", "dev");
    let guid = v["app"]["guid"].as_str().unwrap_or_default().to_string();
    assert!(!guid.is_empty(), "app --json has no guid: {v}");
    guid
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// `ssh -N -L` running in the background until dropped.
struct Forward(Child);

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn forward(s: &Ssh, user: &str, spec: &str, local: u16) -> Forward {
    let child = s
        .command("ssh", &s.code())
        .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L", spec])
        .arg(format!("{user}@127.0.0.1"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh -L");
    let mut f = Forward(child);
    wait_for("the -L listener", Duration::from_secs(15), || {
        if let Ok(Some(status)) = f.0.try_wait() {
            let mut err = String::new();
            if let Some(e) = f.0.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("ssh -L exited {status}: {err}");
        }
        listening(local)
    });
    f
}

/// Whether something on this host listens on TCP `port`, from /proc/net/tcp*:
/// a probe connection would be forwarded, and a one-shot server at the far
/// end (`nc -l`) would take it for the real one.
fn listening(port: u16) -> bool {
    let entry = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).unwrap_or_default().lines().skip(1).any(|line| {
            let mut cols = line.split_whitespace().skip(1);
            let (local, state) = (cols.next().unwrap_or_default(), cols.nth(1).unwrap_or_default());
            local.ends_with(&entry) && state == "0A"
        })
    })
}

/// Reads what a TCP service sends after `request`.
fn exchange(port: u16, request: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    text(&buf)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    text(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Logins, codes, refusals and their records; exec semantics; ptys.
#[test]
fn ssh_logins_commands_and_ptys() {
    require_local!();
    let l = Local::start(&[]);
    let guid = push_hello(&l, "2");
    let s = Ssh::new(&l);
    let user0 = format!("cf:{guid}/0");

    // env through the proxy: the app's environment, instance 0.
    let o = s.run(&user0, &["env"]);
    assert!(o.status.success(), "ssh env: {}", explain(&o));
    let env = text(&o.stdout);
    assert!(env.contains("VCAP_APPLICATION="), "{env}");
    assert!(env.contains("INSTANCE_INDEX=0"), "{env}");
    assert!(!env.contains("SSHD_HOSTKEY") && !env.contains("PRIVATE KEY"), "keys leaked into the session: {env}");
    // /1, by name, reaches the second instance.
    let o = s.run("cf:hello/1", &["echo", "$INSTANCE_INDEX"]);
    assert_eq!(text(&o.stdout).trim(), "1", "{}", explain(&o));

    // A code is good once.
    let code = s.code();
    assert!(s.run_code(&user0, &code, &["true"]).status.success());
    let again = s.run_code(&user0, &code, &["true"]);
    assert_eq!(again.status.code(), Some(255), "a used code must be refused: {}", explain(&again));
    // Wrong code, unknown app, no such index, a user of no known form.
    for (user, code) in [
        (user0.clone(), "not-a-code".to_string()),
        ("cf:no-such-app/0".to_string(), s.code()),
        (format!("cf:{guid}/7"), s.code()),
        ("root".to_string(), s.code()),
    ] {
        let o = s.run_code(&user, &code, &["true"]);
        assert_eq!(o.status.code(), Some(255), "{user} must be refused: {}", explain(&o));
    }

    // The ciphers: AES-GCM unless --ssh-ciphers adds chacha20-poly1305, and
    // which one a session used (the client prefers chacha20 when offered).
    let mut c = s.command("ssh", &s.code());
    c.args(["-v", "-c", "chacha20-poly1305@openssh.com", &format!("{user0}@127.0.0.1"), "true"]);
    let o = c.output().expect("run ssh");
    assert_eq!(o.status.code(), Some(255), "chacha20 is not offered by default: {}", explain(&o));
    assert!(text(&o.stderr).contains("no matching cipher found"), "{}", explain(&o));
    let mut c = s.command("ssh", &s.code());
    c.args(["-v", &format!("{user0}@127.0.0.1"), "true"]);
    let o = c.output().expect("run ssh");
    assert!(o.status.success(), "{}", explain(&o));
    assert!(text(&o.stderr).contains("cipher: aes128-gcm@openssh.com"), "{}", explain(&o));

    // Exit status, stderr apart from stdout.
    let o = s.run(&user0, &["echo out; echo err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
    assert_eq!(text(&o.stdout), "out\n");
    assert_eq!(text(&o.stderr), "err\n");

    // A killed command ends the session with exit-signal (OpenSSH: 255).
    let o = s.run(&user0, &["kill -KILL $$"]);
    assert_eq!(o.status.code(), Some(255), "{}", explain(&o));

    // -tt: a pty whose size is the client's, following a resize. `script`
    // gives ssh a terminal of 30x100, then 40x120 after the first line.
    let code = s.code();
    let cmd = format!(
        "stty rows 30 cols 100; (sleep 2; stty rows 40 cols 120 </dev/tty) & \
         ssh -tt -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
         -o PreferredAuthentications=password -o PubkeyAuthentication=no {user0}@127.0.0.1 \
         'stty size; tty; sleep 4; stty size'",
        s.port()
    );
    let o = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("SSH_ASKPASS", &s.askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .env("CELLD_TEST_CODE", &code)
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let out = text(&o.stdout);
    assert!(out.contains("30 100"), "pty size at start: {}", explain(&o));
    assert!(out.contains("/dev/pts/"), "a pty: {}", explain(&o));
    assert!(out.contains("40 120"), "pty size after the resize: {}", explain(&o));

    // Disconnecting kills the remote shell (SIGHUP).
    let mut child = s
        .command("ssh", &s.code())
        .args(["-tt", &format!("{user0}@127.0.0.1"), "echo $$ > /home/vcap/tmp-shell.pid; exec sleep 300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    let mut pid = String::new();
    wait_for("the remote shell's pid file", Duration::from_secs(15), || {
        pid = text(&s.run(&user0, &["cat /home/vcap/tmp-shell.pid 2>/dev/null"]).stdout).trim().to_string();
        !pid.is_empty()
    });
    let _ = child.kill();
    let _ = child.wait();
    wait_for("the remote shell to die with the connection", Duration::from_secs(15), || {
        let o = s.run(&user0, &[&format!("kill -0 {pid} 2>/dev/null && echo alive || echo gone")]);
        text(&o.stdout).trim() == "gone"
    });

    // Everything above is on record.
    let events = l.ok(&["events", "hello"]);
    assert!(events.contains("audit.app.ssh-authorized"), "{events}");
    assert!(events.contains("audit.app.ssh-unauthorized"), "{events}");
    let logs = l.ok(&["logs", "hello", "--recent"]);
    assert!(logs.contains("Successful remote access by 127.0.0.1"), "{logs}");
    assert!(logs.contains("Remote access ended for 127.0.0.1"), "{logs}");

    // Disabled for the app: refused at once (as CC checks at each login).
    l.ok(&["disable-ssh", "hello"]);
    let o = s.run(&user0, &["true"]);
    assert_eq!(o.status.code(), Some(255), "ssh to an app with ssh disabled: {}", explain(&o));
    l.finish();
}

/// Files both ways (scp in both protocols, sftp) and port forwarding.
#[test]
fn ssh_files_and_forwarding() {
    require_local!();
    let l = Local::start(&[]);
    let guid = push_hello(&l, "1");
    let s = Ssh::new(&l);
    let user = format!("cf:{guid}/0");
    // scp and sftp read "cf:" as a host name: the user goes in -o User (as
    // Diego's docs do it).
    let as_user = format!("User={user}");
    let host = "127.0.0.1";

    // A 5 MB binary file with mode 0751, up and back, in both scp protocols.
    let local = l.d.dir.join("blob.bin");
    let mut f = std::fs::File::create(&local).expect("blob");
    let mut urandom = std::fs::File::open("/dev/urandom").expect("urandom");
    let mut buf = vec![0u8; 5 << 20];
    urandom.read_exact(&mut buf).expect("random bytes");
    f.write_all(&buf).expect("write blob");
    drop(f);
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o751)).expect("chmod");
    let want = sha256(&local);
    for (proto, flag) in [("sftp", None), ("legacy", Some("-O"))] {
        let remote = format!("/home/vcap/blob-{proto}.bin");
        let back = l.d.dir.join(format!("back-{proto}.bin"));
        let mut up = s.command("scp", &s.code());
        up.args(flag).args(["-o", &as_user, "-p"]).arg(&local).arg(format!("{host}:{remote}"));
        let o = up.output().expect("scp up");
        assert!(o.status.success(), "scp {proto} up: {}", explain(&o));
        let o = s.run(&user, &[&format!("stat -c '%s %a' {remote}")]);
        assert_eq!(text(&o.stdout).trim(), format!("{} 751", 5 << 20), "{}", explain(&o));
        let mut down = s.command("scp", &s.code());
        down.args(flag).args(["-o", &as_user, "-p"]).arg(format!("{host}:{remote}")).arg(&back);
        let o = down.output().expect("scp down");
        assert!(o.status.success(), "scp {proto} down: {}", explain(&o));
        assert_eq!(sha256(&back), want, "scp {proto}: the file changed on the way");
        let mode = std::fs::metadata(&back).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode, 0o751, "scp {proto}: mode");
    }

    // sftp: pwd, put, get.
    let batch = l.d.dir.join("sftp.batch");
    let got = l.d.dir.join("sftp-got.bin");
    std::fs::write(&batch, format!("pwd\nput {} up.bin\nget up.bin {}\n", local.display(), got.display()))
        .expect("batch");
    let mut c = s.command("sftp", &s.code());
    // Commands on stdin rather than -b, which would forbid password logins.
    c.args(["-o", &as_user]).arg(host).stdin(std::fs::File::open(&batch).expect("batch"));
    let o = c.output().expect("sftp");
    assert!(o.status.success(), "sftp: {}", explain(&o));
    assert!(text(&o.stdout).contains("Remote working directory: /home/vcap"), "{}", explain(&o));
    assert_eq!(sha256(&got), want, "sftp put/get changed the file");

    // -L to the app's own port: its page.
    let p = free_port();
    let fwd = forward(&s, &user, &format!("{p}:localhost:8080"), p);
    let page = exchange(p, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    assert!(page.contains("Hello from celld!"), "-L to the app: {page}");
    drop(fwd);

    // -L to a service outside: allowed by the app's security groups (a public
    // address) it answers; a private address they don't open is refused.
    let outside = OutsideNet::new();
    let p = free_port();
    let fwd = forward(&s, &user, &format!("{p}:{}:{}", outside.peer_ip, outside.port), p);
    assert_eq!(exchange(p, b""), "pong\n", "-L to an allowed destination");
    drop(fwd);
    let p = free_port();
    let _fwd = forward(&s, &user, &format!("{p}:{}:{}", outside.private_ip, outside.port), p);
    assert_eq!(exchange(p, b""), "", "-L to a destination no security group opens must not connect");
    forward_bulk_both_ways(&s, &user, &l.d.dir);
    l.finish();
}

/// `command` in the instance over ssh, in the background (killed when
/// dropped), once it listens on `port` (from the instance's /proc/net/tcp).
fn serve_in_instance(s: &Ssh, user: &str, command: &str, port: u16) -> Forward {
    let child = s
        .command("ssh", &s.code())
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh in the background");
    let server = Forward(child);
    // busybox nc listens on `::` where the instance has IPv6, else 0.0.0.0.
    let listening = format!("grep -qsi ':{port:04X} 0*:0000 0A' /proc/net/tcp /proc/net/tcp6");
    wait_for("the listener in the instance", T, || s.run(user, &[&listening]).status.success());
    server
}

/// A connection to `port` in the instance through a new `ssh -L`.
fn connect_through(s: &Ssh, user: &str, port: u16) -> (Forward, TcpStream) {
    let p = free_port();
    let fwd = forward(s, user, &format!("{p}:127.0.0.1:{port}"), p);
    let c = TcpStream::connect(("127.0.0.1", p)).expect("connect to -L");
    c.set_read_timeout(Some(T)).expect("timeout");
    (fwd, c)
}

/// Bulk data both ways through `ssh -L`, the proxy and the instance's sshd:
/// every byte arrives in order (the proxy joins queued packets into larger
/// ones, the sshd writes each packet straight to the socket), and each side's
/// EOF reaches the other.
fn forward_bulk_both_ways(s: &Ssh, user: &str, dir: &Path) {
    let mut blob = vec![0u8; 24 << 20];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut blob)).expect("random bytes");
    let local = dir.join("bulk.bin");
    std::fs::write(&local, &blob).expect("write bulk.bin");

    // Up: into `nc -l` in the instance, which saves it and exits at our EOF.
    let mut sink = serve_in_instance(s, user, "exec busybox nc -l -p 9997 > /tmp/bulk.bin", 9997);
    let (fwd, mut c) = connect_through(s, user, 9997);
    c.write_all(&blob).expect("write through -L");
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("the far end closes after our EOF");
    assert!(rest.is_empty(), "nc sent {} bytes back", rest.len());
    wait_for("nc in the instance to exit", T, || matches!(sink.0.try_wait(), Ok(Some(_))));
    drop(fwd);
    let o = s.run(user, &["busybox sha256sum /tmp/bulk.bin"]);
    let got = text(&o.stdout).split_whitespace().next().unwrap_or_default().to_string();
    assert_eq!(got, sha256(&local), "-L up changed the bytes: {}", explain(&o));

    // Down: the same file served by `nc -l` in the instance, read back whole.
    let _source = serve_in_instance(s, user, "exec busybox nc -l -p 9996 < /tmp/bulk.bin", 9996);
    let (_fwd, mut c) = connect_through(s, user, 9996);
    let mut back = vec![0u8; blob.len()];
    c.read_exact(&mut back).expect("read through -L");
    assert!(back == blob, "-L down changed the bytes");
}
