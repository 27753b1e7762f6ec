//! `[limits] shared`: processes on one key draw from one set of buckets in a real Redis
//! (started on a loopback port by the test), and a Redis that goes away stops the job
//! (or, when asked, leaves it to the local limiter) without losing or repeating a row.

use std::process::Child;
use std::time::Duration;

use promptmill::limit::shared::{default_key, Grant};

use crate::common::redis::{block_on, Redis};
use crate::common::{
    assert_complete_output, assert_exit, stderr, Mock, Workspace, OPENAI_KEY, TEST_KEY,
};

#[test]
fn two_processes_on_one_key_stay_under_the_servers_limit_together() {
    let Some(redis) = Redis::start() else { return };
    let mock = Mock::start(&["--rpm", "1200"]);
    // Each process alone may send 1,200 requests/min: only the shared buckets keep the two
    // together under the server's 1,200.
    let limits = format!("requests_per_minute = 1200\nshared = \"{}\"", redis.url());
    let (ws, job) = Workspace::with_job(240, &mock.base_url, &limits);
    let shards: Vec<Child> = ["1/2", "2/2"]
        .iter()
        .map(|s| ws.spawn_piped(&["run", &job, "--shard", s, "--quiet"]))
        .collect();
    for c in shards {
        let out = c.wait_with_output().expect("shard");
        assert_exit(&out, 0);
    }
    let (requests, refused) = (mock.stat("requests"), mock.stat("rate_limited"));
    assert!(
        refused * 100 <= requests,
        "{refused} of {requests} requests refused with 429"
    );
    assert_eq!(mock.stat("ok"), 240, "every row sent and answered once");
    assert_exit(&ws.run(&["merge", &job]), 0);
    assert_complete_output(&ws, 240);
}

#[test]
fn redis_stopped_mid_run_stops_the_job_and_a_second_run_finishes() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let mock = Mock::start(&["--rpm", "600"]);
    let limits = format!("requests_per_minute = 600\nshared = \"{}\"", redis.url());
    let (ws, job) = Workspace::with_job(120, &mock.base_url, &limits);
    let child = ws.spawn_piped(&["run", &job, "--quiet"]);
    let mut waited = 0;
    while mock.stat("ok") < 20 {
        assert!(waited < 600, "the run never got going");
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
    }
    redis.stop();
    let out = child.wait_with_output().expect("run");
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(err.contains("shared rate limiter"), "{err}");
    assert!(err.contains(&redis.url()), "names the URL: {err}");
    let sent = mock.stat("ok");
    assert!(sent < 120, "the job went on without Redis ({sent} sent)");
    let summary = ws.summary();
    assert!(
        summary.to_string().contains("pending"),
        "rows left pending: {summary}"
    );
    redis.restart();
    assert_exit(&ws.run(&["run", &job, "--quiet"]), 0);
    assert_complete_output(&ws, 120);
    assert_eq!(mock.stat("ok"), 120, "no row sent twice, none lost");
}

#[test]
fn an_unreachable_redis_stops_at_once_or_goes_local_when_asked() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    redis.stop();
    let mock = Mock::start(&[]);
    let limits = format!("shared = \"{}\"", redis.url());
    let (ws, job) = Workspace::with_job(5, &mock.base_url, &limits);
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(err.contains("cannot be reached"), "{err}");
    assert_eq!(mock.stat("requests"), 0, "nothing sent unlimited");
    let out = ws.run(&[
        "run",
        &job,
        "--quiet",
        "--set",
        "limits.on_shared_failure=local",
    ]);
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("own limits"), "{}", stderr(&out));
    assert_complete_output(&ws, 5);
}

#[test]
fn a_redis_password_stays_out_of_the_job_file_and_out_of_messages() {
    let mock = Mock::start(&[]);
    let limits = "shared = \"redis://:hunter2secret@127.0.0.1:1/0\"";
    let (ws, job) = Workspace::with_job(2, &mock.base_url, limits);
    let out = ws.run(&["run", &job, "--quiet"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("PROMPTMILL_LIMITS_SHARED"));
    assert!(!stderr(&out).contains("hunter2secret"), "{}", stderr(&out));
    // From the environment it is taken, and redacted in the failure message.
    let job = ws.job(&mock.base_url, "");
    let out = ws.run_env(
        &[
            OPENAI_KEY,
            (
                "PROMPTMILL_LIMITS_SHARED",
                "redis://:hunter2secret@127.0.0.1:1/0",
            ),
            ("RUST_LOG", "trace"),
        ],
        &["run", &job, "--quiet"],
    );
    assert_exit(&out, 3);
    let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(all.contains("redis://:***@127.0.0.1:1/0"), "{all}");
    assert!(!all.contains("hunter2secret"), "{all}");
}

#[test]
fn the_default_key_names_no_api_key() {
    let a = default_key("Openai", "https://api.openai.com/v1", TEST_KEY);
    let b = default_key("Openai", "https://api.openai.com/v1", "sk-other");
    let c = default_key("Openai", "http://127.0.0.1:9/v1", TEST_KEY);
    assert!(!a.contains(TEST_KEY) && a.starts_with("promptmill:"), "{a}");
    assert!(a != b && a != c && b != c);
}

/// The Lua scripts on a real Redis (its clock cannot be paused: counts, not times).
#[test]
fn the_shared_gcra_scripts_count_requests_tokens_refunds_and_cooldowns() {
    let Some(redis) = Redis::start() else { return };
    block_on(async {
        let a = redis.shared("t:req").await;
        let b = redis.shared("t:req").await;
        // 600/min holds 9 (a second's worth, less 10%), shared by both connections. Redis's
        // clock runs on: each 100 ms spent here (a loaded machine) frees one more.
        let mut free = 0;
        let start = std::time::Instant::now();
        for i in 0..12 {
            let sh = if i % 2 == 0 { &a } else { &b };
            if sh.acquire(Some(600), None, 1).await.unwrap() == Grant::After(Duration::ZERO) {
                free += 1;
            }
        }
        let refilled = (start.elapsed().as_secs_f64() * 10.0).ceil() as usize;
        assert!(
            (9..=9 + refilled).contains(&free),
            "{free} requests let go at once (9, plus {refilled} refilled meanwhile)"
        );

        // 6,000 tokens/min holds 90: one 90-token request empties it, a refund fills it.
        // (The second ask is 50 tokens: half a second of refill, not 10 ms.)
        let t = redis.shared("t:tok").await;
        let now = Grant::After(Duration::ZERO);
        let start = std::time::Instant::now();
        assert_eq!(t.acquire(None, Some(6000), 90).await.unwrap(), now);
        let second = t.acquire(None, Some(6000), 50).await.unwrap();
        if start.elapsed() < Duration::from_millis(500) {
            assert_ne!(second, now, "a drained bucket let 50 tokens through");
        }
        let t2 = redis.shared("t:tok2").await;
        assert_eq!(t2.acquire(None, Some(6000), 90).await.unwrap(), now);
        t2.refund(Some(6000), 90).await;
        assert_eq!(t2.acquire(None, Some(6000), 80).await.unwrap(), now);

        // A cooldown from one process holds the other.
        let c = redis.shared("t:cd").await;
        let d = redis.shared("t:cd").await;
        c.cool_down(Duration::from_secs(30), Some(600), None).await;
        match d.acquire(Some(600), None, 1).await.unwrap() {
            Grant::CoolingDown(left) => assert!(left <= Duration::from_secs(30), "{left:?}"),
            g => panic!("not held by the cooldown: {g:?}"),
        }
        assert!(d.cooling().await.unwrap().is_some());
    });
}
