//! Temporary files beside a download's destination: `get_to_file` writes there
//! and renames only once the content is verified, so the destination never
//! holds unverified bytes and a cancelled download leaves nothing behind.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::BlobstoreError;

/// A temporary file removed on drop unless kept (also when the future is cancelled).
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    pub(crate) keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn temp_path_for(dest: &Path) -> Result<PathBuf, BlobstoreError> {
    let name = dest.file_name().ok_or_else(|| BlobstoreError::Io {
        path: dest.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "destination has no file name"),
    })?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.{}.part", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
    Ok(dest.with_file_name(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_path_is_beside_dest() {
        let t = temp_path_for(Path::new("/x/y/droplet.tgz")).unwrap();
        assert_eq!(t.parent(), Some(Path::new("/x/y")));
        assert!(t.file_name().unwrap().to_string_lossy().starts_with(".droplet.tgz."));
        assert!(temp_path_for(Path::new("/")).is_err());
    }
}
