//! Anthropic's Message Batches as a batch backend: `POST /messages/batches` takes the
//! requests in its JSON body (no file upload), `GET /messages/batches/{id}` polls,
//! `GET /messages/batches/{id}/results` gives one JSONL line per request, in any order.
//!
//! The rest of batch mode speaks OpenAI's words, so this module translates at the edge: a
//! batch becomes a [`BatchObject`] (`ended` is `completed`, or `expired`/`cancelled` when
//! some requests were), and result lines become OpenAI output lines that
//! [`Joiner`](super::results::Joiner) reads with the job's provider (here Anthropic) parsing
//! each `message`. Input lines are `{"custom_id", "params"}` (the elements of `requests`),
//! kept in the same input files; custom ids are the same `row-<index>-<hash>`, which fit
//! Anthropic's `^[a-zA-Z0-9_-]{1,64}$` (32 hex digits of hash, at most 20 of index).
//!
//! Crash safety without metadata: Anthropic batches carry nothing of ours, so a batch whose
//! create was sent but whose answer was lost can only be recognised by its shape. Before the
//! POST, the chunk records `create_started` and the time; a later run lists the batches
//! created since then (less [`CLOCK_SLACK_SECS`]) with the chunk's request count that the
//! state does not already know: none means the create never happened (create it), one is
//! taken as this chunk's, more than one stops with a message saying what to check. A batch
//! taken that way is checked when collected: its results must be for exactly the chunk's
//! custom ids (which include each request's hash), or nothing is journaled.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, BufWriter, Seek as _, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{BatchApi, BatchObject};
use super::input;
use super::state::{BatchState, RequestCounts};
use crate::client::{self, Secret};
use crate::config::Job;
use crate::slots::temp_file_beside;
use crate::time::parse_rfc3339;

/// How far before the recorded start of a lost create a batch may have been stamped by the
/// API (our clock may run ahead of the API's): wide, since a batch left out is a batch
/// submitted twice, while one too many only stops the run with a question.
pub const CLOCK_SLACK_SECS: u64 = 600;

/// Pages of 100 looked through for a lost batch.
const MAX_LIST_PAGES: usize = 20;

/// A client for one job's Message Batches.
pub struct MessageBatches {
    api: BatchApi,
}

