//! Paying for a shared prefix once (`cache.prefix`): a live run sends one primer per prefix
//! group and the rest of the group only after its answer, with a `prompt_cache_key` per
//! group (sharded under `cache.key_rpm`) on the OpenAI shape and a `cache_control` mark on
//! the Anthropic shape; over real HTTP on 127.0.0.1.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::fault_server::{FaultServer, Reply};
use crate::common::prefix::{journal_usage, system_prompt};
use crate::common::*;

/// A job over rows.csv whose system message comes from the `sys` column's choice among
/// `systems` (one prefix group per choice), with `extra` TOML appended.
fn job(ws: &Workspace, base_url: &str, limits: &str, extra: &str) -> String {
    job_of(ws, base_url, limits, extra, 9)
}

/// [`job`] with prefixes of `blocks` whole 128-token blocks and 10 tokens.
fn job_of(ws: &Workspace, base_url: &str, limits: &str, extra: &str, blocks: u64) -> String {
    let prompt = format!(
        "system = \"{{% if kind == 'a' %}}{}{{% elif kind == 'b' %}}{}{{% else %}}Be brief.{{% endif %}}\"\nuser = \"Describe {{{{ name }}}}.\"",
        system_prompt("You write copy.", blocks),
        system_prompt("You review copy.", blocks),
    );
    let mut toml = JobFile {
        prompt: &prompt,
        model: "name = \"gpt-4o-mini\"\nmax_tokens = 5",
        api: &format!("base_url = \"{base_url}\""),
        limits,
        ..JobFile::default()
    }
    .toml();
    toml.push_str(extra);
    ws.write("job.toml", &toml).to_string_lossy().into_owned()
}

/// rows.csv with `kinds[i]` as row i's `kind`.
fn rows(ws: &Workspace, kinds: &[&str]) {
    let mut s = String::from("id,name,kind\n");
    for (i, k) in kinds.iter().enumerate() {
        s.push_str(&format!("r{i},item {i},{k}\n"));
    }
    ws.write("rows.csv", &s);
}

/// Which group a request body is in: `a`, `b`, or `-` (the short system prompt).
fn group_of(body: &Value) -> &'static str {
    let system = body["messages"][0]["content"].as_str().unwrap_or("");
    if system.starts_with("You write copy.") {
        "a"
    } else if system.starts_with("You review copy.") {
        "b"
    } else {
        "-"
    }
}

fn answer() -> Reply {
    Reply::chat(
        "ok",
        "stop",
        Some(json!({"prompt_tokens": 1200, "completion_tokens": 1, "total_tokens": 1201})),
    )
}

/// What the server saw of one group: when its first request's answer was given, and every
/// request that arrived before that.
#[derive(Default)]
struct Seen {
    primer_answered: HashMap<&'static str, bool>,
    early: Vec<String>,
    keys: Vec<(Instant, &'static str, Option<String>)>,
}

/// A server that holds each group's first request for 300 ms and notes any other request
/// of that group arriving meanwhile.
fn watching_server() -> (FaultServer, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let server = FaultServer::start(move |body, _| {
        let g = group_of(body);
        let key = body["prompt_cache_key"].as_str().map(str::to_string);
        let first = {
            let mut seen = s.lock().unwrap();
            seen.keys.push((Instant::now(), g, key));
            match seen.primer_answered.get(g).copied() {
                None => {
                    seen.primer_answered.insert(g, false);
                    true
                }
                Some(false) if g != "-" => {
                    let user = body["messages"][1]["content"].as_str().unwrap_or("");
                    seen.early.push(format!("{g}: {user}"));
                    false
                }
                Some(_) => false,
            }
        };
        if first {
            std::thread::sleep(Duration::from_millis(300));
            s.lock().unwrap().primer_answered.insert(g, true);
        }
        answer()
    });
    (server, seen)
}

#[test]
fn no_row_of_a_group_is_sent_before_its_primer_is_answered() {
    let (server, seen) = watching_server();
    let ws = Workspace::new();
    let kinds: Vec<&str> = (0..60).map(|i| ["a", "b", "c"][i % 3]).collect();
    rows(&ws, &kinds);
    let job = job(&ws, &server.base_url(), "max_in_flight = 16", "");
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 0);
    assert_eq!(server.requests(), 60);
    let seen = seen.lock().unwrap();
    assert!(
        seen.early.is_empty(),
        "sent before their group's primer was answered: {:?}",
        seen.early
    );
    // Every request of a group carries the group's key; the short prompt's rows none.
    for (_, g, key) in &seen.keys {
        match *g {
            "-" => assert_eq!(key, &None),
            _ => assert!(
                key.as_deref().is_some_and(|k| k.starts_with("pm-")),
                "{key:?}"
            ),
        }
    }
    let key_of = |g: &str| {
        seen.keys
            .iter()
            .find(|(_, h, _)| *h == g)
            .and_then(|(_, _, k)| k.clone())
            .unwrap()
    };
    assert_ne!(key_of("a"), key_of("b"), "one key per group");
}

