//! Fetching manifests and blobs: from a registry (oci-client: auth challenges,
//! verified blob pulls) or from an OCI image layout on disk. Every blob is
//! checked against its digest before use.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest as mt;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::ImageError;
use crate::progress::{Counting, Progress};
use crate::reference::{DOCKER_HUB, ImageRef, Source};
use crate::{Credentials, StoreConfig};

const ACCEPT: &[&str] = &[
    mt::OCI_IMAGE_MEDIA_TYPE,
    mt::IMAGE_MANIFEST_MEDIA_TYPE,
    mt::OCI_IMAGE_INDEX_MEDIA_TYPE,
    mt::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

pub(crate) struct Fetcher {
    insecure: Vec<String>,
    mirror: Option<(String, bool)>,
    timeout: Duration,
    /// Clients kept per registry, way in and credentials: a client costs
    /// ~10 ms to make (TLS roots) and keeps its connections and tokens, so a
    /// create from a stored image costs one manifest request. Keyed by the
    /// credentials too, since a client keeps the first it is given.
    clients: Mutex<HashMap<ClientKey, Client>>,
    /// Insecure registries that answered over plain HTTP: tried that way first.
    plain_http: Mutex<HashSet<String>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    host: String,
    plain: bool,
    unverified: bool,
    /// sha256 of the credentials, not the password itself.
    creds: [u8; 32],
}

/// Where the rest of a pull's blobs come from once the manifest is found.
pub(crate) enum Origin {
    Remote { client: Client, reference: Reference },
    Layout { dir: PathBuf },
}

pub(crate) struct Resolved {
    pub origin: Origin,
    pub digest: String,
    pub manifest: ImageManifest,
}

/// Credentials as a key (their sha256, never the password itself).
pub(crate) fn creds_key(creds: Option<&Credentials>) -> [u8; 32] {
    let mut h = Sha256::new();
    if let Some(c) = creds {
        h.update(c.username.as_bytes());
        h.update([0]);
        h.update(c.password.as_bytes());
    }
    h.finalize().into()
}

fn client(protocol: ClientProtocol, unverified: bool, timeout: Duration) -> Client {
    Client::new(ClientConfig {
        protocol,
        accept_invalid_certificates: unverified,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10).min(timeout)),
        // A registry that stalls mid-blob fails as one that never answers.
        read_timeout: Some(timeout),
        ..Default::default()
    })
}

