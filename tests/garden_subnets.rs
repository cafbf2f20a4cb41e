//! Shared subnets (issue 19 §4) against a real celld through the Garden
//! client: containers whose spec's `network` is a subnet larger than a /30,
//! or an address in one, sit on one bridge per subnet with its .1 as their
//! gateway, reach each other, and keep every other isolation. Run as root
//! with `make test` (serially: these tests share the host).

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use celld::garden::types::*;
use common::{Daemon, rt, run, sh, spec};

/// The `n`th address of a subnet `a.b.c.0/24`.
fn nth(subnet: &str, n: u32) -> String {
    let base: Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
    Ipv4Addr::from(u32::from(base) + n).to_string()
}

async fn create_on(d: &Daemon, name: &str, network: &str) -> String {
    let h = d.handle(name);
    let mut s = spec(&h);
    s.network = network.into();
    d.client.create(&s).await.unwrap_or_else(|e| panic!("create {name} on {network}: {e}"));
    h
}

/// A TCP server in the container answering each connection with `pong`.
async fn listen(d: &Daemon, handle: &str, port: u16) {
    let script = format!("(busybox nc -ll -p {port} -e busybox echo pong </dev/null >/dev/null 2>&1 &); echo up");
    let (code, out, err) = run(d, handle, sh(&script)).await;
    assert_eq!((code, out.trim()), (0, "up"), "listener did not start: {err}");
}

/// What a TCP connection from the container to `ip:port` reads ("" when it
/// could not connect).
async fn dial(d: &Daemon, handle: &str, ip: &str, port: u16) -> String {
    run(d, handle, sh(&format!("nc -w 2 {ip} {port} </dev/null"))).await.1.trim().to_string()
}

async fn info(d: &Daemon, handle: &str) -> ContainerInfo {
    d.client.info(handle).await.unwrap()
}

fn bridges(d: &Daemon) -> Vec<String> {
    d.interfaces().into_iter().filter(|i| i.starts_with("cbr-")).collect()
}

