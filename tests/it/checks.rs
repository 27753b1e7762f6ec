//! `[[checks]]`: every answer is checked as the output is written; a row whose answer fails
//! a check is `rejected` (not `ok`, not `failed`), with the reason in its `check_<name>`
//! column; the summary counts each check's passes; `run --recheck` checks the journal's
//! answers again under edited checks without sending anything.

use crate::common;

use common::*;

/// The mock echoes each prompt (`[[mock:echo]]`), so the answers are the `copy` column.
const PROMPT: &str = "user = \"{{ copy }} [[mock:echo]]\"";

fn job(ws: &Workspace, checks: &str) -> String {
    let input = "path = \"rows.csv\"\nid = \"id\"";
    let text = JobFile {
        input,
        prompt: PROMPT,
        output: "path = \"out/result.csv\"",
        ..JobFile::default()
    }
    .toml();
    ws.write("job.toml", &format!("{text}{checks}"))
        .to_string_lossy()
        .into_owned()
}

const CHECKS: &str = r#"
[[checks]]
name = "len"
max_chars = 50

[[checks]]
name = "banned"
never_contain = ["waterproof"]

[[checks]]
name = "facts"
no_new_terms = true
columns = ["facts"]

[[checks]]
name = "dup"
unique = true
"#;

fn rows(ws: &Workspace) {
    ws.write(
        "rows.csv",
        "id,copy,facts\n\
         r1,See the old town of Lisbon,Lisbon tour\n\
         r2,A waterproof jacket for Lisbon,Lisbon jacket\n\
         r3,Discover every corner of the old town of Lisbon by tram,Lisbon tram\n\
         r4,Then take the train to Porto,Lisbon trains\n\
         r5,See the old town of Lisbon,Lisbon tour\n",
    );
}

fn by_id(ws: &Workspace) -> std::collections::HashMap<String, Vec<String>> {
    let (header, rows) = ws.csv("out/result.csv");
    let wanted = [
        "status",
        "check_len",
        "check_banned",
        "check_facts",
        "check_dup",
    ];
    let cols: Vec<usize> = wanted.iter().map(|c| col(&header, c)).collect();
    rows.iter()
        .map(|r| {
            (
                r[col(&header, "id")].clone(),
                cols.iter().map(|&i| r[i].clone()).collect(),
            )
        })
        .collect()
}

