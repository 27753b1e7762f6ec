//! Row identity: how a row is known across runs, whatever its position in the file.
//!
//! A row is its `input.id` value or, in a job without `input.id`, a hash of its cells (column
//! names and values). Together with the hash of exactly what would be sent (see
//! [`crate::plan`]) this decides whether an earlier answer is this row's current answer, so
//! inserting, deleting or reordering rows, or replacing the input with a superset, re-sends
//! only the rows whose request is new.
//!
//! Two rows with identical cells in a job without `input.id` are one identity: they share one
//! answer. Two rows with different identities that ask the very same thing are sent once per
//! run ([`RunRequests`]) and the answer is copied to the others, marked `shared_with`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Job;
use crate::journal::{JournalError, JournalReader, JournalWriter, Record, Status};
use crate::key_table::KeyTable;
use crate::slots::temp_file_beside;
use crate::types::Row;

/// How a job's rows are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Identity {
    by_id: bool,
}

impl Identity {
    /// The identity rule of `job`: by `input.id` when set, else by content.
    pub fn of(job: &Job) -> Identity {
        Identity::new(job.input.id.is_some())
    }

    /// By the id column (`by_id`) or by the row's cells.
    pub fn new(by_id: bool) -> Identity {
        Identity { by_id }
    }

    /// True when rows are known by their cells (the job has no `input.id`).
    pub fn by_content(self) -> bool {
        !self.by_id
    }

    /// The row's identity, as journal records hold it in `id`.
    ///
    /// A record the source could not read stands in with no cells: it is known by its
    /// position (`#row:N`), the only thing there is to know it by.
    pub fn key(self, row: &Row) -> String {
        if row.fields.is_empty() {
            return format!("#row:{}", row.index + 1);
        }
        if self.by_id {
            return row.id.clone();
        }
        // Cells in name order, so a file whose columns were reordered keeps its identities.
        let mut cells: Vec<_> = row.fields.iter().collect();
        cells.sort_by(|a, b| a.0.cmp(b.0));
        let mut h = Sha256::new();
        if let Ok(bytes) = serde_json::to_vec(&cells) {
            h.update(&bytes);
        }
        let digest = h.finalize();
        let mut out = String::with_capacity(33);
        out.push('#');
        for b in &digest[..16] {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// What names the row whose record is `r` to a reader: its `input.id`, or its row number.
    fn name(self, r: &Record) -> String {
        match &r.shared_with {
            Some(first) => first.clone(),
            None if self.by_id => r.id.clone(),
            None => (r.row + 1).to_string(),
        }
    }
}

/// What the current job wants for one row: the row's identity and the hash of the request it
/// would send now (None when the row cannot be planned: its record, if any, is a bad row's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub id: String,
    pub hash: Option<String>,
    /// The hashes of the row's `[[outputs]]` requests now, in the job's order (empty when
    /// the job has none, or they are not known: then no output text shows as current).
    pub outputs: Vec<Option<String>>,
}

impl Wanted {
    /// True when `record` answers what is wanted now: same row, same request. Anything else is
    /// an older answer (another template, model, endpoint, or a mock run) and not current.
    pub fn answered_by(&self, record: &Record) -> bool {
        // A record with no hash is a bad row's (unreadable or unrenderable): current for a
        // row that still cannot be planned, or that could not be read at all.
        let bad = record.hash.is_empty() && (self.hash.is_none() || self.id.starts_with("#row:"));
        record.id == self.id && (bad || self.hash.as_deref() == Some(record.answers()))
    }
}

/// The requests of one run, so that a request asked for twice is sent once: the first row
/// that asks sends it (or already has its answer), later ones wait for that answer and get a
/// copy at the end of the run ([`RunRequests::fan_out`]). Held on disk, like the journal's
/// index, so a million rows stay out of RAM.
pub struct RunRequests {
    seen: KeyTable,
    deferred: BufWriter<File>,
    waiting: u64,
}

impl std::fmt::Debug for RunRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunRequests")
            .field("asked", &self.seen.len())
            .field("waiting", &self.waiting)
            .finish()
    }
}

/// A row waiting for another row's answer.
#[derive(Serialize, Deserialize)]
struct Waiting {
    row: u64,
    id: String,
    hash: String,
}

impl RunRequests {
    /// An empty set, in temporary files beside `journal`.
    pub fn new(journal: &Path) -> io::Result<RunRequests> {
        Ok(RunRequests {
            seen: KeyTable::create_beside(journal)?,
            deferred: BufWriter::new(temp_file_beside(journal)?),
            waiting: 0,
        })
    }

    /// Notes that this run has (or is getting) the answer to `hash`; false when it had already
    /// been noted.
    pub fn note(&mut self, hash: &str) -> io::Result<bool> {
        Ok(self.seen.insert(hash, 1)?.is_none())
    }

    /// For a row about to be sent: true when it must be sent; false when the same request
    /// was already asked for in this run, and the row waits for that answer.
    pub fn send_or_wait(&mut self, row: u64, id: &str, hash: &str) -> io::Result<bool> {
        if self.note(hash)? {
            return Ok(true);
        }
        let w = Waiting {
            row,
            id: id.to_string(),
            hash: hash.to_string(),
        };
        serde_json::to_writer(&mut self.deferred, &w)?;
        self.deferred.write_all(b"\n")?;
        self.waiting += 1;
        Ok(false)
    }

