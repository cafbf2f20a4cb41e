//! What a staging leaves for the launch: a buildpack's `launch.yml`, the
//! droplet's `staging_info.yml` (JSON read as YAML, as the launcher does),
//! and the `VCAP_APPLICATION` / `VCAP_SERVICES` JSON the launcher rewrites.
//! The first byte picks the parser.
#![no_main]

use celld::lifecycle::builder::parse_launch_yml;
use celld::lifecycle::launcher::vcap_application_for_instance;
use celld::lifecycle::{StagingInfo, database_url, to_go_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 4 {
        0 => {
            let _ = parse_launch_yml(body);
        }
        1 => {
            if let Ok(info) = serde_yaml_ng::from_slice::<StagingInfo>(body) {
                // The builder writes it with Go's escaping; the launcher reads
                // that back as YAML: the value must survive the trip.
                let json = to_go_json(&info).expect("serialize staging info");
                let again: StagingInfo = serde_yaml_ng::from_str(&json).expect("re-read staging info");
                assert_eq!(info, again, "{json}");
            }
        }
        2 => {
            let text = String::from_utf8_lossy(body);
            let (current, rest) = text.split_once('\n').unwrap_or((&text, ""));
            let mut fields = rest.splitn(3, '\n');
            let (guid, port, index) = (fields.next().unwrap_or(""), fields.next(), fields.next());
            if let Some(v) = vcap_application_for_instance(Some(current), guid, port, index) {
                let obj: serde_json::Value = serde_json::from_str(&v).expect("VCAP_APPLICATION is JSON");
                assert!(obj.is_object());
            }
        }
        _ => {
            let _ = database_url(&String::from_utf8_lossy(body));
        }
    }
});
