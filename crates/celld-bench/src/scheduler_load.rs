//! The reference scheduler under load: `celld scheduler` (a subprocess, its
//! SQLite file, the test clock) with `--sim-cells` simulated cells ×
//! `--sim-instances` instances each, over real gRPC on loopback.
//!
//! The simulated cells live in this process: one tonic `Cell` server serves
//! them all (`Work.cell_id` says which cell), each cell has its own
//! connection to the scheduler. Perform accepts the work, and a pool of
//! workers claims and starts every instance through the Scheduler API, as a
//! rep would once its container runs. Once all instances are RUNNING, each
//! timed cycle compresses what 30 s of reps do: every cell heartbeats 6 times
//! and reconciles once (ActualLRPsByCell + TasksByCell), 64 calls in flight,
//! with one convergence pass beside them. Target: a cycle in <= 10 s.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use celld_proto as pb;
use celld_proto::actual_lrp::State;
use celld_proto::scheduler_client::SchedulerClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::{ms, percentiles};

/// The scheduler's gRPC address.
const LISTEN: &str = "127.0.0.1:11889";
/// A 30 s cycle of the cells' work must take at most this long.
const TARGET: Duration = Duration::from_secs(10);
/// Calls in flight from the simulated cells (cycles, heartbeats) and
/// claim/start workers during population.
const IN_FLIGHT: usize = 64;
/// Heartbeats per cell in one 30 s cycle (every 5 s).
const HEARTBEATS_PER_CYCLE: usize = 6;
const LRP_MEMORY_MB: u32 = 128;
const LRP_DISK_MB: u32 = 512;
const CELL_MEMORY_MB: u32 = 64 * 1024;
const CELL_DISK_MB: u32 = 256 * 1024;
const CELL_CONTAINERS: u32 = 256;
/// Population gives up after this long.
const POPULATION_LIMIT: Duration = Duration::from_secs(30 * 60);
/// During population the bench stands in for the periodic convergence pass
/// (the scheduler's own is off): every 30 s a pass auctions again what found
/// no room. The test clock stays put: moving it would also re-auction every
/// placement not claimed within 30 s.
const CONVERGENCE_INTERVAL: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct SimArgs {
    /// Scheduler load phase: simulated cells.
    #[arg(long, default_value_t = 1000)]
    pub sim_cells: u32,
    /// Scheduler load phase: instances per cell (as many LRPs, each with one
    /// instance per cell).
    #[arg(long, default_value_t = 250)]
    pub sim_instances: u32,
    /// Scheduler load phase: timed 30 s cycles (heartbeats, reconciles, a
    /// convergence pass), run back to back.
    #[arg(long, default_value_t = 3)]
    pub sim_cycles: u32,
    /// Run only this phase (`scheduler`: needs neither root nor the rootfs).
    #[arg(long, value_name = "PHASE", value_parser = ["scheduler"])]
    pub only: Option<String>,
}

/// `--only scheduler`: the phase alone, in its own `/tmp/celld-bench-<pid>`.
pub fn alone(celld: Option<&Path>, args: &SimArgs) -> Result<()> {
    let celld = match celld {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe().context("locating this executable")?.with_file_name("celld"),
    };
    let dir = PathBuf::from(format!("/tmp/celld-bench-{}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run(&celld, &dir, args);
    let removed = std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()));
    result?;
    removed
}

