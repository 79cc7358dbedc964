//! The metadata instructions (ENV, ARG, WORKDIR, USER, LABEL, EXPOSE, CMD, ENTRYPOINT, SHELL,
//! ONBUILD) as pure functions over a stage's typed image config: each takes the instruction, the
//! variables it may expand and the config, and changes the config or says what is wrong.
//! Nothing here touches the file system, so these rules are tested without root; the
//! steps that do (RUN, COPY, ADD) read the config through the accessors here.

use super::dockerfile::{Instruction, Keyword};
use super::heredoc;
use super::image_config::ImageConfig;
use super::words::{expand, key_values, process, raw_tokens, WordError};
use crate::frontend::copy::CopyError;
use oci_spec::image::History;
use stargaze_fs::remote::{PlatformError, ReferenceError};

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
    /// `FROM --platform=` names no platform.
    #[error("FROM --platform={value}: {reason}")]
    FromPlatform {
        /// The value as expanded.
        value: String,
        /// Why it is not a platform.
        reason: PlatformError,
    },
    /// A FROM among a stage's instructions (the parser starts a stage at each FROM; a
    /// stage from anywhere else is refused, never a panic).
    #[error("FROM must start a stage, not be one of its steps")]
    FromInStage,
    /// COPY or ADD without a source or a destination.
    #[error("{0} needs at least one source and a destination")]
    CopyArgs(String),
    /// A heredoc as the destination of COPY or ADD.
    #[error("{0}: a heredoc cannot be the destination")]
    HeredocDest(String),
    /// A heredoc file name COPY cannot write as one file.
    #[error("heredoc {0:?}: not a file name")]
    HeredocName(String),
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
/// through the config's `SHELL` (default `/bin/sh -c`); a RUN's heredocs as
/// `heredoc::run_command` puts them.
pub fn command(ins: &Instruction, cfg: &ImageConfig) -> Vec<String> {
    match &ins.json {
        Some(j) => j.clone(),
        None => {
            let mut v = cfg
                .shell()
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
            if ins.keyword == Keyword::Run && !ins.heredocs.is_empty() {
                v.push(heredoc::run_command(&ins.args, &ins.heredocs));
            } else {
                v.push(ins.args.clone());
            }
            v
        }
    }
}

