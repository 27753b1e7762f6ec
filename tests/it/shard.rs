//! Shards: `run --shard K/N` sends only the rows that hash into shard K, into the shard's own
//! journal, summary and output; `merge` writes the job's one output from every shard's
//! journal. Real processes (four at once, one SIGKILLed) against one mock on loopback.

use std::collections::{BTreeSet, HashSet};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{assert_exit, Mock, Workspace};

/// The ids in the `id` column of a CSV the run wrote, in file order.
fn ids(ws: &Workspace, rel: &str) -> Vec<String> {
    ws.column(rel, "id")
}

/// The ids of the rows a journal holds a record for.
fn journal_ids(ws: &Workspace, rel: &str) -> Vec<String> {
    ws.jsonl(rel)
        .iter()
        .filter(|l| l.get("status").is_some())
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect()
}

fn shard_csv(k: u32, n: u32) -> String {
    format!("out/result.shard-{k}-of-{n}.csv")
}

fn f64_of(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn four_shards_at_once_send_every_row_once_and_merge_into_one_output_in_input_order() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(200, &mock.base_url, "");
    let children: Vec<(u32, Child)> = (1..=4)
        .map(|k| {
            let shard = format!("{k}/4");
            (
                k,
                ws.spawn_piped(&["run", &job, "--shard", &shard, "--quiet"]),
            )
        })
        .collect();
    let mut seen = HashSet::new();
    let mut spent = 0.0;
    for (k, child) in children {
        let out: Output = child.wait_with_output().unwrap();
        assert_exit(&out, 0);
        // Each shard wrote only its own rows, in input order, and its own journal.
        let mine = ids(&ws, &shard_csv(k, 4));
        assert!(!mine.is_empty(), "shard {k} got no row");
        let mut journaled = journal_ids(&ws, &format!("out/result.shard-{k}-of-4.journal.jsonl"));
        journaled.sort();
        let mut sorted = mine.clone();
        sorted.sort();
        assert_eq!(journaled, sorted, "shard {k}");
        let numbers: Vec<u32> = mine.iter().map(|id| id[1..].parse().unwrap()).collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "shard {k}: {mine:?}"
        );
        for id in mine {
            assert!(seen.insert(id.clone()), "{id} is in two shards");
        }
        let summary = ws.json(&format!("out/result.shard-{k}-of-4.summary.json"));
        spent += f64_of(&summary, "spent_total_usd");
    }
    assert_eq!(seen.len(), 200, "every row in exactly one shard");
    assert_eq!(mock.stat("requests"), 200, "one request per row");
    // No final output before the merge.
    assert!(!ws.path("out/result.csv").exists());

    let out = ws.run(&["merge", &job]);
    assert_exit(&out, 0);
    let expected: Vec<String> = (1..=200).map(|i| format!("r{i}")).collect();
    assert_eq!(
        ids(&ws, "out/result.csv"),
        expected,
        "one row per input row, in order"
    );
    assert!(ws
        .column("out/result.csv", "status")
        .iter()
        .all(|s| s == "ok"));
    assert!(ws
        .column("out/result.csv", "output")
        .iter()
        .all(|o| o.starts_with("Mock answer")));
    let merged = ws.summary();
    assert_eq!(merged["mode"], "merge");
    assert_eq!(merged["succeeded"], 200);
    assert!(spent > 0.0);
    assert!(
        (f64_of(&merged, "spent_total_usd") - spent).abs() < 5e-6,
        "merged spend {} != the shards' {spent}",
        merged["spent_total_usd"]
    );

    // The job run whole afterwards sees the shards' journals: nothing is paid again.
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 0);
    assert_eq!(mock.stat("requests"), 200);
    assert_eq!(ids(&ws, "out/result.csv"), expected);
}

