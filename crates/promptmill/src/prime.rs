//! Paying for a shared prefix once (`cache.prefix`, live runs): the rows of each cacheable
//! prefix group (see [`crate::prefix`]) run together, after one primer request whose answer
//! means the provider has cached the prefix, so every later request of the group reads it.
//!
//! What is added to a request never changes its text: on the OpenAI shape a
//! `prompt_cache_key` naming the group (sharded so that no key gets more than
//! `cache.key_rpm` requests in any minute, the rate OpenAI says one key's cache machine
//! serves), on the Anthropic shape a `cache_control` mark at the end of the prefix's last
//! message. Neither is part of the request hash, so resume is not affected.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{Job, ProviderKind};
use crate::prefix::PrefixGroup;
use crate::types::{Message, Role, Usage};

/// Most groups primed and run together (the largest); the rest go in input order.
pub const MAX_PRIMED: usize = 64;
/// How long Anthropic's default cache entry lives after its last use.
const FIVE_MINUTES: Duration = Duration::from_secs(300);
/// The 1-hour entry.
const ONE_HOUR: Duration = Duration::from_secs(3600);
/// The lifetime a batch's `cache_control` asks for. A batch takes minutes to hours (up to
/// 24), and a group's main batch starts only once its primer batch has ended and been
/// collected: five minutes would often be gone before the main batch's requests run, while
/// the hour costs one write at 2× instead of 1.25× (Anthropic suggests the hour for
/// batches too).
pub const BATCH_TTL: Ttl = Ttl::OneHour;

/// One prefix of a request: its key (as [`crate::prefix::chain`]) and where Anthropic's
/// `cache_control` would end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The prefix's key.
    pub key: u64,
    /// Anthropic shape: 0 = the end of the system text, `t` = the end of the `t`-th turn;
    /// `None` when the body has no such place (a system message after the prefix would
    /// change the system text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<u32>,
}

/// A request's prefixes, shortest first.
pub fn links(messages: &[Message]) -> Vec<Link> {
    let systems = messages.iter().filter(|m| m.role == Role::System).count();
    let mut seen_systems = 0;
    let mut turns = 0u32;
    crate::prefix::chain(messages)
        .into_iter()
        .zip(messages)
        .map(|(key, m)| {
            if m.role == Role::System {
                seen_systems += 1;
            } else {
                turns += 1;
            }
            let mark = (seen_systems == systems && (turns > 0 || systems > 0)).then_some(turns);
            Link { key, mark }
        })
        .collect()
}

/// The cache lifetime asked for on the Anthropic shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The default 5 minutes (writes cost 1.25× the input price).
    FiveMinutes,
    /// One hour (writes cost 2×).
    OneHour,
}

/// The cheaper lifetime for a prefix that may sit unread for `idle` (the longest expected
/// wait between two of its reads): 5 minutes when it stays fresh that long (one write at
/// 1.25×); one hour when only the hour keeps it (one write at 2× beats two at 1.25×); 5
/// minutes again when neither does.
pub fn ttl_for(idle: Option<Duration>) -> Ttl {
    match idle {
        Some(d) if d > FIVE_MINUTES && d <= ONE_HOUR => Ttl::OneHour,
        _ => Ttl::FiveMinutes,
    }
}

/// The lifetime each of `cacheable` groups (largest first, as they run) asks for. `requests`:
/// rows the run sends; `wall`: the shortest time the limits allow for them (`None`: no limit,
/// so nothing waits long). The primed groups run first, one after the other, and every
/// primer is answered at the start: a group's prefix waits while the groups before it are
/// sent. A group past [`MAX_PRIMED`] waits only between its own requests.
pub fn ttls(cacheable: &[&PrefixGroup], requests: u64, wall: Option<f64>) -> Vec<Ttl> {
    let per_request = wall
        .filter(|w| w.is_finite() && *w > 0.0)
        .map(|w| w / requests.max(1) as f64);
    let mut before = 0u64;
    cacheable
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let idle = per_request.map(|s| {
                let wait = if i < MAX_PRIMED { before as f64 * s } else { s };
                Duration::try_from_secs_f64(wait.max(s)).unwrap_or(Duration::MAX)
            });
            if i < MAX_PRIMED {
                before = before.saturating_add(g.rows);
            }
            ttl_for(idle)
        })
        .collect()
}

