//! The validated, random-access view of a TOC: an inode table with directory trees, hardlinks
//! sharing inodes, and per-file chunk lists sorted by offset with the blob range of each.
//! A mounted layer keeps it for as long as it is mounted, so it is packed: every name once in
//! one string, directory entries in one table sorted per directory, rare attributes out of
//! line, paths rebuilt from parents when a message needs one.
//!
//! Everything a hostile TOC could do wrong is refused here, once, so readers, extraction and
//! FUSE can rely on the invariants: normalised names without `..`, no duplicate non-directory
//! names, hardlinks to earlier non-directories, contiguous chunks covering exactly the file
//! size, chunk frames inside the payload, every chunk with a digest.

use super::names;
use super::time::parse_rfc3339;
use super::toc::{Toc, TocEntry};
use super::toc_stream;
use super::{Compression, FormatError, Limits, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK};
use crate::Digest;
use base64::Engine as _;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Index of a node in [`Index::nodes`]; the root is 0.
pub type NodeId = u32;

/// What kind of file a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Directory.
    Dir,
    /// Regular file.
    Reg,
    /// Symbolic link.
    Symlink,
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

impl NodeKind {
    /// The TOC spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Dir => "dir",
            NodeKind::Reg => "reg",
            NodeKind::Symlink => "symlink",
            NodeKind::Char => "char",
            NodeKind::Block => "block",
            NodeKind::Fifo => "fifo",
        }
    }

    /// The `S_IFMT` bits of this kind.
    pub fn file_type_bits(self) -> u32 {
        match self {
            NodeKind::Dir => libc::S_IFDIR,
            NodeKind::Reg => libc::S_IFREG,
            NodeKind::Symlink => libc::S_IFLNK,
            NodeKind::Char => libc::S_IFCHR,
            NodeKind::Block => libc::S_IFBLK,
            NodeKind::Fifo => libc::S_IFIFO,
        }
    }
}

/// One verified-on-read piece of a regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the chunk within the file.
    pub file_offset: u64,
    /// Decompressed size of the chunk.
    pub size: u64,
    /// Blob offset of the frame holding it.
    pub blob_offset: u64,
    /// Blob offset where the bytes read for the chunk end (exclusive): the end of its frame,
    /// or sooner where the frame is longer than the chunk can need
    /// ([`super::Compression::max_frame_prefix`]).
    pub blob_end: u64,
    /// Decompressed bytes to skip inside the frame before the chunk starts.
    pub inner_offset: u64,
    /// SHA-256 of the chunk's decompressed bytes; `None` only for zero-filled chunks.
    pub digest: Option<Digest>,
    /// A zstd:chunked chunk of zeros with no frame behind it.
    pub zeros: bool,
}

