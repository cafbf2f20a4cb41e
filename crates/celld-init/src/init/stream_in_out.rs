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
            send_reply(&mut conn, &Reply::err(ErrorKind::Failed, error_chain(&e)));
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
    // As `tar -C dir .` for a trailing `/` (entries `./`, `./name`), else as
    // `tar -C parent base` (entries `base/`, `base/name`): Garden's naming.
    let name = if source.ends_with('/') || src.file_name().is_none() {
        ".".to_string()
    } else {
        src.file_name().unwrap_or_default().to_string_lossy().into_owned()
    };
    let r = append_tree(&mut b, &src, meta, &name).and_then(|_| b.into_inner()).and_then(|mut w| w.flush());
    i32::from(r.is_err())
}

/// Appends `path` under the archive name `name` and, for a directory, what
/// is below it, depth first. Names are written exactly as made here (the tar
/// crate's own path setters drop a leading `./`).
pub fn append_tree<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    meta: std::fs::Metadata,
    name: &str,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    if meta.is_dir() {
        let dir_name = if name.ends_with('/') { name.to_string() } else { format!("{name}/") };
        set_raw_name(b, &mut h, &dir_name, tar::EntryType::GNULongName)?;
        h.set_cksum();
        b.append(&h, std::io::empty())?;
        // What the user may not read is left out and the rest still sent, as tar does.
        let Ok(listing) = std::fs::read_dir(path) else { return Ok(()) };
        let mut children: Vec<_> = listing.filter_map(Result::ok).map(|e| e.file_name()).collect();
        children.sort();
        for child in children {
            let child_path = path.join(&child);
            // Gone since it was listed: skipped, as tar does.
            let Ok(child_meta) = std::fs::symlink_metadata(&child_path) else { continue };
            append_tree(b, &child_path, child_meta, &format!("{dir_name}{}", child.to_string_lossy()))?;
        }
        return Ok(());
    }
    let file = match meta.is_file().then(|| std::fs::File::open(path)) {
        Some(Err(_)) => return Ok(()),
        opened => opened.and_then(Result::ok),
    };
    set_raw_name(b, &mut h, name, tar::EntryType::GNULongName)?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path)?;
        set_raw_name(b, &mut h, &target.to_string_lossy(), tar::EntryType::GNULongLink)?;
    }
    h.set_cksum();
    match file {
        Some(f) => b.append(&h, f),
        None => b.append(&h, std::io::empty()),
    }
}

/// Writes `value` into the name (or, for `GNULongLink`, the link name) field
/// of `h`, preceded by a GNU long-name entry when it does not fit.
fn set_raw_name<W: Write>(
    b: &mut tar::Builder<W>,
    h: &mut tar::Header,
    value: &str,
    kind: tar::EntryType,
) -> std::io::Result<()> {
    let bytes = value.as_bytes();
    let field =
        if kind == tar::EntryType::GNULongLink { &mut h.as_old_mut().linkname } else { &mut h.as_old_mut().name };
    field.fill(0);
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
    if bytes.len() > n {
        let mut long = tar::Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_mode(0o644);
        long.set_entry_type(kind);
        long.set_size(bytes.len() as u64 + 1);
        long.set_cksum();
        b.append(&long, bytes.chain(&[0u8][..]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of(source: &str, root: &Path) -> Vec<String> {
        let meta = std::fs::symlink_metadata(root).unwrap();
        let name = if source.ends_with('/') { ".".to_string() } else { "d".to_string() };
        let mut b = tar::Builder::new(Vec::new());
        append_tree(&mut b, root, meta, &name).unwrap();
        let data = b.into_inner().unwrap();
        let mut a = tar::Archive::new(&data[..]);
        a.entries().unwrap().map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned()).collect()
    }

    #[test]
    fn stream_out_names_entries_as_garden_does() {
        let dir = std::env::temp_dir().join(format!("celld-init-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("d");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("f"), b"x").unwrap();
        let long = "l".repeat(150);
        std::fs::write(root.join("sub").join(&long), b"y").unwrap();
        std::os::unix::fs::symlink("f", root.join("link")).unwrap();
        let with_slash = names_of("/x/d/", &root);
        let without = names_of("/x/d", &root);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(with_slash, ["./", "./f", "./link", "./sub/", &format!("./sub/{long}")]);
        assert_eq!(without, ["d/", "d/f", "d/link", "d/sub/", &format!("d/sub/{long}")]);
    }

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
