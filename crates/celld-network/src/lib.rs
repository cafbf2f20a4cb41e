//! The networker (Garden's "kawasaki"): an address per container from the pool,
//! a veth into its network namespace, net-in port mappings, net-out
//! allowances, isolation from the host and from other containers, and the
//! container's /etc/hosts and /etc/resolv.conf.

pub mod link;
pub mod nfnl;
pub mod nft;
pub mod pool;
mod ranges;
pub mod rules;
pub mod shared;
mod subnets;

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use garden_api::types::{NetIn, NetOutRule, NetworkStat, PortMapping};
use nft::{ContainerRules, Nft, TableConfig};
use pool::{Ipv4Net, PortPool, SubnetPool};
pub use ranges::{POOL_LOCK_DIR, PoolLock};
use rules::Allow;
pub use shared::Lease;
use shared::SharedSubnets;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The request itself is wrong; nothing was changed.
    #[error("{0}")]
    BadRequest(String),
    /// No subnet or port left.
    #[error("{0}")]
    Exhausted(String),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("nftables: {0}")]
    Firewall(String),
    /// Another cell holds the pool (or one overlapping it).
    #[error("{0}")]
    PoolHeld(String),
}

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub pool: Ipv4Net,
    pub port_pool_start: u16,
    pub port_pool_size: u16,
    pub allow_host_access: bool,
    pub deny_networks: Vec<Ipv4Net>,
    /// The host's resolv.conf.
    pub resolv_conf: std::path::PathBuf,
    /// Replaces the host's nameservers in containers when not empty.
    pub dns_servers: Vec<Ipv4Addr>,
    pub mtu: Option<u32>,
    pub external_ip: Option<Ipv4Addr>,
    /// Who this cell is (its depot), written into the pool's lock file so a
    /// second cell given the same pool can name the one holding it.
    pub owner: std::path::PathBuf,
}

/// A container's network, kept in its record so a restarted daemon can reload
/// its rules and release it later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetState {
    pub subnet: Ipv4Net,
    /// The container's address on a shared subnet; on a /30 of its own it is
    /// the .2 (and records from before shared subnets have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    pub mapped_ports: Vec<PortMapping>,
    /// The net-out allowances so far.
    pub rules: Vec<Allow>,
}

impl NetState {
    pub fn container_ip(&self) -> Ipv4Addr {
        self.address.unwrap_or_else(|| self.subnet.nth(2))
    }

    pub fn lease(&self) -> Lease {
        Lease { subnet: self.subnet, ip: self.container_ip() }
    }

    /// The bridge of its shared subnet, if it is on one.
    pub fn bridge(&self) -> Option<String> {
        shared::is_shared(self.subnet).then(|| shared::bridge_name(self.subnet))
    }

    pub fn host_ip(&self) -> Ipv4Addr {
        self.subnet.nth(1)
    }

    /// The host end of the container's veth, named for the subnet (unique
    /// across cells with different pools); it holds the gateway address. On a
    /// shared subnet it is a port of the bridge, named for the address.
    pub fn host_veth(&self) -> String {
        match self.address {
            Some(ip) if shared::is_shared(self.subnet) => shared::bridged_veth_name(ip),
            _ => format!("cvh-{:08x}", u32::from(self.subnet.addr)),
        }
    }

    /// The container's chain of net-out rules (shared subnets never overlap
    /// the pool, so an address names one container either way).
    pub fn chain(&self) -> String {
        match self.address {
            Some(ip) if shared::is_shared(self.subnet) => format!("c-{:08x}", u32::from(ip)),
            _ => format!("c-{:08x}", u32::from(self.subnet.addr)),
        }
    }

    fn netin(&self) -> Vec<(u16, u16)> {
        self.mapped_ports.iter().map(|m| (m.host_port as u16, m.container_port as u16)).collect()
    }
}

