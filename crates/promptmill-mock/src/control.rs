//! The mock's own endpoints (`/_mock/*`) and the answer to unknown routes.

use super::reply;
use super::state::Shared;
use super::stats::MockStatsSnapshot;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::Json;
use std::sync::Arc;

/// `GET /_mock/stats`: the counters as JSON.
pub(crate) async fn stats(State(s): State<Arc<Shared>>) -> Json<MockStatsSnapshot> {
    Json(s.stats.snapshot())
}

/// `POST /_mock/reset`: zero the counters (and quota, fail-first attempts, rate limits);
/// answers the zeroed counters.
pub(crate) async fn reset(State(s): State<Arc<Shared>>) -> Json<MockStatsSnapshot> {
    s.reset();
    Json(s.stats.snapshot())
}

/// Any other route: 404 worded like OpenAI's.
pub(crate) async fn not_found(method: Method, uri: Uri) -> Response {
    reply::error(
        StatusCode::NOT_FOUND,
        &format!("Invalid URL ({method} {})", uri.path()),
        "invalid_request_error",
        None,
    )
}
