//! Batch input files: one `{custom_id, method, url, body}` line per row, split at the API's
//! limits (50,000 requests or 200 MB per file).
//!
//! A `custom_id` is `row-<index>-<request hash>`: results come back in any order and are
//! joined to rows by it, and the hash says exactly which request the answer is for.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Most requests one batch input file may hold.
pub const MAX_REQUESTS: u64 = 50_000;
/// Most bytes one batch input file may hold (200 MB).
pub const MAX_BYTES: u64 = 200 * 1000 * 1000;

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
}

/// Writes lines into `<dir>/<prefix>-<n>.jsonl`, starting a new file before one would pass
/// `max_requests` or [`MAX_BYTES`].
pub struct Splitter {
    dir: PathBuf,
    prefix: String,
    max_requests: u64,
    current: Option<(BufWriter<File>, Written)>,
    done: Vec<Written>,
}

impl Splitter {
    /// A splitter writing into `dir` (created if missing).
    pub fn new(dir: &Path, prefix: &str, max_requests: u64) -> std::io::Result<Splitter> {
        std::fs::create_dir_all(dir)?;
        Ok(Splitter {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            max_requests: max_requests.clamp(1, MAX_REQUESTS),
            current: None,
            done: Vec::new(),
        })
    }

    /// Adds one line.
    pub fn push(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64;
        if len > MAX_BYTES {
            return Err(std::io::Error::other(format!(
                "one request is {len} bytes, over the Batch API's {MAX_BYTES}-byte file limit"
            )));
        }
        let full = self
            .current
            .as_ref()
            .is_some_and(|(_, w)| w.requests >= self.max_requests || w.bytes + len > MAX_BYTES);
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
                },
            ));
        }
        if let Some((f, w)) = self.current.as_mut() {
            f.write_all(line)?;
            w.requests += 1;
            w.bytes += len;
        }
        Ok(())
    }

    /// How many files were started so far: the last line pushed is in the last of them.
    pub fn files(&self) -> usize {
        self.done.len() + usize::from(self.current.is_some())
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
    fn files_split_at_the_request_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Splitter::new(dir.path(), "r1", 3).unwrap();
        for i in 0..7 {
            s.push(&line(
                i,
                "h",
                "/v1/chat/completions",
                &json!({"model": "m"}),
            ))
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
    }
}
