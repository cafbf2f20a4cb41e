//! Garden net-out rules turned into firewall allowances. Every value is parsed
//! into a number or an address first, so no client text ever reaches the
//! firewall (the log prefix is filtered to safe characters).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::NetworkError;
use garden_api::types::NetOutRule;

/// Most allowances one request may add: a rule expands to networks × ports.
pub const MAX_STATEMENTS: usize = 4096;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// One allowance of a container's egress: a single firewall rule. Kept in the
/// container's record; written as nft text when the table is rebuilt and as
/// netlink expressions when a rule is added to a running cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allow {
    /// Inclusive destination range; `None` is anywhere.
    pub daddr: Option<(Ipv4Addr, Ipv4Addr)>,
    /// IP protocol number; `None` is any.
    pub proto: Option<u8>,
    /// Inclusive destination port range (tcp and udp).
    pub dport: Option<(u16, u16)>,
    /// ICMP type and, optionally, code.
    pub icmp: Option<(u8, Option<u8>)>,
    /// Log the first packet of each connection with this prefix.
    pub log_prefix: Option<String>,
}

impl Allow {
    /// The rule in nft's language.
    pub fn nft(&self) -> String {
        let mut parts = Vec::new();
        match self.daddr {
            Some((a, b)) if a == b => parts.push(format!("ip daddr {a}")),
            Some((a, b)) => parts.push(format!("ip daddr {a}-{b}")),
            None => {}
        }
        let name = |p: u8| match p {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => "icmp",
        };
        match (self.proto, self.dport, self.icmp) {
            (Some(p), Some((a, b)), _) if a == b => parts.push(format!("{} dport {a}", name(p))),
            (Some(p), Some((a, b)), _) => parts.push(format!("{} dport {a}-{b}", name(p))),
            (Some(_), None, Some((t, None))) => parts.push(format!("icmp type {t}")),
            (Some(_), None, Some((t, Some(c)))) => parts.push(format!("icmp type {t} icmp code {c}")),
            (Some(p), None, None) => parts.push(format!("meta l4proto {}", name(p))),
            (None, ..) => {}
        }
        if let Some(prefix) = &self.log_prefix {
            parts.push(format!("log prefix \"{prefix}\""));
        }
        parts.push("accept".into());
        parts.join(" ")
    }
}

/// The allowances a Garden net-out rule stands for, one per network and port
/// range (nft would reject overlapping elements in one anonymous set).
pub fn statements(rule: &NetOutRule, log_prefix: &str) -> Result<Vec<Allow>, NetworkError> {
    let bad = |m: String| NetworkError::BadRequest(format!("invalid net-out rule: {m}"));
    let proto = match rule.protocol {
        0 => None,
        1 => Some(IPPROTO_TCP),
        2 => Some(IPPROTO_UDP),
        3 => Some(IPPROTO_ICMP),
        p => return Err(bad(format!("protocol {p} is not one of 0 (all), 1 (tcp), 2 (udp), 3 (icmp)"))),
    };
    let ports_allowed = matches!(proto, Some(IPPROTO_TCP | IPPROTO_UDP));
    if !rule.ports.is_empty() && !ports_allowed {
        return Err(bad("ports can only be given for protocol tcp or udp".into()));
    }
    let mut networks = Vec::new();
    for n in &rule.networks {
        let parse = |s: &str, what: &str| {
            s.parse::<Ipv4Addr>().map_err(|_| bad(format!("network {what} {s:?} is not an IPv4 address")))
        };
        let start = parse(&n.start, "start")?;
        let end = if n.end.is_empty() { start } else { parse(&n.end, "end")? };
        if u32::from(start) > u32::from(end) {
            return Err(bad(format!("network range {start}-{end} ends before it starts")));
        }
        networks.push(Some((start, end)));
    }
    if networks.is_empty() {
        networks.push(None);
    }
    let mut ports = Vec::new();
    for r in &rule.ports {
        let end = if r.end == 0 { r.start } else { r.end };
        if r.start == 0 || r.start > end {
            return Err(bad(format!("port range {}-{} must be within 1-65535 and in order", r.start, r.end)));
        }
        ports.push(Some((r.start, end)));
    }
    if ports.is_empty() {
        ports.push(None);
    }
    if networks.len() * ports.len() > MAX_STATEMENTS {
        return Err(bad(format!("it expands to more than {MAX_STATEMENTS} firewall rules")));
    }
    let icmp = if proto == Some(IPPROTO_ICMP) { rule.icmps.map(|c| (c.icmp_type, c.code)) } else { None };
    // Garden logs only tcp and all-protocol rules.
    let log = (rule.log && matches!(proto, None | Some(IPPROTO_TCP))).then(|| log_prefix.to_string());
    let mut out = Vec::with_capacity(networks.len() * ports.len());
    for &daddr in &networks {
        for &dport in &ports {
            out.push(Allow { daddr, proto, dport, icmp, log_prefix: log.clone() });
        }
    }
    Ok(out)
}

