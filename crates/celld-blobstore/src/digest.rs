//! SHA-256 of blob content, as lowercase hex: every blob is named and verified
//! by it. Large inputs are hashed on the blocking pool so they do not stall the
//! async workers.

use std::path::Path;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::{BlobstoreError, MULTIPART_THRESHOLD, READ_BUF, io_err};

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Hashes in-memory data, off the async workers when it is large.
pub(crate) async fn sha256_of_bytes(data: &Bytes) -> String {
    if (data.len() as u64) <= MULTIPART_THRESHOLD {
        return sha256_hex(data);
    }
    let d = data.clone();
    match tokio::task::spawn_blocking(move || sha256_hex(&d)).await {
        Ok(h) => h,
        Err(_) => sha256_hex(data),
    }
}

/// One pass over a local file: (sha256 hex, size).
pub(crate) async fn hash_file(path: &Path) -> Result<(String, u64), BlobstoreError> {
    let p = path.to_path_buf();
    let res = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
        use std::io::Read;
        let mut f = std::fs::File::open(&p)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; READ_BUF];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        Ok((hex(&h.finalize()), size))
    })
    .await
    .map_err(|e| BlobstoreError::Io { path: path.to_path_buf(), source: std::io::Error::other(e) })?;
    res.map_err(io_err(path))
}
