//! What the mock's two batch APIs do alike: OpenAI's Files and Batches (`batches.rs`) and
//! Anthropic's Message Batches (`message_batches.rs`).
//!
//! Both count a request and check its auth before anything else, keep their batches oldest
//! first under one lock and find them by id, hold the answer to a create for
//! `--batch-create-delay-ms`, list newest first with cursor paging, move a batch one step on
//! every `--batch-step-polls` polls and end it on the third, and answer each request of a
//! batch through the live endpoint's own handler, the results in a scrambled order.
//! Wire shapes, status names and error shapes differ, and stay in each API's module.

use super::state::Shared;
use super::text::mix;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Steps of `--batch-step-polls` polls each; a batch ends on the last one.
pub(super) const STEPS: u32 = 3;

/// One batch API of the mock: the server's shared state, the API's own state behind a lock,
/// and the API's auth check.
pub(super) struct Api<I> {
    pub(super) shared: Arc<Shared>,
    inner: Mutex<I>,
    auth: fn(&Shared, &HeaderMap) -> Option<Response>,
}

impl<I> Api<I> {
    /// An API whose requests must pass `auth` (which gives the refusal to send, if any).
    pub(super) fn new(
        shared: Arc<Shared>,
        inner: I,
        auth: fn(&Shared, &HeaderMap) -> Option<Response>,
    ) -> Arc<Api<I>> {
        Arc::new(Api {
            shared,
            inner: Mutex::new(inner),
            auth,
        })
    }

    /// The API's state. A handler that panicked cannot leave it half-changed in a way that
    /// matters to a mock, so a poisoned lock is taken over.
    pub(super) fn lock(&self) -> MutexGuard<'_, I> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the request, then gives the refusal to send when it fails the API's auth check.
    pub(super) fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        self.shared.begin();
        (self.auth)(&self.shared, headers)
    }

    /// Polls per status step (`--batch-step-polls`, at least 1).
    pub(super) fn per_step(&self) -> u32 {
        self.shared.cfg.batch_step_polls.max(1)
    }

    /// The answer to a create: the new batch, held `--batch-create-delay-ms` after the batch
    /// exists (tests kill a client in that window to check it does not create a second).
    pub(super) async fn created(&self, obj: Map<String, Value>) -> Response {
        let delay = self.shared.cfg.batch_create_delay_ms;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        ok(Value::Object(obj))
    }
}

/// A 200 with this JSON body.
pub(super) fn ok(v: Value) -> Response {
    super::reply::json_bytes(StatusCode::OK, v.to_string())
}

/// A batch as both APIs keep it: the object sent on the wire, and what only this API keeps.
pub(super) struct Batch<T> {
    pub(super) obj: Map<String, Value>,
    polls: u32,
    /// Being answered (so a concurrent poll does not answer it twice).
    pub(super) answering: bool,
    /// When the batch was created: its requests see only cache writes made before it.
    pub(super) created: std::time::Instant,
    pub(super) extra: T,
}

/// What a poll did to a batch.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Poll {
    /// Nothing yet.
    Wait,
    /// It reached step `n` (1 up to `STEPS - 1`).
    Step(usize),
    /// It reached its last step: answer its requests now.
    Last,
}

impl<T> Batch<T> {
    /// Counts one poll of a batch that is still running: each `per_step` polls make a step.
    pub(super) fn poll(&mut self, per_step: u32) -> Poll {
        self.polls += 1;
        if !self.polls.is_multiple_of(per_step) {
            return Poll::Wait;
        }
        match self.polls / per_step {
            n if n < STEPS => Poll::Step(n as usize),
            _ => Poll::Last,
        }
    }

    /// A 200 with the batch object.
    pub(super) fn reply(&self) -> Response {
        ok(Value::Object(self.obj.clone()))
    }
}

/// The batches of one API, oldest first, and the counter its ids are drawn from.
pub(super) struct Store<T> {
    next: u64,
    batches: Vec<Batch<T>>,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store {
            next: 0,
            batches: Vec::new(),
        }
    }
}

/// One page of a newest-first list.
pub(super) struct Page<'a> {
    pub(super) data: Vec<&'a Map<String, Value>>,
    pub(super) has_more: bool,
    pub(super) first_id: Option<Value>,
    pub(super) last_id: Option<Value>,
}

impl<T> Store<T> {
    /// A new pseudo-random number for an id (each API spells its ids its own way).
    pub(super) fn next_id(&mut self) -> u64 {
        self.next += 1;
        mix(self.next)
    }

    /// Adds a batch that has not been polled yet.
    pub(super) fn push(&mut self, obj: Map<String, Value>, extra: T) {
        self.batches.push(Batch {
            obj,
            polls: 0,
            answering: false,
            created: std::time::Instant::now(),
            extra,
        });
    }

