//! Unit tests only: an in-process `Apps` server that records what `push` asks
//! of it, and an app directory to push to it.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::api::Ctx;
use crate::render::Style;
use celld_proto as pb;

type Events = Pin<Box<dyn Stream<Item = Result<pb::StagingEvent, Status>> + Send>>;
type Logs = Pin<Box<dyn Stream<Item = Result<pb::LogEnvelope, Status>> + Send>>;

#[derive(Default)]
pub struct State {
    pub calls: Vec<String>,
    pub app: Option<pb::App>,
    pub declared_size: u64,
    pub uploaded: Vec<u8>,
    pub fail_staging: bool,
    pub crash: bool,
}

#[derive(Clone, Default)]
pub struct Mock(pub Arc<Mutex<State>>);

impl Mock {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
    fn call(&self, c: String) {
        self.with(|s| s.calls.push(c));
    }
    fn set_state(&self, state: &str) -> Result<Response<pb::App>, Status> {
        self.with(|s| {
            let app = s.app.as_mut().ok_or_else(|| Status::not_found("no app"))?;
            app.state = state.to_string();
            Ok(Response::new(app.clone()))
        })
    }
}

fn nope<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not in the mock"))
}

#[tonic::async_trait]
impl pb::apps_server::Apps for Mock {
    type StageAppStream = Events;
    type LogsStream = Logs;

