//! What a misbehaving server, flag, pipe or file must not do to the money and the output:
//! an answer without `usage` is never free, absurd header values never panic, bad numbers
//! and a closed stdout never crash, an unclosed CSV quote never merges rows, and generated
//! cells are safe in a spreadsheet. Every server here is a real one on 127.0.0.1.

use crate::common;
use crate::common::fault_server;

use std::io::Read;
use std::process::Stdio;

use common::*;
use fault_server::{FaultServer, Reply};
use promptmill::tokens::TokenCounter;
use serde_json::json;

/// The answer every fault server here gives (well under the jobs' `max_tokens = 50`).
const TEXT: &str = "A sturdy, well made thing in a cheerful colour that lasts for years.";

/// A job over `n` rows at `base_url` with `model` (TOML of `[model]`) and `extra_limits`.
fn job_at(ws: &Workspace, n: usize, base_url: &str, model: &str, limits: &str) -> String {
    ws.csv_rows(n);
    ws.write_job(
        "job.toml",
        &JobFile {
            model,
            api: &format!("base_url = \"{base_url}\""),
            limits: &format!("max_in_flight = 4\n{limits}"),
            ..JobFile::default()
        },
    )
}

fn completion_tokens_of(text: &str) -> u64 {
    TokenCounter::for_model("gpt-4o-mini").count_text(text)
}

/// Finding 2: a 200 without `usage` (plain, then streamed) is counted by us (prompt as
/// the estimate counts it, completion from the text), priced, labelled as estimated in the
/// row and the summary, and never `$0`.
#[test]
fn an_answer_without_usage_is_counted_priced_and_labelled_not_free() {
    for stream in [false, true] {
        let server = FaultServer::start(move |_, _| {
            if stream {
                Reply::chat_stream_without_usage(TEXT)
            } else {
                Reply::chat(TEXT, "stop", None)
            }
        });
        let ws = Workspace::new();
        let model = format!("name = \"gpt-4o-mini\"\nmax_tokens = 50\nstream = {stream}");
        let job = job_at(&ws, 3, &server.base_url(), &model, "");

        let est = ws.run(&["estimate", &job, "--json"]);
        assert_exit(&est, 0);
        let prompt_estimate = stdout_json(&est)["prompt_tokens"]["total"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}", text(&est)));

        let out = ws.run(&["run", &job, "--quiet"]);
        assert_exit(&out, 0);
        assert_eq!(server.requests(), 3);
        let (h, rows) = ws.csv("out/result.csv");
        let mut prompt_sum = 0;
        for r in &rows {
            assert_eq!(r[col(&h, "status")], "ok", "{r:?}");
            assert_eq!(r[col(&h, "cost_estimated")], "true", "{r:?}");
            let completion: u64 = r[col(&h, "completion_tokens")].parse().unwrap();
            assert_eq!(completion, completion_tokens_of(TEXT), "{r:?}");
            prompt_sum += r[col(&h, "prompt_tokens")].parse::<u64>().unwrap();
            let cost: f64 = r[col(&h, "cost_usd")].parse().unwrap_or(0.0);
            assert!(cost > 0.0, "an unknown cost shown as free: {r:?}");
        }
        assert_eq!(prompt_sum, prompt_estimate, "the estimate's own count");
        let s = ws.summary();
        assert_eq!(s["cost_estimated_rows"], 3, "{s}");
        assert!(s["cost_usd"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["cost_this_run_usd"].as_f64().unwrap() > 0.0, "{s}");
        let table = stderr(&out);
        let cost_line = table
            .lines()
            .find(|l| l.trim_start().starts_with("cost"))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(cost_line.contains("estimated"), "{table}");
    }
}

/// Finding 2, the issue's case: a cap far below the estimate, a server that never sends
/// usage. The estimated spend counts against the cap, so the run stops (exit 3) after a few
/// rows instead of sending all 40, and a rerun with the same cap sends nothing.
#[test]
fn answers_without_usage_still_spend_the_budget() {
    let server = FaultServer::start(|_, _| Reply::chat(TEXT, "stop", None));
    let ws = Workspace::new();
    let job = job_at(
        &ws,
        40,
        &server.base_url(),
        "name = \"gpt-4o-mini\"\nmax_tokens = 50",
        "",
    );
    let cap = "0.0001";
    let out = ws.run(&["run", &job, "--quiet", "--max-usd", cap]);
    assert_exit(&out, 3);
    let sent = server.requests();
    assert!(
        (2..20).contains(&sent),
        "{sent} of 40 rows sent under a $0.0001 cap"
    );
    let s = ws.summary();
    assert_eq!(s["status"], "budget", "{s}");
    let spent = s["spent_total_usd"].as_f64().unwrap();
    assert!(spent > 0.00005 && spent <= 0.0001 + 1e-12, "{s}");
    assert_eq!(s["pending"].as_u64().unwrap() + sent, 40, "{s}");

    // The journal remembers the estimated spend: the same cap sends nothing more.
    let out = ws.run(&["run", &job, "--quiet", "--max-usd", cap]);
    assert_exit(&out, 3);
    assert_eq!(server.requests(), sent);
}

/// Finding 2, a model with no tokenizer of its own (counts would be guesses): an answer
/// without usage is charged the worst case that was reserved for it.
#[test]
fn without_a_tokenizer_a_missing_usage_costs_the_reserved_worst_case() {
    let server = FaultServer::start(|_, _| Reply::chat(TEXT, "stop", None));
    let ws = Workspace::new();
    ws.write(
        "prices.json",
        r#"{"house-model": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
            "litellm_provider": "openai"}}"#,
    );
    let job = job_at(
        &ws,
        2,
        &server.base_url(),
        "name = \"house-model\"\nmax_tokens = 50",
        "",
    );
    let out = ws.run(&["run", &job, "--quiet", "--prices", "prices.json"]);
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("out/result.csv");
    for r in &rows {
        assert_eq!(r[col(&h, "cost_estimated")], "true", "{r:?}");
        assert_eq!(r[col(&h, "completion_tokens")], "50", "{r:?}");
        let prompt: f64 = r[col(&h, "prompt_tokens")].parse().unwrap();
        let cost: f64 = r[col(&h, "cost_usd")].parse().unwrap();
        let worst = prompt * 1e-6 + 50.0 * 2e-6;
        assert!((cost - worst).abs() < 1e-12, "{cost} vs {worst}: {r:?}");
    }
}

