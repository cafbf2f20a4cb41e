//! Hostile Garden clients and containers: output nobody reads, half-closed
//! run connections, guessed stream ids, specs that used to fail half-way,
//! errors that did not say what to do, and inits killed from the host.

use std::path::Path;
use std::time::{Duration, Instant};

use celld::garden::client::ProcessIo;
use celld::garden::types::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::common::{self, Daemon, Sink, rt, sh, spec};

/// A process started over a raw connection, as a Garden client that keeps
/// the connection (for the exit status) but may never read the output.
struct RawRun {
    conn: BufReader<UnixStream>,
    process_id: String,
    stream_id: String,
}

async fn raw_run(socket: &Path, handle: &str, p: &ProcessSpec) -> RawRun {
    let body = serde_json::to_vec(p).unwrap();
    let mut conn = UnixStream::connect(socket).await.unwrap();
    let head = format!(
        "POST /containers/{handle}/processes HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body).await.unwrap();
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        assert!(!line.starts_with("HTTP/1.1 5"), "run refused: {line}");
    }
    line.clear();
    conn.read_line(&mut line).await.unwrap();
    let started: ProcessStarted = serde_json::from_str(&line).unwrap();
    RawRun { conn, process_id: started.process_id, stream_id: started.stream_id }
}

impl RawRun {
    /// The exit status line (or error) that ends the run connection.
    async fn finish(mut self) -> ProcessPayload {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.conn.read_line(&mut line).await.unwrap() > 0, "run connection ended without a status");
            let msg: ProcessPayload = serde_json::from_str(&line).unwrap();
            if msg.exit_status.is_some() || msg.error.is_some() {
                return msg;
            }
        }
    }
}

/// GETs a raw route; returns (status line, body read to EOF).
async fn raw_get(socket: &Path, path: &str) -> (String, Vec<u8>) {
    let mut conn = UnixStream::connect(socket).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    conn.read_to_end(&mut all).await.unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").map_or(all.len(), |p| p + 4);
    let status = String::from_utf8_lossy(&all[..end]).lines().next().unwrap_or_default().to_string();
    (status, all[end..].to_vec())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0)
}

