//! One run of a job at a time (real processes racing for the job's lock, one killed with
//! SIGKILL), and output paths that would destroy the job's own files refused before anything
//! is sent.

use crate::common;

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ROWS: usize = 1_000;

/// Two children started together: (winner's pid, winner's output, loser's output), where
/// the loser is the one that exited 2. Panics unless exactly one exited 2.
fn race(a: Child, b: Child, winner_code: i32) -> (u32, Output, Output) {
    let (pa, pb) = (a.id(), b.id());
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let codes = (oa.status.code(), ob.status.code());
    match codes {
        (Some(w), Some(2)) if w == winner_code => (pa, oa, ob),
        (Some(2), Some(w)) if w == winner_code => (pb, ob, oa),
        _ => panic!(
            "expected exits {{{winner_code}, 2}}, got {codes:?}\n--- first\n{}\n--- second\n{}",
            text(&oa),
            text(&ob)
        ),
    }
}

/// The loser's stderr is one line naming the winner's PID and start time.
fn assert_names_holder(loser: &Output, pid: u32) {
    let err = stderr(loser);
    assert_eq!(err.lines().count(), 1, "one line:\n{err}");
    assert!(err.contains(&format!("pid {pid} started ")), "{err}");
    assert!(err.contains(" UTC"), "{err}");
    assert!(err.contains("result.lock"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn two_concurrent_runs_one_proceeds_the_other_exits_2_naming_its_pid() {
    // 1,000 rows at 50 ms each, 32 at a time: the winner holds the job for over a second.
    let mock = Mock::start(&["--latency-ms", "50"]);
    let (ws, job) = Workspace::with_job(ROWS, &mock.base_url, "");
    let a = ws.spawn_piped(&["run", &job, "--quiet"]);
    let b = ws.spawn_piped(&["run", &job, "--quiet"]);
    let (pid, winner, loser) = race(a, b, 0);
    assert_names_holder(&loser, pid);
    assert_eq!(
        mock.stat("requests"),
        ROWS as u64,
        "every row sent exactly once\n{}",
        text(&winner)
    );
    assert_eq!(ws.summary()["succeeded"], ROWS as u64);
    assert_eq!(ws.column("out/result.csv", "status").len(), ROWS);
}

#[test]
fn a_run_killed_while_holding_the_lock_does_not_block_the_next() {
    let mock = Mock::start(&["--latency-ms", "50"]);
    let (ws, job) = Workspace::with_job(ROWS, &mock.base_url, "");
    let mut first = ws.spawn(&["run", &job, "--quiet"], Stdio::null());
    // Wait until it is sending (it holds the lock from before its first request).
    let deadline = Instant::now() + Duration::from_secs(60);
    while mock.stat("requests") < 10 {
        assert!(first.try_wait().unwrap().is_none(), "first run ended early");
        assert!(Instant::now() < deadline, "first run never sent");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(ws
        .read("out/result.lock")
        .starts_with(&format!("pid {} started ", first.id())));
    first.kill().unwrap(); // SIGKILL: no chance to release anything itself
    assert_eq!(first.wait().unwrap().code(), None, "killed by a signal");
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 0);
    assert_eq!(ws.summary()["succeeded"], ROWS as u64);
}

/// Every batch the mock has (`GET /v1/batches`).
fn batches(mock: &Mock) -> Vec<Value> {
    let body = http(&mock.addr, "GET", "/v1/batches?limit=100");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
    v["data"].as_array().cloned().unwrap_or_default()
}

#[test]
fn two_concurrent_batch_runs_create_one_batch_set() {
    // The mock holds its answer to the batch creation, so the winner is mid-submit (holding
    // the job) when the other run starts.
    let mock = Mock::start(&["--batch-create-delay-ms", "1500"]);
    let (ws, job) = Workspace::with_job(20, &mock.base_url, "");
    let a = ws.spawn_piped(&["run", &job, "--mode", "batch", "--quiet"]);
    let b = ws.spawn_piped(&["run", &job, "--mode", "batch", "--quiet"]);
    let (pid, _winner, loser) = race(a, b, 4);
    assert_names_holder(&loser, pid);
    assert_eq!(batches(&mock).len(), 1, "one batch set only");
    assert_eq!(ws.batch_state()["chunks"].as_array().unwrap().len(), 1);
}

#[test]
fn every_writing_command_is_refused_while_a_run_holds_the_job_and_readers_are_not() {
    let mock = Mock::start(&["--latency-ms", "50"]);
    let (ws, job) = Workspace::with_job(ROWS, &mock.base_url, "");
    let mut first = ws.spawn(&["run", &job, "--quiet"], Stdio::null());
    let deadline = Instant::now() + Duration::from_secs(60);
    while mock.stat("requests") < 10 {
        assert!(first.try_wait().unwrap().is_none(), "first run ended early");
        assert!(Instant::now() < deadline, "first run never sent");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Frozen (SIGSTOP) while it holds the lock: it cannot end during the dry run.
    let pid = first.id() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    ws.write("results.jsonl", "");
    let dry = ws.run(&["run", &job, "--dry-run"]);
    let estimate = ws.run(&["estimate", &job]);
    let writers = [
        ws.run(&["run", &job]),
        ws.run(&["run", &job, "--mode", "batch"]),
        ws.run(&["collect", &job]),
        ws.run(&["import", &job, "results.jsonl"]),
        ws.run(&["export", &job, "--format", "openai-batch"]),
    ];
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert_exit(&dry, 0);
    assert_exit(&estimate, 0);
    for out in &writers {
        assert_names_holder(out, first.id());
    }
    assert_eq!(first.wait().unwrap().code(), Some(0));
    assert_eq!(mock.stat("requests"), ROWS as u64);
}

/// Exit 2 naming `needles`, nothing sent, no output written.
fn assert_refused(ws: &Workspace, mock: &Mock, out: &Output, needles: &[&str]) {
    assert_exit(out, 2);
    let err = stderr(out);
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(mock.stat("requests"), 0, "a request was sent");
    assert!(!ws.path("out/result.csv").exists(), "an output was written");
}

#[test]
fn an_output_equal_to_the_input_is_refused_and_the_input_kept() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(5, &mock.base_url, "");
    let before = ws.read("rows.csv");
    std::fs::create_dir(ws.path("sub")).unwrap();
    for output in ["rows.csv", "sub/../rows.csv"] {
        let out = ws.run(&["run", &job, "--output", output]);
        assert_refused(&ws, &mock, &out, &[output, "rows.csv", "the input"]);
        assert_eq!(ws.read("rows.csv"), before, "the input was changed");
    }
}

#[test]
fn an_output_equal_to_a_template_or_the_schema_file_is_refused() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.csv_rows(3);
    let template = "Describe {{ name }}.";
    ws.write("prompts/t.csv", template);
    let job = ws.write_job(
        "job.toml",
        &JobFile {
            prompt: "template = \"prompts/t.csv\"",
            api: &format!("base_url = \"{}\"", mock.base_url),
            ..JobFile::default()
        },
    );
    let out = ws.run(&["run", &job, "--output", "prompts/t.csv"]);
    assert_refused(&ws, &mock, &out, &["prompts/t.csv", "a template"]);
    assert_eq!(ws.read("prompts/t.csv"), template);

    // The summary beside the default output is the schema file.
    let schema = r#"{"type":"object","properties":{"a":{"type":"string"}},"required":["a"],"additionalProperties":false}"#;
    ws.write("out/result.summary.json", schema);
    let job = ws.write_job(
        "job2.toml",
        &JobFile {
            model: "name = \"gpt-4o-mini\"\nmax_tokens = 50\nschema_file = \"out/result.summary.json\"",
            api: &format!("base_url = \"{}\"", mock.base_url),
            ..JobFile::default()
        },
    );
    let out = ws.run(&["run", &job]);
    assert_refused(
        &ws,
        &mock,
        &out,
        &["result.summary.json", "the schema file"],
    );
    assert_eq!(ws.read("out/result.summary.json"), schema);
}

#[test]
fn an_input_named_like_the_journal_is_refused() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(3, &mock.base_url, "");
    let rows = ws.read("rows.csv");
    // rows.csv's journal would be rows.journal.jsonl: use it as the input.
    ws.write(
        "rows.journal.jsonl",
        "{\"id\":\"r1\",\"name\":\"a\",\"color\":\"b\"}\n",
    );
    let out = ws.run(&[
        "run",
        &job,
        "--set",
        "input.path=rows.journal.jsonl",
        "--output",
        "rows.csv",
    ]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("the journal"), "{err}");
    assert_eq!(mock.stat("requests"), 0);
    assert_eq!(ws.read("rows.csv"), rows);
}

#[test]
fn an_output_that_is_a_folder_is_refused_before_anything_is_paid() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(5, &mock.base_url, "");
    std::fs::create_dir_all(ws.path("out/result.csv")).unwrap();
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("result.csv") && err.contains("is a folder"),
        "{err}"
    );
    assert_eq!(mock.stat("requests"), 0, "a request was sent");
}

#[test]
fn an_output_folder_that_cannot_be_created_is_refused_before_anything_is_sent() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(5, &mock.base_url, "");
    ws.write("blocker", "a file, not a folder");
    let out = ws.run(&["run", &job, "--output", "blocker/result.csv"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("blocker"), "{err}");
    assert_eq!(mock.stat("requests"), 0, "a request was sent");
}