    /// Every batch object, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.batches.iter().map(|b| &b.obj)
    }

    /// The batch with this id.
    pub(super) fn get(&self, id: &str) -> Option<&Batch<T>> {
        self.batches.iter().find(|x| x.obj["id"] == id)
    }

    /// The batch with this id, to change.
    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut Batch<T>> {
        self.batches.iter_mut().find(|x| x.obj["id"] == id)
    }

    /// Up to `limit` batches, newest first, starting after the batch `after` (none when no
    /// batch has that id).
    pub(super) fn page(&self, after: Option<&str>, limit: usize) -> Page<'_> {
        let newest_first = self.batches.iter().rev().map(|b| &b.obj);
        let mut data: Vec<&Map<String, Value>> = match after {
            Some(after) => newest_first
                .skip_while(|o| o.get("id").and_then(Value::as_str) != Some(after))
                .skip(1)
                .collect(),
            None => newest_first.collect(),
        };
        let has_more = data.len() > limit;
        data.truncate(limit);
        let id_of = |o: Option<&&Map<String, Value>>| o.and_then(|o| o.get("id")).cloned();
        Page {
            first_id: id_of(data.first()),
            last_id: id_of(data.last()),
            has_more,
            data,
        }
    }
}

/// Where the `n`th request of a batch goes in its results: they come back scrambled, as the
/// real APIs do not keep input order either.
pub(super) fn scramble(n: usize) -> u64 {
    mix(n as u64 ^ 0x5eed)
}

/// Result lines as JSONL, ordered by their [`scramble`] keys.
/// Requests of one batch answered at once: a batch engine is not one request after another,
/// and with `--latency-ms` (20 ms under `run --mock`) a sequential mock would take minutes
/// for a few thousand lines.
pub(super) const ANSWERING: usize = 64;

pub(super) fn jsonl(mut lines: Vec<(u64, String)>) -> Vec<u8> {
    lines.sort();
    let mut bytes = Vec::new();
    for (_, l) in lines {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    bytes
}

/// Answers one request of a batch through the live endpoint's `handler`, with the batch
/// request's `forward` headers (its key, its API version), so it passes the same checks and
/// gets the same text as a live request: the status and body.
pub(super) async fn ask<F, Fut>(
    handler: F,
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    forward: &[HeaderName],
    body: Vec<u8>,
) -> (StatusCode, Bytes)
where
    F: FnOnce(State<Arc<Shared>>, HeaderMap, Bytes) -> Fut,
    Fut: Future<Output = Response>,
{
    let mut h = HeaderMap::new();
    for name in forward {
        if let Some(v) = headers.get(name) {
            h.insert(name.clone(), v.clone());
        }
    }
    let resp = handler(State(shared.clone()), h, Bytes::from(body)).await;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    (status, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch<()> {
        let mut store = Store::default();
        store.push(Map::new(), ());
        store.batches.remove(0)
    }

    #[test]
    fn a_batch_steps_every_per_step_polls_and_ends_on_the_third_step() {
        let mut b = batch();
        let polls: Vec<Poll> = (0..6).map(|_| b.poll(2)).collect();
        use Poll::*;
        assert_eq!(polls, [Wait, Step(1), Wait, Step(2), Wait, Last]);
        let mut b = batch();
        assert_eq!([b.poll(1), b.poll(1), b.poll(1)], [Step(1), Step(2), Last]);
    }

    #[test]
    fn pages_run_newest_first_after_the_cursor() {
        let mut store = Store::default();
        for id in ["a", "b", "c", "d"] {
            let Value::Object(obj) = serde_json::json!({ "id": id }) else {
                unreachable!()
            };
            store.push(obj, ());
        }
        let ids = |p: &Page| p.data.iter().map(|o| o["id"].clone()).collect::<Vec<_>>();
        let p = store.page(None, 2);
        assert_eq!(ids(&p), ["d", "c"]);
        assert!(p.has_more);
        assert_eq!(
            (p.first_id, p.last_id),
            (Some("d".into()), Some("c".into()))
        );
        let p = store.page(Some("c"), 2);
        assert_eq!(ids(&p), ["b", "a"]);
        assert!(!p.has_more);
        let p = store.page(Some("nope"), 2);
        assert!(p.data.is_empty() && p.first_id.is_none());
    }

    #[test]
    fn results_are_scrambled_the_same_way_every_time() {
        let lines: Vec<(u64, String)> = (0..5).map(|n| (scramble(n), n.to_string())).collect();
        let out = String::from_utf8(jsonl(lines.clone())).unwrap_or_default();
        let again = String::from_utf8(jsonl(lines)).unwrap_or_default();
        assert_eq!(out, again);
        assert_eq!(out.lines().count(), 5);
        assert_ne!(out, "0\n1\n2\n3\n4\n", "the input order is not kept");
    }
}