/// What few nodes have (symlink targets, device numbers, xattrs), kept out of line so the
/// inode table stays small.
#[derive(Debug, Clone, Default)]
struct Extra {
    link_target: String,
    dev_major: u32,
    dev_minor: u32,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// No xattrs.
static NO_XATTRS: BTreeMap<String, Vec<u8>> = BTreeMap::new();

/// One inode. Names and directory entries live in the [`Index`] (see [`Index::name`],
/// [`Index::children`], [`Index::path`]): one copy of each name for the whole layer.
#[derive(Debug, Clone)]
pub struct Node {
    /// Kind of file.
    pub kind: NodeKind,
    /// Permission and setuid/setgid/sticky bits (no file-type bits).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Size of a regular file; 0 otherwise.
    pub size: u64,
    /// Modification time, Unix seconds.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// Digest of the whole file, when the TOC gives one.
    pub digest: Option<Digest>,
    /// Chunks of a regular file, sorted by file offset, covering `[0, size)` exactly.
    pub chunks: Box<[Chunk]>,
    /// Parent directory (the root is its own parent).
    pub parent: NodeId,
    /// Link count: names for files, 2 + subdirectories for directories.
    pub nlink: u32,
    /// True for directories that only exist because a deeper entry named them.
    pub implicit: bool,
    /// The first name this node was seen under: a range of [`Index::names`].
    name: (u32, u32),
    /// A directory's entries: a range of [`Index::dirents`].
    dirents: (u32, u32),
    extra: Option<Box<Extra>>,
}

impl Node {
    fn new(kind: NodeKind, parent: NodeId) -> Self {
        Node {
            kind,
            mode: if kind == NodeKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            digest: None,
            chunks: Box::default(),
            parent,
            nlink: 1,
            implicit: false,
            name: (0, 0),
            dirents: (0, 0),
            extra: None,
        }
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The chunk holding file offset `off`, by binary search.
    pub fn chunk_at(&self, off: u64) -> Option<usize> {
        let i = self.chunks.partition_point(|c| c.file_offset <= off);
        (i > 0 && off < self.chunks[i - 1].file_offset + self.chunks[i - 1].size).then(|| i - 1)
    }

    /// Symlink target ("" for other kinds).
    pub fn link_target(&self) -> &str {
        self.extra.as_ref().map_or("", |e| &e.link_target)
    }

    /// Device (major, minor) of a character or block device; (0, 0) otherwise.
    pub fn dev(&self) -> (u32, u32) {
        self.extra
            .as_ref()
            .map_or((0, 0), |e| (e.dev_major, e.dev_minor))
    }

    /// Extended attributes by name.
    pub fn xattrs(&self) -> &BTreeMap<String, Vec<u8>> {
        self.extra.as_ref().map_or(&NO_XATTRS, |e| &e.xattrs)
    }
}

/// One name in a directory: a range of [`Index::names`] and the node it names.
#[derive(Debug, Clone, Copy)]
struct Dirent {
    name: (u32, u32),
    node: NodeId,
}

/// One name in TOC order, for listing and extraction.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Normalised path ("" is the root).
    pub path: String,
    /// The inode it names.
    pub node: NodeId,
    /// True when the TOC entry was a hardlink to `node`.
    pub hardlink: bool,
}

/// The validated index of one layer.
#[derive(Debug, Clone)]
pub struct Index {
    /// Inodes; 0 is the root directory.
    pub nodes: Vec<Node>,
    /// Names in TOC order (chunks and implicit directories excluded).
    pub entries: Vec<Entry>,
    /// Frame codec of the payload.
    pub compression: Compression,
    /// Blob offset where the payload ends and TOC/footer begin.
    pub payload_end: u64,
    /// Regular files listed before the prefetch landmark, in TOC order.
    pub prefetch: Vec<NodeId>,
    /// Whether the layer carries a `.no.prefetch.landmark`.
    pub no_prefetch_landmark: bool,
    /// Number of chunk records.
    pub chunk_count: usize,
    /// Every name of the layer, once, back to back.
    names: String,
    /// Directory entries, each directory's together and sorted by name.
    dirents: Vec<Dirent>,
}

/// Cleans a TOC or tar name: strips `./` and `/` prefixes and `.` components, refuses `..`,
/// NUL, overlong names and whiteouts of anything but a normal name (see [`super::names`]).
/// The root is "".
pub fn normalize_path(raw: &str, limits: &Limits) -> Result<String, FormatError> {
    if raw.len() > limits.max_name {
        return Err(FormatError::entry(raw, "name too long"));
    }
    if raw.contains('\0') {
        return Err(FormatError::entry(raw, "name contains NUL"));
    }
    let mut out = String::with_capacity(raw.len());
    for comp in raw.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(FormatError::entry(raw, "name contains '..'")),
            c => {
                names::classify(c).map_err(|why| FormatError::entry(raw, why.to_string()))?;
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(c);
            }
        }
    }
    Ok(out)
}

fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

fn non_negative(e: &TocEntry, what: &str, v: i64) -> Result<u64, FormatError> {
    u64::try_from(v).map_err(|_| FormatError::entry(&e.name, format!("negative {what} {v}")))
}

fn small(e: &TocEntry, what: &str, v: i64) -> Result<u32, FormatError> {
    u32::try_from(v).map_err(|_| FormatError::entry(&e.name, format!("{what} {v} out of range")))
}

/// The tree while the TOC is read: names as strings, children as maps, paths by name. It is
/// packed into an [`Index`] when complete.
struct Builder<'a> {
    limits: &'a Limits,
    nodes: Vec<Node>,
    /// First name of each node.
    first_names: Vec<String>,
    /// Entries of each node (empty for non-directories).
    children: Vec<BTreeMap<String, NodeId>>,
    by_path: HashMap<String, NodeId>,
    entries: Vec<Entry>,
    raw_chunks: Vec<RawChunk>,
    /// The regular file the next `chunk` entries continue.
    last_reg: Option<NodeId>,
    prefetch_end: Option<usize>,
    no_prefetch: bool,
    /// TOC entries read so far, chunks included.
    seen: usize,
    /// Name-bearing (non-chunk) entries read so far.
    named: u64,
    /// Most name-bearing entries the payload can hold (see [`tar_entry_budget`]).
    tar_entry_budget: u64,
    /// Estimated bytes held so far, against [`Limits::max_index_bytes`].
    cost: u64,
}

/// The TOC format version this reader knows.
fn check_version(v: i64) -> Result<(), FormatError> {
    if v == 1 {
        Ok(())
    } else {
        Err(FormatError::Toc(format!("unsupported TOC version {v}")))
    }
}

/// Name-bearing TOC entries a layer may always have, whatever its payload size.
const FREE_TAR_ENTRIES: u64 = 4096;

