//! Running one buildpack script as the reference lifecycle does: inherited
//! environment, cwd and output (stdout captured up to a cap when the lifecycle
//! reads it), stdin `/dev/null`, and a fallback through the `#!` interpreter
//! for scripts that lost their execute bit.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::errors::ScriptError;
use super::staging::Builder;

impl Builder<'_> {
    /// Runs a buildpack script with the builder's environment, cwd and
    /// stderr; stdout too unless `capture` (then up to that many bytes are
    /// kept, the rest read and dropped; the flag says whether any was).
    pub(super) fn run_script(
        &mut self,
        script: &Path,
        args: &[&OsStr],
        capture: Option<usize>,
    ) -> Result<(Vec<u8>, bool), ScriptError> {
        self.run_script_as(script, args, capture, Shebang::Fallback)
    }

    /// [`Self::run_script`], choosing whether a script without its execute
    /// bit is run through its `#!` interpreter.
    pub(super) fn run_script_as(
        &mut self,
        script: &Path,
        args: &[&OsStr],
        capture: Option<usize>,
        shebang: Shebang,
    ) -> Result<(Vec<u8>, bool), ScriptError> {
        let _ = io::stdout().flush();
        let mut child = self.spawn(script, args, capture.is_some(), shebang)?;
        let mut out = Vec::new();
        let mut overflow = false;
        if let (Some(limit), Some(mut pipe)) = (capture, child.stdout.take()) {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let chunk = buf.get(..n).unwrap_or_default();
                        if out.len() + n <= limit {
                            out.extend_from_slice(chunk);
                        } else {
                            overflow = true;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let status = child.wait().map_err(ScriptError::Wait)?;
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok((out, overflow)),
            (Some(code), _) => Err(ScriptError::Exit(code)),
            (None, Some(sig)) => Err(ScriptError::Signal(sig)),
            (None, None) => Err(ScriptError::Exit(-1)),
        }
    }

    fn command(&self, program: &Path, capture: bool) -> Command {
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null());
        if capture {
            cmd.stdout(Stdio::piped());
        } else if self.cfg.quiet_scripts {
            cmd.stdout(Stdio::null());
        }
        if self.cfg.quiet_scripts {
            cmd.stderr(Stdio::null());
        }
        cmd.envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Execs the script directly (it has a shebang). One that is not
    /// executable (or has no shebang) is run through its `#!` interpreter, or
    /// `/bin/sh`, with a warning; "text file busy" (a writer elsewhere has
    /// not closed it yet) is retried for a second.
    fn spawn(&mut self, script: &Path, args: &[&OsStr], capture: bool, shebang: Shebang) -> Result<Child, ScriptError> {
        let mut busy = 0;
        loop {
            let err = match self.command(script, capture).args(args).spawn() {
                Ok(child) => return Ok(child),
                Err(e) => e,
            };
            match err.raw_os_error() {
                Some(libc::ETXTBSY) if busy < 100 => {
                    busy += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Some(libc::EACCES) if shebang == Shebang::ExecOnly => {
                    return Err(ScriptError::Spawn(script.to_path_buf(), err));
                }
                Some(code @ (libc::EACCES | libc::ENOEXEC)) if fs::metadata(script).is_ok_and(|m| m.is_file()) => {
                    let Some((interpreter, arg)) = interpreter(script) else {
                        return Err(ScriptError::Spawn(script.to_path_buf(), err));
                    };
                    if code == libc::EACCES {
                        let name = script.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        self.say(format!("WARNING: buildpack script '/bin/{name}' is not executable"));
                    }
                    let mut cmd = self.command(&interpreter, capture);
                    if let Some(arg) = arg {
                        cmd.arg(arg);
                    }
                    return cmd.arg(script).args(args).spawn().map_err(|e| ScriptError::Spawn(interpreter, e));
                }
                _ => return Err(ScriptError::Spawn(script.to_path_buf(), err)),
            }
        }
    }
}

/// What to do with a script that lost its execute bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shebang {
    /// Run it through its `#!` interpreter after a warning (supply, finalize,
    /// compile, release: the reference lifecycle's shell wrapper does).
    Fallback,
    /// Fail to start it (`bin/detect`: the reference lifecycle execs it
    /// directly, so a non-executable one never matches).
    ExecOnly,
}

/// The interpreter a script's `#!` line names (and its one optional
/// argument, as the kernel passes it), or `/bin/sh` for a script without one.
/// `None` if the script cannot be read.
fn interpreter(script: &Path) -> Option<(PathBuf, Option<OsString>)> {
    let mut head = Vec::new();
    fs::File::open(script).ok()?.take(256).read_to_end(&mut head).ok()?;
    let Some(line) = head.strip_prefix(b"#!") else { return Some((PathBuf::from("/bin/sh"), None)) };
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    let (program, arg) = match line.split_once([' ', '\t']) {
        Some((p, a)) => (p, Some(a.trim()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    if program.is_empty() {
        return Some((PathBuf::from("/bin/sh"), None));
    }
    Some((PathBuf::from(program), arg.map(OsString::from)))
}
