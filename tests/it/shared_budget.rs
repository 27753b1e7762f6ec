//! `[budget] shared = true`: shards of one job (real processes, a real Redis on a loopback
//! port) stay under one `max_usd_total` together, by every shard's own journal; a shard
//! SIGKILLed with requests in flight keeps their worst case counted until its journal runs
//! again; a Redis that goes away stops the run (or, when asked, leaves the cap to each
//! process) with nothing lost.

use std::process::Child;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::common::redis::{block_on, Redis};
use crate::common::{assert_complete_output, assert_exit, stderr, Mock, Workspace};

fn journal(k: u32, n: u32) -> String {
    format!("out/result.shard-{k}-of-{n}.journal.jsonl")
}

/// Every picodollar a journal says was paid (answers, and answers thrown away).
fn journal_spend(ws: &Workspace, rel: &str) -> u64 {
    if !ws.path(rel).exists() {
        return 0;
    }
    ws.jsonl(rel)
        .iter()
        .filter(|l| l.get("usage").is_some_and(|u| !u.is_null()))
        .filter(|l| l["cached"] != true && l.get("shared_with").is_none_or(|s| s.is_null()))
        .map(|l| l["cost_pico"].as_u64().unwrap_or(0))
        .sum()
}

/// `HGETALL key` as (field, value) pairs, from the raw RESP reply.
fn hgetall(redis: &Redis, key: &str) -> Vec<(String, u64)> {
    let reply = redis.command(&["HGETALL", key]).expect("redis answers");
    let items: Vec<&str> = reply
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with('*') && !l.starts_with('$'))
        .collect();
    items
        .chunks(2)
        .map(|c| (c[0].to_string(), c[1].parse().expect("a number")))
        .collect()
}

/// The one budget key (`…:budget:…:spent`) in Redis.
fn budget_key(redis: &Redis) -> String {
    let reply = redis
        .command(&["KEYS", "*:budget:*:spent"])
        .expect("redis answers");
    let keys: Vec<&str> = reply
        .split("\r\n")
        .filter(|l| l.ends_with(":spent"))
        .collect();
    assert_eq!(keys.len(), 1, "one shared budget: {reply:?}");
    keys[0].trim_end_matches(":spent").to_string()
}

#[test]
fn four_shards_under_one_shared_cap_spend_no_more_than_it_together() {
    let Some(redis) = Redis::start() else { return };
    let mock = Mock::start(&["--latency-ms", "20"]);
    let limits = format!("shared = \"{}\"", redis.url());
    let (ws, job) = Workspace::with_job(400, &mock.base_url, &limits);
    // A small worst case per request ($0.000014 at 20 tokens out), so a shard alone would
    // go on to its own $0.0008 (four times that together, as a run without `shared`
    // shows); shared, the four stop at $0.0008 together.
    let cap = 0.0008;
    let cap_s = cap.to_string();
    let shards: Vec<Child> = (1..=4)
        .map(|k| {
            let shard = format!("{k}/4");
            ws.spawn_piped(&[
                "run",
                &job,
                "--shard",
                &shard,
                "--quiet",
                "--max-in-flight",
                "8",
                "--max-usd",
                &cap_s,
                "--set",
                "budget.shared=true",
                "--set",
                "model.max_tokens=20",
            ])
        })
        .collect();
    for c in shards {
        let out = c.wait_with_output().expect("shard");
        assert_exit(&out, 3);
        let err = stderr(&out);
        assert!(err.contains("shared budget cap reached"), "{err}");
    }
    let spent: u64 = (1..=4).map(|k| journal_spend(&ws, &journal(k, 4))).sum();
    let cap_pico = promptmill::types::Money::from_usd(cap).0;
    assert!(
        spent <= cap_pico,
        "the shards spent {spent} picodollars together, over the cap of {cap_pico}"
    );
    assert!(
        spent > cap_pico / 2,
        "stopped far too early: {spent} of {cap_pico}"
    );
    // Redis agrees with the journals (rounded up to nanodollars), and nothing stays held.
    let key = budget_key(&redis);
    let in_redis: u64 = hgetall(&redis, &format!("{key}:spent"))
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert!(
        in_redis * 1000 >= spent && in_redis * 1000 <= spent + 400 * 1000,
        "{in_redis} nanodollars in Redis, {spent} picodollars in the journals"
    );
    let held = hgetall(&redis, &format!("{key}:held"));
    assert_eq!(held.len(), 4, "one member per shard journal: {held:?}");
    assert!(held.iter().all(|(_, v)| *v == 0), "{held:?}");
}

