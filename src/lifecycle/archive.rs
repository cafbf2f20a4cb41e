//! Archives in and out of a staging.
//!
//! **In**: app packages, build caches and buildpacks arrive as zip, tar or
//! gzipped tar (told apart by their first bytes, never by name) and are
//! untrusted. Extraction writes nothing outside the destination:
//! - entry names are cleaned (leading `/` and `.` dropped, as GNU tar does) and
//!   any `..` component is refused;
//! - every directory on the way to an entry must be a real directory (not a
//!   symlink), and files are created with `O_CREAT|O_EXCL|O_NOFOLLOW` after any
//!   old file or link of that name is unlinked, so no write goes through a
//!   symlink, whichever entry made it;
//! - symlinks must resolve inside the destination, checked when created and
//!   again once every entry is out (a later link can change what an earlier
//!   one points to); absolute targets are refused;
//! - hard links must name a regular file already extracted;
//! - modes keep the execute bits but lose set-id, sticky, group and other
//!   write bits (the owner can always read and write); ownership and xattrs are
//!   ignored; devices and fifos are skipped;
//! - total size and entry count are capped ([`Limits`]).
//!
//! The daemon can use [`extract`] on the host for the same reasons.
//!
//! **Out**: the droplet and the build cache are gzipped tars in the layout of
//! `tar -czf OUT -C DIR .` (`./`, then `./app/`, …), with deterministic
//! headers (uid/gid 0, a fixed mtime, 0644/0755 modes), symlinks stored as
//! symlinks and never followed.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Zip,
    Tar,
    TarGz,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive is empty")]
    Empty,
    #[error("not a zip, tar or gzipped tar archive")]
    UnknownFormat,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("corrupt zip archive: {0}")]
    CorruptZip(String),
    #[error("corrupt tar archive: {0}")]
    CorruptTar(String),
    #[error("unsafe path in archive: {0:?}")]
    UnsafePath(String),
    #[error("symlink {path:?} -> {target:?} points outside the destination")]
    UnsafeLink { path: String, target: String },
    #[error("cannot extract {path:?}: {why}")]
    Conflict { path: String, why: &'static str },
    #[error("the archive expands to more than {0} bytes")]
    TooLarge(u64),
    #[error("the archive has more than {0} entries")]
    TooManyEntries(u64),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Io { context, source }
}

fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Tells the format from the first bytes: zip local/end/spanning signatures,
/// the gzip magic, or a tar header (the `ustar` magic, a valid header
/// checksum, or an all-zero end-of-archive block).
pub fn sniff(head: &[u8]) -> Result<Format, ArchiveError> {
    if head.is_empty() {
        return Err(ArchiveError::Empty);
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") || head.starts_with(b"PK\x07\x08") {
        return Ok(Format::Zip);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Format::TarGz);
    }
    if let Some(block) = head.get(..512) {
        if block.get(257..262) == Some(b"ustar") || block.iter().all(|&b| b == 0) || tar_checksum_ok(block) {
            return Ok(Format::Tar);
        }
    }
    Err(ArchiveError::UnknownFormat)
}

/// A v7 tar header has no magic; its checksum (bytes 148..156, octal) is the
/// sum of the header's bytes with that field read as spaces.
fn tar_checksum_ok(block: &[u8]) -> bool {
    let Some(field) = block.get(148..156) else { return false };
    let digits: Vec<u8> = field.iter().copied().skip_while(|&b| b == b' ').take_while(|b| b.is_ascii_digit()).collect();
    let Some(want) = std::str::from_utf8(&digits).ok().and_then(|s| u32::from_str_radix(s, 8).ok()) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { u32::from(b' ') } else { u32::from(b) })
        .sum();
    !digits.is_empty() && sum == want
}

