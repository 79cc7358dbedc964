//! Closed sets of names that configs and flags spell as strings (the snapshotter backend in
//! `snapshot/backend.rs`, the network mode in `executor/network.rs`): looked up, listed and
//! deserialized one way, so each enum only says its names.

use std::fmt::Display;
use std::str::FromStr;

/// An enum whose every value has one name.
pub(crate) trait Names: Copy + 'static {
    /// Every value, in the order names are listed.
    const ALL: &'static [Self];
    /// The value's name.
    fn name(self) -> &'static str;
}

/// The value named `s`.
pub(crate) fn lookup<T: Names>(s: &str) -> Option<T> {
    T::ALL.iter().copied().find(|v| v.name() == s)
}

/// The names, comma-separated.
pub(crate) fn list<T: Names>() -> String {
    T::ALL
        .iter()
        .map(|v| v.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deserializes a string through `T`'s `FromStr`, so files and flags share its words.
pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let s = <String as serde::Deserialize>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}
