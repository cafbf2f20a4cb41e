//! The app package `cellctl push` uploads: a zip of the app's directory
//! (what `.cfignore` leaves in, symlinks kept as symlinks, unix modes kept),
//! or a .zip given as is; and the app name a path suggests.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use zip::CompressionMethod;
use zip::write::{SimpleFileOptions, ZipWriter};

/// What was given to `push`.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// A directory to zip (canonical path).
    Dir(PathBuf),
    /// A zip file to upload as is.
    Zip(PathBuf),
}

/// Checks `push`'s path before anything happens: it exists, can be read, and
/// is a directory or a zip (by its magic bytes, whatever its extension).
pub fn inspect(path: &Path) -> Result<Source, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("push: {shown} does not exist; pass the app's directory or a .zip"),
        _ => format!("push: cannot read {shown}: {e}"),
    })?;
    if meta.is_dir() {
        std::fs::read_dir(path).map_err(|e| format!("push: cannot read {shown}: {e}"))?;
        let canon = std::fs::canonicalize(path).map_err(|e| format!("push: cannot read {shown}: {e}"))?;
        return Ok(Source::Dir(canon));
    }
    let mut f = File::open(path).map_err(|e| format!("push: cannot read {shown}: {e}"))?;
    let mut magic = [0u8; 4];
    let is_zip = f.read_exact(&mut magic).is_ok() && (magic == *b"PK\x03\x04" || magic == *b"PK\x05\x06");
    if !is_zip {
        return Err(format!("push: {shown} is neither a directory nor a .zip; pass the app's directory or a .zip"));
    }
    Ok(Source::Zip(path.to_path_buf()))
}

/// An app name (and so a route host) from a directory or file name: lower
/// case, letters, digits and single dashes, at most 63 characters (a DNS label).
pub fn sanitize_name(raw: &str) -> String {
    let mut out = String::new();
    for c in raw.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(63);
    out.trim_end_matches('-').to_string()
}

/// The default app name for `push`: the directory's name, or the zip's stem.
pub fn default_name(source: &Source) -> Option<String> {
    let name = match source {
        Source::Dir(d) => d.file_name()?.to_string_lossy().into_owned(),
        Source::Zip(z) => z.file_stem()?.to_string_lossy().into_owned(),
    };
    Some(sanitize_name(&name)).filter(|n| !n.is_empty())
}

/// One `.cfignore` line (gitignore's rules, which cf follows).
#[derive(Debug)]
struct Rule {
    glob: Vec<char>,
    negate: bool,
    dir_only: bool,
    /// Matched against the whole relative path (it had a `/`), not each name.
    anchored: bool,
}

/// Patterns from `.cfignore`, plus what cf never uploads.
#[derive(Debug, Default)]
pub struct CfIgnore {
    rules: Vec<Rule>,
}

/// Names cf leaves out wherever they are (version control, cf's own files).
const ALWAYS_IGNORED: [&str; 6] = [".git", ".hg", ".svn", "_darcs", ".cf", ".DS_Store"];

impl CfIgnore {
    pub fn parse(text: &str) -> Self {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, line) = match line.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, line.strip_prefix('\\').unwrap_or(line)),
            };
            let (dir_only, line) = match line.strip_suffix('/') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let line = line.strip_prefix("./").unwrap_or(line);
            let anchored = line.contains('/');
            let line = line.trim_start_matches('/');
            if line.is_empty() {
                continue;
            }
            rules.push(Rule { glob: line.chars().collect(), negate, dir_only, anchored });
        }
        Self { rules }
    }

    /// Whether `rel` (`/`-separated, from the app's root) stays out. The last
    /// matching pattern wins, so `!keep.log` after `*.log` keeps it.
    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        if ALWAYS_IGNORED.contains(&name) || rel == ".cfignore" {
            return true;
        }
        let (rel_c, name_c): (Vec<char>, Vec<char>) = (rel.chars().collect(), name.chars().collect());
        let mut ignored = false;
        for r in &self.rules {
            if r.dir_only && !is_dir {
                continue;
            }
            if glob(&r.glob, if r.anchored { &rel_c } else { &name_c }) {
                ignored = !r.negate;
            }
        }
        ignored
    }
}

