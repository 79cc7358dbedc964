//! Registry authentication: credentials and where they come from (sessions, docker config,
//! explicit), `WWW-Authenticate` challenges, and the bearer-token dance with a per-(host,
//! scope) token cache. Secrets are wrapped so `Debug` and logs never show them.

mod challenge;
mod docker_config;
mod error;
mod session;
mod token;

pub use challenge::{parse_challenges, Challenge, ChallengeError};
pub use docker_config::DockerConfig;
pub use error::CredentialError;
pub use session::{
    session_ids_from_labels, CredentialProvider, FetchedToken, ProviderFuture, SessionManager,
    StaticCredentials, TokenRequest, SESSION_LABEL,
};
pub use token::{Authenticator, Scope};

use std::fmt;

/// A secret string: compared and sent, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for building a header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Credentials for one registry host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// Username and password (basic auth, or the token request's basic auth).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// An OAuth2 refresh token (docker config `identitytoken`).
    IdentityToken(Secret),
    /// A ready bearer token sent as is.
    Bearer(Secret),
}

impl Credentials {
    /// Username/password credentials.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials::Basic {
            username: username.into(),
            password: Secret::new(password),
        }
    }

    /// The `Authorization: Basic …` value, for basic credentials.
    pub fn basic_header(&self) -> Option<String> {
        use base64::Engine as _;
        match self {
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose()))
            )),
            _ => None,
        }
    }
}
