//! Platforms (`os/arch[/variant]`, as `--platform` takes them) and choosing one manifest
//! from an image index or Docker manifest list.

use std::fmt;

/// A string that is not `os/arch[/variant]` (each part 1-64 of `[A-Za-z0-9_-]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("platform {0:?} is not os/arch[/variant]")]
pub struct PlatformError(pub String);

/// A target platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// Architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// Variant (`v8`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// This machine.
    pub fn host() -> Self {
        Platform {
            os: "linux".into(),
            architecture: crate::image::host_arch().into(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    ///
    /// ```
    /// use stargaze_fs::remote::Platform;
    /// let p = Platform::parse("linux/arm64/v8")?;
    /// assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "arm64"));
    /// assert!(p.matches("linux", "arm64", Some("v8")));
    /// assert_eq!(p.to_string(), "linux/arm64/v8");
    /// assert!(Platform::parse("linux").is_err());
    /// # Ok::<(), stargaze_fs::remote::PlatformError>(())
    /// ```
    pub fn parse(s: &str) -> Result<Self, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(PlatformError(s.to_string())),
        }
    }

    /// Whether an index entry's platform fields match (a variant we do not ask for matches
    /// any; one we ask for must be equal).
    pub fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == arch
            && match (&self.variant, variant) {
                (None, _) => true,
                (Some(w), Some(v)) => w == v,
                (Some(_), None) => false,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, PlatformError> {
        Platform::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(!p.matches("linux", "arm64", None));
        let p = Platform::parse("linux/amd64").unwrap();
        assert!(p.matches("linux", "amd64", Some("v3")));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/../x").is_err());
        assert_eq!(p.to_string(), "linux/amd64");
    }
}
