//! The router against nginx: `wrk` through celld's router and through
//! Debian's nginx, configured as a keep-alive reverse proxy, to the same two
//! instances of a keep-alive backend (`celld-bench-backend`, pushed as the
//! app's bits), at 16 and 64 connections. Requests per second, p50/p99
//! latency, and the CPU each proxy spent per request (from /proc).

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use garden_api::client::Client;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::ssh::cellctl_api;

const APP: &str = "router-bench";
/// The phase's cell has a pool and ports of its own, so it runs beside the
/// ssh and push phases' cell (another engineer's bench on this machine).
const POOL: &str = "10.252.16.0/20";
/// The firewall table celld names after POOL; it outlives the daemon.
const TABLE: &str = "celld-0afc1000-20";
const API: &str = "127.0.0.1:11884";
const ROUTER: &str = "127.0.0.1:11882";
const INSTANCES: usize = 2;
const CONNECTIONS: [u32; 2] = [16, 64];
const WARMUP: &str = "2s";
const DURATION: &str = "10s";
/// wrk's own threads: one per core of this 2-core target machine's load
/// generator share; the same for both proxies.
const WRK_THREADS: &str = "2";
/// The router runs on a thread per core of its own (src/daemon.rs), 2 on
/// this target machine; nginx gets as many worker processes.
const NGINX_WORKERS: u32 = 2;

/// One wrk run through one proxy.
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_req: f64,
}

/// The phase: a local-mode cell of its own.
pub fn phase(rt: &tokio::runtime::Runtime, celld: &Path, dir: &Path, args: &super::Args) -> Result<()> {
    ensure!(args.router_runs > 0, "--router-runs must be at least 1");
    let runs = args.router_runs;
    let cell_args = [
        "--local",
        "--network-pool",
        POOL,
        "--port-pool-start",
        "54501",
        "--scheduler-listen",
        "127.0.0.1:11881",
        "--router-listen",
        ROUTER,
        "--ssh-proxy-listen",
        "127.0.0.1:11883",
        "--grpc-listen",
        API,
        "--cf-api-listen",
        "127.0.0.1:11885",
    ];
    let r =
        super::run_cell(rt, celld, &dir.join("router"), args, &cell_args, async |c, pid, d| run(c, pid, d, runs).await);
    super::drop_cell_tables(TABLE);
    r
}

async fn run(client: &Client, celld_pid: u32, dir: &Path, runs: usize) -> Result<()> {
    ensure!(Path::new("/usr/bin/wrk").is_file(), "no /usr/bin/wrk: install wrk (make deps does)");
    ensure!(Path::new("/usr/sbin/nginx").is_file(), "no /usr/sbin/nginx: install nginx-light (make deps does)");
    let home = dir.join("cellctl-home");
    wait_api(&home).await?;
    let app_dir = app_dir(dir)?;
    cellctl(&home, &["push", APP, "-p", &app_dir.to_string_lossy(), "-m", "64M", "-i", &INSTANCES.to_string()])
        .context("pushing the backend app")?;
    let r = measure(client, celld_pid, dir, &home, runs).await;
    let deleted = cellctl(&home, &["delete", APP, "-f"]).map(drop).context("deleting the backend app");
    r.and(deleted)
}

