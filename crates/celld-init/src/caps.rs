//! Capability sets as Garden gives them: the container's set is the bounding,
//! permitted, effective and inheritable set of its root; a non-root process
//! keeps at most [`NON_ROOT_MAX`] in its bounding and inheritable sets (and,
//! as any non-root user, none effective). Raw `capset`/`prctl` calls that do
//! not allocate, so they may run between fork and exec.

/// Garden's ceiling for non-root processes, privileged or not: the
/// unprivileged set plus CAP_SYS_ADMIN (mask a82425fb).
pub const NON_ROOT_MAX: u64 = 0xa824_25fb;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Garden's capability set for unprivileged containers (mask a80425fb).
pub const UNPRIVILEGED_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, indexed by its number.
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Garden's set for privileged containers: every capability up to
/// CAP_AUDIT_READ (mask 3fffffffff); the newer ones (CAP_PERFMON, CAP_BPF,
/// CAP_CHECKPOINT_RESTORE) are not Garden's.
pub const PRIVILEGED_CAPS: &[&str] = ALL_CAPS.split_at(38).0;

const VERSION_3: u32 = 0x2008_0522;

/// The bit mask of capability names (as in an OCI spec).
pub fn bits(names: impl IntoIterator<Item = String>) -> Result<u64, String> {
    let mut bits = 0u64;
    for name in names {
        let bit = ALL_CAPS.iter().position(|c| *c == name).ok_or_else(|| format!("unknown capability {name}"))?;
        bits |= 1 << bit;
    }
    Ok(bits)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Drops every capability outside `keep` from the bounding set, up to `last`
/// (the kernel's highest).
fn drop_bounding(keep: u64, last: u32) -> Result<(), (u32, i32)> {
    for cap in 0..=last.min(63) {
        if keep & (1 << cap) == 0 && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err((cap, errno()));
        }
    }
    Ok(())
}

fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), i32> {
    let header = CapHeader { version: VERSION_3, pid: 0 };
    let data = [
        CapData { effective: effective as u32, permitted: permitted as u32, inheritable: inheritable as u32 },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } != 0 {
        return Err(errno());
    }
    Ok(())
}

fn capget() -> Result<(u64, u64, u64), i32> {
    let mut header = CapHeader { version: VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) } != 0 {
        return Err(errno());
    }
    let join = |f: fn(&CapData) -> u32| f(&data[0]) as u64 | (f(&data[1]) as u64) << 32;
    Ok((join(|d| d.effective), join(|d| d.permitted), join(|d| d.inheritable)))
}

/// Leaves exactly `bits` in the bounding, permitted, effective and
/// inheritable sets (as Garden's root has them: its processes inherit the set
/// across exec), and none ambient.
pub fn set_all(bits: u64, last: u32) -> Result<(), String> {
    drop_bounding(bits, last)
        .map_err(|(cap, e)| format!("drop capability {cap}: {}", std::io::Error::from_raw_os_error(e)))?;
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) };
    capset(bits, bits, bits).map_err(|e| format!("capset: {}", std::io::Error::from_raw_os_error(e)))
}

/// For a process about to become a non-root user: its bounding and
/// inheritable sets shrink to [`NON_ROOT_MAX`] (changing to the user then
/// clears permitted and effective). Returns errno on failure.
pub fn limit_for_non_root() -> Result<(), i32> {
    // Numbers past the kernel's last capability read as EINVAL: stop there.
    for cap in 0..64u32 {
        let bit = cap as libc::c_ulong;
        match unsafe { libc::prctl(libc::PR_CAPBSET_READ, bit, 0, 0, 0) } {
            r if r < 0 => break,
            1 if NON_ROOT_MAX & (1 << cap) == 0 && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, bit, 0, 0, 0) } != 0 => {
                return Err(errno());
            }
            _ => {}
        }
    }
    let (effective, permitted, inheritable) = capget()?;
    capset(effective & NON_ROOT_MAX, permitted & NON_ROOT_MAX, inheritable & NON_ROOT_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_become_bits() {
        assert_eq!(bits(["CAP_CHOWN".to_string(), "CAP_KILL".to_string()]), Ok(1 | 1 << 5));
        assert!(bits(["CAP_NOPE".to_string()]).is_err());
    }

    #[test]
    fn garden_masks() {
        let names = |l: &[&str]| bits(l.iter().map(|s| s.to_string())).unwrap();
        let unprivileged = names(UNPRIVILEGED_CAPS);
        assert_eq!(unprivileged, 0xa804_25fb);
        assert_eq!(unprivileged | names(&["CAP_SYS_ADMIN"]), NON_ROOT_MAX);
        assert_eq!(names(PRIVILEGED_CAPS), 0x3f_ffff_ffff);
    }
}