/// Every name-bearing TOC entry stands for a tar entry, whose header takes at least one
/// 512-byte block of the payload's decompressed tar. The payload is `payload_end` compressed
/// bytes, so it decompresses to at most `payload_end` times the codec's ratio — or to the
/// known uncompressed size when it is given. Beyond a small allowance, entries the payload
/// cannot hold are refused before they cost memory.
fn tar_entry_budget(compression: Compression, payload_end: u64, uncompressed: Option<u64>) -> u64 {
    let by_ratio = payload_end.saturating_mul(compression.max_ratio());
    let bytes = uncompressed.map_or(by_ratio, |u| u.min(by_ratio));
    FREE_TAR_ENTRIES.saturating_add(bytes / 512)
}

/// Estimated build-time bytes of one name-bearing entry besides its name bytes: the inode,
/// the directory maps, the path table, the entry list and their allocations (measured with
/// suite/tests/hostile_layers.rs; the packed index keeps about half of it).
const ENTRY_COST: u64 = 480;
/// Times each name-bearing entry's path bytes are held while building.
const PATH_COPIES: u64 = 4;
/// Estimated bytes of one chunk while building (the raw chunk and the final one).
const CHUNK_COST: u64 = 160;

impl<'a> Builder<'a> {
    fn new(limits: &'a Limits, entries_hint: usize) -> Self {
        let mut root = Node::new(NodeKind::Dir, 0);
        root.implicit = true;
        root.nlink = 2;
        Builder {
            limits,
            nodes: vec![root],
            first_names: vec![String::new()],
            children: vec![BTreeMap::new()],
            by_path: HashMap::from([(String::new(), 0)]),
            entries: Vec::with_capacity(entries_hint.min(1 << 16)),
            raw_chunks: Vec::new(),
            last_reg: None,
            prefetch_end: None,
            no_prefetch: false,
            seen: 0,
            named: 0,
            tar_entry_budget: u64::MAX,
            cost: 0,
        }
    }

    /// Counts one more entry against the bounds, before any of it is stored.
    fn account(&mut self, e: &TocEntry) -> Result<(), FormatError> {
        self.seen += 1;
        if self.seen > self.limits.max_entries {
            return Err(FormatError::Limit(format!(
                "TOC has more than {} entries",
                self.limits.max_entries
            )));
        }
        if e.kind != "chunk" {
            self.named += 1;
            if self.named > self.tar_entry_budget {
                return Err(FormatError::Limit(format!(
                    "TOC names more than {} entries, more tar headers than the payload can hold \
                     (at {:?})",
                    self.tar_entry_budget,
                    e.name.chars().take(200).collect::<String>()
                )));
            }
        }
        self.cost += if e.kind == "chunk" {
            CHUNK_COST
        } else {
            ENTRY_COST + PATH_COPIES * e.name.len() as u64
        };
        if self.cost > self.limits.max_index_bytes {
            return Err(FormatError::Limit(format!(
                "TOC would take more than {} MiB to index (at entry {} of {:?})",
                self.limits.max_index_bytes >> 20,
                self.seen,
                e.name.chars().take(200).collect::<String>()
            )));
        }
        Ok(())
    }

