//! The `source` stage: streams [`Row`]s out of a CSV, TSV or JSONL file, or a sheet of an
//! Excel or OpenDocument workbook.
//!
//! A [`Source`] reads one record at a time through a buffered reader, so memory stays flat
//! however many rows the file holds (a workbook's sheet is the exception: it is loaded
//! whole, see `xlsx.rs`). Problems are split in two: a fatal [`SourceError`]
//! (cannot open, no header, bad header…) ends the stream, while a row error
//! ([`SourceError::is_row_error`]) spoils only that record and reading carries on, so the
//! caller can choose to skip bad rows or stop at the first one.
//!
//! Every error message starts with `file:line[:column]:`, like a compiler's (for a sheet,
//! `file:Sheet1!C4:`), so a user can jump straight to the offending record.

mod csv;
mod jsonl;
#[cfg(test)]
mod test_files;
mod xlsx;

use crate::key_table::KeyTable;
use crate::types::Row;
use serde_json::Value;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The layout of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// Tab-separated values with a header row (quoted like CSV).
    Tsv,
    /// One JSON object per line (also known as NDJSON).
    #[serde(alias = "ndjson")]
    Jsonl,
    /// An Excel workbook (`.xlsx`, `.xlsm`): one sheet of it, with a header row.
    #[serde(alias = "xlsm")]
    Xlsx,
    /// An Excel 97-2003 workbook (`.xls`).
    Xls,
    /// An OpenDocument spreadsheet (`.ods`).
    Ods,
}

impl Format {
    /// True for the workbook formats, read a sheet at a time (`input.sheet`,
    /// `input.header_row`).
    pub fn is_workbook(self) -> bool {
        matches!(self, Format::Xlsx | Format::Xls | Format::Ods)
    }
}

impl Format {
    /// Guesses the format from the file extension (`.csv`, `.tsv`/`.tab`, `.jsonl`/`.ndjson`,
    /// `.xlsx`/`.xlsm`, `.xls`, `.ods`, any case); `None` when the extension says nothing.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "tsv" | "tab" => Some(Format::Tsv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "xlsx" | "xlsm" => Some(Format::Xlsx),
            "xls" => Some(Format::Xls),
            "ods" => Some(Format::Ods),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Jsonl => "jsonl",
            Format::Xlsx => "xlsx",
            Format::Xls => "xls",
            Format::Ods => "ods",
        })
    }
}

/// The error of parsing a [`Format`] name that is not one of ours.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("unknown input format \"{0}\": expected csv, tsv, jsonl, xlsx, xls or ods")]
pub struct ParseFormatError(pub String);

impl FromStr for Format {
    type Err = ParseFormatError;

    /// Parses `csv`, `tsv`, `jsonl` (also `ndjson`), `xlsx` (also `xlsm`), `xls` or `ods`,
    /// ignoring case.
    fn from_str(s: &str) -> Result<Format, ParseFormatError> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "tsv" => Ok(Format::Tsv),
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            "xlsx" | "xlsm" => Ok(Format::Xlsx),
            "xls" => Ok(Format::Xls),
            "ods" => Ok(Format::Ods),
            _ => Err(ParseFormatError(s.to_owned())),
        }
    }
}

/// How to read an input file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceOptions {
    /// The file's format; `None` guesses it from the extension.
    pub format: Option<Format>,
    /// The column (JSONL: key) whose value becomes `Row::id`; `None` uses the 1-based row number.
    pub id_column: Option<String>,
    /// Workbooks: the sheet to read; `None` reads the first.
    pub sheet: Option<SheetRef>,
    /// Workbooks: the 1-based sheet row that holds the header; `None` takes the sheet's
    /// first row that holds anything.
    pub header_row: Option<u32>,
}

/// A sheet of a workbook, by name or by 0-based position (`input.sheet = "Prices"` or `1`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum SheetRef {
    /// The sheet's name, exactly as its tab shows it.
    Name(String),
    /// The sheet's position, counting from 0.
    Index(usize),
}

