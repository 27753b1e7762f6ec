//! `[judge]`: a second prompt scores every answer that passed the checks, as structured
//! output, through the same limiter, ledger and journal; a score below `min_score` rejects
//! the row (and regenerates it, with the judge's reason as feedback); its tokens and cost
//! are columns and summary lines of their own. The mock is told each verdict's score with
//! `[[mock:score:N]]`, which the echoed answer carries into the judge's prompt.

use crate::common;

use common::*;

/// The mock echoes the prompt, so the answer is the copy with the score marker the judge's
/// prompt then carries; a row sent again (with feedback) scores 9 and shows its feedback.
const PROMPT: &str = "user = \"{% if check_feedback %}Better {{ copy }}: {{ check_feedback }} \
                      [[mock:score:9]]{% else %}{{ copy }} [[mock:score:{{ score }}]]{% endif %} \
                      [[mock:echo]]\"";

const JUDGE: &str =
    "\n[judge]\nuser = \"Rate this ad line from 1 to 10: {{ answer }}\"\nmin_score = 5\n";

fn rows(ws: &Workspace) {
    ws.write(
        "rows.csv",
        "id,copy,score\n\
         r1,Trail shoe with a grippy sole,8\n\
         r2,Rain jacket in three colours,3\n\
         r3,Steel water bottle,6\n\
         r4,Wool socks for hiking,2\n",
    );
}

fn job(ws: &Workspace, top: &str, rest: &str) -> String {
    let text = JobFile {
        prompt: PROMPT,
        ..JobFile::default()
    }
    .toml();
    ws.write("job.toml", &format!("{top}\n{text}{rest}"))
        .to_string_lossy()
        .into_owned()
}

fn sum(ws: &Workspace, column: &str) -> f64 {
    ws.column("out/result.csv", column)
        .iter()
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

#[test]
fn the_judge_scores_answers_and_rejects_low_scores_with_its_own_cost() {
    let ws = Workspace::new();
    rows(&ws);
    let job = job(&ws, "", JUDGE);
    let out = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&out, 1);
    let s = stdout_json(&out);
    assert_eq!(s["requests"], 8, "4 answers and 4 verdicts: {s}");
    assert_eq!(s["judge_requests"], 4, "{s}");
    assert_eq!(
        (s["succeeded"].as_u64(), s["rejected"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    let j = &s["judge"];
    assert_eq!(
        (
            j["judged"].as_u64(),
            j["below_min"].as_u64(),
            j["score_min"].as_f64()
        ),
        (Some(4), Some(2), Some(2.0)),
        "{s}"
    );
    assert_eq!(
        (j["score_median"].as_f64(), j["score_max"].as_f64()),
        (Some(4.5), Some(8.0))
    );
    assert!(
        stderr(&out).contains("rejected by the judge"),
        "{}",
        stderr(&out)
    );

    let (header, table) = ws.csv("out/result.csv");
    for r in &table {
        let (score, status) = (&r[col(&header, "judge_score")], &r[col(&header, "status")]);
        let want = if r[col(&header, "score")].parse::<f64>().unwrap() >= 5.0 {
            "ok"
        } else {
            "rejected"
        };
        assert_eq!(status, want, "{r:?}");
        assert_eq!(
            score.parse::<f64>().unwrap(),
            r[col(&header, "score")].parse::<f64>().unwrap()
        );
        assert!(r[col(&header, "judge_reason")].starts_with("Mock"), "{r:?}");
        assert!(
            r[col(&header, "judge_prompt_tokens")]
                .parse::<u64>()
                .unwrap()
                > 0
        );
    }
    // The summary's money is the output's: answers and verdicts, each in its own column.
    let answers = sum(&ws, "cost_usd");
    let verdicts = sum(&ws, "judge_cost_usd");
    assert!(verdicts > 0.0);
    let this_run = s["cost_this_run_usd"].as_f64().unwrap();
    assert!((this_run - answers - verdicts).abs() < 1e-9, "{s}");
    assert!((s["judge_cost_this_run_usd"].as_f64().unwrap() - verdicts).abs() < 1e-9);
    assert!((j["cost_usd"].as_f64().unwrap() - verdicts).abs() < 1e-9);
    assert!((s["cost_usd"].as_f64().unwrap() - answers).abs() < 1e-9);

    // Verdicts resume like answers: nothing is sent again.
    let again = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&again, 1);
    assert_eq!(stdout_json(&again)["requests"], 0);
}

#[test]
fn low_scored_rows_are_regenerated_with_the_judges_reason_and_judged_again() {
    let ws = Workspace::new();
    rows(&ws);
    let job = job(&ws, "regenerate = 2", JUDGE);
    let out = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&out, 0);
    let s = stdout_json(&out);
    // 4 answers, 4 verdicts, 2 new answers, 2 new verdicts.
    assert_eq!(s["requests"], 12, "{s}");
    assert_eq!(s["regenerated_rows"], 2, "{s}");
    assert_eq!(s["judge_requests"], 6, "{s}");
    assert_eq!(s["succeeded"], 4, "{s}");
    let (header, table) = ws.csv("out/result.csv");
    let r2 = table
        .iter()
        .find(|r| r[col(&header, "id")] == "r2")
        .unwrap();
    let answer = &r2[col(&header, "output")];
    assert!(answer.starts_with("Better Rain jacket"), "{answer}");
    assert!(
        answer.contains("- judge: score 3 below 5: Mock"),
        "{answer}"
    );
    assert_eq!(r2[col(&header, "judge_score")], "9");
    assert_eq!(r2[col(&header, "status")], "ok");
    let again = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&again, 0);
    assert_eq!(stdout_json(&again)["requests"], 0);
}

