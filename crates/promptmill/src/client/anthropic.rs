//! Anthropic Messages API: `POST {base}/messages` with `x-api-key` and `anthropic-version`.
//!
//! Differences from OpenAI handled here: system messages go in the top-level `system`;
//! `max_tokens` is required; `stop` is `stop_sequences`; the answer is a list of content
//! blocks (text blocks are joined); `stop_reason` is mapped to OpenAI's `finish_reason`
//! (`max_tokens` → `length`); usage is normalised so `prompt_tokens` includes the cache
//! reads and writes that Anthropic reports separately (see [`ModelPrice::cost`]).
//! `seed`, `presence_penalty`, `frequency_penalty` and `n` do not exist in this API and are
//! not sent (`n > 1` is refused when the client is built).
//!
//! Structured output: the Messages API has no `response_format`, so the schema is given as
//! an instruction appended to the system prompt and the answer is parsed and validated like
//! any other (a bad answer is retried). This keeps the answer a plain text block.
//!
//! [`ModelPrice::cost`]: crate::cost::ModelPrice::cost

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{bad_response, SseEvent};
use super::{classify, ApiError, Choice, Completion, ErrorKind, Provider, RateLimitInfo, Secret};
use super::{schema_instruction, snippet};
use crate::config::ModelConfig;
use crate::types::{Message, Role, Usage};

/// The `anthropic-version` header sent with every request.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The Anthropic Messages API shape.
#[derive(Debug, Clone, Default)]
pub struct Anthropic;

impl Provider for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn body(&self, model: &ModelConfig, messages: &[Message]) -> Value {
        let mut system: Vec<String> = messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.clone())
            .collect();
        if let Some(schema) = &model.schema_json {
            system.push(schema_instruction(schema));
        }
        let turns: Vec<Value> = messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let mut body = Map::new();
        body.insert("model".into(), json!(model.name));
        body.insert("max_tokens".into(), json!(model.max_tokens));
        if !system.is_empty() {
            body.insert("system".into(), json!(system.join("\n\n")));
        }
        body.insert("messages".into(), Value::Array(turns));
        if let Some(t) = model.temperature {
            body.insert("temperature".into(), json!(t));
        }
        if let Some(p) = model.top_p {
            body.insert("top_p".into(), json!(p));
        }
        if !model.stop.is_empty() {
            body.insert("stop_sequences".into(), json!(model.stop));
        }
        if model.stream {
            body.insert("stream".into(), json!(true));
        }
        if let Some(extra) = &model.extra {
            if let Ok(Value::Object(m)) = serde_json::to_value(extra) {
                body.extend(m);
            }
        }
        Value::Object(body)
    }

    fn url(&self, base_url: &str, _model: &ModelConfig) -> String {
        format!("{}/messages", base_url.trim_end_matches('/'))
    }

    fn authorize(&self, mut req: reqwest::RequestBuilder, key: &Secret) -> reqwest::RequestBuilder {
        if let Some(v) = key.header_value("") {
            req = req.header("x-api-key", v);
        }
        req.header("anthropic-version", ANTHROPIC_VERSION)
    }

    fn parse(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> Result<Completion, ApiError> {
        let rate = rate_info(headers, SystemTime::now());
        if !(200..300).contains(&status) {
            return Err(error_response(status, headers, body, rate));
        }
        let ok: WireMessage = serde_json::from_slice(body).map_err(|e| {
            bad_response(
                format!("response is not the expected JSON ({e}): {}", snippet(body)),
                rate,
            )
        })?;
        let text: String = ok
            .content
            .iter()
            .filter(|b| b.kind == "text")
            .filter_map(|b| b.text.as_deref())
            .collect();
        Ok(Completion {
            unusable: refused(ok.stop_reason.as_deref()),
            choices: vec![Choice {
                text,
                finish_reason: ok.stop_reason.as_deref().map(finish_reason),
            }],
            usage: ok.usage.and_then(WireUsage::into_usage),
            request_id: request_id(headers).or(ok.id),
            rate,
            service_tier: None,
        })
    }

    fn parse_stream(
        &self,
        headers: &HeaderMap,
        events: &[SseEvent],
    ) -> Result<Completion, ApiError> {
        let rate = rate_info(headers, SystemTime::now());
        let mut text = String::new();
        let mut usage = WireUsage::default();
        let mut stop_reason = None;
        let mut raw_stop = None;
        let mut id = None;
        let mut finished = false;
        for ev in events {
            let v: Value = serde_json::from_str(&ev.data)
                .map_err(|e| bad_response(format!("stream event is not JSON ({e})"), rate))?;
            match v["type"].as_str().unwrap_or_default() {
                "message_start" => {
                    id = v["message"]["id"].as_str().map(str::to_string);
                    if let Ok(u) = WireUsage::deserialize(&v["message"]["usage"]) {
                        usage = u;
                    }
                }
                "content_block_delta" => {
                    if let Some(t) = v["delta"]["text"].as_str() {
                        text.push_str(t);
                    }
                }
                "message_delta" => {
                    raw_stop = v["delta"]["stop_reason"].as_str().map(str::to_string);
                    stop_reason = raw_stop.as_deref().map(finish_reason);
                    if let Some(o) = v["usage"]["output_tokens"].as_u64() {
                        usage.output_tokens = Some(o);
                    }
                }
                "message_stop" => finished = true,
                "error" => {
                    let kind = v["error"]["type"].as_str().unwrap_or("api_error");
                    let message = v["error"]["message"].as_str().unwrap_or("stream error");
                    let status = status_for_error_type(kind).unwrap_or(500);
                    return Err(classify(
                        status,
                        Some(kind),
                        None,
                        message.to_string(),
                        headers,
                        rate,
                    ));
                }
                _ => {}
            }
        }
        if !finished {
            return Err(bad_response(
                "the stream ended before message_stop (interrupted)",
                rate,
            ));
        }
        Ok(Completion {
            unusable: refused(raw_stop.as_deref()),
            choices: vec![Choice {
                text,
                finish_reason: stop_reason,
            }],
            usage: usage.into_usage(),
            request_id: request_id(headers).or(id),
            rate,
            service_tier: None,
        })
    }
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The reason an answer with this `stop_reason` fails its row: a refusal is billed but
/// holds no answer.
fn refused(stop_reason: Option<&str>) -> Option<String> {
    (stop_reason == Some("refusal"))
        .then(|| "the model refused to answer (stop_reason = refusal)".to_string())
}

/// Anthropic's `stop_reason` in OpenAI's `finish_reason` words.
fn finish_reason(stop: &str) -> String {
    match stop {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => other,
    }
    .to_string()
}

/// The HTTP status an Anthropic error type stands for (errors inside a stream, or in a
/// Message Batches result, carry no status of their own).
pub fn status_for_error_type(kind: &str) -> Option<u16> {
    Some(match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "overloaded_error" => 529,
        _ => return None,
    })
}

