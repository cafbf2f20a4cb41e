//! `subsystem sftp`: an SFTP v3 server over the real file system, on
//! russh-sftp's server loop, with OpenSSH's `sftp-server` semantics where they
//! matter to its clients (`sftp`, and `scp`, which speaks SFTP by default since
//! OpenSSH 9): relative paths from the session's directory, `symlink`'s
//! arguments in OpenSSH's order, `rename` refusing to replace, and the
//! `posix-rename@openssh.com` and `expand-path@openssh.com` extensions.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;

use super::scp::error_text;

/// The largest read served at once (OpenSSH's sftp-server limit).
const MAX_READ: u32 = 256 * 1024;
/// Directory entries per READDIR reply.
const DIR_BATCH: usize = 128;

const POSIX_RENAME: &str = "posix-rename@openssh.com";
const EXPAND_PATH: &str = "expand-path@openssh.com";

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{}", error_text(.0))]
    Io(#[from] io::Error),
    #[error("{0}")]
    Status(StatusCode),
    #[error("invalid handle")]
    BadHandle,
    #[error("bad message")]
    BadMessage,
}

impl From<FsError> for StatusReply {
    fn from(e: FsError) -> Self {
        let code = match &e {
            FsError::Io(io) => match io.kind() {
                io::ErrorKind::NotFound => StatusCode::NoSuchFile,
                io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
                _ => StatusCode::Failure,
            },
            FsError::Status(c) => *c,
            FsError::BadHandle => StatusCode::Failure,
            FsError::BadMessage => StatusCode::BadMessage,
        };
        StatusReply::new(code).with_message(e.to_string())
    }
}

enum Open {
    File(Arc<std::fs::File>),
    Dir { path: PathBuf, entries: Option<VecDeque<File>> },
}

/// One SFTP session's state: the open handles.
pub struct Fs {
    cwd: PathBuf,
    handles: HashMap<String, Open>,
    next: u64,
    /// User and group names for `ls -l`, read once from /etc (no NSS here).
    names: Option<Arc<Names>>,
}

impl Fs {
    pub fn new(cwd: PathBuf) -> Self {
        Fs { cwd, handles: HashMap::new(), next: 0, names: None }
    }

    fn path(&self, p: &str) -> PathBuf {
        super::scp::resolve(&self.cwd, p)
    }

    fn insert(&mut self, open: Open) -> String {
        self.next += 1;
        let h = self.next.to_string();
        self.handles.insert(h.clone(), open);
        h
    }

    fn file(&self, handle: &str) -> Result<Arc<std::fs::File>, FsError> {
        match self.handles.get(handle) {
            Some(Open::File(f)) => Ok(f.clone()),
            _ => Err(FsError::BadHandle),
        }
    }
}

fn ok(id: u32) -> Status {
    Status { id, status_code: StatusCode::Ok, error_message: "Success".into(), language_tag: "en-US".into() }
}

/// Attributes as `stat` gives them (the type bits stay in the permissions).
pub fn attrs(m: &std::fs::Metadata) -> FileAttributes {
    let secs = |t: i64| u32::try_from(t.max(0)).unwrap_or(u32::MAX);
    FileAttributes {
        size: Some(m.len()),
        uid: Some(m.uid()),
        user: None,
        gid: Some(m.gid()),
        group: None,
        permissions: Some(m.mode()),
        atime: Some(secs(m.atime())),
        mtime: Some(secs(m.mtime())),
    }
}

/// A path without `.` and `..`, for paths that do not exist (yet).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn real(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| normalize(p))
}

fn one_name(id: u32, name: String) -> Name {
    Name { id, files: vec![File { filename: name.clone(), longname: name, attrs: FileAttributes::empty() }] }
}

fn cstring(p: &Path) -> Result<CString, FsError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| FsError::BadMessage)
}

fn check(r: libc::c_int) -> Result<(), FsError> {
    if r != 0 { Err(io::Error::last_os_error().into()) } else { Ok(()) }
}

