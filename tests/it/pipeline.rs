//! The whole pipeline end to end: the real binary, real files, real HTTP to the mock API on
//! 127.0.0.1.

use crate::common;

use std::process::Output;

use common::*;

/// Runs the usual job quietly over a rows.csv holding `csv`, against a fresh mock.
fn run_over(csv: &str) -> (Mock, Workspace, Output) {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.write("rows.csv", csv);
    let job = ws.job(&mock.base_url, "");
    let out = ws.run(&["run", &job, "--quiet"]);
    (mock, ws, out)
}

#[test]
fn example_product_copy_runs_offline_with_mock() {
    let ws = Workspace::new();
    let out = ws.run_shipped("examples/product-copy/job.toml", &[], "copy.csv");
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("copy.csv");
    assert_eq!(rows.len(), 12, "one output row per input row");
    let sku = col(&h, "sku");
    let ids: Vec<&str> = rows.iter().map(|r| r[sku].as_str()).collect();
    let expected: Vec<String> = (1..=12).map(|i| format!("SKU-{i:03}")).collect();
    assert_eq!(ids, expected, "input order kept");
    for r in &rows {
        assert_eq!(r[col(&h, "status")], "ok");
        assert!(!r[col(&h, "output")].is_empty());
        assert!(r[col(&h, "prompt_tokens")].parse::<u64>().unwrap() > 20);
    }
    let summary = ws.json("copy.summary.json");
    assert_eq!(summary["succeeded"], 12);
    assert!(summary["cost_usd"].as_f64().unwrap() > 0.0, "{summary}");
    let err = stderr(&out);
    assert!(err.contains("12 succeeded"), "{err}");
    assert!(err.contains("cost"), "{err}");
}

#[test]
fn a_thousand_rows_survive_500s_and_a_tight_rate_limit() {
    let mock = Mock::start(&["--rpm", "6000", "--fail-rate", "0.2", "--latency-ms", "5"]);
    let limits = "requests_per_minute = 6000\nmax_retries = 10";
    let (ws, job) = Workspace::with_job(1000, &mock.base_url, limits);
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 0);
    let status = ws.column("out/result.csv", "status");
    assert_eq!(status.len(), 1000);
    assert!(status.iter().all(|s| s == "ok"));
    let s = ws.summary();
    assert_eq!(s["succeeded"], 1000);
    assert!(s["server_errors"].as_u64().unwrap() > 100, "{s}");
    assert!(s["retries"].as_u64().unwrap() > 100, "{s}");
    // Every row answered exactly once.
    assert_eq!(mock.stat("duplicate_prompts"), 0);
    assert_eq!(mock.stat("distinct_prompts"), 1000);
}

#[test]
fn a_429_storm_is_ridden_out_without_losing_rows() {
    // The job is not told the limit and the server sends no headers: it learns the hard
    // way, from 429s.
    let mock = Mock::start(&["--rpm", "1200", "--no-rate-headers"]);
    let (ws, job) = Workspace::with_job(150, &mock.base_url, "");
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 0);
    let s = ws.summary();
    assert_eq!(s["succeeded"], 150);
    assert!(s["rate_limited"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(mock.stat("duplicate_prompts"), 0);
}

#[test]
fn a_bad_key_stops_the_job_at_once_without_leaking_it() {
    let mock = Mock::start(&["--api-key", "sk-the-right-key-000", "--latency-ms", "50"]);
    let (ws, job) = Workspace::with_job(500, &mock.base_url, "");
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 3);
    let all = text(&out);
    let lines: Vec<&str> = all.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one line naming the problem:\n{all}");
    assert!(lines[0].contains("401"), "{all}");
    assert!(lines[0].to_lowercase().contains("key"), "{all}");
    // Far fewer requests than rows: the job stopped instead of trying every row.
    assert!(mock.stat("unauthorized") < 100, "{}", mock.stats());
    assert!(!all.contains(TEST_KEY), "key leaked to the terminal");
    assert_absent(ws.dir.path(), TEST_KEY, &[]);
}

