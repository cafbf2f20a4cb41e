//! The layer store on disk, under `dir`:
//! - `l/HEX16`: a layer unpacked (HEX16: its blob digest's first 16 hex digits,
//!   short so that many fit in overlay's one-page mount options);
//! - `s/HEX16`: its uid-shifted copy, made on first use by a user-namespaced
//!   container;
//! - `f/HEX16[s]`: an image's layers flattened, when they would not fit;
//! - `images/HEX.json`: an image (manifest digest, layers, config); its mtime
//!   is when it was last used;
//! - `tmp/`: work in progress, renamed into place when complete, emptied at open.
//!
//! Compressed layer blobs are not kept once unpacked: the unpacked layer is
//! what containers use, and keeping both would double the store.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::keyed::{BusyKeys, Keyed};
use crate::registry::{Fetcher, Resolved};
use crate::unpack;
use crate::{Credentials, ImageConfig, ImageError, ImageRef, LayerProgress, Progress, StoreConfig};

pub(crate) type InUse = Arc<dyn Fn() -> HashSet<String> + Send + Sync>;

/// Layers of one image fetched and unpacked at once.
const LAYERS_AT_ONCE: usize = 3;

/// Overlay takes at most this many lower layers.
const MAX_LAYERS: usize = 128;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub images_removed: usize,
    pub layers_removed: usize,
    pub bytes_freed: u64,
}

pub(crate) struct ImageRec {
    pub layers: Vec<String>,
    pub config: ImageConfig,
    pub last_used: SystemTime,
    /// Flattened variants made (keyed by `shifted`) and their sizes.
    pub flats: HashMap<bool, u64>,
}

#[derive(Default)]
pub(crate) struct State {
    pub images: HashMap<String, ImageRec>,
    /// Layer digest → size unpacked; and of its shifted copy.
    pub layers: HashMap<String, u64>,
    pub shifted: HashMap<String, u64>,
    pub total: u64,
    pub leases: HashMap<String, usize>,
    /// Layers of pulls in flight: never collected.
    pub pinned: HashMap<String, usize>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    id: String,
    layers: Vec<String>,
    config: ImageConfig,
}

pub(crate) struct Inner {
    pub cfg: StoreConfig,
    fetcher: Fetcher,
    pub in_use: InUse,
    pub state: Mutex<State>,
    keys: Keyed,
    /// Shifted copies and flattenings (blocking work).
    busy: BusyKeys,
    seq: AtomicU64,
    /// What a reference resolved to lately, per credentials: the creates of
    /// one image that come together (an app's instances) ask the registry
    /// once per [`RECHECK`], as a preloaded rootfs is walked once per
    /// two seconds.
    recent: Mutex<HashMap<RecentKey, (String, Instant)>>,
}

/// A reference (as given) and its credentials' key.
type RecentKey = (String, [u8; 32]);

/// How long a reference's resolution to a manifest digest is trusted.
const RECHECK: Duration = Duration::from_secs(2);

/// The image store; clones share it.
#[derive(Clone)]
pub struct ImageStore {
    pub(crate) inner: Arc<Inner>,
}

/// A pulled image, kept from collection until dropped.
pub struct LeasedImage {
    pub id: String,
    pub config: ImageConfig,
    /// Bytes of its unpacked layers.
    pub size_bytes: u64,
    store: ImageStore,
}

impl std::fmt::Debug for LeasedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedImage")
            .field("id", &self.id)
            .field("size_bytes", &self.size_bytes)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore").field("dir", &self.inner.cfg.dir).finish_non_exhaustive()
    }
}

impl Drop for LeasedImage {
    fn drop(&mut self) {
        let mut st = self.store.inner.lock();
        release(&mut st.leases, &self.id);
    }
}

/// One holder of `key` fewer; a key nobody holds leaves the map.
fn release(holders: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = holders.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            holders.remove(key);
        }
    }
}

/// Layers pinned by a pull in flight.
struct Pin<'a> {
    inner: &'a Inner,
    layers: Vec<String>,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        for l in &self.layers {
            release(&mut st.pinned, l);
        }
    }
}

pub(crate) fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    // Digests are ASCII (oci-spec checks them); `get` never panics regardless.
    hex.get(..16).unwrap_or(hex)
}

