//! The cell's host vitals, what `bosh vms --vitals` shows of a VM: load,
//! CPU split, memory and swap, the system and depot disks, uptime. Read from
//! /proc and statvfs on each Cell `State` call (a few small reads), never by
//! the executor's own `state()`, which the Diego rep polls.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use celld_proto as pb;

#[derive(Debug, thiserror::Error)]
pub enum VitalsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{file}: {what}")]
    Malformed { file: &'static str, what: String },
    #[error("statvfs {path}: {source}")]
    Statvfs { path: PathBuf, source: nix::Error },
}

fn malformed(file: &'static str, what: impl Into<String>) -> VitalsError {
    VitalsError::Malformed { file, what: what.into() }
}

/// Load averages over 1, 5 and 15 minutes: the first three fields of
/// /proc/loadavg.
pub fn parse_loadavg(text: &str) -> Result<[f64; 3], VitalsError> {
    let mut it = text.split_whitespace();
    let mut out = [0.0; 3];
    for (slot, name) in out.iter_mut().zip(["1m", "5m", "15m"]) {
        let f = it.next().ok_or_else(|| malformed("/proc/loadavg", format!("no {name} load")))?;
        *slot = parse_non_negative(f).ok_or_else(|| malformed("/proc/loadavg", format!("{name} load {f:?}")))?;
    }
    Ok(out)
}

fn parse_non_negative(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0)
}

/// The aggregate `cpu` line of /proc/stat, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub sys: u64,
    pub wait: u64,
    pub total: u64,
}

/// The first line of /proc/stat: `cpu user nice system idle iowait irq
/// softirq steal [guest guest_nice]`. Guest time is already in user, so the
/// total stops at steal (kernels before 2.6.11 have fewer fields: missing
/// ones count 0).
pub fn parse_stat(text: &str) -> Result<CpuTicks, VitalsError> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))
        .ok_or_else(|| malformed("/proc/stat", "no aggregate cpu line"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse::<u64>().map_err(|_| malformed("/proc/stat", format!("cpu field {f:?}"))))
        .collect::<Result<_, _>>()?;
    if fields.len() < 4 {
        return Err(malformed("/proc/stat", format!("cpu line has {} fields, want at least 4", fields.len())));
    }
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    Ok(CpuTicks {
        // As the BOSH agent's sigar: user without nice, sys, and iowait.
        user: at(0),
        sys: at(2),
        wait: at(4),
        total: fields.iter().fold(0u64, |a, b| a.saturating_add(*b)),
    })
}

/// User, sys and wait as % of the ticks between two samples (all 0 when no
/// tick passed or the counters went back, e.g. a CPU taken offline).
pub fn cpu_percent(prev: CpuTicks, now: CpuTicks) -> [f64; 3] {
    let total = now.total.saturating_sub(prev.total);
    if total == 0 {
        return [0.0; 3];
    }
    let pct = |a: u64, b: u64| a.saturating_sub(b) as f64 * 100.0 / total as f64;
    [pct(now.user, prev.user), pct(now.sys, prev.sys), pct(now.wait, prev.wait)]
}

/// Bytes from /proc/meminfo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    pub used: u64,
    pub swap_total: u64,
    pub swap_used: u64,
}

