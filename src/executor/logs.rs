//! The cell's log pipeline: app, task and cell lines, per `log_guid`, kept in
//! a bounded recent history and broadcast to followers (`cf logs`).
//!
//! An app must never be blocked by its logs: emitting takes a short std mutex
//! and never waits, a slow follower loses lines (its broadcast receiver
//! lags), and a chatty instance is rate limited.
//!
//! Line splitting and rate limiting follow the executor's log streamer
//! (`depot/log_streamer/stream_destination.go`, `log_rate_limiter.go`): both
//! `\n` and `\r` end a line, empty lines are not sent, an overlong line is cut
//! at a UTF-8 boundary, and an instance over its lines/sec limit has its lines
//! dropped for a second with one report line.
//!
//! A hub keeps its history in memory only. Local mode plugs a [`LogSink`] in
//! (the app layer's disk log) and preloads the history it kept, so lines
//! survive a restart; a plain cell has no sink.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use celld_proto as pb;
use celld_proto::log_envelope::MessageType;

/// Recent lines kept per log guid.
pub const DEFAULT_HISTORY: usize = 1000;
/// Log guids kept; the least recently used beyond that are forgotten.
pub const DEFAULT_MAX_GUIDS: usize = 4096;
/// Lines a follower may fall behind by before it starts losing them.
const FOLLOW_BUFFER: usize = 1024;
/// Longest line sent as one envelope (the executor cuts at 61440 bytes).
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// Whether `env` belongs to `instance` (`None`: every instance).
pub fn matches(env: &pb::LogEnvelope, instance: Option<i32>) -> bool {
    instance.is_none_or(|i| env.source_instance == i.to_string())
}

/// Unix time in nanoseconds, as envelopes carry it.
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Where lines go besides the hub's memory. Called under the hub's lock (so
/// it sees lines in the hub's order): it must never block.
pub trait LogSink: Send + Sync {
    fn record(&self, env: &pb::LogEnvelope);
    /// Every line of `log_guid` goes (its app was deleted).
    fn forget(&self, log_guid: &str);
    /// Every log guid but these goes.
    fn retain(&self, keep: &HashSet<String>);
}

/// Recent history and followers of every log guid on the cell. Share it as
/// `Arc<LogHub>`.
pub struct LogHub {
    inner: Mutex<Inner>,
    history: usize,
    max_guids: usize,
    sink: OnceLock<Arc<dyn LogSink>>,
    /// /metrics: lines emitted, and dropped by rate limits.
    emitted: prometheus_client::metrics::counter::Counter,
    dropped: prometheus_client::metrics::counter::Counter,
}

struct Inner {
    streams: HashMap<String, Stream>,
    /// Bumped on every use, to find the least recently used stream.
    clock: u64,
}

struct Stream {
    recent: VecDeque<pb::LogEnvelope>,
    followers: broadcast::Sender<pb::LogEnvelope>,
    last_used: u64,
}

impl std::fmt::Debug for LogHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHub").field("history", &self.history).field("max_guids", &self.max_guids).finish()
    }
}

impl Default for LogHub {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY, DEFAULT_MAX_GUIDS)
    }
}

impl LogHub {
    /// `history` lines per guid, at most `max_guids` guids (both at least 1).
    pub fn new(history: usize, max_guids: usize) -> Self {
        Self {
            inner: Mutex::new(Inner { streams: HashMap::new(), clock: 0 }),
            history: history.max(1),
            max_guids: max_guids.max(1),
            sink: OnceLock::new(),
            emitted: Default::default(),
            dropped: Default::default(),
        }
    }

    /// Counts lines into these (the executor's registered metrics).
    pub fn with_counters(
        mut self,
        emitted: prometheus_client::metrics::counter::Counter,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.emitted = emitted;
        self.dropped = dropped;
        self
    }

    /// Lines kept per log guid.
    pub fn history(&self) -> usize {
        self.history
    }

    /// Sends every line emitted from now on to `sink` as well. Only the first
    /// sink set is kept (false if one was already there).
    pub fn set_sink(&self, sink: Arc<dyn LogSink>) -> bool {
        self.sink.set(sink).is_ok()
    }

