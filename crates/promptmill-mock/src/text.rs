//! Deterministic answer text and approximate token counts.

use std::sync::Mutex;

use super::markers::PREFIX;
use promptmill::tokens::{ChatTurn, TokenCounter};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

/// One message of a chat request. `content` is a string or an array of content parts.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatMessage {
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) content: Option<Value>,
}

impl ChatMessage {
    /// The message's role.
    pub(crate) fn role(&self) -> &str {
        &self.role
    }

    /// The message's text: the string content, or its text parts joined by newlines.
    pub(crate) fn text(&self) -> Cow<'_, str> {
        match &self.content {
            Some(Value::String(s)) => Cow::Borrowed(s),
            Some(Value::Array(parts)) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                Cow::Owned(texts.join("\n"))
            }
            _ => Cow::Borrowed(""),
        }
    }
}

/// Prompt tokens of a chat request as OpenAI bills them: exact tiktoken counts with the chat
/// framing for OpenAI model families (an o200k approximation for others), so that the mock's
/// usage agrees with what promptmill's estimate predicts, as the real API does.
pub(crate) fn count_prompt_tokens(model: &str, messages: &[ChatMessage]) -> u64 {
    let texts: Vec<_> = messages.iter().map(|m| (m.role(), m.text())).collect();
    let turns: Vec<ChatTurn<'_>> = texts
        .iter()
        .map(|(role, text)| ChatTurn {
            role,
            name: None,
            content: text,
        })
        .collect();
    counter(model).count_turns(&turns)
}

/// The token sequence a prompt cache compares: each message as `<start> role <sep> content
/// <end>` (the framing the count above bills), and where each content block marked with
/// Anthropic's `cache_control` ends in it.
pub(crate) fn prompt_sequence(
    model: &str,
    messages: &[ChatMessage],
) -> (Vec<u32>, Vec<super::prompt_cache::Breakpoint>) {
    use super::prompt_cache::{Breakpoint, END, SEP, START};
    let c = counter(model);
    let mut seq = Vec::new();
    let mut points = Vec::new();
    for m in messages {
        seq.push(START);
        seq.extend(c.encode_ordinary(m.role()));
        seq.push(SEP);
        let start = seq.len();
        if let Some(Value::Array(parts)) = &m.content {
            let mut texts: Vec<&str> = Vec::new();
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    texts.push(t);
                }
                let Some(cc) = p.get("cache_control") else {
                    continue;
                };
                if cc.get("type").and_then(Value::as_str) != Some("ephemeral") {
                    continue;
                }
                let upto = c.encode_ordinary(&texts.join("\n")).len();
                points.push(Breakpoint {
                    at: start + upto,
                    one_hour: cc.get("ttl").and_then(Value::as_str) == Some("1h"),
                });
            }
        }
        seq.extend(c.encode_ordinary(&m.text()));
        seq.push(END);
    }
    (seq, points)
}

/// Prompt tokens of a legacy completions request.
pub(crate) fn count_completion_prompt_tokens(model: &str, prompt: &str) -> u64 {
    counter(model).count_text(prompt)
}

/// Loads the o200k tables (current OpenAI models, and the mock's approximation for the
/// others) and keeps them: done before the mock says it is listening, so that its first
/// answer is not held up a few hundred milliseconds beyond `--latency-ms`, with every
/// request that comes meanwhile counted against the rate limits at once when it ends.
pub(crate) fn warm_up() {
    let _ = counter("gpt-4o");
}

/// The counter for a model, kept for the life of the mock: counters free their tables when
/// the last one goes, and loading them for every request would take longer than answering.
fn counter(model: &str) -> TokenCounter {
    static KEPT: Mutex<Vec<(String, TokenCounter)>> = Mutex::new(Vec::new());
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = kept.iter().find(|(m, _)| m == model) {
        return c.clone();
    }
    let c = TokenCounter::for_model(model);
    // Bounded: a client sending endless model names must not grow the mock without end.
    if kept.len() < 64 {
        kept.push((model.to_string(), c.clone()));
    }
    c
}

