//! The end-of-run summary: a short table on stderr and a JSON file beside the output.

use serde::Serialize;

use anyhow::Context as _;

use crate::config::Job;
use crate::sink::{self, CheckTally, OutputTotals};
use crate::types::Money;

/// The prompt cache's share of a live run: this run's answers (at the job's model).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct PromptCacheSummary {
    /// Prompt tokens read from the provider's cache.
    pub cached_tokens: u64,
    /// Prompt tokens written to it at a premium (Anthropic).
    pub cache_write_tokens: u64,
    /// What those tokens would have cost at the input price, less what they cost (reads at
    /// the cache-read price, writes with their premium); `None` = unknown price.
    pub saved_usd: Option<f64>,
    /// Per prefix group (see `cache.prefix`): requests, how many read the cached prefix
    /// and the tokens read and written.
    pub groups: Vec<crate::prime::GroupUse>,
}

impl PromptCacheSummary {
    /// The summary of `t`, priced at `price`'s `tier` from the usage: `saved_usd` is what
    /// the tokens would have cost at the input price less what they cost (reads at the
    /// cache-read price, writes with their premium).
    pub fn of(
        price: Option<&crate::cost::ModelPrice>,
        tier: crate::cost::Tier,
        t: crate::cost::CacheTokens,
        groups: Vec<crate::prime::GroupUse>,
    ) -> PromptCacheSummary {
        let (read, written) = (t.read, t.written);
        let saved_usd = price.map(|p| t.saved(p, tier));
        PromptCacheSummary {
            cached_tokens: read,
            cache_write_tokens: written,
            saved_usd,
            groups,
        }
    }

    /// Whether the cache played a part (a run without shared prefixes shows nothing).
    pub fn any(&self) -> bool {
        self.cached_tokens > 0 || self.cache_write_tokens > 0 || !self.groups.is_empty()
    }
}

/// What a run did, for people (printed) and scripts (JSON).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    pub job: String,
    pub model: String,
    pub provider: String,
    pub mode: String,
    pub output: String,
    pub journal: String,
    /// `completed`, `failed` (went through every row and not one succeeded), `aborted`,
    /// `budget`, `interrupted`.
    pub status: String,
    /// Why the run stopped early, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What a preview (`run --limit`/`--sample`) cost, and the projection for the rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewSummary>,
    pub exit_code: i32,
    pub rows: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Rows answered whose answer failed a check (only with `[[checks]]`).
    #[serde(skip_serializing_if = "Vec::is_empty", rename = "checks")]
    pub checks: Vec<CheckTally>,
    #[serde(skip_serializing_if = "is_zero")]
    pub rejected: u64,
    /// Rows with no result yet (the run stopped before them).
    pub pending: u64,
    /// Rows answered from the response cache.
    pub cached: u64,
    /// Rows already done by an earlier run and not sent again.
    pub resumed: u64,
    /// Rows redone because what would be sent changed (template, model, settings).
    pub changed: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Cost of every row in the output (this run and earlier ones); None = unknown price.
    #[serde(serialize_with = "as_usd")]
    pub cost_usd: Option<Money>,
    /// Rows whose answer came without usage from the server: their tokens and cost (in
    /// `cost_usd`) are our estimate, never zero.
    pub cost_estimated_rows: u64,
    /// Cost of this run's requests.
    #[serde(serialize_with = "as_usd")]
    pub cost_this_run_usd: Option<Money>,
    /// What the estimate said this run's requests would cost (expected case).
    #[serde(serialize_with = "as_usd")]
    pub estimated_cost_usd: Option<Money>,
    /// Total spent on the job so far, including superseded responses.
    #[serde(serialize_with = "as_usd")]
    pub spent_total_usd: Option<Money>,
    /// The cumulative cap (`budget.max_usd_total`, or `budget.max_usd`).
    #[serde(serialize_with = "as_usd")]
    pub budget_usd: Option<Money>,
    /// The per-run cap (`budget.max_usd_per_run`).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_usd")]
    pub budget_per_run_usd: Option<Money>,
    pub wall_seconds: f64,
    /// HTTP requests sent in this run (attempts, including retries).
    pub requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub server_errors: u64,
    /// Attempts that could not connect (or lost the connection).
    pub connection_errors: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    pub requests_per_minute: f64,
    pub tokens_per_minute: f64,
    /// The price data: its origin, source and date.
    pub prices: String,
    /// Warnings about the price data's age or the model's deprecation date.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub price_warnings: Vec<String>,
    /// Rows the checks rejected that were sent again in this run (`regenerate`).
    #[serde(skip_serializing_if = "is_zero")]
    pub regenerated_rows: u64,
    /// New attempts sent for them (a row may have several).
    #[serde(skip_serializing_if = "is_zero")]
    pub regeneration_requests: u64,
    /// What those attempts cost (included in `cost_this_run_usd`).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_usd")]
    pub regeneration_cost_usd: Option<Money>,
    /// The judge's verdicts in the output (with `[judge]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeSummary>,
    /// What the provider's prompt cache did in this run (live runs with `cache.prefix`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_cache: Option<PromptCacheSummary>,
    /// Judge requests that ended in this run.
    #[serde(skip_serializing_if = "is_zero")]
    pub judge_requests: u64,
    /// What they cost (included in `cost_this_run_usd`).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_usd")]
    pub judge_cost_this_run_usd: Option<Money>,
}

