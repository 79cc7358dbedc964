//! The fuser filesystem over one lazily read layer. Metadata answers come from the in-memory
//! index on the FUSE thread; reads are handed to the async runtime and replied from there,
//! so a read waiting on the network never holds up lookups or other reads. Content is
//! immutable, so attributes and entries get long timeouts and the page cache is kept. A
//! file whose chunks are all cached is opened with FUSE passthrough when the kernel has it:
//! the kernel then reads the verified local copy itself.

use super::passthrough::{Decision, OpenCounters, OpenModes, FH_CACHED, FH_PASSTHROUGH};
use super::view::{Entry, OpaqueXattr, View};
use crate::format::{Index, NodeId, NodeKind};
use crate::layer::RemoteLayer;
use fuser::{
    AccessFlags, BackingId, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
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

    fn record(&self, index: &Index, id: NodeId) {
        use std::io::Write;
        let mut g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.insert(id) {
            if let Some(f) = g.1.as_mut() {
                if let Err(e) = writeln!(f, "{}", index.path(id)) {
                    tracing::warn!(error = %e, "access record write failed; recording stops");
                    g.1 = None;
                }
            }
        }
    }
}

/// Options of one layer's filesystem.
#[derive(Clone)]
pub struct FsOptions {
    /// Which opaque xattr to answer.
    pub opaque: OpaqueXattr,
    /// Where to record opened files.
    pub recorder: Option<Arc<AccessRecorder>>,
    /// Hand fully fetched files to the kernel (FUSE passthrough) when it supports that.
    pub passthrough: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            opaque: OpaqueXattr::default(),
            recorder: None,
            passthrough: true,
        }
    }
}

/// One layer as a read-only FUSE filesystem.
pub struct LayerFs {
    layer: Arc<RemoteLayer>,
    rt: tokio::runtime::Handle,
    opts: FsOptions,
    /// `passthrough` is set when the kernel agreed to it at init, cleared if registering a
    /// backing file is refused.
    counters: Arc<OpenCounters>,
    modes: Arc<OpenModes>,
    init: super::resume::InitSlot,
}

impl LayerFs {
    /// Serves `layer`, running reads on `rt`.
    pub fn new(layer: Arc<RemoteLayer>, rt: tokio::runtime::Handle, opts: FsOptions) -> Self {
        LayerFs {
            layer,
            rt,
            opts,
            counters: Arc::new(OpenCounters::default()),
            modes: Arc::new(OpenModes::default()),
            init: Default::default(),
        }
    }

    /// Where the kernel's INIT is recorded when it comes.
    pub fn init_slot(&self) -> super::resume::InitSlot {
        self.init.clone()
    }

    /// The served layer's digest, hex.
    pub fn layer_digest_hex(&self) -> String {
        self.layer.digest().hex()
    }

    /// How files have been opened (passthrough or not), live.
    pub fn counters(&self) -> Arc<OpenCounters> {
        self.counters.clone()
    }

