//! ActualLRPs as the cached store keeps them in memory. A decoded protobuf
//! record is ~280 bytes plus nine heap strings of its own (~600 bytes in
//! all); at 250 000 instances that was most of the scheduler's memory. Here
//! the strings many records share (cell ids, domains, cells' addresses) are
//! interned, guids are kept as their 16 bytes, and what only some records
//! have (network info, crash reason, placement error) is boxed only when
//! set. The process guid, index and presence are the record's key. Records
//! become protobufs again only when answering.

use std::collections::HashSet;
use std::sync::Arc;

use celld_proto as pb;

/// Strings shared by many records, one allocation each; a string goes once
/// the last record holding it does (`release`).
#[derive(Default)]
pub(super) struct Interner(HashSet<Arc<str>>);

impl Interner {
    pub(super) fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(g) = self.0.get(s) {
            return g.clone();
        }
        let g: Arc<str> = Arc::from(s);
        self.0.insert(g.clone());
        g
    }

    /// The interned copy of `s`, if any record holds it.
    pub(super) fn find(&self, s: &str) -> Option<&Arc<str>> {
        self.0.get(s)
    }

    /// Gives back `s`, taken from a record that is gone: dropped from the
    /// set when nothing else holds it.
    pub(super) fn release(&mut self, s: Arc<str>) {
        // Held by `s` and the set alone.
        if Arc::strong_count(&s) == 2 && self.0.get(&*s).is_some_and(|g| Arc::ptr_eq(g, &s)) {
            self.0.remove(&*s);
        }
    }

    /// Drops `s` if no record holds it (for callers without the `Arc`).
    pub(super) fn release_str(&mut self, s: &str) {
        if self.0.get(s).is_some_and(|g| Arc::strong_count(g) == 1) {
            self.0.remove(s);
        }
    }

    #[cfg(test)]
    pub(super) fn strings(&self) -> std::collections::BTreeSet<String> {
        self.0.iter().map(|s| s.to_string()).collect()
    }
}

/// A guid: its 16 bytes when written in canonical lowercase form (every
/// guid the scheduler makes, and cells' as a rule), else its text, so it
/// always reads back exactly as it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Guid {
    Bytes([u8; 16]),
    Text(Box<str>),
}

impl Guid {
    fn new(s: &str) -> Self {
        parse_guid(s).map_or_else(|| Guid::Text(s.into()), Guid::Bytes)
    }

    fn write_to(&self, out: &mut String) {
        out.clear();
        match self {
            Guid::Text(t) => out.push_str(t),
            Guid::Bytes(b) => {
                // Into a buffer first, then one copy: a convergence pass
                // writes two guids per instance.
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut text = [b'-'; 36];
                let mut at = 0;
                for (i, byte) in b.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        at += 1;
                    }
                    text[at] = HEX[usize::from(byte >> 4)];
                    text[at + 1] = HEX[usize::from(byte & 0x0f)];
                    at += 2;
                }
                out.push_str(std::str::from_utf8(&text).unwrap_or_default());
            }
        }
    }
}

/// The bytes of a guid in canonical form: 8-4-4-4-12 lowercase hex digits.
fn parse_guid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut high: Option<u8> = None;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        match high.take() {
            None => high = Some(v),
            Some(h) => {
                *out.get_mut(n)? = (h << 4) | v;
                n += 1;
            }
        }
    }
    (n == 16).then_some(out)
}

/// Where a started instance listens.
struct Net {
    /// The cell's address: shared by every instance on the cell.
    address: Arc<str>,
    instance_address: Box<str>,
    ports: Box<[pb::PortMapping]>,
}

/// What only some records have.
struct Extra {
    crash_reason: Box<str>,
    placement_error: Box<str>,
}

