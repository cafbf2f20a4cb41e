//! The Garden API against a real celld on real namespaces, cgroups and mounts.
//! Run as root with `make test` (serially: these tests share the host).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use celld::garden::client::{Address, Client, ClientError, ProcessIo, Signal};
use celld::garden::types::*;
use common::{Daemon, Sink, garden_type, rt, run, sh, spec, start_until};
use tokio::io::AsyncWriteExt;

#[test]
fn lifecycle_list_filters_and_errors() {
    require_host!();
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        c.ping().await.unwrap();
        assert_eq!(c.capacity().await.unwrap().max_containers, 250);
        let (a, b) = (d.handle("a"), d.handle("b"));
        let mut sa = spec(&a);
        sa.properties.insert("app".into(), "web".into());
        sa.properties.insert("space".into(), "dev".into());
        let mut sb = spec(&b);
        sb.properties.insert("app".into(), "worker".into());
        sb.properties.insert("space".into(), "dev".into());
        assert_eq!(c.create(&sa).await.unwrap(), a);
        assert_eq!(c.create(&sb).await.unwrap(), b);

        let filter = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
        };
        assert_eq!(c.list(&filter(&[("space", "dev")])).await.unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(c.list(&filter(&[("space", "dev"), ("app", "web")])).await.unwrap(), vec![a.clone()]);
        assert!(c.list(&filter(&[("app", "nope")])).await.unwrap().is_empty());

        let dup = c.create(&sa).await.unwrap_err();
        assert_eq!(dup.to_string(), format!("Handle '{a}' already in use"));

        let info = c.info(&a).await.unwrap();
        assert_eq!(info.state, "active");
        assert_eq!(info.properties.get("app").map(String::as_str), Some("web"));

        c.set_property(&a, "color", "blue").await.unwrap();
        assert_eq!(c.property(&a, "color").await.unwrap(), "blue");
        c.remove_property(&a, "color").await.unwrap();
        assert!(c.property(&a, "color").await.is_err());

        let mut limited = spec(&d.handle("limits"));
        limited.limits.memory_limits.limit_in_bytes = 128 << 20;
        limited.limits.cpu_limits.weight = 512;
        let l = c.create(&limited).await.unwrap();
        assert_eq!(c.current_memory_limits(&l).await.unwrap().limit_in_bytes, 128 << 20);
        assert_eq!(c.current_cpu_limits(&l).await.unwrap().limit_in_shares, 512);
        let m = c.metrics(&l).await.unwrap();
        assert!(m.pid_stat.current >= 1, "init counts as a pid: {m:?}");
        assert!(m.age > 0);

        let bulk = c.bulk_info(&[a.as_str(), "nope"]).await.unwrap();
        assert!(bulk[&a].info.is_some());
        assert_eq!(bulk["nope"].err.as_ref().unwrap().kind, "ContainerNotFoundError");

        for h in [&a, &b, &l] {
            c.destroy(h).await.unwrap();
        }
        assert!(c.list(&BTreeMap::new()).await.unwrap().is_empty());

        let e = c.info("nope").await.unwrap_err();
        assert!(matches!(e, ClientError::Garden { status: 404, .. }), "{e:?}");
        assert_eq!(garden_type(&e), "ContainerNotFoundError");
        assert_eq!(e.to_string(), "unknown handle: nope");
        assert_eq!(garden_type(&c.destroy("nope").await.unwrap_err()), "ContainerNotFoundError");
    });
    d.assert_no_leaks();
}