    /// Validates one TOC entry and adds it to the tree.
    fn add(&mut self, e: &TocEntry) -> Result<(), FormatError> {
        self.account(e)?;
        if e.kind == "chunk" {
            let node = self
                .last_reg
                .ok_or_else(|| FormatError::entry(&e.name, "chunk entry without a file"))?;
            self.raw_chunks.push(raw_chunk(e, node, self.limits)?);
            return Ok(());
        }
        self.last_reg = None;
        let path = normalize_path(&e.name, self.limits)?;
        let kind = match e.kind.as_str() {
            "dir" => NodeKind::Dir,
            "reg" => NodeKind::Reg,
            "symlink" => NodeKind::Symlink,
            "char" => NodeKind::Char,
            "block" => NodeKind::Block,
            "fifo" => NodeKind::Fifo,
            "hardlink" => {
                let target = normalize_path(&e.link_name, self.limits)?;
                let &id = self.by_path.get(&target).ok_or_else(|| {
                    FormatError::entry(
                        &e.name,
                        format!("hardlink target {:?} is not an earlier entry", e.link_name),
                    )
                })?;
                if self.nodes[id as usize].kind == NodeKind::Dir {
                    return Err(FormatError::entry(&e.name, "hardlink to a directory"));
                }
                if self.by_path.contains_key(&path) {
                    return Err(FormatError::entry(&e.name, "duplicate name"));
                }
                let (pp, base) = split_parent(&path);
                if base.is_empty() {
                    return Err(FormatError::entry(&e.name, "hardlink named as the root"));
                }
                let parent = self.dir(pp, &e.name)?;
                self.children[parent as usize].insert(base.to_string(), id);
                self.by_path.insert(path.clone(), id);
                let n = &mut self.nodes[id as usize];
                n.nlink = n.nlink.saturating_add(1);
                self.entries.push(Entry {
                    path,
                    node: id,
                    hardlink: true,
                });
                return Ok(());
            }
            other => {
                return Err(FormatError::entry(
                    &e.name,
                    format!("unknown type {other:?}"),
                ))
            }
        };
        let id = if kind == NodeKind::Dir {
            let id = self.dir(&path, &e.name)?;
            let n = &mut self.nodes[id as usize];
            n.implicit = false;
            apply_meta(n, e, self.limits)?;
            id
        } else {
            if path.is_empty() {
                return Err(FormatError::entry(
                    &e.name,
                    "non-directory named as the root",
                ));
            }
            if self.by_path.contains_key(&path) {
                return Err(FormatError::entry(&e.name, "duplicate name"));
            }
            let (pp, base) = split_parent(&path);
            let parent = self.dir(pp, &e.name)?;
            let mut node = Node::new(kind, parent);
            apply_meta(&mut node, e, self.limits)?;
            match kind {
                NodeKind::Symlink => {
                    if e.link_name.is_empty() || e.link_name.len() > self.limits.max_name {
                        return Err(FormatError::entry(&e.name, "bad symlink target"));
                    }
                    if e.link_name.contains('\0') {
                        return Err(FormatError::entry(&e.name, "symlink target has NUL"));
                    }
                    node.extra_mut().link_target = e.link_name.clone();
                }
                NodeKind::Char | NodeKind::Block => {
                    let (major, minor) = (
                        small(e, "devMajor", e.dev_major)?,
                        small(e, "devMinor", e.dev_minor)?,
                    );
                    let x = node.extra_mut();
                    (x.dev_major, x.dev_minor) = (major, minor);
                }
                NodeKind::Reg => {
                    node.size = non_negative(e, "size", e.size)?;
                    if !e.digest.is_empty() {
                        node.digest = Some(e.digest.parse()?);
                    }
                }
                _ => {}
            }
            let id = self.insert(parent, base, &path, node);
            if kind == NodeKind::Reg {
                self.last_reg = Some(id);
                if self.nodes[id as usize].size > 0 {
                    self.raw_chunks.push(raw_chunk(e, id, self.limits)?);
                }
            }
            id
        };
        if path == PREFETCH_LANDMARK && self.prefetch_end.is_none() {
            self.prefetch_end = Some(self.entries.len());
        }
        if path == NO_PREFETCH_LANDMARK {
            self.no_prefetch = true;
        }
        self.entries.push(Entry {
            path,
            node: id,
            hardlink: false,
        });
        Ok(())
    }

    /// Attaches chunks and packs the tree once every entry is in.
    fn build(mut self, compression: Compression, payload_end: u64) -> Result<Index, FormatError> {
        let raw_chunks = std::mem::take(&mut self.raw_chunks);
        let (prefetch_end, no_prefetch, limits) =
            (self.prefetch_end, self.no_prefetch, self.limits);
        let mut index = self.finish(compression, payload_end, prefetch_end, no_prefetch)?;
        index.chunk_count = raw_chunks.len();
        index.attach_chunks(raw_chunks, limits)?;
        Ok(index)
    }

    /// Returns the directory at `path`, creating missing ones implicitly.
    fn dir(&mut self, path: &str, raw: &str) -> Result<NodeId, FormatError> {
        if let Some(&id) = self.by_path.get(path) {
            if self.nodes[id as usize].kind != NodeKind::Dir {
                return Err(FormatError::entry(
                    raw,
                    format!("{path:?} is used as a directory but is not one"),
                ));
            }
            return Ok(id);
        }
        let (parent_path, base) = split_parent(path);
        let parent = self.dir(parent_path, raw)?;
        let mut node = Node::new(NodeKind::Dir, parent);
        node.implicit = true;
        node.nlink = 2;
        Ok(self.insert(parent, base, path, node))
    }

    fn insert(&mut self, parent: NodeId, base: &str, path: &str, node: Node) -> NodeId {
        let id = self.nodes.len() as NodeId;
        if node.kind == NodeKind::Dir {
            self.nodes[parent as usize].nlink += 1;
        }
        self.nodes.push(node);
        self.first_names.push(base.to_string());
        self.children.push(BTreeMap::new());
        self.children[parent as usize].insert(base.to_string(), id);
        self.by_path.insert(path.to_string(), id);
        id
    }

