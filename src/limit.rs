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
//! Nothing here does I/O; time comes from `tokio::time`, so the tests run on a paused clock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
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
    /// from a full bucket and leaves it in debt, as providers do.
    fn reserve(&mut self, now: Instant, n: u64, factor: f64) -> Instant {
        let start = self.tat.max(now);
        let send_at = (start + self.span(n.min(self.burst), factor))
            .checked_sub(self.tau())
            .unwrap_or(now)
            .max(now);
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
    /// Guessed from 429s when the server sends no headers: lowered on every 429, raised
    /// slowly while none come.
    Guessed,
}

#[derive(Debug)]
struct Limit {
    source: Source,
    bucket: Option<Gcra>,
}

impl Limit {
    fn new(per_minute: Option<u32>, now: Instant) -> Limit {
        match per_minute {
            Some(l) => Limit {
                source: Source::Job(u64::from(l)),
                bucket: Some(Gcra::new(u64::from(l), now, None)),
            },
            None => Limit {
                source: Source::None,
                bucket: None,
            },
        }
    }

    /// Applies the server's advertised limit; returns the new limit when it changed.
    fn learn_limit(&mut self, now: Instant, header: u64) -> Option<u64> {
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
            // Keep the debt we have; only the rate changes.
            Some(b) => {
                let level = b.level(now);
                *b = Gcra::new(wanted, now, Some(level));
            }
            // Only the probe has gone so far: the bucket starts nearly full.
            None => {
                let fresh = Gcra::new(wanted, now, None);
                let level = fresh.burst.saturating_sub(1);
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
    /// Send times of the last second while no request limit is known (to guess one).
    recent: VecDeque<Instant>,
    /// When the guessed rate was last changed.
    guess_changed: Option<Instant>,
}

impl State {
    /// Remembers a send while no request limit is known.
    fn note_send(&mut self, now: Instant) {
        if self.requests.source != Source::None {
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
    /// cut the guess by a quarter (at most once a second).
    fn guess_lower(&mut self, now: Instant) {
        let current = match (self.requests.source, &self.requests.bucket) {
            (Source::None, _) => (self.recent.len() as u64 * 60).max(60),
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
        self.recent.clear();
        tracing::info!("no rate-limit headers: guessing {rpm} requests/min after a 429");
    }

    /// Raises a guessed limit by a tenth after two seconds without a 429.
    fn guess_higher(&mut self, now: Instant) {
        if self.requests.source != Source::Guessed
            || self
                .guess_changed
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(2))
        {
            return;
        }
        if let Some(b) = &mut self.requests.bucket {
            let level = b.level(now);
            let rpm = b.per_minute + (b.per_minute / 10).max(1);
            let mut fresh = Gcra::new(rpm, now, Some(level));
            fresh.tat = fresh.tat.max(b.tat);
            *b = fresh;
            self.guess_changed = Some(now);
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
    first_answer: Notify,
}

/// Tokens charged for one request, to settle when its usage is known.
#[derive(Debug, Clone, Copy)]
pub struct Charge {
    tokens: u64,
}

impl Limiter {
    /// A limiter for the given per-minute limits (None = unknown: learn them from headers).
    pub fn new(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> Limiter {
        let now = Instant::now();
        Limiter {
            state: Mutex::new(State {
                requests: Limit::new(requests_per_minute, now),
                tokens: Limit::new(tokens_per_minute, now),
                cooldown_until: None,
                recent: VecDeque::new(),
                guess_changed: None,
            }),
            refund_unused: false,
            probe_sent: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            first_answer: Notify::new(),
        }
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

    /// Adapts to what one response's headers said: learns (or lowers) the limits, and
    /// slows down when the server has less left than the buckets believe. Headers are
    /// hints: a missing value changes nothing.
    pub fn learn(&self, info: &RateLimitInfo) {
        let now = Instant::now();
        {
            let mut s = self.lock();
            if let Some(rpm) = info.limit_requests.filter(|r| *r > 0) {
                if let Some(new) = s.requests.learn_limit(now, rpm) {
                    tracing::info!("running at {new} requests/min (server's limit: {rpm})");
                }
            }
            if let Some(tpm) = info.limit_tokens.filter(|t| *t > 0) {
                if let Some(new) = s.tokens.learn_limit(now, tpm) {
                    tracing::info!("running at {new} tokens/min (server's limit: {tpm})");
                }
            }
            if let (Some(r), Some(b)) = (info.remaining_requests, &mut s.requests.bucket) {
                b.cap_level(now, r);
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
    }

    /// Waits until one request of `tokens` tokens may be sent and charges it.
    pub async fn acquire(&self, tokens: u64) -> Charge {
        self.wait_for_probe().await;
        loop {
            let next = {
                let mut s = self.lock();
                let now = Instant::now();
                match s.cooldown_until {
                    Some(until) if until > now => Err(until),
                    _ => {
                        s.guess_higher(now);
                        s.note_send(now);
                        let f = s.ramp(now);
                        let r = s.requests.bucket.as_mut().map(|b| b.reserve(now, 1, f));
                        let t = s.tokens.bucket.as_mut().map(|b| b.reserve(now, tokens, f));
                        Ok(r.into_iter().chain(t).max().unwrap_or(now))
                    }
                }
            };
            match next {
                Err(until) => tokio::time::sleep_until(until).await,
                Ok(send_at) => {
                    tokio::time::sleep_until(send_at).await;
                    // A 429 while we slept: our slot is void, queue again after it.
                    if !self.cooling_now() {
                        return Charge { tokens };
                    }
                }
            }
        }
    }

    fn cooling_now(&self) -> bool {
        self.lock()
            .cooldown_until
            .is_some_and(|u| u > Instant::now())
    }

    /// Lets the first request go alone and holds the rest until it is answered (at most
    /// `PROBE_WAIT`), so its headers set the pace before the first burst.
    async fn wait_for_probe(&self) {
        if self.answered.load(Ordering::Acquire) || !self.probe_sent.swap(true, Ordering::AcqRel) {
            return;
        }
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
            l.acquire(tokens).await;
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
        l.acquire(1).await;
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
                let c = l.acquire(80).await;
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
        tokio::time::sleep(Duration::from_secs(3)).await;
        l.acquire(1).await;
        assert_eq!(
            l.requests_per_minute(),
            Some(19_800),
            "raised while no 429 comes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_request_goes_alone_until_answered() {
        let l = std::sync::Arc::new(Limiter::new(None, None));
        l.acquire(1).await; // the probe
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire(1).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "went before the probe was answered");
        l.learn(&info(Some(6000), None));
        waiter.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.requests_per_minute(), Some(6000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_answers_holds_the_rest_only_briefly() {
        let l = Limiter::new(None, None);
        l.acquire(1).await;
        let took = run(&l, 3, 1).await;
        assert!(took >= PROBE_WAIT && took < PROBE_WAIT * 2, "{took:?}");
    }
}