/// `prompt_cache_key`s for one group, sharded: each key is given to at most `rpm` requests
/// in any 60 seconds; the lowest free shard is used, so keys are added only as needed.
#[derive(Debug)]
pub struct KeyShards {
    base: String,
    rpm: usize,
    /// Per shard, when its recent requests were given the key (at most `rpm` each).
    used: Mutex<Vec<VecDeque<tokio::time::Instant>>>,
}

impl KeyShards {
    /// Keys `pm-<group id>-<shard>`, `rpm` (at least 1) requests a minute each.
    pub fn new(group_id: &str, rpm: u32) -> KeyShards {
        KeyShards {
            base: format!("pm-{group_id}"),
            rpm: rpm.max(1) as usize,
            used: Mutex::new(Vec::new()),
        }
    }

    /// The key for a request sent at `now`.
    pub fn key(&self, now: tokio::time::Instant) -> String {
        const WINDOW: Duration = Duration::from_secs(60);
        // A panicking holder cannot leave plain timestamps half-changed.
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        for q in used.iter_mut() {
            while q
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
            {
                q.pop_front();
            }
        }
        let shard = match used.iter().position(|q| q.len() < self.rpm) {
            Some(s) => s,
            None => {
                used.push(VecDeque::with_capacity(self.rpm));
                used.len() - 1
            }
        };
        if let Some(q) = used.get_mut(shard) {
            q.push_back(now);
        }
        format!("{}-{shard}", self.base)
    }
}

/// One cacheable group as a live run treats it.
#[derive(Debug)]
pub struct Group {
    /// The group's id (as the estimate lists it).
    pub id: String,
    /// Its place among the primed groups (run in this order), or `None`: not primed.
    pub primed: Option<usize>,
    /// Anthropic: the lifetime its `cache_control` asks for.
    pub ttl: Ttl,
    /// OpenAI shape: its keys (`None` with `cache.key_rpm = 0`).
    pub keys: Option<Arc<KeyShards>>,
    /// What its answers in this run read from and wrote to the cache.
    pub tally: Arc<Tally>,
}

/// What one group's answers read from and wrote to the provider's cache, added up as they
/// arrive (by the scheduler's tasks, hence atomics).
#[derive(Debug, Default)]
pub struct Tally {
    requests: AtomicU64,
    hits: AtomicU64,
    cached: AtomicU64,
    written: AtomicU64,
}

impl Tally {
    /// Counts one answer's usage.
    pub fn add(&self, u: &Usage) {
        self.requests.fetch_add(1, Relaxed);
        if u.cached_tokens > 0 {
            self.hits.fetch_add(1, Relaxed);
        }
        self.cached.fetch_add(u.cached_tokens, Relaxed);
        self.written.fetch_add(u.cache_write_tokens, Relaxed);
    }

    /// The group `id`'s use of the cache as tallied, or `None` when it answered nothing.
    pub fn used(&self, id: &str) -> Option<GroupUse> {
        let requests = self.requests.load(Relaxed);
        let hits = self.hits.load(Relaxed);
        (requests > 0).then(|| GroupUse {
            id: id.to_string(),
            requests,
            hits,
            hit_rate: hits as f64 / requests as f64,
            cached_tokens: self.cached.load(Relaxed),
            cache_write_tokens: self.written.load(Relaxed),
        })
    }
}

/// Orders groups' uses for the summary: the busiest first.
pub fn busiest_first(used: &mut [GroupUse]) {
    used.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.id.cmp(&b.id)));
}

/// One group's use of the cache in a run, for the summary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupUse {
    /// The group's id (as the estimate lists it).
    pub id: String,
    /// Its answers in this run.
    pub requests: u64,
    /// Those that read a cached prefix.
    pub hits: u64,
    /// `hits / requests`.
    pub hit_rate: f64,
    /// Prompt tokens read from the cache.
    pub cached_tokens: u64,
    /// Prompt tokens written to it (Anthropic).
    pub cache_write_tokens: u64,
}

