//! Excel output: one sheet, the same columns as the CSV output, a bold frozen header and
//! wrapped output columns.
//!
//! Every piece of text, generated or copied from the input, is written as a text cell,
//! never as a formula, so an answer that starts with `=` stays text and the CSV formula guard
//! is not needed. Numbers and booleans stay numbers and booleans. The sheet is written in
//! rust_xlsxwriter's constant-memory mode (rows go to a temporary file as they come), so a
//! large output does not grow memory; the workbook is zipped into the caller's writer at the
//! end, which `write_output` then renames into place like the other formats.

use std::io::Write;

use rust_xlsxwriter::{Format, FormatAlign, Workbook, Worksheet, XlsxError};
use serde_json::Value;

use super::{result_values, OutRow, OutputSpec, RowWriter, SinkError};

/// Excel's longest cell text, in UTF-16 code units.
const MAX_CELL_UNITS: usize = 32_767;

/// Widths (in characters) of the kinds of column.
const WIDTH_INPUT: f64 = 18.0;
const WIDTH_OUTPUT: f64 = 60.0;
const WIDTH_CHECK: f64 = 28.0;
const WIDTH_ERROR: f64 = 40.0;
const WIDTH_RESULT: f64 = 14.0;

pub(crate) struct XlsxOut<'s, W: Write + Send> {
    out: W,
    spec: &'s OutputSpec,
    workbook: Workbook,
    /// Per column: whether its text cells wrap (the answers and structured fields).
    wrapped: Vec<bool>,
    wrap: Format,
    /// The next sheet row (0 is the header).
    row: u32,
}

impl<'s, W: Write + Send> XlsxOut<'s, W> {
    pub(crate) fn new(out: W, spec: &'s OutputSpec) -> Result<Self, SinkError> {
        let err = |e| xlsx_err(spec, e);
        let mut workbook = Workbook::new();
        // The sheet's rows wait in a temporary file beside the output, not in memory.
        if let Some(dir) = spec.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            workbook.set_tempdir(dir).map_err(err)?;
        }
        let columns = spec.columns();
        let n_input = spec.input_columns.len();
        let wrapped: Vec<bool> = columns
            .iter()
            .enumerate()
            .map(|(i, name)| i >= n_input && is_generated_text(spec, name))
            .collect();
        let bold = Format::new().set_bold();
        let wrap = Format::new().set_text_wrap().set_align(FormatAlign::Top);
        let sheet = workbook.add_worksheet_with_constant_memory().map_err(err)?;
        sheet.set_name("output").map_err(err)?;
        for (i, name) in columns.iter().enumerate() {
            let col = col_num(i).map_err(err)?;
            let width = match name.as_str() {
                _ if i < n_input => WIDTH_INPUT,
                _ if wrapped[i] => WIDTH_OUTPUT,
                n if n.starts_with("check_") => WIDTH_CHECK,
                "error" => WIDTH_ERROR,
                _ => WIDTH_RESULT,
            };
            sheet.set_column_width(col, width).map_err(err)?;
            sheet
                .write_string_with_format(0, col, clip(name), &bold)
                .map_err(err)?;
        }
        sheet.set_freeze_panes(1, 0).map_err(err)?;
        Ok(XlsxOut {
            out,
            spec,
            workbook,
            wrapped,
            wrap,
            row: 1,
        })
    }
}

/// Text a server wrote: the answers and structured fields, wrapped in the sheet.
fn is_generated_text(spec: &OutputSpec, name: &str) -> bool {
    name == "output"
        || name
            .strip_prefix("output_")
            .is_some_and(|n| n.parse::<u32>().is_ok())
        || name == "judge_reason"
        || spec.field_columns.iter().any(|f| f == name)
        || spec.extra.iter().any(|f| f == name)
}

fn col_num(i: usize) -> Result<u16, XlsxError> {
    u16::try_from(i).map_err(|_| XlsxError::RowColumnLimitError)
}

fn xlsx_err(spec: &OutputSpec, e: XlsxError) -> SinkError {
    let message = match e {
        XlsxError::RowColumnLimitError => format!(
            "an .xlsx sheet holds at most 1,048,575 rows and 16,384 columns; write the output \
             as .csv or .jsonl instead ({e})"
        ),
        other => other.to_string(),
    };
    SinkError::Xlsx {
        path: spec.path.clone(),
        message,
    }
}

