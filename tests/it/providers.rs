//! Every API shape end to end: the real binary against the mock over loopback, for OpenAI
//! (chat, legacy completions, n > 1, streaming), Azure OpenAI, Anthropic (plain and
//! streamed), and structured output that ends up as CSV columns.

use crate::common;

use std::process::Output;

use common::*;

/// The key variable and key each provider's test runs get.
const OPENAI: (&str, &str) = ("OPENAI_API_KEY", "sk-test");
const ANTHROPIC: (&str, &str) = ("ANTHROPIC_API_KEY", "k-test");

/// Runs `promptmill run JOB --quiet EXTRA` in the workspace with only `key` set.
fn run(ws: &Workspace, key: (&str, &str), job: &str, extra: &[&str]) -> Output {
    ws.run_env(&[key], &[&["run", job, "--quiet"], extra].concat())
}

/// A job over rows.csv with `model` and `api` sections given whole, written to `{out}.toml`
/// and writing `out/{out}.csv`.
fn job(ws: &Workspace, model: &str, api: &str, out: &str) -> String {
    ws.write_job(
        &format!("{out}.toml"),
        &JobFile {
            model,
            api,
            limits: "max_in_flight = 8\nmax_retries = 3",
            output: &format!("path = \"out/{out}.csv\""),
            ..JobFile::default()
        },
    )
}

/// The same job twice: `plain.toml`, and `streamed.toml` with `stream = true` added to
/// `model`.
fn plain_and_streamed(ws: &Workspace, model: &str, api: &str) -> (String, String) {
    let plain = job(ws, model, api, "plain");
    let streamed = job(ws, &format!("{model}\nstream = true"), api, "streamed");
    (plain, streamed)
}

/// One column of `out/{out}.csv`.
fn column(ws: &Workspace, out: &str, name: &str) -> Vec<String> {
    ws.column(&format!("out/{out}.csv"), name)
}

/// Each of `columns` is the same in `out/{left}.csv` and `out/{right}.csv`.
fn assert_same_columns(ws: &Workspace, left: &str, right: &str, columns: &[&str]) {
    for c in columns {
        assert_eq!(column(ws, left, c), column(ws, right, c), "column {c}");
    }
}

#[test]
fn azure_deployment_url_api_key_header_and_api_version() {
    let mock = Mock::start(&["--api-key", "az-secret-key-123"]);
    let ws = Workspace::new();
    ws.named_rows(&["kettle", "lamp", "chair"], "red");
    let endpoint = mock.base_url.trim_end_matches("/v1").to_string();
    let j = job(
        &ws,
        "name = \"gpt-4o-mini\"\nmax_tokens = 40",
        &format!("provider = \"azure\"\nbase_url = \"{endpoint}\"\ndeployment = \"copy-writer\""),
        "azure",
    );
    let out = run(&ws, ("AZURE_OPENAI_API_KEY", "az-secret-key-123"), &j, &[]);
    assert_exit(&out, 0);
    assert!(column(&ws, "azure", "status").iter().all(|s| s == "ok"));
    assert!(column(&ws, "azure", "output")[0].starts_with("Mock answer for: Describe kettle"));
    assert_eq!(mock.stat("requests"), 3);
    assert_eq!(mock.stat("unauthorized"), 0);

    // The key goes only in `api-key`: the same job with a wrong key is refused (exit 3),
    // and the key appears nowhere in what promptmill wrote.
    let j2 = job(
        &ws,
        "name = \"gpt-4o-mini\"\nmax_tokens = 40",
        &format!("provider = \"azure\"\nbase_url = \"{endpoint}\""),
        "azure_bad",
    );
    let out = run(&ws, ("AZURE_OPENAI_API_KEY", "az-wrong-key-999"), &j2, &[]);
    assert_exit(&out, 3);
    assert!(mock.stat("unauthorized") >= 1);
    assert_absent(&ws.path("."), "az-wrong-key-999", &[]);
    assert!(!text(&out).contains("az-wrong-key-999"));

    // `run --mock` works for an Azure job as it is (no key, no endpoint needed).
    let out = ws.run_env(&[], &["run", &j2, "--quiet", "--mock"]);
    assert_exit(&out, 0);
}

