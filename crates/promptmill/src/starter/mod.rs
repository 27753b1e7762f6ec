//! The starter job `promptmill init` writes: a commented job file, a template and a sample
//! input that run with `--mock` at once. Existing files are never overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The starter files: (name, contents). The job file comes first.
const FILES: &[(&str, &str)] = &[
    ("job.toml", include_str!("job.toml")),
    ("prompt.j2", include_str!("prompt.j2")),
    ("products.csv", include_str!("products.csv")),
];

/// Errors writing the starter files.
#[derive(Debug, thiserror::Error)]
pub enum StarterError {
    #[error(
        "{0}: already exists; init never overwrites files (choose an empty folder, or move the \
         file away)"
    )]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What [`write`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The job file.
    pub job: PathBuf,
    /// Every file written, the job file first.
    pub files: Vec<PathBuf>,
}

/// Writes the starter files into `dir` (created if missing). Refuses before writing anything
/// when one of them exists; a file that appears meanwhile is refused too (created with
/// `create_new`), and the files written before it stay.
pub fn write(dir: &Path) -> Result<Written, StarterError> {
    let paths: Vec<PathBuf> = FILES.iter().map(|(name, _)| dir.join(name)).collect();
    if let Some(p) = paths.iter().find(|p| p.exists() || p.is_symlink()) {
        return Err(StarterError::Exists(p.clone()));
    }
    std::fs::create_dir_all(dir).map_err(|source| StarterError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for (path, (_, text)) in paths.iter().zip(FILES) {
        let io = |source| StarterError::Io {
            path: path.clone(),
            source,
        };
        let mut f = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StarterError::Exists(path.clone()))
            }
            Err(e) => return Err(io(e)),
        };
        f.write_all(text.as_bytes()).map_err(io)?;
    }
    Ok(Written {
        job: paths[0].clone(),
        files: paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Job, Overrides};

    #[test]
    fn the_starter_job_loads_and_names_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let w = write(dir.path()).unwrap();
        let job = Job::load(&w.job, &Overrides::default()).unwrap();
        assert_eq!(job.input.path, dir.path().join("products.csv"));
        assert_eq!(job.prompt.template, Some(dir.path().join("prompt.j2")));
    }
}
