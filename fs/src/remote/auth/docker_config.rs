//! Credentials from docker's `config.json` (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`): per-host `credHelpers`, a global `credsStore`, then `auths`
//! entries (`auth` = base64 user:pass, or `username`/`password`, or `identitytoken`).
//! Helpers speak the `docker-credential-*` protocol: `get` with the server URL on stdin,
//! JSON `{Username, Secret}` on stdout; they are killed if they take longer than 10 s.

use super::{CredentialError, Credentials, Secret};
use crate::small_file::read_small_file;
use base64::Engine as _;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Largest config file read.
const MAX_CONFIG: u64 = 1 << 20;
/// Longest a credential helper may run.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// The key docker uses for Docker Hub.
const HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(Debug, Default, Clone, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct File {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

/// A loaded docker config.
#[derive(Debug, Default, Clone)]
pub struct DockerConfig {
    file: File,
    path: Option<PathBuf>,
}

impl DockerConfig {
    /// The default location: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(d).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }

    /// Loads the default config; a missing file is an empty config.
    pub fn load_default() -> Result<Self, CredentialError> {
        match Self::default_path() {
            Some(p) if p.exists() => Self::load(&p),
            _ => Ok(Self::default()),
        }
    }

    /// Loads a config file.
    pub fn load(path: &Path) -> Result<Self, CredentialError> {
        let data = read_small_file(path, MAX_CONFIG)?;
        let file: File =
            serde_json::from_slice(&data).map_err(|source| CredentialError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        for name in file.cred_helpers.values().chain(file.creds_store.iter()) {
            check_helper_name(name)?;
        }
        Ok(DockerConfig {
            file,
            path: Some(path.to_path_buf()),
        })
    }

    /// Credentials for `host` (`host[:port]`, `docker.io` for Docker Hub), if any.
    pub fn credentials(&self, host: &str) -> Result<Option<Credentials>, CredentialError> {
        let key = if is_hub(host) { HUB_KEY } else { host };
        if let Some(helper) = self.file.cred_helpers.get(host) {
            return run_helper(helper, key);
        }
        if let Some(store) = &self.file.creds_store {
            if let Some(c) = run_helper(store, key)? {
                return Ok(Some(c));
            }
        }
        let entry = self
            .file
            .auths
            .iter()
            .find(|(k, _)| normalize_key(k) == normalize_key(key))
            .map(|(_, v)| v);
        let Some(e) = entry else { return Ok(None) };
        self.entry_credentials(e)
    }

    fn entry_credentials(&self, e: &AuthEntry) -> Result<Option<Credentials>, CredentialError> {
        let bad = |problem| CredentialError::AuthEntry {
            path: self.path.clone().unwrap_or_default(),
            problem,
        };
        if let Some(t) = e.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::IdentityToken(Secret::new(t.clone()))));
        }
        if let Some(a) = e.auth.as_ref().filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| bad("not base64"))?;
            let text = String::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| bad("not user:password"))?;
            return Ok(Some(Credentials::basic(u, p)));
        }
        match (&e.username, &e.password) {
            (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials::basic(u, p.clone()))),
            _ => Ok(None),
        }
    }
}

fn is_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// `https://host/v1/` → `host`.
fn normalize_key(k: &str) -> &str {
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    k.split('/').next().unwrap_or(k)
}

fn check_helper_name(name: &str) -> Result<(), CredentialError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.');
    if ok {
        Ok(())
    } else {
        Err(CredentialError::HelperName(name.to_string()))
    }
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `docker-credential-<helper> get` for `server`.
fn run_helper(helper: &str, server: &str) -> Result<Option<Credentials>, CredentialError> {
    check_helper_name(helper)?;
    let prog = format!("docker-credential-{helper}");
    let mut child = Command::new(&prog)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CredentialError::HelperSpawn {
            program: prog.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(64 << 10).read_to_end(&mut out);
        }
        out
    });
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CredentialError::HelperTimeout {
                    program: prog,
                    timeout: HELPER_TIMEOUT,
                });
            }
            Err(source) => {
                return Err(CredentialError::HelperWait {
                    program: prog,
                    source,
                })
            }
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        // The protocol's "not found" is a plain failure with that message.
        let text = String::from_utf8_lossy(&out);
        if text.contains("credentials not found") || out.is_empty() {
            return Ok(None);
        }
        return Err(CredentialError::HelperFailed {
            program: prog,
            status,
        });
    }
    let reply: HelperReply =
        serde_json::from_slice(&out).map_err(|_| CredentialError::HelperReply { program: prog })?;
    if reply.username == "<token>" {
        return Ok(Some(Credentials::IdentityToken(Secret::new(reply.secret))));
    }
    if reply.username.is_empty() && reply.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials::basic(reply.username, reply.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auths_forms() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("u:p:w");
        std::fs::write(
            &p,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{b64}"}},
                "reg.lan:5000":{{"username":"a","password":"b"}},
                "http://tok.lan/v2/":{{"identitytoken":"rt"}}}}}}"#
            ),
        )
        .unwrap();
        let c = DockerConfig::load(&p).unwrap();
        assert_eq!(
            c.credentials("docker.io").unwrap(),
            Some(Credentials::basic("u", "p:w"))
        );
        assert_eq!(
            c.credentials("reg.lan:5000").unwrap(),
            Some(Credentials::basic("a", "b"))
        );
        assert_eq!(
            c.credentials("tok.lan").unwrap(),
            Some(Credentials::IdentityToken(Secret::new("rt")))
        );
        assert_eq!(c.credentials("other").unwrap(), None);
        let dbg = format!("{:?}", c.credentials("docker.io").unwrap());
        assert!(!dbg.contains("p:w"), "{dbg}");
    }

    #[test]
    fn refuses_bad_configs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, r#"{"credsStore":"../../bin/sh"}"#).unwrap();
        assert!(DockerConfig::load(&p).is_err());
        std::fs::write(&p, r#"{"auths":{"h":{"auth":"!!"}}}"#).unwrap();
        assert!(DockerConfig::load(&p).unwrap().credentials("h").is_err());
        std::fs::write(&p, "not json").unwrap();
        assert!(DockerConfig::load(&p).is_err());
    }
}
