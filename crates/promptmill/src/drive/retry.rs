//! The retry policy: how long to wait after a failed attempt, or whether to give up.
//!
//! It is a pure function of the run's seed, the row, the kind of failure, the attempt
//! number and the server's `retry-after`: no clock, no I/O, no hidden state. The same seed
//! gives the same schedule, so the scheduler's waits can be tested exactly on a paused
//! clock; different rows get different jitter, so workers turned away together do not all
//! come back in the same millisecond.
//!
//! Two schedules, because the two kinds of failure mean different things:
//! - **Rate limited (429)**: a signal to slow down, not a fault, so it is not counted
//!   against `limits.max_retries` (a row gives up after [`MAX_RATE_LIMIT_RETRIES`]). The
//!   server's `retry-after` (or, without one, a doubling guess from 250 ms to 16 s) becomes
//!   the *shared cooldown* ([`RetryPolicy::cooldown`]): the whole limiter pauses that long.
//!   The row itself waits the cooldown plus up to as much again of jitter.
//! - **Transient (5xx, 408, 409, timeouts, resets, unusable answers)**: exponential backoff
//!   from 500 ms, doubling up to 20 s, plus up to as much again of jitter, for at most
//!   `limits.max_retries` retries; never sooner than the server's `retry-after`.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How many 429 answers one row may get before it is given up (they are a signal to slow
/// down, so they are not counted against `max_retries`).
pub const MAX_RATE_LIMIT_RETRIES: u32 = 64;

/// The first transient retry's base wait; each next one doubles it.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest base wait between transient retries (before jitter).
const BACKOFF_MAX: Duration = Duration::from_secs(20);
/// The first 429 cooldown when the server names no wait; each next one doubles it.
const COOLDOWN_MIN: Duration = Duration::from_millis(250);
/// Doublings of [`COOLDOWN_MIN`] at most: 250 ms · 2^6 = 16 s.
const COOLDOWN_DOUBLINGS: u32 = 6;

/// Which schedule a failed attempt follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// The server said 429 (rate limit): slow everyone down, retry without counting it.
    RateLimited,
    /// A fault that may pass (5xx, timeout, reset, an answer that cannot be used).
    Transient,
    /// Flex capacity is short ("resource unavailable"): back off like a transient fault,
    /// but without slowing anyone else and without counting against `max_retries` (a row
    /// gives up after [`MAX_RATE_LIMIT_RETRIES`]).
    Unavailable,
}

/// The retry policy of one run: its limits and the seed of its jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Transient retries allowed per row (`limits.max_retries`).
    pub max_retries: u32,
    /// The jitter's seed: one per run.
    pub seed: u64,
}

impl RetryPolicy {
    /// A policy allowing `max_retries` transient retries per row, jittered from `seed`.
    pub fn new(max_retries: u32, seed: u64) -> RetryPolicy {
        RetryPolicy { max_retries, seed }
    }

    /// The wait before the next attempt of row `row`, after its `attempt`-th failure of
    /// this `kind` (1 for the first), or `None` to give the row up. `retry_after` is the
    /// server's wait, when it sent one.
    pub fn next_delay(
        &self,
        row: u64,
        kind: RetryKind,
        attempt: u32,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let attempt = attempt.max(1);
        let jitter = self.jitter(row, kind, attempt);
        match kind {
            RetryKind::RateLimited => {
                if attempt > MAX_RATE_LIMIT_RETRIES {
                    return None;
                }
                let d = Self::cooldown(attempt, retry_after);
                Some(jittered(d, jitter))
            }
            RetryKind::Transient | RetryKind::Unavailable => {
                let limit = match kind {
                    RetryKind::Transient => self.max_retries,
                    _ => MAX_RATE_LIMIT_RETRIES,
                };
                if attempt > limit {
                    return None;
                }
                let d = Self::backoff(attempt);
                let d = jittered(d, jitter);
                Some(retry_after.map_or(d, |ra| ra.max(d)))
            }
        }
    }

