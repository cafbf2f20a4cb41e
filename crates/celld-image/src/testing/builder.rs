//! OCI image layouts for tests: layers as tar+gzip blobs, a config, a manifest
//! and an `index.json` naming it by tag.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// What a test layer holds.
pub enum Entry {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Dir {
        path: String,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// `.wh.NAME` beside it: hides `path` of lower layers.
    Whiteout(String),
    /// `.wh..wh..opq` inside: hides what lower layers put in this directory.
    Opaque(String),
    /// A host directory's tree (owners and modes kept, links not followed).
    HostDir(PathBuf),
}

impl Entry {
    pub fn file(path: &str, data: &[u8]) -> Self {
        Entry::File { path: path.into(), data: data.to_vec(), mode: 0o644, uid: 0, gid: 0 }
    }
    pub fn dir(path: &str) -> Self {
        Entry::Dir { path: path.into(), mode: 0o755, uid: 0, gid: 0 }
    }
}

enum Layer {
    Entries(Vec<Entry>),
    Raw(Vec<u8>),
}

#[derive(Default)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    config: serde_json::Map<String, serde_json::Value>,
    arch: Option<String>,
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", celld_base::guid::hex(&Sha256::digest(data)))
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h
}

impl ImageBuilder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn layer(mut self, entries: Vec<Entry>) -> Self {
        self.layers.push(Layer::Entries(entries));
        self
    }
    /// A layer blob of exactly these bytes (say, not a tar).
    pub fn raw_layer(mut self, bytes: &[u8]) -> Self {
        self.layers.push(Layer::Raw(bytes.to_vec()));
        self
    }
    /// An image config field (`Env`, `User`, `WorkingDir`, `Entrypoint`, `Cmd`, `ExposedPorts`).
    pub fn config(mut self, key: &str, value: serde_json::Value) -> Self {
        self.config.insert(key.into(), value);
        self
    }
    /// Publishes the image only behind an index offering `os/arch`.
    pub fn only_platform(mut self, arch: &str) -> Self {
        self.arch = Some(arch.into());
        self
    }

    fn tar(entries: &[Entry]) -> std::io::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        for e in entries {
            match e {
                Entry::File { path, data, mode, uid, gid } => {
                    let mut h = header(tar::EntryType::Regular, *mode, *uid, *gid, data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice())?;
                }
                Entry::Dir { path, mode, uid, gid } => {
                    let mut h = header(tar::EntryType::Directory, *mode, *uid, *gid, 0);
                    b.append_data(&mut h, path, std::io::empty())?;
                }
                Entry::Symlink { path, target } => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
                    b.append_link(&mut h, path, target)?;
                }
                Entry::Whiteout(path) => {
                    let p = Path::new(path);
                    let name = format!(".wh.{}", p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
                    let wh = p.parent().map_or(PathBuf::from(&name), |d| d.join(&name));
                    let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, 0);
                    b.append_data(&mut h, wh, std::io::empty())?;
                }
                Entry::Opaque(dir) => {
                    let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, 0);
                    b.append_data(&mut h, Path::new(dir).join(".wh..wh..opq"), std::io::empty())?;
                }
                Entry::HostDir(src) => b.append_dir_all(".", src)?,
            }
        }
        b.into_inner()
    }

    /// Writes the layout into `dir` with the manifest (or index) named `tag`;
    /// returns the image manifest's digest.
    pub fn write(&self, dir: &Path, tag: &str) -> std::io::Result<String> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        let put = |data: &[u8]| -> std::io::Result<(String, usize)> {
            let d = digest(data);
            std::fs::write(blobs.join(&d[7..]), data)?;
            Ok((d, data.len()))
        };
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for l in &self.layers {
            let (blob, diff) = match l {
                Layer::Entries(e) => {
                    let tar = Self::tar(e)?;
                    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    gz.write_all(&tar)?;
                    (gz.finish()?, digest(&tar))
                }
                Layer::Raw(r) => (r.clone(), digest(r)),
            };
            let (d, size) = put(&blob)?;
            diff_ids.push(diff);
            layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": size}));
        }
        let arch = self.arch.clone().unwrap_or_else(|| "amd64".into());
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let (cd, csize) = put(&serde_json::to_vec(&config)?)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
            "layers": layers,
        });
        let (md, msize) = put(&serde_json::to_vec(&manifest)?)?;
        let mut top =
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize});
        if let Some(arch) = &self.arch {
            let index = serde_json::json!({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize,
                               "platform": {"os": "linux", "architecture": arch}}],
            });
            let (id, isize) = put(&serde_json::to_vec(&index)?)?;
            top = serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": isize});
        }
        top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [top]}))?,
        )?;
        Ok(md)
    }
}
