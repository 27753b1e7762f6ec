//! Servers that misbehave towards the client: redirects that would carry the key and the
//! prompts elsewhere, refusals and content filters, fewer answers than asked for, servers
//! that support less than OpenAI does. Every test runs the real binary against a server on
//! 127.0.0.1 (the built-in mock, or the small recording server in `tests/it/common/loopback.rs`).

use crate::common;
use crate::common::loopback;

use common::{assert_exit, stderr, JobFile, Workspace, TEST_KEY};
use loopback::{Reply, Server};

/// Every redirect status a server may answer with.
const REDIRECTS: [u16; 5] = [301, 302, 303, 307, 308];

/// The providers, as (`[api]` lines for a base URL `{base}`, the key's variable).
fn providers(base: &str) -> [(&'static str, String, &'static str); 3] {
    [
        (
            "openai",
            format!("provider = \"openai\"\nbase_url = \"{base}/v1\""),
            "OPENAI_API_KEY",
        ),
        (
            "azure",
            format!("provider = \"azure\"\nbase_url = \"{base}\""),
            "AZURE_OPENAI_API_KEY",
        ),
        (
            "anthropic",
            format!("provider = \"anthropic\"\nbase_url = \"{base}/v1\""),
            "ANTHROPIC_API_KEY",
        ),
    ]
}

/// A server answering every request with a `status` redirect to the same path on `to`.
fn redirecting(status: u16, to: &Server) -> Server {
    let target = to.url("");
    Server::start(move |req| Reply::redirect(status, &format!("{target}{}", req.path)))
}

/// The run stopped on the first redirect (exit 3) with a message naming where the server
/// pointed and `api.base_url`; the redirect's target got no connection at all (so neither
/// the key nor a prompt), while the redirecting server did get the request with its key.
fn assert_stopped_at_redirect(
    out: &std::process::Output,
    from: &Server,
    to: &Server,
    what: &str,
    code: i32,
) {
    assert_exit(out, code);
    let err = stderr(out);
    assert!(
        err.contains(&format!("'{}/", to.url(""))),
        "{what}: the error names the Location:\n{err}"
    );
    assert!(err.contains("api.base_url"), "{what}: {err}");
    assert!(!err.contains(TEST_KEY), "{what}: the key was printed");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_eq!(to.connections(), 0, "{what}: the redirect was followed");
    let seen = from.seen();
    assert!(!seen.is_empty(), "{what}: nothing reached the base URL");
    assert!(
        seen[0].headers.iter().any(|(_, v)| v.contains(TEST_KEY)),
        "{what}: the request to the base URL carried no key: {:?}",
        seen[0].headers
    );
}

/// Finding 1: a base URL that redirects (to another port on the same host, so another
/// origin) never makes a live run send the key or the prompts there, for every provider
/// and every redirect status; the run stops (exit 3) naming the Location and api.base_url.
#[test]
fn live_runs_never_follow_a_redirect() {
    let elsewhere = Server::never_reached();
    for status in REDIRECTS {
        let from = redirecting(status, &elsewhere);
        for (name, api, key) in providers(&from.url("")) {
            let ws = Workspace::new();
            ws.csv_rows(3);
            ws.write_job(
                "job.toml",
                &JobFile {
                    api: &api,
                    limits: "max_retries = 1",
                    ..JobFile::default()
                },
            );
            let out = ws.run_env(&[(key, TEST_KEY)], &["run", "job.toml", "--quiet"]);
            let what = format!("{name} live, HTTP {status}");
            assert_stopped_at_redirect(&out, &from, &elsewhere, &what, 3);
            let summary = ws.summary();
            assert_eq!(summary["pending"], 3, "{what}: rows stay pending");
        }
    }
}

/// Finding 1, batch mode: the Files/Batches client (OpenAI) and the Message Batches client
/// (Anthropic) follow no redirect either.
#[test]
fn batch_runs_never_follow_a_redirect() {
    let elsewhere = Server::never_reached();
    for status in REDIRECTS {
        let from = redirecting(status, &elsewhere);
        for (name, api, key) in providers(&from.url("")) {
            if name == "azure" {
                continue; // batch mode refuses Azure before any request
            }
            let ws = Workspace::new();
            ws.csv_rows(3);
            ws.write_job(
                "job.toml",
                &JobFile {
                    api: &api,
                    ..JobFile::default()
                },
            );
            let out = ws.run_env(&[(key, TEST_KEY)], &["run", "job.toml", "--mode", "batch"]);
            let what = format!("{name} batch, HTTP {status}");
            assert_stopped_at_redirect(&out, &from, &elsewhere, &what, 3);
        }
    }
}

