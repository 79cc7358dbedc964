//! Heredocs: `RUN <<EOF`, `COPY <<EOF dest`, `ADD`, and `ONBUILD` of those. The parser
//! finds the markers (`[N]<<[-]WORD`, a word of its own) in an instruction's line and takes
//! the lines after it, up to a line that is the word, as each heredoc's content; `<<-`
//! strips leading tabs (of the terminator too); a quoted word means the content is not
//! expanded. How the content is used: COPY/ADD write it as a file named after the word,
//! expanded with the stage's variables unless quoted (backslash escapes, quotes kept);
//! RUN of a lone heredoc runs its content through the shell (or, when it starts with a
//! shebang, runs it with that interpreter), and any other RUN gets the heredocs back
//! appended to its command for the shell to handle.

use super::instructions::Lookup;
use super::words::{raw_tokens, variable, WordError};

/// A heredoc of an instruction, with its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The word (unquoted): the terminator and, for COPY, the file name.
    pub name: String,
    /// The content is expanded (the word was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped.
    pub chomp: bool,
    /// The lines between the marker's line and the terminator, each with its newline.
    pub content: String,
}

impl Heredoc {
    /// The content, leading tabs stripped for `<<-`.
    pub fn data(&self) -> String {
        if self.chomp {
            chomp(&self.content)
        } else {
            self.content.clone()
        }
    }
}

/// A heredoc marker as written in a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The word, unquoted.
    pub name: String,
    /// Not quoted: expand the content.
    pub expand: bool,
    /// `<<-`.
    pub chomp: bool,
}

/// `word` as a heredoc marker: `[digits]<<[-]WORD` with a non-empty WORD without `<`.
pub fn marker(word: &str) -> Option<Marker> {
    let digits = word.bytes().take_while(u8::is_ascii_digit).count();
    let rest = word[digits..].strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let name = unquote(rest)?;
    if name.is_empty() {
        return None;
    }
    Some(Marker {
        name,
        expand: !rest.contains(['\'', '"']),
        chomp,
    })
}

/// One word with its quotes and backslash escapes removed; `None` when it is more than one
/// word or a quote does not close.
fn unquote(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some('\'') => out.push(c),
            _ if c == '\\' => out.push(chars.next()?),
            Some(_) => out.push(c),
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c.is_whitespace() => return None,
            None => out.push(c),
        }
    }
    quote.is_none().then_some(out)
}

/// The heredoc markers among the words of `line`, in order.
pub fn markers_in_line(line: &str) -> Vec<Marker> {
    raw_tokens(line, '\\')
        .unwrap_or_default()
        .iter()
        .filter_map(|w| marker(w))
        .collect()
}

/// `s` without the tabs at the start of each line.
pub fn chomp(s: &str) -> String {
    s.split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

/// Expands a COPY heredoc's content: `$name` / `${…}` from `lookup`, a backslash keeps the
/// next character as it is (and goes), quotes stay as written.
pub fn expand_content(s: &str, lookup: Lookup) -> Result<String, WordError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            if let Some(n) = chars.get(i + 1) {
                out.push(*n);
            }
            i += 2;
        } else if c == '$' {
            let (text, used) = variable(&chars[i + 1..], '\\', lookup)?;
            out.push_str(&text);
            i += used + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    Ok(out)
}

/// The shell-form command of a RUN with heredocs `docs` (`cmdline` is the line after the
/// flags): a lone heredoc runs its content (a shebang one through its interpreter); any
/// other command gets the heredocs appended, as a shell reads them.
pub fn run_command(cmdline: &str, docs: &[Heredoc]) -> String {
    match (marker(cmdline.trim()), docs.first()) {
        (Some(_), Some(doc)) => {
            let data = doc.data();
            if doc.content.starts_with("#!") {
                shebang(&data)
            } else {
                data
            }
        }
        _ => {
            let mut full = cmdline.to_string();
            for d in docs {
                full.push('\n');
                full.push_str(&d.content);
                full.push_str(&d.name);
            }
            full
        }
    }
}

