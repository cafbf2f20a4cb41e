//! The gardener: Garden's semantics over the containerizer. It owns the table
//! of containers, handles, properties, grace times and the rules of Garden's
//! API (duplicate handles, limits, process environments), and restores the
//! table from the depot when the daemon starts.
//!
//! - `rules`: what a Garden container or process spec may hold (checked before
//!   anything is made) and what a process spec becomes (environment, rlimits).
//! - `error`: `GardenError` and its HTTP status and Garden error body.
//! - `peas`: processes with their own rootfs (`ProcessSpec.Image`).
//! - `report`: Garden's network properties.

pub mod error;
mod peas;
mod report;
mod rules;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::UnixStream;

use celld_network::rules::Allow;
use celld_network::{NetState, NetworkError, Networker};
use celld_runtime::Containerizer;
use celld_runtime::cgroups;
use celld_runtime::depot::ContainerRecord;
use celld_runtime::initproto::{Request, SpawnRequest};
use celld_runtime::spec;
use garden_api::types::*;

pub use self::error::GardenError;
pub use self::report::{
    CONTAINER_IP_KEY, EXTERNAL_IP_KEY, GRACE_TIME_KEY, HOST_IP_KEY, MAPPED_PORTS_KEY, STATE_ALL, STATE_CREATED,
    STATE_KEY,
};
pub use self::rules::{DEFAULT_PATH, DEFAULT_ROOT_PATH, process_env, validate_env, validate_handle};
use self::rules::{rlimit_pairs, validate_container, validate_process};

pub const OUT_OF_MEMORY_EVENT: &str = "Out of memory";
/// The event of a container whose init died (killed from the host): its
/// processes are gone with it and it can only be destroyed.
pub const INIT_EXITED_EVENT: &str = "Container init exited";

#[derive(Debug, Clone)]
pub struct GardenerConfig {
    pub max_containers: usize,
    /// Nanoseconds; used when a spec asks for 0.
    pub default_grace_time: u64,
    /// How long Stop waits between TERM and KILL.
    pub stop_timeout: Duration,
}

struct Activity {
    last: Instant,
    streams: usize,
}

struct Entry {
    rec: Mutex<ContainerRecord>,
    activity: Mutex<Activity>,
    net_lock: tokio::sync::Mutex<()>,
}

impl Entry {
    fn new(rec: ContainerRecord) -> Arc<Self> {
        Arc::new(Self {
            rec: Mutex::new(rec),
            activity: Mutex::new(Activity { last: Instant::now(), streams: 0 }),
            net_lock: tokio::sync::Mutex::new(()),
        })
    }
}

/// A container's handle and entry, sent when its init's pidfd turns readable.
type InitExit = (String, Weak<Entry>);

#[derive(Default)]
struct Table {
    live: HashMap<String, Arc<Entry>>,
    /// Handles being created or destroyed: reserved, not yet or no longer usable.
    creating: HashSet<String>,
    destroying: HashSet<String>,
}

pub struct Gardener {
    rt: Containerizer,
    /// `None` with `--no-network`: containers get only loopback.
    net: Option<Arc<Networker>>,
    cfg: GardenerConfig,
    table: Mutex<Table>,
    handle_seq: AtomicU64,
    /// Containers whose init died, as their pidfds report it; handled by `reap_forever`.
    init_exits: tokio::sync::mpsc::UnboundedSender<InitExit>,
    init_exits_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<InitExit>>>,
    metrics: crate::metrics::GardenMetrics,
}

/// Keeps a container's grace timer paused while a process stream is open.
pub struct StreamGuard {
    entry: Arc<Entry>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut a = lock(&self.entry.activity);
        a.streams = a.streams.saturating_sub(1);
        a.last = Instant::now();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A process that names no user or directory runs as the image's `User` in
/// its `WorkingDir` (a container made from an image; others keep Garden's
/// root and home).
fn with_image_defaults(rec: &ContainerRecord, spec: &ProcessSpec) -> ProcessSpec {
    let mut spec = spec.clone();
    if spec.user.is_empty() {
        spec.user = rec.image_user.clone();
    }
    if spec.dir.is_empty() {
        spec.dir = rec.image_working_dir.clone();
    }
    spec
}

fn no_network(handle: &str) -> GardenError {
    GardenError::BadRequest(format!("container {handle}: this cell runs without container networking (--no-network)"))
}

impl Gardener {
    pub fn new(
        rt: Containerizer,
        net: Option<Arc<Networker>>,
        cfg: GardenerConfig,
        metrics: crate::metrics::GardenMetrics,
    ) -> Self {
        let (init_exits, rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            rt,
            net,
            cfg,
            table: Mutex::new(Table::default()),
            handle_seq: AtomicU64::new(0),
            init_exits,
            init_exits_rx: Mutex::new(Some(rx)),
            metrics,
        }
    }

