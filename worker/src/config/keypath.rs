//! Which key a TOML deserialization error is about. `toml`'s errors carry the byte span of
//! the offending key or value but print it only as a line, a column and a snippet; an error
//! that names the key (`[worker.oci] snapshotter: …`) needs the path to that span, which a
//! second, span-keeping parse of the same text gives (only on the error path).

use std::fmt;
use std::ops::Range;
use toml_edit::{ImDocument, Item, TableLike, Value};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A key in a table.
    Key(String),
    /// An element of an array (of tables or values).
    Index(usize),
}

/// Where in a config a setting is, printed as `[section] key` (`[worker.oci] snapshotter`,
/// `[registry."docker.io"] mirrors`, `[worker.oci.gcpolicy[0]] keepBytes`) or `key` at the top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath(Vec<Step>);

impl KeyPath {
    /// The path of `keys` (a setting the caller names itself, after deserialization).
    pub(crate) fn of(keys: &[&str]) -> KeyPath {
        KeyPath(keys.iter().map(|k| Step::Key(k.to_string())).collect())
    }

    /// This path with `key` appended.
    pub(crate) fn key(mut self, key: &str) -> KeyPath {
        self.0.push(Step::Key(key.to_string()));
        self
    }

    /// This path with array index `i` appended.
    pub(crate) fn index(mut self, i: usize) -> KeyPath {
        self.0.push(Step::Index(i));
        self
    }

    /// The deepest key or value of `text` whose span holds byte `pos`; `None` when `text` is
    /// not TOML or no key is there.
    pub(crate) fn at(text: &str, pos: usize) -> Option<KeyPath> {
        let doc = ImDocument::parse(text).ok()?;
        let root = doc.as_item().as_table_like()?;
        let mut best = Vec::new();
        walk_table(root, pos, &mut Vec::new(), &mut best);
        (!best.is_empty()).then_some(KeyPath(best))
    }

    /// The path of the key a deserialization error of `text` points at, if any.
    pub(crate) fn of_error(text: &str, e: &toml::de::Error) -> Option<KeyPath> {
        KeyPath::at(text, e.span()?.start)
    }
}

fn holds(span: Option<Range<usize>>, pos: usize) -> bool {
    span.is_some_and(|s| s.start <= pos && (pos < s.end || s.is_empty() && pos == s.start))
}

fn keep_if_deeper(path: &[Step], best: &mut Vec<Step>) {
    if path.len() > best.len() {
        *best = path.to_vec();
    }
}

fn walk_table(t: &dyn TableLike, pos: usize, path: &mut Vec<Step>, best: &mut Vec<Step>) {
    for (name, _) in t.iter() {
        let Some((key, item)) = t.get_key_value(name) else {
            continue;
        };
        path.push(Step::Key(name.to_string()));
        if holds(key.span(), pos) || holds(item.span(), pos) {
            keep_if_deeper(path, best);
        }
        walk_item(item, pos, path, best);
        path.pop();
    }
}

fn walk_item(item: &Item, pos: usize, path: &mut Vec<Step>, best: &mut Vec<Step>) {
    match item {
        Item::Table(t) => walk_table(t, pos, path, best),
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                path.push(Step::Index(i));
                if holds(t.span(), pos) {
                    keep_if_deeper(path, best);
                }
                walk_table(t, pos, path, best);
                path.pop();
            }
        }
        Item::Value(v) => walk_value(v, pos, path, best),
        Item::None => {}
    }
}

fn walk_value(v: &Value, pos: usize, path: &mut Vec<Step>, best: &mut Vec<Step>) {
    match v {
        Value::InlineTable(t) => walk_table(t, pos, path, best),
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                path.push(Step::Index(i));
                if holds(v.span(), pos) {
                    keep_if_deeper(path, best);
                }
                walk_value(v, pos, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

fn bare(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn write_steps(f: &mut fmt::Formatter<'_>, steps: &[Step]) -> fmt::Result {
    for (i, s) in steps.iter().enumerate() {
        match s {
            Step::Key(k) => {
                if i > 0 {
                    f.write_str(".")?;
                }
                if bare(k) {
                    f.write_str(k)?;
                } else {
                    write!(f, "{k:?}")?;
                }
            }
            Step::Index(n) => write!(f, "[{n}]")?,
        }
    }
    Ok(())
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The section is everything before the last key; the key keeps its indices.
        let last_key = self.0.iter().rposition(|s| matches!(s, Step::Key(_)));
        match last_key {
            Some(i) if i > 0 => {
                f.write_str("[")?;
                write_steps(f, &self.0[..i])?;
                f.write_str("] ")?;
                write_steps(f, &self.0[i..])
            }
            _ => write_steps(f, &self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, needle: &str) -> String {
        let pos = text.find(needle).unwrap();
        KeyPath::at(text, pos).unwrap().to_string()
    }

    #[test]
    fn paths_name_section_and_key() {
        let text = r#"debug = true
[registry."docker.io"]
  mirrors = ["a:5000", "b"]
[worker.oci]
  snapshotter = "foo"
  labels = { team = "x" }
[[worker.oci.gcpolicy]]
  keepBytes = 1
[[worker.oci.gcpolicy]]
  keepBytes = "two"
"#;
        assert_eq!(at(text, "debug"), "debug");
        assert_eq!(at(text, "true"), "debug");
        assert_eq!(at(text, "\"b\""), "[registry.\"docker.io\"] mirrors[1]");
        assert_eq!(at(text, "\"foo\""), "[worker.oci] snapshotter");
        assert_eq!(at(text, "\"x\""), "[worker.oci.labels] team");
        assert_eq!(at(text, "\"two\""), "[worker.oci.gcpolicy[1]] keepBytes");
        assert_eq!(KeyPath::at("x = [", 0), None);
        assert_eq!(
            KeyPath::of(&["blob"]).key("min_wait_msec").to_string(),
            "[blob] min_wait_msec"
        );
        assert_eq!(KeyPath::of(&["a"]).index(2).to_string(), "a[2]");
    }
}