impl Inner {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.cfg.dir.join("l").join(short(digest))
    }
    pub fn shifted_dir(&self, digest: &str) -> PathBuf {
        self.cfg.dir.join("s").join(short(digest))
    }
    pub fn flat_dir(&self, id: &str, shifted: bool) -> PathBuf {
        self.cfg.dir.join("f").join(format!("{}{}", short(id), if shifted { "s" } else { "" }))
    }
    pub fn record_path(&self, id: &str) -> PathBuf {
        self.cfg.dir.join("images").join(format!("{}.json", id.split_once(':').map_or(id, |(_, h)| h)))
    }
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.cfg.dir.join("tmp").join(format!("{what}-{}-{n}", std::process::id()))
    }
    /// Moves `p` out of sight, then deletes it: a crash mid-way leaves only `tmp/`.
    pub fn remove(&self, p: &Path) {
        drop(self.move_aside(p));
    }

    /// Moves `p` into `tmp/` at once (a rename: cheap under the state's lock);
    /// the returned [`Tmp`] deletes it when dropped, off the lock.
    pub fn move_aside(&self, p: &Path) -> Option<Tmp> {
        let t = self.tmp_path("rm");
        match std::fs::rename(p, &t) {
            Ok(()) => Some(Tmp(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %p.display(), "removing from the image store: {e}");
                None
            }
        }
    }
}