#[test]
fn process_streams_exit_codes_and_stdin() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("proc");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let (code, out, err) = run(&d, &h, sh("echo to-out; echo to-err >&2; exit 42")).await;
        assert_eq!((code, out.as_str(), err.as_str()), (42, "to-out\n", "to-err\n"));

        let out = Sink::default();
        let io = ProcessIo {
            stdin: Some(Box::new(std::io::Cursor::new(b"line one\nline two\n".to_vec()))),
            stdout: Some(Box::new(out.clone())),
            stderr: None,
        };
        let p = d.client.run(&h, &sh("cat; echo done"), io).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), 0);
        assert_eq!(out.text(), "line one\nline two\ndone\n");

        // Users, environment and working directory, as Garden sets them.
        let mut p = sh("id -u; id -g; pwd; echo $USER $HOME $PATH $FOO");
        p.user = "vcap".into();
        p.env = vec!["FOO=bar".into()];
        let (code, out, _) = run(&d, &h, p).await;
        assert_eq!(code, 0);
        assert_eq!(out, "2000\n2000\n/home/vcap\nvcap /home/vcap /usr/local/bin:/usr/bin:/bin bar\n");
        let mut p = sh("id -u; pwd");
        p.user = "1000:1000".into();
        p.dir = "/tmp/work/dir".into();
        let (_, out, _) = run(&d, &h, p).await;
        assert_eq!(out, "1000\n/tmp/work/dir\n");
    });
}

#[test]
fn signals_terminate_and_kill() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("sig");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let (p, out) = start_until(
            &d,
            &h,
            "trap 'echo got-term; exit 12' TERM; echo ready; while true; do sleep 0.1; done",
            "ready",
        )
        .await;
        p.signal(Signal::Terminate).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), 12);
        assert!(out.text().contains("got-term"));

        let (p, _) = start_until(&d, &h, "trap '' TERM; echo ready; sleep 1000", "ready").await;
        p.signal(Signal::Kill).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), 137);
    });
}

#[test]
fn tty_reports_window_size_and_resize() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("tty");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let out = Sink::default();
        let (mut typer, stdin) = tokio::io::duplex(1024);
        let mut p = sh("stty size; read x; stty size; tty");
        p.tty = Some(TtySpec { window_size: Some(WindowSize { columns: 80, rows: 24 }) });
        let io = ProcessIo { stdin: Some(Box::new(stdin)), stdout: Some(Box::new(out.clone())), stderr: None };
        let proc = d.client.run(&h, &p, io).await.unwrap();
        out.wait_for("24 80").await;
        proc.resize(123, 45).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        typer.write_all(b"go\n").await.unwrap();
        assert_eq!(proc.wait().await.unwrap(), 0);
        let text = out.text();
        assert!(text.contains("45 123"), "{text:?}");
        assert!(text.contains("/dev/pts/"), "{text:?}");
    });
}

#[test]
fn memory_limit_kills_with_137_and_reports_oom() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("oom");
    rt().block_on(async {
        let mut s = spec(&h);
        s.limits.memory_limits.limit_in_bytes = 64 << 20;
        d.client.create(&s).await.unwrap();
        assert!(d.client.info(&h).await.unwrap().events.is_empty());
        // dd allocates its 128 MiB block and fills it from /dev/zero.
        let (code, _, _) = run(&d, &h, sh("dd if=/dev/zero of=/dev/null bs=128M count=1")).await;
        assert_eq!(code, 137);
        let info = d.client.info(&h).await.unwrap();
        assert_eq!(info.events, vec!["Out of memory".to_string()]);
        // The container itself survives the OOM kill.
        assert_eq!(run(&d, &h, sh("exit 3")).await.0, 3);
    });
}

#[test]
fn pids_limit_makes_fork_fail() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("pids");
    rt().block_on(async {
        let mut s = spec(&h);
        s.limits.pid_limits.max = 8;
        d.client.create(&s).await.unwrap();
        let (code, out, err) =
            run(&d, &h, sh("for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 5 & done; echo spawned; kill $(jobs -p) 2>/dev/null; exit 0")).await;
        assert!(err.contains("fork") || err.contains("Resource temporarily unavailable"), "code {code} out {out:?} err {err:?}");
        assert_eq!(d.client.metrics(&h).await.unwrap().pid_stat.max, 8);
    });
}

