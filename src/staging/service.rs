//! The `Stager` gRPC service: thin translation between proto messages and the
//! stager (`crate::staging`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::staging::registry::Buildpack;
use crate::staging::stager::{Event, Outcome, StageRequest, Stager, StagingFailure, StagingRecord, StagingSuccess};
use crate::staging::{StagingError, new_guid, sha256_file, validate_guid};
use celld_blobstore::BlobstoreError;
use celld_proto as pb;

/// How staging's errors reach gRPC clients (also used by the services whose
/// errors wrap staging's or the blobstore's).
impl From<StagingError> for Status {
    fn from(e: StagingError) -> Self {
        match e {
            StagingError::Invalid(m) => Status::invalid_argument(m),
            StagingError::NotFound(m) => Status::not_found(m),
            StagingError::AlreadyExists(m) => Status::already_exists(m),
            StagingError::Precondition(m) => Status::failed_precondition(m),
            StagingError::Blobstore(b) => blobstore_status(b),
            StagingError::Internal(m) => Status::internal(m),
        }
    }
}

/// A blobstore error as a gRPC status: a function, not a `From`, because
/// neither type is this crate's.
pub fn blobstore_status(e: BlobstoreError) -> Status {
    if e.is_not_found() {
        Status::not_found(e.to_string())
    } else if matches!(e, BlobstoreError::InvalidKey { .. }) {
        Status::invalid_argument(e.to_string())
    } else {
        Status::unavailable(format!("blobstore: {e}"))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::StagingEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::Chunk, Status>> + Send>>;

const CHUNK: usize = 64 * 1024;
/// Largest buildpack archive accepted.
const MAX_BUILDPACK_BYTES: u64 = 1 << 30;

pub struct StagerService {
    stager: Arc<Stager>,
}

/// Checks a received package and puts it into the blobstore under its
/// checksum (the same bits are stored once).
pub(crate) async fn store_package(stager: &Stager, path: &Path, size: u64) -> Result<pb::Package, Status> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || check_package(&p, size))
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
    let p = path.to_path_buf();
    let sha =
        tokio::task::spawn_blocking(move || sha256_file(&p)).await.map_err(|e| Status::internal(e.to_string()))??;
    let info = stager.blobs().put_file(&format!("packages/{sha}"), path).await.map_err(blobstore_status)?;
    Ok(pb::Package { key: info.key, sha256: info.sha256, size: info.size })
}

impl StagerService {
    pub fn new(stager: Arc<Stager>) -> Self {
        Self { stager }
    }

    fn scratch_file(&self, what: &str) -> PathBuf {
        scratch_file(&self.stager, what)
    }
}

/// A fresh path in the stager's scratch directory.
pub(crate) fn scratch_file(stager: &Stager, what: &str) -> PathBuf {
    stager.config().work_dir.join("scratch").join(format!("{what}-{}", new_guid()))
}

/// Removes a scratch file however the request ends.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes a client stream's `data` parts to `dest`, refusing more than `limit`
/// bytes. The metadata part came first and was taken by the caller.
pub(crate) async fn receive<T>(
    stream: &mut Streaming<T>,
    dest: &Path,
    limit: u64,
    data: impl Fn(T) -> Option<Vec<u8>>,
) -> Result<u64, Status> {
    let mut f =
        tokio::fs::File::create(dest).await.map_err(|e| Status::internal(format!("{}: {e}", dest.display())))?;
    let mut n: u64 = 0;
    while let Some(msg) = stream.message().await? {
        let Some(d) = data(msg) else {
            return Err(Status::invalid_argument("the metadata may only be sent once, as the first message"));
        };
        n += d.len() as u64;
        if n > limit {
            return Err(Status::invalid_argument(format!(
                "the upload is larger than the limit of {}",
                crate::staging::byte_size(limit)
            )));
        }
        f.write_all(&d).await.map_err(|e| Status::internal(e.to_string()))?;
    }
    f.flush().await.map_err(|e| Status::internal(e.to_string()))?;
    Ok(n)
}

