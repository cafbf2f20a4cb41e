//! The daemon's command line: one struct, validated once.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use celld_scheduler::SchedulerArgs;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "celld",
    version,
    about = "A Cloud Foundry Diego cell: the Garden container API on real namespaces and cgroups"
)]
pub struct Config {
    /// Unix socket the Garden API listens on.
    #[arg(long, default_value = "/run/celld/garden.sock")]
    pub garden_socket: PathBuf,
    /// Also serve the Garden API on this TCP address (e.g. 127.0.0.1:7777).
    /// Garden has no authentication: whoever reaches it is root on this host
    /// (privileged containers, host bind mounts). Use the --garden-tls-* flags
    /// unless only trusted local users can reach the address.
    #[arg(long)]
    pub garden_tcp: Option<String>,
    /// Mutual TLS on --garden-tcp: this server's certificate chain (PEM).
    #[arg(long, requires = "garden_tcp")]
    pub garden_tls_cert: Option<PathBuf>,
    /// Mutual TLS on --garden-tcp: the certificate's private key (PEM).
    #[arg(long, requires = "garden_tcp")]
    pub garden_tls_key: Option<PathBuf>,
    /// Mutual TLS on --garden-tcp: the CA whose client certificates are accepted (PEM).
    #[arg(long, requires = "garden_tcp")]
    pub garden_tls_ca: Option<PathBuf>,
    /// Seconds a Garden client has to send a request head (or finish the TLS
    /// handshake) after connecting.
    #[arg(long, default_value_t = 10)]
    pub garden_header_timeout: u64,
    /// Seconds a keep-alive Garden connection may wait for its next request.
    /// Process streams (run, attach) are never timed out.
    #[arg(long, default_value_t = 120)]
    pub garden_idle_timeout: u64,
    /// Most Garden connections at once (unix socket and TCP together); at the
    /// cap the longest-idle one is closed, or the new one refused if all are
    /// busy. Lowered to half the open-file limit if above it.
    #[arg(long, default_value_t = 4096)]
    pub garden_max_connections: usize,
    /// Serve Garden's debug endpoint (`/debug/vars`: memory figures, counters)
    /// on this TCP address, e.g. 127.0.0.1:17013. Off unless given; it has no
    /// authentication, so keep it on a local address.
    #[arg(long)]
    pub debug_listen: Option<String>,
    /// Serve the web dashboard (cells, apps, instances, logs) on this TCP
    /// address, e.g. 127.0.0.1:8081; off unless given. A cell without the app
    /// layer shows its own capacity, vitals and instances. It has no login:
    /// keep it on a local address.
    #[arg(long)]
    pub dashboard_listen: Option<String>,
    /// Let the dashboard start, stop, restart and scale apps; read-only without.
    #[arg(long)]
    pub dashboard_actions: bool,
    /// Local mode: no dashboard at http://celld.<domain>:<router port>/.
    #[arg(long)]
    pub no_dashboard: bool,
    /// Where Prometheus scrapes this cell's metrics (`GET /metrics`,
    /// OpenMetrics text), or `off`. In --local mode the embedded scheduler's
    /// metrics are served here too (one registry), not on a port of their own.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9101", value_parser = celld_metrics::parse_listen)]
    pub metrics_listen: celld_metrics::MetricsListen,
    /// Where container records, bundles and overlay layers live.
    #[arg(long, default_value = "/var/lib/celld")]
    pub depot: PathBuf,
    /// How container disk limits (Garden's `limits.disk`, an app's disk
    /// quota) are enforced: `btrfs` (qgroups on a btrfs store: the depot if it
    /// is btrfs, else a loop-mounted file at <depot>/store.img), `none`, or
    /// `auto` (btrfs if it works here, else none with a warning).
    #[arg(long, default_value = "auto", value_parser = ["auto", "btrfs", "none"])]
    pub disk_limits: String,
    /// Size of the loop-mounted btrfs store made when the depot is not on
    /// btrfs, e.g. 20G (K, M, G, T). Only read when the store is made; the
    /// default is half the depot's filesystem, at most its free space.
    #[arg(long, value_parser = parse_store_size)]
    pub store_size: Option<u64>,
    /// Accept disk limits this cell cannot enforce (`--disk-limits none`, or
    /// no btrfs): without it such creates fail.
    #[arg(long)]
    pub allow_unenforced_disk_limits: bool,
    /// Runtime state: the sockets of container inits.
    #[arg(long, default_value = "/run/celld")]
    pub run_dir: PathBuf,
    /// Directory of preloaded root filesystems (`preloaded:NAME` is NAME here).
    /// Defaults to rootfs/out of the checkout celld was built in.
    #[arg(long)]
    pub rootfs_dir: Option<PathBuf>,
    /// Rootfs for containers that name none.
    #[arg(long, default_value = "preloaded:tiny")]
    pub default_rootfs: String,
    /// Most containers this cell runs at once.
    #[arg(long, default_value_t = 250)]
    pub max_containers: usize,
    /// pids.max for containers whose spec sets no pid limit (0 = none, as in Garden).
    #[arg(long, default_value_t = 0)]
    pub default_pids_limit: u64,
    /// Most the image store (docker:// and oci:// layers under the depot) may
    /// hold, e.g. 10G; past it, images no container uses go, least recently
    /// used first. Default: keep the depot's file system 15 % free.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub image_store_size: Option<u64>,
    /// A registry (HOST:PORT) reached over plain HTTP or TLS without
    /// certificate checks, as Garden's flag of the same name; repeatable.
    #[arg(long = "insecure-docker-registry", value_name = "HOST:PORT")]
    pub insecure_docker_registries: Vec<String>,
    /// Where Docker Hub pulls go instead (a mirror's URL, e.g. https://mirror.example:5000).
    #[arg(long, value_name = "URL")]
    pub docker_registry_mirror: Option<String>,
    /// Grace time, in seconds, for containers that ask for none (0 = never reaped).
    #[arg(long, default_value_t = 0)]
    pub default_grace_time: u64,
    /// Seconds Stop waits between TERM and KILL.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: u64,
    /// Destroy every container left by a previous run instead of restoring them.
    #[arg(long)]
    pub destroy_containers_on_startup: bool,
    /// Give containers only loopback, leaving networking to something else (as
    /// cf-deployment leaves it to silk); net-in and net-out are then refused.
    #[arg(long)]
    pub no_network: bool,
    /// Addresses for containers: each gets a /30 (gateway .1, container .2).
    #[arg(long, default_value = "10.254.0.0/22")]
    pub network_pool: String,
    /// First host port handed out for net-in mappings that ask for port 0.
    #[arg(long, default_value_t = 61001)]
    pub port_pool_start: u16,
    /// How many host ports the net-in pool holds.
    #[arg(long, default_value_t = 4534)]
    pub port_pool_size: u16,
    /// Let containers reach the host's own services (celld's API, sshd, ...).
    #[arg(long)]
    pub allow_host_access: bool,
    /// Deny containers this network (CIDR) even when a net-out rule allows it; repeatable.
    #[arg(long = "deny-network", value_name = "CIDR")]
    pub deny_networks: Vec<String>,
    /// The host's resolver configuration that containers' resolv.conf derives
    /// from (e.g. /run/systemd/resolve/resolv.conf to skip systemd-resolved's stub).
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Nameserver for containers instead of the host's; repeatable.
    #[arg(long = "dns-server", value_name = "IP")]
    pub dns_servers: Vec<std::net::Ipv4Addr>,
    /// MTU of container interfaces (default: the external interface's, at most 1500).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// The cell's address as info's ExternalIP (default: the source address of the default route).
    #[arg(long)]
    pub external_ip: Option<std::net::Ipv4Addr>,
    /// celld's gRPC listener (Stager and Cell, with server reflection).
    /// Default 127.0.0.1:1801; a cell joined to Diego (--bbs-address) serves
    /// none unless given one.
    #[arg(long)]
    pub grpc_listen: Option<String>,
    /// Mutual TLS for gRPC: this cell's certificate chain (PEM), served on
    /// --grpc-listen (and local mode's --scheduler-listen) and presented when
    /// dialling the scheduler. It must allow both server and client use.
    #[arg(long)]
    pub grpc_tls_cert: Option<PathBuf>,
    /// Mutual TLS for gRPC: the certificate's private key (PEM).
    #[arg(long)]
    pub grpc_tls_key: Option<PathBuf>,
    /// Mutual TLS for gRPC: the CA that signs every cell's, scheduler's and
    /// client's certificate (PEM).
    #[arg(long)]
    pub grpc_tls_ca: Option<PathBuf>,
    /// Where packages, droplets, build caches and buildpacks are kept:
    /// `file:///DIR` or `s3://BUCKET?endpoint=URL&region=R` (credentials from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). Default: file://DEPOT/blobs.
    #[arg(long)]
    pub blobstore: Option<String>,
    /// celld's own buildpacks, registered at start-up (default: buildpacks/ of the checkout).
    #[arg(long)]
    pub buildpacks_dir: Option<PathBuf>,
    /// The static in-container lifecycle binary (default: celld-lifecycle next to celld).
    #[arg(long)]
    pub lifecycle: Option<PathBuf>,
    /// Seconds a staging may take before it fails with StagingTimeExpired.
    #[arg(long, default_value_t = 900)]
    pub staging_timeout: u64,
    /// Memory limit of a staging container that asks for none, in MB.
    #[arg(long, default_value_t = 1024)]
    pub staging_memory_mb: u32,
    /// Disk limit of a staging container that asks for none, in MB.
    #[arg(long, default_value_t = 4096)]
    pub staging_disk_mb: u32,
    /// Largest app package accepted, in MB.
    #[arg(long, alias = "max-package-size", default_value_t = 1024)]
    pub max_package_size_mb: u64,
    /// This cell's name in logs and reports (default: the host name).
    #[arg(long)]
    pub cell_id: Option<String>,
    /// The scheduler this cell reports to (host:port of its gRPC service).
    /// Without it the cell only stages and serves Garden.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// The address the scheduler dials to reach this cell's gRPC service
    /// (default: --grpc-listen).
    #[arg(long)]
    pub advertise_address: Option<String>,
    /// The cell's availability zone.
    #[arg(long, default_value = "z1")]
    pub zone: String,
    /// Placement tags this cell offers; repeatable.
    #[arg(long = "placement-tag", value_name = "TAG")]
    pub placement_tags: Vec<String>,
    /// Seconds between bulk reconciles with the scheduler (10 while evacuating).
    #[arg(long, default_value_t = 30)]
    pub reconcile_interval: u64,
    /// Seconds a SIGTERM'ed cell keeps evacuating instances before it exits.
    #[arg(long, default_value_t = 600)]
    pub evacuation_timeout: u64,
    /// Log lines per second one instance may emit (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub log_rate_limit: u32,
    /// Memory this cell offers for instances and tasks, in MB (default: the machine's).
    #[arg(long)]
    pub memory_mb: Option<u32>,
    /// Disk this cell offers, in MB (default: the depot file system's size).
    #[arg(long)]
    pub disk_mb: Option<u32>,
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `celld=debug`.
    #[arg(long, default_value = "info,libcgroups=error")]
    pub log_level: String,
    /// Local mode (BOSH-Lite style): the cell plus an embedded scheduler, the
    /// app layer (`Apps` on --grpc-listen) and the router, on one machine.
    #[arg(long)]
    pub local: bool,
    /// Local mode: where the embedded scheduler listens.
    #[arg(long, default_value = "127.0.0.1:8889")]
    pub scheduler_listen: String,
    /// Local mode: where the router listens for app traffic.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub router_listen: String,
    /// Local mode: the shared domain app routes live under.
    #[arg(long, default_value = "apps.localhost")]
    pub domain: String,
    /// Local mode: the space apps go to when a request names none.
    #[arg(long, default_value = "dev")]
    pub default_space: String,
    /// Local mode: where the ssh proxy (`cf ssh`) listens; "off" runs none.
    #[arg(long, default_value = "127.0.0.1:2222")]
    pub ssh_proxy_listen: String,
    /// Local mode: where the Cloud Foundry API (v3, its UAA token endpoint and
    /// log-cache, for the `cf` CLI) listens; "off" runs none.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub cf_api_listen: String,
    /// Serve the CF API over HTTPS with a self-signed certificate (kept in the
    /// depot; `cf api --skip-ssl-validation`).
    #[arg(long)]
    pub cf_api_tls: bool,
    /// The CF API's `admin` password; unset, one is generated once, kept in
    /// the depot and printed at start.
    #[arg(long, env = "CELLD_CF_ADMIN_PASSWORD", hide_env_values = true)]
    pub cf_admin_password: Option<String>,
    /// Idle ssh sessions are closed after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub ssh_idle_timeout: u64,
    /// Ciphers the ssh proxy offers users, comma-separated (AES-GCM only by
    /// default; add chacha20-poly1305@openssh.com for clients without AES).
    #[arg(long, default_value = celld_sshproxy::DEFAULT_CIPHERS)]
    pub ssh_ciphers: String,
    /// The password of `diego:PROCESS_GUID/INDEX` logins at the ssh proxy;
    /// unset refuses them.
    #[arg(long, env = "CELLD_SSH_DIEGO_CREDENTIALS", hide_env_values = true)]
    pub ssh_diego_credentials: Option<String>,
    /// Join a Diego: BBS's URL (e.g. https://bbs.service.cf.internal:8889).
    /// The cell then takes work from Diego's auctioneer on --rep-listen and
    /// reports to BBS; celld's own scheduler is not used.
    #[arg(long, help_heading = "Diego")]
    pub bbs_address: Option<String>,
    /// The CA that signed BBS's certificate (PEM).
    #[arg(long, help_heading = "Diego")]
    pub bbs_ca_cert: Option<PathBuf>,
    /// This cell's client certificate for BBS (PEM).
    #[arg(long, help_heading = "Diego")]
    pub bbs_client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, help_heading = "Diego")]
    pub bbs_client_key: Option<PathBuf>,
    /// Locket's address (host:port), where the cell keeps its presence.
    #[arg(long, help_heading = "Diego")]
    pub locket_address: Option<String>,
    /// The CA that signed Locket's certificate (default: --bbs-ca-cert).
    #[arg(long, help_heading = "Diego")]
    pub locket_ca_cert: Option<PathBuf>,
    /// The client certificate for Locket (default: --bbs-client-cert).
    #[arg(long, help_heading = "Diego")]
    pub locket_client_cert: Option<PathBuf>,
    /// Its private key (default: --bbs-client-key).
    #[arg(long, help_heading = "Diego")]
    pub locket_client_key: Option<PathBuf>,
    /// Where the rep API (/state, /work…) listens, with mutual TLS.
    #[arg(long, default_value = "0.0.0.0:1801", help_heading = "Diego")]
    pub rep_listen: String,
    /// Where the rep's admin API (/ping, /evacuate) listens, with mutual TLS.
    #[arg(long, default_value = "127.0.0.1:1800", help_heading = "Diego")]
    pub rep_admin_listen: String,
    /// The rep API's server certificate (PEM; serverAuth, with a SAN for the rep URL's host).
    #[arg(long, help_heading = "Diego")]
    pub rep_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, help_heading = "Diego")]
    pub rep_key: Option<PathBuf>,
    /// The CA whose client certificates the rep API accepts (the auctioneer's, BBS's).
    #[arg(long, help_heading = "Diego")]
    pub rep_ca: Option<PathBuf>,
    /// The rep URL is https://CELL-ID.DOMAIN:PORT (as Diego's rep makes it).
    #[arg(long, default_value = "cell.service.cf.internal", help_heading = "Diego")]
    pub advertise_domain: String,
    /// The URL the auctioneer and BBS reach the rep API at, instead of the one
    /// made from --advertise-domain.
    #[arg(long, help_heading = "Diego")]
    pub rep_url: Option<String>,
    /// The cell's index in its deployment (the rep's cell_index).
    #[arg(long, default_value_t = 0, help_heading = "Diego")]
    pub cell_index: i32,
    /// Placement tags this cell also accepts work for; repeatable.
    #[arg(long = "optional-placement-tag", value_name = "TAG", help_heading = "Diego")]
    pub optional_placement_tags: Vec<String>,
    /// A stack this cell offers: NAME:PATH, PATH a root filesystem directory
    /// (`preloaded:NAME` runs on it); repeatable. Stacks in --rootfs-dir are
    /// offered too.
    #[arg(long = "preloaded-rootfs", value_name = "NAME:PATH", help_heading = "Diego")]
    pub preloaded_rootfs: Vec<String>,
    /// The rep's own JSON configuration (what its BOSH job template writes):
    /// its keys fill the flags above; keys celld does not use are listed once.
    #[arg(long, help_heading = "Diego")]
    pub rep_config: Option<PathBuf>,
    #[command(subcommand)]
    pub role: Option<Role>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Role {
    /// Internal: the single-threaded runtime helper the daemon starts.
    #[command(hide = true)]
    Helper {
        /// The daemon's depot: labels the process in listings, and holds the
        /// mount point of the views all containers share.
        #[arg(long)]
        depot: PathBuf,
    },
    /// The reference scheduler (Diego's BBS, auctioneer and presence in one):
    /// cells report to it, users desire LRPs and tasks through it.
    Scheduler(SchedulerArgs),
}

