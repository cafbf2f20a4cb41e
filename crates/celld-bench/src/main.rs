//! `make bench`: times celld's create / run `true` / destroy cycle against
//! Debian's `runc run`, creates with networking and a net-in, the cost of a
//! net-out rule change at 10 and at 250 containers, and what an idle container
//! costs in memory; creates with a disk limit against without (`disk.rs`); then staging, app instances, `cf ssh`, the
//! router against nginx (`router.rs`), the scheduler under load and a cell joined to Diego (`diego.rs`).
//! Runs as root; starts its own celld on a private socket and depot under
//! `/tmp/celld-bench-<pid>`, and removes everything it made when done.

mod density;
mod diego;
mod disk;
mod images;
mod lrps;
mod push;
mod router;
mod scheduler_load;
mod ssh;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use garden_api::client::{Address, Client, ProcessIo};
use garden_api::types::{ContainerSpec, IpRange, NetIn, NetOutRule, PortRange, ProcessSpec};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Cycles (and runc runs) done first and not counted: the first create makes
/// the uid-shifted copy of the rootfs.
const WARMUP: usize = 5;

#[derive(Parser)]
#[command(name = "celld-bench", about = "Benchmark celld's container lifecycle and idle density")]
struct Args {
    /// Directory of preloaded root filesystems; the bench uses its `tiny`.
    #[arg(long)]
    rootfs_dir: PathBuf,
    /// Timed create/run/destroy cycles (after 5 warm-ups).
    #[arg(long, default_value_t = 100)]
    cycles: usize,
    /// Idle containers created for the density measurement.
    #[arg(long, default_value_t = 250)]
    idle: usize,
    /// Timed stagings (after 2 warm-ups).
    #[arg(long, default_value_t = 20)]
    stagings: usize,
    /// LRPs timed from desired to RUNNING (after 3 warm-ups).
    #[arg(long, default_value_t = 50)]
    lrps: usize,
    /// Instances kept running for the steady-state CPU and memory measurement.
    #[arg(long, default_value_t = 250)]
    steady_instances: usize,
    /// The celld binary; default: `celld` next to this executable.
    #[arg(long)]
    celld: Option<PathBuf>,
    /// Only the `cf ssh` phase (session setup and -L throughput).
    #[arg(long)]
    ssh_only: bool,
    /// Only issue 2's create/run/destroy cycle and its runc baseline.
    #[arg(long)]
    cycle_only: bool,
    /// Only the push phase (`cf push` through the CF API against `cellctl push`).
    #[arg(long)]
    push_only: bool,
    /// Only the disk-limit phase (creates with and without a disk limit).
    #[arg(long)]
    disk_only: bool,
    /// Only the router phase (celld's router against nginx under wrk).
    #[arg(long)]
    router_only: bool,
    /// wrk runs per proxy and connection count in the router phase.
    #[arg(long, default_value_t = 2)]
    router_runs: usize,
    /// Only the Diego phase (a cell joined to a fake BBS and Locket).
    #[arg(long)]
    diego_only: bool,
    /// Only the images phase (pulls against skopeo + umoci, creates from an image).
    #[arg(long)]
    images_only: bool,
    /// Only the app-instance phase (desired → RUNNING, the steady state, /metrics scrapes).
    #[arg(long)]
    lrps_only: bool,
    /// Only the density phase: `--thousand` networked containers on one cell.
    #[arg(long)]
    thousand_only: bool,
    /// Containers of the density phase (at most 1024: the bench's pool).
    #[arg(long, default_value_t = 1000)]
    thousand: usize,
    /// LRPs timed from desired to RUNNING through BBS and through celld's
    /// own scheduler in the Diego phase (after 3 warm-ups each).
    #[arg(long, default_value_t = 30)]
    diego_lrps: usize,
    #[command(flatten)]
    sim: scheduler_load::SimArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // reqwest (push, /metrics scrapes) is built without a TLS provider of its
    // own: ring is the tree's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.sim.only.is_some() {
        return scheduler_load::alone(args.celld.as_deref(), &args.sim);
    }
    ensure!(args.cycles > 0, "--cycles must be at least 1");
    let tiny = args.rootfs_dir.join("tiny");
    ensure!(tiny.is_dir(), "no tiny rootfs at {}", tiny.display());
    let celld = match &args.celld {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating this executable")?.with_file_name("celld"),
    };
    let dir = PathBuf::from(format!("/tmp/celld-bench-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;

    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // A single phase's end: its cell's tables and the bench's directory go, whatever it returned.
    let finish = |r: Result<()>| -> Result<()> {
        drop_cell_tables(BENCH_TABLE);
        let removed = remove_dir(&dir);
        r?;
        removed
    };
    if args.ssh_only {
        return finish(run_cell(&rt, &celld, &dir.join("ssh"), &args, &ssh::local_args(), async |_, pid, d| {
            ssh::run(pid, d).await
        }));
    }
    if args.push_only {
        return finish(push_phase(&rt, &celld, &dir, &args));
    }
    if args.lrps_only {
        return finish(lrps_phase(&rt, &celld, &dir, &args));
    }
    if args.thousand_only {
        return finish(thousand_phase(&rt, &celld, &dir, &args));
    }
    if args.router_only {
        return finish(router::phase(&rt, &celld, &dir, &args));
    }
    if args.diego_only {
        return finish(diego::run(&celld, &dir, &args));
    }
    // Issue 2's cycle is measured without networking (only loopback), the
    // rest on a cell with its network.
    let plain_args = ["--no-network", "--grpc-listen", "127.0.0.1:11801"];
    let disk_phase = || {
        run_cell(&rt, &celld, &dir.join("disk"), &args, &plain_args, async |c, _, _| disk::run(args.cycles, c).await)?;
        let none_args = [&plain_args[..], &["--disk-limits", "none"]].concat();
        run_cell(&rt, &celld, &dir.join("disk-none"), &args, &none_args, async |c, _, _| {
            disk::run_without_store(args.cycles, c).await
        })
    };
    if args.images_only {
        return finish(images_phase(&rt, &celld, &dir, &args, &tiny));
    }
    if args.disk_only {
        return finish(disk_phase());
    }
    let plain =
        run_cell(&rt, &celld, &dir.join("plain"), &args, &plain_args, async |c, _, d| cycles(&args, c, d, &tiny).await);
    if args.cycle_only {
        return finish(plain);
    }
    let plain = plain.and_then(|()| disk_phase());
    let plain = plain.and_then(|()| images_phase(&rt, &celld, &dir, &args, &tiny));
    let pool = ["--network-pool", BENCH_POOL, "--port-pool-start", "51001", "--grpc-listen", "127.0.0.1:11802"];
    let networked = plain.and_then(|()| {
        run_cell(&rt, &celld, &dir.join("net"), &args, &pool, async |c, pid, _| {
            network_and_density(&args, c, pid).await
        })
    });
    let networked = networked.and_then(|()| thousand_phase(&rt, &celld, &dir, &args));
    let mut staging_args = pool.to_vec();
    staging_args[5] = STAGING_GRPC;
    let networked = networked.and_then(|()| {
        run_cell(&rt, &celld, &dir.join("staging"), &args, &staging_args, async |_, _, d| staging(&args, d).await)
    });
    let networked = networked.and_then(|()| lrps_phase(&rt, &celld, &dir, &args));
    let networked = networked.and_then(|()| {
        run_cell(&rt, &celld, &dir.join("ssh"), &args, &ssh::local_args(), async |_, pid, d| ssh::run(pid, d).await)
    });
    let networked = networked.and_then(|()| push_phase(&rt, &celld, &dir, &args));
    let networked = networked.and_then(|()| router::phase(&rt, &celld, &dir, &args));
    let networked = networked.and_then(|()| scheduler_load::run(&celld, &dir, &args.sim));
    finish(networked.and_then(|()| diego::run(&celld, &dir, &args)))
}

/// 1 000 networked containers on one cell (`density.rs`).
fn thousand_phase(rt: &tokio::runtime::Runtime, celld: &Path, dir: &Path, args: &Args) -> Result<()> {
    let max = args.thousand.to_string();
    let extra = [
        "--network-pool",
        density::POOL,
        "--port-pool-start",
        "41001",
        "--grpc-listen",
        "127.0.0.1:11803",
        "--max-containers",
        &max,
    ];
    let phase_dir = dir.join("thousand");
    let r = run_cell(rt, celld, &phase_dir, args, &extra, async |c, pid, d| {
        density::run(args.thousand, c, pid, &d.join("depot")).await
    });
    drop_cell_tables(density::TABLE);
    r
}

/// App instances on a networked cell under celld's own scheduler: desired →
/// RUNNING, the steady state of many, and what a /metrics scrape costs there.
fn lrps_phase(rt: &tokio::runtime::Runtime, celld: &Path, dir: &Path, args: &Args) -> Result<()> {
    let sched = lrps::Scheduler::start(celld, &dir.join("scheduler"))?;
    let max = (args.steady_instances + 10).to_string();
    let cell_args = [
        "--network-pool",
        BENCH_POOL,
        "--port-pool-start",
        "51001",
        "--grpc-listen",
        lrps::CELL_GRPC,
        "--scheduler",
        lrps::SCHEDULER,
        "--cell-id",
        lrps::CELL_ID,
        "--max-containers",
        &max,
        // On, as by default: the steady state includes the metrics' refresh.
        "--metrics-listen",
        lrps::METRICS,
    ];
    let r = run_cell(rt, celld, &dir.join("lrps"), args, &cell_args, async |_, pid, d| {
        lrps::run(args.lrps, args.steady_instances, pid, d).await
    });
    drop(sched);
    r
}

/// Issue 22's push: the CF API's v3 sequence against cellctl push, on a
/// local-mode cell.
fn push_phase(rt: &tokio::runtime::Runtime, celld: &Path, dir: &Path, args: &Args) -> Result<()> {
    let hello = ssh::hello_dir()?;
    run_cell(rt, celld, &dir.join("push"), args, &ssh::local_args(), async |_, _, d| push::run(d, &hello).await)
}

/// Issue 21's images, on a cell without networking that may pull from the
/// bench's own registry.
fn images_phase(rt: &tokio::runtime::Runtime, celld: &Path, dir: &Path, args: &Args, tiny: &Path) -> Result<()> {
    let reg = images::BenchRegistry::start(tiny)?;
    rt.block_on(images::pull_vs_skopeo(&reg, dir))?;
    let host = reg.host();
    let extra = ["--no-network", "--grpc-listen", "127.0.0.1:11810", "--insecure-docker-registry", &host];
    run_cell(rt, celld, &dir.join("images"), args, &extra, async |c, _, _| images::creates(c, &reg).await)
}

/// Starts a cell, runs `f` against it, and destroys whatever it left, even
/// when `f` fails or panics.
fn run_cell(
    rt: &tokio::runtime::Runtime,
    celld: &Path,
    dir: &Path,
    args: &Args,
    extra: &[&str],
    f: impl AsyncFnOnce(&Client, u32, &Path) -> Result<()>,
) -> Result<()> {
    let mut daemon = Daemon::start(celld, dir, args, extra)?;
    let client = Client::new(Address::Unix(dir.join("garden.sock")));
    let pid = daemon.pid;
    let run = std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            daemon.wait_ready(&client).await?;
            f(&client, pid, dir).await
        })
    });
    let result = std::panic::catch_unwind(run).unwrap_or_else(|_| Err(anyhow::anyhow!("the bench panicked")));
    let destroyed = rt.block_on(destroy_all(&client));
    daemon.stop();
    result?;
    destroyed.context("destroying the bench's containers")
}

