//! Ctrl-C and SIGTERM as a user (or `timeout`, or cron) sends them: real processes, real
//! signals, against the mock API on 127.0.0.1. A single signal in any phase ends with the
//! output and the summary written (exit 3) and the same command finishes the job; a second
//! quits at once; batch waiting stops at once (exit 4) and says how to collect later.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{JobFile, Mock, Workspace, OPENAI_KEY};

/// Only a guard against a hang: nothing here is a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// The debug line the command logs once its signal handlers are in place.
const HANDLERS_READY: &str = "signal handlers installed";

/// A running `promptmill` whose stderr is read line by line as it comes.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Running {
    /// Starts `promptmill ARGS` in `ws` with the test key, logging the signal module's
    /// debug lines (so the test knows when the handlers are in place).
    fn start(ws: &Workspace, args: &[&str]) -> Running {
        let mut child = ws
            .command()
            .env(OPENAI_KEY.0, OPENAI_KEY.1)
            .env("RUST_LOG", "warn,promptmill::cmd::signals=debug")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start promptmill");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `text` (all lines so far are kept).
    fn wait_for_line(&mut self, text: &str) {
        let deadline = Instant::now() + HANG_GUARD;
        while !self.stderr.iter().any(|l| l.contains(text)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stderr.push(line),
                Err(_) => panic!(
                    "no line with {text:?} on stderr; exit {:?}; stderr:\n{}",
                    self.child.try_wait(),
                    self.stderr.join("\n")
                ),
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// Waits for the process to end; returns its status and its whole stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + HANG_GUARD;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("still running; stderr:\n{}", self.stderr.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends with the pipe.
        self.stderr.extend(self.lines.iter());
        (status, self.stderr.join("\n"))
    }
}

/// `rows` rows and the usual job at `url`, sending at most `in_flight` requests at once.
fn workspace(rows: usize, url: &str, in_flight: u32) -> (Workspace, String) {
    let ws = Workspace::new();
    ws.csv_rows(rows);
    let job = ws.write_job(
        "job.toml",
        &JobFile {
            api: &format!("base_url = \"{url}\""),
            limits: &format!("max_in_flight = {in_flight}"),
            ..JobFile::default()
        },
    );
    (ws, job)
}

/// Waits until the job's journal holds at least one record: requests are being answered.
fn wait_for_journal(ws: &Workspace) {
    let deadline = Instant::now() + HANG_GUARD;
    let path = ws.path("out/result.journal.jsonl");
    while std::fs::read_to_string(&path).map_or(true, |t| t.lines().count() == 0) {
        assert!(Instant::now() < deadline, "no journal record appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// After an interrupted run: exit 3, an output with every row listed and a summary that
/// says it was interrupted and agrees with the output.
fn assert_interrupted_with_output(ws: &Workspace, rows: usize, status: ExitStatus, err: &str) {
    assert_eq!(status.code(), Some(3), "{err}");
    let summary = ws.summary();
    assert_eq!(summary["status"], "interrupted", "{summary}\n{err}");
    let statuses = ws.column("out/result.csv", "status");
    assert_eq!(statuses.len(), rows, "{err}");
    let pending = statuses.iter().filter(|s| *s == "pending").count();
    assert!(
        pending > 0,
        "an interrupted run leaves rows pending: {statuses:?}"
    );
    assert_eq!(
        summary["pending"].as_u64(),
        Some(pending as u64),
        "{summary}"
    );
}

/// The same command again finishes the job: exit 0, every row ok.
fn assert_rerun_finishes(ws: &Workspace, job: &str, rows: usize) {
    let out = ws.run_env(&[OPENAI_KEY], &["run", job, "--quiet"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let statuses = ws.column("out/result.csv", "status");
    assert_eq!(statuses.len(), rows);
    assert!(statuses.iter().all(|s| s == "ok"), "{statuses:?}");
    assert_eq!(ws.summary()["status"], "completed");
}

#[test]
fn sigterm_during_startup_leaves_output_and_summary_and_the_rerun_finishes() {
    // Many rows, so the validation pass is still going when the signal comes (the moment
    // `timeout` or cron most often hits); wherever it lands, the outcome must be the same.
    let mock = Mock::start(&["--latency-ms", "50"]);
    let rows = 2000;
    let (ws, job) = workspace(rows, &mock.base_url, 64);
    let mut run = Running::start(&ws, &["run", &job]);
    run.wait_for_line(HANDLERS_READY);
    run.signal(libc::SIGTERM);
    let (status, err) = run.finish();
    assert_interrupted_with_output(&ws, rows, status, &err);
    assert_rerun_finishes(&ws, &job, rows);
}

#[test]
fn sigterm_mid_run_finishes_requests_in_flight_writes_everything_and_resumes() {
    let mock = Mock::start(&["--latency-ms", "400"]);
    // 80 rows at 10 answers a second: the run is still going when the signal comes.
    let rows = 80;
    let (ws, job) = workspace(rows, &mock.base_url, 4);
    let mut run = Running::start(&ws, &["run", &job]);
    run.wait_for_line(HANDLERS_READY);
    wait_for_journal(&ws);
    run.signal(libc::SIGTERM);
    let (status, err) = run.finish();
    assert!(err.contains("finishing the requests in flight"), "{err}");
    assert_interrupted_with_output(&ws, rows, status, &err);
    // Answers that arrived are kept: the output lists them as ok.
    let ok = ws.column("out/result.csv", "status");
    assert!(ok.iter().any(|s| s == "ok"), "{ok:?}");
    assert_rerun_finishes(&ws, &job, rows);
}

#[test]
fn a_second_signal_quits_at_once() {
    let mock = Mock::start(&["--latency-ms", "50"]);
    let (ws, job) = workspace(2000, &mock.base_url, 64);
    let mut run = Running::start(&ws, &["run", &job]);
    run.wait_for_line(HANDLERS_READY);
    run.signal(libc::SIGINT);
    // The second signal only once the first was seen (two pending signals would merge).
    run.wait_for_line("interrupted: stopping");
    run.signal(libc::SIGINT);
    let (status, err) = run.finish();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("quitting now"), "{err}");
}

#[test]
fn ctrl_c_while_waiting_for_batches_stops_waiting_with_exit_4() {
    // Batches that never finish (a million polls per status step).
    let mock = Mock::start(&["--batch-step-polls", "1000000"]);
    let (ws, job) = Workspace::with_job(5, &mock.base_url, "");
    let mut run = Running::start(
        &ws,
        &[
            "run",
            &job,
            "--mode",
            "batch",
            "--wait",
            "--poll-secs",
            "0.05",
        ],
    );
    // While waiting, a line shows each batch's counts (stderr is not a terminal here).
    run.wait_for_line("batch: waiting for 1 of 1 batches");
    run.signal(libc::SIGINT);
    let (status, err) = run.finish();
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.contains("stopped waiting"), "{err}");
    assert!(err.contains(&format!("promptmill collect {job}")), "{err}");
    let state = ws.batch_state();
    assert!(state["chunks"][0]["batch_id"].is_string(), "{state}");

    // `collect --wait` too.
    let mut collect = Running::start(&ws, &["collect", &job, "--wait", "--poll-secs", "0.05"]);
    collect.wait_for_line("batch: waiting for 1 of 1 batches");
    collect.signal(libc::SIGTERM);
    let (status, err) = collect.finish();
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.contains("stopped waiting"), "{err}");
}

#[test]
fn status_needs_no_key_once_every_batch_is_collected() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(5, &mock.base_url, "");
    let out = ws.run_env(
        &[OPENAI_KEY],
        &["run", &job, "--mode", "batch", "--wait", "--poll-secs", "0"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No key in the environment: nothing needs the API.
    let out = ws.run_env(&[], &["status", &job]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("completed") && stdout.contains("yes"),
        "{stdout}"
    );
    // Nor does collecting again: the output is written from the journal.
    std::fs::remove_file(ws.path("out/result.csv")).unwrap();
    let out = ws.run_env(&[], &["collect", &job]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::assert_complete_output(&ws, 5);
}

#[test]
fn status_and_collect_take_mock_like_run() {
    let ws = Workspace::new();
    ws.csv_rows(4);
    let job = ws.job("http://127.0.0.1:9/v1", "");
    let out = ws.run_env(&[], &["run", &job, "--mode", "batch", "--mock"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for cmd in ["status", "collect"] {
        let out = ws.run_env(&[], &[cmd, &job, "--mock"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{cmd}: {err}");
    }
    assert_eq!(ws.summary()["provider"], "mock");
    let statuses = ws.column("out/result.csv", "status");
    assert_eq!(statuses, ["ok"; 4]);
}
