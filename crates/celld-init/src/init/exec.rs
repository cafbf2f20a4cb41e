//! Starting a process in the container: its id, finding the executable as
//! runc would, and fork+exec with pipes or a pty, rlimits, working directory
//! and user. Everything that allocates happens before fork.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::sys::{reset_child_signals, set_nonblocking};
use crate::initproto::{ErrorKind, SpawnRequest};
use crate::users::User;

/// A random version-4 GUID, as Garden gives processes that name no id.
pub fn random_guid() -> String {
    let mut b = [0u8; 16];
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 16 {
        // Entropy is unavailable only in broken environments; stay unique anyway.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        b = t.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the program as runc would: a path with a slash is taken as is, a bare
/// name is looked up in the process's PATH.
pub fn resolve_executable(path: &str, env: &[String], cwd: &str) -> Result<PathBuf, (ErrorKind, String)> {
    if path.is_empty() {
        return Err((ErrorKind::Invalid, "process spec has no path".into()));
    }
    if path.contains('/') {
        let p = Path::new(cwd).join(path);
        return match std::fs::metadata(&p) {
            Ok(_) => Ok(p),
            Err(_) => Err((
                ErrorKind::ExecutableNotFound,
                format!("exec: \"{path}\": stat {path}: no such file or directory"),
            )),
        };
    }
    let search = env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("");
    search
        .split(':')
        .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(path))
        .find(|p| is_executable(p))
        .ok_or_else(|| (ErrorKind::ExecutableNotFound, format!("exec: \"{path}\": executable file not found in $PATH")))
}

/// The environment a process gets, as runc builds it: one entry per name, in
/// the order names first appear, with the last value given (the process's
/// env comes after the container's, so it wins); HOME from the user when
/// unset or empty.
pub(super) fn final_env(env: &[String], home: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(env.len() + 1);
    let name = |e: &str| e.split_once('=').map_or(e.len(), |(k, _)| k.len());
    for e in env {
        let n = name(e);
        match out.iter_mut().find(|o| name(o) == n && o.as_bytes()[..n] == e.as_bytes()[..n]) {
            Some(o) => o.clone_from(e),
            None => out.push(e.clone()),
        }
    }
    match out.iter_mut().find(|o| o.starts_with("HOME=")) {
        Some(h) if h.len() > "HOME=".len() => {}
        Some(h) => *h = format!("HOME={home}"),
        None => out.push(format!("HOME={home}")),
    }
    out
}

pub(super) struct Child {
    pub(super) pid: i32,
    pub(super) stdout: OwnedFd,
    pub(super) stderr: Option<OwnedFd>,
    pub(super) stdin: OwnedFd,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

pub(super) fn spawn_child(
    req: &SpawnRequest,
    user: &User,
    cwd: &str,
    exe: &Path,
    env: &[String],
) -> Result<Child, String> {
    // Everything that allocates is prepared before fork.
    let exe_c = cstr(&exe.to_string_lossy())?;
    let mut argv_c = vec![cstr(&req.path)?];
    for a in &req.args {
        argv_c.push(cstr(a)?);
    }
    let env_c = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>, _>>()?;
    let argv_p: Vec<*const libc::c_char> =
        argv_c.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let env_p: Vec<*const libc::c_char> =
        env_c.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();

    let (stdin_r, stdin_w, out_r, out_w, err_pair) = if let Some((cols, rows)) = req.tty {
        let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| format!("openpty: {e}"))?;
        let master_in = pty.master.try_clone().map_err(|e| format!("dup: {e}"))?;
        let slave2 = pty.slave.try_clone().map_err(|e| format!("dup: {e}"))?;
        (pty.slave, master_in, pty.master, slave2, None)
    } else {
        let (ir, iw) = pipe()?;
        let (or, ow) = pipe()?;
        let (er, ew) = pipe()?;
        (ir, iw, or, ow, Some((er, ew)))
    };
    let (status_r, status_w) = pipe()?;
    let tty = req.tty.is_some();
    let cwd_path = PathBuf::from(cwd);

    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // Child: report any failure before exec through the status pipe.
        let fail = |stage: &str| -> ! {
            let msg = format!("{stage}: {}", std::io::Error::last_os_error());
            unsafe {
                libc::write(status_w.as_raw_fd(), msg.as_ptr().cast(), msg.len());
                libc::_exit(127)
            }
        };
        reset_child_signals();
        unsafe {
            libc::setsid();
            let err_fd = err_pair.as_ref().map_or(out_w.as_raw_fd(), |(_, w)| w.as_raw_fd());
            if tty && libc::ioctl(stdin_r.as_raw_fd(), libc::TIOCSCTTY, 0) < 0 {
                fail("set controlling terminal");
            }
            if libc::dup2(stdin_r.as_raw_fd(), 0) < 0
                || libc::dup2(out_w.as_raw_fd(), 1) < 0
                || libc::dup2(err_fd, 2) < 0
            {
                fail("dup2");
            }
        }
        // init is shielded from the OOM killer; its processes are not.
        let _ = std::fs::write("/proc/self/oom_score_adj", "0");
        for &(res, val) in &req.rlimits {
            let lim = libc::rlimit { rlim_cur: val, rlim_max: val };
            if unsafe { libc::setrlimit(res as _, &lim) } < 0 {
                fail("setrlimit");
            }
        }
        if std::fs::metadata(&cwd_path).is_err() && mkdir_all_owned(&cwd_path, user.uid, user.gid).is_err() {
            fail("create working directory");
        }
        if user.uid != 0 {
            give_stdio_to(user.uid);
            if let Err(e) = crate::caps::limit_for_non_root() {
                unsafe { *libc::__errno_location() = e };
                fail("limit capabilities");
            }
        }
        if let Err(e) = become_user(user) {
            let _ = e;
            fail("set user");
        }
        if unsafe { libc::chdir(cstr_lossy(cwd).as_ptr()) } < 0 {
            fail(&format!("chdir to {cwd}"));
        }
        unsafe {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            libc::execve(exe_c.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
        }
        fail(&format!("exec {}", exe.display()));
    }
    drop(status_w);
    drop(stdin_r);
    drop(out_w);
    let err_r = err_pair.map(|(r, w)| {
        drop(w);
        r
    });
    let mut msg = String::new();
    let _ = std::fs::File::from(status_r).read_to_string(&mut msg);
    if !msg.is_empty() {
        let mut st = 0;
        unsafe { libc::waitpid(pid, &mut st, 0) };
        return Err(msg);
    }
    for fd in [Some(&stdin_w), Some(&out_r), err_r.as_ref()].into_iter().flatten() {
        set_nonblocking(fd.as_raw_fd());
    }
    Ok(Child { pid, stdout: out_r, stderr: err_r, stdin: stdin_w })
}

/// Makes the process's pipes (or terminal) its user's, as runc does, so that
/// it can reopen them (`/dev/stdout`); the group stays. Stdio on /dev/null is
/// left alone, and a failure only means the process cannot reopen them.
pub fn give_stdio_to(uid: u32) {
    for fd in 0..3 {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0
            || st.st_uid == uid
            || (st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3))
        {
            continue;
        }
        unsafe { libc::fchown(fd, uid, u32::MAX) };
    }
}

