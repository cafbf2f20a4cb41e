//! Writing the droplet and the build cache: gzipped tars in `tar -czf OUT -C
//! DIR .` layout with deterministic headers, symlinks stored and never
//! followed (the app's files are not trusted either).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::{ArchiveError, io_err};

/// A gzipped tar written in `tar -czf` layout: `./` first, then each item
/// and, for directories, everything under it (sorted by name).
pub struct TgzWriter {
    tar: tar::Builder<flate2::write::GzEncoder<BufWriter<File>>>,
    out: PathBuf,
}

impl TgzWriter {
    /// Creates (or truncates) `out`, and writes the `./` entry with the
    /// metadata of `root`.
    pub fn create(out: &Path, root: &Path) -> Result<Self, ArchiveError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(out)
            .map_err(io_err(format!("cannot create {}", out.display())))?;
        let gz =
            flate2::write::GzEncoder::new(BufWriter::with_capacity(256 * 1024, file), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
        let mut w = Self { tar, out: out.to_path_buf() };
        let meta = fs::metadata(root).map_err(io_err(format!("cannot stat {}", root.display())))?;
        w.append_dir(b"./", &meta)?;
        Ok(w)
    }

    fn write_err(&self) -> impl FnOnce(io::Error) -> ArchiveError + use<> {
        io_err(format!("cannot write {}", self.out.display()))
    }

    /// Sets the entry name, through a GNU long-name record when it does not
    /// fit the header.
    fn set_name(&mut self, header: &mut tar::Header, name: &[u8], link: bool) -> Result<(), ArchiveError> {
        const FIELD: usize = 100;
        if name.len() > FIELD {
            let mut long = tar::Header::new_gnu();
            let marker = b"././@LongLink";
            if let Some(gnu) = long.as_gnu_mut() {
                if let Some(slot) = gnu.name.get_mut(..marker.len()) {
                    slot.copy_from_slice(marker);
                }
            }
            long.set_mode(0o644);
            long.set_uid(0);
            long.set_gid(0);
            long.set_mtime(0);
            long.set_size(name.len() as u64 + 1);
            long.set_entry_type(tar::EntryType::new(if link { b'K' } else { b'L' }));
            long.set_cksum();
            let data: Vec<u8> = name.iter().copied().chain(std::iter::once(0)).collect();
            let err = self.write_err();
            self.tar.append(&long, data.as_slice()).map_err(err)?;
        }
        let slot = if link { &mut header.as_old_mut().linkname } else { &mut header.as_old_mut().name };
        slot.fill(0);
        let n = name.len().min(FIELD);
        if let (Some(dst), Some(src)) = (slot.get_mut(..n), name.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(())
    }

    fn append_dir(&mut self, name: &[u8], meta: &fs::Metadata) -> Result<(), ArchiveError> {
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(meta, tar::HeaderMode::Deterministic);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        self.set_name(&mut h, name, false)?;
        h.set_cksum();
        let err = self.write_err();
        self.tar.append(&h, io::empty()).map_err(err)
    }

    /// Appends `src` as `name` (e.g. `./app`), recursively, never following
    /// symlinks. Sockets, fifos and devices are skipped (a note on stderr).
    pub fn append_tree(&mut self, name: impl AsRef<[u8]>, src: &Path) -> Result<(), ArchiveError> {
        let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(src.to_path_buf(), name.as_ref().to_vec())];
        while let Some((path, name)) = stack.pop() {
            let meta = fs::symlink_metadata(&path).map_err(io_err(format!("cannot stat {}", path.display())))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                let mut dir_name = name.clone();
                dir_name.push(b'/');
                self.append_dir(&dir_name, &meta)?;
                for child in sorted_children(&path)?.into_iter().rev() {
                    let mut child_name = dir_name.clone();
                    child_name.extend_from_slice(child.as_bytes());
                    stack.push((path.join(&child), child_name));
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                self.set_name(&mut h, &name, false)?;
                self.set_name(&mut h, target.as_os_str().as_bytes(), true)?;
                h.set_cksum();
                let err = self.write_err();
                self.tar.append(&h, io::empty()).map_err(err)?;
            } else if ft.is_file() {
                // O_NONBLOCK: if the file was swapped for a fifo, opening must not hang.
                let file = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(&path)
                    .map_err(io_err(format!("cannot open {}", path.display())))?;
                let meta = file.metadata().map_err(io_err(format!("cannot stat {}", path.display())))?;
                if !meta.is_file() {
                    continue;
                }
                let size = meta.len();
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(size);
                self.set_name(&mut h, &name, false)?;
                h.set_cksum();
                // Exactly `size` bytes even if the file changes under us.
                let data = file.take(size).chain(io::repeat(0)).take(size);
                let err = self.write_err();
                self.tar.append(&h, data).map_err(err)?;
            } else {
                eprintln!(
                    "Skipping {} in {}: not a file, directory or symlink",
                    String::from_utf8_lossy(&name),
                    self.out.display()
                );
            }
        }
        Ok(())
    }