/// /proc/meminfo: used = MemTotal − MemAvailable (MemFree on kernels before
/// 3.14, which lack it), swap used = SwapTotal − SwapFree.
pub fn parse_meminfo(text: &str) -> Result<Memory, VitalsError> {
    let get = |key: &str| -> Result<Option<u64>, VitalsError> {
        let Some(line) = text.lines().find(|l| l.split(':').next() == Some(key)) else { return Ok(None) };
        let rest = line.split_once(':').map(|(_, r)| r.trim()).unwrap_or_default();
        let mut parts = rest.split_whitespace();
        let n = parts
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| malformed("/proc/meminfo", format!("{key} value {rest:?}")))?;
        // Every size line is in kB (KiB); a unit-less line would be a count.
        match parts.next() {
            Some("kB") => Ok(Some(n.saturating_mul(1024))),
            _ => Err(malformed("/proc/meminfo", format!("{key} is not in kB: {rest:?}"))),
        }
    };
    let need = |v: Option<u64>, key: &str| v.ok_or_else(|| malformed("/proc/meminfo", format!("no {key}")));
    let total = need(get("MemTotal")?, "MemTotal")?;
    let available = match get("MemAvailable")? {
        Some(a) => a,
        None => need(get("MemFree")?, "MemAvailable or MemFree")?,
    };
    let swap_total = get("SwapTotal")?.unwrap_or(0);
    let swap_free = get("SwapFree")?.unwrap_or(0);
    Ok(Memory {
        total,
        used: total.saturating_sub(available),
        swap_total,
        swap_used: swap_total.saturating_sub(swap_free),
    })
}

/// Whole seconds since boot: the first field of /proc/uptime.
pub fn parse_uptime(text: &str) -> Result<u64, VitalsError> {
    let f = text.split_whitespace().next().ok_or_else(|| malformed("/proc/uptime", "empty"))?;
    let secs = parse_non_negative(f).ok_or_else(|| malformed("/proc/uptime", format!("uptime {f:?}")))?;
    Ok(secs as u64)
}

/// Used % as `df` shows it: used over what non-root users could have,
/// (blocks − bfree) / (blocks − bfree + bavail); 0 for an empty file system.
pub fn disk_percent(blocks: u64, bfree: u64, bavail: u64) -> f64 {
    let used = blocks.saturating_sub(bfree);
    let denom = used.saturating_add(bavail);
    if denom == 0 { 0.0 } else { used as f64 * 100.0 / denom as f64 }
}

fn statvfs_percent(path: &Path) -> Result<f64, VitalsError> {
    let s =
        nix::sys::statvfs::statvfs(path).map_err(|source| VitalsError::Statvfs { path: path.to_path_buf(), source })?;
    // fsblkcnt_t is u64 on 64-bit Linux but u32 on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let (blocks, bfree, bavail) = (u64::from(s.blocks()), u64::from(s.blocks_free()), u64::from(s.blocks_available()));
    Ok(disk_percent(blocks, bfree, bavail))
}

/// Samples the host's vitals; keeps CPU samples so each call's CPU split is
/// over at least [`CPU_WINDOW`] (two calls a moment apart would otherwise
/// split a tick or two: 100 % user).
pub struct Vitals {
    proc_dir: PathBuf,
    depot: PathBuf,
    cpu: Mutex<CpuSamples>,
}

const CPU_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// The newest CPU sample, and the one before it (at least CPU_WINDOW older).
#[derive(Default)]
struct CpuSamples {
    prev: Option<(Instant, CpuTicks)>,
    last: Option<(Instant, CpuTicks)>,
}

impl CpuSamples {
    /// The sample to measure `now` against (none: since boot), recording
    /// `now` when the newest is a window old.
    fn base(&mut self, at: Instant, now: CpuTicks) -> CpuTicks {
        match self.last {
            Some((t, last)) if at.duration_since(t) >= CPU_WINDOW => {
                self.prev = self.last;
                self.last = Some((at, now));
                last
            }
            Some(_) => self.prev.or(self.last).map(|(_, c)| c).unwrap_or_default(),
            None => {
                self.last = Some((at, now));
                CpuTicks::default()
            }
        }
    }
}

impl Vitals {
    /// `depot`: the directory whose file system is the "ephemeral disk".
    pub fn new(depot: impl Into<PathBuf>) -> Self {
        Self::with_proc(depot, "/proc")
    }

    /// Reads `proc_dir` instead of /proc (tests).
    pub fn with_proc(depot: impl Into<PathBuf>, proc_dir: impl Into<PathBuf>) -> Self {
        Self { proc_dir: proc_dir.into(), depot: depot.into(), cpu: Mutex::new(CpuSamples::default()) }
    }

