//! The batch commands beside `run --mode batch`: `collect` and `status` (`export` and
//! `import` are in `export`). Each parses its flags, builds the job context and calls the
//! batch driver (`promptmill::drive::batch`).

use std::time::Instant;

use clap::Args;

use super::args::JobArgs;
use super::mock::{self, MockFlags};
use super::{signals, start_err};
use promptmill::drive::batch::{self, Polling};
use promptmill::drive::JobCtx;

/// Batch-mode flags of `run` and `collect`.
#[derive(Debug, Clone, Args)]
pub struct BatchFlags {
    /// Batch mode: requests per batch input file; overrides the job's batch.max_requests
    /// (default 50,000, OpenAI's limit).
    #[arg(long, value_name = "N", value_parser = promptmill::bounds::batch_max_requests)]
    pub batch_max_requests: Option<u64>,
    /// Batch mode: keep polling until every batch has finished, then write the output.
    #[arg(long)]
    pub wait: bool,
    /// Batch mode: seconds between polls with --wait (0 to 86400).
    #[arg(long, default_value_t = 30.0, value_name = "SECS", value_parser = promptmill::bounds::poll_secs)]
    pub poll_secs: f64,
}

impl BatchFlags {
    /// The batch driver's settings from these flags.
    pub fn polling(&self) -> Polling {
        Polling {
            max_requests: self.batch_max_requests,
            wait: self.wait,
            poll_secs: self.poll_secs,
        }
    }
}

/// `promptmill collect JOB`: poll the job's batches, collect finished ones and submit the next
/// review round (judge, regeneration); never submits the rows' own requests.
#[derive(Debug, Args)]
pub struct CollectArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub batch: BatchFlags,
    /// Print the summary (or, while batches run, the batch states) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Talk to the built-in mock API (started on 127.0.0.1 for this command) instead of the
    /// provider: no key, no cost.
    #[arg(long)]
    pub mock: bool,
}

/// `promptmill status JOB`: each batch's id, status, request counts and times.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Show the state file as recorded, without asking the API.
    #[arg(long)]
    pub no_refresh: bool,
    /// Print the batches as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Ask the built-in mock API (started on 127.0.0.1 for this command) instead of the
    /// provider: no key needed.
    #[arg(long)]
    pub mock: bool,
}

/// The job context of a batch command.
pub(crate) fn context(args: &JobArgs) -> anyhow::Result<JobCtx> {
    args.load()
        .and_then(|job| JobCtx::new(job, args.prices.as_deref()))
        .map_err(start_err)
}

/// Runs `promptmill collect`.
pub async fn collect(args: CollectArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    // First: Ctrl-C while waiting stops waiting (exit 4) instead of killing the process.
    let interrupt = signals::install().map_err(start_err)?;
    let mut ctx = context(&args.job)?;
    let mock = mock::attach(&mut ctx, args.mock, MockFlags::default()).await?;
    let outcome = batch::collect(&ctx, args.batch.polling(), args.json, &interrupt, started).await;
    mock::detach(mock).await;
    outcome
}

/// Runs `promptmill status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<u8> {
    let mut ctx = context(&args.job)?;
    let mock = mock::attach(&mut ctx, args.mock, MockFlags::default()).await?;
    let outcome = batch::status(&ctx, args.no_refresh, args.json).await;
    mock::detach(mock).await;
    outcome
}
