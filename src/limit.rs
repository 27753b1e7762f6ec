//! The limiter: requests/min and tokens/min token buckets shared by every in-flight request,
//! plus one shared cooldown that a 429 imposes on everybody.
//!
//! Providers enforce per-minute limits in slices of about a second, so the buckets hold at
//! most one second's worth: a job never bursts a whole minute's allowance at start (that is
//! how naive clients lose rows to 429s).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};
use tokio::time::Instant;

use crate::client::RateLimitInfo;

/// The limits a job runs under.
pub struct Limiter {
    buckets: Mutex<Buckets>,
    cooldown_until: Mutex<Option<Instant>>,
}

/// The current buckets; replaced (not mutated) when limits are learned from headers.
#[derive(Clone, Default)]
struct Buckets {
    requests: Option<Arc<DefaultDirectRateLimiter>>,
    tokens: Option<Arc<DefaultDirectRateLimiter>>,
    token_burst: u32,
    /// The limits were given by the job (never overridden by headers).
    requests_fixed: bool,
    tokens_fixed: bool,
    learned_rpm: Option<u64>,
    learned_tpm: Option<u64>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.buckets();
        f.debug_struct("Limiter")
            .field("requests", &b.requests.is_some())
            .field("tokens", &b.tokens.is_some())
            .field("token_burst", &b.token_burst)
            .finish()
    }
}

/// A bucket refilled at `per_minute / 60` per second holding one second's worth
/// (at least one cell).
fn one_second_bucket(per_minute: u32) -> (DefaultDirectRateLimiter, u32) {
    let per_minute = per_minute.max(1);
    let burst = (per_minute / 60).max(1);
    let period = Duration::from_secs_f64(60.0 / per_minute as f64);
    // Both values are at least 1 and the period is positive, so neither can fail; fall back
    // to a one-per-second quota rather than panic.
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
    (RateLimiter::direct(quota), burst)
}

impl Limiter {
    /// A limiter for the given per-minute limits (None = unlimited).
    pub fn new(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> Limiter {
        let requests = requests_per_minute.map(|r| Arc::new(one_second_bucket(r).0));
        let (tokens, token_burst) = match tokens_per_minute {
            Some(t) => {
                let (l, b) = one_second_bucket(t);
                (Some(Arc::new(l)), b)
            }
            None => (None, 0),
        };
        Limiter {
            buckets: Mutex::new(Buckets {
                requests_fixed: requests.is_some(),
                tokens_fixed: tokens.is_some(),
                requests,
                tokens,
                token_burst,
                learned_rpm: None,
                learned_tpm: None,
            }),
            cooldown_until: Mutex::new(None),
        }
    }

    fn buckets(&self) -> Buckets {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Learns limits the job did not give from the server's rate-limit headers
    /// (`x-ratelimit-limit-requests` / `-tokens`), so a job without `[limits]` runs at the
    /// provider's pace instead of finding it by 429s.
    pub fn learn(&self, info: &RateLimitInfo) {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !b.requests_fixed {
            if let Some(rpm) = info.limit_requests.filter(|r| *r > 0) {
                if b.learned_rpm != Some(rpm) {
                    let rpm32 = u32::try_from(rpm).unwrap_or(u32::MAX);
                    b.requests = Some(Arc::new(one_second_bucket(rpm32).0));
                    b.learned_rpm = Some(rpm);
                    tracing::info!("learned a limit of {rpm} requests/min from the server");
                }
            }
        }
        if !b.tokens_fixed {
            if let Some(tpm) = info.limit_tokens.filter(|t| *t > 0) {
                if b.learned_tpm != Some(tpm) {
                    let tpm32 = u32::try_from(tpm).unwrap_or(u32::MAX);
                    let (l, burst) = one_second_bucket(tpm32);
                    b.tokens = Some(Arc::new(l));
                    b.token_burst = burst;
                    b.learned_tpm = Some(tpm);
                    tracing::info!("learned a limit of {tpm} tokens/min from the server");
                }
            }
        }
    }

    /// Waits until one request of `tokens` tokens may be sent. A request larger than one
    /// second's token allowance waits for a full bucket and takes all of it.
    pub async fn acquire(&self, tokens: u64) {
        self.wait_cooldown().await;
        let jitter = Jitter::up_to(Duration::from_millis(2));
        let b = self.buckets();
        if let Some(r) = &b.requests {
            r.until_ready_with_jitter(jitter).await;
        }
        if let Some(t) = &b.tokens {
            let n = tokens.clamp(1, b.token_burst.max(1) as u64) as u32;
            let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            // n <= burst by construction, so InsufficientCapacity cannot happen.
            let _ = t.until_n_ready_with_jitter(n, jitter).await;
        }
    }

    /// Holds every worker back for `d` (a 429 tells us the server is full, not one worker).
    pub fn cool_down(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut g = self
            .cooldown_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if g.is_none_or(|cur| cur < until) {
            *g = Some(until);
        }
    }

    async fn wait_cooldown(&self) {
        loop {
            let until = *self
                .cooldown_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn never_bursts_more_than_one_second_of_requests() {
        let l = Limiter::new(Some(600), None); // 10/s
        let start = std::time::Instant::now();
        for _ in 0..20 {
            l.acquire(1).await;
        }
        // 10 go at once, the other 10 at 100 ms intervals.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn oversize_token_requests_take_a_full_bucket_instead_of_failing() {
        let l = Limiter::new(None, Some(6000)); // 100 tokens/s
        let start = std::time::Instant::now();
        l.acquire(5000).await;
        l.acquire(5000).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn a_cooldown_holds_everyone() {
        let l = Limiter::new(None, None);
        l.cool_down(Duration::from_millis(200));
        l.cool_down(Duration::from_millis(50)); // a shorter one does not shorten it
        let start = std::time::Instant::now();
        l.acquire(1).await;
        assert!(start.elapsed() >= Duration::from_millis(190));
    }
}
