//! Batch input files: one `{custom_id, method, url, body}` line per row, split at the API's
//! limits (`[batch]`: by default OpenAI's 50,000 requests or 200 MB per file, and, when an
//! enqueued-token limit is set, at that many tokens).
//!
//! A `custom_id` is `row-<index>-<request hash>`: results come back in any order and are
//! joined to rows by it, and the hash says exactly which request the answer is for.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Where input files are split: the job's `[batch]` limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_requests: u64,
    pub max_bytes: u64,
    /// The enqueued-token limit (prompt + max_tokens of each request), if known.
    pub max_tokens: Option<u64>,
}

impl Limits {
    /// The limits of `batch`, with `--batch-max-requests` (when given) over its
    /// `max_requests`.
    pub fn of(batch: &crate::config::BatchConfig, max_requests: Option<u64>) -> Limits {
        Limits {
            max_requests: max_requests.unwrap_or(batch.max_requests).max(1),
            max_bytes: batch.max_bytes.max(1),
            max_tokens: batch.max_enqueued_tokens,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::of(&crate::config::BatchConfig::default(), None)
    }
}

/// The `custom_id` of a row's request.
pub fn custom_id(row: u64, hash: &str) -> String {
    format!("row-{row}-{hash}")
}

/// Row index and request hash from a `custom_id` written by [`custom_id`].
pub fn parse_custom_id(id: &str) -> Option<(u64, &str)> {
    let rest = id.strip_prefix("row-")?;
    let (row, hash) = rest.split_once('-')?;
    Some((row.parse().ok()?, hash))
}

/// One input line (with its newline).
pub fn line(row: u64, hash: &str, url: &str, body: &Value) -> Vec<u8> {
    let v = json!({"custom_id": custom_id(row, hash), "method": "POST", "url": url, "body": body});
    let mut bytes = v.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

/// A finished input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    pub requests: u64,
    pub bytes: u64,
    /// Its requests' tokens as the enqueued-token limit counts them (prompt + max_tokens).
    pub tokens: u64,
}

/// Writes lines into `<dir>/<prefix>-<n>.jsonl`, starting a new file before one would pass
/// one of its [`Limits`].
pub struct Splitter {
    dir: PathBuf,
    prefix: String,
    limits: Limits,
    current: Option<(BufWriter<File>, Written)>,
    done: Vec<Written>,
}

impl Splitter {
    /// A splitter writing into `dir` (created if missing).
    pub fn new(dir: &Path, prefix: &str, limits: Limits) -> std::io::Result<Splitter> {
        std::fs::create_dir_all(dir)?;
        Ok(Splitter {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            limits,
            current: None,
            done: Vec::new(),
        })
    }

    /// Adds one line, whose request counts `tokens` against the enqueued-token limit.
    pub fn push(&mut self, line: &[u8], tokens: u64) -> std::io::Result<()> {
        let len = line.len() as u64;
        let l = self.limits;
        if len > l.max_bytes {
            return Err(std::io::Error::other(format!(
                "one request is {len} bytes, over the batch file limit of {} bytes \
                 (batch.max_bytes)",
                l.max_bytes
            )));
        }
        if let Some(max) = l.max_tokens.filter(|max| tokens > *max) {
            return Err(std::io::Error::other(format!(
                "one request counts {tokens} tokens (prompt + max_tokens), over the \
                 enqueued-token limit of {max} (batch.max_enqueued_tokens)"
            )));
        }
        let full = self.current.as_ref().is_some_and(|(_, w)| {
            w.requests >= l.max_requests
                || w.bytes + len > l.max_bytes
                || l.max_tokens.is_some_and(|max| w.tokens + tokens > max)
        });
        if full {
            self.close()?;
        }
        if self.current.is_none() {
            let n = self.done.len() + 1;
            let path = self.dir.join(format!("{}-{n}.jsonl", self.prefix));
            let file = BufWriter::new(File::create(&path)?);
            self.current = Some((
                file,
                Written {
                    path,
                    requests: 0,
                    bytes: 0,
                    tokens: 0,
                },
            ));
        }
        if let Some((f, w)) = self.current.as_mut() {
            f.write_all(line)?;
            w.requests += 1;
            w.bytes += len;
            w.tokens = w.tokens.saturating_add(tokens);
        }
        Ok(())
    }

    /// Where the last line pushed went: its file (0 for the first) and its line in it.
    pub fn position(&self) -> Option<(usize, u64)> {
        let (_, w) = self.current.as_ref()?;
        Some((self.done.len(), w.requests.checked_sub(1)?))
    }