fn error_response(status: u16, headers: &HeaderMap, body: &[u8], rate: RateLimitInfo) -> ApiError {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let kind = v
        .as_ref()
        .and_then(|v| v["error"]["type"].as_str())
        .map(str::to_string);
    let message = v
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str())
        .map(str::to_string)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            let s = snippet(body);
            if s.is_empty() {
                "(no error message)".into()
            } else {
                s
            }
        });
    let mut e = classify(status, kind.as_deref(), None, message, headers, rate);
    // A billing error is Anthropic's "out of credit": no retry can help.
    if kind.as_deref() == Some("billing_error") {
        e.action = super::Action::AbortJob;
        e.kind = ErrorKind::InsufficientQuota;
    }
    e
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// Anthropic's usage: `input_tokens` excludes the cache reads and writes.
#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    /// The cache writes split by lifetime (sent when the request used `ttl`).
    #[serde(default)]
    cache_creation: Option<CacheCreation>,
}

/// Anthropic's `usage.cache_creation`: the cache writes by lifetime.
#[derive(Deserialize, Default)]
struct CacheCreation {
    #[serde(default)]
    ephemeral_5m_input_tokens: Option<u64>,
    #[serde(default)]
    ephemeral_1h_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Our usage: `prompt_tokens` = input + cache writes + cache reads, with the cache parts
    /// as subsets (what `ModelPrice::cost` expects). None when the server counted neither
    /// input nor output: that is a missing usage, not a free answer.
    fn into_usage(self) -> Option<Usage> {
        if self.input_tokens.is_none() && self.output_tokens.is_none() {
            return None;
        }
        let split = self.cache_creation.unwrap_or_default();
        let write_1h = split.ephemeral_1h_input_tokens.unwrap_or(0);
        // The total is authoritative; when only the split is sent, it is the sum.
        let write = self.cache_creation_input_tokens.unwrap_or_else(|| {
            split
                .ephemeral_5m_input_tokens
                .unwrap_or(0)
                .saturating_add(write_1h)
        });
        let read = self.cache_read_input_tokens.unwrap_or(0);
        Some(Usage {
            prompt_tokens: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(write)
                .saturating_add(read),
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: read,
            cache_write_tokens: write,
            cache_write_1h_tokens: write_1h.min(write),
            ..Usage::default()
        })
    }
}

