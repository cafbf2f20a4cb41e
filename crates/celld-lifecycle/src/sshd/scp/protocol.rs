//! The transfer itself: the records (`C`, `D`, `E`, `T`) and their answers,
//! receiving (`-t`) and sending (`-f`) files and directory trees, as OpenSSH's
//! `scp.c` does.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::command::{Mode, Request};

/// The longest record line accepted.
const MAX_LINE: usize = 4096;
const CHUNK: usize = 64 * 1024;

/// Serves one request; returns the exit code (0, or 1 after any error).
pub async fn run<R, W>(req: &Request, cwd: &Path, input: &mut R, out: &mut W) -> i32
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut scp = Scp { input, out, cwd, recursive: req.recursive, preserve: req.preserve, errs: 0 };
    let r = match req.mode {
        Mode::Sink => match req.paths.first() {
            Some(target) => scp.sink(target, req.want_dir).await,
            None => Err(Stop::Fatal),
        },
        Mode::Source => scp.source(&req.paths).await,
    };
    let _ = scp.out.flush().await;
    match r {
        Ok(()) if scp.errs == 0 => 0,
        _ => 1,
    }
}

/// Why a transfer stops early.
#[derive(Debug)]
enum Stop {
    /// The peer went away (EOF inside a record, or our writes fail).
    Lost,
    /// A fatal error, already reported to the peer.
    Fatal,
}

impl From<io::Error> for Stop {
    fn from(_: io::Error) -> Self {
        Stop::Lost
    }
}

/// A `C` or `D` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub dir: bool,
    pub mode: u32,
    pub size: u64,
    pub name: Vec<u8>,
}

/// Parses `C0644 123 name` / `D0755 0 name` (without the newline).
pub fn parse_header(line: &[u8]) -> Result<Header, &'static str> {
    let (kind, rest) = line.split_first().ok_or("expected control record")?;
    let dir = match kind {
        b'C' => false,
        b'D' => true,
        _ => return Err("expected control record"),
    };
    let sp = rest.iter().position(|&b| b == b' ').ok_or("mode not delimited")?;
    let (mode, rest) = (rest.get(..sp).unwrap_or_default(), rest.get(sp + 1..).unwrap_or_default());
    if mode.is_empty() || !mode.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err("bad mode");
    }
    let mode = mode.iter().try_fold(0u32, |m, b| m.checked_mul(8).and_then(|m| m.checked_add(u32::from(b - b'0'))));
    let mode = mode.filter(|m| *m <= 0o7777).ok_or("bad mode")?;
    let sp = rest.iter().position(|&b| b == b' ').ok_or("size not delimited")?;
    let (size, name) = (rest.get(..sp).unwrap_or_default(), rest.get(sp + 1..).unwrap_or_default());
    if size.is_empty() || !size.iter().all(u8::is_ascii_digit) {
        return Err("size not delimited");
    }
    let size = std::str::from_utf8(size).ok().and_then(|s| s.parse::<u64>().ok()).ok_or("size out of range")?;
    Ok(Header { dir, mode, size, name: name.to_vec() })
}

/// Parses `T<mtime> <usec> <atime> <usec>` into (mtime, atime).
pub fn parse_times(line: &[u8]) -> Result<(i64, i64), &'static str> {
    let rest = line.strip_prefix(b"T").ok_or("expected time record")?;
    let text = std::str::from_utf8(rest).map_err(|_| "bad time record")?;
    let nums: Vec<i64> =
        text.split(' ').map(|p| p.parse::<i64>()).collect::<Result<_, _>>().map_err(|_| "bad time record")?;
    match nums.as_slice() {
        &[mtime, mu, atime, au]
            if (0..1_000_000).contains(&mu) && (0..1_000_000).contains(&au) && mtime >= 0 && atime >= 0 =>
        {
            Ok((mtime, atime))
        }
        _ => Err("bad time record"),
    }
}