/// Defect 1: ten processes each writing 1 GiB that nobody reads raise the
/// daemon's RSS by at most 64 MiB; a late reader gets the newest output and
/// the exit status.
#[test]
fn output_nobody_reads_is_bounded_and_late_readers_get_the_newest() {
    crate::require_host!();
    let d = Daemon::start();
    let pid = d.pid().unwrap();
    rt().block_on(async {
        let h = d.handle("flood");
        d.client.create(&spec(&h)).await.unwrap();
        let before = rss_kib(pid);
        let mut runs = Vec::new();
        for i in 0..10 {
            // 1 GiB on stdout, a little on stderr, then the newest lines.
            let script = format!(
                "dd if=/dev/zero bs=65536 count=16384 2>/dev/null; echo err-{i} >&2; echo newest-{i}; exit {}",
                10 + i
            );
            runs.push(raw_run(&d.socket, &h, &sh(&script)).await);
        }
        let ids: Vec<(String, String)> = runs.iter().map(|r| (r.process_id.clone(), r.stream_id.clone())).collect();
        let waits: Vec<_> = runs.into_iter().map(|r| tokio::spawn(r.finish())).collect();
        let mut peak = before;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !waits.iter().all(|w| w.is_finished()) {
            assert!(Instant::now() < deadline, "10 GiB of output did not drain in 300 s");
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let grew_mib = peak.saturating_sub(before) / 1024;
        eprintln!("daemon RSS {before} KiB before, {peak} KiB at peak (+{grew_mib} MiB) for 10 GiB unread");
        assert!(grew_mib <= 64, "daemon RSS grew by {grew_mib} MiB with nobody reading");
        for (i, w) in waits.into_iter().enumerate() {
            let last = w.await.unwrap();
            assert_eq!(last.exit_status, Some(10 + i as i32), "{last:?}");
        }

        // A Garden attach after the exit: the newest output and the status.
        let (pid0, sid0) = &ids[0];
        let out = Sink::default();
        let io = ProcessIo { stdout: Some(Box::new(out.clone())), ..Default::default() };
        let p = d.client.attach(&h, pid0, io).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), 10);
        assert!(out.text().ends_with("newest-0\n"), "attach got {} bytes", out.text().len());

        // The run's own streams, read late: bounded, ending with the newest.
        let (status, body) =
            raw_get(&d.socket, &format!("/containers/{h}/processes/{pid0}/attaches/{sid0}/stdout")).await;
        assert!(status.contains("200"), "{status}");
        assert!(body.len() <= 512 * 1024, "kept {} bytes", body.len());
        assert!(body.ends_with(b"newest-0\n"));
        let (_, err) = raw_get(&d.socket, &format!("/containers/{h}/processes/{pid0}/attaches/{sid0}/stderr")).await;
        assert_eq!(err, b"err-0\n");
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

/// Defect 6: a client that shuts down its write side right after Run (no
/// stdin to send) still gets the output and the exit status; the process's
/// stdin sees EOF.
#[test]
fn a_half_closed_run_connection_keeps_output_and_exit_status() {
    crate::require_host!();
    let d = Daemon::start();
    rt().block_on(async {
        let h = d.handle("half");
        d.client.create(&spec(&h)).await.unwrap();
        let run = raw_run(&d.socket, &h, &sh("cat; echo stdin-ended; sleep 0.3; echo after; exit 3")).await;
        let path = format!("/containers/{h}/processes/{}/attaches/{}/stdout", run.process_id, run.stream_id);
        let reader = tokio::spawn({
            let socket = d.socket.clone();
            async move { raw_get(&socket, &path).await }
        });
        let mut run = run;
        run.conn.get_mut().shutdown().await.unwrap();
        let last = run.finish().await;
        assert_eq!(last.error, None);
        assert_eq!(last.exit_status, Some(3));
        let (_, out) = reader.await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "stdin-ended\nafter\n");
        d.client.destroy(&h).await.unwrap();
    });
}

/// Defect 12: stream ids cannot be guessed, and a stream is served only
/// under the container and process it belongs to.
#[test]
fn attach_streams_are_bound_to_their_container_and_unguessable() {
    crate::require_host!();
    let d = Daemon::start();
    rt().block_on(async {
        let (a, b) = (d.handle("victim"), d.handle("thief"));
        d.client.create(&spec(&a)).await.unwrap();
        d.client.create(&spec(&b)).await.unwrap();
        let secret = raw_run(&d.socket, &a, &sh("sleep 0.5; echo secret")).await;
        let other = raw_run(&d.socket, &b, &sh("true")).await;
        for sid in [&secret.stream_id, &other.stream_id] {
            assert!(sid.len() >= 32, "stream id {sid:?} is short enough to guess");
        }
        assert_ne!(secret.stream_id, other.stream_id);
        let (pid, sid) = (secret.process_id.clone(), secret.stream_id.clone());
        for path in [
            format!("/containers/{b}/processes/{pid}/attaches/{sid}/stdout"),
            format!("/containers/{a}/processes/{}/attaches/{sid}/stdout", other.process_id),
            format!("/containers/{b}/processes/{}/attaches/{sid}/stdout", other.process_id),
        ] {
            let (status, body) = raw_get(&d.socket, &path).await;
            assert!(status.contains("404"), "{path}: {status}");
            assert!(!String::from_utf8_lossy(&body).contains("secret"));
        }
        // The rightful reader still gets it: the refusals claimed nothing.
        let (status, body) =
            raw_get(&d.socket, &format!("/containers/{a}/processes/{pid}/attaches/{sid}/stdout")).await;
        assert!(status.contains("200"), "{status}");
        assert_eq!(body, b"secret\n");
        assert_eq!(secret.finish().await.exit_status, Some(0));
        assert_eq!(other.finish().await.exit_status, Some(0));
        d.client.destroy(&a).await.unwrap();
        d.client.destroy(&b).await.unwrap();
    });
}

/// Defect 9: what the kernel or init would refuse later is refused at once,
/// with a message, before anything is made; a long multibyte handle works.
#[test]
fn bad_specs_are_refused_before_anything_is_made() {
    crate::require_host!();
    let d = Daemon::start();
    rt().block_on(async {
        for (env, why) in [("NOEQUALS", "is not NAME=VALUE"), ("A=b\0c", "NUL"), ("=v", "is not NAME=VALUE")] {
            let mut s = spec(&d.handle("badenv"));
            s.env = vec![env.into()];
            let e = d.client.create(&s).await.unwrap_err().to_string();
            assert!(e.contains("container environment entry") && e.contains(why), "{e}");
        }
        assert!(d.client.list(&Default::default()).await.unwrap().is_empty());
        d.assert_no_leaks();

        // 60 three-byte characters: the hostname is the last whole characters within 49 bytes.
        let wide = format!("{}{}", d.handle_prefix(), "\u{20ac}".repeat(60));
        d.client.create(&spec(&wide)).await.unwrap();
        let (code, out, _) = common::run(&d, &wide, sh("hostname")).await;
        assert_eq!((code, out.trim_end()), (0, "\u{20ac}".repeat(16).as_str()));

        // An environment too large for one exec: refused with the way out.
        let mut p = sh("true");
        p.env = (0..30).map(|i| format!("V{i}={}", "x".repeat(100 * 1024))).collect();
        let e = d.client.run(&wide, &p, ProcessIo::default()).await.err().unwrap().to_string();
        assert!(e.contains("stream it in"), "{e}");
        let mut p = sh("true");
        p.env = vec!["BAD".into()];
        let e = d.client.run(&wide, &p, ProcessIo::default()).await.err().unwrap().to_string();
        assert!(e.contains("process environment entry \"BAD\": is not NAME=VALUE"), "{e}");
        d.client.destroy(&wide).await.unwrap();
    });
    d.assert_no_leaks();
}

/// Defect 10: a full disk, a failed stream-in and an untraversable depot each
/// say what happened and what to do.
#[test]
fn errors_name_their_cause_and_the_fix() {
    crate::require_host!();
    let d = Daemon::start();
    rt().block_on(async {
        let h = d.handle("tarfail");
        d.client.create(&spec(&h)).await.unwrap();
        let (code, _, _) = common::run(&d, &h, sh("touch /tmp/f")).await;
        assert_eq!(code, 0);
        let mut b = tar::Builder::new(Vec::new());
        let mut hd = tar::Header::new_gnu();
        hd.set_size(1);
        hd.set_mode(0o644);
        b.append_data(&mut hd, "f/x", &b"y"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let e = d.client.stream_in(&h, "", "/tmp", std::io::Cursor::new(tar)).await.unwrap_err().to_string();
        assert!(e.contains("f/x") && e.contains("ot a directory"), "{e}");
        d.client.destroy(&h).await.unwrap();

        // A full depot filesystem (a tiny tmpfs over the containers' directory).
        let containers = d.depot().join("containers");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k,mode=0711", "celld-test-full"])
            .arg(&containers)
            .status()
            .unwrap();
        assert!(ok.success());
        let _ = std::fs::write(containers.join("filler"), vec![0u8; 1 << 20]);
        let mut s = spec(&d.handle("nospace"));
        s.privileged = true;
        let e = d.client.create(&s).await.unwrap_err().to_string();
        let _ = std::fs::remove_file(containers.join("filler"));
        let leftovers: Vec<_> = std::fs::read_dir(&containers).unwrap().flatten().map(|e| e.file_name()).collect();
        std::process::Command::new("umount").arg(&containers).status().unwrap();
        assert!(e.contains("no space left on device") && e.contains("--depot"), "{e}");
        assert!(leftovers.is_empty(), "left in the depot: {leftovers:?}");
    });
    d.assert_no_leaks();

    // A depot under a directory container root cannot traverse: refused at start.
    let locked = d.dir.join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let args = ["--no-network", "--grpc-listen", "127.0.0.1:0"];
    let (status, err) = common::celld_exit(&locked, &args, Duration::from_secs(20)).expect("celld ran on");
    assert!(!status.success(), "celld started on an untraversable depot");
    assert!(err.contains("cannot traverse") && err.contains("chmod o+x"), "{err}");
}

/// Defect 11: an init killed from the host is noticed within a second: the
/// container is stopped, says why, refuses runs clearly, and destroys cleanly.
#[test]
fn an_init_killed_from_the_host_is_noticed() {
    crate::require_host!();
    let d = Daemon::start();
    rt().block_on(async {
        let h = d.handle("killed");
        d.client.create(&spec(&h)).await.unwrap();
        let record = std::fs::read(d.depot().join("containers").join(&h).join("record.json")).unwrap();
        let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
        let init = record["init_pid"].as_i64().unwrap() as i32;
        assert!(init > 1);
        unsafe { libc::kill(init, libc::SIGKILL) };
        let killed = Instant::now();
        loop {
            let info = d.client.info(&h).await.unwrap();
            if info.state == "stopped" {
                assert!(info.events.iter().any(|e| e == "Container init exited"), "{:?}", info.events);
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(5), "still {:?} after 5 s", info.state);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("init death noticed after {:?}", killed.elapsed());
        assert!(killed.elapsed() < Duration::from_secs(2));
        let e = d.client.run(&h, &sh("true"), ProcessIo::default()).await.err().unwrap().to_string();
        assert!(e.contains("init process has exited") && e.contains("destroyed"), "{e}");
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}
