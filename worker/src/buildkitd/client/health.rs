//! The health service a client serves on its session, as buildctl's does: `Check` answers
//! SERVING while the session runs, so the daemon's checks (`session::health`) keep it.

use crate::buildkitd::proto::grpc::health::v1::health_check_response::ServingStatus;
use crate::buildkitd::proto::grpc::health::v1::health_server::Health;
use crate::buildkitd::proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use tonic::{Request, Response, Status};

/// Always serving (the session's tasks run as long as it does).
#[derive(Debug, Clone, Copy, Default)]
pub struct Serving;

#[tonic::async_trait]
impl Health for Serving {
    async fn check(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }
}
