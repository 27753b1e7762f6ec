//! Anthropic's Message Batches in the mock: create a batch from `{"requests": [...]}`, poll
//! it (`in_progress` until it ends), list batches, download its results.
//!
//! A batch ends on its third step of `--batch-step-polls` polls of
//! `GET /v1/messages/batches/{id}` (as an OpenAI mock batch completes on its third). Every
//! request's `params` is then answered by the same handler as `POST /v1/messages`, so a
//! batch gives exactly the text a live run gets: 200 answers are `succeeded`, the others
//! `errored` with the error the live endpoint gives; a request whose params contain
//! `[[mock:expire]]` is `expired` (never answered). The results come back in a scrambled
//! order. `POST /v1/messages/batches/{id}/cancel` answers the first half of the requests on
//! the next poll and cancels the rest. `--batch-create-delay-ms` holds the answer to the
//! create after the batch exists, as for OpenAI batches.

use super::batch_core::{ask, jsonl, ok, scramble, Api, Poll, Store, ANSWERING};
use super::prompt_cache::AS_OF;
use super::reply::rfc3339;
use super::state::Shared;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use futures_util::{stream, StreamExt as _};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The API's limit on requests per batch.
const MAX_REQUESTS: usize = 100_000;
/// Marks a request that the batch never gets to.
const EXPIRE_MARKER: &str = "[[mock:expire]]";

/// Message batches of one mock server.
type MessageBatches = Api<Store<Extra>>;

/// What a message batch keeps beside its object.
struct Extra {
    requests: Vec<Value>,
    cancel: bool,
    /// The JSONL results, once the batch has ended.
    results: Vec<u8>,
}

/// The routes, with their own state.
pub(crate) fn routes(shared: Arc<Shared>) -> Router {
    let state = Api::new(shared, Store::default(), refuse);
    Router::new()
        // A batch body may be up to 256 MB (axum's default limit is 2 MB).
        .route(
            "/v1/messages/batches",
            post(create)
                .layer(DefaultBodyLimit::max(260 * 1000 * 1000))
                .get(list),
        )
        .route("/v1/messages/batches/{id}", get(retrieve))
        .route("/v1/messages/batches/{id}/results", get(results))
        .route("/v1/messages/batches/{id}/cancel", post(cancel))
        .with_state(state)
}

/// An error in Anthropic's shape.
fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    super::reply::json_bytes(status, body.to_string())
}

fn invalid(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "No such message batch",
    )
}

fn now() -> String {
    rfc3339(SystemTime::now())
}

/// Refuses a request without a valid `x-api-key` (with `--api-key`) or without
/// `anthropic-version`.
fn refuse(s: &Shared, headers: &HeaderMap) -> Option<Response> {
    if let Some(r) = s.refuse_unauthorized_by(headers, "x-api-key", "") {
        return Some(r);
    }
    headers
        .get("anthropic-version")
        .is_none()
        .then(|| invalid("anthropic-version: header is required"))
}

/// A custom id the API accepts: `^[a-zA-Z0-9_-]{1,64}$`.
fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

#[derive(Deserialize)]
struct CreateBody {
    requests: Vec<Value>,
}

/// `POST /v1/messages/batches`: the whole batch is refused when a request has no valid,
/// unique `custom_id` or no `params` object.
async fn create(State(b): State<Arc<MessageBatches>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = b.refuse(&headers) {
        return r;
    }
    let req: CreateBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid(&format!("requests: {e}")),
    };
    if req.requests.is_empty() || req.requests.len() > MAX_REQUESTS {
        return invalid("requests: between 1 and 100000 requests are required");
    }
    let mut seen = HashSet::new();
    for (n, r) in req.requests.iter().enumerate() {
        let id = r["custom_id"].as_str().unwrap_or("");
        if !valid_custom_id(id) {
            return invalid(&format!(
                "requests.{n}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"
            ));
        }
        if !seen.insert(id.to_string()) {
            return invalid(&format!(
                "requests.{n}.custom_id: '{id}' is not unique in this batch"
            ));
        }
        if !r["params"].is_object() {
            return invalid(&format!("requests.{n}.params: Field required"));
        }
    }
    let obj = {
        let mut inner = b.lock();
        let id = format!("msgbatch_mock{:016x}", inner.next_id());
        let created = SystemTime::now();
        let Value::Object(obj) = json!({
            "id": id, "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": req.requests.len(), "succeeded": 0,
                "errored": 0, "canceled": 0, "expired": 0},
            "ended_at": null, "created_at": rfc3339(created),
            "expires_at": rfc3339(created + Duration::from_secs(86_400)),
            "archived_at": null, "cancel_initiated_at": null, "results_url": null,
        }) else {
            return super::reply::server_error();
        };
        let extra = Extra {
            requests: req.requests,
            cancel: false,
            results: Vec::new(),
        };
        inner.push(obj.clone(), extra);
        obj
    };
    b.created(obj).await
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    after_id: Option<String>,
}

