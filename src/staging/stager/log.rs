//! A staging's log lines (`STG`): cut from the builder's output, sent to every
//! watcher and to the cell's log hub, with the last stderr lines kept to
//! explain a failure.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::record::{Event, LogLine};
use super::{Task, lock, now_ns};

/// Longest log line passed on whole; longer output is split.
const MAX_LINE: usize = 64 * 1024;
/// Stderr lines kept to explain a builder failure that has no exit-code reason.
const STDERR_TAIL: usize = 5;

pub(super) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// Sends log lines to the staging's watchers.
pub(super) struct Logger {
    pub(super) task: Arc<Task>,
    pub(super) stderr_tail: Mutex<VecDeque<String>>,
    pub(super) hub: Option<(Arc<crate::executor::logs::LogHub>, String)>,
}

impl Logger {
    pub(super) fn line(&self, message: &str, stderr: bool) {
        if stderr {
            let mut t = lock(&self.stderr_tail);
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(message.to_string());
        }
        if let Some((hub, app_guid)) = &self.hub {
            hub.emit(celld_proto::LogEnvelope {
                source_type: "STG".into(),
                source_instance: "0".into(),
                message_type: i32::from(stderr),
                timestamp: now_ns(),
                message: message.to_string(),
                log_guid: app_guid.clone(),
            });
        }
        let _ =
            self.task.events.send(Event::Log(LogLine { message: message.to_string(), stderr, timestamp: now_ns() }));
    }
}

/// Cuts a byte stream into lines (lossy UTF-8; over-long lines split).
#[derive(Default)]
pub(super) struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    pub(super) fn push(&mut self, data: &[u8], mut emit: impl FnMut(&str)) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            emit(&String::from_utf8_lossy(line));
            start += i + 1;
        }
        self.buf.drain(..start);
        while self.buf.len() >= MAX_LINE {
            let rest = self.buf.split_off(MAX_LINE);
            emit(&String::from_utf8_lossy(&self.buf));
            self.buf = rest;
        }
    }

    pub(super) fn flush(&mut self, mut emit: impl FnMut(&str)) {
        if !self.buf.is_empty() {
            emit(&String::from_utf8_lossy(&self.buf));
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_bounded() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.push(b"a\r\nb", |l| got.push(l.to_string()));
        s.push(b"c\n\nd", |l| got.push(l.to_string()));
        s.flush(|l| got.push(l.to_string()));
        assert_eq!(got, ["a", "bc", "", "d"]);
        got.clear();
        s.push(&vec![b'x'; MAX_LINE * 2 + 3], |l| got.push(l.len().to_string()));
        s.flush(|l| got.push(l.len().to_string()));
        assert_eq!(got, [MAX_LINE.to_string(), MAX_LINE.to_string(), "3".to_string()]);
    }
}
