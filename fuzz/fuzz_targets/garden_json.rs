//! Garden request bodies as the server reads them (`serde_json::from_slice`
//! into each body type), the hijacked process route's spec and stdin lines,
//! and query strings. The first byte picks the type.
#![no_main]

use celld::garden::server::parse_query;
use celld::garden::types::{ContainerSpec, NetIn, NetOutRule, ProcessPayload, ProcessSpec, PropertyValue, StopRequest};
use libfuzzer_sys::fuzz_target;

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug>(body: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(body) {
        // What we accepted we can write back and read again as the same value.
        let text = serde_json::to_vec(&v).expect("serialize accepted body");
        let again: T = serde_json::from_slice(&text).expect("re-read written body");
        assert_eq!(v, again);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 9 {
        0 => roundtrip::<ContainerSpec>(body),
        1 => {
            if let Ok(spec) = serde_json::from_slice::<ProcessSpec>(body) {
                let _ = celld::gardener::process_env(&["A=1".to_string()], &spec);
            }
        }
        2 => {
            // stdin, signal and resize lines of an attached process.
            for line in body.split(|&b| b == b'\n') {
                let _ = serde_json::from_slice::<ProcessPayload>(line);
            }
        }
        3 => roundtrip::<StopRequest>(body),
        4 => roundtrip::<PropertyValue>(body),
        5 => roundtrip::<NetIn>(body),
        6 => roundtrip::<NetOutRule>(body),
        7 => roundtrip::<Vec<NetOutRule>>(body),
        _ => {
            if let Ok(q) = std::str::from_utf8(body) {
                let _ = parse_query(Some(q));
                if let Some(h) = parse_query(Some(q)).get("handle") {
                    let _ = celld::gardener::validate_handle(h);
                }
            }
            let _ = serde_json::from_slice::<u64>(body);
        }
    }
});
