//! RUN: the command (exec form, or the shell form through the stage's `SHELL`, default
//! `/bin/sh -c`) runs in a fresh
//! active snapshot over the stage's top, with the config's environment plus the stage's
//! ARGs, its user and working directory, through the runc executor while it holds a permit
//! of the worker's parallelism bound. Its key chains the stage's key with all of those and
//! the layer compression. Its `--mount`s (`run_mount`, `run_mounts`) are set up for the
//! step and add to its key what they show.

use super::dockerfile::Instruction;
use super::guards::Active;
use super::instructions::{command, env_of, user_of, working_dir_of};
use super::layer::LayerBlob;
use super::progress::Vertex;
use super::run_mount;
use super::solve::{blocking, hex_key, Ctx, StageState};
use super::step::{compression, failed, finish};
use super::BuildError;
use crate::executor::StepProcess;
use std::sync::Arc;

impl Ctx {
    /// Runs (or finds in the cache) the RUN step `ins`.
    pub(super) async fn run(
        self: &Arc<Self>,
        state: &mut StageState,
        stage: usize,
        ins: &Instruction,
        title: &str,
    ) -> Result<(), BuildError> {
        let esc = self.req.dockerfile.escape;
        let specs = ins
            .flags
            .iter()
            .filter(|(k, _)| k == "mount")
            .map(|(_, v)| run_mount::parse(v, esc, &state.lookup()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| BuildError::RunMount {
                line: ins.line,
                source,
            })?;
        let args = command(ins, &state.res.config);
        let mut env: Vec<String> = env_of(&state.res.config)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut args_env: Vec<_> = state
            .args
            .iter()
            .filter(|(k, _)| !env.iter().any(|e| e.starts_with(&format!("{k}="))))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        args_env.sort();
        env.extend(args_env);
        let user = user_of(&state.res.config);
        let cwd = working_dir_of(&state.res.config);
        let v = self.progress.vertex(title);
        let mounts = self
            .step_mounts(&specs, stage, &cwd, ins.line)
            .await
            .map_err(|e| failed(ins, &v, e))?;
        let mount_key = mounts.key.join("\n");
        env.extend(mounts.env.iter().cloned());
        let key = hex_key(&[
            &state.res.key,
            "RUN",
            &serde_json::to_string(&args).unwrap_or_default(),
            &env.join("\n"),
            &user,
            &cwd,
            compression(self.req.estargz),
            &mount_key,
        ]);
        if self.reuse_cached(state, &key, ins, &v) {
            drop(tokio::task::spawn_blocking(move || drop(mounts)).await);
            return Ok(());
        }
        // Proxy build args reach the step without an ARG, outside its key (as in BuildKit).
        for p in super::solve::proxy_env(&self.req.build_args) {
            let name = p.split('=').next().unwrap_or_default();
            if !env.iter().any(|e| e.split('=').next() == Some(name)) {
                env.push(p);
            }
        }
        let process = StepProcess {
            args,
            env,
            cwd: if cwd.is_empty() { "/".into() } else { cwd },
            user,
            hostname: String::new(),
            mounts: mounts.mounts.clone(),
        };
        let v = Arc::new(v);
        let ran = self
            .execute(state.res.top.clone(), &key, process, v.clone())
            .await;
        // The mounts go on a blocking thread (removing them may unmount).
        drop(tokio::task::spawn_blocking(move || drop(mounts)).await);
        let (snapshot, layer) = ran.map_err(|e| failed(ins, &v, e))?;
        self.executed(state, ins, key, snapshot, layer)?;
        v.done();
        Ok(())
    }

    /// Runs `process` over `parent` and commits the result as the step `key`.
    async fn execute(
        self: &Arc<Self>,
        parent: Option<String>,
        key: &str,
        process: StepProcess,
        v: Arc<Vertex>,
    ) -> Result<(String, LayerBlob), BuildError> {
        let _permit = self.w.parallelism.clone().acquire_owned().await;
        let snap = self.w.snapshotter.clone();
        let p = parent.clone();
        let active = blocking(move || Active::new(&snap, p.as_deref())).await?;
        let ran = self
            .w
            .executor
            .run(&active.mounts, &process, v, self.w.cancel.clone(), None)
            .await;
        if let Err(e) = ran {
            // The snapshot goes on a blocking thread (removing it may unmount).
            drop(tokio::task::spawn_blocking(move || drop(active)).await);
            return Err(e.into());
        }
        let (w, k, estargz) = (self.w.clone(), key.to_string(), self.req.estargz);
        blocking(move || finish(&w, active, parent.as_deref(), &k, estargz)).await
    }
}
