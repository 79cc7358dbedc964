//! The profile document, `application/vnd.stargaze.prefetch-profile.v1+json`:
//!
//! ```json
//! {"mediaType": "application/vnd.stargaze.prefetch-profile.v1+json",
//!  "layers": [{"layer": "sha256:…", "toc": "sha256:…",
//!              "bytes": 123456, "chunks": [[blob_offset, inner_offset, ms], …]}]}
//! ```
//!
//! One part per layer, keyed by the layer's blob digest and its TOC digest; each chunk entry
//! names a chunk by where it starts (the blob offset of its frame and the decompressed offset
//! inside the frame, which together are unique in a layer), in the order the workload first
//! read it, with the milliseconds since the layer was opened. No names, no file contents.
//! Bounds hold while parsing ([`MAX_DOC_BYTES`], [`MAX_LAYERS`], [`MAX_ENTRIES`], unknown
//! fields refused), and [`LayerProfile::resolve`] accepts a part only when every entry is a
//! chunk start of the layer's index.

use super::ProfileError;
use crate::digest::Digest;
use crate::format::{Chunk, Index, NodeKind};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{HashMap, HashSet};

/// The media type of the document (and the artifact type of its registry artifact).
pub const PROFILE_MEDIA_TYPE: &str = "application/vnd.stargaze.prefetch-profile.v1+json";
/// Largest document read (local file or registry blob).
pub const MAX_DOC_BYTES: usize = 4 << 20;
/// Most layer parts in one document.
pub const MAX_LAYERS: usize = 256;
/// Most chunk entries in one layer part.
pub const MAX_ENTRIES: usize = 32_768;

/// A profile: one part per layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// [`PROFILE_MEDIA_TYPE`].
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Per-layer parts.
    #[serde(deserialize_with = "bounded::<_, _, MAX_LAYERS>")]
    pub layers: Vec<LayerProfile>,
}

/// The chunks one layer's readers touched, in first-touch order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerProfile {
    /// The layer blob's digest.
    pub layer: Digest,
    /// Its TOC's digest.
    pub toc: Digest,
    /// Compressed bytes of those chunks when recorded (for people; nothing relies on it).
    #[serde(default)]
    pub bytes: u64,
    /// Chunks in the order they were first read.
    #[serde(deserialize_with = "bounded::<_, _, MAX_ENTRIES>")]
    pub chunks: Vec<Entry>,
}

/// One chunk: `[blob offset of its frame, decompressed offset inside the frame, ms after
/// the layer was opened]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry(pub u64, pub u64, pub u32);

impl Entry {
    /// The entry for chunk `c`, read `ms` after open.
    pub fn of(c: &Chunk, ms: u64) -> Self {
        Entry(
            c.blob_offset,
            c.inner_offset,
            ms.min(u64::from(u32::MAX)) as u32,
        )
    }

    /// (blob offset, inner offset): what names the chunk.
    pub fn key(&self) -> (u64, u64) {
        (self.0, self.1)
    }
}

/// A sequence of at most `N` elements, refused as soon as element `N + 1` appears.
fn bounded<'de, D, T, const N: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T, const N: usize>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const N: usize> serde::de::Visitor<'de> for V<T, N> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {N} elements")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(s.size_hint().unwrap_or(0).min(N).min(1024));
            while let Some(x) = s.next_element()? {
                if out.len() == N {
                    return Err(serde::de::Error::custom(format!("more than {N} elements")));
                }
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V::<T, N>(std::marker::PhantomData))
}

impl Profile {
    /// An empty profile of this version.
    pub fn new(layers: Vec<LayerProfile>) -> Self {
        Profile {
            media_type: PROFILE_MEDIA_TYPE.to_string(),
            layers,
        }
    }

    /// Parses a document, enforcing every bound; no layer may appear twice.
    pub fn parse(data: &[u8]) -> Result<Self, ProfileError> {
        if data.len() > MAX_DOC_BYTES {
            return Err(ProfileError::TooLarge(data.len() as u64));
        }
        let p: Profile = serde_json::from_slice(data).map_err(ProfileError::Parse)?;
        if p.media_type != PROFILE_MEDIA_TYPE {
            return Err(ProfileError::MediaType(p.media_type));
        }
        let mut seen = HashSet::new();
        for l in &p.layers {
            if !seen.insert(l.layer) {
                return Err(ProfileError::DuplicateLayer(l.layer));
            }
        }
        Ok(p)
    }

