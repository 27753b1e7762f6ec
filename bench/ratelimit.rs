//! Rate-limit and overhead benchmarks: the release binary against `promptmill mock-server`
//! on 127.0.0.1, one table row per case (issue 5; cases 6 and 7 from issue 13).
//!
//! ```text
//! cargo bench --bench ratelimit                  # every case, full size
//! cargo bench --bench ratelimit -- --quick       # a fifth of the rows: a quick check
//! cargo bench --bench ratelimit -- case1 case4   # a subset
//! ```
//!
//! It builds `target/release/promptmill` first (`cargo build --release`), then runs each
//! case in a temp dir: a mock-server child, a `promptmill run --json` child, CPU time from
//! the child's `/proc/PID/stat` (read while it is a zombie, so nothing is missed) and peak
//! RSS from `VmHWM` in `/proc/PID/status`, sampled while it runs. Linux only.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

mod procs;

use procs::{build, cpu_secs, start_mock, watch, write_rows};

struct Case {
    name: &'static str,
    what: &'static str,
    /// What the mock enforces (requests/min), if anything.
    mock_rpm: Option<u32>,
    /// What the job is told.
    job_rpm: Option<u32>,
    latency_ms: u64,
    rows: usize,
    quick_rows: usize,
    /// What the mock enforces (tokens/min), if anything.
    mock_tpm: Option<u32>,
    /// More mock flags (faults, token factor).
    mock_extra: &'static [&'static str],
    /// The TPM limit's charge per token the mock counts (`--token-factor`).
    token_factor: f64,
    /// The job's `model.max_tokens`.
    max_tokens: u32,
    /// The job's `limits.max_in_flight`.
    in_flight: u32,
    /// The floor ("min s") is the same job run first without `--first-429`.
    baseline: bool,
}

/// The usual case: the fields a case does not state.
const BASE: Case = Case {
    name: "",
    what: "",
    mock_rpm: None,
    job_rpm: None,
    latency_ms: 0,
    rows: 0,
    quick_rows: 0,
    mock_tpm: None,
    mock_extra: &[],
    token_factor: 1.0,
    max_tokens: 20,
    in_flight: 64,
    baseline: false,
};

const CASES: &[Case] = &[
    Case {
        name: "case1",
        what: "known limits",
        mock_rpm: Some(3000),
        job_rpm: Some(3000),
        latency_ms: 200,
        rows: 3000,
        quick_rows: 600,
        ..BASE
    },
    Case {
        name: "case2",
        what: "told 2x the limit",
        mock_rpm: Some(3000),
        job_rpm: Some(6000),
        latency_ms: 200,
        rows: 3000,
        quick_rows: 600,
        ..BASE
    },
    Case {
        name: "case3",
        what: "unknown limits",
        mock_rpm: Some(3000),
        job_rpm: None,
        latency_ms: 200,
        rows: 3000,
        quick_rows: 600,
        ..BASE
    },
    Case {
        name: "case4",
        what: "overhead",
        mock_rpm: None,
        job_rpm: None,
        latency_ms: 0,
        rows: 50_000,
        quick_rows: 10_000,
        ..BASE
    },
    Case {
        name: "case5a",
        what: "memory, 100k rows",
        mock_rpm: None,
        job_rpm: None,
        latency_ms: 0,
        rows: 100_000,
        quick_rows: 10_000,
        ..BASE
    },
    Case {
        name: "case5b",
        what: "memory, 1M rows",
        mock_rpm: None,
        job_rpm: None,
        latency_ms: 0,
        rows: 1_000_000,
        quick_rows: 100_000,
        ..BASE
    },
    // Issue 13, finding 6: the server's token limit charges 10% more per request than
    // tiktoken counts (~400-token requests against 60,000 TPM).
    Case {
        name: "case6",
        what: "server counts 10% more tokens",
        mock_tpm: Some(60_000),
        mock_extra: &["--token-factor", "1.1"],
        token_factor: 1.1,
        max_tokens: 385,
        latency_ms: 200,
        rows: 315,
        quick_rows: 80,
        ..BASE
    },
    // Issue 13, finding 7: one 429 on the first request from a server that sends no
    // rate-limit headers (and has no limit): the floor is the same run without that 429.
    Case {
        name: "case7",
        what: "one header-less 429 first",
        mock_extra: &["--no-rate-headers", "--first-429", "1"],
        latency_ms: 200,
        in_flight: 8,
        rows: 400,
        quick_rows: 80,
        baseline: true,
        ..BASE
    },
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `cargo bench` passes `--bench`; everything else that is not a flag picks cases
    // (`case5` picks both memory rows).
    let wanted: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let bin = build();
    println!(
        "| case | requests | wall s | min s | utilization | 429s | retries | failed | \
         CPU s/1k req (promptmill + mock) | peak RSS MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for case in CASES {
        if !wanted.is_empty() && !wanted.iter().any(|w| case.name.starts_with(w)) {
            continue;
        }
        let rows = if quick { case.quick_rows } else { case.rows };
        match run_case(&bin, case, rows) {
            Ok(r) => println!("{}", r.row(case)),
            Err(e) => println!("| {} {} | error: {e} |", case.name, case.what),
        }
        let _ = std::io::stdout().flush();
    }
}