#[test]
fn a_changed_judge_makes_old_verdicts_stale_and_recheck_sends_nothing() {
    let ws = Workspace::new();
    rows(&ws);
    let job1 = job(&ws, "", JUDGE);
    assert_exit(&ws.run(&["run", &job1, "--mock", "--quiet"]), 1);
    // A new judge prompt: the answers stand, the verdicts do not.
    let job2 = job(
        &ws,
        "",
        &JUDGE.replace("from 1 to 10", "strictly, from 1 to 10"),
    );
    let out = ws.run(&["run", &job2, "--mock", "--recheck", "--quiet", "--json"]);
    assert_exit(&out, 1);
    let s = stdout_json(&out);
    assert_eq!(s["requests"], 0, "{s}");
    assert_eq!(s["pending"], 4, "answers waiting for the new judge: {s}");
    assert_eq!(s["judge"]["waiting"], 4, "{s}");
    assert!(ws
        .column("out/result.csv", "judge_score")
        .iter()
        .all(String::is_empty));
    // The next run sends only the verdicts.
    let out = ws.run(&["run", &job2, "--mock", "--quiet", "--json"]);
    let s = stdout_json(&out);
    assert_eq!(
        (s["requests"].as_u64(), s["judge_requests"].as_u64()),
        (Some(4), Some(4)),
        "{s}"
    );
    assert_eq!(s["rejected"], 2, "{s}");
}

#[test]
fn a_judge_that_cannot_work_stops_the_job_before_anything_is_sent() {
    let ws = Workspace::new();
    rows(&ws);
    for (judge, says) in [
        ("\n[judge]\nuser = \"Rate {{ answer }} for {{ no_such_column }}\"\n", "no_such_column"),
        ("\n[judge]\nuser = \"Rate it\"\n", "answer"),
        ("\n[judge]\nuser = \"{{ answer }}\"\nmin_score = 11\n", "judge.min_score"),
        ("\n[judge]\nuser = \"{{ answer }}\"\nscale = [5, 1]\n", "judge.scale"),
        ("\n[judge]\nuser = \"{{ answer }}\"\nmodel = \"no-such-model\"\n[budget]\nmax_usd = 1\n", "no-such-model"),
    ] {
        let job = job(&ws, "", judge);
        let out = ws.run(&["run", &job, "--mock", "--quiet"]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(says), "{judge}: {}", stderr(&out));
        assert!(!ws.path("out/result.journal.jsonl").exists(), "{judge}: something was sent");
    }
}