/// `ONBUILD instruction`: the trigger goes into the config, for images built on this one.
pub fn onbuild(cfg: &mut ImageConfig, ins: &Instruction) {
    cfg.push_on_build(ins.trigger());
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

/// `SHELL`: the shell of later shell-form RUN, CMD and ENTRYPOINT (the parser has checked
/// the JSON form).
pub fn shell(cfg: &mut ImageConfig, ins: &Instruction) {
    if let Some(v) = ins.json.clone().filter(|v| !v.is_empty()) {
        cfg.set_shell(v);
    }
}

/// `CMD`.
pub fn cmd(cfg: &mut ImageConfig, ins: &Instruction) {
    let v = command(ins, cfg);
    cfg.edit_config(|c| {
        c.set_cmd(Some(v));
    });
}

/// `ENTRYPOINT`; it drops the CMD inherited from the base image unless the stage set one
/// before (`keeps_cmd`).
pub fn entrypoint(cfg: &mut ImageConfig, ins: &Instruction, keeps_cmd: bool) {
    let v = command(ins, cfg);
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
    use stargaze_fs::remote::Platform;
    use std::collections::HashMap;

    /// The steps of a one-stage Dockerfile with `body` after `FROM scratch`.
    fn steps(body: &str) -> Vec<Instruction> {
        let df = parse(&format!("FROM scratch\n{body}")).unwrap();
        df.stages[0].steps.clone()
    }

    /// Applies the metadata instructions of `body` to a scratch config.
    fn apply(body: &str, vars: &HashMap<&str, &str>) -> Result<ImageConfig, InstructionError> {
        let cfg = ImageConfig::scratch(&Platform::parse("linux/amd64").unwrap());
        apply_to(cfg, &format!("FROM scratch\n{body}"), vars)
    }

    /// Applies the metadata instructions of the one-stage Dockerfile `text` (directives
    /// included) to `cfg`, as the solver does: ENV values first, then the build args `vars`.
    fn apply_to(
        mut cfg: ImageConfig,
        text: &str,
        vars: &HashMap<&str, &str>,
    ) -> Result<ImageConfig, InstructionError> {
        let df = parse(text).unwrap();
        let esc = df.escape;
        let all = df.stages[0].steps.clone();
        for ins in &all {
            let set = env_of(&cfg);
            let lookup = |n: &str| {
                set.iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
                    .or_else(|| vars.get(n).map(|v| v.to_string()))
            };
            match ins.keyword {
                Keyword::Env => env(&mut cfg, ins, esc, &lookup)?,
                Keyword::Workdir => workdir(&mut cfg, ins, esc, &lookup)?,
                Keyword::User => user(&mut cfg, ins, esc, &lookup)?,
                Keyword::Label => label(&mut cfg, ins, esc, &lookup)?,
                Keyword::Expose => expose(&mut cfg, ins, esc, &lookup)?,
                Keyword::Cmd => cmd(&mut cfg, ins),
                Keyword::Shell => shell(&mut cfg, ins),
                Keyword::Entrypoint => entrypoint(&mut cfg, ins, cmd_set_before(&all, ins)),
                Keyword::Onbuild => onbuild(&mut cfg, ins),
                k => panic!("not a metadata instruction: {k:?}"),
            }
            history(&mut cfg, &ins.text, true, "2025-01-01T00:00:00Z".into());
        }
        Ok(cfg)
    }

    /// A base image's config the way Docker writes one.
    fn base() -> ImageConfig {
        ImageConfig::from_value(serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "docker_version": "20.10.7",
            "config": {
                "Hostname": "",
                "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
                "Cmd": ["sh"],
                "User": "nobody",
                "WorkingDir": "/srv",
                "Labels": {"b": "2", "a": "1"},
                "ExposedPorts": {"80/tcp": {}, "53/udp": {}}
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]},
            "history": [{"created_by": "ADD file:x in /"}]
        }))
        .unwrap()
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

    #[test]
    fn env_on_a_base_replaces_in_place_and_appends() {
        let cfg = apply_to(
            base(),
            "FROM b\nENV PATH=/opt/bin:$PATH HOME=/root\nENV LANG=$HOME",
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(
            env_of(&cfg),
            vec![
                ("PATH".to_string(), "/opt/bin:/usr/bin:/bin".to_string()),
                ("LANG".to_string(), "/root".to_string()),
                ("HOME".to_string(), "/root".to_string()),
            ]
        );
        // The rest of the base config is untouched.
        let d = doc(&cfg);
        assert_eq!(d["config"]["Cmd"], serde_json::json!(["sh"]));
        assert_eq!(d["config"]["Hostname"], "");
        assert_eq!(d["docker_version"], "20.10.7");
    }

    #[test]
    fn env_values_expand_build_args_quotes_and_modifiers() {
        let cfg = apply(
            "ENV A=\"a b\" B='$X' C=$X D=${X:-d} E=${NOPE:-d} F=${X:+y} G=${NOPE:+y} H=a\\ b",
            &HashMap::from([("X", "x")]),
        )
        .unwrap();
        assert_eq!(
            doc(&cfg)["config"]["Env"],
            serde_json::json!(["A=a b", "B=$X", "C=x", "D=x", "E=d", "F=y", "G=", "H=a b"])
        );
        // An ENV value hides a build arg of the same name in later instructions.
        let cfg = apply("ENV X=env\nENV Y=$X", &HashMap::from([("X", "arg")])).unwrap();
        assert_eq!(
            doc(&cfg)["config"]["Env"],
            serde_json::json!(["X=env", "Y=env"])
        );
    }

    #[test]
    fn the_escape_directive_changes_the_escape_character() {
        let text = "# escape=`\nFROM scratch\nENV A=a`$X B=c\\d\nWORKDIR C:\\app";
        let cfg = apply_to(
            ImageConfig::scratch(&Platform::parse("linux/amd64").unwrap()),
            text,
            &HashMap::from([("X", "x")]),
        )
        .unwrap();
        assert_eq!(
            doc(&cfg)["config"]["Env"],
            serde_json::json!(["A=a$X", "B=c\\d"])
        );
        assert_eq!(working_dir_of(&cfg), "/C:\\app");
    }

    #[test]
    fn workdir_starts_from_the_base_and_expands_env() {
        let cfg = apply_to(base(), "FROM b\nWORKDIR app", &HashMap::new()).unwrap();
        assert_eq!(working_dir_of(&cfg), "/srv/app");
        let cfg = apply_to(
            base(),
            "FROM b\nENV HOME=/root\nWORKDIR $HOME/x\nWORKDIR ../y",
            &HashMap::new(),
        )
        .unwrap();
        // Relative parts are joined as written; the runtime resolves `..`.
        assert_eq!(working_dir_of(&cfg), "/root/x/../y");
        let cfg = apply("WORKDIR /\nWORKDIR a\nWORKDIR  /b/c  ", &HashMap::new()).unwrap();
        assert_eq!(working_dir_of(&cfg), "/b/c");
        let cfg = apply("WORKDIR /\nWORKDIR a", &HashMap::new()).unwrap();
        assert_eq!(working_dir_of(&cfg), "/a");
    }

    #[test]
    fn user_replaces_the_base_user_and_expands() {
        assert_eq!(user_of(&base()), "nobody");
        let cfg = apply_to(
            base(),
            "FROM b\nUSER ${U:-1000}:${G:-1000}",
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(user_of(&cfg), "1000:1000");
        let cfg = apply_to(
            base(),
            "FROM b\nENV U=app\nUSER $U\nUSER ${U}:${G}",
            &HashMap::from([("G", "staff")]),
        )
        .unwrap();
        assert_eq!(user_of(&cfg), "app:staff");
        let scratch = ImageConfig::scratch(&Platform::parse("linux/amd64").unwrap());
        assert_eq!(user_of(&scratch), "");
        assert_eq!(working_dir_of(&scratch), "");
    }

    #[test]
    fn labels_merge_into_the_base_labels() {
        let cfg = apply_to(
            base(),
            "FROM b\nLABEL a=9 c=\"x y\" d=$V\nLABEL \"e f\"='$V'",
            &HashMap::from([("V", "v")]),
        )
        .unwrap();
        assert_eq!(
            doc(&cfg)["config"]["Labels"],
            serde_json::json!({"a": "9", "b": "2", "c": "x y", "d": "v", "e f": "$V"})
        );
        let e = apply("LABEL novalue", &HashMap::new()).unwrap_err();
        assert!(matches!(e, InstructionError::Words(_)), "{e}");
    }

    #[test]
    fn ports_merge_into_the_base_ports_once() {
        let cfg = apply_to(
            base(),
            "FROM b\nEXPOSE 80 $P/sctp 53/udp 443/tcp",
            &HashMap::from([("P", "9")]),
        )
        .unwrap();
        assert_eq!(
            doc(&cfg)["config"]["ExposedPorts"],
            serde_json::json!({"80/tcp": {}, "53/udp": {}, "9/sctp": {}, "443/tcp": {}})
        );
        let ports = cfg.config().unwrap().exposed_ports().clone().unwrap();
        assert_eq!(ports.len(), 4, "{ports:?}");
    }

    #[test]
    fn a_bad_port_changes_nothing() {
        for body in ["EXPOSE 80/tcp/x", "EXPOSE -1", "EXPOSE ''", "EXPOSE 80/TCP"] {
            assert!(
                matches!(
                    apply(body, &HashMap::new()),
                    Err(InstructionError::Expose(_))
                ),
                "{body}"
            );
        }
        let mut cfg = base();
        let before = doc(&cfg);
        let ins = &steps("EXPOSE 81 x")[0];
        let e = expose(&mut cfg, ins, '\\', &|_| None).unwrap_err();
        assert!(matches!(&e, InstructionError::Expose(p) if p == "x"), "{e}");
        assert_eq!(doc(&cfg), before);
    }

    #[test]
    fn cmd_and_entrypoint_on_a_base() {
        // The base's CMD goes with a new ENTRYPOINT ...
        let d = doc(&apply_to(base(), "FROM b\nENTRYPOINT [\"/e\"]", &HashMap::new()).unwrap());
        assert_eq!(d["config"]["Entrypoint"], serde_json::json!(["/e"]));
        assert!(d["config"]["Cmd"].is_null());
        // ... but one this stage set stays, in either order.
        let d = doc(&apply_to(
            base(),
            "FROM b\nCMD [\"x\"]\nENTRYPOINT [\"/e\"]",
            &HashMap::new(),
        )
        .unwrap());
        assert_eq!(d["config"]["Cmd"], serde_json::json!(["x"]));
        let d = doc(&apply_to(
            base(),
            "FROM b\nENTRYPOINT [\"/e\"]\nCMD [\"x\"]",
            &HashMap::new(),
        )
        .unwrap());
        assert_eq!(d["config"]["Cmd"], serde_json::json!(["x"]));
        // CMD alone keeps the base's (absent) entrypoint; the shell form is not expanded.
        let d = doc(&apply_to(base(), "FROM b\nCMD echo \"$HOME\" $X", &HashMap::new()).unwrap());
        assert_eq!(
            d["config"]["Cmd"],
            serde_json::json!(["/bin/sh", "-c", "echo \"$HOME\" $X"])
        );
        assert!(d["config"].get("Entrypoint").is_none_or(|e| e.is_null()));
    }

    #[test]
    fn cmd_set_before_compares_lines() {
        let all = steps("ENTRYPOINT a\nCMD b\nENTRYPOINT c");
        assert!(!cmd_set_before(&all, &all[0]));
        assert!(cmd_set_before(&all, &all[2]));
        assert!(!cmd_set_before(
            &steps("ENV A=1\nENTRYPOINT a")[..],
            &steps("ENTRYPOINT a")[0]
        ));
    }

    #[test]
    fn commands_in_exec_and_shell_form() {
        let cfg = base();
        assert_eq!(
            command(&steps("RUN [\"/bin/echo\", \"a b\"]")[0], &cfg),
            vec!["/bin/echo".to_string(), "a b".to_string()]
        );
        assert_eq!(
            command(&steps("RUN echo a   b")[0], &cfg),
            vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                "echo a   b".to_string()
            ]
        );
    }

    #[test]
    fn shell_changes_later_shell_forms_and_is_kept_in_the_config() {
        let cfg = apply_to(
            base(),
            "FROM b\nSHELL [\"/bin/bash\", \"-euxc\"]\nCMD echo hi\nENTRYPOINT [\"/e\"]",
            &HashMap::new(),
        )
        .unwrap();
        let d = doc(&cfg);
        assert_eq!(
            d["config"]["Shell"],
            serde_json::json!(["/bin/bash", "-euxc"])
        );
        assert_eq!(
            d["config"]["Cmd"],
            serde_json::json!(["/bin/bash", "-euxc", "echo hi"])
        );
        assert_eq!(
            command(&steps("RUN ls")[0], &cfg),
            vec!["/bin/bash".to_string(), "-euxc".into(), "ls".into()]
        );
        // The exec form ignores it; a base image's Shell carries over.
        assert_eq!(
            command(&steps("RUN [\"ls\"]")[0], &cfg),
            vec!["ls".to_string()]
        );
        let again = ImageConfig::from_value(d).unwrap();
        assert_eq!(
            again.shell(),
            Some(vec!["/bin/bash".into(), "-euxc".into()])
        );
    }

    #[test]
    fn arg_defaults_expand_and_keep_quoted_spaces() {
        let ins = &steps("ARG A=\"a b\" B=${X:-d} C=$X _d1 E=")[0];
        assert_eq!(
            arg_decls(ins, '\\', &|_| None).unwrap(),
            vec![
                ("A".into(), Some("a b".into())),
                ("B".into(), Some("d".into())),
                ("C".into(), Some(String::new())),
                ("_d1".into(), None),
                ("E".into(), Some(String::new())),
            ]
        );
        let ins = &steps("ARG =v")[0];
        assert!(matches!(
            arg_decls(ins, '\\', &|_| None),
            Err(InstructionError::ArgName(n)) if n.is_empty()
        ));
        let ins = &steps("ARG A B.c")[0];
        assert!(matches!(
            arg_decls(ins, '\\', &|_| None),
            Err(InstructionError::ArgName(n)) if n == "B.c"
        ));
    }

    #[test]
    fn history_says_whether_a_layer_was_added() {
        let mut cfg = base();
        history(&mut cfg, "RUN make", false, "2025-01-02T03:04:05Z".into());
        let d = doc(&cfg);
        let h = d["history"].as_array().unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0]["created_by"], "ADD file:x in /");
        assert_eq!(h[1]["created_by"], "RUN make");
        assert_eq!(h[1]["empty_layer"], false);
        assert_eq!(h[1]["created"], "2025-01-02T03:04:05Z");
    }
}
