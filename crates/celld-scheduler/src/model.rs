//! Diego's ActualLRP rules (bbs `models/actual_lrp.go`, `restart_calculator.go`):
//! the state machine, per-state validation and the crash-restart policy.

use celld_proto as pb;
use celld_proto::actual_lrp::{Presence, State};

use super::SchedulerError;

pub const IMMEDIATE_RESTARTS: i32 = 3;
pub const CRASH_BACKOFF_MIN_NS: i64 = 30 * NS_PER_SEC;
pub const MAX_BACKOFF_NS: i64 = 16 * 60 * NS_PER_SEC;
pub const MAX_RESTARTS: i32 = 200;
/// A crash after running this long starts counting again from 1.
pub const CRASH_RESET_TIMEOUT_NS: i64 = 5 * 60 * NS_PER_SEC;
pub const MAX_CRASH_REASON: usize = 1024;
/// An UNCLAIMED instance (or PENDING task) placed this long ago and still not
/// claimed (started) is auctioned again.
pub const STALE_UNCLAIMED_NS: i64 = 30 * NS_PER_SEC;
pub const PENDING_TASK_EXPIRY_NS: i64 = 30 * 60 * NS_PER_SEC;
pub const COMPLETED_TASK_EXPIRY_NS: i64 = 120 * NS_PER_SEC;
pub const MAX_TASK_PLACEMENTS: i32 = 3;
pub const NS_PER_SEC: i64 = 1_000_000_000;

pub const TASK_EXPIRED: &str = "not started within time limit";
pub const TASK_CELL_DISAPPEARED: &str = "cell disappeared before completion";
pub const TASK_CANCELLED: &str = "task was cancelled";
pub const NO_COMPATIBLE_CELL: &str = "found no compatible cell";

/// What the restart calculator says about a crashed instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Immediately,
    /// After this many nanoseconds from `since`.
    After(i64),
    Never,
}

/// Diego's `RestartCalculator` for a crash count that was already incremented.
pub fn restart_policy(crash_count: i32) -> Restart {
    if crash_count < IMMEDIATE_RESTARTS {
        Restart::Immediately
    } else if crash_count < MAX_RESTARTS {
        let exp = (crash_count - IMMEDIATE_RESTARTS).min(5) as u32;
        Restart::After((CRASH_BACKOFF_MIN_NS << exp).min(MAX_BACKOFF_NS))
    } else {
        Restart::Never
    }
}

/// Whether a CRASHED instance that changed at `since` may restart at `now`.
pub fn should_restart_crashed(crash_count: i32, since: i64, now: i64) -> bool {
    match restart_policy(crash_count) {
        Restart::Immediately => true,
        Restart::After(wait) => now.saturating_sub(since) >= wait,
        Restart::Never => false,
    }
}

/// The crash count after a crash at `now` (reset to 1 after a long run).
pub fn next_crash_count(lrp: &pb::ActualLrp, now: i64) -> i32 {
    if lrp.state() == State::Running && now.saturating_sub(lrp.since) > CRASH_RESET_TIMEOUT_NS {
        1
    } else {
        lrp.crash_count.saturating_add(1)
    }
}

pub fn truncate_reason(reason: &str) -> String {
    if reason.len() <= MAX_CRASH_REASON {
        return reason.to_string();
    }
    let mut end = MAX_CRASH_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

pub fn state_name(s: State) -> &'static str {
    s.as_str_name()
}

pub fn instance_key_of(lrp: &pb::ActualLrp) -> pb::ActualLrpInstanceKey {
    pb::ActualLrpInstanceKey { instance_guid: lrp.instance_guid.clone(), cell_id: lrp.cell_id.clone() }
}

fn key_empty(k: &pb::ActualLrpInstanceKey) -> bool {
    k.instance_guid.is_empty() && k.cell_id.is_empty()
}

/// Diego's `ActualLRP.AllowsTransitionTo`, for a record whose key matched.
pub fn allows_transition_to(lrp: &pb::ActualLrp, instance_key: &pb::ActualLrpInstanceKey, to: State) -> bool {
    let same = instance_key_of(lrp) == *instance_key;
    match lrp.state() {
        State::Unclaimed => matches!(to, State::Unclaimed | State::Claimed | State::Running),
        State::Claimed => {
            (to == State::Unclaimed && key_empty(instance_key))
                || (to == State::Claimed && same)
                || to == State::Running
                || (to == State::Crashed && same)
        }
        State::Running => {
            (to == State::Unclaimed && key_empty(instance_key))
                || (matches!(to, State::Claimed | State::Running | State::Crashed) && same)
        }
        State::Crashed => {
            (to == State::Unclaimed && key_empty(instance_key))
                || (matches!(to, State::Claimed | State::Running) && same)
        }
    }
}

