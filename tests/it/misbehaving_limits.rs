//! Servers whose limits misbehave (issue 13, findings 6–9): an endpoint that is down or
//! fails every request, limits that can never be met, a server that counts tokens
//! differently, and a header-less 429 on the first request. The real binary against the
//! mock API (or a closed port) on 127.0.0.1.

use crate::common;

use std::io::Read;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `promptmill ARGS` in `ws` with the test key and `env`; a run that has not ended
/// after `guard` is killed and the test fails (a safety net against a hung job, far above
/// what the run needs: timing itself is tested on the paused clock).
fn run_guarded(ws: &Workspace, env: &[(&str, &str)], args: &[&str], guard: Duration) -> Output {
    let mut child = ws
        .command()
        .env(OPENAI_KEY.0, OPENAI_KEY.1)
        .envs(env.iter().copied())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promptmill");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > guard {
            let _ = child.kill();
            let _ = child.wait();
            let e = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
            panic!("promptmill still running after {guard:?}: a hung job\n{e}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

/// The lines of stderr that start with `error:`.
fn error_lines(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_refused_port_stops_the_job_after_a_few_attempts_and_the_same_command_resumes() {
    let port = closed_port();
    let base = format!("http://127.0.0.1:{port}/v1");
    let (ws, job) = Workspace::with_job(200, &base, "");
    let args = ["run", job.as_str(), "--quiet", "--max-retries", "3"];
    let out = run_guarded(&ws, &[], &args, Duration::from_secs(120));
    assert_exit(&out, 3);
    let errors = error_lines(&out);
    assert_eq!(
        errors.len(),
        1,
        "one line naming the last error:\n{}",
        stderr(&out)
    );
    assert!(errors[0].contains("endpoint looks down"), "{}", errors[0]);
    assert!(errors[0].contains("could not connect"), "{}", errors[0]);
    assert!(errors[0].contains("stop_after_errors = 8"), "{}", errors[0]);
    let s = ws.summary();
    assert_eq!(s["status"], "aborted", "{s}");
    assert_eq!(s["failed"], 0, "no row is failed for an outage: {s}");
    assert_eq!(s["pending"], 200, "{s}");
    let attempts = s["requests"].as_u64().unwrap_or(u64::MAX);
    // Eight failures stop it; the requests already in flight (32) may still fail.
    assert!(
        attempts <= 8 + 32,
        "{attempts} attempts against a closed port: {s}"
    );
    // Attempts dropped in flight when the job stopped are counted as sent, not failed.
    let failed = s["connection_errors"].as_u64().unwrap_or(0);
    assert!((8..=attempts).contains(&failed), "{s}");
    assert!(
        stderr(&out).contains("connection errors"),
        "{}",
        stderr(&out)
    );

    // The endpoint comes up on that port: the same command finishes the job.
    let mut mock = promptmill()
        .args(["mock-server", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mock-server");
    let mut banner = String::new();
    let stdout = mock.stdout.take().expect("mock stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut banner)
        .expect("read mock banner");
    let out = run_guarded(&ws, &[], &args, Duration::from_secs(120));
    let stats = http(&format!("127.0.0.1:{port}"), "GET", "/_mock/stats");
    let _ = mock.kill();
    let _ = mock.wait();
    assert!(banner.contains(&format!(":{port}/v1")), "{banner:?}");
    assert_exit(&out, 0);
    assert_eq!(ws.summary()["succeeded"], 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats");
    assert_eq!(stats["requests"], 200, "{stats}");
}

#[test]
fn a_server_that_fails_every_request_the_same_way_stops_and_says_so() {
    // Like llama-cpp-python answering 500 to a response_format it does not support.
    let mock = Mock::start(&["--fail-rate", "1"]);
    let (ws, job) = Workspace::with_job(5, &mock.base_url, "stop_after_errors = 4");
    let out = run_guarded(
        &ws,
        &[],
        &["run", &job, "--quiet", "--max-retries", "5"],
        Duration::from_secs(120),
    );
    assert_exit(&out, 3);
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "{}", stderr(&out));
    assert!(
        errors[0].contains("does not look transient"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("HTTP 500"), "{}", errors[0]);
    let s = ws.summary();
    assert_eq!(
        (s["pending"].as_u64(), s["failed"].as_u64()),
        (Some(5), Some(0)),
        "{s}"
    );
    // Four failures in a row stop it (the other rows' attempts in flight may land too).
    assert!(mock.stat("requests") <= 4 + 5, "{}", mock.stats());
    let server_errors = s["server_errors"].as_u64().unwrap_or(0);
    // Answers that land after the stop are dropped with their tasks, so this can be fewer
    // than the mock's count, never fewer than the four that stopped it.
    assert!((4..=4 + 5).contains(&server_errors), "{s}");
}

#[test]
fn after_a_success_errors_are_retried_as_before() {
    // One row succeeds first; the others fail once each and then succeed: no stop.
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let names: Vec<String> = (1..=6)
        .map(|i| match i {
            1 => "fine".to_string(),
            i => format!("flaky {i} [[mock:fail-first:1]]"),
        })
        .collect();
    ws.named_rows(&names, "red");
    let job = ws.job(&mock.base_url, "stop_after_errors = 2");
    let out = run_guarded(
        &ws,
        &[],
        &["run", &job, "--quiet", "--max-in-flight", "1"],
        Duration::from_secs(120),
    );
    assert_exit(&out, 0);
    let s = ws.summary();
    assert_eq!(s["succeeded"], 6, "{s}");
    assert_eq!(s["server_errors"], 5, "{s}");
    assert_eq!(s["retries"], 5, "{s}");
}

#[test]
fn a_token_limit_below_one_request_ends_with_the_header_named() {
    // The server advertises 10 tokens per minute; every request needs more.
    let mock = Mock::start(&["--tpm", "10"]);
    let (ws, job) = Workspace::with_job(5, &mock.base_url, "");
    let out = run_guarded(
        &ws,
        &[],
        &["run", &job, "--quiet"],
        Duration::from_secs(120),
    );
    assert_exit(&out, 3);
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "{}", stderr(&out));
    assert!(
        errors[0].contains("x-ratelimit-limit-tokens"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("10 tokens per minute"), "{}", errors[0]);
    assert_eq!(ws.summary()["pending"], 5);
    // Only the first request (which learned the limit) went out.
    assert_eq!(mock.stat("requests"), 1, "{}", mock.stats());
}

#[test]
fn a_server_that_refuses_everything_with_429s_is_given_up_after_the_window() {
    let mock = Mock::start(&["--first-429", "1000000", "--no-rate-headers"]);
    let (ws, job) = Workspace::with_job(10, &mock.base_url, "");
    let out = run_guarded(
        &ws,
        &[],
        &["run", &job, "--quiet", "--stop-after-refused-secs", "3"],
        Duration::from_secs(120),
    );
    assert_exit(&out, 3);
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "{}", stderr(&out));
    assert!(
        errors[0].contains("429 (rate limited) for 3 s"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("stop_after_refused_secs = 3"),
        "{}",
        errors[0]
    );
    let s = ws.summary();
    assert_eq!(s["pending"], 10, "{s}");
    assert_eq!(s["rate_limited"], s["requests"], "{s}");
}

#[test]
fn one_headerless_429_on_the_first_request_sets_no_crawling_guess() {
    // Before: the refused probe made the limiter guess 45 requests/min, and 20 rows took
    // tens of seconds at a server that has no limit.
    let mock = Mock::start(&[
        "--first-429",
        "1",
        "--no-rate-headers",
        "--latency-ms",
        "50",
    ]);
    let (ws, job) = Workspace::with_job(20, &mock.base_url, "");
    let out = run_guarded(
        &ws,
        &[("RUST_LOG", "info")],
        &["run", &job, "--quiet", "--max-in-flight", "4"],
        Duration::from_secs(300),
    );
    assert_exit(&out, 0);
    assert_eq!(ws.summary()["succeeded"], 20);
    assert_eq!(mock.stat("rate_limited"), 1);
    let err = stderr(&out);
    assert!(
        !err.contains("guessing"),
        "a guess from one refused request:\n{err}"
    );
}

#[test]
fn a_server_that_charges_more_tokens_than_we_count_is_learned() {
    // The mock's token limit charges 10% more than the tokens it (and we) count.
    // 400-token requests (a short prompt + 370 max_tokens) at 240,000 TPM: ~9 per second.
    let mock = Mock::start(&["--tpm", "240000", "--token-factor", "1.1"]);
    let ws = Workspace::new();
    ws.csv_rows(80);
    let job = ws.write_job(
        "job.toml",
        &JobFile {
            model: "name = \"gpt-4o-mini\"\nmax_tokens = 370",
            api: &format!("base_url = \"{}\"", mock.base_url),
            limits: "max_in_flight = 32",
            ..JobFile::default()
        },
    );
    let out = run_guarded(
        &ws,
        &[("RUST_LOG", "promptmill=debug")],
        &["run", &job, "--quiet"],
        Duration::from_secs(300),
    );
    assert_exit(&out, 0);
    assert_eq!(ws.summary()["succeeded"], 80);
    let limited = mock.stat("rate_limited");
    assert!(
        limited <= 1,
        "{limited} 429s: the server's cost was not learned"
    );
    let err = stderr(&out);
    assert!(
        err.contains("the server charges 1.1"),
        "no ratio near 1.1 learned:\n{}",
        err.lines()
            .filter(|l| l.contains("charges"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
