//! One process stream (stdout or stderr) between init and the Garden client
//! that reads it: bounded while nobody reads, backpressure while somebody does.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Output kept for a stream nobody reads yet (as init keeps for a process
/// nobody is attached to); older output is dropped first.
const UNREAD_STREAM_BYTES: usize = 256 * 1024;
/// Output kept unread across every stream of the server: past it, streams
/// nobody reads keep nothing more.
const UNREAD_TOTAL_BYTES: usize = 32 << 20;
/// How far a reading client may fall behind before the process's output waits
/// for it (init then stops reading the process's pipes: backpressure, no loss).
const READER_BEHIND_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// Nobody has asked for the stream yet: keep the newest output.
    Awaited,
    Reading,
    /// The reader went away: nothing more is kept.
    Gone,
}

struct BufferState {
    chunks: VecDeque<Bytes>,
    len: usize,
    dropped: u64,
    closed: bool,
    reader: Reader,
}

/// One process stream (stdout or stderr) between init and the client that
/// reads it: bounded while nobody reads, backpressure while somebody does.
pub(super) struct StreamBuffer {
    state: Mutex<BufferState>,
    data_ready: tokio::sync::Notify,
    space_ready: tokio::sync::Notify,
    /// Bytes buffered by all of the server's streams.
    total: Arc<AtomicUsize>,
}

impl StreamBuffer {
    pub(super) fn new(total: Arc<AtomicUsize>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(BufferState {
                chunks: VecDeque::new(),
                len: 0,
                dropped: 0,
                closed: false,
                reader: Reader::Awaited,
            }),
            data_ready: tokio::sync::Notify::new(),
            space_ready: tokio::sync::Notify::new(),
            total,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BufferState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds output; waits while a reader is far behind.
    pub(super) async fn push(&self, data: Bytes) {
        loop {
            {
                let mut s = self.lock();
                match s.reader {
                    Reader::Gone => return,
                    Reader::Reading if s.len >= READER_BEHIND_BYTES => {}
                    reader => {
                        let n = data.len();
                        s.len += n;
                        s.chunks.push_back(data);
                        self.total.fetch_add(n, Ordering::Relaxed);
                        if reader == Reader::Awaited {
                            self.trim(&mut s);
                        }
                        self.data_ready.notify_one();
                        return;
                    }
                }
            }
            self.space_ready.notified().await;
        }
    }

    /// Drops the oldest unread output beyond this stream's and the server's bounds.
    fn trim(&self, s: &mut BufferState) {
        while s.len > UNREAD_STREAM_BYTES || self.total.load(Ordering::Relaxed) > UNREAD_TOTAL_BYTES {
            let Some(old) = s.chunks.pop_front() else { break };
            s.len -= old.len();
            s.dropped += old.len() as u64;
            self.total.fetch_sub(old.len(), Ordering::Relaxed);
        }
    }

    /// The next chunk, waiting for it; `None` once the process's output ended.
    pub(super) async fn pop(&self) -> Option<Bytes> {
        loop {
            {
                let mut s = self.lock();
                if let Some(c) = s.chunks.pop_front() {
                    s.len -= c.len();
                    self.total.fetch_sub(c.len(), Ordering::Relaxed);
                    self.space_ready.notify_one();
                    return Some(c);
                }
                if s.closed {
                    return None;
                }
            }
            self.data_ready.notified().await;
        }
    }

    /// The reader's claim: once per stream. Returns the bytes dropped before it.
    pub(super) fn claim(&self) -> Option<u64> {
        let mut s = self.lock();
        if s.reader != Reader::Awaited {
            return None;
        }
        s.reader = Reader::Reading;
        Some(s.dropped)
    }

    pub(super) fn awaited(&self) -> bool {
        self.lock().reader == Reader::Awaited
    }

    /// Starts a new stream with output an earlier one of the same process kept unread.
    pub(super) fn seed(&self, chunks: Vec<Bytes>) {
        let mut s = self.lock();
        for c in chunks {
            s.len += c.len();
            self.total.fetch_add(c.len(), Ordering::Relaxed);
            s.chunks.push_back(c);
        }
    }

    /// What is buffered now, for a later attach to the same process.
    pub(super) fn snapshot(&self) -> Vec<Bytes> {
        self.lock().chunks.iter().cloned().collect()
    }

    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.data_ready.notify_one();
    }

    fn reader_gone(&self) {
        let mut s = self.lock();
        s.reader = Reader::Gone;
        let n = std::mem::take(&mut s.len);
        s.chunks.clear();
        self.total.fetch_sub(n, Ordering::Relaxed);
        self.space_ready.notify_one();
    }

    pub(super) fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

impl Drop for StreamBuffer {
    fn drop(&mut self) {
        let len = self.lock().len;
        self.total.fetch_sub(len, Ordering::Relaxed);
    }
}

/// Marks a stream's reader gone however its connection ends.
pub(super) struct ReaderGuard(pub(super) Arc<StreamBuffer>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.reader_gone();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn unread_output_keeps_the_newest_within_bounds() {
        let total = Arc::new(AtomicUsize::new(0));
        let b = StreamBuffer::new(total.clone());
        for i in 0..100u8 {
            b.push(Bytes::from(vec![i; 32 * 1024])).await;
        }
        assert!(total.load(Ordering::Relaxed) <= UNREAD_STREAM_BYTES);
        assert_eq!(b.dropped(), (100 * 32 * 1024 - UNREAD_STREAM_BYTES) as u64);
        assert_eq!(b.claim(), Some(b.dropped()));
        assert_eq!(b.claim(), None, "a stream is read once");
        b.close();
        let mut last = 0;
        while let Some(c) = b.pop().await {
            last = c[0];
        }
        assert_eq!(last, 99);
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_reader_behind_holds_the_output_back_and_loses_nothing() {
        let b = StreamBuffer::new(Arc::new(AtomicUsize::new(0)));
        b.claim();
        let writer = {
            let b = b.clone();
            tokio::spawn(async move {
                for i in 0..64u32 {
                    b.push(Bytes::from(i.to_be_bytes().repeat(16 * 1024))).await;
                }
                b.close();
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!writer.is_finished(), "4 MiB were taken without a reader");
        let mut n = 0u32;
        while let Some(c) = b.pop().await {
            assert_eq!(&c[..4], &n.to_be_bytes());
            n += 1;
        }
        assert_eq!(n, 64);
        assert_eq!(b.dropped(), 0);
    }

    #[tokio::test]
    async fn the_server_wide_bound_holds_across_streams() {
        let total = Arc::new(AtomicUsize::new(0));
        let streams: Vec<_> = (0..200).map(|_| StreamBuffer::new(total.clone())).collect();
        for s in &streams {
            for _ in 0..8 {
                s.push(Bytes::from(vec![0u8; 32 * 1024])).await;
            }
        }
        assert!(total.load(Ordering::Relaxed) <= UNREAD_TOTAL_BYTES + 32 * 1024);
        drop(streams);
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }
}
