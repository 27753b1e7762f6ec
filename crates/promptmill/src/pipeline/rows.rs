//! The row loop, once: read → render and plan → resume decision → cache → worst-case price.
//!
//! [`RowLoop::step`] is the one function that renders and plans a row and decides what to do
//! with it; it yields a [`Step`] and writes nothing. [`first_pass`] runs it over the whole
//! input (the validation pass, which is also the dry run and the estimate): rows are read on
//! one thread in chunks and stepped on worker threads, and the first bad row in input order
//! is the one reported. With a spool it records every row's cells and Step in an unnamed
//! temporary file, in input order, so the send pass (live or batch) and the output read the
//! spool instead of the input: the input is read once per run, and nothing is rendered or
//! hashed twice.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cache::{Cache, Entry};
use crate::config::Job;
use crate::cost::{ModelPrice, PriceTable, Tier};
use crate::identity::{Identity, Wanted};
use crate::plan::{Planned, Planner};
use crate::resume::{Decision, Resume};
use crate::source::{BadRow, Source, SourceError};
use crate::types::{Message, Money, Row, Usage};

/// Rows per chunk handed to a worker: large enough that channel traffic is negligible,
/// small enough that a bad row early in the file is reported without reading much more.
const CHUNK: usize = 256;

/// A request to send for one row, planned and priced at its worst case.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// 0-based row index.
    pub row: u64,
    /// The row's id.
    pub id: String,
    /// The request hash (resume and cache identity).
    pub hash: String,
    /// The provider's request body.
    pub body: Value,
    /// Prompt tokens as counted.
    pub prompt_tokens: u64,
    /// Tokens the limiter takes before sending (prompt with its margin + max completion).
    pub limiter_tokens: u64,
    /// The worst-case usage: what the budget reserves.
    pub worst: Usage,
    /// The worst case priced at the loop's tier; `None` = unknown price.
    pub worst_cost: Option<Money>,
    /// Why it is sent: new, changed since, or a failed row sent again.
    pub decision: Decision,
    /// The row's own model (`model.name_column`), when it is not the job's: the request is
    /// priced at that model's price.
    pub model: Option<String>,
    /// Its prefixes (`cache.prefix`; empty for a row with a model of its own, or when
    /// off), for a live run to find the row's prefix group (see [`crate::prime`]).
    pub prefix: Vec<crate::prime::Link>,
}

/// What to do with one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this request.
    Send(Request),
    /// The same request was answered before: the cached answer stands in, nothing is sent.
    Cached {
        row: u64,
        id: String,
        hash: String,
        entry: Entry,
        decision: Decision,
    },
    /// The journal already holds this row's answer to the same request (done), or its
    /// failure, kept as failed.
    Skip {
        row: u64,
        id: String,
        /// The request's hash (the same request asked by a later row shares the answer).
        hash: String,
        decision: Decision,
    },
    /// The row cannot be read or rendered (only when `input.skip_bad_rows` is on).
    Bad {
        row: u64,
        id: String,
        reason: String,
    },
}

/// A row and what to do with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stepped {
    /// The row's cells (for a bad record: a stand-in with no cells).
    pub row: Row,
    /// What to do with it.
    pub step: Step,
    /// The rendered messages (empty for a row not planned or read back from a spool).
    pub messages: Vec<Message>,
    /// The judge's prompt tokens for this row, its answer left out (0 without a judge, or
    /// read back from a spool).
    pub judge_tokens: u64,
    /// The row's `[[outputs]]` requests, in the job's order (empty for a bad row).
    pub outputs: Vec<Step>,
}

/// Renders, plans and decides rows for one job.
pub struct RowLoop<'a> {
    job: &'a Job,
    planner: &'a Planner,
    price: Option<&'a ModelPrice>,
    tier: Tier,
    cache: Option<&'a Cache>,
    judge: Option<&'a crate::judge::Judge>,
    /// Where rows' own models are priced (`model.name_column`); `None` = unknown prices.
    prices: Option<&'a PriceTable>,
    /// The job's `[[outputs]]`.
    outputs: &'a [crate::outputs::Extra],
    file: String,
}

