//! Local mode's log lines on disk, so `cf logs --recent` still shows them
//! after celld restarts: the log hub's [`LogSink`], bounded per app.
//!
//! Each log guid (an app's guid) has two segments in the directory,
//! `GUID.log` (written) and `GUID.log.1` (the one before it): when the written
//! one reaches `segment_lines` lines or `segment_bytes` bytes it replaces the
//! older one, so an app keeps between one and two segments of its newest lines.
//!
//! A record is `len: u32 LE | xxh64(body): u64 LE | body` where the body is the
//! protobuf `LogEnvelope`. Nothing is fsynced: a crash may lose the last lines
//! or tear the last record, and a read stops at the first record that is
//! incomplete or fails its checksum (the file is cut back there on open, so
//! later appends stay readable).
//!
//! The emitter never waits: lines go through a bounded channel to one writer
//! thread, which writes whatever has queued up as one batch per file; when the
//! channel is full the line stays in memory only (counted, and logged).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use prost::Message;

use crate::executor::logs::{LogHub, LogSink};
use celld_proto as pb;

/// Lines in a segment before it is rotated (an app keeps at most twice this).
pub const DEFAULT_SEGMENT_LINES: usize = 1000;
/// Bytes in a segment before it is rotated (long lines fill it before the line count).
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 20;
/// Lines queued for the writer before new ones stay in memory only.
const QUEUE: usize = 16 * 1024;
/// Lines written as one batch at most.
const BATCH: usize = 1024;
/// The writer's rest after each batch: without it, under a router's load
/// every emitted line woke the writer (a futex wake and a context switch per
/// request); with it lines queue up and go out in batches. Lines reach the
/// disk at most this much later (the hub has them at once).
const PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
/// A record header: length and checksum.
const HEADER: usize = 12;
/// Larger than any line the hub emits (64 KiB) plus its envelope.
const MAX_RECORD: usize = 1 << 20;
const CURRENT: &str = ".log";
const PREVIOUS: &str = ".log.1";

#[derive(Debug, thiserror::Error)]
pub enum LogDiskError {
    #[error("log directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("log file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("starting the log writer: {0}")]
    Thread(std::io::Error),
}

enum Op {
    Line(Box<pb::LogEnvelope>),
    Forget(String),
    Retain(HashSet<String>),
    /// Answered once everything queued before it is written (tests, shutdown).
    Flush(SyncSender<()>),
}

/// The disk log's handle: what the hub calls. Cheap and never blocking.
pub struct DiskLog {
    tx: SyncSender<Op>,
    dropped: AtomicU64,
}

/// The lines kept per log guid, oldest first.
pub type History = Vec<(String, Vec<pb::LogEnvelope>)>;

/// Segment sizes (tests make them small).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub segment_lines: usize,
    pub segment_bytes: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Self { segment_lines: DEFAULT_SEGMENT_LINES, segment_bytes: DEFAULT_SEGMENT_BYTES }
    }
}

