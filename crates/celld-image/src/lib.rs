//! OCI images for containers: image URIs (`docker://`, `oci:///`), pulls from
//! registries and layouts on disk, and a content-addressed store of unpacked
//! layers that overlay takes as read-only lower directories, with leases and
//! garbage collection.
//!
//! Files: `reference.rs` parses URIs, `registry.rs` fetches manifests and
//! verified blobs, `unpack.rs` turns layer tars into overlay layers (and
//! flattens), `shift.rs` makes uid-shifted copies, `store.rs` keeps layers and
//! images on disk, `gc.rs` collects them, `keyed.rs` is the per-key single
//! flight, `config.rs` the image config, `progress.rs` the pull's progress
//! callback; `testing/` (feature `test-images`) builds test images and runs a
//! real registry.

mod config;
mod error;
mod gc;
pub mod keyed;
mod progress;
pub mod reference;
mod registry;
pub mod shift;
mod store;
pub mod unpack;

#[cfg(feature = "test-images")]
pub mod testing;

use std::path::PathBuf;
use std::time::Duration;

pub use config::ImageConfig;
pub use error::ImageError;
pub use progress::{LayerProgress, Progress};
pub use reference::ImageRef;
pub use store::{GcReport, ImageStore, LeasedImage};

pub struct StoreConfig {
    pub dir: PathBuf,
    /// 0: keep the store's filesystem at least 15 % free instead.
    pub max_bytes: u64,
    /// `HOST:PORT`s reached with unverified TLS, else plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Docker Hub pulls go to this URL.
    pub registry_mirror: Option<String>,
    /// How long a registry may keep a request waiting (and stall a blob).
    pub timeout: Duration,
    /// Lower dirs whose joined paths pass this many bytes are flattened (the
    /// overlay mount's options must fit one page).
    pub flatten_over_bytes: usize,
}

impl StoreConfig {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_bytes: 0,
            insecure_registries: Vec::new(),
            registry_mirror: None,
            timeout: Duration::from_secs(20),
            flatten_over_bytes: 3000,
        }
    }
}

#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ****)", self.username)
    }
}