#[test]
fn unprivileged_by_default() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("unpriv");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let (_, out, _) =
            run(&d, &h, sh("id -u; grep Seccomp: /proc/self/status; grep NoNewPrivs /proc/self/status")).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "0");
        assert!(lines[1].ends_with("2"), "{out}");
        assert!(lines[2].ends_with("1"), "{out}");

        // The host sees an unprivileged uid for the container's root.
        let (p, _) = start_until(&d, &h, "echo $$ > /tmp/pid; echo ok; exec sleep 1000", "ok").await;
        let host_uids: Vec<u32> = cgroup_pids(&d, &h)
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| s.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(1)?.parse().ok())
            .collect();
        assert!(!host_uids.is_empty());
        assert!(host_uids.iter().all(|&u| u == 4_294_967_294), "{host_uids:?}");
        p.signal(Signal::Kill).await.unwrap();
        p.wait().await.unwrap();

        let (code, _, err) = run(&d, &h, sh("unshare --user true")).await;
        assert_ne!(code, 0, "unshare --user must fail: {err}");
        // Masked files read empty (those this kernel has at all; timer_list it has).
        let script = "for f in timer_list sched_debug keys; do [ -e /proc/$f ] && wc -c < /proc/$f; done; \
                      touch /sys/x 2>&1 || echo sys-ro";
        let (_, out, _) = run(&d, &h, sh(script)).await;
        let sizes: Vec<&str> = out.lines().filter(|l| l.chars().all(|c| c.is_ascii_digit())).collect();
        assert!(!sizes.is_empty() && sizes.iter().all(|l| *l == "0"), "masked /proc files must read empty: {out:?}");
        assert!(out.contains("sys-ro"), "{out}");
        let (_, out, _) = run(&d, &h, sh("ls /dev")).await;
        for dev in ["null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm"] {
            assert!(out.lines().any(|l| l == dev), "/dev/{dev} missing: {out}");
        }
        assert!(!out.lines().any(|l| l == "kmsg" || l == "mem" || l.starts_with("sd")), "{out}");
        // Files of the rootfs owned by root still look like root's.
        let (_, out, _) = run(&d, &h, sh("stat -c %u /etc/passwd; echo hi > /etc/motd && cat /etc/motd")).await;
        assert_eq!(out, "0\nhi\n");
    });
    // The rootfs itself was never written.
    assert!(!common::rootfs_dir().join("tiny/etc/motd").exists());
}

fn cgroup_pids(d: &Daemon, handle: &str) -> Vec<String> {
    for root in common::cgroup_roots() {
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                let p = e.path().join(handle).join("cgroup.procs");
                if e.file_name().to_string_lossy().starts_with("celld-") {
                    if let Ok(s) = std::fs::read_to_string(&p) {
                        return s.lines().map(String::from).collect();
                    }
                }
            }
        }
    }
    let _ = d;
    Vec::new()
}

