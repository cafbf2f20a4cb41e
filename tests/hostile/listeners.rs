//! Hostile listeners: see tests/hostile.rs. Issue 17, defects 7 (the Garden API
//! held down by half-sent heads and idle connections) and 8 (whoever reaches
//! `--garden-tcp` or a gRPC listener is trusted).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use celld::garden::client::{Address, Client};
use celld::grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::common;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn scratch(name: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let dir = PathBuf::from(format!("/tmp/celld-listeners-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A free loopback port (bound and released: a small window, fine for tests).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// Test certificates made with the openssl CLI: a CA with a server/client
/// leaf for 127.0.0.1 and a client leaf, and a second ("rogue") CA with a leaf.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = scratch("pki");
        let pki = Pki { dir };
        std::fs::write(
            pki.path("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n",
        )
        .expect("ext file");
        for ca in ["ca", "rogue-ca"] {
            pki.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=celld test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        for (leaf, ca) in [("server", "ca"), ("client", "ca"), ("rogue", "rogue-ca")] {
            pki.openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={leaf}"),
                "-keyout",
                &format!("{leaf}.key"),
                "-out",
                &format!("{leaf}.csr"),
            ]);
            pki.openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{leaf}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
                "-out",
                &format!("{leaf}.pem"),
            ]);
        }
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(&self.dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    fn s(&self, f: &str) -> String {
        self.path(f).display().to_string()
    }

    fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.path(f)).expect("pem")
    }

    /// Garden client TLS presenting `leaf` (None: no client certificate).
    fn garden_tls(&self, leaf: Option<&str>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_file_iter(self.path("ca.pem")).expect("ca") {
            roots.add(c.expect("ca cert")).expect("root");
        }
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        Arc::new(match leaf {
            None => b.with_no_client_auth(),
            Some(l) => {
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(self.path(&format!("{l}.pem")))
                    .expect("leaf")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("leaf certs");
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(self.path(&format!("{l}.key"))).expect("key");
                b.with_client_auth_cert(certs, key).expect("client auth")
            }
        })
    }

    /// A gRPC endpoint: `None` is plain HTTP/2, `Some(None)` TLS without a
    /// client certificate, `Some(Some(leaf))` TLS presenting `leaf`.
    fn grpc(&self, addr: &str, tls: Option<Option<&str>>) -> Endpoint {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .expect("uri")
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5));
        match tls {
            None => ep,
            Some(leaf) => {
                let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.read("ca.pem")));
                if let Some(l) = leaf {
                    cfg = cfg
                        .identity(Identity::from_pem(self.read(&format!("{l}.pem")), self.read(&format!("{l}.key"))));
                }
                ep.tls_config(cfg).expect("tls config")
            }
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a daemon with the soft open-file limit most hosts give a service
/// (512 here, below the attacks' counts; the hard limit stays), restoring the
/// test's own limit afterwards: celld must raise it itself.
fn start_with_low_nofile(extra: &[&str]) -> common::Daemon {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, 512.min(hard), hard).expect("setrlimit");
    let d = common::Daemon::start_with(extra);
    // The attacks need their own descriptors.
    setrlimit(Resource::RLIMIT_NOFILE, hard.max(soft), hard).expect("setrlimit");
    d
}

/// The daemon's pid: the process whose command line has its socket path.
fn daemon_pid(d: &common::Daemon) -> Option<u32> {
    let socket = d.socket.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (cmd.contains("--garden-socket") && cmd.contains(&socket)).then_some(pid)
    })
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|rd| rd.count()).unwrap_or(0)
}