    /// How many files were started so far: the last line pushed is in the last of them.
    pub fn files(&self) -> usize {
        self.done.len() + usize::from(self.current.is_some())
    }

    /// Before the `requests` lines of one prefix group: starts a new file when they would
    /// not all fit in the current one's room but fit in a new file, so that a group's rows
    /// share a batch where they can.
    pub fn keep_together(&mut self, requests: u64) -> std::io::Result<()> {
        let max = self.limits.max_requests;
        let split = self
            .current
            .as_ref()
            .is_some_and(|(_, w)| w.requests > 0 && w.requests + requests > max);
        if split && requests <= max {
            self.close()?;
        }
        Ok(())
    }

    fn close(&mut self) -> std::io::Result<()> {
        if let Some((f, w)) = self.current.take() {
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            self.done.push(w);
        }
        Ok(())
    }

    /// Flushes the last file and lists them all.
    pub fn finish(mut self) -> std::io::Result<Vec<Written>> {
        self.close()?;
        Ok(self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ids_round_trip() {
        let id = custom_id(42, "abc123");
        assert_eq!(id, "row-42-abc123");
        assert_eq!(parse_custom_id(&id), Some((42, "abc123")));
        assert_eq!(parse_custom_id("request-1"), None);
        assert_eq!(parse_custom_id("row-x-1"), None);
    }

    #[test]
    fn a_group_that_fits_in_a_file_of_its_own_starts_one() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_requests: 4,
            ..Limits::default()
        };
        let mut s = Splitter::new(dir.path(), "r1", limits).unwrap();
        let l = line(0, "h", "/v1/chat/completions", &json!({"model": "m"}));
        // Groups of 3, 3, then 6 (too large for any file: it fills the current one first).
        for n in [3, 3, 6] {
            s.keep_together(n).unwrap();
            for _ in 0..n {
                s.push(&l, 1).unwrap();
            }
        }
        let counts: Vec<u64> = s.finish().unwrap().iter().map(|w| w.requests).collect();
        assert_eq!(counts, [3, 4, 4, 1]);
    }

    #[test]
    fn files_split_at_the_request_limit() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_requests: 3,
            ..Limits::default()
        };
        let mut s = Splitter::new(dir.path(), "r1", limits).unwrap();
        for i in 0..7 {
            s.push(
                &line(i, "h", "/v1/chat/completions", &json!({"model": "m"})),
                10,
            )
            .unwrap();
        }
        let files = s.finish().unwrap();
        let counts: Vec<u64> = files.iter().map(|w| w.requests).collect();
        assert_eq!(counts, vec![3, 3, 1]);
        let text = std::fs::read_to_string(&files[2].path).unwrap();
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["custom_id"], "row-6-h");
        assert_eq!(v["method"], "POST");
        assert_eq!(files[2].bytes, text.len() as u64);
        assert_eq!(files[0].tokens, 30);
    }

    #[test]
    fn files_split_at_the_byte_and_token_limits() {
        let dir = tempfile::tempdir().unwrap();
        let one = line(0, "h", "/v1/chat/completions", &json!({"model": "m"}));
        let n = one.len() as u64;
        // Room for two lines by bytes, three by tokens: bytes decide.
        let limits = Limits {
            max_requests: 100,
            max_bytes: 2 * n + 1,
            max_tokens: Some(300),
        };
        let mut s = Splitter::new(dir.path(), "b", limits).unwrap();
        for _ in 0..5 {
            s.push(&one, 100).unwrap();
        }
        let counts: Vec<u64> = s.finish().unwrap().iter().map(|w| w.requests).collect();
        assert_eq!(counts, vec![2, 2, 1]);
        // Room for ten lines by bytes, two by tokens: tokens decide.
        let limits = Limits {
            max_requests: 100,
            max_bytes: 10 * n,
            max_tokens: Some(250),
        };
        let mut s = Splitter::new(dir.path(), "t", limits).unwrap();
        for _ in 0..5 {
            s.push(&one, 100).unwrap();
        }
        let files = s.finish().unwrap();
        let counts: Vec<u64> = files.iter().map(|w| w.requests).collect();
        assert_eq!(counts, vec![2, 2, 1]);
        assert_eq!(files[0].tokens, 200);
        // One request over a limit on its own is refused, naming the setting.
        let mut s = Splitter::new(dir.path(), "x", limits).unwrap();
        let e = s.push(&one, 251).unwrap_err().to_string();
        assert!(e.contains("batch.max_enqueued_tokens"), "{e}");
    }
}
