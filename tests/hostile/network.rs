//! Hostile network: see tests/hostile.rs. Issue 17, defects 3 (forged
//! sources), 4 (nothing for the pool leaves the host; the router stops routing
//! before it stops) and 13 (one cell per pool; an instance that lost its
//! interface crashes).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use celld::garden::types::{BindMount, IpRange, NetOutRule, PortRange};

use crate::common;
// `require_local!` expands to a bare `require_host!()`.
use crate::common::local::{Local, all_running};
use crate::common::{Daemon, rt, spec};
use crate::require_host;

/// Sends one UDP datagram from a raw socket with any source address
/// (`send SRC DST PORT PAYLOAD`), or prints each datagram received on a port
/// with its source until one says "done" (`recv PORT`). busybox has no raw
/// sockets; a container's root has CAP_NET_RAW, so this is what an attacker
/// inside would run.
const SPOOF_C: &str = r#"
#include <arpa/inet.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "recv") == 0) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons(atoi(argv[2]));
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
        printf("listening\n");
        fflush(stdout);
        for (;;) {
            char buf[512];
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            ssize_t n = recvfrom(s, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &fl);
            if (n < 0) { perror("recvfrom"); return 1; }
            buf[n] = 0;
            printf("%s from %s\n", buf, inet_ntoa(from.sin_addr));
            fflush(stdout);
            if (strcmp(buf, "done") == 0) return 0;
        }
    }
    if (argc == 6 && strcmp(argv[1], "send") == 0) {
        int s = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
        if (s < 0) { perror("socket"); return 2; }
        char pkt[512] = {0};
        struct iphdr *ip = (struct iphdr *)pkt;
        struct udphdr *udp = (struct udphdr *)(pkt + sizeof *ip);
        size_t len = strlen(argv[5]);
        if (len > 256) return 64;
        memcpy(pkt + sizeof *ip + sizeof *udp, argv[5], len);
        ip->version = 4;
        ip->ihl = 5;
        ip->ttl = 64;
        ip->protocol = IPPROTO_UDP;
        ip->saddr = inet_addr(argv[2]);
        ip->daddr = inet_addr(argv[3]);
        ip->tot_len = htons(sizeof *ip + sizeof *udp + len);
        udp->source = htons(40000);
        udp->dest = htons(atoi(argv[4]));
        udp->len = htons(sizeof *udp + len);
        /* checksum 0: none (IPv4 UDP); the kernel fills in the IP header's */
        struct sockaddr_in to = {0};
        to.sin_family = AF_INET;
        to.sin_addr.s_addr = ip->daddr;
        if (sendto(s, pkt, sizeof *ip + sizeof *udp + len, 0, (struct sockaddr *)&to, sizeof to) < 0) {
            perror("sendto");
            return 3;
        }
        return 0;
    }
    fprintf(stderr, "usage: spoof recv PORT | spoof send SRC DST PORT PAYLOAD\n");
    return 64;
}
"#;

/// Compiles the spoofer (static: the tiny rootfs has no libc) into `dir`.
fn build_spoofer(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join("spoof.c");
    std::fs::write(&src, SPOOF_C).unwrap();
    let bin = dir.join("spoof");
    let out = Command::new("cc").args(["-static", "-O1", "-o"]).arg(&bin).arg(&src).output();
    let out = out.expect("cc is needed for this test (gcc and libc6-dev, in the Makefile's DEB_PACKAGES)");
    assert!(out.status.success(), "cc -static failed: {}", String::from_utf8_lossy(&out.stderr));
    bin
}

fn udp_to(ip: &str, port: u16) -> NetOutRule {
    NetOutRule {
        protocol: 2,
        networks: vec![IpRange { start: ip.into(), end: ip.into() }],
        ports: vec![PortRange { start: port, end: port }],
        ..Default::default()
    }
}

