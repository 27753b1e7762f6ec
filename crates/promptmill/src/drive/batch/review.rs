//! The review rounds of a batch job (the judge, regeneration): once every answer is in,
//! each round's requests go into batches of their own, and the next round is written when
//! the last one's results are in, by `run --mode batch` or `collect`, whichever is running.
//!
//! Which round comes next and what it asks for are the live driver's own
//! ([`regenerate::next_round`], [`regenerate::plan_round`]); here they are written into
//! input files instead of fed to a scheduler ([`ToBatch`]), and the results are journaled as
//! the scheduler journals them: a verdict under the judge's identity for the row, a new
//! answer standing for the row's own request, an attempt that failed as spend only.
//!
//! Money: a round takes only the requests that fit under the caps at their worst case (batch
//! prices), given what is spent and reserved; each chunk's worst case is reserved in the
//! journal before it is submitted (its id saved in the batch state first, so a crash never
//! holds it twice) and released once its results, each with its real cost, are journaled.
//! A read of results cut short by a crash is done again from the start, skipping what the
//! journal got since it began, so nothing is journaled or paid twice.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::Value;

use super::{Collected, Ctx, Interrupt, Polling};
use crate::batch::api::BatchObject;
use crate::batch::backend::{self, Backend};
use crate::batch::crash_point;
use crate::batch::input::{self, Splitter};
use crate::batch::results::{self, Joiner};
use crate::batch::state::{BatchState, Chunk, Held, ReviewStep};
use crate::client::{self, Provider};
use crate::config::ProviderKind;
use crate::cost::Tier;
use crate::drive::planner_for;
use crate::drive::regenerate::{self, plan_round, Review, ReviewRows, Round, RoundSink};
use crate::journal::{
    self, JournalIndex, JournalReader, JournalWriter, Record, Status, Unfinished,
};
use crate::judge;
use crate::pipeline::ledger::{Cap, Caps, Charge, Ledger};
use crate::scheduler::WorkItem;
use crate::slots::TextSlots;
use crate::types::Money;

/// How a round is named in messages.
pub(super) fn name(kind: Round) -> &'static str {
    match kind {
        Round::Judge => "judge",
        Round::Regenerate => "regeneration",
    }
}

/// Whether a review round is still to be written for the answers as they are now.
pub(super) fn due(ctx: &Ctx, state: &BatchState) -> bool {
    ctx.reviews()
        && regenerate::next_round(
            ctx.job.judge.is_some(),
            ctx.job.regenerate,
            &state.current_reviews(),
        )
        .is_some()
}

/// What [`next_round`] did.
pub(super) enum Next {
    /// Wrote a round of `requests` requests into the state, to be submitted; `cut`: the cap
    /// left out the rest of the round's requests.
    Written {
        round: &'static str,
        requests: u64,
        cut: Option<Cap>,
    },
    /// The review is over.
    Over,
    /// The cap leaves no room for the next round's first request.
    Budget(Cap),
    /// A stop was requested while the round was being written: nothing of it was kept.
    Stopped,
}

/// Writes the next review round with something to send (recording those with nothing to
/// send on the way) into input files and the state, saved before anything is submitted.
pub(super) fn next_round(
    ctx: &Ctx,
    state: &mut BatchState,
    writer: &mut JournalWriter,
    flags: &Polling,
    path: &Path,
    interrupt: &Interrupt,
) -> anyhow::Result<Next> {
    let job = &ctx.job;
    // Review rounds plan rows again (with feedback, or the judge's prompt about the answer),
    // counting their tokens: a planner of their own, since the run's let its tokenizer go.
    let planner = Arc::new(planner_for(job, ctx.mock)?);
    let review = Review {
        job: job.clone(),
        planner,
        judge: ctx.judge.clone(),
        price: ctx.price.clone(),
        rows: match &ctx.spool {
            Some(spool) => ReviewRows::Spool(spool.clone()),
            None => ReviewRows::Input,
        },
        tier: Tier::Batch,
        prices: ctx.jc.prices.clone(),
    };
    loop {
        let done = state.current_reviews();
        let Some(kind) = regenerate::next_round(review.judge.is_some(), job.regenerate, &done)
        else {
            return Ok(Next::Over);
        };
        let round = state.last_round() + 1;
        let dir = ctx.input_dir();
        let split = Splitter::new(&dir, &format!("r{round}"), flags.limits(job))
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let mut sink = ToBatch {
            split,
            ledger: Ledger::new(Caps::of(&job.budget), writer.index().spent.on(ctx.ledger())),
            provider: job.api.provider,
            url: ctx.endpoint(),
            worst: Vec::new(),
            cut: None,
            interrupt: interrupt.clone(),
        };
        let index = writer.index().clone();
        let requests = plan_round(&review, &index, kind, &mut sink)?;
        let ToBatch {
            split, worst, cut, ..
        } = sink;
        let files = split
            .finish()
            .with_context(|| format!("{}: cannot write batch input", dir.display()))?;
        if interrupt.requested() {
            // The round may be missing rows: it is written again, whole, next time.
            return Ok(Next::Stopped);
        }
        if requests == 0 {
            if let Some(cap) = cut {
                return Ok(Next::Budget(cap));
            }
        }
        let priced = match kind {
            Round::Judge => review.judge.as_ref().is_some_and(|j| j.price.is_some()),
            Round::Regenerate => ctx.price.is_some(),
        };
        for (c, w) in files.into_iter().enumerate() {
            let worst = worst.get(c).copied().unwrap_or(Money::ZERO);
            state.chunks.push(Chunk {
                key: format!("{}-r{round}-c{}", state.id, c + 1),
                round,
                input: w.path,
                requests: w.requests,
                bytes: w.bytes,
                tokens: Some(w.tokens),
                review: Some(kind),
                reservation: Some(Held {
                    id: journal::new_reservation_id(),
                    worst_pico: priced.then_some(worst.0),
                    written: false,
                }),
                ..Chunk::default()
            });
        }
        state.reviews.push(ReviewStep {
            round,
            kind,
            requests,
        });
        state.save(path)?;
        if requests > 0 {
            crash_point("after-review-write");
            return Ok(Next::Written {
                round: name(kind),
                requests,
                cut,
            });
        }
    }
}