impl fmt::Display for SheetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SheetRef::Name(name) => write!(f, "{name:?}"),
            SheetRef::Index(i) => write!(f, "{i}"),
        }
    }
}

/// Why a file cannot be read, or why one of its records is bad.
///
/// Messages read `path:line:column: what went wrong`; see [`SourceError::is_row_error`] for
/// which ones end the stream.
#[derive(thiserror::Error, Debug)]
pub enum SourceError {
    /// The file cannot be opened (missing, a directory, no permission…). Fatal.
    #[error("{}: cannot open: {error}", .path.display())]
    Open {
        /// The input file.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// No format was given and the extension does not tell one. Fatal.
    #[error(
        "{}: cannot tell the input format from the file name; set the format to csv, tsv, jsonl, \
         xlsx, xls or ods",
        .path.display()
    )]
    UnknownFormat {
        /// The input file.
        path: PathBuf,
    },
    /// Reading failed part-way through the file. Fatal.
    #[error("{}:{line}: read error: {error}", .path.display())]
    Read {
        /// The input file.
        path: PathBuf,
        /// The line being read.
        line: u64,
        /// What the OS said.
        error: io::Error,
    },
    /// The file holds nothing: no header row (CSV/TSV) or no JSON line (JSONL). Fatal.
    #[error("{}: file is empty: {expected}", .path.display())]
    Empty {
        /// The input file.
        path: PathBuf,
        /// What was expected, e.g. "expected a header row".
        expected: &'static str,
    },
    /// Two header cells have the same name. Fatal.
    #[error(
        "{}:{line}:{second}: duplicate column name \"{name}\" (columns {first} and {second})",
        .path.display()
    )]
    DuplicateColumn {
        /// The input file.
        path: PathBuf,
        /// The header's line.
        line: u64,
        /// The repeated name.
        name: String,
        /// 1-based position of its first occurrence.
        first: u64,
        /// 1-based position of the repeat.
        second: u64,
    },
    /// A header cell is empty or blank. Fatal.
    #[error("{}:{line}:{column}: column {column} of the header has no name", .path.display())]
    EmptyColumnName {
        /// The input file.
        path: PathBuf,
        /// The header's line.
        line: u64,
        /// 1-based column position.
        column: u64,
    },
    /// A header cell is not valid UTF-8. Fatal.
    #[error("{}:{line}:{column}: invalid UTF-8 in the header (column {column})", .path.display())]
    HeaderNotUtf8 {
        /// The input file.
        path: PathBuf,
        /// The header's line.
        line: u64,
        /// 1-based column position.
        column: u64,
    },
    /// The requested id column is not in the header (JSONL: not a key of the first object). Fatal.
    #[error(
        "{}:{line}: id column \"{name}\" is not in the header; available columns: {available}",
        .path.display()
    )]
    UnknownIdColumn {
        /// The input file.
        path: PathBuf,
        /// The header's line (JSONL: the first object's line).
        line: u64,
        /// The id column asked for.
        name: String,
        /// The columns there are, quoted and comma-separated.
        available: String,
    },
    /// Two rows have the same `input.id` value: rows are known by their id, so which row an
    /// answer belongs to would be ambiguous. Fatal, even when bad rows are skipped.
    #[error(
        "{}:{line}:{column}: duplicate id {id:?} in column \"{name}\": line {first} has the same \
         id; each row's id (input.id) must be unique",
        .path.display()
    )]
    DuplicateId {
        /// The input file.
        path: PathBuf,
        /// The line of the second row with the id.
        line: u64,
        /// 1-based position of the id column.
        column: u64,
        /// The id column.
        name: String,
        /// The repeated id.
        id: String,
        /// The line of the first row with the id.
        first: u64,
    },
    /// A record has more or fewer fields than the header. Row error.
    #[error(
        "{}:{line}:{column}: row has {found} fields but the header has {expected}",
        .path.display()
    )]
    Ragged {
        /// The input file.
        path: PathBuf,
        /// Where the record starts.
        line: u64,
        /// The last field that lines up with the header (1-based).
        column: u64,
        /// Fields in the record.
        found: u64,
        /// Fields in the header.
        expected: u64,
    },
    /// A quote opens a cell and is never closed: the csv parser would read every line after
    /// it into that cell. Row error (the rest of the file is that one record).
    #[error(
        "{}:{line}:{column}: this quote is never closed, so every line after it would be read \
         into one cell; close it (a quote inside a quoted cell is written twice: \"\")",
        .path.display()
    )]
    UnclosedQuote {
        /// The input file.
        path: PathBuf,
        /// The line of the opening quote.
        line: u64,
        /// Its column, in characters (1-based).
        column: u64,
    },
    /// A cell is not valid UTF-8. Row error.
    #[error("{}:{line}:{column}: invalid UTF-8 in column \"{name}\"", .path.display())]
    InvalidUtf8 {
        /// The input file.
        path: PathBuf,
        /// Where the record starts.
        line: u64,
        /// 1-based column position.
        column: u64,
        /// The column's header name.
        name: String,
    },
    /// A JSONL line is not valid JSON. Row error.
    #[error("{}:{line}:{column}: invalid JSON: {message}", .path.display())]
    InvalidJson {
        /// The input file.
        path: PathBuf,
        /// The line.
        line: u64,
        /// 1-based byte column where parsing failed.
        column: u64,
        /// The parser's message, without its own position.
        message: String,
    },
    /// A JSONL line is valid JSON but not an object. Row error.
    #[error("{}:{line}: expected a JSON object, found {found}", .path.display())]
    NotAnObject {
        /// The input file.
        path: PathBuf,
        /// The line.
        line: u64,
        /// The JSON type found: "array", "string", "number", "boolean" or "null".
        found: &'static str,
    },
    /// A workbook cannot be read, or has no sheet or header where the job says. Fatal.
    #[error("{}: {message}", .path.display())]
    Workbook {
        /// The input file.
        path: PathBuf,
        /// What is wrong, naming the setting to change where one would help.
        message: String,
    },
    /// A sheet's header (or a repeated id) makes the sheet unusable. Fatal.
    #[error("{}:{cell}: {message}", .path.display())]
    Sheet {
        /// The input file.
        path: PathBuf,
        /// Where, as Excel writes it: `Sheet1!C1` (a whole row: `Sheet1!1`).
        cell: String,
        /// The sheet's 1-based row.
        row: u64,
        /// What is wrong.
        message: String,
    },
    /// A sheet's row cannot be used (an error cell such as `#N/A`, a bad id). Row error.
    #[error("{}:{cell}: {message}", .path.display())]
    SheetRow {
        /// The input file.
        path: PathBuf,
        /// Where, as Excel writes it: `Sheet1!C4`.
        cell: String,
        /// The sheet's 1-based row.
        row: u64,
        /// What is wrong.
        message: String,
    },
    /// A record's id value is missing, empty or of an unusable type. Row error.
    #[error("{}: id column \"{name}\" {problem}", Location(.path, *.line, *.column))]
    BadId {
        /// The input file.
        path: PathBuf,
        /// Where the record starts.
        line: u64,
        /// 1-based column position, when the format has positions (CSV/TSV).
        column: Option<u64>,
        /// The id column's name.
        name: String,
        /// What is wrong: "is empty", "is missing", "must be a string or a number, found array"…
        problem: &'static str,
    },
}

