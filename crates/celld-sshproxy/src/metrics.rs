//! The ssh proxy's metrics: sessions relayed to instances.

use celld_metrics::prometheus_client::metrics::counter::Counter;
use celld_metrics::prometheus_client::metrics::gauge::Gauge;
use celld_metrics::prometheus_client::registry::Registry;

/// Handles the proxy records into; clones share the same series.
#[derive(Clone, Default)]
pub struct SshMetrics {
    pub sessions: Counter,
    pub sessions_current: Gauge,
}

impl SshMetrics {
    /// New handles, registered in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        celld_metrics::register_all!(r, m, {
            sessions: "celld_ssh_sessions", "ssh sessions the proxy relayed to an instance";
            sessions_current: "celld_ssh_sessions_current", "ssh sessions open now", "ssh-proxy ssh-connections";
        });
        m
    }
}
