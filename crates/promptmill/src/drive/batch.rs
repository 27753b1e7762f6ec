//! The batch driver: `run --mode batch` (submit, then collect on later runs), `collect`,
//! `status`, `export` and `import`, over OpenAI's Batch API and Anthropic's Message Batches.
//!
//! Every step that talks to the provider is recorded in the batch state file before and
//! after it happens (see `batch::state`), so running any of these again after a crash
//! carries on where it stopped and never submits the same rows twice.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{Map, Value};

use super::live::LiveOptions;
use super::pass::{first_pass, Pass};
use super::{
    claim, exit, output_rows, output_spec, planner_for, source_options, start_err, wanted,
    Interrupt, JobCtx,
};
use crate::batch::api::BatchObject;
use crate::batch::backend::{self, Backend};
use crate::batch::input;
use crate::batch::results::{self, Joiner};
use crate::batch::state::{is_terminal, BatchState, Chunk};
use crate::batch::{crash_point, META_CHUNK, META_JOB};
use crate::client::{self, Secret};
use crate::config::{Endpoint, Job};
use crate::cost::{ModelPrice, Tier};
use crate::identity::Identity;
use crate::journal::{self, JournalReader, JournalWriter, Record, Status};
use crate::judge::Judge;
use crate::pipeline::ledger::{self, Cap, Charge, Tally};
use crate::pipeline::rows::Spool;
use crate::plan::Planner;
use crate::sink::{self, OutputSpec};
use crate::slots::{SlotFile, TextSlots};
use crate::source::Source;
use crate::summary::Summary;

mod review;
mod round;

use round::{group_rows, new_round, pending_lines, Line};

/// What a command learned about one job, shared by all the batch commands.
struct Ctx {
    job: Job,
    /// Plans rows, and holds the tokenizer's tables (~40 MB) while it does: only `run` and
    /// `export` make one ([`Ctx::with_planner`]), and `run` drops it once its round is
    /// written, so that polling and collecting (often for hours with `--wait`) do not keep
    /// the tables.
    planner: Option<Arc<Planner>>,
    /// Every row and its Step as the validation pass made them, so that writing the input
    /// lines and the output reads neither the input again nor renders a row twice (nor keeps
    /// the tokenizer loaded).
    spool: Option<Arc<Spool>>,
    /// The cacheable prefix groups the validation pass found (`cache.prefix`), largest
    /// first: a round writes each group's rows together (see [`crate::prime`]).
    prefix_groups: Vec<crate::prefix::PrefixGroup>,
    /// The job's judge (`[judge]`), once [`Ctx::load_judge`] made it.
    judge: Option<Arc<Judge>>,
    /// The context the command was given (prices, mock), for the judge and review rounds.
    jc: JobCtx,
    price: Option<ModelPrice>,
    prices: String,
    /// Warnings about the price data's age and the model's deprecation date.
    price_warnings: Vec<String>,
    /// The provider's name for the summary (`mock` for the built-in mock).
    provider: String,
    mock: bool,
    /// Past a deadline's cut: the rows left go live once the batches have ended.
    finish_live: bool,
}

