//! Prices per model and the cost of a response.
//!
//! The price table uses LiteLLM's `model_prices_and_context_window.json` schema (USD per
//! token), so LiteLLM's own file can be passed with `--prices FILE` as is. A small table of
//! verified figures ships inside the binary (`prices/model_prices.json`).
//!
//! Prices become integer picodollars ([`Money`]) when the table is read; costs are then
//! integer arithmetic, so a million rows sum exactly.

use crate::types::{Money, Usage};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The shipped price table, embedded at compile time.
const BUILTIN_JSON: &str = include_str!("../prices/model_prices.json");
/// How the embedded table is named in messages.
const BUILTIN_NAME: &str = "<built-in prices/model_prices.json>";

/// LiteLLM keys that look like models but are documentation.
const NOT_MODELS: &[&str] = &["sample_spec"];

/// Why a price table could not be loaded.
#[derive(thiserror::Error, Debug)]
pub enum PriceError {
    /// The file could not be read.
    #[error("cannot read price table {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON; serde_json's message names the line and column.
    #[error("price table {} is not valid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The top level is not an object of model names.
    #[error("price table {}: the top level must be a JSON object mapping model names to prices", path.display())]
    NotAnObject {
        /// The file.
        path: PathBuf,
    },
    /// No entry had both prices, so the file is probably not a price table.
    #[error(
        "price table {} has no usable model: each entry needs numeric \
         `input_cost_per_token` and `output_cost_per_token` (USD per token)",
        path.display()
    )]
    NoModels {
        /// The file.
        path: PathBuf,
    },
}

/// Which price list a request is billed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Synchronous API calls.
    Live,
    /// The provider's Batch API (OpenAI Batch, Anthropic Message Batches).
    Batch,
}

/// Per-token prices of one model, in picodollars per token.
#[derive(Debug, Clone)]
pub struct ModelPrice {
    /// The model's name as written in the table.
    pub model: String,
    /// LiteLLM's `litellm_provider` (e.g. `openai`, `anthropic`); empty if absent.
    pub provider: String,
    /// Price of one uncached prompt token.
    pub input: Money,
    /// Price of one completion token (reasoning tokens included).
    pub output: Money,
    /// Price of one prompt token served from the prompt cache, if the table gives one.
    pub cache_read: Option<Money>,
    /// Price of one prompt token written to the prompt cache, if the table gives one.
    pub cache_write: Option<Money>,
    /// Batch API price of one prompt token.
    pub batch_input: Money,
    /// Batch API price of one completion token.
    pub batch_output: Money,
    /// True when the batch prices were not in the table but derived as half the live ones.
    pub batch_derived: bool,
    /// Context window for the prompt, if known.
    pub max_input_tokens: Option<u64>,
    /// Largest completion the model can produce, if known.
    pub max_output_tokens: Option<u64>,
}

/// The four per-token prices that apply at one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// Uncached prompt token.
    pub input: Money,
    /// Completion token.
    pub output: Money,
    /// Prompt token read from the cache.
    pub cache_read: Money,
    /// Prompt token written to the cache.
    pub cache_write: Money,
}

impl ModelPrice {
    /// The per-token prices at a tier. Missing cache prices fall back to the input price;
    /// at Batch tier the cache prices are scaled by the same ratio as the input price.
    pub fn rates(&self, tier: Tier) -> Rates {
        let cache_read = self.cache_read.unwrap_or(self.input);
        let cache_write = self.cache_write.unwrap_or(self.input);
        match tier {
            Tier::Live => Rates {
                input: self.input,
                output: self.output,
                cache_read,
                cache_write,
            },
            Tier::Batch => Rates {
                input: self.batch_input,
                output: self.batch_output,
                cache_read: scale(cache_read, self.batch_input, self.input),
                cache_write: scale(cache_write, self.batch_input, self.input),
            },
        }
    }