/// Approximate tokens of generated text: bytes/4, rounded up (the mock's answers are
/// filler; their length only has to be plausible and bounded by max_tokens).
pub(crate) fn count_text_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// SplitMix64: a tiny seeded generator step, good enough to pick words and faults.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from a 64-bit hash.
pub(crate) fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

const FILLER: [&str; 32] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "enim",
    "ad",
    "minim",
    "veniam",
    "quis",
    "nostrud",
    "exercitation",
    "ullamco",
    "laboris",
    "nisi",
    "aliquip",
    "commodo",
    "consequat",
];

/// Most tokens of a generated (non-echo) answer.
const MAX_ANSWER_TOKENS: u64 = 60;

/// The text of one choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) text: String,
    pub(crate) tokens: u64,
    /// Cut to fit `max_tokens`: finish_reason "length".
    pub(crate) truncated: bool,
}

/// The answer to a prompt whose last user message is `last_user`: `Mock answer for: <first 12
/// words>` plus filler words chosen by `hash`, 20–60 tokens; or `last_user` itself when
/// `echo`. Never longer than `max_tokens`.
pub(crate) fn answer(last_user: &str, echo: bool, hash: u64, max_tokens: Option<u64>) -> Answer {
    let mut text = if echo {
        last_user.to_owned()
    } else {
        generate(last_user, hash)
    };
    let mut truncated = false;
    if let Some(max) = max_tokens {
        let max_bytes = usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX);
        if text.len() > max_bytes {
            text.truncate(floor_char_boundary(&text, max_bytes));
            truncated = true;
        }
    }
    let tokens = count_text_tokens(&text);
    Answer {
        text,
        tokens,
        truncated,
    }
}

fn generate(last_user: &str, hash: u64) -> String {
    let target = 20 + mix(hash) % (MAX_ANSWER_TOKENS - 20 + 1);
    let mut text = String::with_capacity(target as usize * 4 + 16);
    text.push_str("Mock answer for:");
    for word in last_user
        .split_whitespace()
        .filter(|w| !w.contains(PREFIX))
        .take(12)
    {
        text.push(' ');
        text.push_str(word);
    }
    let cap = (MAX_ANSWER_TOKENS * 4) as usize;
    if text.len() > cap {
        text.truncate(floor_char_boundary(&text, cap));
    }
    let mut state = hash;
    while count_text_tokens(&text) < target {
        state = mix(state);
        let word = FILLER[(state % FILLER.len() as u64) as usize];
        if text.len() + 1 + word.len() > cap {
            break;
        }
        text.push(' ');
        text.push_str(word);
    }
    text
}

/// The largest char boundary at or below `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_deterministic_and_sized() {
        for h in 0..500u64 {
            let a = answer("Summarise this row: the cat sat on the mat", false, h, None);
            assert!(a.text.starts_with("Mock answer for: Summarise this row:"));
            assert!(
                (20..=60).contains(&a.tokens),
                "{} tokens: {}",
                a.tokens,
                a.text
            );
            assert!(!a.truncated);
            assert_eq!(
                a,
                answer("Summarise this row: the cat sat on the mat", false, h, None)
            );
        }
    }

    #[test]
    fn long_words_and_markers_stay_within_bounds() {
        let long = "é".repeat(400);
        let a = answer(&format!("{long} [[mock:length]] x"), false, 7, None);
        assert!(a.tokens <= 60);
        assert!(!a.text.contains("[[mock"));
        let b = answer("hi [[mock:echo]]", false, 7, None);
        assert!(!b.text.contains("mock:"), "{}", b.text);
    }

    #[test]
    fn max_tokens_cuts_and_flags_length() {
        let a = answer("héllo wörld ".repeat(50).as_str(), true, 1, Some(5));
        assert!(a.truncated && a.tokens <= 5);
        let b = answer("short", true, 1, Some(5));
        assert_eq!(
            (b.text.as_str(), b.truncated, b.tokens),
            ("short", false, 2)
        );
    }

    #[test]
    fn unit_is_in_range() {
        assert!((0..1000)
            .map(|i| unit(mix(i)))
            .all(|u| (0.0..1.0).contains(&u)));
    }
}
