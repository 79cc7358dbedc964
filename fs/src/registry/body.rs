//! Reading request bodies with a stall limit: a client that stops sending a body mid-way
//! (a PATCH chunk, a manifest) gets an error after the body timeout instead of holding its
//! upload and its connection for ever. The limit is per frame, so a slow but steady client
//! is never cut.

use super::error::ApiError;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use std::time::Duration;

/// The next frame of `body`, `None` at its end; an error when none arrives within `stall`.
pub async fn next_frame(
    body: &mut Incoming,
    stall: Duration,
) -> Option<Result<Frame<Bytes>, ApiError>> {
    match tokio::time::timeout(stall, body.frame()).await {
        Err(_) => {
            tracing::info!(stall_s = stall.as_secs_f64(), "request body stalled");
            Some(Err(ApiError::upload_invalid(format!(
                "no body bytes arrived for {} s",
                stall.as_secs_f64()
            ))))
        }
        Ok(None) => None,
        Ok(Some(r)) => Some(r.map_err(|e| ApiError::upload_invalid(format!("reading body: {e}")))),
    }
}
