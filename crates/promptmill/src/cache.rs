//! The opt-in response cache: successful responses stored by request hash, so that re-running
//! a job, or another job that sends identical requests, pays nothing for what is cached.
//!
//! One small JSON file per response at `DIR/ab/<hash>.json` (the first two hex digits fan the
//! files out), written to a temporary file and renamed, so a reader never sees half an entry.
//! A corrupt or foreign entry is ignored (the row is simply sent). Errors are never stored.
//! The hash covers provider, URL and body, never the API key, and entries hold only what the
//! API answered.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::Choice;
use crate::types::Usage;

/// Errors opening the cache folder.
#[derive(Debug, thiserror::Error)]
#[error("cache folder {path}: {source} (check cache.dir / --cache)")]
pub struct CacheError {
    path: PathBuf,
    source: std::io::Error,
}

/// A stored response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The request hash it answers (checked on reading, so a misplaced file is not used).
    pub hash: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Structured-output fields, when the job had a schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A response cache folder.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Opens (creating if needed) the cache folder `dir`.
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        std::fs::create_dir_all(dir).map_err(|source| CacheError {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    /// Where the entry for `hash` lives; None for a hash that is not plain hex (never ours).
    fn path(&self, hash: &str) -> Option<PathBuf> {
        if hash.len() < 8 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.dir.join(&hash[..2]).join(format!("{hash}.json")))
    }

    /// The stored response for `hash`; None when there is none or it cannot be read.
    pub fn get(&self, hash: &str) -> Option<Entry> {
        let path = self.path(hash)?;
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<Entry>(&bytes) {
            Ok(e) if e.hash == hash && !e.choices.is_empty() => Some(e),
            _ => {
                tracing::warn!(
                    "{}: unreadable cache entry ignored; the request is sent",
                    path.display()
                );
                None
            }
        }
    }

    /// Stores a successful response for `hash`, atomically (temp file + rename).
    pub fn put(&self, entry: &Entry) -> std::io::Result<()> {
        let Some(path) = self.path(&entry.hash) else {
            return Ok(());
        };
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".entry-")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        serde_json::to_writer(&mut tmp, entry)?;
        tmp.flush()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hash: &str) -> Entry {
        Entry {
            hash: hash.into(),
            choices: vec![Choice {
                text: "hello".into(),
                finish_reason: Some("stop".into()),
            }],
            usage: Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 2,
                ..Usage::default()
            }),
            fields: None,
        }
    }

    #[test]
    fn entries_round_trip_under_a_fan_out_folder() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(&dir.path().join("cache")).unwrap();
        let h = "ab0123456789abcdef0123456789abcd";
        assert_eq!(c.get(h), None);
        c.put(&entry(h)).unwrap();
        assert_eq!(c.get(h), Some(entry(h)));
        let file = dir.path().join("cache/ab").join(format!("{h}.json"));
        assert!(file.is_file());
        // No temporary files are left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("cache/ab"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn corrupt_misplaced_and_odd_entries_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let h = "cd0123456789abcdef0123456789abcd";
        std::fs::create_dir_all(dir.path().join("cd")).unwrap();
        let file = dir.path().join("cd").join(format!("{h}.json"));
        std::fs::write(&file, b"{\"hash\":\"cd01").unwrap();
        assert_eq!(c.get(h), None, "truncated");
        let other = entry("cd00000000000000000000000000000f");
        std::fs::write(&file, serde_json::to_vec(&other).unwrap()).unwrap();
        assert_eq!(c.get(h), None, "an entry for another hash");
        assert_eq!(c.get("../../etc/passwd"), None);
        c.put(&entry("../x")).unwrap();
        assert!(!dir.path().join("x.json").exists());
        // A good entry overwrites a bad one.
        c.put(&entry(h)).unwrap();
        assert_eq!(c.get(h), Some(entry(h)));
    }
}
