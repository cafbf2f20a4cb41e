//! Test support (feature `test-images`): OCI layouts built in Rust
//! ([`ImageBuilder`]), Debian's `docker-registry` on 127.0.0.1
//! ([`TestRegistry`]) and `skopeo` pushes ([`push`]).

mod builder;
mod registry;

pub use builder::{Entry, ImageBuilder};
pub use registry::{TestRegistry, push};

/// A directory removed on drop, 0755 so that container root can traverse it.
pub struct TestDir(pub std::path::PathBuf);

impl TestDir {
    pub fn new(what: &str) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("celld-image-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a test dir");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        Self(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
