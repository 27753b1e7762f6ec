//! JSONL (NDJSON): one JSON object per line; values keep their JSON types.
//!
//! Lines are read into one reused buffer and parsed on their own, so a bad line is a row
//! error and the next line still parses. serde_json's recursion limit turns a hostile
//! `[[[[…` into an error instead of a stack overflow.

use super::{find_id_column, id_from_value, SourceError};
use crate::types::{json_type, Row};
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads rows from a JSONL file.
pub(super) struct JsonlReader {
    reader: BufReader<File>,
    /// Reused for every line, so reading does not allocate.
    buf: Vec<u8>,
    /// Lines read so far (the 1-based number of the line in `buf`).
    line: u64,
    id_column: Option<String>,
    /// 0-based index of the next row; bad lines take one too (blank lines do not).
    index: u64,
    /// The first row, read at open time to learn the columns.
    peeked: Option<Result<Row, SourceError>>,
}

impl JsonlReader {
    /// Reads the first object to learn the columns (its keys, in order) and checks the id
    /// column against them. A first line that is not an object is not fatal: it is handed
    /// out as the first row error and the columns are left empty.
    pub(super) fn open(
        file: File,
        path: &Path,
        id_column: Option<&str>,
    ) -> Result<(Vec<String>, JsonlReader), SourceError> {
        let mut this = JsonlReader {
            reader: BufReader::with_capacity(64 * 1024, file),
            buf: Vec::new(),
            line: 0,
            id_column: id_column.map(str::to_owned),
            index: 0,
            peeked: None,
        };
        let first = match this.read_row(path) {
            Some(Err(e)) if !e.is_row_error() => return Err(e),
            Some(first) => first,
            None => {
                return Err(SourceError::Empty {
                    path: path.to_path_buf(),
                    expected: "expected JSON objects, one per line",
                })
            }
        };
        // The first object's keys are the columns. When its id is bad the row is still an
        // object: parse the line again for its keys, so a missing id reads as a missing column.
        let keys: Option<Vec<String>> = match &first {
            Ok(row) => Some(row.fields.keys().cloned().collect()),
            Err(SourceError::BadId { .. }) => match serde_json::from_slice::<Value>(&this.buf) {
                Ok(Value::Object(map)) => Some(map.keys().cloned().collect()),
                _ => None,
            },
            Err(_) => None,
        };
        let mut columns = Vec::new();
        if let Some(keys) = keys {
            find_id_column(path, this.line, &keys, id_column)?;
            columns = keys;
        }
        this.peeked = Some(first);
        Ok((columns, this))
    }

    /// The next row, a row error, or `None` at the end.
    pub(super) fn next_row(&mut self, path: &Path) -> Option<Result<Row, SourceError>> {
        match self.peeked.take() {
            Some(first) => Some(first),
            None => self.read_row(path),
        }
    }

    /// Reads the next non-blank line and turns it into a row.
    fn read_row(&mut self, path: &Path) -> Option<Result<Row, SourceError>> {
        loop {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error) => {
                    return Some(Err(SourceError::Read {
                        path: path.to_path_buf(),
                        line: self.line + 1,
                        error,
                    }))
                }
            }
            self.line += 1;
            if self.line == 1 && self.buf.starts_with(BOM) {
                self.buf.drain(..BOM.len());
            }
            // Drop the line ending so a truncated line reports its error on this line.
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            // JSON's own whitespace; anything else on the line is for the parser to judge.
            if self
                .buf
                .iter()
                .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            {
                continue;
            }
            let index = self.index;
            self.index += 1;
            return Some(self.parse_line(path, index));
        }
    }

    /// Parses `self.buf` (line `self.line`) into a row.
    fn parse_line(&self, path: &Path, index: u64) -> Result<Row, SourceError> {
        let line = self.line;
        let fields = match serde_json::from_slice::<Value>(&self.buf) {
            Ok(Value::Object(fields)) => fields,
            Ok(other) => {
                return Err(SourceError::NotAnObject {
                    path: path.to_path_buf(),
                    line,
                    found: json_type(&other),
                })
            }
            Err(e) => return Err(invalid_json(path, line, &e)),
        };
        let id = match &self.id_column {
            None => (index + 1).to_string(),
            Some(name) => {
                id_from_value(fields.get(name)).map_err(|problem| SourceError::BadId {
                    path: path.to_path_buf(),
                    line,
                    column: None,
                    name: name.clone(),
                    problem,
                })?
            }
        };
        Ok(Row {
            index,
            line,
            id,
            fields,
        })
    }
}

