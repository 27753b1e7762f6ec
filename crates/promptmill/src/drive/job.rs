//! The job context every driver takes, and the job-level helpers the drivers share: the
//! price table, the planner, the output's shape and the rows it is built from.

use std::borrow::Cow;
use std::path::Path;

use anyhow::{anyhow, bail};

use super::start_err;
use crate::client;
use crate::config::Job;
use crate::cost::{ModelPrice, PriceTable, Tier};
use crate::identity::{Identity, Wanted};
use crate::journal::Record;
use crate::judge::Judge;
use crate::plan::Planner;
use crate::render::Renderer;
use crate::sink::OutputSpec;
use crate::source::{Source, SourceOptions};

/// What a command hands a driver: the job (already pointed at the mock, if any), its
/// prices, and whether requests go to the built-in mock.
#[derive(Debug, Clone)]
pub struct JobCtx {
    pub job: Job,
    pub prices: Cow<'static, PriceTable>,
    /// The job model's price, if the table has one.
    pub price: Option<ModelPrice>,
    /// Requests go to the built-in mock: its own ledger, no key needed.
    pub mock: bool,
}

impl JobCtx {
    /// The context of `job` with the built-in price table, or `prices` (a LiteLLM-format
    /// file) over it.
    pub fn new(job: Job, prices: Option<&Path>) -> anyhow::Result<JobCtx> {
        let mut prices = price_table(prices)?;
        if client::is_gemini(&job) {
            // Gemini's own prices (LiteLLM's `gemini/…` keys), not Vertex AI's.
            prices.to_mut().prefer_provider("gemini");
        }
        let price = prices.lookup(&job.model.name).cloned();
        Ok(JobCtx {
            job,
            prices,
            price,
            mock: false,
        })
    }

    /// Sends everything to the built-in mock at `base_url`.
    pub fn use_mock(&mut self, base_url: String) {
        self.job.api.base_url = Some(base_url);
        self.mock = true;
    }

    /// Where the prices come from and their date, for the summary.
    pub fn prices_line(&self) -> String {
        crate::cost::fresh::describe(&self.prices)
    }

    /// Warnings about the price data's age and the model's deprecation date, today.
    pub fn price_warnings(&self) -> Vec<String> {
        crate::cost::fresh::warnings(
            &self.prices,
            &self.job.model.name,
            self.price.as_ref(),
            &crate::cost::update::today(),
        )
    }

    /// The live tier the job asks for: `model.service_tier` (or a `service_tier` in
    /// `model.extra`), standard when unset.
    pub fn asked_tier(&self) -> Tier {
        match self.job.model.service_tier {
            Some(t) => Tier::from_served(t.name()),
            None => self
                .job
                .model
                .extra
                .as_ref()
                .and_then(|e| e.get("service_tier"))
                .and_then(|v| v.as_str())
                .map_or(Tier::Live, Tier::from_served),
        }
    }

    /// The tier a live row's worst case is reserved at: priority when asked (it costs
    /// more), else standard (flex costs less, and a flex row may fall back to standard).
    pub fn reserve_tier(&self) -> Tier {
        match self.asked_tier() {
            Tier::Priority => Tier::Priority,
            _ => Tier::Live,
        }
    }

    /// The provider's name for the summary (`mock` for the built-in mock).
    pub fn provider_name(&self) -> String {
        if self.mock {
            "mock".into()
        } else {
            client::provider_for(&self.job).name().into()
        }
    }
}

/// The price table: the file `prices update` cached, else the built-in snapshot; with
/// `prices` (a user file) over it.
pub fn price_table(prices: Option<&Path>) -> anyhow::Result<Cow<'static, PriceTable>> {
    let cache = crate::cost::update::cache_file();
    let base = PriceTable::base(cache.as_deref());
    Ok(match prices {
        Some(p) => Cow::Owned(PriceTable::merged_over(&base, p)?),
        None => base,
    })
}

