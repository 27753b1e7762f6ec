//! The sink stage: the final output file (CSV, JSONL or Excel), built from the journal in
//! input order, written to a temporary file and renamed so that no reader ever sees half an
//! output.
//!
//! Each row shows its latest record only when that record answers the request the current
//! job would send (same identity, same request hash): an answer to an older template, model
//! or endpoint, or from a `--mock` run, leaves the row `pending`, never `ok`.

mod csv_out;
mod jsonl_out;
mod xlsx_out;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::checks::{CheckResult, CheckSpec, Checks};
use crate::config::OutputFormat;
use crate::identity::Wanted;
use crate::journal::{JournalError, JournalIndex, JournalReader, Record, Status};
use crate::judge::{Judge, Judged, Verdict};
use crate::key_table::KeyTable;
use crate::pipeline::ledger::{Charge, Tally};
use crate::types::{Money, Row, Usage, RESULT_COLUMNS};

/// Errors writing the output.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{path}: {message}")]
    Csv { path: PathBuf, message: String },
    #[error("{}: {message}", .path.display())]
    Xlsx { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
}

/// What the output holds, counted while writing it.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct OutputTotals {
    pub rows: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Rows answered whose answer failed a check (`[[checks]]`): not `succeeded`.
    pub rejected: u64,
    /// Per check, in the job's order: how many answers passed and failed it.
    pub checks: Vec<CheckTally>,
    /// Rows with no result yet (the job stopped before reaching them).
    pub pending: u64,
    /// Rows answered from the response cache.
    pub cached: u64,
    /// Rows whose answer came without usage: their tokens and cost are our estimate.
    pub estimated: u64,
    pub usage: Usage,
    /// Cost of the rows' recorded responses (unpriced ones counted apart, never as $0).
    #[serde(skip)]
    pub cost: Tally,
    /// What the judge said about the answers (with `[judge]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeTotals>,
}

/// The judge's verdicts in the output.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct JudgeTotals {
    /// Answers with a current verdict.
    pub judged: u64,
    /// Verdicts below `min_score` (their rows are `rejected`).
    pub below_min: u64,
    /// Judge requests that failed (their rows are `failed`).
    pub errors: u64,
    /// Answers that passed the checks and wait for a verdict (their rows are `pending`).
    pub waiting: u64,
    /// Tokens of the verdicts shown.
    pub usage: Usage,
    /// Cost of the verdicts shown (unpriced ones counted apart, never as $0).
    #[serde(skip)]
    pub cost: Tally,
    /// Every score, for the spread.
    #[serde(skip)]
    pub scores: Vec<f64>,
}

impl OutputTotals {
    /// Every row has an answer that passed its checks: nothing failed, rejected or pending.
    pub fn all_ok(&self) -> bool {
        self.failed == 0 && self.pending == 0 && self.rejected == 0
    }
}

/// How the answers fared on one check.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckTally {
    pub name: String,
    pub passed: u64,
    pub failed: u64,
}

/// The shape of the output.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub path: PathBuf,
    pub format: OutputFormat,
    /// Input columns copied into each output row.
    pub input_columns: Vec<String>,
    /// Structured-output fields that become columns (from the job's schema).
    pub field_columns: Vec<String>,
    /// Extra variant columns when n > 1 (`output_2`…).
    pub variants: u32,
    pub formula_guard: bool,
    /// The job's checks: evaluated on every answer as the output is written (so editing
    /// them and writing the output again re-checks every answer), one `check_<name>`
    /// column each.
    pub checks: Vec<CheckSpec>,
    /// The job has a judge: its score, reason, tokens and cost get columns.
    pub judge: bool,
    /// The job's `[[outputs]]` names: a text column each after the answer's, and a
    /// `<name>_cost_usd` column each after `cost_usd`.
    pub extra: Vec<String>,
}

/// The columns of the judge's verdict, after the check columns.
pub const JUDGE_COLUMNS: &[&str] = &[
    "judge_score",
    "judge_reason",
    "judge_prompt_tokens",
    "judge_completion_tokens",
    "judge_cost_usd",
];

