//! The job file: what a job reads, how it prompts, which API it calls, under which limits,
//! and where results go. TOML on disk, overridable from the command line.
//!
//! Precedence: command-line flags (named ones and `--set key=value`) win over the job file,
//! the job file wins over defaults. Relative paths written in a job file resolve against the
//! job file's folder; paths given on the command line resolve against the current directory.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::checks::{CheckSpec, Checks};
use crate::render::{MessageSpec, PromptSpec, TemplateSource};
use crate::source::{Format, SheetRef, SourceOptions};
use crate::types::Role;

/// Everything that can go wrong reading a job file or its overrides.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read job file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("--set {arg}: {message}")]
    Override { arg: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A parsed job file, with defaults applied and paths resolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// A name for the job, shown in the summary. Defaults to the job file's stem.
    #[serde(default)]
    pub name: Option<String>,
    /// `live` (default): call the API row by row. `batch`: use the provider's Batch API.
    #[serde(default)]
    pub mode: Mode,
    pub input: InputConfig,
    pub prompt: PromptConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    pub output: OutputConfig,
    #[serde(default)]
    pub estimate: EstimateConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    /// `[batch]`: the provider's Batch API limits (see [`BatchConfig`]).
    #[serde(default)]
    pub batch: BatchConfig,
    /// `[plan]`: the tier table's assumptions, the deadline and the tier planner.
    #[serde(default)]
    pub plan: PlanConfig,
    /// `[[checks]]`: per-row checks on answers (see [`crate::checks`]).
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// A row rejected by the checks is sent again, with the failed checks' reasons as
    /// feedback, until it passes or has had this many new answers (0 = never).
    #[serde(default)]
    pub regenerate: u32,
    /// `[judge]`: a second prompt that scores each answer that passed the checks.
    #[serde(default)]
    pub judge: Option<JudgeConfig>,
    /// `[[outputs]]`: more named outputs per row, each its own prompt and request.
    #[serde(default)]
    pub outputs: Vec<OutputPrompt>,
    /// The job file's folder: relative paths in the file resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The job file itself.
    #[serde(skip)]
    pub file: PathBuf,
    /// `run --shard K/N`: only this shard's rows, into the shard's own files (see
    /// [`Job::into_shard`]).
    #[serde(skip)]
    pub shard: Option<crate::shard::Shard>,
}

/// How rows are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One request per row, concurrently, under the rate limits.
    #[default]
    Live,
    /// The provider's Batch API: half price, results within 24 hours.
    Batch,
}

/// `[input]`: where rows come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// CSV, TSV, JSONL, or Excel/OpenDocument workbook file.
    pub path: PathBuf,
    /// Overrides the format guessed from the extension.
    #[serde(default)]
    pub format: Option<Format>,
    /// Column that identifies a row; defaults to the row number.
    #[serde(default)]
    pub id: Option<String>,
    /// Record unreadable rows as failed rows instead of refusing to start.
    #[serde(default)]
    pub skip_bad_rows: bool,
    /// Workbooks: the sheet to read, by name or 0-based index (default: the first).
    #[serde(default)]
    pub sheet: Option<SheetRef>,
    /// Workbooks: the 1-based row holding the header (default: the first non-empty row).
    #[serde(default)]
    pub header_row: Option<u32>,
}

/// `[prompt]`: how a row becomes messages.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    /// Inline system message template.
    #[serde(default)]
    pub system: Option<String>,
    /// System message template file.
    #[serde(default)]
    pub system_template: Option<PathBuf>,
    /// Inline user message template.
    #[serde(default)]
    pub user: Option<String>,
    /// User message template file.
    #[serde(default)]
    pub template: Option<PathBuf>,
    /// A full message list (few-shot examples etc.), instead of system/user.
    #[serde(default)]
    pub messages: Vec<MessageConfig>,
}

/// `[judge]`: a second prompt that sees the row and its answer (`{{ answer }}`) and returns
/// a score and a reason, as structured output. With `min_score`, an answer scored below it
/// is rejected like one that fails a check (and regenerated with the reason as feedback).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Inline system message template.
    #[serde(default)]
    pub system: Option<String>,
    /// System message template file.
    #[serde(default)]
    pub system_template: Option<PathBuf>,
    /// Inline user message template.
    #[serde(default)]
    pub user: Option<String>,
    /// User message template file.
    #[serde(default)]
    pub template: Option<PathBuf>,
    /// The judge's model (same provider and endpoint); defaults to the job's.
    #[serde(default)]
    pub model: Option<String>,
    /// Defaults to 0: a judge should be consistent.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Upper bound on the verdict's tokens (what is reserved per judge request).
    #[serde(default = "default_judge_max_tokens")]
    pub max_tokens: u32,
    /// The lowest and highest score the judge may give (the schema asks for a number in
    /// between).
    #[serde(default = "default_judge_scale")]
    pub scale: [f64; 2],
    /// Answers scored below this are rejected.
    #[serde(default)]
    pub min_score: Option<f64>,
}

impl JudgeConfig {
    /// The structured output the judge must return: a score on `scale` and a reason.
    pub fn schema(&self) -> serde_json::Value {
        let [low, high] = self.scale;
        serde_json::json!({
            "type": "object",
            "properties": {
                "score": {"type": "number", "minimum": low, "maximum": high},
                "reason": {"type": "string"}
            },
            "required": ["score", "reason"],
            "additionalProperties": false
        })
    }
}

fn default_judge_max_tokens() -> u32 {
    300
}

fn default_judge_scale() -> [f64; 2] {
    [1.0, 10.0]
}

/// One `[[outputs]]` entry: another text per row, from its own prompt, in its own column.
/// Each is its own request (own model settings, own cost) sharing the row's identity,
/// journal and budget; the output keeps one row per input row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputPrompt {
    /// The output column (letters, digits and `_`).
    pub name: String,
    /// Inline system message template.
    #[serde(default)]
    pub system: Option<String>,
    /// System message template file.
    #[serde(default)]
    pub system_template: Option<PathBuf>,
    /// Inline user message template.
    #[serde(default)]
    pub user: Option<String>,
    /// User message template file.
    #[serde(default)]
    pub template: Option<PathBuf>,
    /// Its model (same provider and endpoint); defaults to the job's.
    #[serde(default)]
    pub model: Option<String>,
    /// Defaults to the job's `model.temperature`.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Defaults to the job's `model.max_tokens`.
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