/// Shell-style matching: `*` and `?` stay within one path segment, `**`
/// crosses segments, `[a-z]`/`[!x]` are classes, `\` escapes.
fn glob(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') if p.get(1) == Some(&'*') => {
            let rest = &p[2..];
            if let Some(after) = rest.strip_prefix(&['/']) {
                // `**/x`: x at the start or after any `/`.
                (0..=t.len()).filter(|&i| i == 0 || t[i - 1] == '/').any(|i| glob(after, &t[i..]))
            } else {
                (0..=t.len()).any(|i| glob(rest, &t[i..]))
            }
        }
        Some('*') => {
            for i in 0..=t.len() {
                if glob(&p[1..], &t[i..]) {
                    return true;
                }
                if i < t.len() && t[i] == '/' {
                    break;
                }
            }
            false
        }
        Some('?') => t.first().is_some_and(|&c| c != '/') && glob(&p[1..], &t[1..]),
        Some('[') => match class(&p[1..], t.first().copied()) {
            Some((hit, used)) => hit && glob(&p[1 + used..], &t[1..]),
            // No closing `]`: a literal `[`.
            None => t.first() == Some(&'[') && glob(&p[1..], &t[1..]),
        },
        Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && glob(&p[2..], &t[1..]),
        Some(c) => t.first() == Some(c) && glob(&p[1..], &t[1..]),
    }
}

/// Matches `c` against the class after a `[`: (hit, chars used incl. `]`).
fn class(p: &[char], c: Option<char>) -> Option<(bool, usize)> {
    let negate = matches!(p.first(), Some('!' | '^'));
    let mut i = usize::from(negate);
    let mut hit = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            let hit = c.is_some_and(|c| c != '/') && hit != negate;
            return Some((hit, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            hit |= c.is_some_and(|c| p[i] <= c && c <= p[i + 2]);
            i += 3;
        } else {
            hit |= c == Some(p[i]);
            i += 1;
        }
    }
    None
}

/// What went into a package, and what was left out with a reason.
#[derive(Debug, Default)]
pub struct Packed {
    pub files: u64,
    pub bytes: u64,
    pub skipped: Vec<String>,
}

/// Where a symlink at `rel` (relative to the root) pointing at `target` lands,
/// as a target relative to the link's directory, or None when it leaves the
/// root. Judged on the path itself, then (when the target exists) on where
/// the system resolves it, so a detour through another link cannot escape.
fn link_target_inside(root: &Path, rel: &str, target: &Path) -> Option<String> {
    let mut parent: Vec<String> = rel.split('/').map(String::from).collect();
    parent.pop();
    let mut resolved: Vec<String> = if target.is_absolute() {
        let inside = target.strip_prefix(root).ok()?;
        inside.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect()
    } else {
        let mut at = parent.clone();
        for c in target.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    at.pop()?;
                }
                Component::Normal(n) => at.push(n.to_string_lossy().into_owned()),
                Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        at
    };
    if let Ok(real) = std::fs::canonicalize(root.join(rel)) {
        if !real.starts_with(root) {
            return None;
        }
    }
    if !target.is_absolute() {
        return Some(target.to_string_lossy().into_owned());
    }
    // An absolute target inside the root becomes relative, so it still
    // points at the right file wherever the package is unpacked.
    let common = parent.iter().zip(&resolved).take_while(|(a, b)| a == b).count();
    let mut rel_target: Vec<String> = vec!["..".to_string(); parent.len() - common];
    rel_target.extend(resolved.drain(common..));
    Some(if rel_target.is_empty() { ".".to_string() } else { rel_target.join("/") })
}

/// Zips `root` (canonical) into `out`, streaming file contents so memory
/// stays flat whatever the app's size. Entries are sorted, so the same files
/// give the same zip (packages are stored by checksum).
pub fn zip_dir(root: &Path, out: File) -> Result<Packed, String> {
    let ignore = match std::fs::read_to_string(root.join(".cfignore")) {
        Ok(text) => CfIgnore::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CfIgnore::default(),
        Err(e) => return Err(format!("push: cannot read {}: {e}", root.join(".cfignore").display())),
    };
    // Never pack the package itself (pushing the temp directory).
    let own = out.metadata().ok().map(|m| (m.dev(), m.ino()));
    let mut zip = ZipWriter::new(BufWriter::new(out));
    let mut packed = Packed::default();
    add_dir(&mut zip, root, root, "", &ignore, own, &mut packed)?;
    let w = zip.finish().map_err(|e| format!("push: writing the package: {e}"))?;
    w.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("push: writing the package: {e}"))?;
    Ok(packed)
}

