//! Anthropic Messages API: `POST /v1/messages`.
//!
//! Requires `anthropic-version` and (with `--api-key`) `x-api-key`; `max_tokens` is
//! required; `system` is top-level (a string or text blocks). Errors use Anthropic's shape
//! `{"type":"error","error":{"type","message"}}`, and the injected server errors
//! (`--fail-rate`, `[[mock:500]]`, `[[mock:fail-first:N]]`) are 529 `overloaded_error`, as
//! Anthropic answers when it is overloaded.

use super::openai::{unix_now, Params};
use super::state::Shared;
use super::text::ChatMessage;
use super::text::{count_prompt_tokens, mix};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// The largest error body rewritten into Anthropic's shape.
const MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    temperature: Option<f64>,
}

/// `POST /v1/messages`.
pub(crate) async fn messages(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seq = s.begin();
    let resp = match s.refuse_unauthorized_by(&headers, "x-api-key", "") {
        Some(r) => r,
        None if headers.get("anthropic-version").is_none() => {
            s.bad_request("anthropic-version: header is required")
        }
        None => message(&s, seq, &body).await,
    };
    s.decorate(anthropic_error(resp).await, seq)
}

async fn message(s: &Shared, seq: u64, body: &[u8]) -> Response {
    let arrived = std::time::Instant::now();
    let req: Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return s.bad_request(&super::openai::unparseable(&e)),
    };
    let model = match req.model.as_deref() {
        Some(m) if !m.is_empty() => m,
        _ => return s.bad_request("model: Field required"),
    };
    let max_tokens = match req.max_tokens {
        Some(m) if m > 0 => m,
        _ => return s.bad_request("max_tokens: Field required (an integer >= 1)"),
    };
    if req.messages.is_empty() {
        return s.bad_request("messages: at least one message is required");
    }
    if req.messages.iter().any(|m| m.role() == "system") {
        return s.bad_request(
            "messages: Unexpected role \"system\". The Messages API accepts a top-level `system` \
             parameter, not \"system\" as an input message role.",
        );
    }
    let system = match &req.system {
        None => String::new(),
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(_) => return s.bad_request("system: Input should be a string or a list of blocks"),
    };
    let last_user = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role() == "user")
        .map(|m| m.text().into_owned())
        .unwrap_or_default();
    let mut hasher = DefaultHasher::new();
    "messages".hash(&mut hasher);
    model.hash(&mut hasher);
    system.hash(&mut hasher);
    for m in &req.messages {
        m.role().hash(&mut hasher);
        m.text().hash(&mut hasher);
    }
    // Counted like the same conversation sent to the chat endpoint (system first).
    // The system's blocks are kept (joined into one text when counted) so that their
    // `cache_control` marks are seen by the prompt cache.
    let mut counted: Vec<ChatMessage> = Vec::new();
    if !system.is_empty() {
        if let Ok(m) = serde_json::from_value(json!({"role": "system", "content": req.system})) {
            counted.push(m);
        }
    }
    let stop: Vec<&str> = req.stop_sequences.iter().map(String::as_str).collect();
    let stream = req.stream == Some(true);
    counted.extend(req.messages);
    let prompt_tokens = count_prompt_tokens(model, &counted);
    let schema = super::structured::instruction_schema(&system);
    let params = Params {
        model,
        max_tokens: Some(max_tokens),
        temperature: req.temperature,
        n: 1,
        stop,
        schema: schema.as_ref(),
    };
    let ticket = params.ticket(seq, &last_user, hasher.finish(), prompt_tokens);
    if let Some(r) = s.refuse(&ticket).await {
        return r;
    }
    // Admitted: the prompt cache reads and writes at the `cache_control` breakpoints.
    let cache = if s.cache.is_on() {
        let (tokens, points) = super::text::prompt_sequence(model, &counted);
        let now = std::time::Instant::now();
        s.cache.anthropic(
            model,
            &tokens,
            &points,
            now,
            super::prompt_cache::seen_from(arrived),
        )
    } else {
        super::prompt_cache::AnthropicUse::default()
    };
    let input_tokens = prompt_tokens.saturating_sub(cache.read + cache.written);
    let (write_5m, write_1h) = if cache.one_hour {
        (0, cache.written)
    } else {
        (cache.written, 0)
    };
    let (text, output_tokens, finish) = params.generate(s, &ticket, &last_user, 0);
    let refused = ticket.markers.refusal || ticket.markers.content_filter;
    let stop_reason = match finish {
        _ if refused => "refusal",
        "length" => "max_tokens",
        _ => "end_turn",
    };
    let out = json!({
        "id": format!("msg_mock{:016x}", mix(seq)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache.written,
            "cache_read_input_tokens": cache.read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": write_5m,
                "ephemeral_1h_input_tokens": write_1h
            }
        },
        "created": unix_now(),
    });
    let body = if stream {
        super::stream::anthropic(&out)
    } else {
        out.to_string().into_bytes()
    };
    let resp = s.answer(&ticket, prompt_tokens, output_tokens, body);
    if stream {
        super::openai::event_stream(resp)
    } else {
        resp
    }
}

/// Rewrites an OpenAI-shaped error answer into Anthropic's shape (and 5xx into 529
/// `overloaded_error`); other answers pass through.
async fn anthropic_error(resp: Response) -> Response {
    let status = resp.status();
    if status.is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or("error")
        .to_string();
    let quota = v["error"]["type"] == "insufficient_quota";
    let (status, kind) = match status.as_u16() {
        _ if quota => (StatusCode::BAD_REQUEST, "billing_error"),
        400 => (status, "invalid_request_error"),
        401 => (status, "authentication_error"),
        403 => (status, "permission_error"),
        404 => (status, "not_found_error"),
        413 => (status, "request_too_large"),
        429 => (status, "rate_limit_error"),
        s if s >= 500 => (
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "overloaded_error",
        ),
        _ => (status, "api_error"),
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    parts.status = status;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body.to_string()))
}