/// Extracts the zip, tar or tar.gz at `archive` into `dest` (created if
/// missing), under the rules in the module docs.
pub fn extract(archive: &Path, dest: &Path, limits: &Limits) -> Result<Stats, ArchiveError> {
    let mut file = File::open(archive).map_err(io_err(format!("cannot open {}", archive.display())))?;
    let mut head = Vec::with_capacity(512);
    (&mut file).take(512).read_to_end(&mut head).map_err(io_err(format!("cannot read {}", archive.display())))?;
    let format = sniff(&head)?;
    file.seek(SeekFrom::Start(0)).map_err(io_err(format!("cannot read {}", archive.display())))?;
    let mut sink = Sink::new(dest, *limits)?;
    match format {
        Format::Zip => extract_zip(file, &mut sink)?,
        Format::Tar => extract_tar_entries(BufReader::new(file), &mut sink)?,
        Format::TarGz => extract_tar_entries(flate2::read::MultiGzDecoder::new(BufReader::new(file)), &mut sink)?,
    }
    sink.finish()
}

/// Extracts an uncompressed tar stream into `dest` (created if missing).
pub fn extract_tar<R: Read>(reader: R, dest: &Path, limits: &Limits) -> Result<Stats, ArchiveError> {
    let mut sink = Sink::new(dest, *limits)?;
    extract_tar_entries(reader, &mut sink)?;
    sink.finish()
}

fn extract_tar_entries<R: Read>(reader: R, sink: &mut Sink) -> Result<(), ArchiveError> {
    let corrupt = |e: io::Error| ArchiveError::CorruptTar(e.to_string());
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let name = entry.path_bytes().into_owned();
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().ok().and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)));
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        }
        let Some(rel) = clean_name(&name)? else { continue };
        if kind.is_dir() || (kind.is_file() && name.ends_with(b"/") && entry.size() == 0) {
            sink.dir(&rel, mode)?;
        } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            sink.file(&rel, mode, mtime, &mut entry, &|e| ArchiveError::CorruptTar(e.to_string()))?;
        } else if kind.is_symlink() {
            let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
            sink.symlink(&rel, &target)?;
        } else if kind.is_hard_link() {
            let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
            sink.hard_link(&rel, &target)?;
        } else {
            // Devices, fifos, volume labels: nothing an app needs.
            sink.count()?;
        }
    }
    Ok(())
}

fn extract_zip(file: File, sink: &mut Sink) -> Result<(), ArchiveError> {
    let corrupt = |e: zip::result::ZipError| ArchiveError::CorruptZip(e.to_string());
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(corrupt)?;
    if archive.len() as u64 > sink.limits.max_entries {
        return Err(ArchiveError::TooManyEntries(sink.limits.max_entries));
    }
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(corrupt)?;
        let name = entry.name().map_err(corrupt)?.into_owned();
        let Some(rel) = clean_name(name.as_bytes())? else { continue };
        if entry.enclosed_name().is_none() {
            return Err(ArchiveError::UnsafePath(name));
        }
        let mode = entry.unix_mode();
        let mtime = entry.last_modified().and_then(|t| {
            let days = crate::civil::days_from_civil(i64::from(t.year()), i64::from(t.month()), i64::from(t.day()));
            let secs = days * 86400 + i64::from(t.hour()) * 3600 + i64::from(t.minute()) * 60 + i64::from(t.second());
            u64::try_from(secs).ok().and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        });
        if mode.is_some_and(|m| m & 0o170000 == 0o120000) {
            let mut target = Vec::new();
            (&mut entry).take(4096).read_to_end(&mut target).map_err(|e| ArchiveError::CorruptZip(e.to_string()))?;
            sink.symlink(&rel, &target)?;
        } else if entry.is_dir() {
            sink.dir(&rel, mode.unwrap_or(0o755))?;
        } else {
            sink.file(&rel, mode.unwrap_or(0o644), mtime, &mut entry, &|e| ArchiveError::CorruptZip(e.to_string()))?;
        }
    }
    Ok(())
}

