//! The allowed range of every numeric setting, in one place: the flags' value parsers
//! (clap) and the job file's validation both check against these, so `--timeout inf`,
//! `--set api.timeout_secs=1e30` and `timeout_secs = -1` in a job file get the same answer,
//! naming the setting and its range, before anything runs (exit 2).
//!
//! The ranges are wide (nobody needs a two-day timeout, a million retries, or a million
//! dollars on one job); what they exclude is what cannot work: NaN, infinities, negative
//! and zero waits, and values that would overflow a `Duration` or a money amount.

/// One numeric setting: its job-file key, its flag, and the range it must lie in.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The job-file key (`api.timeout_secs`), or a description when there is none.
    pub field: &'static str,
    /// The flag that sets it (`--timeout`), if any.
    pub flag: Option<&'static str>,
    pub min: f64,
    pub max: f64,
    /// What the number counts, for messages (`seconds`, `USD`, ``).
    pub unit: &'static str,
}

/// `api.timeout_secs` / `--timeout`: a whole request (or, streaming, the longest silence).
pub const TIMEOUT_SECS: Bound = Bound {
    field: "api.timeout_secs",
    flag: Some("--timeout"),
    min: 0.001,
    max: 86_400.0,
    unit: "seconds",
};

/// `api.connect_timeout_secs` / `--connect-timeout`.
pub const CONNECT_TIMEOUT_SECS: Bound = Bound {
    field: "api.connect_timeout_secs",
    flag: Some("--connect-timeout"),
    min: 0.001,
    max: 3_600.0,
    unit: "seconds",
};

/// `--poll-secs` (batch mode): 0 polls again at once.
pub const POLL_SECS: Bound = Bound {
    field: "the batch poll interval",
    flag: Some("--poll-secs"),
    min: 0.0,
    max: 86_400.0,
    unit: "seconds",
};

/// `budget.max_usd` / `--max-usd` (money is held in picodollars: about $18M at most).
pub const MAX_USD: Bound = Bound {
    field: "budget.max_usd",
    flag: Some("--max-usd"),
    min: 0.0,
    max: 1_000_000.0,
    unit: "USD",
};

/// `budget.max_usd_total` (the same cap as `budget.max_usd`, which `--max-usd` sets).
pub const MAX_USD_TOTAL: Bound = Bound {
    field: "budget.max_usd_total",
    flag: Some("--max-usd"),
    min: 0.0,
    max: 1_000_000.0,
    unit: "USD",
};

/// `budget.max_usd_per_run` / `--max-usd-per-run`.
pub const MAX_USD_PER_RUN: Bound = Bound {
    field: "budget.max_usd_per_run",
    flag: Some("--max-usd-per-run"),
    min: 0.0,
    max: 1_000_000.0,
    unit: "USD",
};

/// `model.temperature` / `--temperature`.
pub const TEMPERATURE: Bound = Bound {
    field: "model.temperature",
    flag: Some("--temperature"),
    min: 0.0,
    max: 2.0,
    unit: "",
};

/// `model.top_p`.
pub const TOP_P: Bound = Bound {
    field: "model.top_p",
    flag: None,
    min: 0.0,
    max: 1.0,
    unit: "",
};

/// `model.presence_penalty`.
pub const PRESENCE_PENALTY: Bound = Bound {
    field: "model.presence_penalty",
    flag: None,
    min: -2.0,
    max: 2.0,
    unit: "",
};

/// `model.frequency_penalty`.
pub const FREQUENCY_PENALTY: Bound = Bound {
    field: "model.frequency_penalty",
    flag: None,
    min: -2.0,
    max: 2.0,
    unit: "",
};

/// `limits.max_in_flight` / `--max-in-flight`.
pub const MAX_IN_FLIGHT: Bound = Bound {
    field: "limits.max_in_flight",
    flag: Some("--max-in-flight"),
    min: 1.0,
    max: 100_000.0,
    unit: "",
};

/// `cache.key_rpm`: requests per minute under one `prompt_cache_key` (0: no key).
pub const KEY_RPM: Bound = Bound {
    field: "cache.key_rpm",
    flag: None,
    min: 0.0,
    max: 100_000.0,
    unit: "",
};

/// `limits.max_retries` / `--max-retries`.
pub const MAX_RETRIES: Bound = Bound {
    field: "limits.max_retries",
    flag: Some("--max-retries"),
    min: 0.0,
    max: 1_000.0,
    unit: "",
};

/// `regenerate` / `--regenerate`: new answers a rejected row may get.
pub const JUDGE_TEMPERATURE: Bound = Bound {
    field: "judge.temperature",
    flag: None,
    min: 0.0,
    max: 2.0,
    unit: "",
};

