//! Reads TOC JSON one entry at a time, so opening a layer never holds every [`TocEntry`]
//! at once: a hostile TOC of millions of tiny entries costs its JSON bytes and the packed
//! index, not a parsed `Vec<TocEntry>` (hundreds of bytes an entry) on top. Unknown keys are
//! ignored as by the derived [`super::toc::Toc`]; a repeated `version` or `entries` key is
//! refused rather than silently merged.

use super::toc::TocEntry;
use super::FormatError;
use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess};
use std::fmt;

/// Calls `each` for every entry of the TOC in `json`, in order; returns the TOC's `version`.
/// `check_version` is called as soon as the version is known, so a TOC of an unknown
/// version that states it before its entries is refused before any entry is looked at.
pub fn for_each_entry(
    json: &[u8],
    check_version: &mut dyn FnMut(i64) -> Result<(), FormatError>,
    each: &mut dyn FnMut(TocEntry) -> Result<(), FormatError>,
) -> Result<i64, FormatError> {
    let mut failed = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    let top = Top {
        check_version,
        each,
        failed: &mut failed,
    };
    let parsed = top.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match (parsed, failed) {
        (_, Some(e)) => Err(e),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(FormatError::Toc(e.to_string())),
    }
}

/// The top-level object.
struct Top<'a> {
    check_version: &'a mut dyn FnMut(i64) -> Result<(), FormatError>,
    each: &'a mut dyn FnMut(TocEntry) -> Result<(), FormatError>,
    /// The first error of a callback; serde only carries text, so the typed error waits here.
    failed: &'a mut Option<FormatError>,
}

/// Stashes a callback's error and stops the parse.
fn stash<E: serde::de::Error>(
    failed: &mut Option<FormatError>,
    r: Result<(), FormatError>,
) -> Result<(), E> {
    r.map_err(|e| {
        *failed = Some(e);
        E::custom("stopped by an invalid entry")
    })
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = i64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Top<'_> {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOC object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<i64, A::Error> {
        let mut version = None;
        let mut entries_seen = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "version" => {
                    if version.is_some() {
                        return Err(A::Error::duplicate_field("version"));
                    }
                    let v: i64 = map.next_value()?;
                    stash(self.failed, (self.check_version)(v))?;
                    version = Some(v);
                }
                "entries" => {
                    if entries_seen {
                        return Err(A::Error::duplicate_field("entries"));
                    }
                    entries_seen = true;
                    map.next_value_seed(Entries {
                        each: &mut *self.each,
                        failed: &mut *self.failed,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        version.ok_or_else(|| A::Error::missing_field("version"))
    }
}

/// The `entries` array, handed out one entry at a time.
struct Entries<'a> {
    each: &'a mut dyn FnMut(TocEntry) -> Result<(), FormatError>,
    failed: &'a mut Option<FormatError>,
}

impl<'de> DeserializeSeed<'de> for Entries<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Entries<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of TOC entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(e) = seq.next_element::<TocEntry>()? {
            stash(self.failed, (self.each)(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(json: &str) -> Result<(i64, Vec<String>), FormatError> {
        let mut out = Vec::new();
        let v = for_each_entry(json.as_bytes(), &mut |_| Ok(()), &mut |e| {
            out.push(e.name);
            Ok(())
        })?;
        Ok((v, out))
    }

    #[test]
    fn streams_entries_in_order_and_ignores_unknown_keys() {
        let (v, n) = names(
            r#"{"entries":[{"name":"a","x":[1]},{"name":"b"}],"tarSplitDigest":"","version":1}"#,
        )
        .unwrap();
        assert_eq!((v, n), (1, vec!["a".to_string(), "b".to_string()]));
        assert!(names(r#"{"version":1,"version":1}"#).is_err());
        assert!(names(r#"{"version":1,"entries":[],"entries":[]}"#).is_err());
        assert!(names(r#"{"entries":[]}"#)
            .unwrap_err()
            .to_string()
            .contains("version"));
        assert!(names(r#"{"version":1} trailing"#).is_err());
        assert!(names("not json")
            .unwrap_err()
            .to_string()
            .contains("invalid TOC"));
    }

    #[test]
    fn a_callback_error_comes_back_typed() {
        let e = for_each_entry(
            br#"{"version":1,"entries":[{"name":"a"},{"name":"b"}]}"#,
            &mut |_| Ok(()),
            &mut |e| Err(FormatError::entry(&e.name, "no")),
        )
        .unwrap_err();
        assert!(
            matches!(e, FormatError::Entry { ref entry, .. } if entry == "a"),
            "{e}"
        );
        let e = for_each_entry(
            br#"{"version":2,"entries":[{"name":"a"}]}"#,
            &mut |v| Err(FormatError::Toc(format!("version {v}"))),
            &mut |_| panic!("entry read before the version was checked"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("version 2"));
    }
}
