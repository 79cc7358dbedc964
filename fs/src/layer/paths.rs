//! Absolute paths a program names in its own bytes: NUL-terminated strings that start with
//! `/` (string literals such as a configuration or data file it opens at start). The layer
//! resolves them in its index and fetches the small regular files among them once the
//! program has arrived (see `speculate.rs` in this folder). Untrusted input: one linear pass,
//! bounded string length and result count.

/// Longest path taken.
pub const MAX_PATH: usize = 256;

/// Up to `max` distinct absolute paths found in `data`, in the order they appear: a `/`
/// right after a NUL (or at the start), then printable ASCII up to the next NUL, at most
/// [`MAX_PATH`] bytes, not ending in `/` and without `//`, `%` or spaces (formats, prose).
pub fn absolute_paths(data: &[u8], max: usize) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < data.len() && out.len() < max {
        let starts = data[i] == b'/' && (i == 0 || data[i - 1] == 0);
        if !starts {
            i += 1;
            continue;
        }
        let rest = &data[i..data.len().min(i + MAX_PATH + 1)];
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            i += 1;
            continue;
        };
        let s = &rest[..end];
        let plausible = s.len() >= 2
            && s.iter().all(|&b| b.is_ascii_graphic() && b != b'%')
            && !s.ends_with(b"/")
            && !s.windows(2).any(|w| w == b"//");
        if plausible {
            if let Ok(p) = std::str::from_utf8(s) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        i += end + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nul_terminated_absolute_paths() {
        let d = b"\x7fELF\0/etc/a.conf\0x/not/this\0/usr/share/z\0/dir/\0/%s/fmt\0/etc/a.conf\0/a b\0/tail";
        assert_eq!(absolute_paths(d, 10), ["/etc/a.conf", "/usr/share/z"]);
        assert_eq!(absolute_paths(d, 1), ["/etc/a.conf"]);
        assert_eq!(absolute_paths(b"/x\0", 10), ["/x"]);
    }

    #[test]
    fn hostile_data_costs_bounded_work() {
        // No NUL in reach: nothing, and no quadratic rescans beyond MAX_PATH per slash.
        let d = vec![b'/'; 1 << 20];
        assert!(absolute_paths(&d, 100).is_empty());
        let mut d = Vec::new();
        for i in 0..100_000u32 {
            d.extend_from_slice(format!("/p{i}\0").as_bytes());
        }
        assert_eq!(absolute_paths(&d, 64).len(), 64);
        assert!(absolute_paths(&[], 10).is_empty());
    }
}
