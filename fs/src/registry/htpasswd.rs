//! Basic authentication against an Apache `htpasswd` file of bcrypt hashes (what
//! `htpasswd -B` writes and what distribution's registry accepts). Verified pairs are
//! remembered by a hash of the pair so bcrypt runs once per client, not once per request.

use base64::Engine as _;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

/// Users and their bcrypt hashes.
pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

/// Longest htpasswd file read.
const MAX_FILE: u64 = 1 << 20;

impl Htpasswd {
    /// Loads a file of `user:$2y$…` lines; other hash kinds are refused.
    pub fn load(path: &Path) -> Result<Self, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.len() > MAX_FILE {
            return Err(format!(
                "{} is larger than {MAX_FILE} bytes",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("{}:{}: expected user:hash", path.display(), i + 1))?;
            if !hash.starts_with("$2") {
                return Err(format!(
                    "{}:{}: only bcrypt hashes are supported (htpasswd -B)",
                    path.display(),
                    i + 1
                ));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        Ok(Htpasswd {
            users,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// Checks an `Authorization` header value; true when it names a user with the right password.
    pub fn check(&self, header: Option<&str>) -> bool {
        let Some(b64) = header.and_then(|h| h.strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return false;
        };
        let key = crate::Digest::of(&raw);
        if let Ok(v) = self.verified.lock() {
            if v.contains(key.as_bytes()) {
                return true;
            }
        }
        let Ok(text) = std::str::from_utf8(&raw) else {
            return false;
        };
        let Some((user, pass)) = text.split_once(':') else {
            return false;
        };
        let ok = self
            .users
            .get(user)
            .is_some_and(|h| bcrypt::verify(pass, h).unwrap_or(false));
        if ok {
            if let Ok(mut v) = self.verified.lock() {
                if v.len() > 4096 {
                    v.clear();
                }
                v.insert(*key.as_bytes());
            }
        }
        ok
    }
}
