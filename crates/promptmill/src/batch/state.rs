//! The batch state file (`<output stem>.batches.json`): every input file written, uploaded
//! and turned into a batch, saved atomically after every step so that a crash at any point
//! never submits the same rows twice.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::judge::Round;
use crate::sink::write_atomic;

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: cannot read the batch state: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: the batch state is not valid JSON ({source}); it records which batches \
             were submitted, so fix or restore it rather than deleting it"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: cannot write the batch state: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `request_counts` of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub completed: u64,
    #[serde(default)]
    pub failed: u64,
}

/// One input file and the batch made from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Unique identity (`<state id>-r<round>-c<n>`), sent as batch metadata so a batch whose
    /// creation was not recorded can be found again.
    pub key: String,
    /// Submission round: 1 for the first, one more for each resubmission.
    pub round: u32,
    /// The input JSONL file on disk.
    pub input: PathBuf,
    pub requests: u64,
    pub bytes: u64,
    /// Its requests' tokens as an enqueued-token limit counts them (prompt + max_tokens);
    /// None in state files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Set once the upload answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    /// Set just before `POST /v1/batches`: if there is no batch id yet, the create may have
    /// happened without being recorded, so look it up before creating another.
    #[serde(default)]
    pub create_started: bool,
    /// When `create_started` was set (unix seconds; Message Batches only, which carry no
    /// metadata: a lost batch is looked for among those created since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default)]
    pub counts: RequestCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_file_id: Option<String>,
    /// The batch's results are in the journal.
    #[serde(default)]
    pub collected: bool,
    /// Other batches of the job were in progress when this chunk's batch was created: a
    /// refusal for the enqueued-token limit then means "wait", not "too big".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub beside: bool,
    /// Batches the provider refused for its enqueued-token limit, oldest first: the chunk is
    /// held and submitted again from the same input file once the job's earlier batches
    /// finish (and a lost create is never taken to be one of these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// A prefix group's primer batch (its first row alone, `cache_control` marked): the
    /// other chunks of its round are submitted only once every primer of the round has been
    /// collected, so that their requests read the prefixes the primers wrote. Left out when
    /// false, so the state stays what an older promptmill reads (which ignores the field and
    /// so does not wait: the answers are the same, the cache is read less).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub primer: bool,
    /// The prefix groups whose rows the input file holds together (see [`crate::prime`]),
    /// for the summary's per-group cache figures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupLines>,
    /// A review round's chunk: what its requests are (None: the rows' own answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Round>,
    /// The chunk's worst case (its rows' answers or a review round's requests), reserved in
    /// the journal before it is submitted and released once its results are in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Held>,
    /// The journal's length when reading a review chunk's results began: a read that a
    /// crash cut short starts again and skips what was journaled since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_from: Option<u64>,
}

/// A prefix group's lines in a chunk's input file: `lines` lines from line `from` (0-based).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLines {
    /// The group's id (as the estimate lists it).
    pub id: String,
    pub from: u64,
    pub lines: u64,
}

impl GroupLines {
    /// Adds `line` of group `id` to `spans` (lines come in order).
    pub fn note(spans: &mut Vec<GroupLines>, id: &str, line: u64) {
        match spans.last_mut() {
            Some(g) if g.id == id && g.from + g.lines == line => g.lines += 1,
            _ => spans.push(GroupLines {
                id: id.to_string(),
                from: line,
                lines: 1,
            }),
        }
    }

    /// The group of `line`, if any.
    pub fn of(spans: &[GroupLines], line: u64) -> Option<&str> {
        spans
            .iter()
            .find(|g| line >= g.from && line - g.from < g.lines)
            .map(|g| g.id.as_str())
    }
}

/// A chunk's reservation: its id is chosen (and saved) before it is written, so writing it
/// again after a crash is the same reservation, never a second one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub id: u64,
    /// The worst case in picodollars; None when unpriced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_pico: Option<u64>,
    /// The reservation is in the journal's reservations file.
    #[serde(default)]
    pub written: bool,
}

