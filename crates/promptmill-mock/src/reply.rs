//! Building HTTP answers: OpenAI-shaped error bodies and the rate-limit headers.

use super::limits::{ceil_millis, go_duration, LimitStatus, RateStatus};
use axum::body::Body;
use axum::http::header::{HeaderName, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use std::time::Duration;

/// A response with a JSON body already serialised.
pub(crate) fn json_bytes(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// An OpenAI error body: `{"error":{"message","type","param":null,"code"}}`.
pub(crate) fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    json_bytes(status, body.to_string())
}

/// 400 `invalid_request_error`.
pub(crate) fn bad_request(message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        None,
    )
}

/// 500 `server_error`, worded like OpenAI's.
pub(crate) fn server_error() -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    )
}

/// 429 `insufficient_quota`: retrying will not help.
pub(crate) fn insufficient_quota() -> Response {
    error(
        StatusCode::TOO_MANY_REQUESTS,
        "You exceeded your current quota, please check your plan and billing details. \
         (mock: --quota-requests reached)",
        "insufficient_quota",
        Some("insufficient_quota"),
    )
}

/// 429 `rate_limit_exceeded` with `retry-after-ms` and `retry-after`.
pub(crate) fn rate_limited(message: &str, kind: &str, retry_after: Duration) -> Response {
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        message,
        kind,
        Some("rate_limit_exceeded"),
    );
    let ms = ceil_millis(retry_after).max(1);
    let h = resp.headers_mut();
    h.insert(
        HeaderName::from_static("retry-after-ms"),
        HeaderValue::from(ms),
    );
    h.insert(RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
    resp
}

/// 401 for a missing or wrong bearer key; the key is masked like OpenAI does.
pub(crate) fn unauthorized(given: Option<&str>) -> Response {
    let message = match given {
        None | Some("") => "You didn't provide an API key. You need to provide your API key in an \
                            Authorization header using Bearer auth (i.e. Authorization: Bearer \
                            YOUR_KEY)."
            .to_owned(),
        Some(key) => format!("Incorrect API key provided: {}.", mask_key(key)),
    };
    error(
        StatusCode::UNAUTHORIZED,
        &message,
        "invalid_request_error",
        Some("invalid_api_key"),
    )
}

/// `sk-...abcd`: the first 3 and last 4 characters, or only stars for short keys.
pub(crate) fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "*".repeat(chars.len().max(4));
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

/// Add the `x-ratelimit-*` trios for the limits that are set.
pub(crate) fn add_rate_headers(h: &mut HeaderMap, st: &RateStatus) {
    if let Some(r) = &st.requests {
        trio(h, r, REQUESTS);
    }
    if let Some(t) = &st.tokens {
        trio(h, t, TOKENS);
    }
}

/// Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`, the resets
/// as RFC 3339 UTC times (sent on every answer, beside OpenAI's names).
pub(crate) fn add_anthropic_rate_headers(h: &mut HeaderMap, st: &RateStatus) {
    let now = std::time::SystemTime::now();
    for (st, what) in [(&st.requests, "requests"), (&st.tokens, "tokens")] {
        let Some(st) = st else { continue };
        let name =
            |k: &str| HeaderName::from_bytes(format!("anthropic-ratelimit-{what}-{k}").as_bytes());
        if let (Ok(l), Ok(r), Ok(z)) = (name("limit"), name("remaining"), name("reset")) {
            h.insert(l, HeaderValue::from(st.limit));
            h.insert(r, HeaderValue::from(st.remaining));
            if let Ok(v) = HeaderValue::from_str(&rfc3339(now + st.reset)) {
                h.insert(z, v);
            }
        }
    }
}

pub(crate) use promptmill::time::rfc3339_ceil as rfc3339;

const REQUESTS: [&str; 3] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
];
const TOKENS: [&str; 3] = [
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
];

fn trio(h: &mut HeaderMap, st: &LimitStatus, names: [&'static str; 3]) {
    let [limit, remaining, reset] = names.map(HeaderName::from_static);
    h.insert(limit, HeaderValue::from(st.limit));
    h.insert(remaining, HeaderValue::from(st.remaining));
    if let Ok(v) = HeaderValue::from_str(&go_duration(st.reset)) {
        h.insert(reset, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_never_echoed_whole() {
        assert_eq!(mask_key("sk-proj-0123456789abcd"), "sk-...abcd");
        assert_eq!(mask_key("short"), "*****");
        assert_eq!(mask_key(""), "****");
    }
}
