//! The CF API of `celld --local` (what the cf CLI speaks), end to end on a
//! real daemon: the root document, tokens, and a push through the v3 API in
//! the CLI's order (apply_manifest → resource_matches → package upload →
//! build → current_droplet → restart → stats), served through the router.

mod common;

use std::time::Duration;

use common::cfapi::{Cf, admin_password, password_grant, request, zip_app};
use common::local::Local;
use serde_json::{Value, json};

const HELLO: &str = "#!/bin/sh\nwhile true; do printf 'HTTP/1.0 200 OK\\r\\nContent-Length: 13\\r\\n\\r\\nhello from v3' | nc -l -p $PORT >/dev/null; done\n";

/// A JWT (HS256) over `claims` with `key`, as the daemon signs its own.
fn sign(key: &str, claims: &Value) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let signing = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(claims.to_string().as_bytes()));
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes()), signing.as_bytes());
    format!("{signing}.{}", b64(tag.as_ref()))
}

fn login(l: &Local) -> Cf {
    Cf::login(&l.cf_api, &admin_password(&l.d.depot()))
}

#[test]
fn root_document_and_tokens() {
    require_local!();
    let mut l = Local::start(&[]);
    let root = request(&l.cf_api, "GET", "/", &[], b"").json();
    let links = &root["links"];
    let base = format!("http://{}", l.cf_api);
    assert_eq!(links["cloud_controller_v3"]["href"], format!("{base}/v3"));
    assert_eq!(links["cloud_controller_v3"]["meta"]["version"], "3.99.0");
    assert_eq!(links["uaa"]["href"], base);
    assert_eq!(links["log_cache"]["href"], base);
    assert_eq!(links["app_ssh"]["href"], l.ssh);
    // The CLI tells a SHA-256 fingerprint by its 43 characters.
    assert_eq!(links["app_ssh"]["meta"]["host_key_fingerprint"].as_str().map(str::len), Some(43));

    // A wrong password, an unknown client.
    let (status, body) = password_grant(&l.cf_api, "admin", "wrong");
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")));

    // No token, a forged one, a refresh token used as an access token: CC's 401s.
    let cf = login(&l);
    let no = request(&l.cf_api, "GET", "/v3/apps", &[], b"");
    assert_eq!((no.status, no.json()["errors"][0]["code"].as_u64()), (401, Some(10002)));
    let mut forged = cf.token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let bad = Cf { addr: cf.addr.clone(), token: forged }.call("GET", "/v3/apps", None);
    assert_eq!(bad.status, 401);
    assert_eq!(bad.json()["errors"][0]["code"], 1000);
    assert_eq!(bad.json()["errors"][0]["title"], "CF-InvalidAuthToken");

    // A token signed with the daemon's own key but expired: 401, code 1000.
    let key = std::fs::read_to_string(l.d.depot().join("cf-api/token-key")).unwrap();
    let expired =
        sign(key.trim(), &json!({"user_name": "admin", "user_id": "x", "origin": "uaa", "exp": 1, "jti": "j"}));
    let r = Cf { addr: cf.addr.clone(), token: expired }.call("GET", "/v3/apps", None);
    assert_eq!((r.status, r.json()["errors"][0]["code"].as_u64()), (401, Some(1000)));

    // The refresh grant gives a new access token that works.
    let (_, tokens) = password_grant(&l.cf_api, "admin", &admin_password(&l.d.depot()));
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let as_access = Cf { addr: cf.addr.clone(), token: refresh.into() }.call("GET", "/v3/apps", None);
    assert_eq!(as_access.status, 401);
    let form = format!("grant_type=refresh_token&refresh_token={refresh}");
    let r = request(&l.cf_api, "POST", "/oauth/token", &[("Authorization", "Basic Y2Y6")], form.as_bytes());
    assert_eq!(r.status, 200);
    let fresh = Cf { addr: cf.addr.clone(), token: r.json()["access_token"].as_str().unwrap().into() };
    fresh.get("/v3/apps");

    // A token signed by this daemon survives its restart (the key is kept).
    l.restart();
    Cf { addr: l.cf_api.clone(), token: cf.token.clone() }.get("/v3/organizations");

    // cf ssh's one-time code: a redirect carrying `code=`, which the proxy takes once.
    let auth = format!("bearer {}", cf.token);
    let r = request(
        &l.cf_api,
        "GET",
        "/oauth/authorize?client_id=ssh-proxy&response_type=code&grant_type=authorization_code",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().contains("code="));
}