/// One `[[prompt.messages]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageConfig {
    pub role: Role,
    /// Inline template.
    #[serde(default)]
    pub content: Option<String>,
    /// Template file.
    #[serde(default)]
    pub template: Option<PathBuf>,
}

/// `[model]`: the model and its generation settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    /// Upper bound on generated tokens per request; also what the budget and the token
    /// limiter reserve before a request is sent.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// Number of variants per row.
    #[serde(default)]
    pub n: Option<u32>,
    /// Stream the response (server-sent events), so long generations are not cut by idle
    /// timeouts; usage is still recorded.
    #[serde(default)]
    pub stream: bool,
    /// A JSON schema (inline TOML table) the response must follow; its top-level fields
    /// become output columns.
    #[serde(default)]
    pub schema: Option<toml::Value>,
    /// A JSON schema file, instead of `schema`.
    #[serde(default)]
    pub schema_file: Option<PathBuf>,
    /// How the schema is asked for (default: `json_schema`; `prompt` for Anthropic).
    #[serde(default)]
    pub schema_mode: Option<SchemaMode>,
    /// `max_tokens` or `max_completion_tokens`; by default chosen from the model name
    /// (o-series and gpt-5 take `max_completion_tokens`).
    #[serde(default)]
    pub max_tokens_field: Option<String>,
    /// Extra fields merged into every request body, for provider-specific settings.
    #[serde(default)]
    pub extra: Option<toml::Table>,
    /// OpenAI's processing tier, sent as `service_tier`; each answer is priced at the tier
    /// it says it was served at (else this one).
    #[serde(default)]
    pub service_tier: Option<ServiceTier>,
    /// With `service_tier = "flex"`: a row that has been answered "resource unavailable"
    /// for this many seconds is sent at the standard tier instead (off when unset).
    #[serde(default)]
    pub flex_fallback_after_secs: Option<f64>,
    /// The JSON schema from `schema` or `schema_file`, loaded when the job is loaded.
    #[serde(skip)]
    pub schema_json: Option<serde_json::Value>,
    /// An input column naming each row's model (an empty cell: `name`). Live mode only.
    #[serde(default)]
    pub name_column: Option<String>,
    /// An input column giving each row's temperature, 0 to 2 (an empty cell:
    /// `temperature`). Live mode only.
    #[serde(default)]
    pub temperature_column: Option<String>,
    /// An input column giving each row's `max_tokens`, at least 1 (an empty cell:
    /// `max_tokens`). Live mode only.
    #[serde(default)]
    pub max_tokens_column: Option<String>,
}

impl ModelConfig {
    /// The `*_column` settings that are set, as (key, column) pairs.
    pub fn row_columns(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("model.name_column", &self.name_column),
            ("model.temperature_column", &self.temperature_column),
            ("model.max_tokens_column", &self.max_tokens_column),
        ]
        .into_iter()
        .filter_map(|(k, c)| c.as_deref().map(|c| (k, c)))
    }
}

fn default_max_tokens() -> u32 {
    1024
}

/// OpenAI's processing tiers (`model.service_tier`, `--service-tier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ServiceTier {
    /// The project's default (usually standard).
    Auto,
    /// Standard processing.
    Default,
    /// Cheaper, slower, sometimes "resource unavailable".
    Flex,
    /// Dearer, faster.
    Priority,
}

impl ServiceTier {
    /// The value sent as `service_tier`.
    pub fn name(self) -> &'static str {
        match self {
            ServiceTier::Auto => "auto",
            ServiceTier::Default => "default",
            ServiceTier::Flex => "flex",
            ServiceTier::Priority => "priority",
        }
    }
}

/// How a structured-output schema is put in the request (`model.schema_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaMode {
    /// `response_format: {"type": "json_schema", "json_schema": {…, "strict": true}}`
    /// (OpenAI, Azure, vLLM, llama.cpp's server…).
    JsonSchema,
    /// `response_format: {"type": "json_object", "schema": …}`, as llama-cpp-python takes it.
    JsonObject,
    /// The schema as an instruction in the system prompt; nothing else in the body (what
    /// the Anthropic provider always does).
    Prompt,
}

impl SchemaMode {
    /// The name used in job files.
    pub fn name(self) -> &'static str {
        match self {
            SchemaMode::JsonSchema => "json_schema",
            SchemaMode::JsonObject => "json_object",
            SchemaMode::Prompt => "prompt",
        }
    }
}

/// Which API shape to speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI or any OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio, OpenRouter…).
    #[default]
    Openai,
    /// Azure OpenAI deployments.
    Azure,
    /// Anthropic Messages API.
    Anthropic,
}

/// Which endpoint of an OpenAI-compatible API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Endpoint {
    /// `/chat/completions` with messages.
    #[default]
    Chat,
    /// The legacy `/completions` with a prompt string.
    Completions,
}

/// `[api]`: where requests go and how they authenticate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default)]
    pub provider: ProviderKind,
    #[serde(default)]
    pub endpoint: Endpoint,
    /// Defaults to the provider's environment variable (`OPENAI_BASE_URL`…), then its
    /// public endpoint.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Environment variable holding the API key (default: the provider's usual one).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// A file holding the API key (its first line), instead of an environment variable.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Refused: keys never live in job files. Present only to give a clear message.
    #[serde(default)]
    pub api_key: Option<toml::Value>,
    /// Azure: `api-version` query parameter.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Azure: deployment name (defaults to the model name).
    #[serde(default)]
    pub deployment: Option<String>,
    /// Seconds allowed for one whole request (default 600, like the OpenAI SDKs).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Seconds allowed to open a connection (default 10).
    #[serde(default)]
    pub connect_timeout_secs: Option<f64>,
    /// Allow a plain `http://` base URL that is not on loopback (the key would travel in clear).
    #[serde(default)]
    pub allow_insecure_http: bool,
}

