//! The limiter: requests/min and tokens/min buckets shared by every in-flight request, one
//! shared cooldown that a 429 imposes on everybody, and the adaptation to what the server
//! says in its rate-limit headers.
//!
//! Providers enforce per-minute limits in slices of about a second, so the buckets hold at
//! most one second's worth: a job never bursts a whole minute's allowance at start (that is
//! how naive clients lose rows to 429s).
//!
//! The buckets are our own small GCRA ("virtual scheduling") rather than governor's: we
//! need operations governor does not have — give back tokens a response did not use, lower
//! the level to what the server reports remaining, and empty the bucket at the end of a
//! cooldown — and the arithmetic is a dozen lines. A reservation is taken in one lock and
//! tells the caller when to send, so waiters queue in order (a large token request is not
//! starved by small ones) and nobody polls.
//!
//! Nothing here does I/O but the optional shared backend (`shared`, Redis); time comes
//! from `tokio::time`, so the tests run on a paused clock.

pub mod shared;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::client::RateLimitInfo;

/// We run this much slower than the limit, so the server's bucket slowly gains slack that
/// absorbs network jitter compressing our request spacing.
const RATE_MARGIN: f64 = 0.99;
/// Our one-second burst is this fraction of the server's (at least one): the same slack,
/// for the start and the end of a cooldown.
const BURST_MARGIN: f64 = 0.9;
/// After a cooldown the rate restarts at this fraction of the limit…
const RAMP_START: f64 = 0.5;
/// …and climbs linearly back to the full rate over this long.
const RAMP: Duration = Duration::from_secs(2);
/// How long the other requests wait for the first answer (the probe) before going anyway.
const PROBE_WAIT: Duration = Duration::from_secs(5);
/// Requests a job that states its limits sends at that pace before the first answer (the
/// rest wait for it, as for a probe): enough to keep the rate through an answer's latency at
/// a few hundred milliseconds, few enough that a job claiming ten times the server's limit
/// draws no 429 from a slice of 20 before the answer's headers correct it.
const EARLY_SENDS: u64 = 10;
/// A header-less 429 sets a guessed request limit only when at least this many requests
/// went in the second before it: one refused request (a probe) says nothing about a rate.
const MIN_SENDS_TO_GUESS: usize = 4;
/// The server's cost per token we count is learned within these bounds.
const RATIO_MIN: f64 = 0.5;
const RATIO_MAX: f64 = 2.0;

/// One per-minute limit as a GCRA bucket holding (a little less than) one second's worth.
#[derive(Debug, Clone)]
struct Gcra {
    per_minute: u64,
    /// Seconds per cell at the full rate.
    interval: f64,
    /// Cells the bucket holds.
    burst: u64,
    /// Theoretical arrival time: the bucket is full when `tat <= now`, empty when
    /// `tat == now + burst * interval`.
    tat: Instant,
}

impl Gcra {
    /// A bucket for `per_minute` (at least 1) holding `level` cells at `now`.
    fn new(per_minute: u64, now: Instant, level: Option<u64>) -> Gcra {
        let per_minute = per_minute.max(1);
        let interval = 60.0 / (per_minute as f64 * RATE_MARGIN);
        let burst = ((per_minute as f64 / 60.0 * BURST_MARGIN).floor() as u64).max(1);
        let mut g = Gcra {
            per_minute,
            interval,
            burst,
            tat: now,
        };
        if let Some(level) = level {
            g.tat = now + g.span(burst.saturating_sub(level), 1.0);
        }
        g
    }

    /// The time `cells` take to refill at `factor` of the rate.
    fn span(&self, cells: u64, factor: f64) -> Duration {
        Duration::try_from_secs_f64(cells as f64 * self.interval / factor.max(0.01))
            .unwrap_or(Duration::from_secs(3600))
    }

    fn tau(&self) -> Duration {
        self.span(self.burst, 1.0)
    }

    /// Takes `n` cells; returns when they may be sent. A take larger than the bucket goes
    /// from a full bucket and leaves it in debt, as providers do. `paced`: no burst, each
    /// take waits for the one before it to have refilled (the level stays where it is).
    fn reserve(&mut self, now: Instant, n: u64, factor: f64, paced: bool) -> Instant {
        let start = self.tat.max(now);
        let send_at = if paced {
            start
        } else {
            (start + self.span(n.min(self.burst), factor))
                .checked_sub(self.tau())
                .unwrap_or(now)
                .max(now)
        };
        self.tat = start + self.span(n, factor);
        send_at
    }

    /// Gives back `n` cells that were reserved but not used (never above full).
    fn refund(&mut self, now: Instant, n: u64) {
        if self.tat > now {
            self.tat = self
                .tat
                .checked_sub(self.span(n, 1.0))
                .unwrap_or(now)
                .max(now);
        }
    }

    /// Cells available at `now`.
    fn level(&self, now: Instant) -> u64 {
        let debt = self.tat.saturating_duration_since(now).as_secs_f64();
        let free = self.burst as f64 - debt / self.interval;
        free.max(0.0).floor() as u64
    }

    /// Lowers the level to `remaining` if the server says it has less than we think.
    fn cap_level(&mut self, now: Instant, remaining: u64) {
        if remaining < self.level(now) {
            self.tat = now + self.span(self.burst - remaining, 1.0);
        }
    }

    /// Takes `n` cells that were spent without a reservation (the server counted more
    /// than we charged).
    fn charge(&mut self, now: Instant, n: u64) {
        self.tat = self.tat.max(now) + self.span(n, 1.0);
    }

    /// Empties the bucket at `until`: nothing goes before it, and no burst right after it.
    fn hold_until(&mut self, until: Instant) {
        self.tat = self.tat.max(until + self.tau());
    }
}

/// Where one limit comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    /// Neither the job nor the server gave one.
    None,
    /// The job file or a flag: a ceiling; the server may only lower it.
    Job(u64),
    /// Learned from `x-ratelimit-limit-*` headers.
    Learned(u64),
    /// Guessed from 429s when the server sends no headers: cut by a quarter on a 429,
    /// raised each second without one (quickly back to where the last 429 came, then
    /// slowly beyond), additive-increase/multiplicative-decrease style.
    Guessed,
}

#[derive(Debug)]
struct Limit {
    source: Source,
    bucket: Option<Gcra>,
    /// The limit the server last advertised, if any.
    server: Option<u64>,
}

