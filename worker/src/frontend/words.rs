//! Dockerfile words: quotes, escapes and `$VAR` / `${VAR}` / `${VAR:-word}` / `${VAR:+word}`
//! expansion, as Docker processes the arguments of ENV, ARG, LABEL, COPY, WORKDIR, USER and
//! FROM. Single quotes keep everything literal; double quotes keep spaces but expand; a
//! backslash (or the file's escape character) escapes the next character.

/// Why a word could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordError {
    /// A quote that does not close.
    #[error("unterminated {quote} quote in {input:?}")]
    Unterminated {
        /// The quote character.
        quote: char,
        /// The text it is in.
        input: String,
    },
    /// `${` without `}`.
    #[error("missing '}}' in ${{...}}")]
    MissingBrace,
    /// A `${name:…}` modifier other than `:-` and `:+`.
    #[error("unsupported modifier in ${{{0}}} (only :- and :+)")]
    Modifier(String),
    /// `${…}` whose name is not a variable name.
    #[error("bad variable name in ${{{0}}}")]
    VariableName(String),
    /// No arguments where some are needed.
    #[error("needs at least one argument")]
    NoArguments,
    /// The legacy `KEY value` form without a value.
    #[error("{0} needs a value")]
    NoValue(String),
    /// A token that is not `KEY=VALUE`.
    #[error("{0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    /// `=VALUE` without a key.
    #[error("{0:?} has an empty key")]
    EmptyKey(String),
}

/// Splits `s` into raw tokens at unquoted whitespace, keeping quotes and escapes as written.
pub fn raw_tokens(s: &str, escape: char) -> Result<Vec<String>, WordError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some('\'') => cur.push(c),
            Some(_) | None if c == escape => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if let Some(q) = quote {
        return Err(WordError::Unterminated {
            quote: q,
            input: s.to_string(),
        });
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Removes quotes and escapes from one raw token, expanding variables with `lookup`.
pub fn process(
    token: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, WordError> {
    let chars: Vec<char> = token.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some('\'') if c == '\'' => quote = None,
            Some('\'') => out.push(c),
            Some('"') if c == '"' => quote = None,
            _ if c == escape && i + 1 < chars.len() => {
                let n = chars[i + 1];
                // Inside double quotes only quotes, the escape itself and `$` are escaped.
                if quote == Some('"') && !matches!(n, '"' | '$') && n != escape {
                    out.push(c);
                }
                out.push(n);
                i += 1;
            }
            None if c == '"' || c == '\'' => quote = Some(c),
            _ if c == '$' => {
                let (text, used) = variable(&chars[i + 1..], escape, lookup)?;
                out.push_str(&text);
                i += used;
            }
            _ => out.push(c),
        }
        i += 1;
    }
    Ok(out)
}

/// Expands variables in `s` without touching quotes (WORKDIR, USER, FROM).
pub fn expand(
    s: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, WordError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == escape && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c == '$' {
            let (text, used) = variable(&chars[i + 1..], escape, lookup)?;
            out.push_str(&text);
            i += used + 1;
            continue;
        }
        out.push(c);
        i += 1;
    }
    Ok(out)
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands the variable after a `$`; returns its text and how many chars it used.
pub(super) fn variable(
    rest: &[char],
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, usize), WordError> {
    if rest.first() == Some(&'{') {
        let close = rest
            .iter()
            .position(|&c| c == '}')
            .ok_or(WordError::MissingBrace)?;
        let inner: String = rest[1..close].iter().collect();
        let (name, op, word) = match inner.find(':') {
            Some(p) => {
                let (n, tail) = inner.split_at(p);
                let mut t = tail[1..].chars();
                match t.next() {
                    Some(op @ ('-' | '+')) => (n.to_string(), Some(op), t.as_str().to_string()),
                    _ => return Err(WordError::Modifier(inner)),
                }
            }
            None => (inner.clone(), None, String::new()),
        };
        if name.is_empty() || !name.chars().all(is_name) {
            return Err(WordError::VariableName(inner));
        }
        let value = lookup(&name).filter(|v| !v.is_empty());
        let text = match op {
            None => value.unwrap_or_default(),
            Some('-') => match value {
                Some(v) => v,
                None => process(&word, escape, lookup)?,
            },
            _ => match value {
                Some(_) => process(&word, escape, lookup)?,
                None => String::new(),
            },
        };
        return Ok((text, close + 1));
    }
    let n = rest.iter().take_while(|&&c| is_name(c)).count();
    if n == 0 {
        return Ok(("$".into(), 0));
    }
    let name: String = rest[..n].iter().collect();
    Ok((lookup(&name).unwrap_or_default(), n))
}

