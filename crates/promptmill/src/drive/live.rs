//! The live driver: the rows the first pass kept go through the limiter and the client as
//! fast as the limits allow, each answer journaled as it arrives; the output and summary
//! are built from the journal, however the run ends (done, budget cap, abort, Ctrl-C).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use tokio::sync::mpsc;

use super::pass::{first_pass, Pass};
use super::preview::{self, Preview, Selection};
use super::regenerate::{self, Review, ReviewRows, Reviewed};
use super::{
    bad_row_record, cap_names, exit, judge_for, output_rows, output_spec, planner_for, start_err,
    wanted,
};
use super::{Interrupt, JobCtx};
use crate::cache::Cache;
use crate::client::{self, Client, Secret};
use crate::config::Job;
use crate::cost::{ModelPrice, Tier};
use crate::identity::{Identity, RunRequests};
use crate::journal::{self, Record, Status};
use crate::judge::Judge;
use crate::limit::shared::{default_key, redact, OnFailure, Shared};
use crate::limit::Limiter;
use crate::pipeline::ledger::{self, Cap, Caps, Ledger};
use crate::pipeline::rows::{Spool, Step};
use crate::pipeline::shared_budget::{self, SharedBudget};
use crate::plan::Planner;
use crate::prime::Plan;
use crate::progress::Progress;
use crate::resume::{Decision, ResumeCounts};
use crate::scheduler::{Kind, Profile, RunStats, Scheduler, StopReason, UsageCounter, WorkItem};
use crate::sink::{self, OutputTotals};
use crate::summary::Summary;
use crate::types::{Money, Usage};
use crate::watchdog::{Watchdog, WatchdogLimits};

/// How a live run behaves beyond the job file.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveOptions {
    /// Send rows that failed in an earlier run again.
    pub retry_failed: bool,
    /// Print the summary as JSON on stdout.
    pub json: bool,
    /// No progress bar or periodic progress lines.
    pub quiet: bool,
    /// Send only these rows of those the run would send (`--limit`, `--sample`).
    pub preview: Option<Preview>,
}

/// Writes the output and summary again from the journal, sending nothing and needing no
/// key: every answer is checked against the job's checks as they are now (`run
/// --recheck`, after editing `[[checks]]`). Rows with no answer stay `pending`.
pub async fn recheck(ctx: &JobCtx, json: bool, interrupt: &Interrupt) -> anyhow::Result<u8> {
    from_journals(ctx, json, interrupt, "recheck", |n| {
        format!("{n} rows have no answer yet; run without --recheck to send them")
    })
    .await
}

/// Writes the job's one output and summary from its own journal and every shard's beside it
/// (`promptmill merge`, see [`crate::shard`]), sending nothing and needing no key: each input
/// row once, in input order, its answer from whichever journal has it; the spend is theirs
/// together. Rows in no journal stay `pending`.
pub async fn merge(ctx: &JobCtx, json: bool, interrupt: &Interrupt) -> anyhow::Result<u8> {
    from_journals(ctx, json, interrupt, "merge", |n| {
        format!(
            "{n} rows have no answer in any journal; run their shards (or the job without \
             --shard) to send them"
        )
    })
    .await
}

