//! The router's table of routable instances: rebuilt from the store and the
//! scheduler when something changes (and every few seconds), with a stopping
//! process's instances withdrawn before the scheduler is told; and the
//! router's access log lines in the app's logs (`RTR`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::AppsError;
use super::layer::AppLayer;
use super::process::APP_PORT;
use super::store::AppRecord;
use crate::executor::logs::{LogHub, now_ns};
use celld_proto as pb;
use celld_router::{AccessLog, Backend};

impl AppLayer {
    /// Rebuilds the router's table when something changed, and every few
    /// seconds in case an event was missed.
    pub(super) async fn sync_routes_forever(self: Arc<Self>) {
        loop {
            if let Err(e) = self.sync_routes().await {
                tracing::debug!(error = %e, "could not read routes; retrying");
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), self.routes_changed.notified()).await;
            // Coalesce a burst of events into one rebuild.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes the app's current process out of the router's table, now and in
    /// every rebuild until the process is no longer the app's.
    pub(super) async fn withdraw(&self, app: &AppRecord) {
        let _sync = self.route_sync.lock().await;
        lock_set(&self.withdrawn).insert(app.process_guid.clone());
        self.routes.withdraw_app(&app.guid);
        tracing::info!(app_guid = %app.guid, process_guid = %app.process_guid, "routes withdrawn");
    }

    /// The stop did not happen: the instances may be routed again.
    pub(super) fn unwithdraw(&self, process_guid: &str) {
        lock_set(&self.withdrawn).remove(process_guid);
        self.routes_changed.notify_one();
    }

    /// `cf map-route`: the host (under the shared domain) goes to the app.
    pub async fn map_route(&self, r: &pb::AppRef, host: &str) -> Result<AppRecord, AppsError> {
        let _op = self.ops.lock().await;
        let app = self.find(r)?;
        if app.routes.iter().any(|h| h == host) {
            return Ok(app);
        }
        let app = self.store.set_route(&app, host, true)?;
        self.event(&app, "audit.app.map-route", BTreeMap::from([("route".to_string(), host.to_string())]));
        self.routes_changed.notify_one();
        Ok(app)
    }

    /// `cf unmap-route`: the router stops sending the host to the app.
    pub async fn unmap_route(&self, r: &pb::AppRef, host: &str) -> Result<AppRecord, AppsError> {
        let _op = self.ops.lock().await;
        let app = self.find(r)?;
        let app = self.store.set_route(&app, host, false)?;
        self.event(&app, "audit.app.unmap-route", BTreeMap::from([("route".to_string(), host.to_string())]));
        self.routes_changed.notify_one();
        Ok(app)
    }

    pub async fn sync_routes(&self) -> Result<(), AppsError> {
        let _sync = self.route_sync.lock().await;
        let apps: HashMap<String, AppRecord> =
            self.store.apps(None)?.into_iter().map(|a| (a.guid.clone(), a)).collect();
        let withdrawn = {
            let mut w = lock_set(&self.withdrawn);
            w.retain(|p| apps.values().any(|a| a.process_guid == *p));
            w.clone()
        };
        let mut table: HashMap<String, Vec<Backend>> = HashMap::new();
        let mut backends_of: HashMap<String, Vec<Backend>> = HashMap::new();
        for app in apps.values().filter(|a| {
            a.state == "STARTED"
                && !a.process_guid.is_empty()
                && !a.routes.is_empty()
                && !withdrawn.contains(&a.process_guid)
        }) {
            let mut backends = Vec::new();
            for a in self.actuals(&app.process_guid).await? {
                let routable = a.state() == pb::actual_lrp::State::Running
                    && a.routable
                    && a.presence() != pb::actual_lrp::Presence::Suspect;
                let app_port = app.droplet.as_ref().map_or(APP_PORT, |d| d.app_port());
                let Some(port) = a.ports.iter().find(|p| p.container_port == app_port) else { continue };
                // The router runs on the host, as health checks do: it
                // reaches the container's own address.
                let Ok(ip) = a.instance_address.parse::<std::net::IpAddr>() else { continue };
                if routable {
                    backends.push(Backend {
                        addr: std::net::SocketAddr::new(ip, u16::try_from(port.container_port).unwrap_or(8080)),
                        app_guid: app.guid.clone(),
                        instance_guid: a.instance_guid.clone(),
                        index: u32::try_from(a.index).unwrap_or(0),
                    });
                }
            }
            backends.sort_by_key(|b| b.index);
            backends_of.insert(app.guid.clone(), backends);
        }
        for (host, app_guid) in self.store.routes()? {
            let backends = backends_of.get(&app_guid).cloned().unwrap_or_default();
            table.insert(host, backends);
        }
        self.routes.replace(table);
        Ok(())
    }
}

fn lock_set(m: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The router's access log lines go to the app's log stream as `RTR`.
pub struct RouterLog(pub Arc<LogHub>);

impl AccessLog for RouterLog {
    fn record(&self, app_guid: &str, index: u32, line: String) {
        self.0.emit(pb::LogEnvelope {
            source_type: "RTR".into(),
            source_instance: index.to_string(),
            message_type: pb::log_envelope::MessageType::Out as i32,
            timestamp: now_ns(),
            message: line,
            log_guid: app_guid.to_string(),
        });
    }
}
