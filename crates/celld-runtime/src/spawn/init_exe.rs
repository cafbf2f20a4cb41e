//! The container init binary (`celld-init`, static), which a container's first
//! process execs once it is set up.
//!
//! Why exec rather than go on as a copy of the helper: a cloned child keeps a
//! copy-on-write image of the helper, and every page the helper writes later
//! (its stack, its heap, for the next create) becomes the child's own, about
//! 270 KiB per container, plus page tables for all of it. A fresh static init
//! holds only its own few pages.
//!
//! The binary is copied once into a sealed memfd, which every init execs: no
//! container can write to it through `/proc/1/exe` (as runc's CVE-2019-5736
//! did to the host's runc), replacing the file on disk does not affect running
//! helpers, and its pages are shared by every init.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// The file name beside the celld binary.
pub const INIT_BINARY: &str = "celld-init";

/// A sealed, executable copy of the init binary.
#[derive(Debug)]
pub struct InitExe {
    fd: OwnedFd,
    argv0: CString,
}

impl InitExe {
    /// The init binary beside the running executable, if there is one.
    pub fn beside_current_exe() -> Option<PathBuf> {
        let path = std::env::current_exe().ok()?.parent()?.join(INIT_BINARY);
        path.is_file().then_some(path)
    }

    /// Copies `path` into a sealed memfd, refusing a binary that needs a
    /// dynamic loader (a container's rootfs may have none).
    pub fn load(path: &Path) -> Result<InitExe, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        check_static_elf(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let fd = unsafe { memfd(libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | libc::MFD_EXEC) }
            // Kernels before 6.3 do not know MFD_EXEC (memfds are executable there).
            .or_else(|_| unsafe { memfd(libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) })
            .map_err(|e| format!("memfd for the init binary: {e}"))?;
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, &bytes).map_err(|e| format!("copy the init binary: {e}"))?;
        let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(format!("seal the init binary: {}", std::io::Error::last_os_error()));
        }
        Ok(InitExe { fd: file.into(), argv0: CString::from(c"garden-init") })
    }

    /// Replaces the calling process with init serving `listen_fd`; returns
    /// only the reason it could not. For the container's first process, after
    /// its set-up: the descriptor it execs is close-on-exec, `listen_fd` is
    /// made inheritable here.
    pub fn exec(&self, listen_fd: RawFd) -> String {
        let Ok(fd_arg) = CString::new(listen_fd.to_string()) else {
            return "bad descriptor number".into();
        };
        unsafe {
            if libc::fcntl(listen_fd, libc::F_SETFD, 0) != 0 {
                return format!("make init's socket inheritable: {}", std::io::Error::last_os_error());
            }
            let argv = [self.argv0.as_ptr() as *mut libc::c_char, fd_arg.as_ptr() as *mut _, std::ptr::null_mut()];
            unsafe extern "C" {
                static environ: *const *mut libc::c_char;
            }
            libc::execveat(self.fd.as_raw_fd(), c"".as_ptr(), argv.as_ptr(), environ, libc::AT_EMPTY_PATH);
        }
        format!("exec container init: {}", std::io::Error::last_os_error())
    }
}

unsafe fn memfd(flags: libc::c_uint) -> std::io::Result<OwnedFd> {
    let fd = unsafe { libc::memfd_create(c"garden-init".as_ptr(), flags) };
    if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd) }) }
}

/// An x86-64/aarch64 little-endian ELF64 executable without a program
/// interpreter (`PT_INTERP`), i.e. static or static-pie.
fn check_static_elf(b: &[u8]) -> Result<(), String> {
    const PT_INTERP: u32 = 3;
    if b.get(..4) != Some(b"\x7fELF".as_slice()) || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as usize);
    let u64_at = |o: usize| b.get(o..o + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return Err("truncated ELF header".into());
    };
    for i in 0..phnum {
        let at = usize::try_from(phoff).ok().and_then(|o| o.checked_add(i * phentsize));
        let Some(p_type) = at.and_then(|o| b.get(o..o + 4)).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        else {
            return Err("truncated program headers".into());
        };
        if p_type == PT_INTERP {
            return Err("dynamically linked (build it static: make lifecycle)".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_binary_and_a_non_elf_file_are_refused() {
        // This test binary is dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(check_static_elf(&me).unwrap_err().contains("dynamically linked"));
        assert!(check_static_elf(b"#!/bin/sh\n").unwrap_err().contains("not a 64-bit"));
        assert!(check_static_elf(&me[..0x30]).unwrap_err().contains("truncated"));
    }
}