/// The judge's side of the output: its verdicts, their spread, tokens and cost.
#[derive(Debug, Clone, Serialize, Default)]
pub struct JudgeSummary {
    pub model: String,
    /// Answers with a verdict.
    pub judged: u64,
    /// Verdicts below `min_score` (those rows are `rejected`).
    pub below_min: u64,
    /// Judge requests that failed (those rows are `failed`).
    pub errors: u64,
    /// Answers still waiting for a verdict (those rows are `pending`).
    pub waiting: u64,
    pub min_score: Option<f64>,
    pub score_min: Option<f64>,
    pub score_median: Option<f64>,
    pub score_max: Option<f64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cost of the verdicts in the output (not in `cost_usd`); None = unknown price.
    #[serde(serialize_with = "as_usd")]
    pub cost_usd: Option<Money>,
}

impl JudgeSummary {
    fn of(job: &Job, t: &sink::JudgeTotals) -> JudgeSummary {
        let mut scores = t.scores.clone();
        let spread = crate::judge::spread(&mut scores);
        let j = job.judge.as_ref();
        JudgeSummary {
            model: j
                .and_then(|j| j.model.clone())
                .unwrap_or_else(|| job.model.name.clone()),
            judged: t.judged,
            below_min: t.below_min,
            errors: t.errors,
            waiting: t.waiting,
            min_score: j.and_then(|j| j.min_score),
            score_min: spread.map(|s| s.0),
            score_median: spread.map(|s| s.1),
            score_max: spread.map(|s| s.2),
            prompt_tokens: t.usage.prompt_tokens,
            completion_tokens: t.usage.completion_tokens,
            cost_usd: t.cost.known(),
        }
    }
}

