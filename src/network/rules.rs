//! Garden net-out rules turned into nftables statements. Every value that
//! reaches the firewall script is parsed into a number or an address first, so
//! no client text is ever spliced into it.

use std::net::Ipv4Addr;

use super::NetworkError;
use crate::garden::types::NetOutRule;

/// Most statements one request may add: a rule expands to networks × ports.
pub const MAX_STATEMENTS: usize = 4096;

/// The nft match-and-verdict statements a rule allows, one per network and port
/// range (nft would reject overlapping elements in one anonymous set).
pub fn statements(rule: &NetOutRule, log_prefix: &str) -> Result<Vec<String>, NetworkError> {
    let bad = |m: String| NetworkError::BadRequest(format!("invalid net-out rule: {m}"));
    let proto = match rule.protocol {
        0 => None,
        1 => Some("tcp"),
        2 => Some("udp"),
        3 => Some("icmp"),
        p => return Err(bad(format!("protocol {p} is not one of 0 (all), 1 (tcp), 2 (udp), 3 (icmp)"))),
    };
    if !rule.ports.is_empty() && !matches!(proto, Some("tcp" | "udp")) {
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
        networks.push(if start == end { format!("ip daddr {start}") } else { format!("ip daddr {start}-{end}") });
    }
    if networks.is_empty() {
        networks.push(String::new());
    }
    let mut l4 = Vec::new();
    match proto {
        None => l4.push(String::new()),
        Some(p @ ("tcp" | "udp")) if rule.ports.is_empty() => l4.push(format!("meta l4proto {p}")),
        Some(p @ ("tcp" | "udp")) => {
            for r in &rule.ports {
                let end = if r.end == 0 { r.start } else { r.end };
                if r.start == 0 || r.start > end {
                    return Err(bad(format!("port range {}-{} must be within 1-65535 and in order", r.start, r.end)));
                }
                l4.push(if r.start == end {
                    format!("{p} dport {end}")
                } else {
                    format!("{p} dport {}-{end}", r.start)
                });
            }
        }
        _ => l4.push(match rule.icmps {
            None => "meta l4proto icmp".to_string(),
            Some(c) => match c.code {
                None => format!("icmp type {}", c.icmp_type),
                Some(code) => format!("icmp type {} icmp code {code}", c.icmp_type),
            },
        }),
    }
    if networks.len() * l4.len() > MAX_STATEMENTS {
        return Err(bad(format!("it expands to more than {MAX_STATEMENTS} firewall rules")));
    }
    // Garden logs only tcp and all-protocol rules.
    let verdict = if rule.log && matches!(proto, None | Some("tcp")) {
        format!("log prefix \"{log_prefix}\" accept")
    } else {
        "accept".to_string()
    };
    let mut out = Vec::with_capacity(networks.len() * l4.len());
    for n in &networks {
        for p in &l4 {
            let stmt = [n.as_str(), p.as_str(), verdict.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>();
            out.push(stmt.join(" "));
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
    use crate::garden::types::{IcmpControl, IpRange, PortRange};

    fn range(a: &str, b: &str) -> IpRange {
        IpRange { start: a.into(), end: b.into() }
    }

    #[test]
    fn protocol_all_to_anywhere() {
        assert_eq!(statements(&NetOutRule::default(), "h ").unwrap(), vec!["accept"]);
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
        let s = statements(&rule, "app ").unwrap();
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
        assert_eq!(statements(&icmp, "h ").unwrap(), vec!["icmp type 8 icmp code 0 accept"]);
        let udp = NetOutRule { protocol: 2, ..Default::default() };
        assert_eq!(statements(&udp, "h ").unwrap(), vec!["meta l4proto udp accept"]);
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