    /// Packs names and directory entries into one string and one table.
    fn finish(
        self,
        compression: Compression,
        payload_end: u64,
        prefetch_end: Option<usize>,
        no_prefetch_landmark: bool,
    ) -> Result<Index, FormatError> {
        let Builder {
            mut nodes,
            first_names,
            children,
            entries,
            ..
        } = self;
        let too_big = || FormatError::Limit("TOC names exceed 4 GiB".into());
        let mut names = String::new();
        let push = |names: &mut String, s: &str| -> Result<(u32, u32), FormatError> {
            let at = u32::try_from(names.len()).map_err(|_| too_big())?;
            names.push_str(s);
            u32::try_from(names.len()).map_err(|_| too_big())?;
            Ok((at, s.len() as u32))
        };
        for (n, name) in nodes.iter_mut().zip(&first_names) {
            n.name = push(&mut names, name)?;
        }
        let mut dirents = Vec::with_capacity(nodes.len());
        for (dir, kids) in children.into_iter().enumerate() {
            let start = u32::try_from(dirents.len()).map_err(|_| too_big())?;
            for (name, id) in kids {
                let child = &nodes[id as usize];
                // A node's first name is already stored; a hardlink's other names are not.
                let name = if child.parent as usize == dir && first_names[id as usize] == name {
                    child.name
                } else {
                    push(&mut names, &name)?
                };
                dirents.push(Dirent { name, node: id });
            }
            nodes[dir].dirents = (start, dirents.len() as u32 - start);
        }
        names.shrink_to_fit();
        dirents.shrink_to_fit();
        nodes.shrink_to_fit();
        let prefetch = match prefetch_end {
            Some(end) => entries[..end]
                .iter()
                .filter(|e| !e.hardlink && nodes[e.node as usize].kind == NodeKind::Reg)
                .map(|e| e.node)
                .collect(),
            None => Vec::new(),
        };
        Ok(Index {
            nodes,
            entries,
            compression,
            payload_end,
            prefetch,
            no_prefetch_landmark,
            chunk_count: 0,
            names,
            dirents,
        })
    }
}

fn apply_meta(node: &mut Node, e: &TocEntry, limits: &Limits) -> Result<(), FormatError> {
    node.mode = (non_negative(e, "mode", e.mode)? & 0o7777) as u32;
    node.uid = small(e, "uid", e.uid)?;
    node.gid = small(e, "gid", e.gid)?;
    if !e.mod_time.is_empty() {
        let (s, ns) = parse_rfc3339(&e.mod_time)
            .ok_or_else(|| FormatError::entry(&e.name, format!("bad modtime {:?}", e.mod_time)))?;
        node.mtime = s;
        node.mtime_nsec = ns;
    }
    if e.xattrs.len() > limits.max_xattrs {
        return Err(FormatError::entry(&e.name, "too many xattrs"));
    }
    let mut total = 0usize;
    for (k, v) in &e.xattrs {
        if k.is_empty() || k.contains('\0') {
            return Err(FormatError::entry(&e.name, "bad xattr name"));
        }
        let val = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|_| FormatError::entry(&e.name, format!("xattr {k:?} is not base64")))?;
        total += k.len() + val.len();
        if total > limits.max_xattr_bytes {
            return Err(FormatError::entry(&e.name, "xattrs too large"));
        }
        node.extra_mut().xattrs.insert(k.clone(), val);
    }
    Ok(())
}

/// A chunk as read from the TOC, before its frame end is known.
struct RawChunk {
    node: NodeId,
    file_offset: u64,
    size: u64,
    blob_offset: u64,
    end_offset: u64,
    inner_offset: u64,
    digest: Option<Digest>,
    zeros: bool,
}

fn raw_chunk(e: &TocEntry, node: NodeId, limits: &Limits) -> Result<RawChunk, FormatError> {
    let zeros = match e.chunk_type.as_str() {
        "" | "data" => false,
        "zeros" => true,
        other => {
            return Err(FormatError::entry(
                &e.name,
                format!("unknown chunkType {other:?}"),
            ))
        }
    };
    let inner = non_negative(e, "innerOffset", e.inner_offset)?;
    if inner > limits.max_inner_offset {
        return Err(FormatError::entry(&e.name, "innerOffset too large"));
    }
    let digest = if e.chunk_digest.is_empty() {
        None
    } else {
        Some(e.chunk_digest.parse()?)
    };
    Ok(RawChunk {
        node,
        file_offset: non_negative(e, "chunkOffset", e.chunk_offset)?,
        size: non_negative(e, "chunkSize", e.chunk_size)?,
        blob_offset: non_negative(e, "offset", e.offset)?,
        end_offset: non_negative(e, "endOffset", e.end_offset)?,
        inner_offset: inner,
        digest,
        zeros,
    })
}

