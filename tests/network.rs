//! Container networking against a real celld: real veths, bridges, nftables
//! rules and traffic between real network namespaces. Run as root with
//! `make test` (serially: these tests share the host).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use celld::garden::types::*;
use common::outside::OutsideNet;
use common::{Daemon, garden_type, rt, run, sh, spec};

/// Starts busybox httpd on `port` in the container, serving `body` at /.
async fn serve(d: &Daemon, handle: &str, port: u16, body: &str) {
    let script = format!(
        "mkdir -p /tmp/www{port} && echo {body} > /tmp/www{port}/index.html && busybox httpd -p {port} -h /tmp/www{port} && echo up"
    );
    let (code, out, err) = run(d, handle, sh(&script)).await;
    assert_eq!((code, out.trim()), (0, "up"), "httpd did not start: {err}");
}

/// An HTTP GET from the host; the body, or the error.
fn http_get(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().map_err(|e| format!("{e}"))?, Duration::from_secs(3))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    Ok(reply.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_string())
}

/// The host end of a container's veth, named for its subnet.
fn hex_iface(container_ip: &Ipv4Addr) -> String {
    format!("cvh-{:08x}", u32::from(*container_ip) & !3)
}

/// Whether the container can open a TCP connection to `ip:port`.
async fn can_connect(d: &Daemon, handle: &str, ip: &str, port: u16) -> bool {
    run(d, handle, sh(&format!("nc -w 2 {ip} {port} </dev/null"))).await.0 == 0
}

fn rule(protocol: u8, ip: &str, ports: &[(u16, u16)]) -> NetOutRule {
    NetOutRule {
        protocol,
        networks: vec![IpRange { start: ip.into(), end: ip.into() }],
        ports: ports.iter().map(|&(start, end)| PortRange { start, end }).collect(),
        ..Default::default()
    }
}

#[test]
fn net_in_reaches_a_server_and_info_reports_the_network() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("web");
    rt().block_on(async {
        let mut s = spec(&h);
        s.netin = vec![NetIn { host_port: 0, container_port: 8080 }];
        d.client.create(&s).await.unwrap();
        serve(&d, &h, 8080, "hello-8080").await;
        serve(&d, &h, 9090, "hello-9090").await;

        let info = d.client.info(&h).await.unwrap();
        let pool_prefix = d.pool.rsplit_once('.').map(|(a, _)| a.rsplit_once('.').unwrap().0).unwrap();
        assert!(info.container_ip.starts_with(pool_prefix), "{} not in {}", info.container_ip, d.pool);
        let cip: Ipv4Addr = info.container_ip.parse().unwrap();
        assert_eq!(info.host_ip, Ipv4Addr::from(u32::from(cip) - 1).to_string());
        assert!(!info.external_ip.is_empty());
        assert_eq!(info.mapped_ports, vec![PortMapping { host_port: d.port_start as u32, container_port: 8080 }]);

        // From the host's own addresses, loopback included, and to the container directly.
        let hp = d.port_start;
        assert_eq!(http_get(&format!("127.0.0.1:{hp}")).unwrap(), "hello-8080");
        assert_eq!(http_get(&format!("{}:{hp}", info.external_ip)).unwrap(), "hello-8080");
        assert_eq!(http_get(&format!("{}:8080", info.container_ip)).unwrap(), "hello-8080");

        // The NetIn call: a pool port, then an explicit one.
        let m = d.client.net_in(&h, 0, 9090).await.unwrap();
        assert_eq!((m.host_port, m.container_port), (hp as u32 + 1, 9090));
        assert_eq!(http_get(&format!("127.0.0.1:{}", m.host_port)).unwrap(), "hello-9090");
        let explicit = d.port_start as u32 + 50;
        assert_eq!(d.client.net_in(&h, explicit, 8080).await.unwrap().host_port, explicit);
        assert_eq!(http_get(&format!("127.0.0.1:{explicit}")).unwrap(), "hello-8080");
        let info = d.client.info(&h).await.unwrap();
        assert_eq!(info.mapped_ports.len(), 3);

        // The host end has no IPv6 address a container could reach the host by.
        let v6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap();
        assert!(!v6.lines().any(|l| l.ends_with(&format!(" {}", hex_iface(&cip)))), "host veth has IPv6: {v6}");

        // The container's traffic shows in its metrics.
        let stat = d.client.metrics(&h).await.unwrap().network_stat.expect("NetworkStat");
        assert!(stat.rx_bytes > 0 && stat.tx_bytes > 0, "{stat:?}");

        d.client.destroy(&h).await.unwrap();
        assert!(http_get(&format!("127.0.0.1:{hp}")).is_err(), "mapping outlived its container");
    });
    d.assert_no_leaks();
}