async fn measure(client: &Client, celld_pid: u32, dir: &Path, home: &Path, runs: usize) -> Result<()> {
    let (host, backends) = wait_routable(client, home).await?;
    let nginx = Nginx::start(&dir.join("nginx"), &backends)?;
    let router_url = format!("http://{ROUTER}/");
    let nginx_url = format!("http://127.0.0.1:{}/", nginx.port);
    println!(
        "router: wrk -t{WRK_THREADS} for {DURATION} after {WARMUP} of warm-up, Host {host}, to {INSTANCES} instances of \
         celld-bench-backend ({}); nginx {} with {NGINX_WORKERS} worker processes (the router has a thread \
         per core), upstream keepalive, HTTP/1.1, access log on for both (nginx's buffered 64k)",
        backends.join(", "),
        nginx_version(),
    );
    println!(
        "{:<6}{:<5}{:<8}{:>10}{:>9}{:>9}{:>12}",
        "conns", "run", "proxy", "req/s", "p50 ms", "p99 ms", "CPU us/req"
    );
    for conns in CONNECTIONS {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for run in 1..=runs {
            // Alternate who goes first so drift on a shared machine hits both.
            let order: [(&str, &str, Vec<u32>); 2] =
                [("celld", &router_url, vec![celld_pid]), ("nginx", &nginx_url, nginx.workers.clone())];
            let order = if run % 2 == 0 { [order[1].clone(), order[0].clone()] } else { order };
            for (name, url, pids) in order {
                let s = wrk(url, &host, conns, &pids).with_context(|| format!("wrk through {name}"))?;
                println!(
                    "{:<6}{:<5}{:<8}{:>10.0}{:>9.2}{:>9.2}{:>12.1}",
                    conns, run, name, s.rps, s.p50_ms, s.p99_ms, s.cpu_us_per_req
                );
                if name == "celld" { ours.push(s) } else { theirs.push(s) }
            }
        }
        let ratio = |f: fn(&Sample) -> f64| {
            let r: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| f(a) / f(b)).collect();
            let (lo, hi) = r.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            if (hi - lo).abs() < 0.005 { format!("{lo:.2}") } else { format!("{lo:.2}-{hi:.2}") }
        };
        println!(
            "{conns} connections: router/nginx req/s {}x (target >= 1.0), p99 {}x (target <= 1.2), CPU per request {}x",
            ratio(|s| s.rps),
            ratio(|s| s.p99_ms),
            ratio(|s| s.cpu_us_per_req)
        );
    }
    println!();
    Ok(())
}

/// The app's bits: the backend binary (static, built by `make bench`) and a Procfile.
fn app_dir(dir: &Path) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let backend = exe.with_file_name("celld-bench-backend");
    ensure!(backend.is_file(), "no {} (make bench builds it static)", backend.display());
    let app = dir.join("router-app");
    std::fs::create_dir_all(&app)?;
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755))?;
    std::fs::copy(&backend, app.join("celld-bench-backend")).context("copying celld-bench-backend")?;
    std::fs::write(app.join("Procfile"), "web: ./celld-bench-backend\n")?;
    Ok(app)
}

fn cellctl(home: &Path, args: &[&str]) -> Result<String> {
    cellctl_api(API, home, args)
}

