//! nf_tables over netlink, for the changes made while containers come and go:
//! a container's chain, its rules and its map entries. libnftables (nft.rs)
//! builds the table; but every libnftables command first reads the table's
//! chains back from the kernel, so its cost grows with the number of
//! containers. These messages go straight to the kernel: one batch, one
//! transaction, the same cost at 10 containers as at 250.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::NetworkError;
use super::rules::{Allow, IPPROTO_ICMP};

// linux/netfilter/nfnetlink.h, nf_tables.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_BRIDGE: u8 = 7;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_APPEND: u16 = 0x800;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_RANGE_SREG: u16 = 1;
const NFTA_RANGE_OP: u16 = 2;
const NFTA_RANGE_FROM_DATA: u16 = 3;
const NFTA_RANGE_TO_DATA: u16 = 4;
const NFTA_LOG_PREFIX: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_RANGE_EQ: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_JUMP: i32 = -3;
const IFNAMSIZ: usize = 16;

/// A netlink message under construction; attributes nest through `nest`.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in `done`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&[family, 0]);
        buf.extend_from_slice(&res_id.to_be_bytes());
        Self { buf, nests: Vec::new() }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.attr(kind, &b)
    }

    /// nf_tables takes its 32-bit attributes in network byte order.
    fn u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_be_bytes())
    }

    fn nest(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        if let Some(at) = self.nests.pop() {
            let len = (self.buf.len() - at) as u16;
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn value(&mut self, kind: u16, bytes: &[u8]) -> &mut Self {
        self.nest(kind).attr(NFTA_DATA_VALUE, bytes).end()
    }

    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Msg)) -> &mut Self {
        self.nest(NFTA_LIST_ELEM).str(NFTA_EXPR_NAME, name).nest(NFTA_EXPR_DATA);
        body(self);
        self.end().end()
    }

    fn done(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn ifname(name: &str) -> [u8; IFNAMSIZ] {
    let mut b = [0u8; IFNAMSIZ];
    for (d, s) in b.iter_mut().zip(name.bytes().take(IFNAMSIZ - 1)) {
        *d = s;
    }
    b
}

fn source_key(iface: &str, ip: Ipv4Addr) -> Vec<u8> {
    let mut key = ifname(iface).to_vec();
    key.extend_from_slice(&ip.octets());
    key
}

/// The kernel-side encoding of one [`Allow`], as nft would generate it.
fn allow_exprs(m: &mut Msg, a: &Allow) {
    let load = |m: &mut Msg, base: u32, offset: u32, len: u32| {
        m.expr("payload", |m| {
            m.u32(NFTA_PAYLOAD_DREG, NFT_REG_1)
                .u32(NFTA_PAYLOAD_BASE, base)
                .u32(NFTA_PAYLOAD_OFFSET, offset)
                .u32(NFTA_PAYLOAD_LEN, len);
        });
    };
    let eq = |m: &mut Msg, bytes: &[u8]| {
        m.expr("cmp", |m| {
            m.u32(NFTA_CMP_SREG, NFT_REG_1).u32(NFTA_CMP_OP, NFT_CMP_EQ).value(NFTA_CMP_DATA, bytes);
        });
    };
    let within = |m: &mut Msg, from: &[u8], to: &[u8]| {
        if from == to {
            return eq(m, from);
        }
        m.expr("range", |m| {
            m.u32(NFTA_RANGE_SREG, NFT_REG_1)
                .u32(NFTA_RANGE_OP, NFT_RANGE_EQ)
                .value(NFTA_RANGE_FROM_DATA, from)
                .value(NFTA_RANGE_TO_DATA, to);
        });
    };
    if let Some((from, to)) = a.daddr {
        load(m, NFT_PAYLOAD_NETWORK_HEADER, 16, 4);
        within(m, &from.octets(), &to.octets());
    }
    if let Some(proto) = a.proto {
        m.expr("meta", |m| {
            m.u32(NFTA_META_DREG, NFT_REG_1).u32(NFTA_META_KEY, NFT_META_L4PROTO);
        });
        eq(m, &[proto]);
        if let Some((from, to)) = a.dport {
            load(m, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
            within(m, &from.to_be_bytes(), &to.to_be_bytes());
        }
        if let (IPPROTO_ICMP, Some((kind, code))) = (proto, a.icmp) {
            load(m, NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1);
            eq(m, &[kind]);
            if let Some(code) = code {
                load(m, NFT_PAYLOAD_TRANSPORT_HEADER, 1, 1);
                eq(m, &[code]);
            }
        }
    }
    if let Some(prefix) = &a.log_prefix {
        m.expr("log", |m| {
            m.str(NFTA_LOG_PREFIX, prefix);
        });
    }
    m.expr("immediate", |m| {
        m.u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
            .nest(NFTA_IMMEDIATE_DATA)
            .nest(NFTA_DATA_VERDICT)
            .u32(NFTA_VERDICT_CODE, NF_ACCEPT)
            .end()
            .end();
    });
}

/// Messages of one transaction on the cell's table: the `ip` one, or (after
/// [`in_bridge_family`](Self::in_bridge_family)) the `bridge` one of the same name.
pub struct Batch<'a> {
    table: &'a str,
    family: u8,
    msgs: Vec<Vec<u8>>,
}

impl<'a> Batch<'a> {
    pub fn new(table: &'a str) -> Self {
        Self { table, family: NFPROTO_IPV4, msgs: Vec::new() }
    }

    /// The messages after this go to the bridge table.
    pub fn in_bridge_family(&mut self) -> &mut Self {
        self.family = NFPROTO_BRIDGE;
        self
    }

    pub fn in_ip_family(&mut self) -> &mut Self {
        self.family = NFPROTO_IPV4;
        self
    }

    fn msg(&self, kind: u16, flags: u16) -> Msg {
        Msg::new((NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | NLM_F_ACK | flags, 0, self.family, 0)
    }

    pub fn add_chain(&mut self, chain: &str) -> &mut Self {
        let mut m = self.msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE);
        m.str(NFTA_CHAIN_TABLE, self.table).str(NFTA_CHAIN_NAME, chain);
        self.msgs.push(m.done());
        self
    }

    /// Deletes the chain and, first, every rule in it.
    pub fn delete_chain(&mut self, chain: &str) -> &mut Self {
        let mut flush = self.msg(NFT_MSG_DELRULE, 0);
        flush.str(NFTA_RULE_TABLE, self.table).str(NFTA_RULE_CHAIN, chain);
        self.msgs.push(flush.done());
        let mut m = self.msg(NFT_MSG_DELCHAIN, 0);
        m.str(NFTA_CHAIN_TABLE, self.table).str(NFTA_CHAIN_NAME, chain);
        self.msgs.push(m.done());
        self
    }

    pub fn add_rule(&mut self, chain: &str, allow: &Allow) -> &mut Self {
        let mut m = self.msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
        m.str(NFTA_RULE_TABLE, self.table).str(NFTA_RULE_CHAIN, chain).nest(NFTA_RULE_EXPRESSIONS);
        allow_exprs(&mut m, allow);
        m.end();
        self.msgs.push(m.done());
        self
    }

    fn element(&mut self, kind: u16, set: &str, key: &[u8], data: impl FnOnce(&mut Msg)) -> &mut Self {
        let flags = if kind == NFT_MSG_NEWSETELEM { NLM_F_CREATE } else { 0 };
        let mut m = self.msg(kind, flags);
        m.str(NFTA_SET_ELEM_LIST_TABLE, self.table)
            .str(NFTA_SET_ELEM_LIST_SET, set)
            .nest(NFTA_SET_ELEM_LIST_ELEMENTS)
            .nest(NFTA_LIST_ELEM)
            .value(NFTA_SET_ELEM_KEY, key);
        data(&mut m);
        m.end().end();
        self.msgs.push(m.done());
        self
    }

    /// `add element … ifaces { "iface" }`
    pub fn add_iface(&mut self, set: &str, iface: &str) -> &mut Self {
        self.element(NFT_MSG_NEWSETELEM, set, &ifname(iface), |_| {})
    }

    /// `add element … map { "iface" : jump chain }`
    pub fn add_jump(&mut self, map: &str, iface: &str, chain: &str) -> &mut Self {
        self.jump_element(map, &ifname(iface), chain)
    }

    fn jump_element(&mut self, map: &str, key: &[u8], chain: &str) -> &mut Self {
        self.element(NFT_MSG_NEWSETELEM, map, key, |m| {
            m.nest(NFTA_SET_ELEM_DATA)
                .nest(NFTA_DATA_VERDICT)
                .u32(NFTA_VERDICT_CODE, NFT_JUMP as u32)
                .str(NFTA_VERDICT_CHAIN, chain)
                .end()
                .end();
        })
    }

    /// `delete element … set { "iface" }` (a set or a map keyed by interface).
    pub fn delete_iface(&mut self, set: &str, iface: &str) -> &mut Self {
        self.element(NFT_MSG_DELSETELEM, set, &ifname(iface), |_| {})
    }

    /// `add element … set { ip }`
    pub fn add_addr(&mut self, set: &str, ip: Ipv4Addr) -> &mut Self {
        self.element(NFT_MSG_NEWSETELEM, set, &ip.octets(), |_| {})
    }

    /// `delete element … set { ip }` (a set or a map keyed by address).
    pub fn delete_addr(&mut self, set: &str, ip: Ipv4Addr) -> &mut Self {
        self.element(NFT_MSG_DELSETELEM, set, &ip.octets(), |_| {})
    }

    /// `add element … map { ip : jump chain }`
    pub fn add_addr_jump(&mut self, map: &str, ip: Ipv4Addr, chain: &str) -> &mut Self {
        self.jump_element(map, &ip.octets(), chain)
    }

    /// `add element … set { "in" . "out" }` (interface pairs).
    pub fn add_iface_pair(&mut self, set: &str, from: &str, to: &str) -> &mut Self {
        let key = [ifname(from), ifname(to)].concat();
        self.element(NFT_MSG_NEWSETELEM, set, &key, |_| {})
    }

    pub fn delete_iface_pair(&mut self, set: &str, from: &str, to: &str) -> &mut Self {
        let key = [ifname(from), ifname(to)].concat();
        self.element(NFT_MSG_DELSETELEM, set, &key, |_| {})
    }

    /// `add element … sources { "iface" . ip }`: a concatenated key, each
    /// part in whole 4-byte registers (an interface name takes four).
    pub fn add_source(&mut self, set: &str, iface: &str, ip: Ipv4Addr) -> &mut Self {
        self.element(NFT_MSG_NEWSETELEM, set, &source_key(iface, ip), |_| {})
    }

    pub fn delete_source(&mut self, set: &str, iface: &str, ip: Ipv4Addr) -> &mut Self {
        self.element(NFT_MSG_DELSETELEM, set, &source_key(iface, ip), |_| {})
    }

    /// `add element … netin { port : ip . port }`: concatenated data takes a
    /// 4-byte register per part.
    pub fn add_port(&mut self, map: &str, host_port: u16, ip: Ipv4Addr, port: u16) -> &mut Self {
        let mut data = ip.octets().to_vec();
        data.extend_from_slice(&port.to_be_bytes());
        data.extend_from_slice(&[0, 0]);
        self.element(NFT_MSG_NEWSETELEM, map, &host_port.to_be_bytes(), |m| {
            m.value(NFTA_SET_ELEM_DATA, &data);
        })
    }

    pub fn delete_port(&mut self, map: &str, host_port: u16) -> &mut Self {
        self.element(NFT_MSG_DELSETELEM, map, &host_port.to_be_bytes(), |_| {})
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// The batch with its begin and end markers and sequence numbers from `seq`.
    fn encode(&self, seq: u32) -> (Vec<u8>, u32) {
        let mut out = Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES).done();
        let mut n = seq;
        for m in &self.msgs {
            n += 1;
            let mut m = m.clone();
            m[8..12].copy_from_slice(&n.to_ne_bytes());
            out.extend_from_slice(&m);
        }
        out.extend(Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, n + 1, 0, NFNL_SUBSYS_NFTABLES).done());
        (out, n)
    }
}

