//! Diego's control plane, faked for the tests of a cell joining Diego: the
//! fakes of celld-diego's `fakes` feature (a fake BBS and a fake Locket on
//! real sockets with mutual TLS, and their certificates), unwrapped for tests.

use std::ops::Deref;

pub use celld::diego_wire::PemFiles;
use celld::diego_wire::TlsIdentity;
use celld::diego_wire::fakes::DiegoCerts as Certs;
pub use celld::diego_wire::fakes::{FakeBbs, FakeBbsOptions, FakeLocket};
use celld::diego_wire::test_certs::{LeafSpec, TestCa};

/// The CA, the control plane's and the cell's certificates (see
/// `celld_diego::fakes::DiegoCerts`); the directory goes with the value.
pub struct DiegoCerts(Certs);

impl Deref for DiegoCerts {
    type Target = Certs;
    fn deref(&self) -> &Certs {
        &self.0
    }
}

impl DiegoCerts {
    pub fn new(name: &str) -> Self {
        Self(Certs::new(name).unwrap())
    }

    pub fn server_identity(&self) -> TlsIdentity {
        self.0.server_identity().unwrap()
    }

    pub fn cell_identity(&self) -> TlsIdentity {
        self.0.cell_identity().unwrap()
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
        self.0.fake_bbs(options).await.unwrap()
    }

    pub async fn fake_locket(&self) -> FakeLocket {
        self.0.fake_locket().await.unwrap()
    }
}