    /// Cost of one response.
    ///
    /// `usage.cached_tokens` and `usage.cache_write_tokens` are subsets of
    /// `usage.prompt_tokens` (callers normalise Anthropic's usage that way), so the uncached
    /// part is `prompt - cached - cache_write` (never below zero) and nothing is counted
    /// twice. Reasoning tokens are part of `completion_tokens` and billed as output.
    pub fn cost(&self, usage: &Usage, tier: Tier) -> Money {
        let r = self.rates(tier);
        let uncached = usage
            .prompt_tokens
            .saturating_sub(usage.cached_tokens)
            .saturating_sub(usage.cache_write_tokens);
        r.input
            .times(uncached)
            .saturating_add(r.cache_read.times(usage.cached_tokens))
            .saturating_add(r.cache_write.times(usage.cache_write_tokens))
            .saturating_add(r.output.times(usage.completion_tokens))
    }
}

/// `price * num / den`, rounded to the nearest picodollar; `price` itself if `den` is zero
/// (a free model has no meaningful batch ratio).
fn scale(price: Money, num: Money, den: Money) -> Money {
    if den.0 == 0 {
        return price;
    }
    let den = u128::from(den.0);
    let scaled = (u128::from(price.0) * u128::from(num.0) + den / 2) / den;
    Money(u64::try_from(scaled).unwrap_or(u64::MAX))
}

/// Half a price, rounding an odd picodollar up (an estimate should not undercount).
fn half(price: Money) -> Money {
    Money(price.0 / 2 + price.0 % 2)
}

/// Model prices by name, with the table's provenance.
#[derive(Debug, Clone)]
pub struct PriceTable {
    source: String,
    as_of: String,
    models: HashMap<String, ModelPrice>,
}

impl PriceTable {
    /// The table shipped in the binary, parsed on first use.
    pub fn builtin() -> &'static PriceTable {
        static TABLE: OnceLock<PriceTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            // The embedded JSON is a compile-time constant and the unit test
            // `builtin_table_parses_and_covers_the_families` parses this exact text, so this
            // cannot fail in a tested build.
            Self::parse(BUILTIN_JSON, Path::new(BUILTIN_NAME))
                .expect("embedded prices/model_prices.json parses (checked by unit test)")
        })
    }

    /// Loads a table in LiteLLM's schema. Unknown keys are ignored; entries that are not
    /// objects or lack numeric input/output prices (e.g. LiteLLM's `sample_spec`) are skipped.
    pub fn from_file(path: &Path) -> Result<PriceTable, PriceError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Loads a user table and lays it over the built-in one: its entries replace built-in
    /// entries of the same name, the others stay (for `--prices FILE`).
    pub fn merged_over_builtin(path: &Path) -> Result<PriceTable, PriceError> {
        let user = Self::from_file(path)?;
        let mut merged = Self::builtin().clone();
        merged.models.extend(user.models);
        merged.source = format!(
            "{} ({}), over the built-in table ({})",
            path.display(),
            if user.source.is_empty() {
                "no _source"
            } else {
                &user.source
            },
            merged.source
        );
        if !user.as_of.is_empty() {
            merged.as_of = user.as_of;
        }
        Ok(merged)
    }

    /// Finds a model's prices: the exact name first; then with provider prefixes such as
    /// `openai/`, `anthropic/` or `azure/` stripped; then with a dated snapshot suffix
    /// (`-2024-08-06`, `-20250514`) removed. `None` if the model is unknown.
    pub fn lookup(&self, model: &str) -> Option<&ModelPrice> {
        let model = model.trim();
        let candidates = without_prefixes(model);
        candidates
            .iter()
            .find_map(|name| self.models.get(*name))
            .or_else(|| {
                candidates
                    .iter()
                    .filter_map(|name| strip_snapshot(name))
                    .find_map(|base| self.models.get(base))
            })
    }

    /// Where the figures come from (the table's `_source`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// When the figures were last checked (the table's `_as_of`).
    pub fn as_of(&self) -> &str {
        &self.as_of
    }

    /// Number of priced models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True if no model is priced.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// All priced models, in no particular order.
    pub fn models(&self) -> impl Iterator<Item = &ModelPrice> {
        self.models.values()
    }

    fn parse(text: &str, path: &Path) -> Result<PriceTable, PriceError> {
        let value: Value = serde_json::from_str(text).map_err(|source| PriceError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let Value::Object(top) = value else {
            return Err(PriceError::NotAnObject {
                path: path.to_path_buf(),
            });
        };
        let text_of = |key: &str| {
            top.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (source, as_of) = (text_of("_source"), text_of("_as_of"));
        let models: HashMap<String, ModelPrice> = top
            .iter()
            .filter(|(name, _)| !name.starts_with('_') && !NOT_MODELS.contains(&name.as_str()))
            .filter_map(|(name, entry)| {
                Some((name.clone(), model_price(name, entry.as_object()?)?))
            })
            .collect();
        if models.is_empty() {
            return Err(PriceError::NoModels {
                path: path.to_path_buf(),
            });
        }
        Ok(PriceTable {
            source,
            as_of,
            models,
        })
    }
}

/// A per-token USD price from an entry: `None` if absent, null, or not a number.
fn usd(entry: &Map<String, Value>, key: &str) -> Option<Money> {
    entry.get(key)?.as_f64().map(Money::from_usd)
}

/// A token limit from an entry; LiteLLM writes integers, but tolerate `128000.0`.
fn limit(entry: &Map<String, Value>, key: &str) -> Option<u64> {
    let v = entry.get(key)?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0)
            .map(|f| f as u64)
    })
}

