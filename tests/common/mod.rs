//! Test harness: a real `celld` daemon per test, with its own depot, run
//! directory and socket, torn down (containers, cgroups, mounts, dirs) even when
//! the test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use celld::garden::client::{Address, Client, ClientError, Process, ProcessIo};
use celld::garden::types::{ContainerSpec, ProcessSpec};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn rootfs_dir() -> PathBuf {
    std::env::var_os("CELLD_ROOTFS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs/out"))
}

/// The daemon under test: `$CELLD_BIN` if set, else the one cargo built.
/// Worktrees sharing one target directory overwrite each other's
/// `target/debug/celld`; a copy named here is immune to that.
pub fn celld_bin() -> PathBuf {
    std::env::var_os("CELLD_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_celld")))
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Host-touching tests need root and the tiny rootfs (`make rootfs`); without
/// them they say so and pass, so `cargo test` works for unit tests anywhere.
#[macro_export]
macro_rules! require_host {
    () => {
        if !common::is_root() || !common::rootfs_dir().join("tiny/bin/sh").exists() {
            eprintln!("skipped: needs root and rootfs/out/tiny (run `make test`)");
            return;
        }
    };
}

pub struct Daemon {
    pub dir: PathBuf,
    /// This daemon's own network pool (a /22) and net-in port range, so daemons
    /// of one run, or of runs one after the other, never share addresses.
    pub pool: String,
    pub port_start: u16,
    /// This daemon's gRPC address (127.0.0.1, a port of its own).
    pub grpc: String,
    pub socket: PathBuf,
    child: Option<Child>,
    pub client: Client,
    extra_args: Vec<String>,
}