impl OutputSpec {
    /// Every column name of the output, in order.
    pub fn columns(&self) -> Vec<String> {
        let mut cols = self.input_columns.clone();
        cols.push("output".into());
        for v in 2..=self.variants.max(1) {
            cols.push(format!("output_{v}"));
        }
        cols.extend(self.field_columns.iter().cloned());
        cols.extend(self.extra.iter().cloned());
        cols.extend(self.checks.iter().map(|c| format!("check_{}", c.name)));
        if self.judge {
            cols.extend(JUDGE_COLUMNS.iter().map(|s| s.to_string()));
        }
        for c in &RESULT_COLUMNS[1..] {
            cols.push(c.to_string());
            if *c == "cost_usd" {
                cols.extend(self.extra.iter().map(|n| format!("{n}_cost_usd")));
            }
        }
        cols
    }

    /// Refuses input columns that clash with generated ones.
    pub fn check(&self) -> Result<(), SinkError> {
        let generated: Vec<String> = self.columns()[self.input_columns.len()..].to_vec();
        for c in &self.input_columns {
            if generated.contains(c) {
                return Err(SinkError::Input(format!(
                    "input column '{c}' has the name of a column promptmill writes; leave it \
                     out with output.columns, or rename it in the input"
                )));
            }
        }
        Ok(())
    }
}

/// One output row: the input values kept, plus the result.
pub(crate) struct OutRow<'a> {
    pub input: &'a Map<String, Value>,
    pub record: Option<&'a Record>,
    /// The checks' results on the row's answer (empty when it has none).
    pub checks: &'a [CheckResult],
    /// The judge's verdict on it, if it was judged.
    pub judged: Option<&'a Judged>,
    /// The row's `[[outputs]]` records (current ones only), in the job's order.
    pub extras: &'a [Option<Record>],
    /// The row's status.
    pub status: RowStatus,
}

/// A row's status in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowStatus {
    Ok,
    /// Answered, but a check or the judge rejected the answer.
    Rejected,
    Failed,
    /// No answer yet, or an answer the judge has yet to see.
    Pending,
}

impl RowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Ok => "ok",
            RowStatus::Rejected => "rejected",
            RowStatus::Failed => "failed",
            RowStatus::Pending => "pending",
        }
    }
}

/// What the checks and the judge make of a row's answer.
pub(crate) struct Review {
    pub checks: Vec<CheckResult>,
    /// The judge's side: None when there is no judge, no answer, or the checks rejected it.
    pub judged: Option<Judged>,
}

impl Review {
    /// The row's status, given its record.
    pub fn status(&self, record: Option<&Record>, judge: Option<&Judge>) -> RowStatus {
        match record.map(|r| r.status) {
            None => RowStatus::Pending,
            Some(Status::Failed) => RowStatus::Failed,
            Some(Status::Ok) if self.checks.iter().any(|c| !c.passed) => RowStatus::Rejected,
            Some(Status::Ok) => match (&self.judged, judge) {
                (Some(Judged::Missing(_)), _) => RowStatus::Pending,
                (Some(Judged::Failed(_) | Judged::Unplanned(_)), _) => RowStatus::Failed,
                (Some(Judged::Scored(v, _)), Some(j)) if !j.passes(v) => RowStatus::Rejected,
                _ => RowStatus::Ok,
            },
        }
    }

    /// Why the answer was rejected, for the next attempt's prompt: the failed checks'
    /// reasons, or the judge's.
    pub fn feedback(&self, judge: Option<&Judge>) -> String {
        let mut results = self.checks.clone();
        if let (Some(Judged::Scored(v, _)), Some(j)) = (&self.judged, judge) {
            if !j.passes(v) {
                results.push(judge_result(v, j));
            }
        }
        crate::checks::feedback(&results)
    }
}

/// A verdict below the bar as a failed check named `judge`.
fn judge_result(v: &Verdict, j: &Judge) -> CheckResult {
    CheckResult {
        name: "judge".into(),
        passed: false,
        reason: Some(format!(
            "score {} below {}: {}",
            v.score,
            j.min_score.unwrap_or_default(),
            v.reason
        )),
    }
}

