//! What instances and tasks share: the container spec from Diego's resource
//! fields, egress rules as Garden net-out rules, the droplet streamed in, a
//! process's output followed into logs, a result file streamed out.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use super::ExecutorError;
use super::logs::LineWriter;
use celld_garden::gardener::Gardener;
use celld_proto as pb;
use celld_runtime::initproto::{self as proto, Request};
use garden_api::types::{
    BindMount, ContainerSpec, CpuLimits, DiskLimits, IcmpControl, ImageRef, IpRange, Limits, MemoryLimits, NetIn,
    NetOutRule, PidLimits, PortRange, Properties,
};

/// Where the lifecycle binaries are mounted in every container, as in CF.
pub const LIFECYCLE_MOUNT: &str = "/tmp/lifecycle";
/// Diego's default when a desired LRP or task sets no pid limit.
pub const DEFAULT_MAX_PIDS: u64 = 1024;

/// Diego's executor's inode limit for every container (its
/// `container_inode_limit`): recorded and reported; btrfs cannot enforce it.
pub const DEFAULT_INODE_LIMIT: u64 = 200_000;

/// Diego's disk limit for a container of `disk_mb` (0: none) on `rootfs`: a
/// preloaded rootfs is the platform's and only the container's writes count
/// (scope exclusive); any other image counts with them (scope total).
pub fn disk_limits(disk_mb: u32, rootfs: &str) -> DiskLimits {
    let preloaded = rootfs.starts_with("preloaded:") || rootfs.starts_with("preloaded+layer:");
    DiskLimits {
        byte_hard: u64::from(disk_mb) << 20,
        inode_hard: DEFAULT_INODE_LIMIT,
        scope: if preloaded { 1 } else { 0 },
        ..Default::default()
    }
}

/// Resources and wiring of one container, from a DesiredLRP or a Task.
pub struct Recipe<'a> {
    pub handle: &'a str,
    pub rootfs: &'a str,
    pub memory_mb: u32,
    pub disk_mb: u32,
    pub max_pids: u32,
    pub cpu_weight: u32,
    pub ports: &'a [u32],
    pub egress: &'a [pb::EgressRule],
    pub properties: Properties,
    /// celld's lifecycle, bound read-only at /tmp/lifecycle; none for a
    /// Diego action tree, which brings its own (Cloud Controller downloads
    /// the app lifecycle there as a cached dependency).
    pub lifecycle_dir: Option<&'a Path>,
    pub privileged: bool,
    /// Registry credentials of a `docker://` rootfs (both empty: anonymous).
    pub image_username: &'a str,
    pub image_password: &'a str,
}

impl Recipe<'_> {
    pub fn spec(&self) -> Result<ContainerSpec, ExecutorError> {
        let netout_rules = self.egress.iter().map(egress_rule).collect::<Result<Vec<_>, _>>()?;
        Ok(ContainerSpec {
            handle: self.handle.to_string(),
            rootfs: self.rootfs.to_string(),
            image: ImageRef {
                uri: String::new(),
                username: self.image_username.to_string(),
                password: self.image_password.to_string(),
            },
            properties: self.properties.clone(),
            bind_mounts: self
                .lifecycle_dir
                .map(|dir| BindMount {
                    src_path: dir.to_string_lossy().into_owned(),
                    dst_path: LIFECYCLE_MOUNT.to_string(),
                    mode: 0,
                    origin: 0,
                })
                .into_iter()
                .collect(),
            limits: Limits {
                memory_limits: MemoryLimits { limit_in_bytes: u64::from(self.memory_mb) << 20 },
                pid_limits: PidLimits {
                    max: if self.max_pids == 0 { DEFAULT_MAX_PIDS } else { u64::from(self.max_pids) },
                },
                // Diego weighs CPU by memory unless told otherwise.
                cpu_limits: CpuLimits {
                    weight: u64::from(if self.cpu_weight == 0 { self.memory_mb } else { self.cpu_weight }).max(2),
                    ..Default::default()
                },
                disk_limits: disk_limits(self.disk_mb, self.rootfs),
                ..Default::default()
            },
            netin: self.ports.iter().map(|&p| NetIn { host_port: 0, container_port: p }).collect(),
            netout_rules,
            privileged: self.privileged,
            ..Default::default()
        })
    }
}

fn bad_rule(msg: String) -> ExecutorError {
    ExecutorError::Invalid(format!("egress rule: {msg}"))
}

