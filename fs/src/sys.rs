//! Thin safe wrappers over the few libc calls std lacks (mknod, lchown, xattrs, utimensat),
//! so `unsafe` lives in one small file; and [`private_dir`], the one way state directories
//! are made.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `mknod(path, mode, makedev(major, minor))`; `mode` includes the file-type bits.
pub fn mknod(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let c = cpath(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    check(unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev) })
}

/// `lchown(path, uid, gid)` (does not follow a final symlink).
pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: valid C string; plain integer arguments.
    check(unsafe { libc::lchown(c.as_ptr(), uid, gid) })
}

/// `lsetxattr(path, name, value, 0)`.
pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cpath(path)?;
    let n = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: both strings are valid and NUL-terminated; the value pointer/length pair
    // describes a live slice.
    check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Lists and reads all xattrs of a path without following a final symlink.
pub fn lgetxattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let c = cpath(path)?;
    // SAFETY: a null buffer with size 0 asks only for the needed size.
    let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut names = vec![0u8; size as usize];
    // SAFETY: the buffer is writable for `names.len()` bytes.
    let size = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(size as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: size query with a null buffer.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut val = vec![0u8; len as usize];
        // SAFETY: the buffer is writable for `val.len()` bytes.
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        val.truncate(len as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), val));
    }
    Ok(out)
}

/// Sets atime and mtime to `secs.nsec` without following a final symlink.
pub fn set_times_nofollow(path: &Path, secs: i64, nsec: u32) -> io::Result<()> {
    let c = cpath(path)?;
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: i64::from(nsec.min(999_999_999)) as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: valid C string and a two-element timespec array as utimensat requires.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Creates the state directory `path` (and its missing ancestors) private to its owner:
/// mode 0700 whatever the umask, and an existing `path` is tightened to 0700. Lazily
/// mounted layers (FUSE with `allow_other`), upper dirs and caches hold image content —
/// setuid programs, device nodes — that other local users must not reach through our
/// paths. Only `path` and the directories this call creates are changed: an existing
/// parent (`/run`, `/tmp`, a directory the user named) keeps its mode.
pub fn private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut missing = Vec::new();
    let mut cur = path;
    while std::fs::symlink_metadata(cur).is_err() {
        missing.push(cur);
        match cur.parent() {
            Some(p) if !p.as_os_str().is_empty() => cur = p,
            _ => break,
        }
    }
    for dir in missing.iter().rev() {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?,
            // Another process made it meanwhile: only `path` itself is tightened below.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", path.display()),
        ));
    }
    if meta.permissions().mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// mount(2) of an overlay filesystem at `target` with the given option string.
pub fn mount_overlay(target: &Path, options: &str, read_only: bool) -> io::Result<()> {
    let t = cpath(target)?;
    let data = std::ffi::CString::new(options)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "options contain NUL"))?;
    let flags = if read_only { libc::MS_RDONLY } else { 0 };
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            t.as_ptr(),
            c"overlay".as_ptr(),
            flags,
            data.as_ptr() as *const libc::c_void,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A recursive bind mount of `source` at `target`, remounted read-only when asked.
pub fn bind_mount(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    let (s, t) = (cpath(source)?, cpath(target)?);
    let call = |flags: libc::c_ulong| {
        // SAFETY: `s` and `t` are valid NUL-terminated paths; no data argument.
        let rc = unsafe {
            libc::mount(
                s.as_ptr(),
                t.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    call(libc::MS_BIND | libc::MS_REC)?;
    if read_only {
        if let Err(e) = call(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT | libc::MS_RDONLY) {
            let _ = unmount(target, true);
            return Err(e);
        }
    }
    Ok(())
}

/// umount2(2); `lazy` detaches a busy mount.
pub fn unmount(target: &Path, lazy: bool) -> io::Result<()> {
    let t = cpath(target)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `t` is a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(t.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `path` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    is_among(path, &mount_points())
}

/// Every mount point of this mount namespace, as /proc/self/mountinfo lists them (octal
/// escapes undone); empty when it cannot be read. Read it once for several questions. It is
/// read as bytes: one mount point on the host whose name is not UTF-8 must not turn every
/// answer into "not mounted".
pub fn mount_points() -> std::collections::HashSet<std::path::PathBuf> {
    let Ok(text) = std::fs::read("/proc/self/mountinfo") else {
        return Default::default();
    };
    text.split(|&b| b == b'\n')
        .filter_map(|l| l.split(|&b| b == b' ').nth(4))
        .map(|m| std::path::PathBuf::from(std::ffi::OsString::from_vec(unescape_octal(m))))
        .collect()
}

/// Whether `path` (resolved) is one of `mounts` (from [`mount_points`]).
pub fn is_among(path: &Path, mounts: &std::collections::HashSet<std::path::PathBuf>) -> bool {
    path.canonicalize().is_ok_and(|c| mounts.contains(&c))
}

/// Undoes the kernel's `\ooo` escapes of space, tab, newline and backslash in mountinfo.
fn unescape_octal(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).filter(|d| {
            b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match oct {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_are_0700_and_parents_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o7777);
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // (The umask is not changed here: tests in this binary run in parallel. The
        // integration tests run the binary with umask 0000.)
        private_dir(&t.path().join("a/b/c")).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&t.path().join(d)).unwrap(), 0o700, "{d}");
        }
        assert_eq!(mode(t.path()).unwrap(), 0o755);
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        private_dir(&open).unwrap();
        assert_eq!(mode(&open).unwrap(), 0o700);
        std::fs::write(t.path().join("file"), b"").unwrap();
        assert!(private_dir(&t.path().join("file")).is_err());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal(br"/a\040b\011c\134d"), b"/a b\tc\\d");
        // Not an escape, or not UTF-8: kept as it is.
        assert_eq!(unescape_octal(br"/x\9y\0"), br"/x\9y\0");
        assert_eq!(unescape_octal(b"/\xff\x01"), b"/\xff\x01");
        assert!(mount_points().contains(Path::new("/")));
        assert!(is_mount_point(Path::new("/")));
    }
}
