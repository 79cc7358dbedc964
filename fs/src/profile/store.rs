//! Profiles recorded on this machine: `DIR/<layer hex>-<TOC hex>.json`, each a profile
//! document (see `format`) with the one part of that layer. The directory is private (0700),
//! files are 0600 and replaced atomically (a temp file in the same directory, renamed), so a
//! reader sees a whole old or a whole new profile. A file that does not parse is reported
//! and treated as absent; it is replaced by the next recording.

use super::format::{LayerProfile, Profile, MAX_DOC_BYTES};
use super::ProfileError;
use crate::digest::Digest;
use crate::small_file::{read_small_file, SmallFileError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The local profile store.
#[derive(Debug, Clone)]
pub struct ProfileStore {
    dir: PathBuf,
}

impl ProfileStore {
    /// The store at `dir` (created, private, on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ProfileStore { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, layer: &Digest, toc: &Digest) -> PathBuf {
        self.dir.join(format!("{}-{}.json", layer.hex(), toc.hex()))
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProfileError {
        let path = path.to_path_buf();
        move |source| ProfileError::Io { path, source }
    }

    /// The profile of `layer` with TOC `toc`: `Ok(None)` when there is none, an error when
    /// the file is unreadable or is not a profile of that layer.
    pub fn load(&self, layer: &Digest, toc: &Digest) -> Result<Option<LayerProfile>, ProfileError> {
        let p = self.path(layer, toc);
        let data = match read_small_file(&p, MAX_DOC_BYTES as u64) {
            Ok(d) => d,
            Err(SmallFileError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(SmallFileError::Read { path, source }) => {
                return Err(ProfileError::Io { path, source })
            }
            Err(SmallFileError::TooLarge { .. }) => {
                return Err(ProfileError::TooLarge(MAX_DOC_BYTES as u64 + 1))
            }
        };
        let doc = Profile::parse(&data)?;
        match doc.layers.into_iter().next() {
            Some(part) if part.layer == *layer && part.toc == *toc => Ok(Some(part)),
            Some(part) => Err(ProfileError::WrongLayer {
                layer: part.layer,
                toc: part.toc,
            }),
            None => Ok(None),
        }
    }

    /// Stores `part` as the profile of its layer, replacing any.
    pub fn save(&self, part: &LayerProfile) -> Result<PathBuf, ProfileError> {
        crate::sys::private_dir(&self.dir).map_err(Self::io(&self.dir))?;
        let p = self.path(&part.layer, &part.toc);
        let data = Profile::new(vec![part.clone()]).to_bytes();
        // NamedTempFile creates the file 0600.
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(Self::io(&self.dir))?;
        tmp.write_all(&data).map_err(Self::io(tmp.path()))?;
        tmp.as_file().sync_all().map_err(Self::io(tmp.path()))?;
        tmp.persist(&p).map_err(|e| ProfileError::Io {
            path: p.clone(),
            source: e.error,
        })?;
        Ok(p)
    }

    /// Removes the profile of `layer` with TOC `toc`; whether there was one.
    pub fn remove(&self, layer: &Digest, toc: &Digest) -> Result<bool, ProfileError> {
        let p = self.path(layer, toc);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ProfileError::Io { path: p, source: e }),
        }
    }

    /// Every local profile of `layer` (any TOC), bounded by [`super::MAX_LAYERS`] files.
    pub fn for_layer(&self, layer: &Digest) -> Vec<LayerProfile> {
        let prefix = format!("{}-", layer.hex());
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let Some(toc) = rest
                .strip_suffix(".json")
                .and_then(|h| format!("sha256:{h}").parse().ok())
            else {
                continue;
            };
            match self.load(layer, &toc) {
                Ok(Some(p)) => out.push(p),
                Ok(None) => {}
                Err(e) => tracing::warn!(layer = %layer, error = %e, "ignoring a local profile"),
            }
            if out.len() >= super::MAX_LAYERS {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Entry;
    use std::os::unix::fs::PermissionsExt;

    fn part() -> LayerProfile {
        LayerProfile {
            layer: Digest::of(b"layer"),
            toc: Digest::of(b"toc"),
            bytes: 6,
            chunks: vec![Entry(5, 0, 1), Entry(0, 0, 2)],
        }
    }

    #[test]
    fn save_load_private_and_atomic() {
        let root = tempfile::tempdir().unwrap();
        let s = ProfileStore::new(root.path().join("profiles"));
        let p = part();
        assert!(s.load(&p.layer, &p.toc).unwrap().is_none());
        let file = s.save(&p).unwrap();
        assert_eq!(s.load(&p.layer, &p.toc).unwrap().unwrap(), p);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(s.dir()), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(
            std::fs::read_dir(s.dir()).unwrap().count(),
            1,
            "no temp file left"
        );
        assert_eq!(s.for_layer(&p.layer), std::slice::from_ref(&p));
        assert!(s.remove(&p.layer, &p.toc).unwrap());
        assert!(!s.remove(&p.layer, &p.toc).unwrap());
    }

    #[test]
    fn broken_or_misplaced_files_are_errors() {
        let root = tempfile::tempdir().unwrap();
        let s = ProfileStore::new(root.path());
        let p = part();
        let file = s.save(&p).unwrap();
        std::fs::write(&file, b"{not json").unwrap();
        assert!(matches!(
            s.load(&p.layer, &p.toc),
            Err(ProfileError::Parse(_))
        ));
        // Another layer's profile under this layer's name.
        let other = LayerProfile {
            toc: Digest::of(b"other"),
            ..p.clone()
        };
        std::fs::write(&file, Profile::new(vec![other]).to_bytes()).unwrap();
        assert!(matches!(
            s.load(&p.layer, &p.toc),
            Err(ProfileError::WrongLayer { .. })
        ));
        assert!(s.for_layer(&p.layer).is_empty());
    }
}
