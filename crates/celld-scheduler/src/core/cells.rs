//! Calls to cells: what a record change asks of cells once the write lock is
//! released (auctions, stops, cancels), and the gRPC clients that dial each
//! cell's rep, one lazily connected channel per address.

use std::time::Duration;

use tonic::transport::Channel;

use super::records::Batch;
use super::{AuctionItem, Scheduler, lock};
use crate::SchedulerError;
use celld_proto as pb;
use celld_proto::actual_lrp::Presence;

const CELL_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CELL_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Perform batches carry whole DesiredLRPs: allow more than tonic's 4 MB.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

pub(super) struct StopRequest {
    pub(super) cell_id: String,
    pub(super) process_guid: String,
    pub(super) index: i32,
    pub(super) presence: i32,
    pub(super) instance_guid: String,
    /// Remove the record when the cell cannot be asked (its reconcile
    /// destroys the container later).
    pub(super) remove_if_unreachable: bool,
}

/// What a change asks for once the lock is released.
#[derive(Default)]
pub(super) struct Effects {
    pub(super) auctions: Vec<AuctionItem>,
    pub(super) stops: Vec<StopRequest>,
    pub(super) cancels: Vec<(String, String)>,
}

impl Scheduler {
    pub(super) fn dispatch(&self, fx: Effects) {
        if !fx.auctions.is_empty() {
            let _ = self.auctions.send(fx.auctions);
        }
        for stop in fx.stops {
            let addr = self.cell_address(&stop.cell_id);
            let client = addr.as_deref().map(|a| self.cell_client(a));
            let me = self.me.clone();
            tokio::spawn(async move {
                let res = match client {
                    Some(Ok(mut c)) => c
                        .stop_lrp_instance(pb::StopLrpInstanceRequest {
                            process_guid: stop.process_guid.clone(),
                            instance_guid: stop.instance_guid.clone(),
                        })
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("cell is not present".to_string()),
                };
                match res {
                    Ok(()) => {
                        tracing::info!(process_guid = %stop.process_guid, index = stop.index, instance_guid = %stop.instance_guid, cell_id = %stop.cell_id, "asked the cell to stop the instance")
                    }
                    Err(e) => {
                        tracing::warn!(process_guid = %stop.process_guid, index = stop.index, instance_guid = %stop.instance_guid, cell_id = %stop.cell_id, error = %e, "could not ask the cell to stop the instance");
                        if let (true, Some(me)) = (stop.remove_if_unreachable, me.upgrade()) {
                            me.remove_unreachable(stop).await;
                        }
                    }
                }
            });
        }
        for (cell_id, task_guid) in fx.cancels {
            let client = self.cell_address(&cell_id).map(|a| self.cell_client(&a));
            tokio::spawn(async move {
                if let Some(Ok(mut c)) = client {
                    if let Err(e) = c.cancel_task(pb::CancelTaskRequest { task_guid: task_guid.clone() }).await {
                        tracing::warn!(task_guid = %task_guid, cell_id = %cell_id, error = %e, "could not ask the cell to cancel the task");
                    }
                }
            });
        }
    }

    /// The cell of a retired instance cannot be asked to stop it: drop the
    /// record (the cell's bulk reconcile destroys unwanted containers).
    async fn remove_unreachable(&self, stop: StopRequest) {
        let res = async {
            let _w = self.write.lock().await;
            let copies = self.copies(&stop.process_guid, stop.index).await?;
            let copy = match Presence::try_from(stop.presence) {
                Ok(Presence::Ordinary) => copies.ordinary,
                Ok(Presence::Evacuating) => copies.evacuating,
                Ok(Presence::Suspect) | Err(_) => copies.suspect,
            };
            if let Some(l) = copy.filter(|l| l.instance_guid == stop.instance_guid) {
                let mut batch = Batch::default();
                batch.delete_actual(&l);
                self.commit(batch).await?;
            }
            Ok::<(), SchedulerError>(())
        }
        .await;
        if let Err(e) = res {
            tracing::warn!(process_guid = %stop.process_guid, index = stop.index, error = %e, "removing an unreachable instance");
        }
    }

    pub(super) fn cell_client(&self, addr: &str) -> Result<pb::cell_client::CellClient<Channel>, SchedulerError> {
        let mut ch = lock(&self.channels);
        let channel = match ch.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = celld_transport::grpc::endpoint(addr)
                    .map_err(|e| SchedulerError::InvalidArgument(format!("cell address {addr}: {e}")))?
                    .connect_timeout(CELL_CONNECT_TIMEOUT)
                    .timeout(CELL_REQUEST_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                ch.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(pb::cell_client::CellClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}
