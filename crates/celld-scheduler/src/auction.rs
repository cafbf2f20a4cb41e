//! Diego's auction score (auction `auctionrunner/cell.go`), over a model of
//! each cell that counts this batch's placements as soon as they are made.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::Instant;

use celld_proto as pb;

use super::in_use::CellUse;
use super::model::NO_COMPATIBLE_CELL;

/// What one instance or task needs from a cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Demand {
    /// Set for instances: spreading counts instances of the same process.
    pub process_guid: Option<String>,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub rootfs: String,
    pub placement_tags: Vec<String>,
}

/// A live cell as the auction sees it.
#[derive(Debug, Clone)]
pub struct CellView {
    pub presence: pb::CellPresence,
    /// When the scheduler heard `presence`: work the cell accepted before
    /// then is already out of its `available`.
    heard: Instant,
    /// Usage the scheduler's records show (CLAIMED/RUNNING instances, RUNNING tasks).
    recorded: Usage,
    recorded_starting: u64,
    /// Every placement not in the records yet (accepted, in flight, or made
    /// in this batch).
    placed: Usage,
    placed_starting: u64,
    /// Those of `placed` the heartbeat cannot show yet: in flight, or
    /// accepted after it.
    unheard: Usage,
    unheard_starting: u64,
    /// Instances per process, for the processes of this auction: a few, so
    /// a scan beats hashing a guid for every cell of every placement.
    per_process: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    memory_mb: u64,
    disk_mb: u64,
    containers: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fit {
    Score(f64),
    Incompatible,
    /// The resources that do not fit, in Diego's order.
    Insufficient(Vec<&'static str>),
}

impl Usage {
    fn add(&mut self, d: &Demand) {
        self.memory_mb += d.memory_mb;
        self.disk_mb += d.disk_mb;
        self.containers += 1;
    }

    fn sub(&mut self, d: &Demand) {
        self.memory_mb = self.memory_mb.saturating_sub(d.memory_mb);
        self.disk_mb = self.disk_mb.saturating_sub(d.disk_mb);
        self.containers = self.containers.saturating_sub(1);
    }

    fn plus(self, o: Usage) -> Usage {
        Usage {
            memory_mb: self.memory_mb + o.memory_mb,
            disk_mb: self.disk_mb + o.disk_mb,
            containers: self.containers + o.containers,
        }
    }

    fn max(self, o: Usage) -> Usage {
        Usage {
            memory_mb: self.memory_mb.max(o.memory_mb),
            disk_mb: self.disk_mb.max(o.disk_mb),
            containers: self.containers.max(o.containers),
        }
    }
}

impl CellView {
    /// A cell whose `presence` the scheduler heard at `heard`.
    pub fn new(presence: pb::CellPresence, heard: Instant) -> Self {
        Self {
            presence,
            heard,
            recorded: Usage::default(),
            recorded_starting: 0,
            placed: Usage::default(),
            placed_starting: 0,
            unheard: Usage::default(),
            unheard_starting: 0,
            per_process: Vec::new(),
        }
    }

    pub fn cell_id(&self) -> &str {
        &self.presence.cell_id
    }

    /// An instance or task the records place on this cell.
    pub fn add_recorded(&mut self, d: &Demand, starting: bool) {
        self.add_recorded_counting(d, starting, true);
    }

    /// `add_recorded`, counting the instance for spreading only when
    /// `spread` (an auction needs the counts of the processes it places).
    pub fn add_recorded_counting(&mut self, d: &Demand, starting: bool, spread: bool) {
        self.recorded.add(d);
        if starting {
            self.recorded_starting += 1;
        }
        if spread {
            self.count_process(d);
        }
    }

    /// What the records place on this cell, in total (`in_use`).
    pub fn add_recorded_use(&mut self, u: &CellUse) {
        self.recorded =
            self.recorded.plus(Usage { memory_mb: u.memory_mb, disk_mb: u.disk_mb, containers: u.containers });
        self.recorded_starting += u.starting;
    }

    /// `n` recorded instances of `process_guid` on this cell (spreading).
    pub fn count_recorded(&mut self, process_guid: &str, n: u64) {
        match self.per_process.iter_mut().find(|(pg, _)| pg == process_guid) {
            Some((_, count)) => *count += n,
            None => self.per_process.push((process_guid.to_string(), n)),
        }
    }

    /// A placement made in this batch (in flight: no heartbeat shows it).
    pub fn reserve(&mut self, d: &Demand) {
        self.reserve_counting(d, None, true);
    }

    /// A placement the records do not show yet, which the cell `accepted`
    /// at that instant (None: Perform in flight); counted for spreading
    /// only when `spread`.
    pub fn reserve_counting(&mut self, d: &Demand, accepted: Option<Instant>, spread: bool) {
        self.placed.add(d);
        self.placed_starting += 1;
        // Only work in flight or accepted after the heartbeat is missing from
        // it: a cell reserves what it accepts, out of its `available`.
        if accepted.is_none_or(|a| a >= self.heard) {
            self.unheard.add(d);
            self.unheard_starting += 1;
        }
        if spread {
            self.count_process(d);
        }
    }

    fn count_process(&mut self, d: &Demand) {
        if let Some(pg) = &d.process_guid {
            self.count_recorded(pg, 1);
        }
    }

    fn same_process(&self, process_guid: &str) -> Option<&u64> {
        self.per_process.iter().find(|(pg, _)| pg == process_guid).map(|(_, n)| n)
    }

    /// Undoes `reserve` (the cell refused the work).
    pub fn release(&mut self, d: &Demand) {
        self.placed.sub(d);
        self.placed_starting = self.placed_starting.saturating_sub(1);
        self.unheard.sub(d);
        self.unheard_starting = self.unheard_starting.saturating_sub(1);
        if let Some(pg) = &d.process_guid {
            if let Some((_, n)) = self.per_process.iter_mut().find(|(p, _)| p == pg) {
                *n = n.saturating_sub(1);
            }
        }
    }

    fn capacity(&self) -> Usage {
        let c = self.presence.capacity.unwrap_or_default();
        Usage { memory_mb: c.memory_mb.into(), disk_mb: c.disk_mb.into(), containers: c.containers.into() }
    }

    /// Used = what the heartbeat says or what the records say, whichever is
    /// more (each misses something: the heartbeat is up to 5 s old, the
    /// records miss staging). Each side adds the placements it cannot see:
    /// the heartbeat those the cell had not accepted when it was heard, the
    /// records all of them (counting an accepted one on top of a heartbeat
    /// that shows it made busy cells look full).
    fn used(&self) -> Usage {
        let cap = self.capacity();
        let avail = self.presence.available.unwrap_or_default();
        let hb = Usage {
            memory_mb: cap.memory_mb.saturating_sub(avail.memory_mb.into()),
            disk_mb: cap.disk_mb.saturating_sub(avail.disk_mb.into()),
            containers: cap.containers.saturating_sub(avail.containers.into()),
        };
        hb.plus(self.unheard).max(self.recorded.plus(self.placed))
    }

    /// Starting containers, on the same two sides as `used` (a cell counts
    /// the work it accepted as starting).
    fn starting(&self) -> u64 {
        (u64::from(self.presence.starting_containers) + self.unheard_starting)
            .max(self.recorded_starting + self.placed_starting)
    }

    fn compatible(&self, d: &Demand) -> bool {
        // `preloaded:NAME` needs the stack; an absolute path (or docker://, or
        // the cell's default) is any cell's business.
        if let Some(stack) = d.rootfs.strip_prefix("preloaded:") {
            if !self.presence.stacks.iter().any(|s| s == stack) {
                return false;
            }
        }
        d.placement_tags.iter().all(|t| self.presence.placement_tags.contains(t))
    }

    /// Diego's score, lowest wins; `spread` adds the same-process term (LRPs only).
    pub fn fit(&self, d: &Demand) -> Fit {
        if !self.compatible(d) {
            return Fit::Incompatible;
        }
        let cap = self.capacity();
        let used = self.used();
        let mut problems = Vec::new();
        if used.containers + 1 > cap.containers {
            problems.push("containers");
        }
        if used.disk_mb + d.disk_mb > cap.disk_mb {
            problems.push("disk");
        }
        if used.memory_mb + d.memory_mb > cap.memory_mb {
            problems.push("memory");
        }
        if !problems.is_empty() {
            return Fit::Insufficient(problems);
        }
        let frac = |u: u64, c: u64| if c == 0 { 1.0 } else { u as f64 / c as f64 };
        let resources = (frac(used.memory_mb, cap.memory_mb)
            + frac(used.disk_mb, cap.disk_mb)
            + frac(used.containers, cap.containers))
            / 3.0;
        let starting = self.starting();
        let same = d.process_guid.as_deref().and_then(|pg| self.same_process(pg)).copied().unwrap_or(0);
        Fit::Score(resources + 0.25 * starting as f64 + 1000.0 * same as f64)
    }
}

/// The best cell for `d` among `cells` (skipping `excluded` ids), or the
/// placement error to record.
pub fn choose(cells: &[CellView], d: &Demand, excluded: &[String]) -> Result<usize, String> {
    let mut best: Option<(usize, f64)> = None;
    let mut problems = BTreeSet::new();
    for (i, c) in cells.iter().enumerate() {
        if excluded.iter().any(|e| e == c.cell_id()) {
            continue;
        }
        match c.fit(d) {
            Fit::Score(s) => {
                if best.is_none_or(|(_, b)| s < b) {
                    best = Some((i, s));
                }
            }
            Fit::Incompatible => {}
            Fit::Insufficient(p) => problems.extend(p),
        }
    }
    match best {
        Some((i, _)) => Ok(i),
        None if problems.is_empty() => Err(NO_COMPATIBLE_CELL.to_string()),
        // BTreeSet order is Diego's "containers, disk, memory".
        None => Err(format!("insufficient resources: {}", problems.into_iter().collect::<Vec<_>>().join(", "))),
    }
}

/// Places one round of an auction: for each lot, `choose`'s cell, reserved at
/// once, without scoring every cell for every lot.
///
/// Reserving work on a cell only raises its score for any demand (more use,
/// one more starting container, one more instance of the process) or makes
/// it unfit. So each demand keeps the cells it could use in a heap, lowest
/// score then lowest index first, as `choose` breaks ties; an entry made
/// before its cell's latest reservation is a lower bound, scored again when
/// it comes to the top. A round of 1 000 instances over 1 000 cells scores a
/// few thousand times instead of a million.
pub struct Placer {
    /// Reservations made on each cell in this round.
    reservations: Vec<u32>,
    heaps: HashMap<Demand, BinaryHeap<Reverse<Ranked>>>,
}

/// A cell's score for one demand, as of its `reservations` count.
#[derive(Debug, PartialEq)]
struct Ranked {
    score: f64,
    cell: usize,
    as_of: u32,
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then(self.cell.cmp(&other.cell))
    }
}

impl Placer {
    /// A round over `cells`; nothing else may change them until it ends.
    pub fn new(cells: &[CellView]) -> Self {
        Self { reservations: vec![0; cells.len()], heaps: HashMap::new() }
    }

