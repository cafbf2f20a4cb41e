//! Hostile runtime: see tests/hostile.rs. The container runtime (issue 17,
//! defects 2, 5 and 14): no container init outside a cgroup after a crash,
//! the rootfs cache, and what the seccomp filter and pid limit refuse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use celld::garden::client::{Address, Client};
use celld::garden::types::{BindMount, ProcessSpec};

use crate::common::{self, Daemon, rt, run, sh, spec};

/// The pids controller's file for a container of `d`, on v1 or v2.
fn pids_max(d: &Daemon, handle: &str) -> String {
    let rel = Path::new(&celld::runtime::cgroup_parent(&d.depot())).join(handle).join("pids.max");
    let file = common::cgroup_roots()
        .into_iter()
        .map(|root| root.join(&rel))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no pids.max for {handle}"));
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

#[test]
fn default_pids_limit_applies_to_containers_that_set_none() {
    crate::require_host!();
    let d = Daemon::start_with(&["--default-pids-limit", "77"]);
    let (a, b) = (d.handle("pids-default"), d.handle("pids-own"));
    rt().block_on(async {
        d.client.create(&spec(&a)).await.unwrap();
        let mut own = spec(&b);
        own.limits.pid_limits.max = 10;
        d.client.create(&own).await.unwrap();
        assert_eq!(pids_max(&d, &a), "77");
        assert_eq!(pids_max(&d, &b), "10");
        d.client.destroy(&a).await.unwrap();
        d.client.destroy(&b).await.unwrap();
    });
    d.assert_no_leaks();
    // Without the flag there is no limit, as in Garden.
    let d = Daemon::start();
    let c = d.handle("pids-none");
    rt().block_on(async {
        d.client.create(&spec(&c)).await.unwrap();
        assert_eq!(pids_max(&d, &c), "max");
        d.client.destroy(&c).await.unwrap();
    });
    d.assert_no_leaks();
}

/// Calls what the seccomp filter must refuse and prints each errno (0 = it
/// worked). Arguments are invalid on purpose, so that without the filter the
/// kernel answers something other than EPERM (EFAULT, EBADF) and nothing is
/// set up.
const PROBE: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
static void report(const char *what, long rc) { printf("%s %d\n", what, rc < 0 ? errno : 0); }
int main(void) {
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, NULL));
    report("io_uring_enter", syscall(SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0));
    report("io_uring_register", syscall(SYS_io_uring_register, -1, 0, NULL, 0));
    report("vsock", syscall(SYS_socket, AF_VSOCK, SOCK_STREAM, 0));
    /* The kernel reads the family as an int: upper bits must not get around the filter. */
    report("vsock_high_bits", syscall(SYS_socket, 0x100000000L | AF_VSOCK, SOCK_STREAM, 0));
    report("inet", syscall(SYS_socket, AF_INET, SOCK_DGRAM, 0));
    report("unix", syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0));
    return 0;
}
"#;

/// Builds the probe as a static binary in `dir` (the tiny rootfs has no libc);
/// `None` if this machine has no C toolchain (`make deps` installs one).
fn build_probe(dir: &Path) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join("probe.c");
    std::fs::write(&src, PROBE).unwrap();
    let out = dir.join("probe");
    let ok = std::process::Command::new("cc")
        .args(["-static", "-O", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(out)
}

fn probe_results(text: &str) -> BTreeMap<String, i32> {
    text.lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_string(), v.trim().parse().unwrap())).collect()
}

#[test]
fn unprivileged_containers_get_no_io_uring_and_no_vsock() {
    crate::require_host!();
    let d = Daemon::start();
    let probe_dir = d.dir.join("probe");
    let Some(_) = build_probe(&probe_dir) else {
        eprintln!("skipped: needs cc and a static libc (make deps)");
        return;
    };
    let (u, p) = (d.handle("seccomp-u"), d.handle("seccomp-p"));
    const EPERM: i32 = 1;
    rt().block_on(async {
        for (h, privileged) in [(&u, false), (&p, true)] {
            let mut s = spec(h);
            s.privileged = privileged;
            s.bind_mounts = vec![BindMount {
                src_path: probe_dir.display().to_string(),
                dst_path: "/probe".into(),
                mode: 0,
                origin: 0,
            }];
            d.client.create(&s).await.unwrap();
        }
        let probe = ProcessSpec { path: "/probe/probe".into(), user: "root".into(), ..Default::default() };
        let (code, out, err) = run(&d, &u, probe.clone()).await;
        assert_eq!(code, 0, "{err}");
        let r = probe_results(&out);
        for call in ["io_uring_setup", "io_uring_enter", "io_uring_register", "vsock", "vsock_high_bits"] {
            assert_eq!(r[call], EPERM, "{call} in an unprivileged container: {out}");
        }
        assert_eq!((r["inet"], r["unix"]), (0, 0), "ordinary sockets still work: {out}");
        // A privileged container has no filter: the kernel itself answers.
        let (code, out, err) = run(&d, &p, probe).await;
        assert_eq!(code, 0, "{err}");
        let r = probe_results(&out);
        for call in ["io_uring_setup", "io_uring_enter", "io_uring_register", "vsock"] {
            assert_ne!(r[call], EPERM, "{call} in a privileged container: {out}");
        }
        d.client.destroy(&u).await.unwrap();
        d.client.destroy(&p).await.unwrap();
    });
    d.assert_no_leaks();
}

