//! Shared prompt prefixes of a chosen length, for the prompt-caching tests.

use promptmill::tokens::TokenCounter;
use promptmill::types::{Message, Role};

use super::Workspace;

/// A system prompt starting with `lead` whose framed tokens are `128 × blocks + 10` for
/// gpt-4o-mini: the estimate and the mock then round the shared prefix down to the same
/// whole blocks.
pub fn system_prompt(lead: &str, blocks: u64) -> String {
    let c = TokenCounter::for_model("gpt-4o-mini");
    let framing = c.count_chat(&[]);
    let words = (blocks * 128) as usize;
    (words.saturating_sub(200)..words + 200)
        .map(|n| format!("{lead}{}", " apple".repeat(n)))
        .find(|s| {
            let t = c.count_chat(&[Message::new(Role::System, s.as_str())]) - framing;
            t % 128 == 10 && t / 128 == blocks
        })
        .expect("a length that ends 10 tokens into a block")
}

/// (row, prompt tokens, cache read, cache write) of every answered row, from the journal.
pub fn journal_usage(ws: &Workspace) -> Vec<(u64, u64, u64, u64)> {
    ws.jsonl("out/result.journal.jsonl")
        .iter()
        .filter(|r| r.get("status").is_some())
        .map(|r| {
            let u = &r["usage"];
            let n = |k: &str| u[k].as_u64().unwrap_or(0);
            (
                r["row"].as_u64().unwrap(),
                n("prompt_tokens"),
                n("cached_tokens"),
                n("cache_write_tokens"),
            )
        })
        .collect()
}