/// `k=v` pairs (ENV, LABEL, ARG with a default); the legacy `ENV k v` form when `legacy`
/// and the first token has no `=`.
pub fn key_values(
    s: &str,
    escape: char,
    legacy: bool,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, WordError> {
    let tokens = raw_tokens(s, escape)?;
    if tokens.is_empty() {
        return Err(WordError::NoArguments);
    }
    if legacy && !tokens[0].contains('=') {
        let rest = s.trim_start()[tokens[0].len()..].trim();
        if rest.is_empty() {
            return Err(WordError::NoValue(tokens[0].clone()));
        }
        return Ok(vec![(tokens[0].clone(), process(rest, escape, lookup)?)]);
    }
    let mut out = Vec::new();
    for t in tokens {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| WordError::NotKeyValue(t.clone()))?;
        let k = process(k, escape, &|_| None)?;
        if k.is_empty() {
            return Err(WordError::EmptyKey(t.clone()));
        }
        out.push((k, process(v, escape, lookup)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str) -> Option<String> {
        match n {
            "A" => Some("1".into()),
            "HOME" => Some("/root".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn quotes_escapes_and_variables() {
        let p = |s: &str| process(s, '\\', &env).unwrap();
        assert_eq!(p("$A"), "1");
        assert_eq!(p("${A}x"), "1x");
        assert_eq!(p("'$A'"), "$A");
        assert_eq!(p("\"a $A b\""), "a 1 b");
        assert_eq!(p("\\$A"), "$A");
        assert_eq!(p("${B:-dflt}"), "dflt");
        assert_eq!(p("${EMPTY:-dflt}"), "dflt");
        assert_eq!(p("${A:+set}"), "set");
        assert_eq!(p("${B:+set}"), "");
        assert_eq!(p("$"), "$");
        assert_eq!(process("${A", '\\', &env), Err(WordError::MissingBrace));
        assert_eq!(WordError::MissingBrace.to_string(), "missing '}' in ${...}");
        assert_eq!(
            WordError::Modifier("A:?x".into()).to_string(),
            "unsupported modifier in ${A:?x} (only :- and :+)"
        );
        assert!(process("${A:?x}", '\\', &env).is_err());
        assert_eq!(expand("$HOME/x", '\\', &env).unwrap(), "/root/x");
        assert_eq!(
            raw_tokens("a \"b c\" 'd e'", '\\').unwrap(),
            vec!["a", "\"b c\"", "'d e'"]
        );
        assert!(raw_tokens("a \"b", '\\').is_err());
        let kv = key_values("X=1 Y=\"two words\" Z=$A", '\\', true, &env).unwrap();
        assert_eq!(
            kv,
            vec![
                ("X".into(), "1".into()),
                ("Y".into(), "two words".into()),
                ("Z".into(), "1".into())
            ]
        );
        assert_eq!(
            key_values("NAME some value", '\\', true, &env).unwrap(),
            vec![("NAME".into(), "some value".into())]
        );
        assert!(key_values("novalue", '\\', false, &env).is_err());
        assert!(key_values("=x", '\\', false, &env).is_err());
    }
}