impl Limit {
    fn new(per_minute: Option<u32>, now: Instant) -> Limit {
        match per_minute {
            Some(l) => Limit {
                source: Source::Job(u64::from(l)),
                bucket: Some(Gcra::new(u64::from(l), now, None)),
                server: None,
            },
            None => Limit {
                source: Source::None,
                bucket: None,
                server: None,
            },
        }
    }

    /// Applies the server's advertised limit; returns the new limit when it changed.
    /// `used` is what went out in the last second before this first answer (the probe, or
    /// what a job that states its limits sent at that pace); `first` is true on the first
    /// answer.
    fn learn_limit(&mut self, now: Instant, header: u64, used: u64, first: bool) -> Option<u64> {
        self.server = Some(header);
        let current = self.bucket.as_ref().map(|b| b.per_minute);
        let wanted = match self.source {
            Source::Job(j) => j.min(header),
            Source::None | Source::Learned(_) | Source::Guessed => header,
        };
        if current == Some(wanted) {
            return None;
        }
        if !matches!(self.source, Source::Job(_)) {
            self.source = Source::Learned(header);
        }
        match &mut self.bucket {
            // Keep the debt we have; only the rate changes. On the first answer a lower
            // limit than the job's also says that what was sent at the job's pace used more
            // of the server's slice than our bucket counted: take it out of the new one.
            Some(b) => {
                let mut level = b.level(now);
                if first {
                    let fresh = Gcra::new(wanted, now, None);
                    level = level.min(fresh.burst.saturating_sub(used));
                }
                *b = Gcra::new(wanted, now, Some(level));
            }
            // Only the probe has gone so far: the bucket starts nearly full.
            None => {
                let fresh = Gcra::new(wanted, now, None);
                let level = fresh.burst.saturating_sub(used.max(1));
                self.bucket = Some(Gcra::new(wanted, now, Some(level)));
            }
        }
        Some(wanted)
    }
}

#[derive(Debug)]
struct State {
    requests: Limit,
    tokens: Limit,
    cooldown_until: Option<Instant>,
    /// No answer has come back yet.
    early: bool,
    /// Send times of the last second while no request limit is known (to guess one), or
    /// before the first answer.
    recent: VecDeque<Instant>,
    /// When the request behind the latest 429 was let go: only what went before it says
    /// at what rate the server refused (requests the first answer released afterwards do
    /// not).
    refused_sent: Option<Instant>,
    /// When the guessed rate was last changed.
    guess_changed: Option<Instant>,
    /// The guessed rate at which the last 429 came: recovery climbs fast up to it.
    guess_ceiling: Option<u64>,
    /// The guessed limit held a request back since it last changed (only a limit that
    /// binds is raised, so an idle job does not build up a burst).
    guess_pressed: bool,
    /// The server's cost per request, learned from its remaining tokens.
    cost: CostRatio,
    /// Total delay added to queued requests when the cost ratio grew (each waiter is
    /// delayed by what was added after it queued).
    slip: Duration,
}

/// What the server charges per token we count: learned from the fall of its
/// `x-ratelimit-remaining-tokens` between answers (and from `tokens` 429s that say what
/// was requested). Servers count with their own tokenizer and overheads; one that counts
/// 10% more than tiktoken would otherwise see us run 10% over its limit.
#[derive(Debug)]
struct CostRatio {
    /// Server tokens per token we count (1 until learned).
    ratio: f64,
    /// Tokens (as we count them) sent since the last observation.
    sent: u64,
    /// The last observation: when, and the remaining tokens it said.
    last: Option<(Instant, u64)>,
    /// Summed over observations whose interval can be read: what the server took, and
    /// what we counted for the same requests.
    server_used: f64,
    ours: u64,
    /// Some sample has been taken.
    learned: bool,
    /// When a `tokens` 429 without numbers last raised the ratio.
    bumped: Option<Instant>,
}

impl Default for CostRatio {
    fn default() -> Self {
        CostRatio {
            ratio: 1.0,
            sent: 0,
            last: None,
            server_used: 0.0,
            ours: 0,
            learned: false,
            bumped: None,
        }
    }
}

impl CostRatio {
    /// Reads one answer's remaining tokens under a per-minute `limit` at `now`.
    ///
    /// Between two answers the server's minute budget refilled by `limit/60` per second
    /// and lost what our requests sent in between cost it. That holds only when the budget
    /// did not reach its cap meanwhile (refill is lost at the cap), so an interval where
    /// it could have is skipped: at or under the limit the budget sits at its cap and
    /// nothing is learned, which is right, as nothing needs correcting.
    ///
    /// Returns the new ratio, and the tokens the server took beyond what we charged for
    /// the requests of the sample (to take out of our bucket too).
    fn observe(&mut self, now: Instant, limit: u64, remaining: u64) -> Option<(f64, u64)> {
        let sent = std::mem::take(&mut self.sent);
        let last = self.last.replace((now, remaining));
        let (t0, r0) = last?;
        let refill = limit as f64 / 60.0 * now.saturating_duration_since(t0).as_secs_f64();
        if r0 as f64 + refill > limit as f64 || sent == 0 {
            return None;
        }
        self.server_used += (r0 as f64 + refill - remaining as f64).max(0.0);
        self.ours = self.ours.saturating_add(sent);
        // A second's worth of the limit per sample keeps rounding noise small. The first
        // sample comes sooner (a quarter of that) and is taken as is when it says the
        // server charges more (every second at the wrong ratio digs the server's bucket
        // deeper), but never below 1: a quarter second read off answers that arrive late
        // (a loaded machine) can look cheap, and a ratio too low sends too fast. Later,
        // full samples are smoothed, and may take it below 1.
        let wanted = if self.learned {
            limit / 60
        } else {
            limit / 240
        };
        if self.ours < wanted.max(1) {
            return None;
        }
        let sample = (self.server_used / self.ours as f64).clamp(RATIO_MIN, RATIO_MAX);
        let beyond = (self.server_used - self.ours as f64 * self.ratio).max(0.0) as u64;
        self.server_used = 0.0;
        self.ours = 0;
        self.ratio = if self.learned {
            0.5 * self.ratio + 0.5 * sample
        } else {
            sample.max(1.0)
        };
        self.learned = true;
        Some((self.ratio, beyond))
    }

    /// Tokens to charge for a request we count at `tokens`.
    fn scale(&self, tokens: u64) -> u64 {
        (tokens as f64 * self.ratio).ceil() as u64
    }
}

