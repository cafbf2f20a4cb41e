//! `-L` local port forwards: the spec's syntax (cf's, with its `localhost`
//! default), the listener, and one `direct-tcpip` channel per accepted
//! connection, relayed both ways.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use russh::client::Handle;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::config::COPY_BUF;
use super::connection::{ClientHandler, Connection};
use super::error::SshError;

/// One `-L [BIND_ADDRESS:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT`: listen locally,
/// and open a `direct-tcpip` channel to REMOTE_HOST:REMOTE_PORT (dialled from
/// the far side, i.e. from inside the app's container) for each connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalForward {
    /// Host or address to listen on; `localhost` (cf's default) means 127.0.0.1.
    pub bind_host: String,
    /// 0 picks a free port (see [`Forwarding::local_addr`]).
    pub bind_port: u16,
    pub remote_host: String,
    pub remote_port: u16,
}

impl LocalForward {
    /// A forward from 127.0.0.1:`local_port` to `remote_host`:`remote_port`.
    pub fn new(local_port: u16, remote_host: &str, remote_port: u16) -> Self {
        Self { bind_host: "localhost".into(), bind_port: local_port, remote_host: remote_host.into(), remote_port }
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_string() }
}

impl fmt::Display for LocalForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}:{}", bracket(&self.bind_host), self.bind_port, bracket(&self.remote_host), self.remote_port)
    }
}

/// Splits on `:` outside `[...]`, and takes the brackets off.
fn split_spec(spec: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut in_brackets = false;
    let mut bracketed = false;
    for c in spec.chars() {
        match c {
            '[' if !in_brackets && cur.is_empty() && !bracketed => in_brackets = true,
            ']' if in_brackets => {
                in_brackets = false;
                bracketed = true;
            }
            ':' if !in_brackets => {
                parts.push(std::mem::take(&mut cur));
                bracketed = false;
            }
            '[' | ']' => return None,
            _ if bracketed => return None,
            c => cur.push(c),
        }
    }
    if in_brackets {
        return None;
    }
    parts.push(cur);
    Some(parts)
}

impl FromStr for LocalForward {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("Bad local forwarding specification '{spec}': {why}");
        let usage = "use [BIND_ADDRESS:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT, e.g. 8080:localhost:80";
        let parts = split_spec(spec).ok_or_else(|| bad(usage))?;
        if parts.iter().any(String::is_empty) {
            return Err(bad(usage));
        }
        let port = |s: &str, what: &str, zero_ok: bool| -> Result<u16, String> {
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(&format!("{what} {s:?} is not a port number; {usage}")));
            }
            match s.parse::<u16>() {
                Ok(0) if !zero_ok => Err(bad(&format!("{what} 0 is not a port"))),
                Ok(p) => Ok(p),
                Err(_) => Err(bad(&format!("{what} {s} is out of range (1-65535)"))),
            }
        };
        let (bind_host, local, host, remote) = match parts.as_slice() {
            [local, host, remote] => ("localhost", local, host, remote),
            [bind, local, host, remote] => (bind.as_str(), local, host, remote),
            _ => return Err(bad(usage)),
        };
        Ok(Self {
            bind_host: bind_host.to_string(),
            bind_port: port(local, "local port", true)?,
            remote_host: host.to_string(),
            remote_port: port(remote, "remote port", false)?,
        })
    }
}

/// An open `-L` forward: its listener and connections live until this is dropped.
#[derive(Debug)]
pub struct Forwarding {
    local: SocketAddr,
    spec: LocalForward,
    task: JoinHandle<()>,
}

