//! Prices per model and tier, and the cost of a response.
//!
//! Prices use LiteLLM's `model_prices_and_context_window.json` schema (USD per token), read
//! as is: a snapshot of LiteLLM's own file ships inside the binary, `promptmill prices
//! update` caches a newer one, and `--prices FILE` lays a user file over either (see
//! [`table`]).
//!
//! Every tier the providers bill is read from the file's keys: `<part><band><tier>`, where
//! part is `input_cost_per_token`, `output_cost_per_token`, `cache_read_input_token_cost`,
//! `cache_creation_input_token_cost` or `cache_creation_input_token_cost_above_1hr`; band is
//! empty or a long-context threshold (`_above_200k_tokens`); tier is empty (standard),
//! `_flex`, `_priority` or `_batches`.
//!
//! Prices become integer picodollars ([`Money`]) when the table is read; costs are then
//! integer arithmetic, so a million rows sum exactly.

pub mod fresh;
pub mod table;
pub mod update;

pub use table::{PriceError, PriceOrigin, PriceTable};

use crate::types::{Money, Usage};

/// Which price list a request is billed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Synchronous calls at the standard price (`service_tier` `default`/`auto`).
    Live,
    /// OpenAI's flex processing: cheaper, slower, may answer "resource unavailable".
    Flex,
    /// OpenAI's priority processing: dearer, faster.
    Priority,
    /// The provider's Batch API (OpenAI Batch, Anthropic Message Batches).
    Batch,
}

impl Tier {
    /// Every tier, in the order they are shown.
    pub const ALL: [Tier; 4] = [Tier::Live, Tier::Flex, Tier::Priority, Tier::Batch];

    /// The tier's name as shown to users (`standard`, `flex`, `priority`, `batch`).
    pub fn name(self) -> &'static str {
        match self {
            Tier::Live => "standard",
            Tier::Flex => "flex",
            Tier::Priority => "priority",
            Tier::Batch => "batch",
        }
    }

    /// The suffix LiteLLM appends to a price key for this tier.
    fn suffix(self) -> &'static str {
        match self {
            Tier::Live => "",
            Tier::Flex => "_flex",
            Tier::Priority => "_priority",
            Tier::Batch => "_batches",
        }
    }

    /// The live tier a response's `service_tier` names (`flex`, `priority`; anything else,
    /// such as `default`, `auto` or `scale`, is standard).
    pub fn from_served(service_tier: &str) -> Tier {
        match service_tier.trim().to_ascii_lowercase().as_str() {
            "flex" => Tier::Flex,
            "priority" => Tier::Priority,
            _ => Tier::Live,
        }
    }
}

/// One kind of per-token price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// An uncached prompt token.
    Input,
    /// A completion token (reasoning tokens included).
    Output,
    /// A prompt token read from the cache.
    CacheRead,
    /// A prompt token written to the cache with the default (5-minute) lifetime.
    CacheWrite,
    /// A prompt token written to the cache with the 1-hour lifetime.
    CacheWrite1h,
}

impl Part {
    /// Every part; longer keys first, so that parsing tries the 1-hour write before the
    /// plain write it starts with.
    const ALL: [Part; 5] = [
        Part::CacheWrite1h,
        Part::CacheWrite,
        Part::CacheRead,
        Part::Output,
        Part::Input,
    ];

    /// The LiteLLM key of the standard price.
    fn key(self) -> &'static str {
        match self {
            Part::Input => "input_cost_per_token",
            Part::Output => "output_cost_per_token",
            Part::CacheRead => "cache_read_input_token_cost",
            Part::CacheWrite => "cache_creation_input_token_cost",
            Part::CacheWrite1h => "cache_creation_input_token_cost_above_1hr",
        }
    }
}

