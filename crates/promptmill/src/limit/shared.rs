//! The shared backend of the limiter (`[limits] shared`): the request and token buckets
//! and the 429 cooldown of one key live in Redis, so every process using that key (on any
//! machine) draws from the same limits.
//!
//! Each operation is one atomic Lua script (sent by hash, with the full text as fallback)
//! and reads the time from Redis itself (`TIME`), so the machines' clocks do not matter.
//! The buckets are the same GCRA as the local ones (one second's worth, a little under the
//! limit); the limits they run at are the ones each process knows when it asks (the job's,
//! or learned from headers by that process).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};

use super::{BURST_MARGIN, RATE_MARGIN};

/// What to do when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop the job (exit 3, rows stay pending).
    #[default]
    Stop,
    /// Warn once, then go on with the local limiter alone.
    Local,
}

/// How long one Redis call may take before Redis counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Reserves one request and `tokens` tokens. KEYS: requests bucket, tokens bucket, cooldown.
/// ARGV: requests/min (0 = no bucket), tokens/min (0 = no bucket), tokens, rate margin,
/// burst margin, paced (1: no burst, each take waits for the one before it; the level stays
/// where it is). Returns `{wait_us, cooldown_ms}`: with a cooldown running nothing is taken.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cd = redis.call('PTTL', KEYS[3])
if cd > 0 then return {0, cd} end
local paced = ARGV[6] == '1'
local function reserve(key, per_minute, n, rate_margin, burst_margin)
  if per_minute <= 0 then return now end
  local interval = 60000000 / (per_minute * rate_margin)
  local burst = math.max(1, math.floor(per_minute / 60 * burst_margin))
  local tau = burst * interval
  local tat = tonumber(redis.call('GET', key) or now)
  local start = math.max(tat, now)
  local send_at = start
  if not paced then
    send_at = math.max(now, start + math.min(n, burst) * interval - tau)
  end
  local new_tat = start + n * interval
  redis.call('SET', key, string.format('%.0f', new_tat), 'PX',
    math.floor((new_tat - now) / 1000) + 60000)
  return send_at
end
local rm = tonumber(ARGV[4])
local bm = tonumber(ARGV[5])
local a = reserve(KEYS[1], tonumber(ARGV[1]), 1, rm, bm)
local b = reserve(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]), rm, bm)
return {math.floor(math.max(a, b) - now), 0}
"#;

/// Gives back `n` unused tokens. KEYS: tokens bucket. ARGV: tokens/min, n, rate margin.
const REFUND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local per_minute = tonumber(ARGV[1])
if per_minute <= 0 then return 0 end
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat <= now then return 0 end
local interval = 60000000 / (per_minute * tonumber(ARGV[3]))
local new_tat = math.max(now, tat - tonumber(ARGV[2]) * interval)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',
  math.floor((new_tat - now) / 1000) + 60000)
return 1
"#;

/// Starts (or lengthens) the shared cooldown and empties both buckets at its end.
/// KEYS: requests bucket, tokens bucket, cooldown. ARGV: ms, requests/min, tokens/min,
/// rate margin, burst margin.
const COOL_DOWN: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[3]) < ms then
  redis.call('SET', KEYS[3], '1', 'PX', ms)
end
local untl = now + redis.call('PTTL', KEYS[3]) * 1000
local function hold(key, per_minute)
  if per_minute <= 0 then return end
  local interval = 60000000 / (per_minute * tonumber(ARGV[4]))
  local burst = math.max(1, math.floor(per_minute / 60 * tonumber(ARGV[5])))
  local tat = tonumber(redis.call('GET', key) or now)
  local new_tat = math.max(tat, untl + burst * interval)
  redis.call('SET', key, string.format('%.0f', new_tat), 'PX',
    math.floor((new_tat - now) / 1000) + 60000)
end
hold(KEYS[1], tonumber(ARGV[2]))
hold(KEYS[2], tonumber(ARGV[3]))
return 1
"#;

