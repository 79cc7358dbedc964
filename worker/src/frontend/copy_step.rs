//! COPY and ADD as build steps: the words (exec or shell form, variables expanded), the
//! flags (`--from`, `--chown`, `--chmod`), the source tree (the context, or another stage's
//! or image's rootfs mounted read-only), and the step itself. The sources are resolved and
//! digested once, with the source tree mounted once: the digest completes the step's key,
//! and on a cache miss the same resolved sources are copied into a fresh active snapshot.
//! Heredoc sources (`COPY <<EOF dest`) are written as files in a scratch directory and
//! copied like the others.

use super::copy::{self, CopyOptions, Source};
use super::dockerfile::{Instruction, Keyword};
use super::guards::{random_suffix, Active, Mounted, SourceTree};
use super::heredoc;
use super::instructions::{working_dir_of, InstructionError};
use super::solve::{blocking, hex_key, Ctx, StageState};
use super::step::{compression, failed, finish};
use super::words::{expand, process, raw_tokens};
use super::{io, BuildError};
use crate::executor::user;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A COPY or ADD as written: what to copy, where to, how.
struct CopyArgs {
    srcs: Vec<String>,
    /// Heredoc sources: file name and content (expanded unless the word was quoted).
    inline: Vec<(String, String)>,
    dest: String,
    chown: Option<String>,
    chmod: Option<u32>,
    from: Option<String>,
}

impl CopyArgs {
    /// The words and flags of `ins`, expanded with `lookup`.
    fn parse(
        ins: &Instruction,
        esc: char,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, InstructionError> {
        // Each word raw (a heredoc marker is recognised as written) and processed.
        let mut words: Vec<(String, String)> = match &ins.json {
            Some(j) => j.iter().map(|w| (w.clone(), w.clone())).collect(),
            None => raw_tokens(&ins.args, esc)?
                .into_iter()
                .map(|t| process(&t, esc, lookup).map(|p| (t, p)))
                .collect::<Result<_, _>>()?,
        };
        if words.len() < 2 {
            return Err(InstructionError::CopyArgs(ins.text.clone()));
        }
        let (raw_dest, dest) = words.pop().unwrap_or_default();
        if heredoc::marker(&raw_dest).is_some() {
            return Err(InstructionError::HeredocDest(ins.text.clone()));
        }
        let mut inline = Vec::new();
        let mut paths = Vec::new();
        for (raw, word) in words {
            match heredoc::marker(&raw) {
                Some(m) => {
                    let doc = ins.heredocs.iter().rev().find(|h| h.name == m.name);
                    let mut data = doc.map(|h| h.content.clone()).unwrap_or_default();
                    if m.chomp {
                        data = heredoc::chomp(&data);
                    }
                    if m.expand {
                        data = heredoc::expand_content(&data, lookup)?;
                    }
                    if m.name.contains('/') || m.name == "." || m.name == ".." {
                        return Err(InstructionError::HeredocName(m.name));
                    }
                    inline.push((m.name, data));
                }
                None => paths.push(word),
            }
        }
        let words = paths;
        if ins.keyword == Keyword::Add {
            if let Some(u) = words.iter().find(|s| s.contains("://")) {
                return Err(InstructionError::AddUrl(u.clone()));
            }
        }
        let chown = ins
            .flag("chown")
            .map(|c| expand(c, esc, lookup))
            .transpose()?;
        let chmod = ins
            .flag("chmod")
            .map(copy::parse_chmod)
            .transpose()
            .map_err(InstructionError::Chmod)?;
        let from = ins
            .flag("from")
            .map(|f| expand(f, esc, lookup))
            .transpose()?;
        Ok(CopyArgs {
            srcs: words,
            inline,
            dest,
            chown,
            chmod,
            from,
        })
    }
}

/// The sources of a COPY, resolved in their tree, which stays mounted while this lives
/// (and the heredoc files, which stay while this lives).
struct Resolved {
    _tree: SourceTree,
    _inline: Option<InlineFiles>,
    sources: Vec<Source>,
}

/// Heredoc sources written as files (mode 0664, as BuildKit makes them) in a scratch
/// directory, removed on drop.
struct InlineFiles {
    dir: PathBuf,
}

impl InlineFiles {
    /// Writes `files` under `tmp`; the sources that copy them, written `<<NAME`.
    fn write(tmp: &Path, files: &[(String, String)]) -> Result<(Self, Vec<Source>), BuildError> {
        let dir = tmp.join(format!("heredoc-{}", random_suffix()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let me = InlineFiles { dir };
        let mut sources = Vec::new();
        for (name, data) in files {
            let path = me.dir.join(name);
            std::fs::write(&path, data).map_err(io(format!("writing {}", path.display())))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664))
                .map_err(io(format!("chmod {}", path.display())))?;
            sources.push(Source {
                written: name.clone(),
                path,
            });
        }
        Ok((me, sources))
    }
}

impl Drop for InlineFiles {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::debug!(dir = %self.dir.display(), error = %e, "removing heredoc files");
        }
    }
}