    /// The document's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain data with string keys: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The part for `layer`, if any.
    pub fn layer(&self, layer: &Digest) -> Option<&LayerProfile> {
        self.layers.iter().find(|l| l.layer == *layer)
    }
}

impl LayerProfile {
    /// The chunks of `index` this part names, in its order, when the part is for `layer`
    /// with TOC `toc` and every entry is a distinct chunk start of the index.
    pub fn resolve(
        &self,
        index: &Index,
        layer: &Digest,
        toc: &Digest,
    ) -> Result<Vec<Chunk>, ProfileError> {
        if self.layer != *layer || self.toc != *toc {
            return Err(ProfileError::WrongLayer {
                layer: self.layer,
                toc: self.toc,
            });
        }
        let mut by_start: HashMap<(u64, u64), &Chunk> = HashMap::with_capacity(index.chunk_count);
        for n in index.nodes.iter().filter(|n| n.kind == NodeKind::Reg) {
            for c in n.chunks.iter().filter(|c| !c.zeros && c.size > 0) {
                by_start.entry((c.blob_offset, c.inner_offset)).or_insert(c);
            }
        }
        let mut used = HashSet::with_capacity(self.chunks.len());
        let mut out = Vec::with_capacity(self.chunks.len());
        for e in &self.chunks {
            let (offset, inner) = e.key();
            let Some(c) = by_start.get(&e.key()) else {
                return Err(ProfileError::NotAChunk { offset, inner });
            };
            if !used.insert(e.key()) {
                return Err(ProfileError::DuplicateEntry { offset, inner });
            }
            out.push((*c).clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Compression, Limits};

    const L: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const T: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn d(s: &str) -> Digest {
        s.parse().unwrap()
    }

    /// Chunk starts (blob offset, inner offset): a (100, 0); b (200, 0), (300, 0) and
    /// (300, 10) (two chunks in one frame); c (1000, 0).
    fn index() -> Index {
        let z = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let json = format!(
            r#"{{"version":1,"entries":[
            {{"name":"a","type":"reg","size":10,"offset":100,"chunkDigest":"{z}"}},
            {{"name":"b","type":"reg","size":30,"offset":200,"chunkSize":10,"chunkDigest":"{z}"}},
            {{"name":"b","type":"chunk","offset":300,"chunkOffset":10,"chunkSize":10,"chunkDigest":"{z}"}},
            {{"name":"b","type":"chunk","offset":300,"innerOffset":10,"chunkOffset":20,"chunkDigest":"{z}"}},
            {{"name":"c","type":"reg","size":10,"offset":1000,"chunkDigest":"{z}"}}
        ]}}"#
        );
        Index::from_json(json.as_bytes(), Compression::Gzip, 1100, &Limits::default()).unwrap()
    }

    fn part(entries: &[(u64, u64)]) -> LayerProfile {
        LayerProfile {
            layer: d(L),
            toc: d(T),
            bytes: 0,
            chunks: entries.iter().map(|&(o, i)| Entry(o, i, 0)).collect(),
        }
    }

    #[test]
    fn round_trip() {
        let p = Profile::new(vec![part(&[(100, 0), (0, 0), (0, 4096)])]);
        let bytes = p.to_bytes();
        assert_eq!(Profile::parse(&bytes).unwrap(), p);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("[[100,0,0],[0,0,0],[0,4096,0]]"), "{text}");
    }

    #[test]
    fn resolve_keeps_the_recorded_order() {
        let idx = index();
        let got = part(&[(1000, 0), (300, 10), (100, 0)])
            .resolve(&idx, &d(L), &d(T))
            .unwrap();
        let keys: Vec<_> = got
            .iter()
            .map(|c| (c.blob_offset, c.inner_offset))
            .collect();
        assert_eq!(keys, [(1000, 0), (300, 10), (100, 0)]);
    }

    #[test]
    fn hostile_parts_are_refused() {
        let idx = index();
        // An offset inside a frame, not a chunk start.
        assert!(matches!(
            part(&[(100, 0), (101, 0)]).resolve(&idx, &d(L), &d(T)),
            Err(ProfileError::NotAChunk {
                offset: 101,
                inner: 0
            })
        ));
        assert!(matches!(
            part(&[(300, 3)]).resolve(&idx, &d(L), &d(T)),
            Err(ProfileError::NotAChunk { .. })
        ));
        assert!(matches!(
            part(&[(u64::MAX, u64::MAX)]).resolve(&idx, &d(L), &d(T)),
            Err(ProfileError::NotAChunk { .. })
        ));
        assert!(matches!(
            part(&[(300, 0), (100, 0), (300, 0)]).resolve(&idx, &d(L), &d(T)),
            Err(ProfileError::DuplicateEntry { offset: 300, .. })
        ));
        // Another layer, or the same layer with another TOC.
        assert!(matches!(
            part(&[(100, 0)]).resolve(&idx, &d(T), &d(T)),
            Err(ProfileError::WrongLayer { .. })
        ));
        assert!(matches!(
            part(&[(100, 0)]).resolve(&idx, &d(L), &d(L)),
            Err(ProfileError::WrongLayer { .. })
        ));
    }

    #[test]
    fn hostile_documents_are_errors() {
        let ok = |layers: &str| {
            format!(r#"{{"mediaType":"{PROFILE_MEDIA_TYPE}","layers":{layers}}}"#).into_bytes()
        };
        let one = |chunks: &str| {
            ok(&format!(
                r#"[{{"layer":"{L}","toc":"{T}","chunks":{chunks}}}]"#
            ))
        };
        assert!(Profile::parse(&one("[[1,2,3]]")).is_ok());
        // Not JSON, wrong shapes, wrong numbers.
        for bad in [
            b"".to_vec(),
            b"\xff\xfe".to_vec(),
            b"not json".to_vec(),
            b"[]".to_vec(),
            b"{}".to_vec(),
            one("[[1,2]]"),
            one("[[1,2,3,4]]"),
            one("[[-1,0,0]]"),
            one("[[1.5,0,0]]"),
            one("[[18446744073709551616,0,0]]"),
            one("[[0,0,4294967296]]"),
            one(r#"[["1",0,0]]"#),
            one("{}"),
            ok(r#"[{"layer":"sha256:00","toc":"x","chunks":[]}]"#),
            ok(&format!(
                r#"[{{"layer":"{L}","toc":"{T}","chunks":[],"extra":1}}]"#
            )),
            format!(r#"{{"mediaType":"{PROFILE_MEDIA_TYPE}","layers":[],"x":1}}"#).into_bytes(),
        ] {
            assert!(
                matches!(Profile::parse(&bad), Err(ProfileError::Parse(_))),
                "{:?}",
                String::from_utf8_lossy(&bad)
            );
        }
        // Another media type (a later version).
        let v2 =
            br#"{"mediaType":"application/vnd.stargaze.prefetch-profile.v2+json","layers":[]}"#;
        assert!(matches!(
            Profile::parse(v2),
            Err(ProfileError::MediaType(_))
        ));
        // A layer twice.
        let part = format!(r#"{{"layer":"{L}","toc":"{T}","chunks":[]}}"#);
        assert!(matches!(
            Profile::parse(&ok(&format!("[{part},{part}]"))),
            Err(ProfileError::DuplicateLayer(_))
        ));
    }

    #[test]
    fn bounds_hold_while_parsing() {
        let too_many = vec!["[0,0,0]"; MAX_ENTRIES + 1].join(",");
        let doc = format!(
            r#"{{"mediaType":"{PROFILE_MEDIA_TYPE}","layers":[{{"layer":"{L}","toc":"{T}","chunks":[{too_many}]}}]}}"#
        );
        assert!(matches!(
            Profile::parse(doc.as_bytes()),
            Err(ProfileError::Parse(_))
        ));
        let layers =
            vec![format!(r#"{{"layer":"{L}","toc":"{T}","chunks":[]}}"#); MAX_LAYERS + 1].join(",");
        let doc = format!(r#"{{"mediaType":"{PROFILE_MEDIA_TYPE}","layers":[{layers}]}}"#);
        assert!(matches!(
            Profile::parse(doc.as_bytes()),
            Err(ProfileError::Parse(_))
        ));
        let big = vec![b' '; MAX_DOC_BYTES + 1];
        assert!(matches!(
            Profile::parse(&big),
            Err(ProfileError::TooLarge(_))
        ));
        // Deep nesting is an error (serde_json's recursion limit), not a stack overflow.
        let deep = format!(
            r#"{{"mediaType":"{PROFILE_MEDIA_TYPE}","layers":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(Profile::parse(deep.as_bytes()).is_err());
    }
}
