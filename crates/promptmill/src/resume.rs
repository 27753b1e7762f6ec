//! Resume: what an earlier run's journal says about a row, given what would be sent now.
//!
//! A row is found by its identity (its `input.id`, or its cells' hash: see
//! [`crate::identity`]), never by its position. It is done when its latest record has the
//! same request hash and succeeded. A changed template, model or setting changes the hash, so the row is redone;
//! a failed row is kept as failed unless the user asks for `--retry-failed`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::identity::Identity;
use crate::journal::{JournalError, JournalIndex, JournalReader, Status};
use crate::types::Row;

/// What to do with one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No earlier record for this row: send it.
    New,
    /// Succeeded earlier with the same request: do not send it again.
    Done,
    /// Failed earlier with the same request, and failed rows are kept: do not send it.
    KeptFailed,
    /// Failed earlier with the same request and `--retry-failed` was given: send it again.
    RetryFailed,
    /// Recorded earlier, but what would be sent has changed since: send it again.
    Changed,
}

impl Decision {
    /// True when the row must be sent (or answered from the cache).
    pub fn send(self) -> bool {
        matches!(
            self,
            Decision::New | Decision::RetryFailed | Decision::Changed
        )
    }
}

/// Looks rows up in a journal's index.
pub struct Resume {
    index: Arc<JournalIndex>,
    path: PathBuf,
    reader: Option<JournalReader>,
    retry_failed: bool,
    identity: Identity,
}

impl Resume {
    /// Decisions against the journal at `path` as `index` describes it, for rows known by
    /// `identity`.
    pub fn new(
        path: &Path,
        index: JournalIndex,
        retry_failed: bool,
        identity: Identity,
    ) -> Result<Resume, JournalError> {
        let reader = if index.records > 0 {
            Some(JournalReader::open(path)?)
        } else {
            None
        };
        Ok(Resume {
            index: Arc::new(index),
            path: path.to_path_buf(),
            reader,
            retry_failed,
            identity,
        })
    }

    /// Another lookup over the same index with a reader of its own, for another thread.
    pub fn fork(&self) -> Result<Resume, JournalError> {
        let reader = match self.reader {
            Some(_) => Some(JournalReader::open(&self.path)?),
            None => None,
        };
        Ok(Resume {
            index: Arc::clone(&self.index),
            path: self.path.clone(),
            reader,
            retry_failed: self.retry_failed,
            identity: self.identity,
        })
    }

    /// Decisions for a job that has no journal yet (every row is new).
    pub fn empty() -> Resume {
        Resume {
            index: Arc::default(),
            path: PathBuf::new(),
            reader: None,
            retry_failed: false,
            identity: Identity::default(),
        }
    }

    /// The identity rule rows are known by.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// What to do with `row`, whose request would hash to `hash`.
    pub fn decide(&mut self, row: &Row, hash: &str) -> Result<Decision, JournalError> {
        let key = self.identity.key(row);
        self.decide_key(&key, hash)
    }

    /// What to do with the row known as `key` (its [`Identity::key`]), whose request would
    /// hash to `hash`.
    pub fn decide_key(&mut self, key: &str, hash: &str) -> Result<Decision, JournalError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(Decision::New);
        };
        let Some(prev) = reader.get(&self.index, key)? else {
            return Ok(Decision::New);
        };
        if prev.answers() != hash {
            return Ok(Decision::Changed);
        }
        Ok(match prev.status {
            Status::Ok => Decision::Done,
            Status::Failed if self.retry_failed => Decision::RetryFailed,
            Status::Failed => Decision::KeptFailed,
        })
    }
}

/// How many rows got each decision.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResumeCounts {
    pub new: u64,
    pub done: u64,
    pub kept_failed: u64,
    pub retry_failed: u64,
    pub changed: u64,
}

impl ResumeCounts {
    /// Counts one decision.
    pub fn add(&mut self, d: Decision) {
        match d {
            Decision::New => self.new += 1,
            Decision::Done => self.done += 1,
            Decision::KeptFailed => self.kept_failed += 1,
            Decision::RetryFailed => self.retry_failed += 1,
            Decision::Changed => self.changed += 1,
        }
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, o: &ResumeCounts) {
        self.new += o.new;
        self.done += o.done;
        self.kept_failed += o.kept_failed;
        self.retry_failed += o.retry_failed;
        self.changed += o.changed;
    }