/// A serde_json error as a row error at `line`, with the message's own position removed.
fn invalid_json(path: &Path, line: u64, e: &serde_json::Error) -> SourceError {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let message = text.strip_suffix(&position).unwrap_or(&text).to_owned();
    SourceError::InvalidJson {
        path: path.to_path_buf(),
        // The buffer holds one line, so the parser's line is 1; stay right if it ever is not.
        line: line + (e.line() as u64).saturating_sub(1),
        column: (e.column() as u64).max(1),
        message,
    }
}

#[cfg(test)]
mod tests {
    use crate::source::test_files::{file, msg, open, open_err};
    use crate::types::Row;
    use serde_json::{json, Value};

    /// Every item as `Ok(row)` or `Err(message without the temp dir)`.
    fn items(content: &[u8], id: Option<&str>) -> Vec<Result<Row, String>> {
        let (_dir, path) = file("data.jsonl", content);
        open(&path, id)
            .unwrap()
            .map(|r| {
                r.map_err(|e| {
                    assert!(e.is_row_error(), "{e}");
                    assert!(e.line().is_some(), "{e}");
                    msg(&e, &path)
                })
            })
            .collect()
    }

    #[test]
    fn reads_objects_keeping_types_and_key_order() {
        let content =
            b"{\"sku\":\"A1\",\"price\":4.5,\"tags\":[\"a\",\"b\"],\"meta\":{\"x\":null}}\n\
                        {\"sku\":\"B2\",\"price\":3}\n";
        let (_dir, path) = file("data.jsonl", content);
        let source = open(&path, Some("sku")).unwrap();
        assert_eq!(source.columns(), ["sku", "price", "tags", "meta"]);
        let rows: Vec<Row> = source.map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "A1");
        assert_eq!(rows[0].line, 1);
        assert_eq!(rows[0].index, 0);
        assert_eq!(rows[0].fields["tags"], json!(["a", "b"]));
        assert_eq!(rows[0].fields["meta"], json!({"x": null}));
        let keys: Vec<&String> = rows[0].fields.keys().collect();
        assert_eq!(keys, ["sku", "price", "tags", "meta"]);
        assert_eq!(rows[1].id, "B2");
        assert_eq!(rows[1].fields["price"], json!(3));
    }

    #[test]
    fn blank_lines_are_skipped_and_lines_are_file_lines() {
        let content = b"\n  \n{\"a\":1}\r\n\t\r\n\n{\"a\":2}";
        let rows: Vec<Row> = items(content, None)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let got: Vec<(u64, u64, &str)> = rows
            .iter()
            .map(|r| (r.index, r.line, r.id.as_str()))
            .collect();
        assert_eq!(got, [(0, 3, "1"), (1, 6, "2")]);
    }

    #[test]
    fn a_bom_is_skipped() {
        let (_dir, path) = file("data.jsonl", b"\xEF\xBB\xBF{\"id\":7}\n");
        let mut source = open(&path, Some("id")).unwrap();
        assert_eq!(source.columns(), ["id"]);
        assert_eq!(source.next().unwrap().unwrap().id, "7");
    }

    #[test]
    fn numeric_ids_are_their_json_text() {
        let got: Vec<String> = items(b"{\"id\":42}\n{\"id\":1.5}\n{\"id\":\"x-1\"}\n", Some("id"))
            .into_iter()
            .map(|r| r.unwrap().id)
            .collect();
        assert_eq!(got, ["42", "1.5", "x-1"]);
    }

    #[test]
    fn bad_ids_are_row_errors() {
        let content = b"{\"id\":1}\n{\"name\":\"x\"}\n{\"id\":\"\"}\n{\"id\":null}\n{\"id\":[1]}\n{\"id\":true}\n{\"id\":2}\n";
        let errs: Vec<String> = items(content, Some("id"))
            .into_iter()
            .filter_map(Result::err)
            .collect();
        assert_eq!(
            errs,
            [
                "data.jsonl:2: id column \"id\" is missing",
                "data.jsonl:3: id column \"id\" is empty",
                "data.jsonl:4: id column \"id\" is empty",
                "data.jsonl:5: id column \"id\" must be a string or a number, found array",
                "data.jsonl:6: id column \"id\" must be a string or a number, found boolean",
            ]
        );
    }

    #[test]
    fn id_column_missing_from_the_first_object_is_fatal() {
        let (e, m) = open_err("data.jsonl", b"\n{\"sku\":1,\"name\":\"a\"}\n", Some("id"));
        assert_eq!(
            m,
            "data.jsonl:2: id column \"id\" is not in the header; available columns: \"sku\", \"name\""
        );
        assert!(!e.is_row_error());
    }

    #[test]
    fn empty_file_is_fatal() {
        for content in [&b""[..], b"\n \n\r\n", b"\xEF\xBB\xBF"] {
            let (e, m) = open_err("data.jsonl", content, None);
            assert_eq!(
                m,
                "data.jsonl: file is empty: expected JSON objects, one per line"
            );
            assert!(!e.is_row_error());
        }
    }

    #[test]
    fn non_objects_are_row_errors() {
        let got = items(b"[1,2]\n\"text\"\n3\nnull\ntrue\n{\"a\":1}\n", None);
        let errs: Vec<&String> = got.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(
            errs,
            [
                "data.jsonl:1: expected a JSON object, found array",
                "data.jsonl:2: expected a JSON object, found string",
                "data.jsonl:3: expected a JSON object, found number",
                "data.jsonl:4: expected a JSON object, found null",
                "data.jsonl:5: expected a JSON object, found boolean",
            ]
        );
        let last = got[5].as_ref().unwrap();
        assert_eq!((last.index, last.line, last.id.as_str()), (5, 6, "6"));
    }

    #[test]
    fn a_bad_first_line_is_a_row_error_not_a_fatal_one() {
        let (_dir, path) = file("data.jsonl", b"[1]\n{\"a\":1,\"b\":2}\n");
        let source = open(&path, None).unwrap();
        assert!(source.columns().is_empty());
        let items: Vec<_> = source.collect();
        assert_eq!(
            msg(items[0].as_ref().unwrap_err(), &path),
            "data.jsonl:1: expected a JSON object, found array"
        );
        assert_eq!(items[1].as_ref().unwrap().fields["b"], json!(2));
    }

    #[test]
    fn invalid_json_is_a_row_error_with_line_and_column() {
        let content =
            b"{\"a\":1}\n{\"a\": }\n{\"a\":1} x\n{\"a\":\n{\"a\":\"caf\xE9\"}\n{\"a\":2}\n";
        let got = items(content, None);
        let errs: Vec<&String> = got.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(
            errs,
            [
                "data.jsonl:2:7: invalid JSON: expected value",
                "data.jsonl:3:9: invalid JSON: trailing characters",
                "data.jsonl:4:5: invalid JSON: EOF while parsing a value",
                "data.jsonl:5:10: invalid JSON: invalid unicode code point",
            ]
        );
        assert_eq!(got[5].as_ref().unwrap().fields["a"], json!(2));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut content = "[".repeat(100_000).into_bytes();
        content.extend_from_slice(b"\n{\"ok\":true}\n");
        let got = items(&content, None);
        assert_eq!(
            got[0].as_ref().unwrap_err(),
            "data.jsonl:1:128: invalid JSON: recursion limit exceeded"
        );
        assert_eq!(got[1].as_ref().unwrap().fields["ok"], json!(true));
        let nested = format!(
            "{{\"a\":{}1{}}}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let got = items(nested.as_bytes(), None);
        assert!(got[0]
            .as_ref()
            .unwrap_err()
            .ends_with("invalid JSON: recursion limit exceeded"));
    }

    #[test]
    fn nul_bytes_are_invalid_json_outside_strings_and_data_inside() {
        let got = items(b"{\"a\":\"x\\u0000y\"}\n{\"a\":\0}\n", None);
        assert_eq!(got[0].as_ref().unwrap().fields["a"], Value::from("x\0y"));
        assert_eq!(
            got[1].as_ref().unwrap_err(),
            "data.jsonl:2:6: invalid JSON: expected value"
        );
    }

    #[test]
    fn a_10_mb_value_is_read_whole() {
        let big = "y".repeat(10 * 1024 * 1024);
        let content = format!("{{\"text\":\"{big}\"}}\n{{\"text\":\"small\"}}\n");
        let rows: Vec<Row> = items(content.as_bytes(), None)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows[0].fields["text"].as_str().unwrap().len(), big.len());
        assert_eq!(rows[1].line, 2);
    }
}