#[test]
fn a_reordered_input_keeps_each_row_in_its_shard_and_estimate_counts_the_shard() {
    let ws = Workspace::new();
    ws.csv_rows(60);
    let job = ws.job("http://127.0.0.1:9/v1", "");
    let shards = |ws: &Workspace| -> Vec<BTreeSet<String>> {
        (1..=3)
            .map(|k| {
                let shard = format!("{k}/3");
                let out = ws.run(&["run", &job, "--mock", "--shard", &shard, "--quiet"]);
                assert_exit(&out, 0);
                ids(ws, &shard_csv(k, 3)).into_iter().collect()
            })
            .collect()
    };
    let before = shards(&ws);
    // The estimate of a shard counts that shard's rows.
    for (k, rows) in (1..=3).zip(&before) {
        let shard = format!("{k}/3");
        let out = ws.run(&["estimate", &job, "--shard", &shard, "--json"]);
        assert_exit(&out, 0);
        let est: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(est["rows"], rows.len(), "shard {k}");
    }

    // The same rows, backwards, in a fresh folder.
    let text = ws.read("rows.csv");
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1..].reverse();
    let moved = Workspace::new();
    moved.write("rows.csv", &(lines.join("\n") + "\n"));
    std::fs::copy(ws.path("job.toml"), moved.path("job.toml")).unwrap();
    let job = moved.path("job.toml").to_string_lossy().into_owned();
    let after: Vec<BTreeSet<String>> = (1..=3)
        .map(|k| {
            let shard = format!("{k}/3");
            let out = moved.run(&["run", &job, "--mock", "--shard", &shard, "--quiet"]);
            assert_exit(&out, 0);
            ids(&moved, &shard_csv(k, 3)).into_iter().collect()
        })
        .collect();
    assert_eq!(before, after);
    assert!(before.iter().all(|s| !s.is_empty()));
}

