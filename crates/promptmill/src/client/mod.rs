//! The client stage: one trait for providers, one file per provider, one transport.
//!
//! A provider is pure: it turns a rendered prompt into a request body and URL, and a
//! response (status, headers, bytes) into a [`Completion`] or an [`ApiError`]. The transport
//! here does the HTTP, with timeouts and a cap on body size. Errors are classified once,
//! in [`classify`], into what the scheduler must do: retry, fail the row, or abort the job.

mod anthropic;
mod azure;
mod openai;
mod ratelimit;
mod secret;
mod sse;

pub use anthropic::{status_for_error_type, Anthropic};
pub use azure::Azure;
pub use openai::OpenAi;
pub use ratelimit::{parse_go_duration, RateLimitInfo};
pub use secret::{mark_sensitive, Secret, SENSITIVE_HEADERS};
pub use sse::SseEvent;

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::config::{Endpoint, Job, ModelConfig, ProviderKind, SchemaMode};
pub use crate::types::Choice;
use crate::types::{Message, Usage};

/// The largest response body read; a larger one is a failed attempt, not an allocation.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// With `model.stream = true`: the longest silence allowed between two chunks when
/// `api.timeout_secs` is not set (with it set, that value is the idle limit). A streamed
/// request has no total time limit: a long generation that keeps sending is never cut.
const DEFAULT_STREAM_IDLE: Duration = Duration::from_secs(60);

/// A successful response.
#[derive(Debug, Clone)]
pub struct Completion {
    pub choices: Vec<Choice>,
    /// Usage as the API reported it (None when the server sent none).
    pub usage: Option<Usage>,
    pub request_id: Option<String>,
    pub rate: RateLimitInfo,
    /// Why this whole, paid answer still cannot be used (a refusal, a content filter, fewer
    /// variants than `model.n` asked for): the row fails with this reason, its cost kept.
    pub unusable: Option<String>,
    /// The processing tier the server says it served the request at (OpenAI's
    /// `service_tier`), if it said.
    pub service_tier: Option<String>,
}

/// What the scheduler does about a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Transient: try again after a delay.
    Retry,
    /// This row cannot succeed as sent (e.g. 400): record it as failed, go on with the rest.
    FailRow,
    /// Nothing will succeed (bad key, no quota, unknown model): stop the job.
    AbortJob,
}

/// Why an attempt failed, in words a user can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    RateLimited,
    /// OpenAI's flex tier has no capacity now (429 "resource unavailable"): not billed,
    /// and not a sign that we send too fast.
    ResourceUnavailable,
    InsufficientQuota,
    Auth,
    NotFound,
    BadRequest,
    Server,
    Timeout,
    Connection,
    BadResponse,
    /// A 3xx answer: the base URL points somewhere that sends us on (never followed).
    Redirect,
}

/// A failed attempt, classified.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ApiError {
    pub action: Action,
    pub kind: ErrorKind,
    pub status: Option<u16>,
    /// The provider's message (never containing our key: we never send it in a URL or body).
    pub message: String,
    /// The server's `retry-after-ms` / `retry-after`, when given.
    pub retry_after: Option<Duration>,
    /// Rate-limit headers of the failed response (boxed: errors travel in `Result`s).
    pub rate: Box<RateLimitInfo>,
}

impl ApiError {
    fn describe(&self) -> String {
        match self.status {
            Some(s) => format!("HTTP {s}: {}", self.message),
            None => self.message.clone(),
        }
    }

    /// An error that did not come with an HTTP status.
    pub fn transport(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            action: Action::Retry,
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
            rate: Box::default(),
        }
    }
}

