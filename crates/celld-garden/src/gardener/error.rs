//! Garden's errors and the one place they become HTTP statuses and bodies.

use celld_network::NetworkError;
use celld_runtime::RuntimeError;
use celld_runtime::initproto::ErrorKind;
use garden_api::types::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum GardenError {
    #[error("unknown handle: {0}")]
    ContainerNotFound(String),
    #[error("unknown process: {1}")]
    ProcessNotFound(String, String),
    #[error("{1}")]
    ExecutableNotFound(String, String),
    #[error("Handle '{0}' already in use")]
    HandleInUse(String),
    #[error("max containers reached")]
    MaxContainers,
    #[error("container already being destroyed")]
    BeingDestroyed(String),
    #[error("{0}")]
    BadRequest(String),
    /// A failed stream-in of the container, its message already worded as Garden's.
    #[error("{1}")]
    StreamIn(String, String),
    #[error("{1}")]
    Runtime(String, RuntimeError),
    #[error("{1}")]
    Network(String, NetworkError),
    /// An image's config could not be fetched (no container involved).
    #[error(transparent)]
    Image(#[from] celld_image::ImageError),
}

impl GardenError {
    /// Garden answers 404 for unknown containers and processes, 500 for the rest
    /// (malformed requests included, as Garden's server does).
    pub fn status(&self) -> u16 {
        match self {
            Self::ContainerNotFound(_) | Self::ProcessNotFound(..) => 404,
            _ => 500,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let (kind, handle, process_id) = match self {
            Self::ContainerNotFound(h) => ("ContainerNotFoundError", h.as_str(), ""),
            Self::ProcessNotFound(h, p) => ("ProcessNotFoundError", h.as_str(), p.as_str()),
            Self::ExecutableNotFound(h, _) => ("ExecutableNotFoundError", h.as_str(), ""),
            Self::HandleInUse(h) | Self::BeingDestroyed(h) => ("", h.as_str(), ""),
            Self::Runtime(h, _) | Self::Network(h, _) | Self::StreamIn(h, _) => ("", h.as_str(), ""),
            Self::MaxContainers | Self::BadRequest(_) | Self::Image(_) => ("", "", ""),
        };
        ErrorBody {
            kind: kind.into(),
            message: self.to_string(),
            handle: handle.into(),
            process_id: process_id.into(),
            binary: String::new(),
        }
    }

    pub fn network(handle: &str, e: NetworkError) -> Self {
        Self::Network(handle.into(), e)
    }

    /// Maps a runtime failure of container `handle` to Garden's error types.
    pub fn runtime(handle: &str, e: RuntimeError) -> Self {
        match e {
            RuntimeError::Process(ErrorKind::ExecutableNotFound, msg) => Self::ExecutableNotFound(handle.into(), msg),
            RuntimeError::Process(ErrorKind::ProcessNotFound, msg) => {
                let id = msg.strip_prefix("unknown process: ").unwrap_or(&msg).to_string();
                Self::ProcessNotFound(handle.into(), id)
            }
            e => Self::Runtime(handle.into(), e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_404_with_garden_type() {
        let e = GardenError::ContainerNotFound("nope".into());
        assert_eq!(e.status(), 404);
        let b = serde_json::to_string(&e.body()).unwrap();
        assert_eq!(
            b,
            r#"{"Type":"ContainerNotFoundError","Message":"unknown handle: nope","Handle":"nope","ProcessID":"","Binary":""}"#
        );
    }

    #[test]
    fn duplicate_handle_message() {
        let e = GardenError::HandleInUse("x".into());
        assert_eq!(e.status(), 500);
        assert_eq!(e.body().message, "Handle 'x' already in use");
    }

    #[test]
    fn executable_not_found_maps() {
        let e = GardenError::runtime(
            "h",
            RuntimeError::Process(
                ErrorKind::ExecutableNotFound,
                "exec: \"x\": executable file not found in $PATH".into(),
            ),
        );
        assert_eq!(e.body().kind, "ExecutableNotFoundError");
    }
}
