//! Why the builder stops, and how a buildpack script ended, worded as the
//! reference lifecycle (and Go's `exec`) word them, since Cloud Controller and
//! `cf push` users read these lines.

use std::io;
use std::path::PathBuf;

use crate::{COMPILE_FAIL_CODE, DETECT_FAIL_CODE, FINALIZE_FAIL_CODE, RELEASE_FAIL_CODE, SUPPLY_FAIL_CODE};

pub(super) const DETECT_FAIL_MSG: &str = "None of the buildpacks detected a compatible application";
pub(super) const COMPILE_FAIL_MSG: &str = "Failed to compile droplet";
pub(super) const RELEASE_FAIL_MSG: &str = "Failed to build droplet release";
pub(super) const SUPPLY_FAIL_MSG: &str = "Failed to run all supply scripts";
pub(super) const NO_SUPPLY_SCRIPT_MSG: &str =
    "Error: one of the buildpacks chosen to supply dependencies does not support multi-buildpack apps";
pub(super) const FINALIZE_FAIL_MSG: &str = "Failed to run finalize script";

/// Why the builder stopped. `Display` is the line printed on stderr, in the
/// reference lifecycle's words where it has some.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Usage(String),
    #[error("{DETECT_FAIL_MSG}")]
    Detect,
    #[error("{0}")]
    Supply(String),
    #[error("{0}")]
    Compile(String),
    #[error("{0}")]
    Finalize(String),
    #[error("{0}")]
    Release(String),
    /// Extraction, I/O, an invalid Procfile or launch.yml: exit 1.
    #[error("{0}")]
    Failed(String),
}

impl BuildError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BuildError::Detect => DETECT_FAIL_CODE,
            BuildError::Compile(_) => COMPILE_FAIL_CODE,
            BuildError::Release(_) => RELEASE_FAIL_CODE,
            BuildError::Supply(_) => SUPPLY_FAIL_CODE,
            BuildError::Finalize(_) => FINALIZE_FAIL_CODE,
            BuildError::Usage(_) | BuildError::Failed(_) => 1,
        }
    }
}

/// How a buildpack script ended, worded as Go's `exec` errors are (the
/// reference lifecycle prints those).
#[derive(Debug)]
pub(super) enum ScriptError {
    Exit(i32),
    Signal(i32),
    Spawn(PathBuf, io::Error),
    Wait(io::Error),
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScriptError::Exit(code) => write!(f, "exit status {code}"),
            ScriptError::Signal(sig) => write!(f, "signal: {}", signal_name(*sig)),
            ScriptError::Spawn(path, e) => write!(f, "fork/exec {}: {}", path.display(), os_error_text(e)),
            ScriptError::Wait(e) => write!(f, "wait: {}", os_error_text(e)),
        }
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGHUP => "hangup".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGQUIT => "quit".into(),
        libc::SIGILL => "illegal instruction".into(),
        libc::SIGABRT => "aborted".into(),
        libc::SIGBUS => "bus error".into(),
        libc::SIGFPE => "floating point exception".into(),
        libc::SIGKILL => "killed".into(),
        libc::SIGSEGV => "segmentation fault".into(),
        libc::SIGPIPE => "broken pipe".into(),
        libc::SIGTERM => "terminated".into(),
        n => format!("signal {n}"),
    }
}

/// "No such file or directory (os error 2)" → "no such file or directory".
pub(super) fn os_error_text(e: &io::Error) -> String {
    let s = e.to_string();
    let s = match s.rfind(" (os error ") {
        Some(i) => s.get(..i).unwrap_or(&s).to_string(),
        None => s,
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => s,
    }
}
