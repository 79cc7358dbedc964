//! containerd's filter expressions over snapshots, as `ctr snapshots ls` and the Walk/List
//! call send them: a filter is selectors joined by `,` (all must match); several filters
//! match when any does. A selector is a field path — `name`, `parent`, `kind`, or
//! `labels.KEY` (a key with dots or slashes is quoted: `labels."containerd.io/gc.root"`) —
//! alone (the field is present; name, parent and kind always are) or followed by `==`, `!=` or `~=` (regular expression) and a
//! value, bare or quoted (`"…"`, `'…'`, or `/…/` for an expression).

use super::{Info, SnapshotError};

/// Longest filter accepted.
const MAX_FILTER: usize = 8192;

#[derive(Debug, Clone)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
    Matches(regex::Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// One parsed filter (a conjunction of selectors).
#[derive(Debug, Clone)]
pub struct Filter {
    selectors: Vec<Selector>,
}

fn bad(filter: &str, why: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::InvalidArgument(format!("filter {filter:?}: {why}"))
}

struct Scanner<'a> {
    src: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
}

impl<'a> Scanner<'a> {
    fn skip_space(&mut self) {
        while self.chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            self.chars.next();
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    /// A quoted string starting at the current quote character.
    fn quoted(&mut self) -> Result<String, SnapshotError> {
        let Some((_, q)) = self.chars.next() else {
            return Err(bad(self.src, "expected a quote"));
        };
        let mut out = String::new();
        loop {
            match self.chars.next() {
                None => return Err(bad(self.src, "unterminated quote")),
                Some((_, c)) if c == q => return Ok(out),
                Some((_, '\\')) => match self.chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, c)) => out.push(c),
                    None => return Err(bad(self.src, "unterminated escape")),
                },
                Some((_, c)) => out.push(c),
            }
        }
    }

    fn segment(&mut self) -> Result<String, SnapshotError> {
        match self.peek() {
            Some('"') | Some('\'') => self.quoted(),
            _ => {
                let mut s = String::new();
                while let Some(c) = self.peek() {
                    if c.is_alphanumeric() || c == '_' || c == '-' {
                        s.push(c);
                        self.chars.next();
                    } else {
                        break;
                    }
                }
                if s.is_empty() {
                    return Err(bad(self.src, "expected a field name"));
                }
                Ok(s)
            }
        }
    }

    fn value(&mut self) -> Result<String, SnapshotError> {
        self.skip_space();
        match self.peek() {
            Some('"') | Some('\'') | Some('/') => self.quoted(),
            _ => {
                let mut s = String::new();
                while let Some(c) = self.peek() {
                    if c == ',' {
                        break;
                    }
                    s.push(c);
                    self.chars.next();
                }
                let s = s.trim_end().to_string();
                if s.is_empty() {
                    return Err(bad(self.src, "expected a value"));
                }
                Ok(s)
            }
        }
    }
}

impl Filter {
    /// Parses one filter.
    pub fn parse(src: &str) -> Result<Filter, SnapshotError> {
        if src.len() > MAX_FILTER {
            let head: String = src.chars().take(64).collect();
            return Err(bad(&head, format!("longer than {MAX_FILTER} bytes")));
        }
        let mut s = Scanner {
            src,
            chars: src.char_indices().peekable(),
        };
        let mut selectors = Vec::new();
        loop {
            s.skip_space();
            let mut path = vec![s.segment()?];
            while s.peek() == Some('.') {
                s.chars.next();
                path.push(s.segment()?);
            }
            s.skip_space();
            let op = match s.peek() {
                None | Some(',') => Op::Present,
                Some('=') | Some('!') | Some('~') => {
                    let (_, first) = s.chars.next().unwrap_or((0, ' '));
                    if s.chars.next().map(|(_, c)| c) != Some('=') {
                        return Err(bad(src, "expected ==, != or ~="));
                    }
                    let v = s.value()?;
                    match first {
                        '=' => Op::Eq(v),
                        '!' => Op::Ne(v),
                        _ => Op::Matches(
                            regex::RegexBuilder::new(&v)
                                .size_limit(1 << 20)
                                .build()
                                .map_err(|e| bad(src, e))?,
                        ),
                    }
                }
                Some(c) => return Err(bad(src, format!("unexpected {c:?}"))),
            };
            selectors.push(Selector { path, op });
            s.skip_space();
            match s.chars.next() {
                None => break,
                Some((_, ',')) => continue,
                Some((_, c)) => return Err(bad(src, format!("unexpected {c:?}"))),
            }
        }
        for sel in &selectors {
            match sel.path.first().map(String::as_str) {
                Some("name" | "parent" | "kind") if sel.path.len() == 1 => {}
                Some("labels") if sel.path.len() >= 2 => {}
                _ => {
                    return Err(bad(
                        src,
                        format!(
                            "unknown field {:?} (name, parent, kind, labels.KEY)",
                            sel.path.join(".")
                        ),
                    ))
                }
            }
        }
        Ok(Filter { selectors })
    }

