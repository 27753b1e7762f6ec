//! What every API endpoint shares: auth, quota, rate limits, faults, stats and the headers
//! stamped on each answer. Endpoints parse their own request shape, then run it through here.

use super::limits::{go_duration, RateLimiter, RateStatus, Rejection};
use super::markers::Markers;
use super::reply;
use super::stats::{bump, Stats};
use super::text::{mix, unit};
use super::MockConfig;
use axum::body::{Body, Bytes};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long `[[mock:hang]]` and `[[mock:slow-body]]` stall (unless the server shuts down).
const STALL: Duration = Duration::from_secs(3600);

/// State shared by all requests of one mock server.
pub(crate) struct Shared {
    pub(crate) cfg: MockConfig,
    pub(crate) stats: Stats,
    /// The prompt cache (`prompt_cache.rs`).
    pub(crate) cache: super::prompt_cache::PromptCache,
    /// None when no limit is set, so unlimited runs take no lock at all.
    limiter: Option<Mutex<RateLimiter>>,
    /// Successful answers counted against `--quota-requests`.
    quota_used: AtomicU64,
    /// Attempts seen per prompt hash, for `[[mock:fail-first:N]]`.
    fail_first: Mutex<HashMap<u64, u32>>,
    /// Flex attempts seen per prompt hash, for `[[mock:flex-unavailable:N]]`.
    flex_seen: Mutex<HashMap<u64, u32>>,
    /// (marker, prompt hash) pairs already misbehaved once: `bad-schema`, `cut-stream`.
    once: Mutex<std::collections::HashSet<(&'static str, u64)>>,
    /// Request sequence number: request ids and the `--fail-rate` draws.
    seq: AtomicU64,
    /// Flips to true when the server shuts down: stalled requests give up.
    shutdown: watch::Receiver<bool>,
}

/// What an endpoint learned from a request, for the checks all endpoints share.
pub(crate) struct Ticket<'a> {
    pub(crate) seq: u64,
    pub(crate) model: &'a str,
    pub(crate) markers: Markers,
    /// Hash of model + messages (or prompt): "the same paid request".
    pub(crate) prompt_hash: u64,
    /// What the TPM limit charges: prompt tokens + max_tokens (16 when absent).
    pub(crate) limit_tokens: u64,
}

impl Shared {
    pub(crate) fn new(cfg: MockConfig, shutdown: watch::Receiver<bool>) -> Shared {
        let limiter = RateLimiter::new(cfg.rpm, cfg.tpm, Instant::now());
        let cache = super::prompt_cache::PromptCache::new(
            !cfg.no_prompt_cache,
            Duration::from_secs(cfg.prompt_cache_ttl_secs),
        );
        Shared {
            cache,
            limiter: (!limiter.is_unlimited()).then(|| Mutex::new(limiter)),
            cfg,
            stats: Stats::default(),
            quota_used: AtomicU64::new(0),
            fail_first: Mutex::new(HashMap::new()),
            flex_seen: Mutex::new(HashMap::new()),
            once: Mutex::new(std::collections::HashSet::new()),
            seq: AtomicU64::new(0),
            shutdown,
        }
    }

    /// Count an API request and give it its sequence number.
    pub(crate) fn begin(&self) -> u64 {
        bump(&self.stats.requests);
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// A 401 unless the bearer key matches `--api-key` (any key passes when none is set).
    pub(crate) fn refuse_unauthorized(&self, headers: &HeaderMap) -> Option<Response> {
        self.refuse_unauthorized_by(headers, AUTHORIZATION.as_str(), "Bearer ")
    }

    /// A 401 unless header `name` holds `prefix` + `--api-key` (Azure: `api-key`,
    /// Anthropic: `x-api-key`, both without prefix).
    pub(crate) fn refuse_unauthorized_by(
        &self,
        headers: &HeaderMap,
        name: &str,
        prefix: &str,
    ) -> Option<Response> {
        let expected = self.cfg.api_key.as_ref()?;
        let given = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix(prefix))
            .map(str::trim);
        if given == Some(expected.as_str()) {
            return None;
        }
        bump(&self.stats.unauthorized);
        Some(reply::unauthorized(given))
    }

    /// Count and build a 400.
    pub(crate) fn bad_request(&self, message: &str) -> Response {
        bump(&self.stats.bad_requests);
        reply::bad_request(message)
    }