    /// Puts `lines` (oldest first, e.g. read back from disk) before the
    /// history of `log_guid`, keeping the newest `history` lines.
    pub fn preload(&self, log_guid: &str, lines: Vec<pb::LogEnvelope>) {
        if lines.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let stream = inner.stream(log_guid, self.max_guids);
        let mut merged: VecDeque<pb::LogEnvelope> = lines.into();
        merged.append(&mut stream.recent);
        while merged.len() > self.history {
            merged.pop_front();
        }
        stream.recent = merged;
    }

    /// The history of `log_guid`, oldest first, without making it a stream
    /// (a read of an unknown guid leaves nothing behind).
    pub fn recent(&self, log_guid: &str) -> Vec<pb::LogEnvelope> {
        self.lock().streams.get(log_guid).map(|s| s.recent.iter().cloned().collect()).unwrap_or_default()
    }

    /// Drops the history of `log_guid`, in memory and in the sink; its
    /// followers' streams end.
    pub fn forget(&self, log_guid: &str) {
        let mut inner = self.lock();
        inner.streams.remove(log_guid);
        if let Some(sink) = self.sink.get() {
            sink.forget(log_guid);
        }
    }

    /// Drops every log guid not in `keep`, in memory and in the sink.
    pub fn retain(&self, keep: &HashSet<String>) {
        let mut inner = self.lock();
        inner.streams.retain(|guid, _| keep.contains(guid));
        if let Some(sink) = self.sink.get() {
            sink.retain(keep);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent data
        // (every update is a single push/pop), so keep going.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a line and sends it to the followers of its log guid. Never
    /// blocks on followers.
    pub fn emit(&self, env: pb::LogEnvelope) {
        self.emitted.inc();
        let mut inner = self.lock();
        let stream = inner.stream(&env.log_guid, self.max_guids);
        if stream.recent.len() >= self.history {
            stream.recent.pop_front();
        }
        if let Some(sink) = self.sink.get() {
            sink.record(&env);
        }
        // Copied only for followers: most lines (a router's RTR line per
        // request) have none.
        if stream.followers.receiver_count() > 0 {
            stream.recent.push_back(env.clone());
            // A follower gone since the count is not an error.
            let _ = stream.followers.send(env);
        } else {
            stream.recent.push_back(env);
        }
    }

    /// The last `recent` lines of `log_guid` (of `instance`, if given) and a
    /// receiver of every line emitted after them, taken under one lock so
    /// that no line is lost or seen twice between the two. The receiver gets
    /// all instances' lines: filter with [`matches`].
    pub fn subscribe(
        &self,
        log_guid: &str,
        instance: Option<i32>,
        recent: usize,
    ) -> (Vec<pb::LogEnvelope>, broadcast::Receiver<pb::LogEnvelope>) {
        let mut inner = self.lock();
        let stream = inner.stream(log_guid, self.max_guids);
        let mut history: Vec<pb::LogEnvelope> =
            stream.recent.iter().rev().filter(|e| matches(e, instance)).take(recent).cloned().collect();
        history.reverse();
        (history, stream.followers.subscribe())
    }

    /// Number of log guids currently kept.
    pub fn guids(&self) -> usize {
        self.lock().streams.len()
    }
}

impl Inner {
    /// The stream of `log_guid`, created if new (forgetting the least
    /// recently used one when full).
    fn stream(&mut self, log_guid: &str, max_guids: usize) -> &mut Stream {
        self.clock += 1;
        let now = self.clock;
        if !self.streams.contains_key(log_guid) && self.streams.len() >= max_guids {
            self.evict();
        }
        let stream = self.streams.entry(log_guid.to_string()).or_insert_with(|| Stream {
            recent: VecDeque::new(),
            followers: broadcast::channel(FOLLOW_BUFFER).0,
            last_used: now,
        });
        stream.last_used = now;
        stream
    }

    /// Forgets the least recently used stream, preferring one nobody follows
    /// (forgetting a followed one ends its followers' streams).
    fn evict(&mut self) {
        let victim = self
            .streams
            .iter()
            .min_by_key(|(_, s)| (s.followers.receiver_count() > 0, s.last_used))
            .map(|(guid, _)| guid.clone());
        if let Some(guid) = victim {
            self.streams.remove(&guid);
        }
    }
}

/// Emits one line from the cell about an instance (`CELL`, `HEALTH`…) on
/// stdout.
pub fn cell_line(hub: &LogHub, log_guid: &str, source_type: &str, index: i32, msg: &str) {
    hub.emit(envelope(log_guid, source_type, &index.to_string(), MessageType::Out, msg.into()));
}

/// As [`cell_line`], on stderr (the executor writes health failures there).
pub fn cell_error_line(hub: &LogHub, log_guid: &str, source_type: &str, index: i32, msg: &str) {
    hub.emit(envelope(log_guid, source_type, &index.to_string(), MessageType::Err, msg.into()));
}

fn envelope(log_guid: &str, source_type: &str, instance: &str, kind: MessageType, message: String) -> pb::LogEnvelope {
    pb::LogEnvelope {
        source_type: source_type.into(),
        source_instance: instance.into(),
        message_type: kind as i32,
        timestamp: now_ns(),
        message,
        log_guid: log_guid.into(),
    }
}

/// One instance's log rate limit, shared by its stdout and stderr: a token
/// bucket of `lines_per_second` (burst as large), and once it is exceeded
/// every line is dropped for a second, as in the executor. 0 is unlimited.
pub struct RateLimiter {
    lines_per_second: u32,
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// When the limit was last exceeded: lines are dropped for a second.
    overage: Option<Instant>,
}

/// What to do with one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Drop,
    /// Drop it and send this report line instead.
    Report(String),
}

impl RateLimiter {
    pub fn new(lines_per_second: u32) -> Self {
        Self {
            lines_per_second,
            state: Mutex::new(Bucket { tokens: f64::from(lines_per_second), refilled: Instant::now(), overage: None }),
        }
    }

