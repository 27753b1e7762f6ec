//! Batch output and error files back into journal records, joined to rows by `custom_id`.

use std::io::BufRead;

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::input::parse_custom_id;
use crate::client::Provider;
use crate::cost::{ModelPrice, Tier};
use crate::journal::{Record, Status};
use crate::slots::TextSlots;

/// Why a result line could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line {line}: not JSON ({source})")]
    Json {
        line: usize,
        source: serde_json::Error,
    },
    #[error(
        "line {line}: custom_id '{id}' was not written by promptmill (expected row-<index>-<hash>)"
    )]
    CustomId { line: usize, id: String },
    #[error("line {line}: row {row} is not in the input (it has {rows} rows)")]
    UnknownRow { line: usize, row: u64, rows: u64 },
    #[error("line {line}: reading the row id: {source}")]
    Ids { line: usize, source: std::io::Error },
}

/// Turns result lines into records: a row's id comes from `ids` (indexed by row), prices
/// are batch prices.
pub struct Joiner<'a> {
    /// Row ids by row index, on disk (none for rows the input could not read): the
    /// `custom_id` carries the index, so joining holds nothing per row in memory.
    pub ids: &'a TextSlots,
    pub provider: &'a dyn Provider,
    pub price: Option<&'a ModelPrice>,
}

impl Joiner<'_> {
    /// Hands `f` every record of one output or error file, in file order, reading one line
    /// at a time (a batch's output can be hundreds of megabytes).
    pub fn for_each(
        &self,
        mut reader: impl BufRead,
        mut f: impl FnMut(Record) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut raw = Vec::new();
        let mut line = 0;
        loop {
            raw.clear();
            if reader.read_until(b'\n', &mut raw)? == 0 {
                return Ok(());
            }
            line += 1;
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            f(self.record(line, &raw)?)?;
        }
    }

    fn record(&self, line: usize, raw: &[u8]) -> Result<Record, LineError> {
        let v: Value =
            serde_json::from_slice(raw).map_err(|source| LineError::Json { line, source })?;
        let cid = v["custom_id"].as_str().unwrap_or("");
        let (row, hash) = parse_custom_id(cid).ok_or_else(|| LineError::CustomId {
            line,
            id: cid.to_string(),
        })?;
        let id = self
            .ids
            .get(row)
            .map_err(|source| LineError::Ids { line, source })?
            .ok_or(LineError::UnknownRow {
                line,
                row,
                rows: self.ids.rows(),
            })?;
        // Failed until the response says otherwise; the error is set on every failed path.
        let mut rec = Record {
            batch: true,
            ..Record::failed(row, id, hash.to_string(), 1, String::new())
        };
        let resp = &v["response"];
        // vLLM's `run-batch` writes a refused request with `body: null` and the reason in
        // `error` (its text, or an error object): there is no answer to parse.
        let refused = resp["body"].is_null() && !v["error"].is_null();
        if resp.is_object() && !refused {
            let status = resp["status_code"].as_u64().unwrap_or(0) as u16;
            let body = serde_json::to_vec(&resp["body"]).unwrap_or_default();
            match self.provider.parse(status, &HeaderMap::new(), &body) {
                Ok(c) => {
                    rec.cost_pico = match (&c.usage, self.price) {
                        (Some(u), Some(p)) => Some(p.cost(u, Tier::Batch).0),
                        _ => None,
                    };
                    rec.usage = c.usage;
                    match c.unusable {
                        // A refusal or content filter: billed, failed, retried by
                        // `--retry-failed`.
                        Some(why) => rec.error = Some(format!("batch: {why}")),
                        None => {
                            rec.status = Status::Ok;
                            rec.error = None;
                            rec.choices = c.choices;
                        }
                    }
                }
                Err(e) => rec.error = Some(format!("batch: {e}")),
            }
        } else {
            rec.error = Some(format!("batch: {}", error_text(&v["error"], resp)));
        }
        Ok(rec)
    }
}

/// The words of a result line's `error`: OpenAI's `{code, message}`, an error response
/// `{error: {code, message}}` (vLLM), or plain text (vLLM), with the HTTP status when the
/// line has one.
fn error_text(error: &Value, resp: &Value) -> String {
    let inner = if error["error"].is_object() {
        &error["error"]
    } else {
        error
    };
    let code = match &inner["code"] {
        Value::String(c) => c.clone(),
        Value::Number(n) => n.to_string(),
        _ => match resp["status_code"].as_u64() {
            Some(status) => format!("HTTP {status}"),
            None => "error".into(),
        },
    };
    let msg = match (error, inner["message"].as_str()) {
        (Value::String(text), _) => text.as_str(),
        (_, Some(m)) => m,
        _ => "no message",
    };
    format!("{code}: {msg}")
}