#[test]
fn the_estimate_prices_the_judge() {
    let ws = Workspace::new();
    rows(&ws);
    let job = job(
        &ws,
        "",
        &JUDGE.replace("min_score = 5", "min_score = 5\nmodel = \"gpt-4o\""),
    );
    let out = ws.run(&["estimate", &job, "--json"]);
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    let j = &e["judge"];
    assert_eq!(j["model"], "gpt-4o", "{e}");
    assert_eq!(j["requests"], 4, "{e}");
    assert!(
        j["prompt_tokens"].as_u64().unwrap() > 4 * 50,
        "answers are counted in: {e}"
    );
    let (exp, max) = (
        j["expected_usd"].as_f64().unwrap(),
        j["max_usd"].as_f64().unwrap(),
    );
    assert!(exp > 0.0 && exp < max, "{e}");
    assert!(
        stderr(&out).contains("verdicts by gpt-4o"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_batch_jobs_estimate_prices_its_review_rounds_at_batch_prices() {
    // A batch job sends its verdicts and new answers in batches of their own: half price
    // for gpt-4o-mini, not the live price the first answers' batch line is set beside.
    let ws = Workspace::new();
    rows(&ws);
    let job = job(&ws, "regenerate = 1", JUDGE);
    let estimate = |mode: &str| {
        let out = ws.run(&["estimate", &job, "--json", "--mode", mode]);
        assert_exit(&out, 0);
        (stdout_json(&out), stderr(&out))
    };
    let ((live, _), (batch, text)) = (estimate("live"), estimate("batch"));
    for part in ["judge", "regeneration"] {
        let usd = |e: &serde_json::Value, k: &str| e[part][k].as_f64().unwrap();
        assert_eq!(live[part]["tier"], "standard", "{live}");
        assert_eq!(batch[part]["tier"], "batch", "{batch}");
        for k in ["expected_usd", "max_usd"] {
            let (l, b) = (usd(&live, k), usd(&batch, k));
            assert!(
                l > 0.0 && (b - l / 2.0).abs() < l * 1e-6,
                "{part}.{k}: {b} vs {l}"
            );
        }
    }
    assert!(text.contains("at batch prices"), "{text}");
}

#[test]
fn verdicts_are_paid_under_the_budget_cap_like_answers() {
    let ws = Workspace::new();
    let mut csv = String::from("id,copy,score\n");
    for i in 0..30 {
        csv.push_str(&format!("r{i},Line of copy number {i},2\n"));
    }
    ws.write("rows.csv", &csv);
    // Every verdict is low and every new answer is judged again: without the cap, 30
    // answers, 30 verdicts and up to 2 more of each per row.
    let rest = format!("\n[budget]\nmax_usd_per_run = 0.0006\n{JUDGE}");
    let job = job(&ws, "regenerate = 2", &rest);
    let out = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&out, 3);
    let s = stdout_json(&out);
    assert_eq!(s["status"], "budget", "{s}");
    let spent = s["cost_this_run_usd"].as_f64().unwrap();
    assert!(spent > 0.0 && spent <= 0.0006, "{s}");
    assert!(s["judge_requests"].as_u64().unwrap() > 0, "{s}");
    let answers = sum(&ws, "cost_usd");
    assert!(answers + sum(&ws, "judge_cost_usd") <= spent + 1e-9, "{s}");
}

#[test]
fn rows_asking_the_judge_the_same_thing_share_one_verdict_paid_once() {
    let ws = Workspace::new();
    ws.write(
        "rows.csv",
        "id,copy,score\n\
         r1,Trail shoe with a grippy sole,8\n\
         r2,Rain jacket in three colours,7\n\
         r3,Trail shoe with a grippy sole,8\n",
    );
    let job = job(&ws, "", JUDGE);
    let out = ws.run(&["run", &job, "--mock", "--quiet", "--json"]);
    assert_exit(&out, 0);
    let s = stdout_json(&out);
    // r3 asks what r1 asks, of the model and then of the judge: one request each.
    assert_eq!(
        (s["requests"].as_u64(), s["judge_requests"].as_u64()),
        (Some(4), Some(2)),
        "{s}"
    );
    assert_eq!(s["judge"]["judged"], 3, "{s}");
    let (header, table) = ws.csv("out/result.csv");
    let r3 = table
        .iter()
        .find(|r| r[col(&header, "id")] == "r3")
        .unwrap();
    assert_eq!(r3[col(&header, "judge_score")], "8");
    assert_eq!(
        r3[col(&header, "judge_cost_usd")].parse::<f64>().unwrap(),
        0.0
    );
    let verdicts = sum(&ws, "judge_cost_usd");
    assert!(
        (s["judge_cost_this_run_usd"].as_f64().unwrap() - verdicts).abs() < 1e-9,
        "{s}"
    );
    assert!(
        (s["judge"]["cost_usd"].as_f64().unwrap() - verdicts).abs() < 1e-9,
        "{s}"
    );
}
