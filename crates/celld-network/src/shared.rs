//! Shared subnets: a spec's `network` naming a subnet larger than a /30
//! (`10.244.0.0/24`, or an address in it, `10.244.0.7/24`) puts the container
//! on that subnet, on one bridge per subnet whose host end holds the `.1`, as
//! Garden's kawasaki does. This is the bookkeeping of which addresses of which
//! subnet are taken; pure, so it is unit-tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::NetworkError;
use super::pool::{Ipv4Net, SUBNET_PREFIX};

/// Where a container sits: its subnet and its own address in it. A routed
/// container's subnet is its /30 from the pool, its address the /30's .2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    pub ip: Ipv4Addr,
}

impl Lease {
    pub fn routed(subnet: Ipv4Net) -> Self {
        Self { subnet, ip: subnet.nth(2) }
    }

    /// On a bridge with other containers, rather than a /30 of its own.
    pub fn is_shared(&self) -> bool {
        is_shared(self.subnet)
    }
}

pub fn is_shared(subnet: Ipv4Net) -> bool {
    subnet.prefix < SUBNET_PREFIX
}

/// The bridge of a shared subnet. Its name comes from the subnet alone: a
/// subnet is held by one cell on the host at a time (a lock next to the
/// pools'), so no two cells ever want the same name. 12 of IFNAMSIZ's 15.
pub fn bridge_name(subnet: Ipv4Net) -> String {
    format!("cbr-{:08x}", u32::from(subnet.addr))
}

/// The subnet address a bridge's name stands for.
pub fn bridge_subnet_addr(name: &str) -> Option<Ipv4Addr> {
    let hex = name.strip_prefix("cbr-")?;
    (hex.len() == 8).then(|| u32::from_str_radix(hex, 16).ok().map(Ipv4Addr::from)).flatten()
}

/// The host end of a bridged container's veth, named for its address (unique
/// on the host for the same reason as the bridge's name).
pub fn bridged_veth_name(ip: Ipv4Addr) -> String {
    format!("cvb-{:08x}", u32::from(ip))
}

/// A spec's `network`, if it asks for a shared subnet: the subnet and the
/// address it names (none for the subnet's own address: "pick one"). `None`
/// for everything else (empty, a bare address, a /30 or smaller), which the
/// /30 pool takes or refuses as before.
pub fn parse(requested: &str) -> Result<Option<(Ipv4Net, Option<Ipv4Addr>)>, NetworkError> {
    let Some((ip, len)) = requested.split_once('/') else { return Ok(None) };
    let Ok(len) = len.parse::<u8>() else { return Ok(None) };
    if len >= SUBNET_PREFIX {
        return Ok(None);
    }
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| NetworkError::BadRequest(format!("network {requested:?}: {ip:?} is not an IPv4 address")))?;
    let net = Ipv4Net::new(ip, len)?;
    if len < 8 {
        return Err(NetworkError::BadRequest(format!(
            "network {requested}: a container subnet may be at most a /8 (this is a /{len})"
        )));
    }
    Ok(Some((net, (ip != net.addr).then_some(ip))))
}

#[derive(Debug)]
struct Subnet {
    net: Ipv4Net,
    used: BTreeSet<u32>,
}

/// The shared subnets this cell has containers on, and their addresses.
#[derive(Debug, Default)]
pub struct SharedSubnets {
    /// By network address; no two overlap.
    subnets: BTreeMap<u32, Subnet>,
}

impl SharedSubnets {
    /// Whether `net` is known here already (its bridge is made or being made).
    pub fn has(&self, net: Ipv4Net) -> bool {
        self.subnets.get(&net.first()).is_some_and(|s| s.net == net)
    }

    /// Whether any container holds an address of `net`.
    pub fn is_used(&self, net: Ipv4Net) -> bool {
        self.subnets.get(&net.first()).is_some_and(|s| s.net == net && !s.used.is_empty())
    }

