//! What a process sees of its container, as Garden sets it up: the OOM
//! killer and init, capabilities, devices and mounts, pid 1's name, and the
//! process's environment, user and standard streams. Through the Garden
//! client against a real celld; run as root with `make test`.

mod common;

use celld::garden::client::ProcessIo;
use celld::garden::types::{ContainerSpec, ProcessSpec};
use common::{Daemon, garden_type, rt, run, sh, spec};

fn as_user(user: &str, script: &str) -> ProcessSpec {
    ProcessSpec { user: user.into(), ..sh(script) }
}

/// The `Cap*` lines of /proc/self/status, as `(inheritable, permitted,
/// effective, bounding)`.
fn caps(status: &str) -> (u64, u64, u64, u64) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no {name} in {status:?}"))
    };
    (field("CapInh:"), field("CapPrm:"), field("CapEff:"), field("CapBnd:"))
}

/// This (root) test process's bounding set: a container cannot get more.
fn host_bounding() -> u64 {
    caps(&std::fs::read_to_string("/proc/self/status").unwrap()).3
}

#[test]
fn oom_kills_the_process_and_never_init() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("oom");
    rt().block_on(async {
        let mut s = spec(&h);
        s.limits.memory_limits.limit_in_bytes = 64 << 20;
        d.client.create(&s).await.unwrap();
        // init is shielded where the host lets celld lower a score (it needs
        // CAP_SYS_RESOURCE); its processes never inherit the shield.
        let (_, out, _) = run(&d, &h, sh("cat /proc/1/oom_score_adj /proc/self/oom_score_adj")).await;
        let shielded = host_bounding() & (1 << 24) != 0;
        assert_eq!(out, if shielded { "-1000\n0\n" } else { "0\n0\n" });
        // A shell that keeps doubling a string: its memory grows in small
        // steps, with init's among the candidates all along.
        let grow = "s=xxxxxxxxxxxxxxxx; while true; do s=$s$s; done";
        let (code, _, _) = run(&d, &h, sh(grow)).await;
        assert_eq!(code, 137);
        let (code, _, _) = run(&d, &h, sh("dd if=/dev/zero of=/dev/null bs=128M count=1")).await;
        assert_eq!(code, 137);
        assert_eq!(d.client.info(&h).await.unwrap().events, vec!["Out of memory".to_string()]);
        let (code, out, _) = run(&d, &h, sh("echo still here")).await;
        assert_eq!((code, out.as_str()), (0, "still here\n"));
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn capabilities_are_gardens() {
    require_host!();
    let d = Daemon::start();
    let (plain, privileged) = (d.handle("caps"), d.handle("caps-priv"));
    rt().block_on(async {
        d.client.create(&spec(&plain)).await.unwrap();
        d.client.create(&ContainerSpec { privileged: true, ..spec(&privileged) }).await.unwrap();
        let status = |h: String, user: &'static str| {
            let d = &d;
            async move {
                let (code, out, err) = run(d, &h, as_user(user, "cat /proc/self/status")).await;
                assert_eq!(code, 0, "{err}");
                caps(&out)
            }
        };
        let unprivileged = 0xa804_25fb;
        assert_eq!(status(plain.clone(), "").await, (unprivileged, unprivileged, unprivileged, unprivileged));
        assert_eq!(status(plain.clone(), "1000:1000").await, (unprivileged, 0, 0, unprivileged));
        let full = 0x3f_ffff_ffff & host_bounding();
        assert_eq!(status(privileged.clone(), "").await, (full, full, full, full));
        let non_root = 0xa824_25fb & host_bounding();
        assert_eq!(status(privileged.clone(), "alice").await, (non_root, 0, 0, non_root));
        for h in [&plain, &privileged] {
            d.client.destroy(h).await.unwrap();
        }
    });
    d.assert_no_leaks();
}

/// The device (the file system instance: `major:minor`) mounted at `at`.
fn device_at(mountinfo: &str, at: &str) -> String {
    line_at(mountinfo, at).split_whitespace().nth(2).unwrap_or_default().to_string()
}

/// The last mountinfo line whose mount point is `at` (the one on top).
fn line_at<'a>(mountinfo: &'a str, at: &str) -> &'a str {
    let line = mountinfo.lines().rev().find(|l| l.split_whitespace().nth(4) == Some(at));
    line.unwrap_or_else(|| panic!("nothing mounted at {at}: {mountinfo}"))
}