/// Diego's per-state validation of a record about to be written.
pub fn validate(lrp: &pb::ActualLrp) -> Result<(), SchedulerError> {
    let key = instance_key_of(lrp);
    let has_net = !lrp.address.is_empty() || !lrp.instance_address.is_empty() || !lrp.ports.is_empty();
    let what = || format!("actual LRP {}/{} ({})", lrp.process_guid, lrp.index, state_name(lrp.state()));
    let bad = |m: &str| Err(SchedulerError::Internal(format!("{}: {m}", what())));
    if lrp.process_guid.is_empty() || lrp.index < 0 {
        return bad("needs a process guid and a non-negative index");
    }
    if !lrp.placement_error.is_empty() && lrp.state() != State::Unclaimed {
        return bad("placement error outside UNCLAIMED");
    }
    match lrp.state() {
        State::Unclaimed => {
            if !key_empty(&key) || has_net || lrp.presence() != Presence::Ordinary {
                return bad("must have no instance key, no net info and ORDINARY presence");
            }
        }
        State::Claimed => {
            if key.instance_guid.is_empty() || key.cell_id.is_empty() || has_net {
                return bad("needs an instance key and no net info");
            }
        }
        State::Running => {
            if key.instance_guid.is_empty() || key.cell_id.is_empty() || lrp.address.is_empty() {
                return bad("needs an instance key and net info");
            }
        }
        State::Crashed => {
            if !key_empty(&key) || has_net {
                return bad("must have no instance key and no net info");
            }
        }
    }
    Ok(())
}

pub fn new_tag() -> pb::ModificationTag {
    pb::ModificationTag { epoch: celld_base::guid::new_guid(), index: 0 }
}

pub fn bump(tag: &mut Option<pb::ModificationTag>) {
    match tag {
        Some(t) => t.index = t.index.wrapping_add(1),
        None => *tag = Some(new_tag()),
    }
}

/// A fresh UNCLAIMED instance of `desired` at `index`.
pub fn new_unclaimed(desired: &pb::DesiredLrp, index: i32, now: i64) -> pb::ActualLrp {
    pb::ActualLrp {
        process_guid: desired.process_guid.clone(),
        index,
        domain: desired.domain.clone(),
        state: State::Unclaimed as i32,
        presence: Presence::Ordinary as i32,
        since: now,
        modification_tag: Some(new_tag()),
        ..Default::default()
    }
}

/// Clears what a cell put there: instance key, net info, routable.
pub fn clear_instance(lrp: &mut pb::ActualLrp) {
    lrp.instance_guid.clear();
    lrp.cell_id.clear();
    lrp.address.clear();
    lrp.instance_address.clear();
    lrp.ports.clear();
    lrp.routable = false;
}

pub fn set_net_info(lrp: &mut pb::ActualLrp, net: &pb::ActualLrpNetInfo) {
    lrp.address = net.address.clone();
    lrp.instance_address = net.instance_address.clone();
    lrp.ports = net.ports.clone();
}

