//! `promptmill estimate JOB`: what a job will cost and how long it will take, before
//! spending a cent. The same as `promptmill run JOB --dry-run`: every row is rendered and
//! counted, nothing is sent, and no API key is needed.

use clap::Args;

use super::args::JobArgs;
use super::run::{self, RunArgs};

/// `promptmill estimate JOB`.
#[derive(Debug, Args)]
pub struct EstimateArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Also print the first N rendered prompts.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub show: usize,
    /// Print the estimate as JSON on stdout (the table still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Runs `promptmill estimate`.
pub async fn run(args: EstimateArgs) -> anyhow::Result<u8> {
    run::run(RunArgs {
        job: args.job,
        mock: false,
        mock_latency_ms: 0,
        mock_fail_rate: 0.0,
        mock_rpm: None,
        mock_tpm: None,
        dry_run: true,
        retry_failed: false,
        json: args.json,
        show: args.show,
        quiet: true,
        batch: super::batch::BatchFlags::default(),
    })
    .await
}
