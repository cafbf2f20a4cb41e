//! "The internet" for egress tests: a network namespace outside any
//! container, linked to the host by a veth, with a TCP listener that answers
//! "pong" and records who connected.

use std::io::Write;
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// A network namespace outside any container, linked to the host by a veth,
/// with a TCP listener that records who connects: "the internet" for egress tests.
pub struct OutsideNet {
    ns: String,
    host_if: String,
    /// A second address of the listener, in a private range (192.168/16)
    /// that CF's default security groups do not open.
    pub private_ip: String,
    pub host_ip: String,
    pub peer_ip: String,
    pub port: u16,
    pub peers: Arc<Mutex<Vec<String>>>,
}

impl OutsideNet {
    pub fn new() -> Self {
        let slot = std::process::id() % 250;
        let ns = format!("celldt-{}", std::process::id());
        let host_if = format!("cto{}", std::process::id() % 100_000);
        let (host_ip, peer_ip) = (format!("198.18.{slot}.1"), format!("198.18.{slot}.2"));
        let (private_host_ip, private_ip) = (format!("192.168.{slot}.1"), format!("192.168.{slot}.2"));
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().map(|s| s.success()).unwrap_or(false);
            assert!(ok, "ip {args:?} failed");
        };
        // What a killed earlier run may have left.
        for args in [["netns", "del", &ns], ["link", "del", &host_if]] {
            let _ = Command::new("ip").args(args).stderr(std::process::Stdio::null()).status();
        }
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["addr", "add", &format!("{private_host_ip}/30"), "dev", &host_if]);
        ip(&["-n", &ns, "addr", "add", &format!("{peer_ip}/30"), "dev", "eth0"]);
        ip(&["-n", &ns, "addr", "add", &format!("{private_ip}/30"), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        let nsfile = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
        let listener = std::thread::spawn(move || {
            nix::sched::setns(&nsfile, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            TcpListener::bind(("0.0.0.0", 0)).expect("bind in netns")
        })
        .join()
        .expect("listener thread");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                if let Ok(a) = c.peer_addr() {
                    seen.lock().map(|mut v| v.push(a.ip().to_string())).ok();
                }
                let _ = c.write_all(b"pong\n");
            }
        });
        Self { ns, host_if, private_ip, host_ip, peer_ip, port, peers }
    }
}

impl Drop for OutsideNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
