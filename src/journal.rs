//! The journal: an append-only JSONL file beside the output holding one record per finished
//! row, written the moment a response arrives. It is the source of truth: the output file is
//! built from it, and a re-run reads it to skip rows already paid for.
//!
//! A row is known by its identity (see [`crate::identity`]), not its position: the index maps
//! each identity to its latest record, so a reordered or grown input finds its rows' records.
//!
//! A crash (even `kill -9`) loses at most the requests in flight: each record is handed to the
//! OS in one `write` as soon as it exists. A crash in the middle of that write leaves a
//! truncated last line; opening the journal detects it, cuts it off, and goes on.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::client::Choice;
use crate::key_table::KeyTable;
use crate::types::{Money, Usage};

/// How a row ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
}

/// One finished row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// 0-based row index in the input when it was recorded (for people reading the journal;
    /// rows are matched by `id`, never by position).
    pub row: u64,
    /// The row's identity: its `input.id` value, or `#` and a hash of its cells when the job
    /// has no `input.id` (see [`crate::identity`]).
    pub id: String,
    /// Hash of exactly what was sent (provider, URL, body); a changed template or model
    /// changes it, and the row is redone.
    pub hash: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Cost in picodollars; None when the model has no known price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_pico: Option<u64>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Served from the response cache (cost nothing this time).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// Priced at Batch API rates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
    /// Structured-output fields parsed from the response, when the job has a schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
    /// The answer is another row's, to the very same request sent once in this run: the row
    /// this names (its `input.id`, or its row number) paid for it; this one cost nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<String>,
}

impl Record {
    /// True when this record's usage was paid for (not from the cache, not shared).
    fn paid(&self) -> bool {
        self.usage.is_some() && !self.cached && self.shared_with.is_none()
    }
}

/// Money a row spent on answers it threw away (structured output that did not parse) before
/// the run stopped without finishing it (an abort, or a second Ctrl-C). It counts in the
/// journal's spend, so a budget cap holds across runs, but it is not the row's record: the
/// line has no `status`, is never indexed, and the row is sent again on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unfinished {
    pub row: u64,
    pub id: String,
    pub hash: String,
    pub usage: Usage,
    /// Cost in picodollars; None when the model has no known price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_pico: Option<u64>,
}

impl Record {
    /// A failed row with no answer: `error` says why. Callers set `batch` and the rest with
    /// struct update syntax where they differ.
    pub fn failed(row: u64, id: String, hash: String, attempts: u32, error: String) -> Record {
        Record {
            row,
            id,
            hash,
            status: Status::Failed,
            choices: Vec::new(),
            usage: None,
            cost_pico: None,
            attempts,
            error: Some(error),
            cached: false,
            batch: false,
            fields: None,
            shared_with: None,
        }
    }
}

/// Errors reading or writing the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where each row's latest record sits in the journal file, and what the journal adds up to.
///
/// The identity → offset and request → offset tables are not held in RAM (they would grow
/// with the rows): they are [`KeyTable`]s rebuilt from the journal on every open, so the
/// journal stays the only source of truth. Clones share the tables and see records appended
/// after they were made; records are never moved, so every offset stays valid.
#[derive(Debug, Default, Clone)]
pub struct JournalIndex {
    /// None for an index with no record (nothing to look up).
    slots: Option<Arc<Slots>>,
    /// Rows (identities) with a record.
    pub records: u64,
    /// A truncated or corrupt tail was cut off when opening.
    pub repaired_tail: bool,
    /// Corrupt lines in the middle of the file that were skipped.
    pub skipped_lines: u64,
    /// Money spent on every response recorded (superseded ones too: they were paid for).
    pub spent: Money,
    /// Responses recorded without a known price.
    pub unpriced: u64,
}

/// The offset tables and the journal they index (for error messages).
#[derive(Debug)]
struct Slots {
    /// Row identity → offset of its latest record.
    by_id: RwLock<KeyTable>,
    /// Request hash → offset of the latest record answering that request.
    by_request: RwLock<KeyTable>,
    journal: PathBuf,
}

impl Slots {
    fn new(journal: &Path) -> Result<Slots, JournalError> {
        let table = || KeyTable::create_beside(journal).map_err(io_err(journal));
        Ok(Slots {
            by_id: RwLock::new(table()?),
            by_request: RwLock::new(table()?),
            journal: journal.to_path_buf(),
        })
    }

