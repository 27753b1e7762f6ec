//! OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp server, LM Studio,
//! OpenRouter, Groq, Together…): `/chat/completions`, and the legacy `/completions`.

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{bad_response, classify, ApiError, Choice, Completion, Provider, RateLimitInfo};
use super::{snippet, Secret, SseEvent};
use crate::config::{Endpoint, ModelConfig, SchemaMode};
use crate::types::{Message, Role, Usage};

/// The OpenAI API shape.
#[derive(Debug, Clone)]
pub struct OpenAi {
    endpoint: Endpoint,
    organization: Option<String>,
    project: Option<String>,
}

impl OpenAi {
    /// A provider for the given endpoint; reads `OPENAI_ORG_ID` / `OPENAI_PROJECT_ID` like
    /// the official SDKs.
    pub fn new(endpoint: Endpoint) -> OpenAi {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        OpenAi {
            endpoint,
            organization: env("OPENAI_ORG_ID"),
            project: env("OPENAI_PROJECT_ID"),
        }
    }
}

/// True for models that refuse `max_tokens` and want `max_completion_tokens`
/// (o-series reasoning models and the gpt-5 family).
pub fn wants_max_completion_tokens(model: &str) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model);
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|p| m == *p || m.starts_with(&format!("{p}-")) || m.starts_with(&format!("{p}.")))
}

/// The generation settings every OpenAI-shaped body shares.
pub(crate) fn common_params(model: &ModelConfig, body: &mut Map<String, Value>, chat: bool) {
    let field = match &model.max_tokens_field {
        Some(f) => f.clone(),
        None if chat && wants_max_completion_tokens(&model.name) => {
            "max_completion_tokens".to_string()
        }
        None => "max_tokens".to_string(),
    };
    body.insert(field, json!(model.max_tokens));
    if let Some(t) = model.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = model.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if !model.stop.is_empty() {
        body.insert("stop".into(), json!(model.stop));
    }
    if let Some(s) = model.seed {
        body.insert("seed".into(), json!(s));
    }
    if let Some(p) = model.presence_penalty {
        body.insert("presence_penalty".into(), json!(p));
    }
    if let Some(p) = model.frequency_penalty {
        body.insert("frequency_penalty".into(), json!(p));
    }
    if let Some(n) = model.n.filter(|n| *n > 1) {
        body.insert("n".into(), json!(n));
    }
    if let Some(t) = model.service_tier {
        body.insert("service_tier".into(), json!(t.name()));
    }
    if model.stream {
        body.insert("stream".into(), json!(true));
        // Without this the usage of a streamed answer is never sent.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let (true, Some(schema)) = (chat, &model.schema_json) {
        match model.schema_mode.unwrap_or(SchemaMode::JsonSchema) {
            SchemaMode::JsonSchema => {
                body.insert(
                    "response_format".into(),
                    json!({
                        "type": "json_schema",
                        "json_schema": {"name": "response", "schema": schema, "strict": true}
                    }),
                );
            }
            SchemaMode::JsonObject => {
                body.insert(
                    "response_format".into(),
                    json!({"type": "json_object", "schema": schema}),
                );
            }
            // The instruction is in the messages (see `OpenAi::body`).
            SchemaMode::Prompt => {}
        }
    }
    if let Some(extra) = &model.extra {
        if let Ok(Value::Object(m)) = serde_json::to_value(extra) {
            body.extend(m);
        }
    }
}

/// The messages with the schema instruction added to the (first) system message, or put
/// first as one (`model.schema_mode = "prompt"`).
fn with_schema_instruction(messages: &[Message], schema: &Value) -> Vec<Message> {
    let instruction = super::schema_instruction(schema);
    let mut out = messages.to_vec();
    match out.iter_mut().find(|m| m.role == Role::System) {
        Some(m) => {
            m.content.push_str("\n\n");
            m.content.push_str(&instruction);
        }
        None => out.insert(0, Message::new(Role::System, instruction)),
    }
    out
}

/// Joins messages into one prompt for the legacy completions endpoint.
fn completion_prompt(messages: &[Message]) -> String {
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        out.push_str(&m.content);
    }
    out
}

