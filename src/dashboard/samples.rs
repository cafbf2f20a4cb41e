//! The charts' history: a ring of CPU and memory samples per instance, taken
//! every [`INTERVAL`] by one background task while the dashboard is on, so a
//! page loaded now still shows the last ten minutes. Memory is bounded: at
//! most [`KEEP`] samples per instance and [`MAX_INSTANCES`] instances, and an
//! instance's ring goes with the instance (absent from a sweep).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

/// How often the sampler reads every instance's metrics.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Ten minutes of samples.
pub const KEEP: usize = 120;
/// Instances followed at once; past that, new ones get no history (a cell
/// runs at most a few hundred containers).
pub const MAX_INSTANCES: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Unix time in milliseconds (what the page's clock uses).
    pub t: i64,
    pub cpu: f64,
    pub memory: u64,
    pub disk: u64,
}

/// One instance as a sweep saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub instance_guid: String,
    /// The app (local mode) or log guid (a plain cell) it belongs to.
    pub owner: String,
    pub sample: Sample,
}

struct Ring {
    owner: String,
    samples: VecDeque<Sample>,
}

#[derive(Default)]
pub struct Samples {
    rings: Mutex<HashMap<String, Ring>>,
}

impl Samples {
    /// Records one sweep: every instance seen gets its sample, every ring of
    /// an instance not seen goes.
    pub fn record(&self, seen: Vec<Seen>) {
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        rings.retain(|guid, _| seen.iter().any(|s| &s.instance_guid == guid));
        for s in seen {
            if !rings.contains_key(&s.instance_guid) && rings.len() >= MAX_INSTANCES {
                continue;
            }
            let ring = rings
                .entry(s.instance_guid)
                .or_insert_with(|| Ring { owner: s.owner.clone(), samples: VecDeque::with_capacity(KEEP) });
            if ring.samples.len() == KEEP {
                ring.samples.pop_front();
            }
            ring.samples.push_back(s.sample);
        }
    }

    /// An instance's samples, oldest first.
    pub fn history(&self, instance_guid: &str) -> Vec<Sample> {
        let rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        rings.get(instance_guid).map(|r| r.samples.iter().copied().collect()).unwrap_or_default()
    }

    /// The newest sample of every instance of `owner`.
    pub fn latest_of(&self, owner: &str) -> Vec<Sample> {
        let rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        rings.values().filter(|r| r.owner == owner).filter_map(|r| r.samples.back().copied()).collect()
    }

    pub fn instances(&self) -> usize {
        self.rings.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(guid: &str, t: i64) -> Seen {
        Seen { instance_guid: guid.into(), owner: "app".into(), sample: Sample { t, cpu: 1.0, memory: 10, disk: 1 } }
    }

    #[test]
    fn a_ring_keeps_the_newest_ten_minutes() {
        let s = Samples::default();
        for t in 0..(KEEP as i64 + 30) {
            s.record(vec![seen("a", t)]);
        }
        let h = s.history("a");
        assert_eq!(h.len(), KEEP);
        assert_eq!(h.first().map(|x| x.t), Some(30));
        assert_eq!(h.last().map(|x| x.t), Some(KEEP as i64 + 29));
    }

    #[test]
    fn an_instance_absent_from_a_sweep_is_dropped() {
        let s = Samples::default();
        s.record(vec![seen("a", 1), seen("b", 1)]);
        s.record(vec![seen("b", 2)]);
        assert!(s.history("a").is_empty());
        assert_eq!(s.history("b").len(), 2);
        assert_eq!(s.latest_of("app").len(), 1);
        assert_eq!(s.instances(), 1);
    }

    #[test]
    fn instances_past_the_cap_get_no_history() {
        let s = Samples::default();
        let many: Vec<Seen> = (0..MAX_INSTANCES + 5).map(|i| seen(&format!("i{i}"), 1)).collect();
        s.record(many);
        assert_eq!(s.instances(), MAX_INSTANCES);
    }
}
