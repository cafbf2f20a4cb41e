//! The ActualLRP state machine applied to what cells report (claim, start,
//! crash, remove, evacuate), and the queries on actual LRPs. A report must
//! come from the instance the scheduler placed or recorded.

use super::cells::Effects;
use super::records::{Batch, Copies, event};
use super::{AuctionItem, PlacementKey, Scheduler, lock};
use crate::SchedulerError;
use crate::model::*;
use crate::store::ActualLrpFilter;
use celld_proto as pb;
use celld_proto::actual_lrp::{Presence, State};

fn lrp_name(pg: &str, index: i32) -> String {
    format!("actual LRP {pg}/{index}")
}

fn owner(lrp: &pb::ActualLrp) -> String {
    if lrp.instance_guid.is_empty() {
        format!("{} with no instance", state_name(lrp.state()))
    } else {
        format!("{} as instance {} on cell {}", state_name(lrp.state()), lrp.instance_guid, lrp.cell_id)
    }
}

/// Why there is no ORDINARY record for `key`: an index out of range is the
/// caller's mistake, anything else a record that is gone.
fn missing(instances: Option<i32>, key: &pb::ActualLrpKey) -> SchedulerError {
    match instances {
        Some(n) if key.index >= n => SchedulerError::InvalidArgument(format!(
            "index {} is out of range: {} has {} instances (indexes 0 to {})",
            key.index,
            key.process_guid,
            n,
            n - 1
        )),
        _ => SchedulerError::NotFound(format!("{} does not exist", lrp_name(&key.process_guid, key.index))),
    }
}

fn validate_key(key: Option<&pb::ActualLrpKey>) -> Result<pb::ActualLrpKey, SchedulerError> {
    let key = key.ok_or_else(|| SchedulerError::InvalidArgument("key (process_guid, index) is required".into()))?;
    validate_guid("process_guid", &key.process_guid)?;
    if key.index < 0 {
        return Err(SchedulerError::InvalidArgument(format!(
            "index {} of {} is negative: indexes start at 0",
            key.index, key.process_guid
        )));
    }
    Ok(key.clone())
}

fn validate_instance_key(k: Option<&pb::ActualLrpInstanceKey>) -> Result<pb::ActualLrpInstanceKey, SchedulerError> {
    let k =
        k.ok_or_else(|| SchedulerError::InvalidArgument("instance_key (instance_guid, cell_id) is required".into()))?;
    if k.instance_guid.is_empty() || k.cell_id.is_empty() {
        return Err(SchedulerError::InvalidArgument("instance_key needs both instance_guid and cell_id".into()));
    }
    Ok(k.clone())
}

impl Scheduler {
    pub async fn actual_lrps(&self, req: pb::ActualLrPsRequest) -> Result<Vec<pb::ActualLrp>, SchedulerError> {
        if let Some(i) = req.index {
            if i < 0 {
                return Err(SchedulerError::InvalidArgument(format!("index {i} is negative: indexes start at 0")));
            }
        }
        self.store
            .actual_lrps(ActualLrpFilter {
                process_guid: (!req.process_guid.is_empty()).then_some(req.process_guid),
                cell_id: (!req.cell_id.is_empty()).then_some(req.cell_id),
                index: req.index,
                domain: None,
                states: None,
            })
            .await
    }

    pub async fn actual_lrps_by_cell(&self, cell_id: &str) -> Result<Vec<pb::ActualLrp>, SchedulerError> {
        if cell_id.is_empty() {
            return Err(SchedulerError::InvalidArgument("cell_id is required".into()));
        }
        self.store.actual_lrps(ActualLrpFilter { cell_id: Some(cell_id.to_string()), ..Default::default() }).await
    }

    /// The copies of the instance a cell reports on, with its desired LRP's
    /// instance count (not the record: its action tree is kilobytes).
    async fn reported(&self, key: &pb::ActualLrpKey) -> Result<(Option<i32>, Copies), SchedulerError> {
        let desired = self.store.desired_instances(&key.process_guid).await?;
        let copies = self.copies(&key.process_guid, key.index).await?;
        if desired.is_none() && copies.ordinary.is_none() && copies.evacuating.is_none() && copies.suspect.is_none() {
            return Err(SchedulerError::NotFound(format!("no desired LRP with process guid {}", key.process_guid)));
        }
        Ok((desired, copies))
    }