/// The allowances of a request's rules for container `handle`, at most
/// [`MAX_STATEMENTS`] of them.
pub fn allowances(rules: &[NetOutRule], handle: &str) -> Result<Vec<Allow>, NetworkError> {
    let prefix = log_prefix(handle);
    let mut out = Vec::new();
    for r in rules {
        out.extend(statements(r, &prefix)?);
        if out.len() > MAX_STATEMENTS {
            return Err(NetworkError::BadRequest(format!(
                "net-out rules expand to more than {MAX_STATEMENTS} firewall rules"
            )));
        }
    }
    Ok(out)
}

/// Garden prefixes log lines with the handle's first 28 characters; only
/// characters that cannot end the quoted nft string are kept.
pub fn log_prefix(handle: &str) -> String {
    let p: String = handle
        .chars()
        .take(28)
        .map(|c| if c.is_ascii_alphanumeric() || "-_.:".contains(c) { c } else { '_' })
        .collect();
    format!("{p} ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use garden_api::types::{IcmpControl, IpRange, PortRange};

    fn text(rule: &NetOutRule) -> Result<Vec<String>, NetworkError> {
        Ok(statements(rule, "h ")?.iter().map(Allow::nft).collect())
    }

    fn range(a: &str, b: &str) -> IpRange {
        IpRange { start: a.into(), end: b.into() }
    }

    #[test]
    fn protocol_all_to_anywhere() {
        assert_eq!(text(&NetOutRule::default()).unwrap(), vec!["accept"]);
    }

    #[test]
    fn tcp_ranges_expand() {
        let rule = NetOutRule {
            protocol: 1,
            networks: vec![range("10.0.0.0", "10.255.255.255"), range("1.2.3.4", "")],
            ports: vec![PortRange { start: 80, end: 443 }, PortRange { start: 8080, end: 0 }],
            log: true,
            ..Default::default()
        };
        let s: Vec<String> = statements(&rule, "app ").unwrap().iter().map(Allow::nft).collect();
        assert_eq!(
            s,
            vec![
                "ip daddr 10.0.0.0-10.255.255.255 tcp dport 80-443 log prefix \"app \" accept",
                "ip daddr 10.0.0.0-10.255.255.255 tcp dport 8080 log prefix \"app \" accept",
                "ip daddr 1.2.3.4 tcp dport 80-443 log prefix \"app \" accept",
                "ip daddr 1.2.3.4 tcp dport 8080 log prefix \"app \" accept",
            ]
        );
    }

    #[test]
    fn icmp_and_udp() {
        let icmp = NetOutRule {
            protocol: 3,
            icmps: Some(IcmpControl { icmp_type: 8, code: Some(0) }),
            log: true,
            ..Default::default()
        };
        assert_eq!(text(&icmp).unwrap(), vec!["icmp type 8 icmp code 0 accept"]);
        let udp = NetOutRule { protocol: 2, ..Default::default() };
        assert_eq!(text(&udp).unwrap(), vec!["meta l4proto udp accept"]);
        let any_icmp = NetOutRule { protocol: 3, ..Default::default() };
        assert_eq!(text(&any_icmp).unwrap(), vec!["meta l4proto icmp accept"]);
    }

    #[test]
    fn malformed_rules_are_refused() {
        let cases = [
            NetOutRule { protocol: 9, ..Default::default() },
            NetOutRule { protocol: 0, ports: vec![PortRange { start: 1, end: 2 }], ..Default::default() },
            NetOutRule { protocol: 1, ports: vec![PortRange { start: 9, end: 2 }], ..Default::default() },
            NetOutRule { protocol: 1, ports: vec![PortRange { start: 0, end: 2 }], ..Default::default() },
            NetOutRule { networks: vec![range("10.0.0.9", "10.0.0.1")], ..Default::default() },
            NetOutRule { networks: vec![range("::1", "")], ..Default::default() },
            NetOutRule { networks: vec![range("1.2.3.4; flush ruleset", "")], ..Default::default() },
        ];
        for rule in cases {
            assert!(matches!(statements(&rule, "h "), Err(NetworkError::BadRequest(_))), "{rule:?}");
        }
    }

    #[test]
    fn log_prefix_is_safe() {
        assert_eq!(log_prefix("a\"b; flush ruleset"), "a_b__flush_ruleset ");
        assert_eq!(log_prefix(&"x".repeat(40)).len(), 29);
    }
}
