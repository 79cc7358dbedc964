//! Sending an export to the client over its session's `moby.filesync.v1.FileSend/DiffCopy`,
//! as BuildKit v0.11 does (docs/BUILDKIT_PROTOCOL.md §4): the daemon calls the client.
//!
//! - A tarball (`oci`, `docker`, `tar` exporters): [`send_bytes`] streams the bytes a
//!   producer writes as `BytesMessage`s of at most 32 KiB, the exporter's response as
//!   `exporter-md-KEY` metadata; the client writes them to its file or stdout and ends its
//!   side once the daemon has closed its own.
//! - A directory (`local`): [`send_dir`] plays fsutil's sender on the same method: `STAT`
//!   per entry (parents first, ending with an empty `STAT`), the file asked for by `REQ`
//!   sent as `DATA` chunks ending with an empty one, `FIN` answered with `FIN`.
//!
//! Why a separate module from `filesync`: there the daemon receives from an untrusted
//! sender, here it sends. What it sends is bounded by what the build produced; memory by a
//! short queue of chunks; the client may ask each file once and must answer within an idle
//! bound.

use super::super::proto::filesend_packets::file_send_client::FileSendClient as PacketClient;
use super::super::proto::filesync::file_send_client::FileSendClient;
use super::super::proto::filesync::BytesMessage;
use super::super::proto::fsutil::types::{packet::PacketType, Packet};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::error::TrySendError;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::Channel;

/// The method a session must expose to receive exports.
pub const FILE_SEND: &str = "/moby.filesync.v1.FileSend/DiffCopy";
/// The metadata prefix of the exporter's response sent with a tarball.
pub const EXPORTER_MD_PREFIX: &str = "exporter-md-";

/// Go `os.FileMode` type bits of what the walk lists besides regular files.
const MODE_DIR: u32 = 1 << 31;
const MODE_SYMLINK: u32 = 1 << 27;
/// Bytes per message (the chunk BuildKit's writers use).
const CHUNK: usize = 32 * 1024;
/// Messages queued before the producer waits.
const QUEUE: usize = 16;
/// Longest wait for the client: its next packet in a directory transfer, taking the next
/// chunk of a tarball.
const IDLE: Duration = Duration::from_secs(120);

/// Why an export to the client failed.
#[derive(Debug, thiserror::Error)]
pub enum FileSendError {
    /// The call failed, or the client ended it with an error.
    #[error("FileSend.DiffCopy: {0}")]
    Call(#[from] tonic::Status),
    /// An exporter response entry cannot be sent as gRPC metadata.
    #[error("exporter metadata {0:?} cannot be sent as gRPC metadata")]
    Metadata(String),
    /// Producing the bytes failed.
    #[error("{0}")]
    Producer(String),
    /// The client stopped reading before the end.
    #[error("the client closed the transfer before its end")]
    Closed,
    /// The client broke fsutil's protocol.
    #[error("FileSend protocol: {0}")]
    Protocol(String),
    /// The client reported an error (`ERR`).
    #[error("the client failed to receive: {0}")]
    Receiver(String),
    /// The client went quiet.
    #[error("no packet from the client for {0:?}")]
    Idle(Duration),
    /// Reading what is sent failed.
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
) -> impl FnOnce(std::io::Error) -> FileSendError + 'a {
    move |source| FileSendError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A blocking writer whose bytes go out as `BytesMessage`s (for a producer on a blocking
/// thread); a write fails once the call is gone or the transfer is given up.
pub struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<BytesMessage>,
    buf: Vec<u8>,
    /// Bytes written.
    pub written: u64,
    /// Since when (ms after `t0`, 0: not) the writer waits for the client to take more.
    blocked: Arc<AtomicU64>,
    /// Turns true when the transfer is given up.
    cancel: Arc<AtomicBool>,
    t0: Instant,
    rt: tokio::runtime::Handle,
}

impl ChunkWriter {
    fn push(&mut self, n: usize) -> std::io::Result<()> {
        let rest = self.buf.split_off(n);
        let data = std::mem::replace(&mut self.buf, rest);
        let closed = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "transfer closed");
        let m = match self.tx.try_send(BytesMessage { data }) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(_)) => return Err(closed()),
            Err(TrySendError::Full(m)) => m,
        };
        let since = u64::try_from(self.t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.blocked.store(since.max(1), Ordering::Relaxed);
        let r = loop {
            let wait = tokio::time::timeout(Duration::from_secs(1), self.tx.reserve());
            match self.rt.block_on(wait) {
                Ok(Ok(permit)) => {
                    permit.send(m);
                    break Ok(());
                }
                Ok(Err(_)) => break Err(closed()),
                Err(_) if self.cancel.load(Ordering::Relaxed) => break Err(closed()),
                Err(_) => {}
            }
        };
        self.blocked.store(0, Ordering::Relaxed);
        r
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        while self.buf.len() >= CHUNK {
            self.push(CHUNK)?;
        }
        self.written += b.len() as u64;
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.push(self.buf.len())?;
        }
        Ok(())
    }
}

