//! `promptmill run`: the whole pipeline. Validate every row first (no request before the
//! input is known good), then send what is not done yet, journal as responses arrive, and
//! build the output and summary from the journal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use tokio::sync::mpsc;

use super::args::JobArgs;
use super::exit;
use super::mock::{Mock, MockFlags};
use promptmill::budget::Budget;
use promptmill::cache::Cache;
use promptmill::client::{self, Client, Secret};
use promptmill::config::{Job, Mode};
use promptmill::cost::{ModelPrice, PriceTable, Tier};
use promptmill::estimate::{estimate, EstimateOptions};
use promptmill::journal::{self, Record, Status};
use promptmill::limit::Limiter;
use promptmill::plan::Planner;
use promptmill::progress::Progress;
use promptmill::render::Renderer;
use promptmill::resume::{Decision, Resume, ResumeCounts};
use promptmill::scheduler::{Scheduler, StopReason, UsageCounter, UsageGuess, WorkItem};
use promptmill::sink::{self, OutputSpec};
use promptmill::slots::{SlotCursor, SlotFile};
use promptmill::source::{Source, SourceOptions};
use promptmill::summary::Summary;
use promptmill::types::{Money, Usage};
use promptmill::watchdog::{Watchdog, WatchdogLimits};

/// `promptmill run JOB`: run a job (or with `--dry-run`, only estimate it).
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Start the built-in mock API on 127.0.0.1 and send everything there (no key, no cost).
    #[arg(long)]
    pub mock: bool,
    /// Mock API: latency per answer in milliseconds.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub mock_latency_ms: u64,
    /// Mock API: fraction of requests answered with a 500 (0 to 1).
    #[arg(long, default_value_t = 0.0, value_name = "RATE", value_parser = promptmill::bounds::fail_rate)]
    pub mock_fail_rate: f64,
    /// Mock API: requests per minute it enforces.
    #[arg(long, value_name = "N")]
    pub mock_rpm: Option<u32>,
    /// Mock API: tokens per minute it enforces.
    #[arg(long, value_name = "N")]
    pub mock_tpm: Option<u32>,
    /// Only estimate: render and count every row, send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Send rows that failed in an earlier run again (by default they are kept as failed).
    #[arg(long)]
    pub retry_failed: bool,
    /// Print the summary (with --dry-run: the estimate) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// With --dry-run: also print the first N rendered prompts.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub show: usize,
    /// Batch mode (`--mode batch`) settings.
    #[command(flatten)]
    pub batch: super::batch::BatchFlags,
    /// No progress bar or periodic progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// A failure before any request was sent: exit code 2.
#[derive(Debug)]
pub struct CannotStart(pub anyhow::Error);

impl std::fmt::Display for CannotStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for CannotStart {}

/// The price table: the built-in one, or a user file over it.
pub(crate) fn price_table(args: &JobArgs) -> anyhow::Result<std::borrow::Cow<'static, PriceTable>> {
    Ok(match &args.prices {
        Some(p) => std::borrow::Cow::Owned(PriceTable::merged_over_builtin(p)?),
        None => std::borrow::Cow::Borrowed(PriceTable::builtin()),
    })
}

/// Runs `promptmill run`.
pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let mut job = args.job.load().map_err(|e| anyhow!(CannotStart(e)))?;
    let prices = price_table(&args.job).map_err(|e| anyhow!(CannotStart(e)))?;
    let price = prices.lookup(&job.model.name).cloned();
    // One run of a job at a time, claimed before anything is read or sent. The dry run only
    // reads, so it neither takes the lock nor waits for it.
    let _lock = if args.dry_run {
        None
    } else {
        Some(claim(&job)?)
    };

    let mut mock = None;
    if args.mock {
        let server = Mock::start(MockFlags {
            rpm: args.mock_rpm,
            tpm: args.mock_tpm,
            latency_ms: args.mock_latency_ms,
            fail_rate: args.mock_fail_rate,
        })
        .await
        .map_err(start_err)?;
        job.api.base_url = Some(server.base_url());
        mock = Some(server);
    }

    let outcome = if job.mode == Mode::Batch && !args.dry_run {
        super::batch::run(&args, &job, price, &prices).await
    } else {
        run_job(&args, &job, price, &prices, started).await
    };
    if let Some(m) = mock {
        m.shutdown().await;
    }
    outcome
}