impl<'a> RowLoop<'a> {
    /// A loop over `job`'s rows: worst cases priced at `tier` (`price` `None` = unknown),
    /// answers looked up in `cache` when given.
    pub fn new(
        job: &'a Job,
        planner: &'a Planner,
        price: Option<&'a ModelPrice>,
        tier: Tier,
        cache: Option<&'a Cache>,
    ) -> RowLoop<'a> {
        RowLoop {
            job,
            planner,
            price,
            tier,
            cache,
            judge: None,
            prices: None,
            outputs: &[],
            file: job.input.path.display().to_string(),
        }
    }

    /// Also plans every row's `[[outputs]]` requests (priced from [`Self::with_prices`]).
    pub fn with_outputs(mut self, outputs: &'a [crate::outputs::Extra]) -> RowLoop<'a> {
        self.outputs = outputs;
        self
    }

    /// Prices rows whose model comes from a column (`model.name_column`) from `prices`.
    pub fn with_prices(mut self, prices: Option<&'a PriceTable>) -> RowLoop<'a> {
        self.prices = prices;
        self
    }

    /// The price of a row's own model; `None` when unknown.
    fn row_price(&self, model: &str) -> Option<&'a ModelPrice> {
        self.prices.and_then(|t| t.lookup(model))
    }

    /// Also renders the judge's prompt for every row (an empty answer in place of the
    /// answer), so a judge template that fails on a row stops the pass before anything is
    /// sent, and the estimate can price the judge.
    pub fn with_judge(mut self, judge: Option<&'a crate::judge::Judge>) -> RowLoop<'a> {
        self.judge = judge;
        self
    }

    /// Whether the job sends this row at all: a shard (`run --shard`) leaves out the rows of
    /// other shards, before they are rendered. An unreadable record stays, to be reported.
    fn holds(&self, item: &Result<Result<Row, BadRow>, SourceError>) -> bool {
        let row = match item {
            _ if self.job.shard.is_none() => return true,
            Ok(Ok(row)) => row,
            Ok(Err(bad)) => &bad.row,
            Err(_) => return true,
        };
        self.job.holds(&Identity::of(self.job).key(row))
    }

    /// The one place a row is rendered, planned and decided. An error (the message names
    /// file, line and column) stops the pass; with `input.skip_bad_rows` a bad row is a
    /// [`Step::Bad`] instead. Without `resume` every good row is new.
    pub fn step(
        &self,
        item: Result<Result<Row, BadRow>, SourceError>,
        resume: Option<&mut Resume>,
    ) -> Result<Stepped, String> {
        let skip_bad = self.job.input.skip_bad_rows;
        let identity = Identity::of(self.job);
        let bad = |row: Row, reason: String| Stepped {
            step: Step::Bad {
                row: row.index,
                id: identity.key(&row),
                reason,
            },
            row,
            messages: Vec::new(),
            judge_tokens: 0,
            outputs: Vec::new(),
        };
        let row = match item {
            Ok(Ok(row)) => row,
            Ok(Err(b)) if skip_bad => return Ok(bad(b.row, b.error.to_string())),
            Ok(Err(b)) => return Err(b.error.to_string()),
            Err(e) => return Err(e.to_string()),
        };
        let mut planned = match self.planner.plan(&row) {
            Ok(p) => p,
            Err(e) if skip_bad => {
                let reason = format!("{}: {e}", self.file);
                tracing::warn!("{reason}");
                return Ok(bad(row, reason));
            }
            Err(e) => return Err(format!("{}: {e}", self.file)),
        };
        if let Some(model) = &planned.model {
            if self.job.budget.any_cap() && self.row_price(model).is_none() {
                let column = self.job.model.name_column.as_deref().unwrap_or_default();
                let reason = format!(
                    "{}: row {} (line {}, id {:?}): column '{column}' (model.name_column): there \
                     is no price for model '{model}', so the budget cap cannot be enforced; give \
                     a price table with --prices FILE",
                    self.file,
                    row.index.saturating_add(1),
                    row.line,
                    row.id
                );
                if !skip_bad {
                    return Err(reason);
                }
                return Ok(bad(row, reason));
            }
        }
        let judge_tokens = match self.judge.map(|j| j.plan(&row, "")) {
            None => 0,
            Some(Ok(p)) => p.prompt_tokens,
            Some(Err(e)) if skip_bad => {
                let reason = format!("{}: [judge]: {e}", self.file);
                tracing::warn!("{reason}");
                return Ok(bad(row, reason));
            }
            Some(Err(e)) => return Err(format!("{}: [judge]: {e}", self.file)),
        };
        let mut extra = Vec::with_capacity(self.outputs.len());
        for o in self.outputs {
            match o.planner.plan(&row) {
                Ok(mut p) => {
                    p.model = Some(o.model.clone());
                    extra.push((crate::outputs::id(&o.name, &identity.key(&row)), p));
                }
                Err(e) => {
                    let reason = format!("{}: [[outputs]] {}: {e}", self.file, o.name);
                    if !skip_bad {
                        return Err(reason);
                    }
                    tracing::warn!("{reason}");
                    return Ok(bad(row, reason));
                }
            }
        }
        let (index, id) = (row.index, identity.key(&row));
        let mut resume = resume;
        let mut outputs = Vec::with_capacity(extra.len());
        for (out_id, p) in extra {
            outputs.push(self.decide(index, out_id, p, resume.as_deref_mut())?);
        }
        let messages = std::mem::take(&mut planned.messages);
        let mut step = self.decide(index, id, planned, resume)?;
        if let Step::Send(req) = &mut step {
            if self.job.cache.prefix && req.model.is_none() {
                req.prefix = crate::prime::links(&messages);
            }
        }
        Ok(Stepped {
            row,
            step,
            messages,
            judge_tokens,
            outputs,
        })
    }

    /// What to do with one planned request of row `index` under identity `id`: skip it (the
    /// journal has its answer, or its failure kept), take the cached answer, or send it.
    fn decide(
        &self,
        index: u64,
        id: String,
        planned: Planned,
        resume: Option<&mut Resume>,
    ) -> Result<Step, String> {
        let decision = match resume {
            Some(r) => r
                .decide_key(&id, &planned.hash)
                .map_err(|e| e.to_string())?,
            None => Decision::New,
        };
        Ok(if !decision.send() {
            Step::Skip {
                row: index,
                id,
                hash: planned.hash,
                decision,
            }
        } else if let Some(entry) = self.cache.and_then(|c| c.get(&planned.hash)) {
            Step::Cached {
                row: index,
                id,
                hash: planned.hash,
                entry,
                decision,
            }
        } else {
            Step::Send(self.request(index, id, planned, decision))
        })
    }

    /// The next attempt of a row its answer's checks rejected: planned with `feedback`
    /// (the failed checks' reasons; see [`Planner::plan_with_feedback`]) and priced at its
    /// worst case like any request.
    pub fn regenerate(&self, row: &Row, id: String, feedback: &str) -> Result<Request, String> {
        let planned = self
            .planner
            .plan_with_feedback(row, feedback)
            .map_err(|e| e.to_string())?;
        Ok(self.request(row.index, id, planned, Decision::Changed))
    }

    /// The judge's request about a row's answer (this loop being the judge's, over
    /// [`crate::judge::Judge::job`]), priced at its worst case like any request.
    pub fn judge_request(&self, row: &Row, id: String, planned: Planned) -> Request {
        self.request(row.index, id, planned, Decision::New)
    }

    /// A planned row as a request, with what the limiter and the budget take for it.
    fn request(&self, index: u64, id: String, planned: Planned, decision: Decision) -> Request {
        let reserve_prompt = crate::plan::reserve(planned.prompt_tokens, planned.exact);
        let max_out = planned.max_completion_tokens;
        let worst = Usage {
            prompt_tokens: reserve_prompt,
            completion_tokens: max_out,
            ..Usage::default()
        };
        let price = match &planned.model {
            Some(m) => self.row_price(m),
            None => self.price,
        };
        Request {
            row: index,
            id,
            hash: planned.hash,
            body: planned.body,
            prompt_tokens: planned.prompt_tokens,
            limiter_tokens: reserve_prompt.saturating_add(max_out),
            worst_cost: price.map(|p| p.cost(&worst, self.tier)),
            worst,
            decision,
            model: planned.model,
            prefix: Vec::new(),
        }
    }
}

/// How [`first_pass`] runs.
#[derive(Clone, Copy, Default)]
pub struct PassOptions<'a> {
    /// An earlier run's journal, for the resume decisions; `None` = every row is new.
    pub resume: Option<&'a Resume>,
    /// Worker threads for rendering and tokenizing; 0 = one per core.
    pub workers: usize,
    /// Keep a spool in the folder of this path (see [`Spool`]); `None` = no spool.
    pub spool_beside: Option<&'a Path>,
}

