//! The price table: which file the prices come from, and finding a model in it.
//!
//! Three sources, the later winning: the snapshot of LiteLLM's file shipped in the binary
//! (`prices/litellm.json`, with its version and date in `prices/litellm.meta.json`); the
//! file `promptmill prices update` saved in the cache folder; a `--prices FILE` laid over
//! either. Each file is parsed once and only the prices promptmill uses are kept.

use super::{parse_key, ModelPrice};
use crate::types::Money;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The shipped price table, embedded at compile time.
const BUILTIN_JSON: &str = include_str!("../../prices/litellm.json");
/// Where the shipped table comes from and its date.
const BUILTIN_META: &str = include_str!("../../prices/litellm.meta.json");
/// How the embedded table is named in messages.
const BUILTIN_NAME: &str = "<built-in prices/litellm.json>";

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

/// Which file a table's prices come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriceOrigin {
    /// The snapshot shipped in the binary.
    Builtin,
    /// The file `promptmill prices update` saved.
    Cache(PathBuf),
    /// A `--prices FILE`, laid over the built-in or cached table.
    File(PathBuf),
}

impl PriceOrigin {
    /// How the origin is named to users.
    pub fn describe(&self) -> String {
        match self {
            PriceOrigin::Builtin => "built-in snapshot".into(),
            PriceOrigin::Cache(p) => format!("cache file {}", p.display()),
            PriceOrigin::File(p) => format!("--prices file {}", p.display()),
        }
    }
}

/// Model prices by name, with the table's provenance.
#[derive(Debug, Clone)]
pub struct PriceTable {
    source: String,
    as_of: String,
    origin: PriceOrigin,
    models: HashMap<String, ModelPrice>,
    /// A LiteLLM provider prefix (`gemini`) looked up before the bare name: the job's
    /// endpoint is that provider's, whose prices LiteLLM keeps under `<prefix>/<model>`.
    prefer: Option<&'static str>,
}

/// The `_source`/`_as_of` a file may carry, or its sidecar `*.meta.json`.
#[derive(serde::Deserialize, Default)]
struct Meta {
    #[serde(default)]
    source: String,
    #[serde(default)]
    as_of: String,
}