    /// Takes `ip` (or the lowest free address) in `net`: never the network
    /// address, the gateway (.1, the bridge's) or the broadcast address.
    pub fn acquire(&mut self, net: Ipv4Net, ip: Option<Ipv4Addr>) -> Result<Lease, NetworkError> {
        if let Some(other) = self.subnets.values().find(|s| s.net != net && overlap(s.net, net)) {
            return Err(NetworkError::BadRequest(format!(
                "the requested subnet {net} overlaps an existing subnet {} of this cell",
                other.net
            )));
        }
        let empty = BTreeSet::new();
        let used = self.subnets.get(&net.first()).map_or(&empty, |s| &s.used);
        let (gateway, broadcast) = (net.first() + 1, net.last());
        let ip = match ip {
            Some(ip) => {
                let n = u32::from(ip);
                let refuse = |why: &str| Err(NetworkError::BadRequest(format!("network {ip}/{}: {why}", net.prefix)));
                if n == gateway {
                    return refuse(&format!("a container address must not be the gateway {ip} (the bridge's)"));
                }
                if n == broadcast {
                    return refuse(&format!("a container address must not be the broadcast address {ip}"));
                }
                if used.contains(&n) {
                    return refuse(&format!("the requested address {ip} is already allocated to another container"));
                }
                n
            }
            None => (gateway + 1..broadcast).find(|a| !used.contains(a)).ok_or_else(|| {
                NetworkError::Exhausted(format!("insufficient addresses remaining in the subnet {net}"))
            })?,
        };
        self.subnets.entry(net.first()).or_insert_with(|| Subnet { net, used: BTreeSet::new() }).used.insert(ip);
        Ok(Lease { subnet: net, ip: Ipv4Addr::from(ip) })
    }

    /// Marks the address of a surviving container (restore after a restart).
    pub fn hold(&mut self, lease: Lease) -> bool {
        if self.subnets.values().any(|s| s.net != lease.subnet && overlap(s.net, lease.subnet)) {
            return false;
        }
        let s = self
            .subnets
            .entry(lease.subnet.first())
            .or_insert_with(|| Subnet { net: lease.subnet, used: BTreeSet::new() });
        s.used.insert(u32::from(lease.ip))
    }

    /// Frees an address; true when it was the subnet's last (its bridge may go).
    pub fn release(&mut self, lease: Lease) -> bool {
        match self.subnets.get_mut(&lease.subnet.first()) {
            Some(s) if s.net == lease.subnet => {
                s.used.remove(&u32::from(lease.ip));
                s.used.is_empty()
            }
            _ => false,
        }
    }

    /// Forgets `net` if no container holds an address of it (its bridge is gone).
    pub fn forget_if_unused(&mut self, net: Ipv4Net) -> bool {
        if self.has(net) && !self.is_used(net) {
            self.subnets.remove(&net.first());
            return true;
        }
        false
    }
}

pub fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains_net(&b) || b.contains_net(&a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn requests_for_shared_subnets_are_told_apart() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("10.254.0.6").unwrap(), None);
        assert_eq!(parse("10.254.0.4/30").unwrap(), None);
        assert_eq!(parse("10.244.0.0/24").unwrap(), Some((net("10.244.0.0/24"), None)));
        assert_eq!(parse("10.244.0.7/24").unwrap(), Some((net("10.244.0.0/24"), Some("10.244.0.7".parse().unwrap()))));
        assert!(parse("10.244.0.x/24").is_err());
        assert!(parse("10.0.0.0/4").is_err());
    }

    #[test]
    fn addresses_are_handed_out_once_and_never_the_special_ones() {
        let mut s = SharedSubnets::default();
        let n = net("10.244.0.0/29");
        assert_eq!(s.acquire(n, None).unwrap().ip.to_string(), "10.244.0.2");
        assert_eq!(s.acquire(n, Some("10.244.0.5".parse().unwrap())).unwrap().ip.to_string(), "10.244.0.5");
        for bad in ["10.244.0.1", "10.244.0.7", "10.244.0.5"] {
            assert!(matches!(s.acquire(n, Some(bad.parse().unwrap())), Err(NetworkError::BadRequest(_))), "{bad}");
        }
        for want in ["10.244.0.3", "10.244.0.4", "10.244.0.6"] {
            assert_eq!(s.acquire(n, None).unwrap().ip.to_string(), want);
        }
        assert!(matches!(s.acquire(n, None), Err(NetworkError::Exhausted(_))));
        assert!(matches!(s.acquire(net("10.244.0.0/24"), None), Err(NetworkError::BadRequest(_))));
    }

    #[test]
    fn the_last_release_frees_the_subnet() {
        let mut s = SharedSubnets::default();
        let n = net("10.244.1.0/24");
        let a = s.acquire(n, None).unwrap();
        let b = s.acquire(n, None).unwrap();
        assert!(!s.release(a));
        assert!(!s.forget_if_unused(n));
        assert!(s.release(b));
        assert!(s.has(n) && !s.is_used(n));
        assert!(s.forget_if_unused(n));
        assert!(!s.has(n));
        assert!(s.hold(b) && !s.hold(b));
        assert!(s.is_used(n));
    }

    #[test]
    fn names_fit_ifnamsiz_and_read_back() {
        let n = net("10.192.3.0/24");
        assert!(bridge_name(n).len() <= 15 && bridged_veth_name(n.nth(200)).len() <= 15);
        assert_eq!(bridge_subnet_addr(&bridge_name(n)), Some(n.addr));
    }
}