async fn cycles(args: &Args, client: &Client, dir: &Path, tiny: &Path) -> Result<()> {
    settle().await;
    // 1. create / run `true` / destroy, each step timed on its own.
    let (mut create, mut run, mut destroy, mut cycle) = (vec![], vec![], vec![], vec![]);
    for i in 0..WARMUP + args.cycles {
        let handle = if i < WARMUP { format!("bench-warmup-{i}") } else { format!("bench-{}", i - WARMUP) };
        let t0 = Instant::now();
        let spec = ContainerSpec { handle: handle.clone(), ..Default::default() };
        let handle = client.create(&spec).await.with_context(|| format!("creating {handle}"))?;
        let t1 = Instant::now();
        let spec = ProcessSpec { path: "true".into(), ..Default::default() };
        let process = client
            .run(&handle, &spec, ProcessIo::default())
            .await
            .with_context(|| format!("running true in {handle}"))?;
        let code = process.wait().await.with_context(|| format!("waiting for true in {handle}"))?;
        ensure!(code == 0, "`true` in {handle} exited with {code}");
        let t2 = Instant::now();
        client.destroy(&handle).await.with_context(|| format!("destroying {handle}"))?;
        let t3 = Instant::now();
        if i >= WARMUP {
            create.push(t1 - t0);
            run.push(t2 - t1);
            destroy.push(t3 - t2);
            cycle.push(t3 - t0);
        }
    }

    // 2. The baseline: runc doing create+start+wait+delete in one command.
    let runc = match find_runc() {
        None => Err("not installed".to_string()),
        Some(runc) => runc_bench(&runc, dir, tiny, args.cycles).map_err(|e| format!("failed: {e:#}")),
    };

    println!("celld bench: {} cycles (create, run `true`, destroy), tiny rootfs, --no-network", args.cycles);
    println!("{:<12}{:>6}{:>9}   target", "step", "p50 ms", "p95 ms");
    let (c50, c95) = percentiles(&mut create);
    for (name, samples, target) in [
        ("create", &mut create, "<= 20"),
        ("run", &mut run, "<= 5"),
        ("destroy", &mut destroy, "<= 10"),
        ("cycle", &mut cycle, ""),
    ] {
        let (p50, p95) = percentiles(samples);
        println!("{}", format!("{:<12}{:>6.1}{:>9.1}   {target}", name, ms(p50), ms(p95)).trim_end());
    }
    match runc {
        Ok(mut samples) => {
            let (p50, p95) = percentiles(&mut samples);
            println!("{:<12}{:>6.1}{:>9.1}   (create+start+wait+delete)", "runc run", ms(p50), ms(p95));
            let (cycle50, _) = percentiles(&mut cycle);
            println!(
                "ratio cycle/runc: {:.2} (target <= 0.2; issue 2's was <= 0.5)",
                cycle50.as_secs_f64() / p50.as_secs_f64()
            );
        }
        Err(e) => println!("runc: {e}"),
    }
    println!("create p95/p50: {:.2} (target <= 2)", c95.as_secs_f64() / c50.as_secs_f64());
    println!();
    Ok(())
}

