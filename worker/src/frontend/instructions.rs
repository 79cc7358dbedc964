//! The metadata instructions (ENV, ARG, WORKDIR, USER, LABEL, EXPOSE, CMD, ENTRYPOINT) as
//! pure functions over a stage's typed image config: each takes the instruction, the
//! variables it may expand and the config, and changes the config or says what is wrong.
//! Nothing here touches the file system, so these rules are tested without root; the
//! steps that do (RUN, COPY, ADD) read the config through the accessors here.

use super::dockerfile::{Instruction, Keyword};
use super::image_config::ImageConfig;
use super::words::{expand, key_values, process, raw_tokens, WordError};
use crate::frontend::copy::CopyError;
use oci_spec::image::History;
use stargaze_fs::remote::{Platform, ReferenceError};

/// Variable values an instruction expands (`$name`, `${name}`).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What is wrong with an instruction's arguments.
#[derive(Debug, thiserror::Error)]
pub enum InstructionError {
    /// Quoting, escapes or `${…}` forms.
    #[error(transparent)]
    Words(#[from] WordError),
    /// An `ARG` name with characters other than letters, digits and `_`.
    #[error("ARG name {0:?} is not a valid name")]
    ArgName(String),
    /// An `EXPOSE` port that is not `PORT[/PROTO]`.
    #[error("EXPOSE {0:?}: not PORT[/tcp|udp|sctp]")]
    Expose(String),
    /// `--target` names no stage.
    #[error("target stage {0:?} not found")]
    Target(String),
    /// `FROM` names no valid image reference.
    #[error("FROM {name}: {source}")]
    FromReference {
        /// The name as expanded.
        name: String,
        /// Why it is not a reference.
        #[source]
        source: ReferenceError,
    },
    /// `FROM --platform=` names no platform (the value as expanded, and why, are in the
    /// platform parser's error).
    #[error("FROM --platform: {0}")]
    FromPlatform(<Platform as std::str::FromStr>::Err),
    /// COPY or ADD without a source or a destination.
    #[error("{0} needs at least one source and a destination")]
    CopyArgs(String),
    /// ADD of a URL.
    #[error("ADD {0}: remote URLs are not supported; download it in a RUN step")]
    AddUrl(String),
    /// `--chmod` that is not an octal mode.
    #[error(transparent)]
    Chmod(CopyError),
    /// `COPY --from` names this stage or a later one.
    #[error("COPY --from={0}: a stage can only copy from stages before it")]
    CopyFromLater(String),
}

impl InstructionError {
    /// This error as the build's, at Dockerfile line `line`.
    pub fn at(self, line: usize) -> super::BuildError {
        super::BuildError::Instruction { line, source: self }
    }
}

/// The command of RUN, CMD or ENTRYPOINT: the exec form as written, or the shell form
/// through `/bin/sh -c`.
pub fn command(ins: &Instruction) -> Vec<String> {
    match &ins.json {
        Some(j) => j.clone(),
        None => vec!["/bin/sh".into(), "-c".into(), ins.args.clone()],
    }
}

/// The environment of `cfg` as pairs, in order (entries without `=` left out).
pub fn env_of(cfg: &ImageConfig) -> Vec<(String, String)> {
    cfg.config()
        .and_then(|c| c.env().as_ref())
        .map(|env| {
            env.iter()
                .filter_map(|s| s.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `config.User` (empty when unset).
pub fn user_of(cfg: &ImageConfig) -> String {
    cfg.config()
        .and_then(|c| c.user().clone())
        .unwrap_or_default()
}

/// `config.WorkingDir` (empty when unset).
pub fn working_dir_of(cfg: &ImageConfig) -> String {
    cfg.config()
        .and_then(|c| c.working_dir().clone())
        .unwrap_or_default()
}

/// Sets `k=v` in the environment (in place when `k` is there, else at the end).
pub fn set_env(cfg: &mut ImageConfig, k: &str, v: &str) {
    let mut env = env_of(cfg);
    match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    }
    cfg.edit_config(|c| {
        c.set_env(Some(
            env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        ));
    });
}

/// `ARG name[=default] …`: the names with their defaults (expanded).
pub fn arg_decls(
    ins: &Instruction,
    esc: char,
    lookup: Lookup,
) -> Result<Vec<(String, Option<String>)>, InstructionError> {
    let mut out = Vec::new();
    for t in raw_tokens(&ins.args, esc)? {
        match t.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), Some(process(v, esc, lookup)?))),
            None => out.push((t, None)),
        }
    }
    if let Some((k, _)) = out
        .iter()
        .find(|(k, _)| k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(InstructionError::ArgName(k.clone()));
    }
    Ok(out)
}

/// `ENV k=v …` (or the legacy `ENV k v`); every value sees the variables as they were
/// before the instruction.
pub fn env(
    cfg: &mut ImageConfig,
    ins: &Instruction,
    esc: char,
    lookup: Lookup,
) -> Result<(), InstructionError> {
    for (k, v) in key_values(&ins.args, esc, true, lookup)? {
        set_env(cfg, &k, &v);
    }
    Ok(())
}