/// `[limits]`: how fast and how hard to try.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per minute; unset = learn from the provider's rate-limit headers.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute (prompt + max_tokens per request, as providers count them).
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// Requests in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Retries per row after transient errors (429 rate limits, 5xx, timeouts).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Stop the job (exit 3, rows stay pending) when this many attempts in a row failed with
    /// a connection error, a timeout or a 5xx before any request succeeded; 0 = never.
    #[serde(default = "default_stop_after_errors")]
    pub stop_after_errors: u32,
    /// Stop the job (exit 3, rows stay pending) when the server has answered 429 to every
    /// request for this many seconds, with no success in between; 0 = never.
    #[serde(default = "default_stop_after_refused_secs")]
    pub stop_after_refused_secs: u32,
    /// A `redis://host:port/db` URL: every process on the same `shared_key` draws from one
    /// set of buckets there (or `PROMPTMILL_LIMITS_SHARED`, the only place for a password).
    #[serde(default)]
    pub shared: Option<String>,
    /// The name of the shared buckets; default: provider + base URL + a hash of the key.
    #[serde(default)]
    pub shared_key: Option<String>,
    /// When Redis cannot be reached: `stop` (exit 3) or `local` (warn, go on alone).
    #[serde(default)]
    pub on_shared_failure: crate::limit::shared::OnFailure,
}

fn default_max_in_flight() -> u32 {
    64
}

fn default_max_retries() -> u32 {
    8
}

fn default_stop_after_errors() -> u32 {
    8
}

fn default_stop_after_refused_secs() -> u32 {
    120
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            requests_per_minute: None,
            tokens_per_minute: None,
            max_in_flight: default_max_in_flight(),
            max_retries: default_max_retries(),
            stop_after_errors: default_stop_after_errors(),
            stop_after_refused_secs: default_stop_after_refused_secs(),
            shared: None,
            shared_key: None,
            on_shared_failure: Default::default(),
        }
    }
}

/// `[budget]`: the hard spending caps.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// The older name of `max_usd_total` (same meaning; setting both to different values is
    /// an error).
    #[serde(default)]
    pub max_usd: Option<f64>,
    /// Never start a request that could push what every run of the job spent on this
    /// endpoint, plus what is reserved, over this many dollars.
    #[serde(default)]
    pub max_usd_total: Option<f64>,
    /// Never start a request that could push what this run spent, plus what is reserved,
    /// over this many dollars.
    #[serde(default)]
    pub max_usd_per_run: Option<f64>,
    /// Keep `max_usd_total`'s spend and reservations in the Redis of `limits.shared`, so
    /// every process on `shared_key` (the shards of a job, on any machine) stays under it
    /// together (see [`crate::pipeline::shared_budget`]).
    #[serde(default)]
    pub shared: bool,
    /// The name of the shared budget; default: the limits' shared key plus a hash of the
    /// job's output file name (the same for every shard of the job).
    #[serde(default)]
    pub shared_key: Option<String>,
}

impl BudgetConfig {
    /// The cumulative cap in dollars: `max_usd_total`, or its older name `max_usd`.
    pub fn total_cap(&self) -> Option<f64> {
        self.max_usd_total.or(self.max_usd)
    }

    /// Whether any cap is set.
    pub fn any_cap(&self) -> bool {
        self.total_cap().is_some() || self.max_usd_per_run.is_some()
    }
}

/// `[output]`: where results go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// `.csv`, `.jsonl` or `.xlsx`; the journal and summary are written beside it.
    pub path: PathBuf,
    /// Overrides the format told by the extension.
    #[serde(default)]
    pub format: Option<OutputFormat>,
    /// Input columns to copy into the output (default: all).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Neutralise generated CSV cells that a spreadsheet would run as a formula.
    #[serde(default = "default_true")]
    pub formula_guard: bool,
}

fn default_true() -> bool {
    true
}

/// `[estimate]`: assumptions of the dry run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateConfig {
    /// Expected completion tokens per request (default: half of max_tokens).
    #[serde(default)]
    pub assume_output_tokens: Option<u32>,
    /// The share of answers the checks are expected to reject, for pricing regeneration
    /// (default 0.25).
    #[serde(default)]
    pub assume_reject_rate: Option<f64>,
}

/// `[plan]`: how long the job may take, and how the tiers' wall times are assumed (see
/// [`crate::tiers`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// How long the job may take from the start of the run: `6h`, `90m`, `2d`.
    #[serde(default)]
    pub deadline: Option<String>,
    /// `auto`: run at the cheapest tier expected to finish within the deadline (with its
    /// margin), batch or a live `service_tier`; unset: `mode` and `model.service_tier` decide.
    #[serde(default)]
    pub tier: Option<PlanTier>,
    /// The typical time a batch takes, in hours (default 6; the window is 24).
    #[serde(default)]
    pub batch_hours: Option<f64>,
    /// The share of the deadline kept in hand (default 0.1): a tier fits when its expected
    /// time is within the rest.
    #[serde(default)]
    pub margin: Option<f64>,
    /// How many times longer flex is assumed to take than standard (default 2).
    #[serde(default)]
    pub flex_slowdown: Option<f64>,
}

/// `plan.tier` / `--tier`: who picks the tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PlanTier {
    /// The planner: the cheapest tier expected to finish within `plan.deadline`.
    Auto,
}

impl PlanConfig {
    /// The deadline in seconds, if one is set (checked when the job loads).
    pub fn deadline_secs(&self) -> Option<f64> {
        self.deadline
            .as_deref()
            .and_then(|d| crate::time::parse_duration(d).ok())
    }
}

/// `[cache]`: the opt-in response cache, and the prompt-prefix analysis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Find the leading messages rows share and price the provider's prompt cache in the
    /// estimate (default true). Never changes what is sent.
    #[serde(default = "yes")]
    pub prefix: bool,
    /// A live run's most requests per minute under one `prompt_cache_key` (OpenAI shape):
    /// a group's requests are spread over as many keys as keep each under it (default 15,
    /// OpenAI's guidance; 0 sends no key).
    #[serde(default = "key_rpm")]
    pub key_rpm: u32,
    /// Batch mode, Anthropic shape: submit a one-request primer batch per cacheable prefix
    /// group, and the group's other rows (marked with `cache_control`) once it has ended
    /// (default true; nothing without `prefix`).
    #[serde(default = "yes")]
    pub batch_primer: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: None,
            prefix: true,
            key_rpm: key_rpm(),
            batch_primer: true,
        }
    }
}