#[test]
fn each_key_gets_at_most_key_rpm_requests_in_any_minute() {
    let (server, seen) = watching_server();
    let ws = Workspace::new();
    rows(&ws, &["a"; 40]);
    let job = job(
        &ws,
        &server.base_url(),
        "max_in_flight = 8",
        "\n[cache]\nkey_rpm = 5\n",
    );
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 0);
    let seen = seen.lock().unwrap();
    let mut by_key: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    for (at, _, key) in &seen.keys {
        let key = key.clone().expect("every row of the group has a key");
        by_key.entry(key).or_default().push(*at);
    }
    assert!(by_key.len() >= 2, "40 requests at 5 a key: {by_key:?}");
    for (key, times) in &by_key {
        for (i, t) in times.iter().enumerate() {
            let within = times[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < Duration::from_secs(60))
                .count();
            // The server notes arrivals, a little after the client chose the key: a
            // minute seen here is at most that much shorter.
            assert!(within <= 5, "{key}: {within} requests within a minute");
        }
    }
}

#[test]
fn cache_prefix_false_sends_no_key_and_waits_for_no_primer() {
    let (server, seen) = watching_server();
    let ws = Workspace::new();
    let kinds: Vec<&str> = (0..30).map(|i| ["a", "b"][i % 2]).collect();
    rows(&ws, &kinds);
    let job = job(
        &ws,
        &server.base_url(),
        "max_in_flight = 16",
        "\n[cache]\nprefix = false\n",
    );
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 0);
    let seen = seen.lock().unwrap();
    assert!(seen.keys.iter().all(|(_, _, k)| k.is_none()));
    // The limiter's probe (the run's first request) goes alone, but the other group's
    // rows go out together.
    assert!(
        !seen.early.is_empty(),
        "without priming, rows go out while their group's first is in flight"
    );
}

/// Two groups of 1,000 rows, each sharing its own 2,000-token system prompt, alternating.
#[test]
fn a_2000_row_job_reads_its_2000_token_prefixes_from_cache_after_each_primer() {
    let mock = Mock::start(&["--latency-ms", "20"]);
    let ws = Workspace::new();
    let kinds: Vec<&str> = (0..2000).map(|i| ["a", "b"][i % 2]).collect();
    rows(&ws, &kinds);
    // 15 whole blocks and 10 tokens: 1,930 shared tokens, 1,920 cacheable.
    let job = job_of(&ws, &mock.base_url, "max_in_flight = 64", "", 15);
    let out = ws.run_env(
        &[],
        &["estimate", &job, "--json", "--assume-output-tokens", "5"],
    );
    assert_exit(&out, 0);
    let e = stdout_json(&out);
    let pc = &e["prompt_cache"];
    assert_eq!(pc["cache_reads"], 1998, "{pc}");
    assert_eq!(pc["cached_tokens"], 1998 * 1920, "{pc}");
    let with = pc["cost"]["expected_usd"].as_f64().unwrap();

    let out = ws.run(&["run", &job]);
    assert_exit(&out, 0);
    let usage = journal_usage(&ws);
    assert_eq!(usage.len(), 2000);
    let misses: Vec<_> = usage.iter().filter(|u| u.2 == 0).collect();
    assert_eq!(misses.len(), 2, "only the two primers miss: {misses:?}");
    let eligible = 1998 * 1920;
    let read: u64 = usage.iter().map(|u| u.2).sum();
    assert!(
        read as f64 >= 0.95 * eligible as f64,
        "{read} of {eligible} eligible prefix tokens read from cache"
    );
    let spent = ws.summary()["cost_this_run_usd"].as_f64().unwrap();
    let off = (spent - with).abs() / with;
    assert!(
        off < 0.02,
        "run {spent} vs estimate with caching {with}: {off}"
    );
}

/// An Anthropic job: the base URL and model are the mock's; each group's requests carry
/// `cache_control` at the end of the shared system prompt.
fn anthropic_job(ws: &Workspace, base_url: &str) -> String {
    let toml = std::fs::read_to_string(job_of(ws, base_url, "max_in_flight = 16", "", 15))
        .unwrap()
        .replace("name = \"gpt-4o-mini\"", "name = \"claude-sonnet-4-5\"")
        .replace("[api]\n", "[api]\nprovider = \"anthropic\"\n");
    ws.write("job.toml", &toml).to_string_lossy().into_owned()
}

