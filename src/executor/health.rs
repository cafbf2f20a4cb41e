//! Health checks of app instances, run from the host against the container's
//! address: no healthcheck process is spawned per check (Diego runs the
//! `healthcheck` binary inside the container; probing from the host needs no
//! extra process and reaches the same listener, since apps bind 0.0.0.0).
//!
//! Failure messages are the `healthcheck` binary's, current wording
//! (cloudfoundry/healthcheck `healthcheck.go` @6208b09):
//! - "failed to make TCP connection to IP:PORT: dial tcp IP:PORT: connect: connection refused"
//! - "failed to make TCP connection to IP:PORT: timed out after 1.00 seconds"
//! - "failed to make HTTP request to '/path' on port PORT: received status code 500 in 3ms"
//! - "failed to make HTTP request to '/path' on port PORT: timed out after 1.00 seconds"
//! - "failed to make HTTP request to '/path' on port PORT: connection refused" (any other error)
//!
//! Crash reasons are the executor's (`depot/steps/health_check_step.go`):
//! "Instance never healthy after %s: %s" and "Instance became unhealthy: %s".

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use celld_proto as pb;

/// A check's timeout when the model leaves it 0.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Liveness interval when the model leaves it 0.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(30_000);
/// How often readiness is polled until the instance is ready (the executor's
/// until-ready interval).
pub const UNTIL_READY_INTERVAL: Duration = Duration::from_secs(2);

/// Startup polling: first attempt at once, then from this delay doubling…
const STARTUP_FIRST_DELAY: Duration = Duration::from_millis(10);
/// …up to this one. Faster than Diego's fixed 2 s so that desired→running is
/// quick; a connect or a GET every 500 ms is negligible load.
const STARTUP_MAX_DELAY: Duration = Duration::from_millis(500);

/// Longest status line we read before giving up on the response.
const MAX_STATUS_LINE: usize = 8192;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HealthError {
    #[error("health check port {0} is out of range (1-65535)")]
    InvalidPort(u32),
    #[error("health check has neither a tcp nor an http check")]
    Empty,
}

/// What a check probes: an address and, for a container, the host end of its
/// veth. Without the interface the address routes nowhere in this container (a
/// pool route makes it unreachable; without one it could reach another host),
/// so a check never passes unless the interface is there before and after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub ip: Ipv4Addr,
    pub iface: Option<String>,
}

impl From<Ipv4Addr> for Target {
    /// A bare address (loopback in unit tests): no interface to verify.
    fn from(ip: Ipv4Addr) -> Self {
        Target { ip, iface: None }
    }
}

impl Target {
    /// A container's address on this cell's network (`0.0.0.0` without
    /// networking: nothing to verify).
    pub fn container(ip: Ipv4Addr) -> Self {
        Target { ip, iface: (!ip.is_unspecified()).then(|| celld_network::host_veth_for(ip)) }
    }

    /// `Err` with a crash reason once the container's interface is gone.
    pub fn interface_present(&self) -> Result<(), String> {
        match &self.iface {
            Some(i) if !celld_network::link::exists(i) => Err(lost_interface(i, self.ip)),
            _ => Ok(()),
        }
    }
}

/// The crash reason of an instance whose container lost its network interface.
pub fn lost_interface(iface: &str, ip: Ipv4Addr) -> String {
    format!("container's network interface {iface} is gone: {ip} no longer leads into the container")
}

/// One declarative health check (`CheckDefinition.checks[]` or
/// `readiness_checks[]`), with the model's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Tcp { port: u16, timeout: Duration, interval: Duration },
    Http { port: u16, path: String, timeout: Duration, interval: Duration },
}

impl Probe {
    pub fn from_check(c: &pb::Check) -> Result<Probe, HealthError> {
        match &c.check {
            Some(pb::check::Check::Tcp(t)) => Ok(Probe::Tcp {
                port: port(t.port)?,
                timeout: ms_or(t.connect_timeout_ms, DEFAULT_TIMEOUT),
                interval: ms_or(t.interval_ms, DEFAULT_INTERVAL),
            }),
            Some(pb::check::Check::Http(h)) => Ok(Probe::Http {
                port: port(h.port)?,
                path: if h.path.is_empty() { "/".into() } else { h.path.clone() },
                timeout: ms_or(h.request_timeout_ms, DEFAULT_TIMEOUT),
                interval: ms_or(h.interval_ms, DEFAULT_INTERVAL),
            }),
            None => Err(HealthError::Empty),
        }
    }