/// `[model]` of a job for `provider` ("openai" or "anthropic"), streamed or not.
fn model_for(provider: &str, stream: bool) -> String {
    let name = if provider == "anthropic" {
        "claude-haiku-4-5"
    } else {
        "gpt-4o-mini"
    };
    format!("name = \"{name}\"\nmax_tokens = 50\nstream = {stream}")
}

/// Output rows by id: (status, error, cost_usd).
fn outcomes(ws: &Workspace) -> std::collections::HashMap<String, (String, String, String)> {
    let (h, rows) = ws.csv("out/result.csv");
    let c = |n| common::col(&h, n);
    rows.iter()
        .map(|r| {
            (
                r[c("id")].clone(),
                (
                    r[c("status")].clone(),
                    r[c("error")].clone(),
                    r[c("cost_usd")].clone(),
                ),
            )
        })
        .collect()
}

/// A cost cell that holds a positive amount.
fn paid(cost: &str) -> bool {
    cost.parse::<f64>().is_ok_and(|c| c > 0.0)
}

/// Finding 10: a refusal (OpenAI's `message.refusal`, Anthropic's `stop_reason: "refusal"`)
/// and a content filter (`finish_reason: "content_filter"`) fail their row with the reason in
/// `error` and the answer's cost kept, plain or streamed; `--retry-failed` sends them again.
#[test]
fn refusals_and_content_filters_fail_their_rows_with_cost_kept() {
    let mock = common::Mock::start(&[]);
    for provider in ["openai", "anthropic"] {
        for stream in [false, true] {
            let what = format!("{provider}, stream = {stream}");
            let ws = Workspace::new();
            ws.named_rows(
                &[
                    "kettle",
                    "lamp [[mock:refusal]]",
                    "mug [[mock:content-filter]]",
                ],
                "red",
            );
            let api = format!(
                "provider = \"{provider}\"\nbase_url = \"{}\"",
                mock.base_url
            );
            ws.write_job(
                "job.toml",
                &JobFile {
                    model: &model_for(provider, stream),
                    api: &api,
                    ..JobFile::default()
                },
            );
            let key = if provider == "anthropic" {
                "ANTHROPIC_API_KEY"
            } else {
                "OPENAI_API_KEY"
            };
            let out = ws.run_env(&[(key, TEST_KEY)], &["run", "job.toml", "--quiet"]);
            assert_exit(&out, 1);
            let rows = outcomes(&ws);
            assert_eq!(rows["r1"].0, "ok", "{what}: {:?}", rows["r1"]);
            let (status, error, cost) = &rows["r2"];
            assert_eq!(status, "failed", "{what}: a refusal is not ok");
            let expected = if provider == "anthropic" {
                "stop_reason = refusal"
            } else {
                "the model refused: I'm sorry"
            };
            assert!(error.contains(expected), "{what}: {error}");
            assert!(paid(cost), "{what}: the refusal's cost is kept: {cost:?}");
            let (status, error, cost) = &rows["r3"];
            assert_eq!(status, "failed", "{what}: a content filter is not ok");
            let expected = if provider == "anthropic" {
                "stop_reason = refusal"
            } else {
                "finish_reason = content_filter"
            };
            assert!(error.contains(expected), "{what}: {error}");
            assert!(
                paid(cost),
                "{what}: the filtered answer's cost is kept: {cost:?}"
            );
            assert_eq!(ws.summary()["failed"], 2, "{what}");

            let before = mock.stat("requests");
            let out = ws.run_env(
                &[(key, TEST_KEY)],
                &["run", "job.toml", "--quiet", "--retry-failed"],
            );
            assert_exit(&out, 1);
            assert_eq!(
                mock.stat("requests") - before,
                2,
                "{what}: --retry-failed sends the two failed rows again"
            );
        }
    }
}

