//! The fake BBS's table and BBS's rules over it (bbs's `db/sqldb` and its
//! controllers at diego-release v2.73.0): ActualLRP transitions, the crash
//! restart rule, evacuation, the task state machine. Every refusal is the
//! `Error` BBS would put in its response.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use celld_proto::diego::bbs as pb;
use pb::error::Type as E;

pub const UNCLAIMED: &str = "UNCLAIMED";
pub const CLAIMED: &str = "CLAIMED";
pub const RUNNING: &str = "RUNNING";
pub const CRASHED: &str = "CRASHED";

/// BBS's immediate restarts: a crash with count < 3 goes back to UNCLAIMED.
const IMMEDIATE_RESTARTS: i32 = 3;
/// BBS resets the count of an instance that ran this long before crashing.
const CRASH_RESET_NANOS: i64 = 5 * 60 * 1_000_000_000;
/// tasks.max_retries: rejections before a task fails.
const MAX_TASK_RETRIES: i32 = 3;

pub fn err(kind: E, message: impl Into<String>) -> pb::Error {
    pb::Error { r#type: kind as i32, message: message.into() }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

type Key = (String, i32);

#[derive(Default)]
pub struct BbsState {
    pub desired: BTreeMap<String, pb::DesiredLrp>,
    /// Ordinary ActualLRPs by (process guid, index).
    pub actual: BTreeMap<Key, pb::ActualLrp>,
    /// Their EVACUATING copies.
    pub evacuating: BTreeMap<Key, pb::ActualLrp>,
    pub tasks: BTreeMap<String, pb::Task>,
    epochs: u64,
}

fn same_instance(lrp: &pb::ActualLrp, ik: &pb::ActualLrpInstanceKey) -> bool {
    lrp.actual_lrp_instance_key.as_ref().is_some_and(|k| k == ik)
}

fn instance_empty(ik: &pb::ActualLrpInstanceKey) -> bool {
    ik.instance_guid.is_empty() && ik.cell_id.is_empty()
}

fn bump(lrp: &mut pb::ActualLrp) {
    if let Some(t) = lrp.modification_tag.as_mut() {
        t.index += 1;
    }
    lrp.since = now();
}

/// bbs's `AllowsTransitionTo`: which state changes a caller holding `ik` may make.
pub fn allows_transition(before: &pb::ActualLrp, ik: &pb::ActualLrpInstanceKey, to: &str) -> bool {
    let same = same_instance(before, ik);
    match before.state.as_str() {
        UNCLAIMED => matches!(to, UNCLAIMED | CLAIMED | RUNNING),
        CLAIMED => {
            (to == UNCLAIMED && instance_empty(ik))
                || (to == CLAIMED && same)
                || to == RUNNING
                || (to == CRASHED && same)
        }
        RUNNING => (to == UNCLAIMED && instance_empty(ik)) || (matches!(to, CLAIMED | RUNNING | CRASHED) && same),
        CRASHED => (to == UNCLAIMED && instance_empty(ik)) || (matches!(to, CLAIMED | RUNNING) && same),
        _ => false,
    }
}

fn check_instance_key(ik: Option<&pb::ActualLrpInstanceKey>) -> Result<pb::ActualLrpInstanceKey, pb::Error> {
    match ik {
        Some(k) if !k.instance_guid.is_empty() && !k.cell_id.is_empty() => Ok(k.clone()),
        _ => Err(err(E::InvalidRequest, "Invalid field: actual_lrp_instance_key")),
    }
}

fn check_key(k: Option<&pb::ActualLrpKey>) -> Result<pb::ActualLrpKey, pb::Error> {
    match k {
        Some(k) if !k.process_guid.is_empty() && !k.domain.is_empty() && k.index >= 0 => Ok(k.clone()),
        _ => Err(err(E::InvalidRequest, "Invalid field: actual_lrp_key")),
    }
}

fn transition(from: pb::task::State, to: &str) -> pb::Error {
    err(E::InvalidStateTransition, format!("Cannot transition from {} to {to}", from.as_str_name()))
}

/// The checked keys of an evacuation call and the table key they address.
fn evacuation_keys(
    key: Option<&pb::ActualLrpKey>,
    ik: Option<&pb::ActualLrpInstanceKey>,
) -> Result<(pb::ActualLrpKey, pb::ActualLrpInstanceKey, Key), pb::Error> {
    let key = check_key(key)?;
    let ik = check_instance_key(ik)?;
    let k = (key.process_guid.clone(), key.index);
    Ok((key, ik, k))
}

impl BbsState {
    /// Removes the EVACUATING copy if `ik` holds it; says whether it did.
    fn drop_evacuating(&mut self, k: &Key, ik: &pb::ActualLrpInstanceKey) -> bool {
        let held = self.evacuating.get(k).is_some_and(|e| same_instance(e, ik));
        if held {
            self.evacuating.remove(k);
        }
        held
    }

    fn epoch(&mut self) -> String {
        self.epochs += 1;
        format!("epoch-{}", self.epochs)
    }

    fn unclaimed(&mut self, key: pb::ActualLrpKey) -> pb::ActualLrp {
        pb::ActualLrp {
            actual_lrp_key: Some(key),
            actual_lrp_instance_key: Some(Default::default()),
            actual_lrp_net_info: Some(Default::default()),
            state: UNCLAIMED.into(),
            since: now(),
            modification_tag: Some(pb::ModificationTag { epoch: self.epoch(), index: 0 }),
            ..Default::default()
        }
    }

    fn ordinary(&mut self, pg: &str, index: i32) -> Result<&mut pb::ActualLrp, pb::Error> {
        self.actual
            .get_mut(&(pg.to_string(), index))
            .ok_or_else(|| err(E::ResourceNotFound, "the requested resource could not be found"))
    }

    /// Cloud Controller's desire: the definition and its UNCLAIMED instances.
    pub fn desire_lrp(&mut self, d: Option<&pb::DesiredLrp>) -> Result<(), pb::Error> {
        let d = d.ok_or_else(|| err(E::InvalidRequest, "Invalid field: desired_lrp"))?;
        let mut invalid = Vec::new();
        if d.process_guid.is_empty() {
            invalid.push("process_guid");
        }
        if d.domain.is_empty() {
            invalid.push("domain");
        }
        if d.root_fs.is_empty() {
            invalid.push("rootfs");
        }
        if d.instances < 0 {
            invalid.push("instances");
        }
        if d.action.is_none() {
            invalid.push("action");
        }
        if !invalid.is_empty() {
            return Err(err(E::InvalidRequest, format!("Invalid field: {}", invalid.join(", "))));
        }
        if self.desired.contains_key(&d.process_guid) {
            return Err(err(E::ResourceExists, "the requested resource already exists"));
        }
        let mut d = d.clone();
        d.modification_tag = Some(pb::ModificationTag { epoch: self.epoch(), index: 0 });
        for index in 0..d.instances {
            let key = pb::ActualLrpKey { process_guid: d.process_guid.clone(), index, domain: d.domain.clone() };
            let lrp = self.unclaimed(key);
            self.actual.insert((d.process_guid.clone(), index), lrp);
        }
        self.desired.insert(d.process_guid.clone(), d);
        Ok(())
    }

    /// Both presences, filtered as `/v1/actual_lrps/list` filters.
    pub fn list(&self, f: &pb::ActualLrPsRequest) -> Vec<pb::ActualLrp> {
        self.actual
            .values()
            .chain(self.evacuating.values())
            .filter(|l| {
                let k = l.actual_lrp_key.clone().unwrap_or_default();
                let ik = l.actual_lrp_instance_key.clone().unwrap_or_default();
                (f.domain.is_empty() || k.domain == f.domain)
                    && (f.cell_id.is_empty() || ik.cell_id == f.cell_id)
                    && (f.process_guid.is_empty() || k.process_guid == f.process_guid)
                    && f.optional_index
                        .as_ref()
                        .is_none_or(|pb::actual_lr_ps_request::OptionalIndex::Index(i)| k.index == *i)
            })
            .cloned()
            .collect()
    }

    pub fn claim(&mut self, r: &pb::ClaimActualLrpRequest) -> Result<(), pb::Error> {
        let ik = check_instance_key(r.actual_lrp_instance_key.as_ref())?;
        let lrp = self.ordinary(&r.process_guid, r.index)?;
        if !allows_transition(lrp, &ik, CLAIMED) {
            return Err(err(E::ActualLrpCannotBeClaimed, "cannot claim actual LRP"));
        }
        if lrp.state == CLAIMED && same_instance(lrp, &ik) {
            return Ok(());
        }
        lrp.state = CLAIMED.into();
        lrp.actual_lrp_instance_key = Some(ik);
        lrp.actual_lrp_net_info = Some(Default::default());
        lrp.placement_error.clear();
        bump(lrp);
        Ok(())
    }

    pub fn start(&mut self, r: &pb::StartActualLrpRequest) -> Result<(), pb::Error> {
        let key = check_key(r.actual_lrp_key.as_ref())?;
        let ik = check_instance_key(r.actual_lrp_instance_key.as_ref())?;
        let net = r
            .actual_lrp_net_info
            .clone()
            .ok_or_else(|| err(E::InvalidRequest, "Invalid field: actual_lrp_net_info"))?;
        let k = (key.process_guid.clone(), key.index);
        if !self.actual.contains_key(&k) {
            // BBS creates a RUNNING record for an instance it does not know.
            let mut lrp = self.unclaimed(key);
            lrp.state = RUNNING.into();
            lrp.actual_lrp_instance_key = Some(ik);
            lrp.actual_lrp_net_info = Some(net);
            self.actual.insert(k, lrp);
            return Ok(());
        }
        let lrp = self.ordinary(&k.0, k.1)?;
        if lrp.actual_lrp_key.as_ref() != Some(&key) || !allows_transition(lrp, &ik, RUNNING) {
            return Err(err(E::ActualLrpCannotBeStarted, "cannot start actual LRP"));
        }
        lrp.state = RUNNING.into();
        lrp.actual_lrp_instance_key = Some(ik);
        lrp.actual_lrp_net_info = Some(net);
        lrp.actual_lrp_internal_routes = r.actual_lrp_internal_routes.clone();
        lrp.metric_tags = r.metric_tags.clone();
        lrp.optional_routable =
            r.optional_routable.map(|pb::start_actual_lrp_request::OptionalRoutable::Routable(b)| {
                pb::actual_lrp::OptionalRoutable::Routable(b)
            });
        lrp.placement_error.clear();
        bump(lrp);
        Ok(())
    }

    /// BBS's crash: count + 1 (reset to 1 after 5 min RUNNING), instance key
    /// and net info cleared; count < 3 restarts at once (UNCLAIMED), else
    /// CRASHED until convergence.
    pub fn crash(
        &mut self,
        key: Option<&pb::ActualLrpKey>,
        ik: Option<&pb::ActualLrpInstanceKey>,
        reason: &str,
    ) -> Result<(), pb::Error> {
        let key = check_key(key)?;
        let ik = check_instance_key(ik)?;
        let lrp = self.ordinary(&key.process_guid, key.index)?;
        if !allows_transition(lrp, &ik, CRASHED) {
            return Err(err(E::ActualLrpCannotBeCrashed, "cannot crash actual LRP"));
        }
        let ran_long = lrp.state == RUNNING && now() - lrp.since > CRASH_RESET_NANOS;
        lrp.crash_count = if ran_long { 1 } else { lrp.crash_count + 1 };
        lrp.crash_reason = reason.chars().take(1024).collect();
        lrp.actual_lrp_instance_key = Some(Default::default());
        lrp.actual_lrp_net_info = Some(Default::default());
        lrp.state = if lrp.crash_count < IMMEDIATE_RESTARTS { UNCLAIMED } else { CRASHED }.into();
        bump(lrp);
        Ok(())
    }

    pub fn fail(&mut self, r: &pb::FailActualLrpRequest) -> Result<(), pb::Error> {
        let key = check_key(r.actual_lrp_key.as_ref())?;
        let lrp = self.ordinary(&key.process_guid, key.index)?;
        if lrp.state != UNCLAIMED {
            return Err(err(E::ActualLrpCannotBeFailed, "cannot fail actual LRP"));
        }
        lrp.placement_error = r.error_message.clone();
        bump(lrp);
        Ok(())
    }

    /// Deletes the ordinary instance; with an instance key only if it matches.
    pub fn remove(&mut self, r: &pb::RemoveActualLrpRequest) -> Result<(), pb::Error> {
        let k = (r.process_guid.clone(), r.index);
        let matches = self
            .actual
            .get(&k)
            .is_some_and(|l| r.actual_lrp_instance_key.as_ref().is_none_or(|ik| same_instance(l, ik)));
        if !matches {
            return Err(err(E::ResourceNotFound, "the requested resource could not be found"));
        }
        self.actual.remove(&k);
        Ok(())
    }

    /// Evacuating a RUNNING (or CLAIMED) instance: its copy becomes
    /// EVACUATING and the ordinary one is unclaimed for a replacement; once
    /// the replacement runs, the copy goes and the cell may drop the container.
    pub fn evacuate_running(&mut self, r: &pb::EvacuateRunningActualLrpRequest) -> Result<bool, pb::Error> {
        let (key, ik, k) = evacuation_keys(r.actual_lrp_key.as_ref(), r.actual_lrp_instance_key.as_ref())?;
        let ordinary = self.actual.get(&k).cloned();
        match ordinary {
            Some(o) if same_instance(&o, &ik) && matches!(o.state.as_str(), RUNNING | CLAIMED) => {
                let mut evac = o.clone();
                evac.state = RUNNING.into();
                evac.presence = pb::actual_lrp::Presence::Evacuating as i32;
                evac.actual_lrp_net_info = r.actual_lrp_net_info.clone();
                bump(&mut evac);
                self.evacuating.insert(k.clone(), evac);
                let mut fresh = self.unclaimed(key);
                fresh.crash_count = o.crash_count;
                self.actual.insert(k, fresh);
                Ok(true)
            }
            Some(o) if o.state == RUNNING && !same_instance(&o, &ik) => {
                // The replacement runs: the evacuating copy is done.
                self.evacuating.remove(&k);
                Ok(false)
            }
            Some(_) if self.evacuating.get(&k).is_some_and(|e| same_instance(e, &ik)) => Ok(true),
            Some(_) => Ok(false),
            None => {
                self.evacuating.remove(&k);
                Ok(false)
            }
        }
    }

    pub fn evacuate_claimed(
        &mut self,
        key: Option<&pb::ActualLrpKey>,
        ik: Option<&pb::ActualLrpInstanceKey>,
    ) -> Result<bool, pb::Error> {
        let (key, ik, k) = evacuation_keys(key, ik)?;
        self.drop_evacuating(&k, &ik);
        if self.actual.get(&k).is_some_and(|o| o.state == CLAIMED && same_instance(o, &ik)) {
            let fresh = self.unclaimed(key);
            self.actual.insert(k, fresh);
        }
        Ok(false)
    }

    pub fn evacuate_stopped(
        &mut self,
        key: Option<&pb::ActualLrpKey>,
        ik: Option<&pb::ActualLrpInstanceKey>,
    ) -> Result<bool, pb::Error> {
        let (_, ik, k) = evacuation_keys(key, ik)?;
        let evac = self.drop_evacuating(&k, &ik);
        let ord = self.actual.get(&k).is_some_and(|o| same_instance(o, &ik));
        if ord {
            self.actual.remove(&k);
        }
        if !evac && !ord {
            return Err(err(E::ResourceNotFound, "the requested resource could not be found"));
        }
        Ok(false)
    }

    pub fn evacuate_crashed(&mut self, r: &pb::EvacuateCrashedActualLrpRequest) -> Result<bool, pb::Error> {
        let (key, ik, k) = evacuation_keys(r.actual_lrp_key.as_ref(), r.actual_lrp_instance_key.as_ref())?;
        self.drop_evacuating(&k, &ik);
        if self.actual.get(&k).is_some_and(|o| same_instance(o, &ik)) {
            self.crash(Some(&key), Some(&ik), &r.error_message)?;
        }
        Ok(false)
    }

    pub fn remove_evacuating(
        &mut self,
        key: Option<&pb::ActualLrpKey>,
        ik: Option<&pb::ActualLrpInstanceKey>,
    ) -> Result<(), pb::Error> {
        let (_, ik, k) = evacuation_keys(key, ik)?;
        if !self.drop_evacuating(&k, &ik) {
            return Err(err(E::ResourceNotFound, "the requested resource could not be found"));
        }
        Ok(())
    }

    pub fn desire_task(&mut self, r: &pb::DesireTaskRequest) -> Result<(), pb::Error> {
        let def = r.task_definition.as_ref();
        let mut invalid = Vec::new();
        if r.task_guid.is_empty() {
            invalid.push("task_guid");
        }
        if r.domain.is_empty() {
            invalid.push("domain");
        }
        if def.is_none_or(|d| d.root_fs.is_empty()) {
            invalid.push("rootfs");
        }
        if def.is_none_or(|d| d.action.is_none()) {
            invalid.push("action");
        }
        if !invalid.is_empty() {
            return Err(err(E::InvalidRequest, format!("Invalid field: {}", invalid.join(", "))));
        }
        if self.tasks.contains_key(&r.task_guid) {
            return Err(err(E::ResourceExists, "the requested resource already exists"));
        }
        let t = now();
        self.tasks.insert(
            r.task_guid.clone(),
            pb::Task {
                task_definition: def.cloned(),
                task_guid: r.task_guid.clone(),
                domain: r.domain.clone(),
                created_at: t,
                updated_at: t,
                state: pb::task::State::Pending as i32,
                ..Default::default()
            },
        );
        Ok(())
    }

    /// The task and its state, or BBS's not-found.
    fn task(&mut self, guid: &str) -> Result<(&mut pb::Task, pb::task::State), pb::Error> {
        let task = self
            .tasks
            .get_mut(guid)
            .ok_or_else(|| err(E::ResourceNotFound, "the requested resource could not be found"))?;
        let state = pb::task::State::try_from(task.state).unwrap_or(pb::task::State::Invalid);
        Ok((task, state))
    }

    /// PENDING → RUNNING on the cell; already RUNNING there → don't start again.
    pub fn start_task(&mut self, r: &pb::StartTaskRequest) -> Result<bool, pb::Error> {
        let (task, state) = self.task(&r.task_guid)?;
        if state == pb::task::State::Running && task.cell_id == r.cell_id {
            return Ok(false);
        }
        if state != pb::task::State::Pending {
            return Err(transition(state, "RUNNING"));
        }
        task.state = pb::task::State::Running as i32;
        task.cell_id = r.cell_id.clone();
        task.updated_at = now();
        Ok(true)
    }

    pub fn complete_task(&mut self, r: &pb::CompleteTaskRequest) -> Result<(), pb::Error> {
        let (task, state) = self.task(&r.task_guid)?;
        if state == pb::task::State::Running && task.cell_id != r.cell_id {
            return Err(err(E::RunningOnDifferentCell, "Running on cell different from the one requesting completion"));
        }
        if !matches!(state, pb::task::State::Running | pb::task::State::Pending) {
            return Err(transition(state, "COMPLETED"));
        }
        task.state = pb::task::State::Completed as i32;
        task.cell_id.clear();
        task.failed = r.failed;
        task.failure_reason = r.failure_reason.clone();
        task.result = r.result.clone();
        task.first_completed_at = now();
        task.updated_at = task.first_completed_at;
        Ok(())
    }

    /// Back to PENDING for another cell, or failed after MAX_TASK_RETRIES.
    pub fn reject_task(&mut self, r: &pb::RejectTaskRequest) -> Result<(), pb::Error> {
        let (task, state) = self.task(&r.task_guid)?;
        if !matches!(state, pb::task::State::Running | pb::task::State::Pending) {
            return Err(transition(state, "PENDING"));
        }
        task.rejection_count += 1;
        task.rejection_reason = r.rejection_reason.clone();
        task.cell_id.clear();
        task.updated_at = now();
        if task.rejection_count >= MAX_TASK_RETRIES {
            task.state = pb::task::State::Completed as i32;
            task.failed = true;
            task.failure_reason = r.rejection_reason.clone();
        } else {
            task.state = pb::task::State::Pending as i32;
        }
        Ok(())
    }

    pub fn fail_task(&mut self, r: &pb::FailTaskRequest) -> Result<(), pb::Error> {
        let (task, state) = self.task(&r.task_guid)?;
        if !matches!(state, pb::task::State::Running | pb::task::State::Pending) {
            return Err(transition(state, "COMPLETED"));
        }
        task.state = pb::task::State::Completed as i32;
        task.cell_id.clear();
        task.failed = true;
        task.failure_reason = r.failure_reason.clone();
        task.first_completed_at = now();
        Ok(())
    }
}