/// Claims the job for this process: the output paths are checked, then the job's lock is
/// taken (see [`crate::job_lock`]). Every command that writes the journal or the batch
/// state calls this first and holds the lock until it ends; failure is exit 2, nothing
/// sent.
pub fn claim(job: &Job) -> anyhow::Result<crate::job_lock::JobLock> {
    crate::output_paths::check(job).map_err(start_err)?;
    crate::job_lock::acquire(job).map_err(start_err)
}

/// The planner for a job. Row identity hashes include where requests go, so mock answers are
/// never taken for real ones; the mock's port changes every run, so it is hashed as `mock:`.
pub fn planner_for(job: &Job, mock: bool) -> anyhow::Result<Planner> {
    planner_with(job, &job.prompt_spec(), mock)
}

/// The job's judge (`[judge]`), if it has one: its planner, priced at the judge model's
/// price. Checked before anything is sent.
pub fn judge_for(ctx: &JobCtx) -> anyhow::Result<Option<std::sync::Arc<Judge>>> {
    let Some(judge_job) = ctx.job.judge_job() else {
        return Ok(None);
    };
    let mut spec = judge_job.prompt_spec();
    spec.section = Some("judge");
    let planner = planner_with(&judge_job, &spec, ctx.mock)?;
    let price = ctx.prices.lookup(&judge_job.model.name).cloned();
    if ctx.job.budget.any_cap() && price.is_none() {
        bail!(
            "{} is set but there is no price for the judge's model '{}', so the cap cannot be \
             enforced; give a price table with --prices FILE",
            cap_names(&ctx.job),
            judge_job.model.name
        );
    }
    Ok(Some(std::sync::Arc::new(Judge::new(
        &ctx.job, planner, price,
    )?)))
}

/// The job's `[[outputs]]`, each with its planner. Checked before anything is sent: every
/// template compiles, and with a budget cap every output's model has a price.
pub fn outputs_for(ctx: &JobCtx) -> anyhow::Result<std::sync::Arc<Vec<crate::outputs::Extra>>> {
    let mut extras = Vec::with_capacity(ctx.job.outputs.len());
    for o in &ctx.job.outputs {
        let job = ctx.job.output_job(o);
        let mut spec = job.prompt_spec();
        spec.section = Some("outputs");
        let planner = planner_with(&job, &spec, ctx.mock)?;
        if ctx.job.budget.any_cap() && ctx.prices.lookup(&job.model.name).is_none() {
            bail!(
                "{} is set but there is no price for model '{}' of output '{}', so the cap \
                 cannot be enforced; give a price table with --prices FILE",
                cap_names(&ctx.job),
                job.model.name,
                o.name
            );
        }
        extras.push(crate::outputs::Extra {
            name: o.name.clone(),
            model: job.model.name.clone(),
            job,
            planner,
        });
    }
    Ok(std::sync::Arc::new(extras))
}

fn planner_with(
    job: &Job,
    spec: &crate::render::PromptSpec,
    mock: bool,
) -> anyhow::Result<Planner> {
    let renderer = Renderer::new(spec)?;
    let provider = client::provider_for(job);
    let identity = if mock {
        "mock:".to_string()
    } else {
        client::base_url(job)
    };
    Ok(Planner::new(job, renderer, provider, &identity))
}

/// How the job's input is read.
pub fn source_options(job: &Job) -> SourceOptions {
    job.source_options()
}

/// The names of the caps a job sets, for messages.
pub fn cap_names(job: &Job) -> &'static str {
    match (job.budget.total_cap(), job.budget.max_usd_per_run) {
        (Some(_), Some(_)) => "budget.max_usd_total and budget.max_usd_per_run",
        (None, Some(_)) => "budget.max_usd_per_run",
        _ => "budget.max_usd_total",
    }
}

