//! What every people command (`cli::apps`, `cli::ssh`) shares: where celld's
//! Apps API is and how to reach it (`Ctx`), how a command fails (`Fail`), and
//! a gRPC status as the one line people read. Both command trees use it, so
//! neither has to import the other.

use std::time::Duration;

use tonic::transport::Channel;

use crate::render::Style;
use celld_proto as pb;
use celld_proto::apps_client::AppsClient;

/// Why a command failed. Both exit 1.
#[derive(Debug, PartialEq, Eq)]
pub enum Fail {
    /// Bad input, nothing done: printed as `error: …`.
    Usage(String),
    /// The server refused, could not be reached, or an operation failed:
    /// printed after `FAILED`, as `cf` does.
    Failed(String),
}

impl Fail {
    pub fn report(&self) {
        match self {
            Self::Usage(m) => eprintln!("error: {m}"),
            Self::Failed(m) => eprintln!("FAILED\n{m}"),
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Failed(m) => f.write_str(m),
        }
    }
}

fn unreachable(api: &str) -> String {
    format!("cannot reach celld at {api}: is `celld --local` running? (set --api or `cellctl target`)")
}

/// A gRPC status as one readable line. Transport failures (they carry a
/// source error) mean celld is not there; the server's own refusals carry a
/// message meant for people, printed as is.
pub fn status_message(api: &str, s: &tonic::Status) -> String {
    use tonic::Code;
    let msg = s.message();
    let transport = std::error::Error::source(s).is_some();
    match s.code() {
        Code::Unavailable if transport || msg.is_empty() => unreachable(api),
        // What tonic answers for a service the server does not have.
        Code::Unimplemented if msg.is_empty() => {
            format!("celld at {api} does not serve the Apps API: is it running with --local?")
        }
        Code::DeadlineExceeded => format!("celld at {api} did not answer in time: {msg}"),
        Code::Internal | Code::Unknown | Code::DataLoss => format!("celld failed: {msg}"),
        _ if msg.is_empty() => format!("celld refused: {}", s.code().description()),
        _ => msg.to_string(),
    }
}

/// Where and how the people commands run.
pub struct Ctx {
    pub api: String,
    pub space: String,
    pub style: Style,
}

pub(super) type Client = AppsClient<Channel>;

/// The gRPC endpoint of an --api value (HOST:PORT, or a URL).
pub fn endpoint(api: &str) -> Result<tonic::transport::Endpoint, String> {
    celld_transport::grpc::endpoint(api).map_err(|e| format!("--api {api:?}: {e} (use HOST:PORT)"))
}

impl Ctx {
    pub async fn connect(&self) -> Result<Client, Fail> {
        let endpoint = endpoint(&self.api).map_err(Fail::Usage)?.connect_timeout(Duration::from_secs(5));
        let ch = endpoint.connect().await.map_err(|_| Fail::Failed(unreachable(&self.api)))?;
        Ok(AppsClient::new(ch).max_decoding_message_size(16 << 20))
    }

    pub(super) fn fail(&self, s: tonic::Status) -> Fail {
        Fail::Failed(status_message(&self.api, &s))
    }

    pub(super) fn app_ref(&self, name: &str) -> pb::AppRef {
        pb::AppRef { space: self.space.clone(), name: name.to_string() }
    }
}

pub(super) async fn get_app(ctx: &Ctx, c: &mut Client, name: &str) -> Result<pb::AppDetail, Fail> {
    c.get_app(ctx.app_ref(name)).await.map(tonic::Response::into_inner).map_err(|s| ctx.fail(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_one_line() {
        let api = "127.0.0.1:1801";
        assert_eq!(status_message(api, &tonic::Status::not_found("app 'x' not found")), "app 'x' not found");
        assert_eq!(
            status_message(api, &tonic::Status::unavailable("")),
            "cannot reach celld at 127.0.0.1:1801: is `celld --local` running? (set --api or `cellctl target`)"
        );
        let mut transport = tonic::Status::unavailable("tcp connect error");
        transport.set_source(std::sync::Arc::new(std::io::Error::other("connection refused")));
        assert!(status_message(api, &transport).starts_with("cannot reach celld"));
        assert_eq!(status_message(api, &tonic::Status::unavailable("no cell has room")), "no cell has room");
        assert!(status_message(api, &tonic::Status::unimplemented("")).contains("does not serve the Apps API"));
        assert_eq!(
            status_message(api, &tonic::Status::resource_exhausted("package is 2 GB; the cell takes at most 1024 MB")),
            "package is 2 GB; the cell takes at most 1024 MB"
        );
        assert_eq!(status_message(api, &tonic::Status::internal("disk full")), "celld failed: disk full");
    }
}
