//! The hard budget cap, end to end against the mock API: a cap below the estimate stops the
//! run at the cap (exit 3, resumable), and a raised cap finishes it without sending any row
//! twice.

use crate::common;

use common::*;

/// Sum of the `cost_usd` column of the output.
fn output_cost(ws: &Workspace) -> f64 {
    let cost = ws.column("out/result.csv", "cost_usd");
    cost.iter().filter_map(|c| c.parse::<f64>().ok()).sum()
}

#[test]
fn a_cap_below_the_estimate_stops_at_the_cap_and_resumes_when_raised() {
    let mock = Mock::start(&["--latency-ms", "5"]);
    let (ws, job) = Workspace::with_job(120, &mock.base_url, "");
    let job = job.as_str();
    let cap = 0.0008;
    let cap_s = cap.to_string();

    // The estimate says the job costs more than the cap.
    let out = ws.run(&["estimate", job, "--json", "--max-usd", &cap_s]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    let expected = e["cost"]["expected_usd"].as_f64().unwrap();
    assert!(
        expected > 2.0 * cap,
        "estimate {expected} should exceed the cap {cap}"
    );
    assert_eq!(mock.stat("requests"), 0);

    // The capped run stops at the cap.
    let out = ws.run(&[
        "run",
        job,
        "--quiet",
        "--max-usd",
        &cap_s,
        "--max-in-flight",
        "8",
    ]);
    assert_exit(&out, 3);
    let s = ws.summary();
    assert_eq!(s["status"], "budget", "{s}");
    let spent = s["spent_total_usd"].as_f64().unwrap();
    assert!(spent <= cap + 1e-12, "spent {spent} over the cap {cap}");
    assert!(spent > cap / 2.0, "stopped far too early: {spent} of {cap}");
    let in_output = output_cost(&ws);
    assert!(
        in_output <= cap + 1e-12,
        "output cost {in_output} over the cap"
    );
    assert!((in_output - spent).abs() < 1e-9, "{in_output} vs {spent}");
    let done = s["succeeded"].as_u64().unwrap();
    let pending = s["pending"].as_u64().unwrap();
    assert!(done > 0 && pending > 0, "{s}");
    assert_eq!(done + pending, 120, "{s}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{} spent of $0.0008",
            promptmill::types::Money::from_usd(spent)
        )) && err.contains(&format!("{pending} rows not run")),
        "the message must say what was spent and what remains: {err}"
    );
    let sent_first = mock.stat("distinct_prompts");
    assert_eq!(
        sent_first, done,
        "every request the mock answered is in the output"
    );

    // Raise the cap: the rest runs, nothing is sent twice.
    let out = ws.run(&["run", job, "--quiet", "--max-usd", "1"]);
    assert_exit(&out, 0);
    let s = ws.summary();
    assert_eq!(s["status"], "completed");
    assert_eq!(s["succeeded"], 120);
    assert_eq!(s["resumed"].as_u64().unwrap(), done);
    assert_complete_output(&ws, 120);
    assert_eq!(mock.stat("duplicate_prompts"), 0, "a prompt was sent twice");
    assert_eq!(mock.stat("distinct_prompts"), 120);
    let total = s["spent_total_usd"].as_f64().unwrap();
    assert!((output_cost(&ws) - total).abs() < 1e-9);
}

#[test]
fn a_cap_on_a_model_without_a_price_refuses_to_start() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(5, &mock.base_url, "");
    let out = ws.run(&["run", &job, "--model", "my-local-llama", "--max-usd", "1"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("no price for model 'my-local-llama'"), "{err}");
    assert!(err.contains("--prices"), "{err}");
    assert_eq!(mock.stat("requests"), 0);
    // Without a cap the same job runs (its cost is reported as unknown, never 0).
    let out = ws.run(&["run", &job, "--model", "my-local-llama", "--quiet"]);
    assert_exit(&out, 0);
    assert!(ws.summary()["cost_usd"].is_null());
}

#[test]
fn answers_thrown_away_by_a_stopped_row_are_still_counted_as_spent() {
    // The mock answers one request, then says the account is out of quota. The one row's
    // first structured answer is not JSON: paid for, thrown away, and the retry is refused,
    // so the job stops with the row unfinished.
    let mock = Mock::start(&["--quota-requests", "1"]);
    let ws = Workspace::new();
    ws.write("rows.csv", "id,name\nr1,lamp [[mock:bad-schema]]\n");
    let job = ws.write_job(
        "job.toml",
        &JobFile {
            prompt: "user = \"Describe {{ name }}.\"",
            model: "name = \"gpt-4o-mini\"\nmax_tokens = 60",
            schema: r#"{ type = "object", properties = { headline = { type = "string" } }, required = ["headline"], additionalProperties = false }"#,
            api: &format!("base_url = \"{}\"", mock.base_url),
            ..JobFile::default()
        },
    );
    let job = job.as_str();
    let out = ws.run(&["run", job, "--quiet"]);
    assert_exit(&out, 3);
    assert_eq!(mock.stat("requests"), 2, "{}", mock.stats());
    let s = ws.summary();
    assert_eq!(s["pending"], 1, "{s}");
    let this_run = s["cost_this_run_usd"].as_f64().unwrap();
    assert!(this_run > 0.0, "the thrown-away answer was paid for: {s}");
    assert_eq!(s["spent_total_usd"].as_f64(), Some(this_run), "{s}");

    // The journal keeps that spend as a line that is not the row's record.
    let journal = ws.read("out/result.journal.jsonl");
    let lines = ws.jsonl("out/result.journal.jsonl");
    assert_eq!(lines.len(), 1, "{journal}");
    assert_eq!(lines[0]["row"], 0);
    assert!(lines[0].get("status").is_none(), "{journal}");
    assert!(lines[0]["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // Against an account with quota the row is sent again as a new row (the spend line is
    // not its record, so it is neither done nor "changed"), and the total spent across both
    // runs includes the first run's thrown-away answer.
    let funded = Mock::start(&[]);
    let url = format!("api.base_url={}", funded.base_url);
    let out = ws.run(&["run", job, "--quiet", "--set", &url]);
    assert_exit(&out, 0);
    let s = ws.summary();
    assert_eq!(s["succeeded"], 1, "{s}");
    assert_eq!(s["changed"], 0, "{s}");
    assert_eq!(s["resumed"], 0, "{s}");
    let second = s["cost_this_run_usd"].as_f64().unwrap();
    let total = s["spent_total_usd"].as_f64().unwrap();
    assert!(
        (total - (this_run + second)).abs() < 1e-12,
        "{total} = {this_run} + {second}"
    );
}