async fn wait_api(home: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cellctl(home, &["apps"]).is_err() {
        ensure!(Instant::now() < deadline, "celld --local's API did not answer within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Waits for both instances to be routable; the app's host and the
/// instances' addresses as the router dials them (container IP and port).
async fn wait_routable(client: &Client, home: &Path) -> Result<(String, Vec<String>)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = cellctl(home, &["app", APP, "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&text).context("app --json")?;
        let host = v["app"]["routes"][0].as_str().unwrap_or_default().to_string();
        let guids: Vec<String> = v["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["state"] == "running" && i["routable"] == true)
            .filter_map(|i| i["instance_guid"].as_str().map(str::to_string))
            .collect();
        if guids.len() == INSTANCES && !host.is_empty() {
            let mut backends = Vec::new();
            for g in &guids {
                let info = client.info(g).await.with_context(|| format!("garden info of instance {g}"))?;
                ensure!(!info.container_ip.is_empty(), "instance {g} has no container IP");
                backends.push(format!("{}:8080", info.container_ip));
            }
            return Ok((host, backends));
        }
        if Instant::now() > deadline {
            bail!("{APP} did not get {INSTANCES} routable instances within 60 s: {v}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One warm-up and one timed wrk run; CPU is that of `pids` over the timed run.
fn wrk(url: &str, host: &str, conns: u32, pids: &[u32]) -> Result<Sample> {
    let wrk = |duration: &str| -> Result<String> {
        let out = Command::new("/usr/bin/wrk")
            .args(["-t", WRK_THREADS, "-c", &conns.to_string(), "-d", duration, "--latency", "-H"])
            .arg(format!("Host: {host}"))
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .context("running wrk")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(out.status.success(), "wrk: {text}{}", String::from_utf8_lossy(&out.stderr));
        // Any error or non-2xx answer makes the numbers meaningless.
        ensure!(!text.contains("Non-2xx") && !text.contains("Socket errors"), "wrk saw errors: {text}");
        Ok(text)
    };
    wrk(WARMUP)?;
    let cpu0 = cpu_ticks(pids)?;
    let text = wrk(DURATION)?;
    let cpu = cpu_ticks(pids)? - cpu0;
    let requests: f64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.parse().ok()))
        .with_context(|| format!("no request count in wrk's output: {text}"))?;
    ensure!(requests > 0.0, "wrk made no request: {text}");
    let rps = field(&text, "Requests/sec:").and_then(|v| v.parse().ok());
    let p50 = field(&text, "50%").and_then(latency_ms);
    let p99 = field(&text, "99%").and_then(latency_ms);
    let (Some(rps), Some(p50_ms), Some(p99_ms)) = (rps, p50, p99) else { bail!("unexpected wrk output: {text}") };
    let tick_us = 1e6 / clock_ticks_per_sec();
    Ok(Sample { rps, p50_ms, p99_ms, cpu_us_per_req: cpu as f64 * tick_us / requests })
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim().strip_prefix(name)).map(str::trim)
}

/// wrk's `1.23ms`, `456.00us`, `1.01s`.
fn latency_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

/// utime + stime of every thread of `pids`, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        let rest = stat.rsplit_once(')').map(|r| r.1).context("bad /proc stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the comm: state is field 3, utime 14 and stime 15.
        let tick = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).context("bad /proc stat");
        total += tick(14)? + tick(15)?;
    }
    Ok(total)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn nginx_version() -> String {
    Command::new("/usr/sbin/nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().trim_start_matches("nginx version: ").to_string())
        .unwrap_or_else(|_| "nginx".into())
}

/// Debian's nginx on 127.0.0.1 with a config, pid file, logs and temp paths
/// of its own under the bench directory; stopped (workers too) when dropped.
struct Nginx {
    master: Child,
    workers: Vec<u32>,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, backends: &[String]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let d = dir.display();
        let servers: String = backends.iter().map(|b| format!("    server {b};\n")).collect();
        // gorouter-like access log fields; buffered, as the router's RTR lines
        // go to disk in batches from a writer thread.
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes {NGINX_WORKERS};\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             log_format rtr '$host - [$time_iso8601] \"$request\" $status $request_length $bytes_sent \"$http_referer\" \
             \"$http_user_agent\" \"$remote_addr:$remote_port\" \"$upstream_addr\" x_forwarded_for:\"$proxy_add_x_forwarded_for\" \
             x_forwarded_proto:\"$scheme\" vcap_request_id:\"$request_id\" response_time:$request_time \
             gorouter_time:$upstream_response_time';\n  access_log {d}/access.log rtr buffer=64k flush=1s;\n\
             upstream app {{\n{servers}    keepalive 64;\n  }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://app;\n\
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      proxy_set_header X-Forwarded-Proto $scheme;\n\
             proxy_set_header X-Vcap-Request-Id $request_id;\n    }}\n  }}\n}}\n"
        );
        let config = dir.join("nginx.conf");
        std::fs::write(&config, conf)?;
        let master = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let mut n = Nginx { master, workers: Vec::new(), port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            n.workers = children(n.master.id());
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && n.workers.len() == NGINX_WORKERS as usize {
                return Ok(n);
            }
            if let Ok(Some(status)) = n.master.try_wait() {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                bail!("nginx exited: {status}: {log}");
            }
            ensure!(Instant::now() < deadline, "nginx did not listen on 127.0.0.1:{port} with its workers within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A SIGKILLed master would leave its workers behind: TERM it first.
        let _ = kill(Pid::from_raw(self.master.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.master.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
        for &w in &self.workers {
            let _ = kill(Pid::from_raw(w as i32), Signal::SIGKILL);
        }
    }
}

/// The pids whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    super::processes().into_iter().filter(|p| p.1 == pid).map(|p| p.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_latencies_are_read_in_ms() {
        assert_eq!(latency_ms("456.00us"), Some(0.456));
        assert_eq!(latency_ms("1.50ms"), Some(1.5));
        assert_eq!(latency_ms("1.01s"), Some(1010.0));
        assert_eq!(latency_ms("12"), None);
    }
}
