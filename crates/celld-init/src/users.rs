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
    #[error("unable to find group {0}: no matching entries in group file")]
    GroupNotFound(String),
    #[error("invalid user {0:?}: expected a name or UID, optionally followed by :GROUP or :GID")]
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

/// (name, gid, members) of each well-formed line of a group file.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, &str)> {
    group.lines().filter_map(|line| {
        let mut f = line.split(':');
        let (name, _pw, gid, members) = (f.next()?, f.next()?, f.next()?, f.next()?);
        (!name.is_empty() && !name.starts_with('#')).then_some((name, gid.parse().ok()?, members))
    })
}

/// Resolves a Garden process user as runc does (Garden's lookup is runc's):
/// `USER[:GROUP]`, each a name or a number; empty means root. The user comes
/// from the passwd file (a number need not be there: it then gets gid 0 and
/// home `/`); an explicit group replaces the user's and leaves no
/// supplementary groups, otherwise the supplementary groups are those that
/// list the user by name.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<User, UserError> {
    let spec = spec.trim();
    let spec = if spec.is_empty() { "root" } else { spec };
    if spec.contains(|c: char| c.is_control() || c == '/') {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_arg.is_empty() || group_arg.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let uid_arg = user_arg.parse::<u32>().ok();
    let entry = passwd_entries(passwd).find(|e| uid_arg.map_or(e.name == user_arg, |uid| e.uid == uid));
    let mut user = match (&entry, uid_arg) {
        (Some(e), _) => User { name: e.name.into(), uid: e.uid, gid: e.gid, home: e.home.into(), groups: Vec::new() },
        // Root without an entry (no passwd file at all) is still root.
        (None, _) if user_arg == "root" => User::root(),
        (None, Some(uid)) => User { name: user_arg.into(), uid, gid: 0, home: "/".into(), groups: Vec::new() },
        (None, None) => return Err(UserError::NotFound(user_arg.to_string())),
    };
    match group_arg {
        Some(g) => {
            let gid_arg = g.parse::<u32>().ok();
            let found = group_entries(group).find(|(name, gid, _)| gid_arg.map_or(*name == g, |n| *gid == n));
            user.gid = match (found, gid_arg) {
                (Some((_, gid, _)), _) => gid,
                (None, Some(gid)) => gid,
                (None, None) => return Err(UserError::GroupNotFound(g.to_string())),
            };
        }
        None if entry.is_some() => {
            user.groups = group_entries(group)
                .filter(|(_, _, members)| members.split(',').any(|m| m.trim() == user.name))
                .map(|(_, gid, _)| gid)
                .collect();
        }
        None => {}
    }
    Ok(user)
}

impl User {
    fn root() -> Self {
        User { name: "root".into(), uid: 0, gid: 0, home: "/".into(), groups: Vec::new() }
    }
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
        assert!(u.groups.is_empty());
        assert_eq!(resolve("root", "", "").unwrap(), User::root());
    }

    #[test]
    fn by_name_with_supplementary_groups() {
        let u = resolve("alice", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(u.groups, vec![50]);
    }

    #[test]
    fn numeric_forms() {
        let u = resolve("2000", PASSWD, GROUP).unwrap();
        assert_eq!((u.name.as_str(), u.gid, u.home.as_str()), ("vcap", 2000, "/home/vcap"));
        let u = resolve("1001:1002", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1001, 1002, "/"));
        assert!(u.groups.is_empty());
        // Unknown numbers are fine; their group is 0 unless given.
        assert_eq!(resolve("4242", PASSWD, GROUP).unwrap().gid, 0);
        // An explicit group leaves no supplementary groups, even for a member.
        let u = resolve("1000:1000", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/alice"));
        assert!(u.groups.is_empty());
    }

    #[test]
    fn names_with_groups() {
        let u = resolve("alice:staff", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert!(u.groups.is_empty());
        let u = resolve("vcap:50", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (2000, 50));
        assert_eq!(
            resolve("alice:nogroup", PASSWD, GROUP).unwrap_err().to_string(),
            "unable to find group nogroup: no matching entries in group file"
        );
    }

    #[test]
    fn unknown_and_invalid() {
        assert_eq!(
            resolve("bob", PASSWD, GROUP).unwrap_err().to_string(),
            "unable to find user bob: no matching entries in passwd file"
        );
        assert!(matches!(resolve("bob:staff", PASSWD, GROUP), Err(UserError::NotFound(_))));
        for bad in ["../x", ":50", "alice:", "a:b:c"] {
            assert!(matches!(resolve(bad, PASSWD, GROUP), Err(UserError::Invalid(_))), "{bad}");
        }
        // Bad lines are skipped, not fatal.
        assert!(matches!(resolve("bad", PASSWD, GROUP), Err(UserError::NotFound(_))));
    }
}