impl State {
    /// Remembers a send while no request limit is known, or no answer has come.
    fn note_send(&mut self, now: Instant) {
        if self.requests.source != Source::None && !self.early {
            return;
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1))
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
    }

    /// A 429 without a known request limit: start from the rate we were sending at, then
    /// cut the guess by a quarter (at most once a second). A 429 when hardly anything was
    /// sent (the first request) sets no guess: the cooldown alone answers it.
    fn guess_lower(&mut self, now: Instant) {
        // The sends in the second up to the refused one (all of the last second when it is
        // not known which request was refused).
        let until = self.refused_sent.take().unwrap_or(now);
        let before = self
            .recent
            .iter()
            .filter(|t| **t <= until && until.duration_since(**t) <= Duration::from_secs(1))
            .count();
        let current = match (self.requests.source, &self.requests.bucket) {
            (Source::None, _) if before < MIN_SENDS_TO_GUESS => return,
            (Source::None, _) => before as u64 * 60,
            (Source::Guessed, Some(b)) => {
                if self
                    .guess_changed
                    .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
                {
                    return;
                }
                b.per_minute
            }
            _ => return,
        };
        let rpm = (current * 3 / 4).max(1);
        self.requests.source = Source::Guessed;
        self.requests.bucket = Some(Gcra::new(rpm, now, Some(0)));
        self.guess_changed = Some(now);
        self.guess_ceiling = Some(current);
        self.guess_pressed = false;
        self.recent.clear();
        tracing::info!("no rate-limit headers: guessing {rpm} requests/min after a 429");
    }

    /// Raises a guessed limit that held requests back, each second without a 429: by a
    /// quarter up to the rate where the last 429 came, by a tenth beyond it.
    fn guess_higher(&mut self, now: Instant) {
        if self.requests.source != Source::Guessed
            || !self.guess_pressed
            || self
                .guess_changed
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        if let Some(b) = &mut self.requests.bucket {
            let level = b.level(now);
            let rpm = match self.guess_ceiling {
                Some(c) if b.per_minute < c => (b.per_minute + (b.per_minute / 4).max(1)).min(c),
                _ => b.per_minute + (b.per_minute / 10).max(1),
            };
            let mut fresh = Gcra::new(rpm, now, Some(level));
            fresh.tat = fresh.tat.max(b.tat);
            *b = fresh;
            self.guess_changed = Some(now);
            self.guess_pressed = false;
        }
    }

    /// The fraction of the rate allowed now: below 1 while ramping up after a cooldown.
    fn ramp(&self, now: Instant) -> f64 {
        match self.cooldown_until {
            Some(until) if now >= until => {
                let t = (now - until).as_secs_f64() / RAMP.as_secs_f64();
                (RAMP_START + (1.0 - RAMP_START) * t).min(1.0)
            }
            Some(_) => RAMP_START,
            None => 1.0,
        }
    }
}

/// The limits a job runs under, shared by all its requests.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
    /// Give back the tokens a response did not use (providers that charge actual output,
    /// like Anthropic; OpenAI charges `max_tokens` when the request is admitted).
    refund_unused: bool,
    /// The first request has been let through alone.
    probe_sent: AtomicBool,
    /// Some answer (any status) has come back.
    answered: AtomicBool,
    /// The job states a limit (requests or tokens per minute): no probe; until the first
    /// answer, up to `EARLY_SENDS` requests go at that pace without the burst.
    stated: bool,
    /// Requests let go (or asking) before the first answer, in a job that states its limits.
    early_sends: std::sync::atomic::AtomicU64,
    first_answer: Notify,
    /// `[limits] shared`: the buckets and cooldown every process on the key draws from,
    /// consulted after the local ones (header learning stays local).
    shared: Option<Arc<shared::Shared>>,
}

/// Tokens charged for one request, to settle when its usage is known.
#[derive(Debug, Clone, Copy)]
pub struct Charge {
    /// What the token bucket was charged (our count scaled by the learned cost ratio).
    tokens: u64,
    /// Our own count of the request's tokens.
    counted: u64,
    /// When the request was let go.
    at: Instant,
}

/// A request that no wait can let through: the server's own limit is below its cost.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Unmeetable(pub String);

