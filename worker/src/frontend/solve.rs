//! The stage graph and its scheduling: the stages the target needs run concurrently (a
//! stage waits only for the stages it names in FROM or COPY --from), each computed once and
//! shared by everything waiting for it, and each runs its instructions in order. The
//! metadata instructions change the stage's image config (`instructions`); RUN
//! (`run_step`) and COPY/ADD (`copy_step`) add layers through the step cache (`step`); the
//! base of a stage is another stage or an image (`from`).

use super::cache::now;
use super::dockerfile::{parse_trigger, Instruction, Keyword, ParseError};
use super::image_config::{rfc3339, ImageConfig};
use super::instructions::{self, arg_decls, env_of, InstructionError};
use super::progress::Progress;
use super::request::{BuildOutput, BuildRequest, BuildStats, StageResult, Worker};
use super::words::expand;
use super::BuildError;
use stargaze_fs::digest::Hasher;
use stargaze_fs::remote::Platform;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// A stage's (or base image's) result, computed once and shared by everything waiting.
pub(super) type Shared = OnceCell<Result<StageResult, Arc<BuildError>>>;

/// One build: the request, the worker, and the shared results of stages and images.
pub(super) struct Ctx {
    pub(super) w: Arc<Worker>,
    pub(super) req: BuildRequest,
    pub(super) progress: Arc<Progress>,
    stages: Vec<Shared>,
    pub(super) images: tokio::sync::Mutex<HashMap<String, Arc<Shared>>>,
    pub(super) global_args: HashMap<String, String>,
    pub(super) stats: std::sync::Mutex<BuildStats>,
}

/// A cache key: the digest of `parts`, each ended by a NUL.
pub(super) fn hex_key(parts: &[&str]) -> String {
    let mut h = Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    h.finish().hex()
}

/// Runs `f` on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(f).await?
}

/// Builds `req` on `w`, reporting to `progress`.
pub async fn build(
    w: Arc<Worker>,
    req: BuildRequest,
    progress: Arc<Progress>,
) -> Result<BuildOutput, BuildError> {
    let esc = req.dockerfile.escape;
    // The automatic platform ARGs are defined before FROM (a build arg overrides them).
    let mut global_args: HashMap<String, String> = platform_args(&Platform::host(), &req.platform)
        .into_iter()
        .map(|(k, v)| {
            let v = req.build_args.get(&k).cloned().unwrap_or(v);
            (k, v)
        })
        .collect();
    for a in &req.dockerfile.global_args {
        let decls =
            arg_decls(a, esc, &|n| global_args.get(n).cloned()).map_err(|e| e.at(a.line))?;
        for (name, value) in decls {
            let v = req
                .build_args
                .get(&name)
                .cloned()
                .or(value)
                .or_else(|| global_args.get(&name).cloned())
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
            .ok_or_else(|| InstructionError::Target(t.clone()).at(0))?,
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

/// The automatic platform ARGs of a build on `build` for `target`: `BUILDPLATFORM`,
/// `BUILDOS`, `BUILDARCH`, `BUILDVARIANT` and the same four `TARGET…`.
pub fn platform_args(build: &Platform, target: &Platform) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (prefix, p) in [("BUILD", build), ("TARGET", target)] {
        out.push((format!("{prefix}PLATFORM"), p.to_string()));
        out.push((format!("{prefix}OS"), p.os.clone()));
        out.push((format!("{prefix}ARCH"), p.architecture.clone()));
        out.push((
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        ));
    }
    out
}

/// The proxy build args (`HTTP_PROXY`, `HTTPS_PROXY`, `FTP_PROXY`, `NO_PROXY`, `ALL_PROXY`, in
/// either case) as RUN's environment gets them without an `ARG`: each set in both cases.
/// Like BuildKit, they are not part of a step's cache key.
pub fn proxy_env(build_args: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "FTP_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    ] {
        let v = build_args
            .get(name)
            .or_else(|| build_args.get(&name.to_ascii_lowercase()));
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.push(format!("{name}={v}"));
            out.push(format!("{}={v}", name.to_ascii_lowercase()));
        }
    }
    out
}

/// Variable values: the environment of `config` first (as it is now), then `args`.
fn vars<'a>(
    config: &ImageConfig,
    args: &'a HashMap<String, String>,
) -> impl Fn(&str) -> Option<String> + 'a {
    let env = env_of(config);
    move |n: &str| {
        env.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .or_else(|| args.get(n).cloned())
    }
}

/// Where a stage stands while its instructions run.
pub(super) struct StageState {
    pub(super) res: StageResult,
    pub(super) args: HashMap<String, String>,
}

impl StageState {
    /// Variable values: the environment first, then the stage's ARGs.
    pub(super) fn lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        vars(&self.res.config, &self.args)
    }

    /// Records `created_by` in the history, now.
    pub(super) fn history(&mut self, created_by: &str, empty: bool) {
        instructions::history(&mut self.res.config, created_by, empty, rfc3339(now()));
    }
}

impl Ctx {
    /// Index of the stage `name` refers to (by name or number), if it is one before `before`.
    pub(super) fn stage_index(&self, name: &str, before: usize) -> Option<usize> {
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

    /// Variables of FROM lines: the global ARGs.
    fn global_lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        |n: &str| self.global_args.get(n).cloned()
    }

