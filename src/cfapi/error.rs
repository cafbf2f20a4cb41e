//! The CF API's errors and their one mapping to Cloud Controller's error body
//! (`{"errors":[{"code","title","detail"}]}`) and HTTP status. The codes and
//! titles are CC's, because the cf CLI acts on them (1000 makes it refresh its
//! token, 10010 is "not found").

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::apps::AppsError;

#[derive(Debug, thiserror::Error)]
pub enum CfError {
    /// A token that is not one of ours, was forged, or has expired.
    #[error("Invalid Auth Token")]
    InvalidAuthToken,
    /// No token at all.
    #[error("Authentication error")]
    NotAuthenticated,
    /// `what` is CC's resource word: "App", "Space", "Package"…
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("Unknown request")]
    UnknownRequest,
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Uniqueness(String),
    #[error("Request invalid due to parse error: {0}")]
    MessageParse(String),
    #[error("The query parameter is invalid: {0}")]
    BadQuery(String),
    #[error("An unknown error occurred: {0}")]
    Server(String),
    #[error("{0}")]
    Unavailable(String),
    /// log-cache's own errors, answered in its gateway's shape.
    #[error(transparent)]
    LogCache(crate::apps::LogCacheError),
}

impl CfError {
    fn parts(&self) -> (StatusCode, u32, &'static str) {
        use CfError::*;
        match self {
            InvalidAuthToken => (StatusCode::UNAUTHORIZED, 1000, "CF-InvalidAuthToken"),
            NotAuthenticated => (StatusCode::UNAUTHORIZED, 10002, "CF-NotAuthenticated"),
            NotFound(_) => (StatusCode::NOT_FOUND, 10010, "CF-ResourceNotFound"),
            UnknownRequest => (StatusCode::NOT_FOUND, 10000, "CF-NotFound"),
            Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, 10008, "CF-UnprocessableEntity"),
            Uniqueness(_) => (StatusCode::UNPROCESSABLE_ENTITY, 10016, "CF-UniquenessError"),
            MessageParse(_) => (StatusCode::BAD_REQUEST, 1001, "CF-MessageParseError"),
            BadQuery(_) => (StatusCode::BAD_REQUEST, 10005, "CF-BadQueryParameter"),
            Server(_) => (StatusCode::INTERNAL_SERVER_ERROR, 10001, "UnknownError"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, 10015, "CF-ServiceUnavailable"),
            LogCache(e) => (StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST), 0, ""),
        }
    }

    /// The `errors[]` entry, also what a FAILED job carries.
    pub fn body(&self) -> serde_json::Value {
        let (_, code, title) = self.parts();
        json!({ "code": code, "title": title, "detail": self.to_string() })
    }

    pub fn unprocessable(msg: impl Into<String>) -> Self {
        Self::Unprocessable(msg.into())
    }
}

impl IntoResponse for CfError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        if let CfError::LogCache(e) = &self {
            return (status, axum::Json(e.body())).into_response();
        }
        if status.is_server_error() {
            tracing::warn!(error = %self, "CF API request failed");
        }
        (status, axum::Json(json!({ "errors": [self.body()] }))).into_response()
    }
}

impl From<AppsError> for CfError {
    fn from(e: AppsError) -> Self {
        match e {
            AppsError::InvalidArgument(m) => CfError::Unprocessable(m),
            AppsError::NotFound(_) => CfError::NotFound("App"),
            AppsError::AlreadyExists(m) => CfError::Uniqueness(m),
            AppsError::FailedPrecondition(m) => CfError::Unprocessable(m),
            AppsError::Upstream(s) if s.code() == tonic::Code::Unavailable => CfError::Unavailable(s.message().into()),
            other => CfError::Server(other.to_string()),
        }
    }
}

impl From<tonic::Status> for CfError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                CfError::Unprocessable(s.message().into())
            }
            tonic::Code::NotFound => CfError::Unprocessable(s.message().into()),
            tonic::Code::AlreadyExists => CfError::Uniqueness(s.message().into()),
            tonic::Code::Unavailable => CfError::Unavailable(s.message().into()),
            _ => CfError::Server(s.message().into()),
        }
    }
}

pub type CfResult<T> = Result<T, CfError>;
