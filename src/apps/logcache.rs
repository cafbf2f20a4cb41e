//! log-cache's read API over the cell's log lines (what `cf logs` calls): the
//! query of `GET /api/v1/read/:source_id`, the `{"envelopes":{"batch":[…]}}`
//! it answers with loggregator v2 envelopes as log-cache's gateway marshals
//! them (proto field names, every field present, int64 as strings, bytes as
//! base64), and `GET /api/v1/info`. No HTTP here: the CF API server calls it.
//!
//! The rules are log-cache's: `[start_time, end_time)` in nanoseconds (an end
//! of 0 or none is now), `limit` 100 by default and at most 1000, oldest first
//! unless `descending`, an unknown source id an empty batch (not a 404), and
//! only LOG envelopes exist here so a read of other types is empty.

use base64::Engine;
use serde_json::{Value, json};

use super::AppsError;
use super::layer::AppLayer;
use crate::executor::logs::now_ns;
use celld_proto as pb;

/// The version `GET /api/v1/info` reports (the log-cache release whose API
/// this follows).
pub const LOG_CACHE_VERSION: &str = "3.0.0";
/// log-cache's default and largest `limit`.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// loggregator's envelope types as log-cache names them in `envelope_types`.
const ENVELOPE_TYPES: [&str; 6] = ["ANY", "LOG", "COUNTER", "GAUGE", "TIMER", "EVENT"];

/// A read's parameters, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCacheQuery {
    /// Inclusive, nanoseconds; may be negative. None is 0, as log-cache.
    pub start_time: Option<i64>,
    /// Exclusive, nanoseconds. None is now.
    pub end_time: Option<i64>,
    /// `LOG`, `COUNTER`… (`ANY` dropped); empty is every type.
    pub envelope_types: Vec<String>,
    /// 1..=1000; None is 100.
    pub limit: Option<u32>,
    pub descending: bool,
    /// log-cache matches it against counter, gauge and timer names only, so a
    /// non-empty one never matches a log line.
    pub name_filter: Option<String>,
}

/// A read log-cache refuses, with the status and body its gateway answers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogCacheError {
    /// A parameter that is not of its type (the gateway's 400).
    #[error("parsing field \"{field}\": {reason}")]
    BadParameter { field: String, reason: String },
    #[error("Limit ({0}) must be 1000 or less")]
    LimitTooLarge(i64),
    #[error("Limit ({0}) must be greater than zero")]
    NegativeLimit(i64),
    #[error("StartTime ({0}) must be before EndTime ({1})")]
    StartAfterEnd(i64, i64),
}

impl LogCacheError {
    /// The gRPC code the gateway puts in the body: InvalidArgument for a
    /// parameter it could not parse, Unknown for what log-cache's reader
    /// refuses (it returns plain errors).
    pub fn grpc_code(&self) -> i32 {
        match self {
            Self::BadParameter { .. } => 3,
            _ => 2,
        }
    }

    /// The HTTP status the gateway answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadParameter { .. } => 400,
            _ => 500,
        }
    }

    /// The gateway's error body.
    pub fn body(&self) -> Value {
        json!({ "code": self.grpc_code(), "message": self.to_string(), "details": [] })
    }
}

fn bad(field: &str, reason: String) -> LogCacheError {
    LogCacheError::BadParameter { field: field.to_string(), reason }
}

fn int(field: &str, v: &str) -> Result<i64, LogCacheError> {
    v.parse::<i64>().map_err(|_| bad(field, format!("{v:?} is not a whole number")))
}

/// Go's `strconv.ParseBool`, which the gateway uses.
fn boolean(field: &str, v: &str) -> Result<bool, LogCacheError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(bad(field, format!("{v:?} is not true or false"))),
    }
}

fn envelope_type(field: &str, v: &str) -> Result<&'static str, LogCacheError> {
    // The gateway takes an enum by name or by number.
    let by_number = v.parse::<usize>().ok().and_then(|n| ENVELOPE_TYPES.get(n).copied());
    by_number
        .or_else(|| ENVELOPE_TYPES.iter().copied().find(|t| *t == v))
        .ok_or_else(|| bad(field, format!("{v:?} is not an envelope type (one of {})", ENVELOPE_TYPES.join(", "))))
}

