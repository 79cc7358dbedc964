//! Just enough ELF to know what the dynamic loader will read next: the interpreter
//! (`PT_INTERP`) and the `DT_NEEDED` libraries of a 64-bit little-endian executable or library.
//! The layer prefetches them as soon as a binary's first chunk arrives, so a program's start
//! costs one round trip for its libraries instead of one per library. Input is untrusted:
//! every offset is bounds-checked and counts are capped; malformed files yield nothing.

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const MAX_PHDRS: usize = 256;
const MAX_DYN: usize = 4096;
const MAX_NAME: usize = 256;

fn u16_at(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(d: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn c_string(d: &[u8], o: usize) -> Option<String> {
    let rest = d.get(o..)?;
    let end = rest.iter().take(MAX_NAME).position(|&b| b == 0)?;
    let s = std::str::from_utf8(&rest[..end]).ok()?;
    (!s.is_empty()).then(|| s.to_string())
}

/// What the loader needs for this file: interpreter path and needed library names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dependencies {
    /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interp: Option<String>,
    /// `DT_NEEDED` names, e.g. `libc.so.6`.
    pub needed: Vec<String>,
}

/// Parses the start of a file (as much as is at hand); `None` if it is not a 64-bit LE ELF.
pub fn dependencies(d: &[u8]) -> Option<Dependencies> {
    if d.get(..4)? != b"\x7fELF" || *d.get(4)? != 2 || *d.get(5)? != 1 {
        return None;
    }
    let phoff = usize::try_from(u64_at(d, 0x20)?).ok()?;
    let phentsize = u16_at(d, 0x36)? as usize;
    let phnum = (u16_at(d, 0x38)? as usize).min(MAX_PHDRS);
    if phentsize < 56 {
        return None;
    }
    let mut loads = Vec::new();
    let mut dynamic = None;
    let mut out = Dependencies::default();
    for i in 0..phnum {
        let p = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let (ty, off, vaddr, filesz) = (
            u32_at(d, p)?,
            u64_at(d, p + 8)?,
            u64_at(d, p + 16)?,
            u64_at(d, p + 32)?,
        );
        match ty {
            PT_LOAD => loads.push((vaddr, off, filesz)),
            PT_DYNAMIC => dynamic = Some((off, filesz)),
            PT_INTERP => out.interp = usize::try_from(off).ok().and_then(|o| c_string(d, o)),
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
        let off = usize::try_from(off).ok()?;
        let n = (usize::try_from(size).ok()? / 16).min(MAX_DYN);
        let mut needed = Vec::new();
        let mut strtab = None;
        for i in 0..n {
            let e = off.checked_add(i * 16)?;
            let (Some(tag), Some(val)) = (u64_at(d, e), u64_at(d, e + 8)) else {
                break;
            };
            match tag {
                0 => break,
                DT_NEEDED => needed.push(val),
                DT_STRTAB => strtab = to_offset(val),
                _ => {}
            }
        }
        if let Some(st) = strtab {
            out.needed = needed
                .into_iter()
                .filter_map(|v| c_string(d, st.checked_add(usize::try_from(v).ok()?)?))
                .filter(|n| !n.contains('/'))
                .collect();
        }
    }
    Some(out)
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
    fn hostile_input_yields_nothing_or_little() {
        assert_eq!(dependencies(b"not elf"), None);
        let mut d = vec![0u8; 64];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        d[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        d[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(dependencies(&d), None);
        if let Ok(data) = std::fs::read("/bin/ls") {
            for cut in [10, 100, 1000, 5000, data.len() / 2] {
                let _ = dependencies(&data[..cut.min(data.len())]);
            }
            let mut bad = data.clone();
            for i in (0..bad.len().min(4096)).step_by(7) {
                bad[i] ^= 0x5a;
            }
            let _ = dependencies(&bad);
        }
    }
}
