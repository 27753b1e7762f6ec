//! CSV output, safe to open in a spreadsheet: generated cells that a spreadsheet would run
//! as a formula are neutralised (OWASP "CSV injection") unless the job turns that off.

use std::io::Write;

use serde_json::Value;

use super::{result_values, OutRow, OutputSpec, RowWriter, SinkError};

pub(crate) struct CsvOut<'s, W: Write> {
    out: csv::Writer<W>,
    spec: &'s OutputSpec,
    record: csv::ByteRecord,
}

fn err(e: csv::Error) -> SinkError {
    match e.into_kind() {
        csv::ErrorKind::Io(source) => SinkError::Io {
            path: Default::default(),
            source,
        },
        other => SinkError::Csv {
            path: Default::default(),
            message: format!("{other:?}"),
        },
    }
}

impl<'s, W: Write> CsvOut<'s, W> {
    pub(crate) fn new(out: W, spec: &'s OutputSpec) -> Result<Self, SinkError> {
        let mut out = csv::WriterBuilder::new().flexible(false).from_writer(out);
        out.write_record(spec.columns()).map_err(err)?;
        Ok(CsvOut {
            out,
            spec,
            record: csv::ByteRecord::new(),
        })
    }
}

/// A cell as CSV text: strings as they are, other JSON values as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// Prefixes a cell that a spreadsheet would evaluate (`=`, `+`, `-`, `@`, tab, CR) with a
/// single quote, as OWASP recommends.
pub(crate) fn guard_formula(s: &str) -> std::borrow::Cow<'_, str> {
    match s.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{s}").into(),
        _ => s.into(),
    }
}

impl<W: Write> RowWriter for CsvOut<'_, W> {
    fn write(&mut self, row: &OutRow<'_>) -> Result<(), SinkError> {
        self.record.clear();
        for c in &self.spec.input_columns {
            let v = row.input.get(c).map(cell).unwrap_or_default();
            self.record.push_field(v.as_bytes());
        }
        for (name, v) in result_values(self.spec, row) {
            let text = cell(&v);
            // Text a server chose. Numbers (a structured field's `-5`) are data a spreadsheet
            // reads as numbers, not formulas: only text is guarded.
            let generated = name.starts_with("output")
                || name == "judge_reason"
                || name == "error"
                || name == "finish_reason"
                || self.spec.field_columns.contains(&name)
                || self.spec.extra.contains(&name);
            if self.spec.formula_guard && generated && v.is_string() {
                self.record.push_field(guard_formula(&text).as_bytes());
            } else {
                self.record.push_field(text.as_bytes());
            }
        }
        self.out.write_byte_record(&self.record).map_err(err)
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| err(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised() {
        for s in ["=1+1", "+A1", "-2", "@SUM(A1)", "\tx", "\rx"] {
            assert!(guard_formula(s).starts_with('\''), "{s:?}");
        }
        assert_eq!(guard_formula("Plain text"), "Plain text");
        assert_eq!(guard_formula(""), "");
    }
}
