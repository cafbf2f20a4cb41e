//! Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 with a free
//! port: plain HTTP, or TLS (a self-signed certificate) with basic auth.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestDir;

pub struct TestRegistry {
    child: Child,
    pub port: u16,
    dir: TestDir,
    pub creds: Option<(String, String)>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TestRegistry {
    /// `auth`: TLS with this user and password (bcrypt htpasswd), else plain HTTP.
    pub fn start(auth: Option<(&str, &str)>) -> std::io::Result<Self> {
        let dir = TestDir::new("registry");
        let port = free_port()?;
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = auth {
            let key = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
            let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .and_then(|p| p.self_signed(&key))
                .map_err(std::io::Error::other)?;
            std::fs::write(dir.path().join("cert.pem"), cert.pem())?;
            std::fs::write(dir.path().join("key.pem"), key.serialize_pem())?;
            let hash = bcrypt::hash(pass, 4).map_err(std::io::Error::other)?;
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n"))?;
            cfg.push_str(&format!(
                "  tls:\n    certificate: {0}/cert.pem\n    key: {0}/key.pem\nauth:\n  htpasswd:\n    realm: celld-test\n    path: {0}/htpasswd\n",
                dir.path().display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), cfg)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let reg = Self { child, port, dir, creds: auth.map(|(u, p)| (u.to_string(), p.to_string())) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                // TLS: a connection is enough; plain: /v2/ must answer.
                if auth.is_some() {
                    return Ok(reg);
                }
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read(&mut buf).is_ok_and(|n| n >= 12 && buf.starts_with(b"HTTP/1.")) {
                    return Ok(reg);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other(format!("docker-registry did not come up: {}", reg.log())))
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn storage(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Blob downloads the registry served (GETs of `/v2/…/blobs/…`).
    pub fn blob_gets(&self) -> usize {
        self.log().lines().filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:")).count()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes the layout's `tag` to `registry` as `name:tag` with skopeo.
pub fn push(layout: &Path, tag: &str, registry: &TestRegistry, name: &str) -> std::io::Result<()> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["--insecure-policy", "copy", "--all", "--dest-tls-verify=false"]);
    if let Some((u, p)) = &registry.creds {
        cmd.arg(format!("--dest-creds={u}:{p}"));
    }
    let out = cmd
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{name}:{tag}", registry.host()))
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("skopeo: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}
