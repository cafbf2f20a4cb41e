//! Staging: the admin buildpack list ([`registry`]) and the stager, which runs
//! the lifecycle's `builder` in a staging container and turns its output into a
//! droplet and a build cache in the blobstore ([`stager`]).

pub mod metrics;
pub mod registry;
pub mod service;
pub mod stager;

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

pub use celld_base::guid::new_guid;
pub use celld_base::size::byte_size;
use celld_blobstore::BlobstoreError;

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The request is malformed; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The name is taken (the message is Cloud Controller's).
    #[error("{0}")]
    AlreadyExists(String),
    /// Legal request, wrong moment (e.g. staging without a lifecycle binary).
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Blobstore(#[from] BlobstoreError),
    #[error("{0}")]
    Internal(String),
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, StagingError> {
    let io = |e: std::io::Error| StagingError::Internal(format!("reading {}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(celld_base::guid::hex(&h.finalize()))
}

/// Guids and app guids reach paths, handles and blob keys: keep them plain.
pub fn validate_guid(what: &str, g: &str) -> Result<(), StagingError> {
    if !g.is_empty() && g.len() <= 64 && g.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        Ok(())
    } else {
        Err(StagingError::Invalid(format!("{what} {g:?} is not valid: use 1-64 letters, digits, '-' or '_'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_validation() {
        let g = new_guid();
        assert!(validate_guid("app guid", &g).is_ok());
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_guid("app guid", bad).is_err(), "{bad:?}");
        }
    }
}
