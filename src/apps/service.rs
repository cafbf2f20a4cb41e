//! The `Apps` gRPC service: requests in, `AppLayer` calls, messages out.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::AppLayer;
use super::store::EventRecord;
use crate::staging::service::{Scratch, receive, scratch_file, store_package};
use celld_proto as pb;
use celld_proto::apps_server::Apps;

/// How the apps layer's errors reach `cellctl`.
impl From<crate::apps::AppsError> for Status {
    fn from(e: crate::apps::AppsError) -> Self {
        use crate::apps::AppsError as E;
        match e {
            E::InvalidArgument(m) => Status::invalid_argument(m),
            E::NotFound(m) => Status::not_found(m),
            E::AlreadyExists(m) => Status::already_exists(m),
            E::FailedPrecondition(m) => Status::failed_precondition(m),
            E::Staging(s) => s.into(),
            E::Blobstore(b) => crate::staging::service::blobstore_status(b),
            E::Upstream(s) => s,
            E::Store(_) => Status::internal(e.to_string()),
        }
    }
}

pub struct AppsService {
    apps: Arc<AppLayer>,
}

impl AppsService {
    pub fn new(apps: Arc<AppLayer>) -> Self {
        Self { apps }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::StagingEvent, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogEnvelope, Status>> + Send>>;

fn proto_event(e: EventRecord) -> pb::AppEvent {
    pb::AppEvent {
        guid: e.guid,
        r#type: e.kind,
        actor: e.actor,
        timestamp: e.timestamp,
        metadata: e.metadata.into_iter().collect(),
    }
}

#[tonic::async_trait]
impl Apps for AppsService {
    async fn create_app(&self, r: Request<pb::CreateAppRequest>) -> Result<Response<pb::App>, Status> {
        let app = self.apps.create_app(r.into_inner()).await?;
        Ok(Response::new(self.apps.proto_app(&app)))
    }

    async fn update_app(&self, r: Request<pb::UpdateAppRequest>) -> Result<Response<pb::App>, Status> {
        let app = self.apps.update_app(r.into_inner()).await?;
        Ok(Response::new(self.apps.proto_app(&app)))
    }

    async fn get_app(&self, r: Request<pb::AppRef>) -> Result<Response<pb::AppDetail>, Status> {
        Ok(Response::new(self.apps.detail(&r.into_inner()).await?))
    }

    async fn apply_manifest(
        &self,
        r: Request<pb::ApplyManifestRequest>,
    ) -> Result<Response<pb::ApplyManifestResponse>, Status> {
        let r = r.into_inner();
        let mut m = crate::apps::manifest::parse(&r.manifest_yaml).map_err(crate::apps::AppsError::from)?;
        if !r.name.is_empty() {
            m = m.only(&r.name).map_err(crate::apps::AppsError::from)?;
        }
        // The paths are the client's to upload.
        let paths = m.applications.iter().filter_map(|a| a.path.clone().map(|p| (a.name.clone(), p))).collect();
        let apps = self.apps.apply_parsed_manifest(&r.space, m).await?;
        Ok(Response::new(pb::ApplyManifestResponse {
            apps: apps.iter().map(|a| self.apps.proto_app(a)).collect(),
            paths,
        }))
    }

    async fn scale_process(&self, r: Request<pb::ScaleProcessRequest>) -> Result<Response<pb::App>, Status> {
        let r = r.into_inner();
        let app = self
            .apps
            .scale_process(&r.app.unwrap_or_default(), &r.process_type, r.instances, r.memory_mb, r.disk_mb)
            .await?;
        Ok(Response::new(self.apps.proto_app(&app)))
    }

    async fn list_apps(&self, r: Request<pb::ListAppsRequest>) -> Result<Response<pb::ListAppsResponse>, Status> {
        let r = r.into_inner();
        let apps = self.apps.list_apps(&r.space, r.all_spaces)?;
        let running = self.apps.running_counts(&apps).await;
        let apps = apps
            .iter()
            .map(|a| pb::AppSummary {
                app: Some(self.apps.proto_app(a)),
                running_instances: running.get(&a.guid).copied().unwrap_or(0),
            })
            .collect();
        Ok(Response::new(pb::ListAppsResponse { apps }))
    }

    async fn delete_app(&self, r: Request<pb::AppRef>) -> Result<Response<pb::DeleteAppResponse>, Status> {
        self.apps.delete_app(&r.into_inner()).await?;
        Ok(Response::new(pb::DeleteAppResponse {}))
    }

    async fn upload_package(
        &self,
        request: Request<Streaming<pb::UploadAppPackageRequest>>,
    ) -> Result<Response<pb::AppPackage>, Status> {
        use pb::upload_app_package_request::Part;
        let mut stream = request.into_inner();
        let (app_ref, announced) = match stream.message().await? {
            Some(pb::UploadAppPackageRequest { part: Some(Part::App(a)), size }) => (a, size),
            _ => return Err(Status::invalid_argument("the first message of UploadPackage must name the app")),
        };
        let app = self.apps.find(&app_ref)?;
        let stager = self.apps.stager.clone();
        let limit = stager.config().max_package_bytes;
        if announced > limit {
            return Err(Status::invalid_argument(format!(
                "the package is {} but this cell takes at most {} (celld --max-package-size-mb): leave large files out with .cfignore",
                crate::staging::byte_size(announced),
                crate::staging::byte_size(limit)
            )));
        }
        let tmp = Scratch(scratch_file(&stager, "package"));
        let size = receive(&mut stream, &tmp.0, limit, |m| match m.part {
            Some(Part::Data(d)) => Some(d),
            _ => None,
        })
        .await?;
        if announced != 0 && announced != size {
            return Err(Status::invalid_argument(format!(
                "the package was announced as {announced} bytes but {size} arrived"
            )));
        }
        let package = store_package(&stager, &tmp.0, size).await?;
        let app = self.apps.set_package(&pb::AppRef { space: app.space, name: app.guid }, &package).await?;
        tracing::info!(app_guid = %app.guid, package = %package.key, size = package.size, "app package uploaded");
        Ok(Response::new(pb::AppPackage {
            app_guid: app.guid,
            key: package.key,
            sha256: package.sha256,
            size: package.size,
        }))
    }

    type StageAppStream = EventStream;

    async fn stage_app(&self, r: Request<pb::StageAppRequest>) -> Result<Response<Self::StageAppStream>, Status> {
        let app_ref = r.into_inner().app.unwrap_or_default();
        let (tx, rx) = mpsc::channel(256);
        self.apps.stage(&app_ref, tx).await?;
        let stream = tokio_stream::StreamExt::map(ReceiverStream::new(rx), Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn start_app(&self, r: Request<pb::AppRef>) -> Result<Response<pb::App>, Status> {
        let app = self.apps.start_app(&r.into_inner()).await?;
        Ok(Response::new(self.apps.proto_app(&app)))
    }

    async fn stop_app(&self, r: Request<pb::AppRef>) -> Result<Response<pb::App>, Status> {
        let app = self.apps.stop_app(&r.into_inner()).await?;
        Ok(Response::new(self.apps.proto_app(&app)))
    }

    async fn restart_app(&self, r: Request<pb::AppRef>) -> Result<Response<pb::App>, Status> {
        let app = self.apps.restart_app(&r.into_inner()).await?;
        Ok(Response::new(self.apps.proto_app(&app)))
    }

    async fn restart_app_instance(
        &self,
        r: Request<pb::RestartAppInstanceRequest>,
    ) -> Result<Response<pb::RestartAppInstanceResponse>, Status> {
        let r = r.into_inner();
        let instance_guid = self.apps.restart_instance(&r.app.unwrap_or_default(), r.index).await?;
        Ok(Response::new(pb::RestartAppInstanceResponse { instance_guid }))
    }

    async fn get_env(&self, r: Request<pb::AppRef>) -> Result<Response<pb::AppEnv>, Status> {
        Ok(Response::new(self.apps.env(&r.into_inner())?))
    }

    async fn events(&self, r: Request<pb::AppRef>) -> Result<Response<pb::EventsResponse>, Status> {
        let events = self.apps.events(&r.into_inner())?.into_iter().map(proto_event).collect();
        Ok(Response::new(pb::EventsResponse { events }))
    }

    type LogsStream = LogStream;

    async fn logs(&self, r: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let (history, live) = self.apps.logs(&r.into_inner())?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            for env in history {
                if tx.send(Ok(env)).await.is_err() {
                    return;
                }
            }
            let Some(mut live) = live else { return };
            loop {
                match live.recv().await {
                    Ok(env) => {
                        if tx.send(Ok(env)).await.is_err() {
                            return;
                        }
                    }
                    // A slow reader loses lines; apps never wait for it.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn create_user_provided_service(
        &self,
        r: Request<pb::CreateUserProvidedServiceRequest>,
    ) -> Result<Response<pb::ServiceInstance>, Status> {
        let s = self.apps.create_service(r.into_inner())?;
        Ok(Response::new(super::proto_service(s, vec![])))
    }

    async fn delete_service(&self, r: Request<pb::ServiceRef>) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        self.apps.delete_service(&r.into_inner())?;
        Ok(Response::new(pb::DeleteServiceResponse {}))
    }

    async fn list_services(
        &self,
        r: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        Ok(Response::new(pb::ListServicesResponse { services: self.apps.services(&r.into_inner().space)? }))
    }

    async fn bind_service(&self, r: Request<pb::BindServiceRequest>) -> Result<Response<pb::ServiceBinding>, Status> {
        Ok(Response::new(self.apps.bind(&r.into_inner()).await?))
    }

    async fn unbind_service(
        &self,
        r: Request<pb::BindServiceRequest>,
    ) -> Result<Response<pb::UnbindServiceResponse>, Status> {
        self.apps.unbind(&r.into_inner()).await?;
        Ok(Response::new(pb::UnbindServiceResponse {}))
    }

    async fn run_task(&self, r: Request<pb::RunTaskRequest>) -> Result<Response<pb::AppTask>, Status> {
        Ok(Response::new(self.apps.run_task(r.into_inner()).await?))
    }

    async fn list_tasks(&self, r: Request<pb::AppRef>) -> Result<Response<pb::ListTasksResponse>, Status> {
        Ok(Response::new(pb::ListTasksResponse { tasks: self.apps.tasks(&r.into_inner()).await? }))
    }

    async fn list_cells(&self, _: Request<pb::ListCellsRequest>) -> Result<Response<pb::ListCellsResponse>, Status> {
        Ok(Response::new(pb::ListCellsResponse { cells: self.apps.list_cells().await? }))
    }

    async fn get_ssh_info(&self, _: Request<pb::GetSshInfoRequest>) -> Result<Response<pb::SshInfo>, Status> {
        Ok(Response::new(self.apps.ssh_info()))
    }

    async fn get_ssh_code(&self, _: Request<pb::GetSshCodeRequest>) -> Result<Response<pb::SshCode>, Status> {
        Ok(Response::new(pb::SshCode { code: self.apps.ssh_code()? }))
    }

    async fn set_space_ssh(&self, r: Request<pb::SetSpaceSshRequest>) -> Result<Response<pb::SpaceSsh>, Status> {
        let r = r.into_inner();
        Ok(Response::new(self.apps.set_space_ssh(&r.space, r.allow_ssh)?))
    }

    async fn get_space_ssh(&self, r: Request<pb::SpaceRef>) -> Result<Response<pb::SpaceSsh>, Status> {
        Ok(Response::new(self.apps.space_ssh(&r.into_inner().space)?))
    }
}
