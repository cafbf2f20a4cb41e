//! The cell's presence in Locket, held as Diego's rep holds it: a lock whose
//! key is the cell id and whose owner is a fresh UUID per start, type
//! "presence", value the CellPresence JSON; a 15 s TTL refreshed every 5 s;
//! released on stop. After a restart the previous owner's lock collides until
//! its TTL runs out, so a collision is retried quietly (logged once).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use celld_proto::locket as pb;
use celld_proto::locket::locket_client::LocketClient;
use tonic::transport::Channel;

use crate::tls::TlsIdentity;

/// Locket's type name and code of a presence.
pub const PRESENCE_TYPE: &str = "presence";
/// Locket's answer to a lock someone else holds (gRPC ALREADY_EXISTS).
pub const LOCK_COLLISION: &str = "lock-collision";

#[derive(Debug, thiserror::Error)]
pub enum LocketError {
    #[error("Locket address {addr:?}: {why}")]
    BadAddress { addr: String, why: String },
    #[error("Locket {call}: {}: {}", status.code(), status.message())]
    Rpc { call: &'static str, status: tonic::Status },
    #[error("Locket {call}: no answer within {0:?}", timeout)]
    Timeout { call: &'static str, timeout: Duration },
}

impl LocketError {
    /// Another owner holds the lock.
    pub fn is_collision(&self) -> bool {
        matches!(self, LocketError::Rpc { status, .. }
            if status.code() == tonic::Code::AlreadyExists || status.message() == LOCK_COLLISION)
    }
}

/// A lazily connecting gRPC channel to Locket with the client identity.
pub fn channel(address: &str, tls: &TlsIdentity) -> Result<Channel, LocketError> {
    let bad = |why: String| LocketError::BadAddress { addr: address.to_string(), why };
    let bare = address.split_once("://").map_or(address, |(_, rest)| rest);
    if bare.is_empty() {
        return Err(bad("empty".into()));
    }
    let ep = tonic::transport::Endpoint::from_shared(format!("https://{bare}"))
        .map_err(|e| bad(e.to_string()))?
        .tls_config(tls.tonic_client())
        .map_err(|e| bad(format!("TLS: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    Ok(ep.connect_lazy())
}

#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Locket's `host:port` (e.g. `locket.service.cf.internal:8891`).
    pub address: String,
    pub cell_id: String,
    pub ttl: Duration,
    pub retry_interval: Duration,
}

impl PresenceConfig {
    /// The rep's defaults: TTL 15 s, refreshed every 5 s.
    pub fn new(address: &str, cell_id: &str) -> Self {
        Self {
            address: address.into(),
            cell_id: cell_id.into(),
            ttl: Duration::from_secs(15),
            retry_interval: Duration::from_secs(5),
        }
    }
}

/// The held (or sought) presence; `release()` ends it.
pub struct Presence {
    owner: String,
    resource_key: String,
    held: Arc<AtomicBool>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    client: LocketClient<Channel>,
    timeout: Duration,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").field("cell_id", &self.resource_key).field("owner", &self.owner).finish()
    }
}

/// Locket's lock call as the presence makes it.
fn lock_request(cell_id: &str, owner: &str, value: String, ttl: Duration) -> pb::LockRequest {
    pb::LockRequest {
        resource: Some(pb::Resource {
            key: cell_id.into(),
            owner: owner.into(),
            value,
            r#type: PRESENCE_TYPE.into(),
            type_code: pb::TypeCode::Presence as i32,
        }),
        ttl_in_seconds: ttl.as_secs().max(1) as i64,
    }
}

async fn lock_once(
    client: &mut LocketClient<Channel>,
    req: pb::LockRequest,
    timeout: Duration,
) -> Result<(), LocketError> {
    match tokio::time::timeout(timeout, client.lock(req)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(LocketError::Rpc { call: "Lock", status }),
        Err(_) => Err(LocketError::Timeout { call: "Lock", timeout }),
    }
}

impl Presence {
    /// Starts seeking and then refreshing the presence in the background;
    /// `value` is called for every lock call (the CellPresence JSON, so a
    /// change of capacity reaches Locket on the next refresh).
    pub fn start(
        config: PresenceConfig,
        tls: &TlsIdentity,
        value: impl Fn() -> String + Send + Sync + 'static,
    ) -> Result<Self, LocketError> {
        // A fresh version 4 UUID per start, as the rep makes its owner.
        let owner = celld_base::guid::new_guid();
        let client = LocketClient::new(channel(&config.address, tls)?);
        let held = Arc::new(AtomicBool::new(false));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        // A lock call waits at most a TTL (as the rep's does): longer and the
        // lock could lapse while it is still in flight.
        let timeout = config.ttl;
        let task = {
            let (mut client, owner, held, cell_id) =
                (client.clone(), owner.clone(), held.clone(), config.cell_id.clone());
            tokio::spawn(async move {
                let mut told_collision = false;
                let mut told_error = false;
                loop {
                    let req = lock_request(&cell_id, &owner, value(), config.ttl);
                    match lock_once(&mut client, req, timeout).await {
                        Ok(()) => {
                            if !held.swap(true, Ordering::SeqCst) {
                                tracing::info!(cell_id = %cell_id, owner = %owner, "presence held in Locket");
                            }
                            told_collision = false;
                            told_error = false;
                        }
                        Err(e) => {
                            let was_held = held.swap(false, Ordering::SeqCst);
                            if e.is_collision() {
                                if !told_collision {
                                    tracing::warn!(cell_id = %cell_id, owner = %owner,
                                        "another owner holds this cell's presence (a previous run?); retrying until its TTL runs out");
                                    told_collision = true;
                                }
                            } else if was_held || !told_error {
                                tracing::warn!(cell_id = %cell_id, error = %e, lost = was_held, "cannot hold the presence in Locket; retrying");
                                told_error = true;
                            }
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(config.retry_interval) => {}
                        _ = stopped.changed() => return,
                    }
                }
            })
        };
        Ok(Self { owner, resource_key: config.cell_id, held, stop, task, client, timeout })
    }

    /// This run's owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether the last lock call succeeded.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Stops refreshing and releases the presence, so BBS sees the cell gone
    /// at once rather than after the TTL.
    pub async fn release(mut self) -> Result<(), LocketError> {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
        let req = pb::ReleaseRequest {
            resource: Some(pb::Resource {
                key: self.resource_key.clone(),
                owner: self.owner.clone(),
                value: String::new(),
                r#type: PRESENCE_TYPE.into(),
                type_code: pb::TypeCode::Presence as i32,
            }),
        };
        self.held.store(false, Ordering::SeqCst);
        match tokio::time::timeout(self.timeout, self.client.release(req)).await {
            Ok(Ok(_)) => {
                tracing::info!(cell_id = %self.resource_key, owner = %self.owner, "presence released");
                Ok(())
            }
            Ok(Err(status)) => Err(LocketError::Rpc { call: "Release", status }),
            Err(_) => Err(LocketError::Timeout { call: "Release", timeout: self.timeout }),
        }
    }
}

impl Drop for Presence {
    // Dropped without release(): stop refreshing; the lock lapses at its TTL.
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_request_is_a_presence() {
        let r = lock_request("cell-1", "o", "{}".into(), Duration::from_secs(15));
        let res = r.resource.unwrap();
        assert_eq!((res.key.as_str(), res.r#type.as_str()), ("cell-1", "presence"));
        assert_eq!(res.type_code, 2);
        assert_eq!(r.ttl_in_seconds, 15);
    }

    #[test]
    fn collision_is_recognised() {
        let e = LocketError::Rpc { call: "Lock", status: tonic::Status::already_exists(LOCK_COLLISION) };
        assert!(e.is_collision());
        let e = LocketError::Rpc { call: "Lock", status: tonic::Status::invalid_argument("invalid-ttl") };
        assert!(!e.is_collision());
    }
}