    /// The executor's report line, sent on the app's own source type, stdout.
    pub fn message(&self) -> String {
        format!(
            "app instance exceeded log rate limit ({} log-lines/sec) set by platform operator",
            self.lines_per_second
        )
    }

    pub fn check(&self) -> Verdict {
        self.check_at(Instant::now())
    }

    /// [`check`](Self::check) at a given time (tests).
    pub fn check_at(&self, now: Instant) -> Verdict {
        if self.lines_per_second == 0 {
            return Verdict::Allow;
        }
        let mut b = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if b.overage.is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1)) {
            return Verdict::Drop;
        }
        let rate = f64::from(self.lines_per_second);
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.refilled = now.max(b.refilled);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Allow;
        }
        b.overage = Some(now);
        Verdict::Report(self.message())
    }
}

/// Turns one process stream (stdout or stderr) into log lines.
pub struct LineWriter {
    hub: Arc<LogHub>,
    log_guid: String,
    source_type: String,
    source_instance: String,
    kind: MessageType,
    max_line: usize,
    limiter: Option<Arc<RateLimiter>>,
    /// The unterminated end of what was pushed so far (< max_line bytes
    /// between calls).
    partial: Vec<u8>,
}

impl LineWriter {
    /// `max_line` 0 means [`DEFAULT_MAX_LINE`]; lines are cut at at least 4
    /// bytes so that any UTF-8 character fits.
    pub fn new(
        hub: Arc<LogHub>,
        log_guid: String,
        source_type: String,
        source_instance: String,
        err: bool,
        max_line: usize,
        limiter: Option<Arc<RateLimiter>>,
    ) -> Self {
        Self {
            hub,
            log_guid,
            source_type,
            source_instance,
            kind: if err { MessageType::Err } else { MessageType::Out },
            max_line: if max_line == 0 { DEFAULT_MAX_LINE } else { max_line.max(4) },
            limiter,
            partial: Vec::new(),
        }
    }

