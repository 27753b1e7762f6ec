//! Prompt caching as the providers do it, so cache-aware jobs are testable offline.
//!
//! - OpenAI shape (automatic): a prompt's tokens (each message as `<start> role <sep> content
//!   <end>`, in order, as the mock counts them) are cut into 128-token blocks, each hashed
//!   with the model and the block before it (a hash chain, as the real servers key their
//!   caches). A request reads the longest run of leading blocks seen within the TTL:
//!   `cached_tokens` is that run (a multiple of 128), or 0 under 1,024 tokens. Every answered
//!   prompt of 1,024 tokens or more writes its blocks.
//! - Anthropic shape (explicit): only a content block with `cache_control` marks a prefix
//!   (up to and including that block). The longest such prefix seen within its TTL is read;
//!   the last one is written when it is longer (`cache_creation_input_tokens`). Prefixes
//!   under 1,024 tokens (2,048 for haiku models) are not cached.
//! - Batches: a batch's requests see only what was written before the batch was created,
//!   never each other's writes; later requests (and later batches) see the batch's writes.
//!   Anthropic's Message Batches work that way, which is why batch mode sends a primer
//!   batch first. One exception, on the OpenAI shape: requests carrying a
//!   `prompt_cache_key` go to one machine per key, which works through them over time, so
//!   a key's first request is answered before its others, which see what the batch wrote
//!   until then (see `batches.rs`).
//! - Live requests likewise see only what was written before they arrived: a prompt still
//!   being answered (within `--latency-ms`) is not cached yet, so requests sent together
//!   all miss, as they do at the providers.
//!
//! Memory stays bounded: one small entry per block or breakpoint, at most `CAP` entries;
//! expired entries go first, then the least recently used.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// OpenAI's cache granularity: prefixes are matched in blocks of this many tokens.
pub(crate) const BLOCK: usize = 128;
/// The shortest prompt OpenAI caches, and the shortest Anthropic prefix (non-haiku).
pub(crate) const MIN_TOKENS: usize = 1024;
/// The shortest prefix Anthropic caches for haiku models.
pub(crate) const MIN_TOKENS_HAIKU: usize = 2048;
/// Most entries kept.
const CAP: usize = 200_000;
/// Pseudo token ids for the chat framing (outside any tokenizer's vocabulary).
pub(crate) const START: u32 = u32::MAX;
pub(crate) const SEP: u32 = u32::MAX - 1;
pub(crate) const END: u32 = u32::MAX - 2;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When this prefix was first written (since it last expired).
    written: Instant,
    /// Last read or write: the TTL runs from here.
    used: Instant,
    ttl: Duration,
}

impl Entry {
    fn alive(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.used) <= self.ttl
    }
}

tokio::task_local! {
    /// Set while a batch's requests are answered: when the batch was created.
    pub(crate) static AS_OF: Instant;
}

/// The creation time of the batch being answered (None for a live request).
pub(crate) fn as_of() -> Option<Instant> {
    AS_OF.try_with(|t| *t).ok()
}

/// What a request that `arrived` then sees: the batch's creation for a batch's request,
/// else its own arrival (answers still being given have written nothing yet).
pub(crate) fn seen_from(arrived: Instant) -> Option<Instant> {
    as_of().or(Some(arrived))
}

/// What an Anthropic-shaped request reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AnthropicUse {
    pub(crate) read: u64,
    pub(crate) written: u64,
    /// The write was asked with `ttl: "1h"`.
    pub(crate) one_hour: bool,
}

/// A breakpoint: the prefix of this many tokens ends at a block with `cache_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Breakpoint {
    pub(crate) at: usize,
    pub(crate) one_hour: bool,
}

/// The mock's prompt cache (one per server).
pub(crate) struct PromptCache {
    on: bool,
    ttl: Duration,
    entries: Mutex<HashMap<u64, Entry>>,
}

