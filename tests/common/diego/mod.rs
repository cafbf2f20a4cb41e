//! Diego's control plane, faked for the tests of a cell joining Diego: a CA
//! and leaf certificates written to a test directory, a fake BBS
//! (`fake_bbs.rs`, with BBS's rules in `bbs_state.rs`) and a fake Locket
//! (`fake_locket.rs`), each on a real socket with mutual TLS.

pub mod bbs_state;
pub mod fake_bbs;
pub mod fake_locket;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

pub use celld::diego_wire::PemFiles;
use celld::diego_wire::test_certs::{LeafSpec, TestCa};
use celld::diego_wire::{TlsIdentity, Usage};
pub use fake_bbs::{FakeBbs, FakeBbsOptions};
pub use fake_locket::FakeLocket;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One CA and two leaves it signed (the control plane's and the cell's),
/// both with serverAuth + clientAuth and SAN 127.0.0.1, as Diego's
/// deployments issue them; the directory goes with the value.
pub struct DiegoCerts {
    pub dir: PathBuf,
    pub ca: TestCa,
    /// BBS's and Locket's server identity.
    pub server: PemFiles,
    /// The cell's identity.
    pub cell: PemFiles,
}

impl Drop for DiegoCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl DiegoCerts {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "celld-diego-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new("diego test CA").unwrap();
        let server = ca.write(&dir, "server", &ca.leaf(&LeafSpec::default()).unwrap()).unwrap();
        let cell = ca.write(&dir, "cell", &ca.leaf(&LeafSpec::default()).unwrap()).unwrap();
        Self { dir, ca, server, cell }
    }

    pub fn server_identity(&self) -> TlsIdentity {
        TlsIdentity::load(&self.server, Usage::Both).unwrap()
    }

    pub fn cell_identity(&self) -> TlsIdentity {
        TlsIdentity::load(&self.cell, Usage::Both).unwrap()
    }

    /// An identity from another CA: both sides must refuse it.
    pub fn stranger(&self) -> PemFiles {
        let other = TestCa::new("stranger CA").unwrap();
        let leaf = other.leaf(&LeafSpec::default()).unwrap();
        let files = other.write(&self.dir, "stranger", &leaf).unwrap();
        // It trusts our CA (so only the server's check can refuse it).
        std::fs::write(&files.ca, &self.ca.cert_pem).unwrap();
        files
    }

    /// A fake BBS with the control plane's identity.
    pub async fn fake_bbs(&self, options: FakeBbsOptions) -> FakeBbs {
        FakeBbs::start(self.server_identity().server_config().unwrap(), options).await
    }

    pub async fn fake_locket(&self) -> FakeLocket {
        FakeLocket::start(self.server_identity().tonic_server()).await
    }
}