const STAGING_GRPC: &str = "127.0.0.1:11803";

/// Staging a small Procfile app with the built-in shell buildpack, end to end
/// (upload the package, stage, droplet and cache uploaded, container gone),
/// beside the same buildpack's scripts run straight on the host.
async fn staging(args: &Args, dir: &Path) -> Result<()> {
    use celld_proto as pb;
    settle().await;
    let runs = args.stagings;
    let app = dir.join("app");
    std::fs::create_dir_all(&app)?;
    std::fs::write(app.join("Procfile"), "web: ./run.sh\n")?;
    std::fs::write(app.join("run.sh"), "#!/bin/sh\nexec httpd -f -p $PORT\n")?;
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_dir_all(".", &app)?;
    let package = tar.into_inner()?;
    let ch = tonic::transport::Channel::from_static("http://127.0.0.1:11803").connect().await.context("gRPC")?;
    let mut c = pb::stager_client::StagerClient::new(ch);
    let mut samples = Vec::with_capacity(runs);
    for i in 0..2 + runs {
        let t0 = Instant::now();
        use pb::upload_package_request::Part;
        let msgs = vec![
            pb::UploadPackageRequest { part: Some(Part::Metadata(pb::PackageMetadata::default())) },
            pb::UploadPackageRequest { part: Some(Part::Data(package.clone())) },
        ];
        let pkg = c.upload_package(tokio_stream::iter(msgs)).await.context("uploading the package")?.into_inner();
        let req = pb::StageRequest {
            app_guid: "bench-app".into(),
            package_key: pkg.key,
            buildpacks: vec!["shell_buildpack".into()],
            ..Default::default()
        };
        let mut events = c.stage(req).await.context("staging")?.into_inner();
        let mut outcome = None;
        while let Some(ev) = events.message().await? {
            match ev.event {
                Some(pb::staging_event::Event::Result(r)) => outcome = Some(Ok(r)),
                Some(pb::staging_event::Event::Failure(f)) => outcome = Some(Err(f)),
                _ => {}
            }
        }
        match outcome {
            Some(Ok(_)) => {}
            Some(Err(f)) => bail!("staging failed: {} - {}", f.reason, f.message),
            None => bail!("staging ended without an outcome"),
        }
        if i >= 2 {
            samples.push(t0.elapsed());
        }
    }
    let mut host = Vec::with_capacity(runs);
    let bp = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent()?.parent().map(|r| r.join("buildpacks/shell")))
        .context("locating buildpacks/shell")?;
    for i in 0..2 + runs {
        let t0 = Instant::now();
        host_buildpack(&bp, &app, &dir.join(format!("host-{i}")))?;
        if i >= 2 {
            host.push(t0.elapsed());
        }
    }
    let (p50, p95) = percentiles(&mut samples);
    let (h50, h95) = percentiles(&mut host);
    println!(
        "staging: {runs} stagings of a Procfile app with shell_buildpack, end to end (upload, stage, droplet upload)"
    );
    println!("{:<16}{:>8}{:>9}", "", "p50 ms", "p95 ms");
    println!("{:<16}{:>8.1}{:>9.1}", "celld stage", ms(p50), ms(p95));
    println!("{:<16}{:>8.1}{:>9.1}", "scripts on host", ms(h50), ms(h95));
    println!("overhead p50: {:.1} ms (target <= 150)", ms(p50) - ms(h50));
    println!();
    Ok(())
}

