//! The Batch API backend end to end: the real binary submits to the mock's Files and Batches
//! endpoints on 127.0.0.1, polls, collects, and writes the same output a live run writes.

use crate::common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Every batch the mock has (`GET /v1/batches`, newest first).
fn batches(mock: &Mock) -> Vec<Value> {
    let body = http(&mock.addr, "GET", "/v1/batches?limit=100");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
    v["data"].as_array().unwrap().clone()
}

#[test]
fn submit_poll_collect_retry_and_status() {
    let mock = Mock::start(&["--batch-step-polls", "1"]);
    let ws = Workspace::new();
    let names: Vec<String> = (1..=20)
        .map(|i| match i {
            5 => "bad [[mock:400]]".to_string(),
            _ => format!("item {i}"),
        })
        .collect();
    ws.named_rows(&names, "blue");
    let job = ws.job(&mock.base_url, "");
    let job = job.as_str();

    // Submit: 20 requests split into files of at most 7, one batch each; not finished yet.
    let out = ws.run(&["run", job, "--mode", "batch", "--batch-max-requests", "7"]);
    assert_exit(&out, 4);
    assert!(text(&out).contains("still running"), "{}", text(&out));
    assert_eq!(batches(&mock).len(), 3);
    for line in ws.read("out/result.batches/r1-1.jsonl").lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["url"], "/v1/chat/completions");
        assert_eq!(v["body"]["model"], "gpt-4o-mini");
        assert!(v["custom_id"].as_str().unwrap().starts_with("row-"));
    }

    // Status: one line per batch with its id and request counts.
    let out = ws.run(&["status", job]);
    assert_exit(&out, 0);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    for b in batches(&mock) {
        assert!(table.contains(b["id"].as_str().unwrap()), "{table}");
    }
    assert!(table.contains("in_progress"), "{table}");
    let out = ws.run(&["status", job, "--json", "--no-refresh"]);
    let state = stdout_json(&out);
    let totals: Vec<u64> = state["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["counts"]["total"].as_u64().unwrap())
        .collect();
    assert_eq!(totals, vec![7, 7, 6]);

    // Collect: results come back out of order and are joined by custom_id.
    let out = ws.collect_until_done(OPENAI_KEY, job);
    assert_exit(&out, 1);
    let rows = ws.rows_by_id("out/result.csv", "cost_usd");
    assert_eq!(rows.len(), 20);
    assert_eq!(rows["r5"].0, "failed");
    for i in (1..=20).filter(|i| *i != 5) {
        let (st, text, _) = &rows[&format!("r{i}")];
        assert_eq!(st, "ok");
        assert!(
            text.starts_with(&format!("Mock answer for: Describe item {i} in blue.")),
            "r{i}: {text}"
        );
    }
    let ids = ws.column("out/result.csv", "id");
    assert_eq!(ids[..3], ["r1", "r2", "r3"], "input order kept");
    let s = ws.summary();
    assert_eq!(s["mode"], "batch");
    assert_eq!(
        (s["succeeded"].as_u64(), s["failed"].as_u64()),
        (Some(19), Some(1))
    );
    let journal = ws.read("out/result.journal.jsonl");
    assert!(journal.lines().all(|l| l.contains("\"batch\":true")));

    // Collecting again changes nothing and submits nothing.
    let out = ws.run(&["collect", job]);
    assert_exit(&out, 1);
    assert_eq!(ws.read("out/result.journal.jsonl"), journal);

    // --retry-failed puts only the failed row into a new batch.
    let out = ws.run(&["run", job, "--mode", "batch", "--retry-failed"]);
    assert_exit(&out, 4);
    let all = batches(&mock);
    assert_eq!(all.len(), 4);
    assert_eq!(all[0]["request_counts"]["total"], 1);
    let out = ws.collect_until_done(OPENAI_KEY, job);
    assert_exit(&out, 1);
    assert_eq!(batches(&mock).len(), 4, "collect never submits");
}

