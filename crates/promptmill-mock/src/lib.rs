//! The built-in mock of an OpenAI-compatible API: `promptmill mock-server`, `run --mock`,
//! the quickstart, every integration test and the benchmarks run against it.
//!
//! It answers deterministically (the same request gets the same text), enforces RPM/TPM
//! limits the way providers do (see `limits.rs`), and injects faults on demand.
//!
//! # Routes
//! All routes are declared in [`router`]; each endpoint's handling lives in its own module.
//! - `POST /v1/chat/completions`: OpenAI chat completions (`messages`, `max_tokens` or
//!   `max_completion_tokens`, `n`, `stop`; other fields are accepted and ignored).
//! - `POST /v1/completions`: legacy text completions (`prompt`, default `max_tokens` 16).
//! - `POST /openai/deployments/{deployment}/chat/completions?api-version=…`: Azure OpenAI
//!   (the chat endpoint's answers; the key in `api-key`; `api-version` required). Also
//!   served under `/v1/…`, so `run --mock` works for Azure jobs.
//! - `POST /v1/messages`: Anthropic Messages API (`x-api-key`, `anthropic-version`
//!   required, top-level `system`, required `max_tokens`, `stop_sequences`).
//! - `POST /v1/files`, `GET /v1/files/{id}/content`, `POST|GET /v1/batches`,
//!   `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`: the Batch API (see `batches.rs`).
//! - The same chat, files and batches routes under `/v1beta/openai/` instead of `/v1/`: the
//!   shape of Gemini's OpenAI-compatible endpoint (base URL
//!   `https://generativelanguage.googleapis.com/v1beta/openai/`); `--batch-max-requests`
//!   gives its batches a smaller size limit than OpenAI's.
//! - `POST|GET /v1/messages/batches`, `GET /v1/messages/batches/{id}`,
//!   `GET /v1/messages/batches/{id}/results`, `POST /v1/messages/batches/{id}/cancel`:
//!   Anthropic's Message Batches (see `message_batches.rs`; `[[mock:expire]]` there).
//!   What the two batch APIs do alike (polls, paging, answering through the live handlers,
//!   scrambled results) is in `batch_core.rs`.
//! - `GET /_mock/stats`: [`MockStatsSnapshot`] as JSON.
//!
//! Beside the server, [`run_batch`] (`promptmill mock-run-batch -i IN -o OUT`) answers an
//! OpenAI batch input file offline into vLLM's `run-batch` output file (see `run_batch.rs`).
//! - `POST /_mock/reset`: zero the stats, the quota used and the fail-first attempts; refill
//!   the rate limits. Answers the zeroed stats.
//!
//! # Answers
//! `Mock answer for: <first 12 words of the last user message>` padded with filler words to
//! 20–60 tokens, chosen from a hash of the request and `--seed`; cut to `max_tokens` (then
//! `finish_reason` is `"length"`) and at the first `stop` sequence. Token counts are an
//! approximation (bytes/4). Checks run in this order: auth (401), body (400), quota (429
//! `insufficient_quota`), rate limits (429), `--latency-ms`, faults (500), answer.
//!
//! # Markers
//! Put these in the last user message (or the `prompt`) to make one request misbehave:
//! - `[[mock:400]]`: 400 `invalid_request_error`.
//! - `[[mock:500]]`: always 500 `server_error`.
//! - `[[mock:fail-first:N]]`: 500 for the first N admitted attempts of this exact prompt
//!   (model + messages), then success. Rate-limited attempts do not count.
//! - `[[mock:flex-unavailable:N]]`: the first N requests of this prompt sent with
//!   `service_tier: "flex"` get OpenAI's flex 429 (`code: "resource_unavailable"`), then
//!   success; requests at another tier are answered as usual. Every chat answer echoes
//!   `service_tier` (`flex`, `priority`, else `default`).
//! - `[[mock:cached:N]]`: the chat answer reports N of its prompt tokens (at most all) as
//!   read from the prompt cache (`usage.prompt_tokens_details.cached_tokens`).
//! - `[[mock:hang]]`: never answers (sleeps an hour, or until the server shuts down: 503).
//! - `[[mock:bad-json]]`: 200 with a body that is not JSON.
//! - `[[mock:no-choices]]`: 200 with `{"choices":[]}`.
//! - `[[mock:slow-body]]`: sends the headers and half the body, then stalls.
//! - `[[mock:length]]`: `finish_reason` is `"length"`.
//! - `[[mock:echo]]`: the answer is the whole last user message (markers included).
//! - `[[mock:settings]]`: the answer is the request's `model=… temperature=… max_tokens=…`
//!   (`-` for one not sent).
//!
//! - `[[mock:bad-schema]]`: the first structured (JSON-schema) answer to this prompt is
//!   not JSON; later attempts are.
//! - `[[mock:cut-stream]]`: the first answer to this prompt stops half-way with a broken
//!   connection (an interrupted stream); later attempts are whole.
//! - `[[mock:refusal]]`: the model refuses (OpenAI: `content: null` and a `refusal` text;
//!   Anthropic: `stop_reason: "refusal"`), billed like any answer.
//! - `[[mock:content-filter]]`: `finish_reason: "content_filter"` (Anthropic: `refusal`).
//! - `[[mock:one-choice]]`: one choice whatever `n` asked for (a server that ignores `n`).
//! - `[[mock:score:N]]`: a structured answer with a `score` field gets N there (a judge told
//!   what to say; the last such marker in the prompt wins).
//!
//! # Streaming and structured output
//! `"stream": true` answers with server-sent events in the endpoint's shape (OpenAI chunks
//! plus a usage chunk when `stream_options.include_usage`; Anthropic's event sequence).
//! A `response_format` of type `json_schema`, or of type `json_object` with a `schema`
//! (llama-cpp-python's form), or a system prompt with promptmill's "JSON schema:"
//! instruction (`model.schema_mode = "prompt"`, and always on `/v1/messages`) gets a JSON
//! answer that follows the schema, chosen deterministically (see `structured.rs`). With
//! `--reject-json-schema`, `json_schema` is answered 500 like llama-cpp-python does.
//!
//! Anthropic-style `anthropic-ratelimit-*` headers (RFC 3339 resets) are sent beside the
//! `x-ratelimit-*` ones.
//!
//! `--token-factor F` makes the TPM limit charge F times what the mock counts (its
//! `x-ratelimit-remaining-tokens` falls accordingly, and a tokens 429 says `Requested N`
//! as OpenAI's do); `--first-429 N` answers the first N requests 429 without Retry-After.
//!
//! Markers can be combined; an unknown `[[mock:...]]` is a 400 so that a typo cannot pass.
//!
//! # Prompt caching
//! Like the providers (details in `prompt_cache.rs`): on the OpenAI shape, a chat prompt
//! sharing at least 1,024 leading tokens (messages in order, as the mock counts them) with a
//! prompt of the same model answered within `--prompt-cache-ttl-secs` (default 300, from its
//! last use) reports the shared prefix rounded down to a multiple of 128 as
//! `usage.prompt_tokens_details.cached_tokens`. On `/v1/messages`, only content blocks with
//! `cache_control: {"type": "ephemeral", "ttl"?: "5m" | "1h"}` cache the prompt up to and
//! including them: `cache_creation_input_tokens` when written, `cache_read_input_tokens` when
//! read, `input_tokens` the rest; prefixes under 1,024 tokens (2,048 for haiku models) are
//! not cached. A batch's requests see only what was cached before the batch was created
//! (never each other's writes); later requests see theirs. A live request likewise sees only
//! what answers given before it arrived wrote, so requests sent together all miss.
//! `--no-prompt-cache` turns it off.

