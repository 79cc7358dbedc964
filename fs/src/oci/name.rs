//! Repository and tag names by the distribution grammar. A valid repository name is also a
//! safe relative path (no `..`, no empty component, not absolute), which the built-in
//! registry relies on when it turns a name into a directory.

/// Longest repository name accepted (distribution's limit).
pub const MAX_NAME_LEN: usize = 255;

/// Why a repository name or tag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The repository path breaks the distribution grammar.
    #[error("invalid repository name {0:?}: lowercase letters, digits and single separators (. _ __ -) in /-separated components")]
    Repository(String),
    /// The tag breaks the grammar.
    #[error("invalid tag {0:?}: 1-128 of [A-Za-z0-9_.-], not starting with . or -")]
    Tag(String),
}

/// Checks a repository path against the distribution grammar: `/`-separated components of
/// `[a-z0-9]+` joined by one of `.`, `_`, `__` or any run of `-`. This excludes `..`, empty
/// components and absolute paths, so a valid name is also a safe relative path.
pub fn validate_repository(name: &str) -> Result<(), NameError> {
    let bad = || NameError::Repository(name.to_string());
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad());
    }
    for comp in name.split('/') {
        if !component_ok(comp) {
            return Err(bad());
        }
    }
    Ok(())
}

fn component_ok(comp: &str) -> bool {
    let b = comp.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-+", always followed by an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// Checks a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), NameError> {
    let b = tag.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let ok = !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError::Tag(tag.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_grammar() {
        assert!(validate_repository("a__b/c-----d/e.f").is_ok());
        for bad in ["", "a___b", "a/../b", "/a", "a//b", "A", "a-", "a._b"] {
            assert!(validate_repository(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_repository(&"a".repeat(MAX_NAME_LEN)).is_ok());
        assert!(validate_repository(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn tag_grammar() {
        assert!(validate_tag("v1.0_rc-2").is_ok());
        assert!(validate_tag(&"t".repeat(128)).is_ok());
        for bad in ["", ".x", "-x", "a:b", "a/b"] {
            assert_eq!(validate_tag(bad), Err(NameError::Tag(bad.into())));
        }
        assert!(validate_tag(&"t".repeat(129)).is_err());
    }
}
