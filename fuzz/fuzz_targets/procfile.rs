//! An app's Procfile: a YAML map of process type to command.
#![no_main]

use celld::lifecycle::builder::parse_procfile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = parse_procfile(data) {
        let doc = serde_yaml_ng::to_string(&map).expect("serialize");
        assert_eq!(parse_procfile(doc.as_bytes()).as_ref(), Ok(&map), "{doc}");
    }
});
