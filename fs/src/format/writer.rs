//! tar (plain, gzip or zstd) → eStargz (gzip or zstd), streaming and on all cores.
//!
//! The calling thread parses the tar and cuts the uncompressed stream into frames at the
//! places eStargz requires (before every file payload, every chunk, the TOC and the footer);
//! worker threads compress frames independently; one writer thread puts them out in order and
//! learns each frame's blob offset. Frames in flight are bounded by a token pool, so memory
//! stays at a few chunks whatever the layer size. Entry headers are copied byte for byte from
//! the input, so the decompressed output is a tar with exactly the input's entries (plus the
//! landmark and, for gzip, the TOC entry).

use super::footer::{gzip_footer, zstd_footer, SKIPPABLE_MAGIC};
use super::tar::{padding, ustar_file_header, TarEntry, TarKind, TarReader};
use super::time::format_rfc3339;
use super::toc::{Toc, TocEntry};
use super::{Compression, FormatError, Limits, LANDMARK_CONTENT, NO_PREFETCH_LANDMARK};
use super::{PREFETCH_LANDMARK, TOC_NAME};
use crate::digest::Hasher;
use crate::Digest;
use base64::Engine as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

/// How to write a layer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Frame codec.
    pub compression: Compression,
    /// Compression level (gzip 0–9, zstd 1–22).
    pub level: i32,
    /// Largest decompressed chunk of a file.
    pub chunk_size: u64,
    /// Files to put first, followed by the prefetch landmark. Empty: no-prefetch landmark.
    pub prioritized: Vec<String>,
    /// Compression threads.
    pub threads: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compression: Compression::Gzip,
            level: Compression::Gzip.default_level(),
            chunk_size: 4 << 20,
            prioritized: Vec::new(),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// What a conversion produced.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// Digest of the written blob.
    pub blob_digest: Digest,
    /// Size of the written blob.
    pub blob_size: u64,
    /// Digest of the TOC JSON (the `toc.digest` annotation).
    pub toc_digest: Digest,
    /// Digest of the decompressed tar (the image config's diff_id).
    pub diff_id: Digest,
    /// Size of the decompressed tar.
    pub uncompressed_size: u64,
    /// Frame codec used.
    pub compression: Compression,
    /// TOC entries written (chunks included).
    pub toc_entries: usize,
    /// Regular files written.
    pub files: usize,
    /// Chunks written.
    pub chunks: usize,
    /// Prioritized files found and written first.
    pub prioritized: usize,
    /// zstd only: `offset:compressed:uncompressed:1` of the TOC.
    pub zstd_manifest_position: Option<String>,
    /// zstd only: digest of the compressed TOC.
    pub zstd_manifest_checksum: Option<Digest>,
}

type Job = (u64, Vec<u8>);
type Done = (u64, Result<Vec<u8>, FormatError>);

/// Stage that cuts the uncompressed stream into frames and records TOC entries.
struct Framer {
    jobs: SyncSender<Job>,
    tokens: Receiver<()>,
    seq: u64,
    cur: Vec<u8>,
    diff: Hasher,
    uncompressed: u64,
    chunk_size: u64,
    toc: Vec<TocEntry>,
    /// For each TOC entry with a payload, the frame sequence number holding it.
    frame_of: Vec<(usize, u64)>,
    names_seen: HashSet<u64>,
    /// Normalised names of non-directories written so far (readers refuse duplicates).
    paths: HashSet<String>,
    groups_seen: HashSet<u64>,
    files: usize,
    chunks: usize,
}

impl Framer {
    fn push(&mut self, bytes: &[u8]) {
        self.diff.update(bytes);
        self.uncompressed += bytes.len() as u64;
        self.cur.extend_from_slice(bytes);
    }

    /// Ends the current frame (if any) and hands it to the compressors.
    fn flush(&mut self) -> Result<(), FormatError> {
        if self.cur.is_empty() {
            return Ok(());
        }
        self.tokens
            .recv()
            .map_err(|_| FormatError::Tar("output writer stopped".into()))?;
        let data = std::mem::take(&mut self.cur);
        self.jobs
            .send((self.seq, data))
            .map_err(|_| FormatError::Tar("compressor stopped".into()))?;
        self.seq += 1;
        Ok(())
    }