/// Defect 3: a container with a raw socket sends UDP to another container as
/// if from a third container and as if from 8.8.8.8 (the destination is a
/// local test container: nothing leaves the host). Only its genuine
/// datagrams may arrive.
#[test]
fn a_container_cannot_forge_its_source_address() {
    crate::require_host!();
    let d = Daemon::start();
    let tools = d.dir.join("tools");
    build_spoofer(&tools);
    let (a, b, c) = (d.handle("spoofer"), d.handle("victim"), d.handle("third"));
    rt().block_on(async {
        let mut with_tools = spec(&a);
        with_tools.bind_mounts =
            vec![BindMount { src_path: tools.display().to_string(), dst_path: "/tools".into(), mode: 0, origin: 0 }];
        d.client.create(&with_tools).await.unwrap();
        let mut victim = with_tools.clone();
        victim.handle = b.clone();
        d.client.create(&victim).await.unwrap();
        d.client.create(&spec(&c)).await.unwrap();
        let ip = |h: String| {
            let d = &d;
            async move { d.client.info(&h).await.unwrap().container_ip }
        };
        let (ip_a, ip_b, ip_c) = (ip(a.clone()).await, ip(b.clone()).await, ip(c.clone()).await);
        // a may send UDP to b:5000, as the issue's attacker could.
        d.client.net_out(&a, &udp_to(&ip_b, 5000)).await.unwrap();
        let (_recv, out) = common::start_until(&d, &b, "/tools/spoof recv 5000", "listening").await;

        let send = |src: &str, payload: &str| {
            let script = format!("/tools/spoof send {src} {ip_b} 5000 {payload}");
            let (d, a) = (&d, a.clone());
            async move { common::run(d, &a, common::sh(&script)).await }
        };
        let (code, _, err) = send(&ip_a, "genuine").await;
        assert_eq!(code, 0, "the raw socket itself must work (CAP_NET_RAW, as in Garden): {err}");
        send(&ip_c, "forged-third").await;
        send("8.8.8.8", "forged-outside").await;
        send(&ip_b, "forged-victim").await;
        send(&ip_a, "done").await;
        out.wait_for("done from").await;
        let got = out.text();
        assert!(got.contains(&format!("genuine from {ip_a}\n")), "{got}");
        assert!(!got.contains("forged"), "forged datagrams arrived:\n{got}");
        assert!(got.contains(&format!("done from {ip_a}\n")), "{got}");

        // And the host ends filter strictly by reverse path as well.
        for h in d.interfaces() {
            let rp = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{h}/rp_filter")).unwrap();
            assert_eq!(rp.trim(), "1", "{h}");
        }
        for h in [&a, &b, &c] {
            d.client.destroy(h).await.unwrap();
        }
    });
    d.assert_no_leaks();
}

/// Shared subnets: containers on one bridge reach each other without any
/// rule, so there the `bridge` table is what stops a container forging a
/// neighbour's address (or a foreign one, or the gateway's).
#[test]
fn a_container_on_a_shared_subnet_cannot_forge_its_neighbours_address() {
    crate::require_host!();
    let d = Daemon::start();
    let tools = d.dir.join("tools");
    build_spoofer(&tools);
    let subnet = d.shared_subnet(0);
    let handles = [d.handle("spoofer"), d.handle("victim"), d.handle("neighbour")];
    rt().block_on(async {
        let mut ips = Vec::new();
        for h in &handles {
            let mut s = spec(h);
            s.network = subnet.clone();
            s.bind_mounts = vec![BindMount {
                src_path: tools.display().to_string(),
                dst_path: "/tools".into(),
                mode: 0,
                origin: 0,
            }];
            d.client.create(&s).await.unwrap();
            ips.push(d.client.info(h).await.unwrap().container_ip);
        }
        let gateway = d.client.info(&handles[0]).await.unwrap().host_ip;
        let (_recv, out) = common::start_until(&d, &handles[1], "/tools/spoof recv 5000", "listening").await;
        for (src, payload) in [
            (&ips[0], "genuine"),
            (&ips[2], "forged-neighbour"),
            (&gateway, "forged-gateway"),
            (&"8.8.8.8".to_string(), "forged-outside"),
            (&ips[0], "done"),
        ] {
            let script = format!("/tools/spoof send {src} {} 5000 {payload}", ips[1]);
            let (code, _, err) = common::run(&d, &handles[0], common::sh(&script)).await;
            assert_eq!(code, 0, "{payload}: {err}");
        }
        out.wait_for("done from").await;
        let got = out.text();
        assert!(got.contains(&format!("genuine from {}\n", ips[0])), "{got}");
        assert!(!got.contains("forged"), "forged datagrams arrived:\n{got}");
        for h in &handles {
            d.client.destroy(h).await.unwrap();
        }
    });
    d.assert_no_leaks();
}

