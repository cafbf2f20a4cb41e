//! What goes wrong reading or writing an archive, as the one error type every
//! archive file returns (staging reports its text to the user).

use std::io;
use std::path::Path;

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

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Io { context, source }
}

pub(super) fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