/// Classifies an HTTP error response once, for every provider.
///
/// `error_type`/`error_code` are the provider's `error.type` / `error.code` strings.
/// Retry: 408, 409, 429 rate limits, 5xx (and Anthropic's 529). Fail the row: other 4xx.
/// Abort: 401/403 (the key is wrong for every row), 404 (unknown model or URL), 429
/// `insufficient_quota` (retrying cannot help, as OpenAI documents), and any 3xx: redirects
/// are never followed (see [`redirect_message`]), so every row would get the same answer.
pub fn classify(
    status: u16,
    error_type: Option<&str>,
    error_code: Option<&str>,
    message: String,
    headers: &HeaderMap,
    rate: RateLimitInfo,
) -> ApiError {
    let quota = [error_type, error_code].iter().flatten().any(|s| {
        matches!(
            *s,
            "insufficient_quota"
                | "billing_hard_limit_reached"
                | "credit_balance_exhausted"
                | "organization_spend_limit_exceeded"
                | "project_spend_limit_exceeded"
        )
    });
    let unavailable = [error_type, error_code]
        .iter()
        .flatten()
        .any(|s| s.eq_ignore_ascii_case("resource_unavailable"))
        || message
            .to_ascii_lowercase()
            .contains("resource unavailable");
    if (300..400).contains(&status) {
        return ApiError {
            action: Action::AbortJob,
            kind: ErrorKind::Redirect,
            status: Some(status),
            message: redirect_message(headers),
            retry_after: None,
            rate: Box::new(rate),
        };
    }
    let (action, kind) = match status {
        429 if quota => (Action::AbortJob, ErrorKind::InsufficientQuota),
        429 if unavailable => (Action::Retry, ErrorKind::ResourceUnavailable),
        429 => (Action::Retry, ErrorKind::RateLimited),
        401 | 403 => (Action::AbortJob, ErrorKind::Auth),
        404 => (Action::AbortJob, ErrorKind::NotFound),
        408 => (Action::Retry, ErrorKind::Timeout),
        409 => (Action::Retry, ErrorKind::Server),
        s if s >= 500 => (Action::Retry, ErrorKind::Server),
        _ => (Action::FailRow, ErrorKind::BadRequest),
    };
    ApiError {
        action,
        kind,
        status: Some(status),
        message,
        retry_after: ratelimit::retry_after(headers),
        rate: Box::new(rate),
    }
}

/// The longest `Location` quoted in an error (a hostile server may send anything).
const MAX_LOCATION_CHARS: usize = 300;

/// What a redirect answer says, naming its `Location`. No HTTP client promptmill builds
/// follows a redirect: a key header (`x-api-key`, `api-key`) and the prompts would travel to
/// whatever origin the server names, so the user has to point the base URL there instead.
pub fn redirect_message(headers: &HeaderMap) -> String {
    let location = headers
        .get(reqwest::header::LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let to = match location {
        Some(l) => {
            let mut quoted: String = l.chars().take(MAX_LOCATION_CHARS).collect();
            if quoted.len() < l.len() {
                quoted.push('…');
            }
            format!("a redirect to '{}'", quoted.escape_debug())
        }
        None => "a redirect (no Location)".to_string(),
    };
    format!(
        "the server answered with {to}; promptmill follows no redirect (the API key and \
         prompts go only to the configured base URL): fix api.base_url (or the provider's \
         base-URL environment variable) to the address the API answers at"
    )
}

/// An HTTP client for one job: never follows a redirect (see [`redirect_message`]).
pub fn http_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, reqwest::Error> {
    builder
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("promptmill/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A provider's API shape.
pub trait Provider: Send + Sync {
    /// Short name for messages: "openai", "azure", "anthropic".
    fn name(&self) -> &'static str;
    /// The JSON body for one rendered prompt.
    fn body(&self, model: &ModelConfig, messages: &[Message]) -> Value;
    /// The URL requests are posted to.
    fn url(&self, base_url: &str, model: &ModelConfig) -> String;
    /// Adds authentication (and any fixed headers) to a request.
    fn authorize(&self, req: reqwest::RequestBuilder, key: &Secret) -> reqwest::RequestBuilder;
    /// Reads a response.
    fn parse(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> Result<Completion, ApiError>;
    /// Reads a successful streamed response (`model.stream = true`), given all its
    /// server-sent events; a stream without its end marker is an interrupted attempt.
    fn parse_stream(
        &self,
        headers: &HeaderMap,
        events: &[SseEvent],
    ) -> Result<Completion, ApiError>;
}

/// A failed attempt because the response was not what the API promised (retried).
pub(crate) fn bad_response(message: impl Into<String>, rate: RateLimitInfo) -> ApiError {
    let mut e = ApiError::transport(ErrorKind::BadResponse, message);
    e.rate = Box::new(rate);
    e
}

/// Errors setting up a client (before any request).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no API key: set the environment variable {0} (or api.api_key_file in the job)")]
    MissingKey(String),
    #[error("{path}: cannot read the API key file: {source}")]
    KeyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the API key in {0} holds characters an HTTP header cannot carry (control characters \
         or non-ASCII text); check it was copied whole and alone"
    )]
    BadKey(String),
    #[error("api.base_url: {0}")]
    BaseUrl(String),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("{0}")]
    Settings(String),
}

