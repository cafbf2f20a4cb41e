//! The YAML a buildpack's `bin/release` prints: only
//! `default_process_types` is read, and it must be a map of strings.
#![no_main]

use celld::lifecycle::builder::parse_release;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(types) = parse_release(data) {
        // What was accepted, written back as a release, reads the same.
        let doc = serde_yaml_ng::to_string(&std::collections::BTreeMap::from([("default_process_types", &types)]))
            .expect("serialize");
        assert_eq!(parse_release(doc.as_bytes()).as_ref(), Ok(&types), "{doc}");
    }
});
