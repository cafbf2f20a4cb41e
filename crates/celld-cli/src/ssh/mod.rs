//! `cellctl ssh` and friends: the client side of `cf ssh`.
//!
//! Two layers:
//!
//! - **Transport** (no gRPC, usable by tests and the benchmark): [`connect`] an
//!   SSH server described by an [`SshTarget`] (password or key, host key checked
//!   against a `SHA256:` fingerprint before authenticating), then
//!   [`run_session`] (a shell or a command, with or without a pty, `-L`
//!   forwards, `-N`) over caller-given stdin/stdout/stderr, or the [`exec`]
//!   shortcut that collects the output. [`Connection::forward_local`] opens one
//!   `-L` forward on its own.
//! - **Commands** (`ssh`, `ssh-code`, `allow-space-ssh`, `disallow-space-ssh`,
//!   `space-ssh-allowed`): the `Apps` API gives the app's guid, the proxy's
//!   address and fingerprint and a one-time code; the local terminal is put in
//!   raw mode for a pty session and restored on every way out.
//!
//! The behaviour follows the cf CLI: the pty decision, `-L`'s syntax and its
//! `localhost` default bind address, the `keepalive@cloudfoundry.org` global
//! request every 30 s, and the exit code (the remote exit status; after a
//! signal, 128 + its number and a `Process terminated by signal` line).
//!
//! The files, each using only those above it: `config` (algorithms, sizes,
//! timeouts), `error`, `fingerprint`, `connection` (login and host key
//! check), `forward` (`-L`), `session`, `terminal` (pty choice, raw mode) and
//! `commands` (the cellctl commands, over `cli::api`).

mod commands;
mod config;
mod connection;
mod error;
mod fingerprint;
mod forward;
mod session;
mod terminal;

pub use commands::{SshArgs, run_ssh, set_space_ssh, space_ssh_allowed, ssh, ssh_code};
pub use config::{KEEPALIVE_INTERVAL, client_config};
pub use connection::{Connection, SshAuth, SshTarget, connect};
pub use error::SshError;
pub use fingerprint::{ExpectedFingerprint, fingerprint};
pub use forward::{Forwarding, LocalForward};
pub use session::{ExecOutput, Exit, PtyRequest, SessionOpts, WindowSize, exec, run_session};
pub use terminal::{RawMode, TtyRequest, terminal_size, want_pty};