impl Provider for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn body(&self, model: &ModelConfig, messages: &[Message]) -> Value {
        let instructed;
        let messages = match (&model.schema_json, model.schema_mode) {
            (Some(schema), Some(SchemaMode::Prompt)) => {
                instructed = with_schema_instruction(messages, schema);
                &instructed[..]
            }
            _ => messages,
        };
        let mut body = Map::new();
        body.insert("model".into(), json!(model.name));
        match self.endpoint {
            Endpoint::Chat => {
                body.insert("messages".into(), json!(messages));
            }
            Endpoint::Completions => {
                body.insert("prompt".into(), json!(completion_prompt(messages)));
            }
        }
        common_params(model, &mut body, self.endpoint == Endpoint::Chat);
        Value::Object(body)
    }

    fn url(&self, base_url: &str, _model: &ModelConfig) -> String {
        match self.endpoint {
            Endpoint::Chat => format!("{base_url}/chat/completions"),
            Endpoint::Completions => format!("{base_url}/completions"),
        }
    }

    fn authorize(&self, mut req: reqwest::RequestBuilder, key: &Secret) -> reqwest::RequestBuilder {
        if let Some(v) = key.header_value("Bearer ") {
            req = req.header(reqwest::header::AUTHORIZATION, v);
        }
        if let Some(o) = &self.organization {
            req = req.header("OpenAI-Organization", o);
        }
        if let Some(p) = &self.project {
            req = req.header("OpenAI-Project", p);
        }
        req
    }

    fn parse(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> Result<Completion, ApiError> {
        parse_openai(status, headers, body)
    }

    fn parse_stream(
        &self,
        headers: &HeaderMap,
        events: &[SseEvent],
    ) -> Result<Completion, ApiError> {
        parse_openai_stream(headers, events)
    }
}

/// One streamed chunk (`chat.completion.chunk` or a streamed text completion).
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    service_tier: Option<String>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    delta: Option<WireMessage>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// Assembles an OpenAI server-sent-events stream (ending in `data: [DONE]`) into one
/// completion; the usage comes from the last chunk (`stream_options.include_usage`).
pub(crate) fn parse_openai_stream(
    headers: &HeaderMap,
    events: &[SseEvent],
) -> Result<Completion, ApiError> {
    let rate = RateLimitInfo::from_openai_headers(headers);
    let mut choices: Vec<Choice> = Vec::new();
    let mut refusals: Vec<Option<String>> = Vec::new();
    let mut usage = None;
    let mut id = None;
    let mut service_tier = None;
    let mut done = false;
    for ev in events {
        let data = ev.data.trim();
        if data == "[DONE]" {
            done = true;
            break;
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| bad_response(format!("stream chunk is not JSON ({e})"), rate))?;
        if let Some(err) = chunk.error {
            // An error in the middle of a stream: the server gave up on this attempt.
            let msg = err.message.unwrap_or_else(|| "error in stream".into());
            return Err(bad_response(
                format!("the stream reported an error: {msg}"),
                rate,
            ));
        }
        id = id.or(chunk.id);
        service_tier = service_tier.or(chunk.service_tier);
        if let Some(u) = chunk.usage {
            if let Some(u) = u.into_usage() {
                usage = Some(u);
            }
        }
        for c in chunk.choices {
            if c.index > 1024 {
                return Err(bad_response("stream choice index out of range", rate));
            }
            while choices.len() <= c.index {
                choices.push(Choice {
                    text: String::new(),
                    finish_reason: None,
                });
                refusals.push(None);
            }
            let slot = &mut choices[c.index];
            let (content, refusal) = match c.delta {
                Some(d) => (d.content, d.refusal),
                None => (None, None),
            };
            if let Some(r) = &refusal {
                refusals[c.index]
                    .get_or_insert_with(String::new)
                    .push_str(r);
            }
            if let Some(t) = content.or(refusal).or(c.text) {
                slot.text.push_str(&t);
            }
            if c.finish_reason.is_some() {
                slot.finish_reason = c.finish_reason;
            }
        }
    }
    if !done {
        return Err(bad_response(
            "the stream ended before [DONE] (interrupted)",
            rate,
        ));
    }
    if choices.is_empty() {
        return Err(bad_response("stream has no choices", rate));
    }
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(id);
    Ok(Completion {
        unusable: unusable(&choices, &refusals),
        choices,
        usage,
        request_id,
        rate,
        service_tier,
    })
}

/// Why an OpenAI answer fails its row although it came back whole: a `refusal` in a
/// message, or `finish_reason = "content_filter"` (each variant named when there are
/// several). `refusals[i]` is variant i's refusal text, if any.
fn unusable(choices: &[Choice], refusals: &[Option<String>]) -> Option<String> {
    let several = choices.len() > 1;
    let reasons: Vec<String> = choices
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let why = match refusals.get(i).and_then(Option::as_deref) {
                Some(r) if !r.trim().is_empty() => format!("the model refused: {}", r.trim()),
                _ if c.finish_reason.as_deref() == Some("content_filter") => {
                    "the provider's content filter stopped the answer (finish_reason = \
                     content_filter)"
                        .to_string()
                }
                _ => return None,
            };
            Some(if several {
                format!("variant {}: {why}", i + 1)
            } else {
                why
            })
        })
        .collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<Value>,
}

