//! OpenAI endpoints: `POST /v1/chat/completions` and the legacy `POST /v1/completions`.
//!
//! Each handler parses its own request shape, computes tokens and the prompt hash, runs the
//! shared checks in [`Shared::refuse`], then serialises an answer in OpenAI's exact shape.

use super::markers::Markers;
use super::state::{Shared, Ticket};
use super::text::{self, answer, count_prompt_tokens, mix, ChatMessage};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the TPM limit charges for output when a request sets no `max_tokens`.
const DEFAULT_LIMIT_MAX_TOKENS: u64 = 16;
/// OpenAI's `n` upper bound.
const MAX_N: u32 = 128;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A request to either endpoint: `messages` for chat, `prompt` for legacy completions.
/// Unknown fields such as `temperature` or `seed` are accepted and ignored.
#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    temperature: Option<f64>,
    /// OpenAI's processing tier; echoed in the answer (`auto` is served as `default`).
    #[serde(default)]
    service_tier: Option<String>,
}

impl Request {
    /// The tier the answer says it was served at, as OpenAI reports it.
    fn served_tier(&self) -> &str {
        match self.service_tier.as_deref() {
            Some("flex") => "flex",
            Some("priority") => "priority",
            _ => "default",
        }
    }
}

impl Request {
    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true)
    }
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChatChoice>,
    usage: UsageBody,
    system_fingerprint: &'static str,
    service_tier: &'a str,
}

#[derive(Serialize)]
struct ChatChoice {
    index: u32,
    message: AssistantMessage,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage {
    role: &'static str,
    content: Option<String>,
    refusal: Option<String>,
}

/// What a refusing model says (`[[mock:refusal]]`).
pub(crate) const REFUSAL: &str = "I'm sorry, but I can't help with that.";

#[derive(Serialize)]
struct TextCompletion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<TextChoice>,
    usage: UsageBody,
}

#[derive(Serialize)]
struct TextChoice {
    text: String,
    index: u32,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct UsageBody {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
}

impl UsageBody {
    /// Reports `n` of the prompt tokens (at most all of them) as read from the cache.
    fn cached(mut self, n: u64) -> Self {
        self.prompt_tokens_details.cached_tokens = n.min(self.prompt_tokens);
        self
    }

    fn new(prompt_tokens: u64, completion_tokens: u64, cached_tokens: u64) -> Self {
        UsageBody {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptDetails { cached_tokens },
            completion_tokens_details: CompletionDetails {
                reasoning_tokens: 0,
            },
        }
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seq = s.begin();
    let resp = match s.refuse_unauthorized(&headers) {
        None => chat(&s, seq, &body).await,
        Some(r) => r,
    };
    s.decorate(resp, seq)
}

pub(crate) async fn chat(s: &Shared, seq: u64, body: &[u8]) -> Response {
    let arrived = std::time::Instant::now();
    let req: Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return s.bad_request(&unparseable(&e)),
    };
    let params = match Params::check(&req) {
        Ok(p) => p,
        Err(msg) => return s.bad_request(&msg),
    };
    let messages = match &req.messages {
        Some(m) if !m.is_empty() => m,
        _ => return s.bad_request("Missing required parameter: 'messages'."),
    };
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .or(messages.last())
        .map(ChatMessage::text)
        .unwrap_or_default();
    let mut hasher = DefaultHasher::new();
    params.model.hash(&mut hasher);
    for m in messages {
        m.role.hash(&mut hasher);
        m.text().hash(&mut hasher);
    }
    if s.cfg.reject_json_schema && super::structured::is_json_schema(req.response_format.as_ref()) {
        super::stats::bump(&s.stats.server_errors);
        return super::reply::error(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "response_format: 'json_schema' is not supported (mock: --reject-json-schema, as \
             llama-cpp-python answers; send {\"type\": \"json_object\", \"schema\": ...})",
            "internal_server_error",
            None,
        );
    }
    let prompt_tokens = count_prompt_tokens(params.model, messages);
    // promptmill's schema instruction in a system message (`model.schema_mode = "prompt"`).
    let system: Vec<Cow<'_, str>> = messages
        .iter()
        .filter(|m| m.role == "system")
        .map(ChatMessage::text)
        .collect();
    let instructed = super::structured::instruction_schema(&system.join("\n"));
    let mut params = params;
    params.schema =
        super::structured::openai_schema(req.response_format.as_ref()).or(instructed.as_ref());
    let ticket = params.ticket(seq, &last_user, hasher.finish(), prompt_tokens);
    if req.service_tier.as_deref() == Some("flex") {
        if let Some(r) = s.refuse_flex(&ticket) {
            return r;
        }
    }
    if let Some(r) = s.refuse(&ticket).await {
        return r;
    }
    // Admitted: the prompt cache reads (and writes) this prompt's prefix.
    let cached = if s.cache.is_on() {
        let (tokens, _) = text::prompt_sequence(params.model, messages);
        let now = std::time::Instant::now();
        s.cache.openai(
            params.model,
            &tokens,
            now,
            super::prompt_cache::seen_from(arrived),
        )
    } else {
        0
    };
    let refusal = ticket.markers.refusal;
    let (choices, completion_tokens) =
        params.choices(s, &ticket, &last_user, |index, content, finish_reason| {
            let (content, refusal) = if refusal {
                (None, Some(REFUSAL.to_owned()))
            } else {
                (Some(content), None)
            };
            ChatChoice {
                index,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                    refusal,
                },
                logprobs: None,
                finish_reason,
            }
        });
    let out = ChatCompletion {
        id: format!("chatcmpl-mock{:016x}", mix(seq)),
        object: "chat.completion",
        created: unix_now(),
        model: params.model,
        choices,
        usage: match ticket.markers.cached {
            Some(n) => UsageBody::new(prompt_tokens, completion_tokens, cached).cached(n),
            None => UsageBody::new(prompt_tokens, completion_tokens, cached),
        },
        system_fingerprint: "fp_mock",
        service_tier: req.served_tier(),
    };
    finish(s, &ticket, prompt_tokens, completion_tokens, &out, &req)
}