pub const REGENERATE: Bound = Bound {
    field: "regenerate",
    flag: Some("--regenerate"),
    min: 0.0,
    max: 10.0,
    unit: "",
};

/// `estimate.assume_reject_rate` / `--assume-reject-rate`: a share of answers.
pub const REJECT_RATE: Bound = Bound {
    field: "estimate.assume_reject_rate",
    flag: Some("--assume-reject-rate"),
    min: 0.0,
    max: 1.0,
    unit: "",
};

/// `input.header_row`: a sheet row, as Excel numbers them (1 to 1,048,576).
pub const HEADER_ROW: Bound = Bound {
    field: "input.header_row",
    flag: None,
    min: 1.0,
    max: 1_048_576.0,
    unit: "",
};

/// `--mock-fail-rate` / `mock-server --fail-rate`: a fraction of requests.
pub const FAIL_RATE: Bound = Bound {
    field: "the mock's failure rate",
    flag: Some("--fail-rate"),
    min: 0.0,
    max: 1.0,
    unit: "",
};

/// `mock-server --token-factor`: how many times the tokens it counts the mock charges.
pub const TOKEN_FACTOR: Bound = Bound {
    field: "the mock's token factor",
    flag: Some("--token-factor"),
    min: 0.1,
    max: 10.0,
    unit: "",
};

/// `model.flex_fallback_after_secs` / `--flex-fallback-after`.
pub const FLEX_FALLBACK_AFTER_SECS: Bound = Bound {
    field: "model.flex_fallback_after_secs",
    flag: Some("--flex-fallback-after"),
    min: 0.0,
    max: 86_400.0,
    unit: "seconds",
};

/// `--flex-fallback-after` (value parser).
pub fn flex_fallback_after_secs(s: &str) -> Result<f64, String> {
    FLEX_FALLBACK_AFTER_SECS.parse(s)
}

/// `plan.deadline` / `--deadline`: how long the job may take, in seconds (1 second to 30
/// days).
pub const DEADLINE_SECS: Bound = Bound {
    field: "plan.deadline",
    flag: Some("--deadline"),
    min: 1.0,
    max: 30.0 * 86_400.0,
    unit: "seconds",
};

/// `--deadline` (value parser): a duration such as `6h`, `90m` or `2d`, checked against
/// [`DEADLINE_SECS`]; the text itself is kept (it goes into the job as `plan.deadline`).
pub fn deadline(s: &str) -> Result<String, String> {
    let secs = crate::time::parse_duration(s)?;
    DEADLINE_SECS.check(secs)?;
    Ok(s.trim().to_string())
}

/// `plan.batch_hours`: the typical time a batch takes, for the tier table (the Batch
/// API's completion window is 24 hours).
pub const BATCH_HOURS: Bound = Bound {
    field: "plan.batch_hours",
    flag: None,
    min: 0.01,
    max: 24.0,
    unit: "hours",
};

/// `plan.margin`: the share of the deadline kept in hand.
pub const DEADLINE_MARGIN: Bound = Bound {
    field: "plan.margin",
    flag: None,
    min: 0.0,
    max: 0.9,
    unit: "",
};

/// `plan.flex_slowdown`: how many times longer flex is assumed to take than standard.
pub const FLEX_SLOWDOWN: Bound = Bound {
    field: "plan.flex_slowdown",
    flag: None,
    min: 1.0,
    max: 100.0,
    unit: "",
};

/// `batch.max_requests` / `--batch-max-requests`: requests per batch input file (OpenAI
/// allows 50,000, the default; self-hosted servers have no such limit).
pub const BATCH_MAX_REQUESTS: Bound = Bound {
    field: "batch.max_requests",
    flag: Some("--batch-max-requests"),
    min: 1.0,
    max: 10_000_000.0,
    unit: "requests",
};

/// `batch.max_bytes`: bytes per batch input file (OpenAI allows 200 MB, the default).
pub const BATCH_MAX_BYTES: Bound = Bound {
    field: "batch.max_bytes",
    flag: None,
    min: 1_000.0,
    max: 10_000_000_000.0,
    unit: "bytes",
};

/// `batch.max_enqueued_tokens`: the provider's enqueued-token limit for the model.
pub const BATCH_MAX_ENQUEUED_TOKENS: Bound = Bound {
    field: "batch.max_enqueued_tokens",
    flag: None,
    min: 1.0,
    max: 1e13,
    unit: "tokens",
};

impl Bound {
    /// True when `v` is a finite number inside the range.
    pub fn contains(&self, v: f64) -> bool {
        v.is_finite() && v >= self.min && v <= self.max
    }

