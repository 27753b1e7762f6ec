//! Rate-limit bucket math, the way providers enforce RPM/TPM limits.
//!
//! A limit of `L` per minute is two continuously refilled buckets that must both have room:
//! the minute budget (capacity `L`) and a sub-minute slice (capacity `L/60`, at least 1), both
//! refilled at `L/60` per second. So a 3,000 RPM limit admits 50 requests per second at most,
//! not 3,000 in the first second. Everything here is pure: callers pass the `Instant`, which
//! keeps the math testable without sleeping.

use std::time::{Duration, Instant};

/// A continuously refilled bucket that may go into debt when one take exceeds its capacity.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    per_sec: f64,
    level: f64,
    last: Instant,
}

impl Bucket {
    fn full(capacity: f64, per_sec: f64, now: Instant) -> Self {
        Bucket {
            capacity,
            per_sec,
            level: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // Concurrent callers may hand in slightly older instants; time never runs backwards here.
        if let Some(dt) = now.checked_duration_since(self.last) {
            self.level = (self.level + dt.as_secs_f64() * self.per_sec).min(self.capacity);
            self.last = now;
        }
    }

    /// Time until `amount` fits. The need is capped at the capacity, so a take larger than the
    /// slice is admitted from a full bucket and leaves it in debt (later requests then wait).
    fn wait_for(&self, amount: f64) -> Duration {
        secs(amount.min(self.capacity) - self.level, self.per_sec)
    }

    fn until_full(&self) -> Duration {
        secs(self.capacity - self.level, self.per_sec)
    }
}

fn secs(missing: f64, per_sec: f64) -> Duration {
    if missing <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(missing / per_sec).unwrap_or(Duration::MAX)
}

/// One per-minute limit (requests or tokens): the minute budget plus the one-second slice.
#[derive(Debug, Clone)]
pub(crate) struct Limit {
    limit: u32,
    minute: Bucket,
    slice: Bucket,
}

impl Limit {
    /// A limit of `limit` per minute, both buckets full at `now`. `limit` must be at least 1.
    pub(crate) fn new(limit: u32, now: Instant) -> Self {
        let l = f64::from(limit.max(1));
        let per_sec = l / 60.0;
        Limit {
            limit: limit.max(1),
            minute: Bucket::full(l, per_sec, now),
            slice: Bucket::full((l / 60.0).floor().max(1.0), per_sec, now),
        }
    }

    /// How long until `amount` would be admitted (zero: admit now).
    pub(crate) fn wait(&mut self, now: Instant, amount: u64) -> Duration {
        self.minute.refill(now);
        self.slice.refill(now);
        let a = amount as f64;
        self.minute.wait_for(a).max(self.slice.wait_for(a))
    }

    /// Spend `amount` from both buckets (after `wait` said zero).
    pub(crate) fn take(&mut self, amount: u64) {
        self.minute.level -= amount as f64;
        self.slice.level -= amount as f64;
    }

    /// The current state, for the `x-ratelimit-*` headers.
    pub(crate) fn status(&mut self, now: Instant) -> LimitStatus {
        self.minute.refill(now);
        self.slice.refill(now);
        LimitStatus {
            limit: self.limit,
            remaining: self.minute.level.max(0.0).floor() as u64,
            reset: self.minute.until_full(),
        }
    }
}

/// What the `x-ratelimit-{limit,remaining,reset}-*` headers report for one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LimitStatus {
    pub(crate) limit: u32,
    pub(crate) remaining: u64,
    /// Time until the minute budget is full again.
    pub(crate) reset: Duration,
}

/// Which limit turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitKind {
    Requests,
    Tokens,
}

impl LimitKind {
    /// The OpenAI `error.type` of a 429 for this limit.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Over the limit now; admitted after `retry_after` (at least 1 ms).
    Limited {
        kind: LimitKind,
        retry_after: Duration,
    },
    /// The request alone needs more tokens than the per-minute limit: it can never pass.
    TooLarge { limit: u32, requested: u64 },
}

/// The requests-per-minute and tokens-per-minute limits of one mock server.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    requests: Option<Limit>,
    tokens: Option<Limit>,
}