/// An application security group rule as a Garden net-out rule.
pub fn egress_rule(r: &pb::EgressRule) -> Result<NetOutRule, ExecutorError> {
    let protocol = match r.protocol.to_ascii_lowercase().as_str() {
        "all" | "" => 0,
        "tcp" => 1,
        "udp" => 2,
        "icmp" => 3,
        p => return Err(bad_rule(format!("protocol {p:?} is not one of tcp, udp, icmp, all"))),
    };
    let networks = r.destinations.iter().map(|d| ip_range(d)).collect::<Result<Vec<_>, _>>()?;
    let port = |p: u32| u16::try_from(p).map_err(|_| bad_rule(format!("port {p} is out of range")));
    let mut ports = Vec::new();
    for &p in &r.ports {
        let p = port(p)?;
        ports.push(PortRange { start: p, end: p });
    }
    if let Some(range) = &r.port_range {
        if range.start != 0 || range.end != 0 {
            ports.push(PortRange { start: port(range.start)?, end: port(range.end)? });
        }
    }
    let icmps = match (&r.icmp_info, protocol) {
        (Some(i), 3) => Some(IcmpControl {
            icmp_type: u8::try_from(i.r#type)
                .map_err(|_| bad_rule(format!("icmp type {} is out of range", i.r#type)))?,
            code: if i.code < 0 {
                None
            } else {
                Some(u8::try_from(i.code).map_err(|_| bad_rule(format!("icmp code {} is out of range", i.code)))?)
            },
        }),
        _ => None,
    };
    Ok(NetOutRule { protocol, networks, ports, icmps, log: r.log })
}

/// "10.0.0.1", "10.0.0.0/8" or "10.0.0.1-10.0.0.9" as a start–end range.
fn ip_range(d: &str) -> Result<IpRange, ExecutorError> {
    let parse = |s: &str| {
        s.trim().parse::<Ipv4Addr>().map_err(|_| bad_rule(format!("{d:?} is not an IPv4 address, CIDR or range")))
    };
    if let Some((a, b)) = d.split_once('-') {
        return Ok(IpRange { start: parse(a)?.to_string(), end: parse(b)?.to_string() });
    }
    if let Some((a, bits)) = d.split_once('/') {
        let ip = u32::from(parse(a)?);
        let bits: u32 =
            bits.parse().ok().filter(|b| *b <= 32).ok_or_else(|| bad_rule(format!("{d:?}: bad prefix length")))?;
        let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
        return Ok(IpRange {
            start: Ipv4Addr::from(ip & mask).to_string(),
            end: Ipv4Addr::from(ip | !mask).to_string(),
        });
    }
    let ip = parse(d)?.to_string();
    Ok(IpRange { start: ip.clone(), end: ip })
}

/// Streams a droplet (a .tgz) into `/home/vcap` as vcap. The archive is
/// decompressed on the host but unpacked by the container's init, as vcap:
/// its entries are never interpreted on the host. At most `limit` bytes of tar.
pub async fn stream_droplet(
    gardener: &Gardener,
    handle: &str,
    droplet: &Path,
    limit: u64,
) -> Result<(), ExecutorError> {
    let file =
        std::fs::File::open(droplet).map_err(|e| ExecutorError::Internal(format!("streaming the droplet in: {e}")))?;
    let tar = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    stream_tar_in(gardener, handle, "vcap", "/home/vcap", Box::new(tar), limit, "the droplet").await
}

/// Streams a tar (`tar`, read on a blocking thread) into `destination` as
/// `user`; init unpacks it, so its entries are never interpreted on the host.
/// At most `limit` bytes of tar; `what` names it in errors.
pub async fn stream_tar_in(
    gardener: &Gardener,
    handle: &str,
    user: &str,
    destination: &str,
    tar: Box<dyn Read + Send>,
    limit: u64,
    what: &str,
) -> Result<(), ExecutorError> {
    let conn =
        gardener.stream(handle, Request::StreamIn { user: user.into(), destination: destination.into() }).await?;
    let std = conn.into_std().map_err(|e| ExecutorError::Internal(e.to_string()))?;
    let label = what.to_string();
    let std = tokio::task::spawn_blocking(move || -> Result<std::os::unix::net::UnixStream, ExecutorError> {
        let io = |e: std::io::Error| ExecutorError::Internal(format!("streaming {label} in: {e}"));
        std.set_nonblocking(false).map_err(io)?;
        let mut tar = tar.take(limit.saturating_add(1));
        let copied = std::io::copy(&mut tar, &mut &std).map_err(io)?;
        if copied > limit {
            return Err(ExecutorError::Invalid(format!(
                "{label} unpacks to more than the disk limit ({} MB)",
                limit >> 20
            )));
        }
        std.shutdown(std::net::Shutdown::Write).map_err(io)?;
        std.set_nonblocking(true).map_err(io)?;
        Ok(std)
    })
    .await
    .map_err(|e| ExecutorError::Internal(e.to_string()))??;
    let mut conn = UnixStream::from_std(std).map_err(|e| ExecutorError::Internal(e.to_string()))?;
    let reply = proto::client::read_reply(&mut conn)
        .await
        .map_err(|e| ExecutorError::Internal(format!("streaming {what} in: {e}")))?;
    match reply.error {
        Some((_, msg)) => Err(ExecutorError::Internal(format!("unpacking {what}: {msg}"))),
        None => Ok(()),
    }
}

/// The first `max` bytes of the regular file `path` in the container, read as
/// vcap. The tar comes from the container, so only its first entry is read,
/// and only if it is a regular file.
pub async fn read_file(gardener: &Gardener, handle: &str, path: &str, max: u64) -> Result<Vec<u8>, ExecutorError> {
    read_file_as(gardener, handle, "vcap", path, max).await
}

/// [`read_file`] as `user`.
pub async fn read_file_as(
    gardener: &Gardener,
    handle: &str,
    user: &str,
    path: &str,
    max: u64,
) -> Result<Vec<u8>, ExecutorError> {
    let conn = gardener.stream(handle, Request::StreamOut { user: user.into(), source: path.into() }).await?;
    let mut buf = Vec::new();
    // A tar header, the file (bounded), padding and whatever else: enough.
    conn.take(max + 64 * 1024)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| ExecutorError::Internal(format!("reading {path}: {e}")))?;
    let mut ar = tar::Archive::new(std::io::Cursor::new(buf));
    let mut entries = ar.entries().map_err(|e| ExecutorError::Invalid(format!("reading {path}: {e}")))?;
    let mut entry = match entries.next() {
        Some(Ok(e)) => e,
        _ => return Err(ExecutorError::NotFound(format!("{path} does not exist in the container"))),
    };
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Err(ExecutorError::Invalid(format!("{path} is not a regular file")));
    }
    let mut out = Vec::new();
    let _ = (&mut entry).take(max).read_to_end(&mut out);
    Ok(out)
}

/// Passes a process's output to its log writers until it exits; returns its
/// exit status. `None` when the init connection broke first.
pub async fn follow(conn: UnixStream, mut out: LineWriter, mut err: LineWriter) -> Option<i32> {
    let never = tokio_util::sync::CancellationToken::new();
    let ended =
        follow_signalled(conn, &never, |is_err, data| if is_err { err.push(data) } else { out.push(data) }).await;
    out.flush();
    err.flush();
    ended.code
}

/// How a followed process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Followed {
    /// Its exit status; `None` when the init connection broke first, or when
    /// it outlived its KILL.
    pub code: Option<i32>,
    /// It was sent TERM (the cancel came).
    pub terminated: bool,
    /// It outlived the TERM's grace and was sent KILL.
    pub killed: bool,
}

/// Diego's graceful shutdown interval: TERM, then KILL this much later.
pub const GRACEFUL_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a KILLed process may take to be reported gone.
const EXIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Follows a process, passing its output to `output(is_stderr, bytes)`; once
/// `cancel` fires it is sent TERM, then KILL after [`GRACEFUL_SHUTDOWN`].
pub async fn follow_signalled(
    conn: UnixStream,
    cancel: &tokio_util::sync::CancellationToken,
    mut output: impl FnMut(bool, &[u8]),
) -> Followed {
    let (mut r, mut w) = conn.into_split();
    // Nobody types into an app: reading stdin gets EOF.
    let _ = proto::client::write_frame(&mut w, proto::TAG_STDIN_EOF, &[]).await;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut ended = Followed { code: None, terminated: false, killed: false };
    let mut deadline = tokio::time::Instant::now();
    loop {
        loop {
            match proto::decode(&mut buf) {
                Ok(Some((proto::TAG_STDOUT, data))) => output(false, &data),
                Ok(Some((proto::TAG_STDERR, data))) => output(true, &data),
                Ok(Some((proto::TAG_EXIT, data))) => {
                    ended.code = proto::parse_exit(&data);
                    return ended;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return ended,
            }
        }
        tokio::select! {
            n = r.read_buf(&mut buf) => if matches!(n, Ok(0) | Err(_)) { return ended },
            _ = cancel.cancelled(), if !ended.terminated => {
                ended.terminated = true;
                deadline = tokio::time::Instant::now() + GRACEFUL_SHUTDOWN;
                let _ = proto::client::write_frame(&mut w, proto::TAG_SIGNAL, &[libc::SIGTERM as u8]).await;
            }
            _ = tokio::time::sleep_until(deadline), if ended.terminated => {
                if ended.killed {
                    return ended;
                }
                ended.killed = true;
                deadline = tokio::time::Instant::now() + EXIT_TIMEOUT;
                let _ = proto::client::write_frame(&mut w, proto::TAG_SIGNAL, &[libc::SIGKILL as u8]).await;
            }
        }
    }
}

/// The container's addresses once created.
#[derive(Debug, Clone, Default)]
pub struct Addresses {
    pub host_ip: String,
    pub container_ip: String,
    pub ports: Vec<pb::PortMapping>,
}

pub async fn addresses(gardener: &Gardener, handle: &str) -> Result<Addresses, ExecutorError> {
    let info = gardener.info(handle).await?;
    Ok(Addresses {
        host_ip: if info.external_ip.is_empty() { info.host_ip.clone() } else { info.external_ip.clone() },
        container_ip: info.container_ip,
        ports: info
            .mapped_ports
            .iter()
            .map(|m| pb::PortMapping { container_port: m.container_port, host_port: m.host_port })
            .collect(),
    })
}

/// Whether the container's memory cgroup has seen an OOM kill.
pub async fn out_of_memory(gardener: &Gardener, handle: &str) -> bool {
    gardener.info(handle).await.is_ok_and(|i| i.events.iter().any(|e| e == celld_garden::gardener::OUT_OF_MEMORY_EVENT))
}

/// Diego's reason for a process that exited: "<source>: Exited with status N",
/// with " (out of memory)" when the container had an OOM kill.
pub fn exit_reason(log_source: &str, code: i32, oom: bool) -> String {
    format!("{log_source}: Exited with status {code}{}", if oom { " (out of memory)" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_limits_are_diegos() {
        let l = disk_limits(1024, "preloaded:cflinuxfs4");
        assert_eq!((l.byte_hard, l.scope, l.inode_hard), (1 << 30, 1, 200_000));
        let l = disk_limits(64, "docker:///busybox");
        assert_eq!((l.byte_hard, l.scope), (64 << 20, 0), "an image counts against the limit");
        assert_eq!(disk_limits(0, "preloaded:tiny").byte_hard, 0, "0 is no limit");
    }

    #[test]
    fn egress_rules_become_net_out_rules() {
        let r = pb::EgressRule {
            protocol: "tcp".into(),
            destinations: vec!["10.0.0.0/8".into(), "1.2.3.4".into(), "5.6.7.8-5.6.7.9".into()],
            ports: vec![443],
            port_range: Some(pb::PortRange { start: 8000, end: 8100 }),
            ..Default::default()
        };
        let n = egress_rule(&r).unwrap();
        assert_eq!(n.protocol, 1);
        assert_eq!(n.networks[0], IpRange { start: "10.0.0.0".into(), end: "10.255.255.255".into() });
        assert_eq!(n.networks[1], IpRange { start: "1.2.3.4".into(), end: "1.2.3.4".into() });
        assert_eq!(n.networks[2].end, "5.6.7.9");
        assert_eq!(n.ports, vec![PortRange { start: 443, end: 443 }, PortRange { start: 8000, end: 8100 }]);
        let all = egress_rule(&pb::EgressRule {
            protocol: "all".into(),
            destinations: vec!["0.0.0.0/0".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(all.networks[0], IpRange { start: "0.0.0.0".into(), end: "255.255.255.255".into() });
        for bad in ["sctp", "gre"] {
            let e = egress_rule(&pb::EgressRule { protocol: bad.into(), ..Default::default() }).unwrap_err();
            assert!(e.to_string().contains("protocol"), "{e}");
        }
        let e = egress_rule(&pb::EgressRule { destinations: vec!["10.0.0.0/40".into()], ..Default::default() })
            .unwrap_err();
        assert!(e.to_string().contains("prefix"), "{e}");
    }

    #[test]
    fn exit_reasons_are_diegos() {
        assert_eq!(exit_reason("APP/PROC/WEB", 1, false), "APP/PROC/WEB: Exited with status 1");
        assert_eq!(exit_reason("APP/PROC/WEB", 137, true), "APP/PROC/WEB: Exited with status 137 (out of memory)");
    }
}