fn add_dir(
    zip: &mut ZipWriter<BufWriter<File>>,
    root: &Path,
    dir: &Path,
    prefix: &str,
    ignore: &CfIgnore,
    own: Option<(u64, u64)>,
    packed: &mut Packed,
) -> Result<(), String> {
    let unreadable = |p: &Path, e: std::io::Error| format!("push: cannot read {}: {e}", p.display());
    let zip_err = |e: zip::result::ZipError| format!("push: writing the package: {e}");
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| unreadable(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let rel = format!("{prefix}{}", name.to_string_lossy());
        let meta = std::fs::symlink_metadata(&path).map_err(|e| unreadable(&path, e))?;
        let ft = meta.file_type();
        if ignore.is_ignored(&rel, ft.is_dir()) || own == Some((meta.dev(), meta.ino())) {
            continue;
        }
        if name.to_str().is_none() {
            return Err(format!(
                "push: {} has a name that is not UTF-8: rename it or add it to .cfignore",
                path.display()
            ));
        }
        let mode = meta.permissions().mode() & 0o7777;
        let opts = SimpleFileOptions::default().unix_permissions(mode);
        if ft.is_dir() {
            zip.add_directory(format!("{rel}/"), opts).map_err(zip_err)?;
            add_dir(zip, root, &path, &format!("{rel}/"), ignore, own, packed)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| unreadable(&path, e))?;
            match link_target_inside(root, &rel, &target) {
                Some(t) => zip.add_symlink(&rel, t, SimpleFileOptions::default()).map_err(zip_err)?,
                None => packed.skipped.push(format!("{rel}: a symlink to {} (outside the app)", target.display())),
            }
        } else if ft.is_file() {
            let mut f = File::open(&path).map_err(|e| unreadable(&path, e))?;
            let opts = opts.compression_method(CompressionMethod::Deflated).large_file(meta.len() >= u32::MAX as u64);
            zip.start_file(&rel, opts).map_err(zip_err)?;
            std::io::copy(&mut f, zip).map_err(|e| unreadable(&path, e))?;
            packed.files += 1;
            packed.bytes += meta.len();
        } else {
            packed.skipped.push(format!("{rel}: not a file, directory or symlink"));
        }
    }
    zip.flush().map_err(|e| format!("push: writing the package: {e}"))
}

