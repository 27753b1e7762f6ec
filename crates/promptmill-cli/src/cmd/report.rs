//! `promptmill report JOB`: the review page of a job's output (see `report`).

use std::path::PathBuf;

use clap::Args;

use super::args::JobArgs;
use super::exit;
use super::start_err;
use promptmill::report;

/// `promptmill report JOB`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Where to write the page (default: beside the output, `<output name>.report.html`).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

/// Runs `promptmill report`: writes the page and prints its path on stdout.
pub async fn run(args: ReportArgs) -> anyhow::Result<u8> {
    let job = args.job.load().map_err(start_err)?;
    let dest = args.html.unwrap_or_else(|| report::default_path(&job));
    let written = report::write(&job, &dest).map_err(start_err)?;
    let note = if written.summary {
        ""
    } else {
        "; no run summary beside the output"
    };
    eprintln!(
        "report: {} rows{note}; open {} in a browser",
        written.rows,
        written.path.display()
    );
    println!("{}", written.path.display());
    Ok(exit::OK)
}