/// Parses a read's query string (without the `?`). Parameters log-cache
/// does not know are ignored, as its gateway does.
pub fn parse_query(query: &str) -> Result<LogCacheQuery, LogCacheError> {
    let mut q = LogCacheQuery::default();
    let mut limit = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let (key, value) = (key.as_ref(), value.as_ref());
        match key {
            "start_time" => q.start_time = Some(int(key, value)?),
            "end_time" => q.end_time = Some(int(key, value)?),
            "limit" => limit = Some(int(key, value)?),
            "descending" => q.descending = boolean(key, value)?,
            "envelope_types" | "envelope_type" => {
                let t = envelope_type(key, value)?;
                if t != "ANY" && !q.envelope_types.iter().any(|x| x == t) {
                    q.envelope_types.push(t.to_string());
                }
            }
            "name_filter" => q.name_filter = Some(value.to_string()).filter(|f| !f.is_empty()),
            _ => {}
        }
    }
    // log-cache's reader: 0 is the default, and an end of 0 is now.
    q.limit = match limit {
        Some(n) if n > i64::from(MAX_LIMIT) => return Err(LogCacheError::LimitTooLarge(n)),
        Some(n) if n < 0 => return Err(LogCacheError::NegativeLimit(n)),
        Some(0) | None => None,
        Some(n) => u32::try_from(n).ok(),
    };
    if let (Some(start), Some(end)) = (q.start_time, q.end_time.filter(|e| *e != 0)) {
        if start > end {
            return Err(LogCacheError::StartAfterEnd(start, end));
        }
    }
    Ok(q)
}

/// `GET /api/v1/info`'s body: log-cache's version and the machine's uptime
/// in seconds (both strings, as log-cache writes them).
pub fn log_cache_info() -> Value {
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|u| u.split('.').next().map(str::to_string)))
        .unwrap_or_else(|| "0".to_string());
    json!({ "version": LOG_CACHE_VERSION, "vm_uptime": uptime })
}

/// One log line as a loggregator v2 envelope, as log-cache's gateway
/// marshals it.
pub fn envelope_json(source_id: &str, e: &pb::LogEnvelope) -> Value {
    let kind = if e.message_type == pb::log_envelope::MessageType::Err as i32 { "ERR" } else { "OUT" };
    json!({
        "timestamp": e.timestamp.to_string(),
        "source_id": source_id,
        "instance_id": e.source_instance,
        "deprecated_tags": {},
        "tags": { "source_type": e.source_type },
        "log": {
            "payload": base64::engine::general_purpose::STANDARD.encode(e.message.as_bytes()),
            "type": kind,
        },
    })
}

/// The batch a read of `lines` (a source's history, in any order) answers,
/// with `now` as the default end.
pub fn read_batch(source_id: &str, mut lines: Vec<pb::LogEnvelope>, q: &LogCacheQuery, now: i64) -> Value {
    let only_other_types = !q.envelope_types.is_empty() && !q.envelope_types.iter().any(|t| t == "LOG");
    if only_other_types || q.name_filter.is_some() {
        lines.clear();
    }
    let start = q.start_time.unwrap_or(0);
    let end = q.end_time.filter(|e| *e != 0).unwrap_or(now);
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as usize;
    lines.retain(|e| e.timestamp >= start && e.timestamp < end);
    // Stable: lines of one timestamp keep the order they were emitted in.
    lines.sort_by_key(|e| e.timestamp);
    let batch: Vec<Value> = if q.descending {
        lines.iter().rev().take(limit).map(|e| envelope_json(source_id, e)).collect()
    } else {
        lines.iter().take(limit).map(|e| envelope_json(source_id, e)).collect()
    };
    json!({ "envelopes": { "batch": batch } })
}

