//! Just enough ELF to know what the dynamic loader will read next: the interpreter
//! (`PT_INTERP`), the `DT_NEEDED` libraries and the `DT_RUNPATH`/`DT_RPATH` directories of a
//! 64-bit little-endian executable or library, and the file ranges the loader maps and
//! touches at once ([`loader_ranges`]). The layer prefetches the libraries as soon as a
//! binary's first chunk arrives, so a program's start costs one round trip for its libraries
//! instead of one per library, and fetches a large file's loader ranges instead of all of it.
//! Input is untrusted: every offset is bounds-checked and counts are capped; malformed files
//! yield nothing.

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const MAX_PHDRS: usize = 256;
const MAX_DYN: usize = 4096;
const MAX_NAME: usize = 256;
/// Longest `DT_RUNPATH`/`DT_RPATH` string read, and directories kept from it.
const MAX_RUNPATH: usize = 1024;
const MAX_RUNPATH_DIRS: usize = 16;

/// Pieces of a file at hand, each at its file offset (e.g. the first chunk and the chunk
/// holding the dynamic section of a large binary).
#[derive(Clone, Copy)]
pub struct Pieces<'a>(pub &'a [(u64, &'a [u8])]);

impl<'a> Pieces<'a> {
    /// `len` bytes at file offset `at`, if one piece holds them all.
    fn get(&self, at: usize, len: usize) -> Option<&'a [u8]> {
        let end = at.checked_add(len)?;
        self.0.iter().find_map(|&(off, d)| {
            let off = usize::try_from(off).ok()?;
            (at >= off && end <= off.checked_add(d.len())?).then(|| &d[at - off..end - off])
        })
    }

    /// The bytes from `at` to the end of the piece holding `at`.
    fn tail(&self, at: usize) -> Option<&'a [u8]> {
        self.0.iter().find_map(|&(off, d)| {
            let off = usize::try_from(off).ok()?;
            (at >= off && at < off.checked_add(d.len())?).then(|| &d[at - off..])
        })
    }

    fn u16_at(&self, o: usize) -> Option<u16> {
        Some(u16::from_le_bytes(self.get(o, 2)?.try_into().ok()?))
    }

    fn u32_at(&self, o: usize) -> Option<u32> {
        Some(u32::from_le_bytes(self.get(o, 4)?.try_into().ok()?))
    }

    fn u64_at(&self, o: usize) -> Option<u64> {
        Some(u64::from_le_bytes(self.get(o, 8)?.try_into().ok()?))
    }

    fn c_string(&self, o: usize) -> Option<String> {
        self.c_string_max(o, MAX_NAME)
    }

    fn c_string_max(&self, o: usize, max: usize) -> Option<String> {
        let rest = self.tail(o)?;
        let end = rest.iter().take(max).position(|&b| b == 0)?;
        let s = std::str::from_utf8(&rest[..end]).ok()?;
        (!s.is_empty()).then(|| s.to_string())
    }
}

/// What the loader needs for this file: interpreter path and needed library names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dependencies {
    /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interp: Option<String>,
    /// `DT_NEEDED` names, e.g. `libc.so.6`.
    pub needed: Vec<String>,
    /// Directories of `DT_RUNPATH` (or `DT_RPATH` when there is none), as written
    /// (`$ORIGIN` unexpanded).
    pub runpath: Vec<String>,
    /// File range of the dynamic section when it was not among the pieces (large binaries
    /// keep it past the first chunk): fetch it and parse again for the needed libraries.
    pub dynamic_missing: Option<(u64, u64)>,
}

/// Parses the start of a file (as much as is at hand); `None` if it is not a 64-bit LE ELF.
pub fn dependencies(d: &[u8]) -> Option<Dependencies> {
    dependencies_in(Pieces(&[(0, d)]))
}

