//! CSV and TSV: a header row, then one record per row; every cell becomes a JSON string.
//!
//! Parsing is the `csv` crate's, reading raw byte records into one reused buffer so the
//! only per-row allocations are the row's own strings. Two things it does not do for us:
//! - Strip a UTF-8 BOM (Excel writes one), so we skip it before the parser sees it.
//! - Report the line a record *starts* on. It reports where scanning began, which is off
//!   after blank lines or CRLF endings. So records are split on `\n` alone (a trailing `\r`
//!   is trimmed from the last cell) and the input always ends with `\n`: then every record
//!   ends just after a newline, and its first line is the line after it, less the newlines
//!   inside its quoted cells.

use super::{find_id_column, SourceError};
use crate::types::Row;
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads records from a CSV or TSV file whose header has already been read.
pub(super) struct CsvReader {
    reader: ::csv::Reader<Input>,
    /// Reused for every record, so reading does not allocate.
    record: ::csv::ByteRecord,
    /// Header names mapped to `null`. Each row clones it and fills the values in, which is
    /// cheaper than hashing every key into a new map.
    template: Map<String, Value>,
    id_column: Option<usize>,
    /// The line after the previous record: where the next one can start at the earliest.
    next_line: u64,
    /// 0-based index of the next record. Bad records take an index too, so ids made of row
    /// numbers do not shift when a bad row is later fixed.
    index: u64,
    delimiter: u8,
}

impl CsvReader {
    /// Reads and checks the header; returns the column names and a reader for the records.
    pub(super) fn open(
        file: File,
        path: &Path,
        delimiter: u8,
        id_column: Option<&str>,
    ) -> Result<(Vec<String>, CsvReader), SourceError> {
        let input = Input::new(file).map_err(|error| SourceError::Read {
            path: path.to_path_buf(),
            line: 1,
            error,
        })?;
        let reader = ::csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .terminator(::csv::Terminator::Any(b'\n'))
            .buffer_capacity(64 * 1024)
            .from_reader(input);
        let mut this = CsvReader {
            reader,
            record: ::csv::ByteRecord::new(),
            template: Map::new(),
            id_column: None,
            next_line: 1,
            index: 0,
            delimiter,
        };
        let line = match this.read_record(path)? {
            Some(line) => line,
            None => {
                return Err(SourceError::Empty {
                    path: path.to_path_buf(),
                    expected: "expected a header row",
                })
            }
        };
        if this.reader.get_ref().eof {
            return Err(this.unclosed_quote(path, line));
        }
        let columns = this.header_names(path, line)?;
        this.id_column = find_id_column(path, line, &columns, id_column)?;
        this.template = columns.iter().map(|c| (c.clone(), Value::Null)).collect();
        Ok((columns, this))
    }

