//! The FUSE descriptor holder: a small process forked from the snapshotter daemon at start,
//! that keeps a duplicate of every lazy layer's `/dev/fuse` descriptor. While it holds one,
//! the kernel keeps that FUSE connection — and the overlay mounts of running containers
//! stacked on it — alive through a daemon crash or restart: readers wait instead of
//! failing, and the restarted daemon takes the descriptor back and serves it again
//! (`stargaze_fs::fuse::resume`). It speaks one JSON request per `SOCK_SEQPACKET` message
//! (`ping`, `put`, `get`, `del`, `quit`), descriptors travel as `SCM_RIGHTS`, and it lets go of
//! descriptors whose mount point has gone.
//!
//! It listens at `ROOT/fuse-holder.sock`, or — for a root too long for a unix socket path —
//! at `RUN/holders/<sha256(ROOT) prefix>.sock` in a private run directory ([`socket_for`]).
//! A path, not an abstract socket name: abstract names have no file permissions and belong
//! to a network namespace, so the peer check would be the only guard and a daemon restarted
//! in another namespace would not find its holder. The socket is 0600 and only root (or the
//! daemon's own user) is served ([`crate::peer`]): the holder hands out `/dev/fuse`
//! descriptors of mounted layers.

use crate::peer::PeerPolicy;
use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest request or answer.
const MAX_MSG: usize = 64 << 10;

fn nix_io(what: &str) -> impl FnOnce(nix::Error) -> io::Error + '_ {
    move |e| io::Error::other(format!("{what}: {e}"))
}

fn seqpacket() -> io::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(nix_io("socket"))
}

fn send(fd: RawFd, msg: &serde_json::Value, pass: Option<RawFd>) -> io::Result<()> {
    let data = msg.to_string();
    let iov = [IoSlice::new(data.as_bytes())];
    let fds;
    let cmsgs: Vec<ControlMessage> = match pass {
        Some(f) => {
            fds = [f];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => Vec::new(),
    };
    socket::sendmsg::<UnixAddr>(fd, &iov, &cmsgs, MsgFlags::empty(), None)
        .map_err(nix_io("sendmsg"))?;
    Ok(())
}

fn recv(fd: RawFd) -> io::Result<(serde_json::Value, Option<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MSG];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg =
        socket::recvmsg::<UnixAddr>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(nix_io("recvmsg"))?;
    let mut got = None;
    for c in msg.cmsgs().map_err(nix_io("cmsgs"))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for f in fds {
                // SAFETY: the kernel just gave us this descriptor.
                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    let n = msg.bytes;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "holder closed the connection",
        ));
    }
    let v = serde_json::from_slice(&buf[..n])
        .map_err(|e| io::Error::other(format!("holder message: {e}")))?;
    Ok((v, got))
}

/// Threads of this process, from /proc.
fn threads() -> Option<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// Where the holder of the snapshotter at `root` listens: `ROOT/fuse-holder.sock` when that
/// fits in a unix socket address (where older daemons put it, so a restarted one finds its
/// holder), else `run_dir/holders/` and the first 16 hex digits of the root's sha256.
pub fn socket_for(root: &Path, run_dir: &Path) -> PathBuf {
    let beside = root.join("fuse-holder.sock");
    if crate::peer::check_path(&beside).is_ok() {
        return beside;
    }
    let key = stargaze_fs::Digest::of(root.as_os_str().as_encoded_bytes()).hex();
    run_dir.join("holders").join(format!("{}.sock", &key[..16]))
}

/// A connection point to the holder of one snapshotter root.
#[derive(Debug, Clone)]
pub struct Holder {
    socket: PathBuf,
}