    /// The liveness interval.
    pub fn interval(&self) -> Duration {
        match self {
            Probe::Tcp { interval, .. } | Probe::Http { interval, .. } => *interval,
        }
    }

    /// One check against the instance at `target`; `Err` holds the
    /// healthcheck binary's message, or why the target is not the container.
    pub async fn check(&self, target: impl Into<Target>) -> Result<(), String> {
        self.check_target(&target.into()).await
    }

    async fn check_target(&self, t: &Target) -> Result<(), String> {
        t.interface_present()?;
        let result = match self {
            Probe::Tcp { port, timeout, .. } => tcp_check(t.ip, *port, *timeout).await,
            Probe::Http { port, path, timeout, .. } => http_check(t.ip, *port, path, *timeout).await,
        };
        // Gone meanwhile: whatever answered was not the container.
        t.interface_present()?;
        result
    }
}

fn port(p: u32) -> Result<u16, HealthError> {
    u16::try_from(p).ok().filter(|p| *p != 0).ok_or(HealthError::InvalidPort(p))
}

fn ms_or(ms: u32, default: Duration) -> Duration {
    if ms == 0 { default } else { Duration::from_millis(u64::from(ms)) }
}

async fn tcp_check(ip: Ipv4Addr, port: u16, timeout: Duration) -> Result<(), String> {
    let addr = SocketAddr::from((ip, port));
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => {
            Err(format!("failed to make TCP connection to {addr}: dial tcp {addr}: connect: {}", go_errno(&e)))
        }
        Err(_) => Err(format!(
            "failed to make TCP connection to {addr}: timed out after {:.2} seconds",
            timeout.as_secs_f64()
        )),
    }
}

async fn http_check(ip: Ipv4Addr, port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    let status = match tokio::time::timeout(timeout, http_status(ip, port, path)).await {
        Ok(Ok(status)) => status,
        Ok(Err(_)) => {
            // The healthcheck binary reports every non-timeout error this way.
            return Err(format!("failed to make HTTP request to '{path}' on port {port}: connection refused"));
        }
        Err(_) => {
            return Err(format!(
                "failed to make HTTP request to '{path}' on port {port}: timed out after {:.2} seconds",
                timeout.as_secs_f64()
            ));
        }
    };
    if status == 200 {
        return Ok(());
    }
    Err(format!(
        "failed to make HTTP request to '{path}' on port {port}: received status code {status} in {}ms",
        started.elapsed().as_millis()
    ))
}

