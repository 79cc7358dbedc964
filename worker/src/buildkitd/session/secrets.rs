//! Secrets from a client's session for `RUN --mount=type=secret`: the `Secrets.GetSecret`
//! call of BuildKit's session protocol, asked of the build's session. A session that does
//! not serve it, or answers `NotFound`, has no such secret (an optional mount is then left
//! out); every call has a timeout and the answer a size bound, since the client is not
//! trusted to answer sensibly.

use super::super::proto::secrets::secrets_client::SecretsClient;
use super::super::proto::secrets::GetSecretRequest;
use crate::frontend::{SecretError, SecretSource};
use std::time::Duration;
use tonic::transport::Channel;

/// The method a session serving secrets lists.
pub const GET_SECRET: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";
/// Largest secret taken from a session (BuildKit's bound).
pub const MAX_SECRET: usize = 500 << 10;
/// Longest a session may take to answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The secrets of one session.
#[derive(Debug, Clone)]
pub struct SessionSecrets {
    session: String,
    channel: Channel,
    serves: bool,
}

impl SessionSecrets {
    /// The secrets session `session` answers over `channel` (`serves`: it lists
    /// [`GET_SECRET`]).
    pub fn new(session: &str, channel: Channel, serves: bool) -> Self {
        SessionSecrets {
            session: session.to_string(),
            channel,
            serves,
        }
    }
}

impl SecretSource for SessionSecrets {
    fn secret<'a>(
        &'a self,
        id: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<u8>, SecretError>> {
        Box::pin(async move {
            if !self.serves {
                return Err(SecretError::NotFound(id.to_string()));
            }
            let mut c =
                SecretsClient::new(self.channel.clone()).max_decoding_message_size(MAX_SECRET + 64);
            let req = GetSecretRequest {
                id: id.to_string(),
                annotations: Default::default(),
            };
            let failed = |message: String| SecretError::Failed {
                id: id.to_string(),
                message,
            };
            match tokio::time::timeout(TIMEOUT, c.get_secret(req)).await {
                Err(_) => Err(failed(format!(
                    "session {} did not answer within {TIMEOUT:?}",
                    self.session
                ))),
                Ok(Err(s))
                    if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unimplemented) =>
                {
                    Err(SecretError::NotFound(id.to_string()))
                }
                Ok(Err(s)) => Err(failed(format!("session {}: {}", self.session, s.message()))),
                Ok(Ok(r)) => {
                    let data = r.into_inner().data;
                    if data.len() > MAX_SECRET {
                        return Err(failed(format!("larger than {MAX_SECRET} bytes")));
                    }
                    Ok(data)
                }
            }
        })
    }
}