    /// The next record as a row, a row error, or `None` at the end.
    pub(super) fn next_row(
        &mut self,
        path: &Path,
        columns: &[String],
    ) -> Option<Result<Row, SourceError>> {
        let line = match self.read_record(path) {
            Ok(Some(line)) => line,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        let index = self.index;
        self.index += 1;
        if self.reader.get_ref().eof {
            return Some(Err(self.unclosed_quote(path, line)));
        }
        Some(self.build_row(path, columns, index, line))
    }

    /// The record just read ran into the end of the file: a quote opened in it was never
    /// closed, and the csv parser (which accepts that silently) read every line after it
    /// into one cell. Names where that quote is.
    fn unclosed_quote(&self, path: &Path, record_line: u64) -> SourceError {
        let (line, column) = find_unclosed_quote(path, self.delimiter).unwrap_or((record_line, 1));
        SourceError::UnclosedQuote {
            path: path.to_path_buf(),
            line,
            column,
        }
    }

    /// Reads the next non-blank record into `self.record`; returns the line it starts on.
    fn read_record(&mut self, path: &Path) -> Result<Option<u64>, SourceError> {
        loop {
            let more = self
                .reader
                .read_byte_record(&mut self.record)
                .map_err(|e| SourceError::Read {
                    path: path.to_path_buf(),
                    line: self.next_line,
                    error: io::Error::from(e),
                })?;
            if !more {
                return Ok(None);
            }
            let end = self.reader.position().line();
            let inner = self
                .record
                .as_slice()
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
            // `max` covers the one record not ended by a newline: a quote left open at the
            // end of the file, which swallows our added `\n` into its cell.
            let line = end.saturating_sub(inner + 1).max(self.next_line);
            self.next_line = end;
            // A CRLF blank line reaches us as a record of one `\r` cell; skip it like an LF one.
            let blank = self.record.len() == 1 && self.record.get(0) == Some(&b"\r"[..]);
            if !blank {
                return Ok(Some(line));
            }
        }
    }

    /// The cells of `self.record`, with the CR of a CRLF ending trimmed from the last one.
    fn cells(&self) -> impl Iterator<Item = &[u8]> {
        let last = self.record.len().saturating_sub(1);
        self.record.iter().enumerate().map(move |(i, cell)| {
            if i == last {
                cell.strip_suffix(b"\r").unwrap_or(cell)
            } else {
                cell
            }
        })
    }

    /// Checks the header record: UTF-8, no empty names, no repeated names.
    fn header_names(&self, path: &Path, line: u64) -> Result<Vec<String>, SourceError> {
        let mut columns = Vec::with_capacity(self.record.len());
        let mut seen = std::collections::HashMap::with_capacity(self.record.len());
        for (i, cell) in self.cells().enumerate() {
            let column = i as u64 + 1;
            let cell = if i == 0 {
                cell.strip_prefix(BOM).unwrap_or(cell)
            } else {
                cell
            };
            let name = std::str::from_utf8(cell).map_err(|_| SourceError::HeaderNotUtf8 {
                path: path.to_path_buf(),
                line,
                column,
            })?;
            if name.trim().is_empty() {
                return Err(SourceError::EmptyColumnName {
                    path: path.to_path_buf(),
                    line,
                    column,
                });
            }
            if let Some(first) = seen.insert(name, column) {
                return Err(SourceError::DuplicateColumn {
                    path: path.to_path_buf(),
                    line,
                    name: name.to_owned(),
                    first,
                    second: column,
                });
            }
            columns.push(name.to_owned());
        }
        Ok(columns)
    }

    /// Turns `self.record` into a row, checking its width, its UTF-8 and its id.
    fn build_row(
        &self,
        path: &Path,
        columns: &[String],
        index: u64,
        line: u64,
    ) -> Result<Row, SourceError> {
        let found = self.record.len() as u64;
        let expected = columns.len() as u64;
        if found != expected {
            return Err(SourceError::Ragged {
                path: path.to_path_buf(),
                line,
                column: found.min(expected).max(1),
                found,
                expected,
            });
        }
        let mut fields = self.template.clone();
        let mut id = None;
        for (i, (value, cell)) in fields.values_mut().zip(self.cells()).enumerate() {
            let text = std::str::from_utf8(cell).map_err(|_| SourceError::InvalidUtf8 {
                path: path.to_path_buf(),
                line,
                column: i as u64 + 1,
                name: columns.get(i).cloned().unwrap_or_default(),
            })?;
            if Some(i) == self.id_column {
                if text.trim().is_empty() {
                    return Err(SourceError::BadId {
                        path: path.to_path_buf(),
                        line,
                        column: Some(i as u64 + 1),
                        name: columns.get(i).cloned().unwrap_or_default(),
                        problem: "is empty",
                    });
                }
                id = Some(text.to_owned());
            }
            *value = Value::String(text.to_owned());
        }
        Ok(Row {
            index,
            line,
            id: id.unwrap_or_else(|| (index + 1).to_string()),
            fields,
        })
    }
}

/// Where the quote that is never closed opens in a CSV/TSV file, as (line, column), both
/// 1-based, the column in characters. It follows the csv parser's rules: a quote opens a
/// quoted cell only at the start of a cell, `""` inside one is a quote, and a quoted cell
/// ends at the next lone quote. Only read on the error path, so a second pass is cheap.
fn find_unclosed_quote(path: &Path, delimiter: u8) -> Option<(u64, u64)> {
    #[derive(PartialEq)]
    enum State {
        CellStart,
        InCell,
        Quoted,
        QuoteInQuoted,
    }
    let mut bytes = io::BufReader::new(File::open(path).ok()?)
        .bytes()
        .peekable();
    // A BOM is invisible to whoever reads the line.
    let mut head = Vec::new();
    while head.len() < BOM.len()
        && bytes
            .peek()
            .is_some_and(|b| b.as_ref().ok() == Some(&BOM[head.len()]))
    {
        head.push(BOM[head.len()]);
        bytes.next();
    }
    let mut state = State::CellStart;
    let (mut line, mut column) = (1u64, 0u64);
    let mut opened = (1u64, 1u64);
    for b in bytes {
        let b = b.ok()?;
        if b == b'\n' {
            line += 1;
            column = 0;
        } else if b & 0xC0 != 0x80 {
            column += 1; // not a UTF-8 continuation byte: a new character
        }
        state = match state {
            State::CellStart | State::InCell if b == b'\n' || b == delimiter => State::CellStart,
            State::CellStart if b == b'"' => {
                opened = (line, column);
                State::Quoted
            }
            State::CellStart | State::InCell => State::InCell,
            State::Quoted if b == b'"' => State::QuoteInQuoted,
            State::Quoted => State::Quoted,
            State::QuoteInQuoted if b == b'"' => State::Quoted,
            State::QuoteInQuoted if b == b'\n' || b == delimiter => State::CellStart,
            State::QuoteInQuoted => State::InCell,
        };
    }
    (state == State::Quoted).then_some(opened)
}

/// The file's bytes without a leading UTF-8 BOM, always ending with `\n` (see module docs).
struct Input {
    file: File,
    /// Bytes read while looking for a BOM that turned out not to be one; served first.
    head: Vec<u8>,
    head_pos: usize,
    last: Option<u8>,
    done: bool,
    /// A read returned end of file. Every record we append a `\n` to ends before that, so
    /// a record still open when it happens is a quote that was never closed.
    eof: bool,
}

impl Input {
    fn new(mut file: File) -> io::Result<Input> {
        let mut head = Vec::with_capacity(BOM.len());
        // `take` + `read_to_end` retries short reads, so a BOM split across reads is still seen.
        (&mut file).take(BOM.len() as u64).read_to_end(&mut head)?;
        if head == BOM {
            head.clear();
        }
        Ok(Input {
            file,
            head,
            head_pos: 0,
            last: None,
            done: false,
            eof: false,
        })
    }
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.done {
            self.eof = true;
            return Ok(0);
        }
        let n = if self.head_pos < self.head.len() {
            let rest = &self.head[self.head_pos..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.head_pos += n;
            n
        } else {
            self.file.read(buf)?
        };
        if n > 0 {
            self.last = buf.get(n - 1).copied();
            return Ok(n);
        }
        self.done = true;
        match self.last {
            Some(b'\n') | None => {
                self.eof = true;
                Ok(0)
            }
            Some(_) => {
                buf[0] = b'\n';
                Ok(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::source::test_files::{file, msg, open, open_err};
    use crate::source::{Format, Source, SourceError, SourceOptions};
    use crate::types::Row;
    use serde_json::{json, Value};

    fn rows(content: &[u8]) -> Vec<Result<Row, SourceError>> {
        let (_dir, path) = file("data.csv", content);
        open(&path, None).unwrap().collect()
    }

    fn row_errs(name: &str, content: &[u8], id: Option<&str>) -> Vec<String> {
        let (_dir, path) = file(name, content);
        open(&path, id)
            .unwrap()
            .filter_map(|r| r.err())
            .map(|e| {
                assert!(e.is_row_error(), "{e}");
                msg(&e, &path)
            })
            .collect()
    }

    #[test]
    fn reads_rows_with_header_names_in_file_order() {
        let (_dir, path) = file("data.csv", b"sku,name,price\nA1,Mug,4.50\nB2,Cup,3\n");
        let source = open(&path, Some("sku")).unwrap();
        assert_eq!(source.columns(), ["sku", "name", "price"]);
        assert_eq!(source.path(), path);
        let rows: Vec<Row> = source.map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].index, 0);
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[0].id, "A1");
        assert_eq!(
            Value::Object(rows[0].fields.clone()),
            json!({"sku": "A1", "name": "Mug", "price": "4.50"})
        );
        let keys: Vec<&String> = rows[1].fields.keys().collect();
        assert_eq!(keys, ["sku", "name", "price"]);
        assert_eq!(rows[1].index, 1);
        assert_eq!(rows[1].line, 3);
        assert_eq!(rows[1].id, "B2");
    }

    #[test]
    fn id_defaults_to_the_row_number() {
        let rows = rows(b"a\nx\ny\n");
        let ids: Vec<_> = rows.into_iter().map(|r| r.unwrap().id).collect();
        assert_eq!(ids, ["1", "2"]);
    }

    #[test]
    fn quoted_cells_embedded_newlines_and_crlf() {
        let content =
            b"a,b\r\n\"x, y\",\"say \"\"hi\"\"\"\r\n\"line1\r\nline2\",2\r\n\r\nlast,3\r\n";
        let rows: Vec<Row> = rows(content).into_iter().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].fields["a"], "x, y");
        assert_eq!(rows[0].fields["b"], "say \"hi\"");
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[1].fields["a"], "line1\r\nline2");
        assert_eq!(rows[1].fields["b"], "2");
        assert_eq!(rows[1].line, 3);
        // Line 5 is blank; the record after it starts on line 6.
        assert_eq!(rows[2].fields["a"], "last");
        assert_eq!(rows[2].fields["b"], "3");
        assert_eq!(rows[2].line, 6);
        assert_eq!(rows[2].index, 2);
    }

    #[test]
    fn line_numbers_survive_blank_lines_and_a_missing_final_newline() {
        let rows: Vec<Row> = rows(b"\n\na\n\n\n1\n\"two\nlines\"\n3")
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [6, 7, 9]);
        assert_eq!(rows[2].fields["a"], "3");
    }

    #[test]
    fn a_bom_is_not_part_of_the_first_column_name() {
        let (_dir, path) = file("data.csv", b"\xEF\xBB\xBFsku,name\n1,a\n");
        let source = open(&path, Some("sku")).unwrap();
        assert_eq!(source.columns(), ["sku", "name"]);
        // Also when the first header cell is quoted.
        let (_dir, path) = file("data.csv", b"\xEF\xBB\xBF\"sku\",name\n1,a\n");
        let mut source = open(&path, Some("sku")).unwrap();
        assert_eq!(source.columns(), ["sku", "name"]);
        assert_eq!(source.next().unwrap().unwrap().id, "1");
        // A file that is only a BOM is empty.
        let (_, m) = open_err("data.csv", b"\xEF\xBB\xBF", None);
        assert_eq!(m, "data.csv: file is empty: expected a header row");
    }

    #[test]
    fn tsv_uses_tabs_and_csv_quoting() {
        let (_dir, path) = file("data.tsv", b"a\tb\n\"x\ty\"\tz,w\n");
        let source = open(&path, None).unwrap();
        assert_eq!(source.columns(), ["a", "b"]);
        let rows: Vec<Row> = source.map(Result::unwrap).collect();
        assert_eq!(rows[0].fields["a"], "x\ty");
        assert_eq!(rows[0].fields["b"], "z,w");
        // An explicit format overrides the extension.
        let (_dir, path) = file("data.txt", b"a\tb\n1\t2\n");
        let opts = SourceOptions {
            format: Some(Format::Tsv),
            ..SourceOptions::default()
        };
        let source = Source::open(&path, &opts).unwrap();
        assert_eq!(source.columns(), ["a", "b"]);
    }

    #[test]
    fn empty_file_is_fatal_but_header_only_is_not() {
        for content in [&b""[..], b"\n\n", b"\r\n"] {
            let (e, m) = open_err("products.csv", content, None);
            assert_eq!(m, "products.csv: file is empty: expected a header row");
            assert!(!e.is_row_error());
            assert_eq!(e.line(), None);
        }
        assert!(rows(b"a,b\n").is_empty());
        assert!(rows(b"a,b").is_empty());
    }

    #[test]
    fn duplicate_header_names_are_fatal() {
        let (e, m) = open_err("products.csv", b"sku,name,price,name\n1,2,3,4\n", None);
        assert_eq!(
            m,
            "products.csv:1:4: duplicate column name \"name\" (columns 2 and 4)"
        );
        assert!(!e.is_row_error());
        assert_eq!(e.line(), Some(1));
    }

    #[test]
    fn empty_header_names_are_fatal() {
        let (_, m) = open_err("products.csv", b"sku,,price\n", None);
        assert_eq!(m, "products.csv:1:2: column 2 of the header has no name");
        let (_, m) = open_err("products.csv", b"\nsku,price, \n", None);
        assert_eq!(m, "products.csv:2:3: column 3 of the header has no name");
        let (_, m) = open_err("products.csv", b"sku,price,\r\n", None);
        assert_eq!(m, "products.csv:1:3: column 3 of the header has no name");
    }

    #[test]
    fn header_that_is_not_utf8_is_fatal() {
        let (e, m) = open_err("products.csv", b"sku,pr\xFFice\n1,2\n", None);
        assert_eq!(
            m,
            "products.csv:1:2: invalid UTF-8 in the header (column 2)"
        );
        assert!(!e.is_row_error());
    }

    #[test]
    fn unknown_id_column_is_fatal_and_lists_the_columns() {
        let (e, m) = open_err("products.csv", b"sku,name\n1,a\n", Some("id"));
        assert_eq!(
            m,
            "products.csv:1: id column \"id\" is not in the header; available columns: \"sku\", \"name\""
        );
        assert!(!e.is_row_error());
    }

    #[test]
    fn empty_id_cells_are_row_errors() {
        let errs = row_errs(
            "products.csv",
            b"name,sku\na,1\nb,\nc,  \nd,4\n",
            Some("sku"),
        );
        assert_eq!(
            errs,
            [
                "products.csv:3:2: id column \"sku\" is empty",
                "products.csv:4:2: id column \"sku\" is empty",
            ]
        );
    }

    #[test]
    fn ragged_rows_are_row_errors_and_reading_continues() {
        let content = b"sku,name,price\n1,a,2\n2,b,3,extra\n3,c\n4,d,5\n";
        let (_dir, path) = file("products.csv", content);
        let items: Vec<_> = open(&path, None).unwrap().collect();
        assert_eq!(items.len(), 4);
        let e = items[1].as_ref().unwrap_err();
        assert_eq!(
            msg(e, &path),
            "products.csv:3:3: row has 4 fields but the header has 3"
        );
        assert!(e.is_row_error());
        assert_eq!(e.line(), Some(3));
        let e = items[2].as_ref().unwrap_err();
        assert_eq!(
            msg(e, &path),
            "products.csv:4:2: row has 2 fields but the header has 3"
        );
        let last = items[3].as_ref().unwrap();
        assert_eq!(last.fields["sku"], "4");
        // Bad rows keep their index, so row-number ids stay stable.
        assert_eq!(last.index, 3);
        assert_eq!(last.id, "4");
        assert_eq!(last.line, 5);
    }

    #[test]
    fn invalid_utf8_cells_are_row_errors_naming_the_column() {
        let errs = row_errs(
            "products.csv",
            b"sku,desc\n1,ok\n2,caf\xE9\n\"3\nx\",\xC3\n4,fine\n",
            None,
        );
        assert_eq!(
            errs,
            [
                "products.csv:3:2: invalid UTF-8 in column \"desc\"",
                "products.csv:4:2: invalid UTF-8 in column \"desc\"",
            ]
        );
    }

    #[test]
    fn nul_bytes_are_kept_as_data() {
        let rows: Vec<Row> = rows(b"a,b\nx\0y,\0\n")
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows[0].fields["a"], "x\0y");
        assert_eq!(rows[0].fields["b"], "\0");
    }

    #[test]
    fn a_10_mb_cell_is_read_whole() {
        let big = "x".repeat(10 * 1024 * 1024);
        let content = format!("id,text\n1,\"{big}\"\n2,{big}\n3,small\n");
        let rows: Vec<Row> = rows(content.as_bytes())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].fields["text"].as_str().unwrap().len(), big.len());
        assert_eq!(rows[1].fields["text"].as_str().unwrap().len(), big.len());
        assert_eq!(rows[2].line, 4);
    }

    #[test]
    fn an_unclosed_quote_is_a_row_error_at_the_quote_never_a_merged_row() {
        let (_dir, path) = file("data.csv", b"a,b\n1,\"open\n2,3\n");
        let items: Vec<_> = open(&path, None).unwrap().collect();
        assert_eq!(items.len(), 1, "{items:?}");
        let e = items[0].as_ref().unwrap_err();
        assert!(e.is_row_error());
        assert_eq!(e.line(), Some(2));
        assert!(
            msg(e, &path).starts_with("data.csv:2:3: this quote is never closed"),
            "{e}"
        );
        // After a BOM, on a later line, after a closed multi-line cell and a "" escape.
        let (_dir, path) = file(
            "data.csv",
            "\u{feff}a,b\n\"x\ny\",\"say \"\"hi\"\"\"\n\u{e9}\u{e9},z\n3,\"4\n5,6\n".as_bytes(),
        );
        let items: Vec<_> = open(&path, None).unwrap().collect();
        assert_eq!(items.len(), 3, "{items:?}");
        assert!(items[0].is_ok() && items[1].is_ok(), "{items:?}");
        let e = items[2].as_ref().unwrap_err();
        assert!(msg(e, &path).starts_with("data.csv:5:3:"), "{e}");
        // A quote closed on the very last byte, no newline after it, is fine.
        assert!(rows(b"a,b\n1,\"x\ny\"").into_iter().all(|r| r.is_ok()));
        // An unclosed quote in the header.
        let (_, m) = open_err("data.csv", b"a,\"b\n1,2\n", None);
        assert!(m.starts_with("data.csv:1:3:"), "{m}");
    }
}