/// Like [`dependencies`], over pieces of the file.
pub fn dependencies_in(d: Pieces<'_>) -> Option<Dependencies> {
    if d.get(0, 4)? != b"\x7fELF" || d.get(4, 2)? != [2, 1] {
        return None;
    }
    let phoff = usize::try_from(d.u64_at(0x20)?).ok()?;
    let phentsize = d.u16_at(0x36)? as usize;
    let phnum = (d.u16_at(0x38)? as usize).min(MAX_PHDRS);
    if phentsize < 56 {
        return None;
    }
    let mut loads = Vec::new();
    let mut dynamic = None;
    let mut out = Dependencies::default();
    for i in 0..phnum {
        let p = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let (ty, off, vaddr, filesz) = (
            d.u32_at(p)?,
            d.u64_at(p + 8)?,
            d.u64_at(p + 16)?,
            d.u64_at(p + 32)?,
        );
        match ty {
            PT_LOAD => loads.push((vaddr, off, filesz)),
            PT_DYNAMIC => dynamic = Some((off, filesz)),
            PT_INTERP => out.interp = usize::try_from(off).ok().and_then(|o| d.c_string(o)),
            _ => {}
        }
    }
    let to_offset = |addr: u64| -> Option<usize> {
        loads
            .iter()
            .find(|(va, _, sz)| addr >= *va && addr - *va < *sz)
            .and_then(|(va, off, _)| usize::try_from(addr - va + off).ok())
    };
    if let Some((off, size)) = dynamic {
        let at = usize::try_from(off).ok()?;
        let n = (usize::try_from(size).ok()? / 16).min(MAX_DYN);
        if n > 0 && d.get(at, 16).is_none() {
            out.dynamic_missing = Some((off, (n * 16) as u64));
            return Some(out);
        }
        let mut needed = Vec::new();
        let mut strtab = None;
        let (mut runpath, mut rpath) = (None, None);
        for i in 0..n {
            let e = at.checked_add(i * 16)?;
            let (Some(tag), Some(val)) = (d.u64_at(e), d.u64_at(e + 8)) else {
                break;
            };
            match tag {
                0 => break,
                DT_NEEDED => needed.push(val),
                DT_STRTAB => strtab = to_offset(val),
                DT_RUNPATH => runpath = Some(val),
                DT_RPATH => rpath = Some(val),
                _ => {}
            }
        }
        if let Some(st) = strtab {
            out.needed = needed
                .into_iter()
                .filter_map(|v| d.c_string(st.checked_add(usize::try_from(v).ok()?)?))
                .filter(|n| !n.contains('/'))
                .collect();
            if let Some(v) = runpath.or(rpath) {
                let path = usize::try_from(v)
                    .ok()
                    .and_then(|v| st.checked_add(v))
                    .and_then(|o| d.c_string_max(o, MAX_RUNPATH));
                out.runpath = path
                    .iter()
                    .flat_map(|p| p.split(':'))
                    .filter(|p| !p.is_empty())
                    .take(MAX_RUNPATH_DIRS)
                    .map(str::to_string)
                    .collect();
            }
        }
    }
    Some(out)
}

/// The file ranges (offset, length) of a 64-bit LE ELF that the dynamic loader maps and
/// touches at once, from the program headers in `head`: the loadable segments that are
/// neither executable nor after the first executable one (the ELF and program headers, the
/// symbol, string, hash, version and relocation tables), every writable loadable segment
/// (the loader relocates it) and the dynamic section. Code and the read-only data after it
/// are left out: they are touched page by page as the program runs. `None` if `head` is not
/// such an ELF or its program headers are not all in it.
pub fn loader_ranges(head: &[u8]) -> Option<Vec<(u64, u64)>> {
    let d = Pieces(&[(0, head)]);
    if d.get(0, 4)? != b"\x7fELF" || d.get(4, 2)? != [2, 1] {
        return None;
    }
    let phoff = usize::try_from(d.u64_at(0x20)?).ok()?;
    let phentsize = d.u16_at(0x36)? as usize;
    let phnum = (d.u16_at(0x38)? as usize).min(MAX_PHDRS);
    if phentsize < 56 {
        return None;
    }
    let mut out = Vec::new();
    let mut code_seen = false;
    for i in 0..phnum {
        let p = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let (ty, flags, off, filesz) = (
            d.u32_at(p)?,
            d.u32_at(p + 4)?,
            d.u64_at(p + 8)?,
            d.u64_at(p + 32)?,
        );
        match ty {
            PT_LOAD if flags & PF_X != 0 => code_seen = true,
            PT_LOAD if flags & PF_W != 0 || !code_seen => out.push((off, filesz)),
            PT_DYNAMIC => out.push((off, filesz)),
            _ => {}
        }
    }
    Some(out)
}

