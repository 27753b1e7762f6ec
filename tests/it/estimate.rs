//! The dry run: `promptmill estimate JOB` (= `run JOB --dry-run`) renders and counts every
//! row, prices the job and sends nothing.

use crate::common;

use common::*;
use promptmill::tokens::TokenCounter;
use promptmill::types::{Message, Role};

/// `promptmill estimate ARGS` with no API key at all: an estimate must not need one.
fn estimate(ws: &Workspace, args: &[&str]) -> std::process::Output {
    ws.command()
        .arg("estimate")
        .args(args)
        .output()
        .expect("run promptmill")
}

#[test]
fn estimate_sends_nothing_and_needs_no_key() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(40, &mock.base_url, "requests_per_minute = 600");
    let out = estimate(&ws, &[&job, "--json"]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    assert_eq!(e["rows"], 40);
    assert_eq!(e["requests"], 40);
    assert_eq!(mock.stat("requests"), 0, "an estimate sent a request");
    // `run --dry-run` is the same report.
    let out2 = ws.run_env(&[], &["run", &job, "--dry-run", "--json"]);
    assert_exit(&out2, 0);
    assert_eq!(out.stdout, out2.stdout);
    assert_eq!(mock.stat("requests"), 0);
    assert!(
        !ws.path("out/result.csv").exists(),
        "a dry run wrote output"
    );
}

