//! `[[outputs]]`: several named texts per row, each from its own prompt and model settings,
//! each its own request with its own cost, sharing the row's identity, journal and budget;
//! the output keeps one row per input row.

use crate::common;

use common::*;

const OUTPUTS: &str = "\n[[outputs]]\nname = \"description\"\nmodel = \"gpt-4o\"\nmax_tokens = 60\n\
     user = \"Describe {{ name }} in two sentences.{% if name == 'bad' %} [[mock:400]]{% endif %}\"\n\
     \n[[outputs]]\nname = \"meta\"\nuser = \"A meta description for {{ name }} ({{ color }}).\"\n";

fn job(ws: &Workspace, names: &[&str], extra: &str) -> String {
    ws.named_rows(names, "red");
    let text = JobFile {
        prompt: "user = \"A headline for {{ name }}.\"",
        ..JobFile::default()
    }
    .toml();
    ws.write("job.toml", &format!("{text}{OUTPUTS}{extra}"))
        .to_string_lossy()
        .into_owned()
}

fn sum(ws: &Workspace, columns: &[&str]) -> f64 {
    columns
        .iter()
        .flat_map(|c| ws.column("out/result.csv", c))
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

#[test]
fn three_outputs_are_three_columns_and_three_requests_per_row_in_one_row() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let job = job(
        &ws,
        &["boots", "socks", "hat", "scarf", "gloves"],
        &format!("[api]\nbase_url = \"{}\"\n", mock.base_url),
    );
    let out = ws.run_env(
        &[("OPENAI_API_KEY", "k")],
        &["run", &job, "--quiet", "--json"],
    );
    assert_exit(&out, 0);
    assert_eq!(mock.stat("requests"), 15, "three requests per row");
    let (header, rows) = ws.csv("out/result.csv");
    assert_eq!(rows.len(), 5, "one output row per input row");
    for c in [
        "output",
        "description",
        "meta",
        "description_cost_usd",
        "meta_cost_usd",
    ] {
        assert!(header.iter().any(|h| h == c), "{c} in {header:?}");
    }
    for c in ["output", "description", "meta"] {
        let texts = ws.column("out/result.csv", c);
        assert!(texts.iter().all(|t| !t.is_empty()), "{c}: {texts:?}");
    }
    assert!(ws
        .column("out/result.csv", "status")
        .iter()
        .all(|s| s == "ok"));
    // The summary's cost is every request's: the answers' and the outputs' columns.
    let s = stdout_json(&out);
    let total = s["cost_usd"].as_f64().expect("priced");
    let columns = sum(&ws, &["cost_usd", "description_cost_usd", "meta_cost_usd"]);
    assert!(
        (total - columns).abs() < 1e-6,
        "summary {total} vs columns {columns}: {s}"
    );
    assert_eq!(s["requests"], 15, "{s}");

    // Run again: nothing is paid twice.
    let again = ws.run_env(&[("OPENAI_API_KEY", "k")], &["run", &job, "--quiet"]);
    assert_exit(&again, 0);
    assert_eq!(mock.stat("requests"), 15, "a second run sends nothing");

    // Change one output's prompt: only its requests are sent again.
    let text = ws
        .read("job.toml")
        .replace("A meta description", "A short meta description");
    ws.write("job.toml", &text);
    let changed = ws.run_env(&[("OPENAI_API_KEY", "k")], &["run", &job, "--quiet"]);
    assert_exit(&changed, 0);
    assert_eq!(
        mock.stat("requests"),
        20,
        "only the changed output, once per row"
    );
}

#[test]
fn the_estimate_counts_and_prices_every_output() {
    let ws = Workspace::new();
    let job = job(&ws, &["boots", "socks", "hat"], "");
    let e = stdout_json(&ws.run(&["estimate", &job, "--json"]));
    assert_eq!(
        (e["requests"].as_u64(), e["output_requests"].as_u64()),
        (Some(3), Some(6)),
        "{e}"
    );
    let models = e["models"].as_array().expect("models");
    let count = |m: &str| {
        models
            .iter()
            .find(|x| x["model"] == m)
            .map(|x| x["requests"].as_u64().unwrap())
    };
    // The answers and the meta outputs go to the job's model, the descriptions to gpt-4o.
    assert_eq!(count("gpt-4o-mini"), Some(6), "{e}");
    assert_eq!(count("gpt-4o"), Some(3), "{e}");
    let by_model: f64 = models
        .iter()
        .map(|m| m["expected_usd"].as_f64().unwrap())
        .sum();
    let total = e["cost"]["expected_usd"].as_f64().unwrap();
    assert!((by_model - total).abs() < 1e-9, "{e}");
    // Max output: 3 answers x 50 + 3 descriptions x 60 + 3 metas x 50.
    assert_eq!(e["completion_tokens"]["max_total"], 480, "{e}");
}

