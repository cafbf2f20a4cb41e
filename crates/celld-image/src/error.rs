//! What a pull, an unpack or the store reports: every message names the image
//! (the URI as given) and the cause.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    BadReference(#[from] crate::reference::ReferenceError),
    #[error("pulling {image}: manifest unknown (no such repository or tag)")]
    NotFound { image: String },
    #[error("pulling {image}: unauthorized (wrong or missing credentials): {detail}")]
    Unauthorized { image: String, detail: String },
    #[error("pulling {image}: registry {registry} is unreachable: {detail}")]
    Unreachable { image: String, registry: String, detail: String },
    #[error("pulling {image}: registry {registry} did not answer within {secs} s")]
    Timeout { image: String, registry: String, secs: u64 },
    #[error("pulling {image}: no linux/amd64 image in its index (it offers {offered})")]
    Platform { image: String, offered: String },
    #[error("pulling {image}: {what} {digest} does not match its digest: {detail}")]
    Digest { image: String, what: &'static str, digest: String, detail: String },
    #[error("pulling {image}: unsupported layer media type {media_type}")]
    MediaType { image: String, media_type: String },
    #[error("pulling {image}: layer {digest}: {cause}")]
    Layer { image: String, digest: String, cause: String },
    #[error("pulling {image}: {cause}")]
    Registry { image: String, cause: String },
    #[error("pulling {image}: bad {what}: {cause}")]
    Malformed { image: String, what: &'static str, cause: String },
    #[error("pulling {image}: the image needs {needed} bytes, more than the image store's limit of {max} bytes")]
    TooLarge { image: String, needed: u64, max: u64 },
    #[error("image store: {context} {path}: {source}")]
    Io { context: String, path: PathBuf, source: std::io::Error },
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let (context, path) = (context.into(), path.into());
        move |source| ImageError::Io { context, path, source }
    }
}

/// An error and its causes on one line (reqwest's and tar's own are terse).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let causes = std::iter::successors(Some(e), |e| e.source());
    causes.map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}
