//! cellctl's staging commands, over the Stager gRPC service: `buildpacks`,
//! `create-buildpack`, `delete-buildpack`, `stage`, `download-droplet`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use celld_proto as pb;
use celld_proto::stager_client::StagerClient;

const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach celld's gRPC API at {addr}: {source} (is celld running? set --api or CELLD_API)")]
    Connect { addr: String, source: tonic::transport::Error },
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Usage(String),
    /// Staging ended in failure; the exit code for scripts.
    #[error("staging failed: {reason} - {message}")]
    StagingFailed { reason: String, message: String, exit_code: i32 },
}

impl CliError {
    /// What cellctl exits with: a buildpack's exit status (222-226) when one
    /// failed, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::StagingFailed { exit_code, .. } if (222..=226).contains(exit_code) => *exit_code,
            _ => 1,
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io { path: path.display().to_string(), source }
}

pub async fn connect(addr: &str) -> Result<StagerClient<Channel>, CliError> {
    let endpoint =
        celld_transport::grpc::endpoint(addr).map_err(|e| CliError::Usage(format!("--api {addr:?}: {e}")))?;
    let ch = endpoint.connect().await.map_err(|source| CliError::Connect { addr: addr.to_string(), source })?;
    Ok(StagerClient::new(ch).max_decoding_message_size(8 << 20))
}

/// Streams `file` as `data` parts after `first`, with a progress bar.
fn upload_stream<T: Send + 'static>(
    file: PathBuf,
    first: T,
    data: fn(Vec<u8>) -> T,
    what: &str,
) -> Result<ReceiverStream<T>, CliError> {
    let mut f = std::fs::File::open(&file).map_err(io(&file))?;
    let len = f.metadata().map_err(io(&file))?.len();
    let bar = crate::progress::bar(len, what);
    let (tx, rx) = mpsc::channel(16);
    tokio::task::spawn_blocking(move || {
        if tx.blocking_send(first).is_err() {
            return;
        }
        loop {
            let mut buf = vec![0u8; CHUNK];
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    bar.inc(n as u64);
                    if tx.blocking_send(data(buf)).is_err() {
                        break;
                    }
                }
            }
        }
        bar.finish_and_clear();
    });
    Ok(ReceiverStream::new(rx))
}

/// A tar of `dir` (no compression: the cell is near), or `dir` itself if it is
/// already a zip/tar/tgz file.
fn package_file(dir: &Path, scratch: &Path) -> Result<PathBuf, CliError> {
    if dir.is_file() {
        return Ok(dir.to_path_buf());
    }
    if !dir.is_dir() {
        return Err(CliError::Usage(format!("{}: no such directory or package file", dir.display())));
    }
    let f = std::fs::File::create(scratch).map_err(io(scratch))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).map_err(io(dir))?;
    b.into_inner().and_then(|mut w| w.flush()).map_err(io(scratch))?;
    Ok(scratch.to_path_buf())
}

