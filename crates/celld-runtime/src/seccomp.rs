//! The default seccomp allowlist of unprivileged containers: Garden's (itself
//! Docker's) profile in spirit. Anything not listed fails with EPERM; `clone`
//! may not create namespaces; `clone3` answers ENOSYS so libc falls back to
//! `clone`, whose flags can be inspected. io_uring is refused (its submissions
//! bypass this filter, and it has been a steady source of kernel exploits;
//! Docker's default profile blocks it too), and so are `AF_VSOCK` sockets,
//! which reach the hypervisor rather than anything on the container network.

const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_getfd",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "send",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    "arch_prctl",
    "chroot",
    "sethostname",
    "setdomainname",
];

/// CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

const ENOSYS: u32 = 38;

/// Address family of virtio/VMware sockets to the hypervisor and its guests.
const AF_VSOCK: u64 = 40;
/// Above every address family Linux has (AF_MAX is 46 in 6.x).
const AF_LIMIT: u64 = 64;

/// The unprivileged policy compiled to a BPF program, once per helper: an
/// allowlist (anything else fails with EPERM), `clone` without namespace
/// flags, `clone3` failing with ENOSYS (so libc falls back to `clone`), and
/// `personality` only for the harmless personas. Compiling it in every
/// container (as libcontainer does for a spec's `linux.seccomp`) cost ~2 ms of
/// each create; the container's init installs this copy instead.
pub fn compiled() -> Result<&'static [libc::sock_filter], String> {
    static BPF: std::sync::OnceLock<Result<Vec<libc::sock_filter>, String>> = std::sync::OnceLock::new();
    BPF.get_or_init(compile).as_deref().map_err(Clone::clone)
}

fn compile() -> Result<Vec<libc::sock_filter>, String> {
    use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
    let err = |what: &str, e: libseccomp::error::SeccompError| format!("seccomp {what}: {e}");
    if ScmpArch::native() != ScmpArch::X8664 {
        return Err("the seccomp profile is for x86_64 only".into());
    }
    let mut ctx = ScmpFilterContext::new(ScmpAction::Errno(1)).map_err(|e| err("context", e))?;
    // no_new_privs is set by the runtime before init runs.
    ctx.set_ctl_nnp(false).map_err(|e| err("nnp", e))?;
    for name in ALLOWED {
        // Names this libseccomp does not know are syscalls this kernel lacks.
        if let Ok(sc) = ScmpSyscall::from_name(name) {
            ctx.add_rule(ScmpAction::Allow, sc).map_err(|e| err(name, e))?;
        }
    }
    let clone = ScmpSyscall::from_name("clone").map_err(|e| err("clone", e))?;
    let no_namespaces = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(CLONE_NAMESPACE_FLAGS), 0);
    ctx.add_rule_conditional(ScmpAction::Allow, clone, &[no_namespaces]).map_err(|e| err("clone", e))?;
    // Every address family but AF_VSOCK (which falls through to EPERM). Not a
    // "not equal" test: the kernel truncates the family to an int, so
    // 0x1_0000_0028 would pass it and still be AF_VSOCK. Below it, compared
    // as a whole 64-bit value; above it, each family by value.
    let socket = ScmpSyscall::from_name("socket").map_err(|e| err("socket", e))?;
    let below = ScmpArgCompare::new(0, ScmpCompareOp::Less, AF_VSOCK);
    ctx.add_rule_conditional(ScmpAction::Allow, socket, &[below]).map_err(|e| err("socket", e))?;
    for family in AF_VSOCK + 1..AF_LIMIT {
        let cmp = ScmpArgCompare::new(0, ScmpCompareOp::Equal, family);
        ctx.add_rule_conditional(ScmpAction::Allow, socket, &[cmp]).map_err(|e| err("socket", e))?;
    }
    let clone3 = ScmpSyscall::from_name("clone3").map_err(|e| err("clone3", e))?;
    ctx.add_rule(ScmpAction::Errno(ENOSYS as i32), clone3).map_err(|e| err("clone3", e))?;
    let personality = ScmpSyscall::from_name("personality").map_err(|e| err("personality", e))?;
    for persona in [0, 8, 0xffff_ffff] {
        let cmp = ScmpArgCompare::new(0, ScmpCompareOp::Equal, persona);
        ctx.add_rule_conditional(ScmpAction::Allow, personality, &[cmp]).map_err(|e| err("personality", e))?;
    }
    // libseccomp writes the program to a file descriptor; a pipe holds it.
    let (r, w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    ctx.export_bpf(&w).map_err(|e| err("export", e))?;
    drop(w);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut bytes).map_err(|e| format!("read bpf: {e}"))?;
    let size = std::mem::size_of::<libc::sock_filter>();
    Ok(bytes
        .chunks_exact(size)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Installs the compiled filter on the calling thread (no_new_privs must be set).
pub fn install(filter: &[libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    let rc =
        unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog as *const libc::sock_fprog) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_compiles_to_bpf() {
        let bpf = compiled().unwrap();
        assert!(bpf.len() > 50 && bpf.len() < u16::MAX as usize, "{} instructions", bpf.len());
    }

    #[test]
    fn namespace_syscalls_are_not_allowed() {
        for denied in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "ptrace",
            "bpf",
            "kexec_load",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            // Allowed only with a condition on the address family.
            "socket",
        ] {
            assert!(!ALLOWED.contains(&denied), "{denied} must not be allowed");
        }
        assert_eq!(CLONE_NAMESPACE_FLAGS & libc::CLONE_NEWUSER as u64, libc::CLONE_NEWUSER as u64);
        assert_eq!(CLONE_NAMESPACE_FLAGS & libc::CLONE_NEWNS as u64, libc::CLONE_NEWNS as u64);
        assert_eq!(CLONE_NAMESPACE_FLAGS & libc::CLONE_NEWCGROUP as u64, libc::CLONE_NEWCGROUP as u64);
    }
}
