//! The executor's metrics: the cell's capacity (rep's Capacity*), each app
//! instance's CPU, memory and disk (Diego's container metrics), crashes, OOM
//! kills, health-check results and log lines.
//!
//! Per-instance values are refreshed every [`REFRESH`] by
//! [`refresh_forever`] (the same reading `cellctl app` and Diego's
//! ContainerMetrics use), so a scrape only encodes what is there; an
//! instance's series go at the first refresh after it does.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Executor;

/// How often capacity and per-instance values are read again: every 15 s, as
/// Diego's executor reports container metrics. Each reading costs ~0.5 ms of
/// CPU per container (cgroup files, the disk usage); at 5 s that was 2.5 % of
/// a core at 250 instances (`make bench`).
pub const REFRESH: Duration = Duration::from_secs(15);

/// The name an app has for its log guid (the local app layer), if any.
pub type AppNames = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// The app's name where the app layer knows it, else the log guid.
    pub app: String,
    pub process_guid: String,
    pub index: String,
    pub instance_guid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// `tcp`, `http` or `monitor` (a Diego monitor action).
    pub check: String,
    /// `startup` or `liveness`.
    pub phase: String,
    /// `passed` or `failed`.
    pub result: String,
}

/// Handles the executor records into; clones share the same series.
#[derive(Clone, Default)]
pub struct ExecutorMetrics {
    pub capacity_total_memory: Gauge,
    pub capacity_total_disk: Gauge,
    pub capacity_total_containers: Gauge,
    pub capacity_remaining_memory: Gauge,
    pub capacity_remaining_disk: Gauge,
    pub capacity_remaining_containers: Gauge,
    pub instance_cpu: Family<InstanceLabels, Gauge<f64, AtomicU64>>,
    pub instance_memory: Family<InstanceLabels, Gauge>,
    pub instance_disk: Family<InstanceLabels, Gauge>,
    pub oom_kills: Counter,
    pub crashes: Family<ReasonLabel, Counter>,
    pub health_checks: Family<CheckLabels, Counter>,
    pub log_lines: Counter,
    pub log_lines_dropped: Counter,
}

impl std::fmt::Debug for ExecutorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorMetrics").finish_non_exhaustive()
    }
}

impl ExecutorMetrics {
    /// New handles, registered in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        celld_metrics::register_all!(r, m, {
            capacity_total_memory: "celld_capacity_total_memory_bytes", "Memory this cell offers",
                "rep CapacityTotalMemory";
            capacity_total_disk: "celld_capacity_total_disk_bytes", "Disk this cell offers", "rep CapacityTotalDisk";
            capacity_total_containers: "celld_capacity_total_containers", "Containers this cell can host",
                "rep CapacityTotalContainers";
            capacity_remaining_memory: "celld_capacity_remaining_memory_bytes",
                "Memory not yet allocated to instances and tasks", "rep CapacityRemainingMemory";
            capacity_remaining_disk: "celld_capacity_remaining_disk_bytes",
                "Disk not yet allocated to instances and tasks", "rep CapacityRemainingDisk";
            capacity_remaining_containers: "celld_capacity_remaining_containers", "Containers this cell can still host",
                "rep CapacityRemainingContainers";
            instance_cpu: "celld_instance_cpu_percent",
                "CPU an app instance used since the last reading, in % of one core", "container metric cpu";
            instance_memory: "celld_instance_memory_bytes", "Memory an app instance uses", "container metric memory";
            instance_disk: "celld_instance_disk_bytes", "Disk an app instance's container writes",
                "container metric disk";
            oom_kills: "celld_oom_kills",
                "Instances and tasks whose process was killed for using more than its memory limit";
            crashes: "celld_instance_crashes", "App instances that crashed, by reason", "bbs CrashedActualLRPs";
            health_checks: "celld_health_checks", "Health-check outcomes, by check type",
                "rep HTTPLivenessChecksFailedCount, TCPLivenessChecksFailedCount";
            log_lines: "celld_log_lines", "Log lines instances, tasks and stagings emitted";
            log_lines_dropped: "celld_log_lines_dropped", "Log lines dropped by the log rate limit",
                "rep AppInstanceExceededLogRateLimitCount";
        });
        m
    }

    /// A crash, labelled by the kind of its reason (the reason itself is
    /// free text and would make a series per message).
    pub fn crashed(&self, reason: &str) {
        self.crashes.get_or_create(&ReasonLabel { reason: crash_kind(reason).to_string() }).inc();
    }

    pub fn health_check(&self, check: &str, phase: &str, passed: bool) {
        let result = if passed { "passed" } else { "failed" };
        self.health_checks
            .get_or_create(&CheckLabels { check: check.into(), phase: phase.into(), result: result.into() })
            .inc();
    }
}