/// What an app package may be: a zip (its central directory must read), a tar
/// or a gzipped tar. Checked at upload so a broken package is refused early;
/// the builder checks every entry again when it unpacks.
fn check_package(path: &Path, size: u64) -> Result<(), Status> {
    use celld_lifecycle::archive::{Format, sniff};
    let empty = || Status::invalid_argument("the package is empty: upload a zip, tar or tar.gz of the app's files");
    if size == 0 {
        return Err(empty());
    }
    let mut head = [0u8; 512];
    let mut f = std::fs::File::open(path).map_err(|e| Status::internal(e.to_string()))?;
    let n = f.read(&mut head).map_err(|e| Status::internal(e.to_string()))?;
    match sniff(&head[..n]) {
        Ok(Format::Zip) => {
            let f = std::fs::File::open(path).map_err(|e| Status::internal(e.to_string()))?;
            zip::ZipArchive::new(f)
                .map(|_| ())
                .map_err(|e| Status::invalid_argument(format!("the package is not a valid zip: {e}")))
        }
        Ok(Format::Tar | Format::TarGz) => Ok(()),
        Err(_) => Err(Status::invalid_argument("the package is neither a zip, a tar nor a tar.gz")),
    }
}

fn proto_buildpack(b: &Buildpack, position: u32) -> pb::Buildpack {
    pb::Buildpack {
        name: b.name.clone(),
        position,
        stack: b.stack.clone(),
        filename: b.filename.clone(),
        key: b.key.clone(),
        sha256: b.sha256.clone(),
        size: b.size,
        version: b.version.clone(),
        enabled: b.enabled,
        locked: b.locked,
    }
}

pub(crate) fn proto_result(guid: &str, s: &StagingSuccess) -> pb::StagingResult {
    pb::StagingResult {
        staging_guid: guid.to_string(),
        droplet_key: s.droplet.key.clone(),
        droplet_sha256: s.droplet.sha256.clone(),
        droplet_size: s.droplet.size,
        detected_buildpack: s.detected_buildpack.clone(),
        buildpack_key: s.buildpack_key.clone(),
        buildpacks: s
            .buildpacks
            .iter()
            .map(|b| pb::BuildpackRecord { key: b.key.clone(), name: b.name.clone(), version: b.version.clone() })
            .collect(),
        process_types: s.process_types.clone().into_iter().collect(),
        start_command: s.start_command.clone(),
        result_json: s.result_json.clone(),
        stack: s.stack.clone(),
    }
}

pub(crate) fn proto_failure(guid: &str, f: &StagingFailure) -> pb::StagingFailure {
    pb::StagingFailure {
        staging_guid: guid.to_string(),
        reason: f.reason.clone(),
        exit_code: f.exit_code,
        message: f.message.clone(),
    }
}

fn proto_staging(r: &StagingRecord) -> pb::Staging {
    use pb::staging::State;
    let (state, result, failure) = match &r.outcome {
        Outcome::Running => (State::Running, None, None),
        Outcome::Succeeded(s) => (State::Succeeded, Some(proto_result(&r.staging_guid, s)), None),
        Outcome::Failed(f) => (State::Failed, None, Some(proto_failure(&r.staging_guid, f))),
    };
    pb::Staging {
        staging_guid: r.staging_guid.clone(),
        app_guid: r.app_guid.clone(),
        state: state as i32,
        result,
        failure,
    }
}

pub(crate) fn event(e: pb::staging_event::Event) -> pb::StagingEvent {
    pb::StagingEvent { event: Some(e) }
}

pub(crate) fn log_event(guid: &str, message: String, stderr: bool, timestamp: i64) -> pb::StagingEvent {
    event(pb::staging_event::Event::Log(pb::LogEnvelope {
        source_type: "STG".to_string(),
        source_instance: "0".to_string(),
        message_type: if stderr { pb::log_envelope::MessageType::Err } else { pb::log_envelope::MessageType::Out }
            as i32,
        timestamp,
        message,
        log_guid: guid.to_string(),
    }))
}

