//! Parsing a Dockerfile into stages of instructions: comments, the `escape` parser
//! directive, line continuations, case-insensitive keywords, `--flag=value` options, and the
//! JSON (exec) form. Arguments stay raw here — variables are expanded while building,
//! because their values depend on the instructions before them. Anything outside the
//! supported subset is an error that names the line.

use super::heredoc::{markers_in_line, Heredoc};
use super::suggest;
use super::words::raw_tokens;

/// Longest Dockerfile accepted.
pub const MAX_DOCKERFILE: usize = 1 << 20;

/// The supported instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    /// `FROM`.
    From,
    /// `RUN`.
    Run,
    /// `COPY`.
    Copy,
    /// `ADD`.
    Add,
    /// `ENV`.
    Env,
    /// `ARG`.
    Arg,
    /// `WORKDIR`.
    Workdir,
    /// `USER`.
    User,
    /// `LABEL`.
    Label,
    /// `EXPOSE`.
    Expose,
    /// `ENTRYPOINT`.
    Entrypoint,
    /// `CMD`.
    Cmd,
    /// `SHELL`.
    Shell,
    /// `ONBUILD`: an instruction stored in the image config, run by the images built on it.
    Onbuild,
}

/// Every Dockerfile instruction (for the "did you mean" hint of an unknown one).
const ALL_INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

impl Keyword {
    fn parse(s: &str) -> Option<Keyword> {
        Some(match s.to_ascii_uppercase().as_str() {
            "FROM" => Keyword::From,
            "RUN" => Keyword::Run,
            "COPY" => Keyword::Copy,
            "ADD" => Keyword::Add,
            "ENV" => Keyword::Env,
            "ARG" => Keyword::Arg,
            "WORKDIR" => Keyword::Workdir,
            "USER" => Keyword::User,
            "LABEL" => Keyword::Label,
            "EXPOSE" => Keyword::Expose,
            "ENTRYPOINT" => Keyword::Entrypoint,
            "CMD" => Keyword::Cmd,
            "SHELL" => Keyword::Shell,
            "ONBUILD" => Keyword::Onbuild,
            _ => return None,
        })
    }

    /// The flags this instruction takes.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Keyword::From => &["platform"],
            Keyword::Copy => &["from", "chown", "chmod"],
            Keyword::Add => &["chown", "chmod"],
            Keyword::Run => &["mount"],
            _ => &[],
        }
    }

    /// The flags Dockerfile syntax gives this instruction that are not supported here
    /// (refused as such, not as unknown flags).
    fn unsupported_flags(self) -> &'static [&'static str] {
        match self {
            Keyword::Run => &["network", "security"],
            Keyword::Copy => &["link"],
            Keyword::Add => &["link", "keep-git-dir", "checksum"],
            _ => &[],
        }
    }

    /// Whether the JSON (exec) form is meaningful.
    fn takes_json(self) -> bool {
        matches!(
            self,
            Keyword::Run
                | Keyword::Cmd
                | Keyword::Entrypoint
                | Keyword::Copy
                | Keyword::Add
                | Keyword::Shell
        )
    }
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line where it starts.
    pub line: usize,
    /// Which instruction.
    pub keyword: Keyword,
    /// `--name=value` options, in order.
    pub flags: Vec<(String, String)>,
    /// The rest of the line, raw (after flags).
    pub args: String,
    /// The JSON form's strings, when the arguments are a JSON array.
    pub json: Option<Vec<String>>,
    /// The instruction as written (continuations joined), for progress and errors.
    pub text: String,
    /// Its heredocs (RUN, COPY, ADD, and ONBUILD of those), in order.
    pub heredocs: Vec<Heredoc>,
}

