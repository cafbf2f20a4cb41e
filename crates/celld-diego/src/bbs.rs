//! The BBS client a cell uses: protobuf bodies POSTed over HTTPS with mutual
//! TLS, as BBS's own Go client does. BBS answers every call with HTTP 200 and
//! puts a failure in the response's `error` field; that becomes
//! `BbsError::Bbs` with BBS's error type, which the caller acts on
//! (ActualLRPCannotBeClaimed → delete the container, …). A call that never got
//! an answer is `BbsError::Transport`, which `is_transient()` says to retry.
//!
//! Routes that BBS revised (`start.r1`, `evacuate_running.r1`, the `.r3`
//! reads) are tried newest first; an HTTP 404 (an older BBS) falls back to
//! the previous revision, and the client remembers to go there directly.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celld_proto::diego::bbs as pb;
use prost::Message;

pub use pb::error::Type as ErrorType;

#[derive(Debug, thiserror::Error)]
pub enum BbsError {
    /// BBS answered and refused: its `error` field.
    #[error("BBS {path}: {}: {message}", kind.as_str_name())]
    Bbs { path: &'static str, kind: ErrorType, message: String },
    /// No answer: connect, TLS, timeout, a cut connection.
    #[error("BBS {path}: no answer: {detail}")]
    Transport { path: &'static str, detail: String },
    /// An HTTP status other than 200 (BBS itself never sends one for a
    /// refusal; a proxy or an overloaded BBS may).
    #[error("BBS {path}: HTTP {status}: {body}")]
    Http { path: &'static str, status: u16, body: String },
    #[error("BBS {path}: undecodable protobuf response: {detail}")]
    Decode { path: &'static str, detail: String },
    #[error("BBS address {addr:?}: {why}")]
    BadAddress { addr: String, why: String },
    #[error("BBS client TLS: {0}")]
    Tls(String),
}

impl BbsError {
    /// Whether trying again later may succeed: no answer, a 5xx, or BBS's
    /// own "try again" errors (a database deadlock or timeout).
    pub fn is_transient(&self) -> bool {
        match self {
            BbsError::Transport { .. } => true,
            BbsError::Http { status, .. } => *status >= 500,
            BbsError::Bbs { kind, .. } => matches!(kind, ErrorType::Deadlock | ErrorType::Timeout),
            _ => false,
        }
    }

    /// BBS's error type, when BBS answered with one.
    pub fn kind(&self) -> Option<ErrorType> {
        match self {
            BbsError::Bbs { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// A BBS response: every one but ping's carries BBS's `error` field (public
/// so that a fake BBS answers with the same types).
pub trait BbsResponse: Message + Default {
    fn error(&self) -> Option<&pb::Error>;
    fn set_error(&mut self, error: pb::Error);
}

macro_rules! bbs_responses {
    ($($t:ty),* $(,)?) => {
        $(impl BbsResponse for $t {
            fn error(&self) -> Option<&pb::Error> {
                self.error.as_ref()
            }
            fn set_error(&mut self, error: pb::Error) {
                self.error = Some(error);
            }
        })*
    };
}

bbs_responses!(
    pb::ActualLrpLifecycleResponse,
    pb::ActualLrPsResponse,
    pb::EvacuationResponse,
    pb::RemoveEvacuatingActualLrpResponse,
    pb::DesiredLrpResponse,
    pb::DesiredLrPsResponse,
    pb::DesiredLrpLifecycleResponse,
    pb::TasksResponse,
    pb::TaskResponse,
    pb::StartTaskResponse,
    pb::TaskLifecycleResponse,
);

// A BBS call's routes, newest revision first.
const PING: &[&str] = &["/v1/ping"];
const ACTUAL_LRPS: &[&str] = &["/v1/actual_lrps/list"];
const CLAIM: &[&str] = &["/v1/actual_lrps/claim"];
const START: &[&str] = &["/v1/actual_lrps/start.r1", "/v1/actual_lrps/start"];
const CRASH: &[&str] = &["/v1/actual_lrps/crash"];
const FAIL_LRP: &[&str] = &["/v1/actual_lrps/fail"];
const REMOVE: &[&str] = &["/v1/actual_lrps/remove"];
const EVACUATE_CLAIMED: &[&str] = &["/v1/actual_lrps/evacuate_claimed"];
const EVACUATE_RUNNING: &[&str] = &["/v1/actual_lrps/evacuate_running.r1", "/v1/actual_lrps/evacuate_running"];
const EVACUATE_STOPPED: &[&str] = &["/v1/actual_lrps/evacuate_stopped"];
const EVACUATE_CRASHED: &[&str] = &["/v1/actual_lrps/evacuate_crashed"];
const REMOVE_EVACUATING: &[&str] = &["/v1/actual_lrps/remove_evacuating"];
const DESIRED_LRP: &[&str] = &["/v1/desired_lrps/get_by_process_guid.r3", "/v1/desired_lrps/get_by_process_guid.r2"];
const DESIRED_LRPS: &[&str] = &["/v1/desired_lrps/list.r3", "/v1/desired_lrps/list.r2"];
const DESIRE_LRP: &[&str] = &["/v1/desired_lrp/desire.r2"];
const TASKS: &[&str] = &["/v1/tasks/list.r3", "/v1/tasks/list.r2"];
const TASK: &[&str] = &["/v1/tasks/get_by_task_guid.r3", "/v1/tasks/get_by_task_guid.r2"];
const DESIRE_TASK: &[&str] = &["/v1/tasks/desire.r2"];
const START_TASK: &[&str] = &["/v1/tasks/start"];
const COMPLETE_TASK: &[&str] = &["/v1/tasks/complete"];
const REJECT_TASK: &[&str] = &["/v1/tasks/reject"];
const FAIL_TASK: &[&str] = &["/v1/tasks/fail"];

const PROTOBUF: &str = "application/x-protobuf";

/// Timeouts of one call.
#[derive(Debug, Clone, Copy)]
pub struct BbsTimeouts {
    pub connect: Duration,
    /// The whole request, answer included.
    pub request: Duration,
}

impl Default for BbsTimeouts {
    fn default() -> Self {
        // The rep's BBS client allows 10 s for a call.
        Self { connect: Duration::from_secs(5), request: Duration::from_secs(10) }
    }
}

#[derive(Clone)]
pub struct BbsClient {
    base: String,
    http: reqwest::Client,
    /// Newest routes this BBS answered 404 on: go to the older one directly.
    retired: Arc<Mutex<HashSet<&'static str>>>,
}

impl std::fmt::Debug for BbsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BbsClient").field("base", &self.base).finish_non_exhaustive()
    }
}

/// The error and its causes on one line (reqwest's own Display is terse).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl BbsClient {
    /// `address` is BBS's URL (`https://bbs.service.cf.internal:8889`) or
    /// `host:port`; `tls` presents the cell's client identity.
    pub fn new(address: &str, tls: &rustls::ClientConfig, timeouts: BbsTimeouts) -> Result<Self, BbsError> {
        let bad = |why: &str| BbsError::BadAddress { addr: address.to_string(), why: why.to_string() };
        let base = match address.split_once("://") {
            Some(("https", rest)) => format!("https://{}", rest.trim_end_matches('/')),
            Some((scheme, _)) => return Err(bad(&format!("BBS is only reached over https, not {scheme}"))),
            None => format!("https://{}", address.trim_end_matches('/')),
        };
        let url = reqwest::Url::parse(&base).map_err(|e| bad(&e.to_string()))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls.clone())
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .build()
            .map_err(|e| BbsError::Tls(chain(&e)))?;
        Ok(Self { base, http, retired: Arc::default() })
    }

    /// `new()` from the cell's PEM files (`bbs_ca_cert_file`,
    /// `bbs_client_cert_file`, `bbs_client_key_file`), checked as a client
    /// identity; a bad file's error names it.
    pub fn from_pem(address: &str, files: &crate::tls::PemFiles, timeouts: BbsTimeouts) -> Result<Self, BbsError> {
        let tls = crate::tls::TlsIdentity::load(files, crate::tls::Usage::Client)
            .and_then(|id| id.client_config())
            .map_err(|e| BbsError::Tls(e.to_string()))?;
        Self::new(address, &tls, timeouts)
    }

    async fn post<Req: Message>(&self, path: &'static str, req: &Req) -> Result<reqwest::Response, BbsError> {
        self.http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, PROTOBUF)
            .header(reqwest::header::ACCEPT, PROTOBUF)
            .body(req.encode_to_vec())
            .send()
            .await
            .map_err(|e| BbsError::Transport { path, detail: chain(&e) })
    }

    /// Sends `req` to the newest of `paths` this BBS serves; decodes the
    /// answer (without looking at its `error`).
    async fn exchange<Req: Message, Resp: Message + Default>(
        &self,
        paths: &'static [&'static str],
        req: &Req,
    ) -> Result<(&'static str, Resp), BbsError> {
        for (i, &path) in paths.iter().enumerate() {
            let last = i + 1 == paths.len();
            if !last && self.retired.lock().is_ok_and(|r| r.contains(path)) {
                continue;
            }
            let resp = self.post(path, req).await?;
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_FOUND && !last {
                tracing::info!(path, fallback = paths[i + 1], "BBS does not serve this revision; using the older one");
                if let Ok(mut r) = self.retired.lock() {
                    r.insert(path);
                }
                continue;
            }
            let body = resp.bytes().await.map_err(|e| BbsError::Transport { path, detail: chain(&e) })?;
            if status != reqwest::StatusCode::OK {
                let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                return Err(BbsError::Http { path, status: status.as_u16(), body: text });
            }
            let decoded = Resp::decode(body.as_ref()).map_err(|e| BbsError::Decode { path, detail: e.to_string() })?;
            return Ok((path, decoded));
        }
        // `paths` is never empty; an empty list is a bug in this file.
        Err(BbsError::Transport { path: "(no route)", detail: "no route to call".into() })
    }

    async fn call<Req: Message, Resp: BbsResponse>(
        &self,
        paths: &'static [&'static str],
        req: &Req,
    ) -> Result<Resp, BbsError> {
        let (path, resp) = self.exchange::<Req, Resp>(paths, req).await?;
        match resp.error() {
            Some(e) => Err(BbsError::Bbs {
                path,
                kind: ErrorType::try_from(e.r#type).unwrap_or(ErrorType::UnknownError),
                message: e.message.clone(),
            }),
            None => Ok(resp),
        }
    }

    /// Whether BBS is up and is the active one.
    pub async fn ping(&self) -> Result<bool, BbsError> {
        let (_, resp) = self.exchange::<_, pb::PingResponse>(PING, &()).await?;
        Ok(resp.available)
    }

    /// ActualLRPs matching the filter (empty fields do not filter).
    pub async fn actual_lrps(&self, filter: &pb::ActualLrPsRequest) -> Result<Vec<pb::ActualLrp>, BbsError> {
        let resp: pb::ActualLrPsResponse = self.call(ACTUAL_LRPS, filter).await?;
        Ok(resp.actual_lrps)
    }

    /// The ActualLRPs BBS has on `cell_id` (the bulker's view).
    pub async fn actual_lrps_by_cell(&self, cell_id: &str) -> Result<Vec<pb::ActualLrp>, BbsError> {
        self.actual_lrps(&pb::ActualLrPsRequest { cell_id: cell_id.into(), ..Default::default() }).await
    }

    pub async fn claim_actual_lrp(
        &self,
        key: &pb::ActualLrpKey,
        instance: &pb::ActualLrpInstanceKey,
    ) -> Result<(), BbsError> {
        let req = pb::ClaimActualLrpRequest {
            process_guid: key.process_guid.clone(),
            index: key.index,
            actual_lrp_instance_key: Some(instance.clone()),
        };
        tracing::debug!(instance_guid = %instance.instance_guid, process_guid = %key.process_guid, "claiming");
        self.call::<_, pb::ActualLrpLifecycleResponse>(CLAIM, &req).await.map(drop)
    }

    /// Reports the instance RUNNING (with its ports, routes, readiness).
    pub async fn start_actual_lrp(&self, req: &pb::StartActualLrpRequest) -> Result<(), BbsError> {
        self.call::<_, pb::ActualLrpLifecycleResponse>(START, req).await.map(drop)
    }

    pub async fn crash_actual_lrp(
        &self,
        key: &pb::ActualLrpKey,
        instance: &pb::ActualLrpInstanceKey,
        error_message: &str,
    ) -> Result<(), BbsError> {
        let req = pb::CrashActualLrpRequest {
            actual_lrp_key: Some(key.clone()),
            actual_lrp_instance_key: Some(instance.clone()),
            error_message: error_message.into(),
        };
        self.call::<_, pb::ActualLrpLifecycleResponse>(CRASH, &req).await.map(drop)
    }

    /// Records a placement failure on an UNCLAIMED instance.
    pub async fn fail_actual_lrp(&self, key: &pb::ActualLrpKey, error_message: &str) -> Result<(), BbsError> {
        let req = pb::FailActualLrpRequest { actual_lrp_key: Some(key.clone()), error_message: error_message.into() };
        self.call::<_, pb::ActualLrpLifecycleResponse>(FAIL_LRP, &req).await.map(drop)
    }

    pub async fn remove_actual_lrp(
        &self,
        key: &pb::ActualLrpKey,
        instance: &pb::ActualLrpInstanceKey,
    ) -> Result<(), BbsError> {
        let req = pb::RemoveActualLrpRequest {
            process_guid: key.process_guid.clone(),
            index: key.index,
            actual_lrp_instance_key: Some(instance.clone()),
        };
        self.call::<_, pb::ActualLrpLifecycleResponse>(REMOVE, &req).await.map(drop)
    }

    /// Each evacuation call answers whether to keep the container running.
    pub async fn evacuate_claimed_actual_lrp(
        &self,
        key: &pb::ActualLrpKey,
        instance: &pb::ActualLrpInstanceKey,
    ) -> Result<bool, BbsError> {
        let req = pb::EvacuateClaimedActualLrpRequest {
            actual_lrp_key: Some(key.clone()),
            actual_lrp_instance_key: Some(instance.clone()),
        };
        let resp: pb::EvacuationResponse = self.call(EVACUATE_CLAIMED, &req).await?;
        Ok(resp.keep_container)
    }

    pub async fn evacuate_running_actual_lrp(
        &self,
        req: &pb::EvacuateRunningActualLrpRequest,
    ) -> Result<bool, BbsError> {
        let resp: pb::EvacuationResponse = self.call(EVACUATE_RUNNING, req).await?;
        Ok(resp.keep_container)
    }

    pub async fn evacuate_stopped_actual_lrp(
        &self,
        key: &pb::ActualLrpKey,
        instance: &pb::ActualLrpInstanceKey,
    ) -> Result<bool, BbsError> {
        let req = pb::EvacuateStoppedActualLrpRequest {
            actual_lrp_key: Some(key.clone()),
            actual_lrp_instance_key: Some(instance.clone()),
        };
        let resp: pb::EvacuationResponse = self.call(EVACUATE_STOPPED, &req).await?;
        Ok(resp.keep_container)
    }

    pub async fn evacuate_crashed_actual_lrp(
        &self,
        key: &pb::ActualLrpKey,
        instance: &pb::ActualLrpInstanceKey,
        error_message: &str,
    ) -> Result<bool, BbsError> {
        let req = pb::EvacuateCrashedActualLrpRequest {
            actual_lrp_key: Some(key.clone()),
            actual_lrp_instance_key: Some(instance.clone()),
            error_message: error_message.into(),
        };
        let resp: pb::EvacuationResponse = self.call(EVACUATE_CRASHED, &req).await?;
        Ok(resp.keep_container)
    }

    pub async fn remove_evacuating_actual_lrp(
        &self,
        key: &pb::ActualLrpKey,
        instance: &pb::ActualLrpInstanceKey,
    ) -> Result<(), BbsError> {
        let req = pb::RemoveEvacuatingActualLrpRequest {
            actual_lrp_key: Some(key.clone()),
            actual_lrp_instance_key: Some(instance.clone()),
        };
        self.call::<_, pb::RemoveEvacuatingActualLrpResponse>(REMOVE_EVACUATING, &req).await.map(drop)
    }

    pub async fn desired_lrp_by_process_guid(&self, process_guid: &str) -> Result<pb::DesiredLrp, BbsError> {
        let req = pb::DesiredLrpByProcessGuidRequest { process_guid: process_guid.into() };
        let resp: pb::DesiredLrpResponse = self.call(DESIRED_LRP, &req).await?;
        resp.desired_lrp.ok_or(BbsError::Decode { path: DESIRED_LRP[0], detail: "no desired_lrp in the answer".into() })
    }

    pub async fn desired_lrps(&self, filter: &pb::DesiredLrPsRequest) -> Result<Vec<pb::DesiredLrp>, BbsError> {
        let resp: pb::DesiredLrPsResponse = self.call(DESIRED_LRPS, filter).await?;
        Ok(resp.desired_lrps)
    }

    /// What Cloud Controller does (tests play it).
    pub async fn desire_lrp(&self, lrp: &pb::DesiredLrp) -> Result<(), BbsError> {
        let req = pb::DesireLrpRequest { desired_lrp: Some(lrp.clone()) };
        self.call::<_, pb::DesiredLrpLifecycleResponse>(DESIRE_LRP, &req).await.map(drop)
    }

    pub async fn tasks(&self, filter: &pb::TasksRequest) -> Result<Vec<pb::Task>, BbsError> {
        let resp: pb::TasksResponse = self.call(TASKS, filter).await?;
        Ok(resp.tasks)
    }

    pub async fn tasks_by_cell(&self, cell_id: &str) -> Result<Vec<pb::Task>, BbsError> {
        self.tasks(&pb::TasksRequest { cell_id: cell_id.into(), ..Default::default() }).await
    }

    pub async fn task_by_guid(&self, task_guid: &str) -> Result<pb::Task, BbsError> {
        let req = pb::TaskByGuidRequest { task_guid: task_guid.into() };
        let resp: pb::TaskResponse = self.call(TASK, &req).await?;
        resp.task.ok_or(BbsError::Decode { path: TASK[0], detail: "no task in the answer".into() })
    }

    /// What Cloud Controller does (tests play it).
    pub async fn desire_task(&self, task_guid: &str, domain: &str, def: &pb::TaskDefinition) -> Result<(), BbsError> {
        let req = pb::DesireTaskRequest {
            task_definition: Some(def.clone()),
            task_guid: task_guid.into(),
            domain: domain.into(),
        };
        self.call::<_, pb::TaskLifecycleResponse>(DESIRE_TASK, &req).await.map(drop)
    }

    /// Marks the task RUNNING on `cell_id`; false means it already runs
    /// there and the cell must not start it again.
    pub async fn start_task(&self, task_guid: &str, cell_id: &str) -> Result<bool, BbsError> {
        let req = pb::StartTaskRequest { task_guid: task_guid.into(), cell_id: cell_id.into() };
        tracing::debug!(task_guid, "starting task");
        let resp: pb::StartTaskResponse = self.call(START_TASK, &req).await?;
        Ok(resp.should_start)
    }

    pub async fn complete_task(
        &self,
        task_guid: &str,
        cell_id: &str,
        failed: bool,
        failure_reason: &str,
        result: &str,
    ) -> Result<(), BbsError> {
        let req = pb::CompleteTaskRequest {
            task_guid: task_guid.into(),
            cell_id: cell_id.into(),
            failed,
            failure_reason: failure_reason.into(),
            result: result.into(),
        };
        self.call::<_, pb::TaskLifecycleResponse>(COMPLETE_TASK, &req).await.map(drop)
    }

    /// Gives the task back to the auctioneer (a retryable failure).
    pub async fn reject_task(&self, task_guid: &str, reason: &str) -> Result<(), BbsError> {
        let req = pb::RejectTaskRequest { task_guid: task_guid.into(), rejection_reason: reason.into() };
        self.call::<_, pb::TaskLifecycleResponse>(REJECT_TASK, &req).await.map(drop)
    }

    pub async fn fail_task(&self, task_guid: &str, reason: &str) -> Result<(), BbsError> {
        let req = pb::FailTaskRequest { task_guid: task_guid.into(), failure_reason: reason.into() };
        self.call::<_, pb::TaskLifecycleResponse>(FAIL_TASK, &req).await.map(drop)
    }
}