/// `s` cut to Excel's longest cell text; a longer answer is cut, with a warning, rather than
/// failing the whole output.
fn clip(s: &str) -> &str {
    let mut units = 0;
    for (at, c) in s.char_indices() {
        units += c.len_utf16();
        if units > MAX_CELL_UNITS {
            tracing::warn!(
                "a cell of {} characters is cut to Excel's limit of {MAX_CELL_UNITS}",
                s.chars().count()
            );
            return &s[..at];
        }
    }
    s
}

/// Writes one value into `(row, col)`: text as text (never a formula), numbers as numbers,
/// booleans as booleans, nothing for null.
fn write_value(
    sheet: &mut Worksheet,
    row: u32,
    col: u16,
    value: &Value,
    wrap: Option<&Format>,
) -> Result<(), XlsxError> {
    let text = |sheet: &mut Worksheet, s: &str| -> Result<(), XlsxError> {
        match wrap {
            Some(f) => sheet.write_string_with_format(row, col, clip(s), f)?,
            None => sheet.write_string(row, col, clip(s))?,
        };
        Ok(())
    };
    match value {
        Value::Null => {}
        Value::String(s) if s.is_empty() => {}
        Value::String(s) => text(sheet, s)?,
        Value::Bool(b) => {
            sheet.write_boolean(row, col, *b)?;
        }
        Value::Number(n) => match exact_f64(n) {
            Some(f) => {
                sheet.write_number(row, col, f)?;
            }
            // An integer a spreadsheet number would round (past 2^53): keep its digits.
            None => text(sheet, &n.to_string())?,
        },
        other => text(sheet, &other.to_string())?,
    }
    Ok(())
}

/// `n` as an `f64` when that loses nothing an integer had.
fn exact_f64(n: &serde_json::Number) -> Option<f64> {
    const MAX_EXACT: u64 = 1 << 53;
    if let Some(i) = n.as_i64() {
        return (i.unsigned_abs() <= MAX_EXACT).then_some(i as f64);
    }
    if let Some(u) = n.as_u64() {
        return (u <= MAX_EXACT).then_some(u as f64);
    }
    n.as_f64().filter(|f| f.is_finite())
}

impl<W: Write + Send> RowWriter for XlsxOut<'_, W> {
    fn write(&mut self, row: &OutRow<'_>) -> Result<(), SinkError> {
        let spec = self.spec;
        let r = self.row;
        let sheet = self
            .workbook
            .worksheet_from_index(0)
            .map_err(|e| xlsx_err(spec, e))?;
        let results = result_values(spec, row);
        let inputs = spec
            .input_columns
            .iter()
            .map(|c| row.input.get(c).unwrap_or(&Value::Null));
        let values = inputs.chain(results.iter().map(|(_, v)| v));
        for (i, value) in values.enumerate() {
            let col = col_num(i).map_err(|e| xlsx_err(spec, e))?;
            let wrap = self
                .wrapped
                .get(i)
                .copied()
                .unwrap_or(false)
                .then_some(&self.wrap);
            write_value(sheet, r, col, value, wrap).map_err(|e| xlsx_err(spec, e))?;
        }
        self.row = r
            .checked_add(1)
            .ok_or_else(|| xlsx_err(spec, XlsxError::RowColumnLimitError))?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        let spec = self.spec;
        self.workbook
            .save_to_writer(&mut self.out)
            .map_err(|e| xlsx_err(spec, e))?;
        self.out.flush().map_err(|source| SinkError::Io {
            path: Default::default(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_excels_limit_on_a_character_boundary() {
        let short = "é".repeat(10);
        assert_eq!(clip(&short), short);
        let long = "a".repeat(MAX_CELL_UNITS + 5);
        assert_eq!(clip(&long).len(), MAX_CELL_UNITS);
        // An emoji is two UTF-16 units: the cut never splits one.
        let emoji = "😀".repeat(MAX_CELL_UNITS / 2 + 1);
        let cut = clip(&emoji);
        assert_eq!(cut.chars().count(), MAX_CELL_UNITS / 2);
    }

    #[test]
    fn only_exact_numbers_become_spreadsheet_numbers() {
        let n = |v: Value| match v {
            Value::Number(n) => exact_f64(&n),
            _ => unreachable!(),
        };
        assert_eq!(n(serde_json::json!(42)), Some(42.0));
        assert_eq!(n(serde_json::json!(-3.5)), Some(-3.5));
        assert_eq!(n(serde_json::json!(9_007_199_254_740_993u64)), None);
        assert_eq!(n(serde_json::json!(-9_007_199_254_740_993i64)), None);
    }
}