/// A review round going into batch input files: each request is taken only if its worst
/// case still fits under the caps.
struct ToBatch {
    split: Splitter,
    ledger: Ledger,
    provider: ProviderKind,
    url: &'static str,
    /// The worst case of each file written, by file.
    worst: Vec<Money>,
    /// The cap that refused a request, if one did.
    cut: Option<Cap>,
    interrupt: Interrupt,
}

impl RoundSink for ToBatch {
    fn stopped(&self) -> bool {
        self.interrupt.requested()
    }

    fn send(&mut self, item: WorkItem) -> anyhow::Result<bool> {
        match self.ledger.reserve(item.worst_cost) {
            Ok(_) => {}
            Err(cap) => {
                self.cut = Some(cap);
                return Ok(false);
            }
        }
        let line = backend::request_line(self.provider, item.row, &item.hash, self.url, &item.body);
        self.split
            .push(&line, item.limiter_tokens)
            .context("cannot write batch input")?;
        let file = self.split.files().saturating_sub(1);
        if self.worst.len() <= file {
            self.worst.resize(file + 1, Money::ZERO);
        }
        self.worst[file] = self.worst[file].saturating_add(item.worst_cost);
        Ok(true)
    }
}

/// Journals the results of review chunk `i` (ended as `b`), as the live scheduler would,
/// then gives its reservation back.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_results(
    ctx: &Ctx,
    api: &Backend,
    state: &mut BatchState,
    i: usize,
    path: &Path,
    writer: &mut JournalWriter,
    ids: &TextSlots,
    got: &mut Collected,
    b: &BatchObject,
    kind: Round,
) -> anyhow::Result<()> {
    let from = match state.chunks[i].ingest_from {
        Some(at) => at,
        None => {
            writer.sync()?;
            let at = std::fs::metadata(writer.path())
                .with_context(|| format!("{}: cannot read", writer.path().display()))?
                .len();
            state.chunks[i].ingest_from = Some(at);
            state.save(path)?;
            at
        }
    };
    let judge = ctx.judge.as_deref();
    let (model_job, price) = match (kind, judge) {
        (Round::Judge, Some(j)) => (&j.job, j.price.as_ref()),
        (Round::Judge, None) => anyhow::bail!(
            "batch {}: a judge round, but the job has no [judge] now; put it back to collect \
             these verdicts",
            b.id
        ),
        (Round::Regenerate, _) => (&ctx.job, ctx.price.as_ref()),
    };
    let provider: Box<dyn Provider> = client::provider_for(model_job);
    let mut journaled = Journaled {
        kind,
        seen: journaled_since(writer.path(), from)?,
        reader: JournalReader::open(writer.path())?,
        schema: model_job.model.schema_json.as_ref(),
    };
    let joiner = Joiner {
        ids,
        provider: provider.as_ref(),
        price,
    };
    let chunk = state.chunks[i].clone();
    for file in [&b.output_file_id, &b.error_file_id].into_iter().flatten() {
        let lines = api.download(file, &chunk.input).await?;
        joiner
            .for_each(BufReader::new(lines), |rec| journaled.add(rec, writer, got))
            .with_context(|| format!("batch {}, file {file}", b.id))?;
    }
    if b.status == "failed" {
        // The batch failed validation: no request ran. A verdict asked for failed; a new
        // attempt that failed keeps the answer before it.
        let why = b.failure_reason();
        for (row, hash) in input_requests(&chunk)? {
            let rec = Record {
                batch: true,
                ..Record::failed(
                    row,
                    ids.get(row)?.unwrap_or_default(),
                    hash,
                    1,
                    format!("batch {} failed validation: {why}", b.id),
                )
            };
            journaled.add(rec, writer, got)?;
        }
    }
    if let Some(h) = chunk.reservation.filter(|h| h.written) {
        writer.release(0, h.id)?;
    }
    Ok(())
}

