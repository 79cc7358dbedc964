//! Memory figures of running processes for the snapshotter bench: RSS and PSS from `/proc`,
//! and the resident pages of a group of processes counted once (from `/proc/PID/pagemap`).

/// A "Key: N kB" figure of `/proc/PID/FILE`, in MB (0 when it cannot be read).
pub fn proc_mb(pid: u32, file: &str, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1000.0)
}

/// VmRSS of a process, MB.
pub fn rss_mb(pid: u32) -> f64 {
    proc_mb(pid, "status", "VmRSS:")
}

/// Proportional set size of a process, MB: its shared pages (the binary, libc) divided among
/// the processes that map them.
pub fn pss_mb(pid: u32) -> f64 {
    proc_mb(pid, "smaps_rollup", "Pss:")
}

/// Distinct physical pages resident in any of `pids`, MB: the group's memory with the pages
/// they share (the binary, libc, copy-on-write pages of a fork) counted once, which summing
/// RSS would count per process. Reads the frame numbers in `/proc/PID/pagemap` (root only);
/// 0 when they cannot be read.
pub fn resident_union_mb(pids: &[u32]) -> f64 {
    use std::os::unix::fs::FileExt;
    let mut frames = std::collections::HashSet::new();
    for pid in pids {
        let (Ok(maps), Ok(pagemap)) = (
            std::fs::read_to_string(format!("/proc/{pid}/maps")),
            std::fs::File::open(format!("/proc/{pid}/pagemap")),
        ) else {
            return 0.0;
        };
        for line in maps.lines() {
            let Some((start, end)) = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| {
                    Some((
                        u64::from_str_radix(a, 16).ok()?,
                        u64::from_str_radix(b, 16).ok()?,
                    ))
                })
            else {
                continue;
            };
            let mut buf = vec![0u8; ((end - start) / 4096 * 8) as usize];
            if pagemap.read_exact_at(&mut buf, start / 4096 * 8).is_err() {
                continue;
            }
            for e in buf.chunks_exact(8) {
                let e = u64::from_le_bytes(e.try_into().unwrap_or_default());
                let pfn = e & ((1 << 55) - 1);
                if e >> 63 == 1 && pfn != 0 {
                    frames.insert(pfn);
                }
            }
        }
    }
    frames.len() as f64 * 4096.0 / 1e6
}