/// One ActualLRP without its key (process guid, index, presence).
pub(super) struct StoredActual {
    domain: Arc<str>,
    cell_id: Arc<str>,
    instance_guid: Guid,
    /// The modification tag's epoch; None: the record has no tag.
    epoch: Option<Guid>,
    net: Option<Box<Net>>,
    extra: Option<Box<Extra>>,
    since: i64,
    tag_index: u32,
    state: i32,
    crash_count: i32,
    routable: bool,
}

impl StoredActual {
    pub(super) fn new(a: &pb::ActualLrp, strings: &mut Interner) -> Self {
        let has_net = !a.address.is_empty() || !a.instance_address.is_empty() || !a.ports.is_empty();
        let net = has_net.then(|| {
            Box::new(Net {
                address: strings.get(&a.address),
                instance_address: a.instance_address.as_str().into(),
                ports: a.ports.as_slice().into(),
            })
        });
        let has_extra = !a.crash_reason.is_empty() || !a.placement_error.is_empty();
        let extra = has_extra.then(|| {
            Box::new(Extra {
                crash_reason: a.crash_reason.as_str().into(),
                placement_error: a.placement_error.as_str().into(),
            })
        });
        Self {
            domain: strings.get(&a.domain),
            cell_id: strings.get(&a.cell_id),
            instance_guid: Guid::new(&a.instance_guid),
            epoch: a.modification_tag.as_ref().map(|t| Guid::new(&t.epoch)),
            net,
            extra,
            since: a.since,
            tag_index: a.modification_tag.as_ref().map_or(0, |t| t.index),
            state: a.state,
            crash_count: a.crash_count,
            routable: a.routable,
        }
    }

    pub(super) fn cell_id(&self) -> &Arc<str> {
        &self.cell_id
    }

    pub(super) fn domain(&self) -> &str {
        &self.domain
    }

    /// `State as i32`.
    pub(super) fn state(&self) -> i32 {
        self.state
    }

    /// Gives the shared strings back to `strings` (the record is gone).
    pub(super) fn release(self, strings: &mut Interner) {
        let Self { domain, cell_id, net, .. } = self;
        strings.release(domain);
        strings.release(cell_id);
        if let Some(net) = net {
            strings.release(net.address);
        }
    }

    /// Writes the record with key (`process_guid`, `index`, `presence`)
    /// into `out`, reusing `out`'s buffers (passes over every record fill
    /// one scratch record instead of allocating each).
    pub(super) fn fill(&self, process_guid: &str, index: i32, presence: i32, out: &mut pb::ActualLrp) {
        let set = |s: &mut String, v: &str| {
            s.clear();
            s.push_str(v);
        };
        set(&mut out.process_guid, process_guid);
        out.index = index;
        out.presence = presence;
        set(&mut out.domain, &self.domain);
        self.instance_guid.write_to(&mut out.instance_guid);
        set(&mut out.cell_id, &self.cell_id);
        match &self.net {
            Some(n) => {
                set(&mut out.address, &n.address);
                set(&mut out.instance_address, &n.instance_address);
                out.ports.clear();
                out.ports.extend_from_slice(&n.ports);
            }
            None => {
                out.address.clear();
                out.instance_address.clear();
                out.ports.clear();
            }
        }
        match &self.extra {
            Some(e) => {
                set(&mut out.crash_reason, &e.crash_reason);
                set(&mut out.placement_error, &e.placement_error);
            }
            None => {
                out.crash_reason.clear();
                out.placement_error.clear();
            }
        }
        match &self.epoch {
            Some(epoch) => {
                let tag = out.modification_tag.get_or_insert_with(Default::default);
                epoch.write_to(&mut tag.epoch);
                tag.index = self.tag_index;
            }
            None => out.modification_tag = None,
        }
        out.state = self.state;
        out.crash_count = self.crash_count;
        out.since = self.since;
        out.routable = self.routable;
    }

    pub(super) fn to_pb(&self, process_guid: &str, index: i32, presence: i32) -> pb::ActualLrp {
        let mut out = pb::ActualLrp::default();
        self.fill(process_guid, index, presence, &mut out);
        out
    }
}