    fn read(&self, name: &str) -> Result<String, VitalsError> {
        let path = self.proc_dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| VitalsError::Read { path: path.display().to_string(), source })
    }

    /// One sample. The first call's CPU split is since boot; later ones over
    /// at least CPU_WINDOW.
    pub fn sample(&self) -> Result<pb::CellVitals, VitalsError> {
        let [load_1m, load_5m, load_15m] = parse_loadavg(&self.read("loadavg")?)?;
        let now = parse_stat(&self.read("stat")?)?;
        let prev = {
            // A poisoned lock only means another sampler panicked mid-swap;
            // the value inside is still a valid sample.
            let mut g = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
            g.base(Instant::now(), now)
        };
        let [cpu_user_percent, cpu_sys_percent, cpu_wait_percent] = cpu_percent(prev, now);
        let mem = parse_meminfo(&self.read("meminfo")?)?;
        Ok(pb::CellVitals {
            load_1m,
            load_5m,
            load_15m,
            cpu_user_percent,
            cpu_sys_percent,
            cpu_wait_percent,
            memory_used_bytes: mem.used,
            memory_total_bytes: mem.total,
            swap_used_bytes: mem.swap_used,
            swap_total_bytes: mem.swap_total,
            system_disk_percent: statvfs_percent(Path::new("/"))?,
            depot_disk_percent: statvfs_percent(&self.depot)?,
            uptime_seconds: parse_uptime(&self.read("uptime")?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 20 3 2 0 7 0\ncpu0 50 2 25 400 10 1 1 0 0 0\nintr 1 2 3\n";
    const MEMINFO: &str = "MemTotal:        8000000 kB\nMemFree:          500000 kB\n\
        MemAvailable:    6000000 kB\nBuffers:           1000 kB\nSwapTotal:       2000000 kB\n\
        SwapFree:        1500000 kB\nHugePages_Total:       0\n";

    #[test]
    fn loadavg_parses_and_rejects_garbage() {
        assert_eq!(parse_loadavg("0.12 0.25 0.30 1/123 4567\n").unwrap(), [0.12, 0.25, 0.30]);
        for bad in ["", "0.1 0.2", "0.1 x 0.3", "-1 0 0", "NaN 0 0", "inf 0 0"] {
            assert!(matches!(parse_loadavg(bad), Err(VitalsError::Malformed { .. })), "{bad:?}");
        }
    }

    #[test]
    fn stat_takes_user_sys_iowait_and_a_total_without_guest() {
        let t = parse_stat(STAT).unwrap();
        // Total: user..steal (100+5+50+800+20+3+2+0), not guest's 7.
        assert_eq!(t, CpuTicks { user: 100, sys: 50, wait: 20, total: 980 });
        // Old kernels: four fields.
        assert_eq!(parse_stat("cpu 1 2 3 4\n").unwrap(), CpuTicks { user: 1, sys: 3, wait: 0, total: 10 });
        for bad in ["", "cpu0 1 2 3 4\n", "cpu 1 2\n", "cpu 1 x 3 4\n", "cpu -1 2 3 4\n"] {
            assert!(matches!(parse_stat(bad), Err(VitalsError::Malformed { .. })), "{bad:?}");
        }
    }

    #[test]
    fn cpu_percent_is_over_the_delta() {
        let a = CpuTicks { user: 100, sys: 50, wait: 20, total: 1000 };
        let b = CpuTicks { user: 130, sys: 60, wait: 20, total: 1200 };
        assert_eq!(cpu_percent(a, b), [15.0, 5.0, 0.0]);
        // Since boot on the first sample.
        assert_eq!(cpu_percent(CpuTicks::default(), a), [10.0, 5.0, 2.0]);
        // No time passed, or counters went back: zeros, not NaN.
        assert_eq!(cpu_percent(a, a), [0.0; 3]);
        assert_eq!(cpu_percent(b, a), [0.0; 3]);
    }

    #[test]
    fn meminfo_used_is_total_minus_available() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, 8_000_000 * 1024);
        assert_eq!(m.used, 2_000_000 * 1024);
        assert_eq!((m.swap_total, m.swap_used), (2_000_000 * 1024, 500_000 * 1024));
        // No MemAvailable (before 3.14): MemFree.
        let old = parse_meminfo("MemTotal: 1000 kB\nMemFree: 400 kB\n").unwrap();
        assert_eq!((old.used, old.swap_total), (600 * 1024, 0));
        for bad in ["", "MemFree: 1 kB\n", "MemTotal: x kB\n", "MemTotal: 10\nMemFree: 1 kB\n", "MemTotal: 10 kB\n"] {
            assert!(matches!(parse_meminfo(bad), Err(VitalsError::Malformed { .. })), "{bad:?}");
        }
    }

    #[test]
    fn uptime_and_disk_percent() {
        assert_eq!(parse_uptime("12345.67 40000.00\n").unwrap(), 12345);
        assert!(parse_uptime("").is_err() && parse_uptime("abc 1").is_err() && parse_uptime("-5 1").is_err());
        // df's rounding base: 60 used of 60 + 20 available (10 reserved).
        assert_eq!(disk_percent(100, 40, 20), 75.0);
        assert_eq!(disk_percent(0, 0, 0), 0.0);
        assert_eq!(disk_percent(10, 20, 0), 0.0);
    }

    #[test]
    fn cpu_is_split_over_at_least_the_window() {
        let t0 = Instant::now();
        let at = |secs: f64| t0 + std::time::Duration::from_secs_f64(secs);
        let ticks = |user, total| CpuTicks { user, sys: 0, wait: 0, total };
        let mut c = CpuSamples::default();
        assert_eq!(c.base(at(0.0), ticks(10, 100)), CpuTicks::default(), "the first: since boot");
        assert_eq!(c.base(at(1.0), ticks(20, 200)), ticks(10, 100), "too soon: against the only sample");
        assert_eq!(c.base(at(2.0), ticks(30, 300)), ticks(10, 100), "a window on: against it, and kept");
        assert_eq!(c.base(at(2.1), ticks(31, 310)), ticks(10, 100), "right after: the sample before");
        assert_eq!(c.base(at(4.0), ticks(50, 500)), ticks(30, 300));
    }

    #[test]
    fn sample_reads_a_proc_dir_and_keeps_the_previous_cpu_sample() {
        let dir = std::env::temp_dir().join(format!("celld-vitals-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _rm = Rm(dir.clone());
        std::fs::write(dir.join("loadavg"), "0.12 0.25 0.30 1/2 3\n").unwrap();
        std::fs::write(dir.join("stat"), "cpu 100 0 50 830 20 0 0 0\n").unwrap();
        std::fs::write(dir.join("meminfo"), MEMINFO).unwrap();
        std::fs::write(dir.join("uptime"), "90061.5 1.0\n").unwrap();
        let v = Vitals::with_proc(&dir, &dir);
        let first = v.sample().unwrap();
        assert_eq!((first.cpu_user_percent, first.cpu_sys_percent, first.cpu_wait_percent), (10.0, 5.0, 2.0));
        assert_eq!((first.load_1m, first.load_15m, first.uptime_seconds), (0.12, 0.30, 90061));
        assert!((0.0..=100.0).contains(&first.system_disk_percent));
        assert!((0.0..=100.0).contains(&first.depot_disk_percent));
        std::fs::write(dir.join("stat"), "cpu 150 0 50 880 20 0 0 0\n").unwrap();
        let second = v.sample().unwrap();
        assert_eq!((second.cpu_user_percent, second.cpu_sys_percent), (50.0, 0.0));
        std::fs::write(dir.join("stat"), "garbage\n").unwrap();
        assert!(matches!(v.sample(), Err(VitalsError::Malformed { file: "/proc/stat", .. })));
        std::fs::remove_file(dir.join("uptime")).unwrap();
        std::fs::write(dir.join("stat"), "cpu 150 0 50 880 20 0 0 0\n").unwrap();
        assert!(matches!(v.sample(), Err(VitalsError::Read { .. })));
    }
}