/// The relative path an entry name stands for: `/` and `.` components
/// dropped, `..` refused. `None` for the archive root itself.
fn clean_name(name: &[u8]) -> Result<Option<PathBuf>, ArchiveError> {
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

/// Where entries land: the checks of the module docs, in one place for both
/// formats.
struct Sink {
    dest: PathBuf,
    limits: Limits,
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
    fn new(dest: &Path, limits: Limits) -> Result<Self, ArchiveError> {
        fs::create_dir_all(dest).map_err(io_err(format!("cannot create {}", dest.display())))?;
        Ok(Self { dest: dest.to_path_buf(), limits, stats: Stats::default(), dirs: HashSet::new(), links: Vec::new() })
    }

    fn count(&mut self) -> Result<(), ArchiveError> {
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

    fn dir(&mut self, rel: &Path, mode: u32) -> Result<(), ArchiveError> {
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

    fn file(
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

    fn symlink(&mut self, rel: &Path, target: &[u8]) -> Result<(), ArchiveError> {
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

    fn hard_link(&mut self, rel: &Path, target: &[u8]) -> Result<(), ArchiveError> {
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
    fn finish(self) -> Result<Stats, ArchiveError> {
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
    use crate::lifecycle::testutil::{RawTar, RawZip, TempDir, tgz_names};
    use std::os::unix::fs::MetadataExt;

    /// dest = <tmp>/out, with a canary file beside it.
    struct Case {
        tmp: TempDir,
    }

    impl Case {
        fn new() -> Self {
            let tmp = TempDir::new();
            fs::write(tmp.path().join("canary"), "untouched").unwrap();
            Self { tmp }
        }
        fn dest(&self) -> PathBuf {
            self.tmp.path().join("out")
        }
        fn extract(&self, bytes: &[u8]) -> Result<Stats, ArchiveError> {
            self.extract_with(bytes, &Limits::default())
        }
        fn extract_with(&self, bytes: &[u8], limits: &Limits) -> Result<Stats, ArchiveError> {
            let a = self.tmp.path().join("archive");
            fs::write(&a, bytes).unwrap();
            extract(&a, &self.dest(), limits)
        }
        /// Nothing was written beside the destination.
        fn assert_contained(&self) {
            assert_eq!(fs::read_to_string(self.tmp.path().join("canary")).unwrap(), "untouched");
            let mut names: Vec<String> =
                fs::read_dir(self.tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            assert!(names.iter().all(|n| ["archive", "canary", "out"].contains(&n.as_str())), "{names:?}");
        }
    }

    #[test]
    fn lifecycle_archive_sniffs_formats_by_magic() {
        assert!(matches!(sniff(b""), Err(ArchiveError::Empty)));
        assert_eq!(sniff(b"PK\x03\x04rest").unwrap(), Format::Zip);
        assert_eq!(sniff(b"PK\x05\x06").unwrap(), Format::Zip);
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]).unwrap(), Format::TarGz);
        assert_eq!(sniff(&RawTar::default().file("a", b"x", 0o644).finish()).unwrap(), Format::Tar);
        assert_eq!(sniff(&[0u8; 1024]).unwrap(), Format::Tar);
        // A v7 header: no "ustar", but a valid checksum.
        let mut v7 = RawTar::default().file("a", b"x", 0o644).finish();
        v7[257..265].fill(0);
        let sum: u32 =
            v7[..512].iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) }).sum();
        v7[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert_eq!(sniff(&v7).unwrap(), Format::Tar);
        assert!(matches!(sniff(b"hello world, not an archive"), Err(ArchiveError::UnknownFormat)));
        assert!(matches!(sniff(&[7u8; 600]), Err(ArchiveError::UnknownFormat)));
    }

    #[test]
    fn lifecycle_archive_extracts_tar_tgz_and_zip_with_modes() {
        for (i, bytes) in [
            RawTar::default().dir("d/").file("d/run", b"#!/bin/sh\n", 0o4777).file("./plain", b"p", 0o600).finish(),
            RawTar::default().dir("d/").file("d/run", b"#!/bin/sh\n", 0o4777).file("./plain", b"p", 0o600).gzip(),
            RawZip::new().dir("d/").file("d/run", b"#!/bin/sh\n", 0o4777).file("plain", b"p", 0o600).finish(),
        ]
        .iter()
        .enumerate()
        {
            let c = Case::new();
            let stats = c.extract(bytes).unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(stats.bytes, 11, "case {i}");
            let run = fs::metadata(c.dest().join("d/run")).unwrap();
            assert_eq!(run.mode() & 0o7777, 0o755, "case {i}: exec kept, setuid and group/other write dropped");
            assert_eq!(fs::metadata(c.dest().join("plain")).unwrap().mode() & 0o7777, 0o600, "case {i}");
            assert_eq!(fs::read(c.dest().join("plain")).unwrap(), b"p");
            c.assert_contained();
        }
    }

    #[test]
    fn lifecycle_archive_refuses_parent_components() {
        let c = Case::new();
        let err = c.extract(&RawTar::default().file("../canary", b"pwned", 0o644).finish()).unwrap_err();
        assert!(matches!(err, ArchiveError::UnsafePath(_)), "{err}");
        let err = c.extract(&RawTar::default().file("a/../../canary", b"pwned", 0o644).gzip()).unwrap_err();
        assert!(matches!(err, ArchiveError::UnsafePath(_)), "{err}");
        let err = c.extract(&RawZip::new().file("../canary", b"pwned", 0o644).finish()).unwrap_err();
        assert!(matches!(err, ArchiveError::UnsafePath(_)), "{err}");
        c.assert_contained();
    }

    #[test]
    fn lifecycle_archive_contains_absolute_names() {
        let unique = format!("/tmp/celld-lifecycle-abs-{}", std::process::id());
        let c = Case::new();
        c.extract(&RawTar::default().file(&format!("{unique}/x"), b"in", 0o644).finish()).unwrap();
        assert!(!Path::new(&unique).exists());
        assert_eq!(fs::read(c.dest().join(&unique[1..]).join("x")).unwrap(), b"in");
        let c = Case::new();
        c.extract(&RawZip::new().file(&format!("{unique}/y"), b"in", 0o644).finish()).unwrap();
        assert!(!Path::new(&unique).exists());
        assert_eq!(fs::read(c.dest().join(&unique[1..]).join("y")).unwrap(), b"in");
        c.assert_contained();
    }

    #[test]
    fn lifecycle_archive_refuses_symlinks_out_and_writes_through_them() {
        let probe = format!("celld-lifecycle-probe-{}", std::process::id());
        for bytes in [
            RawTar::default().link("etc", "/etc", false).file(&format!("etc/{probe}"), b"x", 0o644).finish(),
            RawTar::default().link("up", "..", false).file("up/canary", b"pwned", 0o644).finish(),
            RawTar::default().link("a/b", "../../", false).finish(),
            RawZip::new().symlink("etc", "/etc").file(&format!("etc/{probe}"), b"x", 0o644).finish(),
            RawZip::new().symlink("up", "..").file("up/canary", b"pwned", 0o644).finish(),
        ] {
            let c = Case::new();
            let err = c.extract(&bytes).unwrap_err();
            assert!(matches!(err, ArchiveError::UnsafeLink { .. }), "{err}");
            assert!(!Path::new("/etc").join(&probe).exists());
            c.assert_contained();
        }
        // A symlink already in the destination is never written through.
        let c = Case::new();
        fs::create_dir_all(c.dest()).unwrap();
        std::os::unix::fs::symlink("..", c.dest().join("up")).unwrap();
        let err = c.extract(&RawTar::default().file("up/canary", b"pwned", 0o644).finish()).unwrap_err();
        assert!(matches!(err, ArchiveError::Conflict { .. }), "{err}");
        c.assert_contained();
    }

    #[test]
    fn lifecycle_archive_allows_symlinks_inside() {
        let c = Case::new();
        let bytes = RawTar::default()
            .dir("a/")
            .file("a/f", b"data", 0o644)
            .link("a/self", ".", false)
            .link("a/root", "..", false)
            .link("top", "a/f", false)
            .link("dangling", "nowhere/yet", false)
            .link("hard", "a/f", true)
            .finish();
        c.extract(&bytes).unwrap();
        assert_eq!(fs::read(c.dest().join("top")).unwrap(), b"data");
        assert_eq!(fs::read(c.dest().join("a/root/a/self/f")).unwrap(), b"data");
        assert_eq!(
            fs::metadata(c.dest().join("hard")).unwrap().ino(),
            fs::metadata(c.dest().join("a/f")).unwrap().ino()
        );
        c.assert_contained();
    }

    #[test]
    fn lifecycle_archive_rechecks_links_a_later_entry_redirects() {
        // Alone, x/s -> y/../../out stays inside; once x/y -> . exists it
        // climbs out. Only the final tree tells.
        let c = Case::new();
        let bytes = RawTar::default().dir("x/").link("x/s", "y/../../out", false).link("x/y", ".", false).finish();
        let err = c.extract(&bytes).unwrap_err();
        assert!(matches!(err, ArchiveError::UnsafeLink { .. }), "{err}");
        c.assert_contained();
    }

    #[test]
    fn lifecycle_archive_replaces_links_instead_of_following_them() {
        let c = Case::new();
        let bytes = RawTar::default().file("f", b"orig", 0o644).link("l", "f", false).file("l", b"new", 0o644).finish();
        c.extract(&bytes).unwrap();
        assert_eq!(fs::read(c.dest().join("f")).unwrap(), b"orig");
        assert!(fs::symlink_metadata(c.dest().join("l")).unwrap().is_file());
        assert_eq!(fs::read(c.dest().join("l")).unwrap(), b"new");
        // A hard link must name a regular file inside.
        let c = Case::new();
        let err = c.extract(&RawTar::default().link("h", "../canary", true).finish()).unwrap_err();
        assert!(matches!(err, ArchiveError::UnsafePath(_)), "{err}");
        let err = c.extract(&RawTar::default().link("l", ".", false).link("h", "l", true).finish()).unwrap_err();
        assert!(matches!(err, ArchiveError::Conflict { .. }), "{err}");
        c.assert_contained();
    }

    #[test]
    fn lifecycle_archive_enforces_limits() {
        let c = Case::new();
        let small = Limits { max_bytes: 10, max_entries: 3 };
        let err = c.extract_with(&RawTar::default().file("a", &[1; 11], 0o644).finish(), &small).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge(10)), "{err}");
        let err = c.extract_with(&RawZip::new().file("a", &[1; 6], 0o644).file("b", &[1; 6], 0o644).finish(), &small);
        assert!(matches!(err, Err(ArchiveError::TooLarge(10))));
        let many = RawTar::default().dir("a/").dir("b/").dir("c/").dir("d/").gzip();
        assert!(matches!(c.extract_with(&many, &small), Err(ArchiveError::TooManyEntries(3))));
        let many = RawZip::new().dir("a/").dir("b/").dir("c/").dir("d/").finish();
        assert!(matches!(c.extract_with(&many, &small), Err(ArchiveError::TooManyEntries(3))));
    }

    #[test]
    fn lifecycle_archive_reports_corrupt_input() {
        let c = Case::new();
        assert!(matches!(c.extract(b""), Err(ArchiveError::Empty)));
        let err = c.extract(b"PK\x03\x04 this is not really a zip").unwrap_err();
        assert!(matches!(err, ArchiveError::CorruptZip(_)), "{err}");
        let mut zip = RawZip::new().file("a", &[b'z'; 4000], 0o644).finish();
        let mid = zip.len() / 3;
        zip.truncate(mid);
        assert!(c.extract(&zip).is_err());
        let err = c.extract(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]).unwrap_err();
        assert!(matches!(err, ArchiveError::CorruptTar(_)), "{err}");
        let mut tar = RawTar::default().file("a", &[b'x'; 2000], 0o644).finish();
        tar.truncate(1100);
        assert!(matches!(c.extract(&tar), Err(ArchiveError::CorruptTar(_))));
        assert!(matches!(c.extract(b"just some text file"), Err(ArchiveError::UnknownFormat)));
        c.assert_contained();
    }

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
