//! Per-row model settings from input columns (`model.name_column`,
//! `model.temperature_column`, `model.max_tokens_column`): each row is sent with its own
//! model, temperature and max_tokens, validated in the first pass (a bad cell names file,
//! line and column, nothing sent), reserved and priced at its own model's price, and the
//! estimate lists the requests per model. The mock's `[[mock:settings]]` answers with the
//! settings it received.

use crate::common;

use common::*;
use promptmill::cost::{PriceTable, Tier};
use promptmill::types::Usage;

const MODEL: &str = "name = \"gpt-4o-mini\"\nmax_tokens = 40\ntemperature = 0.7\n\
                     name_column = \"model\"\ntemperature_column = \"temp\"\n\
                     max_tokens_column = \"limit\"";

fn job(ws: &Workspace, rows: &str, extra: &str) -> String {
    ws.write("rows.csv", rows);
    let text = JobFile {
        prompt: "user = \"Describe {{ name }}. [[mock:settings]]\"",
        model: MODEL,
        ..JobFile::default()
    }
    .toml();
    ws.write("job.toml", &format!("{text}{extra}"))
        .to_string_lossy()
        .into_owned()
}

const ROWS: &str = "id,name,model,temp,limit\n\
                    a,boots,gpt-4o,0.2,30\n\
                    b,socks,,,\n\
                    c,hat,gpt-4o,1,\n\
                    d,scarf,gpt-4o-mini,,12\n";

#[test]
fn each_row_is_sent_with_its_own_model_temperature_and_max_tokens() {
    let ws = Workspace::new();
    let job = job(&ws, ROWS, "");
    let out = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&out, 0);
    let answers: Vec<String> = ws.column("out/result.csv", "output");
    assert_eq!(
        answers,
        [
            "model=gpt-4o temperature=0.2 max_tokens=30",
            "model=gpt-4o-mini temperature=0.7 max_tokens=40",
            "model=gpt-4o temperature=1 max_tokens=40",
            "model=gpt-4o-mini temperature=0.7 max_tokens=12",
        ]
    );
    // Each row is paid at its own model's price.
    let table = PriceTable::builtin();
    let prompt = ws.column("out/result.csv", "prompt_tokens");
    let completion = ws.column("out/result.csv", "completion_tokens");
    let cost = ws.column("out/result.csv", "cost_usd");
    for (i, model) in ["gpt-4o", "gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]
        .iter()
        .enumerate()
    {
        let usage = Usage {
            prompt_tokens: prompt[i].parse().unwrap(),
            completion_tokens: completion[i].parse().unwrap(),
            ..Usage::default()
        };
        let want = table
            .lookup(model)
            .unwrap()
            .cost(&usage, Tier::Live)
            .as_usd();
        let got: f64 = cost[i].parse().unwrap();
        assert!(
            (got - want).abs() < 1e-9,
            "row {i} ({model}): cost {got}, want {want}"
        );
    }
}

#[test]
fn the_estimate_prices_each_model_and_lists_them() {
    let ws = Workspace::new();
    let job = job(&ws, ROWS, "");
    let out = ws.run(&["estimate", &job, "--json"]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    let models = e["models"].as_array().expect("models listed");
    let by: Vec<(&str, u64)> = models
        .iter()
        .map(|m| {
            (
                m["model"].as_str().unwrap(),
                m["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(by.contains(&("gpt-4o", 2)), "{e}");
    assert!(by.contains(&("gpt-4o-mini", 2)), "{e}");
    // The whole is the sum of the models, each at its own price with its own max_tokens.
    let table = PriceTable::builtin();
    let mut high = 0.0;
    let mut expected_sum = 0.0;
    for m in models {
        let expected = m["expected_usd"].as_f64().unwrap();
        expected_sum += expected;
        assert!(expected > 0.0, "{m}");
    }
    let cost = &e["cost"];
    assert!(
        (cost["expected_usd"].as_f64().unwrap() - expected_sum).abs() < 1e-9,
        "{e}"
    );
    // Max output: 30 + 40 + 40 + 12 tokens.
    assert_eq!(e["completion_tokens"]["max_total"], 122, "{e}");
    // Rows a and c ask gpt-4o (30 + 40 tokens at most), b and d gpt-4o-mini (40 + 12).
    for (model, max_out) in [("gpt-4o", 70u64), ("gpt-4o-mini", 52)] {
        let p = table.lookup(model).unwrap();
        let prompt: u64 = e["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == model)
            .unwrap()["prompt_tokens"]
            .as_u64()
            .unwrap();
        high += p
            .cost(
                &Usage {
                    prompt_tokens: prompt,
                    completion_tokens: max_out,
                    ..Usage::default()
                },
                Tier::Live,
            )
            .as_usd();
    }
    assert!(
        (cost["high_usd"].as_f64().unwrap() - high).abs() < 1e-9,
        "high {high}: {e}"
    );
    let text = stderr(&ws.run(&["estimate", &job]));
    assert!(text.contains("by model"), "{text}");
}

#[test]
fn a_bad_cell_names_file_line_and_column_and_nothing_is_sent() {
    let mock = Mock::start(&[]);
    for (rows, column, what) in [
        (
            "id,name,model,temp,limit\na,boots,gpt-4o,0.2,30\nb,socks,gpt-4o,hot,30\n",
            "temp",
            "\"hot\" is not a temperature from 0 to 2",
        ),
        (
            "id,name,model,temp,limit\na,boots,gpt-4o,0.2,30\nb,socks,gpt-4o,0.2,2.5\n",
            "limit",
            "not a max_tokens",
        ),
        (
            "id,name,model,temp,limit\na,boots,gpt-4o,0.2,30\nb,socks,gpt-4o,3,1\n",
            "temp",
            "not a temperature",
        ),
    ] {
        let ws = Workspace::new();
        let job = job(
            &ws,
            rows,
            &format!("[api]\nbase_url = \"{}\"\n", mock.base_url),
        );
        let out = ws.run_env(&[("OPENAI_API_KEY", "k")], &["run", &job, "--quiet"]);
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(err.contains("rows.csv"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains(&format!("column '{column}'")), "{err}");
        assert!(err.contains(what), "{err}");
    }
    assert_eq!(
        mock.stat("requests"),
        0,
        "nothing is sent before validation passes"
    );
}

#[test]
fn a_row_model_without_a_price_is_refused_under_a_cap_and_unknown_in_the_estimate() {
    let ws = Workspace::new();
    let rows = "id,name,model,temp,limit\na,boots,gpt-4o,,\nb,socks,acme-large-9,,\n";
    let job = job(&ws, rows, "");
    let e = stdout_json(&ws.run(&["estimate", &job, "--json"]));
    assert!(
        e["cost"].is_null(),
        "one unpriced model: the total is unknown, not $0: {e}"
    );
    let models = e["models"].as_array().unwrap();
    let acme = models
        .iter()
        .find(|m| m["model"] == "acme-large-9")
        .unwrap();
    assert!(acme["expected_usd"].is_null(), "{e}");

    let out = ws.run(&["run", &job, "--mock", "--max-usd", "1", "--quiet"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("column 'model' (model.name_column)") && err.contains("acme-large-9"),
        "{err}"
    );
}

#[test]
fn per_row_settings_are_refused_in_batch_mode() {
    let ws = Workspace::new();
    let job = job(&ws, ROWS, "");
    let out = ws.run(&["estimate", &job, "--mode", "batch"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("model.name_column") && err.contains("live mode only"),
        "{err}"
    );
}
