//! The client's FileSync sender (`--local NAME=DIR`): on `DiffCopy` with `dir-name` NAME it
//! walks DIR in fsutil's order (names sorted, a directory before its entries), keeping what
//! the `include-patterns` select and dropping what the `exclude-patterns` do (the last
//! matching pattern decides, `!` re-includes; a pattern matching a directory covers what is
//! under it), sends a `STAT` per entry (Go file modes, uid and gid 0 as buildctl sends),
//! answers each `REQ` with the file's `DATA` and an empty `DATA`, and `FIN` with `FIN`.
//! Nothing fancy: regular files, directories and symlinks; other types are skipped.

use crate::buildkitd::proto::filesync::file_sync_server::FileSync;
use crate::buildkitd::proto::fsutil::types::{packet::PacketType, Packet, Stat};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

const MODE_DIR: u32 = 1 << 31;
const MODE_SYMLINK: u32 = 1 << 27;
const CHUNK: usize = 32 * 1024;

/// Local directories by name.
#[derive(Debug, Clone, Default)]
pub struct LocalDirs(pub HashMap<String, PathBuf>);

/// Whether the glob `pattern` matches `path` or a directory above it.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern
        .trim_start_matches("./")
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let segs: Vec<&str> = path.split('/').collect();
    (1..=segs.len()).any(|n| match_segments(&pat, &segs[..n]))
}

fn match_segments(pat: &[&str], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((&"**", rest)) => (0..=segs.len()).any(|i| match_segments(rest, &segs[i..])),
        Some((p, rest)) => match segs.split_first() {
            Some((s, srest)) => glob(p.as_bytes(), s.as_bytes()) && match_segments(rest, srest),
            None => false,
        },
    }
}

/// `*` and `?` within one name.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// Whether `path` is excluded by `patterns` (the last match decides).
fn excluded(patterns: &[String], path: &str) -> bool {
    let mut out = false;
    for p in patterns {
        match p.strip_prefix('!') {
            Some(neg) if matches(neg, path) => out = false,
            Some(_) => {}
            None if matches(p, path) => out = true,
            None => {}
        }
    }
    out
}

/// Whether `path` is selected by `includes` (none: everything), or is a directory on the
/// way to what is.
fn included(includes: &[String], path: &str, dir: bool) -> bool {
    includes.is_empty()
        || includes.iter().any(|i| {
            matches(i, path) || (dir && i.trim_start_matches("./").starts_with(&format!("{path}/")))
        })
}

fn go_mode(m: &std::fs::Metadata) -> u32 {
    let perm = m.mode() & 0o777;
    let mut mode = perm;
    if m.mode() & libc::S_ISUID != 0 {
        mode |= 1 << 23;
    }
    if m.mode() & libc::S_ISGID != 0 {
        mode |= 1 << 22;
    }
    if m.mode() & libc::S_ISVTX != 0 {
        mode |= 1 << 20;
    }
    let t = m.file_type();
    if t.is_dir() {
        mode |= MODE_DIR;
    } else if t.is_symlink() {
        mode |= MODE_SYMLINK;
    }
    mode
}

/// The entries of `root` to send, in order, with their local paths.
pub fn walk(
    root: &Path,
    includes: &[String],
    excludes: &[String],
) -> std::io::Result<Vec<(Stat, PathBuf)>> {
    let mut out = Vec::new();
    walk_dir(root, "", includes, excludes, &mut out)?;
    Ok(out)
}

fn walk_dir(
    dir: &Path,
    rel: &str,
    includes: &[String],
    excludes: &[String],
    out: &mut Vec<(Stat, PathBuf)>,
) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for n in names {
        let Some(name) = n.to_str() else { continue };
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let local = dir.join(name);
        let m = std::fs::symlink_metadata(&local)?;
        let t = m.file_type();
        if !(t.is_dir() || t.is_file() || t.is_symlink()) {
            continue;
        }
        if excluded(excludes, &path) || !included(includes, &path, t.is_dir()) {
            continue;
        }
        let stat = Stat {
            path: path.clone(),
            mode: go_mode(&m),
            size: if t.is_file() { m.size() as i64 } else { 0 },
            mod_time: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            linkname: if t.is_symlink() {
                std::fs::read_link(&local)?.to_string_lossy().into_owned()
            } else {
                String::new()
            },
            ..Stat::default()
        };
        out.push((stat, local.clone()));
        if t.is_dir() {
            walk_dir(&local, &path, includes, excludes, out)?;
        }
    }
    Ok(())
}

