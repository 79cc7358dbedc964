//! A streaming tar reader that keeps every header byte it reads, and a minimal header writer.
//!
//! The converter must emit "exactly the input's entries", so it copies each entry's raw header
//! blocks (ustar header plus any PAX or GNU long-name records before it) instead of
//! re-serialising them; this reader therefore hands out both the raw bytes and the parsed
//! meaning (path, link, owner, mode, times, devices, `SCHILY.xattr.*`). All sizes are bounded.

use super::FormatError;
use std::collections::BTreeMap;
use std::io::Read;

const BLOCK: usize = 512;
const MAX_EXTENSION: u64 = 1 << 20;

/// Type of a tar entry after extension headers are folded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarKind {
    /// Regular file (`0`, NUL or `7`).
    Reg,
    /// Hard link (`1`).
    Hardlink,
    /// Symbolic link (`2`).
    Symlink,
    /// Character device (`3`).
    Char,
    /// Block device (`4`).
    Block,
    /// Directory (`5`).
    Dir,
    /// FIFO (`6`).
    Fifo,
}

impl TarKind {
    /// The TOC spelling of this type.
    pub fn toc_kind(self) -> &'static str {
        match self {
            TarKind::Reg => "reg",
            TarKind::Hardlink => "hardlink",
            TarKind::Symlink => "symlink",
            TarKind::Char => "char",
            TarKind::Block => "block",
            TarKind::Dir => "dir",
            TarKind::Fifo => "fifo",
        }
    }
}

/// One logical tar entry.
#[derive(Debug, Clone)]
pub struct TarEntry {
    /// Every byte of this entry before its payload, as read.
    pub raw_header: Vec<u8>,
    /// Full path (PAX/GNU long names applied), as stored.
    pub path: String,
    /// Link target for links.
    pub link_name: String,
    /// Entry type.
    pub kind: TarKind,
    /// Mode bits from the header.
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Owner user name.
    pub uname: String,
    /// Owner group name.
    pub gname: String,
    /// Modification time (Unix seconds).
    pub mtime: i64,
    /// Payload size.
    pub size: u64,
    /// Device major.
    pub dev_major: u32,
    /// Device minor.
    pub dev_minor: u32,
    /// Extended attributes from `SCHILY.xattr.*` PAX records.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Reads tar entries one after another from a stream.
pub struct TarReader<R> {
    r: R,
    pos: u64,
    entry_start: u64,
    data_left: u64,
    pad_left: u64,
    done: bool,
}

fn tar_err(msg: impl Into<String>) -> FormatError {
    FormatError::Tar(msg.into())
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn cbytes(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Parses a numeric header field: octal text or GNU base-256.
fn parse_num(field: &[u8], what: &str) -> Result<u64, FormatError> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            if first == 0xff {
                return Err(tar_err(format!("negative {what}")));
            }
            let mut v: u64 = u64::from(first & 0x7f);
            for &b in &field[1..] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(b)))
                    .ok_or_else(|| tar_err(format!("{what} overflows")))?;
            }
            return Ok(v);
        }
    }
    let text = cbytes(field);
    let trimmed: Vec<u8> = text
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != b' ')
        .collect();
    if trimmed.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&trimmed).map_err(|_| tar_err(format!("bad {what}")))?;
    u64::from_str_radix(s, 8).map_err(|_| tar_err(format!("bad octal {what} {s:?}")))
}

fn checksum_ok(h: &[u8]) -> bool {
    let Ok(stored) = parse_num(&h[148..156], "checksum") else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || stored as i64 == signed
}

#[derive(Default)]
struct Pending {
    path: Option<String>,
    link: Option<String>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    uname: Option<String>,
    gname: Option<String>,
    mtime: Option<i64>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn parse_pax(data: &[u8], p: &mut Pending) -> Result<(), FormatError> {
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| tar_err("PAX record without length"))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| tar_err("bad PAX record length"))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(tar_err("PAX record length out of range"));
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| tar_err("PAX record without '='"))?;
        let key = String::from_utf8_lossy(&rec[..eq]).into_owned();
        let val = &rec[eq + 1..];
        let text = || String::from_utf8_lossy(val).into_owned();
        let num = |what: &str| -> Result<u64, FormatError> {
            text()
                .parse()
                .map_err(|_| tar_err(format!("bad PAX {what}")))
        };
        match key.as_str() {
            "path" => p.path = Some(text()),
            "linkpath" => p.link = Some(text()),
            "size" => p.size = Some(num("size")?),
            "uid" => p.uid = Some(num("uid")?),
            "gid" => p.gid = Some(num("gid")?),
            "uname" => p.uname = Some(text()),
            "gname" => p.gname = Some(text()),
            "mtime" => {
                let t = text();
                let secs = t.split('.').next().unwrap_or("0");
                p.mtime = Some(secs.parse().map_err(|_| tar_err("bad PAX mtime"))?);
            }
            k if k.starts_with("GNU.sparse.") => {
                return Err(tar_err("sparse files are not supported"))
            }
            k => {
                if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                    p.xattrs.insert(name.to_string(), val.to_vec());
                }
            }
        }
        rest = &rest[len..];
    }
    Ok(())
}

