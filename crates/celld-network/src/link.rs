//! Interfaces through netlink: a veth pair from the host into the container's
//! network namespace, the gateway address on the host end, the container's
//! address and default route on the other.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::NetworkError;
use super::pool::Ipv4Net;
use super::shared::Lease;

/// The container's end of the veth, as a VM's first NIC would be called.
pub const CONTAINER_IFACE: &str = "eth0";

const ENODEV: i32 = -libc::ENODEV;

fn nl(what: &str, e: rtnetlink::Error) -> NetworkError {
    NetworkError::Netlink(format!("{what}: {e}"))
}

fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == ENODEV)
}

/// A netlink connection whose socket lives in the network namespace of `pid`
/// (or the daemon's own, for `None`). A socket stays in the namespace it was
/// made in, so a short-lived thread enters the namespace just to make it.
pub fn connect(pid: Option<i32>) -> Result<Handle, NetworkError> {
    let socket = match pid {
        None => netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
            .map_err(|e| NetworkError::Netlink(format!("netlink socket: {e}")))?,
        Some(pid) => {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                .map_err(|e| NetworkError::Netlink(format!("container network namespace: {e}")))?;
            std::thread::spawn(move || -> std::io::Result<netlink_sys::Socket> {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
            })
            .join()
            .map_err(|_| NetworkError::Netlink("netns thread panicked".into()))?
            .map_err(|e| NetworkError::Netlink(format!("netlink socket in the container: {e}")))?
        }
    };
    socket.set_non_blocking(true).map_err(|e| NetworkError::Netlink(e.to_string()))?;
    let fd = std::os::fd::IntoRawFd::into_raw_fd(socket);
    // SAFETY: `fd` is a non-blocking netlink socket whose ownership moves here.
    let socket: netlink_sys::TokioSocket = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    // The kernel runs a request inside the sendmsg that carries it, and
    // deleting a veth waits there for RCU grace periods (milliseconds): on a
    // thread of its own, that wait stalls no async worker serving Garden.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| NetworkError::Netlink(format!("netlink runtime: {e}")))?;
    std::thread::Builder::new()
        .name("netlink".into())
        .spawn(move || rt.block_on(conn))
        .map_err(|e| NetworkError::Netlink(format!("netlink thread: {e}")))?;
    Ok(handle)
}

async fn index_of(h: &Handle, name: &str) -> Result<u32, NetworkError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        Ok(None) => Err(NetworkError::Netlink(format!("interface {name} not found"))),
        Err(e) => Err(nl(name, e)),
    }
}

/// The host end of a container's veth, and the bridge it is a port of (on a
/// shared subnet) or none (it holds the gateway of its /30 itself).
pub struct Port<'a> {
    pub name: &'a str,
    pub bridge: Option<String>,
}

fn disable_ipv6(iface: &str) -> Result<(), NetworkError> {
    // No IPv6 on host ends: the firewall is IPv4, and a link-local address
    // there would let a container reach host services over IPv6.
    let v6 = format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6");
    match std::fs::write(&v6, "1") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetworkError::Netlink(format!("{v6}: {e}"))),
        _ => Ok(()),
    }
}

/// The sysctls of an interface holding a gateway address (a routed veth's
/// host end, or a shared subnet's bridge).
fn gateway_sysctls(iface: &str) -> Result<(), NetworkError> {
    // Net-in on 127.0.0.1 (and DNS forwarded to a loopback resolver) needs
    // loopback addresses routed over this interface; the firewall drops any
    // other packet for 127/8 that a container sends to it.
    let sysctl = format!("/proc/sys/net/ipv4/conf/{iface}/route_localnet");
    std::fs::write(&sysctl, "1").map_err(|e| NetworkError::Netlink(format!("{sysctl}: {e}")))?;
    // Strict reverse-path filtering: a packet from the container whose source
    // would not be routed back out of this interface (another container's
    // address, a foreign one) is dropped. Containers keep CAP_NET_RAW, as in
    // Garden, so they can forge sources; the firewall's `sources` check drops
    // them too (and is what holds if conf/all/rp_filter is 2, which wins here).
    let sysctl = format!("/proc/sys/net/ipv4/conf/{iface}/rp_filter");
    std::fs::write(&sysctl, "1").map_err(|e| NetworkError::Netlink(format!("{sysctl}: {e}")))
}

