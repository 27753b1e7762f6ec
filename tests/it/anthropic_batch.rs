//! Anthropic's Message Batches as the batch backend, end to end: the real binary submits an
//! Anthropic job to the mock's `/v1/messages/batches` on 127.0.0.1, polls, collects, and
//! writes the output a live run writes; crashes around the create never submit twice.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Output;
use std::time::Duration;

use common::*;
use serde_json::Value;

const KEY: &str = "sk-ant-test-0123456789";
const ANTHROPIC_KEY: (&str, &str) = ("ANTHROPIC_API_KEY", KEY);

/// An HTTP request to the mock's Message Batches routes (they need `x-api-key` and
/// `anthropic-version`); the body of the answer.
fn anthropic_http(mock: &Mock, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(&mock.addr).expect("connect mock");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nx-api-key: {KEY}\r\n\
         anthropic-version: 2023-06-01\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        mock.addr
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default()
}

/// Every message batch the mock has, newest first.
fn batches(mock: &Mock) -> Vec<Value> {
    let body = anthropic_http(mock, "GET", "/v1/messages/batches?limit=1000");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
    v["data"].as_array().unwrap().clone()
}

/// An Anthropic job over `rows.csv`, pointed at `base_url`.
fn job(ws: &Workspace, base_url: &str) -> String {
    ws.write_job(
        "job.toml",
        &JobFile {
            model: "name = \"claude-haiku-4-5\"\nmax_tokens = 50",
            api: &format!("provider = \"anthropic\"\nbase_url = \"{base_url}\""),
            limits: "max_in_flight = 32",
            ..JobFile::default()
        },
    )
}

/// A workspace with `n` rows in rows.csv and the Anthropic job over them; returns it with the
/// job's path.
fn with_job(n: usize, base_url: &str) -> (Workspace, String) {
    let ws = Workspace::new();
    ws.csv_rows(n);
    let job = job(&ws, base_url);
    (ws, job)
}

/// Runs promptmill with the Anthropic key.
fn run(ws: &Workspace, args: &[&str]) -> Output {
    ws.run_env(&[ANTHROPIC_KEY], args)
}

/// Another job, in `other` over its rows.csv, submitted as a batch to `mock`.
fn submit_other_job(other: &Workspace, mock: &Mock) {
    let other_job = job(other, &mock.base_url);
    other.submit_batch(ANTHROPIC_KEY, &other_job);
}

#[test]
fn live_and_batch_give_the_same_rows_at_half_price() {
    let mock = Mock::start(&["--api-key", KEY]);
    let ws = Workspace::new();
    let mut csv = String::from("id,name,color\n");
    for i in 1..=300 {
        let name = if i == 7 {
            "bad [[mock:400]]".to_string()
        } else {
            format!("item {i}")
        };
        csv.push_str(&format!("r{i},{name},color {}\n", i % 5));
    }
    ws.write("rows.csv", &csv);
    let job = job(&ws, &mock.base_url);

    let out = run(&ws, &["run", &job, "--quiet"]);
    assert_exit(&out, 1);
    let live = ws.summary();
    assert_eq!(live["provider"], "anthropic");

    let extra = ["--output", "out/batch.csv", "--batch-max-requests", "120"];
    let out = run(&ws, &batch_wait_args(&job, &extra));
    assert_exit(&out, 1);
    let all = batches(&mock);
    assert_eq!(all.len(), 3, "300 requests in batches of at most 120");
    assert!(all.iter().all(|b| b["processing_status"] == "ended"));
    for line in ws.read("out/batch.batches/r1-1.jsonl").lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let cid = v["custom_id"].as_str().unwrap();
        assert!(cid.starts_with("row-") && cid.len() <= 64, "{cid}");
        assert_eq!(v["params"]["model"], "claude-haiku-4-5");
        assert_eq!(v["params"]["system"], "You are terse.");
        assert_eq!(v["params"]["max_tokens"], 50);
        assert!(v.get("method").is_none() && v.get("body").is_none(), "{v}");
    }

    let batch = ws.json("out/batch.summary.json");
    assert_eq!(
        (batch["mode"].as_str(), batch["provider"].as_str()),
        (Some("batch"), Some("anthropic"))
    );
    assert_eq!(
        (batch["succeeded"].as_u64(), batch["failed"].as_u64()),
        (Some(299), Some(1))
    );
    let a = ws.rows_by_id("out/result.csv", "error");
    let b = ws.rows_by_id("out/batch.csv", "error");
    assert_eq!(a.len(), 300);
    for (id, (st, text, _)) in &a {
        assert_eq!(
            (&b[id].0, &b[id].1),
            (st, text),
            "row {id}: live and batch agree"
        );
    }
    assert!(b["r7"].2.contains("invalid_request_error") || b["r7"].2.contains("HTTP 400"));
    assert_batch_half_of_live(&live, &batch);
    let ids = ws.column("out/batch.csv", "id");
    assert_eq!(ids[..3], ["r1", "r2", "r3"], "input order kept");
}

