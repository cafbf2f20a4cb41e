//! Pull progress: a caller-supplied callback told how far each layer's
//! download is, so whoever asked for the image (a push waiting on staging)
//! can show it. The store knows nothing of who listens.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// One layer of a pull: `done` of `total` compressed bytes (`total` is the
/// manifest's size). A layer the store already has is reported once, done,
/// with `cached` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProgress {
    pub digest: String,
    pub done: u64,
    pub total: u64,
    pub cached: bool,
}

/// Called from the pull's task as bytes arrive (often: keep it cheap).
pub type Progress = Arc<dyn Fn(&LayerProgress) + Send + Sync>;

/// Reports a layer's bytes as they are written to its blob file.
pub(crate) struct Counting<'a, W> {
    pub inner: W,
    pub report: Option<(&'a Progress, &'a str, u64)>,
    pub done: u64,
}

impl<'a, W> Counting<'a, W> {
    pub fn new(inner: W, report: Option<(&'a Progress, &'a str, u64)>) -> Self {
        Self { inner, report, done: 0 }
    }

    pub fn add(&mut self, n: usize) {
        self.done = self.done.saturating_add(n as u64);
        if let Some((cb, digest, total)) = self.report {
            cb(&LayerProgress { digest: digest.to_string(), done: self.done, total, cached: false });
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<'_, W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.add(n);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn counting_reports_every_write() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let cb: Progress = Arc::new(move |p: &LayerProgress| s.lock().unwrap().push(p.done));
        let mut out = Vec::new();
        let mut w = Counting::new(&mut out, Some((&cb, "sha256:ab", 7)));
        w.write_all(b"abc").await.unwrap();
        w.write_all(b"defg").await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.done, 7);
        assert_eq!(out, b"abcdefg");
        assert_eq!(*seen.lock().unwrap(), vec![3, 7]);
        // No callback: counts only.
        let mut sink = Vec::new();
        let mut w = Counting::new(&mut sink, None);
        w.write_all(b"xy").await.unwrap();
        assert_eq!(w.done, 2);
    }
}
