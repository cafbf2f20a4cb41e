//! A container's init (`garden-init`, pid 1 of every container) and what the
//! daemon shares with it: the init protocol, `/etc/passwd` users and
//! capability sets. Kept apart from the rest of the runtime so that init can
//! be a small static binary of its own (`celld-init`), which the helper execs
//! at the end of a container's set-up.

pub mod caps;
pub mod init;
pub mod initproto;
pub mod users;
