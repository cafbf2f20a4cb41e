//! Files into and out of the staging container: one tar stream of inputs in
//! (package, build cache, buildpacks), and single files out, read as untrusted
//! since the container wrote them.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::Stager;
use crate::staging::{StagingError, byte_size};
use celld_runtime::initproto::{self as proto, Request};

impl Stager {
    /// One tar stream into `/tmp` as vcap: `staging-inputs/{package, cache.tgz,
    /// buildpacks/<name>}`. The builder unpacks them itself, inside the
    /// container, as vcap: untrusted archives are never opened on the host.
    pub(super) async fn stream_inputs(
        &self,
        guid: &str,
        package: &Path,
        cache: Option<&Path>,
        buildpacks: &[(String, PathBuf)],
    ) -> Result<(), StagingError> {
        let conn = self
            .gardener
            .stream(guid, Request::StreamIn { user: "vcap".into(), destination: "/tmp".into() })
            .await
            .map_err(|e| StagingError::Internal(format!("streaming into the staging container: {e}")))?;
        let mut files: Vec<(String, PathBuf)> = vec![("staging-inputs/package".into(), package.to_path_buf())];
        if let Some(c) = cache {
            files.push(("staging-inputs/cache.tgz".into(), c.to_path_buf()));
        }
        for (name, p) in buildpacks {
            files.push((format!("staging-inputs/buildpacks/{name}"), p.clone()));
        }
        let std = conn.into_std().map_err(|e| StagingError::Internal(e.to_string()))?;
        let std = tokio::task::spawn_blocking(move || -> std::io::Result<std::os::unix::net::UnixStream> {
            std.set_nonblocking(false)?;
            let mut b = tar::Builder::new(&std);
            for dir in ["staging-inputs/", "staging-inputs/buildpacks/"] {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(0);
                b.append_data(&mut h, dir, std::io::empty())?;
            }
            for (name, path) in files {
                let mut f = std::fs::File::open(&path)?;
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&f.metadata()?, tar::HeaderMode::Deterministic);
                h.set_mode(0o644);
                b.append_data(&mut h, name, &mut f)?;
            }
            b.finish()?;
            drop(b);
            std.shutdown(std::net::Shutdown::Write)?;
            std.set_nonblocking(true)?;
            Ok(std)
        })
        .await
        .map_err(|e| StagingError::Internal(e.to_string()))?
        .map_err(|e| StagingError::Internal(format!("streaming into the staging container: {e}")))?;
        let mut conn = UnixStream::from_std(std).map_err(|e| StagingError::Internal(e.to_string()))?;
        let reply = proto::client::read_reply(&mut conn)
            .await
            .map_err(|e| StagingError::Internal(format!("streaming into the staging container: {e}")))?;
        match reply.error {
            Some((_, msg)) => Err(StagingError::Internal(format!("streaming into the staging container: {msg}"))),
            None => Ok(()),
        }
    }

    async fn stream_out_conn(&self, guid: &str, source: &str) -> Result<UnixStream, StagingError> {
        let mut conn = self
            .gardener
            .stream(guid, Request::StreamOut { user: "vcap".into(), source: source.into() })
            .await
            .map_err(|e| StagingError::Internal(format!("streaming {source} out: {e}")))?;
        conn.flush().await.map_err(|e| StagingError::Internal(e.to_string()))?;
        Ok(conn)
    }

    /// The single regular file `source` from the container, into `dest` (at
    /// most `limit` bytes). The tar comes from the container, so it is read as
    /// untrusted: only the first entry, only if it is a regular file.
    pub(super) async fn stream_out_file(
        &self,
        guid: &str,
        source: &str,
        dest: &Path,
        limit: u64,
    ) -> Result<u64, StagingError> {
        let conn = self.stream_out_conn(guid, source).await?;
        let std = conn.into_std().map_err(|e| StagingError::Internal(e.to_string()))?;
        let dest = dest.to_path_buf();
        let source = source.to_string();
        tokio::task::spawn_blocking(move || -> Result<u64, StagingError> {
            let bad = |why: String| StagingError::Internal(format!("{source} from the staging container: {why}"));
            std.set_nonblocking(false).map_err(|e| bad(e.to_string()))?;
            let mut a = tar::Archive::new(std);
            let mut entries = a.entries().map_err(|e| bad(e.to_string()))?;
            let mut e =
                entries.next().ok_or_else(|| bad("it does not exist".into()))?.map_err(|e| bad(e.to_string()))?;
            if e.header().entry_type() != tar::EntryType::Regular {
                return Err(bad("it is not a regular file".into()));
            }
            if e.size() > limit {
                return Err(bad(format!("it is larger than {}", byte_size(limit))));
            }
            let mut f = std::fs::File::create(&dest).map_err(|e| bad(e.to_string()))?;
            let n = std::io::copy(&mut std::io::Read::take(&mut e, limit), &mut f).map_err(|e| bad(e.to_string()))?;
            Ok(n)
        })
        .await
        .map_err(|e| StagingError::Internal(e.to_string()))?
    }

    pub(super) async fn stream_out_bytes(&self, guid: &str, source: &str, limit: u64) -> Result<Vec<u8>, StagingError> {
        let tmp = self.cfg.work_dir.join("scratch").join(guid).join("out.tmp");
        self.stream_out_file(guid, source, &tmp, limit).await?;
        let data = std::fs::read(&tmp).map_err(|e| StagingError::Internal(e.to_string()))?;
        let _ = std::fs::remove_file(&tmp);
        Ok(data)
    }
}