/// The shell buildpack's own scripts, as the builder would run them, on the host.
fn host_buildpack(bp: &Path, app: &Path, work: &Path) -> Result<()> {
    let build = work.join("app");
    let (cache, deps) = (work.join("cache"), work.join("deps"));
    for d in [&build, &cache, &deps.join("0"), &work.join("profile.d")] {
        std::fs::create_dir_all(d)?;
    }
    for e in std::fs::read_dir(app)? {
        let e = e?;
        std::fs::copy(e.path(), build.join(e.file_name()))?;
    }
    let script = |name: &str| bp.join("bin").join(name);
    let run = |name: &str, args: &[&Path]| -> Result<()> {
        let out = Command::new(script(name)).args(args).stdout(Stdio::null()).status()?;
        ensure!(out.success(), "{name} failed on the host: {out}");
        Ok(())
    };
    run("detect", &[&build])?;
    if script("finalize").is_file() {
        if script("supply").is_file() {
            run("supply", &[&build, &cache, &deps, Path::new("0")])?;
        }
        run("finalize", &[&build, &cache, &deps, Path::new("0"), &work.join("profile.d")])?;
    } else {
        run("compile", &[&build, &cache])?;
    }
    run("release", &[&build])?;
    std::fs::remove_dir_all(work)?;
    Ok(())
}

