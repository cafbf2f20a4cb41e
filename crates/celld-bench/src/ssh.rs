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
/// 1 GiB transfers each way.
const ROUNDS: usize = 3;

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
pub async fn run(daemon: u32, dir: &Path) -> Result<()> {
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
    // instance's sshd, beside OpenSSH's sshd forwarding to a host sink. The
    // rounds alternate so that load from others on the machine hits both.
    let (mut ours, mut theirs) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    for _ in 0..ROUNDS {
        ours.push(through_proxy(&ctx, proxy_port, &user, daemon).context("-L through the proxy")?);
        theirs.push(through_openssh(&baseline).context("-L through OpenSSH's sshd")?);
    }
    println!("ssh -L: 1 GiB through the forward, {ROUNDS} rounds each (alternating); CPU seconds per GiB");
    println!("{:<34}{:>15}{:>8}{:>8}{:>8}", "", "MiB/s min-max", "sshd", "proxy", "ssh");
    for (name, runs) in [("celld proxy -> instance sshd", &ours), ("OpenSSH sshd on the host", &theirs)] {
        let (lo, hi) = min_max(runs.iter().map(Transfer::mib_s));
        let cpu = |f: fn(&Transfer) -> Option<Duration>| {
            let v: Vec<f64> = runs.iter().filter_map(f).map(|d| d.as_secs_f64()).collect();
            if v.is_empty() { "-".to_string() } else { format!("{:.2}", v.iter().sum::<f64>() / v.len() as f64) }
        };
        println!(
            "{name:<34}{:>15}{:>8}{:>8}{:>8}",
            format!("{lo:.0}-{hi:.0}"),
            cpu(|t| Some(t.server)),
            cpu(|t| t.proxy),
            cpu(|t| Some(t.client))
        );
    }
    let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a.mib_s() / b.mib_s()).collect();
    let (lo, hi) = min_max(ratios.iter().copied());
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    println!("-L throughput ratio: {median:.2}x OpenSSH's (rounds {lo:.2}-{hi:.2}; target >= 1.0)");
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

/// One round's 1 GiB: how long it took and the CPU time of each side.
struct Transfer {
    took: Duration,
    /// The sshd that dials the sink (the instance's, or OpenSSH's session processes).
    server: Duration,
    /// celld's daemon, which runs the proxy (none for OpenSSH).
    proxy: Option<Duration>,
    /// The `ssh -L` client.
    client: Duration,
}

impl Transfer {
    fn mib_s(&self) -> f64 {
        GIB as f64 / self.took.as_secs_f64() / f64::from(1 << 20)
    }
}

fn min_max(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::INFINITY, 0.0), |(lo, hi), x| (lo.min(x), hi.max(x)))
}

/// 1 GiB through `ssh -L` to `busybox nc` inside the instance.
fn through_proxy(ctx: &Ctx, proxy_port: u16, user: &str, daemon: u32) -> Result<Transfer> {
    let sink = ctx.ssh(proxy_port, &ctx.code()?);
    let mut sink = Background::spawn(sink, &[user, &format!("exec busybox nc -l -p {SINK_PORT} >/dev/null")])?;
    std::thread::sleep(Duration::from_millis(500));
    let lport = free_port()?;
    let mut fwd = ctx.ssh(proxy_port, &ctx.code()?);
    fwd.args(["-N", "-o", "ExitOnForwardFailure=yes", "-L", &format!("{lport}:127.0.0.1:{SINK_PORT}"), user]);
    let fwd = Background::spawn(fwd, &[])?;
    let client = fwd.pid();
    // The instance's sshd: the lifecycle binary, run as `sshd`, in the
    // daemon's containers.
    let groups = || {
        let sshd =
            super::cell_processes(daemon).into_iter().filter(|(_, comm)| comm == "sshd").map(|(pid, _)| pid).collect();
        vec![sshd, vec![daemon], client.into_iter().collect()]
    };
    let (took, cpu) = push_through(lport, groups)?;
    drop(fwd);
    sink.stop();
    Ok(Transfer { took, server: cpu[0], proxy: Some(cpu[1]), client: cpu[2] })
}

/// The same through OpenSSH's sshd to the same sink on the host: busybox-static's
/// nc, the very binary the tiny rootfs carries, so both pay the same to drain.
fn through_openssh(baseline: &Baseline) -> Result<Transfer> {
    let host_sink_port = free_port()?;
    let mut host_sink = Command::new("busybox");
    host_sink.args(["nc", "-l", "-p", &host_sink_port.to_string()]);
    let mut host_sink = Background::spawn(host_sink, &[]).context("busybox nc on the host (busybox-static)")?;
    std::thread::sleep(Duration::from_millis(300));
    let lport = free_port()?;
    let spec = format!("{lport}:127.0.0.1:{host_sink_port}");
    let fwd = Background::spawn(baseline.ssh(&["-N", "-o", "ExitOnForwardFailure=yes", "-L", &spec], &[]), &[])?;
    let client = fwd.pid();
    let sshd = baseline.child.id();
    let groups = || vec![super::descendants(sshd), client.into_iter().collect()];
    let (took, cpu) = push_through(lport, groups)?;
    drop(fwd);
    host_sink.stop();
    Ok(Transfer { took, server: cpu[0], proxy: None, client: cpu[1] })
}

/// Writes 1 GiB into the local end of a forward and waits for the far end to
/// close after it (so every byte arrived): the time it took, and the CPU time
/// each group of processes (named once connected) spent meanwhile.
fn push_through(port: u16, groups: impl Fn() -> Vec<Vec<u32>>) -> Result<(Duration, Vec<Duration>)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e).context("connecting to the forward"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let groups = groups();
    let cpu =
        || -> Vec<Duration> { groups.iter().map(|g| g.iter().map(|&p| super::lrps::cpu_time(p)).sum()).collect() };
    let cpu0 = cpu();
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
    let took = t0.elapsed();
    let used = cpu().into_iter().zip(cpu0).map(|(b, a)| b.saturating_sub(a)).collect();
    Ok((took, used))
}

/// A child process killed when dropped.
struct Background(Option<Child>);

impl Background {
    fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

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