#[test]
fn a_shard_killed_mid_run_resumes_and_the_merge_has_every_row_once() {
    // Slow answers, one at a time (about 18 s for the shard's ~60 rows): the kill lands
    // mid-run even when the checks below are slow on a loaded machine.
    let mock = Mock::start(&["--latency-ms", "300"]);
    let (ws, job) = Workspace::with_job(120, &mock.base_url, "");
    let journal = ws.path("out/result.shard-1-of-2.journal.jsonl");
    let mut child = ws.spawn_piped(&[
        "run",
        &job,
        "--shard",
        "1/2",
        "--max-in-flight",
        "1",
        "--quiet",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&journal)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 6
    {
        assert!(
            Instant::now() < deadline,
            "the shard never journaled 6 rows"
        );
        assert!(child.try_wait().unwrap().is_none(), "the shard ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    // While the shard runs, neither the whole job nor a merge may read its journal.
    for args in [vec!["run", &job, "--quiet"], vec!["merge", &job]] {
        let out = ws.run(&args);
        assert_exit(&out, 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("result.shard-1-of-2.lock"), "{args:?}: {err}");
        assert!(err.contains("shard 1/2"), "{args:?}: {err}");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let paid_before: HashSet<String> = journal_ids(&ws, "out/result.shard-1-of-2.journal.jsonl")
        .into_iter()
        .collect();
    let lines_before = ws.jsonl("out/result.shard-1-of-2.journal.jsonl").len();
    let total = ids(&ws, "rows.csv").len();
    assert!(paid_before.len() < total / 2, "killed too late to test");

    let out = ws.run(&["run", &job, "--shard", "1/2", "--quiet"]);
    assert_exit(&out, 0);
    let out = ws.run(&["run", &job, "--shard", "2/2", "--quiet"]);
    assert_exit(&out, 0);
    // The resumed shard paid for none of the rows answered before the kill.
    let resumed = ws.jsonl("out/result.shard-1-of-2.journal.jsonl");
    for line in &resumed[lines_before..] {
        let id = line["id"].as_str().unwrap();
        assert!(!paid_before.contains(id), "{id} was paid twice");
    }
    // Only the request in flight at the kill was asked again: every row was answered once,
    // and at most that one twice.
    let stats = mock.stats();
    let stat = |k: &str| stats[k].as_u64().unwrap();
    assert_eq!(stat("distinct_prompts"), 120, "{stats}");
    assert!(stat("duplicate_prompts") <= 1, "{stats}");
    assert!(stat("ok") <= 120 + 1, "{stats}");
    assert!(stat("requests") <= 120 + 2 + 2, "{stats}");

    let out = ws.run(&["merge", &job]);
    assert_exit(&out, 0);
    let expected: Vec<String> = (1..=120).map(|i| format!("r{i}")).collect();
    assert_eq!(ids(&ws, "out/result.csv"), expected);
    assert!(ws
        .column("out/result.csv", "status")
        .iter()
        .all(|s| s == "ok"));
    let mut all = journal_ids(&ws, "out/result.shard-1-of-2.journal.jsonl");
    all.extend(journal_ids(&ws, "out/result.shard-2-of-2.journal.jsonl"));
    all.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(
        all, want,
        "every row journaled exactly once across the shards"
    );
}

#[test]
fn a_missing_shard_journal_is_named_and_allow_missing_leaves_its_rows_pending() {
    let ws = Workspace::new();
    ws.csv_rows(40);
    let job = ws.job("http://127.0.0.1:9/v1", "");
    for k in 1..=3 {
        let shard = format!("{k}/4");
        let out = ws.run(&["run", &job, "--mock", "--shard", &shard, "--quiet"]);
        assert_exit(&out, 0);
    }
    let out = ws.run(&["merge", &job, "--mock"]);
    assert_exit(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("result.shard-4-of-4.journal.jsonl"), "{err}");
    assert!(
        err.contains("--shard 4/4") && err.contains("--allow-missing"),
        "{err}"
    );
    assert!(!ws.path("out/result.csv").exists(), "nothing written");

    // Shard 4's rows: those no other shard holds.
    let held: HashSet<String> = (1..=3).flat_map(|k| ids(&ws, &shard_csv(k, 4))).collect();
    let out = ws.run(&["merge", &job, "--mock", "--allow-missing"]);
    assert_exit(&out, 1);
    let (header, rows) = ws.csv("out/result.csv");
    let at = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(rows.len(), 40);
    let expected: Vec<String> = (1..=40).map(|i| format!("r{i}")).collect();
    assert_eq!(ids(&ws, "out/result.csv"), expected);
    let mut pending = 0;
    for row in &rows {
        let (id, status) = (&row[at("id")], &row[at("status")]);
        if held.contains(id) {
            assert_eq!(status, "ok", "{id}");
        } else {
            assert_eq!(status, "pending", "{id}");
            pending += 1;
        }
    }
    assert!(pending > 0);
    assert_eq!(ws.summary()["pending"], pending);

    // The job run whole sends only the missing shard's rows, then writes the one output.
    let out = ws.run(&["run", &job, "--mock", "--quiet"]);
    assert_exit(&out, 0);
    let summary = ws.summary();
    assert_eq!(summary["requests"], pending, "{summary}");
    assert_eq!(ids(&ws, "out/result.csv"), expected);
    assert!(ws
        .column("out/result.csv", "status")
        .iter()
        .all(|s| s == "ok"));
}

#[test]
fn a_bad_shard_is_refused_naming_the_range() {
    let ws = Workspace::new();
    ws.csv_rows(3);
    let job = ws.job("http://127.0.0.1:9/v1", "");
    for bad in ["0/4", "5/4", "1/1025", "two/4", "3"] {
        let out = ws.run(&["run", &job, "--mock", "--shard", bad]);
        assert_exit(&out, 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("1 <= K <= N <= 1024"), "{bad}: {err}");
    }
    let out = ws.run(&["run", &job, "--mock", "--shard", "1/2", "--mode", "batch"]);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch"));
    assert!(!ws.path("out").exists(), "nothing written");
}

#[test]
fn rows_a_whole_run_answered_are_not_paid_again_by_the_shards() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(40, &mock.base_url, "");
    // A preview of the whole job first, then the job as two shards.
    let out = ws.run(&["run", &job, "--limit", "6", "--quiet"]);
    assert_exit(&out, 0);
    assert_eq!(mock.stat("requests"), 6);
    for shard in ["1/2", "2/2"] {
        let out = ws.run(&["run", &job, "--shard", shard, "--quiet"]);
        assert_exit(&out, 0);
    }
    assert_eq!(
        mock.stat("requests"),
        40,
        "the preview's rows were not sent again"
    );
    let out = ws.run(&["merge", &job]);
    assert_exit(&out, 0);
    let expected: Vec<String> = (1..=40).map(|i| format!("r{i}")).collect();
    assert_eq!(ids(&ws, "out/result.csv"), expected);
    assert!(ws
        .column("out/result.csv", "status")
        .iter()
        .all(|s| s == "ok"));
}