    /// Rows waiting for another row's answer.
    pub fn waiting(&self) -> u64 {
        self.waiting
    }

    /// Gives every waiting row a copy of the answer its request got, marked as shared and at
    /// no cost; a row whose request got no answer (the run stopped first) stays pending.
    /// Returns how many rows got an answer this way.
    pub fn fan_out(self, journal: &mut JournalWriter, identity: Identity) -> anyhow::Result<u64> {
        if self.waiting == 0 {
            return Ok(0);
        }
        let mut file = self.deferred.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        let mut reader = JournalReader::open(journal.path())?;
        let mut shared = 0;
        for line in BufReader::new(file).lines() {
            let w: Waiting = serde_json::from_str(&line?)?;
            // Rows with identical cells are one identity: the answer may be theirs already.
            // (An old failure of its own to the same request is replaced by the new answer.)
            let latest = journal.index().offset_of_request(&w.hash)?;
            let own_at = journal.index().offset(&w.id)?;
            if let Some(at) = own_at {
                let own = reader.read_at(at)?;
                if own.hash == w.hash && (own.status == Status::Ok || Some(at) == latest) {
                    continue;
                }
            }
            let Some(first) = latest_answer(&mut reader, journal, &w.hash)? else {
                continue;
            };
            let rec = Record {
                row: w.row,
                shared_with: Some(identity.name(&first)),
                id: w.id,
                cost_pico: None,
                attempts: 0,
                cached: false,
                ..first
            };
            journal.append(&rec)?;
            shared += 1;
        }
        Ok(shared)
    }
}

fn latest_answer(
    reader: &mut JournalReader,
    journal: &JournalWriter,
    hash: &str,
) -> Result<Option<Record>, JournalError> {
    match journal.index().offset_of_request(hash)? {
        Some(at) => reader.read_at(at).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(index: u64, id: &str, fields: serde_json::Value) -> Row {
        Row {
            index,
            line: index + 2,
            id: id.into(),
            fields: fields.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn a_row_is_its_id_or_its_cells_never_its_position() {
        let by_id = Identity::new(true);
        let by_cells = Identity::new(false);
        let a = row(0, "a", json!({"id": "a", "q": "x"}));
        let moved = row(9, "a", json!({"id": "a", "q": "x"}));
        assert_eq!(by_id.key(&a), "a");
        assert_eq!(by_cells.key(&a), by_cells.key(&moved));
        let reordered = row(3, "4", json!({"q": "x", "id": "a"}));
        assert_eq!(by_cells.key(&a), by_cells.key(&reordered), "column order");
        let other = row(0, "1", json!({"id": "a", "q": "y"}));
        assert_ne!(by_cells.key(&a), by_cells.key(&other));
        assert!(by_cells.key(&a).starts_with('#'));
        let bad = row(4, "5", json!({}));
        assert_eq!(by_id.key(&bad), "#row:5");
        assert_eq!(by_cells.key(&bad), "#row:5");
    }

    #[test]
    fn an_answer_is_current_only_for_the_same_row_and_request() {
        let rec = Record::failed(0, "a".into(), "h".into(), 1, "x".into());
        let want = |id: &str, hash: Option<&str>| Wanted {
            outputs: Vec::new(),
            id: id.into(),
            hash: hash.map(Into::into),
        };
        assert!(want("a", Some("h")).answered_by(&rec));
        assert!(!want("a", Some("h2")).answered_by(&rec));
        assert!(!want("b", Some("h")).answered_by(&rec));
        assert!(!want("a", None).answered_by(&rec));
        let bad = Record::failed(0, "a".into(), String::new(), 0, "x".into());
        assert!(want("a", None).answered_by(&bad));
    }

    #[test]
    fn a_request_asked_twice_is_sent_once_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut journal = crate::journal::open(&path).unwrap();
        let mut run = RunRequests::new(&path).unwrap();
        assert!(run.send_or_wait(0, "a", "h").unwrap());
        assert!(!run.send_or_wait(1, "b", "h").unwrap());
        assert!(!run.send_or_wait(2, "a", "h").unwrap(), "same identity");
        assert!(run.send_or_wait(3, "c", "h2").unwrap());
        assert!(!run.send_or_wait(4, "d", "h2").unwrap());
        assert_eq!(run.waiting(), 3);
        let mut answer = Record::failed(0, "a".into(), "h".into(), 1, String::new());
        answer.status = crate::journal::Status::Ok;
        answer.error = None;
        answer.cost_pico = Some(5);
        answer.usage = Some(crate::types::Usage::default());
        journal.append(&answer).unwrap();
        let spent = journal.index().spent.everywhere();
        // h2 got no answer (the run stopped first): d stays without a record.
        assert_eq!(run.fan_out(&mut journal, Identity::new(true)).unwrap(), 1);
        assert_eq!(
            journal.index().spent.everywhere(),
            spent,
            "a shared answer costs nothing"
        );
        let mut r = JournalReader::open(&path).unwrap();
        let b = r.get(journal.index(), "b").unwrap().unwrap();
        assert_eq!(b.shared_with.as_deref(), Some("a"));
        assert_eq!((b.row, b.cost_pico, b.status), (1, None, answer.status));
        assert!(r.get(journal.index(), "d").unwrap().is_none());
    }
}