/// `n` pings, one after the other, each bounded: their latencies, sorted.
async fn ping_times(c: &Client, n: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), c.ping()).await {
            Ok(Ok(())) => times.push(t.elapsed()),
            Ok(Err(e)) => panic!("ping {i} failed under attack: {e}"),
            Err(_) => panic!("ping {i} not answered within 5 s under attack"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times.sort();
    times
}

/// The bound: `/ping` within 100 ms. The median of the tries must
/// meet it (one slow try on a shared 2-core machine is noise, not a hold-down).
fn assert_ping_bound(what: &str, times: &[Duration]) {
    let median = times[times.len() / 2];
    eprintln!(
        "{what}: /ping min {:?} median {median:?} max {:?} over {} tries",
        times[0],
        times[times.len() - 1],
        times.len()
    );
    assert!(median < Duration::from_millis(100), "{what}: /ping median {median:?} ≥ 100 ms: {times:?}");
}

/// Whether the server closed `s` before `deadline` (EOF or reset).
async fn closed_by<S: tokio::io::AsyncRead + Unpin>(s: &mut S, deadline: tokio::time::Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn half_sent_heads_are_closed_and_ping_answers_meanwhile() {
    crate::require_host!();
    let tcp = format!("127.0.0.1:{}", free_port());
    // The default header timeout (10 s); a short idle timeout to see it work.
    let d = start_with_low_nofile(&["--garden-tcp", &tcp, "--garden-idle-timeout", "2"]);
    common::rt().block_on(async {
        // 2 000 connections, each with half a request head and no more.
        let started = tokio::time::Instant::now();
        let mut held = Vec::new();
        let mut failures = 0;
        while held.len() < 2000 && failures < 5 {
            match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&tcp)).await {
                Ok(Ok(mut s)) => {
                    let _ = s.write_all(b"GET /ping HTTP/1.1\r\nHost: celld\r\nUser-Agent: slow").await;
                    held.push(s);
                }
                _ => failures += 1,
            }
        }
        let opened = tokio::time::Instant::now();
        eprintln!("opened {} half-sent heads in {:?} ({failures} connects failed)", held.len(), started.elapsed());
        assert_eq!(held.len(), 2000, "the listener stopped accepting:\n{}", d.log());
        let times = ping_times(&d.client, 15).await;
        assert_ping_bound("2000 half-sent heads", &times);

        // A keep-alive connection idle after its request is closed (idle timeout 2 s).
        let mut ka = tokio::net::TcpStream::connect(&tcp).await.expect("connect");
        ka.write_all(b"GET /ping HTTP/1.1\r\nHost: celld\r\n\r\n").await.expect("request");
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n{}") {
            let mut b = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), ka.read(&mut b)).await.expect("reply").expect("read");
            assert!(n > 0, "closed before the reply: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
        let idle_since = Instant::now();
        assert!(
            closed_by(&mut ka, tokio::time::Instant::now() + Duration::from_secs(15)).await,
            "idle keep-alive kept"
        );
        eprintln!("idle keep-alive connection closed after {:?}", idle_since.elapsed());

        // Every half-sent head is closed after the header timeout (10 s;
        // generous slack for a loaded machine).
        let deadline = opened + Duration::from_secs(30);
        let mut open = 0;
        for s in &mut held {
            if !closed_by(s, deadline).await {
                open += 1;
            }
        }
        eprintln!("half-sent heads all handled {:?} after the first was opened", started.elapsed());
        assert_eq!(open, 0, "{open} half-sent heads still open 30 s after the last was sent");
    });
}

#[test]
fn idle_connections_past_the_cap_stop_neither_ping_nor_process_streams() {
    crate::require_host!();
    let d = start_with_low_nofile(&["--garden-max-connections", "100"]);
    let pid = daemon_pid(&d).expect("daemon pid");
    let h = d.handle("idle");
    common::rt().block_on(async {
        d.client.create(&common::spec(&h)).await.expect("create");
        // A process stream idle for the whole attack (a `cf ssh` or a long
        // run is): it must not be taken for an idle connection.
        let (proc, out) = common::start_until(&d, &h, "echo ready; sleep 5; echo done", "ready").await;
        let before = open_fds(pid);
        // 1 000 idle connections: ten times the cap, twice the fd limit the
        // daemon was started with.
        let mut held = Vec::new();
        let mut failures = 0;
        let started = Instant::now();
        while held.len() < 1000 && failures < 5 {
            match tokio::time::timeout(Duration::from_secs(2), tokio::net::UnixStream::connect(&d.socket)).await {
                Ok(Ok(s)) => held.push(s),
                _ => failures += 1,
            }
        }
        eprintln!("opened {} idle connections in {:?} ({failures} failed)", held.len(), started.elapsed());
        assert_eq!(held.len(), 1000, "the listener stopped accepting:\n{}", d.log());
        let times = ping_times(&d.client, 15).await;
        assert_ping_bound("1000 idle connections, cap 100", &times);
        // The daemon holds about the cap, not the attack.
        let during = open_fds(pid);
        eprintln!("daemon fds: {before} before, {during} during the attack");
        assert!(during <= before + 100 + 20, "daemon fds grew from {before} to {during}");
        let code = tokio::time::timeout(Duration::from_secs(20), proc.wait())
            .await
            .expect("the process stream survived")
            .expect("exit status");
        assert_eq!(code, 0);
        assert!(out.text().contains("done"), "stdout: {:?}", out.text());
        drop(held);
        d.client.destroy(&h).await.expect("destroy");
    });
}