    /// Feeds output bytes; every complete line is emitted.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n' || *b == b'\r') {
                Some(end) => {
                    let (line, rest) = bytes.split_at(end);
                    self.append(line);
                    self.flush();
                    bytes = rest.get(1..).unwrap_or_default();
                }
                None => {
                    self.append(bytes);
                    bytes = &[];
                }
            }
        }
    }

    /// Emits the unterminated last line, if any (at the end of the stream).
    pub fn flush(&mut self) {
        let line = std::mem::take(&mut self.partial);
        self.send(&line);
    }

    /// Adds to the partial line, emitting `max_line`-sized pieces cut at
    /// UTF-8 character boundaries.
    fn append(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while self.partial.len() >= self.max_line {
            let cut = utf8_cut(self.partial.get(..self.max_line).unwrap_or_default());
            let rest = self.partial.split_off(cut);
            let line = std::mem::replace(&mut self.partial, rest);
            self.send(&line);
        }
    }

    fn send(&self, line: &[u8]) {
        if line.is_empty() {
            return;
        }
        if let Some(limiter) = &self.limiter {
            match limiter.check() {
                Verdict::Allow => {}
                Verdict::Drop => {
                    self.hub.dropped.inc();
                    return;
                }
                Verdict::Report(msg) => {
                    self.hub.dropped.inc();
                    let env = envelope(&self.log_guid, &self.source_type, &self.source_instance, MessageType::Out, msg);
                    self.hub.emit(env);
                    return;
                }
            }
        }
        let message = String::from_utf8_lossy(line).into_owned();
        self.hub.emit(envelope(&self.log_guid, &self.source_type, &self.source_instance, self.kind, message));
    }
}

