//! containerd's filter expressions over snapshots, as `ctr snapshots ls` and the Walk/List
//! call send them (the syntax is `crate::filters`): the fields are `name`, `parent`, `kind`
//! (always present) and `labels.KEY` (a key with dots or slashes is quoted:
//! `labels."containerd.io/gc.root"`); any other field is an invalid argument.

use super::{Info, SnapshotError};
use crate::filters::{Fields, Filters};

impl Fields for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match (path[0].as_str(), path.len()) {
            ("name", 1) => Some(self.name.clone()),
            // Always present, possibly empty: containerd matches `parent==""` on a base.
            ("parent", 1) => Some(self.parent.clone()),
            ("kind", 1) => Some(self.kind.as_str().to_string()),
            ("labels", n) if n >= 2 => self.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

/// Several filters over snapshots, any of which may match; none matches everything.
#[derive(Debug, Clone, Default)]
pub struct AnyOf(Filters);

impl AnyOf {
    /// Parses each filter (empty ones are skipped) and checks its fields.
    pub fn parse(filters: &[String]) -> Result<AnyOf, SnapshotError> {
        let parsed =
            Filters::parse(filters).map_err(|e| SnapshotError::InvalidArgument(e.to_string()))?;
        for f in parsed.iter() {
            for path in f.paths() {
                match (path[0].as_str(), path.len()) {
                    ("name" | "parent" | "kind", 1) => {}
                    ("labels", n) if n >= 2 => {}
                    _ => {
                        return Err(SnapshotError::InvalidArgument(format!(
                            "filter: unknown field {:?} (name, parent, kind, labels.KEY)",
                            path.join(".")
                        )))
                    }
                }
            }
        }
        Ok(AnyOf(parsed))
    }

    /// Whether `info` passes.
    pub fn matches(&self, info: &Info) -> bool {
        self.0.matches(info)
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

    fn parse_one(f: &str) -> Result<AnyOf, SnapshotError> {
        if f.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty".into()));
        }
        AnyOf::parse(&[f.to_string()])
    }

    fn m(f: &str, i: &Info) -> bool {
        AnyOf::parse(&[f.to_string()]).unwrap().matches(i)
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
            let r = parse_one(f);
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
        assert!(parse_one(&huge).is_err());
    }
}