impl Holder {
    /// The holder at `socket`; when nothing answers there, one is forked from this process,
    /// detached (its own session, standard error to `log`). The process must still be
    /// single-threaded: call this before any runtime or thread starts. A forked holder has
    /// in memory only what it touches after the fork, where a freshly started binary would
    /// also keep its loader work, relocations and start-up code resident — a few megabytes,
    /// for as long as any lazy mount lives.
    ///
    /// The socket is at [`socket_for`]`(root, run_dir)`; the holder's pid goes to
    /// `ROOT/fuse-holder.pid` and its log to `ROOT/fuse-holder.log`. A socket path that cannot
    /// work is an error at once, not a start that times out.
    pub fn connect_or_fork(root: &Path, run_dir: &Path) -> io::Result<Holder> {
        let socket = &socket_for(root, run_dir);
        crate::peer::check_path(socket)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        if let Some(dir) = socket.parent().filter(|d| *d != root) {
            stargaze_fs::sys::private_dir(dir)?;
        }
        let (log, pid) = (root.join("fuse-holder.log"), root.join("fuse-holder.pid"));
        let h = Holder {
            socket: socket.to_path_buf(),
        };
        if h.call(&serde_json::json!({"op": "ping"}), None).is_ok() {
            return Ok(h);
        }
        if threads() != Some(1) {
            return Err(io::Error::other(
                "the FUSE holder must be forked before other threads start",
            ));
        }
        let _ = std::fs::remove_file(socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let null = std::fs::File::open("/dev/null")?;
        // SAFETY: the process is single-threaded (checked above), so the child may run any
        // code; it never returns from this block.
        match unsafe { libc::fork() } {
            -1 => return Err(io::Error::last_os_error()),
            0 => {
                // SAFETY: plain system calls on descriptors this process owns.
                unsafe {
                    libc::setsid();
                    libc::dup2(null.as_raw_fd(), 0);
                    libc::dup2(null.as_raw_fd(), 1);
                    libc::dup2(log.as_raw_fd(), 2);
                    // Nothing of the daemon's stays open here (listeners, files).
                    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                    libc::prctl(libc::PR_SET_NAME, c"fuse-holder".as_ptr());
                }
                // A panic must end the child here, never unwind into the daemon's start-up.
                let code = match std::panic::catch_unwind(|| serve(socket, &pid)) {
                    Ok(Ok(())) => 0,
                    Ok(Err(e)) => {
                        eprintln!("stargaze: FUSE holder on {}: {e}", socket.display());
                        1
                    }
                    Err(_) => 101,
                };
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(code) }
            }
            _ => {}
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match h.call(&serde_json::json!({"op": "ping"}), None) {
                Ok(_) => return Ok(h),
                Err(e) if Instant::now() > deadline => {
                    return Err(io::Error::other(format!(
                        "the FUSE holder did not start: {e}"
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn call(
        &self,
        req: &serde_json::Value,
        pass: Option<RawFd>,
    ) -> io::Result<(serde_json::Value, Option<OwnedFd>)> {
        let s = seqpacket()?;
        let addr = UnixAddr::new(&self.socket).map_err(nix_io("address"))?;
        socket::connect(s.as_raw_fd(), &addr).map_err(nix_io("connect"))?;
        send(s.as_raw_fd(), req, pass)?;
        let (v, fd) = recv(s.as_raw_fd())?;
        if v["ok"] != true {
            return Err(io::Error::other(
                v["error"].as_str().unwrap_or("holder refused").to_string(),
            ));
        }
        Ok((v, fd))
    }

    /// Hands over a duplicate of `fd` under `key` (a mount point) with `meta`.
    pub fn put(&self, key: &Path, meta: &serde_json::Value, fd: &OwnedFd) -> io::Result<()> {
        self.call(
            &serde_json::json!({"op": "put", "key": key, "meta": meta}),
            Some(fd.as_raw_fd()),
        )
        .map(|_| ())
    }

    /// A duplicate of the descriptor held for `key`, with its meta, if any.
    pub fn get(&self, key: &Path) -> io::Result<Option<(serde_json::Value, OwnedFd)>> {
        let (v, fd) = self.call(&serde_json::json!({"op": "get", "key": key}), None)?;
        Ok(fd.map(|f| (v["meta"].clone(), f)))
    }

    /// Lets go of `key`'s descriptor.
    pub fn del(&self, key: &Path) -> io::Result<()> {
        self.call(&serde_json::json!({"op": "del", "key": key}), None)
            .map(|_| ())
    }

    /// Asks the holder to exit once it holds nothing; true if it did.
    pub fn quit_if_empty(&self) -> bool {
        self.call(&serde_json::json!({"op": "quit"}), None).is_ok()
    }
}

/// The holder process: serves `socket` until asked to quit while empty; its pid goes to
/// `pid_file`.
pub fn serve(socket: &Path, pid_file: &Path) -> io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let l = seqpacket()?;
    let addr = UnixAddr::new(socket).map_err(nix_io("address"))?;
    socket::bind(l.as_raw_fd(), &addr).map_err(nix_io("bind"))?;
    let peers = PeerPolicy::default();
    peers.secure(socket).map_err(io::Error::other)?;
    socket::listen(&l, Backlog::new(64).map_err(nix_io("backlog"))?).map_err(nix_io("listen"))?;
    // Wake up now and then to drop descriptors whose mount is gone.
    let tv = nix::sys::time::TimeVal::new(5, 0);
    socket::setsockopt(&l, socket::sockopt::ReceiveTimeout, &tv).map_err(nix_io("timeout"))?;
    std::fs::write(pid_file, std::process::id().to_string())?;
    let mut held: HashMap<String, (serde_json::Value, OwnedFd)> = HashMap::new();
    tracing::info!(socket = %socket.display(), "FUSE holder serving");
    loop {
        let mounts = if held.is_empty() {
            Default::default()
        } else {
            stargaze_fs::sys::mount_points()
        };
        held.retain(|k, _| {
            let keep = stargaze_fs::sys::is_among(Path::new(k), &mounts);
            if !keep {
                tracing::info!(mount = %k, "mount gone; descriptor released");
            }
            keep
        });
        let c = match socket::accept(l.as_raw_fd()) {
            // SAFETY: accept returned a fresh descriptor.
            Ok(c) => unsafe { OwnedFd::from_raw_fd(c) },
            Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(nix_io("accept")(e)),
        };
        if !peers.admits(&c, socket) {
            continue;
        }
        let _ = socket::setsockopt(
            &c,
            socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(2, 0),
        );
        let (req, fd) = match recv(c.as_raw_fd()) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "bad holder request");
                continue;
            }
        };
        let key = req["key"].as_str().unwrap_or_default().to_string();
        let (answer, pass) = match req["op"].as_str() {
            Some("ping") => (serde_json::json!({"ok": true, "held": held.len()}), None),
            Some("put") => match fd {
                Some(f) if !key.is_empty() => {
                    held.insert(key, (req["meta"].clone(), f));
                    (serde_json::json!({"ok": true}), None)
                }
                _ => (
                    serde_json::json!({"ok": false, "error": "put needs a key and a descriptor"}),
                    None,
                ),
            },
            Some("get") => match held.get(&key) {
                Some((meta, f)) => (
                    serde_json::json!({"ok": true, "meta": meta}),
                    Some(f.as_raw_fd()),
                ),
                None => (serde_json::json!({"ok": true}), None),
            },
            Some("del") => {
                held.remove(&key);
                (serde_json::json!({"ok": true}), None)
            }
            Some("quit") if held.is_empty() => {
                let _ = send(c.as_raw_fd(), &serde_json::json!({"ok": true}), None);
                let _ = std::fs::remove_file(socket);
                let _ = std::fs::remove_file(pid_file);
                return Ok(());
            }
            Some("quit") => (
                serde_json::json!({"ok": false, "error": "still holding descriptors"}),
                None,
            ),
            _ => (
                serde_json::json!({"ok": false, "error": "unknown op"}),
                None,
            ),
        };
        if let Err(e) = send(c.as_raw_fd(), &answer, pass) {
            tracing::debug!(error = %e, "answering a holder request");
        }
    }
}
