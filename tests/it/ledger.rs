//! The ledger and its caps, end to end: real runs of the binary against `promptmill
//! mock-server` (a separate process) or a loopback server that bills every request it
//! started, as a real provider does, so that runs killed with real signals are paid for.

use crate::common;
#[allow(dead_code)] // only part of it is used here
use crate::common::fault_server;

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fault_server::{FaultServer, Reply};
use serde_json::json;

/// The usage of every answer of the billing server, and what it costs at gpt-4o-mini's
/// prices in the built-in table ($0.15 and $0.60 per million tokens).
const PROMPT_TOKENS: u64 = 20;
const COMPLETION_TOKENS: u64 = 15;
const ANSWER_USD: f64 = PROMPT_TOKENS as f64 * 0.15e-6 + COMPLETION_TOKENS as f64 * 0.6e-6;

/// Waits until `seen()` reaches `n` (requests received, so in flight); panics if the run
/// ends first. The deadline only keeps a broken build from hanging the suite.
fn wait_for_requests(seen: impl Fn() -> u64, child: &mut Child, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen() < n {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("run ended ({st}) before the server saw {n} requests");
        }
        assert!(
            Instant::now() < deadline,
            "the server never saw {n} requests"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn five_sigkills_under_a_cap_never_spend_more_than_the_cap() {
    const IN_FLIGHT: u64 = 8;
    // A provider that bills every request it started, whether or not the client is still
    // there to read the answer (the built-in mock drops an answer whose client is gone, so
    // it would hide what a kill costs). Slow answers: whenever a run is killed, a full set
    // of requests is in flight, and they are billed after the run is gone.
    let answered = Arc::new(AtomicU64::new(0));
    let server = {
        let answered = answered.clone();
        FaultServer::start(move |_, _| {
            std::thread::sleep(Duration::from_millis(300));
            answered.fetch_add(1, Ordering::SeqCst);
            let usage =
                json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS});
            Reply::chat("A short answer.", "stop", Some(usage))
        })
    };
    let billed = || answered.load(Ordering::SeqCst) as f64 * ANSWER_USD;
    let (ws, job) = Workspace::with_job(600, &server.base_url(), "");
    let cap = 0.004;
    let cap_s = cap.to_string();
    let in_flight = IN_FLIGHT.to_string();
    let args = [
        "run",
        &job,
        "--quiet",
        "--max-usd",
        &cap_s,
        "--max-in-flight",
        &in_flight,
    ];
    for _ in 0..5 {
        let seen = server.requests();
        let mut child = ws.spawn(&args, Stdio::null());
        wait_for_requests(|| server.requests(), &mut child, seen + IN_FLIGHT);
        child.kill().unwrap(); // SIGKILL: no chance to settle anything
        assert_eq!(child.wait().unwrap().code(), None, "killed by a signal");
    }
    // The reservations of the killed runs' requests are in the file beside the journal.
    let reserved = ws.path("out/result.journal.jsonl.reserved").exists();

    // The last run goes until the cap stops it.
    let out = ws.run(&args);
    // Wait for the server to finish what is still running (bounded: it serves nothing new).
    let deadline = Instant::now() + Duration::from_secs(30);
    while (answered.load(Ordering::SeqCst)) < server.requests() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every answer the server sent was paid for, read or not: all of it stays within the
    // cap.
    let paid = billed();
    assert!(paid <= cap + 1e-12, "paid {paid} over the cap {cap}");
    assert!(paid > cap / 2.0, "stopped far too early: {paid} of {cap}");
    assert!(reserved, "no reservations were journaled");
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("killed with requests in flight"),
        "{}",
        text(&out)
    );
    let s = ws.summary();
    assert_eq!(s["status"], "budget", "{s}");
    assert!(s["pending"].as_u64().unwrap() > 0, "{s}");
    let counted = s["spent_total_usd"].as_f64().unwrap();
    assert!(
        counted <= cap + 1e-12,
        "the ledger counted {counted} of {cap}"
    );
    assert!(
        counted >= paid - 1e-12,
        "the ledger counted {counted}, {paid} was paid"
    );
}

#[test]
fn mock_spend_never_counts_against_a_real_cap() {
    let (ws, job) = Workspace::with_job(60, "http://127.0.0.1:9/v1", "");
    // A run on the built-in mock: every row answered, and paid in mock money.
    let out = ws.run(&["run", &job, "--mock", "--quiet"]);
    assert_exit(&out, 0);
    let mock_cost = ws.summary()["cost_this_run_usd"].as_f64().unwrap();
    assert!(mock_cost > 0.0);

    // A real endpoint (from promptmill's view) with a cap that the same job fits under, but
    // not together with what the mock run cost.
    let api = Mock::start(&[]);
    let cap = (1.5 * mock_cost).to_string();
    let url = format!("api.base_url={}", api.base_url);
    let out = ws.run(&["run", &job, "--quiet", "--set", &url, "--max-usd", &cap]);
    assert_exit(&out, 0);
    let s = ws.summary();
    assert_eq!(s["status"], "completed", "{s}");
    // Every row was sent to the real endpoint: no mock answer is shown as a real one.
    assert_eq!(api.stat("ok"), 60, "{}", api.stats());
    assert_eq!(s["succeeded"], 60, "{s}");
    let this_run = s["cost_this_run_usd"].as_f64().unwrap();
    let spent = s["spent_total_usd"].as_f64().unwrap();
    assert!(
        (spent - this_run).abs() < 1e-12,
        "only real spend counts: {spent} vs {this_run} (mock {mock_cost})"
    );

    // And the mock keeps its own ledger: a mock run sees only mock spend.
    let out = ws.run(&["run", &job, "--mock", "--quiet"]);
    assert_exit(&out, 0);
    let s = ws.summary();
    let again = s["cost_this_run_usd"].as_f64().unwrap();
    let mock_total = s["spent_total_usd"].as_f64().unwrap();
    assert!((mock_total - (mock_cost + again)).abs() < 1e-12, "{s}");
}