/// The checks' results on a row's answer and, when it passed them, the judge's verdict.
pub(crate) fn review(
    checks: &mut Checks,
    judge: Option<&Judge>,
    reader: Option<&mut JournalReader>,
    index: &JournalIndex,
    row: &Row,
    row_id: &str,
    answered: Answered<'_>,
) -> Result<Review, JournalError> {
    let Answered { record, extra } = answered;
    let results = check_answer(checks, row, record, extra);
    let judged = match (judge, record) {
        (Some(j), Some(r)) if r.status == Status::Ok && results.iter().all(|c| c.passed) => {
            let answer = r.choices.first().map_or("", |c| c.text.as_str());
            Some(match j.judged(reader, index, row, row_id, answer)? {
                Ok(judged) => judged,
                Err(e) => Judged::Unplanned(format!("judge: {e}")),
            })
        }
        _ => None,
    };
    Ok(Review {
        checks: results,
        judged,
    })
}

/// Writes the final output: reads the input again (for the input columns) and, row by row in
/// input order, the row's latest journal record, shown only if it answers what `want` says
/// the row asks for now. Memory stays flat: one row at a time.
pub fn write_output<I>(
    spec: &OutputSpec,
    rows: I,
    index: &JournalIndex,
    journal: &Path,
    want: &mut dyn FnMut(&Row) -> Wanted,
    judge: Option<&Judge>,
) -> Result<OutputTotals, SinkError>
where
    I: Iterator<Item = Result<Row, String>>,
{
    let path = &spec.path;
    let io = |source| SinkError::Io {
        path: path.clone(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = temp_beside(dir).map_err(io)?;
    let mut reader = match JournalReader::open(journal) {
        Ok(r) => Some(r),
        Err(_) if index.records == 0 => None,
        Err(e) => return Err(e.into()),
    };
    let mut totals = OutputTotals {
        checks: spec
            .checks
            .iter()
            .map(|c| CheckTally {
                name: c.name.clone(),
                ..CheckTally::default()
            })
            .collect(),
        judge: judge.map(|_| JudgeTotals::default()),
        ..OutputTotals::default()
    };
    // Compiled afresh for each output: `unique` keeps the first of its duplicates in input
    // order, whatever order the answers came in.
    // Checks read the schema's fields and the `[[outputs]]` texts by name.
    let targets: Vec<String> = spec
        .field_columns
        .iter()
        .chain(&spec.extra)
        .cloned()
        .collect();
    let schema_fields = (!targets.is_empty()).then_some(&targets[..]);
    let mut checks =
        Checks::new(&spec.checks, schema_fields).map_err(|e| SinkError::Input(e.to_string()))?;
    // Rows of this file already written, by identity: a later row with the same identity
    // (identical cells, in a job without input.id) shares the first one's answer.
    let mut written = KeyTable::create_beside(path).map_err(io)?;
    {
        let buf = std::io::BufWriter::with_capacity(1 << 16, tmp.as_file_mut());
        let mut w: Box<dyn RowWriter + '_> = match spec.format {
            OutputFormat::Csv => Box::new(csv_out::CsvOut::new(buf, spec)?),
            OutputFormat::Jsonl => Box::new(jsonl_out::JsonlOut::new(buf, spec)),
            OutputFormat::Xlsx => Box::new(xlsx_out::XlsxOut::new(buf, spec)?),
        };
        for row in rows {
            let row = row.map_err(SinkError::Input)?;
            let wanted = want(&row);
            let mut record = current_record(reader.as_mut(), index, &wanted)?;
            let first = written.get(&wanted.id).map_err(io)?;
            if first.is_none() {
                written.insert(&wanted.id, row.index + 1).map_err(io)?;
            }
            if let (Some(r), Some(first)) = (record.as_mut(), first) {
                r.shared_with.get_or_insert_with(|| first.to_string());
            }
            totals.rows += 1;
            let extras = extra_records(&spec.extra, reader.as_mut(), index, &wanted)?;
            let texts = extra_texts(&spec.extra, &extras);
            let review = review(
                &mut checks,
                judge,
                reader.as_mut(),
                index,
                &row,
                &wanted.id,
                Answered {
                    record: record.as_ref(),
                    extra: texts.as_ref(),
                },
            )?;
            let status = with_extras(review.status(record.as_ref(), judge), &extras);
            for r in extras.iter().flatten() {
                if let Some(u) = &r.usage {
                    if !r.cached && r.shared_with.is_none() {
                        totals.usage.add(u);
                        totals.cost.add(Charge::of(true, r.cost_pico));
                    }
                }
            }
            let results = &review.checks;
            for (tally, result) in totals.checks.iter_mut().zip(results) {
                if result.passed {
                    tally.passed += 1;
                } else {
                    tally.failed += 1;
                }
            }
            if let (Some(t), Some(judged)) = (totals.judge.as_mut(), &review.judged) {
                t.count(judged, judge);
            }
            match status {
                RowStatus::Ok => totals.succeeded += 1,
                RowStatus::Rejected => totals.rejected += 1,
                RowStatus::Failed => totals.failed += 1,
                RowStatus::Pending => totals.pending += 1,
            }
            if let Some(r) = &record {
                if r.cached {
                    totals.cached += 1;
                }
                if let Some(u) = &r.usage {
                    if !r.cached && r.shared_with.is_none() {
                        if u.estimated {
                            totals.estimated += 1;
                        }
                        totals.usage.add(u);
                        totals.cost.add(Charge::of(true, r.cost_pico));
                    }
                }
            }
            w.write(&OutRow {
                input: &row.fields,
                record: record.as_ref(),
                checks: results,
                judged: review.judged.as_ref(),
                extras: &extras,
                status,
            })
            .map_err(|e| match e {
                SinkError::Io { source, .. } => io(source),
                other => other,
            })?;
        }
        w.finish().map_err(|e| match e {
            SinkError::Io { source, .. } => io(source),
            other => other,
        })?;
    }
    tmp.as_file_mut().flush().map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(totals)
}

/// A row's answer, and its `[[outputs]]` texts by name (see [`extra_texts`]).
#[derive(Clone, Copy)]
pub(crate) struct Answered<'a> {
    pub record: Option<&'a Record>,
    pub extra: Option<&'a Map<String, Value>>,
}