/// Both limits' header state (None where no limit is set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RateStatus {
    pub(crate) requests: Option<LimitStatus>,
    pub(crate) tokens: Option<LimitStatus>,
}

impl RateLimiter {
    /// Limits as configured, full at `now`.
    pub(crate) fn new(rpm: Option<u32>, tpm: Option<u32>, now: Instant) -> Self {
        RateLimiter {
            requests: rpm.map(|l| Limit::new(l, now)),
            tokens: tpm.map(|l| Limit::new(l, now)),
        }
    }

    /// True when neither limit is set (the server can skip the lock entirely).
    pub(crate) fn is_unlimited(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    /// Admit one request costing `tokens` if both limits have room, spending from both;
    /// otherwise spend nothing. Requests are checked first, like OpenAI reports them.
    pub(crate) fn try_admit(&mut self, now: Instant, tokens: u64) -> Result<(), Rejection> {
        if let Some(t) = &self.tokens {
            if tokens > u64::from(t.limit) {
                return Err(Rejection::TooLarge {
                    limit: t.limit,
                    requested: tokens,
                });
            }
        }
        let req_wait = self
            .requests
            .as_mut()
            .map_or(Duration::ZERO, |r| r.wait(now, 1));
        if !req_wait.is_zero() {
            return Err(limited(LimitKind::Requests, req_wait));
        }
        let tok_wait = self
            .tokens
            .as_mut()
            .map_or(Duration::ZERO, |t| t.wait(now, tokens));
        if !tok_wait.is_zero() {
            return Err(limited(LimitKind::Tokens, tok_wait));
        }
        if let Some(r) = &mut self.requests {
            r.take(1);
        }
        if let Some(t) = &mut self.tokens {
            t.take(tokens);
        }
        Ok(())
    }

    /// Header state at `now`.
    pub(crate) fn status(&mut self, now: Instant) -> RateStatus {
        RateStatus {
            requests: self.requests.as_mut().map(|l| l.status(now)),
            tokens: self.tokens.as_mut().map(|l| l.status(now)),
        }
    }
}

fn limited(kind: LimitKind, wait: Duration) -> Rejection {
    Rejection::Limited {
        kind,
        retry_after: wait.max(Duration::from_millis(1)),
    }
}

/// Whole milliseconds, rounded up, so a client that waits this long finds room.
pub(crate) fn ceil_millis(d: Duration) -> u64 {
    let ms = d.as_millis();
    let ms = if !d.subsec_nanos().is_multiple_of(1_000_000) {
        ms + 1
    } else {
        ms
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` headers spell it (Go's
/// `time.Duration` format, at millisecond precision): `0s`, `20ms`, `1s`, `7.66s`, `6m0s`,
/// `2m59.56s`, `1h0m0s`.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = ceil_millis(d);
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s_ms) = (ms / 3_600_000, ms / 60_000 % 60, ms % 60_000);
    let secs = if s_ms % 1000 == 0 {
        format!("{}", s_ms / 1000)
    } else {
        let frac = format!("{:03}", s_ms % 1000);
        format!("{}.{}", s_ms / 1000, frac.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn slice_caps_the_burst_at_a_sixtieth_of_the_limit() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Some(3000), None, t0);
        for _ in 0..50 {
            assert_eq!(rl.try_admit(t0, 0), Ok(()));
        }
        // 50 per second refill: the next request has room after 20 ms.
        match rl.try_admit(t0, 0) {
            Err(Rejection::Limited { kind, retry_after }) => {
                assert_eq!(kind, LimitKind::Requests);
                assert_eq!(ceil_millis(retry_after), 20);
            }
            other => panic!("expected requests 429, got {other:?}"),
        }
        assert_eq!(rl.try_admit(t0 + ms(20), 0), Ok(()));
        let st = rl.status(t0 + ms(20)).requests.unwrap();
        assert_eq!(st.limit, 3000);
        assert_eq!(st.remaining, 3000 - 51 + 1);
    }

    #[test]
    fn steady_rate_at_the_limit_never_drains_the_minute_budget() {
        let t0 = Instant::now();
        // 60 RPM: slice of 1, one per second; the minute budget starts full at 60.
        let mut l = Limit::new(60, t0);
        for i in 0..60u64 {
            let now = t0 + Duration::from_secs(i);
            assert_eq!(l.wait(now, 1), Duration::ZERO, "second {i}");
            l.take(1);
        }
        let st = l.status(t0 + Duration::from_secs(59));
        assert_eq!(st.remaining, 59); // each second refilled what the previous one spent
        assert_eq!(st.reset, Duration::from_secs(1));
    }

    #[test]
    fn minute_budget_alone_rejects_after_the_burst_is_spent() {
        let t0 = Instant::now();
        let mut l = Limit::new(120, t0); // slice 2, refill 2/s
        l.minute.level = 0.5;
        // Slice is full but the minute budget needs 0.5 more: 250 ms at 2/s.
        assert_eq!(ceil_millis(l.wait(t0, 1)), 250);
        assert_eq!(l.wait(t0 + ms(250), 1), Duration::ZERO);
    }

    #[test]
    fn tokens_limit_rejects_with_tokens_kind_and_spends_nothing() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Some(600), Some(6000), t0); // token slice: 100
        assert_eq!(rl.try_admit(t0, 100), Ok(()));
        let before = rl.status(t0);
        match rl.try_admit(t0, 50) {
            Err(Rejection::Limited { kind, retry_after }) => {
                assert_eq!(kind, LimitKind::Tokens);
                assert_eq!(ceil_millis(retry_after), 500); // 50 tokens at 100/s
            }
            other => panic!("expected tokens 429, got {other:?}"),
        }
        assert_eq!(rl.status(t0), before, "a rejected request must not spend");
    }

    #[test]
    fn oversized_take_passes_a_full_slice_then_leaves_debt() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(None, Some(6000), t0); // slice 100, 100/s
        assert_eq!(rl.try_admit(t0, 400), Ok(()));
        // Slice is at -300: the next 1-token request waits 3.01 s.
        match rl.try_admit(t0, 1) {
            Err(Rejection::Limited { retry_after, .. }) => {
                assert_eq!(ceil_millis(retry_after), 3010)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rl.try_admit(t0, 6001),
            Err(Rejection::TooLarge {
                limit: 6000,
                requested: 6001
            })
        );
    }

    #[test]
    fn unlimited_admits_everything() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(None, None, t0);
        assert!(rl.is_unlimited());
        for _ in 0..10_000 {
            assert_eq!(rl.try_admit(t0, 1_000_000), Ok(()));
        }
        assert_eq!(rl.status(t0), RateStatus::default());
    }

    #[test]
    fn reset_is_time_until_the_minute_budget_is_full() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Some(60), Some(60_000), t0);
        assert_eq!(rl.try_admit(t0, 1000), Ok(()));
        let st = rl.status(t0);
        let (r, t) = (st.requests.unwrap(), st.tokens.unwrap());
        assert_eq!((r.remaining, r.reset), (59, Duration::from_secs(1)));
        assert_eq!((t.remaining, t.reset), (59_000, Duration::from_secs(1)));
        // Older instants (a racing caller) do not move the clock backwards.
        let later = rl.status(t0 + ms(500));
        assert_eq!(rl.status(t0), later);
    }

    #[test]
    fn go_durations_match_openai_headers() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(ms(20)), "20ms");
        assert_eq!(go_duration(Duration::from_micros(19_001)), "20ms");
        assert_eq!(go_duration(ms(1000)), "1s");
        assert_eq!(go_duration(ms(7660)), "7.66s");
        assert_eq!(go_duration(ms(360_000)), "6m0s");
        assert_eq!(go_duration(ms(179_560)), "2m59.56s");
        assert_eq!(go_duration(ms(60_005)), "1m0.005s");
        assert_eq!(go_duration(ms(3_600_000)), "1h0m0s");
    }

    #[test]
    fn ceil_millis_rounds_up() {
        assert_eq!(ceil_millis(Duration::from_micros(1)), 1);
        assert_eq!(ceil_millis(ms(7)), 7);
        assert_eq!(ceil_millis(Duration::from_micros(7001)), 8);
    }
}
