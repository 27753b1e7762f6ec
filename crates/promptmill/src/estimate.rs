//! The estimate: one streaming pass over every row that renders it, counts its prompt tokens
//! and checks it, then prices the job and works out how long its rate limits make it take.
//!
//! The run's validation pass and the dry run (`run --dry-run`, `estimate`) are this same
//! code, so what is estimated is exactly what a run would send.
//!
//! Tokenizing is the slow part (BPE over every prompt), so rows are read on one thread, in
//! chunks, and planned on worker threads (`std::thread::scope`, bounded channels: memory
//! stays flat). Chunks carry their sequence number, so the *first* bad row in input order is
//! the one reported, whichever worker found a bad row first.

use std::path::Path;

use serde::Serialize;

use crate::cache::Cache;
use crate::config::Job;
use crate::cost::{CacheTokens, ModelPrice, PriceTable, Tier};
use crate::judge::Judge;
use crate::key_table::{Digest16, KeyTable};
use crate::pipeline::rows::{first_pass, PassOptions, RowLoop, Spool, Step, Stepped};
use crate::plan::Planner;
use crate::resume::{Decision, Resume, ResumeCounts};
use crate::tiers::{duration, Assumptions, Choice, TierEstimate};
use crate::types::{usd, Message, Usage};

/// Rows over the context window listed by name (the rest are only counted).
const LIST_OVER_CONTEXT: usize = 5;

/// What the estimate needs besides the job.
#[derive(Clone, Copy)]
pub struct EstimateOptions<'a> {
    /// The model's prices; `None` = unknown price (costs are reported as unknown, never 0).
    pub price: Option<&'a ModelPrice>,
    /// Rendered prompts to keep for display (`--show N`).
    pub show: usize,
    /// Worker threads for rendering and tokenizing; 0 = one per core.
    pub workers: usize,
    /// An earlier run's journal, to count what a resumed run would skip; `None` = no journal.
    pub resume: Option<&'a Resume>,
    /// Answers already in the response cache: those rows are not priced (nothing is sent).
    pub cache: Option<&'a Cache>,
    /// The tier the rows' worst cases are priced at for the send pass (live or batch).
    pub tier: Tier,
    /// Keep every row and its Step in a spool in the folder of this path, for the send pass
    /// and the output to read instead of the input; `None` = no spool (a dry run).
    pub spool_beside: Option<&'a Path>,
    /// The job's judge, rendered for every row and priced (live runs only).
    pub judge: Option<&'a Judge>,
    /// Where rows' own models (`model.name_column`) and outputs' models are priced; `None`
    /// = unknown prices.
    pub prices: Option<&'a PriceTable>,
    /// The job's `[[outputs]]`, planned and priced for every row.
    pub outputs: &'a [crate::outputs::Extra],
}

/// Everything the dry run reports. Field names are the `--json` format (see
/// docs/estimate.md); they are stable.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimate {
    /// The model priced and counted for.
    pub model: String,
    /// The price data: its origin, source and date (filled in by the dry run).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub prices: String,
    /// Warnings about the price data's age or the model's deprecation date.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub price_warnings: Vec<String>,
    /// Data rows in the input, bad ones included.
    pub rows: u64,
    /// Rows that cannot be sent (skipped because `input.skip_bad_rows` is on).
    pub bad_rows: u64,
    /// Rows that would be sent now: not bad, not done already (or failed and kept) in an
    /// earlier run's journal, not answered from the response cache. Everything below is
    /// for these.
    pub requests: u64,
    /// Rows an earlier run finished with the same request: not sent again.
    pub done: u64,
    /// Rows an earlier run failed with the same request, kept as failed (not sent).
    pub kept_failed: u64,
    /// Rows whose request changed since an earlier run (sent again; among `requests`).
    pub changed: u64,
    /// Rows answered from the response cache (not sent).
    pub cached: u64,
    /// Rows asking the very same thing as an earlier row (same request hash): the run
    /// sends it once and the row gets a copy of the answer. Not among `requests`.
    pub shared: u64,
    /// Prompt tokens of all requests.
    pub prompt_tokens: TokenCount,
    /// Completion tokens assumed.
    pub completion_tokens: CompletionTokens,
    /// Cost at the provider's live (synchronous) prices; `None` = unknown price.
    pub cost: Option<CostRange>,
    /// Cost at Batch API prices; `None` = unknown price.
    pub batch_cost: Option<CostRange>,
    /// The shortest time the job's rate limits allow.
    pub min_wall_time: WallTime,
    /// Every tier the model is billed at: expected cost and expected wall time (see
    /// [`crate::tiers`]); empty when the model has no price.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierEstimate>,
    /// The deadline (`plan.deadline`, `--deadline`) in seconds, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<f64>,
    /// With `plan.tier = "auto"`: the tier the planner picks, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Choice>,
    /// The row with the most prompt tokens.
    pub longest_prompt: Option<RowTokens>,
    /// The model's context window for the prompt (LiteLLM `max_input_tokens`), if known.
    pub context_window: Option<u64>,
    /// Rows whose prompt is longer than the context window.
    pub over_context_window: u64,
    /// The first few of those rows, in input order.
    pub over_context_rows: Vec<RowTokens>,
    /// The job's budget cap (`budget.max_usd`), if any.
    pub budget_usd: Option<f64>,
    /// The job's checks (`[[checks]]`), by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// What regenerating the rows the checks reject may add (with `regenerate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regeneration: Option<Regeneration>,
    /// What the judge may add (with `[judge]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeEstimate>,
    /// The requests per model, when rows take their model from a column
    /// (`model.name_column`) or the job has `[[outputs]]`; empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelCost>,
    /// `[[outputs]]` requests that would be sent (besides `requests`, the rows' answers);
    /// their tokens and cost are in the totals.
    #[serde(skip_serializing_if = "is_zero")]
    pub output_requests: u64,
    /// Prompt prefixes rows share and what the provider's prompt cache saves on them
    /// (`cache.prefix`, on by default); `None` when off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_cache: Option<PromptCacheEstimate>,
    /// The first `--show N` rendered prompts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Sample>,
    /// What an earlier run's journal says about the rows.
    #[serde(skip)]
    pub resume: ResumeCounts,
    /// Every cacheable prefix group, largest first (for a live run's primers).
    #[serde(skip)]
    pub prefix_groups: Vec<crate::prefix::PrefixGroup>,
}