#[tonic::async_trait]
impl pb::stager_server::Stager for StagerService {
    async fn upload_package(
        &self,
        request: Request<Streaming<pb::UploadPackageRequest>>,
    ) -> Result<Response<pb::Package>, Status> {
        use pb::upload_package_request::Part;
        let mut stream = request.into_inner();
        let meta = match stream.message().await? {
            Some(pb::UploadPackageRequest { part: Some(Part::Metadata(m)) }) => m,
            _ => return Err(Status::invalid_argument("the first message of UploadPackage must be the metadata")),
        };
        if !meta.app_guid.is_empty() {
            validate_guid("app guid", &meta.app_guid)?;
        }
        let tmp = Scratch(self.scratch_file("package"));
        let limit = self.stager.config().max_package_bytes;
        let size = receive(&mut stream, &tmp.0, limit, |m| match m.part {
            Some(Part::Data(d)) => Some(d),
            _ => None,
        })
        .await?;
        if meta.size != 0 && meta.size != size {
            return Err(Status::invalid_argument(format!(
                "the package was announced as {} bytes but {size} arrived",
                meta.size
            )));
        }
        let package = store_package(&self.stager, &tmp.0, size).await?;
        tracing::info!(package = %package.key, size = package.size, app_guid = %meta.app_guid, "package uploaded");
        Ok(Response::new(package))
    }

    type StageStream = EventStream;

    async fn stage(&self, request: Request<pb::StageRequest>) -> Result<Response<Self::StageStream>, Status> {
        let r = request.into_inner();
        let req = StageRequest {
            app_guid: r.app_guid,
            app_name: r.app_name,
            space_name: r.space_name,
            space_guid: r.space_guid,
            package_key: r.package_key,
            stack: r.stack,
            buildpacks: r.buildpacks,
            env: r.env.into_iter().map(|e| (e.name, e.value)).collect(),
            memory_mb: r.memory_mb,
            disk_mb: r.disk_mb,
            timeout: (r.timeout_seconds > 0).then(|| std::time::Duration::from_secs(u64::from(r.timeout_seconds))),
        };
        let watch = self.stager.stage(req).await?;
        let guid = watch.staging_guid;
        let mut events = watch.events;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            use pb::staging_event::Event as E;
            let started = event(E::Started(pb::StagingStarted { staging_guid: guid.clone() }));
            if tx.send(Ok(started)).await.is_err() {
                return;
            }
            loop {
                let out = match events.recv().await {
                    Ok(Event::Log(l)) => log_event(&guid, l.message, l.stderr, l.timestamp),
                    Err(broadcast::error::RecvError::Lagged(n)) => log_event(
                        &guid,
                        format!("[celld: {n} staging log lines were dropped because this client read them too slowly]"),
                        true,
                        0,
                    ),
                    Ok(Event::Done(rec)) => {
                        let done = match &rec.outcome {
                            Outcome::Succeeded(s) => E::Result(proto_result(&guid, s)),
                            Outcome::Failed(f) => E::Failure(proto_failure(&guid, f)),
                            Outcome::Running => continue,
                        };
                        let _ = tx.send(Ok(event(done))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                // The client went away: the staging goes on without it.
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_staging(&self, request: Request<pb::GetStagingRequest>) -> Result<Response<pb::Staging>, Status> {
        let rec = self.stager.get(&request.into_inner().staging_guid)?;
        Ok(Response::new(proto_staging(&rec)))
    }

    async fn cancel_staging(
        &self,
        request: Request<pb::CancelStagingRequest>,
    ) -> Result<Response<pb::Staging>, Status> {
        let guid = request.into_inner().staging_guid;
        self.stager.cancel(&guid)?;
        // Answer once the container is gone, so the caller sees the end state.
        let rec = self.stager.wait(&guid).await?;
        Ok(Response::new(proto_staging(&rec)))
    }

    type DownloadDropletStream = ChunkStream;

    async fn download_droplet(
        &self,
        request: Request<pb::DownloadDropletRequest>,
    ) -> Result<Response<Self::DownloadDropletStream>, Status> {
        let key = request.into_inner().droplet_key;
        if !key.starts_with("droplets/") {
            return Err(Status::invalid_argument(format!("{key:?} is not a droplet key (droplets/GUID)")));
        }
        // Verified in full before the first byte goes out.
        let tmp = Scratch(self.scratch_file("droplet"));
        self.stager.blobs().get_to_file(&key, &tmp.0).await.map_err(blobstore_status)?;
        let file = std::fs::File::open(&tmp.0).map_err(|e| Status::internal(e.to_string()))?;
        let size = file.metadata().map_err(|e| Status::internal(e.to_string()))?.len();
        let (tx, rx) = mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            let _tmp = tmp;
            let mut file = file;
            loop {
                let mut buf = vec![0u8; CHUNK];
                match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(pb::Chunk { data: buf })).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                        return;
                    }
                }
            }
        });
        let mut resp = Response::new(Box::pin(ReceiverStream::new(rx)) as Self::DownloadDropletStream);
        resp.metadata_mut().insert(celld_transport::grpc::SIZE_METADATA, size.into());
        Ok(resp)
    }