    /// Points `id` and `hash` at the record at `at`; true when `id` had no record before.
    fn set(&self, id: &str, hash: &str, at: u64) -> Result<bool, JournalError> {
        let err = io_err(&self.journal);
        let first = write(&self.by_id).insert(id, at).map_err(&err)?.is_none();
        // A bad row's record answers no request.
        if !hash.is_empty() {
            write(&self.by_request).insert(hash, at).map_err(&err)?;
        }
        Ok(first)
    }
}

/// The table for writing; a panic elsewhere while it was held leaves it usable (every insert
/// is a single slot write).
fn write(t: &RwLock<KeyTable>) -> std::sync::RwLockWriteGuard<'_, KeyTable> {
    t.write().unwrap_or_else(|e| e.into_inner())
}

fn read(t: &RwLock<KeyTable>) -> std::sync::RwLockReadGuard<'_, KeyTable> {
    t.read().unwrap_or_else(|e| e.into_inner())
}

impl JournalIndex {
    /// Offset of the latest record of the row whose identity is `id`.
    pub fn offset(&self, id: &str) -> Result<Option<u64>, JournalError> {
        match &self.slots {
            Some(s) => read(&s.by_id).get(id).map_err(io_err(&s.journal)),
            None => Ok(None),
        }
    }

    /// Offset of the latest record answering the request whose hash is `hash`, whatever row
    /// it was for.
    pub fn offset_of_request(&self, hash: &str) -> Result<Option<u64>, JournalError> {
        match &self.slots {
            Some(s) if !hash.is_empty() => {
                read(&s.by_request).get(hash).map_err(io_err(&s.journal))
            }
            _ => Ok(None),
        }
    }

    /// Adds a paid response (`paid`: it has usage and was neither served from the cache nor
    /// shared with another row).
    fn count_spend(&mut self, paid: bool, cost_pico: Option<u64>) {
        if paid {
            match cost_pico {
                Some(c) => self.spent = self.spent.saturating_add(Money(c)),
                None => self.unpriced += 1,
            }
        }
    }
}

/// Appends records.
pub struct JournalWriter {
    file: File,
    path: PathBuf,
    len: u64,
    index: JournalIndex,
    line: Vec<u8>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens (or creates) a journal: reads what is there into an index, cuts off a truncated
/// tail, and returns a writer positioned at the end.
pub fn open(path: &Path) -> Result<JournalWriter, JournalError> {
    let err = io_err(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(&err)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(&err)?;
    let (index, good_end) = scan(&mut file, path)?;
    if index.repaired_tail {
        file.set_len(good_end).map_err(&err)?;
        tracing::warn!(
            "{}: the last record was cut off (an earlier run was killed mid-write); it was \
             dropped and that row will be redone",
            path.display()
        );
    }
    Ok(JournalWriter {
        file,
        path: path.to_path_buf(),
        len: good_end,
        index,
        line: Vec::with_capacity(1024),
    })
}

/// Reads the index of an existing journal without changing the file (a truncated tail is
/// left in place but not indexed, as [`open`] would drop it). None when there is no journal.
pub fn read_index(path: &Path) -> Result<Option<JournalIndex>, JournalError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let (index, _) = scan(&mut file, path)?;
    Ok(Some(index))
}

/// Reads every record from the start of `file`: the index (`records` = rows with a record),
/// and where the last good line ends.
fn scan(file: &mut File, path: &Path) -> Result<(JournalIndex, u64), JournalError> {
    let err = io_err(path);
    let slots = Slots::new(path)?;
    let mut index = JournalIndex::default();
    let mut good_end = 0u64;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut offset = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(&err)? as u64;
        if n == 0 {
            break;
        }
        let complete = line.last() == Some(&b'\n');
        match serde_json::from_slice::<RowOnly>(&line) {
            Ok(r) if complete => {
                // A line without a status is an [`Unfinished`] spend, not the row's record.
                if r.status.is_some() && slots.set(&r.id, &r.hash, offset)? {
                    index.records += 1;
                }
                let paid = r.usage.is_some() && !r.cached && r.shared_with.is_none();
                index.count_spend(paid, r.cost_pico);
                good_end = offset + n;
            }
            _ if !complete => {
                // A crash mid-write: the last line is cut. The caller drops it.
                index.repaired_tail = true;
            }
            _ => {
                index.skipped_lines += 1;
                good_end = offset + n;
            }
        }
        offset += n;
    }
    if offset != good_end {
        index.repaired_tail = true;
    }
    index.slots = Some(Arc::new(slots));
    Ok((index, good_end))
}

