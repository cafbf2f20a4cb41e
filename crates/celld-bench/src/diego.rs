//! A cell joined to Diego: a fake BBS and a fake Locket over mutual TLS
//! (celld-diego's `fakes`), one celld with the Diego flags, the bench as the
//! auctioneer. Desired → RUNNING through BBS beside celld's own scheduler for
//! the same action tree, one `POST /work` of 100 instances, and `GET /state`
//! at 250 running instances on one kept-alive connection.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use celld_diego::fakes::{DiegoCerts, FakeBbs, FakeBbsOptions, sh};
use celld_proto as own;
use celld_proto::diego::bbs as pb;
use serde_json::{Value, json};

use super::{Args, lrps, ms, percentiles};

/// The Diego cell's rep API and admin API, and its gRPC (unused, but fixed).
const REP: &str = "127.0.0.1:11807";
const ADMIN: &str = "127.0.0.1:11808";
const DIEGO_GRPC: &str = "127.0.0.1:11806";
/// The cell of celld's own scheduler path.
const OWN_GRPC: &str = "127.0.0.1:11809";
const CELL_ID: &str = "bench-diego_z1-0";
const WARMUP: usize = 3;
/// Instances of the one DesiredLRP of the `/work` measurement.
const WORK_INSTANCES: usize = 100;
/// Instances running while `/state` is timed.
const STATE_INSTANCES: usize = 250;
const STATE_GETS: usize = 300;
/// Targets of issue 20.
const STATE_P50_MS: f64 = 5.0;
const CLAIM_ALL_MS: f64 = 1000.0;
const RATIO: f64 = 1.2;