/// Live network namespaces, from the slab allocator (0 if not readable).
fn live_netns() -> u64 {
    let slabs = std::fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    slabs.lines().find_map(|l| l.strip_prefix("net_namespace ")?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Waits (at most 30 s) until the kernel has finished tearing down the
/// network namespaces of containers destroyed before (an earlier phase or
/// bench run): that work holds the locks every veth change needs, and would
/// be timed as part of the next phase's creates.
async fn settle() {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = live_netns();
    let mut stable_since = Instant::now();
    while Instant::now() < deadline && stable_since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = live_netns();
        if now != last {
            (last, stable_since) = (now, Instant::now());
        }
    }
}

async fn network_and_density(args: &Args, client: &Client, daemon: u32) -> Result<()> {
    settle().await;
    // 3. Density: idle containers, and what the daemon, its helper and the
    // containers' inits hold in memory.
    let helper = helper_of(daemon);
    let idle_daemon = vm_rss_kib(daemon)?;
    let idle_helper = helper.map(vm_rss_kib).transpose()?.unwrap_or(0);
    println!(
        "daemon idle RSS: {} KiB ({} KiB daemon + {} KiB helper{})",
        idle_daemon + idle_helper,
        idle_daemon,
        idle_helper,
        if helper.is_none() { ", helper not found" } else { "" }
    );
    // Created with networking and one net-in each; the first 100 creates are
    // the networked-create sample, and net-out rule changes are timed at 10
    // containers and again at the full count.
    let mut created = Duration::ZERO;
    let mut handles = Vec::with_capacity(args.idle);
    let (mut net_create, mut netout_small, mut netout_full) = (vec![], vec![], vec![]);
    for i in 0..args.idle {
        let spec = ContainerSpec {
            handle: format!("bench-idle-{i}"),
            netin: vec![NetIn { host_port: 0, container_port: 8080 }],
            ..Default::default()
        };
        let c0 = Instant::now();
        handles.push(client.create(&spec).await.with_context(|| format!("creating idle container {i}"))?);
        created += c0.elapsed();
        if i < 100 {
            net_create.push(c0.elapsed());
        }
        if handles.len() == 10 {
            netout_small = time_net_out(client, &handles[0], NETOUT_SAMPLES).await?;
        }
    }
    if let Some(last) = handles.last() {
        netout_full = time_net_out(client, last, NETOUT_SAMPLES).await?;
    }
    println!(
        "created {} idle containers in {:.2} s ({:.1} ms each)",
        args.idle,
        created.as_secs_f64(),
        per(created, args.idle)
    );
    if !net_create.is_empty() {
        let (p50, p95) = percentiles(&mut net_create);
        println!(
            "create with network + 1 net-in: p50 {:.1} ms, p95 {:.1} ms over {} containers (target p50 <= 30)",
            ms(p50),
            ms(p95),
            net_create.len()
        );
    }
    if !netout_small.is_empty() && !netout_full.is_empty() {
        let (s50, s95) = percentiles(&mut netout_small);
        let (f50, f95) = percentiles(&mut netout_full);
        println!(
            "net-out rule change: p50 {:.2} / p95 {:.2} ms at 10 containers, p50 {:.2} / p95 {:.2} ms at {}; ratio {:.2} (target: flat)",
            ms(s50),
            ms(s95),
            ms(f50),
            ms(f95),
            args.idle,
            f50.as_secs_f64() / s50.as_secs_f64()
        );
    }
    if args.idle > 0 {
        let helper = helper_of(daemon);
        let total = vm_rss_kib(daemon)? + helper.map(vm_rss_kib).transpose()?.unwrap_or(0);
        let n = args.idle as u64;
        println!(
            "daemon+helper RSS: {:.1} MiB total, {} KiB per container (target <= 1024 KiB); +{} KiB per container over idle",
            total as f64 / 1024.0,
            total / n,
            total.saturating_sub(idle_daemon + idle_helper) / n
        );
        // An init names itself just after create returns: give the last one a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut inits = container_inits(daemon);
        while (inits.len() as u64) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            inits = container_inits(daemon);
        }
        let (mut pss, mut rss) = (0, 0);
        for &pid in &inits {
            pss += smaps_pss_kib(pid).unwrap_or(0);
            rss += vm_rss_kib(pid).unwrap_or(0);
        }
        let found = inits.len() as u64;
        if let (Some(pss), Some(rss)) = (pss.checked_div(found), rss.checked_div(found)) {
            println!("container inits: PSS {pss} KiB per container (RSS {rss} KiB)");
        }
        if found != n {
            println!("warning: found {found} garden-init processes for {n} containers");
        }
    }
    let t = Instant::now();
    for h in &handles {
        client.destroy(h).await.with_context(|| format!("destroying {h}"))?;
    }
    let gone = t.elapsed();
    println!(
        "destroyed {} idle containers in {:.2} s ({:.1} ms each)",
        handles.len(),
        gone.as_secs_f64(),
        per(gone, handles.len())
    );
    Ok(())
}

