//! Writing a round of batch input files: every row that has no result yet, each prefix
//! group's rows together, with its primer batches first (see [`crate::prime`]); and, when
//! the results come back, which rows were which group's.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{anyhow, bail, Context as _};

use super::{Collected, Ctx, Polling};
use crate::batch::backend;
use crate::batch::input::{self, Splitter};
use crate::batch::state::{BatchState, Chunk, GroupLines, Held};
use crate::drive::{bad_row_record, cap_names};
use crate::identity::Identity;
use crate::journal::{self, JournalWriter};
use crate::pipeline::ledger::{Cap, Caps, Ledger, Spent};
use crate::pipeline::rows::Step;
use crate::prime::Plan;
use crate::resume::Resume;
use crate::slots::SlotFile;
use crate::types::Money;

/// Where the rows of chunk `c`'s prefix groups are: each row's place in `got.groups`, read
/// from its input file (the results name rows, the state names lines). `None` when the chunk
/// holds no group.
pub(super) fn group_rows(
    ctx: &Ctx,
    c: &Chunk,
    got: &mut Collected,
) -> anyhow::Result<Option<SlotFile>> {
    if c.groups.is_empty() {
        return Ok(None);
    }
    let cannot_read = || format!("{}: cannot read", c.input.display());
    let slots = SlotFile::create_beside(&ctx.job.journal_path())
        .context("cannot keep the rows' prefix groups in a temporary file")?;
    let text = BufReader::new(File::open(&c.input).with_context(cannot_read)?);
    for (at, line) in text.split(b'\n').enumerate() {
        let line = line.with_context(cannot_read)?;
        let Some(id) = GroupLines::of(&c.groups, at as u64) else {
            continue;
        };
        #[derive(serde::Deserialize)]
        struct Custom {
            custom_id: String,
        }
        let Ok(l) = serde_json::from_slice::<Custom>(&line) else {
            continue;
        };
        if let Some((row, _)) = input::parse_custom_id(&l.custom_id) {
            let k = got.group(id);
            slots.set(row, k as u64).with_context(cannot_read)?;
        }
    }
    Ok(Some(slots))
}

/// Writes input files for every row that needs a request and adds them to the state as a
/// new round; returns the number of requests. With primers (see [`crate::prime`]), each
/// primer is a chunk of its own, listed before the round's other chunks, which wait for it.
pub(super) fn new_round(
    ctx: &Ctx,
    state: &mut BatchState,
    writer: &mut JournalWriter,
    flags: &Polling,
    retry_failed: bool,
) -> anyhow::Result<u64> {
    let round = state.last_round() + 1;
    let dir = ctx.input_dir();
    let cannot_create = || format!("{}: cannot create", dir.display());
    let limits = flags.limits(&ctx.job);
    let mut split =
        Splitter::new(&dir, &format!("r{round}"), limits).with_context(cannot_create)?;
    let one_each = input::Limits {
        max_requests: 1,
        ..limits
    };
    let mut primers =
        Splitter::new(&dir, &format!("r{round}p"), one_each).with_context(cannot_create)?;
    let plan = Plan::for_batch(&ctx.job, &ctx.prefix_groups);
    // Per main file, where each group's lines are; per primer, its group.
    let mut spans: Vec<Vec<GroupLines>> = Vec::new();
    let mut primed_ids: Vec<Option<String>> = Vec::new();
    // The worst case of each primer and of each main file, reserved before it is submitted.
    let (mut primer_worst, mut file_worst) = (Vec::new(), Vec::<Money>::new());
    let (n, worst) = pending_lines(
        ctx,
        writer,
        retry_failed,
        plan.as_ref(),
        true,
        |l| match l {
            Line::Group(rows) => split.keep_together(rows),
            Line::Primer(p) => {
                primed_ids.push(p.group.map(str::to_string));
                primer_worst.push(p.worst.unwrap_or(Money::ZERO));
                primers.push(p.line, p.tokens)
            }
            Line::Request(p) => {
                split.push(p.line, p.tokens)?;
                if let Some((file, at)) = split.position() {
                    file_worst.resize(file_worst.len().max(file + 1), Money::ZERO);
                    if let (Some(w), Some(cost)) = (file_worst.get_mut(file), p.worst) {
                        *w = w.saturating_add(cost);
                    }
                    if let Some(id) = p.group {
                        spans.resize_with(spans.len().max(file + 1), Vec::new);
                        if let Some(s) = spans.get_mut(file) {
                            GroupLines::note(s, id, at);
                        }
                    }
                }
                Ok(())
            }
        },
    )?;
    let cannot_write = || format!("{}: cannot write batch input", dir.display());
    let primers = primers.finish().with_context(cannot_write)?;
    let files = split.finish().with_context(cannot_write)?;
    check_budget(ctx, &writer.index().spent, n, worst)?;
    let one = |id: Option<String>| -> Vec<GroupLines> {
        id.map(|id| GroupLines {
            id,
            from: 0,
            lines: 1,
        })
        .into_iter()
        .collect()
    };
    let mut primed_ids = primed_ids.into_iter();
    let mut primer_worst = primer_worst.into_iter();
    let primed = primers.into_iter().enumerate().map(|(c, w)| {
        let groups = one(primed_ids.next().flatten());
        let worst = primer_worst.next().unwrap_or(Money::ZERO);
        (format!("p{}", c + 1), w, true, groups, worst)
    });
    let (mut spans, mut file_worst) = (spans.into_iter(), file_worst.into_iter());
    let rest = files.into_iter().enumerate().map(|(c, w)| {
        let groups = spans.next().unwrap_or_default();
        let worst = file_worst.next().unwrap_or(Money::ZERO);
        (format!("c{}", c + 1), w, false, groups, worst)
    });
    // Each chunk's worst case is reserved in the journal before it is submitted and given
    // back once its results are in (see [`reserve`]), so a batch in progress counts
    // against the caps of any run of the job, after a crash too.
    let priced = ctx.price.is_some();
    for (name, w, primer, groups, worst) in primed.chain(rest) {
        state.chunks.push(Chunk {
            key: format!("{}-r{round}-{name}", state.id),
            round,
            input: w.path,
            requests: w.requests,
            bytes: w.bytes,
            tokens: Some(w.tokens),
            primer,
            groups,
            reservation: Some(Held {
                id: journal::new_reservation_id(),
                worst_pico: priced.then_some(worst.0),
                written: false,
            }),
            ..Chunk::default()
        });
    }
    Ok(n)
}

