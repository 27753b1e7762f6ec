//! The shared budget (`[budget] shared = true`): `budget.max_usd_total` held in the Redis of
//! `limits.shared`, so every process on one budget key (the shards of a job, on any machine)
//! stays under the cap together.
//!
//! Redis keeps two hashes under the key, each with one field per *member*: a journal (its
//! file name and a hash of its host and full path, see [`member`]). `spent` is what the
//! member's journal says was paid; `held` the worst case of the member's requests in flight.
//! A request is sent only after one atomic script saw `Σ spent + Σ held + worst ≤ cap` and
//! added `worst` to the member's `held`; its answer moves it from `held` to `spent` at what
//! it really cost (an unknown price stays at the worst case, never $0).
//!
//! Why no lease or expiry: a process killed with requests in flight leaves them in `held`,
//! counted at their worst case, exactly as its own journal counts them (the reservation file
//! beside it): they may have been billed. When that journal's next run starts it sets its
//! member's `spent` from the journal (own lines and open reservations, companions left out)
//! and its `held` to zero, so the journal stays the source of truth and nothing is counted
//! twice. A journal that never runs again keeps counting at its worst case, which can only
//! stop the others early, never let them over-spend.
//!
//! Amounts are kept in nanodollars (rounded up), so the sums in Lua stay exact up to
//! millions of dollars.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redis::aio::MultiplexedConnection;
use redis::Script;

use crate::limit::shared::{scrub, OnFailure};
use crate::types::Money;

/// Joins the budget: sets the member's spend from its journal, its reservations to none.
/// KEYS: spent, held. ARGV: member, spent (nano). Returns everyone's total.
const JOIN: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], 0)
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(v) end
return total
"#;

/// Reserves a worst case if everyone's spend and reservations leave room for it under the
/// cap. KEYS: spent, held. ARGV: member, cap (nano), worst (nano). Returns `{1, total}`
/// (reserved), `{0, total}` (over the cap) or `{-1, 0}` (the member is unknown: Redis lost
/// the budget's data).
const RESERVE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {-1, 0} end
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(v) end
if total + tonumber(ARGV[3]) > tonumber(ARGV[2]) then return {0, total} end
redis.call('HINCRBY', KEYS[2], ARGV[1], ARGV[3])
return {1, total + tonumber(ARGV[3])}
"#;

/// Replaces a reservation with what was paid. KEYS: spent, held. ARGV: member, worst
/// (nano), paid (nano).
const SETTLE: &str = r#"
if redis.call('HINCRBY', KEYS[2], ARGV[1], '-' .. ARGV[2]) < 0 then
  redis.call('HSET', KEYS[2], ARGV[1], 0)
end
redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[3])
return 1
"#;

/// Picodollars to nanodollars, rounded up (a reservation or a cost is never made smaller).
fn nano(m: Money) -> u64 {
    m.0.div_ceil(1000)
}

/// The budget's answer to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Reserved in Redis: send.
    Reserved,
    /// Every process's spend and reservations together leave no room for it.
    OverCap,
    /// Redis is gone and `on_shared_failure = "local"`: only this process's ledger holds.
    Local,
}

/// One member's view of a shared budget in Redis.
pub struct SharedBudget {
    conn: MultiplexedConnection,
    /// The Redis URL with any password replaced, for messages.
    shown: String,
    key: String,
    member: String,
    cap: Money,
    on_failure: OnFailure,
    /// Redis failed under `on_failure = "local"`: the local ledger alone from now on.
    fell_back: AtomicBool,
    /// Everyone's spend and reservations the last time Redis said (nanodollars).
    seen: AtomicU64,
    reserve: Script,
    settle: Script,
}

impl std::fmt::Debug for SharedBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBudget")
            .field("url", &self.shown)
            .field("key", &self.key)
            .field("member", &self.member)
            .finish()
    }
}

/// The member name of a journal: its file name (readable in `redis-cli`) and a hash of the
/// host's name and the journal's full path, so journals of the same name on two machines or
/// in two folders are two members.
pub fn member(journal: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let full = std::fs::canonicalize(journal).unwrap_or_else(|_| journal.to_path_buf());
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(host.trim().as_bytes());
    h.update([0]);
    h.update(full.to_string_lossy().as_bytes());
    let hex: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = journal
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!("{name}@{hex}")
}

/// The default budget key: the limits' shared key, then a hash of the job's output file name
/// with any shard tag taken out (`out.shard-2-of-4.csv` → `out.csv`), so every shard of a
/// job, wherever it runs, shares one budget.
pub fn default_key(limits_key: &str, output_name: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(output_name.as_bytes());
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{limits_key}:budget:{hex}")
}

