//! A temp copy of the parts of the repository that the README's commands and the shipped
//! examples read (`examples/`, `jobs/`, `templates/`), so a test can run them as a
//! user in a checkout would without writing into the checkout.
#![allow(dead_code)]

use std::fs;
use std::path::Path;

/// The folders copied, relative to the crate root.
pub const COPIED: [&str; 3] = ["examples", "jobs", "templates"];

/// A fresh temp directory holding a copy of [`COPIED`], without any `out/` folder a local run
/// of an example may have left in the checkout (the test must start from what git holds).
pub fn repo_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    for name in COPIED {
        copy_tree(&root.join(name), &dir.path().join(name));
    }
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let entries = fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.expect("directory entry");
        let name = entry.file_name();
        let kind = entry.file_type().expect("file type");
        let (src, dst) = (entry.path(), to.join(&name));
        if kind.is_dir() {
            if name != "out" {
                copy_tree(&src, &dst);
            }
        } else if kind.is_file() {
            fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        }
    }
}
