//! The uid-shifted variant of a tree for user-namespaced containers: root-owned
//! entries become owned by the host id that container root maps to.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The host id container uid/gid 0 maps to (Garden's unprivileged map).
pub const ROOT_HOST_ID: u32 = 4294967294;

#[derive(Debug, thiserror::Error)]
pub enum ShiftError {
    #[error("shifting owners under {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("copying {src} failed: {detail}")]
    Copy { src: PathBuf, detail: String },
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> ShiftError + '_ {
    move |source| ShiftError::Io { path: p.to_path_buf(), source }
}

/// Chowns every root-owned entry under `dir` (links themselves, never their
/// targets) to [`ROOT_HOST_ID`], keeping set-id bits that chown clears.
pub fn shift_root_owner(dir: &Path) -> Result<(), ShiftError> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).map_err(io(&p))?;
        let uid = (m.uid() == 0).then_some(ROOT_HOST_ID);
        let gid = (m.gid() == 0).then_some(ROOT_HOST_ID);
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&p, uid, gid).map_err(io(&p))?;
            if !m.file_type().is_symlink() && m.mode() & 0o6000 != 0 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m.mode() & 0o7777)).map_err(io(&p))?;
            }
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p).map_err(io(&p))? {
                stack.push(e.map_err(io(&p))?.path());
            }
        }
    }
    Ok(())
}

/// Copies `src` to the new directory `dst` (`cp -a`: owners, modes, xattrs
/// such as overlay's opaque mark, whiteout devices; reflinks where the
/// filesystem can) and shifts it. `dst` is removed on failure.
pub fn shifted_copy(src: &Path, dst: &Path) -> Result<(), ShiftError> {
    let res = std::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg("-T")
        .arg(src.join("."))
        .arg(dst)
        .output()
        .map_err(|e| ShiftError::Copy { src: src.to_path_buf(), detail: e.to_string() })
        .and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                let detail = String::from_utf8_lossy(&o.stderr).trim().to_string();
                Err(ShiftError::Copy { src: src.to_path_buf(), detail })
            }
        })
        .and_then(|()| shift_root_owner(dst));
    if res.is_err() {
        let _ = std::fs::remove_dir_all(dst);
    }
    res
}