/// Finding 10 in batch mode: a refusal in a Batch API output line fails its row too.
#[test]
fn a_refusal_in_a_batch_fails_its_row_with_cost_kept() {
    let mock = common::Mock::start(&[]);
    let ws = Workspace::new();
    ws.named_rows(&["kettle", "lamp [[mock:refusal]]"], "red");
    let job = ws.job(&mock.base_url, "");
    let out = ws.run(&common::batch_wait_args(&job, &["--quiet"]));
    assert_exit(&out, 1);
    let rows = outcomes(&ws);
    assert_eq!(rows["r1"].0, "ok");
    let (status, error, cost) = &rows["r2"];
    assert_eq!(status, "failed");
    assert!(error.contains("the model refused"), "{error}");
    assert!(paid(cost), "{cost:?}");
}

/// Finding 11: a server that answers fewer choices than `model.n` asked for fails the row
/// (naming model.n), its cost kept, instead of an `ok` row with an empty `output_2`.
#[test]
fn fewer_choices_than_n_fail_the_row() {
    let mock = common::Mock::start(&[]);
    let ws = Workspace::new();
    ws.named_rows(&["kettle", "lamp [[mock:one-choice]]"], "red");
    ws.write_job(
        "job.toml",
        &JobFile {
            model: "name = \"gpt-4o-mini\"\nmax_tokens = 50\nn = 2",
            api: &format!("base_url = \"{}\"", mock.base_url),
            ..JobFile::default()
        },
    );
    let out = ws.run(&["run", "job.toml", "--quiet"]);
    assert_exit(&out, 1);
    let rows = outcomes(&ws);
    assert_eq!(rows["r1"].0, "ok");
    let second = ws.column("out/result.csv", "output_2");
    assert!(!second[0].is_empty(), "r1 has its second variant");
    let (status, error, cost) = &rows["r2"];
    assert_eq!(status, "failed");
    assert!(
        error.contains("model.n = 2") && error.contains("returned 1"),
        "{error}"
    );
    assert!(paid(cost), "{cost:?}");
}

/// Finding 11: when every row failed the summary says `failed` (and where the reasons are),
/// not "completed".
#[test]
fn the_summary_says_failed_when_every_row_failed() {
    let mock = common::Mock::start(&[]);
    let ws = Workspace::new();
    ws.named_rows(&["kettle [[mock:400]]", "lamp [[mock:400]]"], "red");
    let job = ws.job(&mock.base_url, "");
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 1);
    let s = ws.summary();
    assert_eq!(s["status"], "failed");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or("")
            .contains("every row failed"),
        "{s}"
    );
    let err = stderr(&out);
    assert!(!err.contains("completed"), "{err}");
    // One row fine, one failed: completed (exit 1), as before.
    let ws = Workspace::new();
    ws.named_rows(&["kettle", "lamp [[mock:400]]"], "red");
    let job = ws.job(&mock.base_url, "");
    assert_exit(&ws.run(&["run", &job, "--quiet"]), 1);
    assert_eq!(ws.summary()["status"], "completed");
}

/// Finding 11: `export` writes the Batch API input file and leaves no journal (nor the
/// folder made for it) behind.
#[test]
fn export_leaves_no_empty_journal_behind() {
    let ws = Workspace::new();
    ws.csv_rows(3);
    let job = ws.job("https://api.openai.com/v1", "");
    let out = ws.run(&[
        "export",
        &job,
        "--format",
        "openai-batch",
        "--out",
        "requests.jsonl",
    ]);
    assert_exit(&out, 0);
    assert_eq!(ws.read("requests.jsonl").lines().count(), 3);
    assert!(
        !ws.path("out/result.journal.jsonl").exists(),
        "export left a journal behind"
    );
    assert!(
        !ws.path("out").exists(),
        "export left an empty folder behind"
    );
}

