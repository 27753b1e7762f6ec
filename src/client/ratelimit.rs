//! Reading what a server says about its limits: `x-ratelimit-*`, `retry-after(-ms)`.

use reqwest::header::HeaderMap;
use std::time::Duration;

/// The most a server may ask us to wait before we stop honouring it and fail the attempt
/// instead (the OpenAI SDKs use the same bound).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

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
    let v: f64 = header(h, name)?.parse().ok()?;
    // Azure sends -1/0 for "not applicable": treat non-positive limits as unknown.
    (v.is_finite() && v >= 0.0).then_some(v as u64)
}

fn dur(h: &HeaderMap, name: &str) -> Option<Duration> {
    parse_go_duration(header(h, name)?)
}

/// Parses the Go-style durations OpenAI sends: `1s`, `6m0s`, `20ms`, `2m59.56s`, `1h2m`;
/// a bare number is seconds.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
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
    Some(Duration::from_secs_f64(total))
}

/// The server's requested wait: `retry-after-ms` (preferred), else `retry-after` in seconds.
/// HTTP-date forms and waits above [`MAX_RETRY_AFTER`] are ignored (the caller then uses
/// its own backoff).
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = header(h, "retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms > 0.0 {
            let d = Duration::from_secs_f64(ms / 1000.0);
            return (d <= MAX_RETRY_AFTER).then_some(d);
        }
    }
    let secs = header(h, "retry-after")?.parse::<f64>().ok()?;
    if secs.is_finite() && secs > 0.0 {
        let d = Duration::from_secs_f64(secs);
        return (d <= MAX_RETRY_AFTER).then_some(d);
    }
    None
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
        assert_eq!(retry_after(&h), None);
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
