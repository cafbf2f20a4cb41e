//! Issue 21's disk-limit phase: a create with a 100 MiB disk limit (a btrfs
//! subvolume and a qgroup limit) against one without, interleaved in the same
//! run so that both see the same machine; and, on a cell with `--disk-limits
//! none`, a create without any subvolume (what every container's own
//! subvolume costs).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use garden_api::client::Client;
use garden_api::types::{ContainerSpec, DiskLimits};

use super::{WARMUP, ms, percentiles, settle};

const LIMIT: u64 = 100 << 20;

/// Creates (timed) and destroys `cycles` containers after the warm-ups, with
/// a 100 MiB limit on the odd ones when `alternate`; the two sets of times.
async fn creates(cycles: usize, client: &Client, alternate: bool) -> Result<(Vec<Duration>, Vec<Duration>)> {
    settle().await;
    let (mut plain, mut limited) = (Vec::with_capacity(cycles), Vec::with_capacity(cycles));
    for i in 0..WARMUP + cycles {
        for with_limit in if alternate { &[false, true][..] } else { &[false][..] } {
            let mut spec = ContainerSpec { handle: format!("bench-disk-{i}-{with_limit}"), ..Default::default() };
            if *with_limit {
                spec.limits.disk_limits = DiskLimits { byte_hard: LIMIT, scope: 1, ..Default::default() };
            }
            let t0 = Instant::now();
            let handle = client.create(&spec).await.with_context(|| format!("creating {}", spec.handle))?;
            let took = t0.elapsed();
            client.destroy(&handle).await.with_context(|| format!("destroying {handle}"))?;
            if i >= WARMUP {
                if *with_limit { &mut limited } else { &mut plain }.push(took);
            }
        }
    }
    Ok((plain, limited))
}

/// On a cell with btrfs disk limits: creates with and without a limit.
pub async fn run(cycles: usize, client: &Client) -> Result<()> {
    let (mut plain, mut limited) = creates(cycles, client, true).await?;
    println!("disk limits: {cycles} creates each, interleaved, tiny rootfs, --no-network");
    println!("{:<36}{:>6}{:>9}", "create", "p50 ms", "p95 ms");
    let (p50, p95) = percentiles(&mut plain);
    println!("{:<36}{:>6.1}{:>9.1}", "without a disk limit (a subvolume)", ms(p50), ms(p95));
    let (l50, l95) = percentiles(&mut limited);
    println!("{:<36}{:>6.1}{:>9.1}", "with a 100 MiB limit", ms(l50), ms(l95));
    let diff = |a: Duration, b: Duration| ms(a) - ms(b);
    println!("difference p50 {:+.1} ms, p95 {:+.1} ms (target p50 <= 3)", diff(l50, p50), diff(l95, p95));
    Ok(())
}

/// On a cell with `--disk-limits none`: creates with no subvolume at all.
pub async fn run_without_store(cycles: usize, client: &Client) -> Result<()> {
    let (mut plain, _) = creates(cycles, client, false).await?;
    let (p50, p95) = percentiles(&mut plain);
    println!("{:<36}{:>6.1}{:>9.1}", "--disk-limits none (no subvolume)", ms(p50), ms(p95));
    println!();
    Ok(())
}
