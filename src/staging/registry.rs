//! The admin buildpack list: names in detection order, each a zip or tgz in the
//! blobstore under `buildpacks/<name>`. The list itself is a JSON file in the
//! depot, written atomically, so it survives restarts; the archives are where
//! any cell sharing the blobstore can fetch them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::StagingError;
use celld_blobstore::Blobstore;
use celld_lifecycle::archive::{Format, sniff};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buildpack {
    pub name: String,
    /// "" means any stack.
    #[serde(default)]
    pub stack: String,
    pub filename: String,
    pub key: String,
    pub sha256: String,
    pub size: u64,
    #[serde(default)]
    pub version: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub locked: bool,
}

fn yes() -> bool {
    true
}

pub struct Registry {
    path: PathBuf,
    /// In detection order: position N is index N-1.
    list: Mutex<Vec<Buildpack>>,
    /// Held while bits are stored: two writers of one name would overwrite
    /// each other's blob under the same key.
    writing: tokio::sync::Mutex<()>,
}

/// A buildpack name: what `-b NAME` and the list show.
pub fn validate_name(name: &str) -> Result<(), StagingError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(StagingError::Invalid(format!(
            "buildpack name {name:?} is not valid: use 1-128 letters, digits, '_', '-' or '.', not starting with '.'"
        )))
    }
}