/// Writes chunk `i`'s reservation into the journal before it is submitted, unless it is
/// there already.
pub(super) fn reserve(
    state: &mut BatchState,
    i: usize,
    path: &Path,
    writer: &mut JournalWriter,
) -> anyhow::Result<()> {
    let Some(held) = state.chunks[i].reservation.filter(|h| !h.written) else {
        return Ok(());
    };
    writer.reserve_as(held.id, 0, held.worst_pico)?;
    if let Some(h) = state.chunks[i].reservation.as_mut() {
        h.written = true;
    }
    state.save(path)?;
    Ok(())
}

/// A batch cannot be stopped half way the way a live run stops at the cap: refuse to submit
/// a round whose worst case (every row generating `max_tokens`) could cross a budget cap
/// (the cumulative one, or the per-run one: a round is this run's spend).
pub(super) fn check_budget(
    ctx: &Ctx,
    spent: &Spent,
    requests: u64,
    worst: Money,
) -> anyhow::Result<()> {
    let caps = Caps::of(&ctx.job.budget);
    if !caps.any() {
        return Ok(());
    }
    if ctx.price.is_none() {
        bail!(
            "{} is set but there is no price for model '{}', so the cap cannot be enforced; \
             give a price table with --prices FILE",
            cap_names(&ctx.job),
            ctx.job.model.name
        );
    }
    let before = spent.on(ctx.ledger());
    let ledger = Ledger::new(caps, before);
    if requests == 0 {
        return Ok(());
    }
    let spent = before
        .known()
        .map_or_else(|| "an unknown amount".to_string(), |m| m.to_string());
    match ledger.fits(worst) {
        Ok(()) => Ok(()),
        Err(Cap::Total) => bail!(
            "budget: these {requests} requests could cost up to {worst} at batch prices (if every \
             row used model.max_tokens) and {spent} is already spent, over budget.max_usd_total \
             (budget.max_usd) = {}; nothing was submitted. Raise budget.max_usd_total (or \
             --max-usd) or lower model.max_tokens",
            caps.total.unwrap_or_default()
        ),
        Err(Cap::PerRun) => bail!(
            "budget: these {requests} requests could cost up to {worst} at batch prices (if every \
             row used model.max_tokens), over budget.max_usd_per_run = {}; nothing was \
             submitted. Raise budget.max_usd_per_run (or --max-usd-per-run) or lower \
             model.max_tokens",
            caps.per_run.unwrap_or_default()
        ),
    }
}

/// How a row's line is marked for its prefix group (see [`crate::prime::Plan::mark_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Its group's primer.
    Primer,
    /// A row of a group whose primer goes first.
    AfterPrimer,
    /// Any other row (on the OpenAI shape a group's rows carry its key all the same).
    Plain,
}

/// What [`pending_lines`] hands on, in order.
pub(super) enum Line<'a> {
    /// A prefix group's lines come next, this many.
    Group(u64),
    /// A group's primer: its own batch, before the others.
    Primer(Pending<'a>),
    /// One request.
    Request(Pending<'a>),
}

/// One request's input line, as [`pending_lines`] hands it on.
pub(super) struct Pending<'a> {
    pub line: &'a [u8],
    /// Its tokens as the enqueued-token limit counts them.
    pub tokens: u64,
    /// The group it was written with (the primed groups').
    pub group: Option<&'a str>,
    /// Its worst case at batch prices (`None`: no price).
    pub worst: Option<Money>,
}

