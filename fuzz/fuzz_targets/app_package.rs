//! App packages, build caches and buildpacks as the lifecycle unpacks them:
//! zip, tar or gzipped tar told apart by their first bytes
//! (`lifecycle::archive::extract`). Nothing may land outside the destination
//! and no symlink left behind may resolve outside it.
#![no_main]

use celld::lifecycle::archive::{Limits, extract};
use celld_fuzz::Scratch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = Scratch::new();
    // Beside the scratch root, not in it: the archive is not extraction output.
    let archive = s.root.with_extension("pkg");
    std::fs::write(&archive, data).expect("write archive");
    // Small caps keep a gzip bomb from spending the run on one input.
    let limits = Limits { max_bytes: 1 << 20, max_entries: 1000 };
    let result = extract(&archive, &s.dest, &limits);
    let _ = std::fs::remove_file(&archive);
    if let Ok(stats) = result {
        assert!(stats.bytes <= limits.max_bytes && stats.entries <= limits.max_entries, "{stats:?}");
    }
    s.check(true);
});
