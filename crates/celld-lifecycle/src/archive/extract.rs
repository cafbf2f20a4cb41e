//! Reading zip and tar (plain or gzipped) entries into a [`Sink`]: the format
//! readers only translate entries; the sink decides what may be written.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::error::{ArchiveError, io_err};
use super::sink::{Limits, Sink, Stats, clean_name};
use super::sniff::{Format, sniff};

/// Extracts the zip, tar or tar.gz at `archive` into `dest` (created if
/// missing), under the rules in the `archive` module docs.
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
            let days =
                celld_base::civil::days_from_civil(i64::from(t.year()), i64::from(t.month()), i64::from(t.day()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{RawTar, RawZip, TempDir};
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

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
}
