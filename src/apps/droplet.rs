//! Staging an app: its latest package goes to the in-process stager, whose
//! events pass on to the client while it listens; the outcome becomes the
//! app's droplet (or its staging failure) whether anyone listens or not.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::AppsError;
use super::layer::AppLayer;
use super::store::Droplet;
use crate::executor::logs::now_ns;
use crate::staging::stager::{Event, Outcome, StageRequest, StagingSuccess};
use celld_proto as pb;

impl AppLayer {
    /// Stages the app's latest package. Events go to `tx` while the client
    /// listens; the outcome is recorded whether it does or not.
    pub async fn stage(self: &Arc<Self>, r: &pb::AppRef, tx: mpsc::Sender<pb::StagingEvent>) -> Result<(), AppsError> {
        let app = self.find(r)?;
        if !app.docker_image.is_empty() {
            return self.stage_docker(app, tx).await;
        }
        if app.package_key.is_empty() {
            return Err(AppsError::FailedPrecondition(format!(
                "app '{}' has no package: upload one first (cellctl push DIR)",
                app.name
            )));
        }
        let env = self.app_env(&app, None)?;
        let req = StageRequest {
            app_guid: app.guid.clone(),
            app_name: app.name.clone(),
            space_name: app.space.clone(),
            space_guid: String::new(),
            package_key: app.package_key.clone(),
            stack: app.stack.clone(),
            buildpacks: app.buildpacks.clone(),
            env: env.into_iter().filter(|(k, _)| k != "VCAP_APPLICATION").collect(),
            memory_mb: 0,
            disk_mb: 0,
            timeout: None,
        };
        let watch = self.stager.stage(req).await?;
        let this = self.clone();
        tokio::spawn(async move {
            use crate::staging::service::{event, log_event, proto_failure, proto_result};
            use pb::staging_event::Event as E;
            use tokio::sync::broadcast::error::RecvError;
            let guid = watch.staging_guid;
            let mut events = watch.events;
            let mut listening =
                tx.send(event(E::Started(pb::StagingStarted { staging_guid: guid.clone() }))).await.is_ok();
            loop {
                let out = match events.recv().await {
                    Ok(Event::Log(l)) => log_event(&guid, l.message, l.stderr, l.timestamp),
                    Err(RecvError::Lagged(n)) => log_event(
                        &guid,
                        format!("[celld: {n} staging log lines were dropped because this client read them too slowly]"),
                        true,
                        0,
                    ),
                    Ok(Event::Done(rec)) => {
                        let done = match &rec.outcome {
                            Outcome::Succeeded(s) => {
                                this.staged(&app.guid, Ok(buildpack_droplet(s))).await;
                                E::Result(proto_result(&guid, s))
                            }
                            Outcome::Failed(f) => {
                                this.staged(&app.guid, Err(format!("{} - {}", f.reason, f.message))).await;
                                E::Failure(proto_failure(&guid, f))
                            }
                            Outcome::Running => continue,
                        };
                        if listening {
                            let _ = tx.send(event(done)).await;
                        }
                        return;
                    }
                    Err(RecvError::Closed) => return,
                };
                if listening {
                    listening = tx.send(out).await.is_ok();
                }
            }
        });
        Ok(())
    }

    /// Records a staging's outcome: the droplet becomes the app's current one
    /// (the one it replaces is deleted once no process uses it), or the
    /// failure its staging_failed_reason.
    pub(super) async fn staged(&self, app_guid: &str, outcome: Result<Droplet, String>) {
        let _op = self.ops.lock().await;
        let Ok(Some(mut app)) = self.store.app(app_guid) else { return };
        match outcome {
            Ok(droplet) => {
                let what = if droplet.key.is_empty() { droplet.docker_rootfs.clone() } else { droplet.key.clone() };
                super::process::add_droplet_types(&mut app, &droplet);
                let old = app.droplet.replace(droplet);
                app.package_state = "STAGED".into();
                app.staging_failed_reason.clear();
                if let Some(old) =
                    old.filter(|o| !o.key.is_empty() && Some(&o.key) != app.droplet.as_ref().map(|d| &d.key))
                {
                    app.old_droplets.push(old.key);
                }
                self.event(&app, "audit.app.droplet.create", BTreeMap::from([("droplet".to_string(), what)]));
            }
            Err(reason) => {
                app.package_state = "FAILED".into();
                app.staging_failed_reason = reason;
            }
        }
        app.updated_at = now_ns();
        if let Err(e) = self.store.put_app(&app) {
            tracing::warn!(app_guid = %app.guid, error = %e, "could not record the staging outcome");
        }
    }
}

/// The droplet a buildpack staging made.
fn buildpack_droplet(s: &StagingSuccess) -> Droplet {
    Droplet {
        key: s.droplet.key.clone(),
        sha256: s.droplet.sha256.clone(),
        stack: s.stack.clone(),
        detected_buildpack: s.detected_buildpack.clone(),
        buildpacks: s.buildpacks.iter().map(|b| b.name.clone()).collect(),
        start_command: s.start_command.clone(),
        process_types: s.process_types.clone(),
        result_json: s.result_json.clone(),
        created_at: now_ns(),
        ..Default::default()
    }
}