/// Where a price applies: its part, its long-context threshold (prompt tokens above which
/// the whole request is billed at it; `None` for the base price) and its tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PriceKey {
    /// What is priced.
    pub part: Part,
    /// Long-context threshold in prompt tokens, or `None`.
    pub above: Option<u64>,
    /// The tier.
    pub tier: Tier,
}

/// Per-token prices of one model, in picodollars per token, as listed in the table.
#[derive(Debug, Clone)]
pub struct ModelPrice {
    /// The model's name as written in the table.
    pub model: String,
    /// LiteLLM's `litellm_provider` (e.g. `openai`, `anthropic`); empty if absent.
    pub provider: String,
    /// Price of one uncached prompt token at the standard tier.
    pub input: Money,
    /// Price of one completion token at the standard tier.
    pub output: Money,
    /// True when the table lists no batch prices, so they are derived as half the standard
    /// ones (the Batch API discount).
    pub batch_derived: bool,
    /// Context window for the prompt, if known.
    pub max_input_tokens: Option<u64>,
    /// Largest completion the model can produce, if known.
    pub max_output_tokens: Option<u64>,
    /// LiteLLM's `deprecation_date` (`YYYY-MM-DD`), if given.
    pub deprecation_date: Option<String>,
    /// Every price the table lists for the model, as read.
    listed: Vec<(PriceKey, Money)>,
    /// Long-context thresholds, ascending.
    bands: Vec<u64>,
}

/// The per-token prices that apply to one request at one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// Uncached prompt token.
    pub input: Money,
    /// Completion token.
    pub output: Money,
    /// Prompt token read from the cache.
    pub cache_read: Money,
    /// Prompt token written to the cache (5-minute lifetime).
    pub cache_write: Money,
    /// Prompt token written to the cache (1-hour lifetime).
    pub cache_write_1h: Money,
}

impl Rates {
    /// Cost of `usage` at these rates.
    ///
    /// `usage.cached_tokens` and `usage.cache_write_tokens` are subsets of
    /// `usage.prompt_tokens` (callers normalise Anthropic's usage that way), and
    /// `cache_write_1h_tokens` a subset of the writes, so the uncached part is
    /// `prompt - cached - cache_write` (never below zero) and nothing is counted twice.
    /// Reasoning tokens are part of `completion_tokens` and billed as output.
    pub fn charge(&self, usage: &Usage) -> Money {
        let uncached = usage
            .prompt_tokens
            .saturating_sub(usage.cached_tokens)
            .saturating_sub(usage.cache_write_tokens);
        let write_1h = usage.cache_write_1h_tokens.min(usage.cache_write_tokens);
        let write_5m = usage.cache_write_tokens - write_1h;
        self.input
            .times(uncached)
            .saturating_add(self.cache_read.times(usage.cached_tokens))
            .saturating_add(self.cache_write.times(write_5m))
            .saturating_add(self.cache_write_1h.times(write_1h))
            .saturating_add(self.output.times(usage.completion_tokens))
    }
}

impl ModelPrice {
    /// A model's prices from its listed keys; `None` without standard input and output
    /// prices (the table then does not price it).
    pub fn new(model: &str, provider: &str, listed: Vec<(PriceKey, Money)>) -> Option<ModelPrice> {
        let get = |part, tier| {
            listed
                .iter()
                .find(|(k, _)| {
                    *k == PriceKey {
                        part,
                        above: None,
                        tier,
                    }
                })
                .map(|(_, m)| *m)
        };
        let input = get(Part::Input, Tier::Live)?;
        let output = get(Part::Output, Tier::Live)?;
        let batch_derived =
            get(Part::Input, Tier::Batch).is_none() || get(Part::Output, Tier::Batch).is_none();
        let mut bands: Vec<u64> = listed
            .iter()
            .filter(|(k, _)| k.part == Part::Input)
            .filter_map(|(k, _)| k.above)
            .collect();
        bands.sort_unstable();
        bands.dedup();
        Some(ModelPrice {
            model: model.to_string(),
            provider: provider.to_string(),
            input,
            output,
            batch_derived,
            max_input_tokens: None,
            max_output_tokens: None,
            deprecation_date: None,
            listed,
            bands,
        })
    }

