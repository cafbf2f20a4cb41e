//! Stream-in and stream-out (`PUT`/`GET /containers/:handle/files`): tar
//! streams relayed between the client and a child of the container's init.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;

use super::{Body, Server, empty_ok};
use crate::gardener::GardenError;
use celld_runtime::initproto::{self as proto, Request as InitRequest};

/// Garden's prefix of every stream-in failure; clients match on it.
const STREAM_IN_ERROR: &str = "error streaming in: ";

/// A response body read from a container's init (stream-out tar bytes).
struct InitBody {
    conn: UnixStream,
    _guard: crate::gardener::StreamGuard,
}

impl hyper::body::Body for InitBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut self.conn).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                buf.truncate(n);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A stream-in failure as Garden words it; an unknown container keeps its type.
fn stream_in_error(handle: &str, e: GardenError) -> GardenError {
    match e {
        GardenError::ContainerNotFound(_) => e,
        e => GardenError::StreamIn(handle.to_string(), format!("{STREAM_IN_ERROR}{e}")),
    }
}

impl Server {
    pub(super) async fn stream_in(
        &self,
        handle: &str,
        query: &BTreeMap<String, String>,
        req: Request<Incoming>,
    ) -> Result<(), GardenError> {
        let user = query.get("user").cloned().unwrap_or_default();
        let destination = query.get("destination").cloned().unwrap_or_default();
        if destination.is_empty() {
            return Err(GardenError::BadRequest("stream in needs a destination path".into()));
        }
        let _guard = self.gardener.hold(handle)?;
        let conn = self
            .gardener
            .stream(handle, InitRequest::StreamIn { user, destination })
            .await
            .map_err(|e| stream_in_error(handle, e))?;
        let (mut r, mut w) = conn.into_split();
        let mut body = req.into_body();
        let mut send_err = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        if let Err(e) = w.write_all(d).await {
                            send_err = Some(e);
                            break;
                        }
                    }
                }
                Err(e) => {
                    send_err = Some(std::io::Error::other(e));
                    break;
                }
            }
        }
        let _ = w.shutdown().await;
        // init's verdict, even when the body broke off: a truncated tar is its error.
        let cause = match proto::client::read_reply(&mut r).await {
            Ok(reply) => match (reply.error, send_err) {
                (Some((_, msg)), _) => msg,
                (None, Some(e)) => e.to_string(),
                (None, None) => return Ok(()),
            },
            Err(e) => e.to_string(),
        };
        Err(GardenError::StreamIn(handle.to_string(), format!("{STREAM_IN_ERROR}{cause}")))
    }

    pub(super) async fn stream_out(
        &self,
        handle: &str,
        query: &BTreeMap<String, String>,
    ) -> Result<Response<Body>, GardenError> {
        let user = query.get("user").cloned().unwrap_or_default();
        let source = query.get("source").cloned().unwrap_or_default();
        if source.is_empty() {
            return Err(GardenError::BadRequest("stream out needs a source path".into()));
        }
        let guard = self.gardener.hold(handle)?;
        let conn = self.gardener.stream(handle, InitRequest::StreamOut { user, source }).await?;
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "application/x-tar")
            .body(InitBody { conn, _guard: guard }.boxed())
            .unwrap_or_else(|_| empty_ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_in_errors_carry_gardens_prefix() {
        let e = stream_in_error("h", GardenError::BadRequest("user not found: bob".into()));
        assert_eq!(e.to_string(), "error streaming in: user not found: bob");
        assert_eq!(e.body().handle, "h");
        let missing = stream_in_error("h", GardenError::ContainerNotFound("h".into()));
        assert_eq!(missing.status(), 404);
    }
}
