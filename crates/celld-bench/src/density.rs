//! 1 000 containers on one cell (issue 24): networked creates timed one by
//! one (the first and the last 100 compared), what each idle container costs
//! the host (its init's PSS, and the kernel's share read from
//! `/proc/meminfo`), all of them destroyed at once, and then a check that
//! nothing is left: no init, cgroup, veth, mount, firewall rule or depot
//! directory (and how much memory did not come back).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use garden_api::client::Client;
use garden_api::types::{ContainerSpec, NetIn};

use super::{ms, percentiles, settle, smaps_pss_kib, vm_rss_kib};

/// The phase's own address pool (1024 containers), so it runs beside other
/// bench cells, and the firewall table named after it.
pub const POOL: &str = "10.252.32.0/20";
pub const TABLE: &str = "celld-0afc2000-20";

/// Destroys in flight at once, as a cell being drained destroys them.
const DESTROY_IN_FLIGHT: usize = 16;

/// The `/proc/meminfo` fields that show where a container's memory goes.
const MEMINFO: [&str; 8] =
    ["AnonPages", "Shmem", "Slab", "SUnreclaim", "PageTables", "KernelStack", "Percpu", "VmallocUsed"];

/// `/proc/meminfo` in KiB by field, plus `Used` (MemTotal − MemAvailable).
fn meminfo() -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut m: BTreeMap<String, i64> = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.trim().trim_end_matches("kB").trim().parse().ok()?))
        })
        .collect();
    let used = m.get("MemTotal").copied().unwrap_or(0) - m.get("MemAvailable").copied().unwrap_or(0);
    m.insert("Used".into(), used);
    m
}

/// Per-container change of each field between two readings.
fn per_container(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>, n: usize) -> String {
    std::iter::once("Used")
        .chain(MEMINFO)
        .map(|k| {
            let d = after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
            format!("{k} {:+.0}", d as f64 / n as f64)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a container leaves on the host, counted so that a leak shows as a
/// difference between before the creates and after the destroys.
#[derive(Debug, PartialEq)]
struct Traces {
    inits: usize,
    cgroups: usize,
    /// Host ends of veths in the phase's pool.
    veths: usize,
    mounts: usize,
    rules: usize,
    depot_entries: usize,
}

fn traces(handles: &HashSet<String>, depot: &Path) -> Traces {
    let count_lines = |path: &str, needle: &str| {
        std::fs::read_to_string(path).map(|t| t.lines().filter(|l| l.contains(needle)).count()).unwrap_or(0)
    };
    let rules = std::process::Command::new("nft")
        .args(["-a", "list", "table", "ip", TABLE])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("# handle")).count())
        .unwrap_or(0);
    Traces {
        inits: inits_of(handles).len(),
        cgroups: cgroups_of(handles),
        veths: std::fs::read_dir("/sys/class/net")
            .map(|d| d.flatten().filter(|e| in_pool(&e.file_name().to_string_lossy())).count())
            .unwrap_or(0),
        mounts: count_lines("/proc/self/mountinfo", &depot.display().to_string()),
        rules,
        depot_entries: std::fs::read_dir(depot.join("containers")).map(|d| d.count()).unwrap_or(0),
    }
}

/// Whether `ifname` is the host end of a veth of [`POOL`] (`cvh-` and the
/// subnet's address in hex).
fn in_pool(ifname: &str) -> bool {
    let Some(addr) = ifname.strip_prefix("cvh-").and_then(|h| u32::from_str_radix(h, 16).ok()) else { return false };
    let Some((net, bits)) = POOL.split_once('/') else { return false };
    let (Ok(net), Ok(bits)) = (net.parse::<std::net::Ipv4Addr>(), bits.parse::<u32>()) else { return false };
    addr >> (32 - bits) == u32::from(net) >> (32 - bits)
}

/// Kernel slab caches by name: bytes in use (objects × object size).
fn slabs() -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_string();
            let active: i64 = f.next()?.parse().ok()?;
            let _total = f.next()?;
            let size: i64 = f.next()?.parse().ok()?;
            Some((name, active * size))
        })
        .collect()
}