impl Fetcher {
    pub fn new(cfg: &StoreConfig) -> Self {
        // reqwest is built without a default provider; the daemon uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mirror = cfg.registry_mirror.as_ref().and_then(|m| {
            let u = url::Url::parse(m).ok()?;
            let host = match u.port() {
                Some(p) => format!("{}:{p}", u.host_str()?),
                None => u.host_str()?.to_string(),
            };
            Some((host, u.scheme() == "http"))
        });
        Self {
            insecure: cfg.insecure_registries.clone(),
            mirror,
            timeout: cfg.timeout,
            clients: Mutex::new(HashMap::new()),
            plain_http: Mutex::new(HashSet::new()),
        }
    }

    fn client(&self, host: &str, plain: bool, unverified: bool, creds: Option<&Credentials>) -> (ClientKey, Client) {
        let key = ClientKey { host: host.to_string(), plain, unverified, creds: creds_key(creds) };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let protocol = if plain { ClientProtocol::Http } else { ClientProtocol::Https };
        let c = clients.entry(key.clone()).or_insert_with(|| client(protocol, unverified, self.timeout)).clone();
        (key, c)
    }

    /// Forgets a client that failed (its connections or tokens may be stale).
    fn forget(&self, key: &ClientKey) {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// Finds the linux/amd64 image manifest `image` names.
    pub async fn resolve(&self, image: &ImageRef, creds: Option<&Credentials>) -> Result<Resolved, ImageError> {
        match &image.source {
            Source::Layout { path, tag } => resolve_layout(image, path, tag.as_deref()),
            Source::Registry { registry, repository, tag, digest } => {
                let mut reference = match digest {
                    Some(d) => {
                        Reference::with_tag_and_digest(registry.clone(), repository.clone(), tag.clone(), d.clone())
                    }
                    None => Reference::with_tag(registry.clone(), repository.clone(), tag.clone()),
                };
                let mut host = registry.clone();
                let mut plain_mirror = false;
                if registry == DOCKER_HUB {
                    if let Some((m, plain)) = &self.mirror {
                        reference.set_mirror_registry(m.clone());
                        (host, plain_mirror) = (m.clone(), *plain);
                    }
                }
                let auth = match creds {
                    Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
                    None => RegistryAuth::Anonymous,
                };
                // Insecure registries: unverified TLS first, then plain HTTP
                // (plain first once it is known to answer that way).
                let clients: Vec<(ClientKey, Client)> = if plain_mirror {
                    vec![self.client(&host, true, false, creds)]
                } else if self.insecure.contains(&host) {
                    let tls = self.client(&host, false, true, creds);
                    let http = self.client(&host, true, false, creds);
                    let known_plain = self.plain_http.lock().unwrap_or_else(|p| p.into_inner()).contains(&host);
                    if known_plain { vec![http, tls] } else { vec![tls, http] }
                } else {
                    vec![self.client(&host, false, false, creds)]
                };
                let uri = image.uri.as_str();
                let started = tokio::time::Instant::now();
                let mut last = None;
                for (key, c) in clients {
                    let left = self.timeout.saturating_sub(started.elapsed());
                    let found = tokio::time::timeout(left, self.manifest_from(&c, &reference, &auth, image)).await;
                    if !matches!(found, Ok(Ok(_))) {
                        self.forget(&key);
                    }
                    match found {
                        Err(_) => {
                            return Err(ImageError::Timeout {
                                image: uri.into(),
                                registry: host,
                                secs: self.timeout.as_secs(),
                            });
                        }
                        Ok(Ok((digest, manifest, reference))) => {
                            if key.plain {
                                self.plain_http.lock().unwrap_or_else(|p| p.into_inner()).insert(host);
                            }
                            let origin = Origin::Remote { client: c, reference };
                            return Ok(Resolved { origin, digest, manifest });
                        }
                        Ok(Err(e @ ImageError::Unreachable { .. })) => last = Some(e),
                        Ok(Err(e)) => return Err(e),
                    }
                }
                Err(last.unwrap_or(ImageError::Registry { image: uri.into(), cause: "no client".into() }))
            }
        }
    }

    async fn manifest_from(
        &self,
        c: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        image: &ImageRef,
    ) -> Result<(String, ImageManifest, Reference), ImageError> {
        let uri = image.uri.as_str();
        let (raw, digest) =
            c.pull_manifest_raw(reference, auth, ACCEPT).await.map_err(|e| map_err(uri, reference, e, self.timeout))?;
        match parse_manifest(uri, &raw)? {
            Parsed::Manifest(m) => Ok((digest, m, reference.clone())),
            Parsed::Index(idx) => {
                let chosen = pick_platform(uri, &idx)?;
                let by_digest = Reference::with_digest(
                    reference.registry().to_string(),
                    reference.repository().to_string(),
                    chosen,
                );
                let mut by_digest = by_digest;
                if reference.resolve_registry() != reference.registry() && reference.registry() != "docker.io" {
                    by_digest.set_mirror_registry(reference.resolve_registry().to_string());
                }
                let (raw, digest) = c
                    .pull_manifest_raw(&by_digest, auth, ACCEPT)
                    .await
                    .map_err(|e| map_err(uri, &by_digest, e, self.timeout))?;
                match parse_manifest(uri, &raw)? {
                    Parsed::Manifest(m) => Ok((digest, m, by_digest)),
                    Parsed::Index(_) => Err(malformed(uri, "manifest", "an index inside an index".into())),
                }
            }
        }
    }

    /// Writes the blob `digest` to the new file `dest`, verified, telling
    /// `progress` (with the blob's expected size) how far it is.
    pub async fn blob(
        &self,
        resolved: &Resolved,
        image: &str,
        what: &'static str,
        digest: &str,
        dest: &Path,
        progress: Option<(&Progress, u64)>,
    ) -> Result<(), ImageError> {
        let progress = progress.map(|(p, total)| (p, digest, total));
        let res = match &resolved.origin {
            Origin::Remote { client, reference } => {
                let file = tokio::fs::File::create(dest).await.map_err(ImageError::io("creating", dest))?;
                let mut w = Counting::new(tokio::io::BufWriter::new(file), progress);
                client.pull_blob(reference, digest, &mut w).await.map_err(|e| {
                    match map_err(image, reference, e, self.timeout) {
                        ImageError::Digest { image, detail, .. } => {
                            ImageError::Digest { image, what, digest: digest.into(), detail }
                        }
                        e => e,
                    }
                })
            }
            Origin::Layout { dir } => copy_verified(image, what, &blob_path(dir, digest), digest, dest, progress).await,
        };
        if res.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        res
    }
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    layout.join("blobs").join(alg).join(hex)
}

