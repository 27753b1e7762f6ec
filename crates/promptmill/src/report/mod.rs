//! The review page: one self-contained HTML file beside a job's output, for people who read
//! results instead of scrolling a CSV. It holds the output's rows, the run's summary and the
//! job's settings as JSON, and a small script that builds the table, filters, histograms and
//! the cost chart from it. Nothing in the page is fetched: no network, no CDN.
//!
//! Generated text is data, never markup: the rows travel in a `<script
//! type="application/json">` block (with `<`, `>`, `&`, U+2028 and U+2029 escaped, so no
//! cell can close the block), and the script writes cells with `textContent`. A
//! Content-Security-Policy that allows only the page's own script and style (by hash) is the
//! second fence: even markup that slipped in could not run or load anything.

mod page;
mod settings;
mod table;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::Job;

/// Errors building the page. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: no output yet; run the job first (promptmill run {job})")]
    NoOutput { path: PathBuf, job: PathBuf },
    #[error(
        "{0}: is one of the job's own files (output, journal or summary); write the page elsewhere"
    )]
    OwnFile(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The output is in a format the page does not read.
    #[error(
        "{path}: the review page reads CSV or JSONL outputs, not {format}; to review a job, \
         give it an output.path ending in .csv or .jsonl"
    )]
    Unsupported {
        path: PathBuf,
        format: crate::config::OutputFormat,
    },
    /// A line of the output or summary that cannot be read.
    #[error("{path}: line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: u64,
        message: String,
    },
}

/// What [`write`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    /// Rows of the output shown in the page.
    pub rows: u64,
    /// Whether the run's summary was found beside the output.
    pub summary: bool,
}

/// Where the page goes by default: beside the output, `out/copy.csv` → `out/copy.report.html`.
pub fn default_path(job: &Job) -> PathBuf {
    job.report_path()
}

/// Writes the review page of `job`'s output to `dest` (atomically): the output's rows, the
/// summary written beside it (when there is one) and the job's settings, never its API key.
pub fn write(job: &Job, dest: &Path) -> Result<Written, ReportError> {
    let output = &job.output.path;
    if !output.exists() {
        return Err(ReportError::NoOutput {
            path: output.clone(),
            job: job.file.clone(),
        });
    }
    // Writing the page over the output (or the journal, or the summary) would lose it.
    if let Ok(d) = dest.canonicalize() {
        for own in [output.clone(), job.journal_path(), job.summary_path()] {
            if own.canonicalize().is_ok_and(|o| o == d) {
                return Err(ReportError::OwnFile(dest.to_path_buf()));
            }
        }
    }
    let summary = read_summary(&job.summary_path())?;
    let has_summary = summary.is_some();
    let meta = serde_json::json!({
        "job": job.display_name(),
        "output": output.display().to_string(),
        "summary": summary.unwrap_or(Value::Null),
        "settings": settings::of(job),
    });
    let io = |source| ReportError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".promptmill-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    let rows = {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, tmp.as_file_mut());
        let rows = page::write(&mut out, dest, &meta, |sink| table::stream(job, sink))?;
        std::io::Write::flush(&mut out).map_err(io)?;
        rows
    };
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(dest).map_err(|e| io(e.error))?;
    Ok(Written {
        path: dest.to_path_buf(),
        rows,
        summary: has_summary,
    })
}

/// The run's summary JSON, or None when no run wrote one (an output made by `import`, say).
fn read_summary(path: &Path) -> Result<Option<Value>, ReportError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReportError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => Ok(Some(v)),
        Ok(_) => Err(ReportError::Parse {
            path: path.to_path_buf(),
            line: 1,
            message: "not a summary (expected a JSON object)".into(),
        }),
        Err(e) => Err(table::json_error(path, e.line() as u64, &e)),
    }
}