#[test]
fn names_files_exist_and_only_root_may_change_them() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("names");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let ip = d.client.info(&h).await.unwrap().container_ip;
        let (code, hosts, _) = run(&d, &h, sh("cat /etc/hosts")).await;
        assert_eq!(code, 0);
        assert_eq!(hosts, format!("127.0.0.1 localhost\n{ip} {}\n", &h[h.len().saturating_sub(49)..]));
        let (_, resolv, _) = run(&d, &h, sh("cat /etc/resolv.conf")).await;
        assert!(resolv.contains("nameserver "), "{resolv}");
        assert!(!resolv.contains("nameserver 127."), "loopback nameserver leaked: {resolv}");
        let mut vcap = sh("echo x >> /etc/hosts");
        vcap.user = "vcap".into();
        assert_ne!(run(&d, &h, vcap).await.0, 0, "vcap could write /etc/hosts");
        assert_eq!(run(&d, &h, sh("echo '10.0.0.9 db' >> /etc/hosts && grep -c db /etc/hosts")).await.1, "1\n");
    });
    // A rootfs without /etc gets both files too.
    let bare = d.dir.join("bare");
    std::fs::create_dir_all(bare.join("bin")).unwrap();
    std::fs::copy(common::rootfs_dir().join("tiny/bin/busybox"), bare.join("bin/sh")).unwrap();
    let h2 = d.handle("bare");
    rt().block_on(async {
        let mut s = spec(&h2);
        s.image.uri = bare.display().to_string();
        d.client.create(&s).await.unwrap();
        // Only shell builtins: the rootfs has nothing but a shell.
        let mut p = sh("for f in /etc/hosts /etc/resolv.conf; do while read -r l; do echo \"$l\"; done < $f; done");
        p.path = "/bin/sh".into();
        let (code, out, err) = run(&d, &h2, p).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("127.0.0.1 localhost") && out.contains("nameserver"), "{out}");
        d.client.destroy(&h).await.unwrap();
        d.client.destroy(&h2).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn containers_reach_each_other_only_where_a_rule_allows() {
    require_host!();
    let d = Daemon::start();
    let (a, b) = (d.handle("a"), d.handle("b"));
    rt().block_on(async {
        d.client.create(&spec(&a)).await.unwrap();
        d.client.create(&spec(&b)).await.unwrap();
        serve(&d, &b, 8080, "b8080").await;
        serve(&d, &b, 9090, "b9090").await;
        serve(&d, &a, 8080, "a8080").await;
        let (ip_a, ip_b) =
            (d.client.info(&a).await.unwrap().container_ip, d.client.info(&b).await.unwrap().container_ip);

        assert!(!can_connect(&d, &a, &ip_b, 8080).await, "a reached b without a rule");
        d.client.net_out(&a, &rule(1, &ip_b, &[(8080, 8080)])).await.unwrap();
        assert!(can_connect(&d, &a, &ip_b, 8080).await, "the rule did not let a reach b:8080");
        assert!(!can_connect(&d, &a, &ip_b, 9090).await, "a reached a port the rule does not allow");
        // The rule is a's, not b's.
        assert!(!can_connect(&d, &b, &ip_a, 8080).await, "b reached a");

        d.client.destroy(&a).await.unwrap();
        d.client.destroy(&b).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn egress_is_denied_until_allowed_is_masqueraded_and_logged() {
    require_host!();
    let out = OutsideNet::new();
    let d = Daemon::start();
    let h = d.handle("egress");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        assert!(!can_connect(&d, &h, &out.peer_ip, out.port).await, "egress without a rule");
        let mut allow = rule(1, &out.peer_ip, &[(out.port, out.port)]);
        allow.log = true;
        d.client.bulk_net_out(&h, &[allow, rule(3, &out.peer_ip, &[])]).await.unwrap();
        let (code, reply, err) = run(&d, &h, sh(&format!("nc -w 2 {} {} </dev/null", out.peer_ip, out.port))).await;
        assert_eq!((code, reply.as_str()), (0, "pong\n"), "{err}");
        assert_eq!(run(&d, &h, sh(&format!("ping -c 1 -W 2 {}", out.peer_ip))).await.0, 0, "icmp rule");
        // The outside sees the host, not the container.
        assert_eq!(out.peers.lock().unwrap().clone(), vec![out.host_ip.clone()]);
        // log: true logs the connection's first packet with the handle as prefix.
        let dmesg = Command::new("dmesg").output().map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap();
        let prefix: String = h.chars().take(28).collect();
        assert!(dmesg.lines().any(|l| l.contains(&prefix) && l.contains(&out.peer_ip)), "no log line for {prefix}");
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();

    // --deny-network wins over a rule.
    let denied = Daemon::start_with(&["--deny-network", &format!("{}/30", out.host_ip)]);
    let h = denied.handle("denied");
    rt().block_on(async {
        let mut s = spec(&h);
        s.netout_rules = vec![NetOutRule::default()];
        denied.client.create(&s).await.unwrap();
        assert!(!can_connect(&denied, &h, &out.peer_ip, out.port).await, "deny-network did not win");
        denied.client.destroy(&h).await.unwrap();
    });
    denied.assert_no_leaks();
}

#[test]
fn host_services_are_unreachable_unless_allowed() {
    require_host!();
    for allow in [false, true] {
        // A fresh port each time: a freed one may meanwhile be some connection's source port.
        let port = TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
        let listen = format!("0.0.0.0:{port}");
        let mut args = vec!["--garden-tcp", listen.as_str()];
        if allow {
            args.push("--allow-host-access");
        }
        let d = Daemon::start_with(&args);
        let h = d.handle("hostile");
        rt().block_on(async {
            let mut s = spec(&h);
            s.netout_rules = vec![NetOutRule::default()]; // all egress allowed: the host is still off limits
            d.client.create(&s).await.unwrap();
            let info = d.client.info(&h).await.unwrap();
            for ip in [&info.host_ip, &info.external_ip] {
                assert_eq!(
                    can_connect(&d, &h, ip, port).await,
                    allow,
                    "garden port on {ip}, allow-host-access={allow}"
                );
            }
            d.client.destroy(&h).await.unwrap();
        });
        d.assert_no_leaks();
    }
}

#[test]
fn fifty_parallel_creates_share_nothing_and_leave_nothing() {
    require_host!();
    let d = Daemon::start();
    rt().block_on(async {
        let handles: Vec<String> = (0..50).map(|i| d.handle(&format!("p{i}"))).collect();
        let creates = handles.iter().map(|h| {
            let mut s = spec(h);
            s.netin = vec![NetIn { host_port: 0, container_port: 8080 }];
            s.netout_rules = vec![rule(1, "10.0.0.1", &[(443, 443)])];
            let c = d.client.clone();
            async move { c.create(&s).await }
        });
        for r in futures_util::future::join_all(creates).await {
            r.unwrap();
        }
        let infos = d.client.bulk_info(&handles.iter().map(String::as_str).collect::<Vec<_>>()).await.unwrap();
        let mut ips = HashSet::new();
        let mut ports = HashSet::new();
        for (h, e) in &infos {
            let info = e.info.as_ref().unwrap_or_else(|| panic!("{h}: {:?}", e.err));
            assert!(ips.insert(info.container_ip.clone()), "address {} handed out twice", info.container_ip);
            assert!(ports.insert(info.mapped_ports[0].host_port), "port handed out twice");
        }
        assert_eq!(ips.len(), 50);
        assert_eq!(d.interfaces().len(), 50, "a veth per container");
        let destroys = handles.iter().map(|h| {
            let c = d.client.clone();
            async move { c.destroy(h).await }
        });
        for r in futures_util::future::join_all(destroys).await {
            r.unwrap();
        }
        assert!(d.client.list(&BTreeMap::new()).await.unwrap().is_empty());
    });
    d.assert_no_leaks();
}

#[test]
fn restart_keeps_mappings_and_hands_out_nothing_twice() {
    require_host!();
    let mut d = Daemon::start();
    let (old, new) = (d.handle("old"), d.handle("new"));
    let before = rt().block_on(async {
        let mut s = spec(&old);
        s.netin = vec![NetIn { host_port: 0, container_port: 8080 }];
        s.netout_rules = vec![rule(1, "10.0.0.1", &[(443, 443)])];
        d.client.create(&s).await.unwrap();
        serve(&d, &old, 8080, "survivor").await;
        d.client.info(&old).await.unwrap()
    });
    let url = format!("127.0.0.1:{}", before.mapped_ports[0].host_port);
    assert_eq!(http_get(&url).unwrap(), "survivor");
    d.restart();
    assert_eq!(http_get(&url).unwrap(), "survivor", "mapping lost over a restart");
    let table = Command::new("nft").args(["list", "table", "ip", &d.table()]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert_eq!(table.matches("chain c-").count(), 1, "chains duplicated or lost over a restart: {table}");
    assert_eq!(table.matches("dport 443 accept").count(), 1, "rules duplicated or lost over a restart: {table}");
    rt().block_on(async {
        let mut s = spec(&new);
        s.netin = vec![NetIn { host_port: 0, container_port: 8080 }];
        d.client.create(&s).await.unwrap();
        let info = d.client.info(&new).await.unwrap();
        assert_ne!(info.container_ip, before.container_ip, "address handed out twice");
        assert_ne!(info.mapped_ports[0].host_port, before.mapped_ports[0].host_port, "port handed out twice");
        assert_eq!(d.client.info(&old).await.unwrap().mapped_ports, before.mapped_ports);
        d.client.destroy(&old).await.unwrap();
        d.client.destroy(&new).await.unwrap();
    });
    assert!(http_get(&url).is_err());
    // A daemon killed right after a destroy, before the veth was gone in the
    // background: the next one removes it.
    d.restart();
    d.assert_no_leaks();
}

#[test]
fn bad_network_input_gets_errors_and_leaves_nothing() {
    require_host!();
    let d = Daemon::start_with(&["--max-containers", "1000"]);
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let busy = taken.local_addr().unwrap().port() as u32;
    rt().block_on(async {
        assert_eq!(d.client.capacity().await.unwrap().max_containers, 256, "a /22 holds 256 containers");
        let base = d.pool.split('/').next().unwrap().to_string();
        let first = d.handle("first");
        let mut s = spec(&first);
        s.network = format!("{base}/30");
        d.client.create(&s).await.unwrap();
        assert_eq!(d.client.info(&first).await.unwrap().container_ip, {
            let ip: Ipv4Addr = base.parse().unwrap();
            Ipv4Addr::from(u32::from(ip) + 2).to_string()
        });

        let bad_rule = |r: NetOutRule| {
            let mut s = spec(&d.handle("bad"));
            s.netout_rules = vec![r];
            s
        };
        let bad_netin = |host_port, container_port| {
            let mut s = spec(&d.handle("bad"));
            s.netin = vec![NetIn { host_port, container_port }];
            s
        };
        let bad_network = |n: &str| {
            let mut s = spec(&d.handle("bad"));
            s.network = n.into();
            s
        };
        let cases = vec![
            ("overlapping network", bad_network(&format!("{base}/30")), "overlaps"),
            ("out-of-pool network", bad_network("192.168.77.0/30"), "outside"),
            ("not a network", bad_network("ten.0.0.0/30"), "IPv4"),
            ("container port out of range", bad_netin(0, 70000), "out of range"),
            ("host port in use", bad_netin(busy, 8080), "in use"),
            ("unknown protocol", bad_rule(NetOutRule { protocol: 9, ..Default::default() }), "protocol 9"),
            ("reversed range", bad_rule(rule(1, "10.0.0.1", &[(90, 80)])), "port range"),
            ("bad address", bad_rule(rule(0, "10.0.0.300", &[])), "not an IPv4 address"),
        ];
        for (what, s, needle) in cases {
            let e = d.client.create(&s).await.expect_err(what);
            assert!(e.to_string().contains(needle), "{what}: {e}");
        }
        // A host port already mapped, and bad calls on a live container.
        let e = d.client.net_in(&first, d.port_start as u32, 80).await;
        assert!(e.is_ok(), "{e:?}");
        let e = d.client.net_in(&first, d.port_start as u32, 80).await.unwrap_err();
        assert!(e.to_string().contains("already mapped"), "{e}");
        let e = d.client.net_in(&first, 0, 70000).await.unwrap_err();
        assert!(e.to_string().contains("container port"), "{e}");
        let e = d
            .client
            .net_out(
                &first,
                &NetOutRule { protocol: 3, ports: vec![PortRange { start: 1, end: 2 }], ..Default::default() },
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("ports"), "{e}");
        let e = d.client.net_in("no-such-container", 0, 80).await.unwrap_err();
        assert_eq!(garden_type(&e), "ContainerNotFoundError");
        assert_eq!(d.client.list(&BTreeMap::new()).await.unwrap(), vec![first.clone()]);
        assert_eq!(d.interfaces().len(), 1, "a failed create left interfaces: {:?}", d.interfaces());
        d.client.destroy(&first).await.unwrap();
    });
    drop(taken);
    d.assert_no_leaks();
}

#[test]
fn no_network_cells_give_loopback_only_and_refuse_net_calls() {
    require_host!();
    let d = Daemon::start_with(&["--no-network"]);
    let h = d.handle("plain");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let info = d.client.info(&h).await.unwrap();
        assert_eq!((info.container_ip.as_str(), info.host_ip.as_str()), ("", ""));
        assert_eq!(run(&d, &h, sh("ip -o link | grep -c ': '")).await.1, "1\n", "only lo");
        let e = d.client.net_in(&h, 0, 8080).await.unwrap_err();
        assert!(e.to_string().contains("--no-network"), "{e}");
        let mut s = spec(&d.handle("wants-net"));
        s.netin = vec![NetIn { host_port: 0, container_port: 8080 }];
        assert!(d.client.create(&s).await.unwrap_err().to_string().contains("--no-network"));
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn a_loopback_only_resolver_is_reached_through_the_gateway() {
    require_host!();
    // A host whose only nameserver is on loopback, as with systemd-resolved.
    let resolver = "127.0.0.153";
    let dns = TcpListener::bind((resolver, 53)).expect("bind a fake resolver on 127.0.0.153:53");
    std::thread::spawn(move || {
        for mut c in dns.incoming().flatten() {
            let _ = c.write_all(b"resolver-here\n");
        }
    });
    let conf = std::env::temp_dir().join(format!("celld-test-resolv-{}.conf", std::process::id()));
    std::fs::write(&conf, format!("nameserver {resolver}\nsearch example.internal\n")).unwrap();
    let d = Daemon::start_with(&["--resolv-conf", conf.to_str().unwrap()]);
    let _ = std::fs::remove_file(&conf); // read once, at start
    let h = d.handle("dns");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let gateway = d.client.info(&h).await.unwrap().host_ip;
        let (_, resolv, _) = run(&d, &h, sh("cat /etc/resolv.conf")).await;
        assert_eq!(resolv, format!("nameserver {gateway}\nsearch example.internal\n"));
        // DNS to the gateway is forwarded to the loopback resolver (here over TCP).
        let (code, reply, err) = run(&d, &h, sh(&format!("nc -w 2 {gateway} 53 </dev/null"))).await;
        assert_eq!((code, reply.as_str()), (0, "resolver-here\n"), "{err}");
        // Nothing else on the host is reachable through the gateway.
        assert!(!can_connect(&d, &h, &gateway, 54).await);
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}