    fn check_retiring(instances: Option<i32>, key: &pb::ActualLrpKey, to: State) -> Result<(), SchedulerError> {
        match instances {
            None => Err(SchedulerError::FailedPrecondition(format!(
                "cannot make {} {}: its LRP is no longer desired",
                lrp_name(&key.process_guid, key.index),
                state_name(to)
            ))),
            Some(n) if key.index >= n => Err(SchedulerError::FailedPrecondition(format!(
                "cannot make {} {}: index {} is being retired ({} has {} instances)",
                lrp_name(&key.process_guid, key.index),
                state_name(to),
                key.index,
                key.process_guid,
                n
            ))),
            Some(_) => Ok(()),
        }
    }

    /// A claim or start must come from where the scheduler placed the instance.
    fn check_placement(&self, key: &pb::ActualLrpKey, ik: &pb::ActualLrpInstanceKey) -> Result<(), SchedulerError> {
        let p = lock(&self.placements);
        if let Some(pl) = p.get(&PlacementKey::Lrp(key.process_guid.clone(), key.index)) {
            if pl.instance_guid != ik.instance_guid {
                return Err(SchedulerError::FailedPrecondition(format!(
                    "{} is placed as instance {} on cell {}, not {} on cell {}",
                    lrp_name(&key.process_guid, key.index),
                    pl.instance_guid,
                    pl.cell_id,
                    ik.instance_guid,
                    ik.cell_id
                )));
            }
        }
        Ok(())
    }

    fn illegal(
        key: &pb::ActualLrpKey,
        current: &pb::ActualLrp,
        to: State,
        ik: &pb::ActualLrpInstanceKey,
    ) -> SchedulerError {
        SchedulerError::FailedPrecondition(format!(
            "cannot transition {} from {} to {} for instance {} on cell {}",
            lrp_name(&key.process_guid, key.index),
            owner(current),
            state_name(to),
            ik.instance_guid,
            ik.cell_id
        ))
    }

    pub async fn claim_actual_lrp(&self, req: pb::ClaimActualLrpRequest) -> Result<pb::ActualLrp, SchedulerError> {
        let key = validate_key(req.key.as_ref())?;
        let ik = validate_instance_key(req.instance_key.as_ref())?;
        let now = self.now();
        let _w = self.write.lock().await;
        let (desired, copies) = self.reported(&key).await?;
        let ord = copies.ordinary.ok_or_else(|| missing(desired, &key))?;
        if ord.state() == State::Claimed && instance_key_of(&ord) == ik {
            // A retry: answered once the first claim is durable.
            let barrier = self.barrier();
            drop(_w);
            barrier.durable().await?;
            return Ok(ord);
        }
        Self::check_retiring(desired, &key, State::Claimed)?;
        if ord.state() == State::Unclaimed {
            self.check_placement(&key, &ik)?;
        }
        if !allows_transition_to(&ord, &ik, State::Claimed) {
            return Err(Self::illegal(&key, &ord, State::Claimed, &ik));
        }
        let mut after = ord.clone();
        clear_instance(&mut after);
        after.state = State::Claimed as i32;
        after.instance_guid = ik.instance_guid.clone();
        after.cell_id = ik.cell_id.clone();
        after.placement_error.clear();
        after.since = now;
        bump(&mut after.modification_tag);
        let mut batch = Batch::default();
        batch.put_actual(Some(&ord), after.clone())?;
        let staged = self.stage(batch);
        lock(&self.placements).remove(&PlacementKey::Lrp(key.process_guid.clone(), key.index));
        // Now, not `now`: the claim may have waited long for the lock.
        self.note_progress(&ik.cell_id, self.now());
        // Others decide on the claim from here; its answer waits until the
        // database has it (and so everything decided on it before).
        drop(_w);
        staged.durable().await?;
        tracing::debug!(process_guid = %key.process_guid, index = key.index, instance_guid = %ik.instance_guid, cell_id = %ik.cell_id, "claimed");
        Ok(after)
    }

