//! The retry schedule as the scheduler follows it, on tokio's paused clock: a real HTTP
//! server on 127.0.0.1 (in the same runtime, so time only moves when every task waits)
//! answers with 429s and 5xx, and the moments its requests arrive must be exactly the
//! waits the retry policy gives for the run's seed. Deterministic and instant.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use promptmill::client::{Client, Secret};
use promptmill::config::{Job, Overrides};
use promptmill::cost::Tier;
use promptmill::drive::retry::{RetryKind, RetryPolicy};
use promptmill::journal;
use promptmill::limit::Limiter;
use promptmill::pipeline::ledger::{Caps, Ledger, Tally};
use promptmill::progress::Progress;
use promptmill::scheduler::{Scheduler, StopReason, UsageGuess, WorkItem};
use promptmill::types::Money;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

const SEED: u64 = 0x5eed_2026;

/// One answer of the test server: status, extra headers, body, and how long it takes.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    after: Duration,
}

impl Answer {
    fn ok() -> Answer {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
        });
        Answer::status(200, body.to_string())
    }

    fn status(status: u16, body: String) -> Answer {
        Answer {
            status,
            headers: vec![],
            body,
            after: Duration::ZERO,
        }
    }

    fn rate_limited(retry_after_secs: Option<u64>) -> Answer {
        let body = json!({"error": {"message": "Rate limit reached for requests",
                                    "type": "requests", "code": "rate_limit_exceeded"}});
        let mut a = Answer::status(429, body.to_string());
        if let Some(s) = retry_after_secs {
            a.headers.push(("retry-after", s.to_string()));
        }
        a
    }

    fn server_error() -> Answer {
        let body = json!({"error": {"message": "overloaded", "type": "server_error"}});
        Answer::status(500, body.to_string())
    }
}

/// Every request the server saw: when (paused clock) and the user message it carried.
type Seen = Arc<Mutex<Vec<(Instant, String)>>>;

/// A loopback HTTP/1.1 server in this runtime; `answer(user message, its n-th request
/// for that message)` decides each reply. Closes each connection after one answer.
async fn serve(answer: impl Fn(&str, usize) -> Answer + Send + Sync + 'static) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let answer = Arc::new(answer);
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let (answer, log) = (answer.clone(), log.clone());
            tokio::spawn(async move { reply(conn, &*answer, &log).await });
        }
    });
    (url, seen)
}

async fn reply(mut conn: TcpStream, answer: &(dyn Fn(&str, usize) -> Answer + Sync), log: &Seen) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a whole request");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the whole body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Value = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap();
    let user = body["messages"][0]["content"].as_str().unwrap().to_string();
    let nth = {
        let mut log = log.lock().unwrap();
        log.push((Instant::now(), user.clone()));
        log.iter().filter(|(_, u)| *u == user).count()
    };
    let a = answer(&user, nth);
    tokio::time::sleep(a.after).await;
    let mut out = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        a.status,
        a.body.len()
    );
    for (name, value) in &a.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&a.body);
    conn.write_all(out.as_bytes()).await.unwrap();
    let _ = conn.shutdown().await;
}

/// A scheduler for a job at `url`, journaling into `dir`, with the test's seed.
fn scheduler(dir: &std::path::Path, url: &str, max_retries: u32, in_flight: u32) -> Scheduler {
    std::fs::write(dir.join("rows.csv"), "id,name\nr1,a\n").unwrap();
    let text = format!(
        "[input]\npath = \"rows.csv\"\n[prompt]\nuser = \"{{{{ name }}}}\"\n\
         [model]\nname = \"gpt-4o-mini\"\nmax_tokens = 5\n[api]\nbase_url = \"{url}\"\n\
         [output]\npath = \"out.csv\"\n"
    );
    let job = Job::from_str(&text, &dir.join("job.toml"), &Overrides::default()).unwrap();
    let client = Client::for_job(&job, Secret::new("sk-test".into())).unwrap();
    let writer = journal::open(&dir.join("out.journal.jsonl")).unwrap();
    let mut s = Scheduler::new(
        client,
        Limiter::new(None, None),
        Arc::new(Ledger::new(Caps::default(), Tally::default())),
        writer,
        None,
        Tier::Live,
        max_retries,
        in_flight,
        Progress::new(2, true, None),
    );
    s.retry.seed = SEED;
    s
}

fn item(row: u64, user: &str) -> WorkItem {
    WorkItem {
        row,
        id: format!("r{row}"),
        hash: format!("h{row}"),
        body: json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": user}]}),
        limiter_tokens: 10,
        worst_cost: Money::ZERO,
        guess: UsageGuess::default(),
        kind: promptmill::scheduler::Kind::Answer,
        model: None,
        primer: None,
        cache_key: None,
        group: None,
    }
}

/// Runs the scheduler over `items` to the end.
async fn run(s: Scheduler, items: Vec<WorkItem>) -> StopReason {
    let (tx, rx) = mpsc::channel(8);
    for i in items {
        tx.send(i).await.unwrap();
    }
    drop(tx);
    Arc::new(s).run(rx).await
}

/// The arrival times of `user`'s requests, as offsets from `t0`.
fn arrivals(seen: &Seen, user: &str, t0: Instant) -> Vec<Duration> {
    let log = seen.lock().unwrap();
    log.iter()
        .filter(|(_, u)| u == user)
        .map(|(t, _)| t.duration_since(t0))
        .collect()
}