/// The slab caches that grew most, in KiB per container.
fn top_slabs(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>, n: usize) -> String {
    let mut grown: Vec<(i64, &String)> =
        after.iter().map(|(k, v)| (v - before.get(k).copied().unwrap_or(0), k)).filter(|(d, _)| *d > 0).collect();
    grown.sort_unstable_by(|a, b| b.cmp(a));
    grown
        .iter()
        .take(10)
        .map(|(d, k)| format!("{k} {:.1}", *d as f64 / 1024.0 / n as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The container inits (`garden-init`) whose cgroup is one of `handles`.
pub(crate) fn inits_of(handles: &HashSet<String>) -> Vec<u32> {
    super::processes()
        .into_iter()
        .filter(|(_, _, comm)| comm == "garden-init")
        .filter(|(pid, _, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.lines().any(|l| l.rsplit_once('/').is_some_and(|(_, leaf)| handles.contains(leaf))))
        })
        .map(|p| p.0)
        .collect()
}

/// Cgroup directories named by one of `handles`, in every hierarchy.
fn cgroups_of(handles: &HashSet<String>) -> usize {
    let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else { return 0 };
    let mut n = 0;
    for root in roots.flatten() {
        let Ok(parents) = std::fs::read_dir(root.path()) else { continue };
        for parent in parents.flatten().filter(|p| p.file_name().to_string_lossy().starts_with("celld-")) {
            let Ok(children) = std::fs::read_dir(parent.path()) else { continue };
            n += children.flatten().filter(|c| handles.contains(&*c.file_name().to_string_lossy())).count();
        }
    }
    n
}

pub async fn run(n: usize, client: &Client, daemon: u32, depot: &Path) -> Result<()> {
    settle().await;
    let handles: Vec<String> = (0..n).map(|i| format!("bench-1k-{i}")).collect();
    let set: HashSet<String> = handles.iter().cloned().collect();
    let before = traces(&set, depot);
    let mem_before = meminfo();
    let slabs_before = slabs();
    let helper = super::helper_of(daemon);
    let daemon_before = vm_rss_kib(daemon)? + helper.map(vm_rss_kib).transpose()?.unwrap_or(0);
    let mut times = Vec::with_capacity(n);
    let t = Instant::now();
    for h in &handles {
        let spec = ContainerSpec {
            handle: h.clone(),
            netin: vec![NetIn { host_port: 0, container_port: 8080 }],
            ..Default::default()
        };
        let c0 = Instant::now();
        if let Err(e) = client.create(&spec).await {
            destroy(client, &handles).await;
            return Err(e).with_context(|| format!("creating {h} (container {} of {n})", times.len() + 1));
        }
        times.push(c0.elapsed());
    }
    let all = t.elapsed();
    let result = measure(n, &times, all, &set, daemon, daemon_before, &mem_before).await;
    println!("  slab caches that grew most, KiB per container: {}", top_slabs(&slabs_before, &slabs(), n));
    let t = Instant::now();
    let failed = destroy(client, &handles).await;
    let gone = t.elapsed();
    println!(
        "destroyed all {n} at once ({DESTROY_IN_FLIGHT} in flight): {:.2} s ({:.2} ms each; target <= 2 s){}",
        gone.as_secs_f64(),
        ms(gone) / n as f64,
        if failed > 0 { format!("; {failed} destroys FAILED") } else { String::new() }
    );
    result?;
    // The kernel finishes network namespaces, veths and RCU callbacks after
    // the destroys return.
    settle().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = traces(&set, depot);
    let mem_after = meminfo();
    println!("after all are gone, per container: {}", per_container(&mem_before, &mem_after, n));
    if after != before || failed > 0 {
        bail!("left behind after destroying {n} containers: before {before:?}, after {after:?}");
    }
    println!("nothing left behind: no init, cgroup, veth, mount, nft rule or depot entry");
    Ok(())
}

async fn measure(
    n: usize,
    times: &[Duration],
    all: Duration,
    handles: &HashSet<String>,
    daemon: u32,
    daemon_before: u64,
    mem_before: &BTreeMap<String, i64>,
) -> Result<()> {
    println!("created {n} networked containers (1 net-in each) in {:.2} s", all.as_secs_f64());
    let first = &mut times[..100.min(n)].to_vec();
    let last = &mut times[n.saturating_sub(100)..].to_vec();
    let (f50, f95) = percentiles(first);
    let (l50, l95) = percentiles(last);
    println!(
        "create: first 100 p50 {:.1} / p95 {:.1} ms; last 100 p50 {:.1} / p95 {:.1} ms; last 100 p95/p50 {:.2} (target <= 1.5)",
        ms(f50),
        ms(f95),
        ms(l50),
        ms(l95),
        l95.as_secs_f64() / l50.as_secs_f64()
    );
    // What settles after the creates (deferred frees, the last init's start).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let inits = inits_of(handles);
    let pss: u64 = inits.iter().map(|&p| smaps_pss_kib(p).unwrap_or(0)).sum();
    let rss: u64 = inits.iter().map(|&p| vm_rss_kib(p).unwrap_or(0)).sum();
    if let (Some(pss), Some(rss)) = (pss.checked_div(inits.len() as u64), rss.checked_div(inits.len() as u64)) {
        println!("container inits: PSS {pss} KiB per container (RSS {rss} KiB; target PSS <= 150 KiB)");
    }
    if inits.len() != n {
        bail!("found {} garden-init processes for {n} containers", inits.len());
    }
    let helper = super::helper_of(daemon);
    let daemon_after = vm_rss_kib(daemon)? + helper.map(vm_rss_kib).transpose()?.unwrap_or(0);
    let mem = meminfo();
    let used = mem.get("Used").copied().unwrap_or(0) - mem_before.get("Used").copied().unwrap_or(0);
    println!(
        "host memory: +{:.0} KiB per idle networked container (MemTotal - MemAvailable; target <= 500), of which daemon+helper +{:.0}",
        used as f64 / n as f64,
        daemon_after.saturating_sub(daemon_before) as f64 / n as f64
    );
    println!("  per container, KiB: {}", per_container(mem_before, &mem, n));
    Ok(())
}

/// Destroys `handles` with a few in flight; returns how many failed (an
/// absent container counts as destroyed).
async fn destroy(client: &Client, handles: &[String]) -> usize {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let existing: HashSet<String> = client.list(&BTreeMap::new()).await.unwrap_or_default().into_iter().collect();
    let todo: Arc<Vec<String>> = Arc::new(handles.iter().filter(|h| existing.contains(*h)).cloned().collect());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..DESTROY_IN_FLIGHT {
        let (client, next, failed, todo) = (client.clone(), next.clone(), failed.clone(), todo.clone());
        workers.spawn(async move {
            while let Some(h) = todo.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                if let Err(e) = client.destroy(h).await {
                    eprintln!("destroying {h}: {e}");
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    failed.load(std::sync::atomic::Ordering::Relaxed)
}
