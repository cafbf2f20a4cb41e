//! Peas (`ProcessSpec.Image`): processes with their own rootfs in their
//! container's other namespaces, through the Garden client against a real
//! daemon. Run as root (`make test`), serially.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use celld::garden::client::{ProcessIo, Signal};
use celld::garden::types::*;
use common::{Daemon, Sink, garden_type, rt, run, sh, spec, start_until};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A rootfs for peas, told apart from the containers' (`tiny`) by a marker
/// file and by having no user database; in /tmp (which container root can
/// traverse), removed when dropped.
struct PeaRootfs(PathBuf);

impl PeaRootfs {
    fn new() -> Self {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/celld-pea-rootfs-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg("-T")
            .arg(common::rootfs_dir().join("tiny"))
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::write(dir.join("pea-marker"), "from the pea's rootfs\n").unwrap();
        for f in ["etc/passwd", "etc/group"] {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        Self(dir)
    }

    fn pea(&self, script: &str) -> ProcessSpec {
        ProcessSpec { image: ImageRef { uri: self.0.display().to_string(), ..Default::default() }, ..sh(script) }
    }
}

impl Drop for PeaRootfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_pea_has_its_own_rootfs_and_the_containers_other_namespaces() {
    require_host!();
    let d = Daemon::start();
    let root = PeaRootfs::new();
    let h = d.handle("pea-ns");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        // Its view: names, interfaces, and its confinement (id maps,
        // capabilities, seccomp, no_new_privs).
        let view = "hostname; ls /sys/class/net; cat /etc/hosts; cat /proc/self/uid_map /proc/self/gid_map; \
                    grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status";
        let (c_code, c_view, _) = run(&d, &h, sh(&format!("echo only-here > /container-only; {view}"))).await;
        assert_eq!(c_code, 0);
        let (sleeper, out) = start_until(&d, &h, "echo pid=$$; exec sleep 1000", "pid=").await;
        let pid: u32 = out.text().trim().trim_start_matches("pid=").parse().unwrap();

        let script = format!(
            "cat /pea-marker; test -e /container-only && echo sees-container-files; \
             {view}; echo cwd=$(pwd); echo ids=$(id -u):$(id -g); \
             echo peer=$(cat /proc/{pid}/comm); grep -c . /etc/resolv.conf"
        );
        let (code, out, err) = run(&d, &h, root.pea(&script)).await;
        assert_eq!(code, 0, "{out} {err}");
        assert!(out.starts_with("from the pea's rootfs\n"), "the pea's own rootfs: {out}");
        assert!(!out.contains("sees-container-files"), "the container's files must be invisible: {out}");
        // Same uts, net and user namespaces, the container's /etc/hosts and
        // confinement: the container's view, line for line.
        assert!(out.contains(&c_view), "pea:\n{out}\ncontainer:\n{c_view}");
        assert!(c_view.lines().filter(|l| !l.contains(char::is_whitespace)).count() >= 3, "lo, a veth: {c_view}");
        assert!(c_view.contains("4294967294"), "an unprivileged container: {c_view}");
        assert!(out.contains("cwd=/\n"), "{out}");
        assert!(out.contains("ids=0:0\n"), "{out}");
        // Same pid namespace: the container's sleep is visible.
        assert!(out.contains("peer=sleep\n"), "{out}");
        assert!(!out.trim_end().ends_with("\n0"), "resolv.conf is there: {out}");

