//! `push`: checks the flags, zips the app's files, creates or updates the app,
//! uploads the package in chunks with a progress bar, then stages and starts it.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::input::size;
use super::starting::{stage, wait_started};
use crate::api::{Client, Ctx, Fail};
use crate::package::{self, Source, TempFile};
use celld_proto as pb;

const CHUNK: usize = 64 * 1024;

#[derive(Args, Debug, Default)]
pub struct PushArgs {
    /// The app's directory, or a .zip of its files; with -p or --docker-image, the app's name.
    /// (Default: the manifest's `path`, else its directory.)
    #[arg(value_name = "DIR|ZIP|NAME")]
    pub path: Option<PathBuf>,
    /// The app's directory or .zip (cf's `push NAME -p PATH`); the positional argument is then the name.
    #[arg(short = 'p', long = "path", value_name = "PATH", conflicts_with = "docker_image")]
    pub app_path: Option<PathBuf>,
    /// The manifest to apply (default: manifest.yml in DIR, or in the current directory).
    #[arg(short = 'f', long = "manifest", value_name = "FILE", conflicts_with = "no_manifest")]
    pub manifest: Option<PathBuf>,
    /// Ignore the app's manifest.yml.
    #[arg(long)]
    pub no_manifest: bool,
    /// The app's name (default: the directory's name, or the zip's, made a valid host name).
    #[arg(short = 'n', long)]
    pub name: Option<String>,
    /// Buildpack to use, skipping detection (repeat for multi-buildpack; `default` to detect again).
    #[arg(short = 'b', long = "buildpack", value_name = "BUILDPACK")]
    pub buildpacks: Vec<String>,
    /// Number of instances.
    #[arg(short = 'i', long)]
    pub instances: Option<u32>,
    /// Memory limit per instance, e.g. 256M or 1G.
    #[arg(short = 'm', long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Disk limit per instance, e.g. 512M or 1G.
    #[arg(short = 'k', long, value_name = "SIZE")]
    pub disk: Option<String>,
    /// Health check: port (TCP connect), http (GET of --endpoint) or process (it stays up).
    #[arg(short = 'u', long = "health-check-type", value_name = "TYPE")]
    pub health_check_type: Option<String>,
    /// Path the http health check GETs (default /).
    #[arg(long, value_name = "PATH")]
    pub endpoint: Option<String>,
    /// Seconds an instance has to become healthy when it starts (default 60).
    #[arg(short = 't', long = "timeout", value_name = "SECONDS")]
    pub timeout: Option<u32>,
    /// Start command (default: the Procfile's or the buildpack's).
    #[arg(short = 'c', long)]
    pub command: Option<String>,
    /// Stack to stage and run on (default: the cell's).
    #[arg(short = 's', long)]
    pub stack: Option<String>,
    /// Upload the files but neither stage nor start the app.
    #[arg(long)]
    pub no_start: bool,
    /// Create the app without a route (only when the app is created).
    #[arg(long, conflicts_with = "hostname")]
    pub no_route: bool,
    /// Host name of the app's route (default: the app's name; only when the app is created).
    #[arg(long, value_name = "HOST")]
    pub hostname: Option<String>,
    /// Run this Docker image instead of staging files (REPOSITORY[:TAG] or REPOSITORY@sha256:DIGEST).
    #[arg(short = 'o', long, value_name = "IMAGE", conflicts_with_all = ["buildpacks", "stack"])]
    pub docker_image: Option<String>,
    /// The image registry's username; the password is read from CF_DOCKER_PASSWORD.
    #[arg(long, value_name = "USER", requires = "docker_image")]
    pub docker_username: Option<String>,
}

/// `push`'s flags, checked: nothing reaches the server unless all are valid.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushPlan {
    pub memory_mb: Option<u32>,
    pub disk_mb: Option<u32>,
    pub health_check_type: Option<String>,
    pub endpoint: Option<String>,
    /// Some(list) replaces the buildpacks; an empty list means detect.
    pub buildpacks: Option<Vec<String>>,
    /// The registry password of --docker-username (from CF_DOCKER_PASSWORD).
    pub docker_password: Option<String>,
}

