//! Where extracted entries land: every check of the extraction rules (see the
//! `archive` module docs) in one place for both formats, so a zip and a tar
//! cannot differ in what they let through; and the limits they count against.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use super::error::{ArchiveError, io_err, lossy};

/// How much an archive may expand to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of file contents.
    pub max_bytes: u64,
    /// Entries of any kind.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_bytes: 4 << 30, max_entries: 1_000_000 }
    }
}

/// What an extraction wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
}

/// The relative path an entry name stands for: `/` and `.` components
/// dropped, `..` refused. `None` for the archive root itself.
pub(super) fn clean_name(name: &[u8]) -> Result<Option<PathBuf>, ArchiveError> {
    let unsafe_path = || ArchiveError::UnsafePath(String::from_utf8_lossy(name).into_owned());
    if name.contains(&0) {
        return Err(unsafe_path());
    }
    let mut out = PathBuf::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(unsafe_path()),
            p => out.push(std::ffi::OsStr::from_bytes(p)),
        }
    }
    Ok(if out.as_os_str().is_empty() { None } else { Some(out) })
}

/// Regular files keep their execute bits; the owner can always read and write.
fn file_mode(mode: u32) -> u32 {
    (mode & 0o755) | 0o600
}

fn dir_mode(mode: u32) -> u32 {
    (mode & 0o755) | 0o700
}

/// Where entries land: the checks of the `archive` module docs, in one place
/// for both formats.
pub(super) struct Sink {
    dest: PathBuf,
    pub(super) limits: Limits,
    stats: Stats,
    /// Relative paths known to be real directories (they never stop being one:
    /// no entry may replace a directory).
    dirs: HashSet<PathBuf>,
    /// Symlinks made, re-checked at the end.
    links: Vec<PathBuf>,
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
    TooLarge,
}

/// Copies at most `limit` bytes; more is an error, not a truncation.
fn copy_limited(src: &mut dyn Read, dst: &mut dyn Write, limit: u64) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        total += n as u64;
        if total > limit {
            return Err(CopyError::TooLarge);
        }
        dst.write_all(buf.get(..n).unwrap_or_default()).map_err(CopyError::Write)?;
    }
}

impl Sink {
    pub(super) fn new(dest: &Path, limits: Limits) -> Result<Self, ArchiveError> {
        fs::create_dir_all(dest).map_err(io_err(format!("cannot create {}", dest.display())))?;
        Ok(Self { dest: dest.to_path_buf(), limits, stats: Stats::default(), dirs: HashSet::new(), links: Vec::new() })
    }

