//! The page itself: `page.html` with its style, script and data put in. The data is written
//! row by row as it is read, so a large output never sits in memory as a whole.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::ReportError;

const HTML: &str = include_str!("page.html");
const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// Where the data block goes in `page.html`.
const DATA_MARK: &str = "{{data}}";

/// One column of the table: its name and what it holds (`input` cells copied from the input,
/// `output` text, structured-output or other generated `field`s, and the `result` columns
/// promptmill adds: status, tokens, cost…).
#[derive(Debug, Clone, Serialize)]
pub(super) struct Column {
    pub(super) name: String,
    pub(super) kind: &'static str,
}

/// Takes the rows of the table, one at a time, into the page.
pub(super) struct RowSink<'a> {
    out: &'a mut dyn Write,
    dest: &'a Path,
    rows: u64,
    buf: String,
}

impl RowSink<'_> {
    /// Adds one row (its cells in column order; `None` for no value).
    pub(super) fn row(&mut self, cells: &[Option<String>]) -> Result<(), ReportError> {
        let sep = if self.rows == 0 { "" } else { "," };
        self.rows += 1;
        // Serialising a slice of optional strings cannot fail.
        self.buf = serde_json::to_string(cells).unwrap_or_default();
        let escaped = escape_for_script(&self.buf);
        write!(self.out, "{sep}{escaped}").map_err(|source| ReportError::Io {
            path: self.dest.to_path_buf(),
            source,
        })
    }
}

/// Writes the page: the template up to the data, the rows `fill` streams in (it returns the
/// columns), the columns and `meta`, then the rest of the template. Returns the row count.
pub(super) fn write<F>(
    out: &mut dyn Write,
    dest: &Path,
    meta: &Value,
    fill: F,
) -> Result<u64, ReportError>
where
    F: FnOnce(&mut RowSink<'_>) -> Result<Vec<Column>, ReportError>,
{
    let io = |source| ReportError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let (head, tail) = HTML.split_once(DATA_MARK).unwrap_or((HTML, ""));
    let head = head.replace("{{csp}}", &csp()).replace("{{style}}", STYLE);
    let tail = tail.replace("{{script}}", SCRIPT);
    write!(out, "{head}{{\"rows\":[").map_err(io)?;
    let mut sink = RowSink {
        out: &mut *out,
        dest,
        rows: 0,
        buf: String::new(),
    };
    let columns = fill(&mut sink)?;
    let rows = sink.rows;
    // Serialising column names and a JSON value cannot fail.
    let columns = serde_json::to_string(&columns).unwrap_or_else(|_| "[]".into());
    let meta = serde_json::to_string(meta).unwrap_or_else(|_| "{}".into());
    write!(
        out,
        "],\"columns\":{},\"meta\":{}}}{tail}",
        escape_for_script(&columns),
        escape_for_script(&meta)
    )
    .map_err(io)?;
    Ok(rows)
}

/// The page's Content-Security-Policy: nothing may load, and only the page's own script and
/// style (named by their SHA-256) may run or apply.
fn csp() -> String {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; img-src 'none'; base-uri 'none'; \
         form-action 'none'",
        sha256_source(SCRIPT),
        sha256_source(STYLE)
    )
}

/// A CSP hash source: `sha256-` and the base64 of the digest.
fn sha256_source(text: &str) -> String {
    format!(
        "sha256-{}",
        STANDARD.encode(Sha256::digest(text.as_bytes()))
    )
}

/// JSON text made safe inside `<script type="application/json">`: `<`, `>` and `&` become
/// `\u003c`… (so no cell can write `</script>` or `<!--`), and U+2028/U+2029 are escaped
/// too. These characters only occur inside JSON strings, where the escapes mean the same.
fn escape_for_script(json: &str) -> std::borrow::Cow<'_, str> {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json.into();
    }
    let mut s = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => s.push_str("\\u003c"),
            '>' => s.push_str("\\u003e"),
            '&' => s.push_str("\\u0026"),
            '\u{2028}' => s.push_str("\\u2028"),
            '\u{2029}' => s.push_str("\\u2029"),
            c => s.push(c),
        }
    }
    s.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_json_has_no_markup_and_means_the_same() {
        let cells = vec![
            Some("</script><script>alert(1)</script>".to_string()),
            Some("<!-- a & b \u{2028}\u{2029} >".to_string()),
            None,
        ];
        let json = serde_json::to_string(&cells).unwrap();
        let safe = escape_for_script(&json);
        for bad in ["<", ">", "&", "\u{2028}", "\u{2029}"] {
            assert!(!safe.contains(bad), "{bad:?} in {safe}");
        }
        let back: Vec<Option<String>> = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, cells);
    }

    #[test]
    fn csp_hashes_are_sha256_in_base64() {
        // printf "" | sha256sum | xxd -r -p | base64
        assert_eq!(
            sha256_source(""),
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn the_template_has_every_placeholder_once() {
        for mark in ["{{csp}}", "{{style}}", DATA_MARK, "{{script}}"] {
            assert_eq!(HTML.matches(mark).count(), 1, "{mark}");
        }
        // The script and style go inside elements they must not close.
        assert!(!SCRIPT.contains("</script"));
        assert!(!STYLE.contains("</style"));
    }
}
