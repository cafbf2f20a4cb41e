//! `cf ssh` through celld's ssh proxy, with the real OpenSSH client, beside
//! OpenSSH's own sshd on this machine: session setup to `exec true`, and
//! `ssh -L` throughput for 1 GiB.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::{ms, percentiles};

pub const SCHEDULER: &str = "127.0.0.1:11891";
pub const ROUTER: &str = "127.0.0.1:11892";
pub const PROXY: &str = "127.0.0.1:11893";
pub const API: &str = "127.0.0.1:11805";
/// The CF API (the push phase).
pub const CF_API: &str = "127.0.0.1:11896";
/// OpenSSH's sshd for the baseline.
const BASELINE_PORT: u16 = 11894;
/// The sink the forwarded bytes go to, inside the instance.
const SINK_PORT: u16 = 9999;
const SESSIONS: usize = 50;
const WARMUP: usize = 3;
const GIB: u64 = 1 << 30;

/// The flags that make a celld a local-mode one for this phase.
pub fn local_args() -> Vec<&'static str> {
    vec![
        "--local",
        "--scheduler-listen",
        SCHEDULER,
        "--router-listen",
        ROUTER,
        "--ssh-proxy-listen",
        PROXY,
        "--grpc-listen",
        API,
        "--network-pool",
        super::BENCH_POOL,
        "--port-pool-start",
        "52001",
        "--cf-api-listen",
        CF_API,
    ]
}

struct Ctx {
    cellctl: PathBuf,
    home: PathBuf,
    askpass: PathBuf,
    known_hosts: PathBuf,
}

impl Ctx {
    fn cellctl(&self, args: &[&str]) -> Result<String> {
        cellctl_with(&self.cellctl, &self.home, args)
    }

    fn code(&self) -> Result<String> {
        Ok(self.cellctl(&["ssh-code"])?.trim().to_string())
    }