/// Both cells' network: the bench's pool, ports of their own.
fn pool(grpc: &'static str) -> Vec<&'static str> {
    vec!["--network-pool", super::BENCH_POOL, "--port-pool-start", "53001", "--grpc-listen", grpc]
}

/// The fields both DesiredLRPs (BBS's and celld's) share, by name.
macro_rules! workload {
    ($pb:ident, $guid:expr) => {
        $pb::DesiredLrp {
            process_guid: $guid.into(),
            log_guid: $guid.into(),
            domain: "cf-apps".into(),
            memory_mb: 32,
            disk_mb: 64,
            ports: vec![8080],
            start_timeout_ms: 30_000,
            setup: Some(sh(SETUP, "CELL")),
            action: Some(sh(SERVE, "APP/PROC/WEB")),
            ..Default::default()
        }
    };
}

const SETUP: &str = "mkdir -p /home/vcap/app && echo hello from diego > /home/vcap/app/index.html";
const SERVE: &str = "exec busybox httpd -f -p 8080 -h /home/vcap/app";

/// The workload, as BBS holds it: a setup, a web server, a port check.
fn bbs_desired(guid: &str, instances: usize) -> pb::DesiredLrp {
    let tcp = pb::TcpCheck { port: 8080, connect_timeout_ms: 1000, interval_ms: 0 };
    let checks = vec![pb::Check { tcp_check: Some(tcp), http_check: None }];
    pb::DesiredLrp {
        root_fs: "preloaded:tiny".into(),
        check_definition: Some(pb::CheckDefinition { checks, log_source: "HEALTH".into(), ..Default::default() }),
        ..pb::DesiredLrp { instances: instances as i32, ..workload!(pb, guid) }
    }
}

/// The same workload as celld's own scheduler takes it.
fn own_desired(guid: &str) -> own::DesiredLrp {
    let tcp = own::TcpCheck { port: 8080, connect_timeout_ms: 1000, interval_ms: 0 };
    let checks = vec![own::Check { check: Some(own::check::Check::Tcp(tcp)) }];
    own::DesiredLrp {
        rootfs: "preloaded:tiny".into(),
        check_definition: Some(own::CheckDefinition { checks, ..Default::default() }),
        ..own::DesiredLrp { instances: 1, ..workload!(own, guid) }
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// The whole phase; every cell, fake and file it makes is gone when it returns.
pub fn run(celld: &Path, dir: &Path, args: &Args) -> Result<()> {
    // The fakes serve from this runtime's threads while the bench waits.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let n = args.diego_lrps;
    ensure!(n > 0, "--diego-lrps must be at least 1");
    ensure!(WARMUP + n + WORK_INSTANCES < STATE_INSTANCES, "--diego-lrps must be below {}", STATE_INSTANCES - 103);

    // 1. celld's own scheduler path, for the ratio.
    let sched = lrps::Scheduler::start(celld, &dir.join("diego-scheduler"))?;
    let mut own_args = pool(OWN_GRPC);
    own_args.extend(["--scheduler", lrps::SCHEDULER, "--cell-id", "bench-own-cell"]);
    let mut own_samples = Vec::with_capacity(n);
    let r = super::run_cell(&rt, celld, &dir.join("diego-own"), args, &own_args, async |_, _, _| {
        super::settle().await;
        let mut s = lrps::scheduler_client().await?;
        let mut events = s.subscribe_events(own::SubscribeEventsRequest {}).await?.into_inner();
        for i in 0..WARMUP + n {
            let took = lrps::until_running(&mut s, &mut events, own_desired(&format!("bench-own-{i}"))).await?;
            if i >= WARMUP {
                own_samples.push(took);
            }
        }
        // Removed through the scheduler, so that it restarts none of them
        // while the bench destroys what is left.
        for i in 0..WARMUP + n {
            let process_guid = format!("bench-own-{i}");
            s.remove_desired_lrp(own::RemoveDesiredLrpRequest { process_guid }).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !s.actual_lr_ps(own::ActualLrPsRequest::default()).await?.into_inner().actual_lrps.is_empty() {
            ensure!(Instant::now() < deadline, "the scheduler's instances were not removed within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    });
    drop(sched);
    r?;

    // 2. The same through BBS, then /work and /state.
    let certs = DiegoCerts::new("bench").context("the fakes' certificates")?;
    let (bbs, locket) = rt.block_on(async {
        anyhow::Ok((certs.fake_bbs(FakeBbsOptions::default()).await?, certs.fake_locket().await?))
    })?;
    let tls = certs.server_identity()?.client_config()?;
    // The auctioneer's client: the control plane's identity, connections kept alive.
    let auctioneer = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(Duration::from_secs(60))
        .build()
        .context("the auctioneer's HTTPS client")?;
    let p = |p: &Path| p.display().to_string();
    let (bbs_url, locket_addr) = (bbs.url(), locket.address());
    let (ca, cert, key) = (p(&certs.cell.ca), p(&certs.cell.cert), p(&certs.cell.key));
    let rep_url = format!("https://{REP}");
    let max = (STATE_INSTANCES + 10).to_string();
    let mut diego_args = pool(DIEGO_GRPC);
    diego_args.extend([
        "--bbs-address",
        &bbs_url,
        "--rep-ca",
        &ca,
        "--rep-cert",
        &cert,
        "--rep-key",
        &key,
        "--locket-address",
        &locket_addr,
        "--rep-listen",
        REP,
        "--rep-admin-listen",
        ADMIN,
        "--rep-url",
        &rep_url,
        "--cell-id",
        CELL_ID,
        "--max-containers",
        &max,
        "--memory-mb",
        "16384",
        "--disk-mb",
        "32768",
    ]);
    let rep = Rep { bbs: &bbs, client: auctioneer };
    let r = super::run_cell(&rt, celld, &dir.join("diego"), args, &diego_args, async |_, _, _| {
        rep.measure(n, &mut own_samples).await
    });
    drop(locket);
    r
}

/// The bench as Diego's auctioneer, and as BBS's reader.
struct Rep<'a> {
    bbs: &'a FakeBbs,
    client: reqwest::Client,
}

impl Rep<'_> {
    async fn measure(&self, n: usize, own_samples: &mut [Duration]) -> Result<()> {
        self.wait_ready().await?;
        super::settle().await;
        // Desired → RUNNING, one LRP at a time.
        let mut samples = Vec::with_capacity(n);
        // Where the Diego path's own time goes: /work answered, then the claim in BBS.
        let (mut answered, mut claims) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..WARMUP + n {
            let guid = format!("bench-diego-{i}");
            let t0 = Instant::now();
            self.desire(&bbs_desired(&guid, 1))?;
            self.work(&guid, 0..1).await?;
            let tw = t0.elapsed();
            self.wait(&guid, 1, "claimed", |a| a.state != "UNCLAIMED", Duration::from_secs(30)).await?;
            let tc = t0.elapsed();
            self.wait(&guid, 1, "RUNNING", |a| a.state == "RUNNING", Duration::from_secs(30)).await?;
            if i >= WARMUP {
                samples.push(t0.elapsed());
                answered.push(tw);
                claims.push(tc);
            }
        }
        let (d50, d95) = percentiles(&mut samples);
        let (o50, o95) = percentiles(own_samples);
        let ratio = d50.as_secs_f64() / o50.as_secs_f64();
        println!("diego: a cell joined to a fake BBS and Locket over mutual TLS, the bench as the auctioneer");
        println!("desired -> RUNNING, {n} LRPs of 1 instance (setup, busybox httpd, port check)");
        println!("{:<22}{:>8}{:>9}", "", "p50 ms", "p95 ms");
        println!("{:<22}{:>8.1}{:>9.1}", "BBS + POST /work", ms(d50), ms(d95));
        println!("{:<22}{:>8.1}{:>9.1}", "celld's scheduler", ms(o50), ms(o95));
        println!("ratio p50 BBS/celld: {ratio:.2} (target <= {RATIO:.2}) {}", pass(ratio <= RATIO));
        println!(
            "through BBS, p50: POST /work answered at {:.1} ms, the instance CLAIMED in BBS at {:.1} ms",
            ms(percentiles(&mut answered).0),
            ms(percentiles(&mut claims).0)
        );

        // One /work of 100 instances of one DesiredLRP.
        let guid = "bench-diego-work";
        self.desire(&bbs_desired(guid, WORK_INSTANCES))?;
        let t0 = Instant::now();
        self.work(guid, 0..WORK_INSTANCES).await?;
        let claimed = |a: &pb::ActualLrp| {
            matches!(a.state.as_str(), "CLAIMED" | "RUNNING")
                && a.actual_lrp_instance_key.as_ref().is_some_and(|k| k.cell_id == CELL_ID)
        };
        self.wait(guid, WORK_INSTANCES, "claimed", claimed, Duration::from_secs(60)).await?;
        let all_claimed = t0.elapsed();
        self.wait(guid, WORK_INSTANCES, "RUNNING", |a| a.state == "RUNNING", Duration::from_secs(300)).await?;
        let all_running = t0.elapsed();
        println!(
            "POST /work of {WORK_INSTANCES} instances: all claimed in BBS in {:.0} ms (target <= {CLAIM_ALL_MS:.0}) {}; \
             all RUNNING in {:.2} s",
            ms(all_claimed),
            pass(ms(all_claimed) <= CLAIM_ALL_MS),
            all_running.as_secs_f64()
        );

        // /state with 250 instances running.
        let rest = STATE_INSTANCES - WARMUP - n - WORK_INSTANCES;
        let guid = "bench-diego-state";
        self.desire(&bbs_desired(guid, rest))?;
        self.work(guid, 0..rest).await?;
        self.wait(guid, rest, "RUNNING", |a| a.state == "RUNNING", Duration::from_secs(600)).await?;
        let state = self.state().await?;
        let running = state["LRPs"].as_array().map_or(0, |l| l.iter().filter(|l| l["state"] == "RUNNING").count());
        ensure!(running == STATE_INSTANCES, "/state shows {running} RUNNING instances, not {STATE_INSTANCES}");
        let mut gets = Vec::with_capacity(STATE_GETS);
        for i in 0..20 + STATE_GETS {
            let t = Instant::now();
            self.state().await?;
            if i >= 20 {
                gets.push(t.elapsed());
            }
        }
        let (s50, s95) = percentiles(&mut gets);
        println!(
            "GET /state at {STATE_INSTANCES} RUNNING instances, {STATE_GETS} GETs on one kept-alive mutual-TLS \
             connection: p50 {:.2} ms, p95 {:.2} ms (target p50 <= {STATE_P50_MS:.0}) {}",
            ms(s50),
            ms(s95),
            pass(ms(s50) <= STATE_P50_MS)
        );
        println!();
        self.stop_all(&state).await
    }

    /// Stops every instance as BBS has a rep do it (`POST …/stop`), so that
    /// none is left for the bench's destroy, whose crashes the cell would report.
    async fn stop_all(&self, state: &Value) -> Result<()> {
        for l in state["LRPs"].as_array().into_iter().flatten() {
            let (pg, ig) = (l["process_guid"].as_str().unwrap_or(""), l["instance_guid"].as_str().unwrap_or(""));
            let url = format!("https://{REP}/v1/lrps/{pg}/instances/{ig}/stop");
            let r = self.client.post(url).send().await.context("POST …/stop")?;
            ensure!(r.status().is_success(), "stopping {pg}/{ig}: {}", r.status());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.state().await?["LRPs"].as_array().is_some_and(|l| !l.is_empty()) {
            ensure!(Instant::now() < deadline, "the instances were not stopped within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    fn desire(&self, d: &pb::DesiredLrp) -> Result<()> {
        self.bbs
            .state()
            .desire_lrp(Some(d))
            .map_err(|e| anyhow::anyhow!("desiring {} in BBS: {}", d.process_guid, e.message))
    }

    /// The rep API answers once the cell has restored its containers.
    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.client.get(format!("https://{REP}/state")).send().await {
                Ok(r) if r.status() == 200 => return Ok(()),
                _ if Instant::now() > deadline => bail!("the rep API on {REP} did not answer within 30 s"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn state(&self) -> Result<Value> {
        let r = self.client.get(format!("https://{REP}/state")).send().await.context("GET /state")?;
        ensure!(r.status() == 200, "GET /state: {}", r.status());
        serde_json::from_slice(&r.bytes().await.context("GET /state")?).context("the /state JSON")
    }

    /// POSTs the auction's work for `indices` of `guid`; all must be taken.
    async fn work(&self, guid: &str, indices: std::ops::Range<usize>) -> Result<()> {
        let lrps: Vec<Value> = indices
            .map(|index| {
                json!({"instance_guid": "", "process_guid": guid, "index": index, "domain": "cf-apps",
                       "PlacementTags": null, "VolumeDrivers": [], "RootFs": "preloaded:tiny",
                       "MemoryMB": 32, "DiskMB": 64, "MaxPids": 0, "state": ""})
            })
            .collect();
        let body = json!({"LRPs": lrps, "Tasks": null, "cell_id": CELL_ID}).to_string();
        let r = self.client.post(format!("https://{REP}/work")).body(body).send().await.context("POST /work")?;
        ensure!(r.status() == 200, "POST /work: {}", r.status());
        let failed: Value = serde_json::from_slice(&r.bytes().await.context("POST /work")?).context("/work's JSON")?;
        ensure!(failed["LRPs"].as_array().is_none_or(|l| l.is_empty()), "the cell gave work back: {failed}");
        Ok(())
    }

    /// Polls BBS's table (every millisecond: the bench times to it) until
    /// `count` instances of `guid` satisfy `ok`; a crash ends the wait.
    async fn wait(
        &self,
        guid: &str,
        count: usize,
        what: &str,
        ok: impl Fn(&pb::ActualLrp) -> bool,
        within: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let (done, crashed) = {
                let st = self.bbs.state();
                let mine = st.actual.range((guid.to_string(), 0)..=(guid.to_string(), i32::MAX)).map(|(_, a)| a);
                mine.fold((0, None), |(done, crashed), a| {
                    (done + usize::from(ok(a)), crashed.or((a.crash_count > 0).then(|| a.crash_reason.clone())))
                })
            };
            if let Some(why) = crashed {
                bail!("{guid} crashed: {why}");
            }
            if done >= count {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "{done} of {count} instances of {guid} {what} after {within:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
