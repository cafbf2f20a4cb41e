//! log-cache's read API over the app layer's kept logs.

use std::sync::Arc;

use axum::Router;

use super::CfApi;

pub fn routes() -> Router<Arc<CfApi>> {
    Router::new()
}