    /// OpenSSH's `ssh` with a password from a one-time code (through askpass).
    fn ssh(&self, port: u16, code: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-p", &port.to_string(), "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"])
            .env("SSH_ASKPASS", &self.askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .env("CELLD_BENCH_CODE", code)
            .stdin(Stdio::null());
        c
    }
}

/// cellctl (the one beside this executable) against the local cell's API.
pub fn cellctl_at(home: &Path, args: &[&str]) -> Result<String> {
    let exe = std::env::current_exe().context("locating this executable")?;
    cellctl_with(&exe.with_file_name("cellctl"), home, args)
}

/// cellctl (the one beside this executable) against the API of a local cell
/// of another phase's own (its `--grpc-listen`).
pub fn cellctl_api(api: &str, home: &Path, args: &[&str]) -> Result<String> {
    let exe = std::env::current_exe().context("locating this executable")?;
    cellctl_on(&exe.with_file_name("cellctl"), api, home, args)
}

fn cellctl_with(cellctl: &Path, home: &Path, args: &[&str]) -> Result<String> {
    cellctl_on(cellctl, API, home, args)
}

fn cellctl_on(cellctl: &Path, api: &str, home: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(cellctl)
        .args(["--api", api])
        .args(args)
        .env("CELLCTL_HOME", home)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .context("running cellctl")?;
    ensure!(
        out.status.success(),
        "cellctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// examples/hello of this checkout.
pub fn hello_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    exe.parent().and_then(|p| p.parent()?.parent().map(|r| r.join("examples/hello"))).context("locating examples/hello")
}

/// Runs in a `celld --local` started by the caller.
pub async fn run(dir: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let hello = hello_dir()?;
    let askpass = dir.join("askpass.sh");
    std::fs::write(&askpass, "#!/bin/sh\nprintf '%s\\n' \"$CELLD_BENCH_CODE\"\n")?;
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755))?;
    let ctx = Ctx {
        cellctl: exe.with_file_name("cellctl"),
        home: dir.join("cellctl-home"),
        askpass,
        known_hosts: dir.join("known_hosts"),
    };
    wait_api(&ctx).await?;
    ctx.cellctl(&["push", &hello.to_string_lossy(), "-m", "128M"]).context("pushing examples/hello")?;
    let app = ctx.cellctl(&["app", "hello", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&app).context("app --json")?;
    let guid = v["app"]["guid"].as_str().context("app --json has no guid")?.to_string();
    let user = format!("cf:{guid}/0@127.0.0.1");
    let proxy_port: u16 = PROXY.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(2222);

    let baseline = Baseline::start(dir)?;

    // 1. Session setup: connect, log in, `exec true`, exit status back.
    let mut ours = Vec::with_capacity(SESSIONS);
    for i in 0..WARMUP + SESSIONS {
        let code = ctx.code()?;
        let mut c = ctx.ssh(proxy_port, &code);
        c.arg(&user).arg("true");
        let t0 = Instant::now();
        let out = c.output().context("ssh")?;
        let took = t0.elapsed();
        ensure!(out.status.success(), "ssh true through the proxy: {}", String::from_utf8_lossy(&out.stderr));
        if i >= WARMUP {
            ours.push(took);
        }
    }
    let mut theirs = Vec::with_capacity(SESSIONS);
    for i in 0..WARMUP + SESSIONS {
        let mut c = baseline.ssh(&[], &["true"]);
        let t0 = Instant::now();
        let out = c.output().context("ssh to OpenSSH's sshd")?;
        let took = t0.elapsed();
        ensure!(out.status.success(), "ssh true to OpenSSH's sshd: {}", String::from_utf8_lossy(&out.stderr));
        if i >= WARMUP {
            theirs.push(took);
        }
    }
    let (p50, p95) = percentiles(&mut ours);
    let (b50, b95) = percentiles(&mut theirs);
    println!("ssh: {SESSIONS} sessions with OpenSSH's ssh client, connect to `exec true` and its exit status");
    println!("{:<34}{:>8}{:>9}", "", "p50 ms", "p95 ms");
    println!("{:<34}{:>8.1}{:>9.1}", "celld proxy -> instance sshd", ms(p50), ms(p95));
    println!("{:<34}{:>8.1}{:>9.1}", "OpenSSH sshd on the host", ms(b50), ms(b95));
    println!("session setup p50: {:.1} ms (target <= 50)", ms(p50));

    // 2. -L throughput: 1 GiB into a sink, through the proxy and the
    // instance's sshd, beside OpenSSH's sshd forwarding to a host sink.
    let sink = ctx.ssh(proxy_port, &ctx.code()?);
    let mut sink = Background::spawn(sink, &[&user, &format!("exec busybox nc -l -p {SINK_PORT} >/dev/null")])?;
    std::thread::sleep(Duration::from_millis(500));
    let lport = free_port()?;
    let mut fwd = ctx.ssh(proxy_port, &ctx.code()?);
    fwd.args(["-N", "-o", "ExitOnForwardFailure=yes", "-L", &format!("{lport}:127.0.0.1:{SINK_PORT}"), &user]);
    let fwd = Background::spawn(fwd, &[])?;
    let ours = push_through(lport).context("-L through the proxy")?;
    drop(fwd);
    sink.stop();

    // The same sink on the host: busybox-static's nc, the very binary the tiny
    // rootfs carries, so both sides pay the same to drain the bytes.
    let host_sink_port = free_port()?;
    let mut host_sink = Command::new("busybox");
    host_sink.args(["nc", "-l", "-p", &host_sink_port.to_string()]);
    let mut host_sink = Background::spawn(host_sink, &[]).context("busybox nc on the host (busybox-static)")?;
    std::thread::sleep(Duration::from_millis(300));
    let lport = free_port()?;
    let spec = format!("{lport}:127.0.0.1:{host_sink_port}");
    let fwd = Background::spawn(baseline.ssh(&["-N", "-o", "ExitOnForwardFailure=yes", "-L", &spec], &[]), &[])?;
    let theirs = push_through(lport).context("-L through OpenSSH's sshd")?;
    drop(fwd);
    host_sink.stop();
    let mbs = |d: Duration| GIB as f64 / d.as_secs_f64() / f64::from(1 << 20);
    println!("ssh -L: 1 GiB through the forward");
    println!("{:<34}{:>9}", "", "MiB/s");
    println!("{:<34}{:>9.0}", "celld proxy -> instance sshd", mbs(ours));
    println!("{:<34}{:>9.0}", "OpenSSH sshd on the host", mbs(theirs));
    println!("-L throughput ratio: {:.2}x OpenSSH's (target >= 0.5)", mbs(ours) / mbs(theirs));
    println!();
    drop(baseline);
    let _ = ctx.cellctl(&["delete", "hello", "-f"]);
    Ok(())
}

async fn wait_api(ctx: &Ctx) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctx.cellctl(&["apps"]).is_err() {
        if Instant::now() > deadline {
            bail!("celld --local did not answer on {API} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes 1 GiB into the local end of a forward and waits for the far end to
/// close after it (so every byte arrived); the time it took.
fn push_through(port: u16) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e).context("connecting to the forward"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let chunk = vec![0x5au8; 256 << 10];
    let t0 = Instant::now();
    let mut left = GIB;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(t0.elapsed())
}

/// A child process killed when dropped.
struct Background(Option<Child>);

impl Background {
    fn spawn(mut c: Command, args: &[&str]) -> Result<Self> {
        c.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        Ok(Self(Some(c.spawn().context("starting ssh")?)))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// OpenSSH's sshd on 127.0.0.1 with a throwaway host key, logging in root
/// with a throwaway key: the reference for both numbers.
struct Baseline {
    child: Child,
    key: PathBuf,
    known_hosts: PathBuf,
}

impl Baseline {
    fn start(dir: &Path) -> Result<Self> {
        let sshd = Path::new("/usr/sbin/sshd");
        ensure!(sshd.is_file(), "no /usr/sbin/sshd: install openssh-server (make deps does)");
        let d = dir.join("openssh");
        std::fs::create_dir_all(&d)?;
        let (host, key) = (d.join("host_key"), d.join("client_key"));
        for k in [&host, &key] {
            let _ = std::fs::remove_file(k);
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(k)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            ensure!(ok, "ssh-keygen failed");
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))?;
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {BASELINE_PORT}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nAllowTcpForwarding yes\nPidFile none\nUseDNS no\nPrintMotd no\n",
                host.display(),
                d.join("authorized_keys").display()
            ),
        )?;
        std::fs::create_dir_all("/run/sshd")?;
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting OpenSSH's sshd")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", BASELINE_PORT)).is_err() {
            ensure!(Instant::now() < deadline, "OpenSSH's sshd did not listen on {BASELINE_PORT}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, key, known_hosts: d.join("known_hosts") })
    }

    /// `ssh OPTS root@127.0.0.1 COMMAND` against this sshd.
    fn ssh(&self, opts: &[&str], command: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-p", &BASELINE_PORT.to_string(), "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "BatchMode=yes", "-i"])
            .arg(&self.key)
            .args(opts)
            .arg("root@127.0.0.1")
            .args(command)
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
