//! The app layer's state and what every call needs: its configuration, its
//! store, stager, blobstore, log hub, route table and scheduler client, the
//! locks that order changes and route rebuilds, and finding an app or a space.
//! The other files of the module add the Apps calls to [`AppLayer`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tonic::transport::Channel;

use super::AppsError;
use super::store::{AppRecord, Store};
use super::validate::validate_space;
use crate::executor::logs::LogHub;
use crate::staging::stager::Stager;
use celld_blobstore::Blobstore;
use celld_proto as pb;
use celld_proto::scheduler_client::SchedulerClient;
use celld_router::RouteTable;

pub struct AppsConfig {
    pub db: PathBuf,
    /// The shared domain routes live under, e.g. `apps.localhost`.
    pub domain: String,
    pub default_space: String,
    /// The scheduler's gRPC address.
    pub scheduler: String,
    /// The router's port, for the URLs shown to people ("" when 80).
    pub router_port: u16,
}

pub struct AppLayer {
    pub(super) store: Store,
    pub(super) cfg: AppsConfig,
    pub(crate) stager: Arc<Stager>,
    pub(super) blobs: Arc<Blobstore>,
    pub(super) logs: Arc<LogHub>,
    pub(super) routes: Arc<RouteTable>,
    pub(super) scheduler: SchedulerClient<Channel>,
    /// Changes of an app's desired state run one at a time, so a start and a
    /// stop never interleave their scheduler calls.
    pub(super) ops: tokio::sync::Mutex<()>,
    pub(super) routes_changed: Notify,
    /// Processes being stopped: out of the router's table before the
    /// scheduler is told, and kept out by every rebuild until they are gone.
    pub(super) withdrawn: Mutex<HashSet<String>>,
    /// A rebuild and a withdrawal never interleave (a rebuild computed before
    /// a withdrawal must not put the instances back after it).
    pub(super) route_sync: tokio::sync::Mutex<()>,
    pub(super) ssh: SshState,
    /// The CF API's URL, VCAP_APPLICATION's `cf_api` (set when it serves).
    pub(super) cf_api: std::sync::OnceLock<String>,
}

/// Where the ssh proxy is and who may use it as `diego:`. Kept here, beside
/// the layer that holds it, so `ssh` only uses this file and not the reverse.
#[derive(Default)]
pub struct SshState {
    pub(super) codes: std::sync::Mutex<HashMap<String, Instant>>,
    pub(super) info: std::sync::OnceLock<pb::SshInfo>,
}

impl AppLayer {
    pub fn new(
        cfg: AppsConfig,
        stager: Arc<Stager>,
        blobs: Arc<Blobstore>,
        logs: Arc<LogHub>,
        routes: Arc<RouteTable>,
    ) -> Result<Arc<Self>, AppsError> {
        let store = Store::open(&cfg.db)?;
        let endpoint = celld_transport::grpc::endpoint(&cfg.scheduler)
            .map_err(|e| AppsError::InvalidArgument(format!("scheduler address {}: {e}", cfg.scheduler)))?
            .connect_timeout(Duration::from_secs(2));
        let scheduler = SchedulerClient::new(endpoint.connect_lazy());
        Ok(Arc::new(Self {
            store,
            cfg,
            stager,
            blobs,
            logs,
            routes,
            scheduler,
            ops: tokio::sync::Mutex::new(()),
            routes_changed: Notify::new(),
            withdrawn: Mutex::default(),
            route_sync: tokio::sync::Mutex::new(()),
            ssh: SshState::default(),
            cf_api: std::sync::OnceLock::new(),
        }))
    }

    /// Starts following the scheduler (crash events, routes).
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(self.clone().follow_events());
        tokio::spawn(self.clone().sync_routes_forever());
    }

    /// Where the CF API listens, for apps' VCAP_APPLICATION.
    pub fn set_cf_api(&self, url: String) {
        let _ = self.cf_api.set(url);
    }

    pub fn domain(&self) -> &str {
        &self.cfg.domain
    }

    /// The name of the app whose guid (its instances' log guid) this is, if
    /// it is one of ours (the `app` label of instance metrics).
    pub fn app_name(&self, guid: &str) -> Option<String> {
        self.store.app(guid).ok().flatten().map(|a| a.name)
    }

    /// An app's URL as a person types it.
    pub fn url(&self, host: &str) -> String {
        match self.cfg.router_port {
            80 => format!("http://{host}/"),
            p => format!("http://{host}:{p}/"),
        }
    }

    pub(super) fn sched(&self) -> SchedulerClient<Channel> {
        self.scheduler.clone()
    }

    pub(super) fn space<'a>(&'a self, space: &'a str) -> Result<&'a str, AppsError> {
        let s = if space.is_empty() { self.cfg.default_space.as_str() } else { space };
        validate_space(s)?;
        Ok(s)
    }

    /// An app by guid, in any space.
    pub fn app_by_guid(&self, guid: &str) -> Result<Option<AppRecord>, AppsError> {
        self.store.app(guid)
    }

    /// An app by name (or guid) in a space.
    pub fn find(&self, r: &pb::AppRef) -> Result<AppRecord, AppsError> {
        let space = self.space(&r.space)?;
        if r.name.is_empty() {
            return Err(AppsError::InvalidArgument("an app name is required".into()));
        }
        if let Some(a) = self.store.app_by_name(space, &r.name)? {
            return Ok(a);
        }
        if let Some(a) = self.store.app(&r.name)? {
            return Ok(a);
        }
        Err(AppsError::NotFound(format!("App '{}' not found in space '{space}'.", r.name)))
    }
}
