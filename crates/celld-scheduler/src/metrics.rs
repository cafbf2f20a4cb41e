//! The scheduler's metrics: records by state (BBS's LRPs*/Tasks* gauges),
//! present cells, auctions and convergence passes.

use std::sync::Arc;
use std::time::Duration;

use celld_metrics::duration_histogram;
use celld_metrics::prometheus_client::encoding::EncodeLabelSet;
use celld_metrics::prometheus_client::metrics::counter::Counter;
use celld_metrics::prometheus_client::metrics::family::Family;
use celld_metrics::prometheus_client::metrics::gauge::Gauge;
use celld_metrics::prometheus_client::metrics::histogram::Histogram;
use celld_metrics::prometheus_client::registry::Registry;
use celld_proto as pb;

use crate::Scheduler;
use crate::store::StoreCounts;

/// How often the gauges are counted again: a scrape reads the last count,
/// so 250 000 instances never make a scrape slow.
pub const REFRESH: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// Handles the scheduler records into; clones share the same series.
#[derive(Clone)]
pub struct SchedulerMetrics {
    pub desired_lrps: Gauge,
    pub desired_instances: Gauge,
    pub actual_lrps: Family<StateLabel, Gauge>,
    pub tasks: Family<StateLabel, Gauge>,
    pub cells: Gauge,
    pub auctions: Counter,
    pub auction_duration: Histogram,
    pub convergence_duration: Histogram,
    pub missing: Counter,
    pub extra: Counter,
}

impl std::fmt::Debug for SchedulerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerMetrics").finish_non_exhaustive()
    }
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        Self {
            desired_lrps: Gauge::default(),
            desired_instances: Gauge::default(),
            actual_lrps: Family::default(),
            tasks: Family::default(),
            cells: Gauge::default(),
            auctions: Counter::default(),
            auction_duration: duration_histogram(),
            convergence_duration: duration_histogram(),
            missing: Counter::default(),
            extra: Counter::default(),
        }
    }
}

const ACTUAL_STATES: [pb::actual_lrp::State; 4] = [
    pb::actual_lrp::State::Unclaimed,
    pb::actual_lrp::State::Claimed,
    pb::actual_lrp::State::Running,
    pb::actual_lrp::State::Crashed,
];
const TASK_STATES: [pb::task::State; 4] =
    [pb::task::State::Pending, pb::task::State::Running, pb::task::State::Completed, pb::task::State::Resolving];

impl SchedulerMetrics {
    /// New handles, registered in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        celld_metrics::register_all!(r, m, {
            desired_lrps: "celld_scheduler_desired_lrps", "DesiredLRPs (apps' processes) the scheduler holds";
            desired_instances: "celld_scheduler_desired_instances", "LRP instances desired across all DesiredLRPs",
                "bbs LRPsDesired";
            actual_lrps: "celld_scheduler_actual_lrps", "ActualLRPs by state",
                "bbs LRPsUnclaimed, LRPsClaimed, LRPsRunning, CrashedActualLRPs";
            tasks: "celld_scheduler_tasks", "Tasks by state", "bbs TasksPending, TasksRunning, TasksCompleted, TasksResolving";
            cells: "celld_scheduler_cells", "Cells present (heartbeating)", "bbs PresentCells";
            auctions: "celld_scheduler_auctions", "Auction rounds run";
            auction_duration: "celld_scheduler_auction_duration_seconds", "Seconds one auction round took",
                "auctioneer AuctioneerFetchStatesDuration (nearest)";
            convergence_duration: "celld_scheduler_convergence_duration_seconds", "Seconds one convergence pass took",
                "bbs ConvergenceLRPDuration";
            missing: "celld_scheduler_convergence_missing_instances",
                "Desired instances convergence found without any record", "bbs LRPsMissing";
            extra: "celld_scheduler_convergence_extra_instances", "Instances convergence found no longer desired",
                "bbs LRPsExtra";
        });
        m
    }

    /// Sets the gauges from the store's counts and the present cells.
    pub fn set_counts(&self, c: &StoreCounts, cells: usize) {
        self.desired_lrps.set(c.desired_lrps as i64);
        self.desired_instances.set(c.desired_instances as i64);
        // Every state is written, 0 too, so a state that empties reads 0.
        for s in ACTUAL_STATES {
            let n = c.actual.get(&(s as i32)).copied().unwrap_or(0);
            self.actual_lrps.get_or_create(&StateLabel { state: s.as_str_name().to_string() }).set(n as i64);
        }
        for s in TASK_STATES {
            let n = c.tasks.get(&(s as i32)).copied().unwrap_or(0);
            self.tasks.get_or_create(&StateLabel { state: s.as_str_name().to_string() }).set(n as i64);
        }
        self.cells.set(cells as i64);
    }
}

/// Counts again every [`REFRESH`] until aborted.
pub(crate) async fn refresh_forever(scheduler: Arc<Scheduler>) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match scheduler.store_counts().await {
            Ok(c) => scheduler.metrics().set_counts(&c, scheduler.live_cells().len()),
            Err(e) => tracing::warn!(error = %e, "counting records for /metrics failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_is_written_with_zeros_too() {
        let mut reg = Registry::default();
        let m = SchedulerMetrics::register(&mut reg);
        let c = StoreCounts {
            desired_lrps: 1,
            desired_instances: 2,
            actual: [(pb::actual_lrp::State::Running as i32, 2)].into(),
            tasks: Default::default(),
        };
        m.set_counts(&c, 1);
        let mut text = String::new();
        celld_metrics::prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(text.contains("celld_scheduler_actual_lrps{state=\"RUNNING\"} 2\n"), "{text}");
        assert!(text.contains("celld_scheduler_actual_lrps{state=\"CRASHED\"} 0\n"), "{text}");
        assert!(text.contains("celld_scheduler_tasks{state=\"PENDING\"} 0\n"), "{text}");
        assert!(text.contains("celld_scheduler_desired_instances 2\n"), "{text}");
        assert!(text.contains("celld_scheduler_cells 1\n"), "{text}");
    }
}