/// Shared prompt prefixes and the prompt cache's effect on the cost (see `prefix.rs`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PromptCacheEstimate {
    /// How the provider caches: `automatic` (OpenAI-compatible, Azure) or
    /// `cache_control (placed by live runs)` (Anthropic).
    pub provider_caching: String,
    /// Prefix groups found (two or more rows sending the same leading messages).
    pub prefixes: u64,
    /// The largest groups, at most ten.
    pub groups: Vec<crate::prefix::PrefixGroup>,
    /// Requests expected to read a cached prefix: each cacheable group's rows after its first.
    pub cache_reads: u64,
    /// Their share of the requests sent.
    pub hit_rate: f64,
    /// Prompt tokens expected to be read from the cache.
    pub cached_tokens: u64,
    /// Prompt tokens expected to be written to the cache at a premium (Anthropic: each
    /// group's prefix once; OpenAI writes at no premium, so 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    /// The same counts, with the 1-hour writes apart, for pricing at each tier.
    #[serde(skip)]
    pub writes: CacheTokens,
    /// What a batch round reads and writes (Anthropic: only the primed groups, after their
    /// primer batches, written for an hour; see [`crate::prime::BATCH_TTL`]).
    #[serde(skip)]
    pub batch_writes: CacheTokens,
    /// The cost with those reads at the cache-read price, live; `None` = unknown price.
    pub cost: Option<CostRange>,
    /// The same at Batch API prices.
    pub batch_cost: Option<CostRange>,
}

/// One model's share of the requests, when rows take their model from a column.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelCost {
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    /// At live prices with the expected output; `None` = no price for the model.
    pub expected_usd: Option<f64>,
}

/// What the judge may add to a run, on top of `requests` and `cost`: one verdict per answer
/// (regenerated ones too), each prompt being the judge's template with the row and an
/// answer of the expected length.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JudgeEstimate {
    pub model: String,
    /// Judge requests expected: one per answer (including expected regenerations). An
    /// answer the checks reject is not judged, so this is an upper bound.
    pub requests: u64,
    /// Prompt tokens of those requests.
    pub prompt_tokens: u64,
    /// Their expected cost at the prices of `tier`; `None` = unknown price.
    pub expected_usd: Option<f64>,
    /// Their cost if every verdict uses the judge's `max_tokens`.
    pub max_usd: Option<f64>,
    /// Expected cost per judged answer.
    pub per_answer_usd: Option<f64>,
    /// The tier the verdicts are priced at: `batch` for a batch job (they go in review
    /// batches), else `standard`.
    pub tier: &'static str,
}

/// What regeneration may add to a run, on top of `requests` and `cost`. Each attempt is
/// priced like a first one (its feedback lengthens the prompt a little).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Regeneration {
    /// New answers a rejected row may get (`regenerate`).
    pub max_attempts: u32,
    /// The share of answers assumed rejected (`estimate.assume_reject_rate`).
    pub assumed_reject_rate: f64,
    /// Attempts expected: each row is rejected with that chance, and so is each new answer.
    pub expected_requests: u64,
    /// Attempts if every answer is rejected.
    pub max_requests: u64,
    /// Expected cost at the prices of `tier`; `None` = unknown price.
    pub expected_usd: Option<f64>,
    /// Cost if every answer is rejected and uses `max_tokens`: what the cap may have to hold.
    pub max_usd: Option<f64>,
    /// The tier new answers are priced at: `batch` for a batch job, else `standard`.
    pub tier: &'static str,
}

/// The default share of answers assumed rejected when pricing regeneration.
pub const DEFAULT_REJECT_RATE: f64 = 0.25;

/// A token total and whether it is what the provider will bill.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenCount {
    /// The total.
    pub total: u64,
    /// True when counted with the model's own tokenizer and chat framing.
    pub exact: bool,
    /// The tokenizer used, e.g. `o200k_base`.
    pub encoding: String,
}

/// Completion tokens: the upper bound `max_tokens × n`, and the expected figure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CompletionTokens {
    /// Per request, the most that can be generated (`max_tokens × n`).
    pub max_per_request: u64,
    /// Per request, the expected length (`estimate.assume_output_tokens`, else the maximum).
    pub expected_per_request: u64,
    /// True when no expected length was given, so the expected figure is the upper bound.
    pub expected_is_upper_bound: bool,
    /// All requests, at the maximum.
    pub max_total: u64,
    /// All requests, at the expected length.
    pub expected_total: u64,
}

/// Cost of all requests: prompt only, expected output, and maximum output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostRange {
    /// Prompt tokens only (no output at all).
    pub low_usd: f64,
    /// Prompt tokens plus the expected output.
    pub expected_usd: f64,
    /// Prompt tokens plus `max_tokens` of output on every request: what the budget reserves.
    pub high_usd: f64,
    /// True for batch prices derived as half the live ones (the table had none).
    pub derived: bool,
}