fn md_of(md: &HashMap<String, String>) -> Result<MetadataMap, FileSendError> {
    let mut out = MetadataMap::new();
    for (k, v) in md {
        let key = MetadataKey::from_bytes(format!("{EXPORTER_MD_PREFIX}{k}").as_bytes())
            .map_err(|_| FileSendError::Metadata(k.clone()))?;
        let val =
            MetadataValue::try_from(v.as_str()).map_err(|_| FileSendError::Metadata(k.clone()))?;
        out.insert(key, val);
    }
    Ok(out)
}

/// Sends what `produce` writes (on a blocking thread) to the client's FileSend, with `md`
/// as `exporter-md-*` metadata; returns the bytes sent. A client that stops taking chunks
/// for the idle bound ends the transfer (the producer's write then fails).
pub async fn send_bytes<F>(
    channel: Channel,
    md: &HashMap<String, String>,
    produce: F,
) -> Result<u64, FileSendError>
where
    F: FnOnce(&mut ChunkWriter) -> Result<(), String> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<BytesMessage>(QUEUE);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    *req.metadata_mut() = md_of(md)?;
    // The producer runs while the call is made: a Go client sends its answer's headers only
    // when it is done.
    let blocked = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let cancel = Arc::new(AtomicBool::new(false));
    let (b2, c2, rt) = (
        blocked.clone(),
        cancel.clone(),
        tokio::runtime::Handle::current(),
    );
    let producer = tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            written: 0,
            blocked: b2,
            cancel: c2,
            t0,
            rt,
        };
        let r = produce(&mut w).and_then(|()| w.flush().map_err(|e| e.to_string()));
        (r, w.written)
    });
    let call = async {
        let mut answer = FileSendClient::new(channel)
            .diff_copy(req)
            .await?
            .into_inner();
        while answer.next().await.transpose()?.is_some() {}
        Ok::<(), FileSendError>(())
    };
    let stalled = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let since = blocked.load(Ordering::Relaxed);
            let now = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
            if since != 0 && now.saturating_sub(since) > IDLE.as_millis() as u64 {
                return;
            }
        }
    };
    // Dropping the call (stalled) drops the request stream: the producer's write fails.
    let called = tokio::select! {
        r = call => r,
        () = stalled => Err(FileSendError::Idle(IDLE)),
    };
    // A producer still writing has nobody to write to any more.
    cancel.store(true, Ordering::Relaxed);
    let (produced, written) = producer
        .await
        .map_err(|e| FileSendError::Producer(format!("export task: {e}")))?;
    called?;
    match produced {
        Ok(()) => Ok(written),
        Err(e) if e.contains("transfer closed") => Err(FileSendError::Closed),
        Err(e) => Err(FileSendError::Producer(e)),
    }
}

/// What a directory transfer sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SentDir {
    /// Entries listed.
    pub entries: usize,
    /// Files whose contents were asked for and sent.
    pub files: usize,
    /// Bytes of content.
    pub bytes: u64,
}

fn packet(t: PacketType) -> Packet {
    Packet {
        r#type: t as i32,
        ..Packet::default()
    }
}

