//! FUSE connections that outlive the process serving them. A layer mounted with
//! [`mount_with_fd`] opens `/dev/fuse` itself and hands back a duplicate of the connection's
//! descriptor: whoever keeps that duplicate (a small holder process) keeps the connection —
//! and every overlay mount stacked on it — alive when the server dies. [`resume`] serves
//! such a connection again from a new process. The kernel sent its INIT only once, to the
//! first server, so the new session is fed a synthetic INIT (with the kernel's original
//! version and flags, recorded at mount) through a relay: a `SOCK_SEQPACKET` pair keeps
//! FUSE's one-message-per-read framing, requests flow from the device to the session and
//! replies back, and the reply to the synthetic INIT is dropped. Requests the dead server
//! had read but not answered are re-queued with `FUSE_NOTIFY_RESEND` (Linux 6.9+).
//! A resumed session cannot register passthrough backing files (that ioctl needs the
//! device itself), so it reads through FUSE; files the kernel already opened with
//! passthrough keep reading their backing files without any server.

use super::LayerFs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What the kernel offered in its INIT, recorded so a later server can be told the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelInit {
    /// Protocol major version (7).
    pub major: u32,
    /// Protocol minor version.
    pub minor: u32,
    /// Capability flags (`flags | flags2 << 32`).
    pub flags: u64,
}

/// Where [`LayerFs`] records the kernel's INIT.
pub type InitSlot = Arc<Mutex<Option<KernelInit>>>;

const FUSE_INIT: u32 = 26;
const FUSE_INIT_EXT: u32 = 1 << 30;
const FUSE_NOTIFY_RESEND: i32 = 7;
/// The `unique` of the synthetic INIT (kernel uniques never get near it).
const SYNTHETIC_UNIQUE: u64 = u64::MAX - 14;
/// Largest FUSE message relayed (requests and replies are at most 1 MiB of data here).
const MAX_MESSAGE: usize = (16 << 20) + 4096;

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(rc)
    }
}

fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one or -1.
    let n = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) }, "dup")?;
    // SAFETY: `n` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Mounts `fs` (read-only, `nosuid,nodev`) at `mountpoint` on a `/dev/fuse` descriptor of our own; returns the
/// session, a duplicate of the descriptor (for a holder) and the kernel's INIT.
pub fn mount_with_fd(
    fs: LayerFs,
    mountpoint: &Path,
) -> io::Result<(fuser::BackgroundSession, OwnedFd, KernelInit)> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let fd: OwnedFd = dev.into();
    let slot = fs.init_slot();
    let source = std::ffi::CString::new(format!("stargaze:{}", &fs.layer_digest_hex()[..12]))
        .map_err(io::Error::other)?;
    let target = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(io::Error::other)?;
    let data = std::ffi::CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        fd.as_raw_fd()
    ))
    .map_err(io::Error::other)?;
    let fstype = c"fuse.stargaze";
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    check(
        unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                // nosuid,nodev as in `mount_layer`: the overlay above keeps its own flags.
                libc::MS_RDONLY | libc::MS_NOATIME | libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        },
        "mount",
    )?;
    let keep = dup(fd.as_raw_fd())?;
    let session = fuser::Session::from_fd(fs, fd, fuser::SessionACL::All, fuser::Config::default())
        .and_then(|s| s.spawn());
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            let _ = crate::sys::unmount(mountpoint, true);
            return Err(e);
        }
    };
    let init = slot
        .lock()
        .map_err(|_| io::Error::other("INIT slot poisoned"))?
        .ok_or_else(|| io::Error::other("the kernel sent no INIT"))?;
    Ok((session, keep, init))
}