/// Where to cut `window` (the first `max_line` bytes of a line) so that no
/// UTF-8 character is split: before a last character that does not fit,
/// else at its end. Bytes that are not UTF-8 are cut anywhere. Never 0 for a
/// window of at least 4 bytes, so the writer always makes progress.
fn utf8_cut(window: &[u8]) -> usize {
    let n = window.len();
    for back in 1..=n.min(4) {
        let i = n - back;
        let Some(&b) = window.get(i) else { break };
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: the character starts earlier
        }
        let len = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if i + len <= n || i == 0 { n } else { i };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(guid: &str, instance: i32, msg: &str) -> pb::LogEnvelope {
        envelope(guid, "APP/PROC/WEB", &instance.to_string(), MessageType::Out, msg.into())
    }

    fn messages(envs: &[pb::LogEnvelope]) -> Vec<&str> {
        envs.iter().map(|e| e.message.as_str()).collect()
    }

    fn drain(rx: &mut broadcast::Receiver<pb::LogEnvelope>) -> Vec<pb::LogEnvelope> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    fn writer(hub: &Arc<LogHub>, max_line: usize, limiter: Option<Arc<RateLimiter>>) -> LineWriter {
        LineWriter::new(hub.clone(), "g".into(), "APP/PROC/WEB".into(), "0".into(), false, max_line, limiter)
    }

    fn history(hub: &LogHub) -> Vec<String> {
        hub.subscribe("g", None, usize::MAX).0.into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn history_then_follow_loses_nothing_and_repeats_nothing() {
        let hub = Arc::new(LogHub::new(1000, 10));
        let writer = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    hub.emit(line("g", 0, &i.to_string()));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(1));
        let (recent, mut rx) = hub.subscribe("g", None, 1000);
        writer.join().unwrap();
        let mut all: Vec<String> = recent.into_iter().map(|e| e.message).collect();
        all.extend(drain(&mut rx).into_iter().map(|e| e.message));
        let want: Vec<String> = (0..500).map(|i| i.to_string()).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn history_is_bounded_and_recent_counts_from_the_end() {
        let hub = LogHub::new(3, 10);
        for i in 0..5 {
            hub.emit(line("g", 0, &i.to_string()));
        }
        assert_eq!(messages(&hub.subscribe("g", None, 10).0), ["2", "3", "4"]);
        assert_eq!(messages(&hub.subscribe("g", None, 2).0), ["3", "4"]);
        assert!(hub.subscribe("g", None, 0).0.is_empty());
        assert!(hub.subscribe("other", None, 10).0.is_empty());
    }

    #[test]
    fn instance_filter() {
        let hub = LogHub::default();
        hub.emit(line("g", 0, "a0"));
        hub.emit(line("g", 1, "a1"));
        hub.emit(line("g", 0, "b0"));
        cell_line(&hub, "g", "CELL", 1, "Cell c1 creating container for instance i1");
        let (recent, mut rx) = hub.subscribe("g", Some(1), 10);
        assert_eq!(messages(&recent), ["a1", "Cell c1 creating container for instance i1"]);
        assert_eq!(recent[1].source_type, "CELL");
        hub.emit(line("g", 0, "c0"));
        hub.emit(line("g", 1, "c1"));
        hub.emit(line("h", 1, "other app"));
        let live: Vec<_> = drain(&mut rx).into_iter().filter(|e| matches(e, Some(1))).collect();
        assert_eq!(messages(&live), ["c1"]);
    }

    #[test]
    fn least_recently_used_guids_are_forgotten_followed_ones_last() {
        let hub = LogHub::new(10, 2);
        hub.emit(line("a", 0, "x"));
        let (_, _rx_a) = hub.subscribe("a", None, 0);
        hub.emit(line("b", 0, "x"));
        hub.emit(line("c", 0, "x"));
        assert_eq!(hub.guids(), 2);
        // "b" was newer than "a", but "a" has a follower.
        assert_eq!(hub.subscribe("a", None, 10).0.len(), 1);
        assert_eq!(hub.subscribe("c", None, 10).0.len(), 1);
    }

    #[test]
    fn preload_goes_before_new_lines_and_recent_reads_without_making_a_stream() {
        let hub = LogHub::new(4, 10);
        hub.emit(line("g", 0, "new"));
        hub.preload("g", ["a", "b", "c", "d"].iter().map(|m| line("g", 0, m)).collect());
        assert_eq!(messages(&hub.recent("g")), ["b", "c", "d", "new"]);
        assert!(hub.recent("unknown").is_empty());
        assert_eq!(hub.guids(), 1);
        let (_, mut rx) = hub.subscribe("g", None, 0);
        hub.forget("g");
        assert!(hub.recent("g").is_empty());
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Closed)));
    }

    #[test]
    fn a_sink_sees_every_line_in_order() {
        #[derive(Default)]
        struct Seen(Mutex<Vec<String>>);
        impl LogSink for Seen {
            fn record(&self, env: &pb::LogEnvelope) {
                self.0.lock().unwrap().push(env.message.clone());
            }
            fn forget(&self, log_guid: &str) {
                self.0.lock().unwrap().push(format!("forget {log_guid}"));
            }
            fn retain(&self, keep: &HashSet<String>) {
                self.0.lock().unwrap().push(format!("retain {}", keep.len()));
            }
        }
        let hub = LogHub::default();
        let seen = Arc::new(Seen::default());
        assert!(hub.set_sink(seen.clone()));
        assert!(!hub.set_sink(seen.clone()));
        hub.emit(line("g", 0, "one"));
        cell_line(&hub, "h", "CELL", 0, "two");
        hub.forget("g");
        hub.retain(&HashSet::from(["h".to_string()]));
        assert_eq!(*seen.0.lock().unwrap(), ["one", "two", "forget g", "retain 1"]);
        assert_eq!(hub.guids(), 1);
    }

    #[test]
    fn a_slow_follower_lags_and_never_blocks_the_app() {
        let hub = LogHub::new(10, 10);
        let (_, mut rx) = hub.subscribe("g", None, 0);
        for i in 0..(FOLLOW_BUFFER + 10) {
            hub.emit(line("g", 0, &i.to_string()));
        }
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Lagged(10))));
        assert_eq!(rx.try_recv().unwrap().message, "10");
    }

    #[test]
    fn line_writer_splits_lines() {
        let hub = Arc::new(LogHub::default());
        let mut w = writer(&hub, 0, None);
        w.push(b"one\ntw");
        w.push(b"o\r\nthree\rfour\n\n");
        w.push(b"partial");
        assert_eq!(history(&hub), ["one", "two", "three", "four"]);
        w.flush();
        w.flush();
        assert_eq!(history(&hub), ["one", "two", "three", "four", "partial"]);
        let all = hub.subscribe("g", None, 10).0;
        assert!(all.iter().all(|e| e.message_type == MessageType::Out as i32 && e.source_instance == "0"));
        assert!(all.iter().all(|e| e.timestamp > 1_600_000_000_000_000_000));
    }

    #[test]
    fn line_writer_cuts_long_lines_at_utf8_boundaries() {
        let hub = Arc::new(LogHub::default());
        let mut w = writer(&hub, 8, None);
        w.push(b"0123456789abcdefghij\n");
        assert_eq!(history(&hub), ["01234567", "89abcdef", "ghij"]);

        let hub = Arc::new(LogHub::default());
        let mut w = writer(&hub, 8, None);
        // "é" is 2 bytes, "€" 3: byte 8 would fall inside the "€".
        let text = "abcdé€xyz€€€";
        // Pushed a byte at a time, so cuts happen across pushes too.
        for b in text.as_bytes() {
            w.push(&[*b]);
        }
        w.flush();
        let lines = history(&hub);
        assert_eq!(lines.concat(), text);
        assert!(lines.iter().all(|l| l.len() <= 8 && !l.contains('\u{fffd}')), "{lines:?}");
        assert_eq!(lines[0], "abcdé");

        // Not UTF-8: cut at the bound, decoded lossily.
        let hub = Arc::new(LogHub::default());
        let mut w = writer(&hub, 4, None);
        w.push(&[0x80, 0x80, 0x80, 0x80, 0x80, b'\n']);
        assert_eq!(history(&hub), ["\u{fffd}\u{fffd}\u{fffd}\u{fffd}", "\u{fffd}"]);
    }

    #[test]
    fn rate_limiter_drops_for_a_second_and_reports_once() {
        let limiter = RateLimiter::new(3);
        let t0 = Instant::now();
        let msg = "app instance exceeded log rate limit (3 log-lines/sec) set by platform operator";
        assert_eq!(limiter.check_at(t0), Verdict::Allow);
        assert_eq!(limiter.check_at(t0), Verdict::Allow);
        assert_eq!(limiter.check_at(t0), Verdict::Allow);
        assert_eq!(limiter.check_at(t0), Verdict::Report(msg.into()));
        assert_eq!(limiter.check_at(t0 + Duration::from_millis(500)), Verdict::Drop);
        assert_eq!(limiter.check_at(t0 + Duration::from_millis(999)), Verdict::Drop);
        // A second later the bucket is full again.
        let t1 = t0 + Duration::from_millis(1000);
        for _ in 0..3 {
            assert_eq!(limiter.check_at(t1), Verdict::Allow);
        }
        assert_eq!(limiter.check_at(t1), Verdict::Report(msg.into()));
        assert_eq!(RateLimiter::new(0).check_at(t0), Verdict::Allow);
    }

    #[test]
    fn line_writer_rate_limited() {
        let hub = Arc::new(LogHub::default());
        let limiter = Arc::new(RateLimiter::new(5));
        let mut out = writer(&hub, 0, Some(limiter.clone()));
        let mut err =
            LineWriter::new(hub.clone(), "g".into(), "APP/PROC/WEB".into(), "0".into(), true, 0, Some(limiter));
        for i in 0..100 {
            out.push(format!("out {i}\n").as_bytes());
            err.push(format!("err {i}\n").as_bytes());
        }
        let all = hub.subscribe("g", None, 1000).0;
        let reports: Vec<_> = all.iter().filter(|e| e.message.starts_with("app instance exceeded")).collect();
        assert_eq!(all.len(), 6, "{:?}", messages(&all));
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].message_type, MessageType::Out as i32);
        assert_eq!(reports[0].source_type, "APP/PROC/WEB");
        assert_eq!(messages(&all[..5]), ["out 0", "err 0", "out 1", "err 1", "out 2"]);
    }
}