#[test]
fn ten_thousand_rows_in_batch_equal_a_live_run_at_half_price() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(10_000, &mock.base_url, "");
    let job = job.as_str();
    let t = Instant::now();
    let out = ws.run(&["run", job, "--quiet"]);
    assert_exit(&out, 0);
    let live_secs = t.elapsed().as_secs_f64();
    let live = ws.summary();

    let out = ws.run(&batch_wait_args(job, &["--output", "out/batch.csv"]));
    assert_exit(&out, 0);
    let batch = ws.json("out/batch.summary.json");
    assert_eq!(batch["mode"], "batch");
    assert_eq!(batch["succeeded"], 10_000);
    assert_eq!(batches(&mock).len(), 1, "10,000 requests fit one batch");

    let a = ws.rows_by_id("out/result.csv", "cost_usd");
    let b = ws.rows_by_id("out/batch.csv", "cost_usd");
    assert_eq!(a.len(), 10_000);
    for (id, (st, text, _)) in &a {
        assert_eq!(st, "ok");
        assert_eq!(
            &b[id].1, text,
            "row {id}: same generated text in live and batch"
        );
    }
    assert_batch_half_of_live(&live, &batch);
    eprintln!("live run took {live_secs:.1}s");
}

#[test]
fn a_kill_between_create_and_record_does_not_create_a_second_batch() {
    // The mock creates the batch, then holds its answer for 30 s: we kill the client there.
    let mock = Mock::start(&["--batch-create-delay-ms", "30000"]);
    let (ws, job) = Workspace::with_job(30, &mock.base_url, "");
    let job = job.as_str();
    let mut child = ws.spawn(&["run", job, "--mode", "batch"], Stdio::null());
    let deadline = Instant::now() + Duration::from_secs(20);
    while batches(&mock).is_empty() {
        assert!(Instant::now() < deadline, "no batch was created");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no chance to record the batch id
    child.wait().unwrap();
    let state = ws.batch_state();
    assert_eq!(state["chunks"][0]["create_started"], true);
    assert!(state["chunks"][0]["batch_id"].is_null(), "{state}");

    assert_restart_submits_once(
        &ws,
        OPENAI_KEY,
        job,
        || batches(&mock),
        1,
        30,
        "the batch was found, not created again",
    );
}

#[test]
fn a_crash_after_upload_creates_exactly_one_batch_from_that_file() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(10, &mock.base_url, "");
    let job = job.as_str();
    ws.crash_batch_at(OPENAI_KEY, job, "after-upload");
    assert!(batches(&mock).is_empty());
    let state = ws.batch_state();
    let file_id = state["chunks"][0]["file_id"].as_str().unwrap().to_string();

    ws.submit_batch(OPENAI_KEY, job);
    let all = batches(&mock);
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0]["input_file_id"],
        file_id.as_str(),
        "the uploaded file is reused"
    );
    assert_eq!(all[0]["metadata"]["promptmill_job"], "job");
    assert_exit(&ws.collect_until_done(OPENAI_KEY, job), 0);
}

#[test]
fn a_cancelled_batch_keeps_what_finished_and_the_rest_is_resubmitted() {
    let mock = Mock::start(&["--batch-step-polls", "100"]);
    let (ws, job) = Workspace::with_job(10, &mock.base_url, "");
    let job = job.as_str();
    assert_cancel_resubmits_the_rest(
        &ws,
        OPENAI_KEY,
        job,
        || batches(&mock),
        |id| {
            http(&mock.addr, "POST", &format!("/v1/batches/{id}/cancel"));
        },
        "total",
    );
}