/// A push as the cf CLI v8 sequences it, then a second push of the same
/// files that sends none of them.
#[test]
fn push_through_the_v3_api() {
    require_local!();
    let l = Local::start(&[]);
    let cf = login(&l);
    let space = cf.space_guid("dev");
    let manifest = "applications:\n- name: v3app\n  memory: 64M\n  default-route: true\n";
    let job = cf.apply_manifest(&space, manifest);
    assert_eq!(job["state"], "COMPLETE", "{job}");
    let apps = cf.get(&format!("/v3/apps?names=v3app&space_guids={space}"));
    let app = apps["resources"][0]["guid"].as_str().expect("the manifest made the app").to_string();
    let web = cf.get(&format!("/v3/apps/{app}/processes/web"));
    assert_eq!((web["guid"].as_str(), web["memory_in_mb"].as_u64()), (Some(app.as_str()), Some(64)));
    let routes = cf.get(&format!("/v3/apps/{app}/routes"));
    assert_eq!(routes["resources"][0]["url"], "v3app.apps.localhost");

    let files = [
        ("start.sh", 0o755, HELLO),
        ("Procfile", 0o644, "web: ./start.sh\n"),
        ("big.txt", 0o644, "kept by its sha1\n"),
    ];
    let (zip, resources) = zip_app(&files);
    let matched = cf.ok("POST", "/v3/resource_matches", Some(json!({ "resources": resources })), 201);
    assert_eq!(matched["resources"], json!([]), "nothing is kept before the first upload");
    push_package(&cf, &l, &app, &json!([]), Some(&zip));
    l.wait_status("v3app.apps.localhost", "/", 200, "hello from v3", Duration::from_secs(60));

    // log-cache has the staging's lines and the router's, newest first.
    let logs = cf.get(&format!("/api/v1/read/{app}?envelope_types=LOG&descending=true&limit=1000&start_time=-1"));
    let batch = logs["envelopes"]["batch"].as_array().expect("a batch").clone();
    let sources: Vec<&str> = batch.iter().filter_map(|e| e["tags"]["source_type"].as_str()).collect();
    assert!(sources.contains(&"STG") && sources.contains(&"RTR"), "{sources:?}");
    let ts: Vec<i64> = batch.iter().map(|e| e["timestamp"].as_str().unwrap().parse().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "descending: {ts:?}");
    use base64::Engine;
    let first = base64::engine::general_purpose::STANDARD.decode(batch[0]["log"]["payload"].as_str().unwrap()).unwrap();
    assert!(!first.is_empty());
    let bad = cf.call("GET", &format!("/api/v1/read/{app}?limit=5000"), None);
    assert_eq!(bad.status / 100, 5, "log-cache refuses a limit over 1000 as it does");

    // Every file is kept now: the CLI sends only the list.
    let matched = cf.ok("POST", "/v3/resource_matches", Some(json!({ "resources": resources })), 201);
    assert_eq!(matched["resources"].as_array().map(Vec::len), Some(3));
    push_package(&cf, &l, &app, &resources, None);
    l.wait_status("v3app.apps.localhost", "/", 200, "hello from v3", Duration::from_secs(60));

    // A resource that is not here, or a path outside the app, is refused clearly.
    let pkg = cf.ok(
        "POST",
        "/v3/packages",
        Some(json!({"type": "bits", "relationships": {"app": {"data": {"guid": app}}}})),
        201,
    );
    let pkg = pkg["guid"].as_str().unwrap();
    let missing = json!([{"path": "x", "mode": "644", "checksum": {"value": "0000000000000000000000000000000000000000"}, "size_in_bytes": 1}]);
    let r = cf.upload(pkg, &missing, None);
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let outside =
        json!([{"path": "../etc/passwd", "mode": "644", "checksum": resources[0]["checksum"], "size_in_bytes": 1}]);
    assert_eq!(cf.upload(pkg, &outside, None).status, 422);

    // Stats, scaling, and the app's deletion as a job.
    let stats = cf.get(&format!("/v3/processes/{app}/stats"));
    assert_eq!(stats["resources"][0]["state"], "RUNNING");
    assert!(
        stats["resources"][0]["usage"]["mem"].as_u64().unwrap_or(0) > 0
            || stats["resources"][0]["usage"]["mem"].is_number()
    );
    cf.ok("POST", &format!("/v3/apps/{app}/processes/web/actions/scale"), Some(json!({"instances": 2})), 202);
    let stats =
        cf.poll(&format!("/v3/processes/{app}/stats"), "/resources/1/state", &["RUNNING"], Duration::from_secs(60));
    assert_eq!(stats["resources"].as_array().map(Vec::len), Some(2));
    let job = cf.wait_job(&cf.call("DELETE", &format!("/v3/apps/{app}"), None));
    assert_eq!(job["state"], "COMPLETE");
    assert_eq!(cf.call("GET", &format!("/v3/apps/{app}"), None).status, 404);
}