/// One key's buckets in Redis.
pub struct Shared {
    conn: MultiplexedConnection,
    /// The URL with any password replaced, for messages.
    shown: String,
    key: String,
    on_failure: OnFailure,
    /// Redis failed and `on_failure = "local"`: the local limiter alone from now on.
    fell_back: AtomicBool,
    /// Redis failed and `on_failure = "stop"`: every acquire refuses from now on.
    failed: std::sync::Mutex<Option<String>>,
    acquire: Script,
    refund: Script,
    cool_down: Script,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.shown)
            .field("key", &self.key)
            .finish()
    }
}

/// How a reservation draws from the buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// As the buckets allow: a full bucket lets a second's worth go at once.
    Burst,
    /// At the rate, without the burst (before this process has seen an answer that says
    /// whether the server agrees with the job's limits); the buckets' level is left alone.
    Paced,
}

/// A reservation's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Grant {
    /// Send after this wait.
    After(Duration),
    /// A cooldown is running for this long: ask again after it.
    CoolingDown(Duration),
    /// Redis is gone and the job goes on locally.
    Local,
}

/// The URL with its password (if any) replaced by `***`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(an unparseable URL)".to_string(),
    }
}

/// The default shared key: provider, base URL and a hash of the API key (never the key).
pub fn default_key(provider: &str, base_url: &str, api_key: &str) -> String {
    use sha2::{Digest, Sha256};
    let key_hash = Sha256::digest(api_key.as_bytes());
    let mut h = Sha256::new();
    h.update(provider.as_bytes());
    h.update([0]);
    h.update(base_url.as_bytes());
    h.update([0]);
    h.update(key_hash);
    let d = h.finalize();
    let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("promptmill:{hex}")
}