/// The phase: starts the scheduler under `dir/sched`, runs the load, and
/// stops the scheduler and removes `dir/sched` whatever happens.
pub fn run(celld: &Path, dir: &Path, args: &SimArgs) -> Result<()> {
    ensure!(args.sim_cells > 0 && args.sim_instances > 0, "--sim-cells and --sim-instances must be at least 1");
    ensure!(
        args.sim_instances <= CELL_CONTAINERS,
        "--sim-instances is at most {CELL_CONTAINERS} (a cell's containers)"
    );
    ensure!(celld.is_file(), "no celld binary at {} (cargo build --release --bins)", celld.display());
    // Another scheduler on the port would be benchmarked instead of ours.
    TcpListener::bind(LISTEN).with_context(|| format!("{LISTEN} is taken"))?;
    let sched_dir = dir.join("sched");
    std::fs::create_dir(&sched_dir).with_context(|| format!("creating {}", sched_dir.display()))?;
    let result = (|| {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
        let mut sched = SchedulerProcess::start(celld, &sched_dir)?;
        let bench = std::panic::AssertUnwindSafe(|| rt.block_on(load(args, &mut sched)));
        let result = std::panic::catch_unwind(bench).unwrap_or_else(|_| Err(anyhow::anyhow!("the bench panicked")));
        sched.stop();
        rt.shutdown_timeout(Duration::from_secs(5));
        result
    })();
    if result.is_err() {
        print_log_tail(&sched_dir.join("scheduler.log"));
    }
    let removed = std::fs::remove_dir_all(&sched_dir).with_context(|| format!("removing {}", sched_dir.display()));
    result?;
    removed
}

fn print_log_tail(log: &Path) {
    let Ok(text) = std::fs::read_to_string(log) else { return };
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("last lines of the scheduler's log:");
    for l in &lines[lines.len().saturating_sub(20)..] {
        eprintln!("  {l}");
    }
}

struct SchedulerProcess {
    child: Option<Child>,
    pid: u32,
}

