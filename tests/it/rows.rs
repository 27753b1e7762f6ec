//! The row loop, once: a run reads its input once (the validation pass), and everything
//! after it (sending, the output) uses what that pass kept; the estimate prices only the rows
//! that would be sent now.

use crate::common;

use std::fs::File;
use std::time::{Duration, Instant};

use common::*;

const JOURNAL: &str = "out/result.journal.jsonl";

/// Complete lines in the journal so far.
fn journal_lines(ws: &Workspace) -> usize {
    std::fs::read(ws.path(JOURNAL))
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// The numbers at `keys` of a JSON object (u64::MAX for a missing one).
fn nums<const N: usize>(v: &serde_json::Value, keys: &[&str; N]) -> [u64; N] {
    keys.map(|k| v[k].as_u64().unwrap_or(u64::MAX))
}

#[test]
fn an_input_replaced_during_a_run_does_not_reach_its_output_and_is_reported() {
    let (ws, job) = Workspace::with_job(8, "http://127.0.0.1:9", "");
    let log = File::create(ws.path("run.log")).unwrap();
    // One request at a time, 300 ms each: the run lasts over two seconds.
    let mut child = ws.spawn(
        &[
            "run",
            &job,
            "--mock",
            "--mock-latency-ms",
            "300",
            "--set",
            "limits.max_in_flight=1",
            "--quiet",
        ],
        log,
    );
    // Wait for the first answer (the validation pass is over then), bounded.
    let deadline = Instant::now() + Duration::from_secs(60);
    while journal_lines(&ws) < 1 {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("run ended ({st}) before any answer\n{}", ws.read("run.log"));
        }
        assert!(Instant::now() < deadline, "no answer came");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Another file in its place (renamed over it, as editors and exports do): other names,
    // more rows.
    let mut s = String::from("id,name,color\n");
    for i in 1..=12 {
        s.push_str(&format!("r{i},CHANGED {i},blue\n"));
    }
    ws.write("rows.new.csv", &s);
    std::fs::rename(ws.path("rows.new.csv"), ws.path("rows.csv")).unwrap();
    let status = child.wait().unwrap();
    let err = ws.read("run.log");
    assert_eq!(status.code(), Some(0), "{err}");
    let (header, rows) = ws.csv("out/result.csv");
    let (name, status) = (col(&header, "name"), col(&header, "status"));
    let names: Vec<&str> = rows.iter().map(|r| r[name].as_str()).collect();
    let want: Vec<String> = (1..=8).map(|i| format!("item {i}")).collect();
    assert_eq!(
        names, want,
        "the output must hold the rows that were read\n{err}"
    );
    assert!(rows.iter().all(|r| r[status] == "ok"), "{rows:?}");
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("changed while the job ran"))
        .collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("rows.csv"), "{err}");
    // An unchanged input gives no such warning.
    let out = ws.run(&["run", &job, "--mock", "--quiet"]);
    assert_exit(&out, 0);
    assert!(!stderr(&out).contains("changed while"), "{}", stderr(&out));
}

#[test]
fn the_estimate_prices_only_the_rows_that_would_be_sent_now() {
    let (ws, job) = Workspace::with_job(20, "http://127.0.0.1:9", "");
    // The dry run of the same job with `--mock` (row identity includes where requests go).
    let dry = |ws: &Workspace| {
        let out = ws.run_env(&[], &["run", &job, "--dry-run", "--mock", "--json"]);
        assert_exit(&out, 0);
        (stdout_json(&out), stderr(&out))
    };
    let (fresh, _) = dry(&ws);
    assert_eq!(nums(&fresh, &["rows", "requests"]), [20, 20]);
    let per_row_high = fresh["cost"]["high_usd"].as_f64().unwrap() / 20.0;
    assert!(per_row_high > 0.0, "{fresh}");

    let out = ws.run(&["run", &job, "--mock", "--quiet"]);
    assert_exit(&out, 0);
    // Everything is done: nothing would be sent, nothing is priced.
    let (e, table) = dry(&ws);
    assert_eq!(nums(&e, &["rows", "requests", "done"]), [20, 0, 20], "{e}");
    assert_eq!(e["prompt_tokens"]["total"], 0, "{e}");
    assert_eq!(e["cost"]["high_usd"].as_f64(), Some(0.0), "{e}");
    assert!(table.contains("20 (0 to send, 20 done already)"), "{table}");
    // `estimate` is the same pass: without `--mock` the requests would go elsewhere, so
    // none of them is done.
    let out = ws.run_env(&[], &["estimate", &job, "--json"]);
    assert_exit(&out, 0);
    assert_eq!(stdout_json(&out)["requests"], 20);

    // Ten rows added: those ten are priced.
    let mut s = ws.read("rows.csv");
    for i in 21..=30 {
        s.push_str(&format!("r{i},item {i},color {}\n", i % 7));
    }
    ws.write("rows.csv", &s);
    let (e, _) = dry(&ws);
    assert_eq!(nums(&e, &["rows", "requests", "done"]), [30, 10, 20], "{e}");
    let high = e["cost"]["high_usd"].as_f64().unwrap();
    assert!(
        (high - 10.0 * per_row_high).abs() < 1e-9,
        "{high} vs {per_row_high}"
    );

    // A changed template changes every request: all thirty are sent again, and said so.
    let toml = ws.read("job.toml").replace("Describe", "Portray");
    ws.write("job.toml", &toml);
    let (e, table) = dry(&ws);
    assert_eq!(
        nums(&e, &["requests", "changed", "done"]),
        [30, 20, 0],
        "{e}"
    );
    assert!(table.contains("20 changed since the last run"), "{table}");
}

#[test]
fn failed_rows_kept_as_failed_are_not_priced_unless_retried() {
    let (ws, job) = Workspace::with_job(6, "http://127.0.0.1:9", "");
    // Every request fails (500s, no retries): all six rows end failed.
    let out = ws.run(&[
        "run",
        &job,
        "--mock",
        "--mock-fail-rate",
        "1",
        "--set",
        "limits.max_retries=0",
        "--set",
        "limits.stop_after_errors=0",
        "--quiet",
    ]);
    assert_exit(&out, 1);
    let out = ws.run_env(&[], &["run", &job, "--dry-run", "--mock", "--json"]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    assert_eq!(nums(&e, &["requests", "kept_failed"]), [0, 6], "{e}");
    let out = ws.run_env(
        &[],
        &[
            "run",
            &job,
            "--dry-run",
            "--mock",
            "--retry-failed",
            "--json",
        ],
    );
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    assert_eq!(nums(&e, &["requests", "kept_failed"]), [6, 0], "{e}");
}