impl Limiter {
    /// A limiter for the given per-minute limits (None = unknown: learn them from headers).
    pub fn new(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> Limiter {
        let now = Instant::now();
        Limiter {
            state: Mutex::new(State {
                requests: Limit::new(requests_per_minute, now),
                tokens: Limit::new(tokens_per_minute, now),
                cooldown_until: None,
                early: true,
                recent: VecDeque::new(),
                refused_sent: None,
                guess_changed: None,
                guess_ceiling: None,
                guess_pressed: false,
                cost: CostRatio::default(),
                slip: Duration::ZERO,
            }),
            refund_unused: false,
            probe_sent: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            stated: requests_per_minute.is_some() || tokens_per_minute.is_some(),
            early_sends: std::sync::atomic::AtomicU64::new(0),
            first_answer: Notify::new(),
            shared: None,
        }
    }

    /// Draws from the shared buckets of `[limits] shared` as well as the local ones.
    pub fn with_shared(mut self, shared: shared::Shared) -> Limiter {
        self.shared = Some(Arc::new(shared));
        self
    }

    /// Waits for the shared buckets (after the local ones have let a request go); `Err`
    /// when Redis failed and the job must stop.
    async fn acquire_shared(&self, charge: &mut Charge) -> Result<(), Unmeetable> {
        let Some(sh) = &self.shared else {
            return Ok(());
        };
        loop {
            let (rpm, tpm) = (self.requests_per_minute(), self.tokens_per_minute());
            let pace = if self.paced(&self.lock()) {
                shared::Pace::Paced
            } else {
                shared::Pace::Burst
            };
            match sh
                .acquire_at(rpm, tpm, charge.tokens, pace)
                .await
                .map_err(Unmeetable)?
            {
                shared::Grant::Local => return Ok(()),
                shared::Grant::CoolingDown(d) => tokio::time::sleep(d).await,
                shared::Grant::After(w) if w.is_zero() => break,
                shared::Grant::After(w) => {
                    tokio::time::sleep(w).await;
                    // A 429 elsewhere while we slept: our slot is void, queue again.
                    match sh.cooling().await.map_err(Unmeetable)? {
                        Some(d) => tokio::time::sleep(d).await,
                        None => break,
                    }
                }
            }
        }
        charge.at = Instant::now();
        Ok(())
    }

    /// Gives unused tokens back to the token bucket when a response reports its usage
    /// (for providers whose token limit counts actual output).
    pub fn refund_unused_tokens(mut self, yes: bool) -> Limiter {
        self.refund_unused = yes;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests go at the job's pace without a burst: the job states its limits and no
    /// answer has said yet whether the server agrees.
    fn paced(&self, s: &State) -> bool {
        self.stated && s.early
    }

    /// Adapts to what one response's headers said: learns (or lowers) the limits, and
    /// slows down when the server has less left than the buckets believe. Headers are
    /// hints: a missing value changes nothing.
    pub fn learn(&self, info: &RateLimitInfo) {
        let now = Instant::now();
        {
            let mut s = self.lock();
            let first = std::mem::replace(&mut s.early, false);
            // What went out in the second before the first answer, while nothing was known.
            let sent = if first {
                let second_ago = now.checked_sub(Duration::from_secs(1));
                s.recent
                    .iter()
                    .filter(|t| second_ago.is_none_or(|a| **t > a))
                    .count()
            } else {
                0
            };
            if let Some(rpm) = info.limit_requests.filter(|r| *r > 0) {
                if let Some(new) = s.requests.learn_limit(now, rpm, sent.max(1) as u64, first) {
                    tracing::info!("running at {new} requests/min (server's limit: {rpm})");
                }
            }
            if first && s.requests.source != Source::None {
                s.recent.clear();
            }
            if let Some(tpm) = info.limit_tokens.filter(|t| *t > 0) {
                let used = s.cost.scale(s.cost.sent);
                if let Some(new) = s.tokens.learn_limit(now, tpm, used, first) {
                    tracing::info!("running at {new} tokens/min (server's limit: {tpm})");
                }
            }
            if let (Some(r), Some(b)) = (info.remaining_requests, &mut s.requests.bucket) {
                b.cap_level(now, r);
            }
            // Providers that count actual output (refund_unused) charge less than we send
            // with: their fall in remaining tokens is not a cost per request.
            if let (Some(r), Some(l), false) =
                (info.remaining_tokens, info.limit_tokens, self.refund_unused)
            {
                if let Some((ratio, beyond)) = s.cost.observe(now, l, r) {
                    tracing::debug!("the server charges {ratio:.3} tokens per token counted");
                    if let Some(b) = &mut s.tokens.bucket {
                        b.charge(now, beyond);
                    }
                }
            }
            if let (Some(r), Some(b)) = (info.remaining_tokens, &mut s.tokens.bucket) {
                b.cap_level(now, r);
            }
        }
        if !self.answered.swap(true, Ordering::AcqRel) {
            self.first_answer.notify_waiters();
        }
    }

    /// Settles a request's token charge with the usage the API reported.
    pub fn settle(&self, charge: Charge, used_tokens: u64) {
        if !self.refund_unused || used_tokens >= charge.tokens {
            return;
        }
        let now = Instant::now();
        if let Some(b) = &mut self.lock().tokens.bucket {
            b.refund(now, charge.tokens - used_tokens);
        }
        if let (Some(sh), Ok(rt)) = (&self.shared, tokio::runtime::Handle::try_current()) {
            let (sh, tpm) = (sh.clone(), self.tokens_per_minute());
            rt.spawn(async move { sh.refund(tpm, charge.tokens - used_tokens).await });
        }
    }

    /// Waits until one request of `tokens` tokens (as we count them) may be sent and
    /// charges it; refuses at once when the server's advertised limit is below its cost.
    pub async fn acquire(&self, tokens: u64) -> Result<Charge, Unmeetable> {
        let mut charge = self.acquire_local(tokens).await?;
        self.acquire_shared(&mut charge).await?;
        Ok(charge)
    }

    async fn acquire_local(&self, tokens: u64) -> Result<Charge, Unmeetable> {
        if !self.stated {
            self.wait_for_probe().await;
        } else if !self.answered.load(Ordering::Acquire)
            && self.early_sends.fetch_add(1, Ordering::AcqRel) >= EARLY_SENDS
        {
            self.wait_for_answer().await;
        }
        loop {
            let next = {
                let mut s = self.lock();
                let now = Instant::now();
                if let Some(limit) = s.tokens.server {
                    if tokens > limit {
                        return Err(Unmeetable(format!(
                            "the server's rate limit can never admit this job's requests: its \
                             x-ratelimit-limit-tokens header says {limit} tokens per minute, \
                             and one request needs {tokens} (prompt + max_tokens). Lower \
                             model.max_tokens or shorten the prompt, or use a model or \
                             account with a higher token limit"
                        )));
                    }
                }
                match s.cooldown_until {
                    Some(until) if until > now => Err(until),
                    _ => {
                        s.guess_higher(now);
                        s.note_send(now);
                        let f = s.ramp(now);
                        let charged = s.cost.scale(tokens);
                        let paced = self.paced(&s);
                        let r = s
                            .requests
                            .bucket
                            .as_mut()
                            .map(|b| b.reserve(now, 1, f, paced));
                        if r.is_some_and(|at| at > now) && s.requests.source == Source::Guessed {
                            s.guess_pressed = true;
                        }
                        let t = s
                            .tokens
                            .bucket
                            .as_mut()
                            .map(|b| b.reserve(now, charged, f, paced));
                        let at = r.into_iter().chain(t).max().unwrap_or(now);
                        Ok((at, charged, s.slip))
                    }
                }
            };
            match next {
                Err(until) => tokio::time::sleep_until(until).await,
                Ok((send_at, mut charged, slip_then)) => {
                    let mut at = send_at;
                    loop {
                        tokio::time::sleep_until(at).await;
                        let mut s = self.lock();
                        let now = Instant::now();
                        // A 429 while we slept: our slot is void, queue again after it.
                        if s.cooldown_until.is_some_and(|u| u > now) {
                            break;
                        }
                        // The ratio grew while we waited: the server will count this
                        // request at the new one. The difference is charged now, and it
                        // delays this request and every one queued behind it (their slots
                        // were set at the old ratio), so the rate drops at once.
                        let due = s.cost.scale(tokens);
                        if due > charged {
                            let f = s.ramp(now);
                            if let Some(b) = &mut s.tokens.bucket {
                                let d = b.span(due - charged, f);
                                b.tat = b.tat.max(now) + d;
                                s.slip += d;
                            }
                            charged = due;
                        }
                        let target = send_at + s.slip.saturating_sub(slip_then);
                        if target > now {
                            at = target;
                            continue;
                        }
                        s.cost.sent = s.cost.sent.saturating_add(tokens);
                        return Ok(Charge {
                            tokens: charged,
                            counted: tokens,
                            at: now,
                        });
                    }
                }
            }
        }
    }

    /// A request was refused with a 429: the server did not charge it, and a `tokens` 429
    /// tells us its cost was underestimated. With `Requested N` in the message (as OpenAI
    /// words it) the ratio is read directly; without, it grows by 5% (at most every 2 s).
    pub fn rate_limited(&self, charge: Charge, message: &str) {
        let now = Instant::now();
        let mut s = self.lock();
        s.refused_sent = Some(charge.at);
        // The server did not charge this request, and the interval it fell in no longer
        // shows a cost per request: start the reading over.
        let c = &mut s.cost;
        c.sent = 0;
        c.last = None;
        c.server_used = 0.0;
        c.ours = 0;
        if !message.contains("tokens per min") || s.tokens.bucket.is_none() {
            return;
        }
        let c = &mut s.cost;
        match requested_tokens(message) {
            Some(n) if charge.counted > 0 => {
                let sample = n as f64 / charge.counted as f64;
                if sample > c.ratio {
                    c.ratio = sample.clamp(RATIO_MIN, RATIO_MAX);
                    c.learned = true;
                }
            }
            _ if c
                .bumped
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(2)) =>
            {
                c.ratio = (c.ratio * 1.05).clamp(RATIO_MIN, RATIO_MAX);
                c.bumped = Some(now);
            }
            _ => return,
        }
        tracing::debug!("a tokens 429: charging {:.3} per token counted", c.ratio);
    }

    /// The cost per token we count that the server has shown (1 until learned).
    pub fn cost_ratio(&self) -> f64 {
        self.lock().cost.ratio
    }

    /// In a job that states no limit: lets the first request go alone and holds the rest
    /// until it is answered (at most `PROBE_WAIT`), so its headers set the pace before the
    /// first burst. (A job that states its limits sends `EARLY_SENDS` at that pace instead.)
    async fn wait_for_probe(&self) {
        if self.answered.load(Ordering::Acquire) || !self.probe_sent.swap(true, Ordering::AcqRel) {
            return;
        }
        self.wait_for_answer().await;
    }

    /// Waits for the first answer, at most `PROBE_WAIT`.
    async fn wait_for_answer(&self) {
        let notified = self.first_answer.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.answered.load(Ordering::Acquire) {
            return;
        }
        if tokio::time::timeout(PROBE_WAIT, notified).await.is_err() {
            // A slow first answer must not serialize the job: stop probing.
            self.answered.store(true, Ordering::Release);
        }
    }

    /// Holds every worker back for `d` (a 429 tells us the server is full, not one worker),
    /// then ramps the rate back up instead of letting everyone stampede.
    pub fn cool_down(&self, d: Duration) {
        let now = Instant::now();
        let until = now + d;
        let mut s = self.lock();
        s.guess_lower(now);
        if s.cooldown_until.is_none_or(|cur| cur < until) {
            s.cooldown_until = Some(until);
        }
        let until = s.cooldown_until.unwrap_or(until);
        let s = &mut *s;
        for b in [&mut s.requests.bucket, &mut s.tokens.bucket]
            .into_iter()
            .flatten()
        {
            b.hold_until(until);
        }
        let rpm = s.requests.bucket.as_ref().map(|b| b.per_minute);
        let tpm = s.tokens.bucket.as_ref().map(|b| b.per_minute);
        if let (Some(sh), Ok(rt)) = (&self.shared, tokio::runtime::Handle::try_current()) {
            let sh = sh.clone();
            rt.spawn(async move { sh.cool_down(d, rpm, tpm).await });
        }
    }

    /// The requests/min limit in force (job's, or learned), if any.
    pub fn requests_per_minute(&self) -> Option<u64> {
        self.lock().requests.bucket.as_ref().map(|b| b.per_minute)
    }

    /// The tokens/min limit in force (job's, or learned), if any.
    pub fn tokens_per_minute(&self) -> Option<u64> {
        self.lock().tokens.bucket.as_ref().map(|b| b.per_minute)
    }
}

/// The `Requested N` of an OpenAI-style tokens 429 message ("… Limit 30000, Used 29420,
/// Requested 1000. Please try again in 840ms.").
fn requested_tokens(message: &str) -> Option<u64> {
    let rest = &message[message.find("Requested ")? + "Requested ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(limit_req: Option<u64>, remaining_req: Option<u64>) -> RateLimitInfo {
        RateLimitInfo {
            limit_requests: limit_req,
            remaining_requests: remaining_req,
            ..RateLimitInfo::default()
        }
    }

    /// Acquires `n` single-token requests one after the other; returns the paused-clock time.
    async fn run(l: &Limiter, n: usize, tokens: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            l.acquire(tokens).await.unwrap();
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn never_bursts_more_than_one_second_of_requests() {
        let l = Limiter::new(Some(600), None); // 10/s: burst 9 with the margin
        l.learn(&RateLimitInfo::default());
        let took = run(&l, 19, 1).await;
        // 9 at once, 10 more at ~101 ms each.
        let ideal = 10.0 * 60.0 / (600.0 * RATE_MARGIN);
        assert!((took.as_secs_f64() - ideal).abs() < 0.01, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn steady_rate_is_just_under_the_limit() {
        let l = Limiter::new(Some(3000), None);
        l.learn(&RateLimitInfo::default());
        let took = run(&l, 45 + 500, 1).await.as_secs_f64();
        // 500 after the burst at 50/s * 0.99.
        assert!((took - 500.0 / 49.5).abs() < 0.01, "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn oversize_token_requests_go_from_a_full_bucket_then_leave_debt() {
        let l = Limiter::new(None, Some(6000)); // ~100 tokens/s, bucket 90
        l.learn(&RateLimitInfo::default());
        let t1 = run(&l, 1, 500).await;
        assert_eq!(
            t1,
            Duration::ZERO,
            "a full bucket lets a large request through"
        );
        let t2 = run(&l, 1, 1).await.as_secs_f64();
        // 500 tokens taken from 90: 410 of debt plus 1 token at 99/s.
        assert!((t2 - 411.0 / 99.0).abs() < 0.02, "{t2}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cooldown_holds_everyone_and_then_ramps_up() {
        let l = Limiter::new(Some(6000), None); // ~100/s
        l.learn(&RateLimitInfo::default());
        l.cool_down(Duration::from_millis(200));
        l.cool_down(Duration::from_millis(50)); // a shorter one does not shorten it
        let start = Instant::now();
        l.acquire(1).await.unwrap();
        let first = start.elapsed().as_secs_f64();
        // The bucket is empty at the end of the cooldown, and the rate is halved.
        assert!(first >= 0.2 + 0.019, "{first}");
        assert!(first <= 0.2 + 0.03, "{first}");
        let ten = run(&l, 10, 1).await.as_secs_f64();
        assert!(ten > 0.15, "no stampede after a cooldown: {ten}");
        // Two seconds later the full rate is back.
        tokio::time::sleep(RAMP).await;
        let hundred = run(&l, 190, 1).await.as_secs_f64();
        assert!(hundred < 1.05, "{hundred}");
    }

    #[tokio::test(start_paused = true)]
    async fn learns_limits_the_job_did_not_give() {
        let l = Limiter::new(None, None);
        assert_eq!(l.requests_per_minute(), None);
        l.learn(&info(Some(600), None));
        assert_eq!(l.requests_per_minute(), Some(600));
        // A later response that repeats it does not reset the bucket.
        run(&l, 8, 1).await;
        l.learn(&info(Some(600), None));
        let took = run(&l, 2, 1).await.as_secs_f64();
        assert!(took > 0.1, "bucket was reset: {took}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_server_may_lower_but_not_raise_a_job_limit() {
        let l = Limiter::new(Some(6000), None);
        l.learn(&info(Some(3000), None));
        assert_eq!(l.requests_per_minute(), Some(3000));
        l.learn(&info(Some(90_000), None));
        assert_eq!(l.requests_per_minute(), Some(6000));
    }

    #[tokio::test(start_paused = true)]
    async fn low_remaining_budget_slows_down() {
        let l = Limiter::new(Some(600), None); // bucket 9
        l.learn(&info(None, Some(0)));
        // The server is empty: wait for a cell instead of sending 9 at once.
        let took = run(&l, 2, 1).await.as_secs_f64();
        assert!(took > 0.19, "{took}");
        // A high remaining never raises the level.
        let l2 = Limiter::new(Some(600), None);
        l2.learn(&info(None, Some(0)));
        l2.learn(&info(None, Some(1000)));
        assert!(run(&l2, 1, 1).await > Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn unused_tokens_are_refunded_only_when_asked() {
        for (refund, slow) in [(true, false), (false, true)] {
            let l = Limiter::new(None, Some(6000)).refund_unused_tokens(refund); // bucket 90
            l.learn(&RateLimitInfo::default());
            let start = Instant::now();
            for _ in 0..5 {
                let c = l.acquire(80).await.unwrap();
                l.settle(c, 10);
            }
            // Without refunds: 400 tokens from a bucket of 90 at 99/s, over 3 s.
            let took = start.elapsed();
            assert_eq!(took.as_secs_f64() > 1.0, slow, "refund={refund}: {took:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_headers_a_429_sets_a_guessed_limit_that_adapts() {
        let l = Limiter::new(None, None);
        l.learn(&RateLimitInfo::default());
        run(&l, 400, 1).await; // unlimited: all at once
        assert_eq!(l.requests_per_minute(), None);
        l.cool_down(Duration::from_millis(10));
        assert_eq!(l.requests_per_minute(), Some(400 * 60 * 3 / 4));
        l.cool_down(Duration::from_millis(10)); // the same burst of 429s: no second cut
        assert_eq!(l.requests_per_minute(), Some(18_000));
        // Idle: a guess that holds nobody back is not raised.
        tokio::time::sleep(Duration::from_secs(3)).await;
        l.acquire(1).await.unwrap();
        assert_eq!(l.requests_per_minute(), Some(18_000));
        // Busy: back to where the 429 came by quarters, then beyond by tenths.
        run(&l, 400, 1).await;
        let mut seen = vec![l.requests_per_minute().unwrap_or(0)];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            run(&l, 400, 1).await;
            seen.push(l.requests_per_minute().unwrap_or(0));
        }
        assert_eq!(
            seen,
            [22_500, 24_000, 26_400, 29_040],
            "raised while no 429 comes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_headerless_429_on_the_probe_sets_no_guess_and_costs_only_its_cooldown() {
        let l = Limiter::new(None, None);
        l.acquire(1).await.unwrap(); // the probe: refused, no headers
        l.learn(&RateLimitInfo::default());
        l.cool_down(Duration::from_millis(250));
        assert_eq!(
            l.requests_per_minute(),
            None,
            "one refusal says nothing of a rate"
        );
        let took = run(&l, 500, 1).await;
        assert_eq!(took, Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_the_refused_probes_answer_released_do_not_make_a_guess() {
        // The scheduler learns from every answer first: a header-less 429 on the probe
        // releases the workers that waited for it, and they go before the 429 is handled.
        let l = std::sync::Arc::new(Limiter::new(None, None));
        let probe = l.acquire(1).await.unwrap();
        tokio::time::advance(Duration::from_millis(200)).await;
        l.learn(&RateLimitInfo::default());
        for _ in 0..7 {
            l.acquire(1).await.unwrap();
        }
        l.rate_limited(probe, "Rate limit reached");
        l.cool_down(Duration::from_millis(250));
        assert_eq!(
            l.requests_per_minute(),
            None,
            "a guess from sends after the refused one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_after_a_burst_guesses_from_the_sends_before_it() {
        let l = Limiter::new(None, None);
        l.learn(&RateLimitInfo::default());
        let mut last = None;
        for _ in 0..8 {
            last = Some(l.acquire(1).await.unwrap());
        }
        tokio::time::advance(Duration::from_millis(200)).await;
        l.rate_limited(last.unwrap(), "Rate limit reached");
        l.cool_down(Duration::from_millis(250));
        // 8 sends in the second up to the refused one: 480/min, cut by a quarter.
        assert_eq!(l.requests_per_minute(), Some(360));
    }

    #[tokio::test(start_paused = true)]
    async fn a_guess_recovers_to_the_real_limit_within_seconds() {
        // A server with a 1,200/min limit (20/s, slices of 20) and no headers, behind a
        // job sending as fast as it may: each 429 cools everyone for 250 ms.
        let l = Limiter::new(None, None);
        l.learn(&RateLimitInfo::default());
        let server = std::cell::RefCell::new(Sim::new(1200, Instant::now()));
        let mut sent = 0u32;
        let mut refused = 0u32;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(40) {
            l.acquire(1).await.unwrap();
            if server.borrow_mut().admit(Instant::now(), 1.0) {
                sent += 1;
            } else {
                refused += 1;
                l.cool_down(Duration::from_millis(250));
            }
        }
        // The first burst is refused and cut; after that the guess climbs back.
        let rate = f64::from(sent) / 40.0;
        assert!(rate > 20.0 * 0.8, "{rate}/s of 20/s ({refused} refused)");
        assert!(refused < 120, "{refused} refused");
    }

    /// A provider's per-minute budget (capacity = limit) and one-second slice, refilled
    /// continuously: what the mock API enforces.
    struct Sim {
        limit: f64,
        minute: f64,
        slice: f64,
        last: Instant,
    }

    impl Sim {
        fn new(limit: u64, now: Instant) -> Sim {
            let l = limit as f64;
            Sim {
                limit: l,
                minute: l,
                slice: (l / 60.0).floor().max(1.0),
                last: now,
            }
        }

        fn refill(&mut self, now: Instant) {
            let dt = now.saturating_duration_since(self.last).as_secs_f64();
            let per_sec = self.limit / 60.0;
            self.minute = (self.minute + dt * per_sec).min(self.limit);
            self.slice = (self.slice + dt * per_sec).min((self.limit / 60.0).floor().max(1.0));
            self.last = now;
        }

        /// Admits `cost` if both buckets have room (a take beyond the slice is allowed
        /// from a full slice).
        fn admit(&mut self, now: Instant, cost: f64) -> bool {
            self.refill(now);
            let cap = (self.limit / 60.0).floor().max(1.0);
            if self.minute < cost.min(self.limit) || self.slice < cost.min(cap) {
                return false;
            }
            self.minute -= cost;
            self.slice -= cost;
            true
        }

        fn remaining(&mut self, now: Instant) -> u64 {
            self.refill(now);
            self.minute.max(0.0).floor() as u64
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_servers_cost_per_request_is_learned_from_its_remaining_tokens() {
        // 60,000 TPM; requests we count at 400 tokens, the server at 440; 200 ms latency.
        let l = std::sync::Arc::new(Limiter::new(None, None));
        let server = std::sync::Arc::new(Mutex::new(Sim::new(60_000, Instant::now())));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (l, server, refused) = (l.clone(), server.clone(), refused.clone());
            tasks.spawn(async move {
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(120) {
                    let c = l.acquire(400).await.unwrap();
                    let ok = server
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .admit(Instant::now(), 440.0);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let remaining = server
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remaining(Instant::now());
                    l.learn(&RateLimitInfo {
                        limit_tokens: Some(60_000),
                        remaining_tokens: Some(remaining),
                        ..RateLimitInfo::default()
                    });
                    if !ok {
                        refused.fetch_add(1, Ordering::Relaxed);
                        l.rate_limited(c, "Rate limit reached for tokens per min (TPM)");
                        l.cool_down(Duration::from_millis(100));
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let ratio = l.cost_ratio();
        let refused = refused.load(Ordering::Relaxed);
        assert!((1.07..1.13).contains(&ratio), "{ratio} ({refused} refused)");
        assert_eq!(refused, 0, "ratio {ratio}");
    }

    #[test]
    fn a_quick_first_sample_that_reads_cheap_does_not_lower_the_ratio() {
        // 240,000 TPM refills 4,000 tokens a second. We sent 1,000 tokens in a quarter
        // second, but the answer saying what is left was read late, so the server seems to
        // have taken only 700.
        let (t0, limit) = (Instant::now(), 240_000);
        let mut c = CostRatio::default();
        assert_eq!(c.observe(t0, limit, 200_000), None);
        c.sent = 1_000;
        let later = t0 + Duration::from_millis(250);
        let (ratio, _) = c.observe(later, limit, 200_000 + 1_000 - 700).unwrap();
        assert_eq!(ratio, 1.0);
        // One that reads dear is taken as is.
        let mut c = CostRatio::default();
        c.observe(t0, limit, 200_000);
        c.sent = 1_000;
        let (ratio, _) = c.observe(later, limit, 200_000 + 1_000 - 1_100).unwrap();
        assert!((ratio - 1.1).abs() < 1e-9, "{ratio}");
        // A full second's sample may then bring it down, smoothed.
        c.sent = 4_000;
        let (ratio, _) = c
            .observe(
                later + Duration::from_secs(1),
                limit,
                200_000 - 100 + 4_000 - 3_600,
            )
            .unwrap();
        assert!((ratio - 1.0).abs() < 1e-9, "{ratio}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_at_or_under_our_count_teaches_nothing() {
        let l = Limiter::new(None, None);
        let mut server = Sim::new(60_000, Instant::now());
        for _ in 0..300 {
            l.acquire(400).await.unwrap();
            server.admit(Instant::now(), 400.0);
            tokio::time::sleep(Duration::from_millis(50)).await;
            l.learn(&RateLimitInfo {
                limit_tokens: Some(60_000),
                remaining_tokens: Some(server.remaining(Instant::now())),
                ..RateLimitInfo::default()
            });
        }
        assert_eq!(l.cost_ratio(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokens_429_raises_the_ratio() {
        let l = Limiter::new(None, Some(60_000));
        l.learn(&RateLimitInfo::default());
        let c = l.acquire(400).await.unwrap();
        // Without numbers: 5%, at most every two seconds.
        l.rate_limited(
            c,
            "Rate limit reached for tokens per min (TPM) on m: Limit 60000.",
        );
        l.rate_limited(
            c,
            "Rate limit reached for tokens per min (TPM) on m: Limit 60000.",
        );
        assert!((l.cost_ratio() - 1.05).abs() < 1e-9, "{}", l.cost_ratio());
        // A requests 429 says nothing about tokens.
        tokio::time::sleep(Duration::from_secs(3)).await;
        l.rate_limited(c, "Rate limit reached for requests per min (RPM)");
        assert!((l.cost_ratio() - 1.05).abs() < 1e-9);
        // OpenAI's wording names the cost: read it.
        l.rate_limited(
            c,
            "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min \
             (TPM): Limit 60000, Used 59800, Requested 460. Please try again in 460ms.",
        );
        assert!((l.cost_ratio() - 1.15).abs() < 1e-9, "{}", l.cost_ratio());
        // Absurd numbers are clamped.
        l.rate_limited(
            c,
            "on tokens per min (TPM): Limit 1, Requested 99999999999999999",
        );
        assert_eq!(l.cost_ratio(), RATIO_MAX);
        assert_eq!(requested_tokens("Requested 12."), Some(12));
        assert_eq!(requested_tokens("Requested x"), None);
        assert_eq!(requested_tokens("Requested 999999999999999999999999"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_token_limit_below_one_request_is_unmeetable() {
        let l = Limiter::new(None, Some(60_000));
        l.acquire(500).await.unwrap(); // the probe
        l.learn(&RateLimitInfo {
            limit_tokens: Some(10),
            ..RateLimitInfo::default()
        });
        let e = l
            .acquire(500)
            .await
            .err()
            .unwrap_or(Unmeetable(String::new()));
        assert!(
            e.0.contains("x-ratelimit-limit-tokens header says 10 tokens"),
            "{e}"
        );
        assert!(e.0.contains("one request needs 500"), "{e}");
        // A request that fits is still let through.
        assert!(l.acquire(10).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_bucket_is_not_starved_by_small_ones() {
        let l = std::sync::Arc::new(Limiter::new(None, Some(6000))); // bucket 90, 99/s
        l.learn(&RateLimitInfo::default());
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        // Small requests queue first, then a large one, then more small ones.
        for i in 0..41u64 {
            let l = l.clone();
            let tokens = if i == 20 { 900 } else { 30 };
            tasks.spawn(async move {
                l.acquire(tokens).await.unwrap();
                (i, start.elapsed())
            });
            tokio::task::yield_now().await;
        }
        let mut done = vec![];
        while let Some(r) = tasks.join_next().await {
            done.push(r.unwrap_or_else(|e| panic!("{e}")));
        }
        done.sort_by_key(|(_, t)| *t);
        let order: Vec<u64> = done.iter().map(|(i, _)| *i).collect();
        let big = order.iter().position(|i| *i == 20).unwrap_or(usize::MAX);
        assert!(big <= 21, "the large request went {big}th: {order:?}");
        // It went once the bucket was full: after the 20 small ones (600 tokens, 90 at
        // once) had drained, and well before the rest.
        let at = done[big].1.as_secs_f64();
        assert!((5.0..6.5).contains(&at), "{at}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_request_goes_alone_until_answered() {
        let l = std::sync::Arc::new(Limiter::new(None, None));
        l.acquire(1).await.unwrap(); // the probe
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire(1).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "went before the probe was answered");
        l.learn(&info(Some(6000), None));
        waiter.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.requests_per_minute(), Some(6000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_that_states_its_limit_sends_at_that_pace_before_the_first_answer() {
        // No probe: ten requests go one interval apart at the job's rate, none waits for an
        // answer, and none is part of a burst.
        let l = std::sync::Arc::new(Limiter::new(Some(3000), None));
        let took = run(&l, EARLY_SENDS as usize, 1).await.as_secs_f64();
        let interval = 60.0 / (3000.0 * RATE_MARGIN);
        assert!((took - 9.0 * interval).abs() < 0.001, "{took}");
        // The next one waits for the answer, as for a probe.
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire(1).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "went before the first answer");
        // Paced sends left the bucket full: once an answer agrees with the job's limit, the
        // second's burst goes at once.
        l.learn(&info(Some(3000), None));
        waiter.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&l, 44, 1).await, Duration::ZERO);
        assert!(run(&l, 1, 1).await > Duration::ZERO, "more than the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_told_twice_the_limit_draws_no_429_without_the_probe() {
        // The job says 6,000/min, the server enforces 3,000 (slices of 50) and says so in
        // the first answer, 200 ms after the first request.
        let l = std::sync::Arc::new(Limiter::new(Some(6000), None));
        let server = std::cell::RefCell::new(Sim::new(3000, Instant::now()));
        let answer = {
            let l = l.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                l.learn(&info(Some(3000), None));
            })
        };
        let (mut before_answer, mut sent, mut refused) = (0, 0, 0);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            l.acquire(1).await.unwrap();
            if !answer.is_finished() {
                before_answer += 1;
            }
            if server.borrow_mut().admit(Instant::now(), 1.0) {
                sent += 1;
            } else {
                refused += 1;
            }
        }
        assert_eq!(before_answer, EARLY_SENDS, "sent before the answer");
        assert_eq!(refused, 0, "{sent} sent");
        // Close to what the server admits in 3 s (its slice of 50, then 50/s).
        assert!(sent >= 180, "{sent}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_answers_holds_the_rest_only_briefly() {
        let l = Limiter::new(None, None);
        l.acquire(1).await.unwrap();
        let took = run(&l, 3, 1).await;
        assert!(took >= PROBE_WAIT && took < PROBE_WAIT * 2, "{took:?}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever numbers a server sends (absurd limits, remaining above the limit, zero),
        /// and whatever a 429 says, the limiter neither panics nor stops letting requests
        /// through (unless the server's own token limit is below one request).
        #[test]
        fn any_header_values_and_429s_never_panic(
            answers in proptest::collection::vec(
                (
                    proptest::option::of(proptest::num::u64::ANY),
                    proptest::option::of(proptest::num::u64::ANY),
                    proptest::option::of(proptest::num::u64::ANY),
                    proptest::option::of(proptest::num::u64::ANY),
                    proptest::option::of(0u64..100_000_000),
                    ".{0,60}",
                ),
                1..12,
            ),
            tokens in 1u64..1_000_000,
            job in proptest::option::of(1u32..u32::MAX),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build();
            let Ok(rt) = rt else { return Ok(()) };
            rt.block_on(async {
                let l = Limiter::new(job, job);
                for (lr, rr, lt, rt_, wait_ms, msg) in answers {
                    let charge = match tokio::time::timeout(
                        Duration::from_secs(7 * 24 * 3600),
                        l.acquire(tokens),
                    )
                    .await
                    {
                        Ok(Ok(c)) => c,
                        Ok(Err(_)) | Err(_) => return,
                    };
                    l.learn(&RateLimitInfo {
                        limit_requests: lr,
                        remaining_requests: rr,
                        limit_tokens: lt,
                        remaining_tokens: rt_,
                        ..RateLimitInfo::default()
                    });
                    l.settle(charge, tokens / 2);
                    if let Some(ms) = wait_ms {
                        l.rate_limited(charge, &msg);
                        l.cool_down(Duration::from_millis(ms));
                    }
                    let r = l.cost_ratio();
                    assert!((RATIO_MIN..=RATIO_MAX).contains(&r), "{r}");
                }
            });
        }
    }
}
