//! celld.v1 requests as the gRPC services receive them: prost decoding, then
//! the pure checks and conversions a request meets before it touches state
//! (guid rules, ASG egress rules → net-out rules → nft, health checks, the
//! instance and task environments, app names → route hosts). The first byte
//! picks the message.
#![no_main]

use celld::executor::container::egress_rule;
use celld::executor::env::{lrp_env, task_env};
use celld::executor::health::Probe;
use celld::grpc::pb;
use celld::network::rules::allowances;
use celld::scheduler::model;
use celld_fuzz::assert_nft_safe;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn egress(rules: &[pb::EgressRule]) {
    let Ok(rules) = rules.iter().map(egress_rule).collect::<Result<Vec<_>, _>>() else { return };
    if let Ok(allows) = allowances(&rules, "fuzz") {
        for a in &allows {
            assert_nft_safe(&a.nft());
        }
    }
}

fn desired(d: &pb::DesiredLrp) {
    let _ = model::validate_guid("process_guid", &d.process_guid);
    egress(&d.egress_rules);
    if let Some(c) = &d.check_definition {
        for check in c.checks.iter().chain(&c.readiness_checks) {
            let _ = Probe::from_check(check);
        }
    }
    let env = lrp_env(d, 0, "instance", "10.0.0.1", "10.255.0.2", &[]);
    assert!(env.iter().all(|e| e.contains('=')));
    let _ = model::validate(&model::new_unclaimed(d, 0, 0));
}

fn key(k: Option<&pb::ActualLrpKey>) {
    if let Some(k) = k {
        let _ = model::validate_guid("process_guid", &k.process_guid);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 10 {
        0 => {
            if let Ok(d) = pb::DesiredLrp::decode(body) {
                desired(&d);
            }
        }
        1 => {
            if let Ok(w) = pb::Work::decode(body) {
                for start in &w.lrps {
                    if let Some(d) = &start.desired_lrp {
                        desired(d);
                    }
                }
                for t in &w.tasks {
                    egress(&t.egress_rules);
                    let _ = task_env(t, "10.0.0.1", "10.255.0.2");
                }
            }
        }
        2 => {
            if let Ok(lrp) = pb::ActualLrp::decode(body) {
                let _ = model::validate(&lrp);
                let _ = model::next_crash_count(&lrp, i64::MAX);
                let _ = model::next_crash_count(&lrp, i64::MIN);
            }
        }
        3 => {
            if let Ok(r) = pb::ClaimActualLrpRequest::decode(body) {
                key(r.key.as_ref());
            }
        }
        4 => {
            if let Ok(r) = pb::CrashActualLrpRequest::decode(body) {
                key(r.key.as_ref());
                let reason = model::truncate_reason(&r.error_message);
                assert!(r.error_message.starts_with(&reason));
            }
        }
        5 => {
            if let Ok(r) = pb::StageRequest::decode(body) {
                let _ = celld::staging::validate_guid("app_guid", &r.app_guid);
            }
        }
        6 => {
            if let Ok(r) = pb::CreateAppRequest::decode(body) {
                let _ = celld::apps::validate_space(&r.space);
                let _ = celld::apps::validate_app_name(&r.name);
                if let Ok(host) = celld::apps::host_label(&r.name) {
                    assert!(celld::apps::validate_host_label(&host).is_ok(), "{:?} -> {host:?}", r.name);
                }
                for name in r.env.keys() {
                    let _ = celld::apps::validate_env_name(name);
                }
            }
        }
        7 => {
            if let Ok(t) = pb::Task::decode(body) {
                let _ = model::validate_guid("task_guid", &t.task_guid);
                egress(&t.egress_rules);
                let _ = task_env(&t, "10.0.0.1", "10.255.0.2");
            }
        }
        8 => {
            let _ = pb::UpdateDesiredLrpRequest::decode(body);
        }
        _ => {
            if let Ok(r) = pb::CreateUserProvidedServiceRequest::decode(body) {
                let _ = serde_json::from_str::<serde_json::Value>(&r.credentials_json);
            }
        }
    }
});