    pub async fn start_actual_lrp(&self, req: pb::StartActualLrpRequest) -> Result<pb::ActualLrp, SchedulerError> {
        let key = validate_key(req.key.as_ref())?;
        let ik = validate_instance_key(req.instance_key.as_ref())?;
        let net = req.net_info.clone().unwrap_or_default();
        if net.address.is_empty() {
            return Err(SchedulerError::InvalidArgument(format!(
                "starting {} needs net_info with the host address",
                lrp_name(&key.process_guid, key.index)
            )));
        }
        let now = self.now();
        let _w = self.write.lock().await;
        let (desired, copies) = self.reported(&key).await?;
        let ord = copies.ordinary.ok_or_else(|| missing(desired, &key))?;
        let mine = instance_key_of(&ord) == ik;
        if ord.state() == State::Running
            && mine
            && ord.address == net.address
            && ord.instance_address == net.instance_address
            && ord.ports == net.ports
            && ord.routable == req.routable
        {
            let barrier = self.barrier();
            drop(_w);
            barrier.durable().await?;
            return Ok(ord);
        }
        Self::check_retiring(desired, &key, State::Running)?;
        match ord.state() {
            State::Unclaimed => self.check_placement(&key, &ik)?,
            // Stricter than Diego (which lets any instance start a CLAIMED
            // one): a late report from a replaced instance must not win.
            State::Claimed if !mine => return Err(Self::illegal(&key, &ord, State::Running, &ik)),
            _ => {}
        }
        if !allows_transition_to(&ord, &ik, State::Running) {
            return Err(Self::illegal(&key, &ord, State::Running, &ik));
        }
        let mut after = ord.clone();
        clear_instance(&mut after);
        after.instance_guid = ik.instance_guid.clone();
        after.cell_id = ik.cell_id.clone();
        set_net_info(&mut after, &net);
        after.routable = req.routable;
        after.placement_error.clear();
        if ord.state() != State::Running {
            after.since = now;
        }
        after.state = State::Running as i32;
        bump(&mut after.modification_tag);
        let mut batch = Batch::default();
        batch.put_actual(Some(&ord), after.clone())?;
        // The replacement of a suspect instance runs: the suspect goes.
        if let Some(s) = &copies.suspect {
            batch.delete_actual(s);
        }
        let staged = self.stage(batch);
        lock(&self.placements).remove(&PlacementKey::Lrp(key.process_guid.clone(), key.index));
        self.note_progress(&ik.cell_id, self.now());
        drop(_w);
        staged.durable().await?;
        // Debug, as the claim: at 250 000 instances an info line per start
        // cost ~4% of the scheduler's CPU; the event and metrics still say it.
        tracing::debug!(process_guid = %key.process_guid, index = key.index, instance_guid = %ik.instance_guid, cell_id = %ik.cell_id, routable = req.routable, "running");
        Ok(after)
    }