/// The minimum wall time under the job's rate limits.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WallTime {
    /// Seconds; `None` when the job sets no rate limit (then latency and concurrency decide).
    pub seconds: Option<f64>,
    /// Which limit binds: `requests_per_minute`, `tokens_per_minute`, or `none`.
    pub binding: String,
    /// Seconds the requests/min limit alone needs.
    pub rpm_seconds: Option<f64>,
    /// Seconds the tokens/min limit alone needs (counting prompt + `max_tokens`, as the
    /// limiter reserves).
    pub tpm_seconds: Option<f64>,
}

/// A row and its prompt tokens.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RowTokens {
    /// 1-based data row number (the header is not a row).
    pub row: u64,
    /// The row's id (`input.id` column, or the row number).
    pub id: String,
    /// Prompt tokens.
    pub tokens: u64,
}

/// One rendered prompt, for `--show N`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// 1-based data row number.
    pub row: u64,
    /// The row's id.
    pub id: String,
    /// Prompt tokens.
    pub tokens: u64,
    /// The messages as they would be sent.
    pub messages: Vec<Message>,
}

/// What a worker learned from one chunk of rows.
#[derive(Default)]
struct ChunkResult {
    rows: u64,
    bad_rows: u64,
    cached: u64,
    /// Every request asked, in input order, for finding the ones asked twice.
    asks: Vec<Ask>,
    longest: Option<RowTokens>,
    over_context: u64,
    over_context_rows: Vec<RowTokens>,
    samples: Vec<Sample>,
    resume: ResumeCounts,
    prefixes: crate::prefix::Prefixes,
}

/// One row's request as the estimate counts it: its hash (the first 128 bits) and, for a
/// row to send, what it adds; `None` for a row done already (a later row asking the same
/// gets a copy of that answer).
struct Ask {
    key: u128,
    sends: Option<Sends>,
}

/// What one request adds to the estimate.
struct Sends {
    prompt_tokens: u64,
    /// Prompt tokens as the budget and limiter reserve them (approximations get a margin).
    reserve_prompt: u64,
    /// The judge's template tokens.
    judge_tokens: u64,
    /// The row's own model (`model.name_column`), when it is not the job's.
    model: Option<String>,
    /// The most it may generate (the row's `max_tokens` × variants).
    max_out: u64,
    /// An `[[outputs]]` request, not the row's answer.
    output: bool,
}

/// The requests sent to one model, for pricing.
#[derive(Default)]
struct ModelGroup {
    requests: u64,
    prompt_tokens: u64,
    reserve_prompt: u64,
    max_out: u64,
    expected_out: u64,
}

impl Ask {
    fn key(hash: &str) -> u128 {
        hash.get(..32)
            .and_then(|h| u128::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                hash.hash(&mut h);
                u128::from(h.finish())
            })
    }
}

