//! Layer tars into directories overlay takes as lower layers, and the
//! flattening of many layers into one.
//!
//! Layer tars are untrusted. `tar`'s `unpack_in` already contains them: names
//! lose a leading `/`; a parent that resolves (through a symlink made by an
//! earlier entry) outside the layer dir is refused; a hard link must resolve
//! to an existing file inside; a file replaces, never writes through, a link
//! of its name. On top of that, a `..` component (which `unpack_in` silently
//! skips) is refused, device nodes and fifos are skipped, and xattrs are not
//! unpacked (a layer must not set overlay's own `trusted.overlay.*`).
//! Unlike app packages (celld-lifecycle's archive), owners, set-id bits and
//! absolute symlinks are kept: they resolve inside the container's root.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("not a tar archive: {0}")]
    NotTar(String),
    #[error("unsafe entry {0:?} (a `..` component)")]
    UnsafePath(String),
    #[error("entry {entry:?}: {source}")]
    Entry { entry: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io { path: p.to_path_buf(), source }
}

/// Reads a layer blob, gzipped or plain (told by its first bytes).
pub fn layer_reader(file: std::fs::File) -> Result<Box<dyn Read>, UnpackError> {
    let mut r = std::io::BufReader::new(file);
    let head = std::io::BufRead::fill_buf(&mut r).map_err(|e| UnpackError::NotTar(e.to_string()))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) { Box::new(flate2::read::MultiGzDecoder::new(r)) } else { Box::new(r) })
}

/// Unpacks a layer tar into `dest` (a new, empty directory), turning
/// whiteouts into what overlay reads.
pub fn unpack_layer(reader: impl Read, dest: &Path) -> Result<(), UnpackError> {
    let not_tar = |e: std::io::Error| UnpackError::NotTar(e.to_string());
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut entries_seen = 0usize;
    for entry in archive.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        entries_seen += 1;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = entry.path().map_err(|source| UnpackError::Entry { entry: name.clone(), source })?.into_owned();
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::ParentDir => return Err(UnpackError::UnsafePath(name)),
                Component::Normal(p) => rel.push(p),
                _ => {}
            }
        }
        let kind = entry.header().entry_type();
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            tracing::debug!(entry = %name, "layer device node or fifo skipped");
            continue;
        }
        let file_name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let dir = dest.join(parent);
            // The parent must stay inside: make it as tar would, then check.
            ensure_inside(dest, &dir, &name)?;
            if file_name == OPAQUE.as_bytes() {
                set_xattr(&dir, OPAQUE_XATTR, b"y").map_err(io(&dir))?;
            } else {
                let target = dir.join(OsStr::from_bytes(hidden));
                remove_any(&target).map_err(io(&target))?;
                mknod_whiteout(&target).map_err(io(&target))?;
            }
            continue;
        }
        // tar's messages put the cause in the error's source.
        let chained = |e: std::io::Error| UnpackError::Entry {
            entry: name.clone(),
            source: std::io::Error::new(e.kind(), crate::error::chain(&e)),
        };
        entry.unpack_in(dest).map_err(chained)?;
    }
    if entries_seen == 0 {
        // An empty tar is legal (two zero blocks); random bytes fail above.
        tracing::debug!(dest = %dest.display(), "empty layer");
    }
    Ok(())
}

/// Creates `dir` (and parents) under `root`, never through a symlink that
/// leaves it: each existing component is resolved and checked first.
fn ensure_inside(root: &Path, dir: &Path, entry: &str) -> Result<(), UnpackError> {
    let outside = || UnpackError::Entry {
        entry: entry.into(),
        source: std::io::Error::other("its directory resolves outside the layer"),
    };
    let canon_root = root.canonicalize().map_err(io(root))?;
    let rel = dir.strip_prefix(root).map_err(|_| outside())?;
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(_) => {
                let canon = cur.canonicalize().map_err(io(&cur))?;
                if !canon.starts_with(&canon_root) || !canon.is_dir() {
                    return Err(outside());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur).map_err(io(&cur))?;
            }
            Err(e) => return Err(io(&cur)(e)),
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::other("NUL in path"))
}