#[test]
fn a_failed_output_fails_its_row_and_says_which() {
    let ws = Workspace::new();
    let job = job(&ws, &["boots", "bad", "hat"], "");
    let out = ws.run(&["run", &job, "--mock", "--quiet"]);
    assert_exit(&out, 1);
    let status = ws.column("out/result.csv", "status");
    assert_eq!(status, ["ok", "failed", "ok"]);
    let errors = ws.column("out/result.csv", "error");
    assert!(errors[1].starts_with("description: "), "{errors:?}");
    // The row's other texts are kept.
    let meta = ws.column("out/result.csv", "meta");
    assert!(!meta[1].is_empty() && !ws.column("out/result.csv", "output")[1].is_empty());
}

#[test]
fn bad_outputs_are_refused_before_anything_is_sent() {
    for (extra, what) in [
        (
            "\n[[outputs]]\nname = \"meta\"\nuser = \"again\"\n",
            "outputs 'meta': the name is taken",
        ),
        (
            "\n[[outputs]]\nname = \"status\"\nuser = \"x\"\n",
            "outputs 'status': the name is taken",
        ),
        (
            "\n[[outputs]]\nname = \"no spaces\"\nuser = \"x\"\n",
            "must be 1 to 64 letters",
        ),
        ("\nmode = \"batch\"\n", "live mode only"),
        (
            "\n[[outputs]]\nname = \"alt\"\nuser = \"{{ nope }}\"\n",
            "undefined variable 'nope'",
        ),
    ] {
        let ws = Workspace::new();
        ws.named_rows(&["boots"], "red");
        let text = JobFile {
            prompt: "user = \"A headline for {{ name }}.\"",
            ..JobFile::default()
        }
        .toml();
        // `mode` is a top-level key: it must come before the first table.
        let job = if extra.contains("mode") {
            format!("{}\n{text}{OUTPUTS}", extra.trim())
        } else {
            format!("{text}{OUTPUTS}{extra}")
        };
        let job = ws.write("job.toml", &job).to_string_lossy().into_owned();
        let out = ws.run(&["run", &job, "--mock", "--quiet"]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(what), "{what}: {}", stderr(&out));
        assert!(!ws.path("out/result.csv").exists());
    }
}

#[test]
fn checks_read_an_output_by_name_and_reject_its_row() {
    let ws = Workspace::new();
    let checks = "\n[[checks]]\nname = \"meta_short\"\non = \"meta\"\nmax_chars = 12\n\
                  \n[[checks]]\nname = \"meta_names_it\"\non = \"meta\"\nmust_contain = [\"mock\"]\n";
    let job = job(&ws, &["boots", "socks"], checks);
    let out = ws.run(&["run", &job, "--mock", "--quiet"]);
    assert_exit(&out, 1);
    assert_eq!(
        ws.column("out/result.csv", "status"),
        ["rejected", "rejected"]
    );
    let short = ws.column("out/result.csv", "check_meta_short");
    assert!(short.iter().all(|c| c.starts_with("fail: ")), "{short:?}");
    // The mock's answers start "Mock answer for:", so the word check passes on the output.
    assert_eq!(
        ws.column("out/result.csv", "check_meta_names_it"),
        ["pass", "pass"]
    );

    // A check on an output cannot be regenerated (regenerate re-sends the answer): refused.
    let text = ws.read("job.toml");
    ws.write("job.toml", &format!("regenerate = 1\n{text}"));
    let out = ws.run(&["run", &job, "--mock", "--quiet"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("checks 'meta_short'"),
        "{}",
        stderr(&out)
    );

    // A check on a name that is neither a field nor an output is refused, naming both.
    ws.write("job.toml", &text.replace("on = \"meta\"", "on = \"metta\""));
    let out = ws.run(&["run", &job, "--mock", "--quiet"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("nor an [[outputs]] name"),
        "{}",
        stderr(&out)
    );
}
