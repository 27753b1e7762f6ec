//! `run --input -` and `run --output -`: rows from stdin, the output to stdout.
//!
//! Every stage reads the input more than once (the output's columns, then the validation
//! pass; after an interrupt, the output again), and a pipe can be read only once. So stdin is
//! first copied, as it comes, into a temporary file (in the `--state` folder, else beside the
//! journal), which the run then reads like any input file: memory stays flat, and the file is
//! removed when the command ends. Errors name it `<stdin>`. An input path that is a pipe
//! (`/dev/stdin`, a named pipe, the shell's `<(command)`) is copied the same way.
//!
//! With `--output -` the output, journal, summary and lock live in the `--state` folder (under
//! the file name of the job's `output.path`, whose extension also picks CSV or JSONL), and
//! once the run has written the output there it is copied to stdout. Human messages are on
//! stderr as always, so stdout holds only the data.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use clap::Args;

use super::args::JobArgs;
use super::start_err;
use promptmill::config::{Job, Mode};
use promptmill::drive::CannotStart;
use promptmill::source::Format;

/// The name stdin goes by in messages.
const STDIN: &str = "<stdin>";

/// The flags of `run` for pipes.
#[derive(Debug, Clone, Args, Default)]
pub struct PipeFlags {
    /// Input format: csv, tsv or jsonl (overrides input.format); required with `--input -`.
    #[arg(long, value_name = "FORMAT", value_parser = clap::value_parser!(Format))]
    pub format: Option<Format>,
    /// Folder for the journal, summary and lock when the output goes to stdout (`--output -`);
    /// required then.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
}

/// What a run does with stdin and stdout.
#[derive(Debug, Default)]
pub struct Pipes {
    stdin: bool,
    state: Option<PathBuf>,
    /// The copy of stdin (or of a pipe given as the input) the run reads, and the name
    /// errors give it.
    spooled: Option<(tempfile::TempPath, String)>,
    /// The output file in the state folder, copied to stdout at the end.
    to_stdout: Option<PathBuf>,
}

fn is_dash(p: Option<&Path>) -> bool {
    p.is_some_and(|p| p.as_os_str() == "-")
}

impl Pipes {
    /// Checks the pipe flags before the job is loaded (exit 2 naming the flag that is
    /// missing or does not fit), and takes `-` out of `job`'s overrides.
    pub fn check(job: &mut JobArgs, flags: &PipeFlags, json: bool) -> anyhow::Result<Pipes> {
        let (stdin, stdout) = (
            is_dash(job.input.as_deref()),
            is_dash(job.output.as_deref()),
        );
        if stdin && flags.format.is_none() {
            return Err(start_err(anyhow!(
                "--input - reads rows from stdin, whose format no file name tells: give --format \
                 csv, tsv or jsonl"
            )));
        }
        if stdout && flags.state.is_none() {
            return Err(start_err(anyhow!(
                "--output - writes the output to stdout, so the journal and summary need a \
                 folder: give --state DIR"
            )));
        }
        if !stdout && flags.state.is_some() {
            return Err(start_err(anyhow!(
                "--state DIR is where the journal lives when the output goes to stdout \
                 (--output -); otherwise it lives beside the output file: drop --state"
            )));
        }
        if stdout && json {
            return Err(start_err(anyhow!(
                "--json prints the summary on stdout, which --output - keeps for the data: drop \
                 --json and read the summary JSON from the --state folder"
            )));
        }
        if let Some(format) = flags.format {
            job.set.push(format!("input.format=\"{format}\""));
        }
        if stdin {
            // A stand-in until stdin is copied (the job file may have no input.path).
            job.input = Some(PathBuf::from(STDIN));
        }
        if stdout {
            job.output = None;
        }
        Ok(Pipes {
            stdin,
            state: flags.state.clone().filter(|_| stdout),
            spooled: None,
            to_stdout: None,
        })
    }

