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