/// The output and summary written from the journal (and its companions) alone.
async fn from_journals(
    ctx: &JobCtx,
    json: bool,
    interrupt: &Interrupt,
    mode: &str,
    pending: impl FnOnce(u64) -> String,
) -> anyhow::Result<u8> {
    let started = Instant::now();
    let job = &ctx.job;
    let planner = Arc::new(planner_for(job, ctx.mock).map_err(start_err)?);
    let judge = judge_for(ctx).map_err(start_err)?;
    let spec = output_spec(job).map_err(start_err)?;
    let pass = Pass {
        resume: true,
        retry_failed: false,
        show: 0,
        keep: true,
        tier: ctx.reserve_tier(),
    };
    let Some((_, Some(spool))) = first_pass(ctx, &planner, None, pass, interrupt).await? else {
        eprintln!("interrupted: nothing was written");
        return Ok(exit::STOPPED);
    };
    let journal_path = job.journal_path();
    let index = journal::read_index(&journal_path)?.unwrap_or_default();
    let totals = write_from_spool(&spec, &spool, &index, &journal_path, judge.as_deref())?;
    let (status, message, code) = super::outcome(job, &totals, pending);
    let priced = ctx.price.is_some();
    let summary = Summary {
        status: status.into(),
        message,
        exit_code: i32::from(code),
        spent_total_usd: index
            .spent
            .on(ledger::ledger_of(ctx.mock))
            .known()
            .filter(|_| priced),
        cost_this_run_usd: Some(Money::ZERO).filter(|_| priced),
        wall_seconds: started.elapsed().as_secs_f64(),
        prices: ctx.prices_line(),
        price_warnings: ctx.price_warnings(),
        ..Summary::for_output(job, mode, ctx.provider_name(), &totals, priced)
    };
    summary.publish(job, "note", json)?;
    Ok(code)
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
    /// What the judge and regenerating rejected rows did.
    reviewed: Reviewed,
}

