//! Where the blobs live: the blobstore URL (`file:///ABS/DIR` or
//! `s3://BUCKET?endpoint=URL&region=R`) parsed into a [`Location`], checked up
//! front so a typo is reported when the daemon starts, not at the first upload.

use std::fmt;
use std::path::PathBuf;

use crate::BlobstoreError;

/// Where `open` puts the blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    File(PathBuf),
    S3 { bucket: String, endpoint: Option<String>, region: Option<String> },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(dir) => write!(f, "file://{}", dir.display()),
            Location::S3 { bucket, endpoint, region } => {
                write!(f, "s3://{bucket}")?;
                let mut sep = '?';
                if let Some(e) = endpoint {
                    write!(f, "{sep}endpoint={e}")?;
                    sep = '&';
                }
                if let Some(r) = region {
                    write!(f, "{sep}region={r}")?;
                }
                Ok(())
            }
        }
    }
}

pub(crate) fn bad_url(msg: impl Into<String>) -> BlobstoreError {
    BlobstoreError::BadUrl(msg.into())
}

fn percent_decode(s: &str) -> Result<String, BlobstoreError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => out.push(v),
                None => return Err(bad_url(format!("bad percent-escape in {s:?}"))),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad_url(format!("{s:?} does not decode to UTF-8")))
}

pub(crate) fn parse_url(url: &str) -> Result<Location, BlobstoreError> {
    if let Some(rest) = url.strip_prefix("file://") {
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if path.contains('?') || path.contains('#') {
            return Err(bad_url(format!("{url:?}: file URLs take no query or fragment")));
        }
        if !path.starts_with('/') {
            return Err(bad_url(format!("{url:?}: a file URL needs an absolute directory (file:///DIR)")));
        }
        let path = percent_decode(path)?;
        if path.split('/').any(|s| s == "..") {
            return Err(bad_url(format!("{url:?}: '..' is not allowed in the directory")));
        }
        let trimmed = path.trim_end_matches('/');
        let dir = if trimmed.is_empty() { "/" } else { trimmed };
        return Ok(Location::File(PathBuf::from(dir)));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let bucket = authority.strip_suffix('/').unwrap_or(authority);
        if bucket.is_empty() {
            return Err(bad_url(format!("{url:?}: no bucket name")));
        }
        if bucket.contains('/') {
            return Err(bad_url(format!(
                "{url:?}: paths inside the bucket are not supported; give the blobstore a bucket of its own"
            )));
        }
        if bucket.contains('@') || bucket.contains(':') {
            return Err(bad_url(format!(
                "{url:?}: credentials or ports do not belong in the URL; use the AWS_* environment variables and ?endpoint="
            )));
        }
        if !bucket.bytes().all(|c| c.is_ascii_alphanumeric() || b".-_".contains(&c)) {
            return Err(bad_url(format!("{url:?}: bucket names are made of letters, digits, '.', '-' and '_'")));
        }
        let (mut endpoint, mut region) = (None, None);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| bad_url(format!("{url:?}: {pair:?} is not NAME=VALUE")))?;
            let v = percent_decode(v)?;
            if v.is_empty() {
                return Err(bad_url(format!("{url:?}: {k} is empty")));
            }
            let slot = match k {
                "endpoint" => &mut endpoint,
                "region" => &mut region,
                _ => return Err(bad_url(format!("{url:?}: unknown parameter {k:?} (known: endpoint, region)"))),
            };
            if slot.replace(v).is_some() {
                return Err(bad_url(format!("{url:?}: {k} given twice")));
            }
        }
        if let Some(e) = &endpoint {
            let Some(after_scheme) = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://")) else {
                return Err(bad_url(format!("{url:?}: endpoint {e:?} must start with http:// or https://")));
            };
            let host = after_scheme.split('/').next().unwrap_or("");
            if host.is_empty() {
                return Err(bad_url(format!("{url:?}: endpoint {e:?} has no host")));
            }
            if host.contains('@') {
                return Err(bad_url(format!(
                    "{url:?}: no credentials in the endpoint; use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                )));
            }
            endpoint = Some(e.trim_end_matches('/').to_string());
        }
        return Ok(Location::S3 { bucket: bucket.to_string(), endpoint, region });
    }
    Err(bad_url(format!("{url:?} is neither a file:// nor an s3:// URL")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls() {
        assert_eq!(parse_url("file:///var/lib/celld/blobs").unwrap(), Location::File("/var/lib/celld/blobs".into()));
        assert_eq!(parse_url("file:///var/lib/celld/blobs/").unwrap(), Location::File("/var/lib/celld/blobs".into()));
        assert_eq!(parse_url("file://localhost/srv/b").unwrap(), Location::File("/srv/b".into()));
        assert_eq!(parse_url("file:///my%20dir").unwrap(), Location::File("/my dir".into()));
        assert_eq!(parse_url("file:///").unwrap(), Location::File("/".into()));
        for bad in ["file://relative/dir", "file:blobs", "file:///a/../b", "file:///a?x=1", "file:///a%zz"] {
            assert!(matches!(parse_url(bad), Err(BlobstoreError::BadUrl(_))), "{bad}");
        }
    }

    #[test]
    fn s3_urls() {
        assert_eq!(
            parse_url("s3://blobs").unwrap(),
            Location::S3 { bucket: "blobs".into(), endpoint: None, region: None }
        );
        let l = parse_url("s3://blobs/?endpoint=http://127.0.0.1:9000/&region=eu-west-1").unwrap();
        assert_eq!(
            l,
            Location::S3 {
                bucket: "blobs".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-west-1".into())
            }
        );
        assert_eq!(l.to_string(), "s3://blobs?endpoint=http://127.0.0.1:9000&region=eu-west-1");
        let l = parse_url("s3://b?endpoint=https%3A%2F%2Fminio.example%3A9000").unwrap();
        assert_eq!(l.to_string(), "s3://b?endpoint=https://minio.example:9000");
        for bad in [
            "s3://",
            "s3://?region=x",
            "s3://b/prefix",
            "s3://b?endpoint=ftp://x",
            "s3://b?endpoint=http://",
            "s3://b?endpoint=http://key:secret@host",
            "s3://key:secret@b",
            "s3://b?secret=x",
            "s3://b?region=a&region=b",
            "s3://b?region=",
            "s3://b?region",
        ] {
            assert!(matches!(parse_url(bad), Err(BlobstoreError::BadUrl(_))), "{bad}");
        }
    }

    #[test]
    fn other_urls_name_the_accepted_forms() {
        for bad in ["", "/var/lib/celld/blobs", "http://x", "gs://b", "S3://b"] {
            let e = parse_url(bad).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("file:///") && msg.contains("s3://BUCKET"), "{msg}");
        }
    }
}