impl Index {
    /// Parses TOC JSON bytes, bounded by `limits`, into a validated index. Entries are read
    /// and validated one at a time (see [`super::toc_stream`]), so the peak is the JSON plus
    /// the index being built, and the entry and memory bounds stop a hostile TOC early.
    pub fn from_json(
        json: &[u8],
        compression: Compression,
        payload_end: u64,
        limits: &Limits,
    ) -> Result<Index, FormatError> {
        Index::from_json_sized(json, compression, payload_end, None, limits)
    }

    /// [`Index::from_json`] for a layer whose uncompressed tar size is known (the
    /// `io.containers.estargz.uncompressed-size` annotation), which tightens the entry bound.
    pub fn from_json_sized(
        json: &[u8],
        compression: Compression,
        payload_end: u64,
        uncompressed_size: Option<u64>,
        limits: &Limits,
    ) -> Result<Index, FormatError> {
        if json.len() as u64 > limits.max_toc_json {
            return Err(FormatError::Limit(format!(
                "TOC JSON is {} bytes (max {})",
                json.len(),
                limits.max_toc_json
            )));
        }
        let mut b = Builder::new(limits, json.len() / 64);
        b.tar_entry_budget = tar_entry_budget(compression, payload_end, uncompressed_size);
        toc_stream::for_each_entry(json, &mut check_version, &mut |e| b.add(&e))?;
        b.build(compression, payload_end)
    }

    /// Validates a parsed TOC into an index.
    pub fn build(
        toc: &Toc,
        compression: Compression,
        payload_end: u64,
        limits: &Limits,
    ) -> Result<Index, FormatError> {
        check_version(toc.version)?;
        let mut b = Builder::new(limits, toc.entries.len());
        b.tar_entry_budget = tar_entry_budget(compression, payload_end, None);
        for e in &toc.entries {
            b.add(e)?;
        }
        b.build(compression, payload_end)
    }

    /// The node at a path (normalised the same way as TOC names).
    pub fn lookup(&self, path: &str) -> Option<NodeId> {
        let norm = normalize_path(path, &Limits::default()).ok()?;
        let mut id: NodeId = 0;
        if norm.is_empty() {
            return Some(0);
        }
        for comp in norm.split('/') {
            id = self.child(id, comp)?;
        }
        Some(id)
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    fn str_of(&self, (at, len): (u32, u32)) -> &str {
        self.names
            .get(at as usize..at as usize + len as usize)
            .unwrap_or_default()
    }

    fn dirents_of(&self, dir: NodeId) -> &[Dirent] {
        let (start, len) = self.nodes.get(dir as usize).map_or((0, 0), |n| n.dirents);
        self.dirents
            .get(start as usize..start as usize + len as usize)
            .unwrap_or_default()
    }

    /// The entry `name` of directory `dir`, by binary search.
    pub fn child(&self, dir: NodeId, name: &str) -> Option<NodeId> {
        let ents = self.dirents_of(dir);
        ents.binary_search_by(|d| self.str_of(d.name).cmp(name))
            .ok()
            .map(|i| ents[i].node)
    }

    /// The entries of directory `dir`, in name order (none for other kinds).
    pub fn children(&self, dir: NodeId) -> impl ExactSizeIterator<Item = (&str, NodeId)> + '_ {
        self.dirents_of(dir)
            .iter()
            .map(|d| (self.str_of(d.name), d.node))
    }

    /// The first name node `id` was seen under ("" for the root).
    pub fn name(&self, id: NodeId) -> &str {
        self.nodes
            .get(id as usize)
            .map_or("", |n| self.str_of(n.name))
    }

