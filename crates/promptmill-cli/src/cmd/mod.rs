//! One module per subcommand: parse the flags, build the job, call the library.

pub mod args;
pub mod batch;
pub mod completions;
pub mod estimate;
pub mod init;
pub mod mock;
pub mod report;
pub mod run;
pub mod signals;

pub use promptmill::stdout::print as print_stdout;

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