    /// `choose`, then `reserve` on the chosen cell.
    pub fn place(&mut self, cells: &mut [CellView], d: &Demand, excluded: &[String]) -> Result<usize, String> {
        // Rare (a refusal or an unreachable cell): scan, as `choose` does.
        let chosen = if excluded.is_empty() { self.best(cells, d) } else { None };
        let i = match chosen {
            Some(i) => i,
            // Without a heap, or no cell can take it: `choose` says why.
            None => choose(cells, d, excluded)?,
        };
        cells[i].reserve(d);
        self.reservations[i] += 1;
        if let (Some(ranked), Some(heap)) = (self.ranked(cells, i, d), self.heaps.get_mut(d)) {
            heap.push(ranked);
        }
        Ok(i)
    }

    /// The cell `choose` picks for `d` with no exclusions, from `d`'s heap.
    fn best(&mut self, cells: &[CellView], d: &Demand) -> Option<usize> {
        if !self.heaps.contains_key(d) {
            let heap = (0..cells.len()).filter_map(|i| self.ranked(cells, i, d)).collect();
            self.heaps.insert(d.clone(), heap);
        }
        loop {
            let Reverse(top) = self.heaps.get_mut(d)?.pop()?;
            if top.as_of == self.reservations[top.cell] {
                return Some(top.cell);
            }
            if let Some(ranked) = self.ranked(cells, top.cell, d) {
                self.heaps.get_mut(d)?.push(ranked);
            }
        }
    }