impl Daemon {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/celld-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let socket = dir.join("garden.sock");
        // 10.224.0.0/11 holds 512 /22s; pid and sequence pick one.
        let slot = (std::process::id().wrapping_mul(7).wrapping_add(n)) % 512;
        let pool = format!("10.{}.{}.0/22", 224 + slot / 64, (slot % 64) * 4);
        let port_start = 20000 + (slot as u16 % 200) * 100;
        let mut d = Daemon {
            pool,
            port_start,
            // Below the ephemeral range (32768+), where a client socket could hold it.
            grpc: format!("127.0.0.1:{}", 12000 + slot),
            client: Client::new(Address::Unix(socket.clone())),
            socket,
            dir,
            child: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn depot(&self) -> PathBuf {
        self.dir.join("depot")
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("celld.log")).expect("log file");
        let child = Command::new(celld_bin())
            .arg("--depot")
            .arg(self.depot())
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .arg("--garden-socket")
            .arg(&self.socket)
            .arg("--rootfs-dir")
            .arg(rootfs_dir())
            .arg("--stop-timeout")
            .arg("2")
            .arg("--network-pool")
            .arg(&self.pool)
            .arg("--port-pool-start")
            .arg(self.port_start.to_string())
            .arg("--port-pool-size")
            .arg("100")
            .arg("--grpc-listen")
            .arg(&self.grpc)
            .args(metrics_off(&self.extra_args))
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start celld");
        self.child = Some(child);
        // Up once it accepts: the socket file exists from bind(), a moment
        // before listen(), and a connect in between is refused.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < deadline, "celld did not start; see {}", self.dir.join("celld.log").display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; waits up to `timeout` for the daemon to exit. True if it did.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(c) = self.child.as_mut() else { return true };
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("celld.log")).unwrap_or_default()
    }

    /// The cgroups of this daemon's containers: every child of its parent
    /// cgroup, whose name celld derives from the depot path (handles of test
    /// containers carry the test prefix, but app instances are named by guid).
    pub fn cgroup_children(&self) -> Vec<PathBuf> {
        let parent = self.cgroup_parent();
        let mut out = Vec::new();
        for root in cgroup_roots() {
            for c in std::fs::read_dir(root.join(&parent)).into_iter().flatten().flatten() {
                if c.path().is_dir() {
                    out.push(c.path());
                }
            }
        }
        out
    }

    fn cgroup_parent(&self) -> String {
        celld::runtime::cgroup_parent(&self.depot())
    }

    pub fn handle_prefix(&self) -> String {
        format!(
            "t{}-",
            self.dir.file_name().map(|s| s.to_string_lossy().replace("celld-test-", "")).unwrap_or_default()
        )
    }

    /// A handle unique to this daemon and test run.
    pub fn handle(&self, name: &str) -> String {
        format!("{}{name}", self.handle_prefix())
    }

    /// Mounts of this daemon's containers: under its directory, but for its
    /// disk store, which lives as long as the daemon.
    pub fn mounts(&self) -> Vec<String> {
        let store = self.store().display().to_string();
        self.all_mounts().into_iter().filter(|l| l.split_whitespace().nth(4) != Some(store.as_str())).collect()
    }

    fn all_mounts(&self) -> Vec<String> {
        let dir = self.dir.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&dir))
            .map(String::from)
            .collect()
    }

    /// The disk store's mount point (the btrfs that holds containers' writes).
    pub fn store(&self) -> PathBuf {
        self.depot().join("store")
    }

    /// The containers' subvolumes in the disk store.
    pub fn subvolumes(&self) -> Vec<String> {
        std::fs::read_dir(self.store().join("containers"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// The store's level-0 qgroups but the top level's (`btrfs qgroup show`).
    pub fn qgroups(&self) -> Vec<String> {
        let out = Command::new("btrfs").args(["qgroup", "show"]).arg(self.store()).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|q| q.starts_with("0/") && *q != "0/5")
            .map(String::from)
            .collect()
    }

    /// Loop devices backing this daemon's store file.
    pub fn loop_devices(&self) -> Vec<String> {
        let img = self.depot().join("store.img");
        let out = Command::new("losetup").arg("-j").arg(&img).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        text.lines().filter_map(|l| l.split(':').next()).map(String::from).collect()
    }

    fn pool_base(&self) -> u32 {
        let ip: std::net::Ipv4Addr = self.pool.split('/').next().and_then(|a| a.parse().ok()).expect("pool");
        u32::from(ip)
    }

    /// The nftables table this daemon's pool owns.
    pub fn table(&self) -> String {
        format!("celld-{:08x}-22", self.pool_base())
    }

    /// The `i`th /24 (0-15) of this daemon's own space for shared subnets: a
    /// /20 of 10.192.0.0/11 picked by the same slot as its pool, so daemons of
    /// one run never ask for the same subnet (and none overlaps a pool).
    pub fn shared_subnet(&self, i: u32) -> String {
        assert!(i < 16, "a daemon has 16 shared /24s");
        let a = std::net::Ipv4Addr::from(self.shared_base() + (i << 8));
        format!("{a}/24")
    }

    fn shared_base(&self) -> u32 {
        let slot = (self.pool_base() - u32::from(std::net::Ipv4Addr::new(10, 224, 0, 0))) >> 10;
        u32::from(std::net::Ipv4Addr::new(10, 192, 0, 0)) + (slot << 12)
    }

    /// Host interfaces named for this daemon: veths of its pool's /30s, and
    /// bridges and bridge ports of its shared subnets.
    pub fn interfaces(&self) -> Vec<String> {
        let base = self.pool_base();
        let shared = self.shared_base();
        std::fs::read_dir("/sys/class/net")
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| {
                let addr = |p: &str| n.strip_prefix(p).and_then(|h| u32::from_str_radix(h, 16).ok());
                addr("cvh-").is_some_and(|a| a >> 10 == base >> 10)
                    || addr("cbr-").or_else(|| addr("cvb-")).is_some_and(|a| a >> 12 == shared >> 12)
            })
            .collect()
    }

    /// Per-container firewall state left in this daemon's tables: chains,
    /// set and map elements (of the `ip` table and the `bridge` one).
    pub fn firewall_leftovers(&self) -> Vec<String> {
        let list = |family: &str| {
            let out = Command::new("nft").args(["list", "table", family, &self.table()]).output();
            out.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default()
        };
        let text = list("ip") + &list("bridge");
        text.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("chain c-") || l.starts_with("elements"))
            .filter(|l| !l.contains("/")) // the deny set holds networks, not containers
            .map(String::from)
            .collect()
    }

    /// Asserts that nothing of any container is left on the host.
    pub fn assert_no_leaks(&self) {
        // Interfaces of destroyed containers are unregistered in the background,
        // and a container leaves listings (and the executor's records) before
        // its rules and depot entry are gone: give a destroy in flight its time.
        let containers = || -> Vec<PathBuf> {
            std::fs::read_dir(self.depot().join("containers"))
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while (!self.interfaces().is_empty() || !self.firewall_leftovers().is_empty() || !containers().is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(self.interfaces().is_empty(), "interfaces left: {:?}", self.interfaces());
        assert!(self.firewall_leftovers().is_empty(), "firewall entries left: {:?}", self.firewall_leftovers());
        let containers = containers();
        assert!(containers.is_empty(), "depot dirs left: {containers:?}");
        assert!(self.mounts().is_empty(), "mounts left: {:?}", self.mounts());
        assert!(self.subvolumes().is_empty(), "subvolumes left: {:?}", self.subvolumes());
        // A deleted subvolume's qgroup goes once the kernel has freed its extents.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.qgroups().is_empty() && Instant::now() < deadline {
            // A commit wakes the cleaner (else it waits for the 30 s one).
            let _ = Command::new("btrfs").args(["filesystem", "sync"]).arg(self.store()).stdout(Stdio::null()).status();
            let _ = Command::new("btrfs").args(["subvolume", "sync"]).arg(self.store()).stdout(Stdio::null()).status();
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(self.qgroups().is_empty(), "qgroups left: {:?}", self.qgroups());
        assert!(self.cgroup_children().is_empty(), "cgroups left: {:?}", self.cgroup_children());
        assert!(self.stray_processes().is_empty(), "processes left: {:?}", self.stray_processes());
    }

    /// Processes of this daemon's (their command line names its directory)
    /// that are neither the daemon, nor its helper, nor in a container's
    /// cgroup: what a crash could strand, e.g. a helper's short-lived children.
    pub fn stray_processes(&self) -> Vec<String> {
        let daemon = self.child.as_ref().map(|c| c.id().to_string());
        let dir = self.dir.display().to_string();
        let containers = format!("/{}/", self.cgroup_parent());
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = e.file_name().to_string_lossy().to_string();
            if !pid.bytes().all(|b| b.is_ascii_digit()) || Some(&pid) == daemon.as_ref() {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if !cmdline.contains(&dir) {
                continue;
            }
            // The field after the parenthesised command name is the state, then the parent.
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).map(String::from);
            let cgroup = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            if ppid.is_some() && ppid == daemon || cgroup.contains(&containers) {
                continue;
            }
            out.push(format!("{pid} {cmdline}"));
        }
        out
    }
}