#[test]
fn export_then_import_gives_the_batch_output() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(25, &mock.base_url, "");
    let job = job.as_str();

    // A batch run writes its input file; export writes the same lines without submitting.
    let out = ws.run(&[
        "export",
        job,
        "--format",
        "openai-batch",
        "--out",
        "in.jsonl",
    ]);
    assert_exit(&out, 0);
    assert!(batches(&mock).is_empty(), "export submits nothing");
    let exported = ws.read("in.jsonl");
    assert_eq!(exported.lines().count(), 25);
    let out = ws.run(&batch_wait_args(job, &["--output", "out/a.csv"]));
    assert_exit(&out, 0);
    assert_eq!(ws.read("out/a.batches/r1-1.jsonl"), exported);

    // The results, fetched "by other means", imported into a fresh output.
    let output_file = batches(&mock)[0]["output_file_id"]
        .as_str()
        .unwrap()
        .to_string();
    let results = http(
        &mock.addr,
        "GET",
        &format!("/v1/files/{output_file}/content"),
    );
    ws.write("results.jsonl", &results);
    let out = ws.run(&["import", job, "results.jsonl", "--output", "out/b.csv"]);
    assert_exit(&out, 0);
    assert_eq!(ws.read("out/a.csv"), ws.read("out/b.csv"));
    let b = ws.json("out/b.summary.json");
    assert_eq!(b["succeeded"], 25);
    assert_eq!(b["mode"], "batch");

    // A line that promptmill did not write is refused with the file and line named.
    ws.write(
        "alien.jsonl",
        "{\"custom_id\":\"request-1\",\"response\":null}\n",
    );
    let out = ws.run(&["import", job, "alien.jsonl", "--output", "out/c.csv"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("alien.jsonl") && t.contains("line 1"), "{t}");
}

#[test]
fn run_mock_in_batch_mode_waits_and_finishes() {
    let (ws, job) = Workspace::with_job(12, "http://127.0.0.1:9/v1", "");
    let out = ws.run(&["run", &job, "--mock", "--mode", "batch"]);
    assert_exit(&out, 0);
    let s = ws.summary();
    assert_eq!(
        (s["succeeded"].as_u64(), s["mode"].as_str()),
        (Some(12), Some("batch"))
    );
    assert_eq!(s["provider"], "mock");
}

#[test]
fn a_round_that_could_cross_the_budget_is_not_submitted() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(100, &mock.base_url, "");
    // 100 rows × (prompt + 50 tokens) at batch prices is about $0.0016: a $0.001 cap refuses.
    let out = ws.run(&["run", &job, "--mode", "batch", "--max-usd", "0.001"]);
    assert_exit(&out, 3);
    assert!(text(&out).contains("over budget.max_usd"), "{}", text(&out));
    assert!(batches(&mock).is_empty(), "nothing submitted");
    let out = ws.run(&["run", &job, "--mode", "batch", "--max-usd", "0.01"]);
    assert_exit(&out, 4);
    assert_eq!(batches(&mock).len(), 1);
}

#[test]
fn a_batch_that_fails_validation_records_its_rows_as_failed() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(6, &mock.base_url, "");
    let job = job.as_str();
    // Stop after the input file is written, and break it (a duplicated line) before upload.
    ws.crash_batch_at(OPENAI_KEY, job, "after-write");
    let input = ws.read("out/result.batches/r1-1.jsonl");
    let first = input.lines().next().unwrap().to_string();
    ws.write(
        "out/result.batches/r1-1.jsonl",
        &format!("{input}{first}\n"),
    );

    ws.submit_batch(OPENAI_KEY, job);
    assert_eq!(batches(&mock)[0]["status"], "failed");
    let out = ws.run(&["collect", job]);
    assert_exit(&out, 1);
    let rows = ws.rows_by_id("out/result.csv", "cost_usd");
    assert!(rows.values().all(|r| r.0 == "failed"), "{rows:?}");
    let journal = ws.read("out/result.journal.jsonl");
    assert!(journal.contains("failed validation") && journal.contains("duplicate_custom_id"));
}

/// `job.toml` as [`Workspace::job`] writes it, with a structured-output schema (title,
/// stars), 200 completion tokens and no retries.
fn schema_job(ws: &Workspace, base_url: &str) -> String {
    ws.write_job(
        "job.toml",
        &JobFile {
            model: "name = \"gpt-4o-mini\"\nmax_tokens = 200",
            schema: r#"{ type = "object", additionalProperties = false, required = ["title", "stars"], properties = { title = { type = "string" }, stars = { type = "integer", minimum = 1, maximum = 5 } } }"#,
            api: &format!("base_url = \"{base_url}\""),
            limits: "max_retries = 0",
            ..JobFile::default()
        },
    )
}

