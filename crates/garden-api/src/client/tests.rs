//! The client's tests: address parsing, path encoding and stdin's UTF-8 cuts,
//! then the client against a canned Garden server on a Unix socket (the requests
//! it writes byte for byte, the replies it decodes, a process's hijacked stream).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::process::utf8_complete_len;
use super::{Address, Client, ClientError, ProcessIo, Signal, encode};
use crate::types::{ContainerSpec, ProcessSpec};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn listen() -> (UnixListener, Client) {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("celld-client-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("garden.sock");
    (UnixListener::bind(&sock).unwrap(), Client::new(Address::Unix(sock)))
}

fn cleanup(c: &Client) {
    if let Address::Unix(sock) = c.address() {
        let _ = std::fs::remove_dir_all(sock.parent().unwrap());
    }
}

/// Reads one request: the head, then a Content-Length body or the raw
/// chunked bytes up to the terminating chunk.
async fn read_request(c: &mut BufReader<UnixStream>) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        assert!(c.read_until(b'\n', &mut head).await.unwrap() > 0, "EOF in the request head");
    }
    let head = String::from_utf8(head).unwrap();
    let mut body = Vec::new();
    if head.contains("Transfer-Encoding: chunked\r\n") {
        while !body.ends_with(b"\r\n0\r\n\r\n") && body != b"0\r\n\r\n" {
            assert!(c.read_until(b'\n', &mut body).await.unwrap() > 0, "EOF in a chunked body");
        }
    } else if let Some(n) = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")) {
        body.resize(n.parse().unwrap(), 0);
        c.read_exact(&mut body).await.unwrap();
    }
    (head, body)
}

type Seen = Vec<(String, Vec<u8>)>;

/// Serves one canned reply per connection; returns the requests it saw.
fn serve(replies: Vec<String>) -> (Client, JoinHandle<Seen>) {
    let (listener, client) = listen();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for reply in replies {
            let mut c = BufReader::new(listener.accept().await.unwrap().0);
            seen.push(read_request(&mut c).await);
            c.get_mut().write_all(reply.as_bytes()).await.unwrap();
        }
        seen
    });
    (client, task)
}

