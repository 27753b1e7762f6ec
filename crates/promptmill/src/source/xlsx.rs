//! Excel and OpenDocument workbooks (`.xlsx`, `.xlsm`, `.xls`, `.ods`), read with calamine.
//!
//! Unlike CSV, a sheet is loaded when the source opens (calamine has no row-by-row reader
//! for every format), so memory grows with the sheet's cells: fine for the sizes a
//! spreadsheet holds (at most 1,048,576 rows), and rows are dropped as they are handed out.
//! `.xlsx` sheets are read cell by cell into a sparse map, so a stray value far out in the
//! sheet costs one cell, not the rectangle up to it; `.xls` and `.ods` come as calamine's
//! dense range.
//!
//! Cells keep the sheet's types so templates see sensible values: numbers stay numbers (a
//! float with no fraction becomes an integer), booleans stay booleans, dates become ISO text
//! and an empty cell is an empty string, as in CSV. An error cell (`#N/A`) is a row error
//! naming the cell. Rows are numbered by the sheet's own row numbers (`Row::line`), and
//! every message points at a cell the way Excel writes it: `products.xlsx:Sheet1!C4: ...`.

use super::{find_id_column, id_from_value, SheetRef, SourceError};
use crate::types::Row;
use calamine::{Data, Reader as _, Sheets};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// A sheet's non-blank cells: row → column → value, both 0-based.
type Cells = BTreeMap<u32, BTreeMap<u32, Data>>;

/// Reads the data rows of one sheet, loaded at open.
pub(super) struct XlsxReader {
    /// The sheet's name, as written in cell references (quoted when it needs to be).
    sheet: String,
    /// The rows below the header not handed out yet.
    rows: Cells,
    /// The sheet's 0-based column of each column kept, in order.
    cols: Vec<u32>,
    /// Header names mapped to `null`: each row clones it and fills the values in.
    template: Map<String, Value>,
    id_column: Option<usize>,
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
        let mut rows = read_cells(&mut book, &name)
            .map_err(|e| workbook_err(format!("cannot read sheet {name:?}: {e}")))?;
        let sheet = sheet_ref_name(&name);
        let (Some(first_row), Some(first_col), Some(last_col)) = (
            rows.keys().next().copied(),
            rows.values().filter_map(|r| r.keys().next()).min().copied(),
            rows.values()
                .filter_map(|r| r.keys().next_back())
                .max()
                .copied(),
        ) else {
            return Err(workbook_err(format!(
                "sheet {name:?} is empty: expected a header row"
            )));
        };
        // The header is the row asked for, else the first row that holds anything.
        let header = match header_row {
            Some(h) => h.saturating_sub(1),
            None => first_row,
        };
        let Some(header_cells) = rows.remove(&header) else {
            return Err(SourceError::Sheet {
                path: path.to_path_buf(),
                cell: format!("{sheet}!{}", u64::from(header) + 1),
                row: u64::from(header) + 1,
                message: format!(
                    "row {} is empty: expected the header row there (input.header_row)",
                    u64::from(header) + 1
                ),
            });
        };
        // Rows above the header (a title, notes) are not read.
        let mut rows = rows.split_off(&header);
        let with_data: HashSet<u32> = rows.values().flat_map(|r| r.keys().copied()).collect();
        let mut columns = Vec::new();
        let mut cols = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for col in first_col..=last_col {
            let at = || format!("{sheet}!{}{}", column_letters(col), u64::from(header) + 1);
            let header_err = |message: String| SourceError::Sheet {
                path: path.to_path_buf(),
                cell: at(),
                row: u64::from(header) + 1,
                message,
            };
            let cell = header_cells.get(&col).unwrap_or(&Data::Empty);
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
                if !with_data.contains(&col) {
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
        // Cells outside the kept columns are blank (a blank-named column with data was
        // refused above): drop them, and the rows left with nothing.
        let kept: HashSet<u32> = cols.iter().copied().collect();
        rows.retain(|_, row| {
            row.retain(|c, _| kept.contains(c));
            !row.is_empty()
        });
        let id_column = find_id_column(path, u64::from(header) + 1, &columns, id_column)?;
        let template = columns.iter().map(|c| (c.clone(), Value::Null)).collect();
        let reader = XlsxReader {
            sheet,
            rows,
            cols,
            template,
            id_column,
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
        let (r, cells) = self.rows.pop_first()?;
        let index = self.index;
        self.index += 1;
        Some(self.build_row(path, columns, index, r, &cells))
    }

    /// Sheet row `r` (0-based) as a row: every cell converted, the id checked.
    fn build_row(
        &self,
        path: &Path,
        columns: &[String],
        index: u64,
        r: u32,
        cells: &BTreeMap<u32, Data>,
    ) -> Result<Row, SourceError> {
        let line = u64::from(r) + 1;
        let mut fields = self.template.clone();
        let mut id = None;
        for (i, (value, &col)) in fields.values_mut().zip(&self.cols).enumerate() {
            let name = columns.get(i).map(String::as_str).unwrap_or_default();
            let row_err = |message: String| SourceError::SheetRow {
                path: path.to_path_buf(),
                cell: self.cell_name(line, col),
                row: line,
                message,
            };
            let cell = cells.get(&col).unwrap_or(&Data::Empty);
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

    /// `Sheet1!C4` for the 1-based sheet row and 0-based column.
    fn cell_name(&self, line: u64, col: u32) -> String {
        format!("{}!{}{line}", self.sheet, column_letters(col))
    }

    /// Where row `line`'s (1-based) value of column `column` (0-based among the columns
    /// kept) is, as `Sheet1!C4`.
    pub(super) fn cell_at(&self, line: u64, column: usize) -> String {
        self.cell_name(line, self.cols.get(column).copied().unwrap_or(0))
    }
}

/// The non-blank cells of sheet `name`: an `.xlsx` sheet read cell by cell, the other
/// formats through calamine's range.
fn read_cells(
    book: &mut Sheets<std::io::BufReader<std::fs::File>>,
    name: &str,
) -> Result<Cells, String> {
    let mut cells = Cells::new();
    let mut put = |(r, c): (u32, u32), value: Data| {
        if !is_blank(&value) {
            cells.entry(r).or_default().insert(c, value);
        }
    };
    match book {
        Sheets::Xlsx(xlsx) => {
            let mut reader = xlsx
                .worksheet_cells_reader(name)
                .map_err(|e| e.to_string())?;
            while let Some(cell) = reader.next_cell().map_err(|e| e.to_string())? {
                put(cell.get_position(), Data::from(cell.get_value().clone()));
            }
        }
        other => {
            let range = other.worksheet_range(name).map_err(|e| e.to_string())?;
            let (r0, c0) = range.start().unwrap_or((0, 0));
            for (r, c, value) in range.used_cells() {
                // `used_cells` counts from the range's corner; the sheet from A1. Sheet
                // positions are at most 2^20 rows and 2^14 columns, so this never overflows.
                let at = (r0.saturating_add(r as u32), c0.saturating_add(c as u32));
                put(at, value.clone());
            }
        }
    }
    Ok(cells)
}

/// A cell that counts as nothing when deciding whether a row is empty.
fn is_blank(cell: &Data) -> bool {
    match cell {
        Data::Empty => true,
        Data::String(s) => s.is_empty(),
        _ => false,
    }
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

    /// A value in the sheet's last cell costs one cell, not the 17 billion of the rectangle
    /// up to it (which would not fit in memory): the blank header above it is the error.
    #[test]
    fn a_stray_value_in_the_last_cell_is_one_cell() {
        use crate::source::{Source, SourceOptions};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("far.xlsx");
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        sheet.write_string(0, 0, "sku").unwrap();
        sheet.write_string(1, 0, "a").unwrap();
        sheet.write_string(1_048_575, 16_383, "stray").unwrap();
        book.save(&path).unwrap();
        let err = Source::open(&path, &SourceOptions::default()).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "far.xlsx:Sheet1!XFD1: column XFD of the header has no name, but holds data; \
                 name it (or, if the header is on another row, set input.header_row)"
            ),
            "{err}"
        );
        // Far out in a named column, it is just a row with that sheet row number.
        sheet_with_far_row(&path);
        let rows: Vec<Row> = Source::open(&path, &SourceOptions::default())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].line, 1_048_576);
        assert_eq!(rows[1].fields["sku"], "z");
        assert_eq!(rows[1].fields["name"], "");
    }