/// Formats `path:line` or `path:line:column`.
struct Location<'a>(&'a Path, u64, Option<u64>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0.display(), self.1)?;
        if let Some(column) = self.2 {
            write!(f, ":{column}")?;
        }
        Ok(())
    }
}

impl SourceError {
    /// True when only this record is bad and the next one can still be read (what
    /// `--skip-bad-rows` skips); false when the whole input is unusable.
    pub fn is_row_error(&self) -> bool {
        matches!(
            self,
            SourceError::Ragged { .. }
                | SourceError::UnclosedQuote { .. }
                | SourceError::InvalidUtf8 { .. }
                | SourceError::InvalidJson { .. }
                | SourceError::NotAnObject { .. }
                | SourceError::BadId { .. }
                | SourceError::SheetRow { .. }
        )
    }

    /// The 1-based file line the error is about, when there is one.
    pub fn line(&self) -> Option<u64> {
        match self {
            SourceError::Open { .. }
            | SourceError::UnknownFormat { .. }
            | SourceError::Empty { .. }
            | SourceError::Workbook { .. } => None,
            SourceError::Sheet { row, .. } | SourceError::SheetRow { row, .. } => Some(*row),
            SourceError::Read { line, .. }
            | SourceError::DuplicateColumn { line, .. }
            | SourceError::EmptyColumnName { line, .. }
            | SourceError::HeaderNotUtf8 { line, .. }
            | SourceError::UnknownIdColumn { line, .. }
            | SourceError::Ragged { line, .. }
            | SourceError::UnclosedQuote { line, .. }
            | SourceError::InvalidUtf8 { line, .. }
            | SourceError::InvalidJson { line, .. }
            | SourceError::NotAnObject { line, .. }
            | SourceError::BadId { line, .. }
            | SourceError::DuplicateId { line, .. } => Some(*line),
        }
    }
}

