//! The price data: `prices update` into the cache folder (atomically; a bad download keeps
//! the old file), `prices MODEL`, and the price date and deprecation warnings of the
//! estimate and the summary.

use crate::common::loopback::{Reply, Server};
use crate::common::{assert_exit, stderr, Workspace};

/// A small price file in LiteLLM's shape: gpt-4o-mini at $1 / $2 per 1M tokens (not its
/// real price, so a run priced from it is recognisable) and a model with flex prices.
const GOOD: &str = r#"{
  "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0},
  "gpt-4o-mini": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06,
                  "litellm_provider": "openai", "mode": "chat"},
  "cheap-flex": {"input_cost_per_token": 4e-06, "output_cost_per_token": 8e-06,
                 "input_cost_per_token_flex": 2e-06, "output_cost_per_token_flex": 4e-06,
                 "deprecation_date": "2026-12-20", "litellm_provider": "openai", "mode": "chat"}
}"#;

fn server() -> Server {
    Server::start(|req| match req.path.as_str() {
        "/good.json" => Reply::json(200, GOOD),
        "/corrupt.json" => Reply::json(200, "{\"gpt-4o-mini\": {\"input_cost_per_token\": 1e-06,"),
        "/html" => Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/html".into())],
            body: b"<html>rate limited</html>".to_vec(),
        },
        "/no-models.json" => Reply::json(200, r#"{"sample_spec": {"mode": "chat"}}"#),
        _ => Reply::json(404, r#"{"error": "not found"}"#),
    })
}

/// Files in the cache's prices folder, sorted.
fn cache_files(ws: &Workspace) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(ws.path("cache/prices"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn update_replaces_the_cached_file_and_a_bad_download_keeps_it() {
    let ws = Workspace::new();
    let srv = server();
    let cache = ws.path("cache").to_string_lossy().into_owned();
    let env = [("PROMPTMILL_CACHE_DIR", cache.as_str())];

    let out = ws.run_env(
        &env,
        &["prices", "update", "--from", &srv.url("/good.json")],
    );
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("2 models"), "{}", stderr(&out));
    assert_eq!(cache_files(&ws), ["litellm.json"]);
    let saved = ws.read("cache/prices/litellm.json");
    let v: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(v["_as_of"], "2026-12-01");
    assert_eq!(v["gpt-4o-mini"]["input_cost_per_token"], 1e-06);

    // Later commands price from the cached file: gpt-4o-mini at $1 per 1M input tokens.
    let out = ws.run_env(&env, &["prices", "gpt-4o-mini"]);
    assert_exit(&out, 0);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("prices from  cache file"), "{shown}");
    assert!(shown.contains("dated 2026-12-01"), "{shown}");
    let input = shown
        .lines()
        .find(|l| l.starts_with("standard") && l.contains(" input "))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        input.contains("0.000001") && input.contains(" 1 "),
        "{input}"
    );
    // And the built-in snapshot's other models are not mixed in.
    assert_exit(&ws.run_env(&env, &["prices", "gpt-5-mini"]), 2);

    // Corrupt JSON, an HTML page, a file with no model and an HTTP error all fail without
    // touching the cached file or leaving a temporary file behind.
    for (path, says) in [
        ("/corrupt.json", "not valid JSON"),
        ("/html", "not valid JSON"),
        ("/no-models.json", "no usable model"),
        ("/missing", "HTTP 404"),
    ] {
        let out = ws.run_env(&env, &["prices", "update", "--from", &srv.url(path)]);
        assert!(!out.status.success(), "{path}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{path}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("are kept"),
            "{path}: {}",
            stderr(&out)
        );
        assert_eq!(ws.read("cache/prices/litellm.json"), saved, "{path}");
        assert_eq!(cache_files(&ws), ["litellm.json"], "{path}");
    }

    // A local file works too, and `--prices FILE` still wins over the cache.
    let file = ws.write("mine.json", &GOOD.replace("1e-06", "3e-06"));
    let out = ws.run_env(
        &env,
        &["prices", "gpt-4o-mini", "--prices", &file.to_string_lossy()],
    );
    assert_exit(&out, 0);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("prices from  --prices file"), "{shown}");
    assert!(shown.contains("0.000003"), "{shown}");
    let out = ws.run_env(
        &env,
        &["prices", "update", "--from", &file.to_string_lossy()],
    );
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_str(&ws.read("cache/prices/litellm.json")).unwrap();
    assert_eq!(v["gpt-4o-mini"]["input_cost_per_token"], 3e-06);
    assert!(v["_source"].as_str().unwrap().contains("mine.json"), "{v}");
}

