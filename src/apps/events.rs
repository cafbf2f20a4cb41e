//! What happened to an app: its audit events (recorded by every call, read by
//! `cf events`), `app.crash` events taken from the scheduler's event stream,
//! and its log lines (`cf logs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::AppsError;
use super::layer::AppLayer;
use super::store::{AppRecord, EventRecord};
use crate::executor::logs::now_ns;
use celld_base::guid::new_guid;
use celld_proto as pb;

const ACTOR: &str = "admin";

impl AppLayer {
    pub(super) fn event(&self, app: &AppRecord, kind: &str, metadata: BTreeMap<String, String>) {
        let e = EventRecord {
            guid: new_guid(),
            app_guid: app.guid.clone(),
            kind: kind.to_string(),
            actor: ACTOR.to_string(),
            timestamp: now_ns(),
            metadata,
        };
        if let Err(err) = self.store.add_event(&e) {
            tracing::warn!(app_guid = %app.guid, event = kind, error = %err, "could not record an event");
        }
    }

    pub fn events(&self, r: &pb::AppRef) -> Result<Vec<EventRecord>, AppsError> {
        let app = self.find(r)?;
        self.store.events(&app.guid, 200)
    }

    /// History (if `recent`) and live lines (if `follow`) of an app.
    pub fn logs(
        &self,
        r: &pb::LogsRequest,
    ) -> Result<(Vec<pb::LogEnvelope>, Option<tokio::sync::broadcast::Receiver<pb::LogEnvelope>>), AppsError> {
        let app = self.find(&r.app.clone().unwrap_or_default())?;
        let (history, live) = self.logs.subscribe(&app.guid, None, if r.recent { usize::MAX } else { 0 });
        Ok((history, r.follow.then_some(live)))
    }

    /// Forgets the log lines of every log guid that is no app's (apps deleted
    /// while celld was down, or before their lines were written).
    pub fn prune_logs(&self) -> Result<(), AppsError> {
        let keep: std::collections::HashSet<String> = self.store.apps(None)?.into_iter().map(|a| a.guid).collect();
        self.logs.retain(&keep);
        Ok(())
    }

    /// Follows the scheduler's events: records `app.crash`, and re-reads
    /// routes when an instance changes. Reconnects when the scheduler goes away.
    pub(super) async fn follow_events(self: Arc<Self>) {
        loop {
            match self.sched().subscribe_events(pb::SubscribeEventsRequest {}).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    // Changes while disconnected: read the routes afresh.
                    self.routes_changed.notify_one();
                    while let Ok(Some(e)) = stream.message().await {
                        self.on_event(&e);
                    }
                }
                Err(s) => tracing::debug!(error = %s, "scheduler events unavailable; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn on_event(&self, e: &pb::Event) {
        if !e.r#type.starts_with("actual_lrp_") {
            return;
        }
        self.routes_changed.notify_one();
        if e.r#type != "actual_lrp_crashed" {
            return;
        }
        let (Some(after), Some(before)) = (&e.actual_lrp, &e.actual_lrp_before) else { return };
        let Ok(apps) = self.store.apps(None) else { return };
        let Some((app, ptype)) = apps.iter().find_map(|a| a.type_of_diego_process(&after.process_guid).map(|t| (a, t)))
        else {
            return;
        };
        let meta = BTreeMap::from([
            ("process_type".to_string(), ptype),
            ("index".to_string(), after.index.to_string()),
            ("instance".to_string(), before.instance_guid.clone()),
            ("cell_id".to_string(), before.cell_id.clone()),
            ("exit_description".to_string(), after.crash_reason.clone()),
            ("reason".to_string(), "CRASHED".to_string()),
            ("crash_count".to_string(), after.crash_count.to_string()),
            ("crash_timestamp".to_string(), after.since.to_string()),
        ]);
        self.event(app, "app.crash", meta);
    }
}
