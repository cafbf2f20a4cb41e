//! Archives in and out of a staging.
//!
//! **In**: app packages, build caches and buildpacks arrive as zip, tar or
//! gzipped tar (told apart by their first bytes, never by name) and are
//! untrusted. Extraction writes nothing outside the destination:
//! - entry names are cleaned (leading `/` and `.` dropped, as GNU tar does) and
//!   any `..` component is refused;
//! - every directory on the way to an entry must be a real directory (not a
//!   symlink), and files are created with `O_CREAT|O_EXCL|O_NOFOLLOW` after any
//!   old file or link of that name is unlinked, so no write goes through a
//!   symlink, whichever entry made it;
//! - symlinks must resolve inside the destination, checked when created and
//!   again once every entry is out (a later link can change what an earlier
//!   one points to); absolute targets are refused;
//! - hard links must name a regular file already extracted;
//! - modes keep the execute bits but lose set-id, sticky, group and other
//!   write bits (the owner can always read and write); ownership and xattrs are
//!   ignored; devices and fifos are skipped;
//! - total size and entry count are capped ([`Limits`]).
//!
//! The daemon can use [`extract`] on the host for the same reasons.
//!
//! **Out**: the droplet and the build cache are gzipped tars in the layout of
//! `tar -czf OUT -C DIR .` (`./`, then `./app/`, …), with deterministic
//! headers (uid/gid 0, a fixed mtime, 0644/0755 modes), symlinks stored as
//! symlinks and never followed.
//!
//! Files: `sniff.rs` tells the format, `extract.rs` reads zip and tar entries
//! into the `sink.rs` that enforces the rules above, `pack.rs` writes the
//! tars out, and `error.rs` is what all of them report.

mod error;
mod extract;
mod pack;
mod sink;
mod sniff;

pub use error::ArchiveError;
pub use extract::{extract, extract_tar};
pub use pack::{TgzWriter, pack_dir, pack_dir_tgz};
pub use sink::{Limits, Stats};
pub use sniff::{Format, sniff};