fn cstr_lossy(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// `mkdir -p`, giving every directory it creates to the user.
pub fn mkdir_all_owned(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    while std::fs::symlink_metadata(p).is_err() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for dir in missing.iter().rev() {
        std::fs::DirBuilder::new().mode(0o755).create(dir)?;
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

pub(super) fn become_user(user: &User) -> nix::Result<()> {
    let groups: Vec<nix::unistd::Gid> = user.groups.iter().map(|&g| nix::unistd::Gid::from_raw(g)).collect();
    nix::unistd::setgroups(&groups)?;
    nix::unistd::setresgid(user.gid.into(), user.gid.into(), user.gid.into())?;
    nix::unistd::setresuid(user.uid.into(), user.uid.into(), user.uid.into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_values_win_in_the_first_place() {
        let env: Vec<String> = ["TEST=hi", "PATH=/bin", "TESTX=1", "TEST=hello", "HOME="].map(String::from).to_vec();
        assert_eq!(final_env(&env, "/home/vcap"), ["TEST=hello", "PATH=/bin", "TESTX=1", "HOME=/home/vcap"]);
        let env = vec!["HOME=/tmp".to_string()];
        assert_eq!(final_env(&env, "/root"), ["HOME=/tmp"]);
        assert_eq!(final_env(&[], "/"), ["HOME=/"]);
    }

    #[test]
    fn executable_lookup_follows_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(resolve_executable("sh", &env, "/").is_ok());
        let (kind, msg) = resolve_executable("no-such-binary-xyz", &env, "/").unwrap_err();
        assert_eq!(kind, ErrorKind::ExecutableNotFound);
        assert_eq!(msg, "exec: \"no-such-binary-xyz\": executable file not found in $PATH");
        let (kind, _) = resolve_executable("/no/such", &env, "/").unwrap_err();
        assert_eq!(kind, ErrorKind::ExecutableNotFound);
    }
}
