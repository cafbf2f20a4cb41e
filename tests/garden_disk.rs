//! Disk limits the kernel enforces (btrfs qgroups on the daemon's store),
//! against a real celld: writes stop at the limit for both scopes,
//! privileged and not; limits and usage are reported and survive a restart;
//! nothing is left behind. Run as root with `make test`.

mod common;

use celld::garden::types::*;
use common::{Daemon, garden_type, rt, run, sh, spec};

const MIB: u64 = 1 << 20;

fn limited(handle: &str, byte_hard: u64, scope: u64, privileged: bool) -> ContainerSpec {
    let mut s = spec(handle);
    s.privileged = privileged;
    s.limits.disk_limits = DiskLimits { byte_hard, scope, inode_hard: 200_000, ..Default::default() };
    s
}

/// Writes up to 300 MiB to /big and returns the file's size.
async fn fill(d: &Daemon, h: &str) -> u64 {
    let (_, out, err) = run(d, h, sh("dd if=/dev/zero of=/big bs=1M count=300 2>&1; sync; wc -c < /big")).await;
    out.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("no size: {out} {err}"))
}

/// The bytes celld counts for the tiny rootfs (a container's total minus its own).
async fn rootfs_bytes(d: &Daemon) -> u64 {
    let h = d.handle("disk-measure");
    d.client.create(&spec(&h)).await.unwrap();
    let s = d.client.metrics(&h).await.unwrap().disk_stat;
    d.client.destroy(&h).await.unwrap();
    s.total_bytes_used - s.exclusive_bytes_used
}

#[test]
fn writes_stop_at_the_limit_for_every_scope_privileged_or_not() {
    require_host!();
    let d = Daemon::start();
    assert!(d.log().contains("disk limits: btrfs qgroups on"), "{}", d.log());
    rt().block_on(async {
        let rootfs = rootfs_bytes(&d).await;
        assert!(rootfs > MIB, "{rootfs}");
        for privileged in [false, true] {
            let h = d.handle(&format!("disk-excl-{privileged}"));
            d.client.create(&limited(&h, 100 * MIB, 1, privileged)).await.unwrap();
            let size = fill(&d, &h).await;
            assert!((90 * MIB..=101 * MIB).contains(&size), "exclusive, privileged {privileged}: {size}");
            d.client.destroy(&h).await.unwrap();

            // Scope total: the rootfs counts, so only ~50 MiB are left to write.
            let h = d.handle(&format!("disk-total-{privileged}"));
            d.client.create(&limited(&h, rootfs + 50 * MIB, 0, privileged)).await.unwrap();
            let size = fill(&d, &h).await;
            assert!((40 * MIB..=51 * MIB).contains(&size), "total, privileged {privileged}: {size}");
            d.client.destroy(&h).await.unwrap();
        }
    });
    d.assert_no_leaks();
}

#[test]
fn limits_and_usage_are_reported_and_survive_a_restart() {
    require_host!();
    let mut d = Daemon::start();
    let h = d.handle("disk-restart");
    let limits = DiskLimits { byte_hard: 100 * MIB, scope: 1, inode_hard: 200_000, ..Default::default() };
    rt().block_on(async {
        let mut s = spec(&h);
        s.limits.disk_limits = limits.clone();
        d.client.create(&s).await.unwrap();
        assert_eq!(d.client.current_disk_limits(&h).await.unwrap(), limits);
        let before = d.client.metrics(&h).await.unwrap().disk_stat;
        let (code, _, err) = run(&d, &h, sh("dd if=/dev/zero of=/keep bs=1M count=30 2>&1 && sync")).await;
        assert_eq!(code, 0, "{err}");
        let after = d.client.metrics(&h).await.unwrap().disk_stat;
        assert!(after.exclusive_bytes_used >= before.exclusive_bytes_used + 30 * MIB, "{before:?} → {after:?}");
        assert!(after.total_bytes_used > after.exclusive_bytes_used + MIB, "the rootfs counts: {after:?}");
        assert!(after.exclusive_inodes_used > before.exclusive_inodes_used, "{before:?} → {after:?}");

        d.restart();
        assert_eq!(d.client.current_disk_limits(&h).await.unwrap(), limits, "limits kept");
        let (_, out, _) = run(&d, &h, sh("wc -c < /keep")).await;
        assert_eq!(out.trim(), (30 * MIB).to_string(), "the data is kept");
        // The limit still holds: 30 MiB written, ~70 left.
        let size = fill(&d, &h).await;
        assert!((60 * MIB..=71 * MIB).contains(&size), "{size}");
        let cap = d.client.capacity().await.unwrap();
        let store = nix::sys::statvfs::statvfs(&d.store()).unwrap();
        assert_eq!(cap.disk_in_bytes, store.blocks() * store.fragment_size(), "capacity is the store's");
        assert_eq!(d.qgroups().len(), 1, "{:?}", d.qgroups());
        d.client.destroy(&h).await.unwrap();
        assert!(d.subvolumes().is_empty(), "{:?}", d.subvolumes());
        // The daemon's own commit lets btrfs drop the qgroup within seconds
        // (without it, at the next periodic commit, 30 s on).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !d.qgroups().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(d.qgroups().is_empty(), "stale qgroups: {:?}", d.qgroups());
    });
    d.assert_no_leaks();
}