#[test]
fn errored_and_expired_requests_fail_their_rows_and_canceled_ones_are_resubmitted() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.write(
        "rows.csv",
        "id,name,color\nr1,item 1,red\nr2,bad [[mock:400]],red\nr3,late [[mock:expire]],red\nr4,item 4,red\n",
    );
    let job = job(&ws, &mock.base_url);
    ws.submit_batch(ANTHROPIC_KEY, &job);
    assert_eq!(batches(&mock)[0]["processing_status"], "in_progress");
    let out = run(&ws, &["status", &job]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("in_progress"),
        "{}",
        text(&out)
    );

    let out = ws.collect_until_done(ANTHROPIC_KEY, &job);
    assert_exit(&out, 1);
    assert!(text(&out).contains("ended expired"), "{}", text(&out));
    let rows = ws.rows_by_id("out/result.csv", "error");
    assert_eq!(rows["r1"].0, "ok");
    assert_eq!(rows["r4"].0, "ok");
    assert_eq!(rows["r2"].0, "failed");
    assert!(rows["r2"].2.contains("HTTP 400"), "{:?}", rows["r2"]);
    assert_eq!(rows["r3"].0, "failed");
    assert!(rows["r3"].2.contains("expired"), "{:?}", rows["r3"]);
    let st = ws.batch_state();
    assert_eq!(st["chunks"][0]["status"], "expired");
    assert_eq!(st["chunks"][0]["counts"]["completed"], 2);
    assert_eq!(st["chunks"][0]["counts"]["failed"], 2);

    // A canceled batch: the first half is answered, the rest has no result and goes into
    // the next round.
    let mock = Mock::start(&["--batch-step-polls", "100"]);
    let (ws, job) = with_job(10, &mock.base_url);
    assert_cancel_resubmits_the_rest(
        &ws,
        ANTHROPIC_KEY,
        &job,
        || batches(&mock),
        |id| {
            let path = format!("/v1/messages/batches/{id}/cancel");
            let c: Value = serde_json::from_str(&anthropic_http(&mock, "POST", &path)).unwrap();
            assert_eq!(c["processing_status"], "canceling");
        },
        "processing",
    );
}

#[test]
fn a_crash_before_the_create_submits_once_on_restart() {
    let mock = Mock::start(&[]);
    let (ws, job) = with_job(10, &mock.base_url);
    ws.crash_batch_at(ANTHROPIC_KEY, &job, "before-create");
    assert!(batches(&mock).is_empty());
    let st = ws.batch_state();
    assert_eq!(st["chunks"][0]["create_started"], true);
    assert!(st["chunks"][0]["create_started_at"].as_u64().unwrap() > 0);
    assert!(st["chunks"][0]["batch_id"].is_null());

    assert_restart_submits_once(
        &ws,
        ANTHROPIC_KEY,
        &job,
        || batches(&mock),
        1,
        10,
        "nothing had been created: created now, once",
    );
}

#[test]
fn a_crash_after_the_create_finds_the_batch_instead_of_creating_another() {
    let mock = Mock::start(&[]);
    let (ws, job) = with_job(12, &mock.base_url);
    // A batch of another size, created before: not taken for ours.
    let other = Workspace::new();
    other.csv_rows(11);
    submit_other_job(&other, &mock);

    ws.crash_batch_at(ANTHROPIC_KEY, &job, "after-create");
    assert_eq!(batches(&mock).len(), 2);
    assert!(ws.batch_state()["chunks"][0]["batch_id"].is_null());

    assert_restart_submits_once(
        &ws,
        ANTHROPIC_KEY,
        &job,
        || batches(&mock),
        2,
        12,
        "the batch was found, not created again",
    );
}