/// The current records of a row's `[[outputs]]` (named `names`, in the job's order).
pub(crate) fn extra_records(
    names: &[String],
    mut reader: Option<&mut JournalReader>,
    index: &JournalIndex,
    wanted: &Wanted,
) -> Result<Vec<Option<Record>>, JournalError> {
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let w = Wanted {
            id: crate::outputs::id(name, &wanted.id),
            hash: wanted.outputs.get(i).cloned().flatten(),
            outputs: Vec::new(),
        };
        // Without the request it would send now, no record is current.
        let rec = match w.hash {
            Some(_) => current_record(reader.as_deref_mut(), index, &w)?,
            None => None,
        };
        out.push(rec);
    }
    Ok(out)
}

/// The texts of a row's answered `[[outputs]]` by name, for checks that read them (`on =
/// "<name>"`); `None` when the job has none.
pub(crate) fn extra_texts(
    names: &[String],
    records: &[Option<Record>],
) -> Option<Map<String, Value>> {
    if names.is_empty() {
        return None;
    }
    let mut texts = Map::new();
    for (name, r) in names.iter().zip(records) {
        let text = r
            .as_ref()
            .filter(|r| r.status == Status::Ok)
            .and_then(|r| r.choices.first());
        if let Some(c) = text {
            texts.insert(name.clone(), Value::String(c.text.clone()));
        }
    }
    Some(texts)
}

/// A row's status with its `[[outputs]]`: failed when one of them failed, pending while one
/// has no answer; otherwise the answer's.
fn with_extras(status: RowStatus, extras: &[Option<Record>]) -> RowStatus {
    if status == RowStatus::Failed {
        return status;
    }
    if extras.iter().flatten().any(|r| r.status == Status::Failed) {
        return RowStatus::Failed;
    }
    if extras.iter().any(Option::is_none) {
        return RowStatus::Pending;
    }
    status
}