impl SchedulerProcess {
    fn start(celld: &Path, dir: &Path) -> Result<Self> {
        let log = std::fs::File::create(dir.join("scheduler.log")).context("creating the scheduler's log")?;
        let mut cmd = Command::new(celld);
        cmd.arg("--depot").arg(dir.join("depot"));
        cmd.args(["--log-level", "info", "scheduler", "--listen", LISTEN, "--metrics-listen", "off", "--db"]);
        cmd.arg(dir.join("scheduler.db"));
        // Convergence only when the bench asks (its own timed pass), not every 30 s.
        cmd.args(["--test-clock", "--convergence-interval", "3600"]);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} scheduler", celld.display()))?;
        Ok(Self { pid: child.id(), child: Some(child) })
    }

    async fn wait_ready(&mut self) -> Result<SchedulerClient<Channel>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = SchedulerClient::connect(format!("http://{LISTEN}")).await {
                if c.cells(pb::CellsRequest {}).await.is_ok() {
                    return Ok(c.max_decoding_message_size(64 << 20));
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("the scheduler exited before serving: {status}");
            }
            if Instant::now() > deadline {
                bail!("the scheduler did not answer on {LISTEN} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            bail!("the scheduler exited: {status}");
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for SchedulerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU seconds (user + system) and resident/peak memory of a process.
struct Usage {
    cpu: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn usage(pid: &str) -> Result<Usage> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|r| r.1).context("bad stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime.
    let ticks: u64 = f
        .get(11)
        .zip(f.get(12))
        .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
        .context("bad stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |field: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Usage { cpu: ticks as f64 / hz, rss_kib: kib("VmRSS:"), hwm_kib: kib("VmHWM:") })
}

/// An instance a simulated cell accepted and is about to claim and start.
struct Start {
    cell: usize,
    process_guid: String,
    index: i32,
    instance_guid: String,
    slot: u32,
}

/// All simulated cells.
struct Sim {
    ids: Vec<String>,
    by_id: HashMap<String, usize>,
    /// The Cell server every cell advertises.
    addr: String,
    /// Each cell's own connection to the scheduler.
    clients: Vec<SchedulerClient<Channel>>,
    /// Instances each cell accepted (its containers).
    placed: Vec<AtomicU32>,
    starts: tokio::sync::mpsc::UnboundedSender<Start>,
    running: AtomicUsize,
    failed: AtomicUsize,
    first_failure: Mutex<Option<String>>,
    refused: AtomicUsize,
    stops: AtomicUsize,
}

impl Sim {
    fn presence(&self, cell: usize) -> pb::CellPresence {
        let n = self.placed[cell].load(Ordering::Relaxed).min(CELL_CONTAINERS);
        let capacity = pb::Resources { memory_mb: CELL_MEMORY_MB, disk_mb: CELL_DISK_MB, containers: CELL_CONTAINERS };
        let available = pb::Resources {
            memory_mb: CELL_MEMORY_MB.saturating_sub(n * LRP_MEMORY_MB),
            disk_mb: CELL_DISK_MB.saturating_sub(n * LRP_DISK_MB),
            containers: CELL_CONTAINERS - n,
        };
        pb::CellPresence {
            cell_id: self.ids[cell].clone(),
            grpc_address: self.addr.clone(),
            zone: format!("z{}", cell % 3 + 1),
            capacity: Some(capacity),
            available: Some(available),
            stacks: vec!["cflinuxfs4".into()],
            ..Default::default()
        }
    }

    fn instance_key(&self, s: &Start) -> pb::ActualLrpInstanceKey {
        pb::ActualLrpInstanceKey { instance_guid: s.instance_guid.clone(), cell_id: self.ids[s.cell].clone() }
    }

    /// What the rep does for a reserved container that then runs: claim, start.
    async fn claim_and_start(&self, s: &Start) -> Result<(), Status> {
        let key = pb::ActualLrpKey { process_guid: s.process_guid.clone(), index: s.index, domain: "cf-apps".into() };
        let mut c = self.clients[s.cell].clone();
        c.claim_actual_lrp(pb::ClaimActualLrpRequest {
            key: Some(key.clone()),
            instance_key: Some(self.instance_key(s)),
        })
        .await?;
        let (cell, slot) = (s.cell as u32, s.slot);
        c.start_actual_lrp(pb::StartActualLrpRequest {
            key: Some(key),
            instance_key: Some(self.instance_key(s)),
            net_info: Some(pb::ActualLrpNetInfo {
                address: format!("10.{}.{}.{}", 1 + cell / 62500, cell / 250 % 250, cell % 250 + 1),
                instance_address: format!("10.255.{}.{}", slot / 250, slot % 250 + 1),
                ports: vec![pb::PortMapping { container_port: 8080, host_port: 61000 + slot }],
            }),
            routable: true,
        })
        .await?;
        Ok(())
    }

    fn failure(&self, what: &str, e: &Status) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if first.is_none() {
            *first = Some(format!("{what}: {}: {}", e.code(), e.message()));
        }
    }
}

#[derive(Clone)]
struct CellService(Arc<Sim>);

type LogStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LogEnvelope, Status>> + Send>>;

#[tonic::async_trait]
impl pb::cell_server::Cell for CellService {
    async fn state(&self, _r: Request<pb::StateRequest>) -> Result<Response<pb::CellState>, Status> {
        Err(Status::unimplemented("simulated cell"))
    }

    /// Accepts what fits in the cell's containers; the workers claim and start it.
    async fn perform(&self, r: Request<pb::Work>) -> Result<Response<pb::Work>, Status> {
        let work = r.into_inner();
        let sim = &self.0;
        let Some(&cell) = sim.by_id.get(&work.cell_id) else {
            return Err(Status::invalid_argument(format!("no simulated cell {}", work.cell_id)));
        };
        let mut refused = pb::Work { cell_id: work.cell_id.clone(), ..Default::default() };
        for mut s in work.lrps {
            let slot = sim.placed[cell].fetch_add(1, Ordering::Relaxed);
            if slot >= CELL_CONTAINERS {
                sim.placed[cell].fetch_sub(1, Ordering::Relaxed);
                sim.refused.fetch_add(1, Ordering::Relaxed);
                s.placement_error = "insufficient resources: containers".into();
                refused.lrps.push(s);
                continue;
            }
            let process_guid = s.desired_lrp.map(|d| d.process_guid).unwrap_or_default();
            let start = Start { cell, process_guid, index: s.index, instance_guid: s.instance_guid, slot };
            if sim.starts.send(start).is_err() {
                return Err(Status::unavailable("the simulation is over"));
            }
        }
        for mut t in work.tasks {
            sim.refused.fetch_add(1, Ordering::Relaxed);
            t.rejection_reason = "the simulated cells run no tasks".into();
            refused.tasks.push(t);
        }
        Ok(Response::new(refused))
    }

    async fn stop_lrp_instance(
        &self,
        _r: Request<pb::StopLrpInstanceRequest>,
    ) -> Result<Response<pb::StopLrpInstanceResponse>, Status> {
        // Nothing is retired in this bench: counted and reported.
        self.0.stops.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::StopLrpInstanceResponse {}))
    }

    async fn cancel_task(
        &self,
        _r: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        Ok(Response::new(pb::CancelTaskResponse {}))
    }

    type StreamLogsStream = LogStream;

    async fn stream_logs(&self, _r: Request<pb::StreamLogsRequest>) -> Result<Response<LogStream>, Status> {
        Err(Status::unimplemented("simulated cell"))
    }

    async fn container_metrics(
        &self,
        _r: Request<pb::ContainerMetricsRequest>,
    ) -> Result<Response<pb::ContainerMetricsResponse>, Status> {
        Err(Status::unimplemented("simulated cell"))
    }
}

/// An app as Cloud Controller would desire it (routes, env, a health check).
fn desired_lrp(i: u32, instances: u32) -> pb::DesiredLrp {
    let guid = format!("bench-app-{i:04}-0000-4000-8000-{i:012}");
    let env = |n: &str, v: String| pb::EnvironmentVariable { name: n.into(), value: v };
    let route = format!(r#"[{{"hostnames":["bench-{i}.apps.example.com"],"port":8080}}]"#);
    pb::DesiredLrp {
        process_guid: guid.clone(),
        domain: "cf-apps".into(),
        instances: instances as i32,
        rootfs: "preloaded:cflinuxfs4".into(),
        droplet_key: format!("droplets/{guid}.tgz"),
        start_command: "bundle exec rackup config.ru -p $PORT".into(),
        env: vec![
            env("LANG", "en_US.UTF-8".into()),
            env("VCAP_APPLICATION", format!(r#"{{"application_id":"{guid}","application_name":"bench-{i}"}}"#)),
            env("VCAP_SERVICES", "{}".into()),
        ],
        memory_mb: LRP_MEMORY_MB,
        disk_mb: LRP_DISK_MB,
        max_pids: 1024,
        cpu_weight: 10,
        ports: vec![8080],
        check_definition: Some(pb::CheckDefinition {
            checks: vec![pb::Check {
                check: Some(pb::check::Check::Tcp(pb::TcpCheck { port: 8080, ..Default::default() })),
            }],
            ..Default::default()
        }),
        log_guid: guid,
        routes: [("cf-router".to_string(), route)].into_iter().collect(),
        ..Default::default()
    }
}

/// Runs `ops` with `IN_FLIGHT` in flight; each returns its samples.
async fn in_flight<T, F, Fut>(ops: Vec<T>, f: F) -> Vec<Fut::Output>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let n = ops.len();
    let ops: Arc<Mutex<std::vec::IntoIter<T>>> = Arc::new(Mutex::new(ops.into_iter()));
    let f = Arc::new(f);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT.min(n) {
        let (ops, f) = (ops.clone(), f.clone());
        workers.spawn(async move {
            let mut out = Vec::new();
            loop {
                let next = ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next();
                let Some(op) = next else { break };
                out.push(f(op).await);
            }
            out
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = workers.join_next().await {
        if let Ok(v) = r {
            all.extend(v);
        }
    }
    all
}

async fn heartbeat_all(sim: &Arc<Sim>) -> (Vec<Duration>, usize) {
    let s = sim.clone();
    let results = in_flight((0..sim.ids.len()).collect(), move |cell| {
        let s = s.clone();
        async move {
            let t = Instant::now();
            let ok = s.clients[cell].clone().heartbeat(s.presence(cell)).await.is_ok();
            (t.elapsed(), ok)
        }
    })
    .await;
    let failed = results.iter().filter(|r| !r.1).count();
    (results.into_iter().map(|r| r.0).collect(), failed)
}

fn endpoint(addr: &str) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect_timeout(Duration::from_secs(5)))
}

async fn load(args: &SimArgs, sched: &mut SchedulerProcess) -> Result<()> {
    let (cells, per_cell) = (args.sim_cells as usize, args.sim_instances);
    let total = cells * per_cell as usize;
    let pid = sched.pid.to_string();
    let mut op = sched.wait_ready().await?;

    // The simulated cells' server, and each cell's connection to the scheduler.
    let listener = celld_transport::grpc::bind("127.0.0.1:0").await.context("binding the simulated cells' server")?;
    let addr = listener.local_addr()?.to_string();
    let ids: Vec<String> = (0..cells).map(|i| format!("sim-cell-{i:04}")).collect();
    let mut clients = Vec::with_capacity(cells);
    for _ in 0..cells {
        clients.push(SchedulerClient::new(endpoint(LISTEN)?.connect_lazy()).max_decoding_message_size(64 << 20));
    }
    let (starts, mut start_rx) = tokio::sync::mpsc::unbounded_channel();
    let sim = Arc::new(Sim {
        by_id: ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect(),
        ids,
        addr,
        clients,
        placed: (0..cells).map(|_| AtomicU32::new(0)).collect(),
        starts,
        running: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        first_failure: Mutex::new(None),
        refused: AtomicUsize::new(0),
        stops: AtomicUsize::new(0),
    });
    let svc = pb::cell_server::CellServer::new(CellService(sim.clone()))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // Claim/start workers, fed by Perform.
    let (work_tx, work_rx) = tokio::sync::mpsc::channel::<Start>(IN_FLIGHT);
    let feeder = tokio::spawn(async move {
        while let Some(s) = start_rx.recv().await {
            if work_tx.send(s).await.is_err() {
                break;
            }
        }
    });
    let work_rx = Arc::new(tokio::sync::Mutex::new(work_rx));
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (sim, rx) = (sim.clone(), work_rx.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some(s) = next else { break };
                match sim.claim_and_start(&s).await {
                    Ok(()) => {
                        sim.running.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        sim.placed[s.cell].fetch_sub(1, Ordering::Relaxed);
                        sim.failure(&format!("claiming/starting {}/{}", s.process_guid, s.index), &e);
                    }
                }
            }
        }));
    }
    let result = population_and_cycles(args, &sim, &mut op, sched, &pid, total).await;
    for w in &workers {
        w.abort();
    }
    feeder.abort();
    server.abort();
    result
}

