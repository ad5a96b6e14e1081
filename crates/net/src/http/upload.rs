//! XEP-0363 file transfer over HTTP: PUT into a slot, GET of a file. (Being built: issue 13.)

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use canto_core::Server;

/// Uploaded files.
pub struct Files {}

impl Files {
    /// The files of `server`'s upload services.
    pub fn new(_server: &Arc<Server>) -> Files {
        Files {}
    }
}

/// `/upload/{id}/{name}`.
pub(super) async fn handle() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}
