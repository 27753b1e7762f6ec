//! Excel and OpenDocument workbooks (`.xlsx`, `.xlsm`, `.xls`, `.ods`), read with calamine.
//!
//! Unlike CSV, a sheet is loaded whole when the source opens (calamine has no row-by-row
//! reader for every format), so memory grows with the sheet: fine for the sizes a
//! spreadsheet holds (at most 1,048,576 rows), and the run then streams the rows as usual.
//!
//! Cells keep the sheet's types so templates see sensible values: numbers stay numbers (a
//! float with no fraction becomes an integer), booleans stay booleans, dates become ISO text
//! and an empty cell is an empty string, as in CSV. An error cell (`#N/A`) is a row error
//! naming the cell. Rows are numbered by the sheet's own row numbers (`Row::line`), and
//! every message points at a cell the way Excel writes it: `products.xlsx:Sheet1!C4: ...`.

use super::{find_id_column, id_from_value, SheetRef, SourceError};
use crate::types::Row;
use calamine::{Data, Range, Reader as _};
use serde_json::{Map, Value};
use std::path::Path;

/// Reads the data rows of one sheet, loaded at open.
pub(super) struct XlsxReader {
    /// The sheet's name, as written in cell references (quoted when it needs to be).
    sheet: String,
    range: Range<Data>,
    /// The sheet's 0-based column of each column kept, in order.
    cols: Vec<u32>,
    /// Header names mapped to `null`: each row clones it and fills the values in.
    template: Map<String, Value>,
    id_column: Option<usize>,
    /// The 0-based sheet row read next, and the last one there is.
    next: u32,
    last: u32,
    /// 0-based index of the next data row (empty rows take none).
    index: u64,
}

impl XlsxReader {
    /// Loads the chosen sheet and checks its header row; returns the column names and a
    /// reader for the rows below the header.
    pub(super) fn open(
        path: &Path,
        sheet: Option<&SheetRef>,
        header_row: Option<u32>,
        id_column: Option<&str>,
    ) -> Result<(Vec<String>, XlsxReader), SourceError> {
        let workbook_err = |message: String| SourceError::Workbook {
            path: path.to_path_buf(),
            message,
        };
        let mut book = calamine::open_workbook_auto(path)
            .map_err(|e| workbook_err(format!("cannot read the workbook: {e}")))?;
        let names = book.sheet_names();
        let name = match sheet {
            None => names
                .first()
                .cloned()
                .ok_or_else(|| workbook_err("the workbook has no sheet".into()))?,
            Some(SheetRef::Name(want)) => {
                names.iter().find(|n| *n == want).cloned().ok_or_else(|| {
                    workbook_err(format!(
                        "input.sheet: no sheet named {want:?}; the sheets are {}",
                        super::quoted_list(&names)
                    ))
                })?
            }
            Some(SheetRef::Index(i)) => names.get(*i).cloned().ok_or_else(|| {
                workbook_err(format!(
                    "input.sheet: there is no sheet {i} (counting from 0); the workbook has {} \
                     sheet(s): {}",
                    names.len(),
                    super::quoted_list(&names)
                ))
            })?,
        };
        let range = book
            .worksheet_range(&name)
            .map_err(|e| workbook_err(format!("cannot read sheet {name:?}: {e}")))?;
        let sheet = sheet_ref_name(&name);
        let (Some(start), Some(end)) = (range.start(), range.end()) else {
            return Err(workbook_err(format!(
                "sheet {name:?} is empty: expected a header row"
            )));
        };
        // The header is the row asked for, else the first row that holds anything.
        let header = match header_row {
            Some(h) => h.saturating_sub(1),
            None => start.0,
        };
        if header < start.0 || header > end.0 || row_is_empty(&range, header, start.1..=end.1) {
            return Err(SourceError::Sheet {
                path: path.to_path_buf(),
                cell: format!("{sheet}!{}", header + 1),
                row: u64::from(header) + 1,
                message: format!(
                    "row {} is empty: expected the header row there (input.header_row)",
                    header + 1
                ),
            });
        }
        let mut columns = Vec::new();
        let mut cols = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for col in start.1..=end.1 {
            let at = || format!("{sheet}!{}{}", column_letters(col), header + 1);
            let header_err = |message: String| SourceError::Sheet {
                path: path.to_path_buf(),
                cell: at(),
                row: u64::from(header) + 1,
                message,
            };
            let cell = range.get_value((header, col)).unwrap_or(&Data::Empty);
            let name = match cell_value(cell) {
                Ok(Value::String(s)) => s,
                Ok(other) => other.to_string(),
                Err(e) => {
                    return Err(header_err(format!(
                        "the header cell holds the error {e}, not a column name"
                    )))
                }
            };
            if name.trim().is_empty() {
                // A column with neither a name nor data is not a column (a sheet's range often
                // reaches past the table); one with data under a blank name is an error, as
                // in CSV.
                if column_is_empty(&range, col, header + 1..=end.0) {
                    continue;
                }
                return Err(header_err(format!(
                    "column {} of the header has no name, but holds data; name it (or, if the \
                     header is on another row, set input.header_row)",
                    column_letters(col)
                )));
            }
            if let Some(first) = seen.insert(name.clone(), col) {
                return Err(header_err(format!(
                    "duplicate column name {name:?} (columns {} and {})",
                    column_letters(first),
                    column_letters(col)
                )));
            }
            columns.push(name);
            cols.push(col);
        }
        let id_column = find_id_column(path, u64::from(header) + 1, &columns, id_column)?;
        let template = columns.iter().map(|c| (c.clone(), Value::Null)).collect();
        let reader = XlsxReader {
            sheet,
            range,
            cols,
            template,
            id_column,
            next: header + 1,
            last: end.0,
            index: 0,
        };
        Ok((columns, reader))
    }

