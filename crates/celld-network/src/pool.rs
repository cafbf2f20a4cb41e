//! Address and port pools: which /30 subnets of `--network-pool` and which host
//! ports are held. Pure bookkeeping, so it is unit-tested without root.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::NetworkError;

/// An IPv4 network in CIDR form, normalised to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, NetworkError> {
        if prefix > 32 {
            return Err(NetworkError::BadRequest(format!("{addr}/{prefix}: prefix length must be at most 32")));
        }
        Ok(Self { addr: Ipv4Addr::from(u32::from(addr) & Self::mask(prefix)), prefix })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) }
    }

    pub fn first(&self) -> u32 {
        u32::from(self.addr)
    }

    pub fn last(&self) -> u32 {
        self.first() | !Self::mask(self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first()..=self.last()).contains(&u32::from(ip))
    }

    pub fn contains_net(&self, other: &Ipv4Net) -> bool {
        self.first() <= other.first() && other.last() <= self.last()
    }

    /// Offset `n` from the network address (.1 is the gateway, .2 the container).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.first().wrapping_add(n))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetworkError::BadRequest(format!("{s:?} is not an IPv4 network in CIDR form (a.b.c.d/n)"));
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        Self::new(ip.parse().map_err(|_| bad())?, len.parse().map_err(|_| bad())?)
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = NetworkError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(n: Ipv4Net) -> String {
        n.to_string()
    }
}

pub const SUBNET_PREFIX: u8 = 30;

/// The /30 subnets of the pool; a container holds one.
#[derive(Debug)]
pub struct SubnetPool {
    pool: Ipv4Net,
    held: BTreeSet<u32>,
}

impl SubnetPool {
    pub fn new(pool: Ipv4Net) -> Result<Self, NetworkError> {
        if pool.prefix > SUBNET_PREFIX {
            return Err(NetworkError::BadRequest(format!("network pool {pool} is smaller than a /30")));
        }
        Ok(Self { pool, held: BTreeSet::new() })
    }

    pub fn capacity(&self) -> usize {
        1usize << (SUBNET_PREFIX - self.pool.prefix)
    }

    pub fn pool(&self) -> Ipv4Net {
        self.pool
    }

    /// Takes the lowest free subnet, or the one `requested` names (`a.b.c.d/30`
    /// or a bare address, whose /30 is taken; the address, if given, must be the
    /// container's .2).
    pub fn acquire(&mut self, requested: &str) -> Result<Ipv4Net, NetworkError> {
        let subnet = if requested.is_empty() {
            let n = (0..self.capacity() as u32)
                .map(|i| self.pool.first() + (i << (32 - SUBNET_PREFIX as u32)))
                .find(|s| !self.held.contains(s))
                .ok_or_else(|| {
                    NetworkError::Exhausted(format!("insufficient subnets remaining in the pool {}", self.pool))
                })?;
            Ipv4Net::new(Ipv4Addr::from(n), SUBNET_PREFIX)?
        } else {
            let bad =
                || NetworkError::BadRequest(format!("network {requested:?} is neither a.b.c.d/30 nor an IPv4 address"));
            let (ip, net) = match requested.split_once('/') {
                Some((ip, _)) => (ip.parse::<Ipv4Addr>().map_err(|_| bad())?, requested.parse::<Ipv4Net>()?),
                None => {
                    let ip: Ipv4Addr = requested.parse().map_err(|_| bad())?;
                    (ip, Ipv4Net::new(ip, SUBNET_PREFIX)?)
                }
            };
            if net.prefix != SUBNET_PREFIX {
                return Err(NetworkError::BadRequest(format!(
                    "network {requested}: each container gets a /30; ask for a /30 or one address"
                )));
            }
            if ip != net.addr && ip != net.nth(2) {
                return Err(NetworkError::BadRequest(format!(
                    "network {requested}: the container's address in {net} is {}",
                    net.nth(2)
                )));
            }
            if !self.pool.contains_net(&net) {
                return Err(NetworkError::BadRequest(format!(
                    "network {requested} is outside this cell's network pool {}",
                    self.pool
                )));
            }
            if self.held.contains(&net.first()) {
                return Err(NetworkError::BadRequest(format!(
                    "network {requested} overlaps the subnet {net} of another container"
                )));
            }
            net
        };
        self.held.insert(subnet.first());
        Ok(subnet)
    }

    /// Marks a subnet a surviving container holds (restore after a restart).
    pub fn hold(&mut self, subnet: Ipv4Net) -> bool {
        self.pool.contains_net(&subnet) && self.held.insert(subnet.first())
    }

    pub fn release(&mut self, subnet: Ipv4Net) {
        self.held.remove(&subnet.first());
    }
}

