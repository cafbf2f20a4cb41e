//! The `Cell` gRPC service every celld serves: state, work, stops, logs, metrics.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::vitals::Vitals;
use crate::executor::{Executor, ExecutorError, StopReason};
use celld_proto as pb;
use celld_proto::cell_server::Cell;

/// How the executor's errors reach gRPC clients of the Cell service (and of
/// Apps, which drives the executor).
impl From<ExecutorError> for Status {
    fn from(e: ExecutorError) -> Self {
        match e {
            ExecutorError::Invalid(m) => Status::invalid_argument(m),
            ExecutorError::NotFound(m) => Status::not_found(m),
            ExecutorError::Precondition(m) => Status::failed_precondition(m),
            ExecutorError::Garden(g) => Status::internal(g.to_string()),
            ExecutorError::Blobstore(b) => crate::staging::service::blobstore_status(b),
            ExecutorError::Internal(m) => Status::internal(m),
        }
    }
}

pub struct CellService {
    executor: Arc<Executor>,
    vitals: Vitals,
}

impl CellService {
    pub fn new(executor: Arc<Executor>) -> Self {
        // The executor's work dir is in the depot: its file system is the
        // depot's ("ephemeral disk").
        let vitals = Vitals::new(executor.work_dir());
        Self { executor, vitals }
    }
}

/// Most recent lines a StreamLogs call can ask for.
const MAX_RECENT: u32 = 1000;

#[tonic::async_trait]
impl Cell for CellService {
    async fn state(&self, _: Request<pb::StateRequest>) -> Result<Response<pb::CellState>, Status> {
        let mut state = self.executor.state();
        // Vitals are the host's, for people; a /proc that cannot be read
        // leaves them out rather than failing the cell's state.
        state.vitals = match self.vitals.sample() {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(cell_id = %state.cell_id, error = %e, "cell vitals unavailable");
                None
            }
        };
        Ok(Response::new(state))
    }

    async fn perform(&self, req: Request<pb::Work>) -> Result<Response<pb::Work>, Status> {
        Ok(Response::new(self.executor.perform(req.into_inner())?))
    }

    async fn stop_lrp_instance(
        &self,
        req: Request<pb::StopLrpInstanceRequest>,
    ) -> Result<Response<pb::StopLrpInstanceResponse>, Status> {
        let r = req.into_inner();
        if r.instance_guid.is_empty() {
            return Err(Status::invalid_argument("instance_guid is required"));
        }
        self.executor.stop_lrp(&r.instance_guid, StopReason::Stop)?;
        Ok(Response::new(pb::StopLrpInstanceResponse {}))
    }

    async fn cancel_task(
        &self,
        req: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let r = req.into_inner();
        if r.task_guid.is_empty() {
            return Err(Status::invalid_argument("task_guid is required"));
        }
        self.executor.cancel_task(&r.task_guid)?;
        Ok(Response::new(pb::CancelTaskResponse {}))
    }

    type StreamLogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogEnvelope, Status>> + Send>>;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let r = req.into_inner();
        if r.log_guid.is_empty() {
            return Err(Status::invalid_argument("log_guid is required (the app's guid)"));
        }
        let recent = r.recent.min(MAX_RECENT) as usize;
        let (history, mut live) = self.executor.logs.subscribe(&r.log_guid, r.instance_index, recent);
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let instance = r.instance_index;
        let follow = r.follow;
        tokio::spawn(async move {
            for env in history {
                if tx.send(Ok(env)).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                match live.recv().await {
                    Ok(env) if crate::executor::logs::matches(&env, instance) => {
                        if tx.send(Ok(env)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // A slow reader loses lines; the apps never wait for it.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn container_metrics(
        &self,
        req: Request<pb::ContainerMetricsRequest>,
    ) -> Result<Response<pb::ContainerMetricsResponse>, Status> {
        let metrics = self.executor.metrics(&req.into_inner().log_guid).await;
        Ok(Response::new(pb::ContainerMetricsResponse { metrics }))
    }
}