/// The groups of a live run, by prefix key.
#[derive(Debug, Default)]
pub struct Plan {
    groups: HashMap<u64, Group>,
    anthropic: bool,
    /// A batch round's plan ([`Plan::for_batch`]).
    batch: bool,
    /// Primed groups, in the order they run.
    pub primed: usize,
}

impl Plan {
    /// The plan for `groups` (the estimate's, largest first; only cacheable ones count).
    /// `requests`: rows the run sends; `wall`: the shortest time the limits allow for them
    /// (`None`: no limit, so nothing waits long). `None` when there is nothing to do.
    pub fn new(
        job: &Job,
        groups: &[PrefixGroup],
        requests: u64,
        wall: Option<f64>,
    ) -> Option<Plan> {
        let cacheable: Vec<&PrefixGroup> = groups.iter().filter(|g| g.cacheable).collect();
        let ttls = ttls(&cacheable, requests, wall);
        Plan::build(job, cacheable, ttls, false)
    }

    /// The plan of a batch round for `groups` (the estimate's, largest first): the largest
    /// [`MAX_PRIMED`] cacheable groups are written together, each after its primer batch on
    /// the Anthropic shape (see [`Plan::mark_batch`]); `cache_control` asks for
    /// [`BATCH_TTL`]. `None` when there is nothing to do.
    pub fn for_batch(job: &Job, groups: &[PrefixGroup]) -> Option<Plan> {
        let cacheable: Vec<&PrefixGroup> = groups.iter().filter(|g| g.cacheable).collect();
        let ttls = vec![BATCH_TTL; cacheable.len()];
        Plan::build(job, cacheable, ttls, true)
    }

    fn build(job: &Job, cacheable: Vec<&PrefixGroup>, ttls: Vec<Ttl>, batch: bool) -> Option<Plan> {
        if !job.cache.prefix || cacheable.is_empty() {
            return None;
        }
        let anthropic = job.api.provider == ProviderKind::Anthropic;
        let openai = job.api.provider == ProviderKind::Openai;
        let mut plan = Plan {
            groups: HashMap::new(),
            anthropic,
            batch,
            primed: 0,
        };
        for (i, (g, ttl)) in cacheable.into_iter().zip(ttls).enumerate() {
            let primed = (i < MAX_PRIMED).then_some(i);
            if primed.is_some() {
                plan.primed += 1;
            }
            let keys = (openai && job.cache.key_rpm > 0)
                .then(|| Arc::new(KeyShards::new(&g.id, job.cache.key_rpm)));
            plan.groups.insert(
                g.key,
                Group {
                    id: g.id.clone(),
                    primed,
                    ttl,
                    keys,
                    tally: Arc::default(),
                },
            );
        }
        Some(plan)
    }

    /// The group a request belongs to (its longest prefix that is a group), with that
    /// prefix's link.
    pub fn group_of(&self, links: &[Link]) -> Option<(&Group, Link)> {
        links
            .iter()
            .rev()
            .find_map(|l| self.groups.get(&l.key).map(|g| (g, *l)))
    }

    /// Whether a batch round on this plan sends primer batches: Anthropic shape only (its
    /// cache is written only where `cache_control` marks it, and a batch's requests never
    /// read each other's writes, so a group needs its prefix written before its batch
    /// starts), and only with `cache.batch_primer`.
    pub fn batch_primers(&self, job: &Job) -> bool {
        self.batch && self.anthropic && job.cache.batch_primer
    }

    /// Marks one batch line of `group` (what [`Plan::mark`] and the scheduler's key do for
    /// a live request). OpenAI shape: the group's `prompt_cache_key`, `pm-<group id>`, one
    /// per group (a batch has no pace to shard it by; none with `cache.key_rpm = 0`).
    /// Anthropic shape: the `cache_control` mark, only when `primed` (a primer batch wrote
    /// the prefix before this line's batch starts): without a primer every line of a batch
    /// would pay the write premium, since none reads another's write.
    pub fn mark_batch(&self, group: &Group, link: Link, primed: bool, body: &mut Value) {
        if self.anthropic {
            if primed {
                self.mark(group, link, body);
            }
            return;
        }
        if group.keys.is_some() {
            if let Some(o) = body.as_object_mut() {
                o.insert("prompt_cache_key".into(), json!(format!("pm-{}", group.id)));
            }
        }
    }