/// `ip route get ADDR` on the host (a lookup: nothing is sent).
fn route_of(addr: &str) -> String {
    let out = Command::new("ip").args(["-o", "route", "get", addr]).output().expect("ip route get");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn containers_on_one_subnet_share_a_bridge_and_reach_each_other() {
    require_host!();
    let d = Daemon::start();
    let subnet = d.shared_subnet(0);
    rt().block_on(async {
        let a = create_on(&d, "a", &subnet).await;
        let b = create_on(&d, "b", &format!("{}/24", nth(&subnet, 7))).await;
        let c = create_on(&d, "c", &subnet).await;
        let routed = create_on(&d, "routed", "").await;
        let (ia, ib, ic) = (info(&d, &a).await, info(&d, &b).await, info(&d, &c).await);
        assert_eq!(ia.container_ip, nth(&subnet, 2), "just the subnet: its first free address");
        assert_eq!(ib.container_ip, nth(&subnet, 7), "the static address asked for");
        assert_eq!(ic.container_ip, nth(&subnet, 3));
        for i in [&ia, &ib, &ic] {
            assert_eq!(i.host_ip, nth(&subnet, 1), "the gateway is the subnet's .1");
        }
        assert_eq!(bridges(&d).len(), 1, "one bridge per subnet: {:?}", d.interfaces());
        let routed_ip = info(&d, &routed).await.container_ip;
        assert!(d.interfaces().iter().any(|i| i.starts_with("cvh-")), "no network asked: a routed /30 as before");

        // What the container sees: its address in the subnet, the .1 as gateway.
        let (code, addrs, _) = run(&d, &b, sh("ip -4 addr show eth0; ip route; cat /etc/hosts")).await;
        assert_eq!(code, 0);
        assert!(addrs.contains(&format!("inet {}/24", nth(&subnet, 7))), "{addrs}");
        assert!(addrs.contains(&format!("default via {}", nth(&subnet, 1))), "{addrs}");
        assert!(addrs.contains(&format!("{} ", nth(&subnet, 7))), "hosts names the address: {addrs}");

        // Neighbours on the subnet talk, without any net-out rule.
        listen(&d, &b, 8080).await;
        listen(&d, &a, 8080).await;
        assert_eq!(dial(&d, &a, &ib.container_ip, 8080).await, "pong", "a → b on the subnet");
        assert_eq!(dial(&d, &c, &ia.container_ip, 8080).await, "pong", "c → a on the subnet");
        assert_eq!(run(&d, &c, sh(&format!("ping -c 1 -W 2 {}", ib.container_ip))).await.0, 0, "ping on the subnet");

        // Everything else stays shut: a routed container and the bridged ones
        // do not reach each other until net-out says so.
        listen(&d, &routed, 8080).await;
        assert_eq!(dial(&d, &a, &routed_ip, 8080).await, "", "bridged → routed without a rule");
        assert_eq!(dial(&d, &routed, &ib.container_ip, 8080).await, "", "routed → bridged without a rule");
        let allow = NetOutRule {
            protocol: 1,
            networks: vec![IpRange { start: routed_ip.clone(), end: routed_ip.clone() }],
            ports: vec![PortRange { start: 8080, end: 8080 }],
            ..Default::default()
        };
        d.client.net_out(&a, &allow).await.unwrap();
        assert_eq!(dial(&d, &a, &routed_ip, 8080).await, "pong", "net-out lets a bridged container out");
        assert_eq!(dial(&d, &c, &routed_ip, 8080).await, "", "a's rule is a's alone");

        // Net-in reaches a bridged container from the host.
        let m = d.client.net_in(&b, 0, 8080).await.unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", m.host_port as u16)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert_eq!(reply.trim(), "pong", "net-in to a bridged container");

        // One goes; the others' traffic goes on, and its address stays on the
        // bridge (never routed off the host).
        d.client.destroy(&a).await.unwrap();
        assert_eq!(dial(&d, &c, &ib.container_ip, 8080).await, "pong", "c → b after a is gone");
        assert!(route_of(&ia.container_ip).contains("dev cbr-"), "{}", route_of(&ia.container_ip));
        assert_eq!(dial(&d, &c, &ia.container_ip, 8080).await, "", "a's address answers no more");

        // The last one takes the bridge along; the subnet is free again.
        d.client.destroy(&b).await.unwrap();
        d.client.destroy(&c).await.unwrap();
        wait_until("the bridge to go", || bridges(&d).is_empty());
        let again = create_on(&d, "again", &format!("{}/24", nth(&subnet, 7))).await;
        listen(&d, &again, 8080).await;
        let other = create_on(&d, "other", &subnet).await;
        assert_eq!(dial(&d, &other, &nth(&subnet, 7), 8080).await, "pong", "the subnet is usable again");
        for h in [&again, &other, &routed] {
            d.client.destroy(h).await.unwrap();
        }
    });
    d.assert_no_leaks();
}

#[test]
fn bad_shared_subnets_are_refused_and_leave_nothing() {
    require_host!();
    let d = Daemon::start();
    let other = Daemon::start();
    let (subnet, fresh) = (d.shared_subnet(0), d.shared_subnet(1));
    rt().block_on(async {
        let x = create_on(&d, "x", &format!("{}/24", nth(&subnet, 9))).await;
        let before = d.interfaces();
        let pool_base = d.pool.split('/').next().unwrap();
        let other_pool_base = other.pool.split('/').next().unwrap();
        let cases = [
            ("the gateway", format!("{}/24", nth(&subnet, 1)), "gateway"),
            ("the broadcast address", format!("{}/24", nth(&subnet, 255)), "broadcast"),
            ("an address in use", format!("{}/24", nth(&subnet, 9)), "already allocated"),
            ("a fresh subnet's gateway", format!("{}/24", nth(&fresh, 1)), "gateway"),
            ("overlapping the cell's pool", format!("{pool_base}/24"), "overlaps this cell's network pool"),
            ("overlapping its own subnet", format!("{}/23", nth(&subnet, 0)), "overlaps an existing subnet"),
            ("overlapping another cell's pool", format!("{other_pool_base}/24"), "in use by the cell with depot"),
            ("not an address", "10.192.0.x/24".to_string(), "not an IPv4 address"),
        ];
        for (what, network, needle) in cases {
            let mut s = spec(&d.handle("bad"));
            s.network = network.clone();
            let e = d.client.create(&s).await.expect_err(what);
            assert!(e.to_string().contains(needle), "{what} ({network}): {e}");
        }
        // Another cell cannot have this cell's subnet, nor one overlapping it.
        for network in [subnet.clone(), format!("{}/23", nth(&subnet, 0))] {
            let mut s = spec(&other.handle("thief"));
            s.network = network.clone();
            let e = other.client.create(&s).await.expect_err(&network);
            assert!(e.to_string().contains(&d.depot().display().to_string()), "{network}: {e}");
        }
        // A create that fails half-way (no such rootfs) on a fresh subnet
        // leaves no bridge, and gives the subnet back for any cell to take.
        let mut s = spec(&d.handle("half"));
        s.network = fresh.clone();
        s.rootfs = "preloaded:no-such-rootfs".into();
        d.client.create(&s).await.expect_err("a missing rootfs");
        assert_eq!(d.interfaces(), before, "a refused create left interfaces");
        assert_eq!(d.client.list(&Default::default()).await.unwrap(), vec![x.clone()]);
        let y = other.handle("y");
        let mut s = spec(&y);
        s.network = fresh.clone();
        // The subnet is given back in the background, a moment after the reply.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = other.client.create(&s).await {
            assert!(Instant::now() < deadline, "the failed create kept its subnet: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Cells do not reach each other's containers on shared subnets either.
        listen(&d, &x, 8080).await;
        listen(&other, &y, 8080).await;
        let (ix, iy) = (info(&d, &x).await.container_ip, info(&other, &y).await.container_ip);
        assert_eq!(dial(&other, &y, &ix, 8080).await, "", "another cell's container reached x");
        assert_eq!(dial(&d, &x, &iy, 8080).await, "", "x reached another cell's container");
        other.client.destroy(&y).await.unwrap();
        d.client.destroy(&x).await.unwrap();
    });
    d.assert_no_leaks();
    other.assert_no_leaks();
}

#[test]
fn shared_subnets_survive_crashes_with_their_addresses() {
    require_host!();
    let mut d = Daemon::start();
    let subnet = d.shared_subnet(2);
    let (a, b) = rt().block_on(async {
        let a = create_on(&d, "a", &format!("{}/24", nth(&subnet, 5))).await;
        let b = create_on(&d, "b", &subnet).await;
        listen(&d, &b, 8080).await;
        (a, b)
    });
    let b_ip = nth(&subnet, 2);
    d.restart();
    rt().block_on(async {
        assert_eq!(d.client.info(&a).await.unwrap().container_ip, nth(&subnet, 5));
        assert_eq!(dial(&d, &a, &b_ip, 8080).await, "pong", "a → b after a crash");
        assert_eq!(bridges(&d).len(), 1);
    });
    // A bridge lost while the cell was down is made again, its ports back on it.
    d.kill();
    let bridge = bridges(&d).pop().expect("the bridge outlives the cell");
    assert!(Command::new("ip").args(["link", "del", &bridge]).status().unwrap().success());
    d.restart();
    rt().block_on(async {
        assert_eq!(bridges(&d), vec![bridge.clone()]);
        assert_eq!(dial(&d, &a, &b_ip, 8080).await, "pong", "a → b on the bridge made anew");
        // Nothing is handed out twice after a restart.
        let c = create_on(&d, "c", &subnet).await;
        assert_eq!(d.client.info(&c).await.unwrap().container_ip, nth(&subnet, 3));
        let table = Command::new("nft").args(["list", "table", "ip", &d.table()]).output().unwrap();
        let table = String::from_utf8_lossy(&table.stdout).to_string();
        assert_eq!(table.matches("chain c-").count(), 3, "chains duplicated or lost over restarts: {table}");
        for h in [&a, &b, &c] {
            d.client.destroy(h).await.unwrap();
        }
    });
    // A cell killed right after the last destroy: the next start removes the bridge.
    d.restart();
    wait_until("the orphaned bridge to go", || bridges(&d).is_empty());
    d.assert_no_leaks();
}

#[test]
fn bridged_containers_reach_out_only_where_allowed_and_never_the_host() {
    require_host!();
    let out = common::outside::OutsideNet::new();
    let d = Daemon::start();
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    rt().block_on(async {
        let h = create_on(&d, "egress", &d.shared_subnet(3)).await;
        let i = info(&d, &h).await;
        assert_eq!(dial(&d, &h, &out.peer_ip, out.port).await, "", "egress without a rule");
        let allow = NetOutRule {
            protocol: 1,
            networks: vec![IpRange { start: out.peer_ip.clone(), end: out.peer_ip.clone() }],
            ports: vec![PortRange { start: out.port, end: out.port }],
            ..Default::default()
        };
        d.client.net_out(&h, &allow).await.unwrap();
        assert_eq!(dial(&d, &h, &out.peer_ip, out.port).await, "pong", "egress the rule allows");
        // The outside sees the host, not the container's private address.
        assert_eq!(out.peers.lock().unwrap().clone(), vec![out.host_ip.clone()]);
        // The host's own services stay shut, on the bridge's gateway as elsewhere.
        for ip in [&i.host_ip, &i.external_ip] {
            assert_eq!(dial(&d, &h, ip, host_port).await, "", "a host service on {ip}");
        }
        let all = NetOutRule::default();
        d.client.net_out(&h, &all).await.unwrap();
        assert_eq!(dial(&d, &h, &i.host_ip, host_port).await, "", "net-out never opens the host");
        d.client.destroy(&h).await.unwrap();
    });
    drop(host_service);
    d.assert_no_leaks();
}
