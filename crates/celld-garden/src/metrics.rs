//! The Garden layer's metrics: its container table and how long creates take.

use celld_metrics::duration_histogram;
use celld_metrics::prometheus_client::metrics::counter::Counter;
use celld_metrics::prometheus_client::metrics::gauge::Gauge;
use celld_metrics::prometheus_client::metrics::histogram::Histogram;
use celld_metrics::prometheus_client::registry::Registry;

/// Handles the gardener records into; clones share the same series.
#[derive(Clone)]
pub struct GardenMetrics {
    pub containers: Gauge,
    pub created: Counter,
    pub destroyed: Counter,
    pub create_duration: Histogram,
}

impl Default for GardenMetrics {
    fn default() -> Self {
        Self {
            containers: Gauge::default(),
            created: Counter::default(),
            destroyed: Counter::default(),
            create_duration: duration_histogram(),
        }
    }
}

impl GardenMetrics {
    /// New handles, registered in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        celld_metrics::register_all!(r, m, {
            containers: "celld_containers", "Containers on this cell", "rep ContainerCount";
            created: "celld_containers_created", "Containers created since the daemon started";
            destroyed: "celld_containers_destroyed", "Containers destroyed since the daemon started";
            create_duration: "celld_container_create_duration_seconds", "Seconds a successful container create took",
                "rep GardenContainerCreationSucceededDuration";
        });
        m
    }
}