/// Claims the job for this process: the output paths are checked, then the job's lock is
/// taken (see [`promptmill::job_lock`]). Every command that writes the journal or the batch state
/// calls this first and holds the lock until it ends; failure is exit 2, nothing sent.
pub(crate) fn claim(job: &Job) -> anyhow::Result<promptmill::job_lock::JobLock> {
    promptmill::output_paths::check(job).map_err(start_err)?;
    promptmill::job_lock::acquire(job).map_err(start_err)
}

pub(crate) fn start_err(e: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow!(CannotStart(e.into()))
}

/// The planner for a job. Row identity hashes include where requests go, so mock answers are
/// never taken for real ones; the mock's port changes every run, so it is hashed as `mock:`.
pub(crate) fn planner_for(job: &Job, mock: bool) -> anyhow::Result<Planner> {
    let renderer = Renderer::new(&job.prompt_spec())?;
    let provider = client::provider_for(job);
    let identity = if mock {
        "mock:".to_string()
    } else {
        client::base_url(job)
    };
    Ok(Planner::new(job, renderer, provider, &identity))
}

pub(crate) fn source_options(job: &Job) -> SourceOptions {
    SourceOptions {
        format: job.input_format(),
        id_column: job.input.id.clone(),
    }
}

/// What the producer did while feeding the scheduler.
#[derive(Debug, Default)]
struct Produced {
    sent: u64,
    resume: ResumeCounts,
    /// Rows answered from the response cache in this run.
    cached: u64,
    bad_rows: u64,
    expected_cost: Option<Money>,
}

