//! The firewall's table, written in nft's language and loaded through
//! libnftables (the library behind `nft`: its parser, one atomic transaction,
//! no process) when the cell starts.
//!
//! Layout (`celld-<pool>-<len>`, so cells with different pools never collide):
//! fixed chains for forward/input/nat that match container traffic by the
//! `ifaces` set (host ends of container veths), per container one chain of
//! net-out allowances reached through the `containers` verdict map keyed by
//! that interface, the `netin` map from host port to container address
//! and port, and the `sources` set of (interface, address) pairs: a packet
//! from a container's veth whose source is not that container's own address
//! is dropped at prerouting, before conntrack or routing see it (containers
//! have CAP_NET_RAW and can forge any source). A container change touches only its own chain and map elements;
//! those changes go over netlink (nfnl.rs), whose cost does not grow with the
//! number of containers.
//!
//! Containers on a shared subnet sit behind its bridge, which is what the
//! `ip` hooks see as their interface (in `ifaces`, like a veth); their chains
//! are reached by source address (`saddrs`), which the `bridge` table of the
//! same name makes genuine: each bridge port (`ports`) may only send IP and
//! ARP from its own container's address. Frames between two containers of one
//! bridge pass the `ip` hooks too when br_netfilter is loaded: the `hairpin`
//! pairs let them through, as kawasaki accepts a subnet's own traffic.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use super::NetworkError;
use super::pool::Ipv4Net;
use super::rules::Allow;

#[link(name = "nftables")]
unsafe extern "C" {
    fn nft_ctx_new(flags: u32) -> *mut c_void;
    fn nft_ctx_free(ctx: *mut c_void);
    fn nft_ctx_buffer_output(ctx: *mut c_void) -> c_int;
    fn nft_ctx_buffer_error(ctx: *mut c_void) -> c_int;
    fn nft_ctx_get_error_buffer(ctx: *mut c_void) -> *const c_char;
    fn nft_run_cmd_from_buffer(ctx: *mut c_void, buf: *const c_char) -> c_int;
}

struct Ctx(*mut c_void);

// The context is only ever used under the mutex, by one thread at a time.
unsafe impl Send for Ctx {}

impl Drop for Ctx {
    fn drop(&mut self) {
        unsafe { nft_ctx_free(self.0) };
    }
}

pub struct Nft {
    ctx: Mutex<Ctx>,
}

impl Nft {
    pub fn new() -> Result<Self, NetworkError> {
        let ctx = unsafe { nft_ctx_new(0) };
        if ctx.is_null() {
            return Err(NetworkError::Firewall("cannot create an nftables context".into()));
        }
        unsafe {
            nft_ctx_buffer_output(ctx);
            nft_ctx_buffer_error(ctx);
        }
        Ok(Self { ctx: Mutex::new(Ctx(ctx)) })
    }

    /// Runs a script as one transaction: all of it applies or none.
    pub fn run(&self, script: &str) -> Result<(), NetworkError> {
        let buf = CString::new(script).map_err(|_| NetworkError::Firewall("script contains a NUL byte".into()))?;
        let ctx = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
        let rc = unsafe { nft_run_cmd_from_buffer(ctx.0, buf.as_ptr()) };
        if rc == 0 {
            return Ok(());
        }
        let err = unsafe {
            let p = nft_ctx_get_error_buffer(ctx.0);
            if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().trim().to_string() }
        };
        Err(NetworkError::Firewall(err))
    }
}

/// What the cell-wide part of the table depends on.
#[derive(Debug, Clone)]
pub struct TableConfig {
    pub name: String,
    pub pool: Ipv4Net,
    pub deny: Vec<Ipv4Net>,
    pub allow_host_access: bool,
    /// Where DNS queries to a container's gateway go when the host only has a
    /// loopback resolver.
    pub dns_forward: Option<Ipv4Addr>,
}

