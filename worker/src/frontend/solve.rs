//! Executing a parsed Dockerfile: the stages the target needs run concurrently (a stage
//! waits only for the stages it names in FROM or COPY --from), each instruction updates the
//! stage's image config or adds a layer, and RUN/COPY/ADD steps are looked up in the step
//! cache first. RUN steps hold a permit of the worker's parallelism bound while they run.

use super::base::{self, LayerOutcome};
use super::cache::{now, now_millis, Record, StepCache};
use super::copy::{self, CopyOptions, SourceRoot};
use super::diff::{changes_of, Changes};
use super::dockerfile::{Dockerfile, Instruction, Keyword};
use super::layer::{write_layer, LayerBlob};
use super::progress::Progress;
use super::words::{expand, key_values, process, raw_tokens};
use super::{io, BuildError};
use crate::executor::{user, Executor, StepProcess};
use crate::snapshot::{mounts, Labels, Mount, SnapshotError, Snapshotter};
use stargaze_fs::digest::Hasher;
use stargaze_fs::image::OciLayout;
use stargaze_fs::remote::{Platform, Reference, RegistryClient};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{OnceCell, Semaphore};

/// Label on snapshots the build made: the cache key they hold.
pub const BUILD_KEY_LABEL: &str = "io.stargaze.build.key";

/// Everything a build runs on.
pub struct Worker {
    /// The snapshotter of base layers and steps.
    pub snapshotter: Arc<dyn Snapshotter>,
    /// Runs RUN steps.
    pub executor: Arc<Executor>,
    /// Registry access for base images and export.
    pub client: Arc<RegistryClient>,
    /// Layer blobs of steps, and locally stored images.
    pub content: OciLayout,
    /// Step cache records.
    pub cache: StepCache,
    /// Scratch space for mount points (same file system as the state).
    pub tmp: PathBuf,
    /// Bounds RUN steps at once.
    pub parallelism: Arc<Semaphore>,
    /// Runtime for blocking snapshotter work that needs async calls.
    pub rt: tokio::runtime::Handle,
    /// Turns true to cancel: running steps are killed through the runtime.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The parsed Dockerfile.
    pub dockerfile: Dockerfile,
    /// The context directory.
    pub context: PathBuf,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// Stage to build (default: the last).
    pub target: Option<String>,
    /// Platform of base images and the result.
    pub platform: Platform,
    /// Layers as eStargz.
    pub estargz: bool,
    /// Ignore the step cache.
    pub no_cache: bool,
}

/// A layer of a stage's image: its descriptor and where its blob is.
#[derive(Debug, Clone)]
pub struct ImageLayer {
    /// The blob.
    pub blob: LayerBlob,
    /// The registry repository holding it (base layers); `None`: the content store.
    pub remote: Option<Reference>,
}

/// The result of a stage.
#[derive(Debug, Clone)]
pub struct StageResult {
    /// The image config document.
    pub config: serde_json::Value,
    /// Layers, bottom first.
    pub layers: Vec<ImageLayer>,
    /// The committed snapshot of the rootfs (none: empty).
    pub top: Option<String>,
    /// The cache key of the state.
    pub key: String,
}

/// Counts of a build.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildStats {
    /// Steps executed (RUN, COPY, ADD).
    pub executed: usize,
    /// Steps answered from the cache.
    pub cached: usize,
    /// Base layers mounted lazily.
    pub lazy_layers: usize,
    /// Base layers pulled and unpacked.
    pub pulled_layers: usize,
    /// Base layers already present.
    pub present_layers: usize,
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The target stage's image.
    pub image: StageResult,
    /// Counts.
    pub stats: BuildStats,
}

/// A stage's (or base image's) result, computed once and shared by everything waiting.
type Shared = OnceCell<Result<StageResult, String>>;

struct Ctx {
    w: Arc<Worker>,
    req: BuildRequest,
    progress: Arc<Progress>,
    stages: Vec<Shared>,
    images: tokio::sync::Mutex<HashMap<String, Arc<Shared>>>,
    global_args: HashMap<String, String>,
    stats: std::sync::Mutex<BuildStats>,
}

fn hex_key(parts: &[&str]) -> String {
    let mut h = Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    h.finish().hex()
}

fn random_suffix() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BuildError::Export(format!("worker thread failed: {e}")))?
}

