//! What presence changes set off: a cell heartbeating again gets its SUSPECT
//! instances back and pending work a new chance; a cell going quiet triggers
//! a convergence pass.

use std::time::Instant;

use super::Scheduler;
use super::cells::{Effects, StopRequest};
use super::records::Batch;
use super::{PresenceEntry, lock};
use crate::SchedulerError;
use crate::model::bump;
use crate::store::ActualLrpFilter;
use celld_proto as pb;
use celld_proto::actual_lrp::{Presence, State};

impl Scheduler {
    pub async fn heartbeat(&self, presence: pb::CellPresence) -> Result<u32, SchedulerError> {
        if presence.cell_id.is_empty() || presence.grpc_address.is_empty() {
            return Err(SchedulerError::InvalidArgument("a presence needs cell_id and grpc_address".into()));
        }
        let cell_id = presence.cell_id.clone();
        let returning = {
            let mut p = lock(&self.presences);
            let returning = p.get(&cell_id).is_none_or(|e| !self.alive(e));
            p.insert(cell_id.clone(), PresenceEntry { presence, seen: Instant::now(), expiry_handled: false });
            returning
        };
        if returning {
            tracing::info!(cell_id = %cell_id, "cell present");
            self.cell_returned(&cell_id).await?;
            // Work that found no cell may fit this one: try now, not at the next pass.
            self.kick_pending().await?;
        }
        Ok(u32::try_from(self.presence_ttl.as_secs()).unwrap_or(u32::MAX))
    }

    /// A cell heard from again: its SUSPECT instances are promoted back unless
    /// their replacement already runs.
    async fn cell_returned(&self, cell_id: &str) -> Result<(), SchedulerError> {
        let _w = self.write.lock().await;
        let lrps = self
            .store
            .actual_lrps(ActualLrpFilter { cell_id: Some(cell_id.to_string()), ..Default::default() })
            .await?;
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        for suspect in lrps.into_iter().filter(|l| l.presence() == Presence::Suspect) {
            let copies = self.copies(&suspect.process_guid, suspect.index).await?;
            batch.delete_actual(&suspect);
            match copies.ordinary {
                Some(ord) if ord.state() == State::Running => {
                    tracing::info!(process_guid = %suspect.process_guid, index = suspect.index, instance_guid = %suspect.instance_guid, "replacement runs; retiring the suspect instance");
                    fx.stops.push(StopRequest {
                        cell_id: suspect.cell_id.clone(),
                        process_guid: suspect.process_guid.clone(),
                        index: suspect.index,
                        presence: Presence::Suspect as i32,
                        instance_guid: suspect.instance_guid.clone(),
                        remove_if_unreachable: false,
                    });
                }
                ord => {
                    tracing::info!(process_guid = %suspect.process_guid, index = suspect.index, instance_guid = %suspect.instance_guid, "cell returned; promoting the suspect instance");
                    if let Some(ord) = &ord {
                        self.retire_replacement(ord, &mut fx);
                    }
                    let mut promoted = suspect.clone();
                    promoted.presence = Presence::Ordinary as i32;
                    bump(&mut promoted.modification_tag);
                    batch.put_actual(ord.as_ref(), promoted)?;
                }
            }
        }
        self.commit(batch).await?;
        drop(_w);
        self.dispatch(fx);
        Ok(())
    }

    /// Newly expired cells (and the end of the start-up grace) trigger a pass.
    pub async fn check_presences(&self) -> Result<(), SchedulerError> {
        let expired: Vec<String> = {
            let mut p = lock(&self.presences);
            let ttl = self.presence_ttl;
            p.iter_mut()
                .filter(|(_, e)| e.seen.elapsed() >= ttl && !e.expiry_handled)
                .map(|(id, e)| {
                    e.expiry_handled = true;
                    id.clone()
                })
                .collect()
        };
        if !expired.is_empty() {
            for c in &expired {
                tracing::warn!(cell_id = %c, "cell presence expired");
            }
            self.converge().await?;
        }
        Ok(())
    }
}