/// A path as the client named it, from the session's directory. `~` is that
/// directory too (it is `$HOME`).
pub(crate) fn resolve(cwd: &Path, p: &str) -> PathBuf {
    match p {
        "" | "~" => cwd.to_path_buf(),
        _ => match p.strip_prefix("~/") {
            Some(rest) => cwd.join(rest),
            None => cwd.join(p),
        },
    }
}

/// An OS error as `strerror` words ("No such file or directory").
pub(crate) fn error_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s.get(..i).unwrap_or(&s).to_string(),
        None => s,
    }
}

fn set_times(path: &Path, mtime: i64, atime: i64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let ts = [libc::timespec { tv_sec: atime, tv_nsec: 0 }, libc::timespec { tv_sec: mtime, tv_nsec: 0 }];
    // SAFETY: a valid C string and a two-element timespec array.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
}

/// A directory entered with `D`: restored on `E`.
struct Frame {
    parent: PathBuf,
    parent_is_dir: bool,
    dir: PathBuf,
    times: Option<(i64, i64)>,
    mode: Option<u32>,
}

/// Work for the source side.
enum Work {
    Path(String),
    EndDir,
}

struct Scp<'a, R, W> {
    input: &'a mut R,
    out: &'a mut W,
    cwd: &'a Path,
    recursive: bool,
    preserve: bool,
    errs: u32,
}