/// The host end of the veth of the container at `container_ip` (its /30's
/// name, as [`NetState::host_veth`]): what health checks and the executor
/// look for to know the address still leads into that container.
pub fn host_veth_for(container_ip: Ipv4Addr) -> String {
    format!("cvh-{:08x}", u32::from(container_ip) & !((1u32 << (32 - pool::SUBNET_PREFIX)) - 1))
}

/// Whether the container at `container_ip` still has its interface (a /30's
/// veth, or a bridge port on a shared subnet).
pub fn has_interface(container_ip: Ipv4Addr) -> bool {
    link::exists(&host_veth_for(container_ip)) || link::exists(&shared::bridged_veth_name(container_ip))
}

/// What a container's /etc holds for names.
#[derive(Debug, Clone, PartialEq)]
pub struct NameFiles {
    pub hosts: String,
    pub resolv_conf: String,
}

struct Pools {
    subnets: SubnetPool,
    ports: PortPool,
    shared: SharedSubnets,
    /// The host-wide lock of each shared subnet this cell has a bridge for,
    /// by network address.
    shared_locks: std::collections::HashMap<u32, PoolLock>,
}

pub struct Networker {
    /// Held for the cell's life: no other cell uses this pool.
    _pool_lock: PoolLock,
    table: TableConfig,
    nft: Nft,
    /// Per-container firewall changes, straight over netlink.
    nfnl: Mutex<nfnl::Socket>,
    pools: Mutex<Pools>,
    host: Mutex<Option<rtnetlink::Handle>>,
    mtu: u32,
    external_ip: Ipv4Addr,
    /// The host's resolv.conf without loopback nameservers.
    resolv_base: ResolvConf,
    /// Veth removals still running in the background.
    pending: std::sync::atomic::AtomicUsize,
    /// Written into shared subnets' locks, as into the pool's.
    owner: std::path::PathBuf,
    /// Held while a bridge is made or removed, so a container never joins a
    /// bridge that its subnet's last leaver is taking down.
    bridges: tokio::sync::Mutex<()>,
}

/// Sets and maps of the table that per-container changes touch (see nft.rs).
const IFACES: &str = "ifaces";
const CONTAINERS: &str = "containers";
const NETIN: &str = "netin";
/// `iface . address`: the one source address each container may send from.
const SOURCES: &str = "sources";
/// Addresses of containers on shared subnets (masqueraded going out), and the
/// map from each to its chain of net-out rules: behind a bridge the firewall
/// tells them apart by source, which the bridge table's check makes genuine.
const BRIDGED: &str = "bridged";
const SADDRS: &str = "saddrs";
/// The bridge table's set of bridge ports (container veths) and its
/// `port . address` pairs.
const PORTS: &str = "ports";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Default, PartialEq)]
struct ResolvConf {
    nameservers: Vec<String>,
    /// `search`/`options` lines, kept as the host has them.
    other: Vec<String>,
    /// The first loopback nameserver, if the host only has loopback ones.
    loopback_only: Option<Ipv4Addr>,
}

fn parse_resolv_conf(text: &str, overrides: &[Ipv4Addr]) -> ResolvConf {
    let mut rc = ResolvConf::default();
    let mut loopback = None;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let Some(addr) = words.next() else { continue };
                match addr.parse::<std::net::IpAddr>() {
                    Ok(ip) if ip.is_loopback() => {
                        if let (None, std::net::IpAddr::V4(v4)) = (loopback, ip) {
                            loopback = Some(v4);
                        }
                    }
                    Ok(_) => rc.nameservers.push(addr.to_string()),
                    Err(_) => {}
                }
            }
            Some("search" | "domain" | "options") => rc.other.push(line.to_string()),
            _ => {}
        }
    }
    if !overrides.is_empty() {
        rc.nameservers = overrides.iter().map(|a| a.to_string()).collect();
    } else if rc.nameservers.is_empty() {
        rc.loopback_only = loopback;
    }
    rc
}

/// The host's interface of its default route (from /proc/net/route).
fn default_route_iface() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    })
}

/// The address the host sends from towards the outside: a UDP "connect" picks
/// the route without sending anything.
fn outward_ip() -> Option<Ipv4Addr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.254:9").ok()?;
    match s.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