/// Puts an answered record through the job's structured-output schema, with the code a live
/// answer goes through ([`crate::schema::structure`]): its fields become the row's columns.
/// A live run retries an answer that does not follow the schema; a batch cannot, so the row
/// fails with the schema error (`--retry-failed` sends it again) and keeps the usage and
/// cost of the answer, which was billed all the same.
pub fn apply_schema(rec: &mut Record, schema: &Value) {
    if rec.status != Status::Ok {
        return;
    }
    match crate::schema::structure(schema, &rec.choices) {
        Ok(fields) => rec.fields = Some(fields),
        Err(e) => {
            rec.status = Status::Failed;
            rec.error = Some(format!("batch: {e}"));
            rec.choices.clear();
            rec.fields = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::OpenAi;
    use crate::config::Endpoint;

    #[test]
    fn output_and_error_lines_become_records() {
        let dir = tempfile::tempdir().unwrap();
        let ids = TextSlots::from_rows(
            &dir.path().join("j"),
            [(0, "a".to_string()), (1, "b".to_string())],
        )
        .unwrap();
        let provider = OpenAi::new(Endpoint::Chat);
        let j = Joiner {
            ids: &ids,
            provider: &provider,
            price: None,
        };
        let ok = r#"{"id":"x","custom_id":"row-1-h1","response":{"status_code":200,"body":{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}},"error":null}"#;
        let bad = r#"{"id":"y","custom_id":"row-0-h0","response":{"status_code":400,"body":{"error":{"message":"nope","type":"invalid_request_error"}}},"error":null}"#;
        let expired = r#"{"id":"z","custom_id":"row-0-h0","response":null,"error":{"code":"batch_expired","message":"not done in time"}}"#;
        let text = format!("{ok}\n{bad}\n\n{expired}\n");
        let records = |bytes: &[u8]| {
            let mut out = Vec::new();
            j.for_each(bytes, |r| {
                out.push(r);
                Ok(())
            })
            .map(|()| out)
        };
        let recs = records(text.as_bytes()).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(
            (recs[0].row, recs[0].id.as_str(), recs[0].status),
            (1, "b", Status::Ok)
        );
        assert_eq!(recs[0].choices[0].text, "hi");
        assert!(recs[0].batch);
        assert_eq!(recs[1].status, Status::Failed);
        assert!(recs[1].error.as_deref().unwrap().contains("nope"));
        assert!(recs[2].error.as_deref().unwrap().contains("batch_expired"));
        let err = records(b"{\"custom_id\":\"row-9-h\"}").unwrap_err();
        assert!(err.to_string().contains("row 9"), "{err}");
    }

    #[test]
    fn vllm_refusals_keep_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ids = TextSlots::from_rows(&dir.path().join("j"), [(0, "a".to_string())]).unwrap();
        let provider = OpenAi::new(Endpoint::Chat);
        let j = Joiner {
            ids: &ids,
            provider: &provider,
            price: None,
        };
        let text = r#"{"id":"vllm-1","custom_id":"row-0-h","response":{"status_code":400,"request_id":"vllm-batch-1","body":null},"error":"URL /v1/x was used."}
{"id":"vllm-2","custom_id":"row-0-h","response":{"status_code":400,"request_id":"vllm-batch-2","body":null},"error":{"error":{"message":"too long","type":"BadRequestError","code":400}}}
"#;
        let mut errors = Vec::new();
        j.for_each(text.as_bytes(), |r| {
            assert_eq!(r.status, Status::Failed);
            errors.push(r.error.unwrap_or_default());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            errors,
            [
                "batch: HTTP 400: URL /v1/x was used.",
                "batch: 400: too long"
            ]
        );
    }

    #[test]
    fn the_schema_gives_fields_or_fails_the_row_keeping_what_it_cost() {
        let schema = serde_json::json!({"type": "object", "required": ["a"],
            "properties": {"a": {"type": "string"}}});
        let answered = |text: &str, finish: &str| Record {
            status: Status::Ok,
            error: None,
            choices: vec![crate::client::Choice {
                text: text.into(),
                finish_reason: Some(finish.into()),
            }],
            usage: Some(crate::types::Usage {
                prompt_tokens: 7,
                completion_tokens: 3,
                ..Default::default()
            }),
            cost_pico: Some(99),
            batch: true,
            ..Record::failed(0, "a".into(), "h".into(), 1, String::new())
        };
        let mut ok = answered(r#"{"a": "x"}"#, "stop");
        apply_schema(&mut ok, &schema);
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(ok.fields.as_ref().unwrap()["a"], "x");

        let mut bad = answered("Sure! {\"a\":", "stop");
        apply_schema(&mut bad, &schema);
        assert_eq!(bad.status, Status::Failed);
        let err = bad.error.as_deref().unwrap();
        assert!(err.contains("does not follow model.schema"), "{err}");
        assert!(bad.choices.is_empty() && bad.fields.is_none());
        assert_eq!(
            (bad.usage.unwrap().prompt_tokens, bad.cost_pico),
            (7, Some(99))
        );

        let mut cut = answered(r#"{"a": "#, "length");
        apply_schema(&mut cut, &schema);
        assert!(cut.error.as_deref().unwrap().contains("max_tokens"));

        let mut failed = Record::failed(0, "a".into(), "h".into(), 1, "batch: nope".into());
        apply_schema(&mut failed, &schema);
        assert_eq!(
            failed.error.as_deref(),
            Some("batch: nope"),
            "failures stay as they are"
        );
    }
}