/// Renders, counts and checks every row of `job` (the one row loop, [`first_pass`]), then
/// prices the rows that would be sent now. The first bad row (in input order) is an error
/// unless the job skips bad rows. With `opts.spool_beside`, also returns the spool of every
/// row and its Step.
pub fn estimate(
    job: &Job,
    planner: &Planner,
    opts: &EstimateOptions<'_>,
) -> anyhow::Result<(Estimate, Option<Spool>)> {
    let file = job.input.path.display().to_string();
    let context_window = opts.price.and_then(|p| p.max_input_tokens);
    let rl = RowLoop::new(job, planner, opts.price, opts.tier, opts.cache)
        .with_judge(opts.judge)
        .with_prices(opts.prices)
        .with_outputs(opts.outputs);
    let pass = PassOptions {
        resume: opts.resume,
        workers: opts.workers,
        spool_beside: opts.spool_beside,
    };
    let counter = job
        .cache
        .prefix
        .then(|| crate::tokens::TokenCounter::for_model(&job.model.name));

    let mut e = Estimate {
        prices: String::new(),
        price_warnings: Vec::new(),
        model: job.model.name.clone(),
        rows: 0,
        bad_rows: 0,
        requests: 0,
        done: 0,
        kept_failed: 0,
        changed: 0,
        cached: 0,
        shared: 0,
        prompt_tokens: TokenCount {
            total: 0,
            exact: planner.exact_tokens(),
            encoding: planner.encoding().name().to_string(),
        },
        completion_tokens: CompletionTokens {
            max_per_request: planner.max_completion_tokens(),
            expected_per_request: 0,
            expected_is_upper_bound: true,
            max_total: 0,
            expected_total: 0,
        },
        cost: None,
        batch_cost: None,
        min_wall_time: WallTime {
            seconds: None,
            binding: "none".into(),
            rpm_seconds: None,
            tpm_seconds: None,
        },
        tiers: Vec::new(),
        deadline_secs: job.plan.deadline_secs(),
        plan: None,
        longest_prompt: None,
        context_window,
        over_context_window: 0,
        over_context_rows: Vec::new(),
        budget_usd: job.budget.total_cap(),
        checks: job.checks.iter().map(|c| c.name.clone()).collect(),
        regeneration: None,
        judge: None,
        models: Vec::new(),
        output_requests: 0,
        prompt_cache: None,
        samples: Vec::new(),
        resume: ResumeCounts::default(),
        prefix_groups: Vec::new(),
    };
    let assumed = job.estimate.assume_output_tokens.map(u64::from);
    let mut groups = std::collections::BTreeMap::<String, ModelGroup>::new();
    let mut judge_tokens = 0u64;
    // A live run sends a request once however many rows ask it (see `identity`): the
    // estimate counts it once too.
    let mut asked = KeyTable::create_beside(opts.spool_beside.unwrap_or(&job.input.path))
        .map_err(|err| anyhow::anyhow!("cannot create a temporary file: {err}"))?;
    let mut merge_error = None;
    let mut prefixes = crate::prefix::Prefixes::default();
    let spool = first_pass(
        &rl,
        &pass,
        |r: &mut ChunkResult, pos, s| {
            count_row(r, pos, s, opts.show, context_window);
            if let (Some(c), Step::Send(req)) = (&counter, &s.step) {
                // Rows with a model of their own are sent elsewhere: not counted.
                if req.model.is_none() {
                    let framing = c.count_chat(&[]);
                    r.prefixes
                        .add(&s.messages, |ms| c.count_chat(ms).saturating_sub(framing));
                }
            }
        },
        |r| {
            // Each chunk is added as it comes (in input order) and dropped: a million rows'
            // asks are never all held at once, and the set of those seen is on disk.
            prefixes.merge(r.prefixes);
            e.rows += r.rows;
            e.bad_rows += r.bad_rows;
            e.cached += r.cached;
            for ask in r.asks {
                let first = match asked.insert_digest(Digest16::from_bits(ask.key), 1) {
                    Ok(before) => before.is_none(),
                    Err(err) => {
                        merge_error.get_or_insert(err);
                        true
                    }
                };
                match ask.sends {
                    Some(_) if !first => e.shared += 1,
                    Some(s) => {
                        if s.output {
                            e.output_requests += 1;
                        } else {
                            e.requests += 1;
                        }
                        e.prompt_tokens.total += s.prompt_tokens;
                        judge_tokens += s.judge_tokens;
                        let model = s.model.unwrap_or_else(|| job.model.name.clone());
                        let g = groups.entry(model).or_default();
                        g.requests += 1;
                        g.prompt_tokens += s.prompt_tokens;
                        g.reserve_prompt += s.reserve_prompt;
                        g.max_out += s.max_out;
                        g.expected_out += assumed.map_or(s.max_out, |a| a.min(s.max_out));
                    }
                    None => {}
                }
            }
            if let Some(l) = r.longest {
                // Chunks come in input order, so on a tie the earlier row stays.
                if e.longest_prompt
                    .as_ref()
                    .is_none_or(|cur| l.tokens > cur.tokens)
                {
                    e.longest_prompt = Some(l);
                }
            }
            e.over_context_window += r.over_context;
            let room = LIST_OVER_CONTEXT.saturating_sub(e.over_context_rows.len());
            e.over_context_rows
                .extend(r.over_context_rows.into_iter().take(room));
            e.samples.extend(r.samples);
            e.resume.merge(&r.resume);
        },
    )?;
    if let Some(err) = merge_error {
        anyhow::bail!("counting the requests asked twice: {err}");
    }
    e.done = e.resume.done;
    e.kept_failed = e.resume.kept_failed;
    e.changed = e.resume.changed;
    if e.rows == 0 {
        anyhow::bail!("{file}: no data rows (the file is empty or has only a header)");
    }

    let ct = &mut e.completion_tokens;
    ct.expected_is_upper_bound = assumed.is_none();
    ct.expected_per_request = assumed.unwrap_or(ct.max_per_request);
    ct.max_total = groups.values().map(|g| g.max_out).sum();
    ct.expected_total = groups.values().map(|g| g.expected_out).sum();
    let reserve_prompt: u64 = groups.values().map(|g| g.reserve_prompt).sum();

    // Each model's requests at its own price; one model without a price leaves the total
    // unknown (never $0).
    let price_of = |model: &String| match *model == job.model.name {
        false => opts.prices.and_then(|t| t.lookup(model)),
        true => opts.price,
    };
    let priced: Option<Vec<(&ModelGroup, &ModelPrice)>> = if opts.price.is_none() {
        None
    } else {
        groups
            .iter()
            .map(|(m, g)| price_of(m).map(|p| (g, p)))
            .collect()
    };
    let mut tier_costs: Vec<(Tier, Option<f64>, bool)> = Vec::new();
    if let Some(priced) = priced {
        // Prices are linear in tokens, so pricing the totals equals summing per-row costs.
        // The high figure prices prompts as the budget reserves them (approximate counts
        // get a margin), so it is the most the cap can let through.
        let range = |tier: Tier| CostRange {
            low_usd: priced
                .iter()
                .map(|(g, p)| at(p, tier, g.prompt_tokens, 0))
                .sum(),
            expected_usd: priced
                .iter()
                .map(|(g, p)| at(p, tier, g.prompt_tokens, g.expected_out))
                .sum(),
            high_usd: priced
                .iter()
                .map(|(g, p)| at(p, tier, g.reserve_prompt, g.max_out))
                .sum(),
            derived: tier == Tier::Batch && priced.iter().any(|(_, p)| p.batch_derived),
        };
        e.cost = Some(range(Tier::Live));
        e.batch_cost = Some(range(Tier::Batch));
        if let Some(p) = opts.price {
            tier_costs = p
                .tiers()
                .into_iter()
                .map(|t| {
                    let r = range(t);
                    (t, Some(r.expected_usd), r.derived)
                })
                .collect();
        }
    }
    if job.model.name_column.is_some() || !opts.outputs.is_empty() {
        e.models = groups
            .iter()
            .map(|(m, g)| ModelCost {
                model: m.clone(),
                requests: g.requests,
                prompt_tokens: g.prompt_tokens,
                expected_usd: price_of(m)
                    .map(|p| at(p, Tier::Live, g.prompt_tokens, g.expected_out)),
            })
            .collect();
    }
    if job.regenerate > 0 {
        e.regeneration = Some(regeneration(&e, job));
    }
    if let Some(j) = opts.judge {
        e.judge = Some(judge_estimate(&e, j, judge_tokens, review_tier(job)));
    }
    // The limiter takes prompt + max_tokens per request before sending it.
    e.min_wall_time = wall_time(
        e.requests + e.output_requests,
        reserve_prompt.saturating_add(e.completion_tokens.max_total),
        job.limits.requests_per_minute,
        job.limits.tokens_per_minute,
    );
    if job.cache.prefix {
        let anthropic = job.api.provider == crate::config::ProviderKind::Anthropic;
        let groups = prefixes.groups(crate::prefix::min_tokens(anthropic, &job.model.name));
        e.prefix_groups = groups.iter().filter(|g| g.cacheable).cloned().collect();
        let pc = prompt_cache(&e, job, groups, opts.price);
        // Each tier's expected cost counts the prompt cache's reads and writes, as the
        // "with caching" lines do.
        if let Some(p) = opts.price {
            for (tier, expected, _) in &mut tier_costs {
                if let Some(v) = expected.as_mut() {
                    *v -= pc.writes_at(*tier).saved(p, *tier);
                }
            }
        }
        e.prompt_cache = Some(pc);
    }
    e.tiers = crate::tiers::table(
        &tier_costs,
        e.min_wall_time.seconds,
        &Assumptions::of(&job.plan),
    );
    Ok((e, spool))
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What `prompt` and `out` tokens cost at `p`'s `tier` prices, in USD.
fn at(p: &ModelPrice, tier: Tier, prompt: u64, out: u64) -> f64 {
    p.cost_of_many(
        &Usage {
            prompt_tokens: prompt,
            completion_tokens: out,
            ..Usage::default()
        },
        tier,
    )
    .as_usd()
}

impl PromptCacheEstimate {
    /// The reads and writes a run at `tier` expects.
    pub fn writes_at(&self, tier: Tier) -> &CacheTokens {
        if tier == Tier::Batch {
            &self.batch_writes
        } else {
            &self.writes
        }
    }
}

/// The prompt cache's share: in each cacheable group, the first request (a live run's
/// primer) writes the prefix and every later one reads it at the cache-read price. OpenAI
/// caches automatically, in whole 128-token blocks, and writes at no premium; Anthropic caches
/// the marked prefix whole (live runs place `cache_control` at its end) and bills the write
/// at 1.25× the input price (2× for the 1-hour lifetime a slow group asks for, see
/// [`crate::prime::ttls`]).
fn prompt_cache(
    e: &Estimate,
    job: &Job,
    groups: Vec<crate::prefix::PrefixGroup>,
    price: Option<&ModelPrice>,
) -> PromptCacheEstimate {
    use crate::config::ProviderKind;
    use crate::prefix::{BLOCK, LIST};
    use crate::prime::Ttl;
    let anthropic = job.api.provider == ProviderKind::Anthropic;
    let cacheable: Vec<&crate::prefix::PrefixGroup> =
        groups.iter().filter(|g| g.cacheable).collect();
    let ttls = crate::prime::ttls(&cacheable, e.requests, e.min_wall_time.seconds);
    let (mut reads, mut cached, mut written, mut written_1h) = (0u64, 0u64, 0u64, 0u64);
    // A batch round on the Anthropic shape: only the primed groups are marked (after their
    // primer batch), for the hour; with cache.batch_primer = false nothing is.
    let mut batch = CacheTokens::default();
    for (i, (g, ttl)) in cacheable.iter().zip(ttls).enumerate() {
        let later = g.rows.saturating_sub(1);
        reads += later;
        let tokens = if anthropic {
            written = written.saturating_add(g.tokens);
            if ttl == Ttl::OneHour {
                written_1h = written_1h.saturating_add(g.tokens);
            }
            if i < crate::prime::MAX_PRIMED && job.cache.batch_primer {
                batch.written = batch.written.saturating_add(g.tokens);
                if crate::prime::BATCH_TTL == Ttl::OneHour {
                    batch.written_1h = batch.written_1h.saturating_add(g.tokens);
                }
                batch.read = batch.read.saturating_add(later.saturating_mul(g.tokens));
            }
            g.tokens
        } else {
            g.tokens / BLOCK * BLOCK
        };
        cached = cached.saturating_add(later.saturating_mul(tokens));
    }
    let writes = CacheTokens {
        read: cached,
        written,
        written_1h,
    };
    // OpenAI's batch lines read as live requests do (a group's rows share a key).
    let batch_writes = if anthropic { batch } else { writes };
    let saved = |tier: Tier| {
        let w = if tier == Tier::Batch {
            &batch_writes
        } else {
            &writes
        };
        price.map(|p| w.saved(p, tier))
    };
    let less = |c: &Option<CostRange>, tier: Tier| {
        c.as_ref().zip(saved(tier)).map(|(c, s)| CostRange {
            low_usd: c.low_usd - s,
            expected_usd: c.expected_usd - s,
            // The budget reserves the worst case: no cache hit is counted on.
            high_usd: c.high_usd,
            derived: c.derived,
        })
    };
    PromptCacheEstimate {
        provider_caching: if anthropic {
            "cache_control (placed by live runs)".into()
        } else {
            "automatic".into()
        },
        prefixes: groups.len() as u64,
        cache_reads: reads,
        hit_rate: if e.requests == 0 {
            0.0
        } else {
            reads as f64 / e.requests as f64
        },
        cached_tokens: cached,
        cache_write_tokens: written,
        writes,
        batch_writes,
        cost: less(&e.cost, Tier::Live),
        batch_cost: less(&e.batch_cost, Tier::Batch),
        groups: groups.into_iter().take(LIST).collect(),
    }
}

/// The judge's share: every answer sent (and every expected new answer) is judged once.
/// Its prompt is the judge's template for the row (counted in the pass) plus the answer,
/// assumed as long as the estimate assumes answers are.
fn judge_estimate(e: &Estimate, judge: &Judge, template_tokens: u64, tier: Tier) -> JudgeEstimate {
    let regenerated = e.regeneration.as_ref().map_or(0, |g| g.expected_requests);
    let requests = e.requests.saturating_add(regenerated);
    let per_answer = e.completion_tokens.expected_per_request;
    // The template's tokens were counted once per row sent; regenerated answers are
    // judged with the same template.
    let per_row_template = template_tokens.checked_div(e.requests).unwrap_or(0);
    let prompt_tokens = template_tokens
        .saturating_add(per_row_template.saturating_mul(regenerated))
        .saturating_add(per_answer.saturating_mul(requests));
    let max_out = u64::from(judge.job.model.max_tokens);
    // A verdict is a short JSON object: assume half its max_tokens.
    let expected_out = max_out.div_ceil(2);
    let at = |out: u64| {
        judge.price.as_ref().map(|p| {
            p.cost_of_many(
                &Usage {
                    prompt_tokens,
                    completion_tokens: out.saturating_mul(requests),
                    ..Usage::default()
                },
                tier,
            )
            .as_usd()
        })
    };
    let expected = at(expected_out);
    JudgeEstimate {
        model: judge.model.clone(),
        requests,
        prompt_tokens,
        expected_usd: expected,
        max_usd: at(max_out),
        per_answer_usd: expected
            .filter(|_| requests > 0)
            .map(|c| c / requests as f64),
        tier: tier.name(),
    }
}

/// `, at batch prices` after a review round's figures when they are.
fn at_batch_prices(tier: &str) -> &'static str {
    if tier == Tier::Batch.name() {
        ", at batch prices"
    } else {
        ""
    }
}