fn host_port_free(port: u16) -> bool {
    std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

impl Networker {
    pub fn new(cfg: NetworkConfig) -> Result<Self, NetworkError> {
        let subnets = SubnetPool::new(cfg.pool)?;
        // Before anything touches the pool's interfaces or table.
        let pool_lock = PoolLock::acquire(std::path::Path::new(POOL_LOCK_DIR), cfg.pool, &cfg.owner)?;
        let ports = PortPool::new(cfg.port_pool_start, cfg.port_pool_size);
        let mtu = cfg.mtu.unwrap_or_else(|| {
            default_route_iface()
                .and_then(|i| std::fs::read_to_string(format!("/sys/class/net/{i}/mtu")).ok())
                .and_then(|m| m.trim().parse().ok())
                .unwrap_or(1500)
                .min(1500)
        });
        let external_ip = cfg.external_ip.or_else(outward_ip).unwrap_or(Ipv4Addr::LOCALHOST);
        let resolv_base =
            parse_resolv_conf(&std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default(), &cfg.dns_servers);
        if let Some(lo) = resolv_base.loopback_only {
            tracing::info!(resolver = %lo, "host has only a loopback nameserver; containers ask their gateway, forwarded to it");
        }
        let table = TableConfig {
            name: format!("celld-{:08x}-{}", u32::from(cfg.pool.addr), cfg.pool.prefix),
            pool: cfg.pool,
            deny: cfg.deny_networks,
            allow_host_access: cfg.allow_host_access,
            dns_forward: resolv_base.loopback_only,
        };
        // Forwarding is what lets containers out at all.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| NetworkError::Netlink(format!("enabling IPv4 forwarding: {e}")))?;
        Ok(Self {
            _pool_lock: pool_lock,
            nft: Nft::new()?,
            nfnl: Mutex::new(nfnl::Socket::new()?),
            pools: Mutex::new(Pools {
                subnets,
                ports,
                shared: SharedSubnets::default(),
                shared_locks: Default::default(),
            }),
            host: Mutex::new(None),
            table,
            mtu,
            external_ip,
            resolv_base,
            pending: Default::default(),
            owner: cfg.owner,
            bridges: tokio::sync::Mutex::new(()),
        })
    }

    pub fn external_ip(&self) -> Ipv4Addr {
        self.external_ip
    }

    /// How many containers the pool has addresses for.
    pub fn capacity(&self) -> usize {
        lock(&self.pools).subnets.capacity()
    }

    fn host(&self) -> Result<rtnetlink::Handle, NetworkError> {
        let mut h = lock(&self.host);
        if let Some(h) = h.as_ref() {
            return Ok(h.clone());
        }
        let handle = link::connect(None)?;
        *h = Some(handle.clone());
        Ok(handle)
    }

    async fn firewall(&self, script: String) -> Result<(), NetworkError> {
        // libnftables blocks for a fraction of a millisecond; keep it off the
        // async workers anyway.
        tokio::task::block_in_place(|| self.nft.run(&script))
    }

    /// One netlink transaction on this cell's table.
    fn change(&self, build: impl FnOnce(&mut nfnl::Batch)) -> Result<(), NetworkError> {
        let mut batch = nfnl::Batch::new(&self.table.name);
        build(&mut batch);
        lock(&self.nfnl).run(&batch)
    }

    fn add_container(&self, state: &NetState) -> Result<(), NetworkError> {
        let (chain, veth, ip) = (state.chain(), state.host_veth(), state.container_ip());
        self.change(|b| {
            b.add_chain(&chain);
            for r in &state.rules {
                b.add_rule(&chain, r);
            }
            match state.bridge() {
                None => {
                    b.add_iface(IFACES, &veth).add_jump(CONTAINERS, &veth, &chain).add_source(SOURCES, &veth, ip);
                }
                Some(bridge) => {
                    b.add_source(SOURCES, &bridge, ip).add_addr(BRIDGED, ip).add_addr_jump(SADDRS, ip, &chain);
                    b.in_bridge_family();
                    b.add_iface(PORTS, &veth).add_source(SOURCES, &veth, ip);
                    b.in_ip_family();
                }
            }
            for m in &state.mapped_ports {
                b.add_port(NETIN, m.host_port as u16, state.container_ip(), m.container_port as u16);
            }
        })
    }

    /// Checks a create request's network settings before anything is made;
    /// returns its net-out rules as firewall allowances.
    pub fn check(&self, netin: &[NetIn], rules: &[NetOutRule], handle: &str) -> Result<Vec<Allow>, NetworkError> {
        for n in netin {
            check_container_port(n.container_port)?;
            if n.host_port > u16::MAX as u32 {
                return Err(NetworkError::BadRequest(format!("host port {} is out of range (1-65535)", n.host_port)));
            }
        }
        rules::allowances(rules, handle)
    }

    /// Takes an address for a new container (`requested` as in Garden's
    /// `network`): a /30 of the pool, or one on a shared subnet.
    pub fn reserve(&self, requested: &str) -> Result<Lease, NetworkError> {
        let requested = requested.trim();
        match shared::parse(requested)? {
            None => Ok(Lease::routed(lock(&self.pools).subnets.acquire(requested)?)),
            Some((subnet, ip)) => self.reserve_shared(subnet, ip),
        }
    }

    /// Gives a reserved address back; a shared subnet's last one takes its
    /// bridge along (in the background).
    pub fn release_subnet(self: &Arc<Self>, lease: Lease) {
        if !lease.is_shared() {
            lock(&self.pools).subnets.release(lease.subnet);
            return;
        }
        if lock(&self.pools).shared.release(lease) {
            self.retire_bridge_later(lease.subnet);
        }
    }

    pub fn name_files(&self, lease: Lease, hostname: &str) -> NameFiles {
        let rc = &self.resolv_base;
        let mut resolv = String::new();
        let gateway = [lease.subnet.nth(1).to_string()];
        let servers = if rc.loopback_only.is_some() { &gateway[..] } else { &rc.nameservers[..] };
        for ns in servers {
            resolv.push_str(&format!("nameserver {ns}\n"));
        }
        for l in &rc.other {
            resolv.push_str(l);
            resolv.push('\n');
        }
        NameFiles { hosts: format!("127.0.0.1 localhost\n{} {hostname}\n", lease.ip), resolv_conf: resolv }
    }

    /// Wires a created container (its init is `pid`) into the network. On
    /// error nothing of it stays but the subnet, which the caller releases.
    pub async fn attach(
        &self,
        handle: &str,
        lease: Lease,
        pid: i32,
        netin: &[NetIn],
        allowances: Vec<Allow>,
    ) -> Result<NetState, NetworkError> {
        let mut state = NetState {
            subnet: lease.subnet,
            address: lease.is_shared().then_some(lease.ip),
            mapped_ports: Vec::new(),
            rules: allowances,
        };
        let mut firewalled = false;
        let made = async {
            for n in netin {
                let m = self.acquire_port(n)?;
                state.mapped_ports.push(m);
            }
            // Rules first: the interface is known to the firewall (and so
            // isolated) before any packet can cross it.
            self.add_container(&state)?;
            firewalled = true;
            let t = std::time::Instant::now();
            let host = self.host()?;
            let _bridges = match state.bridge() {
                Some(bridge) => Some(self.ensure_bridge(&host, lease.subnet, &bridge).await?),
                None => None,
            };
            let port = link::Port { name: &state.host_veth(), bridge: state.bridge() };
            link::create(&host, &port, lease, self.mtu, pid).await?;
            tracing::debug!(handle = %handle, links_ms = t.elapsed().as_secs_f64() * 1e3, "network attached");
            Ok(())
        }
        .await;
        match made {
            Ok(()) => Ok(state),
            Err(e) => {
                tracing::warn!(handle = %handle, error = %e, "network setup failed; undoing");
                if firewalled {
                    self.remove_rules(&state);
                }
                self.delete_links(&state).await;
                for m in &state.mapped_ports {
                    lock(&self.pools).ports.release(m.host_port as u16);
                }
                Err(e)
            }
        }
    }

    fn acquire_port(&self, n: &NetIn) -> Result<PortMapping, NetworkError> {
        check_container_port(n.container_port)?;
        let host_port = lock(&self.pools).ports.acquire(n.host_port, host_port_free)?;
        // Container port 0 is the host port, as in Garden's NetIn.
        let container_port = if n.container_port == 0 { host_port as u32 } else { n.container_port };
        Ok(PortMapping { host_port: host_port as u32, container_port })
    }

    /// Removes a container's rules, map entries and interface from the
    /// firewall; what is already gone is skipped.
    fn remove_rules(&self, state: &NetState) {
        let steps = 4 + state.mapped_ports.len();
        let (chain, veth, ip) = (state.chain(), state.host_veth(), state.container_ip());
        let bridge = state.bridge();
        let step = |b: &mut nfnl::Batch, i: usize| {
            match (i, &bridge) {
                (0, None) => b.delete_iface(IFACES, &veth),
                (1, None) => b.delete_iface(CONTAINERS, &veth),
                (2, None) => b.delete_source(SOURCES, &veth, ip),
                (0, Some(bridge)) => b.delete_source(SOURCES, bridge, ip).delete_addr(BRIDGED, ip),
                (1, Some(_)) => b.delete_addr(SADDRS, ip),
                (2, Some(_)) => {
                    b.in_bridge_family().delete_iface(PORTS, &veth).delete_source(SOURCES, &veth, ip).in_ip_family()
                }
                (3, _) => b.delete_chain(&chain),
                _ => b.delete_port(NETIN, state.mapped_ports[i - 4].host_port as u16),
            };
        };
        // All at once; if part of it is already gone, the rest one by one.
        if self.change(|b| (0..steps).for_each(|i| step(b, i))).is_err() {
            for i in 0..steps {
                let _ = self.change(|b| step(b, i));
            }
        }
    }

    async fn delete_links(&self, state: &NetState) {
        if let Ok(host) = self.host() {
            if let Err(e) = link::delete(&host, &state.host_veth()).await {
                tracing::warn!(interface = %state.host_veth(), error = %e, "removing the veth failed");
            }
        }
    }

    /// Undoes [`attach`](Self::attach) once the container is dead. Rules and
    /// ports go at once; the veth goes in the background, because the kernel
    /// takes ~25 ms (RCU grace periods) to unregister a device, and the subnet
    /// is free again only after it is gone. A daemon
    /// that dies first removes them when it starts again ([`restore`](Self::restore)).
    pub async fn detach(self: &Arc<Self>, state: &NetState) {
        self.remove_rules(state);
        {
            let mut p = lock(&self.pools);
            for m in &state.mapped_ports {
                p.ports.release(m.host_port as u16);
            }
        }
        let (net, state) = (self.clone(), state.clone());
        self.pending.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            net.delete_links(&state).await;
            net.release_subnet(state.lease());
            net.pending.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Waits (at most `limit`) for background veth removals, so a daemon that
    /// stops leaves none behind.
    pub async fn drain(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Garden's NetIn: maps a host port (0: the next free one) to a container port.
    pub async fn net_in(
        &self,
        state: &mut NetState,
        host_port: u32,
        container_port: u32,
    ) -> Result<PortMapping, NetworkError> {
        let m = self.acquire_port(&NetIn { host_port, container_port })?;
        if let Err(e) = self.change(|b| {
            b.add_port(NETIN, m.host_port as u16, state.container_ip(), m.container_port as u16);
        }) {
            lock(&self.pools).ports.release(m.host_port as u16);
            return Err(e);
        }
        state.mapped_ports.push(m);
        Ok(m)
    }

    /// Garden's NetOut and BulkNetOut: all rules apply, or none.
    pub async fn net_out(&self, handle: &str, state: &mut NetState, rules: &[NetOutRule]) -> Result<(), NetworkError> {
        let statements = rules::allowances(rules, handle)?;
        if state.rules.len() + statements.len() > rules::MAX_STATEMENTS * 4 {
            return Err(NetworkError::BadRequest("too many net-out rules for one container".into()));
        }
        let chain = state.chain();
        self.change(|b| {
            for r in &statements {
                b.add_rule(&chain, r);
            }
        })?;
        state.rules.extend(statements);
        Ok(())
    }

    /// After a restart: holds the subnets and ports of surviving containers,
    /// rebuilds the firewall from them in one transaction, and removes
    /// interfaces of this pool that no surviving container owns.
    pub async fn restore(&self, states: &[NetState]) -> Result<(), NetworkError> {
        {
            let mut p = lock(&self.pools);
            for s in states {
                if s.bridge().is_some() {
                    p.shared.hold(s.lease());
                } else {
                    p.subnets.hold(s.subnet);
                }
                for m in &s.mapped_ports {
                    p.ports.hold(m.host_port as u16);
                }
            }
        }
        self.relock_shared(states);
        let names: Vec<_> = states.iter().map(|s| (s.chain(), s.host_veth(), s.netin(), s.bridge())).collect();
        let views: Vec<ContainerRules> = states
            .iter()
            .zip(&names)
            .map(|(s, (chain, iface, netin, bridge))| ContainerRules {
                chain,
                iface,
                ip: s.container_ip(),
                rules: &s.rules,
                netin,
                bridge: bridge.as_deref(),
            })
            .collect();
        self.firewall(self.table.rebuild(&views)).await?;
        let host = self.host()?;
        let owned: std::collections::HashSet<String> = states.iter().map(NetState::host_veth).collect();
        for name in link::list(&host).await? {
            let Some(hex) = name.strip_prefix("cvh-") else { continue };
            let Ok(addr) = u32::from_str_radix(hex, 16) else { continue };
            if self.table.pool.contains(Ipv4Addr::from(addr)) && !owned.contains(&name) {
                tracing::info!(interface = %name, "removing interface no container owns");
                let _ = link::delete(&host, &name).await;
            }
        }
        self.restore_bridges(&host, states).await?;
        // Kept when the daemon exits: its containers keep running, and their
        // pool must not leak off the host while it is down.
        link::hold_pool_route(&host, self.table.pool).await?;
        Ok(())
    }

    /// Bytes through the container's interface, as the container sees them.
    pub fn stats(&self, state: &NetState) -> NetworkStat {
        let read = |k: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{k}", state.host_veth()))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        // The host end sends what the container receives.
        NetworkStat { rx_bytes: read("tx_bytes"), tx_bytes: read("rx_bytes") }
    }
}

/// 0 is allowed: it stands for the host port.
fn check_container_port(port: u32) -> Result<(), NetworkError> {
    if port > u16::MAX as u32 {
        return Err(NetworkError::BadRequest(format!("container port {port} is out of range (1-65535)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_drops_loopback_nameservers() {
        let rc = parse_resolv_conf("nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch corp\n", &[]);
        assert_eq!(rc.nameservers, vec!["10.0.0.2"]);
        assert_eq!(rc.other, vec!["search corp"]);
        assert_eq!(rc.loopback_only, None);
        let only = parse_resolv_conf("nameserver 127.0.0.53\noptions edns0\n", &[]);
        assert_eq!(only.loopback_only, Some(Ipv4Addr::new(127, 0, 0, 53)));
        let over = parse_resolv_conf("nameserver 127.0.0.53\n", &[Ipv4Addr::new(1, 1, 1, 1)]);
        assert_eq!((over.nameservers, over.loopback_only), (vec!["1.1.1.1".to_string()], None));
    }

    #[test]
    fn container_ports_are_checked() {
        assert!(check_container_port(0).is_ok());
        assert!(check_container_port(65536).is_err());
        assert!(check_container_port(8080).is_ok());
    }
}
