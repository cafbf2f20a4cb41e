//! Diego's wire against the fake BBS and Locket, over real sockets with
//! mutual TLS: who gets in, the ActualLRP and task transitions and their
//! errors, revision fallback, BBS down and back, the presence in Locket.

mod common;

use std::time::Duration;

use celld::diego_wire::bbs::{BbsClient, BbsError, BbsTimeouts, ErrorType};
use celld::diego_wire::{CellCapacity, CellPresence, Presence, PresenceConfig, TlsIdentity, Usage};
use celld_proto::diego::bbs as pb;
use common::diego::{DiegoCerts, FakeBbsOptions};
use rustls::pki_types::pem::PemObject;

const CELL: &str = "cell-z1-0";

fn client(certs: &DiegoCerts, url: &str) -> BbsClient {
    let timeouts = BbsTimeouts { connect: Duration::from_secs(2), request: Duration::from_secs(3) };
    BbsClient::from_pem(url, &certs.cell, timeouts).unwrap()
}

fn desired(pg: &str, instances: i32) -> pb::DesiredLrp {
    pb::DesiredLrp {
        process_guid: pg.into(),
        domain: "cf-apps".into(),
        root_fs: "preloaded:cflinuxfs4".into(),
        instances,
        memory_mb: 256,
        disk_mb: 512,
        action: Some(pb::Action {
            run_action: Some(pb::RunAction { path: "/bin/true".into(), user: "vcap".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn key(pg: &str, index: i32) -> pb::ActualLrpKey {
    pb::ActualLrpKey { process_guid: pg.into(), index, domain: "cf-apps".into() }
}

fn instance(guid: &str) -> pb::ActualLrpInstanceKey {
    pb::ActualLrpInstanceKey { instance_guid: guid.into(), cell_id: CELL.into() }
}

fn net_info() -> pb::ActualLrpNetInfo {
    pb::ActualLrpNetInfo {
        address: "10.0.0.5".into(),
        ports: vec![pb::PortMapping { container_port: 8080, host_port: 61001, ..Default::default() }],
        instance_address: "10.255.0.2".into(),
        ..Default::default()
    }
}

fn start_req(pg: &str, guid: &str) -> pb::StartActualLrpRequest {
    pb::StartActualLrpRequest {
        actual_lrp_key: Some(key(pg, 0)),
        actual_lrp_instance_key: Some(instance(guid)),
        actual_lrp_net_info: Some(net_info()),
        optional_routable: Some(pb::start_actual_lrp_request::OptionalRoutable::Routable(true)),
        ..Default::default()
    }
}

fn kind(r: Result<impl std::fmt::Debug, BbsError>) -> ErrorType {
    match r {
        Err(e) => e.kind().unwrap_or_else(|| panic!("expected BBS's error, got {e}")),
        Ok(v) => panic!("expected BBS's error, got {v:?}"),
    }
}

async fn lrp_state(bbs: &BbsClient, pg: &str) -> pb::ActualLrp {
    let filter = pb::ActualLrPsRequest { process_guid: pg.into(), ..Default::default() };
    let mut all = bbs.actual_lrps(&filter).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

#[tokio::test]
async fn a_client_without_the_cas_certificate_is_refused() {
    let certs = DiegoCerts::new("refused");
    let fake = certs.fake_bbs(FakeBbsOptions::default()).await;

    // No client certificate at all.
    let no_cert =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates({
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls::pki_types::CertificateDer::pem_file_iter(&certs.server.ca).unwrap() {
                    roots.add(c.unwrap()).unwrap();
                }
                roots
            })
            .with_no_client_auth();
    let bbs = BbsClient::new(&fake.url(), &no_cert, BbsTimeouts::default()).unwrap();
    let e = bbs.ping().await.unwrap_err();
    assert!(e.is_transient() && matches!(e, BbsError::Transport { .. }), "{e}");

    // A certificate another CA signed.
    let stranger = TlsIdentity::load(&certs.stranger(), Usage::Client).unwrap();
    let bbs = BbsClient::new(&fake.url(), &stranger.client_config().unwrap(), BbsTimeouts::default()).unwrap();
    assert!(matches!(bbs.ping().await, Err(BbsError::Transport { .. })));
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());

    // The cell's own identity gets in.
    assert!(client(&certs, &fake.url()).ping().await.unwrap());
    // A bad file is named before anything is dialled; plain http is refused.
    let mut broken = certs.cell.clone();
    broken.key = certs.dir.join("missing-key.pem");
    let e = BbsClient::from_pem(&fake.url(), &broken, BbsTimeouts::default()).unwrap_err();
    assert!(e.to_string().contains("missing-key.pem"), "{e}");
    let e = BbsClient::from_pem(&format!("http://{}", fake.addr), &certs.cell, BbsTimeouts::default()).unwrap_err();
    assert!(matches!(e, BbsError::BadAddress { .. }), "{e}");
    assert_eq!(fake.calls(), ["/v1/ping"]);
}

#[tokio::test]
async fn claim_start_crash_remove_follow_bbs_rules() {
    let certs = DiegoCerts::new("lrp");
    let fake = certs.fake_bbs(FakeBbsOptions::default()).await;
    let bbs = client(&certs, &fake.url());
    bbs.desire_lrp(&desired("pg-1", 1)).await.unwrap();
    assert_eq!(kind(bbs.desire_lrp(&desired("pg-1", 1)).await), ErrorType::ResourceExists);
    assert_eq!(bbs.desired_lrp_by_process_guid("pg-1").await.unwrap().memory_mb, 256);
    assert_eq!(kind(bbs.desired_lrp_by_process_guid("nope").await), ErrorType::ResourceNotFound);

    assert_eq!(lrp_state(&bbs, "pg-1").await.state, "UNCLAIMED");
    bbs.claim_actual_lrp(&key("pg-1", 0), &instance("ig-a")).await.unwrap();
    // Claiming again with the same instance is fine; another instance is not.
    bbs.claim_actual_lrp(&key("pg-1", 0), &instance("ig-a")).await.unwrap();
    assert_eq!(
        kind(bbs.claim_actual_lrp(&key("pg-1", 0), &instance("ig-b")).await),
        ErrorType::ActualLrpCannotBeClaimed
    );
    assert_eq!(kind(bbs.claim_actual_lrp(&key("pg-x", 0), &instance("ig-a")).await), ErrorType::ResourceNotFound);

    bbs.start_actual_lrp(&start_req("pg-1", "ig-a")).await.unwrap();
    let lrp = lrp_state(&bbs, "pg-1").await;
    assert_eq!(lrp.state, "RUNNING");
    assert_eq!(lrp.actual_lrp_net_info.unwrap().ports[0].host_port, 61001);
    assert_eq!(lrp.optional_routable, Some(pb::actual_lrp::OptionalRoutable::Routable(true)));
    assert_eq!(kind(bbs.start_actual_lrp(&start_req("pg-1", "ig-b")).await), ErrorType::ActualLrpCannotBeStarted);
    assert_eq!(bbs.actual_lrps_by_cell(CELL).await.unwrap().len(), 1);

    // Crashes 1 and 2 restart at once (UNCLAIMED); the third stays CRASHED.
    for n in 1..=3 {
        // The first crash is ig-a's, RUNNING since above.
        let guid = if n == 1 { "ig-a".to_string() } else { format!("ig-{n}") };
        if n > 1 {
            bbs.claim_actual_lrp(&key("pg-1", 0), &instance(&guid)).await.unwrap_or_else(|e| panic!("claim {n}: {e}"));
            bbs.start_actual_lrp(&start_req("pg-1", &guid)).await.unwrap();
        }
        bbs.crash_actual_lrp(&key("pg-1", 0), &instance(&guid), "APP/PROC/WEB: Exited with status 1").await.unwrap();
        let lrp = lrp_state(&bbs, "pg-1").await;
        assert_eq!(lrp.crash_count, n);
        assert_eq!(lrp.state, if n < 3 { "UNCLAIMED" } else { "CRASHED" }, "after crash {n}");
        assert_eq!(lrp.actual_lrp_instance_key.unwrap_or_default().instance_guid, "");
    }
    assert_eq!(
        kind(bbs.crash_actual_lrp(&key("pg-1", 0), &instance("ig-3"), "again").await),
        ErrorType::ActualLrpCannotBeCrashed
    );
    assert_eq!(
        kind(bbs.claim_actual_lrp(&key("pg-1", 0), &instance("ig-9")).await),
        ErrorType::ActualLrpCannotBeClaimed,
        "a CRASHED instance waits for convergence"
    );

    // Remove needs the holder's instance key.
    fake.state().actual.get_mut(&("pg-1".to_string(), 0)).unwrap().state = "UNCLAIMED".into();
    bbs.claim_actual_lrp(&key("pg-1", 0), &instance("ig-r")).await.unwrap();
    assert_eq!(kind(bbs.remove_actual_lrp(&key("pg-1", 0), &instance("ig-other")).await), ErrorType::ResourceNotFound);
    bbs.remove_actual_lrp(&key("pg-1", 0), &instance("ig-r")).await.unwrap();
    assert!(bbs.actual_lrps_by_cell(CELL).await.unwrap().is_empty());
    assert!(fake.calls().contains(&"/v1/actual_lrps/start.r1".to_string()));
}

#[tokio::test]
async fn evacuation_keeps_the_container_until_the_replacement_runs() {
    let certs = DiegoCerts::new("evac");
    let fake = certs.fake_bbs(FakeBbsOptions::default()).await;
    let bbs = client(&certs, &fake.url());
    bbs.desire_lrp(&desired("pg-e", 1)).await.unwrap();
    bbs.claim_actual_lrp(&key("pg-e", 0), &instance("ig-old")).await.unwrap();
    bbs.start_actual_lrp(&start_req("pg-e", "ig-old")).await.unwrap();

    let evac = pb::EvacuateRunningActualLrpRequest {
        actual_lrp_key: Some(key("pg-e", 0)),
        actual_lrp_instance_key: Some(instance("ig-old")),
        actual_lrp_net_info: Some(net_info()),
        ..Default::default()
    };
    assert!(bbs.evacuate_running_actual_lrp(&evac).await.unwrap(), "keep it while the replacement starts");
    let all =
        bbs.actual_lrps(&pb::ActualLrPsRequest { process_guid: "pg-e".into(), ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 2, "an ordinary UNCLAIMED and an EVACUATING copy: {all:?}");

    // The replacement runs on another cell: the old one may go.
    let other = pb::ActualLrpInstanceKey { instance_guid: "ig-new".into(), cell_id: "cell-z2-0".into() };
    bbs.claim_actual_lrp(&key("pg-e", 0), &other).await.unwrap();
    let mut start = start_req("pg-e", "ig-new");
    start.actual_lrp_instance_key = Some(other);
    bbs.start_actual_lrp(&start).await.unwrap();
    assert!(!bbs.evacuate_running_actual_lrp(&evac).await.unwrap());
    assert_eq!(
        kind(bbs.remove_evacuating_actual_lrp(&key("pg-e", 0), &instance("ig-old")).await),
        ErrorType::ResourceNotFound
    );
    assert!(fake.state().evacuating.is_empty());
}

#[tokio::test]
async fn tasks_go_pending_running_completed() {
    let certs = DiegoCerts::new("task");
    let fake = certs.fake_bbs(FakeBbsOptions::default()).await;
    let bbs = client(&certs, &fake.url());
    let def = pb::TaskDefinition {
        root_fs: "preloaded:cflinuxfs4".into(),
        action: desired("x", 0).action,
        result_file: "/tmp/result.json".into(),
        ..Default::default()
    };
    bbs.desire_task("tg-1", "cf-tasks", &def).await.unwrap();
    assert_eq!(
        kind(bbs.desire_task("tg-bad", "cf-tasks", &pb::TaskDefinition::default()).await),
        ErrorType::InvalidRequest
    );

    assert!(bbs.start_task("tg-1", CELL).await.unwrap());
    assert!(!bbs.start_task("tg-1", CELL).await.unwrap(), "already RUNNING here: don't start again");
    assert_eq!(kind(bbs.start_task("tg-1", "cell-other").await), ErrorType::InvalidStateTransition);
    assert_eq!(kind(bbs.start_task("tg-nope", CELL).await), ErrorType::ResourceNotFound);
    assert_eq!(bbs.tasks_by_cell(CELL).await.unwrap().len(), 1);

    assert_eq!(kind(bbs.complete_task("tg-1", "cell-other", false, "", "").await), ErrorType::RunningOnDifferentCell);
    bbs.complete_task("tg-1", CELL, false, "", "{\"ok\":true}").await.unwrap();
    let t = bbs.task_by_guid("tg-1").await.unwrap();
    assert_eq!(t.state, pb::task::State::Completed as i32);
    assert_eq!(t.result, "{\"ok\":true}");
    assert_eq!(kind(bbs.complete_task("tg-1", CELL, false, "", "").await), ErrorType::InvalidStateTransition);

    bbs.desire_task("tg-2", "cf-tasks", &def).await.unwrap();
    bbs.start_task("tg-2", CELL).await.unwrap();
    bbs.reject_task("tg-2", "insufficient resources").await.unwrap();
    let t = bbs.task_by_guid("tg-2").await.unwrap();
    assert_eq!((t.state, t.rejection_count), (pb::task::State::Pending as i32, 1));
}

#[tokio::test]
async fn an_older_bbs_gets_the_older_revisions() {
    let certs = DiegoCerts::new("revs");
    let fake = certs.fake_bbs(FakeBbsOptions { old_revisions_only: true }).await;
    let bbs = client(&certs, &fake.url());
    bbs.desire_lrp(&desired("pg-o", 1)).await.unwrap();
    bbs.claim_actual_lrp(&key("pg-o", 0), &instance("ig-o")).await.unwrap();
    bbs.start_actual_lrp(&start_req("pg-o", "ig-o")).await.unwrap();
    bbs.start_actual_lrp(&start_req("pg-o", "ig-o")).await.unwrap();
    assert_eq!(bbs.desired_lrp_by_process_guid("pg-o").await.unwrap().process_guid, "pg-o");
    let calls = fake.calls();
    let starts: Vec<_> = calls.iter().filter(|c| c.starts_with("/v1/actual_lrps/start")).collect();
    assert_eq!(
        starts,
        ["/v1/actual_lrps/start.r1", "/v1/actual_lrps/start", "/v1/actual_lrps/start"],
        "the 404 is remembered"
    );
    assert!(calls.contains(&"/v1/desired_lrps/get_by_process_guid.r2".to_string()), "{calls:?}");
    assert_eq!(lrp_state(&bbs, "pg-o").await.state, "RUNNING");
}

#[tokio::test]
async fn bbs_down_is_transient_and_calls_work_again_after() {
    let certs = DiegoCerts::new("down");
    let fake = certs.fake_bbs(FakeBbsOptions::default()).await;
    let bbs = client(&certs, &fake.url());
    assert!(bbs.ping().await.unwrap());
    fake.set_down(true);
    let e = bbs.ping().await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("/v1/ping"), "{e}");
    fake.set_down(false);
    assert!(bbs.ping().await.unwrap());
    // BBS's refusals are not transient.
    let e = bbs.start_task("nope", CELL).await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
}

fn presence_json() -> String {
    CellPresence::new(
        CELL,
        "https://127.0.0.1:1801",
        "https://127.0.0.1:1801",
        "z1",
        CellCapacity { memory_mb: 1024, disk_mb: 4096, containers: 10 },
        &["cflinuxfs4".to_string()],
        &["docker".to_string()],
    )
    .to_json()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn presence_is_held_refreshed_released_and_collides_until_its_ttl() {
    let certs = DiegoCerts::new("presence");
    let locket = certs.fake_locket().await;
    let cell = certs.cell_identity();
    let config = PresenceConfig {
        ttl: Duration::from_secs(2),
        retry_interval: Duration::from_millis(200),
        ..PresenceConfig::new(&locket.address(), CELL)
    };
    let refreshes = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r = refreshes.clone();
    let first = Presence::start(config.clone(), &cell, move || {
        r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        presence_json()
    })
    .unwrap();
    wait_until("the presence is in Locket", || locket.resource(CELL).is_some()).await;
    let res = locket.resource(CELL).unwrap();
    assert_eq!((res.owner.as_str(), res.r#type.as_str(), res.type_code), (first.owner(), "presence", 2));
    let json: CellPresence = serde_json::from_str(&res.value).unwrap();
    assert_eq!(json.capacity.unwrap().containers, 10);
    wait_until("it is refreshed", || refreshes.load(std::sync::atomic::Ordering::SeqCst) >= 3).await;
    assert!(first.is_held());

    first.release().await.unwrap();
    assert!(locket.resource(CELL).is_none(), "released at once");

    // A crashed run leaves its lock until the TTL; the next run collides till then.
    let crashed = Presence::start(config.clone(), &cell, presence_json).unwrap();
    wait_until("the crashed run holds it", || crashed.is_held()).await;
    let crashed_owner = crashed.owner().to_string();
    drop(crashed);
    let next = Presence::start(config.clone(), &cell, presence_json).unwrap();
    assert_ne!(next.owner(), crashed_owner, "a fresh owner per start");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!next.is_held(), "collides while the old lock lives");
    assert_eq!(locket.resource(CELL).unwrap().owner, crashed_owner);
    wait_until("the old lock expires and the new run takes it", || next.is_held()).await;
    assert_eq!(locket.resource(CELL).unwrap().owner, next.owner());
    next.release().await.unwrap();
}

#[tokio::test]
async fn locket_refuses_what_locket_refuses() {
    use celld_proto::locket as lk;
    let certs = DiegoCerts::new("locketrules");
    let locket = certs.fake_locket().await;
    let channel = celld::diego_wire::locket::channel(&locket.address(), &certs.cell_identity()).unwrap();
    let mut c = lk::locket_client::LocketClient::new(channel);
    let res = |owner: &str, ty: &str, code: lk::TypeCode| lk::Resource {
        key: "k".into(),
        owner: owner.into(),
        value: "v".into(),
        r#type: ty.into(),
        type_code: code as i32,
    };
    let lock = |r: lk::Resource, ttl: i64| lk::LockRequest { resource: Some(r), ttl_in_seconds: ttl };
    let msg = |e: tonic::Status| e.message().to_string();
    assert_eq!(msg(c.lock(lock(res("a", "", lk::TypeCode::Lock), 0)).await.unwrap_err()), "invalid-ttl");
    assert_eq!(msg(c.lock(lock(res("", "", lk::TypeCode::Lock), 5)).await.unwrap_err()), "invalid-owner");
    assert_eq!(msg(c.lock(lock(res("a", "lock", lk::TypeCode::Presence), 5)).await.unwrap_err()), "invalid-type");
    c.lock(lock(res("a", "", lk::TypeCode::Lock), 5)).await.unwrap();
    let e = c.lock(lock(res("b", "", lk::TypeCode::Lock), 5)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::AlreadyExists, "lock-collision"));
    assert_eq!(
        msg(c.release(lk::ReleaseRequest { resource: Some(res("b", "", lk::TypeCode::Lock)) }).await.unwrap_err()),
        "lock-collision"
    );
    c.release(lk::ReleaseRequest { resource: Some(res("a", "", lk::TypeCode::Lock)) }).await.unwrap();
    assert_eq!(msg(c.fetch(lk::FetchRequest { key: "k".into() }).await.unwrap_err()), "resource-not-found");

    // A stranger's certificate is refused at the handshake.
    let stranger = TlsIdentity::load(&certs.stranger(), Usage::Client).unwrap();
    let channel = celld::diego_wire::locket::channel(&locket.address(), &stranger).unwrap();
    let mut c = lk::locket_client::LocketClient::new(channel);
    assert!(c.fetch(lk::FetchRequest { key: "k".into() }).await.is_err());
}