#[test]
fn failed_creates_leave_no_subvolume() {
    require_host!();
    let d = Daemon::start();
    let h = d.handle("disk-too-small");
    rt().block_on(async {
        let err = d.client.create(&limited(&h, MIB, 0, false)).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&h) && msg.contains("smaller than the rootfs"), "{msg}");
        assert!(d.client.list(&Default::default()).await.unwrap().is_empty());

        // A create that fails after its subvolume is made (here: binding a
        // file over a directory fails as the container starts) removes it.
        let h = d.handle("disk-late-failure");
        let mut s = limited(&h, 100 * MIB, 1, false);
        s.bind_mounts =
            vec![BindMount { src_path: "/etc/hostname".into(), dst_path: "/bin".into(), mode: 0, origin: 0 }];
        let err = d.client.create(&s).await.unwrap_err();
        assert!(err.to_string().contains("/bin"), "{err}");
        assert!(d.subvolumes().is_empty(), "{:?}", d.subvolumes());
    });
    d.assert_no_leaks();
}

#[test]
fn without_a_mechanism_limits_fail_unless_allowed() {
    require_host!();
    let strict = Daemon::start_with(&["--disk-limits", "none"]);
    assert!(strict.log().contains("disk limits: none"), "{}", strict.log());
    let lax = Daemon::start_with(&["--disk-limits", "none", "--allow-unenforced-disk-limits"]);
    rt().block_on(async {
        let h = strict.handle("disk-none");
        let err = strict.client.create(&limited(&h, 100 * MIB, 1, false)).await.unwrap_err();
        assert!(err.to_string().contains("--allow-unenforced-disk-limits"), "{err} ({})", garden_type(&err));
        // No limit, no problem; and Diego's inode limit alone never fails a create.
        strict.client.create(&spec(&h)).await.unwrap();
        let h2 = strict.handle("disk-none-inodes");
        let mut s = spec(&h2);
        s.limits.disk_limits.inode_hard = 200_000;
        strict.client.create(&s).await.unwrap();
        for c in [&h, &h2] {
            strict.client.destroy(c).await.unwrap();
        }

        let h = lax.handle("disk-lax");
        lax.client.create(&limited(&h, 100 * MIB, 1, false)).await.unwrap();
        lax.client.destroy(&h).await.unwrap();
    });
    assert!(!strict.store().join("containers").exists(), "no store without a mechanism");
    strict.assert_no_leaks();
    lax.assert_no_leaks();
}

#[test]
fn the_store_and_its_loop_device_go_with_the_daemon() {
    require_host!();
    let d = Daemon::start();
    let loops = d.loop_devices();
    assert_eq!(loops.len(), 1, "{loops:?}");
    let dev = loops[0].trim_start_matches("/dev/").to_string();
    let dir = d.dir.display().to_string();
    drop(d);
    // Autoclear frees the device once the (lazily) unmounted store is gone.
    let backing = format!("/sys/block/{dev}/loop/backing_file");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&backing).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let left = std::fs::read_to_string(&backing).unwrap_or_default();
    assert!(!left.contains(&dir), "loop device {dev} still backs {left}");
}