    fn max_containers(&self) -> usize {
        self.net.as_ref().map_or(self.cfg.max_containers, |n| self.cfg.max_containers.min(n.capacity()))
    }

    fn networker(&self, handle: &str) -> Result<&Arc<Networker>, GardenError> {
        self.net.as_ref().ok_or_else(|| no_network(handle))
    }

    /// Loads the containers a previous daemon left running; cleans up those whose
    /// init is gone and the leftovers of creates that died half-way.
    pub async fn restore(&self, destroy_all: bool) {
        let records = self.rt.depot().list();
        // The firewall is rebuilt from the survivors first, so that the rules
        // of the rest are gone whatever happens to their cleanup.
        let survivors: Vec<NetState> = records
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .filter(|r| !destroy_all && Containerizer::is_alive(r))
            .filter_map(|r| r.network.clone())
            .collect();
        if let Some(net) = &self.net {
            if let Err(e) = net.restore(&survivors).await {
                tracing::error!(error = %e, "restoring the container network failed");
            }
        }
        for (handle, rec) in records {
            match rec {
                Ok(rec) if !destroy_all && Containerizer::is_alive(&rec) => {
                    tracing::info!(handle = %handle, pid = rec.init_pid, "restored container");
                    let entry = Entry::new(rec);
                    self.watch_init(&handle, &entry);
                    lock(&self.table).live.insert(handle, entry);
                }
                Ok(rec) => {
                    tracing::info!(handle = %handle, "removing container whose init is gone");
                    if let Err(e) = self.rt.destroy(&rec).await {
                        tracing::warn!(handle = %handle, error = %e, "cleanup failed");
                    }
                    if let (Some(net), Some(n)) = (&self.net, &rec.network) {
                        net.detach(n).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(handle = %handle, error = %e, "removing container directory without a record");
                    let _ = self.rt.remove_leftover(&handle).await;
                }
            }
        }
        let known: std::collections::HashSet<String> = lock(&self.table).live.keys().cloned().collect();
        self.metrics.containers.set(known.len() as i64);
        self.rt.sweep_strays(&known).await;
    }

    fn entry(&self, handle: &str) -> Result<Arc<Entry>, GardenError> {
        let e =
            lock(&self.table).live.get(handle).cloned().ok_or_else(|| GardenError::ContainerNotFound(handle.into()))?;
        lock(&e.activity).last = Instant::now();
        Ok(e)
    }

    fn record(&self, handle: &str) -> Result<ContainerRecord, GardenError> {
        Ok(lock(&self.entry(handle)?.rec).clone())
    }

    fn new_handle(&self) -> String {
        let n = self.handle_seq.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        format!("{:x}-{:x}-{n:x}", t, std::process::id())
    }

    /// Where the containers' directories are (the debug listener counts them).
    pub fn containers_dir(&self) -> std::path::PathBuf {
        self.rt.depot().containers_dir()
    }

    /// An image's config, fetched without its layers (the docker app
    /// lifecycle's staging): its entrypoint, command, user and ports.
    pub async fn image_config(
        &self,
        uri: &str,
        creds: Option<(String, String)>,
    ) -> Result<celld_image::ImageConfig, GardenError> {
        let creds = creds.map(|(username, password)| celld_image::Credentials { username, password });
        self.rt.images().config(uri, creds.as_ref()).await.map_err(GardenError::Image)
    }

    /// Pulls the image into the store (layers too) so a later create finds
    /// it, telling `progress` how far each layer is. Nothing is leased after.
    pub async fn pull_image(
        &self,
        uri: &str,
        creds: Option<(String, String)>,
        progress: celld_image::Progress,
    ) -> Result<u64, GardenError> {
        let creds = creds.map(|(username, password)| celld_image::Credentials { username, password });
        let leased = self
            .rt
            .images()
            .pull_with_progress(uri, creds.as_ref(), Some(progress))
            .await
            .map_err(GardenError::Image)?;
        Ok(leased.size_bytes)
    }

    /// Removes the images and layers no container uses (`cellctl garden gc`).
    pub async fn collect_images(&self) -> ImageGcReply {
        let images = self.rt.images().clone();
        let r = tokio::task::spawn_blocking(move || images.gc_unused()).await.unwrap_or_default();
        ImageGcReply {
            images_removed: r.images_removed as u64,
            layers_removed: r.layers_removed as u64,
            bytes_freed: r.bytes_freed,
            store_bytes: self.rt.images().size_bytes(),
        }
    }

    pub fn capacity(&self) -> Capacity {
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
            })
            .unwrap_or(0)
            * 1024;
        // The store's size where the disk backend has one: containers write there.
        let disk = self.rt.disk().capacity().unwrap_or_else(|| {
            nix::sys::statvfs::statvfs(self.rt.depot().root()).map(|s| s.blocks() * s.fragment_size()).unwrap_or(0)
        });
        Capacity {
            memory_in_bytes: mem,
            disk_in_bytes: disk,
            schedulable_disk_in_bytes: disk,
            max_containers: self.max_containers() as u64,
            image_store_in_bytes: self.rt.images().size_bytes(),
        }
    }

