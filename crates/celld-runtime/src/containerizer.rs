//! Creates, connects to and destroys containers. Owns the runtime helper and the
//! depot; knows nothing of Garden's HTTP side.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use super::RuntimeError;
use super::cgroups::{self, Cgroup};
use super::depot::{ContainerRecord, Depot};
use super::disk::sizes::RootfsSizes;
use super::disk::{DiskConfig, DiskLimit, DiskQuota};
use super::helper::{self, HelperReply, HelperRequest, RootfsMount};
use super::initproto::{self as proto, Reply, Request};
use super::rootfs::{self, Overlay};
use super::spec::{self, ROOT_HOST_ID, SpecInput};
use celld_image::{Credentials, ImageStore, LeasedImage, StoreConfig};
use celld_network::NameFiles;
use garden_api::types::{ContainerSpec, ImageRef};

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub depot: PathBuf,
    pub run_dir: PathBuf,
    pub rootfs_dir: PathBuf,
    pub default_rootfs: String,
    /// The celld executable, re-executed as the runtime helper.
    pub exe: PathBuf,
    /// The helper logs with the daemon's filter.
    pub log_level: String,
    /// pids.max for containers whose spec asks for none (0 = no limit).
    pub default_pids_limit: u64,
    /// The image store's limits and registries (its directory is the depot's).
    pub images: ImageSettings,
    /// How disk limits are enforced.
    pub disk: DiskConfig,
}

/// How images are pulled and how much of them is kept (`--image-store-size`,
/// `--insecure-docker-registry`, `--docker-registry-mirror`).
#[derive(Debug, Clone, Default)]
pub struct ImageSettings {
    /// 0: keep the depot's file system 15 % free.
    pub max_bytes: u64,
    pub insecure_registries: Vec<String>,
    pub registry_mirror: Option<String>,
}

struct HelperConn {
    child: std::process::Child,
    io: BufReader<UnixStream>,
}

pub struct Containerizer {
    cfg: RuntimeConfig,
    depot: Depot,
    /// Parent of every container cgroup of this daemon, unique per depot so that
    /// several daemons can run side by side.
    cgroup_parent: String,
    helper: Mutex<Option<HelperConn>>,
    images: ImageStore,
    /// Where containers write, and the limits on it.
    disk: Arc<DiskQuota>,
    /// Rootfs layers' sizes: disk metrics and limits of scope total count them.
    sizes: Arc<RootfsSizes>,
    /// Destroyed containers' directories (already renamed into the trash),
    /// for the one thread that deletes them.
    trash: std::sync::mpsc::Sender<PathBuf>,
}

pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks since
/// boot; `None` if the process is gone or a zombie (after a daemon restart a dead
/// init may wait for a host pid 1 that does not reap).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl Containerizer {
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        let depot = Depot::new(&cfg.depot);
        check_traversable(&cfg.depot)?;
        // A previous daemon's helper must be gone before anything is swept:
        // killed with its daemon, it may still be finishing a system call
        // (a cgroup mkdir waiting for the cgroup mutex) that would make a
        // cgroup after the sweep looked.
        await_old_helper(&helper_pid_file(&cfg.run_dir));
        // What a previous daemon had not finished deleting.
        let _ = std::fs::remove_dir_all(depot.trash_dir());
        rootfs::clean_cache(&depot.rootfs_cache(), &depot.containers_dir());
        // Host users may not look inside; container root (an unprivileged host
        // uid) must still traverse to its rootfs.
        for (d, mode) in
            [(depot.containers_dir(), 0o711), (depot.trash_dir(), 0o700), (cfg.run_dir.join("init"), 0o700)]
        {
            std::fs::create_dir_all(&d).map_err(|e| RuntimeError::io(&d, e))?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).map_err(|e| RuntimeError::io(&d, e))?;
        }
        // Before the helper starts: its mount namespace copies the host's,
        // which must hold the store's mount.
        let disk = DiskQuota::open(&cfg.depot, &cfg.disk)?;
        tracing::info!("disk limits: {}", disk.describe());
        // Subvolumes of containers whose depot directory is gone (a container
        // with a directory is removed, subvolume and all, by the restore).
        let containers = depot.containers_dir();
        disk.sweep(&|handle| containers.join(handle).is_dir());
        let mut store = StoreConfig::new(depot.root().join("images"));
        store.max_bytes = cfg.images.max_bytes;
        store.insecure_registries = cfg.images.insecure_registries.clone();
        store.registry_mirror = cfg.images.registry_mirror.clone();
        let images = ImageStore::open(store, Arc::new(move || images_in_use(&containers)))?;
        // One deleter, not one per destroy: with many destroys at once,
        // deleters in the trash held the directory locks every destroy's
        // rename into it waits for (and renames across directories take one
        // mutex per file system), which set the pace of draining a cell.
        let (trash, doomed) = std::sync::mpsc::channel::<PathBuf>();
        std::thread::Builder::new()
            .name("depot-trash".into())
            .spawn(move || doomed.iter().for_each(|dir| drop(std::fs::remove_dir_all(dir))))
            .map_err(|e| RuntimeError::io(&depot.trash_dir(), e))?;
        Ok(Self {
            cgroup_parent: format!("/{}", super::cgroup_parent(&cfg.depot)),
            depot,
            cfg,
            helper: Mutex::new(None),
            images,
            disk: Arc::new(disk),
            sizes: Default::default(),
            trash,
        })
    }

    pub fn depot(&self) -> &Depot {
        &self.depot
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// The store of pulled images (`docker://`, `oci://`).
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// What a rootfs URI names: an image, pulled (or found in the store) and
    /// leased with `creds` (empty: anonymous), or a preloaded rootfs or
    /// directory.
    pub(crate) async fn lower_source(&self, uri: &str, creds: &ImageRef) -> Result<Lower, RuntimeError> {
        if !ImageStore::is_image_uri(uri) {
            return Ok(Lower::Rootfs(rootfs::resolve(uri, &self.cfg.rootfs_dir, &self.cfg.default_rootfs)?));
        }
        let creds = (!creds.username.is_empty() || !creds.password.is_empty())
            .then(|| Credentials { username: creds.username.clone(), password: creds.password.clone() });
        Ok(Lower::Image(self.images.pull(uri, creds.as_ref()).await?))
    }

    pub fn disk(&self) -> &DiskQuota {
        &self.disk
    }

    pub fn rootfs_sizes(&self) -> &RootfsSizes {
        &self.sizes
    }

    /// The overlay of container `handle`: its writes in the disk backend's
    /// place, its mount point in the depot.
    pub(crate) fn overlay(&self, handle: &str) -> Overlay {
        let dir = self.depot.container_dir(handle);
        Overlay::with_layers(&self.disk.layers_dir(handle, &dir), &dir)
    }

    fn cgroup_path(&self, handle: &str) -> String {
        format!("{}/{}", self.cgroup_parent, handle)
    }

    fn socket_path(&self, handle: &str) -> PathBuf {
        // Unix socket paths are limited to 108 bytes, handles are not: name the
        // socket by a hash of the handle.
        self.cfg.run_dir.join("init").join(format!("{:016x}.sock", super::fnv1a(handle.as_bytes())))
    }

    pub(crate) async fn helper_call(&self, req: &HelperRequest) -> Result<HelperReply, RuntimeError> {
        let mut guard = self.helper.lock().await;
        // (Re)start the helper if it is not there or has died.
        let alive = guard.as_mut().is_some_and(|h| matches!(h.child.try_wait(), Ok(None)));
        if !alive {
            if let Some(mut old) = guard.take() {
                let _ = old.child.kill();
                let _ = old.child.wait();
            }
            let (child, sock) = helper::spawn(&self.cfg.exe, &self.cfg.depot, &self.cfg.log_level)
                .map_err(|e| RuntimeError::Helper(format!("start: {e}")))?;
            // For the next daemon, should this one die (see `await_old_helper`).
            let pid = child.id() as i32;
            if let Some(started) = process_start_time(pid) {
                let file = helper_pid_file(&self.cfg.run_dir);
                if let Err(e) = std::fs::write(&file, format!("{pid} {started}\n")) {
                    tracing::warn!(file = %file.display(), error = %e, "cannot record the helper's pid");
                }
            }
            sock.set_nonblocking(true).map_err(|e| RuntimeError::Helper(e.to_string()))?;
            let sock = UnixStream::from_std(sock).map_err(|e| RuntimeError::Helper(e.to_string()))?;
            *guard = Some(HelperConn { child, io: BufReader::new(sock) });
        }
        let Some(h) = guard.as_mut() else { return Err(RuntimeError::Helper("not running".into())) };
        let mut line = serde_json::to_vec(req).map_err(|e| RuntimeError::Helper(e.to_string()))?;
        line.push(b'\n');
        let result = async {
            h.io.get_mut().write_all(&line).await?;
            let mut reply = String::new();
            if h.io.read_line(&mut reply).await? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "helper exited"));
            }
            Ok(reply)
        }
        .await;
        match result {
            Ok(reply) => serde_json::from_str(&reply).map_err(|e| RuntimeError::Helper(format!("bad reply: {e}"))),
            Err(e) => {
                *guard = None;
                Err(RuntimeError::Helper(e.to_string()))
            }
        }
    }

    /// Creates and starts a container. On any failure everything made so far is
    /// undone: no mount, cgroup, socket or depot directory stays behind. The
    /// caller saves the record once the container is complete (with its
    /// network): a daemon that dies before then finds a directory without a
    /// record, which it removes as a half-done create.
    /// `names` are the /etc/hosts and /etc/resolv.conf the container gets.
    pub async fn create(
        &self,
        spec: &ContainerSpec,
        grace_time: u64,
        names: Option<NameFiles>,
    ) -> Result<ContainerRecord, RuntimeError> {
        let handle = spec.handle.clone();
        let uri = if spec.image.uri.is_empty() { spec.rootfs.clone() } else { spec.image.uri.clone() };
        if spec.limits.disk_limits.byte_hard > 0 {
            if let Some(why) = self.disk.refuses_limits() {
                return Err(RuntimeError::DiskLimit(why));
            }
        }
        let mut spec = spec.clone();
        // An image is pulled (or found in the store) before anything of the
        // container exists: a pull that fails leaves nothing to undo.
        let lower = self.lower_source(&uri, &spec.image).await?;
        let (source, image_config) = match &lower {
            Lower::Rootfs(source) => (source.clone(), None),
            Lower::Image(image) => {
                // The image's environment first: the spec's own variables win.
                spec.env = image_env(&image.config.env, &spec.env);
                (PathBuf::from(&uri), Some(image.config.clone()))
            }
        };
        let spec = &spec;
        let mut bind_mounts = Vec::new();
        for m in &spec.bind_mounts {
            if m.origin != 0 {
                return Err(RuntimeError::BadRootfs("bind mounts with origin container are not supported".into()));
            }
            if !m.src_path.starts_with('/') || !m.dst_path.starts_with('/') || m.dst_path.contains("..") {
                return Err(RuntimeError::BadRootfs(format!(
                    "bind mount {} -> {}: both paths must be absolute",
                    m.src_path, m.dst_path
                )));
            }
            if std::fs::metadata(&m.src_path).is_err() {
                return Err(RuntimeError::BadRootfs(format!("bind mount source {} does not exist", m.src_path)));
            }
            bind_mounts.push((m.src_path.clone(), m.dst_path.clone(), m.mode == 1));
        }
        let dir = self.depot.container_dir(&handle);
        std::fs::create_dir(&dir).map_err(|e| RuntimeError::io(&dir, e))?;
        let cgroup_path = self.cgroup_path(&handle);
        let socket = self.socket_path(&handle);
        let rec = ContainerRecord {
            handle: handle.clone(),
            spec: spec.clone(),
            properties: spec.properties.clone(),
            grace_time,
            created_at: now_ns(),
            init_pid: 0,
            init_start_time: 0,
            cgroup_path,
            socket,
            rootfs: source.clone(),
            privileged: spec.privileged,
            state: "active".into(),
            network: None,
            image_user: image_config.as_ref().map(|c| c.user.clone()).unwrap_or_default(),
            image_working_dir: image_config.map(|c| c.working_dir).unwrap_or_default(),
        };
        match self.create_in(&rec, &dir, lower, &bind_mounts, names).await {
            Ok(rec) => Ok(rec),
            Err(e) => {
                tracing::warn!(handle = %handle, error = %e, "create failed; cleaning up");
                let _ = self.destroy(&rec).await;
                Err(e)
            }
        }
    }

    async fn create_in(
        &self,
        rec: &ContainerRecord,
        dir: &Path,
        lower: Lower,
        bind_mounts: &[(String, String, bool)],
        names: Option<NameFiles>,
    ) -> Result<ContainerRecord, RuntimeError> {
        let limits = &rec.spec.limits;
        let cpu_shares =
            if limits.cpu_limits.weight > 0 { limits.cpu_limits.weight } else { limits.cpu_limits.limit_in_shares };
        let privileged = rec.privileged;
        let (cache, dir2) = (self.depot.rootfs_cache(), dir.to_path_buf());
        let containers = self.depot.containers_dir();
        let (disk, sizes, overlay) = (self.disk.clone(), self.sizes.clone(), self.overlay(&rec.handle));
        let (handle, disk_limits) = (rec.handle.clone(), limits.disk_limits.clone());
        let spec = spec::build(&SpecInput {
            handle: &rec.handle,
            rootfs: &Overlay::in_dir(dir).merged,
            cgroup_path: &rec.cgroup_path,
            privileged,
            memory_limit: limits.memory_limits.limit_in_bytes,
            cpu_shares,
            pids_max: if limits.pid_limits.max > 0 { limits.pid_limits.max } else { self.cfg.default_pids_limit },
            env: &rec.spec.env,
            bind_mounts,
        })?;
        let started = std::time::Instant::now();
        let etc_files: Vec<(String, String)> =
            names.map(|n| vec![("hosts".into(), n.hosts), ("resolv.conf".into(), n.resolv_conf)]).unwrap_or_default();
        let merged = Overlay::in_dir(dir).merged;
        let (options, lease) = tokio::task::spawn_blocking(move || -> Result<_, RuntimeError> {
            let (lowers, lease) = lower.layers(&cache, &containers, &dir2, !privileged)?;
            // The rootfs counts only against a limit of scope total: an
            // image's size is the store's; a preloaded rootfs is measured
            // (once).
            let rootfs_bytes = match &lease {
                _ if disk_limits.byte_hard == 0 || disk_limits.scope == 1 => 0,
                Some(image) => image.size_bytes,
                None => lowers.iter().map(|l| sizes.usage(l).0).sum(),
            };
            let limit = DiskLimit::for_garden(disk_limits.byte_hard, disk_limits.scope, rootfs_bytes)
                .map_err(|e| RuntimeError::DiskLimit(format!("container {handle}: {e}")))?;
            disk.prepare(&handle, limit)?;
            let options = overlay.prepare(&lowers, (!privileged).then_some(ROOT_HOST_ID))?;
            overlay.write_etc(&lowers, &etc_files, if privileged { 0 } else { ROOT_HOST_ID })?;
            super::depot::write_bundle_config(&dir2, &spec)?;
            Ok((options, lease))
        })
        .await
        .map_err(|e| RuntimeError::Helper(e.to_string()))??;
        let prepared = started.elapsed();
        let reply = self
            .helper_call(&HelperRequest::Create {
                id: rec.handle.clone(),
                bundle: dir.to_path_buf(),
                socket: rec.socket.clone(),
                rootfs: RootfsMount { merged, options },
                seccomp: !privileged,
            })
            .await?;
        let pid = match reply {
            HelperReply::Created { pid } => pid,
            HelperReply::Failed { message } | HelperReply::ProcessFailed { message, .. } => {
                return Err(RuntimeError::Helper(message));
            }
            HelperReply::PeaStarted { .. } => return Err(RuntimeError::Helper("unexpected reply to a create".into())),
        };
        drop(lease);
        let mut rec = rec.clone();
        rec.init_pid = pid;
        rec.init_start_time = process_start_time(pid).ok_or(RuntimeError::InitGone)?;
        tracing::debug!(
            handle = %rec.handle,
            rootfs_ms = prepared.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "container created"
        );
        Ok(rec)
    }

    /// Whether the container's init (the very process we started) still runs.
    pub fn is_alive(rec: &ContainerRecord) -> bool {
        rec.init_pid > 0 && process_start_time(rec.init_pid) == Some(rec.init_start_time)
    }

    /// Removes what a create that died half-way left under `handle` (a depot
    /// directory without a record): its cgroup, whose processes are killed, its
    /// overlay, socket and files.
    pub async fn remove_leftover(&self, handle: &str) -> Result<(), RuntimeError> {
        let rec = ContainerRecord {
            handle: handle.to_string(),
            spec: ContainerSpec::default(),
            properties: Default::default(),
            grace_time: 0,
            created_at: 0,
            init_pid: 0,
            init_start_time: 0,
            cgroup_path: self.cgroup_path(handle),
            socket: self.socket_path(handle),
            rootfs: PathBuf::new(),
            privileged: false,
            state: String::new(),
            network: None,
            image_user: String::new(),
            image_working_dir: String::new(),
        };
        self.destroy(&rec).await
    }

    /// Kills the container and removes everything it had on the host.
    pub async fn destroy(&self, rec: &ContainerRecord) -> Result<(), RuntimeError> {
        let rec = rec.clone();
        let dir = self.depot.container_dir(&rec.handle);
        let trash_dir = self.depot.trash_dir();
        let trash = self.trash.clone();
        let (cache, containers) = (self.depot.rootfs_cache(), self.depot.containers_dir());
        let disk = self.disk.clone();
        tokio::task::spawn_blocking(move || {
            let mut first_err = None;
            let t0 = std::time::Instant::now();
            kill_init(&rec);
            let killed = t0.elapsed();
            // Its peas' own cgroups: their processes die with the container's
            // pid namespace, but the cgroups sit beside the container's.
            if let Err(e) = super::pea::remove_cgroups(&rec.handle, &rec.cgroup_path, &dir) {
                first_err.get_or_insert(e);
            }
            // Whatever hierarchies it is in: a create cut short by a crash
            // can leave the first ones made and not the memory one.
            if let Err(e) = Cgroup::new(&rec.cgroup_path).remove() {
                first_err.get_or_insert(e);
            }
            let cgroup_removed = t0.elapsed();
            if let Err(e) = Overlay::in_dir(&dir).unmount() {
                first_err.get_or_insert(e);
            }
            // After init is gone: nothing writes to the subvolume any more.
            if let Err(e) = disk.remove(&rec.handle) {
                first_err.get_or_insert(e.into());
            }
            let _ = std::fs::remove_file(&rec.socket);
            let lower = std::fs::read_link(rootfs::lower_link(&dir)).ok();
            // The container's files leave the depot at once (a rename); deleting
            // them, which takes milliseconds, happens off the request path.
            if dir.exists() {
                let doomed = trash_dir.join(format!("{}.{}", rec.handle, now_ns()));
                match std::fs::rename(&dir, &doomed) {
                    Ok(()) => {
                        if let Err(std::sync::mpsc::SendError(doomed)) = trash.send(doomed) {
                            let _ = std::fs::remove_dir_all(doomed);
                        }
                    }
                    Err(_) => {
                        if let Err(e) = std::fs::remove_dir_all(&dir) {
                            first_err.get_or_insert(RuntimeError::io(&dir, e));
                        }
                    }
                }
            }
            // Its rootfs copy goes with its last user once a newer one replaced it.
            if let Some(lower) = lower {
                rootfs::release(&lower, &cache, &containers);
            }
            tracing::debug!(
                handle = %rec.handle,
                kill_ms = killed.as_secs_f64() * 1e3,
                cgroup_ms = (cgroup_removed - killed).as_secs_f64() * 1e3,
                files_ms = (t0.elapsed() - cgroup_removed).as_secs_f64() * 1e3,
                "container removed"
            );
            first_err.map_or(Ok(()), Err)
        })
        .await
        .map_err(|e| RuntimeError::Helper(e.to_string()))?
    }

    /// Kills and removes what no container record accounts for: cgroups under
    /// this daemon's parent and init sockets. A daemon and helper killed
    /// half-way through a create can leave a container init in its cgroup
    /// after the depot directory (which the restore removes) is gone.
    pub async fn sweep_strays(&self, known: &std::collections::HashSet<String>) {
        let parent = self.cgroup_parent.clone();
        let init = self.cfg.run_dir.join("init");
        let sockets: std::collections::HashSet<PathBuf> = known.iter().map(|h| self.socket_path(h)).collect();
        let known = known.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for name in cgroups::children(Path::new(&parent)) {
                if !known.contains(&name) && !super::pea::is_own_cgroup_of(&name, &known) {
                    tracing::warn!(handle = %name, "removing a container cgroup without a record");
                    if let Err(e) = Cgroup::new(format!("{parent}/{name}")).remove() {
                        tracing::warn!(handle = %name, error = %e, "stray cgroup stays");
                    }
                }
            }
            let entries = |d: &Path| -> Vec<PathBuf> {
                std::fs::read_dir(d).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default()
            };
            for p in entries(&init) {
                if !sockets.contains(&p) {
                    let _ = std::fs::remove_file(&p);
                }
            }
        })
        .await;
    }

    /// Removes this daemon's parent cgroup if no container uses it any more.
    pub fn tidy_cgroup_parent(&self) {
        cgroups::remove_parent_if_empty(Path::new(&self.cgroup_parent));
    }

    pub async fn connect(&self, rec: &ContainerRecord) -> Result<UnixStream, RuntimeError> {
        if !Self::is_alive(rec) {
            return Err(RuntimeError::InitGone);
        }
        UnixStream::connect(&rec.socket).await.map_err(RuntimeError::Init)
    }

    /// Sends a request and reads init's reply; the connection is returned for
    /// requests that continue as a stream.
    pub async fn request(&self, rec: &ContainerRecord, req: &Request) -> Result<(Reply, UnixStream), RuntimeError> {
        let mut conn = self.connect(rec).await?;
        proto::client::write_frame(&mut conn, proto::TAG_REQUEST, &serde_json::to_vec(req).unwrap_or_default())
            .await
            .map_err(RuntimeError::Init)?;
        let reply = proto::client::read_reply(&mut conn).await.map_err(RuntimeError::Init)?;
        if let Some((kind, msg)) = &reply.error {
            return Err(RuntimeError::Process(*kind, msg.clone()));
        }
        Ok((reply, conn))
    }

    pub async fn process_ids(&self, rec: &ContainerRecord) -> Vec<String> {
        match self.request(rec, &Request::List).await {
            Ok((r, _)) => r.ids,
            Err(_) => Vec::new(),
        }
    }

    /// Garden's stop: TERM to every process but init, KILL after `timeout`.
    pub async fn stop(&self, rec: &ContainerRecord, kill: bool, timeout: Duration) -> Result<(), RuntimeError> {
        let cg = Cgroup::new(&rec.cgroup_path);
        let others = |cg: &Cgroup| cg.pids().into_iter().filter(|&p| p != rec.init_pid).count();
        if !kill {
            self.request(rec, &Request::SignalAll { signal: libc::SIGTERM }).await?;
            let deadline = tokio::time::Instant::now() + timeout;
            while others(&cg) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if others(&cg) > 0 {
            self.request(rec, &Request::SignalAll { signal: libc::SIGKILL }).await?;
        }
        Ok(())
    }

    pub fn cgroup(rec: &ContainerRecord) -> Cgroup {
        Cgroup::new(&rec.cgroup_path)
    }

    /// Bytes and inodes the container wrote (its overlay upper layer).
    /// The bytes come from the disk backend's accounting where it has one
    /// (btrfs: the subvolume's qgroup, no walk); the inodes from counting the
    /// upper layer's entries, without a stat per entry.
    pub fn disk_usage(&self, rec: &ContainerRecord) -> (u64, u64) {
        let upper = self.overlay(&rec.handle).upper;
        match self.disk.exclusive_bytes(&rec.handle) {
            Some(bytes) => (bytes, count_entries(&upper)),
            None => celld_image::unpack::tree_usage(&upper),
        }
    }

    /// The read-only lower layers a container's overlay is made of (an
    /// image's every layer, a preloaded rootfs's copy), if any.
    pub fn rootfs_layers(&self, rec: &ContainerRecord) -> Vec<PathBuf> {
        let dir = self.depot.container_dir(&rec.handle);
        match std::fs::read_to_string(lowers_file(&dir)) {
            Ok(list) => list.lines().map(PathBuf::from).collect(),
            Err(_) => std::fs::read_link(rootfs::lower_link(&dir)).into_iter().collect(),
        }
    }
}