impl<R: Read> TarReader<R> {
    /// Reads a tar stream.
    pub fn new(r: R) -> Self {
        TarReader {
            r,
            pos: 0,
            entry_start: 0,
            data_left: 0,
            pad_left: 0,
            done: false,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, FormatError> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    self.pos += k as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FormatError::io("reading tar", e)),
            }
        }
        Ok(n)
    }

    fn skip(&mut self, n: u64) -> Result<(), FormatError> {
        let got = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| FormatError::io("reading tar", e))?;
        self.pos += got;
        if got != n {
            return Err(FormatError::Truncated("tar entry data ends early".into()));
        }
        Ok(())
    }

    fn read_extension(&mut self, size: u64, raw: &mut Vec<u8>) -> Result<Vec<u8>, FormatError> {
        if size > MAX_EXTENSION {
            return Err(FormatError::Limit(format!(
                "tar extension header of {size} bytes"
            )));
        }
        let padded = size.div_ceil(BLOCK as u64) as usize * BLOCK;
        let mut data = vec![0u8; padded];
        if self.fill(&mut data)? != padded {
            return Err(FormatError::Truncated(
                "tar extension header ends early".into(),
            ));
        }
        raw.extend_from_slice(&data);
        data.truncate(size as usize);
        Ok(data)
    }

    /// The next entry, or `None` at the end of the archive. Unread payload of the previous
    /// entry is skipped.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, FormatError> {
        if self.done {
            return Ok(None);
        }
        let left = self.data_left + self.pad_left;
        self.data_left = 0;
        self.pad_left = 0;
        self.skip(left)?;
        self.entry_start = self.pos;
        let mut raw = Vec::with_capacity(BLOCK);
        let mut pending = Pending::default();
        loop {
            let mut h = [0u8; BLOCK];
            let n = self.fill(&mut h)?;
            if n == 0 && raw.is_empty() {
                self.done = true;
                return Ok(None);
            }
            if n != BLOCK {
                return Err(FormatError::Truncated("tar header ends early".into()));
            }
            if h.iter().all(|&b| b == 0) {
                if !raw.is_empty() {
                    return Err(tar_err("extension header without an entry"));
                }
                self.done = true;
                return Ok(None);
            }
            if !checksum_ok(&h) {
                return Err(tar_err("header checksum mismatch (not a tar, or corrupt)"));
            }
            raw.extend_from_slice(&h);
            let size = parse_num(&h[124..136], "size")?;
            match h[156] {
                b'x' => {
                    let d = self.read_extension(size, &mut raw)?;
                    parse_pax(&d, &mut pending)?;
                }
                b'g' => {
                    // Global PAX records are carried through verbatim; their defaults are rare
                    // in image layers and are not applied.
                    self.read_extension(size, &mut raw)?;
                }
                b'L' => {
                    let d = self.read_extension(size, &mut raw)?;
                    pending.path = Some(cstr(&d));
                }
                b'K' => {
                    let d = self.read_extension(size, &mut raw)?;
                    pending.link = Some(cstr(&d));
                }
                flag => return self.finish_entry(&h, flag, raw, pending, size).map(Some),
            }
        }
    }

    fn finish_entry(
        &mut self,
        h: &[u8; BLOCK],
        flag: u8,
        raw: Vec<u8>,
        p: Pending,
        header_size: u64,
    ) -> Result<TarEntry, FormatError> {
        let kind = match flag {
            b'0' | 0 | b'7' => TarKind::Reg,
            b'1' => TarKind::Hardlink,
            b'2' => TarKind::Symlink,
            b'3' => TarKind::Char,
            b'4' => TarKind::Block,
            b'5' => TarKind::Dir,
            b'6' => TarKind::Fifo,
            b'S' => return Err(tar_err("GNU sparse files are not supported")),
            other => {
                return Err(tar_err(format!(
                    "unsupported entry type {:?}",
                    char::from(other)
                )))
            }
        };
        let ustar = &h[257..263] == b"ustar\0";
        let mut path = cstr(&h[0..100]);
        if ustar {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                path = format!("{prefix}/{path}");
            }
        }
        let size = p.size.unwrap_or(header_size);
        // Like Go's archive/tar, only regular files carry a payload; the size field of
        // header-only types (links, devices, dirs, fifos) is ignored.
        let data = if kind == TarKind::Reg { size } else { 0 };
        self.data_left = data;
        self.pad_left = padding(data) as u64;
        let mtime_field = parse_num(&h[136..148], "mtime")?;
        Ok(TarEntry {
            raw_header: raw,
            path: p.path.unwrap_or(path),
            link_name: p.link.unwrap_or_else(|| cstr(&h[157..257])),
            kind,
            mode: (parse_num(&h[100..108], "mode")? & 0o7777) as u32,
            uid: p.uid.map_or_else(|| parse_num(&h[108..116], "uid"), Ok)?,
            gid: p.gid.map_or_else(|| parse_num(&h[116..124], "gid"), Ok)?,
            uname: p.uname.unwrap_or_else(|| cstr(&h[265..297])),
            gname: p.gname.unwrap_or_else(|| cstr(&h[297..329])),
            mtime: p.mtime.unwrap_or(mtime_field as i64),
            size: if kind == TarKind::Reg { size } else { 0 },
            dev_major: parse_num(&h[329..337], "devmajor")?.min(u32::MAX as u64) as u32,
            dev_minor: parse_num(&h[337..345], "devminor")?.min(u32::MAX as u64) as u32,
            xattrs: p.xattrs,
        })
    }

    /// The underlying stream, positioned after what was read (unread payload not skipped).
    pub fn into_inner(self) -> R {
        self.r
    }

    /// Stream offset of the first header byte of the entry last returned.
    pub fn entry_start(&self) -> u64 {
        self.entry_start
    }

    /// Reads payload of the current entry; returns 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, FormatError> {
        let want = (buf.len() as u64).min(self.data_left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.fill(&mut buf[..want])?;
        if n == 0 {
            return Err(FormatError::Truncated("tar entry data ends early".into()));
        }
        self.data_left -= n as u64;
        Ok(n)
    }

    /// Reads exactly `buf.len()` payload bytes.
    pub fn read_data_exact(&mut self, buf: &mut [u8]) -> Result<(), FormatError> {
        let mut n = 0;
        while n < buf.len() {
            let k = self.read_data(&mut buf[n..])?;
            if k == 0 {
                return Err(FormatError::Truncated("tar entry data ends early".into()));
            }
            n += k;
        }
        Ok(())
    }
}