    /// The shared 429 cooldown: how long the whole limiter pauses after a row's
    /// `attempt`-th 429. The server's `retry-after` when it sent one, else a doubling guess
    /// (250 ms, 500 ms, … 16 s). No jitter: every worker waits for the same moment.
    pub fn cooldown(attempt: u32, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or_else(|| {
            COOLDOWN_MIN.saturating_mul(1 << (attempt.max(1) - 1).min(COOLDOWN_DOUBLINGS))
        })
    }

    /// The base wait (before jitter) of the `attempt`-th transient retry.
    fn backoff(attempt: u32) -> Duration {
        let doublings = (attempt - 1).min(16); // 500 ms · 2^6 is past the cap already
        BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX)
    }

    /// A fraction in [0, 1) drawn from the run's seed, the row, the kind and the attempt:
    /// the same inputs give the same fraction.
    fn jitter(&self, row: u64, kind: RetryKind, attempt: u32) -> f64 {
        let kind = match kind {
            RetryKind::RateLimited => 1u64,
            RetryKind::Transient => 2,
            RetryKind::Unavailable => 3,
        };
        // Spread the inputs over the seed's bits (SplitMix64 constants) so that neighbouring
        // rows and attempts start their generators far apart.
        let mixed = self
            .seed
            .wrapping_add(row.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_add(u64::from(attempt).wrapping_mul(0xBF58_476D_1CE4_E5B9))
            .wrapping_add(kind.wrapping_mul(0x94D0_49BB_1331_11EB));
        SmallRng::seed_from_u64(mixed).random::<f64>()
    }
}

