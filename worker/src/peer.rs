//! Who may talk to our unix sockets (the snapshots gRPC socket, the FUSE holder's). Both act
//! as root on the caller's behalf — mounts, descriptors of lazily mounted layers — so a
//! socket is made 0600 (0660 with a configured group) after bind, whatever the umask, and
//! every connection is checked with `SO_PEERCRED` before it is served: the file mode alone
//! can be widened by mistake, and a socket in a shared directory exists with the umask's
//! mode for a moment after bind. Refused peers are logged at warn with their pid and uid
//! and the connection is closed unanswered.

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Longest path a unix socket can be bound at: `sun_path` holds 108 bytes with the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Why a socket could not be set up or a peer is not served.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The path does not fit in `sun_path`.
    #[error("unix socket path {path} is {len} bytes; the limit is {MAX_SOCKET_PATH} (sun_path)")]
    PathTooLong {
        /// The path.
        path: String,
        /// Its length in bytes.
        len: usize,
    },
    /// chmod/chown of the socket, or reading the peer's credentials, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Who is let in: root, the daemon's own user, and members of `group` when set.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerPolicy {
    /// A group whose members may connect too (the socket is then 0660 and owned by it).
    pub group: Option<u32>,
}

/// Errors unless `path` fits in a unix socket address.
pub fn check_path(path: &Path) -> Result<(), PeerError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(PeerError::PathTooLong {
            path: path.display().to_string(),
            len,
        });
    }
    Ok(())
}

impl PeerPolicy {
    /// Sets the bound socket at `path` to 0600, or 0660 owned by the group.
    pub fn secure(&self, path: &Path) -> Result<(), PeerError> {
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| PeerError::Io { what, source }
        };
        let mode = match self.group {
            Some(gid) => {
                std::os::unix::fs::chown(path, None, Some(gid)).map_err(io("chown"))?;
                0o660
            }
            None => 0o600,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod"))
    }

    /// Whether the peer of the connected socket `fd` may be served; a refusal is logged at
    /// warn with the peer's pid and uid (`socket` names the listener in the log).
    pub fn admits(&self, fd: impl AsFd, socket: &Path) -> bool {
        let cred = match getsockopt(&fd, PeerCredentials) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, "connection refused: no peer credentials");
                return false;
            }
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let ok = cred.uid() == 0
            || cred.uid() == me
            || self
                .group
                .is_some_and(|g| cred.gid() == g || in_group(cred.pid(), g));
        if !ok {
            tracing::warn!(
                socket = %socket.display(),
                pid = cred.pid(),
                uid = cred.uid(),
                gid = cred.gid(),
                "connection refused: peer is not root, this daemon's user or the socket's group"
            );
        }
        ok
    }
}

/// Whether process `pid` has `gid` among its supplementary groups (`/proc/PID/status`).
fn in_group(pid: i32, gid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_peer_is_admitted_and_long_paths_are_named() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(PeerPolicy::default().admits(&a, Path::new("pair")));
        let long = Path::new("/").join("x".repeat(MAX_SOCKET_PATH));
        let e = check_path(&long).unwrap_err().to_string();
        assert!(e.contains("the limit is 107"), "{e}");
        assert!(check_path(&Path::new("/").join("x".repeat(MAX_SOCKET_PATH - 1))).is_ok());
    }
}