/// Reads `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`; the resets are
/// RFC 3339 times, turned into a wait from `now`.
pub fn rate_info(h: &HeaderMap, now: SystemTime) -> RateLimitInfo {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let num = |name: &str| get(name).and_then(super::ratelimit::parse_count);
    let reset = |name: &str| {
        let at = crate::time::parse_rfc3339(get(name)?)?;
        let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
        Some(wait.min(super::ratelimit::MAX_RESET))
    };
    RateLimitInfo {
        limit_requests: num("anthropic-ratelimit-requests-limit"),
        remaining_requests: num("anthropic-ratelimit-requests-remaining"),
        reset_requests: reset("anthropic-ratelimit-requests-reset"),
        limit_tokens: num("anthropic-ratelimit-tokens-limit"),
        remaining_tokens: num("anthropic-ratelimit-tokens-remaining"),
        reset_tokens: reset("anthropic-ratelimit-tokens-reset"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Action;

    fn model(extra: &str) -> ModelConfig {
        toml::from_str(&format!(
            "name = \"claude-3-5-haiku-latest\"\nmax_tokens = 64\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn body_has_top_level_system_and_required_max_tokens() {
        let msgs = [
            Message::new(Role::System, "Be terse."),
            Message::new(Role::User, "hi"),
        ];
        let b = Anthropic.body(&model("stop = [\"END\"]\nseed = 3\nn = 1"), &msgs);
        assert_eq!(b["system"], "Be terse.");
        assert_eq!(b["max_tokens"], 64);
        assert_eq!(b["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(b["stop_sequences"], json!(["END"]));
        assert!(b.get("seed").is_none() && b.get("n").is_none() && b.get("stop").is_none());
    }

    #[test]
    fn usage_is_normalised_and_stop_reason_mapped() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hel"},{"type":"text","text":"lo"}],
            "stop_reason":"max_tokens","usage":{"input_tokens":10,"output_tokens":5,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000}}"#;
        let c = Anthropic.parse(200, &HeaderMap::new(), body).unwrap();
        assert_eq!(c.choices[0].text, "Hello");
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("length"));
        let u = c.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.completion_tokens
            ),
            (1110, 1000, 100, 5)
        );
    }

    #[test]
    fn cache_writes_are_split_by_lifetime() {
        let body = br#"{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"x"}],
            "stop_reason":"end_turn","usage":{"input_tokens":10,"output_tokens":5,
            "cache_creation_input_tokens":300,"cache_read_input_tokens":0,
            "cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":200}}}"#;
        let u = Anthropic
            .parse(200, &HeaderMap::new(), body)
            .unwrap()
            .usage
            .unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cache_write_tokens,
                u.cache_write_1h_tokens
            ),
            (310, 300, 200)
        );
        // Only the split sent: the writes are its sum; a 1-hour count above the total is
        // capped at it.
        let only_split = br#"{"id":"m","type":"message","role":"assistant","content":[],
            "usage":{"input_tokens":1,"output_tokens":1,
            "cache_creation":{"ephemeral_5m_input_tokens":7,"ephemeral_1h_input_tokens":3}}}"#;
        let u = Anthropic
            .parse(200, &HeaderMap::new(), only_split)
            .unwrap()
            .usage
            .unwrap();
        assert_eq!((u.cache_write_tokens, u.cache_write_1h_tokens), (10, 3));
        let lying = br#"{"id":"m","type":"message","role":"assistant","content":[],
            "usage":{"input_tokens":1,"output_tokens":1,"cache_creation_input_tokens":5,
            "cache_creation":{"ephemeral_1h_input_tokens":50}}}"#;
        let u = Anthropic
            .parse(200, &HeaderMap::new(), lying)
            .unwrap()
            .usage
            .unwrap();
        assert_eq!((u.cache_write_tokens, u.cache_write_1h_tokens), (5, 5));
    }

    #[test]
    fn errors_are_classified_by_status_and_type() {
        let h = HeaderMap::new();
        let e = Anthropic
            .parse(
                529,
                &h,
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            )
            .unwrap_err();
        assert_eq!((e.action, e.kind), (Action::Retry, ErrorKind::Server));
        assert!(e.to_string().contains("Overloaded"));
        let e = Anthropic
            .parse(401, &h, br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#)
            .unwrap_err();
        assert_eq!(e.action, Action::AbortJob);
        let e = Anthropic
            .parse(400, &h, br#"{"type":"error","error":{"type":"billing_error","message":"credit balance is too low"}}"#)
            .unwrap_err();
        assert_eq!(
            (e.action, e.kind),
            (Action::AbortJob, ErrorKind::InsufficientQuota)
        );
        let e = Anthropic
            .parse(
                400,
                &h,
                br#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#,
            )
            .unwrap_err();
        assert_eq!(e.action, Action::FailRow);
    }

    #[test]
    fn rate_limit_headers_become_limits_and_waits() {
        let mut h = HeaderMap::new();
        h.insert("anthropic-ratelimit-requests-limit", "50".parse().unwrap());
        h.insert(
            "anthropic-ratelimit-requests-remaining",
            "49".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-requests-reset",
            "2026-11-25T19:30:05Z".parse().unwrap(),
        );
        h.insert("anthropic-ratelimit-tokens-limit", "40000".parse().unwrap());
        h.insert(
            "anthropic-ratelimit-tokens-remaining",
            "39000".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-tokens-reset",
            "2026-11-25T20:30:02.5+01:00".parse().unwrap(),
        );
        let now = crate::time::parse_rfc3339("2026-11-25T19:30:00Z").unwrap();
        let r = rate_info(&h, now);
        assert_eq!(r.limit_requests, Some(50));
        assert_eq!(r.remaining_requests, Some(49));
        assert_eq!(r.reset_requests, Some(Duration::from_secs(5)));
        assert_eq!(r.limit_tokens, Some(40000));
        assert_eq!(r.reset_tokens, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn a_missing_usage_is_none_never_zero() {
        let ev = |d: &str| SseEvent {
            event: None,
            data: d.to_string(),
        };
        let events = [
            ev(r#"{"type":"message_start","message":{"id":"msg_1"}}"#),
            ev(
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            ev(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#),
            ev(r#"{"type":"message_stop"}"#),
        ];
        let c = Anthropic.parse_stream(&HeaderMap::new(), &events).unwrap();
        assert_eq!(c.choices[0].text, "Hi");
        assert_eq!(c.usage, None);
        for usage in ["", r#","usage":{}"#, r#","usage":null"#] {
            let body = format!(
                r#"{{"id":"m","content":[{{"type":"text","text":"hi"}}],"stop_reason":"end_turn"{usage}}}"#
            );
            let c = Anthropic
                .parse(200, &HeaderMap::new(), body.as_bytes())
                .unwrap();
            assert_eq!(c.usage, None, "{body}");
        }
    }

    #[test]
    fn a_stream_is_assembled_and_an_interrupted_one_refused() {
        let ev = |d: &str| SseEvent {
            event: None,
            data: d.to_string(),
        };
        let events = vec![
            ev(
                r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":12,"output_tokens":1}}}"#,
            ),
            ev(
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ev(
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi "}}"#,
            ),
            ev(
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"there"}}"#,
            ),
            ev(
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
            ),
            ev(r#"{"type":"message_stop"}"#),
        ];
        let c = Anthropic.parse_stream(&HeaderMap::new(), &events).unwrap();
        assert_eq!(c.choices[0].text, "Hi there");
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(c.usage.unwrap().completion_tokens, 7);
        assert_eq!(c.usage.unwrap().prompt_tokens, 12);
        let e = Anthropic
            .parse_stream(&HeaderMap::new(), &events[..4])
            .unwrap_err();
        assert_eq!(e.action, Action::Retry);
        let over = [ev(
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )];
        let e = Anthropic
            .parse_stream(&HeaderMap::new(), &over)
            .unwrap_err();
        assert_eq!(e.action, Action::Retry);
    }
}
