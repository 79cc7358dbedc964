//! WORKDIR as a build step, as BuildKit makes it: after the config's working directory is
//! set (`instructions::workdir`), a directory other than `/` is created in the rootfs with
//! its missing parents (mode 0755, owned by the config's `USER` when it has one), which
//! adds a layer (empty when the directory was there) through the step cache like RUN and
//! COPY do. The key chains the stage's key with the directory, the user and the layer
//! compression.

use super::copy;
use super::dockerfile::Instruction;
use super::guards::{Active, Mounted};
use super::instructions::{user_of, working_dir_of};
use super::solve::{blocking, hex_key, Ctx, StageState};
use super::step::{compression, failed, finish};
use super::BuildError;
use crate::executor::user;
use std::sync::Arc;

impl Ctx {
    /// Makes (or finds in the cache) the working directory `ins` set.
    pub(super) async fn make_workdir(
        self: &Arc<Self>,
        state: &mut StageState,
        ins: &Instruction,
        title: &str,
    ) -> Result<(), BuildError> {
        let wd = working_dir_of(&state.res.config);
        if wd.trim_end_matches('/').is_empty() {
            state.history(&ins.text, true);
            return Ok(());
        }
        let owner = user_of(&state.res.config);
        let key = hex_key(&[
            &state.res.key,
            "WORKDIR",
            &wd,
            &owner,
            compression(self.req.estargz),
        ]);
        let v = self.progress.vertex(title);
        if self.reuse_cached(state, &key, ins, &v) {
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
                let ids = match owner.is_empty() {
                    true => None,
                    false => {
                        let u = user::resolve(&target.dir, &owner)?;
                        Some((u.uid, u.gid))
                    }
                };
                copy::make_dest_dir(&target.dir, &wd, ids, &wd)?;
            }
            finish(&w, active, parent.as_deref(), &k, estargz)
        })
        .await;
        let (snapshot, layer) = done.map_err(|e| failed(ins, &v, e))?;
        self.executed(state, ins, key, snapshot, layer)?;
        v.done();
        Ok(())
    }
}