    /// The first path node `id` was seen under, normalised ("" for the root).
    pub fn path(&self, id: NodeId) -> String {
        let mut parts = Vec::new();
        let mut cur = id;
        // Parents are created before their children, so ids fall towards the root.
        while let Some(n) = self.nodes.get(cur as usize).filter(|_| cur != 0) {
            parts.push(self.str_of(n.name));
            if n.parent >= cur {
                break;
            }
            cur = n.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Total decompressed bytes of all regular files.
    pub fn total_file_bytes(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Reg)
            .map(|n| n.size)
            .sum()
    }

    /// Sorts each file's chunks, fills in sizes and frame ends, and checks coverage and bounds.
    fn attach_chunks(&mut self, raw: Vec<RawChunk>, limits: &Limits) -> Result<(), FormatError> {
        let payload_end = self.payload_end;
        let mut frame_starts: Vec<u64> = raw
            .iter()
            .filter(|c| !c.zeros)
            .map(|c| c.blob_offset)
            .collect();
        frame_starts.push(payload_end);
        frame_starts.sort_unstable();
        frame_starts.dedup();
        let mut seen: HashSet<(u64, u64)> = HashSet::with_capacity(raw.len());

        let mut by_node: BTreeMap<NodeId, Vec<RawChunk>> = BTreeMap::new();
        for c in raw {
            by_node.entry(c.node).or_default().push(c);
        }
        for (id, mut chunks) in by_node {
            let name = || self.path(id);
            let node = &self.nodes[id as usize];
            chunks.sort_by_key(|c| c.file_offset);
            let size = node.size;
            let single = chunks.len() == 1;
            let mut expect = 0u64;
            let mut out = Vec::with_capacity(chunks.len());
            for c in &chunks {
                if c.file_offset != expect {
                    return Err(FormatError::entry(
                        &name(),
                        format!(
                            "chunk at file offset {} where {expect} was expected (gap or overlap)",
                            c.file_offset
                        ),
                    ));
                }
                let len = if c.size == 0 {
                    size.saturating_sub(c.file_offset)
                } else {
                    c.size
                };
                if len == 0 || len > limits.max_chunk {
                    return Err(FormatError::entry(
                        &name(),
                        format!("chunk size {len} at offset {} out of range", c.file_offset),
                    ));
                }
                let digest = match (c.digest, c.zeros) {
                    (Some(d), _) => Some(d),
                    (None, true) => None,
                    (None, false) if single => node.digest,
                    (None, false) => None,
                };
                if digest.is_none() && !c.zeros {
                    return Err(FormatError::entry(
                        &name(),
                        format!("chunk at offset {} has no digest to verify", c.file_offset),
                    ));
                }
                let (blob_offset, blob_end) = if c.zeros {
                    (0, 0)
                } else {
                    if c.blob_offset >= payload_end {
                        return Err(FormatError::entry(
                            &name(),
                            format!(
                                "chunk frame offset {} is past the payload end {payload_end}",
                                c.blob_offset
                            ),
                        ));
                    }
                    if !seen.insert((c.blob_offset, c.inner_offset)) {
                        return Err(FormatError::entry(
                            &name(),
                            format!("chunk frame offset {} is used twice", c.blob_offset),
                        ));
                    }
                    let next = frame_starts[frame_starts.partition_point(|&o| o <= c.blob_offset)];
                    let end = if c.end_offset > c.blob_offset && c.end_offset <= next {
                        c.end_offset
                    } else {
                        next
                    };
                    // What the frame can hold beyond the chunk is never needed: the span
                    // read is bounded by the chunk's own size, whatever lies behind it.
                    let needed = self
                        .compression
                        .max_frame_prefix(c.inner_offset.saturating_add(len));
                    (c.blob_offset, end.min(c.blob_offset.saturating_add(needed)))
                };
                if let Some(prev) = out.last() {
                    let prev: &Chunk = prev;
                    if !c.zeros && !prev.zeros && blob_offset < prev.blob_offset {
                        return Err(FormatError::entry(&name(), "chunk frames out of order"));
                    }
                }
                out.push(Chunk {
                    file_offset: c.file_offset,
                    size: len,
                    blob_offset,
                    blob_end,
                    inner_offset: c.inner_offset,
                    digest,
                    zeros: c.zeros,
                });
                expect = c
                    .file_offset
                    .checked_add(len)
                    .ok_or_else(|| FormatError::entry(&name(), "chunk offset overflows"))?;
            }
            if expect != size {
                return Err(FormatError::entry(
                    &name(),
                    format!("chunks cover {expect} bytes of a {size}-byte file"),
                ));
            }
            self.nodes[id as usize].chunks = out.into_boxed_slice();
        }
        for (id, n) in self.nodes.iter().enumerate() {
            if n.kind == NodeKind::Reg && n.size > 0 && n.chunks.is_empty() {
                return Err(FormatError::entry(
                    &self.path(id as NodeId),
                    "non-empty file without chunks",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(json: &str) -> Result<Index, FormatError> {
        Index::from_json(
            json.as_bytes(),
            Compression::Gzip,
            10_000,
            &Limits::default(),
        )
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn builds_tree_with_chunks_and_hardlinks() {
        let j = format!(
            r#"{{"version":1,"entries":[
            {{"name":"./a/","type":"dir","mode":16877}},
            {{"name":"a/f","type":"reg","size":10,"offset":100,"chunkSize":4,"chunkDigest":"{D}"}},
            {{"name":"a/f","type":"chunk","offset":200,"chunkOffset":4,"chunkDigest":"{D}"}},
            {{"name":"b/h","type":"hardlink","linkName":"a/f"}},
            {{"name":"a/.wh.x","type":"reg"}}
        ]}}"#
        );
        let i = idx(&j).unwrap();
        let f = i.lookup("/a/f").unwrap();
        assert_eq!(i.lookup("b/h"), Some(f));
        let n = i.node(f);
        assert_eq!(n.nlink, 2);
        assert_eq!(n.chunks.len(), 2);
        assert_eq!((n.chunks[0].size, n.chunks[0].blob_end), (4, 200));
        assert_eq!((n.chunks[1].size, n.chunks[1].blob_end), (6, 10_000));
        assert_eq!(n.chunk_at(3), Some(0));
        assert_eq!(n.chunk_at(4), Some(1));
        assert_eq!(n.chunk_at(10), None);
        assert!(i.node(i.lookup("b").unwrap()).implicit);
        // One name per entry, in name order; the node keeps its first path.
        let a = i.lookup("a").unwrap();
        let names: Vec<&str> = i.children(a).map(|(n, _)| n).collect();
        assert_eq!(names, [".wh.x", "f"]);
        assert_eq!(i.child(a, "f"), Some(f));
        assert_eq!(i.child(a, "g"), None);
        assert_eq!(i.child(f, "x"), None);
        assert_eq!((i.name(f), i.path(f).as_str()), ("f", "a/f"));
        assert_eq!(i.path(0), "");
        let b = i.lookup("b").unwrap();
        assert_eq!(i.children(b).collect::<Vec<_>>(), [("h", f)]);
        assert_eq!(i.node(i.lookup("a").unwrap()).mode, 0o755);
    }

    #[test]
    fn nodes_stay_small() {
        // The inode table is most of a mounted layer's memory; see suite/benches/format.rs.
        assert!(
            std::mem::size_of::<Node>() <= 128,
            "{}",
            std::mem::size_of::<Node>()
        );
    }

    #[test]
    fn refuses_hostile_entries() {
        for (json, want) in [
            (r#"{"version":2,"entries":[]}"#, "version"),
            (
                r#"{"version":1,"entries":[{"name":"../x","type":"dir"}]}"#,
                "..",
            ),
            (
                r#"{"version":1,"entries":[{"name":"a","type":"fifo"},{"name":"a","type":"fifo"}]}"#,
                "duplicate",
            ),
            (
                r#"{"version":1,"entries":[{"name":"a","type":"hardlink","linkName":"../etc/passwd"}]}"#,
                "..",
            ),
            (
                r#"{"version":1,"entries":[{"name":"a","type":"hardlink","linkName":"nope"}]}"#,
                "earlier",
            ),
            (
                r#"{"version":1,"entries":[{"name":"a","type":"fifo"},{"name":"a/b","type":"fifo"}]}"#,
                "not one",
            ),
            (
                r#"{"version":1,"entries":[{"name":"a","type":"weird"}]}"#,
                "unknown type",
            ),
            (
                r#"{"version":1,"entries":[{"name":"a","type":"reg","size":5,"offset":20000}]}"#,
                "digest",
            ),
            (
                r#"{"version":1,"entries":[{"name":"a","type":"chunk"}]}"#,
                "without a file",
            ),
            (
                r#"{"version":1,"entries":[{"name":"a","type":"reg","size":-1}]}"#,
                "negative",
            ),
            (
                r#"{"version":1,"entries":[{"name":"a","type":"reg","size":3}]}"#,
                "digest",
            ),
        ] {
            let err = idx(json).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        let past = format!(
            r#"{{"version":1,"entries":[{{"name":"a","type":"reg","size":5,"offset":20000,"chunkDigest":"{D}"}}]}}"#
        );
        assert!(idx(&past)
            .unwrap_err()
            .to_string()
            .contains("past the payload"));
        let gap = format!(
            r#"{{"version":1,"entries":[{{"name":"a","type":"reg","size":9,"offset":5,"chunkSize":4,"chunkDigest":"{D}"}},{{"name":"a","type":"chunk","offset":9,"chunkOffset":5,"chunkDigest":"{D}"}}]}}"#
        );
        assert!(idx(&gap)
            .unwrap_err()
            .to_string()
            .contains("gap or overlap"));
    }

    #[test]
    fn whiteouts_must_name_a_normal_name() {
        for name in [
            ".wh...",
            ".wh..",
            ".wh.",
            "a/.wh...",
            "a/.wh../b",
            "./.wh...",
        ] {
            let json = format!(
                r#"{{"version":1,"entries":[{{"name":{},"type":"reg"}}]}}"#,
                serde_json::to_string(name).unwrap()
            );
            let err = idx(&json).unwrap_err();
            assert!(matches!(err, FormatError::Entry { .. }), "{name}: {err}");
            let msg = err.to_string();
            assert!(msg.contains("whiteout target"), "{name}: {msg}");
            assert!(msg.contains(&format!("{name:?}")), "{name}: {msg}");
        }
        let ok = r#"{"version":1,"entries":[{"name":"a/.wh..wh..opq","type":"reg"},{"name":"a/.wh..wh.plnk/","type":"dir"},{"name":"a/.wh.b","type":"reg"}]}"#;
        assert!(idx(ok).is_ok());
    }

    #[test]
    fn deep_json_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(idx(&deep).is_err());
    }
}