    fn base_name(&self, i: usize) -> Result<String, BuildError> {
        let st = &self.req.dockerfile.stages[i];
        expand(&st.base, self.req.dockerfile.escape, &self.global_lookup())
            .map_err(|e| InstructionError::from(e).at(st.from.line))
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

    /// The result of stage `i`, run once however many wait for it.
    pub(super) fn stage(
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
                .get_or_init(|| async move { me.run_stage(i).await.map_err(Arc::new) })
                .await;
            r.clone().map_err(|source| BuildError::Dependency {
                stage: name,
                source,
            })
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
                        let bad = |e: InstructionError| e.at(st.from.line);
                        let p = expand(p, self.req.dockerfile.escape, &self.global_lookup())
                            .map_err(|e| bad(e.into()))?;
                        let platform = p.parse::<Platform>().map_err(|reason| {
                            bad(InstructionError::FromPlatform { value: p, reason })
                        })?;
                        Some(platform)
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
        // The base's ONBUILD triggers run first; they are not passed on.
        for t in state.res.config.take_on_build() {
            let mut ins = parse_trigger(&t, self.req.dockerfile.escape).map_err(|e| {
                BuildError::Parse(ParseError {
                    line: st.from.line,
                    message: format!("ONBUILD trigger of the base: {}", e.message),
                })
            })?;
            ins.line = st.from.line;
            let title = format!("[{label} onbuild] {}", ins.text);
            self.step(&mut state, i, &ins, &title).await?;
        }
        let total = st.steps.len();
        for (n, ins) in st.steps.iter().enumerate() {
            let title = format!("[{label} {}/{total}] {}", n + 1, ins.text);
            self.step(&mut state, i, ins, &title).await?;
        }
        Ok(state.res)
    }

    /// Runs one instruction of stage `stage`.
    async fn step(
        self: &Arc<Self>,
        state: &mut StageState,
        stage: usize,
        ins: &Instruction,
        title: &str,
    ) -> Result<(), BuildError> {
        let bad = |e: InstructionError| e.at(ins.line);
        match ins.keyword {
            Keyword::From => Err(bad(InstructionError::FromInStage)),
            Keyword::Arg => self.arg(state, ins).map_err(bad),
            Keyword::Run => self.run(state, stage, ins, title).await,
            Keyword::Copy | Keyword::Add => self.copy(state, stage, ins, title).await,
            Keyword::Workdir => {
                self.metadata(state, stage, ins).map_err(bad)?;
                self.make_workdir(state, ins, title).await
            }
            _ => {
                self.metadata(state, stage, ins).map_err(bad)?;
                state.history(&ins.text, true);
                Ok(())
            }
        }
    }

    /// `ARG`: the stage's variables get the build arg, else the default, else the global.
    fn arg(&self, state: &mut StageState, ins: &Instruction) -> Result<(), InstructionError> {
        let decls = arg_decls(ins, self.req.dockerfile.escape, &state.lookup())?;
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
        Ok(())
    }

    /// An instruction that changes only the image config.
    fn metadata(
        &self,
        state: &mut StageState,
        stage: usize,
        ins: &Instruction,
    ) -> Result<(), InstructionError> {
        let esc = self.req.dockerfile.escape;
        let lookup = vars(&state.res.config, &state.args);
        let cfg = &mut state.res.config;
        match ins.keyword {
            Keyword::Env => instructions::env(cfg, ins, esc, &lookup)?,
            Keyword::Workdir => instructions::workdir(cfg, ins, esc, &lookup)?,
            Keyword::User => instructions::user(cfg, ins, esc, &lookup)?,
            Keyword::Label => instructions::label(cfg, ins, esc, &lookup)?,
            Keyword::Expose => instructions::expose(cfg, ins, esc, &lookup)?,
            Keyword::Cmd => instructions::cmd(cfg, ins),
            Keyword::Shell => instructions::shell(cfg, ins),
            Keyword::Onbuild => instructions::onbuild(cfg, ins),
            Keyword::Entrypoint => {
                let steps = &self.req.dockerfile.stages[stage].steps;
                instructions::entrypoint(cfg, ins, instructions::cmd_set_before(steps, ins));
            }
            Keyword::From | Keyword::Arg | Keyword::Run | Keyword::Copy | Keyword::Add => {
                unreachable!("not a metadata instruction")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_args_name_both_platforms() {
        let build = Platform::parse("linux/amd64").unwrap();
        let target = Platform::parse("linux/arm/v7").unwrap();
        let args: HashMap<_, _> = platform_args(&build, &target).into_iter().collect();
        assert_eq!(args["BUILDPLATFORM"], "linux/amd64");
        assert_eq!(args["BUILDOS"], "linux");
        assert_eq!(args["BUILDARCH"], "amd64");
        assert_eq!(args["BUILDVARIANT"], "");
        assert_eq!(args["TARGETPLATFORM"], "linux/arm/v7");
        assert_eq!(args["TARGETARCH"], "arm");
        assert_eq!(args["TARGETVARIANT"], "v7");
        assert_eq!(args.len(), 8);
    }

    #[test]
    fn proxy_args_in_both_cases_and_nothing_else() {
        let args = std::collections::BTreeMap::from([
            ("http_proxy".to_string(), "h".to_string()),
            ("NO_PROXY".to_string(), "n".to_string()),
            ("FOO".to_string(), "f".to_string()),
            ("HTTPS_PROXY".to_string(), String::new()),
        ]);
        assert_eq!(
            proxy_env(&args),
            ["HTTP_PROXY=h", "http_proxy=h", "NO_PROXY=n", "no_proxy=n"]
        );
    }
}