/// Creates a shared subnet's bridge holding its gateway (.1). On error the
/// caller removes it with [`delete`].
pub async fn create_bridge(host: &Handle, name: &str, subnet: Ipv4Net, mtu: u32) -> Result<(), NetworkError> {
    host.link().add(LinkBridge::new(name).mtu(mtu).up().build()).execute().await.map_err(|e| nl(name, e))?;
    disable_ipv6(name)?;
    let index = index_of(host, name).await?;
    host.address()
        .add(index, IpAddr::V4(subnet.nth(1)), subnet.prefix)
        .execute()
        .await
        .map_err(|e| nl("gateway address", e))?;
    gateway_sysctls(name)
}

/// Makes `port` a port of `bridge` again (after a restart that had to make
/// the bridge anew); one already there is fine.
pub async fn join_bridge(host: &Handle, port: &str, bridge: &str) -> Result<(), NetworkError> {
    let (port, bridge) = (index_of(host, port).await?, index_of(host, bridge).await?);
    host.link()
        .set(LinkUnspec::new_with_index(port).controller(bridge).build())
        .execute()
        .await
        .map_err(|e| nl("joining the bridge", e))
}

/// Whether a bridge has any port left.
pub fn has_ports(bridge: &str) -> bool {
    std::fs::read_dir(std::path::Path::new("/sys/class/net").join(bridge).join("brif"))
        .is_ok_and(|mut rd| rd.next().is_some())
}

/// Creates the veth pair, the host end holding the gateway address (or made
/// a port of the shared subnet's bridge) and the container end (born inside
/// the container's namespace) its address and default route. On error the
/// caller removes what was made with [`delete`].
///
/// No bridge for a /30: it would have no second port, and unregistering one
/// costs the kernel ~45 ms of RCU waits (holding the lock every other link
/// change needs) on top of the veth's ~25.
pub async fn create(host: &Handle, port: &Port<'_>, lease: Lease, mtu: u32, pid: i32) -> Result<(), NetworkError> {
    let (host_veth, subnet) = (port.name, lease.subnet);
    let gateway = subnet.nth(1);
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| NetworkError::Netlink(format!("container network namespace: {e}")))?;
    // The peer is born inside the container with its MTU. (It cannot be born
    // up: a veth opens only once its pair is complete.)
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(CONTAINER_IFACE.to_string())
        .mtu(mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let mut veth = LinkVeth::new(host_veth, CONTAINER_IFACE).mtu(mtu).up();
    if let Some(bridge) = &port.bridge {
        veth = veth.controller(index_of(host, bridge).await?);
    }
    let veth = veth.set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).build();
    host.link().add(veth).execute().await.map_err(|e| nl(host_veth, e))?;
    disable_ipv6(host_veth)?;
    if port.bridge.is_none() {
        let index = index_of(host, host_veth).await?;
        host.address()
            .add(index, IpAddr::V4(gateway), subnet.prefix)
            .execute()
            .await
            .map_err(|e| nl("gateway address", e))?;
        gateway_sysctls(host_veth)?;
    }

    let inside = connect(Some(pid))?;
    let eth0 = index_of(&inside, CONTAINER_IFACE).await?;
    inside
        .address()
        .add(eth0, IpAddr::V4(lease.ip), subnet.prefix)
        .execute()
        .await
        .map_err(|e| nl("container address", e))?;
    inside.link().set(LinkUnspec::new_with_index(eth0).up().build()).execute().await.map_err(|e| nl("eth0 up", e))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(eth0).build();
    inside.route().add(route).execute().await.map_err(|e| nl("default route", e))?;
    Ok(())
}

/// Holds an `unreachable` route for the whole pool: each container's /30
/// (connected through its veth) is more specific and wins while the veth
/// exists; a packet for an address without a container (destroyed, lost its
/// veth, never made) gets EHOSTUNREACH at once instead of following the host's
/// default route off the machine. One already there is fine.
pub async fn hold_pool_route(host: &Handle, pool: Ipv4Net) -> Result<(), NetworkError> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(pool.addr, pool.prefix)
        .kind(RouteType::Unreachable)
        .build();
    match host.route().add(route).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(nl(&format!("unreachable route for the pool {pool}"), e)),
    }
}

/// Whether a host interface exists (the host end of a container's veth: gone
/// when either end is deleted).
pub fn exists(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Removes an interface (a veth takes its peer along); one already gone is fine.
pub async fn delete(host: &Handle, name: &str) -> Result<(), NetworkError> {
    match host.link().del_with_message(LinkUnspec::new_with_name(name).build()).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(nl(name, e)),
    }
}

/// Names of all interfaces on the host.
pub async fn list(host: &Handle) -> Result<Vec<String>, NetworkError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut names = Vec::new();
    let mut links = host.link().get().execute();
    while let Some(l) = links.try_next().await.map_err(|e| nl("list interfaces", e))? {
        names.extend(l.attributes.into_iter().filter_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n),
            _ => None,
        }));
    }
    Ok(names)
}