/// `WORKDIR dir`: absolute, or relative to the current one.
pub fn workdir(
    cfg: &mut ImageConfig,
    ins: &Instruction,
    esc: char,
    lookup: Lookup,
) -> Result<(), InstructionError> {
    let d = expand(ins.args.trim(), esc, lookup)?;
    let d = if d.starts_with('/') {
        d
    } else {
        let cur = working_dir_of(cfg);
        format!("{}/{d}", cur.trim_end_matches('/'))
    };
    cfg.edit_config(|c| {
        c.set_working_dir(Some(d));
    });
    Ok(())
}

/// `USER user[:group]`.
pub fn user(
    cfg: &mut ImageConfig,
    ins: &Instruction,
    esc: char,
    lookup: Lookup,
) -> Result<(), InstructionError> {
    let u = expand(ins.args.trim(), esc, lookup)?;
    cfg.edit_config(|c| {
        c.set_user(Some(u));
    });
    Ok(())
}

/// `LABEL k=v …`.
pub fn label(
    cfg: &mut ImageConfig,
    ins: &Instruction,
    esc: char,
    lookup: Lookup,
) -> Result<(), InstructionError> {
    let kv = key_values(&ins.args, esc, false, lookup)?;
    cfg.edit_config(|c| {
        let mut labels = c.labels().clone().unwrap_or_default();
        labels.extend(kv);
        c.set_labels(Some(labels));
    });
    Ok(())
}

/// `EXPOSE port[/proto] …` (proto `tcp` when left out).
pub fn expose(
    cfg: &mut ImageConfig,
    ins: &Instruction,
    esc: char,
    lookup: Lookup,
) -> Result<(), InstructionError> {
    let mut ports = Vec::new();
    for t in raw_tokens(&ins.args, esc)? {
        let p = process(&t, esc, lookup)?;
        let (port, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
        if port.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp" | "sctp") {
            return Err(InstructionError::Expose(p));
        }
        ports.push(format!("{port}/{proto}"));
    }
    cfg.edit_config(|c| {
        let mut all = c.exposed_ports().clone().unwrap_or_default();
        for p in ports {
            if !all.contains(&p) {
                all.push(p);
            }
        }
        c.set_exposed_ports(Some(all));
    });
    Ok(())
}

/// `CMD`.
pub fn cmd(cfg: &mut ImageConfig, ins: &Instruction) {
    let v = command(ins);
    cfg.edit_config(|c| {
        c.set_cmd(Some(v));
    });
}

/// `ENTRYPOINT`; it drops the CMD inherited from the base image unless the stage set one
/// before (`keeps_cmd`).
pub fn entrypoint(cfg: &mut ImageConfig, ins: &Instruction, keeps_cmd: bool) {
    let v = command(ins);
    cfg.edit_config(|c| {
        c.set_entrypoint(Some(v));
    });
    if !keeps_cmd {
        cfg.clear_cmd();
    }
}

/// Whether `ins` (an ENTRYPOINT) comes after a CMD among `steps`, its stage's instructions.
pub fn cmd_set_before(steps: &[Instruction], ins: &Instruction) -> bool {
    steps
        .iter()
        .any(|s| s.keyword == Keyword::Cmd && s.line < ins.line)
}

