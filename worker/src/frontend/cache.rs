//! The step cache: a record per cache key (`<dir>/<key>.json`) naming the committed
//! snapshot a step produced and the layer blob of its changes in the worker's content
//! store. A key chains its parent's key with the instruction, the environment it ran in
//! and the digests of what it copied, so a record is only reused for the same inputs. A
//! record whose snapshot or blob has gone is a miss.

use super::layer::LayerBlob;
use std::path::{Path, PathBuf};

/// One cached step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The committed snapshot with the step's result.
    pub snapshot: String,
    /// The layer of its changes.
    pub layer: LayerBlob,
    /// The instruction, for history and `worker prune` reports.
    pub created_by: String,
    /// Last use, Unix milliseconds.
    pub last_used: i64,
}

/// The records of one worker.
#[derive(Debug, Clone)]
pub struct StepCache {
    dir: PathBuf,
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    now_millis() / 1000
}

/// Milliseconds since the epoch (last-use times: builds come faster than seconds).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl StepCache {
    /// The records under `dir` (created).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        stargaze_fs::sys::private_dir(dir)?;
        Ok(StepCache {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The record for `key` (a hex digest), if any and readable.
    pub fn get(&self, key: &str) -> Option<Record> {
        let data = std::fs::read(self.path(key)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Stores `rec` under `key`, atomically.
    pub fn put(&self, key: &str, rec: &Record) -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        serde_json::to_writer(&mut tmp, rec).map_err(std::io::Error::other)?;
        tmp.persist(self.path(key)).map_err(|e| e.error)?;
        Ok(())
    }

    /// Marks `key` used now.
    pub fn touch(&self, key: &str) {
        if let Some(mut r) = self.get(key) {
            r.last_used = now_millis();
            let _ = self.put(key, &r);
        }
    }

    /// Removes the record of `key`.
    pub fn remove(&self, key: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every record with its key.
    pub fn list(&self) -> Vec<(String, Record)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.strip_suffix(".json")?.to_string();
                Some((key.clone(), self.get(&key)?))
            })
            .collect()
    }
}