impl PromptCache {
    /// A cache whose OpenAI entries (and Anthropic 5-minute ones) live `ttl` after last use.
    pub(crate) fn new(on: bool, ttl: Duration) -> PromptCache {
        PromptCache {
            on,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// False with `--no-prompt-cache`: callers skip building token sequences.
    pub(crate) fn is_on(&self) -> bool {
        self.on
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panicking reader cannot leave a map of plain values half-changed.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// OpenAI: the cached tokens of this prompt at `now`, then its blocks written.
    /// `as_of`: a batch's creation (it sees only entries written before it).
    pub(crate) fn openai(
        &self,
        model: &str,
        tokens: &[u32],
        now: Instant,
        as_of: Option<Instant>,
    ) -> u64 {
        if !self.on || tokens.len() < MIN_TOKENS {
            return 0;
        }
        let keys = chain(model, tokens);
        let mut map = self.lock();
        let hits = keys
            .iter()
            .take_while(|k| visible(&map, **k, now, as_of))
            .count();
        for k in &keys {
            write(&mut map, *k, now, self.ttl);
        }
        evict(&mut map, now);
        let cached = hits * BLOCK;
        if cached >= MIN_TOKENS {
            cached as u64
        } else {
            0
        }
    }

    /// Anthropic: what this prompt reads and writes at its `cache_control` breakpoints.
    pub(crate) fn anthropic(
        &self,
        model: &str,
        tokens: &[u32],
        breakpoints: &[Breakpoint],
        now: Instant,
        as_of: Option<Instant>,
    ) -> AnthropicUse {
        if !self.on {
            return AnthropicUse::default();
        }
        let min = if model.to_ascii_lowercase().contains("haiku") {
            MIN_TOKENS_HAIKU
        } else {
            MIN_TOKENS
        };
        let mut points: Vec<Breakpoint> = breakpoints
            .iter()
            .copied()
            .filter(|b| b.at >= min && b.at <= tokens.len())
            .collect();
        points.sort_by_key(|b| b.at);
        let Some(last) = points.last().copied() else {
            return AnthropicUse::default();
        };
        let key = |at: usize| {
            let mut h = DefaultHasher::new();
            ("anthropic", model, &tokens[..at]).hash(&mut h);
            h.finish()
        };
        let mut map = self.lock();
        let read = points
            .iter()
            .rev()
            .find(|b| visible(&map, key(b.at), now, as_of))
            .map_or(0, |b| b.at);
        for b in &points {
            let ttl = if b.one_hour {
                Duration::from_secs(3600)
            } else {
                self.ttl
            };
            write(&mut map, key(b.at), now, ttl);
        }
        evict(&mut map, now);
        AnthropicUse {
            read: read as u64,
            written: last.at.saturating_sub(read) as u64,
            one_hour: last.one_hour,
        }
    }
}

/// The hash chain of a prompt's full blocks.
fn chain(model: &str, tokens: &[u32]) -> Vec<u64> {
    let mut prev = {
        let mut h = DefaultHasher::new();
        ("openai", model).hash(&mut h);
        h.finish()
    };
    tokens
        .chunks_exact(BLOCK)
        .map(|block| {
            let mut h = DefaultHasher::new();
            (prev, block).hash(&mut h);
            prev = h.finish();
            prev
        })
        .collect()
}

fn visible(map: &HashMap<u64, Entry>, key: u64, now: Instant, as_of: Option<Instant>) -> bool {
    map.get(&key)
        .is_some_and(|e| e.alive(now) && as_of.is_none_or(|t| e.written <= t))
}

fn write(map: &mut HashMap<u64, Entry>, key: u64, now: Instant, ttl: Duration) {
    match map.get_mut(&key) {
        Some(e) if e.alive(now) => {
            e.used = now;
            e.ttl = e.ttl.max(ttl);
        }
        _ => {
            map.insert(
                key,
                Entry {
                    written: now,
                    used: now,
                    ttl,
                },
            );
        }
    }
}

/// Over the cap: drop what expired, then the least recently used half.
fn evict(map: &mut HashMap<u64, Entry>, now: Instant) {
    if map.len() <= CAP {
        return;
    }
    map.retain(|_, e| e.alive(now));
    if map.len() <= CAP {
        return;
    }
    let mut used: Vec<Instant> = map.values().map(|e| e.used).collect();
    used.sort_unstable();
    let cut = used[used.len() / 2];
    map.retain(|_, e| e.used > cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(shared: usize, tail: u32) -> Vec<u32> {
        let mut t: Vec<u32> = (0..shared as u32).collect();
        t.extend((0..50).map(|i| 1_000_000 + tail * 100 + i));
        t
    }

    #[test]
    fn openai_reads_the_shared_prefix_in_128_token_blocks() {
        let c = PromptCache::new(true, Duration::from_secs(300));
        let t0 = Instant::now();
        assert_eq!(
            c.openai("m", &prompt(2000, 1), t0, None),
            0,
            "first: a miss"
        );
        // 2,000 shared tokens: 15 full blocks (1,920) are read.
        assert_eq!(c.openai("m", &prompt(2000, 2), t0, None), 1920);
        assert_eq!(
            c.openai("other", &prompt(2000, 3), t0, None),
            0,
            "per model"
        );
    }

    #[test]
    fn openai_prefixes_under_1024_tokens_are_not_cached() {
        let c = PromptCache::new(true, Duration::from_secs(300));
        let t0 = Instant::now();
        c.openai("m", &prompt(1000, 1), t0, None);
        assert_eq!(c.openai("m", &prompt(1000, 2), t0, None), 0);
    }

    #[test]
    fn entries_expire_after_the_ttl_since_last_use() {
        let c = PromptCache::new(true, Duration::from_secs(300));
        let t0 = Instant::now();
        c.openai("m", &prompt(2000, 1), t0, None);
        let t1 = t0 + Duration::from_secs(200);
        assert_eq!(c.openai("m", &prompt(2000, 2), t1, None), 1920);
        // 290 s after the last use: still there; 301 s after it: gone.
        let t2 = t1 + Duration::from_secs(290);
        assert_eq!(c.openai("m", &prompt(2000, 3), t2, None), 1920);
        let t3 = t2 + Duration::from_secs(301);
        assert_eq!(c.openai("m", &prompt(2000, 4), t3, None), 0);
    }

    #[test]
    fn a_batch_sees_only_what_was_written_before_it() {
        let c = PromptCache::new(true, Duration::from_secs(300));
        let t0 = Instant::now();
        let batch = t0;
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(c.openai("m", &prompt(2000, 1), t1, Some(batch)), 0);
        assert_eq!(c.openai("m", &prompt(2000, 2), t1, Some(batch)), 0);
        // A later batch, and live requests, see the first batch's writes.
        assert_eq!(c.openai("m", &prompt(2000, 3), t1, Some(t1)), 1920);
        assert_eq!(c.openai("m", &prompt(2000, 4), t1, None), 1920);
    }

    #[test]
    fn the_off_switch_caches_nothing() {
        let c = PromptCache::new(false, Duration::from_secs(300));
        let t0 = Instant::now();
        c.openai("m", &prompt(2000, 1), t0, None);
        assert_eq!(c.openai("m", &prompt(2000, 2), t0, None), 0);
        let bp = [Breakpoint {
            at: 2000,
            one_hour: false,
        }];
        c.anthropic("m", &prompt(2000, 1), &bp, t0, None);
        assert_eq!(
            c.anthropic("m", &prompt(2000, 2), &bp, t0, None),
            AnthropicUse::default()
        );
    }

    #[test]
    fn anthropic_writes_then_reads_at_a_breakpoint_only() {
        let c = PromptCache::new(true, Duration::from_secs(300));
        let t0 = Instant::now();
        assert_eq!(
            c.anthropic("claude-sonnet-4-5", &prompt(2000, 1), &[], t0, None),
            AnthropicUse::default(),
            "no cache_control: nothing"
        );
        let bp = [Breakpoint {
            at: 2000,
            one_hour: false,
        }];
        let first = c.anthropic("claude-sonnet-4-5", &prompt(2000, 1), &bp, t0, None);
        assert_eq!((first.read, first.written), (0, 2000));
        let second = c.anthropic("claude-sonnet-4-5", &prompt(2000, 2), &bp, t0, None);
        assert_eq!((second.read, second.written), (2000, 0));
        // Haiku needs 2,048 tokens.
        let haiku = c.anthropic("claude-haiku-4-5", &prompt(2000, 1), &bp, t0, None);
        assert_eq!(haiku, AnthropicUse::default());
    }

    #[test]
    fn anthropic_one_hour_entries_outlive_the_default_ttl() {
        let c = PromptCache::new(true, Duration::from_secs(300));
        let t0 = Instant::now();
        let bp = [Breakpoint {
            at: 2000,
            one_hour: true,
        }];
        c.anthropic("claude-sonnet-4-5", &prompt(2000, 1), &bp, t0, None);
        let later = t0 + Duration::from_secs(1800);
        let u = c.anthropic("claude-sonnet-4-5", &prompt(2000, 2), &bp, later, None);
        assert_eq!(u.read, 2000);
    }

    #[test]
    fn memory_is_capped() {
        let c = PromptCache::new(true, Duration::from_secs(300));
        let t0 = Instant::now();
        for i in 0..(CAP / 8 + 10) as u32 {
            let t: Vec<u32> = (0..1024).map(|k| i * 2048 + k).collect();
            c.openai("m", &t, t0 + Duration::from_millis(u64::from(i)), None);
        }
        assert!(c.lock().len() <= CAP);
    }
}
