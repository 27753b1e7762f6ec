//! Counters of what the mock answered, readable while it runs (`GET /_mock/stats`).

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A point-in-time copy of the mock server's counters (the JSON of `GET /_mock/stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockStatsSnapshot {
    /// Requests received on the API endpoints (`/v1/...`), whatever their outcome.
    pub requests: u64,
    /// Requests answered 200 (including the `bad-json`, `no-choices`, `slow-body` markers).
    pub ok: u64,
    /// Requests answered 429 `rate_limit_exceeded` (RPM or TPM).
    pub rate_limited: u64,
    /// Requests answered 429 `insufficient_quota`.
    pub quota_exceeded: u64,
    /// Flex requests answered 429 "resource unavailable" (`[[mock:flex-unavailable:N]]`).
    #[serde(default)]
    pub flex_unavailable: u64,
    /// Requests answered 500 (`--fail-rate`, `[[mock:500]]`, `[[mock:fail-first:N]]`).
    pub server_errors: u64,
    /// Requests answered 401 (missing or wrong API key).
    pub unauthorized: u64,
    /// Requests answered 400 (unparseable or invalid body, `[[mock:400]]`).
    pub bad_requests: u64,
    /// Distinct prompts (hash of model + messages) answered 200.
    pub distinct_prompts: u64,
    /// 200 answers for a prompt that had already been answered 200: paid for twice.
    pub duplicate_prompts: u64,
    /// Sum of `usage.prompt_tokens` over 200 answers.
    pub prompt_tokens: u64,
    /// Sum of `usage.completion_tokens` over 200 answers.
    pub completion_tokens: u64,
}

/// Live counters. Atomics, plus one small lock for the set of prompt hashes.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) requests: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) quota_exceeded: AtomicU64,
    pub(crate) flex_unavailable: AtomicU64,
    pub(crate) server_errors: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) bad_requests: AtomicU64,
    ok: AtomicU64,
    duplicate_prompts: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// u64 hashes only: a million prompts cost ~16 MB, not their text.
    prompts: Mutex<HashSet<u64>>,
}

/// Add one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// Count a 200 answer for `prompt`.
    pub(crate) fn record_ok(&self, prompt: u64, prompt_tokens: u64, completion_tokens: u64) {
        bump(&self.ok);
        self.prompt_tokens
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion_tokens, Ordering::Relaxed);
        let fresh = self
            .prompts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(prompt);
        if !fresh {
            bump(&self.duplicate_prompts);
        }
    }

    /// Read every counter.
    pub(crate) fn snapshot(&self) -> MockStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let distinct = self.prompts.lock().unwrap_or_else(|e| e.into_inner()).len();
        MockStatsSnapshot {
            requests: get(&self.requests),
            ok: get(&self.ok),
            rate_limited: get(&self.rate_limited),
            quota_exceeded: get(&self.quota_exceeded),
            flex_unavailable: get(&self.flex_unavailable),
            server_errors: get(&self.server_errors),
            unauthorized: get(&self.unauthorized),
            bad_requests: get(&self.bad_requests),
            distinct_prompts: distinct as u64,
            duplicate_prompts: get(&self.duplicate_prompts),
            prompt_tokens: get(&self.prompt_tokens),
            completion_tokens: get(&self.completion_tokens),
        }
    }

    /// Zero every counter and forget the prompts seen.
    pub(crate) fn reset(&self) {
        for c in [
            &self.requests,
            &self.ok,
            &self.rate_limited,
            &self.quota_exceeded,
            &self.flex_unavailable,
            &self.server_errors,
            &self.unauthorized,
            &self.bad_requests,
            &self.duplicate_prompts,
            &self.prompt_tokens,
            &self.completion_tokens,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.prompts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_count_repeat_200s_of_the_same_prompt() {
        let s = Stats::default();
        s.record_ok(1, 10, 20);
        s.record_ok(2, 10, 20);
        s.record_ok(1, 10, 20);
        let snap = s.snapshot();
        assert_eq!(
            (snap.ok, snap.distinct_prompts, snap.duplicate_prompts),
            (3, 2, 1)
        );
        assert_eq!((snap.prompt_tokens, snap.completion_tokens), (30, 60));
        s.reset();
        assert_eq!(s.snapshot(), MockStatsSnapshot::default());
    }
}