/// A row's latest journal record, if it answers what `wanted` says the row asks for now.
pub(crate) fn current_record(
    reader: Option<&mut JournalReader>,
    index: &JournalIndex,
    wanted: &Wanted,
) -> Result<Option<Record>, JournalError> {
    let record = match (reader, index.offset(&wanted.id)?) {
        (Some(r), Some(offset)) => Some(r.read_at(offset)?),
        _ => None,
    };
    Ok(record.filter(|r| wanted.answered_by(r)))
}

/// The checks' results on a row's answer, one per check: none unless the record is `ok`
/// (a failed or missing answer is not checked).
pub(crate) fn check_answer(
    checks: &mut Checks,
    row: &Row,
    record: Option<&Record>,
    extra: Option<&Map<String, Value>>,
) -> Vec<CheckResult> {
    match record {
        Some(r) if r.status == Status::Ok && !checks.is_empty() => {
            let answer = r.choices.first().map_or("", |c| c.text.as_str());
            match extra {
                // Checks on `[[outputs]]` read their texts beside the schema's fields.
                Some(extra) => {
                    let mut fields = r.fields.clone().unwrap_or_default();
                    fields.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
                    checks.evaluate(row, answer, Some(&fields))
                }
                None => checks.evaluate(row, answer, r.fields.as_ref()),
            }
        }
        _ => Vec::new(),
    }
}