/// Records of every shape, for the tests of the stores.
#[cfg(test)]
pub(super) mod testing {
    use celld_proto as pb;

    /// A small deterministic generator (xorshift).
    pub(in crate::store) struct Rng(pub(in crate::store) u64);

    impl Rng {
        pub(in crate::store) fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len() as u64) as usize]
        }
    }

    /// Strings of every shape a field may hold: empty, canonical guids,
    /// guids that are not canonical (uppercase, braces, a bad digit, one
    /// character short or long), other text.
    pub(super) const TEXTS: &[&str] = &[
        "",
        "c0ffee00-1234-4abc-8def-0123456789ab",
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "C0FFEE00-1234-4ABC-8DEF-0123456789AB",
        "{c0ffee00-1234-4abc-8def-0123456789a}",
        "c0ffee00-1234-4abc-8def-0123456789ag",
        "c0ffee00-1234-4abc-8def-0123456789a",
        "c0ffee00-1234-4abc-8def-0123456789abc",
        "c0ffee00+1234-4abc-8def-0123456789ab",
        "c0ffee0012344abc8def0123456789abcdef",
        "cell-1",
        "10.0.0.1",
        "ünïcödé",
    ];

    /// A record with every field random (its key too).
    pub(in crate::store) fn random_record(rng: &mut Rng) -> pb::ActualLrp {
        let ports = (0..rng.below(3))
            .map(|_| pb::PortMapping { container_port: rng.below(70000) as u32, host_port: rng.below(70000) as u32 })
            .collect();
        pb::ActualLrp {
            process_guid: rng.pick(TEXTS).to_string(),
            index: rng.below(5) as i32 - 1,
            domain: rng.pick(TEXTS).to_string(),
            instance_guid: rng.pick(TEXTS).to_string(),
            cell_id: rng.pick(TEXTS).to_string(),
            address: rng.pick(TEXTS).to_string(),
            instance_address: rng.pick(TEXTS).to_string(),
            ports,
            state: rng.below(6) as i32 - 1,
            presence: rng.below(4) as i32,
            crash_count: rng.below(300) as i32,
            crash_reason: rng.pick(TEXTS).to_string(),
            since: rng.below(u64::MAX) as i64,
            routable: rng.below(2) == 1,
            modification_tag: match rng.below(3) {
                0 => None,
                _ => Some(pb::ModificationTag { epoch: rng.pick(TEXTS).to_string(), index: rng.below(10) as u32 }),
            },
            placement_error: rng.pick(TEXTS).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn canonical_guids_are_kept_as_bytes_and_read_back_exactly() {
        let g = celld_base::guid::new_guid();
        assert!(matches!(Guid::new(&g), Guid::Bytes(_)), "{g}");
        for s in TEXTS {
            let mut out = String::from("left over");
            Guid::new(s).write_to(&mut out);
            assert_eq!(out, *s);
        }
        assert!(matches!(Guid::new(TEXTS[1]), Guid::Bytes(_)));
        for s in &TEXTS[4..11] {
            assert!(matches!(Guid::new(s), Guid::Text(_)), "{s}");
        }
    }

    /// Every record reads back as it was written, into a fresh record and
    /// into a scratch record that held another one before.
    #[test]
    fn records_read_back_as_they_were_written() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut strings = Interner::default();
        let mut scratch = pb::ActualLrp::default();
        let mut kept = Vec::new();
        for _ in 0..20_000 {
            let a = random_record(&mut rng);
            let s = StoredActual::new(&a, &mut strings);
            assert_eq!(s.to_pb(&a.process_guid, a.index, a.presence), a);
            s.fill(&a.process_guid, a.index, a.presence, &mut scratch);
            assert_eq!(scratch, a);
            kept.push(s);
        }
        // Once every record is gone, so is every string.
        assert!(!strings.strings().is_empty());
        for s in kept {
            s.release(&mut strings);
        }
        assert!(strings.strings().is_empty(), "{:?}", strings.strings());
    }
}