impl Ctx {
    /// The ledger this job's spend goes to (the mock's or the API's).
    fn ledger(&self) -> &'static str {
        ledger::ledger_of(self.mock)
    }

    /// Opens the job's journal, every line it writes labelled with the endpoint.
    fn open_journal(&self) -> Result<JournalWriter, journal::JournalError> {
        let mut w = journal::open(&self.job.journal_path())?;
        w.set_endpoint(self.ledger());
        Ok(w)
    }

    fn new(jc: &JobCtx) -> anyhow::Result<Ctx> {
        if !backend::supports(jc.job.api.provider) {
            bail!(
                "mode = \"batch\" supports OpenAI's Batch API and Anthropic's Message Batches \
                 only (api.provider = \"openai\" or \"anthropic\"); use mode = \"live\" for \
                 this provider"
            );
        }
        Ok(Ctx {
            job: jc.job.clone(),
            planner: None,
            spool: None,
            prefix_groups: Vec::new(),
            judge: None,
            jc: jc.clone(),
            price: jc.price.clone(),
            prices: jc.prices_line(),
            price_warnings: jc.price_warnings(),
            provider: jc.provider_name(),
            mock: jc.mock,
            finish_live: false,
        })
    }

    /// Makes the job's judge, if it has one (checking its templates and price).
    fn load_judge(mut self) -> anyhow::Result<Ctx> {
        self.judge = super::judge_for(&self.jc)?;
        Ok(self)
    }

    /// Whether the job reviews its answers (a judge, or regeneration).
    fn reviews(&self) -> bool {
        self.job.judge.is_some() || self.job.regenerate > 0
    }

    /// The same context with a planner, for the commands that write input lines.
    fn with_planner(mut self) -> anyhow::Result<Ctx> {
        self.planner = Some(Arc::new(planner_for(&self.job, self.mock)?));
        Ok(self)
    }

    fn planner(&self) -> anyhow::Result<&Arc<Planner>> {
        self.planner
            .as_ref()
            .ok_or_else(|| anyhow!("internal: this command plans no rows"))
    }

    /// The `url` of every input line.
    fn endpoint(&self) -> &'static str {
        match self.job.api.endpoint {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }

    fn api(&self) -> anyhow::Result<Backend> {
        let key = if self.mock {
            client::api_key(&self.job).unwrap_or_else(|_| Secret::new("mock-key".into()))
        } else {
            client::api_key(&self.job)?
        };
        Backend::for_job(&self.job, key)
    }

    fn state_path(&self) -> PathBuf {
        self.job.batch_state_path()
    }

    /// `out/result.batches.json` → `out/result.batches/`: where input files are kept.
    fn input_dir(&self) -> PathBuf {
        self.state_path().with_extension("")
    }

    /// Row identities by row index, for joining results: in temporary files rather than a map, so
    /// that collecting holds nothing per row in memory however many rows the job has.
    fn row_ids(&self) -> anyhow::Result<TextSlots> {
        let rows = Source::open(&self.job.input.path, &source_options(&self.job))?
            .flatten()
            .map(|row| (row.index, Identity::of(&self.job).key(&row)));
        TextSlots::from_rows(&self.job.journal_path(), rows)
            .context("cannot keep the row ids in a temporary file")
    }

    /// Validates every row (like a live run) on a blocking thread, keeping each row's Step
    /// for writing the input lines and the output. `false` when a stop was requested first.
    async fn validate(&mut self, jc: &JobCtx, interrupt: &Interrupt) -> anyhow::Result<bool> {
        let pass = Pass {
            // Decided when a round is written: the journal may grow before then.
            resume: false,
            retry_failed: false,
            show: 0,
            keep: true,
            tier: Tier::Batch,
        };
        let Some((estimate, spool)) =
            first_pass(jc, self.planner()?, None, pass, interrupt).await?
        else {
            return Ok(false);
        };
        self.spool = spool.map(Arc::new);
        self.prefix_groups = estimate.prefix_groups;
        // The rows are counted: the tokenizer's tables can go (the validation task's copy
        // of the planner ended with it).
        if let Some(p) = self.planner.as_mut().and_then(Arc::get_mut) {
            p.release_tokenizer();
        }
        Ok(true)
    }
}

/// Batch mode's own settings (`--batch-max-requests`, `--wait`, `--poll-secs`).
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    /// Requests per batch input file (`--batch-max-requests`), over the job's
    /// `batch.max_requests`; None: the job's.
    pub max_requests: Option<u64>,
    /// Keep polling until every batch has finished, then write the output.
    pub wait: bool,
    /// Seconds between polls with `wait`.
    pub poll_secs: f64,
}

impl Default for Polling {
    fn default() -> Polling {
        Polling {
            max_requests: None,
            wait: false,
            poll_secs: 30.0,
        }
    }
}

impl Polling {
    /// Where `job`'s input files are split: its `[batch]` limits, with
    /// `--batch-max-requests` over `batch.max_requests`.
    pub fn limits(&self, job: &Job) -> input::Limits {
        input::Limits::of(&job.batch, self.max_requests)
    }
}

/// Runs a job in batch mode: validates every row, writes and submits what is not done, and
/// collects (with `polling.wait`, until every batch has ended). With the built-in mock,
/// which ends with this process, it always waits.
pub async fn run(
    jc: &JobCtx,
    mut polling: Polling,
    opts: LiveOptions,
    interrupt: &Interrupt,
    started: Instant,
) -> anyhow::Result<u8> {
    let mut ctx = Ctx::new(jc)
        .and_then(Ctx::with_planner)
        .and_then(Ctx::load_judge)
        .map_err(start_err)?;
    let spec = output_spec(&ctx.job).map_err(start_err)?;
    let validated = ctx.validate(jc, interrupt).await.map_err(start_err)?;
    let api = ctx.api().map_err(start_err)?;
    if !validated || interrupt.requested() {
        eprintln!("interrupted before submitting: nothing was sent");
        return Ok(exit::STOPPED);
    }
    if ctx.mock {
        // The in-process mock dies with this process: wait for the batches here.
        polling.wait = true;
        polling.poll_secs = polling.poll_secs.min(0.05);
    }
    let how = Drive {
        submit: true,
        retry_failed: opts.retry_failed,
        json: opts.json,
        quiet: opts.quiet,
    };
    drive(&mut ctx, &api, &spec, &polling, how, started, interrupt).await
}

/// Polls the job's batches and collects finished ones; once every answer is in, writes and
/// submits the job's next review round (judge, regeneration), if any (the rows' own
/// answers are never submitted here). Writes the output once nothing is in flight.
pub async fn collect(
    jc: &JobCtx,
    polling: Polling,
    json: bool,
    interrupt: &Interrupt,
    started: Instant,
) -> anyhow::Result<u8> {
    let mut ctx = Ctx::new(jc).and_then(Ctx::load_judge).map_err(start_err)?;
    let _lock = claim(&ctx.job)?;
    let spec = output_spec(&ctx.job).map_err(start_err)?;
    if !ctx.state_path().exists() {
        return Err(start_err(anyhow!(
            "{}: no batches were submitted for this job; submit with `promptmill run {} --mode batch`",
            ctx.state_path().display(),
            ctx.job.file.display()
        )));
    }
    // Every batch collected already: nothing to ask the provider (and so no key needed);
    // the output is written again from the journal.
    let state = BatchState::load(&ctx.state_path(), &ctx.job.display_name())?;
    if state.in_flight().next().is_none() && !review::due(&ctx, &state) {
        let index = ctx.open_journal()?.finish()?;
        return finish_output(&ctx, &spec, &index, &Collected::default(), json, started);
    }
    let api = ctx.api().map_err(start_err)?;
    let how = Drive {
        submit: false,
        retry_failed: false,
        json,
        quiet: false,
    };
    drive(&mut ctx, &api, &spec, &polling, how, started, interrupt).await
}