/// A stream of [`Row`]s read from one input file.
///
/// Iterating yields `Ok(row)` for good records and `Err` for bad ones; after a fatal error
/// (see [`SourceError::is_row_error`]) the iterator ends.
pub struct Source {
    path: PathBuf,
    columns: Vec<String>,
    reader: Reader,
    /// Set after a fatal error or the end of input: the iterator is fused.
    done: bool,
    /// With an id column: each id read so far → its line (on disk, see [`KeyTable`]).
    ids: Option<(String, KeyTable)>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.reader {
            Reader::Csv(_) => "csv/tsv",
            Reader::Jsonl(_) => "jsonl",
            Reader::Xlsx(_) => "workbook",
        };
        f.debug_struct("Source")
            .field("path", &self.path)
            .field("format", &format)
            .field("columns", &self.columns)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

enum Reader {
    Csv(self::csv::CsvReader),
    Jsonl(jsonl::JsonlReader),
    Xlsx(Box<xlsx::XlsxReader>),
}

impl Source {
    /// Opens `path` and reads its header (JSONL: its first object), checking the header and
    /// the id column. A header with no data rows is not an error: the stream is just empty.
    pub fn open(path: &Path, opts: &SourceOptions) -> Result<Source, SourceError> {
        let format = match opts.format.or_else(|| Format::from_path(path)) {
            Some(format) => format,
            None => {
                return Err(SourceError::UnknownFormat {
                    path: path.to_path_buf(),
                })
            }
        };
        let file = std::fs::File::open(path).map_err(|error| SourceError::Open {
            path: path.to_path_buf(),
            error,
        })?;
        let id_column = opts.id_column.as_deref();
        let (columns, reader) = match format {
            Format::Csv | Format::Tsv => {
                let delimiter = if format == Format::Tsv { b'\t' } else { b',' };
                let (columns, reader) =
                    self::csv::CsvReader::open(file, path, delimiter, id_column)?;
                (columns, Reader::Csv(reader))
            }
            Format::Jsonl => {
                let (columns, reader) = jsonl::JsonlReader::open(file, path, id_column)?;
                (columns, Reader::Jsonl(reader))
            }
            Format::Xlsx | Format::Xls | Format::Ods => {
                drop(file);
                let (columns, reader) =
                    xlsx::XlsxReader::open(path, opts.sheet.as_ref(), opts.header_row, id_column)?;
                (columns, Reader::Xlsx(Box::new(reader)))
            }
        };
        let ids = match id_column {
            Some(name) => {
                let table = KeyTable::create_beside(path).map_err(|error| SourceError::Read {
                    path: path.to_path_buf(),
                    line: 1,
                    error,
                })?;
                Some((name.to_string(), table))
            }
            None => None,
        };
        Ok(Source {
            path: path.to_path_buf(),
            columns,
            reader,
            done: false,
            ids,
        })
    }

