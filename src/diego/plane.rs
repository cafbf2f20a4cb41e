//! Diego's BBS as the rep's control plane: the executor's reports become
//! BBS's calls, BBS's records celld's, and BBS's refusals the rep's rules.

use celld_diego::bbs::ErrorType;
use celld_diego::{BbsClient, BbsError};
use celld_proto as pb;
use celld_proto::diego::bbs;

use crate::rep::{ControlPlane, PlaneError, Report};

pub struct DiegoPlane {
    bbs: BbsClient,
    zone: String,
}

impl DiegoPlane {
    pub fn new(bbs: BbsClient, zone: &str) -> Self {
        Self { bbs, zone: zone.to_string() }
    }
}

fn plane_error(e: BbsError) -> PlaneError {
    if e.is_transient() { PlaneError::Unreachable(e.to_string()) } else { PlaneError::Refused(e.to_string()) }
}

fn key(k: Option<&pb::ActualLrpKey>) -> bbs::ActualLrpKey {
    k.map_or_else(Default::default, |k| bbs::ActualLrpKey {
        process_guid: k.process_guid.clone(),
        index: k.index,
        domain: k.domain.clone(),
    })
}

fn instance_key(k: Option<&pb::ActualLrpInstanceKey>) -> bbs::ActualLrpInstanceKey {
    k.map_or_else(Default::default, |k| bbs::ActualLrpInstanceKey {
        instance_guid: k.instance_guid.clone(),
        cell_id: k.cell_id.clone(),
    })
}

/// The instance's addresses as BBS records them: the host's address with
/// its ports (what the routers use, as the rep's default preference says).
fn net_info(n: &pb::ActualLrpNetInfo) -> bbs::ActualLrpNetInfo {
    bbs::ActualLrpNetInfo {
        address: n.address.clone(),
        ports: n
            .ports
            .iter()
            .map(|p| bbs::PortMapping {
                container_port: p.container_port,
                host_port: p.host_port,
                ..Default::default()
            })
            .collect(),
        instance_address: n.instance_address.clone(),
        preferred_address: bbs::actual_lrp_net_info::PreferredAddress::Host as i32,
        instance_ipv6_address: String::new(),
    }
}

/// BBS's record of an instance, in celld's terms (what the reconcile reads).
fn actual(a: bbs::ActualLrp) -> pb::ActualLrp {
    let k = a.actual_lrp_key.unwrap_or_default();
    let ik = a.actual_lrp_instance_key.unwrap_or_default();
    let state = match a.state.as_str() {
        "CLAIMED" => pb::actual_lrp::State::Claimed,
        "RUNNING" => pb::actual_lrp::State::Running,
        "CRASHED" => pb::actual_lrp::State::Crashed,
        _ => pb::actual_lrp::State::Unclaimed,
    };
    let presence = match bbs::actual_lrp::Presence::try_from(a.presence) {
        Ok(bbs::actual_lrp::Presence::Evacuating) => pb::actual_lrp::Presence::Evacuating,
        Ok(bbs::actual_lrp::Presence::Suspect) => pb::actual_lrp::Presence::Suspect,
        _ => pb::actual_lrp::Presence::Ordinary,
    };
    pb::ActualLrp {
        process_guid: k.process_guid,
        index: k.index,
        domain: k.domain,
        instance_guid: ik.instance_guid,
        cell_id: ik.cell_id,
        state: state as i32,
        presence: presence as i32,
        crash_count: a.crash_count,
        crash_reason: a.crash_reason,
        since: a.since,
        ..Default::default()
    }
}