#[derive(Deserialize)]
struct OkBody {
    #[serde(default)]
    choices: Vec<OkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    id: Option<String>,
    /// The tier OpenAI says it served the request at.
    #[serde(default)]
    service_tier: Option<String>,
}

#[derive(Deserialize)]
struct OkChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

/// OpenAI's usage object (`completion_usage.py`); detail fields are optional and nullable.
#[derive(Deserialize, Default)]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    /// Prompt tokens written to the cache, on models that charge for writes.
    #[serde(default)]
    cache_write_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    /// Our usage; None when the server counted neither prompt nor completion (an empty
    /// `usage` object is a missing usage, not a free answer).
    pub(crate) fn into_usage(self) -> Option<Usage> {
        if self.prompt_tokens.is_none() && self.completion_tokens.is_none() {
            return None;
        }
        let details = self.prompt_tokens_details.unwrap_or_default();
        Some(Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
            cached_tokens: details.cached_tokens.unwrap_or(0),
            cache_write_tokens: details.cache_write_tokens.unwrap_or(0),
            reasoning_tokens: self
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            ..Usage::default()
        })
    }
}

/// Reads an OpenAI-shaped response (chat or text completion) or error.
pub(crate) fn parse_openai(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Completion, ApiError> {
    let rate = RateLimitInfo::from_openai_headers(headers);
    if !(200..300).contains(&status) {
        let env: Option<ErrorEnvelope> = serde_json::from_slice(body).ok();
        let err = env.and_then(|e| e.error);
        let (message, kind, code) = match err {
            Some(e) => (
                e.message.unwrap_or_default(),
                e.kind,
                e.code.and_then(|c| c.as_str().map(str::to_string)),
            ),
            None => (snippet(body), None, None),
        };
        let message = if message.is_empty() {
            "(no error message)".to_string()
        } else {
            message
        };
        return Err(classify(
            status,
            kind.as_deref(),
            code.as_deref(),
            message,
            headers,
            rate,
        ));
    }
    let ok: OkBody = serde_json::from_slice(body).map_err(|e| {
        bad_response(
            format!("response is not the expected JSON ({e}): {}", snippet(body)),
            rate,
        )
    })?;
    if ok.choices.is_empty() {
        return Err(bad_response("response has no choices", rate));
    }
    let mut refusals = Vec::with_capacity(ok.choices.len());
    let choices: Vec<Choice> = ok
        .choices
        .into_iter()
        .map(|c| {
            let text = match (c.message, c.text) {
                (Some(m), _) => {
                    refusals.push(m.refusal.clone());
                    m.content.or(m.refusal).unwrap_or_default()
                }
                (None, Some(t)) => {
                    refusals.push(None);
                    t
                }
                (None, None) => {
                    refusals.push(None);
                    String::new()
                }
            };
            Choice {
                text,
                finish_reason: c.finish_reason,
            }
        })
        .collect();
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(ok.id);
    Ok(Completion {
        unusable: unusable(&choices, &refusals),
        choices,
        usage: ok.usage.and_then(WireUsage::into_usage),
        request_id,
        rate,
        service_tier: ok.service_tier,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Action, ErrorKind};

    fn model(name: &str) -> ModelConfig {
        toml::from_str(&format!(
            "name = \"{name}\"\ntemperature = 0.5\nmax_tokens = 100"
        ))
        .unwrap()
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens() {
        let p = OpenAi::new(Endpoint::Chat);
        let msgs = [Message::new(crate::types::Role::User, "hi")];
        let b = p.body(&model("gpt-4o-mini"), &msgs);
        assert_eq!(b["max_tokens"], 100);
        let b = p.body(&model("o3-mini"), &msgs);
        assert_eq!(b["max_completion_tokens"], 100);
        assert!(b.get("max_tokens").is_none());
        assert!(wants_max_completion_tokens("gpt-5-nano"));
        assert!(wants_max_completion_tokens("openai/o4-mini"));
        assert!(!wants_max_completion_tokens("gpt-4o"));
        assert!(!wants_max_completion_tokens("o1xyz"));
        let c = OpenAi::new(Endpoint::Completions).body(&model("o3"), &msgs);
        assert_eq!(c["prompt"], "hi");
        assert_eq!(c["max_tokens"], 100);
    }

    #[test]
    fn a_missing_or_empty_usage_is_none_never_zero() {
        for usage in ["", r#","usage":{}"#, r#","usage":null"#] {
            let body = format!(
                r#"{{"choices":[{{"message":{{"content":"hi"}},"finish_reason":"stop"}}]{usage}}}"#
            );
            let c = OpenAi::new(Endpoint::Chat)
                .parse(200, &HeaderMap::new(), body.as_bytes())
                .unwrap();
            assert_eq!(c.usage, None, "{body}");
        }
    }

    #[test]
    fn parses_a_chat_completion_with_usage_details() {
        let body = br#"{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,
            "prompt_tokens_details":{"cached_tokens":4,"cache_write_tokens":3},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        let c = parse_openai(200, &HeaderMap::new(), body).unwrap();
        assert_eq!(c.choices[0].text, "Hello");
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(c.service_tier, None);
        let served = br#"{"id":"c1","service_tier":"flex","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}]}"#;
        let flex = parse_openai(200, &HeaderMap::new(), served).unwrap();
        assert_eq!(flex.service_tier.as_deref(), Some("flex"));
        let u = c.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.reasoning_tokens
            ),
            (10, 5, 4, 3, 2)
        );
    }

    #[test]
    fn hostile_bodies_are_failed_attempts() {
        let h = HeaderMap::new();
        let e = parse_openai(200, &h, b"<html>oops").unwrap_err();
        assert_eq!((e.action, e.kind), (Action::Retry, ErrorKind::BadResponse));
        let e = parse_openai(200, &h, br#"{"choices":[]}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadResponse);
        let e = parse_openai(
            429,
            &h,
            br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.action, Action::AbortJob);
        let e = parse_openai(502, &h, b"Bad Gateway").unwrap_err();
        assert_eq!(e.action, Action::Retry);
        assert!(e.to_string().contains("HTTP 502: Bad Gateway"), "{e}");
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use crate::client::{Action, ErrorKind};

    fn ev(d: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: d.to_string(),
        }
    }

    #[test]
    fn chunks_are_assembled_with_usage_and_n_variants() {
        let events = [
            ev(
                r#"{"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#,
            ),
            ev(
                r#"{"id":"c1","choices":[{"index":1,"delta":{"content":"B"},"finish_reason":null}],"usage":null}"#,
            ),
            ev(
                r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"A1"},"finish_reason":"stop"}],"usage":null}"#,
            ),
            ev(
                r#"{"id":"c1","choices":[{"index":1,"delta":{},"finish_reason":"length"}],"usage":null}"#,
            ),
            ev(
                r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":2}}}"#,
            ),
            ev("[DONE]"),
        ];
        let c = parse_openai_stream(&HeaderMap::new(), &events).unwrap();
        assert_eq!(c.choices.len(), 2);
        assert_eq!(c.choices[0].text, "A1");
        assert_eq!(c.choices[1].finish_reason.as_deref(), Some("length"));
        let u = c.usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            (9, 3, 2)
        );
        let e = parse_openai_stream(&HeaderMap::new(), &events[..4]).unwrap_err();
        assert_eq!((e.action, e.kind), (Action::Retry, ErrorKind::BadResponse));
    }

    #[test]
    fn schema_and_stream_settings_reach_the_body() {
        let mut m: ModelConfig = toml::from_str("name = \"gpt-4o-mini\"\nstream = true").unwrap();
        m.schema_json = Some(json!({"type": "object"}));
        let msgs = [Message::new(crate::types::Role::User, "hi")];
        let b = OpenAi::new(Endpoint::Chat).body(&m, &msgs);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["response_format"]["json_schema"]["strict"], true);
        let b = OpenAi::new(Endpoint::Completions).body(&m, &msgs);
        assert!(b.get("response_format").is_none());
        assert!(b.get("service_tier").is_none());
        let m: ModelConfig = toml::from_str("name = \"o3\"\nservice_tier = \"flex\"").unwrap();
        let b = OpenAi::new(Endpoint::Chat).body(&m, &msgs);
        assert_eq!(b["service_tier"], "flex");
    }

    #[test]
    fn schema_mode_picks_how_the_schema_is_asked_for() {
        let mut m: ModelConfig = toml::from_str("name = \"local\"").unwrap();
        m.schema_json = Some(json!({"type": "object"}));
        let msgs = [
            Message::new(Role::System, "Be terse."),
            Message::new(Role::User, "hi"),
        ];
        let p = OpenAi::new(Endpoint::Chat);
        m.schema_mode = Some(SchemaMode::JsonObject);
        let b = p.body(&m, &msgs);
        assert_eq!(
            b["response_format"],
            json!({"type": "json_object", "schema": {"type": "object"}})
        );
        assert_eq!(b["messages"][0]["content"], "Be terse.");
        m.schema_mode = Some(SchemaMode::Prompt);
        let b = p.body(&m, &msgs);
        assert!(b.get("response_format").is_none());
        let system = b["messages"][0]["content"].as_str().unwrap();
        assert!(
            system.starts_with("Be terse.\n\nAnswer with a single JSON object"),
            "{system}"
        );
        assert!(system.ends_with(r#"{"type":"object"}"#), "{system}");
        let b = p.body(&m, &msgs[1..]);
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][1]["content"], "hi");
    }
}
