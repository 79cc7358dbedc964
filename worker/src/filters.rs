//! containerd's filter syntax, one parser for every filter a client sends: snapshot walks
//! (`ctr snapshots ls`), BuildKit's `du`, `prune` and GC rules, `ListWorkers`. A filter is
//! selectors joined by `,` (all must hold); several filters select what any one of them
//! does. A selector is a field path (`a.b`, segments bare or quoted: `labels."x.io/y"`)
//! alone (the field is present) or followed by `==`, `!=` or `~=` (regular expression) and a
//! value, bare (up to the next comma) or quoted (`"…"`, `'…'`, or `/…/` for an expression).
//! Parsed strictly — a bad filter is an error to answer, not a filter that silently matches
//! nothing — and bounded in size. Which fields exist is the record's business ([`Fields`]).

/// Longest filter accepted.
pub const MAX_FILTER: usize = 8192;
/// Most filters in one list.
pub const MAX_FILTERS: usize = 64;
/// Largest compiled regular expression.
const MAX_REGEX_BYTES: usize = 1 << 20;

/// A filter that is not of the grammar, or too large.
#[derive(Debug, Clone, thiserror::Error)]
#[error("filter {filter:?}: {reason}")]
pub struct FilterError {
    /// The filter (its start, when it is too long).
    pub filter: String,
    /// What is wrong.
    pub reason: String,
}

fn bad(filter: &str, why: impl std::fmt::Display) -> FilterError {
    FilterError {
        filter: filter.to_string(),
        reason: why.to_string(),
    }
}

/// What a filter asks of a record.
pub trait Fields {
    /// The value of the field at `path`: `None` when the record has no such field,
    /// `Some("")` for a flag that is set.
    fn field(&self, path: &[String]) -> Option<String>;
}

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
    fn quoted(&mut self) -> Result<String, FilterError> {
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

    fn segment(&mut self) -> Result<String, FilterError> {
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

    fn value(&mut self) -> Result<String, FilterError> {
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
    pub fn parse(src: &str) -> Result<Filter, FilterError> {
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
                                .size_limit(MAX_REGEX_BYTES)
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
        Ok(Filter { selectors })
    }

    /// The field paths it names, for a caller that knows which exist.
    pub fn paths(&self) -> impl Iterator<Item = &[String]> {
        self.selectors.iter().map(|s| s.path.as_slice())
    }

    /// Whether `record` matches every selector.
    pub fn matches(&self, record: &impl Fields) -> bool {
        self.selectors.iter().all(|s| {
            let value = record.field(&s.path);
            match (&s.op, value.as_deref()) {
                (Op::Present, v) => v.is_some(),
                (Op::Eq(want), v) => v == Some(want.as_str()),
                (Op::Ne(want), v) => v != Some(want.as_str()),
                (Op::Matches(re), Some(v)) => re.is_match(v),
                (Op::Matches(_), None) => false,
            }
        })
    }
}

/// Several filters, any of which may match; none (or only empty ones) matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filters(Vec<Filter>);

impl Filters {
    /// Parses each filter; empty ones are skipped.
    pub fn parse(filters: &[String]) -> Result<Filters, FilterError> {
        if filters.len() > MAX_FILTERS {
            return Err(bad(
                &format!("{} filters", filters.len()),
                format!("at most {MAX_FILTERS} filters"),
            ));
        }
        Ok(Filters(
            filters
                .iter()
                .filter(|f| !f.trim().is_empty())
                .map(|f| Filter::parse(f))
                .collect::<Result<_, _>>()?,
        ))
    }

    /// The filters.
    pub fn iter(&self) -> impl Iterator<Item = &Filter> {
        self.0.iter()
    }

    /// Whether `record` passes.
    pub fn matches(&self, record: &impl Fields) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.matches(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct R(HashMap<&'static str, &'static str>);
    impl Fields for R {
        fn field(&self, path: &[String]) -> Option<String> {
            self.0.get(path.join(".").as_str()).map(|v| v.to_string())
        }
    }

    fn f(list: &[&str]) -> Result<Filters, FilterError> {
        Filters::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn selectors_and_lists() {
        let r = R(HashMap::from([
            ("id", "abc123"),
            ("type", "regular"),
            ("inuse", ""),
        ]));
        assert!(f(&[]).unwrap().matches(&r));
        assert!(f(&[""]).unwrap().matches(&r));
        assert!(f(&["type==regular"]).unwrap().matches(&r));
        assert!(!f(&["type==source.local"]).unwrap().matches(&r));
        assert!(f(&["type==source.local", "id~=^abc"]).unwrap().matches(&r));
        assert!(!f(&["type==regular,id!=abc123"]).unwrap().matches(&r));
        assert!(f(&["inuse"]).unwrap().matches(&r));
        assert!(!f(&["mutable"]).unwrap().matches(&r));
        assert!(f(&["id==\"abc123\""]).unwrap().matches(&r));
        assert!(f(&[" type == regular , id~=/[0-9]+/ "])
            .unwrap()
            .matches(&r));
        assert!(f(&["description!=x"]).unwrap().matches(&r));
    }

    #[test]
    fn bad_filters_are_errors() {
        for bad in [
            "==x",
            "id=x",
            "id>x",
            "id==",
            "id~=(",
            "id==\"open",
            "id==x y,",
            ",",
        ] {
            assert!(f(&[bad]).is_err(), "{bad:?} was accepted");
        }
        assert!(f(&[&"x".repeat(MAX_FILTER + 1)]).is_err());
        assert!(f(&vec!["id"; MAX_FILTERS + 1]).is_err());
    }
}