#[derive(Debug, Clone, Copy)]
struct Drive {
    submit: bool,
    retry_failed: bool,
    json: bool,
    quiet: bool,
}

/// What this invocation collected.
#[derive(Debug, Default)]
struct Collected {
    ok: u64,
    failed: u64,
    /// Everything collected: answers, verdicts and new attempts.
    cost: Tally,
    submitted: u64,
    /// Verdicts collected (answered or failed), and what they cost.
    judged: u64,
    judge_cost: Tally,
    /// New attempts of rejected rows collected, the rows they were for, what they cost.
    regenerated: u64,
    regenerated_rows: std::collections::HashSet<u64>,
    regeneration_cost: Tally,
    /// The budget cap left no room for the next review round.
    budget: Option<Cap>,
    /// What the rows' answers read from and wrote to the provider's prompt cache.
    cache: crate::cost::CacheTokens,
    /// The same per prefix group written together (see [`GroupLines`]).
    groups: Vec<(String, crate::prime::Tally)>,
}

impl Collected {
    /// The place of group `id` in `groups`, added if new.
    fn group(&mut self, id: &str) -> usize {
        match self.groups.iter().position(|(g, _)| g == id) {
            Some(k) => k,
            None => {
                self.groups.push((id.to_string(), Default::default()));
                self.groups.len() - 1
            }
        }
    }
}

/// How often, at most, the line showing each batch's counts is printed while waiting.
const WAIT_LINE_EVERY: Duration = Duration::from_secs(5);

