//! TCP forwarding: `direct-tcpip` channels (`ssh -L`, `cf ssh -L`) dialled from
//! this process, so from inside the container's network namespace and under its
//! egress rules; and `tcpip-forward` listeners (`ssh -R`) whose connections come
//! back to the client as `forwarded-tcpip` channels.

use std::time::Duration;

use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::{SshdError, resolve};

/// How long a `direct-tcpip` dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);
/// Copy buffers per direction: large reads become full-size SSH packets.
const RELAY_BUFFER: usize = 256 * 1024;

/// Dials `host:port`; accepts the channel and relays, or rejects it with
/// CONNECT_FAILED.
pub(super) async fn direct_tcpip(channel: Channel<Msg>, host: String, port: u32, reply: ChannelOpenHandle) {
    let tcp = match u16::try_from(port) {
        Ok(port) => tokio::time::timeout(DIAL_TIMEOUT, dial(&host, port)).await.ok().and_then(Result::ok),
        Err(_) => None,
    };
    let Some(tcp) = tcp else {
        reply.reject(ChannelOpenFailure::ConnectFailed).await;
        return;
    };
    reply.accept().await;
    relay(channel, tcp).await;
}

async fn dial(host: &str, port: u16) -> Result<TcpStream, SshdError> {
    let mut last = None;
    for addr in resolve(host, port).await? {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address")).into())
}

/// Both ways, with half-close: EOF from one side shuts down writing to the
/// other, and the relay ends when both directions have.
async fn relay(channel: Channel<Msg>, mut tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut stream = channel.into_stream();
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut tcp, RELAY_BUFFER, RELAY_BUFFER).await;
}

/// The listener for a `tcpip-forward` request. The address is the client's:
/// empty, `*` or `0.0.0.0` for all interfaces, `localhost` for loopback.
pub(super) async fn bind(address: &str, port: u16) -> Result<TcpListener, SshdError> {
    let addrs = resolve(address, port).await?;
    Ok(TcpListener::bind(addrs.as_slice()).await?)
}

/// Accepts on a forwarded port and opens a `forwarded-tcpip` channel to the
/// client for each connection. Aborting this task (cancel-tcpip-forward, or
/// the connection's end) closes the listener and its relays.
pub(super) async fn serve_remote(listener: TcpListener, handle: Handle, address: String, port: u32) {
    let mut relays = JoinSet::new();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while relays.try_join_next().is_some() {}
        let handle = handle.clone();
        let address = address.clone();
        relays.spawn(async move {
            let opened =
                handle.channel_open_forwarded_tcpip(address, port, peer.ip().to_string(), u32::from(peer.port())).await;
            if let Ok(channel) = opened {
                relay(channel, tcp).await;
            }
        });
    }
}
