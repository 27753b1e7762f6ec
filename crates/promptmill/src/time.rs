//! Dates and times, in one place: RFC 3339 as the APIs send it, and UTC as people read it.
//! The calendar arithmetic is jiff's, not ours.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::Timestamp;

/// Parses an RFC 3339 time such as `2026-11-25T19:30:05Z` or `…05.123+01:00`. Anything else,
/// or a time before 1970, is `None`.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let ts: Timestamp = s.trim().parse().ok()?;
    let nanos = u128::try_from(ts.as_nanosecond()).ok()?;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    // The remainder of a division by 10^9 fits in u32.
    let sub = (nanos % 1_000_000_000) as u32;
    UNIX_EPOCH.checked_add(Duration::new(secs, sub))
}

/// `t` in UTC as RFC 3339 with whole seconds, a fraction rounding up (so a reset time
/// sent to a client is never earlier than the real one).
pub fn rfc3339_ceil(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    timestamp(secs).to_string()
}

/// Unix seconds as `YYYY-MM-DD HH:MM` UTC.
pub fn utc_minutes(secs: u64) -> String {
    timestamp(secs).strftime("%Y-%m-%d %H:%M").to_string()
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc_seconds(secs: u64) -> String {
    timestamp(secs).strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// Today's date in UTC, `YYYY-MM-DD`.
pub fn today_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    timestamp(secs).strftime("%Y-%m-%d").to_string()
}

/// Parses a `YYYY-MM-DD` date.
pub fn parse_date(s: &str) -> Option<jiff::civil::Date> {
    s.trim().parse().ok()
}

/// Whole days from `from` to `to` (`YYYY-MM-DD` each; negative if `to` is earlier), or
/// `None` if either is not a date.
pub fn days_between(from: &str, to: &str) -> Option<i64> {
    let (a, b) = (parse_date(from)?, parse_date(to)?);
    let span = a.until((jiff::Unit::Day, b)).ok()?;
    Some(i64::from(span.get_days()))
}

/// Parses a duration such as `6h`, `90m`, `2d`, `1h30m` or `45s` (jiff's friendly format; a
/// day is 24 hours) into seconds. Months and years (not fixed lengths) and anything not
/// above zero are refused, with the reason.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let span: jiff::Span = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 6h, 90m, 2d, 1h30m)"))?;
    let total = jiff::SpanTotal::from(jiff::Unit::Second).days_are_24_hours();
    let secs = span
        .total(total)
        .map_err(|_| format!("'{s}': give the duration in days, hours, minutes or seconds"))?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("'{s}' must be longer than zero"));
    }
    Ok(secs)
}

/// Unix seconds as a timestamp, clamped to the range jiff can represent.
fn timestamp(secs: u64) -> Timestamp {
    let max = Timestamp::MAX.as_second();
    Timestamp::from_second(i64::try_from(secs).unwrap_or(max).min(max)).unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_between_dates() {
        assert_eq!(days_between("2026-11-20", "2026-12-01"), Some(11));
        assert_eq!(days_between("2026-12-01", "2026-11-20"), Some(-11));
        assert_eq!(days_between("2024-02-28", "2024-03-01"), Some(2));
        assert_eq!(days_between("2026-13-01", "2026-12-01"), None);
        assert_eq!(days_between("soon", "2026-12-01"), None);
        assert_eq!(today_utc().len(), 10);
    }

    #[test]
    fn rfc3339_parses_offsets_and_fractions() {
        let at = |s| {
            parse_rfc3339(s)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64())
        };
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(at("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(at("2026-11-25T20:30:02.5+01:00"), Some(1_795_635_002.5));
        for bad in [
            "yesterday",
            "",
            "1969-12-31T23:59:59Z",
            "2026-11-25T19:30:00",
            "+1é00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        let t = UNIX_EPOCH + Duration::from_secs(951_868_800 + 3661);
        assert_eq!(rfc3339_ceil(t), "2000-03-01T01:01:01Z");
        assert_eq!(parse_rfc3339(&rfc3339_ceil(t)), Some(t));
        let later = t + Duration::from_millis(1);
        assert_eq!(rfc3339_ceil(later), "2000-03-01T01:01:02Z");
        assert_eq!(utc_minutes(0), "1970-01-01 00:00");
        assert_eq!(utc_seconds(1_764_100_005), "2025-11-25 19:46:45");
        assert_eq!(utc_minutes(1_764_100_000), "2025-11-25 19:46");
        assert_eq!(utc_minutes(951_782_400), "2000-02-29 00:00");
        // Far-future values are clamped, never a panic.
        assert!(utc_minutes(u64::MAX).starts_with("9999-"));
    }
}