/// Records an instruction in the history: `empty` when it added no layer; `created` in
/// RFC 3339.
pub fn history(cfg: &mut ImageConfig, created_by: &str, empty: bool, created: String) {
    let mut h = History::default();
    h.set_created(Some(created));
    h.set_created_by(Some(created_by.to_string()));
    h.set_comment(Some("stargaze build".into()));
    h.set_empty_layer(Some(empty));
    cfg.push_history(h);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::dockerfile::parse;
    use std::collections::HashMap;

    /// The steps of a one-stage Dockerfile with `body` after `FROM scratch`.
    fn steps(body: &str) -> Vec<Instruction> {
        let df = parse(&format!("FROM scratch\n{body}")).unwrap();
        df.stages[0].steps.clone()
    }

    /// Applies the metadata instructions of `body` to a scratch config.
    fn apply(body: &str, vars: &HashMap<&str, &str>) -> Result<ImageConfig, InstructionError> {
        let mut cfg = ImageConfig::scratch(&Platform::parse("linux/amd64").unwrap());
        let all = steps(body);
        for ins in &all {
            let env = env_of(&cfg);
            let lookup = |n: &str| {
                env.iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
                    .or_else(|| vars.get(n).map(|v| v.to_string()))
            };
            match ins.keyword {
                Keyword::Env => env_ins(&mut cfg, ins, &lookup)?,
                Keyword::Workdir => workdir(&mut cfg, ins, '\\', &lookup)?,
                Keyword::User => user(&mut cfg, ins, '\\', &lookup)?,
                Keyword::Label => label(&mut cfg, ins, '\\', &lookup)?,
                Keyword::Expose => expose(&mut cfg, ins, '\\', &lookup)?,
                Keyword::Cmd => cmd(&mut cfg, ins),
                Keyword::Entrypoint => entrypoint(&mut cfg, ins, cmd_set_before(&all, ins)),
                k => panic!("not a metadata instruction: {k:?}"),
            }
            history(&mut cfg, &ins.text, true, "2025-01-01T00:00:00Z".into());
        }
        Ok(cfg)
    }

    fn env_ins(
        cfg: &mut ImageConfig,
        ins: &Instruction,
        l: Lookup,
    ) -> Result<(), InstructionError> {
        env(cfg, ins, '\\', l)
    }

    fn doc(cfg: &ImageConfig) -> serde_json::Value {
        cfg.to_value().unwrap()
    }

    #[test]
    fn env_sets_in_place_and_sees_the_old_values() {
        let cfg = apply("ENV A=1 B=2\nENV A=3 C=$A\nENV D ${B}x y", &HashMap::new()).unwrap();
        assert_eq!(
            doc(&cfg)["config"]["Env"],
            serde_json::json!(["A=3", "B=2", "C=1", "D=2x y"])
        );
    }

    #[test]
    fn workdir_joins_relative_paths() {
        let cfg = apply(
            "WORKDIR app\nWORKDIR sub/\nWORKDIR $D",
            &HashMap::from([("D", "x")]),
        )
        .unwrap();
        assert_eq!(working_dir_of(&cfg), "/app/sub/x");
        let cfg = apply("WORKDIR /srv/\nWORKDIR y", &HashMap::new()).unwrap();
        assert_eq!(working_dir_of(&cfg), "/srv/y");
    }

    #[test]
    fn user_labels_and_ports() {
        let cfg = apply(
            "USER $U:app\nLABEL a=1 \"b c\"=2\nLABEL a=3\nEXPOSE 80 53/udp\nEXPOSE 80/tcp",
            &HashMap::from([("U", "me")]),
        )
        .unwrap();
        let d = doc(&cfg);
        assert_eq!(d["config"]["User"], "me:app");
        assert_eq!(
            d["config"]["Labels"],
            serde_json::json!({"a": "3", "b c": "2"})
        );
        assert_eq!(
            d["config"]["ExposedPorts"],
            serde_json::json!({"80/tcp": {}, "53/udp": {}})
        );
        assert_eq!(d["history"].as_array().unwrap().len(), 5);
        assert_eq!(d["history"][0]["empty_layer"], true);
        assert_eq!(d["history"][0]["comment"], "stargaze build");
        assert_eq!(d["history"][0]["created_by"], "USER $U:app");
    }

    #[test]
    fn bad_ports_and_words_are_errors() {
        for body in ["EXPOSE 70000", "EXPOSE 80/ip", "EXPOSE x"] {
            assert!(
                matches!(
                    apply(body, &HashMap::new()),
                    Err(InstructionError::Expose(_))
                ),
                "{body}"
            );
        }
        let e = apply("ENV A=\"open", &HashMap::new()).unwrap_err();
        assert!(matches!(e, InstructionError::Words(_)), "{e}");
        assert_eq!(
            InstructionError::Expose("x".into()).to_string(),
            "EXPOSE \"x\": not PORT[/tcp|udp|sctp]"
        );
    }

    #[test]
    fn entrypoint_drops_an_inherited_cmd_only() {
        let d = doc(&apply("ENTRYPOINT [\"/bin/cat\"]", &HashMap::new()).unwrap());
        assert_eq!(d["config"]["Entrypoint"], serde_json::json!(["/bin/cat"]));
        assert!(d["config"].as_object().unwrap().contains_key("Cmd"));
        assert!(d["config"]["Cmd"].is_null());
        let d = doc(&apply("CMD [\"f\"]\nENTRYPOINT cat", &HashMap::new()).unwrap());
        assert_eq!(d["config"]["Cmd"], serde_json::json!(["f"]));
        assert_eq!(
            d["config"]["Entrypoint"],
            serde_json::json!(["/bin/sh", "-c", "cat"])
        );
        let d = doc(&apply("ENTRYPOINT cat\nCMD [\"g\"]", &HashMap::new()).unwrap());
        assert_eq!(d["config"]["Cmd"], serde_json::json!(["g"]));
    }

    #[test]
    fn arg_names_are_checked() {
        let ins = &steps("ARG A=$X B")[0];
        let lookup = |n: &str| (n == "X").then(|| "x".to_string());
        assert_eq!(
            arg_decls(ins, '\\', &lookup).unwrap(),
            vec![("A".into(), Some("x".into())), ("B".into(), None)]
        );
        let ins = &steps("ARG a-b=1")[0];
        assert!(matches!(
            arg_decls(ins, '\\', &|_| None),
            Err(InstructionError::ArgName(n)) if n == "a-b"
        ));
    }
}
