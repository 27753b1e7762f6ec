//! The OpenAI Files and Batches endpoints of the mock: upload a JSONL input file, create a
//! batch, poll it through `validating → in_progress → finalizing → completed`, and download
//! its output and error files.
//!
//! Each status step takes `--batch-step-polls` polls of `GET /v1/batches/{id}` (1 by default,
//! so tests are fast). Every input line is answered by the same handler as
//! `POST /v1/chat/completions` (so a batch gives exactly the text a live run gets); lines
//! answered 200 go to the output file, the others (e.g. `[[mock:400]]`) to the error file,
//! both in a scrambled order, as the real API does not keep input order either.
//! Lines are answered one after another when a batch completes, through the same checks as
//! live requests: `--latency-ms` adds up per line, and `--rpm`/`--tpm` limits turn lines
//! into 429s in the error file, so run batch tests without them.
//! `--batch-create-delay-ms` holds the answer to `POST /v1/batches` after the batch exists:
//! tests kill a client in that window to check it does not create a second batch.

use super::batch_core::{self, ask, jsonl, ok, scramble, Api, Poll, Store};
use super::prompt_cache::AS_OF;
use super::reply;
use super::state::Shared;
use super::text::{count_prompt_tokens, ChatMessage};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use futures_util::{stream, StreamExt as _};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The status a batch has at each step (one per `--batch-step-polls` polls); the last one is
/// set when its lines have been answered.
const STATUSES: [&str; batch_core::STEPS as usize + 1] =
    ["validating", "in_progress", "finalizing", "completed"];

/// Files and batches of one mock server.
type Batches = Api<Inner>;

/// A batch: OpenAI keeps nothing beside its object.
type Batch = batch_core::Batch<()>;

#[derive(Default)]
struct Inner {
    files: HashMap<String, Vec<u8>>,
    file_meta: HashMap<String, Value>,
    /// Their ids are drawn from the same counter as the files'.
    batches: Store<()>,
    /// Each batch's enqueued tokens (prompt + max_tokens of its requests), by batch id.
    enqueued: HashMap<String, u64>,
}