/// Whether `head` starts like an ELF file.
pub fn is_elf(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binary() {
        let Ok(data) = std::fs::read("/bin/ls") else {
            return;
        };
        let deps = dependencies(&data).expect("ls is ELF");
        assert!(deps.interp.as_ref().is_some_and(|i| i.contains("ld-linux")));
        assert!(
            deps.needed.iter().any(|n| n.starts_with("libc.so")),
            "{deps:?}"
        );
    }

    #[test]
    fn dynamic_section_past_the_first_piece_is_asked_for_then_read() {
        let Ok(data) = std::fs::read("/bin/ls") else {
            return;
        };
        let whole = dependencies(&data).expect("ls is ELF");
        let (off, len) = {
            // Cut the file just before its dynamic section.
            let mut cut = data.len();
            while cut > 64 {
                cut /= 2;
                if dependencies(&data[..cut])
                    .expect("head is ELF")
                    .dynamic_missing
                    .is_some()
                {
                    break;
                }
            }
            let head = dependencies(&data[..cut]).unwrap();
            assert!(head.needed.is_empty());
            head.dynamic_missing.expect("a cut before .dynamic")
        };
        let (o, l) = (off as usize, len as usize);
        let end = (o + l).min(data.len());
        // Everything before the dynamic section (the string table sits there in ls) and
        // the section itself, as two pieces: the same libraries as the whole file.
        let pieces = [(0u64, &data[..o]), (off, &data[o..end])];
        let two = dependencies_in(Pieces(&pieces)).unwrap();
        assert_eq!(two.needed, whole.needed);
        assert!(two.dynamic_missing.is_none());
    }

    #[test]
    fn loader_ranges_of_a_host_binary_leave_the_code_out() {
        let Ok(data) = std::fs::read("/bin/ls") else {
            return;
        };
        let ranges = loader_ranges(&data).expect("ls is ELF");
        assert!(!ranges.is_empty());
        // The headers are in the first range; the ranges together are less than the file.
        assert_eq!(ranges[0].0, 0);
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        assert!(total < data.len() as u64, "{ranges:?}");
        // Program headers cut off: nothing.
        assert_eq!(loader_ranges(&data[..80]), None);
    }

    #[test]
    fn hostile_input_yields_nothing_or_little() {
        assert_eq!(loader_ranges(b"not elf"), None);
        assert_eq!(dependencies(b"not elf"), None);
        let mut d = vec![0u8; 64];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        d[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        d[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(dependencies(&d), None);
        assert_eq!(loader_ranges(&d), None);
        if let Ok(data) = std::fs::read("/bin/ls") {
            for cut in [10, 100, 1000, 5000, data.len() / 2] {
                let _ = dependencies(&data[..cut.min(data.len())]);
                let _ = loader_ranges(&data[..cut.min(data.len())]);
            }
            let mut bad = data.clone();
            for i in (0..bad.len().min(4096)).step_by(7) {
                bad[i] ^= 0x5a;
            }
            let _ = dependencies(&bad);
            let _ = loader_ranges(&bad);
        }
    }
}