    pub async fn crash_actual_lrp(&self, req: pb::CrashActualLrpRequest) -> Result<pb::ActualLrp, SchedulerError> {
        let key = validate_key(req.key.as_ref())?;
        let ik = validate_instance_key(req.instance_key.as_ref())?;
        let now = self.now();
        let _w = self.write.lock().await;
        let (desired, copies) = self.reported(&key).await?;
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        // An evacuating or suspect copy crashing does not count: its
        // replacement is already on its way.
        for copy in [&copies.evacuating, &copies.suspect].into_iter().flatten() {
            if instance_key_of(copy) == ik {
                batch.delete_actual(copy);
                self.commit(batch).await?;
                return Ok(copy.clone());
            }
        }
        let ord = copies.ordinary.ok_or_else(|| missing(desired, &key))?;
        if !matches!(ord.state(), State::Claimed | State::Running) || !allows_transition_to(&ord, &ik, State::Crashed) {
            return Err(Self::illegal(&key, &ord, State::Crashed, &ik));
        }
        let mut after = ord.clone();
        after.crash_count = next_crash_count(&ord, now);
        clear_instance(&mut after);
        after.state = State::Crashed as i32;
        after.crash_reason = truncate_reason(&req.error_message);
        after.since = now;
        bump(&mut after.modification_tag);
        let mut crashed = event("actual_lrp_crashed");
        crashed.actual_lrp_before = Some(ord.clone());
        crashed.actual_lrp = Some(after.clone());
        let wanted = desired.is_some_and(|n| key.index < n);
        if !wanted {
            batch.delete_actual(&ord);
        } else {
            if restart_policy(after.crash_count) == Restart::Immediately {
                after.state = State::Unclaimed as i32;
                fx.auctions.push(AuctionItem::Lrp {
                    process_guid: key.process_guid.clone(),
                    index: key.index,
                    exclude: None,
                });
            }
            batch.put_actual(Some(&ord), after.clone())?;
        }
        batch.events.insert(0, crashed);
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(process_guid = %key.process_guid, index = key.index, instance_guid = %ik.instance_guid, cell_id = %ik.cell_id, crash_count = after.crash_count, state = state_name(after.state()), reason = %after.crash_reason, "crashed");
        self.dispatch(fx);
        Ok(after)
    }

    pub async fn remove_actual_lrp(&self, req: pb::RemoveActualLrpRequest) -> Result<(), SchedulerError> {
        let key = validate_key(req.key.as_ref())?;
        let ik = validate_instance_key(req.instance_key.as_ref())?;
        let now = self.now();
        let _w = self.write.lock().await;
        let desired = self.store.desired_lrp(&key.process_guid).await?;
        let copies = self.copies(&key.process_guid, key.index).await?;
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        let wanted = desired.as_ref().filter(|d| key.index < d.instances);
        if let Some(ord) = &copies.ordinary {
            let placed_here = ord.state() == State::Unclaimed && {
                let p = lock(&self.placements);
                p.get(&PlacementKey::Lrp(key.process_guid.clone(), key.index))
                    .is_some_and(|p| p.instance_guid == ik.instance_guid)
            };
            if instance_key_of(ord) == ik {
                batch.delete_actual(ord);
                // Stopped on purpose (e.g. `cf restart-app-instance`): a new
                // instance takes its place now.
                if let Some(d) = wanted {
                    batch.put_actual(None, new_unclaimed(d, key.index, now))?;
                    fx.auctions.push(AuctionItem::Lrp {
                        process_guid: key.process_guid.clone(),
                        index: key.index,
                        exclude: None,
                    });
                }
            } else if placed_here {
                // The cell took the work but could not run it: place it again.
                lock(&self.placements).remove(&PlacementKey::Lrp(key.process_guid.clone(), key.index));
                fx.auctions.push(AuctionItem::Lrp {
                    process_guid: key.process_guid.clone(),
                    index: key.index,
                    exclude: Some(ik.cell_id.clone()),
                });
            }
        }
        if batch.changes.is_empty() && fx.auctions.is_empty() {
            match [&copies.suspect, &copies.evacuating].into_iter().flatten().find(|c| instance_key_of(c) == ik) {
                Some(c) => batch.delete_actual(c),
                None if copies.ordinary.is_none() && copies.suspect.is_none() && copies.evacuating.is_none() => {
                    if desired.is_none() {
                        return Err(SchedulerError::NotFound(format!(
                            "no desired LRP with process guid {}",
                            key.process_guid
                        )));
                    }
                    // Already gone: a retried remove is fine.
                    return Ok(());
                }
                None => {
                    let ord = copies.ordinary.as_ref().or(copies.suspect.as_ref()).or(copies.evacuating.as_ref());
                    return Err(SchedulerError::FailedPrecondition(format!(
                        "cannot remove {}: it is {}, not instance {} on cell {}",
                        lrp_name(&key.process_guid, key.index),
                        ord.map(owner).unwrap_or_default(),
                        ik.instance_guid,
                        ik.cell_id
                    )));
                }
            }
        }
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(process_guid = %key.process_guid, index = key.index, instance_guid = %ik.instance_guid, cell_id = %ik.cell_id, "removed");
        self.dispatch(fx);
        Ok(())
    }

