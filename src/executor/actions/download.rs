//! What Download actions and cached dependencies fetch: on the host, over
//! http(s), checked against the checksum they name, kept in a bounded cache
//! by `cache_key` (least recently used evicted first; one fetch per key at a
//! time), always as a tar or gzipped tar: a zip is unpacked on the host with
//! the lifecycle's safe extraction (no `..`, no absolute paths, no links
//! out) and packed again as a tgz.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use celld_base::guid::hex;
use sha2::Digest;

use celld_lifecycle::archive::{self, Format};

/// The largest artifact fetched (a droplet or a buildpack is far less).
const MAX_ARTIFACT: u64 = 8 << 30;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error("checksum algorithm {0:?} is not one of md5, sha1, sha256")]
    UnknownAlgorithm(String),
    #[error("a checksum algorithm was given without a checksum value")]
    MissingChecksum,
    #[error("checksum mismatch: {algorithm} of the download is {actual}, expected {expected}")]
    ChecksumMismatch { algorithm: String, expected: String, actual: String },
    #[error("fetching the artifact: {0}")]
    Http(String),
    #[error("the server answered {0}")]
    Status(String),
    #[error("the artifact is larger than {} GB", MAX_ARTIFACT >> 30)]
    TooLarge,
    #[error("the artifact is not a tar, tgz or zip: {0}")]
    Archive(String),
    #[error("{0}")]
    Io(String),
}

fn io(what: &str) -> impl Fn(std::io::Error) -> DownloadError + '_ {
    move |e| DownloadError::Io(format!("{what}: {e}"))
}

enum Hasher {
    None,
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn new(algorithm: &str, value: &str) -> Result<Self, DownloadError> {
        let h = match algorithm.to_ascii_lowercase().as_str() {
            "" => return Ok(Hasher::None),
            "md5" => Hasher::Md5(md5::Md5::new()),
            "sha1" => Hasher::Sha1(sha1::Sha1::new()),
            "sha256" => Hasher::Sha256(sha2::Sha256::new()),
            other => return Err(DownloadError::UnknownAlgorithm(other.to_string())),
        };
        if value.is_empty() {
            return Err(DownloadError::MissingChecksum);
        }
        Ok(h)
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::None => {}
            Hasher::Md5(h) => h.update(b),
            Hasher::Sha1(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
        }
    }

    fn hex(self) -> Option<String> {
        let bytes: Vec<u8> = match self {
            Hasher::None => return None,
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        };
        Some(hex(&bytes))
    }
}

/// An artifact ready to stream in: open (so eviction cannot take it away),
/// a tar, gzipped or not.
pub struct Artifact {
    pub file: std::fs::File,
    /// Bytes fetched (Diego's "Downloaded droplet (12.3M)").
    pub size: u64,
}

impl Artifact {
    /// The artifact as a plain tar stream.
    pub fn into_tar(mut self) -> Result<Box<dyn Read + Send>, DownloadError> {
        let mut head = [0u8; 512];
        let n = read_head(&mut self.file, &mut head)?;
        self.file.rewind().map_err(io("rewinding the artifact"))?;
        let reader = std::io::BufReader::new(self.file);
        match archive::sniff(&head[..n]).map_err(|e| DownloadError::Archive(e.to_string()))? {
            Format::TarGz => Ok(Box::new(flate2::read::GzDecoder::new(reader))),
            Format::Tar => Ok(Box::new(reader)),
            Format::Zip => Err(DownloadError::Archive("a zip left unconverted".into())),
        }
    }
}

