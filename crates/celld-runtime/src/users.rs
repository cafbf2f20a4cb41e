//! Container users: `/etc/passwd` and `/etc/group` as the container sees them.
//! Runs inside the container (in init), so the files are the container's own
//! and untrusted: every line is parsed defensively and bad lines are skipped.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NotFound(String),
    #[error("invalid user {0:?}: expected a name, UID or UID:GID")]
    Invalid(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        let _gecos = f.next()?;
        let home = f.next()?;
        (!name.is_empty() && !name.starts_with('#')).then_some(PasswdEntry { name, uid, gid, home })
    })
}

/// Supplementary groups of `name` from a group file (primary gid first).
fn groups_of(group: &str, name: &str, primary: u32) -> Vec<u32> {
    let mut out = vec![primary];
    for line in group.lines() {
        let mut f = line.split(':');
        let (Some(_g), Some(_pw), Some(gid), Some(members)) = (f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(gid) = gid.parse::<u32>() else { continue };
        if members.split(',').any(|m| m == name) && !out.contains(&gid) {
            out.push(gid);
        }
    }
    out
}

/// Resolves a Garden process user: empty means root, otherwise a user name,
/// a numeric UID, or `UID:GID`.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<User, UserError> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "root" {
        let root = passwd_entries(passwd).find(|e| e.uid == 0);
        return Ok(User {
            name: "root".into(),
            uid: 0,
            gid: root.as_ref().map_or(0, |e| e.gid),
            home: root.map_or("/root".into(), |e| e.home.to_string()),
            groups: vec![0],
        });
    }
    if spec.contains(|c: char| c.is_control() || c == '/') {
        return Err(UserError::Invalid(spec.to_string()));
    }
    if let Some((u, g)) = spec.split_once(':') {
        let (Ok(uid), Ok(gid)) = (u.parse::<u32>(), g.parse::<u32>()) else {
            return Err(UserError::Invalid(spec.to_string()));
        };
        let entry = passwd_entries(passwd).find(|e| e.uid == uid);
        let name = entry.as_ref().map_or(u.to_string(), |e| e.name.to_string());
        return Ok(User { groups: vec![gid], name, uid, gid, home: entry.map_or("/".into(), |e| e.home.to_string()) });
    }
    if let Ok(uid) = spec.parse::<u32>() {
        let entry = passwd_entries(passwd).find(|e| e.uid == uid);
        return Ok(match entry {
            Some(e) => User {
                groups: groups_of(group, e.name, e.gid),
                name: e.name.into(),
                uid,
                gid: e.gid,
                home: e.home.into(),
            },
            None => User { name: spec.into(), uid, gid: uid, home: "/".into(), groups: vec![uid] },
        });
    }
    let e = passwd_entries(passwd).find(|e| e.name == spec).ok_or_else(|| UserError::NotFound(spec.to_string()))?;
    Ok(User {
        groups: groups_of(group, e.name, e.gid),
        name: e.name.into(),
        uid: e.uid,
        gid: e.gid,
        home: e.home.into(),
    })
}

/// Reads the user database under `root` (`/` inside a container) and resolves.
pub fn lookup(root: &Path, spec: &str) -> Result<User, UserError> {
    // A missing or unreadable file is an empty database, as in runc.
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    resolve(spec, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nvcap:x:2000:2000::/home/vcap:/bin/bash\n\
                          garbage line\nalice:x:1000:1000::/home/alice:/bin/sh\nbad:x:notanumber:1::/:/\n";
    const GROUP: &str = "root:x:0:\nvcap:x:2000:\nalice:x:1000:\nstaff:x:50:alice,bob\n";

    #[test]
    fn empty_is_root() {
        let u = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn by_name_with_supplementary_groups() {
        let u = resolve("alice", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(u.groups, vec![1000, 50]);
    }

    #[test]
    fn numeric_forms() {
        assert_eq!(resolve("2000", PASSWD, GROUP).unwrap().name, "vcap");
        let u = resolve("1001:1002", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1001, 1002, "/"));
    }

    #[test]
    fn unknown_and_invalid() {
        assert_eq!(
            resolve("bob", PASSWD, GROUP).unwrap_err().to_string(),
            "unable to find user bob: no matching entries in passwd file"
        );
        assert!(matches!(resolve("a:b", PASSWD, GROUP), Err(UserError::Invalid(_))));
        assert!(matches!(resolve("../x", PASSWD, GROUP), Err(UserError::Invalid(_))));
        // Bad lines are skipped, not fatal.
        assert!(matches!(resolve("bad", PASSWD, GROUP), Err(UserError::NotFound(_))));
    }
}
