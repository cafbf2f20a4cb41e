//! App instances on a real cell and scheduler: desired → RUNNING for a tiny
//! droplet already in the blobstore (with a port check), then 250 running
//! instances: the cell's steady-state CPU and memory per instance.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use celld_proto as pb;
use celld_proto::scheduler_client::SchedulerClient;
use tonic::transport::Channel;

pub const SCHEDULER: &str = "127.0.0.1:11890";
pub const CELL_GRPC: &str = "127.0.0.1:11804";
pub const CELL_ID: &str = "bench-cell";
const DROPLET_KEY: &str = "droplets/bench-web";
/// The cell's /metrics in this phase.
pub const METRICS: &str = "127.0.0.1:11821";
const SCRAPES: usize = 20;

/// How long the steady state is watched.
const STEADY: Duration = Duration::from_secs(30);

/// `celld scheduler` for the phase; killed when dropped.
pub struct Scheduler(Child);

impl Scheduler {
    pub fn start(celld: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let child = Command::new(celld)
            .arg("--depot")
            .arg(dir)
            .args(["--log-level", "warn", "scheduler", "--listen", SCHEDULER, "--metrics-listen", "off", "--db"])
            .arg(dir.join("scheduler.db"))
            .stdin(Stdio::null())
            .spawn()
            .context("starting celld scheduler")?;
        Ok(Scheduler(child))
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A droplet as the stager makes them, serving its app dir with busybox httpd.
fn droplet() -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let info = r#"{"detected_buildpack":"bench","start_command":"exec busybox httpd -f -p $PORT -h /home/vcap/app"}"#;
    let files: [(&str, &str); 2] = [("./staging_info.yml", info), ("./app/index.html", "hello\n")];
    for dir in ["./app/", "./tmp/", "./logs/", "./deps/", "./profile.d/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, dir, std::io::empty())?;
    }
    for (path, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, body.as_bytes())?;
    }
    Ok(b.into_inner()?.finish()?)
}

fn desired(guid: &str, instances: i32) -> pb::DesiredLrp {
    pb::DesiredLrp {
        process_guid: guid.to_string(),
        domain: "cf-apps".into(),
        instances,
        rootfs: "preloaded:tiny".into(),
        droplet_key: DROPLET_KEY.into(),
        memory_mb: 32,
        disk_mb: 64,
        ports: vec![8080],
        check_definition: Some(pb::CheckDefinition {
            checks: vec![pb::Check {
                check: Some(pb::check::Check::Tcp(pb::TcpCheck { port: 8080, ..Default::default() })),
            }],
            ..Default::default()
        }),
        log_guid: guid.to_string(),
        ..Default::default()
    }
}

/// The scheduler's client, once it answers and a cell has registered with it
/// (nothing can be placed before).
pub async fn scheduler_client() -> Result<SchedulerClient<Channel>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut s = loop {
        match Channel::from_shared(format!("http://{SCHEDULER}"))?.connect().await {
            Ok(ch) => break SchedulerClient::new(ch),
            Err(e) if Instant::now() > deadline => bail!("the scheduler never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.cells(pb::CellsRequest {}).await?.into_inner().cells.is_empty() {
        ensure!(Instant::now() < deadline, "the cell never registered with the scheduler");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(s)
}

/// Desires `d` and waits on `events` until its instance 0 is RUNNING: how long that took.
pub async fn until_running(
    s: &mut SchedulerClient<Channel>,
    events: &mut tonic::Streaming<pb::Event>,
    d: pb::DesiredLrp,
) -> Result<Duration> {
    let guid = d.process_guid.clone();
    let t0 = Instant::now();
    s.desire_lrp(d).await.context("DesireLRP")?;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.message())
            .await
            .with_context(|| format!("{guid} did not reach RUNNING within 30 s"))??
            .context("the event stream ended")?;
        let Some(a) = ev.actual_lrp else { continue };
        if a.process_guid == guid && a.state == pb::actual_lrp::State::Running as i32 {
            return Ok(t0.elapsed());
        }
        ensure!(!(a.process_guid == guid && a.crash_count > 0), "{guid} crashed: {}", a.crash_reason);
    }
}

async fn running(s: &mut SchedulerClient<Channel>, guid: &str) -> Result<usize> {
    let a = s
        .actual_lr_ps(pb::ActualLrPsRequest { process_guid: guid.into(), ..Default::default() })
        .await?
        .into_inner()
        .actual_lrps;
    Ok(a.iter().filter(|a| a.state == pb::actual_lrp::State::Running as i32).count())
}

/// User + system CPU time of `pid`, from /proc.
pub(crate) fn cpu_time(pid: u32) -> Duration {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // After the comm come state, ppid, …: utime and stime are the 12th and 13th.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let (utime, stime) = (field(11), field(12));
    Duration::from_millis((utime + stime) * 1000 / ticks)
}

/// The phase, then (whether it failed or not) every DesiredLRP it made
/// removed and its instances gone: left desired, the scheduler would restart
/// each instance the bench's teardown destroys, and the cell would leave them
/// running when it stops.
pub async fn run(lrps: usize, steady: usize, daemon: u32, dir: &Path) -> Result<()> {
    let measured = measure(lrps, steady, daemon, dir).await;
    let removed = remove_all().await;
    measured?;
    removed
}

