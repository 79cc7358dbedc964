//! `moby.buildkit.v1.frontend.LLBBridge`, the gateway buildctl v0.11 runs its frontend
//! through (docs/BUILDKIT_PROTOCOL.md §5). Every call names its build with the metadata
//! `buildkit-controlapi-buildid` (a Solve registered by `super::solver`). Served: `Ping`
//! (the capabilities served here, the worker), `Solve` with `Frontend: dockerfile.v0` (run
//! by the daemon, the result kept by the build under a ref ID), `Return` (the result by its
//! ref, or the frontend's error, handed to the waiting Solve). The other methods are not in
//! our definitions and answer Unimplemented.

use super::dockerfile::DOCKERFILE_FRONTEND;
use super::proto::gateway::llb_bridge_server::LlbBridge;
use super::proto::gateway::{
    result, PingRequest, PongResponse, Ref, Result as GatewayResult, ReturnRequest, ReturnResponse,
    SolveRequest, SolveResponse,
};
use super::proto::moby::buildkit::v1::apicaps::ApiCap;
use super::solver::{GatewayBuild, Solver};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

/// A Solve's `FrontendInputs` (LLB states handed to the frontend in place of its locals):
/// an input without a definition is refused as buildkitd refuses it, any other input is
/// raw LLB, which this daemon does not solve.
pub fn refuse_frontend_inputs(
    inputs: &HashMap<String, super::proto::pb::Definition>,
) -> Result<(), Status> {
    if let Some((name, _)) = inputs.iter().find(|(_, d)| d.def.is_empty()) {
        return Err(Status::invalid_argument(format!(
            "frontend input {name:.64}: invalid nil input definition to definition op"
        )));
    }
    if !inputs.is_empty() {
        return Err(Status::unimplemented(
            "frontend inputs are raw LLB, which stargaze buildkitd does not solve; send the context through the session",
        ));
    }
    Ok(())
}

/// The metadata naming the build.
pub const BUILD_ID: &str = "buildkit-controlapi-buildid";

/// The gateway capabilities served (BuildKit's IDs).
const CAPS: &[&str] = &["solve.base", "return", "proto.refarray", "returnmap"];

/// The gateway of one daemon.
pub struct GatewayService(pub Arc<Solver>);

impl GatewayService {
    async fn build<T>(&self, req: &Request<T>) -> Result<Arc<GatewayBuild>, Status> {
        let id = req
            .metadata()
            .get(BUILD_ID)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!("gateway calls need the metadata {BUILD_ID}"))
            })?;
        self.0
            .gateway_build(id)
            .await
            .ok_or_else(|| Status::not_found(format!("no build {id:.64} is waiting for a gateway")))
    }
}

fn cap(id: &str) -> ApiCap {
    ApiCap {
        id: id.to_string(),
        enabled: true,
        ..ApiCap::default()
    }
}

#[tonic::async_trait]
impl LlbBridge for GatewayService {
    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PongResponse>, Status> {
        Ok(Response::new(PongResponse {
            frontend_api_caps: CAPS.iter().map(|c| cap(c)).collect(),
            llb_caps: Vec::new(),
            workers: vec![self.0.record.clone()],
        }))
    }

    async fn solve(&self, req: Request<SolveRequest>) -> Result<Response<SolveResponse>, Status> {
        let build = self.build(&req).await?;
        let req = req.into_inner();
        if req.definition.as_ref().is_some_and(|d| !d.def.is_empty()) {
            return Err(Status::unimplemented(
                "raw LLB definitions are not supported by stargaze buildkitd; use the dockerfile.v0 frontend",
            ));
        }
        refuse_frontend_inputs(&req.frontend_inputs)?;
        if req.frontend != DOCKERFILE_FRONTEND {
            return Err(Status::invalid_argument(format!(
                "frontend {:.64} is not supported by stargaze buildkitd ({DOCKERFILE_FRONTEND} is)",
                req.frontend
            )));
        }
        let img = self
            .0
            .dockerfile(
                &build.session_id,
                &req.frontend_opt,
                build.estargz,
                &build.progress,
            )
            .await?;
        let id = build.keep(img)?;
        let answer = if req.allow_result_return {
            SolveResponse {
                r#ref: String::new(),
                result: Some(GatewayResult {
                    result: Some(result::Result::Ref(Ref { id, def: None })),
                    metadata: Default::default(),
                }),
            }
        } else {
            SolveResponse {
                r#ref: id,
                result: None,
            }
        };
        Ok(Response::new(answer))
    }

    async fn r#return(
        &self,
        req: Request<ReturnRequest>,
    ) -> Result<Response<ReturnResponse>, Status> {
        let build = self.build(&req).await?;
        let req = req.into_inner();
        let outcome = if let Some(e) = req.error.filter(|e| e.code != 0) {
            Err(Status::new(Code::from_i32(e.code), e.message))
        } else {
            let id = match req.result.and_then(|r| r.result) {
                None => None,
                Some(result::Result::RefDeprecated(id)) => Some(id),
                Some(result::Result::Ref(r)) => Some(r.id),
                Some(result::Result::Refs(m)) => match m.refs.len() {
                    0 => None,
                    1 => m.refs.into_values().next().map(|r| r.id),
                    _ => return Err(Status::unimplemented("multi-platform results")),
                },
                Some(result::Result::RefsDeprecated(m)) => match m.refs.len() {
                    0 => None,
                    1 => m.refs.into_values().next(),
                    _ => return Err(Status::unimplemented("multi-platform results")),
                },
            };
            match id.filter(|i| !i.is_empty()) {
                None => Ok(None),
                Some(id) => Ok(Some(build.get(&id).ok_or_else(|| {
                    Status::invalid_argument(format!("no result {id:.64} in this build"))
                })?)),
            }
        };
        build.finish(outcome)?;
        Ok(Response::new(ReturnResponse {}))
    }
}

#[cfg(test)]
mod input_tests {
    use super::refuse_frontend_inputs;
    use crate::buildkitd::proto::pb::Definition;
    use std::collections::HashMap;
    use tonic::Code;

    #[test]
    fn frontend_inputs_are_refused_nil_ones_as_buildkitd_words_it() {
        assert!(refuse_frontend_inputs(&HashMap::new()).is_ok());
        let nil = HashMap::from([("context".to_string(), Definition::default())]);
        let e = refuse_frontend_inputs(&nil).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e
            .message()
            .contains("invalid nil input definition to definition op"));
        let llb = HashMap::from([(
            "context".to_string(),
            Definition {
                def: vec![vec![1, 2, 3]],
                ..Definition::default()
            },
        )]);
        assert_eq!(
            refuse_frontend_inputs(&llb).unwrap_err().code(),
            Code::Unimplemented
        );
    }
}
