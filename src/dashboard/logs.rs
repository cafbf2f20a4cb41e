//! An app's log lines as server-sent events: the kept history first, then
//! every new line as it is emitted. A page that falls too far behind is told
//! how many lines it lost instead of holding the hub back.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::stream::{self, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use super::{Dashboard, DashboardError, views};
use celld_proto as pb;

/// History lines sent before the live ones (the page keeps about as many).
const HISTORY: usize = 500;

fn line(e: &pb::LogEnvelope) -> Event {
    Event::default().data(views::log_line(e).to_string())
}

pub async fn stream(
    State(d): State<Arc<Dashboard>>,
    Path(guid): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, DashboardError> {
    let (history, rx) = d.source.logs(&guid)?;
    let skip = history.len().saturating_sub(HISTORY);
    let past = stream::iter(history.into_iter().skip(skip).map(|e| Ok(line(&e))));
    let live = stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(e) => line(&e),
            Err(RecvError::Lagged(n)) => Event::default().event("dropped").data(n.to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Ok(Sse::new(past.chain(live)).keep_alive(KeepAlive::default()))
}
