//! Test helpers shared by the readers' unit tests: an input file in a temp dir, opened as
//! a [`Source`], and error messages without the temp dir so tests compare exact text.

use crate::source::{Source, SourceError, SourceOptions};
use std::path::{Path, PathBuf};

/// Writes `content` to `name` in a fresh temp dir; keeps the dir alive with the path.
pub(super) fn file(name: &str, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    (dir, path)
}

/// Opens `path` with the format from its extension and `id` as the id column.
pub(super) fn open(path: &Path, id: Option<&str>) -> Result<Source, SourceError> {
    let opts = SourceOptions {
        format: None,
        id_column: id.map(str::to_owned),
        ..SourceOptions::default()
    };
    Source::open(path, &opts)
}

/// The error text with the temp dir removed, so tests can compare exact messages.
pub(super) fn msg(e: &SourceError, path: &Path) -> String {
    let dir = format!("{}/", path.parent().unwrap().display());
    e.to_string().replace(&dir, "")
}

/// The error of opening `content` written as `name`, and its message without the temp dir.
pub(super) fn open_err(name: &str, content: &[u8], id: Option<&str>) -> (SourceError, String) {
    let (_dir, path) = file(name, content);
    let e = open(&path, id).err().unwrap();
    let m = msg(&e, &path);
    (e, m)
}