#[test]
fn estimate_json_has_exact_tokens_costs_and_wall_time() {
    let (ws, job) = Workspace::with_job(
        100,
        "http://127.0.0.1:9",
        "requests_per_minute = 60\ntokens_per_minute = 1000000",
    );
    let out = estimate(&ws, &[&job, "--json", "--assume-output-tokens", "20"]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    // The parallel pass adds up exactly what the counter gives row by row (the counter
    // itself is checked against tiktoken in tests/it/token_counts.rs).
    let counter = TokenCounter::for_model("gpt-4o-mini");
    let expected: u64 = (1..=100)
        .map(|i| {
            counter.count_chat(&[
                Message::new(Role::System, "You are terse."),
                Message::new(Role::User, format!("Describe item {i} in color {}.", i % 7)),
            ])
        })
        .sum();
    let total = e["prompt_tokens"]["total"].as_u64().unwrap();
    assert_eq!(total, expected);
    assert_eq!(e["prompt_tokens"]["exact"], true);
    assert_eq!(e["prompt_tokens"]["encoding"], "o200k_base");
    let ct = &e["completion_tokens"];
    assert_eq!(ct["max_per_request"], 50);
    assert_eq!(ct["expected_per_request"], 20);
    assert_eq!(ct["expected_is_upper_bound"], false);
    assert_eq!(ct["max_total"], 5000);
    assert_eq!(ct["expected_total"], 2000);
    // gpt-4o-mini: $0.15 / $0.60 per million tokens; batch $0.075 / $0.30.
    let c = &e["cost"];
    let close = |a: &serde_json::Value, b: f64| (a.as_f64().unwrap() - b).abs() < 1e-12;
    assert!(close(&c["low_usd"], total as f64 * 0.15e-6), "{c}");
    assert!(
        close(&c["expected_usd"], total as f64 * 0.15e-6 + 2000.0 * 0.6e-6),
        "{c}"
    );
    assert!(
        close(&c["high_usd"], total as f64 * 0.15e-6 + 5000.0 * 0.6e-6),
        "{c}"
    );
    let b = &e["batch_cost"];
    assert!(
        close(
            &b["expected_usd"],
            total as f64 * 0.075e-6 + 2000.0 * 0.3e-6
        ),
        "{b}"
    );
    // 100 requests at 60/min: 100 s; tokens are far below the TPM limit.
    assert_eq!(e["min_wall_time"]["binding"], "requests_per_minute");
    assert_eq!(e["min_wall_time"]["seconds"], 100.0);
    assert_eq!(e["context_window"], 128000);
    assert_eq!(e["over_context_window"], 0);
}

#[test]
fn expected_output_defaults_to_the_upper_bound_and_unknown_price_is_unknown() {
    let (ws, job) = Workspace::with_job(5, "http://127.0.0.1:9", "");
    let out = estimate(&ws, &[&job, "--json", "--model", "my-local-llama"]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    assert_eq!(e["completion_tokens"]["expected_is_upper_bound"], true);
    assert_eq!(e["completion_tokens"]["expected_per_request"], 50);
    assert_eq!(e["prompt_tokens"]["exact"], false);
    assert!(e["cost"].is_null() && e["batch_cost"].is_null(), "{e}");
    assert_eq!(e["min_wall_time"]["binding"], "none");
    let err = stderr(&out);
    assert!(err.contains("approximate"), "{err}");
    assert!(err.contains("unknown: no price"), "{err}");
    assert!(!err.contains("$0.00"), "unknown price shown as zero: {err}");
}

#[test]
fn the_table_reads_well() {
    let (ws, job) = Workspace::with_job(
        30,
        "http://127.0.0.1:9",
        "requests_per_minute = 500\ntokens_per_minute = 2000",
    );
    let out = estimate(
        &ws,
        &[
            &job,
            "--assume-output-tokens",
            "12",
            "--max-usd",
            "0.0005",
            "--show",
            "2",
        ],
    );
    assert_exit(&out, 0);
    assert!(out.stdout.is_empty(), "the table goes to stderr");
    insta::assert_snapshot!(stderr(&out));
}

#[test]
fn rows_over_the_context_window_are_flagged() {
    let ws = Workspace::new();
    let mut csv = String::from("id,name,color\n");
    for i in 1..=8 {
        // Rows 3 and 6 are long: ~2 × 600 words.
        let name = if i % 3 == 0 {
            "word ".repeat(600)
        } else {
            format!("item {i}")
        };
        csv.push_str(&format!("r{i},{name},red\n"));
    }
    ws.write("rows.csv", &csv);
    ws.write(
        "prices.json",
        r#"{"gpt-4o-mini": {"input_cost_per_token": 1.5e-7, "output_cost_per_token": 6e-7,
            "max_input_tokens": 200, "litellm_provider": "openai"}}"#,
    );
    let job = ws.job("http://127.0.0.1:9", "");
    let out = estimate(&ws, &[&job, "--json", "--prices", "prices.json"]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    assert_eq!(e["context_window"], 200);
    assert_eq!(e["over_context_window"], 2);
    let rows: Vec<u64> = e["over_context_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [3, 6]);
    assert_eq!(e["longest_prompt"]["row"], 3, "ties go to the earlier row");
    assert_eq!(e["longest_prompt"]["id"], "r3");
    // Derived batch prices are marked.
    assert_eq!(e["batch_cost"]["derived"], true);
    let err = stderr(&out);
    assert!(err.contains("2 rows are longer: row 3 (id r3"), "{err}");
    assert!(err.contains("derived"), "{err}");
}

#[test]
fn the_first_bad_row_is_reported_even_with_parallel_workers() {
    let ws = Workspace::new();
    // 3000 rows (many chunks); rows 1500 and 2900 lack the `color` column value the
    // template needs (JSONL with a missing key), the first one must be reported.
    let mut s = String::new();
    for i in 1..=3000 {
        if i == 1500 || i == 2900 {
            s.push_str(&format!("{{\"id\":\"r{i}\",\"name\":\"item {i}\"}}\n"));
        } else {
            s.push_str(&format!(
                "{{\"id\":\"r{i}\",\"name\":\"item {i}\",\"color\":\"red\"}}\n"
            ));
        }
    }
    ws.write("rows.jsonl", &s);
    let job = ws.job("http://127.0.0.1:9", "");
    for _ in 0..3 {
        let out = estimate(&ws, &[&job, "--input", "rows.jsonl"]);
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(err.contains("r1500") || err.contains("1500"), "{err}");
        assert!(!err.contains("2900"), "{err}");
    }
    // With skip_bad_rows both are counted and the rest estimated.
    let out = estimate(
        &ws,
        &[
            &job,
            "--input",
            "rows.jsonl",
            "--set",
            "input.skip_bad_rows=true",
            "--json",
        ],
    );
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    assert_eq!(
        (e["rows"].as_u64(), e["bad_rows"].as_u64()),
        (Some(3000), Some(2))
    );
    assert_eq!(e["requests"], 2998);
}

/// A run renders and counts every row once, in the estimate pass, and sends what that pass
/// kept after letting go of the tokenizer: the kept requests must be what the planner makes.
#[test]
fn recorded_token_counts_are_the_planner_counts() {
    use promptmill::config::{Job, Overrides};
    use promptmill::cost::Tier;
    use promptmill::estimate::{estimate, EstimateOptions};
    use promptmill::pipeline::rows::Step;
    use promptmill::plan::Planner;
    use promptmill::render::Renderer;
    use promptmill::source::Source;

    let (ws, job) = Workspace::with_job(600, "http://127.0.0.1:9", "");
    let job = Job::load(std::path::Path::new(&job), &Overrides::default()).unwrap();
    let planner = |job: &Job| {
        let renderer = Renderer::new(&job.prompt_spec()).unwrap();
        Planner::new(job, renderer, promptmill::client::provider_for(job), "x")
    };
    let beside = ws.path("rows.csv");
    let opts = EstimateOptions {
        price: None,
        show: 0,
        workers: 3,
        resume: None,
        cache: None,
        tier: Tier::Live,
        spool_beside: Some(&beside),
        judge: None,
        prices: None,
        outputs: &[],
    };
    let (e, spool) = estimate(&job, &planner(&job), &opts).unwrap();
    let spool = spool.expect("a spool");
    let counting = planner(&job);
    let source = Source::open(&job.input.path, &job.source_options()).unwrap();
    let mut kept = spool.read().unwrap();
    let (mut rows, mut total) = (0, 0);
    for row in source {
        let row = row.unwrap();
        let stepped = kept.next().expect("a step for every row").unwrap();
        assert_eq!(stepped.row, row);
        let Step::Send(req) = stepped.step else {
            panic!("row {} not sent: {:?}", row.index, stepped.step)
        };
        let counted = counting.plan(&row).unwrap();
        assert_eq!(
            (req.row, req.prompt_tokens, &req.hash, &req.body),
            (
                row.index,
                counted.prompt_tokens,
                &counted.hash,
                &counted.body
            ),
            "row {}",
            row.index
        );
        (rows, total) = (rows + 1, total + req.prompt_tokens);
    }
    assert!(kept.next().is_none(), "more steps than rows");
    assert_eq!((rows, total), (e.requests, e.prompt_tokens.total));
}

/// Rows asking the very same thing are one request in a live run (the others get a copy of
/// its answer): the estimate counts and prices that one request, and the run sends as many
/// requests as the estimate said.
#[test]
fn identical_requests_are_estimated_once_like_the_run_sends_them() {
    let ws = Workspace::new();
    let mut csv = String::from("id,name,color\n");
    for i in 0..12 {
        // Four distinct prompts, each asked by three rows.
        csv.push_str(&format!("r{i},item {},red\n", i % 4));
    }
    ws.write("rows.csv", &csv);
    let job = ws
        .write("job.toml", &JobFile::default().toml())
        .to_string_lossy()
        .into_owned();
    let out = estimate(&ws, &[&job, "--json"]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    assert_eq!(
        (e["rows"].as_u64(), e["requests"].as_u64()),
        (Some(12), Some(4)),
        "{e}"
    );
    assert_eq!(e["shared"], 8, "{e}");
    assert!(
        stderr(&out).contains("8 asking what another row asks"),
        "{}",
        stderr(&out)
    );
    let run = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&run, 0);
    assert_eq!(stdout_json(&run)["requests"], 4);
    // A new row asking what a done row asked gets that answer: nothing to send.
    csv.push_str("r12,item 0,red\n");
    ws.write("rows.csv", &csv);
    let dry = ws.run(&["run", &job, "--mock", "--dry-run", "--json"]);
    assert_exit(&dry, 0);
    let e = stdout_json(&dry);
    assert_eq!(
        (e["requests"].as_u64(), e["shared"].as_u64()),
        (Some(0), Some(1)),
        "{e}"
    );
}