/// A format's row writer.
pub(crate) trait RowWriter {
    fn write(&mut self, row: &OutRow<'_>) -> Result<(), SinkError>;
    fn finish(&mut self) -> Result<(), SinkError>;
}

/// A temporary file in `dir`, renamed over the real one when complete. It is created with
/// the mode any new file gets (0666 less the umask), like a file the user writes, not the
/// owner-only 0600 of a temporary file: outputs are for sharing.
fn temp_beside(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let mut b = tempfile::Builder::new();
    b.prefix(".promptmill-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir)
}

/// Writes a file atomically (temp file in the same folder, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = temp_beside(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl JudgeTotals {
    fn count(&mut self, judged: &Judged, judge: Option<&Judge>) {
        match judged {
            Judged::Missing(_) => self.waiting += 1,
            Judged::Failed(_) | Judged::Unplanned(_) => self.errors += 1,
            Judged::Scored(v, r) => {
                self.judged += 1;
                if judge.is_some_and(|j| !j.passes(v)) {
                    self.below_min += 1;
                }
                self.scores.push(v.score);
                if let Some(u) = &r.usage {
                    // A verdict shared with another row was paid (and is counted) there.
                    if !r.cached && r.shared_with.is_none() {
                        self.usage.add(u);
                        self.cost.add(Charge::of(true, r.cost_pico));
                    }
                }
            }
        }
    }
}

/// A record's cost as an output cell: $0 for an answer served from the cache or shared,
/// empty when unknown.
fn cost_cell(record: Option<&Record>) -> Value {
    match record {
        Some(r) if r.cached || r.shared_with.is_some() => Value::from(0.0),
        Some(r) if r.usage.is_some() => r
            .cost_pico
            .map(|c| Value::from(Money(c).as_usd()))
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// The judge's columns of a row.
fn judge_values(judged: Option<&Judged>, out: &mut Vec<(String, Value)>) {
    let (score, reason, record) = match judged {
        Some(Judged::Scored(v, r)) => (
            // The score as the judge wrote it (`9`, not `9.0`).
            r.fields
                .as_ref()
                .and_then(|f| f.get("score"))
                .cloned()
                .unwrap_or(Value::Null),
            Value::String(v.reason.clone()),
            Some(r),
        ),
        Some(Judged::Failed(r)) => (Value::Null, Value::Null, Some(r)),
        _ => (Value::Null, Value::Null, None),
    };
    let usage = record.and_then(|r| r.usage);
    let values = [
        score,
        reason,
        usage.map_or(Value::Null, |u| Value::from(u.prompt_tokens)),
        usage.map_or(Value::Null, |u| Value::from(u.completion_tokens)),
        cost_cell(record),
    ];
    out.extend(JUDGE_COLUMNS.iter().map(|c| c.to_string()).zip(values));
}

/// The result values of a row, as strings for CSV and typed values for JSONL.
pub(crate) fn result_values(spec: &OutputSpec, row: &OutRow<'_>) -> Vec<(String, Value)> {
    let (record, checks) = (row.record, row.checks);
    let mut out = Vec::with_capacity(spec.columns().len());
    let variants = spec.variants.max(1) as usize;
    for v in 0..variants {
        let name = if v == 0 {
            "output".to_string()
        } else {
            format!("output_{}", v + 1)
        };
        let text = record
            .and_then(|r| r.choices.get(v))
            .map(|c| Value::String(c.text.clone()))
            .unwrap_or(Value::Null);
        out.push((name, text));
    }
    for f in &spec.field_columns {
        let v = record
            .and_then(|r| r.fields.as_ref())
            .and_then(|m| m.get(f))
            .cloned()
            .unwrap_or(Value::Null);
        out.push((f.clone(), v));
    }
    for (i, name) in spec.extra.iter().enumerate() {
        let text = row
            .extras
            .get(i)
            .and_then(Option::as_ref)
            .filter(|r| r.status == Status::Ok)
            .and_then(|r| r.choices.first())
            .map(|c| Value::String(c.text.clone()))
            .unwrap_or(Value::Null);
        out.push((name.clone(), text));
    }
    for (i, c) in spec.checks.iter().enumerate() {
        let cell = checks.get(i).map(|r| match (&r.reason, r.passed) {
            (_, true) => Value::String("pass".into()),
            (Some(why), false) => Value::String(format!("fail: {why}")),
            (None, false) => Value::String("fail".into()),
        });
        out.push((format!("check_{}", c.name), cell.unwrap_or(Value::Null)));
    }
    if spec.judge {
        judge_values(row.judged, &mut out);
    }
    out.push(("status".into(), Value::String(row.status.as_str().into())));
    let finish = record
        .and_then(|r| r.choices.first())
        .and_then(|c| c.finish_reason.clone())
        .map(Value::String)
        .unwrap_or(Value::Null);
    out.push(("finish_reason".into(), finish));
    let usage = record.and_then(|r| r.usage);
    out.push((
        "prompt_tokens".into(),
        usage
            .map(|u| Value::from(u.prompt_tokens))
            .unwrap_or(Value::Null),
    ));
    out.push((
        "completion_tokens".into(),
        usage
            .map(|u| Value::from(u.completion_tokens))
            .unwrap_or(Value::Null),
    ));
    out.push(("cost_usd".into(), cost_cell(record)));
    for (i, name) in spec.extra.iter().enumerate() {
        let r = row.extras.get(i).and_then(Option::as_ref);
        out.push((format!("{name}_cost_usd"), cost_cell(r)));
    }
    // Whether the row's tokens and cost are ours because the server sent no usage.
    let estimated = match record {
        Some(r) if r.cached || r.shared_with.is_some() => Value::Bool(false),
        Some(r) => r
            .usage
            .map(|u| Value::Bool(u.estimated))
            .unwrap_or(Value::Null),
        None => Value::Null,
    };
    out.push(("cost_estimated".into(), estimated));
    out.push((
        "attempts".into(),
        record
            .map(|r| Value::from(r.attempts))
            .unwrap_or(Value::Null),
    ));
    // A row whose judge request failed says why here.
    let judge_error = match row.judged {
        Some(Judged::Failed(r)) => r.error.as_ref().map(|e| format!("judge: {e}")),
        Some(Judged::Unplanned(e)) => Some(e.clone()),
        _ => None,
    };
    // A row whose `[[outputs]]` request failed says which, and why.
    let extra_error = spec.extra.iter().zip(row.extras).find_map(|(name, r)| {
        let r = r.as_ref().filter(|r| r.status == Status::Failed)?;
        Some(format!(
            "{name}: {}",
            r.error.as_deref().unwrap_or("failed")
        ))
    });
    out.push((
        "error".into(),
        record
            .and_then(|r| r.error.clone())
            .or(judge_error)
            .or(extra_error)
            .map(Value::String)
            .unwrap_or(Value::Null),
    ));
    out.push((
        "shared_with".into(),
        record
            .and_then(|r| r.shared_with.clone())
            .map(Value::String)
            .unwrap_or(Value::Null),
    ));
    out
}