#[test]
fn privileged_container_runs_as_host_root() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("priv");
    rt().block_on(async {
        let mut s = spec(&h);
        s.privileged = true;
        d.client.create(&s).await.unwrap();
        let (_, out, _) = run(&d, &h, sh("id -u; cat /proc/self/uid_map")).await;
        assert!(out.starts_with("0\n"), "{out}");
        assert!(out.contains("4294967295"), "no user namespace: {out}");
    });
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name as an attacker would.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn stream_in_and_out_round_trip_and_refuse_escapes() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("files");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let tar = tar_of(&[("hello.txt", b"hello world\n"), ("sub/nested.txt", b"nested\n")]);
        d.client.stream_in(&h, "vcap", "/home/vcap/in", std::io::Cursor::new(tar)).await.unwrap();
        let (_, out, _) = run(
            &d,
            &h,
            sh("cat /home/vcap/in/hello.txt /home/vcap/in/sub/nested.txt; stat -c %U /home/vcap/in/hello.txt"),
        )
        .await;
        assert_eq!(out, "hello world\nnested\nvcap\n");

        let bytes = d.client.stream_out(&h, "", "/home/vcap/in").await.unwrap();
        let mut names: Vec<String> = tar::Archive::new(std::io::Cursor::new(bytes))
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert!(names.contains(&"in/hello.txt".to_string()), "{names:?}");
        assert!(names.contains(&"in/sub/nested.txt".to_string()), "{names:?}");

        // Escapes: a parent reference, an absolute path, and a symlink out.
        let evil = tar_of(&[("../escaped", b"x"), ("/abs-escaped", b"x")]);
        let _ = d.client.stream_in(&h, "", "/tmp/dest", std::io::Cursor::new(evil)).await;
        let mut b = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        b.append_link(&mut link, "lnk", "/etc").unwrap();
        let mut f = tar::Header::new_gnu();
        f.set_size(1);
        f.set_mode(0o644);
        b.append_data(&mut f, "lnk/pwned", &b"x"[..]).unwrap();
        let via_link = b.into_inner().unwrap();
        let r = d.client.stream_in(&h, "", "/tmp/dest2", std::io::Cursor::new(via_link)).await;
        assert!(r.is_err(), "writing through a symlink out of the destination must fail");
        let (_, out, _) = run(&d, &h, sh("ls /tmp/escaped /abs-escaped /etc/pwned 2>&1; ls /tmp/dest")).await;
        assert!(out.contains("/tmp/escaped: No such file"), "{out}");
        assert!(out.contains("/abs-escaped: No such file"), "{out}");
        assert!(out.contains("/etc/pwned: No such file"), "{out}");

        // A truncated tar is an error, and the daemon keeps serving.
        let mut cut = tar_of(&[("big.bin", &[7u8; 10_000])]);
        cut.truncate(3000);
        let e = d.client.stream_in(&h, "", "/tmp/cut", std::io::Cursor::new(cut)).await.unwrap_err();
        assert!(!e.to_string().is_empty());
        let e = d.client.stream_out(&h, "", "/does/not/exist").await;
        assert!(e.is_err() || e.as_ref().is_ok_and(|b| b.is_empty()));
        d.client.ping().await.unwrap();
    });
}