/// The networked bench cell's own pool (1024 containers), so it runs beside a `make run` cell.
const BENCH_POOL: &str = "10.252.0.0/20";
/// Its firewall table, which outlives the daemon by design and is removed at the end.
/// Removes a bench cell's firewall tables (a cell keeps its own across
/// restarts): the `ip` one and the `bridge` one its shared subnets use.
fn drop_cell_tables(table: &str) {
    for family in ["ip", "bridge"] {
        let _ =
            Command::new("nft").args(["delete", "table", family, table]).stderr(std::process::Stdio::null()).status();
    }
}

const BENCH_TABLE: &str = "celld-0afc0000-20";

/// Net-out calls timed per measurement point.
const NETOUT_SAMPLES: usize = 50;

/// Times `n` NetOut calls on one container, each allowing a different port,
/// once the kernel has settled after the creates (veths, namespaces and
/// RCU callbacks are finished in the background for a moment).
async fn time_net_out(client: &Client, handle: &str, n: usize) -> Result<Vec<Duration>> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let rule = NetOutRule {
            protocol: 1,
            networks: vec![IpRange { start: "10.0.0.0".into(), end: "10.255.255.255".into() }],
            ports: vec![PortRange { start: 1000 + i as u16, end: 1000 + i as u16 }],
            ..Default::default()
        };
        let t = Instant::now();
        client.net_out(handle, &rule).await.with_context(|| format!("net-out on {handle}"))?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

