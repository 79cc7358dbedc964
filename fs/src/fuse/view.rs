//! How one layer looks through FUSE: the TOC's index, shown with overlayfs' conventions so
//! kernel overlayfs composes layers exactly as the unpacked image. `.wh.X` entries are hidden
//! and `X` appears as a character device 0/0 (unless the layer also has `X`); a directory
//! holding `.wh..wh..opq` answers the opaque xattr instead; other aufs `.wh..wh.*` metadata
//! is hidden, as containerd's unpacker skips it; the prefetch landmarks at the root are hidden,
//! as the reference snapshotter hides them. Names follow [`crate::format::names`]; the index
//! refuses whiteouts of anything but a normal name, so `.wh..` and the like never get here.

use crate::format::names::{classify, NameKind, OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use crate::format::{Index, Node, NodeId, NodeKind};
use fuser::{FileAttr, FileType, INodeNo};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// FUSE inode number of the root.
pub const ROOT_INO: u64 = 1;
const LANDMARKS: [&str; 2] = [".prefetch.landmark", ".no.prefetch.landmark"];

/// Which xattr marks an opaque directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpaqueXattr {
    /// `trusted.overlay.opaque` (overlayfs default; needs CAP_SYS_ADMIN).
    #[default]
    Trusted,
    /// `user.overlay.opaque` (overlayfs with `userxattr`, rootless).
    User,
    /// Both.
    Both,
}

impl OpaqueXattr {
    fn names(self) -> &'static [&'static str] {
        match self {
            OpaqueXattr::Trusted => &["trusted.overlay.opaque"],
            OpaqueXattr::User => &["user.overlay.opaque"],
            OpaqueXattr::Both => &["trusted.overlay.opaque", "user.overlay.opaque"],
        }
    }
}

/// What a visible name resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A node of the index.
    Node(NodeId),
    /// A whiteout, shown as a 0/0 character device; the id is the hidden `.wh.X` node's.
    Whiteout(NodeId),
}

impl Entry {
    /// The FUSE inode number (index id + 1; a whiteout reuses its hidden entry's id).
    pub fn ino(self) -> u64 {
        match self {
            Entry::Node(id) | Entry::Whiteout(id) => id as u64 + 1,
        }
    }
}

/// The overlay view of one index.
pub struct View<'a> {
    index: &'a Index,
    opaque: OpaqueXattr,
}

impl<'a> View<'a> {
    /// A view of `index`.
    pub fn new(index: &'a Index, opaque: OpaqueXattr) -> Self {
        View { index, opaque }
    }

    /// The entry behind an inode number, if any.
    pub fn entry(&self, ino: u64) -> Option<Entry> {
        let id = NodeId::try_from(ino.checked_sub(1)?).ok()?;
        let node = self.index.nodes.get(id as usize)?;
        let base = self.index.name(id);
        if matches!(classify(base), Ok(NameKind::Whiteout(_))) && node.kind != NodeKind::Dir {
            Some(Entry::Whiteout(id))
        } else {
            Some(Entry::Node(id))
        }
    }

    fn node(&self, id: NodeId) -> &Node {
        self.index.node(id)
    }

    /// Looks `name` up in directory `dir`.
    pub fn lookup(&self, dir: NodeId, name: &str) -> Option<Entry> {
        let d = self.node(dir);
        if d.kind != NodeKind::Dir || name.starts_with(WHITEOUT_PREFIX) {
            return None;
        }
        if dir == 0 && LANDMARKS.contains(&name) {
            return None;
        }
        if let Some(id) = self.index.child(dir, name) {
            return Some(Entry::Node(id));
        }
        self.index
            .child(dir, &format!("{WHITEOUT_PREFIX}{name}"))
            .map(Entry::Whiteout)
    }

    /// The visible entries of directory `dir`, in name order.
    pub fn children(&self, dir: NodeId) -> Vec<(String, Entry)> {
        let kids = self.index.children(dir);
        let mut out = Vec::with_capacity(kids.len());
        for (name, id) in kids {
            if dir == 0 && LANDMARKS.contains(&name) {
                continue;
            }
            match classify(name) {
                Ok(NameKind::Whiteout(target)) => {
                    if self.index.child(dir, target).is_none() {
                        out.push((target.to_string(), Entry::Whiteout(id)));
                    }
                }
                Ok(NameKind::Plain) => out.push((name.to_string(), Entry::Node(id))),
                Ok(NameKind::Opaque | NameKind::AufsMeta) | Err(_) => {}
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether `dir` is opaque (holds `.wh..wh..opq`).
    pub fn is_opaque(&self, dir: NodeId) -> bool {
        let d = self.node(dir);
        d.kind == NodeKind::Dir && self.index.child(dir, OPAQUE_WHITEOUT).is_some()
    }

    /// Extended attributes of an entry (TOC xattrs plus the opaque marker).
    pub fn xattrs(&self, e: Entry) -> Vec<(String, Vec<u8>)> {
        let Entry::Node(id) = e else {
            return Vec::new();
        };
        let mut out: Vec<(String, Vec<u8>)> = self
            .node(id)
            .xattrs()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.is_opaque(id) {
            for n in self.opaque.names() {
                out.retain(|(k, _)| k != n);
                out.push((n.to_string(), b"y".to_vec()));
            }
        }
        out
    }

    /// The kind FUSE reports.
    pub fn kind(&self, e: Entry) -> FileType {
        match e {
            Entry::Whiteout(_) => FileType::CharDevice,
            Entry::Node(id) => file_type(self.node(id).kind),
        }
    }

    /// Attributes.
    pub fn attr(&self, e: Entry) -> FileAttr {
        let ino = e.ino();
        match e {
            Entry::Whiteout(id) => {
                let t = mtime(self.node(id));
                FileAttr {
                    ino: INodeNo(ino),
                    size: 0,
                    blocks: 0,
                    atime: t,
                    mtime: t,
                    ctime: t,
                    crtime: t,
                    kind: FileType::CharDevice,
                    perm: 0,
                    nlink: 1,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    blksize: 4096,
                    flags: 0,
                }
            }
            Entry::Node(id) => {
                let n = self.node(id);
                let t = mtime(n);
                let size = match n.kind {
                    NodeKind::Reg => n.size,
                    NodeKind::Symlink => n.link_target().len() as u64,
                    NodeKind::Dir => 4096,
                    _ => 0,
                };
                FileAttr {
                    ino: INodeNo(ino),
                    size,
                    blocks: size.div_ceil(512),
                    atime: t,
                    mtime: t,
                    ctime: t,
                    crtime: t,
                    kind: file_type(n.kind),
                    // Symlink permissions are not used and always read 0777 on Linux.
                    perm: if n.kind == NodeKind::Symlink {
                        0o777
                    } else {
                        (n.mode & 0o7777) as u16
                    },
                    nlink: n.nlink.max(1),
                    uid: n.uid,
                    gid: n.gid,
                    rdev: libc::makedev(n.dev().0, n.dev().1) as u32,
                    blksize: 4096,
                    flags: 0,
                }
            }
        }
    }

    /// Inodes, for statfs.
    pub fn inode_count(&self) -> u64 {
        self.index.nodes.len() as u64
    }
}

fn mtime(n: &Node) -> SystemTime {
    if n.mtime >= 0 {
        UNIX_EPOCH + Duration::new(n.mtime as u64, n.mtime_nsec)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::new(n.mtime.unsigned_abs(), 0))
            .unwrap_or(UNIX_EPOCH)
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::Dir => FileType::Directory,
        NodeKind::Reg => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Char => FileType::CharDevice,
        NodeKind::Block => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}
