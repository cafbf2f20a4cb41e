//! A small blocking client of the CF API for tests: JSON requests with a
//! bearer token, multipart uploads, job and state polling. HTTP/1.1 with
//! `Connection: close`, so each request is one connection.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Cf {
    pub addr: String,
    pub token: String,
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One request: (status, headers, body).
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    // A Host of the caller's (a route through the router) replaces the address.
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write request");
    s.write_all(body).expect("write body");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read reply");
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete HTTP reply");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = buf[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
    out
}

/// The password grant of the `cf` client: (status, body).
pub fn password_grant(addr: &str, user: &str, password: &str) -> (u16, Value) {
    let form = format!("grant_type=password&username={user}&password={password}");
    let r = request(
        addr,
        "POST",
        "/oauth/token",
        &[("Authorization", "Basic Y2Y6"), ("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    (r.status, r.json())
}

/// The admin password the daemon kept in its depot.
pub fn admin_password(depot: &std::path::Path) -> String {
    std::fs::read_to_string(depot.join("cf-api/admin-password")).expect("the kept admin password").trim().to_string()
}

impl Cf {
    pub fn login(addr: &str, password: &str) -> Self {
        let (status, body) = password_grant(addr, "admin", password);
        assert_eq!(status, 200, "login: {body}");
        Cf { addr: addr.to_string(), token: body["access_token"].as_str().expect("access_token").to_string() }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let auth = format!("bearer {}", self.token);
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        request(&self.addr, method, path, &[("Authorization", &auth), ("Content-Type", "application/json")], &bytes)
    }

    /// A call that must answer `want`; its JSON.
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let r = self.call(method, path, body);
        assert_eq!(r.status, want, "{method} {path}: {}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    pub fn get(&self, path: &str) -> Value {
        self.ok("GET", path, None, 200)
    }

    pub fn raw(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let auth = format!("bearer {}", self.token);
        request(&self.addr, method, path, &[("Authorization", &auth), ("Content-Type", content_type)], body)
    }

    /// Follows a 202's job to its end; the job.
    pub fn wait_job(&self, r: &Reply) -> Value {
        assert_eq!(r.status, 202, "expected a job: {}", String::from_utf8_lossy(&r.body));
        let loc = r.header("location").expect("a job's Location");
        let path = &loc[loc.find("/v3/").expect("a /v3 Location")..];
        self.poll(path, "/state", &["COMPLETE", "FAILED"], Duration::from_secs(60))
    }

    /// Polls `path` until the field at `pointer` is one of `states`.
    pub fn poll(&self, path: &str, pointer: &str, states: &[&str], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.get(path);
            if v.pointer(pointer).and_then(Value::as_str).is_some_and(|s| states.contains(&s)) {
                return v;
            }
            assert!(Instant::now() < deadline, "{path} did not reach {states:?}: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `apply_manifest` in a space, followed to its job's end; the job.
    pub fn apply_manifest(&self, space: &str, yaml: &str) -> Value {
        let path = format!("/v3/spaces/{space}/actions/apply_manifest");
        self.wait_job(&self.raw("POST", &path, "application/x-yaml", yaml.as_bytes()))
    }

    /// The guid of the space `space` of org `local`.
    pub fn space_guid(&self, space: &str) -> String {
        let orgs = self.get("/v3/organizations?names=local");
        let org = orgs["resources"][0]["guid"].as_str().expect("org local").to_string();
        let spaces = self.get(&format!("/v3/spaces?names={space}&organization_guids={org}"));
        spaces["resources"][0]["guid"].as_str().expect("the space").to_string()
    }

    /// `multipart/form-data` with `resources` (JSON) and, if any, `bits` (a zip).
    pub fn upload(&self, package: &str, resources: &Value, bits: Option<&[u8]>) -> Reply {
        let boundary = "celld-test-boundary-7d1f";
        let mut body = Vec::new();
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"resources\"\r\n\r\n{resources}\r\n")
                .as_bytes(),
        );
        if let Some(zip) = bits {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"bits\"; filename=\"package.zip\"\r\nContent-Type: application/zip\r\n\r\n")
                    .as_bytes(),
            );
            body.extend_from_slice(zip);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        self.raw(
            "POST",
            &format!("/v3/packages/{package}/upload"),
            &format!("multipart/form-data; boundary={boundary}"),
            &body,
        )
    }
}

/// A zip of `files` (path, mode, contents) and the CLI's resource list for them.
pub fn zip_app(files: &[(&str, u32, &str)]) -> (Vec<u8>, Value) {
    use sha1::Digest;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut resources = Vec::new();
    for (path, mode, body) in files {
        w.start_file(*path, zip::write::SimpleFileOptions::default().unix_permissions(*mode)).expect("zip entry");
        w.write_all(body.as_bytes()).expect("zip write");
        let sha = hex(&sha1::Sha1::digest(body.as_bytes()));
        resources.push(
            json!({"path": path, "mode": format!("{mode:o}"), "checksum": {"value": sha}, "size_in_bytes": body.len()}),
        );
    }
    (w.finish().expect("zip").into_inner(), Value::Array(resources))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
