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
use crate::budget::Budget;
use crate::client::{self, Client, Secret};
use crate::config::{Job, Mode};
use crate::cost::{ModelPrice, PriceTable, Tier};
use crate::journal::{self, JournalReader, Record, Status};
use crate::limit::Limiter;
use crate::mock::{MockConfig, MockServer};
use crate::plan::Planner;
use crate::progress::Progress;
use crate::render::Renderer;
use crate::scheduler::{Scheduler, StopReason, WorkItem};
use crate::sink::{self, OutputSpec};
use crate::source::{Source, SourceOptions};
use crate::summary::Summary;
use crate::types::{Money, Usage};

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
    /// Mock API: fraction of requests answered with a 500.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
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
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
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

/// What the validation pass learned about the rows.
#[derive(Debug, Default, Clone)]
pub(crate) struct Validated {
    rows: u64,
    bad_rows: u64,
    prompt_tokens: u64,
    expected_cost: Option<Money>,
}

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

    let mut mock = None;
    if args.mock {
        let cfg = MockConfig {
            rpm: args.mock_rpm,
            tpm: args.mock_tpm,
            latency_ms: args.mock_latency_ms,
            fail_rate: args.mock_fail_rate,
            ..MockConfig::default()
        };
        let server = MockServer::start(cfg, ([127, 0, 0, 1], 0).into())
            .await
            .context("cannot start the mock API")
            .map_err(|e| anyhow!(CannotStart(e)))?;
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

/// Renders and counts every row; the first bad row stops everything (unless the job skips
/// bad rows), before a single request is sent.
pub(crate) fn validate(
    job: &Job,
    planner: &Planner,
    price: Option<&ModelPrice>,
) -> anyhow::Result<Validated> {
    let source = Source::open(&job.input.path, &source_options(job))?;
    let file = job.input.path.display().to_string();
    let mut v = Validated {
        expected_cost: price.map(|_| Money::ZERO),
        ..Validated::default()
    };
    let expected_out = job
        .estimate
        .assume_output_tokens
        .map(u64::from)
        .unwrap_or(planner.max_completion_tokens());
    for row in source {
        let row = match row {
            Ok(r) => r,
            Err(e) if job.input.skip_bad_rows && e.is_row_error() => {
                v.rows += 1;
                v.bad_rows += 1;
                continue;
            }
            Err(e) => bail!("{e}"),
        };
        v.rows += 1;
        match planner.plan(&row) {
            Ok(p) => {
                v.prompt_tokens += p.prompt_tokens;
                if let (Some(total), Some(pr)) = (v.expected_cost, price) {
                    let u = Usage {
                        prompt_tokens: p.prompt_tokens,
                        completion_tokens: expected_out,
                        ..Usage::default()
                    };
                    v.expected_cost = Some(total.saturating_add(pr.cost(&u, Tier::Live)));
                }
            }
            Err(e) if job.input.skip_bad_rows => {
                tracing::warn!("{file}: {e}");
                v.bad_rows += 1;
            }
            Err(e) => bail!("{file}: {e}"),
        }
    }
    if v.rows == 0 {
        bail!("{file}: no data rows (the file is empty or has only a header)");
    }
    Ok(v)
}

/// What the producer did while feeding the scheduler.
#[derive(Debug, Default)]
struct Produced {
    sent: u64,
    resumed: u64,
    changed: u64,
    kept_failed: u64,
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
    let planner = Arc::new(planner_for(job, args.mock).map_err(start_err)?);

    // Output columns: input columns (or the chosen subset), checked before anything else.
    let columns = Source::open(&job.input.path, &source_options(job))
        .map_err(start_err)?
        .columns()
        .to_vec();
    let input_columns = match &job.output.columns {
        Some(chosen) => {
            for c in chosen {
                if !columns.contains(c) {
                    return Err(start_err(anyhow!(
                        "output.columns: '{c}' is not a column of {} (columns: {})",
                        job.input.path.display(),
                        columns.join(", ")
                    )));
                }
            }
            chosen.clone()
        }
        None => columns,
    };
    let spec = OutputSpec {
        path: job.output.path.clone(),
        format: job
            .output_format()
            .ok_or_else(|| start_err(anyhow!("bad output format")))?,
        input_columns,
        field_columns: Vec::new(),
        variants: job.model.n.unwrap_or(1),
        formula_guard: job.output.formula_guard,
    };
    spec.check().map_err(start_err)?;

    let validated = {
        let (job2, planner2, price2) = (job.clone(), planner.clone(), price.clone());
        tokio::task::spawn_blocking(move || validate(&job2, &planner2, price2.as_ref()))
            .await
            .context("validation task failed")
            .map_err(start_err)?
            .map_err(start_err)?
    };
    if args.dry_run {
        eprintln!(
            "dry run: {} rows, {} prompt tokens{}, expected cost {}",
            validated.rows,
            validated.prompt_tokens,
            if planner.exact_tokens() {
                ""
            } else {
                " (approximate)"
            },
            validated
                .expected_cost
                .map(|c| c.to_string())
                .unwrap_or_else(|| "unknown".into())
        );
        return Ok(exit::OK);
    }

    let key = if args.mock {
        client::api_key(job).unwrap_or_else(|_| Secret::new("mock-key".into()))
    } else {
        client::api_key(job).map_err(start_err)?
    };
    let client = Client::for_job(job, key).map_err(start_err)?;
    let cap = job.budget.max_usd.map(Money::from_usd);
    if cap.is_some() && price.is_none() {
        return Err(start_err(anyhow!(
            "budget.max_usd is set but there is no price for model '{}', so the cap cannot be \
             enforced; give a price table with --prices FILE",
            job.model.name
        )));
    }

    let journal_path = job.journal_path();
    let writer = journal::open(&journal_path).map_err(start_err)?;
    let index_before = writer.index().clone();
    let budget = Budget::new(cap, index_before.spent);
    let limiter = Limiter::new(job.limits.requests_per_minute, job.limits.tokens_per_minute);
    let progress = Progress::new(validated.rows, args.quiet || args.json);
    let sched = Arc::new(Scheduler::new(
        client,
        limiter,
        budget,
        writer,
        price.clone(),
        Tier::Live,
        job.limits.max_retries,
        job.limits.max_in_flight,
        progress.clone(),
    ));
    let reporter = progress.spawn_plain_reporter(Duration::from_secs(10));
    let signals = tokio::spawn(watch_signals(sched.clone()));

    // The producer reads and plans rows on a blocking thread and feeds the scheduler through
    // a small bounded channel: memory stays flat however many rows there are.
    let (tx, rx) = mpsc::channel::<WorkItem>(256);
    let producer = {
        let (job, planner, sched, price) =
            (job.clone(), planner.clone(), sched.clone(), price.clone());
        let index = index_before.clone();
        let retry_failed = args.retry_failed;
        tokio::task::spawn_blocking(move || {
            produce(
                &job,
                &planner,
                &sched,
                price.as_ref(),
                &index,
                retry_failed,
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
    let rows = Source::open(&job.input.path, &source_options(job))?.filter_map(|r| match r {
        Ok(r) => Some(Ok(r)),
        Err(e) if job.input.skip_bad_rows && e.is_row_error() => None,
        Err(e) => Some(Err(e.to_string())),
    });
    let totals = sink::write_output(&spec, rows, &index, &journal_path)?;

    use std::sync::atomic::Ordering::Relaxed;
    let wall = started.elapsed().as_secs_f64();
    let minutes = (wall / 60.0).max(1e-9);
    let attempts = stats.attempts.load(Relaxed);
    let (status, message, code) = match &stop {
        StopReason::Completed if totals.failed == 0 && totals.pending == 0 => {
            ("completed", None, exit::OK)
        }
        StopReason::Completed => ("completed", None, exit::ROWS_FAILED),
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
    let summary = Summary {
        job: job.display_name(),
        model: job.model.name.clone(),
        provider: if args.mock {
            "mock".into()
        } else {
            format!("{:?}", job.api.provider).to_lowercase()
        },
        mode: "live".into(),
        output: job.output.path.display().to_string(),
        journal: journal_path.display().to_string(),
        status: status.into(),
        message: message.clone(),
        exit_code: code as i32,
        rows: totals.rows,
        succeeded: totals.succeeded,
        failed: totals.failed,
        pending: totals.pending,
        cached: totals.cached,
        resumed: produced.resumed,
        changed: produced.changed,
        prompt_tokens: totals.usage.prompt_tokens,
        completion_tokens: totals.usage.completion_tokens,
        cached_tokens: totals.usage.cached_tokens,
        reasoning_tokens: totals.usage.reasoning_tokens,
        cost_usd: totals.cost.filter(|_| priced).map(Money::as_usd),
        cost_this_run_usd: priced.then(|| Money(stats.cost_pico.load(Relaxed)).as_usd()),
        estimated_cost_usd: produced.expected_cost.map(Money::as_usd),
        spent_total_usd: (priced && unpriced_total == 0).then(|| spent_total.as_usd()),
        budget_usd: job.budget.max_usd,
        wall_seconds: wall,
        requests: attempts,
        retries: stats.retries.load(Relaxed),
        rate_limited: stats.rate_limited.load(Relaxed),
        server_errors: stats.server_errors.load(Relaxed),
        requests_per_minute: attempts as f64 / minutes,
        tokens_per_minute: stats.tokens.load(Relaxed) as f64 / minutes,
        prices: format!("{} ({})", prices.source(), prices.as_of()),
    };
    let json = serde_json::to_vec_pretty(&summary)?;
    sink::write_atomic(&job.summary_path(), &json)
        .with_context(|| format!("{}: cannot write summary", job.summary_path().display()))?;
    if let Some(m) = &message {
        eprintln!("error: {m}");
    }
    eprint!("{}", summary.render());
    if args.json {
        println!("{}", String::from_utf8_lossy(&json));
    }
    Ok(code)
}

/// Reads rows again, plans them, skips what the journal says is done, and feeds the rest to
/// the scheduler. Runs on a blocking thread.
fn produce(
    job: &Job,
    planner: &Planner,
    sched: &Scheduler,
    price: Option<&ModelPrice>,
    index: &journal::JournalIndex,
    retry_failed: bool,
    tx: mpsc::Sender<WorkItem>,
) -> anyhow::Result<Produced> {
    let mut out = Produced {
        expected_cost: price.map(|_| Money::ZERO),
        ..Produced::default()
    };
    let mut reader = if index.records > 0 {
        Some(JournalReader::open(&job.journal_path())?)
    } else {
        None
    };
    let expected_out = job
        .estimate
        .assume_output_tokens
        .map(u64::from)
        .unwrap_or(planner.max_completion_tokens());
    let source = Source::open(&job.input.path, &source_options(job))?;
    for row in source {
        if sched.stop.is_cancelled() {
            break;
        }
        let row = match row {
            Ok(r) => r,
            Err(e) if job.input.skip_bad_rows && e.is_row_error() => {
                out.bad_rows += 1;
                continue;
            }
            Err(e) => bail!("{e}"),
        };
        let planned = match planner.plan(&row) {
            Ok(p) => p,
            Err(e) => {
                // validate() let it through only because the job skips bad rows.
                out.bad_rows += 1;
                let rec = Record {
                    row: row.index,
                    id: row.id.clone(),
                    hash: String::new(),
                    status: Status::Failed,
                    choices: Vec::new(),
                    usage: None,
                    cost_pico: None,
                    attempts: 0,
                    error: Some(e.to_string()),
                    cached: false,
                    batch: false,
                    fields: None,
                };
                sched
                    .journal
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .append(&rec)?;
                continue;
            }
        };
        if let Some(r) = reader.as_mut() {
            if let Some(prev) = r.get(index, row.index)? {
                if prev.id == row.id && prev.hash == planned.hash {
                    match prev.status {
                        Status::Ok => {
                            out.resumed += 1;
                            sched.progress.row_done(true, Money::ZERO);
                            continue;
                        }
                        Status::Failed if !retry_failed => {
                            out.kept_failed += 1;
                            sched.progress.row_done(false, Money::ZERO);
                            continue;
                        }
                        Status::Failed => {}
                    }
                } else if prev.id == row.id {
                    out.changed += 1;
                }
            }
        }
        let reserve_prompt = planner.prompt_tokens_to_reserve(planned.prompt_tokens);
        let max_out = planner.max_completion_tokens();
        let worst_cost = price
            .map(|p| {
                p.cost(
                    &Usage {
                        prompt_tokens: reserve_prompt,
                        completion_tokens: max_out,
                        ..Usage::default()
                    },
                    Tier::Live,
                )
            })
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
        };
        out.sent += 1;
        if tx.blocking_send(item).is_err() {
            break; // the scheduler stopped
        }
    }
    Ok(out)
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