    async fn list_buildpacks(
        &self,
        _request: Request<pb::ListBuildpacksRequest>,
    ) -> Result<Response<pb::ListBuildpacksResponse>, Status> {
        let buildpacks =
            self.stager.registry.list().iter().enumerate().map(|(i, b)| proto_buildpack(b, i as u32 + 1)).collect();
        Ok(Response::new(pb::ListBuildpacksResponse { buildpacks }))
    }

    async fn create_buildpack(
        &self,
        request: Request<Streaming<pb::CreateBuildpackRequest>>,
    ) -> Result<Response<pb::Buildpack>, Status> {
        use pb::create_buildpack_request::Part;
        let mut stream = request.into_inner();
        let meta = match stream.message().await? {
            Some(pb::CreateBuildpackRequest { part: Some(Part::Metadata(m)) }) => m,
            _ => return Err(Status::invalid_argument("the first message of CreateBuildpack must be the metadata")),
        };
        crate::staging::registry::validate_name(&meta.name)?;
        // Before the bits travel: cf fails an existing name at once.
        self.stager.registry.ensure_new(&meta.name)?;
        let tmp = Scratch(self.scratch_file("buildpack"));
        let size = receive(&mut stream, &tmp.0, MAX_BUILDPACK_BYTES, |m| match m.part {
            Some(Part::Data(d)) => Some(d),
            _ => None,
        })
        .await?;
        if size == 0 {
            return Err(StagingError::Invalid("the buildpack archive is empty".into()).into());
        }
        let (bp, pos) = self
            .stager
            .registry
            .create(self.stager.blobs(), &meta.name, meta.position, &meta.stack, &meta.filename, &tmp.0)
            .await?;
        Ok(Response::new(proto_buildpack(&bp, pos)))
    }

    async fn update_buildpack(
        &self,
        request: Request<pb::UpdateBuildpackRequest>,
    ) -> Result<Response<pb::Buildpack>, Status> {
        let r = request.into_inner();
        let (bp, pos) = self.stager.registry.update(&r.name, r.position, r.enabled, None)?;
        Ok(Response::new(proto_buildpack(&bp, pos)))
    }

    async fn delete_buildpack(
        &self,
        request: Request<pb::DeleteBuildpackRequest>,
    ) -> Result<Response<pb::DeleteBuildpackResponse>, Status> {
        self.stager.registry.delete(self.stager.blobs(), &request.into_inner().name).await?;
        Ok(Response::new(pb::DeleteBuildpackResponse {}))
    }
}
