//! `promptmill prices update`: fetch a newer LiteLLM price file into the user's cache
//! folder, where later runs find it (see [`cache_file`]).
//!
//! The download is checked as a price table before it replaces the cached one, and the
//! replacement is atomic (a temporary file in the same folder, then a rename), so a failed
//! or corrupt download leaves the previous file in place.

use super::PriceTable;
use crate::time;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `prices update` downloads from by default: LiteLLM's file on GitHub.
pub const DEFAULT_URL: &str =
    "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json";

/// Environment variable that overrides the cache folder.
pub const CACHE_DIR_ENV: &str = "PROMPTMILL_CACHE_DIR";

/// The largest download accepted (LiteLLM's file is a few megabytes).
const MAX_BYTES: usize = 64 << 20;

/// Why an update failed; the cached file is unchanged.
#[derive(thiserror::Error, Debug)]
pub enum UpdateError {
    /// No cache folder: no home directory and no `PROMPTMILL_CACHE_DIR`.
    #[error("no cache folder: set {CACHE_DIR_ENV} to a folder")]
    NoCacheDir,
    /// The download failed.
    #[error("cannot download {url}: {message}")]
    Download {
        /// Where from.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The source file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// What was fetched is not a price table.
    #[error("{0}; the cached prices were not changed")]
    Invalid(#[from] super::PriceError),
    /// The cache file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// The cache folder: `$PROMPTMILL_CACHE_DIR` when set, else the platform's cache folder for
/// promptmill (`~/.cache/promptmill` on Linux).
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os(CACHE_DIR_ENV) {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => directories::ProjectDirs::from("", "", "promptmill").map(|d| d.cache_dir().into()),
    }
}

/// The cached price file (whether or not it exists).
pub fn cache_file() -> Option<PathBuf> {
    cache_dir().map(|d| d.join("prices").join("litellm.json"))
}

/// What an update did.
#[derive(Debug)]
pub struct Updated {
    /// The file written.
    pub path: PathBuf,
    /// Models priced in it.
    pub models: usize,
}

/// Fetches `from` (an `http(s)://` URL, or a file path), checks it is a price table and
/// installs it as the cached file, stamped with its source and today's date.
pub async fn update(from: &str, today: &str) -> Result<Updated, UpdateError> {
    let text = fetch(from).await?;
    let path = cache_file().ok_or(UpdateError::NoCacheDir)?;
    install(&text, from, today, &path)
}

/// The text at `from`.
async fn fetch(from: &str) -> Result<String, UpdateError> {
    let is_url = from.starts_with("http://") || from.starts_with("https://");
    if !is_url {
        let path = PathBuf::from(from);
        return std::fs::read_to_string(&path).map_err(|source| UpdateError::Read { path, source });
    }
    let fail = |message: String| UpdateError::Download {
        url: from.to_string(),
        message,
    };
    let url = url::Url::parse(from).map_err(|e| fail(e.to_string()))?;
    crate::client::check_base_url(from, false).map_err(|e| fail(e.to_string()))?;
    let http = crate::client::http_client(
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120)),
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("the server answered HTTP {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
        if body.len() + chunk.len() > MAX_BYTES {
            return Err(fail(format!("more than {MAX_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| fail("the answer is not UTF-8 text".into()))
}

/// Checks `text` is a price table and writes it to `path` atomically, with `_source` and
/// `_as_of` keys added (the loader reads them; LiteLLM's own keys are kept as they are).
pub fn install(text: &str, from: &str, today: &str, path: &Path) -> Result<Updated, UpdateError> {
    let models = PriceTable::validate(text, from)?;
    // `validate` parsed it, so this parse succeeds; an error still maps cleanly.
    let mut value: Value = serde_json::from_str(text).map_err(|source| {
        UpdateError::Invalid(super::PriceError::Json {
            path: from.into(),
            source,
        })
    })?;
    if let Value::Object(top) = &mut value {
        top.insert(
            "_source".into(),
            Value::String(format!("LiteLLM price file downloaded from {from}")),
        );
        top.insert("_as_of".into(), Value::String(today.to_string()));
    }
    let write_err = |source| UpdateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    let bytes = serde_json::to_vec(&value).map_err(|e| write_err(std::io::Error::other(e)))?;
    tmp.write_all(&bytes).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(Updated {
        path: path.to_path_buf(),
        models,
    })
}

/// Today's date (`YYYY-MM-DD`, UTC), or `$PROMPTMILL_TODAY` when set (for tests and
/// reproducible reports).
pub fn today() -> String {
    match std::env::var("PROMPTMILL_TODAY") {
        Ok(d) if time::parse_date(&d).is_some() => d,
        _ => time::today_utc(),
    }
}