/// Runs a job live. `started` is when the command started (for the summary's wall time).
pub async fn run(
    ctx: &JobCtx,
    opts: LiveOptions,
    interrupt: &Interrupt,
    started: Instant,
) -> anyhow::Result<u8> {
    let (job, price) = (&ctx.job, ctx.price.clone());
    let mut planner = Arc::new(planner_for(job, ctx.mock).map_err(start_err)?);
    let judge = judge_for(ctx).map_err(start_err)?;

    let spec = output_spec(job).map_err(start_err)?;
    let seed = retry_seed().map_err(start_err)?;

    if job.budget.any_cap() && price.is_none() {
        return Err(start_err(anyhow!(
            "{} is set but there is no price for model '{}', so the cap cannot be enforced; \
             give a price table with --prices FILE",
            cap_names(job),
            job.model.name
        )));
    }
    // Answers already in the response cache are found in the first pass.
    let cache = match &job.cache.dir {
        Some(dir) => Some(Cache::open(dir).map_err(start_err)?),
        None => None,
    };
    // The first pass (the dry run's) renders, counts and decides every row before a single
    // request is sent, and keeps what it decided in a spool, which the producer and the
    // output read instead of the input. A signal meanwhile stops waiting for it: nothing is
    // sent, and the output and summary are written from the journal.
    let pass = Pass {
        resume: true,
        retry_failed: opts.retry_failed,
        show: 0,
        keep: true,
        tier: ctx.reserve_tier(),
    };
    let (validated, spool) = match first_pass(ctx, &planner, cache.clone(), pass, interrupt).await?
    {
        Some((estimate, spool)) => (Some(estimate), spool.map(Arc::new)),
        None => (None, None),
    };
    let identity = Identity::of(job);
    // The first pass's copy of the planner is gone with its task. Regeneration plans rows
    // again, so it keeps the tokenizer.
    if let Some(p) = Arc::get_mut(&mut planner).filter(|_| job.regenerate == 0 && judge.is_none()) {
        p.release_tokenizer();
    }

    // A preview sends only the rows it chose; the others stay pending.
    let selection = match (opts.preview, spool.as_deref()) {
        (Some(p), Some(spool)) => Some(Arc::new(Selection::of(p, spool).map_err(start_err)?)),
        _ => None,
    };
    let rows = match &selection {
        Some(s) => s.chosen_rows,
        None => validated.as_ref().map_or(0, |v| v.rows),
    };
    let (sched, ledger, progress) =
        scheduler_for(ctx, opts, &planner, judge.as_deref(), cache, seed, rows).await?;
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
    // With `cache.prefix`: the prefix groups found in the first pass, primed.
    let prime = validated.as_ref().and_then(|v| {
        Plan::new(job, &v.prefix_groups, v.requests, v.min_wall_time.seconds).map(Arc::new)
    });
    let producer = {
        let (job, sched, price) = (job.clone(), sched.clone(), price.clone());
        let (spool, selection, prime) = (spool.clone(), selection.clone(), prime.clone());
        tokio::task::spawn_blocking(move || match spool {
            Some(spool) => {
                let feed = Feed {
                    spool: &spool,
                    selection: selection.as_deref(),
                    prime: prime.as_deref(),
                };
                produce(&job, &sched, price.as_ref(), feed, tx)
            }
            // Interrupted before the validation pass ended: nothing to send.
            None => Ok(Produced::default()),
        })
    };
    let mut stop = sched.clone().run(rx).await;
    let mut produced = producer
        .await
        .context("row producer failed")?
        .context("reading rows")?;
    // Rows that asked for a request another row sent get a copy of its answer (before the
    // review rounds, which judge and regenerate them like any row).
    if let Some(requests) = produced.requests.take() {
        let mut journal = sched.journal.lock().unwrap_or_else(|e| e.into_inner());
        requests.fan_out(&mut journal, identity)?;
    }
    // Then the judge scores the answers, and the rows the checks or the judge reject get
    // new answers, round by round.
    if let Some(spool) = spool
        .as_ref()
        .filter(|_| job.regenerate > 0 || judge.is_some())
    {
        let review = Review {
            job: job.clone(),
            planner: planner.clone(),
            judge: judge.clone(),
            price: price.clone(),
            rows: ReviewRows::Spool(spool.clone()),
            tier: sched.reserve_tier(),
            prices: ctx.prices.clone(),
        };
        produced.reviewed = regenerate::rounds(&review, &sched, &ledger, &mut stop).await?;
    }
    signals.abort();
    let _ = signals.await; // the aborted task must drop its handle on the scheduler
    if let Some(r) = reporter {
        r.abort();
    }
    progress.finish();

    let sched = Arc::try_unwrap(sched).map_err(|_| anyhow!("scheduler still shared"))?;
    let shared_seen = sched
        .shared_budget
        .as_ref()
        .map(|b| (b.key().to_string(), b.seen()));
    let stats = sched.stats;
    let writer = sched
        .journal
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let index = writer.finish()?;
    let journal_path = job.journal_path();

    // Build the output from the journal, in input order, atomically, with the rows as the
    // validation pass read them.
    // A row shows an answer only if it answers the request the job would send now.
    let totals = match &spool {
        Some(spool) => write_from_spool(&spec, spool, &index, &journal_path, judge.as_deref())?,
        // Interrupted before the validation pass ended: the rows as the input holds them.
        None => {
            let mut want = wanted(&planner, identity);
            let rows = output_rows(job)?;
            sink::write_output(
                &spec,
                rows,
                &index,
                &journal_path,
                &mut want,
                judge.as_deref(),
            )?
        }
    };

    let (mut summary, mut code) =
        summarize(ctx, &stop, &ledger, &stats, &produced, &totals, started);
    if let (StopReason::Budget(Cap::Total), Some((key, seen))) = (&stop, shared_seen) {
        summary.message = Some(format!(
            "shared budget cap reached: every process on budget key {key} together has spent \
             and reserved {seen} of {}; this process spent {}, {} rows not run; raise \
             budget.max_usd_total (or --max-usd) and run again to finish",
            ledger.caps().total.unwrap_or_default(),
            ledger
                .this_run()
                .known()
                .map_or_else(|| "unknown".into(), |m| m.to_string()),
            totals.pending
        ));
    }
    if job.cache.prefix {
        // Only when the cache played a part: a run without shared prefixes shows nothing.
        let pc = prompt_cache_summary(ctx, &stats, prime.as_deref());
        if pc.any() {
            summary.prompt_cache = Some(pc);
        }
    }
    if let (Some(selection), Some(spool)) = (&selection, &spool) {
        let sent = preview::print_rows(selection, spool, &index, &journal_path)?;
        let numbers = preview::project(selection, sent, ledger.this_run(), price.is_some());
        let completed = matches!(stop, StopReason::Completed);
        code = preview::retitle(&mut summary, code, completed, &totals, numbers);
    }
    let label = if opts.preview.is_some() && code == exit::OK {
        "note"
    } else {
        "error"
    };
    summary.publish(job, label, opts.json)?;
    Ok(code)
}