async fn run_job(
    args: &RunArgs,
    job: &Job,
    price: Option<ModelPrice>,
    prices: &PriceTable,
    started: Instant,
) -> anyhow::Result<u8> {
    let mut planner = Arc::new(planner_for(job, args.mock).map_err(start_err)?);

    let spec = output_spec(job).map_err(start_err)?;

    if !args.dry_run && job.budget.max_usd.is_some() && price.is_none() {
        return Err(start_err(anyhow!(
            "budget.max_usd is set but there is no price for model '{}', so the cap cannot be \
             enforced; give a price table with --prices FILE",
            job.model.name
        )));
    }
    // Each row's prompt tokens, counted once in the validation pass and read back by the
    // producer, so that the run does not keep the tokenizer's tables (~40 MB).
    let token_counts = if args.dry_run {
        None
    } else {
        let counts = SlotFile::create_beside(&job.journal_path())
            .context("cannot create a temporary file")
            .map_err(start_err)?;
        Some(Arc::new(counts))
    };
    // The validation pass and the dry run are one and the same: every row rendered and
    // counted before a single request is sent.
    let validated = {
        let (job2, planner2, price2) = (job.clone(), planner.clone(), price.clone());
        let counts = token_counts.clone();
        let show = if args.dry_run { args.show } else { 0 };
        let retry_failed = args.retry_failed;
        tokio::task::spawn_blocking(move || {
            // Read-only: the journal is repaired only when the run really starts.
            let path = job2.journal_path();
            let resume = match journal::read_index(&path)? {
                Some(index) => Some(Resume::new(&path, index, retry_failed)?),
                None => None,
            };
            let opts = EstimateOptions {
                price: price2.as_ref(),
                show,
                workers: 0,
                resume: resume.as_ref(),
                record_tokens: counts.as_deref(),
            };
            estimate(&job2, &planner2, &opts)
        })
        .await
        .context("validation task failed")
        .map_err(start_err)?
        .map_err(start_err)?
    };
    if args.dry_run {
        if let Some(line) = validated.resume.line() {
            eprintln!("{line}");
        }
        eprint!("{}", validated.render());
        if job.budget.max_usd.is_some() && price.is_none() {
            eprintln!(
                "warning: budget.max_usd is set but model '{}' has no price: a run would refuse \
                 to start; give a price table with --prices FILE",
                job.model.name
            );
        }
        if args.json {
            super::print_stdout(&format!("{}\n", serde_json::to_string_pretty(&validated)?))?;
        }
        return Ok(exit::OK);
    }
    // The estimate's copy of the planner is gone with its task.
    if let Some(p) = Arc::get_mut(&mut planner) {
        p.release_tokenizer();
    }

    let key = if args.mock {
        client::api_key(job).unwrap_or_else(|_| Secret::new("mock-key".into()))
    } else {
        client::api_key(job).map_err(start_err)?
    };
    let client = Client::for_job(job, key).map_err(start_err)?;
    let cap = job.budget.max_usd.map(Money::from_usd);

    let cache = match &job.cache.dir {
        Some(dir) => Some(Cache::open(dir).map_err(start_err)?),
        None => None,
    };
    let journal_path = job.journal_path();
    let writer = journal::open(&journal_path).map_err(start_err)?;
    let index_before = writer.index().clone();
    let budget = Budget::new(cap, index_before.spent);
    let limiter = Limiter::new(job.limits.requests_per_minute, job.limits.tokens_per_minute)
        // Anthropic counts actual output against its token limit; OpenAI charges max_tokens.
        .refund_unused_tokens(job.api.provider == promptmill::config::ProviderKind::Anthropic);
    let progress = Progress::new(validated.rows, args.quiet || args.json);
    let mut sched = Scheduler::new(
        client,
        limiter,
        budget,
        writer,
        price.clone(),
        Tier::Live,
        job.limits.max_retries,
        job.limits.max_in_flight,
        progress.clone(),
    )
    .with_cache(cache.clone());
    sched.schema = job.model.schema_json.clone();
    sched.usage_counter = Some(UsageCounter::new(&job.model.name, planner.exact_tokens()));
    sched.watchdog = Watchdog::new(WatchdogLimits {
        errors: job.limits.stop_after_errors,
        refused: (job.limits.stop_after_refused_secs > 0)
            .then(|| Duration::from_secs(u64::from(job.limits.stop_after_refused_secs))),
    });
    let sched = Arc::new(sched);
    // Before anything is sent: what an earlier run already did.
    if let Some(line) = validated.resume.line() {
        eprintln!("{line}");
    }
    let reporter = progress.spawn_plain_reporter(Duration::from_secs(10));
    let signals = tokio::spawn(watch_signals(sched.clone()));

    // The producer reads and plans rows on a blocking thread and feeds the scheduler through
    // a small bounded channel: memory stays flat however many rows there are.
    let (tx, rx) = mpsc::channel::<WorkItem>(256);
    let producer = {
        let (job, planner, sched, price) =
            (job.clone(), planner.clone(), sched.clone(), price.clone());
        let resume = Resume::new(&journal_path, index_before.clone(), args.retry_failed)
            .map_err(start_err)?;
        tokio::task::spawn_blocking(move || {
            produce(
                &job,
                &planner,
                &sched,
                price.as_ref(),
                resume,
                cache.as_ref(),
                token_counts.as_deref(),
                tx,
            )
        })
    };
    let stop = sched.clone().run(rx).await;
    let produced = producer
        .await
        .context("row producer failed")?
        .context("reading rows")?;
    signals.abort();
    let _ = signals.await; // the aborted task must drop its handle on the scheduler
    if let Some(r) = reporter {
        r.abort();
    }
    progress.finish();

    let sched = Arc::try_unwrap(sched).map_err(|_| anyhow!("scheduler still shared"))?;
    let stats = sched.stats;
    let spent_total = sched.budget.spent();
    let writer = sched
        .journal
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let unpriced_total = writer.index().unpriced;
    let index = writer.finish()?;

    // Build the output from the journal, in input order, atomically.
    let totals = sink::write_output(&spec, output_rows(job)?, &index, &journal_path)?;

    use std::sync::atomic::Ordering::Relaxed;
    let wall = started.elapsed().as_secs_f64();
    let minutes = (wall / 60.0).max(1e-9);
    let attempts = stats.attempts.load(Relaxed);
    let (status, message, code) = match &stop {
        StopReason::Completed if totals.failed == 0 && totals.pending == 0 => {
            ("completed", None, exit::OK)
        }
        StopReason::Completed => {
            let (status, message) = promptmill::summary::finished(job, &totals);
            (status, message, exit::ROWS_FAILED)
        }
        StopReason::Aborted(m) => ("aborted", Some(m.clone()), exit::STOPPED),
        StopReason::Budget => (
            "budget",
            Some(format!(
                "budget cap reached: {} spent of {}, {} rows not run; raise budget.max_usd \
                 (or --max-usd) and run again to finish",
                spent_total,
                cap.unwrap_or_default(),
                totals.pending
            )),
            exit::STOPPED,
        ),
        StopReason::Interrupted => (
            "interrupted",
            Some(format!(
                "interrupted; {} rows not run. Run the same command again to resume",
                totals.pending
            )),
            exit::STOPPED,
        ),
    };
    let priced = price.is_some();
    let provider = if args.mock {
        "mock".into()
    } else {
        format!("{:?}", job.api.provider).to_lowercase()
    };
    let summary = Summary {
        status: status.into(),
        message,
        exit_code: code as i32,
        resumed: produced.resume.done,
        changed: produced.resume.changed,
        cost_this_run_usd: priced.then(|| Money(stats.cost_pico.load(Relaxed)).as_usd()),
        estimated_cost_usd: produced.expected_cost.map(Money::as_usd),
        spent_total_usd: (priced && unpriced_total == 0).then(|| spent_total.as_usd()),
        wall_seconds: wall,
        requests: attempts,
        retries: stats.retries.load(Relaxed),
        rate_limited: stats.rate_limited.load(Relaxed),
        server_errors: stats.server_errors.load(Relaxed),
        connection_errors: stats.connection_errors.load(Relaxed),
        timeouts: stats.timeouts.load(Relaxed),
        requests_per_minute: attempts as f64 / minutes,
        tokens_per_minute: stats.tokens.load(Relaxed) as f64 / minutes,
        prices: format!("{} ({})", prices.source(), prices.as_of()),
        ..Summary::for_output(job, "live", provider, &totals, priced)
    };
    summary.publish(job, "error", args.json)?;
    Ok(code)
}