/// BBS's record of a task, in celld's terms (the task states are numbered alike).
fn task(t: bbs::Task) -> pb::Task {
    pb::Task {
        task_guid: t.task_guid,
        domain: t.domain,
        state: t.state,
        cell_id: t.cell_id,
        failed: t.failed,
        failure_reason: t.failure_reason,
        result: t.result,
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl ControlPlane for DiegoPlane {
    async fn send(&self, r: &Report) -> Result<(), PlaneError> {
        let result = match r {
            Report::Claim(x) => {
                self.bbs.claim_actual_lrp(&key(x.key.as_ref()), &instance_key(x.instance_key.as_ref())).await
            }
            Report::Start(x) => {
                let req = bbs::StartActualLrpRequest {
                    actual_lrp_key: Some(key(x.key.as_ref())),
                    actual_lrp_instance_key: Some(instance_key(x.instance_key.as_ref())),
                    actual_lrp_net_info: x.net_info.as_ref().map(net_info),
                    optional_routable: Some(bbs::start_actual_lrp_request::OptionalRoutable::Routable(x.routable)),
                    availability_zone: self.zone.clone(),
                    ..Default::default()
                };
                self.bbs.start_actual_lrp(&req).await
            }
            Report::Crash(x) => {
                self.bbs
                    .crash_actual_lrp(&key(x.key.as_ref()), &instance_key(x.instance_key.as_ref()), &x.error_message)
                    .await
            }
            Report::Remove(x) => {
                self.bbs.remove_actual_lrp(&key(x.key.as_ref()), &instance_key(x.instance_key.as_ref())).await
            }
            Report::CompleteTask(x) => {
                self.bbs.complete_task(&x.task_guid, &x.cell_id, x.failed, &x.failure_reason, &x.result).await
            }
        };
        match result {
            Ok(()) => Ok(()),
            // Already gone from BBS: nothing left to tell it.
            Err(e)
                if matches!(r, Report::Remove(_) | Report::Crash(_))
                    && e.kind() == Some(ErrorType::ResourceNotFound) =>
            {
                Ok(())
            }
            Err(e) => Err(plane_error(e)),
        }
    }

    async fn heartbeat(&self, _: pb::CellPresence) -> Result<(), PlaneError> {
        // Diego keeps the cell's presence in Locket (`celld_diego::Presence`).
        Ok(())
    }

    async fn actual_lrps(&self, cell_id: &str) -> Result<Vec<pb::ActualLrp>, PlaneError> {
        Ok(self.bbs.actual_lrps_by_cell(cell_id).await.map_err(plane_error)?.into_iter().map(actual).collect())
    }

    async fn tasks(&self, cell_id: &str) -> Result<Vec<pb::Task>, PlaneError> {
        Ok(self.bbs.tasks_by_cell(cell_id).await.map_err(plane_error)?.into_iter().map(task).collect())
    }

    async fn start_task(&self, task_guid: &str, cell_id: &str) -> Result<bool, PlaneError> {
        match self.bbs.start_task(task_guid, cell_id).await {
            Ok(should_start) => Ok(should_start),
            // Diego's rep: a task BBS no longer has, or that is past
            // starting, is not run (its container is deleted).
            Err(e) if matches!(e.kind(), Some(ErrorType::InvalidStateTransition | ErrorType::ResourceNotFound)) => {
                tracing::info!(task_guid, error = %e, "BBS will not start the task here");
                Ok(false)
            }
            Err(e) => Err(plane_error(e)),
        }
    }

    async fn evacuate_running(
        &self,
        k: pb::ActualLrpKey,
        ik: pb::ActualLrpInstanceKey,
        net: pb::ActualLrpNetInfo,
    ) -> Result<bool, PlaneError> {
        let req = bbs::EvacuateRunningActualLrpRequest {
            actual_lrp_key: Some(key(Some(&k))),
            actual_lrp_instance_key: Some(instance_key(Some(&ik))),
            actual_lrp_net_info: Some(net_info(&net)),
            optional_routable: Some(bbs::evacuate_running_actual_lrp_request::OptionalRoutable::Routable(true)),
            availability_zone: self.zone.clone(),
            ..Default::default()
        };
        self.bbs.evacuate_running_actual_lrp(&req).await.map_err(plane_error)
    }

    async fn evacuate_claimed(&self, k: pb::ActualLrpKey, ik: pb::ActualLrpInstanceKey) -> Result<bool, PlaneError> {
        self.bbs.evacuate_claimed_actual_lrp(&key(Some(&k)), &instance_key(Some(&ik))).await.map_err(plane_error)?;
        // BBS unclaimed it for another cell: the container goes.
        Ok(true)
    }

    async fn remove_evacuating(&self, k: pb::ActualLrpKey, ik: pb::ActualLrpInstanceKey) -> Result<(), PlaneError> {
        self.bbs.remove_evacuating_actual_lrp(&key(Some(&k)), &instance_key(Some(&ik))).await.map_err(plane_error)
    }
}