/// A Message Batch as the API answers it.
#[derive(Debug, Deserialize)]
struct WireBatch {
    id: String,
    processing_status: String,
    #[serde(default)]
    request_counts: WireCounts,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    cancel_initiated_at: Option<String>,
    #[serde(default)]
    results_url: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct WireCounts {
    #[serde(default)]
    processing: u64,
    #[serde(default)]
    succeeded: u64,
    #[serde(default)]
    errored: u64,
    #[serde(default)]
    canceled: u64,
    #[serde(default)]
    expired: u64,
}

impl WireCounts {
    fn total(&self) -> u64 {
        self.processing + self.succeeded + self.errored + self.canceled + self.expired
    }
}

#[derive(Deserialize)]
struct Page {
    data: Vec<WireBatch>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

fn unix(rfc3339: Option<&str>) -> Option<u64> {
    let t = parse_rfc3339(rfc3339?)?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

impl WireBatch {
    /// In batch mode's words: canceled requests are neither completed nor failed (they have
    /// no result and are submitted again), expired ones are failed (as in OpenAI's files).
    fn into_object(self) -> BatchObject {
        let c = self.request_counts;
        let status = match self.processing_status.as_str() {
            "ended" if c.expired > 0 => "expired",
            "ended" if c.canceled > 0 || self.cancel_initiated_at.is_some() => "cancelled",
            "ended" => "completed",
            "canceling" => "cancelling",
            other => other,
        }
        .to_string();
        BatchObject {
            id: self.id,
            status,
            input_file_id: String::new(),
            // Only its presence matters: the results are fetched from our own base URL.
            output_file_id: self.results_url,
            error_file_id: None,
            request_counts: Some(RequestCounts {
                total: c.total(),
                completed: c.succeeded,
                failed: c.errored + c.expired,
            }),
            created_at: unix(self.created_at.as_deref()),
            expires_at: unix(self.expires_at.as_deref()),
            metadata: None,
            errors: None,
        }
    }
}

/// One input line: `{"custom_id", "params"}` with the live request body as `params`
/// (without `stream`, which batches do not take).
pub fn line(row: u64, hash: &str, body: &Value) -> Vec<u8> {
    let mut params = body.clone();
    if let Some(m) = params.as_object_mut() {
        m.remove("stream");
    }
    let v = json!({"custom_id": input::custom_id(row, hash), "params": params});
    let mut bytes = v.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

/// An order-independent fingerprint of a set of custom ids: (count, wrapping sum of their
/// hashes). Equal sets give equal fingerprints; memory stays flat however many there are.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Fingerprint(u64, u64);

impl Fingerprint {
    fn add(&mut self, custom_id: &str) {
        let mut h = DefaultHasher::new();
        custom_id.hash(&mut h);
        self.0 += 1;
        self.1 = self.1.wrapping_add(h.finish());
    }
}

/// The custom ids of an input file, fingerprinted.
fn input_fingerprint(path: &Path) -> anyhow::Result<Fingerprint> {
    #[derive(Deserialize)]
    struct Line {
        custom_id: String,
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut fp = Fingerprint::default();
    for (n, l) in std::io::BufReader::new(file).lines().enumerate() {
        let l = l.with_context(|| format!("{}: cannot read", path.display()))?;
        if l.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(&l)
            .with_context(|| format!("{}: line {}: not an input line", path.display(), n + 1))?;
        fp.add(&parsed.custom_id);
    }
    Ok(fp)
}

/// Result lines as OpenAI batch output lines, one for one (a canceled request becomes an
/// empty line, so the line numbers in errors stay those of the results file), written to
/// `out` as they are read; returns the fingerprint of their custom ids.
fn to_output_lines(mut results: impl BufRead, out: &mut impl Write) -> anyhow::Result<Fingerprint> {
    let mut fp = Fingerprint::default();
    let mut raw = Vec::new();
    let mut n = 0;
    loop {
        raw.clear();
        if results
            .read_until(b'\n', &mut raw)
            .context("reading results")?
            == 0
        {
            return Ok(fp);
        }
        n += 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            out.write_all(b"\n")?;
            continue;
        }
        let v: Value =
            serde_json::from_slice(&raw).with_context(|| format!("results line {n}: not JSON"))?;
        let cid = v["custom_id"].as_str().unwrap_or("");
        fp.add(cid);
        let result = &v["result"];
        let line = match result["type"].as_str().unwrap_or("") {
            "succeeded" => json!({"custom_id": cid, "error": null,
                "response": {"status_code": 200, "body": result["message"]}}),
            "errored" => {
                let kind = result["error"]["error"]["type"].as_str().unwrap_or("");
                let status = client::status_for_error_type(kind).unwrap_or(400);
                json!({"custom_id": cid, "error": null,
                    "response": {"status_code": status, "body": result["error"]}})
            }
            "expired" => json!({"custom_id": cid, "response": null, "error": {"code": "expired",
                "message": "the batch expired (24 hours) before this request was processed"}}),
            "canceled" => {
                out.write_all(b"\n")?;
                continue;
            }
            other => bail!("results line {n}: unknown result type '{other}'"),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
}

/// A results file as OpenAI output lines (see [`to_output_lines`]), in an unnamed temporary
/// file beside `beside`, rewound.
pub fn output_lines(results: File, beside: &Path) -> anyhow::Result<File> {
    Ok(convert(results, beside)?.0)
}

fn convert(results: File, beside: &Path) -> anyhow::Result<(File, Fingerprint)> {
    let out = temp_file_beside(beside).context("cannot create a temporary file")?;
    let mut w = BufWriter::new(out);
    let fp = to_output_lines(BufReader::new(results), &mut w)?;
    let mut out = w.into_inner().map_err(|e| e.into_error())?;
    out.rewind()?;
    Ok((out, fp))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl MessageBatches {
    /// The client for `job` (reads nothing from the network).
    pub fn for_job(job: &Job, key: Secret) -> anyhow::Result<MessageBatches> {
        Ok(MessageBatches {
            api: BatchApi::for_job(job, key)?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/messages/batches{path}", self.api.base)
    }

    /// `POST /messages/batches` with the requests of one input file.
    async fn create(&self, input: &Path) -> anyhow::Result<BatchObject> {
        let what = format!("creating a message batch from {}", input.display());
        let lines = tokio::fs::read(input)
            .await
            .with_context(|| format!("{}: cannot read", input.display()))?;
        // The file's lines are the elements of `requests`: join them, no parsing needed.
        let mut body = Vec::with_capacity(lines.len() + 16);
        body.extend_from_slice(b"{\"requests\":[");
        for (k, l) in lines
            .split(|c| *c == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .enumerate()
        {
            if k > 0 {
                body.push(b',');
            }
            body.extend_from_slice(l);
        }
        body.extend_from_slice(b"]}");
        let req = self
            .api
            .http
            .post(self.url(""))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let b: WireBatch = self.api.json(req, &what).await?;
        Ok(b.into_object())
    }

    /// `POST /messages/batches/{id}/cancel`: the batch stops (`canceling`, then ended);
    /// what it finished stays in its results.
    pub async fn cancel(&self, id: &str) -> anyhow::Result<BatchObject> {
        let req = self.api.http.post(self.url(&format!("/{id}/cancel")));
        let b: WireBatch = self
            .api
            .json(req, &format!("cancelling batch {id}"))
            .await?;
        Ok(b.into_object())
    }

    /// `GET /messages/batches/{id}`.
    pub async fn retrieve(&self, id: &str) -> anyhow::Result<BatchObject> {
        let req = self.api.http.get(self.url(&format!("/{id}")));
        let b: WireBatch = self.api.json(req, &format!("checking batch {id}")).await?;
        Ok(b.into_object())
    }

    /// Batches created at or after `since` (unix seconds), newest first.
    async fn list_since(&self, since: u64) -> anyhow::Result<Vec<BatchObject>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut req = self.api.http.get(self.url("")).query(&[("limit", "100")]);
            if let Some(a) = &after {
                req = req.query(&[("after_id", a.as_str())]);
            }
            let page: Page = self.api.json(req, "listing message batches").await?;
            let mut older = false;
            for b in page.data {
                let b = b.into_object();
                match b.created_at {
                    Some(t) if t < since => older = true,
                    _ => out.push(b),
                }
            }
            if older || !page.has_more || page.last_id.is_none() {
                return Ok(out);
            }
            after = page.last_id;
        }
        bail!(
            "listing message batches: more than {} created since the lost create; cannot \
             look through them all",
            MAX_LIST_PAGES * 100
        )
    }

    /// Creates the batch of chunk `i`, recording `create_started` (and when) in the state
    /// before the POST. If an earlier run sent that POST without recording its answer, looks
    /// for the batch first (see the module notes) and returns it instead of creating another.
    /// The caller records the returned batch in the state.
    pub async fn submit(
        &self,
        state: &mut BatchState,
        i: usize,
        path: &Path,
    ) -> anyhow::Result<BatchObject> {
        if state.chunks[i].create_started {
            if let Some(b) = self.find_lost(state, i, path).await? {
                tracing::info!(
                    "found batch {} created for {} before a restart",
                    b.id,
                    state.chunks[i].key
                );
                return Ok(b);
            }
            tracing::info!(
                "no batch was created for {} before the restart; creating it",
                state.chunks[i].key
            );
        }
        state.chunks[i].create_started = true;
        state.chunks[i].create_started_at = Some(now());
        state.save(path)?;
        super::crash_point("before-create");
        let b = self.create(&state.chunks[i].input).await?;
        super::crash_point("after-create");
        Ok(b)
    }

    /// The batch a lost create made for chunk `i`, None when it made none; an error when
    /// that cannot be told.
    async fn find_lost(
        &self,
        state: &BatchState,
        i: usize,
        path: &Path,
    ) -> anyhow::Result<Option<BatchObject>> {
        let chunk = &state.chunks[i];
        let started = chunk.create_started_at.unwrap_or(0);
        let known: HashSet<&str> = state
            .chunks
            .iter()
            .filter_map(|c| c.batch_id.as_deref())
            .collect();
        let mut found: Vec<BatchObject> = self
            .list_since(started.saturating_sub(CLOCK_SLACK_SECS))
            .await?
            .into_iter()
            .filter(|b| {
                !known.contains(b.id.as_str())
                    && b.request_counts.map(|c| c.total) == Some(chunk.requests)
            })
            .collect();
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            n => {
                let ids: Vec<&str> = found.iter().map(|b| b.id.as_str()).collect();
                Err(anyhow!(
                    "batch {key} ({requests} requests from {input}): a run was creating its \
                     batch when it stopped, and {n} batches of {requests} requests were created \
                     since then ({ids}); promptmill cannot tell which one, if any, is this \
                     chunk's, so it submits nothing. Check them (GET /v1/messages/batches/<id>, \
                     or the Console), then in {state}: set this chunk's \"batch_id\" to its \
                     batch, or set its \"create_started\" to false to submit it again",
                    key = chunk.key,
                    requests = chunk.requests,
                    input = chunk.input.display(),
                    ids = ids.join(", "),
                    state = path.display(),
                ))
            }
        }
    }

    /// The results of the batch whose `results_url` is `results_url`, as OpenAI output lines,
    /// after checking they answer exactly the requests in `input`. They are fetched from the
    /// job's base URL, never from the host the answer names: the key goes nowhere else.
    pub async fn results(&self, results_url: &str, input: &Path) -> anyhow::Result<File> {
        let id = results_url
            .trim_end_matches('/')
            .strip_suffix("/results")
            .and_then(|u| u.rsplit('/').next())
            .filter(|id| {
                !id.is_empty()
                    && id
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
            })
            .ok_or_else(|| anyhow!("results_url '{results_url}' does not name a batch"))?;
        let req = self.api.http.get(self.url(&format!("/{id}/results")));
        let raw = self
            .api
            .send_to_file(
                req,
                &format!("downloading the results of batch {id}"),
                input,
            )
            .await?;
        let (lines, got) = convert(raw, input).with_context(|| format!("batch {id}"))?;
        let want = input_fingerprint(input)?;
        if got != want {
            bail!(
                "batch {id}: its {} results are not for the {} requests of {} (it was taken for \
                 this chunk after a restart, and is another batch of the same size); nothing \
                 was recorded from it. In the batch state file, set this chunk's \"batch_id\" \
                 to null and \"create_started\" to false to submit it again",
                got.0,
                want.0,
                input.display()
            );
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_hold_params_without_stream_and_a_valid_custom_id() {
        let l = line(
            12,
            "0123456789abcdef0123456789abcdef",
            &json!({"model": "m", "stream": true, "max_tokens": 5}),
        );
        let v: Value = serde_json::from_slice(&l).unwrap();
        let cid = v["custom_id"].as_str().unwrap();
        assert!(cid.len() <= 64 && cid.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
        assert_eq!(v["params"], json!({"model": "m", "max_tokens": 5}));
        // The longest possible id still fits.
        assert!(input::custom_id(u64::MAX, "0123456789abcdef0123456789abcdef").len() <= 64);
    }

    #[test]
    fn ended_batches_map_to_batch_mode_statuses() {
        let b = |status: &str, counts: Value, cancel: Value| -> BatchObject {
            let w: WireBatch = serde_json::from_value(json!({"id": "msgbatch_1",
                "type": "message_batch", "processing_status": status, "request_counts": counts,
                "created_at": "2026-11-26T01:00:00Z", "expires_at": "2026-11-27T01:00:00Z",
                "ended_at": null, "cancel_initiated_at": cancel,
                "results_url": "https://x/v1/messages/batches/msgbatch_1/results"}))
            .unwrap();
            w.into_object()
        };
        let c = json!({"processing": 0, "succeeded": 3, "errored": 1, "canceled": 0, "expired": 0});
        let done = b("ended", c, Value::Null);
        assert_eq!(done.status, "completed");
        let counts = done.request_counts.unwrap();
        assert_eq!((counts.total, counts.completed, counts.failed), (4, 3, 1));
        assert_eq!(done.created_at, Some(1_795_654_800));
        assert_eq!(done.expires_at, Some(1_795_654_800 + 86_400));
        let c = json!({"processing": 0, "succeeded": 3, "errored": 0, "canceled": 0, "expired": 2});
        assert_eq!(b("ended", c, Value::Null).status, "expired");
        let c = json!({"processing": 0, "succeeded": 1, "errored": 0, "canceled": 3, "expired": 0});
        let cancelled = b("ended", c, json!("2026-11-26T01:05:00Z"));
        assert_eq!(cancelled.status, "cancelled");
        assert_eq!(cancelled.request_counts.unwrap().failed, 0);
        let c = json!({"processing": 4});
        assert_eq!(
            b("in_progress", c.clone(), Value::Null).status,
            "in_progress"
        );
        assert_eq!(b("canceling", c, Value::Null).status, "cancelling");
    }

    #[test]
    fn results_become_output_lines_and_are_fingerprinted() {
        let ok = r#"{"custom_id":"row-1-h1","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"hi"}],"model":"m","stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}}}"#;
        let bad = r#"{"custom_id":"row-0-h0","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"nope"}}}}"#;
        let exp = r#"{"custom_id":"row-2-h2","result":{"type":"expired"}}"#;
        let can = r#"{"custom_id":"row-3-h3","result":{"type":"canceled"}}"#;
        let text = format!("{ok}\n{bad}\n{exp}\n{can}\n");
        let mut out = Vec::new();
        let fp = to_output_lines(text.as_bytes(), &mut out).unwrap();
        let lines: Vec<&str> = std::str::from_utf8(&out).unwrap().split('\n').collect();
        let v: Vec<Value> = lines[..3]
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v[0]["response"]["status_code"], 200);
        assert_eq!(v[0]["response"]["body"]["content"][0]["text"], "hi");
        assert_eq!(v[1]["response"]["status_code"], 400);
        assert_eq!(v[1]["response"]["body"]["error"]["message"], "nope");
        assert_eq!(v[2]["error"]["code"], "expired");
        assert_eq!(lines[3], "", "a canceled request has no result");

        // The fingerprint is the input's, whatever the order.
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        let mut text = String::new();
        for (row, h) in [(3, "h3"), (2, "h2"), (1, "h1"), (0, "h0")] {
            text.push_str(std::str::from_utf8(&line(row, h, &json!({}))).unwrap());
        }
        std::fs::write(&input, &text).unwrap();
        assert_eq!(input_fingerprint(&input).unwrap(), fp);
        std::fs::write(&input, text.replace("row-3-h3", "row-3-h9")).unwrap();
        assert_ne!(input_fingerprint(&input).unwrap(), fp);

        let odd = b"{\"custom_id\":\"row-1-h\",\"result\":{\"type\":\"odd\"}}";
        let err = to_output_lines(&odd[..], &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("odd"), "{err}");
    }
}
