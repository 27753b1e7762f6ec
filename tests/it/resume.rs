//! Never lose paid work: real processes killed with real signals, resumed, and checked against
//! the mock API's own counters (requests it answered, prompts it answered twice).

use crate::common;

use std::fs::File;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

const JOURNAL: &str = "out/result.journal.jsonl";

/// Starts `promptmill run JOB --quiet` in the background; stderr goes to `log`.
fn spawn_run(ws: &Workspace, job: &str, log: &str) -> Child {
    let log = File::create(ws.path(log)).unwrap();
    ws.spawn(&["run", job, "--quiet"], log)
}

/// Complete lines in the journal so far.
fn journal_lines(ws: &Workspace) -> usize {
    std::fs::read(ws.path(JOURNAL))
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// Waits until the journal holds at least `n` lines; panics if the run ends first.
fn wait_for_journal(ws: &Workspace, child: &mut Child, n: usize, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_lines(ws) < n {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "run ended ({st}) before the journal reached {n} lines\n{}",
                ws.read(log)
            );
        }
        assert!(Instant::now() < deadline, "journal stuck below {n} lines");
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Waits for the child, failing the test if it takes longer than `limit`.
fn wait_within(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("promptmill did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigint(child: &Child) {
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(st.success());
}

#[test]
fn sigkill_at_random_points_then_resume_loses_nothing_and_repays_at_most_the_in_flight() {
    const ROWS: usize = 2000;
    const IN_FLIGHT: u64 = 32;
    let mock = Mock::start(&["--latency-ms", "30"]);
    let (ws, job) = Workspace::with_job(ROWS, &mock.base_url, "");
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_125);
    let mut points: Vec<usize> = (0..4).map(|_| rng.random_range(50..1900)).collect();
    points.sort_unstable();
    points.dedup();
    let kills = points.len() as u64;
    for (i, &at) in points.iter().enumerate() {
        let log = format!("kill-{i}.log");
        let mut child = spawn_run(&ws, &job, &log);
        wait_for_journal(&ws, &mut child, at, &log);
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        let st = child.wait().unwrap();
        assert_eq!(st.code(), None, "killed by a signal, not exited");
    }
    let before_last = journal_lines(&ws);
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("rows done already"), "{err}");
    assert_complete_output(&ws, ROWS);

    let s = ws.summary();
    assert_eq!(s["succeeded"], ROWS as u64);
    assert!(
        s["resumed"].as_u64().unwrap() + 32 >= before_last as u64,
        "the last run resumed what the journal held: {s}"
    );
    let stats = mock.stats();
    let (requests, ok, dup) = (
        stats["requests"].as_u64().unwrap(),
        stats["ok"].as_u64().unwrap(),
        stats["duplicate_prompts"].as_u64().unwrap(),
    );
    let slack = IN_FLIGHT * kills;
    assert_eq!(stats["distinct_prompts"], ROWS as u64, "{stats}");
    assert!(
        requests >= ROWS as u64 && requests <= ROWS as u64 + slack,
        "{stats}"
    );
    assert!(ok <= ROWS as u64 + slack, "{stats}");
    assert!(dup <= slack, "{stats}");
    // Whatever was paid twice was only what was in flight when a kill landed.
    assert_eq!(ok - dup, ROWS as u64, "{stats}");
}

#[test]
fn sigint_finishes_what_is_in_flight_exits_3_and_resume_sends_nothing_twice() {
    const ROWS: usize = 600;
    let mock = Mock::start(&["--latency-ms", "30"]);
    let (ws, job) = Workspace::with_job(ROWS, &mock.base_url, "");
    for (i, at) in [60usize, 300].into_iter().enumerate() {
        let log = format!("int-{i}.log");
        let mut child = spawn_run(&ws, &job, &log);
        wait_for_journal(&ws, &mut child, at, &log);
        sigint(&child);
        let st = wait_within(&mut child, Duration::from_secs(120)); // a hang guard
        let err = ws.read(&log);
        assert_eq!(st.code(), Some(3), "interrupted = exit 3\n{err}");
        assert!(err.contains("interrupted"), "{err}");
        // The in-flight requests finished and were journaled: everything answered is on disk.
        assert_eq!(
            journal_lines(&ws) as u64,
            mock.stat("ok"),
            "every answered request is in the journal\n{err}"
        );
        let s = ws.summary();
        assert_eq!(s["status"], "interrupted", "{s}");
        assert!(s["pending"].as_u64().unwrap() > 0, "{s}");
        let (_, rows) = ws.csv("out/result.csv");
        assert_eq!(rows.len(), ROWS, "the partial output still lists every row");
    }
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 0);
    assert_complete_output(&ws, ROWS);
    assert_eq!(mock.stat("duplicate_prompts"), 0, "nothing sent twice");
    assert_eq!(mock.stat("requests"), ROWS as u64, "nothing sent twice");
}