#[test]
fn a_400_fails_only_its_row() {
    let (_mock, ws, out) =
        run_over("id,name,color\na,apple,red\nb,[[mock:400]] bad,blue\nc,cherry,red\n");
    assert_exit(&out, 1);
    let (h, rows) = ws.csv("out/result.csv");
    assert_eq!(rows.len(), 3);
    let st: Vec<&str> = rows.iter().map(|r| r[col(&h, "status")].as_str()).collect();
    assert_eq!(st, ["ok", "failed", "ok"]);
    assert!(rows[1][col(&h, "error")].contains("400"), "{:?}", rows[1]);
    assert_eq!(rows[1][col(&h, "attempts")], "1", "a 400 is not retried");
}

#[test]
fn server_errors_are_retried_until_they_pass() {
    let (_mock, ws, out) = run_over("id,name,color\na,[[mock:fail-first:2]] flaky,red\n");
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("out/result.csv");
    assert_eq!(rows[0][col(&h, "attempts")], "3");
    assert_eq!(rows[0][col(&h, "status")], "ok");
}

#[test]
fn malformed_csv_fails_before_any_request() {
    let (mock, ws, out) = run_over("id,name,color\na,apple,red\nb,banana\nc,cherry,red\n");
    assert_exit(&out, 2);
    let all = text(&out);
    assert!(all.contains("rows.csv:3"), "names file and line: {all}");
    assert_eq!(mock.stat("requests"), 0, "no request before validation");
    assert!(
        !ws.path("out/result.csv").exists(),
        "no half-written output"
    );
}

#[test]
fn a_missing_template_variable_in_row_17_fails_before_any_request() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.csv_rows(1);
    // Row 17 of a JSONL export lacks the `color` field the template reads.
    ws.write(
        "rows.jsonl",
        &(1..=30)
            .map(|i| {
                if i == 17 {
                    format!("{{\"id\":\"r{i}\",\"name\":\"item {i}\"}}\n")
                } else {
                    format!("{{\"id\":\"r{i}\",\"name\":\"item {i}\",\"color\":\"red\"}}\n")
                }
            })
            .collect::<String>(),
    );
    let job = ws.job(&mock.base_url, "");
    let out = ws.run(&["run", &job, "--quiet", "--input", "rows.jsonl"]);
    assert_exit(&out, 2);
    let all = text(&out);
    assert!(all.contains("row 17"), "names the row: {all}");
    assert!(all.contains("color"), "names the variable: {all}");
    assert_eq!(mock.stat("requests"), 0, "no request before validation");
}

#[test]
fn unknown_job_keys_are_refused_with_the_line() {
    let (ws, job) = Workspace::with_job(1, "http://127.0.0.1:9/v1", "");
    let text_job = ws
        .read("job.toml")
        .replace("max_tokens = 50", "max_tokens = 50\nmax_token = 3");
    ws.write("job.toml", &text_job);
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 2);
    let all = text(&out);
    assert!(all.contains("job.toml"), "{all}");
    assert!(all.contains("unknown field `max_token`"), "{all}");
}

#[test]
fn a_missing_key_is_a_clear_start_error() {
    let (ws, job) = Workspace::with_job(1, "http://127.0.0.1:9/v1", "");
    let out = ws.run_env(&[], &["run", &job]);
    assert_exit(&out, 2);
    assert!(text(&out).contains("OPENAI_API_KEY"), "{}", text(&out));
}

#[test]
fn jsonl_output_keeps_types_and_order() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(20, &mock.base_url, "");
    let out = ws.run(&["run", &job, "--quiet", "--output", "out/r.jsonl"]);
    assert_exit(&out, 0);
    let lines = ws.jsonl("out/r.jsonl");
    assert_eq!(lines.len(), 20);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], format!("r{}", i + 1));
        assert!(l["prompt_tokens"].is_u64());
        assert!(l["cost_usd"].is_f64());
    }
}

#[test]
fn the_nightly_job_runs_with_mock() {
    let ws = Workspace::new();
    let out = ws.run_shipped("jobs/nightly-summaries.toml", &["--quiet"], "s.jsonl");
    assert_exit(&out, 0);
    assert_eq!(ws.read("s.jsonl").lines().count(), 10);
}