#[test]
fn a_shared_budget_needs_the_shared_redis_and_a_total_cap() {
    let mock = Mock::start(&[]);
    let (ws, job) = Workspace::with_job(3, &mock.base_url, "");
    let out = ws.run(&[
        "run",
        &job,
        "--quiet",
        "--max-usd",
        "1",
        "--set",
        "budget.shared=true",
    ]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("budget.shared") && err.contains("limits.shared"),
        "{err}"
    );
    let out = ws.run(&[
        "run",
        &job,
        "--quiet",
        "--set",
        "budget.shared=true",
        "--set",
        "limits.shared=redis://127.0.0.1:1/0",
    ]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("budget.max_usd_total"), "{err}");
    assert_eq!(mock.stat("requests"), 0);
}

#[test]
fn shards_sigkilled_at_random_resume_and_merge_every_row_exactly_once() {
    let Some(redis) = Redis::start() else { return };
    let mock = Mock::start(&["--latency-ms", "150"]);
    let limits = format!("shared = \"{}\"", redis.url());
    let (ws, job) = Workspace::with_job(400, &mock.base_url, &limits);
    let args = |shard: &str| -> Vec<String> {
        [
            "run",
            &job,
            "--shard",
            shard,
            "--quiet",
            "--max-in-flight",
            "4",
            "--max-usd",
            "1",
            "--set",
            "budget.shared=true",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut children: Vec<(u32, Child)> = (1..=4)
        .map(|k| {
            let a = args(&format!("{k}/4"));
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            (k, ws.spawn_piped(&a))
        })
        .collect();
    // Wait until some answers came, then SIGKILL two shards chosen at random, each after a
    // random pause.
    let deadline = Instant::now() + Duration::from_secs(60);
    while mock.stat("ok") < 20 {
        assert!(Instant::now() < deadline, "the shards never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut killed = Vec::new();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
        let i = rng.random_range(0..children.len());
        let (k, mut child) = children.remove(i);
        child.kill().expect("SIGKILL"); // a real SIGKILL
        child.wait().expect("reaped");
        killed.push(k);
    }
    for (_, c) in children {
        let out = c.wait_with_output().expect("shard");
        assert_exit(&out, 0);
    }
    // The killed shards' requests in flight stay counted at their worst case.
    let key = budget_key(&redis);
    let held: u64 = hgetall(&redis, &format!("{key}:held"))
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert!(
        held > 0,
        "the killed shards' requests in flight were forgotten"
    );
    let records = |k: u32| {
        ws.jsonl(&journal(k, 4))
            .iter()
            .filter(|l| l.get("status").is_some())
            .count()
    };
    let before: Vec<usize> = killed.iter().map(|k| records(*k)).collect();
    // Resumed, each killed shard takes its own journal's word for what was spent.
    for k in &killed {
        let out = ws.run(
            &args(&format!("{k}/4"))
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert_exit(&out, 0);
    }
    for (k, b) in killed.iter().zip(&before) {
        assert!(
            records(*k) > *b,
            "shard {k} was killed after its last row: nothing to test"
        );
    }
    let after = hgetall(&redis, &format!("{key}:held"));
    assert!(
        after.iter().all(|(_, v)| *v == 0),
        "a resumed journal settles its killed run's reservations: {after:?} (held {held} \
         before)"
    );
    let spent: u64 = (1..=4).map(|k| journal_spend(&ws, &journal(k, 4))).sum();
    let in_redis: u64 = hgetall(&redis, &format!("{key}:spent"))
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert!(
        in_redis * 1000 >= spent,
        "Redis counts at least what the journals paid: {in_redis} nano vs {spent} pico"
    );
    assert_exit(&ws.run(&["merge", &job]), 0);
    assert_complete_output(&ws, 400);
    let mut ids: Vec<String> = (1..=4)
        .flat_map(|k| ws.jsonl(&journal(k, 4)))
        .filter(|l| l.get("status").is_some())
        .map(|l| l["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    let journaled = ids.len();
    ids.dedup();
    assert_eq!(journaled, ids.len(), "a row journaled twice");
    assert_eq!(ids.len(), 400, "every row journaled once across the shards");
}

#[test]
fn redis_stopped_mid_run_stops_a_shared_budget_and_local_goes_on() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let mock = Mock::start(&["--latency-ms", "40"]);
    let limits = format!("shared = \"{}\"", redis.url());
    let (ws, job) = Workspace::with_job(150, &mock.base_url, &limits);
    let run = [
        "run",
        job.as_str(),
        "--quiet",
        "--max-in-flight",
        "4",
        "--max-usd",
        "1",
        "--set",
        "budget.shared=true",
    ];
    let child = ws.spawn_piped(&run);
    let deadline = Instant::now() + Duration::from_secs(60);
    while mock.stat("ok") < 20 {
        assert!(Instant::now() < deadline, "the run never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    redis.stop();
    let out = child.wait_with_output().expect("run");
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(err.contains(&redis.url()), "names the Redis: {err}");
    assert!(err.contains("on_shared_failure = \"stop\""), "{err}");
    let s = ws.summary();
    let pending = s["pending"].as_u64().unwrap_or(0);
    assert!(pending > 0, "rows left pending: {s}");
    let answered = mock.stat("ok");

    // Redis back (empty): the run joins again with its journal's spend and finishes.
    redis.restart();
    assert_exit(&ws.run(&run), 0);
    assert_complete_output(&ws, 150);
    assert!(
        mock.stat("ok") <= 150 + 4,
        "rows answered before the stop were sent again ({answered} then {})",
        mock.stat("ok")
    );
    let key = budget_key(&redis);
    let spent: u64 = hgetall(&redis, &format!("{key}:spent"))
        .iter()
        .map(|(_, v)| v)
        .sum();
    let journaled = journal_spend(&ws, "out/result.journal.jsonl");
    assert!(
        spent * 1000 >= journaled,
        "the restarted Redis learnt the spend from the journal: {spent} nano vs {journaled}"
    );

    // With `local`, a Redis gone mid-run leaves the cap to this process and the run ends.
    let (ws2, job2) = Workspace::with_job(150, &mock.base_url, &limits);
    let run2 = [
        "run",
        job2.as_str(),
        "--quiet",
        "--max-in-flight",
        "4",
        "--max-usd",
        "1",
        "--set",
        "budget.shared=true",
        "--set",
        "limits.on_shared_failure=local",
    ];
    let before = mock.stat("ok");
    let child = ws2.spawn_piped(&run2);
    while mock.stat("ok") < before + 20 {
        assert!(Instant::now() < deadline + Duration::from_secs(60), "stuck");
        std::thread::sleep(Duration::from_millis(10));
    }
    redis.stop();
    let out = child.wait_with_output().expect("run");
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("on_shared_failure = \"local\""), "{err}");
    assert_complete_output(&ws2, 150);
}

/// The Lua scripts on a real Redis: two members under one cap, settling, a rejoin that takes
/// the journal's word, and a Redis that lost the budget's data.
#[test]
fn the_shared_budget_scripts_hold_the_cap_across_members() {
    use promptmill::limit::shared::OnFailure;
    use promptmill::pipeline::shared_budget::{SharedBudget, Verdict};
    use promptmill::types::Money;

    let Some(redis) = Redis::start() else { return };
    block_on(async {
        let sh = redis.shared("t").await;
        let join = |member: &str, own: u64, on_failure: OnFailure| {
            let (conn, shown) = sh.connection();
            SharedBudget::join(
                conn,
                shown,
                "t:budget",
                member.to_string(),
                Money(100_000), // 100 nanodollars
                Money(own),
                on_failure,
            )
        };
        let a = join("a", 20_000, OnFailure::Stop).await.expect("join a");
        let b = join("b", 0, OnFailure::Stop).await.expect("join b");
        assert_eq!(b.seen(), Money(20_000), "b sees what a's journal spent");
        assert_eq!(a.reserve(Money(50_000)).await, Ok(Verdict::Reserved));
        // 20 spent + 50 held: 31 more does not fit, for either member.
        assert_eq!(b.reserve(Money(31_000)).await, Ok(Verdict::OverCap));
        assert_eq!(b.reserve(Money(30_000)).await, Ok(Verdict::Reserved));
        // a's answer cost 10 of its 50: 40 come back.
        a.settle(Money(50_000), Some(Money(10_000))).await;
        assert_eq!(a.reserve(Money(40_000)).await, Ok(Verdict::Reserved));
        assert_eq!(a.reserve(Money(1_000)).await, Ok(Verdict::OverCap));
        // An unknown price keeps the worst case.
        b.settle(Money(30_000), None).await;
        assert_eq!(a.reserve(Money(1_000)).await, Ok(Verdict::OverCap));
        // a is killed with 40 in flight; its next run finds 25 spent in its journal (the 10
        // paid and its open reservation's 15, say): 25 + b's 30 leave 45.
        let a = join("a", 25_000, OnFailure::Stop).await.expect("rejoin a");
        assert_eq!(a.seen(), Money(55_000));
        assert_eq!(a.reserve(Money(45_000)).await, Ok(Verdict::Reserved));
        assert_eq!(b.reserve(Money(1_000)).await, Ok(Verdict::OverCap));

        // Redis loses its data: stop, or go local when asked.
        let c = join("c", 0, OnFailure::Local).await.expect("join c");
        assert!(redis.command(&["FLUSHALL"]).is_some());
        let err = a.reserve(Money(1)).await.expect_err("data gone: stop");
        assert!(
            err.contains("data is gone") && err.contains("t:budget"),
            "{err}"
        );
        assert_eq!(c.reserve(Money(1)).await, Ok(Verdict::Local));
    });
}