    /// The next non-empty row, a row error, or `None` at the end of the sheet.
    pub(super) fn next_row(
        &mut self,
        path: &Path,
        columns: &[String],
    ) -> Option<Result<Row, SourceError>> {
        loop {
            if self.next > self.last {
                return None;
            }
            let r = self.next;
            self.next += 1;
            let cells = self.cols.iter().map(|&c| self.range.get_value((r, c)));
            if cells.clone().all(|c| c.is_none_or(is_blank)) {
                continue;
            }
            let index = self.index;
            self.index += 1;
            return Some(self.build_row(path, columns, index, r));
        }
    }

    /// Sheet row `r` (0-based) as a row: every cell converted, the id checked.
    fn build_row(
        &self,
        path: &Path,
        columns: &[String],
        index: u64,
        r: u32,
    ) -> Result<Row, SourceError> {
        let line = u64::from(r) + 1;
        let mut fields = self.template.clone();
        let mut id = None;
        for (i, (value, &col)) in fields.values_mut().zip(&self.cols).enumerate() {
            let name = columns.get(i).map(String::as_str).unwrap_or_default();
            let row_err = |message: String| SourceError::SheetRow {
                path: path.to_path_buf(),
                cell: self.cell_name(r, col),
                row: line,
                message,
            };
            let cell = self.range.get_value((r, col)).unwrap_or(&Data::Empty);
            *value = cell_value(cell).map_err(|e| {
                row_err(format!(
                    "column {name:?} holds the spreadsheet error {e}; fix the cell (or its \
                     formula) or clear it"
                ))
            })?;
            if Some(i) == self.id_column {
                let text = id_from_value(Some(value))
                    .map_err(|problem| row_err(format!("id column {name:?} {problem}")))?;
                id = Some(text);
            }
        }
        Ok(Row {
            index,
            line,
            id: id.unwrap_or_else(|| (index + 1).to_string()),
            fields,
        })
    }

    /// `Sheet1!C4` for the 0-based sheet row and column.
    fn cell_name(&self, r: u32, col: u32) -> String {
        format!("{}!{}{}", self.sheet, column_letters(col), r + 1)
    }

    /// Where row `line`'s (1-based) value of column `column` (0-based among the columns
    /// kept) is, as `Sheet1!C4`.
    pub(super) fn cell_at(&self, line: u64, column: usize) -> String {
        let col = self.cols.get(column).copied().unwrap_or(0);
        format!("{}!{}{line}", self.sheet, column_letters(col))
    }
}