    /// The price the table lists under exactly this key, if any.
    pub fn listed(&self, part: Part, above: Option<u64>, tier: Tier) -> Option<Money> {
        let key = PriceKey { part, above, tier };
        self.listed.iter().find(|(k, _)| *k == key).map(|(_, m)| *m)
    }

    /// Every listed price, in the table's order.
    pub fn listed_prices(&self) -> &[(PriceKey, Money)] {
        &self.listed
    }

    /// The long-context thresholds (prompt tokens), ascending.
    pub fn long_context_thresholds(&self) -> &[u64] {
        &self.bands
    }

    /// The tiers this model can be billed at: standard and batch always (batch derived as
    /// half when not listed), flex and priority when the table lists them.
    pub fn tiers(&self) -> Vec<Tier> {
        Tier::ALL
            .into_iter()
            .filter(|t| self.has_tier(*t))
            .collect()
    }

    /// True if the model is billed at `tier` (see [`ModelPrice::tiers`]).
    pub fn has_tier(&self, tier: Tier) -> bool {
        match tier {
            Tier::Live | Tier::Batch => true,
            Tier::Flex | Tier::Priority => self.listed(Part::Input, None, tier).is_some(),
        }
    }

    /// The long-context threshold a request with `prompt_tokens` crosses: the highest one
    /// below its prompt size, as the providers bill.
    pub fn band_for(&self, prompt_tokens: u64) -> Option<u64> {
        self.bands
            .iter()
            .rev()
            .find(|b| prompt_tokens > **b)
            .copied()
    }

    /// The standard-tier price of `part` in a band: listed, else the band below, else the
    /// fallbacks (cache read and write at the input price, 1-hour writes at the 5-minute
    /// price).
    fn standard(&self, part: Part, above: Option<u64>) -> Money {
        if let Some(m) = self.listed(part, above, Tier::Live) {
            return m;
        }
        if above.is_some() {
            return self.standard(part, None);
        }
        match part {
            Part::Input => self.input,
            Part::Output => self.output,
            Part::CacheRead | Part::CacheWrite => self.input,
            Part::CacheWrite1h => self.standard(Part::CacheWrite, None),
        }
    }

    /// The base (no band) input or output price at a tier: listed, else half the standard
    /// one for batch, else the standard one (a tier the table does not list).
    fn tier_base(&self, output: bool, tier: Tier) -> Money {
        let (part, std) = if output {
            (Part::Output, self.output)
        } else {
            (Part::Input, self.input)
        };
        match self.listed(part, None, tier) {
            Some(m) => m,
            None if tier == Tier::Batch => half(std),
            None => std,
        }
    }

    /// The price of `part` at `tier` in a band: listed under its exact key, else the
    /// standard price scaled by the tier's discount on input (or output) prices.
    fn price(&self, part: Part, above: Option<u64>, tier: Tier) -> Money {
        if tier == Tier::Live {
            return self.standard(part, above);
        }
        if let Some(m) = self.listed(part, above, tier) {
            return m;
        }
        let output = part == Part::Output;
        let std_base = if output { self.output } else { self.input };
        scale(
            self.standard(part, above),
            self.tier_base(output, tier),
            std_base,
        )
    }

    /// The per-token prices at a tier for a request in the given long-context band
    /// (`None`: below every threshold).
    pub fn rates_at(&self, tier: Tier, above: Option<u64>) -> Rates {
        Rates {
            input: self.price(Part::Input, above, tier),
            output: self.price(Part::Output, above, tier),
            cache_read: self.price(Part::CacheRead, above, tier),
            cache_write: self.price(Part::CacheWrite, above, tier),
            cache_write_1h: self.price(Part::CacheWrite1h, above, tier),
        }
    }

