//! The client's `Auth` service: a registry host's credentials answered from the client's
//! docker config (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, with its
//! credential helpers), as buildctl answers them. The daemon asks only while a build of this
//! session needs a registry; the credentials never have to exist on the daemon's side.
//! `FetchToken` and the token-authority calls are not served (`Unimplemented`), so the
//! daemon does the Bearer exchange with the credentials this answers.

use crate::buildkitd::proto::filesync::auth_server::Auth;
use crate::buildkitd::proto::filesync::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};
use stargaze_fs::remote::auth::{Credentials, DockerConfig};
use tonic::{Request, Response, Status};

/// Answers `Credentials{Host}` from a docker config.
#[derive(Debug, Clone)]
pub struct ConfigAuth(pub DockerConfig);

#[tonic::async_trait]
impl Auth for ConfigAuth {
    async fn credentials(
        &self,
        req: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = req.into_inner().host;
        let found = self.0.credentials(&host).map_err(|e| {
            tracing::warn!(%host, error = %e, "no credentials from the docker config");
            Status::unavailable(format!("credentials for {host}: {e}"))
        })?;
        let (username, secret) = match found {
            None => (String::new(), String::new()),
            Some(Credentials::Basic { username, password }) => {
                (username, password.expose().to_string())
            }
            Some(Credentials::IdentityToken(t)) => (String::new(), t.expose().to_string()),
            // A ready bearer token has no place in the answer; the host is asked anonymously.
            Some(Credentials::Bearer(_)) => (String::new(), String::new()),
        };
        Ok(Response::new(CredentialsResponse { username, secret }))
    }

    async fn fetch_token(
        &self,
        _: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented("this client does no token exchange"))
    }

    async fn get_token_authority(
        &self,
        _: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }

    async fn verify_token_authority(
        &self,
        _: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }
}
