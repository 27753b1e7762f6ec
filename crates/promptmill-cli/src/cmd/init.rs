//! `promptmill init [DIR]`: a starter job that runs with `--mock` at once (see `starter`).

use std::path::PathBuf;

use clap::Args;

use super::exit;
use super::start_err;
use promptmill::starter;

/// `promptmill init [DIR]`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The folder to write the job, template and sample input into (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// Runs `promptmill init`: writes the starter files, never over existing ones.
pub async fn run(args: InitArgs) -> anyhow::Result<u8> {
    let written = starter::write(&args.dir).map_err(start_err)?;
    for p in &written.files {
        eprintln!("wrote {}", p.display());
    }
    let job = written.job.display();
    eprintln!(
        "next:\n  promptmill run {job} --mock    # offline, no key, no cost\n  \
         promptmill report {job}         # the results as a page to review\n  \
         promptmill run {job}            # for real: set OPENAI_API_KEY first"
    );
    Ok(exit::OK)
}
