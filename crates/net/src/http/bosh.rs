//! BOSH (XEP-0124, XEP-0206) at `/http-bind`. (Being built: see issue 13.)

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::HttpContext;

/// The BOSH sessions.
#[derive(Default)]
pub struct Sessions {}

/// `/http-bind`.
pub(super) async fn handle() -> Response {
    (StatusCode::NOT_IMPLEMENTED, "BOSH is not available yet\n").into_response()
}

/// Ends sessions whose client went away.
pub(super) async fn reaper(_ctx: Arc<HttpContext>) {}
