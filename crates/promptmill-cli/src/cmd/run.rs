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
use super::signals::Interrupt;
use promptmill::cache::Cache;
use promptmill::client::{self, Client, Secret};
use promptmill::config::{Job, Mode};
use promptmill::cost::{ModelPrice, PriceTable, Tier};
use promptmill::estimate::{estimate, EstimateOptions};
use promptmill::identity::{Identity, RunRequests, Wanted};
use promptmill::journal::{self, Record, Status};
use promptmill::limit::Limiter;
use promptmill::pipeline::ledger::{self, Cap, Caps, Ledger};
use promptmill::pipeline::rows::{Spool, Step};
use promptmill::plan::Planner;
use promptmill::progress::Progress;
use promptmill::render::Renderer;
use promptmill::resume::{Decision, Resume, ResumeCounts};
use promptmill::scheduler::{Scheduler, StopReason, UsageCounter, UsageGuess, WorkItem};
use promptmill::sink::{self, OutputSpec};
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
    // Before anything else: a signal from here on is a request to stop, never a kill.
    let interrupt = Interrupt::install()
        .context("cannot install the Ctrl-C/SIGTERM handlers")
        .map_err(start_err)?;
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
        let flags = MockFlags {
            rpm: args.mock_rpm,
            tpm: args.mock_tpm,
            latency_ms: args.mock_latency_ms,
            fail_rate: args.mock_fail_rate,
        };
        mock = Some(start_mock(&mut job, flags).await?);
    }

    let outcome = if job.mode == Mode::Batch && !args.dry_run {
        super::batch::run(&args, &job, price, &prices, &interrupt).await
    } else {
        run_job(&args, &job, price, &prices, started, &interrupt).await
    };
    if let Some(m) = mock {
        m.shutdown().await;
    }
    outcome
}

/// Starts the built-in mock API on an ephemeral 127.0.0.1 port and points the job at it.
pub(crate) async fn start_mock(job: &mut Job, flags: MockFlags) -> anyhow::Result<Mock> {
    let server = Mock::start(flags).await.map_err(start_err)?;
    job.api.base_url = Some(server.base_url());
    Ok(server)
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
    /// The requests asked for, and the rows waiting for an answer asked for by another row.
    requests: Option<RunRequests>,
}