/// The mountinfo line whose mount point is `at`: (root, options, fstype,
/// source, super options).
fn mount_at(mountinfo: &str, at: &str) -> (String, String, String, String, String) {
    let (left, right) = line_at(mountinfo, at).split_once(" - ").unwrap();
    let l: Vec<&str> = left.split_whitespace().collect();
    let r: Vec<&str> = right.split_whitespace().collect();
    (l[3].into(), l[5].into(), r[0].into(), r[1].into(), r[2].into())
}

#[test]
fn devices_and_mounts_are_gardens() {
    require_host!();
    let d = Daemon::start();
    let (plain, privileged) = (d.handle("mounts"), d.handle("mounts-priv"));
    rt().block_on(async {
        let mut s = spec(&plain);
        s.limits.memory_limits.limit_in_bytes = 96 << 20;
        d.client.create(&s).await.unwrap();
        d.client.create(&ContainerSpec { privileged: true, ..spec(&privileged) }).await.unwrap();

        let (_, out, _) = run(&d, &privileged, sh("test -c /dev/fuse && stat -c %a:%t:%T /dev/fuse")).await;
        assert_eq!(out, "666:a:e5\n");
        assert_eq!(run(&d, &plain, sh("test -e /dev/fuse")).await.0, 1);

        let (_, mi, _) = run(&d, &plain, sh("cat /proc/self/mountinfo")).await;
        let (_, _, fstype, _, opts) = mount_at(&mi, "/dev/pts");
        assert_eq!(fstype, "devpts");
        for o in ["gid=5", "mode=620", "ptmxmode=666"] {
            assert!(opts.split(',').any(|x| x == o), "/dev/pts options {opts}");
        }
        let (_, _, fstype, source, _) = mount_at(&mi, "/dev/shm");
        assert_eq!((fstype.as_str(), source.as_str()), ("tmpfs", "tmpfs"));
        // A directory of the /dev tmpfs (one file system instance fewer),
        // with its own flags and mode.
        assert_eq!(device_at(&mi, "/dev/shm"), device_at(&mi, "/dev"));
        let (_, opts, _, _, _) = mount_at(&mi, "/dev/shm");
        for o in ["nosuid", "nodev", "noexec"] {
            assert!(opts.split(',').any(|x| x == o), "/dev/shm options {opts}");
        }
        let (_, out, _) = run(&d, &plain, sh("stat -c %a /dev/shm; echo x > /dev/shm/f && cat /dev/shm/f")).await;
        assert_eq!(out, "1777\nx\n");

        // The container's own cgroups, read-only.
        let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (root, opts, fstype, _, _) =
            mount_at(&mi, if unified { "/sys/fs/cgroup" } else { "/sys/fs/cgroup/memory" });
        assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
        assert_eq!(fstype, if unified { "cgroup2" } else { "cgroup" });
        assert!(root.ends_with(&format!("/{plain}")), "the container's cgroup, not the host's: {root}");
        if !unified {
            let (_, opts, fstype, _, _) = mount_at(&mi, "/sys/fs/cgroup");
            assert_eq!(fstype, "tmpfs");
            assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
        }
        let limit = if unified { "/sys/fs/cgroup/memory.max" } else { "/sys/fs/cgroup/memory/memory.limit_in_bytes" };
        let script = format!("cat {limit}; echo 1 > {limit} || echo read-only");
        let (_, out, _) = run(&d, &plain, sh(&script)).await;
        assert_eq!(out, "100663296\nread-only\n");

        // Masked: an empty read-only directory, an empty file.
        let script = "ls -A /sys/firmware | wc -l; touch /sys/firmware/x || echo read-only; wc -c < /proc/keys";
        let (_, out, _) = run(&d, &plain, sh(script)).await;
        assert_eq!(out, "0\nread-only\n0\n");
        // What every container is shown alike is one file system for all of
        // them (one superblock), not one more per container.
        let (_, mi_priv, _) = run(&d, &privileged, sh("cat /proc/self/mountinfo")).await;
        let mut shared = vec!["/sys/firmware"];
        if !unified {
            shared.push("/sys/fs/cgroup");
        }
        for at in shared {
            let (a, b) = (device_at(&mi, at), device_at(&mi_priv, at));
            assert_eq!(a, b, "{at}: one file system in both containers");
            let (_, _, fstype, _, _) = mount_at(&mi, at);
            assert_eq!(fstype, "tmpfs", "{at}");
        }
        for h in [&plain, &privileged] {
            d.client.destroy(h).await.unwrap();
        }
    });
    d.assert_no_leaks();
}

