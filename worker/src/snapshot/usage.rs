//! Disk usage of a directory tree the way containerd counts it: allocated blocks of every
//! inode once (hardlinks count once), and the number of inodes. Symlinks are not followed.

use super::{io, Result, Usage};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Usage of the tree at `root` (0/0 when it does not exist).
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut usage = Usage::default();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(format!("usage of {}", p.display()))(e)),
        };
        if seen.insert((m.dev(), m.ino())) {
            usage.inodes += 1;
            usage.size += (m.blocks() * 512) as i64;
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p).map_err(io(format!("listing {}", p.display())))? {
                todo.push(e.map_err(io(format!("listing {}", p.display())))?.path());
            }
        }
    }
    Ok(usage)
}