/// The part of a record the opening scan needs.
#[derive(Deserialize)]
struct RowOnly {
    id: String,
    #[serde(default)]
    hash: String,
    #[serde(default)]
    status: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    cost_pico: Option<u64>,
    #[serde(default)]
    cached: bool,
    #[serde(default)]
    usage: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    shared_with: Option<serde::de::IgnoredAny>,
}

impl JournalWriter {
    /// Appends one record in a single write, so it is in the OS's hands before the next
    /// response is even looked at.
    pub fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        let at = self.write_line(record)?;
        self.index.count_spend(record.paid(), record.cost_pico);
        if let Some(slots) = &self.index.slots {
            if slots.set(&record.id, &record.hash, at)? {
                self.index.records += 1;
            }
        }
        Ok(())
    }

    /// Appends the spend of a row that did not finish; the row's latest record stays what it
    /// was.
    pub fn append_unfinished(&mut self, spend: &Unfinished) -> Result<(), JournalError> {
        self.write_line(spend)?;
        self.index.count_spend(true, spend.cost_pico);
        Ok(())
    }

    /// Writes one line; returns where it starts.
    fn write_line(&mut self, value: &impl Serialize) -> Result<u64, JournalError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, value).map_err(|e| JournalError::Io {
            path: self.path.clone(),
            source: e.into(),
        })?;
        self.line.push(b'\n');
        self.file
            .write_all(&self.line)
            .map_err(io_err(&self.path))?;
        let at = self.len;
        self.len += self.line.len() as u64;
        Ok(at)
    }

    /// Forces written records to disk (survives power loss, not just process death).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }

    /// The index of records so far.
    pub fn index(&self) -> &JournalIndex {
        &self.index
    }

    /// Finishes writing; returns the index.
    pub fn finish(mut self) -> Result<JournalIndex, JournalError> {
        self.sync()?;
        Ok(self.index)
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads records by offset (random access into the journal file).
pub struct JournalReader {
    reader: BufReader<File>,
    path: PathBuf,
    line: Vec<u8>,
}

impl JournalReader {
    /// Opens a journal for reading.
    pub fn open(path: &Path) -> Result<JournalReader, JournalError> {
        let file = File::open(path).map_err(io_err(path))?;
        Ok(JournalReader {
            reader: BufReader::with_capacity(8192, file),
            path: path.to_path_buf(),
            line: Vec::with_capacity(1024),
        })
    }

    /// The record at `offset` (from a [`JournalIndex`]).
    pub fn read_at(&mut self, offset: u64) -> Result<Record, JournalError> {
        let err = io_err(&self.path);
        self.reader.seek(SeekFrom::Start(offset)).map_err(&err)?;
        self.line.clear();
        (&mut self.reader)
            .take(u64::MAX)
            .read_until(b'\n', &mut self.line)
            .map_err(&err)?;
        serde_json::from_slice(&self.line).map_err(|e| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("record at byte {offset}: {e}"),
            ),
        })
    }

    /// The latest record of the row whose identity is `id`, if any.
    pub fn get(&mut self, index: &JournalIndex, id: &str) -> Result<Option<Record>, JournalError> {
        match index.offset(id)? {
            Some(o) => self.read_at(o).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(row: u64, status: Status) -> Record {
        Record {
            row,
            id: format!("id-{row}"),
            hash: "h".into(),
            status,
            choices: vec![Choice {
                text: format!("text {row}"),
                finish_reason: Some("stop".into()),
            }],
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                ..Usage::default()
            }),
            cost_pico: Some(12),
            attempts: 1,
            error: None,
            cached: false,
            batch: false,
            fields: None,
            shared_with: None,
        }
    }

    #[test]
    fn records_survive_reopening_and_the_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut w = open(&path).unwrap();
        w.append(&rec(0, Status::Failed)).unwrap();
        w.append(&rec(2, Status::Ok)).unwrap();
        w.append(&rec(0, Status::Ok)).unwrap();
        drop(w);
        let w = open(&path).unwrap();
        let idx = w.index().clone();
        assert_eq!(idx.records, 2);
        assert!(!idx.repaired_tail);
        let mut r = JournalReader::open(&path).unwrap();
        assert_eq!(r.get(&idx, "id-0").unwrap().unwrap().status, Status::Ok);
        assert_eq!(r.get(&idx, "id-2").unwrap().unwrap(), rec(2, Status::Ok));
        assert!(r.get(&idx, "id-1").unwrap().is_none());
        assert!(r.get(&idx, "id-99").unwrap().is_none());
    }

    #[test]
    fn an_unfinished_spend_counts_but_is_no_row_s_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let spend = |row| Unfinished {
            row,
            id: format!("id-{row}"),
            hash: "h".into(),
            usage: Usage {
                prompt_tokens: 5,
                completion_tokens: 7,
                ..Usage::default()
            },
            cost_pico: Some(30),
        };
        let mut w = open(&path).unwrap();
        w.append(&rec(0, Status::Failed)).unwrap();
        w.append_unfinished(&spend(0)).unwrap();
        w.append_unfinished(&spend(1)).unwrap();
        let live = w.index().clone();
        drop(w);
        let idx = read_index(&path).unwrap().unwrap();
        for idx in [&live, &idx] {
            assert_eq!(idx.records, 1);
            assert_eq!(idx.skipped_lines, 0);
            assert_eq!(idx.spent, Money(12 + 30 + 30));
            let mut r = JournalReader::open(&path).unwrap();
            assert_eq!(r.get(idx, "id-0").unwrap().unwrap(), rec(0, Status::Failed));
            assert!(r.get(idx, "id-1").unwrap().is_none());
        }
    }

    #[test]
    fn a_truncated_tail_is_cut_off_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut w = open(&path).unwrap();
        w.append(&rec(0, Status::Ok)).unwrap();
        w.append(&rec(1, Status::Ok)).unwrap();
        drop(w);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 10]).unwrap();
        let mut w = open(&path).unwrap();
        assert!(w.index().repaired_tail);
        assert_eq!(w.index().records, 1);
        assert!(w.index().offset("id-1").unwrap().is_none());
        w.append(&rec(1, Status::Ok)).unwrap();
        drop(w);
        let w = open(&path).unwrap();
        assert!(!w.index().repaired_tail);
        assert_eq!(w.index().records, 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn rows_are_found_by_identity_and_request_whatever_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        // Enough rows to make the tables grow while being written.
        let rows: Vec<u64> = (0..10_000u64).map(|i| (i * 7919) % 10_007).collect();
        let mut w = open(&path).unwrap();
        for &row in &rows {
            let mut r = rec(row, Status::Ok);
            r.hash = format!("h{row}");
            w.append(&r).unwrap();
        }
        let mut again = rec(rows[5], Status::Failed);
        again.hash = format!("h{}", rows[5]);
        w.append(&again).unwrap();
        let live = w.index().clone();
        drop(w);
        let idx = read_index(&path).unwrap().unwrap();
        assert_eq!(idx.records, 10_000, "rows with a record");
        for index in [&live, &idx] {
            assert_eq!(index.records, 10_000);
            let mut r = JournalReader::open(&path).unwrap();
            let latest = r.get(index, &format!("id-{}", rows[5])).unwrap().unwrap();
            assert_eq!(latest.status, Status::Failed, "the latest record wins");
            for &row in rows.iter().step_by(97) {
                let got = r.get(index, &format!("id-{row}")).unwrap().unwrap();
                assert_eq!(got.row, row);
                let o = index
                    .offset_of_request(&format!("h{row}"))
                    .unwrap()
                    .unwrap();
                assert_eq!(r.read_at(o).unwrap().id, format!("id-{row}"));
            }
            assert!(r.get(index, "id-10008").unwrap().is_none());
            assert!(index.offset_of_request("").unwrap().is_none());
        }
        assert!(JournalIndex::default().offset("id-3").unwrap().is_none());
    }

    #[test]
    fn a_shared_answer_is_no_spend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut w = open(&path).unwrap();
        w.append(&rec(0, Status::Ok)).unwrap();
        let shared = Record {
            shared_with: Some("id-0".into()),
            cost_pico: None,
            ..rec(1, Status::Ok)
        };
        w.append(&shared).unwrap();
        let live = w.index().clone();
        drop(w);
        for idx in [live, read_index(&path).unwrap().unwrap()] {
            assert_eq!((idx.records, idx.spent, idx.unpriced), (2, Money(12), 0));
        }
    }

    #[test]
    fn a_garbage_line_in_the_middle_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut w = open(&path).unwrap();
        w.append(&rec(0, Status::Ok)).unwrap();
        drop(w);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{not json}\n").unwrap();
        drop(f);
        let mut w = open(&path).unwrap();
        w.append(&rec(1, Status::Ok)).unwrap();
        let idx = w.finish().unwrap();
        assert_eq!(idx.records, 2);
        let mut r = JournalReader::open(&path).unwrap();
        assert_eq!(r.get(&idx, "id-1").unwrap().unwrap().row, 1);
    }
}