    /// The line telling the user what an earlier run already did, before anything is sent;
    /// None when no row has an earlier record. It says how rows were matched: by `input.id`,
    /// or by content when the job has none.
    pub fn line(&self, identity: Identity) -> Option<String> {
        if self.done + self.kept_failed + self.retry_failed + self.changed == 0 {
            return None;
        }
        let mut s = format!(
            "resuming: {} rows done already (not sent again), {} changed since (template, model \
             or settings) and redone",
            self.done, self.changed
        );
        if self.kept_failed > 0 {
            s.push_str(&format!(
                ", {} failed rows kept as failed (add --retry-failed to send them again)",
                self.kept_failed
            ));
        } else if self.retry_failed > 0 {
            s.push_str(&format!(", {} failed rows retried", self.retry_failed));
        } else {
            s.push_str(", 0 failed rows");
        }
        s.push_str(&format!(
            ", {} rows to send",
            self.new + self.changed + self.retry_failed
        ));
        if identity.by_content() {
            s.push_str(
                " (rows are matched by content, as the job has no input.id: a row whose cells \
                 changed is a new row)",
            );
        } else {
            s.push_str(" (rows are matched by input.id)");
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{self, Record};

    fn row(index: u64, id: &str) -> Row {
        let mut fields = serde_json::Map::new();
        fields.insert("id".into(), id.into());
        Row {
            index,
            line: index + 2,
            id: id.into(),
            fields,
        }
    }

    fn rec(row: u64, id: &str, hash: &str, status: Status) -> Record {
        Record {
            row,
            id: id.into(),
            hash: hash.into(),
            status,
            choices: Vec::new(),
            usage: None,
            cost_pico: None,
            attempts: 1,
            error: None,
            cached: false,
            batch: false,
            fields: None,
            shared_with: None,
            regen_of: None,
            regenerated: 0,
        }
    }

    #[test]
    fn decisions_follow_the_latest_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut w = journal::open(&path).unwrap();
        w.append(&rec(0, "a", "h0", Status::Ok)).unwrap();
        w.append(&rec(1, "b", "h1", Status::Failed)).unwrap();
        w.append(&rec(2, "c", "old", Status::Ok)).unwrap();
        w.append(&rec(3, "x", "h3", Status::Ok)).unwrap();
        w.append(&rec(4, "e", "h4", Status::Failed)).unwrap();
        w.append(&rec(4, "e", "h4", Status::Ok)).unwrap();
        drop(w);
        let index = journal::read_index(&path).unwrap().unwrap();
        for (retry, failed) in [(false, Decision::KeptFailed), (true, Decision::RetryFailed)] {
            let mut r = Resume::new(&path, index.clone(), retry, Identity::new(true)).unwrap();
            // Positions no longer matter: rows are found by id.
            assert_eq!(r.decide(&row(7, "a"), "h0").unwrap(), Decision::Done);
            assert_eq!(r.decide(&row(0, "b"), "h1").unwrap(), failed);
            assert_eq!(r.decide(&row(2, "c"), "new").unwrap(), Decision::Changed);
            assert_eq!(
                r.decide(&row(3, "d"), "h3").unwrap(),
                Decision::New,
                "other id"
            );
            assert_eq!(
                r.decide(&row(4, "e"), "h4").unwrap(),
                Decision::Done,
                "latest wins"
            );
            assert_eq!(r.decide(&row(5, "f"), "h5").unwrap(), Decision::New);
        }
        assert_eq!(
            Resume::empty().decide(&row(0, "a"), "h0").unwrap(),
            Decision::New
        );
    }

    #[test]
    fn the_line_says_what_is_kept_and_what_is_redone() {
        let mut c = ResumeCounts::default();
        let by_id = Identity::new(true);
        assert_eq!(c.line(by_id), None);
        c.add(Decision::New);
        assert_eq!(c.line(by_id), None, "a fresh job says nothing");
        for d in [
            Decision::Done,
            Decision::Done,
            Decision::Changed,
            Decision::KeptFailed,
        ] {
            c.add(d);
        }
        let line = c.line(by_id).unwrap();
        assert!(line.contains("matched by input.id"), "{line}");
        let by_content = c.line(Identity::new(false)).unwrap();
        assert!(by_content.contains("matched by content"), "{by_content}");
        assert!(line.contains("2 rows done already"), "{line}");
        assert!(line.contains("1 changed since"), "{line}");
        assert!(line.contains("1 failed rows kept"), "{line}");
        assert!(line.contains("--retry-failed"), "{line}");
        assert!(line.contains("2 rows to send"), "{line}");
    }
}