#[test]
fn a_second_sigint_quits_at_once_and_the_journal_stays_readable() {
    // Answers take 20 s: after the first Ctrl-C the run would wait out its grace period.
    let mock = Mock::start(&["--latency-ms", "20000"]);
    let (ws, job) = Workspace::with_job(8, &mock.base_url, "");
    let mut child = spawn_run(&ws, &job, "int2.log");
    // A guard against a hang, not a timing claim: a loaded machine may take a while to start.
    let deadline = Instant::now() + Duration::from_secs(120);
    while mock.stat("requests") < 8 {
        assert!(Instant::now() < deadline, "requests never went out");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigint(&child);
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "waits for in-flight");
    sigint(&child);
    // A guard against a hang, not a timing claim.
    let st = wait_within(&mut child, Duration::from_secs(120));
    let err = ws.read("int2.log");
    assert_eq!(st.code(), Some(3), "{err}");
    assert!(err.contains("quitting now"), "{err}");
    // It did not wait out the grace: a run that did would write its output and summary.
    assert!(!ws.path("out/result.summary.json").exists(), "{err}");
    assert!(!ws.path("out/result.csv").exists(), "{err}");
    // Nothing finished, so nothing was recorded, and nothing half-written was left.
    assert_eq!(std::fs::read(ws.path(JOURNAL)).unwrap(), b"");
    let out = ws.run(&["run", &job, "--dry-run"]);
    assert_exit(&out, 0);
}

#[test]
fn a_truncated_journal_tail_resumes_cleanly_and_redoes_only_that_row() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(20, &mock.base_url, "");
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 0);
    assert_eq!(mock.stat("requests"), 20);

    // A crash in the middle of writing the last record.
    let full = std::fs::read(ws.path(JOURNAL)).unwrap();
    let last_start = full[..full.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    let last: serde_json::Value = serde_json::from_slice(&full[last_start..]).unwrap();
    let cut = last_start + (full.len() - last_start) / 2;
    std::fs::write(ws.path(JOURNAL), &full[..cut]).unwrap();

    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("cut off"), "the repair is reported: {err}");
    assert!(err.contains("19 rows done already"), "{err}");
    assert_eq!(mock.stat("requests"), 21, "only the cut row is sent again");
    assert_eq!(mock.stat("duplicate_prompts"), 1);
    assert_complete_output(&ws, 20);
    let s = ws.summary();
    assert_eq!(s["resumed"], 19, "{s}");
    // The journal is whole again: every line parses, the cut row is there once more.
    let text = ws.read(JOURNAL);
    let rows: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["row"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(rows.len(), 20);
    assert!(rows.contains(&last["row"].as_u64().unwrap()));
}

