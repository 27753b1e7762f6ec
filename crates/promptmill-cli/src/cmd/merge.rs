//! `promptmill merge JOB`: the one output of a job run as shards (`run --shard K/N`), from
//! every shard's journal and the job's own, each input row once, in input order.

use anyhow::anyhow;
use clap::Args;

use super::args::JobArgs;
use super::{signals, start_err};
use promptmill::drive::{self, JobCtx};
use promptmill::shard::{self, MAX_SHARDS};

/// `promptmill merge JOB`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// How many shards the job was split into (default: found from the shard journals
    /// beside the output; needed when journals of two splits are there).
    #[arg(long, value_name = "N", value_parser = shard_count)]
    pub shards: Option<u32>,
    /// Write the output even when a shard's journal is missing: its rows are `pending`.
    #[arg(long)]
    pub allow_missing: bool,
    /// The shards ran against the built-in mock (`run --mock`): their answers are the mock's.
    #[arg(long)]
    pub mock: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--shards N` (value parser).
fn shard_count(s: &str) -> Result<u32, String> {
    s.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_SHARDS).contains(n))
        .ok_or_else(|| format!("--shards takes a whole number from 1 to {MAX_SHARDS}; got '{s}'"))
}

/// Runs `promptmill merge`.
pub async fn run(args: MergeArgs) -> anyhow::Result<u8> {
    let interrupt = signals::install().map_err(start_err)?;
    let mut ctx = args
        .job
        .load()
        .and_then(|job| JobCtx::new(job, args.job.prices.as_deref()))
        .map_err(start_err)?;
    ctx.mock = args.mock;
    // The job's own lock first: no shard of it may be running while its journals are read.
    let _lock = drive::claim(&ctx.job)?;
    let journal = ctx.job.journal_path();
    let n = match (args.shards, shard::counts(&journal).as_slice()) {
        (Some(n), _) => n,
        (None, [n]) => *n,
        (None, []) => {
            return Err(start_err(anyhow!(
                "no shard journal beside {} (like {}): run the shards first (promptmill run \
                 JOB --shard K/N), or give --shards N",
                ctx.job.output.path.display(),
                shard::journal_at(&journal, shard::Shard::new(1, 2))
                    .unwrap_or_default()
                    .display()
            )))
        }
        (None, more) => {
            let list: Vec<String> = more.iter().map(u32::to_string).collect();
            return Err(start_err(anyhow!(
                "shard journals of {} splits are beside {} (N = {}): say which with --shards N",
                more.len(),
                ctx.job.output.path.display(),
                list.join(", ")
            )));
        }
    };
    let missing = shard::missing(&journal, n);
    if !missing.is_empty() {
        let names: Vec<String> = missing
            .iter()
            .map(|(s, p)| format!("{} (shard {s})", p.display()))
            .collect();
        let names = names.join(", ");
        let flags: Vec<String> = missing
            .iter()
            .map(|(s, _)| format!("--shard {s}"))
            .collect();
        if !args.allow_missing {
            return Err(start_err(anyhow!(
                "missing shard journal: {names}; run `promptmill run JOB` with {}, or merge \
                 with --allow-missing to leave those rows pending",
                flags.join(", ")
            )));
        }
        eprintln!("note: missing shard journal: {names}; its rows stay pending");
    }
    drive::live::merge(&ctx, args.json, &interrupt).await
}