/// Requests per minute under one `prompt_cache_key` by default (`cache.key_rpm`): OpenAI's
/// guidance (about 15 per prefix and key; more overflow to machines without the cache).
pub const DEFAULT_KEY_RPM: u32 = 15;

fn key_rpm() -> u32 {
    DEFAULT_KEY_RPM
}

fn yes() -> bool {
    true
}

/// `[batch]`: the size limits of the provider's Batch API, which input files are split
/// under. The defaults are OpenAI's; other OpenAI-format APIs (Gemini, Together, Groq, a
/// LiteLLM proxy, vLLM) set their own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Requests per batch input file (`--batch-max-requests` overrides it).
    #[serde(default = "default_batch_max_requests")]
    pub max_requests: u64,
    /// Bytes per batch input file.
    #[serde(default = "default_batch_max_bytes")]
    pub max_bytes: u64,
    /// The provider's enqueued-token limit for the model: each input file's requests
    /// (prompt + max_tokens each) stay under it, and a file is submitted only while the
    /// job's batches in progress leave room for it. Unset: no limit known.
    #[serde(default)]
    pub max_enqueued_tokens: Option<u64>,
}

/// Most requests one OpenAI batch input file may hold (the default of `batch.max_requests`).
pub const DEFAULT_BATCH_MAX_REQUESTS: u64 = 50_000;
/// Most bytes one OpenAI batch input file may hold, 200 MB (the default of
/// `batch.max_bytes`).
pub const DEFAULT_BATCH_MAX_BYTES: u64 = 200 * 1000 * 1000;

fn default_batch_max_requests() -> u64 {
    DEFAULT_BATCH_MAX_REQUESTS
}

fn default_batch_max_bytes() -> u64 {
    DEFAULT_BATCH_MAX_BYTES
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_requests: default_batch_max_requests(),
            max_bytes: default_batch_max_bytes(),
            max_enqueued_tokens: None,
        }
    }
}

/// Command-line overrides, applied over the job file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--set key.path=value` pairs; values are TOML (bare words are taken as strings).
    pub set: Vec<String>,
    /// Named flags, already as (dotted key, TOML value).
    pub named: Vec<(&'static str, toml::Value)>,
}

impl Overrides {
    /// Adds a named override when the flag was given.
    pub fn push<T: Into<toml::Value>>(&mut self, key: &'static str, value: Option<T>) {
        if let Some(v) = value {
            self.named.push((key, v.into()));
        }
    }

    /// Adds a path override, made absolute against the current directory.
    pub fn push_path(&mut self, key: &'static str, value: Option<&Path>) {
        if let Some(p) = value {
            let abs = std::env::current_dir()
                .map(|d| d.join(p))
                .unwrap_or_else(|_| p.to_path_buf());
            self.named
                .push((key, toml::Value::String(abs.to_string_lossy().into_owned())));
        }
    }
}