/// SETSTAT/FSETSTAT: size, owner, mode, times, in sftp-server's order.
fn set_attrs(path: &Path, file: Option<&std::fs::File>, a: &FileAttributes) -> Result<(), FsError> {
    use std::os::fd::AsRawFd;
    if let Some(size) = a.size {
        match file {
            Some(f) => f.set_len(size)?,
            None => std::fs::OpenOptions::new().write(true).open(path)?.set_len(size)?,
        }
    }
    if let Some(mode) = a.permissions {
        let perm = std::fs::Permissions::from_mode(mode & 0o7777);
        match file {
            Some(f) => f.set_permissions(perm)?,
            None => std::fs::set_permissions(path, perm)?,
        }
    }
    if let (Some(atime), Some(mtime)) = (a.atime, a.mtime) {
        let ts = [
            libc::timespec { tv_sec: i64::from(atime), tv_nsec: 0 },
            libc::timespec { tv_sec: i64::from(mtime), tv_nsec: 0 },
        ];
        match file {
            // SAFETY: a valid descriptor and a two-element timespec array.
            Some(f) => check(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) })?,
            None => {
                let c = cstring(path)?;
                // SAFETY: a valid C string and a two-element timespec array.
                check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) })?;
            }
        }
    }
    if let (Some(uid), Some(gid)) = (a.uid, a.gid) {
        match file {
            Some(f) => std::os::unix::fs::fchown(f, Some(uid), Some(gid))?,
            None => std::os::unix::fs::chown(path, Some(uid), Some(gid))?,
        }
    }
    Ok(())
}

/// Reads one SSH string from an extended request's data.
fn take_string(data: &mut &[u8]) -> Option<String> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    let (s, rest) = rest.split_at_checked(len)?;
    *data = rest;
    String::from_utf8(s.to_vec()).ok()
}