    /// `v`, or the reason it is refused (without the setting's name).
    pub fn check(&self, v: f64) -> Result<f64, String> {
        if self.contains(v) {
            return Ok(v);
        }
        let unit = if self.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", self.unit)
        };
        Err(format!(
            "{v} is outside the allowed range {}..={}{unit}",
            self.min, self.max
        ))
    }

    /// `v` as a job-file value: the message names the key (and the flag that sets it).
    pub fn check_field(&self, v: f64) -> Result<f64, String> {
        self.check(v).map_err(|why| match self.flag {
            Some(flag) => format!("{} ({flag}): {why}", self.field),
            None => format!("{}: {why}", self.field),
        })
    }

    /// Parses a flag's text (clap's `value_parser`; clap names the flag in its message).
    pub fn parse(&self, s: &str) -> Result<f64, String> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a number"))?;
        self.check(v)
    }
}

/// `--timeout` (value parser).
pub fn timeout_secs(s: &str) -> Result<f64, String> {
    TIMEOUT_SECS.parse(s)
}

/// `--connect-timeout` (value parser).
pub fn connect_timeout_secs(s: &str) -> Result<f64, String> {
    CONNECT_TIMEOUT_SECS.parse(s)
}

/// `--poll-secs` (value parser).
pub fn poll_secs(s: &str) -> Result<f64, String> {
    POLL_SECS.parse(s)
}

/// `--max-usd` (value parser).
pub fn max_usd(s: &str) -> Result<f64, String> {
    MAX_USD.parse(s)
}

/// `--max-usd-per-run` (value parser).
pub fn max_usd_per_run(s: &str) -> Result<f64, String> {
    MAX_USD_PER_RUN.parse(s)
}

/// `--temperature` (value parser).
pub fn temperature(s: &str) -> Result<f64, String> {
    TEMPERATURE.parse(s)
}

/// `--mock-fail-rate`, `--fail-rate` (value parser).
pub fn fail_rate(s: &str) -> Result<f64, String> {
    FAIL_RATE.parse(s)
}

/// `--token-factor` (value parser).
pub fn token_factor(s: &str) -> Result<f64, String> {
    TOKEN_FACTOR.parse(s)
}

/// `--batch-max-requests` (value parser): a whole number in range.
pub fn batch_max_requests(s: &str) -> Result<u64, String> {
    let v: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    BATCH_MAX_REQUESTS.check(v as f64).map(|_| v)
}

/// `run --limit`: the first N rows a run would send.
pub const PREVIEW_LIMIT: Bound = Bound {
    field: "the rows a preview sends",
    flag: Some("--limit"),
    min: 1.0,
    max: 1e15,
    unit: "rows",
};

/// `run --sample`: the sample is chosen in memory (N entries), so it is kept to a preview's
/// size.
pub const PREVIEW_SAMPLE: Bound = Bound {
    field: "the rows a preview samples",
    flag: Some("--sample"),
    min: 1.0,
    max: 100_000.0,
    unit: "rows",
};

/// A whole number of rows in `bound`'s range (value parser).
fn whole_rows(bound: &Bound, s: &str) -> Result<u64, String> {
    let v: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    bound.check(v as f64).map(|_| v)
}

/// `--limit` (value parser).
pub fn preview_limit(s: &str) -> Result<u64, String> {
    whole_rows(&PREVIEW_LIMIT, s)
}

/// `--sample` (value parser).
pub fn preview_sample(s: &str) -> Result<u64, String> {
    whole_rows(&PREVIEW_SAMPLE, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_that_cannot_work_gets_through() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e30, -1.0, 0.0] {
            assert!(TIMEOUT_SECS.check(bad).is_err(), "{bad}");
            assert!(CONNECT_TIMEOUT_SECS.check(bad).is_err(), "{bad}");
        }
        assert_eq!(TIMEOUT_SECS.check(600.0), Ok(600.0));
        assert_eq!(POLL_SECS.check(0.0), Ok(0.0));
        assert!(POLL_SECS.parse("1e30").is_err());
        assert!(POLL_SECS.parse("inf").is_err());
        assert!(MAX_USD.parse("NaN").is_err());
        assert!(timeout_secs("soon").unwrap_err().contains("not a number"));
        assert_eq!(batch_max_requests("100"), Ok(100));
        assert!(batch_max_requests("0").is_err());
        assert_eq!(batch_max_requests("50001"), Ok(50_001));
        assert!(batch_max_requests("10000001").is_err());
        assert_eq!(preview_limit("5"), Ok(5));
        assert!(preview_limit("0")
            .unwrap_err()
            .contains("1..=1000000000000000 rows"));
        assert!(preview_sample("-3")
            .unwrap_err()
            .contains("not a whole number"));
        assert!(preview_sample("100001").is_err());
        let e = TIMEOUT_SECS.check_field(1e30).unwrap_err();
        assert!(
            e.contains("api.timeout_secs (--timeout)") && e.contains("0.001..=86400 seconds"),
            "{e}"
        );
    }
}
