//! Prompt token counts, offline, for the dry-run estimate and the tokens/min limiter.
//!
//! OpenAI model families are counted with their own BPE (tiktoken-rs, vocabularies embedded in
//! the binary) and the chat framing OpenAI documents in the cookbook "How to count tokens
//! with tiktoken": every message costs `3 + tokens(role) + tokens(content)`, a `name` adds
//! `tokens(name) + 1`, and the reply is primed with 3 more (`<|start|>assistant<|message|>`).
//! The retired `gpt-3.5-turbo-0301` framed messages differently: 4 per message and -1 per
//! name (the name replaced the role). The cookbook checked both against `usage.prompt_tokens`
//! from the live API (129 and 127 tokens for its example), and `tests/it/token_counts.rs`
//! replays those cases.
//!
//! Other models (Claude, Llama, Mistral…) get an approximation with o200k_base and the same
//! framing, flagged by [`TokenCounter::is_exact`] returning false.
//!
//! User text is encoded as ordinary text: `<|endoftext|>` inside a cell is counted as the
//! characters it is made of, the way the API treats message content, never as one special
//! token.

use std::sync::{Arc, Mutex, Weak};

use crate::types::{Message, Role};
use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

/// A BPE vocabulary used by OpenAI models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, gpt-5, o1/o3/o4 families; also the approximation for other vendors.
    O200kBase,
    /// gpt-4, gpt-3.5-turbo (incl. Azure `gpt-35-turbo*` and `gpt-3.5-turbo-instruct`).
    Cl100kBase,
    /// gpt-oss models (o200k vocabulary with the harmony chat tokens).
    O200kHarmony,
    /// text-davinci-002/003 and Codex models.
    P50kBase,
}

impl Encoding {
    /// The name tiktoken uses for this encoding, e.g. `cl100k_base`.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
            Encoding::O200kHarmony => "o200k_harmony",
            Encoding::P50kBase => "p50k_base",
        }
    }

    /// The BPE tables, shared by every counter alive; loaded when there is none, and freed
    /// with the last one. Not tiktoken-rs's singletons, which live as long as the process:
    /// o200k alone is ~40 MB resident (600k small allocations), which a run does not need
    /// once the estimate pass has counted every row (see
    /// [`Planner::release_tokenizer`](crate::plan::Planner::release_tokenizer)).
    fn bpe(self) -> Arc<CoreBPE> {
        static LOADED: Mutex<Vec<(Encoding, Weak<CoreBPE>)>> = Mutex::new(Vec::new());
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|(_, w)| w.strong_count() > 0);
        if let Some(bpe) = loaded
            .iter()
            .find(|(e, _)| *e == self)
            .and_then(|(_, w)| w.upgrade())
        {
            return bpe;
        }
        // The vocabularies are embedded in the binary: loading cannot fail.
        let bpe = Arc::new(
            match self {
                Encoding::O200kBase => tiktoken_rs::o200k_base(),
                Encoding::Cl100kBase => tiktoken_rs::cl100k_base(),
                Encoding::O200kHarmony => tiktoken_rs::o200k_harmony(),
                Encoding::P50kBase => tiktoken_rs::p50k_base(),
            }
            .expect("embedded BPE vocabulary"),
        );
        loaded.push((self, Arc::downgrade(&bpe)));
        bpe
    }
}

/// One chat message as the counter sees it, for callers that have more than [`Message`]
/// holds: a role outside [`Role`] (`developer`, `tool`) or a participant `name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatTurn<'a> {
    /// The role as sent on the wire: `system`, `user`, `assistant`, `developer`…
    pub role: &'a str,
    /// The optional `name` field of the message.
    pub name: Option<&'a str>,
    /// The message text.
    pub content: &'a str,
}

/// Counts prompt tokens for one model. Cloning it is cheap: counters of the same encoding
/// share one set of BPE tables, loaded on first use and freed when the last counter goes.
#[derive(Clone)]
pub struct TokenCounter {
    bpe: Arc<CoreBPE>,
    encoding: Encoding,
    exact: bool,
    /// Framing tokens per message (3, or 4 for gpt-3.5-turbo-0301).
    per_message: i64,
    /// Adjustment when a message has a `name` (1, or -1 for gpt-3.5-turbo-0301).
    per_name: i64,
}

