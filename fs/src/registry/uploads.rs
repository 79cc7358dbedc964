//! Blob upload sessions (POST → PATCH… → PUT ?digest=): each is a file in `ROOT/_uploads`
//! named by a random id, appended in order; completion hashes the file and moves it into the
//! repository only when the digest matches. Concurrent uploads of the same blob are
//! independent files and the last rename is as good as the first.

use super::error::ApiError;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// One upload in progress.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Repository it belongs to.
    pub repo: String,
    /// Data file.
    pub path: PathBuf,
    /// Bytes received.
    pub size: u64,
}

/// All uploads of one server.
pub struct Uploads {
    dir: PathBuf,
    open: Mutex<HashMap<String, (Upload, bool)>>,
}

impl Uploads {
    /// Upload files live in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Uploads {
            dir,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Upload, bool)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an upload for `repo`; returns its id.
    pub fn start(&self, repo: &str) -> Result<String, ApiError> {
        let id = super::store::rand_hex();
        let path = self.dir.join(&id);
        std::fs::File::create(&path).map_err(ApiError::internal)?;
        self.map().insert(
            id.clone(),
            (
                Upload {
                    repo: repo.to_string(),
                    path,
                    size: 0,
                },
                false,
            ),
        );
        Ok(id)
    }

    /// Takes exclusive use of an upload (a second concurrent request on it is refused).
    pub fn take(&self, repo: &str, id: &str) -> Result<Upload, ApiError> {
        if id.len() != 32 || !id.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::upload_unknown());
        }
        let mut m = self.map();
        match m.get_mut(id) {
            Some((u, busy)) if u.repo == repo => {
                if *busy {
                    return Err(ApiError::upload_invalid(
                        "upload is busy with another request",
                    ));
                }
                *busy = true;
                Ok(u.clone())
            }
            _ => Err(ApiError::upload_unknown()),
        }
    }

    /// Releases an upload taken with [`Self::take`], recording its new size.
    pub fn put_back(&self, id: &str, size: u64) {
        if let Some((u, busy)) = self.map().get_mut(id) {
            u.size = size;
            *busy = false;
        }
    }

    /// Current state without taking it.
    pub fn peek(&self, repo: &str, id: &str) -> Result<Upload, ApiError> {
        match self.map().get(id) {
            Some((u, _)) if u.repo == repo => Ok(u.clone()),
            _ => Err(ApiError::upload_unknown()),
        }
    }

    /// Forgets an upload and removes its file if still there.
    pub fn finish(&self, id: &str) {
        if let Some((u, _)) = self.map().remove(id) {
            let _ = std::fs::remove_file(u.path);
        }
    }
}