fn read_head(f: &mut std::fs::File, head: &mut [u8]) -> Result<usize, DownloadError> {
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(io("reading the artifact"))? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

pub struct DownloadCache {
    dir: PathBuf,
    max_bytes: u64,
    client: reqwest::Client,
    /// One fetch per cache key at a time; the others wait and share it.
    keys: celld_image::keyed::Keyed,
    seq: AtomicU64,
}

impl DownloadCache {
    /// A cache in `dir` (made if missing) of at most `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Result<Self, DownloadError> {
        std::fs::create_dir_all(&dir).map_err(io("making the download cache"))?;
        // Leftovers of fetches a dead cell never finished.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("tmp-") {
                    let p = e.path();
                    let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
                }
            }
        }
        // rustls on ring (the workspace's choice); Err = already chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| DownloadError::Http(e.to_string()))?;
        Ok(Self { dir, max_bytes, client, keys: Default::default(), seq: AtomicU64::new(0) })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    fn temp_path(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("tmp-{}-{n}", std::process::id()))
    }

    /// The artifact at `url`, from the cache when `cache_key` is set and it
    /// is there, else fetched (and cached under `cache_key` when set).
    pub async fn fetch(
        &self,
        url: &str,
        cache_key: &str,
        algorithm: &str,
        value: &str,
    ) -> Result<Artifact, DownloadError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(DownloadError::BadUrl(url.to_string()));
        }
        Hasher::new(algorithm, value)?;
        if cache_key.is_empty() {
            let tmp = self.temp_path();
            let res = self.fetch_to(url, algorithm, value, &tmp).await;
            let opened = res.and_then(|size| {
                let file = std::fs::File::open(&tmp).map_err(io("opening the artifact"))?;
                Ok(Artifact { file, size })
            });
            let _ = std::fs::remove_file(&tmp);
            return opened;
        }
        let path = self.dir.join(format!("{}.art", hex(&sha2::Sha256::digest(cache_key.as_bytes()))));
        let _one = self.keys.lock(cache_key).await;
        if let Ok(file) = std::fs::File::open(&path) {
            // Recently used: evicted last.
            let _ = file.set_modified(std::time::SystemTime::now());
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            tracing::debug!(cache_key, "download cache hit");
            return Ok(Artifact { file, size });
        }
        let tmp = self.temp_path();
        let size = match self.fetch_to(url, algorithm, value, &tmp).await {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, &path).map_err(io("caching the artifact"))?;
        let file = std::fs::File::open(&path).map_err(io("opening the artifact"))?;
        self.evict(&path);
        Ok(Artifact { file, size })
    }

    /// Fetches `url` to `dest` (checked, a zip made a tgz); its size.
    async fn fetch_to(&self, url: &str, algorithm: &str, value: &str, dest: &Path) -> Result<u64, DownloadError> {
        let mut hasher = Hasher::new(algorithm, value)?;
        let mut resp =
            self.client.get(url).send().await.map_err(|e| DownloadError::Http(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(DownloadError::Status(resp.status().to_string()));
        }
        let mut out = std::fs::File::create(dest).map_err(io("writing the artifact"))?;
        let mut size = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| DownloadError::Http(e.without_url().to_string()))? {
            size += chunk.len() as u64;
            if size > MAX_ARTIFACT {
                return Err(DownloadError::TooLarge);
            }
            hasher.update(&chunk);
            out.write_all(&chunk).map_err(io("writing the artifact"))?;
        }
        out.flush().map_err(io("writing the artifact"))?;
        drop(out);
        if let Some(actual) = hasher.hex() {
            let expected = value.to_ascii_lowercase();
            if actual != expected {
                return Err(DownloadError::ChecksumMismatch {
                    algorithm: algorithm.to_ascii_lowercase(),
                    expected,
                    actual,
                });
            }
        }
        let mut head = [0u8; 512];
        let n = read_head(&mut std::fs::File::open(dest).map_err(io("reading the artifact"))?, &mut head)?;
        if archive::sniff(&head[..n]).map_err(|e| DownloadError::Archive(e.to_string()))? == Format::Zip {
            let (zip, dir, tgz) = (dest.to_path_buf(), self.temp_path(), self.temp_path());
            tokio::task::spawn_blocking(move || zip_to_tgz(&zip, &dir, &tgz))
                .await
                .map_err(|e| DownloadError::Io(e.to_string()))??;
        }
        Ok(size)
    }

    /// Drops the least recently used artifacts until the cache fits, never
    /// `keep`. Open artifacts stay readable (the file lives until closed).
    fn evict(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".art"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                tracing::info!(path = %path.display(), "evicted from the download cache");
                total = total.saturating_sub(len);
            }
        }
    }
}

/// Unpacks the zip `zip` into `dir` safely, packs `dir` as a tgz over `zip`.
fn zip_to_tgz(zip: &Path, dir: &Path, tgz: &Path) -> Result<(), DownloadError> {
    let res = (|| {
        std::fs::create_dir_all(dir).map_err(io("unpacking the zip"))?;
        archive::extract(zip, dir, &archive::Limits::default()).map_err(|e| DownloadError::Archive(e.to_string()))?;
        archive::pack_dir_tgz(dir, tgz).map_err(|e| DownloadError::Archive(e.to_string()))?;
        std::fs::rename(tgz, zip).map_err(io("converting the zip"))
    })();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(tgz);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_checked_by_algorithm() {
        assert!(matches!(Hasher::new("crc32", "x"), Err(DownloadError::UnknownAlgorithm(_))));
        assert!(matches!(Hasher::new("sha256", ""), Err(DownloadError::MissingChecksum)));
        let mut h = Hasher::new("md5", "x").unwrap();
        h.update(b"abc");
        assert_eq!(h.hex().unwrap(), "900150983cd24fb0d6963f7d28e17f72");
        let mut h = Hasher::new("SHA1", "x").unwrap();
        h.update(b"abc");
        assert_eq!(h.hex().unwrap(), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert!(Hasher::new("", "").unwrap().hex().is_none());
    }

    #[test]
    fn the_oldest_artifacts_are_evicted_first() {
        let dir = std::env::temp_dir().join(format!("celld-dlcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = DownloadCache::new(dir.clone(), 10).unwrap();
        let now = std::time::SystemTime::now();
        for (i, name) in ["a.art", "b.art", "c.art"].iter().enumerate() {
            let f = std::fs::File::create(dir.join(name)).unwrap();
            f.set_len(4).unwrap();
            f.set_modified(now - std::time::Duration::from_secs(100 - i as u64 * 10)).unwrap();
        }
        cache.evict(&dir.join("a.art"));
        // a is kept (just fetched), b is the oldest of the others.
        assert!(dir.join("a.art").exists());
        assert!(!dir.join("b.art").exists());
        assert!(dir.join("c.art").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
