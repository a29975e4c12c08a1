//! Resolving a container user (`uid[:gid]` or `name[:group]`) against the container's
//! own /etc/passwd and /etc/group, as docker does. Pure: the caller reads the files.

/// A resolved user: what the process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary groups (from /etc/group membership), the primary one excluded.
    pub groups: Vec<u32>,
    /// The home directory from /etc/passwd, `/` when unknown.
    pub home: String,
}

/// Errors of user resolution.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// A name is not in the container's /etc/passwd.
    #[error("user {0:?} not found in the container's /etc/passwd")]
    NoSuchUser(String),
    /// A group name is not in the container's /etc/group.
    #[error("group {0:?} not found in the container's /etc/group")]
    NoSuchGroup(String),
    /// The user string is empty or malformed.
    #[error("invalid user {0:?}")]
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
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, uid, gid, _, home, ..] => Some(PasswdEntry {
                name,
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
                home,
            }),
            _ => None,
        }
    })
}

/// (name, gid, members) of each well-formed /etc/group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, gid, members, ..] => Some((
                *name,
                gid.parse().ok()?,
                members.split(',').filter(|m| !m.is_empty()).collect(),
            )),
            [name, _, gid] => Some((*name, gid.parse().ok()?, Vec::new())),
            _ => None,
        }
    })
}

fn resolve_group(spec: &str, group: &str) -> Result<u32, UserError> {
    if let Ok(gid) = spec.parse() {
        return Ok(gid);
    }
    group_entries(group)
        .find(|(name, _, _)| *name == spec)
        .map(|(_, gid, _)| gid)
        .ok_or_else(|| UserError::NoSuchGroup(spec.to_string()))
}

/// Resolves `user` (`None` means root) with the given /etc/passwd and /etc/group text
/// (empty when the image has none). A numeric uid not in passwd runs with gid = the
/// given gid or 0 and home `/`.
pub fn resolve_user(user: Option<&str>, passwd: &str, group: &str) -> Result<User, UserError> {
    let spec = user.unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError::NoSuchUser(user_part.to_string()))?,
        ),
    };
    let uid = match (&entry, user_part.parse::<u32>()) {
        (_, Ok(uid)) => uid,
        (Some(e), Err(_)) => e.uid,
        (None, Err(_)) => return Err(UserError::NoSuchUser(user_part.to_string())),
    };
    let gid = match group_part {
        Some(g) => resolve_group(g, group)?,
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    let groups = match &entry {
        Some(e) => group_entries(group)
            .filter(|(_, g, members)| *g != gid && members.contains(&e.name))
            .map(|(_, g, _)| g)
            .collect(),
        None => Vec::new(),
    };
    let home = entry.map_or("/", |e| e.home).to_string();
    Ok(User {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          broken line\n\
                          alice:x:1000:1000::/home/alice:/bin/sh\n\
                          bob:x:1001:100:Bob:/home/bob:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:\nalice:x:1000:\n\
                         wheel:x:10:alice,bob\naudio:x:29:bob\n";

    #[test]
    fn no_user_is_root_with_root_home() {
        let user = resolve_user(None, PASSWD, GROUP).expect("resolves");
        assert_eq!(
            user,
            User {
                uid: 0,
                gid: 0,
                groups: vec![],
                home: "/root".into()
            }
        );
    }

    #[test]
    fn name_resolves_to_uid_gid_home_and_supplementary_groups() {
        let user = resolve_user(Some("bob"), PASSWD, GROUP).expect("resolves");
        assert_eq!(
            user,
            User {
                uid: 1001,
                gid: 100,
                groups: vec![10, 29],
                home: "/home/bob".into()
            }
        );
    }

    #[test]
    fn numeric_uid_in_passwd_takes_its_gid() {
        let user = resolve_user(Some("1000"), PASSWD, GROUP).expect("resolves");
        assert_eq!((user.uid, user.gid, user.groups), (1000, 1000, vec![10]));
    }

    #[test]
    fn numeric_uid_not_in_passwd_gets_gid_0_and_home_root_dir() {
        let user = resolve_user(Some("4242"), PASSWD, GROUP).expect("resolves");
        assert_eq!(
            user,
            User {
                uid: 4242,
                gid: 0,
                groups: vec![],
                home: "/".into()
            }
        );
    }

    #[test]
    fn numeric_uid_and_gid_work_without_passwd() {
        let user = resolve_user(Some("7:8"), "", "").expect("resolves");
        assert_eq!((user.uid, user.gid), (7, 8));
    }

    #[test]
    fn group_name_overrides_primary_group() {
        let user = resolve_user(Some("alice:audio"), PASSWD, GROUP).expect("resolves");
        assert_eq!((user.uid, user.gid, user.groups), (1000, 29, vec![10]));
    }

    #[test]
    fn unknown_user_name_is_an_error_naming_it() {
        let err = resolve_user(Some("mallory"), PASSWD, GROUP).unwrap_err();
        assert_eq!(
            err.to_string(),
            "user \"mallory\" not found in the container's /etc/passwd"
        );
    }

    #[test]
    fn unknown_group_name_is_an_error_naming_it() {
        let err = resolve_user(Some("alice:nogroup"), PASSWD, GROUP).unwrap_err();
        assert_eq!(err, UserError::NoSuchGroup("nogroup".into()));
    }

    #[test]
    fn empty_group_part_is_invalid() {
        assert_eq!(
            resolve_user(Some("alice:"), PASSWD, GROUP),
            Err(UserError::Invalid("alice:".into()))
        );
    }
}