    /// Column names: the CSV/TSV header, or for JSONL the keys of the first object, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The file this source reads.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for Source {
    type Item = Result<Row, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut item = match &mut self.reader {
            Reader::Csv(reader) => reader.next_row(&self.path, &self.columns),
            Reader::Jsonl(reader) => reader.next_row(&self.path),
            Reader::Xlsx(reader) => reader.next_row(&self.path, &self.columns),
        };
        if let (Some(Ok(row)), Some((name, ids))) = (&item, &mut self.ids) {
            if let Err(mut e) = check_unique_id(&self.path, &self.columns, name, ids, row) {
                // In a sheet, the place is a cell and the first row a sheet row.
                if let (Reader::Xlsx(reader), SourceError::DuplicateId { column, first, .. }) =
                    (&self.reader, &e)
                {
                    e = SourceError::Sheet {
                        path: self.path.clone(),
                        cell: reader.cell_at(row.line, (*column as usize).saturating_sub(1)),
                        row: row.line,
                        message: format!(
                            "duplicate id {:?} in column {name:?}: row {first} has the same id; \
                             each row's id (input.id) must be unique",
                            row.id
                        ),
                    };
                }
                item = Some(Err(e));
            }
        }
        match &item {
            None => self.done = true,
            Some(Err(e)) if !e.is_row_error() => self.done = true,
            Some(_) => {}
        }
        item
    }
}

/// Fails on the second row with an id seen before, naming both lines.
fn check_unique_id(
    path: &Path,
    columns: &[String],
    name: &str,
    ids: &mut KeyTable,
    row: &Row,
) -> Result<(), SourceError> {
    let read_err = |error| SourceError::Read {
        path: path.to_path_buf(),
        line: row.line,
        error,
    };
    match ids.get(&row.id).map_err(read_err)? {
        Some(first) => Err(SourceError::DuplicateId {
            path: path.to_path_buf(),
            line: row.line,
            column: columns
                .iter()
                .position(|c| c == name)
                .map_or(0, |i| i as u64 + 1),
            name: name.to_string(),
            id: row.id.clone(),
            first,
        }),
        None => {
            ids.insert(&row.id, row.line).map_err(read_err)?;
            Ok(())
        }
    }
}

/// A record that could not be read, kept in its place so a job that skips bad rows can still
/// list it as a failed row.
#[derive(Debug)]
pub struct BadRow {
    /// Stands in for the record: its index and line, the 1-based row number as id, no fields.
    pub row: Row,
    /// Why the record could not be read (`file:line:column: ...`).
    pub error: SourceError,
}

/// [`Source`] iterated with its bad records kept in place: see [`Source::keep_bad_rows`].
#[derive(Debug)]
pub struct KeepBadRows {
    source: Source,
    next_index: u64,
}

impl Source {
    /// Iterates rows with each row error as `Ok(Err(BadRow))`, carrying the index the record
    /// took (every record, good or bad, takes one); fatal errors stay `Err` and end the stream.
    pub fn keep_bad_rows(self) -> KeepBadRows {
        KeepBadRows {
            source: self,
            next_index: 0,
        }
    }
}

impl Iterator for KeepBadRows {
    type Item = Result<Result<Row, BadRow>, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.source.next()?;
        let index = self.next_index;
        Some(match item {
            Ok(row) => {
                self.next_index = row.index + 1;
                Ok(Ok(row))
            }
            Err(error) if error.is_row_error() => {
                self.next_index = index + 1;
                let row = Row {
                    index,
                    line: error.line().unwrap_or(0),
                    id: (index + 1).to_string(),
                    fields: serde_json::Map::new(),
                };
                Ok(Err(BadRow { row, error }))
            }
            Err(e) => Err(e),
        })
    }
}