/// Sends the tree at `root` (regular files, directories, symlinks; owners, modes and times
/// as they are) to the client's FileSend, as fsutil's sender.
pub async fn send_dir(channel: Channel, root: PathBuf) -> Result<SentDir, FileSendError> {
    let r2 = root.clone();
    let entries = tokio::task::spawn_blocking(move || -> Result<_, FileSendError> {
        let mut entries =
            super::super::client::local::walk(&r2, &[], &[]).map_err(io_err("walking", &r2))?;
        for (stat, local) in &mut entries {
            let m = std::fs::symlink_metadata(&*local).map_err(io_err("inspecting", local))?;
            stat.uid = m.uid();
            stat.gid = m.gid();
            stat.mod_time = m.mtime() * 1_000_000_000 + m.mtime_nsec();
        }
        Ok(entries)
    })
    .await
    .map_err(|e| FileSendError::Producer(format!("walk task: {e}")))??;
    let (tx, rx) = tokio::sync::mpsc::channel::<Packet>(QUEUE);
    let stats: Vec<Packet> = entries
        .iter()
        .map(|(stat, _)| Packet {
            r#type: PacketType::PacketStat as i32,
            stat: Some(stat.clone()),
            ..Packet::default()
        })
        .collect();
    let listing = {
        let tx = tx.clone();
        tokio::spawn(async move {
            for p in stats.into_iter().chain([packet(PacketType::PacketStat)]) {
                if tx.send(p).await.is_err() {
                    return;
                }
            }
        })
    };
    let r = answer_requests(channel, rx, tx, &entries).await;
    listing.abort();
    r
}

async fn answer_requests(
    channel: Channel,
    rx: tokio::sync::mpsc::Receiver<Packet>,
    tx: tokio::sync::mpsc::Sender<Packet>,
    entries: &[(super::super::proto::fsutil::types::Stat, PathBuf)],
) -> Result<SentDir, FileSendError> {
    let mut answer = PacketClient::new(channel)
        .diff_copy(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut sent = SentDir {
        entries: entries.len(),
        ..SentDir::default()
    };
    let mut asked = HashSet::new();
    let send = |p: Packet| {
        let tx = tx.clone();
        async move { tx.send(p).await.map_err(|_| FileSendError::Closed) }
    };
    loop {
        let p = match tokio::time::timeout(IDLE, answer.next()).await {
            Err(_) => return Err(FileSendError::Idle(IDLE)),
            Ok(None) => return Err(FileSendError::Protocol("stream ended without FIN".into())),
            Ok(Some(p)) => p?,
        };
        match PacketType::try_from(p.r#type) {
            Ok(PacketType::PacketReq) => {}
            Ok(PacketType::PacketFin) => break,
            Ok(PacketType::PacketErr) => {
                let m: String = String::from_utf8_lossy(&p.data).chars().take(256).collect();
                return Err(FileSendError::Receiver(m));
            }
            _ => {
                return Err(FileSendError::Protocol(
                    "a packet other than REQ, FIN or ERR from the receiver".into(),
                ))
            }
        }
        let file = entries
            .get(p.id as usize)
            .filter(|(s, _)| s.mode & (MODE_DIR | MODE_SYMLINK) == 0)
            .map(|(_, l)| l);
        let Some(local) = file.filter(|_| asked.insert(p.id)) else {
            let mut e = packet(PacketType::PacketErr);
            e.data = format!("invalid file id {}", p.id).into_bytes();
            let _ = send(e).await;
            return Err(FileSendError::Protocol(format!(
                "REQ for {} which is not a regular file or was asked for already",
                p.id
            )));
        };
        let mut f = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(local)
            .await
            .map_err(io_err("opening", local))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = f.read(&mut buf).await.map_err(io_err("reading", local))?;
            send(Packet {
                r#type: PacketType::PacketData as i32,
                id: p.id,
                data: buf[..n].to_vec(),
                ..Packet::default()
            })
            .await?;
            if n == 0 {
                break;
            }
            sent.bytes += n as u64;
        }
        sent.files += 1;
    }
    send(packet(PacketType::PacketFin)).await?;
    drop(tx);
    // The receiver ends its side after our FIN.
    while let Ok(Some(p)) = tokio::time::timeout(IDLE, answer.next()).await {
        p?;
    }
    Ok(sent)
}
