//! The router's metrics: requests by status and how long they took.

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
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self { requests: Family::default(), latency: duration_histogram() }
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
        let labels = StatusLabels { status_class: format!("{}xx", status / 100), status_code: status.to_string() };
        self.requests.get_or_create(&labels).inc();
        self.latency.observe(elapsed.as_secs_f64());
    }
}
