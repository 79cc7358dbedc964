//! The fuser filesystem over one lazily read layer. Metadata answers come from the in-memory
//! index on the FUSE thread; reads are handed to the async runtime and replied from there,
//! so a read waiting on the network never holds up lookups or other reads. Content is
//! immutable, so attributes and entries get long timeouts and the page cache is kept.

use super::view::{Entry, OpaqueXattr, View};
use crate::format::{NodeId, NodeKind};
use crate::layer::RemoteLayer;
use fuser::{
    Filesystem, KernelConfig, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Attribute and entry cache timeout: layers never change.
const TTL: Duration = Duration::from_secs(3600);

/// Files opened so far, appended to a file in first-open order (`--record-access`).
pub struct AccessRecorder {
    seen: Mutex<(std::collections::HashSet<NodeId>, Option<std::fs::File>)>,
}

impl AccessRecorder {
    /// Appends to `path`.
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AccessRecorder {
            seen: Mutex::new((Default::default(), Some(f))),
        })
    }

    fn record(&self, id: NodeId, path: &str) {
        use std::io::Write;
        let mut g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.insert(id) {
            if let Some(f) = g.1.as_mut() {
                if let Err(e) = writeln!(f, "{path}") {
                    tracing::warn!(error = %e, "access record write failed; recording stops");
                    g.1 = None;
                }
            }
        }
    }
}

/// Options of one layer's filesystem.
#[derive(Clone, Default)]
pub struct FsOptions {
    /// Which opaque xattr to answer.
    pub opaque: OpaqueXattr,
    /// Where to record opened files.
    pub recorder: Option<Arc<AccessRecorder>>,
}

/// One layer as a read-only FUSE filesystem.
pub struct LayerFs {
    layer: Arc<RemoteLayer>,
    rt: tokio::runtime::Handle,
    opts: FsOptions,
}

impl LayerFs {
    /// Serves `layer`, running reads on `rt`.
    pub fn new(layer: Arc<RemoteLayer>, rt: tokio::runtime::Handle, opts: FsOptions) -> Self {
        LayerFs { layer, rt, opts }
    }

