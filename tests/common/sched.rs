//! A real `celld scheduler` (SQLite, the test clock) and cells reporting to
//! it, for the suites that desire LRPs and tasks through the Scheduler
//! service: start, restart, wait for ActualLRPs and tasks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use celld::grpc::pb;
use celld::grpc::pb::actual_lrp::State;
use celld::grpc::pb::scheduler_client::SchedulerClient;
use tonic::transport::Channel;

use super::Daemon;

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn lifecycle_built() -> bool {
    let p = std::path::Path::new(env!("CARGO_BIN_EXE_celld")).with_file_name("celld-lifecycle");
    p.is_file()
}

/// `celld scheduler` on its own port and database, with the test clock.
pub struct Scheduler {
    dir: PathBuf,
    pub addr: String,
    /// Its /metrics endpoint.
    pub metrics: String,
    child: Option<Child>,
}

impl Scheduler {
    pub fn start() -> Self {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/celld-sched-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scheduler dir");
        let slot = (std::process::id().wrapping_mul(7).wrapping_add(n)) % 500;
        let mut s = Scheduler {
            dir,
            addr: format!("127.0.0.1:{}", 13000 + slot),
            metrics: format!("127.0.0.1:{}", 19000 + slot),
            child: None,
        };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("scheduler.log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_celld"))
            .arg("--depot")
            .arg(self.dir.join("depot"))
            .arg("scheduler")
            .arg("--listen")
            .arg(&self.addr)
            .arg("--db")
            .arg(self.dir.join("scheduler.db"))
            .arg("--test-clock")
            .arg("--metrics-listen")
            .arg(&self.metrics)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start celld scheduler");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(Instant::now() < deadline, "the scheduler did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("scheduler.log")).unwrap_or_default()
    }

    pub async fn client(&self) -> SchedulerClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.addr)).expect("uri").connect_lazy();
        SchedulerClient::new(ch)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A cell reporting to `s`, with a fast bulk reconcile.
pub fn cell(s: &Scheduler, name: &str) -> Daemon {
    Daemon::start_with(&["--scheduler", &s.addr, "--cell-id", name, "--reconcile-interval", "3"])
}

pub async fn actuals(s: &mut SchedulerClient<Channel>, guid: &str) -> Vec<pb::ActualLrp> {
    let mut a = s
        .actual_lr_ps(pb::ActualLrPsRequest { process_guid: guid.into(), ..Default::default() })
        .await
        .expect("ActualLRPs")
        .into_inner()
        .actual_lrps;
    a.sort_by_key(|a| (a.index, a.presence));
    a
}

/// Waits until `ok` holds for the process's ActualLRPs; returns them.
pub async fn wait_for(
    s: &mut SchedulerClient<Channel>,
    guid: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&[pb::ActualLrp]) -> bool,
    logs: impl Fn() -> String,
) -> Vec<pb::ActualLrp> {
    let deadline = Instant::now() + timeout;
    loop {
        let a = actuals(s, guid).await;
        if ok(&a) {
            return a;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; actual LRPs: {a:#?}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn all_running(n: usize) -> impl Fn(&[pb::ActualLrp]) -> bool {
    move |a| a.len() == n && a.iter().all(|a| a.state == State::Running as i32)
}

pub async fn wait_until(timeout: Duration, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_task(
    s: &mut SchedulerClient<Channel>,
    guid: &str,
    ok: impl Fn(&pb::Task) -> bool,
    logs: impl Fn() -> String,
) -> pb::Task {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = s.get_task(pb::GetTaskRequest { task_guid: guid.into() }).await.expect("GetTask").into_inner();
        if ok(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for task {guid}: {t:#?}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Skips the test without root and the rootfs; fails it without the static
/// lifecycle binary.
#[macro_export]
macro_rules! require_cell {
    () => {
        require_host!();
        assert!(
            common::sched::lifecycle_built(),
            "the static lifecycle binary is missing: run `make lifecycle` (make test does)"
        );
    };
}

/// A tgz in memory: (path, mode, contents).
pub fn tgz(files: &[(&str, u32, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    append_files(&mut b, files);
    b.into_inner().expect("tar").finish().expect("gzip")
}

/// Regular files (path, mode, contents) into a tar.
pub fn append_files<W: std::io::Write>(b: &mut tar::Builder<W>, files: &[(&str, u32, &str)]) {
    for (path, mode, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, body.as_bytes()).expect("tar entry");
    }
}