impl SharedBudget {
    /// Joins the budget `key` as `member`, whose journal says `own` was spent (its open
    /// reservations at their worst case). `Err` carries the message (Redis failed).
    pub async fn join(
        conn: MultiplexedConnection,
        shown: String,
        key: &str,
        member: String,
        cap: Money,
        own: Money,
        on_failure: OnFailure,
    ) -> Result<SharedBudget, String> {
        let b = SharedBudget {
            conn,
            shown,
            key: key.to_string(),
            member,
            cap,
            on_failure,
            fell_back: AtomicBool::new(false),
            seen: AtomicU64::new(0),
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
        };
        let [spent, held] = b.keys();
        let mut conn = b.conn.clone();
        let total: Result<u64, _> = Script::new(JOIN)
            .key(spent)
            .key(held)
            .arg(&b.member)
            .arg(nano(own))
            .invoke_async(&mut conn)
            .await;
        match total {
            Ok(t) => {
                b.seen.store(t, Ordering::Relaxed);
                Ok(b)
            }
            Err(e) => Err(b.why(&e.to_string())),
        }
    }

    fn keys(&self) -> [String; 2] {
        [format!("{}:spent", self.key), format!("{}:held", self.key)]
    }

    /// The budget's key in Redis.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What every process on the budget had spent and reserved when Redis last said.
    pub fn seen(&self) -> Money {
        Money(self.seen.load(Ordering::Relaxed).saturating_mul(1000))
    }

    fn why(&self, e: &str) -> String {
        format!(
            "the shared budget (budget.shared, key {}) at {} failed: {}",
            self.key,
            self.shown,
            scrub(e, &self.shown)
        )
    }

    /// Redis failed: the stop message (`on_failure = "stop"`), or warn once and go local.
    fn failed(&self, e: &str) -> Result<Verdict, String> {
        let why = self.why(e);
        match self.on_failure {
            OnFailure::Stop => Err(format!(
                "{why} (limits.on_shared_failure = \"stop\"; rows not done stay pending)"
            )),
            OnFailure::Local => {
                if !self.fell_back.swap(true, Ordering::AcqRel) {
                    eprintln!(
                        "warning: {why}; going on with this process's own budget ledger \
                         (limits.on_shared_failure = \"local\"): from now on the cap holds \
                         for this process alone"
                    );
                }
                Ok(Verdict::Local)
            }
        }
    }

    /// Reserves `worst` if every process's spend and reservations leave room for it.
    pub async fn reserve(&self, worst: Money) -> Result<Verdict, String> {
        if self.fell_back.load(Ordering::Acquire) {
            return Ok(Verdict::Local);
        }
        let [spent, held] = self.keys();
        let mut conn = self.conn.clone();
        let answer: Result<(i64, u64), _> = self
            .reserve
            .key(spent)
            .key(held)
            .arg(&self.member)
            .arg(nano(self.cap))
            .arg(nano(worst))
            .invoke_async(&mut conn)
            .await;
        match answer {
            Ok((1, total)) => {
                self.seen.store(total, Ordering::Relaxed);
                Ok(Verdict::Reserved)
            }
            Ok((0, total)) => {
                self.seen.store(total, Ordering::Relaxed);
                Ok(Verdict::OverCap)
            }
            Ok(_) => self.failed(
                "its data is gone (was Redis restarted without saving it?); what the other \
                 processes spent is unknown",
            ),
            Err(e) => self.failed(&e.to_string()),
        }
    }

    /// Replaces a reservation of `worst` with what was `paid` (None: paid at an unknown
    /// price, kept at the worst case). A failure here only leaves the worst case counted.
    pub async fn settle(&self, worst: Money, paid: Option<Money>) {
        if self.fell_back.load(Ordering::Acquire) {
            return;
        }
        let [spent, held] = self.keys();
        let mut conn = self.conn.clone();
        let answer: Result<i64, _> = self
            .settle
            .key(spent)
            .key(held)
            .arg(&self.member)
            .arg(nano(worst))
            .arg(nano(paid.unwrap_or(worst)))
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = answer {
            tracing::warn!("{}", self.why(&e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_round_up_to_nanodollars() {
        assert_eq!(nano(Money(0)), 0);
        assert_eq!(nano(Money(1)), 1);
        assert_eq!(nano(Money(1000)), 1);
        assert_eq!(nano(Money(1001)), 2);
    }

    #[test]
    fn shards_share_a_key_and_journals_are_members_apart() {
        let a = default_key("promptmill:k", "out.csv");
        assert_eq!(a, default_key("promptmill:k", "out.csv"));
        assert_ne!(a, default_key("promptmill:k", "other.csv"));
        assert!(a.starts_with("promptmill:k:budget:"));
        let m1 = member(std::path::Path::new("/nowhere/a/out.journal.jsonl"));
        let m2 = member(std::path::Path::new("/nowhere/b/out.journal.jsonl"));
        assert!(m1.starts_with("out.journal.jsonl@"));
        assert_ne!(m1, m2);
    }
}