impl ImageStore {
    /// Opens (or makes) the store: drops half-made entries and what no image
    /// refers to, and adds up what is there.
    pub fn open(cfg: StoreConfig, in_use: InUse) -> Result<Self, ImageError> {
        for d in ["l", "s", "f", "images", "tmp"] {
            let p = cfg.dir.join(d);
            std::fs::create_dir_all(&p).map_err(ImageError::io("creating", &p))?;
        }
        let tmp = cfg.dir.join("tmp");
        for e in std::fs::read_dir(&tmp).map_err(ImageError::io("reading", &tmp))?.flatten() {
            let p = e.path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        let inner = Inner {
            fetcher: Fetcher::new(&cfg),
            cfg,
            in_use,
            state: Mutex::new(State::default()),
            keys: Keyed::default(),
            busy: BusyKeys::default(),
            seq: AtomicU64::new(0),
            recent: Mutex::new(HashMap::new()),
        };
        let mut st = State::default();
        let images_dir = inner.cfg.dir.join("images");
        for e in std::fs::read_dir(&images_dir).map_err(ImageError::io("reading", &images_dir))?.flatten() {
            let p = e.path();
            let rec = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok());
            let complete = rec.as_ref().is_some_and(|r| r.layers.iter().all(|l| inner.layer_dir(l).is_dir()));
            match rec {
                Some(r) if complete => {
                    let last_used = e.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                    let mut flats = HashMap::new();
                    for shifted in [false, true] {
                        let f = inner.flat_dir(&r.id, shifted);
                        if f.is_dir() {
                            flats.insert(shifted, unpack::flat_usage(&f));
                        }
                    }
                    st.images.insert(r.id, ImageRec { layers: r.layers, config: r.config, last_used, flats });
                }
                _ => {
                    tracing::warn!(record = %p.display(), "dropping an unreadable or incomplete image record");
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        let wanted: HashSet<&String> = st.images.values().flat_map(|i| &i.layers).collect();
        let by_short: HashMap<&str, &String> = wanted.iter().map(|d| (short(d), *d)).collect();
        let mut layers = HashMap::new();
        let mut shifted = HashMap::new();
        for (sub, map) in [("l", &mut layers), ("s", &mut shifted)] {
            let d = inner.cfg.dir.join(sub);
            for e in std::fs::read_dir(&d).map_err(ImageError::io("reading", &d))?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                match by_short.get(name.as_str()) {
                    Some(digest) => {
                        map.insert((*digest).clone(), unpack::disk_usage(&e.path()));
                    }
                    None => inner.remove(&e.path()),
                }
            }
        }
        let flats_wanted: HashSet<PathBuf> = st
            .images
            .iter()
            .flat_map(|(id, i)| i.flats.keys().map(|s| inner.flat_dir(id, *s)).collect::<Vec<_>>())
            .collect();
        let f = inner.cfg.dir.join("f");
        for e in std::fs::read_dir(&f).map_err(ImageError::io("reading", &f))?.flatten() {
            if !flats_wanted.contains(&e.path()) {
                inner.remove(&e.path());
            }
        }
        st.layers = layers;
        st.shifted = shifted;
        st.total = st.layers.values().sum::<u64>()
            + st.shifted.values().sum::<u64>()
            + st.images.values().flat_map(|i| i.flats.values()).sum::<u64>();
        tracing::info!(dir = %inner.cfg.dir.display(), images = st.images.len(), bytes = st.total, "image store open");
        *inner.lock() = st;
        Ok(Self { inner: Arc::new(inner) })
    }

    pub fn is_image_uri(uri: &str) -> bool {
        ImageRef::is_image_uri(uri)
    }

    pub fn size_bytes(&self) -> u64 {
        self.inner.lock().total
    }

    fn parse(uri: &str) -> Result<ImageRef, ImageError> {
        ImageRef::parse(uri)?.ok_or_else(|| {
            ImageError::BadReference(crate::reference::ReferenceError {
                uri: uri.into(),
                reason: "not an image URI (docker:// or oci:///)".into(),
            })
        })
    }

    /// Call with the state locked, in the same critical section that found or
    /// stored the image, so that no collection comes in between.
    fn lease(&self, st: &mut State, id: &str, config: ImageConfig, size_bytes: u64) -> LeasedImage {
        *st.leases.entry(id.to_string()).or_default() += 1;
        LeasedImage { id: id.to_string(), config, size_bytes, store: self.clone() }
    }

    /// The image's config only (manifest and config blob; no layers).
    pub async fn config(&self, uri: &str, creds: Option<&Credentials>) -> Result<ImageConfig, ImageError> {
        let image = Self::parse(uri)?;
        let resolved = self.inner.fetcher.resolve(&image, creds).await?;
        if let Some(rec) = self.inner.lock().images.get(&resolved.digest) {
            return Ok(rec.config.clone());
        }
        self.fetch_config(&image, &resolved).await
    }

    async fn fetch_config(&self, image: &ImageRef, resolved: &Resolved) -> Result<ImageConfig, ImageError> {
        let digest = resolved.manifest.config().digest().to_string();
        let tmp = Tmp(self.inner.tmp_path("config"));
        self.inner.fetcher.blob(resolved, &image.uri, "config", &digest, &tmp.0, None).await?;
        let raw = tokio::fs::read(&tmp.0).await.map_err(ImageError::io("reading", &tmp.0))?;
        ImageConfig::from_blob(&raw).map_err(|cause| ImageError::Malformed {
            image: image.uri.clone(),
            what: "image config",
            cause,
        })
    }

    /// Pulls (or finds) the image and unpacks its layers; it is leased until
    /// the returned value drops.
    pub async fn pull(&self, uri: &str, creds: Option<&Credentials>) -> Result<LeasedImage, ImageError> {
        self.pull_with_progress(uri, creds, None).await
    }

    /// [`Self::pull`], telling `progress` how far each layer's download is
    /// (layers already stored are reported once, as cached).
    #[tracing::instrument(skip(self, creds, progress), fields(image = %uri))]
    pub async fn pull_with_progress(
        &self,
        uri: &str,
        creds: Option<&Credentials>,
        progress: Option<Progress>,
    ) -> Result<LeasedImage, ImageError> {
        let image = Self::parse(uri)?;
        let recent_key = (image.uri.clone(), crate::registry::creds_key(creds));
        let recent = {
            let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.retain(|_, (_, at)| at.elapsed() < RECHECK);
            recent.get(&recent_key).map(|(id, _)| id.clone())
        };
        if let Some(leased) = recent.and_then(|id| self.existing(&id)) {
            return Ok(leased);
        }
        let resolved = self.inner.fetcher.resolve(&image, creds).await?;
        let id = resolved.digest.clone();
        self.inner.recent.lock().unwrap_or_else(|p| p.into_inner()).insert(recent_key, (id.clone(), Instant::now()));
        let _one_pull = self.inner.keys.lock(&format!("image:{id}")).await;
        if let Some(leased) = self.existing(&id) {
            return Ok(leased);
        }
        let layers: Vec<(String, String)> =
            resolved.manifest.layers().iter().map(|l| (l.digest().to_string(), l.media_type().to_string())).collect();
        let sizes: Vec<u64> = resolved.manifest.layers().iter().map(|l| l.size()).collect();
        let max = self.inner.cfg.max_bytes;
        let compressed: u64 = resolved.manifest.layers().iter().map(|l| l.size()).sum();
        if max > 0 && compressed > max {
            return Err(ImageError::TooLarge { image: uri.into(), needed: compressed, max });
        }
        let pin = self.pin(layers.iter().map(|(d, _)| d.clone()).collect());
        let result = self.pull_layers(&image, &resolved, &layers, &sizes, progress.as_ref()).await;
        let result = match result {
            Ok(config) => self.commit(&image, &id, &layers, config),
            Err(e) => Err(e),
        };
        drop(pin);
        match result {
            Ok(leased) => {
                let store = self.clone();
                // Collection walks and deletes: off the async workers.
                let _ = tokio::task::spawn_blocking(move || store.gc()).await;
                Ok(leased)
            }
            Err(e) => {
                self.sweep_orphans();
                Err(e)
            }
        }
    }

    fn existing(&self, id: &str) -> Option<LeasedImage> {
        let leased = {
            let mut st = self.inner.lock();
            let rec = st.images.get_mut(id)?;
            rec.last_used = SystemTime::now();
            let (config, layers) = (rec.config.clone(), rec.layers.clone());
            let size = unique(&layers).filter_map(|l| st.layers.get(l)).sum();
            self.lease(&mut st, id, config, size)
        };
        touch(&self.inner.record_path(id));
        Some(leased)
    }

    fn pin(&self, layers: Vec<String>) -> Pin<'_> {
        let mut st = self.inner.lock();
        for l in &layers {
            *st.pinned.entry(l.clone()).or_default() += 1;
        }
        Pin { inner: &self.inner, layers }
    }

    async fn pull_layers(
        &self,
        image: &ImageRef,
        resolved: &Resolved,
        layers: &[(String, String)],
        sizes: &[u64],
        progress: Option<&Progress>,
    ) -> Result<ImageConfig, ImageError> {
        use futures_util::StreamExt;
        let config = self.fetch_config(image, resolved).await?;
        // A few layers at a time (downloads overlap with unpacking), every one
        // run to its end rather than cancelled half-way by another's failure.
        // The futures made first: a closure inside the stream's type makes
        // the pull's future not `Send` for every lifetime (rustc #110338),
        // which Garden's create, spawned on the runtime, needs.
        let fetches: Vec<_> = layers
            .iter()
            .zip(sizes)
            .map(|((digest, media_type), size)| {
                self.ensure_layer(image, resolved, digest, media_type, progress.map(|p| (p, *size)))
            })
            .collect();
        let results: Vec<Result<(), ImageError>> =
            futures_util::stream::iter(fetches).buffer_unordered(LAYERS_AT_ONCE).collect().await;
        results.into_iter().collect::<Result<(), _>>()?;
        Ok(config)
    }

    async fn ensure_layer(
        &self,
        image: &ImageRef,
        resolved: &Resolved,
        digest: &str,
        media_type: &str,
        progress: Option<(&Progress, u64)>,
    ) -> Result<(), ImageError> {
        if media_type.contains("zstd") || !(media_type.contains("tar") || media_type.contains("layer")) {
            return Err(ImageError::MediaType { image: image.uri.clone(), media_type: media_type.into() });
        }
        let _one_download = self.inner.keys.lock(&format!("layer:{digest}")).await;
        if self.inner.lock().layers.contains_key(digest) {
            if let Some((cb, total)) = progress {
                cb(&LayerProgress { digest: digest.into(), done: total, total, cached: true });
            }
            return Ok(());
        }
        let blob = Tmp(self.inner.tmp_path("blob"));
        self.inner.fetcher.blob(resolved, &image.uri, "layer", digest, &blob.0, progress).await?;
        // The unpack stores the layer itself: a pull dropped meanwhile leaves
        // a complete layer no image refers to (the next collection's), never
        // a half one.
        let (inner, key) = (self.inner.clone(), digest.to_string());
        let stored = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let dir = Tmp(inner.tmp_path("layer"));
            std::fs::create_dir(&dir.0).map_err(|e| e.to_string())?;
            let f = std::fs::File::open(&blob.0).map_err(|e| e.to_string())?;
            let r = unpack::layer_reader(f).map_err(|e| e.to_string())?;
            unpack::unpack_layer(r, &dir.0).map_err(|e| e.to_string())?;
            drop(blob);
            let size = unpack::disk_usage(&dir.0);
            let dest = inner.layer_dir(&key);
            std::fs::rename(&dir.0, &dest).map_err(|e| format!("storing it at {}: {e}", dest.display()))?;
            let mut st = inner.lock();
            st.layers.insert(key, size);
            st.total += size;
            Ok(size)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let size =
            stored.map_err(|cause| ImageError::Layer { image: image.uri.clone(), digest: digest.into(), cause })?;
        tracing::info!(image = %image.uri, layer = %digest, bytes = size, "layer unpacked");
        Ok(())
    }

    fn commit(
        &self,
        image: &ImageRef,
        id: &str,
        layers: &[(String, String)],
        config: ImageConfig,
    ) -> Result<LeasedImage, ImageError> {
        let digests: Vec<String> = layers.iter().map(|(d, _)| d.clone()).collect();
        let size: u64 = {
            let st = self.inner.lock();
            unique(&digests).filter_map(|l| st.layers.get(l)).sum()
        };
        let max = self.inner.cfg.max_bytes;
        if max > 0 && size > max {
            return Err(ImageError::TooLarge { image: image.uri.clone(), needed: size, max });
        }
        let rec = Record { id: id.into(), layers: digests.clone(), config: config.clone() };
        let path = self.inner.record_path(id);
        let tmp = self.inner.tmp_path("record");
        let bytes =
            serde_json::to_vec(&rec).map_err(|e| ImageError::io("encoding", &path)(std::io::Error::other(e)))?;
        std::fs::write(&tmp, bytes).map_err(ImageError::io("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(ImageError::io("writing", &path))?;
        let rec =
            ImageRec { layers: digests, config: config.clone(), last_used: SystemTime::now(), flats: HashMap::new() };
        tracing::info!(image = %image.uri, id, bytes = size, "image stored");
        let mut st = self.inner.lock();
        st.images.insert(id.to_string(), rec);
        Ok(self.lease(&mut st, id, config, size))
    }
}

/// A path under `tmp/`, removed when dropped (after a failure, with the
/// pull that made it, or after a collection let go of the store's lock).
pub(crate) struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0).or_else(|_| std::fs::remove_file(&self.0));
    }
}

