//! The table of the page, read from the job's output file (CSV or JSONL) one row at a time.

use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use super::page::{Column, RowSink};
use super::ReportError;
use crate::config::{Job, OutputFormat};
use crate::types::RESULT_COLUMNS;

/// Streams the output's rows into `sink`; returns the columns, each with its kind.
pub(super) fn stream(job: &Job, sink: &mut RowSink<'_>) -> Result<Vec<Column>, ReportError> {
    let path = &job.output.path;
    let names = match job.output_format() {
        Some(OutputFormat::Jsonl) => jsonl(path, sink)?,
        Some(OutputFormat::Xlsx) => {
            return Err(ReportError::Unsupported {
                path: path.to_path_buf(),
                format: OutputFormat::Xlsx,
            })
        }
        // The job file accepts only .csv, .jsonl or .xlsx outputs.
        _ => csv(path, sink)?,
    };
    Ok(kinds(names))
}

fn csv(path: &Path, sink: &mut RowSink<'_>) -> Result<Vec<String>, ReportError> {
    let err = |e: csv::Error| {
        let line = e.position().map(|p| p.line()).unwrap_or(0);
        match e.into_kind() {
            csv::ErrorKind::Io(source) => ReportError::Io {
                path: path.to_path_buf(),
                source,
            },
            csv::ErrorKind::Utf8 { pos, err } => ReportError::Parse {
                path: path.to_path_buf(),
                line: pos.map(|p| p.line()).unwrap_or(line),
                message: format!("column {}: not UTF-8", err.field() + 1),
            },
            csv::ErrorKind::UnequalLengths {
                pos,
                expected_len,
                len,
            } => ReportError::Parse {
                path: path.to_path_buf(),
                line: pos.map(|p| p.line()).unwrap_or(line),
                message: format!("{len} fields where the header has {expected_len}"),
            },
            other => ReportError::Parse {
                path: path.to_path_buf(),
                line,
                message: format!("{other:?}"),
            },
        }
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(err)?;
    let names: Vec<String> = reader
        .headers()
        .map_err(err)?
        .iter()
        .map(str::to_string)
        .collect();
    let mut record = csv::StringRecord::new();
    let mut cells = Vec::with_capacity(names.len());
    while reader.read_record(&mut record).map_err(err)? {
        cells.clear();
        cells.extend(record.iter().map(|c| Some(c.to_string())));
        sink.row(&cells)?;
    }
    Ok(names)
}

fn jsonl(path: &Path, sink: &mut RowSink<'_>) -> Result<Vec<String>, ReportError> {
    let io = |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut names: Vec<String> = Vec::new();
    let mut cells = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i as u64 + 1;
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => ReportError::Parse {
                path: path.to_path_buf(),
                line: n,
                message: "not UTF-8".into(),
            },
            _ => io(e),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let obj = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                return Err(ReportError::Parse {
                    path: path.to_path_buf(),
                    line: n,
                    message: "expected a JSON object".into(),
                })
            }
            Err(e) => return Err(json_error(path, n, &e)),
        };
        // Every row of an output has the same keys; a key first seen later becomes a new
        // column, and rows before it simply have no value there.
        for k in obj.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
        cells.clear();
        cells.extend(names.iter().map(|k| obj.get(k).and_then(cell)));
        sink.row(&cells)?;
    }
    Ok(names)
}

/// A JSONL value as the text the table shows: strings as they are, other values as JSON.
fn cell(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A JSON parse error as a [`ReportError`] naming `line` of `path` and the column.
pub(super) fn json_error(path: &Path, line: u64, e: &serde_json::Error) -> ReportError {
    // serde_json's message ends in " at line L column C"; say it our way.
    let text = e.to_string();
    let message = text.split(" at line ").next().unwrap_or(&text);
    ReportError::Parse {
        path: path.to_path_buf(),
        line,
        message: format!("column {}: {message}", e.column()),
    }
}

/// Names each column's kind. The input columns come first and end at `output` (the output
/// refuses input columns with generated names); `output_2`… are variants, promptmill's own
/// result columns are `result`, and anything else generated (structured-output fields) is a
/// `field`.
fn kinds(names: Vec<String>) -> Vec<Column> {
    let first_generated = names
        .iter()
        .position(|n| n == "output")
        .unwrap_or(names.len());
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let kind = if i < first_generated {
                "input"
            } else if name == "output"
                || name
                    .strip_prefix("output_")
                    .is_some_and(|v| v.parse::<u32>().is_ok())
            {
                "output"
            } else if RESULT_COLUMNS.contains(&name.as_str()) {
                "result"
            } else {
                "field"
            };
            Column { name, kind }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_input_then_output_fields_and_results() {
        let names = [
            "sku", "name", "output", "output_2", "headline", "status", "cost_usd", "error",
        ];
        let kinds: Vec<(String, &str)> = kinds(names.iter().map(|s| s.to_string()).collect())
            .into_iter()
            .map(|c| (c.name, c.kind))
            .collect();
        let want = [
            ("sku", "input"),
            ("name", "input"),
            ("output", "output"),
            ("output_2", "output"),
            ("headline", "field"),
            ("status", "result"),
            ("cost_usd", "result"),
            ("error", "result"),
        ];
        let want: Vec<(String, &str)> = want.iter().map(|(n, k)| (n.to_string(), *k)).collect();
        assert_eq!(kinds, want);
    }
}