#[test]
fn when_the_lost_batch_cannot_be_told_apart_nothing_is_submitted() {
    let mock = Mock::start(&[]);
    let (ws, job) = with_job(8, &mock.base_url);
    ws.crash_batch_at(ANTHROPIC_KEY, &job, "after-create");
    // Meanwhile another job submits a batch of the same size.
    let other = Workspace::new();
    other.csv_rows(8);
    submit_other_job(&other, &mock);
    assert_eq!(batches(&mock).len(), 2);

    let out = run(&ws, &["run", &job, "--mode", "batch"]);
    assert_exit(&out, 3);
    let t = text(&out);
    for b in batches(&mock) {
        assert!(t.contains(b["id"].as_str().unwrap()), "{t}");
    }
    assert!(
        t.contains("create_started") && t.contains("result.batches.json"),
        "{t}"
    );
    assert_eq!(batches(&mock).len(), 2, "nothing submitted");
}

#[test]
fn a_wrong_batch_taken_after_a_restart_is_refused_when_collected() {
    let mock = Mock::start(&[]);
    let (ws, job) = with_job(6, &mock.base_url);
    ws.crash_batch_at(ANTHROPIC_KEY, &job, "before-create");
    // Another job's batch of the same size, with other requests, appears in the window.
    let other = Workspace::new();
    other.write(
        "rows.csv",
        "id,name,color\na,x,1\nb,x,2\nc,x,3\nd,x,4\ne,x,5\nf,x,6\n",
    );
    submit_other_job(&other, &mock);

    // Taken for ours (same size, created since), but its results are not our requests.
    ws.submit_batch(ANTHROPIC_KEY, &job);
    assert_eq!(batches(&mock).len(), 1);
    let out = ws.collect_until_done(ANTHROPIC_KEY, &job);
    assert_exit(&out, 3);
    assert!(
        text(&out).contains("are not for the 6 requests"),
        "{}",
        text(&out)
    );
    assert!(
        !ws.path("out/result.journal.jsonl").exists()
            || ws.read("out/result.journal.jsonl").is_empty()
    );

    // Doing what the message says submits the chunk again.
    let mut st = ws.batch_state();
    st["chunks"][0]["batch_id"] = Value::Null;
    st["chunks"][0]["create_started"] = false.into();
    ws.write("out/result.batches.json", &st.to_string());
    ws.submit_batch(ANTHROPIC_KEY, &job);
    assert_eq!(batches(&mock).len(), 2);
    assert_exit(&ws.collect_until_done(ANTHROPIC_KEY, &job), 0);
    let rows = ws.rows_by_id("out/result.csv", "error");
    assert!(
        rows["r1"].1.starts_with("Mock answer for: Describe item 1"),
        "{:?}",
        rows["r1"]
    );
}

#[test]
fn run_mock_batch_export_and_import_work_for_anthropic_jobs() {
    let (ws, job) = with_job(9, "http://127.0.0.1:9/v1");
    let out = run(&ws, &["run", &job, "--mock", "--mode", "batch"]);
    assert_exit(&out, 0);
    let s = ws.summary();
    assert_eq!(
        (s["succeeded"].as_u64(), s["provider"].as_str()),
        (Some(9), Some("mock"))
    );

    let mock = Mock::start(&[]);
    let (ws, job) = with_job(9, &mock.base_url);
    // What live mode refuses for Anthropic, batch mode refuses too, before sending.
    let out = run(&ws, &["run", &job, "--mode", "batch", "--set", "model.n=2"]);
    assert_exit(&out, 2);
    assert!(text(&out).contains("model.n"), "{}", text(&out));
    assert!(batches(&mock).is_empty());
    let out = run(
        &ws,
        &[
            "export",
            &job,
            "--format",
            "openai-batch",
            "--out",
            "x.jsonl",
        ],
    );
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("anthropic-batch") || text(&out).contains("\"openai\""),
        "{}",
        text(&out)
    );
    let out = run(
        &ws,
        &[
            "export",
            &job,
            "--format",
            "anthropic-batch",
            "--out",
            "in.jsonl",
        ],
    );
    assert_exit(&out, 0);
    assert!(batches(&mock).is_empty(), "export submits nothing");
    let out = run(&ws, &batch_wait_args(&job, &["--output", "out/a.csv"]));
    assert_exit(&out, 0);
    assert_eq!(ws.read("out/a.batches/r1-1.jsonl"), ws.read("in.jsonl"));

    // The results, fetched by other means, imported into a fresh output.
    let id = batches(&mock)[0]["id"].as_str().unwrap().to_string();
    let results = anthropic_http(&mock, "GET", &format!("/v1/messages/batches/{id}/results"));
    assert_eq!(results.lines().count(), 9);
    ws.write("results.jsonl", &results);
    let out = run(
        &ws,
        &["import", &job, "results.jsonl", "--output", "out/b.csv"],
    );
    assert_exit(&out, 0);
    assert_eq!(ws.read("out/a.csv"), ws.read("out/b.csv"));
}