#[test]
fn anthropic_messages_with_529_retried_and_usage_recorded() {
    let mock = Mock::start(&["--api-key", "ant-secret-key-123"]);
    let ws = Workspace::new();
    ws.named_rows(&["kettle", "lamp [[mock:fail-first:2]]"], "red");
    let j = job(
        &ws,
        "name = \"claude-haiku-4-5\"\nmax_tokens = 40\nstop = [\"zzz\"]",
        &format!("provider = \"anthropic\"\nbase_url = \"{}\"", mock.base_url),
        "anthropic",
    );
    let out = run(&ws, ("ANTHROPIC_API_KEY", "ant-secret-key-123"), &j, &[]);
    assert_exit(&out, 0);
    assert_eq!(column(&ws, "anthropic", "status"), ["ok", "ok"]);
    assert_eq!(
        column(&ws, "anthropic", "attempts"),
        ["1", "3"],
        "two 529s retried"
    );
    assert_eq!(mock.stat("server_errors"), 2);
    assert_eq!(column(&ws, "anthropic", "finish_reason"), ["stop", "stop"]);
    for p in column(&ws, "anthropic", "prompt_tokens") {
        assert!(p.parse::<u64>().unwrap() > 5, "{p}");
    }
    let cost: f64 = column(&ws, "anthropic", "cost_usd")[0].parse().unwrap();
    assert!(cost > 0.0, "claude-haiku-4-5 is priced");

    // max_tokens reached is reported as finish_reason "length", not hidden.
    ws.named_rows(&["kettle [[mock:length]]"], "red");
    let out = run(&ws, ("ANTHROPIC_API_KEY", "ant-secret-key-123"), &j, &[]);
    assert_exit(&out, 0);
    assert_eq!(column(&ws, "anthropic", "finish_reason"), ["length"]);
}

#[test]
fn openai_stream_is_assembled_like_the_plain_answer_and_cut_streams_are_retried() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.named_rows(&["kettle", "lamp [[mock:cut-stream]]", "chair"], "red");
    let api = format!("base_url = \"{}\"", mock.base_url);
    let model = "name = \"gpt-4o-mini\"\nmax_tokens = 60\nn = 2";
    let (plain, streamed) = plain_and_streamed(&ws, model, &api);
    assert_exit(&run(&ws, OPENAI, &streamed, &[]), 0);
    assert_eq!(
        column(&ws, "streamed", "attempts"),
        ["1", "2", "1"],
        "the cut stream was retried"
    );
    assert_exit(&run(&ws, OPENAI, &plain, &[]), 0);
    let columns = [
        "output",
        "output_2",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
    ];
    assert_same_columns(&ws, "streamed", "plain", &columns);
    assert!(
        column(&ws, "streamed", "completion_tokens")
            .iter()
            .all(|t| t.parse::<u64>().unwrap() > 0),
        "usage chunk recorded"
    );
}

#[test]
fn anthropic_stream_is_assembled_with_usage() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.named_rows(&["kettle", "lamp"], "red");
    let api = format!("provider = \"anthropic\"\nbase_url = \"{}\"", mock.base_url);
    let model = "name = \"claude-haiku-4-5\"\nmax_tokens = 60";
    let (plain, streamed) = plain_and_streamed(&ws, model, &api);
    assert_exit(&run(&ws, ANTHROPIC, &streamed, &[]), 0);
    assert_exit(&run(&ws, ANTHROPIC, &plain, &[]), 0);
    let columns = [
        "output",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
    ];
    assert_same_columns(&ws, "streamed", "plain", &columns);
}

fn product_rows(ws: &Workspace, extra: &str) {
    ws.write(
        "products.csv",
        &format!(
            "sku,name,category,features,price\n\
             SKU-1,Trail Runner,Shoes,Grippy sole,119.00\n\
             SKU-2,Alpine Shell{extra},Jackets,Waterproof,289.00\n\
             SKU-3,Camp Mug,Kitchen,Enamel,12.00\n"
        ),
    );
}

/// The structured product-copy job over products.csv (the repo's template and schema),
/// with `model` and `api` lines added to those sections.
fn product_job(ws: &Workspace, base_url: &str, model: &str, api: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    ws.write_job(
        "copy.toml",
        &JobFile {
            input: "path = \"products.csv\"\nid = \"sku\"",
            prompt: &format!(
                "system = \"You write concise, upbeat product copy.\"\n\
                 template = \"{root}/templates/product_copy.j2\""
            ),
            model: &format!(
                "{model}\nmax_tokens = 300\n\
                 schema_file = \"{root}/templates/product_copy.schema.json\""
            ),
            api: &format!("base_url = \"{base_url}\"\n{api}"),
            limits: "max_retries = 2",
            output: "path = \"out/copy.csv\"",
            ..JobFile::default()
        },
    )
}