/// The routes, with their own state.
pub(crate) fn routes(shared: Arc<Shared>) -> Router {
    let state = Api::new(shared, Inner::default(), |s, headers| {
        s.refuse_unauthorized(headers)
    });
    let mut router = Router::new();
    // OpenAI's paths, and the same API under Gemini's OpenAI-compatible base path.
    for base in ["/v1", super::GEMINI_BASE] {
        router = router
            // Batch input files may be up to 200 MB (axum's default limit is 2 MB).
            .route(
                &format!("{base}/files"),
                post(upload).layer(DefaultBodyLimit::max(210 * 1000 * 1000)),
            )
            .route(&format!("{base}/files/{{id}}/content"), get(content))
            .route(&format!("{base}/batches"), post(create).get(list))
            .route(&format!("{base}/batches/{{id}}"), get(retrieve))
            .route(&format!("{base}/batches/{{id}}/cancel"), post(cancel));
    }
    router.with_state(state)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn not_found(what: &str) -> Response {
    reply::error(
        StatusCode::NOT_FOUND,
        &format!("No such {what}"),
        "invalid_request_error",
        None,
    )
}

impl Inner {
    fn id(&mut self, prefix: &str) -> String {
        let n = self.batches.next_id();
        format!("{prefix}-mock{:012x}", n & 0xffff_ffff_ffff)
    }
}

/// Marks the batch as being answered (so no other poll answers it) and gives the id of its
/// input file.
fn start_answering(batch: &mut Batch) -> String {
    batch.answering = true;
    batch.obj["input_file_id"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// `POST /v1/files` (multipart: `purpose`, `file`).
async fn upload(
    State(b): State<Arc<Batches>>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    if let Some(r) = b.refuse(&headers) {
        return r;
    }
    let (mut purpose, mut file, mut name) = (None, None, String::from("upload.jsonl"));
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let fname = field.name().unwrap_or("").to_string();
                if let Some(f) = field.file_name() {
                    name = f.to_string();
                }
                let Ok(data) = field.bytes().await else {
                    return reply::bad_request("unreadable multipart field");
                };
                match fname.as_str() {
                    "purpose" => purpose = Some(String::from_utf8_lossy(&data).into_owned()),
                    "file" => file = Some(data.to_vec()),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => return reply::bad_request(&format!("bad multipart body: {e}")),
        }
    }
    let (Some(purpose), Some(file)) = (purpose, file) else {
        return reply::bad_request("Missing required parameter: 'file' and 'purpose'.");
    };
    if purpose != "batch" {
        return reply::bad_request("The mock only accepts purpose 'batch'.");
    }
    let mut inner = b.lock();
    let id = inner.id("file");
    let meta = json!({"id": id, "object": "file", "bytes": file.len(), "created_at": now(),
        "filename": name, "purpose": purpose});
    inner.files.insert(id.clone(), file);
    inner.file_meta.insert(id, meta.clone());
    ok(meta)
}

/// `GET /v1/files/{id}/content`.
async fn content(
    State(b): State<Arc<Batches>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = b.refuse(&headers) {
        return r;
    }
    match b.lock().files.get(&id) {
        Some(bytes) => reply::json_bytes(StatusCode::OK, bytes.clone()),
        None => not_found("file"),
    }
}

#[derive(Deserialize)]
struct CreateBody {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// `POST /v1/batches`.
async fn create(State(b): State<Arc<Batches>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = b.refuse(&headers) {
        return r;
    }
    let req: CreateBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return reply::bad_request(&format!("bad batch body: {e}")),
    };
    if req.completion_window != "24h" {
        return reply::bad_request("completion_window must be '24h'.");
    }
    let obj = {
        let mut inner = b.lock();
        let Some(input) = inner.files.get(&req.input_file_id) else {
            return not_found("file");
        };
        let total = input
            .split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        let invalid = validate_input(input, &req.endpoint).or_else(|| {
            let max = b.shared.cfg.batch_max_requests?;
            (total as u64 > max).then(|| {
                vec![
                    json!({"code": "batch_size_exceeded", "param": null, "line": null,
                    "message": format!("The input file holds {total} requests; a batch \
                        holds at most {max}.")}),
                ]
            })
        });
        let tokens = enqueued_tokens(input);
        let over_tokens = b.shared.cfg.batch_enqueued_tokens.and_then(|limit| {
            let running: u64 = inner
                .batches
                .iter()
                .filter(|o| {
                    matches!(
                        o["status"].as_str(),
                        Some("validating" | "in_progress" | "finalizing")
                    )
                })
                .filter_map(|o| o["id"].as_str().and_then(|id| inner.enqueued.get(id)))
                .sum();
            (running + tokens > limit).then(|| {
                let model = first_model(input);
                vec![
                    json!({"code": "token_limit_exceeded", "param": null, "line": null,
                    "message": format!("Enqueued token limit reached for {model} in \
                        organization org-mock. Limit: {limit} enqueued tokens. Please try \
                        again once some in_progress batches have been completed.")}),
                ]
            })
        });
        let invalid = invalid.or(over_tokens);
        let id = inner.id("batch");
        inner.enqueued.insert(id.clone(), tokens);
        let t = now();
        let Value::Object(obj) = json!({
            "id": id, "object": "batch", "endpoint": req.endpoint, "errors": null,
            "input_file_id": req.input_file_id, "completion_window": "24h",
            "status": "validating", "output_file_id": null, "error_file_id": null,
            "created_at": t, "in_progress_at": null, "expires_at": t + 86_400,
            "finalizing_at": null, "completed_at": null, "failed_at": null,
            "expired_at": null, "cancelling_at": null, "cancelled_at": null,
            "request_counts": {"total": total, "completed": 0, "failed": 0},
            "metadata": req.metadata,
        }) else {
            return reply::server_error();
        };
        let mut obj = obj;
        if let Some(errors) = invalid {
            // Like the real API, a batch whose input file is invalid fails as a whole.
            obj.insert("status".into(), "failed".into());
            obj.insert("failed_at".into(), t.into());
            obj.insert("errors".into(), json!({"object": "list", "data": errors}));
        }
        inner.batches.push(obj.clone(), ());
        obj
    };
    b.created(obj).await
}

/// The tokens an input file's requests enqueue: each line's prompt tokens (as the chat
/// endpoint bills them) plus its `max_tokens` (or `max_completion_tokens`; 16 when absent).
fn enqueued_tokens(input: &[u8]) -> u64 {
    input
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let v: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
            let body = &v["body"];
            let model = body["model"].as_str().unwrap_or("");
            let messages: Vec<ChatMessage> =
                serde_json::from_value(body["messages"].clone()).unwrap_or_default();
            let out = body["max_completion_tokens"]
                .as_u64()
                .or(body["max_tokens"].as_u64())
                .unwrap_or(16);
            count_prompt_tokens(model, &messages).saturating_add(out)
        })
        .fold(0, u64::saturating_add)
}