/// `GET /v1/messages/batches`: newest first, `limit` (default 20, at most 1000) and
/// `after_id` paging.
async fn list(
    State(b): State<Arc<MessageBatches>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(r) = b.refuse(&headers) {
        return r;
    }
    let inner = b.lock();
    let page = inner.page(q.after_id.as_deref(), q.limit.unwrap_or(20).clamp(1, 1000));
    ok(json!({
        "data": page.data, "has_more": page.has_more,
        "first_id": page.first_id, "last_id": page.last_id,
    }))
}

/// `GET /v1/messages/batches/{id}`: each poll counts towards the end of the batch.
async fn retrieve(
    State(b): State<Arc<MessageBatches>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = b.refuse(&headers) {
        return r;
    }
    let per_step = b.per_step();
    let (requests, cancel, created) = {
        let mut inner = b.lock();
        let Some(batch) = inner.get_mut(&id) else {
            return not_found();
        };
        if batch.answering || batch.obj["processing_status"] == "ended" {
            return batch.reply();
        }
        let last = batch.poll(per_step) == Poll::Last;
        if !batch.extra.cancel && !last {
            return batch.reply();
        }
        batch.answering = true;
        (
            batch.extra.requests.clone(),
            batch.extra.cancel,
            batch.created,
        )
    };
    let answer = if cancel {
        requests.len() / 2
    } else {
        requests.len()
    };
    let (shared, h) = (&b.shared, &headers);
    let total = requests.len();
    let answering = stream::iter(requests.into_iter().enumerate())
        .map(|(n, r)| async move { answer_one(shared, h, &r, n < answer).await })
        .buffered(ANSWERING)
        .collect::<Vec<_>>();
    let answers = AS_OF.scope(created, answering).await;
    let mut lines = Vec::with_capacity(total);
    let mut counts = Map::new();
    for (n, (line, kind)) in answers.into_iter().enumerate() {
        let c = counts.entry(kind).or_insert(json!(0));
        *c = json!(c.as_u64().unwrap_or(0) + 1);
        lines.push((scramble(n), line));
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let mut inner = b.lock();
    let Some(batch) = inner.get_mut(&id) else {
        return not_found();
    };
    batch.extra.results = jsonl(lines);
    let o = &mut batch.obj;
    o.insert("processing_status".into(), "ended".into());
    o.insert("ended_at".into(), now().into());
    o.insert(
        "results_url".into(),
        format!("http://{host}/v1/messages/batches/{id}/results").into(),
    );
    let mut rc = Map::new();
    for k in ["processing", "succeeded", "errored", "canceled", "expired"] {
        rc.insert(k.into(), counts.get(k).cloned().unwrap_or(json!(0)));
    }
    o.insert("request_counts".into(), Value::Object(rc));
    batch.reply()
}

/// One request's result line and its kind (`succeeded`, `errored`, `expired`, `canceled`).
async fn answer_one(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    request: &Value,
    answer: bool,
) -> (String, &'static str) {
    let custom_id = request["custom_id"].clone();
    let params = request["params"].to_string();
    let (kind, result) = if !answer {
        ("canceled", json!({"type": "canceled"}))
    } else if params.contains(EXPIRE_MARKER) {
        ("expired", json!({"type": "expired"}))
    } else {
        let forward = [
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("anthropic-version"),
        ];
        let messages = super::anthropic::messages;
        let (status, bytes) = ask(messages, shared, headers, &forward, params.into_bytes()).await;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status == StatusCode::OK {
            ("succeeded", json!({"type": "succeeded", "message": body}))
        } else {
            ("errored", json!({"type": "errored", "error": body}))
        }
    };
    let line = json!({"custom_id": custom_id, "result": result});
    (line.to_string(), kind)
}

/// `GET /v1/messages/batches/{id}/results`: JSONL, once the batch has ended.
async fn results(
    State(b): State<Arc<MessageBatches>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = b.refuse(&headers) {
        return r;
    }
    let inner = b.lock();
    let Some(batch) = inner.get(&id) else {
        return not_found();
    };
    if batch.obj["processing_status"] != "ended" {
        return invalid("results are available once processing_status is 'ended'");
    }
    super::reply::json_bytes(StatusCode::OK, batch.extra.results.clone())
}

/// `POST /v1/messages/batches/{id}/cancel`: `canceling`; the next poll ends the batch.
async fn cancel(
    State(b): State<Arc<MessageBatches>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = b.refuse(&headers) {
        return r;
    }
    let mut inner = b.lock();
    let Some(batch) = inner.get_mut(&id) else {
        return not_found();
    };
    if batch.answering || batch.obj["processing_status"] == "ended" {
        return invalid("This batch has ended and cannot be canceled.");
    }
    batch.extra.cancel = true;
    batch
        .obj
        .insert("processing_status".into(), "canceling".into());
    batch.obj.insert("cancel_initiated_at".into(), now().into());
    batch.reply()
}