/// uid → user and gid → group names from /etc/passwd and /etc/group.
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    fn load() -> Self {
        let read = |p: &str| Self::parse(&std::fs::read_to_string(p).unwrap_or_default());
        Names { users: read("/etc/passwd"), groups: read("/etc/group") }
    }

    /// `name:x:id:…` lines → id → name.
    fn parse(text: &str) -> HashMap<u32, String> {
        text.lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id = f.nth(1)?.parse().ok()?;
                Some((id, name.to_string()))
            })
            .collect()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A line as `ls -l` (and OpenSSH's sftp-server) prints it:
/// `-rwxr-x--x    1 vcap     vcap      5242880 Jan  2 15:04 name`, the time
/// replaced by the year for files older than six months. Times in UTC.
pub fn longname(name: &str, m: &std::fs::Metadata, names: &Names, now: i64) -> String {
    let mode = m.mode();
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let bit = |b: u32, c: char| if mode & b != 0 { c } else { '-' };
    let special = |x: u32, s: u32, lower: char, upper: char| match (mode & x != 0, mode & s != 0) {
        (true, true) => lower,
        (false, true) => upper,
        (true, false) => 'x',
        (false, false) => '-',
    };
    let perms: String = [
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect();
    let user = names.users.get(&m.uid()).cloned().unwrap_or_else(|| m.uid().to_string());
    let group = names.groups.get(&m.gid()).cloned().unwrap_or_else(|| m.gid().to_string());
    let mtime = m.mtime();
    let (y, mo, d, hh, mm) = civil(mtime);
    const SIX_MONTHS: i64 = 182 * 24 * 3600;
    let when = if mtime <= now && now - mtime < SIX_MONTHS {
        format!("{d:>2} {hh:02}:{mm:02}")
    } else {
        format!("{d:>2}  {y}")
    };
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .get(usize::try_from(mo.saturating_sub(1)).unwrap_or(0))
        .copied()
        .unwrap_or("???");
    format!("{kind}{perms} {:>4} {user:<8} {group:<8} {:>8} {month} {when} {name}", m.nlink(), m.len())
}

/// Unix seconds → (year, month 1-12, day, hour, minute), UTC.
pub fn civil(t: i64) -> (i64, i64, i64, i64, i64) {
    let (y, m, d, h, mi, _) = celld_base::civil::civil(t);
    (y, i64::from(m), i64::from(d), i64::from(h), i64::from(mi))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> Result<T, FsError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(FsError::Status(StatusCode::Failure)),
    }
}

impl russh_sftp::server::Handler for Fs {
    type Error = FsError;

    fn unimplemented(&self) -> FsError {
        FsError::Status(StatusCode::OpUnsupported)
    }

    async fn init(&mut self, _version: u32, _extensions: HashMap<String, String>) -> Result<Version, FsError> {
        let mut v = Version::new();
        v.extensions.insert(POSIX_RENAME.into(), "1".into());
        v.extensions.insert(EXPAND_PATH.into(), "1".into());
        Ok(v)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, FsError> {
        let path = self.path(&filename);
        let mut opts: std::fs::OpenOptions = pflags.into();
        opts.mode(attrs.permissions.map_or(0o666, |p| p & 0o7777));
        let f = opts.open(&path)?;
        if f.metadata()?.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::EISDIR).into());
        }
        Ok(Handle { id, handle: self.insert(Open::File(Arc::new(f))) })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, FsError> {
        self.handles.remove(&handle).ok_or(FsError::BadHandle)?;
        Ok(ok(id))
    }

    async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Result<Data, FsError> {
        let f = self.file(&handle)?;
        let len = len.min(MAX_READ) as usize;
        let data = blocking(move || {
            let mut buf = vec![0u8; len];
            let n = f.read_at(&mut buf, offset)?;
            buf.truncate(n);
            Ok(buf)
        })
        .await?;
        if data.is_empty() && len > 0 {
            return Err(FsError::Status(StatusCode::Eof));
        }
        Ok(Data { id, data })
    }

    async fn write(&mut self, id: u32, handle: String, offset: u64, data: Vec<u8>) -> Result<Status, FsError> {
        let f = self.file(&handle)?;
        blocking(move || f.write_all_at(&data, offset)).await?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, FsError> {
        Ok(Attrs { id, attrs: attrs(&std::fs::symlink_metadata(self.path(&path))?) })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, FsError> {
        Ok(Attrs { id, attrs: attrs(&self.file(&handle)?.metadata()?) })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, FsError> {
        Ok(Attrs { id, attrs: attrs(&std::fs::metadata(self.path(&path))?) })
    }

    async fn setstat(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, FsError> {
        set_attrs(&self.path(&path), None, &attrs)?;
        Ok(ok(id))
    }

    async fn fsetstat(&mut self, id: u32, handle: String, attrs: FileAttributes) -> Result<Status, FsError> {
        let f = self.file(&handle)?;
        set_attrs(Path::new(""), Some(&f), &attrs)?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, FsError> {
        let path = self.path(&path);
        // Fail here, not at the first READDIR, for a missing or unreadable dir.
        drop(std::fs::read_dir(&path)?);
        Ok(Handle { id, handle: self.insert(Open::Dir { path, entries: None }) })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, FsError> {
        let Some(Open::Dir { path, entries }) = self.handles.get_mut(&handle) else {
            return Err(FsError::BadHandle);
        };
        if entries.is_none() {
            let dir = path.clone();
            let names = self.names.get_or_insert_with(|| Arc::new(Names::load())).clone();
            let list = blocking(move || {
                let now = now();
                let entry = |name: String, m: &std::fs::Metadata| File {
                    longname: longname(&name, m, &names, now),
                    filename: name,
                    attrs: attrs(m),
                };
                let mut out = VecDeque::new();
                for name in [".", ".."] {
                    if let Ok(m) = std::fs::symlink_metadata(dir.join(name)) {
                        out.push_back(entry(name.to_string(), &m));
                    }
                }
                for e in std::fs::read_dir(&dir)? {
                    let e = e?;
                    if let Ok(m) = e.metadata() {
                        out.push_back(entry(e.file_name().to_string_lossy().into_owned(), &m));
                    }
                }
                Ok(out)
            })
            .await?;
            if let Some(Open::Dir { entries, .. }) = self.handles.get_mut(&handle) {
                *entries = Some(list);
            }
        }
        let Some(Open::Dir { entries, .. }) = self.handles.get_mut(&handle) else {
            return Err(FsError::BadHandle);
        };
        let list = entries.get_or_insert_with(VecDeque::new);
        if list.is_empty() {
            return Err(FsError::Status(StatusCode::Eof));
        }
        let n = list.len().min(DIR_BATCH);
        Ok(Name { id, files: list.drain(..n).collect() })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, FsError> {
        std::fs::remove_file(self.path(&filename))?;
        Ok(ok(id))
    }

    async fn mkdir(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, FsError> {
        let mode = attrs.permissions.map_or(0o777, |p| p & 0o7777);
        std::fs::DirBuilder::new().mode(mode).create(self.path(&path))?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, FsError> {
        std::fs::remove_dir(self.path(&path))?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, FsError> {
        let p = real(&self.path(&path));
        Ok(one_name(id, p.to_string_lossy().into_owned()))
    }

    async fn rename(&mut self, id: u32, oldpath: String, newpath: String) -> Result<Status, FsError> {
        let (old, new) = (self.path(&oldpath), self.path(&newpath));
        // SFTP v3 rename does not replace (posix-rename does).
        if std::fs::symlink_metadata(&new).is_ok() {
            return Err(io::Error::from_raw_os_error(libc::EEXIST).into());
        }
        std::fs::rename(old, new)?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, FsError> {
        let target = std::fs::read_link(self.path(&path))?;
        Ok(one_name(id, target.to_string_lossy().into_owned()))
    }

    /// OpenSSH sends (target, link) where the draft says (link, target), and
    /// every client follows OpenSSH: the first string is the target.
    async fn symlink(&mut self, id: u32, linkpath: String, targetpath: String) -> Result<Status, FsError> {
        std::os::unix::fs::symlink(&linkpath, self.path(&targetpath))?;
        Ok(ok(id))
    }

    async fn extended(&mut self, id: u32, request: String, data: Vec<u8>) -> Result<Packet, FsError> {
        let mut d = data.as_slice();
        match request.as_str() {
            POSIX_RENAME => {
                let (old, new) = take_string(&mut d).zip(take_string(&mut d)).ok_or(FsError::BadMessage)?;
                std::fs::rename(self.path(&old), self.path(&new))?;
                Ok(ok(id).into())
            }
            EXPAND_PATH => {
                let p = take_string(&mut d).ok_or(FsError::BadMessage)?;
                let p = real(&self.path(&p));
                Ok(one_name(id, p.to_string_lossy().into_owned()).into())
            }
            _ => Err(FsError::Status(StatusCode::OpUnsupported)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use russh_sftp::server::Handler;

    #[test]
    fn sshd_sftp_long_names() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0));
        assert_eq!(civil(1_700_000_000), (2023, 11, 14, 22, 13));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0));
        let names = Names {
            users: Names::parse("root:x:0:0:root:/root:/bin/sh\nvcap:x:2000:2000::/home/vcap:/bin/bash\n"),
            groups: Names::parse("root:x:0:\n"),
        };
        assert_eq!(names.users.get(&2000).map(String::as_str), Some("vcap"));
        let d = TempDir::new();
        let f = d.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4751)).unwrap();
        let m = std::fs::metadata(&f).unwrap();
        let line = longname("f", &m, &names, m.mtime() + 60);
        assert!(line.starts_with("-rwsr-x--x    1 "), "{line}");
        let (_, _, day, hh, mm) = civil(m.mtime());
        assert!(line.contains(&format!("{day:>2} {hh:02}:{mm:02} f")), "{line}");
        let old = longname("f", &m, &names, m.mtime() + 400 * 86400);
        let (y, ..) = civil(m.mtime());
        assert!(old.contains(&format!("  {y} f")), "{old}");
        std::os::unix::fs::symlink("f", d.path().join("l")).unwrap();
        let l = longname("l", &std::fs::symlink_metadata(d.path().join("l")).unwrap(), &names, 0);
        assert!(l.starts_with("lrwxrwxrwx"), "{l}");
        let dir = longname(".", &std::fs::metadata(d.path()).unwrap(), &names, 0);
        assert!(dir.starts_with('d'), "{dir}");
    }

    #[test]
    fn sshd_sftp_paths_and_errors() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), Path::new("/a/c"));
        assert_eq!(normalize(Path::new("/../..")), Path::new("/"));
        let r: StatusReply = FsError::Io(io::Error::from_raw_os_error(libc::ENOENT)).into();
        assert_eq!(r.status_code, StatusCode::NoSuchFile);
        assert_eq!(r.error_message.as_deref(), Some("No such file or directory"));
        let r: StatusReply = FsError::Io(io::Error::from_raw_os_error(libc::EACCES)).into();
        assert_eq!(r.status_code, StatusCode::PermissionDenied);
        let r: StatusReply = FsError::Status(StatusCode::Eof).into();
        assert_eq!(r.status_code, StatusCode::Eof);
        let mut d: &[u8] = b"\0\0\0\x03abc\0\0\0\x01d";
        assert_eq!(take_string(&mut d).as_deref(), Some("abc"));
        assert_eq!(take_string(&mut d).as_deref(), Some("d"));
        assert_eq!(take_string(&mut d), None);
    }

    #[tokio::test]
    async fn sshd_sftp_file_operations() {
        let d = TempDir::new();
        let mut fs = Fs::new(d.path().to_path_buf());
        let attrs = FileAttributes { permissions: Some(0o640), ..Default::default() };
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let h = fs.open(1, "f".into(), flags, attrs).await.unwrap().handle;
        fs.write(2, h.clone(), 0, b"hello".to_vec()).await.unwrap();
        fs.close(3, h).await.unwrap();
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"hello");
        let st = fs.stat(4, "f".into()).await.unwrap().attrs;
        assert_eq!((st.size, st.permissions.map(|p| p & 0o777)), (Some(5), Some(0o640)));
        let h = fs.open(5, "f".into(), OpenFlags::READ, FileAttributes::empty()).await.unwrap().handle;
        assert_eq!(fs.read(6, h.clone(), 1, 100).await.unwrap().data, b"ello");
        let eof: StatusReply = fs.read(7, h.clone(), 5, 100).await.unwrap_err().into();
        assert_eq!(eof.status_code, StatusCode::Eof);
        fs.close(8, h).await.unwrap();
        let missing: StatusReply = fs.stat(9, "nope".into()).await.unwrap_err().into();
        assert_eq!(missing.status_code, StatusCode::NoSuchFile);
        let pwd = fs.realpath(10, ".".into()).await.unwrap().files.remove(0).filename;
        assert_eq!(Path::new(&pwd), std::fs::canonicalize(d.path()).unwrap());
        fs.mkdir(11, "sub".into(), FileAttributes::empty()).await.unwrap();
        fs.symlink(12, "f".into(), "sub/link".into()).await.unwrap();
        assert_eq!(fs.readlink(13, "sub/link".into()).await.unwrap().files.remove(0).filename, "f");
        let h = fs.opendir(14, "".into()).await.unwrap().handle;
        let names: Vec<String> =
            fs.readdir(15, h.clone()).await.unwrap().files.into_iter().map(|f| f.filename).collect();
        assert!(names.contains(&"f".to_string()) && names.contains(&"sub".to_string()), "{names:?}");
        assert!(fs.readdir(16, h).await.is_err());
        // Plain rename does not replace; posix-rename does.
        std::fs::write(d.path().join("g"), b"G").unwrap();
        assert!(fs.rename(17, "g".into(), "f".into()).await.is_err());
        let mut data = Vec::new();
        for s in ["g", "f"] {
            data.extend_from_slice(&(s.len() as u32).to_be_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        fs.extended(18, POSIX_RENAME.into(), data).await.unwrap();
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"G");
        fs.setstat(19, "f".into(), FileAttributes { permissions: Some(0o600), ..Default::default() }).await.unwrap();
        assert_eq!(std::fs::metadata(d.path().join("f")).unwrap().mode() & 0o777, 0o600);
        fs.remove(20, "f".into()).await.unwrap();
        std::fs::remove_file(d.path().join("sub/link")).unwrap();
        fs.rmdir(21, "sub".into()).await.unwrap();
        assert!(!d.path().join("sub").exists());
    }
}