fn init_message(init: &KernelInit) -> Vec<u8> {
    let mut m = Vec::with_capacity(104);
    let put32 = |m: &mut Vec<u8>, v: u32| m.extend_from_slice(&v.to_ne_bytes());
    // fuse_in_header
    put32(&mut m, 104);
    put32(&mut m, FUSE_INIT);
    m.extend_from_slice(&SYNTHETIC_UNIQUE.to_ne_bytes());
    m.extend_from_slice(&0u64.to_ne_bytes()); // nodeid
    put32(&mut m, 0); // uid
    put32(&mut m, 0); // gid
    put32(&mut m, 0); // pid
    m.extend_from_slice(&0u16.to_ne_bytes()); // total_extlen
    m.extend_from_slice(&0u16.to_ne_bytes()); // padding
                                              // fuse_init_in
    put32(&mut m, init.major);
    put32(&mut m, init.minor);
    put32(&mut m, 4 << 20); // max_readahead
    let high = (init.flags >> 32) as u32;
    put32(
        &mut m,
        init.flags as u32 | if high != 0 { FUSE_INIT_EXT } else { 0 },
    );
    put32(&mut m, high);
    m.resize(104, 0);
    m
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    check(
        unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        },
        "socketpair",
    )?;
    // SAFETY: both are fresh descriptors owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for s in [&a, &b] {
        let size: libc::c_int = 64 << 20;
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            // SAFETY: setsockopt with a valid int option value.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
    Ok((a, b))
}

fn read_msg(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
            _ => return Err(e),
        }
    }
}

fn write_msg(fd: RawFd, buf: &[u8]) -> io::Result<()> {
    // SAFETY: `buf` is readable for its length.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Serves `fs` on the existing FUSE connection `dev` (whose kernel INIT was `init`).
pub fn resume(
    fs: LayerFs,
    dev: OwnedFd,
    init: &KernelInit,
) -> io::Result<fuser::BackgroundSession> {
    let (relay, session_end) = seqpacket_pair()?;
    write_msg(relay.as_raw_fd(), &init_message(init))?;
    let dev = Arc::new(dev);
    let relay = Arc::new(relay);
    // Device → session.
    {
        let (dev, relay) = (dev.clone(), relay.clone());
        std::thread::Builder::new()
            .name("fuse-relay-in".into())
            .spawn(move || {
                let mut buf = vec![0u8; MAX_MESSAGE];
                // Ends with ENODEV once the file system is unmounted.
                while let Ok(n) = read_msg(dev.as_raw_fd(), &mut buf) {
                    if write_msg(relay.as_raw_fd(), &buf[..n]).is_err() {
                        break;
                    }
                }
                // SAFETY: shutdown on a socket we hold; the session then sees EOF.
                unsafe { libc::shutdown(relay.as_raw_fd(), libc::SHUT_RDWR) };
            })?;
    }
    // Session → device, without the reply to the synthetic INIT.
    {
        let (dev, relay) = (dev.clone(), relay.clone());
        std::thread::Builder::new()
            .name("fuse-relay-out".into())
            .spawn(move || {
                let mut buf = vec![0u8; MAX_MESSAGE];
                loop {
                    let n = match read_msg(relay.as_raw_fd(), &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if n >= 16
                        && u64::from_ne_bytes(buf[8..16].try_into().unwrap_or_default())
                            == SYNTHETIC_UNIQUE
                    {
                        continue;
                    }
                    if let Err(e) = write_msg(dev.as_raw_fd(), &buf[..n]) {
                        // ENOENT: the request was interrupted meanwhile; others end the relay.
                        if e.raw_os_error() != Some(libc::ENOENT) {
                            break;
                        }
                    }
                }
            })?;
    }
    let session = fuser::Session::from_fd(
        fs,
        session_end,
        fuser::SessionACL::All,
        fuser::Config::default(),
    )?
    .spawn()?;
    // Requests the previous server read but never answered come again.
    let mut resend = Vec::with_capacity(16);
    resend.extend_from_slice(&16u32.to_ne_bytes());
    resend.extend_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    resend.extend_from_slice(&0u64.to_ne_bytes());
    if let Err(e) = write_msg(dev.as_raw_fd(), &resend) {
        tracing::debug!(error = %e, "FUSE_NOTIFY_RESEND refused (kernel before 6.9?)");
    }
    Ok(session)
}