/// The (row, request hash) of every line of a chunk's input file.
fn input_requests(chunk: &Chunk) -> anyhow::Result<Vec<(u64, String)>> {
    let input = &chunk.input;
    let cannot_read = || format!("{}: cannot read", input.display());
    let text = BufReader::new(File::open(input).with_context(cannot_read)?);
    let mut out = Vec::new();
    for line in text.split(b'\n') {
        let line = line.with_context(cannot_read)?;
        if line.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_slice(&line).with_context(cannot_read)?;
        if let Some((row, hash)) = v["custom_id"].as_str().and_then(input::parse_custom_id) {
            out.push((row, hash.to_string()));
        }
    }
    Ok(out)
}

/// The (id, request hash) of every journal line from byte `from` on: what an earlier read
/// of the same results journaled before it was cut short.
fn journaled_since(journal: &Path, from: u64) -> anyhow::Result<HashSet<(String, String)>> {
    let cannot_read = || format!("{}: cannot read", journal.display());
    let mut file = File::open(journal).with_context(cannot_read)?;
    file.seek(SeekFrom::Start(from)).with_context(cannot_read)?;
    let mut seen = HashSet::new();
    for line in BufReader::new(file).split(b'\n') {
        let line = line.with_context(cannot_read)?;
        let Ok(v) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        if let (Some(id), Some(hash)) = (v["id"].as_str(), v["hash"].as_str()) {
            seen.insert((id.to_string(), hash.to_string()));
        }
    }
    Ok(seen)
}

/// Journals a review chunk's results one by one.
struct Journaled<'a> {
    kind: Round,
    /// What an earlier, interrupted read of these results journaled already.
    seen: HashSet<(String, String)>,
    reader: JournalReader,
    schema: Option<&'a Value>,
}

impl Journaled<'_> {
    /// Journals one result (a record as the joiner made it: the row's identity, the
    /// request's hash, batch prices) as the live scheduler journals a verdict or a new
    /// attempt.
    fn add(
        &mut self,
        mut rec: Record,
        writer: &mut JournalWriter,
        got: &mut Collected,
    ) -> anyhow::Result<()> {
        if let Some(schema) = self.schema {
            results::apply_schema(&mut rec, schema);
        }
        if self.kind == Round::Judge {
            rec.id = judge::id(&rec.id);
        }
        if !self.seen.insert((rec.id.clone(), rec.hash.clone())) {
            return Ok(());
        }
        let charge = Charge::of(rec.usage.is_some() && !rec.cached, rec.cost_pico);
        match self.kind {
            Round::Judge => {
                writer.append(&rec)?;
                got.judged += 1;
                got.judge_cost.add(charge);
            }
            Round::Regenerate => {
                got.regenerated += 1;
                got.regenerated_rows.insert(rec.row);
                got.regeneration_cost.add(charge);
                if rec.status == Status::Ok {
                    // The new answer stands for the row's own request, one attempt more.
                    let Some(prev) = self.reader.get(writer.index(), &rec.id)? else {
                        tracing::warn!(
                            "row {}: a new attempt came back for a row with no answer; kept \
                             out of the output",
                            rec.row.saturating_add(1)
                        );
                        return Ok(());
                    };
                    rec.regen_of = Some(prev.answers().to_string());
                    rec.regenerated = prev.regenerated.saturating_add(1);
                    writer.append(&rec)?;
                } else if let Some(usage) = rec.usage {
                    // A failed attempt keeps the row's last answer; what it cost is spent.
                    let spend = Unfinished {
                        row: rec.row,
                        id: rec.id.clone(),
                        hash: rec.hash.clone(),
                        usage,
                        cost_pico: rec.cost_pico,
                    };
                    writer.append_unfinished(&spend, None)?;
                }
            }
        }
        got.cost.add(charge);
        Ok(())
    }
}

/// Why the review stopped at a cap, and how to go on.
pub(super) fn budget_message(ctx: &Ctx, cap: Cap, index: &JournalIndex, pending: u64) -> String {
    let caps = Caps::of(&ctx.job.budget);
    let spent = index
        .spent
        .on(ctx.ledger())
        .known()
        .map_or_else(|| "an unknown amount".to_string(), |m| m.to_string());
    let job = ctx.job.file.display();
    let (name, value, flag) = match cap {
        Cap::PerRun => (
            "budget.max_usd_per_run",
            caps.per_run.unwrap_or_default(),
            "--max-usd-per-run",
        ),
        Cap::Total => (
            "budget.max_usd_total",
            caps.total.unwrap_or_default(),
            "--max-usd",
        ),
    };
    format!(
        "budget cap reached: {spent} spent; the review rounds (judge, regeneration) stopped \
         where the next request could cross {name} = {value} at its worst case (batch \
         prices; in batch mode the per-run cap holds for each round), {pending} rows not \
         done. Raise {name} (or {flag}) and run `promptmill collect {job}` to go on"
    )
}