/// Sends rendered prompts to one provider.
pub struct Client {
    http: reqwest::Client,
    provider: Box<dyn Provider>,
    url: String,
    key: Secret,
    /// Total time for one non-streamed request.
    timeout: Duration,
    /// Longest silence between two chunks of a streamed response.
    stream_idle: Duration,
    /// Longest wait for a connection.
    connect: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("provider", &self.provider.name())
            .field("url", &self.url)
            .field("key", &self.key)
            .finish()
    }
}

/// The base URL a job talks to: job file/flag, then the provider's env var, then its default.
pub fn base_url(job: &Job) -> String {
    if let Some(u) = &job.api.base_url {
        return u.trim_end_matches('/').to_string();
    }
    let (env, default) = match job.api.provider {
        ProviderKind::Openai => ("OPENAI_BASE_URL", "https://api.openai.com/v1"),
        ProviderKind::Azure => ("AZURE_OPENAI_ENDPOINT", ""),
        ProviderKind::Anthropic => ("ANTHROPIC_BASE_URL", "https://api.anthropic.com/v1"),
    };
    let Some(from_env) = std::env::var(env).ok().filter(|v| !v.trim().is_empty()) else {
        return default.to_string();
    };
    let url = from_env.trim().trim_end_matches('/');
    match job.api.provider {
        ProviderKind::Anthropic => anthropic_sdk_base(url),
        _ => url.to_string(),
    }
}

/// Whether `job` talks to Gemini's OpenAI-compatible endpoint: the host
/// `generativelanguage.googleapis.com`, or a base URL ending in its path `/v1beta/openai`
/// (a proxy or the mock serving that shape).
pub fn is_gemini(job: &Job) -> bool {
    if job.api.provider != ProviderKind::Openai {
        return false;
    }
    let base = base_url(job);
    url::Url::parse(&base).is_ok_and(|u| {
        u.host_str() == Some("generativelanguage.googleapis.com")
            || u.path().trim_end_matches('/').ends_with("/v1beta/openai")
    })
}

/// `ANTHROPIC_BASE_URL` as the Anthropic SDKs read it: the host without `/v1` (they add
/// it); a value that already ends in `/v1` is taken as is.
fn anthropic_sdk_base(url: &str) -> String {
    if url.ends_with("/v1") {
        url.to_string()
    } else {
        format!("{url}/v1")
    }
}

/// Reads the API key from `api.api_key_file` or the job's environment variable.
pub fn api_key(job: &Job) -> Result<Secret, ClientError> {
    if let Some(path) = &job.api.api_key_file {
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::KeyFile {
            path: path.clone(),
            source,
        })?;
        let key = text.lines().next().unwrap_or("").trim().to_string();
        if key.is_empty() {
            return Err(ClientError::MissingKey(format!(
                "(the key file {} is empty)",
                path.display()
            )));
        }
        return usable_key(key, || format!("the key file {}", path.display()));
    }
    let var = job.api_key_env();
    match std::env::var(&var) {
        Ok(k) if !k.trim().is_empty() => usable_key(k.trim().to_string(), || {
            format!("the environment variable {var}")
        }),
        _ => Err(ClientError::MissingKey(var)),
    }
}