impl PriceTable {
    /// The table shipped in the binary, parsed on first use.
    pub fn builtin() -> &'static PriceTable {
        static TABLE: OnceLock<PriceTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            // The embedded JSON is a compile-time constant and the unit test
            // `builtin_table_parses_with_its_metadata` parses this exact text, so this
            // cannot fail in a tested build.
            let mut t = Self::parse(BUILTIN_JSON, Path::new(BUILTIN_NAME))
                .expect("embedded prices/litellm.json parses (checked by unit test)");
            let meta: Meta = serde_json::from_str(BUILTIN_META).unwrap_or_default();
            t.source = meta.source;
            t.as_of = meta.as_of;
            t
        })
    }

    /// Loads a table in LiteLLM's schema. Unknown keys are ignored; entries that are not
    /// objects or lack numeric input/output prices (e.g. LiteLLM's `sample_spec`) are
    /// skipped. Provenance comes from the file's `_source`/`_as_of` keys, else from a
    /// sidecar `<name>.meta.json` (`{"source": ..., "as_of": "YYYY-MM-DD"}`).
    pub fn from_file(path: &Path) -> Result<PriceTable, PriceError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut t = Self::parse(&text, path)?;
        t.origin = PriceOrigin::File(path.to_path_buf());
        if let Some(meta) = read_meta(path) {
            if t.source.is_empty() {
                t.source = meta.source;
            }
            if t.as_of.is_empty() {
                t.as_of = meta.as_of;
            }
        }
        Ok(t)
    }

    /// Checks downloaded text is a price table (for `prices update`); the number of models
    /// priced.
    pub fn validate(text: &str, name: &str) -> Result<usize, PriceError> {
        Self::parse(text, Path::new(name)).map(|t| t.len())
    }

    /// The base table of a run: the cached file of `prices update` when there is a valid
    /// one, else the built-in snapshot. A cache file that no longer parses is reported and
    /// skipped.
    pub fn base(cache_file: Option<&Path>) -> std::borrow::Cow<'static, PriceTable> {
        if let Some(path) = cache_file.filter(|p| p.is_file()) {
            match Self::from_file(path) {
                Ok(mut t) => {
                    t.origin = PriceOrigin::Cache(path.to_path_buf());
                    return std::borrow::Cow::Owned(t);
                }
                Err(e) => tracing::warn!("ignoring the cached prices: {e}"),
            }
        }
        std::borrow::Cow::Borrowed(Self::builtin())
    }

    /// Loads a user table and lays it over `base`: its entries replace entries of the same
    /// name, the others stay (for `--prices FILE`).
    pub fn merged_over(base: &PriceTable, path: &Path) -> Result<PriceTable, PriceError> {
        let user = Self::from_file(path)?;
        let mut merged = base.clone();
        merged.models.extend(user.models);
        merged.source = format!(
            "{} ({}), over the {} ({})",
            path.display(),
            if user.source.is_empty() {
                "no _source"
            } else {
                &user.source
            },
            base.origin.describe(),
            merged.source
        );
        if !user.as_of.is_empty() {
            merged.as_of = user.as_of;
        }
        merged.origin = PriceOrigin::File(path.to_path_buf());
        Ok(merged)
    }

    /// Loads a user table over the built-in one.
    pub fn merged_over_builtin(path: &Path) -> Result<PriceTable, PriceError> {
        Self::merged_over(Self::builtin(), path)
    }

    /// Finds a model's prices: the exact name first; then with provider prefixes such as
    /// `openai/`, `anthropic/` or `azure/` stripped; then with a dated snapshot suffix
    /// (`-2024-08-06`, `-20250514`) removed. `None` if the model is unknown.
    pub fn lookup(&self, model: &str) -> Option<&ModelPrice> {
        let model = model.trim();
        if let Some(p) = self.prefer.filter(|_| !model.contains('/')) {
            let hit = self.models.get(&format!("{p}/{model}")).or_else(|| {
                strip_snapshot(model).and_then(|base| self.models.get(&format!("{p}/{base}")))
            });
            if hit.is_some() {
                return hit;
            }
        }
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

    /// Looks a bare model name up under `provider/` first (`gemini/gemini-2.5-flash` for
    /// `gemini-2.5-flash`), for a job whose endpoint is that provider's.
    pub fn prefer_provider(&mut self, provider: &'static str) {
        self.prefer = Some(provider);
    }

    /// Up to `n` priced model names close to `model`, closest first (for "unknown model"
    /// messages).
    pub fn suggest(&self, model: &str, n: usize) -> Vec<&str> {
        let want = model.trim().to_ascii_lowercase();
        let want = without_prefixes(&want)
            .last()
            .copied()
            .unwrap_or("")
            .to_string();
        let mut scored: Vec<(f64, &str)> = self
            .models
            .keys()
            .map(|name| {
                let bare = without_prefixes(name).last().copied().unwrap_or(name);
                let mut score = strsim::jaro_winkler(&want, &bare.to_ascii_lowercase());
                if !want.is_empty() && bare.contains(want.as_str()) {
                    score += 0.1;
                }
                // Prefer the plain name over provider-qualified copies.
                if bare.len() == name.len() {
                    score += 0.01;
                }
                (score, name.as_str())
            })
            .filter(|(s, _)| *s > 0.75)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        scored.into_iter().take(n).map(|(_, name)| name).collect()
    }

    /// Where the figures come from (the file's `_source` or metadata).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The date of the figures (`YYYY-MM-DD`; empty if unknown).
    pub fn as_of(&self) -> &str {
        &self.as_of
    }

    /// Which file the prices come from.
    pub fn origin(&self) -> &PriceOrigin {
        &self.origin
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

    pub(crate) fn parse(text: &str, path: &Path) -> Result<PriceTable, PriceError> {
        use serde::Deserialize as _;
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = Entries::deserialize(&mut de).and_then(|e| de.end().map(|()| e));
        let Entries {
            source,
            as_of,
            models,
        } = match parsed {
            Ok(e) => e,
            // Every entry is read as any JSON value: only a top level that is no object is
            // a data error.
            Err(e) if e.is_data() => {
                return Err(PriceError::NotAnObject {
                    path: path.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(PriceError::Json {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        if models.is_empty() {
            return Err(PriceError::NoModels {
                path: path.to_path_buf(),
            });
        }
        Ok(PriceTable {
            source,
            as_of,
            origin: PriceOrigin::Builtin,
            models,
            prefer: None,
        })
    }
}

/// What a price file holds, read one entry at a time: only that entry's JSON is held while
/// it becomes a [`ModelPrice`] (the whole of LiteLLM's file as one `Value` took about 25 MB
/// at its peak, for a table a tenth of that).
struct Entries {
    source: String,
    as_of: String,
    models: HashMap<String, ModelPrice>,
}

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        d.deserialize_map(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> serde::de::Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object mapping model names to prices")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut e = Entries {
            source: String::new(),
            as_of: String::new(),
            models: HashMap::new(),
        };
        while let Some(name) = map.next_key::<String>()? {
            let entry: Value = map.next_value()?;
            let text = || entry.as_str().unwrap_or_default().to_string();
            match name.as_str() {
                "_source" => e.source = text(),
                "_as_of" => e.as_of = text(),
                n if n.starts_with('_') || NOT_MODELS.contains(&n) => {}
                _ => {
                    if let Some(p) = entry.as_object().and_then(|o| model_price(&name, o)) {
                        e.models.insert(name, p);
                    }
                }
            }
        }
        Ok(e)
    }
}

/// The sidecar metadata of a price file (`prices.json` → `prices.meta.json`), if any.
fn read_meta(path: &Path) -> Option<Meta> {
    let stem = path.file_stem()?.to_str()?;
    let meta = path.with_file_name(format!("{stem}.meta.json"));
    serde_json::from_str(&std::fs::read_to_string(meta).ok()?).ok()
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

/// One table entry as prices, or `None` if it lacks standard input/output prices.
fn model_price(name: &str, entry: &Map<String, Value>) -> Option<ModelPrice> {
    let listed = entry
        .iter()
        .filter_map(|(k, v)| {
            let usd = v.as_f64()?;
            Some((parse_key(k)?, Money::from_usd(usd)))
        })
        .collect();
    let provider = entry
        .get("litellm_provider")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut p = ModelPrice::new(name, provider, listed)?;
    p.max_input_tokens = limit(entry, "max_input_tokens");
    p.max_output_tokens = limit(entry, "max_output_tokens");
    p.deprecation_date = entry
        .get("deprecation_date")
        .and_then(Value::as_str)
        .map(str::to_string);
    Some(p)
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
pub(crate) fn strip_snapshot(name: &str) -> Option<&str> {
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

/// The embedded table's text, for the unit test that proves [`PriceTable::builtin`] cannot
/// fail.
#[cfg(test)]
pub(crate) const BUILTIN_FOR_TEST: (&str, &str, &str) = (BUILTIN_JSON, BUILTIN_META, BUILTIN_NAME);
