//! The judge and regeneration in batch mode: once every answer is in, each review round
//! (verdicts, then new attempts of the rejected rows, then verdicts on those …) goes to the
//! provider's Batch API as batches of its own, `collect` writing the next round when the
//! last one is in. The output is the live run's: same statuses, same judge columns, same
//! regenerated answers, at batch prices; a kill at any point never sends or pays twice.
//!
//! The mock echoes the prompt, so an answer carries the `[[mock:score:N]]` its row asks the
//! judge for; a row sent again with feedback asks for 9. The check bans "cheap", which
//! r3's copy has whatever it is told, so r3 ends rejected after its 2 new attempts.

use crate::common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PROMPT: &str = "user = \"{% if check_feedback %}Better {{ copy }}: {{ check_feedback }} \
                      [[mock:score:9]]{% else %}{{ copy }} [[mock:score:{{ score }}]]{% endif %} \
                      [[mock:echo]]\"";

const REVIEW: &str = "\n[[checks]]\nname = \"banned\"\nnever_contain = [\"cheap\"]\n\
                      \n[judge]\nuser = \"Rate this ad line from 1 to 10: {{ answer }}\"\n\
                      min_score = 5\n\n[budget]\nmax_usd = 0.5\n";

/// What the review of these rows sends: 4 answers; verdicts on r1, r2, r4 (r3 fails the
/// check); new attempts for r2, r4 (judged low) and r3; verdicts on r2 and r4; r3's second
/// new attempt; no third verdict round (r3 still fails the check).
const ANSWERS: u64 = 4;
const VERDICTS: u64 = 5;
const ATTEMPTS: u64 = 4;
const STATUSES: [(&str, &str); 4] = [("r1", "ok"), ("r2", "ok"), ("r3", "rejected"), ("r4", "ok")];
/// The cap of every job here.
const CAP: f64 = 0.5;

fn rows(ws: &Workspace) {
    ws.write(
        "rows.csv",
        "id,copy,score\n\
         r1,Trail shoe with a grippy sole,8\n\
         r2,Rain jacket in three colours,3\n\
         r3,A cheap steel bottle,6\n\
         r4,Wool socks for hiking,2\n",
    );
}

/// The job over rows.csv with checks, a judge, `regenerate = 2` and a cap; `model` and `api`
/// are its `[model]` and `[api]` sections.
fn job(ws: &Workspace, model: &str, api: &str) -> String {
    let text = JobFile {
        prompt: PROMPT,
        model,
        api,
        ..JobFile::default()
    }
    .toml();
    ws.write("job.toml", &format!("regenerate = 2\n{text}{REVIEW}"))
        .to_string_lossy()
        .into_owned()
}

/// The columns a live and a batch run must agree on (everything but money and timing).
const SAME: [&str; 9] = [
    "id",
    "status",
    "output",
    "check_banned",
    "judge_score",
    "judge_reason",
    "judge_prompt_tokens",
    "judge_completion_tokens",
    "prompt_tokens",
];

/// The rows of a CSV output, each as its [`SAME`] columns.
fn same_columns(ws: &Workspace, rel: &str) -> Vec<Vec<String>> {
    let (h, rows) = ws.csv(rel);
    rows.iter()
        .map(|r| SAME.iter().map(|c| r[col(&h, c)].clone()).collect())
        .collect()
}

/// Asserts the batch output at `batch` is the live one at `live` (same rows, statuses,
/// answers, verdicts), each answer and verdict at half the live price, and the summaries
/// agree on what the review did.
fn assert_batch_is_live(ws: &Workspace, live: &str, batch: &str) {
    assert_eq!(same_columns(ws, batch), same_columns(ws, live));
    let (h, rows) = ws.csv(batch);
    let got: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r[col(&h, "id")].clone(), r[col(&h, "status")].clone()))
        .collect();
    let want: Vec<(String, String)> = STATUSES
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    let r2 = &rows[1];
    assert!(
        r2[col(&h, "output")].starts_with("Better Rain jacket")
            && r2[col(&h, "output")].contains("- judge: score 3 below 5"),
        "{r2:?}"
    );
    assert_eq!(r2[col(&h, "judge_score")], "9");
    for column in ["cost_usd", "judge_cost_usd"] {
        let (l, b) = (ws.column(live, column), ws.column(batch, column));
        for (l, b) in l.iter().zip(&b) {
            let (l, b) = (
                l.parse::<f64>().unwrap_or(0.0),
                b.parse::<f64>().unwrap_or(0.0),
            );
            assert!((b * 2.0 - l).abs() < 1e-12, "{column}: batch {b}, live {l}");
        }
    }
    let summary = |rel: &str| ws.json(&rel.replace(".csv", ".summary.json"));
    let (l, b) = (summary(live), summary(batch));
    assert_eq!(b["mode"], "batch");
    for key in [
        "succeeded",
        "rejected",
        "failed",
        "pending",
        "regenerated_rows",
        "regeneration_requests",
        "judge_requests",
    ] {
        assert_eq!(l[key], b[key], "{key}: live {l} batch {b}");
    }
    assert_eq!(b["judge_requests"], VERDICTS, "{b}");
    assert_eq!(b["regeneration_requests"], ATTEMPTS, "{b}");
    assert_eq!(b["regenerated_rows"], 3, "{b}");
    assert_eq!(b["requests"], ANSWERS + VERDICTS + ATTEMPTS, "{b}");
    assert_eq!(b["judge"]["judged"], 3, "{b}");
    for key in [
        "judge_cost_this_run_usd",
        "regeneration_cost_usd",
        "cost_this_run_usd",
    ] {
        let (lv, bv) = (l[key].as_f64().unwrap(), b[key].as_f64().unwrap());
        assert!(bv > 0.0 && (bv * 2.0 - lv).abs() < 1e-12, "{key}: {b}");
    }
    let spent = b["spent_total_usd"].as_f64().unwrap();
    assert!(
        (spent - b["cost_this_run_usd"].as_f64().unwrap()).abs() < 1e-12,
        "every reservation settled: {b}"
    );
    assert!(spent <= CAP, "{b}");
}