/// Writes the output from the journal, with the rows as the validation pass kept them in
/// `spool`; warns when the input changed on disk meanwhile.
fn write_from_spool(
    spec: &sink::OutputSpec,
    spool: &Spool,
    index: &journal::JournalIndex,
    journal_path: &std::path::Path,
    judge: Option<&Judge>,
) -> anyhow::Result<OutputTotals> {
    let (rows, mut want) = (spool.output_rows()?, spool.wanted()?);
    let totals = sink::write_output(spec, rows, index, journal_path, &mut want, judge)?;
    if let Some(warning) = spool.input_changed() {
        eprintln!("{warning}");
    }
    Ok(totals)
}

/// Connects the shared limiter of `[limits] shared` (or `PROMPTMILL_LIMITS_SHARED`, which
/// wins), if any. Unreachable: stop (exit 3) or, with `on_shared_failure = "local"`, warn
/// and go on alone.
async fn shared_limits(job: &Job, key: &Secret) -> anyhow::Result<Option<Shared>> {
    let Some(url) = shared_url(job) else {
        return Ok(None);
    };
    match url::Url::parse(&url) {
        Ok(u) if u.scheme() == "redis" && u.host_str().is_some() => {}
        _ => {
            return Err(start_err(anyhow!(
                "limits.shared (or PROMPTMILL_LIMITS_SHARED): expected a redis://host:port/db \
                 URL, got {}",
                redact(&url)
            )))
        }
    }
    let name = match &job.limits.shared_key {
        Some(k) => k.clone(),
        None => default_key(
            &format!("{:?}", job.api.provider),
            &client::base_url(job),
            key.expose(),
        ),
    };
    let on_failure = job.limits.on_shared_failure;
    match Shared::connect(&url, &name, on_failure).await {
        Ok(sh) => Ok(Some(sh)),
        Err(why) if on_failure == OnFailure::Local => {
            eprintln!(
                "warning: {why}; going on with this process's own limits \
                 (limits.on_shared_failure = \"local\")"
            );
            Ok(None)
        }
        Err(why) => Err(anyhow!(
            "{why} (limits.on_shared_failure = \"stop\"; no row was sent)"
        )),
    }
}

/// The Redis URL of `PROMPTMILL_LIMITS_SHARED` (which wins) or `limits.shared`, if any.
fn shared_url(job: &Job) -> Option<String> {
    std::env::var("PROMPTMILL_LIMITS_SHARED")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| job.limits.shared.clone())
}

/// Joins the shared budget of `budget.shared` on the Redis of the shared limiter, with what
/// this run's own journal says was spent. None without `budget.shared`, or when Redis could
/// not be reached at the start and `on_shared_failure = "local"` (warned already).
async fn shared_budget(
    job: &Job,
    shared: Option<&Shared>,
    journal: &journal::JournalWriter,
    endpoint: &str,
) -> anyhow::Result<Option<SharedBudget>> {
    let (true, Some(cap)) = (job.budget.shared, job.budget.total_cap()) else {
        return Ok(None);
    };
    let Some(sh) = shared else {
        eprintln!(
            "warning: budget.shared: Redis cannot be reached, so budget.max_usd_total holds \
             for this process alone (limits.on_shared_failure = \"local\")"
        );
        return Ok(None);
    };
    let key = match &job.budget.shared_key {
        Some(k) => k.clone(),
        None => shared_budget::default_key(sh.key(), &unsharded_output_name(job)),
    };
    let own = journal.index().own.on(endpoint).priced;
    let (conn, shown) = sh.connection();
    let member = shared_budget::member(journal.path());
    let on_failure = job.limits.on_shared_failure;
    match SharedBudget::join(
        conn,
        shown,
        &key,
        member,
        Money::from_usd(cap),
        own,
        on_failure,
    )
    .await
    {
        Ok(b) => Ok(Some(b)),
        Err(why) if on_failure == OnFailure::Local => {
            eprintln!(
                "warning: {why}; budget.max_usd_total holds for this process alone \
                 (limits.on_shared_failure = \"local\")"
            );
            Ok(None)
        }
        Err(why) => Err(anyhow!(
            "{why} (limits.on_shared_failure = \"stop\"; no row was sent)"
        )),
    }
}

