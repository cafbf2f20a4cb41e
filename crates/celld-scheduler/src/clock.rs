//! The scheduler's notion of "now" for record times and crash back-off.
//! Presence TTLs use real monotonic time instead (see `core`).

use std::sync::atomic::{AtomicI64, Ordering};

pub trait Clock: Send + Sync + 'static {
    /// Unix time in nanoseconds.
    fn now(&self) -> i64;
}

pub fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        system_now()
    }
}

/// Frozen at start-up; moves only with `advance` (tests of crash back-off
/// advance minutes without sleeping).
pub struct TestClock {
    now: AtomicI64,
}

impl TestClock {
    pub fn new() -> Self {
        Self { now: AtomicI64::new(system_now()) }
    }

    pub fn advance(&self, ns: i64) -> i64 {
        self.now.fetch_add(ns, Ordering::SeqCst).saturating_add(ns)
    }
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TestClock {
    fn now(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_clock_moves_only_when_told() {
        let c = TestClock::new();
        let t0 = c.now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(c.now(), t0);
        assert_eq!(c.advance(30_000_000_000), t0 + 30_000_000_000);
        assert_eq!(c.now(), t0 + 30_000_000_000);
    }
}
