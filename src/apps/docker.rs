//! Docker-image apps, as CF's docker lifecycle runs them: no package and no
//! buildpacks. "Staging" reads the image's config from its registry (no
//! layers): its entrypoint and command become the start command and its first
//! exposed TCP port the app's port (8080 when it exposes none). The instances
//! run on the image itself (`docker://…` as their rootfs).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::AppsError;
use super::layer::AppLayer;
use super::store::{AppRecord, Droplet};
use crate::executor::logs::now_ns;
use celld_base::guid::new_guid;
use celld_proto as pb;

/// The rootfs URI of the image a user names as cf does (`nginx:1.25`,
/// `registry:5000/team/app@sha256:…`), checked.
pub fn docker_rootfs(image: &str) -> Result<String, AppsError> {
    let image = image.trim();
    if image.contains("://") {
        return Err(AppsError::InvalidArgument(format!(
            "docker image {image:?}: give the image as REPOSITORY[:TAG] or REPOSITORY@sha256:DIGEST, without a scheme"
        )));
    }
    let uri = format!("docker://{image}");
    match celld_image::ImageRef::parse(&uri) {
        Ok(Some(_)) => Ok(uri),
        Ok(None) => Err(AppsError::InvalidArgument(format!("docker image {image:?} is not an image reference"))),
        Err(e) => Err(AppsError::InvalidArgument(format!("docker image {image:?}: {e}"))),
    }
}

/// CC's start command of a Docker app: the entrypoint, then the command.
pub fn start_command(config: &celld_image::ImageConfig) -> String {
    config.entrypoint.iter().chain(&config.cmd).map(String::as_str).collect::<Vec<_>>().join(" ")
}

impl AppLayer {
    /// Stages a Docker app: its image's config becomes its droplet.
    pub(super) async fn stage_docker(
        self: &Arc<Self>,
        app: AppRecord,
        tx: mpsc::Sender<pb::StagingEvent>,
    ) -> Result<(), AppsError> {
        use crate::staging::service::{event, log_event};
        use pb::staging_event::Event as E;
        let rootfs = docker_rootfs(&app.docker_image)?;
        let guid = new_guid();
        let this = self.clone();
        tokio::spawn(async move {
            let log = |line: String, stderr: bool| log_event(&guid, line, stderr, now_ns());
            let mut listening =
                tx.send(event(E::Started(pb::StagingStarted { staging_guid: guid.clone() }))).await.is_ok();
            let mut say = async |e: pb::StagingEvent| {
                if listening {
                    listening = tx.send(e).await.is_ok();
                }
            };
            say(log("Staging...".into(), false)).await;
            say(log(format!("Fetching the metadata of docker image {}", app.docker_image), false)).await;
            let creds =
                (!app.docker_username.is_empty()).then(|| (app.docker_username.clone(), app.docker_password.clone()));
            match this.stager.image_config(&rootfs, creds).await {
                Ok(config) => {
                    let port = config.exposed_ports.first().map_or(super::APP_PORT, |p| u32::from(*p));
                    let command = start_command(&config);
                    let metadata = serde_json::json!({
                        "cmd": config.cmd,
                        "entrypoint": config.entrypoint,
                        "workdir": config.working_dir,
                        "user": config.user,
                        "ports": [{"Port": port, "Protocol": "tcp"}],
                    });
                    let result = serde_json::json!({
                        "lifecycle_type": "docker",
                        "lifecycle_metadata": {"docker_image": app.docker_image},
                        "process_types": {"web": command},
                        "execution_metadata": metadata.to_string(),
                    });
                    let droplet = Droplet {
                        start_command: command.clone(),
                        process_types: [("web".to_string(), command.clone())].into(),
                        result_json: result.to_string(),
                        created_at: now_ns(),
                        docker_rootfs: rootfs,
                        port,
                        ..Default::default()
                    };
                    this.staged(&app.guid, Ok(droplet)).await;
                    say(log("Staging complete".into(), false)).await;
                    say(event(E::Result(pb::StagingResult {
                        staging_guid: guid.clone(),
                        process_types: [("web".to_string(), command.clone())].into(),
                        start_command: command,
                        result_json: result.to_string(),
                        ..Default::default()
                    })))
                    .await;
                }
                Err(e) => {
                    let message = format!("Failed to get the docker image's details: {e}");
                    this.staged(&app.guid, Err(format!("StagingError - {message}"))).await;
                    say(log(message.clone(), true)).await;
                    say(event(E::Failure(pb::StagingFailure {
                        staging_guid: guid.clone(),
                        reason: "StagingError".into(),
                        exit_code: 0,
                        message,
                    })))
                    .await;
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_named_as_cf_does() {
        assert_eq!(docker_rootfs("nginx").unwrap(), "docker://nginx");
        assert_eq!(docker_rootfs("127.0.0.1:5000/team/app:v2").unwrap(), "docker://127.0.0.1:5000/team/app:v2");
        for bad in ["docker://nginx", "", "UPPER/Case", "a b"] {
            assert!(docker_rootfs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_start_command_is_the_entrypoint_then_the_command() {
        let config = celld_image::ImageConfig {
            entrypoint: vec!["/bin/server".into()],
            cmd: vec!["--port".into(), "9000".into()],
            ..Default::default()
        };
        assert_eq!(start_command(&config), "/bin/server --port 9000");
    }
}
