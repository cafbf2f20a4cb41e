//! A fake BBS on a real socket: HTTPS requiring a client certificate the
//! test CA signed, protobuf bodies, every answer HTTP 200 with failures in
//! the response's `error` field (as BBS answers), an unknown route 404.
//! `set_down(true)` makes it drop every connection until `set_down(false)`;
//! `calls()` is the log of the routes called.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use celld_proto::diego::bbs as pb;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use prost::Message;

use super::FakeError;
use super::bbs_state::{BbsState, err};
use crate::bbs::BbsResponse;
use pb::error::Type as E;

#[derive(Debug, Clone, Copy, Default)]
pub struct FakeBbsOptions {
    /// Serve only the older revisions (`start`, `evacuate_running`, `.r2`),
    /// as an older BBS does: the newer paths answer 404.
    pub old_revisions_only: bool,
}

struct Shared {
    state: Mutex<BbsState>,
    down: AtomicBool,
    calls: Mutex<Vec<String>>,
    options: FakeBbsOptions,
}

pub struct FakeBbs {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBbs {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeBbs {
    /// Listens on 127.0.0.1 (a free port) with `tls` (client certs required).
    pub async fn start(tls: Arc<rustls::ServerConfig>, options: FakeBbsOptions) -> Result<Self, FakeError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(FakeError::Listen)?;
        let addr = listener.local_addr().map_err(FakeError::Listen)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(BbsState::default()),
            down: AtomicBool::new(false),
            calls: Mutex::new(Vec::new()),
            options,
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                if s.down.load(Ordering::SeqCst) {
                    drop(tcp);
                    continue;
                }
                let (acceptor, s) = (acceptor.clone(), s.clone());
                // Connections end with this task (the JoinSet aborts them).
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { handle(&s, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, shared, accept })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// While down, every connection (new or kept alive) is dropped unanswered.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// The paths called so far, in order (refused connections not counted).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.shared.calls).clone()
    }

    /// The table, to seed or inspect.
    pub fn state(&self) -> MutexGuard<'_, BbsState> {
        lock(&self.shared.state)
    }
}

fn ok(body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/x-protobuf"));
    r
}

fn status(code: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = code;
    r
}

/// Decodes a request body, or answers as BBS does to one it cannot parse.
macro_rules! decode {
    ($t:ty, $body:expr, $resp:ty) => {
        match <$t>::decode($body.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                let resp = <$resp>::default();
                return Ok(ok(with_error(resp, err(E::InvalidProtobufMessage, e.to_string()))));
            }
        }
    };
}

fn with_error<R: BbsResponse>(mut r: R, e: pb::Error) -> Vec<u8> {
    r.set_error(e);
    r.encode_to_vec()
}

fn lifecycle(res: Result<(), pb::Error>) -> Vec<u8> {
    pb::ActualLrpLifecycleResponse { error: res.err() }.encode_to_vec()
}

fn evacuation(res: Result<bool, pb::Error>) -> Vec<u8> {
    match res {
        Ok(keep) => pb::EvacuationResponse { error: None, keep_container: keep }.encode_to_vec(),
        Err(e) => pb::EvacuationResponse { error: Some(e), keep_container: false }.encode_to_vec(),
    }
}

fn task_lifecycle(res: Result<(), pb::Error>) -> Vec<u8> {
    pb::TaskLifecycleResponse { error: res.err() }.encode_to_vec()
}

const NEW_REVISIONS: &[&str] = &[
    "/v1/actual_lrps/start.r1",
    "/v1/actual_lrps/evacuate_running.r1",
    "/v1/desired_lrps/get_by_process_guid.r3",
    "/v1/desired_lrps/list.r3",
    "/v1/tasks/list.r3",
    "/v1/tasks/get_by_task_guid.r3",
];