/// Tokens that prime the assistant's reply: `<|start|>assistant<|message|>`.
const REPLY_PRIMING: i64 = 3;

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCounter")
            .field("encoding", &self.encoding)
            .field("exact", &self.exact)
            .field("per_message", &self.per_message)
            .field("per_name", &self.per_name)
            .finish()
    }
}

impl TokenCounter {
    /// The counter for a model name as written in a job file (`gpt-4o-mini`,
    /// `openai/gpt-4.1`, `ft:gpt-4o-mini:org::id`, `claude-sonnet-4-5`…).
    ///
    /// The model → encoding map is tiktoken's own (`tiktoken/model.py`, ported by
    /// tiktoken-rs). Models it does not know, and gpt-oss (whose servers wrap the prompt in
    /// harmony framing we do not reproduce), are counted inexactly.
    pub fn for_model(model: &str) -> TokenCounter {
        let name = model.trim().to_ascii_lowercase();
        // Provider prefixes such as `openai/` or `azure/`: the model is the last segment.
        let name = name.rsplit('/').next().unwrap_or_default();
        let (encoding, exact) = match get_tokenizer(name) {
            Some(Tokenizer::O200kBase) => (Encoding::O200kBase, true),
            Some(Tokenizer::Cl100kBase) => (Encoding::Cl100kBase, true),
            // p50k_edit has p50k_base's vocabulary; only its special tokens differ, and
            // user text never contains special tokens (ordinary encoding).
            Some(Tokenizer::P50kBase | Tokenizer::P50kEdit) => (Encoding::P50kBase, true),
            Some(Tokenizer::O200kHarmony) => (Encoding::O200kHarmony, false),
            // r50k (GPT-3 `davinci`, retired): p50k differs only in whitespace runs.
            Some(Tokenizer::R50kBase | Tokenizer::Gpt2) => (Encoding::P50kBase, false),
            None => (Encoding::O200kBase, false),
        };
        let legacy_0301 = name.ends_with("-0301")
            && (name.starts_with("gpt-3.5-turbo") || name.starts_with("gpt-35-turbo"));
        let (per_message, per_name) = if legacy_0301 { (4, -1) } else { (3, 1) };
        TokenCounter {
            bpe: encoding.bpe(),
            encoding,
            exact,
            per_message,
            per_name,
        }
    }

    /// Lets go of this counter on a thread of its own: freeing the last counter's tables
    /// (o200k: some 600k allocations, about 0.1 s of CPU) would hold up a run that is about
    /// to send its first request.
    pub fn release(self) {
        drop_elsewhere(self);
    }

    /// True when counts are what the provider bills: the model's own encoding and the
    /// documented chat framing. False for approximations (non-OpenAI models, gpt-oss).
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// The encoding used (o200k_base for approximations).
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Tokens in plain text, e.g. a legacy completions prompt. No framing is added.
    pub fn count_text(&self, text: &str) -> u64 {
        self.bpe.encode_ordinary(text).len() as u64
    }

    /// The token ids of plain text (no framing): what a prompt cache compares.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// What the chat API bills as `prompt_tokens` for these messages (tools, images and
    /// response formats add tokens not counted here).
    pub fn count_chat(&self, messages: &[Message]) -> u64 {
        let turns = messages.iter().map(|m| ChatTurn {
            role: role_name(m.role),
            name: None,
            content: &m.content,
        });
        self.count_framed(turns)
    }

    /// Like [`count_chat`](Self::count_chat) for messages with arbitrary roles or a `name`.
    pub fn count_turns(&self, turns: &[ChatTurn<'_>]) -> u64 {
        self.count_framed(turns.iter().copied())
    }

    fn count_framed<'a>(&self, turns: impl Iterator<Item = ChatTurn<'a>>) -> u64 {
        let count = |s: &str| self.count_text(s) as i64;
        let mut total = REPLY_PRIMING;
        for turn in turns {
            total += self.per_message + count(turn.role) + count(turn.content);
            if let Some(name) = turn.name {
                total += count(name) + self.per_name;
            }
        }
        total.max(0) as u64
    }
}

/// Drops `value` on a thread of its own (on this one if no thread can be started).
fn drop_elsewhere<T: Send + 'static>(value: T) {
    // A failed spawn drops the closure, and with it the value, right here.
    let _ = std::thread::Builder::new()
        .name("promptmill-free".into())
        .spawn(move || drop(value));
}

