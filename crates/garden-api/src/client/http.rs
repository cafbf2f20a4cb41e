//! HTTP/1.1 on the wire, the parts Garden needs: request paths (percent-encoded
//! handles, keys and queries) and reading a response head and body (chunked,
//! sized, or up to EOF), a non-2xx body becoming a Garden error.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use super::error::{ClientError, protocol};
use crate::types::ErrorBody;

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `/containers/<handle><rest>`, the handle percent-encoded.
pub(super) fn container(handle: &str, rest: &str) -> String {
    format!("/containers/{}{rest}", encode(handle))
}

pub(super) fn encode_list(items: &[&str]) -> String {
    items.iter().map(|h| encode(h)).collect::<Vec<_>>().join(",")
}

const MAX_HEAD: usize = 64 * 1024;

pub(super) struct Head {
    pub(super) status: u16,
    chunked: bool,
    length: Option<u64>,
}

/// Reads a response head up to and including the blank line; whatever follows
/// stays in the reader's buffer.
pub(super) async fn read_head<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Head, ClientError> {
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        if r.read_until(b'\n', &mut raw).await? == 0 {
            return Err(protocol("connection closed before the response head"));
        }
        if raw.len() > MAX_HEAD {
            return Err(protocol("response head too large"));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(protocol("incomplete response head")),
        Err(e) => return Err(protocol(format!("bad response head: {e}"))),
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    Ok(Head {
        status: resp.code.unwrap_or(0),
        chunked: header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")),
        length: header("content-length").and_then(|v| v.parse().ok()),
    })
}

/// Reads exactly `n` bytes without trusting `n` for the allocation.
async fn read_n<R: AsyncRead + Unpin>(r: &mut R, n: u64, out: &mut Vec<u8>) -> Result<(), ClientError> {
    let got = r.take(n).read_to_end(out).await? as u64;
    if got < n {
        return Err(protocol(format!("body truncated: got {got} of {n} bytes")));
    }
    Ok(())
}

/// Reads a body by chunked framing, Content-Length, or until EOF.
pub(super) async fn read_body<R: AsyncRead + Unpin>(r: &mut BufReader<R>, head: &Head) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    if head.chunked {
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size, 16).map_err(|_| protocol(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the final blank line (or EOF).
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            read_n(r, size, &mut body).await?;
            line.clear();
            r.read_line(&mut line).await?; // the CRLF after the chunk
        }
    } else if let Some(n) = head.length {
        read_n(r, n, &mut body).await?;
    } else {
        r.read_to_end(&mut body).await?;
    }
    Ok(body)
}

pub(super) fn error_from(status: u16, body: &[u8]) -> ClientError {
    let body = serde_json::from_slice::<ErrorBody>(body).unwrap_or_else(|_| ErrorBody {
        message: match String::from_utf8_lossy(body).trim() {
            "" => format!("HTTP status {status}"),
            text => text.to_string(),
        },
        ..Default::default()
    });
    ClientError::Garden { status, body }
}