/// The kind of a crash reason, from Diego's messages.
pub fn crash_kind(reason: &str) -> &'static str {
    if reason.contains("(out of memory)") {
        "out_of_memory"
    } else if reason.starts_with("Instance never healthy") {
        "never_healthy"
    } else if reason.starts_with("Instance became unhealthy") {
        "became_unhealthy"
    } else if reason.contains("Exited with status") {
        "exited"
    } else {
        "other"
    }
}

/// Reads capacity and every instance's usage every [`REFRESH`] until aborted;
/// series of instances no longer on the cell are removed.
pub async fn refresh_forever(executor: Arc<Executor>, names: Option<AppNames>) {
    let mut shown: HashSet<InstanceLabels> = HashSet::new();
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let m = &executor.cfg.metrics;
        let (total, left) = (executor.cfg.total, executor.available());
        m.capacity_total_memory.set(i64::from(total.memory_mb) << 20);
        m.capacity_total_disk.set(i64::from(total.disk_mb) << 20);
        m.capacity_total_containers.set(i64::from(total.containers));
        m.capacity_remaining_memory.set(i64::from(left.memory_mb) << 20);
        m.capacity_remaining_disk.set(i64::from(left.disk_mb) << 20);
        m.capacity_remaining_containers.set(i64::from(left.containers));

        let mut now_shown = HashSet::new();
        for c in executor.metrics("").await.into_iter().filter(|c| c.task_guid.is_empty()) {
            let app = names.as_ref().and_then(|n| n(&c.log_guid)).unwrap_or_else(|| c.log_guid.clone());
            let labels = InstanceLabels {
                app,
                process_guid: c.process_guid,
                index: c.index.to_string(),
                instance_guid: c.instance_guid,
            };
            m.instance_cpu.get_or_create(&labels).set(c.cpu_percentage);
            m.instance_memory.get_or_create(&labels).set(i64::try_from(c.memory_bytes).unwrap_or(i64::MAX));
            m.instance_disk.get_or_create(&labels).set(i64::try_from(c.disk_bytes).unwrap_or(i64::MAX));
            now_shown.insert(labels);
        }
        for gone in shown.difference(&now_shown) {
            m.instance_cpu.remove(gone);
            m.instance_memory.remove(gone);
            m.instance_disk.remove(gone);
        }
        shown = now_shown;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_reasons_fall_in_few_kinds() {
        assert_eq!(crash_kind("APP/PROC/WEB: Exited with status 137 (out of memory)"), "out_of_memory");
        assert_eq!(crash_kind("APP/PROC/WEB: Exited with status 1"), "exited");
        assert_eq!(crash_kind("Instance never healthy after 1m0s: failed to make TCP connection"), "never_healthy");
        assert_eq!(crash_kind("Instance became unhealthy: received status code 503"), "became_unhealthy");
        assert_eq!(crash_kind("APP/PROC/WEB: the container's init went away"), "other");
    }

    #[test]
    fn removed_instance_series_are_not_encoded() {
        let mut reg = Registry::default();
        let m = ExecutorMetrics::register(&mut reg);
        let l = InstanceLabels {
            app: "hello".into(),
            process_guid: "pg".into(),
            index: "0".into(),
            instance_guid: "ig".into(),
        };
        m.instance_memory.get_or_create(&l).set(42);
        m.crashed("APP/PROC/WEB: Exited with status 1");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains(
                "celld_instance_memory_bytes{app=\"hello\",process_guid=\"pg\",index=\"0\",instance_guid=\"ig\"} 42"
            ),
            "{text}"
        );
        assert!(text.contains("celld_instance_crashes_total{reason=\"exited\"} 1"), "{text}");
        m.instance_memory.remove(&l);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(!text.contains("instance_guid=\"ig\""), "{text}");
    }
}
