//! Docker-image apps, as CF's docker lifecycle runs them: no package and no
//! buildpacks. "Staging" reads the image's config from its registry: its
//! entrypoint and command become the start command and its first exposed TCP
//! port the app's port (8080 when it exposes none). It also pulls the layers
//! into the cell's image store, with progress on the staging stream, so the
//! push shows the download and the first start finds the image. The
//! instances run on the image itself (`docker://…` as their rootfs).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celld_base::size::byte_size;
use celld_image::LayerProgress;
use tokio::sync::mpsc;

use super::AppsError;
use super::layer::AppLayer;
use super::store::{AppRecord, Droplet};
use crate::executor::logs::now_ns;
use crate::staging::service::{event, log_event};
use crate::staging::stager::Stager;
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
            let fetched = match this.stager.image_config(&rootfs, creds.clone()).await {
                Ok(config) => pull_reporting(&this.stager, &rootfs, &app.docker_image, creds, &guid, &tx)
                    .await
                    .map(|()| config)
                    .map_err(|e| format!("Failed to download the docker image: {e}")),
                Err(e) => Err(format!("Failed to get the docker image's details: {e}")),
            };
            match fetched {
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
                Err(message) => {
                    tracing::warn!(app_guid = %app.guid, %message, "docker staging failed");
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

/// How often the staging stream hears how far a pull is.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What a pull's callback has seen, per layer digest.
type Seen = Arc<Mutex<BTreeMap<String, LayerProgress>>>;

/// Pulls a Docker app's image into the store, telling the staging stream: a
/// line when it starts, a line per layer once it is in (with its size), a
/// progress event every [`PROGRESS_EVERY`] for a bar, and the total at the
/// end. A listener gone away only stops the telling.
async fn pull_reporting(
    stager: &Stager,
    rootfs: &str,
    image: &str,
    creds: Option<(String, String)>,
    guid: &str,
    tx: &mpsc::Sender<pb::StagingEvent>,
) -> Result<(), String> {
    let seen: Seen = Arc::default();
    let progress: celld_image::Progress = {
        let seen = seen.clone();
        Arc::new(move |p: &LayerProgress| {
            seen.lock().unwrap_or_else(|e| e.into_inner()).insert(p.digest.clone(), p.clone());
        })
    };
    let _ = tx.send(log_event(guid, format!("Downloading docker image {image}..."), false, now_ns())).await;
    let mut announced = HashSet::new();
    let pull = stager.pull_image(rootfs, creds, progress);
    tokio::pin!(pull);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let result = loop {
        tokio::select! {
            r = &mut pull => break r,
            _ = tick.tick() => {
                report(&seen, &mut announced, guid, tx).await;
            }
        }
    };
    let total = report(&seen, &mut announced, guid, tx).await;
    let unpacked = result.map_err(|e| e.to_string())?;
    // A store that had the image pulls nothing and reports no layer.
    let line = if total == 0 {
        format!("Using the cell's copy of docker image {image} ({})", byte_size(unpacked))
    } else {
        format!("Downloaded docker image {image} ({})", byte_size(total))
    };
    let _ = tx.send(log_event(guid, line, false, now_ns())).await;
    Ok(())
}

/// Sends the lines of layers newly in and one progress event; the bytes of
/// every layer seen so far.
async fn report(seen: &Seen, announced: &mut HashSet<String>, guid: &str, tx: &mpsc::Sender<pb::StagingEvent>) -> u64 {
    let (lines, done, total) = progress_lines(&seen.lock().unwrap_or_else(|e| e.into_inner()), announced);
    for line in lines {
        let _ = tx.send(log_event(guid, line, false, now_ns())).await;
    }
    if total > 0 {
        let p = pb::StagingProgress { what: "Downloading docker image".into(), done_bytes: done, total_bytes: total };
        let _ = tx.send(event(pb::staging_event::Event::Progress(p))).await;
    }
    total
}

/// The lines for layers finished since `announced` (which it updates), and
/// the bytes done and expected over every layer seen.
fn progress_lines(seen: &BTreeMap<String, LayerProgress>, announced: &mut HashSet<String>) -> (Vec<String>, u64, u64) {
    let mut lines = Vec::new();
    let (mut done, mut total) = (0u64, 0u64);
    for (digest, p) in seen {
        done = done.saturating_add(p.done.min(p.total));
        total = total.saturating_add(p.total);
        if p.done >= p.total && announced.insert(digest.clone()) {
            let short: String = digest.trim_start_matches("sha256:").chars().take(12).collect();
            lines.push(if p.cached {
                format!("Layer {short} already present ({})", byte_size(p.total))
            } else {
                format!("Downloaded layer {short} ({})", byte_size(p.total))
            });
        }
    }
    (lines, done, total)
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

#[cfg(test)]
mod progress_tests {
    use super::*;

    fn layer(digest: &str, done: u64, total: u64, cached: bool) -> (String, LayerProgress) {
        (digest.to_string(), LayerProgress { digest: digest.into(), done, total, cached })
    }

    #[test]
    fn a_line_per_finished_layer_once_and_the_sums() {
        let mut seen: BTreeMap<_, _> =
            [layer("sha256:aaaaaaaaaaaaaaaa", 100, 2048, false), layer("sha256:bbbbbbbbbbbbbbbb", 1536, 1536, true)]
                .into();
        let mut announced = HashSet::new();
        let (lines, done, total) = progress_lines(&seen, &mut announced);
        assert_eq!(lines, vec!["Layer bbbbbbbbbbbb already present (1.5K)".to_string()]);
        assert_eq!((done, total), (1636, 3584));
        seen.extend([layer("sha256:aaaaaaaaaaaaaaaa", 2048, 2048, false)]);
        let (lines, done, _) = progress_lines(&seen, &mut announced);
        assert_eq!(lines, vec!["Downloaded layer aaaaaaaaaaaa (2K)".to_string()]);
        assert_eq!(done, 3584);
        // Nothing new: no lines again.
        assert!(progress_lines(&seen, &mut announced).0.is_empty());
        // A server that sent more than the manifest said still sums sanely.
        let over: BTreeMap<_, _> = [layer("sha256:cc", 10, 5, false)].into();
        assert_eq!(progress_lines(&over, &mut HashSet::new()).1, 5);
    }
}