/// Finding 11: `ANTHROPIC_BASE_URL` follows the Anthropic SDKs (no `/v1`, which they add);
/// a value with `/v1` works too.
#[test]
fn anthropic_base_url_works_with_and_without_v1() {
    let mock = common::Mock::start(&[]);
    let host = mock.base_url.trim_end_matches("/v1").to_string();
    for base in [host.clone(), format!("{host}/"), mock.base_url.clone()] {
        let ws = Workspace::new();
        ws.csv_rows(2);
        ws.write_job(
            "job.toml",
            &JobFile {
                model: &model_for("anthropic", false),
                api: "provider = \"anthropic\"",
                ..JobFile::default()
            },
        );
        let out = ws.run_env(
            &[
                ("ANTHROPIC_API_KEY", TEST_KEY),
                ("ANTHROPIC_BASE_URL", &base),
            ],
            &["run", "job.toml", "--quiet"],
        );
        assert_exit(&out, 0);
        common::assert_complete_output(&ws, 2);
    }
}

/// Finding 11: log lines (WARN) carry no colour codes when stderr is not a terminal.
#[test]
fn warnings_carry_no_colour_codes_off_a_terminal() {
    let mock = common::Mock::start(&[]);
    let ws = Workspace::new();
    ws.csv_rows(2);
    let job = ws.job(&mock.base_url, "");
    // A journal whose last record was cut off: the run repairs it and warns.
    ws.write("out/result.journal.jsonl", "{\"row\":0,\"id\":\"r1\"");
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("WARN"), "a warning was logged: {err}");
    assert!(!err.contains('\u{1b}'), "colour codes on a pipe: {err:?}");
}

/// The `[model]` schema of the structured-output tests.
const SCHEMA: &str = r#"{ type = "object", additionalProperties = false, required = ["title", "stars"], properties = { title = { type = "string" }, stars = { type = "integer", minimum = 1, maximum = 5 } } }"#;

/// Finding 12: against a server that answers `json_schema` with a 500 (as llama-cpp-python
/// does), `model.schema_mode = "json_object"` (its `{"type": "json_object", "schema": …}`)
/// and `"prompt"` (the schema as a system instruction) both get structured answers into
/// columns; the default form fails there.
#[test]
fn schema_mode_reaches_a_server_that_rejects_json_schema() {
    let mock = common::Mock::start(&["--reject-json-schema"]);
    for (mode, code) in [("", 1), ("json_object", 0), ("prompt", 0)] {
        let ws = Workspace::new();
        ws.csv_rows(3);
        let model = match mode {
            "" => "name = \"local\"\nmax_tokens = 200".to_string(),
            m => format!("name = \"local\"\nmax_tokens = 200\nschema_mode = \"{m}\""),
        };
        ws.write_job(
            "job.toml",
            &JobFile {
                model: &model,
                schema: SCHEMA,
                api: &format!("base_url = \"{}\"", mock.base_url),
                limits: "max_retries = 0",
                ..JobFile::default()
            },
        );
        let out = ws.run(&["run", "job.toml", "--quiet"]);
        assert_exit(&out, code);
        let titles = ws.column("out/result.csv", "title");
        let stars = ws.column("out/result.csv", "stars");
        if code == 0 {
            assert!(
                titles.iter().all(|t| t.starts_with("Mock title")),
                "{mode}: {titles:?}"
            );
            assert!(
                stars
                    .iter()
                    .all(|s| s.parse::<u8>().is_ok_and(|n| (1..=5).contains(&n))),
                "{mode}: {stars:?}"
            );
        } else {
            let errors = ws.column("out/result.csv", "error");
            assert!(
                errors.iter().all(|e| e.contains("json_schema")),
                "{errors:?}"
            );
        }
    }
}

/// Finding 12: Anthropic has no `response_format`, so a schema_mode that needs one is
/// refused before anything is sent.
#[test]
fn anthropic_refuses_a_response_format_schema_mode() {
    let ws = Workspace::new();
    ws.csv_rows(1);
    ws.write_job(
        "job.toml",
        &JobFile {
            model: "name = \"claude-haiku-4-5\"\nschema_mode = \"json_schema\"",
            schema: SCHEMA,
            api: "provider = \"anthropic\"\nbase_url = \"http://127.0.0.1:9/v1\"",
            ..JobFile::default()
        },
    );
    let out = ws.run_env(&[("ANTHROPIC_API_KEY", TEST_KEY)], &["run", "job.toml"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("model.schema_mode = \"json_schema\""),
        "{}",
        stderr(&out)
    );
}