/// One container's part of the table.
#[derive(Debug, Clone)]
pub struct ContainerRules<'a> {
    pub chain: &'a str,
    /// The host end of the container's veth.
    pub iface: &'a str,
    pub ip: Ipv4Addr,
    pub rules: &'a [Allow],
    pub netin: &'a [(u16, u16)],
    /// The bridge of its shared subnet (then `iface` is a port of it).
    pub bridge: Option<&'a str>,
}

impl TableConfig {
    /// The whole table, replacing what is there in the same transaction: used
    /// at start, so rules of containers that survived a restart are reloaded
    /// exactly once and those of vanished ones disappear.
    pub fn rebuild(&self, containers: &[ContainerRules]) -> String {
        let (t, pool) = (&self.name, self.pool);
        let deny = if self.deny.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = self.deny.iter().map(|n| n.to_string()).collect();
            format!("elements = {{ {} }}", list.join(", "))
        };
        let host = if self.allow_host_access { "accept" } else { "reject with icmp type admin-prohibited" };
        let (dns_nat, dns_in) = match self.dns_forward {
            Some(r) => (
                format!(
                    "iifname @ifaces fib daddr type local udp dport 53 dnat ip to {r}\n\
                     iifname @ifaces fib daddr type local tcp dport 53 dnat ip to {r}"
                ),
                "ct status dnat udp dport 53 accept\nct status dnat tcp dport 53 accept".to_string(),
            ),
            None => (String::new(), String::new()),
        };
        let mut s = format!(
            "table ip {t}\ndelete table ip {t}\n\
table ip {t} {{
  set ifaces {{ type ifname; }}
  map containers {{ type ifname : verdict; }}
  set deny {{ type ipv4_addr; flags interval; {deny} }}
  map netin {{ type inet_service : ipv4_addr . inet_service; }}
  set sources {{ type ifname . ipv4_addr; }}
  set bridged {{ type ipv4_addr; }}
  map saddrs {{ type ipv4_addr : verdict; }}
  set hairpin {{ type ifname . ifname; }}
  chain antispoof {{
    type filter hook prerouting priority raw; policy accept;
    iifname @ifaces iifname . ip saddr != @sources drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    iifname . oifname @hairpin accept
    iifname @ifaces jump egress
    oifname @ifaces ct status dnat accept
    oifname @ifaces drop
  }}
  chain egress {{
    ip daddr @deny reject with icmp type admin-prohibited
    iifname vmap @containers
    ip saddr vmap @saddrs
    reject with icmp type admin-prohibited
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname @ifaces jump host_access
  }}
  chain host_access {{
    ct state established,related accept
    {dns_in}
    ip daddr 127.0.0.0/8 drop
    {host}
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {dns_nat}
    fib daddr type local dnat ip to tcp dport map @netin
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    fib daddr type local dnat ip to tcp dport map @netin
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {pool} ip daddr != {pool} masquerade
    ip saddr @bridged oifname != @ifaces masquerade
    oifname @ifaces ip saddr 127.0.0.0/8 masquerade
  }}
}}
table bridge {t}\ndelete table bridge {t}
table bridge {t} {{
  set ports {{ type ifname; }}
  set sources {{ type ifname . ipv4_addr; }}
  chain antispoof {{
    type filter hook prerouting priority -200; policy accept;
    iifname @ports ether type ip iifname . ip saddr != @sources drop
    iifname @ports ether type arp iifname . arp saddr ip != @sources drop
  }}
}}
"
        );
        for c in containers {
            s.push_str(&self.add_container(c));
        }
        s
    }

    /// A container's chain, its map entries, its rules and its port mappings.
    fn add_container(&self, c: &ContainerRules) -> String {
        let t = &self.name;
        let mut s = format!("add chain ip {t} {}\n", c.chain);
        for r in c.rules {
            s.push_str(&format!("add rule ip {t} {} {}\n", c.chain, r.nft()));
        }
        let (iface, ip, chain) = (c.iface, c.ip, c.chain);
        match c.bridge {
            None => {
                s.push_str(&format!("add element ip {t} ifaces {{ \"{iface}\" }}\n"));
                s.push_str(&format!("add element ip {t} containers {{ \"{iface}\" : jump {chain} }}\n"));
                s.push_str(&format!("add element ip {t} sources {{ \"{iface}\" . {ip} }}\n"));
            }
            Some(br) => {
                s.push_str(&format!("add element ip {t} ifaces {{ \"{br}\" }}\n"));
                s.push_str(&format!("add element ip {t} hairpin {{ \"{br}\" . \"{br}\" }}\n"));
                s.push_str(&format!("add element ip {t} sources {{ \"{br}\" . {ip} }}\n"));
                s.push_str(&format!("add element ip {t} bridged {{ {ip} }}\n"));
                s.push_str(&format!("add element ip {t} saddrs {{ {ip} : jump {chain} }}\n"));
                s.push_str(&format!("add element bridge {t} ports {{ \"{iface}\" }}\n"));
                s.push_str(&format!("add element bridge {t} sources {{ \"{iface}\" . {ip} }}\n"));
            }
        }
        for (host, container) in c.netin {
            s.push_str(&format!("add element ip {t} netin {{ {host} : {} . {container} }}\n", c.ip));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TableConfig {
        TableConfig {
            name: "celld-0afe0000-22".into(),
            pool: "10.254.0.0/22".parse().unwrap(),
            deny: vec!["198.51.100.0/24".parse().unwrap()],
            allow_host_access: false,
            dns_forward: None,
        }
    }

    #[test]
    fn container_script() {
        let rules = vec![Allow { daddr: None, proto: Some(6), dport: Some((80, 80)), icmp: None, log_prefix: None }];
        let c = ContainerRules {
            chain: "c-0afe0004",
            iface: "cvh-0afe0004",
            ip: "10.254.0.6".parse().unwrap(),
            rules: &rules,
            netin: &[(61001, 8080)],
            bridge: None,
        };
        let s = cfg().rebuild(std::slice::from_ref(&c));
        assert!(s.contains("add chain ip celld-0afe0000-22 c-0afe0004\n"));
        assert!(s.contains("add rule ip celld-0afe0000-22 c-0afe0004 tcp dport 80 accept\n"));
        assert!(s.contains("ifaces { \"cvh-0afe0004\" }"));
        assert!(s.contains("containers { \"cvh-0afe0004\" : jump c-0afe0004 }"));
        assert!(s.contains("netin { 61001 : 10.254.0.6 . 8080 }"));
        assert!(s.contains("sources { \"cvh-0afe0004\" . 10.254.0.6 }"));
        let b = ContainerRules {
            iface: "cvb-0ac00307",
            ip: "10.192.3.7".parse().unwrap(),
            bridge: Some("cbr-0ac00300"),
            ..c
        };
        let s = cfg().rebuild(&[b]);
        assert!(s.contains("saddrs { 10.192.3.7 : jump c-0afe0004 }"));
        assert!(s.contains("add element bridge celld-0afe0000-22 sources { \"cvb-0ac00307\" . 10.192.3.7 }"));
        assert!(s.contains("hairpin { \"cbr-0ac00300\" . \"cbr-0ac00300\" }"));
        assert!(!s.contains("containers { \"cvb"));
    }

    #[test]
    fn table_has_deny_and_host_rules() {
        let s = cfg().rebuild(&[]);
        assert!(s.starts_with("table ip celld-0afe0000-22\ndelete table ip celld-0afe0000-22\n"));
        assert!(s.contains("elements = { 198.51.100.0/24 }"));
        assert!(s.contains("reject with icmp type admin-prohibited\n  }"));
        assert!(s.contains("ip saddr 10.254.0.0/22 ip daddr != 10.254.0.0/22 masquerade"));
        let open = TableConfig { allow_host_access: true, ..cfg() };
        assert!(
            open.rebuild(&[])
                .contains("ct state established,related accept\n    \n    ip daddr 127.0.0.0/8 drop\n    accept")
        );
    }
}
