//! Shared prompt prefixes: which leading messages rows send identically, so that a
//! provider's prompt cache can bill them at its cache-read price after the first request.
//!
//! At message granularity: a request's prefixes are its leading messages (all but the last,
//! which a row's data normally fills). Each prefix is a node keyed by a SHA-256 chain over
//! its messages, with the rows that sent it; a row's prefix is the longest one another row
//! also sent. So a system message, or a system message and few-shot turns, identical for
//! every row make one group; a system message chosen by a column makes one group per
//! choice. Memory is bounded: at most [`MAX_NODES`] nodes are kept, and when full the
//! prefixes only one row sent so far are dropped first.

use std::collections::HashMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::types::{Message, Role};

/// Most prefixes tracked at once.
pub const MAX_NODES: usize = 4096;
/// Most prefix groups listed in the estimate (the largest first).
pub const LIST: usize = 10;
/// OpenAI caches prompts of this many tokens or more, and Anthropic prefixes as long
/// (except haiku models).
pub const MIN_TOKENS: u64 = 1024;
/// Anthropic's minimum for haiku models.
pub const MIN_TOKENS_HAIKU: u64 = 2048;
/// OpenAI matches cached prefixes in blocks of this many tokens.
pub const BLOCK: u64 = 128;

#[derive(Debug, Clone)]
struct Node {
    parent: Option<u64>,
    id: String,
    messages: usize,
    tokens: u64,
    rows: u64,
}

/// Prefix counts of some rows (one worker's chunk, or all of them once merged).
#[derive(Debug, Default)]
pub struct Prefixes {
    nodes: HashMap<u64, Node>,
}

/// One group of rows sharing a prefix.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PrefixGroup {
    /// The first 12 hex digits of the prefix's SHA-256 chain (stable across runs).
    pub id: String,
    /// Leading messages in the prefix.
    pub messages: u64,
    /// Its prompt tokens (the messages with their chat framing).
    pub tokens: u64,
    /// Rows whose longest shared prefix it is.
    pub rows: u64,
    /// Long enough for the provider to cache it.
    pub cacheable: bool,
    /// The prefix's key in a row's [`chain`] (the chain's first 64 bits).
    #[serde(skip)]
    pub key: u64,
}

impl Prefixes {
    /// Counts one request's prefixes; `count` gives the tokens of some leading messages
    /// (called only for prefixes not seen before).
    pub fn add(&mut self, messages: &[Message], count: impl Fn(&[Message]) -> u64) {
        let mut parent = None;
        for (k, (key, id)) in links(messages).enumerate() {
            if let Some(n) = self.nodes.get_mut(&key) {
                n.rows += 1;
            } else {
                if self.nodes.len() >= MAX_NODES {
                    self.nodes.retain(|_, n| n.rows >= 2);
                }
                if self.nodes.len() >= MAX_NODES {
                    return;
                }
                self.nodes.insert(
                    key,
                    Node {
                        parent,
                        id,
                        messages: k + 1,
                        tokens: count(&messages[..=k]),
                        rows: 1,
                    },
                );
            }
            parent = Some(key);
        }
    }

    /// Adds another chunk's counts.
    pub fn merge(&mut self, other: Prefixes) {
        for (key, n) in other.nodes {
            let room = self.nodes.len() < MAX_NODES;
            match self.nodes.get_mut(&key) {
                Some(mine) => mine.rows += n.rows,
                None if room => {
                    self.nodes.insert(key, n);
                }
                None => {}
            }
        }
    }

    /// The groups: each prefix two or more rows sent, with the rows for which it is the
    /// longest such prefix; the largest groups first. `min_tokens`: the provider's minimum.
    pub fn groups(&self, min_tokens: u64) -> Vec<PrefixGroup> {
        let shared = |n: &Node| n.rows >= 2;
        let mut in_children: HashMap<u64, u64> = HashMap::new();
        for n in self.nodes.values().filter(|n| shared(n)) {
            if let Some(p) = n.parent {
                *in_children.entry(p).or_default() += n.rows;
            }
        }
        let mut groups: Vec<PrefixGroup> = self
            .nodes
            .iter()
            .filter(|(_, n)| shared(n))
            .filter_map(|(key, n)| {
                let rows = n
                    .rows
                    .saturating_sub(in_children.get(key).copied().unwrap_or(0));
                (rows >= 2).then(|| PrefixGroup {
                    id: n.id.clone(),
                    messages: n.messages as u64,
                    tokens: n.tokens,
                    rows,
                    cacheable: n.tokens >= min_tokens,
                    key: *key,
                })
            })
            .collect();
        groups.sort_by(|a, b| b.rows.cmp(&a.rows).then_with(|| a.id.cmp(&b.id)));
        groups
    }
}

/// The keys of a request's prefixes, shortest first: one per leading message but the last
/// (see [`Prefixes::add`]), matched against [`PrefixGroup::key`] when the run sends it.
pub fn chain(messages: &[Message]) -> Vec<u64> {
    links(messages).map(|(key, _)| key).collect()
}

/// Each prefix's key and id, shortest first: a SHA-256 chain over the messages' roles and
/// texts.
fn links(messages: &[Message]) -> impl Iterator<Item = (u64, String)> + '_ {
    let mut chain = Sha256::new();
    messages
        .iter()
        .take(messages.len().saturating_sub(1))
        .map(move |m| {
            chain.update(role(m.role).as_bytes());
            chain.update([0]);
            chain.update(m.content.as_bytes());
            chain.update([0]);
            let digest = chain.clone().finalize();
            let key = u64::from_be_bytes(std::array::from_fn(|i| digest[i]));
            let id = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
            (key, id)
        })
}

