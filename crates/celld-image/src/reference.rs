//! Rootfs URIs that name images: `docker://…` (a registry) and `oci:///…` (an
//! OCI image layout on disk), with Docker Hub's defaults and Garden's older
//! `#tag` forms.

use std::fmt;
use std::path::PathBuf;

/// Docker Hub as clients reach it (`docker.io` is only its name).
pub const DOCKER_HUB: &str = "registry-1.docker.io";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{uri:?} is not a valid image reference: {reason}")]
pub struct ReferenceError {
    pub uri: String,
    pub reason: String,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Registry {
        /// `HOST[:PORT]` to contact (Docker Hub's real host for `docker.io`).
        registry: String,
        repository: String,
        tag: String,
        /// `sha256:…` when pinned; the manifest must hash to it.
        digest: Option<String>,
    },
    Layout {
        path: PathBuf,
        /// `None`: the layout's only manifest.
        tag: Option<String>,
    },
}

/// A parsed image URI; `Display` gives the URI as written, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub uri: String,
    pub source: Source,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl ImageRef {
    /// `Ok(None)` for a rootfs that is not an image (`preloaded:…`, a directory).
    pub fn parse(uri: &str) -> Result<Option<ImageRef>, ReferenceError> {
        let bad = |reason: &str| ReferenceError { uri: uri.to_string(), reason: reason.to_string() };
        let source = if let Some(rest) = uri.strip_prefix("docker:") {
            let rest = rest.strip_prefix("//").ok_or_else(|| bad("expected docker://[REGISTRY/]NAME[:TAG]"))?;
            parse_docker(rest).map_err(|r| bad(&r))?
        } else if let Some(rest) = uri.strip_prefix("oci:") {
            let rest = rest.strip_prefix("//").ok_or_else(|| bad("expected oci:///ABSOLUTE/PATH[:TAG]"))?;
            parse_layout(rest).map_err(|r| bad(&r))?
        } else {
            return Ok(None);
        };
        Ok(Some(ImageRef { uri: uri.to_string(), source }))
    }

    /// Whether `uri` names an image at all (it may still be malformed).
    pub fn is_image_uri(uri: &str) -> bool {
        uri.starts_with("docker:") || uri.starts_with("oci:")
    }
}

fn parse_docker(rest: &str) -> Result<Source, String> {
    // Garden's `docker:///NAME#TAG` and `docker://HOST/NAME#TAG`.
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (host, path) = if let Some(p) = rest.strip_prefix('/') {
        (None, p)
    } else {
        match rest.split_once('/') {
            // Docker's rule: a first component is a registry when it looks like a host.
            Some((first, p)) if first.contains(['.', ':']) || first == "localhost" => (Some(first), p),
            _ => (None, rest),
        }
    };
    if path.is_empty() {
        return Err("no image name".into());
    }
    let (path, digest) = match path.split_once('@') {
        Some((p, d)) => (p, Some(d)),
        None => (path, None),
    };
    let last = path.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match path[last..].split_once(':') {
        Some((_, t)) => (&path[..last + path[last..].len() - t.len() - 1], Some(t)),
        None => (path, None),
    };
    let tag = match (tag, fragment) {
        (Some(_), Some(_)) => return Err("a tag given twice (`:TAG` and `#TAG`)".into()),
        (t, f) => t.or(f),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    if let Some(t) = tag {
        check_tag(t)?;
    }
    check_name(name)?;
    let registry = match host {
        None | Some("docker.io" | "index.docker.io" | "registry-1.docker.io") => DOCKER_HUB.to_string(),
        Some(h) => {
            check_host(h)?;
            h.to_string()
        }
    };
    let repository =
        if registry == DOCKER_HUB && !name.contains('/') { format!("library/{name}") } else { name.to_string() };
    Ok(Source::Registry {
        registry,
        repository,
        tag: tag.unwrap_or("latest").to_string(),
        digest: digest.map(str::to_string),
    })
}

fn parse_layout(rest: &str) -> Result<Source, String> {
    if !rest.starts_with('/') {
        return Err("the layout path must be absolute (oci:///PATH)".into());
    }
    let last = rest.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match rest[last..].split_once(':') {
        Some((_, t)) => (&rest[..rest.len() - t.len() - 1], Some(t)),
        None => (rest, None),
    };
    if let Some(t) = tag {
        if t.is_empty() {
            return Err("empty tag after ':'".into());
        }
    }
    if path.split('/').any(|c| c == "..") {
        return Err("`..` in the layout path".into());
    }
    if path.len() <= 1 {
        return Err("no layout path".into());
    }
    Ok(Source::Layout { path: PathBuf::from(path), tag: tag.map(str::to_string) })
}

fn check_name(name: &str) -> Result<(), String> {
    for comp in name.split('/') {
        let ok = !comp.is_empty()
            && comp.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && comp.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && comp.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "invalid repository name {name:?} (lowercase letters, digits and . _ - between them, / between components)"
            ));
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&tag.len())
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !tag.starts_with(['.', '-']);
    if ok { Ok(()) } else { Err(format!("invalid tag {tag:?}")) }
}

