//! Issue 21's disk-limit phase: a create with a 100 MiB disk limit (a btrfs
//! subvolume and a qgroup limit) against one without, interleaved in the same
//! run so that both see the same machine.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use garden_api::client::Client;
use garden_api::types::{ContainerSpec, DiskLimits};

use super::{WARMUP, ms, percentiles, settle};

const LIMIT: u64 = 100 << 20;

pub async fn run(cycles: usize, client: &Client) -> Result<()> {
    settle().await;
    let (mut plain, mut limited) = (Vec::with_capacity(cycles), Vec::with_capacity(cycles));
    for i in 0..WARMUP + cycles {
        for with_limit in [false, true] {
            let mut spec = ContainerSpec { handle: format!("bench-disk-{i}-{with_limit}"), ..Default::default() };
            if with_limit {
                spec.limits.disk_limits = DiskLimits { byte_hard: LIMIT, scope: 1, ..Default::default() };
            }
            let t0 = Instant::now();
            let handle = client.create(&spec).await.with_context(|| format!("creating {}", spec.handle))?;
            let took = t0.elapsed();
            client.destroy(&handle).await.with_context(|| format!("destroying {handle}"))?;
            if i >= WARMUP {
                if with_limit { &mut limited } else { &mut plain }.push(took);
            }
        }
    }
    println!("disk limits: {cycles} creates each, interleaved, tiny rootfs, --no-network");
    println!("{:<24}{:>6}{:>9}", "create", "p50 ms", "p95 ms");
    let (p50, p95) = percentiles(&mut plain);
    println!("{:<24}{:>6.1}{:>9.1}", "without a disk limit", ms(p50), ms(p95));
    let (l50, l95) = percentiles(&mut limited);
    println!("{:<24}{:>6.1}{:>9.1}", "with 100 MiB limit", ms(l50), ms(l95));
    let diff = |a: Duration, b: Duration| ms(a) - ms(b);
    println!("difference p50 {:+.1} ms, p95 {:+.1} ms (target p50 <= 3)", diff(l50, p50), diff(l95, p95));
    println!();
    Ok(())
}
