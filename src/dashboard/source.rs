//! Where the dashboard's data comes from. In local mode, the app layer (cells,
//! apps, instances, events, env and logs, as cellctl sees them); on a plain
//! cell without one, the cell's own executor: its capacity, vitals and
//! instances with their metrics (no apps: a cell knows processes, not apps).

use std::sync::Arc;

use serde_json::{Value, json};

use super::DashboardError;
use super::samples::{Sample, Samples, Seen};
use super::views;
use crate::apps::AppLayer;
use crate::executor::Executor;
use crate::executor::logs::now_ns;
use crate::rep::vitals::Vitals;
use celld_proto as pb;

#[derive(Clone)]
pub enum Source {
    Apps(Arc<AppLayer>),
    /// A plain cell: its executor, and the sampler of its host's vitals (kept,
    /// so CPU is measured between the dashboard's own reads).
    Cell(Arc<Executor>, Arc<Vitals>),
}

fn app_ref(guid: &str) -> pb::AppRef {
    // The app layer finds an app by guid in any space.
    pb::AppRef { name: guid.to_string(), space: String::new() }
}

impl Source {
    pub fn mode(&self) -> &'static str {
        match self {
            Source::Apps(_) => "local",
            Source::Cell(..) => "cell",
        }
    }

    pub async fn cells(&self) -> Result<Vec<Value>, DashboardError> {
        match self {
            Source::Apps(apps) => Ok(apps.list_cells().await?.iter().map(views::cell).collect()),
            Source::Cell(executor, vitals) => {
                let s = executor.state();
                let vitals = vitals
                    .sample()
                    .inspect_err(|e| tracing::warn!(cell_id = %s.cell_id, error = %e, "cell vitals unavailable"))
                    .ok();
                let status = pb::CellStatus {
                    cell_id: s.cell_id,
                    zone: s.zone,
                    capacity: s.total,
                    available: s.available,
                    instances: u32::try_from(s.lrps.len()).unwrap_or(u32::MAX),
                    tasks: u32::try_from(s.tasks.iter().filter(|t| t.state == "RUNNING").count()).unwrap_or(u32::MAX),
                    stacks: s.stacks,
                    evacuating: s.evacuating,
                    vitals,
                    ..Default::default()
                };
                Ok(vec![views::cell(&status)])
            }
        }
    }

    /// Every app (local mode) with its running count and its instances'
    /// newest memory and disk use; none on a plain cell.
    pub async fn apps(&self, samples: &Samples) -> Result<Vec<Value>, DashboardError> {
        let Source::Apps(apps) = self else { return Ok(Vec::new()) };
        let list = apps.list_apps("", true)?;
        let running = apps.running_counts(&list).await;
        Ok(list
            .iter()
            .map(|a| {
                let latest = samples.latest_of(&a.guid);
                json!({
                    "guid": a.guid,
                    "name": a.name,
                    "space": a.space,
                    "state": a.state,
                    "package_state": a.package_state,
                    "instances": a.instances,
                    "running": running.get(&a.guid).copied().unwrap_or(0),
                    "memory_mb": a.memory_mb,
                    "disk_mb": a.disk_mb,
                    "memory": latest.iter().map(|s| s.memory).sum::<u64>(),
                    "disk": latest.iter().map(|s| s.disk).sum::<u64>(),
                    "routes": a.routes.iter().map(|h| apps.url(h)).collect::<Vec<_>>(),
                })
            })
            .collect())
    }

    /// One app with each process type's instances and their chart history.
    pub async fn app(&self, guid: &str, samples: &Samples) -> Result<Value, DashboardError> {
        let apps = self.app_layer()?;
        let d = apps.detail(&app_ref(guid)).await?;
        let app = d.app.unwrap_or_default();
        let mut instances = Vec::new();
        for p in &d.processes {
            let ptype = p.process.as_ref().map(|p| p.r#type.as_str()).unwrap_or("web");
            for i in &p.instances {
                instances.push(views::instance(i, ptype, samples.history(&i.instance_guid)));
            }
        }
        let processes: Vec<Value> = d
            .processes
            .iter()
            .filter_map(|p| p.process.as_ref())
            .map(|p| json!({ "type": p.r#type, "instances": p.instances, "memory_mb": p.memory_mb, "disk_mb": p.disk_mb }))
            .collect();
        Ok(json!({
            "guid": app.guid,
            "name": app.name,
            "space": app.space,
            "state": app.state,
            "package_state": app.package_state,
            "staging_failed_reason": app.staging_failed_reason,
            "stack": app.stack,
            "buildpacks": app.buildpacks,
            "docker_image": app.docker_image,
            "routes": app.routes.iter().map(|h| apps.url(h)).collect::<Vec<_>>(),
            "processes": processes,
            "instances": instances,
        }))
    }

    /// A plain cell's instances (local mode: an app's, in `app`).
    pub async fn cell_instances(&self, samples: &Samples) -> Result<Vec<Value>, DashboardError> {
        let Source::Cell(executor, _) = self else { return Ok(Vec::new()) };
        let state = executor.state();
        let metrics = executor.metrics("").await;
        Ok(state
            .lrps
            .iter()
            .map(|l| {
                let m = metrics.iter().find(|m| m.instance_guid == l.instance_guid);
                json!({
                    "process_guid": l.process_guid,
                    "log_guid": m.map(|m| m.log_guid.as_str()).unwrap_or(""),
                    "index": l.index,
                    "state": l.state,
                    "instance_guid": l.instance_guid,
                    "cpu": m.map_or(0.0, |m| m.cpu_percentage),
                    "memory": m.map_or(0, |m| m.memory_bytes),
                    "memory_quota": u64::from(l.memory_mb) << 20,
                    "disk": m.map_or(0, |m| m.disk_bytes),
                    "disk_quota": u64::from(l.disk_mb) << 20,
                    "history": samples.history(&l.instance_guid),
                })
            })
            .collect())
    }

    pub fn events(&self, guid: &str) -> Result<Vec<Value>, DashboardError> {
        Ok(self.app_layer()?.events(&app_ref(guid))?.iter().map(views::event).collect())
    }

    pub fn env(&self, guid: &str) -> Result<Value, DashboardError> {
        Ok(super::env::masked(&self.app_layer()?.env(&app_ref(guid))?))
    }

    /// An app's kept lines, then its live ones. Local mode only: a plain
    /// cell's hub would make a stream for any log guid asked for, pushing out
    /// real ones.
    #[allow(clippy::type_complexity)]
    pub fn logs(
        &self,
        guid: &str,
    ) -> Result<(Vec<pb::LogEnvelope>, tokio::sync::broadcast::Receiver<pb::LogEnvelope>), DashboardError> {
        let r = pb::LogsRequest { app: Some(app_ref(guid)), recent: true, follow: true };
        let (history, live) = self.app_layer()?.logs(&r)?;
        live.map(|l| (history, l)).ok_or_else(|| DashboardError::NotFound("no live log stream".into()))
    }

    /// One sweep of every instance's CPU, memory and disk.
    pub async fn sweep(&self) -> Vec<Seen> {
        let t = views::ms(now_ns());
        let mut seen = Vec::new();
        match self {
            Source::Apps(apps) => {
                let Ok(list) = apps.list_apps("", true) else { return seen };
                for a in list.iter().filter(|a| a.state == "STARTED") {
                    let Ok(d) = apps.detail(&app_ref(&a.guid)).await else { continue };
                    for i in d.processes.iter().flat_map(|p| &p.instances) {
                        if i.instance_guid.is_empty() || i.state != "running" {
                            continue;
                        }
                        seen.push(Seen {
                            instance_guid: i.instance_guid.clone(),
                            owner: a.guid.clone(),
                            sample: Sample { t, cpu: i.cpu_percentage, memory: i.memory_bytes, disk: i.disk_bytes },
                        });
                    }
                }
            }
            Source::Cell(executor, _) => {
                for m in executor.metrics("").await.into_iter().filter(|m| m.task_guid.is_empty()) {
                    seen.push(Seen {
                        instance_guid: m.instance_guid,
                        owner: m.log_guid,
                        sample: Sample { t, cpu: m.cpu_percentage, memory: m.memory_bytes, disk: m.disk_bytes },
                    });
                }
            }
        }
        seen
    }

    pub fn app_layer(&self) -> Result<&Arc<AppLayer>, DashboardError> {
        match self {
            Source::Apps(a) => Ok(a),
            Source::Cell(..) => Err(DashboardError::NoApps),
        }
    }
}