    /// The per-token prices at a tier for a request below every long-context threshold.
    pub fn rates(&self, tier: Tier) -> Rates {
        self.rates_at(tier, None)
    }

    /// Cost of one response at a tier. A prompt above a long-context threshold bills the
    /// whole request at that band's prices.
    pub fn cost(&self, usage: &Usage, tier: Tier) -> Money {
        self.rates_at(tier, self.band_for(usage.prompt_tokens))
            .charge(usage)
    }

    /// Cost of the summed usage of many requests, each below every long-context threshold
    /// (for estimates that add requests up before pricing them).
    pub fn cost_of_many(&self, usage: &Usage, tier: Tier) -> Money {
        self.rates(tier).charge(usage)
    }
}

/// Prompt tokens read from and written to a provider's prompt cache, by a run's answers or
/// as an estimate expects them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheTokens {
    /// Read at the cache-read price.
    pub read: u64,
    /// Written at a premium (5-minute lifetime, or 1-hour for `written_1h` of them).
    pub written: u64,
    /// Of `written`, those written for an hour.
    pub written_1h: u64,
}

impl CacheTokens {
    /// Adds one answer's usage.
    pub fn add(&mut self, u: &Usage) {
        self.read = self.read.saturating_add(u.cached_tokens);
        self.written = self.written.saturating_add(u.cache_write_tokens);
        self.written_1h = self.written_1h.saturating_add(u.cache_write_1h_tokens);
    }

    /// What caching saved (or is expected to save) at `price`'s `tier`, in USD: what the
    /// tokens would have cost at the input price, less what they cost (reads at the
    /// cache-read price, writes with their premium). The tokens are summed over many
    /// requests, so no long-context band applies ([`ModelPrice::cost_of_many`]).
    pub fn saved(&self, price: &ModelPrice, tier: Tier) -> f64 {
        let tokens = self.read.saturating_add(self.written);
        let full = price.cost_of_many(
            &Usage {
                prompt_tokens: tokens,
                ..Usage::default()
            },
            tier,
        );
        let paid = price.cost_of_many(
            &Usage {
                prompt_tokens: tokens,
                cached_tokens: self.read,
                cache_write_tokens: self.written,
                cache_write_1h_tokens: self.written_1h.min(self.written),
                ..Usage::default()
            },
            tier,
        );
        full.as_usd() - paid.as_usd()
    }
}

/// `price * num / den`, rounded to the nearest picodollar; `price` itself if `den` is zero
/// (a free model has no meaningful tier ratio).
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

/// Reads a LiteLLM key as a [`PriceKey`]: `<part>[_above_<N>k_tokens][_flex|_priority|_batches]`.
/// `None` for every other key (per-image, per-second, audio, `_above_12hr` writes...).
pub fn parse_key(key: &str) -> Option<PriceKey> {
    let (rest, tier) = [Tier::Flex, Tier::Priority, Tier::Batch]
        .into_iter()
        .find_map(|t| key.strip_suffix(t.suffix()).map(|r| (r, t)))
        .unwrap_or((key, Tier::Live));
    let (rest, above) = match rest
        .strip_suffix("k_tokens")
        .and_then(|r| r.rsplit_once("_above_"))
    {
        Some((head, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (head, Some(n.parse::<u64>().ok()?.checked_mul(1000)?))
        }
        _ => (rest, None),
    };
    let part = Part::ALL.into_iter().find(|p| p.key() == rest)?;
    Some(PriceKey { part, above, tier })
}

/// The LiteLLM key of a [`PriceKey`] (the inverse of [`parse_key`]).
pub fn key_name(key: &PriceKey) -> String {
    let band = key
        .above
        .map(|n| format!("_above_{}k_tokens", n / 1000))
        .unwrap_or_default();
    format!("{}{band}{}", key.part.key(), key.tier.suffix())
}

#[cfg(test)]
mod tests;
