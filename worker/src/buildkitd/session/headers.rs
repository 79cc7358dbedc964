//! The metadata a client attaches its session with (`X-Docker-Expose-Session-*`, lower-case
//! on the wire), read with bounds: a hostile client cannot make the daemon keep unbounded
//! names or method lists.

use tonic::metadata::MetadataMap;

/// The session ID.
pub const UUID: &str = "x-docker-expose-session-uuid";
/// The session's name (for logs).
pub const NAME: &str = "x-docker-expose-session-name";
/// The key scoping the session's local-directory caches.
pub const SHARED_KEY: &str = "x-docker-expose-session-sharedkey";
/// Repeated: every method the client serves on the session.
pub const GRPC_METHOD: &str = "x-docker-expose-session-grpc-method";

/// Bounds on sessions.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Live sessions at once.
    pub max_sessions: usize,
    /// Methods one session may expose.
    pub max_methods: usize,
    /// Bytes of any one header value.
    pub max_value_len: usize,
    /// How the sessions' health is checked.
    pub health: super::health::HealthPolicy,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions: 128,
            max_methods: 256,
            max_value_len: 1024,
            health: super::health::HealthPolicy::default(),
        }
    }
}

/// Why a session's metadata was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// A required header is absent.
    #[error("session header {0} missing")]
    Missing(&'static str),
    /// A header is given twice where one is expected.
    #[error("session header {0} given more than once")]
    Repeated(&'static str),
    /// A value is not visible ASCII.
    #[error("session header {0} is not visible ASCII")]
    NotAscii(&'static str),
    /// A value is longer than the bound.
    #[error("session header {name} longer than {max} bytes")]
    TooLong {
        /// The header.
        name: &'static str,
        /// The bound.
        max: usize,
    },
    /// More methods than the bound.
    #[error("session exposes more than {0} methods")]
    TooManyMethods(usize),
    /// A method is not of the form `/package.Service/Method`.
    #[error("session method {0:?} is not /service/method")]
    BadMethod(String),
}

/// A session's metadata, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHeaders {
    /// The session ID.
    pub id: String,
    /// Its name (may be empty).
    pub name: String,
    /// Its shared key (may be empty).
    pub shared_key: String,
    /// The methods the client serves, `/package.Service/Method`.
    pub methods: Vec<String>,
}

fn values(
    md: &MetadataMap,
    name: &'static str,
    limits: &SessionLimits,
) -> Result<Vec<String>, HeaderError> {
    let mut out = Vec::new();
    for v in md.get_all(name) {
        if out.len() >= limits.max_methods {
            return Err(HeaderError::TooManyMethods(limits.max_methods));
        }
        let bytes = v.as_bytes();
        if bytes.len() > limits.max_value_len {
            return Err(HeaderError::TooLong {
                name,
                max: limits.max_value_len,
            });
        }
        let s = std::str::from_utf8(bytes).map_err(|_| HeaderError::NotAscii(name))?;
        if !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(HeaderError::NotAscii(name));
        }
        out.push(s.to_string());
    }
    Ok(out)
}

fn single(
    md: &MetadataMap,
    name: &'static str,
    limits: &SessionLimits,
) -> Result<Option<String>, HeaderError> {
    let mut v = values(md, name, limits)?;
    if v.len() > 1 {
        return Err(HeaderError::Repeated(name));
    }
    Ok(v.pop())
}

impl SessionHeaders {
    /// Reads the session headers from a `Control.Session` call's metadata.
    pub fn parse(md: &MetadataMap, limits: &SessionLimits) -> Result<Self, HeaderError> {
        let id = single(md, UUID, limits)?
            .filter(|s| !s.is_empty())
            .ok_or(HeaderError::Missing(UUID))?;
        if id.contains(' ') {
            return Err(HeaderError::NotAscii(UUID));
        }
        let name = single(md, NAME, limits)?.unwrap_or_default();
        let shared_key = single(md, SHARED_KEY, limits)?.unwrap_or_default();
        let methods = values(md, GRPC_METHOD, limits)?;
        for m in &methods {
            let ok = m
                .strip_prefix('/')
                .and_then(|r| r.split_once('/'))
                .is_some_and(|(svc, meth)| {
                    !svc.is_empty() && !meth.is_empty() && !meth.contains('/') && !m.contains(' ')
                });
            if !ok {
                return Err(HeaderError::BadMethod(m.clone()));
            }
        }
        Ok(SessionHeaders {
            id,
            name,
            shared_key,
            methods,
        })
    }
}