#[test]
fn anthropic_groups_write_their_prefix_once_and_read_it_after() {
    let mock = Mock::start(&["--latency-ms", "20"]);
    let ws = Workspace::new();
    let kinds: Vec<&str> = (0..60).map(|i| ["a", "b", "c"][i % 3]).collect();
    rows(&ws, &kinds);
    let job = anthropic_job(&ws, &mock.base_url);
    let out = ws.run_env(&[], &["estimate", &job, "--json"]);
    assert_exit(&out, 0);
    let pc = &stdout_json(&out)["prompt_cache"];
    assert_eq!(
        pc["provider_caching"],
        "cache_control (placed by live runs)"
    );
    assert_eq!(pc["cache_reads"], 38, "{pc}");
    assert!(
        pc["cache_write_tokens"].as_u64().unwrap() > 2 * 1900,
        "{pc}"
    );

    let out = ws.run_env(&[("ANTHROPIC_API_KEY", TEST_KEY)], &["run", &job]);
    assert_exit(&out, 0);
    let usage = journal_usage(&ws);
    assert_eq!(usage.len(), 60);
    for (group, rows) in [("a", 0), ("b", 1)] {
        let mine: Vec<_> = usage.iter().filter(|u| u.0 % 3 == rows).collect();
        let writes: Vec<_> = mine.iter().filter(|u| u.3 > 0).collect();
        assert_eq!(
            writes.len(),
            1,
            "group {group}: one write, by its primer: {mine:?}"
        );
        assert!(
            writes[0].3 > 1900,
            "the whole prefix is written: {writes:?}"
        );
        let reads = mine.iter().filter(|u| u.2 > 1900 && u.3 == 0).count();
        assert_eq!(
            reads, 19,
            "group {group}: every other row reads it: {mine:?}"
        );
    }
    // The short prompt's rows are marked nowhere.
    assert!(usage
        .iter()
        .filter(|u| u.0 % 3 == 2)
        .all(|u| u.2 == 0 && u.3 == 0));
}

/// The `cache_control` of every request a recording server saw.
fn controls(server: &crate::common::loopback::Server) -> Vec<Value> {
    server
        .seen()
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["system"][0]["cache_control"].clone()
        })
        .collect()
}

#[test]
fn a_group_whose_prefix_would_wait_past_five_minutes_asks_for_the_hour() {
    use crate::common::loopback::{Reply, Server};
    let server = Server::start(|_| {
        Reply::json(
            200,
            r#"{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"x"}],"stop_reason":"end_turn","usage":{"input_tokens":10,"output_tokens":1}}"#,
        )
    });
    // 10 rows of group b first, then 400 of group a. The larger group runs first; at 60
    // requests a minute, group b's prefix (written by its primer at the start) waits over
    // 6 minutes for group a's rows. A preview of the first three rows shows its marks.
    let ws = Workspace::new();
    let mut kinds = vec!["b"; 10];
    kinds.extend(["a"; 400]);
    rows(&ws, &kinds);
    let job = anthropic_job(&ws, &server.url(""));
    let preview = |extra: &[&str]| {
        let mut args = vec!["run", &job, "--limit", "3"];
        args.extend(extra);
        let out = ws.run_env(&[("ANTHROPIC_API_KEY", TEST_KEY)], &args);
        assert_exit(&out, 0);
    };
    preview(&["--set", "limits.requests_per_minute=60"]);
    let hour = json!({"type": "ephemeral", "ttl": "1h"});
    assert_eq!(controls(&server), [hour.clone(), hour.clone(), hour]);

    // Without a rate limit nothing is known to wait that long: the default 5 minutes.
    std::fs::remove_dir_all(ws.path("out")).unwrap();
    preview(&[]);
    let five = json!({"type": "ephemeral"});
    assert_eq!(controls(&server)[3..], [five.clone(), five.clone(), five]);
}

