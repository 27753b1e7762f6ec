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

/// The chunks of the job's batch state: (requests, tokens, refused batches, status).
fn chunks(ws: &Workspace, state: &str) -> Vec<(u64, u64, usize, String)> {
    ws.json(state)["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["requests"].as_u64().unwrap(),
                c["tokens"].as_u64().unwrap_or(0),
                c["refused"].as_array().map_or(0, Vec::len),
                c["status"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

/// Every row ok, once each in the journal (nothing failed, nothing paid twice), and the
/// mock answered exactly one request per row in its completed batches; the others failed
/// for the enqueued-token limit alone. Returns how many batches were refused.
fn assert_each_row_answered_once(ws: &Workspace, mock: &Mock, n: usize) -> usize {
    let rows = ws.rows_by_id("out/result.csv", "cost_usd");
    assert_eq!(rows.len(), n);
    assert!(rows.values().all(|(st, _, _)| st == "ok"), "{rows:?}");
    let journal = ws.jsonl("out/result.journal.jsonl");
    assert_eq!(journal.len(), n, "one journal line per row");
    let s = ws.summary();
    assert_eq!(
        (s["succeeded"].as_u64(), s["failed"].as_u64()),
        (Some(n as u64), Some(0))
    );
    let all = batches_at(mock, "/v1");
    let answered: u64 = all
        .iter()
        .filter(|b| b["status"] == "completed")
        .map(|b| b["request_counts"]["completed"].as_u64().unwrap())
        .sum();
    assert_eq!(answered, n as u64, "{all:?}");
    let refused: Vec<&Value> = all.iter().filter(|b| b["status"] == "failed").collect();
    for b in &refused {
        assert_eq!(
            b["errors"]["data"][0]["code"], "token_limit_exceeded",
            "{b}"
        );
    }
    refused.len()
}

#[test]
fn a_batch_refused_for_the_enqueued_token_limit_is_held_through_a_kill_and_completed() {
    // Each request enqueues about 70 tokens (prompt + max_tokens 50): a batch of 4 fits the
    // limit, two at once do not.
    let mock = Mock::start(&["--batch-enqueued-tokens", "400", "--batch-step-polls", "20"]);
    let ws = Workspace::new();
    ws.csv_rows(12);
    let job = job_with_batch(&ws, &mock.base_url, "max_requests = 4");

    // Submit: the first batch is taken, the two beside it are refused.
    let out = ws.run(&["run", &job, "--mode", "batch"]);
    assert_exit(&out, 4);
    let failed = |c: &Vec<(u64, u64, usize, String)>| c.iter().filter(|c| c.3 == "failed").count();
    assert_eq!(failed(&chunks(&ws, "out/result.batches.json")), 2);

    // Collecting holds them while the first runs; kill it (SIGKILL) during the hold.
    let mut child = ws.spawn(
        &["collect", &job, "--wait", "--poll-secs", "0.05"],
        std::process::Stdio::null(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let c = chunks(&ws, "out/result.batches.json");
        if c.iter().filter(|c| c.3 == "held" && c.2 == 1).count() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never held: {c:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let state = ws.batch_state();
    assert!(state["chunks"][1]["batch_id"].is_null(), "{state}");

    // The next collect carries on: each held chunk goes once the batches before it end
    // (one at a time here, so neither is refused again).
    let out = ws.run(&["collect", &job, "--wait", "--poll-secs", "0"]);
    assert_exit(&out, 0);
    let refused = assert_each_row_answered_once(&ws, &mock, 12);
    assert!(refused >= 2, "{refused}");
    let c = chunks(&ws, "out/result.batches.json");
    assert_eq!(c.iter().map(|c| c.0).sum::<u64>(), 12, "{c:?}");
    assert!(c.iter().all(|c| c.3 == "completed"), "{c:?}");
}

#[test]
fn chunks_are_sized_and_submitted_under_the_configured_enqueued_token_limit() {
    let mock = Mock::start(&["--batch-enqueued-tokens", "400"]);
    let ws = Workspace::new();
    ws.csv_rows(12);
    let job = job_with_batch(&ws, &mock.base_url, "max_enqueued_tokens = 300");
    let out = ws.run(&batch_wait_args(&job, &[]));
    assert_exit(&out, 0);
    let c = chunks(&ws, "out/result.batches.json");
    assert!(c.len() >= 3, "{c:?}");
    assert!(c.iter().all(|c| c.1 > 0 && c.1 <= 300), "{c:?}");
    assert_eq!(c.iter().map(|c| c.0).sum::<u64>(), 12);
    // One at a time, as the limit allows: the provider never had to refuse one.
    assert_eq!(assert_each_row_answered_once(&ws, &mock, 12), 0);
}

#[test]
fn export_then_a_vllm_run_batch_then_import_gives_a_live_runs_answers() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let names = ["item 1", "item 2", "bad [[mock:400]]", "item 4", "item 5"];
    ws.named_rows(&names, "blue");
    let job = job_with_batch(&ws, &mock.base_url, "");

    // 1. The requests, written for a self-hosted runner; nothing is sent.
    let out = ws.run(&[
        "export",
        &job,
        "--format",
        "openai-batch",
        "--out",
        "in.jsonl",
    ]);
    assert_exit(&out, 0);
    assert_eq!(mock.stat("requests"), 0, "export sends nothing");

    // 2. The runner, a process of its own, as `vllm run-batch -i in.jsonl -o out.jsonl`.
    let out = ws.run_env(
        &[],
        &["mock-run-batch", "-i", "in.jsonl", "-o", "results.jsonl"],
    );
    assert_exit(&out, 0);
    let lines = ws.jsonl("results.jsonl");
    let inputs = ws.jsonl("in.jsonl");
    assert_eq!(lines.len(), 5);
    for (line, input) in lines.iter().zip(&inputs) {
        assert_eq!(line["custom_id"], input["custom_id"], "input order kept");
        assert!(line["id"].as_str().unwrap().starts_with("vllm-"), "{line}");
        let resp = &line["response"];
        assert!(resp["request_id"]
            .as_str()
            .unwrap()
            .starts_with("vllm-batch-"));
        match resp["status_code"].as_u64() {
            Some(200) => assert!(line["error"].is_null() && resp["body"]["usage"].is_object()),
            Some(400) => assert!(
                resp["body"].is_null() && line["error"].is_object(),
                "{line}"
            ),
            other => panic!("status {other:?}: {line}"),
        }
    }

    // 3. The results back into the job: the output a live run writes, at batch prices.
    let out = ws.run(&["import", &job, "results.jsonl"]);
    assert_exit(&out, 1);
    let imported = ws.rows_by_id("out/result.csv", "error");
    assert_eq!(imported["r3"].0, "failed");
    assert!(
        imported["r3"].2.contains("HTTP 400"),
        "{:?}",
        imported["r3"]
    );
    let out = ws.run(&["run", &job, "--output", "out/live.csv"]);
    assert_exit(&out, 1);
    let live = ws.rows_by_id("out/live.csv", "error");
    for id in ["r1", "r2", "r4", "r5"] {
        assert_eq!(imported[id].0, "ok");
        assert_eq!(imported[id].1, live[id].1, "{id}: same text as live");
    }
    let batch = ws.summary();
    assert_eq!(batch["mode"], "batch");
    assert_eq!(
        (batch["succeeded"].as_u64(), batch["failed"].as_u64()),
        (Some(4), Some(1))
    );
    assert_batch_half_of_live(&ws.json("out/live.summary.json"), &batch);
}

#[test]
fn run_batch_refuses_a_file_that_is_not_batch_input() {
    let ws = Workspace::new();
    ws.write(
        "in.jsonl",
        "{\"custom_id\":\"a\",\"url\":\"/v1/chat/completions\",\"body\":{}}\nnot json\n",
    );
    let out = ws.run_env(
        &[],
        &["mock-run-batch", "-i", "in.jsonl", "-o", "out.jsonl"],
    );
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("in.jsonl: line 2: not JSON"),
        "{}",
        text(&out)
    );
    let out = ws.run_env(
        &[],
        &["mock-run-batch", "-i", "missing.jsonl", "-o", "out.jsonl"],
    );
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("missing.jsonl: cannot read"),
        "{}",
        text(&out)
    );
}

#[test]
fn gemini_models_are_priced_at_geminis_own_prices_live_and_in_batch() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.csv_rows(6);
    let job_at = |url: &str| {
        let text = JobFile {
            api: &format!("base_url = \"{url}\""),
            // Priced only under LiteLLM's `gemini/` key.
            model: "name = \"gemini-4-hydrogen\"\nmax_tokens = 50",
            ..JobFile::default()
        }
        .toml();
        ws.write("job.toml", &text).to_string_lossy().into_owned()
    };

    let job = job_at(&gemini_url(&mock));
    let out = ws.run(&["run", &job, "--output", "out/live.csv"]);
    assert_exit(&out, 0);
    let live = ws.json("out/live.summary.json");
    assert!(live["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{live}");
    let out = ws.run(&batch_wait_args(&job, &["--output", "out/batch.csv"]));
    assert_exit(&out, 0);
    let batch = ws.json("out/batch.summary.json");
    assert_eq!(batch["succeeded"], 6);
    assert_batch_half_of_live(&live, &batch);
    assert_eq!(batches_at(&mock, "/v1beta/openai").len(), 1);

    // The same model on another endpoint has no price: unknown, never $0.
    let job = job_at(&mock.base_url);
    let out = ws.run(&["run", &job, "--output", "out/other.csv"]);
    assert_exit(&out, 0);
    let other = ws.json("out/other.summary.json");
    assert!(other["cost_usd"].is_null(), "{other}");
}
