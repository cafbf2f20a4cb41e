//! One proxied connection: the user's side is a russh server session, the
//! instance's side a russh client session to its sshd. Channels are relayed
//! with each direction in its own task, so a slow side never stalls the
//! other's window adjustments.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::server::{Auth, Msg as ServerMsg, Session};
use russh::{
    Channel, ChannelId, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf, cipher, client, server,
};

use super::{Authority, Login, ProxyError, Target};

/// The window the proxy opens to the instance's sshd: large, so bulk
/// transfers do not wait on window adjustments.
pub(super) const WINDOW: u32 = 16 << 20;
/// The window the proxy opens to the user's client: OpenSSH's own for TCP
/// channels (64 packets of 32 KiB). More only lets OpenSSH's client queue
/// more in its output buffer, which it grows by allocate-copy-and-zero: with
/// 16 MiB it spent twice the CPU per byte it spends against its own sshd.
pub(super) const USER_WINDOW: u32 = 2 << 20;
pub(super) const MAX_PACKET: u32 = 32 << 10;
pub(super) const CHANNEL_BUFFER: usize = 256;
/// The most one relayed write joins from data messages already queued.
const GATHER: usize = 128 << 10;
/// Bytes read from a connection's socket at once: many packets per read
/// instead of two reads (length, then the rest) per packet.
pub(super) const READ_BUFFER: usize = 256 << 10;
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The user the proxy logs in to an instance's sshd as (it accepts any).
const BACKEND_USER: &str = "vcap";

type Backend = client::Handle<BackendHandler>;

pub(super) struct Connection {
    authority: Arc<dyn Authority>,
    remote: SocketAddr,
    target: Option<Target>,
    backend: Option<Arc<Backend>>,
    /// The user-side session, for channels the instance opens (`-R`).
    user_side: Arc<OnceLock<server::Handle>>,
    metrics: crate::metrics::SshMetrics,
}

impl Connection {
    pub(super) fn new(authority: Arc<dyn Authority>, remote: SocketAddr, metrics: crate::metrics::SshMetrics) -> Self {
        Self { authority, remote, target: None, backend: None, user_side: Arc::new(OnceLock::new()), metrics }
    }

    fn backend(&self) -> Result<Arc<Backend>, russh::Error> {
        self.backend.clone().ok_or(russh::Error::Inconsistent)
    }

    fn remember_session(&self, session: &Session) {
        let _ = self.user_side.set(session.handle());
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(t) = &self.target {
            self.authority.session_ended(t, self.remote);
            self.metrics.sessions_current.dec();
        }
        if let Some(b) = self.backend.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = b.disconnect(russh::Disconnect::ByApplication, "", "en").await;
            });
        }
    }
}

fn reject() -> Auth {
    Auth::Reject { proceed_with_methods: None, partial_success: false }
}

/// Dials the instance's sshd, checks its host key and logs in with the LRP's key.
async fn dial(target: &Target, user_side: Arc<OnceLock<server::Handle>>) -> Result<Backend, ProxyError> {
    let fail = |msg: String| ProxyError::Backend { addr: target.addr, msg };
    let key = PrivateKey::from_openssh(target.private_key_pem.as_bytes())
        .map_err(|e| fail(format!("the LRP's ssh key does not parse: {e}")))?;
    let config = Arc::new(client::Config {
        // Our own sshd on the other end: the cheapest AEAD first.
        preferred: super::preferred(&[cipher::AES_128_GCM, cipher::AES_256_GCM, cipher::CHACHA20_POLY1305]),
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        channel_buffer_size: CHANNEL_BUFFER,
        nodelay: true,
        inactivity_timeout: None,
        ..Default::default()
    });
    let handler = BackendHandler { expected: target.host_fingerprint.clone(), user_side };
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(target.addr).await?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio::io::BufReader::with_capacity(READ_BUFFER, tcp);
        client::connect_stream(config, stream, handler).await
    };
    let mut handle = match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
        Err(_) => return Err(fail(format!("no answer within {}s", DIAL_TIMEOUT.as_secs()))),
        Ok(Err(e)) => return Err(fail(e.to_string())),
        Ok(Ok(h)) => h,
    };
    let hash = handle.best_supported_rsa_hash().await.ok().flatten().flatten();
    let auth = handle
        .authenticate_publickey(BACKEND_USER, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !auth.success() {
        return Err(fail("it refused the LRP's key".into()));
    }
    Ok(handle)
}