/// Padding that follows `size` payload bytes.
pub fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// A ustar header for a plain file written by us (TOC, landmarks): short name, given mode.
pub fn ustar_file_header(name: &str, size: u64, mode: u32) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let nb = name.as_bytes();
    h[..nb.len().min(100)].copy_from_slice(&nb[..nb.len().min(100)]);
    let mut put = |range: std::ops::Range<usize>, v: u64| {
        let width = range.len() - 1;
        let s = format!("{v:0width$o}");
        h[range.start..range.start + width].copy_from_slice(&s.as_bytes()[s.len() - width..]);
    };
    put(100..108, u64::from(mode));
    put(108..116, 0);
    put(116..124, 0);
    put(124..136, size);
    put(136..148, 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_own_header() {
        let mut t = ustar_file_header("stargz.index.json", 3, 0o444).to_vec();
        t.extend_from_slice(b"abc");
        t.resize(1024 + 2 * BLOCK, 0);
        let mut r = TarReader::new(&t[..]);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(
            (e.path.as_str(), e.size, e.mode),
            ("stargz.index.json", 3, 0o444)
        );
        let mut b = [0u8; 3];
        r.read_data_exact(&mut b).unwrap();
        assert_eq!(&b, b"abc");
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn garbage_is_an_error() {
        let g = [7u8; 1024];
        assert!(TarReader::new(&g[..]).next_entry().is_err());
        let short = [7u8; 100];
        assert!(TarReader::new(&short[..]).next_entry().is_err());
    }

    #[test]
    fn pax_records_apply() {
        let mut p = Pending::default();
        parse_pax(
            b"20 path=a/long/name\n28 SCHILY.xattr.user.k=vvvv\n",
            &mut p,
        )
        .unwrap();
        assert_eq!(p.path.as_deref(), Some("a/long/name"));
        assert_eq!(p.xattrs["user.k"], b"vvvv");
        assert!(parse_pax(b"99 path=x\n", &mut Pending::default()).is_err());
    }
}

/// What to write for one entry with [`TarBuilder`].
#[derive(Debug, Clone)]
pub struct HeaderSpec {
    /// Path inside the archive.
    pub path: String,
    /// Entry type.
    pub kind: TarKind,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Modification time (Unix seconds).
    pub mtime: i64,
    /// Link target.
    pub link_name: String,
    /// Device numbers.
    pub dev: (u32, u32),
    /// Extended attributes (written as `SCHILY.xattr.*` PAX records).
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl HeaderSpec {
    /// A spec with defaults (root-owned, mode 0644 / 0755 for dirs, mtime 0).
    pub fn new(path: &str, kind: TarKind) -> Self {
        HeaderSpec {
            path: path.to_string(),
            kind,
            mode: if kind == TarKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 0,
            link_name: String::new(),
            dev: (0, 0),
            xattrs: BTreeMap::new(),
        }
    }
}

fn pax_record(out: &mut Vec<u8>, key: &str, val: &[u8]) {
    let body = key.len() + val.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(val);
    out.push(b'\n');
}

fn ustar_block(name: &[u8], flag: u8, spec: &HeaderSpec, size: u64, link: &[u8]) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    let mut put = |range: std::ops::Range<usize>, v: u64| {
        let width = range.len() - 1;
        let s = format!("{v:0width$o}");
        let b = s.as_bytes();
        let b = &b[b.len().saturating_sub(width)..];
        h[range.start..range.start + b.len()].copy_from_slice(b);
    };
    put(100..108, u64::from(spec.mode & 0o7777));
    put(108..116, spec.uid.min(0o7777777));
    put(116..124, spec.gid.min(0o7777777));
    put(124..136, size);
    put(136..148, spec.mtime.max(0) as u64);
    put(329..337, u64::from(spec.dev.0));
    put(337..345, u64::from(spec.dev.1));
    h[156] = flag;
    h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Header bytes for one entry: a PAX record block when a name is long, an id is large or
/// xattrs are present, then the ustar header.
pub fn header_bytes(spec: &HeaderSpec, size: u64) -> Vec<u8> {
    let flag = match spec.kind {
        TarKind::Reg => b'0',
        TarKind::Hardlink => b'1',
        TarKind::Symlink => b'2',
        TarKind::Char => b'3',
        TarKind::Block => b'4',
        TarKind::Dir => b'5',
        TarKind::Fifo => b'6',
    };
    let mut pax = Vec::new();
    let path = spec.path.as_bytes();
    if path.len() > 100 || !spec.path.is_ascii() {
        pax_record(&mut pax, "path", path);
    }
    if spec.link_name.len() > 100 || !spec.link_name.is_ascii() {
        pax_record(&mut pax, "linkpath", spec.link_name.as_bytes());
    }
    if spec.uid > 0o7777777 {
        pax_record(&mut pax, "uid", spec.uid.to_string().as_bytes());
    }
    if spec.gid > 0o7777777 {
        pax_record(&mut pax, "gid", spec.gid.to_string().as_bytes());
    }
    for (k, v) in &spec.xattrs {
        pax_record(&mut pax, &format!("SCHILY.xattr.{k}"), v);
    }
    let mut out = Vec::new();
    if !pax.is_empty() {
        let name = format!(
            "PaxHeaders/{}",
            spec.path.chars().take(60).collect::<String>()
        );
        let pspec = HeaderSpec::new(&name, TarKind::Reg);
        out.extend_from_slice(&ustar_block(
            name.as_bytes(),
            b'x',
            &pspec,
            pax.len() as u64,
            b"",
        ));
        let plen = pax.len() as u64;
        out.extend_from_slice(&pax);
        out.resize(out.len() + padding(plen), 0);
    }
    out.extend_from_slice(&ustar_block(
        path,
        flag,
        spec,
        size,
        spec.link_name.as_bytes(),
    ));
    out
}

/// Writes a tar stream entry by entry.
pub struct TarBuilder<W: std::io::Write> {
    w: W,
}

impl<W: std::io::Write> TarBuilder<W> {
    /// Starts a tar stream on `w`.
    pub fn new(w: W) -> Self {
        TarBuilder { w }
    }

    /// Appends one entry; `data` is the payload of a regular file (empty otherwise).
    pub fn append(&mut self, spec: &HeaderSpec, data: &[u8]) -> std::io::Result<()> {
        let size = if spec.kind == TarKind::Reg {
            data.len() as u64
        } else {
            0
        };
        self.w.write_all(&header_bytes(spec, size))?;
        if size > 0 {
            self.w.write_all(data)?;
            self.w.write_all(&[0u8; BLOCK][..padding(size)])?;
        }
        Ok(())
    }

    /// Appends a regular file of `size` bytes read from `data`; fails if `data` holds
    /// fewer bytes (a file that shrank while being archived).
    pub fn append_reader(
        &mut self,
        spec: &HeaderSpec,
        size: u64,
        data: &mut dyn std::io::Read,
    ) -> std::io::Result<()> {
        self.w.write_all(&header_bytes(spec, size))?;
        let copied = std::io::copy(&mut data.take(size), &mut self.w)?;
        if copied != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{}: {copied} of {size} bytes", spec.path),
            ));
        }
        self.w.write_all(&[0u8; BLOCK][..padding(size)])?;
        Ok(())
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.w.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.w)
    }
}