/// The job's output file name as every shard of it shares it (`out.shard-2-of-4.csv` →
/// `out.csv`).
fn unsharded_output_name(job: &Job) -> String {
    let name = job
        .output
        .path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    match job.shard {
        Some(s) => name.replacen(&format!(".{}", s.tag()), "", 1),
        None => name,
    }
}

/// The scheduler of a live run, with the ledger it adds money to (the spend before this run
/// read from the journal, mock spend apart) and the progress display.
async fn scheduler_for(
    ctx: &JobCtx,
    opts: LiveOptions,
    planner: &Planner,
    judge: Option<&Judge>,
    cache: Option<Cache>,
    seed: Option<u64>,
    rows: u64,
) -> anyhow::Result<(Scheduler, Arc<Ledger>, Progress)> {
    let (job, price) = (&ctx.job, ctx.price.clone());
    let key = if ctx.mock {
        client::api_key(job).unwrap_or_else(|_| Secret::new("mock-key".into()))
    } else {
        client::api_key(job).map_err(start_err)?
    };
    if job.budget.shared && shared_url(job).is_none() {
        return Err(start_err(anyhow!(
            "budget.shared: the budget is shared through the Redis of the shared rate \
             limiter; set limits.shared (or PROMPTMILL_LIMITS_SHARED) to a \
             redis://host:port/db URL"
        )));
    }
    let shared = shared_limits(job, &key).await?;
    let client = Client::for_job(job, key).map_err(start_err)?;
    let caps = Caps::of(&job.budget);

    let journal_path = job.journal_path();
    let mut writer = journal::open(&journal_path).map_err(start_err)?;
    // Every line this run writes names the endpoint, so mock spend never meets real spend.
    let endpoint = ledger::ledger_of(ctx.mock);
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
    let budget = shared_budget(job, shared.as_ref(), &writer, endpoint).await?;
    let limiter = Limiter::new(job.limits.requests_per_minute, job.limits.tokens_per_minute)
        // Anthropic counts actual output against its token limit; OpenAI charges max_tokens.
        .refund_unused_tokens(job.api.provider == crate::config::ProviderKind::Anthropic);
    let limiter = match shared {
        Some(sh) => limiter.with_shared(sh),
        None => limiter,
    };
    let progress = Progress::new(rows, opts.quiet || opts.json, Some(ledger.clone()));
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
    .with_cache(cache.clone())
    .with_service_tier(
        ctx.asked_tier(),
        job.model
            .flex_fallback_after_secs
            .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok()),
    );
    sched.shared_budget = budget;
    sched.answer.schema = job.model.schema_json.clone();
    sched.prices = ctx.prices.clone();
    if let Some(seed) = seed {
        sched.retry.seed = seed;
    }
    sched.answer.usage_counter = Some(UsageCounter::new(&job.model.name, planner.exact_tokens()));
    if let Some(j) = judge {
        sched.judge = Profile {
            price: j.price.clone(),
            schema: j.job.model.schema_json.clone(),
            usage_counter: Some(UsageCounter::new(&j.model, j.planner.exact_tokens())),
        };
    }
    sched.watchdog = Watchdog::new(WatchdogLimits {
        errors: job.limits.stop_after_errors,
        refused: (job.limits.stop_after_refused_secs > 0)
            .then(|| Duration::from_secs(u64::from(job.limits.stop_after_refused_secs))),
    });
    Ok((sched, ledger, progress))
}