#[test]
fn the_cache_answers_identical_requests_of_another_job_for_free_but_never_errors() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let names = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "[[mock:400]] bad",
        "zeta",
        "eta",
        "theta",
    ];
    ws.named_rows(&names, "blue");
    let job = ws.job(&mock.base_url, "");
    let out = ws.run(&["run", &job, "--quiet", "--cache", "cache"]);
    assert_exit(&out, 1); // the 400 row failed
    assert_eq!(mock.stat("requests"), 8);
    let entries: Vec<_> = all_files(&ws.path("cache"));
    assert_eq!(entries.len(), 7, "successes only: {entries:?}");
    for e in &entries {
        let text = std::fs::read_to_string(e).unwrap();
        assert!(
            !text.contains(TEST_KEY) && !text.contains("mock:400"),
            "{text}"
        );
    }

    // Another job (its own output and journal), the same requests, the cache set in the file.
    let other = ws
        .read("job.toml")
        .replace("out/result.csv", "out/other.csv")
        + "\n[cache]\ndir = \"cache\"\n";
    let other_job = ws.write("other.toml", &other);
    let other_job = other_job.to_str().unwrap();
    let out = ws.run(&["run", other_job, "--quiet"]);
    assert_exit(&out, 1);
    assert_eq!(
        mock.stat("requests"),
        9,
        "only the failed row is sent again"
    );
    let s = ws.json("out/other.summary.json");
    assert_eq!(s["cached"], 7, "{s}");
    assert_eq!(s["requests"], 1, "{s}");
    assert_eq!(s["cost_this_run_usd"], 0.0, "{s}");
    let (h, rows) = ws.csv("out/other.csv");
    let (_, first) = ws.csv("out/result.csv");
    for (r, f) in rows.iter().zip(&first) {
        if r[col(&h, "status")] == "ok" {
            assert_eq!(r[col(&h, "output")], f[col(&h, "output")], "same answer");
            assert_eq!(r[col(&h, "cost_usd")].parse::<f64>().unwrap(), 0.0);
        }
    }

    // A corrupt entry is ignored: that row is sent (and stored again).
    std::fs::write(&entries[0], b"{\"hash\": \"trunc").unwrap();
    std::fs::remove_file(ws.path("out/other.journal.jsonl")).unwrap();
    let out = ws.run(&["run", other_job, "--quiet"]);
    assert_exit(&out, 1);
    assert_eq!(
        mock.stat("requests"),
        11,
        "the corrupt entry's row and the failed row"
    );
    let rewritten = std::fs::read_to_string(&entries[0]).unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(&rewritten)
            .is_ok_and(|v| v["choices"].is_array()),
        "the entry was rewritten: {rewritten}"
    );

    // `--mock` hashes its URL as `mock:`: its answers never serve a real endpoint, nor the
    // other way round.
    let out = ws.run(&[
        "run",
        &job,
        "--quiet",
        "--mock",
        "--cache",
        "cache",
        "--output",
        "out/mock.csv",
    ]);
    assert_exit(&out, 1);
    let s = ws.json("out/mock.summary.json");
    assert_eq!(s["cached"], 0, "{s}");
    assert_eq!(all_files(&ws.path("cache")).len(), 14);
}

#[test]
fn retry_failed_resends_only_the_failed_rows_and_changed_rows_are_redone() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let names = [
        "alpha",
        "[[mock:fail-first:1]] beta",
        "gamma",
        "delta",
        "[[mock:fail-first:1]] eps",
        "zeta",
    ];
    ws.named_rows(&names, "blue");
    let job = ws.job(&mock.base_url, "max_retries = 0");
    let run = |extra: &[&str]| {
        let mut a = vec!["run", &job, "--quiet"];
        a.extend_from_slice(extra);
        ws.run(&a)
    };
    let out = run(&[]);
    assert_exit(&out, 1);
    assert_eq!(ws.summary()["failed"], 2);
    assert_eq!(mock.stat("requests"), 6);

    // Without the flag, failed rows are kept and nothing is sent.
    let out = run(&[]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("4 rows done already"), "{err}");
    assert!(err.contains("2 failed rows kept"), "{err}");
    assert_eq!(mock.stat("requests"), 6);

    let out = run(&["--retry-failed"]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("2 failed rows retried"), "{err}");
    assert_eq!(mock.stat("requests"), 8, "only the two failed rows");
    assert_eq!(mock.stat("duplicate_prompts"), 0);
    assert_complete_output(&ws, 6);

    // A changed input value changes what would be sent: that row alone is redone.
    let mut changed = names;
    changed[2] = "GAMMA";
    ws.named_rows(&changed, "blue");
    let out = run(&[]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("5 rows done already"), "{err}");
    assert!(err.contains("1 changed since"), "{err}");
    assert_eq!(mock.stat("requests"), 9);
    assert_eq!(ws.summary()["changed"], 1);
}