/// `POST /v1/completions` (legacy text completions).
pub(crate) async fn completions(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seq = s.begin();
    let resp = match s.refuse_unauthorized(&headers) {
        None => complete(&s, seq, &body).await,
        Some(r) => r,
    };
    s.decorate(resp, seq)
}

async fn complete(s: &Shared, seq: u64, body: &[u8]) -> Response {
    let req: Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return s.bad_request(&unparseable(&e)),
    };
    let mut params = match Params::check(&req) {
        Ok(p) => p,
        Err(msg) => return s.bad_request(&msg),
    };
    // Like OpenAI's legacy endpoint, generation stops at 16 tokens unless told otherwise.
    params.max_tokens = params.max_tokens.or(Some(DEFAULT_LIMIT_MAX_TOKENS));
    let prompt = match &req.prompt {
        Some(Value::String(p)) => p.as_str(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or(""),
        Some(_) => return s.bad_request("The mock supports a single string 'prompt'."),
        None => return s.bad_request("Missing required parameter: 'prompt'."),
    };
    let mut hasher = DefaultHasher::new();
    "completions".hash(&mut hasher);
    params.model.hash(&mut hasher);
    prompt.hash(&mut hasher);
    let prompt_tokens = text::count_completion_prompt_tokens(params.model, prompt);
    let ticket = params.ticket(seq, prompt, hasher.finish(), prompt_tokens);
    if let Some(r) = s.refuse(&ticket).await {
        return r;
    }
    let (choices, completion_tokens) =
        params.choices(s, &ticket, prompt, |index, text, finish_reason| {
            TextChoice {
                text,
                index,
                logprobs: None,
                finish_reason,
            }
        });
    let out = TextCompletion {
        id: format!("cmpl-mock{:016x}", mix(seq)),
        object: "text_completion",
        created: unix_now(),
        model: params.model,
        choices,
        usage: UsageBody::new(prompt_tokens, completion_tokens, 0),
    };
    finish(s, &ticket, prompt_tokens, completion_tokens, &out, &req)
}

/// Validated parameters shared by every endpoint (Anthropic's too).
pub(crate) struct Params<'a> {
    pub(crate) model: &'a str,
    pub(crate) max_tokens: Option<u64>,
    /// The request's `temperature`, for `[[mock:settings]]`.
    pub(crate) temperature: Option<f64>,
    pub(crate) n: u32,
    pub(crate) stop: Vec<&'a str>,
    /// A JSON schema the answer must follow (structured output).
    pub(crate) schema: Option<&'a Value>,
}

