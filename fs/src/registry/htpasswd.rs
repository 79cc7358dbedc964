//! Basic authentication against an Apache `htpasswd` file of bcrypt hashes (what
//! `htpasswd -B` writes and what distribution's registry accepts). bcrypt is slow on
//! purpose, so checks run on the blocking pool behind a semaphore of half the cores: a flood
//! of wrong passwords queues there instead of occupying the async workers, and a verified
//! credential is remembered for [`VERIFIED_TTL`] so its client does not queue at all.

use super::auth_cache::{AuthCache, CAPACITY};
use super::error::HtpasswdError;
use crate::small_file::read_small_file;
use base64::Engine as _;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long a verified credential is taken without bcrypt.
pub const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// Users and their bcrypt hashes.
pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: AuthCache,
    checks: Arc<Semaphore>,
}

/// bcrypt checks at once: half the cores (at least one), leaving the rest to serving.
fn check_slots() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().div_ceil(2))
        .unwrap_or(1)
}

/// Longest htpasswd file read.
const MAX_FILE: u64 = 1 << 20;

impl Htpasswd {
    /// Loads a file of `user:$2y$…` lines; other hash kinds are refused.
    pub fn load(path: &Path) -> Result<Self, HtpasswdError> {
        let text = String::from_utf8(read_small_file(path, MAX_FILE)?).map_err(|_| {
            HtpasswdError::NotText {
                path: path.to_path_buf(),
            }
        })?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || (path.to_path_buf(), i + 1);
            let (user, hash) = line.split_once(':').ok_or_else(|| {
                let (path, line) = at();
                HtpasswdError::NotUserHash { path, line }
            })?;
            if !hash.starts_with("$2") {
                let (path, line) = at();
                return Err(HtpasswdError::NotBcrypt { path, line });
            }
            users.insert(user.to_string(), hash.to_string());
        }
        Ok(Htpasswd {
            users,
            verified: AuthCache::new(VERIFIED_TTL, CAPACITY),
            checks: Arc::new(Semaphore::new(check_slots())),
        })
    }

    /// Checks an `Authorization` header value; true when it names a user with the right password.
    pub async fn check(&self, header: Option<&str>) -> bool {
        let Some(b64) = header.and_then(|h| h.strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return false;
        };
        let Ok(text) = std::str::from_utf8(&raw) else {
            return false;
        };
        let Some((user, pass)) = text.split_once(':') else {
            return false;
        };
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let tag = self.verified.tag(user, pass);
        if self.verified.hit(user, &tag, Instant::now()) {
            return true;
        }
        let Ok(_slot) = self.checks.acquire().await else {
            return false;
        };
        let (pass, hash) = (pass.to_string(), hash.clone());
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok {
            self.verified.remember(user, tag, Instant::now());
        } else {
            tracing::debug!(user, "basic auth: wrong password");
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(pair: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    #[tokio::test]
    async fn right_wrong_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&path, format!("# users\nalice:{hash}\n")).unwrap();
        let h = Htpasswd::load(&path).unwrap();
        assert!(!h.check(Some(&basic("alice:wrong"))).await);
        assert!(!h.check(Some(&basic("bob:s3cret"))).await);
        assert!(!h.check(Some("Bearer x")).await);
        assert!(!h.check(Some("Basic !!!")).await);
        assert!(!h.check(None).await);
        let tag = h.verified.tag("alice", "s3cret");
        assert!(
            !h.verified.hit("alice", &tag, Instant::now()),
            "failures are not cached"
        );
        assert!(h.check(Some(&basic("alice:s3cret"))).await);
        assert!(h.verified.hit("alice", &tag, Instant::now()));
        // A good entry does not let a wrong password in, and a wrong one does not evict it.
        assert!(!h.check(Some(&basic("alice:s3cret2"))).await);
        assert!(h.verified.hit("alice", &tag, Instant::now()));
    }

    #[test]
    fn other_hash_kinds_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, "alice:{SHA}abc\n").unwrap();
        assert!(Htpasswd::load(&path).is_err());
    }
}