#[test]
fn a_batch_job_is_judged_and_regenerated_as_a_live_one_is() {
    let ws = Workspace::new();
    rows(&ws);
    let job = job(&ws, "name = \"gpt-4o-mini\"\nmax_tokens = 200", "");
    let out = ws.run(&["run", &job, "--mock", "--quiet", "--output", "out/live.csv"]);
    assert_exit(&out, 1);
    let out = ws.run(&[
        "run",
        &job,
        "--mock",
        "--mode",
        "batch",
        "--output",
        "out/batch.csv",
    ]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(!err.contains("live mode only"), "{err}");
    assert!(err.contains("rejected by checks or the judge"), "{err}");
    assert_batch_is_live(&ws, "out/live.csv", "out/batch.csv");

    // Each round is its own batch input: r1 holds the answers, r2 the verdicts (priced and
    // asked with the judge's prompt), r3 the new attempts with their feedback.
    let lines = |rel: &str| -> Vec<Value> {
        ws.read(rel)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let verdicts = lines("out/batch.batches/r2-1.jsonl");
    assert_eq!(verdicts.len(), 3);
    assert!(verdicts.iter().all(|v| v["body"]["messages"][0]["content"]
        .as_str()
        .unwrap()
        .starts_with("Rate this ad line")));
    let attempts = lines("out/batch.batches/r3-1.jsonl");
    assert_eq!(attempts.len(), 3);
    let state = ws.json("out/batch.batches.json");
    let kinds: Vec<&str> = state["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["judge", "regenerate", "judge", "regenerate", "judge"],
        "{state}"
    );

    // Everything is collected: collecting again sends and changes nothing.
    let journal = ws.read("out/batch.journal.jsonl");
    let out = ws.run(&["collect", &job, "--mock", "--output", "out/batch.csv"]);
    assert_exit(&out, 1);
    assert_eq!(ws.read("out/batch.journal.jsonl"), journal);
}

/// Every batch an OpenAI-style mock has, newest first.
fn openai_batches(mock: &Mock) -> Vec<Value> {
    let body = http(&mock.addr, "GET", "/v1/batches?limit=100");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
    v["data"].as_array().unwrap().clone()
}

#[test]
fn anthropic_message_batches_judge_and_regenerate_too() {
    const KEY: &str = "sk-ant-test-0123456789";
    let mock = Mock::start(&["--api-key", KEY]);
    let ws = Workspace::new();
    rows(&ws);
    let job = job(
        &ws,
        "name = \"claude-haiku-4-5\"\nmax_tokens = 200",
        &format!("provider = \"anthropic\"\nbase_url = \"{}\"", mock.base_url),
    );
    let key = [("ANTHROPIC_API_KEY", KEY)];
    let out = ws.run_env(&key, &["run", &job, "--quiet", "--output", "out/live.csv"]);
    assert_exit(&out, 1);
    let out = ws.run_env(
        &key,
        &batch_wait_args(&job, &["--quiet", "--output", "out/batch.csv"]),
    );
    assert_exit(&out, 1);
    assert_batch_is_live(&ws, "out/live.csv", "out/batch.csv");
    let verdict: Value = serde_json::from_str(
        ws.read("out/batch.batches/r2-1.jsonl")
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(verdict["params"]["model"], "claude-haiku-4-5");
    assert!(verdict["params"]["system"]
        .as_str()
        .unwrap()
        .contains("JSON schema"));
}

#[test]
fn a_collect_killed_in_a_review_round_goes_on_without_sending_or_paying_twice() {
    // The reference: the same job run in batch mode from start to end, untouched, on a
    // mock of its own.
    let ref_mock = Mock::start(&[]);
    let reference = Workspace::new();
    rows(&reference);
    let ref_api = format!("base_url = \"{}\"", ref_mock.base_url);
    let ref_job = job(
        &reference,
        "name = \"gpt-4o-mini\"\nmax_tokens = 200",
        &ref_api,
    );
    assert_exit(&reference.run(&batch_wait_args(&ref_job, &["--quiet"])), 1);

    let mock = Mock::start(&["--batch-step-polls", "2"]);
    let ws = Workspace::new();
    rows(&ws);
    let api = format!("base_url = \"{}\"", mock.base_url);
    let job = job(&ws, "name = \"gpt-4o-mini\"\nmax_tokens = 200", &api);
    ws.submit_batch(OPENAI_KEY, &job);
    let collect = ["collect", job.as_str(), "--wait", "--poll-secs", "0.02"];
    let crash = |point: &str| {
        let out = ws.run_env(&[OPENAI_KEY, ("PROMPTMILL_TEST_CRASH_AT", point)], &collect);
        assert_exit(&out, 101);
    };
    // Killed after the answers are journaled, then after the first verdicts are, each time
    // before the batch is recorded as collected; then killed after the next round is
    // written, before it is submitted.
    crash("after-ingest");
    crash("after-review-ingest");
    let state = ws.batch_state();
    assert_eq!(state["reviews"][0]["kind"], "judge", "{state}");
    assert!(state["chunks"][1]["ingest_from"].is_u64(), "{state}");
    crash("after-review-write");

    // Then SIGKILLed each time a new round's batch shows up at the provider, until a
    // collect gets to the end.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kills = 0;
    loop {
        let before = openai_batches(&mock).len();
        let mut child = ws.spawn(&collect, Stdio::null());
        let ended = loop {
            assert!(Instant::now() < deadline, "collect never finished");
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if openai_batches(&mock).len() > before {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if let Some(status) = ended {
            assert_eq!(status.code(), Some(1), "rows end ok or rejected");
            break;
        }
    }
    assert!(kills >= 2, "killed in {kills} review rounds");

    // Nothing was asked twice: every request the provider ran is one the review needed.
    let ran: u64 = openai_batches(&mock)
        .iter()
        .map(|b| b["request_counts"]["total"].as_u64().unwrap())
        .sum();
    assert_eq!(ran, ANSWERS + VERDICTS + ATTEMPTS);
    for stat in [
        "distinct_prompts",
        "duplicate_prompts",
        "prompt_tokens",
        "completion_tokens",
    ] {
        assert_eq!(mock.stat(stat), ref_mock.stat(stat), "{stat}");
    }
    let (h, rows) = ws.csv("out/result.csv");
    let (rh, reference_rows) = reference.csv("out/result.csv");
    assert_eq!(h, rh);
    assert_eq!(rows, reference_rows, "the output of an untouched run");
    // Nothing was paid twice: what the journal spent is what the untouched run spent, and
    // every reservation is settled.
    let (s, r) = (ws.summary(), reference.summary());
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["rejected"], 1, "{s}");
    let spent = s["spent_total_usd"].as_f64().unwrap();
    assert!(
        (spent - r["spent_total_usd"].as_f64().unwrap()).abs() < 1e-12,
        "{s} {r}"
    );
    assert!(
        !ws.path("out/result.journal.jsonl.reserved").exists()
            || ws
                .read("out/result.journal.jsonl.reserved")
                .trim()
                .is_empty()
    );
    // r3's second attempt asks what its first asked (the same feedback), so lines are told
    // apart by their attempt too.
    let mut lines: Vec<String> = ws
        .jsonl("out/result.journal.jsonl")
        .iter()
        .map(|v| format!("{} {} {}", v["id"], v["hash"], v["regenerated"]))
        .collect();
    let n = lines.len();
    assert_eq!(n, reference.jsonl("out/result.journal.jsonl").len());
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), n, "a journal line written twice");
}

#[test]
fn a_review_round_that_could_cross_the_cap_sends_only_what_fits() {
    let ws = Workspace::new();
    let mut csv = String::from("id,copy,score\n");
    for i in 0..30 {
        csv.push_str(&format!("r{i},Line of copy number {i},2\n"));
    }
    ws.write("rows.csv", &csv);
    let job = job(&ws, "name = \"gpt-4o-mini\"\nmax_tokens = 200", "");
    // Room for the answers' worst case (30 × 200 tokens at batch prices, about $0.0019),
    // which cost far less, and then for part of the verdicts' worst case (300 tokens each).
    let out = ws.run(&[
        "run",
        &job,
        "--mock",
        "--mode",
        "batch",
        "--quiet",
        "--json",
        "--max-usd",
        "0.0025",
    ]);
    assert_exit(&out, 3);
    let s = stdout_json(&out);
    assert_eq!(s["status"], "budget", "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("budget.max_usd_total"),
        "{s}"
    );
    let spent = s["spent_total_usd"].as_f64().unwrap();
    assert!(spent > 0.0 && spent <= 0.0025, "{s}");
    let judged = s["judge_requests"].as_u64().unwrap();
    assert!(judged > 0 && judged < 30, "a round cut short: {s}");
    assert_eq!(
        s["succeeded"].as_u64().unwrap()
            + s["pending"].as_u64().unwrap()
            + s["rejected"].as_u64().unwrap(),
        30,
        "{s}"
    );
}