/// `ip route get ADDR`: what the host would do with a packet for it (a
/// lookup only: nothing is sent). An `unreachable` route answers "No route to
/// host".
fn route_of(addr: Ipv4Addr) -> String {
    let out = Command::new("ip").args(["-o", "route", "get", &addr.to_string()]).output().expect("ip route get");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn pool_base(d: &Daemon) -> Ipv4Addr {
    d.pool.split('/').next().unwrap().parse().unwrap()
}

/// Defect 4 (host level): an address of the pool without a container — never
/// used, or its container destroyed — gets an immediate "no route to host",
/// never the host's default route. The route is looked up first, so that a
/// broken cell fails this test without sending anything off the host.
#[test]
fn the_pool_never_routes_off_the_host() {
    crate::require_host!();
    let d = Daemon::start();
    let h = d.handle("gone");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let live: Ipv4Addr = d.client.info(&h).await.unwrap().container_ip.parse().unwrap();
        assert!(route_of(live).contains("dev cvh-"), "a live container is routed to its veth: {}", route_of(live));
        d.client.destroy(&h).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.interfaces().is_empty() {
            assert!(Instant::now() < deadline, "the veth was not removed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let never_used = Ipv4Addr::from(u32::from(pool_base(&d)) + 0x3fe);
        for addr in [live, never_used] {
            let route = route_of(addr);
            assert!(route.contains("No route to host"), "{addr} would be routed: {route}");
            let started = Instant::now();
            let e = std::net::TcpStream::connect_timeout(&(addr, 8080).into(), Duration::from_secs(5)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EHOSTUNREACH), "connect to {addr}: {e}");
            // Not a bound on speed: only that it was refused, not timed out.
            assert!(started.elapsed() < Duration::from_secs(5), "connect to {addr} timed out");
            let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let e = udp.send_to(b"x", (addr, 53)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EHOSTUNREACH), "UDP to {addr}: {e}");
        }
    });
    d.assert_no_leaks();
}

/// Starts a second celld on `pool` with its own depot; returns its exit
/// status and log, or kills it and panics if it is still up after 10 s.
fn second_cell(first: &Daemon, pool: &str, name: &str) -> (std::process::ExitStatus, String) {
    let port = (first.port_start + 50).to_string();
    let grpc_port: u16 = first.grpc.rsplit(':').next().unwrap().parse::<u16>().unwrap() + 600;
    let rootfs = common::rootfs_dir();
    let args = [
        "--rootfs-dir",
        rootfs.to_str().unwrap(),
        "--network-pool",
        pool,
        "--port-pool-start",
        &port,
        "--port-pool-size",
        "10",
        "--grpc-listen",
        &format!("127.0.0.1:{grpc_port}"),
    ];
    common::celld_exit(&first.dir.join(name), &args, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("a second cell on the pool {pool} started"))
}

