//! A `celld --local` per test, driven through the real `cellctl` binary.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::Daemon;

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn lifecycle_built() -> bool {
    Path::new(env!("CARGO_BIN_EXE_celld")).with_file_name("celld-lifecycle").is_file()
}

#[macro_export]
macro_rules! require_local {
    () => {
        require_host!();
        assert!(
            $crate::common::local::lifecycle_built(),
            "the static lifecycle binary is missing: run `make lifecycle` (make test does)"
        );
    };
}

pub struct Local {
    pub d: Daemon,
    pub router: String,
    /// The ssh proxy's address.
    pub ssh: String,
    /// The CF API's address (`cf api http://ADDR`).
    pub cf_api: String,
    /// The cell's /metrics endpoint (the embedded scheduler's metrics too).
    pub metrics: String,
    pub home: PathBuf,
    pub apps_dir: PathBuf,
}

impl Local {
    pub fn start(extra: &[&str]) -> Self {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let slot = (std::process::id().wrapping_mul(11).wrapping_add(n)) % 500;
        let scheduler = format!("127.0.0.1:{}", 14000 + slot);
        let router = format!("127.0.0.1:{}", 15000 + slot);
        let ssh = format!("127.0.0.1:{}", 16000 + slot);
        let cf_api = format!("127.0.0.1:{}", 17000 + slot);
        let metrics = format!("127.0.0.1:{}", 18000 + slot);
        let mut args = vec![
            "--local",
            "--scheduler-listen",
            &scheduler,
            "--router-listen",
            &router,
            "--ssh-proxy-listen",
            &ssh,
            "--cf-api-listen",
            &cf_api,
            "--metrics-listen",
            &metrics,
        ];
        args.extend_from_slice(extra);
        let d = Daemon::start_with(&args);
        let home = d.dir.join("cellctl-home");
        let apps_dir = d.dir.join("apps");
        std::fs::create_dir_all(&apps_dir).expect("apps dir");
        let l = Local { d, router, ssh, cf_api, metrics, home, apps_dir };
        l.wait_up();
        l
    }

    /// The Apps service answers once the daemon is up.
    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, _, err) = self.cellctl(&["apps"]);
            if code == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "celld --local did not come up: {err}\n{}", self.d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the daemon (as a crash would) and starts it again on the same depot.
    pub fn restart(&mut self) {
        self.d.restart();
        self.wait_up();
    }

    /// Runs cellctl against this daemon; (exit code, stdout, stderr).
    pub fn cellctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_cellctl"))
            .arg("--api")
            .arg(&self.d.grpc)
            .args(args)
            .env("CELLCTL_HOME", &self.home)
            .env("NO_COLOR", "1")
            .env_remove("CELLD_API")
            .env_remove("CELLCTL_SPACE")
            .output()
            .expect("run cellctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// cellctl on a terminal (a pty from script(1)), where it draws its
    /// bars; (success, what the terminal showed: stdout and stderr).
    pub fn cellctl_tty(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = format!("{} --api {}", env!("CARGO_BIN_EXE_cellctl"), self.d.grpc);
        for a in args {
            // Test arguments are paths, names and image refs: no quote in them.
            assert!(!a.contains('\''), "{a:?}");
            cmd.push_str(&format!(" '{a}'"));
        }
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("CELLCTL_HOME", &self.home)
            .env("NO_COLOR", "1")
            .env_remove("CELLD_API")
            .env_remove("CELLCTL_SPACE")
            .output()
            .expect("run script(1)");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// cellctl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cellctl(args);
        assert_eq!(code, 0, "cellctl {args:?} failed:\n{out}\n{err}\n--- celld log tail:\n{}", tail(&self.d.log()));
        out
    }

    /// cellctl that must fail with one clear line; its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cellctl(args);
        assert_ne!(code, 0, "cellctl {args:?} should have failed:\n{out}\n{err}");
        assert!(!err.trim().is_empty(), "cellctl {args:?} failed without saying why");
        err
    }

    /// Writes an app directory with these files (mode 0755 for *.sh).
    pub fn app(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.apps_dir.join(name);
        std::fs::create_dir_all(&dir).expect("app dir");
        for (path, body) in files {
            let p = dir.join(path);
            std::fs::write(&p, body).expect("app file");
            if path.ends_with(".sh") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            }
        }
        dir
    }

    /// GET through the router: (status, body).
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        let Ok(mut s) = std::net::TcpStream::connect(&self.router) else { return (0, String::new()) };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{}\r\nConnection: close\r\n\r\n", self.port());
        if s.write_all(req.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    pub fn port(&self) -> &str {
        self.router.rsplit(':').next().unwrap_or("80")
    }

    /// Polls the router until `host` answers `want` with `needle` in the body.
    pub fn wait_status(&self, host: &str, path: &str, want: u16, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get(host, path);
            if status == want && body.contains(needle) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{host}{path} answered {status}, not {want}: {body}\n--- celld log tail:\n{}",
                tail(&self.d.log())
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn app_json(&self, name: &str, space: &str) -> serde_json::Value {
        let out = self.ok(&["--space", space, "app", name, "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("app --json is not JSON ({e}): {out}"))
    }

    /// The instances array of `app --json`, whatever its nesting.
    pub fn instances(&self, name: &str, space: &str) -> Vec<serde_json::Value> {
        let v = self.app_json(name, space);
        v["instances"].as_array().cloned().unwrap_or_default()
    }

    pub fn wait_instances(
        &self,
        name: &str,
        space: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let i = self.instances(name, space);
            if ok(&i) {
                return i;
            }
            assert!(Instant::now() < deadline, "{name}: {what} did not happen: {i:?}\n{}", tail(&self.d.log()));
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Deletes every app, waits for their containers to go, checks nothing leaked.
    pub fn finish(self) {
        let out = self.ok(&["apps", "--json", "--all-spaces"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        for a in v["apps"].as_array().cloned().unwrap_or_default() {
            let app = a["app"].clone();
            let (name, space) = (app["name"].as_str().unwrap_or(""), app["space"].as_str().unwrap_or("dev"));
            self.ok(&["--space", space, "delete", name, "-f"]);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let rt = super::rt();
        loop {
            let left = rt.block_on(self.d.client.list(&Default::default())).unwrap_or_default();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "containers left after deleting every app: {left:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        self.d.assert_no_leaks();
    }
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

pub fn state_of(i: &serde_json::Value) -> String {
    i["state"].as_str().unwrap_or("").to_string()
}

pub fn guid_of(i: &serde_json::Value) -> String {
    i["instance_guid"].as_str().unwrap_or("").to_string()
}

pub fn all_running(n: usize) -> impl Fn(&[serde_json::Value]) -> bool {
    move |i: &[serde_json::Value]| i.len() == n && i.iter().all(|x| state_of(x) == "running")
}