/// A cell that counts as nothing when deciding whether a row is empty.
fn is_blank(cell: &Data) -> bool {
    match cell {
        Data::Empty => true,
        Data::String(s) => s.is_empty(),
        _ => false,
    }
}

fn row_is_empty(range: &Range<Data>, r: u32, cols: std::ops::RangeInclusive<u32>) -> bool {
    cols.into_iter()
        .all(|c| range.get_value((r, c)).is_none_or(is_blank))
}

fn column_is_empty(range: &Range<Data>, c: u32, rows: std::ops::RangeInclusive<u32>) -> bool {
    rows.into_iter()
        .all(|r| range.get_value((r, c)).is_none_or(is_blank))
}

/// The sheet's name as a cell reference writes it: `Sheet1`, or `'My sheet'` when it holds
/// anything but letters, digits and `_` (a `'` inside is written twice).
fn sheet_ref_name(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        name.to_owned()
    } else {
        format!("'{}'", name.replace('\'', "''"))
    }
}

/// Excel's letters for a 0-based column: 0 → `A`, 25 → `Z`, 26 → `AA`.
pub(crate) fn column_letters(col: u32) -> String {
    let mut n = u64::from(col) + 1;
    let mut out = Vec::new();
    while n > 0 {
        let rem = (n - 1) % 26;
        // `rem` < 26, so the sum is an ASCII capital letter.
        out.push(b'A' + rem as u8);
        n = (n - 1) / 26;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The largest integer an `f64` holds exactly (2^53): floats with no fraction up to this
/// become integers.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

/// A cell as the value a template sees; `Err` is the spreadsheet error it holds (`#N/A`…).
pub(crate) fn cell_value(cell: &Data) -> Result<Value, calamine::CellErrorType> {
    Ok(match cell {
        Data::Empty => Value::String(String::new()),
        Data::String(s) => Value::String(s.clone()),
        Data::Int(i) => Value::from(*i),
        Data::Float(f) => float_value(*f),
        Data::Bool(b) => Value::Bool(*b),
        Data::DateTime(dt) if dt.is_duration() => Value::String(duration_text(dt.as_f64())),
        Data::DateTime(dt) => {
            let (y, mo, d, h, mi, s, ms) = dt.to_ymd_hms_milli();
            let time = if ms > 0 {
                format!("{h:02}:{mi:02}:{s:02}.{ms:03}")
            } else {
                format!("{h:02}:{mi:02}:{s:02}")
            };
            Value::String(if dt.as_f64().abs() < 1.0 {
                // A time of day with no date (Excel stores it as a fraction of day 0).
                time
            } else if (h, mi, s, ms) == (0, 0, 0, 0) {
                format!("{y:04}-{mo:02}-{d:02}")
            } else {
                format!("{y:04}-{mo:02}-{d:02}T{time}")
            })
        }
        Data::DateTimeIso(s) | Data::DurationIso(s) => Value::String(s.clone()),
        Data::Error(e) => return Err(e.clone()),
    })
}

/// A float as a JSON number: an integer when it has no fraction, as text if it is not finite.
fn float_value(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() <= MAX_EXACT {
        // Exact: a whole number within ±2^53 converts to i64 without loss.
        return Value::from(f as i64);
    }
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(f.to_string()))
}

/// A duration (days as a float) as `H:MM:SS`, hours past 24 kept (`36:05:00`), as Excel
/// shows it with `[h]:mm:ss`.
fn duration_text(days: f64) -> String {
    let ms = (days * 86_400_000.0).round();
    if !ms.is_finite() {
        return days.to_string();
    }
    let sign = if ms < 0.0 { "-" } else { "" };
    // Saturating cast of a finite float: huge durations clamp rather than wrap.
    let ms = ms.abs() as u64;
    let (secs, frac) = (ms / 1000, ms % 1000);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if frac > 0 {
        format!("{sign}{h}:{m:02}:{s:02}.{frac:03}")
    } else {
        format!("{sign}{h}:{m:02}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::{CellErrorType, ExcelDateTime, ExcelDateTimeType};
    use serde_json::json;

    fn date(v: f64) -> Data {
        Data::DateTime(ExcelDateTime::new(v, ExcelDateTimeType::DateTime, false))
    }

    #[test]
    fn numbers_keep_their_type_and_whole_floats_become_integers() {
        assert_eq!(cell_value(&Data::Int(42)), Ok(json!(42)));
        assert_eq!(cell_value(&Data::Float(3.0)), Ok(json!(3)));
        assert_eq!(cell_value(&Data::Float(-17.0)), Ok(json!(-17)));
        assert_eq!(cell_value(&Data::Float(19.99)), Ok(json!(19.99)));
        assert_eq!(cell_value(&Data::Float(1e300)), Ok(json!(1e300)));
        // Past 2^53 a float is not a count of anything exact: it stays a float.
        assert!(cell_value(&Data::Float(1e17)).unwrap().is_f64());
        assert_eq!(cell_value(&Data::Float(f64::NAN)), Ok(json!("NaN")));
    }

    #[test]
    fn text_booleans_and_empty_cells() {
        assert_eq!(cell_value(&Data::Bool(true)), Ok(json!(true)));
        assert_eq!(
            cell_value(&Data::String("Ünï 🎉".into())),
            Ok(json!("Ünï 🎉"))
        );
        assert_eq!(cell_value(&Data::String("=1+1".into())), Ok(json!("=1+1")));
        assert_eq!(cell_value(&Data::Empty), Ok(json!("")));
    }

    #[test]
    fn dates_are_iso_text() {
        // 46356 is 2026-11-30 in the 1900 date system.
        assert_eq!(cell_value(&date(46356.0)), Ok(json!("2026-11-30")));
        // 14:05 is 14/24 + 5/1440 of a day.
        let v = 46356.0 + 14.0 / 24.0 + 5.0 / 1440.0;
        assert_eq!(cell_value(&date(v)), Ok(json!("2026-11-30T14:05:00")));
        assert_eq!(cell_value(&date(0.5)), Ok(json!("12:00:00")));
        let d1904 = Data::DateTime(ExcelDateTime::new(
            44894.0,
            ExcelDateTimeType::DateTime,
            true,
        ));
        assert_eq!(cell_value(&d1904), Ok(json!("2026-11-30")));
        let iso = Data::DateTimeIso("2026-11-30T14:05:00".into());
        assert_eq!(cell_value(&iso), Ok(json!("2026-11-30T14:05:00")));
    }

    #[test]
    fn durations_count_hours_past_a_day() {
        let d = |v| Data::DateTime(ExcelDateTime::new(v, ExcelDateTimeType::TimeDelta, false));
        assert_eq!(cell_value(&d(1.5 + 5.0 / 1440.0)), Ok(json!("36:05:00")));
        assert_eq!(cell_value(&d(-0.25)), Ok(json!("-6:00:00")));
    }

    #[test]
    fn error_cells_are_errors() {
        assert_eq!(
            cell_value(&Data::Error(CellErrorType::NA)),
            Err(CellErrorType::NA)
        );
        assert_eq!(CellErrorType::NA.to_string(), "#N/A");
    }

    #[test]
    fn column_letters_count_like_excel() {
        let cases = [
            (0, "A"),
            (2, "C"),
            (25, "Z"),
            (26, "AA"),
            (701, "ZZ"),
            (702, "AAA"),
        ];
        for (col, want) in cases {
            assert_eq!(column_letters(col), want);
        }
        assert_eq!(column_letters(16_383), "XFD");
        assert!(!column_letters(u32::MAX).is_empty());
    }

    #[test]
    fn sheet_names_are_quoted_when_a_reference_needs_it() {
        assert_eq!(sheet_ref_name("Sheet1"), "Sheet1");
        assert_eq!(sheet_ref_name("My sheet"), "'My sheet'");
        assert_eq!(sheet_ref_name("Bob's"), "'Bob''s'");
    }
}