mod anthropic;
mod azure;
mod batch_core;
mod batches;
mod control;
mod limits;
mod markers;
mod message_batches;
mod openai;
mod prompt_cache;
mod reply;
mod run_batch;
mod state;
mod stats;
mod stream;
mod structured;
mod text;

pub use run_batch::{run_batch, RunBatchArgs};
pub use stats::MockStatsSnapshot;

use anyhow::Context as _;
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use axum::Router;
use state::Shared;
use std::io;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long `shutdown` waits for in-flight answers before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Mock API settings; also the flags of `promptmill mock-server` (and reused by `run --mock`).
#[derive(Debug, Clone, clap::Args)]
pub struct MockConfig {
    /// Requests per minute enforced (unlimited when absent).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rpm: Option<u32>,
    /// Tokens per minute enforced: prompt tokens + max_tokens (16 when absent) per request.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub tpm: Option<u32>,
    /// Milliseconds added before each admitted answer (not before 401/429 refusals).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction of admitted requests answered 500, from 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = promptmill::bounds::fail_rate)]
    pub fail_rate: f64,
    /// Seed for the answer text and the `--fail-rate` draws.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// When set, requests without `Authorization: Bearer <this key>` get 401.
    #[arg(long)]
    pub api_key: Option<String>,
    /// After this many 200 answers, every request gets 429 `insufficient_quota`.
    #[arg(long)]
    pub quota_requests: Option<u64>,
    /// Omit the `x-ratelimit-*` headers.
    #[arg(long)]
    pub no_rate_headers: bool,
    /// Answer a `response_format` of type `json_schema` with a 500, as llama-cpp-python's
    /// server does (it takes `{"type": "json_object", "schema": …}` instead).
    #[arg(long)]
    pub reject_json_schema: bool,
    /// The TPM limit charges this many times the tokens it counts (a server whose
    /// tokenizer or overheads count more than tiktoken does), e.g. 1.1.
    #[arg(long, default_value_t = 1.0, value_parser = promptmill::bounds::token_factor)]
    pub token_factor: f64,
    /// The first N requests get a 429 `rate_limit_exceeded` without Retry-After (a server
    /// that turns away a first burst); they count as rate-limited.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub first_429: u64,
    /// Batch API: polls of `GET /v1/batches/{id}` per status step (validating, in_progress,
    /// finalizing, completed); Message Batches end after three such steps.
    #[arg(long, default_value_t = 1)]
    pub batch_step_polls: u32,
    /// Batch API: hold the answer to `POST /v1/batches` (or `/v1/messages/batches`) this
    /// long after creating the batch.
    #[arg(long, default_value_t = 0)]
    pub batch_create_delay_ms: u64,
    /// Batch API: a batch whose input file holds more requests than this fails validation
    /// (`batch_size_exceeded`), as a provider with a smaller limit than OpenAI's would.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_max_requests: Option<u64>,
    /// Batch API: the enqueued-token limit. A batch whose requests (prompt + max_tokens
    /// each) would take the tokens of the batches still running past it fails at once with
    /// `token_limit_exceeded`, as OpenAI's do.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_enqueued_tokens: Option<u64>,
    /// Turn the prompt cache off: every answer reports 0 cached tokens.
    #[arg(long)]
    pub no_prompt_cache: bool,
    /// Seconds a cached prompt prefix lives after its last use (Anthropic's `ttl: "1h"`
    /// entries live an hour).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub prompt_cache_ttl_secs: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            rpm: None,
            tpm: None,
            latency_ms: 0,
            fail_rate: 0.0,
            seed: 42,
            api_key: None,
            quota_requests: None,
            no_rate_headers: false,
            reject_json_schema: false,
            token_factor: 1.0,
            first_429: 0,
            batch_step_polls: 1,
            batch_create_delay_ms: 0,
            batch_max_requests: None,
            batch_enqueued_tokens: None,
            no_prompt_cache: false,
            prompt_cache_ttl_secs: 300,
        }
    }
}