        // Same network namespace: a server in the container on 127.0.0.1.
        let (server, got) = start_until(&d, &h, "echo listening; nc -l -p 7070", "listening").await;
        let client = "for i in 1 2 3 4 5 6 7 8 9 10; do echo hello-from-pea | timeout 2 nc 127.0.0.1 7070 && exit 0; \
                      sleep 0.3; done; exit 1";
        let (code, _, err) = run(&d, &h, root.pea(client)).await;
        assert_eq!(code, 0, "{err}");
        got.wait_for("hello-from-pea").await;
        for p in [server, sleeper] {
            p.signal(Signal::Kill).await.unwrap();
            p.wait().await.unwrap();
        }
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn pea_users_exit_codes_signals_stdio_and_errors() {
    require_host!();
    let d = Daemon::start();
    let root = PeaRootfs::new();
    let h = d.handle("pea-proc");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let c = &d.client;
        let as_user = |user: &str, script: &str| ProcessSpec { user: user.into(), ..root.pea(script) };
        let script = "id -u; id -g; id -G; echo reopened > /dev/stdout; exit 42";
        let (code, out, err) = run(&d, &h, as_user("1000:1001", script)).await;
        assert_eq!((code, out.as_str()), (42, "1000\n1001\n1001\nreopened\n"), "{err}");
        // A named user needs a user database in the pea's rootfs, which this one lacks.
        let e = c.run(&h, &as_user("vcap", "true"), ProcessIo::default()).await.err().expect("no such user");
        assert!(e.to_string().contains("vcap"), "{e}");
        // A missing executable fails the run, as for any process.
        let missing = ProcessSpec { path: "/no/such/binary".into(), args: vec![], ..root.pea("") };
        let e = c.run(&h, &missing, ProcessIo::default()).await.err().expect("no such executable");
        assert_eq!(garden_type(&e), "ExecutableNotFoundError", "{e}");
        let not_in_path = ProcessSpec { path: "no-such-cmd".into(), ..missing.clone() };
        let e = c.run(&h, &not_in_path, ProcessIo::default()).await.err().expect("not in PATH");
        assert_eq!(garden_type(&e), "ExecutableNotFoundError", "{e}");
        // A rootfs that does not exist is a clear error.
        let bad = ProcessSpec { image: ImageRef { uri: "/no/such/rootfs".into(), ..Default::default() }, ..sh("true") };
        let e = c.run(&h, &bad, ProcessIo::default()).await.err().expect("no such rootfs");
        assert!(e.to_string().contains("/no/such/rootfs"), "{e}");

        // stdin and stdout.
        let out = Sink::default();
        let io = ProcessIo {
            stdin: Some(Box::new(std::io::Cursor::new(b"through the pea\n".to_vec()))),
            stdout: Some(Box::new(out.clone())),
            stderr: None,
        };
        let p = c.run(&h, &root.pea("cat; echo done"), io).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), 0);
        assert_eq!(out.text(), "through the pea\ndone\n");

        // A terminal.
        let out = Sink::default();
        let tty = ProcessSpec { tty: Some(TtySpec::default()), ..root.pea("test -t 0 && test -t 1 && echo on-a-tty") };
        let io = ProcessIo { stdout: Some(Box::new(out.clone())), ..Default::default() };
        assert_eq!(c.run(&h, &tty, io).await.unwrap().wait().await.unwrap(), 0);
        assert!(out.text().contains("on-a-tty"), "{:?}", out.text());

