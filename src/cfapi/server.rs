//! The CF API's listener: its routes, plain HTTP or HTTPS with a self-signed
//! certificate kept in the depot, and the unauthenticated documents (root,
//! `/v3`, `/v3/info`, UAA's `/login` and `/oauth/token`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use super::error::CfError;
use super::store::CfStore;
use super::uaa::Uaa;
use super::{Base, CfApi, Ctx, apps, buildpacks, logcache, manifest, orgs, packages, routes, services, tasks};
use crate::apps::AppLayer;

pub struct CfApiConfig {
    /// Where the API keeps its store, signing key, password and certificate.
    pub dir: PathBuf,
    pub admin_password: Option<String>,
    pub tls: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CfApiStartError {
    #[error(transparent)]
    Uaa(#[from] super::uaa::UaaError),
    #[error(transparent)]
    Store(#[from] CfError),
    #[error("the CF API's TLS certificate: {0}")]
    Tls(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

type Api = State<Arc<CfApi>>;

fn routes() -> Router<Arc<CfApi>> {
    Router::new()
        .route("/", get(|State(api): Api, Base(b): Base| async move { axum::Json(api.root(&b)) }))
        .route("/v3", get(|State(api): Api, Base(b): Base| async move { axum::Json(api.v3_root(&b)) }))
        .route("/v3/info", get(|State(api): Api, Base(b): Base| async move { axum::Json(api.info(&b)) }))
        .route("/login", get(|State(api): Api| async move { axum::Json(api.uaa.login_info()) }))
        .route("/oauth/token", post(token))
        .route("/oauth/authorize", get(authorize))
        .merge(orgs::routes())
        .merge(apps::routes())
        .merge(packages::routes())
        .merge(manifest::routes())
        .merge(services::routes())
        .merge(routes::routes())
        .merge(tasks::routes())
        .merge(buildpacks::routes())
        .merge(logcache::routes())
        .fallback(|| async { CfError::UnknownRequest })
}

async fn token(State(api): Api, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let basic = headers.get("authorization").and_then(|h| h.to_str().ok());
    let (status, json) = api.uaa.token(&form, basic);
    (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), axum::Json(json)).into_response()
}

/// `cf ssh`'s one-time code: UAA answers the authorization-code request of
/// the `ssh-proxy` client with a redirect carrying `code=`.
async fn authorize(
    State(api): Api,
    ctx: Ctx,
    q: axum::extract::Query<super::json::Query>,
) -> Result<Response, CfError> {
    if q.get("client_id").map(String::as_str) != Some("ssh-proxy")
        || q.get("response_type").map(String::as_str) != Some("code")
    {
        return Err(CfError::unprocessable("only client_id=ssh-proxy with response_type=code is served"));
    }
    let code = api.apps.ssh_code()?;
    tracing::info!(user = %ctx.user.user_name, "ssh code issued");
    let location = format!("{}/login?code={code}", ctx.base);
    Ok((StatusCode::FOUND, [("location", location)]).into_response())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CfApiStartError + '_ {
    move |source| CfApiStartError::Io { path: path.display().to_string(), source }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made once.
fn tls_config(dir: &Path) -> Result<Arc<rustls::ServerConfig>, CfApiStartError> {
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    if !cert_path.exists() || !key_path.exists() {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| CfApiStartError::Tls(e.to_string()))?;
        std::fs::write(&key_path, c.signing_key.serialize_pem()).map_err(io(&key_path))?;
        std::fs::write(&cert_path, c.cert.pem()).map_err(io(&cert_path))?;
    }
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_err = |e: &dyn std::fmt::Display| CfApiStartError::Tls(e.to_string());
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_err(&format!("{}: {e}", cert_path.display())))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| tls_err(&format!("{}: {e}", key_path.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(&e))?;
    Ok(Arc::new(config))
}

/// Builds the API over the app layer and serves it on `listener` until the
/// process ends. Returns the admin password (for the banner).
pub async fn serve(
    apps: Arc<AppLayer>,
    cfg: CfApiConfig,
    listener: tokio::net::TcpListener,
) -> Result<String, CfApiStartError> {
    std::fs::create_dir_all(&cfg.dir).map_err(io(&cfg.dir))?;
    let addr = listener.local_addr().map_err(io(&cfg.dir))?;
    let scheme = if cfg.tls { "https" } else { "http" };
    let (uaa, password) = Uaa::open(&cfg.dir, cfg.admin_password.as_deref(), format!("{scheme}://{addr}"))?;
    apps.set_cf_api(format!("{scheme}://{addr}"));
    let store = CfStore::open(&cfg.dir.join("cfapi.db"))?;
    let resources = cfg.dir.join("resources");
    std::fs::create_dir_all(&resources).map_err(io(&resources))?;
    let tls = if cfg.tls { Some(tokio_rustls::TlsAcceptor::from(tls_config(&cfg.dir)?)) } else { None };
    let api = Arc::new(CfApi { apps, uaa, store, resources, jobs: Mutex::new(Default::default()), tls: cfg.tls });
    orgs::ensure_local(&api)?;
    packages::fail_interrupted_builds(&api)?;
    let app: Router = routes().with_state(api);
    tokio::spawn(accept(listener, app, tls));
    Ok(password)
}

async fn accept(listener: tokio::net::TcpListener, app: Router, tls: Option<tokio_rustls::TlsAcceptor>) {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "CF API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = hyper::server::conn::http1::Builder::new();
            let r = match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(s) => builder.serve_connection(TokioIo::new(s), svc).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "CF API TLS handshake failed");
                        return;
                    }
                },
                None => builder.serve_connection(TokioIo::new(tcp), svc).await,
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "CF API connection ended");
            }
        });
    }
}

/// Answers a JSON value with a status.
pub fn reply(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}
