//! Receiving a local directory from a session: the daemon calls the client's
//! `FileSync.DiffCopy` with the request's metadata (`dir-name`, patterns, follow paths) and
//! plays fsutil's receiver (docs/BUILDKIT_PROTOCOL.md §4): the sender lists the tree as
//! `STAT` packets, the receiver asks for the regular files' contents with `REQ` by ID, gets
//! `DATA` chunks ending with an empty one, and both end with `FIN`.
//!
//! The sender is not trusted. Every path is relative, `/`-separated, without empty, `.` or
//! `..` components, and its parent must have been listed before it as a directory, so
//! nothing is written through a symlink or outside the target (which must be an empty
//! directory); files are created with `O_EXCL | O_NOFOLLOW`. Entries, path lengths and the
//! total of the declared sizes are bounded, every file receives exactly its declared size,
//! data only for a file requested and in flight, and the sender must make progress within
//! an idle bound. Directories are created 0700 and given their modes at the end. The
//! receiver itself ([`receive_packets`]) serves the client's side of the `local` exporter
//! too (`client::output`), where the daemon is the sender.

use super::super::proto::filesync::file_sync_client::FileSyncClient;
use super::super::proto::fsutil::types::{packet::PacketType, Packet, Stat};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;

/// Go `os.FileMode` bits (fsutil's `Stat.mode`).
const MODE_DIR: u32 = 1 << 31;
const MODE_SYMLINK: u32 = 1 << 27;
const MODE_DEVICE: u32 = 1 << 26;
const MODE_PIPE: u32 = 1 << 25;
const MODE_SOCKET: u32 = 1 << 24;
const MODE_SETUID: u32 = 1 << 23;
const MODE_SETGID: u32 = 1 << 22;
const MODE_CHARDEV: u32 = 1 << 21;
const MODE_STICKY: u32 = 1 << 20;
const MODE_IRREGULAR: u32 = 1 << 19;
const MODE_TYPE: u32 =
    MODE_DIR | MODE_SYMLINK | MODE_DEVICE | MODE_PIPE | MODE_SOCKET | MODE_CHARDEV | MODE_IRREGULAR;

/// Files requested at once (as fsutil's receiver does).
const IN_FLIGHT: usize = 4;

/// What to ask the client for.
#[derive(Debug, Clone, Default)]
pub struct DiffCopyOptions {
    /// Which of the client's local directories (`--local NAME=DIR`): `context`, `dockerfile`.
    pub dir_name: String,
    /// Include patterns.
    pub include_patterns: Vec<String>,
    /// Exclude patterns.
    pub exclude_patterns: Vec<String>,
    /// Paths whose symlinks the client follows.
    pub follow_paths: Vec<String>,
    /// The excludes given replace the client's own (`.dockerignore`).
    pub override_excludes: bool,
}

/// Bounds on what one transfer may cost.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveLimits {
    /// Entries listed.
    pub max_entries: usize,
    /// Total of the regular files' sizes.
    pub max_bytes: u64,
    /// Bytes of a path or a symlink's target.
    pub max_path_len: usize,
    /// Longest wait for the next packet.
    pub idle: Duration,
}

impl Default for ReceiveLimits {
    fn default() -> Self {
        ReceiveLimits {
            max_entries: 1 << 20,
            max_bytes: 64 << 30,
            max_path_len: 4096,
            idle: Duration::from_secs(120),
        }
    }
}