#[test]
fn structured_product_copy_becomes_csv_columns_and_bad_json_is_retried() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    product_rows(&ws, " [[mock:bad-schema]]");
    let j = product_job(&ws, &mock.base_url, "name = \"gpt-4o-mini\"", "");
    let out = run(&ws, OPENAI, &j, &[]);
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("out/copy.csv");
    for c in ["headline", "body", "call_to_action"] {
        assert!(h.contains(&c.to_string()), "{c} column in {h:?}");
    }
    for r in &rows {
        assert_eq!(r[col(&h, "status")], "ok");
        assert!(
            r[col(&h, "headline")].starts_with("Mock headline for:"),
            "{r:?}"
        );
        assert!(!r[col(&h, "body")].is_empty());
        assert!(!r[col(&h, "call_to_action")].is_empty());
        let whole: serde_json::Value = serde_json::from_str(&r[col(&h, "output")]).unwrap();
        assert_eq!(
            whole["headline"].as_str(),
            Some(r[col(&h, "headline")].as_str())
        );
    }
    assert_eq!(
        rows[1][col(&h, "attempts")],
        "2",
        "the non-JSON answer was retried"
    );

    // With no retries left the row fails, and its error says why.
    product_rows(&ws, " [[mock:bad-schema]] again");
    let out = run(&ws, OPENAI, &j, &["--set", "limits.max_retries=0"]);
    assert_exit(&out, 1);
    let (h, rows) = ws.csv("out/copy.csv");
    assert_eq!(rows[1][col(&h, "status")], "failed");
    let err = &rows[1][col(&h, "error")];
    assert!(
        err.contains("does not follow model.schema") && err.contains("not JSON"),
        "{err}"
    );
    assert!(
        rows[1][col(&h, "prompt_tokens")].parse::<u64>().unwrap() > 0,
        "paid tokens kept"
    );

    // A structured answer cut off at max_tokens fails the row at once, saying so.
    product_rows(&ws, " [[mock:length]]");
    let out = run(&ws, OPENAI, &j, &[]);
    assert_exit(&out, 1);
    let (h, rows) = ws.csv("out/copy.csv");
    assert_eq!(rows[1][col(&h, "status")], "failed");
    assert_eq!(rows[1][col(&h, "attempts")], "1");
    assert!(rows[1][col(&h, "error")].contains("finish_reason = \"length\""));
}

#[test]
fn structured_output_over_anthropic_streaming() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    product_rows(&ws, "");
    let j = product_job(
        &ws,
        &mock.base_url,
        "name = \"claude-haiku-4-5\"\nstream = true",
        "provider = \"anthropic\"",
    );
    let out = run(&ws, ANTHROPIC, &j, &[]);
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("out/copy.csv");
    for r in &rows {
        assert_eq!(r[col(&h, "status")], "ok");
        assert!(
            r[col(&h, "call_to_action")].starts_with("Mock call_to_action for:"),
            "{r:?}"
        );
    }
}

#[test]
fn legacy_completions_endpoint_and_n_variants_as_columns() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.named_rows(&["kettle", "lamp"], "red");
    let api = format!(
        "base_url = \"{}\"\nendpoint = \"completions\"",
        mock.base_url
    );
    let j = job(
        &ws,
        "name = \"gpt-3.5-turbo-instruct\"\nmax_tokens = 60\nn = 3",
        &api,
        "legacy",
    );
    let out = run(&ws, OPENAI, &j, &[]);
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("out/legacy.csv");
    assert!(h.contains(&"output_3".to_string()) && !h.contains(&"output_4".to_string()));
    for r in &rows {
        let v: Vec<&str> = ["output", "output_2", "output_3"]
            .iter()
            .map(|c| r[col(&h, c)].as_str())
            .collect();
        // The legacy prompt is the system and user messages joined.
        assert!(
            v.iter()
                .all(|t| t.starts_with("Mock answer for: You are terse.")),
            "{v:?}"
        );
        assert!(
            v[0] != v[1] && v[1] != v[2],
            "three different variants: {v:?}"
        );
    }
    assert_eq!(
        mock.stat("requests"),
        2,
        "one request per row, n variants each"
    );
}

#[test]
fn a_silent_stream_times_out_between_chunks_and_is_retried() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.named_rows(&["kettle [[mock:slow-body]]"], "red");
    let j = job(
        &ws,
        "name = \"gpt-4o-mini\"\nmax_tokens = 40\nstream = true",
        &format!("base_url = \"{}\"\ntimeout_secs = 0.5", mock.base_url),
        "silent",
    );
    let out = run(&ws, OPENAI, &j, &["--set", "limits.max_retries=1"]);
    assert_exit(&out, 1);
    assert_eq!(column(&ws, "silent", "attempts"), ["2"]);
    let err = &column(&ws, "silent", "error")[0];
    assert!(err.contains("stream was silent"), "{err}");
}

#[test]
fn example_structured_copy_runs_offline_with_mock() {
    let ws = Workspace::new();
    let job = "examples/structured-copy/job.toml";
    let out = ws.run_shipped(job, &["--quiet"], "copy.csv");
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("copy.csv");
    assert_eq!(rows.len(), 12);
    for r in &rows {
        assert_eq!(r[col(&h, "status")], "ok");
        for c in ["headline", "body", "call_to_action"] {
            assert!(
                r[col(&h, c)].starts_with(&format!("Mock {c} for:")),
                "{r:?}"
            );
        }
    }
}