/// The provider's minimum cacheable prefix for `model`.
pub fn min_tokens(anthropic: bool, model: &str) -> u64 {
    if anthropic && model.to_ascii_lowercase().contains("haiku") {
        MIN_TOKENS_HAIKU
    } else {
        MIN_TOKENS
    }
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter of one token per byte, so lengths are easy to set.
    fn bytes(ms: &[Message]) -> u64 {
        ms.iter().map(|m| m.content.len() as u64 + 3).sum()
    }

    fn counted(rows: &[Vec<Message>]) -> Vec<PrefixGroup> {
        let mut p = Prefixes::default();
        for r in rows {
            p.add(r, bytes);
        }
        p.groups(MIN_TOKENS)
    }

    fn sys(t: &str) -> Message {
        Message::new(Role::System, t)
    }
    fn user(t: &str) -> Message {
        Message::new(Role::User, t)
    }
    fn asst(t: &str) -> Message {
        Message::new(Role::Assistant, t)
    }

    #[test]
    fn a_system_message_every_row_sends_is_one_prefix() {
        let long = "x".repeat(2000);
        let rows: Vec<_> = (0..5)
            .map(|i| vec![sys(&long), user(&format!("row {i}"))])
            .collect();
        let g = counted(&rows);
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].messages, g[0].tokens, g[0].rows), (1, 2003, 5));
        assert!(g[0].cacheable);
    }

    #[test]
    fn few_shot_turns_join_the_prefix() {
        let long = "x".repeat(1500);
        let rows: Vec<_> = (0..4)
            .map(|i| {
                vec![
                    sys(&long),
                    user("example question"),
                    asst("example answer"),
                    user(&format!("row {i}")),
                ]
            })
            .collect();
        let g = counted(&rows);
        assert_eq!(g.len(), 1, "{g:?}");
        assert_eq!((g[0].messages, g[0].rows), (3, 4));
        assert_eq!(g[0].tokens, 1503 + 19 + 17);
    }

    #[test]
    fn a_shared_first_user_turn_is_a_prefix_without_any_system_message() {
        let document = "d".repeat(1800);
        let rows: Vec<_> = (0..3)
            .map(|i| vec![user(&document), user(&format!("question {i}"))])
            .collect();
        let g = counted(&rows);
        assert_eq!(g.len(), 1, "{g:?}");
        assert_eq!((g[0].messages, g[0].tokens, g[0].rows), (1, 1803, 3));
        assert!(g[0].cacheable);
        // The group's key is the rows' own first link: a live run finds them by it.
        assert_eq!(chain(&rows[1])[0], g[0].key);
    }

    #[test]
    fn a_short_prefix_is_found_but_not_cacheable() {
        let rows: Vec<_> = (0..3)
            .map(|i| vec![sys("Be brief."), user(&format!("row {i}"))])
            .collect();
        let g = counted(&rows);
        assert_eq!(g.len(), 1);
        assert!(!g[0].cacheable);
        assert_eq!(g[0].tokens, 12);
    }

    #[test]
    fn two_system_prompts_make_two_groups() {
        let (a, b) = ("a".repeat(1200), "b".repeat(3000));
        let mut rows = Vec::new();
        for i in 0..6 {
            let s = if i % 3 == 0 { &a } else { &b };
            rows.push(vec![sys(s), user(&format!("row {i}"))]);
        }
        let g = counted(&rows);
        assert_eq!(g.len(), 2, "{g:?}");
        assert_eq!((g[0].tokens, g[0].rows), (3003, 4));
        assert_eq!((g[1].tokens, g[1].rows), (1203, 2));
        assert_ne!(g[0].id, g[1].id);
    }

    #[test]
    fn rows_varying_from_the_first_message_share_nothing() {
        let rows: Vec<_> = (0..4)
            .map(|i| vec![sys(&format!("about row {i}")), user("same question")])
            .collect();
        assert!(counted(&rows).is_empty());
        let one: Vec<_> = (0..4).map(|i| vec![user(&format!("row {i}"))]).collect();
        assert!(counted(&one).is_empty(), "a lone message is no prefix");
    }

    #[test]
    fn merged_chunks_count_like_one() {
        let long = "x".repeat(2000);
        let row = |i: u32| vec![sys(&long), user(&format!("row {i}"))];
        let (mut a, mut b) = (Prefixes::default(), Prefixes::default());
        a.add(&row(1), bytes);
        b.add(&row(2), bytes);
        b.add(&row(3), bytes);
        a.merge(b);
        let g = a.groups(MIN_TOKENS);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].rows, 3);
    }

    #[test]
    fn memory_stays_bounded_and_shared_prefixes_survive() {
        let long = "x".repeat(2000);
        let mut p = Prefixes::default();
        for i in 0..(MAX_NODES as u32 * 3) {
            p.add(&[sys(&long), user(&format!("row {i}"))], bytes);
            p.add(&[sys(&format!("unique {i}")), user("q")], bytes);
        }
        assert!(p.nodes.len() <= MAX_NODES);
        let g = p.groups(MIN_TOKENS);
        assert_eq!(g[0].rows, MAX_NODES as u64 * 3);
    }

    #[test]
    fn haiku_needs_more() {
        assert_eq!(min_tokens(true, "claude-haiku-4-5"), 2048);
        assert_eq!(min_tokens(true, "claude-sonnet-4-5"), 1024);
        assert_eq!(min_tokens(false, "gpt-4o-mini"), 1024);
    }
}