impl<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin> Scp<'_, R, W> {
    async fn ack(&mut self) -> Result<(), Stop> {
        self.out.write_all(b"\0").await?;
        Ok(())
    }

    /// A non-fatal error for the peer (`\x01scp: …`).
    async fn run_err(&mut self, msg: &str) -> Result<(), Stop> {
        self.errs += 1;
        let line = format!("\x01scp: {}\n", msg.replace('\n', " "));
        self.out.write_all(line.as_bytes()).await?;
        Ok(())
    }

    async fn screwup(&mut self, what: &str) -> Result<(), Stop> {
        self.run_err(&format!("protocol error: {what}")).await?;
        Err(Stop::Fatal)
    }

    /// One record line without its newline; `None` at EOF before a record.
    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, Stop> {
        let mut line = Vec::new();
        loop {
            let buf = self.input.fill_buf().await?;
            if buf.is_empty() {
                if line.is_empty() {
                    return Ok(None);
                }
                return Err(Stop::Lost);
            }
            let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (buf.get(..=i).unwrap_or_default(), true),
                None => (buf, false),
            };
            let n = chunk.len();
            line.extend_from_slice(chunk);
            self.input.consume(n);
            if found {
                line.pop();
                return Ok(Some(line));
            }
            if line.len() > MAX_LINE {
                self.screwup("record too long").await?;
            }
        }
    }

    /// The peer's answer to a record: `Ok(true)` for `\0`, `Ok(false)` for an
    /// error it reported, `Err(Fatal)` for a fatal one.
    async fn response(&mut self) -> Result<bool, Stop> {
        let mut b = [0u8; 1];
        if self.input.read(&mut b).await? == 0 {
            return Err(Stop::Lost);
        }
        let [code] = b;
        if code == 0 {
            return Ok(true);
        }
        // The message (not shown: on this side nobody reads stderr).
        let _ = self.read_line().await?;
        self.errs += 1;
        if code == 1 { Ok(false) } else { Err(Stop::Fatal) }
    }

    async fn sink(&mut self, target: &str, want_dir: bool) -> Result<(), Stop> {
        let mut targ = resolve(self.cwd, target);
        if want_dir && !targ.is_dir() {
            self.run_err(&format!("{target}: Not a directory")).await?;
            return Err(Stop::Fatal);
        }
        self.ack().await?;
        let mut targ_is_dir = targ.is_dir();
        let mut stack: Vec<Frame> = Vec::new();
        let mut times: Option<(i64, i64)> = None;
        let mut first = true;
        while let Some(line) = self.read_line().await? {
            let was_first = std::mem::replace(&mut first, false);
            match line.first() {
                Some(1 | 2) => {
                    self.errs += 1;
                    if line.first() == Some(&2) {
                        return Err(Stop::Fatal);
                    }
                    continue;
                }
                Some(b'E') => {
                    self.ack().await?;
                    match stack.pop() {
                        Some(f) => {
                            targ = f.parent.clone();
                            targ_is_dir = f.parent_is_dir;
                            close_dir(&f);
                            continue;
                        }
                        None => break,
                    }
                }
                Some(b'T') => {
                    match parse_times(&line) {
                        Ok(t) => times = Some(t),
                        Err(e) => self.screwup(e).await?,
                    }
                    self.ack().await?;
                    continue;
                }
                Some(b'C' | b'D') => {}
                _ => {
                    if was_first {
                        self.run_err(&String::from_utf8_lossy(&line)).await?;
                        return Err(Stop::Fatal);
                    }
                    self.screwup("expected control record").await?;
                }
            }
            let h = match parse_header(&line) {
                Ok(h) => h,
                Err(e) => return self.screwup(e).await,
            };
            if h.name.is_empty() || h.name.contains(&b'/') || h.name == b".." || h.name == b"." {
                self.run_err(&format!("error: unexpected filename: {}", String::from_utf8_lossy(&h.name))).await?;
                return Err(Stop::Fatal);
            }
            let name = OsString::from_vec(h.name.clone());
            let np = if targ_is_dir { targ.join(&name) } else { targ.clone() };
            if h.dir {
                if !self.recursive {
                    return self.screwup("received directory without -r").await;
                }
                let mut chmod_after = self.preserve;
                match std::fs::metadata(&np) {
                    Ok(m) if m.is_dir() => {
                        if self.preserve {
                            let _ = set_mode(&np, h.mode);
                        }
                    }
                    Ok(_) => {
                        times = None;
                        self.run_err(&format!("{}: Not a directory", np.display())).await?;
                        continue;
                    }
                    Err(_) => {
                        // Writable while we fill it; its own mode at `E`.
                        chmod_after = true;
                        if let Err(e) = std::fs::DirBuilder::new().mode(h.mode | 0o700).create(&np) {
                            times = None;
                            self.run_err(&format!("{}: {}", np.display(), error_text(&e))).await?;
                            continue;
                        }
                    }
                }
                stack.push(Frame {
                    parent: std::mem::replace(&mut targ, np.clone()),
                    parent_is_dir: std::mem::replace(&mut targ_is_dir, true),
                    dir: np,
                    times: times.take(),
                    mode: chmod_after.then_some(h.mode),
                });
                self.ack().await?;
                continue;
            }
            let t = times.take();
            self.receive_file(&np, h.mode, h.size, t).await?;
        }
        // EOF: leave the directories still open, as the recursion unwinds.
        while let Some(f) = stack.pop() {
            close_dir(&f);
        }
        if times.is_some() {
            self.screwup("expected file after time record").await?;
        }
        Ok(())
    }

    async fn receive_file(&mut self, np: &Path, mode: u32, size: u64, times: Option<(i64, i64)>) -> Result<(), Stop> {
        let exists = std::fs::metadata(np).is_ok();
        let cmode = mode | 0o200;
        let opened = tokio::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(cmode).open(np).await;
        let mut file = match opened {
            Ok(f) => f,
            Err(e) => {
                // The source sends no data after an error answer.
                return self.run_err(&format!("{}: {}", np.display(), error_text(&e))).await;
            }
        };
        self.ack().await?;
        let mut wrerr: Option<io::Error> = None;
        let mut remaining = size;
        let mut buf = vec![0u8; CHUNK];
        while remaining > 0 {
            let want = usize::try_from(remaining).unwrap_or(usize::MAX).min(buf.len());
            let n = self.input.read(buf.get_mut(..want).unwrap_or_default()).await?;
            if n == 0 {
                return Err(Stop::Lost);
            }
            if wrerr.is_none()
                && let Err(e) = file.write_all(buf.get(..n).unwrap_or_default()).await
            {
                wrerr = Some(e);
            }
            remaining -= n as u64;
        }
        if wrerr.is_none() {
            let done = async {
                file.flush().await?;
                file.set_len(size).await?;
                // Without -p a new file keeps the umask; the owner write bit
                // added for the transfer goes again if the mode lacked it.
                if self.preserve {
                    if exists || mode != cmode {
                        file.set_permissions(std::fs::Permissions::from_mode(mode)).await?;
                    }
                } else if !exists && mode != cmode {
                    let now = file.metadata().await?.permissions().mode();
                    file.set_permissions(std::fs::Permissions::from_mode(now & 0o7777 & !0o200)).await?;
                }
                file.flush().await
            };
            if let Err(e) = done.await {
                wrerr = Some(e);
            }
        }
        drop(file);
        self.response().await?;
        if let (Some((mtime, atime)), None) = (times, &wrerr)
            && let Err(e) = set_times(np, mtime, atime)
        {
            self.run_err(&format!("{}: set times: {}", np.display(), error_text(&e))).await?;
        }
        match wrerr {
            Some(e) => self.run_err(&format!("{}: {}", np.display(), error_text(&e))).await,
            None => self.ack().await,
        }
    }

    async fn source(&mut self, paths: &[String]) -> Result<(), Stop> {
        // The sink speaks first.
        self.response().await?;
        let mut work: Vec<Work> = paths.iter().rev().map(|p| Work::Path(p.clone())).collect();
        while let Some(w) = work.pop() {
            match w {
                Work::EndDir => {
                    self.out.write_all(b"E\n").await?;
                    self.response().await?;
                }
                Work::Path(name) => self.send_path(name, &mut work).await?,
            }
        }
        Ok(())
    }

    async fn send_path(&mut self, mut name: String, work: &mut Vec<Work>) -> Result<(), Stop> {
        while name.len() > 1 && name.ends_with('/') {
            name.pop();
        }
        if name.contains('\n') {
            return self
                .run_err(&format!("{}: skipping, filename contains a newline", name.replace('\n', "\\n")))
                .await;
        }
        let path = resolve(self.cwd, &name);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => return self.run_err(&format!("{name}: {}", error_text(&e))).await,
        };
        let last = name.rsplit('/').next().filter(|l| !l.is_empty()).unwrap_or(&name).to_string();
        if meta.is_dir() {
            if !self.recursive {
                return self.run_err(&format!("{name}: not a regular file")).await;
            }
            let mut entries: Vec<String> = match std::fs::read_dir(&path) {
                Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
                Err(e) => return self.run_err(&format!("{name}: {}", error_text(&e))).await,
            };
            entries.sort();
            if self.preserve && !self.send_times(&meta).await? {
                return Ok(());
            }
            let rec = format!("D{:04o} 0 {last}\n", meta.mode() & 0o7777);
            self.out.write_all(rec.as_bytes()).await?;
            if !self.response().await? {
                return Ok(());
            }
            work.push(Work::EndDir);
            let base = if name == "/" { String::new() } else { name.clone() };
            work.extend(entries.into_iter().rev().map(|e| Work::Path(format!("{base}/{e}"))));
            return Ok(());
        }
        if !meta.is_file() {
            return self.run_err(&format!("{name}: not a regular file")).await;
        }
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => return self.run_err(&format!("{name}: {}", error_text(&e))).await,
        };
        if self.preserve && !self.send_times(&meta).await? {
            return Ok(());
        }
        let size = meta.len();
        let rec = format!("C{:04o} {size} {last}\n", meta.mode() & 0o7777);
        self.out.write_all(rec.as_bytes()).await?;
        if !self.response().await? {
            return Ok(());
        }
        // Exactly `size` bytes, zero-padded if the file shrank or failed.
        let mut haderr: Option<io::Error> = None;
        let mut remaining = size;
        let mut buf = vec![0u8; CHUNK];
        while remaining > 0 {
            let want = usize::try_from(remaining).unwrap_or(usize::MAX).min(buf.len());
            let chunk = buf.get_mut(..want).unwrap_or_default();
            let n = if haderr.is_some() {
                0
            } else {
                match file.read(chunk).await {
                    Ok(n) => n,
                    Err(e) => {
                        haderr = Some(e);
                        0
                    }
                }
            };
            if n == 0 {
                if haderr.is_none() {
                    haderr = Some(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"));
                }
                chunk.fill(0);
                self.out.write_all(chunk).await?;
                remaining -= want as u64;
            } else {
                self.out.write_all(chunk.get(..n).unwrap_or_default()).await?;
                remaining -= n as u64;
            }
        }
        match haderr {
            None => self.ack().await?,
            Some(e) => self.run_err(&format!("{name}: {}", error_text(&e))).await?,
        }
        self.response().await?;
        Ok(())
    }

    async fn send_times(&mut self, meta: &std::fs::Metadata) -> Result<bool, Stop> {
        let rec = format!("T{} 0 {} 0\n", meta.mtime().max(0), meta.atime().max(0));
        self.out.write_all(rec.as_bytes()).await?;
        self.response().await
    }
}