fn values(req: &Request<Streaming<Packet>>, key: &str) -> Vec<String> {
    req.metadata()
        .get_all(key)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(String::from)
        .collect()
}

fn packet(t: PacketType) -> Packet {
    Packet {
        r#type: t as i32,
        ..Packet::default()
    }
}

type Packets = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FileSync for LocalDirs {
    type DiffCopyStream = Packets;

    async fn diff_copy(
        &self,
        req: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        let name = values(&req, "dir-name")
            .into_iter()
            .next()
            .unwrap_or_default();
        let root = self
            .0
            .get(&name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no local directory {name:?}")))?;
        let (inc, exc) = (
            values(&req, "include-patterns"),
            values(&req, "exclude-patterns"),
        );
        let entries = tokio::task::spawn_blocking(move || walk(&root, &inc, &exc))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("walking {name}: {e}")))?;
        let mut reqs = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for (stat, _) in &entries {
                let p = Packet {
                    r#type: PacketType::PacketStat as i32,
                    stat: Some(stat.clone()),
                    ..Packet::default()
                };
                if tx.send(Ok(p)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Ok(packet(PacketType::PacketStat))).await;
            while let Some(Ok(p)) = reqs.next().await {
                if p.r#type == PacketType::PacketFin as i32 {
                    let _ = tx.send(Ok(packet(PacketType::PacketFin))).await;
                    return;
                }
                if p.r#type != PacketType::PacketReq as i32 {
                    continue;
                }
                let Some((_, local)) = entries.get(p.id as usize) else {
                    let mut e = packet(PacketType::PacketErr);
                    e.data = format!("no entry {}", p.id).into_bytes();
                    let _ = tx.send(Ok(e)).await;
                    return;
                };
                let data = match std::fs::File::open(local).and_then(|mut f| {
                    let mut v = Vec::new();
                    f.read_to_end(&mut v).map(|_| v)
                }) {
                    Ok(d) => d,
                    Err(err) => {
                        let mut e = packet(PacketType::PacketErr);
                        e.data = format!("{}: {err}", local.display()).into_bytes();
                        let _ = tx.send(Ok(e)).await;
                        return;
                    }
                };
                for chunk in data.chunks(CHUNK).chain([&[][..]]) {
                    let d = Packet {
                        r#type: PacketType::PacketData as i32,
                        id: p.id,
                        data: chunk.to_vec(),
                        ..Packet::default()
                    };
                    if tx.send(Ok(d)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type TarStreamStream = Packets;

    async fn tar_stream(
        &self,
        _req: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::TarStreamStream>, Status> {
        Err(Status::unimplemented("TarStream: use DiffCopy"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_select_as_dockerignore_does() {
        assert!(matches("secret.txt", "secret.txt"));
        assert!(matches("*.log", "a.log"));
        assert!(!matches("*.log", "dir/a.log"));
        assert!(matches("**/*.log", "dir/a.log"));
        assert!(matches("build", "build/out/x"));
        assert!(matches("sub/Dockerfile", "sub/Dockerfile"));
        let ex = vec!["*.log".to_string(), "!keep.log".to_string()];
        assert!(excluded(&ex, "a.log") && !excluded(&ex, "keep.log"));
        assert!(included(&["sub/Dockerfile".into()], "sub", true));
        assert!(!included(&["sub/Dockerfile".into()], "other", true));
    }

    #[test]
    fn a_walk_lists_parents_first_and_drops_the_excluded() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("src/deep")).unwrap();
        std::fs::write(d.path().join("src/deep/a.txt"), b"a").unwrap();
        std::fs::write(d.path().join("secret.txt"), b"s").unwrap();
        std::os::unix::fs::symlink("src", d.path().join("link")).unwrap();
        let got: Vec<String> = walk(d.path(), &[], &["secret.txt".into()])
            .unwrap()
            .into_iter()
            .map(|(s, _)| s.path)
            .collect();
        assert_eq!(got, ["link", "src", "src/deep", "src/deep/a.txt"]);
    }
}