/// The run's summary: how it ended (and its exit code), what it cost (from the ledger) and
/// how fast it went.
fn summarize(
    ctx: &JobCtx,
    stop: &StopReason,
    ledger: &Ledger,
    stats: &RunStats,
    produced: &Produced,
    totals: &OutputTotals,
    started: Instant,
) -> (Summary, u8) {
    let (job, price) = (&ctx.job, &ctx.price);
    use std::sync::atomic::Ordering::Relaxed;
    let wall = started.elapsed().as_secs_f64();
    let minutes = (wall / 60.0).max(1e-9);
    let attempts = stats.attempts.load(Relaxed);
    let (status, message, code) = match stop {
        StopReason::Completed if totals.all_ok() => ("completed", None, exit::OK),
        StopReason::Completed => {
            let (status, message) = crate::summary::finished(job, totals);
            (status, message, exit::ROWS_FAILED)
        }
        StopReason::Aborted(m) => ("aborted", Some(m.clone()), exit::STOPPED),
        StopReason::Budget(cap) => (
            "budget",
            Some(budget_message(*cap, ledger, totals.pending)),
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
    let provider = ctx.provider_name();
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
        prices: ctx.prices_line(),
        price_warnings: ctx.price_warnings(),
        regenerated_rows: produced.reviewed.regenerated_rows,
        regeneration_requests: produced.reviewed.regenerated,
        regeneration_cost_usd: (produced.reviewed.regenerated > 0)
            .then(|| produced.reviewed.regeneration_cost.known())
            .flatten()
            .filter(|_| priced),
        judge_requests: produced.reviewed.judged,
        judge_cost_this_run_usd: (produced.reviewed.judged > 0)
            .then(|| produced.reviewed.judge_cost.known())
            .flatten(),
        ..Summary::for_output(job, "live", provider, totals, priced)
    };
    (summary, code)
}

/// What the prompt cache did for this run's answers: tokens read and written, per prefix
/// group, and what it saved.
fn prompt_cache_summary(
    ctx: &JobCtx,
    stats: &RunStats,
    prime: Option<&Plan>,
) -> crate::summary::PromptCacheSummary {
    use std::sync::atomic::Ordering::Relaxed;
    let tokens = crate::cost::CacheTokens {
        read: stats.cache_read.load(Relaxed),
        written: stats.cache_write.load(Relaxed),
        written_1h: stats.cache_write_1h.load(Relaxed),
    };
    let groups = prime.map(Plan::used).unwrap_or_default();
    crate::summary::PromptCacheSummary::of(ctx.price.as_ref(), ctx.reserve_tier(), tokens, groups)
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

/// The rows [`produce`] reads: the first pass's spool, and in a preview the rows it sends;
/// with `cache.prefix`, the prefix groups to prime.
struct Feed<'a> {
    spool: &'a Spool,
    selection: Option<&'a Selection>,
    prime: Option<&'a Plan>,
}

/// How long the producer waits for a primer before looking whether the run stopped.
const PRIMER_POLL: Duration = Duration::from_millis(50);

/// Feeds the scheduler the rows to send, from the Steps the validation pass kept: journals
/// cache hits and bad rows, counts skipped rows. Rows go in input order, except those of
/// the primed prefix groups (see [`crate::prime`]), which go first: every group's first
/// request (its primer) at once, then each group's other rows once its primer's answer (or
/// final failure) is in, group after group, each read from the spool again.
/// Runs on a blocking thread.
fn produce(
    job: &Job,
    sched: &Scheduler,
    price: Option<&ModelPrice>,
    feed: Feed<'_>,
    tx: mpsc::Sender<WorkItem>,
) -> anyhow::Result<Produced> {
    let mut out = Produced {
        expected_cost: price.map(|_| Money::ZERO),
        ..Produced::default()
    };
    let mut requests =
        RunRequests::new(&job.journal_path()).context("cannot create a temporary file")?;
    let fed = feed_rows(job, sched, price, feed, &tx, &mut out, &mut requests);
    // Even when the run stopped early, the rows waiting for another's answer get it.
    out.requests = Some(requests);
    fed.map(|()| out)
}

/// [`produce`]'s loop over the spool.
fn feed_rows(
    job: &Job,
    sched: &Scheduler,
    price: Option<&ModelPrice>,
    feed: Feed<'_>,
    tx: &mpsc::Sender<WorkItem>,
    out: &mut Produced,
    requests: &mut RunRequests,
) -> anyhow::Result<()> {
    let send = Sending {
        sched,
        price,
        assumed_out: job.estimate.assume_output_tokens.map(u64::from),
        prime: feed.prime,
        tx,
    };
    let primed = feed.prime.map_or(0, |p| p.primed);
    if primed > 0 {
        prime_groups(&send, &feed, primed, out, requests)?;
    }
    // Then every other row in input order (the primed groups' rows are sent already).
    for stepped in feed.spool.read().context("reading the row spool")? {
        if sched.stop.is_cancelled() {
            break;
        }
        let mut stepped = stepped.context("reading the row spool")?;
        if feed.selection.is_some_and(|s| !s.admits(&stepped)) {
            continue; // not in the preview: stays pending
        }
        // The row's `[[outputs]]` go first, each like a row's answer of its own.
        for o in std::mem::take(&mut stepped.outputs) {
            let req = match o {
                Step::Send(req) => req,
                Step::Skip { decision, hash, .. } => {
                    if decision == Decision::Done {
                        requests.note(&hash)?;
                    }
                    continue;
                }
                Step::Cached {
                    row,
                    id,
                    hash,
                    entry,
                    ..
                } => {
                    record_cached(sched, row, id, hash, entry)?;
                    continue;
                }
                Step::Bad { .. } => continue,
            };
            if !requests.send_or_wait(req.row, &req.id, &req.hash)? {
                continue;
            }
            let price = req.model.as_deref().and_then(|m| sched.prices.lookup(m));
            out.expected_cost = expect(
                out.expected_cost,
                &req,
                price,
                send.assumed_out,
                sched.asked_tier(),
            );
            if tx.blocking_send(WorkItem::of(req, Kind::Output)).is_err() {
                return Ok(()); // the scheduler stopped
            }
        }
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
                record_cached(sched, row, id, hash, entry)?;
                out.cached += 1;
                sched.progress.row_done(true);
                continue;
            }
        };
        if send.primed_group(&req).is_some() {
            continue; // sent with its group, before
        }
        if let Sent::Stopped = send.answer(out, requests, req, None)? {
            return Ok(());
        }
    }
    Ok(())
}

