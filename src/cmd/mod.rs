//! One module per subcommand, each wiring the pipeline stages for its use.

pub mod args;
pub mod batch;
pub mod completions;
pub mod estimate;
pub mod init;
pub mod report;
pub mod run;
pub mod signals;

/// Writes machine output (`--json`) to stdout. A reader that went away (`| head`) is not
/// an error: the output files are written already, so the command ends as it would have,
/// quietly, instead of panicking as `println!` does on a closed pipe.
pub fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

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