/// The model of an input file's first line, for messages.
fn first_model(input: &[u8]) -> String {
    input
        .split(|c| *c == b'\n')
        .find(|l| !l.is_empty())
        .and_then(|l| serde_json::from_slice::<Value>(l).ok())
        .and_then(|v| v["body"]["model"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The validation errors of an input file (None when it is valid): every line JSON with a
/// unique `custom_id`, `method` POST and `url` equal to the batch's endpoint.
fn validate_input(input: &[u8], endpoint: &str) -> Option<Vec<Value>> {
    let mut seen = HashSet::new();
    let mut errors = Vec::new();
    for (n, line) in input.split(|c| *c == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
        let problem = match v["custom_id"].as_str() {
            _ if !v.is_object() => Some(("invalid_json_line", "This line is not valid JSON.")),
            None => Some(("missing_custom_id", "Missing 'custom_id'.")),
            Some(id) if !seen.insert(id.to_string()) => Some((
                "duplicate_custom_id",
                "The custom_id for this request is a duplicate of another request.",
            )),
            Some(_) if v["method"] != "POST" || v["url"] != endpoint => Some((
                "invalid_url",
                "The method must be POST and the url must match the batch endpoint.",
            )),
            Some(_) => None,
        };
        if let Some((code, message)) = problem {
            errors.push(json!({"code": code, "message": message, "param": null, "line": n + 1}));
        }
    }
    (!errors.is_empty()).then_some(errors)
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/batches`: newest first, `limit` (default 20, at most 100) and `after` paging.
async fn list(
    State(b): State<Arc<Batches>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(r) = b.refuse(&headers) {
        return r;
    }
    let inner = b.lock();
    let page = inner
        .batches
        .page(q.after.as_deref(), q.limit.unwrap_or(20).clamp(1, 100));
    ok(json!({
        "object": "list", "first_id": page.first_id, "last_id": page.last_id,
        "has_more": page.has_more, "data": page.data,
    }))
}

/// `GET /v1/batches/{id}`: each poll counts towards the next status step.
async fn retrieve(
    State(b): State<Arc<Batches>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = b.refuse(&headers) {
        return r;
    }
    let per_step = b.per_step();
    let (input, created) = {
        let mut inner = b.lock();
        let Some(batch) = inner.batches.get_mut(&id) else {
            return not_found("batch");
        };
        let done = matches!(
            batch.obj["status"].as_str(),
            Some("completed" | "cancelled" | "failed" | "expired")
        );
        if done || batch.answering {
            return batch.reply();
        }
        match batch.poll(per_step) {
            Poll::Wait => return batch.reply(),
            Poll::Step(n) => {
                let status = STATUSES[n];
                batch.obj.insert("status".into(), status.into());
                batch.obj.insert(format!("{status}_at"), now().into());
                return batch.reply();
            }
            Poll::Last => {}
        }
        let created = batch.created;
        let file = start_answering(batch);
        (inner.files.get(&file).cloned().unwrap_or_default(), created)
    };
    let (output, errors, counts) =
        answer_lines(&b.shared, &headers, &input, usize::MAX, created).await;
    finish(&b, &id, output, errors, counts, "completed")
}

/// `POST /v1/batches/{id}/cancel`: the first half of the lines count as finished, the rest
/// are never answered (as when a real batch is cancelled part way).
async fn cancel(
    State(b): State<Arc<Batches>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = b.refuse(&headers) {
        return r;
    }
    let (input, created) = {
        let mut inner = b.lock();
        let Some(batch) = inner.batches.get_mut(&id) else {
            return not_found("batch");
        };
        if batch.answering || batch.obj["status"] == "completed" {
            return reply::bad_request("This batch cannot be cancelled any more.");
        }
        let created = batch.created;
        let file = start_answering(batch);
        (inner.files.get(&file).cloned().unwrap_or_default(), created)
    };
    let lines = input.split(|c| *c == b'\n').filter(|l| !l.is_empty());
    let half = lines.count() / 2;
    let (output, errors, counts) = answer_lines(&b.shared, &headers, &input, half, created).await;
    finish(&b, &id, output, errors, counts, "cancelled")
}

/// One input line to answer: its scramble key, request id, custom id and body.
type Ask = (u64, String, String, Vec<u8>);

/// Answers up to `max` input lines through the live chat handler: (output, errors,
/// (completed, failed)), each with its [`scramble`] key.
///
/// The prompt cache: a batch `created` then sees what was written before it, and its
/// requests do not see each other's writes, except through a `prompt_cache_key`. OpenAI
/// routes a key's requests to one machine, which works through a batch's requests over
/// time: so each key's first request is answered first (with the requests that carry no
/// key), and the key's others after, seeing what the batch wrote until then.
async fn answer_lines(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    input: &[u8],
    max: usize,
    created: std::time::Instant,
) -> (Vec<(u64, String)>, Vec<(u64, String)>, (u64, u64)) {
    let (mut output, mut errors) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    let mut keys = HashSet::new();
    // Those answered first, and a key's later requests.
    let mut asks: [Vec<Ask>; 2] = [Vec::new(), Vec::new()];
    for (n, line) in input
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .take(max)
        .enumerate()
    {
        let parsed: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
        let custom_id = parsed["custom_id"].as_str().unwrap_or("").to_string();
        let order = scramble(n);
        let req_id = format!("batch_req_mock{order:016x}");
        if custom_id.is_empty() || !seen.insert(custom_id.clone()) {
            let e = json!({"id": req_id, "custom_id": custom_id, "response": null,
                "error": {"code": "invalid_custom_id", "message": "custom_id missing or not unique"}});
            errors.push((order, e.to_string()));
            continue;
        }
        let key = parsed["body"]["prompt_cache_key"].as_str();
        let later = key.is_some_and(|k| !keys.insert(k.to_string()));
        let body = serde_json::to_vec(&parsed["body"]).unwrap_or_default();
        asks[usize::from(later)].push((order, req_id, custom_id, body));
    }
    let [first, later] = asks;
    let answering = |asks: Vec<Ask>| {
        stream::iter(asks)
            .map(|(order, req_id, custom_id, body)| async move {
                let chat = super::openai::chat_completions;
                let (status, bytes) = ask(chat, shared, headers, &[AUTHORIZATION], body).await;
                (order, req_id, custom_id, status, bytes)
            })
            .buffered(batch_core::ANSWERING)
            .collect::<Vec<_>>()
    };
    let mut answers = AS_OF.scope(created, answering(first)).await;
    if !later.is_empty() {
        let now = std::time::Instant::now();
        answers.extend(AS_OF.scope(now, answering(later)).await);
    }
    for (order, req_id, custom_id, status, bytes) in answers {
        let status = status.as_u16();
        let body: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        let out = json!({"id": req_id, "custom_id": custom_id, "response": {
            "status_code": status, "request_id": format!("req_mock{order:016x}"), "body": body},
            "error": null});
        if status == 200 {
            output.push((order, out.to_string()));
        } else {
            errors.push((order, out.to_string()));
        }
    }
    let counts = (output.len() as u64, errors.len() as u64);
    (output, errors, counts)
}

fn finish(
    b: &Batches,
    id: &str,
    output: Vec<(u64, String)>,
    errors: Vec<(u64, String)>,
    (completed, failed): (u64, u64),
    status: &str,
) -> Response {
    let mut inner = b.lock();
    let file = |lines: Vec<(u64, String)>, inner: &mut Inner| -> Value {
        if lines.is_empty() {
            return Value::Null;
        }
        let fid = inner.id("file");
        inner.files.insert(fid.clone(), jsonl(lines));
        Value::String(fid)
    };
    let out_id = file(output, &mut inner);
    let err_id = file(errors, &mut inner);
    let Some(batch) = inner.batches.get_mut(id) else {
        return not_found("batch");
    };
    let o = &mut batch.obj;
    o.insert("status".into(), status.into());
    o.insert(format!("{status}_at"), now().into());
    o.insert("output_file_id".into(), out_id);
    o.insert("error_file_id".into(), err_id);
    if let Some(Value::Object(c)) = o.get_mut("request_counts") {
        c.insert("completed".into(), completed.into());
        c.insert("failed".into(), failed.into());
    }
    batch.reply()
}