/// The tier review rounds (the judge, regeneration) are paid at: a batch job sends them as
/// batches of their own, a live job at the standard tier.
fn review_tier(job: &Job) -> Tier {
    match job.mode {
        crate::config::Mode::Batch => Tier::Batch,
        _ => Tier::Live,
    }
}

/// Regeneration's share: with reject rate `r` and `N` attempts, a row expects
/// `r + r² + … + r^N` new answers; at worst it gets `N`.
fn regeneration(e: &Estimate, job: &Job) -> Regeneration {
    let r = job
        .estimate
        .assume_reject_rate
        .unwrap_or(DEFAULT_REJECT_RATE);
    let n = job.regenerate;
    let per_row: f64 = (1..=n).map(|k| r.powi(k as i32)).sum();
    let requests = e.requests as f64;
    let per_request = |total: f64| {
        if e.requests == 0 {
            0.0
        } else {
            total / requests
        }
    };
    // A batch job's new answers go in batches of their own, at batch prices.
    let tier = review_tier(job);
    let cost = match tier {
        Tier::Batch => &e.batch_cost,
        _ => &e.cost,
    };
    Regeneration {
        max_attempts: n,
        assumed_reject_rate: r,
        expected_requests: (requests * per_row).round() as u64,
        max_requests: e.requests.saturating_mul(u64::from(n)),
        expected_usd: cost
            .as_ref()
            .map(|c| per_request(c.expected_usd) * requests * per_row),
        max_usd: cost
            .as_ref()
            .map(|c| per_request(c.high_usd) * requests * f64::from(n)),
        tier: tier.name(),
    }
}