    async fn create_app(&self, r: Request<pb::CreateAppRequest>) -> Result<Response<pb::App>, Status> {
        let r = r.into_inner();
        self.call(format!("create {} i={} m={} host={}", r.name, r.instances, r.memory_mb, r.hostname));
        let app = pb::App {
            name: r.name,
            space: r.space,
            state: "STOPPED".into(),
            instances: r.instances,
            memory_mb: r.memory_mb,
            health_check_timeout: 1,
            ..Default::default()
        };
        self.with(|s| s.app = Some(app.clone()));
        Ok(Response::new(app))
    }
    async fn update_app(&self, r: Request<pb::UpdateAppRequest>) -> Result<Response<pb::App>, Status> {
        let r = r.into_inner();
        self.call(format!("update i={:?} m={:?} bp={}", r.instances, r.memory_mb, r.set_buildpacks));
        self.with(|s| {
            let app = s.app.as_mut().ok_or_else(|| Status::not_found("no app"))?;
            app.instances = r.instances.unwrap_or(app.instances);
            Ok(Response::new(app.clone()))
        })
    }
    async fn get_app(&self, r: Request<pb::AppRef>) -> Result<Response<pb::AppDetail>, Status> {
        self.call("get".into());
        let name = r.into_inner().name;
        self.with(|s| {
            let app = s.app.clone().ok_or_else(|| Status::not_found(format!("app '{name}' not found")))?;
            let state = if s.crash { "crashed" } else { "running" };
            let instances = if app.state == "STARTED" {
                (0..app.instances)
                    .map(|index| pb::AppInstance { index, state: state.into(), ..Default::default() })
                    .collect()
            } else {
                Vec::new()
            };
            Ok(Response::new(pb::AppDetail { app: Some(app), instances, processes: vec![] }))
        })
    }
    async fn apply_manifest(
        &self,
        _: Request<pb::ApplyManifestRequest>,
    ) -> Result<Response<pb::ApplyManifestResponse>, Status> {
        nope()
    }
    async fn scale_process(&self, _: Request<pb::ScaleProcessRequest>) -> Result<Response<pb::App>, Status> {
        nope()
    }
    async fn upload_package(
        &self,
        r: Request<Streaming<pb::UploadAppPackageRequest>>,
    ) -> Result<Response<pb::AppPackage>, Status> {
        use pb::upload_app_package_request::Part;
        let mut stream = r.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty stream"))?;
        let Some(Part::App(app)) = first.part else { return Err(Status::invalid_argument("app first")) };
        self.call(format!("upload {}/{}", app.space, app.name));
        self.with(|s| s.declared_size = first.size);
        while let Some(m) = stream.message().await? {
            let Some(Part::Data(d)) = m.part else { return Err(Status::invalid_argument("data after")) };
            assert!(d.len() <= 64 * 1024);
            self.with(|s| s.uploaded.extend_from_slice(&d));
        }
        Ok(Response::new(pb::AppPackage::default()))
    }
    async fn stage_app(&self, _: Request<pb::StageAppRequest>) -> Result<Response<Events>, Status> {
        use pb::staging_event::Event;
        self.call("stage".into());
        let log = pb::LogEnvelope { message: "Downloading app package...".into(), ..Default::default() };
        let end = if self.with(|s| s.fail_staging) {
            Event::Failure(pb::StagingFailure {
                reason: "NoAppDetectedError".into(),
                message: "None of the buildpacks detected a compatible application".into(),
                exit_code: 222,
                ..Default::default()
            })
        } else {
            Event::Result(pb::StagingResult::default())
        };
        let events = [Event::Started(pb::StagingStarted::default()), Event::Log(log), end]
            .map(|e| Ok(pb::StagingEvent { event: Some(e) }));
        Ok(Response::new(Box::pin(tokio_stream::iter(events)) as Events))
    }
    async fn start_app(&self, _: Request<pb::AppRef>) -> Result<Response<pb::App>, Status> {
        self.call("start".into());
        self.set_state("STARTED")
    }
    async fn stop_app(&self, _: Request<pb::AppRef>) -> Result<Response<pb::App>, Status> {
        self.call("stop".into());
        self.set_state("STOPPED")
    }
    async fn list_apps(&self, _: Request<pb::ListAppsRequest>) -> Result<Response<pb::ListAppsResponse>, Status> {
        nope()
    }
    async fn delete_app(&self, _: Request<pb::AppRef>) -> Result<Response<pb::DeleteAppResponse>, Status> {
        Err(Status::not_found("app 'x' not found"))
    }
    async fn restart_app(&self, _: Request<pb::AppRef>) -> Result<Response<pb::App>, Status> {
        nope()
    }
    async fn restart_app_instance(
        &self,
        _: Request<pb::RestartAppInstanceRequest>,
    ) -> Result<Response<pb::RestartAppInstanceResponse>, Status> {
        nope()
    }
    async fn get_env(&self, _: Request<pb::AppRef>) -> Result<Response<pb::AppEnv>, Status> {
        nope()
    }
    async fn events(&self, _: Request<pb::AppRef>) -> Result<Response<pb::EventsResponse>, Status> {
        nope()
    }
    async fn logs(&self, _: Request<pb::LogsRequest>) -> Result<Response<Logs>, Status> {
        let lines = (0..3).map(|i| Ok(pb::LogEnvelope { message: format!("line {i}"), ..Default::default() }));
        Ok(Response::new(Box::pin(tokio_stream::iter(lines).throttle(std::time::Duration::ZERO)) as Logs))
    }
    async fn create_user_provided_service(
        &self,
        _: Request<pb::CreateUserProvidedServiceRequest>,
    ) -> Result<Response<pb::ServiceInstance>, Status> {
        nope()
    }
    async fn delete_service(&self, _: Request<pb::ServiceRef>) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        nope()
    }
    async fn list_services(
        &self,
        _: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        nope()
    }
    async fn bind_service(&self, _: Request<pb::BindServiceRequest>) -> Result<Response<pb::ServiceBinding>, Status> {
        Err(Status::already_exists("bound"))
    }
    async fn unbind_service(
        &self,
        _: Request<pb::BindServiceRequest>,
    ) -> Result<Response<pb::UnbindServiceResponse>, Status> {
        nope()
    }
    async fn run_task(&self, _: Request<pb::RunTaskRequest>) -> Result<Response<pb::AppTask>, Status> {
        nope()
    }
    async fn list_tasks(&self, _: Request<pb::AppRef>) -> Result<Response<pb::ListTasksResponse>, Status> {
        nope()
    }
    async fn list_cells(&self, _: Request<pb::ListCellsRequest>) -> Result<Response<pb::ListCellsResponse>, Status> {
        nope()
    }
    async fn get_ssh_info(&self, _: Request<pb::GetSshInfoRequest>) -> Result<Response<pb::SshInfo>, Status> {
        nope()
    }
    async fn get_ssh_code(&self, _: Request<pb::GetSshCodeRequest>) -> Result<Response<pb::SshCode>, Status> {
        nope()
    }
    async fn set_space_ssh(&self, _: Request<pb::SetSpaceSshRequest>) -> Result<Response<pb::SpaceSsh>, Status> {
        nope()
    }
    async fn get_space_ssh(&self, _: Request<pb::SpaceRef>) -> Result<Response<pb::SpaceSsh>, Status> {
        nope()
    }
}

/// Serves the mock on a free local port; returns its address.
pub async fn serve(m: Mock) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::apps_server::AppsServer::new(m))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// A fresh app directory: an index.html and 200 kB of noise.
pub(super) fn app_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cellctl-push-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Incompressible, so the zip spans several 64 KiB chunks.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.join("data.bin"), noise).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>hi</h1>").unwrap();
    dir
}

/// A `Ctx` for commands against `m`, served on a free port.
pub(super) async fn ctx_for(m: &Mock) -> Ctx {
    Ctx { api: serve(m.clone()).await, space: "dev".into(), style: Style::default() }
}