/// Diego's guid rule (letters, digits, `-` and `_`): keys are used in paths and
/// container handles.
pub fn validate_guid(what: &str, guid: &str) -> Result<(), SchedulerError> {
    if guid.is_empty() {
        return Err(SchedulerError::InvalidArgument(format!("{what} is required")));
    }
    if guid.len() > 255 || !guid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(SchedulerError::InvalidArgument(format!(
            "{what} {guid:?} is invalid: use at most 255 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60 * NS_PER_SEC;

    #[test]
    fn restart_waits_match_diego() {
        assert_eq!(restart_policy(1), Restart::Immediately);
        assert_eq!(restart_policy(2), Restart::Immediately);
        assert_eq!(restart_policy(3), Restart::After(30 * NS_PER_SEC));
        assert_eq!(restart_policy(4), Restart::After(MIN));
        assert_eq!(restart_policy(5), Restart::After(2 * MIN));
        assert_eq!(restart_policy(6), Restart::After(4 * MIN));
        assert_eq!(restart_policy(7), Restart::After(8 * MIN));
        for n in [8, 9, 50, 199] {
            assert_eq!(restart_policy(n), Restart::After(16 * MIN), "count {n}");
        }
        assert_eq!(restart_policy(200), Restart::Never);
        assert_eq!(restart_policy(i32::MAX), Restart::Never);
        assert!(!should_restart_crashed(3, 0, 29 * NS_PER_SEC));
        assert!(should_restart_crashed(3, 0, 30 * NS_PER_SEC));
        assert!(!should_restart_crashed(200, 0, i64::MAX));
    }

    fn lrp(state: State, guid: &str, cell: &str) -> pb::ActualLrp {
        pb::ActualLrp {
            process_guid: "pg".into(),
            state: state as i32,
            instance_guid: guid.into(),
            cell_id: cell.into(),
            ..Default::default()
        }
    }

    fn key(g: &str, c: &str) -> pb::ActualLrpInstanceKey {
        pb::ActualLrpInstanceKey { instance_guid: g.into(), cell_id: c.into() }
    }

    #[test]
    fn crash_count_resets_after_a_long_run() {
        let mut l = lrp(State::Running, "i", "c");
        l.crash_count = 7;
        l.since = 0;
        assert_eq!(next_crash_count(&l, 5 * MIN), 8);
        assert_eq!(next_crash_count(&l, 5 * MIN + 1), 1);
        l.state = State::Claimed as i32;
        assert_eq!(next_crash_count(&l, 10 * MIN), 8);
    }

    #[test]
    fn transitions_follow_allows_transition_to() {
        let empty = key("", "");
        let mine = key("i", "c");
        let other = key("j", "d");
        let un = lrp(State::Unclaimed, "", "");
        assert!(allows_transition_to(&un, &mine, State::Claimed));
        assert!(allows_transition_to(&un, &mine, State::Running));
        assert!(!allows_transition_to(&un, &mine, State::Crashed));
        let cl = lrp(State::Claimed, "i", "c");
        assert!(allows_transition_to(&cl, &mine, State::Claimed));
        assert!(!allows_transition_to(&cl, &other, State::Claimed));
        assert!(allows_transition_to(&cl, &other, State::Running));
        assert!(allows_transition_to(&cl, &mine, State::Crashed));
        assert!(!allows_transition_to(&cl, &other, State::Crashed));
        assert!(allows_transition_to(&cl, &empty, State::Unclaimed));
        assert!(!allows_transition_to(&cl, &mine, State::Unclaimed));
        let run = lrp(State::Running, "i", "c");
        assert!(allows_transition_to(&run, &mine, State::Running));
        assert!(!allows_transition_to(&run, &other, State::Running));
        assert!(!allows_transition_to(&run, &other, State::Crashed));
        let cr = lrp(State::Crashed, "", "");
        assert!(allows_transition_to(&cr, &empty, State::Unclaimed));
        assert!(!allows_transition_to(&cr, &mine, State::Running));
        assert!(!allows_transition_to(&cr, &mine, State::Crashed));
    }

    #[test]
    fn validation_per_state() {
        let mut un = lrp(State::Unclaimed, "", "");
        assert!(validate(&un).is_ok());
        un.placement_error = "insufficient resources: memory".into();
        assert!(validate(&un).is_ok());
        un.instance_guid = "i".into();
        assert!(validate(&un).is_err());
        let mut cl = lrp(State::Claimed, "i", "c");
        assert!(validate(&cl).is_ok());
        cl.placement_error = "x".into();
        assert!(validate(&cl).is_err());
        let mut run = lrp(State::Running, "i", "c");
        assert!(validate(&run).is_err(), "RUNNING needs net info");
        run.address = "10.0.0.1".into();
        assert!(validate(&run).is_ok());
        let mut cl2 = lrp(State::Claimed, "i", "c");
        cl2.address = "10.0.0.1".into();
        assert!(validate(&cl2).is_err());
        assert!(validate(&lrp(State::Crashed, "", "")).is_ok());
        assert!(validate(&lrp(State::Crashed, "i", "c")).is_err());
        let mut ev = lrp(State::Unclaimed, "", "");
        ev.presence = Presence::Evacuating as i32;
        assert!(validate(&ev).is_err());
    }

    #[test]
    fn reasons_are_truncated_on_a_char_boundary() {
        assert_eq!(truncate_reason("short"), "short");
        let long = "é".repeat(1000);
        let t = truncate_reason(&long);
        assert!(t.len() <= MAX_CRASH_REASON && t.len() >= MAX_CRASH_REASON - 1);
    }

    #[test]
    fn guids_are_checked() {
        assert!(validate_guid("process guid", "abc-123_x").is_ok());
        assert!(validate_guid("process guid", "").is_err());
        assert!(validate_guid("process guid", "a/b").is_err());
    }
}
