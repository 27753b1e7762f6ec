//! The files a job writes must not be the files it reads, nor folders: checked before
//! anything is sent, so a typo in `--output` can neither replace the input nor be found
//! only after every row is paid.

use std::path::{Path, PathBuf};

use crate::config::Job;

/// A written path that would destroy a read one, or cannot be a file.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(
        "output.path: {written} ({what}) is the same file as {read} ({read_what}); writing it \
         would replace that file, so choose another output path (--output)"
    )]
    Same {
        what: &'static str,
        written: String,
        read_what: &'static str,
        read: String,
    },
    #[error("output.path: {path} ({what}) is a folder; give a file path (--output)")]
    Folder { what: &'static str, path: String },
}

/// Checks the output, journal, summary, batch state and lock file against the input, every
/// template, the schema file and the job file, and refuses any that is an existing folder.
pub fn check(job: &Job) -> Result<(), PathError> {
    let written: [(&'static str, PathBuf); 5] = [
        ("the output", job.output.path.clone()),
        ("the journal", job.journal_path()),
        ("the summary", job.summary_path()),
        ("the batch state", job.batch_state_path()),
        ("the lock file", job.lock_path()),
    ];
    let mut read: Vec<(&'static str, &Path)> = vec![
        ("the input", job.input.path.as_path()),
        ("the job file", job.file.as_path()),
    ];
    let p = &job.prompt;
    read.extend(p.template.as_deref().map(|t| ("a template", t)));
    read.extend(p.system_template.as_deref().map(|t| ("a template", t)));
    read.extend(
        p.messages
            .iter()
            .filter_map(|m| m.template.as_deref().map(|t| ("a template", t))),
    );
    read.extend(
        job.model
            .schema_file
            .as_deref()
            .map(|s| ("the schema file", s)),
    );
    let read: Vec<_> = read.into_iter().map(|(w, p)| (w, p, normal(p))).collect();
    for (what, path) in &written {
        if path.is_dir() {
            return Err(PathError::Folder {
                what,
                path: path.display().to_string(),
            });
        }
        let n = normal(path);
        if let Some((read_what, r, _)) = read.iter().find(|(_, _, rn)| *rn == n) {
            return Err(PathError::Same {
                what,
                written: path.display().to_string(),
                read_what,
                read: r.display().to_string(),
            });
        }
    }
    Ok(())
}

/// The path with symlinks and `..` resolved as far as it exists: the file itself when it
/// exists, else its folder joined with its name, else the absolute path as written.
fn normal(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map(|d| d.join(name))
            .unwrap_or_else(|_| abs.clone()),
        _ => abs,
    }
}

#[cfg(test)]
mod tests {
    use super::normal;

    #[test]
    fn the_same_file_by_another_spelling_is_the_same() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("rows.csv"), "x").unwrap();
        assert_eq!(
            normal(&dir.path().join("a/../rows.csv")),
            normal(&dir.path().join("rows.csv"))
        );
        // Not there yet: compared by its folder and name.
        assert_eq!(
            normal(&dir.path().join("a/../new.csv")),
            normal(&dir.path().join("new.csv"))
        );
        assert_ne!(
            normal(&dir.path().join("a/new.csv")),
            normal(&dir.path().join("new.csv"))
        );
    }
}