/// What was received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Entries created.
    pub entries: usize,
    /// Regular files whose contents arrived.
    pub files: usize,
    /// Bytes of content.
    pub bytes: u64,
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum FileSyncError {
    /// The call failed or the stream broke.
    #[error("FileSync.DiffCopy: {0}")]
    Call(#[from] tonic::Status),
    /// The client reported an error (`ERR`).
    #[error("the client failed to send {dir}: {message}")]
    Sender {
        /// The directory.
        dir: String,
        /// Its message (truncated).
        message: String,
    },
    /// The packets do not follow the protocol.
    #[error("FileSync protocol: {0}")]
    Protocol(String),
    /// A path is not acceptable.
    #[error("path {path:?}: {reason}")]
    Path {
        /// The path, as sent (truncated).
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// A bound was exceeded.
    #[error("transfer exceeds its bound: {0}")]
    Bound(&'static str),
    /// An option cannot be sent as metadata.
    #[error("option {0} cannot be sent as gRPC metadata")]
    Metadata(&'static str),
    /// The target is not an empty directory.
    #[error("target {}: {reason}", .path.display())]
    Target {
        /// The target.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The sender went quiet.
    #[error("no packet for {0:?}")]
    Idle(Duration),
    /// Writing into the target failed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> FileSyncError + 'a {
    move |source| FileSyncError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(256).collect()
}

fn protocol(m: impl Into<String>) -> FileSyncError {
    FileSyncError::Protocol(m.into())
}

/// The metadata of the DiffCopy call.
fn metadata(opts: &DiffCopyOptions) -> Result<MetadataMap, FileSyncError> {
    let mut md = MetadataMap::new();
    let value = |v: &str, what: &'static str| {
        MetadataValue::try_from(v).map_err(|_| FileSyncError::Metadata(what))
    };
    md.insert("dir-name", value(&opts.dir_name, "dir-name")?);
    for (key, list) in [
        ("include-patterns", &opts.include_patterns),
        ("exclude-patterns", &opts.exclude_patterns),
        ("followpaths", &opts.follow_paths),
    ] {
        for v in list {
            md.append(key, value(v, key)?);
        }
    }
    if opts.override_excludes {
        md.insert("override-excludes", MetadataValue::from_static("true"));
    }
    Ok(md)
}

/// A listed entry.
#[derive(Debug)]
struct Entry {
    path: String,
    stat: Stat,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Symlink,
    File,
    HardLink,
}

/// Unix permission bits of a Go file mode.
fn unix_perms(mode: u32) -> u32 {
    let mut p = mode & 0o777;
    if mode & MODE_SETUID != 0 {
        p |= 0o4000;
    }
    if mode & MODE_SETGID != 0 {
        p |= 0o2000;
    }
    if mode & MODE_STICKY != 0 {
        p |= 0o1000;
    }
    p
}

/// Checks `path` is a clean relative path and returns its parent (`""` for the top).
fn check_path<'a>(path: &'a str, limits: &ReceiveLimits) -> Result<&'a str, FileSyncError> {
    let bad = |reason| FileSyncError::Path {
        path: truncated(path),
        reason,
    };
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if path.len() > limits.max_path_len {
        return Err(bad("too long"));
    }
    if path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    if path.starts_with('/') {
        return Err(bad("absolute"));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("empty, . or .. component"));
    }
    Ok(path.rsplit_once('/').map(|(p, _)| p).unwrap_or(""))
}

/// The listing, checked as it arrives.
struct Listing<'l> {
    limits: &'l ReceiveLimits,
    entries: Vec<Entry>,
    paths: HashMap<String, usize>,
    dirs: HashSet<String>,
    bytes: u64,
}

impl Listing<'_> {
    fn add(&mut self, stat: Stat) -> Result<(), FileSyncError> {
        if self.entries.len() >= self.limits.max_entries {
            return Err(FileSyncError::Bound("too many entries"));
        }
        let parent = check_path(&stat.path, self.limits)?;
        let bad = |reason| FileSyncError::Path {
            path: truncated(&stat.path),
            reason,
        };
        if !parent.is_empty() && !self.dirs.contains(parent) {
            return Err(bad("parent not listed before it as a directory"));
        }
        if self.paths.contains_key(&stat.path) {
            return Err(bad("listed twice"));
        }
        if stat.linkname.len() > self.limits.max_path_len || stat.linkname.contains('\0') {
            return Err(bad("bad link target"));
        }
        let kind = match stat.mode & MODE_TYPE {
            MODE_DIR => Kind::Dir,
            MODE_SYMLINK => {
                if stat.linkname.is_empty() {
                    return Err(bad("symlink without a target"));
                }
                Kind::Symlink
            }
            0 if stat.linkname.is_empty() => {
                let size = u64::try_from(stat.size).map_err(|_| bad("negative size"))?;
                self.bytes = self
                    .bytes
                    .checked_add(size)
                    .filter(|b| *b <= self.limits.max_bytes)
                    .ok_or(FileSyncError::Bound("total size"))?;
                Kind::File
            }
            0 => {
                let first = self
                    .paths
                    .get(&stat.linkname)
                    .map(|&i| self.entries[i].kind);
                if first != Some(Kind::File) {
                    return Err(bad("hard link to no earlier regular file"));
                }
                Kind::HardLink
            }
            _ => return Err(bad("devices, pipes and sockets are not received")),
        };
        if kind == Kind::Dir {
            self.dirs.insert(stat.path.clone());
        }
        self.paths.insert(stat.path.clone(), self.entries.len());
        self.entries.push(Entry {
            path: stat.path.clone(),
            stat,
            kind,
        });
        Ok(())
    }
}

