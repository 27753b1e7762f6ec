//! Azure OpenAI: `POST /openai/deployments/{deployment}/chat/completions?api-version=…`.
//!
//! The key comes in the `api-key` header and `api-version` is required; the body and the
//! answer are the chat endpoint's (a body without `model` uses the deployment name).

use super::state::Shared;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// `POST /openai/deployments/{deployment}/chat/completions`.
pub(crate) async fn chat_completions(
    State(s): State<Arc<Shared>>,
    Path(deployment): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seq = s.begin();
    let resp = match s.refuse_unauthorized_by(&headers, "api-key", "") {
        Some(r) => r,
        None if query.get("api-version").is_none_or(|v| v.trim().is_empty()) => s.bad_request(
            "Missing required query parameter 'api-version' (e.g. ?api-version=2024-10-21).",
        ),
        None => {
            let body = with_model(&body, &deployment);
            super::openai::chat(&s, seq, &body).await
        }
    };
    s.decorate(resp, seq)
}

/// The body, with `model` set to the deployment when absent (Azure routes by deployment).
fn with_model(body: &[u8], deployment: &str) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut m)) if !m.contains_key("model") => {
            m.insert("model".into(), Value::from(deployment));
            serde_json::to_vec(&m).unwrap_or_else(|_| body.to_vec())
        }
        _ => body.to_vec(),
    }
}
