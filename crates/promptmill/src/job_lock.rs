//! One run per job at a time, and output paths that cannot destroy what a job reads.
//!
//! Every command that writes a job's journal or batch state holds an exclusive OS lock on
//! `<output stem>.lock` beside the output for as long as it runs. The kernel drops the lock
//! when the process ends however it ends (even SIGKILL), so a lock is never stale and
//! nobody cleans one by hand; the file itself stays, and only says who held it last.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Job;

/// Why the job could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the lock.
    #[error(
        "{path}: another promptmill run of this job is in progress ({holder}); wait for it to \
         end (or stop it) and run again"
    )]
    Held { path: PathBuf, holder: String },
    /// The lock file (and so the output folder) cannot be created or opened.
    #[error("{path}: cannot create the job's lock file beside the output: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The held lock: dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct JobLock {
    /// Held open (and locked) until dropped.
    #[allow(dead_code)]
    file: File,
    path: PathBuf,
    /// A shard's shared hold on the job's own lock (see [`acquire`]).
    #[allow(dead_code)]
    shared: Option<File>,
}

/// Takes the job's lock without waiting, then records this process's PID and start time in
/// the lock file (for the message another run shows).
///
/// A shard (`run --shard K/N`) takes its own lock (`<stem>.shard-K-of-N.lock`), and holds
/// the job's own lock shared: shards run side by side, but not beside an unsharded run or a
/// `merge` of the job, which hold the job's lock alone and would read the shards' journals
/// while they grow. When the job's own lock is taken, the message names the shard holding it.
pub fn acquire(job: &Job) -> Result<JobLock, LockError> {
    let journal = job.journal_path();
    if job.shard.is_some() {
        let mut own = acquire_at(&job.lock_path())?;
        if let Some(path) = crate::shard::file_at(&journal, None, ".lock") {
            own.shared = Some(share_at(&path)?);
        }
        return Ok(own);
    }
    match acquire_at(&job.lock_path()) {
        Err(LockError::Held { path, holder }) => {
            Err(held_by_shard(&journal).unwrap_or(LockError::Held { path, holder }))
        }
        other => other,
    }
}

/// A shard of the job whose own journal is `journal` that is running, if any.
fn held_by_shard(journal: &Path) -> Option<LockError> {
    crate::shard::companions(journal)
        .into_iter()
        .find_map(|(s, _)| {
            let path = crate::shard::file_at(journal, Some(s), ".lock")?;
            let mut file = OpenOptions::new().read(true).write(true).open(&path).ok()?;
            match file.try_lock() {
                Err(TryLockError::WouldBlock) => Some(LockError::Held {
                    holder: format!("shard {s}: {}", holder(&mut file)),
                    path,
                }),
                // Free (dropping the file releases it), or not lockable: not a running shard.
                _ => None,
            }
        })
}

/// Holds the lock at `path` shared with other holders, without waiting.
fn share_at(path: &Path) -> Result<File, LockError> {
    let err = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(LockError::Held {
            path: path.to_path_buf(),
            holder: holder(&mut file),
        }),
        Err(TryLockError::Error(e)) => Err(err(e)),
    }
}

fn acquire_at(path: &Path) -> Result<JobLock, LockError> {
    let err = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A lock file removed (by `export`, see [`JobLock::remove`]) between our open and our
    // lock leaves us holding a file nobody else can find: open it again then (bounded).
    let mut attempts = 0;
    let mut file = loop {
        attempts += 1;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false) // the holder's PID must survive a loser's open
            .open(path)
            .map_err(err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder: holder(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => return Err(err(e)),
        }
        if attempts >= 10 || still_there(&file, path) {
            break file;
        }
    };
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let line = format!(
        "pid {} started {} UTC\n",
        std::process::id(),
        crate::time::utc_seconds(secs)
    );
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(line.as_bytes()))
        .and_then(|()| file.flush())
        .map_err(err)?;
    Ok(JobLock {
        file,
        path: path.to_path_buf(),
        shared: None,
    })
}

/// Whether `path` still names the open `file`.
#[cfg(unix)]
fn still_there(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn still_there(_file: &File, path: &Path) -> bool {
    // Elsewhere an open file cannot be removed.
    path.exists()
}

impl JobLock {
    /// Removes the lock file and releases the lock: for a command that leaves nothing of
    /// the job behind (`export` that recorded nothing). A run that opened the old file
    /// meanwhile sees it gone once it locks, and opens a new one.
    pub fn remove(self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// Who holds the lock, as its holder wrote it. The holder writes just after locking, so an
/// empty file is read again a few times (bounded) before saying the PID is not known yet.
fn holder(file: &mut File) -> String {
    for _ in 0..20 {
        let mut text = String::new();
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| Read::take(&mut *file, 200).read_to_string(&mut text));
        let line = text.lines().next().unwrap_or("").trim();
        if read.is_ok() && line.starts_with("pid ") && line.ends_with("UTC") {
            return line.to_string();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    "its PID is not recorded yet".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_fails_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.lock");
        let first = acquire_at(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(&format!("pid {} started ", std::process::id())),
            "{text}"
        );
        match acquire_at(&path) {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder, text.trim());
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = acquire_at(&path).unwrap();
        drop(again);
    }
}
