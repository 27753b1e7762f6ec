//! The ways to run a job, and what they share.
//!
//! Each driver takes the job context ([`JobCtx`]), consumes the row loop
//! ([`crate::pipeline::rows`]) and adds money only through the ledger
//! ([`crate::pipeline::ledger`]):
//! - [`live`]: rows → limiter → client → journal, then the output and summary;
//! - [`batch`]: rows → provider Batch API input files, submit, poll, collect (crash-safe);
//! - [`dry_run`]: rows → the estimate; nothing is sent;
//! - [`preview`]: a live run that sends only a few rows (`--limit`, `--sample`).
//!
//! [`retry`] is the retry policy every request follows: a pure function from a failed
//! attempt to the wait before the next one (or giving up), with seeded jitter.
//!
//! A driver returns an exit code ([`exit`]); a failure before anything was sent is a
//! [`CannotStart`] error (exit 2).

pub mod batch;
pub mod deadline;
pub mod dry_run;
mod job;
pub mod live;
mod pass;
pub mod preview;
mod regenerate;
pub mod retry;

use job::outcome;
pub use job::{
    bad_row_record, cap_names, claim, judge_for, output_rows, output_spec, planner_for,
    price_table, source_options, wanted, JobCtx,
};

use tokio_util::sync::CancellationToken;

/// Exit codes (see README): 0 all rows succeeded, 1 finished with failed rows, 2 could not
/// start, 3 stopped mid-run (resumable), 4 batches still running (run again later).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ROWS_FAILED: u8 = 1;
    pub const CANNOT_START: u8 = 2;
    pub const STOPPED: u8 = 3;
    /// Batch mode: batches are still running; collect them later.
    pub const IN_PROGRESS: u8 = 4;
}

/// A failure before any request was sent: exit code 2.
#[derive(Debug)]
pub struct CannotStart(pub anyhow::Error);

impl std::fmt::Display for CannotStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&error_text(&self.0))
    }
}

/// An error and its causes on one line, `outer: inner: …` as `{:#}` writes them, less any
/// cause whose text the line already ends with (an error that names its source at the end
/// of its own message, as `path: cannot read job file: {source}` does, would say it twice).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.is_empty() && line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

impl std::error::Error for CannotStart {}

/// Wraps an error as [`CannotStart`] (exit 2: nothing was sent).
pub fn start_err(e: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::anyhow!(CannotStart(e.into()))
}

/// A request to stop (Ctrl-C or SIGTERM, installed by the command line); cheap to clone,
/// every phase holds one and honours it its own way: the live run stops sending, gives
/// requests in flight a few seconds and writes the output and summary; batch waiting
/// stops at once.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    first: CancellationToken,
}

impl Interrupt {
    /// Asks every holder to stop.
    pub fn request(&self) {
        self.first.cancel();
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.first.is_cancelled()
    }

    /// Resolves once a stop is requested (at once if it was already).
    pub async fn wait(&self) {
        self.first.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("job.toml: cannot read job file: {source}")]
    struct Read {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_ends_with_is_said_once_and_others_are_kept() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "not found");
        let e = anyhow::Error::new(Read { source: io() });
        assert_eq!(error_text(&e), "job.toml: cannot read job file: not found");
        // A context above it adds its words; a cause the line does not end with stays.
        let e = anyhow::Error::new(io()).context("found nothing");
        assert_eq!(error_text(&e), "found nothing: not found");
        let e = e.context("starting");
        assert_eq!(error_text(&e), "starting: found nothing: not found");
    }
}