/// GETs `path` and returns the response's status code. Only the status line
/// is read; `Connection: close` tells the app not to keep the connection.
async fn http_status(ip: Ipv4Addr, port: u16, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect((ip, port)).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: diego-healthcheck\r\n\
         X-Forwarded-Proto: https\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            return parse_status_line(buf.get(..end).unwrap_or_default());
        }
        if buf.len() > MAX_STATUS_LINE {
            return Err(invalid("status line too long"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no HTTP response"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// "HTTP/1.1 200 OK" → 200.
fn parse_status_line(line: &[u8]) -> std::io::Result<u16> {
    let line = std::str::from_utf8(line).map_err(|_| invalid("status line is not UTF-8"))?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") || code.len() != 3 {
        return Err(invalid("malformed status line"));
    }
    code.parse().map_err(|_| invalid("malformed status code"))
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// An OS error as Go's `syscall.Errno` prints it ("connection refused"):
/// strerror without the " (os error N)" suffix, lower-cased first letter.
fn go_errno(e: &std::io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(code) => {
            let s = std::io::Error::from_raw_os_error(code).to_string();
            s.rsplit_once(" (os error ").map(|(t, _)| t.to_string()).unwrap_or(s)
        }
        None => e.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Formats like Go's `time.Duration.String()`: "0s", "500ms", "1.5µs",
/// "2.5s", "1m0s", "2m30s", "1h0m0s" (so crash reasons read as Diego's).
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{}{unit}", nanos / scale, fraction(nanos % scale, scale));
    }
    let secs = nanos / 1_000_000_000;
    let sub = nanos % 1_000_000_000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let seconds = format!("{s}{}s", fraction(sub, 1_000_000_000));
    if h > 0 {
        format!("{h}h{m}m{seconds}")
    } else if m > 0 {
        format!("{m}m{seconds}")
    } else {
        seconds
    }
}

/// ".5" for 500 of 1000; "" for 0: the fractional part, trailing zeros cut.
fn fraction(rem: u128, scale: u128) -> String {
    if rem == 0 {
        return String::new();
    }
    let width = scale.to_string().len() - 1;
    let digits = format!("{rem:0width$}");
    format!(".{}", digits.trim_end_matches('0'))
}

/// Checks every probe once; the first failure's message.
async fn check_all(probes: &[Probe], t: &Target) -> Result<(), String> {
    for p in probes {
        p.check_target(t).await?;
    }
    Ok(())
}

/// Startup: polls until every probe passes, first at once then backing off
/// from 10 ms to 500 ms. After `start_timeout` fails with the crash reason
/// `Instance never healthy after <start_timeout>: <last error>`. (Diego puts
/// the measured time, rounded to ms, where we put `start_timeout`.)
pub async fn until_healthy(probes: &[Probe], target: impl Into<Target>, start_timeout: Duration) -> Result<(), String> {
    let t = target.into();
    let deadline = tokio::time::Instant::now() + start_timeout;
    let mut delay = STARTUP_FIRST_DELAY;
    let mut last_error = String::new();
    loop {
        // An attempt never runs past the deadline.
        match tokio::time::timeout_at(deadline, check_all(probes, &t)).await {
            Ok(Ok(())) => return Ok(()),
            // Not worth waiting out the timeout for: it will not come back.
            Ok(Err(e)) if t.interface_present().is_err() => {
                last_error = e;
                break;
            }
            Ok(Err(e)) => last_error = e,
            Err(_) => break,
        }
        if tokio::time::Instant::now() + delay >= deadline {
            tokio::time::sleep_until(deadline).await;
            break;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(STARTUP_MAX_DELAY);
    }
    if last_error.is_empty() {
        last_error = "health check did not complete".into();
    }
    Err(format!("Instance never healthy after {}: {last_error}", go_duration(start_timeout)))
}

/// Liveness: checks each probe at its interval (first one interval after
/// being healthy) until one fails, and returns the crash reason
/// `Instance became unhealthy: <error>`. Never returns without probes.
pub async fn until_unhealthy(probes: &[Probe], target: impl Into<Target>) -> String {
    let e = first_failure(probes, &target.into(), Probe::interval).await;
    format!("Instance became unhealthy: {e}")
}

/// Readiness, not ready yet: polls every probe every 2 s (first at once)
/// until all pass. Never returns while they fail; the caller drops it.
pub async fn until_ready(probes: &[Probe], target: impl Into<Target>) {
    let t = target.into();
    loop {
        if check_all(probes, &t).await.is_ok() {
            return;
        }
        tokio::time::sleep(UNTIL_READY_INTERVAL).await;
    }
}

/// Readiness, ready: checks each probe at its interval until one fails, and
/// returns its message. Never returns without probes.
pub async fn until_not_ready(probes: &[Probe], target: impl Into<Target>) -> String {
    first_failure(probes, &target.into(), Probe::interval).await
}

/// How often a running instance's interface is looked for.
pub const INTERFACE_INTERVAL: Duration = Duration::from_secs(1);

/// Resolves with a crash reason once the container's interface is gone (a
/// `stat` per second; never for a target without one). Instances without
/// health checks are watched too: the router must not keep sending to them.
pub async fn until_interface_lost(target: &Target) -> String {
    if target.iface.is_none() {
        return std::future::pending().await;
    }
    loop {
        if let Err(reason) = target.interface_present() {
            return reason;
        }
        tokio::time::sleep(INTERFACE_INTERVAL).await;
    }
}

/// Runs each probe on its own schedule (every `interval(probe)`) and returns
/// the first failure.
async fn first_failure(probes: &[Probe], t: &Target, interval: fn(&Probe) -> Duration) -> String {
    let start = tokio::time::Instant::now();
    let mut due: Vec<(tokio::time::Instant, &Probe)> = probes.iter().map(|p| (start + interval(p), p)).collect();
    loop {
        let Some(next) = due.iter_mut().min_by_key(|(at, _)| *at) else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(next.0).await;
        if let Err(e) = next.1.check_target(t).await {
            return e;
        }
        next.0 = tokio::time::Instant::now() + interval(next.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    fn tcp(port: u16, timeout_ms: u64) -> Probe {
        Probe::Tcp { port, timeout: Duration::from_millis(timeout_ms), interval: Duration::from_millis(20) }
    }

    fn http(port: u16, path: &str) -> Probe {
        Probe::Http {
            port,
            path: path.into(),
            timeout: Duration::from_millis(1000),
            interval: Duration::from_millis(20),
        }
    }

    /// A port nothing listens on (bound, then closed).
    async fn closed_port() -> u16 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        l.local_addr().unwrap().port()
    }

    /// An HTTP server answering each request with the next status of
    /// `statuses` (the last one repeated); returns its port and a hit counter.
    async fn http_server(statuses: Vec<u16>) -> (u16, Arc<AtomicUsize>) {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let n = h.fetch_add(1, Ordering::SeqCst);
                let status = *statuses.get(n).or(statuses.last()).unwrap();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 512];
                    while !req.ends_with(b"\r\n\r\n") {
                        let n = s.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..n]);
                    }
                    let req = String::from_utf8(req).unwrap();
                    assert!(req.contains("User-Agent: diego-healthcheck\r\n"), "{req}");
                    assert!(req.contains("X-Forwarded-Proto: https\r\n"), "{req}");
                    let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        (port, hits)
    }

    #[test]
    fn probe_from_check_applies_defaults_and_rejects_bad_ports() {
        let c = pb::Check { check: Some(pb::check::Check::Tcp(pb::TcpCheck { port: 8080, ..Default::default() })) };
        assert_eq!(
            Probe::from_check(&c).unwrap(),
            Probe::Tcp { port: 8080, timeout: DEFAULT_TIMEOUT, interval: DEFAULT_INTERVAL }
        );
        let c = pb::Check {
            check: Some(pb::check::Check::Http(pb::HttpCheck {
                port: 8080,
                request_timeout_ms: 250,
                path: String::new(),
                interval_ms: 5000,
            })),
        };
        assert_eq!(
            Probe::from_check(&c).unwrap(),
            Probe::Http {
                port: 8080,
                path: "/".into(),
                timeout: Duration::from_millis(250),
                interval: Duration::from_secs(5)
            }
        );
        for bad in [0, 65536, u32::MAX] {
            let c = pb::Check { check: Some(pb::check::Check::Tcp(pb::TcpCheck { port: bad, ..Default::default() })) };
            let e = Probe::from_check(&c).unwrap_err();
            assert_eq!(e, HealthError::InvalidPort(bad));
            assert!(e.to_string().contains(&bad.to_string()));
        }
        assert_eq!(Probe::from_check(&pb::Check { check: None }).unwrap_err(), HealthError::Empty);
    }

    #[test]
    fn go_duration_formats_like_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(1500), "1.5µs"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(2500), "2.5s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_millis(60_012), "1m0.012s"),
            (Duration::from_secs(150), "2m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(3723), "1h2m3s"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }

    #[tokio::test]
    async fn tcp_check_passes_and_fails_like_healthcheck() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tcp(port, 1000).check(Ipv4Addr::LOCALHOST).await.unwrap();

        let port = closed_port().await;
        let e = tcp(port, 1000).check(Ipv4Addr::LOCALHOST).await.unwrap_err();
        assert_eq!(
            e,
            format!(
                "failed to make TCP connection to 127.0.0.1:{port}: dial tcp 127.0.0.1:{port}: connect: connection refused"
            )
        );
    }

    #[tokio::test]
    async fn tcp_check_times_out() {
        // A listener whose accept queue is full drops further SYNs, so a
        // connect hangs: a timeout on loopback, without relying on an
        // unroutable address (a sandbox's proxy may answer for any).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let addr = socket.local_addr().unwrap();
        let _listener = socket.listen(0).unwrap();
        let mut held = Vec::new();
        let mut full = false;
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => held.push(s),
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => {
                    full = true;
                    break;
                }
            }
        }
        if !full {
            eprintln!("skipping: the accept queue never filled");
            return;
        }
        let e = tcp(addr.port(), 200).check(Ipv4Addr::LOCALHOST).await.unwrap_err();
        assert_eq!(e, format!("failed to make TCP connection to {addr}: timed out after 0.20 seconds"));
    }

    #[tokio::test]
    async fn http_check_only_200_passes() {
        let (port, _) = http_server(vec![200]).await;
        http(port, "/health").check(Ipv4Addr::LOCALHOST).await.unwrap();

        let (port, _) = http_server(vec![500]).await;
        let e = http(port, "/health").check(Ipv4Addr::LOCALHOST).await.unwrap_err();
        let prefix = format!("failed to make HTTP request to '/health' on port {port}: received status code 500 in ");
        assert!(e.starts_with(&prefix) && e.ends_with("ms"), "{e}");

        let (port, _) = http_server(vec![204]).await;
        assert!(http(port, "/").check(Ipv4Addr::LOCALHOST).await.is_err());

        let port = closed_port().await;
        let e = http(port, "/").check(Ipv4Addr::LOCALHOST).await.unwrap_err();
        assert_eq!(e, format!("failed to make HTTP request to '/' on port {port}: connection refused"));
    }

    #[tokio::test]
    async fn http_check_times_out_on_a_silent_server() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let probe = Probe::Http {
            port,
            path: "/".into(),
            timeout: Duration::from_millis(100),
            interval: Duration::from_secs(1),
        };
        let e = probe.check(Ipv4Addr::LOCALHOST).await.unwrap_err();
        assert_eq!(e, format!("failed to make HTTP request to '/' on port {port}: timed out after 0.10 seconds"));
        drop(l);
    }

    #[tokio::test]
    async fn a_check_never_passes_without_the_containers_interface() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move { while l.accept().await.is_ok() {} });
        tcp(port, 1000).check(Ipv4Addr::LOCALHOST).await.unwrap();
        // A listener answers at the address, but the interface is not there.
        let gone = Target { ip: Ipv4Addr::LOCALHOST, iface: Some("cvh-nosuchif".into()) };
        let e = tcp(port, 1000).check(gone.clone()).await.unwrap_err();
        assert!(e.contains("network interface cvh-nosuchif is gone"), "{e}");
        let e = until_healthy(&[tcp(port, 1000)], gone.clone(), Duration::from_secs(30)).await.unwrap_err();
        assert!(e.starts_with("Instance never healthy after 30s: container's network interface"), "{e}");
        let e = tokio::time::timeout(Duration::from_secs(5), until_interface_lost(&gone)).await.unwrap();
        assert!(e.contains("cvh-nosuchif"));
        assert_eq!(Target::container(Ipv4Addr::new(10, 254, 0, 6)).iface.as_deref(), Some("cvh-0afe0004"));
        assert_eq!(Target::container(Ipv4Addr::UNSPECIFIED).iface, None);
    }

    #[tokio::test]
    async fn until_healthy_waits_for_a_slow_starter() {
        let (port, hits) = http_server(vec![500, 500, 500, 200]).await;
        let started = Instant::now();
        until_healthy(&[http(port, "/")], Ipv4Addr::LOCALHOST, Duration::from_secs(5)).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 4);
        // 10 + 20 + 40 ms of backoff, well under Diego's 2 s polling.
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn until_healthy_needs_every_probe() {
        let (http_port, _) = http_server(vec![200]).await;
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let tcp_port = l.local_addr().unwrap().port();
        let probes = [http(http_port, "/"), tcp(tcp_port, 1000)];
        until_healthy(&probes, Ipv4Addr::LOCALHOST, Duration::from_secs(2)).await.unwrap();

        let dead = closed_port().await;
        let probes = [http(http_port, "/"), tcp(dead, 1000)];
        let e = until_healthy(&probes, Ipv4Addr::LOCALHOST, Duration::from_millis(300)).await.unwrap_err();
        assert!(e.contains(&format!("127.0.0.1:{dead}")), "{e}");
        until_healthy(&[], Ipv4Addr::LOCALHOST, Duration::ZERO).await.unwrap();
    }

    #[tokio::test]
    async fn until_healthy_gives_up_with_diegos_crash_reason() {
        let port = closed_port().await;
        let started = Instant::now();
        let e = until_healthy(&[tcp(port, 1000)], Ipv4Addr::LOCALHOST, Duration::from_millis(300)).await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            e,
            format!(
                "Instance never healthy after 300ms: failed to make TCP connection to 127.0.0.1:{port}: \
                 dial tcp 127.0.0.1:{port}: connect: connection refused"
            )
        );
    }

    #[tokio::test]
    async fn until_unhealthy_reports_the_first_failure() {
        let (port, hits) = http_server(vec![200, 200, 503]).await;
        let e = tokio::time::timeout(Duration::from_secs(5), until_unhealthy(&[http(port, "/h")], Ipv4Addr::LOCALHOST))
            .await
            .unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        let prefix = format!(
            "Instance became unhealthy: failed to make HTTP request to '/h' on port {port}: received status code 503 in "
        );
        assert!(e.starts_with(&prefix), "{e}");
    }

    #[tokio::test]
    async fn readiness_flips() {
        let (port, _) = http_server(vec![200, 200, 500]).await;
        let probes = [http(port, "/ready")];
        tokio::time::timeout(Duration::from_secs(1), until_ready(&probes, Ipv4Addr::LOCALHOST)).await.unwrap();
        let e =
            tokio::time::timeout(Duration::from_secs(5), until_not_ready(&probes, Ipv4Addr::LOCALHOST)).await.unwrap();
        assert!(e.contains("received status code 500"), "{e}");
        // Without probes, liveness never fails.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), until_unhealthy(&[], Ipv4Addr::LOCALHOST)).await.is_err()
        );
    }
}
