//! Path resolution inside one layer's index, as the speculative fetcher needs it for loader
//! paths such as `/lib/ld-linux.so.2` (see `fs/src/layer/speculate.rs`): every component is
//! looked up in the TOC's tree, symlinks are followed in any component (absolute targets
//! from the layer root), `..` never climbs above the root, and a chain of more than
//! [`MAX_HOPS`] symlinks (a loop) resolves to nothing. Names that are not in this layer
//! resolve to nothing too: what lower layers hold is not this layer's to say.

use crate::format::{Index, NodeId, NodeKind};
use std::collections::VecDeque;

/// Symlinks followed for one path at most.
pub(super) const MAX_HOPS: usize = 32;

fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// The node `path` leads to in `index`, following symlinks; `None` if it leaves the
/// layer's names or loops.
pub(super) fn resolve(index: &Index, path: &str) -> Option<NodeId> {
    let mut todo: VecDeque<String> = components(path).map(str::to_string).collect();
    let mut cur: NodeId = 0;
    let mut hops = 0;
    while let Some(comp) = todo.pop_front() {
        if comp == ".." {
            cur = index.node(cur).parent;
            continue;
        }
        let id = index.child(cur, &comp)?;
        let n = index.node(id);
        if n.kind == NodeKind::Symlink {
            hops += 1;
            if hops > MAX_HOPS {
                return None;
            }
            let target = n.link_target();
            if target.starts_with('/') {
                cur = 0;
            }
            for c in components(target).rev() {
                todo.push_front(c.to_string());
            }
            continue;
        }
        cur = id;
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Compression, Limits};

    /// A layer with `usr/lib/libc.so`, `lib -> usr/lib`, `bin -> /usr/bin` (absent),
    /// `usr/lib/abs -> /usr/lib/libc.so`, `up -> ../../..` in `usr/lib`, a loop `a -> b`,
    /// `b -> a`, and `etc/file`.
    fn index() -> Index {
        let json = r#"{"version":1,"entries":[
            {"name":"usr/","type":"dir","mode":16877},
            {"name":"usr/lib/","type":"dir","mode":16877},
            {"name":"usr/lib/libc.so","type":"reg","size":0},
            {"name":"usr/lib/abs","type":"symlink","linkName":"/usr/lib/libc.so"},
            {"name":"usr/lib/up","type":"symlink","linkName":"../../.."},
            {"name":"lib","type":"symlink","linkName":"usr/lib"},
            {"name":"bin","type":"symlink","linkName":"/usr/bin"},
            {"name":"a","type":"symlink","linkName":"b"},
            {"name":"b","type":"symlink","linkName":"a"},
            {"name":"etc/file","type":"reg","size":0}
        ]}"#;
        Index::from_json(
            json.as_bytes(),
            Compression::Gzip,
            10_000,
            &Limits::default(),
        )
        .unwrap()
    }

    #[test]
    fn plain_paths_and_dots() {
        let i = index();
        let libc = i.lookup("usr/lib/libc.so").unwrap();
        assert_eq!(resolve(&i, "usr/lib/libc.so"), Some(libc));
        assert_eq!(resolve(&i, "/usr//lib/./libc.so"), Some(libc));
        assert_eq!(resolve(&i, "usr/lib/../lib/libc.so"), Some(libc));
        assert_eq!(resolve(&i, ""), Some(0));
        assert_eq!(resolve(&i, "/"), Some(0));
        assert_eq!(resolve(&i, "usr/missing"), None);
        // A file is not a directory.
        assert_eq!(resolve(&i, "etc/file/x"), None);
    }

    #[test]
    fn symlinks_in_any_component() {
        let i = index();
        let libc = i.lookup("usr/lib/libc.so").unwrap();
        let usr_lib = i.lookup("usr/lib").unwrap();
        assert_eq!(resolve(&i, "lib/libc.so"), Some(libc));
        assert_eq!(resolve(&i, "/lib/../lib/./libc.so"), Some(libc));
        // The last component is followed too: a link to a directory is the directory.
        assert_eq!(resolve(&i, "lib"), Some(usr_lib));
        // Absolute targets start again at the layer root, wherever the link is.
        assert_eq!(resolve(&i, "lib/abs"), Some(libc));
        // A target this layer does not hold resolves to nothing.
        assert_eq!(resolve(&i, "bin/sh"), None);
    }

    #[test]
    fn dot_dot_stops_at_the_root() {
        let i = index();
        let libc = i.lookup("usr/lib/libc.so").unwrap();
        assert_eq!(resolve(&i, "../../usr/lib/libc.so"), Some(libc));
        // `up` climbs three levels from usr/lib: past the root, which is where it stays.
        assert_eq!(resolve(&i, "usr/lib/up"), Some(0));
        assert_eq!(resolve(&i, "usr/lib/up/etc/file"), i.lookup("etc/file"));
    }

    #[test]
    fn loops_end_in_nothing() {
        let i = index();
        assert_eq!(resolve(&i, "a"), None);
        assert_eq!(resolve(&i, "b/x"), None);
    }
}