/// Submit what is not submitted, poll what runs, collect what finished; with `submit`, put
/// rows with no result (and, with `retry_failed`, failed rows) into a new round once nothing
/// is in flight. Writes the output when nothing is in flight any more.
///
/// A stop request (Ctrl-C, SIGTERM) ends it at once, even in the middle of a request to
/// the API: every step is recorded before and after it happens, so stopping at any await
/// is like a crash there, which the next `collect` or `run` carries on from.
#[allow(clippy::too_many_arguments)]
async fn drive(
    ctx: &mut Ctx,
    api: &Backend,
    spec: &OutputSpec,
    flags: &Polling,
    how: Drive,
    started: Instant,
    interrupt: &Interrupt,
) -> anyhow::Result<u8> {
    let state_path = ctx.state_path();
    let mut state = BatchState::load(&state_path, &ctx.job.display_name())?;
    let mut writer = ctx.open_journal()?;
    let mut ids: Option<TextSlots> = None;
    let mut got = Collected::default();
    let mut new_round_done = false;
    let mut review_over = false;
    let mut last_line: Option<Instant> = None;
    // With a deadline: past its cut, running batches are cancelled and the rest goes live.
    let cut = super::deadline::Cut::new(&ctx.job, started, flags.wait);
    let mut cut_done = false;
    'drive: loop {
        for i in 0..state.chunks.len() {
            if interrupt.requested() {
                break 'drive;
            }
            if state.chunks[i].collected {
                continue;
            }
            if state.chunks[i].batch_id.is_none() {
                if cut_done {
                    // Past the deadline's cut nothing more is submitted: its rows go live.
                    state.chunks[i].collected = true;
                    state.chunks[i].status = Some("cancelled".into());
                    state.save(&state_path)?;
                    continue;
                }
                // Held for the enqueued-token limit, or too large beside the batches in
                // progress: it goes once they finish (the state says so after a crash too).
                if !state.may_submit(i, ctx.job.batch.max_enqueued_tokens) {
                    continue;
                }
                round::reserve(&mut state, i, &state_path, &mut writer)?;
                tokio::select! {
                    biased;
                    _ = interrupt.wait() => break 'drive,
                    r = submit_chunk(ctx, api, &mut state, i, &state_path) => r?,
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = interrupt.wait() => break 'drive,
                r = poll_chunk(
                    ctx,
                    api,
                    &mut state,
                    i,
                    &state_path,
                    &mut writer,
                    &mut ids,
                    &mut got,
                ) => r?,
            }
        }
        if interrupt.requested() {
            break;
        }
        if !cut_done && cut.passed() {
            cut_done = true;
            ctx.finish_live = true;
            // Nothing more goes out as a batch: no new round, no review round.
            new_round_done = true;
            review_over = true;
            if !how.quiet {
                eprintln!(
                    "deadline: the batches are not done by the deadline less its margin; \
                     cancelling them (their finished answers are kept) and sending the rest live"
                );
            }
        }
        if cut_done {
            for i in 0..state.chunks.len() {
                let c = &state.chunks[i];
                if c.collected || super::deadline::stopping(c.status.as_deref()) {
                    continue;
                }
                let Some(id) = c.batch_id.clone() else {
                    continue;
                };
                let asked = tokio::select! {
                    biased;
                    _ = interrupt.wait() => break 'drive,
                    r = api.cancel(&id) => r,
                };
                match asked {
                    Ok(b) => {
                        adopt(&mut state.chunks[i], &b);
                        state.save(&state_path)?;
                    }
                    // It may have ended meanwhile: the next poll tells; else ask again then.
                    Err(e) => eprintln!("warning: batch {id}: {}", super::error_text(&e)),
                }
            }
        }
        if how.submit && !new_round_done && state.in_flight().next().is_none() {
            new_round_done = true;
            let added = new_round(ctx, &mut state, &mut writer, flags, how.retry_failed)?;
            // Nothing is planned after the round: let the tokenizer go (the validation
            // task's copy of the planner ended with it, so this frees the tables).
            ctx.planner = None;
            state.save(&state_path)?;
            crash_point("after-write");
            got.submitted += added;
            if added > 0 {
                if !how.quiet {
                    eprintln!("batch: {added} requests written; submitting");
                }
                continue;
            }
        }
        // Every answer is in: the review rounds (judge, regeneration) go as batches of their
        // own, one round after the other.
        let answers_done = !how.submit || new_round_done;
        if answers_done && !review_over && state.in_flight().next().is_none() && ctx.reviews() {
            match review::next_round(ctx, &mut state, &mut writer, flags, &state_path, interrupt)? {
                review::Next::Written {
                    round,
                    requests,
                    cut,
                } => {
                    got.submitted += requests;
                    if !how.quiet {
                        eprintln!(
                            "batch: {round} round of {requests} requests written; submitting"
                        );
                    }
                    if let Some(cap) = cut {
                        // As a live run stops at the cap: no round after this one here.
                        review_over = true;
                        got.budget = Some(cap);
                    }
                    continue;
                }
                review::Next::Over => review_over = true,
                review::Next::Stopped => break,
                review::Next::Budget(cap) => {
                    review_over = true;
                    got.budget = Some(cap);
                }
            }
        }
        if state.in_flight().next().is_none() || !flags.wait {
            break;
        }
        if !how.quiet && last_line.is_none_or(|t| t.elapsed() >= WAIT_LINE_EVERY) {
            eprintln!("{}", waiting_line(&state));
            last_line = Some(Instant::now());
        }
        let poll = Duration::try_from_secs_f64(flags.poll_secs).unwrap_or(Duration::ZERO);
        // Wake at the deadline's cut rather than a whole poll after it.
        let poll = cut
            .left()
            .filter(|_| !cut_done)
            .map_or(poll, |l| poll.min(l));
        tokio::select! {
            biased;
            _ = interrupt.wait() => break,
            _ = tokio::time::sleep(poll) => {}
        }
    }
    let index = writer.finish()?;
    if state.in_flight().next().is_some() {
        eprint!("{}", status_table(&state));
        if interrupt.requested() {
            eprintln!("interrupted: stopped waiting; the batches keep running on the server");
            if ctx.mock {
                eprintln!(
                    "note: the built-in mock's batches end with this process; run the same \
                     command again to submit their rows anew"
                );
            }
        }
        let job = ctx.job.file.display();
        let unsubmitted = state.in_flight().any(|c| c.batch_id.is_none());
        eprintln!(
            "batches are still running; run `promptmill collect {job}`{} later to collect \
             them (exit code {})",
            if unsubmitted {
                format!(" (or `promptmill run {job} --mode batch` to submit the rest)")
            } else {
                String::new()
            },
            exit::IN_PROGRESS
        );
        if how.json {
            crate::stdout::print(&format!("{}\n", serde_json::to_string_pretty(&state)?))?;
        }
        return Ok(exit::IN_PROGRESS);
    }
    if cut_done && !interrupt.requested() {
        let opts = LiveOptions {
            retry_failed: how.retry_failed,
            json: how.json,
            quiet: how.quiet,
            preview: None,
        };
        return super::deadline::finish_live(&ctx.jc, opts, interrupt, started).await;
    }
    finish_output(ctx, spec, &index, &got, how.json, started)
}

fn metadata(ctx: &Ctx, key: &str) -> Map<String, Value> {
    let mut m = Map::new();
    let name: String = ctx.job.display_name().chars().take(500).collect();
    m.insert(META_JOB.into(), name.into());
    m.insert(META_CHUNK.into(), key.into());
    m
}

fn adopt(chunk: &mut Chunk, b: &BatchObject) {
    chunk.batch_id = Some(b.id.clone());
    chunk.status = Some(b.status.clone());
    if let Some(c) = b.request_counts {
        chunk.counts = c;
    }
    chunk.created_at = b.created_at.or(chunk.created_at);
    chunk.expires_at = b.expires_at.or(chunk.expires_at);
    chunk.output_file_id = b.output_file_id.clone();
    chunk.error_file_id = b.error_file_id.clone();
}