/// Host ports for net-in; Garden's pool starts at 61001 and holds 4534 ports.
#[derive(Debug)]
pub struct PortPool {
    start: u16,
    size: u16,
    held: BTreeSet<u16>,
    /// Where the next search starts: ports are not reused at once, so a client
    /// that still dials a freed port does not reach a new container.
    next: u16,
}

impl PortPool {
    pub fn new(start: u16, size: u16) -> Self {
        Self { start, size, held: BTreeSet::new(), next: 0 }
    }

    /// Takes `port`, or the next free port of the pool when it is 0. `free`
    /// says whether no host process has the port bound.
    pub fn acquire(&mut self, port: u32, free: impl Fn(u16) -> bool) -> Result<u16, NetworkError> {
        if port > u16::MAX as u32 {
            return Err(NetworkError::BadRequest(format!("host port {port} is out of range (1-65535)")));
        }
        if port != 0 {
            let p = port as u16;
            if self.held.contains(&p) {
                return Err(NetworkError::BadRequest(format!("host port {p} is already mapped to a container")));
            }
            if !free(p) {
                return Err(NetworkError::BadRequest(format!("host port {p} is already in use on this cell")));
            }
            self.held.insert(p);
            return Ok(p);
        }
        for i in 0..self.size {
            let p = self.start.wrapping_add((self.next.wrapping_add(i)) % self.size);
            if !self.held.contains(&p) && free(p) {
                self.held.insert(p);
                self.next = (p - self.start).wrapping_add(1) % self.size;
                return Ok(p);
            }
        }
        Err(NetworkError::Exhausted(format!(
            "no free host port left in {}-{}",
            self.start,
            self.start as u32 + self.size as u32 - 1
        )))
    }

    pub fn hold(&mut self, port: u16) {
        self.held.insert(port);
        if (self.start..self.start.saturating_add(self.size)).contains(&port) {
            self.next = self.next.max((port - self.start).wrapping_add(1) % self.size);
        }
    }

    pub fn release(&mut self, port: u16) {
        self.held.remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> SubnetPool {
        SubnetPool::new("10.254.0.0/22".parse().unwrap()).unwrap()
    }

    #[test]
    fn cidr_parsing_normalises() {
        let n: Ipv4Net = "10.254.1.7/22".parse().unwrap();
        assert_eq!(n.to_string(), "10.254.0.0/22");
        assert!(n.contains("10.254.3.255".parse().unwrap()));
        assert!(!n.contains("10.254.4.0".parse().unwrap()));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0/8"] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn subnets_are_handed_out_once() {
        let mut p = pool();
        assert_eq!(p.capacity(), 256);
        let a = p.acquire("").unwrap();
        let b = p.acquire("").unwrap();
        assert_eq!(a.to_string(), "10.254.0.0/30");
        assert_eq!(b.to_string(), "10.254.0.4/30");
        assert_eq!(b.nth(1).to_string(), "10.254.0.5");
        p.release(a);
        assert_eq!(p.acquire("").unwrap(), a);
        for _ in 2..256 {
            p.acquire("").unwrap();
        }
        assert!(matches!(p.acquire(""), Err(NetworkError::Exhausted(_))));
    }

    #[test]
    fn requested_subnets_are_checked() {
        let mut p = pool();
        assert_eq!(p.acquire("10.254.0.8/30").unwrap().to_string(), "10.254.0.8/30");
        assert_eq!(p.acquire("10.254.0.14").unwrap().to_string(), "10.254.0.12/30");
        for bad in ["10.254.0.8/30", "10.254.0.10", "10.0.0.0/30", "10.254.0.16/29", "10.254.0.17/30", "nope"] {
            assert!(matches!(p.acquire(bad), Err(NetworkError::BadRequest(_))), "{bad}");
        }
        assert_eq!(p.acquire("").unwrap().to_string(), "10.254.0.0/30");
    }

    #[test]
    fn ports_come_from_the_pool_and_skip_busy_ones() {
        let mut p = PortPool::new(61001, 3);
        assert_eq!(p.acquire(0, |_| true).unwrap(), 61001);
        assert_eq!(p.acquire(0, |port| port != 61002).unwrap(), 61003);
        assert!(p.acquire(61001, |_| true).is_err());
        assert!(p.acquire(70000, |_| true).is_err());
        assert!(p.acquire(8080, |_| false).is_err());
        assert_eq!(p.acquire(8080, |_| true).unwrap(), 8080);
        p.release(61001);
        assert_eq!(p.acquire(0, |_| true).unwrap(), 61001);
        assert_eq!(p.acquire(0, |_| true).unwrap(), 61002);
        assert!(matches!(p.acquire(0, |_| true), Err(NetworkError::Exhausted(_))));
    }
}