/// One table entry as prices, or `None` if it lacks live input/output prices.
fn model_price(name: &str, entry: &Map<String, Value>) -> Option<ModelPrice> {
    let input = usd(entry, "input_cost_per_token")?;
    let output = usd(entry, "output_cost_per_token")?;
    let listed_batch_input = usd(entry, "input_cost_per_token_batches");
    let listed_batch_output = usd(entry, "output_cost_per_token_batches");
    let batch_derived = listed_batch_input.is_none() || listed_batch_output.is_none();
    Some(ModelPrice {
        model: name.to_string(),
        provider: entry
            .get("litellm_provider")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        input,
        output,
        cache_read: usd(entry, "cache_read_input_token_cost"),
        cache_write: usd(entry, "cache_creation_input_token_cost"),
        batch_input: listed_batch_input.unwrap_or_else(|| half(input)),
        batch_output: listed_batch_output.unwrap_or_else(|| half(output)),
        batch_derived,
        max_input_tokens: limit(entry, "max_input_tokens"),
        max_output_tokens: limit(entry, "max_output_tokens"),
    })
}

/// The name, then the name without each leading `provider/` segment in turn:
/// `openrouter/openai/gpt-4o` → [`openrouter/openai/gpt-4o`, `openai/gpt-4o`, `gpt-4o`].
fn without_prefixes(model: &str) -> Vec<&str> {
    let mut names = vec![model];
    let mut rest = model;
    while let Some((_, tail)) = rest.split_once('/') {
        if tail.is_empty() {
            break;
        }
        names.push(tail);
        rest = tail;
    }
    names
}

