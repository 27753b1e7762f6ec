//! Rows are known by identity, not position: a nightly job over a file that changes pays only
//! for rows whose request is new, never shows an old answer as current, and sends a request
//! asked for by several rows once. Real processes against a `promptmill mock-server` process,
//! whose own counters say what was sent.

use crate::common;

use std::fs::File;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use common::*;

const JOURNAL: &str = "out/result.journal.jsonl";

/// `id,name,color` lines for the given ids (the name and color follow from the id, so a row
/// keeps its request wherever it moves).
fn rows_text(ids: &[String]) -> String {
    let mut s = String::from("id,name,color\n");
    for id in ids {
        s.push_str(&format!("{id},item {id},color {}\n", id.len() % 7));
    }
    s
}

fn ids(prefix: &str, range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// Runs the job to its end (exit 0) and returns how many requests the mock got meanwhile.
fn run_counting(ws: &Workspace, mock: &Mock, job: &str) -> (u64, String) {
    let before = mock.stat("requests");
    let out = ws.run(&["run", job]);
    assert_exit(&out, 0);
    (mock.stat("requests") - before, stderr(&out))
}

/// The output's rows as (status, output text) in file order, with the summary's counts
/// checked against them.
fn output_checked(ws: &Workspace) -> Vec<(String, String)> {
    let (header, rows) = ws.csv("out/result.csv");
    let (status, output) = (col(&header, "status"), col(&header, "output"));
    let rows: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r[status].clone(), r[output].clone()))
        .collect();
    let count = |s: &str| rows.iter().filter(|r| r.0 == s).count() as u64;
    let summary = ws.summary();
    for (field, status) in [
        ("succeeded", "ok"),
        ("failed", "failed"),
        ("pending", "pending"),
    ] {
        assert_eq!(
            summary[field].as_u64(),
            Some(count(status)),
            "summary {field} vs output rows {status}: {summary}"
        );
    }
    assert_eq!(summary["rows"].as_u64(), Some(rows.len() as u64));
    rows
}

#[test]
fn inserting_reordering_and_replacing_with_a_superset_sends_only_new_rows() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let job = ws.job(&mock.base_url, "");
    let first = ids("r", 1..=1000);
    ws.write("rows.csv", &rows_text(&first));
    let (sent, _) = run_counting(&ws, &mock, &job);
    assert_eq!(sent, 1000);

    // Ten rows inserted at the top: only they are sent.
    let mut grown = ids("top", 1..=10);
    grown.extend(first.iter().cloned());
    ws.write("rows.csv", &rows_text(&grown));
    let (sent, log) = run_counting(&ws, &mock, &job);
    assert_eq!(sent, 10, "{log}");
    assert!(log.contains("matched by input.id"), "{log}");

    // The same rows in reverse order: nothing is sent.
    let mut reversed = grown.clone();
    reversed.reverse();
    ws.write("rows.csv", &rows_text(&reversed));
    let (sent, log) = run_counting(&ws, &mock, &job);
    assert_eq!(sent, 0, "{log}");

    // Replaced by a superset, shuffled, with five new rows in the middle.
    let mut superset: Vec<String> = grown.iter().step_by(2).cloned().collect();
    superset.extend(ids("new", 1..=5));
    superset.extend(grown.iter().skip(1).step_by(2).cloned());
    ws.write("rows.csv", &rows_text(&superset));
    let (sent, _) = run_counting(&ws, &mock, &job);
    assert_eq!(sent, 5);
    let rows = output_checked(&ws);
    assert_eq!(rows.len(), 1015);
    assert!(rows.iter().all(|r| r.0 == "ok" && !r.1.is_empty()));
    assert_eq!(mock.stat("duplicate_prompts"), 0, "no row was paid twice");
}

#[test]
fn without_an_id_rows_are_known_by_content() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let job = ws.write_job(
        "job.toml",
        &JobFile {
            input: "path = \"rows.csv\"",
            api: &format!("base_url = \"{}\"", mock.base_url),
            ..JobFile::default()
        },
    );
    let first = ids("r", 1..=300);
    ws.write("rows.csv", &rows_text(&first));
    assert_eq!(run_counting(&ws, &mock, &job).0, 300);
    let mut grown = ids("top", 1..=3);
    grown.extend(first.iter().rev().cloned());
    ws.write("rows.csv", &rows_text(&grown));
    let (sent, log) = run_counting(&ws, &mock, &job);
    assert_eq!(sent, 3, "{log}");
    assert!(log.contains("matched by content"), "{log}");
    assert_eq!(output_checked(&ws).len(), 303);
}

#[test]
fn duplicate_ids_are_refused_naming_both_lines_before_anything_is_sent() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let job = ws.job(&mock.base_url, "");
    let mut rows = ids("r", 1..=20);
    rows[14] = "r3".into(); // line 16 repeats line 4's id
    ws.write("rows.csv", &rows_text(&rows));
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("rows.csv:16:1: duplicate id \"r3\" in column \"id\": line 4 has the same id"),
        "{err}"
    );
    assert_eq!(mock.stat("requests"), 0);
    assert!(!ws.path(JOURNAL).exists() || ws.read(JOURNAL).is_empty());
}

