//! The client's `Secrets` service, as `buildctl --secret id=ID,src=FILE` serves it: each
//! secret ID names a file read when the daemon asks (`GetSecret`); an ID not given is
//! `NotFound`, and a file larger than the daemon takes is refused rather than sent.

use crate::buildkitd::proto::secrets::secrets_server::Secrets;
use crate::buildkitd::proto::secrets::{GetSecretRequest, GetSecretResponse};
use crate::buildkitd::session::secrets::MAX_SECRET;
use std::collections::HashMap;
use std::path::PathBuf;
use tonic::{Request, Response, Status};

/// Secrets by ID, each a file.
#[derive(Debug, Clone, Default)]
pub struct FileSecrets(pub HashMap<String, PathBuf>);

#[tonic::async_trait]
impl Secrets for FileSecrets {
    async fn get_secret(
        &self,
        req: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = req.into_inner().id;
        let Some(path) = self.0.get(&id) else {
            return Err(Status::not_found(format!("secret {id} not found")));
        };
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| Status::not_found(format!("secret {id}: {}: {e}", path.display())))?;
        if meta.len() > MAX_SECRET as u64 {
            return Err(Status::invalid_argument(format!(
                "secret {id}: larger than {MAX_SECRET} bytes"
            )));
        }
        let data = tokio::fs::read(path)
            .await
            .map_err(|e| Status::internal(format!("secret {id}: {}: {e}", path.display())))?;
        Ok(Response::new(GetSecretResponse { data }))
    }
}