pub async fn buildpacks(addr: &str, json: bool) -> Result<(), CliError> {
    let mut c = connect(addr).await?;
    let list = c.list_buildpacks(pb::ListBuildpacksRequest {}).await?.into_inner().buildpacks;
    if json {
        let v: Vec<serde_json::Value> = list
            .iter()
            .map(|b| {
                serde_json::json!({"position": b.position, "name": b.name, "stack": b.stack, "enabled": b.enabled,
                    "locked": b.locked, "filename": b.filename, "version": b.version, "sha256": b.sha256, "size": b.size})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    println!("{:<9}{:<24}{:<10}{:<9}{:<8}{:<30}version", "position", "name", "stack", "enabled", "locked", "filename");
    for b in list {
        let stack = if b.stack.is_empty() { "" } else { &b.stack };
        println!(
            "{:<9}{:<24}{:<10}{:<9}{:<8}{:<30}{}",
            b.position, b.name, stack, b.enabled, b.locked, b.filename, b.version
        );
    }
    Ok(())
}

/// cf's `create-buildpack NAME PATH POSITION`, with its output; an existing
/// name fails with Cloud Controller's message (move one with `update-buildpack -i`).
pub async fn create_buildpack(addr: &str, name: &str, path: &Path, position: u32, stack: &str) -> Result<(), CliError> {
    println!("Creating buildpack {name} as admin...");
    if position == 0 {
        return Err(CliError::Usage(POSITION_MSG.into()));
    }
    let scratch = std::env::temp_dir().join(format!("cellctl-buildpack-{}.tgz", std::process::id()));
    let file = if path.is_dir() {
        celld_lifecycle::archive::pack_dir(path, &scratch).map_err(|e| CliError::Usage(e.to_string()))?;
        scratch.clone()
    } else {
        path.to_path_buf()
    };
    let filename = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let filename = if path.is_dir() { format!("{filename}.tgz") } else { filename };
    let meta = pb::CreateBuildpackRequest {
        part: Some(pb::create_buildpack_request::Part::Metadata(pb::BuildpackMetadata {
            name: name.to_string(),
            position,
            stack: stack.to_string(),
            filename,
        })),
    };
    let data = |d| pb::CreateBuildpackRequest { part: Some(pb::create_buildpack_request::Part::Data(d)) };
    let res = match connect(addr).await {
        Ok(mut c) => match upload_stream(file, meta, data, "Uploading") {
            Ok(stream) => c.create_buildpack(stream).await.map_err(CliError::from),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&scratch);
    let bp = res?.into_inner();
    // One call creates and uploads; the lines are cf's for its two steps.
    println!("OK\n\nUploading buildpack {name} as admin...\nDone uploading\nOK\n");
    println!("Processing uploaded buildpack {}...\nOK", bp.name);
    Ok(())
}

/// Cloud Controller's message for a position below 1.
const POSITION_MSG: &str = "Position must be greater than or equal to 1";

/// cf's `update-buildpack NAME [-i POSITION] [--enable|--disable]`.
pub async fn update_buildpack(
    addr: &str,
    name: &str,
    position: Option<u32>,
    enabled: Option<bool>,
) -> Result<(), CliError> {
    println!("Updating buildpack {name} as admin...");
    if position == Some(0) {
        return Err(CliError::Usage(POSITION_MSG.into()));
    }
    let req = pb::UpdateBuildpackRequest { name: name.to_string(), position, enabled };
    connect(addr).await?.update_buildpack(req).await?;
    println!("OK");
    Ok(())
}

pub async fn delete_buildpack(addr: &str, name: &str) -> Result<(), CliError> {
    connect(addr).await?.delete_buildpack(pb::DeleteBuildpackRequest { name: name.to_string() }).await?;
    println!("OK: deleted {name}");
    Ok(())
}

pub struct StageArgs {
    pub dir: PathBuf,
    pub app_guid: Option<String>,
    pub buildpacks: Vec<String>,
    pub stack: String,
    pub env: Vec<(String, String)>,
    pub memory_mb: u32,
    pub disk_mb: u32,
    pub timeout_seconds: u32,
}

pub async fn stage(addr: &str, a: StageArgs) -> Result<pb::StagingResult, CliError> {
    let abs = std::fs::canonicalize(&a.dir).map_err(io(&a.dir))?;
    let app_guid = a.app_guid.unwrap_or_else(|| guid_from(&abs.to_string_lossy()));
    let scratch = std::env::temp_dir().join(format!("cellctl-package-{}.tar", std::process::id()));
    let mut c = connect(addr).await?;
    let file = tokio::task::spawn_blocking({
        let (abs, scratch) = (abs.clone(), scratch.clone());
        move || package_file(&abs, &scratch)
    })
    .await
    .map_err(|e| CliError::Usage(e.to_string()))??;
    let meta = pb::UploadPackageRequest {
        part: Some(pb::upload_package_request::Part::Metadata(pb::PackageMetadata {
            app_guid: app_guid.clone(),
            size: std::fs::metadata(&file).map_err(io(&file))?.len(),
        })),
    };
    let data = |d| pb::UploadPackageRequest { part: Some(pb::upload_package_request::Part::Data(d)) };
    let uploaded = c.upload_package(upload_stream(file, meta, data, "Uploading app files")?).await;
    let _ = std::fs::remove_file(&scratch);
    let package = uploaded?.into_inner();
    println!("Uploaded app package {} ({} bytes)", package.key, package.size);
    let req = pb::StageRequest {
        app_guid,
        package_key: package.key,
        stack: a.stack,
        buildpacks: a.buildpacks,
        env: a.env.into_iter().map(|(name, value)| pb::EnvironmentVariable { name, value }).collect(),
        memory_mb: a.memory_mb,
        disk_mb: a.disk_mb,
        timeout_seconds: a.timeout_seconds,
        app_name: abs.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        ..Default::default()
    };
    let mut events = c.stage(req).await?.into_inner();
    let mut bar = crate::progress::StagingBar::default();
    while let Some(ev) = events.message().await? {
        use pb::staging_event::Event;
        match ev.event {
            Some(Event::Started(s)) => println!("Staging app (staging guid {})...", s.staging_guid),
            Some(Event::Log(l)) => bar.println(&format!("   {}", l.message)),
            Some(Event::Progress(p)) => bar.update(&p),
            Some(Event::Result(r)) => return Ok(r),
            Some(Event::Failure(f)) => {
                return Err(CliError::StagingFailed { reason: f.reason, message: f.message, exit_code: f.exit_code });
            }
            None => {}
        }
    }
    Err(CliError::Usage("the staging stream ended without a result; ask GetStaging for it".into()))
}

pub fn print_result(r: &pb::StagingResult) {
    println!("Staging complete");
    println!("droplet:            {}", r.droplet_key);
    println!("droplet sha256:     {} ({} bytes)", r.droplet_sha256, r.droplet_size);
    println!("detected buildpack: {}", r.detected_buildpack);
    let bps: Vec<String> = r
        .buildpacks
        .iter()
        .map(|b| if b.version.is_empty() { b.name.clone() } else { format!("{} {}", b.name, b.version) })
        .collect();
    println!("buildpacks:         {}", bps.join(", "));
    println!("stack:              {}", r.stack);
    let mut types: Vec<_> = r.process_types.iter().collect();
    types.sort();
    for (t, cmd) in types {
        println!("process {t}: {cmd}");
    }
    println!("start command:      {}", r.start_command);
}

pub async fn download_droplet(addr: &str, key: &str, out: &Path) -> Result<(), CliError> {
    let resp =
        connect(addr).await?.download_droplet(pb::DownloadDropletRequest { droplet_key: key.to_string() }).await?;
    let size =
        resp.metadata().get(celld_transport::grpc::SIZE_METADATA).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut stream = resp.into_inner();
    let bar = crate::progress::bar(size.unwrap_or(0), "Downloading droplet");
    let tmp = out.with_extension("part");
    // The partial file goes on any failure below, whatever returns early.
    struct Partial<'a>(&'a Path, bool);
    impl Drop for Partial<'_> {
        fn drop(&mut self) {
            if !self.1 {
                let _ = std::fs::remove_file(self.0);
            }
        }
    }
    let mut partial = Partial(&tmp, false);
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut got = 0u64;
    while let Some(chunk) = stream.message().await? {
        f.write_all(&chunk.data).map_err(io(&tmp))?;
        got += chunk.data.len() as u64;
        bar.set_position(got);
    }
    bar.finish_and_clear();
    std::fs::rename(&tmp, out).map_err(io(out))?;
    partial.1 = true;
    // Diego's words for a finished download, on stderr so stdout stays free.
    eprintln!("Downloaded droplet ({})", celld_base::size::byte_size(got));
    Ok(())
}

/// A guid-shaped id derived from a name (the default app guid of a directory,
/// so the same directory gets its build cache back).
pub fn guid_from(name: &str) -> String {
    use sha2::{Digest, Sha256};
    celld_base::guid::guid_shaped(&Sha256::digest(name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_guids_from_directories_are_stable() {
        assert_eq!(guid_from("/a"), guid_from("/a"));
        assert_ne!(guid_from("/a"), guid_from("/b"));
        assert_eq!(guid_from("/a").len(), 36);
    }
}