    pub async fn create(&self, mut spec: ContainerSpec) -> Result<String, GardenError> {
        if spec.handle.is_empty() {
            spec.handle = self.new_handle();
        }
        let handle = spec.handle.clone();
        validate_container(&spec)?;
        let wants_network = !spec.netin.is_empty() || !spec.netout_rules.is_empty() || !spec.network.is_empty();
        let allowances = match &self.net {
            Some(net) => {
                net.check(&spec.netin, &spec.netout_rules, &handle).map_err(|e| GardenError::network(&handle, e))?
            }
            None if wants_network => return Err(no_network(&handle)),
            None => Vec::new(),
        };
        {
            let mut t = lock(&self.table);
            if t.live.contains_key(&handle) || t.creating.contains(&handle) || t.destroying.contains(&handle) {
                return Err(GardenError::HandleInUse(handle));
            }
            if t.live.len() + t.creating.len() >= self.max_containers() {
                return Err(GardenError::MaxContainers);
            }
            t.creating.insert(handle.clone());
        }
        let started = Instant::now();
        let result = self.create_networked(&spec, allowances).await;
        let mut t = lock(&self.table);
        t.creating.remove(&handle);
        if result.is_err() && t.live.is_empty() && t.creating.is_empty() {
            self.rt.tidy_cgroup_parent();
        }
        let rec = result?;
        tracing::info!(handle = %handle, pid = rec.init_pid, ip = ?rec.network.as_ref().map(|n| n.container_ip()), "created container");
        let entry = Entry::new(rec);
        self.watch_init(&handle, &entry);
        t.live.insert(handle.clone(), entry);
        self.metrics.containers.set(t.live.len() as i64);
        self.metrics.created.inc();
        self.metrics.create_duration.observe(started.elapsed().as_secs_f64());
        Ok(handle)
    }

