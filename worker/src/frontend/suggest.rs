//! "did you mean …?" hints for misspelt Dockerfile instructions and flags: the closest
//! known name by edit distance, when it is close enough to be a typo rather than another
//! word. Clients and users match on these hints, as BuildKit's frontend gives them.

/// Edit distance (insertions, deletions, substitutions) between `a` and `b`, ASCII
/// case-insensitive. Inputs here are short names; longer ones are not compared.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<u8> = a.bytes().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<u8> = b.bytes().map(|c| c.to_ascii_lowercase()).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The name among `known` closest to `word`, if it is at most two edits away and fewer
/// edits than half of `word`'s length (so short unrelated words get no hint).
pub fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    if word.is_empty() || word.len() > 64 {
        return None;
    }
    known
        .iter()
        .map(|k| (distance(word, k), *k))
        .filter(|(d, _)| *d <= 2 && *d * 2 < word.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// ` (did you mean X?)` for the closest of `known`, or nothing.
pub fn hint(word: &str, known: &[&str]) -> String {
    closest(word, known)
        .map(|k| format!(" (did you mean {k}?)"))
        .unwrap_or_default()
}

/// ` (did you mean X?)` the way BuildKit's `suggest.WrapError` picks X for values (mount
/// keys and types): the first closest of `known` fewer than three edits away, whatever
/// the word's length; nothing for an exact match.
pub fn near_hint(word: &str, known: &[&str]) -> String {
    if word.len() > 64 || known.contains(&word) {
        return String::new();
    }
    let mut best: Option<(usize, &str)> = None;
    for k in known {
        let d = distance(word, k);
        if d < best.map_or(3, |(b, _)| b) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| format!(" (did you mean {k}?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_the_closest_name_and_other_words_none() {
        let ins = ["ENTRYPOINT", "ENV", "EXPOSE", "RUN"];
        assert_eq!(closest("FNTRYPOINT", &ins), Some("ENTRYPOINT"));
        assert_eq!(closest("entrypont", &ins), Some("ENTRYPOINT"));
        assert_eq!(closest("RUM", &ins), Some("RUN"));
        assert_eq!(closest("XY", &ins), None);
        assert_eq!(closest("SOMETHING", &ins), None);
        assert_eq!(closest("", &ins), None);
        assert_eq!(
            hint("mont", &["mount", "network"]),
            " (did you mean mount?)"
        );
        assert_eq!(hint("zzzz", &["mount", "network"]), "");
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(
            near_hint("tmp", &["bind", "tmpfs"]),
            " (did you mean tmpfs?)"
        );
        assert_eq!(near_hint("tmpfs", &["bind", "tmpfs"]), "");
    }
}