/// A scratch file removed when dropped (the zip `push` uploads).
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    /// Creates a new, empty, private file in the temp directory.
    pub fn create(prefix: &str) -> Result<(Self, File), String> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}.zip", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok((Self { path }, f))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;

    #[test]
    fn names_are_sanitised_into_dns_labels() {
        for (raw, want) in [
            ("hello", "hello"),
            ("My_App.v2", "my-app-v2"),
            ("--weird  name--", "weird-name"),
            ("Ünïcode", "n-code"),
            ("...", ""),
            ("a".repeat(70).as_str(), &"a".repeat(63)),
        ] {
            assert_eq!(sanitize_name(raw), want, "{raw}");
        }
        assert_eq!(default_name(&Source::Zip("/x/my-app-1.0.zip".into())).as_deref(), Some("my-app-1-0"));
        assert_eq!(default_name(&Source::Dir("/srv/Hello_World".into())).as_deref(), Some("hello-world"));
        assert_eq!(default_name(&Source::Dir("/".into())), None);
    }

    #[test]
    fn cfignore_follows_gitignore_rules() {
        let ig = CfIgnore::parse(
            "# comment\n\n*.log\n!keep.log\ntmp/\n/build\ndocs/*.md\n**/cache/**\nsecret?.txt\n[ab].bin\nnode_modules\n",
        );
        let cases = [
            ("a.log", false, true),
            ("deep/dir/a.log", false, true),
            ("keep.log", false, false),
            ("tmp", true, true),
            ("tmp", false, false),
            ("src/tmp", true, true),
            ("build", true, true),
            ("src/build", true, false),
            ("docs/a.md", false, true),
            ("docs/sub/a.md", false, false),
            ("x/cache/y", false, true),
            ("secret1.txt", false, true),
            ("secret12.txt", false, false),
            ("a.bin", false, true),
            ("c.bin", false, false),
            ("lib/node_modules", true, true),
            (".git", true, true),
            ("sub/.git", true, true),
            (".cfignore", false, true),
            ("sub/.cfignore", false, false),
            (".cf", true, true),
            ("main.rs", false, false),
        ];
        for (rel, dir, want) in cases {
            assert_eq!(ig.is_ignored(rel, dir), want, "{rel} dir={dir}");
        }
    }

    #[test]
    fn globs() {
        let g = |p: &str, t: &str| glob(&p.chars().collect::<Vec<_>>(), &t.chars().collect::<Vec<_>>());
        assert!(g("*", "abc"));
        assert!(!g("*", "a/b"));
        assert!(g("**", "a/b"));
        assert!(g("a/**/b", "a/b"));
        assert!(g("a/**/b", "a/x/y/b"));
        assert!(!g("**/b", "ab"));
        assert!(g("[!a]x", "bx"));
        assert!(!g("[!a]x", "ax"));
        assert!(g("[a-c]", "b"));
        assert!(g("\\*", "*"));
        assert!(!g("\\*", "a"));
        assert!(g("[", "["));
    }

    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("cellctl-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(std::fs::canonicalize(&p).unwrap())
    }

    #[test]
    fn zips_a_directory_with_modes_and_safe_symlinks() {
        let s = scratch("zip");
        let outside = scratch("zip-outside");
        let app = s.0.join("app");
        std::fs::create_dir_all(app.join("bin")).unwrap();
        std::fs::create_dir_all(app.join(".git/objects")).unwrap();
        std::fs::create_dir_all(app.join("logs")).unwrap();
        std::fs::write(app.join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::set_permissions(app.join("index.html"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(app.join("bin/run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(app.join("bin/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(app.join(".git/HEAD"), "ref").unwrap();
        std::fs::write(app.join("logs/a.log"), "x").unwrap();
        std::fs::write(app.join(".cfignore"), "logs/\n").unwrap();
        std::fs::write(outside.0.join("secret"), "s").unwrap();
        symlink("index.html", app.join("home.html")).unwrap();
        symlink(app.join("bin/run"), app.join("abs-run")).unwrap();
        symlink("../../", app.join("bin/up")).unwrap();
        symlink(outside.0.join("secret"), app.join("leak")).unwrap();
        symlink("../zip-outside", app.join("rel-leak")).unwrap();

        let (tmp, f) = TempFile::create("cellctl-test").unwrap();
        let packed = zip_dir(&app, f).unwrap();
        assert_eq!(packed.files, 2);
        assert_eq!(packed.skipped.len(), 3, "{:?}", packed.skipped);

        let mut z = zip::ZipArchive::new(File::open(&tmp.path).unwrap()).unwrap();
        let mut entries = BTreeMap::new();
        for i in 0..z.len() {
            let mut e = z.by_index(i).unwrap();
            let mut body = String::new();
            e.read_to_string(&mut body).unwrap();
            entries
                .insert(e.name().unwrap().to_string(), (e.unix_mode().unwrap_or(0), e.is_symlink(), e.is_dir(), body));
        }
        let names: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(names, ["abs-run", "bin/", "bin/run", "home.html", "index.html"]);
        assert_eq!(entries["index.html"].3, "<h1>hi</h1>");
        assert!(entries["bin/"].2);
        assert_eq!(entries["bin/run"].0 & 0o777, 0o755);
        assert_eq!(entries["index.html"].0 & 0o777, 0o640);
        let home = &entries["home.html"];
        assert!(home.1 && home.3 == "index.html", "{home:?}");
        // An absolute link into the app is stored relative to its directory.
        let abs = &entries["abs-run"];
        assert!(abs.1 && abs.3 == "bin/run", "{abs:?}");
    }

    #[test]
    fn inspect_tells_dirs_zips_and_bad_paths_apart() {
        let s = scratch("inspect");
        assert_eq!(inspect(&s.0), Ok(Source::Dir(s.0.clone())));
        let missing = s.0.join("nope");
        assert_eq!(
            inspect(&missing),
            Err(format!("push: {} does not exist; pass the app's directory or a .zip", missing.display()))
        );
        let text = s.0.join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        assert!(inspect(&text).unwrap_err().contains("is neither a directory nor a .zip"));
        let z = s.0.join("app.zip");
        let mut w = ZipWriter::new(File::create(&z).unwrap());
        w.start_file("a", SimpleFileOptions::default()).unwrap();
        w.write_all(b"a").unwrap();
        w.finish().unwrap();
        assert_eq!(inspect(&z), Ok(Source::Zip(z.clone())));
    }
}