#[test]
fn pid_1_is_garden_init_without_host_paths() {
    require_host!();
    let mut d = Daemon::start();
    let h = d.handle("init-name");
    let host = d.dir.display().to_string();
    rt().block_on(async {
        d.client.create(&spec(&h)).await.unwrap();
        let (_, out, _) = run(&d, &h, sh("cat /proc/1/cmdline; echo; ps")).await;
        assert!(out.starts_with("garden-init\0\n"), "{out:?}");
        let pid_1 = out.lines().find(|l| l.split_whitespace().next() == Some("1"));
        assert!(pid_1.is_some_and(|l| l.ends_with(" garden-init")), "{out}");
        assert!(!out.contains(&host), "{out}");
        // init is the static celld-init, exec'd from a sealed memfd: no host
        // path shows, and no container can write to it.
        let (_, out, _) = run(&d, &h, sh("readlink /proc/1/exe; echo x >> /proc/1/exe && echo WROTE")).await;
        assert!(out.starts_with("/memfd:garden-init"), "{out}");
        assert!(!out.contains("WROTE"), "{out}");
    });
    // The daemon finds its containers again without their command lines.
    d.restart();
    rt().block_on(async {
        assert_eq!(d.client.list(&Default::default()).await.unwrap(), vec![h.clone()]);
        let (_, out, _) = run(&d, &h, sh("cat /proc/1/comm")).await;
        assert_eq!(out, "garden-init\n");
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

#[test]
fn environment_users_and_standard_streams() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("procs");
    rt().block_on(async {
        let s = ContainerSpec { env: vec!["TEST=hi".into(), "KEEP=1".into()], ..spec(&h) };
        d.client.create(&s).await.unwrap();

        // The process's value wins, once; Garden's defaults fill the rest.
        let p = ProcessSpec { env: vec!["TEST=hello".into()], ..sh("env | sort") };
        let (_, out, _) = run(&d, &h, p).await;
        let names = ["HOME=", "KEEP=", "PATH=", "TEST=", "USER="];
        let lines: Vec<&str> = out.lines().filter(|l| names.iter().any(|n| l.starts_with(n))).collect();
        assert_eq!(
            lines,
            [
                "HOME=/root",
                "KEEP=1",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TEST=hello",
                "USER=root"
            ]
        );
        let p = ProcessSpec { env: vec!["HOME=/tmp".into(), "USER=me".into(), "PATH=/bin".into()], ..sh("env") };
        let (_, out, _) = run(&d, &h, p).await;
        for want in ["HOME=/tmp", "USER=me", "PATH=/bin"] {
            assert_eq!(
                out.lines().filter(|l| l.split('=').next() == want.split('=').next()).collect::<Vec<_>>(),
                [want]
            );
        }

        // uid:gid is exactly that, without supplementary groups; names
        // resolve from the container's /etc/passwd and /etc/group.
        let ids = "id -u; id -g; grep '^Groups:' /proc/self/status";
        run(&d, &h, sh("echo staff:x:50:alice >> /etc/group")).await;
        let (_, out, _) = run(&d, &h, as_user("1000:1000", ids)).await;
        assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["1000", "1000", "Groups:"]);
        let (_, out, _) = run(&d, &h, as_user("alice", ids)).await;
        assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["1000", "1000", "Groups:", "50"]);
        let (_, out, _) = run(&d, &h, as_user("vcap:staff", ids)).await;
        assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["2000", "50", "Groups:"]);
        let (_, out, _) = run(&d, &h, as_user("alice:tty", ids)).await;
        assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["1000", "5", "Groups:"]);
        for (user, message) in [
            ("nosuch", "unable to find user nosuch: no matching entries in passwd file"),
            ("alice:nosuch", "unable to find group nosuch: no matching entries in group file"),
        ] {
            let e = d.client.run(&h, &as_user(user, "true"), ProcessIo::default()).await.err().expect(user);
            assert_eq!(e.to_string(), message);
            assert_eq!(garden_type(&e), "");
        }

        // A non-root process may reopen its own standard streams.
        let reopen = "read line < /dev/stdin; echo \"out $line\" > /dev/stdout; echo err > /dev/stderr";
        for user in ["1000:1000", "vcap"] {
            let (out, err) = (common::Sink::default(), common::Sink::default());
            let io = ProcessIo {
                stdin: Some(Box::new(std::io::Cursor::new(b"in\n".to_vec()))),
                stdout: Some(Box::new(out.clone())),
                stderr: Some(Box::new(err.clone())),
            };
            let p = d.client.run(&h, &as_user(user, reopen), io).await.unwrap();
            assert_eq!(p.wait().await.unwrap(), 0, "{user}: {}", err.text());
            assert_eq!((out.text().as_str(), err.text().as_str()), ("out in\n", "err\n"), "{user}");
        }
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}