struct Outcome {
    rows: usize,
    requests: u64,
    wall: f64,
    min: Option<f64>,
    limit_per_sec: Option<f64>,
    rate_limited: u64,
    retries: u64,
    failed: u64,
    cpu: f64,
    mock_cpu: f64,
    peak_rss_kb: u64,
}

impl Outcome {
    fn row(&self, c: &Case) -> String {
        let (min, util) = match (self.min, self.limit_per_sec) {
            (Some(m), Some(l)) => (
                format!("{m:.1}"),
                format!(
                    "{:.3} ({:.2}x min)",
                    self.rows as f64 / self.wall / l,
                    self.wall / m
                ),
            ),
            _ => (
                "-".into(),
                format!("{:.0} req/s", self.rows as f64 / self.wall),
            ),
        };
        let per_k = |cpu: f64| cpu * 1000.0 / self.requests.max(1) as f64;
        format!(
            "| {} {} | {} | {:.1} | {min} | {util} | {} | {} | {} | {:.3} + {:.3} | {:.1} |",
            c.name,
            c.what,
            self.requests,
            self.wall,
            self.rate_limited,
            self.retries,
            self.failed,
            per_k(self.cpu),
            per_k(self.mock_cpu),
            self.peak_rss_kb as f64 / 1024.0,
        )
    }
}

fn run_case(bin: &Path, c: &Case, rows: usize) -> Result<Outcome, String> {
    if !c.baseline {
        return run_with(bin, c, rows, c.mock_extra);
    }
    // The floor is the same job against the same server without the fault.
    let plain: Vec<&str> = c
        .mock_extra
        .chunks(2)
        .filter(|pair| pair.first() != Some(&"--first-429"))
        .flatten()
        .copied()
        .collect();
    let base = run_with(bin, c, rows, &plain)?;
    let mut o = run_with(bin, c, rows, c.mock_extra)?;
    o.min = Some(base.wall);
    o.limit_per_sec = Some(rows as f64 / base.wall);
    Ok(o)
}

fn run_with(bin: &Path, c: &Case, rows: usize, mock_extra: &[&str]) -> Result<Outcome, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    write_rows(&dir.path().join("rows.csv"), rows)?;
    let mut mock_args: Vec<String> = Vec::new();
    if let Some(r) = c.mock_rpm {
        mock_args.extend(["--rpm".into(), r.to_string()]);
    }
    if let Some(t) = c.mock_tpm {
        mock_args.extend(["--tpm".into(), t.to_string()]);
    }
    mock_args.extend(mock_extra.iter().map(|a| a.to_string()));
    let (mut mock, base_url) = start_mock(bin, c.latency_ms, &mock_args)?;
    let limits = c
        .job_rpm
        .map(|r| format!("requests_per_minute = {r}"))
        .unwrap_or_default();
    let job = format!(
        "[input]\npath = \"rows.csv\"\nid = \"id\"\n\n[prompt]\nuser = \"Describe {{{{ name }}}} \
         in {{{{ color }}}}.\"\n\n[model]\nname = \"gpt-4o-mini\"\nmax_tokens = {}\n\n[api]\n\
         base_url = \"{base_url}\"\n\n[limits]\nmax_in_flight = {}\n{limits}\n\n[output]\n\
         path = \"out.jsonl\"\n",
        c.max_tokens, c.in_flight
    );
    std::fs::write(dir.path().join("job.toml"), job).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let child = Command::new(bin)
        .args(["run", "job.toml", "--json", "--quiet"])
        .current_dir(dir.path())
        .env("OPENAI_API_KEY", "sk-bench-0000")
        .env_remove("OPENAI_BASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start promptmill: {e}"))?;
    let (status, cpu, peak, stdout, stderr) = watch(child)?;
    let wall = start.elapsed().as_secs_f64();
    let mock_cpu = cpu_secs(mock.id()).unwrap_or(0.0);
    let _ = mock.kill();
    let _ = mock.wait();
    let summary: serde_json::Value = serde_json::from_str(&stdout).map_err(|e| {
        format!("promptmill exited {status:?}, no summary on stdout ({e}): {stderr}")
    })?;
    let n = |k: &str| summary[k].as_u64().unwrap_or(0);
    let latency = c.latency_ms as f64 / 1000.0;
    // Requests per second the server allows, and its one-second slice in requests.
    let limit = if let Some(r) = c.mock_rpm {
        Some((f64::from(r) / 60.0, (f64::from(r) / 60.0).floor()))
    } else if let Some(t) = c.mock_tpm {
        // What one request costs the server: prompt (from the summary) + max_tokens, times
        // its factor.
        let prompt = n("prompt_tokens") as f64 / rows.max(1) as f64;
        let cost = ((prompt + f64::from(c.max_tokens)) * c.token_factor).ceil();
        let slice = (f64::from(t) / 60.0).floor();
        Some((f64::from(t) / 60.0 / cost, (slice / cost).floor()))
    } else {
        None
    };
    let limit_per_sec = limit.map(|(l, _)| l);
    // The server's one-second slice goes at once, the rest at the limit, plus one answer.
    let min = limit.map(|(l, burst)| (rows as f64 - burst).max(0.0) / l + latency);
    Ok(Outcome {
        rows,
        requests: n("requests").max(n("succeeded") + n("failed")),
        wall,
        min,
        limit_per_sec,
        rate_limited: n("rate_limited"),
        retries: n("retries"),
        failed: n("failed"),
        cpu,
        mock_cpu,
        peak_rss_kb: peak,
    })
}