/// Times `runc run` of the tiny rootfs, `n` runs after the warm-ups.
fn runc_bench(runc: &Path, dir: &Path, tiny: &Path, n: usize) -> Result<Vec<Duration>> {
    let bundle = dir.join("runc-bundle");
    let state = dir.join("runc-state");
    std::fs::create_dir_all(&bundle).with_context(|| format!("creating {}", bundle.display()))?;
    let rootfs = bundle.join("rootfs");
    run_cmd(Command::new("cp").arg("-a").arg(tiny).arg(&rootfs), "cp -a of the tiny rootfs")?;
    run_cmd(Command::new(runc).arg("spec").current_dir(&bundle), "runc spec")?;
    let config = bundle.join("config.json");
    let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
    let mut spec: serde_json::Value = serde_json::from_str(&text).context("parsing runc's config.json")?;
    spec["process"]["args"] = serde_json::json!(["true"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["root"]["path"] = serde_json::json!("rootfs");
    spec["root"]["readonly"] = serde_json::json!(true);
    std::fs::write(&config, serde_json::to_vec_pretty(&spec)?)
        .with_context(|| format!("writing {}", config.display()))?;

    let mut samples = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let mut cmd = Command::new(runc);
        cmd.arg("--root").arg(&state).args(["run", "--bundle"]).arg(&bundle).arg(format!("bench-runc-{i}"));
        let t = Instant::now();
        run_cmd(&mut cmd, "runc run")?;
        if i >= WARMUP {
            samples.push(t.elapsed());
        }
    }
    Ok(samples)
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.stdin(Stdio::null()).stdout(Stdio::null()).status().with_context(|| format!("starting {what}"))?;
    ensure!(status.success(), "{what}: {status}");
    Ok(())
}

fn find_runc() -> Option<PathBuf> {
    let fixed = PathBuf::from("/usr/sbin/runc");
    if fixed.is_file() {
        return Some(fixed);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("runc")).find(|p| p.is_file())
}

/// Nearest-rank p50 and p95.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let rank = |p: usize| samples[(p * samples.len()).div_ceil(100).clamp(1, samples.len()) - 1];
    (rank(50), rank(95))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn per(d: Duration, n: usize) -> f64 {
    if n == 0 { 0.0 } else { ms(d) / n as f64 }
}

/// Destroys every container the daemon knows (none should be left on success).
async fn destroy_all(client: &Client) -> Result<()> {
    for h in client.list(&BTreeMap::new()).await? {
        client.destroy(&h).await.with_context(|| format!("destroying {h}"))?;
    }
    Ok(())
}

struct Daemon {
    child: Option<Child>,
    pid: u32,
    /// The btrfs store celld mounts for disk limits; unmounted after it stops.
    store: PathBuf,
}

impl Daemon {
    fn start(celld: &Path, dir: &Path, args: &Args, extra: &[&str]) -> Result<Daemon> {
        ensure!(celld.is_file(), "no celld binary at {} (cargo build --release --bins)", celld.display());
        std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cmd = Command::new(celld);
        cmd.arg("--depot").arg(dir.join("depot"));
        cmd.arg("--run-dir").arg(dir.join("run"));
        cmd.arg("--garden-socket").arg(dir.join("garden.sock"));
        cmd.arg("--rootfs-dir").arg(&args.rootfs_dir);
        // libcgroups warns about every absent v1 controller on every create.
        cmd.args(["--log-level", "warn,libcgroups=error"]);
        // Off unless a phase measures it (the default port may be another
        // daemon's).
        if !extra.contains(&"--metrics-listen") {
            cmd.args(["--metrics-listen", "off"]);
        }
        cmd.args(extra);
        if args.idle > 250 && !extra.contains(&"--max-containers") {
            cmd.arg("--max-containers").arg(args.idle.to_string());
        }
        let child = match cmd.stdin(Stdio::null()).spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(dir);
                return Err(e).with_context(|| format!("starting {}", celld.display()));
            }
        };
        Ok(Daemon { pid: child.id(), child: Some(child), store: dir.join("depot/store") })
    }

    async fn wait_ready(&mut self, client: &Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client.ping().await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("celld exited before serving: {status}");
            }
            if Instant::now() > deadline {
                bail!("celld did not answer on its socket within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then SIGKILL after 10 s; then waits for the helper to go too.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let helper = helper_of(self.pid);
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        if let Some(h) = helper {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{h}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // A daemon keeps its store mounted (its containers outlive it); the
        // bench's go with it. The loop device is freed with the mount.
        let _ = nix::mount::umount2(&self.store, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes the bench directory, unless something is still mounted under it
/// (removing would then delete through the mount).
fn remove_dir(dir: &Path) -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let prefix = format!("{}/", dir.display());
    let mounted: Vec<&str> =
        mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&prefix)).collect();
    if !mounted.is_empty() {
        bail!("leaving {} in place: still mounted under it: {}", dir.display(), mounted.join(" "));
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Pids of all processes, with their `/proc/<pid>/stat` ppid and comm.
fn processes() -> Vec<(u32, u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, comm))
        })
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The daemon's runtime helper: its child running `celld ... helper`.
fn helper_of(daemon: u32) -> Option<u32> {
    processes().into_iter().find_map(|(pid, ppid, _)| {
        let cmd = cmdline(pid);
        (ppid == daemon && cmd.contains("celld") && cmd.contains(" helper ")).then_some(pid)
    })
}