    fn sheet_with_far_row(path: &std::path::Path) {
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        sheet.write_string(0, 0, "sku").unwrap();
        sheet.write_string(0, 16_383, "name").unwrap();
        sheet.write_string(1, 0, "a").unwrap();
        sheet.write_string(1_048_575, 0, "z").unwrap();
        book.save(path).unwrap();
    }

    /// A real workbook's bytes, cut short or flipped anywhere, and arbitrary bytes named
    /// `.xlsx`, `.xls` or `.ods`, give an error naming the file, never a panic.
    #[test]
    fn broken_workbooks_are_errors_not_panics() {
        use crate::source::{Source, SourceOptions};
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.xlsx");
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        sheet.write_string(0, 0, "sku").unwrap();
        sheet.write_string(0, 1, "price").unwrap();
        sheet.write_string(1, 0, "a").unwrap();
        sheet.write_number(1, 1, 2.5).unwrap();
        book.save(&good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let rows: Vec<_> = Source::open(&good, &SourceOptions::default())
            .unwrap()
            .collect();
        assert_eq!(rows.len(), 1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_130);
        for case in 0..200 {
            let mut b = bytes.clone();
            match case % 3 {
                0 => b.truncate(rng.random_range(0..bytes.len())),
                1 => {
                    for _ in 0..8 {
                        let at = rng.random_range(0..b.len());
                        b[at] = rng.random();
                    }
                }
                _ => {
                    b = (0..rng.random_range(0..600))
                        .map(|_| rng.random())
                        .collect()
                }
            }
            for ext in ["xlsx", "xls", "ods"] {
                let path = dir.path().join(format!("case.{ext}"));
                std::fs::write(&path, &b).unwrap();
                match Source::open(&path, &SourceOptions::default()) {
                    Ok(source) => {
                        for item in source {
                            if let Err(e) = item {
                                assert!(e.to_string().contains("case."), "{e}");
                            }
                        }
                    }
                    Err(e) => assert!(e.to_string().starts_with(&path.display().to_string())),
                }
            }
        }
    }

    #[test]
    fn sheet_names_are_quoted_when_a_reference_needs_it() {
        assert_eq!(sheet_ref_name("Sheet1"), "Sheet1");
        assert_eq!(sheet_ref_name("My sheet"), "'My sheet'");
        assert_eq!(sheet_ref_name("Bob's"), "'Bob''s'");
    }
}
