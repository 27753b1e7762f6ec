//! When failed attempts say the job cannot go on: the endpoint is down (every attempt so far
//! failed to connect, timed out or got a 5xx), or the server refuses everything with 429s
//! for longer than any per-minute limit would.
//!
//! Without this, retries hide an outage: each row backs off and retries on its own, a
//! job of 200 rows against a closed port makes a thousand attempts before it gives up, and
//! a server that answers 429 to everything is retried forever. The watchdog stops the job
//! instead (exit 3, rows stay pending, the same command resumes) with one line that names
//! the last error.
//!
//! It is pure: the caller passes the time, so the tests run on a paused clock.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{ApiError, ErrorKind};

/// What the watchdog watches for; 0 / None turns a rule off.
#[derive(Debug, Clone, Copy)]
pub struct WatchdogLimits {
    /// Stop after this many attempts in a row failed with a connection error, a timeout
    /// or a 5xx while nothing has succeeded in this run (`limits.stop_after_errors`).
    pub errors: u32,
    /// Stop when every answer for this long has been a 429 with no success in between
    /// (`limits.stop_after_refused_secs`).
    pub refused: Option<Duration>,
}

#[derive(Debug, Default)]
struct State {
    /// Some attempt of this run succeeded.
    succeeded: bool,
    /// Connection errors, timeouts and 5xx in a row, while nothing has succeeded.
    streak: u32,
    /// The streak's first error message, and whether every error since said the same.
    first_message: Option<String>,
    same_message: bool,
    /// The first 429 since the last success, and the 429s since.
    refused_since: Option<Instant>,
    refused: u64,
}

/// Watches the outcome of every attempt of one run.
#[derive(Debug)]
pub struct Watchdog {
    limits: WatchdogLimits,
    state: Mutex<State>,
}

impl Watchdog {
    /// A watchdog with the given limits.
    pub fn new(limits: WatchdogLimits) -> Watchdog {
        Watchdog {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An attempt succeeded: the endpoint is up and the server lets us in.
    pub fn success(&self) {
        let mut s = self.lock();
        s.succeeded = true;
        s.streak = 0;
        s.first_message = None;
        s.refused_since = None;
        s.refused = 0;
    }

    /// An attempt failed at `now`; returns why the job must stop, if it must.
    pub fn failure(&self, err: &ApiError, now: Instant) -> Option<String> {
        let mut s = self.lock();
        match err.kind {
            ErrorKind::RateLimited => {
                let since = *s.refused_since.get_or_insert(now);
                s.refused += 1;
                let limit = self.limits.refused?;
                let waited = now.saturating_duration_since(since);
                (waited >= limit).then(|| {
                    format!(
                        "the server has answered every request with 429 (rate limited) for {} \
                         ({} refusals, no success since); it may enforce a limit this job \
                         cannot meet (a daily quota, or requests larger than its limit). \
                         Rows not done stay pending: run the same command later to resume \
                         (limits.stop_after_refused_secs = {})",
                        human(waited),
                        s.refused,
                        limit.as_secs()
                    )
                })
            }
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Server if !s.succeeded => {
                let msg = err.to_string();
                s.streak += 1;
                match &s.first_message {
                    None => {
                        s.first_message = Some(msg.clone());
                        s.same_message = true;
                    }
                    Some(first) => s.same_message &= *first == msg,
                }
                let n = self.limits.errors;
                if n == 0 || s.streak < n {
                    return None;
                }
                let what = match err.kind {
                    ErrorKind::Connection => "could not connect",
                    ErrorKind::Timeout => "timed out",
                    _ => "got a server error",
                };
                Some(if s.same_message && err.kind == ErrorKind::Server {
                    format!(
                        "the first {n} attempts all failed with the same error and none \
                         succeeded, so it does not look transient: {msg}. Check the endpoint \
                         and the job's settings; rows stay pending: run the same command \
                         again to resume (limits.stop_after_errors = {n})"
                    )
                } else {
                    format!(
                        "the endpoint looks down: the first {n} attempts failed and none \
                         succeeded (the last {what}: {msg}). Rows stay pending: run the same \
                         command again to resume (limits.stop_after_errors = {n})"
                    )
                })
            }
            _ => None,
        }
    }
}

/// `95 s`, `2 min 5 s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorKind, msg: &str) -> ApiError {
        let mut e = ApiError::transport(kind, msg);
        if kind == ErrorKind::Server {
            e.status = Some(500);
        }
        e
    }

    fn dog(errors: u32, refused: u64) -> Watchdog {
        Watchdog::new(WatchdogLimits {
            errors,
            refused: (refused > 0).then(|| Duration::from_secs(refused)),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_that_never_answers_stops_after_n_errors() {
        let d = dog(4, 0);
        let now = Instant::now();
        for i in 0..3 {
            let e = err(ErrorKind::Connection, &format!("connection refused ({i})"));
            assert_eq!(d.failure(&e, now), None);
        }
        let why = d
            .failure(&err(ErrorKind::Timeout, "timed out"), now)
            .unwrap_or_default();
        assert!(why.contains("endpoint looks down"), "{why}");
        assert!(why.contains("the last timed out: timed out"), "{why}");
        assert!(why.contains("limits.stop_after_errors = 4"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_server_error_everywhere_is_called_not_transient() {
        let d = dog(3, 0);
        let now = Instant::now();
        let e = err(ErrorKind::Server, "response_format not supported");
        assert_eq!(d.failure(&e, now), None);
        assert_eq!(d.failure(&e, now), None);
        let why = d.failure(&e, now).unwrap_or_default();
        assert!(why.contains("does not look transient"), "{why}");
        assert!(
            why.contains("HTTP 500: response_format not supported"),
            "{why}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn once_something_succeeded_errors_are_left_to_the_retries() {
        let d = dog(2, 0);
        let now = Instant::now();
        assert_eq!(d.failure(&err(ErrorKind::Server, "x"), now), None);
        d.success();
        for _ in 0..10 {
            assert_eq!(d.failure(&err(ErrorKind::Server, "x"), now), None);
        }
        // Other failures never count.
        let d = dog(1, 0);
        assert_eq!(d.failure(&err(ErrorKind::BadResponse, "x"), now), None);
        assert_eq!(d.failure(&err(ErrorKind::BadRequest, "x"), now), None);
        // Zero turns the rule off.
        let d = dog(0, 0);
        for _ in 0..100 {
            assert_eq!(d.failure(&err(ErrorKind::Connection, "x"), now), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_stop_the_job_only_after_the_whole_window() {
        let d = dog(0, 120);
        let e = err(ErrorKind::RateLimited, "slow down");
        assert_eq!(d.failure(&e, Instant::now()), None);
        tokio::time::sleep(Duration::from_secs(119)).await;
        assert_eq!(d.failure(&e, Instant::now()), None);
        // A success restarts the window.
        d.success();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(d.failure(&e, Instant::now()), None);
        tokio::time::sleep(Duration::from_secs(119)).await;
        assert_eq!(d.failure(&e, Instant::now()), None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let why = d.failure(&e, Instant::now()).unwrap_or_default();
        assert!(why.contains("for 2 min 0 s (3 refusals"), "{why}");
        assert!(why.contains("run the same command later"), "{why}");
        // Off: never.
        let d = dog(0, 0);
        assert_eq!(d.failure(&e, Instant::now()), None);
        tokio::time::sleep(Duration::from_secs(100_000)).await;
        assert_eq!(d.failure(&e, Instant::now()), None);
    }
}