/// What a container's (or a pea's) overlay is made on: a preloaded rootfs
/// (or directory), or a pulled image, leased until the `image` file of the
/// container's directory marks it used.
pub(crate) enum Lower {
    Rootfs(PathBuf),
    Image(LeasedImage),
}

impl Lower {
    /// The read-only lower layers (topmost first) for the overlay in `dir`,
    /// recorded there as used (`lower` link, `image` file); and the image's
    /// lease, to drop once the overlay is mounted. Blocking file work.
    pub(crate) fn layers(
        self,
        cache: &Path,
        containers: &Path,
        dir: &Path,
        shifted: bool,
    ) -> Result<(Vec<PathBuf>, Option<LeasedImage>), RuntimeError> {
        match self {
            Lower::Rootfs(source) => Ok((vec![rootfs::lower_layer(&source, cache, containers, dir, shifted)?], None)),
            Lower::Image(image) => {
                // Marks the image used (for the store's collection) before
                // the lease that kept it goes.
                let file = image_file(dir);
                std::fs::write(&file, &image.id).map_err(|e| RuntimeError::io(&file, e))?;
                let lowers = image.lower_dirs(shifted)?;
                // Every layer, for the rootfs's size in disk limits and metrics.
                let list = lowers_file(dir);
                let text: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
                std::fs::write(&list, text.join("\n")).map_err(|e| RuntimeError::io(&list, e))?;
                let link = rootfs::lower_link(dir);
                let top = lowers.first().ok_or_else(|| RuntimeError::BadRootfs("the image has no layers".into()))?;
                std::os::unix::fs::symlink(top, &link).map_err(|e| RuntimeError::io(&link, e))?;
                Ok((lowers, Some(image)))
            }
        }
    }
}