impl Job {
    /// Reads a job file and applies overrides.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Job, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Job::from_str(&text, path, overrides)
    }

    /// Parses job file text (`path` is used for messages and relative paths).
    pub fn from_str(text: &str, path: &Path, overrides: &Overrides) -> Result<Job, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        // First parse the file as written, so errors carry its line and column.
        let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        if overrides.set.is_empty() && overrides.named.is_empty() {
            let _: Job = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        }
        for (key, value) in &overrides.named {
            set_dotted(&mut table, key, value.clone()).map_err(|message| {
                ConfigError::Override {
                    arg: key.to_string(),
                    message,
                }
            })?;
        }
        for arg in &overrides.set {
            let (key, raw) = arg.split_once('=').ok_or_else(|| ConfigError::Override {
                arg: arg.clone(),
                message: "expected key=value, e.g. --set model.temperature=0.2".into(),
            })?;
            let value = parse_override_value(raw.trim());
            set_dotted(&mut table, key.trim(), value).map_err(|message| ConfigError::Override {
                arg: arg.clone(),
                message,
            })?;
        }
        let mut job: Job = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                parse_err(format!("after command-line overrides: {e}"))
            })?;
        job.file = path.to_path_buf();
        job.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        job.resolve_paths();
        job.validate()?;
        job.model.schema_json =
            crate::schema::load(job.model.schema.as_ref(), job.model.schema_file.as_deref())
                .map_err(|m| job.invalid(m))?;
        // Compiling the checks validates them (names, targets, ranges, regexes) before
        // anything runs; the run compiles its own copy.
        job.compile_checks()
            .map_err(|e| job.invalid(e.to_string()))?;
        let rejects =
            !job.checks.is_empty() || job.judge.as_ref().is_some_and(|j| j.min_score.is_some());
        if job.regenerate > 0 && !rejects {
            return Err(job.invalid(
                "regenerate: only rows rejected by [[checks]] or by the judge's min_score are \
                 regenerated, and the job has neither; add [[checks]] or [judge] min_score, or \
                 remove regenerate",
            ));
        }
        job.check_judge()?;
        job.check_outputs()?;
        if job.regenerate > 0 {
            let on_output = job.checks.iter().find(|c| {
                c.on.as_deref()
                    .is_some_and(|on| job.outputs.iter().any(|o| o.name == on))
            });
            if let Some(c) = on_output {
                return Err(job.invalid(format!(
                    "checks '{}': a check on an [[outputs]] text rejects the row, but \
                     regenerate re-sends only the row's answer; remove regenerate, or check \
                     the answer instead",
                    c.name
                )));
            }
        }
        Ok(job)
    }

    /// Refuses a `[judge]` that cannot work: no user template, a scale upside down, a
    /// `min_score` outside it.
    fn check_judge(&self) -> Result<(), ConfigError> {
        let Some(j) = &self.judge else {
            return Ok(());
        };
        if j.user.is_some() && j.template.is_some() {
            return Err(self.invalid("judge: set user or template, not both"));
        }
        if j.user.is_none() && j.template.is_none() {
            return Err(self.invalid(
                "judge: needs a user message (user = \"...\" or template = \"file\") that \
                 shows the answer with {{ answer }}",
            ));
        }
        if j.max_tokens == 0 {
            return Err(self.invalid("judge.max_tokens: must be at least 1"));
        }
        if j.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err(self.invalid("judge.model: must not be empty"));
        }
        let [low, high] = j.scale;
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(self.invalid(format!(
                "judge.scale: [{low}, {high}] must be two finite numbers, lowest first"
            )));
        }
        if let Some(min) = j.min_score {
            if !(low..=high).contains(&min) {
                return Err(self.invalid(format!(
                    "judge.min_score: {min} is outside judge.scale [{low}, {high}]"
                )));
            }
        }
        Ok(())
    }

    fn check_outputs(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for o in &self.outputs {
            let what = format!("outputs '{}'", o.name);
            let ok_name = !o.name.is_empty()
                && o.name.len() <= 64
                && o.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok_name {
                return Err(self.invalid(format!(
                    "outputs.name: {:?} must be 1 to 64 letters, digits or '_'",
                    o.name
                )));
            }
            let taken = o.name == "output"
                || o.name.starts_with("output_")
                || o.name.starts_with("check_")
                || o.name.starts_with("judge_")
                || crate::types::RESULT_COLUMNS.contains(&o.name.as_str());
            if taken || !seen.insert(o.name.clone()) {
                return Err(self.invalid(format!(
                    "{what}: the name is taken (by another output or a column promptmill \
                     writes); choose another"
                )));
            }
            if o.user.is_some() == o.template.is_some() {
                return Err(self.invalid(format!(
                    "{what}: set a user message, user = \"...\" or template = \"file\" (one \
                     of them)"
                )));
            }
            if o.system.is_some() && o.system_template.is_some() {
                return Err(
                    self.invalid(format!("{what}: set system or system_template, not both"))
                );
            }
            if o.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
                return Err(self.invalid(format!("{what}: model must not be empty")));
            }
            if o.max_tokens == Some(0) {
                return Err(self.invalid(format!("{what}: max_tokens must be at least 1")));
            }
            let b = crate::bounds::TEMPERATURE;
            if o.temperature.is_some_and(|t| !(b.min..=b.max).contains(&t)) {
                return Err(self.invalid(format!(
                    "{what}: temperature must be from {} to {}",
                    b.min, b.max
                )));
            }
        }
        if !self.outputs.is_empty() && self.mode == Mode::Batch {
            return Err(self.invalid(
                "outputs: [[outputs]] work in live mode only for now; run with --mode live",
            ));
        }
        Ok(())
    }

    /// The job an `[[outputs]]` entry's requests are planned as: this job with its prompt
    /// and model settings, answering in plain text (no schema, checks, judge or
    /// regeneration).
    pub fn output_job(&self, o: &OutputPrompt) -> Job {
        let mut job = self.clone();
        job.prompt = PromptConfig {
            system: o.system.clone(),
            system_template: o.system_template.clone(),
            user: o.user.clone(),
            template: o.template.clone(),
            messages: Vec::new(),
        };
        let m = &mut job.model;
        if let Some(name) = &o.model {
            m.name = name.clone();
        }
        if o.temperature.is_some() {
            m.temperature = o.temperature;
        }
        if let Some(t) = o.max_tokens {
            m.max_tokens = t;
        }
        m.schema = None;
        m.schema_file = None;
        m.schema_json = None;
        m.name_column = None;
        m.temperature_column = None;
        m.max_tokens_column = None;
        job.checks = Vec::new();
        job.regenerate = 0;
        job.judge = None;
        job.outputs = Vec::new();
        job
    }

    /// The job the judge's requests are planned as: this job with the judge's prompt and
    /// model, asking for a `{score, reason}` object (None without `[judge]`).
    pub fn judge_job(&self) -> Option<Job> {
        let j = self.judge.as_ref()?;
        let mut job = self.clone();
        job.prompt = PromptConfig {
            system: j.system.clone(),
            system_template: j.system_template.clone(),
            user: j.user.clone(),
            template: j.template.clone(),
            messages: Vec::new(),
        };
        let m = &self.model;
        job.model = ModelConfig {
            name: j.model.clone().unwrap_or_else(|| m.name.clone()),
            max_tokens: j.max_tokens,
            temperature: Some(j.temperature.unwrap_or(0.0)),
            top_p: None,
            stop: Vec::new(),
            seed: m.seed,
            presence_penalty: None,
            frequency_penalty: None,
            n: None,
            stream: false,
            schema: None,
            schema_file: None,
            schema_mode: m.schema_mode,
            max_tokens_field: m.max_tokens_field.clone(),
            extra: None,
            // The judge is asked at the standard tier.
            service_tier: None,
            flex_fallback_after_secs: None,
            schema_json: Some(j.schema()),
            name_column: None,
            temperature_column: None,
            max_tokens_column: None,
        };
        job.checks = Vec::new();
        job.regenerate = 0;
        job.judge = None;
        job.outputs = Vec::new();
        Some(job)
    }

    /// The job's `[[checks]]`, compiled against its structured output's fields.
    pub fn compile_checks(&self) -> Result<Checks, crate::checks::CheckConfigError> {
        // Checks read the schema's fields and the `[[outputs]]` texts by name.
        let mut fields = self
            .model
            .schema_json
            .as_ref()
            .map(crate::schema::field_names)
            .unwrap_or_default();
        fields.extend(self.outputs.iter().map(|o| o.name.clone()));
        Checks::new(&self.checks, (!fields.is_empty()).then_some(&fields[..]))
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn resolve_paths(&mut self) {
        self.input.path = self.resolve(&self.input.path);
        self.output.path = self.resolve(&self.output.path);
        let r = |s: &Job, p: &mut Option<PathBuf>| {
            if let Some(x) = p.as_mut() {
                *x = s.resolve(x);
            }
        };
        let mut t = self.prompt.template.take();
        r(self, &mut t);
        self.prompt.template = t;
        let mut t = self.prompt.system_template.take();
        r(self, &mut t);
        self.prompt.system_template = t;
        let mut msgs = std::mem::take(&mut self.prompt.messages);
        for m in &mut msgs {
            r(self, &mut m.template);
        }
        self.prompt.messages = msgs;
        let mut t = self.model.schema_file.take();
        r(self, &mut t);
        self.model.schema_file = t;
        let mut t = self.api.api_key_file.take();
        r(self, &mut t);
        self.api.api_key_file = t;
        let mut t = self.cache.dir.take();
        r(self, &mut t);
        self.cache.dir = t;
        let mut judge = self.judge.take();
        if let Some(j) = judge.as_mut() {
            r(self, &mut j.template);
            r(self, &mut j.system_template);
        }
        self.judge = judge;
    }

    fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.file.clone(),
            message: message.into(),
        }
    }

    /// Every numeric field against its range in [`crate::bounds`] (the flags that set them
    /// are checked against the same ranges when parsed).
    fn check_numbers(&self) -> Result<(), ConfigError> {
        use crate::bounds::*;
        let m = &self.model;
        let fields = [
            (&TEMPERATURE, m.temperature),
            (&TOP_P, m.top_p),
            (&PRESENCE_PENALTY, m.presence_penalty),
            (&FREQUENCY_PENALTY, m.frequency_penalty),
            (&TIMEOUT_SECS, self.api.timeout_secs),
            (&CONNECT_TIMEOUT_SECS, self.api.connect_timeout_secs),
            (&MAX_USD, self.budget.max_usd),
            (&MAX_USD_TOTAL, self.budget.max_usd_total),
            (&MAX_USD_PER_RUN, self.budget.max_usd_per_run),
            (&MAX_IN_FLIGHT, Some(f64::from(self.limits.max_in_flight))),
            (&MAX_RETRIES, Some(f64::from(self.limits.max_retries))),
            (&KEY_RPM, Some(f64::from(self.cache.key_rpm))),
            (&REGENERATE, Some(f64::from(self.regenerate))),
            (&REJECT_RATE, self.estimate.assume_reject_rate),
            (
                &JUDGE_TEMPERATURE,
                self.judge.as_ref().and_then(|j| j.temperature),
            ),
            (&HEADER_ROW, self.input.header_row.map(f64::from)),
            (&FLEX_FALLBACK_AFTER_SECS, m.flex_fallback_after_secs),
            (&BATCH_MAX_REQUESTS, Some(self.batch.max_requests as f64)),
            (&BATCH_MAX_BYTES, Some(self.batch.max_bytes as f64)),
            (
                &BATCH_MAX_ENQUEUED_TOKENS,
                self.batch.max_enqueued_tokens.map(|t| t as f64),
            ),
            (&BATCH_HOURS, self.plan.batch_hours),
            (&DEADLINE_MARGIN, self.plan.margin),
            (&FLEX_SLOWDOWN, self.plan.flex_slowdown),
        ];
        for (bound, value) in fields {
            if let Some(v) = value {
                bound.check_field(v).map_err(|m| self.invalid(m))?;
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.api.api_key.is_some() {
            return Err(self.invalid(format!(
                "api.api_key: API keys are never read from job files (they end up in version \
                 control and logs); remove it and set the environment variable {} instead, or \
                 point api.api_key_file at a file that holds the key",
                self.api_key_env()
            )));
        }
        if self.model.name.trim().is_empty() {
            return Err(self.invalid("model.name: must not be empty"));
        }
        if self.model.max_tokens == 0 {
            return Err(self.invalid("model.max_tokens: must be at least 1"));
        }
        self.check_numbers()?;
        if let Some(d) = &self.plan.deadline {
            let secs = crate::time::parse_duration(d)
                .map_err(|why| self.invalid(format!("plan.deadline (--deadline): {why}")))?;
            crate::bounds::DEADLINE_SECS
                .check_field(secs)
                .map_err(|m| self.invalid(m))?;
        }
        if self.model.flex_fallback_after_secs.is_some()
            && self.model.service_tier != Some(ServiceTier::Flex)
        {
            return Err(self.invalid(
                "model.flex_fallback_after_secs: only with model.service_tier = \"flex\" \
                 (it says when a flex row falls back to the standard tier)",
            ));
        }
        if self.model.service_tier.is_some() && self.api.provider == ProviderKind::Anthropic {
            return Err(self.invalid(
                "model.service_tier: flex and priority processing are OpenAI's; remove it for \
                 api.provider = \"anthropic\"",
            ));
        }
        if let (Some(a), Some(b)) = (self.budget.max_usd, self.budget.max_usd_total) {
            if a != b {
                return Err(self.invalid(format!(
                    "budget: max_usd ({a}) and max_usd_total ({b}) are two names for the same \
                     cap; keep one"
                )));
            }
        }
        for (key, column) in self.model.row_columns() {
            if column.trim().is_empty() {
                return Err(self.invalid(format!("{key}: must name an input column")));
            }
            if self.mode == Mode::Batch {
                return Err(self.invalid(format!(
                    "{key}: per-row model settings work in live mode only (a Batch API input \
                     file takes one model); remove it or run with --mode live"
                )));
            }
        }
        if self.model.n == Some(0) {
            return Err(self.invalid("model.n: must be at least 1"));
        }
        if self.model.schema.is_some() && self.model.schema_file.is_some() {
            return Err(self.invalid("model: give either schema or schema_file, not both"));
        }
        if let Some(url) = &self.limits.shared {
            match url::Url::parse(url) {
                Ok(u) if u.scheme() == "redis" && u.password().is_some() => {
                    return Err(self.invalid(
                        "limits.shared: a password does not belong in the job file; put the \
                         URL with its password in the environment variable \
                         PROMPTMILL_LIMITS_SHARED instead",
                    ));
                }
                Ok(u) if u.scheme() == "redis" && u.host_str().is_some() => {}
                _ => {
                    return Err(self.invalid(format!(
                        "limits.shared: expected a redis://host:port/db URL, got {}",
                        crate::limit::shared::redact(url)
                    )));
                }
            }
        }
        if self.limits.shared_key.as_deref().is_some_and(str::is_empty) {
            return Err(self.invalid("limits.shared_key: must not be empty"));
        }
        if self.budget.shared_key.as_deref().is_some_and(str::is_empty) {
            return Err(self.invalid("budget.shared_key: must not be empty"));
        }
        if self.budget.shared && self.budget.total_cap().is_none() {
            return Err(self.invalid(
                "budget.shared: shares budget.max_usd_total (or --max-usd) between processes; \
                 set that cap too",
            ));
        }
        if self.budget.shared && self.mode == Mode::Batch {
            return Err(self.invalid(
                "budget.shared: works in live mode only; remove it or run with --mode live",
            ));
        }
        if self.limits.requests_per_minute == Some(0) {
            return Err(self.invalid("limits.requests_per_minute: must be at least 1"));
        }
        if self.limits.tokens_per_minute == Some(0) {
            return Err(self.invalid("limits.tokens_per_minute: must be at least 1"));
        }

        match self.output_format() {
            Some(_) => {}
            None => {
                return Err(self.invalid(format!(
                    "output.path: {} must end in .csv, .jsonl or .xlsx (or set output.format)",
                    self.output.path.display()
                )))
            }
        }
        if self.input.format.is_none() && Format::from_path(&self.input.path).is_none() {
            return Err(self.invalid(format!(
                "input.path: cannot tell the format of {} from its extension; set input.format \
                 to \"csv\", \"tsv\", \"jsonl\", \"xlsx\", \"xls\" or \"ods\"",
                self.input.path.display()
            )));
        }
        let workbook = self.input_format().is_some_and(Format::is_workbook);
        for (key, set) in [
            ("input.sheet", self.input.sheet.is_some()),
            ("input.header_row", self.input.header_row.is_some()),
        ] {
            if set && !workbook {
                return Err(self.invalid(format!(
                    "{key}: only a workbook input (.xlsx, .xls, .ods) has sheets; {} is read as {}",
                    self.input.path.display(),
                    self.input_format().map_or("?".into(), |f| f.to_string())
                )));
            }
        }
        let p = &self.prompt;
        if p.system.is_some() && p.system_template.is_some() {
            return Err(self.invalid("prompt: give either system or system_template, not both"));
        }
        if p.user.is_some() && p.template.is_some() {
            return Err(self.invalid("prompt: give either user or template, not both"));
        }
        for (i, m) in p.messages.iter().enumerate() {
            if m.content.is_some() == m.template.is_some() {
                return Err(self.invalid(format!(
                    "prompt.messages[{i}]: give exactly one of content or template"
                )));
            }
        }
        Ok(())
    }

    /// The job's display name.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "job".into())
        })
    }

    /// The input format, from `input.format` or the extension.
    pub fn input_format(&self) -> Option<Format> {
        self.input
            .format
            .or_else(|| Format::from_path(&self.input.path))
    }

    /// How the input is read: its format, id column and (workbooks) sheet and header row.
    pub fn source_options(&self) -> SourceOptions {
        SourceOptions {
            format: self.input_format(),
            id_column: self.input.id.clone(),
            sheet: self.input.sheet.clone(),
            header_row: self.input.header_row,
        }
    }

    /// The output format, from `output.format` or the extension.
    pub fn output_format(&self) -> Option<OutputFormat> {
        if let Some(format) = self.output.format {
            return Some(format);
        }
        let ext = self.output.path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(OutputFormat::Csv),
            "jsonl" | "ndjson" => Some(OutputFormat::Jsonl),
            "xlsx" => Some(OutputFormat::Xlsx),
            _ => None,
        }
    }

    /// The environment variable the API key is read from.
    pub fn api_key_env(&self) -> String {
        self.api.api_key_env.clone().unwrap_or_else(|| {
            match self.api.provider {
                ProviderKind::Openai => "OPENAI_API_KEY",
                ProviderKind::Azure => "AZURE_OPENAI_API_KEY",
                ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
            }
            .to_string()
        })
    }

    /// The prompt as the render stage wants it.
    pub fn prompt_spec(&self) -> PromptSpec {
        let src = |inline: &Option<String>, file: &Option<PathBuf>| match (inline, file) {
            (Some(s), _) => Some(TemplateSource::Inline(s.clone())),
            (None, Some(f)) => Some(TemplateSource::File(f.clone())),
            (None, None) => None,
        };
        PromptSpec {
            system: src(&self.prompt.system, &self.prompt.system_template),
            user: src(&self.prompt.user, &self.prompt.template),
            messages: self
                .prompt
                .messages
                .iter()
                .filter_map(|m| {
                    src(&m.content, &m.template).map(|source| MessageSpec {
                        role: m.role,
                        source,
                    })
                })
                .collect(),
            section: None,
        }
    }

    /// Where the journal of finished rows lives: beside the output.
    pub fn journal_path(&self) -> PathBuf {
        sibling(&self.output.path, "journal.jsonl")
    }

    /// Where the run summary JSON is written: beside the output.
    pub fn summary_path(&self) -> PathBuf {
        sibling(&self.output.path, "summary.json")
    }

    /// Where `promptmill report` writes the review page by default: beside the output.
    pub fn report_path(&self) -> PathBuf {
        sibling(&self.output.path, "report.html")
    }

    /// The lock file that keeps a second run of this job out while one runs: beside the
    /// output.
    pub fn lock_path(&self) -> PathBuf {
        sibling(&self.output.path, "lock")
    }

    /// Where Batch API state (uploaded files, batch ids) lives: beside the output.
    pub fn batch_state_path(&self) -> PathBuf {
        sibling(&self.output.path, "batches.json")
    }

    /// This job as shard `shard` of its rows: only the rows that hash into it, and an output
    /// of its own (`copy.csv` → `copy.shard-2-of-4.csv`) from which its journal, summary,
    /// lock and batch state are named (see [`crate::shard`]).
    pub fn into_shard(mut self, shard: crate::shard::Shard) -> Job {
        let ext = match self.output_format() {
            Some(OutputFormat::Csv) => "csv",
            Some(OutputFormat::Jsonl) => "jsonl",
            Some(OutputFormat::Xlsx) => "xlsx",
            None => "out",
        };
        self.output.path = shard.output(&self.output.path, ext);
        self.shard = Some(shard);
        self
    }

    /// Whether the row whose identity is `id` is one this job sends (every row, or its
    /// shard's).
    pub fn holds(&self, id: &str) -> bool {
        self.shard.is_none_or(|s| s.holds(id))
    }
}

