//! The `Scheduler` gRPC service: thin translation between proto messages and
//! the scheduler (`core`).

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::core::Scheduler;
use celld_proto as pb;

/// How the scheduler's errors reach its gRPC clients.
impl From<crate::SchedulerError> for Status {
    fn from(e: crate::SchedulerError) -> Self {
        use crate::SchedulerError as E;
        match e {
            E::InvalidArgument(m) => Status::invalid_argument(m),
            E::NotFound(m) => Status::not_found(m),
            E::AlreadyExists(m) => Status::already_exists(m),
            E::FailedPrecondition(m) => Status::failed_precondition(m),
            E::Store(_) | E::Internal(_) | E::Grpc(_) | E::Metrics(_) => Status::internal(e.to_string()),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[derive(Clone)]
pub struct SchedulerService {
    scheduler: Arc<Scheduler>,
}

impl SchedulerService {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self { scheduler }
    }

    /// The tonic server, with room for large listings and Perform-sized messages.
    pub fn server(self) -> pb::scheduler_server::SchedulerServer<Self> {
        pb::scheduler_server::SchedulerServer::new(self)
            .max_decoding_message_size(super::core::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(super::core::MAX_MESSAGE_BYTES)
    }
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::scheduler_server::Scheduler for SchedulerService {
    async fn heartbeat(&self, r: Request<pb::CellPresence>) -> R<pb::HeartbeatResponse> {
        let ttl_seconds = self.scheduler.heartbeat(r.into_inner()).await?;
        Ok(Response::new(pb::HeartbeatResponse { ttl_seconds }))
    }

    async fn get_desired_lrp(&self, r: Request<pb::DesiredLrpRequest>) -> R<pb::DesiredLrp> {
        Ok(Response::new(self.scheduler.get_desired_lrp(&r.into_inner().process_guid).await?))
    }

    async fn claim_actual_lrp(&self, r: Request<pb::ClaimActualLrpRequest>) -> R<pb::ActualLrp> {
        Ok(Response::new(self.scheduler.claim_actual_lrp(r.into_inner()).await?))
    }

    async fn start_actual_lrp(&self, r: Request<pb::StartActualLrpRequest>) -> R<pb::ActualLrp> {
        Ok(Response::new(self.scheduler.start_actual_lrp(r.into_inner()).await?))
    }

    async fn crash_actual_lrp(&self, r: Request<pb::CrashActualLrpRequest>) -> R<pb::ActualLrp> {
        Ok(Response::new(self.scheduler.crash_actual_lrp(r.into_inner()).await?))
    }

    async fn remove_actual_lrp(&self, r: Request<pb::RemoveActualLrpRequest>) -> R<pb::RemoveActualLrpResponse> {
        self.scheduler.remove_actual_lrp(r.into_inner()).await?;
        Ok(Response::new(pb::RemoveActualLrpResponse {}))
    }

    async fn evacuate_running_actual_lrp(
        &self,
        r: Request<pb::EvacuateRunningActualLrpRequest>,
    ) -> R<pb::EvacuateResponse> {
        let keep_container = self.scheduler.evacuate_running_actual_lrp(r.into_inner()).await?;
        Ok(Response::new(pb::EvacuateResponse { keep_container }))
    }

    async fn remove_evacuating_actual_lrp(
        &self,
        r: Request<pb::RemoveEvacuatingActualLrpRequest>,
    ) -> R<pb::RemoveEvacuatingActualLrpResponse> {
        self.scheduler.remove_evacuating_actual_lrp(r.into_inner()).await?;
        Ok(Response::new(pb::RemoveEvacuatingActualLrpResponse {}))
    }

    async fn start_task(&self, r: Request<pb::StartTaskRequest>) -> R<pb::StartTaskResponse> {
        let r = r.into_inner();
        let should_start = self.scheduler.start_task(&r.task_guid, &r.cell_id).await?;
        Ok(Response::new(pb::StartTaskResponse { should_start }))
    }

    async fn complete_task(&self, r: Request<pb::CompleteTaskRequest>) -> R<pb::Task> {
        Ok(Response::new(self.scheduler.complete_task(r.into_inner()).await?))
    }

    async fn reject_task(&self, r: Request<pb::RejectTaskRequest>) -> R<pb::Task> {
        Ok(Response::new(self.scheduler.reject_task(r.into_inner()).await?))
    }

    async fn actual_lr_ps_by_cell(&self, r: Request<pb::ActualLrPsByCellRequest>) -> R<pb::ActualLrPsResponse> {
        let actual_lrps = self.scheduler.actual_lrps_by_cell(&r.into_inner().cell_id).await?;
        Ok(Response::new(pb::ActualLrPsResponse { actual_lrps }))
    }

    async fn tasks_by_cell(&self, r: Request<pb::TasksByCellRequest>) -> R<pb::TasksResponse> {
        let cell_id = r.into_inner().cell_id;
        if cell_id.is_empty() {
            return Err(Status::invalid_argument("cell_id is required"));
        }
        let tasks = self.scheduler.tasks("", &cell_id).await?;
        Ok(Response::new(pb::TasksResponse { tasks }))
    }

    async fn desire_lrp(&self, r: Request<pb::DesiredLrp>) -> R<pb::DesiredLrp> {
        Ok(Response::new(self.scheduler.desire_lrp(r.into_inner()).await?))
    }

    async fn update_desired_lrp(&self, r: Request<pb::UpdateDesiredLrpRequest>) -> R<pb::DesiredLrp> {
        Ok(Response::new(self.scheduler.update_desired_lrp(r.into_inner()).await?))
    }

    async fn remove_desired_lrp(&self, r: Request<pb::RemoveDesiredLrpRequest>) -> R<pb::RemoveDesiredLrpResponse> {
        self.scheduler.remove_desired_lrp(&r.into_inner().process_guid).await?;
        Ok(Response::new(pb::RemoveDesiredLrpResponse {}))
    }

    async fn desired_lr_ps(&self, r: Request<pb::DesiredLrPsRequest>) -> R<pb::DesiredLrPsResponse> {
        let desired_lrps = self.scheduler.desired_lrps(&r.into_inner().domain).await?;
        Ok(Response::new(pb::DesiredLrPsResponse { desired_lrps }))
    }

    async fn actual_lr_ps(&self, r: Request<pb::ActualLrPsRequest>) -> R<pb::ActualLrPsResponse> {
        let actual_lrps = self.scheduler.actual_lrps(r.into_inner()).await?;
        Ok(Response::new(pb::ActualLrPsResponse { actual_lrps }))
    }

    async fn desire_task(&self, r: Request<pb::Task>) -> R<pb::Task> {
        Ok(Response::new(self.scheduler.desire_task(r.into_inner()).await?))
    }

    async fn tasks(&self, r: Request<pb::TasksRequest>) -> R<pb::TasksResponse> {
        let r = r.into_inner();
        let tasks = self.scheduler.tasks(&r.domain, &r.cell_id).await?;
        Ok(Response::new(pb::TasksResponse { tasks }))
    }

    async fn get_task(&self, r: Request<pb::GetTaskRequest>) -> R<pb::Task> {
        Ok(Response::new(self.scheduler.task(&r.into_inner().task_guid).await?))
    }

    async fn cancel_task(&self, r: Request<pb::CancelTaskRequest>) -> R<pb::Task> {
        Ok(Response::new(self.scheduler.cancel_task(&r.into_inner().task_guid).await?))
    }

    async fn resolve_task(&self, r: Request<pb::ResolveTaskRequest>) -> R<pb::ResolveTaskResponse> {
        self.scheduler.resolve_task(&r.into_inner().task_guid).await?;
        Ok(Response::new(pb::ResolveTaskResponse {}))
    }

    async fn cells(&self, _r: Request<pb::CellsRequest>) -> R<pb::CellsResponse> {
        Ok(Response::new(pb::CellsResponse { cells: self.scheduler.live_cells() }))
    }

    type SubscribeEventsStream = EventStream;

    async fn subscribe_events(&self, _r: Request<pb::SubscribeEventsRequest>) -> R<EventStream> {
        let mut events = self.scheduler.subscribe();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        if tx.send(Ok(Arc::unwrap_or_clone(e))).await.is_err() {
                            return;
                        }
                    }
                    // A slow subscriber loses what it missed; writers never wait.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(skipped = n, "event subscriber lagging");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn converge(&self, _r: Request<pb::ConvergeRequest>) -> R<pb::ConvergeResponse> {
        let changes = self.scheduler.converge().await?;
        Ok(Response::new(pb::ConvergeResponse { changes }))
    }

    async fn advance_clock(&self, r: Request<pb::AdvanceClockRequest>) -> R<pb::AdvanceClockResponse> {
        let now = self.scheduler.advance_clock(r.into_inner().seconds).await?;
        Ok(Response::new(pb::AdvanceClockResponse { now }))
    }
}