impl Registry {
    pub fn open(path: PathBuf) -> Result<Self, StagingError> {
        let list = match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|e| StagingError::Internal(format!("reading the buildpack list {}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StagingError::Internal(format!("reading {}: {e}", path.display()))),
        };
        Ok(Self { path, list: Mutex::new(list), writing: tokio::sync::Mutex::new(()) })
    }

    pub fn list(&self) -> Vec<Buildpack> {
        lock(&self.list).clone()
    }

    pub fn get(&self, name: &str) -> Option<Buildpack> {
        lock(&self.list).iter().find(|b| b.name == name).cloned()
    }

    /// Enabled buildpacks for `stack`, in detection order.
    pub fn for_stack(&self, stack: &str) -> Vec<Buildpack> {
        lock(&self.list).iter().filter(|b| b.enabled && (b.stack.is_empty() || b.stack == stack)).cloned().collect()
    }

    /// Cloud Controller's error if `name` is taken (checked again by [`Self::create`]).
    pub fn ensure_new(&self, name: &str) -> Result<(), StagingError> {
        self.get(name).map_or(Ok(()), |existing| Err(already_exists(&existing)))
    }

    /// A new buildpack from `archive`, at `position` (1-based; 0 or past the
    /// end: last). Like Cloud Controller, an existing name is refused: moving
    /// one is [`Self::update`], new bits are [`Self::upload`]. Returns the
    /// entry and its position.
    pub async fn create(
        &self,
        blobs: &Blobstore,
        name: &str,
        position: u32,
        stack: &str,
        filename: &str,
        archive: &Path,
    ) -> Result<(Buildpack, u32), StagingError> {
        validate_name(name)?;
        if !stack.is_empty() {
            validate_name(stack).map_err(|_| StagingError::Invalid(format!("stack name {stack:?} is not valid")))?;
        }
        let _writing = self.writing.lock().await;
        self.ensure_new(name)?;
        let bp = self.store(blobs, name, stack, filename, archive).await?;
        let pos = match self.insert(bp.clone(), Place::New(position)) {
            Ok(pos) => pos,
            Err(e) => {
                let _ = blobs.delete(&bp.key).await;
                return Err(e);
            }
        };
        tracing::info!(buildpack = %name, position = pos, sha256 = %bp.sha256, "buildpack created");
        Ok((bp, pos))
    }

    /// New bits for an existing buildpack (`cf update-buildpack -p`); it keeps
    /// its position, stack and flags.
    pub async fn upload(
        &self,
        blobs: &Blobstore,
        name: &str,
        filename: &str,
        archive: &Path,
    ) -> Result<(Buildpack, u32), StagingError> {
        let _writing = self.writing.lock().await;
        let existing = self.get(name).ok_or_else(|| not_found(name))?;
        if existing.locked {
            return Err(StagingError::Invalid(format!("buildpack {name} is locked")));
        }
        let bp = self.store(blobs, name, &existing.stack, filename, archive).await?;
        let bp = Buildpack { enabled: existing.enabled, ..bp };
        let pos = self.insert(bp.clone(), Place::Keep)?;
        tracing::info!(buildpack = %name, position = pos, sha256 = %bp.sha256, "buildpack bits replaced");
        Ok((bp, pos))
    }

    /// Moves a buildpack to `position` (1-based; past the end: last; the
    /// others shift, as Cloud Controller's `update-buildpack -i`) and/or sets
    /// its enabled and locked flags. Returns the entry and its position.
    pub fn update(
        &self,
        name: &str,
        position: Option<u32>,
        enabled: Option<bool>,
        locked: Option<bool>,
    ) -> Result<(Buildpack, u32), StagingError> {
        if position == Some(0) {
            return Err(StagingError::Invalid(POSITION_MSG.into()));
        }
        let mut list = lock(&self.list);
        let i = list.iter().position(|b| b.name == name).ok_or_else(|| not_found(name))?;
        let mut next = list.clone();
        let mut bp = next.remove(i);
        bp.enabled = enabled.unwrap_or(bp.enabled);
        bp.locked = locked.unwrap_or(bp.locked);
        let at = position.map_or(i, |p| (p as usize - 1).min(next.len()));
        next.insert(at, bp.clone());
        self.save(&next)?;
        *list = next;
        tracing::info!(buildpack = %name, position = at + 1, enabled = bp.enabled, locked = bp.locked, "buildpack updated");
        Ok((bp, at as u32 + 1))
    }

    /// Checks `archive` and puts it in the blobstore: the entry it makes.
    async fn store(
        &self,
        blobs: &Blobstore,
        name: &str,
        stack: &str,
        filename: &str,
        archive: &Path,
    ) -> Result<Buildpack, StagingError> {
        let path = archive.to_path_buf();
        let version = tokio::task::spawn_blocking(move || inspect(&path))
            .await
            .map_err(|e| StagingError::Internal(e.to_string()))??;
        let key = format!("buildpacks/{name}");
        let info = blobs.put_file(&key, archive).await?;
        Ok(Buildpack {
            name: name.to_string(),
            stack: stack.to_string(),
            filename: if filename.is_empty() { format!("{name}.zip") } else { filename.to_string() },
            key,
            sha256: info.sha256,
            size: info.size,
            version,
            enabled: true,
            locked: false,
        })
    }

    fn insert(&self, bp: Buildpack, place: Place) -> Result<u32, StagingError> {
        let mut list = lock(&self.list);
        let old = list.iter().position(|b| b.name == bp.name);
        let mut next = list.clone();
        let at = match (place, old) {
            (Place::New(_), Some(i)) => return Err(already_exists(&list[i])),
            (Place::New(0), None) | (Place::Keep, None) => next.len(),
            (Place::New(p), None) => (p as usize - 1).min(next.len()),
            (Place::Keep, Some(i)) => {
                next.remove(i);
                i
            }
        };
        next.insert(at, bp);
        self.save(&next)?;
        *list = next;
        Ok(at as u32 + 1)
    }

    pub async fn delete(&self, blobs: &Blobstore, name: &str) -> Result<(), StagingError> {
        let _writing = self.writing.lock().await;
        let bp = {
            let mut list = lock(&self.list);
            let i = list.iter().position(|b| b.name == name).ok_or_else(|| not_found(name))?;
            let bp = list.remove(i);
            self.save(&list)?;
            bp
        };
        blobs.delete(&bp.key).await?;
        Ok(())
    }

    fn save(&self, list: &[Buildpack]) -> Result<(), StagingError> {
        let data = serde_json::to_vec_pretty(list).map_err(|e| StagingError::Internal(e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, data)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| StagingError::Internal(format!("writing {}: {e}", self.path.display())))
    }

    /// Registers celld's own buildpacks (`<dir>/<name>` → `<name>_buildpack`) in
    /// `order`, then any others alphabetically. An unchanged one is left alone,
    /// so an operator's reordering survives restarts.
    pub async fn register_builtin(&self, blobs: &Blobstore, dir: &Path, scratch: &Path) -> Result<(), StagingError> {
        const ORDER: [&str; 3] = ["staticfile", "shell", "binary"];
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("bin").is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "no built-in buildpacks");
                return Ok(());
            }
        };
        names.sort_by_key(|n| (ORDER.iter().position(|o| o == n).unwrap_or(ORDER.len()), n.clone()));
        for n in names {
            let name = format!("{n}_buildpack");
            let tgz = scratch.join(format!("{name}.tgz"));
            pack_dir(&dir.join(&n), &tgz)?;
            let sha = super::sha256_file(&tgz)?;
            let current = self.get(&name);
            let unchanged = current.as_ref().is_some_and(|b| b.sha256 == sha)
                && blobs.exists(&format!("buildpacks/{name}")).await?;
            if !unchanged {
                let _writing = self.writing.lock().await;
                // A changed built-in keeps its place (an operator may have moved it).
                let bp = self.store(blobs, &name, "", &format!("{name}.tgz"), &tgz).await?;
                let bp = Buildpack { enabled: current.as_ref().is_none_or(|c| c.enabled), ..bp };
                self.insert(bp, Place::Keep)?;
            }
            let _ = std::fs::remove_file(&tgz);
        }
        Ok(())
    }
}