#[test]
fn a_per_run_cap_stops_each_run_and_a_total_cap_stops_for_good() {
    let api = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(200, &api.base_url, "");
    let per_run = 0.0004;
    let per_run_s = per_run.to_string();
    let mut spent_runs = Vec::new();
    let mut succeeded = 0;
    for _ in 0..2 {
        let out = ws.run(&["run", &job, "--quiet", "--max-usd-per-run", &per_run_s]);
        assert_exit(&out, 3);
        assert!(
            stderr(&out).contains("per-run budget cap reached"),
            "{}",
            text(&out)
        );
        let s = ws.summary();
        assert_eq!(s["status"], "budget", "{s}");
        assert_eq!(s["budget_per_run_usd"].as_f64(), Some(per_run), "{s}");
        let this_run = s["cost_this_run_usd"].as_f64().unwrap();
        assert!(this_run <= per_run + 1e-12, "{s}");
        assert!(this_run > per_run / 2.0, "{s}");
        let now = s["succeeded"].as_u64().unwrap();
        assert!(now > succeeded, "the next run may spend again: {s}");
        succeeded = now;
        spent_runs.push(this_run);
    }
    let so_far: f64 = spent_runs.iter().sum();

    // A cumulative cap a little above what is spent: one run reaches it, and after that no
    // run sends anything, however many follow.
    let total = so_far + per_run / 2.0;
    let total_s = total.to_string();
    let args = [
        "run",
        &job,
        "--quiet",
        "--max-usd",
        &total_s,
        "--max-usd-per-run",
        &per_run_s,
    ];
    let out = ws.run(&args);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("budget cap reached"),
        "{}",
        text(&out)
    );
    assert!(!stderr(&out).contains("per-run"), "{}", text(&out));
    let spent = ws.summary()["spent_total_usd"].as_f64().unwrap();
    assert!(spent <= total + 1e-12, "{spent} over {total}");
    for _ in 0..2 {
        let requests = api.stat("requests");
        let out = ws.run(&args);
        assert_exit(&out, 3);
        assert_eq!(api.stat("requests"), requests, "nothing more is sent");
        assert_eq!(ws.summary()["status"], "budget");
    }
}

#[test]
fn budget_fields_and_flags_are_checked_by_name() {
    let ws = Workspace::new();
    ws.csv_rows(2);
    let out = ws.run(&["run", "job.toml", "--max-usd-per-run=-1"]);
    assert_exit(&out, 2);
    assert!(text(&out).contains("--max-usd-per-run"), "{}", text(&out));
    let job = ws.write_job("job.toml", &JobFile::default());
    let body = format!(
        "{}[budget]\nmax_usd = 1\nmax_usd_total = 2\n",
        std::fs::read_to_string(&job).unwrap()
    );
    std::fs::write(&job, body).unwrap();
    let out = ws.run(&["run", &job, "--mock"]);
    assert_exit(&out, 2);
    assert!(text(&out).contains("max_usd_total"), "{}", text(&out));
    let body = std::fs::read_to_string(&job).unwrap().replace(
        "max_usd = 1\nmax_usd_total = 2",
        "max_usd_per_run = 2000000",
    );
    std::fs::write(&job, body).unwrap();
    let out = ws.run(&["run", &job, "--mock"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("budget.max_usd_per_run"),
        "{}",
        text(&out)
    );
}

#[test]
fn batch_mode_keeps_the_mock_ledger_apart_and_checks_the_per_run_cap() {
    let (ws, job) = Workspace::with_job(100, "http://127.0.0.1:9/v1", "");
    // 100 rows × (prompt + 50 tokens) at batch prices is about $0.0016.
    let out = ws.run(&[
        "run",
        &job,
        "--mock",
        "--mode",
        "batch",
        "--max-usd-per-run",
        "0.001",
    ]);
    assert_exit(&out, 3);
    assert!(
        text(&out).contains("over budget.max_usd_per_run"),
        "{}",
        text(&out)
    );
    let out = ws.run(&["run", &job, "--mock", "--mode", "batch"]);
    assert_exit(&out, 0);
    let s = ws.summary();
    assert_eq!(s["succeeded"], 100, "{s}");
    let mock_spent = s["spent_total_usd"].as_f64().unwrap();
    assert!(mock_spent > 0.0, "{s}");

    // Against a real endpoint, the mock's batch spend is not counted: the real rows (sent
    // again, since mock answers are not real ones) fit a cap they would not fit with it.
    let api = Mock::start(&[]);
    let url = format!("api.base_url={}", api.base_url);
    let live = ws.run(&["run", &job, "--quiet", "--set", &url]);
    assert_exit(&live, 0);
    let s = ws.summary();
    assert_eq!(api.stat("ok"), 100, "{}", api.stats());
    let real = s["spent_total_usd"].as_f64().unwrap();
    assert!(
        (real - s["cost_this_run_usd"].as_f64().unwrap()).abs() < 1e-12,
        "the mock's batch spend ({mock_spent}) is not in the real ledger: {s}"
    );
}
