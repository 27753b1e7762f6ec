//! Flags shared by the commands that take a job file.

use std::path::PathBuf;

use clap::Args;

use promptmill::config::{Job, Overrides, ProviderKind};

/// Command-line overrides of job-file settings. Every job-file key also works as
/// `--set section.key=value`.
#[derive(Debug, Clone, Args, Default)]
pub struct JobArgs {
    /// The job file (TOML).
    pub job: PathBuf,
    /// Input file (overrides input.path).
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Output file, .csv or .jsonl (overrides output.path).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Model name (overrides model.name).
    #[arg(long)]
    pub model: Option<String>,
    /// Max tokens per response (overrides model.max_tokens).
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2 (overrides model.temperature).
    #[arg(long, value_parser = promptmill::bounds::temperature)]
    pub temperature: Option<f64>,
    /// OpenAI's processing tier, sent as `service_tier` and priced (overrides
    /// model.service_tier).
    #[arg(long, value_enum)]
    pub service_tier: Option<promptmill::config::ServiceTier>,
    /// With --service-tier flex: send a row at the standard tier after this many seconds
    /// of "resource unavailable" answers (overrides model.flex_fallback_after_secs).
    #[arg(long, value_name = "SECS", value_parser = promptmill::bounds::flex_fallback_after_secs)]
    pub flex_fallback_after: Option<f64>,
    /// Requests per minute (overrides limits.requests_per_minute).
    #[arg(long)]
    pub rpm: Option<u32>,
    /// Tokens per minute (overrides limits.tokens_per_minute).
    #[arg(long)]
    pub tpm: Option<u32>,
    /// Requests in flight at once (overrides limits.max_in_flight).
    #[arg(long)]
    pub max_in_flight: Option<u32>,
    /// New answers a row rejected by the checks may get, each sent with the failed
    /// checks' reasons as feedback; 0 to 10 (overrides regenerate).
    #[arg(long, value_name = "N")]
    pub regenerate: Option<u32>,
    /// Retries per row (overrides limits.max_retries).
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Stop when this many attempts in a row fail (connection, timeout, 5xx) before any
    /// succeeds; 0 = never (overrides limits.stop_after_errors; default 8).
    #[arg(long, value_name = "N")]
    pub stop_after_errors: Option<u32>,
    /// Stop when the server has answered only 429s for this many seconds; 0 = never
    /// (overrides limits.stop_after_refused_secs; default 120).
    #[arg(long, value_name = "SECS")]
    pub stop_after_refused_secs: Option<u32>,
    /// Hard cap in USD on what every run of the job spends, mock runs apart (overrides
    /// budget.max_usd_total and budget.max_usd).
    #[arg(long, value_name = "USD", value_parser = promptmill::bounds::max_usd)]
    pub max_usd: Option<f64>,
    /// Hard cap in USD on what this run spends (overrides budget.max_usd_per_run).
    #[arg(long, value_name = "USD", value_parser = promptmill::bounds::max_usd_per_run)]
    pub max_usd_per_run: Option<f64>,
    /// API base URL (overrides api.base_url).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// API provider (overrides api.provider).
    #[arg(long, value_enum)]
    pub provider: Option<ProviderKind>,
    /// Expected completion tokens per request, for estimates (overrides
    /// estimate.assume_output_tokens).
    #[arg(long, value_name = "N")]
    pub assume_output_tokens: Option<u32>,
    /// Share of answers the checks are expected to reject, 0 to 1, for pricing regeneration
    /// in the estimate (overrides estimate.assume_reject_rate; default 0.25).
    #[arg(long, value_name = "RATE")]
    pub assume_reject_rate: Option<f64>,
    /// Seconds one request may take in total, including a long generation (overrides
    /// api.timeout_secs; default 600; 0.001 to 86400).
    #[arg(long, value_name = "SECS", value_parser = promptmill::bounds::timeout_secs)]
    pub timeout: Option<f64>,
    /// Seconds to wait for a connection (overrides api.connect_timeout_secs; default 10;
    /// 0.001 to 3600).
    #[arg(long, value_name = "SECS", value_parser = promptmill::bounds::connect_timeout_secs)]
    pub connect_timeout: Option<f64>,
    /// Record unreadable or unrenderable rows as failed rows instead of refusing to start
    /// (sets input.skip_bad_rows).
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Write generated CSV cells as they are, even when a spreadsheet would run them as a
    /// formula (sets output.formula_guard = false).
    #[arg(long)]
    pub no_formula_guard: bool,
    /// How long the job may take, e.g. 6h, 90m, 2d (overrides plan.deadline): the estimate
    /// says which tiers fit it; with --tier auto the run picks the cheapest that does.
    #[arg(long, value_name = "DURATION", value_parser = promptmill::bounds::deadline)]
    pub deadline: Option<String>,
    /// `auto`: run at the cheapest tier (batch, or live at a service_tier) expected to finish
    /// within --deadline, instead of --mode and --service-tier (overrides plan.tier).
    #[arg(long, value_enum)]
    pub tier: Option<promptmill::config::PlanTier>,
    /// How rows are sent: `live` requests, or the provider's `batch` API (overrides mode).
    #[arg(long, value_enum)]
    pub mode: Option<promptmill::config::Mode>,
    /// Any job-file key: `--set model.top_p=0.9` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// A price table in LiteLLM's model_prices_and_context_window.json format, over the
    /// built-in or cached one.
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
    /// Response cache folder (overrides cache.dir): identical requests are answered from it
    /// at no cost; only successful responses are stored.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

impl JobArgs {
    /// The overrides these flags ask for.
    pub fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        o.push_path("input.path", self.input.as_deref());
        o.push_path("output.path", self.output.as_deref());
        o.push("model.name", self.model.clone());
        o.push("model.max_tokens", self.max_tokens.map(i64::from));
        o.push("model.temperature", self.temperature);
        o.push(
            "model.service_tier",
            self.service_tier.map(|t| t.name().to_string()),
        );
        o.push("model.flex_fallback_after_secs", self.flex_fallback_after);
        o.push("limits.requests_per_minute", self.rpm.map(i64::from));
        o.push("limits.tokens_per_minute", self.tpm.map(i64::from));
        o.push("limits.max_in_flight", self.max_in_flight.map(i64::from));
        o.push("limits.max_retries", self.max_retries.map(i64::from));
        o.push("regenerate", self.regenerate.map(i64::from));
        o.push(
            "limits.stop_after_errors",
            self.stop_after_errors.map(i64::from),
        );
        o.push(
            "limits.stop_after_refused_secs",
            self.stop_after_refused_secs.map(i64::from),
        );
        // The flag overrides the cumulative cap under either of its names.
        o.push("budget.max_usd", self.max_usd);
        o.push("budget.max_usd_total", self.max_usd);
        o.push("budget.max_usd_per_run", self.max_usd_per_run);
        o.push("api.base_url", self.base_url.clone());
        o.push("api.timeout_secs", self.timeout);
        o.push("api.connect_timeout_secs", self.connect_timeout);
        o.push(
            "api.provider",
            self.provider.map(|p| {
                match p {
                    ProviderKind::Openai => "openai",
                    ProviderKind::Azure => "azure",
                    ProviderKind::Anthropic => "anthropic",
                }
                .to_string()
            }),
        );
        o.push(
            "estimate.assume_output_tokens",
            self.assume_output_tokens.map(i64::from),
        );
        o.push("estimate.assume_reject_rate", self.assume_reject_rate);
        o.push_path("cache.dir", self.cache.as_deref());
        o.push("input.skip_bad_rows", self.skip_bad_rows.then_some(true));
        o.push(
            "output.formula_guard",
            self.no_formula_guard.then_some(false),
        );
        o.push(
            "mode",
            self.mode.map(|m| {
                match m {
                    promptmill::config::Mode::Live => "live",
                    promptmill::config::Mode::Batch => "batch",
                }
                .to_string()
            }),
        );
        o.push("plan.deadline", self.deadline.clone());
        o.push("plan.tier", self.tier.map(|_| "auto".to_string()));
        o.set = self.set.clone();
        o
    }

    /// Loads the job with these overrides.
    pub fn load(&self) -> anyhow::Result<Job> {
        for (flag, path) in [("--input", &self.input), ("--output", &self.output)] {
            if path.as_deref().is_some_and(|p| p.as_os_str() == "-") {
                anyhow::bail!("{flag} - (stdin/stdout) works with `promptmill run` only");
            }
        }
        Ok(Job::load(&self.job, &self.overrides())?)
    }
}

/// `job` as the shard `--shard` asks for, if any (see [`promptmill::shard`]). Shards run
/// live (`sending`): batch mode is refused.
pub fn sharded(
    job: Job,
    shard: Option<promptmill::shard::Shard>,
    sending: bool,
) -> anyhow::Result<Job> {
    let Some(shard) = shard else {
        return Ok(job);
    };
    if sending && job.mode == promptmill::config::Mode::Batch {
        anyhow::bail!(
            "--shard {shard} splits a live run across processes; batch mode (--mode batch or \
             mode = \"batch\") already hands the whole job to the provider: drop one of them"
        );
    }
    Ok(job.into_shard(shard))
}