/// `got` is `want`, up to the timer's millisecond rounding (at most 1 ms per sleep, and a
/// wait is at most two sleeps: the row's own and the limiter's).
fn assert_close(got: Duration, want: Duration, what: &str) {
    assert!(
        got >= want && got <= want + Duration::from_millis(2),
        "{what}: waited {got:?}, the policy says {want:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limited_retries_wait_the_policys_delays_for_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    // Three 429s (two with a retry-after, one without), then an answer.
    let (url, seen) = serve(|_, nth| match nth {
        1 => Answer::rate_limited(Some(2)),
        2 => Answer::rate_limited(None),
        3 => Answer::rate_limited(Some(1)),
        _ => Answer::ok(),
    })
    .await;
    let t0 = Instant::now();
    let stop = run(scheduler(dir.path(), &url, 0, 4), vec![item(7, "a")]).await;
    assert_eq!(stop, StopReason::Completed);
    let at = arrivals(&seen, "a", t0);
    assert_eq!(at.len(), 4, "{at:?}");
    let policy = RetryPolicy::new(0, SEED);
    let retry_after = [Some(2), None, Some(1)].map(|s| s.map(Duration::from_secs));
    for (n, ra) in retry_after.into_iter().enumerate() {
        let want = policy
            .next_delay(7, RetryKind::RateLimited, n as u32 + 1, ra)
            .unwrap();
        let cool = RetryPolicy::cooldown(n as u32 + 1, ra);
        assert!(want > cool, "the seed gives some jitter");
        assert_close(at[n + 1] - at[n], want, &format!("after 429 #{}", n + 1));
    }
    let journal = std::fs::read_to_string(dir.path().join("out.journal.jsonl")).unwrap();
    let rec: Value = serde_json::from_str(journal.lines().last().unwrap()).unwrap();
    assert_eq!(
        (rec["status"].as_str(), rec["attempts"].as_u64()),
        (Some("ok"), Some(4))
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_by_the_policy_then_give_up_after_max_retries() {
    let dir = tempfile::tempdir().unwrap();
    let (url, seen) = serve(|_, _| Answer::server_error()).await;
    let t0 = Instant::now();
    let stop = run(scheduler(dir.path(), &url, 3, 4), vec![item(2, "b")]).await;
    assert_eq!(stop, StopReason::Completed);
    let at = arrivals(&seen, "b", t0);
    assert_eq!(
        at.len(),
        4,
        "one attempt and max_retries = 3 retries: {at:?}"
    );
    let policy = RetryPolicy::new(3, SEED);
    for n in 1..=3u32 {
        let want = policy.next_delay(2, RetryKind::Transient, n, None).unwrap();
        let i = n as usize;
        assert_close(at[i] - at[i - 1], want, &format!("after 500 #{n}"));
    }
    let journal = std::fs::read_to_string(dir.path().join("out.journal.jsonl")).unwrap();
    let rec: Value = serde_json::from_str(journal.lines().last().unwrap()).unwrap();
    assert_eq!(rec["status"], "failed");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 4 attempts"),
        "{rec}"
    );
}

#[tokio::test(start_paused = true)]
async fn one_429_holds_every_worker_for_the_shared_cooldown() {
    let dir = tempfile::tempdir().unwrap();
    // The limiter lets a first request (the probe, "p") go alone; then "a" and "b" go
    // together. Row "a" is turned away with a 3 s retry-after after 10 ms; row "b", sent at the same
    // moment, gets a 500 after 1 s. Its own backoff (0.5–1 s) would bring it back before
    // 3 s, but the cooldown holds the limiter: it comes back exactly when the cooldown ends.
    let (url, seen) = serve(|user, nth| match (user, nth) {
        ("a", 1) => Answer {
            after: Duration::from_millis(10),
            ..Answer::rate_limited(Some(3))
        },
        ("b", 1) => Answer {
            after: Duration::from_secs(1),
            ..Answer::server_error()
        },
        _ => Answer::ok(),
    })
    .await;
    let t0 = Instant::now();
    let items = vec![item(0, "p"), item(1, "a"), item(2, "b")];
    let stop = run(scheduler(dir.path(), &url, 3, 4), items).await;
    assert_eq!(stop, StopReason::Completed);
    let (a, b) = (arrivals(&seen, "a", t0), arrivals(&seen, "b", t0));
    assert_eq!((a.len(), b.len()), (2, 2), "{a:?} {b:?}");
    let policy = RetryPolicy::new(3, SEED);
    let b_own = policy.next_delay(2, RetryKind::Transient, 1, None).unwrap();
    assert!(Duration::from_secs(1) + b_own < Duration::from_secs(3));
    assert_eq!(a[0], b[0], "both rows were sent before the 429 came back");
    let cooldown = RetryPolicy::cooldown(1, Some(Duration::from_secs(3)));
    let answered = Duration::from_millis(10);
    assert_close(b[1] - a[0], answered + cooldown, "b");
    let a_own = policy
        .next_delay(1, RetryKind::RateLimited, 1, Some(Duration::from_secs(3)))
        .unwrap();
    assert_close(a[1] - a[0], answered + a_own, "a");
}

#[test]
fn a_bad_retry_seed_is_refused_before_anything_is_sent() {
    let ws = common::Workspace::new();
    ws.csv_rows(3);
    let job = ws.job("http://127.0.0.1:9/v1", "");
    let out = ws.run_env(
        &[("PROMPTMILL_RETRY_SEED", "-1")],
        &["run", &job, "--mock", "--quiet"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("PROMPTMILL_RETRY_SEED") && err.contains("18446744073709551615"),
        "{err}"
    );
    assert!(
        !ws.path("out/result.journal.jsonl").exists()
            || ws.read("out/result.journal.jsonl").is_empty()
    );
    // A good one runs as usual.
    let out = ws.run_env(
        &[("PROMPTMILL_RETRY_SEED", "12345")],
        &["run", &job, "--mock", "--quiet"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