/// The role as the chat API spells it.
fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_counter_is_freed_off_the_callers_thread() {
        struct Probe(std::sync::mpsc::Sender<std::thread::ThreadId>);
        impl Drop for Probe {
            fn drop(&mut self) {
                let _ = self.0.send(std::thread::current().id());
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        drop_elsewhere(Probe(tx));
        let on = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("dropped at all");
        assert_ne!(on, std::thread::current().id(), "dropped by the caller");
        // And a counter goes the same way, its tables with it.
        TokenCounter::for_model("gpt-4o").release();
    }

    #[test]
    fn models_map_to_tiktoken_encodings() {
        let cases = [
            ("gpt-4o", Encoding::O200kBase, true),
            ("gpt-4o-mini-2024-07-18", Encoding::O200kBase, true),
            ("gpt-4.1-nano", Encoding::O200kBase, true),
            ("gpt-5", Encoding::O200kBase, true),
            ("gpt-5-mini", Encoding::O200kBase, true),
            ("o3", Encoding::O200kBase, true),
            ("o3-mini", Encoding::O200kBase, true),
            ("o4-mini", Encoding::O200kBase, true),
            ("openai/gpt-4o", Encoding::O200kBase, true),
            (
                "ft:gpt-4o-mini-2024-07-18:acme::abc123",
                Encoding::O200kBase,
                true,
            ),
            ("gpt-4", Encoding::Cl100kBase, true),
            ("gpt-4-0613", Encoding::Cl100kBase, true),
            ("gpt-3.5-turbo", Encoding::Cl100kBase, true),
            ("gpt-3.5-turbo-instruct", Encoding::Cl100kBase, true),
            ("azure/gpt-35-turbo-16k", Encoding::Cl100kBase, true),
            ("GPT-4o", Encoding::O200kBase, true),
            ("text-davinci-003", Encoding::P50kBase, true),
            ("code-davinci-002", Encoding::P50kBase, true),
            ("davinci", Encoding::P50kBase, false),
            ("gpt-oss-120b", Encoding::O200kHarmony, false),
            ("claude-sonnet-4-5", Encoding::O200kBase, false),
            ("anthropic/claude-haiku-4-5", Encoding::O200kBase, false),
            ("llama-3.1-70b", Encoding::O200kBase, false),
            ("", Encoding::O200kBase, false),
        ];
        for (model, encoding, exact) in cases {
            let c = TokenCounter::for_model(model);
            assert_eq!((c.encoding(), c.is_exact()), (encoding, exact), "{model}");
        }
    }

    #[test]
    fn special_token_text_counts_as_ordinary_text() {
        let c = TokenCounter::for_model("gpt-4o");
        // "<|endoftext|>" is one special token, but as user text it is several ordinary ones.
        let n = c.count_text("<|endoftext|>");
        assert!(n > 1, "{n}");
        let with = [Message::new(Role::User, "a <|endoftext|> b <|im_start|>")];
        let pieces = c.count_text("a <|endoftext|> b <|im_start|>");
        assert_eq!(c.count_chat(&with), 3 + 1 + pieces + 3);
    }

    #[test]
    fn framing_constants() {
        let c = TokenCounter::for_model("gpt-4o");
        // Empty conversation: just the reply priming.
        assert_eq!(c.count_chat(&[]), 3);
        // "user" is one token in o200k_base; empty content adds none.
        assert_eq!(c.count_chat(&[Message::new(Role::User, "")]), 3 + 1 + 3);
        let old = TokenCounter::for_model("gpt-3.5-turbo-0301");
        assert_eq!(old.count_chat(&[Message::new(Role::User, "")]), 4 + 1 + 3);
        let named = [ChatTurn {
            role: "user",
            name: Some("bob"),
            content: "",
        }];
        assert_eq!(c.count_turns(&named), 3 + 1 + 1 + 1 + 3);
        assert_eq!(old.count_turns(&named), 4 + 1 + 1 - 1 + 3);
    }

    #[test]
    fn counter_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<TokenCounter>();
    }

    #[test]
    fn counters_share_tables_while_alive() {
        let a = TokenCounter::for_model("gpt-4o");
        let b = TokenCounter::for_model("gpt-4.1");
        assert!(Arc::ptr_eq(&a.bpe, &b.bpe));
    }
}
