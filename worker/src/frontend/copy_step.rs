//! COPY and ADD as build steps: the words (exec or shell form, variables expanded), the
//! flags (`--from`, `--chown`, `--chmod`), the source tree (the context, or another stage's
//! or image's rootfs mounted read-only), and the step itself. The sources are resolved and
//! digested once, with the source tree mounted once: the digest completes the step's key,
//! and on a cache miss the same resolved sources are copied into a fresh active snapshot.

use super::copy::{self, CopyOptions, Source};
use super::dockerfile::{Instruction, Keyword};
use super::guards::{Active, Mounted, SourceTree};
use super::instructions::{working_dir_of, InstructionError};
use super::solve::{blocking, hex_key, Ctx, StageState};
use super::step::{compression, failed, finish};
use super::words::{expand, process, raw_tokens};
use super::BuildError;
use crate::executor::user;
use std::sync::Arc;

/// A COPY or ADD as written: what to copy, where to, how.
struct CopyArgs {
    srcs: Vec<String>,
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
        let mut words: Vec<String> = match &ins.json {
            Some(j) => j.clone(),
            None => raw_tokens(&ins.args, esc)?
                .iter()
                .map(|t| process(t, esc, lookup))
                .collect::<Result<_, _>>()?,
        };
        if words.len() < 2 {
            return Err(InstructionError::CopyArgs(ins.text.clone()));
        }
        let dest = words.pop().unwrap_or_default();
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
            dest,
            chown,
            chmod,
            from,
        })
    }
}

/// The sources of a COPY, resolved in their tree, which stays mounted while this lives.
struct Resolved {
    _tree: SourceTree,
    sources: Vec<Source>,
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
        let from_context = from_top.is_none();
        let resolved = blocking(move || {
            let tree = SourceTree::open(&snap, &tmp, &context, from_top.as_ref())?;
            let sources = copy::resolve_sources(&tree.root, &srcs)?;
            let digest = copy::digest_sources(&sources)?.hex();
            Ok((
                Resolved {
                    _tree: tree,
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