/// The mock caches a prompt only once its answer is given: requests sent together all miss
/// (as at the providers, and why a group needs a primer); one sent after reads it.
#[tokio::test]
async fn the_mock_caches_a_prompt_only_once_it_is_answered() {
    use promptmill_mock::{MockConfig, MockServer};
    let config = MockConfig {
        latency_ms: 300,
        ..MockConfig::default()
    };
    let server = MockServer::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let system = system_prompt("You write copy.", 15);
    let cached = |row: &'static str| {
        let (client, url) = (
            client.clone(),
            format!("{}/chat/completions", server.base_url()),
        );
        let body = json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": row}]});
        async move {
            let v: Value = client
                .post(url)
                .bearer_auth("sk-test")
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap()
        }
    };
    let (a, b) = tokio::join!(cached("row a"), cached("row b"));
    assert_eq!(
        (a, b),
        (0, 0),
        "sent together, neither sees the other's prefix"
    );
    assert_eq!(cached("row c").await, 1920, "sent after, reads it");
}

#[test]
fn the_summary_shows_each_groups_hit_rate_and_the_money_saved() {
    let mock = Mock::start(&["--latency-ms", "20"]);
    let ws = Workspace::new();
    let kinds: Vec<&str> = (0..60).map(|i| ["a", "b", "c"][i % 3]).collect();
    rows(&ws, &kinds);
    let job = job_of(&ws, &mock.base_url, "max_in_flight = 16", "", 15);
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 0);
    let s = ws.summary();
    let pc = &s["prompt_cache"];
    let groups = pc["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{pc}");
    for g in groups {
        assert_eq!(
            (g["requests"].as_u64(), g["hits"].as_u64()),
            (Some(20), Some(19))
        );
        assert!((g["hit_rate"].as_f64().unwrap() - 0.95).abs() < 1e-9);
        assert_eq!(g["cached_tokens"], 19 * 1920);
    }
    assert_eq!(pc["cached_tokens"], 2 * 19 * 1920);
    assert_eq!(s["cached_tokens"], 2 * 19 * 1920);
    // gpt-4o-mini: $0.15 per million input tokens, $0.075 cached: half of it saved.
    let saved = pc["saved_usd"].as_f64().unwrap();
    let expected = (2 * 19 * 1920) as f64 * 0.075e-6;
    assert!((saved - expected).abs() < 1e-9, "{saved} vs {expected}");
    // What it would have cost without the cache is what it cost plus the saving.
    let table = stderr(&out);
    assert!(table.contains("prompt cache"), "{table}");
    assert!(
        table.contains("19 of 20 requests read the prefix (95%)"),
        "{table}"
    );

    // Off: no priming, nothing to report per group.
    let ws = Workspace::new();
    rows(&ws, &kinds);
    let job = job_of(
        &ws,
        &mock.base_url,
        "max_in_flight = 16",
        "\n[cache]\nprefix = false\n",
        15,
    );
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 0);
    assert!(ws.summary().get("prompt_cache").is_none());
}

/// A second run sends only the rows the first left pending, primer first again.
#[test]
fn resume_skips_done_rows_and_primes_what_is_left() {
    let (server, seen) = watching_server();
    let ws = Workspace::new();
    let kinds: Vec<&str> = (0..30).map(|i| ["a", "b", "c"][i % 3]).collect();
    rows(&ws, &kinds);
    let job = job(&ws, &server.base_url(), "max_in_flight = 8", "");
    let out = ws.run(&["run", &job, "--limit", "12"]);
    assert_exit(&out, 0);
    assert_eq!(server.requests(), 12);
    seen.lock().unwrap().primer_answered.clear();
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 0);
    assert_eq!(server.requests(), 30, "the 12 done rows are not sent again");
    let seen = seen.lock().unwrap();
    assert!(seen.early.is_empty(), "{:?}", seen.early);
    let status = ws.column("out/result.csv", "status");
    assert_eq!(status.len(), 30);
    assert!(status.iter().all(|s| s == "ok"), "{status:?}");
}

/// A primer that fails for good does not hold its group back: the rest goes after it.
#[test]
fn a_failed_primer_still_releases_its_group() {
    let first = Arc::new(Mutex::new(true));
    let f = first.clone();
    let server = FaultServer::start(move |body, _| {
        let fail = group_of(body) == "a" && std::mem::replace(&mut *f.lock().unwrap(), false);
        if fail {
            Reply {
                status: 400,
                headers: Vec::new(),
                content_type: "application/json",
                body: br#"{"error":{"message":"no","type":"invalid_request_error"}}"#.to_vec(),
            }
        } else {
            answer()
        }
    });
    let ws = Workspace::new();
    rows(&ws, &["a"; 12]);
    let job = job(&ws, &server.base_url(), "max_in_flight = 4", "");
    let out = ws.run(&["run", &job]);
    assert_exit(&out, 1);
    assert_eq!(server.requests(), 12);
    let status = ws.column("out/result.csv", "status");
    assert_eq!(
        status.iter().filter(|s| *s == "ok").count(),
        11,
        "{status:?}"
    );
}