/// Whether `guid` may name a file here (app guids always may); lines of other
/// log guids stay in memory only.
fn file_safe(guid: &str) -> bool {
    !guid.is_empty() && guid.len() <= 128 && guid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl DiskLog {
    /// Opens (making it 0700) the log directory, puts every log guid's lines
    /// kept there into `hub`'s history, and from then on records every line
    /// `hub` emits. Call before anything emits, so the order stays the hub's.
    pub fn attach(dir: &Path, bounds: Bounds, hub: &LogHub) -> Result<Arc<DiskLog>, LogDiskError> {
        let (log, history) = Self::open(dir, bounds)?;
        for (guid, lines) in history {
            let skip = lines.len().saturating_sub(hub.history());
            hub.preload(&guid, lines.into_iter().skip(skip).collect());
        }
        hub.set_sink(log.clone());
        Ok(log)
    }

    /// Opens the directory and starts the writer; the lines kept per log
    /// guid, oldest first.
    pub fn open(dir: &Path, bounds: Bounds) -> Result<(Arc<DiskLog>, History), LogDiskError> {
        create_private_dir(dir)?;
        let mut writer = Writer { dir: dir.to_path_buf(), bounds, segments: HashMap::new(), forgotten: HashSet::new() };
        let history = writer.load()?;
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("celld-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(LogDiskError::Thread)?;
        Ok((Arc::new(DiskLog { tx, dropped: AtomicU64::new(0) }), history))
    }

    /// Waits until every line emitted before the call is written (or the
    /// writer is gone).
    pub fn flush(&self) {
        let (tx, rx) = sync_channel(1);
        if self.tx.send(Op::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Lines that found the queue full (kept in memory only).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, op: Op) {
        match self.tx.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(op)) => {
                // A forget or retain must not be lost (an app's deletion); they
                // are rare, so waiting for room is fine.
                if matches!(op, Op::Line(_)) {
                    let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(dropped = n, "log writer behind: lines kept in memory only");
                    }
                } else {
                    let _ = self.tx.send(op);
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl LogSink for DiskLog {
    fn record(&self, env: &pb::LogEnvelope) {
        if file_safe(&env.log_guid) {
            self.send(Op::Line(Box::new(env.clone())));
        }
    }

    fn forget(&self, log_guid: &str) {
        if file_safe(log_guid) {
            self.send(Op::Forget(log_guid.to_string()));
        }
    }

    fn retain(&self, keep: &HashSet<String>) {
        self.send(Op::Retain(keep.clone()));
    }
}

fn create_private_dir(dir: &Path) -> Result<(), LogDiskError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| LogDiskError::Dir { path: dir.to_path_buf(), source };
    // Only the last component is private: the depot's own dirs keep theirs.
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(err(e)),
        _ => {}
    }
    if !std::fs::metadata(dir).map_err(err)?.is_dir() {
        return Err(err(std::io::Error::new(ErrorKind::NotADirectory, "not a directory")));
    }
    Ok(())
}

/// The written segment of a log guid: what it holds so far.
#[derive(Default, Clone, Copy)]
struct Segment {
    lines: usize,
    bytes: u64,
}

struct Writer {
    dir: PathBuf,
    bounds: Bounds,
    segments: HashMap<String, Segment>,
    /// Deleted apps: their instances' last lines (stopping, exit) come after
    /// the deletion and must not make new files. Guids are never reused.
    forgotten: HashSet<String>,
}

impl Writer {
    fn path(&self, guid: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!("{guid}{suffix}"))
    }

    /// Every log guid with a file here.
    fn guids(&self) -> Result<HashSet<String>, LogDiskError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|source| LogDiskError::Dir { path: self.dir.clone(), source })?;
        let mut out = HashSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let guid = name.strip_suffix(PREVIOUS).or_else(|| name.strip_suffix(CURRENT));
            if let Some(guid) = guid.filter(|g| file_safe(g)) {
                out.insert(guid.to_string());
            }
        }
        Ok(out)
    }

    /// Reads every log guid's segments (cutting torn tails off the written
    /// one) and learns how full each written segment is.
    fn load(&mut self) -> Result<History, LogDiskError> {
        let mut out = Vec::new();
        for guid in self.guids()? {
            let mut lines = read_segment(&self.path(&guid, PREVIOUS), false)?.0;
            let (current, good) = read_segment(&self.path(&guid, CURRENT), true)?;
            self.segments.insert(guid.clone(), Segment { lines: current.len(), bytes: good });
            lines.extend(current);
            if !lines.is_empty() {
                out.push((guid, lines));
            }
        }
        Ok(out)
    }

    fn run(mut self, rx: Receiver<Op>) {
        let mut lines: Vec<pb::LogEnvelope> = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            // Take whatever has queued up, writing lines in batches and
            // anything else in its place in the order.
            while let Some(op) = next.take() {
                match op {
                    Op::Line(env) => lines.push(*env),
                    other => {
                        self.write(&mut lines);
                        self.apply(other);
                    }
                }
                if lines.len() < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.write(&mut lines);
            std::thread::sleep(PAUSE);
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Line(_) => {}
            Op::Forget(guid) => {
                self.remove(&guid);
                self.forgotten.insert(guid);
            }
            Op::Retain(keep) => match self.guids() {
                Ok(guids) => guids.iter().filter(|g| !keep.contains(*g)).for_each(|g| self.remove(g)),
                Err(e) => tracing::warn!(error = %e, "could not list the kept logs"),
            },
            Op::Flush(done) => {
                let _ = done.send(());
            }
        }
    }

    fn remove(&mut self, guid: &str) {
        self.segments.remove(guid);
        for suffix in [CURRENT, PREVIOUS] {
            let path = self.path(guid, suffix);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(app_guid = %guid, path = %path.display(), error = %e, "could not delete an app's logs");
                }
            }
        }
    }

    /// Writes a batch, grouped per log guid in their order.
    fn write(&mut self, lines: &mut Vec<pb::LogEnvelope>) {
        let mut per_guid: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for env in lines.drain(..) {
            if self.forgotten.contains(&env.log_guid) {
                continue;
            }
            let record = encode(&env);
            match per_guid.iter_mut().find(|(g, _)| *g == env.log_guid) {
                Some((_, records)) => records.push(record),
                None => per_guid.push((env.log_guid, vec![record])),
            }
        }
        for (guid, records) in per_guid {
            if let Err(e) = self.append(&guid, &records) {
                tracing::warn!(app_guid = %guid, error = %e, "could not keep log lines on disk");
            }
        }
    }

    /// Appends records to the written segment of `guid`, rotating it when full.
    fn append(&mut self, guid: &str, records: &[Vec<u8>]) -> std::io::Result<()> {
        let mut seg = self.segments.get(guid).copied().unwrap_or_default();
        let (mut buf, mut buf_lines) = (Vec::new(), 0);
        for record in records {
            let lines = seg.lines + buf_lines;
            let bytes = seg.bytes + (buf.len() + record.len()) as u64;
            if lines > 0 && (lines >= self.bounds.segment_lines || bytes > self.bounds.segment_bytes) {
                self.write_out(guid, &mut seg, &buf, buf_lines)?;
                (buf, buf_lines) = (Vec::new(), 0);
                std::fs::rename(self.path(guid, CURRENT), self.path(guid, PREVIOUS))?;
                seg = Segment::default();
                self.segments.insert(guid.to_string(), seg);
            }
            buf.extend_from_slice(record);
            buf_lines += 1;
        }
        self.write_out(guid, &mut seg, &buf, buf_lines)
    }

    /// Appends `buf` (`lines` records) to the written segment. A failed
    /// write is cut off again, so the segment always ends on a whole record.
    fn write_out(&mut self, guid: &str, seg: &mut Segment, buf: &[u8], lines: usize) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut file = OpenOptions::new().create(true).append(true).open(self.path(guid, CURRENT))?;
        if let Err(e) = file.write_all(buf) {
            let _ = file.set_len(seg.bytes);
            return Err(e);
        }
        seg.bytes += buf.len() as u64;
        seg.lines += lines;
        self.segments.insert(guid.to_string(), *seg);
        Ok(())
    }
}