async fn handle(s: &Shared, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, std::io::Error> {
    if s.down.load(Ordering::SeqCst) {
        // An error from the service makes hyper drop the connection.
        return Err(std::io::Error::other("fake BBS is down"));
    }
    let path = req.uri().path().to_string();
    let post = req.method() == hyper::Method::POST;
    let body = req.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    lock(&s.calls).push(path.clone());
    if !post {
        return Ok(status(StatusCode::METHOD_NOT_ALLOWED, "BBS routes are POST"));
    }
    if s.options.old_revisions_only && NEW_REVISIONS.contains(&path.as_str()) {
        return Ok(status(StatusCode::NOT_FOUND, "404 page not found"));
    }
    let mut st = lock(&s.state);
    let out = match path.as_str() {
        "/v1/ping" => pb::PingResponse { available: true }.encode_to_vec(),
        "/v1/actual_lrps/list" => {
            let r = decode!(pb::ActualLrPsRequest, body, pb::ActualLrPsResponse);
            pb::ActualLrPsResponse { error: None, actual_lrps: st.list(&r) }.encode_to_vec()
        }
        "/v1/actual_lrps/claim" => {
            let r = decode!(pb::ClaimActualLrpRequest, body, pb::ActualLrpLifecycleResponse);
            lifecycle(st.claim(&r))
        }
        "/v1/actual_lrps/start.r1" | "/v1/actual_lrps/start" => {
            let r = decode!(pb::StartActualLrpRequest, body, pb::ActualLrpLifecycleResponse);
            lifecycle(st.start(&r))
        }
        "/v1/actual_lrps/crash" => {
            let r = decode!(pb::CrashActualLrpRequest, body, pb::ActualLrpLifecycleResponse);
            lifecycle(st.crash(r.actual_lrp_key.as_ref(), r.actual_lrp_instance_key.as_ref(), &r.error_message))
        }
        "/v1/actual_lrps/fail" => {
            let r = decode!(pb::FailActualLrpRequest, body, pb::ActualLrpLifecycleResponse);
            lifecycle(st.fail(&r))
        }
        "/v1/actual_lrps/remove" => {
            let r = decode!(pb::RemoveActualLrpRequest, body, pb::ActualLrpLifecycleResponse);
            lifecycle(st.remove(&r))
        }
        "/v1/actual_lrps/evacuate_claimed" => {
            let r = decode!(pb::EvacuateClaimedActualLrpRequest, body, pb::EvacuationResponse);
            evacuation(st.evacuate_claimed(r.actual_lrp_key.as_ref(), r.actual_lrp_instance_key.as_ref()))
        }
        "/v1/actual_lrps/evacuate_running.r1" | "/v1/actual_lrps/evacuate_running" => {
            let r = decode!(pb::EvacuateRunningActualLrpRequest, body, pb::EvacuationResponse);
            evacuation(st.evacuate_running(&r))
        }
        "/v1/actual_lrps/evacuate_stopped" => {
            let r = decode!(pb::EvacuateStoppedActualLrpRequest, body, pb::EvacuationResponse);
            evacuation(st.evacuate_stopped(r.actual_lrp_key.as_ref(), r.actual_lrp_instance_key.as_ref()))
        }
        "/v1/actual_lrps/evacuate_crashed" => {
            let r = decode!(pb::EvacuateCrashedActualLrpRequest, body, pb::EvacuationResponse);
            evacuation(st.evacuate_crashed(&r))
        }
        "/v1/actual_lrps/remove_evacuating" => {
            let r = decode!(pb::RemoveEvacuatingActualLrpRequest, body, pb::RemoveEvacuatingActualLrpResponse);
            let res = st.remove_evacuating(r.actual_lrp_key.as_ref(), r.actual_lrp_instance_key.as_ref());
            pb::RemoveEvacuatingActualLrpResponse { error: res.err() }.encode_to_vec()
        }
        "/v1/desired_lrps/get_by_process_guid.r3" | "/v1/desired_lrps/get_by_process_guid.r2" => {
            let r = decode!(pb::DesiredLrpByProcessGuidRequest, body, pb::DesiredLrpResponse);
            match st.desired.get(&r.process_guid) {
                Some(d) => pb::DesiredLrpResponse { error: None, desired_lrp: Some(d.clone()) }.encode_to_vec(),
                None => with_error(
                    pb::DesiredLrpResponse::default(),
                    err(E::ResourceNotFound, "the requested resource could not be found"),
                ),
            }
        }
        "/v1/desired_lrps/list.r3" | "/v1/desired_lrps/list.r2" => {
            let r = decode!(pb::DesiredLrPsRequest, body, pb::DesiredLrPsResponse);
            let desired_lrps = st
                .desired
                .values()
                .filter(|d| r.domain.is_empty() || d.domain == r.domain)
                .filter(|d| r.process_guids.is_empty() || r.process_guids.contains(&d.process_guid))
                .cloned()
                .collect();
            pb::DesiredLrPsResponse { error: None, desired_lrps }.encode_to_vec()
        }
        "/v1/desired_lrp/desire.r2" => {
            let r = decode!(pb::DesireLrpRequest, body, pb::DesiredLrpLifecycleResponse);
            pb::DesiredLrpLifecycleResponse { error: st.desire_lrp(r.desired_lrp.as_ref()).err() }.encode_to_vec()
        }
        "/v1/tasks/list.r3" | "/v1/tasks/list.r2" => {
            let r = decode!(pb::TasksRequest, body, pb::TasksResponse);
            let tasks = st
                .tasks
                .values()
                .filter(|t| r.domain.is_empty() || t.domain == r.domain)
                .filter(|t| r.cell_id.is_empty() || t.cell_id == r.cell_id)
                .cloned()
                .collect();
            pb::TasksResponse { error: None, tasks }.encode_to_vec()
        }
        "/v1/tasks/get_by_task_guid.r3" | "/v1/tasks/get_by_task_guid.r2" => {
            let r = decode!(pb::TaskByGuidRequest, body, pb::TaskResponse);
            match st.tasks.get(&r.task_guid) {
                Some(t) => pb::TaskResponse { error: None, task: Some(t.clone()) }.encode_to_vec(),
                None => with_error(
                    pb::TaskResponse::default(),
                    err(E::ResourceNotFound, "the requested resource could not be found"),
                ),
            }
        }
        "/v1/tasks/desire.r2" => {
            let r = decode!(pb::DesireTaskRequest, body, pb::TaskLifecycleResponse);
            task_lifecycle(st.desire_task(&r))
        }
        "/v1/tasks/start" => {
            let r = decode!(pb::StartTaskRequest, body, pb::StartTaskResponse);
            match st.start_task(&r) {
                Ok(should_start) => pb::StartTaskResponse { error: None, should_start }.encode_to_vec(),
                Err(e) => pb::StartTaskResponse { error: Some(e), should_start: false }.encode_to_vec(),
            }
        }
        "/v1/tasks/complete" => {
            let r = decode!(pb::CompleteTaskRequest, body, pb::TaskLifecycleResponse);
            task_lifecycle(st.complete_task(&r))
        }
        "/v1/tasks/reject" => {
            let r = decode!(pb::RejectTaskRequest, body, pb::TaskLifecycleResponse);
            task_lifecycle(st.reject_task(&r))
        }
        "/v1/tasks/fail" => {
            let r = decode!(pb::FailTaskRequest, body, pb::TaskLifecycleResponse);
            task_lifecycle(st.fail_task(&r))
        }
        _ => return Ok(status(StatusCode::NOT_FOUND, "404 page not found")),
    };
    Ok(ok(out))
}