/// `out/copy.csv` + `journal.jsonl` → `out/copy.journal.jsonl`.
fn sibling(output: &Path, suffix: &str) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    output.with_file_name(format!("{stem}.{suffix}"))
}

/// Output file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Csv,
    #[serde(alias = "ndjson")]
    Jsonl,
    /// An Excel workbook of one sheet.
    Xlsx,
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputFormat::Csv => "csv",
            OutputFormat::Jsonl => "jsonl",
            OutputFormat::Xlsx => "xlsx",
        })
    }
}

/// A `--set` value: TOML if it parses as a TOML value, else a plain string.
fn parse_override_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "'{key}' is not a dotted key like model.temperature"
        ));
    }
    let (last, parents) = parts.split_last().ok_or("empty key")?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("'{p}' is not a table")),
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[input]
path = "rows.csv"
[prompt]
user = "Hello {{ name }}"
[model]
name = "gpt-4o-mini"
[output]
path = "out/result.csv"
"#;

    fn load(text: &str, ov: &Overrides) -> Result<Job, ConfigError> {
        Job::from_str(text, Path::new("jobs/demo.toml"), ov)
    }

    #[test]
    fn minimal_job_gets_defaults_and_paths_relative_to_the_job_file() {
        let job = load(MINIMAL, &Overrides::default()).unwrap();
        assert_eq!(job.input.path, Path::new("jobs/rows.csv"));
        assert_eq!(job.output.path, Path::new("jobs/out/result.csv"));
        assert_eq!(
            job.journal_path(),
            Path::new("jobs/out/result.journal.jsonl")
        );
        assert_eq!(
            job.summary_path(),
            Path::new("jobs/out/result.summary.json")
        );
        assert_eq!(job.model.max_tokens, 1024);
        assert_eq!(job.limits.max_in_flight, 64);
        assert_eq!(job.display_name(), "demo");
        assert_eq!(job.api_key_env(), "OPENAI_API_KEY");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let text = MINIMAL.replace("name = \"gpt-4o-mini\"", "name = \"x\"\ntemprature = 0.3");
        let err = load(&text, &Overrides::default()).unwrap_err().to_string();
        assert!(err.starts_with("jobs/demo.toml: "), "{err}");
        assert!(err.contains("unknown field `temprature`"), "{err}");
        assert!(err.contains("line 8"), "{err}");
    }

    #[test]
    fn a_key_in_the_job_file_is_refused_and_not_echoed() {
        let text = format!("{MINIMAL}\n[api]\napi_key = \"sk-secret-123\"\n");
        let err = load(&text, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("OPENAI_API_KEY"), "{err}");
        assert!(!err.contains("sk-secret-123"), "{err}");
    }

    #[test]
    fn overrides_win_over_the_file() {
        let mut ov = Overrides::default();
        ov.push("model.name", Some("gpt-4.1"));
        ov.set.push("model.temperature=0.25".into());
        ov.set.push("limits.requests_per_minute=120".into());
        let job = load(MINIMAL, &ov).unwrap();
        assert_eq!(job.model.name, "gpt-4.1");
        assert_eq!(job.model.temperature, Some(0.25));
        assert_eq!(job.limits.requests_per_minute, Some(120));
    }

    #[test]
    fn bad_values_are_named() {
        let mut ov = Overrides::default();
        ov.set.push("model.temperature=7".into());
        let err = load(MINIMAL, &ov).unwrap_err().to_string();
        assert!(
            err.contains("model.temperature (--temperature): 7 is outside the allowed range"),
            "{err}"
        );
        let mut ov = Overrides::default();
        ov.set.push("api.timeout_secs=inf".into());
        let err = load(MINIMAL, &ov).unwrap_err().to_string();
        assert!(
            err.contains("api.timeout_secs (--timeout): inf is outside"),
            "{err}"
        );
        let mut ov = Overrides::default();
        ov.set.push("output.path=\"x.ods\"".into());
        let err = load(MINIMAL, &ov).unwrap_err().to_string();
        assert!(err.contains("must end in .csv, .jsonl or .xlsx"), "{err}");
        let mut ov = Overrides::default();
        ov.set.push("nonsense".into());
        assert!(load(MINIMAL, &ov)
            .unwrap_err()
            .to_string()
            .contains("key=value"));
    }

    #[test]
    fn checks_parse_and_bad_ones_name_the_job_file_and_the_entry() {
        assert!(load(MINIMAL, &Overrides::default())
            .unwrap()
            .checks
            .is_empty());
        let text = format!(
            "{MINIMAL}\n[[checks]]\nname = \"len\"\nmax_chars = 90\n\
             [[checks]]\nname = \"no_urls\"\nnot_regex = \"https?://(\"\n"
        );
        let err = load(&text, &Overrides::default()).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "jobs/demo.toml: checks[1] (no_urls): not_regex: not a valid regular expression"
            ),
            "{err}"
        );
        let text = format!("{MINIMAL}\n[[checks]]\nname = \"len\"\nmax_char = 90\n");
        let err = load(&text, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("unknown field `max_char`"), "{err}");
        assert!(err.contains("line 13"), "{err}");
        let text = format!("{MINIMAL}\n[[checks]]\nname = \"len\"\nmax_chars = 90\n");
        let job = load(&text, &Overrides::default()).unwrap();
        assert_eq!(job.checks.len(), 1);
        assert_eq!(job.checks[0].max_chars, Some(90));
    }

    fn schema_job(model_extra: &str) -> Result<Job, ConfigError> {
        let text = format!(
            "[input]\npath = \"rows.csv\"\n[prompt]\nuser = \"hi\"\n[model]\nname = \"m\"\n{model_extra}\n[output]\npath = \"o.csv\"\n"
        );
        Job::from_str(
            &text,
            std::path::Path::new("jobs/j.toml"),
            &Default::default(),
        )
    }

    #[test]
    fn schemas_load_inline_or_from_a_file_with_errors_that_name_them() {
        let j = schema_job(
            "schema = { type = \"object\", properties = { a = { type = \"string\" } } }",
        )
        .unwrap();
        assert_eq!(
            crate::schema::field_names(j.model.schema_json.as_ref().unwrap()),
            ["a"]
        );
        let e = schema_job("schema = { type = \"string\" }")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.schema") && e.contains("jobs/j.toml"),
            "{e}"
        );
        let e = schema_job("schema_file = \"nope.schema.json\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("jobs/nope.schema.json"), "{e}");
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let j = schema_job(&format!(
            "schema_file = \"{root}/templates/product_copy.schema.json\""
        ))
        .unwrap();
        assert_eq!(
            crate::schema::field_names(j.model.schema_json.as_ref().unwrap()),
            ["headline", "body", "call_to_action"]
        );
        assert!(schema_job("").unwrap().model.schema_json.is_none());
    }
}