/// A shell command running `script` (which starts with `#!interpreter [arg]`) the way the
/// kernel runs a script file: the interpreter, its one optional argument, then the script,
/// here read from file descriptor 3 (a quoted here-document, so the shell leaves it as is).
fn shebang(script: &str) -> String {
    let first = script.lines().next().unwrap_or_default();
    let line = first.trim_start_matches("#!").trim();
    let (interp, arg) = match line.split_once([' ', '\t']) {
        Some((i, a)) => (i, Some(a.trim())),
        None => (line, None),
    };
    let mut delim = "STARGAZE_HEREDOC".to_string();
    while script.lines().any(|l| l == delim) {
        delim.push('_');
    }
    let mut cmd = format!("exec {}", quote(interp));
    if let Some(a) = arg.filter(|a| !a.is_empty()) {
        cmd.push(' ');
        cmd.push_str(&quote(a));
    }
    cmd.push_str(&format!(" /proc/self/fd/3 3<<'{delim}'\n{script}"));
    if !script.ends_with('\n') {
        cmd.push('\n');
    }
    cmd.push_str(&delim);
    cmd
}

/// `s` in single quotes for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str, chomp: bool, content: &str) -> Heredoc {
        Heredoc {
            name: name.into(),
            expand: true,
            chomp,
            content: content.into(),
        }
    }

    #[test]
    fn markers_are_whole_words() {
        let m = marker("<<EOF").unwrap();
        assert_eq!((m.name.as_str(), m.expand, m.chomp), ("EOF", true, false));
        let m = marker("<<-\"EOF\"").unwrap();
        assert_eq!((m.name.as_str(), m.expand, m.chomp), ("EOF", false, true));
        let m = marker("3<<'IN1'").unwrap();
        assert_eq!((m.name.as_str(), m.expand), ("IN1", false));
        for w in ["<<", "a<<EOF", "<<E<F", "\"<<EOF\"", "<<'EOF", "<<-"] {
            assert_eq!(marker(w), None, "{w}");
        }
        let names: Vec<_> = markers_in_line("RUN <<EOF 3<<IN1 echo '<<X' a<<b 4<<-IN2")
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["EOF", "IN1", "IN2"]);
    }

    #[test]
    fn content_expands_without_touching_quotes() {
        let l = |n: &str| (n == "name").then(|| "world".to_string());
        assert_eq!(
            expand_content("Hello '${name}' \"$name\"!\n", &l).unwrap(),
            "Hello 'world' \"world\"!\n"
        );
        assert_eq!(expand_content("\\\n", &l).unwrap(), "\n");
        assert_eq!(expand_content("\\\\\n", &l).unwrap(), "\\\n");
        assert_eq!(expand_content("\\$\n", &l).unwrap(), "$\n");
        assert_eq!(chomp("\tfoo\n\t\tbar\n x\n"), "foo\nbar\n x\n");
    }

    #[test]
    fn run_commands() {
        let docs = [doc("EOF", true, "\techo hi\n")];
        assert_eq!(run_command("<<-EOF", &docs), "echo hi\n");
        let docs = [doc("EOF1", false, "a\n"), doc("EOF2", false, "b\n")];
        assert_eq!(
            run_command("cat <<EOF1; cat <<EOF2", &docs),
            "cat <<EOF1; cat <<EOF2\na\nEOF1\nb\nEOF2"
        );
        let docs = [doc("EOF", false, "#!/bin/awk -f\nBEGIN { print \"x\" }\n")];
        assert_eq!(
            run_command("<<EOF", &docs),
            "exec '/bin/awk' '-f' /proc/self/fd/3 3<<'STARGAZE_HEREDOC'\n#!/bin/awk -f\nBEGIN { print \"x\" }\nSTARGAZE_HEREDOC"
        );
        let docs = [doc("EOF", false, "#!/bin/sh\nSTARGAZE_HEREDOC\n")];
        assert!(run_command("<<EOF", &docs).ends_with("\nSTARGAZE_HEREDOC_"));
    }
}
