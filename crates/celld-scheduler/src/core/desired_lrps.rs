//! Desired LRPs: desiring, scaling and removing them creates the UNCLAIMED
//! instances to place and retires the ones nobody wants any more.

use super::cells::{Effects, StopRequest};
use super::records::{Batch, event};
use super::{AuctionItem, PlacementKey, Scheduler, lock};
use crate::SchedulerError;
use crate::model::{bump, new_tag, new_unclaimed, validate_guid};
use crate::store::{ActualLrpFilter, Change};
use celld_proto as pb;
use celld_proto::actual_lrp::{Presence, State};

impl Scheduler {
    pub async fn desire_lrp(&self, mut d: pb::DesiredLrp) -> Result<pb::DesiredLrp, SchedulerError> {
        validate_guid("process_guid", &d.process_guid)?;
        if d.domain.is_empty() {
            return Err(SchedulerError::InvalidArgument(format!(
                "desired LRP {} needs a domain (\"cf-apps\" for apps)",
                d.process_guid
            )));
        }
        if d.instances < 0 {
            return Err(SchedulerError::InvalidArgument(format!(
                "desired LRP {}: instances {} is negative",
                d.process_guid, d.instances
            )));
        }
        let now = self.now();
        let _w = self.write.lock().await;
        if self.store.desired_lrp(&d.process_guid).await?.is_some() {
            return Err(SchedulerError::AlreadyExists(format!(
                "desired LRP {} already exists: update or remove it",
                d.process_guid
            )));
        }
        d.created_at = now;
        d.modification_tag = Some(new_tag());
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        batch.put_desired(true, d.clone());
        // Leftovers of an earlier desire of the same guid stay until their
        // cells remove them; only missing indexes are created.
        for index in 0..d.instances {
            let copies = self.copies(&d.process_guid, index).await?;
            if copies.ordinary.is_none() {
                batch.put_actual(None, new_unclaimed(&d, index, now))?;
                fx.auctions.push(AuctionItem::Lrp { process_guid: d.process_guid.clone(), index, exclude: None });
            }
        }
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(process_guid = %d.process_guid, instances = d.instances, "desired LRP created");
        self.dispatch(fx);
        Ok(d)
    }

    pub async fn update_desired_lrp(&self, req: pb::UpdateDesiredLrpRequest) -> Result<pb::DesiredLrp, SchedulerError> {
        validate_guid("process_guid", &req.process_guid)?;
        if let Some(n) = req.instances {
            if n < 0 {
                return Err(SchedulerError::InvalidArgument(format!(
                    "desired LRP {}: instances {n} is negative",
                    req.process_guid
                )));
            }
        }
        let now = self.now();
        let _w = self.write.lock().await;
        let mut d = self.desired(&req.process_guid).await?;
        let old = d.instances;
        if let Some(n) = req.instances {
            d.instances = n;
        }
        if req.update_routes {
            d.routes = req.routes.clone();
        }
        if let Some(a) = &req.annotation {
            d.annotation = a.clone();
        }
        bump(&mut d.modification_tag);
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        batch.put_desired(false, d.clone());
        if d.instances > old {
            for index in old..d.instances {
                if self.copies(&d.process_guid, index).await?.ordinary.is_none() {
                    batch.put_actual(None, new_unclaimed(&d, index, now))?;
                    fx.auctions.push(AuctionItem::Lrp { process_guid: d.process_guid.clone(), index, exclude: None });
                }
            }
        } else if d.instances < old {
            let lrps = self
                .store
                .actual_lrps(ActualLrpFilter { process_guid: Some(d.process_guid.clone()), ..Default::default() })
                .await?;
            for l in lrps.iter().filter(|l| l.index >= d.instances) {
                self.retire(l, &mut batch, &mut fx);
            }
        }
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(process_guid = %d.process_guid, instances = d.instances, "desired LRP updated");
        self.dispatch(fx);
        Ok(d)
    }

    pub async fn remove_desired_lrp(&self, pg: &str) -> Result<(), SchedulerError> {
        validate_guid("process_guid", pg)?;
        let _w = self.write.lock().await;
        let d = self.desired(pg).await?;
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        batch.changes.push(Change::DeleteDesired(pg.to_string()));
        let mut e = event("desired_lrp_removed");
        e.desired_lrp = Some(d);
        batch.events.push(e);
        let lrps = self
            .store
            .actual_lrps(ActualLrpFilter { process_guid: Some(pg.to_string()), ..Default::default() })
            .await?;
        for l in &lrps {
            self.retire(l, &mut batch, &mut fx);
        }
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(process_guid = %pg, "desired LRP removed");
        self.dispatch(fx);
        Ok(())
    }

    /// Stops whatever a replacement got as far as (placed or claimed).
    pub(super) fn retire_replacement(&self, ord: &pb::ActualLrp, fx: &mut Effects) {
        let placed = lock(&self.placements).remove(&PlacementKey::Lrp(ord.process_guid.clone(), ord.index));
        let (cell_id, instance_guid) = match (ord.state(), placed) {
            (State::Claimed, _) => (ord.cell_id.clone(), ord.instance_guid.clone()),
            (State::Unclaimed, Some(p)) => (p.cell_id, p.instance_guid),
            _ => return,
        };
        fx.stops.push(StopRequest {
            cell_id,
            process_guid: ord.process_guid.clone(),
            index: ord.index,
            presence: Presence::Ordinary as i32,
            instance_guid,
            remove_if_unreachable: false,
        });
    }

    /// Retires one copy of an instance nobody wants any more: records without
    /// a container go now; a container is stopped by its cell, which then
    /// removes the record.
    pub(super) fn retire(&self, l: &pb::ActualLrp, batch: &mut Batch, fx: &mut Effects) {
        match (l.presence(), l.state()) {
            // The evacuating cell asks again and hears keep_container=false.
            (Presence::Evacuating, _) => {}
            (Presence::Suspect, _) | (_, State::Unclaimed | State::Crashed) => {
                batch.delete_actual(l);
                if l.presence() == Presence::Ordinary {
                    self.retire_replacement(l, fx);
                }
            }
            (_, State::Claimed | State::Running) => {
                if self.cell_missing(&l.cell_id) {
                    batch.delete_actual(l);
                } else {
                    fx.stops.push(StopRequest {
                        cell_id: l.cell_id.clone(),
                        process_guid: l.process_guid.clone(),
                        index: l.index,
                        presence: l.presence,
                        instance_guid: l.instance_guid.clone(),
                        remove_if_unreachable: true,
                    });
                }
            }
        }
    }

    pub async fn get_desired_lrp(&self, pg: &str) -> Result<pb::DesiredLrp, SchedulerError> {
        validate_guid("process_guid", pg)?;
        self.desired(pg).await
    }

    pub async fn desired_lrps(&self, domain: &str) -> Result<Vec<pb::DesiredLrp>, SchedulerError> {
        self.store.desired_lrps((!domain.is_empty()).then(|| domain.to_string())).await
    }
}
