//! What Garden clients see on the wire and in reports, against a real celld:
//! disk metrics and limits, Garden's network properties, process-route error
//! replies, stream-in errors and stream-out names, the debug listener, and the
//! tiny rootfs's userland. Run as root with `make test`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::time::Duration;

use celld::garden::types::*;
use common::{Daemon, garden_type, rt, run, sh, spec, start_until};

/// One HTTP/1.1 exchange on an open connection: the status, the header lines
/// (lowercased names) and the body (Content-Length framed).
fn exchange(conn: &mut (impl Read + Write), request: &str) -> (u16, Vec<(String, String)>, String) {
    conn.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            conn.read(&mut byte).unwrap(),
            1,
            "connection closed inside a head: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    (status, headers, String::from_utf8(body).unwrap())
}

fn has_connection_close(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"))
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: garden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: garden\r\n\r\n")
}

#[test]
fn process_route_errors_keep_the_connection_open() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("wire-errors");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let (p, _) = start_until(&d, &h, "echo up; exec sleep 1000", "up").await;
        let busy_id = p.id().to_string();

        let mut conn = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // Each error reply is a whole HTTP response without `Connection:
        // close`, and the same connection serves the next request (the
        // process routes first: once hyper serves a connection it keeps it).
        let cases = [
            (get(&format!("/containers/{h}/processes/nope")), 404, "ProcessNotFoundError", "nope"),
            (get(&format!("/containers/{h}/processes/nope/attaches/1/stdout")), 404, "ProcessNotFoundError", "nope"),
            (
                post(&format!("/containers/{h}/processes"), r#"{"path":"no-such-binary"}"#),
                500,
                "ExecutableNotFoundError",
                "",
            ),
            (
                post(&format!("/containers/{h}/processes"), &format!(r#"{{"id":"{busy_id}","path":"true"}}"#)),
                500,
                "",
                "already in use",
            ),
            (post("/containers/no-such-container/processes", r#"{"path":"true"}"#), 404, "ContainerNotFoundError", ""),
            (post(&format!("/containers/{h}/processes"), "{not json}\n"), 500, "", "invalid process spec"),
        ];
        for (request, want_status, want_type, want_text) in cases {
            let (status, headers, body) = exchange(&mut conn, &request);
            let line = request.lines().next().unwrap_or_default().to_string();
            assert_eq!(status, want_status, "{line}: {body}");
            assert!(!has_connection_close(&headers), "{line}: {headers:?}");
            let e: ErrorBody = serde_json::from_str(&body).unwrap();
            assert_eq!(e.kind, want_type, "{line}: {body}");
            assert!(e.message.contains(want_text), "{line}: {body}");
        }
        // The other routes' errors (hyper's) never close either.
        for (path, want_status) in [
            ("/containers/no-such-container/info".to_string(), 404),
            (format!("/containers/{h}/properties/absent"), 500),
        ] {
            let (status, headers, body) = exchange(&mut conn, &get(&path));
            assert_eq!(status, want_status, "{path}: {body}");
            assert!(!has_connection_close(&headers), "{path}: {headers:?}");
        }
        let (status, _, _) = exchange(&mut conn, &get("/ping"));
        assert_eq!(status, 200, "the connection still serves");
        // Through the client: typed errors, not a broken connection.
        let e = d.client.attach(&h, "nope", Default::default()).await.err().unwrap();
        assert_eq!(garden_type(&e), "ProcessNotFoundError", "{e}");
        let mut missing = sh("true");
        missing.path = "no-such-binary".into();
        let e = d.client.run(&h, &missing, Default::default()).await.err().unwrap();
        assert_eq!(garden_type(&e), "ExecutableNotFoundError", "{e}");
        p.signal(celld::garden::client::Signal::Kill).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), 137);
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn gardens_own_properties_limits_signals_and_net_in_to_port_zero() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("wire-garden");
    rt().block_on(async {
        let c = &d.client;
        let mut s = spec(&h);
        s.limits.cpu_limits.weight = 512;
        s.limits.bandwidth_limits = BandwidthLimits { rate: 1000, burst: 2000 };
        c.create(&s).await.unwrap();
        // garden.state, and List's view of it: `all` is no filter.
        let props = c.properties(&h).await.unwrap();
        assert_eq!(props.get("garden.state").map(String::as_str), Some("created"), "{props:?}");
        let filter = |v: &str| BTreeMap::from([("garden.state".to_string(), v.to_string())]);
        assert!(c.list(&filter("created")).await.unwrap().contains(&h));
        assert!(c.list(&filter("all")).await.unwrap().contains(&h));
        assert!(!c.list(&filter("destroying")).await.unwrap().contains(&h));
        c.set_grace_time(&h, Duration::from_secs(300)).await.unwrap();
        let props = c.properties(&h).await.unwrap();
        assert_eq!(props.get("garden.grace-time").map(String::as_str), Some("300000000000"), "{props:?}");
        // Removing what is not there is no error.
        c.remove_property(&h, "never-set").await.unwrap();
        // Limits read back as Garden reads them: shares, and no bandwidth.
        assert_eq!(c.current_cpu_limits(&h).await.unwrap(), CpuLimits { weight: 0, limit_in_shares: 512 });
        assert_eq!(c.current_bandwidth_limits(&h).await.unwrap(), BandwidthLimits::default());
        // Net-in to container port 0: the container port is the host port.
        let m = c.net_in(&h, 0, 0).await.unwrap();
        assert!(m.host_port > 0 && m.container_port == m.host_port, "{m:?}");

        // A signal other than TERM (0) is a KILL: a TERM would end the shell
        // with 143 (or not at all, once its trap is set).
        let mut conn = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let body = r#"{"id":"sig5","path":"sh","args":["-c","trap '' TERM; sleep 1000"]}"#;
        conn.write_all(post(&format!("/containers/{h}/processes"), body).as_bytes()).unwrap();
        let mut lines = std::io::BufReader::new(conn.try_clone().unwrap()).lines();
        let started = lines.by_ref().map(|l| l.unwrap()).find(|l| l.contains("stream_id")).unwrap();
        assert!(started.contains("sig5"), "{started}");
        conn.write_all(b"{\"process_id\":\"sig5\",\"signal\":5}\n").unwrap();
        let exit = lines.map(|l| l.unwrap()).find(|l| l.contains("exit_status")).unwrap();
        assert!(exit.contains(r#""exit_status":137"#), "{exit}");
        c.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn a_process_with_bind_mounts_and_no_image_is_refused() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("wire-bind");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let mut p = sh("echo should-not-run > /tmp/ran");
        p.bind_mounts.push(BindMount { src_path: "/etc".into(), dst_path: "/mnt/etc".into(), ..Default::default() });
        let e = d.client.run(&h, &p, Default::default()).await.err().unwrap();
        assert!(e.to_string().contains("bind mounts are only for peas"), "{e}");
        let (code, out, _) = run(&d, &h, sh("cat /tmp/ran 2>&1; ls /mnt/etc 2>&1 | head -1")).await;
        assert_eq!(code, 0);
        assert!(out.contains("/tmp/ran': No such file") && out.contains("/mnt/etc: No such file"), "{out}");
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn disk_metrics_count_the_rootfs_and_disk_limits_survive_a_restart() {
    require_host!();
    let mut d = Daemon::start();
    let h = d.handle("wire-disk");
    let plain = d.handle("wire-disk-plain");
    let limits = DiskLimits { inode_soft: 1000, inode_hard: 2000, byte_soft: 10 << 20, byte_hard: 20 << 20, scope: 1 };
    rt().block_on(async {
        let mut s = spec(&h);
        s.limits.disk_limits = limits.clone();
        d.client.create(&s).await.unwrap();
        d.client.create(&spec(&plain)).await.unwrap();
        assert_eq!(d.client.current_disk_limits(&h).await.unwrap(), limits);
        assert_eq!(d.client.current_disk_limits(&plain).await.unwrap(), DiskLimits::default());

        let before = d.client.metrics(&h).await.unwrap().disk_stat;
        // The tiny rootfs holds a static busybox and bash: megabytes.
        let rootfs = before.total_bytes_used - before.exclusive_bytes_used;
        assert!(rootfs > 1 << 20, "the rootfs counts in the total: {before:?}");
        assert!(before.total_inodes_used > before.exclusive_inodes_used + 100, "{before:?}");
        assert!(before.exclusive_bytes_used < 1 << 20, "nothing written yet: {before:?}");

        let (code, _, err) = run(&d, &h, sh("dd if=/dev/zero of=/tmp/blob bs=4096 count=512 2>&1 && sync")).await;
        assert_eq!(code, 0, "{err}");
        let after = d.client.metrics(&h).await.unwrap().disk_stat;
        assert!(after.exclusive_bytes_used >= before.exclusive_bytes_used + (2 << 20), "{before:?} → {after:?}");
        assert_eq!(after.total_bytes_used - after.exclusive_bytes_used, rootfs, "the rootfs part stays: {after:?}");
        assert!(after.exclusive_inodes_used > before.exclusive_inodes_used, "{after:?}");
        // Bulk metrics say the same.
        let bulk = d.client.bulk_metrics(&[h.as_str()]).await.unwrap();
        assert_eq!(bulk[&h].metrics.as_ref().unwrap().disk_stat.total_bytes_used, after.total_bytes_used);

        d.restart();
        assert_eq!(d.client.current_disk_limits(&h).await.unwrap(), limits, "the limits are kept across a restart");
        let again = d.client.metrics(&h).await.unwrap().disk_stat;
        assert_eq!(again.total_bytes_used - again.exclusive_bytes_used, rootfs);
        for c in [&h, &plain] {
            d.client.destroy(c).await.unwrap();
        }
    });
    d.assert_no_leaks();
}

#[test]
fn network_properties_are_gardens_everywhere() {
    require_host!();
    let mut d = Daemon::start();
    let h = d.handle("wire-net");
    let other = d.handle("wire-net-other");
    rt().block_on(async {
        let mut s = spec(&h);
        s.properties.insert("app".into(), "web".into());
        s.netin = vec![NetIn { host_port: 0, container_port: 8080 }];
        d.client.create(&s).await.unwrap();
        d.client.create(&spec(&other)).await.unwrap();

        let info = d.client.info(&h).await.unwrap();
        let p = &info.properties;
        assert_eq!(p["app"], "web");
        assert_eq!(p["garden.network.container-ip"], info.container_ip);
        assert_eq!(p["garden.network.host-ip"], info.host_ip);
        assert_eq!(p["garden.network.external-ip"], info.external_ip);
        assert!(!info.container_ip.is_empty() && !info.host_ip.is_empty() && !info.external_ip.is_empty());
        let first = info.mapped_ports[0];
        assert_eq!(
            p["garden.network.mapped-ports"],
            format!(r#"[{{"HostPort":{},"ContainerPort":8080}}]"#, first.host_port)
        );
        // No net-in, no mapped-ports property (as Garden's networker).
        let other_props = d.client.properties(&other).await.unwrap();
        assert!(other_props.contains_key("garden.network.container-ip"), "{other_props:?}");
        assert!(!other_props.contains_key("garden.network.mapped-ports"), "{other_props:?}");

        // Net-in extends the list.
        let second = d.client.net_in(&h, 0, 9090).await.unwrap();
        let want = format!(
            r#"[{{"HostPort":{},"ContainerPort":8080}},{{"HostPort":{},"ContainerPort":9090}}]"#,
            first.host_port, second.host_port
        );
        assert_eq!(d.client.property(&h, "garden.network.mapped-ports").await.unwrap(), want);

        // List's property filter sees them, as Garden's does.
        let by_ip: BTreeMap<String, String> =
            [("garden.network.container-ip".to_string(), info.container_ip.clone())].into_iter().collect();
        assert_eq!(d.client.list(&by_ip).await.unwrap(), vec![h.clone()]);

        let bulk = d.client.bulk_info(&[h.as_str()]).await.unwrap();
        assert_eq!(bulk[&h].info.as_ref().unwrap().properties["garden.network.mapped-ports"], want);

        d.restart();
        let props = d.client.properties(&h).await.unwrap();
        assert_eq!(props["garden.network.mapped-ports"], want, "after a restart");
        assert_eq!(props["garden.network.container-ip"], info.container_ip);
        assert_eq!(d.client.list(&by_ip).await.unwrap(), vec![h.clone()]);
        for c in [&h, &other] {
            d.client.destroy(c).await.unwrap();
        }
    });
    d.assert_no_leaks();
}

fn tar_names(bytes: Vec<u8>) -> Vec<String> {
    tar::Archive::new(std::io::Cursor::new(bytes))
        .entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}

#[test]
fn stream_in_errors_and_stream_out_names_are_gardens() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("wire-files");
    rt().block_on(async {
        let c = &d.client;
        c.create(&spec(&h)).await.unwrap();
        let (code, _, err) = run(&d, &h, sh("mkdir -p /tmp/d/sub && echo a > /tmp/d/f && echo b > /tmp/d/sub/g")).await;
        assert_eq!(code, 0, "{err}");

        let mut names = tar_names(c.stream_out(&h, "", "/tmp/d/").await.unwrap());
        names.sort();
        assert_eq!(names, ["./", "./f", "./sub/", "./sub/g"]);
        let mut names = tar_names(c.stream_out(&h, "", "/tmp/d").await.unwrap());
        names.sort();
        assert_eq!(names, ["d/", "d/f", "d/sub/", "d/sub/g"]);
        assert_eq!(tar_names(c.stream_out(&h, "", "/tmp/d/f").await.unwrap()), ["f"]);
        // What the user may not read is left out, the rest still comes (as tar does).
        let (code, _, err) = run(
            &d,
            &h,
            sh("mkdir -p /tmp/p/closed && echo s > /tmp/p/secret && echo o > /tmp/p/open && \
                chmod 600 /tmp/p/secret && chmod 700 /tmp/p/closed && chmod 755 /tmp/p"),
        )
        .await;
        assert_eq!(code, 0, "{err}");
        let mut names = tar_names(c.stream_out(&h, "vcap", "/tmp/p/").await.unwrap());
        names.sort();
        assert_eq!(names, ["./", "./closed/", "./open"]);

        // What streams out streams back in.
        let back = c.stream_out(&h, "", "/tmp/d/").await.unwrap();
        c.stream_in(&h, "", "/tmp/copy", std::io::Cursor::new(back)).await.unwrap();
        let (_, out, _) = run(&d, &h, sh("cat /tmp/copy/f /tmp/copy/sub/g")).await;
        assert_eq!(out, "a\nb\n");

        let mut b = tar::Builder::new(Vec::new());
        let mut hd = tar::Header::new_gnu();
        hd.set_size(10_000);
        hd.set_mode(0o644);
        b.append_data(&mut hd, "big", &[7u8; 10_000][..]).unwrap();
        let mut cut = b.into_inner().unwrap();
        cut.truncate(3000);
        let e = c.stream_in(&h, "", "/tmp/cut", std::io::Cursor::new(cut)).await.unwrap_err();
        assert!(e.to_string().starts_with("error streaming in: "), "{e}");
        let e = c.stream_in(&h, "no-such-user", "/tmp/x", std::io::Cursor::new(Vec::new())).await.unwrap_err();
        assert!(e.to_string().starts_with("error streaming in: ") && e.to_string().contains("no-such-user"), "{e}");
        c.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_debug_listener_serves_expvars() {
    require_host!();
    let off = Daemon::start();
    assert!(!off.log().contains("serving /debug/vars"), "off by default");
    drop(off);
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with(&["--debug-listen", &addr]);
    let h = d.handle("wire-debug");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
    });
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (status, headers, body) = exchange(&mut conn, &get("/debug/vars"));
    assert_eq!(status, 200, "{body}");
    assert!(headers.iter().any(|(k, v)| k == "content-type" && v.starts_with("application/json")), "{headers:?}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cmdline: Vec<&str> = v["cmdline"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
    assert!(cmdline.contains(&"--debug-listen"), "{cmdline:?}");
    for k in ["Alloc", "TotalAlloc", "Sys", "HeapAlloc"] {
        assert!(v["memstats"][k].as_u64().unwrap_or(0) > 0, "memstats.{k}: {body}");
    }
    assert!(v["numCPUS"].as_u64().unwrap_or(0) > 0, "{body}");
    assert!(v["numGoRoutines"].as_u64().unwrap_or(0) > 0, "{body}");
    assert_eq!(v["depotDirs"].as_u64(), Some(1), "one container: {body}");
    let (status, _, _) = exchange(&mut conn, &get("/debug/other"));
    assert_eq!(status, 404);
    rt().block_on(async {
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn the_tiny_rootfs_has_adduser_and_a_working_wget() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("wire-userland");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let (code, out, err) =
            run(&d, &h, sh("addgroup -g 3000 crew && adduser -D -u 3001 -G crew bob && id bob")).await;
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(out.trim(), "uid=3001(bob) gid=3000(crew) groups=3000(crew)");
        // An unprivileged container is a user namespace: wget must work there.
        let script = "mkdir -p /tmp/www && echo served > /tmp/www/index.html && \
                      httpd -p 127.0.0.1:8080 -h /tmp/www && wget -q -O- http://127.0.0.1:8080/index.html";
        let (code, out, err) = run(&d, &h, sh(script)).await;
        assert_eq!((code, out.as_str()), (0, "served\n"), "{err}");
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}