    /// Whether `info` matches every selector.
    pub fn matches(&self, info: &Info) -> bool {
        self.selectors.iter().all(|s| {
            let value: Option<&str> = match s.path[0].as_str() {
                "name" => Some(&info.name),
                // Always present, possibly empty: containerd matches `parent==""` on a base.
                "parent" => Some(info.parent.as_str()),
                "kind" => Some(info.kind.as_str()),
                _ => info.labels.get(&s.path[1..].join(".")).map(String::as_str),
            };
            match (&s.op, value) {
                (Op::Present, v) => v.is_some(),
                (Op::Eq(want), Some(v)) => v == want,
                (Op::Eq(_), None) => false,
                (Op::Ne(want), v) => v != Some(want.as_str()),
                (Op::Matches(re), Some(v)) => re.is_match(v),
                (Op::Matches(_), None) => false,
            }
        })
    }
}

/// Several filters, any of which may match; none matches everything.
#[derive(Debug, Clone, Default)]
pub struct AnyOf(Vec<Filter>);

impl AnyOf {
    /// Parses each filter.
    pub fn parse(filters: &[String]) -> Result<AnyOf, SnapshotError> {
        Ok(AnyOf(
            filters
                .iter()
                .filter(|f| !f.trim().is_empty())
                .map(|f| Filter::parse(f))
                .collect::<Result<_, _>>()?,
        ))
    }

    /// Whether `info` passes.
    pub fn matches(&self, info: &Info) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.matches(info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Kind;
    use std::time::SystemTime;

    fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    fn m(f: &str, i: &Info) -> bool {
        Filter::parse(f).unwrap().matches(i)
    }

    #[test]
    fn selectors() {
        let a = info(
            "sha256:abc",
            "p1",
            Kind::Committed,
            &[("containerd.io/gc.root", "x"), ("team", "infra")],
        );
        let b = info("extract-1 sha256:def", "", Kind::Active, &[]);
        assert!(m("name==sha256:abc", &a));
        assert!(m("name==\"extract-1 sha256:def\"", &b));
        assert!(m("parent==p1", &a) && m("parent==\"\"", &b) && !m("parent==\"\"", &a));
        assert!(m("kind==committed", &a) && m("kind!=committed", &b));
        assert!(m("labels.\"containerd.io/gc.root\"", &a));
        assert!(!m("labels.\"containerd.io/gc.root\"", &b));
        assert!(m("labels.team==infra,kind==committed", &a));
        assert!(!m("labels.team==infra,kind==active", &a));
        assert!(m("name~=/^sha256:/", &a) && !m("name~=^sha256:", &b));
        assert!(m("labels.team!=dev", &a) && m("labels.team!=dev", &b));
        let any = AnyOf::parse(&["kind==active".into(), "labels.team==infra".into()]).unwrap();
        assert!(any.matches(&a) && any.matches(&b));
        assert!(AnyOf::parse(&[]).unwrap().matches(&a));
    }

    #[test]
    fn bad_filters_are_invalid_arguments() {
        for f in [
            "",
            "name=",
            "name==",
            "name=~x",
            "size==3",
            "labels",
            "labels.\"unterminated",
            "name~=(",
            "kind==active,,",
            "name==a b,parent",
            "@",
        ] {
            let r = Filter::parse(f);
            if f == "name==a b,parent" {
                // A bare value runs to the next comma.
                assert!(r.is_ok(), "{f}");
                continue;
            }
            assert!(
                matches!(r, Err(SnapshotError::InvalidArgument(_))),
                "{f:?}: {r:?}"
            );
        }
        let huge = "a".repeat(10_000);
        assert!(Filter::parse(&huge).is_err());
    }
}