/// Cloud Controller's message for a position below 1.
pub const POSITION_MSG: &str = "Position must be greater than or equal to 1";

/// Where [`Registry::insert`] puts an entry.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// A name not yet listed, at this 1-based position (0: last).
    New(u32),
    /// Where the name already is (last if it is not listed).
    Keep,
}

/// Cloud Controller's error for a name already taken.
fn already_exists(existing: &Buildpack) -> StagingError {
    let name = &existing.name;
    StagingError::AlreadyExists(if existing.stack.is_empty() {
        format!("Buildpack with name '{name}' and an unassigned stack already exists")
    } else {
        format!("Buildpack with name '{name}' and stack '{}' already exists", existing.stack)
    })
}

fn not_found(name: &str) -> StagingError {
    StagingError::NotFound(format!("buildpack {name} not found"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks that `archive` is a zip or tgz with a `bin/` directory (at the top or
/// in a single top directory, as the builder accepts), and returns the contents
/// of its VERSION file ("" if none). Only reads; nothing is extracted here.
fn inspect(archive: &Path) -> Result<String, StagingError> {
    let bad = |why: String| StagingError::Invalid(format!("buildpack archive is not usable: {why}"));
    let mut f = std::fs::File::open(archive).map_err(|e| StagingError::Internal(e.to_string()))?;
    let mut head = [0u8; 4];
    let n = f.read(&mut head).map_err(|e| StagingError::Internal(e.to_string()))?;
    let kind = match sniff(&head[..n]) {
        Ok(k @ (Format::Zip | Format::TarGz)) => k,
        _ => return Err(bad("it is neither a zip nor a gzipped tar".into())),
    };
    let f = std::fs::File::open(archive).map_err(|e| StagingError::Internal(e.to_string()))?;
    // (path, contents if it may be a VERSION file)
    let mut entries: Vec<(String, Option<String>)> = Vec::new();
    let mut note = |path: String, read: &mut dyn Read| {
        let base = path.trim_start_matches("./").trim_end_matches('/').to_string();
        let version = if base == "VERSION" || base.ends_with("/VERSION") {
            let mut s = String::new();
            let _ = read.take(256).read_to_string(&mut s);
            Some(s.trim().to_string())
        } else {
            None
        };
        entries.push((base, version));
    };
    match kind {
        Format::Zip => {
            let mut z = zip::ZipArchive::new(f).map_err(|e| bad(format!("corrupt zip: {e}")))?;
            for i in 0..z.len().min(100_000) {
                let mut e = z.by_index(i).map_err(|e| bad(format!("corrupt zip: {e}")))?;
                let name = e.name().map(|n| n.into_owned()).unwrap_or_default();
                note(name, &mut e);
            }
        }
        Format::TarGz | Format::Tar => {
            let mut t = tar::Archive::new(flate2::read::GzDecoder::new(f));
            for e in t.entries().map_err(|e| bad(format!("corrupt tgz: {e}")))?.take(100_000) {
                let mut e = e.map_err(|e| bad(format!("corrupt tgz: {e}")))?;
                let name = e.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                note(name, &mut e);
            }
        }
    }
    // The root is "" or the single top directory.
    let tops: std::collections::BTreeSet<&str> =
        entries.iter().filter(|(p, _)| !p.is_empty()).map(|(p, _)| p.split('/').next().unwrap_or("")).collect();
    let root = if tops.contains("bin") || tops.len() != 1 {
        String::new()
    } else {
        format!("{}/", tops.iter().next().copied().unwrap_or(""))
    };
    if !entries.iter().any(|(p, _)| p.starts_with(&format!("{root}bin/")) || *p == format!("{root}bin")) {
        return Err(bad("it has no bin/ directory (a buildpack needs bin/detect, bin/compile or bin/supply)".into()));
    }
    Ok(entries.into_iter().find(|(p, _)| *p == format!("{root}VERSION")).and_then(|(_, v)| v).unwrap_or_default())
}

/// `archive::pack_dir` with staging's error.
pub fn pack_dir(src: &Path, dest: &Path) -> Result<(), StagingError> {
    celld_lifecycle::archive::pack_dir(src, dest).map_err(|e| StagingError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("shell_buildpack").is_ok());
        assert!(validate_name("go-1.2").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", "../x", &"x".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    fn registry(dir: &Path) -> Registry {
        Registry::open(dir.join("buildpacks.json")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn bp(name: &str) -> Buildpack {
        Buildpack {
            name: name.into(),
            stack: String::new(),
            filename: format!("{name}.zip"),
            key: format!("buildpacks/{name}"),
            sha256: String::new(),
            size: 0,
            version: String::new(),
            enabled: true,
            locked: false,
        }
    }

    #[test]
    fn positions_shift_like_cf_and_persist() {
        let dir = std::env::temp_dir().join(format!("celld-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let r = registry(&dir);
        assert_eq!(r.insert(bp("a"), Place::New(0)).ok(), Some(1));
        assert_eq!(r.insert(bp("b"), Place::New(0)).ok(), Some(2));
        assert_eq!(r.insert(bp("c"), Place::New(1)).ok(), Some(1));
        assert_eq!(r.insert(bp("d"), Place::New(99)).ok(), Some(4));
        // A name is created once, with CC's message.
        let e = r.insert(bp("a"), Place::New(3)).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("Buildpack with name 'a' and an unassigned stack already exists"));
        let stacked = Buildpack { stack: "tiny".into(), ..bp("a") };
        *lock(&r.list) = vec![stacked.clone()];
        let e = r.insert(stacked, Place::New(1)).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("Buildpack with name 'a' and stack 'tiny' already exists"));
        *lock(&r.list) = registry(&dir).list();
        // New bits keep the place.
        assert_eq!(r.insert(bp("a"), Place::Keep).ok(), Some(2));
        let names = |r: &Registry| r.list().into_iter().map(|b| b.name).collect::<Vec<_>>();
        assert_eq!(names(&r), ["c", "a", "b", "d"]);
        assert_eq!(names(&registry(&dir)), ["c", "a", "b", "d"]);
        // update -i: the others shift; past the end is last; 0 is refused with CC's message.
        assert_eq!(r.update("d", Some(1), None, None).ok().map(|(_, p)| p), Some(1));
        assert_eq!(names(&r), ["d", "c", "a", "b"]);
        assert_eq!(r.update("d", Some(3), None, None).ok().map(|(_, p)| p), Some(3));
        assert_eq!(names(&r), ["c", "a", "d", "b"]);
        assert_eq!(r.update("c", Some(40), Some(false), None).ok().map(|(b, p)| (b.enabled, p)), Some((false, 4)));
        assert_eq!(names(&registry(&dir)), ["a", "d", "b", "c"]);
        assert_eq!(r.update("a", Some(0), None, None).err().map(|e| e.to_string()).as_deref(), Some(POSITION_MSG));
        assert!(matches!(r.update("zz", Some(1), None, None), Err(StagingError::NotFound(_))));
        assert_eq!(names(&r), ["a", "d", "b", "c"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn inspect_finds_version_and_refuses_non_buildpacks() {
        let dir = std::env::temp_dir().join(format!("celld-inspect-{}", std::process::id()));
        let src = dir.join("src/mybp");
        std::fs::create_dir_all(src.join("bin")).unwrap_or_default();
        std::fs::write(src.join("bin/detect"), "#!/bin/sh\n").unwrap_or_default();
        std::fs::write(src.join("VERSION"), "1.2.3\n").unwrap_or_default();
        let tgz = dir.join("bp.tgz");
        pack_dir(&src, &tgz).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inspect(&tgz).ok().as_deref(), Some("1.2.3"));
        // Same files, same bytes.
        let tgz2 = dir.join("bp2.tgz");
        pack_dir(&src, &tgz2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&tgz).ok(), std::fs::read(&tgz2).ok());
        // Nested in one top directory is fine.
        pack_dir(&dir.join("src"), &tgz2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inspect(&tgz2).ok().as_deref(), Some("1.2.3"));
        std::fs::write(dir.join("junk"), "not an archive").unwrap_or_default();
        assert!(inspect(&dir.join("junk")).is_err_and(|e| e.to_string().contains("neither a zip")));
        std::fs::remove_dir_all(src.join("bin")).unwrap_or_default();
        pack_dir(&src, &tgz).unwrap_or_else(|e| panic!("{e}"));
        assert!(inspect(&tgz).is_err_and(|e| e.to_string().contains("no bin/")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
