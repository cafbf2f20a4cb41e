//! The app the router bench pushes: answers every request on `$PORT` with a
//! short fixed body, keeping connections alive, one thread per connection.
//! It must not be the bottleneck (busybox httpd's listen backlog of 9 was),
//! and it has only std so `make bench` can link it static for the tiny
//! rootfs, which has no libc.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};

const BODY: &[u8] = b"hello from the router bench\n";
/// A request head bigger than this is refused (closes the connection).
const MAX_HEAD: usize = 64 << 10;

fn main() {
    let port = std::env::var("PORT").ok().and_then(|p| p.parse::<u16>().ok()).unwrap_or(8080);
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("celld-bench-backend: listening on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("celld-bench-backend: serving on port {port}");
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                std::thread::spawn(move || {
                    let _ = serve(s);
                });
            }
            // EMFILE and friends: the next accept may work.
            Err(e) => eprintln!("celld-bench-backend: accept: {e}"),
        }
    }
}

/// Answers requests until the client closes or asks to; pipelined requests
/// read together are answered with one write.
fn serve(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let response = response();
    let mut buf = vec![0u8; 16 << 10];
    let (mut filled, mut out) = (0, Vec::new());
    loop {
        let n = s.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut start = 0;
        let mut close = false;
        while let Some(end) = find_head_end(&buf[start..filled]) {
            let head = &buf[start..start + end];
            let (body_len, wants_close) = parse_head(head);
            // Bodies are skipped: a request whose body is not all here yet waits.
            if start + end + body_len > filled {
                break;
            }
            out.extend_from_slice(&response);
            start += end + body_len;
            if wants_close {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            s.write_all(&out)?;
            out.clear();
        }
        if close {
            return Ok(());
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            if buf.len() >= MAX_HEAD {
                return Ok(());
            }
            buf.resize(buf.len() * 2, 0);
        }
    }
}

fn response() -> Vec<u8> {
    let mut r =
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n", BODY.len()).into_bytes();
    r.extend_from_slice(BODY);
    r
}

/// The length of the head including its blank line, once it is complete.
fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The body's length (Content-Length; chunked bodies are not expected) and
/// whether the client asked to close (`Connection: close` or HTTP/1.0).
fn parse_head(head: &[u8]) -> (usize, bool) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut close = lines.next().is_some_and(|l| l.ends_with("HTTP/1.0"));
    let mut len = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            len = value.parse().unwrap_or(0);
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    (len, close)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_found_and_parsed() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"), Some(27));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), (0, false));
        assert_eq!(parse_head(b"POST / HTTP/1.1\r\ncontent-length: 5\r\nConnection: Close\r\n\r\n"), (5, true));
        assert_eq!(parse_head(b"GET / HTTP/1.0\r\n\r\n"), (0, true));
        assert_eq!(parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), (0, false));
    }

    #[test]
    fn answers_pipelined_requests_and_closes_when_asked() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || serve(listener.accept().unwrap().0));
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        server.join().unwrap().unwrap();
        assert_eq!(got, [response(), response(), response()].concat());
    }
}