/// Refuses a key an HTTP header cannot carry (a pasted control character or non-ASCII
/// text): sending without it would only earn a confusing 401. The message names where the
/// key came from, never the key.
fn usable_key(key: String, from: impl FnOnce() -> String) -> Result<Secret, ClientError> {
    let key = Secret::new(key);
    match key.header_value("Bearer ") {
        Some(_) => Ok(key),
        None => Err(ClientError::BadKey(from())),
    }
}

/// Refuses a base URL that would send the key in clear over a network.
pub fn check_base_url(url: &str, allow_insecure_http: bool) -> Result<(), ClientError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| ClientError::BaseUrl(format!("'{url}': {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback || allow_insecure_http {
                Ok(())
            } else {
                Err(ClientError::BaseUrl(format!(
                    "'{url}' is plain http to another machine: the API key would travel \
                     unencrypted. Use https, or set api.allow_insecure_http = true if this \
                     network is trusted"
                )))
            }
        }
        other => Err(ClientError::BaseUrl(format!(
            "'{url}': unsupported scheme '{other}'"
        ))),
    }
}

/// The provider a job speaks to (pure: no key, no network).
pub fn provider_for(job: &Job) -> Box<dyn Provider> {
    match job.api.provider {
        ProviderKind::Openai => Box::new(OpenAi::new(job.api.endpoint)),
        ProviderKind::Azure => Box::new(Azure::new(
            job.api.api_version.clone(),
            job.api.deployment.clone(),
        )),
        ProviderKind::Anthropic => Box::new(Anthropic),
    }
}

