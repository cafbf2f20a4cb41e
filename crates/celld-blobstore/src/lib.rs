//! The blobstore: app packages, droplets, build caches and buildpacks.
//!
//! A thin layer over the `object_store` crate with two backends:
//! `file:///ABS/DIR` (the embedded default, `DEPOT/blobs`) and
//! `s3://BUCKET?endpoint=URL&region=R` for any S3-compatible server
//! (credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN`; an `http://` endpoint allows plain HTTP; a custom
//! endpoint uses path-style requests).
//!
//! # Layout
//!
//! A blob stored under `KEY` is two objects:
//!
//! * `refs/KEY/!ref`: a small JSON record `{"sha256": HEX, "size": N, "created": UNIX_SECS}`;
//! * `data/KEY/!SHA256HEX`: the bytes, named by their own SHA-256.
//!
//! Why: object stores replace one object atomically, but a blob's content and
//! its checksum must change together. The content goes first, under a name
//! nobody reads yet, then the small record is replaced in one atomic write, so a
//! reader sees the old blob or the new one, never half of either (and a writer
//! that dies half-way leaves the old blob intact). Every read is hashed while it
//! streams and compared with the record; a mismatch is [`BlobstoreError::ChecksumMismatch`]
//! and the bytes are never handed out (`get_to_file` writes a temporary file
//! beside the destination and renames it only once verified).
//!
//! The `!` marks object names that are not key segments (keys are
//! `[A-Za-z0-9._-]` segments): keys `a` and `a/b` can coexist even on a file
//! system, where `refs/a` could not be both a file and a directory.
//!
//! Superseded data versions are deleted by the `put` that replaced them, but only
//! once they are more than [`SUPERSEDED_GRACE_SECS`] older than the new version
//! (by the store's own clock): two concurrent `put`s of one key must not delete the
//! data the other's record is about to point at, and a reader that read the old
//! record just before must still find its data. `delete` removes everything.

//!
//! # Files
//!
//! - `location`: the blobstore URL, parsed and checked.
//! - `keys`: the key rules and the `refs/`/`data/` object layout.
//! - `digest`: SHA-256 hex of bytes and of local files.
//! - `tempfile`: the verified-then-renamed temporary file of a download.

mod digest;
mod keys;
mod location;
mod tempfile;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use digest::{hash_file, hex, sha256_hex, sha256_of_bytes};
pub use keys::validate_key;
use keys::{DATA_MARK, REF_NAME, data_dir, data_path, is_sha256_hex, obj_path, ref_path, validate_prefix};
use location::{Location, bad_url, parse_url};
use tempfile::{TempFile, temp_path_for};

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 512;
/// Objects larger than this are uploaded in parts.
const MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;
/// Part size of multipart uploads (S3 wants at least 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded at once (bounds the memory of one upload).
const PARTS_IN_FLIGHT: usize = 4;
/// Read buffer for local files.
const READ_BUF: usize = 1024 * 1024;
/// Superseded data versions younger than this (relative to the new version) are kept.
pub const SUPERSEDED_GRACE_SECS: i64 = 600;

const ACCEPTED_URLS: &str = "accepted forms: file:///ABSOLUTE/DIR or s3://BUCKET?endpoint=URL&region=REGION \
     (endpoint and region optional; credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)";
const KEY_RULES: &str = "keys are relative paths of '/'-separated segments made of A-Z a-z 0-9 . _ -, \
     at most 512 characters";

/// A stored blob: its key, the SHA-256 (lowercase hex) and size of its content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobInfo {
    pub key: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobstoreError {
    #[error("invalid blobstore URL: {0}; {ACCEPTED_URLS}")]
    BadUrl(String),
    #[error("invalid blob key {key:?}: {reason} ({KEY_RULES})")]
    InvalidKey { key: String, reason: String },
    #[error("no blob stored under key {0:?}")]
    NotFound(String),
    #[error(
        "blob {key:?} is corrupt: its recorded SHA-256 is {expected} but the content read has {actual}; \
         it was not used (upload it again)"
    )]
    ChecksumMismatch { key: String, expected: String, actual: String },
    #[error("the record of blob {key:?} is unreadable ({reason}); delete the key and upload it again")]
    CorruptRef { key: String, reason: String },
    #[error(
        "blob {key:?} is recorded (sha256 {sha256}) but its data object is missing from the store; \
         upload it again"
    )]
    MissingData { key: String, sha256: String },
    #[error("{} changed while it was being uploaded as blob {key:?}; upload it again once it is complete", path.display())]
    FileChanged { key: String, path: PathBuf },
    #[error("blobstore request for {key:?} failed: {source}")]
    Store {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BlobstoreError {
    /// True when the key holds no blob.
    pub fn is_not_found(&self) -> bool {
        matches!(self, BlobstoreError::NotFound(_))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BlobstoreError + '_ {
    move |source| BlobstoreError::Io { path: path.to_path_buf(), source }
}

fn store_err(key: &str) -> impl FnOnce(object_store::Error) -> BlobstoreError + '_ {
    move |source| BlobstoreError::Store { key: key.to_string(), source }
}

/// The JSON record at `refs/KEY/!ref`.
#[derive(Debug, Clone, serde::Deserialize)]
struct RefRecord {
    sha256: String,
    size: u64,
    created: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where a multipart upload reads from.
enum Source<'a> {
    Bytes(Bytes),
    File(&'a Path),
}

/// The blobstore (cheap to clone: the store is shared).
#[derive(Clone)]
pub struct Blobstore {
    store: Arc<dyn ObjectStore>,
    description: String,
}

impl fmt::Debug for Blobstore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blobstore").field("url", &self.description).finish()
    }
}