/// The `cost_usd` column of `out/result.csv`, every row priced.
fn row_costs(ws: &Workspace) -> Vec<f64> {
    let costs = ws.column("out/result.csv", "cost_usd");
    costs.iter().map(|c| c.parse::<f64>().unwrap()).collect()
}

#[test]
fn a_schema_job_collected_from_a_batch_gives_the_rows_of_a_live_run() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.csv_rows(40);
    let job = schema_job(&ws, &mock.base_url);
    assert_exit(&ws.run(&["run", &job, "--quiet"]), 0);
    let out = ws.run(&batch_wait_args(&job, &["--output", "out/batch.csv"]));
    assert_exit(&out, 0);

    let (lh, live) = ws.csv("out/result.csv");
    let (bh, batch) = ws.csv("out/batch.csv");
    assert_eq!(lh, bh);
    let (title, stars, cost) = (col(&lh, "title"), col(&lh, "stars"), col(&lh, "cost_usd"));
    assert_eq!((live.len(), batch.len()), (40, 40));
    for (l, b) in live.iter().zip(&batch) {
        assert!(
            l[title].starts_with("Mock title for:"),
            "live row has its field: {l:?}"
        );
        assert!((1..=5).contains(&l[stars].parse::<u32>().unwrap()), "{l:?}");
        for (c, name) in lh.iter().enumerate().filter(|(c, _)| *c != cost) {
            assert_eq!(l[c], b[c], "column {name}: live {l:?} batch {b:?}");
        }
        let (lc, bc) = (
            l[cost].parse::<f64>().unwrap(),
            b[cost].parse::<f64>().unwrap(),
        );
        assert!(
            (bc * 2.0 - lc).abs() < 1e-12,
            "batch {bc} is half of live {lc}"
        );
    }
}

#[test]
fn a_batch_answer_that_fails_the_schema_fails_its_row_and_is_paid_for() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.write(
        "rows.csv",
        "id,name,color\nr1,kettle,red\nr2,lamp [[mock:bad-schema]],blue\nr3,mug,green\n",
    );
    let job = schema_job(&ws, &mock.base_url);
    let out = ws.run(&batch_wait_args(&job, &[]));
    assert_exit(&out, 1);
    let (h, rows) = ws.csv("out/result.csv");
    let at = |r: usize, c: &str| rows[r][col(&h, c)].clone();
    assert_eq!(
        (at(0, "status"), at(2, "status")),
        ("ok".into(), "ok".into())
    );
    assert_eq!(at(1, "status"), "failed");
    let err = at(1, "error");
    assert!(
        err.contains("does not follow model.schema") && err.contains("not JSON"),
        "{err}"
    );
    assert_eq!(
        (at(1, "title"), at(1, "output")),
        (String::new(), String::new())
    );
    assert!(
        at(1, "prompt_tokens").parse::<u64>().unwrap() > 0,
        "paid tokens kept"
    );
    assert!(
        at(1, "cost_usd").parse::<f64>().unwrap() > 0.0,
        "and their cost"
    );
    let s = ws.summary();
    assert_eq!(
        (s["succeeded"].as_u64(), s["failed"].as_u64()),
        (Some(2), Some(1))
    );
    let spent = s["spent_total_usd"].as_f64().unwrap();
    let row_costs: f64 = row_costs(&ws).iter().sum();
    assert!(
        (spent - row_costs).abs() < 1e-12,
        "spent {spent} counts the failed answer"
    );

    // --retry-failed sends that row again (the mock answers properly the second time).
    assert_exit(&ws.run(&batch_wait_args(&job, &["--retry-failed"])), 0);
    assert_eq!(batches(&mock)[0]["request_counts"]["total"], 1);
    let (h, rows) = ws.csv("out/result.csv");
    assert_eq!(rows[1][col(&h, "status")], "ok");
    assert!(rows[1][col(&h, "title")].starts_with("Mock title for:"));
    let now = ws.summary()["spent_total_usd"].as_f64().unwrap();
    assert!(
        now > spent,
        "the first answer stays paid for: {now} > {spent}"
    );
}

