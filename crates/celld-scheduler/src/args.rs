//! The `celld scheduler` command line.

use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerArgs {
    /// Where the Scheduler gRPC service listens.
    #[arg(long, default_value = "127.0.0.1:8889")]
    pub listen: String,
    /// Mutual TLS: the scheduler's certificate chain (PEM), served on --listen
    /// and presented when dialling cells. It must allow server and client use.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Mutual TLS: the certificate's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: the CA that signs cells' and clients' certificates (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// The SQLite database holding desired and actual LRPs and tasks
    /// (default: DEPOT/scheduler/scheduler.db).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Seconds between convergence passes.
    #[arg(long, default_value_t = 30)]
    pub convergence_interval: u64,
    /// Seconds a cell's presence lasts without a heartbeat.
    #[arg(long, default_value_t = 15)]
    pub presence_ttl: u64,
    /// Where Prometheus scrapes this scheduler's metrics (`GET /metrics`,
    /// OpenMetrics text), or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9102", value_parser = celld_metrics::parse_listen)]
    pub metrics_listen: celld_metrics::MetricsListen,
    /// A clock that only moves when told (the AdvanceClock call): for tests
    /// of crash back-off, never for production.
    #[arg(long)]
    pub test_clock: bool,
}

impl SchedulerArgs {
    /// Mutual TLS for the scheduler's gRPC, if configured.
    pub fn tls(&self) -> Result<Option<celld_transport::tls::TlsFiles>, celld_transport::tls::TlsError> {
        celld_transport::tls::TlsFiles::from_flags(
            "--tls",
            self.tls_cert.as_ref(),
            self.tls_key.as_ref(),
            self.tls_ca.as_ref(),
        )
    }
}
