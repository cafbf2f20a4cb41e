//! Net-out rules as a Garden client sends them (JSON, one rule or a list),
//! turned into firewall allowances and nft text. Whatever the input, the
//! statements hold only numbers, addresses, keywords and the filtered log
//! prefix, and never more than MAX_STATEMENTS.
#![no_main]

use celld::garden::types::NetOutRule;
use celld::network::rules::{MAX_STATEMENTS, allowances, log_prefix};
use celld_fuzz::assert_nft_safe;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first line is the container's handle (it names the log prefix).
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let handle = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();
    let prefix = log_prefix(&handle);
    assert!(prefix.len() <= 29, "{prefix:?}");
    let rules = match serde_json::from_slice::<Vec<NetOutRule>>(body) {
        Ok(rules) => rules,
        Err(_) => match serde_json::from_slice::<NetOutRule>(body) {
            Ok(rule) => vec![rule],
            Err(_) => return,
        },
    };
    if let Ok(allows) = allowances(&rules, &handle) {
        assert!(allows.len() <= MAX_STATEMENTS);
        for a in &allows {
            assert_nft_safe(&a.nft());
        }
    }
});