/// Finding 3: rate-limit headers no server should send (`1e300`, `inf`, NaN, negative,
/// huge integers, garbage) on every answer, and 429s whose `retry-after` is nonsense: every
/// row is still answered and journaled, and nothing panics.
#[test]
fn absurd_rate_limit_headers_never_lose_a_paid_answer() {
    const ABSURD: &[&str] = &[
        "1e20",
        "1e300",
        "inf",
        "-inf",
        "NaN",
        "-5",
        "99999999999999999999999999999",
        "garbage",
        "1e300s",
        "-1ms",
    ];
    let server = FaultServer::start(|_, seq| {
        let v = ABSURD[seq as usize % ABSURD.len()];
        if seq % 5 == 1 {
            // A 429 whose wait is nonsense: the client falls back to its own backoff.
            return Reply {
                status: 429,
                headers: Vec::new(),
                content_type: "application/json",
                body: br#"{"error":{"message":"slow down","type":"requests"}}"#.to_vec(),
            }
            .header("retry-after-ms", ["NaN", "-5", "garbage"][seq as usize % 3])
            .header("retry-after", ["-1", "nope", "NaN"][seq as usize % 3])
            .header("x-ratelimit-reset-requests", v);
        }
        let mut r = Reply::chat(
            TEXT,
            "stop",
            Some(json!({"prompt_tokens": 20, "completion_tokens": 15})),
        );
        for name in [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ] {
            r = r.header(name, v);
        }
        r
    });
    let ws = Workspace::new();
    let job = job_at(
        &ws,
        12,
        &server.base_url(),
        "name = \"gpt-4o-mini\"\nmax_tokens = 50",
        "max_retries = 4",
    );
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 0);
    assert!(!text(&out).contains("panicked"), "{}", text(&out));
    assert_complete_output(&ws, 12);
    let records = ws.jsonl("out/result.journal.jsonl");
    assert_eq!(records.len(), 12, "every paid answer journaled");
}

/// Finding 4: numbers that cannot work are refused up front (exit 2) naming the flag or
/// field and its range; none of them panics.
#[test]
fn numeric_flags_and_fields_out_of_range_are_refused_by_name() {
    let ws = Workspace::new();
    let job = job_at(
        &ws,
        1,
        "http://127.0.0.1:9/v1",
        "name = \"gpt-4o-mini\"\nmax_tokens = 50",
        "",
    );
    let cases: &[(&[&str], &str)] = &[
        (&["run", &job, "--timeout", "1e30"], "--timeout"),
        (&["run", &job, "--timeout", "inf"], "--timeout"),
        (&["run", &job, "--timeout", "NaN"], "--timeout"),
        (&["run", &job, "--timeout=-1"], "--timeout"),
        (&["run", &job, "--timeout", "0"], "--timeout"),
        (
            &["run", &job, "--connect-timeout", "1e30"],
            "--connect-timeout",
        ),
        (&["collect", &job, "--poll-secs", "1e30"], "--poll-secs"),
        (&["run", &job, "--max-usd", "inf"], "--max-usd"),
        (
            &["run", &job, "--mode", "batch", "--batch-max-requests", "0"],
            "--batch-max-requests",
        ),
        (
            &["run", &job, "--set", "api.timeout_secs=1e30"],
            "api.timeout_secs",
        ),
        (
            &["run", &job, "--set", "api.connect_timeout_secs=-1.0"],
            "api.connect_timeout_secs",
        ),
        (
            &["estimate", &job, "--set", "limits.max_retries=100000"],
            "limits.max_retries",
        ),
    ];
    for (args, name) in cases {
        let out = ws.run(args);
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains(name), "{args:?} should name {name}: {err}");
        assert!(
            err.contains("allowed range") || err.contains("not a"),
            "{args:?} should give the range: {err}"
        );
    }
}