/// The container inits (`garden-init`) of the bench's daemon: those in the
/// cgroups of the containers in its depot (`--depot`). An init is exec'd
/// from a memfd and reparented away from the helper, so neither its
/// executable nor its parent names the daemon.
fn container_inits(daemon: u32) -> Vec<u32> {
    let args = std::fs::read(format!("/proc/{daemon}/cmdline")).unwrap_or_default();
    let mut args = args.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned());
    let Some(depot) = args.by_ref().skip_while(|a| a != "--depot").nth(1) else { return Vec::new() };
    let handles = std::fs::read_dir(Path::new(&depot).join("containers"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    density::inits_of(&handles)
}

/// `root` and every process below it.
fn descendants(root: u32) -> Vec<u32> {
    below(&processes(), &[root]).into_iter().map(|p| p.0).collect()
}

/// The daemon and every process below it or in its containers (their inits
/// may have been reparented away), with its comm.
fn cell_processes(daemon: u32) -> Vec<(u32, String)> {
    let mut roots = container_inits(daemon);
    roots.push(daemon);
    let mut found = below(&processes(), &roots);
    found.sort_unstable();
    found.dedup();
    found
}

fn below(all: &[(u32, u32, String)], roots: &[u32]) -> Vec<(u32, String)> {
    let mut found: Vec<(u32, String)> =
        all.iter().filter(|p| roots.contains(&p.0)).map(|p| (p.0, p.2.clone())).collect();
    let mut i = 0;
    while let Some(&(parent, _)) = found.get(i) {
        found.extend(all.iter().filter(|p| p.1 == parent).map(|p| (p.0, p.2.clone())));
        i += 1;
    }
    found
}

fn status_field_kib(path: &str, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let line = text.lines().find_map(|l| l.strip_prefix(field)).with_context(|| format!("no {field} in {path}"))?;
    line.trim().trim_end_matches("kB").trim().parse().with_context(|| format!("bad {field} in {path}"))
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    status_field_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

fn smaps_pss_kib(pid: u32) -> Result<u64> {
    status_field_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}
