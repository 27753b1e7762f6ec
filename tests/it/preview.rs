//! Previews (`run --limit N`, `run --sample N --seed S`): only the chosen rows are sent,
//! shown with their answers, journaled so the full run does not pay for them again; the
//! other rows stay pending.

use crate::common;

use std::collections::BTreeSet;

use common::*;

/// The ids of the output's `ok` rows, and how many rows are `pending`.
fn ok_and_pending(ws: &Workspace) -> (BTreeSet<String>, usize) {
    let rows = ws.rows_by_id("out/result.csv", "name");
    let ok = rows
        .iter()
        .filter(|(_, (status, _, _))| status == "ok")
        .map(|(id, _)| id.clone())
        .collect();
    let pending = rows.values().filter(|(s, _, _)| s == "pending").count();
    (ok, pending)
}

#[test]
fn a_limit_sends_the_first_rows_and_the_full_run_only_the_rest() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(20, &mock.base_url, "");
    let out = ws.run(&["run", &job, "--limit", "5"]);
    assert_exit(&out, 0);
    assert_eq!(mock.stat("requests"), 5, "{}", text(&out));
    let (ok, pending) = ok_and_pending(&ws);
    let first: BTreeSet<String> = (1..=5).map(|i| format!("r{i}")).collect();
    assert_eq!((ok, pending), (first, 15));
    // One block per row sent, with its cells and its answer; the projection from its cost.
    let err = stderr(&out);
    for i in 1..=5 {
        assert!(err.contains(&format!("── row {i} (id r{i}) ")), "{err}");
        assert!(err.contains(&format!("  name    item {i}\n")), "{err}");
    }
    assert!(!err.contains("(id r6)"), "{err}");
    assert_eq!(err.matches("  answer  ").count(), 5, "{err}");
    assert!(
        err.contains("projection for the 15 rows still to send: $"),
        "{err}"
    );
    let summary = ws.summary();
    assert_eq!(summary["status"], "preview", "{summary}");
    assert_eq!(
        (summary["pending"].as_u64(), summary["exit_code"].as_i64()),
        (Some(15), Some(0))
    );

    // The full run sends the 15 others, and none of the 5 again.
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 0);
    assert_eq!(mock.stat("requests"), 20, "{}", text(&out));
    assert_eq!(mock.stat("duplicate_prompts"), 0);
    assert_complete_output(&ws, 20);
}

/// Runs `--sample 3 --seed SEED` over `rows.csv` written as `lines` (after the header) in a
/// fresh workspace; returns the ids it sent.
fn sample(mock: &Mock, lines: &[String], seed: &str) -> BTreeSet<String> {
    let ws = Workspace::new();
    ws.write(
        "rows.csv",
        &format!("id,name,color\n{}\n", lines.join("\n")),
    );
    let job = ws.job(&mock.base_url, "");
    let before = mock.stat("requests");
    let out = ws.run(&["run", &job, "--sample", "3", "--seed", seed]);
    assert_exit(&out, 0);
    assert_eq!(mock.stat("requests") - before, 3, "{}", text(&out));
    let (ok, pending) = ok_and_pending(&ws);
    assert_eq!((ok.len(), pending), (3, lines.len() - 3), "{}", text(&out));
    ok
}

#[test]
fn a_sample_picks_the_same_rows_with_the_same_seed_and_others_with_another() {
    let mock = Mock::start(&[]);
    let lines: Vec<String> = (1..=40)
        .map(|i| format!("r{i},item {i},color {}", i % 7))
        .collect();
    let seven = sample(&mock, &lines, "7");
    assert_eq!(sample(&mock, &lines, "7"), seven);
    // The rows are known by their identity, not their place: shuffled, the same pick.
    let reversed: Vec<String> = lines.iter().rev().cloned().collect();
    assert_eq!(sample(&mock, &reversed, "7"), seven);
    assert_ne!(sample(&mock, &lines, "8"), seven);
}

#[test]
fn the_preview_block_cuts_long_cells_and_defuses_control_characters() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let long = "word ".repeat(60);
    ws.write(
        "rows.csv",
        &format!("id,name,color\nr1,\"{long}\",\"red\u{1b}[31m\nblue\"\nr2,b,c\n"),
    );
    let job = ws.job(&mock.base_url, "");
    let out = ws
        .command()
        .env("OPENAI_API_KEY", TEST_KEY)
        .env("COLUMNS", "60")
        .args(["run", &job, "--limit", "1"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(
        !err.contains('\u{1b}'),
        "an escape reached the terminal: {err:?}"
    );
    assert!(err.contains("  color   red\u{FFFD}[31m blue\n"), "{err}");
    let name = err
        .lines()
        .find(|l| l.starts_with("  name "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(name.ends_with('…'), "{name}");
    assert_eq!(name.chars().count(), 60, "{name}");
    let answer = err.lines().find(|l| l.starts_with("  answer ")).unwrap();
    assert!(answer.chars().count() <= 60, "{answer}");
}

#[test]
fn a_preview_stops_at_the_budget_cap_like_any_run() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(20, &mock.base_url, "");
    // Room for about one request's worst case: the preview stops before its fifth row.
    let args = [
        "--limit",
        "5",
        "--max-in-flight",
        "1",
        "--max-usd-per-run",
        "0.00004",
    ];
    let out = ws.run(&[&["run", job.as_str()][..], &args].concat());
    assert_exit(&out, 3);
    let sent = mock.stat("requests");
    assert!((1..5).contains(&sent), "{sent} sent\n{}", text(&out));
    assert_eq!(ws.summary()["status"], "budget");
    let err = stderr(&out);
    assert!(
        err.contains("preview: ") && err.contains("rows still to send"),
        "{err}"
    );
}

#[test]
fn limit_and_sample_together_or_a_seed_alone_cannot_start() {
    let ws = Workspace::new();
    ws.csv_rows(3);
    let job = ws.job("http://127.0.0.1:9/v1", "");
    let out = ws.run(&["run", &job, "--limit", "2", "--sample", "2"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("cannot be used with") && err.contains("--limit <N>'"),
        "{err}"
    );
    let out = ws.run(&["run", &job, "--seed", "4"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--sample"), "{}", stderr(&out));
    let out = ws.run(&["run", &job, "--limit", "0"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("1..=1000000000000000 rows"),
        "{}",
        stderr(&out)
    );
    let out = ws.run(&["run", &job, "--sample", "2", "--mode", "batch"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("drop --mode batch"),
        "{}",
        stderr(&out)
    );
}