/// Checks that `id_column`, if any, is one of `columns`, and returns its position.
fn find_id_column(
    path: &Path,
    line: u64,
    columns: &[String],
    id_column: Option<&str>,
) -> Result<Option<usize>, SourceError> {
    let Some(name) = id_column else {
        return Ok(None);
    };
    match columns.iter().position(|c| c == name) {
        Some(pos) => Ok(Some(pos)),
        None => Err(SourceError::UnknownIdColumn {
            path: path.to_path_buf(),
            line,
            name: name.to_owned(),
            available: quoted_list(columns),
        }),
    }
}

/// `"a", "b", "c"` — or `(none)` — capped so a hostile 100,000-column header stays readable.
fn quoted_list(columns: &[String]) -> String {
    const MAX: usize = 50;
    if columns.is_empty() {
        return "(none)".to_owned();
    }
    let mut out = columns
        .iter()
        .take(MAX)
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if columns.len() > MAX {
        out.push_str(&format!(" and {} more", columns.len() - MAX));
    }
    out
}

/// The id of a record from its id value, or the 1-based row number when there is no id
/// column. `Err` carries the problem text for [`SourceError::BadId`].
fn id_from_value(value: Option<&Value>) -> Result<String, &'static str> {
    match value {
        None => Err("is missing"),
        Some(Value::String(s)) if s.trim().is_empty() => Err("is empty"),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Null) => Err("is empty"),
        Some(Value::Bool(_)) => Err("must be a string or a number, found boolean"),
        Some(Value::Array(_)) => Err("must be a string or a number, found array"),
        Some(Value::Object(_)) => Err("must be a string or a number, found object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    #[test]
    fn format_from_path_knows_the_extensions_in_any_case() {
        let cases = [
            ("a.csv", Some(Format::Csv)),
            ("dir/A.CSV", Some(Format::Csv)),
            ("a.tsv", Some(Format::Tsv)),
            ("a.Tab", Some(Format::Tsv)),
            ("a.jsonl", Some(Format::Jsonl)),
            ("a.NDJSON", Some(Format::Jsonl)),
            ("a.xlsx", Some(Format::Xlsx)),
            ("A.XLSM", Some(Format::Xlsx)),
            ("a.xls", Some(Format::Xls)),
            ("a.ods", Some(Format::Ods)),
            ("a.json", None),
            ("a.txt", None),
            ("csv", None),
        ];
        for (path, want) in cases {
            assert_eq!(Format::from_path(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn format_parses_from_str_and_serde() {
        assert_eq!("CSV".parse::<Format>(), Ok(Format::Csv));
        assert_eq!("tsv".parse::<Format>(), Ok(Format::Tsv));
        assert_eq!("jsonl".parse::<Format>(), Ok(Format::Jsonl));
        assert_eq!("XLSX".parse::<Format>(), Ok(Format::Xlsx));
        assert_eq!("ods".parse::<Format>(), Ok(Format::Ods));
        assert!(Format::Xls.is_workbook() && !Format::Csv.is_workbook());
        assert_eq!(
            "xlsb".parse::<Format>().unwrap_err().to_string(),
            "unknown input format \"xlsb\": expected csv, tsv, jsonl, xlsx, xls or ods"
        );
        let f: Format = serde_json::from_str("\"jsonl\"").unwrap();
        assert_eq!(f, Format::Jsonl);
        let f: Format = serde_json::from_str("\"tsv\"").unwrap();
        assert_eq!(f, Format::Tsv);
        assert!(serde_json::from_str::<Format>("\"Csv\"").is_err());
        assert_eq!(Format::Jsonl.to_string(), "jsonl");
    }

    #[test]
    fn open_reports_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.csv");
        let err = Source::open(&path, &SourceOptions::default()).unwrap_err();
        assert!(!err.is_row_error());
        assert_eq!(err.line(), None);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{}: cannot open: ", path.display())),
            "{msg}"
        );
    }

    #[test]
    fn open_reports_an_unknown_extension() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.txt");
        std::fs::write(&path, "a\n1\n").unwrap();
        let err = Source::open(&path, &SourceOptions::default())
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: cannot tell the input format from the file name; set the format to csv, tsv, \
                 jsonl, xlsx, xls or ods",
                path.display()
            )
        );
        // An explicit format wins over the extension.
        let opts = SourceOptions {
            format: Some(Format::Csv),
            ..SourceOptions::default()
        };
        let rows: Vec<_> = Source::open(&path, &opts).unwrap().collect();
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn a_duplicate_id_names_both_lines_and_ends_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("in.csv", "q,id\nx,a\ny,b\nz,a\nw,c\n"),
            ("in.jsonl", "{\"q\":\"x\",\"id\":\"a\"}\n{\"q\":\"y\",\"id\":\"b\"}\n{\"q\":\"z\",\"id\":\"a\"}\n{\"q\":\"w\",\"id\":\"c\"}\n"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let opts = SourceOptions {
                format: None,
                id_column: Some("id".into()),
                ..SourceOptions::default()
            };
            let items: Vec<_> = Source::open(&path, &opts).unwrap().collect();
            assert_eq!(items.len(), 3, "{name}: the stream ends at the duplicate");
            let err = items[2].as_ref().unwrap_err();
            assert!(!err.is_row_error(), "{name}: fatal even when bad rows are skipped");
            let csv = name.ends_with("csv");
            let (second, first) = if csv { (4, 2) } else { (3, 1) };
            assert_eq!(
                err.to_string(),
                format!(
                    "{}:{second}:2: duplicate id \"a\" in column \"id\": line {first} has the \
                     same id; each row's id (input.id) must be unique",
                    path.display()
                ),
            );
        }
    }

    #[test]
    fn quoted_list_is_capped() {
        let many: Vec<String> = (0..60).map(|i| format!("c{i}")).collect();
        let s = quoted_list(&many);
        assert!(s.starts_with("\"c0\", \"c1\""), "{s}");
        assert!(s.ends_with("\"c49\" and 10 more"), "{s}");
        assert_eq!(quoted_list(&[]), "(none)");
    }

    /// Cases per property: `default`, or `PROMPTMILL_FUZZ_CASES` for a longer fuzzing run.
    fn fuzz_cases(default: u32) -> u32 {
        std::env::var("PROMPTMILL_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Reads every item of `bytes` as `format`; open errors count as one item.
    fn read_all(bytes: &[u8], format: Format) -> Vec<Result<Row, SourceError>> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file.flush().unwrap();
        let opts = SourceOptions {
            format: Some(format),
            ..SourceOptions::default()
        };
        match Source::open(file.path(), &opts) {
            Ok(source) => source.collect(),
            Err(e) => vec![Err(e)],
        }
    }

    /// Throughput check for the benchmark's hot path: `cargo test --release --lib
    /// million_rows -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn million_rows() {
        let dir = tempfile::tempdir().unwrap();
        let csv_path = dir.path().join("big.csv");
        let jsonl_path = dir.path().join("big.jsonl");
        let mut csv = std::io::BufWriter::new(std::fs::File::create(&csv_path).unwrap());
        let mut jsonl = std::io::BufWriter::new(std::fs::File::create(&jsonl_path).unwrap());
        writeln!(csv, "sku,name,price,description").unwrap();
        for i in 0..1_000_000 {
            writeln!(csv, "S{i},Item {i},{}.99,\"A fine, sturdy item\"", i % 100).unwrap();
            writeln!(
                jsonl,
                r#"{{"sku":"S{i}","name":"Item {i}","price":{}.99,"tags":["a","b"]}}"#,
                i % 100
            )
            .unwrap();
        }
        csv.flush().unwrap();
        jsonl.flush().unwrap();
        for path in [csv_path, jsonl_path] {
            let opts = SourceOptions {
                format: None,
                id_column: Some("sku".into()),
                ..SourceOptions::default()
            };
            let start = std::time::Instant::now();
            let mut n = 0u64;
            for row in Source::open(&path, &opts).unwrap() {
                n += row.unwrap().fields.len() as u64;
            }
            assert_eq!(n, 4_000_000);
            eprintln!(
                "{}: 1,000,000 rows in {:?}",
                path.display(),
                start.elapsed()
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(fuzz_cases(256)))]

        /// Arbitrary bytes never panic any reader, and every error points at a line
        /// (except "the file is empty", which has none to point at).
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for format in [Format::Csv, Format::Tsv, Format::Jsonl] {
                for item in read_all(&bytes, format) {
                    if let Err(e) = item {
                        let empty = matches!(e, SourceError::Empty { .. });
                        prop_assert!(empty || e.line().is_some(), "{e}");
                        prop_assert!(e.to_string().contains(':'), "{e}");
                    }
                }
            }
        }

        /// Whatever the bytes, [`Source::keep_bad_rows`] numbers records 0, 1, 2… with no
        /// gap or repeat, good and bad alike: the output lists bad rows in their place.
        #[test]
        fn keep_bad_rows_numbers_every_record_in_order(
            bytes in proptest::collection::vec(
                proptest::sample::select(b"ab,\t\"\n\r{}[]:01\\ \xff".to_vec()),
                0..512,
            )
        ) {
            for format in [Format::Csv, Format::Jsonl] {
                let mut file = tempfile::NamedTempFile::new().unwrap();
                file.write_all(&bytes).unwrap();
                let opts = SourceOptions { format: Some(format), ..SourceOptions::default() };
                let Ok(source) = Source::open(file.path(), &opts) else { continue };
                for (expected, item) in (0u64..).zip(source.keep_bad_rows()) {
                    let index = match item {
                        Ok(Ok(row)) => row.index,
                        Ok(Err(bad)) => {
                            prop_assert!(bad.error.is_row_error());
                            prop_assert_eq!(bad.row.id.clone(), (bad.row.index + 1).to_string());
                            bad.row.index
                        }
                        Err(e) => {
                            prop_assert!(!e.is_row_error());
                            break;
                        }
                    };
                    prop_assert_eq!(index, expected);
                }
            }
        }

        /// Any text at all (quotes, commas, CR/LF, a BOM in the middle, NULs, emoji) written
        /// by a CSV writer or as JSON strings comes back exactly as it was.
        #[test]
        fn any_text_round_trips(
            cells in proptest::collection::vec((any::<String>(), any::<String>()), 1..8)
        ) {
            let mut w = ::csv::Writer::from_writer(Vec::new());
            w.write_record(["a", "b"]).unwrap();
            let mut jsonl = String::new();
            for (a, b) in &cells {
                w.write_record([a, b]).unwrap();
                jsonl.push_str(&serde_json::json!({ "a": a, "b": b }).to_string());
                jsonl.push('\n');
            }
            let csv_bytes = w.into_inner().unwrap();
            for (bytes, format) in [(csv_bytes, Format::Csv), (jsonl.into_bytes(), Format::Jsonl)] {
                let rows: Vec<Row> = read_all(&bytes, format)
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(rows.len(), cells.len(), "{}", format);
                for (row, (a, b)) in rows.iter().zip(&cells) {
                    prop_assert_eq!(row.fields["a"].as_str(), Some(a.as_str()), "{}", format);
                    prop_assert_eq!(row.fields["b"].as_str(), Some(b.as_str()), "{}", format);
                }
            }
        }

        /// Bytes biased towards the characters the parsers care about.
        #[test]
        fn structured_noise_never_panics(
            bytes in proptest::collection::vec(
                proptest::sample::select(b"ab,\t\"\n\r{}[]:01\\ \xef\xbb\xbf\xff\x00".to_vec()),
                0..512,
            )
        ) {
            for format in [Format::Csv, Format::Tsv, Format::Jsonl] {
                for item in read_all(&bytes, format) {
                    match item {
                        Ok(row) => prop_assert!(row.line >= 1),
                        Err(e) => {
                            let empty = matches!(e, SourceError::Empty { .. });
                            prop_assert!(empty || e.line().is_some(), "{e}");
                        }
                    }
                }
            }
        }
    }
}