/// Creates a package, uploads it, builds it and restarts the app on the
/// droplet, as the CLI does, checking each answer on the way.
fn push_package(cf: &Cf, l: &Local, app: &str, resources: &Value, bits: Option<&[u8]>) {
    let pkg = cf.ok(
        "POST",
        "/v3/packages",
        Some(json!({"type": "bits", "relationships": {"app": {"data": {"guid": app}}}})),
        201,
    );
    assert_eq!(pkg["state"], "AWAITING_UPLOAD");
    let pkg = pkg["guid"].as_str().unwrap().to_string();
    let r = cf.upload(&pkg, resources, bits);
    assert_eq!(r.status, 200, "upload: {}", String::from_utf8_lossy(&r.body));
    cf.poll(&format!("/v3/packages/{pkg}"), "/state", &["READY"], Duration::from_secs(30));
    let build = cf.ok("POST", "/v3/builds", Some(json!({"package": {"guid": pkg}})), 201);
    let build = cf.poll(
        &format!("/v3/builds/{}", build["guid"].as_str().unwrap()),
        "/state",
        &["STAGED", "FAILED"],
        Duration::from_secs(120),
    );
    assert_eq!(build["state"], "STAGED", "{build}\n{}", l.d.log());
    let droplet = build["droplet"]["guid"].as_str().unwrap();
    cf.ok(
        "PATCH",
        &format!("/v3/apps/{app}/relationships/current_droplet"),
        Some(json!({"data": {"guid": droplet}})),
        200,
    );
    let current = cf.get(&format!("/v3/apps/{app}/droplets/current"));
    assert_eq!(current["process_types"]["web"], "./start.sh");
    cf.ok("POST", &format!("/v3/apps/{app}/actions/restart"), None, 200);
    cf.poll(&format!("/v3/processes/{app}/stats"), "/resources/0/state", &["RUNNING"], Duration::from_secs(60));
}

/// A real third-party CC v3 client (PyPI's cloudfoundry-client, installed by
/// `make deps` into /opt/celld-venv) logs in, reads, creates and deletes.
#[test]
fn a_third_party_v3_client_works() {
    require_local!();
    let python = std::path::Path::new("/opt/celld-venv/bin/python");
    assert!(python.is_file(), "/opt/celld-venv is missing: run `make deps`");
    let l = Local::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cf_api/cf_client.py");
    let out = std::process::Command::new(python)
        .args([script, &l.cf_api, &admin_password(&l.d.depot())])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "cf_client.py failed:\n{}\n{}\n--- celld log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        l.d.log()
    );
}

