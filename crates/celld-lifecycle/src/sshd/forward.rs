//! TCP forwarding: `direct-tcpip` channels (`ssh -L`, `cf ssh -L`) dialled from
//! this process, so from inside the container's network namespace and under its
//! egress rules; and `tcpip-forward` listeners (`ssh -R`) whose connections come
//! back to the client as `forwarded-tcpip` channels.

use std::time::Duration;

use bytes::BytesMut;
use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::{SshdError, resolve};

/// How long a `direct-tcpip` dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);
/// Read from the socket at once: large reads become full-size SSH packets.
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
/// other, and the relay ends when both directions have (or the channel
/// closes). Data goes between the channel's messages and the socket without
/// a copy in between: each message is written as it came, and each read
/// from the socket is sent as it was read.
async fn relay(channel: Channel<Msg>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let (mut tcp_rd, mut tcp_wr) = tcp.into_split();
    let (mut ch_rd, ch_wr) = channel.split();
    // Ends true when the channel closed (or the socket failed): stop both ways.
    let to_tcp = async {
        while let Some(msg) = ch_rd.wait().await {
            let failed = match msg {
                ChannelMsg::Data { data } => tcp_wr.write_all(&data).await.is_err(),
                ChannelMsg::Eof => {
                    let _ = tcp_wr.shutdown().await;
                    return false;
                }
                ChannelMsg::Close => true,
                _ => false,
            };
            if failed {
                return true;
            }
        }
        true
    };
    let from_tcp = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(RELAY_BUFFER);
            match tcp_rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if ch_wr.data_bytes(buf.split().freeze()).await.is_err() {
                        return true;
                    }
                }
            }
        }
        ch_wr.eof().await.is_err()
    };
    tokio::pin!(to_tcp, from_tcp);
    let (mut to_done, mut from_done) = (false, false);
    while !(to_done && from_done) {
        let stop = tokio::select! {
            stop = &mut to_tcp, if !to_done => { to_done = true; stop }
            stop = &mut from_tcp, if !from_done => { from_done = true; stop }
        };
        if stop {
            break;
        }
    }
    let _ = ch_wr.close().await;
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