/// `d` plus the fraction `jitter` of it, saturating at `Duration::MAX`.
fn jittered(d: Duration, jitter: f64) -> Duration {
    let extra = Duration::try_from_secs_f64(d.as_secs_f64() * jitter).unwrap_or(Duration::MAX);
    d.saturating_add(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn transient_retries_double_from_half_a_second_to_twenty_with_up_to_as_much_jitter() {
        let p = RetryPolicy::new(10, 7);
        let bases = [
            500, 1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000, 20000,
        ];
        for (i, base) in bases.into_iter().enumerate() {
            let d = p
                .next_delay(3, RetryKind::Transient, i as u32 + 1, None)
                .unwrap();
            assert!(
                d >= ms(base) && d < ms(2 * base),
                "attempt {}: {d:?}",
                i + 1
            );
        }
        assert_eq!(p.next_delay(3, RetryKind::Transient, 11, None), None);
    }

    #[test]
    fn no_transient_retry_when_max_retries_is_zero() {
        let p = RetryPolicy::new(0, 7);
        assert_eq!(p.next_delay(0, RetryKind::Transient, 1, None), None);
        // 429s are not counted against max_retries.
        assert!(p.next_delay(0, RetryKind::RateLimited, 1, None).is_some());
    }

    #[test]
    fn flex_unavailable_backs_off_without_counting_against_max_retries() {
        let p = RetryPolicy::new(0, 5);
        for (attempt, base) in [(1, 500), (2, 1000), (3, 2000), (7, 20_000), (64, 20_000)] {
            let d = p
                .next_delay(2, RetryKind::Unavailable, attempt, None)
                .unwrap();
            assert!(d >= ms(base) && d < ms(2 * base), "{attempt}: {d:?}");
        }
        assert_eq!(
            p.next_delay(2, RetryKind::Unavailable, MAX_RATE_LIMIT_RETRIES + 1, None),
            None
        );
        // Never sooner than the server's retry-after.
        assert_eq!(
            p.next_delay(2, RetryKind::Unavailable, 1, Some(9 * S)),
            Some(9 * S)
        );
    }

    #[test]
    fn transient_retry_waits_at_least_the_servers_retry_after() {
        let p = RetryPolicy::new(3, 1);
        let d = p
            .next_delay(0, RetryKind::Transient, 1, Some(30 * S))
            .unwrap();
        assert_eq!(d, 30 * S);
        // A retry-after shorter than the backoff does not shorten it.
        let d = p
            .next_delay(0, RetryKind::Transient, 3, Some(ms(1)))
            .unwrap();
        assert!(d >= 2 * S, "{d:?}");
    }

    #[test]
    fn cooldown_is_the_servers_wait_or_a_doubling_guess() {
        assert_eq!(RetryPolicy::cooldown(1, Some(3 * S)), 3 * S);
        assert_eq!(RetryPolicy::cooldown(9, Some(ms(40))), ms(40));
        let guesses: Vec<Duration> = (1..=9).map(|a| RetryPolicy::cooldown(a, None)).collect();
        let want = [250, 500, 1000, 2000, 4000, 8000, 16000, 16000, 16000].map(ms);
        assert_eq!(guesses, want);
        // Attempt 0 is read as the first.
        assert_eq!(RetryPolicy::cooldown(0, None), ms(250));
    }

    #[test]
    fn a_rate_limited_row_waits_the_cooldown_plus_up_to_as_much_again() {
        let p = RetryPolicy::new(0, 99);
        for attempt in 1..=MAX_RATE_LIMIT_RETRIES {
            for ra in [None, Some(2 * S)] {
                let cool = RetryPolicy::cooldown(attempt, ra);
                let d = p
                    .next_delay(5, RetryKind::RateLimited, attempt, ra)
                    .unwrap();
                assert!(d >= cool && d < 2 * cool, "attempt {attempt}: {d:?}");
            }
        }
        let over = MAX_RATE_LIMIT_RETRIES + 1;
        assert_eq!(p.next_delay(5, RetryKind::RateLimited, over, None), None);
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let schedule = |seed: u64, row: u64| -> Vec<Duration> {
            let p = RetryPolicy::new(8, seed);
            (1..=8)
                .flat_map(|a| {
                    [RetryKind::Transient, RetryKind::RateLimited]
                        .map(|k| p.next_delay(row, k, a, None).unwrap())
                })
                .collect()
        };
        assert_eq!(schedule(42, 3), schedule(42, 3));
        assert_ne!(schedule(42, 3), schedule(43, 3));
        // Rows of one run are spread apart, not sent back in lockstep.
        assert_ne!(schedule(42, 3), schedule(42, 4));
    }

    #[test]
    fn jitter_spreads_rows_over_the_whole_window() {
        // 1,000 rows turned away by the same 429: their waits cover [1 s, 2 s) evenly
        // enough that no tenth of the window is empty or holds a quarter of them.
        let p = RetryPolicy::new(0, 2026);
        let mut tenths = [0u32; 10];
        for row in 0..1000 {
            let d = p
                .next_delay(row, RetryKind::RateLimited, 1, Some(S))
                .unwrap();
            let tenth = ((d.as_secs_f64() - 1.0) * 10.0) as usize;
            tenths[tenth] += 1;
        }
        assert!(tenths.iter().all(|&n| n > 0 && n < 250), "{tenths:?}");
    }

    #[test]
    fn huge_inputs_saturate_instead_of_overflowing() {
        let p = RetryPolicy::new(u32::MAX, u64::MAX);
        let d = p
            .next_delay(
                u64::MAX,
                RetryKind::Transient,
                u32::MAX,
                Some(Duration::MAX),
            )
            .unwrap();
        assert_eq!(d, Duration::MAX);
        assert!(p
            .next_delay(u64::MAX, RetryKind::Transient, u32::MAX, None)
            .is_some());
        let d = p
            .next_delay(0, RetryKind::RateLimited, 1, Some(Duration::MAX))
            .unwrap();
        assert_eq!(d, Duration::MAX);
    }
}
