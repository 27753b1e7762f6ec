//! The tier table and the deadline planner (issue 18): the estimate prices every tier the
//! model is billed at and says how long each takes; `--tier auto --deadline D` runs the
//! cheapest tier expected to finish in time.

use serde_json::Value;

use crate::common::{assert_exit, stderr, stdout_json, JobFile, Workspace};

/// 20 rows of gpt-5-mini (billed at standard, flex, priority and batch) with `max_tokens =
/// 10`: every mock answer is longer than that, so each is cut to exactly 10 tokens and the
/// estimate's expected output (max_tokens, no `assume_output_tokens`) is what is billed.
fn tier_job(ws: &Workspace, model: &str, rpm: u32) -> String {
    ws.csv_rows(20);
    ws.write_job(
        "job.toml",
        &JobFile {
            model: &format!("name = \"{model}\"\nmax_tokens = 10"),
            limits: &format!("max_in_flight = 8\nrequests_per_minute = {rpm}"),
            ..JobFile::default()
        },
    )
}

fn tier<'a>(estimate: &'a Value, name: &str) -> &'a Value {
    estimate["tiers"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["tier"] == name))
        .unwrap_or_else(|| panic!("no tier {name} in {estimate}"))
}

#[test]
fn the_estimate_of_every_tier_is_what_the_mock_run_settles() {
    let ws = Workspace::new();
    let job = tier_job(&ws, "gpt-5-mini", 6000);
    let out = ws.run(&["estimate", &job, "--json"]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    let names: Vec<&str> = e["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tier"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["standard", "flex", "priority", "batch"], "{e}");
    // The table is printed too, with each tier's wall time and where it comes from.
    let text = stderr(&out);
    for needle in [
        "tiers",
        "(rate limits)",
        "(rate limits, flex assumed 2x slower, plan.flex_slowdown)",
        "6h 00m (typical batch time, plan.batch_hours)",
    ] {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
    // 20 requests at 6,000 a minute: 0.2 s; flex twice that; batch the typical 6 hours.
    assert_eq!(tier(&e, "standard")["wall_seconds"], 0.2, "{e}");
    assert_eq!(tier(&e, "flex")["wall_seconds"], 0.4, "{e}");
    assert_eq!(tier(&e, "priority")["wall_seconds"], 0.2, "{e}");
    assert_eq!(tier(&e, "batch")["wall_seconds"], 21_600.0, "{e}");

    let runs: [(&str, &[&str]); 4] = [
        ("standard", &[]),
        ("flex", &["--service-tier", "flex"]),
        ("priority", &["--service-tier", "priority"]),
        ("batch", &["--mode", "batch", "--wait", "--poll-secs", "0"]),
    ];
    let mut settled = Vec::new();
    for (name, flags) in runs {
        let output = format!("out/{name}.csv");
        let mut args = vec!["run", job.as_str(), "--mock", "--output", &output];
        args.extend_from_slice(flags);
        let out = ws.run(&args);
        assert_exit(&out, 0);
        let summary = ws.json(&format!("out/{name}.summary.json"));
        assert_eq!(summary["succeeded"], 20, "{summary}");
        let cost = summary["cost_usd"].as_f64().unwrap();
        let expected = tier(&e, name)["expected_usd"].as_f64().unwrap();
        assert!(
            (cost - expected).abs() <= expected * 0.01,
            "{name}: settled {cost}, estimated {expected}"
        );
        settled.push(cost);
    }
    // The tiers are really priced apart: flex and batch below standard, priority above.
    assert!(settled[1] < settled[0] && settled[3] < settled[0] && settled[2] > settled[0]);
}

#[test]
fn auto_tier_picks_batch_for_a_day_and_live_for_five_minutes() {
    let ws = Workspace::new();
    // gpt-4o-mini: standard, priority and batch (no flex). 20 rows at 600 a minute: 2 s.
    let job = tier_job(&ws, "gpt-4o-mini", 600);

    // `run --tier auto --deadline D` into `output`: what it printed.
    let auto = |deadline: &str, output: &str| {
        let out = ws.run(&[
            "run",
            &job,
            "--mock",
            "--tier",
            "auto",
            "--deadline",
            deadline,
            "--output",
            output,
        ]);
        assert_exit(&out, 0);
        stderr(&out)
    };

    let text = auto("24h", "out/day.csv");
    assert!(
        text.contains("plan: batch (")
            && text.contains("the cheapest expected to finish in time (the deadline 1d 00h")
            && text.contains("others: standard $"),
        "{text}"
    );
    let s = ws.json("out/day.summary.json");
    assert_eq!(
        (s["mode"].as_str(), s["succeeded"].as_u64()),
        (Some("batch"), Some(20)),
        "{s}"
    );

    let text = auto("5m", "out/soon.csv");
    assert!(
        text.contains("plan: standard (")
            && text.contains("batch $")
            && text.contains("(too slow)"),
        "{text}"
    );
    let s = ws.json("out/soon.summary.json");
    assert_eq!(
        (s["mode"].as_str(), s["succeeded"].as_u64()),
        (Some("live"), Some(20)),
        "{s}"
    );
    // Live prices, not batch ones: twice the day's cost.
    let day = ws.json("out/day.summary.json")["cost_usd"]
        .as_f64()
        .unwrap();
    let soon = s["cost_usd"].as_f64().unwrap();
    assert!((soon - 2.0 * day).abs() < soon * 0.01, "{soon} vs {day}");

    // The estimate says the same, and marks which tiers fit.
    let out = ws.run(&[
        "estimate",
        &job,
        "--tier",
        "auto",
        "--deadline",
        "5m",
        "--json",
    ]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    assert_eq!(e["plan"]["tier"], "standard", "{e}");
    assert_eq!(e["deadline_secs"], 300.0, "{e}");
    assert_eq!(tier(&e, "batch")["fits_deadline"], false, "{e}");
    assert_eq!(tier(&e, "standard")["fits_deadline"], true, "{e}");
    assert!(stderr(&out).contains("plan  "), "{}", stderr(&out));
}

#[test]
fn an_impossible_deadline_picks_the_fastest_tier_and_says_so() {
    let ws = Workspace::new();
    // 20 rows at 6 a minute: 200 s, beyond a minute's deadline; batch takes hours.
    let job = tier_job(&ws, "gpt-4o-mini", 6);
    let out = ws.run(&[
        "estimate",
        &job,
        "--tier",
        "auto",
        "--deadline",
        "1m",
        "--json",
    ]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    assert_eq!(
        (e["plan"]["tier"].as_str(), e["plan"]["late"].as_bool()),
        (Some("standard"), Some(true)),
        "{e}"
    );
    assert!(
        e["plan"]["reason"]
            .as_str()
            .unwrap()
            .contains("no tier is expected to finish in time"),
        "{e}"
    );
}

#[test]
fn a_bad_deadline_or_plan_setting_is_refused_with_its_range() {
    let ws = Workspace::new();
    let job = tier_job(&ws, "gpt-4o-mini", 600);
    for (args, needle) in [
        (vec!["--deadline", "soon"], "'soon' is not a duration"),
        (vec!["--deadline", "40d"], "outside the allowed range"),
        (
            vec!["--set", "plan.deadline=\"0s\""],
            "plan.deadline (--deadline): '0s' must be longer than zero",
        ),
        (
            vec!["--set", "plan.margin=0.95"],
            "plan.margin: 0.95 is outside the allowed range 0..=0.9",
        ),
        (
            vec!["--set", "plan.batch_hours=30"],
            "plan.batch_hours: 30 is outside the allowed range 0.01..=24 hours",
        ),
        (vec!["--tier", "cheapest"], "invalid value 'cheapest'"),
    ] {
        let mut a = vec!["estimate", job.as_str()];
        a.extend(args.iter().copied());
        let out = ws.run(&a);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // A model without a price cannot be planned.
    let out = ws.run(&[
        "estimate",
        &job,
        "--model",
        "no-such-model",
        "--tier",
        "auto",
    ]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("has no price, so tiers cannot be compared"),
        "{}",
        stderr(&out)
    );
}

/// The journal's answers as (batch?, prompt tokens, completion tokens, cost in picodollars).
fn answers(ws: &Workspace) -> Vec<(bool, u64, u64, u64)> {
    ws.jsonl("out/result.journal.jsonl")
        .into_iter()
        .filter(|r| r["status"] == "ok")
        .map(|r| {
            (
                r["batch"].as_bool().unwrap_or(false),
                r["usage"]["prompt_tokens"].as_u64().unwrap(),
                r["usage"]["completion_tokens"].as_u64().unwrap(),
                r["cost_pico"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Submits 20 rows as one batch to a mock whose batches would take 100,000 polls per
/// status step, then collects them with a one-second deadline: whenever the second less its
/// margin has passed the batch is still running (it cannot end on its own in time), so it is
/// cancelled (the mock answers half of a cancelled batch) and the other rows are sent live.
/// `api` is the job's `[api]` beyond its base URL, `key` the provider's key variable,
/// `prices` the model's live input and output prices in picodollars (batch: half).
fn past_deadline(api: &str, model: &str, key: (&str, &str), prices: (u64, u64)) {
    let mock = crate::common::Mock::start(&["--batch-step-polls", "100000"]);
    let ws = Workspace::new();
    ws.csv_rows(20);
    let job = ws.write_job(
        "job.toml",
        &JobFile {
            model: &format!("name = \"{model}\"\nmax_tokens = 10"),
            api: &format!("{api}\nbase_url = \"{}\"", mock.base_url),
            limits: "max_in_flight = 8",
            ..JobFile::default()
        },
    );
    ws.submit_batch(key, &job);
    ws.collect_past_deadline(key, &job);
    crate::common::assert_complete_output(&ws, 20);
    // Every row's prompt was answered once: the cancelled batch's finished half, then the
    // other half live; nothing twice.
    let stats = mock.stats();
    assert_eq!(stats["distinct_prompts"], 20, "{stats}");
    assert_eq!(stats["duplicate_prompts"], 0, "{stats}");
    assert_eq!(stats["ok"], 20, "{stats}");
    // One batch, cancelled and collected; nothing submitted after it.
    let state = ws.batch_state();
    assert_eq!(state["chunks"].as_array().map(Vec::len), Some(1), "{state}");
    assert_eq!(state["chunks"][0]["status"], "cancelled", "{state}");
    assert_eq!(state["chunks"][0]["collected"], true, "{state}");
    // Batch prices for the batch's answers, live prices for the rest.
    let rows = answers(&ws);
    assert_eq!(rows.len(), 20, "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r.0).count(), 10, "{rows:?}");
    for (in_batch, p, c, cost) in rows {
        let (input, output) = if in_batch {
            (prices.0 / 2, prices.1 / 2)
        } else {
            prices
        };
        assert_eq!(cost, p * input + c * output, "batch {in_batch}");
    }
    // Collecting again finds nothing to do and sends nothing.
    let out = ws.run_env(&[key], &["collect", &job]);
    assert_exit(&out, 0);
    assert_eq!(mock.stats()["ok"], 20);
}

#[test]
fn a_batch_past_its_deadline_is_cancelled_and_the_rest_sent_live() {
    // gpt-4o-mini: 1.5e-07 / 6e-07 per token.
    past_deadline(
        "",
        "gpt-4o-mini",
        crate::common::OPENAI_KEY,
        (150_000, 600_000),
    );
}

#[test]
fn an_anthropic_batch_past_its_deadline_is_cancelled_and_the_rest_sent_live() {
    // claude-haiku-4-5: 1e-06 / 5e-06 per token.
    past_deadline(
        "provider = \"anthropic\"",
        "claude-haiku-4-5",
        ("ANTHROPIC_API_KEY", crate::common::TEST_KEY),
        (1_000_000, 5_000_000),
    );
}
