//! An app's instances as the scheduler and the cells see them: `cf app`'s
//! state and usage per instance, running counts, the list of cells, and
//! restarting one instance on its cell.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tonic::transport::Channel;

use super::AppsError;
use super::layer::AppLayer;
use super::store::AppRecord;
use celld_proto as pb;
use celld_proto::cell_client::CellClient;

impl AppLayer {
    pub async fn restart_instance(&self, r: &pb::AppRef, index: u32) -> Result<String, AppsError> {
        let app = self.find(r)?;
        if app.state != "STARTED" || app.process_guid.is_empty() {
            return Err(AppsError::FailedPrecondition(format!("app '{}' is not started", app.name)));
        }
        if index >= app.instances {
            return Err(AppsError::InvalidArgument(format!(
                "app '{}' has {} instance(s): the index must be 0 to {}",
                app.name,
                app.instances,
                app.instances.saturating_sub(1)
            )));
        }
        let actual = self
            .actuals(&app.process_guid)
            .await?
            .into_iter()
            .find(|a| {
                a.index == i32::try_from(index).unwrap_or(-1) && a.presence() == pb::actual_lrp::Presence::Ordinary
            })
            .filter(|a| !a.instance_guid.is_empty() && !a.cell_id.is_empty())
            .ok_or_else(|| {
                AppsError::FailedPrecondition(format!(
                    "instance {index} of app '{}' is not running on any cell",
                    app.name
                ))
            })?;
        let cell = self.cell_address(&actual.cell_id).await?;
        let mut client = CellClient::new(channel(&cell)?);
        client
            .stop_lrp_instance(pb::StopLrpInstanceRequest {
                process_guid: actual.process_guid.clone(),
                instance_guid: actual.instance_guid.clone(),
            })
            .await?;
        self.event(
            &app,
            "audit.app.process.terminate_instance",
            BTreeMap::from([("index".to_string(), index.to_string()), ("process_type".to_string(), "web".to_string())]),
        );
        Ok(actual.instance_guid)
    }

    pub(super) async fn actuals(&self, process_guid: &str) -> Result<Vec<pb::ActualLrp>, AppsError> {
        Ok(self
            .sched()
            .actual_lr_ps(pb::ActualLrPsRequest { process_guid: process_guid.into(), ..Default::default() })
            .await?
            .into_inner()
            .actual_lrps)
    }

    async fn cells(&self) -> Result<Vec<pb::CellPresence>, AppsError> {
        Ok(self.sched().cells(pb::CellsRequest {}).await?.into_inner().cells)
    }

    async fn cell_address(&self, cell_id: &str) -> Result<String, AppsError> {
        self.cells()
            .await?
            .into_iter()
            .find(|c| c.cell_id == cell_id)
            .map(|c| c.grpc_address)
            .ok_or_else(|| AppsError::FailedPrecondition(format!("cell {cell_id} is not reachable")))
    }

    /// The app with each process type's instances, their state and usage
    /// (`cf app`); `instances` are web's.
    pub async fn detail(&self, r: &pb::AppRef) -> Result<pb::AppDetail, AppsError> {
        let app = self.find(r)?;
        let mut processes = Vec::new();
        for (ptype, p) in app.all_processes() {
            let mut instances = Vec::new();
            if app.state == "STARTED" && !p.process_guid.is_empty() {
                let actuals = self.actuals(&p.process_guid).await?;
                let metrics = self.metrics(&app.guid, &actuals).await;
                for index in 0..p.instances {
                    let i = i32::try_from(index).unwrap_or(i32::MAX);
                    // The evacuating copy serves until its replacement runs.
                    let a = actuals
                        .iter()
                        .filter(|a| a.index == i && a.presence() != pb::actual_lrp::Presence::Suspect)
                        .max_by_key(|a| {
                            (
                                a.state() == pb::actual_lrp::State::Running,
                                a.presence() == pb::actual_lrp::Presence::Ordinary,
                            )
                        });
                    instances.push(instance_view(index, a, &metrics, p.memory_mb, p.disk_mb));
                }
            }
            processes.push(pb::ProcessDetail { process: Some(super::app::proto_process(&app, &ptype, &p)), instances });
        }
        let instances = processes.first().map(|p| p.instances.clone()).unwrap_or_default();
        Ok(pb::AppDetail { app: Some(self.proto_app(&app)), instances, processes })
    }

