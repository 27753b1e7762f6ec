//! The `promptmill` command line: a thin shell over the commands in `cmd`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
mod cmd;

use cmd::{batch, completions, estimate, exit, export, init, merge, prices, report, run};

/// Turn a spreadsheet into thousands of LLM calls and back into a spreadsheet.
#[derive(Debug, Parser)]
#[command(name = "promptmill", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a job: every row of the input through the model, into the output file.
    Run(Box<run::RunArgs>),
    /// Estimate a job: rows, exact prompt tokens, cost and minimum time; nothing is sent.
    Estimate(Box<estimate::EstimateArgs>),
    /// Batch mode: poll the job's batches, collect finished ones, write the output.
    ///
    /// Once every answer is in, also submits the job's review rounds (the judge's verdicts,
    /// new attempts of rejected rows), each when the one before it is in.
    Collect(Box<batch::CollectArgs>),
    /// Batch mode: each batch's id, status, request counts and times.
    Status(Box<batch::StatusArgs>),
    /// Write the job's requests as a Batch API input file, without submitting.
    Export(Box<export::ExportArgs>),
    /// Read Batch API output/error files into the job's journal and output.
    Import(Box<export::ImportArgs>),
    /// Write the one output of a job run as shards (`run --shard K/N`); nothing is sent.
    Merge(Box<merge::MergeArgs>),
    /// Write a page to review the job's output in a browser (one self-contained HTML file).
    Report(Box<report::ReportArgs>),
    /// Show every price known for a model, or `prices update` to refresh the price data.
    Prices(prices::PricesArgs),
    /// Write a commented starter job, template and sample input into DIR.
    Init(init::InitArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(completions::CompletionsArgs),
    /// Serve the built-in OpenAI-compatible mock API (for trying jobs and for tests).
    #[cfg(feature = "mock")]
    MockServer(promptmill_mock::MockServerArgs),
    /// Answer an OpenAI batch input file offline as `vllm run-batch` does, with mock answers.
    ///
    /// Writes vLLM's output file (one line per request, in input order), which `import`
    /// reads: a stand-in for a self-hosted model (see README, Batch API).
    #[cfg(feature = "mock")]
    MockRunBatch(promptmill_mock::RunBatchArgs),
}

/// Whether log lines on stderr may carry colour codes: only on a terminal, and never when
/// `NO_COLOR` is set to anything but the empty string (no-color.org).
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    if let Command::Completions(args) = cli.command {
        return ExitCode::from(completions::run(args, &mut Cli::command()));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::CANNOT_START);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Estimate(args) => estimate::run(*args).await,
            Command::Collect(args) => batch::collect(*args).await,
            Command::Status(args) => batch::status(*args).await,
            Command::Export(args) => export::export(*args).await,
            Command::Import(args) => export::import(*args).await,
            Command::Merge(args) => merge::run(*args).await,
            Command::Report(args) => report::run(*args).await,
            Command::Init(args) => init::run(args).await,
            Command::Prices(args) => prices::run(args).await,
            // Answered above, before the runtime starts.
            Command::Completions(_) => Ok(exit::OK),
            #[cfg(feature = "mock")]
            Command::MockServer(args) => {
                promptmill_mock::serve_forever(args).await.map(|_| exit::OK)
            }
            #[cfg(feature = "mock")]
            Command::MockRunBatch(args) => promptmill_mock::run_batch(args)
                .await
                .map(|n| {
                    eprintln!("answered {n} requests");
                    exit::OK
                })
                .map_err(cmd::start_err),
        }
    });
    // Whatever still runs (a validation pass a signal stopped waiting for) is abandoned:
    // the command has written everything it owes.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = if e.downcast_ref::<promptmill::drive::CannotStart>().is_some() {
                exit::CANNOT_START
            } else {
                exit::STOPPED
            };
            eprintln!("error: {}", promptmill::drive::error_text(&e));
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
        assert!(!colour(false, Some("1".into())));
    }
}