#[test]
fn garden_tcp_with_mutual_tls_admits_only_the_cas_clients() {
    crate::require_host!();
    let pki = Pki::new();
    let tcp = format!("127.0.0.1:{}", free_port());
    let (cert, key, ca) = (pki.s("server.pem"), pki.s("server.key"), pki.s("ca.pem"));
    let d = common::Daemon::start_with(&[
        "--garden-tcp",
        &tcp,
        "--garden-tls-cert",
        &cert,
        "--garden-tls-key",
        &key,
        "--garden-tls-ca",
        &ca,
    ]);
    let addr = Address::Tcp(tcp.clone());
    common::rt().block_on(async {
        let bounded = |c: Client| async move {
            tokio::time::timeout(Duration::from_secs(10), c.ping()).await.expect("an answer or a refusal in 10 s")
        };
        let plain = bounded(Client::new(addr.clone())).await;
        assert!(plain.is_err(), "plain TCP was served");
        let no_cert = bounded(Client::new(addr.clone()).with_tls(pki.garden_tls(None))).await;
        assert!(no_cert.is_err(), "a client without a certificate was served");
        let rogue = bounded(Client::new(addr.clone()).with_tls(pki.garden_tls(Some("rogue")))).await;
        assert!(rogue.is_err(), "a client with another CA's certificate was served");
        let good = Client::new(addr.clone()).with_tls(pki.garden_tls(Some("client")));
        bounded(good.clone()).await.expect("the CA's client is served");
        let h = d.handle("tls");
        good.create(&common::spec(&h)).await.expect("create over mutual TLS");
        assert!(good.list(&Default::default()).await.expect("list").contains(&h));
        good.destroy(&h).await.expect("destroy");
    });
    assert!(!d.log().contains("without TLS"), "warned about plain TCP although TLS is on");
}

#[test]
fn garden_tcp_without_tls_warns_at_start() {
    crate::require_host!();
    let tcp = format!("127.0.0.1:{}", free_port());
    let d = common::Daemon::start_with(&["--garden-tcp", &tcp]);
    common::rt().block_on(async {
        Client::new(Address::Tcp(tcp.clone())).ping().await.expect("plain TCP still possible");
    });
    assert!(d.log().contains("root on this host"), "no warning about plain TCP:\n{}", d.log());
}

/// `celld scheduler` with mutual TLS, killed on drop.
struct TlsScheduler {
    dir: PathBuf,
    addr: String,
    child: Child,
}