/// Owner and times of `path` as the stat says (owner only as root, as an unprivileged
/// daemon cannot give files away).
fn finish_meta(path: &Path, stat: &Stat) -> Result<(), FileSyncError> {
    if stargaze_fs::sys::is_root() {
        stargaze_fs::sys::lchown(path, stat.uid, stat.gid).map_err(io_err("chown", path))?;
    }
    let secs = stat.mod_time.div_euclid(1_000_000_000);
    let nsec = u32::try_from(stat.mod_time.rem_euclid(1_000_000_000)).unwrap_or(0);
    stargaze_fs::sys::set_times_nofollow(path, secs, nsec).map_err(io_err("setting times", path))
}

fn set_perms(path: &Path, mode: u32) -> Result<(), FileSyncError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(unix_perms(mode)))
        .map_err(io_err("chmod", path))
}

/// A file being received.
struct InFlight {
    file: tokio::fs::File,
    written: u64,
    size: u64,
}

/// Receives the client's directory `opts.dir_name` over the session `channel` into
/// `target`, an existing empty directory.
pub async fn receive(
    channel: Channel,
    opts: &DiffCopyOptions,
    target: &Path,
    limits: &ReceiveLimits,
) -> Result<Received, FileSyncError> {
    check_target(target)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Packet>(IN_FLIGHT * 2);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    *req.metadata_mut() = metadata(opts)?;
    let packets = FileSyncClient::new(channel)
        .diff_copy(req)
        .await?
        .into_inner();
    receive_packets(packets, tx, &opts.dir_name, target, limits).await
}

/// Fails unless `target` is an existing empty directory.
pub fn check_target(target: &Path) -> Result<(), FileSyncError> {
    let meta = std::fs::symlink_metadata(target).map_err(io_err("reading", target))?;
    if !meta.is_dir() {
        return Err(FileSyncError::Target {
            path: target.to_path_buf(),
            reason: "not a directory",
        });
    }
    if std::fs::read_dir(target)
        .map_err(io_err("reading", target))?
        .next()
        .is_some()
    {
        return Err(FileSyncError::Target {
            path: target.to_path_buf(),
            reason: "not empty",
        });
    }
    Ok(())
}