/// `--metrics-listen off` unless `args` choose an address: parallel daemons
/// would all take the default port.
pub fn metrics_off<S: AsRef<str>>(args: &[S]) -> &'static [&'static str] {
    if args.iter().any(|a| a.as_ref() == "--metrics-listen") { &[] } else { &["--metrics-listen", "off"] }
}

/// Runs a `celld` of its own with its depot, run directory, socket and log
/// under `dir` and `args` after them, for tests that expect it to stop at
/// start: its exit status and log, or `None` (killed) if it still ran after `timeout`.
pub fn celld_exit(dir: &Path, args: &[&str], timeout: Duration) -> Option<(std::process::ExitStatus, String)> {
    std::fs::create_dir_all(dir).expect("test dir");
    let log = dir.join("celld-start.log");
    let mut child = Command::new(celld_bin())
        .arg("--depot")
        .arg(dir.join("depot"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--garden-socket")
        .arg(dir.join("garden.sock"))
        // A daemon that stops at start keeps no disk store mounted behind it.
        .args(if args.contains(&"--disk-limits") { &[][..] } else { &["--disk-limits", "none"][..] })
        .args(metrics_off(args))
        .args(args)
        // The scheduler role's own flag, after its subcommand.
        .args(if args.contains(&"scheduler") { metrics_off(args) } else { &[][..] })
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start celld");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some((status, std::fs::read_to_string(&log).unwrap_or_default()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        vec![base.to_path_buf()]
    } else {
        std::fs::read_dir(base).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Destroy what the test left through the API, then clean anything a
        // crashed daemon could not.
        if self.child.is_some() {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async {
                    if let Ok(handles) = self.client.list(&Default::default()).await {
                        for h in handles {
                            let _ = self.client.destroy(&h).await;
                        }
                    }
                });
            }
        }
        self.kill();
        // The store too (last: it is mounted first); unmounting it frees its
        // loop device (autoclear).
        for m in self.all_mounts().iter().rev() {
            if let Some(target) = m.split_whitespace().nth(4) {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
        for cg in self.cgroup_children() {
            if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|p| p.parse().ok()) {
                    kill_if_in(pid, &cg);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
            let _ = std::fs::remove_dir(&cg);
        }
        for i in self.interfaces() {
            let _ = Command::new("ip").args(["link", "del", &i]).status();
        }
        for family in ["ip", "bridge"] {
            let _ = Command::new("nft").args(["delete", "table", family, &self.table()]).stderr(Stdio::null()).status();
        }
        // The pool's unreachable route outlives the daemon on purpose (its
        // containers may); the test's pool is gone with the test.
        let _ = Command::new("ip").args(["route", "del", "unreachable", &self.pool]).stderr(Stdio::null()).status();
        // Parent cgroups of daemons that are gone (rmdir only removes empty ones).
        for root in cgroup_roots() {
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with("celld-") {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SIGKILLs `pid` only if it is still in cgroup `cg`: a pidfd pins the
/// process, so a pid reused meanwhile (pid_max can be 32768) is never hit.
fn kill_if_in(pid: i32, cg: &Path) {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return;
    }
    let name = cg.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let still_there = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|c| c.lines().any(|l| l.ends_with(&format!("/{name}"))));
    if still_there {
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, std::ptr::null::<u8>(), 0) };
    }
    unsafe { libc::close(fd) };
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// An output sink tests can read while the process runs.
#[derive(Clone, Default)]
pub struct Sink(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Sink {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().map(|v| v.clone()).unwrap_or_default()).into_owned()
    }

    /// Waits until the output contains `needle`.
    pub async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.text().contains(needle) {
            assert!(Instant::now() < deadline, "timed out waiting for {needle:?}; output so far: {:?}", self.text());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl tokio::io::AsyncWrite for Sink {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

pub fn spec(handle: &str) -> ContainerSpec {
    ContainerSpec { handle: handle.into(), ..Default::default() }
}

pub fn sh(script: &str) -> ProcessSpec {
    ProcessSpec { path: "sh".into(), args: vec!["-c".into(), script.into()], ..Default::default() }
}

/// Starts a script and returns once it has printed `marker` (so its traps are
/// set), with the sink collecting its stdout.
pub async fn start_until(d: &Daemon, handle: &str, script: &str, marker: &str) -> (Process, Sink) {
    let out = Sink::default();
    let io = ProcessIo { stdout: Some(Box::new(out.clone())), ..Default::default() };
    let p = d.client.run(handle, &sh(script), io).await.expect("run");
    out.wait_for(marker).await;
    (p, out)
}

/// Runs a process to completion; returns (exit status, stdout, stderr).
pub async fn run(d: &Daemon, handle: &str, p: ProcessSpec) -> (i32, String, String) {
    let (out, err) = (Sink::default(), Sink::default());
    let io = ProcessIo { stdin: None, stdout: Some(Box::new(out.clone())), stderr: Some(Box::new(err.clone())) };
    let proc = d.client.run(handle, &p, io).await.expect("run");
    let code = proc.wait().await.expect("wait");
    (code, out.text(), err.text())
}

pub fn garden_type(e: &ClientError) -> String {
    e.garden_type().unwrap_or_default().to_string()
}
pub mod cfapi;
pub mod diego;
pub mod local;
pub mod outside;
pub mod sched;