/// A chunk of input in file order: (position among items, row or read error).
type Chunk = Vec<(u64, Result<Result<Row, BadRow>, SourceError>)>;

/// What a worker made of one chunk.
struct ChunkOut<A> {
    acc: A,
    spooled: Vec<u8>,
    error: Option<String>,
}

/// Steps every row of the input. `fold` sees each row with its position among the input's
/// records, on a worker thread, into a per-chunk accumulator; `merge` receives the
/// accumulators in input order. The first error in input order is returned. With
/// `opts.spool_beside`, returns the spool of every row.
pub fn first_pass<A, F, M>(
    rl: &RowLoop<'_>,
    opts: &PassOptions<'_>,
    fold: F,
    mut merge: M,
) -> anyhow::Result<Option<Spool>>
where
    A: Default + Send,
    F: Fn(&mut A, u64, &Stepped) + Sync,
    M: FnMut(A),
{
    let job = rl.job;
    let input = job.input.path.clone();
    let seen = Stamp::of(&input);
    let source = Source::open(&input, &job.source_options())?;
    let mut spool = match opts.spool_beside {
        Some(beside) => Some(BufWriter::new(
            crate::slots::temp_file_beside(beside)
                .map_err(|e| anyhow::anyhow!("cannot create a temporary file: {e}"))?,
        )),
        None => None,
    };
    let keep = spool.is_some();
    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.workers
    };
    // After a chunk reports an error, later chunks are not needed: the reader stops and
    // workers skip them, but earlier chunks still finish so the first error wins.
    let stop_after = AtomicU64::new(u64::MAX);
    let (chunk_tx, chunk_rx) = sync_channel::<(u64, Chunk)>(workers * 2);
    let chunk_rx = Mutex::new(chunk_rx);
    let (result_tx, result_rx) = sync_channel::<(u64, ChunkOut<A>)>(workers * 2);
    let (mut rows, mut first_error, mut write_error) = (0u64, None::<String>, None);

    std::thread::scope(|s| {
        let stop_after = &stop_after;
        s.spawn(move || {
            let mut seq = 0u64;
            let mut items = Vec::with_capacity(CHUNK);
            for (pos, item) in (0u64..).zip(source.keep_bad_rows()) {
                items.push((pos, item));
                if items.len() == CHUNK {
                    let full = std::mem::replace(&mut items, Vec::with_capacity(CHUNK));
                    if seq > stop_after.load(Ordering::Relaxed)
                        || chunk_tx.send((seq, full)).is_err()
                    {
                        return;
                    }
                    seq += 1;
                }
            }
            if !items.is_empty() {
                let _ = chunk_tx.send((seq, items));
            }
        });
        for _ in 0..workers {
            let (chunk_rx, result_tx, fold) = (&chunk_rx, result_tx.clone(), &fold);
            s.spawn(move || {
                let mut resume = opts.resume.map(Resume::fork).transpose();
                while let Some((seq, items)) = recv_shared(chunk_rx) {
                    if seq > stop_after.load(Ordering::Relaxed) {
                        continue;
                    }
                    let out = match resume.as_mut() {
                        Ok(resume) => step_chunk(rl, resume.as_mut(), fold, keep, items),
                        Err(e) => ChunkOut {
                            acc: A::default(),
                            spooled: Vec::new(),
                            error: Some(e.to_string()),
                        },
                    };
                    if out.error.is_some() {
                        stop_after.fetch_min(seq, Ordering::Relaxed);
                    }
                    if result_tx.send((seq, out)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(result_tx);
        // Chunks finish out of order; they are merged (and spooled) in input order. The
        // channels are bounded, so only a few chunks ever wait here.
        let mut waiting = BTreeMap::new();
        let mut next = 0u64;
        for (seq, out) in result_rx {
            waiting.insert(seq, out);
            while let Some(out) = waiting.remove(&next) {
                next += 1;
                if first_error.is_some() {
                    continue;
                }
                if let Some(e) = out.error {
                    first_error = Some(e);
                    continue;
                }
                if let Some(w) = spool.as_mut() {
                    if write_error.is_none() {
                        write_error = w.write_all(&out.spooled).err();
                    }
                }
                rows += out.spooled.iter().filter(|&&b| b == b'\n').count() as u64;
                merge(out.acc);
            }
        }
    });
    if let Some(e) = first_error {
        anyhow::bail!("{e}");
    }
    let Some(w) = spool else { return Ok(None) };
    let keep_err = |e: io::Error| anyhow::anyhow!("cannot keep the rows in a temporary file: {e}");
    if let Some(e) = write_error {
        return Err(keep_err(e));
    }
    let file = w.into_inner().map_err(|e| keep_err(e.into_error()))?;
    Ok(Some(Spool {
        file,
        rows,
        input,
        seen,
    }))
}

/// Takes the next chunk from the receiver shared by all workers.
fn recv_shared<T>(rx: &Mutex<Receiver<T>>) -> Option<T> {
    rx.lock().unwrap_or_else(|e| e.into_inner()).recv().ok()
}

/// Steps one chunk of rows.
fn step_chunk<A: Default>(
    rl: &RowLoop<'_>,
    mut resume: Option<&mut Resume>,
    fold: &impl Fn(&mut A, u64, &Stepped),
    keep: bool,
    items: Chunk,
) -> ChunkOut<A> {
    let mut out = ChunkOut {
        acc: A::default(),
        spooled: Vec::new(),
        error: None,
    };
    for (pos, item) in items {
        if !rl.holds(&item) {
            continue;
        }
        match rl.step(item, resume.as_deref_mut()) {
            Ok(s) => {
                fold(&mut out.acc, pos, &s);
                if keep {
                    if let Err(e) = write_record(&mut out.spooled, s) {
                        out.error = Some(format!("cannot keep the rows in a temporary file: {e}"));
                        return out;
                    }
                }
            }
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        }
    }
    out
}

/// The input file's size and modification time, to notice it changing during a run.
#[derive(Debug, Clone, PartialEq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

/// Every row of one pass and its Step, in input order, in an unnamed temporary file (the OS
/// removes it however the process ends): the later stages read this instead of the input,
/// so memory stays flat and the input is read once.
#[derive(Debug)]
pub struct Spool {
    file: File,
    rows: u64,
    input: PathBuf,
    seen: Option<Stamp>,
}

impl Spool {
    /// Rows recorded (bad ones included).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Reads the rows back from the start, in input order. Several readers may be open.
    pub fn read(&self) -> io::Result<SpoolReader> {
        Ok(SpoolReader {
            lines: BufReader::with_capacity(
                64 * 1024,
                ReadAt {
                    file: self.file.try_clone()?,
                    at: 0,
                },
            ),
            buf: String::new(),
            record: 0,
        })
    }

    /// The rows for the output: every row's cells, in input order.
    pub fn output_rows(&self) -> io::Result<impl Iterator<Item = Result<Row, String>>> {
        Ok(self
            .read()?
            .map(|r| r.map(|s| s.row).map_err(|e| e.to_string())))
    }

    /// What each row asks for now (its identity and request hash), from the Steps the pass
    /// kept, for the output to show only current answers: called once per row in input order,
    /// in step with [`Spool::output_rows`], so nothing is rendered again. A row it cannot
    /// match (an unreadable spool) wants nothing, so no answer shows as current for it.
    pub fn wanted(&self) -> io::Result<impl FnMut(&Row) -> Wanted> {
        let mut steps = self.read()?;
        Ok(move |row: &Row| match steps.next() {
            Some(Ok(s)) if s.row.index == row.index => Wanted {
                outputs: s
                    .outputs
                    .iter()
                    .map(|o| o.hash().map(str::to_string))
                    .collect(),
                id: s.step.id().to_string(),
                hash: s.step.hash().map(str::to_string),
            },
            _ => Wanted {
                outputs: Vec::new(),
                id: String::new(),
                hash: None,
            },
        })
    }

    /// One warning line when the input file changed (size or modification time) since the
    /// pass read it; the run goes on with the version that was read.
    pub fn input_changed(&self) -> Option<String> {
        let now = Stamp::of(&self.input);
        (now != self.seen).then(|| {
            format!(
                "warning: {} changed while the job ran; the output reflects the version that \
                 was read when the run started",
                self.input.display()
            )
        })
    }
}

/// Reads a file from its own offset (positional reads), so cloned handles do not share one.
struct ReadAt {
    file: File,
    at: u64,
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = crate::slots::read_at(&self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// The spool's rows, in input order.
pub struct SpoolReader {
    lines: BufReader<ReadAt>,
    buf: String,
    record: u64,
}

impl Iterator for SpoolReader {
    type Item = io::Result<Stepped>;

    fn next(&mut self) -> Option<Self::Item> {
        self.buf.clear();
        match self.lines.read_line(&mut self.buf) {
            Ok(0) => None,
            Ok(_) => {
                self.record += 1;
                Some(
                    serde_json::from_str::<Record>(&self.buf)
                        .map(Record::into_stepped)
                        .map_err(|e| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("record {} of the row spool: {e}", self.record),
                            )
                        }),
                )
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// One spooled row: its cells and its Step, one JSON line.
#[derive(Serialize, Deserialize)]
struct Record {
    index: u64,
    line: u64,
    id: String,
    /// The row's identity key (see [`Identity::key`]), which the step carries.
    key: String,
    fields: Map<String, Value>,
    step: StepRecord,
    /// The row's `[[outputs]]` requests: (identity, step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    outputs: Vec<(String, StepRecord)>,
}

#[derive(Serialize, Deserialize)]
enum StepRecord {
    Send {
        hash: String,
        body: Value,
        prompt_tokens: u64,
        limiter_tokens: u64,
        worst: Usage,
        worst_cost: Option<u64>,
        decision: u8,
        /// The row's own model, when it is not the job's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        prefix: Vec<crate::prime::Link>,
    },
    Cached {
        hash: String,
        entry: Entry,
        decision: u8,
    },
    Skip {
        hash: String,
        decision: u8,
    },
    Bad {
        reason: String,
    },
}

fn decision_code(d: Decision) -> u8 {
    match d {
        Decision::New => 0,
        Decision::Done => 1,
        Decision::KeptFailed => 2,
        Decision::RetryFailed => 3,
        Decision::Changed => 4,
    }
}

fn decision_of(c: u8) -> Decision {
    match c {
        1 => Decision::Done,
        2 => Decision::KeptFailed,
        3 => Decision::RetryFailed,
        4 => Decision::Changed,
        _ => Decision::New,
    }
}

fn write_record(out: &mut Vec<u8>, s: Stepped) -> serde_json::Result<()> {
    let key = s.step.id().to_string();
    let rec = Record {
        index: s.row.index,
        line: s.row.line,
        id: s.row.id,
        key,
        fields: s.row.fields,
        step: step_record(s.step),
        outputs: s
            .outputs
            .into_iter()
            .map(|o| (o.id().to_string(), step_record(o)))
            .collect(),
    };
    serde_json::to_writer(&mut *out, &rec)?;
    out.push(b'\n');
    Ok(())
}

/// A Step as the spool keeps it (its row and id are kept beside it).
fn step_record(step: Step) -> StepRecord {
    match step {
        Step::Send(r) => StepRecord::Send {
            hash: r.hash,
            body: r.body,
            prompt_tokens: r.prompt_tokens,
            limiter_tokens: r.limiter_tokens,
            worst: r.worst,
            worst_cost: r.worst_cost.map(|m| m.0),
            decision: decision_code(r.decision),
            model: r.model,
            prefix: r.prefix,
        },
        Step::Cached {
            hash,
            entry,
            decision,
            ..
        } => StepRecord::Cached {
            hash,
            entry,
            decision: decision_code(decision),
        },
        Step::Skip { hash, decision, .. } => StepRecord::Skip {
            hash,
            decision: decision_code(decision),
        },
        Step::Bad { reason, .. } => StepRecord::Bad { reason },
    }
}

/// A spooled Step of row `row` under identity `id`.
fn step_of(row: u64, id: String, rec: StepRecord) -> Step {
    match rec {
        StepRecord::Send {
            hash,
            body,
            prompt_tokens,
            limiter_tokens,
            worst,
            worst_cost,
            decision,
            model,
            prefix,
        } => Step::Send(Request {
            row,
            id,
            hash,
            body,
            prompt_tokens,
            limiter_tokens,
            worst,
            worst_cost: worst_cost.map(Money),
            decision: decision_of(decision),
            model,
            prefix,
        }),
        StepRecord::Cached {
            hash,
            entry,
            decision,
        } => Step::Cached {
            row,
            id,
            hash,
            entry,
            decision: decision_of(decision),
        },
        StepRecord::Skip { hash, decision } => Step::Skip {
            row,
            id,
            hash,
            decision: decision_of(decision),
        },
        StepRecord::Bad { reason } => Step::Bad { row, id, reason },
    }
}

impl Record {
    fn into_stepped(self) -> Stepped {
        let step = step_of(self.index, self.key, self.step);
        let index = self.index;
        Stepped {
            row: Row {
                index: self.index,
                line: self.line,
                id: self.id,
                fields: self.fields,
            },
            step,
            messages: Vec::new(),
            judge_tokens: 0,
            outputs: self
                .outputs
                .into_iter()
                .map(|(id, rec)| step_of(index, id, rec))
                .collect(),
        }
    }
}

impl Step {
    /// The hash of the request the row asks for (none for a bad row).
    pub fn hash(&self) -> Option<&str> {
        match self {
            Step::Send(r) => Some(&r.hash),
            Step::Cached { hash, .. } | Step::Skip { hash, .. } => Some(hash),
            Step::Bad { .. } => None,
        }
    }

    /// The row's identity key.
    pub fn id(&self) -> &str {
        match self {
            Step::Send(r) => &r.id,
            Step::Cached { id, .. } | Step::Skip { id, .. } | Step::Bad { id, .. } => id,
        }
    }

    /// Decides a [`Step::Send`] again against a journal that may have grown since the pass
    /// (batch rounds collected in between): a row now done, or failed and kept, is skipped.
    /// Other steps are returned as they are.
    pub fn recheck(self, resume: &mut Resume) -> Result<Step, crate::journal::JournalError> {
        let Step::Send(mut r) = self else {
            return Ok(self);
        };
        let decision = resume.decide_key(&r.id, &r.hash)?;
        if !decision.send() {
            return Ok(Step::Skip {
                row: r.row,
                id: r.id,
                hash: r.hash,
                decision,
            });
        }
        r.decision = decision;
        Ok(Step::Send(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Choice;
    use crate::config::Overrides;
    use crate::render::Renderer;

    /// A job over `rows.csv` in `dir` (written from `csv`), `extra` added to `[input]`.
    fn job(dir: &Path, csv: &str, extra: &str) -> Job {
        std::fs::write(dir.join("rows.csv"), csv).unwrap();
        let text = format!(
            "[input]\npath = \"rows.csv\"\nid = \"id\"\n{extra}\n[prompt]\nuser = \"Say {{{{ name }}}}.\"\n\
             [model]\nname = \"gpt-4o-mini\"\nmax_tokens = 50\n[output]\npath = \"out/result.csv\"\n"
        );
        Job::from_str(&text, &dir.join("job.toml"), &Overrides::default()).unwrap()
    }

    fn planner(job: &Job) -> Planner {
        let renderer = Renderer::new(&job.prompt_spec()).unwrap();
        Planner::new(job, renderer, crate::client::provider_for(job), "x")
    }

    fn csv(n: u64) -> String {
        let mut s = String::from("id,name\n");
        for i in 1..=n {
            s.push_str(&format!("r{i},item {i}\n"));
        }
        s
    }

    /// Every row stepped one by one, in order, on this thread.
    fn stepped_in_order(rl: &RowLoop<'_>, job: &Job) -> Result<Vec<Stepped>, String> {
        let source = Source::open(&job.input.path, &job.source_options()).unwrap();
        source
            .keep_bad_rows()
            .map(|item| rl.step(item, None))
            .collect()
    }

    #[test]
    fn a_good_row_is_a_request_priced_at_its_worst_case() {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path(), &csv(2), "");
        let p = planner(&job);
        let price = crate::cost::PriceTable::builtin()
            .lookup("gpt-4o-mini")
            .cloned()
            .unwrap();
        let rl = RowLoop::new(&job, &p, Some(&price), Tier::Batch, None);
        let steps = stepped_in_order(&rl, &job).unwrap();
        let Step::Send(r) = &steps[1].step else {
            panic!("{:?}", steps[1].step)
        };
        let planned = p.plan(&steps[1].row).unwrap();
        assert_eq!((r.row, r.id.as_str()), (1, "r2"));
        assert_eq!((&r.hash, &r.body), (&planned.hash, &planned.body));
        assert_eq!(r.prompt_tokens, planned.prompt_tokens);
        assert_eq!(r.worst.prompt_tokens, planned.prompt_tokens, "exact counts");
        assert_eq!(r.worst.completion_tokens, 50);
        assert_eq!(r.limiter_tokens, planned.prompt_tokens + 50);
        assert_eq!(r.worst_cost, Some(price.cost(&r.worst, Tier::Batch)));
        assert!(r.worst_cost < Some(price.cost(&r.worst, Tier::Live)));
        assert_eq!(r.decision, Decision::New);
        assert_eq!(steps[1].messages, planned.messages);
        // No price: the worst case is unknown, never zero.
        let rl = RowLoop::new(&job, &p, None, Tier::Live, None);
        let Step::Send(r) = &stepped_in_order(&rl, &job).unwrap()[0].step else {
            panic!()
        };
        assert_eq!(r.worst_cost, None);
    }

    #[test]
    fn a_bad_row_stops_the_loop_unless_the_job_skips_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        // Line 3 is ragged; row 3 (line 4) renders fine.
        let text = "id,name\nr1,a\nr2,b,extra\nr3,c\n";
        let strict = job(dir.path(), text, "");
        let p = planner(&strict);
        let err = stepped_in_order(&RowLoop::new(&strict, &p, None, Tier::Live, None), &strict)
            .unwrap_err();
        assert!(err.contains("rows.csv:3"), "{err}");
        let lenient = job(dir.path(), text, "skip_bad_rows = true");
        let p = planner(&lenient);
        let steps = stepped_in_order(
            &RowLoop::new(&lenient, &p, None, Tier::Live, None),
            &lenient,
        )
        .unwrap();
        assert_eq!(steps.len(), 3);
        match &steps[1].step {
            Step::Bad { row, id, reason } => {
                let key = Identity::of(&lenient).key(&steps[1].row);
                assert_eq!((*row, id.as_str()), (1, key.as_str()));
                assert!(reason.contains("rows.csv:3"), "{reason}");
            }
            s => panic!("{s:?}"),
        }
        assert!(matches!(steps[2].step, Step::Send(ref r) if r.row == 2 && r.id == "r3"));
    }

    #[test]
    fn a_cached_answer_stands_in_for_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path(), &csv(3), "");
        let p = planner(&job);
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let hash = p
            .plan(
                &stepped_in_order(&RowLoop::new(&job, &p, None, Tier::Live, None), &job).unwrap()
                    [1]
                .row,
            )
            .unwrap()
            .hash;
        let entry = Entry {
            hash: hash.clone(),
            choices: vec![Choice {
                text: "cached".into(),
                finish_reason: Some("stop".into()),
            }],
            usage: None,
            fields: None,
        };
        cache.put(&entry).unwrap();
        let rl = RowLoop::new(&job, &p, None, Tier::Live, Some(&cache));
        let steps = stepped_in_order(&rl, &job).unwrap();
        assert!(matches!(steps[0].step, Step::Send(_)));
        assert_eq!(
            steps[1].step,
            Step::Cached {
                row: 1,
                id: "r2".into(),
                hash,
                entry,
                decision: Decision::New,
            }
        );
    }

    #[test]
    fn the_spool_gives_back_every_step_in_input_order_from_parallel_workers() {
        let dir = tempfile::tempdir().unwrap();
        // Several chunks, a bad row in the middle, cells that need escaping.
        let mut text = csv(3 * CHUNK as u64);
        text.push_str("q1,\"line\nbreak, \"\"quoted\"\" é\"\nq2,x,ragged\nq3,last\n");
        let job = job(dir.path(), &text, "skip_bad_rows = true");
        let p = planner(&job);
        let rl = RowLoop::new(&job, &p, None, Tier::Live, None);
        let want: Vec<Stepped> = stepped_in_order(&rl, &job)
            .unwrap()
            .into_iter()
            .map(|s| Stepped {
                messages: Vec::new(),
                ..s
            })
            .collect();
        let opts = PassOptions {
            resume: None,
            workers: 3,
            spool_beside: Some(&dir.path().join("out.journal")),
        };
        let mut order = Vec::new();
        let spool = first_pass(
            &rl,
            &opts,
            |acc: &mut Vec<u64>, pos, s| {
                assert_eq!(pos, s.row.index);
                acc.push(pos)
            },
            |acc| order.extend(acc),
        )
        .unwrap()
        .expect("a spool");
        assert_eq!(order, (0..want.len() as u64).collect::<Vec<_>>());
        assert_eq!(spool.rows(), want.len() as u64);
        let got: Vec<Stepped> = spool.read().unwrap().map(Result::unwrap).collect();
        assert_eq!(got, want);
        // Read twice, the same; the output's rows are the cells.
        let rows: Vec<Row> = spool.output_rows().unwrap().map(Result::unwrap).collect();
        assert_eq!(rows, want.iter().map(|s| s.row.clone()).collect::<Vec<_>>());
        // What each row asks for now comes from its Step, in step with the rows.
        let mut asks = spool.wanted().unwrap();
        for s in &want {
            let w = asks(&s.row);
            assert_eq!(
                (w.id.as_str(), w.hash.as_deref()),
                (s.step.id(), s.step.hash())
            );
        }
        assert!(matches!(want[3 * CHUNK + 1].step, Step::Bad { .. }));
        assert_eq!(want[3 * CHUNK + 1].step.hash(), None);
        assert_eq!(rows[3 * CHUNK].fields["name"], "line\nbreak, \"quoted\" é");
        assert!(matches!(got[3 * CHUNK + 1].step, Step::Bad { .. }));
        // No spool asked for: none made.
        let none = PassOptions {
            spool_beside: None,
            ..opts
        };
        assert!(first_pass(&rl, &none, |_: &mut (), _, _| {}, |_| {})
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_first_error_in_input_order_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = csv(4 * CHUNK as u64);
        // Bad rows late in chunk 1 and early in chunk 3 (header = line 1).
        let lines: Vec<&str> = text.lines().collect();
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if i == CHUNK + 200 || i == 2 * CHUNK + 3 {
                out.push(format!("{l},ragged"));
            } else {
                out.push(l.to_string());
            }
        }
        text = out.join("\n") + "\n";
        let job = job(dir.path(), &text, "");
        let p = planner(&job);
        let rl = RowLoop::new(&job, &p, None, Tier::Live, None);
        for workers in [1, 4] {
            let opts = PassOptions {
                workers,
                spool_beside: Some(&dir.path().join("j")),
                ..PassOptions::default()
            };
            let err = first_pass(&rl, &opts, |_: &mut (), _, _| {}, |_| {})
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("rows.csv:{}", CHUNK + 201)), "{err}");
        }
    }

    #[test]
    fn a_changed_input_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path(), &csv(3), "");
        let p = planner(&job);
        let rl = RowLoop::new(&job, &p, None, Tier::Live, None);
        let opts = PassOptions {
            spool_beside: Some(&dir.path().join("j")),
            ..PassOptions::default()
        };
        let spool = first_pass(&rl, &opts, |_: &mut (), _, _| {}, |_| {})
            .unwrap()
            .unwrap();
        assert_eq!(spool.input_changed(), None);
        std::fs::write(&job.input.path, csv(4)).unwrap();
        let w = spool.input_changed().expect("a warning");
        assert!(w.contains("rows.csv") && w.starts_with("warning:"), "{w}");
        std::fs::remove_file(&job.input.path).unwrap();
        assert!(spool.input_changed().is_some());
    }

    #[test]
    fn recheck_skips_a_request_the_journal_now_holds() {
        let send = |row: u64, id: &str| {
            Step::Send(Request {
                row,
                id: id.into(),
                hash: "h".into(),
                body: Value::Null,
                prompt_tokens: 1,
                limiter_tokens: 2,
                worst: Usage::default(),
                worst_cost: None,
                decision: Decision::New,
                model: None,
                prefix: Vec::new(),
            })
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut w = crate::journal::open(&path).unwrap();
        w.append(&crate::journal::Record::failed(
            0,
            "r1".into(),
            "h".into(),
            1,
            "boom".into(),
        ))
        .unwrap();
        let index = w.index().clone();
        let mut kept = Resume::new(&path, index.clone(), false, Identity::new(true)).unwrap();
        assert_eq!(
            send(0, "r1").recheck(&mut kept).unwrap(),
            Step::Skip {
                row: 0,
                id: "r1".into(),
                hash: "h".into(),
                decision: Decision::KeptFailed
            }
        );
        assert_eq!(send(1, "r2").recheck(&mut kept).unwrap(), send(1, "r2"));
        let mut retry = Resume::new(&path, index, true, Identity::new(true)).unwrap();
        let Step::Send(r) = send(0, "r1").recheck(&mut retry).unwrap() else {
            panic!()
        };
        assert_eq!(r.decision, Decision::RetryFailed);
        let bad = Step::Bad {
            row: 1,
            id: "2".into(),
            reason: "x".into(),
        };
        assert_eq!(bad.clone().recheck(&mut kept).unwrap(), bad);
    }
}