/// A size as CF writes byte sizes: a number with K, M, G or T (an optional B
/// after it), or plain bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size: use a number with K, M, G or T, e.g. 20G");
    let upper = s.trim().to_ascii_uppercase();
    let upper = upper.strip_suffix('B').unwrap_or(&upper);
    let (digits, shift) = match upper.as_bytes().last() {
        Some(b'K') => (&upper[..upper.len() - 1], 10),
        Some(b'M') => (&upper[..upper.len() - 1], 20),
        Some(b'G') => (&upper[..upper.len() - 1], 30),
        Some(b'T') => (&upper[..upper.len() - 1], 40),
        _ => (upper, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// The btrfs store's size (`--store-size`).
fn parse_store_size(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    // mkfs.btrfs needs more than 100 MiB for its default layout.
    if bytes < 256 << 20 {
        return Err(format!("{s:?} is too small for a btrfs store: at least 256M"));
    }
    Ok(bytes)
}

impl Config {
    /// The disk-limit backend's settings.
    pub fn disk(&self) -> celld_runtime::disk::DiskConfig {
        use celld_runtime::disk::DiskMode;
        let mode = match self.disk_limits.as_str() {
            "btrfs" => DiskMode::Btrfs,
            "none" => DiskMode::None,
            _ => DiskMode::Auto,
        };
        celld_runtime::disk::DiskConfig {
            mode,
            store_size: self.store_size,
            allow_unenforced: self.allow_unenforced_disk_limits,
        }
    }

    /// Mutual TLS on --garden-tcp, if configured (all three flags or none).
    pub fn garden_tls(&self) -> Result<Option<celld_transport::tls::TlsFiles>, celld_transport::tls::TlsError> {
        celld_transport::tls::TlsFiles::from_flags(
            "--garden-tls",
            self.garden_tls_cert.as_ref(),
            self.garden_tls_key.as_ref(),
            self.garden_tls_ca.as_ref(),
        )
    }

    /// Mutual TLS for the cell's gRPC, if configured.
    pub fn grpc_tls(&self) -> Result<Option<celld_transport::tls::TlsFiles>, celld_transport::tls::TlsError> {
        celld_transport::tls::TlsFiles::from_flags(
            "--grpc-tls",
            self.grpc_tls_cert.as_ref(),
            self.grpc_tls_key.as_ref(),
            self.grpc_tls_ca.as_ref(),
        )
    }

    /// The Garden listeners' limits.
    pub fn garden_limits(&self) -> celld_garden::listener::Limits {
        celld_garden::listener::Limits {
            header_timeout: std::time::Duration::from_secs(self.garden_header_timeout.max(1)),
            idle_timeout: std::time::Duration::from_secs(self.garden_idle_timeout.max(1)),
            max_connections: self.garden_max_connections.max(1),
        }
    }

    /// celld's own gRPC listener, if it serves one.
    pub fn grpc_listen(&self) -> Option<String> {
        match (&self.grpc_listen, &self.bbs_address) {
            (Some(a), _) => Some(a.clone()),
            (None, None) => Some("127.0.0.1:1801".to_string()),
            (None, Some(_)) => None,
        }
    }

    /// The checkout celld was built in (target/release/celld → ../..), if any.
    fn checkout_dir(sub: &str) -> Option<PathBuf> {
        let p = std::env::current_exe().ok()?.parent()?.parent()?.parent()?.join(sub);
        p.exists().then_some(p)
    }

    pub fn blobstore_url(&self) -> String {
        self.blobstore.clone().unwrap_or_else(|| format!("file://{}", self.depot.join("blobs").display()))
    }

    pub fn buildpacks_dir(&self) -> PathBuf {
        self.buildpacks_dir
            .clone()
            .or_else(|| Self::checkout_dir("buildpacks"))
            .unwrap_or_else(|| PathBuf::from("buildpacks"))
    }

    pub fn lifecycle_binary(&self) -> PathBuf {
        self.lifecycle.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("celld-lifecycle")))
                .unwrap_or_else(|| PathBuf::from("celld-lifecycle"))
        })
    }

    /// The stack containers stage on when a request names none: the default
    /// rootfs's NAME if it is `preloaded:NAME`.
    pub fn default_stack(&self) -> String {
        self.default_rootfs.strip_prefix("preloaded:").unwrap_or("tiny").to_string()
    }

    pub fn cell_id(&self) -> String {
        self.cell_id.clone().unwrap_or_else(|| {
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "celld".into())
        })
    }

    /// The rootfs directory: the flag, else `rootfs/out` next to the checkout the
    /// binary was built in (target/release/celld → ../../rootfs/out), else the
    /// current directory's `rootfs/out`.
    pub fn rootfs_dir(&self) -> PathBuf {
        if let Some(d) = &self.rootfs_dir {
            return d.clone();
        }
        let from_exe =
            std::env::current_exe().ok().and_then(|e| e.parent()?.parent()?.parent().map(|p| p.join("rootfs/out")));
        match from_exe {
            Some(p) if p.is_dir() => p,
            _ => PathBuf::from("rootfs/out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_sizes_read_like_cf() {
        assert_eq!(parse_store_size("20G"), Ok(20 << 30));
        assert_eq!(parse_store_size("512mb"), Ok(512 << 20));
        assert_eq!(parse_store_size("1T"), Ok(1 << 40));
        assert!(parse_store_size("10M").unwrap_err().contains("at least 256M"));
        for bad in ["", "G", "twenty", "-1G", "99999999999T"] {
            assert!(parse_store_size(bad).unwrap_err().contains("is not a size"), "{bad}");
        }
    }
}
