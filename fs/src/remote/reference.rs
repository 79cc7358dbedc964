//! Image references as users type them (`busybox`, `127.0.0.1:5000/lab/app:v1`,
//! `ghcr.io/o/r@sha256:…`), parsed strictly with docker's defaults, because the repository
//! name ends up in URLs and, in the built-in registry, in paths on disk.

use crate::digest::Digest;
use crate::oci::{validate_repository, validate_tag, NameError};
use std::fmt;

/// The registry used when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Where `docker.io` is actually served.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// Why a reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// Empty input.
    #[error("empty image reference")]
    Empty,
    /// The repository path or the tag breaks the distribution grammar.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The digest is malformed or not sha256.
    #[error("invalid digest in reference: {0}")]
    Digest(#[from] crate::digest::DigestError),
    /// The registry host part is malformed.
    #[error("invalid registry host {0:?}")]
    Host(String),
}

/// A parsed `[host/]repo[:tag][@digest]` reference.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host as written (`docker.io` when absent), with port if any.
    pub registry: String,
    /// Repository path (`library/busybox` on docker.io for `busybox`).
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest is given.
    pub tag: Option<String>,
    /// Digest pin, which wins over the tag when fetching.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference with docker's defaults.
    ///
    /// ```
    /// use stargaze_fs::remote::Reference;
    /// let r = Reference::parse("busybox")?;
    /// assert_eq!((r.registry.as_str(), r.repository.as_str()), ("docker.io", "library/busybox"));
    /// assert_eq!(r.tag.as_deref(), Some("latest"));
    /// let r = Reference::parse("127.0.0.1:5000/lab/app:v1")?;
    /// assert_eq!((r.registry.as_str(), r.tag.as_deref()), ("127.0.0.1:5000", Some("v1")));
    /// assert!(Reference::parse("reg.io/../etc").is_err());
    /// # Ok::<(), stargaze_fs::remote::ReferenceError>(())
    /// ```
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // A ':' after the last '/' is a tag separator; before it, a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        validate_host(&registry)?;
        let repository = if is_docker_hub(&registry) && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository)?;
        if let Some(t) = &tag {
            validate_tag(t)?;
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t,
        };
        Ok(Reference {
            registry: if registry == "index.docker.io" {
                DEFAULT_REGISTRY.to_string()
            } else {
                registry
            },
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the manifests endpoint for: the digest when pinned, else the tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same repository pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// Host:port the registry API is served from (docker.io maps to its API host).
    pub fn api_host(&self) -> &str {
        if is_docker_hub(&self.registry) {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn is_docker_hub(host: &str) -> bool {
    matches!(host, "docker.io" | "index.docker.io" | DOCKER_HUB_API_HOST)
}

fn validate_host(host: &str) -> Result<(), ReferenceError> {
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        && !host.starts_with(['.', '-', ':']);
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::Host(host.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_defaults() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.api_host(), DOCKER_HUB_API_HOST);
        let r = Reference::parse("index.docker.io/user/app:1.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "user/app")
        );
    }

    #[test]
    fn host_port_tag_digest() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&format!("127.0.0.1:5000/lab/app:v1@{d}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "lab/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.object(), d);
        let r = Reference::parse("localhost/x").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost", "x")
        );
        assert_eq!(r.to_string(), "localhost/x:latest");
    }

    #[test]
    fn refuses_bad_names() {
        for bad in [
            "",
            "UPPER",
            "a/../b",
            "reg.io/../etc",
            "reg.io//x",
            "a..b",
            "a_-b",
            "-a",
            "a:",
            "a:.x",
            "a@sha512:00",
            "a@sha256:zz",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
