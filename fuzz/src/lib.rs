//! What the fuzz targets share: a fresh scratch directory per input and the
//! checks that an extraction stayed inside its destination.
//!
//! `make fuzz` runs the unpacking targets as `nobody` with `TMPDIR` on a
//! scratch directory of their own, so even a containment bug could only write
//! where `nobody` may.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// `root/` holds `dest/` (where an archive is unpacked), `outside/` with a
/// sentinel file, and nothing else; removed on drop.
pub struct Scratch {
    pub root: PathBuf,
    pub dest: PathBuf,
}

impl Scratch {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("celld-fuzz-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("outside")).expect("scratch dir");
        fs::write(root.join("outside/sentinel"), b"untouched").expect("sentinel");
        let dest = root.join("dest");
        Self { root, dest }
    }

    /// Panics (a fuzz finding) if anything other than `dest/` and the
    /// untouched sentinel is under `root`, or if a symlink in `dest` resolves
    /// outside it while `links_inside` is asked for.
    pub fn check(&self, links_inside: bool) {
        let mut names: Vec<String> = fs::read_dir(&self.root)
            .expect("read scratch root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(names == ["dest", "outside"] || names == ["outside"], "entries outside dest: {names:?}");
        let outside: Vec<_> = fs::read_dir(self.root.join("outside")).expect("read outside").collect();
        assert_eq!(outside.len(), 1, "a new entry in outside/");
        assert_eq!(fs::read(self.root.join("outside/sentinel")).expect("sentinel"), b"untouched");
        let sentinel = fs::symlink_metadata(self.root.join("outside/sentinel")).expect("sentinel");
        assert!(sentinel.file_type().is_file(), "sentinel replaced");
        if links_inside && self.dest.exists() {
            let dest = fs::canonicalize(&self.dest).expect("canonical dest");
            walk(&self.dest, &mut |p, meta| {
                if meta.file_type().is_symlink() {
                    if let Ok(real) = fs::canonicalize(p) {
                        assert!(real.starts_with(&dest), "{} resolves outside dest to {}", p.display(), real.display());
                    }
                }
            });
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Entries may have lost their write bits; give them back first.
        make_removable(&self.root);
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn make_removable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_removable(&e.path());
            }
        }
    }
}

/// Every entry under `dir`, symlinks not followed.
pub fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(meta) = fs::symlink_metadata(&p) else { continue };
        f(&p, &meta);
        if meta.file_type().is_dir() {
            walk(&p, f);
        }
    }
}

/// An nft statement built from client input may hold only numbers,
/// addresses, keywords and the filtered log prefix: no quote but the prefix's
/// two, no `;`, newline, brace or other character that could end the rule.
pub fn assert_nft_safe(stmt: &str) {
    assert!(
        stmt.chars().all(|c| c.is_ascii_alphanumeric() || " .-_:\"".contains(c)),
        "unsafe character in nft statement {stmt:?}"
    );
    assert!(stmt.matches('"').count() <= 2, "extra quote in {stmt:?}");
    assert!(stmt.ends_with("accept"), "{stmt:?}");
}