/// Hands the input line of every row that has no result yet to `emit` (failed rows too with
/// `retry_failed`), from the Steps the validation pass kept, decided again against the
/// journal as it is now. Bad rows (only there when the job skips them) are journaled as
/// failed. Returns the number of lines and their worst-case cost at batch prices.
///
/// With a `plan` (`cache.prefix`), the rows of each primed group come first, group after
/// group (largest first), each group's rows together, marked as [`Plan::mark_batch`] says;
/// with `primers` and [`Plan::batch_primers`], a group of two or more rows gives its first
/// as a [`Line::Primer`]. Then every other row in input order. The spool is read once more
/// per group (as a live run does), so memory stays flat.
pub(super) fn pending_lines(
    ctx: &Ctx,
    writer: &mut JournalWriter,
    retry_failed: bool,
    plan: Option<&Plan>,
    primers: bool,
    mut emit: impl FnMut(Line<'_>) -> std::io::Result<()>,
) -> anyhow::Result<(u64, Money)> {
    let job = &ctx.job;
    let spool = ctx
        .spool
        .as_ref()
        .ok_or_else(|| anyhow!("internal: the rows were not validated"))?;
    let identity = Identity::of(job);
    let mut resume = Resume::new(
        writer.path(),
        writer.index().clone(),
        retry_failed,
        identity,
    )?;
    let url = ctx.endpoint();
    let primed = plan.map_or(0, |p| p.primed);
    let primers = primers && plan.is_some_and(|p| p.batch_primers(job));
    // The primed group of a row's stored step, if any.
    let group_of = |step: &Step| match step {
        Step::Send(req) => plan
            .and_then(|p| p.group_of(&req.prefix))
            .and_then(|(g, _)| g.primed),
        _ => None,
    };
    let reading = || spool.read().context("reading the row spool");
    let (mut n, mut worst) = (0, Money::ZERO);
    let mut send = |req: crate::pipeline::rows::Request,
                    mark: Mark,
                    grouped: bool,
                    emit: &mut dyn FnMut(Line<'_>) -> std::io::Result<()>|
     -> anyhow::Result<()> {
        let mut body = req.body;
        let mut group = None;
        if let Some(p) = plan {
            if let Some((g, link)) = p.group_of(&req.prefix) {
                p.mark_batch(g, link, mark != Mark::Plain, &mut body);
                group = grouped.then_some(g.id.as_str());
            }
        }
        let line = backend::request_line(job.api.provider, req.row, &req.hash, url, &body);
        let pending = Pending {
            line: &line,
            tokens: req.limiter_tokens,
            group,
            worst: req.worst_cost,
        };
        match mark {
            Mark::Primer => emit(Line::Primer(pending))?,
            _ => emit(Line::Request(pending))?,
        }
        n += 1;
        if let Some(cost) = req.worst_cost {
            worst = worst.saturating_add(cost);
        }
        Ok(())
    };
    if primed > 0 {
        // Each primed group's rows to send now.
        let mut counts = vec![0u64; primed];
        for stepped in reading()? {
            let stepped = stepped.context("reading the row spool")?;
            let Some(i) = group_of(&stepped.step) else {
                continue;
            };
            let sent = matches!(stepped.step.recheck(&mut resume)?, Step::Send(_));
            if let (true, Some(c)) = (sent, counts.get_mut(i)) {
                *c += 1;
            }
        }
        for (i, &count) in counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            // A primer pays off only when a row of its group reads what it wrote.
            let with_primer = primers && count >= 2;
            emit(Line::Group(count - u64::from(with_primer)))?;
            let mut next = if with_primer {
                Mark::Primer
            } else {
                Mark::Plain
            };
            for stepped in reading()? {
                let stepped = stepped.context("reading the row spool")?;
                if group_of(&stepped.step) != Some(i) {
                    continue;
                }
                let Step::Send(req) = stepped.step.recheck(&mut resume)? else {
                    continue;
                };
                send(req, next, true, &mut emit)?;
                if next == Mark::Primer {
                    next = Mark::AfterPrimer;
                }
            }
        }
    }
    for stepped in reading()? {
        let stepped = stepped.context("reading the row spool")?;
        if group_of(&stepped.step).is_some() {
            continue; // written with its group, above
        }
        let req = match stepped.step.recheck(&mut resume)? {
            Step::Send(req) => req,
            Step::Bad { row, id, reason } => {
                let rec = bad_row_record(row, id, reason, true);
                writer.append(&rec)?;
                continue;
            }
            Step::Skip { .. } | Step::Cached { .. } => continue,
        };
        send(req, Mark::Plain, false, &mut emit)?;
    }
    Ok((n, worst))
}