/// The file in a container's depot directory listing its image's layers.
fn lowers_file(container_dir: &Path) -> PathBuf {
    container_dir.join("lowers")
}

/// The file in a container's depot directory naming the image it was made from.
fn image_file(container_dir: &Path) -> PathBuf {
    container_dir.join("image")
}

/// The images the depot's containers and their peas were made from (the
/// store keeps them).
fn images_in_use(containers_dir: &Path) -> HashSet<String> {
    let dirs =
        |d: &Path| -> Vec<PathBuf> { std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()).collect() };
    let mut used = HashSet::new();
    for container in dirs(containers_dir) {
        for dir in std::iter::once(container.clone()).chain(dirs(&container.join("peas"))) {
            if let Ok(id) = std::fs::read_to_string(image_file(&dir)) {
                used.insert(id);
            }
        }
    }
    used
}

/// An image's environment with a spec's on top: a variable both set is the
/// spec's, in the image's place.
fn image_env(image: &[String], spec: &[String]) -> Vec<String> {
    let name = |e: &String| e.split('=').next().unwrap_or_default().to_string();
    let overridden: HashSet<String> = spec.iter().map(name).collect();
    image.iter().filter(|e| !overridden.contains(&name(e))).chain(spec).cloned().collect()
}

/// Entries below `root`, `root` included; directories are told by the
/// entry's type, so nothing is stat'ed.
fn count_entries(root: &Path) -> u64 {
    let mut stack = vec![root.to_path_buf()];
    let mut n = 0;
    while let Some(dir) = stack.pop() {
        n += 1;
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                _ => n += 1,
            }
        }
    }
    n
}