    fn view(&self) -> View<'_> {
        View::new(self.layer.index(), self.opts.opaque)
    }

    fn node_of(&self, ino: INodeNo) -> Option<Entry> {
        self.view().entry(ino.0)
    }

    fn dir_of(&self, ino: INodeNo) -> Result<NodeId, Errno> {
        match self.node_of(ino) {
            Some(Entry::Node(id)) if self.layer.index().node(id).kind == NodeKind::Dir => Ok(id),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// The directory listing from `offset`, each entry with the offset of the one after it
    /// (what readdir and readdirplus hand back to the kernel).
    fn page(&self, ino: INodeNo, offset: u64) -> Result<Vec<(u64, u64, String, Entry)>, Errno> {
        let dir = self.dir_of(ino)?;
        Ok(self
            .listing(dir)
            .into_iter()
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .map(|(i, (child_ino, name, e))| (i as u64 + 1, child_ino, name, e))
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

/// Replies to an open through the page cache, unless passthrough opens of the inode
/// appeared meanwhile (then it joins them).
fn reply_cached(modes: &OpenModes, c: &OpenCounters, ino: u64, reply: ReplyOpen) {
    match modes.open_cached(ino) {
        Ok(()) => {
            c.fuse_opens.fetch_add(1, Ordering::Relaxed);
            reply.opened(FileHandle(FH_CACHED), FopenFlags::FOPEN_KEEP_CACHE)
        }
        Err(backing) => reply_passthrough(modes, c, ino, backing, reply),
    }
}

/// Replies to an open with passthrough to `backing` (or the backing file the inode already
/// has), unless cached opens of the inode appeared meanwhile (then it joins them).
fn reply_passthrough(
    modes: &OpenModes,
    c: &OpenCounters,
    ino: u64,
    backing: Arc<BackingId>,
    reply: ReplyOpen,
) {
    match modes.open_passthrough(ino, backing) {
        Ok(b) => {
            c.passthrough_opens.fetch_add(1, Ordering::Relaxed);
            reply.opened_passthrough(FileHandle(FH_PASSTHROUGH), FopenFlags::empty(), &b)
        }
        Err(()) => reply_cached(modes, c, ino, reply),
    }
}

fn xattr_reply(data: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let abi = config.kernel_abi();
        if let Ok(mut slot) = self.init.lock() {
            *slot = Some(super::resume::KernelInit {
                major: abi.0,
                minor: abi.1,
                flags: config.capabilities().bits(),
            });
        }
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        let _ = config.set_max_readahead(4 << 20);
        if self.opts.passthrough {
            // Depth 1: backing files sit on a plain file system, and overlayfs may still
            // stack on top of this one (the kernel allows two levels).
            let on = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !on {
                tracing::info!(layer = %self.layer.digest(), "kernel has no FUSE passthrough; fetched files are read through FUSE");
            }
            self.counters.passthrough.store(on, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let dir = match self.dir_of(parent) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let Ok(name) = std::str::from_utf8(name.as_bytes()) else {
            return reply.error(Errno::ENOENT);
        };
        match self.view().lookup(dir, name) {
            Some(e) => reply.entry(&TTL, &self.view().attr(e), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node_of(ino) {
            Some(e) => reply.attr(&TTL, &self.view().attr(e)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node_of(ino) {
            Some(Entry::Node(id)) if self.layer.index().node(id).kind == NodeKind::Symlink => {
                reply.data(self.layer.index().node(id).link_target().as_bytes())
            }
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let id = match self.node_of(ino) {
            Some(Entry::Node(id)) => id,
            Some(Entry::Whiteout(_)) => return reply.error(Errno::ENXIO),
            None => return reply.error(Errno::ENOENT),
        };
        let n = self.layer.index().node(id);
        if n.kind == NodeKind::Dir {
            return reply.error(Errno::EISDIR);
        }
        if n.kind != NodeKind::Reg {
            return reply.opened(FileHandle(0), FopenFlags::empty());
        }
        if let Some(r) = &self.opts.recorder {
            r.record(self.layer.index(), id);
        }
        let (modes, c) = (&self.modes, &self.counters);
        if !c.passthrough.load(Ordering::Relaxed) {
            c.fuse_opens.fetch_add(1, Ordering::Relaxed);
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
        }
        match modes.decide(ino.0) {
            Decision::Cached => reply_cached(modes, c, ino.0, reply),
            Decision::Passthrough(b) => reply_passthrough(modes, c, ino.0, b, reply),
            Decision::Free if !self.layer.local_file_ready(id) => {
                reply_cached(modes, c, ino.0, reply)
            }
            Decision::Free => {
                // Assembling or re-hashing the local copy takes a while: not on this thread.
                let (layer, modes, c) = (self.layer.clone(), modes.clone(), c.clone());
                self.rt.spawn(async move {
                    let Some(file) = layer.local_file(id).await else {
                        return reply_cached(&modes, &c, ino.0, reply);
                    };
                    match reply.open_backing(&file) {
                        Ok(b) => reply_passthrough(&modes, &c, ino.0, Arc::new(b), reply),
                        Err(e) => {
                            if c.passthrough.swap(false, Ordering::Relaxed) {
                                tracing::warn!(layer = %layer.digest(), error = %e, "the kernel refused a passthrough backing file; reading through FUSE from now on");
                            }
                            reply_cached(&modes, &c, ino.0, reply)
                        }
                    }
                });
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.modes.release(ino.0, fh.0);
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let id = match self.node_of(ino) {
            Some(Entry::Node(id)) if self.layer.index().node(id).kind == NodeKind::Reg => id,
            Some(_) => return reply.error(Errno::EINVAL),
            None => return reply.error(Errno::ENOENT),
        };
        let layer = self.layer.clone();
        self.rt.spawn(async move {
            match layer.read(id, offset, size as u64).await {
                Ok(data) => reply.data(&data),
                Err(e) => {
                    tracing::error!(layer = %layer.digest(), file = %layer.index().path(id), offset, error = %e, "read failed");
                    reply.error(Errno::EIO)
                }
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let page = match self.page(ino, offset) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let v = self.view();
        for (next, child_ino, name, e) in page {
            if reply.add(INodeNo(child_ino), next, v.kind(e), &name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let page = match self.page(ino, offset) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let v = self.view();
        for (next, child_ino, name, e) in page {
            if reply.add(
                INodeNo(child_ino),
                next,
                &name,
                &TTL,
                &v.attr(e),
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(e) = self.node_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let name = name.as_bytes();
        match self
            .view()
            .xattrs(e)
            .into_iter()
            .find(|(k, _)| k.as_bytes() == name)
        {
            Some((_, v)) => xattr_reply(&v, size, reply),
            None => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(e) = self.node_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut list = Vec::new();
        for (k, _) in self.view().xattrs(e) {
            list.extend_from_slice(k.as_bytes());
            list.push(0);
        }
        xattr_reply(&list, size, reply);
    }

    /// Nothing is buffered for writing: a close has nothing to flush.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// No ioctls (programs probe e.g. FS_IOC_GETFLAGS): "not a typewriter", as on files of
    /// file systems without them.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if self.node_of(ino).is_none() {
            return reply.error(Errno::ENOENT);
        }
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
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

/// Mounts `fs` read-only, `nosuid,nodev`, at `mountpoint` in a background thread; unmounted
/// when the returned session is dropped.
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
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        // Only the overlay on top is what containers use: it keeps its own suid and dev
        // flags, so a setuid program or device node of the image still works there, but
        // never when reached through the layer's own mount point.
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    let mut config = fuser::Config::default();
    config.mount_options = opts.to_vec();
    config.acl = fuser::SessionACL::All;
    fuser::spawn_mount(fs, mountpoint, &config)
}