    fn base_entry(&mut self, e: &TarEntry, kind: &str) -> TocEntry {
        let mut t = TocEntry {
            name: e.path.clone(),
            kind: kind.to_string(),
            mod_time: format_rfc3339(e.mtime),
            mode: i64::from(e.mode),
            uid: e.uid as i64,
            gid: e.gid as i64,
            ..Default::default()
        };
        if !e.uname.is_empty() && self.names_seen.insert(e.uid) {
            t.user_name = e.uname.clone();
        }
        if !e.gname.is_empty() && self.groups_seen.insert(e.gid) {
            t.group_name = e.gname.clone();
        }
        for (k, v) in &e.xattrs {
            t.xattrs.insert(
                k.clone(),
                base64::engine::general_purpose::STANDARD.encode(v),
            );
        }
        t
    }

    /// Adds one tar entry with its payload read from `data`.
    fn add<R: Read>(&mut self, e: &TarEntry, data: &mut TarReader<R>) -> Result<(), FormatError> {
        let kind = e.kind.toc_kind();
        // Refuse now what every eStargz reader would refuse later.
        let norm = super::index::normalize_path(&e.path, &Limits::default())
            .map_err(|err| FormatError::Tar(err.to_string()))?;
        if e.kind == TarKind::Hardlink {
            super::index::normalize_path(&e.link_name, &Limits::default())
                .map_err(|err| FormatError::Tar(format!("hardlink target: {err}")))?;
        }
        if e.kind != TarKind::Dir && !self.paths.insert(norm) {
            return Err(FormatError::Tar(format!(
                "entry {:?} appears twice; eStargz readers refuse duplicate names",
                e.path
            )));
        }
        let mut t = self.base_entry(e, kind);
        match e.kind {
            TarKind::Hardlink | TarKind::Symlink => t.link_name = e.link_name.clone(),
            TarKind::Char | TarKind::Block => {
                t.dev_major = i64::from(e.dev_major);
                t.dev_minor = i64::from(e.dev_minor);
            }
            _ => {}
        }
        self.push(&e.raw_header);
        if e.kind != TarKind::Reg || e.size == 0 {
            if e.kind == TarKind::Reg {
                t.digest = Digest::of(b"").to_string();
                self.files += 1;
            }
            self.toc.push(t);
            if self.cur.len() as u64 >= self.chunk_size {
                self.flush()?;
            }
            return Ok(());
        }
        t.size = e.size as i64;
        self.flush()?;
        let reg_index = self.toc.len();
        let mut whole = Hasher::new();
        let mut off = 0u64;
        while off < e.size {
            let len = (e.size - off).min(self.chunk_size);
            let mut buf = vec![0u8; len as usize];
            data.read_data_exact(&mut buf)?;
            whole.update(&buf);
            let last = off + len == e.size;
            let mut c = if off == 0 {
                std::mem::take(&mut t)
            } else {
                TocEntry {
                    name: e.path.clone(),
                    kind: "chunk".into(),
                    chunk_offset: off as i64,
                    ..Default::default()
                }
            };
            if !last {
                c.chunk_size = len as i64;
            }
            c.chunk_digest = Digest::of(&buf).to_string();
            self.frame_of.push((self.toc.len(), self.seq));
            self.toc.push(c);
            self.chunks += 1;
            self.push(&buf);
            if last {
                self.push(&[0u8; 512][..padding(e.size)]);
            } else {
                self.flush()?;
            }
            off += len;
        }
        self.toc[reg_index].digest = whole.finish().to_string();
        self.files += 1;
        Ok(())
    }

