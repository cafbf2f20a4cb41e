//! celld's own scheduler (`celld scheduler`, gRPC) as the rep's control plane.

use std::time::Duration;

use tonic::transport::Channel;

use super::{ControlPlane, PlaneError, RepError, Report};
use celld_proto as pb;
use celld_proto::scheduler_client::SchedulerClient;

pub fn scheduler_channel(addr: &str) -> Result<Channel, RepError> {
    Ok(celld_transport::grpc::endpoint(addr)
        .map_err(|e| RepError::BadAddress { addr: addr.to_string(), why: e.to_string() })?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect_lazy())
}

pub struct SchedulerPlane {
    client: SchedulerClient<Channel>,
}

impl SchedulerPlane {
    pub fn new(addr: &str) -> Result<Self, RepError> {
        Ok(Self { client: SchedulerClient::new(scheduler_channel(addr)?) })
    }
}

/// Errors worth retrying: the scheduler is away or slow, not saying no.
fn plane_error(s: tonic::Status) -> PlaneError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => {
            PlaneError::Unreachable(s.message().to_string())
        }
        code => PlaneError::Refused(format!("{code:?}: {}", s.message())),
    }
}

#[async_trait::async_trait]
impl ControlPlane for SchedulerPlane {
    async fn send(&self, r: &Report) -> Result<(), PlaneError> {
        let mut c = self.client.clone();
        match r.clone() {
            Report::Claim(x) => c.claim_actual_lrp(x).await.map(drop),
            Report::Start(x) => c.start_actual_lrp(x).await.map(drop),
            Report::Crash(x) => c.crash_actual_lrp(x).await.map(drop),
            Report::Remove(x) => c.remove_actual_lrp(x).await.map(drop),
            Report::CompleteTask(x) => c.complete_task(x).await.map(drop),
        }
        .map_err(plane_error)
    }

    async fn heartbeat(&self, presence: pb::CellPresence) -> Result<(), PlaneError> {
        self.client.clone().heartbeat(presence).await.map(drop).map_err(plane_error)
    }

    async fn actual_lrps(&self, cell_id: &str) -> Result<Vec<pb::ActualLrp>, PlaneError> {
        let req = pb::ActualLrPsByCellRequest { cell_id: cell_id.to_string() };
        Ok(self.client.clone().actual_lr_ps_by_cell(req).await.map_err(plane_error)?.into_inner().actual_lrps)
    }

    async fn tasks(&self, cell_id: &str) -> Result<Vec<pb::Task>, PlaneError> {
        let req = pb::TasksByCellRequest { cell_id: cell_id.to_string() };
        Ok(self.client.clone().tasks_by_cell(req).await.map_err(plane_error)?.into_inner().tasks)
    }

    async fn start_task(&self, task_guid: &str, cell_id: &str) -> Result<bool, PlaneError> {
        let req = pb::StartTaskRequest { task_guid: task_guid.to_string(), cell_id: cell_id.to_string() };
        Ok(self.client.clone().start_task(req).await.map_err(plane_error)?.into_inner().should_start)
    }

    async fn evacuate_running(
        &self,
        key: pb::ActualLrpKey,
        instance: pb::ActualLrpInstanceKey,
        net: pb::ActualLrpNetInfo,
    ) -> Result<bool, PlaneError> {
        let req =
            pb::EvacuateRunningActualLrpRequest { key: Some(key), instance_key: Some(instance), net_info: Some(net) };
        Ok(self.client.clone().evacuate_running_actual_lrp(req).await.map_err(plane_error)?.into_inner().keep_container)
    }

    async fn evacuate_claimed(&self, _: pb::ActualLrpKey, _: pb::ActualLrpInstanceKey) -> Result<bool, PlaneError> {
        // celld's scheduler re-places an instance whose removal is reported.
        Ok(false)
    }

    async fn remove_evacuating(
        &self,
        key: pb::ActualLrpKey,
        instance: pb::ActualLrpInstanceKey,
    ) -> Result<(), PlaneError> {
        let req = pb::RemoveEvacuatingActualLrpRequest { key: Some(key), instance_key: Some(instance) };
        self.client.clone().remove_evacuating_actual_lrp(req).await.map(drop).map_err(plane_error)
    }
}