    /// Watches a container's init through a pidfd, which turns readable when
    /// it exits: a death (e.g. a kill from the host) is noticed at once.
    fn watch_init(&self, handle: &str, entry: &Arc<Entry>) {
        let rec = lock(&entry.rec).clone();
        let (tx, handle, weak) = (self.init_exits.clone(), handle.to_string(), Arc::downgrade(entry));
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, rec.init_pid, 0) } as i32;
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        });
        tokio::spawn(async move {
            // Opened after the init it names may have died and its pid been reused:
            // the start time tells.
            if let Some(pidfd) = pidfd.filter(|_| Containerizer::is_alive(&rec)) {
                // SAFETY: the AsyncFd owns the pidfd, which stays open as long as it does.
                let registered =
                    unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
                match registered.map_err(|e| e.into_parts().1) {
                    Ok(fd) => {
                        let _ = fd.readable().await;
                    }
                    Err(e) => {
                        tracing::warn!(handle = %handle, error = %e, "cannot watch the container's init");
                        return;
                    }
                }
            }
            let _ = tx.send((handle, weak));
        });
    }

    /// A container's init died on its own (not in a destroy): the container
    /// is stopped, and says so in its state and events.
    fn init_exited(&self, handle: &str, entry: &Weak<Entry>) {
        let Some(entry) = entry.upgrade() else { return };
        let t = lock(&self.table);
        if t.destroying.contains(handle) || !t.live.get(handle).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            return;
        }
        let mut rec = lock(&entry.rec);
        if Containerizer::is_alive(&rec) {
            return;
        }
        tracing::warn!(handle = %handle, pid = rec.init_pid, "the container's init exited; the container is stopped");
        rec.state = "stopped".into();
        // Under the table's lock, so that a destroy cannot remove the depot entry meanwhile.
        if let Err(e) = self.rt.depot().save(&rec) {
            tracing::warn!(handle = %handle, error = %e, "saving the stopped state failed");
        }
    }

    /// Garden's order: an address, the container (with its name files), then
    /// the network wired to its init. Any failure undoes all of it.
    async fn create_networked(
        &self,
        spec: &ContainerSpec,
        allowances: Vec<Allow>,
    ) -> Result<ContainerRecord, GardenError> {
        let handle = spec.handle.as_str();
        let grace = if spec.grace_time > 0 { spec.grace_time } else { self.cfg.default_grace_time };
        let Some(net) = &self.net else {
            let rec = self.rt.create(spec, grace, None).await.map_err(|e| GardenError::runtime(handle, e))?;
            return self.save_new(rec, None).await;
        };
        let subnet = net.reserve(&spec.network).map_err(|e| GardenError::network(handle, e))?;
        let names = net.name_files(subnet, &spec::hostname(handle));
        let mut rec = match self.rt.create(spec, grace, Some(names)).await {
            Ok(rec) => rec,
            Err(e) => {
                net.release_subnet(subnet);
                return Err(GardenError::runtime(handle, e));
            }
        };
        match net.attach(handle, subnet, rec.init_pid, &spec.netin, allowances).await {
            Ok(state) => rec.network = Some(state),
            Err(e) => {
                net.release_subnet(subnet);
                let _ = self.rt.destroy(&rec).await;
                return Err(GardenError::network(handle, e));
            }
        }
        self.save_new(rec, Some(net)).await
    }

    /// Saves a new container's record, its only save during create; if that
    /// fails the container is undone.
    async fn save_new(
        &self,
        rec: ContainerRecord,
        net: Option<&Arc<Networker>>,
    ) -> Result<ContainerRecord, GardenError> {
        if let Err(e) = self.rt.depot().save(&rec) {
            let _ = self.rt.destroy(&rec).await;
            if let (Some(net), Some(n)) = (net, &rec.network) {
                net.detach(n).await;
            }
            return Err(GardenError::runtime(&rec.handle, e));
        }
        Ok(rec)
    }

    pub async fn destroy(&self, handle: &str) -> Result<(), GardenError> {
        let entry = {
            let mut t = lock(&self.table);
            if t.destroying.contains(handle) {
                return Err(GardenError::BeingDestroyed(handle.into()));
            }
            let e = t.live.get(handle).cloned().ok_or_else(|| GardenError::ContainerNotFound(handle.into()))?;
            t.destroying.insert(handle.to_string());
            e
        };
        let rec = lock(&entry.rec).clone();
        let result = self.rt.destroy(&rec).await;
        // Only once nothing in the container runs: its traffic must never
        // pass while its bridge is no longer under the firewall's rules.
        if let (Ok(()), Some(net), Some(n)) = (&result, &self.net, &rec.network) {
            net.detach(n).await;
        }
        let mut t = lock(&self.table);
        t.destroying.remove(handle);
        match result {
            Ok(()) => {
                t.live.remove(handle);
                self.metrics.containers.set(t.live.len() as i64);
                self.metrics.destroyed.inc();
                if t.live.is_empty() && t.creating.is_empty() {
                    self.rt.tidy_cgroup_parent();
                }
                // The layers still in use are read from the depot outside the
                // table's lock, which every other Garden call takes; only when
                // there are measured sizes to forget (disk limits of scope
                // total), as reading every container's layers per destroy
                // made destroying n containers take n² reads.
                if !self.rt.rootfs_sizes().is_empty() {
                    let others: Vec<_> = t.live.values().cloned().collect();
                    drop(t);
                    let layers: Vec<_> = others.iter().flat_map(|e| self.rt.rootfs_layers(&lock(&e.rec))).collect();
                    self.rt.rootfs_sizes().retain(&layers);
                }
                tracing::info!(handle = %handle, "destroyed container");
                Ok(())
            }
            Err(e) => Err(GardenError::runtime(handle, e)),
        }
    }

    pub fn list(&self, filters: &BTreeMap<String, String>) -> Vec<String> {
        let garden_filter = filters.keys().any(|k| k.starts_with(report::GARDEN_PREFIX));
        let t = lock(&self.table);
        let mut out: Vec<String> = t
            .live
            .iter()
            .filter(|(h, _)| !t.destroying.contains(*h))
            .filter(|(_, e)| {
                let rec = lock(&e.rec);
                // Garden's own properties are made only when a filter names one.
                let props =
                    if garden_filter { Cow::Owned(self.all_properties(&rec)) } else { Cow::Borrowed(&rec.properties) };
                filters
                    .iter()
                    .filter(|(k, v)| !(k.as_str() == report::STATE_KEY && v.as_str() == report::STATE_ALL))
                    .all(|(k, v)| props.get(k) == Some(v))
            })
            .map(|(h, _)| h.clone())
            .collect();
        out.sort();
        out
    }

    pub async fn info(&self, handle: &str) -> Result<ContainerInfo, GardenError> {
        let rec = self.record(handle)?;
        let cg = Containerizer::cgroup(&rec);
        let mut events = if cg.oom_kills() > 0 { vec![OUT_OF_MEMORY_EVENT.to_string()] } else { Vec::new() };
        if !Containerizer::is_alive(&rec) {
            events.push(INIT_EXITED_EVENT.to_string());
        }
        let ids = self.rt.process_ids(&rec).await;
        Ok(ContainerInfo {
            state: rec.state.clone(),
            events,
            container_path: self.rt.depot().container_dir(handle).display().to_string(),
            process_ids: Some(ids),
            properties: self.all_properties(&rec),
            host_ip: rec.network.as_ref().map(|n| n.host_ip().to_string()).unwrap_or_default(),
            container_ip: rec.network.as_ref().map(|n| n.container_ip().to_string()).unwrap_or_default(),
            external_ip: self.net.as_ref().map(|n| n.external_ip().to_string()).unwrap_or_default(),
            mapped_ports: rec.network.as_ref().map(|n| n.mapped_ports.clone()).unwrap_or_default(),
            ..ContainerInfo::default()
        })
    }

    pub fn metrics(&self, handle: &str) -> Result<Metrics, GardenError> {
        let rec = self.record(handle)?;
        let u = Containerizer::cgroup(&rec).usage().map_err(|e| GardenError::runtime(handle, e))?;
        let stat = |k: &str| u.memory_stat.get(k).copied().unwrap_or(0);
        let (bytes, inodes) = self.rt.disk_usage(&rec);
        let (rootfs_bytes, rootfs_inodes) = self
            .rt
            .rootfs_layers(&rec)
            .iter()
            .map(|layer| self.rt.rootfs_sizes().usage(layer))
            .fold((0, 0), |(b, i), (lb, li)| (b + lb, i + li));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Ok(Metrics {
            memory_stat: MemoryStat {
                active_anon: stat("active_anon"),
                active_file: stat("active_file"),
                cache: stat("cache"),
                inactive_anon: stat("inactive_anon"),
                inactive_file: stat("inactive_file"),
                mapped_file: stat("mapped_file"),
                pgfault: stat("pgfault"),
                pgmajfault: stat("pgmajfault"),
                rss: stat("rss"),
                total_cache: stat("total_cache"),
                total_rss: stat("total_rss"),
                total_inactive_file: stat("total_inactive_file"),
                total_active_file: stat("total_active_file"),
                hierarchical_memory_limit: stat("hierarchical_memory_limit"),
                swap: stat("swap"),
                anon: stat("anon"),
                file: stat("file"),
                total_usage_toward_limit: cgroups::usage_toward_limit(&u),
                ..MemoryStat::default()
            },
            cpu_stat: CpuStat { usage: u.cpu_usage_ns, user: u.cpu_user_ns, system: u.cpu_system_ns },
            // Garden counts the rootfs in the total and only the writes as exclusive.
            disk_stat: DiskStat {
                total_bytes_used: rootfs_bytes + bytes,
                total_inodes_used: rootfs_inodes + inodes,
                exclusive_bytes_used: bytes,
                exclusive_inodes_used: inodes,
            },
            network_stat: self.net.as_ref().zip(rec.network.as_ref()).map(|(net, n)| net.stats(n)),
            pid_stat: PidStat { current: u.pids_current, max: u.pids_max },
            age: now.saturating_sub(rec.created_at),
            cpu_entitlement: 0,
        })
    }

    pub async fn stop(&self, handle: &str, kill: bool) -> Result<(), GardenError> {
        let entry = self.entry(handle)?;
        let rec = lock(&entry.rec).clone();
        self.rt.stop(&rec, kill, self.cfg.stop_timeout).await.map_err(|e| GardenError::runtime(handle, e))?;
        let mut rec = lock(&entry.rec);
        rec.state = "stopped".into();
        self.rt.depot().save(&rec).map_err(|e| GardenError::runtime(handle, e))
    }

    fn update<T>(&self, handle: &str, f: impl FnOnce(&mut ContainerRecord) -> T) -> Result<T, GardenError> {
        let entry = self.entry(handle)?;
        let mut rec = lock(&entry.rec);
        let mut next = rec.clone();
        let out = f(&mut next);
        self.rt.depot().save(&next).map_err(|e| GardenError::runtime(handle, e))?;
        *rec = next;
        Ok(out)
    }

    /// Changes a container's network under its record lock, so concurrent
    /// net-in/net-out calls on one container apply in order and are all saved.
    async fn with_network<T>(
        &self,
        handle: &str,
        f: impl AsyncFnOnce(&mut NetState) -> Result<T, NetworkError>,
    ) -> Result<T, GardenError> {
        let entry = self.entry(handle)?;
        let _serial = entry.net_lock.lock().await;
        let mut state = lock(&entry.rec)
            .network
            .clone()
            .ok_or_else(|| GardenError::BadRequest(format!("container {handle} has no network")))?;
        let out = f(&mut state).await.map_err(|e| GardenError::network(handle, e))?;
        let mut rec = lock(&entry.rec);
        rec.network = Some(state);
        self.rt.depot().save(&rec).map_err(|e| GardenError::runtime(handle, e))?;
        Ok(out)
    }

    pub async fn net_in(&self, handle: &str, host_port: u32, container_port: u32) -> Result<PortMapping, GardenError> {
        let net = self.networker(handle)?;
        let m = self.with_network(handle, async |n| net.net_in(n, host_port, container_port).await).await?;
        tracing::info!(handle = %handle, host_port = m.host_port, container_port = m.container_port, "net-in");
        Ok(m)
    }

    pub async fn net_out(&self, handle: &str, rules: &[NetOutRule]) -> Result<(), GardenError> {
        let net = self.networker(handle)?;
        self.with_network(handle, async |n| net.net_out(handle, n, rules).await).await?;
        tracing::info!(handle = %handle, rules = rules.len(), "net-out");
        Ok(())
    }

    /// The record's properties with Garden's network properties.
    fn all_properties(&self, rec: &ContainerRecord) -> Properties {
        let external_ip = self.net.as_ref().map(|n| n.external_ip().to_string());
        report::properties(&rec.properties, rec.grace_time, rec.network.as_ref(), external_ip)
    }

    pub fn properties(&self, handle: &str) -> Result<Properties, GardenError> {
        Ok(self.all_properties(&self.record(handle)?))
    }

    pub fn property(&self, handle: &str, key: &str) -> Result<String, GardenError> {
        self.properties(handle)?
            .remove(key)
            .ok_or_else(|| GardenError::BadRequest(format!("property does not exist: {key}")))
    }

    pub fn set_property(&self, handle: &str, key: &str, value: &str) -> Result<(), GardenError> {
        self.update(handle, |r| {
            r.properties.insert(key.to_string(), value.to_string());
        })
    }

    pub fn remove_property(&self, handle: &str, key: &str) -> Result<(), GardenError> {
        // Removing a property that is not there is no error in Garden.
        self.update(handle, |r| {
            r.properties.remove(key);
        })
    }

    pub fn set_grace_time(&self, handle: &str, ns: u64) -> Result<(), GardenError> {
        self.update(handle, |r| r.grace_time = ns)?;
        lock(&self.entry(handle)?.activity).last = Instant::now();
        Ok(())
    }

    pub fn limits(&self, handle: &str) -> Result<Limits, GardenError> {
        Ok(self.record(handle)?.spec.limits)
    }

    /// Pauses the grace timer of `handle` until the guard is dropped.
    pub fn hold(&self, handle: &str) -> Result<StreamGuard, GardenError> {
        let entry = self.entry(handle)?;
        lock(&entry.activity).streams += 1;
        Ok(StreamGuard { entry })
    }

    /// Starts a process; returns its id and the init connection that streams it.
    pub async fn run(&self, handle: &str, spec: &ProcessSpec) -> Result<(String, UnixStream), GardenError> {
        let rec = self.record(handle)?;
        let spec = &with_image_defaults(&rec, spec);
        validate_process(&rec.spec.env, spec)?;
        let req = SpawnRequest {
            id: spec.id.clone(),
            path: spec.path.clone(),
            args: spec.args.clone(),
            env: process_env(&rec.spec.env, spec),
            dir: spec.dir.clone(),
            user: spec.user.clone(),
            tty: spec.tty.map(|t| {
                let w = t.window_size.unwrap_or(WindowSize { columns: 80, rows: 24 });
                (w.columns, w.rows)
            }),
            rlimits: rlimit_pairs(&spec.rlimits),
        };
        if !spec.image.uri.is_empty() {
            return self.run_pea(&rec, spec, req).await;
        }
        let (reply, conn) =
            self.rt.request(&rec, &Request::Spawn(req)).await.map_err(|e| GardenError::runtime(handle, e))?;
        let id = reply.ids.into_iter().next().unwrap_or_default();
        tracing::info!(handle = %handle, process = %id, path = %spec.path, "started process");
        Ok((id, conn))
    }

    pub async fn attach(&self, handle: &str, process_id: &str) -> Result<UnixStream, GardenError> {
        let rec = self.record(handle)?;
        let (_, conn) = self
            .rt
            .request(&rec, &Request::Attach { id: process_id.to_string() })
            .await
            .map_err(|e| GardenError::runtime(handle, e))?;
        Ok(conn)
    }

    /// Opens a stream-in (`StreamIn`) or stream-out (`StreamOut`) connection.
    pub async fn stream(&self, handle: &str, req: Request) -> Result<UnixStream, GardenError> {
        let rec = self.record(handle)?;
        let (_, conn) = self.rt.request(&rec, &req).await.map_err(|e| GardenError::runtime(handle, e))?;
        Ok(conn)
    }

    /// Before the daemon exits: lets background network cleanup finish.
    /// Containers themselves keep running.
    pub async fn shutdown(&self) {
        if let Some(net) = &self.net {
            net.drain(Duration::from_secs(10)).await;
        }
    }

    /// Containers whose grace time ran out with nothing attached.
    pub fn expired(&self) -> Vec<String> {
        let t = lock(&self.table);
        t.live
            .iter()
            .filter(|(h, _)| !t.destroying.contains(*h))
            .filter(|(_, e)| {
                let grace = lock(&e.rec).grace_time;
                let a = lock(&e.activity);
                grace > 0 && a.streams == 0 && a.last.elapsed() >= Duration::from_nanos(grace)
            })
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Destroys containers whose grace time expired, forever (Garden's bomberman).
    /// Also marks containers whose init died as stopped.
    pub async fn reap_forever(self: Arc<Self>) {
        let mut exits = lock(&self.init_exits_rx).take();
        loop {
            let tick = tokio::time::sleep(Duration::from_millis(100));
            match exits.as_mut() {
                Some(rx) => {
                    tokio::select! {
                        Some((handle, entry)) = rx.recv() => {
                            self.init_exited(&handle, &entry);
                            continue;
                        }
                        _ = tick => {}
                    }
                }
                None => tick.await,
            }
            for handle in self.expired() {
                tracing::info!(handle = %handle, "grace time expired; destroying");
                if let Err(e) = self.destroy(&handle).await {
                    tracing::warn!(handle = %handle, error = %e, "destroy after grace time failed");
                }
            }
        }
    }
}
