//! Where the dynamic loader finds a library by name: the entries of `/etc/ld.so.cache`
//! (glibc's "new" format, `glibc-ld.so.cache1.1`, which ldconfig writes by default since
//! glibc 2.32). Read from the layer's own copy, so the places looked in come from the image,
//! not from a list of directories. Input is untrusted: offsets are bounds-checked, entries
//! and names are capped; anything malformed yields no match.

const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const HEADER: usize = 48;
const ENTRY: usize = 24;
/// Entries looked at at most.
const MAX_ENTRIES: usize = 1 << 16;
/// Longest name or path read.
const MAX_STR: usize = 4096;

/// The paths the cache `data` gives for library `name`, in the cache's order (one per
/// architecture or hardware capability it lists).
pub fn lookup<'a>(data: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let n = if data.starts_with(MAGIC) && data.len() >= HEADER {
        u32::from_le_bytes([data[20], data[21], data[22], data[23]]) as usize
    } else {
        0
    };
    (0..n.min(MAX_ENTRIES))
        .map_while(move |i| {
            // Entries past the end of the data end the list.
            let e = HEADER.checked_add(i.checked_mul(ENTRY)?)?;
            let entry = data.get(e..e.checked_add(ENTRY)?)?;
            let field =
                |o: usize| u32::from_le_bytes([entry[o], entry[o + 1], entry[o + 2], entry[o + 3]]);
            Some((field(4) as usize, field(8) as usize))
        })
        .filter_map(move |(key, value)| {
            (c_str(data, key)? == name)
                .then(|| c_str(data, value))
                .flatten()
        })
}

/// The NUL-terminated UTF-8 string at `at`, at most [`MAX_STR`] bytes.
fn c_str(data: &[u8], at: usize) -> Option<&str> {
    let rest = data.get(at..)?;
    let end = rest.iter().take(MAX_STR).position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache with `entries` (name, path).
    fn cache(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut d = MAGIC.to_vec();
        d.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        d.resize(HEADER, 0);
        let strings_at = HEADER + entries.len() * ENTRY;
        let mut strings = Vec::new();
        for (k, v) in entries {
            let ko = strings_at + strings.len();
            strings.extend_from_slice(k.as_bytes());
            strings.push(0);
            let vo = strings_at + strings.len();
            strings.extend_from_slice(v.as_bytes());
            strings.push(0);
            d.extend_from_slice(&3i32.to_le_bytes());
            d.extend_from_slice(&(ko as u32).to_le_bytes());
            d.extend_from_slice(&(vo as u32).to_le_bytes());
            d.extend_from_slice(&[0; 12]);
        }
        d.extend_from_slice(&strings);
        d
    }

    #[test]
    fn finds_every_path_of_a_name() {
        let d = cache(&[
            ("libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1"),
            ("libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6"),
            ("libz.so.1", "/usr/lib32/libz.so.1"),
        ]);
        let got: Vec<&str> = lookup(&d, "libz.so.1").collect();
        assert_eq!(
            got,
            [
                "/usr/lib/x86_64-linux-gnu/libz.so.1",
                "/usr/lib32/libz.so.1"
            ]
        );
        assert_eq!(lookup(&d, "libc.so.6").count(), 0);
    }

    #[test]
    fn the_host_cache_if_any_parses() {
        let Ok(d) = std::fs::read("/etc/ld.so.cache") else {
            return;
        };
        if d.starts_with(MAGIC) {
            assert!(lookup(&d, "libc.so.6").next().is_some());
        }
    }

    #[test]
    fn hostile_caches_yield_nothing() {
        assert_eq!(lookup(b"", "x").count(), 0);
        assert_eq!(lookup(MAGIC, "x").count(), 0);
        // A huge count with no entries behind it, offsets past the end.
        let mut d = MAGIC.to_vec();
        d.extend_from_slice(&u32::MAX.to_le_bytes());
        d.resize(HEADER, 0);
        d.extend_from_slice(&[0xff; ENTRY * 3]);
        assert_eq!(lookup(&d, "x").count(), 0);
        // Strings without a NUL.
        let mut d = cache(&[("a", "b")]);
        let n = d.len();
        d[n - 1] = b'x';
        assert_eq!(lookup(&d, "a").count(), 0);
    }
}
