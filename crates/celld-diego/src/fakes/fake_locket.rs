//! A fake Locket on a real socket: tonic over mutual TLS, Locket's rules
//! (lock-collision for another owner's live lock, invalid-ttl, invalid-owner,
//! invalid-type, resource-not-found) with real TTL expiry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use celld_proto::locket as pb;
use celld_proto::locket::locket_server::{Locket, LocketServer};
use tonic::{Request, Response, Status};

use super::FakeError;

#[derive(Default)]
struct Table {
    locks: HashMap<String, (pb::Resource, Instant)>,
}

impl Table {
    fn live(&mut self, key: &str) -> Option<&pb::Resource> {
        let now = Instant::now();
        self.locks.retain(|_, (_, expires)| *expires > now);
        self.locks.get(key).map(|(r, _)| r)
    }
}

#[derive(Clone, Default)]
struct Service {
    table: Arc<Mutex<Table>>,
}

fn lock(t: &Mutex<Table>) -> MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Locket's `validate`: a known type code, and a `type` that agrees with it.
fn type_code(r#type: &str, code: i32) -> Result<pb::TypeCode, Status> {
    let invalid = || Status::not_found("invalid-type");
    let code = pb::TypeCode::try_from(code).map_err(|_| invalid())?;
    match (code, r#type) {
        (pb::TypeCode::Unknown, "presence") => Ok(pb::TypeCode::Presence),
        (pb::TypeCode::Unknown, "lock") => Ok(pb::TypeCode::Lock),
        (pb::TypeCode::Unknown, _) => Err(invalid()),
        (pb::TypeCode::Lock, "" | "lock") => Ok(code),
        (pb::TypeCode::Presence, "" | "presence") => Ok(code),
        _ => Err(invalid()),
    }
}

#[tonic::async_trait]
impl Locket for Service {
    async fn lock(&self, req: Request<pb::LockRequest>) -> Result<Response<pb::LockResponse>, Status> {
        let req = req.into_inner();
        let mut res = req.resource.unwrap_or_default();
        res.type_code = type_code(&res.r#type, res.type_code)? as i32;
        if req.ttl_in_seconds <= 0 {
            return Err(Status::invalid_argument("invalid-ttl"));
        }
        if res.owner.is_empty() {
            return Err(Status::invalid_argument("invalid-owner"));
        }
        let mut t = lock(&self.table);
        if t.live(&res.key).is_some_and(|held| held.owner != res.owner) {
            return Err(Status::already_exists("lock-collision"));
        }
        let expires = Instant::now() + Duration::from_secs(req.ttl_in_seconds as u64);
        t.locks.insert(res.key.clone(), (res, expires));
        Ok(Response::new(pb::LockResponse {}))
    }

    async fn fetch(&self, req: Request<pb::FetchRequest>) -> Result<Response<pb::FetchResponse>, Status> {
        let key = req.into_inner().key;
        let mut t = lock(&self.table);
        let r = t.live(&key).cloned().ok_or_else(|| Status::not_found("resource-not-found"))?;
        Ok(Response::new(pb::FetchResponse { resource: Some(r) }))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let res = req.into_inner().resource.unwrap_or_default();
        let mut t = lock(&self.table);
        match t.live(&res.key) {
            None => Err(Status::not_found("resource-not-found")),
            Some(held) if held.owner != res.owner => Err(Status::already_exists("lock-collision")),
            Some(_) => {
                t.locks.remove(&res.key);
                Ok(Response::new(pb::ReleaseResponse {}))
            }
        }
    }

    async fn fetch_all(&self, req: Request<pb::FetchAllRequest>) -> Result<Response<pb::FetchAllResponse>, Status> {
        let req = req.into_inner();
        let code = type_code(&req.r#type, req.type_code)? as i32;
        let mut t = lock(&self.table);
        let _ = t.live("");
        let resources = t.locks.values().filter(|(r, _)| r.type_code == code).map(|(r, _)| r.clone()).collect();
        Ok(Response::new(pb::FetchAllResponse { resources }))
    }
}

pub struct FakeLocket {
    pub addr: SocketAddr,
    service: Service,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeLocket {
    /// Serves on 127.0.0.1 (a free port), requiring client certificates.
    pub async fn start(tls: tonic::transport::ServerTlsConfig) -> Result<Self, FakeError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(FakeError::Listen)?;
        let addr = listener.local_addr().map_err(FakeError::Listen)?;
        let service = Service::default();
        let router = tonic::transport::Server::builder()
            .tls_config(tls)
            .map_err(|e| FakeError::Tls(e.to_string()))?
            .add_service(LocketServer::new(service.clone()));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        Ok(Self { addr, service, task })
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The live resource under `key`, as Fetch would answer.
    pub fn resource(&self, key: &str) -> Option<pb::Resource> {
        lock(&self.service.table).live(key).cloned()
    }
}
