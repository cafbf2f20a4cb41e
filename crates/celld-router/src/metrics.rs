//! The router's metrics: requests by status and how long they took.

use std::sync::{Arc, OnceLock};

use celld_metrics::duration_histogram;
use celld_metrics::prometheus_client::encoding::EncodeLabelSet;
use celld_metrics::prometheus_client::metrics::counter::Counter;
use celld_metrics::prometheus_client::metrics::family::Family;
use celld_metrics::prometheus_client::metrics::histogram::Histogram;
use celld_metrics::prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// `2xx`, `4xx`…: what gorouter's `responses.2xx` counts.
    pub status_class: String,
    pub status_code: String,
}

/// Handles the router records into; clones share the same series.
#[derive(Clone)]
pub struct RouterMetrics {
    pub requests: Family<StatusLabels, Counter>,
    pub latency: Histogram,
    /// The counter of each status code once used, so a request costs no
    /// label formatting, hashing or family lock.
    by_status: Arc<[OnceLock<Counter>]>,
}

/// Status codes 100..=999 have a cached counter; others go through the family.
const CACHED: std::ops::RangeInclusive<u16> = 100..=999;

impl Default for RouterMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: duration_histogram(),
            by_status: CACHED.map(|_| OnceLock::new()).collect(),
        }
    }
}

impl RouterMetrics {
    /// New handles, registered in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        celld_metrics::register_all!(r, m, {
            requests: "celld_router_requests", "Requests the router answered, by status",
                "gorouter total_requests, responses.NXX";
            latency: "celld_router_request_duration_seconds", "Seconds from a request's arrival to its response's head",
                "gorouter latency";
        });
        m
    }

    pub(crate) fn record(&self, status: u16, elapsed: std::time::Duration) {
        let cached = usize::from(status.wrapping_sub(*CACHED.start()));
        match self.by_status.get(cached) {
            Some(slot) => slot.get_or_init(|| self.counter(status)).inc(),
            None => self.counter(status).inc(),
        };
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// The family's counter of `status` (a clone shares the series).
    fn counter(&self, status: u16) -> Counter {
        let labels = StatusLabels { status_class: format!("{}xx", status / 100), status_code: status.to_string() };
        self.requests.get_or_create(&labels).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_counters_are_the_familys_series() {
        let m = RouterMetrics::default();
        for status in [200, 200, 404, 99, 1000] {
            m.record(status, std::time::Duration::from_millis(1));
        }
        let count = |status: u16| {
            let labels = StatusLabels { status_class: format!("{}xx", status / 100), status_code: status.to_string() };
            m.requests.get_or_create(&labels).get()
        };
        assert_eq!((count(200), count(404), count(99), count(1000), count(500)), (2, 1, 1, 1, 0));
    }
}