/// One review round as submitted (its chunks carry the same `round`); a round with nothing
/// to send has no chunk, and is recorded all the same so the rounds after it follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewStep {
    pub round: u32,
    pub kind: Round,
    pub requests: u64,
}

/// Everything submitted for one job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchState {
    /// Random id of this state file: makes chunk keys unique across jobs and machines.
    pub id: String,
    pub job: String,
    pub chunks: Vec<Chunk>,
    /// The review rounds (judge, regeneration) submitted, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<ReviewStep>,
}

/// Statuses after which a batch changes no more.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "expired" | "cancelled" | "failed")
}

impl BatchState {
    /// Reads the state, or a fresh one (with a new random id) when there is no file yet.
    pub fn load(path: &Path, job: &str) -> Result<BatchState, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BatchState {
                id: format!("{:016x}", rand::random::<u64>()),
                job: job.to_string(),
                chunks: Vec::new(),
                reviews: Vec::new(),
            }),
            Err(source) => Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the state atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let write = |source| StateError::Write {
            path: path.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| write(e.into()))?;
        write_atomic(path, &bytes).map_err(write)
    }

    /// Chunks whose results are not in the journal yet.
    pub fn in_flight(&self) -> impl Iterator<Item = &Chunk> {
        self.chunks.iter().filter(|c| !c.collected)
    }

    /// Whether chunk `i` may be submitted now: not while a primer of its round has not been
    /// collected (unless it is one); then always when no other batch of the job is in
    /// progress; otherwise not while it is held for the enqueued-token limit, nor when its
    /// tokens and those of the batches in progress would pass `max_tokens`.
    pub fn may_submit(&self, i: usize, max_tokens: Option<u64>) -> bool {
        let Some(chunk) = self.chunks.get(i) else {
            return false;
        };
        if !chunk.primer && self.primers_pending(chunk.round) {
            return false;
        }
        let running: Vec<&Chunk> = self.running_beside(i).collect();
        if running.is_empty() {
            return true;
        }
        if !chunk.refused.is_empty() {
            return false;
        }
        max_tokens.is_none_or(|max| {
            let enqueued = running
                .iter()
                .map(|c| c.tokens.unwrap_or(0))
                .fold(chunk.tokens.unwrap_or(0), u64::saturating_add);
            enqueued <= max
        })
    }

    /// Whether a primer chunk of `round` has not been collected yet.
    pub fn primers_pending(&self, round: u32) -> bool {
        self.chunks
            .iter()
            .any(|c| c.primer && c.round == round && !c.collected)
    }

    /// The job's batches other than chunk `i`'s that are created and have not ended.
    pub fn running_beside(&self, i: usize) -> impl Iterator<Item = &Chunk> {
        self.chunks.iter().enumerate().filter_map(move |(j, c)| {
            let running = j != i
                && !c.collected
                && c.batch_id.is_some()
                && !c.status.as_deref().is_some_and(is_terminal);
            running.then_some(c)
        })
    }

    /// The last submission round (0 when nothing was submitted), review rounds included.
    pub fn last_round(&self) -> u32 {
        let chunks = self.chunks.iter().map(|c| c.round);
        chunks
            .chain(self.reviews.iter().map(|r| r.round))
            .max()
            .unwrap_or(0)
    }

    /// The review rounds about the answers as they are now: those after the last round of
    /// answers (a later round of answers starts the review again).
    pub fn current_reviews(&self) -> Vec<(Round, u64)> {
        let answers = self
            .chunks
            .iter()
            .filter(|c| c.review.is_none())
            .map(|c| c.round)
            .max()
            .unwrap_or(0);
        self.reviews
            .iter()
            .filter(|r| r.round > answers)
            .map(|r| (r.kind, r.requests))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_or_too_large_chunk_waits_for_the_batches_in_progress() {
        let chunk = |id: Option<&str>, tokens: u64| Chunk {
            batch_id: id.map(str::to_string),
            status: id.map(|_| "in_progress".to_string()),
            tokens: Some(tokens),
            ..Chunk::default()
        };
        let mut s = BatchState {
            chunks: vec![chunk(Some("b1"), 60), chunk(None, 30), chunk(None, 50)],
            ..BatchState::default()
        };
        assert!(s.may_submit(1, None));
        assert!(s.may_submit(1, Some(90)));
        assert!(!s.may_submit(2, Some(90)), "60 + 50 > 90");
        s.chunks[1].refused.push("b0".into());
        assert!(!s.may_submit(1, None), "held while b1 runs");
        s.chunks[0].status = Some("completed".into());
        assert!(s.may_submit(1, None), "b1 has ended");
        assert!(s.may_submit(2, Some(40)), "alone, whatever its size");
        assert!(!s.may_submit(7, None));
    }

    #[test]
    fn group_lines_run_while_a_group_goes_on() {
        let mut spans = Vec::new();
        for (id, line) in [("a", 0), ("a", 1), ("b", 2), ("a", 4)] {
            GroupLines::note(&mut spans, id, line);
        }
        let found: Vec<Option<&str>> = (0..6).map(|l| GroupLines::of(&spans, l)).collect();
        assert_eq!(
            found,
            [Some("a"), Some("a"), Some("b"), None, Some("a"), None]
        );
        assert_eq!(spans.len(), 3);
    }

    #[test]
    fn a_round_waits_for_its_primers_to_be_collected() {
        let chunk = |round: u32, primer: bool| Chunk {
            round,
            primer,
            ..Chunk::default()
        };
        let mut s = BatchState {
            chunks: vec![
                chunk(1, true),
                chunk(1, true),
                chunk(1, false),
                chunk(2, false),
            ],
            ..BatchState::default()
        };
        assert!(
            s.may_submit(0, None) && s.may_submit(1, None),
            "primers go first"
        );
        assert!(!s.may_submit(2, None), "its round's primers are not in");
        assert!(
            s.may_submit(3, None),
            "another round's primers do not hold it"
        );
        s.chunks[0].collected = true;
        assert!(!s.may_submit(2, None), "one primer is still out");
        s.chunks[1].collected = true;
        assert!(s.may_submit(2, None));
        // A state written without primers reads as before, and one with them is read by a
        // version that knows nothing of them (the field is only added when true).
        let text = serde_json::to_string(&chunk(1, false)).unwrap();
        assert!(!text.contains("primer"), "{text}");
        let back: Chunk =
            serde_json::from_str(&serde_json::to_string(&chunk(1, true)).unwrap()).unwrap();
        assert!(back.primer);
    }

    #[test]
    fn state_round_trips_and_a_missing_file_is_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.batches.json");
        let mut s = BatchState::load(&path, "job").unwrap();
        assert!(s.chunks.is_empty());
        assert_eq!(s.id.len(), 16);
        s.chunks.push(Chunk {
            key: "k".into(),
            round: 1,
            file_id: Some("file-1".into()),
            create_started: true,
            ..Chunk::default()
        });
        s.reviews.push(ReviewStep {
            round: 2,
            kind: Round::Judge,
            requests: 0,
        });
        s.chunks.push(Chunk {
            key: "k3".into(),
            round: 3,
            review: Some(Round::Regenerate),
            reservation: Some(Held {
                id: 7,
                worst_pico: Some(9),
                written: true,
            }),
            ..Chunk::default()
        });
        s.reviews.push(ReviewStep {
            round: 3,
            kind: Round::Regenerate,
            requests: 1,
        });
        s.save(&path).unwrap();
        let back = BatchState::load(&path, "other").unwrap();
        assert_eq!(back, s);
        assert_eq!(back.in_flight().count(), 2);
        assert_eq!(back.last_round(), 3);
        assert_eq!(
            back.current_reviews(),
            [(Round::Judge, 0), (Round::Regenerate, 1)]
        );
        // A later round of answers starts the review again.
        s.chunks.push(Chunk {
            round: 4,
            ..Chunk::default()
        });
        assert!(s.current_reviews().is_empty());
        assert_eq!(s.last_round(), 4);
        std::fs::write(&path, "{oops").unwrap();
        let err = BatchState::load(&path, "job").unwrap_err().to_string();
        assert!(err.contains("x.batches.json"), "{err}");
    }
}