    /// Points the loaded job at the pipes: the output into the state folder, the input at a
    /// copy of stdin (read here, to its end).
    pub fn attach(&mut self, job: &mut Job) -> anyhow::Result<()> {
        if (self.stdin || self.state.is_some()) && job.mode == Mode::Batch {
            return Err(start_err(anyhow!(
                "--input - and --output - work in live mode only (batch results are collected \
                 later, when stdin is gone): drop --mode batch"
            )));
        }
        if let Some(state) = &self.state {
            std::fs::create_dir_all(state)
                .with_context(|| format!("--state {}: cannot create the folder", state.display()))
                .map_err(start_err)?;
            let name = job
                .output
                .path
                .file_name()
                .map_or_else(|| "output.csv".into(), |n| n.to_owned());
            let dir = std::path::absolute(state).unwrap_or_else(|_| state.clone());
            job.output.path = dir.join(name);
            self.to_stdout = Some(job.output.path.clone());
        }
        // A named pipe, `/dev/stdin` or `<(command)` can be read only once, like stdin.
        let pipe = !self.stdin
            && std::fs::metadata(&job.input.path).is_ok_and(|m| !m.is_file() && !m.is_dir());
        if self.stdin || pipe {
            let journal = job.journal_path();
            let dir = match journal.parent() {
                Some(d) if d.is_dir() => d.to_path_buf(),
                _ => std::env::temp_dir(),
            };
            let (spooled, name) = if self.stdin {
                if io::IsTerminal::is_terminal(&io::stdin()) {
                    eprintln!("reading rows from stdin (end with Ctrl-D)");
                }
                (spool(&dir, &mut io::stdin().lock()), STDIN.to_string())
            } else {
                let path = &job.input.path;
                let mut file = std::fs::File::open(path)
                    .with_context(|| format!("{}: cannot open", path.display()))
                    .map_err(start_err)?;
                (spool(&dir, &mut file), path.display().to_string())
            };
            let spooled = spooled
                .with_context(|| format!("{name}: cannot read"))
                .map_err(start_err)?;
            job.input.path = spooled.to_path_buf();
            self.spooled = Some((spooled, name));
        }
        Ok(())
    }

    /// Before the run writes anything: an output left in the state folder by an earlier run
    /// is removed, so only what this run writes reaches stdout.
    pub fn before_run(&self) -> anyhow::Result<()> {
        if let Some(path) = &self.to_stdout {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(start_err(anyhow!("{}: cannot remove: {e}", path.display())));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// After the run: the output it wrote goes to stdout (with `wrote`), and errors name
    /// stdin `<stdin>` instead of its temporary copy.
    pub fn end(&self, result: anyhow::Result<u8>, wrote: bool) -> anyhow::Result<u8> {
        let code = result.map_err(|e| self.rename(e))?;
        if let Some(path) = self.to_stdout.as_ref().filter(|_| wrote) {
            match std::fs::File::open(path) {
                Ok(mut file) => copy_to_stdout(&mut file)
                    .with_context(|| format!("{}: cannot copy to stdout", path.display()))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow!("{}: cannot read: {e}", path.display())),
            }
        }
        Ok(code)
    }

    /// `e` with stdin's temporary copy named `<stdin>`.
    fn rename(&self, e: anyhow::Error) -> anyhow::Error {
        let Some((spooled, name)) = &self.spooled else {
            return e;
        };
        let text = promptmill::drive::error_text(&e).replace(&spooled.display().to_string(), name);
        if e.downcast_ref::<CannotStart>().is_some() {
            start_err(anyhow!(text))
        } else {
            anyhow!(text)
        }
    }
}

/// Copies `input` (stdin or a pipe) to a new temporary file in `dir`, removed when the
/// returned path drops.
fn spool(dir: &Path, input: &mut impl io::Read) -> anyhow::Result<tempfile::TempPath> {
    let mut file = tempfile::Builder::new()
        .prefix(".promptmill-stdin-")
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a file to hold the input", dir.display()))?;
    // Reading a pipe blocks; the runtime has other threads for the signal handlers.
    tokio::task::block_in_place(|| {
        let mut w = io::BufWriter::new(file.as_file_mut());
        io::copy(input, &mut w)?;
        w.flush()
    })?;
    Ok(file.into_temp_path())
}

/// Copies the output to stdout. A reader that went away (`| head`) is not an error: the
/// output is written in the state folder already.
fn copy_to_stdout(file: &mut std::fs::File) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match io::copy(file, &mut out).and_then(|_| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map(|_| ()),
    }
}