/// The status and message of a run that went through all its rows: `completed`, or
/// `failed` when not one row of the output succeeded (saying where the reasons are).
pub fn finished(job: &Job, totals: &OutputTotals) -> (&'static str, Option<String>) {
    if totals.succeeded == 0 && totals.failed > 0 && totals.pending == 0 {
        let message = format!(
            "every row failed ({}); each row's reason is in the error column of {} (run again \
             with --retry-failed to send them again)",
            totals.failed,
            job.output.path.display()
        );
        ("failed", Some(message))
    } else if totals.rejected > 0 {
        let (by, columns) = match (job.checks.is_empty(), job.judge.is_some()) {
            (true, true) => ("the judge", "judge_score and judge_reason columns"),
            (false, true) => ("checks or the judge", "check_ and judge_ columns"),
            _ => ("checks", "check_ columns"),
        };
        let message = format!(
            "{} rows were answered but rejected by {by}; each row's reasons are in the \
             {columns} of {}",
            totals.rejected,
            job.output.path.display()
        );
        ("completed", Some(message))
    } else {
        ("completed", None)
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Money is held in picodollars to the end: it becomes dollars (a JSON number) only here.
fn as_usd<S: serde::Serializer>(v: &Option<Money>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(m) => s.serialize_some(&m.as_usd()),
        None => s.serialize_none(),
    }
}

fn usd(v: Option<Money>) -> String {
    match v {
        Some(x) => x.to_string(),
        None => "unknown (no price for this model; see --prices)".to_string(),
    }
}

/// A preview's numbers: the rows it answered, what they cost, and the full run's cost
/// projected from them (the cost per row times the rows still to send).
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct PreviewSummary {
    /// Previewed rows answered in this run.
    pub rows: u64,
    /// What the preview cost; None = unknown price.
    #[serde(serialize_with = "as_usd")]
    pub cost_usd: Option<Money>,
    #[serde(serialize_with = "as_usd")]
    pub cost_per_row_usd: Option<Money>,
    /// Rows a run would still send (not in the preview, or not answered in it).
    pub rows_to_send: u64,
    /// `cost_per_row_usd` × `rows_to_send`: a projection, not an estimate of the tokens.
    #[serde(serialize_with = "as_usd")]
    pub projected_cost_usd: Option<Money>,
    /// The seed of a `--sample` preview.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Summary {
    /// What every mode reports alike: the job, its output and the rows' totals. The caller
    /// fills in status, this run's numbers and the rest.
    pub fn for_output(
        job: &Job,
        mode: &str,
        provider: String,
        totals: &OutputTotals,
        priced: bool,
    ) -> Summary {
        Summary {
            job: job.display_name(),
            model: job.model.name.clone(),
            provider,
            mode: mode.into(),
            output: job.output.path.display().to_string(),
            journal: job.journal_path().display().to_string(),
            rows: totals.rows,
            succeeded: totals.succeeded,
            failed: totals.failed,
            rejected: totals.rejected,
            checks: totals.checks.clone(),
            pending: totals.pending,
            cached: totals.cached,
            prompt_tokens: totals.usage.prompt_tokens,
            completion_tokens: totals.usage.completion_tokens,
            cached_tokens: totals.usage.cached_tokens,
            reasoning_tokens: totals.usage.reasoning_tokens,
            cost_usd: totals.cost.known().filter(|_| priced),
            cost_estimated_rows: totals.estimated,
            budget_usd: job.budget.total_cap().map(Money::from_usd),
            budget_per_run_usd: job.budget.max_usd_per_run.map(Money::from_usd),
            judge: totals.judge.as_ref().map(|t| JudgeSummary::of(job, t)),
            ..Summary::default()
        }
    }

    /// Writes the JSON beside the output (atomically), then prints `message` (after
    /// `label`), the table on stderr, and with `json` the JSON on stdout.
    pub fn publish(&self, job: &Job, label: &str, json: bool) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        sink::write_atomic(&job.summary_path(), &bytes)
            .with_context(|| format!("{}: cannot write summary", job.summary_path().display()))?;
        if let Some(m) = &self.message {
            eprintln!("{label}: {m}");
        }
        eprint!("{}", self.render());
        if json {
            crate::stdout::print(&format!("{}\n", String::from_utf8_lossy(&bytes)))?;
        }
        Ok(())
    }

    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| {
            s.push_str(&format!("  {k:<18} {v}\n"));
        };
        line(
            "job",
            format!(
                "{} ({} via {}, {})",
                self.job, self.model, self.provider, self.mode
            ),
        );
        line(
            "status",
            match &self.message {
                Some(m) => format!("{}: {m}", self.status),
                None => self.status.clone(),
            },
        );
        let mut rows = format!(
            "{} total: {} succeeded, {} failed, {} pending",
            self.rows, self.succeeded, self.failed, self.pending
        );
        match (self.checks.is_empty(), self.judge.is_some()) {
            (false, false) => rows.push_str(&format!(", {} rejected by checks", self.rejected)),
            (true, true) => rows.push_str(&format!(", {} rejected by the judge", self.rejected)),
            (false, true) => rows.push_str(&format!(
                ", {} rejected by checks or the judge",
                self.rejected
            )),
            (true, false) => {}
        }
        if self.resumed > 0 || self.cached > 0 || self.changed > 0 {
            rows.push_str(&format!(
                " ({} resumed, {} from cache, {} redone after a change)",
                self.resumed, self.cached, self.changed
            ));
        }
        line("rows", rows);
        if !self.checks.is_empty() {
            let each: Vec<String> = self
                .checks
                .iter()
                .map(|c| {
                    let all = c.passed + c.failed;
                    let rate = if all == 0 {
                        "-".to_string()
                    } else {
                        format!("{:.1}%", 100.0 * c.passed as f64 / all as f64)
                    };
                    format!("{} {}/{all} passed ({rate})", c.name, c.passed)
                })
                .collect();
            line("checks", each.join("; "));
        }
        if let Some(j) = &self.judge {
            let score = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v}"));
            let mut text = format!(
                "{} judged by {}: scores min {} / median {} / max {}",
                j.judged,
                j.model,
                score(j.score_min),
                score(j.score_median),
                score(j.score_max)
            );
            if let Some(min) = j.min_score {
                text.push_str(&format!(", {} below {min}", j.below_min));
            }
            if j.errors > 0 {
                text.push_str(&format!(", {} judge requests failed", j.errors));
            }
            if j.waiting > 0 {
                text.push_str(&format!(", {} waiting for a verdict", j.waiting));
            }
            line("judge", text);
            line(
                "judge cost",
                format!(
                    "{} ({} prompt + {} completion tokens){}",
                    usd(j.cost_usd),
                    j.prompt_tokens,
                    j.completion_tokens,
                    if self.judge_requests > 0 {
                        format!(
                            "; this run: {} requests, {}",
                            self.judge_requests,
                            usd(self.judge_cost_this_run_usd)
                        )
                    } else {
                        String::new()
                    }
                ),
            );
        }
        if self.regeneration_requests > 0 {
            line(
                "regenerated",
                format!(
                    "{} rows, {} new answers, {}",
                    self.regenerated_rows,
                    self.regeneration_requests,
                    usd(self.regeneration_cost_usd)
                ),
            );
        }
        line(
            "tokens",
            format!(
                "{} prompt + {} completion",
                self.prompt_tokens, self.completion_tokens
            ),
        );
        if let Some(pc) = &self.prompt_cache {
            line(
                "prompt cache",
                format!(
                    "{} tokens read, {} written; saved {} vs no caching",
                    pc.cached_tokens,
                    pc.cache_write_tokens,
                    pc.saved_usd
                        .map_or_else(|| "unknown (no price)".into(), |d| format!("${d:.4}"))
                ),
            );
            for g in pc.groups.iter().take(crate::prefix::LIST) {
                line(
                    &format!("  group {}", g.id),
                    format!(
                        "{} of {} requests read the prefix ({:.0}%), {} tokens",
                        g.hits,
                        g.requests,
                        g.hit_rate * 100.0,
                        g.cached_tokens
                    ),
                );
            }
        }
        let mut cost = usd(self.cost_usd);
        if self.cost_estimated_rows > 0 {
            cost.push_str(&format!(
                " (estimated: {} rows came without usage from the server; counted by us)",
                self.cost_estimated_rows
            ));
        }
        line("cost", cost);
        if self.cost_this_run_usd.is_some() || self.estimated_cost_usd.is_some() {
            // A batch collection does not re-run the estimate: no "(estimated ...)" then.
            let estimated = self
                .estimated_cost_usd
                .map(|e| format!(" (estimated {e})"))
                .unwrap_or_default();
            line(
                "this run",
                format!("{}{estimated}", usd(self.cost_this_run_usd)),
            );
        }
        if let Some(b) = self.budget_usd {
            line(
                "budget",
                format!("{} spent of {b}", usd(self.spent_total_usd)),
            );
        }
        if let Some(b) = self.budget_per_run_usd {
            line(
                "run budget",
                format!("{} spent of {b}", usd(self.cost_this_run_usd)),
            );
        }
        // The rates of a batch run are the provider's, not ours: only the wall time.
        let time = if self.mode == "batch" {
            format!("{:.1}s", self.wall_seconds)
        } else {
            format!(
                "{:.1}s, {:.0} requests/min, {:.0} tokens/min",
                self.wall_seconds, self.requests_per_minute, self.tokens_per_minute
            )
        };
        line("time", time);
        line(
            "requests",
            format!(
                "{} sent, {} retries, {} rate-limited (429), {} server errors (5xx), {} \
                 connection errors, {} timeouts",
                self.requests,
                self.retries,
                self.rate_limited,
                self.server_errors,
                self.connection_errors,
                self.timeouts
            ),
        );
        line("output", self.output.clone());
        if !self.prices.is_empty() {
            line("prices", self.prices.clone());
        }
        for w in &self.price_warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(table: &'a str, label: &str) -> &'a str {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in\n{table}"))
    }

    #[test]
    fn a_batch_summary_shows_no_rates_and_no_unknown_estimate() {
        let live = Summary {
            mode: "live".into(),
            cost_this_run_usd: Some(Money::from_usd(0.5)),
            estimated_cost_usd: Some(Money::from_usd(0.75)),
            wall_seconds: 2.0,
            requests_per_minute: 600.0,
            tokens_per_minute: 9000.0,
            ..Summary::default()
        };
        let t = live.render();
        assert!(
            line(&t, "this run").ends_with("$0.50 (estimated $0.75)"),
            "{t}"
        );
        assert!(line(&t, "time").ends_with("2.0s, 600 requests/min, 9000 tokens/min"));

        let batch = Summary {
            mode: "batch".into(),
            estimated_cost_usd: None,
            requests_per_minute: 0.0,
            ..live
        };
        let t = batch.render();
        assert!(line(&t, "this run").ends_with("$0.50"), "{t}");
        assert!(line(&t, "time").ends_with("  2.0s"), "{t}");
    }
}