/// fsutil's receiver over any packet stream: `packets` from the sender, `tx` to it (the
/// requests and the final `FIN`), written into `target` (checked empty by the caller, see
/// [`check_target`]); `dir` names the transfer in errors. The client's side of the `local`
/// exporter runs it too (`client::output`).
pub async fn receive_packets<S>(
    mut packets: S,
    tx: tokio::sync::mpsc::Sender<Packet>,
    dir: &str,
    target: &Path,
    limits: &ReceiveLimits,
) -> Result<Received, FileSyncError>
where
    S: tokio_stream::Stream<Item = Result<Packet, tonic::Status>> + Unpin,
{
    let mut next = async || -> Result<Option<Packet>, FileSyncError> {
        match tokio::time::timeout(limits.idle, packets.next()).await {
            Err(_) => Err(FileSyncError::Idle(limits.idle)),
            Ok(None) => Ok(None),
            Ok(Some(p)) => Ok(Some(p?)),
        }
    };
    let sender_err = |p: &Packet| FileSyncError::Sender {
        dir: truncated(dir),
        message: truncated(&String::from_utf8_lossy(&p.data)),
    };
    let send = |p: Packet| {
        let tx = tx.clone();
        async move {
            tx.send(p)
                .await
                .map_err(|_| protocol("the request stream closed"))
        }
    };

    // The listing, created as it arrives (files once their data does).
    let mut listing = Listing {
        limits,
        entries: Vec::new(),
        paths: HashMap::new(),
        dirs: HashSet::new(),
        bytes: 0,
    };
    loop {
        let p = next()
            .await?
            .ok_or_else(|| protocol("stream ended in the listing"))?;
        match PacketType::try_from(p.r#type) {
            Ok(PacketType::PacketStat) => {}
            Ok(PacketType::PacketErr) => return Err(sender_err(&p)),
            _ => return Err(protocol("a packet other than STAT in the listing")),
        }
        let Some(stat) = p.stat else { break };
        listing.add(stat)?;
        let e = listing
            .entries
            .last()
            .ok_or_else(|| protocol("listing lost an entry"))?;
        let path = target.join(&e.path);
        match e.kind {
            Kind::Dir => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(io_err("creating", &path))?;
            }
            Kind::Symlink => {
                std::os::unix::fs::symlink(&e.stat.linkname, &path)
                    .map_err(io_err("creating", &path))?;
                finish_meta(&path, &e.stat)?;
            }
            Kind::File | Kind::HardLink => {}
        }
    }

    // The contents, IN_FLIGHT files at a time.
    let mut queue: VecDeque<u32> = listing
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == Kind::File)
        .filter_map(|(i, _)| u32::try_from(i).ok())
        .collect();
    let mut in_flight: HashMap<u32, InFlight> = HashMap::new();
    let mut got = Received {
        entries: listing.entries.len(),
        ..Received::default()
    };
    loop {
        while in_flight.len() < IN_FLIGHT {
            let Some(id) = queue.pop_front() else { break };
            let e = &listing.entries[id as usize];
            let path = target.join(&e.path);
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .await
                .map_err(io_err("creating", &path))?;
            in_flight.insert(
                id,
                InFlight {
                    file,
                    written: 0,
                    size: u64::try_from(e.stat.size).unwrap_or(0),
                },
            );
            send(Packet {
                r#type: PacketType::PacketReq as i32,
                id,
                ..Packet::default()
            })
            .await?;
        }
        if in_flight.is_empty() {
            break;
        }
        let p = next()
            .await?
            .ok_or_else(|| protocol("stream ended before the data"))?;
        match PacketType::try_from(p.r#type) {
            Ok(PacketType::PacketData) => {}
            Ok(PacketType::PacketErr) => return Err(sender_err(&p)),
            _ => return Err(protocol("a packet other than DATA while receiving data")),
        }
        let f = in_flight
            .get_mut(&p.id)
            .ok_or_else(|| protocol(format!("DATA for {} which was not requested", p.id)))?;
        let e = &listing.entries[p.id as usize];
        let path = target.join(&e.path);
        if p.data.is_empty() {
            if f.written != f.size {
                return Err(FileSyncError::Path {
                    path: truncated(&e.path),
                    reason: "fewer bytes than its size",
                });
            }
            f.file.flush().await.map_err(io_err("writing", &path))?;
            in_flight.remove(&p.id);
            set_perms(&path, e.stat.mode)?;
            finish_meta(&path, &e.stat)?;
            got.files += 1;
            got.bytes += u64::try_from(e.stat.size).unwrap_or(0);
            continue;
        }
        let n = p.data.len() as u64;
        if f.written.saturating_add(n) > f.size {
            return Err(FileSyncError::Path {
                path: truncated(&e.path),
                reason: "more bytes than its size",
            });
        }
        f.file
            .write_all(&p.data)
            .await
            .map_err(io_err("writing", &path))?;
        f.written += n;
    }

    // Hard links, then the directories' modes and times, deepest first.
    for e in listing.entries.iter().filter(|e| e.kind == Kind::HardLink) {
        let path = target.join(&e.path);
        std::fs::hard_link(target.join(&e.stat.linkname), &path)
            .map_err(io_err("linking", &path))?;
    }
    for e in listing.entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        let path = target.join(&e.path);
        set_perms(&path, e.stat.mode)?;
        finish_meta(&path, &e.stat)?;
    }

    send(Packet {
        r#type: PacketType::PacketFin as i32,
        ..Packet::default()
    })
    .await?;
    match next().await? {
        Some(p) if p.r#type == PacketType::PacketFin as i32 => {}
        Some(p) if p.r#type == PacketType::PacketErr as i32 => return Err(sender_err(&p)),
        Some(_) => return Err(protocol("a packet other than FIN at the end")),
        None => return Err(protocol("stream ended without FIN")),
    }
    drop(tx);
    Ok(got)
}