    /// Everything between a valid request and its answer: markers that refuse it, quota, rate
    /// limits, latency, hangs and injected 500s. Returns the refusal to send instead of an
    /// answer, or None: answer it.
    pub(crate) async fn refuse(&self, t: &Ticket<'_>) -> Option<Response> {
        if t.markers.unknown {
            return Some(self.bad_request(
                "Unknown [[mock:...]] marker in the last user message (mock markers: 400, 500, \
                 fail-first:N, flex-unavailable:N, cached:N, hang, bad-json, no-choices, slow-body, length, echo, bad-schema, cut-stream, \
                 refusal, content-filter, one-choice).",
            ));
        }
        if t.markers.bad_request {
            return Some(self.bad_request("Invalid request (mock: [[mock:400]] marker)."));
        }
        if self.quota_spent() {
            bump(&self.stats.quota_exceeded);
            return Some(reply::insufficient_quota());
        }
        if t.seq < self.cfg.first_429 {
            bump(&self.stats.rate_limited);
            return Some(reply::error(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests (mock: --first-429). Please slow down.",
                "requests",
                Some("rate_limit_exceeded"),
            ));
        }
        if let Some(r) = self.refuse_over_rate(t) {
            return Some(r);
        }
        if self.cfg.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.cfg.latency_ms)).await;
        }
        if t.markers.hang {
            stall(self.shutdown.clone()).await;
            return Some(reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The mock server gave up on a [[mock:hang]] request.",
                "server_error",
                None,
            ));
        }
        if t.markers.always_500 || self.fails_first(t) || self.random_failure(t.seq) {
            bump(&self.stats.server_errors);
            return Some(reply::server_error());
        }
        None
    }

    fn quota_spent(&self) -> bool {
        self.cfg
            .quota_requests
            .is_some_and(|q| self.quota_used.load(Ordering::Relaxed) >= q)
    }

    fn refuse_over_rate(&self, t: &Ticket<'_>) -> Option<Response> {
        let limiter = self.limiter.as_ref()?;
        // `--token-factor`: the limit counts differently from the usage it reports.
        let charged = (t.limit_tokens as f64 * self.cfg.token_factor).ceil() as u64;
        let verdict = limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_admit(Instant::now(), charged);
        let rejection = verdict.err()?;
        bump(&self.stats.rate_limited);
        Some(match rejection {
            Rejection::Limited { kind, retry_after } => {
                let (what, unit, limit, requested) = match kind {
                    super::limits::LimitKind::Requests => {
                        ("requests", "RPM", self.cfg.rpm, String::new())
                    }
                    super::limits::LimitKind::Tokens => (
                        "tokens",
                        "TPM",
                        self.cfg.tpm,
                        format!(", Requested {charged}"),
                    ),
                };
                let message = format!(
                    "Rate limit reached for {what} per min ({unit}) on {} in mock organization: \
                     Limit {}{requested}. Please try again in {}.",
                    t.model,
                    limit.unwrap_or_default(),
                    go_duration(retry_after)
                );
                reply::rate_limited(&message, kind.as_str(), retry_after)
            }
            Rejection::TooLarge { limit, requested } => {
                let message = format!(
                    "Request too large for {} in mock organization on tokens per min (TPM): \
                     Limit {limit}, Requested {requested}. The input or output tokens must be \
                     reduced in order to run successfully.",
                    t.model
                );
                reply::rate_limited(&message, "tokens", Duration::from_secs(60))
            }
        })
    }

    /// `[[mock:flex-unavailable:N]]` on a flex request: the 429 OpenAI's flex tier sends when
    /// it has no capacity (not billed, not a rate limit), for the prompt's first N flex
    /// requests.
    pub(crate) fn refuse_flex(&self, t: &Ticket<'_>) -> Option<Response> {
        let n = t.markers.flex_unavailable?;
        let mut seen = self.flex_seen.lock().unwrap_or_else(|e| e.into_inner());
        let attempts = seen.entry(t.prompt_hash).or_insert(0);
        *attempts = attempts.saturating_add(1);
        if *attempts > n {
            return None;
        }
        bump(&self.stats.flex_unavailable);
        Some(reply::error(
            StatusCode::TOO_MANY_REQUESTS,
            "Resource unavailable: flex processing has no capacity for this request right \
             now. Please retry later, or use the default service tier.",
            "resource_unavailable",
            Some("resource_unavailable"),
        ))
    }

    fn fails_first(&self, t: &Ticket<'_>) -> bool {
        let Some(n) = t.markers.fail_first else {
            return false;
        };
        let mut seen = self.fail_first.lock().unwrap_or_else(|e| e.into_inner());
        let attempts = seen.entry(t.prompt_hash).or_insert(0);
        *attempts = attempts.saturating_add(1);
        *attempts <= n
    }

    /// True the first time `marker` is seen for this prompt (then false until a reset).
    pub(crate) fn first_time(&self, marker: &'static str, prompt_hash: u64) -> bool {
        self.once
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((marker, prompt_hash))
    }

    fn random_failure(&self, seq: u64) -> bool {
        self.cfg.fail_rate > 0.0 && unit(mix(self.cfg.seed ^ mix(seq))) < self.cfg.fail_rate
    }

    /// Answer 200 with `body` (or what a 200-with-a-fault marker sends instead), after
    /// charging the quota and counting the prompt.
    pub(crate) fn answer(
        &self,
        t: &Ticket<'_>,
        prompt_tokens: u64,
        completion_tokens: u64,
        body: Vec<u8>,
    ) -> Response {
        if let Some(q) = self.cfg.quota_requests {
            // Reserve under concurrency: only the first `q` answers get through.
            if self.quota_used.fetch_add(1, Ordering::Relaxed) >= q {
                bump(&self.stats.quota_exceeded);
                return reply::insufficient_quota();
            }
        }
        self.stats
            .record_ok(t.prompt_hash, prompt_tokens, completion_tokens);
        let m = &t.markers;
        if m.bad_json {
            return reply::json_bytes(StatusCode::OK, "<html>502 Bad Gateway</html> {\"id\":");
        }
        if m.no_choices {
            return reply::json_bytes(StatusCode::OK, "{\"choices\":[]}");
        }
        if m.cut_stream && self.first_time("cut-stream", t.prompt_hash) {
            // Half the answer, then the connection fails: an interrupted stream.
            let mut head = Bytes::from(body);
            let _tail = head.split_off(head.len() / 2);
            let stream = futures_util::stream::iter([
                Ok(head),
                Err(std::io::Error::other("mock: stream cut")),
            ]);
            return reply::json_bytes(StatusCode::OK, Body::from_stream(stream));
        }
        if m.slow_body {
            let mut head = Bytes::from(body);
            let _tail = head.split_off(head.len() / 2);
            let rx = self.shutdown.clone();
            let stream = futures_util::stream::once(async move { Ok(head) }).chain(
                futures_util::stream::once(async move {
                    stall(rx).await;
                    Err(std::io::Error::other("mock: slow body abandoned"))
                }),
            );
            return reply::json_bytes(StatusCode::OK, Body::from_stream(stream));
        }
        reply::json_bytes(StatusCode::OK, body)
    }

    /// Stamp `x-request-id` and (unless `--no-rate-headers`) the `x-ratelimit-*` headers.
    pub(crate) fn decorate(&self, mut resp: Response, seq: u64) -> Response {
        if !self.cfg.no_rate_headers {
            reply::add_anthropic_rate_headers(resp.headers_mut(), &self.rate_status());
        }
        let id = format!("req_{:016x}{:016x}", mix(seq), mix(!seq));
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&id) {
            h.insert(HeaderName::from_static("x-request-id"), v);
        }
        if !self.cfg.no_rate_headers {
            reply::add_rate_headers(h, &self.rate_status());
        }
        resp
    }

    fn rate_status(&self) -> RateStatus {
        self.limiter.as_ref().map_or_else(RateStatus::default, |l| {
            l.lock()
                .unwrap_or_else(|e| e.into_inner())
                .status(Instant::now())
        })
    }

    /// `POST /_mock/reset`: zero the stats, the quota used and the fail-first attempts, and
    /// refill the rate limits.
    pub(crate) fn reset(&self) {
        self.stats.reset();
        self.quota_used.store(0, Ordering::Relaxed);
        self.fail_first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.once.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.flex_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if let Some(l) = &self.limiter {
            *l.lock().unwrap_or_else(|e| e.into_inner()) =
                RateLimiter::new(self.cfg.rpm, self.cfg.tpm, Instant::now());
        }
    }
}

/// Sleep for an hour, or until the server shuts down.
async fn stall(mut shutdown: watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(STALL) => {}
        _ = shutdown.wait_for(|down| *down) => {}
    }
}