impl Client {
    /// Builds the client for a job (reads the key; sends nothing).
    pub fn for_job(job: &Job, key: Secret) -> Result<Client, ClientError> {
        let base = base_url(job);
        if base.is_empty() {
            return Err(ClientError::BaseUrl(match job.api.provider {
                ProviderKind::Azure => "no Azure endpoint: set AZURE_OPENAI_ENDPOINT (e.g. \
                    https://my-resource.openai.azure.com) or api.base_url"
                    .into(),
                _ => "no base URL: set api.base_url or the provider's endpoint variable".into(),
            }));
        }
        check_base_url(&base, job.api.allow_insecure_http)?;
        check_provider_settings(job)?;
        let provider = provider_for(job);
        // The job's validation keeps these in range (crate::bounds); a value that slipped
        // past it still cannot panic here.
        let secs = |v: Option<f64>, default: Duration| {
            v.and_then(|t| Duration::try_from_secs_f64(t).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(default)
        };
        let timeout = secs(job.api.timeout_secs, Duration::from_secs(600));
        let stream_idle = secs(job.api.timeout_secs, DEFAULT_STREAM_IDLE);
        let connect = secs(job.api.connect_timeout_secs, Duration::from_secs(10));
        // The total timeout is set per request: streamed requests have none (see send).
        let http = http_client(
            reqwest::Client::builder()
                .connect_timeout(connect)
                .pool_max_idle_per_host(usize::MAX),
        )
        .map_err(|e| ClientError::Http(e.to_string()))?;
        let url = provider.url(&base, &job.model);
        Ok(Client {
            http,
            provider,
            url,
            key,
            timeout,
            stream_idle,
            connect,
        })
    }

    /// The provider's request body for a prompt.
    pub fn body(&self, model: &ModelConfig, messages: &[Message]) -> Value {
        self.provider.body(model, messages)
    }

    /// Removes the API key from a text (defence in depth: a server that echoes it back
    /// must not make us print or store it).
    pub fn scrub(&self, text: &str) -> String {
        self.key.scrub(text)
    }

    /// The provider's name.
    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    /// Sends one attempt and classifies its outcome.
    ///
    /// A body with `"stream": true` is read as server-sent events as they arrive: each
    /// chunk must come within the idle limit, and a stream cut short is a failed attempt
    /// (retried like any transient error).
    pub async fn send(&self, body: &Value) -> Result<Completion, ApiError> {
        self.attempt(body).await.map_err(|mut e| {
            // Defence in depth: a server that echoes our key must not make us log or store it.
            e.message = self.key.scrub(&e.message);
            e
        })
    }

    async fn attempt(&self, body: &Value) -> Result<Completion, ApiError> {
        self.exchange(body).await.map(|c| check_variants(body, c))
    }

    async fn exchange(&self, body: &Value) -> Result<Completion, ApiError> {
        let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
        let req = self.http.post(&self.url).json(body);
        let req = if stream {
            req
        } else {
            req.timeout(self.timeout)
        };
        let mut req = self
            .provider
            .authorize(req, &self.key)
            .build()
            .map_err(transport_error)?;
        // Whatever headers the provider chose, credentials never show in a debug print.
        secret::mark_sensitive(req.headers_mut());
        let send = self.http.execute(req);
        let resp = if stream {
            tokio::time::timeout(self.stream_idle, send)
                .await
                .map_err(|_| idle_error(self.stream_idle))?
        } else {
            send.await
        }
        .map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        // A server that ignores `stream` and answers plain JSON is read as such.
        let event_stream = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if stream && event_stream && (200..300).contains(&status) {
            let events = read_events(resp, self.stream_idle).await?;
            return self.provider.parse_stream(&headers, &events);
        }
        let bytes = read_capped(resp)
            .await
            .map_err(|e| self.timed_out(e, false))?;
        self.provider.parse(status, &headers, &bytes)
    }

    /// A transport error, with the limit that ran out when it is a timeout.
    fn transport_error(&self, e: reqwest::Error) -> ApiError {
        let connecting = e.is_connect();
        self.timed_out(transport_error(e), connecting)
    }

    /// Names the limit in a timeout's message, so a user knows which setting to change.
    fn timed_out(&self, mut e: ApiError, connecting: bool) -> ApiError {
        if e.kind == ErrorKind::Timeout && e.status.is_none() {
            let (what, limit, setting) = if connecting {
                (
                    "no connection",
                    self.connect,
                    "api.connect_timeout_secs, --connect-timeout",
                )
            } else {
                (
                    "no complete answer",
                    self.timeout,
                    "api.timeout_secs, --timeout",
                )
            };
            e.message = format!(
                "{what} within {} s ({setting}): {}",
                limit.as_secs_f64(),
                e.message
            );
        }
        e
    }
}

/// Marks an answer with fewer variants than the body's `n` asked for as unusable: a server
/// that ignores `n` would otherwise leave `output_2`… empty on an `ok` row.
fn check_variants(body: &Value, mut c: Completion) -> Completion {
    let asked = body.get("n").and_then(Value::as_u64).unwrap_or(1);
    let got = c.choices.len() as u64;
    if c.unusable.is_none() && got < asked {
        c.unusable = Some(format!(
            "model.n = {asked} asked for {asked} answers but the server returned {got} (it may \
             not support n: remove model.n, or repeat the input rows instead)"
        ));
    }
    c
}

/// Refuses settings a provider cannot honour, before anything is sent (live or batch).
pub fn check_provider_settings(job: &Job) -> Result<(), ClientError> {
    let p = job.api.provider;
    if p != ProviderKind::Openai && job.api.endpoint == Endpoint::Completions {
        return Err(ClientError::Settings(
            "api.endpoint = \"completions\" exists only for provider = \"openai\" (and \
             OpenAI-compatible servers)"
                .into(),
        ));
    }
    if let (
        ProviderKind::Anthropic,
        Some(mode @ (SchemaMode::JsonSchema | SchemaMode::JsonObject)),
    ) = (p, job.model.schema_mode)
    {
        return Err(ClientError::Settings(format!(
            "model.schema_mode = \"{}\": the Anthropic Messages API has no response_format; \
             use \"prompt\" (the default for Anthropic)",
            mode.name()
        )));
    }
    if p == ProviderKind::Anthropic && job.model.n.is_some_and(|n| n > 1) {
        return Err(ClientError::Settings(
            "model.n > 1: the Anthropic Messages API returns one answer per request; remove \
             model.n (or duplicate the input rows)"
                .into(),
        ));
    }
    Ok(())
}

fn idle_error(idle: Duration) -> ApiError {
    ApiError::transport(
        ErrorKind::Timeout,
        format!(
            "the stream was silent for {:.0} s (api.timeout_secs is the idle limit when \
             streaming)",
            idle.as_secs_f64()
        ),
    )
}

/// Reads a streamed body into its events, with an idle limit between chunks and the same
/// size cap as a plain body.
async fn read_events(
    mut resp: reqwest::Response,
    idle: Duration,
) -> Result<Vec<SseEvent>, ApiError> {
    let mut parser = sse::SseParser::default();
    let mut events = Vec::new();
    let mut total = 0usize;
    loop {
        let chunk = tokio::time::timeout(idle, resp.chunk())
            .await
            .map_err(|_| idle_error(idle))?
            .map_err(|e| {
                let mut e = transport_error(e);
                e.message = format!("the stream was interrupted: {}", e.message);
                e
            })?;
        let Some(chunk) = chunk else { break };
        total += chunk.len();
        if total > MAX_BODY_BYTES {
            return Err(ApiError::transport(
                ErrorKind::BadResponse,
                format!("streamed response larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
        events.extend(parser.feed(&chunk));
    }
    // A last event without its blank line still counts (some servers omit it).
    if parser.pending() > 0 {
        events.extend(parser.feed(b"\n\n"));
    }
    Ok(events)
}

fn transport_error(e: reqwest::Error) -> ApiError {
    // reqwest's Display includes the URL, never headers; our URLs carry no key.
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connection
    };
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    ApiError::transport(kind, msg)
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(resp.content_length().unwrap_or(1024).min(1 << 20) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
        if out.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::transport(
                ErrorKind::BadResponse,
                format!("response body larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The instruction that asks for JSON following `schema` in the prompt, for APIs (or
/// `schema_mode = "prompt"`) without a `response_format`.
pub fn schema_instruction(schema: &serde_json::Value) -> String {
    format!(
        "Answer with a single JSON object and nothing else (no prose, no code fence). It must \
         validate against this JSON schema:\n{schema}"
    )
}

/// The start of a body, for error messages, on a char boundary.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_provider_rules() {
        let h = HeaderMap::new();
        let c = |s, t: Option<&str>| classify(s, t, None, "m".into(), &h, RateLimitInfo::default());
        assert_eq!(c(429, Some("requests")).action, Action::Retry);
        assert_eq!(c(429, Some("insufficient_quota")).action, Action::AbortJob);
        assert_eq!(c(401, None).action, Action::AbortJob);
        assert_eq!(c(403, None).action, Action::AbortJob);
        assert_eq!(c(400, None).action, Action::FailRow);
        assert_eq!(c(422, None).action, Action::FailRow);
        assert_eq!(c(408, None).action, Action::Retry);
        assert_eq!(c(409, None).action, Action::Retry);
        assert_eq!(c(500, None).action, Action::Retry);
        assert_eq!(c(529, None).action, Action::Retry);
        let q = classify(
            429,
            Some("insufficient_quota"),
            Some("project_spend_limit_exceeded"),
            "m".into(),
            &h,
            RateLimitInfo::default(),
        );
        assert_eq!(q.kind, ErrorKind::InsufficientQuota);
        // Flex's "no capacity": retried, and not a rate limit (by code, type or message).
        for (t, code, msg) in [
            (None, Some("resource_unavailable"), "m"),
            (Some("resource_unavailable"), None, "m"),
            (None, None, "Resource Unavailable: try later"),
        ] {
            let e = classify(429, t, code, msg.into(), &h, RateLimitInfo::default());
            assert_eq!(
                (e.action, e.kind),
                (Action::Retry, ErrorKind::ResourceUnavailable)
            );
        }
        // Only a 429 is read that way.
        assert_eq!(
            classify(
                500,
                None,
                Some("resource_unavailable"),
                "m".into(),
                &h,
                RateLimitInfo::default()
            )
            .kind,
            ErrorKind::Server
        );
    }

    #[test]
    fn every_redirect_aborts_the_job_naming_its_location() {
        for status in [300, 301, 302, 303, 304, 307, 308] {
            let mut h = HeaderMap::new();
            h.insert("location", "http://127.0.0.1:9/v1/x".parse().unwrap());
            let e = classify(status, None, None, "m".into(), &h, RateLimitInfo::default());
            assert_eq!((e.action, e.kind), (Action::AbortJob, ErrorKind::Redirect));
            let text = e.to_string();
            assert!(text.contains("'http://127.0.0.1:9/v1/x'"), "{text}");
            assert!(text.contains("api.base_url"), "{text}");
        }
        let e = classify(
            302,
            None,
            None,
            "m".into(),
            &HeaderMap::new(),
            RateLimitInfo::default(),
        );
        assert!(e.message.contains("no Location"), "{}", e.message);
        let mut h = HeaderMap::new();
        let long = format!("https://x/{}", "a".repeat(5000));
        h.insert("location", long.parse().unwrap());
        let m = redirect_message(&h);
        assert!(m.len() < 1000 && m.contains('…'), "{m}");
    }

    #[test]
    fn settings_a_provider_cannot_honour_are_refused_up_front() {
        let job = |extra: &str| {
            let text = format!(
                "[input]\npath = \"r.csv\"\n[prompt]\nuser = \"hi\"\n[model]\nname = \"m\"\nn = 2\n[api]\n{extra}\n[output]\npath = \"o.csv\"\n"
            );
            Job::from_str(&text, std::path::Path::new("j.toml"), &Default::default()).unwrap()
        };
        let e = check_provider_settings(&job("provider = \"anthropic\"")).unwrap_err();
        assert!(e.to_string().contains("model.n"), "{e}");
        let e = check_provider_settings(&job("provider = \"azure\"\nendpoint = \"completions\""))
            .unwrap_err();
        assert!(e.to_string().contains("api.endpoint"), "{e}");
        let mut j = job("provider = \"anthropic\"");
        j.model.n = None;
        assert!(check_provider_settings(&j).is_ok());
        j.model.schema_mode = Some(SchemaMode::JsonObject);
        let e = check_provider_settings(&j).unwrap_err();
        assert!(
            e.to_string()
                .contains("model.schema_mode = \"json_object\""),
            "{e}"
        );
        j.model.schema_mode = Some(SchemaMode::Prompt);
        assert!(check_provider_settings(&j).is_ok());
        assert!(check_provider_settings(&job("provider = \"azure\"")).is_ok());
        assert!(check_provider_settings(&job("endpoint = \"completions\"")).is_ok());
    }

    #[test]
    fn anthropic_base_url_follows_the_sdk_convention() {
        assert_eq!(
            anthropic_sdk_base("https://api.anthropic.com"),
            "https://api.anthropic.com/v1"
        );
        assert_eq!(
            anthropic_sdk_base("http://127.0.0.1:8/proxy/v1"),
            "http://127.0.0.1:8/proxy/v1"
        );
        assert_eq!(
            anthropic_sdk_base("http://127.0.0.1:8/proxy"),
            "http://127.0.0.1:8/proxy/v1"
        );
    }

    #[test]
    fn plain_http_is_refused_off_loopback() {
        assert!(check_base_url("http://127.0.0.1:8080/v1", false).is_ok());
        assert!(check_base_url("http://localhost:11434/v1", false).is_ok());
        assert!(check_base_url("http://[::1]:8000/v1", false).is_ok());
        assert!(check_base_url("https://api.openai.com/v1", false).is_ok());
        let e = check_base_url("http://10.0.0.5:8000/v1", false).unwrap_err();
        assert!(e.to_string().contains("unencrypted"), "{e}");
        assert!(check_base_url("http://10.0.0.5:8000/v1", true).is_ok());
        assert!(check_base_url("ftp://x", true).is_err());
    }
}