#[test]
fn answers_that_fail_a_check_are_rejected_with_reasons_and_counted() {
    let ws = Workspace::new();
    rows(&ws);
    let job = job(&ws, CHECKS);
    let out = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    // Answered, but not all acceptable: exit 1, as for failed rows.
    assert_exit(&out, 1);
    let got = by_id(&ws);
    assert_eq!(got["r1"], ["ok", "pass", "pass", "pass", "pass"]);
    let r2 = &got["r2"];
    assert_eq!(r2[0], "rejected");
    assert!(
        r2[2].starts_with("fail: ") && r2[2].contains("waterproof"),
        "{r2:?}"
    );
    let r3 = &got["r3"];
    assert_eq!(r3[0], "rejected");
    assert!(
        r3[1].starts_with("fail: ") && r3[1].contains("50"),
        "{r3:?}"
    );
    let r4 = &got["r4"];
    assert_eq!(r4[0], "rejected");
    assert!(r4[3].contains("Porto"), "{r4:?}");
    // The same answer again: the first in input order is kept, the second flagged.
    let r5 = &got["r5"];
    assert_eq!(r5[0], "rejected");
    assert!(
        r5[4].starts_with("fail: ") && r5[4].contains("row 1"),
        "{r5:?}"
    );

    let s = stdout_json(&out);
    assert_eq!(s["succeeded"], 1, "{s}");
    assert_eq!(s["rejected"], 4, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    let tally: Vec<(String, u64, u64)> = s["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["passed"].as_u64().unwrap(),
                c["failed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tally,
        [
            ("len".to_string(), 4, 1),
            ("banned".to_string(), 4, 1),
            ("facts".to_string(), 4, 1),
            ("dup".to_string(), 4, 1),
        ]
    );
    assert!(stderr(&out).contains("1 succeeded, 0 failed, 0 pending, 4 rejected by checks"));
    assert!(
        stderr(&out).contains("len 4/5 passed (80.0%)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn recheck_applies_edited_checks_to_the_answers_and_sends_nothing() {
    let ws = Workspace::new();
    rows(&ws);
    let job_path = job(&ws, CHECKS);
    assert_exit(&ws.run(&["run", &job_path, "--mock", "--quiet"]), 1);
    // Only a looser length check now. No mock is running and no key is set: a request
    // could not even be made.
    let job_path = job(&ws, "\n[[checks]]\nname = \"len\"\nmax_chars = 80\n");
    let out = ws.run(&["run", &job_path, "--recheck", "--mock", "--json"]);
    assert_exit(&out, 0);
    let s = stdout_json(&out);
    assert_eq!(s["requests"], 0, "{s}");
    assert_eq!(s["succeeded"], 5, "{s}");
    assert_eq!(s["mode"], "recheck", "{s}");
    let (header, rows) = ws.csv("out/result.csv");
    assert!(!header.iter().any(|h| h == "check_banned"), "{header:?}");
    assert!(rows.iter().all(|r| r[col(&header, "check_len")] == "pass"));
}

#[test]
fn recheck_leaves_rows_without_an_answer_pending() {
    let ws = Workspace::new();
    rows(&ws);
    let job_path = job(&ws, CHECKS);
    let out = ws.run(&["run", &job_path, "--recheck", "--json"]);
    assert_exit(&out, 1);
    let s = stdout_json(&out);
    assert_eq!(s["pending"], 5, "{s}");
    assert_eq!(s["requests"], 0, "{s}");
    assert!(
        stderr(&out).contains("run without --recheck to send them"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_check_stops_the_job_before_anything_is_sent() {
    let ws = Workspace::new();
    rows(&ws);
    let job_path = job(
        &ws,
        "\n[[checks]]\nname = \"urls\"\nnot_regex = \"https?://(\"\n",
    );
    let out = ws.run(&["run", &job_path, "--mock", "--quiet"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("job.toml") && err.contains("checks[0] (urls)"),
        "{err}"
    );
    assert!(!ws.path("out/result.journal.jsonl").exists());
}

#[test]
fn batch_mode_checks_its_answers_the_same_way() {
    let ws = Workspace::new();
    rows(&ws);
    let job_path = job(&ws, CHECKS);
    let out = ws.run_env(
        &[("OPENAI_API_KEY", "sk-test-0000")],
        &batch_wait_args(&job_path, &["--mock", "--quiet", "--json"]),
    );
    assert_exit(&out, 1);
    let s = stdout_json(&out);
    assert_eq!(
        (s["succeeded"].as_u64(), s["rejected"].as_u64()),
        (Some(1), Some(4)),
        "{s}"
    );
    assert_eq!(by_id(&ws)["r2"][0], "rejected");
}

/// A template that answers (through the echoing mock) with the `copy` column, or, when sent
/// again with feedback, with a short line.
const FIXABLE: &str =
    "user = \"{% if check_feedback %}Short and fixed.{% else %}{{ copy }}{% endif %} [[mock:echo]]\"";

fn job_with(ws: &Workspace, prompt: &str, top: &str, checks: &str) -> String {
    let text = JobFile {
        input: "path = \"rows.csv\"\nid = \"id\"",
        prompt,
        output: "path = \"out/result.csv\"",
        ..JobFile::default()
    }
    .toml();
    ws.write("job.toml", &format!("{top}\n{text}{checks}"))
        .to_string_lossy()
        .into_owned()
}

const LEN_ONLY: &str = "\n[[checks]]\nname = \"len\"\nmax_chars = 50\n";

#[test]
fn rejected_rows_are_sent_again_with_feedback_until_they_pass() {
    let ws = Workspace::new();
    rows(&ws);
    let job = job_with(&ws, FIXABLE, "regenerate = 2", LEN_ONLY);
    let out = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&out, 0);
    let s = stdout_json(&out);
    // Only r3 is too long; its second answer passes. (r1 and r5 ask the same: one request.)
    assert_eq!(s["regenerated_rows"], 1, "{s}");
    assert_eq!(s["regeneration_requests"], 1, "{s}");
    assert_eq!(s["requests"], 5, "{s}");
    assert_eq!(
        (s["succeeded"].as_u64(), s["rejected"].as_u64()),
        (Some(5), None),
        "{s}"
    );
    assert!(s["regeneration_cost_usd"].as_f64().unwrap() > 0.0, "{s}");
    let (header, rows) = ws.csv("out/result.csv");
    let r3 = rows.iter().find(|r| r[col(&header, "id")] == "r3").unwrap();
    assert!(
        r3[col(&header, "output")].starts_with("Short and fixed."),
        "{r3:?}"
    );
    assert_eq!(r3[col(&header, "status")], "ok");
    // The journal keeps both answers; the new one stands for the row's own request.
    let journal = ws.read("out/result.journal.jsonl");
    let r3_lines: Vec<serde_json::Value> = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["id"] == "r3" && v.get("status").is_some())
        .collect();
    assert_eq!(r3_lines.len(), 2, "{journal}");
    assert_eq!(r3_lines[1]["regen_of"], r3_lines[0]["hash"]);
    assert_eq!(r3_lines[1]["regenerated"], 1);
    // Run again: every row is done, the regenerated one included.
    let again = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&again, 0);
    assert_eq!(stdout_json(&again)["requests"], 0);
}

#[test]
fn a_row_that_never_passes_gets_n_new_answers_and_stays_rejected() {
    let ws = Workspace::new();
    rows(&ws);
    // No check_feedback in the template: the feedback is appended to the prompt, which the
    // mock echoes, so the answer only grows.
    let job = job_with(&ws, PROMPT, "regenerate = 2", LEN_ONLY);
    let out = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&out, 1);
    let s = stdout_json(&out);
    assert_eq!(s["regenerated_rows"], 1, "{s}");
    assert_eq!(s["regeneration_requests"], 2, "{s}");
    assert_eq!(s["requests"], 6, "{s}");
    assert_eq!(s["rejected"], 1, "{s}");
    let (header, rows) = ws.csv("out/result.csv");
    let r3 = rows.iter().find(|r| r[col(&header, "id")] == "r3").unwrap();
    assert_eq!(r3[col(&header, "status")], "rejected");
    // The last attempt's answer is kept: the prompt it echoes carries the feedback twice
    // over (the second attempt was told about the first one's failure).
    let answer = &r3[col(&header, "output")];
    assert!(answer.contains("did not pass these checks"), "{answer}");
    assert!(answer.contains("- len: "), "{answer}");
    // A later run does not pay for more attempts than `regenerate` allows in all.
    let again = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&again, 1);
    assert_eq!(stdout_json(&again)["requests"], 0);
}

#[test]
fn regenerate_without_checks_is_refused() {
    let ws = Workspace::new();
    rows(&ws);
    let job = job_with(&ws, PROMPT, "regenerate = 1", "");
    let out = ws.run(&["run", &job, "--mock", "--quiet"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("regenerate"), "{}", stderr(&out));
    let out = ws.run(&["run", &job, "--mock", "--quiet", "--regenerate", "11"]);
    assert_exit(&out, 2);
}

#[test]
fn regeneration_stops_at_the_per_run_cap_and_spends_no_more() {
    let ws = Workspace::new();
    let mut csv = String::from("id,copy,facts\n");
    for i in 0..30 {
        csv.push_str(&format!(
            "r{i},This is a rather long line of copy number {i} that never fits,x\n"
        ));
    }
    ws.write("rows.csv", &csv);
    // Every answer stays too long (the feedback is appended and echoed): without the cap
    // each row would get two new answers.
    let job = job_with(
        &ws,
        PROMPT,
        "regenerate = 2",
        &format!("\n[budget]\nmax_usd_per_run = 0.0012\n{LEN_ONLY}"),
    );
    let out = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&out, 3);
    let s = stdout_json(&out);
    assert_eq!(s["status"], "budget", "{s}");
    let spent = s["cost_this_run_usd"].as_f64().unwrap();
    assert!(spent > 0.0 && spent <= 0.0012, "{s}");
    let regen = s["regeneration_requests"].as_u64().unwrap();
    assert!(regen > 0 && regen < 60, "{s}");
    // What the summary counts is what went out: first answers plus new ones.
    assert_eq!(s["requests"].as_u64().unwrap(), 30 + regen, "{s}");
    assert_eq!(s["rejected"], 30, "{s}");
}

#[test]
fn the_estimate_lists_the_checks_and_prices_regeneration() {
    let ws = Workspace::new();
    rows(&ws);
    let job = job_with(&ws, PROMPT, "regenerate = 2", CHECKS);
    let out = ws.run(&["estimate", &job, "--json", "--assume-reject-rate", "0.5"]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    assert_eq!(
        e["checks"],
        serde_json::json!(["len", "banned", "facts", "dup"])
    );
    let g = &e["regeneration"];
    // r1 and r5 ask the same: 4 requests × (0.5 + 0.25) = 3 expected attempts; at most
    // 4 × 2.
    assert_eq!(
        (e["requests"].as_u64(), e["shared"].as_u64()),
        (Some(4), Some(1)),
        "{e}"
    );
    assert_eq!(g["expected_requests"], 3, "{e}");
    assert_eq!(g["max_requests"], 8, "{e}");
    let (exp, max) = (
        g["expected_usd"].as_f64().unwrap(),
        g["max_usd"].as_f64().unwrap(),
    );
    let first = e["cost"]["expected_usd"].as_f64().unwrap();
    assert!((exp - first * 0.75).abs() < 1e-9, "{e}");
    assert!(max >= exp && max > 0.0, "{e}");
    assert!(stderr(&out).contains("at 50% rejected"), "{}", stderr(&out));
    // Nothing about regeneration without it.
    let job = job_with(&ws, PROMPT, "", CHECKS);
    let e = stdout_json(&ws.run(&["estimate", &job, "--json"]));
    assert!(e.get("regeneration").is_none(), "{e}");
}
