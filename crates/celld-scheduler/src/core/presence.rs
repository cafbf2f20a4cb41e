//! Cell presence (Locket): which cells heartbeated within the TTL, which are
//! missing, and which are busy working through their queue. Only reads the
//! presence table; what arriving or expiring presences set off is in
//! `heartbeats`.

use std::collections::HashSet;
use std::time::Instant;

use super::{PresenceEntry, Scheduler, lock};
use crate::model::STALE_UNCLAIMED_NS;
use celld_proto as pb;

impl Scheduler {
    pub(super) fn alive(&self, e: &PresenceEntry) -> bool {
        e.seen.elapsed() < self.presence_ttl
    }

    /// Live cells, by id.
    pub fn live_cells(&self) -> Vec<pb::CellPresence> {
        self.live_presences().into_iter().map(|(p, _)| p).collect()
    }

    /// Live cells by id, each with when its presence was heard.
    pub(super) fn live_presences(&self) -> Vec<(pb::CellPresence, Instant)> {
        let p = lock(&self.presences);
        let mut v: Vec<_> = p.values().filter(|e| self.alive(e)).map(|e| (e.presence.clone(), e.seen)).collect();
        v.sort_by(|a, b| a.0.cell_id.cmp(&b.0.cell_id));
        v
    }

    /// A cell made progress on its work (claimed, started) at `now`.
    pub(super) fn note_progress(&self, cell_id: &str, now: i64) {
        let mut p = lock(&self.progress);
        match p.get_mut(cell_id) {
            Some(t) => *t = (*t).max(now),
            None => {
                p.insert(cell_id.to_string(), now);
            }
        }
    }

    /// Live cells that made progress within the last 30 s at `now`: their
    /// unclaimed placements are queued behind other work, not lost.
    pub(super) fn busy_cells(&self, now: i64) -> HashSet<String> {
        let live: HashSet<String> = {
            let p = lock(&self.presences);
            p.iter().filter(|(_, e)| self.alive(e)).map(|(id, _)| id.clone()).collect()
        };
        let progress = lock(&self.progress);
        live.into_iter()
            .filter(|id| progress.get(id).is_some_and(|t| now.saturating_sub(*t) < STALE_UNCLAIMED_NS))
            .collect()
    }

    pub(super) fn cell_address(&self, cell_id: &str) -> Option<String> {
        let p = lock(&self.presences);
        p.get(cell_id).filter(|e| self.alive(e)).map(|e| e.presence.grpc_address.clone())
    }

    /// Missing = not heard from for a TTL; right after start-up nobody is
    /// missing until cells had one TTL to heartbeat.
    pub(super) fn cell_missing(&self, cell_id: &str) -> bool {
        if self.started.elapsed() < self.presence_ttl {
            return false;
        }
        let p = lock(&self.presences);
        p.get(cell_id).is_none_or(|e| !self.alive(e))
    }
}