async fn population_and_cycles(
    args: &SimArgs,
    sim: &Arc<Sim>,
    op: &mut SchedulerClient<Channel>,
    sched: &mut SchedulerProcess,
    pid: &str,
    total: usize,
) -> Result<()> {
    let (cells, per_cell) = (args.sim_cells as usize, args.sim_instances);
    let sched_start = usage(pid)?;
    let bench_start = usage("self")?;

    // 1. Population: every cell present, then the apps desired, until every
    // instance is RUNNING. Cells keep heartbeating every 5 s meanwhile.
    let t0 = Instant::now();
    let (_, failed) = heartbeat_all(sim).await;
    ensure!(failed == 0, "{failed} of {cells} first heartbeats failed");
    let registered = t0.elapsed();
    let beating = Arc::new(AtomicBool::new(true));
    let heartbeater = {
        let (sim, beating) = (sim.clone(), beating.clone());
        tokio::spawn(async move {
            while beating.load(Ordering::Relaxed) {
                let next = Instant::now() + Duration::from_secs(5);
                heartbeat_all(&sim).await;
                tokio::time::sleep_until(next.into()).await;
            }
        })
    };
    // Apps are desired a few at a time, as many as fit twice in a cell's
    // spare containers: the auction counts work a cell accepted but did not
    // claim yet both in the cell's heartbeat and as a placement, so a larger
    // backlog makes cells look full and the rest waits for convergence.
    let window = ((CELL_CONTAINERS - per_cell) / 2).max(1) as usize;
    let mut desires = Vec::with_capacity(per_cell as usize);
    let mut next_lrp = 0;
    let mut next_report = Instant::now() + Duration::from_secs(10);
    let mut next_pass = Instant::now() + CONVERGENCE_INTERVAL;
    let mut passes = 0;
    loop {
        let running = sim.running.load(Ordering::Relaxed);
        if running >= total {
            break;
        }
        sched.check_alive()?;
        if t0.elapsed() > POPULATION_LIMIT {
            bail!("only {running} of {total} instances RUNNING after {} s", POPULATION_LIMIT.as_secs());
        }
        if next_lrp < per_cell && (next_lrp as usize * cells).saturating_sub(running) < window * cells {
            let t = Instant::now();
            op.desire_lrp(desired_lrp(next_lrp, cells as u32))
                .await
                .with_context(|| format!("desiring LRP {next_lrp}"))?;
            desires.push(t.elapsed());
            next_lrp += 1;
            continue;
        }
        if Instant::now() >= next_pass {
            op.converge(pb::ConvergeRequest {}).await.context("converging")?;
            passes += 1;
            next_pass = Instant::now() + CONVERGENCE_INTERVAL;
        }
        if Instant::now() >= next_report {
            eprintln!(
                "scheduler bench: {running} of {total} instances RUNNING after {:.0} s ({next_lrp} of {per_cell} LRPs desired)",
                t0.elapsed().as_secs_f64()
            );
            next_report += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let populated = t0.elapsed();
    beating.store(false, Ordering::Relaxed);
    heartbeater.abort();
    let (desire50, desire95) = percentiles(&mut desires);
    let after_population = usage(pid)?;
    let bench_after_population = usage("self")?;

    println!(
        "scheduler: {cells} simulated cells x {per_cell} instances ({per_cell} LRPs x {cells}), real gRPC on loopback, SQLite, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "population: {total} instances RUNNING in {:.1} s ({:.0} /s): {cells} cells present in {:.2} s; {per_cell} DesireLRP ({window} at a time), p50 {:.1} ms, p95 {:.1} ms",
        populated.as_secs_f64(),
        total as f64 / populated.as_secs_f64(),
        registered.as_secs_f64(),
        ms(desire50),
        ms(desire95)
    );
    println!(
        "  scheduler CPU {:.1} s, RSS {:.0} MiB; simulator CPU {:.1} s; {} claim/start failures, {} refusals, {} convergence passes{}",
        after_population.cpu - sched_start.cpu,
        after_population.rss_kib as f64 / 1024.0,
        bench_after_population.cpu - bench_start.cpu,
        sim.failed.load(Ordering::Relaxed),
        sim.refused.load(Ordering::Relaxed),
        passes,
        sim.first_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|f| format!(" (first: {f})"))
            .unwrap_or_default()
    );

    // 2. The cycles.
    let (mut hb, mut by_cell, mut tasks, mut converge, mut cycle_times) = (vec![], vec![], vec![], vec![], vec![]);
    let mut errors = 0;
    let mut wrong = 0;
    for k in 0..args.sim_cycles {
        let cpu0 = usage(pid)?.cpu;
        let t = Instant::now();
        let conv = {
            let mut c = op.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = c.converge(pb::ConvergeRequest {}).await;
                (t.elapsed(), r.map(|r| r.into_inner().changes))
            })
        };
        // Round r: every cell heartbeats; a sixth of them also reconcile.
        let ops: Vec<(usize, bool)> = (0..HEARTBEATS_PER_CYCLE)
            .flat_map(|r| (0..cells).map(move |c| (c, c % HEARTBEATS_PER_CYCLE == r)))
            .collect();
        let s = sim.clone();
        let samples = in_flight(ops, move |(cell, reconcile)| {
            let s = s.clone();
            async move { cell_call(&s, cell, reconcile, per_cell).await }
        })
        .await;
        let (conv_time, changes) = conv.await.context("the convergence call")?;
        let changes = changes.context("Converge")?;
        let elapsed = t.elapsed();
        let cpu = usage(pid)?.cpu - cpu0;
        let (mut c_errors, mut c_wrong) = (0, 0);
        for s in samples {
            hb.push(s.heartbeat);
            by_cell.extend(s.by_cell);
            tasks.extend(s.tasks);
            c_errors += s.errors;
            c_wrong += s.wrong;
        }
        converge.push(conv_time);
        cycle_times.push(elapsed);
        errors += c_errors;
        wrong += c_wrong;
        println!(
            "cycle {}: {:.2} s (ratio to the 10 s target {:.2}), convergence {:.2} s ({changes} changes), scheduler CPU {:.1} s{}{}",
            k + 1,
            elapsed.as_secs_f64(),
            elapsed.as_secs_f64() / TARGET.as_secs_f64(),
            conv_time.as_secs_f64(),
            cpu,
            if c_errors > 0 { format!(", {c_errors} failed calls") } else { String::new() },
            if c_wrong > 0 {
                format!(", {c_wrong} cells not showing {per_cell} RUNNING instances")
            } else {
                String::new()
            }
        );
    }
    if !cycle_times.is_empty() {
        println!("{:<20}{:>8}{:>9}{:>9}", "call", "p50 ms", "p95 ms", "calls");
        for (name, samples) in [
            ("Heartbeat", &mut hb),
            ("ActualLRPsByCell", &mut by_cell),
            ("TasksByCell", &mut tasks),
            ("Converge", &mut converge),
        ] {
            let n = samples.len();
            if n == 0 {
                continue;
            }
            let (p50, p95) = percentiles(samples);
            println!("{:<20}{:>8.1}{:>9.1}{:>9}", name, ms(p50), ms(p95), n);
        }
        let worst = cycle_times.iter().max().copied().unwrap_or_default();
        let (p50, _) = percentiles(&mut cycle_times);
        println!(
            "cycle: p50 {:.2} s, max {:.2} s; ratio max/target {:.2} (target: every 30 s cycle <= 10 s)",
            p50.as_secs_f64(),
            worst.as_secs_f64(),
            worst.as_secs_f64() / TARGET.as_secs_f64()
        );
    }
    let end = usage(pid)?;
    println!(
        "scheduler: RSS {:.0} MiB (peak {:.0} MiB), CPU {:.1} s in all ({:.1} s population, {:.1} s cycles)",
        end.rss_kib as f64 / 1024.0,
        end.hwm_kib as f64 / 1024.0,
        end.cpu - sched_start.cpu,
        after_population.cpu - sched_start.cpu,
        end.cpu - after_population.cpu
    );
    let stops = sim.stops.load(Ordering::Relaxed);
    if errors > 0 || wrong > 0 || stops > 0 {
        println!(
            "warning: {errors} failed calls, {wrong} reconciles not matching, {stops} instances stopped by the scheduler"
        );
    }
    println!();
    Ok(())
}