    pub(super) fn count(&mut self) -> Result<(), ArchiveError> {
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries(self.limits.max_entries));
        }
        Ok(())
    }

    /// Makes sure every directory above `rel` is a real directory, creating
    /// missing ones.
    fn parents(&mut self, rel: &Path) -> Result<(), ArchiveError> {
        let Some(parent) = rel.parent() else { return Ok(()) };
        let mut cur = PathBuf::new();
        for c in parent.components() {
            cur.push(c);
            if self.dirs.contains(&cur) {
                continue;
            }
            let full = self.dest.join(&cur);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(ArchiveError::Conflict { path: lossy(rel), why: "a parent is a file or a symlink" });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&full).map_err(io_err(format!("cannot create {}", full.display())))?;
                    fs::set_permissions(&full, fs::Permissions::from_mode(0o755))
                        .map_err(io_err(format!("cannot chmod {}", full.display())))?;
                }
                Err(e) => return Err(io_err(format!("cannot stat {}", full.display()))(e)),
            }
            self.dirs.insert(cur.clone());
        }
        Ok(())
    }

    /// Unlinks whatever non-directory has the entry's name (never following
    /// it); a directory there is a conflict.
    fn clear(&self, rel: &Path, full: &Path) -> Result<(), ArchiveError> {
        match fs::symlink_metadata(full) {
            Ok(m) if m.is_dir() => Err(ArchiveError::Conflict { path: lossy(rel), why: "a directory is in the way" }),
            Ok(_) => fs::remove_file(full).map_err(io_err(format!("cannot replace {}", full.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("cannot stat {}", full.display()))(e)),
        }
    }

    pub(super) fn dir(&mut self, rel: &Path, mode: u32) -> Result<(), ArchiveError> {
        self.count()?;
        self.parents(rel)?;
        let full = self.dest.join(rel);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&full).map_err(io_err(format!("cannot replace {}", full.display())))?;
                fs::create_dir(&full).map_err(io_err(format!("cannot create {}", full.display())))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&full).map_err(io_err(format!("cannot create {}", full.display())))?;
            }
            Err(e) => return Err(io_err(format!("cannot stat {}", full.display()))(e)),
        }
        fs::set_permissions(&full, fs::Permissions::from_mode(dir_mode(mode)))
            .map_err(io_err(format!("cannot chmod {}", full.display())))?;
        self.dirs.insert(rel.to_path_buf());
        Ok(())
    }

    pub(super) fn file(
        &mut self,
        rel: &Path,
        mode: u32,
        mtime: Option<SystemTime>,
        src: &mut dyn Read,
        corrupt: &dyn Fn(io::Error) -> ArchiveError,
    ) -> Result<(), ArchiveError> {
        self.count()?;
        self.parents(rel)?;
        let full = self.dest.join(rel);
        self.clear(rel, &full)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&full)
            .map_err(io_err(format!("cannot create {}", full.display())))?;
        let room = self.limits.max_bytes.saturating_sub(self.stats.bytes);
        let n = copy_limited(src, &mut f, room).map_err(|e| match e {
            CopyError::Read(e) => corrupt(e),
            CopyError::Write(e) => io_err(format!("cannot write {}", full.display()))(e),
            CopyError::TooLarge => ArchiveError::TooLarge(self.limits.max_bytes),
        })?;
        self.stats.bytes += n;
        f.set_permissions(fs::Permissions::from_mode(file_mode(mode)))
            .map_err(io_err(format!("cannot chmod {}", full.display())))?;
        if let Some(t) = mtime {
            // Cosmetic: a filesystem that refuses times still has the file.
            let _ = f.set_modified(t);
        }
        Ok(())
    }

    pub(super) fn symlink(&mut self, rel: &Path, target: &[u8]) -> Result<(), ArchiveError> {
        self.count()?;
        let bad =
            || ArchiveError::UnsafeLink { path: lossy(rel), target: String::from_utf8_lossy(target).into_owned() };
        if target.is_empty() || target.contains(&0) || target.starts_with(b"/") {
            return Err(bad());
        }
        self.parents(rel)?;
        let start = rel.parent().unwrap_or(Path::new(""));
        if !self.resolves_inside(start, Path::new(std::ffi::OsStr::from_bytes(target))) {
            return Err(bad());
        }
        let full = self.dest.join(rel);
        self.clear(rel, &full)?;
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &full)
            .map_err(io_err(format!("cannot create symlink {}", full.display())))?;
        self.links.push(rel.to_path_buf());
        Ok(())
    }

    pub(super) fn hard_link(&mut self, rel: &Path, target: &[u8]) -> Result<(), ArchiveError> {
        self.count()?;
        let Some(target_rel) = clean_name(target)? else {
            return Err(ArchiveError::Conflict { path: lossy(rel), why: "hard link to the archive root" });
        };
        // The source must be a regular file reached through real directories.
        let mut cur = self.dest.clone();
        for c in target_rel.parent().unwrap_or(Path::new("")).components() {
            cur.push(c);
            if !fs::symlink_metadata(&cur).is_ok_and(|m| m.is_dir()) {
                return Err(ArchiveError::Conflict { path: lossy(rel), why: "hard link target is not in the archive" });
            }
        }
        let src = self.dest.join(&target_rel);
        if !fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
            return Err(ArchiveError::Conflict { path: lossy(rel), why: "hard link target is not a regular file" });
        }
        if target_rel == rel {
            return Ok(());
        }
        self.parents(rel)?;
        let full = self.dest.join(rel);
        self.clear(rel, &full)?;
        fs::hard_link(&src, &full).map_err(io_err(format!("cannot link {}", full.display())))
    }

    /// Whether `target`, read from the directory `start` (relative to the
    /// destination), stays inside the destination, following the symlinks
    /// already on disk (at most 40, as the kernel does).
    fn resolves_inside(&self, start: &Path, target: &Path) -> bool {
        let mut stack: Vec<OsString> = start.components().map(|c| c.as_os_str().to_os_string()).collect();
        let mut queue: VecDeque<OsString> = target.components().map(|c| c.as_os_str().to_os_string()).collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match Path::new(&c).components().next() {
                Some(Component::Normal(_)) => {}
                Some(Component::CurDir) | None => continue,
                Some(Component::ParentDir) => {
                    if stack.pop().is_none() {
                        return false;
                    }
                    continue;
                }
                Some(Component::RootDir | Component::Prefix(_)) => return false,
            }
            stack.push(c);
            let mut full = self.dest.clone();
            full.extend(&stack);
            if fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink()) {
                hops += 1;
                let Ok(link) = fs::read_link(&full) else { return false };
                if hops > 40 || link.is_absolute() {
                    return false;
                }
                stack.pop();
                for part in link.components().rev() {
                    queue.push_front(part.as_os_str().to_os_string());
                }
            }
        }
        true
    }

    /// Re-checks every symlink against the final tree.
    pub(super) fn finish(self) -> Result<Stats, ArchiveError> {
        for rel in &self.links {
            let full = self.dest.join(rel);
            if !fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink()) {
                continue;
            }
            let target = fs::read_link(&full).map_err(io_err(format!("cannot read {}", full.display())))?;
            let start = rel.parent().unwrap_or(Path::new(""));
            if target.is_absolute() || !self.resolves_inside(start, &target) {
                return Err(ArchiveError::UnsafeLink { path: lossy(rel), target: lossy(&target) });
            }
        }
        Ok(self.stats)
    }
}