impl server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let remote = self.remote;
        let login = match Login::parse(user) {
            Ok(l) => l,
            Err(e) => {
                tracing::info!(%remote, error = %e, "ssh proxy: login refused");
                return Ok(reject());
            }
        };
        let target = match self.authority.authorize(&login, password, remote).await {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(%remote, user, error = %e, "ssh proxy: login refused");
                return Ok(reject());
            }
        };
        match dial(&target, self.user_side.clone()).await {
            Ok(b) => {
                tracing::info!(%remote, process_guid = %target.process_guid, index = target.index, "ssh proxy: session started");
                self.authority.session_started(&target, remote);
                self.metrics.sessions.inc();
                self.metrics.sessions_current.inc();
                self.backend = Some(Arc::new(b));
                self.target = Some(target);
                Ok(Auth::Accept)
            }
            Err(e) => {
                tracing::warn!(%remote, process_guid = %target.process_guid, index = target.index, error = %e, "ssh proxy: cannot reach the instance");
                Ok(reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<ServerMsg>,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.remember_session(session);
        let backend = self.backend()?;
        match backend.channel_open_session().await {
            Ok(remote) => {
                reply.accept().await;
                relay_session(channel, remote, session.handle());
            }
            Err(e) => {
                tracing::info!(remote = %self.remote, error = %e, "ssh proxy: the instance refused a session");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<ServerMsg>,
        host: &str,
        port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.remember_session(session);
        let backend = self.backend()?;
        match backend.channel_open_direct_tcpip(host, port, originator_address, originator_port).await {
            Ok(remote) => {
                reply.accept().await;
                relay_stream(channel, remote);
            }
            Err(e) => {
                tracing::debug!(remote = %self.remote, host, port, error = %e, "ssh proxy: direct-tcpip refused");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.remember_session(session);
        let backend = self.backend()?;
        match backend.tcpip_forward(address, *port).await {
            Ok(bound) => {
                if *port == 0 {
                    *port = bound;
                }
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    async fn cancel_tcpip_forward(&mut self, address: &str, port: u32, _: &mut Session) -> Result<bool, Self::Error> {
        let backend = self.backend()?;
        Ok(backend.cancel_tcpip_forward(address, port).await.is_ok())
    }
}

pub(super) struct BackendHandler {
    expected: String,
    user_side: Arc<OnceLock<server::Handle>>,
}

impl client::Handler for BackendHandler {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            tracing::warn!("ssh proxy: the instance offered a certificate, not the LRP's host key");
            return Ok(false);
        };
        let ok = super::fingerprint_matches(&self.expected, key);
        if !ok {
            tracing::warn!(
                expected = %self.expected,
                got = %super::fingerprint(key),
                "ssh proxy: the instance's host key is not the one recorded for its LRP"
            );
        }
        Ok(ok)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let Some(user) = self.user_side.get().cloned() else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let (ca, oa) = (connected_address.to_string(), originator_address.to_string());
        // Opening the user's side waits on the user: not in this callback,
        // which holds up everything else on the instance's connection.
        tokio::spawn(async move {
            match user.channel_open_forwarded_tcpip(ca, connected_port, oa, originator_port).await {
                Ok(user_ch) => {
                    reply.accept().await;
                    relay_stream(user_ch, channel);
                }
                Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
            }
        });
        Ok(())
    }
}

/// Bytes, EOF and close, both ways (direct-tcpip and forwarded-tcpip).
fn relay_stream<A, B>(a: Channel<A>, b: Channel<B>)
where
    A: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    B: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let (a_rd, a_wr) = a.split();
    let (b_rd, b_wr) = b.split();
    tokio::spawn(pump(a_rd, b_wr));
    tokio::spawn(pump(b_rd, a_wr));
}

async fn pump<S>(mut from: ChannelReadHalf, to: ChannelWriteHalf<S>)
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let mut held = None;
    loop {
        let msg = match held.take() {
            Some(m) => m,
            None => from.wait().await,
        };
        let sent = match msg {
            Some(ChannelMsg::Data { data }) => {
                let (data, next) = gather(&mut from, data);
                held = next;
                to.data_bytes(data).await
            }
            Some(ChannelMsg::Eof) => to.eof().await,
            Some(ChannelMsg::Close) | None => break,
            Some(_) => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = to.close().await;
}

/// `first` joined with the data already queued behind it, up to [`GATHER`]
/// bytes, so the instance's hop carries fewer, larger packets (each costs a
/// message, a wake-up and a seal on both ends). Only what has already
/// arrived is taken: nothing waits. The first message that is not data (or
/// the channel's end, as `Some(None)`) is handed back.
fn gather(from: &mut ChannelReadHalf, first: Bytes) -> (Bytes, Option<Option<ChannelMsg>>) {
    let mut joined: Option<BytesMut> = None;
    let mut next = None;
    while joined.as_ref().map_or(first.len(), BytesMut::len) < GATHER {
        let mut cx = Context::from_waker(Waker::noop());
        match std::pin::pin!(from.wait()).poll(&mut cx) {
            Poll::Ready(Some(ChannelMsg::Data { data })) => joined
                .get_or_insert_with(|| {
                    let mut b = BytesMut::with_capacity(GATHER + usize::try_from(MAX_PACKET).unwrap_or(0));
                    b.extend_from_slice(&first);
                    b
                })
                .extend_from_slice(&data),
            Poll::Ready(other) => {
                next = Some(other);
                break;
            }
            Poll::Pending => break,
        }
    }
    (joined.map_or(first, BytesMut::freeze), next)
}

/// A session channel: the user's requests go to the instance, its output,
/// exit status/signal and request replies come back. Replies are relayed in
/// order: every request is forwarded wanting one, and the instance answers
/// in order.
fn relay_session(user: Channel<ServerMsg>, instance: Channel<client::Msg>, user_session: server::Handle) {
    let user_id = user.id();
    let (u_rd, u_wr) = user.split();
    let (i_rd, i_wr) = instance.split();
    tokio::spawn(user_to_instance(u_rd, i_wr));
    tokio::spawn(instance_to_user(i_rd, u_wr, user_session, user_id));
}

async fn user_to_instance(mut from: ChannelReadHalf, to: ChannelWriteHalf<client::Msg>) {
    while let Some(msg) = from.wait().await {
        let sent = match msg {
            ChannelMsg::Data { data } => to.data_bytes(data).await,
            ChannelMsg::ExtendedData { data, ext } => to.extended_data_bytes(ext, data).await,
            ChannelMsg::Eof => to.eof().await,
            ChannelMsg::Close => break,
            ChannelMsg::RequestPty { term, col_width, row_height, pix_width, pix_height, terminal_modes, .. } => {
                to.request_pty(true, &term, col_width, row_height, pix_width, pix_height, &terminal_modes).await
            }
            ChannelMsg::SetEnv { variable_name, variable_value, .. } => {
                to.set_env(true, variable_name, variable_value).await
            }
            ChannelMsg::RequestShell { .. } => to.request_shell(true).await,
            ChannelMsg::Exec { command, .. } => to.exec(true, command).await,
            ChannelMsg::RequestSubsystem { name, .. } => to.request_subsystem(true, name).await,
            ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                to.window_change(col_width, row_height, pix_width, pix_height).await
            }
            ChannelMsg::Signal { signal } => to.signal(signal).await,
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = to.close().await;
}

async fn instance_to_user(
    mut from: ChannelReadHalf,
    to: ChannelWriteHalf<ServerMsg>,
    user_session: server::Handle,
    user_id: ChannelId,
) {
    while let Some(msg) = from.wait().await {
        let sent = match msg {
            ChannelMsg::Data { data } => to.data_bytes(data).await,
            ChannelMsg::ExtendedData { data, ext } => to.extended_data_bytes(ext, data).await,
            ChannelMsg::Eof => to.eof().await,
            ChannelMsg::Close => break,
            ChannelMsg::ExitStatus { exit_status } => to.exit_status(exit_status).await,
            ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag } => user_session
                .exit_signal_request(user_id, signal_name, core_dumped, error_message, lang_tag)
                .await
                .map_err(|()| russh::Error::SendError),
            ChannelMsg::Success => user_session.channel_success(user_id).await.map_err(|()| russh::Error::SendError),
            ChannelMsg::Failure => user_session.channel_failure(user_id).await.map_err(|()| russh::Error::SendError),
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = to.close().await;
}
