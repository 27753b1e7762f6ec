//! Paying for a shared prefix once in batch mode (`cache.prefix`): on the OpenAI shape a
//! prefix group's rows go together in one batch, each with the group's `prompt_cache_key`;
//! on the Anthropic shape each group's first row goes alone in a primer batch, and the rest
//! (marked with `cache_control`) once it has ended. The real binary against the mock on
//! 127.0.0.1, whose batches see only what was cached before they were created.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::prefix::{journal_usage, system_prompt};
use crate::common::*;

const ANTHROPIC_KEY: (&str, &str) = ("ANTHROPIC_API_KEY", TEST_KEY);

/// rows.csv with `kinds[i]` as row i's `kind`.
fn rows(ws: &Workspace, kinds: &[&str]) {
    let mut s = String::from("id,name,kind\n");
    for (i, k) in kinds.iter().enumerate() {
        s.push_str(&format!("r{i},item {i},{k}\n"));
    }
    ws.write("rows.csv", &s);
}

/// A job over rows.csv whose system prompt is group `a`'s or `b`'s (15 whole blocks and 10
/// tokens each) or a short one, by the row's `kind`; `anthropic` for the Anthropic shape;
/// `extra` TOML appended.
fn job(ws: &Workspace, base_url: &str, anthropic: bool, extra: &str) -> String {
    let prompt = format!(
        "system = \"{{% if kind == 'a' %}}{}{{% elif kind == 'b' %}}{}{{% else %}}Be brief.{{% endif %}}\"\nuser = \"Describe {{{{ name }}}}.\"",
        system_prompt("You write copy.", 15),
        system_prompt("You review copy.", 15),
    );
    let (model, api) = if anthropic {
        (
            "name = \"claude-sonnet-4-5\"\nmax_tokens = 5",
            format!("provider = \"anthropic\"\nbase_url = \"{base_url}\""),
        )
    } else {
        (
            "name = \"gpt-4o-mini\"\nmax_tokens = 5",
            format!("base_url = \"{base_url}\""),
        )
    };
    let mut toml = JobFile {
        prompt: &prompt,
        model,
        api: &api,
        ..JobFile::default()
    }
    .toml();
    toml.push_str(extra);
    ws.write("job.toml", &toml).to_string_lossy().into_owned()
}

/// The state's chunks.
fn chunks(ws: &Workspace) -> Vec<Value> {
    ws.batch_state()["chunks"].as_array().unwrap().clone()
}

/// The request bodies of a chunk's input file (OpenAI `body` or Anthropic `params`).
fn bodies(chunk: &Value) -> Vec<Value> {
    let input = std::fs::read_to_string(chunk["input"].as_str().unwrap()).unwrap();
    input
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            if v.get("params").is_some() {
                v["params"].clone()
            } else {
                v["body"].clone()
            }
        })
        .collect()
}

/// The mock's message batches, oldest first.
fn message_batches(mock: &Mock) -> Vec<Value> {
    crate::common::message_batches::oldest_first(&mock.addr, TEST_KEY)
}

/// Whether a body carries a `cache_control` mark anywhere.
fn marked(body: &Value) -> bool {
    body.to_string().contains("cache_control")
}

/// The acceptance test of the batch half: 2,000 rows sharing a 2,000-token system prompt.
#[test]
fn anthropic_2000_rows_read_the_prefix_after_the_primer_at_the_estimates_cost() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    rows(&ws, &["a"; 2000]);
    let job = job(&ws, &mock.base_url, true, "");
    let out = ws.run_env(
        &[],
        &["estimate", &job, "--json", "--assume-output-tokens", "5"],
    );
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    let with = e["prompt_cache"]["batch_cost"]["expected_usd"]
        .as_f64()
        .unwrap_or_else(|| panic!("{e}"));
    assert!(stderr(&out).contains("batch, with caching"));

    let out = ws.run_env(&[ANTHROPIC_KEY], &batch_wait_args(&job, &[]));
    assert_exit(&out, 0);
    let chunks = chunks(&ws);
    assert_eq!(chunks[0]["primer"], true, "{chunks:?}");
    assert_eq!(chunks[0]["requests"], 1);
    assert!(chunks[1..].iter().all(|c| c.get("primer").is_none()));
    let used = journal_usage(&ws);
    assert_eq!(used.len(), 2000);
    let writes: Vec<_> = used.iter().filter(|u| u.3 > 0).collect();
    assert_eq!(writes.len(), 1, "only the primer writes: {writes:?}");
    let prefix = writes[0].3;
    assert!(prefix > 1900, "the whole prefix is written: {writes:?}");
    let eligible = 1999 * prefix;
    let read: u64 = used.iter().map(|u| u.2).sum();
    assert!(
        read as f64 >= 0.95 * eligible as f64,
        "{read} of {eligible} eligible prefix tokens read from cache"
    );
    let spent = ws.summary()["cost_this_run_usd"].as_f64().unwrap();
    let off = (spent - with).abs() / with;
    assert!(
        off < 0.02,
        "run {spent} vs the estimate's batch, with caching {with}: {off}"
    );
}