/// An image may list a layer twice; it is stored once.
fn unique(layers: &[String]) -> impl Iterator<Item = &String> {
    let mut seen = HashSet::new();
    layers.iter().filter(move |l| seen.insert(*l))
}

fn touch(p: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(p) {
        let _ = f.set_modified(SystemTime::now());
    }
}

impl LeasedImage {
    /// The overlay lower dirs, topmost first; `shifted` for user-namespaced
    /// containers. Blocking file work: call it off the async workers.
    pub fn lower_dirs(&self, shifted: bool) -> Result<Vec<PathBuf>, ImageError> {
        let inner = &self.store.inner;
        // (Its use was recorded when it was leased.)
        let layers = inner.lock().images.get(&self.id).map(|rec| rec.layers.clone());
        let Some(layers) = layers else {
            return Err(ImageError::io("finding image", inner.record_path(&self.id))(
                std::io::ErrorKind::NotFound.into(),
            ));
        };
        let mut dirs = Vec::with_capacity(layers.len());
        for l in &layers {
            dirs.push(if shifted { self.shifted_layer(l)? } else { inner.layer_dir(l) });
        }
        let joined: usize = dirs.iter().map(|d| d.as_os_str().len() + 1).sum();
        if dirs.len() > MAX_LAYERS || joined > inner.cfg.flatten_over_bytes {
            return Ok(vec![self.flat(&dirs, shifted)?]);
        }
        dirs.reverse();
        Ok(dirs)
    }

