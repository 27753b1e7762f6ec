//! Reading what a server says about its limits: `x-ratelimit-*`, `retry-after(-ms)`.
//!
//! Every number a server sends is untrusted: it is parsed with saturation and clamped to a
//! sane range here, at the boundary, so nothing downstream (durations, instants, the
//! limiter's arithmetic) can overflow or panic on `1e300`, `inf`, `NaN` or a huge integer.

use reqwest::header::HeaderMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The longest wait a server may ask for: a longer `retry-after` is treated as this long
/// (and said once), so one absurd header cannot park the run for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The longest reset time taken from a header (`x-ratelimit-reset-*`): a day.
pub const MAX_RESET: Duration = Duration::from_secs(86_400);

/// The largest count taken from a header (limits and remaining): far above any real limit,
/// and small enough that the limiter's arithmetic on it cannot overflow.
pub const MAX_COUNT: u64 = 1_000_000_000_000;

/// A duration of `secs` seconds, clamped to `0..=max`; None for NaN.
pub fn clamped_secs(secs: f64, max: Duration) -> Option<Duration> {
    if secs.is_nan() {
        return None;
    }
    if secs <= 0.0 {
        return Some(Duration::ZERO);
    }
    Some(Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max)))
}

/// What the rate-limit headers of one response said. Every field is optional: servers
/// differ, and a missing or unparseable value means "unknown", never zero.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimitInfo {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
}

impl RateLimitInfo {
    /// Reads OpenAI-style headers (`x-ratelimit-limit-requests` …); `prefix` lets other
    /// providers reuse it (Anthropic: `anthropic-ratelimit-requests-limit` is mapped by its
    /// provider).
    pub fn from_openai_headers(h: &HeaderMap) -> RateLimitInfo {
        RateLimitInfo {
            limit_requests: num(h, "x-ratelimit-limit-requests"),
            remaining_requests: num(h, "x-ratelimit-remaining-requests"),
            reset_requests: dur(h, "x-ratelimit-reset-requests"),
            limit_tokens: num(h, "x-ratelimit-limit-tokens"),
            remaining_tokens: num(h, "x-ratelimit-remaining-tokens"),
            reset_tokens: dur(h, "x-ratelimit-reset-tokens"),
        }
    }

    /// True when the server said anything at all.
    pub fn is_known(&self) -> bool {
        self.limit_requests.is_some() || self.limit_tokens.is_some()
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)?.to_str().ok().map(str::trim)
}

fn num(h: &HeaderMap, name: &str) -> Option<u64> {
    parse_count(header(h, name)?)
}

/// A count from a header: a non-negative number, at most [`MAX_COUNT`]. Negative values
/// (Azure sends -1 for "not applicable"), NaN and garbage are unknown; `inf` and huge
/// numbers saturate.
pub fn parse_count(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(n.min(MAX_COUNT));
    }
    let v: f64 = s.parse().ok()?;
    // `as` saturates (and NaN fails the test before it).
    (v >= 0.0).then(|| (v.min(MAX_COUNT as f64)) as u64)
}

fn dur(h: &HeaderMap, name: &str) -> Option<Duration> {
    parse_go_duration(header(h, name)?).map(|d| d.min(MAX_RESET))
}

/// Parses the Go-style durations OpenAI sends: `1s`, `6m0s`, `20ms`, `2m59.56s`, `1h2m`;
/// a bare number is seconds. Negative and NaN values are unknown; values too large for a
/// `Duration` saturate at [`MAX_RESET`].
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return (secs >= 0.0)
            .then(|| clamped_secs(secs, MAX_RESET))
            .flatten();
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_len..];
    }
    clamped_secs(total, MAX_RESET)
}