/// Upload (unless done) and create (unless it may have happened: then look it up first),
/// saving the state after each step.
async fn submit_chunk(
    ctx: &Ctx,
    api: &Backend,
    state: &mut BatchState,
    i: usize,
    path: &Path,
) -> anyhow::Result<()> {
    let beside = state.running_beside(i).next().is_some();
    state.chunks[i].beside = beside;
    let api = match api {
        Backend::OpenAi(api) => api,
        Backend::Anthropic(mb) => {
            let b = mb.submit(state, i, path).await?;
            adopt(&mut state.chunks[i], &b);
            return Ok(state.save(path)?);
        }
    };
    let file_id = match state.chunks[i].file_id.clone() {
        Some(f) => f,
        None => {
            let f = api.upload(&state.chunks[i].input).await?;
            state.chunks[i].file_id = Some(f.clone());
            state.save(path)?;
            crash_point("after-upload");
            f
        }
    };
    let key = state.chunks[i].key.clone();
    if state.chunks[i].create_started {
        let refused = state.chunks[i].refused.clone();
        if let Some(b) = api.find(META_CHUNK, &key, &file_id, &refused, 10).await? {
            tracing::info!("found batch {} created for {key} before a restart", b.id);
            adopt(&mut state.chunks[i], &b);
            state.save(path)?;
            return Ok(());
        }
    }
    state.chunks[i].create_started = true;
    state.save(path)?;
    let b = api
        .create(&file_id, ctx.endpoint(), &metadata(ctx, &key))
        .await?;
    adopt(&mut state.chunks[i], &b);
    state.save(path)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn poll_chunk(
    ctx: &Ctx,
    api: &Backend,
    state: &mut BatchState,
    i: usize,
    path: &Path,
    writer: &mut JournalWriter,
    ids: &mut Option<TextSlots>,
    got: &mut Collected,
) -> anyhow::Result<()> {
    let id = state.chunks[i].batch_id.clone().unwrap_or_default();
    let b = api.retrieve(&id).await?;
    adopt(&mut state.chunks[i], &b);
    state.save(path)?;
    if !is_terminal(&b.status) {
        return Ok(());
    }
    // Refused for the enqueued-token limit beside other batches of the job: nothing ran;
    // hold it until they finish, then submit it again from the same input file.
    let over_tokens = b.token_limit_exceeded();
    if over_tokens && state.chunks[i].beside {
        hold(state, i, path, &b)?;
        return Ok(());
    }
    if ids.is_none() {
        *ids = Some(ctx.row_ids()?);
    }
    let ids = ids.as_ref().ok_or_else(|| anyhow!("row ids not loaded"))?;
    if let Some(kind) = state.chunks[i].review {
        review::read_results(ctx, api, state, i, path, writer, ids, got, &b, kind).await?;
        writer.sync()?;
        crash_point("after-review-ingest");
        state.chunks[i].collected = true;
        state.save(path)?;
        if b.status != "completed" {
            eprintln!(
                "batch {id} ({} round) ended {}: kept {} finished requests; the next round \
                 asks again for what it lacks",
                review::name(kind),
                b.status,
                b.request_counts
                    .map(|c| c.completed + c.failed)
                    .unwrap_or(0)
            );
        }
        return Ok(());
    }
    let grouped = group_rows(ctx, &state.chunks[i], got)?;
    for file in [&b.output_file_id, &b.error_file_id].into_iter().flatten() {
        let lines = api.download(file, &state.chunks[i].input).await?;
        ingest(
            ctx,
            ids,
            BufReader::new(lines),
            writer,
            got,
            grouped.as_ref(),
        )
        .with_context(|| format!("batch {id}, file {file}"))?;
    }
    if over_tokens {
        // Refused with no other batch of the job in progress: waiting for them cannot help.
        // Its rows keep no result (they are not failed) and go into the next round.
        eprintln!(
            "batch {id} was refused for the provider's enqueued-token limit with no other \
             batch of this job in progress ({}); its {} requests stay pending: lower \
             batch.max_enqueued_tokens (or wait for other batches of the account to finish) \
             and run `promptmill run {} --mode batch` again",
            b.failure_reason(),
            state.chunks[i].requests,
            ctx.job.file.display()
        );
    } else if b.status == "failed" {
        // The batch failed validation: no line ran. Record its rows as failed, with why.
        let why = b.failure_reason();
        let input = &state.chunks[i].input;
        let cannot_read = || format!("{}: cannot read", input.display());
        let text = BufReader::new(File::open(input).with_context(cannot_read)?);
        for line in text.split(b'\n') {
            let line = line.with_context(cannot_read)?;
            if line.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_slice(&line)?;
            let Some((row, hash)) = v["custom_id"].as_str().and_then(input::parse_custom_id) else {
                continue;
            };
            let rec = Record {
                batch: true,
                ..Record::failed(
                    row,
                    ids.get(row)?.unwrap_or_default(),
                    hash.to_string(),
                    1,
                    format!("batch {id} failed validation: {why}"),
                )
            };
            writer.append(&rec)?;
            got.failed += 1;
        }
    }
    // Its answers are journaled with their real cost: the worst case held for it goes back.
    if let Some(h) = state.chunks[i].reservation.filter(|h| h.written) {
        writer.release(0, h.id)?;
    }
    writer.sync()?;
    crash_point("after-ingest");
    state.chunks[i].collected = true;
    state.save(path)?;
    if b.status != "completed" {
        eprintln!(
            "batch {id} ended {}: kept {} finished requests; rows without a result are {}",
            b.status,
            b.request_counts
                .map(|c| c.completed + c.failed)
                .unwrap_or(0),
            if ctx.finish_live {
                "sent live now (the deadline)"
            } else {
                "submitted again on the next `run --mode batch`"
            }
        );
    }
    Ok(())
}

/// Holds chunk `i`, whose batch `b` was refused for the enqueued-token limit: forgets the
/// batch (remembering it as refused) so that the chunk is created again from its uploaded
/// file once the job's batches in progress have finished.
fn hold(state: &mut BatchState, i: usize, path: &Path, b: &BatchObject) -> anyhow::Result<()> {
    let c = &mut state.chunks[i];
    c.refused.push(b.id.clone());
    c.batch_id = None;
    c.status = Some("held".into());
    c.create_started = false;
    c.create_started_at = None;
    c.counts = Default::default();
    c.created_at = None;
    c.expires_at = None;
    c.output_file_id = None;
    c.error_file_id = None;
    c.beside = false;
    state.save(path)?;
    tracing::info!("batch {} refused: {}", b.id, b.failure_reason());
    eprintln!(
        "batch {} was refused for the provider's enqueued-token limit; its {} requests are \
         held and submitted again once this job's earlier batches finish",
        b.id, state.chunks[i].requests
    );
    Ok(())
}

/// Appends the records of one output or error file as it is read, skipping answers already
/// in the journal (a crash between writing them and recording the batch as collected, or a
/// bad line that stopped an earlier read half-way).
fn ingest(
    ctx: &Ctx,
    ids: &TextSlots,
    lines: impl BufRead,
    writer: &mut JournalWriter,
    got: &mut Collected,
    grouped: Option<&SlotFile>,
) -> anyhow::Result<()> {
    let provider = client::provider_for(&ctx.job);
    let joiner = Joiner {
        ids,
        provider: provider.as_ref(),
        price: ctx.price.as_ref(),
    };
    let mut reader = if writer.index().records > 0 {
        Some(JournalReader::open(writer.path())?)
    } else {
        None
    };
    joiner.for_each(lines, |mut rec| {
        if let Some(schema) = &ctx.job.model.schema_json {
            results::apply_schema(&mut rec, schema);
        }
        if let Some(r) = reader.as_mut() {
            if let Some(prev) = r.get(writer.index(), &rec.id)? {
                // The same failure read again is skipped too: a schema failure carries the
                // cost of its answer, which must not be counted twice.
                if (prev.status == Status::Ok && prev.hash == rec.hash && prev.id == rec.id)
                    || prev == rec
                {
                    return Ok(());
                }
            }
        }
        match rec.status {
            Status::Ok => got.ok += 1,
            Status::Failed => got.failed += 1,
        }
        got.cost.add(Charge::of(
            rec.usage.is_some() && !rec.cached,
            rec.cost_pico,
        ));
        if let (Some(u), false) = (&rec.usage, rec.cached) {
            got.cache.add(u);
            if let Some(k) = grouped.map(|g| g.get(rec.row)).transpose()?.flatten() {
                if let Some((_, t)) = got.groups.get(k as usize) {
                    t.add(u);
                }
            }
        }
        writer.append(&rec)?;
        Ok(())
    })
}

/// Builds the output and summary from the journal (as a live run does), mode "batch".
fn finish_output(
    ctx: &Ctx,
    spec: &OutputSpec,
    index: &journal::JournalIndex,
    got: &Collected,
    json: bool,
    started: Instant,
) -> anyhow::Result<u8> {
    let job = &ctx.job;
    let journal_path = job.journal_path();
    // A run reads the rows its validation pass kept, and what each asks for now, from the
    // spool; `collect` and `import` read the input and plan each row for its request hash.
    let totals = match &ctx.spool {
        Some(spool) => {
            let (rows, mut want) = (spool.output_rows()?, spool.wanted()?);
            sink::write_output(
                spec,
                rows,
                index,
                &journal_path,
                &mut want,
                ctx.judge.as_deref(),
            )?
        }
        None => {
            let planner = match ctx.planner() {
                Ok(p) => p.clone(),
                Err(_) => Arc::new(planner_for(job, ctx.mock)?),
            };
            let mut want = wanted(&planner, Identity::of(job));
            sink::write_output(
                spec,
                output_rows(job)?,
                index,
                &journal_path,
                &mut want,
                ctx.judge.as_deref(),
            )?
        }
    };
    if let Some(warning) = ctx.spool.as_deref().and_then(Spool::input_changed) {
        eprintln!("{warning}");
    }
    let priced = ctx.price.is_some();
    let (status, message, code) = super::outcome(job, &totals, |n| {
        format!(
            "{n} rows have no result; run `promptmill run {} --mode batch` to submit them",
            job.file.display()
        )
    });
    let (status, message, code) = match got.budget {
        Some(cap) => (
            "budget",
            Some(review::budget_message(ctx, cap, index, totals.pending)),
            exit::STOPPED,
        ),
        None => (status, message, code),
    };
    let mut summary = Summary {
        status: status.into(),
        message,
        exit_code: code as i32,
        cost_this_run_usd: got.cost.known().filter(|_| priced),
        spent_total_usd: index.spent.on(ctx.ledger()).known().filter(|_| priced),
        wall_seconds: started.elapsed().as_secs_f64(),
        requests: got.ok + got.failed + got.judged + got.regenerated,
        prices: format!("{} (batch prices)", ctx.prices),
        regenerated_rows: got.regenerated_rows.len() as u64,
        regeneration_requests: got.regenerated,
        regeneration_cost_usd: (got.regenerated > 0)
            .then(|| got.regeneration_cost.known())
            .flatten()
            .filter(|_| priced),
        judge_requests: got.judged,
        judge_cost_this_run_usd: (got.judged > 0).then(|| got.judge_cost.known()).flatten(),
        price_warnings: ctx.price_warnings.clone(),
        ..Summary::for_output(job, "batch", ctx.provider.clone(), &totals, priced)
    };
    if job.cache.prefix {
        // As a live run's: only when the cache played a part in what was collected here.
        let mut groups: Vec<crate::prime::GroupUse> =
            got.groups.iter().filter_map(|(id, t)| t.used(id)).collect();
        crate::prime::busiest_first(&mut groups);
        let pc = crate::summary::PromptCacheSummary::of(
            ctx.price.as_ref(),
            Tier::Batch,
            got.cache,
            groups,
        );
        if pc.any() {
            summary.prompt_cache = Some(pc);
        }
    }
    summary.publish(job, "note", json)?;
    Ok(code)
}

/// One line while waiting: how many batches are still running, and each one's counts.
fn waiting_line(state: &BatchState) -> String {
    let running: Vec<String> = state
        .in_flight()
        .map(|c| {
            format!(
                "{} {} {}/{} done, {} failed",
                c.batch_id.as_deref().unwrap_or("(not created)"),
                c.status.as_deref().unwrap_or("-"),
                c.counts.completed,
                c.counts.total.max(c.requests),
                c.counts.failed
            )
        })
        .collect();
    format!(
        "batch: waiting for {} of {} batches: {}",
        running.len(),
        state.chunks.len(),
        running.join("; ")
    )
}

/// Prints each batch's id, status, request counts and times (as JSON with `json`), after
/// asking the API about the batches still running unless `no_refresh`. Only that needs a key.
pub async fn status(jc: &JobCtx, no_refresh: bool, json: bool) -> anyhow::Result<u8> {
    let ctx = Ctx::new(jc).map_err(start_err)?;
    let path = ctx.state_path();
    if !path.exists() {
        eprintln!(
            "no batches submitted for this job ({} does not exist)",
            path.display()
        );
        return Ok(exit::OK);
    }
    let mut state = BatchState::load(&path, &ctx.job.display_name())?;
    // Only batches that were created and have not ended need the API (and so a key).
    let needs_api = state
        .chunks
        .iter()
        .any(|c| c.batch_id.is_some() && !c.status.as_deref().is_some_and(is_terminal));
    if !no_refresh && needs_api {
        let api = ctx.api().map_err(start_err)?;
        for c in state.chunks.iter_mut() {
            let Some(id) = c.batch_id.clone() else {
                continue;
            };
            if c.status.as_deref().is_some_and(is_terminal) {
                continue;
            }
            let b = api.retrieve(&id).await?;
            adopt(c, &b);
        }
        state.save(&path)?;
    }
    if json {
        crate::stdout::print(&format!("{}\n", serde_json::to_string_pretty(&state)?))?;
    } else {
        crate::stdout::print(&status_table(&state))?;
    }
    Ok(exit::OK)
}

/// One line per batch: id, status, counts, created, expires, collected.
fn status_table(state: &BatchState) -> String {
    // As wide as the longest id (OpenAI's are ~36 characters, Anthropic's ~35).
    let w = state
        .chunks
        .iter()
        .map(|c| c.batch_id.as_deref().map_or(13, str::len))
        .max()
        .unwrap_or(0)
        .max(28);
    let mut out = format!(
        "{:<w$} {:<12} {:>8} {:>9} {:>7}  {:<17} {:<17} {}\n",
        "batch",
        "status",
        "total",
        "completed",
        "failed",
        "created (UTC)",
        "expires (UTC)",
        "collected"
    );
    for c in &state.chunks {
        out.push_str(&format!(
            "{:<w$} {:<12} {:>8} {:>9} {:>7}  {:<17} {:<17} {}\n",
            c.batch_id.as_deref().unwrap_or("(not created)"),
            c.status.as_deref().unwrap_or("-"),
            c.counts.total.max(c.requests),
            c.counts.completed,
            c.counts.failed,
            c.created_at
                .map(crate::time::utc_minutes)
                .unwrap_or_else(|| "-".into()),
            c.expires_at
                .map(crate::time::utc_minutes)
                .unwrap_or_else(|| "-".into()),
            if c.collected { "yes" } else { "no" },
        ));
    }
    out
}

/// Writes the job's pending requests as one Batch API input file at `out` (default:
/// `<output stem>.batch-input.jsonl` beside the output), without submitting.
pub async fn export(
    jc: &JobCtx,
    out: Option<PathBuf>,
    retry_failed: bool,
    interrupt: &Interrupt,
) -> anyhow::Result<u8> {
    let ctx = Ctx::new(jc).map_err(start_err)?;
    // Export journals the bad rows it skips, so it holds the job like a run does. What it
    // creates only for that (folder, journal, lock file) is removed again if unused.
    let journal_path = ctx.job.journal_path();
    let new_journal = !journal_path.exists();
    let new_dir = journal_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf);
    let new_lock = !ctx.job.lock_path().exists();
    let lock = claim(&ctx.job)?;
    let mut ctx = ctx.with_planner().map_err(start_err)?;
    if !ctx.validate(jc, interrupt).await.map_err(start_err)? {
        eprintln!("interrupted: nothing was written");
        return Ok(exit::STOPPED);
    }
    let out = out.unwrap_or_else(|| {
        ctx.input_dir()
            .with_extension("")
            .with_extension("batch-input.jsonl")
    });
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let file =
        std::fs::File::create(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    // The journal is opened for the bad rows it may record; one that export created and
    // left empty (with the folder made for it) is removed again.
    let mut writer = ctx.open_journal()?;
    let mut bytes = 0u64;
    // One file for the user to upload: the groups' rows together, but no primer batch.
    let plan = crate::prime::Plan::for_batch(&ctx.job, &ctx.prefix_groups);
    let (n, _) = pending_lines(
        &ctx,
        &mut writer,
        retry_failed,
        plan.as_ref(),
        false,
        |l| match l {
            Line::Primer(p) | Line::Request(p) => {
                bytes += p.line.len() as u64;
                std::io::Write::write_all(&mut w, p.line)
            }
            Line::Group(_) => Ok(()),
        },
    )?;
    writer.finish()?;
    if new_journal && std::fs::metadata(&journal_path).is_ok_and(|m| m.len() == 0) {
        std::fs::remove_file(&journal_path)
            .with_context(|| format!("{}: cannot remove", journal_path.display()))?;
        if new_lock {
            lock.remove()
                .with_context(|| format!("{}: cannot remove", ctx.job.lock_path().display()))?;
        }
        if let Some(dir) = new_dir {
            let _ = std::fs::remove_dir(dir); // only when empty: nothing else is lost
        }
    }
    std::io::Write::flush(&mut w).with_context(|| format!("{}: cannot write", out.display()))?;
    eprintln!("wrote {n} requests ({bytes} bytes) to {}", out.display());
    let limits = &ctx.job.batch;
    if n > limits.max_requests || bytes > limits.max_bytes {
        eprintln!(
            "note: one Batch API input file holds at most {} requests and {} bytes \
             (batch.max_requests, batch.max_bytes); split this file before uploading it, or \
             let `promptmill run --mode batch` do it",
            limits.max_requests, limits.max_bytes
        );
    }
    Ok(exit::OK)
}

/// Reads Batch API output/error files into the job's journal, then writes the output.
pub async fn import(
    jc: &JobCtx,
    files: &[PathBuf],
    json: bool,
    started: Instant,
) -> anyhow::Result<u8> {
    let ctx = Ctx::new(jc).and_then(Ctx::load_judge).map_err(start_err)?;
    let _lock = claim(&ctx.job)?;
    let spec = output_spec(&ctx.job).map_err(start_err)?;
    let ids = ctx.row_ids().map_err(start_err)?;
    let mut writer = ctx.open_journal()?;
    let mut got = Collected::default();
    for f in files {
        let file = File::open(f).with_context(|| format!("{}: cannot read", f.display()))?;
        let lines = backend::result_lines(ctx.job.api.provider, file, &ctx.job.journal_path())
            .with_context(|| format!("{}", f.display()))?;
        ingest(
            &ctx,
            &ids,
            BufReader::new(lines),
            &mut writer,
            &mut got,
            None,
        )
        .with_context(|| format!("{}", f.display()))?;
    }
    let index = writer.finish()?;
    eprintln!(
        "imported {} answers and {} failures from {} file(s)",
        got.ok,
        got.failed,
        files.len()
    );
    finish_output(&ctx, &spec, &index, &got, json, started)
}

#[cfg(test)]
mod tests {
    use super::status_table;
    use crate::batch::state::{BatchState, Chunk};

    #[test]
    fn status_columns_line_up_with_long_batch_ids() {
        let chunk = |id: &str| Chunk {
            batch_id: Some(id.into()),
            status: Some("in_progress".into()),
            ..Chunk::default()
        };
        let state = BatchState {
            chunks: vec![
                chunk("msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d"),
                chunk("batch_abc"),
                Chunk::default(),
            ],
            ..BatchState::default()
        };
        let table = status_table(&state);
        let lines: Vec<&str> = table.lines().collect();
        let at = lines[0].find("status").unwrap();
        assert!(at > "msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d".len(), "{table}");
        assert_eq!(lines[1].find("in_progress"), Some(at), "{table}");
        assert_eq!(lines[2].find("in_progress"), Some(at), "{table}");
        assert!(lines[3].starts_with("(not created)"), "{table}");
    }
}
