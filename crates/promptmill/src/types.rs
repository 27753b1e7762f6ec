//! The values that flow between pipeline stages: rows in, messages, usage and money out.
//!
//! Every stage speaks these types and nothing else, so a stage can be read (and tested)
//! without knowing the ones around it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One input record, as read from CSV/TSV/JSONL.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 0-based position among the data rows (the header is not a row).
    pub index: u64,
    /// 1-based line of the input file where this record starts (for error messages).
    pub line: u64,
    /// Stable key: the `input.id` column's value, or the 1-based row number.
    pub id: String,
    /// The record's fields in file order. CSV cells are strings; JSONL keeps its types.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One chat message of a rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    /// A message with the given role and text.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// The JSON Schema name of a value's type ("object", "string", "number"…), for messages
/// about JSONL rows and structured answers.
pub fn json_type(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Token usage as reported by the API (or estimated, where the name says so).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Subset of `prompt_tokens` served from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_tokens: u64,
    /// Tokens written to the provider's prompt cache (Anthropic bills these separately).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    /// Subset of `cache_write_tokens` written with the 1-hour lifetime (Anthropic's
    /// `cache_creation.ephemeral_1h_input_tokens`); the rest are 5-minute writes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_1h_tokens: u64,
    /// Subset of `completion_tokens` spent on hidden reasoning.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reasoning_tokens: u64,
    /// The server sent no usage, so these counts are ours: the prompt counted with the
    /// estimate's tokenizer and the completion from the returned text (or, for a model with
    /// no tokenizer, the worst case reserved). Its cost is labelled estimated, never `$0`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Usage {
    /// Prompt plus completion tokens (saturating: the counts come from servers).
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// Adds another usage to this one, field by field (saturating).
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
        self.cache_write_1h_tokens = self
            .cache_write_1h_tokens
            .saturating_add(other.cache_write_1h_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
        self.estimated |= other.estimated;
    }
}

/// An amount of money in US dollars, held as an integer number of picodollars (1e-12 USD).
///
/// Per-token prices go down to fractions of a nanodollar, and a million rows must sum
/// exactly, so money is never an `f64` that is added up. u64 picodollars hold up to
/// about 18 million dollars, far above any job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub u64);

impl Money {
    /// Zero dollars.
    pub const ZERO: Money = Money(0);
    const PICO_PER_USD: u64 = 1_000_000_000_000;

    /// Converts a dollar amount (as written in price tables and job files) to picodollars,
    /// rounding to the nearest picodollar.
    pub fn from_usd(usd: f64) -> Money {
        if !usd.is_finite() || usd <= 0.0 {
            return Money::ZERO;
        }
        Money((usd * Self::PICO_PER_USD as f64).round() as u64)
    }

    /// The amount in dollars, for display and JSON.
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / Self::PICO_PER_USD as f64
    }

    /// Saturating sum.
    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// Saturating difference.
    pub fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    /// Price per token times a token count.
    pub fn times(self, tokens: u64) -> Money {
        Money(self.0.saturating_mul(tokens))
    }
}

impl fmt::Display for Money {
    /// Dollars with up to 6 decimals and no trailing zeros beyond cents: `$0.000123`, `$12.50`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micro = (self.0 + 500_000) / 1_000_000; // round to microdollars
        let dollars = micro / 1_000_000;
        let frac = micro % 1_000_000;
        let mut s = format!("{frac:06}");
        while s.len() > 2 && s.ends_with('0') {
            s.pop();
        }
        write!(f, "${dollars}.{s}")
    }
}

/// A dollar figure (an estimate's, a report's) as [`Money`] shows it: `$0.000123`, `$12.50`.
pub fn usd(v: f64) -> String {
    Money::from_usd(v).to_string()
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Money::saturating_add)
    }
}

/// One generated variant of an answer: what the model wrote and why it stopped. Lives
/// here, below the client that parses it and the schema, journal and cache that read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub text: String,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The generated columns every output row has, after the chosen input columns (the sink
/// writes them; `[[outputs]]` names may not take them).
pub const RESULT_COLUMNS: &[&str] = &[
    "output",
    "status",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "cost_estimated",
    "attempts",
    "error",
    "shared_with",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_sums_exactly_over_a_million_rows() {
        let per_token = Money::from_usd(1.5e-7);
        assert_eq!(per_token, Money(150_000));
        let total: Money = (0..1_000_000).map(|_| per_token.times(3)).sum();
        assert_eq!(total, Money::from_usd(0.45));
        assert_eq!(total.to_string(), "$0.45");
    }

    #[test]
    fn money_display_keeps_small_amounts_visible() {
        assert_eq!(Money::from_usd(0.000123).to_string(), "$0.000123");
        assert_eq!(Money::from_usd(12.5).to_string(), "$12.50");
        assert_eq!(Money::ZERO.to_string(), "$0.00");
    }
}