        // Signals, and a chosen process id that attach finds.
        let out = Sink::default();
        let spec = ProcessSpec {
            id: format!("{h}-trap"),
            ..root.pea("trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.1; done")
        };
        let io = ProcessIo { stdout: Some(Box::new(out.clone())), ..Default::default() };
        let p = c.run(&h, &spec, io).await.unwrap();
        assert_eq!(p.id(), spec.id);
        out.wait_for("ready").await;
        let again = c.run(&h, &spec, ProcessIo::default()).await.err().expect("id in use");
        assert!(again.to_string().contains("already in use"), "{again}");
        let attached = c.attach(&h, &spec.id, ProcessIo::default()).await.unwrap();
        attached.signal(Signal::Terminate).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), 7);
        assert!(out.text().contains("got-term"));
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn pea_limits_shared_or_own_and_oom_kills_only_the_pea() {
    require_host!();
    let d = Daemon::start();
    let root = PeaRootfs::new();
    let h = d.handle("pea-oom");
    rt().block_on(async {
        let mut s = spec(&h);
        s.limits.memory_limits.limit_in_bytes = 64 << 20;
        d.client.create(&s).await.unwrap();
        let (sleeper, _) = start_until(&d, &h, "echo up; exec sleep 1000", "up").await;
        let memory_cgroup = "grep :memory: /proc/self/cgroup";
        // Without an override the pea is in the container's cgroup.
        let (_, shared, _) = run(&d, &h, root.pea(memory_cgroup)).await;
        assert!(shared.trim_end().ends_with(&format!("/{h}")), "{shared}");
        // With an empty one, in its own cgroup beside the container's (as
        // Garden's, named for the pea): no memory limit, so a 128 MiB block
        // fits where the container's 64 MiB would not.
        let script = format!("dd if=/dev/zero of=/dev/null bs=128M count=1 2>/dev/null && echo fits; {memory_cgroup}");
        let mut own = root.pea(&script);
        own.limits = serde_json::json!({});
        let (code, out, err) = run(&d, &h, own).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("fits\n") && out.contains("/pea-") && !out.contains(&format!("/{h}/")), "{out}");
        // With a memory limit of its own, the OOM killer takes only the pea.
        let mut small = root.pea("dd if=/dev/zero of=/dev/null bs=128M count=1");
        small.limits = serde_json::json!({"memory_limits": {"limit_in_bytes": 32u64 << 20}});
        let (code, _, _) = run(&d, &h, small).await;
        assert_eq!(code, 137);
        assert_eq!(run(&d, &h, sh("exit 3")).await.0, 3, "the container's init survives");
        assert_eq!(run(&d, &h, root.pea("exit 4")).await.0, 4, "and runs more peas");
        let m = d.client.bulk_metrics(&[h.as_str()]).await.unwrap();
        assert!(m[&h].err.is_none(), "{m:?}");
        assert!(m[&h].metrics.as_ref().is_some_and(|m| m.memory_stat.total_usage_toward_limit > 0), "{m:?}");
        sleeper.signal(Signal::Kill).await.unwrap();
        assert_eq!(sleeper.wait().await.unwrap(), 137, "the container's other processes survive");
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn pea_bind_mounts_apply_and_destroy_kills_peas_leaving_nothing() {
    require_host!();
    let d = Daemon::start();
    let root = PeaRootfs::new();
    let h = d.handle("pea-destroy");
    let shared = d.dir.join("pea-shared");
    std::fs::create_dir_all(&shared).unwrap();
    // Writable for the pea's root, an unprivileged uid on the host.
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(shared.join("from-host"), "host file\n").unwrap();
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let mut p = root.pea("cat /mnt/shared/from-host; echo written > /mnt/shared/from-pea");
        p.bind_mounts = vec![BindMount {
            src_path: shared.display().to_string(),
            dst_path: "/mnt/shared".into(),
            mode: 1,
            origin: 0,
        }];
        let (code, out, err) = run(&d, &h, p.clone()).await;
        assert_eq!((code, out.as_str()), (0, "host file\n"), "{err}");
        assert_eq!(std::fs::read_to_string(shared.join("from-pea")).unwrap(), "written\n");
        p.bind_mounts[0].src_path = "/no/such/celld/dir".into();
        let e = d.client.run(&h, &p, ProcessIo::default()).await.err().expect("missing source");
        assert!(e.to_string().contains("/no/such/celld/dir"), "{e}");

        // Long-running peas, one with a cgroup of its own, then destroy.
        let (_, _) = start_until(&d, &h, "echo up; exec sleep 1000", "up").await;
        let out = Sink::default();
        let io = ProcessIo { stdout: Some(Box::new(out.clone())), ..Default::default() };
        let pea = d.client.run(&h, &root.pea("echo pea-up; exec sleep 1000"), io).await.unwrap();
        out.wait_for("pea-up").await;
        let mut own = root.pea("echo own-up; exec sleep 1000");
        own.limits = serde_json::json!({"memory_limits": {"limit_in_bytes": 64u64 << 20}});
        let out2 = Sink::default();
        let io = ProcessIo { stdout: Some(Box::new(out2.clone())), ..Default::default() };
        let _own = d.client.run(&h, &own, io).await.unwrap();
        out2.wait_for("own-up").await;
        d.client.destroy(&h).await.unwrap();
        // Its stream ends with the container (no exit status to wait for).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), pea.wait()).await.expect("pea stream ends");
    });
    d.assert_no_leaks();
}

#[test]
fn a_privileged_containers_pea() {
    require_host!();
    let d = Daemon::start();
    let root = PeaRootfs::new();
    let h = d.handle("pea-priv");
    rt().block_on(async {
        d.client.create(&ContainerSpec { privileged: true, ..spec(&h) }).await.unwrap();
        let view = "cat /proc/self/uid_map; grep -E '^(CapBnd|Seccomp)' /proc/self/status";
        let (_, c_view, _) = run(&d, &h, sh(view)).await;
        let (code, out, err) = run(&d, &h, root.pea(&format!("cat /pea-marker; {view}"))).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, format!("from the pea's rootfs\n{c_view}"));
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn peas_outlive_a_daemon_restart() {
    require_host!();
    let mut d = Daemon::start();
    let root = PeaRootfs::new();
    let h = d.handle("pea-restart");
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let out = Sink::default();
        let io = ProcessIo { stdout: Some(Box::new(out.clone())), ..Default::default() };
        let mut own = root.pea("echo pea-up; exec sleep 1000");
        own.limits = serde_json::json!({});
        let p = d.client.run(&h, &own, io).await.unwrap();
        out.wait_for("pea-up").await;
        let id = p.id().to_string();
        drop(p);
        d.restart();
        assert!(d.client.info(&h).await.unwrap().process_ids.unwrap_or_default().contains(&id));
        let p = d.client.attach(&h, &id, ProcessIo::default()).await.unwrap();
        p.signal(Signal::Kill).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), 137);
        assert_eq!(run(&d, &h, root.pea("exit 5")).await.0, 5);
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}