impl<'a> Params<'a> {
    fn check(c: &'a Request) -> Result<Params<'a>, String> {
        let model = match c.model.as_deref() {
            Some(m) if !m.is_empty() => m,
            _ => return Err("you must provide a model parameter".to_owned()),
        };
        if c.stream_options.is_some() && c.stream != Some(true) {
            return Err(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled."
                    .to_owned(),
            );
        }
        let max_tokens = c.max_completion_tokens.or(c.max_tokens);
        if max_tokens == Some(0) {
            return Err(
                "Invalid 'max_tokens': integer below minimum value. Expected a value >= \
                        1, but got 0 instead."
                    .to_owned(),
            );
        }
        let n = c.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(format!(
                "Invalid 'n': expected a value from 1 to {MAX_N}, got {n}."
            ));
        }
        let stop = match &c.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.as_str()],
            Some(Stop::Many(v)) => v.iter().map(String::as_str).collect(),
        };
        Ok(Params {
            model,
            max_tokens,
            temperature: c.temperature,
            n,
            stop,
            schema: None,
        })
    }

    pub(crate) fn ticket(
        &self,
        seq: u64,
        last_user: &str,
        hash: u64,
        prompt_tokens: u64,
    ) -> Ticket<'a> {
        let out = self.max_tokens.unwrap_or(DEFAULT_LIMIT_MAX_TOKENS);
        Ticket {
            seq,
            model: self.model,
            markers: Markers::parse(last_user),
            prompt_hash: hash,
            limit_tokens: prompt_tokens + out.saturating_mul(u64::from(self.n)),
        }
    }

    /// The `n` choices of an answer, each made by `choice` from its index, text and
    /// finish_reason, and their completion tokens summed.
    fn choices<C>(
        &self,
        s: &Shared,
        t: &Ticket<'_>,
        source: &str,
        mut choice: impl FnMut(u32, String, &'static str) -> C,
    ) -> (Vec<C>, u64) {
        let mut completion_tokens = 0;
        let n = if t.markers.one_choice { 1 } else { self.n };
        let choices = (0..n)
            .map(|index| {
                let (text, tokens, finish_reason) = self.generate(s, t, source, index);
                completion_tokens += tokens;
                choice(index, text, finish_reason)
            })
            .collect();
        (choices, completion_tokens)
    }

    /// Choice `index`: its text, completion tokens and finish_reason.
    pub(crate) fn generate(
        &self,
        s: &Shared,
        t: &Ticket<'_>,
        source: &str,
        index: u32,
    ) -> (String, u64, &'static str) {
        let hash = mix(t.prompt_hash ^ s.cfg.seed ^ u64::from(index).rotate_left(32));
        if t.markers.refusal {
            let text = REFUSAL.to_owned();
            let tokens = text::count_text_tokens(&text);
            return (text, tokens, "stop");
        }
        if t.markers.content_filter {
            let a = answer(source, false, hash, self.max_tokens);
            let mut cut = a.text.len() / 2;
            while !a.text.is_char_boundary(cut) {
                cut -= 1;
            }
            let text = a.text[..cut].to_owned();
            let tokens = text::count_text_tokens(&text);
            return (text, tokens, "content_filter");
        }
        if t.markers.settings {
            let text = format!(
                "model={} temperature={} max_tokens={}",
                self.model,
                self.temperature
                    .map_or_else(|| "-".into(), |v| v.to_string()),
                self.max_tokens
                    .map_or_else(|| "-".into(), |v| v.to_string()),
            );
            let tokens = text::count_text_tokens(&text);
            return (text, tokens, "stop");
        }
        if let Some(schema) = self.schema {
            return self.structured(s, t, schema, source, hash, index);
        }
        let mut a = answer(source, t.markers.echo, hash, self.max_tokens);
        let cut = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| a.text.find(s))
            .min();
        if let Some(at) = cut {
            a.text.truncate(at);
            a.tokens = text::count_text_tokens(&a.text);
            return (a.text, a.tokens, "stop");
        }
        let finish = if a.truncated || t.markers.length {
            "length"
        } else {
            "stop"
        };
        (a.text, a.tokens, finish)
    }
}

impl Params<'_> {
    /// A JSON answer following `schema` (`[[mock:bad-schema]]`: not JSON, the first time),
    /// cut like any answer by `max_tokens` and `[[mock:length]]`.
    fn structured(
        &self,
        s: &Shared,
        t: &Ticket<'_>,
        schema: &Value,
        source: &str,
        hash: u64,
        index: u32,
    ) -> (String, u64, &'static str) {
        let mut text =
            if t.markers.bad_schema && index == 0 && s.first_time("bad-schema", t.prompt_hash) {
                "Sure! Here is the JSON you asked for: {\"headline\": ".to_owned()
            } else {
                let mut v = super::structured::sample(schema, source, hash);
                if let (Some(score), Some(o)) = (t.markers.score, v.as_object_mut()) {
                    if o.contains_key("score") {
                        o.insert("score".into(), Value::from(score));
                    }
                }
                v.to_string()
            };
        let max_bytes = self.max_tokens.map_or(usize::MAX, |m| {
            usize::try_from(m.saturating_mul(4)).unwrap_or(usize::MAX)
        });
        let mut finish = "stop";
        if t.markers.length || text.len() > max_bytes {
            let mut cut = (text.len() / 2).min(max_bytes);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            finish = "length";
        }
        let tokens = text::count_text_tokens(&text);
        (text, tokens, finish)
    }
}

fn finish<T: Serialize>(
    s: &Shared,
    t: &Ticket<'_>,
    prompt_tokens: u64,
    completion_tokens: u64,
    out: &T,
    req: &Request,
) -> Response {
    let body = if req.stream == Some(true) {
        serde_json::to_value(out).map(|v| super::stream::openai(&v, req.include_usage()))
    } else {
        serde_json::to_vec(out)
    };
    match body {
        Ok(body) if req.stream == Some(true) => {
            event_stream(s.answer(t, prompt_tokens, completion_tokens, body))
        }
        Ok(body) => s.answer(t, prompt_tokens, completion_tokens, body),
        // Serialising plain structs of strings and integers cannot fail; answer 500 if it does.
        Err(_) => super::reply::server_error(),
    }
}

/// Marks a 200 answer as a server-sent-event stream.
pub(crate) fn event_stream(mut resp: Response) -> Response {
    if resp.status().is_success() {
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/event-stream"),
        );
    }
    resp
}

pub(crate) fn unparseable(e: &serde_json::Error) -> String {
    format!(
        "We could not parse the JSON body of your request. (HINT: This likely means you \
         aren't using your HTTP library correctly.) ({e})"
    )
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