    /// Each group's use of the cache in this run (those that sent anything), the busiest
    /// first.
    pub fn used(&self) -> Vec<GroupUse> {
        let mut used: Vec<GroupUse> = self
            .groups
            .values()
            .filter_map(|g| g.tally.used(&g.id))
            .collect();
        busiest_first(&mut used);
        used
    }

    /// Adds the group's `cache_control` mark to an Anthropic-shaped body (the text is not
    /// changed: a string becomes one text block holding it). Other shapes are left alone.
    pub fn mark(&self, group: &Group, link: Link, body: &mut Value) {
        if !self.anthropic {
            return;
        }
        let Some(at) = link.mark else { return };
        let control = match group.ttl {
            Ttl::FiveMinutes => json!({"type": "ephemeral"}),
            Ttl::OneHour => json!({"type": "ephemeral", "ttl": "1h"}),
        };
        let slot = if at == 0 {
            body.get_mut("system")
        } else {
            body.get_mut("messages")
                .and_then(|m| m.get_mut(at as usize - 1))
                .and_then(|m| m.get_mut("content"))
        };
        if let Some(v) = slot {
            if let Some(text) = v.as_str() {
                *v = json!([{"type": "text", "text": text, "cache_control": control}]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, base: tokio::time::Instant) -> tokio::time::Instant {
        base + Duration::from_secs(secs)
    }

    #[tokio::test(start_paused = true)]
    async fn keys_stay_under_their_rate_in_every_minute() {
        let shards = KeyShards::new("abc", 15);
        let t0 = tokio::time::Instant::now();
        // 90 requests a minute for three minutes, evenly spread.
        let mut sent: Vec<(u64, String)> = Vec::new();
        for i in 0..270u64 {
            let ms = i * 60_000 / 90;
            let now = t0 + Duration::from_millis(ms);
            sent.push((ms, shards.key(now)));
        }
        let keys: std::collections::BTreeSet<&String> = sent.iter().map(|(_, k)| k).collect();
        assert_eq!(keys.len(), 6, "90 a minute at 15 a key: six keys, {keys:?}");
        for k in &keys {
            let times: Vec<u64> = sent
                .iter()
                .filter(|(_, key)| key == *k)
                .map(|(t, _)| *t)
                .collect();
            for (i, t) in times.iter().enumerate() {
                let in_minute = times[i..].iter().take_while(|u| **u < t + 60_000).count();
                assert!(
                    in_minute <= 15,
                    "{k}: {in_minute} in the minute from {t} ms"
                );
            }
        }
        assert!(keys.iter().all(|k| k.starts_with("pm-abc-")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_group_keeps_one_key() {
        let shards = KeyShards::new("g", 15);
        let t0 = tokio::time::Instant::now();
        for i in 0..100 {
            assert_eq!(shards.key(at(i * 5, t0)), "pm-g-0", "one request every 5 s");
        }
    }

    #[test]
    fn the_hour_is_chosen_only_when_it_saves_a_write() {
        let min = |m: u64| Some(Duration::from_secs(m * 60));
        assert_eq!(ttl_for(None), Ttl::FiveMinutes);
        assert_eq!(ttl_for(min(4)), Ttl::FiveMinutes);
        assert_eq!(ttl_for(min(5)), Ttl::FiveMinutes);
        assert_eq!(ttl_for(min(6)), Ttl::OneHour);
        assert_eq!(ttl_for(min(60)), Ttl::OneHour);
        assert_eq!(ttl_for(min(61)), Ttl::FiveMinutes, "neither keeps it");
    }

    fn sys(t: &str) -> Message {
        Message::new(Role::System, t)
    }
    fn user(t: &str) -> Message {
        Message::new(Role::User, t)
    }
    fn asst(t: &str) -> Message {
        Message::new(Role::Assistant, t)
    }

    fn group(key: u64, rows: u64) -> PrefixGroup {
        PrefixGroup {
            id: format!("g{key}"),
            messages: 1,
            tokens: 2000,
            rows,
            cacheable: true,
            key,
        }
    }

    #[test]
    fn a_prefix_that_waits_past_five_minutes_asks_for_the_hour() {
        let (a, b) = (group(1, 1000), group(2, 1000));
        let groups = [&a, &b];
        // 2,000 requests in 50 minutes: group a starts at once, group b's prefix (written
        // by its primer at the start) waits 25 minutes for group a's rows.
        assert_eq!(
            ttls(&groups, 2000, Some(3000.0)),
            [Ttl::FiveMinutes, Ttl::OneHour]
        );
        // The same in 5 minutes: no prefix waits that long.
        assert_eq!(ttls(&groups, 2000, Some(300.0)), [Ttl::FiveMinutes; 2]);
        // No limit: nothing is known to wait.
        assert_eq!(ttls(&groups, 2000, None), [Ttl::FiveMinutes; 2]);
        // Over an hour: the hour does not keep it either, so the cheaper write.
        assert_eq!(ttls(&groups, 2000, Some(9000.0)), [Ttl::FiveMinutes; 2]);
    }

    #[test]
    fn marks_fall_at_the_end_of_each_prefix() {
        let l = links(&[sys("s"), user("q"), asst("a"), user("row")]);
        let marks: Vec<Option<u32>> = l.iter().map(|l| l.mark).collect();
        assert_eq!(marks, [Some(0), Some(1), Some(2)]);
        // A system message after the prefix changes the system text: no mark before it.
        let l = links(&[sys("s"), user("q"), sys("per row"), user("row")]);
        let marks: Vec<Option<u32>> = l.iter().map(|l| l.mark).collect();
        assert_eq!(marks, [None, None, Some(1)]);
        let keys: Vec<u64> = l.iter().map(|l| l.key).collect();
        assert_eq!(
            keys,
            crate::prefix::chain(&[sys("s"), user("q"), sys("per row"), user("row")])
        );
        assert!(links(&[user("only")]).is_empty());
    }

    #[test]
    fn a_batch_line_gets_its_groups_key_or_a_mark_behind_a_primer_only() {
        let group = |keys: bool| Group {
            id: "abc".into(),
            primed: Some(0),
            ttl: BATCH_TTL,
            keys: keys.then(|| Arc::new(KeyShards::new("abc", 15))),
            tally: Arc::default(),
        };
        let link = Link {
            key: 1,
            mark: Some(0),
        };
        let openai = Plan {
            batch: true,
            ..Plan::default()
        };
        let mut body = json!({"messages": [{"role": "system", "content": "S"}]});
        openai.mark_batch(&group(true), link, false, &mut body);
        assert_eq!(body["prompt_cache_key"], "pm-abc");
        let mut body = json!({"messages": []});
        openai.mark_batch(&group(false), link, true, &mut body);
        assert!(body.get("prompt_cache_key").is_none(), "cache.key_rpm = 0");

        let anthropic = Plan {
            anthropic: true,
            batch: true,
            ..Plan::default()
        };
        let mut body = json!({"system": "S", "messages": []});
        anthropic.mark_batch(&group(false), link, false, &mut body);
        assert_eq!(body["system"], "S", "no primer: no mark");
        anthropic.mark_batch(&group(false), link, true, &mut body);
        assert_eq!(body["system"][0]["text"], "S");
        assert_eq!(body["system"][0]["cache_control"]["ttl"], "1h");
        assert!(body.get("prompt_cache_key").is_none());
    }

    #[test]
    fn the_anthropic_mark_keeps_the_text() {
        let plan = Plan {
            anthropic: true,
            ..Plan::default()
        };
        let group = Group {
            id: "g".into(),
            primed: Some(0),
            ttl: Ttl::OneHour,
            keys: None,
            tally: Arc::default(),
        };
        let mut body = json!({"system": "S", "messages": [
            {"role": "user", "content": "q"}, {"role": "user", "content": "row"}]});
        plan.mark(
            &group,
            Link {
                key: 1,
                mark: Some(0),
            },
            &mut body,
        );
        assert_eq!(
            body["system"],
            json!([{"type": "text", "text": "S",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
        );
        plan.mark(
            &group,
            Link {
                key: 1,
                mark: Some(1),
            },
            &mut body,
        );
        assert_eq!(body["messages"][0]["content"][0]["text"], "q");
        assert_eq!(body["messages"][1]["content"], "row");
    }
}