fn check_digest(d: &str) -> Result<(), String> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(()),
        _ => Err(format!("invalid digest {d:?} (expected sha256: and 64 lowercase hex digits)")),
    }
}

fn check_host(h: &str) -> Result<(), String> {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("invalid registry port in {h:?}"));
        }
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b)) {
        return Err(format!("invalid registry host {h:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(uri: &str) -> (String, String, String, Option<String>) {
        match ImageRef::parse(uri).unwrap().unwrap().source {
            Source::Registry { registry, repository, tag, digest } => (registry, repository, tag, digest),
            s => panic!("{uri}: {s:?}"),
        }
    }

    #[test]
    fn docker_references_take_docker_hubs_defaults() {
        let hub = DOCKER_HUB.to_string();
        let d = "sha256:".to_string() + &"a".repeat(64);
        type Case<'a> = (String, (String, &'a str, &'a str, Option<String>));
        let cases: Vec<Case> = vec![
            ("docker://busybox".into(), (hub.clone(), "library/busybox", "latest", None)),
            ("docker:///busybox".into(), (hub.clone(), "library/busybox", "latest", None)),
            ("docker:///busybox#1.36".into(), (hub.clone(), "library/busybox", "1.36", None)),
            ("docker://busybox:1.36".into(), (hub.clone(), "library/busybox", "1.36", None)),
            ("docker://cloudfoundry/cflinuxfs4".into(), (hub.clone(), "cloudfoundry/cflinuxfs4", "latest", None)),
            ("docker://docker.io/ubuntu:22.04".into(), (hub.clone(), "library/ubuntu", "22.04", None)),
            ("docker://index.docker.io/a/b".into(), (hub.clone(), "a/b", "latest", None)),
            ("docker://127.0.0.1:5000/app:v2".into(), ("127.0.0.1:5000".into(), "app", "v2", None)),
            ("docker://127.0.0.1:5000/app#v2".into(), ("127.0.0.1:5000".into(), "app", "v2", None)),
            ("docker://localhost/team/app".into(), ("localhost".into(), "team/app", "latest", None)),
            ("docker://reg.example.com/a/b/c:x_y.z-1".into(), ("reg.example.com".into(), "a/b/c", "x_y.z-1", None)),
            (format!("docker://busybox@{d}"), (hub.clone(), "library/busybox", "latest", Some(d.clone()))),
            (format!("docker://r.io:443/a:t@{d}"), ("r.io:443".into(), "a", "t", Some(d.clone()))),
        ];
        for (uri, (r, n, t, dg)) in cases {
            assert_eq!(reg(&uri), (r, n.to_string(), t.to_string(), dg), "{uri}");
        }
    }

    #[test]
    fn layouts_take_an_optional_tag() {
        let p = |u: &str| ImageRef::parse(u).unwrap().unwrap().source;
        assert_eq!(p("oci:///var/img"), Source::Layout { path: "/var/img".into(), tag: None });
        assert_eq!(p("oci:///var/img:v1"), Source::Layout { path: "/var/img".into(), tag: Some("v1".into()) });
        assert_eq!(p("oci:///a:b/img"), Source::Layout { path: "/a:b/img".into(), tag: None });
    }

    #[test]
    fn other_rootfses_are_not_images() {
        for uri in ["preloaded:cflinuxfs4", "/var/rootfs", "", "raw:///x", "dockerish"] {
            assert_eq!(ImageRef::parse(uri), Ok(None), "{uri}");
            assert!(!ImageRef::is_image_uri(uri));
        }
    }

    #[test]
    fn malformed_image_uris_say_why() {
        for (uri, why) in [
            ("docker:busybox", "expected docker://"),
            ("docker://", "no image name"),
            ("docker:///", "no image name"),
            ("docker://Busybox", "invalid repository name"),
            ("docker://a//b", "invalid repository name"),
            ("docker://busybox:", "invalid tag"),
            ("docker://busybox:-x", "invalid tag"),
            ("docker://busybox:a#b", "given twice"),
            ("docker://busybox@sha256:abc", "invalid digest"),
            ("docker://busybox@md5:abc", "invalid digest"),
            ("docker://host:99999/a", "invalid registry port"),
            ("docker://host:0/a", "invalid registry port"),
            ("docker://ho_st.x/a", "invalid registry host"),
            ("docker://a/b/", "invalid repository name"),
            ("oci://relative/path", "must be absolute"),
            ("oci:/abs", "expected oci:///"),
            ("oci:///x/../etc", "`..`"),
            ("oci:///img:", "empty tag"),
            ("oci:///", "no layout path"),
        ] {
            let err = ImageRef::parse(uri).unwrap_err();
            assert!(err.to_string().contains(why), "{uri}: {err}");
            assert!(err.to_string().contains(&format!("{uri:?}")), "{err}");
        }
    }
}