impl PushPlan {
    pub fn check(a: &PushArgs) -> Result<Self, Fail> {
        let memory_mb = size("memory", &a.memory)?;
        let disk_mb = size("disk", &a.disk)?;
        if let Some(t) = &a.health_check_type {
            if !matches!(t.as_str(), "port" | "http" | "process") {
                return Err(Fail::Usage(format!("health check type {t} is not valid: use port, http or process")));
            }
            if t != "http" && a.endpoint.is_some() {
                return Err(Fail::Usage(format!("--endpoint is for http health checks, not {t}: add -u http")));
            }
        }
        if let Some(e) = &a.endpoint {
            if !e.starts_with('/') {
                return Err(Fail::Usage(format!("health check endpoint {e} is not valid: it must start with /")));
            }
        }
        if a.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(Fail::Usage("the app name is empty".into()));
        }
        if a.app_path.is_some() && a.name.is_some() {
            return Err(Fail::Usage(
                "push: with -p PATH the app's name is the argument before it; drop -n (or -p and give DIR)".into(),
            ));
        }
        // cf's way back to detection: `-b default` (or `null`).
        let buildpacks = match a.buildpacks.as_slice() {
            [] => None,
            [one] if one == "default" || one == "null" => Some(Vec::new()),
            list => Some(list.to_vec()),
        };
        let docker_password = match &a.docker_username {
            Some(_) => match std::env::var("CF_DOCKER_PASSWORD") {
                Ok(p) if !p.is_empty() => Some(p),
                _ => {
                    return Err(Fail::Usage(
                        "Environment variable CF_DOCKER_PASSWORD not set: it holds the password of --docker-username"
                            .into(),
                    ));
                }
            },
            None => None,
        };
        Ok(Self {
            memory_mb,
            disk_mb,
            health_check_type: a.health_check_type.clone(),
            endpoint: a.endpoint.clone(),
            buildpacks,
            docker_password,
        })
    }

    pub(super) fn update(&self, a: &PushArgs, app: pb::AppRef) -> Option<pb::UpdateAppRequest> {
        let req = pb::UpdateAppRequest {
            app: Some(app),
            instances: a.instances,
            memory_mb: self.memory_mb,
            disk_mb: self.disk_mb,
            health_check_type: self.health_check_type.clone(),
            health_check_endpoint: self.endpoint.clone(),
            health_check_timeout: a.timeout,
            command: a.command.clone(),
            set_buildpacks: self.buildpacks.is_some(),
            buildpacks: self.buildpacks.clone().unwrap_or_default(),
            stack: a.stack.clone(),
            docker_image: a.docker_image.clone(),
            docker_username: a.docker_username.clone(),
            docker_password: self.docker_password.clone(),
            ..Default::default()
        };
        // Nothing given: no update (and no audit event).
        let empty = pb::UpdateAppRequest { app: req.app.clone(), ..Default::default() };
        (req != empty).then_some(req)
    }

    fn create(&self, a: &PushArgs, space: &str, name: &str) -> pb::CreateAppRequest {
        pb::CreateAppRequest {
            space: space.to_string(),
            name: name.to_string(),
            instances: a.instances.unwrap_or(1),
            memory_mb: self.memory_mb.unwrap_or(0),
            disk_mb: self.disk_mb.unwrap_or(0),
            health_check_type: self.health_check_type.clone().unwrap_or_default(),
            health_check_endpoint: self.endpoint.clone().unwrap_or_default(),
            health_check_timeout: a.timeout.unwrap_or(0),
            command: a.command.clone().unwrap_or_default(),
            buildpacks: self.buildpacks.clone().unwrap_or_default(),
            stack: a.stack.clone().unwrap_or_default(),
            hostname: a.hostname.clone().unwrap_or_default(),
            no_route: a.no_route,
            docker_image: a.docker_image.clone().unwrap_or_default(),
            docker_username: a.docker_username.clone().unwrap_or_default(),
            docker_password: self.docker_password.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// The file to upload, and the temp file to remove after (a zipped directory).
pub(super) type Packaged = (PathBuf, Option<TempFile>);

/// Zips a directory to a temp file off the async thread; a zip is used as is.
pub(super) async fn package(source: &Source) -> Result<Packaged, Fail> {
    match source {
        Source::Zip(p) => Ok((p.clone(), None)),
        Source::Dir(dir) => {
            println!("Packaging files to upload...");
            let dir = dir.clone();
            let (tmp, packed) = tokio::task::spawn_blocking(move || {
                let (tmp, f) = TempFile::create("cellctl-push")?;
                package::zip_dir(&dir, f).map(|p| (tmp, p))
            })
            .await
            .map_err(|e| Fail::Failed(format!("packaging: {e}")))?
            .map_err(Fail::Usage)?;
            for s in &packed.skipped {
                eprintln!("warning: not uploading {s}");
            }
            if packed.files == 0 {
                return Err(Fail::Usage(format!(
                    "push: {} has no files to upload (after .cfignore)",
                    source_path(source).display()
                )));
            }
            Ok((tmp.path.clone(), Some(tmp)))
        }
    }
}

fn source_path(s: &Source) -> &std::path::Path {
    match s {
        Source::Dir(p) | Source::Zip(p) => p,
    }
}

/// The UploadPackage stream: the app first, then the file in 64 KiB chunks,
/// read on a blocking thread as the server takes them.
fn upload_stream(file: PathBuf, app: pb::AppRef) -> Result<ReceiverStream<pb::UploadAppPackageRequest>, Fail> {
    use pb::upload_app_package_request::Part;
    let mut f = std::fs::File::open(&file).map_err(|e| Fail::Usage(format!("cannot read {}: {e}", file.display())))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = crate::progress::bar(len, "Uploading files");
    let (tx, rx) = mpsc::channel(16);
    tokio::task::spawn_blocking(move || {
        // The size up front lets the server refuse an oversized package at once.
        if tx.blocking_send(pb::UploadAppPackageRequest { part: Some(Part::App(app)), size: len }).is_err() {
            return;
        }
        loop {
            let mut buf = vec![0u8; CHUNK];
            match f.read(&mut buf) {
                // A read error ends the stream short; the server refuses the truncated zip.
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    bar.inc(n as u64);
                    if tx.blocking_send(pb::UploadAppPackageRequest { part: Some(Part::Data(buf)), size: 0 }).is_err() {
                        break;
                    }
                }
            }
        }
        bar.finish_and_clear();
    });
    Ok(ReceiverStream::new(rx))
}

pub async fn push(ctx: &Ctx, mut a: PushArgs) -> Result<(), Fail> {
    let plan = PushPlan::check(&a)?;
    // cf's `push NAME -p PATH`: the files are PATH and the positional argument is the name.
    if let Some(files) = a.app_path.take() {
        a.name = a.path.take().map(|n| n.to_string_lossy().into_owned());
        a.path = Some(files);
    }
    if let Some(manifest) = super::push_manifest::manifest_file(&a)? {
        return super::push_manifest::push_manifest(ctx, &a, &plan, &manifest).await;
    }
    let Some(path) = a.path.clone() else {
        return Err(Fail::Usage(
            "push: give the app's directory (cellctl push DIR), or a manifest with -f FILE".into(),
        ));
    };
    // A Docker app has no files: the positional argument is its name.
    let source = match &a.docker_image {
        Some(_) => None,
        None => Some(package::inspect(&path).map_err(Fail::Usage)?),
    };
    let name = match (&a.name, &source) {
        (Some(n), _) if n.trim().is_empty() => return Err(Fail::Usage("the app name is empty".into())),
        (Some(n), _) => n.trim().to_string(),
        (None, Some(source)) => package::default_name(source).ok_or_else(|| {
            Fail::Usage(format!("push: cannot make an app name from {}; pass -n NAME", path.display()))
        })?,
        (None, None) => path.to_string_lossy().trim().to_string(),
    };
    println!("Pushing app {name} to space {}...", ctx.space);
    // Files are checked before the app is created.
    let packaged = match &source {
        Some(source) => Some(package(source).await?),
        None => None,
    };
    let mut c = ctx.connect().await?;
    let app_ref = ctx.app_ref(&name);
    let mut created = false;
    let app = match c.get_app(app_ref.clone()).await {
        Ok(d) => {
            let existing = d.into_inner().app.unwrap_or_default();
            if a.hostname.is_some() || a.no_route {
                eprintln!(
                    "warning: --hostname and --no-route only apply when an app is created; {name} keeps its routes"
                );
            }
            stop_if_started(ctx, &mut c, &existing).await?;
            match plan.update(&a, app_ref.clone()) {
                Some(req) => {
                    println!("Updating app {name}...");
                    c.update_app(req).await.map_err(|s| ctx.fail(s))?.into_inner()
                }
                None => existing,
            }
        }
        Err(s) if s.code() == tonic::Code::NotFound => {
            println!("Creating app {name}...");
            created = true;
            c.create_app(plan.create(&a, &ctx.space, &name)).await.map_err(|s| ctx.fail(s))?.into_inner()
        }
        Err(s) => return Err(ctx.fail(s)),
    };
    upload_stage_start(ctx, &mut c, &app, packaged, created, a.no_start).await
}

/// cf stops a started app before giving it new files.
pub(super) async fn stop_if_started(ctx: &Ctx, c: &mut Client, app: &pb::App) -> Result<(), Fail> {
    if app.state == "STARTED" {
        println!("Stopping app {}...", app.name);
        c.stop_app(ctx.app_ref(&app.name)).await.map_err(|s| ctx.fail(s))?;
    }
    Ok(())
}

/// Uploads the app's files (if it has any), then stages and starts it and
/// waits for it as cf does; `created` apps that got no files are deleted.
pub(super) async fn upload_stage_start(
    ctx: &Ctx,
    c: &mut Client,
    app: &pb::App,
    packaged: Option<Packaged>,
    created: bool,
    no_start: bool,
) -> Result<(), Fail> {
    let name = &app.name;
    let app_ref = ctx.app_ref(name);
    if let Some((file, _tmp)) = packaged {
        println!("Uploading files...");
        let uploaded = match upload_stream(file, app_ref.clone()) {
            Ok(stream) => c.upload_package(stream).await.map(|_| ()).map_err(|s| ctx.fail(s)),
            Err(e) => Err(e),
        };
        if let Err(e) = uploaded {
            // A push that created the app and could not give it files leaves nothing behind.
            if created {
                let _ = c.delete_app(app_ref.clone()).await;
            }
            return Err(e);
        }
    }
    if no_start {
        println!("OK\n\nApp {name} was not started (--no-start): use 'cellctl start {name}'");
        return Ok(());
    }
    stage(ctx, c, name).await?;
    println!("\nStarting app {name}...");
    c.start_app(app_ref).await.map_err(|s| ctx.fail(s))?;
    wait_started(ctx, c, name, app.health_check_timeout).await
}

#[cfg(test)]
mod tests {
    use super::super::mock::{self, app_dir, ctx_for};
    use super::*;
    use clap::{Parser, Subcommand};

    /// `push` alone, as the command line gives it (the other commands are
    /// parsed in `apps`' tests).
    #[derive(Parser, Debug)]
    struct T {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand, Debug)]
    enum Cmd {
        Push(PushArgs),
    }

    fn parse(args: &[&str]) -> Result<PushArgs, clap::Error> {
        T::try_parse_from(std::iter::once("cellctl").chain(args.iter().copied())).map(|t| match t.cmd {
            Cmd::Push(p) => p,
        })
    }

    #[test]
    fn push_flags_parse() {
        let p = parse(&[
            "push",
            "./app",
            "-n",
            "hello",
            "-b",
            "a_bp",
            "-b",
            "b_bp",
            "-i",
            "3",
            "-m",
            "512M",
            "-k",
            "2G",
            "-u",
            "http",
            "--endpoint",
            "/health",
            "-t",
            "120",
            "-c",
            "./run",
            "-s",
            "tiny",
            "--no-start",
            "--hostname",
            "hi",
        ])
        .unwrap();
        assert_eq!(p.path, Some(PathBuf::from("./app")));
        assert_eq!(p.name.as_deref(), Some("hello"));
        assert_eq!(p.buildpacks, ["a_bp", "b_bp"]);
        assert_eq!((p.instances, p.timeout), (Some(3), Some(120)));
        assert!(p.no_start && !p.no_route);
        let plan = PushPlan::check(&p).unwrap();
        assert_eq!((plan.memory_mb, plan.disk_mb), (Some(512), Some(2048)));
        let create = plan.create(&p, "dev", "hello");
        assert_eq!((create.instances, create.memory_mb, create.hostname.as_str()), (3, 512, "hi"));
        assert_eq!(create.health_check_endpoint, "/health");
        assert!(parse(&["push", "x", "--no-route", "--hostname", "h"]).is_err());
        // The path may come from a manifest instead.
        assert_eq!(parse(&["push", "-f", "m.yml"]).unwrap().manifest, Some(PathBuf::from("m.yml")));
        assert!(parse(&["push", "-f", "m.yml", "--no-manifest"]).is_err());
    }

    #[test]
    fn push_refuses_bad_flags_with_one_line() {
        let check = |args: &[&str]| PushPlan::check(&parse(args).unwrap());
        assert_eq!(
            check(&["push", "x", "-m", "256X"]),
            Err(Fail::Usage("memory 256X is not valid: use a number with M or G, e.g. 256M or 1G".into()))
        );
        assert_eq!(
            check(&["push", "x", "-k", "1T"]),
            Err(Fail::Usage("disk 1T is not valid: use a number with M or G, e.g. 256M or 1G".into()))
        );
        assert_eq!(
            check(&["push", "x", "-u", "tcp"]),
            Err(Fail::Usage("health check type tcp is not valid: use port, http or process".into()))
        );
        assert!(check(&["push", "x", "-u", "port", "--endpoint", "/h"]).is_err());
        assert!(check(&["push", "x", "--endpoint", "health"]).is_err());
        assert!(check(&["push", "x", "-n", " "]).is_err());
        assert_eq!(check(&["push", "x", "-i", "0"]).map(|p| p.memory_mb), Ok(None));
        assert_eq!(check(&["push", "x", "-b", "default"]).map(|p| p.buildpacks), Ok(Some(vec![])));
    }

    #[test]
    fn push_updates_only_what_was_given() {
        let app = pb::AppRef { space: "dev".into(), name: "a".into() };
        let p = PushArgs { path: Some("x".into()), ..Default::default() };
        assert_eq!(PushPlan::check(&p).unwrap().update(&p, app.clone()), None);
        let p =
            PushArgs { path: Some("x".into()), instances: Some(0), memory: Some("1G".into()), ..Default::default() };
        let u = PushPlan::check(&p).unwrap().update(&p, app).unwrap();
        assert_eq!((u.instances, u.memory_mb, u.disk_mb, u.set_buildpacks), (Some(0), Some(1024), None, false));
    }

    #[tokio::test]
    async fn push_creates_uploads_stages_starts_and_waits() {
        let m = mock::Mock::default();
        let ctx = ctx_for(&m).await;
        let dir = app_dir("new");
        let args = PushArgs { path: Some(dir.clone()), memory: Some("128M".into()), ..Default::default() };
        push(&ctx, args).await.unwrap();
        let s = m.0.lock().unwrap();
        let name = package::sanitize_name(&dir.file_name().unwrap().to_string_lossy());
        assert_eq!(
            s.calls,
            [
                "get".to_string(),
                format!("create {name} i=1 m=128 host="),
                format!("upload dev/{name}"),
                "stage".into(),
                "start".into(),
                "get".into(),
            ]
        );
        // The whole zip arrived, in chunks, with its size declared up front.
        assert_eq!(s.declared_size, s.uploaded.len() as u64);
        assert!(s.uploaded.len() > 3 * CHUNK);
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(s.uploaded.clone())).unwrap();
        let mut body = String::new();
        z.by_name("index.html").unwrap().read_to_string(&mut body).unwrap();
        assert_eq!(body, "<h1>hi</h1>");
        assert_eq!(z.by_name("data.bin").unwrap().size(), 200_000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn push_to_a_started_app_stops_it_and_updates_only_the_given_flags() {
        let m = mock::Mock::default();
        m.0.lock().unwrap().app =
            Some(pb::App { name: "web".into(), state: "STARTED".into(), instances: 1, ..Default::default() });
        let ctx = ctx_for(&m).await;
        let dir = app_dir("update");
        push(
            &ctx,
            PushArgs { path: Some(dir.clone()), name: Some("web".into()), instances: Some(2), ..Default::default() },
        )
        .await
        .unwrap();
        let calls = m.0.lock().unwrap().calls.clone();
        assert_eq!(
            calls,
            ["get", "stop", "update i=Some(2) m=None bp=false", "upload dev/web", "stage", "start", "get"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn push_name_dash_p_path_takes_the_name_first_as_cf_does() {
        let p = parse(&["push", "web", "-p", "./app"]).unwrap();
        assert_eq!((p.path, p.app_path), (Some(PathBuf::from("web")), Some(PathBuf::from("./app"))));
        assert_eq!(parse(&["push", "web", "--path", "a.zip"]).unwrap().app_path, Some(PathBuf::from("a.zip")));
        assert!(parse(&["push", "web", "-p", "./app", "-o", "img"]).is_err());
        assert!(PushPlan::check(&parse(&["push", "web", "-p", "./app", "-n", "other"]).unwrap()).is_err());

        let m = mock::Mock::default();
        let ctx = ctx_for(&m).await;
        let dir = app_dir("dash-p");
        push(&ctx, PushArgs { path: Some("web".into()), app_path: Some(dir.clone()), ..Default::default() })
            .await
            .unwrap();
        let calls = m.0.lock().unwrap().calls.clone();
        assert_eq!(calls[..3], ["get".to_string(), "create web i=1 m=0 host=".into(), "upload dev/web".into()]);
        // A missing PATH is refused before anything reaches the server.
        let m = mock::Mock::default();
        let ctx = ctx_for(&m).await;
        let missing =
            PushArgs { path: Some("web".into()), app_path: Some("/nonexistent/app".into()), ..Default::default() };
        assert!(matches!(push(&ctx, missing).await, Err(Fail::Usage(_))));
        assert!(m.0.lock().unwrap().calls.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn push_reports_staging_failures_and_crashes() {
        let m = mock::Mock::default();
        m.0.lock().unwrap().fail_staging = true;
        let ctx = ctx_for(&m).await;
        let dir = app_dir("fail");
        let r = push(&ctx, PushArgs { path: Some(dir.clone()), name: Some("x".into()), ..Default::default() }).await;
        assert_eq!(
            r,
            Err(Fail::Failed(
                "staging failed: NoAppDetectedError - None of the buildpacks detected a compatible application".into()
            ))
        );
        assert!(!m.0.lock().unwrap().calls.contains(&"start".to_string()));

        let m = mock::Mock::default();
        m.0.lock().unwrap().crash = true;
        let ctx = ctx_for(&m).await;
        let r = push(&ctx, PushArgs { path: Some(dir.clone()), name: Some("x".into()), ..Default::default() }).await;
        let Err(Fail::Failed(msg)) = r else { panic!("a crash passed: {r:?}") };
        assert!(msg.starts_with("Start unsuccessful\n"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