/// Flags of `promptmill mock-server`.
#[derive(Debug, clap::Args)]
pub struct MockServerArgs {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0: any free port; the URL is printed on stdout).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Limits, latency and faults.
    #[command(flatten)]
    pub config: MockConfig,
}

/// A running mock API, serving on a spawned task until [`MockServer::shutdown`] or drop.
pub struct MockServer {
    /// The address actually bound (with the real port when bound to port 0).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
}

impl MockServer {
    /// Bind `bind` (use `127.0.0.1:0` for an ephemeral port) and serve on a spawned task.
    pub async fn start(cfg: MockConfig, bind: SocketAddr) -> io::Result<MockServer> {
        if !(0.0..=1.0).contains(&cfg.fail_rate)
            || cfg.rpm == Some(0)
            || cfg.tpm == Some(0)
            || !(0.1..=10.0).contains(&cfg.token_factor)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mock config: fail_rate must be within 0..=1, token_factor within 0.1..=10 \
                 and rpm/tpm at least 1",
            ));
        }
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let shared = Arc::new(Shared::new(cfg, rx.clone()));
        let app = router(shared.clone());
        let listener = listener.tap_io(|tcp| {
            // Small JSON answers: do not let Nagle hold them back.
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let mut rx = rx;
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|down| *down).await;
                })
                .await
        });
        Ok(MockServer {
            addr,
            shared,
            shutdown: tx,
            task,
        })
    }

    /// The base URL clients use, e.g. `http://127.0.0.1:PORT/v1` (loopback when bound to
    /// an unspecified address such as 0.0.0.0).
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}/v1", SocketAddr::new(ip, self.addr.port()))
    }

    /// The counters so far.
    pub fn stats(&self) -> MockStatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Stop accepting, let in-flight answers finish (stalled ones give up at once), wait up
    /// to 5 s, then drop whatever is left.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for MockServer {
    /// Dropping the server stops it too (without waiting).
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// The base path of Gemini's OpenAI-compatible endpoint
/// (`https://generativelanguage.googleapis.com/v1beta/openai/`), which the mock also serves:
/// chat completions, files and batches.
pub const GEMINI_BASE: &str = "/v1beta/openai";

