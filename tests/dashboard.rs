//! The web dashboard: in headless Chromium through `celld --local`'s router
//! (the pushed app, its running instance, a request's log line arriving
//! live), its JSON APIs, the rules for actions (read-only by default; the
//! token and the same origin when on), and `--dashboard-listen` on a plain cell.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::cfapi::{Reply, request};
use common::local::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello");
const T: Duration = Duration::from_secs(90);
static SEQ: AtomicU32 = AtomicU32::new(0);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

/// chromedriver on a port of its own, with a Chromium profile of its own;
/// both go on drop, with any Chromium it left behind.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Driver {
    fn start() -> Self {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let profile = PathBuf::from(format!("/tmp/celld-dashboard-chromium-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("chromium profile dir");
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; make deps installs it)");
        let d = Driver { child, port, profile };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,800", format!("--user-data-dir={}", self.profile.display()),
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium processes of this profile only (a failed test may leave them).
        let marker = format!("--user-data-dir={}", self.profile.display());
        let mut pids = Vec::new();
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).split('\0').any(|a| a == marker) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                pids.push(pid);
            }
        }
        // A dying Chromium still writes its profile: remove it once they are gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The text of the first element `css` finds ("" while there is none).
async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn wait_text(c: &Client, css: &str, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let t = text(c, css).await;
        if t.contains(needle) {
            return t;
        }
        if Instant::now() > deadline {
            let page = c.source().await.unwrap_or_default();
            panic!("{css} did not show {needle:?} in {timeout:?}; it shows {t:?}\n--- page:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn click(c: &Client, css: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
    e.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// An app's page, once its instance runs.
async fn open_app(c: &Client, l: &Local, guid: &str) {
    c.goto(&format!("http://celld.apps.localhost:{}/#/apps/{guid}", l.port())).await.expect("open the app");
    wait_text(c, ".instance[data-state='running']", "running", Duration::from_secs(30)).await;
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("..").join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("test artifacts dir");
    dir
}

/// A request to the dashboard through the router, as `celld.apps.localhost`.
fn dash(l: &Local, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let host = format!("celld.apps.localhost:{}", l.port());
    let mut h = vec![("Host", host.as_str())];
    h.extend_from_slice(headers);
    request(&l.router, method, path, &h, body)
}

fn dash_json(l: &Local, path: &str) -> Value {
    let r = dash(l, "GET", path, &[], b"");
    assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn push_hello(l: &Local) -> String {
    l.ok(&["push", HELLO, "-m", "64M"]);
    l.wait_instances("hello", "dev", "1 instance running", T, all_running(1));
    l.wait_status("hello.apps.localhost", "/", 200, "Hello from celld!", T);
    l.app_json("hello", "dev")["app"]["guid"].as_str().unwrap_or_default().to_string()
}

#[test]
fn chromium_shows_the_app_its_instance_and_a_live_log_line() {
    require_local!();
    let l = Local::start(&[]);
    let guid = push_hello(&l);
    let driver = Driver::start();
    let probe = format!("/dashboard-probe-{}", std::process::id());
    common::rt().block_on(async {
        let c = driver.browser().await;
        c.goto(&format!("http://celld.apps.localhost:{}/", l.port())).await.expect("open the dashboard");
        wait_text(&c, "tr.app-row[data-name='hello']", "1/1", Duration::from_secs(30)).await;
        wait_text(&c, "#cells", "memory", Duration::from_secs(10)).await;
        click(&c, "tr.app-row[data-name='hello'] a.app-link").await;
        wait_text(&c, "#app-name", "hello", Duration::from_secs(10)).await;
        wait_text(&c, ".instance[data-state='running']", "running", Duration::from_secs(30)).await;
        // The page follows the logs: a request made now shows up in it.
        wait_text(&c, "#logs", "hello: serving instance 0", Duration::from_secs(30)).await;
        let (status, _) = l.get("hello.apps.localhost", &probe);
        assert_eq!(status, 404, "busybox httpd has no {probe}");
        let logs = wait_text(&c, "#logs", &probe, Duration::from_secs(30)).await;
        assert!(logs.contains("[RTR/0]") && logs.contains("[APP/PROC/WEB/0]"), "{logs}");
        // The instance's charts are drawn (SVG made by the page itself).
        assert!(c.find(Locator::Css(".instance svg.chart")).await.is_ok(), "no chart drawn");
        // No action buttons on a read-only dashboard.
        let actions = c.find(Locator::Id("actions")).await.expect("the actions box");
        assert!(!actions.is_displayed().await.unwrap_or(true), "actions shown on a read-only dashboard");
        let png = c.screenshot().await.expect("a screenshot");
        std::fs::write(artifacts().join("dashboard.png"), png).expect("write the screenshot");
        c.close().await.expect("close the session");
    });
    drop(driver);
    assert!(!guid.is_empty());
    l.finish();
}

#[test]
fn json_apis_show_cells_apps_history_events_and_masked_env() {
    require_local!();
    let l = Local::start(&[]);
    let guid = push_hello(&l);
    l.ok(&["set-env", "hello", "API_TOKEN", "s3cr3t-value"]);
    l.ok(&["set-env", "hello", "GREETING", "hi"]);
    let info = dash_json(&l, "/api/info");
    assert_eq!(info, json!({"mode": "local", "actions": false}));
    let cells = dash_json(&l, "/api/cells");
    let cell = &cells["cells"][0];
    assert!(cell["capacity"]["memory_mb"].as_u64().unwrap_or(0) > 0, "{cells}");
    assert!(cell["instances"].as_u64().unwrap_or(0) >= 1, "{cells}");
    assert!(cell["vitals"]["memory_total_bytes"].as_u64().unwrap_or(0) > 0, "{cells}");
    let apps = dash_json(&l, "/api/apps");
    let app = apps["apps"].as_array().and_then(|a| a.iter().find(|a| a["name"] == "hello")).cloned();
    let app = app.unwrap_or_else(|| panic!("hello missing: {apps}"));
    assert_eq!(
        (app["state"].as_str(), app["running"].as_u64(), app["instances"].as_u64()),
        (Some("STARTED"), Some(1), Some(1))
    );
    // The sampler keeps history: two samples take at most two intervals.
    let deadline = Instant::now() + Duration::from_secs(30);
    let detail = loop {
        let d = dash_json(&l, &format!("/api/apps/{guid}"));
        if d["instances"][0]["history"].as_array().is_some_and(|h| h.len() >= 2) {
            break d;
        }
        assert!(Instant::now() < deadline, "no chart history after 30 s: {d}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let i = &detail["instances"][0];
    assert_eq!(i["state"], "running");
    assert!(i["history"][1]["memory"].as_u64().unwrap_or(0) > 0, "{i}");
    assert!(i["since"].as_i64().unwrap_or(0) > 1_600_000_000_000, "since is in ms: {i}");
    let events = dash_json(&l, &format!("/api/apps/{guid}/events"));
    assert!(events["events"].as_array().is_some_and(|e| e.iter().any(|e| e["type"] == "audit.app.create")), "{events}");
    let env = dash(&l, "GET", &format!("/api/apps/{guid}/env"), &[], b"");
    let text = String::from_utf8_lossy(&env.body).into_owned();
    assert!(!text.contains("s3cr3t-value"), "a secret-looking value leaked: {text}");
    let env = env.json();
    assert_eq!(env["environment_variables"]["API_TOKEN"], "[PRIVATE DATA HIDDEN]");
    assert_eq!(env["environment_variables"]["GREETING"], "hi");
    let missing = dash(&l, "GET", "/api/apps/no-such-app", &[], b"");
    assert_eq!(missing.status, 404, "{}", String::from_utf8_lossy(&missing.body));
    assert!(missing.json()["error"].as_str().is_some_and(|e| e.contains("not found")), "{:?}", missing.json());
    // The page and its assets, with a policy that allows nothing from elsewhere.
    let page = dash(&l, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page.header("content-security-policy").is_some_and(|c| c.contains("default-src 'self'")));
    assert!(String::from_utf8_lossy(&page.body).contains("<script src=\"/app.js\">"));
    assert_eq!(dash(&l, "GET", "/app.js", &[], b"").status, 200);
    // Read-only: an action is refused whatever it carries, and says why.
    let r = dash(&l, "POST", &format!("/api/apps/{guid}/stop"), &[("X-Dashboard-Token", "x")], b"");
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("--dashboard-actions")), "{:?}", r.json());
    assert_eq!(l.app_json("hello", "dev")["app"]["state"], "STARTED");
    // A dashboard request writes no RTR line into any app's log.
    let logs = l.ok(&["logs", "hello", "--recent"]);
    assert!(!logs.contains("celld.apps.localhost"), "{logs}");
    l.finish();
}

#[test]
fn actions_need_the_flag_the_token_and_the_same_origin() {
    require_local!();
    let l = Local::start(&["--dashboard-actions"]);
    let guid = push_hello(&l);
    let page = String::from_utf8_lossy(&dash(&l, "GET", "/", &[], b"").body).into_owned();
    let token = page
        .split("name=\"dashboard-token\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_default()
        .to_string();
    assert_eq!(token.len(), 64, "no token in the page: {page}");
    let stop = format!("/api/apps/{guid}/stop");
    let origin = format!("http://celld.apps.localhost:{}", l.port());
    let no_token = dash(&l, "POST", &stop, &[("Origin", &origin)], b"");
    assert_eq!(no_token.status, 403);
    assert!(no_token.json()["error"].as_str().is_some_and(|e| e.contains("X-Dashboard-Token")));
    let foreign = dash(&l, "POST", &stop, &[("X-Dashboard-Token", &token), ("Origin", "http://evil.example")], b"");
    assert_eq!(foreign.status, 403);
    assert!(foreign.json()["error"].as_str().is_some_and(|e| e.contains("cross-origin")));
    let cross = dash(&l, "POST", &stop, &[("X-Dashboard-Token", &token), ("Sec-Fetch-Site", "cross-site")], b"");
    assert_eq!(cross.status, 403);
    let get = dash(&l, "GET", &stop, &[("X-Dashboard-Token", &token)], b"");
    assert_eq!(get.status, 405, "actions are POST only");
    assert_eq!(l.app_json("hello", "dev")["app"]["state"], "STARTED", "a refused action changed the app");
    let bad = dash(&l, "POST", &format!("/api/apps/{guid}/scale"), &[("X-Dashboard-Token", &token)], b"{}");
    assert_eq!(bad.status, 400, "{:?}", bad.json());
    let ok = dash(
        &l,
        "POST",
        &stop,
        &[("X-Dashboard-Token", &token), ("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
        b"",
    );
    assert_eq!(ok.status, 200, "{:?}", ok.json());
    assert_eq!(ok.json()["state"], "STOPPED");
    assert_eq!(l.app_json("hello", "dev")["app"]["state"], "STOPPED");
    let start = dash(&l, "POST", &format!("/api/apps/{guid}/start"), &[("X-Dashboard-Token", &token)], b"");
    assert_eq!(start.status, 200, "{:?}", start.json());
    l.wait_instances("hello", "dev", "running again", T, all_running(1));
    // The page's own buttons pass (Chromium sends its Origin and Sec-Fetch-Site).
    let driver = Driver::start();
    common::rt().block_on(async {
        let c = driver.browser().await;
        open_app(&c, &l, &guid).await;
        click(&c, "#actions button[data-action='stop']").await;
        wait_text(&c, "#action-result", "stop: STOPPED", Duration::from_secs(30)).await;
        c.close().await.expect("close the session");
    });
    drop(driver);
    assert_eq!(l.app_json("hello", "dev")["app"]["state"], "STOPPED");
    l.finish();
}

#[test]
fn dashboard_listen_serves_a_plain_cell_its_own_state() {
    require_host!();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = common::Daemon::start_with(&["--dashboard-listen", &addr]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "--dashboard-listen {addr} never listened:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let info = request(&addr, "GET", "/api/info", &[], b"").json();
    assert_eq!(info, json!({"mode": "cell", "actions": false}));
    let cells = request(&addr, "GET", "/api/cells", &[], b"").json();
    assert_eq!(cells["cells"].as_array().map(Vec::len), Some(1), "{cells}");
    assert!(cells["cells"][0]["capacity"]["containers"].as_u64().unwrap_or(0) > 0, "{cells}");
    // The host's vitals, read by the dashboard itself on a plain cell.
    assert!(cells["cells"][0]["vitals"]["memory_total_bytes"].as_u64().unwrap_or(0) > 0, "{cells}");
    assert!(cells["cells"][0]["vitals"]["uptime_seconds"].as_u64().unwrap_or(0) > 0, "{cells}");
    assert_eq!(request(&addr, "GET", "/api/apps", &[], b"").json(), json!({"apps": []}));
    assert_eq!(request(&addr, "GET", "/api/instances", &[], b"").json(), json!({"instances": []}));
    let events = request(&addr, "GET", "/api/apps/x/events", &[], b"");
    assert_eq!(events.status, 404);
    assert!(events.json()["error"].as_str().is_some_and(|e| e.contains("no app layer")));
    let page = request(&addr, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("dashboard-actions\" content=\"off\""));
    // A name that is not this cell's (DNS rebinding) gets nothing.
    let rebound = request(&addr, "GET", "/api/cells", &[("Host", "rebind.example")], b"");
    assert_eq!(rebound.status, 403);
    assert!(rebound.json()["error"].as_str().is_some_and(|e| e.contains("IP address")), "{:?}", rebound.json());
}

/// The README's picture: the hello app after a minute of requests, at
/// 1280×800, into the artifacts as `dashboard-docs.png`. Run by hand, then
/// shrink it into the docs: `cargo test -p celld --test dashboard -- --ignored
/// docs_screenshot` and `pngquant --quality 60-90 --strip --output
/// docs/dashboard.png target/test-artifacts/dashboard-docs.png`.
#[test]
#[ignore]
fn docs_screenshot() {
    require_local!();
    let l = Local::start(&[]);
    let guid = push_hello(&l);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (router, port, stop) = (l.router.clone(), l.port().to_string(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let host = format!("hello.apps.localhost:{port}");
                let _ = std::panic::catch_unwind(|| request(&router, "GET", "/", &[("Host", &host)], b""));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(75));
    let driver = Driver::start();
    common::rt().block_on(async {
        let c = driver.browser().await;
        open_app(&c, &l, &guid).await;
        let inner: i64 =
            c.execute("return window.innerHeight", vec![]).await.ok().and_then(|v| v.as_i64()).unwrap_or(800);
        c.set_window_size(1280, u32::try_from(800 + (800 - inner)).unwrap_or(800)).await.expect("window size");
        tokio::time::sleep(Duration::from_secs(6)).await;
        let png = c.screenshot().await.expect("a screenshot");
        std::fs::write(artifacts().join("dashboard-docs.png"), png).expect("write the screenshot");
        c.close().await.expect("close the session");
    });
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    drop(driver);
    l.finish();
}