/// The end of a received directory: its times and mode, now that its
/// contents are written.
fn close_dir(f: &Frame) {
    if let Some((mtime, atime)) = f.times {
        let _ = set_times(&f.dir, mtime, atime);
    }
    if let Some(mode) = f.mode {
        let _ = set_mode(&f.dir, mode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sshd::scp::command::tests::req;
    use crate::testutil::TempDir;

    #[test]
    fn sshd_scp_headers() {
        let h = parse_header(b"C0751 5242880 file name.bin").unwrap();
        assert_eq!(h, Header { dir: false, mode: 0o751, size: 5242880, name: b"file name.bin".to_vec() });
        let h = parse_header(b"D0755 0 sub").unwrap();
        assert!(h.dir);
        assert_eq!(parse_header(b"X0644 1 a"), Err("expected control record"));
        assert_eq!(parse_header(b"C0644"), Err("mode not delimited"));
        assert_eq!(parse_header(b"C0648 1 a"), Err("bad mode"));
        assert_eq!(parse_header(b"C77777 1 a"), Err("bad mode"));
        assert_eq!(parse_header(b"C0644 x a"), Err("size not delimited"));
        assert_eq!(parse_header(b"C0644 12"), Err("size not delimited"));
        assert_eq!(parse_times(b"T1700000000 0 1600000000 0"), Ok((1_700_000_000, 1_600_000_000)));
        assert!(parse_times(b"T1 0 2").is_err());
        assert!(parse_times(b"T1 0 2 1000000").is_err());
    }

    #[test]
    fn sshd_scp_resolve_and_errors() {
        let cwd = Path::new("/home/vcap/app");
        assert_eq!(resolve(cwd, ""), cwd);
        assert_eq!(resolve(cwd, "~"), cwd);
        assert_eq!(resolve(cwd, "~/x"), cwd.join("x"));
        assert_eq!(resolve(cwd, "x/y"), cwd.join("x/y"));
        assert_eq!(resolve(cwd, "/tmp/z"), Path::new("/tmp/z"));
        assert_eq!(error_text(&io::Error::from_raw_os_error(libc::ENOENT)), "No such file or directory");
    }

    async fn serve(r: &Request, cwd: &Path, input: &[u8]) -> (i32, Vec<u8>) {
        let mut rd = tokio::io::BufReader::new(input);
        let mut out = Vec::new();
        let code = run(r, cwd, &mut rd, &mut out).await;
        (code, out)
    }

    #[tokio::test]
    async fn sshd_scp_sink_receives_files_and_dirs() {
        let d = TempDir::new();
        let mut r = req(Mode::Sink, &["."]);
        r.recursive = true;
        r.preserve = true;
        let mut input = Vec::new();
        input.extend_from_slice(b"C0751 5 a.txt\nhello\0");
        input.extend_from_slice(b"T1600000000 0 1600000001 0\nD0700 0 sub\n");
        input.extend_from_slice(b"C0600 3 b\nxyz\0E\n");
        let (code, out) = serve(&r, d.path(), &input).await;
        assert_eq!(code, 0, "{out:?}");
        // Ready, C ack, data ack, T ack, D ack, C ack, data ack, E ack.
        assert_eq!(out, vec![0u8; 8]);
        assert_eq!(std::fs::read(d.path().join("a.txt")).unwrap(), b"hello");
        let m = std::fs::metadata(d.path().join("a.txt")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o751);
        assert_eq!(std::fs::read(d.path().join("sub/b")).unwrap(), b"xyz");
        let m = std::fs::metadata(d.path().join("sub")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o700, 1_600_000_000));
    }

    #[tokio::test]
    async fn sshd_scp_sink_refuses_bad_names_and_dirs_without_r() {
        let d = TempDir::new();
        let (code, out) = serve(&req(Mode::Sink, &["."]), d.path(), b"C0644 1 ../x\nz\0").await;
        assert_eq!(code, 1);
        assert!(out.starts_with(b"\0\x01scp: error: unexpected filename: ../x\n"), "{out:?}");
        let (code, out) = serve(&req(Mode::Sink, &["."]), d.path(), b"D0755 0 sub\nE\n").await;
        assert_eq!(code, 1);
        assert!(String::from_utf8_lossy(&out).contains("received directory without -r"));
        // A single file to a new name.
        let (code, _) = serve(&req(Mode::Sink, &["new.bin"]), d.path(), b"C0640 2 other\nhi\0").await;
        assert_eq!(code, 0);
        assert_eq!(std::fs::read(d.path().join("new.bin")).unwrap(), b"hi");
    }

    #[tokio::test]
    async fn sshd_scp_source_sends_files() {
        let d = TempDir::new();
        std::fs::write(d.path().join("f"), b"data").unwrap();
        std::fs::set_permissions(d.path().join("f"), std::fs::Permissions::from_mode(0o751)).unwrap();
        // Sink ready, C ack, data ack.
        let (code, out) = serve(&req(Mode::Source, &["f"]), d.path(), b"\0\0\0").await;
        assert_eq!(code, 0);
        assert_eq!(out, b"C0751 4 f\ndata\0");
        let (code, out) = serve(&req(Mode::Source, &["missing"]), d.path(), b"\0").await;
        assert_eq!(code, 1);
        assert_eq!(out, b"\x01scp: missing: No such file or directory\n");
        // A directory without -r is not sent; with -r it is, with E at its end.
        std::fs::create_dir(d.path().join("dir")).unwrap();
        std::fs::write(d.path().join("dir/g"), b"G").unwrap();
        std::fs::set_permissions(d.path().join("dir/g"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let (code, out) = serve(&req(Mode::Source, &["dir"]), d.path(), b"\0").await;
        assert_eq!((code, out), (1, b"\x01scp: dir: not a regular file\n".to_vec()));
        let mut r = req(Mode::Source, &["dir/"]);
        r.recursive = true;
        let (code, out) = serve(&r, d.path(), b"\0\0\0\0\0").await;
        assert_eq!(code, 0);
        let mode = std::fs::metadata(d.path().join("dir")).unwrap().mode() & 0o7777;
        assert_eq!(String::from_utf8_lossy(&out), format!("D{mode:04o} 0 dir\nC0644 1 g\nG\0E\n"));
    }
}