impl TlsScheduler {
    fn start(pki: &Pki) -> Self {
        let dir = scratch("sched");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("scheduler.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_celld"))
            .arg("--depot")
            .arg(dir.join("depot"))
            .args(["scheduler", "--listen", &addr, "--metrics-listen", "off", "--db"])
            .arg(dir.join("scheduler.db"))
            .args(["--tls-cert", &pki.s("server.pem"), "--tls-key", &pki.s("server.key"), "--tls-ca", &pki.s("ca.pem")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the scheduler");
        let s = TlsScheduler { dir, addr, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&s.addr).is_err() {
            assert!(Instant::now() < deadline, "the scheduler did not start:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("scheduler.log")).unwrap_or_default()
    }
}

impl Drop for TlsScheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn grpc_listeners_with_mutual_tls_admit_only_the_cas_clients() {
    crate::require_host!();
    let pki = Pki::new();
    let sched = TlsScheduler::start(&pki);
    let (cert, key, ca) = (pki.s("server.pem"), pki.s("server.key"), pki.s("ca.pem"));
    // A cell with TLS on --grpc-listen, reporting to the TLS scheduler.
    let cell = common::Daemon::start_with(&[
        "--scheduler",
        &sched.addr,
        "--cell-id",
        "tls-cell",
        "--grpc-tls-cert",
        &cert,
        "--grpc-tls-key",
        &key,
        "--grpc-tls-ca",
        &ca,
    ]);
    common::rt().block_on(async {
        use pb::cell_client::CellClient;
        use pb::scheduler_client::SchedulerClient;
        for (what, tls) in
            [("plain HTTP/2", None), ("TLS without a certificate", Some(None)), ("another CA's", Some(Some("rogue")))]
        {
            let cells = async {
                let ch = pki.grpc(&sched.addr, tls).connect().await.map_err(|e| e.to_string())?;
                SchedulerClient::new(ch).cells(pb::CellsRequest {}).await.map_err(|e| e.to_string())
            };
            let r = tokio::time::timeout(Duration::from_secs(15), cells).await.expect("bounded");
            assert!(r.is_err(), "scheduler served a client with {what}");
            let state = async {
                let ch = pki.grpc(&cell.grpc, tls).connect().await.map_err(|e| e.to_string())?;
                CellClient::new(ch).state(pb::StateRequest {}).await.map_err(|e| e.to_string())
            };
            let r = tokio::time::timeout(Duration::from_secs(15), state).await.expect("bounded");
            assert!(r.is_err(), "--grpc-listen served a client with {what}");
        }
        // The CA's client is served by both, and the cell reached the
        // scheduler over TLS (it is present there).
        let mut cells = SchedulerClient::new(pki.grpc(&sched.addr, Some(Some("client"))).connect_lazy());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed = cells.cells(pb::CellsRequest {}).await.expect("Cells over mutual TLS").into_inner();
            if listed.cells.iter().any(|c| c.cell_id == "tls-cell") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cell never reached the TLS scheduler:\n{}\n{}",
                cell.log(),
                sched.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        CellClient::new(pki.grpc(&cell.grpc, Some(Some("client"))).connect_lazy())
            .state(pb::StateRequest {})
            .await
            .expect("Cell.State over mutual TLS");
    });
}

/// Runs `celld ARGS` expecting it to fail at start; its stderr.
fn failed_start(args: &[&str], dir: &Path) -> String {
    let (status, err) = common::celld_exit(dir, args, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("celld {args:?} did not fail at start"));
    assert!(!status.success(), "celld {args:?} started");
    err
}

#[test]
fn a_missing_or_unreadable_tls_file_fails_start_up_naming_it() {
    crate::require_host!();
    let pki = Pki::new();
    let dir = scratch("badtls");
    let missing = dir.join("no-such-key.pem").display().to_string();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("garbage");
    let garbage = garbage.display().to_string();
    let (cert, key, ca) = (pki.s("server.pem"), pki.s("server.key"), pki.s("ca.pem"));
    let tcp = format!("127.0.0.1:{}", free_port());
    let grpc = format!("127.0.0.1:{}", free_port());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--garden-tcp",
                &tcp,
                "--garden-tls-cert",
                &cert,
                "--garden-tls-key",
                &missing,
                "--garden-tls-ca",
                &ca,
            ],
            &missing,
        ),
        (
            vec!["--garden-tcp", &tcp, "--garden-tls-cert", &garbage, "--garden-tls-key", &key, "--garden-tls-ca", &ca],
            &garbage,
        ),
        (
            vec!["--grpc-listen", &grpc, "--grpc-tls-cert", &cert, "--grpc-tls-key", &key, "--grpc-tls-ca", &missing],
            &missing,
        ),
        (vec!["--garden-tcp", &tcp, "--garden-tls-cert", &cert], "--garden-tls-key"),
        (vec!["scheduler", "--listen", &grpc, "--tls-cert", &missing, "--tls-key", &key, "--tls-ca", &ca], &missing),
    ];
    for (args, named) in cases {
        let err = failed_start(&args, &dir);
        assert!(err.contains(named), "celld {args:?} failed without naming {named}:\n{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