    pub async fn evacuate_running_actual_lrp(
        &self,
        req: pb::EvacuateRunningActualLrpRequest,
    ) -> Result<bool, SchedulerError> {
        let key = validate_key(req.key.as_ref())?;
        let ik = validate_instance_key(req.instance_key.as_ref())?;
        let net = req.net_info.clone().unwrap_or_default();
        let now = self.now();
        let _w = self.write.lock().await;
        let desired = self.store.desired_lrp(&key.process_guid).await?;
        let copies = self.copies(&key.process_guid, key.index).await?;
        let mut batch = Batch::default();
        let mut fx = Effects::default();
        let ord_mine = copies.ordinary.as_ref().filter(|o| instance_key_of(o) == ik);
        let evac_mine = copies.evacuating.as_ref().filter(|e| instance_key_of(e) == ik);
        let wanted = desired.as_ref().filter(|d| key.index < d.instances);
        let keep = match wanted {
            None => {
                for c in [ord_mine, evac_mine].into_iter().flatten() {
                    batch.delete_actual(c);
                }
                false
            }
            Some(d) => {
                if let Some(ord) = ord_mine {
                    let mut unclaimed = ord.clone();
                    clear_instance(&mut unclaimed);
                    unclaimed.state = State::Unclaimed as i32;
                    unclaimed.since = now;
                    bump(&mut unclaimed.modification_tag);
                    let running = ord.state() == State::Running;
                    if running {
                        let mut evac = ord.clone();
                        evac.presence = Presence::Evacuating as i32;
                        set_net_info(&mut evac, &net);
                        evac.since = now;
                        bump(&mut evac.modification_tag);
                        if let Some(old) = &copies.evacuating {
                            batch.delete_actual(old);
                        }
                        batch.put_actual(None, evac)?;
                    }
                    batch.put_actual(Some(ord), unclaimed)?;
                    fx.auctions.push(AuctionItem::Lrp {
                        process_guid: key.process_guid.clone(),
                        index: key.index,
                        exclude: Some(ik.cell_id.clone()),
                    });
                    // A CLAIMED instance has nothing to hand over (Diego's
                    // EvacuateClaimedActualLRP): the cell may drop it.
                    running
                } else if let Some(evac) = evac_mine {
                    match &copies.ordinary {
                        Some(o) if o.state() == State::Running => {
                            batch.delete_actual(evac);
                            false
                        }
                        Some(_) => true,
                        None => {
                            batch.put_actual(None, new_unclaimed(d, key.index, now))?;
                            fx.auctions.push(AuctionItem::Lrp {
                                process_guid: key.process_guid.clone(),
                                index: key.index,
                                exclude: Some(ik.cell_id.clone()),
                            });
                            true
                        }
                    }
                } else {
                    false
                }
            }
        };
        self.commit(batch).await?;
        drop(_w);
        tracing::info!(process_guid = %key.process_guid, index = key.index, instance_guid = %ik.instance_guid, cell_id = %ik.cell_id, keep_container = keep, "evacuating");
        self.dispatch(fx);
        Ok(keep)
    }

    pub async fn remove_evacuating_actual_lrp(
        &self,
        req: pb::RemoveEvacuatingActualLrpRequest,
    ) -> Result<(), SchedulerError> {
        let key = validate_key(req.key.as_ref())?;
        let ik = validate_instance_key(req.instance_key.as_ref())?;
        let _w = self.write.lock().await;
        let copies = self.copies(&key.process_guid, key.index).await?;
        match copies.evacuating {
            None => Ok(()),
            Some(e) if instance_key_of(&e) == ik => {
                let mut batch = Batch::default();
                batch.delete_actual(&e);
                self.commit(batch).await
            }
            Some(e) => Err(SchedulerError::FailedPrecondition(format!(
                "cannot remove evacuating {}: it is instance {} on cell {}, not {} on cell {}",
                lrp_name(&key.process_guid, key.index),
                e.instance_guid,
                e.cell_id,
                ik.instance_guid,
                ik.cell_id
            ))),
        }
    }
}