    /// Adds a landmark file (one byte) in its own frame.
    fn landmark(&mut self, name: &str) -> Result<(), FormatError> {
        self.push(&ustar_file_header(name, 1, 0o444));
        self.flush()?;
        let d = Digest::of(&[LANDMARK_CONTENT]).to_string();
        self.frame_of.push((self.toc.len(), self.seq));
        self.toc.push(TocEntry {
            name: name.to_string(),
            kind: "reg".into(),
            size: 1,
            mode: 0o444,
            digest: d.clone(),
            chunk_digest: d,
            ..Default::default()
        });
        self.push(&[LANDMARK_CONTENT]);
        self.push(&[0u8; 511]);
        self.files += 1;
        self.chunks += 1;
        Ok(())
    }
}

/// Compresses frames from `jobs` until the channel closes.
fn compressor(jobs: Arc<Mutex<Receiver<Job>>>, done: Sender<Done>, c: Compression, level: i32) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((seq, data)) = job else { return };
        if done.send((seq, c.compress(&data, level))).is_err() {
            return;
        }
    }
}

/// Writes compressed frames in order; returns each frame's blob offset.
fn frame_writer<W: Write>(
    out: &mut W,
    hasher: &mut Hasher,
    done: Receiver<Done>,
    tokens: SyncSender<()>,
) -> Result<(Vec<u64>, u64), FormatError> {
    let mut pending: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut offsets = Vec::new();
    let mut pos = 0u64;
    for (seq, data) in done {
        pending.insert(seq, data?);
        while let Some(data) = pending.remove(&(offsets.len() as u64)) {
            offsets.push(pos);
            out.write_all(&data)
                .map_err(|e| FormatError::io("writing layer", e))?;
            hasher.update(&data);
            pos += data.len() as u64;
            let _ = tokens.try_send(());
        }
    }
    Ok((offsets, pos))
}

/// Opens `input` as a tar stream, undoing gzip or zstd compression if present.
fn decompressed<'a, R: Read + 'a>(input: R) -> Result<Box<dyn Read + 'a>, FormatError> {
    let mut br = BufReader::with_capacity(1 << 20, input);
    let head = br
        .fill_buf()
        .map_err(|e| FormatError::io("reading input", e))?;
    Ok(match head {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(br)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(
            zstd::stream::read::Decoder::with_buffer(br)
                .map_err(|e| FormatError::Decompress(format!("zstd input: {e}")))?,
        ),
        _ => Box::new(br),
    })
}

/// Entries a re-conversion drops: the old TOC and landmarks.
fn is_format_artifact(path: &str) -> bool {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    p == TOC_NAME || p == PREFETCH_LANDMARK || p == NO_PREFETCH_LANDMARK
}

