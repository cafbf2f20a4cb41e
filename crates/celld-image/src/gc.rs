//! Collection: images no container uses (the `in_use` callback) and no lease
//! holds go, oldest-used first, until the store is under its limit (or its
//! filesystem 15 % free); then every layer no kept image refers to.

use std::collections::HashSet;

use crate::store::{GcReport, ImageStore, State, Tmp};

/// With `max_bytes` 0, the store's filesystem keeps this share free.
const AUTO_FREE_PERCENT: u64 = 15;

impl ImageStore {
    /// Collects now what the limit asks for; returns what went.
    pub fn gc(&self) -> GcReport {
        self.collect(false)
    }

    /// Collects every image no container uses and no lease holds, however
    /// far under its limit the store is (an operator's `cellctl garden gc`).
    pub fn gc_unused(&self) -> GcReport {
        self.collect(true)
    }

    fn collect(&self, all_unused: bool) -> GcReport {
        let in_use = (self.inner.in_use)();
        let inner = &self.inner;
        // What goes is moved aside under the lock and deleted after it:
        // deleting a layer's tree takes long enough to hold up every create.
        let mut doomed = Vec::new();
        let mut st = inner.lock();
        let to_free = match inner.cfg.max_bytes {
            _ if all_unused => u64::MAX,
            0 => auto_excess(&inner.cfg.dir),
            max => st.total.saturating_sub(max),
        };
        let mut report = GcReport::default();
        let mut candidates: Vec<(std::time::SystemTime, String)> = st
            .images
            .iter()
            .filter(|(id, _)| !in_use.contains(*id) && !st.leases.contains_key(*id))
            .map(|(id, r)| (r.last_used, id.clone()))
            .collect();
        candidates.sort();
        for (_, id) in candidates {
            if report.bytes_freed >= to_free {
                break;
            }
            let Some(rec) = st.images.remove(&id) else { continue };
            doomed.extend(inner.move_aside(&inner.record_path(&id)));
            for (shifted, size) in &rec.flats {
                doomed.extend(inner.move_aside(&inner.flat_dir(&id, *shifted)));
                st.total -= size;
                report.bytes_freed += size;
            }
            report.images_removed += 1;
            tracing::info!(id, "image collected");
            let (n, b) = sweep(inner, &mut st, &mut doomed);
            report.layers_removed += n;
            report.bytes_freed += b;
        }
        let (n, b) = sweep(inner, &mut st, &mut doomed);
        report.layers_removed += n;
        report.bytes_freed += b;
        drop(st);
        drop(doomed);
        report
    }

    /// Removes layers no image refers to (left by a failed pull).
    pub(crate) fn sweep_orphans(&self) {
        let mut doomed = Vec::new();
        let mut st = self.inner.lock();
        sweep(&self.inner, &mut st, &mut doomed);
        drop(st);
        drop(doomed);
    }
}

/// Drops layers no image refers to from `st`; their directories go to `doomed`.
fn sweep(inner: &crate::store::Inner, st: &mut State, doomed_dirs: &mut Vec<Tmp>) -> (usize, u64) {
    let wanted: HashSet<String> = st.images.values().flat_map(|i| i.layers.iter().cloned()).collect();
    let doomed: Vec<String> =
        st.layers.keys().filter(|l| !wanted.contains(*l) && !st.pinned.contains_key(*l)).cloned().collect();
    let mut freed = 0;
    for l in &doomed {
        doomed_dirs.extend(inner.move_aside(&inner.layer_dir(l)));
        freed += st.layers.remove(l).unwrap_or(0);
        doomed_dirs.extend(inner.move_aside(&inner.shifted_dir(l)));
        freed += st.shifted.remove(l).unwrap_or(0);
    }
    st.total -= freed;
    (doomed.len(), freed)
}

/// Bytes to free so the filesystem holding `dir` is 15 % free.
fn auto_excess(dir: &std::path::Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return 0 };
    // SAFETY: zeroed statvfs is a valid out-parameter; a valid C path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return 0;
    }
    let (size, avail) = (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize);
    (size * AUTO_FREE_PERCENT / 100).saturating_sub(avail)
}