/// The base name of a dated snapshot: `gpt-4o-2024-08-06` → `gpt-4o`,
/// `claude-sonnet-4-20250514` → `claude-sonnet-4`. Short OpenAI suffixes like `-0613` are
/// not stripped: those snapshots were often priced differently from the current alias.
fn strip_snapshot(name: &str) -> Option<&str> {
    let is_date = |s: &str, dashed: bool| {
        let b = s.as_bytes();
        let digits_ok = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_digit);
        if dashed {
            // YYYY-MM-DD
            b.len() == 10
                && digits_ok(0..4)
                && b[4] == b'-'
                && digits_ok(5..7)
                && b[7] == b'-'
                && digits_ok(8..10)
        } else {
            // YYYYMMDD
            b.len() == 8 && digits_ok(0..8)
        }
    };
    let (base, date) = name.rsplit_once('-')?;
    if is_date(date, false) && date.starts_with("20") && !base.is_empty() {
        return Some(base);
    }
    // A dashed date spans three `-` separated parts.
    if name.len() > 11 && name.is_char_boundary(name.len() - 11) {
        let (base, tail) = name.split_at(name.len() - 11);
        if let Some(date) = tail.strip_prefix('-') {
            if is_date(date, true) && date.starts_with("20") && !base.is_empty() {
                return Some(base);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn usage(prompt: u64, completion: u64, cached: u64, cache_write: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached,
            cache_write_tokens: cache_write,
            ..Usage::default()
        }
    }

    fn price(model: &str) -> &'static ModelPrice {
        PriceTable::builtin()
            .lookup(model)
            .unwrap_or_else(|| panic!("{model} missing from the built-in table"))
    }

    #[test]
    fn builtin_table_parses_and_covers_the_families() {
        // Parse the embedded text directly so a broken file fails here with the serde error.
        let table = PriceTable::parse(BUILTIN_JSON, Path::new(BUILTIN_NAME)).unwrap();
        assert!(table.source().contains("LiteLLM"));
        assert_eq!(table.as_of(), "2026-07-24");
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano",
            "o3",
            "o3-mini",
            "o4-mini",
            "gpt-3.5-turbo",
            "gpt-3.5-turbo-instruct",
            "claude-sonnet-4-5",
            "claude-haiku-4-5",
            "claude-opus-4-1",
            "claude-opus-4-5",
        ] {
            assert!(table.models.contains_key(model), "{model} not in table");
        }
        assert_eq!(PriceTable::builtin().len(), table.len());
    }

    #[test]
    fn tiny_per_token_prices_convert_exactly() {
        // 1 USD = 1e12 picodollars.
        assert_eq!(Money::from_usd(5e-9), Money(5_000));
        assert_eq!(Money::from_usd(1.25e-08), Money(12_500));
        assert_eq!(Money::from_usd(3.75e-06), Money(3_750_000));
        assert_eq!(Money::from_usd(2.75e-07), Money(275_000));
        assert_eq!(Money::from_usd(1.875e-05), Money(18_750_000));
        assert_eq!(price("gpt-5-nano").cache_read, Some(Money(5_000)));
        assert_eq!(price("o4-mini").cache_read, Some(Money(275_000)));
        assert_eq!(
            price("claude-sonnet-4-5").cache_write,
            Some(Money(3_750_000))
        );
    }

    #[test]
    fn live_costs_match_hand_computed_picodollars() {
        // gpt-4o-mini: 0.15/0.60 per 1M => 150_000 / 600_000 pico per token.
        // 1000 prompt + 200 completion = 150_000_000 + 120_000_000.
        let p = price("gpt-4o-mini");
        assert_eq!(
            p.cost(&usage(1000, 200, 0, 0), Tier::Live),
            Money(270_000_000)
        );

        // gpt-4o with 1024 of 1500 prompt tokens cached: input 2_500_000, cache 1_250_000,
        // output 10_000_000. 476*2_500_000 + 1024*1_250_000 + 300*10_000_000
        // = 1_190_000_000 + 1_280_000_000 + 3_000_000_000.
        let p = price("gpt-4o");
        assert_eq!(
            p.cost(&usage(1500, 300, 1024, 0), Tier::Live),
            Money(5_470_000_000)
        );

        // Anthropic, normalised: prompt 3000 = 1000 uncached + 1500 cache read + 500 cache
        // write. claude-sonnet-4-5: input 3_000_000, read 300_000, write 3_750_000,
        // output 15_000_000. 1000*3e6 + 1500*3e5 + 500*3.75e6 + 100*15e6
        // = 3_000_000_000 + 450_000_000 + 1_875_000_000 + 1_500_000_000.
        let p = price("claude-sonnet-4-5");
        assert_eq!(
            p.cost(&usage(3000, 100, 1500, 500), Tier::Live),
            Money(6_825_000_000)
        );

        // No cache prices => cached tokens at the input price (gpt-3.5-turbo: 500_000 /
        // 1_500_000). 100*500_000 + 10*1_500_000 whatever the cached split.
        let p = price("gpt-3.5-turbo");
        assert_eq!(
            p.cost(&usage(100, 10, 40, 0), Tier::Live),
            Money(65_000_000)
        );

        // Inconsistent usage (cached > prompt) never underflows.
        assert_eq!(p.cost(&usage(10, 0, 40, 0), Tier::Live), Money(20_000_000));
    }

    #[test]
    fn batch_prices_listed_or_derived_as_half() {
        // gpt-4o lists batch prices: 1.25e-06 / 5e-06.
        let p = price("gpt-4o");
        assert!(!p.batch_derived);
        assert_eq!(
            (p.batch_input, p.batch_output),
            (Money(1_250_000), Money(5_000_000))
        );
        // Cache read 1_250_000 scaled by 1.25/2.5 = 625_000.
        // 476*1_250_000 + 1024*625_000 + 300*5_000_000 = 595e6 + 640e6 + 1500e6.
        assert_eq!(
            p.cost(&usage(1500, 300, 1024, 0), Tier::Batch),
            Money(2_735_000_000)
        );

        // gpt-5 has none: derived as half of 1.25e-06 / 1e-05.
        let p = price("gpt-5");
        assert!(p.batch_derived);
        assert_eq!(
            (p.batch_input, p.batch_output),
            (Money(625_000), Money(5_000_000))
        );
        // 1000*625_000 + 100*5_000_000 = 625e6 + 500e6; cache read 125_000 -> 62_500.
        assert_eq!(
            p.cost(&usage(1000, 100, 0, 0), Tier::Batch),
            Money(1_125_000_000)
        );
        assert_eq!(p.rates(Tier::Batch).cache_read, Money(62_500));

        // Anthropic batch: everything halves. claude-haiku-4-5: 1e-06/5e-06, read 1e-07,
        // write 1.25e-06 => 500_000 / 2_500_000 / 50_000 / 625_000.
        let p = price("claude-haiku-4-5");
        assert!(p.batch_derived);
        // 1000*500_000 + 1000*50_000 + 1000*625_000 + 10*2_500_000
        assert_eq!(
            p.cost(&usage(3000, 10, 1000, 1000), Tier::Batch),
            Money(1_200_000_000)
        );
    }

    #[test]
    fn lookup_strips_provider_prefixes_and_snapshot_dates() {
        let t = PriceTable::builtin();
        assert_eq!(t.lookup("openai/gpt-4o-mini").unwrap().model, "gpt-4o-mini");
        assert_eq!(t.lookup("azure/gpt-4.1").unwrap().model, "gpt-4.1");
        assert_eq!(
            t.lookup("anthropic/claude-haiku-4-5").unwrap().model,
            "claude-haiku-4-5"
        );
        assert_eq!(t.lookup("gpt-4o-2024-08-06").unwrap().model, "gpt-4o");
        assert_eq!(
            t.lookup("openai/gpt-4o-mini-2024-07-18").unwrap().model,
            "gpt-4o-mini"
        );
        assert_eq!(
            t.lookup("claude-sonnet-4-5-20250929").unwrap().model,
            "claude-sonnet-4-5"
        );
        assert_eq!(t.lookup("o3-mini-2025-01-31").unwrap().model, "o3-mini");
        // An exact dated entry wins over its base (this snapshot kept a higher price).
        let old = t.lookup("gpt-4o-2024-05-13").unwrap();
        assert_eq!(old.model, "gpt-4o-2024-05-13");
        assert_eq!(old.input, Money(5_000_000));
        assert_eq!(
            t.lookup("claude-3-haiku-20240307").unwrap().model,
            "claude-3-haiku-20240307"
        );
    }

    #[test]
    fn unknown_models_are_none() {
        let t = PriceTable::builtin();
        for name in [
            "llama-3-70b",
            "gpt-4o-turbo-ultra",
            "",
            "/",
            "openai/",
            "gpt-3.5-turbo-0613", // short snapshot suffixes are not guessed
            "x-20250514",
        ] {
            assert!(t.lookup(name).is_none(), "{name:?} should be unknown");
        }
    }

    #[test]
    fn snapshot_suffixes() {
        assert_eq!(strip_snapshot("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(
            strip_snapshot("claude-sonnet-4-20250514"),
            Some("claude-sonnet-4")
        );
        assert_eq!(strip_snapshot("gpt-4-0613"), None);
        assert_eq!(strip_snapshot("gpt-4o"), None);
        assert_eq!(strip_snapshot("-2024-08-06"), None);
        assert_eq!(strip_snapshot("model-2024-8-06"), None);
        assert_eq!(
            strip_snapshot("日本語モデル-2024-08-06"),
            Some("日本語モデル")
        );
    }

    fn write_temp(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    /// Shaped like LiteLLM's file: a `sample_spec` with prose values, entries priced per
    /// second or per image, nulls, arrays, nested objects, provider-qualified names.
    const LITELLM_STYLE: &str = r#"{
      "sample_spec": {
        "max_tokens": "LEGACY parameter. set to max_output_tokens if provider specifies it.",
        "max_input_tokens": "max input tokens, if the provider specifies it.",
        "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0,
        "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
        "mode": "one of: chat, embedding, completion, image_generation",
        "supported_regions": ["global", "us-west-2"]
      },
      "gpt-4o": {
        "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
        "cache_read_input_token_cost": null,
        "input_cost_per_token_batches": 1.25e-06, "output_cost_per_token_batches": 5e-06,
        "max_input_tokens": 128000, "max_output_tokens": 16384.0, "max_tokens": 16384,
        "litellm_provider": "openai", "mode": "chat",
        "supported_modalities": ["text", "image"],
        "search_context_cost_per_query": {"search_context_size_low": 0.03},
        "supports_vision": true
      },
      "azure/gpt-4o": {
        "input_cost_per_token": 2.75e-06, "output_cost_per_token": 1.1e-05,
        "litellm_provider": "azure", "mode": "chat"
      },
      "text-embedding-3-small": {
        "input_cost_per_token": 2e-08, "output_cost_per_token": 0.0,
        "litellm_provider": "openai", "mode": "embedding"
      },
      "whisper-1": {"input_cost_per_second": 0.0001, "output_cost_per_second": 0.0001,
        "litellm_provider": "openai", "mode": "audio_transcription"},
      "dall-e-3": {"input_cost_per_pixel": null, "output_cost_per_image": 0.04,
        "litellm_provider": "openai", "mode": "image_generation"},
      "broken-null": {"input_cost_per_token": null, "output_cost_per_token": 1e-06},
      "broken-string": {"input_cost_per_token": "1e-06", "output_cost_per_token": 1e-06},
      "a-list": [1, 2, 3],
      "a-number": 42,
      "a-null": null
    }"#;

    #[test]
    fn litellm_style_file_with_junk_loads() {
        let f = write_temp(LITELLM_STYLE);
        let t = PriceTable::from_file(f.path()).unwrap();
        let mut names: Vec<&str> = t.models().map(|m| m.model.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["azure/gpt-4o", "gpt-4o", "text-embedding-3-small"]);
        let p = t.lookup("gpt-4o").unwrap();
        assert_eq!(p.cache_read, None);
        assert_eq!(p.max_output_tokens, Some(16384));
        assert_eq!(p.provider, "openai");
        // Exact provider-qualified entries win over prefix stripping.
        assert_eq!(t.lookup("azure/gpt-4o").unwrap().input, Money(2_750_000));
        assert_eq!(t.lookup("openai/gpt-4o").unwrap().input, Money(2_500_000));
        assert_eq!(t.source(), "");
    }

    #[test]
    fn user_file_overrides_builtin_entries() {
        let f = write_temp(
            r#"{"_source": "my contract", "_as_of": "2030-01-01",
                "gpt-4o-mini": {"input_cost_per_token": 1e-07, "output_cost_per_token": 2e-07},
                "my-model": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}}"#,
        );
        let t = PriceTable::merged_over_builtin(f.path()).unwrap();
        assert_eq!(t.lookup("gpt-4o-mini").unwrap().input, Money(100_000));
        assert_eq!(t.lookup("my-model").unwrap().output, Money(2_000_000));
        assert_eq!(t.lookup("gpt-4o").unwrap().input, Money(2_500_000));
        assert_eq!(t.as_of(), "2030-01-01");
        assert!(t.source().contains("my contract"), "{}", t.source());
        assert!(t.source().contains("built-in"), "{}", t.source());
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let f = write_temp("{\n  \"gpt-4o\": {\"input_cost_per_token\": 1e-06,,}\n}");
        let msg = PriceTable::from_file(f.path()).unwrap_err().to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("line 2 column"), "{msg}");

        let f = write_temp("[1, 2]");
        let err = PriceTable::from_file(f.path()).unwrap_err();
        assert!(matches!(err, PriceError::NotAnObject { .. }), "{err}");

        let f = write_temp(
            r#"{"sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0}}"#,
        );
        let err = PriceTable::from_file(f.path()).unwrap_err();
        assert!(matches!(err, PriceError::NoModels { .. }), "{err}");

        let missing = Path::new("/nonexistent/prices.json");
        let msg = PriceTable::from_file(missing).unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/prices.json"), "{msg}");
    }
}
