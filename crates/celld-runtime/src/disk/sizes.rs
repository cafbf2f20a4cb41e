//! Sizes of read-only rootfs layers, for disk metrics and for limits of
//! scope total (the rootfs counts against them).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use celld_image::unpack::tree_usage;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sizes of the read-only rootfs layers, measured once per layer: a layer
/// never changes under its path, and walking it on every metrics call would
/// cost a whole tree walk each time. A layer used in place (privileged
/// containers) is measured again if its top directory changes.
#[derive(Default)]
pub struct RootfsSizes {
    known: Mutex<HashMap<PathBuf, Measured>>,
}

/// A layer's top directory's modification time, and its bytes and inodes then.
type Measured = (Option<SystemTime>, (u64, u64));

impl RootfsSizes {
    /// Bytes and inodes of `layer`.
    pub fn usage(&self, layer: &PathBuf) -> (u64, u64) {
        let stamp = std::fs::metadata(layer).and_then(|m| m.modified()).ok();
        if let Some((s, usage)) = lock(&self.known).get(layer) {
            if *s == stamp {
                return *usage;
            }
        }
        // Measured without the lock: concurrent first callers may both walk.
        let usage = tree_usage(layer);
        let mut known = lock(&self.known);
        known.insert(layer.clone(), (stamp, usage));
        usage
    }

    /// Whether no layer has been measured.
    pub fn is_empty(&self) -> bool {
        lock(&self.known).is_empty()
    }

    /// Forgets layers no container uses any more.
    pub fn retain(&self, in_use: &[PathBuf]) {
        lock(&self.known).retain(|p, _| in_use.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_sizes_are_measured_once_per_layer() {
        let dir = std::env::temp_dir().join(format!("celld-rootfs-sizes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), vec![1u8; 10_000]).unwrap();
        let sizes = RootfsSizes::default();
        let (bytes, inodes) = sizes.usage(&dir);
        assert!(bytes >= 10_000 && inodes == 3, "{bytes} {inodes}");
        // A change below the top directory is not seen: the layer is taken as read-only.
        std::fs::write(dir.join("sub/g"), vec![1u8; 10_000]).unwrap();
        assert_eq!(sizes.usage(&dir), (bytes, inodes));
        sizes.retain(&[]);
        let again = sizes.usage(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(again.0 > bytes && again.1 == 4, "{again:?}");
    }
}