/// A NETLINK_NETFILTER socket. Used by one thread at a time (under a lock).
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn new() -> Result<Self, NetworkError> {
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
        if fd < 0 {
            return Err(NetworkError::Firewall(format!("netfilter socket: {}", std::io::Error::last_os_error())));
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A kernel that never answers must not hang the caller.
        let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Self { fd, seq: std::process::id().wrapping_mul(1000) })
    }

    /// Sends the batch as one transaction and waits for the kernel's verdict
    /// on every message; the first error fails (and undoes) all of it.
    pub fn run(&mut self, batch: &Batch) -> Result<(), NetworkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (bytes, last) = batch.encode(self.seq);
        let first = self.seq + 1;
        self.seq = last + 2;
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if sent < 0 {
            return Err(NetworkError::Firewall(format!("netlink send: {}", std::io::Error::last_os_error())));
        }
        let mut acked = 0;
        let expected = batch.msgs.len();
        let mut buf = vec![0u8; 64 * 1024];
        let mut failure = None;
        while acked < expected {
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                return Err(failure.unwrap_or_else(|| NetworkError::Firewall(format!("netlink receive: {e}"))));
            }
            let mut at = 0usize;
            while at + 16 <= n as usize {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap_or_default());
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
                if len < 16 || at + len > n as usize {
                    break;
                }
                if kind == NLMSG_ERROR && (first..=last).contains(&seq) && len >= 20 {
                    acked += 1;
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap_or_default());
                    if code != 0 && failure.is_none() {
                        let e = std::io::Error::from_raw_os_error(-code);
                        failure =
                            Some(NetworkError::Firewall(format!("message {} of the batch: {e}", seq - first + 1)));
                    }
                }
                at += (len + 3) & !3;
            }
            // After a failure the kernel undoes the batch; it may not ack the rest.
            if failure.is_some() {
                break;
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_aligned_and_nested() {
        let mut m = Msg::new(1, 0, 7, NFPROTO_IPV4, 0);
        m.nest(5).str(1, "abc").u32(2, 1).end();
        let b = m.done();
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize, b.len());
        assert_eq!(b.len() % 4, 0);
        // nest header: length covers "abc\0" (8) and the u32 (8) plus itself (4)
        assert_eq!(u16::from_ne_bytes(b[20..22].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(b[22..24].try_into().unwrap()), 5 | NLA_F_NESTED);
        assert_eq!(&b[36..40], &1u32.to_be_bytes());
    }

    #[test]
    fn batches_are_framed_and_numbered() {
        let mut b = Batch::new("t");
        b.add_chain("c").add_iface("ifaces", "cvh-0afe0004");
        let (bytes, last) = b.encode(100);
        assert_eq!(last, 102);
        let kind = |at: usize| u16::from_ne_bytes(bytes[at + 4..at + 6].try_into().unwrap());
        let len = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        assert_eq!(kind(0), NFNL_MSG_BATCH_BEGIN);
        let second = len(0);
        assert_eq!(kind(second), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN);
        let third = second + len(second);
        let fourth = third + len(third);
        assert_eq!(kind(fourth), NFNL_MSG_BATCH_END);
        assert_eq!(fourth + len(fourth), bytes.len());
    }

    #[test]
    fn interface_names_fill_ifnamsiz() {
        assert_eq!(&ifname("eth0")[..5], b"eth0\0");
        assert_eq!(ifname(&"x".repeat(40))[15], 0);
    }
}