async fn run_job(
    args: &RunArgs,
    job: &Job,
    price: Option<ModelPrice>,
    prices: &PriceTable,
    started: Instant,
    interrupt: &Interrupt,
) -> anyhow::Result<u8> {
    let mut planner = Arc::new(planner_for(job, args.mock).map_err(start_err)?);

    let spec = output_spec(job).map_err(start_err)?;
    let seed = retry_seed().map_err(start_err)?;

    if !args.dry_run && job.budget.any_cap() && price.is_none() {
        return Err(start_err(anyhow!(
            "{} is set but there is no price for model '{}', so the cap cannot be enforced; \
             give a price table with --prices FILE",
            cap_names(job),
            job.model.name
        )));
    }
    // Answers already in the response cache are found in the validation pass. A dry run
    // only reads: it looks in a cache folder that exists and creates none.
    let cache = match &job.cache.dir {
        Some(dir) if !args.dry_run || dir.is_dir() => Some(Cache::open(dir).map_err(start_err)?),
        _ => None,
    };
    // The validation pass and the dry run are one and the same: every row rendered, counted
    // and decided before a single request is sent. A run keeps what the pass decided in a
    // spool, which the producer and the output read instead of the input. A signal
    // meanwhile stops waiting for it: nothing is sent, and the output and summary are
    // written from the journal.
    let validation = {
        let (job2, planner2, price2) = (job.clone(), planner.clone(), price.clone());
        let cache2 = cache.clone();
        let show = if args.dry_run { args.show } else { 0 };
        let (retry_failed, dry_run) = (args.retry_failed, args.dry_run);
        tokio::task::spawn_blocking(move || {
            // Read-only: the journal is repaired only when the run really starts.
            let path = job2.journal_path();
            let resume = match journal::read_index(&path)? {
                Some(index) => Some(Resume::new(
                    &path,
                    index,
                    retry_failed,
                    Identity::of(&job2),
                )?),
                None => None,
            };
            let opts = EstimateOptions {
                price: price2.as_ref(),
                show,
                workers: 0,
                resume: resume.as_ref(),
                cache: cache2.as_ref(),
                tier: Tier::Live,
                spool_beside: (!dry_run).then_some(path.as_path()),
            };
            estimate(&job2, &planner2, &opts)
        })
    };
    let validated = tokio::select! {
        biased;
        _ = interrupt.wait() => None,
        v = validation => Some(
            v.context("validation task failed")
                .map_err(start_err)?
                .map_err(start_err)?,
        ),
    };
    let (validated, spool) = match validated {
        Some((estimate, spool)) => (Some(estimate), spool.map(Arc::new)),
        None => (None, None),
    };
    let identity = Identity::of(job);
    if args.dry_run {
        let Some(validated) = validated else {
            eprintln!("interrupted: the estimate was not finished");
            return Ok(exit::STOPPED);
        };
        if let Some(line) = validated.resume.line(identity) {
            eprintln!("{line}");
        }
        eprint!("{}", validated.render());
        if job.budget.any_cap() && price.is_none() {
            eprintln!(
                "warning: {} is set but model '{}' has no price: a run would refuse to start; \
                 give a price table with --prices FILE",
                cap_names(job),
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
    let caps = Caps::of(&job.budget);

    let journal_path = job.journal_path();
    let mut writer = journal::open(&journal_path).map_err(start_err)?;
    // Every line this run writes names the endpoint, so mock spend never meets real spend.
    let endpoint = ledger::ledger_of(args.mock);
    writer.set_endpoint(endpoint);
    let index_before = writer.index().clone();
    let unsettled = index_before.spent.unsettled(endpoint);
    if unsettled.priced > Money::ZERO || unsettled.unpriced > 0 {
        eprintln!(
            "note: an earlier run was killed with requests in flight; their worst case ({}) \
             counts as spent",
            unsettled
                .known()
                .map_or_else(|| "unknown".to_string(), |m| m.to_string())
        );
    }
    let ledger = Arc::new(Ledger::new(caps, index_before.spent.on(endpoint)));
    let limiter = Limiter::new(job.limits.requests_per_minute, job.limits.tokens_per_minute)
        // Anthropic counts actual output against its token limit; OpenAI charges max_tokens.
        .refund_unused_tokens(job.api.provider == promptmill::config::ProviderKind::Anthropic);
    let rows = validated.as_ref().map_or(0, |v| v.rows);
    let progress = Progress::new(rows, args.quiet || args.json, Some(ledger.clone()));
    let mut sched = Scheduler::new(
        client,
        limiter,
        ledger.clone(),
        writer,
        price.clone(),
        Tier::Live,
        job.limits.max_retries,
        job.limits.max_in_flight,
        progress.clone(),
    )
    .with_cache(cache.clone());
    sched.schema = job.model.schema_json.clone();
    if let Some(seed) = seed {
        sched.retry.seed = seed;
    }
    sched.usage_counter = Some(UsageCounter::new(&job.model.name, planner.exact_tokens()));
    sched.watchdog = Watchdog::new(WatchdogLimits {
        errors: job.limits.stop_after_errors,
        refused: (job.limits.stop_after_refused_secs > 0)
            .then(|| Duration::from_secs(u64::from(job.limits.stop_after_refused_secs))),
    });
    if interrupt.requested() {
        // Stopped before the first request: nothing is sent, rows stay pending.
        sched.interrupt();
    }
    let sched = Arc::new(sched);
    // Before anything is sent: what an earlier run already did.
    if let Some(line) = validated.as_ref().and_then(|v| v.resume.line(identity)) {
        eprintln!("{line}");
    }
    let reporter = progress.spawn_plain_reporter(Duration::from_secs(10));
    let signals = tokio::spawn(watch_signals(sched.clone(), interrupt.clone()));

    // The producer reads the rows' Steps back from the spool on a blocking thread and feeds
    // the scheduler through a small bounded channel: memory stays flat however many rows
    // there are.
    let (tx, rx) = mpsc::channel::<WorkItem>(256);
    let producer = {
        let (job, planner, sched, price) =
            (job.clone(), planner.clone(), sched.clone(), price.clone());
        let spool = spool.clone();
        tokio::task::spawn_blocking(move || match spool {
            Some(spool) => produce(&job, &planner, &sched, price.as_ref(), &spool, tx),
            // Interrupted before the validation pass ended: nothing to send.
            None => Ok(Produced::default()),
        })
    };
    let stop = sched.clone().run(rx).await;
    let mut produced = producer
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
    let mut writer = sched
        .journal
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    // Rows that asked for a request another row sent get a copy of its answer.
    if let Some(requests) = produced.requests.take() {
        requests.fan_out(&mut writer, identity)?;
    }
    let index = writer.finish()?;

    // Build the output from the journal, in input order, atomically, with the rows as the
    // validation pass read them.
    // A row shows an answer only if it answers the request the job would send now.
    let totals = match &spool {
        Some(spool) => {
            let (rows, mut want) = (spool.output_rows()?, spool.wanted()?);
            let totals = sink::write_output(&spec, rows, &index, &journal_path, &mut want)?;
            if let Some(warning) = spool.input_changed() {
                eprintln!("{warning}");
            }
            totals
        }
        // Interrupted before the validation pass ended: the rows as the input holds them.
        None => {
            let mut want = wanted(&planner, identity);
            sink::write_output(&spec, output_rows(job)?, &index, &journal_path, &mut want)?
        }
    };

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
        StopReason::Budget(cap) => (
            "budget",
            Some(budget_message(*cap, &ledger, totals.pending)),
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
        cost_this_run_usd: ledger.this_run().known().filter(|_| priced),
        estimated_cost_usd: produced.expected_cost,
        spent_total_usd: ledger.total().known().filter(|_| priced),
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

/// The names of the caps a job sets, for messages.
pub(crate) fn cap_names(job: &Job) -> &'static str {
    match (job.budget.total_cap(), job.budget.max_usd_per_run) {
        (Some(_), Some(_)) => "budget.max_usd_total and budget.max_usd_per_run",
        (None, Some(_)) => "budget.max_usd_per_run",
        _ => "budget.max_usd_total",
    }
}

/// Why a run stopped at a cap, what it spent, and how to go on.
fn budget_message(cap: Cap, ledger: &Ledger, pending: u64) -> String {
    let show = |t: ledger::Tally| {
        t.known()
            .map_or_else(|| "unknown".into(), |m| m.to_string())
    };
    let caps = ledger.caps();
    match cap {
        Cap::PerRun => format!(
            "per-run budget cap reached: {} spent in this run of {}, {pending} rows not run; \
             run again to go on (each run may spend up to budget.max_usd_per_run)",
            show(ledger.this_run()),
            caps.per_run.unwrap_or_default(),
        ),
        Cap::Total => format!(
            "budget cap reached: {} spent of {}, {pending} rows not run; raise \
             budget.max_usd_total (or --max-usd) and run again to finish",
            show(ledger.total()),
            caps.total.unwrap_or_default(),
        ),
    }
}

/// Feeds the scheduler the rows to send, in input order, from the Steps the validation
/// pass kept: journals cache hits and bad rows, counts skipped rows. Runs on a blocking
/// thread.
fn produce(
    job: &Job,
    planner: &Planner,
    sched: &Scheduler,
    price: Option<&ModelPrice>,
    spool: &Spool,
    tx: mpsc::Sender<WorkItem>,
) -> anyhow::Result<Produced> {
    let mut out = Produced {
        expected_cost: price.map(|_| Money::ZERO),
        ..Produced::default()
    };
    let expected_out = job
        .estimate
        .assume_output_tokens
        .map(u64::from)
        .unwrap_or(planner.max_completion_tokens());
    let requests = out
        .requests
        .insert(RunRequests::new(&job.journal_path()).context("cannot create a temporary file")?);
    for stepped in spool.read().context("reading the row spool")? {
        if sched.stop.is_cancelled() {
            break;
        }
        let stepped = stepped.context("reading the row spool")?;
        let req = match stepped.step {
            Step::Send(req) => req,
            // Bad rows come through only when the job skips them: each becomes a failed
            // row, journaled with the reason, so the output lists it in place.
            Step::Bad { row, id, reason } => {
                out.bad_rows += 1;
                record_bad_row(sched, row, id, reason)?;
                continue;
            }
            Step::Skip { decision, hash, .. } => {
                out.resume.add(decision);
                if decision == Decision::Done {
                    // A later row asking the very same thing shares this answer.
                    requests.note(&hash)?;
                }
                sched.progress.row_done(decision == Decision::Done);
                continue;
            }
            // A cached answer to the very same request: recorded at no cost, and no request,
            // rate-limit or budget is used for it.
            Step::Cached {
                row,
                id,
                hash,
                entry,
                decision,
            } => {
                out.resume.add(decision);
                let rec = Record {
                    row,
                    id,
                    hash,
                    status: Status::Ok,
                    choices: entry.choices,
                    usage: entry.usage,
                    cost_pico: Some(0),
                    attempts: 0,
                    error: None,
                    cached: true,
                    batch: false,
                    fields: entry.fields,
                    shared_with: None,
                };
                sched
                    .journal
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .append(&rec)?;
                out.cached += 1;
                sched.progress.row_done(true);
                continue;
            }
        };
        out.resume.add(req.decision);
        if !requests.send_or_wait(req.row, &req.id, &req.hash)? {
            // Asked for already in this run: the row gets that answer when the run ends.
            continue;
        }
        if let (Some(total), Some(p)) = (out.expected_cost, price) {
            let u = Usage {
                prompt_tokens: req.prompt_tokens,
                completion_tokens: expected_out,
                ..Usage::default()
            };
            out.expected_cost = Some(total.saturating_add(p.cost(&u, Tier::Live)));
        }
        let item = WorkItem {
            row: req.row,
            id: req.id,
            hash: req.hash,
            body: req.body,
            limiter_tokens: req.limiter_tokens,
            worst_cost: req.worst_cost.unwrap_or(Money::ZERO),
            guess: UsageGuess {
                prompt_tokens: req.prompt_tokens,
                worst: req.worst,
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

/// The failed record of a row that could not be read or rendered (the row loop's
/// `Step::Bad`, which carries the row's identity key): no request, no hash.
pub(crate) fn bad_row_record(row: u64, id: String, error: String, batch: bool) -> Record {
    Record {
        batch,
        ..Record::failed(row, id, String::new(), 0, error)
    }
}

/// What the current job asks of each row, for building the output: the row's identity and
/// the hash of the request it would send now (no tokens are counted for it).
pub(crate) fn wanted(
    planner: &Planner,
    identity: Identity,
) -> impl FnMut(&promptmill::types::Row) -> Wanted + '_ {
    move |row| Wanted {
        id: identity.key(row),
        hash: planner.plan_counted(row, Some(0)).ok().map(|p| p.hash),
    }
}

/// Journals a row that could not be read or rendered as failed, with the reason.
fn record_bad_row(sched: &Scheduler, row: u64, id: String, error: String) -> anyhow::Result<()> {
    let rec = bad_row_record(row, id, error, false);
    sched
        .journal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .append(&rec)?;
    sched.progress.row_done(false);
    Ok(())
}

/// The jitter seed of the retry schedule from `PROMPTMILL_RETRY_SEED`, when set (to replay
/// a run's waits); without it each run draws its own.
fn retry_seed() -> anyhow::Result<Option<u64>> {
    const VAR: &str = "PROMPTMILL_RETRY_SEED";
    let Some(raw) = std::env::var_os(VAR) else {
        return Ok(None);
    };
    let text = raw.to_string_lossy();
    match text.trim().parse::<u64>() {
        Ok(seed) => Ok(Some(seed)),
        Err(_) => bail!(
            "{VAR} = {text:?}: expected a whole number from 0 to {}",
            u64::MAX
        ),
    }
}

/// The first Ctrl-C/SIGTERM stops scheduling and lets requests in flight finish for a few
/// seconds, then drops them (their rows stay pending); the output and summary are written
/// either way. A second signal quits at once (see [`Interrupt`]).
async fn watch_signals(sched: Arc<Scheduler>, interrupt: Interrupt) {
    const GRACE: Duration = Duration::from_secs(5);
    interrupt.wait().await;
    eprintln!(
        "finishing the requests in flight (up to {}s), then writing the output and summary",
        GRACE.as_secs()
    );
    sched.interrupt();
    tokio::time::sleep(GRACE).await;
    sched.cancel.cancel();
}