/// Overlay's whiteout: a character device 0:0.
fn mknod_whiteout(p: &Path) -> std::io::Result<()> {
    let c = cstr(p)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub(crate) fn is_whiteout(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let (c, n) = (cstr(p)?, CString::new(name).map_err(|_| std::io::Error::other("NUL in xattr name"))?);
    // SAFETY: valid C strings; value pointer and length from one slice.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

pub(crate) fn is_opaque(p: &Path) -> bool {
    let (Ok(c), Ok(n)) = (cstr(p), CString::new(OPAQUE_XATTR)) else { return false };
    let mut buf = [0u8; 4];
    // SAFETY: valid C strings; the buffer's pointer and length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    r == 1 && buf[0] == b'y'
}

/// Bytes allocated (as `du` counts them, each hard-linked file once) and
/// inodes used below `root`, `root` included: a layer's size in the store,
/// and a rootfs's or a container's writes in disk metrics.
pub fn tree_usage(root: &Path) -> (u64, u64) {
    let mut stack = vec![root.to_path_buf()];
    let mut linked = HashSet::new();
    let (mut bytes, mut inodes) = (0, 0);
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if !m.is_dir() && m.nlink() > 1 && !linked.insert((m.dev(), m.ino())) {
            continue;
        }
        inodes += 1;
        bytes += m.blocks() * 512;
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    (bytes, inodes)
}

/// Bytes of `dir` (see [`tree_usage`]).
pub fn disk_usage(dir: &Path) -> u64 {
    tree_usage(dir).0
}

/// Bytes a flattened tree adds: its directories and links; its files are
/// hard links to the layers' (counted there).
pub fn flat_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.is_dir() || m.nlink() <= 1 {
            total += m.blocks() * 512;
        }
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// Applies `layers` (bottom first) into the new directory `dest`: files are
/// hard links to the layers' (read-only, never written) files, whiteouts
/// delete, an opaque directory drops what lower layers put there.
pub fn flatten(layers: &[PathBuf], dest: &Path) -> Result<(), UnpackError> {
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    for layer in layers {
        apply(layer, dest)?;
    }
    Ok(())
}

fn apply(src: &Path, dst: &Path) -> Result<(), UnpackError> {
    let m = std::fs::symlink_metadata(src).map_err(io(src))?;
    copy_meta(&m, dst)?;
    for e in std::fs::read_dir(src).map_err(io(src))? {
        let e = e.map_err(io(src))?;
        let (s, d) = (e.path(), dst.join(e.file_name()));
        let sm = std::fs::symlink_metadata(&s).map_err(io(&s))?;
        if is_whiteout(&sm) {
            remove_any(&d).map_err(io(&d))?;
        } else if sm.is_dir() {
            let existing = std::fs::symlink_metadata(&d).ok();
            if is_opaque(&s) || existing.as_ref().is_some_and(|m| !m.is_dir()) {
                remove_any(&d).map_err(io(&d))?;
            }
            if !d.exists() {
                std::fs::create_dir(&d).map_err(io(&d))?;
            }
            apply(&s, &d)?;
        } else {
            remove_any(&d).map_err(io(&d))?;
            if sm.file_type().is_symlink() {
                let target = std::fs::read_link(&s).map_err(io(&s))?;
                std::os::unix::fs::symlink(&target, &d).map_err(io(&d))?;
                std::os::unix::fs::lchown(&d, Some(sm.uid()), Some(sm.gid())).map_err(io(&d))?;
            } else {
                std::fs::hard_link(&s, &d).map_err(io(&d))?;
            }
        }
    }
    Ok(())
}

fn copy_meta(m: &std::fs::Metadata, dst: &Path) -> Result<(), UnpackError> {
    std::os::unix::fs::lchown(dst, Some(m.uid()), Some(m.gid())).map_err(io(dst))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(m.mode() & 0o7777)).map_err(io(dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    /// Tar bytes with names written raw (tar's builder refuses `..`).
    #[derive(Default)]
    struct RawTar(Vec<u8>);

    impl RawTar {
        fn entry(mut self, kind: tar::EntryType, name: &str, link: &str, data: &[u8]) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1);
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(data);
            self.0.resize(self.0.len().div_ceil(512) * 512, 0);
            self
        }
        fn file(self, name: &str, data: &[u8]) -> Self {
            self.entry(tar::EntryType::Regular, name, "", data)
        }
        fn finish(mut self) -> Vec<u8> {
            self.0.extend_from_slice(&[0; 1024]);
            self.0
        }
    }

    struct Case(PathBuf);
    impl Case {
        fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "celld-image-unpack-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(p.join("layer")).unwrap();
            std::fs::write(p.join("canary"), "untouched").unwrap();
            Case(p)
        }
        fn unpack(&self, tar: &[u8]) -> Result<(), UnpackError> {
            unpack_layer(tar, &self.0.join("layer"))
        }
        fn contained(&self) {
            assert_eq!(std::fs::read_to_string(self.0.join("canary")).unwrap(), "untouched");
            let names: Vec<_> = std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names.len(), 2, "{names:?}");
        }
    }
    impl Drop for Case {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn whiteouts_and_opaque_dirs_become_overlays() {
        let c = Case::new();
        let tar = RawTar::default()
            .entry(tar::EntryType::Directory, "d/", "", b"")
            .file("d/.wh..wh..opq", b"")
            .file("d/.wh.gone", b"")
            .file("/abs/.wh.x", b"")
            .finish();
        c.unpack(&tar).unwrap();
        let l = c.0.join("layer");
        assert!(is_opaque(&l.join("d")));
        assert!(is_whiteout(&std::fs::symlink_metadata(l.join("d/gone")).unwrap()));
        assert!(is_whiteout(&std::fs::symlink_metadata(l.join("abs/x")).unwrap()));
        assert!(!l.join("d/.wh..wh..opq").exists());
        c.contained();
    }

    #[test]
    fn untrusted_entries_stay_inside() {
        for (what, tar) in [
            ("parent component", RawTar::default().file("../canary", b"pwned").finish()),
            ("parent inside", RawTar::default().file("a/../../canary", b"pwned").finish()),
            (
                "symlink out then through it",
                RawTar::default().entry(tar::EntryType::Symlink, "up", "..", b"").file("up/canary", b"pwned").finish(),
            ),
            (
                "absolute symlink then through it",
                RawTar::default()
                    .entry(tar::EntryType::Symlink, "up", "/tmp", b"")
                    .file("up/celld-image-probe", b"x")
                    .finish(),
            ),
            (
                "whiteout through a symlink",
                RawTar::default().entry(tar::EntryType::Symlink, "up", "..", b"").file("up/.wh.canary", b"").finish(),
            ),
            ("hard link out", RawTar::default().entry(tar::EntryType::Link, "h", "../canary", b"").finish()),
        ] {
            let c = Case::new();
            let err = c.unpack(&tar).unwrap_err();
            eprintln!("{what}: {err}");
            assert!(!err.to_string().contains("numeric field"), "{what}: {err}");
            c.contained();
            assert!(!Path::new("/tmp/celld-image-probe").exists());
        }
    }

    #[test]
    fn devices_are_skipped_and_non_tars_fail() {
        let c = Case::new();
        let tar = RawTar::default().entry(tar::EntryType::Char, "dev/null", "", b"").file("ok", b"1").finish();
        c.unpack(&tar).unwrap();
        assert!(!c.0.join("layer/dev/null").exists());
        assert_eq!(std::fs::read(c.0.join("layer/ok")).unwrap(), b"1");
        let c = Case::new();
        let err = c.unpack(b"definitely not a tar archive, only some words that are not 512 bytes").unwrap_err();
        assert!(matches!(err, UnpackError::NotTar(_)), "{err}");
        c.contained();
    }

    #[test]
    fn flatten_applies_whiteouts_and_opaque_dirs() {
        let c = Case::new();
        let (a, b, f) = (c.0.join("a"), c.0.join("b"), c.0.join("f"));
        unpack_layer(&RawTar::default().file("x", b"x").file("d/old", b"o").file("keep", b"k").finish()[..], {
            std::fs::create_dir(&a).unwrap();
            &a
        })
        .unwrap();
        std::fs::create_dir(&b).unwrap();
        let top = RawTar::default().file(".wh.x", b"").file("d/.wh..wh..opq", b"").file("d/new", b"n").finish();
        unpack_layer(&top[..], &b).unwrap();
        flatten(&[a, b], &f).unwrap();
        assert!(!f.join("x").exists() && !f.join("d/old").exists());
        assert_eq!(std::fs::read(f.join("d/new")).unwrap(), b"n");
        assert_eq!(std::fs::read(f.join("keep")).unwrap(), b"k");
        assert!(!std::fs::symlink_metadata(f.join("d/new")).unwrap().file_type().is_char_device());
    }
}
