//! Golden bytes written from BBS's and Locket's field numbers (bbs and
//! locket at diego-release v2.73.0), independently of proto/diego: if a
//! number or type there drifts from BBS's, these stop decoding.

use celld_proto::diego::bbs as pb;
use celld_proto::locket as lk;
use prost::Message;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint field (int32, int64, uint32, bool, enum).
fn v(field: u32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(field << 3), &mut out);
    varint(value, &mut out);
    out
}

/// A length-delimited field (string, bytes, message).
fn ld(field: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from((field << 3) | 2), &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn actual_lrp_decodes_from_bbs_numbers() {
    let key = cat(&[ld(1, b"pg"), v(2, 3), ld(3, b"cf-apps")]);
    let ik = cat(&[ld(1, b"ig"), ld(2, b"cell")]);
    let port = cat(&[v(1, 8080), v(2, 61000), v(3, 61443), v(4, 61444)]);
    let net = cat(&[ld(1, b"10.0.0.1"), ld(2, &port), ld(3, b"10.255.0.2"), v(4, 1), ld(5, b"fd00::2")]);
    let tag = cat(&[ld(1, b"epoch"), v(2, 7)]);
    let tags_entry = cat(&[ld(1, b"source_id"), ld(2, b"app")]);
    let bytes = cat(&[
        ld(1, &key),
        ld(2, &ik),
        ld(3, &net),
        v(4, 2),
        ld(5, b"boom"),
        ld(6, b"RUNNING"),
        ld(7, b""),
        v(8, 1_700_000_000_000_000_000),
        ld(9, &tag),
        v(10, 1),
        ld(11, &ld(1, b"app.apps.internal")),
        ld(12, &tags_entry),
        v(13, 1),
        ld(14, b"z1"),
    ]);
    let lrp = pb::ActualLrp::decode(bytes.as_slice()).unwrap();
    let k = lrp.actual_lrp_key.unwrap();
    assert_eq!((k.process_guid.as_str(), k.index, k.domain.as_str()), ("pg", 3, "cf-apps"));
    assert_eq!(lrp.actual_lrp_instance_key.unwrap().cell_id, "cell");
    let n = lrp.actual_lrp_net_info.unwrap();
    assert_eq!(n.ports[0].host_tls_proxy_port, 61444);
    assert_eq!(n.preferred_address, pb::actual_lrp_net_info::PreferredAddress::Instance as i32);
    assert_eq!(n.instance_ipv6_address, "fd00::2");
    assert_eq!((lrp.crash_count, lrp.crash_reason.as_str(), lrp.state.as_str()), (2, "boom", "RUNNING"));
    assert_eq!(lrp.since, 1_700_000_000_000_000_000);
    assert_eq!(lrp.modification_tag.unwrap().index, 7);
    assert_eq!(lrp.presence, pb::actual_lrp::Presence::Evacuating as i32);
    assert_eq!(lrp.actual_lrp_internal_routes[0].hostname, "app.apps.internal");
    assert_eq!(lrp.metric_tags["source_id"], "app");
    assert_eq!(lrp.optional_routable, Some(pb::actual_lrp::OptionalRoutable::Routable(true)));
    assert_eq!(lrp.availability_zone, "z1");
}

#[test]
fn desired_lrp_decodes_from_bbs_numbers() {
    let route = cat(&[ld(1, b"cf-router"), ld(2, br#"[{"hostnames":["a.example.com"],"port":8080}]"#)]);
    let tcp = cat(&[v(1, 8080), v(2, 1000), v(3, 30000)]);
    let check = cat(&[ld(1, &ld(1, &tcp)), ld(2, b"HEALTH"), ld(3, &ld(2, &cat(&[v(1, 8080), ld(3, b"/ready")])))]);
    let tag = cat(&[ld(1, b"instance_id"), ld(2, &v(2, 2))]);
    let egress = cat(&[ld(1, b"tcp"), ld(2, b"0.0.0.0/0"), v(3, 443), ld(4, &cat(&[v(1, 1), v(2, 65535)])), v(6, 1)]);
    let bytes = cat(&[
        ld(1, b"pg-v1"),
        ld(2, b"cf-apps"),
        ld(3, b"preloaded:cflinuxfs4"),
        v(4, 2),
        ld(5, &cat(&[ld(1, b"LANG"), ld(2, b"en_US.UTF-8")])),
        ld(7, &ld(3, &cat(&[ld(1, b"/tmp/lifecycle/launcher")]))),
        v(10, 1024),
        v(11, 256),
        v(12, 10),
        v(13, 1),
        v(14, 8080),
        v(14, 2222),
        ld(15, &ld(1, &route)),
        ld(16, b"CELL"),
        ld(17, b"app-guid"),
        ld(20, &egress),
        ld(22, &cat(&[ld(2, b"https://x/lifecycle.tgz"), ld(3, b"/tmp/lifecycle"), ld(4, b"lc")])),
        ld(23, b"vcap"),
        ld(24, b"/etc/cf-system-certificates"),
        v(27, 60_000),
        ld(28, b"isolated"),
        v(29, 1024),
        ld(30, &ld(1, b"app:app-guid")),
        ld(33, &check),
        ld(34, &cat(&[ld(2, b"https://x/layer.tgz"), ld(3, b"/"), v(4, 1), v(5, 1)])),
        ld(35, &tag),
        ld(36, &cat(&[v(2, 0), v(3, 32)])),
        ld(37, &v(1, 16384)),
    ]);
    let d = pb::DesiredLrp::decode(bytes.as_slice()).unwrap();
    assert_eq!((d.process_guid.as_str(), d.instances, d.memory_mb, d.disk_mb), ("pg-v1", 2, 256, 1024));
    assert_eq!(d.environment_variables[0].value, "en_US.UTF-8");
    assert_eq!(d.action.unwrap().run_action.unwrap().path, "/tmp/lifecycle/launcher");
    assert_eq!((d.cpu_weight, d.privileged, d.ports.as_slice()), (10, true, &[8080, 2222][..]));
    assert!(String::from_utf8_lossy(&d.routes.unwrap().routes["cf-router"]).contains("a.example.com"));
    assert_eq!((d.log_source.as_str(), d.log_guid.as_str()), ("CELL", "app-guid"));
    let e = &d.egress_rules[0];
    assert_eq!((e.ports.as_slice(), e.port_range.unwrap().end, e.log), (&[443][..], 65535, true));
    assert_eq!(d.cached_dependencies[0].cache_key, "lc");
    assert_eq!(d.legacy_download_user, "vcap");
    assert_eq!(d.trusted_system_certificates_path, "/etc/cf-system-certificates");
    assert_eq!((d.start_timeout_ms, d.max_pids), (60_000, 1024));
    assert_eq!(d.placement_tags, ["isolated"]);
    assert_eq!(d.certificate_properties.unwrap().organizational_unit, ["app:app-guid"]);
    let c = d.check_definition.unwrap();
    assert_eq!(c.checks[0].tcp_check.unwrap().interval_ms, 30000);
    assert_eq!(c.readiness_checks[0].http_check.clone().unwrap().path, "/ready");
    assert_eq!(d.image_layers[0].layer_type, pb::image_layer::Type::Shared as i32);
    assert_eq!(d.metric_tags["instance_id"].dynamic, pb::metric_tag_value::DynamicValue::InstanceGuid as i32);
    assert_eq!(d.sidecars[0].memory_mb, 32);
    assert_eq!(d.log_rate_limit.unwrap().bytes_per_second, 16384);
}

#[test]
fn ports_are_not_packed() {
    // BBS declares `ports` unpacked: one tag per port, as gogo's Go decoder
    // of diego-release v2.73.0 writes them.
    let d = pb::DesiredLrp { ports: vec![8080, 2222], ..Default::default() };
    assert_eq!(d.encode_to_vec(), cat(&[v(14, 8080), v(14, 2222)]));
}

#[test]
fn requests_encode_with_bbs_numbers() {
    let key = pb::ActualLrpKey { process_guid: "pg".into(), index: 1, domain: "d".into() };
    let ik = pb::ActualLrpInstanceKey { instance_guid: "ig".into(), cell_id: "c".into() };
    let key_b = cat(&[ld(1, b"pg"), v(2, 1), ld(3, b"d")]);
    let ik_b = cat(&[ld(1, b"ig"), ld(2, b"c")]);

    let claim =
        pb::ClaimActualLrpRequest { process_guid: "pg".into(), index: 1, actual_lrp_instance_key: Some(ik.clone()) };
    assert_eq!(claim.encode_to_vec(), cat(&[ld(1, b"pg"), v(2, 1), ld(3, &ik_b)]));

    let crash = pb::CrashActualLrpRequest {
        actual_lrp_key: Some(key.clone()),
        actual_lrp_instance_key: Some(ik.clone()),
        error_message: "x".into(),
    };
    assert_eq!(crash.encode_to_vec(), cat(&[ld(1, &key_b), ld(2, &ik_b), ld(3, b"x")]));

    let start = pb::StartActualLrpRequest {
        actual_lrp_key: Some(key.clone()),
        actual_lrp_instance_key: Some(ik.clone()),
        actual_lrp_net_info: Some(pb::ActualLrpNetInfo { address: "a".into(), ..Default::default() }),
        optional_routable: Some(pb::start_actual_lrp_request::OptionalRoutable::Routable(true)),
        ..Default::default()
    };
    assert_eq!(start.encode_to_vec(), cat(&[ld(1, &key_b), ld(2, &ik_b), ld(3, &ld(1, b"a")), v(6, 1)]));

    let evac = pb::EvacuateRunningActualLrpRequest {
        actual_lrp_key: Some(key),
        actual_lrp_internal_routes: vec![pb::ActualLrpInternalRoute { hostname: "h".into() }],
        optional_routable: Some(pb::evacuate_running_actual_lrp_request::OptionalRoutable::Routable(true)),
        ..Default::default()
    };
    assert_eq!(evac.encode_to_vec(), cat(&[ld(1, &key_b), ld(5, &ld(1, b"h")), v(7, 1)]));

    let complete = pb::CompleteTaskRequest {
        task_guid: "t".into(),
        cell_id: "c".into(),
        failed: true,
        failure_reason: "r".into(),
        result: "{}".into(),
    };
    assert_eq!(complete.encode_to_vec(), cat(&[ld(1, b"t"), ld(2, b"c"), v(3, 1), ld(4, b"r"), ld(5, b"{}")]));

    let list = pb::ActualLrPsRequest {
        cell_id: "c".into(),
        optional_index: Some(pb::actual_lr_ps_request::OptionalIndex::Index(0)),
        ..Default::default()
    };
    // A set oneof is written even at its default, so index 0 still filters.
    assert_eq!(list.encode_to_vec(), cat(&[ld(2, b"c"), v(4, 0)]));
}

#[test]
fn responses_and_tasks_decode_from_bbs_numbers() {
    let error = cat(&[v(1, 15), ld(2, b"cannot claim")]);
    let r = pb::ActualLrpLifecycleResponse::decode(ld(1, &error).as_slice()).unwrap();
    assert_eq!(r.error.unwrap().r#type, pb::error::Type::ActualLrpCannotBeClaimed as i32);
    let r = pb::StartTaskResponse::decode(v(2, 1).as_slice()).unwrap();
    assert!(r.should_start);
    let r = pb::EvacuationResponse::decode(v(2, 1).as_slice()).unwrap();
    assert!(r.keep_container);

    let def = cat(&[ld(1, b"preloaded:cflinuxfs4"), v(5, 512), ld(11, b"/tmp/result.json"), ld(20, b"t")]);
    let task = cat(&[ld(1, &def), ld(2, b"tg"), ld(3, b"cf-tasks"), v(7, 2), ld(8, b"cell"), ld(9, b"ok"), v(12, 1)]);
    let t = pb::Task::decode(task.as_slice()).unwrap();
    assert_eq!((t.task_guid.as_str(), t.state, t.cell_id.as_str(), t.rejection_count), ("tg", 2, "cell", 1));
    let d = t.task_definition.unwrap();
    assert_eq!((d.memory_mb, d.result_file.as_str(), d.placement_tags[0].as_str()), (512, "/tmp/result.json", "t"));
}

#[test]
fn error_types_have_bbs_numbers() {
    use pb::error::Type as T;
    let table = [
        (T::UnknownError, 0),
        (T::InvalidRecord, 3),
        (T::InvalidRequest, 4),
        (T::InvalidResponse, 5),
        (T::InvalidProtobufMessage, 6),
        (T::InvalidJson, 7),
        (T::FailedToOpenEnvelope, 8),
        (T::InvalidStateTransition, 9),
        (T::ResourceConflict, 11),
        (T::ResourceExists, 12),
        (T::ResourceNotFound, 13),
        (T::RouterError, 14),
        (T::ActualLrpCannotBeClaimed, 15),
        (T::ActualLrpCannotBeStarted, 16),
        (T::ActualLrpCannotBeCrashed, 17),
        (T::ActualLrpCannotBeFailed, 18),
        (T::ActualLrpCannotBeRemoved, 19),
        (T::ActualLrpCannotBeUnclaimed, 21),
        (T::RunningOnDifferentCell, 24),
        (T::GuidGeneration, 26),
        (T::Deserialize, 27),
        (T::Deadlock, 28),
        (T::Unrecoverable, 29),
        (T::LockCollision, 30),
        (T::Timeout, 31),
    ];
    for (t, n) in table {
        assert_eq!(t as i32, n, "{t:?}");
    }
}

#[test]
fn locket_messages_have_lockets_numbers() {
    let res = lk::Resource {
        key: "k".into(),
        owner: "o".into(),
        value: "v".into(),
        r#type: "presence".into(),
        type_code: lk::TypeCode::Presence as i32,
    };
    let res_b = cat(&[ld(1, b"k"), ld(2, b"o"), ld(3, b"v"), ld(4, b"presence"), v(5, 2)]);
    assert_eq!(res.encode_to_vec(), res_b);
    let req = lk::LockRequest { resource: Some(res), ttl_in_seconds: 15 };
    assert_eq!(req.encode_to_vec(), cat(&[ld(1, &res_b), v(2, 15)]));
    let all = lk::FetchAllRequest { r#type: String::new(), type_code: lk::TypeCode::Presence as i32 };
    assert_eq!(all.encode_to_vec(), v(2, 2));
}

#[test]
fn locket_keeps_its_grpc_path() {
    // The package is on the wire: /models.Locket/Lock.
    assert_eq!(lk::locket_server::SERVICE_NAME, "models.Locket");
}
