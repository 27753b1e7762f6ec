//! `promptmill run`: parse the flags, load the job, claim it, start the mock if asked, and
//! hand the job to one driver: live, batch, or (with `--dry-run`) the dry run.

use std::time::Instant;

use clap::Args;

use super::args::JobArgs;
use super::mock::{self, MockArgs};
use super::pipes::{PipeFlags, Pipes};
use super::{signals, start_err};
use promptmill::config::Mode;
use promptmill::drive::{
    self, batch, dry_run::DryRunOptions, live::LiveOptions, preview::Preview, JobCtx,
};
use promptmill::shard::Shard;

/// `promptmill run JOB`: run a job (or with `--dry-run`, only estimate it).
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub mock: MockArgs,
    /// Only estimate: render and count every row, send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Send rows that failed in an earlier run again (by default they are kept as failed).
    #[arg(long)]
    pub retry_failed: bool,
    /// Send nothing: write the output and summary again from the journal, checking every
    /// answer against the job's `[[checks]]` as they are now. No key needed.
    #[arg(long, conflicts_with = "dry_run")]
    pub recheck: bool,
    /// Print the summary (with --dry-run: the estimate) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// With --dry-run: also print the first N rendered prompts.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub show: usize,
    /// Batch mode (`--mode batch`) settings.
    #[command(flatten)]
    pub batch: super::batch::BatchFlags,
    /// No progress bar or periodic progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Preview: send only the first N rows a run would send, print them with their answers
    /// and project the full cost; the other rows stay pending for the next run.
    #[arg(long, value_name = "N", value_parser = promptmill::bounds::preview_limit,
          conflicts_with_all = ["sample", "dry_run", "recheck"])]
    pub limit: Option<u64>,
    /// Preview: send N rows picked at random (reproducibly with --seed) from those a run
    /// would send; otherwise as --limit. 1 to 100000.
    #[arg(long, value_name = "N", value_parser = promptmill::bounds::preview_sample,
          conflicts_with_all = ["dry_run", "recheck"])]
    pub sample: Option<u64>,
    /// The seed of --sample: the same seed picks the same rows from the same input (default:
    /// a new seed, printed).
    #[arg(long, value_name = "S", requires = "sample")]
    pub seed: Option<u64>,
    /// `--input -` / `--output -` (stdin, stdout).
    #[command(flatten)]
    pub pipes: PipeFlags,
    /// Send only shard K of N of the rows (1 <= K <= N <= 1024), chosen by a hash of each
    /// row's identity, with the shard's own journal, summary, lock and output
    /// (`<output stem>.shard-K-of-N.*`); `promptmill merge JOB` writes the one output.
    #[arg(long, value_name = "K/N", value_parser = promptmill::shard::Shard::parse)]
    pub shard: Option<Shard>,
}

impl RunArgs {
    /// The preview asked for, if any (a sample without --seed draws one and says which).
    fn preview(&self) -> Option<Preview> {
        if let Some(n) = self.limit {
            return Some(Preview::Limit(n));
        }
        let rows = self.sample?;
        let seed = self.seed.unwrap_or_else(|| {
            let seed = rand::random::<u32>().into();
            eprintln!("sampling {rows} rows with --seed {seed} (give it to pick the same rows)");
            seed
        });
        Some(Preview::Sample { rows, seed })
    }
}

/// Runs `promptmill run`.
pub async fn run(mut args: RunArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    // Before anything else: a signal from here on is a request to stop, never a kill.
    let interrupt = signals::install().map_err(start_err)?;
    if args.shard.is_some()
        && args
            .job
            .output
            .as_deref()
            .is_some_and(|o| o.as_os_str() == "-")
    {
        return Err(start_err(anyhow::anyhow!(
            "--shard writes the shard's own output beside its journal; --output - does not \
             fit it (run the shards to files, then `promptmill merge JOB`)"
        )));
    }
    let mut pipes = Pipes::check(&mut args.job, &args.pipes, args.json)?;
    let mut ctx = args
        .job
        .load()
        .and_then(|job| super::args::sharded(job, args.shard, true))
        .and_then(|job| JobCtx::new(job, args.job.prices.as_deref()))
        .map_err(start_err)?;
    pipes.attach(&mut ctx.job)?;
    if args.dry_run {
        // The dry run only reads, so it neither takes the job's lock nor waits for it. With
        // `--mock` it decides rows as a mock run would (mock answers are apart); nothing is
        // sent, so no mock is started.
        ctx.mock = args.mock.mock;
        let opts = DryRunOptions {
            show: args.show,
            json: args.json,
            retry_failed: args.retry_failed,
        };
        return pipes.end(drive::dry_run::run(&ctx, opts, &interrupt).await, false);
    }
    // One run of a job at a time, claimed before anything is read or sent.
    let _lock = drive::claim(&ctx.job)?;
    pipes.before_run()?;
    let outcome = if args.recheck {
        // Mock answers are told apart by the rows' request hashes: `--mock` picks them.
        ctx.mock = args.mock.mock;
        drive::live::recheck(&ctx, args.json, &interrupt).await
    } else {
        send(&args, ctx, &interrupt, started).await
    };
    pipes.end(outcome, true)
}

/// Runs the job live or in batch mode (with the mock when asked).
async fn send(
    args: &RunArgs,
    mut ctx: JobCtx,
    interrupt: &drive::Interrupt,
    started: Instant,
) -> anyhow::Result<u8> {
    let preview = args.preview();
    if preview.is_some() && ctx.job.mode == Mode::Batch {
        return Err(start_err(anyhow::anyhow!(
            "--limit and --sample preview a job live; drop --mode batch (or mode = \"batch\") \
             for the preview"
        )));
    }
    let mock = mock::attach(&mut ctx, args.mock.mock, args.mock.flags()).await?;
    // `plan.tier = "auto"`: the planner sets the mode and service_tier (a preview stays live
    // at the job's own tier).
    let planned = match preview {
        None => drive::deadline::plan(&mut ctx, args.retry_failed, interrupt).await,
        Some(_) => Ok(true),
    };
    if !matches!(planned, Ok(true)) {
        mock::detach(mock).await;
        return planned.map(|_| {
            eprintln!("interrupted before sending: nothing was sent");
            drive::exit::STOPPED
        });
    }
    let opts = LiveOptions {
        retry_failed: args.retry_failed,
        json: args.json,
        quiet: args.quiet,
        preview,
    };
    let outcome = match ctx.job.mode {
        Mode::Batch => batch::run(&ctx, args.batch.polling(), opts, interrupt, started).await,
        Mode::Live => drive::live::run(&ctx, opts, interrupt, started).await,
    };
    mock::detach(mock).await;
    outcome
}
