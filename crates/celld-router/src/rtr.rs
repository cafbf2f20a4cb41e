//! gorouter's access-log line (the `RTR` source in `cf logs`), field for field:
//! host - [time] "METHOD URI PROTO" status bytes_received bytes_sent "referer"
//! "user-agent" "client" "backend" x_forwarded_for:"…" x_forwarded_proto:"…"
//! vcap_request_id:"…" response_time:… gorouter_time:… app_id:"…"
//! app_index:"…" instance_id:"…" x_cf_routererror:"…"

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What is known about a request before the app answers.
pub(crate) struct Entry {
    pub host: String,
    pub received_at: SystemTime,
    pub method: String,
    pub uri: String,
    pub proto: &'static str,
    pub referer: String,
    pub user_agent: String,
    pub client: SocketAddr,
    pub x_forwarded_for: String,
    pub x_forwarded_proto: String,
    pub vcap_request_id: String,
}

/// How the request ended.
pub(crate) struct Outcome<'a> {
    pub status: u16,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub backend: Option<SocketAddr>,
    pub response_time: Duration,
    /// Time spent waiting for the app's response headers (gorouter_time is the rest).
    pub app_time: Duration,
    pub app_id: &'a str,
    pub app_index: u32,
    pub instance_id: &'a str,
    pub router_error: &'a str,
}

impl Entry {
    pub fn line(&self, o: &Outcome<'_>) -> String {
        // Written in place: one allocation per line, not one per field.
        let mut s = String::with_capacity(512);
        s.push_str(&self.host);
        s.push_str(" - [");
        write_timestamp(&mut s, self.received_at);
        s.push_str("] \"");
        // Spaces are never escaped: quoting the parts is quoting the whole.
        escaped(&mut s, &self.method);
        s.push(' ');
        escaped(&mut s, &self.uri);
        s.push(' ');
        escaped(&mut s, self.proto);
        let _ = write!(s, "\" {} {} {} ", o.status, o.bytes_received, o.bytes_sent);
        dash_or_quoted(&mut s, &self.referer);
        s.push(' ');
        dash_or_quoted(&mut s, &self.user_agent);
        // Addresses need no escaping.
        let _ = write!(s, " \"{}\" ", self.client);
        match o.backend {
            Some(a) => {
                let _ = write!(s, "\"{a}\"");
            }
            None => s.push_str("\"-\""),
        }
        s.push_str(" x_forwarded_for:");
        dash_or_quoted(&mut s, &self.x_forwarded_for);
        s.push_str(" x_forwarded_proto:");
        dash_or_quoted(&mut s, &self.x_forwarded_proto);
        s.push_str(" vcap_request_id:");
        dash_or_quoted(&mut s, &self.vcap_request_id);
        let total = o.response_time.as_secs_f64();
        let router = total - o.app_time.as_secs_f64();
        let _ = write!(s, " response_time:{total:.6} gorouter_time:{:.6} app_id:", router.max(0.0));
        dash_or_quoted(&mut s, o.app_id);
        let _ = write!(s, " app_index:\"{}\" instance_id:", o.app_index);
        dash_or_quoted(&mut s, o.instance_id);
        s.push_str(" x_cf_routererror:");
        dash_or_quoted(&mut s, o.router_error);
        s
    }
}

fn dash_or_quoted(s: &mut String, v: &str) {
    if v.is_empty() { s.push_str("\"-\"") } else { quoted(s, v) }
}

/// Go's strconv.Quote for what headers can carry: escape quotes, backslashes and
/// control characters so a header can't forge fields or lines.
fn quoted(s: &mut String, v: &str) {
    s.push('"');
    escaped(s, v);
    s.push('"');
}

fn escaped(s: &mut String, v: &str) {
    // Most fields are printable ASCII with nothing to escape: one copy.
    if v.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        s.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(s, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
}

/// `2006-01-02T15:04:05.000000000Z` in UTC, as gorouter writes it.
#[cfg(test)]
pub(crate) fn timestamp(t: SystemTime) -> String {
    let mut s = String::with_capacity(30);
    write_timestamp(&mut s, t);
    s
}

/// The timestamp gorouter writes, appended to `s`.
fn write_timestamp(s: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = celld_base::civil::civil_from_days(days as i64);
    let (h, min, sec, ns) = (rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_nanos());
    let _ = write!(s, "{y:04}-{m:02}-{dd:02}T{h:02}:{min:02}:{sec:02}.{ns:09}Z");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_utc_with_nanoseconds() {
        let t = UNIX_EPOCH + Duration::new(1_613_683_352, 355_501_523);
        assert_eq!(timestamp(t), "2021-02-18T21:22:32.355501523Z");
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn line_matches_gorouter_layout() {
        let e = Entry {
            host: "hello.apps.localhost:8080".into(),
            received_at: UNIX_EPOCH + Duration::new(1_613_683_352, 355_501_523),
            method: "GET".into(),
            uri: "/a?b=1".into(),
            proto: "HTTP/1.1",
            referer: String::new(),
            user_agent: "curl/8 \"x\"".into(),
            client: "127.0.0.1:5000".parse().unwrap(),
            x_forwarded_for: "127.0.0.1".into(),
            x_forwarded_proto: "http".into(),
            vcap_request_id: "rid".into(),
        };
        let o = Outcome {
            status: 200,
            bytes_received: 0,
            bytes_sent: 62,
            backend: Some("10.0.0.2:61002".parse().unwrap()),
            response_time: Duration::from_micros(11_962),
            app_time: Duration::from_micros(11_495),
            app_id: "app",
            app_index: 0,
            instance_id: "inst",
            router_error: "",
        };
        assert_eq!(
            e.line(&o),
            "hello.apps.localhost:8080 - [2021-02-18T21:22:32.355501523Z] \"GET /a?b=1 HTTP/1.1\" 200 0 62 \"-\" \
             \"curl/8 \\\"x\\\"\" \"127.0.0.1:5000\" \"10.0.0.2:61002\" x_forwarded_for:\"127.0.0.1\" \
             x_forwarded_proto:\"http\" vcap_request_id:\"rid\" response_time:0.011962 gorouter_time:0.000467 \
             app_id:\"app\" app_index:\"0\" instance_id:\"inst\" x_cf_routererror:\"-\""
        );
    }
}