/// Counts one row into its chunk's figures: only rows to send are priced and counted.
fn count_row(r: &mut ChunkResult, pos: u64, s: &Stepped, show: usize, context_window: Option<u64>) {
    r.rows += 1;
    for o in &s.outputs {
        match o {
            Step::Skip {
                decision: Decision::Done,
                hash,
                ..
            } => r.asks.push(Ask {
                key: Ask::key(hash),
                sends: None,
            }),
            Step::Send(req) => r.asks.push(Ask {
                key: Ask::key(&req.hash),
                sends: Some(Sends {
                    prompt_tokens: req.prompt_tokens,
                    reserve_prompt: req.worst.prompt_tokens,
                    judge_tokens: 0,
                    model: req.model.clone(),
                    max_out: req.worst.completion_tokens,
                    output: true,
                }),
            }),
            _ => {}
        }
    }
    let req = match &s.step {
        Step::Bad { .. } => {
            r.bad_rows += 1;
            return;
        }
        Step::Skip { decision, hash, .. } => {
            r.resume.add(*decision);
            if *decision == Decision::Done {
                r.asks.push(Ask {
                    key: Ask::key(hash),
                    sends: None,
                });
            }
            return;
        }
        Step::Cached { decision, .. } => {
            r.resume.add(*decision);
            r.cached += 1;
            return;
        }
        Step::Send(req) => req,
    };
    r.resume.add(req.decision);
    let tokens = req.prompt_tokens;
    r.asks.push(Ask {
        key: Ask::key(&req.hash),
        sends: Some(Sends {
            prompt_tokens: tokens,
            reserve_prompt: req.worst.prompt_tokens,
            judge_tokens: s.judge_tokens,
            model: req.model.clone(),
            max_out: req.worst.completion_tokens,
            output: false,
        }),
    });
    let here = || RowTokens {
        row: req.row + 1,
        id: req.id.clone(),
        tokens,
    };
    if r.longest.as_ref().is_none_or(|l| tokens > l.tokens) {
        r.longest = Some(here());
    }
    if context_window.is_some_and(|w| tokens > w) {
        r.over_context += 1;
        if r.over_context_rows.len() < LIST_OVER_CONTEXT {
            r.over_context_rows.push(here());
        }
    }
    if pos < show as u64 {
        r.samples.push(Sample {
            row: req.row + 1,
            id: req.id.clone(),
            tokens,
            messages: s.messages.clone(),
        });
    }
}

