//! The few file operations the phases share: small files read whole under a
//! cap (buildpacks write them, so they are not trusted to be small), Go's
//! "exists" test, and the private temporary `contents` directory.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `config.yml`, `launch.yml`, `Procfile`, `VERSION`: small files.
const SMALL_FILE_CAP: u64 = 4 << 20;

/// Reads a small file whole; larger than the cap is an error.
pub(super) fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let f = fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(SMALL_FILE_CAP + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > SMALL_FILE_CAP {
        return Err(io::Error::other(format!("{} is larger than {} bytes", path.display(), SMALL_FILE_CAP)));
    }
    Ok(buf)
}

/// Go's `os.Stat(path) == nil`, with errors other than "not found" kept.
pub(super) fn file_exists(path: &Path) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A new private directory `<parent>/<prefix><random>`, as Go's `os.MkdirTemp`.
pub(super) fn make_temp_dir(parent: &Path, prefix: &str) -> io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(parent)?;
    let mut last = io::Error::other("no attempt");
    for _ in 0..100 {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let seed = format!("{}-{}-{}", std::process::id(), nanos, COUNTER.fetch_add(1, Ordering::Relaxed));
        let n = xxhash_rust::xxh64::xxh64(seed.as_bytes(), 0) % 1_000_000_000;
        let path = parent.join(format!("{prefix}{n}"));
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {
                // The mode is umask-filtered; make it exact.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}