async fn copy_verified(
    image: &str,
    what: &'static str,
    src: &Path,
    digest: &str,
    dest: &Path,
    progress: Option<(&Progress, &str, u64)>,
) -> Result<(), ImageError> {
    use tokio::io::AsyncReadExt;
    let mut r = tokio::fs::File::open(src).await.map_err(ImageError::io("opening", src))?;
    let file = tokio::fs::File::create(dest).await.map_err(ImageError::io("creating", dest))?;
    let mut w = Counting::new(file, progress);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).await.map_err(ImageError::io("reading", src))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).await.map_err(ImageError::io("writing", dest))?;
    }
    w.flush().await.map_err(ImageError::io("writing", dest))?;
    check_digest(image, what, digest, &h.finalize())
}

fn check_digest(image: &str, what: &'static str, digest: &str, sha256: &[u8]) -> Result<(), ImageError> {
    let actual = format!("sha256:{}", celld_base::guid::hex(sha256));
    if actual != digest {
        return Err(ImageError::Digest {
            image: image.into(),
            what,
            digest: digest.into(),
            detail: format!("got {actual}"),
        });
    }
    Ok(())
}

fn read_verified(image: &str, what: &'static str, layout: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let p = blob_path(layout, digest);
    let data = std::fs::read(&p).map_err(|e| malformed(image, what, format!("{}: {e}", p.display())))?;
    check_digest(image, what, digest, &Sha256::digest(&data))?;
    Ok(data)
}

fn resolve_layout(image: &ImageRef, dir: &Path, tag: Option<&str>) -> Result<Resolved, ImageError> {
    let uri = image.uri.as_str();
    let index_path = dir.join("index.json");
    let raw = std::fs::read(&index_path)
        .map_err(|e| malformed(uri, "OCI layout", format!("{}: {e}", index_path.display())))?;
    let index: ImageIndex =
        serde_json::from_slice(&raw).map_err(|e| malformed(uri, "OCI layout index.json", e.to_string()))?;
    fn named(d: &oci_spec::image::Descriptor) -> Option<&str> {
        d.annotations().as_ref().and_then(|a| a.get("org.opencontainers.image.ref.name")).map(String::as_str)
    }
    let desc = match tag {
        Some(t) => index
            .manifests()
            .iter()
            .find(|d| named(d) == Some(t))
            .ok_or_else(|| ImageError::NotFound { image: uri.into() })?,
        None => match index.manifests().as_slice() {
            [one] => one,
            [] => return Err(ImageError::NotFound { image: uri.into() }),
            _ => {
                return Err(malformed(
                    uri,
                    "OCI layout",
                    "several manifests and no tag given (oci:///PATH:TAG)".into(),
                ));
            }
        },
    };
    let mut digest = desc.digest().to_string();
    let mut raw = read_verified(uri, "manifest", dir, &digest)?;
    if let Parsed::Index(idx) = parse_manifest(uri, &raw)? {
        digest = pick_platform(uri, &idx)?;
        raw = read_verified(uri, "manifest", dir, &digest)?;
    }
    match parse_manifest(uri, &raw)? {
        Parsed::Manifest(manifest) => {
            Ok(Resolved { origin: Origin::Layout { dir: dir.to_path_buf() }, digest, manifest })
        }
        Parsed::Index(_) => Err(malformed(uri, "manifest", "an index inside an index".into())),
    }
}