impl Instruction {
    /// The value of flag `name`.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether heredoc markers in its line take the lines after it.
    fn takes_heredocs(&self) -> bool {
        let inner = |s: &str| {
            let w = s.split_whitespace().next().unwrap_or_default();
            ["RUN", "COPY", "ADD"].contains(&w.to_ascii_uppercase().as_str())
        };
        match self.keyword {
            Keyword::Run | Keyword::Copy | Keyword::Add => true,
            Keyword::Onbuild => inner(&self.args),
            _ => false,
        }
    }

    /// ONBUILD's trigger as stored in the image config: the instruction, its heredocs
    /// appended with their terminators (so it parses again as written).
    pub fn trigger(&self) -> String {
        let mut t = self.args.clone();
        for h in &self.heredocs {
            t.push('\n');
            t.push_str(&h.content);
            t.push_str(&h.name);
        }
        t
    }
}

/// One build stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// The `FROM` instruction.
    pub from: Instruction,
    /// Base image as written (expanded with global ARGs when built).
    pub base: String,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// The instructions after `FROM`.
    pub steps: Vec<Instruction>,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`\` or `` ` ``).
    pub escape: char,
    /// `ARG`s before the first `FROM`.
    pub global_args: Vec<Instruction>,
    /// The stages, in order.
    pub stages: Vec<Stage>,
}

/// Why a Dockerfile was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {message}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// Parses Dockerfile text.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    if text.len() > MAX_DOCKERFILE {
        return Err(err(0, format!("larger than {MAX_DOCKERFILE} bytes")));
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    // Parser directives: leading `# key=value` comments.
    while i < lines.len() {
        let t = lines[i].trim();
        let Some(d) = t.strip_prefix('#') else { break };
        let Some((k, v)) = d.split_once('=') else {
            break;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "escape" => {
                escape = match v.trim() {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(err(
                            i + 1,
                            format!("invalid escape directive {other:?} (\\ or `)"),
                        ))
                    }
                }
            }
            "syntax" | "check" => {}
            _ => break,
        }
        i += 1;
    }
    let instructions = parse_instructions(&lines, i, escape)?;
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in instructions {
        match (ins.keyword, stages.last_mut()) {
            (Keyword::From, _) => {
                let toks =
                    raw_tokens(&ins.args, escape).map_err(|e| err(ins.line, e.to_string()))?;
                let (base, name) = match toks.as_slice() {
                    [b] => (b.clone(), None),
                    [b, as_, n] if as_.eq_ignore_ascii_case("as") => {
                        let n = n.to_ascii_lowercase();
                        if !n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                            || !n
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                        {
                            return Err(err(ins.line, format!("invalid stage name {n:?}")));
                        }
                        if stages.iter().any(|s| s.name.as_deref() == Some(&n)) {
                            return Err(err(ins.line, format!("duplicate stage name {n:?}")));
                        }
                        (b.clone(), Some(n))
                    }
                    _ => return Err(err(ins.line, "FROM takes IMAGE [AS NAME]")),
                };
                stages.push(Stage {
                    from: ins,
                    base,
                    name,
                    steps: Vec::new(),
                });
            }
            (Keyword::Arg, None) => global_args.push(ins),
            (_, None) => {
                return Err(err(
                    ins.line,
                    format!(
                        "{} before the first FROM (only ARG may come first)",
                        ins.text
                    ),
                ))
            }
            (_, Some(stage)) => stage.steps.push(ins),
        }
    }
    if stages.is_empty() {
        return Err(err(lines.len().max(1), "no FROM instruction"));
    }
    Ok(Dockerfile {
        escape,
        global_args,
        stages,
    })
}