/// The output's shape: input columns (or the chosen subset, each checked), the structured
/// output's fields, the variants. Checked before anything is sent.
pub fn output_spec(job: &Job) -> anyhow::Result<OutputSpec> {
    crate::output_paths::check(job)?;
    let columns = Source::open(&job.input.path, &source_options(job))?
        .columns()
        .to_vec();
    let input_columns = match &job.output.columns {
        Some(chosen) => {
            if let Some(c) = chosen.iter().find(|c| !columns.contains(c)) {
                bail!(
                    "output.columns: '{c}' is not a column of {} (columns: {})",
                    job.input.path.display(),
                    columns.join(", ")
                );
            }
            chosen.clone()
        }
        None => columns,
    };
    let spec = OutputSpec {
        path: job.output.path.clone(),
        format: job.output_format().ok_or_else(|| {
            anyhow!(
                "{}: output must be .csv, .jsonl or .xlsx",
                job.output.path.display()
            )
        })?,
        input_columns,
        field_columns: job
            .model
            .schema_json
            .as_ref()
            .map(crate::schema::field_names)
            .unwrap_or_default(),
        variants: job.model.n.unwrap_or(1),
        formula_guard: job.output.formula_guard,
        checks: job.checks.clone(),
        judge: job.judge.is_some(),
        extra: job.outputs.iter().map(|o| o.name.clone()).collect(),
    };
    spec.check()?;
    Ok(spec)
}

/// The input rows again, for building the output from the journal when no validation pass
/// kept them (`collect`, `import`, a run stopped before its pass ended). A bad row is listed
/// in place when the job skips bad rows (its failed record says why); otherwise it is an
/// error.
pub fn output_rows(
    job: &Job,
) -> anyhow::Result<impl Iterator<Item = Result<crate::types::Row, String>> + '_> {
    let identity = Identity::of(job);
    Ok(Source::open(&job.input.path, &source_options(job))?
        .keep_bad_rows()
        // A shard's output holds its own rows only.
        .filter(move |r| match r {
            Ok(Ok(row)) => job.holds(&identity.key(row)),
            Ok(Err(bad)) => job.holds(&identity.key(&bad.row)),
            Err(_) => true,
        })
        .map(|r| match r {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(bad)) if job.input.skip_bad_rows => Ok(bad.row),
            Ok(Err(bad)) => Err(bad.error.to_string()),
            Err(e) => Err(e.to_string()),
        }))
}

/// How an output written from the journal ends a command that sent nothing more (`collect`,
/// `import`, `run --recheck`): its status, message and exit code. Rows with no answer are
/// what `pending` says to do about them.
pub(super) fn outcome(
    job: &Job,
    totals: &crate::sink::OutputTotals,
    pending: impl FnOnce(u64) -> String,
) -> (&'static str, Option<String>, u8) {
    let (status, message) = crate::summary::finished(job, totals);
    let message = (totals.pending > 0)
        .then(|| pending(totals.pending))
        .or(message);
    let code = if totals.all_ok() {
        super::exit::OK
    } else {
        super::exit::ROWS_FAILED
    };
    (status, message, code)
}

/// The failed record of a row that could not be read or rendered (the row loop's
/// `Step::Bad`, which carries the row's identity key): no request, no hash.
pub fn bad_row_record(row: u64, id: String, error: String, batch: bool) -> Record {
    Record {
        batch,
        ..Record::failed(row, id, String::new(), 0, error)
    }
}

/// What the current job asks of each row, for building the output when no validation pass
/// kept it: the row's identity and the hash of the request it would send now (no tokens are
/// counted for it).
pub fn wanted(
    planner: &Planner,
    identity: Identity,
) -> impl FnMut(&crate::types::Row) -> Wanted + '_ {
    move |row| Wanted {
        outputs: Vec::new(),
        id: identity.key(row),
        hash: planner.plan_counted(row, Some(0)).ok().map(|p| p.hash),
    }
}