/// Builds `req` on `w`, reporting to `progress`.
pub async fn build(
    w: Arc<Worker>,
    req: BuildRequest,
    progress: Arc<Progress>,
) -> Result<BuildOutput, BuildError> {
    let esc = req.dockerfile.escape;
    let mut global_args = HashMap::new();
    for a in &req.dockerfile.global_args {
        for (name, value) in arg_decls(a, esc, &|n| global_args_lookup(&global_args, n))? {
            let v = req
                .build_args
                .get(&name)
                .cloned()
                .or(value)
                .unwrap_or_default();
            global_args.insert(name, v);
        }
    }
    let target = match &req.target {
        None => req.dockerfile.stages.len() - 1,
        Some(t) => req
            .dockerfile
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(&t.to_ascii_lowercase()))
            .ok_or_else(|| BuildError::Instruction {
                line: 0,
                message: format!("target stage {t:?} not found"),
            })?,
    };
    let ctx = Arc::new(Ctx {
        stages: req
            .dockerfile
            .stages
            .iter()
            .map(|_| OnceCell::new())
            .collect(),
        w,
        req,
        progress,
        images: tokio::sync::Mutex::new(HashMap::new()),
        global_args,
        stats: std::sync::Mutex::new(BuildStats::default()),
    });
    // Start every stage the target depends on at once; each waits for its own deps.
    let mut needed = vec![target];
    let mut i = 0;
    while i < needed.len() {
        for d in ctx.deps(needed[i])? {
            if !needed.contains(&d) {
                needed.push(d);
            }
        }
        i += 1;
    }
    let mut handles = Vec::new();
    for &s in needed.iter().skip(1) {
        let c = ctx.clone();
        handles.push(tokio::spawn(async move {
            let _ = c.stage(s).await;
        }));
    }
    let result = ctx.clone().stage(target).await;
    for h in handles {
        let _ = h.await;
    }
    let image = result?;
    let stats = ctx.stats.lock().map(|s| *s).unwrap_or_default();
    Ok(BuildOutput { image, stats })
}

fn global_args_lookup(m: &HashMap<String, String>, n: &str) -> Option<String> {
    m.get(n).cloned()
}

/// `ARG name[=default]` declarations of one instruction.
fn arg_decls(
    ins: &Instruction,
    esc: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Option<String>)>, BuildError> {
    let bad = |m: String| BuildError::Instruction {
        line: ins.line,
        message: m,
    };
    let mut out = Vec::new();
    for t in raw_tokens(&ins.args, esc).map_err(|e| bad(e.0))? {
        match t.split_once('=') {
            Some((k, v)) => {
                let v = process(v, esc, lookup).map_err(|e| bad(e.0))?;
                out.push((k.to_string(), Some(v)));
            }
            None => out.push((t, None)),
        }
    }
    for (k, _) in &out {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad(format!("ARG name {k:?} is not a valid name")));
        }
    }
    Ok(out)
}

/// The env list of an image config as a map, in order.
fn env_of(config: &serde_json::Value) -> Vec<(String, String)> {
    config["config"]["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .filter_map(|s| s.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn set_env(config: &mut serde_json::Value, k: &str, v: &str) {
    let mut env = env_of(config);
    match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    }
    config["config"]["Env"] = env
        .into_iter()
        .map(|(k, v)| serde_json::Value::String(format!("{k}={v}")))
        .collect();
}

fn str_field(config: &serde_json::Value, k: &str) -> String {
    config["config"][k].as_str().unwrap_or("").to_string()
}

/// Where a stage stands while its instructions run.
struct StageState {
    res: StageResult,
    args: HashMap<String, String>,
}

impl StageState {
    fn lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        let env = env_of(&self.res.config);
        move |n: &str| {
            env.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .or_else(|| self.args.get(n).cloned())
        }
    }

    fn history(&mut self, created_by: &str, empty: bool) {
        let h = serde_json::json!({
            "created": rfc3339(now()),
            "created_by": created_by,
            "comment": "stargaze build",
            "empty_layer": empty,
        });
        match self.res.config["history"].as_array_mut() {
            Some(a) => a.push(h),
            None => self.res.config["history"] = serde_json::json!([h]),
        }
    }
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    stargaze_fs::format::time::format_rfc3339(secs)
}

/// Mounts `m` at a fresh directory under `tmp` and unmounts it (and removes it) on drop.
struct Mounted {
    dir: PathBuf,
    mounted: bool,
}

