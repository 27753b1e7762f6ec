//! Batch mode on any OpenAI-format API: the provider's size limits from `[batch]`, a base
//! URL other than OpenAI's (the mock serves Gemini's `/v1beta/openai/` shape), the
//! enqueued-token limit, and the self-hosted path `export` → `run-batch` → `import`.

use crate::common;

use common::*;
use serde_json::Value;

/// The base URL of the mock's Gemini-shaped endpoint (as Gemini's docs write it, with the
/// trailing slash).
fn gemini_url(mock: &Mock) -> String {
    format!("http://{}/v1beta/openai/", mock.addr)
}

/// Every batch the mock has under `base` (`/v1` or `/v1beta/openai`), newest first.
fn batches_at(mock: &Mock, base: &str) -> Vec<Value> {
    let body = http(&mock.addr, "GET", &format!("{base}/batches?limit=100"));
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
    v["data"].as_array().unwrap().clone()
}

/// The usual job over `rows.csv` against `base_url`, with `batch` as its `[batch]` section
/// (none when empty); returns its path.
fn job_with_batch(ws: &Workspace, base_url: &str, batch: &str) -> String {
    let mut text = JobFile {
        api: &format!("base_url = \"{base_url}\""),
        limits: "max_in_flight = 8",
        ..JobFile::default()
    }
    .toml();
    if !batch.is_empty() {
        text.push_str(&format!("[batch]\n{batch}\n"));
    }
    ws.write("job.toml", &text).to_string_lossy().into_owned()
}

#[test]
fn the_job_files_batch_limits_fit_a_provider_with_smaller_batches_under_another_base_path() {
    // A provider whose batches hold at most 4 requests, served under Gemini's base path.
    let mock = Mock::start(&["--batch-max-requests", "4"]);
    let ws = Workspace::new();
    ws.csv_rows(10);
    let url = gemini_url(&mock);

    // OpenAI's default limit (50,000) puts all 10 rows in one batch: the provider refuses it.
    let job = job_with_batch(&ws, &url, "");
    let out = ws.run(&batch_wait_args(&job, &["--output", "out/default.csv"]));
    assert_exit(&out, 1);
    let errors = ws.column("out/default.csv", "error");
    assert_eq!(errors.len(), 10);
    assert!(
        errors.iter().all(|e| e.contains("batch_size_exceeded")),
        "{errors:?}"
    );

    // With the provider's limit in the job file, the rows go in batches of 4, 4 and 2.
    let job = job_with_batch(&ws, &url, "max_requests = 4");
    let out = ws.run(&batch_wait_args(&job, &[]));
    assert_exit(&out, 0);
    let rows = ws.rows_by_id("out/result.csv", "cost_usd");
    assert_eq!(rows.len(), 10);
    for i in 1..=10 {
        let (status, text, _) = &rows[&format!("r{i}")];
        assert_eq!(status, "ok", "r{i}");
        assert!(
            text.starts_with(&format!("Mock answer for: Describe item {i} ")),
            "{text}"
        );
    }
    let all = batches_at(&mock, "/v1beta/openai");
    let mut sizes: Vec<u64> = all
        .iter()
        .filter(|b| b["status"] == "completed")
        .map(|b| b["request_counts"]["total"].as_u64().unwrap())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![2, 4, 4], "{all:?}");

    // --batch-max-requests still wins over the job file.
    let out = ws.run(&batch_wait_args(
        &job,
        &["--output", "out/flag.csv", "--batch-max-requests", "3"],
    ));
    assert_exit(&out, 0);
    let state = ws.json("out/flag.batches.json");
    let sizes: Vec<u64> = state["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![3, 3, 3, 1]);

    // A live run under the same base path answers the same text.
    let out = ws.run(&["run", &job, "--output", "out/live.csv"]);
    assert_exit(&out, 0);
    let live = ws.rows_by_id("out/live.csv", "cost_usd");
    for (id, (_, text, _)) in &rows {
        assert_eq!(&live[id].1, text, "{id}");
    }
}

#[test]
fn bad_batch_limits_are_refused_before_anything_runs() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.csv_rows(3);
    for (setting, words) in [
        (
            "max_requests = 0",
            "batch.max_requests (--batch-max-requests): 0 is outside the allowed range \
             1..=10000000 requests",
        ),
        (
            "max_bytes = 10",
            "batch.max_bytes: 10 is outside the allowed range 1000..=10000000000 bytes",
        ),
        (
            "max_enqueued_tokens = 0",
            "batch.max_enqueued_tokens: 0 is outside the allowed range",
        ),
        ("max_request = 5", "unknown field `max_request`"),
    ] {
        let job = job_with_batch(&ws, &mock.base_url, setting);
        let out = ws.run(&batch_wait_args(&job, &[]));
        assert_exit(&out, 2);
        assert!(text(&out).contains(words), "{setting}: {}", text(&out));
        assert!(text(&out).contains("job.toml"), "{}", text(&out));
    }
    assert!(batches_at(&mock, "/v1").is_empty());
}