/// Container root is an unprivileged host uid: every directory above the depot
/// must let others through, or no unprivileged container can start. Checked
/// once at start-up, with the fix in the message.
fn check_traversable(depot: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(depot).map_err(|e| RuntimeError::io(depot, e))?;
    let depot = std::fs::canonicalize(depot).map_err(|e| RuntimeError::io(depot, e))?;
    for dir in depot.ancestors() {
        let mode = std::fs::metadata(dir).map_err(|e| RuntimeError::io(dir, e))?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(RuntimeError::BadDepot(format!(
                "the depot {} is inside {} (mode {:o}), which container root (host uid {ROOT_HOST_ID}) cannot \
                 traverse, so no unprivileged container could start: run `chmod o+x {}` or choose a --depot elsewhere",
                depot.display(),
                dir.display(),
                mode & 0o7777,
                dir.display()
            )));
        }
    }
    Ok(())
}

fn helper_pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("helper.pid")
}

/// Kills the helper a previous daemon recorded in `file` (pid and start time),
/// if it still runs, and waits until it has exited.
fn await_old_helper(file: &Path) {
    let Ok(text) = std::fs::read_to_string(file) else { return };
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(started))) = (fields.next(), fields.next()) else { return };
    let Ok(pid) = i32::try_from(pid) else { return };
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if pidfd < 0 {
        return;
    }
    if process_start_time(pid) == Some(started) {
        tracing::info!(pid, "waiting for the previous daemon's runtime helper to exit");
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, libc::SIGKILL, std::ptr::null::<u8>(), 0) };
        // Readable once it has exited, i.e. after its last system call.
        let mut pfd = libc::pollfd { fd: pidfd, events: libc::POLLIN, revents: 0 };
        if unsafe { libc::poll(&mut pfd, 1, 10_000) } == 0 {
            tracing::warn!(pid, "the previous runtime helper has not exited after 10 s");
        }
    }
    unsafe { libc::close(pidfd) };
}

fn kill_init(rec: &ContainerRecord) {
    if rec.init_pid <= 0 {
        return;
    }
    // A pidfd pins the process: after the start-time check, the signal cannot
    // reach a different process that reused the pid.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, rec.init_pid, 0) } as i32;
    if pidfd < 0 {
        return;
    }
    if process_start_time(rec.init_pid) == Some(rec.init_start_time) {
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, libc::SIGKILL, std::ptr::null::<u8>(), 0) };
        // Killing a pid namespace's init kills all of its processes; the pidfd
        // turns readable once they are gone.
        let mut pfd = libc::pollfd { fd: pidfd, events: libc::POLLIN, revents: 0 };
        unsafe { libc::poll(&mut pfd, 1, 10_000) };
    }
    unsafe { libc::close(pidfd) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_this_process_and_of_none() {
        let me = std::process::id() as i32;
        assert!(process_start_time(me).is_some_and(|t| t > 0));
        assert_eq!(process_start_time(i32::MAX), None);
    }
}