impl Mounted {
    fn new(tmp: &Path, m: &[Mount]) -> Result<Self, BuildError> {
        let dir = tmp.join(format!("mnt-{}", random_suffix()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut me = Mounted {
            dir,
            mounted: false,
        };
        mounts::mount_all(m, &me.dir)?;
        me.mounted = true;
        Ok(me)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = mounts::unmount(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "unmounting");
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A view of `parent` removed on drop.
struct View {
    snap: Arc<dyn Snapshotter>,
    key: String,
    mounts: Vec<Mount>,
}

impl View {
    fn new(snap: &Arc<dyn Snapshotter>, parent: &str) -> Result<Self, BuildError> {
        let key = format!("view-{}", random_suffix());
        let mounts = snap.view(&key, parent, Labels::new())?;
        Ok(View {
            snap: snap.clone(),
            key,
            mounts,
        })
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let Err(e) = self.snap.remove(&self.key) {
            tracing::warn!(key = %self.key, error = %e, "removing a view");
        }
    }
}

/// An active snapshot removed on drop unless committed.
struct Active {
    snap: Arc<dyn Snapshotter>,
    key: String,
    mounts: Vec<Mount>,
    committed: bool,
}

impl Active {
    fn new(snap: &Arc<dyn Snapshotter>, parent: Option<&str>) -> Result<Self, BuildError> {
        let key = format!("active-{}", random_suffix());
        let mounts = snap.prepare(&key, parent.unwrap_or(""), Labels::new())?;
        Ok(Active {
            snap: snap.clone(),
            key,
            mounts,
            committed: false,
        })
    }

    /// The step's changes as a layer, then the snapshot committed under `name`
    /// (a fresh name when `name` is taken by an earlier run of the same step).
    fn finish(
        mut self,
        w: &Worker,
        parent: Option<&str>,
        name: &str,
        key: &str,
        estargz: bool,
    ) -> Result<(String, LayerBlob), BuildError> {
        let (blob, _) = {
            let view = match (parent, changes_of(&self.mounts, None)) {
                (Some(p), Some(Changes::Compare { .. })) => Some(View::new(&self.snap, p)?),
                _ => None,
            };
            let changes = changes_of(&self.mounts, view.as_ref().map(|v| v.mounts.as_slice()))
                .ok_or_else(|| {
                    BuildError::Export(format!("cannot read changes of mounts {:?}", self.mounts))
                })?;
            write_layer(&w.content, &changes, estargz)?
        };
        let mut labels = Labels::new();
        labels.insert(BUILD_KEY_LABEL.into(), key.to_string());
        let name = match self.snap.commit(name, &self.key, labels.clone()) {
            Ok(()) => name.to_string(),
            Err(SnapshotError::AlreadyExists(_)) => {
                let fresh = format!("{name}-{}", random_suffix());
                self.snap.commit(&fresh, &self.key, labels)?;
                fresh
            }
            Err(e) => return Err(e.into()),
        };
        self.committed = true;
        Ok((name, blob))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = self.snap.remove(&self.key) {
                tracing::warn!(key = %self.key, error = %e, "removing an unfinished step's snapshot");
            }
        }
    }
}

impl Ctx {
    /// Index of the stage `name` refers to (by name or number), if it is one before `before`.
    fn stage_index(&self, name: &str, before: usize) -> Option<usize> {
        let lname = name.to_ascii_lowercase();
        let stages = &self.req.dockerfile.stages;
        if let Some(i) = stages[..before]
            .iter()
            .position(|s| s.name.as_deref() == Some(&lname))
        {
            return Some(i);
        }
        name.parse::<usize>().ok().filter(|&i| i < before)
    }

    fn base_name(&self, i: usize) -> Result<String, BuildError> {
        let st = &self.req.dockerfile.stages[i];
        expand(&st.base, self.req.dockerfile.escape, &|n| {
            self.global_args.get(n).cloned()
        })
        .map_err(|e| BuildError::Instruction {
            line: st.from.line,
            message: e.0,
        })
    }

    /// Stages stage `i` waits for.
    fn deps(&self, i: usize) -> Result<Vec<usize>, BuildError> {
        let st = &self.req.dockerfile.stages[i];
        let mut out = Vec::new();
        if let Some(j) = self.stage_index(&self.base_name(i)?, i) {
            out.push(j);
        }
        for s in &st.steps {
            if let Some(f) = s.flag("from") {
                if let Some(j) = self.stage_index(f, i) {
                    out.push(j);
                }
            }
        }
        Ok(out)
    }

    fn stage(
        self: Arc<Self>,
        i: usize,
    ) -> futures_util::future::BoxFuture<'static, Result<StageResult, BuildError>> {
        Box::pin(async move {
            let name = self.req.dockerfile.stages[i]
                .name
                .clone()
                .unwrap_or_else(|| i.to_string());
            let me = self.clone();
            let r = self.stages[i]
                .get_or_init(|| async move { me.run_stage(i).await.map_err(|e| e.to_string()) })
                .await;
            r.clone().map_err(|reason| BuildError::Dependency {
                stage: name,
                reason,
            })
        })
    }

    /// The base image `name` as a stage result (resolved and snapshotted once per build).
    async fn image(
        self: &Arc<Self>,
        name: &str,
        platform: Option<&Platform>,
        line: usize,
    ) -> Result<StageResult, BuildError> {
        let platform = platform.unwrap_or(&self.req.platform).clone();
        let cell = {
            let mut m = self.images.lock().await;
            m.entry(format!("{name} {platform}")).or_default().clone()
        };
        let me = self.clone();
        let n = name.to_string();
        cell.get_or_init(|| async move {
            me.load_image(&n, &platform, line)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .clone()
        .map_err(|reason| BuildError::Base {
            image: name.to_string(),
            reason,
        })
    }

    async fn load_image(
        self: &Arc<Self>,
        name: &str,
        platform: &Platform,
        line: usize,
    ) -> Result<StageResult, BuildError> {
        if name == "scratch" {
            return Ok(StageResult {
                config: serde_json::json!({
                    "architecture": platform.architecture,
                    "os": platform.os,
                    "config": {},
                    "rootfs": {"type": "layers", "diff_ids": []},
                    "history": [],
                }),
                layers: Vec::new(),
                top: None,
                key: hex_key(&["scratch", &platform.to_string()]),
            });
        }
        let reference = Reference::parse(name).map_err(|e| BuildError::Instruction {
            line,
            message: format!("FROM {name}: {e}"),
        })?;
        let v = self
            .progress
            .vertex(&format!("[internal] load metadata for {reference}"));
        let img = match base::resolve(&self.w.client, &reference, platform).await {
            Ok(i) => i,
            Err(e) => {
                v.error(&e);
                return Err(e);
            }
        };
        v.done();
        let v = self.progress.vertex(&format!("FROM {}", img.reference));
        let (w, img2) = (self.w.clone(), img.clone());
        let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let o2 = outcomes.clone();
        let top = blocking(move || {
            base::ensure_snapshots(w.snapshotter.as_ref(), &w.client, &w.rt, &img2, &|i, o| {
                if let Ok(mut v) = o2.lock() {
                    v.push((i, o));
                }
            })
        })
        .await;
        let outcomes = outcomes.lock().map(|v| v.clone()).unwrap_or_default();
        let (mut lazy, mut pulled, mut present) = (0, 0, 0);
        for (_, o) in &outcomes {
            match o {
                LayerOutcome::Lazy => lazy += 1,
                LayerOutcome::Pulled => pulled += 1,
                LayerOutcome::Present => present += 1,
            }
        }
        if let Ok(mut s) = self.stats.lock() {
            s.lazy_layers += lazy;
            s.pulled_layers += pulled;
            s.present_layers += present;
        }
        let top = match top {
            Ok(t) => t,
            Err(e) => {
                v.error(&e);
                return Err(e);
            }
        };
        v.log(&format!(
            "{} layers: {lazy} mounted lazily, {pulled} pulled, {present} present",
            img.layers.len()
        ));
        v.done();
        let layers = img
            .layers
            .iter()
            .zip(&img.diff_ids)
            .map(|(d, diff)| ImageLayer {
                blob: LayerBlob {
                    media_type: match d.media_type.as_str() {
                        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                            super::layer::GZIP_LAYER.to_string()
                        }
                        other => other.to_string(),
                    },
                    digest: d.digest.clone(),
                    size: d.size,
                    diff_id: diff.clone(),
                    annotations: d
                        .annotations
                        .clone()
                        .map(|a| a.into_iter().collect())
                        .unwrap_or_default(),
                },
                remote: Some(img.reference.clone()),
            })
            .collect();
        Ok(StageResult {
            config: img.config.clone(),
            layers,
            top,
            key: hex_key(&["image", &img.manifest.to_string(), &platform.to_string()]),
        })
    }

    async fn run_stage(self: Arc<Self>, i: usize) -> Result<StageResult, BuildError> {
        let st = self.req.dockerfile.stages[i].clone();
        let base = self.base_name(i)?;
        let res = match self.stage_index(&base, i) {
            Some(j) => self.clone().stage(j).await?,
            None => {
                // `FROM --platform=…` picks the base image's platform (variables expanded).
                let platform = match st.from.flag("platform") {
                    Some(p) => {
                        let p = expand(p, self.req.dockerfile.escape, &|n| {
                            self.global_args.get(n).cloned()
                        })
                        .map_err(|e| BuildError::Instruction {
                            line: st.from.line,
                            message: e.0,
                        })?;
                        Some(Platform::parse(&p).map_err(|e| BuildError::Instruction {
                            line: st.from.line,
                            message: format!("FROM --platform={p}: {e}"),
                        })?)
                    }
                    None => None,
                };
                self.image(&base, platform.as_ref(), st.from.line).await?
            }
        };
        let mut state = StageState {
            res,
            args: HashMap::new(),
        };
        let label = st.name.clone().unwrap_or_else(|| format!("stage-{i}"));
        let total = st.steps.len();
        for (n, ins) in st.steps.iter().enumerate() {
            let title = format!("[{label} {}/{total}] {}", n + 1, ins.text);
            self.step(&mut state, i, ins, &title).await?;
        }
        Ok(state.res)
    }

    async fn step(
        self: &Arc<Self>,
        state: &mut StageState,
        stage: usize,
        ins: &Instruction,
        title: &str,
    ) -> Result<(), BuildError> {
        let esc = self.req.dockerfile.escape;
        let bad = |m: String| BuildError::Instruction {
            line: ins.line,
            message: m,
        };
        match ins.keyword {
            Keyword::From => unreachable!("FROM starts a stage"),
            Keyword::Env => {
                let kv = key_values(&ins.args, esc, true, &state.lookup()).map_err(|e| bad(e.0))?;
                for (k, v) in kv {
                    set_env(&mut state.res.config, &k, &v);
                }
                state.history(&ins.text, true);
            }
            Keyword::Arg => {
                let decls = arg_decls(ins, esc, &state.lookup())?;
                for (k, default) in decls {
                    let v = self
                        .req
                        .build_args
                        .get(&k)
                        .cloned()
                        .or(default)
                        .or_else(|| self.global_args.get(&k).cloned())
                        .unwrap_or_default();
                    state.args.insert(k, v);
                }
            }
            Keyword::Workdir => {
                let d = expand(ins.args.trim(), esc, &state.lookup()).map_err(|e| bad(e.0))?;
                let d = if d.starts_with('/') {
                    d
                } else {
                    let cur = str_field(&state.res.config, "WorkingDir");
                    format!(
                        "{}/{d}",
                        if cur.is_empty() {
                            ""
                        } else {
                            cur.trim_end_matches('/')
                        }
                    )
                };
                state.res.config["config"]["WorkingDir"] = serde_json::Value::String(d);
                state.history(&ins.text, true);
            }
            Keyword::User => {
                let u = expand(ins.args.trim(), esc, &state.lookup()).map_err(|e| bad(e.0))?;
                state.res.config["config"]["User"] = serde_json::Value::String(u);
                state.history(&ins.text, true);
            }
            Keyword::Label => {
                let kv =
                    key_values(&ins.args, esc, false, &state.lookup()).map_err(|e| bad(e.0))?;
                for (k, v) in kv {
                    if !state.res.config["config"]["Labels"].is_object() {
                        state.res.config["config"]["Labels"] = serde_json::json!({});
                    }
                    state.res.config["config"]["Labels"][k] = serde_json::Value::String(v);
                }
                state.history(&ins.text, true);
            }
            Keyword::Expose => {
                let toks = raw_tokens(&ins.args, esc).map_err(|e| bad(e.0))?;
                for t in toks {
                    let p = process(&t, esc, &state.lookup()).map_err(|e| bad(e.0))?;
                    let (port, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                    if port.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp" | "sctp") {
                        return Err(bad(format!("EXPOSE {p:?}: not PORT[/tcp|udp|sctp]")));
                    }
                    if !state.res.config["config"]["ExposedPorts"].is_object() {
                        state.res.config["config"]["ExposedPorts"] = serde_json::json!({});
                    }
                    state.res.config["config"]["ExposedPorts"][format!("{port}/{proto}")] =
                        serde_json::json!({});
                }
                state.history(&ins.text, true);
            }
            Keyword::Cmd | Keyword::Entrypoint => {
                let v = match &ins.json {
                    Some(j) => j.clone(),
                    None => vec!["/bin/sh".into(), "-c".into(), ins.args.clone()],
                };
                let field = if ins.keyword == Keyword::Cmd {
                    "Cmd"
                } else {
                    "Entrypoint"
                };
                state.res.config["config"][field] = serde_json::json!(v);
                if ins.keyword == Keyword::Entrypoint
                    && !stage_sets_cmd_before(&self.req.dockerfile, stage, ins.line)
                {
                    // An ENTRYPOINT drops the CMD inherited from the base image.
                    state.res.config["config"]["Cmd"] = serde_json::Value::Null;
                }
                state.history(&ins.text, true);
            }
            Keyword::Run => self.run(state, ins, title).await?,
            Keyword::Copy | Keyword::Add => self.copy(state, stage, ins, title).await?,
        }
        Ok(())
    }

    fn count(&self, executed: bool) {
        if let Ok(mut s) = self.stats.lock() {
            if executed {
                s.executed += 1;
            } else {
                s.cached += 1;
            }
        }
    }

    /// The cached result of `key`, when usable.
    fn cached(&self, key: &str) -> Option<Record> {
        if self.req.no_cache {
            return None;
        }
        let r = self.w.cache.get(key)?;
        let ok = self.w.snapshotter.stat(&r.snapshot).is_ok()
            && r.layer
                .digest
                .parse()
                .map(|d| self.w.content.blob_path(&d).is_file())
                .unwrap_or(false);
        ok.then_some(r)
    }

    fn apply(&self, state: &mut StageState, key: String, rec: &Record, ins: &Instruction) {
        state.res.top = Some(rec.snapshot.clone());
        state.res.key = key;
        state.res.layers.push(ImageLayer {
            blob: rec.layer.clone(),
            remote: None,
        });
        match state.res.config["rootfs"]["diff_ids"].as_array_mut() {
            Some(a) => a.push(serde_json::Value::String(rec.layer.diff_id.clone())),
            None => {
                state.res.config["rootfs"] =
                    serde_json::json!({"type": "layers", "diff_ids": [rec.layer.diff_id]})
            }
        }
        state.history(&ins.text, false);
    }

    async fn run(
        self: &Arc<Self>,
        state: &mut StageState,
        ins: &Instruction,
        title: &str,
    ) -> Result<(), BuildError> {
        let args = match &ins.json {
            Some(j) => j.clone(),
            None => vec!["/bin/sh".into(), "-c".into(), ins.args.clone()],
        };
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
        let user = str_field(&state.res.config, "User");
        let cwd = str_field(&state.res.config, "WorkingDir");
        let key = hex_key(&[
            &state.res.key,
            "RUN",
            &serde_json::to_string(&args).unwrap_or_default(),
            &env.join("\n"),
            &user,
            &cwd,
            if self.req.estargz { "estargz" } else { "gzip" },
        ]);
        let v = self.progress.vertex(title);
        if let Some(rec) = self.cached(&key) {
            v.cached();
            self.w.cache.touch(&key);
            self.apply(state, key, &rec, ins);
            self.count(false);
            return Ok(());
        }
        let _permit = self.w.parallelism.clone().acquire_owned().await;
        let snap = self.w.snapshotter.clone();
        let parent = state.res.top.clone();
        let active = {
            let p = parent.clone();
            blocking(move || Active::new(&snap, p.as_deref())).await
        };
        let active = match active {
            Ok(a) => a,
            Err(e) => {
                v.error(&e);
                return Err(BuildError::step(ins, e));
            }
        };
        let process = StepProcess {
            args,
            env,
            cwd: if cwd.is_empty() { "/".into() } else { cwd },
            user,
            hostname: String::new(),
        };
        let vertex = Arc::new(v);
        let rx = self.w.cancel.clone();
        let ran = self
            .w
            .executor
            .run(&active.mounts, &process, vertex.clone(), rx, None)
            .await;
        if let Err(e) = ran {
            vertex.error(&e);
            let err = BuildError::exec(ins, e);
            drop(tokio::task::spawn_blocking(move || drop(active)).await);
            return Err(err);
        }
        let (w, name, k, estargz) = (
            self.w.clone(),
            format!("build/{key}"),
            key.clone(),
            self.req.estargz,
        );
        let finished =
            blocking(move || active.finish(&w, parent.as_deref(), &name, &k, estargz)).await;
        let (snapshot, layer) = match finished {
            Ok(x) => x,
            Err(e) => {
                vertex.error(&e);
                return Err(BuildError::step(ins, e));
            }
        };
        self.executed(state, ins, key, snapshot, layer)?;
        vertex.done();
        Ok(())
    }

    async fn copy(
        self: &Arc<Self>,
        state: &mut StageState,
        stage: usize,
        ins: &Instruction,
        title: &str,
    ) -> Result<(), BuildError> {
        let esc = self.req.dockerfile.escape;
        let bad = |m: String| BuildError::Instruction {
            line: ins.line,
            message: m,
        };
        let words: Vec<String> = match &ins.json {
            Some(j) => j.clone(),
            None => raw_tokens(&ins.args, esc)
                .map_err(|e| bad(e.0))?
                .iter()
                .map(|t| process(t, esc, &state.lookup()))
                .collect::<Result<_, _>>()
                .map_err(|e| bad(e.0))?,
        };
        if words.len() < 2 {
            return Err(bad(format!(
                "{} needs at least one source and a destination",
                ins.text
            )));
        }
        let (srcs, dest) = words.split_at(words.len() - 1);
        let dest = dest[0].clone();
        if ins.keyword == Keyword::Add {
            if let Some(u) = srcs.iter().find(|s| s.contains("://")) {
                return Err(bad(format!(
                    "ADD {u}: remote URLs are not supported; download it in a RUN step"
                )));
            }
        }
        let chown = ins
            .flag("chown")
            .map(|c| expand(c, esc, &state.lookup()))
            .transpose()
            .map_err(|e| bad(e.0))?;
        let chmod = ins
            .flag("chmod")
            .map(copy::parse_chmod)
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        // The source tree: the context, or another stage's (or image's) rootfs.
        let (from_key, from_top) = match ins.flag("from") {
            None => ("context".to_string(), None),
            Some(f) => {
                let f = expand(f, esc, &state.lookup()).map_err(|e| bad(e.0))?;
                let r = match self.stage_index(&f, stage) {
                    Some(j) => self.clone().stage(j).await?,
                    None if self
                        .req
                        .dockerfile
                        .stages
                        .iter()
                        .any(|s| s.name.as_deref() == Some(&f.to_ascii_lowercase())) =>
                    {
                        return Err(bad(format!(
                            "COPY --from={f}: a stage can only copy from stages before it"
                        )))
                    }
                    None => self.image(&f, None, ins.line).await?,
                };
                (r.key.clone(), Some(r.top))
            }
        };
        let v = self.progress.vertex(title);
        let snap = self.w.snapshotter.clone();
        let tmp = self.w.tmp.clone();
        let context = self.req.context.clone();
        let srcs_v: Vec<String> = srcs.to_vec();
        let ft = from_top.clone();
        // Resolve and digest the sources (with the source tree mounted when it is a stage).
        let digest = blocking(move || -> Result<String, BuildError> {
            let (_mnt, _view, root) = source_root(&snap, &tmp, &context, ft.as_ref())?;
            let sources = copy::resolve_sources(&root, &srcs_v)
                .map_err(|e| BuildError::Export(e.to_string()))?;
            Ok(copy::digest_sources(&sources)
                .map_err(|e| BuildError::Export(e.to_string()))?
                .hex())
        })
        .await
        .map_err(|e| {
            let m = strip_export(e);
            v.error(&m);
            BuildError::step(ins, m)
        })?;
        let workdir = str_field(&state.res.config, "WorkingDir");
        let key = hex_key(&[
            &state.res.key,
            if ins.keyword == Keyword::Add {
                "ADD"
            } else {
                "COPY"
            },
            &from_key,
            &digest,
            &srcs.join("\n"),
            &dest,
            chown.as_deref().unwrap_or(""),
            &chmod.map(|m| format!("{m:o}")).unwrap_or_default(),
            &workdir,
            if self.req.estargz { "estargz" } else { "gzip" },
        ]);
        if let Some(rec) = self.cached(&key) {
            v.cached();
            self.w.cache.touch(&key);
            self.apply(state, key, &rec, ins);
            self.count(false);
            return Ok(());
        }
        let (w, parent, k, estargz) = (
            self.w.clone(),
            state.res.top.clone(),
            key.clone(),
            self.req.estargz,
        );
        let context = self.req.context.clone();
        let srcs_v: Vec<String> = srcs.to_vec();
        let from_context = from_top.is_none();
        let add = ins.keyword == Keyword::Add;
        let done = blocking(move || -> Result<(String, LayerBlob), BuildError> {
            let snap = w.snapshotter.clone();
            let active = Active::new(&snap, parent.as_deref())?;
            {
                let target = Mounted::new(&w.tmp, &active.mounts)?;
                let (_mnt, _view, root) = source_root(&snap, &w.tmp, &context, from_top.as_ref())?;
                let sources = copy::resolve_sources(&root, &srcs_v)
                    .map_err(|e| BuildError::Export(e.to_string()))?;
                let owner = match &chown {
                    Some(c) => {
                        let u = user::resolve(&target.dir, c)
                            .map_err(|e| BuildError::Export(e.to_string()))?;
                        Some((u.uid, u.gid))
                    }
                    None => None,
                };
                let opts = CopyOptions {
                    owner,
                    mode: chmod,
                    from_context,
                    unpack_archives: add && from_context,
                };
                copy::copy_into(
                    &target.dir,
                    &sources,
                    &dest,
                    if workdir.is_empty() { "/" } else { &workdir },
                    &opts,
                )
                .map_err(|e| BuildError::Export(e.to_string()))?;
            }
            active.finish(&w, parent.as_deref(), &format!("build/{k}"), &k, estargz)
        })
        .await;
        let (snapshot, layer) = match done {
            Ok(x) => x,
            Err(e) => {
                let m = strip_export(e);
                v.error(&m);
                return Err(BuildError::step(ins, m));
            }
        };
        self.executed(state, ins, key, snapshot, layer)?;
        v.done();
        Ok(())
    }

    /// A step that ran: its record goes into the step cache and its layer onto the stage.
    fn executed(
        &self,
        state: &mut StageState,
        ins: &Instruction,
        key: String,
        snapshot: String,
        layer: LayerBlob,
    ) -> Result<(), BuildError> {
        let rec = Record {
            snapshot,
            layer,
            created_by: ins.text.clone(),
            last_used: now_millis(),
        };
        self.w
            .cache
            .put(&key, &rec)
            .map_err(io("writing the step cache"))?;
        self.apply(state, key, &rec, ins);
        self.count(true);
        Ok(())
    }
}

/// The message of an internal error without its `export:` prefix.
fn strip_export(e: BuildError) -> String {
    match e {
        BuildError::Export(m) => m,
        other => other.to_string(),
    }
}

/// Whether stage `stage` sets CMD before `line` (then ENTRYPOINT keeps it).
fn stage_sets_cmd_before(df: &Dockerfile, stage: usize, line: usize) -> bool {
    df.stages[stage]
        .steps
        .iter()
        .any(|s| s.keyword == Keyword::Cmd && s.line < line)
}

/// Guards drop in field order: the mount goes before the view it mounts.
type SourceGuards = (Option<Mounted>, Option<View>, SourceRoot);

/// The tree COPY reads from: the context, or a stage's rootfs mounted read-only.
fn source_root(
    snap: &Arc<dyn Snapshotter>,
    tmp: &Path,
    context: &Path,
    from_top: Option<&Option<String>>,
) -> Result<SourceGuards, BuildError> {
    match from_top {
        None => Ok((None, None, SourceRoot::Context(context.to_path_buf()))),
        Some(None) => {
            // An empty stage (scratch): an empty tree.
            let dir = tmp.join(format!("empty-{}", random_suffix()));
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            Ok((None, None, SourceRoot::Image(dir)))
        }
        Some(Some(top)) => {
            let view = View::new(snap, top)?;
            let mnt = Mounted::new(tmp, &view.mounts)?;
            let root = SourceRoot::Image(mnt.dir.clone());
            Ok((Some(mnt), Some(view), root))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_000_000), "2025-11-24T16:00:00Z");
    }
}
