//! The rep's HTTPS API, as Diego's auctioneer, BBS and drain script call it:
//! on `--rep-listen` `GET /state`, `POST /work`, `GET /container_metrics`,
//! `POST /v1/lrps/:pg/instances/:ig/stop`, `POST /v1/tasks/:tg/cancel` and
//! `PUT /v{1,2}/lrps/:pg/instances/:ig`; on `--rep-admin-listen` (localhost)
//! `GET /ping` and `POST /evacuate`. Both require client certificates signed
//! by `--rep-ca`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::json::{CellState, LrpUpdate, Work};

/// Largest `/work` or update body accepted (a batch of a few thousand
/// instances is well under it).
const MAX_BODY: usize = 16 << 20;
/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("workload cell ID {0:?} does not match this cell")]
    CellIdMismatch(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The one mapping of the rep API's errors to HTTP status.
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::CellIdMismatch(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What the rep API asks of the cell.
#[async_trait::async_trait]
pub trait RepApi: Send + Sync + 'static {
    /// The cell's state, and whether the cell is healthy (503 if not).
    async fn state(&self) -> CellState;
    fn healthy(&self) -> bool;
    /// Takes what it can of the work; answers with the rest.
    async fn perform(&self, work: Work) -> Result<Work, ApiError>;
    /// The rep's container metrics document.
    async fn container_metrics(&self) -> serde_json::Value;
    fn stop_lrp(&self, process_guid: &str, instance_guid: &str) -> Result<(), ApiError>;
    /// Cancels the task (asynchronously; unknown tasks are no error).
    fn cancel_task(&self, task_guid: &str);
    fn update_lrp(&self, update: LrpUpdate) -> Result<(), ApiError>;
    /// Starts evacuating (the drain script's call); returns at once.
    fn evacuate(&self);
}

fn reply(status: StatusCode, body: Vec<u8>, json: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if json {
        r.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    }
    r
}

fn json_reply<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(v) {
        Ok(b) => reply(status, b, true),
        Err(e) => error_reply(&ApiError::Internal(e.to_string())),
    }
}

fn error_reply(e: &ApiError) -> Response<Full<Bytes>> {
    json_reply(e.status(), &serde_json::json!({ "error": e.to_string() }))
}

async fn body_json<T: serde::de::DeserializeOwned>(req: Request<hyper::body::Incoming>) -> Result<T, ApiError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// `/v1/lrps/PG/instances/IG[/stop]` → (PG, IG, stop?).
fn lrp_path(path: &str) -> Option<(&str, &str, bool)> {
    let rest = path.strip_prefix("/v1/lrps/").or_else(|| path.strip_prefix("/v2/lrps/"))?;
    let mut parts = rest.split('/');
    let pg = parts.next().filter(|s| !s.is_empty())?;
    (parts.next()? == "instances").then_some(())?;
    let ig = parts.next().filter(|s| !s.is_empty())?;
    match (parts.next(), parts.next()) {
        (None, _) => Some((pg, ig, false)),
        (Some("stop"), None) => Some((pg, ig, true)),
        _ => None,
    }
}

async fn route(api: Arc<dyn RepApi>, admin: bool, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if admin {
        return match (&method, path.as_str()) {
            (&Method::GET, "/ping") => reply(StatusCode::OK, Vec::new(), false),
            (&Method::POST, "/evacuate") => {
                api.evacuate();
                json_reply(StatusCode::ACCEPTED, &serde_json::json!({ "ping_path": "/ping" }))
            }
            _ => reply(StatusCode::NOT_FOUND, Vec::new(), false),
        };
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/state") => {
            let state = api.state().await;
            let status = if api.healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json_reply(status, &state)
        }
        (&Method::POST, "/work") => match body_json::<Work>(req).await {
            Ok(work) => match api.perform(work).await {
                Ok(failed) => json_reply(StatusCode::OK, &failed),
                Err(e) => error_reply(&e),
            },
            Err(e) => error_reply(&e),
        },
        (&Method::GET, "/container_metrics") => json_reply(StatusCode::OK, &api.container_metrics().await),
        (&Method::POST, p) if p.starts_with("/v1/tasks/") && p.ends_with("/cancel") => {
            let guid = &p["/v1/tasks/".len()..p.len() - "/cancel".len()];
            if guid.is_empty() || guid.contains('/') {
                return error_reply(&ApiError::BadRequest("task_guid missing from request".into()));
            }
            api.cancel_task(guid);
            reply(StatusCode::ACCEPTED, Vec::new(), false)
        }
        (m, p) => match lrp_path(p) {
            Some((pg, ig, true)) if m == Method::POST && p.starts_with("/v1/") => match api.stop_lrp(pg, ig) {
                Ok(()) => reply(StatusCode::ACCEPTED, Vec::new(), false),
                Err(e) => error_reply(&e),
            },
            Some((pg, ig, false)) if m == Method::PUT => {
                let (pg, ig) = (pg.to_string(), ig.to_string());
                match body_json::<LrpUpdate>(req).await {
                    Ok(mut u) => {
                        // The path names the instance; the body adds routes and tags.
                        u.process_guid = pg;
                        u.instance_guid = ig;
                        match api.update_lrp(u) {
                            Ok(()) => reply(StatusCode::ACCEPTED, Vec::new(), false),
                            Err(e) => error_reply(&e),
                        }
                    }
                    Err(e) => error_reply(&e),
                }
            }
            _ => reply(StatusCode::NOT_FOUND, Vec::new(), false),
        },
    }
}

/// Serves the rep API (or, with `admin`, the admin API) on `listener` with
/// mutual TLS, until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, api: Arc<dyn RepApi>, admin: bool) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "rep API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        let (acceptor, api) = (acceptor.clone(), api.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "rep API: TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(route(api, admin, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lrp_paths() {
        assert_eq!(lrp_path("/v1/lrps/pg/instances/ig/stop"), Some(("pg", "ig", true)));
        assert_eq!(lrp_path("/v2/lrps/pg/instances/ig"), Some(("pg", "ig", false)));
        assert_eq!(lrp_path("/v1/lrps//instances/ig"), None);
        assert_eq!(lrp_path("/v1/lrps/pg/instances/ig/stop/more"), None);
        assert_eq!(lrp_path("/v1/lrps/pg/other/ig"), None);
    }
}
