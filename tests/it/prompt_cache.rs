//! Prompt caching: the mock caches prompts the way the providers do (OpenAI automatically in
//! 128-token blocks above 1,024 tokens; Anthropic only at `cache_control` breakpoints; batch
//! requests never see each other's writes), over real HTTP on 127.0.0.1.

use crate::common::start_mock_in_process as start;
use promptmill_mock::MockServer;
use serde_json::{json, Value};
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// About 2,000 tokens of text every request shares (" apple" is one token in o200k).
fn shared_prefix() -> String {
    "You are a copywriter.".to_string() + &" apple".repeat(2000)
}

async fn post(server: &MockServer, path: &str, body: &Value) -> Value {
    let resp = client()
        .post(format!("{}{path}", server.base_url()))
        .bearer_auth("sk-test")
        .header("x-api-key", "sk-test")
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

async fn get(server: &MockServer, path: &str) -> String {
    client()
        .get(format!("{}{path}", server.base_url()))
        .header("x-api-key", "sk-test")
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn openai_body(row: &str) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": shared_prefix()},
            {"role": "user", "content": format!("Write a headline for {row}.")}
        ]
    })
}

/// `(prompt_tokens, cached_tokens)` of one OpenAI-shaped answer.
async fn openai_usage(server: &MockServer, row: &str) -> (u64, u64) {
    let v = post(server, "/chat/completions", &openai_body(row)).await;
    let u = &v["usage"];
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
    )
}

#[tokio::test]
async fn openai_reads_a_shared_2000_token_prefix_in_128_token_blocks() {
    let server = start(&[]).await;
    let (prompt, first) = openai_usage(&server, "a kettle").await;
    assert!(prompt > 2000, "the prompt is long: {prompt}");
    assert_eq!(first, 0, "nothing is cached before the first answer");
    let (_, second) = openai_usage(&server, "a toaster").await;
    assert!(second > 0, "the second request reads the shared prefix");
    assert_eq!(
        second % 128,
        0,
        "OpenAI caches in 128-token blocks: {second}"
    );
    // The system message (about 2,000 tokens plus framing) is shared; the user's is not.
    assert!((1920..=2048).contains(&second), "cached {second}");
    assert!(second <= prompt);
}

#[tokio::test]
async fn no_prompt_cache_reports_no_cached_tokens() {
    let server = start(&["--no-prompt-cache"]).await;
    openai_usage(&server, "a kettle").await;
    let (_, second) = openai_usage(&server, "a toaster").await;
    assert_eq!(second, 0);
}

fn anthropic_body(row: &str, mark: bool) -> Value {
    let mut block = json!({"type": "text", "text": shared_prefix()});
    if mark {
        block["cache_control"] = json!({"type": "ephemeral"});
    }
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "system": [block],
        "messages": [{"role": "user", "content": format!("Write a headline for {row}.")}]
    })
}