#[test]
fn grace_time_reaps_idle_containers() {
    require_host!();
    let d = Daemon::start();
    let (idle, busy) = (d.handle("idle"), d.handle("busy"));
    rt().block_on(async {
        let mut s = spec(&idle);
        s.grace_time = 1_000_000_000;
        d.client.create(&s).await.unwrap();
        let mut s = spec(&busy);
        s.grace_time = 1_000_000_000;
        d.client.create(&s).await.unwrap();
        // An attached process counts as activity.
        let p = d.client.run(&busy, &sh("sleep 2.5"), ProcessIo::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let left = d.client.list(&BTreeMap::new()).await.unwrap();
        assert_eq!(left, vec![busy.clone()]);
        p.wait().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert!(d.client.list(&BTreeMap::new()).await.unwrap().is_empty());
    });
    d.assert_no_leaks();
}

#[test]
fn containers_survive_a_daemon_crash() {
    require_host!();
    let mut d = Daemon::start();
    let h = d.handle("survivor");
    rt().block_on(async {
        let mut s = spec(&h);
        s.properties.insert("k".into(), "v".into());
        d.client.create(&s).await.unwrap();
        let (p, _) = start_until(&d, &h, "echo up; exec sleep 1000", "up").await;
        let pid = p.id().to_string();
        drop(p);
        let before = cgroup_pids(&d, &h);
        assert_eq!(before.len(), 2, "init and sleep: {before:?}");
        d.restart();
        assert_eq!(d.client.list(&BTreeMap::new()).await.unwrap(), vec![h.clone()]);
        assert_eq!(cgroup_pids(&d, &h), before, "processes must outlive the daemon");
        let info = d.client.info(&h).await.unwrap();
        assert_eq!(info.properties.get("k").map(String::as_str), Some("v"));
        assert!(info.process_ids.unwrap_or_default().contains(&pid));
        d.client.metrics(&h).await.unwrap();
        // Re-attach to the process started before the crash, then kill it.
        let p = d.client.attach(&h, &pid, ProcessIo::default()).await.unwrap();
        p.signal(Signal::Kill).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), 137);
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn bad_input_gets_garden_errors() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("bad");
    rt().block_on(async {
        let c = &d.client;
        // A bad rootfs fails the create and leaves nothing.
        let mut s = spec(&d.handle("norootfs"));
        s.image.uri = "/does/not/exist".into();
        let e = c.create(&s).await.unwrap_err();
        assert!(e.to_string().contains("/does/not/exist"), "{e}");
        // (A malformed image: nothing may leave this machine for a registry.)
        s.image.uri = "docker:///Busy Box".into();
        assert!(c.create(&s).await.unwrap_err().to_string().contains("Busy Box"));
        let mut s = spec("../escape");
        s.image.uri = String::new();
        assert!(c.create(&s).await.unwrap_err().to_string().contains("invalid handle"));
        d.assert_no_leaks();

        c.create(&spec(&h)).await.unwrap();
        let missing = ProcessSpec { path: "no-such-binary".into(), ..Default::default() };
        let e = c.run(&h, &missing, ProcessIo::default()).await.err().expect("must fail");
        assert_eq!(garden_type(&e), "ExecutableNotFoundError");
        let mut nouser = sh("true");
        nouser.user = "nobody-here".into();
        let e = c.run(&h, &nouser, ProcessIo::default()).await.err().expect("must fail");
        assert!(e.to_string().contains("unable to find user nobody-here"), "{e}");
        let e = c.attach(&h, "no-such-process", ProcessIo::default()).await.err().expect("must fail");
        assert_eq!(garden_type(&e), "ProcessNotFoundError");
    });
    // Malformed, mistyped and oversized JSON over a raw socket.
    // `eof`: the client says it is done sending (the process routes keep a
    // connection after an error: it then ends at once, not at the idle timeout).
    let raw_eof = |req: &str, eof: bool| -> String {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        // The server may answer and close before an oversized body is sent.
        let _ = s.write_all(req.as_bytes());
        if eof {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let raw = |req: &str| raw_eof(req, false);
    let post = |body: &str| {
        raw(&format!(
            "POST /containers HTTP/1.1\r\nHost: api\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    };
    let r = post("{not json");
    assert!(r.starts_with("HTTP/1.1 500") && r.contains("invalid request body"), "{r}");
    let r = post(r#"{"handle": 42}"#);
    assert!(r.starts_with("HTTP/1.1 500") && r.contains("invalid type"), "{r}");
    let big = format!(r#"{{"handle":"{}"}}"#, "x".repeat(5 << 20));
    let r = post(&big);
    assert!(r.starts_with("HTTP/1.1 500"), "{}", &r[..r.len().min(200)]);
    let spec_body = "{\"path\": [1]}";
    let r = raw_eof(
        &format!(
            "POST /containers/{h}/processes HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\n\r\n{spec_body}",
            spec_body.len()
        ),
        true,
    );
    assert!(r.starts_with("HTTP/1.1 500") && r.contains("invalid process spec"), "{r}");
    // Not HTTP at all: refused without a crash.
    let r = raw("GARBAGE\r\n\r\n");
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 4"), "{r}");
    // Still serving everyone else.
    rt().block_on(async {
        d.client.ping().await.unwrap();
        assert_eq!(d.client.list(&BTreeMap::new()).await.unwrap(), vec![h.clone()]);
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn stop_terminates_processes_but_keeps_the_container() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("stop");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let (p, _) =
            start_until(&d, &h, "trap 'exit 7' TERM; echo ready; while true; do sleep 0.1; done", "ready").await;
        d.client.stop(&h, false).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), 7);
        assert_eq!(d.client.info(&h).await.unwrap().state, "stopped");
    });
}

#[test]
fn cellctl_drives_the_daemon() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("ctl");
    let ctl = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cellctl"))
            .arg("--garden")
            .arg(&d.socket)
            .arg("garden")
            .args(args)
            .output()
            .expect("cellctl")
    };
    let o = ctl(&["create", "--handle", &h]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), h);
    let o = ctl(&["containers"]);
    assert!(String::from_utf8_lossy(&o.stdout).lines().any(|l| l == h));
    let o = ctl(&["run", &h, "--", "sh", "-c", "echo hi; exit 5"]);
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");
    let o = ctl(&["info", &h]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"State\""));
    let o = ctl(&["net-in", &h, "--container-port", "8080"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("{} -> 8080", d.port_start));
    let o = ctl(&["net-out", &h, r#"{"protocol":1,"ports":[{"start":443,"end":443}]}"#]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ctl(&["net-out", &h, r#"{"protocol":"tcp"}"#]);
    assert!(!o.status.success(), "a malformed rule must fail");
    let o = ctl(&["destroy", &h]);
    assert!(o.status.success());
    let o = ctl(&["info", &h]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown handle"));
    d.assert_no_leaks();
}

#[test]
fn init_reaps_orphans_and_hostname_is_the_handle() {
    require_host!();
    let d = Daemon::start();
    // Longer than 49 characters: the hostname is its tail.
    let h = d.handle(&format!("host-{}", "x".repeat(60)));
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let (_, out, _) = run(&d, &h, sh("hostname")).await;
        let tail: String = h.chars().rev().take(49).collect::<Vec<_>>().into_iter().rev().collect();
        assert_eq!(out.trim(), tail);
        // Orphans are re-parented to init, which must reap them.
        run(&d, &h, sh("(sleep 0.1 &); (true &); exit 0")).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (_, out, _) = run(&d, &h, sh("cat /proc/[0-9]*/stat 2>/dev/null | awk '{print $3}'")).await;
        assert!(!out.lines().any(|s| s == "Z"), "zombies left: {out}");
        let (_, out, _) = run(&d, &h, sh("cat /proc/1/comm")).await;
        assert_eq!(out.trim(), "garden-init");
    });
}

#[test]
fn daemons_side_by_side_and_over_tcp() {
    require_host!();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let one = Daemon::start_with(&["--garden-tcp", &addr]);
    let two = Daemon::start();
    let (h1, h2) = (one.handle("one"), two.handle("two"));
    rt().block_on(async {
        let tcp = celld::garden::client::Client::new(celld::garden::client::Address::Tcp(addr.clone()));
        tcp.ping().await.unwrap();
        assert_eq!(tcp.create(&spec(&h1)).await.unwrap(), h1);
        two.client.create(&spec(&h2)).await.unwrap();
        assert_eq!(one.client.list(&BTreeMap::new()).await.unwrap(), vec![h1.clone()]);
        assert_eq!(two.client.list(&BTreeMap::new()).await.unwrap(), vec![h2.clone()]);
        one.client.destroy(&h1).await.unwrap();
        assert_eq!(run(&two, &h2, sh("exit 9")).await.0, 9);
        two.client.destroy(&h2).await.unwrap();
    });
    one.assert_no_leaks();
    two.assert_no_leaks();
}

#[test]
fn bulk_metrics_bind_mounts_kill_and_max_containers() {
    require_host!();
    let d = Daemon::start_with(&["--max-containers", "2"]);
    let host_dir = d.dir.join("shared");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("greeting"), "from the host\n").unwrap();
    let (a, b) = (d.handle("a"), d.handle("b"));
    rt().block_on(async {
        let mut s = spec(&a);
        s.bind_mounts = vec![BindMount {
            src_path: host_dir.display().to_string(),
            dst_path: "/mnt/shared".into(),
            mode: 0,
            origin: 0,
        }];
        d.client.create(&s).await.unwrap();
        d.client.create(&spec(&b)).await.unwrap();
        let e = d.client.create(&spec(&d.handle("c"))).await.unwrap_err();
        assert_eq!(e.to_string(), "max containers reached");

        let (_, out, err) = run(&d, &a, sh("cat /mnt/shared/greeting; echo x > /mnt/shared/new")).await;
        assert_eq!(out, "from the host\n");
        assert!(err.contains("Read-only file system"), "{err}");
        assert!(!host_dir.join("new").exists());

        let m = d.client.bulk_metrics(&[a.as_str(), b.as_str(), "nope"]).await.unwrap();
        assert!(m[&a].metrics.as_ref().unwrap().memory_stat.total_usage_toward_limit > 0);
        assert!(m[&b].metrics.is_some());
        assert_eq!(m["nope"].err.as_ref().unwrap().kind, "ContainerNotFoundError");

        // Stop with kill does not wait for TERM handlers.
        let (p, _) = start_until(&d, &b, "trap '' TERM; echo ready; sleep 1000", "ready").await;
        let started = std::time::Instant::now();
        d.client.stop(&b, true).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), 137);
        assert!(started.elapsed() < Duration::from_secs(2));
    });
}

#[test]
fn restart_removes_leftovers_of_a_half_done_create() {
    require_host!();
    let mut d = Daemon::start();
    let h = d.handle("half");
    d.kill();
    // What a create that died before saving its record leaves behind.
    let leftover = d.depot().join("containers").join(&h);
    std::fs::create_dir_all(leftover.join("upper/etc")).unwrap();
    std::fs::write(leftover.join("upper/etc/motd"), "x").unwrap();
    d.restart();
    rt().block_on(async {
        assert!(d.client.list(&BTreeMap::new()).await.unwrap().is_empty());
        // The handle is free again.
        d.client.create(&spec(&h)).await.unwrap();
        assert_eq!(
            run(&d, &h, sh("cat /etc/motd 2>&1 || echo none")).await.1,
            "cat: can't open '/etc/motd': No such file or directory\nnone\n"
        );
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn destroyed_handles_are_free_at_once_and_their_files_go() {
    require_host!();
    let mut d = Daemon::start();
    let handles: Vec<String> = (0..12).map(|i| d.handle(&format!("gone{i}"))).collect();
    rt().block_on(async {
        for h in &handles {
            d.client.create(&spec(h)).await.unwrap();
            let (code, _, err) =
                run(&d, h, sh("mkdir /tmp/junk && for i in $(seq 100); do echo $i > /tmp/junk/$i; done")).await;
            assert_eq!(code, 0, "{err}");
        }
        // All at once, so that the depot's deleter has a queue; the handle
        // destroyed last is made again while its old files may still wait.
        let destroys = handles.iter().map(|h| d.client.destroy(h));
        for r in futures_util::future::join_all(destroys).await {
            r.unwrap();
        }
        let last = &handles[handles.len() - 1];
        d.client.create(&spec(last)).await.unwrap();
        assert_eq!(run(&d, last, sh("ls /tmp | grep -c junk")).await.1, "0\n");
        // Destroyed again, and the daemon killed before its deleter is done:
        // the next daemon removes what is left.
        for h in &handles[..4] {
            d.client.create(&spec(h)).await.unwrap();
        }
        let destroys = handles[..4].iter().chain([last]).map(|h| d.client.destroy(h));
        for r in futures_util::future::join_all(destroys).await {
            r.unwrap();
        }
    });
    d.kill();
    d.restart();
    rt().block_on(async {
        assert!(d.client.list(&BTreeMap::new()).await.unwrap().is_empty());
    });
    d.assert_no_leaks();
}

#[test]
fn a_daemon_killed_mid_create_leaves_nothing_after_restart() {
    require_host!();
    let mut d = Daemon::start();
    // SIGKILL at different points of a create: starting the helper, the
    // overlay, the clone and the container's set-up, the record. What the next daemon
    // finds is either a whole container or nothing at all.
    for (i, delay) in (0u64..=90).step_by(5).enumerate() {
        let h = d.handle(&format!("mid{i}"));
        let socket = d.socket.clone();
        let creating = std::thread::spawn(move || {
            let c = Client::new(Address::Unix(socket));
            let _ = rt().block_on(c.create(&spec(&h)));
        });
        std::thread::sleep(Duration::from_millis(delay));
        d.kill();
        let _ = creating.join();
        d.restart();
        rt().block_on(async {
            for h in d.client.list(&BTreeMap::new()).await.unwrap() {
                assert_eq!(run(&d, &h, sh("echo alive")).await.1, "alive\n");
                d.client.destroy(&h).await.unwrap();
            }
        });
        d.assert_no_leaks();
    }
}
