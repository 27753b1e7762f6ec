//! Previews (`run --limit N`, `run --sample N --seed S`): only the chosen rows are sent,
//! shown with their answers, journaled so the full run does not pay for them again; the
//! other rows stay pending. And pipes: `--input -` reads the rows from stdin, `--output -`
//! writes the output to stdout (the journal then in `--state DIR`).

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
    // The projection: the preview's cost per row times the rows still to send.
    let p = &summary["preview"];
    assert_eq!(
        (p["rows"].as_u64(), p["rows_to_send"].as_u64()),
        (Some(5), Some(15))
    );
    let cost = p["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0 && cost == summary["cost_this_run_usd"].as_f64().unwrap());
    let projected = p["projected_cost_usd"].as_f64().unwrap();
    assert!((projected - cost * 3.0).abs() < 1e-9, "{p}");
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
    assert_eq!(ws.summary()["preview"]["seed"].as_u64(), seed.parse().ok());
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
    let summary = ws.summary();
    assert_eq!(summary["status"], "budget");
    let p = &summary["preview"];
    assert_eq!(p["rows"].as_u64(), Some(sent), "{p}");
    assert_eq!(p["rows_to_send"].as_u64(), Some(20 - sent), "{p}");
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

/// Runs `promptmill ARGS` in `ws` with the test key, `input` on its stdin.
fn piped(ws: &Workspace, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = ws
        .command()
        .env("OPENAI_API_KEY", TEST_KEY)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promptmill");
    let mut stdin = child.stdin.take().unwrap();
    if let Err(e) = stdin.write_all(input.as_bytes()) {
        // A command that refuses to start may exit before reading its stdin.
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// `n` rows of CSV: id,name,color.
fn csv_text(n: usize) -> String {
    let mut s = String::from("id,name,color\n");
    for i in 1..=n {
        s.push_str(&format!("r{i},item {i},color {}\n", i % 7));
    }
    s
}

#[test]
fn rows_piped_in_come_out_on_stdout_and_nothing_else_does() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let job = ws.job(&mock.base_url, "");
    let args = [
        "run", &job, "--input", "-", "--format", "csv", "--output", "-", "--state", "state",
    ];
    let out = piped(&ws, &args, &csv_text(25));
    assert_exit(&out, 0);
    assert_eq!(mock.stat("requests"), 25);
    // stdout is the output and only that: a CSV with the output's header, then every row.
    let mut reader = csv::Reader::from_reader(&out.stdout[..]);
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(header[..5], ["id", "name", "color", "output", "status"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let ids: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
    let want: Vec<String> = (1..=25).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, want);
    for r in &rows {
        assert_eq!(&r[4], "ok", "{r:?}");
        assert!(r[3].starts_with("Mock answer for: Describe"), "{r:?}");
    }
    assert!(
        stderr(&out).contains("25 total: 25 succeeded"),
        "{}",
        text(&out)
    );
    // The journal is in the state folder: the same rows piped in again are done already.
    assert!(ws.path("state/result.journal.jsonl").is_file());
    assert!(
        !ws.path("out").exists(),
        "nothing is written beside output.path"
    );
    let again = piped(&ws, &args, &csv_text(25));
    assert_exit(&again, 0);
    assert_eq!(mock.stat("requests"), 25, "{}", text(&again));
    assert_eq!(again.stdout, out.stdout);
    // No copy of stdin is left behind.
    let left: Vec<_> = std::fs::read_dir(ws.path("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("stdin"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn jsonl_piped_in_is_read_once_and_a_bad_line_names_stdin() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let job = ws.job(&mock.base_url, "");
    let lines: String = (1..=4)
        .map(|i| format!("{{\"id\":\"j{i}\",\"name\":\"n{i}\",\"color\":\"c\"}}\n"))
        .collect();
    // The output goes beside output.path as usual; only the rows come from stdin.
    let out = piped(
        &ws,
        &["run", &job, "--input", "-", "--format", "jsonl"],
        &lines,
    );
    assert_exit(&out, 0);
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert_eq!(ws.column("out/result.csv", "id"), ["j1", "j2", "j3", "j4"]);
    assert_eq!(mock.stat("requests"), 4);
    let bad = format!("{lines}{{\"id\":\"j5\",\n");
    let out = piped(
        &ws,
        &["run", &job, "--input", "-", "--format", "jsonl"],
        &bad,
    );
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("error: <stdin>:5:"), "{}", text(&out));
    assert_eq!(mock.stat("requests"), 4);
}

#[test]
fn dev_stdin_as_the_input_path_is_read_once_too() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let job = ws.job(&mock.base_url, "");
    let args = ["run", &job, "--input", "/dev/stdin", "--format", "csv"];
    let out = piped(&ws, &args, &csv_text(3));
    assert_exit(&out, 0);
    assert_eq!(ws.column("out/result.csv", "status"), ["ok", "ok", "ok"]);
    assert_eq!(mock.stat("requests"), 3);
    // A bad row is named by the path given, not by the copy the run read.
    let out = piped(&ws, &args, "id,name,color\nr1,a,b\nr2,a\n");
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("error: /dev/stdin:3:"),
        "{}",
        text(&out)
    );
}

#[test]
fn pipes_without_their_flags_cannot_start() {
    let ws = Workspace::new();
    ws.csv_rows(2);
    let job = ws.job("http://127.0.0.1:9/v1", "");
    let cases: [(&[&str], &str); 4] = [
        (&["--input", "-"], "give --format csv, tsv or jsonl"),
        (&["--output", "-"], "give --state DIR"),
        (&["--output", "-", "--state", "s", "--json"], "drop --json"),
        (&["--state", "s"], "drop --state"),
    ];
    for (flags, message) in cases {
        let out = piped(
            &ws,
            &[&["run", job.as_str()][..], flags].concat(),
            &csv_text(2),
        );
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(message), "{flags:?}: {}", text(&out));
        assert!(out.stdout.is_empty(), "{flags:?}: {}", text(&out));
    }
    let out = ws.run(&["run", &job, "--format", "xlsx2"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("unknown input format"),
        "{}",
        text(&out)
    );
    let out = piped(&ws, &["estimate", &job, "--input", "-"], "");
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("works with `promptmill run` only"),
        "{}",
        text(&out)
    );
}