/// A manifest with two process types: each its own LRP, scaled on its own.
#[test]
fn two_process_types_through_the_v3_api() {
    require_local!();
    let l = Local::start(&[]);
    let cf = login(&l);
    let space = cf.space_guid("dev");
    let manifest = "applications:\n- name: duo\n  memory: 64M\n  processes:\n  - type: web\n  - type: worker\n    instances: 1\n    memory: 32M\n    command: while true; do echo worker-tick; sleep 1; done\n";
    let job = cf.apply_manifest(&space, manifest);
    assert_eq!(job["state"], "COMPLETE", "{job}");
    let app = cf.get(&format!("/v3/apps?names=duo&space_guids={space}"))["resources"][0]["guid"]
        .as_str()
        .unwrap()
        .to_string();
    let files = [("start.sh", 0o755, HELLO), ("Procfile", 0o644, "web: ./start.sh\n")];
    let (zip, _) = zip_app(&files);
    push_package(&cf, &l, &app, &json!([]), Some(&zip));
    let procs = cf.get(&format!("/v3/apps/{app}/processes"));
    let types: Vec<&str> = procs["resources"].as_array().unwrap().iter().filter_map(|p| p["type"].as_str()).collect();
    assert_eq!(types, ["web", "worker"]);
    let worker = procs["resources"][1]["guid"].as_str().unwrap().to_string();
    assert_ne!(worker, app, "only web's guid is the app's");
    assert_eq!(procs["resources"][1]["memory_in_mb"], 32);
    cf.ok("POST", &format!("/v3/apps/{app}/processes/worker/actions/scale"), Some(json!({"instances": 2})), 202);
    let stats =
        cf.poll(&format!("/v3/processes/{worker}/stats"), "/resources/1/state", &["RUNNING"], Duration::from_secs(60));
    assert!(stats["resources"].as_array().unwrap().iter().all(|i| i["type"] == "worker"));
    let web = cf.get(&format!("/v3/processes/{app}/stats"));
    assert_eq!(web["resources"].as_array().map(Vec::len), Some(1), "web stays at one instance");
    // The diff of a manifest that scales web names exactly that.
    let diff = cf.raw(
        "POST",
        &format!("/v3/spaces/{space}/manifest_diff"),
        "application/x-yaml",
        b"applications:\n- name: duo\n  instances: 3\n",
    );
    assert_eq!(diff.status, 201);
    assert_eq!(
        diff.json()["diff"],
        json!([{"op": "replace", "path": "/applications/0/instances", "was": 1, "value": 3}])
    );
    // A manifest naming a service that does not exist fails its job with CC's words.
    let bad = cf.apply_manifest(&space, "applications:\n- name: duo\n  services: [nope]\n");
    assert_eq!(bad["state"], "FAILED");
    assert!(bad["errors"][0]["detail"].as_str().unwrap().contains("nope"), "{bad}");
}

/// `--cf-api-tls`: the same API over HTTPS with a self-signed certificate
/// (what `cf api --skip-ssl-validation` accepts), its links in https.
#[test]
fn the_api_over_tls() {
    require_local!();
    let l = Local::start(&["--cf-api-tls"]);
    let out =
        std::process::Command::new("curl").args(["-sk", &format!("https://{}/", l.cf_api)]).output().expect("curl");
    let root: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(root["links"]["cloud_controller_v3"]["href"], format!("https://{}/v3", l.cf_api), "{root}");
    let plain = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://{}/", l.cf_api)])
        .output()
        .expect("curl");
    assert!(serde_json::from_slice::<Value>(&plain.stdout).is_err(), "plain HTTP is not served next to TLS");
    assert!(l.d.depot().join("cf-api/tls.crt").is_file());
}
