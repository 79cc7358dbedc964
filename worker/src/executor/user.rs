//! The user a step runs as: Docker's `USER` forms (`name`, `uid`, `name:group`, `uid:gid`)
//! looked up in the image's own `/etc/passwd` and `/etc/group`, read through
//! [`super::rootpath`] so a symlinked file in the image is never read from the host.

use super::rootpath;
use std::path::Path;

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups: the primary group, then those of `/etc/group` naming the user.
    pub additional_gids: Vec<u32>,
    /// Home directory (for `HOME`), `/` when unknown.
    pub home: String,
}

/// Why a user could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A name the image does not know.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    /// A group the image does not know.
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    /// The image's files could not be read.
    #[error("reading {file} in the rootfs: {reason}")]
    Read {
        /// Which file.
        file: String,
        /// Why.
        reason: String,
    },
}

/// Most bytes read of `/etc/passwd` or `/etc/group`.
const MAX_FILE: u64 = 8 << 20;

fn read_db(root: &Path, file: &str) -> Result<String, UserError> {
    use std::io::Read;
    let path = rootpath::resolve(root, file, true).map_err(|e| UserError::Read {
        file: file.into(),
        reason: e.to_string(),
    })?;
    match std::fs::File::open(&path) {
        Ok(f) => {
            let mut s = String::new();
            f.take(MAX_FILE)
                .read_to_string(&mut s)
                .map_err(|e| UserError::Read {
                    file: file.into(),
                    reason: e.to_string(),
                })?;
            Ok(s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(UserError::Read {
            file: file.into(),
            reason: e.to_string(),
        }),
    }
}

/// Resolves `spec` (empty: root) inside `root`.
pub fn resolve(root: &Path, spec: &str) -> Result<User, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let passwd = read_db(root, "/etc/passwd")?;
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 6)
        .find(|f| f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user));
    let (uid, mut gid, name, home) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse::<u32>()
                .map_err(|_| UserError::NoUser(user.into()))?,
            f[3].parse::<u32>().unwrap_or(0),
            f[0].to_string(),
            f[5].to_string(),
        ),
        (None, Ok(uid)) => (uid, 0, String::new(), "/".to_string()),
        (None, Err(_)) => return Err(UserError::NoUser(user.into())),
    };
    let groups = read_db(root, "/etc/group")?;
    let parsed: Vec<Vec<&str>> = groups
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    if let Some(g) = group.filter(|g| !g.is_empty()) {
        gid = match parsed.iter().find(|f| f[0] == g) {
            Some(f) => f[2].parse().map_err(|_| UserError::NoGroup(g.into()))?,
            None => g.parse().map_err(|_| UserError::NoGroup(g.into()))?,
        };
    }
    // The primary group is a supplementary one too, first, as containerd and BuildKit set
    // it (so `id` lists it under groups=); member groups only when no group was given.
    let mut additional_gids = vec![gid];
    if group.is_none() && !name.is_empty() {
        for f in &parsed {
            let members = f.get(3).copied().unwrap_or("");
            if members.split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if g != gid && !additional_gids.contains(&g) {
                        additional_gids.push(g);
                    }
                }
            }
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_user_forms() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nbob:x:1000:\nwheel:x:10:bob,alice\nstaff:x:50:\n",
        )
        .unwrap();
        let r = d.path();
        assert_eq!(resolve(r, "").unwrap().uid, 0);
        let bob = resolve(r, "bob").unwrap();
        assert_eq!(
            (bob.uid, bob.gid, bob.additional_gids.clone()),
            (1000, 1000, vec![1000, 10])
        );
        assert_eq!(resolve(r, "").unwrap().additional_gids, vec![0]);
        assert_eq!(resolve(r, "bob:staff").unwrap().additional_gids, vec![50]);
        assert_eq!(resolve(r, "1234").unwrap().additional_gids, vec![0]);
        assert_eq!(bob.home, "/home/bob");
        assert_eq!(resolve(r, "bob:staff").unwrap().gid, 50);
        assert_eq!(resolve(r, "1000").unwrap().home, "/home/bob");
        let n = resolve(r, "4242:4343").unwrap();
        assert_eq!((n.uid, n.gid), (4242, 4343));
        assert!(matches!(resolve(r, "nobody"), Err(UserError::NoUser(_))));
        assert!(matches!(
            resolve(r, "bob:nogroup"),
            Err(UserError::NoGroup(_))
        ));
    }
}
