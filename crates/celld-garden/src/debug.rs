//! The debug listener (`--debug-listen`): `/debug/vars` in the shape of Go's
//! expvar, as Garden's debug server serves it, for operators' scripts. The
//! figures are this process's own measurements under Garden's names; Go's
//! runtime counters with no counterpart here (a garbage collector's) read 0.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use tokio::net::TcpListener;

/// What the vars are read from.
pub struct DebugVars {
    /// The depot's containers directory (Garden's `depotDirs` counts its entries).
    pub containers_dir: PathBuf,
}

/// Fields of /proc/self/status in bytes (the kernel writes them in kB).
fn status_bytes(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl DebugVars {
    /// The expvar document: `cmdline`, `memstats` and Garden's counters.
    pub fn render(&self) -> serde_json::Value {
        let cmdline: Vec<String> = std::fs::read("/proc/self/cmdline")
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let (anon, rss, peak) =
            (status_bytes(&status, "RssAnon"), status_bytes(&status, "VmRSS"), status_bytes(&status, "VmHWM"));
        let stack = status_bytes(&status, "VmStk");
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        // Async tasks are what goroutines are to Go's server.
        let tasks = tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks());
        let depot_dirs = std::fs::read_dir(&self.containers_dir).map_or(0, |d| d.filter_map(Result::ok).count());
        serde_json::json!({
            "cmdline": cmdline,
            "memstats": {
                // Heap in use: the anonymous resident memory.
                "Alloc": anon,
                "HeapAlloc": anon,
                "HeapInuse": anon,
                // From the system: everything resident.
                "Sys": rss,
                "HeapSys": rss,
                // Cumulative allocation is not counted here; the peak resident
                // set is the nearest measurement that never goes down.
                "TotalAlloc": peak.max(anon),
                "StackInuse": stack,
                "StackSys": stack,
                "NumGC": 0,
                "PauseTotalNs": 0,
            },
            "numCPUS": cpus,
            "numGoRoutines": tasks,
            // celld keeps no loop devices or backing stores (overlay on the depot).
            "loopDevices": 0,
            "backingStores": 0,
            "depotDirs": depot_dirs,
        })
    }
}

/// Serves `/debug/vars` on `listener` until aborted; other paths are 404.
pub async fn serve(listener: TcpListener, vars: Arc<DebugVars>) {
    celld_metrics::serve_simple(listener, move |_: &hyper::Method, path: &str| {
        let resp = if path == "/debug/vars" {
            let mut body = serde_json::to_vec_pretty(&vars.render()).unwrap_or_default();
            body.push(b'\n');
            Response::builder()
                .header("Content-Type", "application/json; charset=utf-8")
                .body(Full::new(Bytes::from(body)))
        } else {
            Response::builder().status(404).body(Full::new(Bytes::from_static(b"404 page not found\n")))
        };
        resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_bytes() {
        let s = "Name:\tcelld\nVmRSS:\t    2048 kB\nRssAnon:\t  1024 kB\n";
        assert_eq!(status_bytes(s, "VmRSS"), 2 << 20);
        assert_eq!(status_bytes(s, "RssAnon"), 1 << 20);
        assert_eq!(status_bytes(s, "VmHWM"), 0);
    }

    #[test]
    fn vars_have_non_zero_memory_figures() {
        let v = DebugVars { containers_dir: PathBuf::from("/nonexistent") }.render();
        for k in ["Alloc", "TotalAlloc", "Sys", "HeapAlloc"] {
            assert!(v["memstats"][k].as_u64().unwrap() > 0, "{k}: {v}");
        }
        assert!(!v["cmdline"].as_array().unwrap().is_empty());
        assert_eq!(v["depotDirs"], 0);
    }
}