/// Copies everything read into a spool file (for prioritized reordering).
struct Tee<R, W> {
    r: R,
    w: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Converts a tar (optionally gzip/zstd compressed) into an eStargz layer written to `output`.
/// `progress` is called with the uncompressed bytes framed so far.
pub fn convert_layer<R: Read, W: Write + Send>(
    input: R,
    output: &mut W,
    opts: &WriterOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ConvertReport, FormatError> {
    if opts.chunk_size == 0 || opts.chunk_size > Limits::default().max_chunk {
        return Err(FormatError::Limit(format!(
            "chunk size {} (must be 1..={})",
            opts.chunk_size,
            Limits::default().max_chunk
        )));
    }
    let threads = opts.threads.clamp(1, 64);
    let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
    let (done_tx, done_rx) = channel::<Done>();
    let token_count = threads * 4 + 4;
    let (tok_tx, tok_rx) = sync_channel::<()>(token_count);
    for _ in 0..token_count {
        let _ = tok_tx.try_send(());
    }
    let mut framer = Framer {
        jobs: job_tx,
        tokens: tok_rx,
        seq: 0,
        cur: Vec::with_capacity(1 << 16),
        diff: Hasher::new(),
        uncompressed: 0,
        chunk_size: opts.chunk_size,
        toc: Vec::new(),
        frame_of: Vec::new(),
        names_seen: HashSet::new(),
        paths: HashSet::new(),
        groups_seen: HashSet::new(),
        files: 0,
        chunks: 0,
    };
    let mut blob_hasher = Hasher::new();
    let mut prioritized_found = 0;

    let (offsets, payload_size) = std::thread::scope(|s| {
        let jobs = Arc::new(Mutex::new(job_rx));
        for _ in 0..threads {
            let (jobs, done) = (jobs.clone(), done_tx.clone());
            let (c, level) = (opts.compression, opts.level);
            s.spawn(move || compressor(jobs, done, c, level));
        }
        drop(done_tx);
        let out = &mut *output;
        let bh = &mut blob_hasher;
        let writer = s.spawn(move || frame_writer(out, bh, done_rx, tok_tx));

        let framed = frame_input(input, &mut framer, opts, progress, &mut prioritized_found)
            .and_then(|()| {
                if opts.compression == Compression::Zstd {
                    framer.push(&[0u8; 1024]);
                }
                framer.flush()
            });
        // Closing the job channel lets compressors and then the writer finish.
        let (dummy_tx, _) = sync_channel(1);
        drop(std::mem::replace(&mut framer.jobs, dummy_tx));
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(FormatError::Tar("writer thread panicked".into())));
        framed?;
        written
    })?;

    // Fill in frame offsets now that the writer knows them.
    for &(entry, seq) in &framer.frame_of {
        let off = offsets
            .get(seq as usize)
            .copied()
            .ok_or_else(|| FormatError::Tar(format!("frame {seq} was never written")))?;
        framer.toc[entry].offset = off as i64;
    }
    let toc = Toc {
        version: 1,
        entries: std::mem::take(&mut framer.toc),
        tar_split_digest: String::new(),
    };
    let json = toc.to_json();
    let toc_digest = Digest::of(&json);
    let mut tail = Vec::new();
    let mut zstd_position = None;
    let mut zstd_checksum = None;
    match opts.compression {
        Compression::Gzip => {
            let mut toc_tar = ustar_file_header(TOC_NAME, json.len() as u64, 0o444).to_vec();
            toc_tar.extend_from_slice(&json);
            toc_tar.extend_from_slice(&vec![0u8; padding(json.len() as u64) + 1024]);
            framer.diff.update(&toc_tar);
            framer.uncompressed += toc_tar.len() as u64;
            tail.extend_from_slice(&Compression::Gzip.compress(&toc_tar, opts.level)?);
            tail.extend_from_slice(&gzip_footer(payload_size));
        }
        Compression::Zstd => {
            let compressed = Compression::Zstd.compress(&json, opts.level)?;
            tail.extend_from_slice(&SKIPPABLE_MAGIC);
            tail.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
            tail.extend_from_slice(&compressed);
            let toc_off = payload_size + 8;
            tail.extend_from_slice(&zstd_footer(
                toc_off,
                compressed.len() as u64,
                json.len() as u64,
            ));
            zstd_position = Some(format!("{toc_off}:{}:{}:1", compressed.len(), json.len()));
            zstd_checksum = Some(Digest::of(&compressed));
        }
    }
    output
        .write_all(&tail)
        .and_then(|()| output.flush())
        .map_err(|e| FormatError::io("writing layer", e))?;
    blob_hasher.update(&tail);
    Ok(ConvertReport {
        blob_digest: blob_hasher.finish(),
        blob_size: payload_size + tail.len() as u64,
        toc_digest,
        diff_id: framer.diff.finish(),
        uncompressed_size: framer.uncompressed,
        compression: opts.compression,
        toc_entries: toc.entries.len(),
        files: framer.files,
        chunks: framer.chunks,
        prioritized: prioritized_found,
        zstd_manifest_position: zstd_position,
        zstd_manifest_checksum: zstd_checksum,
    })
}

/// Feeds all input entries to the framer, in prioritized order when asked.
fn frame_input<R: Read>(
    input: R,
    framer: &mut Framer,
    opts: &WriterOptions,
    progress: &mut dyn FnMut(u64),
    prioritized_found: &mut usize,
) -> Result<(), FormatError> {
    let tar = decompressed(input)?;
    if opts.prioritized.is_empty() {
        framer.landmark(NO_PREFETCH_LANDMARK)?;
        let mut r = TarReader::new(tar);
        while let Some(e) = r.next_entry()? {
            if is_format_artifact(&e.path) {
                continue;
            }
            framer.add(&e, &mut r)?;
            progress(framer.uncompressed);
        }
        return Ok(());
    }

    // Prioritized: spool the tar to a temporary file, then emit in the new order.
    let mut spool = tempfile::tempfile().map_err(|e| FormatError::io("creating spool file", e))?;
    struct Seen {
        start: u64,
        path: String,
        kind: TarKind,
        link: String,
    }
    let mut seen: Vec<Seen> = Vec::new();
    {
        let tee = Tee {
            r: tar,
            w: std::io::BufWriter::new(&mut spool),
        };
        let mut r = TarReader::new(tee);
        while let Some(e) = r.next_entry()? {
            if is_format_artifact(&e.path) {
                continue;
            }
            seen.push(Seen {
                start: r.entry_start(),
                path: super::index::normalize_path(&e.path, &Limits::default())
                    .unwrap_or_else(|_| e.path.clone()),
                kind: e.kind,
                link: e.link_name.clone(),
            });
        }
        // Read the rest (end blocks) so the spool is complete, then flush it.
        let mut inner = r;
        let mut sink = [0u8; 4096];
        while inner.read_data(&mut sink)? > 0 {}
    }
    let by_path: HashMap<&str, usize> = seen
        .iter()
        .enumerate()
        .map(|(i, s)| (s.path.as_str(), i))
        .collect();
    let mut order: Vec<usize> = Vec::with_capacity(seen.len());
    let mut placed = vec![false; seen.len()];
    fn place(
        i: usize,
        seen: &[Seen],
        by_path: &HashMap<&str, usize>,
        placed: &mut [bool],
        order: &mut Vec<usize>,
        depth: usize,
    ) {
        if placed[i] || depth > 64 {
            return;
        }
        // Parents first, then a hardlink's target, then the entry.
        let p = &seen[i].path;
        let mut acc = String::new();
        for comp in p.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(comp);
            if let Some(&j) = by_path.get(acc.as_str()) {
                place(j, seen, by_path, placed, order, depth + 1);
            }
        }
        if seen[i].kind == TarKind::Hardlink {
            let target =
                super::index::normalize_path(&seen[i].link, &Limits::default()).unwrap_or_default();
            if let Some(&j) = by_path.get(target.as_str()) {
                place(j, seen, by_path, placed, order, depth + 1);
            }
        }
        if !placed[i] {
            placed[i] = true;
            order.push(i);
        }
    }
    for want in &opts.prioritized {
        let norm = super::index::normalize_path(want, &Limits::default());
        match norm
            .ok()
            .filter(|n| !n.is_empty())
            .and_then(|n| by_path.get(n.as_str()))
        {
            Some(&i) => {
                if !placed[i] {
                    *prioritized_found += 1;
                }
                place(i, &seen, &by_path, &mut placed, &mut order, 0);
            }
            None => tracing::warn!(path = %want, "prioritized file is not in the layer"),
        }
    }
    let split = order.len();
    order.extend((0..seen.len()).filter(|&i| !placed[i]));
    for (k, &i) in order.iter().enumerate() {
        if k == split {
            framer.landmark(PREFETCH_LANDMARK)?;
        }
        spool
            .seek(SeekFrom::Start(seen[i].start))
            .map_err(|e| FormatError::io("reading spool", e))?;
        let mut r = TarReader::new(BufReader::new(&mut spool));
        let e = r
            .next_entry()?
            .ok_or_else(|| FormatError::Tar("spooled entry vanished".into()))?;
        framer.add(&e, &mut r)?;
        progress(framer.uncompressed);
    }
    if split == order.len() {
        framer.landmark(PREFETCH_LANDMARK)?;
    }
    Ok(())
}
