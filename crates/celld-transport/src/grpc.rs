//! gRPC plumbing every role shares: binding a listener, a server with
//! reflection (so `grpcurl list` works), serving until shutdown, and dialling
//! with the process's client identity when mutual TLS is configured.

use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("listening on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("gRPC server: {0}")]
    Serve(String),
    #[error("gRPC TLS: {0}")]
    Tls(String),
    #[error("gRPC address {addr}: {why}")]
    BadAddress { addr: String, why: String },
}

/// The client identity every gRPC channel of this process presents, set once
/// at start from the TLS flags (one deployment CA signs every party).
static CLIENT_TLS: std::sync::OnceLock<Arc<crate::tls::TlsMaterial>> = std::sync::OnceLock::new();

/// Response metadata of a streamed download (DownloadDroplet): the whole
/// size in bytes, so a client can draw a bar (the Chunk message has no room).
pub const SIZE_METADATA: &str = "x-celld-size";

/// Makes every later `endpoint()` dial with mutual TLS using `tls`.
pub fn set_client_tls(tls: Arc<crate::tls::TlsMaterial>) {
    let _ = CLIENT_TLS.set(tls);
}

/// A channel endpoint for `addr` (`host:port` or a URL): `https://` with the
/// process's client identity if TLS is configured, else `http://`.
pub fn endpoint(addr: &str) -> Result<tonic::transport::Endpoint, GrpcError> {
    let bad = |why: String| GrpcError::BadAddress { addr: addr.to_string(), why };
    let tls = CLIENT_TLS.get();
    let bare = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let url = match tls {
        Some(_) => format!("https://{bare}"),
        None if addr.contains("://") => addr.to_string(),
        None => format!("http://{addr}"),
    };
    let ep = tonic::transport::Endpoint::from_shared(url).map_err(|e| bad(e.to_string()))?;
    match tls {
        Some(t) => ep.tls_config(t.tonic_client()).map_err(|e| bad(format!("TLS: {e}"))),
        None => Ok(ep),
    }
}

/// Binds `addr`, so that a taken port fails start-up rather than later.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, GrpcError> {
    let listen = |source| GrpcError::Listen { addr: addr.to_string(), source };
    let sa: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .map_err(listen)?
        .next()
        .ok_or_else(|| listen(std::io::Error::other("the address resolves to nothing")))?;
    tokio::net::TcpListener::bind(sa).await.map_err(listen)
}

/// A server with reflection (v1 and v1alpha, so any `grpcurl` lists the
/// services); each role adds its own services.
pub fn router() -> Result<tonic::transport::server::Router, GrpcError> {
    router_with_tls(None)
}

/// `router()`, requiring clients to present a certificate the CA signed if
/// `tls` is set.
pub fn router_with_tls(tls: Option<&crate::tls::TlsMaterial>) -> Result<tonic::transport::server::Router, GrpcError> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = tls {
        // A silent client must not hold a handshake open for ever.
        builder = builder
            .tls_config(t.tonic_server().timeout(std::time::Duration::from_secs(10)))
            .map_err(|e| GrpcError::Tls(e.to_string()))?;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(celld_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| GrpcError::Reflection(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(celld_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| GrpcError::Reflection(e.to_string()))?;
    Ok(builder.add_service(reflection).add_service(reflection_alpha))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn run(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GrpcError> {
    // Small request/response messages: no Nagle delay.
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
        conn.inspect(|c| {
            let _ = c.set_nodelay(true);
        })
    });
    router.serve_with_incoming_shutdown(incoming, shutdown).await.map_err(|e| GrpcError::Serve(e.to_string()))
}