/// Reads rows again, plans them, skips what the journal says is done, and feeds the rest to
/// the scheduler. Runs on a blocking thread.
#[allow(clippy::too_many_arguments)]
fn produce(
    job: &Job,
    planner: &Planner,
    sched: &Scheduler,
    price: Option<&ModelPrice>,
    mut resume: Resume,
    cache: Option<&Cache>,
    token_counts: Option<&SlotFile>,
    tx: mpsc::Sender<WorkItem>,
) -> anyhow::Result<Produced> {
    let mut counted = SlotCursor::over(token_counts);
    let mut out = Produced {
        expected_cost: price.map(|_| Money::ZERO),
        ..Produced::default()
    };
    let expected_out = job
        .estimate
        .assume_output_tokens
        .map(u64::from)
        .unwrap_or(planner.max_completion_tokens());
    let source = Source::open(&job.input.path, &source_options(job))?;
    for row in source.keep_bad_rows() {
        if sched.stop.is_cancelled() {
            break;
        }
        // The estimate pass lets bad rows through only when the job skips them: each becomes a
        // failed row, journaled with the reason, so the output lists it in place.
        let row = match row {
            Ok(Ok(r)) => r,
            Ok(Err(bad)) if job.input.skip_bad_rows => {
                out.bad_rows += 1;
                record_bad_row(sched, &bad.row, bad.error.to_string())?;
                continue;
            }
            Ok(Err(bad)) => bail!("{}", bad.error),
            Err(e) => bail!("{e}"),
        };
        let tokens = counted.get(row.index).context("reading token counts")?;
        let planned = match planner.plan_counted(&row, tokens) {
            Ok(p) => p,
            Err(e) => {
                // The estimate pass let it through only because the job skips bad rows.
                out.bad_rows += 1;
                let file = job.input.path.display();
                record_bad_row(sched, &row, format!("{file}: {e}"))?;
                continue;
            }
        };
        let decision = resume.decide(row.index, &row.id, &planned.hash)?;
        out.resume.add(decision);
        if !decision.send() {
            let ok = decision == Decision::Done;
            sched.progress.row_done(ok, Money::ZERO);
            continue;
        }
        // A cached answer to the very same request: recorded at no cost, and no request,
        // rate-limit or budget is used for it.
        if let Some(hit) = cache.and_then(|c| c.get(&planned.hash)) {
            let rec = Record {
                row: row.index,
                id: row.id.clone(),
                hash: planned.hash,
                status: Status::Ok,
                choices: hit.choices,
                usage: hit.usage,
                cost_pico: Some(0),
                attempts: 0,
                error: None,
                cached: true,
                batch: false,
                fields: hit.fields,
            };
            sched
                .journal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&rec)?;
            out.cached += 1;
            sched.progress.row_done(true, Money::ZERO);
            continue;
        }
        let reserve_prompt = planner.prompt_tokens_to_reserve(planned.prompt_tokens);
        let max_out = planner.max_completion_tokens();
        let worst = Usage {
            prompt_tokens: reserve_prompt,
            completion_tokens: max_out,
            ..Usage::default()
        };
        let worst_cost = price
            .map(|p| p.cost(&worst, Tier::Live))
            .unwrap_or(Money::ZERO);
        if let (Some(total), Some(p)) = (out.expected_cost, price) {
            let u = Usage {
                prompt_tokens: planned.prompt_tokens,
                completion_tokens: expected_out,
                ..Usage::default()
            };
            out.expected_cost = Some(total.saturating_add(p.cost(&u, Tier::Live)));
        }
        let item = WorkItem {
            row: row.index,
            id: row.id,
            hash: planned.hash,
            body: planned.body,
            limiter_tokens: reserve_prompt + max_out,
            worst_cost,
            guess: UsageGuess {
                prompt_tokens: planned.prompt_tokens,
                worst,
            },
        };
        out.sent += 1;
        if tx.blocking_send(item).is_err() {
            break; // the scheduler stopped
        }
    }
    Ok(out)
}

