//! Garden's StreamIn and StreamOut: children of init that take over a daemon
//! connection, become the user, and unpack or write a tar stream inside the
//! container, so files are read and written with the container's view and
//! the user's permissions.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::exec::{become_user, mkdir_all_owned};
use crate::initproto::{self as proto, ErrorKind, Reply};
use crate::users::{self, User};

fn send_reply(conn: &mut std::fs::File, r: &Reply) {
    let _ = conn.write_all(&proto::json_frame(proto::TAG_REPLY, r));
}

fn enter_user(conn: &mut std::fs::File, user_spec: &str) -> Option<User> {
    let user = match users::lookup(Path::new("/"), user_spec) {
        Ok(u) => u,
        Err(e) => {
            send_reply(conn, &Reply::err(ErrorKind::UserNotFound, e.to_string()));
            return None;
        }
    };
    if become_user(&user).is_err()
        || std::env::set_current_dir(&user.home).is_err() && std::env::set_current_dir("/").is_err()
    {
        send_reply(conn, &Reply::err(ErrorKind::Failed, format!("cannot become user {}", user.name)));
        return None;
    }
    Some(user)
}

/// Child of init: unpacks a tar stream into `destination`, as the user, inside the
/// container. The `tar` crate refuses entries that would land outside it.
pub(super) fn stream_in(conn: OwnedFd, rest: Vec<u8>, user: &str, destination: &str) -> i32 {
    let mut conn = std::fs::File::from(conn);
    let Some(user) = enter_user(&mut conn, user) else { return 1 };
    let dest = PathBuf::from(if destination.is_empty() { "." } else { destination });
    if let Err(e) = mkdir_all_owned(&dest, user.uid, user.gid) {
        send_reply(&mut conn, &Reply::err(ErrorKind::Failed, format!("mkdir {}: {e}", dest.display())));
        return 1;
    }
    send_reply(&mut conn, &Reply::ok());
    let reader = std::io::Cursor::new(rest).chain(&conn);
    let result = unpack_tar_stream(reader, &dest);
    // Drain what the tar reader left so the daemon's writes never fail half-way.
    let mut sink = [0u8; 8192];
    while matches!((&conn).read(&mut sink), Ok(n) if n > 0) {}
    match result {
        Ok(()) => {
            send_reply(&mut conn, &Reply::ok());
            0
        }
        Err(e) => {
            send_reply(&mut conn, &Reply::err(ErrorKind::Failed, format!("stream in: {}", error_chain(&e))));
            1
        }
    }
}

/// An error with its causes ("failed to unpack `x` into `/d`: Permission
/// denied"): the tar crate's own message names the entry but not why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let msg = c.to_string();
        if !out.ends_with(&msg) {
            out = format!("{out}: {msg}");
        }
        cause = c.source();
    }
    out
}

/// Unpacks a stream-in tar into `dest` as the calling user: modes masked with
/// 022, no ownership or xattrs, existing files replaced. Public so the fuzz
/// targets and property tests exercise exactly what stream-in runs.
pub fn unpack_tar_stream<R: Read>(reader: R, dest: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    archive.set_mask(0o022);
    archive.unpack(dest)
}

/// Child of init: writes `source` as a tar stream, as the user. A trailing `/`
/// sends the directory's contents, otherwise the entry itself (as `tar -C dir base`).
pub(super) fn stream_out(conn: OwnedFd, user: &str, source: &str) -> i32 {
    let mut conn = std::fs::File::from(conn);
    if enter_user(&mut conn, user).is_none() {
        return 1;
    }
    let src = PathBuf::from(source);
    let meta = match std::fs::symlink_metadata(&src) {
        Ok(m) => m,
        Err(e) => {
            send_reply(&mut conn, &Reply::err(ErrorKind::Failed, format!("stat {source}: {e}")));
            return 1;
        }
    };
    send_reply(&mut conn, &Reply::ok());
    let mut b = tar::Builder::new(std::io::BufWriter::new(&conn));
    b.follow_symlinks(false);
    let name = if source.ends_with('/') || src.file_name().is_none() {
        PathBuf::from(".")
    } else {
        PathBuf::from(src.file_name().unwrap_or_default())
    };
    let r = if meta.is_dir() { b.append_dir_all(&name, &src) } else { b.append_path_with_name(&src, &name) };
    let r = r.and_then(|_| b.into_inner()).and_then(|mut w| w.flush());
    i32::from(r.is_err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_in_errors_keep_their_cause() {
        let dir = std::env::temp_dir().join(format!("celld-init-chain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A file where the tar wants a directory: unpacking `f/x` fails, and why.
        std::fs::write(dir.join("f"), b"").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "f/x", &b"y"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let err = tar::Archive::new(&data[..]).unpack(&dir).unwrap_err();
        let msg = error_chain(&err);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(msg.contains("f/x") && msg.contains("ot a directory"), "{msg}");
    }
}