/// Parses an ONBUILD trigger (as an image config stores it) into its one instruction.
pub fn parse_trigger(text: &str, escape: char) -> Result<Instruction, ParseError> {
    if text.len() > MAX_DOCKERFILE {
        return Err(err(0, format!("larger than {MAX_DOCKERFILE} bytes")));
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut all = parse_instructions(&lines, 0, escape)?;
    match all.pop() {
        Some(ins) if all.is_empty() && ins.keyword != Keyword::Onbuild => Ok(ins),
        _ => Err(err(
            0,
            format!("ONBUILD trigger {text:.64?} is not one instruction"),
        )),
    }
}

/// The instructions of `lines` from index `i`: continuations joined, comments skipped,
/// heredocs taken.
fn parse_instructions(
    lines: &[&str],
    mut i: usize,
    escape: char,
) -> Result<Vec<Instruction>, ParseError> {
    let mut instructions = Vec::new();
    while i < lines.len() {
        let start = i;
        let first = lines[i].trim_start();
        i += 1;
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        let mut joined = String::new();
        let mut cur = first.trim_end().to_string();
        loop {
            if let Some(stripped) = cur.strip_suffix(escape) {
                joined.push_str(stripped);
                // Comment and empty lines inside a continuation are skipped.
                while i < lines.len() && lines[i].trim_start().starts_with('#') {
                    i += 1;
                }
                if i >= lines.len() {
                    break;
                }
                cur = lines[i].trim_end().to_string();
                i += 1;
            } else {
                joined.push_str(&cur);
                break;
            }
        }
        let mut ins = instruction(start + 1, joined.trim())?;
        if ins.takes_heredocs() {
            for m in markers_in_line(&joined) {
                let mut content = String::new();
                let mut terminated = false;
                while i < lines.len() {
                    let l = lines[i];
                    i += 1;
                    let end = if m.chomp {
                        l.trim_start_matches('\t')
                    } else {
                        l
                    };
                    if end == m.name {
                        terminated = true;
                        break;
                    }
                    content.push_str(l);
                    content.push('\n');
                }
                if !terminated {
                    return Err(err(start + 1, format!("unterminated heredoc {:?}", m.name)));
                }
                ins.heredocs.push(Heredoc {
                    name: m.name,
                    expand: m.expand,
                    chomp: m.chomp,
                    content,
                });
            }
        }
        instructions.push(ins);
    }
    Ok(instructions)
}

fn instruction(line: usize, text: &str) -> Result<Instruction, ParseError> {
    let (word, rest) = match text.find(char::is_whitespace) {
        Some(p) => (&text[..p], text[p..].trim_start()),
        None => (text, ""),
    };
    let keyword = Keyword::parse(word).ok_or_else(|| {
        let upper = word.to_ascii_uppercase();
        if ALL_INSTRUCTIONS.contains(&upper.as_str()) {
            err(
                line,
                format!(
                    "unsupported instruction {upper:?} (supported: FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, LABEL, EXPOSE, ENTRYPOINT, CMD, SHELL, ONBUILD)"
                ),
            )
        } else {
            err(
                line,
                format!(
                    "unknown instruction: {upper:.64}{}",
                    suggest::hint(&upper, ALL_INSTRUCTIONS)
                ),
            )
        }
    })?;
    let mut rest = rest;
    let mut flags = Vec::new();
    while let Some(f) = rest.strip_prefix("--") {
        let end = f.find(char::is_whitespace).unwrap_or(f.len());
        let (flag, after) = f.split_at(end);
        let name = flag.split_once('=').map_or(flag, |(n, _)| n);
        if !keyword.flags().contains(&name) {
            let upper = word.to_ascii_uppercase();
            if keyword.unsupported_flags().contains(&name) {
                return Err(err(line, format!("{upper} does not support --{name} yet")));
            }
            let mut known = keyword.flags().to_vec();
            known.extend_from_slice(keyword.unsupported_flags());
            return Err(err(
                line,
                format!("unknown flag: {name:.64}{}", suggest::hint(name, &known)),
            ));
        }
        let (name, value) = flag.split_once('=').ok_or_else(|| {
            err(
                line,
                format!("flag --{flag} needs a value (--{flag}=VALUE)"),
            )
        })?;
        flags.push((name.to_string(), value.to_string()));
        rest = after.trim_start();
    }
    if rest.is_empty() {
        return Err(err(
            line,
            format!("{} needs arguments", word.to_ascii_uppercase()),
        ));
    }
    if keyword == Keyword::Onbuild {
        let inner = rest.split_whitespace().next().unwrap_or_default();
        match inner.to_ascii_uppercase().as_str() {
            "ONBUILD" => {
                return Err(err(
                    line,
                    "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                ))
            }
            i @ ("FROM" | "MAINTAINER") => {
                return Err(err(
                    line,
                    format!("{i} isn't allowed as an ONBUILD trigger"),
                ))
            }
            // The trigger must be an instruction this parser takes.
            _ => drop(instruction(line, rest)?),
        }
    }
    let json = if keyword.takes_json() && rest.starts_with('[') {
        if keyword == Keyword::Shell {
            match serde_json::from_str::<Vec<String>>(rest) {
                Ok(v) if !v.is_empty() => Some(v),
                _ => return Err(err(line, "SHELL needs a non-empty JSON array of strings")),
            }
        } else {
            match serde_json::from_str::<Vec<String>>(rest) {
                Ok(v)
                    if v.is_empty()
                        && keyword != Keyword::Cmd
                        && keyword != Keyword::Entrypoint =>
                {
                    return Err(err(line, "empty JSON array"))
                }
                Ok(v) => Some(v),
                // Docker treats a line that is not valid JSON as the shell form.
                Err(_) => None,
            }
        }
    } else if keyword == Keyword::Shell {
        return Err(err(line, "SHELL needs its arguments in JSON form"));
    } else {
        None
    };
    Ok(Instruction {
        line,
        keyword,
        flags,
        args: rest.to_string(),
        json,
        heredocs: Vec::new(),
        text: format!(
            "{} {}",
            word.to_ascii_uppercase(),
            text[word.len()..].trim_start()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_continuations_flags_and_json() {
        let df = parse(
            "# syntax=docker/dockerfile:1\nARG BASE=busybox\nFROM $BASE AS build\n# comment\nrun echo a \\\n  # inside\n  && echo b\nCOPY --chown=1:2 a b /dst/\nFROM scratch\nCOPY --from=build /x /y\nCMD [\"sh\", \"-c\", \"x\"]\nENTRYPOINT [not json\n",
        )
        .unwrap();
        assert_eq!(df.global_args.len(), 1);
        assert_eq!(df.stages.len(), 2);
        assert_eq!(df.stages[0].name.as_deref(), Some("build"));
        assert_eq!(df.stages[0].base, "$BASE");
        let run = &df.stages[0].steps[0];
        assert_eq!(run.keyword, Keyword::Run);
        assert_eq!(run.line, 5);
        assert_eq!(run.args, "echo a   && echo b");
        assert_eq!(df.stages[0].steps[1].flag("chown"), Some("1:2"));
        assert_eq!(df.stages[1].steps[0].flag("from"), Some("build"));
        assert_eq!(
            df.stages[1].steps[1].json,
            Some(vec!["sh".into(), "-c".into(), "x".into()])
        );
        assert_eq!(df.stages[1].steps[2].json, None);
    }

    #[test]
    fn heredocs_take_the_lines_after_their_instruction() {
        let df = parse(
            "FROM a\nCOPY <<EOF <<-\"EOF2\" dir/\n one\n# kept\nEOF\n\ttwo\n\tEOF2\nRUN cat <<A && \\\n  cat <<B\na\nA\nb\nB\nONBUILD RUN <<EOF\necho hi\nEOF\nENV X=1\n",
        )
        .unwrap();
        let steps = &df.stages[0].steps;
        assert_eq!(steps.len(), 4);
        let h = &steps[0].heredocs;
        assert_eq!(h.len(), 2);
        assert_eq!(
            (h[0].name.as_str(), h[0].expand, h[0].chomp),
            ("EOF", true, false)
        );
        assert_eq!(h[0].content, " one\n# kept\n");
        assert_eq!(
            (h[1].name.as_str(), h[1].expand, h[1].chomp),
            ("EOF2", false, true)
        );
        assert_eq!(h[1].data(), "two\n");
        let names: Vec<_> = steps[1].heredocs.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["A", "B"]);
        assert_eq!(steps[2].keyword, Keyword::Onbuild);
        assert_eq!(steps[2].trigger(), "RUN <<EOF\necho hi\nEOF");
        assert_eq!(steps[3].keyword, Keyword::Env);
        // The stored trigger parses back to the instruction with its heredoc.
        let t = parse_trigger(&steps[2].trigger(), '\\').unwrap();
        assert_eq!((t.keyword, t.args.as_str()), (Keyword::Run, "<<EOF"));
        assert_eq!(t.heredocs[0].content, "echo hi\n");
        assert!(parse_trigger("RUN a\nRUN b", '\\').is_err());
        // Other instructions keep `<<` as text; a heredoc must end.
        let df = parse("FROM a\nENV A=<<EOF\n").unwrap();
        assert!(df.stages[0].steps[0].heredocs.is_empty());
        assert!(parse("FROM a\nRUN <<EOF\nx\n")
            .unwrap_err()
            .message
            .contains("unterminated heredoc"));
    }

    #[test]
    fn bad_files_name_their_line() {
        let e = |s: &str| parse(s).unwrap_err();
        assert_eq!(e("FROM a\nHEALTHCHECK CMD x\n").line, 2);
        assert!(e("FROM a\nHEALTHCHECK CMD x\n")
            .message
            .contains("HEALTHCHECK"));
        assert_eq!(e("RUN x\n").line, 1);
        assert!(e("\n\n").message.contains("no FROM"));
        assert_eq!(
            e("FROM a\nFNTRYPOINT x\n").message,
            "unknown instruction: FNTRYPOINT (did you mean ENTRYPOINT?)"
        );
        assert_eq!(
            e("FROM a\nBOGUSWORD x\n").message,
            "unknown instruction: BOGUSWORD"
        );
        assert!(e("FROM a\nSTOPSIGNAL 9\n")
            .message
            .contains("unsupported instruction"));
        assert!(e("FROM a\nONBUILD ONBUILD RUN x\n")
            .message
            .contains("Chaining ONBUILD"));
        assert_eq!(
            e("FROM a\nONBUILD FROM x\n").message,
            "FROM isn't allowed as an ONBUILD trigger"
        );
        assert_eq!(
            e("FROM a\nRUN --mont=type=tmpfs x\n").message,
            "unknown flag: mont (did you mean mount?)"
        );
        assert_eq!(
            e("FROM a\nRUN --network=host x\n").message,
            "RUN does not support --network yet"
        );
        assert_eq!(
            e("FROM a\nCOPY --chwon=1 a b\n").message,
            "unknown flag: chwon (did you mean chown?)"
        );
        assert!(e("FROM a\nSHELL sh -c\n").message.contains("JSON"));
        assert!(e("FROM a\nSHELL []\n").message.contains("JSON"));
        assert_eq!(e("FROM a\nCOPY --from x y\n").line, 2);
        assert_eq!(e("FROM a AS b c\n").line, 1);
        assert_eq!(e("FROM a AS x\nFROM b AS x\n").line, 2);
        assert_eq!(e("FROM a AS 1x\n").line, 1);
        assert_eq!(e("FROM a\nRUN\n").line, 2);
        assert_eq!(e("FROM a\nRUN <<EOF\n").line, 2);
        assert_eq!(e("# escape=x\nFROM a\n").line, 1);
        assert!(parse("# escape=`\nFROM a\nRUN echo `\n  b\n")
            .unwrap()
            .stages[0]
            .steps[0]
            .args
            .contains("echo   b"));
    }
}