#[allow(clippy::large_enum_variant)] // one per pull, short-lived
enum Parsed {
    Manifest(ImageManifest),
    Index(ImageIndex),
}

fn malformed(image: &str, what: &'static str, cause: String) -> ImageError {
    ImageError::Malformed { image: image.into(), what, cause }
}

fn parse_manifest(image: &str, raw: &[u8]) -> Result<Parsed, ImageError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(raw).map_err(|e| malformed(image, "manifest", e.to_string()))?;
    if probe.schema_version != Some(2) {
        return Err(malformed(
            image,
            "manifest",
            format!("schema version {:?}, only 2 is supported", probe.schema_version),
        ));
    }
    let is_index = probe.manifests.is_some()
        || matches!(
            probe.media_type.as_deref(),
            Some(mt::OCI_IMAGE_INDEX_MEDIA_TYPE | mt::IMAGE_MANIFEST_LIST_MEDIA_TYPE)
        );
    if is_index {
        serde_json::from_slice(raw).map(Parsed::Index).map_err(|e| malformed(image, "image index", e.to_string()))
    } else {
        serde_json::from_slice(raw).map(Parsed::Manifest).map_err(|e| malformed(image, "manifest", e.to_string()))
    }
}

fn pick_platform(image: &str, idx: &ImageIndex) -> Result<String, ImageError> {
    let mut offered = Vec::new();
    for d in idx.manifests() {
        match d.platform() {
            Some(p) => {
                let (os, arch) = (p.os().to_string(), p.architecture().to_string());
                if os == "linux" && arch == "amd64" {
                    return Ok(d.digest().to_string());
                }
                offered.push(match p.variant() {
                    Some(v) => format!("{os}/{arch}/{v}"),
                    None => format!("{os}/{arch}"),
                });
            }
            None => offered.push("unknown".into()),
        }
    }
    let offered = if offered.is_empty() { "nothing".into() } else { offered.join(", ") };
    Err(ImageError::Platform { image: image.into(), offered })
}

/// oci-client's errors as what a person can act on.
fn map_err(image: &str, reference: &Reference, e: OciDistributionError, timeout: Duration) -> ImageError {
    let image = image.to_string();
    let registry = reference.resolve_registry().to_string();
    match e {
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<_> = envelope.errors.iter().map(|e| &e.code).collect();
            let detail = envelope.errors.iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("; ");
            if codes.iter().any(|c| matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown)) {
                ImageError::NotFound { image }
            } else if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                ImageError::Unauthorized { image, detail }
            } else if codes.iter().any(|c| matches!(c, OciErrorCode::BlobUnknown)) {
                ImageError::Registry { image, cause: format!("blob unknown: {detail}") }
            } else {
                ImageError::Registry { image, cause: detail }
            }
        }
        OciDistributionError::ImageManifestNotFoundError(_) => ImageError::NotFound { image },
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            ImageError::Unauthorized { image, detail: format!("registry {registry} refused the credentials") }
        }
        OciDistributionError::ServerError { code: 404, .. } => ImageError::NotFound { image },
        OciDistributionError::DigestError(d) => {
            ImageError::Digest { image, what: "manifest", digest: String::new(), detail: d.to_string() }
        }
        OciDistributionError::RequestError(r) if r.is_timeout() => {
            ImageError::Timeout { image, registry, secs: timeout.as_secs() }
        }
        OciDistributionError::RequestError(r) if r.is_connect() || r.is_request() => {
            ImageError::Unreachable { image, registry, detail: crate::error::chain(&r) }
        }
        e => ImageError::Registry { image, cause: e.to_string() },
    }
}
