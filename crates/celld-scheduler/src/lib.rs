//! The reference scheduler (`celld scheduler`): Diego's BBS, auctioneer and
//! Locket presence in one gRPC service (proto/celld/v1/scheduler.proto).
//!
//! - `model`: the ActualLRP state machine, validation and crash-restart policy.
//! - `store`: records behind `SchedulerStore` (SQLite, every record also
//!   decoded in memory by `CachedStore`).
//! - `auction`: Diego's placement score.
//! - `in_use`: what the records place on each cell, kept as totals.
//! - `core`: the `Scheduler` and its rules, one file per responsibility
//!   (state machines, presence, convergence, auctions, calls to cells).
//! - `service`: the gRPC translation.

pub mod args;
pub mod auction;
pub mod clock;
pub mod core;
pub mod in_use;
pub mod metrics;
pub mod model;
pub mod service;
pub mod store;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use self::args::SchedulerArgs;
pub use self::core::Scheduler;
pub use self::service::SchedulerService;
pub use self::store::{CachedStore, SchedulerStore, SqliteStore};
use celld_transport::grpc::GrpcError;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("scheduler store: {0}")]
    Store(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error(transparent)]
    Metrics(#[from] celld_metrics::MetricsError),
}

/// How a scheduler runs; `from_args` for the `celld scheduler` command line.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub db: PathBuf,
    pub convergence_interval: Duration,
    pub presence_ttl: Duration,
    pub test_clock: bool,
    /// Where its metrics go (registered by the caller; default: nowhere).
    pub metrics: metrics::SchedulerMetrics,
}

impl SchedulerConfig {
    pub fn from_args(args: &SchedulerArgs, depot: &Path) -> Self {
        Self {
            db: args.db.clone().unwrap_or_else(|| depot.join("scheduler").join("scheduler.db")),
            convergence_interval: Duration::from_secs(args.convergence_interval.max(1)),
            presence_ttl: Duration::from_secs(args.presence_ttl.max(1)),
            test_clock: args.test_clock,
            metrics: Default::default(),
        }
    }
}

/// A running scheduler (store open, auction and convergence loops going),
/// usable in-process: serve `service()` on any tonic router, or call
/// `scheduler()` directly. Dropping it stops the loops.
pub struct SchedulerHandle {
    scheduler: Arc<Scheduler>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl SchedulerHandle {
    /// Opens the SQLite store at `config.db`, loads its records into memory
    /// and starts the loops. Needs a tokio runtime.
    pub async fn start(config: SchedulerConfig) -> Result<Self, SchedulerError> {
        let db = config.db.clone();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&db))
            .await
            .map_err(|e| SchedulerError::Internal(format!("opening the store: {e}")))??;
        let store = CachedStore::load(Arc::new(store)).await?;
        Ok(Self::with_store(config, Arc::new(store)))
    }

    /// Starts a scheduler on any store (PostgreSQL later, fakes in tests).
    pub fn with_store(config: SchedulerConfig, store: Arc<dyn SchedulerStore>) -> Self {
        let (scheduler, auctions) = Scheduler::new(
            store,
            core::SchedulerOptions {
                presence_ttl: config.presence_ttl,
                test_clock: config.test_clock,
                metrics: config.metrics.clone(),
            },
        );
        let mut loops = vec![
            tokio::spawn(scheduler.clone().auction_loop(auctions)),
            tokio::spawn(metrics::refresh_forever(scheduler.clone())),
        ];
        let s = scheduler.clone();
        let interval = config.convergence_interval;
        loops.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: picks up work a previous run left
            // unplaced (cells are not "missing" during the start-up grace).
            loop {
                tick.tick().await;
                if let Err(e) = s.converge().await {
                    tracing::warn!(error = %e, "convergence failed");
                }
            }
        }));
        let s = scheduler.clone();
        loops.push(tokio::spawn(async move {
            // Presence expiry is noticed within a second, not at the next pass.
            let period = (s.presence_ttl() / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
            let grace_end = tokio::time::Instant::now() + s.presence_ttl();
            let mut grace_done = false;
            loop {
                tokio::time::sleep(period).await;
                if !grace_done && tokio::time::Instant::now() >= grace_end {
                    grace_done = true;
                    // Cells that never came back after a restart are missing now.
                    if let Err(e) = s.converge().await {
                        tracing::warn!(error = %e, "convergence failed");
                    }
                }
                if let Err(e) = s.check_presences().await {
                    tracing::warn!(error = %e, "presence check failed");
                }
            }
        }));
        Self { scheduler, loops }
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// The gRPC service, ready for `grpc::router().add_service(..)`.
    pub fn service(&self) -> celld_proto::scheduler_server::SchedulerServer<SchedulerService> {
        SchedulerService::new(self.scheduler.clone()).server()
    }

    /// Serves the Scheduler service (with reflection) on `listener` until
    /// `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), SchedulerError> {
        self.serve_with_tls(listener, None, shutdown).await
    }

    /// `serve`, with mutual TLS if `tls` is set.
    pub async fn serve_with_tls(
        &self,
        listener: tokio::net::TcpListener,
        tls: Option<&celld_transport::tls::TlsMaterial>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), SchedulerError> {
        let router = celld_transport::grpc::router_with_tls(tls)?.add_service(self.service());
        celld_transport::grpc::run(router, listener, shutdown).await?;
        Ok(())
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        for l in &self.loops {
            l.abort();
        }
    }
}

/// `celld scheduler`: listens on `args.listen` until `shutdown` resolves.
pub async fn run(
    args: SchedulerArgs,
    depot: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SchedulerError> {
    let mut config = SchedulerConfig::from_args(&args, depot);
    let registry = celld_metrics::SharedRegistry::new();
    config.metrics = registry.register(metrics::SchedulerMetrics::register);
    let tls = match args.tls().map_err(|e| SchedulerError::Internal(e.to_string()))? {
        Some(files) => Some(files.load().map_err(|e| SchedulerError::Internal(e.to_string()))?),
        None => None,
    };
    // The scheduler dials cells with the same identity.
    if let Some(t) = &tls {
        celld_transport::grpc::set_client_tls(t.clone());
    }
    let listener = celld_transport::grpc::bind(&args.listen).await?;
    // Dropped (and so closed) when the scheduler stops serving.
    let _metrics = match args.metrics_listen {
        celld_metrics::MetricsListen::On(addr) => Some(celld_metrics::serve(addr, registry).await?),
        celld_metrics::MetricsListen::Off => None,
    };
    let handle = SchedulerHandle::start(config.clone()).await?;
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| args.listen.clone());
    tracing::info!(address = %addr, db = %config.db.display(), test_clock = config.test_clock, presence_ttl = config.presence_ttl.as_secs(), tls = tls.is_some(), "serving gRPC (Scheduler)");
    handle.serve_with_tls(listener, tls.as_deref(), shutdown).await
}

/// The `scheduler` role's entry point: its own runtime, until SIGTERM or ctrl-c.
pub fn main(depot: &Path, args: SchedulerArgs) -> Result<(), SchedulerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| SchedulerError::Internal(format!("starting the async runtime: {e}")))?;
    let depot = depot.to_path_buf();
    runtime.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| SchedulerError::Internal(format!("SIGTERM handler: {e}")))?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("scheduler shutting down");
        };
        run(args, &depot, shutdown).await
    })
}