/// The shortest time `requests` requests taking `tokens` tokens in all can take under the
/// limits (the limiter's buckets hold one second's worth, so nothing bursts past them).
fn wall_time(requests: u64, tokens: u64, rpm: Option<u32>, tpm: Option<u32>) -> WallTime {
    let secs = |n: u64, per_min: Option<u32>| {
        per_min
            .filter(|&l| l > 0)
            .map(|l| n as f64 * 60.0 / f64::from(l))
    };
    let (rpm_seconds, tpm_seconds) = (secs(requests, rpm), secs(tokens, tpm));
    let (seconds, binding) = match (rpm_seconds, tpm_seconds) {
        (None, None) => (None, "none"),
        (Some(r), None) => (Some(r), "requests_per_minute"),
        (None, Some(t)) => (Some(t), "tokens_per_minute"),
        (Some(r), Some(t)) if t > r => (Some(t), "tokens_per_minute"),
        (Some(r), Some(_)) => (Some(r), "requests_per_minute"),
    };
    WallTime {
        seconds,
        binding: binding.into(),
        rpm_seconds,
        tpm_seconds,
    }
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Estimate {
    /// The readable table printed on stderr.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| {
            s.push_str(format!("  {k:<20} {v}").trim_end());
            s.push('\n');
        };
        line("model", self.model.clone());
        let mut rows = format!(
            "{} ({} to send",
            thousands(self.rows),
            thousands(self.requests)
        );
        if self.bad_rows > 0 {
            rows.push_str(&format!(", {} bad rows skipped", thousands(self.bad_rows)));
        }
        for (n, what) in [
            (self.changed, "changed since the last run (sent again)"),
            (self.done, "done already"),
            (self.kept_failed, "failed and kept as failed"),
            (self.cached, "answered from the cache"),
            (self.shared, "asking what another row asks (sent once)"),
        ] {
            if n > 0 {
                rows.push_str(&format!(", {} {what}", thousands(n)));
            }
        }
        if self.output_requests > 0 {
            rows.push_str(&format!(
                "; and {} [[outputs]] requests",
                thousands(self.output_requests)
            ));
        }
        rows.push(')');
        line("rows", rows);
        let pt = &self.prompt_tokens;
        line(
            "prompt tokens",
            format!(
                "{} ({}, {})",
                thousands(pt.total),
                if pt.exact { "exact" } else { "approximate" },
                pt.encoding
            ),
        );
        let ct = &self.completion_tokens;
        line(
            "completion tokens",
            format!(
                "{} expected ({} per request{}), at most {} ({} per request)",
                thousands(ct.expected_total),
                thousands(ct.expected_per_request),
                if ct.expected_is_upper_bound {
                    ": the upper bound, no --assume-output-tokens given"
                } else {
                    ""
                },
                thousands(ct.max_total),
                thousands(ct.max_per_request)
            ),
        );
        let costs = |c: &Option<CostRange>| match c {
            Some(c) => format!(
                "{:<12} {:<12} {:<12}{}",
                usd(c.low_usd),
                usd(c.expected_usd),
                usd(c.high_usd),
                if c.derived {
                    " (derived: half the live price)"
                } else {
                    ""
                }
            ),
            None => "unknown: no price for this model (give one with --prices FILE)".into(),
        };
        line(
            "cost",
            format!("{:<12} {:<12} {:<12}", "low", "expected", "high"),
        );
        line("  live", costs(&self.cost));
        line("  batch", costs(&self.batch_cost));
        if let Some(pc) = self.prompt_cache.as_ref().filter(|pc| pc.prefixes > 0) {
            let groups: Vec<String> = pc
                .groups
                .iter()
                .map(|g| {
                    format!(
                        "{} ({} message{}, {} tokens, {} rows{})",
                        g.id,
                        g.messages,
                        if g.messages == 1 { "" } else { "s" },
                        thousands(g.tokens),
                        thousands(g.rows),
                        if g.cacheable {
                            ""
                        } else {
                            ", too short to cache"
                        }
                    )
                })
                .collect();
            line(
                "shared prefixes",
                format!(
                    "{}: {}{}",
                    thousands(pc.prefixes),
                    groups.join("; "),
                    if pc.prefixes > groups.len() as u64 {
                        "; …"
                    } else {
                        ""
                    }
                ),
            );
            line(
                "prompt cache",
                format!(
                    "{}: {} of {} requests read a cached prefix ({:.0}%), {} tokens{}",
                    pc.provider_caching,
                    thousands(pc.cache_reads),
                    thousands(self.requests),
                    pc.hit_rate * 100.0,
                    thousands(pc.cached_tokens),
                    if pc.cache_write_tokens > 0 {
                        format!("; {} written", thousands(pc.cache_write_tokens))
                    } else {
                        String::new()
                    }
                ),
            );
            line("  live, with caching", costs(&pc.cost));
            line("  batch, with caching", costs(&pc.batch_cost));
        }
        if !self.models.is_empty() {
            line("by model", "(at live prices)".into());
            for m in &self.models {
                line(
                    &format!("  {}", m.model),
                    format!(
                        "{} request{}, {} prompt tokens, {} expected",
                        thousands(m.requests),
                        if m.requests == 1 { "" } else { "s" },
                        thousands(m.prompt_tokens),
                        m.expected_usd
                            .map_or_else(|| "unknown: no price for this model".into(), usd)
                    ),
                );
            }
        }
        if !self.checks.is_empty() {
            line(
                "checks",
                format!("{} ({})", self.checks.len(), self.checks.join(", ")),
            );
        }
        if let Some(g) = &self.regeneration {
            let money = |v: Option<f64>| v.map_or_else(|| "unknown".to_string(), usd);
            line(
                "regeneration",
                format!(
                    "up to {} new answers per rejected row: {} requests and {} more expected \
                     at {:.0}% rejected (--assume-reject-rate), at most {} requests and {}{}",
                    g.max_attempts,
                    thousands(g.expected_requests),
                    money(g.expected_usd),
                    g.assumed_reject_rate * 100.0,
                    thousands(g.max_requests),
                    money(g.max_usd),
                    at_batch_prices(g.tier)
                ),
            );
        }
        if let Some(j) = &self.judge {
            let money = |v: Option<f64>| v.map_or_else(|| "unknown".to_string(), usd);
            line(
                "judge",
                format!(
                    "{} verdicts by {}: {} expected ({} per answer), at most {}{}",
                    thousands(j.requests),
                    j.model,
                    money(j.expected_usd),
                    money(j.per_answer_usd),
                    money(j.max_usd),
                    at_batch_prices(j.tier)
                ),
            );
        }
        let w = &self.min_wall_time;
        line(
            "min wall time",
            match w.seconds {
                Some(sec) => format!(
                    "{} ({} binds{})",
                    duration(sec),
                    w.binding,
                    match (w.binding.as_str(), w.rpm_seconds, w.tpm_seconds) {
                        ("tokens_per_minute", Some(r), _) => {
                            format!("; requests_per_minute alone: {}", duration(r))
                        }
                        ("requests_per_minute", _, Some(t)) => {
                            format!("; tokens_per_minute alone: {}", duration(t))
                        }
                        _ => String::new(),
                    }
                ),
                None => "no rate limits set (latency and max_in_flight decide)".into(),
            },
        );
        if !self.tiers.is_empty() {
            line(
                "tiers",
                format!(
                    "{:<12} {}{}",
                    "expected",
                    "wall time",
                    self.deadline_secs
                        .map(|d| format!(" (deadline {})", duration(d)))
                        .unwrap_or_default()
                ),
            );
            for t in &self.tiers {
                line(
                    &format!("  {}", t.tier),
                    format!(
                        "{:<12} {} ({}){}{}",
                        t.expected_usd.map_or_else(|| "unknown".into(), usd),
                        t.wall_seconds.map_or_else(|| "unknown".into(), duration),
                        t.wall_time_from,
                        match t.fits_deadline {
                            Some(true) => ", fits the deadline",
                            Some(false) => ", too slow for the deadline",
                            None => "",
                        },
                        if t.derived {
                            " (derived: half the live price)"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
        if let Some(c) = &self.plan {
            line("plan", c.reason.clone());
        }
        if let Some(l) = &self.longest_prompt {
            line(
                "longest prompt",
                format!(
                    "row {} (id {}): {} tokens",
                    l.row,
                    l.id,
                    thousands(l.tokens)
                ),
            );
        }
        line(
            "context window",
            match self.context_window {
                None => "unknown for this model".into(),
                Some(w) if self.over_context_window == 0 => {
                    format!("{} tokens; every prompt fits", thousands(w))
                }
                Some(w) => {
                    let listed: Vec<String> = self
                        .over_context_rows
                        .iter()
                        .map(|r| format!("row {} (id {}, {} tokens)", r.row, r.id, r.tokens))
                        .collect();
                    format!(
                        "{} tokens; {} rows are longer: {}{}",
                        thousands(w),
                        thousands(self.over_context_window),
                        listed.join(", "),
                        if self.over_context_window > listed.len() as u64 {
                            ", …"
                        } else {
                            ""
                        }
                    )
                }
            },
        );
        if let Some(cap) = self.budget_usd {
            let verdict = match &self.cost {
                None => "cannot be enforced: no price for this model".to_string(),
                Some(c) if c.high_usd <= cap => "the high estimate fits".to_string(),
                Some(c) if c.expected_usd <= cap => {
                    "the expected cost fits, the high one does not".to_string()
                }
                Some(_) => "below the expected cost: the run will stop at the cap (exit 3), \
                            resumable with a higher cap"
                    .to_string(),
            };
            line("budget cap", format!("{} ({verdict})", usd(cap)));
        }
        if !self.prices.is_empty() {
            line("prices", self.prices.clone());
        }
        for w in &self.price_warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        for sample in &self.samples {
            s.push_str(&format!(
                "\n--- row {} (id {}), {} prompt tokens\n",
                sample.row, sample.id, sample.tokens
            ));
            for m in &sample.messages {
                s.push_str(&format!("[{}]\n{}\n", role(m), m.content));
            }
        }
        s
    }
}

fn role(m: &Message) -> &'static str {
    match m.role {
        crate::types::Role::System => "system",
        crate::types::Role::User => "user",
        crate::types::Role::Assistant => "assistant",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_names_the_binding_limit() {
        let w = wall_time(1000, 600_000, Some(500), Some(100_000));
        assert_eq!(w.binding, "tokens_per_minute");
        assert_eq!(w.seconds, Some(360.0));
        assert_eq!(w.rpm_seconds, Some(120.0));
        let w = wall_time(1000, 600_000, Some(100), Some(1_000_000));
        assert_eq!(w.binding, "requests_per_minute");
        assert_eq!(w.seconds, Some(600.0));
        let w = wall_time(1000, 600_000, None, None);
        assert_eq!((w.seconds, w.binding.as_str()), (None, "none"));
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(duration(12.46), "12.5s");
        assert_eq!(duration(200.0), "3m 20s");
        assert_eq!(duration(3720.0), "1h 02m");
    }
}
