//! Peas: `run` with `ProcessSpec.Image`, a process with its own rootfs in the
//! container's other namespaces (see `celld_runtime::pea`). Here: what Garden's
//! spec of a pea may hold and what it becomes.

use tokio::net::UnixStream;

use celld_runtime::depot::ContainerRecord;
use celld_runtime::initproto::SpawnRequest;
use celld_runtime::pea::{PeaLimits, PeaRequest};
use garden_api::types::{BindMount, Limits, ProcessSpec};

use super::{GardenError, Gardener};

/// `OverrideContainerLimits` (`limits`): absent, the pea shares the
/// container's cgroup; present, it gets its own with these limits (an empty
/// one: none at all, since it sits beside the container's, not under it).
fn pea_limits(v: &serde_json::Value) -> Result<Option<PeaLimits>, GardenError> {
    if v.is_null() {
        return Ok(None);
    }
    let l: Limits =
        serde_json::from_value(v.clone()).map_err(|e| GardenError::BadRequest(format!("process limits: {e}")))?;
    let cpu = if l.cpu_limits.weight > 0 { l.cpu_limits.weight } else { l.cpu_limits.limit_in_shares };
    Ok(Some(PeaLimits { memory_bytes: l.memory_limits.limit_in_bytes, cpu_shares: cpu, pids_max: l.pid_limits.max }))
}

/// A pea's bind mounts come from the host; their paths must be absolute and
/// the source must exist.
fn pea_bind_mounts(mounts: &[BindMount]) -> Result<Vec<(String, String, bool)>, GardenError> {
    mounts
        .iter()
        .map(|m| {
            let what = format!("pea bind mount {} -> {}", m.src_path, m.dst_path);
            if m.origin != 0 {
                return Err(GardenError::BadRequest(format!("{what}: only host origins are supported")));
            }
            if !m.src_path.starts_with('/') || !m.dst_path.starts_with('/') || m.dst_path.contains("..") {
                return Err(GardenError::BadRequest(format!("{what}: both paths must be absolute, without ..")));
            }
            if std::fs::symlink_metadata(&m.src_path).is_err() {
                return Err(GardenError::BadRequest(format!("{what}: the source does not exist on the host")));
            }
            Ok((m.src_path.clone(), m.dst_path.clone(), m.mode == 1))
        })
        .collect()
}

impl Gardener {
    pub(super) async fn run_pea(
        &self,
        rec: &ContainerRecord,
        spec: &ProcessSpec,
        process: SpawnRequest,
    ) -> Result<(String, UnixStream), GardenError> {
        let handle = rec.handle.as_str();
        let pea = PeaRequest {
            process,
            image: spec.image.clone(),
            limits: pea_limits(&spec.limits)?,
            bind_mounts: pea_bind_mounts(&spec.bind_mounts)?,
        };
        let (reply, conn) = self.rt.run_pea(rec, pea).await.map_err(|e| GardenError::runtime(handle, e))?;
        let id = reply.ids.into_iter().next().unwrap_or_default();
        tracing::info!(handle = %handle, process = %id, path = %spec.path, image = %spec.image.uri, "started pea");
        Ok((id, conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_absent_empty_and_set() {
        assert_eq!(pea_limits(&serde_json::Value::Null).unwrap(), None);
        assert_eq!(pea_limits(&serde_json::json!({})).unwrap(), Some(PeaLimits::default()));
        let set = serde_json::json!({"memory_limits": {"limit_in_bytes": 1024}, "cpu_limits": {"weight": 7}});
        assert_eq!(pea_limits(&set).unwrap(), Some(PeaLimits { memory_bytes: 1024, cpu_shares: 7, pids_max: 0 }));
        assert!(pea_limits(&serde_json::json!({"memory_limits": "lots"})).is_err());
    }

    #[test]
    fn bind_mounts_must_be_absolute_and_exist() {
        let m = |src: &str, dst: &str| BindMount { src_path: src.into(), dst_path: dst.into(), mode: 1, origin: 0 };
        assert_eq!(pea_bind_mounts(&[m("/", "/host")]).unwrap(), vec![("/".into(), "/host".into(), true)]);
        assert!(pea_bind_mounts(&[m("rel", "/x")]).is_err());
        assert!(pea_bind_mounts(&[m("/", "/a/../b")]).is_err());
        assert!(pea_bind_mounts(&[m("/no/such/celld/source", "/x")]).is_err());
        assert!(pea_bind_mounts(&[BindMount { origin: 1, ..m("/", "/x") }]).is_err());
    }
}
