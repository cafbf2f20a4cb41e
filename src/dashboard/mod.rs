//! The web dashboard: a page of cells (vitals, capacity), apps, instances
//! (CPU and memory charts of the last ten minutes), an app's live logs,
//! events and masked environment. `celld --local` serves it through its own
//! router at `celld.<apps domain>`; any cell serves it on `--dashboard-listen`.
//!
//! Read-only unless `--dashboard-actions`; then start, stop, restart and scale
//! are POSTs that need the page's per-daemon token and a same-origin request
//! (`guard`), and any request must name an IP address, a `localhost` name
//! or the dashboard's own host (`guard::host_allowed`). The page is hand-written HTML, CSS and JS compiled into the
//! binary (`assets`); charts are drawn in SVG by the page itself.
//!
//! `source` reads the app layer (or a plain cell's executor), `samples` keeps
//! the charts' history, `views` and `env` shape the JSON, `http` is the axum
//! router, `logs` the server-sent log stream.

mod assets;
mod env;
mod guard;
mod http;
mod logs;
pub mod samples;
mod source;
mod views;

use std::sync::{Arc, OnceLock, Weak};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::apps::AppsError;
use samples::Samples;

pub use self::env::{HIDDEN, looks_secret};
pub use self::source::Source;

/// The host the dashboard answers on in local mode, under the apps domain.
pub const SYSTEM_HOST: &str = "celld";

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("this cell runs no app layer (celld --local has one): only the cell and its instances are shown")]
    NoApps,
    #[error("could not make the dashboard's token: the system's random source failed")]
    Random,
    #[error(transparent)]
    Apps(#[from] AppsError),
}

impl DashboardError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) | Self::NoApps | Self::Apps(AppsError::NotFound(_)) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) | Self::Apps(AppsError::InvalidArgument(_)) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Apps(AppsError::FailedPrecondition(_) | AppsError::AlreadyExists(_)) => StatusCode::CONFLICT,
            Self::Random | Self::Apps(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

pub struct DashboardConfig {
    /// `--dashboard-actions`: start, stop, restart and scale from the page.
    pub actions: bool,
    /// Local mode's `celld.<domain>`, answered besides addresses and
    /// `localhost` names.
    pub system_host: Option<String>,
}

pub struct Dashboard {
    source: Source,
    samples: Samples,
    /// Required in `X-Dashboard-Token` on every action; new per daemon start.
    token: String,
    actions: bool,
    system_host: Option<String>,
    sampling: OnceLock<()>,
}

impl Dashboard {
    pub fn new(source: Source, cfg: DashboardConfig) -> Result<Arc<Self>, DashboardError> {
        Ok(Arc::new(Self {
            source,
            samples: Samples::default(),
            token: guard::new_token()?,
            actions: cfg.actions,
            system_host: cfg.system_host,
            sampling: OnceLock::new(),
        }))
    }

    /// Starts the one sampling task (once, however many listeners serve the
    /// dashboard); it ends when the dashboard is dropped.
    pub fn start_sampling(self: &Arc<Self>) {
        if self.sampling.set(()).is_err() {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(samples::INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(d) = weak.upgrade() else { break };
                let seen = d.source.sweep().await;
                d.samples.record(seen);
            }
        });
    }

    /// The dashboard's routes, for a listener of its own or the router's
    /// system route.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        http::router(self.clone())
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        self.start_sampling();
        if let Err(e) = axum::serve(listener, self.router()).await {
            tracing::error!(error = %e, "the dashboard stopped");
        }
    }
}