#[test]
fn identical_requests_in_one_run_are_sent_once_and_shared() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    // By id: five ids, one request.
    let job = ws.job(&mock.base_url, "");
    ws.named_rows(&["same"; 5], "red");
    let (sent, log) = run_counting(&ws, &mock, &job);
    assert_eq!(sent, 1, "{log}");
    let (header, rows) = ws.csv("out/result.csv");
    let (status, output, shared, cost) = (
        col(&header, "status"),
        col(&header, "output"),
        col(&header, "shared_with"),
        col(&header, "cost_usd"),
    );
    assert!(rows
        .iter()
        .all(|r| r[status] == "ok" && r[output] == rows[0][output]));
    assert_eq!(rows[0][shared], "");
    assert_ne!(rows[0][cost], "0.0");
    for r in &rows[1..] {
        assert_eq!((r[shared].as_str(), r[cost].as_str()), ("r1", "0.0"));
    }
    assert_eq!(ws.summary()["succeeded"], 5);
    assert_eq!(
        run_counting(&ws, &mock, &job).0,
        0,
        "a re-run sends nothing"
    );

    // By content: five identical rows are one identity, one request.
    let ws = Workspace::new();
    let job = ws.write_job(
        "job.toml",
        &JobFile {
            input: "path = \"rows.csv\"",
            api: &format!("base_url = \"{}\"", mock.base_url),
            ..JobFile::default()
        },
    );
    ws.write(
        "rows.csv",
        "name,color\nx,red\nx,red\nx,red\nx,red\nx,red\ny,red\n",
    );
    assert_eq!(run_counting(&ws, &mock, &job).0, 2);
    let shared = ws.column("out/result.csv", "shared_with");
    assert_eq!(shared, ["", "1", "1", "1", "1", ""]);
    assert!(output_checked(&ws).iter().all(|r| r.0 == "ok"));
}

/// Starts `promptmill ARGS --quiet` in the background; stderr goes to `log`.
fn spawn(ws: &Workspace, args: &[&str], log: &str) -> Child {
    let log = File::create(ws.path(log)).unwrap();
    let mut args = args.to_vec();
    args.push("--quiet");
    ws.spawn(&args, log)
}

fn journal_lines(ws: &Workspace) -> usize {
    std::fs::read(ws.path(JOURNAL))
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// Lets the run add `n` journal lines, then sends it SIGINT and waits for it (exit 3).
fn interrupt_after(ws: &Workspace, mut child: Child, n: usize, log: &str) {
    let target = journal_lines(ws) + n;
    let deadline = Instant::now() + Duration::from_secs(60);
    while journal_lines(ws) < target {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("run ended ({st}) too early\n{}", ws.read(log));
        }
        assert!(Instant::now() < deadline, "journal stuck\n{}", ws.read(log));
        std::thread::sleep(Duration::from_millis(3));
    }
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let st: ExitStatus = child.wait().unwrap();
    assert_eq!(st.code(), Some(3), "{}", ws.read(log));
}

#[test]
fn after_a_template_change_a_stopped_rerun_shows_no_old_answer_as_ok() {
    let mock = Mock::start(&["--latency-ms", "20"]);
    let ws = Workspace::new();
    let job_with = |user: &str| {
        ws.write_job(
            "job.toml",
            &JobFile {
                prompt: user,
                api: &format!("base_url = \"{}\"", mock.base_url),
                limits: "max_in_flight = 4",
                ..JobFile::default()
            },
        )
    };
    ws.write("rows.csv", &rows_text(&ids("r", 1..=400)));
    let job = job_with("user = \"Describe {{ name }} in {{ color }}.\"");
    let (sent, _) = run_counting(&ws, &mock, &job);
    assert_eq!(sent, 400);

    let job = job_with("user = \"Say something new about {{ name }}.\"");
    let before = mock.stat("ok");
    interrupt_after(
        &ws,
        spawn(&ws, &["run", &job], "rerun.log"),
        20,
        "rerun.log",
    );
    let answered_now = mock.stat("ok") - before;
    let rows = output_checked(&ws);
    let ok = rows.iter().filter(|r| r.0 == "ok").count() as u64;
    assert!(ok >= 20, "{ok}");
    assert_eq!(ok, answered_now, "only this run's answers are ok");
    assert_eq!(
        rows.iter().filter(|r| r.0 == "pending").count() as u64,
        400 - ok
    );
    let summary = ws.summary();
    assert_eq!(summary["status"], "interrupted");
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{} rows not run", 400 - ok)),
        "{message}"
    );
}

#[test]
fn answers_from_a_mock_run_are_not_ok_in_a_stopped_real_run() {
    let mock = Mock::start(&["--latency-ms", "20"]);
    let ws = Workspace::new();
    let job = ws.write_job(
        "job.toml",
        &JobFile {
            api: &format!("base_url = \"{}\"", mock.base_url),
            limits: "max_in_flight = 4",
            ..JobFile::default()
        },
    );
    ws.write("rows.csv", &rows_text(&ids("r", 1..=300)));
    let out = ws.run(&["run", &job, "--mock"]);
    assert_exit(&out, 0);
    assert_eq!(mock.stat("requests"), 0, "the built-in mock answered");

    interrupt_after(&ws, spawn(&ws, &["run", &job], "real.log"), 15, "real.log");
    let rows = output_checked(&ws);
    let ok = rows.iter().filter(|r| r.0 == "ok").count() as u64;
    assert_eq!(ok, mock.stat("ok"), "only the real answers are ok");
    assert!(ok < 300);
}