impl Ctx {
    /// Runs (or finds in the cache) the COPY or ADD step `ins` of stage `stage`.
    pub(super) async fn copy(
        self: &Arc<Self>,
        state: &mut StageState,
        stage: usize,
        ins: &Instruction,
        title: &str,
    ) -> Result<(), BuildError> {
        let bad = |e: InstructionError| e.at(ins.line);
        let a = CopyArgs::parse(ins, self.req.dockerfile.escape, &state.lookup()).map_err(bad)?;
        // The source tree: the context, or another stage's (or image's) rootfs.
        let (from_key, from_top) = match &a.from {
            None => ("context".to_string(), None),
            Some(f) => {
                let r = match self.stage_index(f, stage) {
                    Some(j) => self.clone().stage(j).await?,
                    None if self
                        .req
                        .dockerfile
                        .stages
                        .iter()
                        .any(|s| s.name.as_deref() == Some(&f.to_ascii_lowercase())) =>
                    {
                        return Err(bad(InstructionError::CopyFromLater(f.clone())))
                    }
                    None => self.image(f, None, ins.line).await?,
                };
                (r.key.clone(), Some(r.top))
            }
        };
        let v = self.progress.vertex(title);
        // Resolve and digest the sources (with the source tree mounted when it is a stage).
        let (snap, tmp, context, srcs) = (
            self.w.snapshotter.clone(),
            self.w.tmp.clone(),
            self.req.context.clone(),
            a.srcs.clone(),
        );
        let inline = a.inline.clone();
        let from_context = from_top.is_none();
        let resolved = blocking(move || {
            let tree = SourceTree::open(&snap, &tmp, &context, from_top.as_ref())?;
            let mut sources = copy::resolve_sources(&tree.root, &srcs)?;
            let inline = match inline.is_empty() {
                true => None,
                false => {
                    let (files, more) = InlineFiles::write(&tmp, &inline)?;
                    sources.extend(more);
                    Some(files)
                }
            };
            let digest = copy::digest_sources(&sources)?.hex();
            Ok((
                Resolved {
                    _tree: tree,
                    _inline: inline,
                    sources,
                },
                digest,
            ))
        })
        .await;
        let (resolved, digest) = resolved.map_err(|e| failed(ins, &v, e))?;
        let workdir = working_dir_of(&state.res.config);
        let add = ins.keyword == Keyword::Add;
        let key = hex_key(&[
            &state.res.key,
            if add { "ADD" } else { "COPY" },
            &from_key,
            &digest,
            &a.srcs.join("\n"),
            &a.dest,
            a.chown.as_deref().unwrap_or(""),
            &a.chmod.map(|m| format!("{m:o}")).unwrap_or_default(),
            &workdir,
            compression(self.req.estargz),
        ]);
        if self.reuse_cached(state, &key, ins, &v) {
            // The source tree is unmounted on a blocking thread.
            drop(tokio::task::spawn_blocking(move || drop(resolved)).await);
            return Ok(());
        }
        let (w, parent, k, estargz) = (
            self.w.clone(),
            state.res.top.clone(),
            key.clone(),
            self.req.estargz,
        );
        let done = blocking(move || {
            let active = Active::new(&w.snapshotter, parent.as_deref())?;
            {
                let target = Mounted::new(&w.tmp, &active.mounts)?;
                let owner = match &a.chown {
                    Some(c) => {
                        let u = user::resolve(&target.dir, c)?;
                        Some((u.uid, u.gid))
                    }
                    None => None,
                };
                let opts = CopyOptions {
                    owner,
                    mode: a.chmod,
                    from_context,
                    unpack_archives: add && from_context,
                };
                copy::copy_into(
                    &target.dir,
                    &resolved.sources,
                    &a.dest,
                    if workdir.is_empty() { "/" } else { &workdir },
                    &opts,
                )?;
            }
            drop(resolved);
            finish(&w, active, parent.as_deref(), &k, estargz)
        })
        .await;
        let (snapshot, layer) = done.map_err(|e| failed(ins, &v, e))?;
        self.executed(state, ins, key, snapshot, layer)?;
        v.done();
        Ok(())
    }
}