    /// Cell `i`'s entry in `d`'s heap as of now, if it can take `d`.
    fn ranked(&self, cells: &[CellView], i: usize, d: &Demand) -> Option<Reverse<Ranked>> {
        match cells[i].fit(d) {
            Fit::Score(score) => Some(Reverse(Ranked { score, cell: i, as_of: self.reservations[i] })),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cell(id: &str, mem: u32, disk: u32, containers: u32) -> CellView {
        let r = pb::Resources { memory_mb: mem, disk_mb: disk, containers };
        CellView::new(
            pb::CellPresence {
                cell_id: id.into(),
                capacity: Some(r),
                available: Some(r),
                stacks: vec!["cflinuxfs4".into()],
                placement_tags: vec!["blue".into()],
                ..Default::default()
            },
            Instant::now(),
        )
    }

    /// 10 containers (memory and disk to spare), a heartbeat heard at
    /// `heard` saying 5 are in use (5 starting).
    fn half_full(heard: Instant) -> CellView {
        let mut c = cell("a", 100_000, 100_000, 10);
        c.presence.available = Some(pb::Resources { memory_mb: 100_000, disk_mb: 100_000, containers: 5 });
        c.presence.starting_containers = 5;
        c.heard = heard;
        c
    }

    /// How many more 1 MB instances fit.
    fn room(c: &CellView) -> usize {
        let mut c = c.clone();
        let mut n = 0;
        while let Fit::Score(_) = c.fit(&lrp(1)) {
            c.reserve(&lrp(1));
            n += 1;
            assert!(n <= 100, "a 10-container cell takes more than 100 instances");
        }
        n
    }

    #[test]
    fn placements_accepted_before_the_heartbeat_count_once() {
        let before = Instant::now();
        let heard = before + Duration::from_secs(1);
        let before = Some(before);
        let mut c = half_full(heard);
        for _ in 0..5 {
            c.reserve_counting(&lrp(1), before, true);
        }
        // The heartbeat's 5 used containers are those 5 placements.
        assert_eq!(room(&c), 5);
        assert_eq!(c.starting(), 5);
    }

    #[test]
    fn placements_in_flight_count_on_top_of_the_heartbeat() {
        let mut c = half_full(Instant::now());
        for _ in 0..5 {
            c.reserve_counting(&lrp(1), None, true);
        }
        assert_eq!(room(&c), 0);
        assert_eq!(c.fit(&lrp(1)), Fit::Insufficient(vec!["containers"]));
        assert_eq!(c.starting(), 10);
    }

    #[test]
    fn placements_accepted_after_the_heartbeat_count_on_top_of_it() {
        let before = Instant::now();
        let heard = before + Duration::from_secs(1);
        let mut c = half_full(heard);
        for _ in 0..5 {
            c.reserve_counting(&lrp(1), Some(heard + Duration::from_millis(10)), true);
        }
        assert_eq!(room(&c), 0);
        // A mix: 3 heard, 2 not.
        let mut c = half_full(heard);
        for i in 0..5 {
            let at = if i < 3 { Some(before) } else { Some(heard + Duration::from_secs(1)) };
            c.reserve_counting(&lrp(1), at, true);
        }
        assert_eq!(room(&c), 3);
    }

    #[test]
    fn records_count_every_placement() {
        let before = Instant::now();
        let heard = before + Duration::from_secs(1);
        let before = Some(before);
        // A heartbeat showing nothing used (it missed the instances the
        // records show), 5 recorded instances and 5 placements it missed too.
        let mut c = cell("a", 100_000, 100_000, 10);
        c.heard = heard;
        for _ in 0..5 {
            c.add_recorded(&lrp(1), false);
            c.reserve_counting(&lrp(1), before, true);
        }
        assert_eq!(room(&c), 0);
    }

    fn lrp(mem: u64) -> Demand {
        Demand {
            process_guid: Some("pg".into()),
            memory_mb: mem,
            disk_mb: 100,
            rootfs: "preloaded:cflinuxfs4".into(),
            placement_tags: vec![],
        }
    }

    #[test]
    fn ten_instances_spread_five_and_five() {
        let mut cells = vec![cell("a", 8192, 8192, 100), cell("b", 8192, 8192, 100)];
        let mut counts = [0, 0];
        for _ in 0..10 {
            let i = choose(&cells, &lrp(256), &[]).unwrap();
            cells[i].reserve(&lrp(256));
            counts[i] += 1;
        }
        assert_eq!(counts, [5, 5]);
    }

    #[test]
    fn score_is_diegos() {
        let mut c = cell("a", 1000, 1000, 10);
        let d = lrp(100);
        // Idle: no usage, no starting containers, no instance of the process.
        assert_eq!(c.fit(&d), Fit::Score(0.0));
        c.add_recorded(&d, true);
        // mean(0.1, 0.1, 0.1) + 0.25·1 starting + 1000·1 same process.
        match c.fit(&d) {
            Fit::Score(s) => assert!((s - (0.1 + 0.25 + 1000.0)).abs() < 1e-9, "{s}"),
            f => panic!("{f:?}"),
        }
        let task = Demand { process_guid: None, ..d };
        match c.fit(&task) {
            Fit::Score(s) => assert!((s - 0.35).abs() < 1e-9, "{s}"),
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn heartbeat_usage_counts() {
        let mut busy = cell("busy", 1000, 1000, 10);
        busy.presence.available = Some(pb::Resources { memory_mb: 200, disk_mb: 1000, containers: 10 });
        let idle = cell("idle", 1000, 1000, 10);
        let cells = vec![busy, idle];
        assert_eq!(choose(&cells, &lrp(100), &[]), Ok(1));
        assert_eq!(choose(&cells, &lrp(500), &["idle".into()]), Err("insufficient resources: memory".into()));
    }

    #[test]
    fn placement_errors() {
        let cells = vec![cell("a", 512, 1000, 1)];
        assert_eq!(choose(&cells, &lrp(1024), &[]), Err("insufficient resources: memory".into()));
        let mut full = cells.clone();
        full[0].reserve(&lrp(10));
        let big = Demand { disk_mb: 5000, ..lrp(1024) };
        assert_eq!(choose(&full, &big, &[]), Err("insufficient resources: containers, disk, memory".into()));
        let other_stack = Demand { rootfs: "preloaded:windows".into(), ..lrp(1) };
        assert_eq!(choose(&cells, &other_stack, &[]), Err(NO_COMPATIBLE_CELL.into()));
        let path_rootfs = Demand { rootfs: "/var/rootfs/x".into(), ..lrp(1) };
        assert_eq!(choose(&cells, &path_rootfs, &[]), Ok(0));
        let tagged = Demand { placement_tags: vec!["blue".into()], ..lrp(1) };
        assert_eq!(choose(&cells, &tagged, &[]), Ok(0));
        let red = Demand { placement_tags: vec!["red".into()], ..lrp(1) };
        assert_eq!(choose(&cells, &red, &[]), Err(NO_COMPATIBLE_CELL.into()));
        assert_eq!(choose(&[], &lrp(1), &[]), Err(NO_COMPATIBLE_CELL.into()));
    }

    #[test]
    fn release_undoes_reserve() {
        let mut c = cell("a", 1000, 1000, 10);
        c.reserve(&lrp(100));
        c.release(&lrp(100));
        assert_eq!(c.fit(&lrp(100)), Fit::Score(0.0));
    }

    /// The placer makes `choose`'s choices, reserving as it goes, for a
    /// mix of demands, cells of every size, and exclusions.
    #[test]
    fn placer_places_as_choose_does() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..40 {
            let mut cells: Vec<CellView> = (0..1 + next(30))
                .map(|i| {
                    let mut c = cell(&format!("c{i}"), 512 + 256 * next(8) as u32, 4096, 1 + next(12) as u32);
                    if next(5) == 0 {
                        c.presence.stacks = vec!["other".into()];
                    }
                    c.presence.starting_containers = next(3) as u32;
                    c.count_recorded(&format!("pg{}", next(3)), next(2));
                    c
                })
                .collect();
            let mut plain = cells.clone();
            let mut placer = Placer::new(&cells);
            for _ in 0..60 {
                let pg = next(4);
                let d = Demand {
                    process_guid: (pg < 3).then(|| format!("pg{pg}")),
                    memory_mb: 64 * (1 + next(4)),
                    disk_mb: 100,
                    rootfs: "preloaded:cflinuxfs4".into(),
                    placement_tags: vec![],
                };
                let excluded: Vec<String> =
                    if next(6) == 0 { vec![format!("c{}", next(cells.len() as u64))] } else { vec![] };
                let want = choose(&plain, &d, &excluded);
                if let Ok(i) = want {
                    plain[i].reserve(&d);
                }
                assert_eq!(placer.place(&mut cells, &d, &excluded), want, "round {round}");
            }
        }
    }
}
