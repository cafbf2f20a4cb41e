//! celld's gRPC listener (`--grpc-listen`): the cell's services (Stager,
//! Cell, Apps) on celld-transport's shared plumbing, which this module
//! re-exports with the generated code (`pb`) under the names tests know.

use std::sync::Arc;

pub use celld_transport::grpc::{GrpcError, bind, endpoint, router, router_with_tls, run, set_client_tls};

use crate::executor::Executor;
use crate::staging::stager::Stager;

pub use celld_proto as pb;

/// The cell's listener (`--grpc-listen`): binds `addr` (so a taken port fails
/// start-up) and returns the server future. Serves Stager and Cell, with
/// mutual TLS if `tls` is set.
pub async fn serve(
    addr: &str,
    tls: Option<&celld_transport::tls::TlsMaterial>,
    stager: Arc<Stager>,
    executor: Arc<Executor>,
    apps: Option<Arc<crate::apps::AppLayer>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), GrpcError>> + Send>>, GrpcError> {
    let listener = bind(addr).await?;
    let router = router_with_tls(tls)?
        .add_service(pb::stager_server::StagerServer::new(crate::staging::service::StagerService::new(stager)))
        .add_service(pb::cell_server::CellServer::new(crate::rep::service::CellService::new(executor)))
        .add_optional_service(
            apps.map(|a| pb::apps_server::AppsServer::new(crate::apps::service::AppsService::new(a))),
        );
    Ok(Box::pin(run(router, listener, shutdown)))
}