impl Forwarding {
    /// Where it listens (the real port when the spec asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn spec(&self) -> &LocalForward {
        &self.spec
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Connection {
    /// Opens a `-L` forward: binds its listener now (an error if the address
    /// is taken), then relays each accepted connection over a `direct-tcpip`
    /// channel, with half-close both ways, until the [`Forwarding`] is dropped.
    pub async fn forward_local(&self, spec: &LocalForward) -> Result<Forwarding, SshError> {
        let host = if spec.bind_host.eq_ignore_ascii_case("localhost") { "127.0.0.1" } else { &spec.bind_host };
        let listen_err = |source| SshError::Listen {
            spec: spec.to_string(),
            addr: format!("{}:{}", bracket(host), spec.bind_port),
            source,
        };
        let listener = TcpListener::bind((host, spec.bind_port)).await.map_err(listen_err)?;
        let local = listener.local_addr().map_err(listen_err)?;
        let handle = self.handle.clone();
        let (rhost, rport) = (spec.remote_host.clone(), spec.remote_port);
        let task = tokio::spawn(async move {
            // Dropped (aborting every relay) when the accept loop is aborted.
            let mut relays = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, peer)) => {
                            relays.spawn(relay(handle.clone(), tcp, peer, rhost.clone(), rport));
                        }
                        // EMFILE and the like: wait, as cf does.
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    },
                    Some(_) = relays.join_next(), if !relays.is_empty() => {}
                }
            }
        });
        Ok(Forwarding { local, spec: spec.clone(), task })
    }
}

/// One forwarded connection: a `direct-tcpip` channel, bytes copied both ways.
async fn relay(handle: Arc<Handle<ClientHandler>>, mut tcp: TcpStream, peer: SocketAddr, host: String, port: u16) {
    let _ = tcp.set_nodelay(true);
    let channel =
        handle.channel_open_direct_tcpip(host.clone(), u32::from(port), peer.ip().to_string(), u32::from(peer.port()));
    match channel.await {
        Ok(channel) => {
            let mut stream = channel.into_stream();
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut tcp, &mut stream, COPY_BUF, COPY_BUF).await;
        }
        // What cf prints; the local connection is closed.
        Err(e) => eprintln!("connect to {}:{port} failed: {e}", bracket(&host)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(s: &str) -> Result<LocalForward, String> {
        s.parse()
    }

    #[test]
    fn forward_specs_parse_like_cf() {
        assert_eq!(fwd("8080:localhost:80").unwrap(), LocalForward::new(8080, "localhost", 80));
        let f = fwd("127.0.0.1:8080:10.0.0.1:3306").unwrap();
        assert_eq!(
            (f.bind_host.as_str(), f.bind_port, f.remote_host.as_str(), f.remote_port),
            ("127.0.0.1", 8080, "10.0.0.1", 3306)
        );
        let f = fwd("[::1]:8080:[fd00::5]:443").unwrap();
        assert_eq!((f.bind_host.as_str(), f.remote_host.as_str()), ("::1", "fd00::5"));
        assert_eq!(f.to_string(), "[::1]:8080:[fd00::5]:443");
        let f = fwd("0:db.internal:5432").unwrap();
        assert_eq!((f.bind_port, f.remote_host.as_str()), (0, "db.internal"));
        assert_eq!(fwd("0.0.0.0:80:x:1").unwrap().bind_host, "0.0.0.0");
    }

    #[test]
    fn bad_forward_specs_say_why() {
        // cf's own error cases.
        for bad in [
            "IAMABANANA909009009",
            "IAMABANANA:909009009",
            "I:AM:A:BANANA:909009009",
            "I:AM:A:",
            "I:AM:8888",
            "8888:AM:potato",
            "localhost:foo:AM:8888",
            "localhost:8080:AM:bar",
            "",
            "8080::80",
            "[::1:8080:x:80",
            "[::1]x:8080:x:80",
        ] {
            let e = fwd(bad).unwrap_err();
            assert!(e.starts_with(&format!("Bad local forwarding specification '{bad}'")), "{bad}: {e}");
        }
        assert!(fwd("70000:x:80").unwrap_err().contains("out of range"));
        assert!(fwd("8080:x:0").unwrap_err().contains("remote port 0"));
        assert!(fwd("8080:x:-1").unwrap_err().contains("not a port number"));
    }
}