async fn remove_all() -> Result<()> {
    let mut s = scheduler_client().await?;
    let desired = s.desired_lr_ps(pb::DesiredLrPsRequest::default()).await?.into_inner().desired_lrps;
    for d in desired {
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: d.process_guid }).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !s.actual_lr_ps(pb::ActualLrPsRequest::default()).await?.into_inner().actual_lrps.is_empty() {
        ensure!(Instant::now() < deadline, "instances were not removed within 2 min");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn measure(lrps: usize, steady: usize, daemon: u32, dir: &Path) -> Result<()> {
    super::settle().await;
    let blobs = PathBuf::from(format!("file://{}", dir.join("depot/blobs").display()));
    let store = celld_blobstore::Blobstore::open(&blobs.to_string_lossy()).context("the cell's blobstore")?;
    store.put_bytes(DROPLET_KEY, droplet()?.into()).await.context("storing the droplet")?;
    let mut s = scheduler_client().await?;

    // 1. Desired → RUNNING, one LRP at a time (after 3 warm-ups).
    let mut events = s.subscribe_events(pb::SubscribeEventsRequest {}).await?.into_inner();
    let mut samples = Vec::with_capacity(lrps);
    for i in 0..3 + lrps {
        let took = until_running(&mut s, &mut events, desired(&format!("bench-start-{i}"), 1)).await?;
        if i >= 3 {
            samples.push(took);
        }
    }
    drop(events);
    for i in 0..3 + lrps {
        s.remove_desired_lrp(pb::RemoveDesiredLrpRequest { process_guid: format!("bench-start-{i}") }).await?;
    }
    let (p50, p95) = super::percentiles(&mut samples);
    println!("app instances: desired -> RUNNING, {lrps} LRPs of 1 instance, tiny droplet in the blobstore, port check");
    println!("{:<16}{:>8}{:>9}", "", "p50 ms", "p95 ms");
    println!("{:<16}{:>8.1}{:>9.1}", "to RUNNING", super::ms(p50), super::ms(p95));
    println!("p50 / target 300 ms: {:.2}x", super::ms(p50) / 300.0);

    // 2. Steady state with `steady` instances.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s
        .actual_lr_ps(pb::ActualLrPsRequest::default())
        .await?
        .into_inner()
        .actual_lrps
        .iter()
        .any(|a| a.process_guid.starts_with("bench-start-"))
    {
        ensure!(Instant::now() < deadline, "the start LRPs were not removed within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    super::settle().await;
    let helper = super::helper_of(daemon);
    let rss = |pid: Option<u32>| pid.and_then(|p| super::vm_rss_kib(p).ok()).unwrap_or(0);
    let rss_before = rss(Some(daemon)) + rss(helper);
    let t0 = Instant::now();
    s.desire_lrp(desired("bench-steady", steady as i32)).await.context("DesireLRP")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while running(&mut s, "bench-steady").await? < steady {
        ensure!(Instant::now() < deadline, "{steady} instances did not all reach RUNNING within 10 min");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_running = t0.elapsed();
    // Let the start-up work (health checks passing, reports) settle first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu0 = cpu_time(daemon) + helper.map_or(Duration::ZERO, cpu_time);
    let w0 = Instant::now();
    tokio::time::sleep(STEADY).await;
    let cpu = (cpu_time(daemon) + helper.map_or(Duration::ZERO, cpu_time)).saturating_sub(cpu0);
    let wall = w0.elapsed();
    let rss_after = rss(Some(daemon)) + rss(helper);
    let inits = super::container_inits(daemon);
    let init_pss: u64 = inits.iter().filter_map(|p| super::smaps_pss_kib(*p).ok()).sum();
    let pct = cpu.as_secs_f64() * 100.0 / wall.as_secs_f64();
    println!(
        "{steady} instances RUNNING in {:.1} s; over {} s: celld CPU {:.2} % of one core (target <= 2 %), \
         memory {:.1} MiB daemon+helper, {:.0} KiB per instance (+ {:.0} KiB PSS of its container's init)",
        all_running.as_secs_f64(),
        STEADY.as_secs(),
        pct,
        rss_after as f64 / 1024.0,
        rss_after.saturating_sub(rss_before) as f64 / steady as f64,
        init_pss as f64 / inits.len().max(1) as f64
    );
    scrapes(steady).await?;
    println!();
    Ok(())
}

/// What a Prometheus scrape of the cell costs with `steady` instances
/// (issue 23): `GET /metrics` on a new connection each time, as Prometheus
/// does after an idle interval.
async fn scrapes(steady: usize) -> Result<()> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().context("an HTTP client")?;
    let url = format!("http://{METRICS}/metrics");
    let mut samples = Vec::with_capacity(SCRAPES);
    let mut size = 0;
    for _ in 0..SCRAPES {
        let t = Instant::now();
        let r = http.get(&url).send().await.context("GET /metrics")?;
        ensure!(r.status() == 200, "GET /metrics: {}", r.status());
        let body = r.bytes().await.context("GET /metrics")?;
        samples.push(t.elapsed());
        size = body.len();
        let series = String::from_utf8_lossy(&body).matches("celld_instance_memory_bytes{").count();
        ensure!(series >= steady, "the scrape has {series} instance memory series, {steady} instances run");
    }
    let (p50, p95) = super::percentiles(&mut samples);
    println!(
        "GET /metrics at {steady} instances: p50 {:.2} ms, p95 {:.2} ms, {} KiB",
        super::ms(p50),
        super::ms(p95),
        size / 1024
    );
    Ok(())
}
