//! Staging's metrics: how long stagings took, by outcome.

use celld_metrics::duration_histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `succeeded` or `failed`.
    pub outcome: String,
}

type Durations = Family<OutcomeLabel, Histogram, fn() -> Histogram>;

/// Handles the stager records into; clones share the same series.
#[derive(Clone)]
pub struct StagingMetrics {
    pub duration: Durations,
}

impl Default for StagingMetrics {
    fn default() -> Self {
        Self { duration: Family::new_with_constructor(duration_histogram) }
    }
}

impl std::fmt::Debug for StagingMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagingMetrics").finish_non_exhaustive()
    }
}

impl StagingMetrics {
    /// New handles, registered in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        celld_metrics::register_all!(r, m, {
            duration: "celld_staging_duration_seconds", "Seconds a staging took, by outcome",
                "cloud controller cc.staging.succeeded_duration, cc.staging.failed_duration";
        });
        m
    }

    pub fn staged(&self, succeeded: bool, seconds: f64) {
        let outcome = if succeeded { "succeeded" } else { "failed" };
        self.duration.get_or_create(&OutcomeLabel { outcome: outcome.into() }).observe(seconds);
    }
}
