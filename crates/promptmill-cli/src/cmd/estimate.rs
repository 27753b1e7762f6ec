//! `promptmill estimate JOB`: what a job will cost and how long it will take, before
//! spending a cent. The same as `promptmill run JOB --dry-run`: every row is rendered and
//! counted, nothing is sent, and no API key is needed.

use clap::Args;

use super::args::JobArgs;
use super::{signals, start_err};
use promptmill::drive::{dry_run, JobCtx};

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
    /// Estimate only shard K of N of the rows (as `run --shard K/N` sends them).
    #[arg(long, value_name = "K/N", value_parser = promptmill::shard::Shard::parse)]
    pub shard: Option<promptmill::shard::Shard>,
}

/// Runs `promptmill estimate`.
pub async fn run(args: EstimateArgs) -> anyhow::Result<u8> {
    let interrupt = signals::install().map_err(start_err)?;
    let ctx = args
        .job
        .load()
        .and_then(|job| super::args::sharded(job, args.shard, false))
        .and_then(|job| JobCtx::new(job, args.job.prices.as_deref()))
        .map_err(start_err)?;
    let opts = dry_run::DryRunOptions {
        show: args.show,
        json: args.json,
        retry_failed: false,
    };
    dry_run::run(&ctx, opts, &interrupt).await
}