#[test]
fn openai_a_groups_rows_share_a_batch_and_a_key_and_read_its_prefix() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let kinds: Vec<&str> = (0..120).map(|i| ["a", "b"][i % 2]).collect();
    rows(&ws, &kinds);
    let job = job(&ws, &mock.base_url, false, "");
    let out = ws.run_env(&[], &["estimate", &job, "--json"]);
    assert_exit(&out, 0);
    let eligible = stdout_json(&out)["prompt_cache"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(eligible, 2 * 59 * 1920);

    let out = ws.run(&batch_wait_args(&job, &["--batch-max-requests", "60"]));
    assert_exit(&out, 0);
    let chunks = chunks(&ws);
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    let mut keys = Vec::new();
    for c in &chunks {
        let bodies = bodies(c);
        let system = |b: &Value| b["messages"][0]["content"].as_str().unwrap()[..16].to_string();
        let key = bodies[0]["prompt_cache_key"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(key.starts_with("pm-"), "{key}");
        assert!(
            bodies
                .iter()
                .all(|b| b["prompt_cache_key"] == key.as_str() && system(b) == system(&bodies[0])),
            "one group and one key per batch"
        );
        keys.push(key);
    }
    assert_ne!(keys[0], keys[1]);
    let read: u64 = journal_usage(&ws).iter().map(|u| u.2).sum();
    assert!(
        read as f64 >= 0.95 * eligible as f64,
        "{read} of {eligible} eligible prefix tokens read from cache"
    );
}

#[test]
fn each_primer_batch_ends_before_its_groups_batch_is_created() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let kinds: Vec<&str> = (0..30).map(|i| ["a", "b", "c"][i % 3]).collect();
    rows(&ws, &kinds);
    let job = job(&ws, &mock.base_url, true, "");
    let out = ws.run_env(&[ANTHROPIC_KEY], &batch_wait_args(&job, &[]));
    assert_exit(&out, 0);

    // Two primers (groups a and b; the short prompt is no group), then the rest.
    let chunks = chunks(&ws);
    assert_eq!(chunks.len(), 3, "{chunks:?}");
    for c in &chunks[..2] {
        assert_eq!(
            (c["primer"].as_bool(), c["requests"].as_u64()),
            (Some(true), Some(1))
        );
        let b = &bodies(c)[0];
        assert_eq!(b["system"][0]["cache_control"]["ttl"], "1h", "{b}");
    }
    let rest = bodies(&chunks[2]);
    assert_eq!(rest.len(), 28);
    let short = |b: &Value| b["system"].as_str() == Some("Be brief.");
    assert!(
        rest.iter().all(|b| marked(b) != short(b)),
        "groups marked, the rest not"
    );
    let batches = message_batches(&mock);
    assert_eq!(batches.len(), 3);
    let main = &batches[2];
    for primer in &batches[..2] {
        assert_eq!(primer["request_counts"]["succeeded"], 1);
        let (ended, created) = (
            primer["ended_at"].as_str().unwrap(),
            main["created_at"].as_str().unwrap(),
        );
        assert!(
            ended <= created,
            "primer ended {ended}, main created {created}"
        );
    }
    // The mock's batches see only what was cached before them: every row after a primer
    // reads what its primer wrote, so the main batch was created after the primers ended.
    let used = journal_usage(&ws);
    assert_eq!(used.len(), 30);
    for (group, rest) in [("a", 0), ("b", 1)] {
        let mine: Vec<_> = used.iter().filter(|u| u.0 % 3 == rest).collect();
        let writes = mine.iter().filter(|u| u.3 > 1900).count();
        let reads = mine.iter().filter(|u| u.2 > 1900 && u.3 == 0).count();
        assert_eq!((writes, reads), (1, 9), "group {group}: {mine:?}");
    }
    // The summary tells the same per group, and what the cache saved.
    let s = ws.summary();
    let pc = &s["prompt_cache"];
    let groups = pc["groups"].as_array().unwrap_or_else(|| panic!("{s}"));
    assert_eq!(groups.len(), 2, "{pc}");
    let read: u64 = used.iter().map(|u| u.2).sum();
    for g in groups {
        assert_eq!(
            (g["requests"].as_u64(), g["hits"].as_u64()),
            (Some(10), Some(9)),
            "{pc}"
        );
        assert!((g["hit_rate"].as_f64().unwrap() - 0.9).abs() < 1e-9);
        assert!(g["cache_write_tokens"].as_u64().unwrap() > 1900);
    }
    assert_eq!(pc["cached_tokens"], read);
    assert!(pc["saved_usd"].as_f64().unwrap() > 0.0, "{pc}");
    assert!(stderr(&out).contains("9 of 10 requests read the prefix (90%)"));
}

