//! Diego's control plane, faked for tests and the benchmark of a cell that
//! joins Diego: a CA and leaf certificates written to a directory
//! (`DiegoCerts`), a fake BBS (`fake_bbs`, with BBS's rules in `bbs_state`)
//! and a fake Locket (`fake_locket`), each on a real socket with mutual TLS.
//! Only with the `fakes` feature: its servers stay out of the daemon.

pub mod bbs_state;
pub mod fake_bbs;
pub mod fake_locket;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

pub use fake_bbs::{FakeBbs, FakeBbsOptions};
pub use fake_locket::FakeLocket;

use crate::test_certs::{LeafSpec, TestCa};
use crate::tls::{PemFiles, TlsError, TlsIdentity, Usage};

#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("a fake of Diego cannot listen on 127.0.0.1: {0}")]
    Listen(std::io::Error),
    #[error("a fake of Diego refused its TLS configuration: {0}")]
    Tls(String),
    #[error("cannot make the test certificates: {0}")]
    Certs(#[from] rcgen::Error),
    #[error("cannot write the test certificates in {dir}: {source}")]
    Write { dir: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Identity(#[from] TlsError),
}

/// A Run of `/bin/sh -c script` as vcap, logged under `log_source`: the
/// commands of the action trees the tests and the benchmark desire in BBS.
pub fn sh(script: &str, log_source: &str) -> celld_proto::diego::bbs::Action {
    use celld_proto::diego::bbs as pb;
    pb::Action {
        run_action: Some(pb::RunAction {
            path: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            user: "vcap".into(),
            log_source: log_source.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One CA and two leaves it signed (the control plane's and the cell's),
/// both with serverAuth + clientAuth and SAN 127.0.0.1, as Diego's
/// deployments issue them; the directory goes with the value.
pub struct DiegoCerts {
    pub dir: PathBuf,
    pub ca: TestCa,
    /// BBS's, Locket's and the auctioneer's identity.
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
    /// Writes them in a fresh directory of the temp dir named after `name`,
    /// this process and a sequence number (several may run at once).
    pub fn new(name: &str) -> Result<Self, FakeError> {
        let dir = std::env::temp_dir().join(format!(
            "celld-diego-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let write_err = |source| FakeError::Write { dir: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(write_err)?;
        let made = (|| {
            let ca = TestCa::new("diego test CA")?;
            let server = ca.write(&dir, "server", &ca.leaf(&LeafSpec::default())?).map_err(write_err)?;
            let cell = ca.write(&dir, "cell", &ca.leaf(&LeafSpec::default())?).map_err(write_err)?;
            Ok((ca, server, cell))
        })();
        match made {
            Ok((ca, server, cell)) => Ok(Self { dir, ca, server, cell }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    pub fn server_identity(&self) -> Result<TlsIdentity, FakeError> {
        Ok(TlsIdentity::load(&self.server, Usage::Both)?)
    }

    pub fn cell_identity(&self) -> Result<TlsIdentity, FakeError> {
        Ok(TlsIdentity::load(&self.cell, Usage::Both)?)
    }

    /// A fake BBS with the control plane's identity.
    pub async fn fake_bbs(&self, options: FakeBbsOptions) -> Result<FakeBbs, FakeError> {
        FakeBbs::start(self.server_identity()?.server_config()?, options).await
    }

    /// A fake Locket with the control plane's identity.
    pub async fn fake_locket(&self) -> Result<FakeLocket, FakeError> {
        FakeLocket::start(self.server_identity()?.tonic_server()).await
    }
}
