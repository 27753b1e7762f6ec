//! `promptmill export` (a job's requests as a Batch API input file, not submitted) and
//! `promptmill import` (Batch API result files into the job's journal and output).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::anyhow;
use clap::Args;

use super::args::JobArgs;
use super::batch::context;
use super::start_err;
use promptmill::config::ProviderKind;
use promptmill::drive::{batch, Interrupt};

/// File formats `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// OpenAI Batch API input JSONL (`custom_id`, `method`, `url`, `body` per line).
    OpenaiBatch,
    /// Anthropic Message Batches requests, one per line (`custom_id`, `params`): the
    /// elements of the create call's `requests`.
    AnthropicBatch,
}

/// `promptmill export JOB --format openai-batch`: write the batch input without submitting.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// What to write.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Where (default: `<output stem>.batch-input.jsonl` beside the output).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Include rows that failed in an earlier run.
    #[arg(long)]
    pub retry_failed: bool,
}

/// `promptmill import JOB FILE...`: read Batch API output/error files into the job's output.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Batch output or error files (JSONL).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `promptmill export`.
pub async fn export(args: ExportArgs) -> anyhow::Result<u8> {
    let ctx = context(&args.job)?;
    let (format, provider, name) = match args.format {
        ExportFormat::OpenaiBatch => ("openai-batch", ProviderKind::Openai, "openai"),
        ExportFormat::AnthropicBatch => ("anthropic-batch", ProviderKind::Anthropic, "anthropic"),
    };
    if ctx.job.api.provider != provider {
        return Err(start_err(anyhow!(
            "--format {format} is for jobs with api.provider = \"{name}\""
        )));
    }
    // Writing a file is quick: Ctrl-C keeps its default (the output is written whole or not
    // at all by the driver's own steps).
    batch::export(&ctx, args.out, args.retry_failed, &Interrupt::default()).await
}

/// Runs `promptmill import`.
pub async fn import(args: ImportArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let ctx = context(&args.job)?;
    batch::import(&ctx, &args.files, args.json, started).await
}