/// The server's requested wait: `retry-after-ms` (preferred), else `retry-after` in seconds.
/// Zero, negative, NaN, garbage and HTTP-date forms are ignored (the caller then uses its
/// own backoff); a wait above [`MAX_RETRY_AFTER`] (`inf` included) is cut to it, and said
/// once per run.
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let positive = |v: &str| v.parse::<f64>().ok().filter(|x| *x > 0.0);
    let secs = match header(h, "retry-after-ms").and_then(positive) {
        Some(ms) => ms / 1000.0,
        None => header(h, "retry-after").and_then(positive)?,
    };
    let d = clamped_secs(secs, Duration::MAX)?;
    if d > MAX_RETRY_AFTER {
        static SAID: AtomicBool = AtomicBool::new(false);
        if !SAID.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the server asked to wait {} s before retrying; waiting {} s at most",
                if secs.is_finite() {
                    format!("{secs:.0}")
                } else {
                    "forever".into()
                },
                MAX_RETRY_AFTER.as_secs()
            );
        }
        return Some(MAX_RETRY_AFTER);
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn go_durations() {
        let ms = |s| parse_go_duration(s).map(|d| d.as_millis());
        assert_eq!(ms("1s"), Some(1000));
        assert_eq!(ms("6m0s"), Some(360_000));
        assert_eq!(ms("20ms"), Some(20));
        assert_eq!(ms("2m59.56s"), Some(179_560));
        assert_eq!(ms("7.66s"), Some(7660));
        assert_eq!(ms("1h2m"), Some(3_720_000));
        assert_eq!(ms("0.5"), Some(500));
        assert_eq!(ms(""), None);
        assert_eq!(ms("soon"), None);
        assert_eq!(ms("5x"), None);
    }

    #[test]
    fn headers_are_read_and_junk_is_unknown() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-limit-requests",
            HeaderValue::from_static("3000"),
        );
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("2999"),
        );
        h.insert(
            "x-ratelimit-reset-requests",
            HeaderValue::from_static("20ms"),
        );
        h.insert("x-ratelimit-limit-tokens", HeaderValue::from_static("-1"));
        h.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("lots"),
        );
        let r = RateLimitInfo::from_openai_headers(&h);
        assert_eq!(r.limit_requests, Some(3000));
        assert_eq!(r.remaining_requests, Some(2999));
        assert_eq!(r.reset_requests, Some(Duration::from_millis(20)));
        assert_eq!(r.limit_tokens, None);
        assert_eq!(r.remaining_tokens, None);
        assert!(r.is_known());
    }

    #[test]
    fn retry_after_prefers_ms_and_ignores_absurd_waits() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3600"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn absurd_numbers_saturate_instead_of_panicking() {
        let mut h = HeaderMap::new();
        for v in ["1e20", "1e300", "inf", "+inf", "99999999999999999999999999"] {
            h.insert("retry-after", HeaderValue::from_str(v).unwrap());
            assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER), "{v}");
            h.insert(
                "x-ratelimit-reset-tokens",
                HeaderValue::from_str(v).unwrap(),
            );
            h.insert(
                "x-ratelimit-limit-tokens",
                HeaderValue::from_str(v).unwrap(),
            );
            let r = RateLimitInfo::from_openai_headers(&h);
            assert_eq!(r.reset_tokens, Some(MAX_RESET), "{v}");
            assert_eq!(r.limit_tokens, Some(MAX_COUNT), "{v}");
        }
        for v in ["-1", "-1e300", "NaN", "-inf", "0", "soon", ""] {
            let mut h = HeaderMap::new();
            h.insert("retry-after-ms", HeaderValue::from_str(v).unwrap());
            assert_eq!(retry_after(&h), None, "{v}");
        }
        assert_eq!(parse_count("-1"), None);
        assert_eq!(parse_count("NaN"), None);
        assert_eq!(parse_count("12.9"), Some(12));
        assert_eq!(parse_go_duration("-5s"), None);
        assert_eq!(parse_go_duration("NaN"), None);
        let nines = "9".repeat(400) + "h";
        assert_eq!(parse_go_duration(&nines), Some(MAX_RESET));
        // Anthropic's RFC 3339 resets: a multi-byte character where the offset's digits
        // should be is unknown, not a panic.
        assert_eq!(
            crate::time::parse_rfc3339("2026-11-25T19:30:05+1\u{e9}:x"),
            None
        );
    }

    mod any_header {
        use super::*;
        use crate::client::{Anthropic, OpenAi, Provider};
        use crate::config::Endpoint;
        use crate::limit::Limiter;
        use proptest::prelude::*;

        const NAMES: &[&str] = &[
            "retry-after",
            "retry-after-ms",
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
            "anthropic-ratelimit-tokens-limit",
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ];

        /// Any text, and the numbers servers get wrong: huge, tiny, negative, not finite.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                any::<f64>().prop_map(|f| f.to_string()),
                any::<f64>().prop_map(|f| format!("{f:e}")),
                any::<u128>().prop_map(|n| n.to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                "[0-9]{1,400}",
                "-?[0-9.]{1,40}(h|m|s|ms|us|ns){0,1}([0-9.]{1,40}(h|m|s|ms))*",
                "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,40})?(Z|[+-].{1,6})",
                prop::sample::select(vec![
                    "inf", "-inf", "NaN", "1e20", "1e300", "-1", "0", "1e-300", "+Infinity",
                ])
                .prop_map(str::to_string),
            ]
        }

        fn fuzz_cases(default: u32) -> u32 {
            std::env::var("PROMPTMILL_FUZZ_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(fuzz_cases(256)))]

            /// Whatever the headers say, reading them, classifying the response and feeding
            /// the limiter never panics, and every wait stays within its cap.
            #[test]
            fn any_header_value_is_read_and_obeyed_without_panic(
                values in proptest::collection::vec((0..NAMES.len(), value()), 0..16),
                status in prop::sample::select(vec![200u16, 429, 500, 529]),
                job_limits in any::<bool>(),
            ) {
                let mut h = HeaderMap::new();
                for (i, v) in &values {
                    if let Ok(v) = HeaderValue::from_str(v) {
                        h.append(NAMES[*i], v);
                    }
                }
                let openai = RateLimitInfo::from_openai_headers(&h);
                let anthropic =
                    crate::client::anthropic::rate_info(&h, std::time::SystemTime::now());
                for info in [&openai, &anthropic] {
                    for n in [info.limit_requests, info.remaining_requests, info.limit_tokens,
                              info.remaining_tokens].into_iter().flatten() {
                        prop_assert!(n <= MAX_COUNT);
                    }
                    for d in [info.reset_requests, info.reset_tokens].into_iter().flatten() {
                        prop_assert!(d <= MAX_RESET);
                    }
                }
                let wait = retry_after(&h);
                prop_assert!(wait.is_none_or(|d| d <= MAX_RETRY_AFTER));
                let body = br#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"content":[{"type":"text","text":"hi"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"input_tokens":1,"output_tokens":1},"error":{"message":"m","type":"t"}}"#;
                let mut errors = Vec::new();
                for p in [&OpenAi::new(Endpoint::Chat) as &dyn Provider, &Anthropic] {
                    match p.parse(status, &h, body) {
                        Ok(c) => errors.push((c.rate, None)),
                        Err(e) => errors.push((*e.rate, e.retry_after)),
                    }
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .start_paused(true)
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let limiter = if job_limits {
                        Limiter::new(Some(600), Some(100_000))
                    } else {
                        Limiter::new(None, None)
                    }
                    .refund_unused_tokens(true);
                    for (rate, wait) in errors.iter().chain([(openai, wait), (anthropic, wait)].iter()) {
                        let charge = tokio::time::timeout(
                            std::time::Duration::from_secs(3600),
                            limiter.acquire(500),
                        )
                        .await;
                        limiter.learn(rate);
                        if let Some(d) = wait {
                            limiter.cool_down(*d);
                        }
                        // Unmeetable is an answer too (a server limit below one request).
                        if let Ok(Ok(c)) = charge {
                            limiter.settle(c, 100);
                        }
                    }
                });
            }
        }
    }
}