impl AppLayer {
    /// `GET /api/v1/read/:source_id`: the log lines of a source id (an app's
    /// guid); an unknown one has none.
    pub fn read_log_cache(&self, source_id: &str, q: &LogCacheQuery) -> Result<Value, AppsError> {
        Ok(read_batch(source_id, self.logs.recent(source_id), q, now_ns()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: i64, kind: i32, msg: &str) -> pb::LogEnvelope {
        pb::LogEnvelope {
            source_type: "APP/PROC/WEB".into(),
            source_instance: "1".into(),
            message_type: kind,
            timestamp: ts,
            message: msg.into(),
            log_guid: "g".into(),
        }
    }

    fn payloads(v: &Value) -> Vec<String> {
        v["envelopes"]["batch"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let b =
                    base64::engine::general_purpose::STANDARD.decode(e["log"]["payload"].as_str().unwrap()).unwrap();
                String::from_utf8(b).unwrap()
            })
            .collect()
    }

    #[test]
    fn parses_what_the_cli_sends() {
        let q = parse_query("envelope_types=LOG&descending=true&limit=1000&start_time=-6795364578871345152").unwrap();
        assert_eq!(
            q,
            LogCacheQuery {
                start_time: Some(-6795364578871345152),
                end_time: None,
                envelope_types: vec!["LOG".into()],
                limit: Some(1000),
                descending: true,
                name_filter: None,
            }
        );
        assert_eq!(parse_query("").unwrap(), LogCacheQuery::default());
        let q = parse_query("envelope_types=ANY&envelope_types=1&envelope_types=GAUGE&limit=0&other=x").unwrap();
        assert_eq!(q.envelope_types, ["LOG", "GAUGE"]);
        assert_eq!(q.limit, None);
        assert_eq!(parse_query("start_time=5&end_time=0").unwrap().end_time, Some(0));
        assert_eq!(parse_query("name_filter=cpu%7Cmem").unwrap().name_filter.as_deref(), Some("cpu|mem"));
    }

    #[test]
    fn bad_queries_get_log_caches_errors() {
        let e = parse_query("limit=1001").unwrap_err();
        assert_eq!(e.to_string(), "Limit (1001) must be 1000 or less");
        assert_eq!(e.body(), json!({"code": 2, "message": "Limit (1001) must be 1000 or less", "details": []}));
        assert_eq!(e.http_status(), 500);
        assert_eq!(parse_query("limit=-1").unwrap_err().to_string(), "Limit (-1) must be greater than zero");
        assert_eq!(
            parse_query("start_time=10&end_time=5").unwrap_err().to_string(),
            "StartTime (10) must be before EndTime (5)"
        );
        let e = parse_query("start_time=yesterday").unwrap_err();
        assert_eq!(e.http_status(), 400);
        assert_eq!(e.grpc_code(), 3);
        assert!(e.to_string().contains("start_time") && e.to_string().contains("yesterday"), "{e}");
        let e = parse_query("envelope_types=LOGS").unwrap_err().to_string();
        assert!(e.contains("LOGS") && e.contains("COUNTER"), "{e}");
        assert!(parse_query("descending=yes").unwrap_err().to_string().contains("descending"));
        assert!(parse_query("limit=99999999999999999999").is_err());
    }

    #[test]
    fn envelopes_have_log_caches_shape() {
        let v = read_batch(
            "app-guid",
            vec![line(1_700_000_000_123_456_789, 1, "oops é")],
            &LogCacheQuery::default(),
            i64::MAX,
        );
        assert_eq!(
            v,
            json!({"envelopes": {"batch": [{
                "timestamp": "1700000000123456789",
                "source_id": "app-guid",
                "instance_id": "1",
                "deprecated_tags": {},
                "tags": {"source_type": "APP/PROC/WEB"},
                "log": {"payload": "b29wcyDDqQ==", "type": "ERR"},
            }]}})
        );
        assert_eq!(
            read_batch("x", vec![line(1, 0, "a")], &LogCacheQuery::default(), 10)["envelopes"]["batch"][0]["log"]["type"],
            "OUT"
        );
        // Unknown source: an empty batch, not an error.
        assert_eq!(read_batch("nope", vec![], &LogCacheQuery::default(), 10), json!({"envelopes": {"batch": []}}));
    }

    #[test]
    fn order_bounds_limit_and_types() {
        let lines: Vec<_> =
            [30, 10, 20, 20, 40].iter().enumerate().map(|(i, t)| line(*t, 0, &format!("{t}.{i}"))).collect();
        let read = |query: &str, now: i64| payloads(&read_batch("g", lines.clone(), &parse_query(query).unwrap(), now));
        assert_eq!(read("", 100), ["10.1", "20.2", "20.3", "30.0", "40.4"]);
        assert_eq!(read("descending=true", 100), ["40.4", "30.0", "20.3", "20.2", "10.1"]);
        // [start, end): end exclusive, start inclusive; the default end is now.
        assert_eq!(read("start_time=20&end_time=40", 100), ["20.2", "20.3", "30.0"]);
        assert_eq!(read("", 40), ["10.1", "20.2", "20.3", "30.0"]);
        assert_eq!(read("start_time=-5&end_time=0", 35), ["10.1", "20.2", "20.3", "30.0"]);
        // The limit counts from the start, or from the end when descending.
        assert_eq!(read("limit=2", 100), ["10.1", "20.2"]);
        assert_eq!(read("limit=2&descending=true", 100), ["40.4", "30.0"]);
        assert_eq!(read("envelope_types=LOG&envelope_types=GAUGE", 100).len(), 5);
        assert!(read("envelope_types=GAUGE", 100).is_empty());
        assert!(read("name_filter=cpu", 100).is_empty());
        // 100 by default.
        let many: Vec<_> = (0..150).map(|i| line(i, 0, &i.to_string())).collect();
        let v = read_batch("g", many, &LogCacheQuery::default(), i64::MAX);
        assert_eq!(payloads(&v).len(), 100);
        assert_eq!(payloads(&v)[0], "0");
    }

    #[test]
    fn info_has_version_and_uptime() {
        let v = log_cache_info();
        assert_eq!(v["version"], LOG_CACHE_VERSION);
        assert!(v["vm_uptime"].as_str().unwrap().parse::<u64>().is_ok(), "{v}");
    }
}