/// Defect 13: a second cell given the same pool (or one overlapping it)
/// refuses to start, naming the cell that has it, and the first cell's
/// container keeps its interface and its firewall.
#[test]
fn a_second_cell_on_the_same_pool_refuses_to_start() {
    crate::require_host!();
    let d = Daemon::start();
    let h = d.handle("first");
    rt().block_on(async { d.client.create(&spec(&h)).await.unwrap() });
    let ifaces = d.interfaces();
    assert_eq!(ifaces.len(), 1);
    let rules = d.firewall_leftovers();
    let depot = d.depot().display().to_string();

    let (status, log) = second_cell(&d, &d.pool, "second");
    assert!(!status.success(), "{log}");
    assert!(log.contains(&depot) && log.contains(&d.pool), "the refusal names the pool and the other cell: {log}");
    // A /24 inside the first cell's /22 is the same addresses.
    let inner = format!("{}/24", pool_base(&d));
    let (status, log) = second_cell(&d, &inner, "overlap");
    assert!(!status.success(), "{log}");
    assert!(log.contains(&depot), "{log}");

    assert_eq!(d.interfaces(), ifaces, "the first cell's interface must survive");
    assert_eq!(d.firewall_leftovers(), rules, "the first cell's firewall must survive");
    rt().block_on(async {
        let (code, out, _) = common::run(&d, &h, common::sh("cat /proc/net/dev")).await;
        assert_eq!(code, 0);
        assert!(out.contains("eth0"), "{out}");
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

/// The example app, one instance, routed.
fn hello(l: &Local) {
    l.ok(&["push", concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello"), "-m", "64M"]);
    l.wait_instances("hello", "dev", "1 instance running", Duration::from_secs(90), all_running(1));
    l.wait_status("hello.apps.localhost", "/", 200, "Hello from celld!", Duration::from_secs(30));
    // Whatever the cell under test does, these tests send nothing off the
    // host (the cell holds this route itself; a broken one might not).
    let _ = Command::new("ip").args(["route", "add", "unreachable", &l.d.pool]).stderr(Stdio::null()).status();
}

/// Defect 13: an instance whose container lost its interface (as when another
/// cell removed it) crashes with a reason saying so, instead of staying
/// "running" and health-checked against whatever the address reaches.
#[test]
fn an_instance_that_lost_its_interface_crashes_with_a_reason() {
    crate::require_local!();
    let l = Local::start(&[]);
    hello(&l);
    let deadline = Instant::now() + Duration::from_secs(30);
    let veth = loop {
        // Staging's container is gone once its veth is.
        match l.d.interfaces().as_slice() {
            [one] => break one.clone(),
            _ => assert!(Instant::now() < deadline, "expected one veth: {:?}", l.d.interfaces()),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let status = Command::new("ip").args(["link", "del", &veth]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = l.ok(&["events", "hello"]);
        if events.contains("app.crash") {
            assert!(events.contains("network interface"), "the crash says why: {events}");
            break;
        }
        assert!(Instant::now() < deadline, "no crash after the interface was removed: {events}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The replacement serves again.
    l.wait_status("hello.apps.localhost", "/", 200, "Hello from celld!", Duration::from_secs(60));
    l.finish();
}

/// Defect 4 (router): once `stop` or `delete` has returned, the router no
/// longer sends a single request to the app's instances.
#[test]
fn the_router_stops_routing_before_the_instances_stop() {
    crate::require_local!();
    let l = Local::start(&[]);
    hello(&l);
    l.ok(&["stop", "hello"]);
    let (status, body) = l.get("hello.apps.localhost", "/");
    assert_eq!(status, 404, "the first request after stop: {body}");

    l.ok(&["start", "hello"]);
    l.wait_status("hello.apps.localhost", "/", 200, "Hello from celld!", Duration::from_secs(60));
    l.ok(&["delete", "hello", "-f"]);
    let (status, body) = l.get("hello.apps.localhost", "/");
    assert_eq!(status, 404, "the first request after delete: {body}");
    l.finish();
}