fn reply(status: &str, body: &str) -> String {
    format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

#[test]
fn addresses_encoding_and_utf8_cuts() {
    assert_eq!("/run/x.sock".parse::<Address>().unwrap(), Address::Unix("/run/x.sock".into()));
    assert_eq!("127.0.0.1:7777".parse::<Address>().unwrap(), Address::Tcp("127.0.0.1:7777".into()));
    assert_eq!("unix:///a".parse::<Address>().unwrap(), Address::Unix("/a".into()));
    assert_eq!("tcp://h:1".parse::<Address>().unwrap(), Address::Tcp("h:1".into()));
    assert_eq!(encode("a b/c&d=é"), "a%20b%2Fc%26d%3D%C3%A9");
    assert_eq!(encode("safe-_.~"), "safe-_.~");
    assert_eq!(utf8_complete_len(b"ab"), 2);
    assert_eq!(utf8_complete_len(b"a\xc3"), 1);
    assert_eq!(utf8_complete_len(b"a\xc3\xa9"), 3);
    assert_eq!(utf8_complete_len(b"a\xf0\x9f\x98"), 1);
    assert_eq!(utf8_complete_len(b"a\xf0\x9f\x98\x80"), 5);
}

#[tokio::test]
async fn sends_garden_requests() {
    let ok = reply("200 OK", "{}\n");
    let replies = vec![ok.clone(), ok.clone(), reply("200 OK", r#"{"Handles":["a","b"]}"#), ok];
    let (client, server) = serve(replies);
    client.set_property("h 1", "a/b", "v").await.unwrap();
    client.set_grace_time("h", Duration::from_secs(300)).await.unwrap();
    let filter = BTreeMap::from([("k&".to_string(), "v w".to_string()), ("x".to_string(), "y".to_string())]);
    assert_eq!(client.list(&filter).await.unwrap(), ["a", "b"]);
    client.stream_in("h", "vcap", "/tmp/x y", &b"TARDATA"[..]).await.unwrap();

    let seen = server.await.unwrap();
    assert_eq!(
        seen[0].0,
        "PUT /containers/h%201/properties/a%2Fb HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\
         Content-Length: 13\r\nContent-Type: application/json\r\n\r\n"
    );
    assert_eq!(seen[0].1, br#"{"value":"v"}"#);
    assert!(seen[1].0.starts_with("PUT /containers/h/grace_time HTTP/1.1\r\n"), "{}", seen[1].0);
    assert_eq!(seen[1].1, b"300000000000");
    assert!(seen[2].0.starts_with("GET /containers?k%26=v%20w&x=y HTTP/1.1\r\nHost: api\r\n"), "{}", seen[2].0);
    assert!(seen[2].1.is_empty());
    let (head, body) = &seen[3];
    assert!(head.starts_with("PUT /containers/h/files?user=vcap&destination=%2Ftmp%2Fx%20y HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("Content-Type: application/x-tar\r\n") && head.contains("Host: api\r\n"), "{head}");
    assert_eq!(body, b"7\r\nTARDATA\r\n0\r\n\r\n");
    cleanup(&client);
}

#[tokio::test]
async fn decodes_chunked_bodies_eof_bodies_and_garden_errors() {
    let not_found =
        r#"{"Type":"ContainerNotFoundError","Message":"unknown handle: x","Handle":"x","ProcessID":"","Binary":""}"#;
    let no_exe = r#"{"Type":"ExecutableNotFoundError","Message":"exec: \"nope\": not found"}"#;
    let replies = vec![
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\n{\"Han\r\n9\r\ndle\":\"h\"}\r\n0\r\nTrailer: 1\r\n\r\n"
            .to_string(),
        reply("404 Not Found", not_found),
        "HTTP/1.1 200 OK\r\n\r\nraw tar bytes".to_string(),
        reply("500 Internal Server Error", no_exe),
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops".to_string(),
    ];
    let (client, server) = serve(replies);
    assert_eq!(client.create(&ContainerSpec::default()).await.unwrap(), "h");
    let e = client.info("x").await.unwrap_err();
    assert_eq!(e.garden_type(), Some("ContainerNotFoundError"));
    assert_eq!(e.to_string(), "unknown handle: x");
    assert!(matches!(e, ClientError::Garden { status: 404, .. }));
    assert_eq!(client.stream_out("h", "", "/etc/").await.unwrap(), b"raw tar bytes");
    let spec = ProcessSpec { path: "nope".into(), ..Default::default() };
    let e = client.run("h", &spec, ProcessIo::default()).await.err().unwrap();
    assert_eq!(e.garden_type(), Some("ExecutableNotFoundError"));
    let e = client.ping().await.unwrap_err();
    assert_eq!((e.to_string().as_str(), e.garden_type()), ("oops", Some("")));
    let seen = server.await.unwrap();
    assert!(seen[2].0.starts_with("GET /containers/h/files?user=&source=%2Fetc%2F HTTP/1.1\r\n"));
    cleanup(&client);
}

#[tokio::test]
async fn run_reads_the_raw_hijacked_stream_and_sends_stdin_as_json_lines() {
    let (listener, client) = listen();
    let server = tokio::spawn(async move {
        let mut c = BufReader::new(listener.accept().await.unwrap().0);
        let (head, body) = read_request(&mut c).await;
        assert!(head.starts_with("POST /containers/h1/processes HTTP/1.1\r\nHost: api\r\n"), "{head}");
        let spec: ProcessSpec = serde_json::from_slice(&body).unwrap();
        assert_eq!((spec.path.as_str(), spec.args.as_slice()), ("cat", &["-n".to_string()][..]));
        c.get_mut()
            .write_all(
                b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
                  {\"process_id\":\"p1\",\"stream_id\":\"1\"}\n",
            )
            .await
            .unwrap();
        let mut out = BufReader::new(listener.accept().await.unwrap().0);
        let (head, _) = read_request(&mut out).await;
        assert!(head.starts_with("GET /containers/h1/processes/p1/attaches/1/stdout HTTP/1.1\r\n"), "{head}");
        out.get_mut().write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nhello, raw\n").await.unwrap();
        drop(out);
        let mut lines = Vec::new();
        while lines.len() < 4 {
            let mut l = String::new();
            assert!(c.read_line(&mut l).await.unwrap() > 0, "EOF after {lines:?}");
            lines.push(l);
        }
        c.get_mut().write_all(b"{\"process_id\":\"p1\",\"exit_status\":42}\n").await.unwrap();
        lines
    });

    let (mut out_r, out_w) = tokio::io::duplex(4096);
    let io = ProcessIo { stdin: Some(Box::new(&b"abc\n"[..])), stdout: Some(Box::new(out_w)), stderr: None };
    let spec = ProcessSpec { path: "cat".into(), args: vec!["-n".into()], ..Default::default() };
    let p = client.run("h1", &spec, io).await.unwrap();
    assert_eq!(p.id(), "p1");
    p.resize(80, 24).await.unwrap();
    p.signal(Signal::Kill).await.unwrap();
    assert_eq!(p.wait().await.unwrap(), 42);
    let mut out = String::new();
    out_r.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "hello, raw\n");

    let lines = server.await.unwrap();
    let data = r#"{"process_id":"p1","source":0,"data":"abc\n"}"#.to_string() + "\n";
    let eof = r#"{"process_id":"p1","source":0}"#.to_string() + "\n";
    let pos = |l: &str| lines.iter().position(|x| x == l);
    assert!(pos(&data).unwrap() < pos(&eof).unwrap(), "{lines:?}");
    assert!(pos("{\"process_id\":\"p1\",\"tty\":{\"window_size\":{\"columns\":80,\"rows\":24}}}\n").is_some());
    assert!(pos("{\"process_id\":\"p1\",\"signal\":1}\n").is_some(), "{lines:?}");
    cleanup(&client);
}
