//! The client's one error type: the connection failed, the server spoke
//! something that is not Garden's protocol, or Garden answered with an error
//! body (whose `Type` callers match on, as Go's clients do).

use crate::types::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("{}", body.message)]
    Garden { status: u16, body: ErrorBody },
}

impl ClientError {
    /// Garden's error type, e.g. `ContainerNotFoundError`.
    pub fn garden_type(&self) -> Option<&str> {
        match self {
            ClientError::Garden { body, .. } => Some(&body.kind),
            _ => None,
        }
    }
}

pub(super) fn protocol(msg: impl Into<String>) -> ClientError {
    ClientError::Protocol(msg.into())
}