/// The output's shape: input columns (or the chosen subset, each checked), the structured
/// output's fields, the variants. Checked before anything is sent.
pub(crate) fn output_spec(job: &Job) -> anyhow::Result<OutputSpec> {
    promptmill::output_paths::check(job)?;
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
                "{}: output must be .csv or .jsonl",
                job.output.path.display()
            )
        })?,
        input_columns,
        field_columns: job
            .model
            .schema_json
            .as_ref()
            .map(promptmill::schema::field_names)
            .unwrap_or_default(),
        variants: job.model.n.unwrap_or(1),
        formula_guard: job.output.formula_guard,
    };
    spec.check()?;
    Ok(spec)
}

/// The input rows again, for building the output from the journal. A bad row is listed in
/// place when the job skips bad rows (its failed record says why); otherwise it is an error.
pub(crate) fn output_rows(
    job: &Job,
) -> anyhow::Result<impl Iterator<Item = Result<promptmill::types::Row, String>> + '_> {
    Ok(Source::open(&job.input.path, &source_options(job))?
        .keep_bad_rows()
        .map(|r| match r {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(bad)) if job.input.skip_bad_rows => Ok(bad.row),
            Ok(Err(bad)) => Err(bad.error.to_string()),
            Err(e) => Err(e.to_string()),
        }))
}

/// The failed record of a row that could not be read or rendered: no request, no hash.
pub(crate) fn bad_row_record(row: &promptmill::types::Row, error: String, batch: bool) -> Record {
    Record {
        batch,
        ..Record::failed(row.index, row.id.clone(), String::new(), 0, error)
    }
}

/// Journals a row that could not be read or rendered as failed, with the reason.
fn record_bad_row(
    sched: &Scheduler,
    row: &promptmill::types::Row,
    error: String,
) -> anyhow::Result<()> {
    let rec = bad_row_record(row, error, false);
    sched
        .journal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .append(&rec)?;
    sched.progress.row_done(false, Money::ZERO);
    Ok(())
}

/// First Ctrl-C/SIGTERM: stop scheduling and let requests in flight finish (up to a grace
/// period). Second: exit at once; the journal is consistent after every record.
async fn watch_signals(sched: Arc<Scheduler>) {
    const GRACE: Duration = Duration::from_secs(10);
    if wait_signal().await.is_err() {
        return;
    }
    eprintln!(
        "\ninterrupted: finishing the requests in flight (up to {}s); press Ctrl-C again to quit now",
        GRACE.as_secs()
    );
    sched.interrupt();
    tokio::select! {
        _ = wait_signal() => {
            eprintln!("interrupted again: quitting now; run the same command to resume");
            std::process::exit(exit::STOPPED as i32);
        }
        _ = tokio::time::sleep(GRACE) => {
            sched.cancel.cancel();
        }
    }
}

async fn wait_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
