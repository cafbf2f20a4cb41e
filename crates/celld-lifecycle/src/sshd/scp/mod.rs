//! The legacy SCP protocol (`scp -O`, and every scp before OpenSSH 9), served
//! in-process as Diego's sshd does: the container's rootfs may have no `scp`.
//!
//! The client runs `scp -t TARGET` (we are the sink: upload) or `scp -f
//! PATH…` (we are the source: download) with `-r` (recursive), `-p` (times and
//! modes), `-d` (target must be a directory). Records are lines:
//! `C<mode> <size> <name>` (a file; its bytes and a `\0` follow), `D<mode> 0
//! <name>` / `E` (enter / leave a directory), `T<mtime> 0 <atime> 0` (times of
//! the next record). Every record is answered with `\0`, or `\x01message\n`
//! (an error, the transfer goes on) or `\x02message\n` (fatal). This follows
//! OpenSSH's `scp.c` (`sink`, `source`, `rsource`, `response`, `run_err`).
//!
//! `command.rs` recognises an exec request as a server-side scp (a shell
//! would otherwise run it); `protocol.rs` serves the transfer.

mod command;
mod protocol;

pub use command::{Request, parse_command};
pub use protocol::run;
pub(crate) use protocol::{error_text, resolve};
