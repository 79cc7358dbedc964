//! What a name in a layer may be, in one place, so the index, the converter, extraction and
//! the FUSE view agree: every path component is a normal name (not empty, not `.` or `..`,
//! no `/`, no NUL), and a whiteout `.wh.X` hides a normal name `X` in its own directory.
//!
//! Whiteout names: `.wh..wh..opq` marks an opaque directory. Other names starting with
//! `.wh..wh.` are aufs metadata (`.wh..wh.plnk`, `.wh..wh.aufs`, …); like containerd's
//! unpacker they are accepted in a layer but never applied, created or shown (nor is anything
//! inside such a directory). Any other
//! `.wh.X` is a whiteout of `X`, and `X` must itself be a normal name: `.wh.` (empty),
//! `.wh..` (the directory itself) and `.wh...` (its parent) are refused.

/// Prefix of a whiteout name.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// Prefix of aufs metadata names (the opaque marker is one of them).
pub const AUFS_META_PREFIX: &str = ".wh..wh.";

/// What a directory entry's name means to overlay-style layering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind<'a> {
    /// An ordinary name.
    Plain,
    /// `.wh..wh..opq`: the directory hides everything of lower layers.
    Opaque,
    /// `.wh..wh.*` other than the opaque marker: aufs bookkeeping, ignored.
    AufsMeta,
    /// `.wh.X`: hides `X` of lower layers.
    Whiteout(&'a str),
}

/// Why a name is not a normal name.
pub fn component_problem(c: &str) -> Option<&'static str> {
    match c {
        "" => Some("empty path component"),
        "." => Some("path component '.'"),
        ".." => Some("path component '..'"),
        _ if c.contains('/') => Some("path component contains '/'"),
        _ if c.contains('\0') => Some("path component contains NUL"),
        _ => None,
    }
}

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    /// A component that is not a normal name (see [`component_problem`]).
    #[error("{0}")]
    Component(&'static str),
    /// A whiteout of something that is not a normal name.
    #[error("whiteout target {target:?} is not a normal name ({why})")]
    WhiteoutTarget {
        /// The name after `.wh.`.
        target: String,
        /// Why it is not a normal name.
        why: &'static str,
    },
}

/// Classifies one (already split) name; refuses a whiteout whose target is not a normal name.
pub fn classify(base: &str) -> Result<NameKind<'_>, BadName> {
    if let Some(why) = component_problem(base) {
        return Err(BadName::Component(why));
    }
    if base == OPAQUE_WHITEOUT {
        return Ok(NameKind::Opaque);
    }
    if base.starts_with(AUFS_META_PREFIX) {
        return Ok(NameKind::AufsMeta);
    }
    match base.strip_prefix(WHITEOUT_PREFIX) {
        None => Ok(NameKind::Plain),
        Some(target) => match component_problem(target) {
            Some(why) => Err(BadName::WhiteoutTarget {
                target: target.to_string(),
                why,
            }),
            None => Ok(NameKind::Whiteout(target)),
        },
    }
}

/// Whether some component of a normalised path is aufs metadata (the entry itself, or
/// something inside an aufs metadata directory such as `.wh..wh.plnk/`).
pub fn in_aufs_meta(rel: &str) -> bool {
    rel.split('/')
        .any(|c| matches!(classify(c), Ok(NameKind::AufsMeta)))
}

/// Checks every component of a normalised relative path ("" is the root and has none).
pub fn check_path(rel: &str) -> Result<(), BadName> {
    if rel.is_empty() {
        return Ok(());
    }
    rel.split('/').try_for_each(|c| classify(c).map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_targets_must_be_normal_names() {
        assert_eq!(classify("a"), Ok(NameKind::Plain));
        assert_eq!(classify(".wh.a"), Ok(NameKind::Whiteout("a")));
        assert_eq!(classify(".wh..a"), Ok(NameKind::Whiteout(".a")));
        assert_eq!(classify(OPAQUE_WHITEOUT), Ok(NameKind::Opaque));
        assert_eq!(classify(".wh..wh.plnk"), Ok(NameKind::AufsMeta));
        for bad in [".wh.", ".wh..", ".wh...", "", ".", "..", "a\0b", "a/b"] {
            assert!(classify(bad).is_err(), "{bad:?}");
        }
        assert!(classify(".wh...")
            .unwrap_err()
            .to_string()
            .contains("\"..\""));
        assert!(check_path("a/b/.wh.c").is_ok());
        assert!(in_aufs_meta("a/.wh..wh.plnk/x") && in_aufs_meta(".wh..wh.aufs"));
        assert!(!in_aufs_meta("a/.wh..wh..opq") && !in_aufs_meta("a/.wh.x"));
        assert!(check_path("").is_ok());
        for bad in ["a//b", "a/./b", "a/../b", "/a", "a/", "a/.wh../b"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }
}