#[test]
fn update_refuses_plain_http_to_another_machine() {
    let ws = Workspace::new();
    let cache = ws.path("cache").to_string_lossy().into_owned();
    let out = ws.run_env(
        &[("PROMPTMILL_CACHE_DIR", cache.as_str())],
        &[
            "prices",
            "update",
            "--from",
            "http://example.invalid/prices.json",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("http"), "{}", stderr(&out));
    assert!(cache_files(&ws).is_empty());
}

#[test]
fn prices_model_shows_every_tier_with_source_and_date() {
    let ws = Workspace::new();
    // gpt-5.4 in the shipped snapshot: standard, flex, priority and batch, a 272k band.
    let out = ws.run(&["prices", "gpt-5.4"]);
    assert_exit(&out, 0);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        "prices from  built-in snapshot (LiteLLM",
        "litellm 1.110.2",
        "dated 2026-11-20",
        "tiers        standard, flex, priority, batch",
    ] {
        assert!(shown.contains(want), "{want}\n{shown}");
    }
    let row = |tier: &str, label: &str| {
        shown
            .lines()
            .find(|l| {
                l.starts_with(tier)
                    && l.split_whitespace()
                        .skip(1)
                        .collect::<Vec<_>>()
                        .join(" ")
                        .starts_with(label)
            })
            .unwrap_or_else(|| panic!("no {tier} {label} in\n{shown}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Per token, per 1M, and the key it was read from.
    assert_eq!(
        row("standard", "input "),
        "standard input 0.0000025 2.5 input_cost_per_token"
    );
    assert_eq!(
        row("standard", "input, prompt > 272k"),
        "standard input, prompt > 272k 0.000005 5 input_cost_per_token_above_272k_tokens"
    );
    assert_eq!(
        row("flex", "output "),
        "flex output 0.0000075 7.5 output_cost_per_token_flex"
    );
    assert_eq!(
        row("batch", "cache read "),
        "batch cache read 0.00000013 0.13 cache_read_input_token_cost_batches"
    );

    // Claude: 5-minute and 1-hour cache writes.
    let out = ws.run(&["prices", "anthropic/claude-sonnet-4-5"]);
    assert_exit(&out, 0);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("claude-sonnet-4-5 (asked as anthropic/claude-sonnet-4-5)"));
    assert!(shown.contains("tiers        standard, batch"), "{shown}");
    assert!(
        shown.contains("cache_creation_input_token_cost_above_1hr"),
        "{shown}"
    );
    // Its deprecation date (2026-11-30) is past on the tests' today (2026-12-01).
    assert!(shown.contains("deprecation  2026-11-30"), "{shown}");
    assert!(
        stderr(&out).contains("was deprecated on 2026-11-30"),
        "{}",
        stderr(&out)
    );

    // An unknown model: exit 2 with close names.
    let out = ws.run(&["prices", "gpt-5.4-mnii"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("no price for model 'gpt-5.4-mnii'"), "{err}");
    assert!(
        err.contains("close names:") && err.contains("gpt-5.4-mini"),
        "{err}"
    );
}

#[test]
fn estimate_and_summary_name_the_price_date_and_warn() {
    let mock = crate::common::Mock::start(&[]);
    let (ws, job) = Workspace::with_job(3, &mock.base_url, "");
    // The tests' today (2026-12-01): the snapshot is 11 days old, gpt-4o-mini is deprecated
    // on 2027-01-14: no warning.
    let out = ws.run(&["estimate", &job]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(
        err.contains("prices               built-in snapshot (LiteLLM"),
        "{err}"
    );
    assert!(err.contains("dated 2026-11-20"), "{err}");
    assert!(!err.contains("warning:"), "{err}");

    // 61 days after the snapshot, 6 days after the deprecation.
    let later = [
        crate::common::OPENAI_KEY,
        ("PROMPTMILL_TODAY", "2027-01-20"),
    ];
    let out = ws.run_env(&later, &["estimate", &job, "--json"]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(
        err.contains("warning: the price data is dated 2026-11-20 (61 days old"),
        "{err}"
    );
    assert!(
        err.contains("warning: model 'gpt-4o-mini' was deprecated on 2027-01-14"),
        "{err}"
    );
    // 30 days before the deprecation date: warned; 31: not.
    let soon = [("PROMPTMILL_TODAY", "2026-12-15")];
    let err = stderr(&ws.run_env(&soon, &["estimate", &job]));
    assert!(
        err.contains("model 'gpt-4o-mini' is deprecated on 2027-01-14, in 30 days"),
        "{err}"
    );
    let err = stderr(&ws.run_env(&[("PROMPTMILL_TODAY", "2026-12-14")], &["estimate", &job]));
    assert!(!err.contains("warning:"), "{err}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["price_warnings"].as_array().map(Vec::len),
        Some(2),
        "{json}"
    );

    let out = ws.run_env(&later, &["run", &job]);
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(
        err.contains("  prices             built-in snapshot"),
        "{err}"
    );
    assert!(
        err.contains("warning: the price data is dated 2026-11-20 (61 days old"),
        "{err}"
    );
    let summary = ws.summary();
    assert!(summary["prices"]
        .as_str()
        .unwrap()
        .contains("dated 2026-11-20"));
    assert_eq!(summary["price_warnings"].as_array().map(Vec::len), Some(2));
}

/// The journal's answered records: (row id, prompt tokens, completion tokens, cost).
fn answers(ws: &Workspace) -> Vec<(String, u64, u64, u64)> {
    let mut out: Vec<(String, u64, u64, u64)> = ws
        .jsonl("out/result.journal.jsonl")
        .into_iter()
        .filter(|r| r["status"] == "ok")
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["usage"]["prompt_tokens"].as_u64().unwrap(),
                r["usage"]["completion_tokens"].as_u64().unwrap(),
                r["cost_pico"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn flex_resource_unavailable_is_retried_unbilled_and_falls_back() {
    let mock = crate::common::Mock::start(&[]);
    let (ws, job) = Workspace::with_job(0, &mock.base_url, "");
    ws.named_rows(
        &[
            "a [[mock:flex-unavailable:1]]",
            "b",
            "c [[mock:flex-unavailable:1000]]",
        ],
        "red",
    );
    let out = ws.run(&[
        "run",
        &job,
        "--model",
        "gpt-5-mini",
        "--service-tier",
        "flex",
        "--flex-fallback-after",
        "1",
    ]);
    assert_exit(&out, 0);
    let stats = mock.stats();
    // Row a met one (its retry comes within a second, so it stays at flex), row c at least
    // two (it waits 0.5 s or more after the first) before it fell back; none of them is a
    // rate limit.
    assert!(stats["flex_unavailable"].as_u64().unwrap() >= 3, "{stats}");
    assert_eq!(stats["rate_limited"], 0, "{stats}");
    assert_eq!(stats["ok"], 3, "{stats}");
    let summary = ws.summary();
    assert_eq!(summary["rate_limited"], 0, "{summary}");
    assert_eq!(summary["succeeded"], 3, "{summary}");

    // gpt-5-mini in the shipped snapshot: flex 1.25e-07 / 1e-06 per token, standard
    // 2.5e-07 / 2e-06. Rows a and b were served at flex, row c at the standard tier after
    // its fallback; the refused attempts cost nothing.
    let rows = answers(&ws);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let mut total = 0;
    for (id, prompt, completion, cost) in &rows {
        let (input, output) = if id == "r3" {
            (250_000, 2_000_000)
        } else {
            (125_000, 1_000_000)
        };
        assert_eq!(
            *cost,
            prompt * input + completion * output,
            "{id}: {rows:?} {stats}"
        );
        total += cost;
    }
    let cost_usd = summary["cost_usd"].as_f64().unwrap();
    assert!((cost_usd - total as f64 / 1e12).abs() < 1e-12, "{summary}");
}

#[test]
fn flex_without_fallback_keeps_waiting_and_priority_is_billed_as_priority() {
    let mock = crate::common::Mock::start(&[]);
    let (ws, job) = Workspace::with_job(0, &mock.base_url, "");
    ws.named_rows(&["a [[mock:flex-unavailable:3]]"], "red");
    let out = ws.run(&[
        "run",
        &job,
        "--model",
        "gpt-5-mini",
        "--service-tier",
        "flex",
    ]);
    assert_exit(&out, 0);
    assert_eq!(mock.stats()["flex_unavailable"], 3);
    let (_, p, c, cost) = answers(&ws).remove(0);
    assert_eq!(cost, p * 125_000 + c * 1_000_000);
    // The summary counts them as neither rate limits nor server errors.
    let summary = ws.summary();
    assert_eq!(summary["rate_limited"], 0, "{summary}");
    assert_eq!(summary["server_errors"], 0, "{summary}");

    // Priority: 4.5e-07 / 3.6e-06 per token.
    let mock = crate::common::Mock::start(&[]);
    let (ws, job) = Workspace::with_job(1, &mock.base_url, "");
    let out = ws.run(&[
        "run",
        &job,
        "--model",
        "gpt-5-mini",
        "--service-tier",
        "priority",
    ]);
    assert_exit(&out, 0);
    let (_, p, c, cost) = answers(&ws).remove(0);
    assert_eq!(cost, p * 450_000 + c * 3_600_000);

    // A fallback without flex is refused before anything is sent.
    let out = ws.run(&["run", &job, "--flex-fallback-after", "5"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("model.flex_fallback_after_secs: only with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cached_prompt_tokens_are_billed_at_the_cache_read_price() {
    let mock = crate::common::Mock::start(&[]);
    let (ws, job) = Workspace::with_job(0, &mock.base_url, "");
    ws.named_rows(&["a [[mock:cached:8]]", "b"], "red");
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 0);
    // gpt-4o-mini in the shipped snapshot: input 1.5e-07, cache read 7.5e-08, output 6e-07.
    let rows = answers(&ws);
    let (_, p, c, cost) = &rows[0];
    assert!(*p > 8, "{rows:?}");
    assert_eq!(
        *cost,
        (p - 8) * 150_000 + 8 * 75_000 + c * 600_000,
        "{rows:?}"
    );
    let (_, p, c, cost) = &rows[1];
    assert_eq!(*cost, p * 150_000 + c * 600_000, "{rows:?}");
    let journal = ws.jsonl("out/result.journal.jsonl");
    let a = journal
        .iter()
        .find(|r| r["id"] == "r1" && r["status"] == "ok")
        .unwrap();
    assert_eq!(a["usage"]["cached_tokens"], 8, "{a}");
}
