//! The parts of an image's config blob a container runs with.

use oci_spec::image::ImageConfiguration;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// TCP ports only, sorted.
    pub exposed_ports: Vec<u16>,
}

impl ImageConfig {
    pub(crate) fn from_blob(raw: &[u8]) -> Result<Self, String> {
        let c: ImageConfiguration = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
        let Some(c) = c.config() else { return Ok(Self::default()) };
        let mut exposed_ports: Vec<u16> = c
            .exposed_ports()
            .iter()
            .flatten()
            .filter_map(|p| match p.split_once('/') {
                Some((n, "tcp")) | Some((n, "")) => n.parse().ok(),
                Some(_) => None,
                None => p.parse().ok(),
            })
            .collect();
        exposed_ports.sort_unstable();
        exposed_ports.dedup();
        Ok(Self {
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            exposed_ports,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_a_container_runs_with() {
        let raw = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
          "config":{"Env":["PATH=/usr/bin:/bin","A=b"],"WorkingDir":"/app","User":"vcap",
          "Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],
          "ExposedPorts":{"9090/tcp":{},"53/udp":{},"8080/tcp":{},"7000":{}}}}"#;
        let c = ImageConfig::from_blob(raw).unwrap();
        assert_eq!(c.env, vec!["PATH=/usr/bin:/bin", "A=b"]);
        assert_eq!((c.working_dir.as_str(), c.user.as_str()), ("/app", "vcap"));
        assert_eq!(c.entrypoint, vec!["/bin/sh", "-c"]);
        assert_eq!(c.cmd, vec!["echo hi"]);
        assert_eq!(c.exposed_ports, vec![7000, 8080, 9090]);
        assert_eq!(
            ImageConfig::from_blob(
                br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            )
            .unwrap(),
            ImageConfig::default()
        );
        assert!(ImageConfig::from_blob(b"not json").is_err());
    }
}