    /// Ends the archive and flushes it to disk.
    pub fn finish(self) -> Result<(), ArchiveError> {
        let err = || io_err(format!("cannot write {}", self.out.display()));
        let gz = self.tar.into_inner().map_err(err())?;
        let buf = gz.finish().map_err(err())?;
        let file = buf.into_inner().map_err(|e| err()(e.into_error()))?;
        file.sync_all().map_err(err())
    }
}

/// `tar -czf out -C dir .`: the whole of `dir`, entries named `./…`.
pub fn pack_dir_tgz(dir: &Path, out: &Path) -> Result<(), ArchiveError> {
    let mut w = TgzWriter::create(out, dir)?;
    for child in sorted_children(dir)? {
        w.append_tree([b"./", child.as_bytes()].concat(), &dir.join(&child))?;
    }
    w.finish()
}

/// A deterministic tgz of `src`, entries named relative to it, symlinks kept
/// (same bytes for the same files, so the daemon recognises unchanged built-in
/// buildpacks by their SHA-256, and cellctl uploads the same package twice).
pub fn pack_dir(src: &Path, dest: &Path) -> std::io::Result<()> {
    let io = |e: std::io::Error| std::io::Error::new(e.kind(), format!("packing {}: {e}", src.display()));
    let f = std::fs::File::create(dest).map_err(io)?;
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(f, flate2::Compression::default()));
    b.mode(tar::HeaderMode::Deterministic);
    b.follow_symlinks(false);
    // append_dir_all walks in directory order; sort for stable bytes.
    let mut paths = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io)? {
            let p = e.map_err(io)?.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p.clone());
            }
            paths.push(p);
        }
    }
    paths.sort();
    for p in paths {
        let rel = p.strip_prefix(src).map_err(std::io::Error::other)?;
        b.append_path_with_name(&p, rel).map_err(io)?;
    }
    b.into_inner().and_then(|gz| gz.finish()).map_err(io)?;
    Ok(())
}

fn sorted_children(dir: &Path) -> Result<Vec<OsString>, ArchiveError> {
    let mut children: Vec<OsString> = fs::read_dir(dir)
        .map_err(io_err(format!("cannot read {}", dir.display())))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(format!("cannot read {}", dir.display())))?;
    children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(children)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{Limits, extract};
    use crate::testutil::{TempDir, tgz_names};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lifecycle_archive_packs_like_tar_czf() {
        let t = TempDir::new();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("b/deep")).unwrap();
        fs::write(src.join("a.txt"), "a").unwrap();
        fs::write(src.join("b/run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("b/run"), fs::Permissions::from_mode(0o700)).unwrap();
        let long = "n".repeat(150);
        fs::write(src.join("b/deep").join(&long), "long").unwrap();
        std::os::unix::fs::symlink("../a.txt", src.join("b/link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("abs-link")).unwrap();
        let out = t.path().join("out.tgz");
        pack_dir_tgz(&src, &out).unwrap();
        assert_eq!(
            tgz_names(&out),
            [
                "./".to_string(),
                "./a.txt".into(),
                "./abs-link".into(),
                "./b/".into(),
                "./b/deep/".into(),
                format!("./b/deep/{long}"),
                "./b/link".into(),
                "./b/run".into(),
            ]
        );
        // Deterministic headers; symlinks kept as symlinks.
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(File::open(&out).unwrap()));
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()), (0, 0, 1153704088));
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            match name.as_str() {
                "./b/run" => assert_eq!(h.mode().unwrap(), 0o755),
                "./a.txt" => assert_eq!(h.mode().unwrap(), 0o644),
                "./abs-link" => assert_eq!(e.link_name().unwrap().unwrap(), Path::new("/etc/passwd")),
                _ => {}
            }
        }
        // Packing twice gives the same bytes.
        let again = t.path().join("again.tgz");
        pack_dir_tgz(&src, &again).unwrap();
        assert_eq!(fs::read(&out).unwrap(), fs::read(&again).unwrap());
        // And it extracts back (without the absolute link, which extraction refuses).
        fs::remove_file(src.join("abs-link")).unwrap();
        pack_dir_tgz(&src, &out).unwrap();
        let back = t.path().join("back");
        extract(&out, &back, &Limits::default()).unwrap();
        assert_eq!(fs::read(back.join("b/deep").join(&long)).unwrap(), b"long");
        assert_eq!(fs::read(back.join("b/link")).unwrap(), b"a");
    }
}