/// `(input, cache write, cache read)` tokens of one Anthropic-shaped answer.
async fn anthropic_usage(server: &MockServer, row: &str, mark: bool) -> (u64, u64, u64) {
    let v = post(server, "/messages", &anthropic_body(row, mark)).await;
    let u = &v["usage"];
    (
        u["input_tokens"].as_u64().unwrap(),
        u["cache_creation_input_tokens"].as_u64().unwrap(),
        u["cache_read_input_tokens"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn anthropic_caches_only_at_cache_control_writing_first_then_reading() {
    let server = start(&[]).await;
    let (plain1, w, r) = anthropic_usage(&server, "a kettle", false).await;
    assert_eq!((w, r), (0, 0), "no cache_control: nothing cached");
    let (_, w, r) = anthropic_usage(&server, "a toaster", false).await;
    assert_eq!((w, r), (0, 0), "no cache_control: nothing read either");

    let (input1, write1, read1) = anthropic_usage(&server, "a kettle", true).await;
    assert!(
        write1 > 2000,
        "the marked system block is written: {write1}"
    );
    assert_eq!(read1, 0);
    assert_eq!(input1 + write1, plain1, "input_tokens excludes the write");
    let (input2, write2, read2) = anthropic_usage(&server, "a toaster", true).await;
    assert_eq!((write2, read2), (0, write1), "then read, whole");
    assert!(input2 < 30, "only the user's turn is uncached: {input2}");
}

#[tokio::test]
async fn batch_requests_do_not_see_each_others_writes_but_later_ones_see_theirs() {
    let server = start(&[]).await;
    let requests: Vec<Value> = (0..3)
        .map(|i| {
            json!({
                "custom_id": format!("r{i}"),
                "params": anthropic_body(&format!("product {i}"), true)
            })
        })
        .collect();
    let batch = post(
        &server,
        "/messages/batches",
        &json!({ "requests": requests }),
    )
    .await;
    let id = batch["id"].as_str().unwrap().to_string();
    // The mock ends a batch on its third poll.
    let mut ended = false;
    for _ in 0..10 {
        let b: Value =
            serde_json::from_str(&get(&server, &format!("/messages/batches/{id}")).await).unwrap();
        if b["processing_status"] == "ended" {
            ended = true;
            break;
        }
    }
    assert!(ended, "the batch ends within ten polls");
    let results = get(&server, &format!("/messages/batches/{id}/results")).await;
    let lines: Vec<Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        let u = &l["result"]["message"]["usage"];
        assert_eq!(
            u["cache_read_input_tokens"], 0,
            "no item reads a sibling's write: {l}"
        );
        assert!(u["cache_creation_input_tokens"].as_u64().unwrap() > 2000);
    }
    // A live request after the batch reads what the batch wrote.
    let (_, write, read) = anthropic_usage(&server, "a kettle", true).await;
    assert_eq!(write, 0);
    assert!(read > 2000);
}

mod estimate {
    //! The dry run finds the shared prefix and prices its cache reads; a mock run bills
    //! what it said.

    use crate::common::*;
    use promptmill::tokens::TokenCounter;
    use promptmill::types::{Message, Role};

    /// A system prompt whose framed tokens (3 + role + text) are `128 × 15 + 10` = 1,930:
    /// the shared prefix the estimate counts. The mock's common prefix runs a few tokens
    /// further (the next message's framing and the user template's first words), still
    /// inside the same 128-token block, so both round down to 1,920 cached tokens.
    fn system_prompt() -> String {
        let c = TokenCounter::for_model("gpt-4o-mini");
        let framing = c.count_chat(&[]);
        (1800..2100)
            .map(|n| format!("You write product copy.{}", " apple".repeat(n)))
            .find(|s| {
                let t = c.count_chat(&[Message::new(Role::System, s.as_str())]) - framing;
                t % 128 == 10
            })
            .expect("a length that ends 10 tokens into a block")
    }

    fn job(ws: &Workspace, extra_cache: &str) -> String {
        ws.csv_rows(200);
        let prompt = format!(
            "system = \"{}\"\nuser = \"Describe {{{{ name }}}} in {{{{ color }}}}.\"",
            system_prompt()
        );
        let mut toml = JobFile {
            prompt: &prompt,
            model: "name = \"gpt-4o-mini\"\nmax_tokens = 5",
            limits: "max_in_flight = 1",
            ..JobFile::default()
        }
        .toml();
        toml.push_str(extra_cache);
        ws.write("job.toml", &toml).to_string_lossy().into_owned()
    }

    #[test]
    fn a_mock_run_costs_what_the_with_caching_line_expects() {
        let ws = Workspace::new();
        let job = job(&ws, "");
        let out = ws.run_env(
            &[],
            &["estimate", &job, "--json", "--assume-output-tokens", "5"],
        );
        assert_exit(&out, 0);
        let e = stdout_json(&out);
        let pc = &e["prompt_cache"];
        assert_eq!(pc["provider_caching"], "automatic");
        assert_eq!(pc["prefixes"], 1);
        let g = &pc["groups"][0];
        assert_eq!(
            (g["messages"].as_u64(), g["rows"].as_u64()),
            (Some(1), Some(200))
        );
        assert_eq!(g["tokens"].as_u64().unwrap() % 128, 10);
        assert_eq!(g["cacheable"], true);
        assert_eq!(pc["cache_reads"], 199);
        assert_eq!(pc["cached_tokens"], 199 * 1920);
        let with = pc["cost"]["expected_usd"].as_f64().unwrap();
        let without = e["cost"]["expected_usd"].as_f64().unwrap();
        assert!(with < without * 0.7, "caching saves: {with} vs {without}");
        let table = stderr(&out);
        assert!(table.contains("live, with caching"), "{table}");

        // max_in_flight = 1: the first request writes the prefix, the 199 after it read it.
        // Both sides price the same model, so the costs compare directly; the answers'
        // few tokens (at most max_tokens = 5, assumed 5) are under 2% of the whole.
        let out = ws.run(&["run", &job, "--mock"]);
        assert_exit(&out, 0);
        let s = ws.summary();
        assert_eq!(s["cached_tokens"], 199 * 1920, "{s}");
        let spent = s["cost_this_run_usd"].as_f64().unwrap();
        let off = (spent - with).abs() / with;
        assert!(
            off < 0.02,
            "run {spent} vs estimate with caching {with}: {off}"
        );
    }

    #[test]
    fn cache_prefix_false_turns_the_analysis_off() {
        let ws = Workspace::new();
        let job = job(&ws, "\n[cache]\nprefix = false\n");
        let out = ws.run_env(&[], &["estimate", &job, "--json"]);
        assert_exit(&out, 0);
        let e = stdout_json(&out);
        assert!(e.get("prompt_cache").is_none(), "{e}");
        assert!(!stderr(&out).contains("with caching"));
    }

    #[test]
    fn anthropic_prefixes_too_short_for_haiku_are_reported_but_not_priced_as_cached() {
        let ws = Workspace::new();
        ws.csv_rows(3);
        let prompt = format!(
            "system = \"{}\"\nuser = \"Describe {{{{ name }}}}.\"",
            system_prompt()
        );
        let toml = JobFile {
            prompt: &prompt,
            model: "name = \"claude-haiku-4-5\"\nmax_tokens = 5",
            api: "provider = \"anthropic\"",
            ..JobFile::default()
        }
        .toml();
        let job = ws.write("job.toml", &toml).to_string_lossy().into_owned();
        let out = ws.run_env(&[], &["estimate", &job, "--json"]);
        assert_exit(&out, 0);
        let pc = &stdout_json(&out)["prompt_cache"];
        assert_eq!(
            pc["provider_caching"],
            "cache_control (placed by live runs)"
        );
        assert_eq!(pc["prefixes"], 1);
        // About 1,930 tokens: under haiku's 2,048.
        assert_eq!(pc["groups"][0]["cacheable"], false);
        assert_eq!(pc["cached_tokens"], 0);
    }
}