    fn view(&self) -> View<'_> {
        View::new(self.layer.index(), self.opts.opaque)
    }

    fn node_of(&self, ino: u64) -> Option<Entry> {
        self.view().entry(ino)
    }

    fn dir_of(&self, ino: u64) -> Result<NodeId, i32> {
        match self.node_of(ino) {
            Some(Entry::Node(id)) if self.layer.index().node(id).kind == NodeKind::Dir => Ok(id),
            Some(_) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    /// The directory listing from `offset`, each entry with the offset of the one after it
    /// (what readdir and readdirplus hand back to the kernel).
    fn page(&self, ino: u64, offset: i64) -> Result<Vec<(i64, u64, String, Entry)>, i32> {
        let dir = self.dir_of(ino)?;
        Ok(self
            .listing(dir)
            .into_iter()
            .enumerate()
            .skip(offset.max(0) as usize)
            .map(|(i, (child_ino, name, e))| (i as i64 + 1, child_ino, name, e))
            .collect())
    }

    /// `.` and `..` followed by the visible children.
    fn listing(&self, dir: NodeId) -> Vec<(u64, String, Entry)> {
        let v = self.view();
        let parent = self.layer.index().node(dir).parent;
        let mut out = vec![
            (dir as u64 + 1, ".".to_string(), Entry::Node(dir)),
            (parent as u64 + 1, "..".to_string(), Entry::Node(parent)),
        ];
        for (name, e) in v.children(dir) {
            out.push((e.ino(), name, e));
        }
        out
    }
}

fn xattr_reply(data: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(libc::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let _ = config.add_capabilities(
            fuser::consts::FUSE_DO_READDIRPLUS | fuser::consts::FUSE_READDIRPLUS_AUTO,
        );
        let _ = config.set_max_readahead(4 << 20);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let dir = match self.dir_of(parent) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let Ok(name) = std::str::from_utf8(name.as_bytes()) else {
            return reply.error(libc::ENOENT);
        };
        match self.view().lookup(dir, name) {
            Some(e) => reply.entry(&TTL, &self.view().attr(e), 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.node_of(ino) {
            Some(e) => reply.attr(&TTL, &self.view().attr(e)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.node_of(ino) {
            Some(Entry::Node(id)) if self.layer.index().node(id).kind == NodeKind::Symlink => {
                reply.data(self.layer.index().node(id).link_target.as_bytes())
            }
            Some(_) => reply.error(libc::EINVAL),
            None => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return reply.error(libc::EROFS);
        }
        match self.node_of(ino) {
            Some(Entry::Node(id)) => {
                let n = self.layer.index().node(id);
                if n.kind == NodeKind::Dir {
                    return reply.error(libc::EISDIR);
                }
                if let Some(r) = &self.opts.recorder {
                    if n.kind == NodeKind::Reg {
                        r.record(id, &n.path);
                    }
                }
                reply.opened(0, fuser::consts::FOPEN_KEEP_CACHE)
            }
            Some(Entry::Whiteout(_)) => reply.error(libc::ENXIO),
            None => reply.error(libc::ENOENT),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let id = match self.node_of(ino) {
            Some(Entry::Node(id)) if self.layer.index().node(id).kind == NodeKind::Reg => id,
            Some(_) => return reply.error(libc::EINVAL),
            None => return reply.error(libc::ENOENT),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        let layer = self.layer.clone();
        self.rt.spawn(async move {
            match layer.read(id, offset, size as u64).await {
                Ok(data) => reply.data(&data),
                Err(e) => {
                    tracing::error!(layer = %layer.digest(), file = %layer.index().node(id).path, offset, error = %e, "read failed");
                    reply.error(libc::EIO)
                }
            }
        });
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let page = match self.page(ino, offset) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let v = self.view();
        for (next, child_ino, name, e) in page {
            if reply.add(child_ino, next, v.kind(e), &name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let page = match self.page(ino, offset) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let v = self.view();
        for (next, child_ino, name, e) in page {
            if reply.add(child_ino, next, &name, &TTL, &v.attr(e), 0) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let Some(e) = self.node_of(ino) else {
            return reply.error(libc::ENOENT);
        };
        let name = name.as_bytes();
        match self
            .view()
            .xattrs(e)
            .into_iter()
            .find(|(k, _)| k.as_bytes() == name)
        {
            Some((_, v)) => xattr_reply(&v, size, reply),
            None => reply.error(libc::ENODATA),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let Some(e) = self.node_of(ino) else {
            return reply.error(libc::ENOENT);
        };
        let mut list = Vec::new();
        for (k, _) in self.view().xattrs(e) {
            list.extend_from_slice(k.as_bytes());
            list.push(0);
        }
        xattr_reply(&list, size, reply);
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, mask: i32, reply: fuser::ReplyEmpty) {
        if self.node_of(ino).is_none() {
            return reply.error(libc::ENOENT);
        }
        if mask & libc::W_OK != 0 {
            return reply.error(libc::EROFS);
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let bytes = self.layer.index().total_file_bytes();
        reply.statfs(
            bytes.div_ceil(4096),
            0,
            0,
            self.view().inode_count(),
            0,
            4096,
            255,
            4096,
        );
    }
}

/// Mounts `fs` read-only at `mountpoint` in a background thread; unmounted when the
/// returned session is dropped.
pub fn mount_layer(
    fs: LayerFs,
    mountpoint: &std::path::Path,
) -> std::io::Result<fuser::BackgroundSession> {
    use fuser::MountOption;
    let digest = fs.layer.digest().hex();
    let opts = [
        MountOption::FSName(format!("stargaze:{}", &digest[..12])),
        MountOption::Subtype("stargaze".into()),
        MountOption::RO,
        MountOption::AllowOther,
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::Dev,
        MountOption::Suid,
    ];
    fuser::spawn_mount2(fs, mountpoint, &opts)
}
