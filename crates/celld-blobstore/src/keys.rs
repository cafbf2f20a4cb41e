//! Blob keys and where a key's objects live: the rules a key must follow and the
//! `refs/KEY/!ref` + `data/KEY/!SHA256HEX` layout (see the crate docs for why
//! the record and the data are apart and why the `!`).

use object_store::path::Path as ObjPath;

use crate::{BlobstoreError, MAX_KEY_LEN};

/// Name of the record object inside `refs/KEY/`.
pub(crate) const REF_NAME: &str = "!ref";
/// Prefix of data object names inside `data/KEY/`.
pub(crate) const DATA_MARK: char = '!';

fn invalid_key(key: &str, reason: &str) -> BlobstoreError {
    BlobstoreError::InvalidKey { key: key.to_string(), reason: reason.to_string() }
}

fn check_segments(key: &str, s: &str) -> Result<(), BlobstoreError> {
    if s.starts_with('/') {
        return Err(invalid_key(key, "must be relative (no leading '/')"));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))) {
        return Err(invalid_key(key, &format!("character {c:?} is not allowed")));
    }
    for seg in s.split('/') {
        match seg {
            "" => return Err(invalid_key(key, "empty path segment ('//' or a trailing '/')")),
            "." | ".." => return Err(invalid_key(key, "'.' and '..' segments are not allowed")),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a blob key (see [`BlobstoreError::InvalidKey`] for the rules).
pub fn validate_key(key: &str) -> Result<(), BlobstoreError> {
    if key.is_empty() {
        return Err(invalid_key(key, "empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid_key(key, &format!("{} characters, more than {MAX_KEY_LEN}", key.len())));
    }
    check_segments(key, key)
}

/// Checks a `list` prefix: empty, or a key's beginning (a trailing '/' is fine).
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), BlobstoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    if prefix.len() > MAX_KEY_LEN {
        return Err(invalid_key(prefix, &format!("{} characters, more than {MAX_KEY_LEN}", prefix.len())));
    }
    check_segments(prefix, prefix.strip_suffix('/').unwrap_or(prefix))
}

pub(crate) fn obj_path(key: &str, s: String) -> Result<ObjPath, BlobstoreError> {
    ObjPath::parse(s).map_err(|e| invalid_key(key, &e.to_string()))
}

pub(crate) fn ref_path(key: &str) -> Result<ObjPath, BlobstoreError> {
    obj_path(key, format!("refs/{key}/{REF_NAME}"))
}

pub(crate) fn data_dir(key: &str) -> Result<ObjPath, BlobstoreError> {
    obj_path(key, format!("data/{key}"))
}

pub(crate) fn data_path(key: &str, sha256: &str) -> Result<ObjPath, BlobstoreError> {
    obj_path(key, format!("data/{key}/{DATA_MARK}{sha256}"))
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_hex;

    #[test]
    fn valid_keys() {
        for k in ["a", "droplets/abc-123", "buildpacks/ruby_buildpack.zip", "a/b/c/d.e", "x..y", &"k".repeat(512)] {
            assert!(validate_key(k).is_ok(), "{k} should be valid");
        }
    }

    #[test]
    fn invalid_keys() {
        let long = "k".repeat(513);
        for (k, why) in [
            ("", "empty"),
            ("/abs", "relative"),
            ("a//b", "empty path segment"),
            ("a/", "empty path segment"),
            ("../x", "'..'"),
            ("a/../b", "'..'"),
            ("a/./b", "'.'"),
            (".", "'.'"),
            ("a b", "' '"),
            ("a!ref", "'!'"),
            ("é", "'é'"),
            ("a\\b", "'\\\\'"),
            (long.as_str(), "more than 512"),
        ] {
            match validate_key(k) {
                Err(BlobstoreError::InvalidKey { key, reason }) => {
                    assert_eq!(key, k);
                    assert!(reason.contains(why), "{k:?}: reason {reason:?} lacks {why:?}");
                }
                other => panic!("{k:?}: expected InvalidKey, got {other:?}"),
            }
        }
    }

    #[test]
    fn prefixes() {
        for p in ["", "droplets/", "droplets/ab", "a/b/"] {
            assert!(validate_prefix(p).is_ok(), "{p}");
        }
        for p in ["/", "/a", "a//", "../", "a b"] {
            assert!(validate_prefix(p).is_err(), "{p}");
        }
    }

    #[test]
    fn layout_paths() {
        let sha = sha256_hex(b"");
        assert_eq!(sha, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(ref_path("a/b").unwrap().as_ref(), "refs/a/b/!ref");
        assert_eq!(data_path("a/b", &sha).unwrap().as_ref(), format!("data/a/b/!{sha}"));
        assert!(is_sha256_hex(&sha));
        assert!(!is_sha256_hex("E3B0"));
    }
}