/// Defect 2: the daemon (and so the helper) SIGKILLed while 20 creates are in
/// flight, 50 times at different points. Whatever was cut short, no process of
/// the daemon's is left that no container record accounts for: a container's
/// first process joins its cgroups before it may become init, and dies rather
/// than become init when the helper is gone.
#[test]
fn a_daemon_killed_during_concurrent_creates_strands_no_process() {
    crate::require_host!();
    let mut d = Daemon::start_with(&["--no-network"]);
    for round in 0..50u64 {
        let creates: Vec<_> = (0..20)
            .map(|i| {
                let (h, socket) = (d.handle(&format!("k{round}-{i}")), d.socket.clone());
                std::thread::spawn(move || {
                    let _ = rt().block_on(Client::new(Address::Unix(socket)).create(&spec(&h)));
                })
            })
            .collect();
        // 5..=75 ms: from the first clones to the last records.
        std::thread::sleep(Duration::from_millis(5 + round * 17 % 71));
        d.kill();
        for c in creates {
            let _ = c.join();
        }
        d.restart();
        // A child killed with its helper may still be exiting: give it its
        // time (a stray init never goes away).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !d.stray_processes().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let strays = d.stray_processes();
        assert!(strays.is_empty(), "round {round}: processes no record accounts for: {strays:?}");
        rt().block_on(async {
            for h in d.client.list(&BTreeMap::new()).await.unwrap() {
                assert_eq!(run(&d, &h, sh("echo alive")).await.1, "alive\n", "round {round}: {h}");
                d.client.destroy(&h).await.unwrap();
            }
        });
        d.assert_no_leaks();
    }
}

/// A copy of the tiny rootfs in `dir/real`, owned by host root, and a link to
/// it at `dir/link`.
fn rootfs_copy(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (real, link) = (dir.join("real"), dir.join("link"));
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(common::rootfs_dir().join("tiny"))
        .arg(&real)
        .status()
        .unwrap()
        .success();
    assert!(ok, "copying the tiny rootfs");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    (real, link)
}

fn rootfs_spec(handle: &str, rootfs: &Path) -> celld::garden::types::ContainerSpec {
    let mut s = spec(handle);
    s.rootfs = rootfs.display().to_string();
    s
}

/// Defect 5: a rootfs named through a symlink is the tree it points to,
/// uid-shifted like any other: root inside owns it and may write `/etc`.
#[test]
fn a_rootfs_given_as_a_symlink_is_shifted_like_its_target() {
    crate::require_host!();
    let d = Daemon::start_with(&["--no-network"]);
    let (_, link) = rootfs_copy(&d.dir.join("rootfs-link"));
    let h = d.handle("rootfs-link");
    rt().block_on(async {
        d.client.create(&rootfs_spec(&h, &link)).await.unwrap();
        let (code, out, err) = run(&d, &h, sh("stat -c '%u %g' /etc /bin/busybox && touch /etc/written")).await;
        assert_eq!((code, out.as_str()), (0, "0 0\n0 0\n"), "{err}");
        d.client.destroy(&h).await.unwrap();
    });
    d.assert_no_leaks();
}

/// The uid-shifted copies in the daemon's rootfs cache.
fn cached_copies(d: &Daemon) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(d.depot().join("rootfs-cache"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !n.ends_with(".source"))
        .collect();
    names.sort();
    names
}

/// Defect 5: a change inside an existing rootfs reaches the containers created
/// after it (within the cache's 2 s re-check), the containers made before keep
/// what they had, and copies no container uses go: when superseded, with their
/// last container, and at start-up.
#[test]
fn the_rootfs_cache_follows_changes_and_keeps_no_unused_copies() {
    crate::require_host!();
    let mut d = Daemon::start_with(&["--no-network"]);
    let (real, _) = rootfs_copy(&d.dir.join("rootfs-change"));
    let marker = real.join("etc/marker");
    // Each change keeps the size: only the times tell it apart.
    let change = |text: &str| {
        std::fs::write(&marker, text).unwrap();
        // Past the cache's re-check interval.
        std::thread::sleep(Duration::from_millis(2500));
    };
    let cat = sh("cat /etc/marker");
    let (a, b, c) = (d.handle("cache-a"), d.handle("cache-b"), d.handle("cache-c"));
    change("one\n");
    rt().block_on(async {
        d.client.create(&rootfs_spec(&a, &real)).await.unwrap();
        assert_eq!(run(&d, &a, cat.clone()).await.1, "one\n");
        change("two\n");
        d.client.create(&rootfs_spec(&b, &real)).await.unwrap();
        assert_eq!(run(&d, &b, cat.clone()).await.1, "two\n");
        assert_eq!(run(&d, &a, cat.clone()).await.1, "one\n", "a running container keeps its rootfs");
        assert_eq!(cached_copies(&d).len(), 2, "both copies are in use");
        // The superseded copy goes with its last container; the current one stays.
        d.client.destroy(&a).await.unwrap();
        assert_eq!(cached_copies(&d).len(), 1);
        d.client.destroy(&b).await.unwrap();
        assert_eq!(cached_copies(&d).len(), 1, "the current copy is kept for the next create");
        // A copy nothing uses goes as soon as a newer one replaces it.
        let before = cached_copies(&d);
        change("six\n");
        d.client.create(&rootfs_spec(&c, &real)).await.unwrap();
        assert_eq!(run(&d, &c, cat.clone()).await.1, "six\n");
        let after = cached_copies(&d);
        assert_eq!(after.len(), 1);
        assert_ne!(after, before);
        d.client.destroy(&c).await.unwrap();
    });
    // At start-up, copies nothing uses that are no longer current go.
    d.kill();
    std::fs::write(&marker, "ten\n").unwrap();
    d.restart();
    assert_eq!(cached_copies(&d), Vec::<String>::new());
    d.assert_no_leaks();
}