/// Every route of the mock, in one place.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        // Gemini's OpenAI-compatible endpoint: the same API under another base path.
        .route(
            &format!("{GEMINI_BASE}/chat/completions"),
            post(openai::chat_completions),
        )
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(azure::chat_completions),
        )
        // `run --mock` points every provider at `…/v1`: Azure's path then follows it.
        .route(
            "/v1/openai/deployments/{deployment}/chat/completions",
            post(azure::chat_completions),
        )
        .route("/v1/messages", post(anthropic::messages))
        .route("/_mock/stats", get(control::stats))
        .route("/_mock/reset", post(control::reset))
        .fallback(control::not_found)
        .with_state(shared.clone())
        .merge(batches::routes(shared.clone()))
        .merge(message_batches::routes(shared))
}

/// The `promptmill mock-server` command body: binds `--host`/`--port`, loads the o200k token
/// tables (see `text::warm_up`), prints exactly one line `mock API listening on <base url>`
/// to stdout, serves until Ctrl-C or SIGTERM.
pub async fn serve_forever(args: MockServerArgs) -> anyhow::Result<()> {
    let bind = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot resolve --host {}", args.host))?
        .next()
        .with_context(|| format!("--host {} resolves to no address", args.host))?;
    // Listen for signals before announcing the URL: a test may signal as soon as it reads it.
    let signals = Signals::install().context("cannot install signal handlers")?;
    let server = MockServer::start(args.config, bind)
        .await
        .with_context(|| format!("cannot bind the mock API to {bind}"))?;
    // The token tables before the URL: a client that reads it may send at once.
    tokio::task::spawn_blocking(text::warm_up)
        .await
        .context("loading the token tables failed")?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "mock API listening on {}", server.base_url())?;
        out.flush()?;
    }
    signals.wait().await;
    tracing::info!("mock API shutting down");
    server.shutdown().await;
    Ok(())
}

/// Ctrl-C and (on Unix) SIGTERM, registered up front.
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn wait(self) {
        #[cfg(unix)]
        {
            let Signals { mut int, mut term } = self;
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