/// Finding 4: `estimate --json | head` with the reader gone before anything is written ends
/// quietly, not with a panic.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let ws = Workspace::new();
    let job = job_at(
        &ws,
        5,
        "http://127.0.0.1:9/v1",
        "name = \"gpt-4o-mini\"\nmax_tokens = 50",
        "",
    );
    let mut child = ws
        .command()
        .args(["estimate", &job, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promptmill");
    // Close the pipe's only read end: every write to stdout now fails with EPIPE.
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.code() == Some(0) || status.code() == Some(141) || status.signal() == Some(13),
        "{status:?}: {err}"
    );
}

/// Finding 5: a quote opened in the last column and never closed would swallow every
/// following row into one cell. It is an error naming the quote's line and column (exit 2),
/// or with `--skip-bad-rows` one failed row; legitimately multi-line cells still work.
#[test]
fn an_unclosed_quote_is_an_error_at_its_position_never_a_merged_row() {
    let server = FaultServer::start(|_, _| {
        Reply::chat(
            TEXT,
            "stop",
            Some(json!({"prompt_tokens": 20, "completion_tokens": 15})),
        )
    });
    let ws = Workspace::new();
    let job = job_at(
        &ws,
        1,
        &server.base_url(),
        "name = \"gpt-4o-mini\"\nmax_tokens = 50",
        "",
    );
    ws.write(
        "rows.csv",
        "id,name,color\nr1,mug,blue\nr2,cup,\"red\nr3,bowl,green\nr4,plate,white\n",
    );
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("rows.csv:3:8"), "{err}");
    assert!(err.contains("never closed"), "{err}");
    assert_eq!(server.requests(), 0);

    let out = ws.run(&["run", &job, "--quiet", "--skip-bad-rows"]);
    assert_exit(&out, 1);
    let (h, rows) = ws.csv("out/result.csv");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0][col(&h, "status")], "ok");
    assert_eq!(rows[1][col(&h, "status")], "failed");
    assert!(
        rows[1][col(&h, "error")].contains("rows.csv:3:8"),
        "{rows:?}"
    );
    assert!(
        !rows.iter().any(|r| r.iter().any(|c| c.contains("bowl"))),
        "no merged row: {rows:?}"
    );

    // Quoted cells over several lines are fine.
    ws.write(
        "rows.csv",
        "id,name,color\nr1,mug,\"deep\nblue\"\nr2,cup,\"red, \"\"bright\"\"\"\nr3,bowl,green\n",
    );
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 0);
    assert_eq!(ws.column("out/result.csv", "color")[0], "deep\nblue");
    assert_eq!(ws.column("out/result.csv", "color")[1], "red, \"bright\"");
}

/// Finding 11: `finish_reason` is text the server chose, so it is formula-guarded like the
/// output; a structured field that is a number (`-5`) is a number, not a formula.
#[test]
fn generated_text_is_guarded_and_numbers_are_left_alone() {
    let server = FaultServer::start(|_, _| {
        Reply::chat(
            r#"{"score": -5, "note": "-1 star; =HYPERLINK(\"x\")"}"#,
            "=cmd|' /C calc'!A0",
            Some(json!({"prompt_tokens": 20, "completion_tokens": 15})),
        )
    });
    let ws = Workspace::new();
    ws.csv_rows(1);
    let job = ws.write_job(
        "job.toml",
        &JobFile {
            schema: r#"{ type = "object", required = ["score", "note"], properties = { score = { type = "number" }, note = { type = "string" } } }"#,
            api: &format!("base_url = \"{}\"", server.base_url()),
            ..JobFile::default()
        },
    );
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("out/result.csv");
    assert_eq!(rows[0][col(&h, "finish_reason")], "'=cmd|' /C calc'!A0");
    assert_eq!(rows[0][col(&h, "score")], "-5");
    assert_eq!(rows[0][col(&h, "note")], "'-1 star; =HYPERLINK(\"x\")");
}

/// Finding 11: the output and the summary are created like any file the user writes (mode
/// 0666 less the umask), not owner-only.
#[test]
fn output_files_follow_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let server = FaultServer::start(|_, _| {
        Reply::chat(
            TEXT,
            "stop",
            Some(json!({"prompt_tokens": 20, "completion_tokens": 15})),
        )
    });
    let ws = Workspace::new();
    let job = job_at(
        &ws,
        2,
        &server.base_url(),
        "name = \"gpt-4o-mini\"\nmax_tokens = 50",
        "",
    );
    let out = std::process::Command::new("sh")
        .current_dir(ws.dir.path())
        .env_remove("RUST_LOG")
        .env(OPENAI_KEY.0, OPENAI_KEY.1)
        .args([
            "-c",
            "umask 022 && exec \"$0\" run \"$1\" --quiet",
            env!("CARGO_BIN_EXE_promptmill"),
            &job,
        ])
        .output()
        .expect("run promptmill under sh");
    assert_exit(&out, 0);
    for file in ["out/result.csv", "out/result.summary.json"] {
        let mode = std::fs::metadata(ws.path(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644, "{file}: {mode:o}");
    }
}