    fn shifted_layer(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let inner = &self.store.inner;
        let dest = inner.shifted_dir(digest);
        let _one = inner.busy.lock(&format!("shift:{digest}"));
        if inner.lock().shifted.contains_key(digest) {
            return Ok(dest);
        }
        let tmp = inner.tmp_path("shift");
        crate::shift::shifted_copy(&inner.layer_dir(digest), &tmp).map_err(|e| {
            ImageError::io(format!("shifting layer {digest}: {e}"), &dest)(std::io::Error::other("copy failed"))
        })?;
        let size = unpack::disk_usage(&tmp);
        if let Err(e) = std::fs::rename(&tmp, &dest) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(ImageError::io("storing shifted layer", dest)(e));
        }
        let mut st = inner.lock();
        st.shifted.insert(digest.to_string(), size);
        st.total += size;
        Ok(dest)
    }

    fn flat(&self, bottom_first: &[PathBuf], shifted: bool) -> Result<PathBuf, ImageError> {
        let inner = &self.store.inner;
        let dest = inner.flat_dir(&self.id, shifted);
        let _one = inner.busy.lock(&format!("flat:{}:{shifted}", self.id));
        if inner.lock().images.get(&self.id).is_some_and(|r| r.flats.contains_key(&shifted)) {
            return Ok(dest);
        }
        let tmp = inner.tmp_path("flat");
        let res = unpack::flatten(bottom_first, &tmp).and_then(|()| {
            std::fs::rename(&tmp, &dest).map_err(|source| unpack::UnpackError::Io { path: dest.clone(), source })
        });
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(ImageError::io(format!("flattening image {}: {e}", self.id), &dest)(std::io::Error::other(
                "flatten failed",
            )));
        }
        let size = unpack::flat_usage(&dest);
        let mut st = inner.lock();
        if let Some(r) = st.images.get_mut(&self.id) {
            r.flats.insert(shifted, size);
        }
        st.total += size;
        tracing::info!(id = %self.id, shifted, bytes = size, "image flattened");
        Ok(dest)
    }
}