fn encode(env: &pb::LogEnvelope) -> Vec<u8> {
    let body = env.encode_to_vec();
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh64::xxh64(&body, 0).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The first whole, intact record of `buf` (its body) and what follows it.
fn next_record(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(buf.get(4..HEADER)?.try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let body = buf.get(HEADER..HEADER + len)?;
    (xxhash_rust::xxh64::xxh64(body, 0) == sum).then(|| (body, buf.get(HEADER + len..).unwrap_or_default()))
}

/// The envelopes of a segment up to its first bad record, and how many bytes
/// they take; with `repair`, the file is cut back to them. A missing file is
/// empty.
fn read_segment(path: &Path, repair: bool) -> Result<(Vec<pb::LogEnvelope>, u64), LogDiskError> {
    let err = |source| LogDiskError::File { path: path.to_path_buf(), source };
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut data).map_err(err)?,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(err(e)),
    };
    let mut rest = data.as_slice();
    let mut out = Vec::new();
    while let Some((body, after)) = next_record(rest) {
        let Ok(env) = pb::LogEnvelope::decode(body) else { break };
        out.push(env);
        rest = after;
    }
    let good = (data.len() - rest.len()) as u64;
    if !rest.is_empty() {
        tracing::warn!(path = %path.display(), kept = out.len(), skipped_bytes = rest.len(), "a log file ends in a torn record; skipped");
        if repair {
            OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(good)).map_err(err)?;
        }
    }
    Ok((out, good))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use celld_image::testing::TestDir;

    /// A log directory inside a test dir removed on drop (the log dir itself
    /// is made by the code under test).
    fn dir(name: &str) -> (TestDir, PathBuf) {
        let t = TestDir::new(&format!("logdisk-{name}"));
        let d = t.path().join("logs");
        (t, d)
    }

    fn line(guid: &str, i: usize) -> pb::LogEnvelope {
        pb::LogEnvelope {
            source_type: "APP/PROC/WEB".into(),
            source_instance: "0".into(),
            message_type: 1,
            timestamp: 1_700_000_000_000_000_000 + i as i64,
            message: format!("line {i}"),
            log_guid: guid.into(),
        }
    }

    fn messages(hub: &LogHub, guid: &str) -> Vec<String> {
        hub.recent(guid).into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn lines_survive_a_new_hub_and_stay_bounded() {
        let (_t, d) = dir("survive");
        let bounds = Bounds { segment_lines: 10, segment_bytes: 1 << 20 };
        {
            let hub = LogHub::new(15, 10);
            let log = DiskLog::attach(&d, bounds, &hub).unwrap();
            for i in 0..35 {
                hub.emit(line("app-1", i));
            }
            hub.emit(line("app-2", 0));
            log.flush();
        }
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        let hub = LogHub::new(15, 10);
        let log = DiskLog::attach(&d, bounds, &hub).unwrap();
        // Two segments of 10: lines 20..35 are on disk, the newest 15 loaded.
        let want: Vec<String> = (20..35).map(|i| format!("line {i}")).collect();
        assert_eq!(messages(&hub, "app-1"), want);
        assert_eq!(messages(&hub, "app-2"), ["line 0"]);
        // New lines follow the loaded ones, on disk too.
        hub.emit(line("app-1", 35));
        log.flush();
        let (_, history) = DiskLog::open(&d, bounds).unwrap();
        let app1 = history.iter().find(|(g, _)| g == "app-1").unwrap();
        assert_eq!(app1.1.last().unwrap().message, "line 35");
        assert_eq!(app1.1.len(), 16);
        assert_eq!(app1.1[0].source_type, "APP/PROC/WEB");
        assert_eq!(app1.1[0].message_type, 1);
    }

    #[test]
    fn a_byte_bound_rotates_before_the_line_bound() {
        let (_t, d) = dir("bytes");
        let bounds = Bounds { segment_lines: 1000, segment_bytes: 200 };
        let hub = LogHub::new(1000, 10);
        let log = DiskLog::attach(&d, bounds, &hub).unwrap();
        for i in 0..100 {
            hub.emit(line("app", i));
        }
        log.flush();
        let total: u64 = ["app.log", "app.log.1"].iter().map(|f| std::fs::metadata(d.join(f)).unwrap().len()).sum();
        assert!(total <= 400, "{total}");
        let (_, history) = DiskLog::open(&d, bounds).unwrap();
        assert_eq!(history[0].1.last().unwrap().message, "line 99");
    }

    #[test]
    fn a_torn_last_record_is_skipped_and_cut_off() {
        let (_t, d) = dir("torn");
        let bounds = Bounds::default();
        {
            let hub = LogHub::default();
            let log = DiskLog::attach(&d, bounds, &hub).unwrap();
            for i in 0..3 {
                hub.emit(line("app", i));
            }
            log.flush();
        }
        let path = d.join("app.log");
        let whole = std::fs::read(&path).unwrap();
        // Half of a fourth record, as a crash mid-write leaves it.
        let torn = encode(&line("app", 3));
        let mut data = whole.clone();
        data.extend_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(&path, &data).unwrap();
        let hub = LogHub::default();
        let log = DiskLog::attach(&d, bounds, &hub).unwrap();
        assert_eq!(messages(&hub, "app"), ["line 0", "line 1", "line 2"]);
        assert_eq!(std::fs::read(&path).unwrap(), whole, "the torn tail is cut off");
        // Lines written after it are read back.
        hub.emit(line("app", 4));
        log.flush();
        let (_, history) = DiskLog::open(&d, bounds).unwrap();
        assert_eq!(history[0].1.len(), 4);

        // A corrupted body fails its checksum: reading stops there.
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let (_, history) = DiskLog::open(&d, bounds).unwrap();
        assert_eq!(history[0].1.len(), 3);
        // Garbage alone is no history at all.
        std::fs::write(&path, b"\xff\xff\xff\xffgarbage").unwrap();
        let (_, history) = DiskLog::open(&d, bounds).unwrap();
        assert!(history.is_empty());
    }

    #[test]
    fn forget_and_retain_delete_files() {
        let (_t, d) = dir("forget");
        let bounds = Bounds { segment_lines: 2, segment_bytes: 1 << 20 };
        let hub = LogHub::default();
        let log = DiskLog::attach(&d, bounds, &hub).unwrap();
        for i in 0..5 {
            hub.emit(line("a", i));
            hub.emit(line("b", i));
            hub.emit(line("c", i));
        }
        // Not a file name: memory only.
        hub.emit(line("../x", 0));
        log.flush();
        assert!(d.join("a.log.1").is_file());
        hub.forget("a");
        hub.retain(&HashSet::from(["b".to_string()]));
        log.flush();
        let mut left: Vec<String> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["b.log", "b.log.1"]);
        assert!(hub.recent("a").is_empty() && hub.recent("c").is_empty());
        assert_eq!(hub.recent("b").len(), 5);
        // A deleted app's last lines make no new file.
        hub.emit(line("a", 9));
        log.flush();
        assert!(!d.join("a.log").exists());
    }

    #[test]
    fn an_unusable_directory_is_a_clear_error() {
        let (_t, d) = dir("file");
        std::fs::write(&d, b"not a dir").unwrap();
        let err = DiskLog::open(&d, Bounds::default()).err().unwrap().to_string();
        assert!(err.contains("log directory") && err.contains(&d.display().to_string()), "{err}");
    }
}
