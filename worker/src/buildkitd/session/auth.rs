//! Registry credentials from a client's session: a [`CredentialProvider`] over the `Auth`
//! service the client serves (`moby.filesync.v1.Auth`, docs/BUILDKIT_PROTOCOL.md §4).
//! `Credentials{Host}` answers a host's credentials (both empty: anonymous, no credentials;
//! username empty with a secret: an identity token, exchanged as an OAuth2 refresh token).
//! When the session serves `FetchToken`, Bearer challenges are handed to the client, which
//! does the exchange itself, so the registry's credentials never reach the daemon (a client
//! that lists it but answers `Unimplemented` is asked for its credentials instead).
//!
//! The client is not trusted to answer, nor to answer sensibly: every call has a timeout,
//! answers are bounded in size, and a malformed answer is an error naming the session.

use super::super::proto::filesync::auth_client::AuthClient;
use super::super::proto::filesync::{CredentialsRequest, FetchTokenRequest};
use stargaze_fs::remote::auth::{
    CredentialError, CredentialProvider, Credentials, FetchedToken, ProviderFuture, Secret,
    TokenRequest,
};
use std::time::{Duration, SystemTime};
use tonic::transport::Channel;

/// The method a session serves when it answers credentials.
pub const CREDENTIALS: &str = "/moby.filesync.v1.Auth/Credentials";
/// The method a session serves when it fetches tokens itself.
pub const FETCH_TOKEN: &str = "/moby.filesync.v1.Auth/FetchToken";
/// The client ID BuildKit's daemon sends with `FetchToken`.
const CLIENT_ID: &str = "buildkit-client";

/// Bounds on a session's `Auth` answers.
#[derive(Debug, Clone, Copy)]
pub struct AuthLimits {
    /// Longest one call may take.
    pub timeout: Duration,
    /// Largest answer decoded.
    pub max_answer: usize,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            timeout: Duration::from_secs(15),
            max_answer: 256 << 10,
        }
    }
}

/// Why a session's `Auth` call gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum SessionAuthError {
    /// The client did not answer within the bound.
    #[error("{method} did not answer within {timeout:?}")]
    Timeout {
        /// The call.
        method: &'static str,
        /// The bound.
        timeout: Duration,
    },
    /// The call failed (the client's error, or the session's connection is gone).
    #[error("{method} failed: {status}")]
    Call {
        /// The call.
        method: &'static str,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// The answer is not one a registry request can use.
    #[error("{method}: {problem}")]
    Answer {
        /// The call.
        method: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

/// The `Auth` service of one session, as a credential provider.
#[derive(Debug, Clone)]
pub struct SessionCredentials {
    id: String,
    channel: Channel,
    fetches_tokens: bool,
    limits: AuthLimits,
}

impl SessionCredentials {
    /// The provider of session `id` over `channel`; `fetches_tokens` when the session serves
    /// [`FETCH_TOKEN`].
    pub fn new(id: &str, channel: Channel, fetches_tokens: bool, limits: AuthLimits) -> Self {
        SessionCredentials {
            id: id.to_string(),
            channel,
            fetches_tokens,
            limits,
        }
    }

    fn client(&self) -> AuthClient<Channel> {
        AuthClient::new(self.channel.clone())
            .max_decoding_message_size(self.limits.max_answer)
            .max_encoding_message_size(self.limits.max_answer)
    }

    fn wrap(&self, e: SessionAuthError) -> CredentialError {
        CredentialError::Session {
            session: self.id.clone(),
            source: Box::new(e),
        }
    }

    async fn call<T>(
        &self,
        method: &'static str,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<Option<T>, CredentialError> {
        match tokio::time::timeout(self.limits.timeout, f).await {
            Err(_) => Err(self.wrap(SessionAuthError::Timeout {
                method,
                timeout: self.limits.timeout,
            })),
            // As BuildKit: a session without the method has nothing to say.
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(None),
            Ok(Err(status)) => Err(self.wrap(SessionAuthError::Call { method, status })),
            Ok(Ok(r)) => Ok(Some(r.into_inner())),
        }
    }

    async fn ask_credentials(&self, host: &str) -> Result<Option<Credentials>, CredentialError> {
        let req = CredentialsRequest {
            host: host.to_string(),
        };
        let mut client = self.client();
        let Some(answer) = self.call("Credentials", client.credentials(req)).await? else {
            return Ok(None);
        };
        let bad = |problem| {
            self.wrap(SessionAuthError::Answer {
                method: "Credentials",
                problem,
            })
        };
        if answer.username.chars().any(char::is_control) || answer.username.contains(':') {
            return Err(bad("the username has a control character or a colon"));
        }
        Ok(
            match (answer.username.is_empty(), answer.secret.is_empty()) {
                (true, true) => None,
                (true, false) => Some(Credentials::IdentityToken(Secret::new(answer.secret))),
                // A username without a secret is anonymous, as for BuildKit's token options.
                (false, true) => None,
                (false, false) => Some(Credentials::basic(answer.username, answer.secret)),
            },
        )
    }

    /// `None`: the client does not implement it after all (its credentials are asked then).
    async fn ask_token(&self, req: &TokenRequest) -> Result<Option<FetchedToken>, CredentialError> {
        let call = FetchTokenRequest {
            client_id: CLIENT_ID.into(),
            host: req.host.clone(),
            realm: req.realm.clone(),
            service: req.service.clone(),
            scopes: req.scopes.clone(),
        };
        let mut client = self.client();
        let bad = |problem| {
            self.wrap(SessionAuthError::Answer {
                method: "FetchToken",
                problem,
            })
        };
        let Some(answer) = self.call("FetchToken", client.fetch_token(call)).await? else {
            return Ok(None);
        };
        if answer.token.is_empty() {
            return Err(bad("empty token"));
        }
        if answer.expires_in < 0 || answer.issued_at < 0 {
            return Err(bad("negative expiry or issue time"));
        }
        let expires_in = u64::try_from(answer.expires_in)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let issued_at = u64::try_from(answer.issued_at)
            .ok()
            .filter(|s| *s > 0)
            .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)));
        Ok(Some(FetchedToken {
            token: Secret::new(answer.token),
            expires_in,
            issued_at,
        }))
    }
}

impl CredentialProvider for SessionCredentials {
    fn credentials<'a>(&'a self, host: &'a str) -> ProviderFuture<'a, Option<Credentials>> {
        Box::pin(self.ask_credentials(host))
    }

    fn fetch_token<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> Option<ProviderFuture<'a, Option<FetchedToken>>> {
        if !self.fetches_tokens {
            return None;
        }
        Some(Box::pin(self.ask_token(req)))
    }
}
