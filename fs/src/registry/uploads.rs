//! Blob upload sessions (POST → PATCH… → PUT ?digest=): each is a file in `ROOT/_uploads`
//! named by a random id, appended in order; completion hashes the file and moves it into the
//! repository only when the digest matches. Concurrent uploads of the same blob are
//! independent files and the last rename is as good as the first.
//!
//! Sessions cost a file each, so they are bounded: in number (in all and per client
//! address, answered with 429 `TOOMANYREQUESTS` beyond), in time (a session untouched for
//! the expiry is forgotten and its file removed by [`Uploads::sweep`]), and across restarts
//! (a session does not outlive its server, so [`Uploads::open`] empties the directory).

use super::error::ApiError;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bounds of the upload sessions of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Sessions open at once, in all.
    pub max_total: usize,
    /// Sessions open at once from one client address.
    pub max_per_client: usize,
    /// A session untouched for this long is forgotten.
    pub expiry: Duration,
}

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

struct Session {
    upload: Upload,
    busy: bool,
    client: Option<IpAddr>,
    touched: Instant,
}

/// All uploads of one server.
pub struct Uploads {
    dir: PathBuf,
    limits: UploadLimits,
    open: Mutex<HashMap<String, Session>>,
}

impl Uploads {
    /// Upload files live in `dir`; whatever an earlier server left there is removed
    /// (returns how many files were).
    pub fn open(dir: PathBuf, limits: UploadLimits) -> Result<(Self, usize), std::io::Error> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                tracing::warn!(path = %entry.path().display(), "unexpected directory in the upload area; left alone");
                continue;
            }
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
        let u = Uploads {
            dir,
            limits,
            open: Mutex::new(HashMap::new()),
        };
        Ok((u, removed))
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        !s.busy && now.saturating_duration_since(s.touched) >= self.limits.expiry
    }

    /// Starts an upload for `repo` from `client`; returns its id, or 429 beyond the bounds.
    pub fn start(&self, repo: &str, client: Option<IpAddr>) -> Result<String, ApiError> {
        let mut m = self.map();
        if m.len() >= self.limits.max_total {
            tracing::warn!(open = m.len(), "upload sessions at their bound");
            return Err(ApiError::too_many_requests(format!(
                "{} upload sessions are open, the most this registry keeps; retry later",
                m.len()
            )));
        }
        if let Some(ip) = client {
            let mine = m.values().filter(|s| s.client == Some(ip)).count();
            if mine >= self.limits.max_per_client {
                tracing::warn!(client = %ip, open = mine, "upload sessions of one client at their bound");
                return Err(ApiError::too_many_requests(format!(
                    "{mine} upload sessions of this client are open, the most it may have; finish or cancel some"
                )));
            }
        }
        let id = super::store::rand_hex();
        let path = self.dir.join(&id);
        std::fs::File::create_new(&path).map_err(ApiError::internal)?;
        m.insert(
            id.clone(),
            Session {
                upload: Upload {
                    repo: repo.to_string(),
                    path,
                    size: 0,
                },
                busy: false,
                client,
                touched: Instant::now(),
            },
        );
        Ok(id)
    }

    /// Takes exclusive use of an upload (a second concurrent request on it is refused).
    pub fn take(&self, repo: &str, id: &str) -> Result<Upload, ApiError> {
        if id.len() != 32 || !id.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::upload_unknown());
        }
        let now = Instant::now();
        let mut m = self.map();
        let expired = m.get(id).is_some_and(|s| self.expired(s, now));
        if expired {
            if let Some(s) = m.remove(id) {
                let _ = std::fs::remove_file(s.upload.path);
            }
            return Err(ApiError::upload_unknown());
        }
        match m.get_mut(id) {
            Some(s) if s.upload.repo == repo => {
                if s.busy {
                    return Err(ApiError::upload_invalid(
                        "upload is busy with another request",
                    ));
                }
                s.busy = true;
                s.touched = now;
                Ok(s.upload.clone())
            }
            _ => Err(ApiError::upload_unknown()),
        }
    }

    /// Releases an upload taken with [`Self::take`], recording its new size.
    pub fn put_back(&self, id: &str, size: u64) {
        if let Some(s) = self.map().get_mut(id) {
            s.upload.size = size;
            s.busy = false;
            s.touched = Instant::now();
        }
    }

    /// Current state without taking it.
    pub fn peek(&self, repo: &str, id: &str) -> Result<Upload, ApiError> {
        match self.map().get(id) {
            Some(s) if s.upload.repo == repo && !self.expired(s, Instant::now()) => {
                Ok(s.upload.clone())
            }
            _ => Err(ApiError::upload_unknown()),
        }
    }

    /// Forgets an upload and removes its file if still there.
    pub fn finish(&self, id: &str) {
        if let Some(s) = self.map().remove(id) {
            let _ = std::fs::remove_file(s.upload.path);
        }
    }

    /// Forgets the sessions expired at `now` and removes their files; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let gone: Vec<Session> = {
            let mut m = self.map();
            let ids: Vec<String> = m
                .iter()
                .filter(|(_, s)| self.expired(s, now))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| m.remove(id)).collect()
        };
        for s in &gone {
            if let Err(e) = std::fs::remove_file(&s.upload.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %s.upload.path.display(), error = %e, "removing an expired upload");
                }
            }
        }
        gone.len()
    }

    /// How often [`Self::sweep`] should run: a quarter of the expiry, within 1 s..60 s.
    pub fn sweep_every(&self) -> Duration {
        (self.limits.expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Sessions open.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uploads(dir: &std::path::Path, total: usize, per: usize) -> Uploads {
        let limits = UploadLimits {
            max_total: total,
            max_per_client: per,
            expiry: Duration::from_secs(3600),
        };
        Uploads::open(dir.to_path_buf(), limits).unwrap().0
    }

    fn files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn bounded_per_client_and_in_all() {
        let tmp = tempfile::tempdir().unwrap();
        let u = uploads(tmp.path(), 5, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            u.start("r", Some(a)).unwrap();
        }
        let e = u.start("r", Some(a)).unwrap_err();
        assert_eq!((e.status, e.code), (429, "TOOMANYREQUESTS"));
        u.start("r", Some(b)).unwrap();
        u.start("r", None).unwrap();
        let e = u.start("r", Some(b)).unwrap_err();
        assert_eq!((e.status, e.code), (429, "TOOMANYREQUESTS"));
        assert_eq!((u.len(), files(tmp.path())), (5, 5));
    }

    #[test]
    fn a_finished_session_frees_its_slot_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let u = uploads(tmp.path(), 1, 1);
        let ip = Some("10.0.0.1".parse().unwrap());
        let id = u.start("r", ip).unwrap();
        assert!(u.start("r", ip).is_err());
        u.take("r", &id).unwrap();
        u.finish(&id);
        assert_eq!(files(tmp.path()), 0);
        u.start("r", ip).unwrap();
    }

    #[test]
    fn untouched_sessions_expire_busy_ones_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let u = uploads(tmp.path(), 10, 10);
        let idle = u.start("r", None).unwrap();
        let busy = u.start("r", None).unwrap();
        u.take("r", &busy).unwrap();
        let now = Instant::now();
        assert_eq!(u.sweep(now), 0);
        assert_eq!(u.sweep(now + Duration::from_secs(3601)), 1);
        assert_eq!(files(tmp.path()), 1);
        assert!(u.peek("r", &idle).is_err());
        u.put_back(&busy, 0);
        assert!(u.peek("r", &busy).is_ok());
        assert_eq!(u.sweep(Instant::now() + Duration::from_secs(3601)), 1);
        assert_eq!((u.len(), files(tmp.path())), (0, 0));
    }

    #[test]
    fn opening_removes_leftovers() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..4 {
            std::fs::write(tmp.path().join(format!("old{i}")), b"x").unwrap();
        }
        std::fs::create_dir(tmp.path().join("keep")).unwrap();
        let limits = UploadLimits {
            max_total: 1,
            max_per_client: 1,
            expiry: Duration::from_secs(1),
        };
        let (_, removed) = Uploads::open(tmp.path().to_path_buf(), limits).unwrap();
        assert_eq!(removed, 4);
        assert_eq!(files(tmp.path()), 1);
    }

    #[test]
    fn sweeps_run_often_enough_and_not_too_often() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = |secs| {
            let l = UploadLimits {
                max_total: 1,
                max_per_client: 1,
                expiry: Duration::from_secs(secs),
            };
            Uploads::open(tmp.path().to_path_buf(), l).unwrap().0
        };
        assert_eq!(mk(2).sweep_every(), Duration::from_secs(1));
        assert_eq!(mk(3600).sweep_every(), Duration::from_secs(60));
        assert_eq!(mk(120).sweep_every(), Duration::from_secs(30));
    }
}