impl Blobstore {
    /// Opens `file:///ABS/DIR` (created if missing) or
    /// `s3://BUCKET?endpoint=URL&region=R`. No request is made yet.
    pub fn open(url: &str) -> Result<Self, BlobstoreError> {
        let location = parse_url(url)?;
        let description = location.to_string();
        let store: Arc<dyn ObjectStore> = match &location {
            Location::File(dir) => {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad_url(format!("{url:?}: {e}")))?
                    .with_automatic_cleanup(true)
                    // Data reaches the disk before the record that points at it.
                    .with_fsync(true);
                Arc::new(fs)
            }
            Location::S3 { bucket, endpoint, region } => {
                // TLS is rustls on ring (see Cargo.toml); rustls needs its
                // provider chosen once per process. Err = already chosen.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(r) = region {
                    b = b.with_region(r);
                }
                if let Some(e) = endpoint {
                    b = b
                        .with_endpoint(e)
                        .with_allow_http(e.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                Arc::new(b.build().map_err(|e| bad_url(format!("{url:?}: {e}")))?)
            }
        };
        tracing::debug!(blobstore = %description, "blobstore opened");
        Ok(Blobstore { store, description })
    }

    /// The URL this store was opened with, normalised, without secrets.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Stores the content of a local file under `key`, replacing any blob there.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<BlobInfo, BlobstoreError> {
        validate_key(key)?;
        let (sha256, size) = hash_file(path).await?;
        let data = data_path(key, &sha256)?;
        if size <= MULTIPART_THRESHOLD {
            let content = Bytes::from(tokio::fs::read(path).await.map_err(io_err(path))?);
            if content.len() as u64 != size || sha256_hex(&content) != sha256 {
                return Err(BlobstoreError::FileChanged { key: key.to_string(), path: path.to_path_buf() });
            }
            self.store.put(&data, PutPayload::from(content)).await.map_err(store_err(key))?;
        } else {
            self.upload_multipart(key, &data, Source::File(path), &sha256, size).await?;
        }
        self.commit(key, &sha256, size).await
    }

    /// Stores `data` under `key`, replacing any blob there.
    pub async fn put_bytes(&self, key: &str, data: Bytes) -> Result<BlobInfo, BlobstoreError> {
        validate_key(key)?;
        let sha256 = sha256_of_bytes(&data).await;
        let size = data.len() as u64;
        let location = data_path(key, &sha256)?;
        if size <= MULTIPART_THRESHOLD {
            self.store.put(&location, PutPayload::from(data)).await.map_err(store_err(key))?;
        } else {
            self.upload_multipart(key, &location, Source::Bytes(data), &sha256, size).await?;
        }
        self.commit(key, &sha256, size).await
    }

    async fn upload_multipart(
        &self,
        key: &str,
        location: &ObjPath,
        source: Source<'_>,
        sha256: &str,
        size: u64,
    ) -> Result<(), BlobstoreError> {
        let upload = self.store.put_multipart(location).await.map_err(store_err(key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let fed = match source {
            Source::Bytes(mut data) => {
                let mut r = Ok(());
                while !data.is_empty() && r.is_ok() {
                    r = writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(store_err(key));
                    writer.put(data.split_to(data.len().min(PART_SIZE)));
                }
                r
            }
            Source::File(path) => Self::feed_file(key, path, &mut writer, sha256, size).await,
        };
        if let Err(e) = fed {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(key, error = %abort, "aborting a multipart upload failed");
            }
            return Err(e);
        }
        writer.finish().await.map_err(store_err(key))?;
        Ok(())
    }

    /// Streams a file into a multipart upload, checking it is still what was hashed.
    async fn feed_file(
        key: &str,
        path: &Path,
        writer: &mut WriteMultipart,
        sha256: &str,
        size: u64,
    ) -> Result<(), BlobstoreError> {
        let mut file = tokio::fs::File::open(path).await.map_err(io_err(path))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; READ_BUF];
        let mut read = 0u64;
        loop {
            let n = file.read(&mut buf).await.map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            read += n as u64;
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(store_err(key))?;
            writer.write(&buf[..n]);
        }
        if read != size || hex(&hasher.finalize()) != sha256 {
            return Err(BlobstoreError::FileChanged { key: key.to_string(), path: path.to_path_buf() });
        }
        Ok(())
    }

    /// With the data stored: writes the record (the atomic switch), then prunes old data.
    async fn commit(&self, key: &str, sha256: &str, size: u64) -> Result<BlobInfo, BlobstoreError> {
        // `sha256` is hex, so the record needs no escaping.
        let json = format!(r#"{{"sha256":"{sha256}","size":{size},"created":{}}}"#, unix_now());
        self.store.put(&ref_path(key)?, PutPayload::from(json)).await.map_err(store_err(key))?;
        if let Err(e) = self.prune(key, sha256).await {
            // The blob is stored; an old version merely lingers until the next put or delete.
            tracing::warn!(key, error = %e, "could not delete superseded data versions");
        }
        tracing::info!(key, sha256, size, blobstore = %self.description, "blob stored");
        Ok(BlobInfo { key: key.to_string(), sha256: sha256.to_string(), size })
    }

    /// The data versions directly under `data/KEY/` (not those of longer keys).
    async fn versions(&self, key: &str) -> Result<Vec<object_store::ObjectMeta>, BlobstoreError> {
        match self.store.list_with_delimiter(Some(&data_dir(key)?)).await {
            Ok(list) => Ok(list
                .objects
                .into_iter()
                .filter(|m| m.location.filename().is_some_and(|n| n.starts_with(DATA_MARK)))
                .collect()),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(store_err(key)(e)),
        }
    }

    /// Deletes data versions of `key` other than `current` that are older than the grace period.
    async fn prune(&self, key: &str, current: &str) -> Result<(), BlobstoreError> {
        let versions = self.versions(key).await?;
        let own = format!("{DATA_MARK}{current}");
        let Some(own_time) =
            versions.iter().find(|m| m.location.filename() == Some(own.as_str())).map(|m| m.last_modified.timestamp())
        else {
            return Ok(());
        };
        for m in versions {
            if m.location.filename() != Some(own.as_str())
                && m.last_modified.timestamp() < own_time - SUPERSEDED_GRACE_SECS
            {
                match self.store.delete(&m.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        tracing::debug!(key, object = %m.location, "superseded data deleted")
                    }
                    Err(e) => return Err(store_err(key)(e)),
                }
            }
        }
        Ok(())
    }

    async fn read_ref(&self, key: &str) -> Result<RefRecord, BlobstoreError> {
        let raw = match self.store.get(&ref_path(key)?).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        let raw = match raw {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => return Err(BlobstoreError::NotFound(key.to_string())),
            Err(e) => return Err(store_err(key)(e)),
        };
        let rec: RefRecord = serde_json::from_slice(&raw)
            .map_err(|e| BlobstoreError::CorruptRef { key: key.to_string(), reason: e.to_string() })?;
        if !is_sha256_hex(&rec.sha256) {
            return Err(BlobstoreError::CorruptRef {
                key: key.to_string(),
                reason: format!("{:?} is not a SHA-256", rec.sha256),
            });
        }
        Ok(rec)
    }

    /// Reads the record and opens its data. If the data vanished (the key was
    /// replaced meanwhile), reads the record once more.
    async fn open_data(&self, key: &str) -> Result<(RefRecord, object_store::GetResult), BlobstoreError> {
        validate_key(key)?;
        let mut rec = self.read_ref(key).await?;
        for attempt in 0..2 {
            match self.store.get(&data_path(key, &rec.sha256)?).await {
                Ok(r) => return Ok((rec, r)),
                Err(object_store::Error::NotFound { .. }) if attempt == 0 => {
                    let again = self.read_ref(key).await?;
                    if again.sha256 == rec.sha256 {
                        break;
                    }
                    tracing::debug!(key, "blob replaced while opening it; reading the new version");
                    rec = again;
                }
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(store_err(key)(e)),
            }
        }
        tracing::warn!(key, sha256 = %rec.sha256, "blob record points at missing data");
        Err(BlobstoreError::MissingData { key: key.to_string(), sha256: rec.sha256 })
    }

    fn mismatch(key: &str, expected: &str, actual: String, size: u64, read: u64) -> BlobstoreError {
        tracing::warn!(key, expected, actual = %actual, size, read, "blob checksum mismatch; content discarded");
        BlobstoreError::ChecksumMismatch { key: key.to_string(), expected: expected.to_string(), actual }
    }

    /// Downloads `key` into `dest` (via a temporary file beside it, renamed once verified).
    pub async fn get_to_file(&self, key: &str, dest: &Path) -> Result<BlobInfo, BlobstoreError> {
        let (rec, got) = self.open_data(key).await?;
        let tmp_path = temp_path_for(dest)?;
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .await
            .map_err(io_err(&tmp_path))?;
        let mut tmp = TempFile { path: tmp_path, keep: false };
        let mut out = tokio::io::BufWriter::with_capacity(READ_BUF, file);
        let mut hasher = Sha256::new();
        let mut read = 0u64;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(store_err(key))?;
            hasher.update(&chunk);
            read += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(io_err(&tmp.path))?;
        }
        out.flush().await.map_err(io_err(&tmp.path))?;
        let actual = hex(&hasher.finalize());
        if actual != rec.sha256 || read != rec.size {
            return Err(Self::mismatch(key, &rec.sha256, actual, rec.size, read));
        }
        out.into_inner().sync_all().await.map_err(io_err(&tmp.path))?;
        tokio::fs::rename(&tmp.path, dest).await.map_err(io_err(dest))?;
        tmp.keep = true;
        tracing::debug!(key, sha256 = %rec.sha256, size = rec.size, created = rec.created, dest = %dest.display(), "blob fetched");
        Ok(BlobInfo { key: key.to_string(), sha256: rec.sha256, size: rec.size })
    }

    /// Reads `key` into memory, verified.
    pub async fn get_bytes(&self, key: &str) -> Result<(BlobInfo, Bytes), BlobstoreError> {
        let (rec, got) = self.open_data(key).await?;
        let data = got.bytes().await.map_err(store_err(key))?;
        let actual = sha256_of_bytes(&data).await;
        if actual != rec.sha256 || data.len() as u64 != rec.size {
            return Err(Self::mismatch(key, &rec.sha256, actual, rec.size, data.len() as u64));
        }
        tracing::debug!(key, sha256 = %rec.sha256, size = rec.size, created = rec.created, "blob read");
        Ok((BlobInfo { key: key.to_string(), sha256: rec.sha256, size: rec.size }, data))
    }

    /// The record of `key` (no data is read).
    pub async fn head(&self, key: &str) -> Result<BlobInfo, BlobstoreError> {
        validate_key(key)?;
        let rec = self.read_ref(key).await?;
        Ok(BlobInfo { key: key.to_string(), sha256: rec.sha256, size: rec.size })
    }

    /// Whether `key` holds a blob.
    pub async fn exists(&self, key: &str) -> Result<bool, BlobstoreError> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes `key` (record first, then every data version). A missing key is fine.
    pub async fn delete(&self, key: &str) -> Result<(), BlobstoreError> {
        validate_key(key)?;
        match self.store.delete(&ref_path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_err(key)(e)),
        }
        for m in self.versions(key).await? {
            match self.store.delete(&m.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(key)(e)),
            }
        }
        tracing::info!(key, blobstore = %self.description, "blob deleted");
        Ok(())
    }

    /// The blobs whose key starts with `prefix` (a plain string prefix: `droplets/`
    /// lists everything under `droplets`, `droplets/ab` also `droplets/abc`), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<BlobInfo>, BlobstoreError> {
        validate_prefix(prefix)?;
        // Everything under the prefix's directory part, filtered by the whole prefix.
        let dir = match prefix.rfind('/') {
            Some(i) => format!("refs/{}", &prefix[..i]),
            None => "refs".to_string(),
        };
        let dir = obj_path(prefix, dir)?;
        let mut keys = Vec::new();
        let mut stream = self.store.list(Some(&dir));
        while let Some(item) = stream.next().await {
            let meta = match item {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(store_err(prefix)(e)),
            };
            let loc = meta.location.as_ref();
            let Some(key) = loc.strip_prefix("refs/").and_then(|k| k.strip_suffix(&format!("/{REF_NAME}"))) else {
                continue;
            };
            if key.starts_with(prefix) && validate_key(key).is_ok() {
                keys.push(key.to_string());
            }
        }
        keys.sort();
        keys.dedup();
        let heads = futures_util::stream::iter(keys).map(|k| async move { self.head(&k).await }).buffered(8);
        let mut out = Vec::new();
        let mut heads = std::pin::pin!(heads);
        while let Some(h) = heads.next().await {
            match h {
                Ok(info) => out.push(info),
                Err(e) if e.is_not_found() => {} // deleted meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