    async fn metrics(&self, log_guid: &str, actuals: &[pb::ActualLrp]) -> HashMap<String, pb::ContainerMetrics> {
        let mut out = HashMap::new();
        let Ok(cells) = self.cells().await else { return out };
        for cell in cells.iter().filter(|c| actuals.iter().any(|a| a.cell_id == c.cell_id)) {
            let Ok(ch) = channel(&cell.grpc_address) else { continue };
            let mut client = CellClient::new(ch);
            let call = client.container_metrics(pb::ContainerMetricsRequest { log_guid: log_guid.into() });
            if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), call).await {
                for m in resp.into_inner().metrics {
                    out.insert(m.instance_guid.clone(), m);
                }
            }
        }
        out
    }

    /// Running instances per app, for `cellctl apps`.
    pub async fn running_counts(&self, apps: &[AppRecord]) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        for a in apps.iter().filter(|a| !a.process_guid.is_empty()) {
            if let Ok(actuals) = self.actuals(&a.process_guid).await {
                let n = actuals
                    .iter()
                    .filter(|x| {
                        x.state() == pb::actual_lrp::State::Running
                            && x.presence() == pb::actual_lrp::Presence::Ordinary
                    })
                    .count();
                out.insert(a.guid.clone(), u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
        out
    }

    pub async fn list_cells(&self) -> Result<Vec<pb::CellStatus>, AppsError> {
        let mut out = Vec::new();
        for c in self.cells().await? {
            let mut status = pb::CellStatus {
                cell_id: c.cell_id.clone(),
                grpc_address: c.grpc_address.clone(),
                zone: c.zone.clone(),
                capacity: c.capacity,
                available: c.available,
                stacks: c.stacks.clone(),
                evacuating: c.evacuating,
                ..Default::default()
            };
            if let Ok(ch) = channel(&c.grpc_address) {
                let mut client = CellClient::new(ch);
                let call = client.state(pb::StateRequest {});
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), call).await {
                    let s = s.into_inner();
                    status.instances = u32::try_from(s.lrps.len()).unwrap_or(u32::MAX);
                    status.tasks =
                        u32::try_from(s.tasks.iter().filter(|t| t.state == "RUNNING").count()).unwrap_or(u32::MAX);
                    status.available = s.available.or(status.available);
                    status.vitals = s.vitals;
                }
            }
            out.push(status);
        }
        Ok(out)
    }
}

fn channel(addr: &str) -> Result<Channel, AppsError> {
    Ok(celld_transport::grpc::endpoint(addr)
        .map_err(|e| AppsError::FailedPrecondition(format!("cell address {addr}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy())
}

fn instance_view(
    index: u32,
    a: Option<&pb::ActualLrp>,
    metrics: &HashMap<String, pb::ContainerMetrics>,
    memory_mb: u32,
    disk_mb: u32,
) -> pb::AppInstance {
    use pb::actual_lrp::State;
    let mut v = pb::AppInstance {
        index,
        state: "down".into(),
        memory_quota_bytes: u64::from(memory_mb) << 20,
        disk_quota_bytes: u64::from(disk_mb) << 20,
        ..Default::default()
    };
    let Some(a) = a else { return v };
    v.state = match a.state() {
        State::Unclaimed | State::Claimed => "starting",
        State::Running => "running",
        State::Crashed => "crashed",
    }
    .into();
    v.since = a.since;
    v.instance_guid = a.instance_guid.clone();
    v.cell_id = a.cell_id.clone();
    v.routable = a.routable;
    v.crash_count = u32::try_from(a.crash_count).unwrap_or(0);
    v.details = if a.state() == State::Crashed { a.crash_reason.clone() } else { a.placement_error.clone() };
    if let Some(p) = a.ports.first() {
        v.address = format!("{}:{}", a.address, p.host_port);
    }
    if let Some(m) = metrics.get(&a.instance_guid) {
        v.cpu_percentage = m.cpu_percentage;
        v.memory_bytes = m.memory_bytes;
        v.disk_bytes = m.disk_bytes;
        if m.memory_bytes_quota > 0 {
            v.memory_quota_bytes = m.memory_bytes_quota;
        }
        if m.disk_bytes_quota > 0 {
            v.disk_quota_bytes = m.disk_bytes_quota;
        }
    }
    v
}