impl Shared {
    /// Connects to `url` (a `redis://` URL) for the buckets of `key`.
    pub async fn connect(url: &str, key: &str, on_failure: OnFailure) -> Result<Shared, String> {
        let shown = redact(url);
        let fail = |e: &dyn std::fmt::Display| {
            format!(
                "the shared rate limiter (limits.shared = {shown}) cannot be reached: {}",
                scrub(&e.to_string(), url)
            )
        };
        let client = redis::Client::open(url).map_err(|e| fail(&e))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| fail(&e))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| fail(&e))?;
        Ok(Shared {
            conn,
            shown: shown.clone(),
            key: key.to_string(),
            on_failure,
            fell_back: AtomicBool::new(false),
            failed: std::sync::Mutex::new(None),
            acquire: Script::new(ACQUIRE),
            refund: Script::new(REFUND),
            cool_down: Script::new(COOL_DOWN),
        })
    }

    /// The connection and the URL as shown in messages, for the shared budget on the same
    /// Redis.
    pub fn connection(&self) -> (MultiplexedConnection, String) {
        (self.conn.clone(), self.shown.clone())
    }

    /// The name of this key's buckets.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn keys(&self) -> [String; 3] {
        [
            format!("{}:requests", self.key),
            format!("{}:tokens", self.key),
            format!("{}:cooldown", self.key),
        ]
    }

    /// The stop message, once Redis failed under `on_failure = "stop"`.
    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Redis failed: stop (remember why) or go local (warn once).
    fn failed_with(&self, e: &redis::RedisError) {
        let why = format!(
            "the shared rate limiter at {} failed: {}",
            self.shown,
            scrub(&e.to_string(), &self.shown)
        );
        match self.on_failure {
            OnFailure::Stop => {
                let mut g = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                if g.is_none() {
                    *g = Some(format!(
                        "{why} (limits.on_shared_failure = \"stop\"; \"local\" would go on \
                         with this process's own limits)"
                    ));
                }
            }
            OnFailure::Local => {
                if !self.fell_back.swap(true, Ordering::AcqRel) {
                    eprintln!(
                        "warning: {why}; going on with this process's own limits \
                         (limits.on_shared_failure = \"local\")"
                    );
                }
            }
        }
    }

    fn active(&self) -> bool {
        !self.fell_back.load(Ordering::Acquire)
    }

    /// Reserves one request of `tokens` tokens at the given limits. `Err` carries the stop
    /// message (Redis failed and `on_failure = "stop"`).
    pub async fn acquire(
        &self,
        requests_per_minute: Option<u64>,
        tokens_per_minute: Option<u64>,
        tokens: u64,
    ) -> Result<Grant, String> {
        self.acquire_at(requests_per_minute, tokens_per_minute, tokens, Pace::Burst)
            .await
    }

    /// [`Shared::acquire`] at the given [`Pace`].
    pub async fn acquire_at(
        &self,
        requests_per_minute: Option<u64>,
        tokens_per_minute: Option<u64>,
        tokens: u64,
        pace: Pace,
    ) -> Result<Grant, String> {
        if let Some(why) = self.failure() {
            return Err(why);
        }
        if !self.active() {
            return Ok(Grant::Local);
        }
        let [r, t, c] = self.keys();
        let mut conn = self.conn.clone();
        let answer: Result<(i64, i64), _> = self
            .acquire
            .key(r)
            .key(t)
            .key(c)
            .arg(requests_per_minute.unwrap_or(0))
            .arg(tokens_per_minute.unwrap_or(0))
            .arg(tokens)
            .arg(RATE_MARGIN)
            .arg(BURST_MARGIN)
            .arg(u8::from(pace == Pace::Paced))
            .invoke_async(&mut conn)
            .await;
        match answer {
            Ok((_, cd)) if cd > 0 => Ok(Grant::CoolingDown(Duration::from_millis(cd as u64))),
            Ok((wait, _)) => Ok(Grant::After(Duration::from_micros(wait.max(0) as u64))),
            Err(e) => {
                self.failed_with(&e);
                match self.failure() {
                    Some(why) => Err(why),
                    None => Ok(Grant::Local),
                }
            }
        }
    }

    /// Whether a shared cooldown is running now (asked after a wait, before sending).
    pub async fn cooling(&self) -> Result<Option<Duration>, String> {
        if !self.active() {
            return Ok(None);
        }
        let [_, _, c] = self.keys();
        let mut conn = self.conn.clone();
        let answer: Result<i64, _> = redis::cmd("PTTL").arg(c).query_async(&mut conn).await;
        match answer {
            Ok(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms as u64))),
            Ok(_) => Ok(None),
            Err(e) => {
                self.failed_with(&e);
                match self.failure() {
                    Some(why) => Err(why),
                    None => Ok(None),
                }
            }
        }
    }

    /// Gives back `n` unused tokens.
    pub async fn refund(&self, tokens_per_minute: Option<u64>, n: u64) {
        let Some(tpm) = tokens_per_minute.filter(|_| self.active()) else {
            return;
        };
        let [_, t, _] = self.keys();
        let mut conn = self.conn.clone();
        let answer: Result<i64, _> = self
            .refund
            .key(t)
            .arg(tpm)
            .arg(n)
            .arg(RATE_MARGIN)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = answer {
            self.failed_with(&e);
        }
    }

    /// Starts the shared cooldown for `d`.
    pub async fn cool_down(
        &self,
        d: Duration,
        requests_per_minute: Option<u64>,
        tokens_per_minute: Option<u64>,
    ) {
        if !self.active() {
            return;
        }
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let [r, t, c] = self.keys();
        let mut conn = self.conn.clone();
        let answer: Result<i64, _> = self
            .cool_down
            .key(r)
            .key(t)
            .key(c)
            .arg(ms)
            .arg(requests_per_minute.unwrap_or(0))
            .arg(tokens_per_minute.unwrap_or(0))
            .arg(RATE_MARGIN)
            .arg(BURST_MARGIN)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = answer {
            self.failed_with(&e);
        }
    }
}

/// Takes `url` (which may hold a password) out of a client error's text.
pub(crate) fn scrub(text: &str, url: &str) -> String {
    let mut t = text.to_string();
    if let Ok(u) = url::Url::parse(url) {
        if let Some(p) = u.password().filter(|p| !p.is_empty()) {
            t = t.replace(p, "***");
        }
    }
    t.replace(url, &redact(url))
}