#[test]
fn a_crash_before_a_batch_is_marked_collected_counts_a_schema_failure_once() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.write(
        "rows.csv",
        "id,name,color\nr1,kettle,red\nr2,lamp [[mock:bad-schema]],blue\n",
    );
    let job = schema_job(&ws, &mock.base_url);
    // Killed after the results are journaled, before the batch is recorded as collected.
    let crash = [OPENAI_KEY, ("PROMPTMILL_TEST_CRASH_AT", "after-ingest")];
    let out = ws.run_env(&crash, &batch_wait_args(&job, &[]));
    assert_exit(&out, 101);
    let journal = ws.read("out/result.journal.jsonl");
    assert_eq!(journal.lines().count(), 2, "{journal}");

    // Collecting reads the same results again: nothing is journaled (or paid for) twice.
    let out = ws.run(&["collect", &job]);
    assert_exit(&out, 1);
    assert_eq!(ws.read("out/result.journal.jsonl"), journal);
    let costs = row_costs(&ws);
    assert!(costs.iter().all(|c| *c > 0.0), "{costs:?}");
    let spent = ws.summary()["spent_total_usd"].as_f64().unwrap();
    assert!(
        (spent - costs.iter().sum::<f64>()).abs() < 1e-12,
        "spent {spent} vs rows {costs:?}"
    );
}

#[test]
fn a_batch_in_progress_holds_its_worst_case_against_the_caps_until_collected() {
    // The batch stays in progress for a few polls: the reservation is what it holds.
    let mock = Mock::start(&["--batch-step-polls", "2"]);
    let (ws, job) = Workspace::with_job(100, &mock.base_url, "");
    let out = ws.run(&["run", &job, "--mode", "batch", "--max-usd", "0.01"]);
    assert_exit(&out, 4);
    // One reservation, written before the batch was created, of the round's worst case.
    let reserved = ws.jsonl("out/result.journal.jsonl.reserved");
    assert_eq!(reserved.len(), 1, "{reserved:?}");
    let id = reserved[0]["id"].as_u64().expect("a reservation id");
    let worst_pico = reserved[0]["worst_pico"]
        .as_u64()
        .expect("a priced worst case");
    let state = ws.batch_state();
    let chunk = &state["chunks"][0];
    assert_eq!(chunk["reservation"]["id"], id, "{chunk}");
    assert_eq!(chunk["reservation"]["worst_pico"], worst_pico, "{chunk}");
    // 100 rows × (prompt + 50 tokens) at gpt-4o-mini's batch prices: about $0.0016.
    let worst = worst_pico as f64 / 1e12;
    assert!((0.001..0.003).contains(&worst), "{worst}");

    // A live run of the same job meanwhile has only the cap less the batch's worst case:
    // room for about ten rows at live prices (twice batch prices), not the hundred the cap
    // alone would let it pay for.
    let live_row_worst = 2.0 * worst / 100.0;
    let cap = format!("{:.8}", worst + 10.0 * live_row_worst);
    let out = ws.run(&["run", &job, "--quiet", "--max-usd", &cap]);
    assert_exit(&out, 3);
    assert!(text(&out).contains("budget"), "{}", text(&out));
    let s = ws.summary();
    let live = s["succeeded"].as_u64().unwrap();
    assert!(
        (1..60).contains(&live),
        "{live} rows answered live beside a batch holding {worst}: {s}"
    );
    let this_run = s["cost_this_run_usd"].as_f64().unwrap();
    assert!(
        this_run + worst <= cap.parse::<f64>().unwrap() + 1e-9,
        "{s}"
    );

    // Once its results are in, the batch's reservation is given back (and the settled
    // reservations file is tidied away).
    let _ = ws.collect_until_done(OPENAI_KEY, &job);
    let path = ws.path("out/result.journal.jsonl.reserved");
    if path.exists() {
        let reserved = ws.jsonl("out/result.journal.jsonl.reserved");
        assert!(
            reserved.iter().any(|l| l["release"].as_u64() == Some(id)),
            "{reserved:?}"
        );
    }
}