#[derive(Default)]
struct CellSamples {
    heartbeat: Duration,
    by_cell: Option<Duration>,
    tasks: Option<Duration>,
    errors: usize,
    wrong: usize,
}

/// One heartbeat of `cell`, and its bulk reconcile when `reconcile`.
async fn cell_call(sim: &Sim, cell: usize, reconcile: bool, per_cell: u32) -> CellSamples {
    let mut c = sim.clients[cell].clone();
    let mut out = CellSamples::default();
    let t = Instant::now();
    if c.heartbeat(sim.presence(cell)).await.is_err() {
        out.errors += 1;
    }
    out.heartbeat = t.elapsed();
    if reconcile {
        let cell_id = sim.ids[cell].clone();
        let t = Instant::now();
        match c.actual_lr_ps_by_cell(pb::ActualLrPsByCellRequest { cell_id: cell_id.clone() }).await {
            Ok(r) => {
                let lrps = r.into_inner().actual_lrps;
                if lrps.len() != per_cell as usize || lrps.iter().any(|l| l.state() != State::Running) {
                    out.wrong += 1;
                }
            }
            Err(_) => out.errors += 1,
        }
        out.by_cell = Some(t.elapsed());
        let t = Instant::now();
        if c.tasks_by_cell(pb::TasksByCellRequest { cell_id }).await.is_err() {
            out.errors += 1;
        }
        out.tasks = Some(t.elapsed());
    }
    out
}