/// Sends the primed groups (see [`produce`]): first each group's primer, then each group's
/// other rows once its primer ended.
fn prime_groups(
    send: &Sending<'_>,
    feed: &Feed<'_>,
    primed: usize,
    out: &mut Produced,
    requests: &mut RunRequests,
) -> anyhow::Result<()> {
    let sched = send.sched;
    // Per primed group: its primer's row and the end of its answer.
    let mut primers: Vec<Option<(u64, std::sync::mpsc::Receiver<()>)>> =
        (0..primed).map(|_| None).collect();
    for stepped in feed.spool.read().context("reading the row spool")? {
        if sched.stop.is_cancelled() {
            return Ok(());
        }
        let stepped = stepped.context("reading the row spool")?;
        if feed.selection.is_some_and(|s| !s.admits(&stepped)) {
            continue;
        }
        // What an earlier run answered: a group's row asking the very same shares it.
        for o in &stepped.outputs {
            if let Step::Skip {
                decision: Decision::Done,
                hash,
                ..
            } = o
            {
                requests.note(hash)?;
            }
        }
        let req = match stepped.step {
            Step::Skip {
                decision: Decision::Done,
                hash,
                ..
            } => {
                requests.note(&hash)?;
                continue;
            }
            Step::Send(req) => req,
            _ => continue,
        };
        let Some(i) = send.primed_group(&req) else {
            continue;
        };
        if primers[i].is_some() {
            continue;
        }
        let (done, ended) = std::sync::mpsc::channel();
        let row = req.row;
        match send.answer(out, requests, req, Some(done))? {
            Sent::Stopped => return Ok(()),
            Sent::Yes => primers[i] = Some((row, ended)),
            // An earlier row asks the very same: the group's next row is its primer.
            Sent::Waits => {}
        }
    }
    for (i, primer) in primers.iter().enumerate() {
        let Some((primer_row, ended)) = primer else {
            continue;
        };
        // Released by the primer's end: an answer, a failure after its retries, or the
        // run stopping (the item is dropped unsent).
        loop {
            match ended.recv_timeout(PRIMER_POLL) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !sched.stop.is_cancelled() => {}
                _ => break,
            }
        }
        for stepped in feed.spool.read().context("reading the row spool")? {
            if sched.stop.is_cancelled() {
                return Ok(());
            }
            let stepped = stepped.context("reading the row spool")?;
            if feed.selection.is_some_and(|s| !s.admits(&stepped)) {
                continue;
            }
            let Step::Send(req) = stepped.step else {
                continue;
            };
            // Rows before the primer were tried as primers already.
            if req.row <= *primer_row || send.primed_group(&req) != Some(i) {
                continue;
            }
            if let Sent::Stopped = send.answer(out, requests, req, None)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// What [`produce`] needs to send a row's answer.
struct Sending<'a> {
    sched: &'a Scheduler,
    price: Option<&'a ModelPrice>,
    assumed_out: Option<u64>,
    prime: Option<&'a Plan>,
    tx: &'a mpsc::Sender<WorkItem>,
}

/// Whether a row's answer went to the scheduler.
enum Sent {
    Yes,
    /// Another row asks the very same: it gets that answer.
    Waits,
    /// The scheduler stopped.
    Stopped,
}

impl Sending<'_> {
    /// The primed group a request belongs to, if any.
    fn primed_group(&self, req: &crate::pipeline::rows::Request) -> Option<usize> {
        self.prime
            .and_then(|p| p.group_of(&req.prefix))
            .and_then(|(g, _)| g.primed)
    }

    /// Hands a row's answer to the scheduler, with its group's cache marks.
    fn answer(
        &self,
        out: &mut Produced,
        requests: &mut RunRequests,
        mut req: crate::pipeline::rows::Request,
        primer: Option<std::sync::mpsc::Sender<()>>,
    ) -> anyhow::Result<Sent> {
        out.resume.add(req.decision);
        if !requests.send_or_wait(req.row, &req.id, &req.hash)? {
            // Asked for already in this run: the row gets that answer when the run ends.
            return Ok(Sent::Waits);
        }
        let price = match &req.model {
            Some(m) => self.sched.prices.lookup(m),
            None => self.price,
        };
        out.expected_cost = expect(
            out.expected_cost,
            &req,
            price,
            self.assumed_out,
            self.sched.asked_tier(),
        );
        let group = self.prime.and_then(|p| {
            p.group_of(&req.prefix).map(|(g, link)| {
                p.mark(g, link, &mut req.body);
                (g.keys.clone(), g.tally.clone())
            })
        });
        let mut item = WorkItem::of(req, Kind::Answer);
        if let Some((keys, tally)) = group {
            item.cache_key = keys;
            item.group = Some(tally);
        }
        item.primer = primer;
        out.sent += 1;
        if self.tx.blocking_send(item).is_err() {
            return Ok(Sent::Stopped);
        }
        Ok(Sent::Yes)
    }
}

/// `total` plus what `req` is expected to cost at `price` (`None`, unknown, once any
/// request has no price).
fn expect(
    total: Option<Money>,
    req: &crate::pipeline::rows::Request,
    price: Option<&ModelPrice>,
    assumed_out: Option<u64>,
    tier: Tier,
) -> Option<Money> {
    let (total, p) = (total?, price?);
    let max = req.worst.completion_tokens;
    let u = Usage {
        prompt_tokens: req.prompt_tokens,
        completion_tokens: assumed_out.map_or(max, |a| a.min(max)),
        ..Usage::default()
    };
    Some(total.saturating_add(p.cost(&u, tier)))
}

/// Journals a cached answer to the very same request, at no cost: no request, rate limit or
/// budget is used for it.
fn record_cached(
    sched: &Scheduler,
    row: u64,
    id: String,
    hash: String,
    entry: crate::cache::Entry,
) -> anyhow::Result<()> {
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
        regen_of: None,
        regenerated: 0,
    };
    sched
        .journal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .append(&rec)?;
    Ok(())
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