#[test]
fn no_primer_batch_with_batch_primer_or_prefix_off() {
    let mock = Mock::start(&[]);
    for extra in [
        "\n[cache]\nbatch_primer = false\n",
        "\n[cache]\nprefix = false\n",
    ] {
        let ws = Workspace::new();
        let kinds: Vec<&str> = (0..20).map(|i| ["a", "b"][i % 2]).collect();
        rows(&ws, &kinds);
        let before = message_batches(&mock).len();
        let job = job(&ws, &mock.base_url, true, extra);
        // The estimate expects no saving in batch: nothing is marked.
        let out = ws.run_env(&[], &["estimate", &job, "--json"]);
        assert_exit(&out, 0);
        let e = stdout_json(&out);
        let batch = e["batch_cost"]["expected_usd"].as_f64();
        assert!(batch.is_some(), "{e}");
        if let Some(pc) = e.get("prompt_cache") {
            assert_eq!(pc["batch_cost"]["expected_usd"].as_f64(), batch, "{pc}");
            assert!(pc["cost"]["expected_usd"].as_f64() < e["cost"]["expected_usd"].as_f64());
        }
        let out = ws.run_env(&[ANTHROPIC_KEY], &batch_wait_args(&job, &[]));
        assert_exit(&out, 0);
        let chunks = chunks(&ws);
        assert_eq!(chunks.len(), 1, "{extra}: {chunks:?}");
        assert!(chunks[0].get("primer").is_none());
        assert_eq!(message_batches(&mock).len(), before + 1, "{extra}");
        // Without a primer nothing is marked (each line would pay for its own write), and
        // the text sent is the same either way.
        let bodies = bodies(&chunks[0]);
        assert_eq!(bodies.len(), 20);
        assert!(bodies.iter().all(|b| !marked(b) && b["system"].is_string()));
        assert!(journal_usage(&ws).iter().all(|u| u.2 == 0 && u.3 == 0));
    }
}

#[test]
fn a_kill_while_waiting_on_the_primer_then_collect_answers_every_row_once() {
    // Each batch takes 6 polls; at one poll a second the primer runs ~6 s.
    let mock = Mock::start(&["--batch-step-polls", "2"]);
    let ws = Workspace::new();
    let kinds: Vec<&str> = (0..20).map(|i| ["a", "b"][i % 2]).collect();
    rows(&ws, &kinds);
    let job = job(&ws, &mock.base_url, true, "");
    let mut child = ws
        .command()
        .envs([ANTHROPIC_KEY])
        .args(["run", &job, "--mode", "batch", "--wait", "--poll-secs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start promptmill");
    let state = ws.path("out/result.batches.json");
    let started = Instant::now();
    let waiting = loop {
        let text = std::fs::read_to_string(&state).unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let c = v["chunks"].as_array().cloned().unwrap_or_default();
        let primers_out = c.len() == 3 && c[..2].iter().all(|c| c["batch_id"].is_string());
        if primers_out || started.elapsed() > Duration::from_secs(60) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(waiting.len(), 3, "{waiting:?}");
    assert!(
        waiting[2]["batch_id"].is_null(),
        "killed while the primers ran: {waiting:?}"
    );
    assert_eq!(
        message_batches(&mock).len(),
        2,
        "only the primers were created"
    );

    let out = ws.collect_until_done(ANTHROPIC_KEY, &job);
    assert_exit(&out, 0);
    assert_eq!(ws.summary()["succeeded"], 20);
    let batches = message_batches(&mock);
    assert_eq!(batches.len(), 3, "two primers and one main batch");
    assert_eq!(mock.stat("ok"), 20, "every row answered once");
    assert_eq!(mock.stat("duplicate_prompts"), 0);
    let status = ws.column("out/result.csv", "status");
    assert_eq!(status.len(), 20);
    assert!(status.iter().all(|s| s == "ok"), "{status:?}");
    // The rows after each primer read what it wrote.
    let reads = journal_usage(&ws).iter().filter(|u| u.2 > 1900).count();
    assert_eq!(reads, 18);
}

#[test]
fn past_the_deadline_the_primers_are_cancelled_and_their_groups_go_live() {
    // Batches that cannot end in time: the primers are still running at the cut.
    let mock = Mock::start(&["--batch-step-polls", "100000"]);
    let ws = Workspace::new();
    let kinds: Vec<&str> = (0..20).map(|i| ["a", "b"][i % 2]).collect();
    rows(&ws, &kinds);
    let job = job(&ws, &mock.base_url, true, "");
    ws.submit_batch(ANTHROPIC_KEY, &job);
    assert_eq!(message_batches(&mock).len(), 2, "only the primers go first");
    ws.collect_past_deadline(ANTHROPIC_KEY, &job);
    // The primers were cancelled (a cancelled one-request batch answers nothing here), the
    // main batch never created, and every row was answered once, live.
    let chunks = chunks(&ws);
    assert_eq!(chunks.len(), 3, "{chunks:?}");
    assert!(chunks
        .iter()
        .all(|c| c["status"] == "cancelled" && c["collected"] == true));
    assert!(chunks[2]["batch_id"].is_null(), "{chunks:?}");
    assert_eq!(message_batches(&mock).len(), 2);
    let status = ws.column("out/result.csv", "status");
    assert_eq!(status.len(), 20);
    assert!(status.iter().all(|s| s == "ok"), "{status:?}");
    let stats = mock.stats();
    assert_eq!(stats["ok"], 20, "{stats}");
    assert_eq!(stats["duplicate_prompts"], 0, "{stats}");
}
